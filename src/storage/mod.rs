//! Durable storage. The embedded default is SQLite in WAL mode with `synchronous=FULL`: a
//! promise is on disk (fsynced) when its insert returns, so a crash right after cannot lose it.
//! The users who log in live in the same database, on a connection of their own.

mod sqlite;
mod users;

pub use sqlite::SqliteStore;
pub use users::SqliteUsers;
