//! Flow versions and the audit log in SQLite, beside the ledger (their own connection).

use crate::callbacks::UnixMs;
use crate::config::versions::{
    AuditEntry, FileChange, FileTree, Snapshot, Version, VersionError, VersionStore,
};
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::path::Path;

pub struct SqliteVersions {
    conn: Connection,
}

fn db(e: rusqlite::Error) -> VersionError {
    VersionError::Storage(e.to_string())
}

const COLUMNS: &str = "id, created_at, author, message, tree, changes";

fn version_from(row: &Row<'_>) -> rusqlite::Result<Version> {
    let tree: String = row.get(4)?;
    let changes: String = row.get(5)?;
    Ok(Version {
        id: row.get(0)?,
        created_at: row.get(1)?,
        author: row.get(2)?,
        message: row.get(3)?,
        // A damaged row reads as empty rather than hiding the versions after it.
        tree: serde_json::from_str::<FileTree>(&tree).unwrap_or_default(),
        changes: serde_json::from_str::<Vec<FileChange>>(&changes).unwrap_or_default(),
    })
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
        let tree = serde_json::to_string(&snapshot.tree)
            .map_err(|e| VersionError::Storage(e.to_string()))?;
        let changes =
            serde_json::to_string(changes).map_err(|e| VersionError::Storage(e.to_string()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_keep_their_files_once_per_hash_and_the_audit_log_its_order() {
        let mut store = SqliteVersions::in_memory().unwrap();
        assert!(store.latest().unwrap().is_none());
        let mut snap = Snapshot::default();
        snap.tree.insert("prompts/en.toml".into(), "h1".into());
        snap.blobs.insert("h1".into(), b"x = 1".to_vec());
        let v1 = store.add_version(1, "alice", "first", &snap, &[]).unwrap();
        snap.tree.insert("audio/en/a.wav".into(), "h2".into());
        snap.blobs.insert("h2".into(), b"RIFF".to_vec());
        let change = FileChange {
            path: "audio/en/a.wav".into(),
            change: "added".into(),
            lines: vec![],
        };
        let v2 = store
            .add_version(2, "bob", "second", &snap, std::slice::from_ref(&change))
            .unwrap();
        assert!(v2 > v1);
        let latest = store.latest().unwrap().unwrap();
        assert_eq!((latest.id, latest.author.as_str()), (v2, "bob"));
        assert_eq!(latest.changes, [change]);
        assert_eq!(latest.tree.len(), 2);
        assert_eq!(store.version(v1).unwrap().unwrap().tree.len(), 1);
        assert_eq!(store.blob("h1").unwrap().unwrap(), b"x = 1");
        let ids: Vec<_> = store.versions(10).unwrap().iter().map(|v| v.id).collect();
        assert_eq!(ids, [v2, v1]);
        store.audit(5, "alice", "login", "").unwrap();
        store.audit(6, "alice", "publish", "version 2").unwrap();
        let log = store.audit_log(10).unwrap();
        assert_eq!(log[0].action, "publish");
        assert_eq!(log[1].action, "login");
    }
}
