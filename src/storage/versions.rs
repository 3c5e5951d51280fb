//! Flow versions and the audit log: in SQLite beside the ledger (their own connection), or in
//! the PostgreSQL database several nodes share, where each node follows the newest version.

use super::pg::PgConn;
use crate::callbacks::UnixMs;
use crate::config::versions::{
    AuditEntry, FileChange, FileTree, Snapshot, Version, VersionError, VersionStore,
};
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::path::Path;
use std::sync::Mutex;

pub struct SqliteVersions {
    conn: Connection,
}

fn db(e: rusqlite::Error) -> VersionError {
    VersionError::Storage(e.to_string())
}

const COLUMNS: &str = "id, created_at, author, message, tree, changes";

/// A version from its columns; a damaged tree or change list reads as empty rather than
/// hiding the versions after it.
fn version_of(
    (id, created_at, author, message): (i64, UnixMs, String, String),
    tree: &str,
    changes: &str,
) -> Version {
    Version {
        id,
        created_at,
        author,
        message,
        tree: serde_json::from_str::<FileTree>(tree).unwrap_or_default(),
        changes: serde_json::from_str::<Vec<FileChange>>(changes).unwrap_or_default(),
    }
}

fn version_from(row: &Row<'_>) -> rusqlite::Result<Version> {
    let tree: String = row.get(4)?;
    let changes: String = row.get(5)?;
    Ok(version_of(
        (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?),
        &tree,
        &changes,
    ))
}

/// A version's tree and changes as stored (JSON).
fn encoded(snapshot: &Snapshot, changes: &[FileChange]) -> Result<(String, String), VersionError> {
    let json = |e: serde_json::Error| VersionError::Storage(e.to_string());
    Ok((
        serde_json::to_string(&snapshot.tree).map_err(json)?,
        serde_json::to_string(changes).map_err(json)?,
    ))
}

impl SqliteVersions {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, VersionError> {
        let conn = Connection::open(path).map_err(db)?;
        Ok(Self {
            conn: super::sqlite::prepare(conn).map_err(db)?,
        })
    }

    pub fn in_memory() -> Result<Self, VersionError> {
        let conn = Connection::open_in_memory().map_err(db)?;
        Ok(Self {
            conn: super::sqlite::prepare(conn).map_err(db)?,
        })
    }
}

impl VersionStore for SqliteVersions {
    fn add_version(
        &mut self,
        created_at: UnixMs,
        author: &str,
        message: &str,
        snapshot: &Snapshot,
        changes: &[FileChange],
    ) -> Result<i64, VersionError> {
        let (tree, changes) = encoded(snapshot, changes)?;
        // One transaction: a version is never stored without the contents of its files.
        let tx = self.conn.transaction().map_err(db)?;
        {
            let mut blob = tx
                .prepare("INSERT OR IGNORE INTO flow_blobs (hash, bytes) VALUES (?1, ?2)")
                .map_err(db)?;
            for hash in snapshot.tree.values() {
                if let Some(bytes) = snapshot.blobs.get(hash) {
                    blob.execute(params![hash, bytes]).map_err(db)?;
                }
            }
        }
        tx.execute(
            "INSERT INTO flow_versions (created_at, author, message, tree, changes) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![created_at, author, message, tree, changes],
        )
        .map_err(db)?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(db)?;
        Ok(id)
    }

    fn version(&self, id: i64) -> Result<Option<Version>, VersionError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM flow_versions WHERE id = ?1"),
                [id],
                version_from,
            )
            .optional()
            .map_err(db)
    }

    fn latest(&self) -> Result<Option<Version>, VersionError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM flow_versions ORDER BY id DESC LIMIT 1"),
                [],
                version_from,
            )
            .optional()
            .map_err(db)
    }

    fn versions(&self, limit: usize) -> Result<Vec<Version>, VersionError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM flow_versions ORDER BY id DESC LIMIT ?1"
            ))
            .map_err(db)?;
        let rows = stmt
            .query_map([limit as i64], version_from)
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?;
        Ok(rows)
    }

    fn blob(&self, hash: &str) -> Result<Option<Vec<u8>>, VersionError> {
        self.conn
            .query_row(
                "SELECT bytes FROM flow_blobs WHERE hash = ?1",
                [hash],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)
    }

    fn audit(
        &mut self,
        at: UnixMs,
        who: &str,
        action: &str,
        detail: &str,
    ) -> Result<(), VersionError> {
        self.conn
            .execute(
                "INSERT INTO audit_log (at, who, action, detail) VALUES (?1, ?2, ?3, ?4)",
                params![at, who, action, detail],
            )
            .map_err(db)?;
        Ok(())
    }

    fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, VersionError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, at, who, action, detail FROM audit_log ORDER BY id DESC LIMIT ?1")
            .map_err(db)?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok(AuditEntry {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    who: r.get(2)?,
                    action: r.get(3)?,
                    detail: r.get(4)?,
                })
            })
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?;
        Ok(rows)
    }
}

/// Versions in PostgreSQL, shared by the nodes. The connection is behind a lock because the
/// client needs `&mut` even to read; only the flow task uses it.
pub struct PostgresVersions {
    conn: Mutex<PgConn>,
}

