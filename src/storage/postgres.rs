//! The callback ledger in PostgreSQL, shared by several nodes.
//!
//! Every method is one transaction; with `synchronous_commit = on` its commit returns only once
//! the server has flushed it, so a promise confirmed to a caller survives a crash of the node
//! and of the database server. Nodes never dial the same promise: `claim_due` locks the due
//! rows it takes (`FOR UPDATE SKIP LOCKED`, so another node's claim skips them rather than
//! waiting) and each attempt carries a lease that its node renews on every dialer tick. When a
//! node dies its leases run out, and any other node makes those promises due again.

use super::pg::PgConn;
use crate::agents::Presence;
use crate::callbacks::{
    Attempt, AttemptOutcome, LedgerError, LedgerStore, NewPromise, Promise, PromiseState, UnixMs,
};
use crate::nodes::{
    AgentClaim, AgentClaimRow, HeldCall, HeldState, NodeBeat, PresenceRow, adopted_key,
};
use ::postgres::{Client, GenericClient, Row, Transaction};

/// How long a claim holds without renewal. The dialer renews every second; a dead node's
/// promises are due again this long after its last renewal.
pub const DEFAULT_LEASE_MS: i64 = 30_000;
/// Which component's migrations `humanline_schema` counts (other tables keep their own).
const COMPONENT: &str = "callbacks";

/// Schema migrations of the ledger, applied in order; `humanline_schema` records how many ran.
/// Times are Unix milliseconds, as in SQLite.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE callbacks (
    id               BIGSERIAL PRIMARY KEY,
    created_at       BIGINT  NOT NULL,
    number           TEXT    NOT NULL,
    not_before       BIGINT  NOT NULL,
    reason           TEXT    NOT NULL,
    context          TEXT    NOT NULL,
    automatic        BOOLEAN NOT NULL,
    promise_key      TEXT    NOT NULL UNIQUE,
    call_id          TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT  NOT NULL,
    completed_at     BIGINT,
    completed_reason TEXT
);
CREATE INDEX callbacks_due ON callbacks (state, next_attempt_at);
-- An attempt is open while ended_at is NULL (a connected one too); `node` holds it until
-- `lease_until`, renewed while the node lives.
CREATE TABLE callback_attempts (
    id          BIGSERIAL PRIMARY KEY,
    callback_id BIGINT NOT NULL REFERENCES callbacks (id),
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT,
    outcome     TEXT,
    node        TEXT   NOT NULL,
    lease_until BIGINT NOT NULL
);
CREATE INDEX callback_attempts_by_callback ON callback_attempts (callback_id);
CREATE INDEX callback_attempts_open ON callback_attempts (lease_until) WHERE ended_at IS NULL;
"#,
    // Nodes (src/nodes): each server run beats in `humanline_nodes`; the callers it holds who
    // asked for a person are in `held_calls` until served or gone. A node found dead is marked
    // adopted by the node that turned its held callers into promises (its row locked meanwhile,
    // so that two survivors never both do).
    r#"
CREATE TABLE humanline_nodes (
    node       TEXT   PRIMARY KEY,
    name       TEXT   NOT NULL,
    started_at BIGINT NOT NULL,
    beat_at    BIGINT NOT NULL,
    adopted_by TEXT,
    adopted_at BIGINT
);
CREATE TABLE held_calls (
    call_key TEXT   PRIMARY KEY,
    node     TEXT   NOT NULL,
    number   TEXT   NOT NULL,
    call_id  TEXT   NOT NULL,
    reason   TEXT   NOT NULL,
    context  TEXT   NOT NULL,
    state    TEXT   NOT NULL,
    since    BIGINT NOT NULL
);
CREATE INDEX held_calls_by_node ON held_calls (node);
"#,
    // Agents shared by the nodes: a node claims an agent before ringing them and releases
    // them when the leg ends; one row per agent, so one call at a time on all nodes. A claim
    // has no expiry of its own: it lapses when its node stops beating.
    r#"
