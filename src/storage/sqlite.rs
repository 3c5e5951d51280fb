//! The callback ledger in embedded SQLite.

use crate::agents::Presence;
use crate::callbacks::{
    Attempt, AttemptOutcome, LedgerError, LedgerStore, NewPromise, Promise, PromiseState, UnixMs,
};
use crate::nodes::{
    AgentClaim, AgentClaimRow, HeldCall, HeldState, NodeBeat, PresenceRow, adopted_key,
};
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::path::Path;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE callbacks (
    id              INTEGER PRIMARY KEY,
    created_at      INTEGER NOT NULL,
    number          TEXT    NOT NULL,
    not_before      INTEGER NOT NULL,
    reason          TEXT    NOT NULL,
    context         TEXT    NOT NULL,
    automatic       INTEGER NOT NULL,
    origin_call     TEXT    NOT NULL UNIQUE,
    state           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    completed_at    INTEGER
);
CREATE INDEX callbacks_due ON callbacks (state, next_attempt_at);
CREATE TABLE callback_attempts (
    id          INTEGER PRIMARY KEY,
    callback_id INTEGER NOT NULL REFERENCES callbacks (id),
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    outcome     TEXT
);
CREATE INDEX callback_attempts_by_callback ON callback_attempts (callback_id);
"#,
    // Promises are keyed on an id the server makes per request, not on the SIP Call-ID the
    // caller controls (a reused Call-ID or a second acceptance is a new promise); the Call-ID
    // is kept beside it. A promise kept otherwise (the caller reached a person) says why.
    // Existing keys are old Call-IDs: still unique, still readable.
    r#"
ALTER TABLE callbacks RENAME COLUMN origin_call TO promise_key;
ALTER TABLE callbacks ADD COLUMN call_id TEXT NOT NULL DEFAULT '';
UPDATE callbacks SET call_id = promise_key;
ALTER TABLE callbacks ADD COLUMN completed_reason TEXT;
UPDATE callbacks SET completed_reason = 'called_back' WHERE state = 'completed';
"#,
    // People who log in (console, API, SIP phones). The password is kept as an argon2 hash;
    // SIP digest authentication (RFC 2617/8760) cannot use that, so beside it is HA1 =
    // MD5(name:realm:password) for the realm it was set for. Ledgers from before have no
    // users: the first is added with `humanline users add`.
    r#"
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    role          TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    sip_realm     TEXT    NOT NULL,
    sip_ha1       TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
);
"#,
    // Nodes (src/nodes): each server run beats in `humanline_nodes`; the callers it holds who
    // asked for a person are in `held_calls` until served or gone. A node found dead is marked
    // adopted by the node that turned its held callers into promises.
    r#"
CREATE TABLE humanline_nodes (
    node       TEXT    PRIMARY KEY,
    name       TEXT    NOT NULL,
    started_at INTEGER NOT NULL,
    beat_at    INTEGER NOT NULL,
    adopted_by TEXT,
    adopted_at INTEGER
);
CREATE TABLE held_calls (
    call_key TEXT    PRIMARY KEY,
    node     TEXT    NOT NULL,
    number   TEXT    NOT NULL,
    call_id  TEXT    NOT NULL,
    reason   TEXT    NOT NULL,
    context  TEXT    NOT NULL,
    state    TEXT    NOT NULL,
    since    INTEGER NOT NULL
);
CREATE INDEX held_calls_by_node ON held_calls (node);
"#,
    // Flow versions (issue 13): each a tree of the flow's files by SHA-256, the contents
    // stored once per hash; and the audit log of logins and changes. Nothing is deleted.
    r#"
CREATE TABLE flow_blobs (
    hash  TEXT PRIMARY KEY,
    bytes BLOB NOT NULL
);
CREATE TABLE flow_versions (
    id         INTEGER PRIMARY KEY,
    created_at INTEGER NOT NULL,
    author     TEXT    NOT NULL,
    message    TEXT    NOT NULL,
    tree       TEXT    NOT NULL,
    changes    TEXT    NOT NULL
);
CREATE TABLE audit_log (
    id     INTEGER PRIMARY KEY,
    at     INTEGER NOT NULL,
    who    TEXT    NOT NULL,
    action TEXT    NOT NULL,
    detail TEXT    NOT NULL
);
"#,
    // Agents shared by the nodes (src/nodes): a node claims an agent before ringing them and
    // releases them when the leg ends; one row per agent, so one call at a time on all nodes.
    r#"
