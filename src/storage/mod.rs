//! Durable storage. The embedded default is SQLite in WAL mode with `synchronous=FULL`: a
//! promise is on disk (fsynced) when its insert returns, so a crash right after cannot lose it.

mod sqlite;

pub use sqlite::SqliteStore;
