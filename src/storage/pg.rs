//! One PostgreSQL connection of a store (the ledger, the users, the flow versions): opened
//! with the durability settings, reopened when the server closed it, and each component's
//! migrations counted in `humanline_schema`. Errors are messages; each store wraps them in
//! its own error type.

use ::postgres::{Client, Config, NoTls};
use std::time::Duration;

/// A database that does not answer within this is reported, not waited for.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Key of the advisory lock that serializes migrations of nodes starting together.
const MIGRATION_LOCK: i64 = 0x4855_4d41_4e4c; // "HUMANL"

/// The server's own words when it refused (`db error` alone says nothing: a missing database,
/// a wrong password), else the client's.
pub(super) fn db(e: ::postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("postgres: {}", d.message()),
        None => format!("postgres: {e}"),
    }
}

pub(super) struct PgConn {
    client: Client,
    config: Config,
}

impl PgConn {
    /// Connects to `url` (`postgres://user@host:port/database`).
    pub(super) fn connect(url: &str) -> Result<Self, String> {
        let mut config: Config = url.parse().map_err(|e| format!("postgres URL: {e}"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        Ok(Self {
            client: Self::session(&config)?,
            config,
        })
    }

    fn session(config: &Config) -> Result<Client, String> {
        let mut client = config.connect(NoTls).map_err(db)?;
        // The durability promise: a commit returns once flushed on the server, whatever the
        // server's default. A lock held elsewhere is waited for 5 s, like SQLite's busy timeout.
        client
            .batch_execute("SET synchronous_commit = on; SET lock_timeout = '5s'")
            .map_err(db)?;
        Ok(client)
    }

    /// The connection, reopened if the server closed it (a restart, a failover).
    pub(super) fn client(&mut self) -> Result<&mut Client, String> {
        if self.client.is_closed() {
            self.client = Self::session(&self.config)?;
        }
        Ok(&mut self.client)
    }

    /// Applies `component`'s migrations not applied yet, in order. Nodes starting together
    /// migrate one after the other; a schema newer than this build is refused.
    pub(super) fn migrate(&mut self, component: &str, migrations: &[&str]) -> Result<(), String> {
        let mut tx = self.client()?.transaction().map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(db)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS humanline_schema (\
               component TEXT PRIMARY KEY, version INTEGER NOT NULL)",
        )
        .map_err(db)?;
        let done: i32 = tx
            .query_opt(
                "SELECT version FROM humanline_schema WHERE component = $1",
                &[&component],
            )
            .map_err(db)?
            .map(|r| r.try_get(0).map_err(db))
            .transpose()?
            .unwrap_or(0);
        let done = usize::try_from(done).unwrap_or(0);
        if done > migrations.len() {
            return Err(format!(
                "postgres: the {component} schema is version {done}, newer than this Humanline \
                 knows ({}): upgrade this node",
                migrations.len()
            ));
        }
        for sql in migrations.iter().skip(done) {
            tx.batch_execute(sql).map_err(db)?;
        }
        let version = i32::try_from(migrations.len()).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO humanline_schema (component, version) VALUES ($1, $2) \
             ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
            &[&component, &version],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }
}