CREATE TABLE agent_claims (
    agent      TEXT    PRIMARY KEY,
    node       TEXT    NOT NULL,
    call_key   TEXT    NOT NULL,
    claimed_at INTEGER NOT NULL
);
"#,
    // Agents' presence as last set, followed by every node on a shared store.
    r#"
CREATE TABLE agent_presence (
    agent    TEXT    PRIMARY KEY,
    presence TEXT    NOT NULL,
    set_at   INTEGER NOT NULL
);
"#,
];

pub struct SqliteStore {
    conn: Connection,
}

/// Sets a connection up as every store here uses it and brings the schema up to date: WAL
/// lets readers (the console, `callbacks list`, the users table) run beside the dialer;
/// synchronous=FULL fsyncs every commit, so a promise survives power loss.
pub(super) fn prepare(mut conn: Connection) -> rusqlite::Result<Connection> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    migrate(&mut conn)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let done: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        // Immediate: another process migrating at the same time waits instead of failing.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

fn db(e: rusqlite::Error) -> LedgerError {
    LedgerError::Storage(e.to_string())
}

const PROMISE_COLUMNS: &str = "id, created_at, number, not_before, reason, context, automatic, promise_key, \
     state, attempts, next_attempt_at, completed_at, call_id, completed_reason";

fn promise_from(row: &Row<'_>) -> rusqlite::Result<Promise> {
    let context: String = row.get(5)?;
    let state: String = row.get(8)?;
    Ok(Promise {
        id: row.get(0)?,
        created_at: row.get(1)?,
        number: row.get(2)?,
        not_before: row.get(3)?,
        reason: row.get(4)?,
        context: super::read_context(&context),
        automatic: row.get(6)?,
        key: row.get(7)?,
        call_id: row.get(12)?,
        completed_reason: row.get(13)?,
        state: super::read_state(&state),
        attempts: row.get(9)?,
        next_attempt_at: row.get(10)?,
        completed_at: row.get(11)?,
    })
}

fn attempt_from(row: &Row<'_>) -> rusqlite::Result<Attempt> {
    Ok(Attempt {
        id: row.get(0)?,
        promise_id: row.get(1)?,
        started_at: row.get(2)?,
        ended_at: row.get(3)?,
        outcome: row
            .get::<_, Option<String>>(4)?
            .as_deref()
            .and_then(AttemptOutcome::parse),
    })
}

impl SqliteStore {
    /// A write transaction that takes the write lock up front, so that a writer in another
    /// process makes us wait (busy timeout) instead of failing at once on the upgrade from
    /// read to write.
    fn write_tx(&mut self) -> Result<rusqlite::Transaction<'_>, LedgerError> {
        self.conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)
    }

    /// Opens (creating if needed) the ledger database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let conn = Connection::open(path).map_err(db)?;
        Self::init(conn)
    }

    /// Like [`Self::open`] but commits without fsync (`synchronous=OFF`). Only for measuring
    /// what durability costs (`humanline bench callbacks`): a promise stored this way can be
    /// lost to a power cut, so the server never uses it.
    pub fn open_without_fsync(path: &Path) -> Result<Self, LedgerError> {
        let store = Self::open(path)?;
        store
            .conn
            .pragma_update(None, "synchronous", "OFF")
            .map_err(db)?;
        Ok(store)
    }

    /// An in-memory ledger, for tests and benchmarks of the logic alone.
    pub fn in_memory() -> Result<Self, LedgerError> {
        Self::init(Connection::open_in_memory().map_err(db)?)
    }

    fn init(conn: Connection) -> Result<Self, LedgerError> {
        Ok(Self {
            conn: prepare(conn).map_err(db)?,
        })
    }

    /// Stores a promise unless one with its key exists; returns its id and whether it is new.
    fn insert_in(
        conn: &Connection,
        p: &NewPromise,
        now: UnixMs,
    ) -> Result<(i64, bool), LedgerError> {
        let existing: Option<i64> = conn
            .query_row(
                "SELECT id FROM callbacks WHERE promise_key = ?1",
                [&p.key],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        if let Some(id) = existing {
            return Ok((id, false));
        }
        conn.execute(
            "INSERT INTO callbacks (created_at, number, not_before, reason, context, automatic, \
             promise_key, state, next_attempt_at, call_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'promised', ?8, ?9)",
            params![
                now,
                p.number,
                p.not_before,
                p.reason,
                p.context.to_string(),
                p.automatic,
                p.key,
                p.not_before.max(now),
                p.call_id
            ],
        )
        .map_err(db)?;
        Ok((conn.last_insert_rowid(), true))
    }

    fn get_in(conn: &Connection, id: i64) -> Result<Promise, LedgerError> {
        conn.query_row(
            &format!("SELECT {PROMISE_COLUMNS} FROM callbacks WHERE id = ?1"),
            [id],
            promise_from,
        )
        .optional()
        .map_err(db)?
        .ok_or(LedgerError::NotFound(id))
    }
}