CREATE TABLE agent_claims (
    agent      TEXT   PRIMARY KEY,
    node       TEXT   NOT NULL,
    call_key   TEXT   NOT NULL,
    claimed_at BIGINT NOT NULL
);
"#,
    // Agents' presence, set on any node and followed by all: an agent away is claimed by none.
    r#"
CREATE TABLE agent_presence (
    agent    TEXT   PRIMARY KEY,
    presence TEXT   NOT NULL,
    set_at   BIGINT NOT NULL
);
"#,
];

pub struct PostgresStore {
    conn: PgConn,
    /// This node, in the attempts it claims.
    node: String,
    lease_ms: i64,
}

fn db(e: ::postgres::Error) -> LedgerError {
    LedgerError::Storage(super::pg::db(e))
}

fn promise_from(row: &Row) -> Result<Promise, LedgerError> {
    let context: String = row.try_get("context").map_err(db)?;
    let state: String = row.try_get("state").map_err(db)?;
    let attempts: i32 = row.try_get("attempts").map_err(db)?;
    Ok(Promise {
        id: row.try_get("id").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        number: row.try_get("number").map_err(db)?,
        not_before: row.try_get("not_before").map_err(db)?,
        reason: row.try_get("reason").map_err(db)?,
        context: super::read_context(&context),
        automatic: row.try_get("automatic").map_err(db)?,
        key: row.try_get("promise_key").map_err(db)?,
        call_id: row.try_get("call_id").map_err(db)?,
        state: super::read_state(&state),
        attempts: u32::try_from(attempts).unwrap_or(0),
        next_attempt_at: row.try_get("next_attempt_at").map_err(db)?,
        completed_at: row.try_get("completed_at").map_err(db)?,
        completed_reason: row.try_get("completed_reason").map_err(db)?,
    })
}

fn attempt_from(row: &Row) -> Result<Attempt, LedgerError> {
    let outcome: Option<String> = row.try_get("outcome").map_err(db)?;
    Ok(Attempt {
        id: row.try_get("id").map_err(db)?,
        promise_id: row.try_get("callback_id").map_err(db)?,
        started_at: row.try_get("started_at").map_err(db)?,
        ended_at: row.try_get("ended_at").map_err(db)?,
        outcome: outcome.as_deref().and_then(AttemptOutcome::parse),
    })
}

const ATTEMPT_COLUMNS: &str = "id, callback_id, started_at, ended_at, outcome";

fn get_in(c: &mut impl GenericClient, id: i64) -> Result<Promise, LedgerError> {
    c.query_opt("SELECT * FROM callbacks WHERE id = $1", &[&id])
        .map_err(db)?
        .as_ref()
        .map(promise_from)
        .transpose()?
        .ok_or(LedgerError::NotFound(id))
}

/// The open attempt's promise, locked until the transaction ends (so a node recovering an
/// expired lease and the node finishing it take turns); stale when closed meanwhile.
fn open_attempt_promise(tx: &mut Transaction<'_>, attempt: i64) -> Result<i64, LedgerError> {
    tx.query_opt(
        "SELECT callback_id FROM callback_attempts WHERE id = $1 AND ended_at IS NULL \
         AND (outcome IS NULL OR outcome = 'connected') FOR UPDATE",
        &[&attempt],
    )
    .map_err(db)?
    .map(|r| r.try_get(0).map_err(db))
    .transpose()?
    .ok_or(LedgerError::StaleAttempt(attempt))
}

