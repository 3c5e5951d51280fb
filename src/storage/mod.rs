//! Durable storage. The embedded default is SQLite in WAL mode with `synchronous=FULL`: a
//! promise is on disk (fsynced) when its insert returns, so a crash right after cannot lose it.
//! Several nodes share one PostgreSQL database instead (`store = "postgres://..."`), with
//! `synchronous_commit = on`: a promise is in the server's WAL, flushed, when its commit returns.
//! The users who log in and the operator's flow versions are in the same store as the ledger,
//! each on a connection of its own: in SQLite one node's, in PostgreSQL every node's.

mod pg;
mod postgres;
mod sqlite;
mod users;
mod versions;

pub use postgres::{DEFAULT_LEASE_MS, PostgresStore};
pub use sqlite::SqliteStore;
pub use users::{PostgresUsers, SqliteUsers};
pub use versions::{PostgresVersions, SqliteVersions};

use crate::callbacks::{LedgerError, LedgerStore, PromiseState};
use crate::config::versions::{VersionError, VersionStore};
use crate::web::auth::{UserError, UserStore};
use std::path::Path;

/// Where the callback ledger lives (`store` in the server file, `--store`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreSetting {
    /// `callbacks.db` in the data folder: one node.
    #[default]
    Sqlite,
    /// A PostgreSQL connection URL (`postgres://user@host:port/db`): shared by several nodes.
    Postgres(String),
}

impl StoreSetting {
    /// `"sqlite"`, or a `postgres://` / `postgresql://` URL the client can read.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "sqlite" {
            return Ok(Self::Sqlite);
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return s
                .parse::<::postgres::Config>()
                .map(|_| Self::Postgres(s.to_string()))
                .map_err(|e| format!("store: not a PostgreSQL URL: {e}"));
        }
        Err(format!(
            "store must be \"sqlite\" or a \"postgres://user@host:port/database\" URL, not `{s}`"
        ))
    }

    /// Whether several nodes may use the store at once (PostgreSQL): only then do they claim
    /// agents in it. SQLite is one node's, whose own queue is the only one offering its agents.
    pub fn shared(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// Opens the ledger store. `node` names this server run in a shared store's claims, which
    /// hold `lease_ms` without renewal (the node timeout).
    pub fn open(
        &self,
        data_dir: &Path,
        node: &str,
        lease_ms: i64,
    ) -> Result<Box<dyn LedgerStore>, LedgerError> {
        Ok(match self {
            Self::Sqlite => Box::new(SqliteStore::open(&data_dir.join("callbacks.db"))?),
            Self::Postgres(url) => {
                Box::new(PostgresStore::connect(url, node)?.with_lease(lease_ms))
            }
        })
    }

    /// Opens the users who log in: a user added to a shared store logs in on every node.
    /// Blocking (the PostgreSQL client runs a runtime of its own): not on the async threads.
    pub fn open_users(&self, data_dir: &Path) -> Result<Box<dyn UserStore>, UserError> {
        Ok(match self {
            Self::Sqlite => Box::new(SqliteUsers::open(&data_dir.join("callbacks.db"))?),
            Self::Postgres(url) => Box::new(PostgresUsers::connect(url)?),
        })
    }

    /// Opens the flow's versions and the audit log. Blocking, as [`Self::open_users`].
    pub fn open_versions(&self, data_dir: &Path) -> Result<Box<dyn VersionStore>, VersionError> {
        Ok(match self {
            Self::Sqlite => Box::new(SqliteVersions::open(&data_dir.join("callbacks.db"))?),
            Self::Postgres(url) => Box::new(PostgresVersions::connect(url)?),
        })
    }

    /// What to name in messages: never the password in a URL.
    pub fn describe(&self, data_dir: &Path) -> String {
        match self {
            Self::Sqlite => data_dir.join("callbacks.db").display().to_string(),
            Self::Postgres(url) => match url.parse::<::postgres::Config>() {
                Ok(c) => format!(
                    "PostgreSQL database {} on {:?}",
                    c.get_dbname().unwrap_or("(default)"),
                    c.get_hosts()
                ),
                Err(_) => "PostgreSQL".into(),
            },
        }
    }
}

/// A stored context reads back as JSON; a damaged one as null rather than losing the promise.
fn read_context(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
}

/// An unknown state (a newer version wrote it) reads as escalated: a person looks.
fn read_state(text: &str) -> PromiseState {
    PromiseState::parse(text).unwrap_or(PromiseState::Escalated)
}

/// An unknown presence (a newer version wrote it) reads as away: nobody is rung who may not be
/// there.
fn read_presence(text: &str) -> crate::agents::Presence {
    crate::agents::Presence::parse(text).unwrap_or(crate::agents::Presence::Away)
}