impl LedgerStore for SqliteStore {
    fn insert(&mut self, p: &NewPromise, now: UnixMs) -> Result<Promise, LedgerError> {
        let tx = self.write_tx()?;
        let (id, _) = Self::insert_in(&tx, p, now)?;
        let promise = Self::get_in(&tx, id)?;
        tx.commit().map_err(db)?;
        Ok(promise)
    }

    fn claim_due(
        &mut self,
        now: UnixMs,
        limit: usize,
    ) -> Result<Vec<(Promise, Attempt)>, LedgerError> {
        let tx = self.write_tx()?;
        let due: Vec<Promise> = {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT {PROMISE_COLUMNS} FROM callbacks WHERE state IN ('promised', 'retrying') \
                     AND next_attempt_at <= ?1 ORDER BY next_attempt_at, id LIMIT ?2"
                ))
                .map_err(db)?;
            stmt.query_map(params![now, limit as i64], promise_from)
                .map_err(db)?
                .collect::<Result<_, _>>()
                .map_err(db)?
        };
        let mut claimed = Vec::with_capacity(due.len());
        for p in due {
            tx.execute(
                "UPDATE callbacks SET state = 'dialing', attempts = attempts + 1 WHERE id = ?1",
                [p.id],
            )
            .map_err(db)?;
            tx.execute(
                "INSERT INTO callback_attempts (callback_id, started_at) VALUES (?1, ?2)",
                params![p.id, now],
            )
            .map_err(db)?;
            let attempt = Attempt {
                id: tx.last_insert_rowid(),
                promise_id: p.id,
                started_at: now,
                ended_at: None,
                outcome: None,
            };
            claimed.push((Self::get_in(&tx, p.id)?, attempt));
        }
        tx.commit().map_err(db)?;
        Ok(claimed)
    }

    fn finish_attempt(
        &mut self,
        attempt: i64,
        outcome: AttemptOutcome,
        state: PromiseState,
        next_attempt_at: UnixMs,
        now: UnixMs,
    ) -> Result<Promise, LedgerError> {
        let tx = self.write_tx()?;
        let promise_id: i64 = tx
            .query_row(
                "SELECT callback_id FROM callback_attempts WHERE id = ?1 AND outcome IS NULL OR id = ?1 AND outcome = 'connected'",
                [attempt],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?
            .ok_or(LedgerError::StaleAttempt(attempt))?;
        tx.execute(
            "UPDATE callback_attempts SET ended_at = ?2, outcome = ?3 WHERE id = ?1",
            params![attempt, now, outcome.as_str()],
        )
        .map_err(db)?;
        let completed_at = (state == PromiseState::Completed).then_some(now);
        let completed_reason = (state == PromiseState::Completed).then_some("called_back");
        // A completed promise is never reopened, whatever a late attempt reports.
        tx.execute(
            "UPDATE callbacks SET state = ?2, next_attempt_at = ?3, completed_at = COALESCE(completed_at, ?4), \
             completed_reason = COALESCE(completed_reason, ?5) WHERE id = ?1 AND state != 'completed'",
            params![promise_id, state.as_str(), next_attempt_at, completed_at, completed_reason],
        )
        .map_err(db)?;
        let p = Self::get_in(&tx, promise_id)?;
        tx.commit().map_err(db)?;
        Ok(p)
    }

    fn mark_connected(&mut self, attempt: i64, now: UnixMs) -> Result<Promise, LedgerError> {
        let tx = self.write_tx()?;
        let promise_id: i64 = tx
            .query_row(
                "SELECT callback_id FROM callback_attempts WHERE id = ?1 AND outcome IS NULL",
                [attempt],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?
            .ok_or(LedgerError::StaleAttempt(attempt))?;
        tx.execute(
            "UPDATE callback_attempts SET outcome = 'connected' WHERE id = ?1",
            [attempt],
        )
        .map_err(db)?;
        tx.execute(
            "UPDATE callbacks SET state = 'connected' WHERE id = ?1 AND state = 'dialing'",
            [promise_id],
        )
        .map_err(db)?;
        let _ = now;
        let p = Self::get_in(&tx, promise_id)?;
        tx.commit().map_err(db)?;
        Ok(p)
    }

    fn complete(&mut self, id: i64, reason: &str, now: UnixMs) -> Result<Promise, LedgerError> {
        let tx = self.write_tx()?;
        tx.execute(
            "UPDATE callbacks SET state = 'completed', completed_at = ?2, completed_reason = ?3 \
             WHERE id = ?1 AND state != 'completed'",
            params![id, now, reason],
        )
        .map_err(db)?;
        let p = Self::get_in(&tx, id)?;
        tx.commit().map_err(db)?;
        Ok(p)
    }

    fn recover_interrupted(&mut self, now: UnixMs) -> Result<usize, LedgerError> {
        let tx = self.write_tx()?;
        // One node uses this file: every agent claimed is an earlier run's, whose legs ended
        // with it. Left, they would keep those agents from callers until that run counts dead.
        tx.execute("DELETE FROM agent_claims", []).map_err(db)?;
        tx.execute(
            "UPDATE callback_attempts SET ended_at = ?1, outcome = 'interrupted' \
             WHERE ended_at IS NULL AND (outcome IS NULL OR outcome = 'connected')",
            [now],
        )
        .map_err(db)?;
        // Overdue first: they keep their old next_attempt_at, which is in the past.
        let n = tx
            .execute(
                "UPDATE callbacks SET state = 'retrying', next_attempt_at = MIN(next_attempt_at, ?1) \
                 WHERE state IN ('dialing', 'connected')",
                [now],
            )
            .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(n)
    }

    fn get(&mut self, id: i64) -> Result<Promise, LedgerError> {
        Self::get_in(&self.conn, id)
    }

    fn attempts(&mut self, id: i64) -> Result<Vec<Attempt>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, callback_id, started_at, ended_at, outcome FROM callback_attempts WHERE callback_id = ?1 ORDER BY id")
            .map_err(db)?;
        let rows = stmt
            .query_map([id], attempt_from)
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?;
        Ok(rows)
    }

    fn list(&mut self, state: Option<PromiseState>) -> Result<Vec<Promise>, LedgerError> {
        let sql = format!(
            "SELECT {PROMISE_COLUMNS} FROM callbacks WHERE ?1 IS NULL OR state = ?1 ORDER BY id"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(db)?;
        let rows = stmt
            .query_map([state.map(|s| s.as_str())], promise_from)
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?;
        Ok(rows)
    }

    fn count_by_state(&mut self) -> Result<Vec<(PromiseState, u64)>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare("SELECT state, COUNT(*) FROM callbacks GROUP BY state")
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(db)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db)?;
        Ok(rows
            .into_iter()
            .filter_map(|(state, n)| Some((PromiseState::parse(&state)?, n.max(0) as u64)))
            .collect())
    }

    fn attempt(&mut self, attempt: i64) -> Result<Attempt, LedgerError> {
        self.conn
            .query_row(
                "SELECT id, callback_id, started_at, ended_at, outcome FROM callback_attempts WHERE id = ?1",
                [attempt],
                attempt_from,
            )
            .optional()
            .map_err(db)?
            .ok_or(LedgerError::StaleAttempt(attempt))
    }

    fn beat(&mut self, node: &str, name: &str, now: UnixMs) -> Result<bool, LedgerError> {
        let tx = self.write_tx()?;
        let adopted: Option<Option<String>> = tx
            .query_row(
                "SELECT adopted_by FROM humanline_nodes WHERE node = ?1",
                [node],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        tx.execute(
            "INSERT INTO humanline_nodes (node, name, started_at, beat_at) VALUES (?1, ?2, ?3, ?3) \
             ON CONFLICT (node) DO UPDATE SET beat_at = MAX(beat_at, excluded.beat_at), \
             adopted_by = NULL, adopted_at = NULL",
            params![node, name, now],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(adopted.flatten().is_some())
    }

    fn hold_call(&mut self, c: &HeldCall) -> Result<(), LedgerError> {
        let tx = self.write_tx()?;
        tx.execute(
            &format!(
                "INSERT INTO held_calls ({HELD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (call_key) DO UPDATE SET number = excluded.number, \
                 reason = excluded.reason, context = excluded.context, state = excluded.state"
            ),
            params![
                c.key,
                c.node,
                c.number,
                c.call_id,
                c.reason,
                c.context.to_string(),
                c.state.as_str(),
                c.since
            ],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    fn release_call(&mut self, key: &str, served: bool, now: UnixMs) -> Result<(), LedgerError> {
        let tx = self.write_tx()?;
        tx.execute("DELETE FROM held_calls WHERE call_key = ?1", [key])
            .map_err(db)?;
        if served {
            tx.execute(
                "UPDATE callbacks SET state = 'completed', completed_at = ?2, \
                 completed_reason = 'served_by_agent' WHERE promise_key = ?1 AND state != 'completed'",
                params![adopted_key(key), now],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    fn adopt_dead_nodes(
        &mut self,
        me: &str,
        dead_before: UnixMs,
        now: UnixMs,
    ) -> Result<Vec<Promise>, LedgerError> {
        let tx = self.write_tx()?;
        let made = Self::adopt_in(&tx, me, dead_before, now)?;
        tx.commit().map_err(db)?;
        Ok(made)
    }

    fn held_calls(&mut self) -> Result<Vec<HeldCall>, LedgerError> {
        held_in(&self.conn, None)
    }

    fn nodes(&mut self) -> Result<Vec<NodeBeat>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT node, name, started_at, beat_at, adopted_by FROM humanline_nodes \
                 ORDER BY started_at, node",
            )
            .map_err(db)?;
        stmt.query_map([], |r| {
            Ok(NodeBeat {
                node: r.get(0)?,
                name: r.get(1)?,
                started_at: r.get(2)?,
                beat_at: r.get(3)?,
                adopted_by: r.get(4)?,
            })
        })
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)
    }

    fn claim_agent(
        &mut self,
        agent: &str,
        node: &str,
        call: &str,
        dead_before: UnixMs,
        now: UnixMs,
    ) -> Result<AgentClaim, LedgerError> {
        // The write lock is taken up front: another process's claim of the same agent waits
        // for this one's commit, then sees it.
        let tx = self.write_tx()?;
        let away = tx
            .query_row(
                "SELECT 1 FROM agent_presence WHERE agent = ?1 AND presence = 'away'",
                [agent],
                |_| Ok(()),
            )
            .optional()
            .map_err(db)?
            .is_some();
        if away {
            return Ok(AgentClaim::Away);
        }
        let held: Option<(AgentClaimRow, Option<UnixMs>)> = tx
            .query_row(
                "SELECT c.agent, c.node, c.call_key, c.claimed_at, n.beat_at FROM agent_claims c \
                 LEFT JOIN humanline_nodes n ON n.node = c.node WHERE c.agent = ?1",
                [agent],
                |r| Ok((claim_from(r)?, r.get(4)?)),
            )
            .optional()
            .map_err(db)?;
        if let Some((claim, beat)) = held
            && !claim.yields_to(node, beat, dead_before)
        {
            return Ok(AgentClaim::HeldBy {
                node: claim.node,
                call: claim.call,
            });
        }
        tx.execute(
            "INSERT INTO agent_claims (agent, node, call_key, claimed_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (agent) DO UPDATE SET node = excluded.node, \
             call_key = excluded.call_key, claimed_at = excluded.claimed_at",
            params![agent, node, call, now],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(AgentClaim::Granted)
    }

    fn release_agent(&mut self, agent: &str, node: &str, call: &str) -> Result<(), LedgerError> {
        let tx = self.write_tx()?;
        tx.execute(
            "DELETE FROM agent_claims WHERE agent = ?1 AND node = ?2 AND call_key = ?3",
            params![agent, node, call],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    fn agent_claims(&mut self) -> Result<Vec<AgentClaimRow>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare("SELECT agent, node, call_key, claimed_at FROM agent_claims ORDER BY agent")
            .map_err(db)?;
        stmt.query_map([], claim_from)
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)
    }

    fn set_presence(
        &mut self,
        agent: &str,
        presence: Presence,
        at: UnixMs,
    ) -> Result<(), LedgerError> {
        self.conn
            .execute(
                "INSERT INTO agent_presence (agent, presence, set_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (agent) DO UPDATE SET presence = excluded.presence, \
                 set_at = excluded.set_at WHERE agent_presence.set_at <= excluded.set_at",
                params![agent, presence.as_str(), at],
            )
            .map_err(db)?;
        Ok(())
    }

    fn presences(&mut self) -> Result<Vec<PresenceRow>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare("SELECT agent, presence, set_at FROM agent_presence ORDER BY agent")
            .map_err(db)?;
        stmt.query_map([], |r| {
            let presence: String = r.get(1)?;
            Ok(PresenceRow {
                agent: r.get(0)?,
                presence: super::read_presence(&presence),
                set_at: r.get(2)?,
            })
        })
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)
    }
}

fn claim_from(r: &Row<'_>) -> rusqlite::Result<AgentClaimRow> {
    Ok(AgentClaimRow {
        agent: r.get(0)?,
        node: r.get(1)?,
        call: r.get(2)?,
        claimed_at: r.get(3)?,
    })
}

const HELD_COLUMNS: &str = "call_key, node, number, call_id, reason, context, state, since";

fn held_from(row: &Row<'_>) -> rusqlite::Result<HeldCall> {
    let context: String = row.get(5)?;
    let state: String = row.get(6)?;
    Ok(HeldCall {
        key: row.get(0)?,
        node: row.get(1)?,
        number: row.get(2)?,
        call_id: row.get(3)?,
        reason: row.get(4)?,
        context: super::read_context(&context),
        state: HeldState::parse(&state),
        since: row.get(7)?,
    })
}

/// The held calls of `node` (all nodes: `None`), oldest first.
fn held_in(conn: &Connection, node: Option<&str>) -> Result<Vec<HeldCall>, LedgerError> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {HELD_COLUMNS} FROM held_calls WHERE ?1 IS NULL OR node = ?1 ORDER BY since, call_key"
        ))
        .map_err(db)?;
    stmt.query_map([node], held_from)
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)
}