/// Closes open attempts whose lease ran out (their node stopped renewing) as interrupted; their
/// promises are due now. Concurrent callers each close a given attempt at most once: the
/// update locks the row and re-checks `ended_at`.
fn recover_expired(tx: &mut Transaction<'_>, now: UnixMs) -> Result<usize, LedgerError> {
    let n = tx
        .execute(
            "WITH expired AS ( \
               UPDATE callback_attempts SET ended_at = $1, outcome = 'interrupted' \
               WHERE ended_at IS NULL AND lease_until < $1 RETURNING callback_id) \
             UPDATE callbacks SET state = 'retrying', next_attempt_at = LEAST(next_attempt_at, $1) \
             WHERE id IN (SELECT callback_id FROM expired) AND state IN ('dialing', 'connected')",
            &[&now],
        )
        .map_err(db)?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// Stores a promise unless one with its key exists (another node committing the same
/// request's); returns it, and whether it is new.
fn insert_in(
    c: &mut impl GenericClient,
    p: &NewPromise,
    now: UnixMs,
) -> Result<(Promise, bool), LedgerError> {
    let inserted = c
        .query_opt(
            "INSERT INTO callbacks (created_at, number, not_before, reason, context, automatic, \
             promise_key, state, next_attempt_at, call_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'promised', $8, $9) \
             ON CONFLICT (promise_key) DO NOTHING RETURNING *",
            &[
                &now,
                &p.number,
                &p.not_before,
                &p.reason,
                &p.context.to_string(),
                &p.automatic,
                &p.key,
                &p.not_before.max(now),
                &p.call_id,
            ],
        )
        .map_err(db)?;
    if let Some(row) = inserted {
        return Ok((promise_from(&row)?, true));
    }
    let row = c
        .query_one("SELECT * FROM callbacks WHERE promise_key = $1", &[&p.key])
        .map_err(db)?;
    Ok((promise_from(&row)?, false))
}

const HELD_COLUMNS: &str = "call_key, node, number, call_id, reason, context, state, since";

fn held_from(row: &Row) -> Result<HeldCall, LedgerError> {
    let context: String = row.try_get("context").map_err(db)?;
    let state: String = row.try_get("state").map_err(db)?;
    Ok(HeldCall {
        key: row.try_get("call_key").map_err(db)?,
        node: row.try_get("node").map_err(db)?,
        number: row.try_get("number").map_err(db)?,
        call_id: row.try_get("call_id").map_err(db)?,
        reason: row.try_get("reason").map_err(db)?,
        context: super::read_context(&context),
        state: HeldState::parse(&state),
        since: row.try_get("since").map_err(db)?,
    })
}

/// The held calls of `node` (all nodes: `None`), oldest first.
fn held_in(c: &mut impl GenericClient, node: Option<&str>) -> Result<Vec<HeldCall>, LedgerError> {
    c.query(
        &format!(
            "SELECT {HELD_COLUMNS} FROM held_calls WHERE $1::TEXT IS NULL OR node = $1 \
             ORDER BY since, call_key"
        ),
        &[&node],
    )
    .map_err(db)?
    .iter()
    .map(held_from)
    .collect()
}

impl PostgresStore {
    /// Connects (`postgres://user@host:port/database`) and brings the ledger's tables up to
    /// date. `node` names this node in its claims (unique per server run).
    pub fn connect(url: &str, node: &str) -> Result<Self, LedgerError> {
        let mut conn = PgConn::connect(url).map_err(LedgerError::Storage)?;
        conn.migrate(COMPONENT, MIGRATIONS)
            .map_err(LedgerError::Storage)?;
        Ok(Self {
            conn,
            node: node.to_string(),
            lease_ms: DEFAULT_LEASE_MS,
        })
    }

    /// How long a claim holds without renewal (tests shorten it).
    pub fn with_lease(mut self, lease_ms: i64) -> Self {
        self.lease_ms = lease_ms.max(1);
        self
    }

    /// Commits without waiting for the server's flush (`synchronous_commit = off`). Only for
    /// measuring what durability costs (`humanline bench callbacks`): the server never uses
    /// it, and a reconnect turns it back on.
    pub fn without_flush(mut self) -> Result<Self, LedgerError> {
        self.client()?
            .batch_execute("SET synchronous_commit = off")
            .map_err(db)?;
        Ok(self)
    }

    fn client(&mut self) -> Result<&mut Client, LedgerError> {
        self.conn.client().map_err(LedgerError::Storage)
    }
}

impl LedgerStore for PostgresStore {
    fn insert(&mut self, p: &NewPromise, now: UnixMs) -> Result<Promise, LedgerError> {
        let mut tx = self.client()?.transaction().map_err(db)?;
        // Two nodes committing the same request's promise store it once.
        let (promise, _) = insert_in(&mut tx, p, now)?;
        tx.commit().map_err(db)?;
        Ok(promise)
    }

    fn claim_due(
        &mut self,
        now: UnixMs,
        limit: usize,
    ) -> Result<Vec<(Promise, Attempt)>, LedgerError> {
        let lease_until = now.saturating_add(self.lease_ms);
        let node = self.node.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut tx = self.client()?.transaction().map_err(db)?;
        // Rows another node is claiming right now are skipped, not waited for; a row it has
        // claimed is `dialing` once its transaction commits, and no longer due.
        let rows = tx
            .query(
                "WITH due AS ( \
                   SELECT id FROM callbacks WHERE state IN ('promised', 'retrying') \
                   AND next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT $2 \
                   FOR UPDATE SKIP LOCKED) \
                 UPDATE callbacks c SET state = 'dialing', attempts = c.attempts + 1 \
                 FROM due WHERE c.id = due.id RETURNING c.*",
                &[&now, &limit],
            )
            .map_err(db)?;
        let mut due = rows
            .iter()
            .map(promise_from)
            .collect::<Result<Vec<_>, _>>()?;
        due.sort_by_key(|p| (p.next_attempt_at, p.id));
        let mut claimed = Vec::with_capacity(due.len());
        for p in due {
            let id: i64 = tx
                .query_one(
                    "INSERT INTO callback_attempts (callback_id, started_at, node, lease_until) \
                     VALUES ($1, $2, $3, $4) RETURNING id",
                    &[&p.id, &now, &node, &lease_until],
                )
                .map_err(db)?
                .try_get(0)
                .map_err(db)?;
            let attempt = Attempt {
                id,
                promise_id: p.id,
                started_at: now,
                ended_at: None,
                outcome: None,
            };
            claimed.push((p, attempt));
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
        let mut tx = self.client()?.transaction().map_err(db)?;
        let promise_id = open_attempt_promise(&mut tx, attempt)?;
        tx.execute(
            "UPDATE callback_attempts SET ended_at = $2, outcome = $3 WHERE id = $1",
            &[&attempt, &now, &outcome.as_str()],
        )
        .map_err(db)?;
        let completed_at = (state == PromiseState::Completed).then_some(now);
        let completed_reason = (state == PromiseState::Completed).then_some("called_back");
        // A completed promise is never reopened, whatever a late attempt reports.
        tx.execute(
            "UPDATE callbacks SET state = $2, next_attempt_at = $3, \
             completed_at = COALESCE(completed_at, $4), \
             completed_reason = COALESCE(completed_reason, $5) \
             WHERE id = $1 AND state != 'completed'",
            &[
                &promise_id,
                &state.as_str(),
                &next_attempt_at,
                &completed_at,
                &completed_reason,
            ],
        )
        .map_err(db)?;
        let p = get_in(&mut tx, promise_id)?;
        tx.commit().map_err(db)?;
        Ok(p)
    }

    fn mark_connected(&mut self, attempt: i64, _now: UnixMs) -> Result<Promise, LedgerError> {
        let mut tx = self.client()?.transaction().map_err(db)?;
        let promise_id = tx
            .query_opt(
                "SELECT callback_id FROM callback_attempts WHERE id = $1 AND ended_at IS NULL \
                 AND outcome IS NULL FOR UPDATE",
                &[&attempt],
            )
            .map_err(db)?
            .map(|r| r.try_get::<_, i64>(0).map_err(db))
            .transpose()?
            .ok_or(LedgerError::StaleAttempt(attempt))?;
        tx.execute(
            "UPDATE callback_attempts SET outcome = 'connected' WHERE id = $1",
            &[&attempt],
        )
        .map_err(db)?;
        tx.execute(
            "UPDATE callbacks SET state = 'connected' WHERE id = $1 AND state = 'dialing'",
            &[&promise_id],
        )
        .map_err(db)?;
        let p = get_in(&mut tx, promise_id)?;
        tx.commit().map_err(db)?;
        Ok(p)
    }

    fn complete(&mut self, id: i64, reason: &str, now: UnixMs) -> Result<Promise, LedgerError> {
        let mut tx = self.client()?.transaction().map_err(db)?;
        tx.execute(
            "UPDATE callbacks SET state = 'completed', completed_at = $2, completed_reason = $3 \
             WHERE id = $1 AND state != 'completed'",
            &[&id, &now, &reason],
        )
        .map_err(db)?;
        let p = get_in(&mut tx, id)?;
        tx.commit().map_err(db)?;
        Ok(p)
    }

    /// At start-up other nodes may be dialing: only expired leases are recovered (this node's
    /// previous run included, once its lease runs out).
    fn recover_interrupted(&mut self, now: UnixMs) -> Result<usize, LedgerError> {
        let mut tx = self.client()?.transaction().map_err(db)?;
        let n = recover_expired(&mut tx, now)?;
        tx.commit().map_err(db)?;
        Ok(n)
    }

    fn keep_claims(&mut self, now: UnixMs) -> Result<usize, LedgerError> {
        let lease_until = now.saturating_add(self.lease_ms);
        let node = self.node.clone();
        let mut tx = self.client()?.transaction().map_err(db)?;
        // Renewed first: this node's own live claims never expire under it.
        tx.execute(
            "UPDATE callback_attempts SET lease_until = GREATEST(lease_until, $2) \
             WHERE node = $1 AND ended_at IS NULL",
            &[&node, &lease_until],
        )
        .map_err(db)?;
        let n = recover_expired(&mut tx, now)?;
        tx.commit().map_err(db)?;
        Ok(n)
    }

    fn get(&mut self, id: i64) -> Result<Promise, LedgerError> {
        get_in(self.client()?, id)
    }

    fn attempts(&mut self, id: i64) -> Result<Vec<Attempt>, LedgerError> {
        self.client()?
            .query(
                &format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM callback_attempts WHERE callback_id = $1 ORDER BY id"
                ),
                &[&id],
            )
            .map_err(db)?
            .iter()
            .map(attempt_from)
            .collect()
    }

    fn list(&mut self, state: Option<PromiseState>) -> Result<Vec<Promise>, LedgerError> {
        let state = state.map(|s| s.as_str());
        self.client()?
            .query(
                "SELECT * FROM callbacks WHERE $1::TEXT IS NULL OR state = $1 ORDER BY id",
                &[&state],
            )
            .map_err(db)?
            .iter()
            .map(promise_from)
            .collect()
    }

    fn count_by_state(&mut self) -> Result<Vec<(PromiseState, u64)>, LedgerError> {
        let rows = self
            .client()?
            .query("SELECT state, COUNT(*) FROM callbacks GROUP BY state", &[])
            .map_err(db)?;
        let mut counts = Vec::new();
        for r in &rows {
            let state: String = r.try_get(0).map_err(db)?;
            let n: i64 = r.try_get(1).map_err(db)?;
            if let Some(state) = PromiseState::parse(&state) {
                counts.push((state, n.max(0) as u64));
            }
        }
        Ok(counts)
    }

    fn attempt(&mut self, attempt: i64) -> Result<Attempt, LedgerError> {
        self.client()?
            .query_opt(
                &format!("SELECT {ATTEMPT_COLUMNS} FROM callback_attempts WHERE id = $1"),
                &[&attempt],
            )
            .map_err(db)?
            .as_ref()
            .map(attempt_from)
            .transpose()?
            .ok_or(LedgerError::StaleAttempt(attempt))
    }

    fn beat(&mut self, node: &str, name: &str, now: UnixMs) -> Result<bool, LedgerError> {
        let mut tx = self.client()?.transaction().map_err(db)?;
        let adopted: Option<String> = tx
            .query_opt(
                "SELECT adopted_by FROM humanline_nodes WHERE node = $1 FOR UPDATE",
                &[&node],
            )
            .map_err(db)?
            .map(|r| r.try_get::<_, Option<String>>(0).map_err(db))
            .transpose()?
            .flatten();
        tx.execute(
            "INSERT INTO humanline_nodes (node, name, started_at, beat_at) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (node) DO UPDATE SET \
             beat_at = GREATEST(humanline_nodes.beat_at, EXCLUDED.beat_at), \
             adopted_by = NULL, adopted_at = NULL",
            &[&node, &name, &now],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(adopted.is_some())
    }

    fn hold_call(&mut self, c: &HeldCall) -> Result<(), LedgerError> {
        let context = c.context.to_string();
        self.client()?
            .execute(
                &format!(
                    "INSERT INTO held_calls ({HELD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (call_key) DO UPDATE SET number = EXCLUDED.number, \
                     reason = EXCLUDED.reason, context = EXCLUDED.context, state = EXCLUDED.state"
                ),
                &[
                    &c.key,
                    &c.node,
                    &c.number,
                    &c.call_id,
                    &c.reason,
                    &context,
                    &c.state.as_str(),
                    &c.since,
                ],
            )
            .map_err(db)?;
        Ok(())
    }

    fn release_call(&mut self, key: &str, served: bool, now: UnixMs) -> Result<(), LedgerError> {
        let mut tx = self.client()?.transaction().map_err(db)?;
        tx.execute("DELETE FROM held_calls WHERE call_key = $1", &[&key])
            .map_err(db)?;
        if served {
            tx.execute(
                "UPDATE callbacks SET state = 'completed', completed_at = $2, \
                 completed_reason = 'served_by_agent' WHERE promise_key = $1 AND state != 'completed'",
                &[&adopted_key(key), &now],
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
        let mut tx = self.client()?.transaction().map_err(db)?;
        // A dead node another survivor is taking over right now is skipped, not waited for;
        // once its transaction commits the node is adopted and no longer matches.
        let dead: Vec<String> = tx
            .query(
                "SELECT node FROM humanline_nodes WHERE adopted_by IS NULL AND node <> $1 \
                 AND beat_at < $2 ORDER BY beat_at, node FOR UPDATE SKIP LOCKED",
                &[&me, &dead_before],
            )
            .map_err(db)?
            .iter()
            .map(|r| r.try_get(0).map_err(db))
            .collect::<Result<_, _>>()?;
        let mut made = Vec::new();
        for node in dead {
            for held in held_in(&mut tx, Some(node.as_str()))? {
                // A caller who has a promise from this call already keeps that one.
                let prefix = held.promise_key_prefix();
                let promised: bool = tx
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM callbacks \
                         WHERE substr(promise_key, 1, length($1::TEXT)) = $1::TEXT)",
                        &[&prefix],
                    )
                    .map_err(db)?
                    .try_get(0)
                    .map_err(db)?;
                if promised {
                    continue;
                }
                let (p, new) = insert_in(&mut tx, &held.promise_after_node_died(now), now)?;
                if new {
                    made.push(p);
                }
            }
            tx.execute("DELETE FROM held_calls WHERE node = $1", &[&node])
                .map_err(db)?;
            tx.execute(
                "UPDATE humanline_nodes SET adopted_by = $2, adopted_at = $3 WHERE node = $1",
                &[&node, &me, &now],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(made)
    }

    fn held_calls(&mut self) -> Result<Vec<HeldCall>, LedgerError> {
        held_in(self.client()?, None)
    }

    fn nodes(&mut self) -> Result<Vec<NodeBeat>, LedgerError> {
        self.client()?
            .query(
                "SELECT node, name, started_at, beat_at, adopted_by FROM humanline_nodes \
                 ORDER BY started_at, node",
                &[],
            )
            .map_err(db)?
            .iter()
            .map(|r| {
                Ok(NodeBeat {
                    node: r.try_get(0).map_err(db)?,
                    name: r.try_get(1).map_err(db)?,
                    started_at: r.try_get(2).map_err(db)?,
                    beat_at: r.try_get(3).map_err(db)?,
                    adopted_by: r.try_get(4).map_err(db)?,
                })
            })
            .collect()
    }

    fn claim_agent(
        &mut self,
        agent: &str,
        node: &str,
        call: &str,
        dead_before: UnixMs,
        now: UnixMs,
    ) -> Result<AgentClaim, LedgerError> {
        let mut tx = self.client()?.transaction().map_err(db)?;
        // One statement: two nodes claiming a free agent at once meet on the primary key, the
        // second waits for the first's commit and then finds the agent held (the condition is
        // evaluated on the row as committed). The condition is `AgentClaimRow::yields_to`; an
        // agent away (set on any node) is not claimed at all.
        let granted = tx
            .query_opt(
                "INSERT INTO agent_claims (agent, node, call_key, claimed_at) \
                 SELECT $1::TEXT, $2::TEXT, $3::TEXT, $4::BIGINT WHERE NOT EXISTS ( \
                   SELECT 1 FROM agent_presence WHERE agent = $1 AND presence = 'away') \
                 ON CONFLICT (agent) DO UPDATE SET node = EXCLUDED.node, \
                 call_key = EXCLUDED.call_key, claimed_at = EXCLUDED.claimed_at \
                 WHERE agent_claims.node = EXCLUDED.node OR NOT EXISTS ( \
                   SELECT 1 FROM humanline_nodes n \
                   WHERE n.node = agent_claims.node AND n.beat_at >= $5) \
                 RETURNING node",
                &[&agent, &node, &call, &now, &dead_before],
            )
            .map_err(db)?
            .is_some();
        let away = !granted
            && tx
                .query_opt(
                    "SELECT 1 FROM agent_presence WHERE agent = $1 AND presence = 'away'",
                    &[&agent],
                )
                .map_err(db)?
                .is_some();
        let outcome = if granted {
            AgentClaim::Granted
        } else if away {
            AgentClaim::Away
        } else {
            // Released since the insert met it: held a moment ago, free for the next try.
            match tx
                .query_opt(
                    "SELECT node, call_key FROM agent_claims WHERE agent = $1",
                    &[&agent],
                )
                .map_err(db)?
            {
                Some(row) => AgentClaim::HeldBy {
                    node: row.try_get(0).map_err(db)?,
                    call: row.try_get(1).map_err(db)?,
                },
                None => AgentClaim::HeldBy {
                    node: String::new(),
                    call: String::new(),
                },
            }
        };
        tx.commit().map_err(db)?;
        Ok(outcome)
    }

    fn release_agent(&mut self, agent: &str, node: &str, call: &str) -> Result<(), LedgerError> {
        self.client()?
            .execute(
                "DELETE FROM agent_claims WHERE agent = $1 AND node = $2 AND call_key = $3",
                &[&agent, &node, &call],
            )
            .map_err(db)?;
        Ok(())
    }

    fn agent_claims(&mut self) -> Result<Vec<AgentClaimRow>, LedgerError> {
        self.client()?
            .query(
                "SELECT agent, node, call_key, claimed_at FROM agent_claims ORDER BY agent",
                &[],
            )
            .map_err(db)?
            .iter()
            .map(|r| {
                Ok(AgentClaimRow {
                    agent: r.try_get(0).map_err(db)?,
                    node: r.try_get(1).map_err(db)?,
                    call: r.try_get(2).map_err(db)?,
                    claimed_at: r.try_get(3).map_err(db)?,
                })
            })
            .collect()
    }

    fn set_presence(
        &mut self,
        agent: &str,
        presence: Presence,
        at: UnixMs,
    ) -> Result<(), LedgerError> {
        self.client()?
            .execute(
                "INSERT INTO agent_presence (agent, presence, set_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (agent) DO UPDATE SET presence = EXCLUDED.presence, \
                 set_at = EXCLUDED.set_at WHERE agent_presence.set_at <= EXCLUDED.set_at",
                &[&agent, &presence.as_str(), &at],
            )
            .map_err(db)?;
        Ok(())
    }

    fn presences(&mut self) -> Result<Vec<PresenceRow>, LedgerError> {
        self.client()?
            .query(
                "SELECT agent, presence, set_at FROM agent_presence ORDER BY agent",
                &[],
            )
            .map_err(db)?
            .iter()
            .map(|r| {
                let presence: String = r.try_get(1).map_err(db)?;
                Ok(PresenceRow {
                    agent: r.try_get(0).map_err(db)?,
                    presence: super::read_presence(&presence),
                    set_at: r.try_get(2).map_err(db)?,
                })
            })
            .collect()
    }
}
