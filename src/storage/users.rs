//! The users table (same database as the callback ledger, its own connection).

use crate::web::auth::{Role, User, UserError};
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, params};
use std::path::Path;

pub struct SqliteUsers {
    conn: Connection,
}

fn db(e: rusqlite::Error) -> UserError {
    UserError::Storage(e.to_string())
}

const COLUMNS: &str = "name, role, password_hash, sip_realm, sip_ha1, created_at";

fn user_from(row: &Row<'_>) -> rusqlite::Result<User> {
    let role: String = row.get(1)?;
    Ok(User {
        name: row.get(0)?,
        // An unknown role (a newer version wrote it) gets the least rights.
        role: Role::parse(&role).unwrap_or(Role::Agent),
        password_hash: row.get(2)?,
        sip_realm: row.get(3)?,
        sip_ha1: row.get(4)?,
        created_at: row.get(5)?,
    })
}

impl SqliteUsers {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, UserError> {
        let conn = Connection::open(path).map_err(db)?;
        Ok(Self {
            conn: super::sqlite::prepare(conn).map_err(db)?,
        })
    }

    pub fn in_memory() -> Result<Self, UserError> {
        let conn = Connection::open_in_memory().map_err(db)?;
        Ok(Self {
            conn: super::sqlite::prepare(conn).map_err(db)?,
        })
    }

    pub fn add(&mut self, user: &User) -> Result<(), UserError> {
        let r = self.conn.execute(
            &format!("INSERT INTO users ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
            params![
                user.name,
                user.role.as_str(),
                user.password_hash,
                user.sip_realm,
                user.sip_ha1,
                user.created_at
            ],
        );
        match r {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::ConstraintViolation =>
            {
                Err(UserError::Exists(user.name.clone()))
            }
            Err(e) => Err(db(e)),
        }
    }

    pub fn get(&self, name: &str) -> Result<Option<User>, UserError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM users WHERE name = ?1"),
                [name],
                user_from,
            )
            .optional()
            .map_err(db)
    }

    pub fn list(&self) -> Result<Vec<User>, UserError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM users ORDER BY name"))
            .map_err(db)?;
        let rows = stmt
            .query_map([], user_from)
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?;
        Ok(rows)
    }

    pub fn remove(&mut self, name: &str) -> Result<(), UserError> {
        match self
            .conn
            .execute("DELETE FROM users WHERE name = ?1", [name])
            .map_err(db)?
        {
            0 => Err(UserError::NotFound(name.into())),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, role: Role) -> User {
        User {
            name: name.into(),
            role,
            password_hash: "$argon2id$x".into(),
            sip_realm: "humanline".into(),
            sip_ha1: "0".repeat(32),
            created_at: 7,
        }
    }

    #[test]
    fn users_are_added_listed_and_removed_and_names_are_unique() {
        let mut u = SqliteUsers::in_memory().unwrap();
        u.add(&user("bob", Role::Agent)).unwrap();
        u.add(&user("alice", Role::Operator)).unwrap();
        assert!(matches!(
            u.add(&user("bob", Role::Supervisor)),
            Err(UserError::Exists(_))
        ));
        let names: Vec<_> = u.list().unwrap().into_iter().map(|u| u.name).collect();
        assert_eq!(names, ["alice", "bob"]);
        assert_eq!(u.get("alice").unwrap().unwrap().role, Role::Operator);
        u.remove("bob").unwrap();
        assert!(u.get("bob").unwrap().is_none());
        assert!(matches!(u.remove("bob"), Err(UserError::NotFound(_))));
    }

    /// A ledger from before users existed opens with its promises and an empty users table.
    #[test]
    fn an_old_ledger_gains_a_users_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("callbacks.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(super::super::sqlite::MIGRATIONS[0])
                .unwrap();
            conn.execute_batch(super::super::sqlite::MIGRATIONS[1])
                .unwrap();
            conn.pragma_update(None, "user_version", 2).unwrap();
        }
        let mut u = SqliteUsers::open(&path).unwrap();
        assert!(u.list().unwrap().is_empty());
        u.add(&user("carol", Role::Supervisor)).unwrap();
        // The ledger opens beside it.
        let mut ledger = crate::callbacks::CallbackLedger::new(
            super::super::SqliteStore::open(&path).unwrap(),
            crate::callbacks::RetryPolicy::default(),
        );
        assert!(ledger.list(None).unwrap().is_empty());
    }
}