impl SqliteStore {
    /// [`LedgerStore::adopt_dead_nodes`] inside the caller's transaction.
    fn adopt_in(
        tx: &rusqlite::Transaction<'_>,
        me: &str,
        dead_before: UnixMs,
        now: UnixMs,
    ) -> Result<Vec<Promise>, LedgerError> {
        let dead: Vec<String> = {
            let mut stmt = tx
                .prepare(
                    "SELECT node FROM humanline_nodes WHERE adopted_by IS NULL AND node != ?1 \
                     AND beat_at < ?2 ORDER BY beat_at, node",
                )
                .map_err(db)?;
            stmt.query_map(params![me, dead_before], |r| r.get(0))
                .map_err(db)?
                .collect::<Result<_, _>>()
                .map_err(db)?
        };
        let mut made = Vec::new();
        for node in dead {
            for held in held_in(tx, Some(node.as_str()))? {
                // A caller who has a promise from this call already keeps that one.
                let prefix = held.promise_key_prefix();
                let promised: bool = tx
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM callbacks \
                         WHERE substr(promise_key, 1, length(?1)) = ?1)",
                        [&prefix],
                        |r| r.get(0),
                    )
                    .map_err(db)?;
                if promised {
                    continue;
                }
                let (id, new) = Self::insert_in(tx, &held.promise_after_node_died(now), now)?;
                if new {
                    made.push(Self::get_in(tx, id)?);
                }
            }
            tx.execute("DELETE FROM held_calls WHERE node = ?1", [&node])
                .map_err(db)?;
            tx.execute(
                "UPDATE humanline_nodes SET adopted_by = ?2, adopted_at = ?3 WHERE node = ?1",
                params![node, me, now],
            )
            .map_err(db)?;
        }
        Ok(made)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callbacks::{CallbackLedger, RetryPolicy};

    // The ledger's rules on every store: tests/ledger_stores.rs. Here only what is SQLite's.

    /// A ledger written before promises had server-made keys opens, reads and is kept.
    #[test]
    fn a_ledger_from_before_promise_keys_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO callbacks (created_at, number, not_before, reason, context, automatic, \
                 origin_call, state, next_attempt_at) VALUES (5, '+15550124', 5, 'keyword', '{}', 0, 'abc@host', 'promised', 5)",
                [],
            )
            .unwrap();
        }
        let mut l = CallbackLedger::new(SqliteStore::open(&path).unwrap(), RetryPolicy::default());
        let old = l.list(None).unwrap();
        assert_eq!(old.len(), 1);
        assert_eq!(
            (old[0].key.as_str(), old[0].call_id.as_str()),
            ("abc@host", "abc@host")
        );
        // The old Call-ID reused by a new request is a new promise.
        let again: NewPromise = serde_json::from_value(serde_json::json!({
            "number": "+15550124", "not_before": 0, "reason": "keyword", "context": {},
            "automatic": false, "key": "new-key", "call_id": "abc@host"
        }))
        .unwrap();
        assert_ne!(l.promise(&again, 10).unwrap().id, old[0].id);
        assert_eq!(l.claim_due(10, 10).unwrap().len(), 2);
    }
}
