//! People who log in, and what each role may do.

use serde::Serialize;

/// What a person may do. Each role may do everything the roles before it may: an agent takes
/// calls and sees the queue; a supervisor also sees callbacks and escalations (callers'
/// numbers and words) and other agents' presence; an operator also manages users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Agent,
    Supervisor,
    Operator,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Agent, Role::Supervisor, Role::Operator];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Supervisor => "supervisor",
            Role::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether someone with this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// argon2 PHC string.
    pub password_hash: String,
    /// The SIP realm `sip_ha1` was made for; a phone registering in another realm is refused.
    pub sip_realm: String,
    /// MD5(name:realm:password), what SIP digest authentication needs.
    pub sip_ha1: String,
    pub created_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user storage: {0}")]
    Storage(String),
    #[error("a user named `{0}` already exists")]
    Exists(String),
    #[error("no user named `{0}`")]
    NotFound(String),
    #[error(
        "`{0}` is not a user name: 1 to {MAX_NAME_CHARS} letters, digits, `.`, `_` or `-`, starting with a letter or digit"
    )]
    BadName(String),
    #[error("{0}")]
    BadPassword(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

pub const MAX_NAME_CHARS: usize = 64;

/// Where users are kept: SQLite in the data folder ([`crate::storage::SqliteUsers`]), or the
/// PostgreSQL store several nodes share ([`crate::storage::PostgresUsers`]), so that a user
/// added once logs in on every node. Calls block: drivers make them off the async threads.
pub trait UserStore: Send {
    fn add(&mut self, user: &User) -> Result<(), UserError>;
    fn get(&mut self, name: &str) -> Result<Option<User>, UserError>;
    /// Every user, by name.
    fn list(&mut self) -> Result<Vec<User>, UserError>;
    fn remove(&mut self, name: &str) -> Result<(), UserError>;
}

/// A name usable as a login and as the user part of a SIP URI, unescaped.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= MAX_NAME_CHARS
        && chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_names_bounded() {
        assert!(Role::Operator.allows(Role::Supervisor));
        assert!(Role::Supervisor.allows(Role::Agent));
        assert!(!Role::Agent.allows(Role::Supervisor));
        assert_eq!(Role::parse("supervisor"), Some(Role::Supervisor));
        assert_eq!(Role::parse("admin"), None);
        assert!(valid_name("alice.b-2"));
        for bad in ["", "-x", "a b", "a@b", "é", &"a".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