/// The versions' migrations, counted as component `flow` in `humanline_schema`.
const PG_MIGRATIONS: &[&str] = &[r#"
CREATE TABLE flow_blobs (
    hash  TEXT  PRIMARY KEY,
    bytes BYTEA NOT NULL
);
CREATE TABLE flow_versions (
    id         BIGSERIAL PRIMARY KEY,
    created_at BIGINT NOT NULL,
    author     TEXT   NOT NULL,
    message    TEXT   NOT NULL,
    tree       TEXT   NOT NULL,
    changes    TEXT   NOT NULL
);
CREATE TABLE audit_log (
    id     BIGSERIAL PRIMARY KEY,
    at     BIGINT NOT NULL,
    who    TEXT   NOT NULL,
    action TEXT   NOT NULL,
    detail TEXT   NOT NULL
);
"#];

fn pg(e: ::postgres::Error) -> VersionError {
    VersionError::Storage(super::pg::db(e))
}

fn pg_version(row: &::postgres::Row) -> Result<Version, VersionError> {
    let tree: String = row.try_get(4).map_err(pg)?;
    let changes: String = row.try_get(5).map_err(pg)?;
    Ok(version_of(
        (
            row.try_get(0).map_err(pg)?,
            row.try_get(1).map_err(pg)?,
            row.try_get(2).map_err(pg)?,
            row.try_get(3).map_err(pg)?,
        ),
        &tree,
        &changes,
    ))
}

impl PostgresVersions {
    /// Connects and brings the versions' tables up to date.
    pub fn connect(url: &str) -> Result<Self, VersionError> {
        let mut conn = PgConn::connect(url).map_err(VersionError::Storage)?;
        conn.migrate("flow", PG_MIGRATIONS)
            .map_err(VersionError::Storage)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut ::postgres::Client) -> Result<T, ::postgres::Error>,
    ) -> Result<T, VersionError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(conn.client().map_err(VersionError::Storage)?).map_err(pg)
    }

    fn one(
        &self,
        sql: &str,
        params: &[&(dyn ::postgres::types::ToSql + Sync)],
    ) -> Result<Option<Version>, VersionError> {
        self.with(|c| c.query_opt(sql, params))?
            .as_ref()
            .map(pg_version)
            .transpose()
    }
}

impl VersionStore for PostgresVersions {
    fn add_version(
        &mut self,
        created_at: UnixMs,
        author: &str,
        message: &str,
        snapshot: &Snapshot,
        changes: &[FileChange],
    ) -> Result<i64, VersionError> {
        let (tree, changes) = encoded(snapshot, changes)?;
        // One transaction: a version is never stored without the contents of its files.
        self.with(|c| {
            let mut tx = c.transaction()?;
            for hash in snapshot.tree.values() {
                if let Some(bytes) = snapshot.blobs.get(hash) {
                    tx.execute(
                        "INSERT INTO flow_blobs (hash, bytes) VALUES ($1, $2) \
                         ON CONFLICT (hash) DO NOTHING",
                        &[&hash.as_str(), &bytes.as_slice()],
                    )?;
                }
            }
            let id: i64 = tx
                .query_one(
                    "INSERT INTO flow_versions (created_at, author, message, tree, changes) \
                     VALUES ($1, $2, $3, $4, $5) RETURNING id",
                    &[&created_at, &author, &message, &tree, &changes],
                )?
                .try_get(0)?;
            tx.commit()?;
            Ok(id)
        })
    }

    fn version(&self, id: i64) -> Result<Option<Version>, VersionError> {
        self.one(
            &format!("SELECT {COLUMNS} FROM flow_versions WHERE id = $1"),
            &[&id],
        )
    }

    fn latest(&self) -> Result<Option<Version>, VersionError> {
        self.one(
            &format!("SELECT {COLUMNS} FROM flow_versions ORDER BY id DESC LIMIT 1"),
            &[],
        )
    }

    fn versions(&self, limit: usize) -> Result<Vec<Version>, VersionError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(|c| {
            c.query(
                &format!("SELECT {COLUMNS} FROM flow_versions ORDER BY id DESC LIMIT $1"),
                &[&limit],
            )
        })?
        .iter()
        .map(pg_version)
        .collect()
    }

    fn blob(&self, hash: &str) -> Result<Option<Vec<u8>>, VersionError> {
        self.with(|c| c.query_opt("SELECT bytes FROM flow_blobs WHERE hash = $1", &[&hash]))?
            .map(|r| r.try_get(0).map_err(pg))
            .transpose()
    }

    fn audit(
        &mut self,
        at: UnixMs,
        who: &str,
        action: &str,
        detail: &str,
    ) -> Result<(), VersionError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO audit_log (at, who, action, detail) VALUES ($1, $2, $3, $4)",
                &[&at, &who, &action, &detail],
            )
        })?;
        Ok(())
    }

    fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, VersionError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(|c| {
            c.query(
                "SELECT id, at, who, action, detail FROM audit_log ORDER BY id DESC LIMIT $1",
                &[&limit],
            )
        })?
        .iter()
        .map(|r| {
            Ok(AuditEntry {
                id: r.try_get(0).map_err(pg)?,
                at: r.try_get(1).map_err(pg)?,
                who: r.try_get(2).map_err(pg)?,
                action: r.try_get(3).map_err(pg)?,
                detail: r.try_get(4).map_err(pg)?,
            })
        })
        .collect()
    }
}

// Tested on both stores in tests/ledger_stores.rs.
