//! The callback ledger in embedded SQLite.

use crate::callbacks::{
    Attempt, AttemptOutcome, LedgerError, LedgerStore, NewPromise, Promise, PromiseState, UnixMs,
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
        context: serde_json::from_str(&context).unwrap_or(serde_json::Value::Null),
        automatic: row.get(6)?,
        key: row.get(7)?,
        call_id: row.get(12)?,
        completed_reason: row.get(13)?,
        // An unknown state (a newer version wrote it) reads as escalated: a person looks.
        state: PromiseState::parse(&state).unwrap_or(PromiseState::Escalated),
        attempts: row.get(9)?,
        next_attempt_at: row.get(10)?,
        completed_at: row.get(11)?,
    })
}

fn outcome_from(s: Option<String>) -> Option<AttemptOutcome> {
    use AttemptOutcome::*;
    let s = s?;
    [
        Completed,
        Connected,
        Busy,
        Declined,
        NoAnswer,
        AgentUnavailable,
        Failed,
        Interrupted,
        BadNumber,
        KeptElsewhere,
    ]
    .into_iter()
    .find(|o| o.as_str() == s)
}

fn attempt_from(row: &Row<'_>) -> rusqlite::Result<Attempt> {
    Ok(Attempt {
        id: row.get(0)?,
        promise_id: row.get(1)?,
        started_at: row.get(2)?,
        ended_at: row.get(3)?,
        outcome: outcome_from(row.get(4)?),
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
        let existing: Option<i64> = tx
            .query_row(
                "SELECT id FROM callbacks WHERE promise_key = ?1",
                [&p.key],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        let id = match existing {
            Some(id) => id,
            None => {
                tx.execute(
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
                tx.last_insert_rowid()
            }
        };
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callbacks::{CallbackLedger, RetryPolicy};

    fn promise(key: &str, not_before: i64) -> NewPromise {
        NewPromise {
            number: "+31205550100".into(),
            not_before,
            reason: "keyword".into(),
            context: serde_json::json!({"said": ["my internet is down", "human"]}),
            automatic: false,
            key: key.into(),
            call_id: "sip-call-id".into(),
        }
    }

    #[test]
    fn a_promise_is_retried_with_backoff_then_escalated_never_dropped() {
        let policy = RetryPolicy {
            first_delay_ms: 1000,
            factor: 2.0,
            max_delay_ms: 10_000,
            max_attempts: 3,
            window_ms: 1 << 40,
        };
        let mut l = CallbackLedger::new(SqliteStore::in_memory().unwrap(), policy);
        let p = l.promise(&promise("call-1", 0), 100).unwrap();
        assert_eq!(p.state, PromiseState::Promised);
        // Committing the same call's promise again is the same promise.
        assert_eq!(l.promise(&promise("call-1", 0), 200).unwrap().id, p.id);
        let mut now = 100;
        for n in 1..=3 {
            let claimed = l.claim_due(now, 10).unwrap();
            assert_eq!(claimed.len(), 1, "attempt {n}");
            assert!(l.claim_due(now, 10).unwrap().is_empty(), "claimed twice");
            let after = l
                .finish(claimed[0].1.id, AttemptOutcome::Busy, now)
                .unwrap();
            if n < 3 {
                assert_eq!(after.state, PromiseState::Retrying);
                assert_eq!(after.next_attempt_at, now + 1000 * (1 << (n - 1)));
                now = after.next_attempt_at;
            } else {
                assert_eq!(after.state, PromiseState::Escalated);
            }
        }
        assert_eq!(l.list(Some(PromiseState::Escalated)).unwrap().len(), 1);
        assert_eq!(l.attempts(p.id).unwrap().len(), 3);
    }

    #[test]
    fn a_chosen_time_is_honoured_and_completion_is_final() {
        let mut l = CallbackLedger::new(SqliteStore::in_memory().unwrap(), RetryPolicy::default());
        l.promise(&promise("call-2", 50_000), 0).unwrap();
        assert!(l.claim_due(49_999, 10).unwrap().is_empty());
        let (p, a) = l.claim_due(50_000, 10).unwrap().remove(0);
        l.connected(a.id, 50_100).unwrap();
        let done = l.finish(a.id, AttemptOutcome::Completed, 60_000).unwrap();
        assert_eq!(
            (done.state, done.completed_at),
            (PromiseState::Completed, Some(60_000))
        );
        // A late report for the same attempt cannot reopen it, and it is never claimed again.
        assert!(l.finish(a.id, AttemptOutcome::Failed, 61_000).is_err());
        assert!(l.claim_due(i64::MAX / 2, 10).unwrap().is_empty());
        assert_eq!(l.get(p.id).unwrap().state, PromiseState::Completed);
    }

    #[test]
    fn a_promise_kept_by_an_agent_is_never_dialed_and_says_why() {
        let mut l = CallbackLedger::new(SqliteStore::in_memory().unwrap(), RetryPolicy::default());
        let p = l.promise(&promise("k-1", 0), 0).unwrap();
        // The same Call-ID, another request: another promise.
        let q = l.promise(&promise("k-2", 0), 0).unwrap();
        assert_ne!(p.id, q.id);
        assert_eq!(p.call_id, q.call_id);
        let kept = l.keep(p.id, "served_by_agent", 10).unwrap();
        assert_eq!(kept.state, PromiseState::Completed);
        assert_eq!(kept.completed_reason.as_deref(), Some("served_by_agent"));
        let claimed = l.claim_due(20, 10).unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].0.id, q.id);
    }

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
        let mut again = promise("new-key", 0);
        again.call_id = "abc@host".into();
        assert_ne!(l.promise(&again, 10).unwrap().id, old[0].id);
        assert_eq!(l.claim_due(10, 10).unwrap().len(), 2);
    }

    #[test]
    fn a_crash_mid_dial_leaves_the_promise_due_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        {
            let mut l =
                CallbackLedger::new(SqliteStore::open(&path).unwrap(), RetryPolicy::default());
            l.promise(&promise("call-3", 0), 0).unwrap();
            l.claim_due(10, 10).unwrap();
            // "Crash": dropped with the attempt open.
        }
        let mut l = CallbackLedger::new(SqliteStore::open(&path).unwrap(), RetryPolicy::default());
        assert_eq!(l.recover(1000).unwrap(), 1);
        let (p, _) = l.claim_due(1000, 10).unwrap().remove(0);
        assert_eq!(p.attempts, 2);
        let attempts = l.attempts(p.id).unwrap();
        assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Interrupted));
    }
}
