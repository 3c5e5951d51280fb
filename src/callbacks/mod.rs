//! The callback ledger: a promised callback is a durable record, committed before the caller
//! hears it promised, kept through crashes, retried until kept, escalated — never dropped.
//!
//! The ledger reads no clock: every call takes `now` (Unix milliseconds), so the retry rules
//! are testable without waiting. Storage is behind [`LedgerStore`]; `storage::SqliteStore` is
//! the embedded default, `storage::PostgresStore` the ledger several nodes share.

mod attempt;
mod number;
mod when;

pub use attempt::{AGENT_WAIT_LIMIT, AttemptAction, AttemptEvent, CallbackAttempt};
pub use number::{NumberPolicy, NumberRefused, spoken_number, valid_prefix};
pub use when::{MAX_AHEAD, UTC_OFFSET_MIN_RANGE, local_clock, names_time, resolve_when};

use crate::nodes::{AgentClaim, AgentClaimRow, HeldCall, Liveness, NodeBeat, PresenceRow};
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub type UnixMs = i64;

/// The wall clock now, in [`UnixMs`] (0 for a clock before 1970).
pub fn unix_now() -> UnixMs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromiseState {
    /// Stored, not yet attempted.
    Promised,
    /// An attempt is under way (agent ringing, or customer being dialed).
    Dialing,
    /// The customer answered and is with an agent.
    Connected,
    /// Kept.
    Completed,
    /// An attempt failed; another is scheduled.
    Retrying,
    /// Attempts are exhausted: a supervisor must act. Never dropped.
    Escalated,
}

impl PromiseState {
    pub const ALL: [PromiseState; 6] = [
        PromiseState::Promised,
        PromiseState::Dialing,
        PromiseState::Connected,
        PromiseState::Completed,
        PromiseState::Retrying,
        PromiseState::Escalated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PromiseState::Promised => "promised",
            PromiseState::Dialing => "dialing",
            PromiseState::Connected => "connected",
            PromiseState::Completed => "completed",
            PromiseState::Retrying => "retrying",
            PromiseState::Escalated => "escalated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The customer talked to an agent: the promise is kept.
    Completed,
    /// The customer answered (the bridge is up); completion follows.
    Connected,
    Busy,
    Declined,
    NoAnswer,
    /// No agent could take it at the time.
    AgentUnavailable,
    /// Signalling or network failure.
    Failed,
    /// Humanline stopped mid-attempt (crash or restart); found on start-up.
    Interrupted,
    /// The stored number is not one Humanline may dial (withheld, not E.164, not on the
    /// operator's list): a supervisor must act.
    BadNumber,
    /// The promise was kept meanwhile (the caller reached a person): nobody was called.
    KeptElsewhere,
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 10] = [
        AttemptOutcome::Completed,
        AttemptOutcome::Connected,
        AttemptOutcome::Busy,
        AttemptOutcome::Declined,
        AttemptOutcome::NoAnswer,
        AttemptOutcome::AgentUnavailable,
        AttemptOutcome::Failed,
        AttemptOutcome::Interrupted,
        AttemptOutcome::BadNumber,
        AttemptOutcome::KeptElsewhere,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Completed => "completed",
            AttemptOutcome::Connected => "connected",
            AttemptOutcome::Busy => "busy",
            AttemptOutcome::Declined => "declined",
            AttemptOutcome::NoAnswer => "no_answer",
            AttemptOutcome::AgentUnavailable => "agent_unavailable",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Interrupted => "interrupted",
            AttemptOutcome::BadNumber => "bad_number",
            AttemptOutcome::KeptElsewhere => "kept_elsewhere",
        }
    }
}

/// A callback to promise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewPromise {
    pub number: String,
    /// Not before this time (the caller's chosen time, or now for "as soon as possible").
    pub not_before: UnixMs,
    pub reason: String,
    /// What the caller already said, for the agent (JSON).
    pub context: serde_json::Value,
    /// Made because the call dropped while the caller waited for a person.
    pub automatic: bool,
    /// Made by the server for this request, so a repeated commit of the same request is one
    /// promise, and a new request (a second acceptance, a reused Call-ID) a new one.
    pub key: String,
    /// The SIP Call-ID of the call it was promised on (the caller's, for the record only).
    pub call_id: String,
}

/// A stored promise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Promise {
    pub id: i64,
    pub created_at: UnixMs,
    pub number: String,
    pub not_before: UnixMs,
    pub reason: String,
    pub context: serde_json::Value,
    pub automatic: bool,
    pub key: String,
    pub call_id: String,
    pub state: PromiseState,
    pub attempts: u32,
    pub next_attempt_at: UnixMs,
    pub completed_at: Option<UnixMs>,
    /// How it was kept: `called_back`, or `served_by_agent` (the caller reached a person
    /// on the call that promised it, or another).
    pub completed_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub id: i64,
    pub promise_id: i64,
    pub started_at: UnixMs,
    pub ended_at: Option<UnixMs>,
    pub outcome: Option<AttemptOutcome>,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("no callback promise with id {0}")]
    NotFound(i64),
    #[error("attempt {0} is not the open attempt of its promise")]
    StaleAttempt(i64),
}

/// Where promises live. Every method is one transaction, durable when it returns.
pub trait LedgerStore: Send {
    /// Stores a promise (idempotent on `key`: the same request's promise is returned).
    fn insert(&mut self, p: &NewPromise, now: UnixMs) -> Result<Promise, LedgerError>;
    /// Moves up to `limit` due promises (promised/retrying, `next_attempt_at <= now`), most
    /// overdue first, to `dialing`, opening an attempt for each.
    fn claim_due(
        &mut self,
        now: UnixMs,
        limit: usize,
    ) -> Result<Vec<(Promise, Attempt)>, LedgerError>;
    /// Closes an attempt and sets the promise's new state.
    fn finish_attempt(
        &mut self,
        attempt: i64,
        outcome: AttemptOutcome,
        state: PromiseState,
        next_attempt_at: UnixMs,
        now: UnixMs,
    ) -> Result<Promise, LedgerError>;
    /// Marks the open attempt connected (customer answered).
    fn mark_connected(&mut self, attempt: i64, now: UnixMs) -> Result<Promise, LedgerError>;
    /// Marks a promise kept (completed, with why), whatever attempt is open; never reopened.
    fn complete(&mut self, id: i64, reason: &str, now: UnixMs) -> Result<Promise, LedgerError>;
    /// Attempts left open by a crash: closed as interrupted, their promises due again now.
    /// A store shared by several nodes recovers only attempts whose lease has expired (their
    /// node stopped renewing it), never those of a node still running.
    fn recover_interrupted(&mut self, now: UnixMs) -> Result<usize, LedgerError>;
    /// Called by the dialer on every tick: renews the leases of this node's open attempts and
    /// makes the promises of attempts whose lease expired (a dead node's) due again; returns
    /// how many were recovered. A store only one node uses has nothing to renew.
    fn keep_claims(&mut self, now: UnixMs) -> Result<usize, LedgerError> {
        let _ = now;
        Ok(0)
    }
    fn get(&mut self, id: i64) -> Result<Promise, LedgerError>;
    fn attempts(&mut self, id: i64) -> Result<Vec<Attempt>, LedgerError>;
    fn list(&mut self, state: Option<PromiseState>) -> Result<Vec<Promise>, LedgerError>;
    /// How many promises are in each state (states with none are left out): the dashboard's
    /// picture, without reading every promise ever kept.
    fn count_by_state(&mut self) -> Result<Vec<(PromiseState, u64)>, LedgerError>;
    /// The open attempt's promise, for `finish_attempt` validation.
    fn attempt(&mut self, attempt: i64) -> Result<Attempt, LedgerError>;

    // --- nodes (src/nodes): the callers each node holds, and taking a dead node's over ---

    /// Renews `node`'s heartbeat (its first beat registers it under `name`). Returns whether
    /// other nodes had given it up for dead meanwhile (and taken its held callers over).
    fn beat(&mut self, node: &str, name: &str, now: UnixMs) -> Result<bool, LedgerError>;
    /// Records a call held by its node whose caller asked for a person, or updates it.
    fn hold_call(&mut self, call: &HeldCall) -> Result<(), LedgerError>;
    /// The call is no longer held. `served`: the caller reached a person, so a promise another
    /// node made for them meanwhile (it thought this node dead) is kept as well.
    fn release_call(&mut self, key: &str, served: bool, now: UnixMs) -> Result<(), LedgerError>;
    /// As `me`: each other node whose last beat is before `dead_before` and that nobody took
    /// over yet is taken over, once (row locks): each of its held callers who has no promise
    /// from that call becomes one ([`HeldCall::promise_after_node_died`]), in one transaction.
    /// Returns the promises made.
    fn adopt_dead_nodes(
        &mut self,
        me: &str,
        dead_before: UnixMs,
        now: UnixMs,
    ) -> Result<Vec<Promise>, LedgerError>;
    /// Every call held now, on every node, oldest first.
    fn held_calls(&mut self) -> Result<Vec<HeldCall>, LedgerError>;
    /// Every node that ever beat, in the order they started.
    fn nodes(&mut self) -> Result<Vec<NodeBeat>, LedgerError>;

    // --- agents shared by the nodes: one call at a time per agent, across all of them ---

    /// As `node`, claims `agent` for `call` before ringing them, atomically: granted when
    /// nobody holds the agent, when `node` itself does, or when the holder's last beat is before
    /// `dead_before` ([`AgentClaimRow::yields_to`]); otherwise the holder is returned.
    fn claim_agent(
        &mut self,
        agent: &str,
        node: &str,
        call: &str,
        dead_before: UnixMs,
        now: UnixMs,
    ) -> Result<AgentClaim, LedgerError>;
    /// `node` is done with `agent` for `call` (the leg ended): another node may ring them. A
    /// claim that is not that one (taken over meanwhile) is left alone.
    fn release_agent(&mut self, agent: &str, node: &str, call: &str) -> Result<(), LedgerError>;
    /// Every agent claimed now, by agent name.
    fn agent_claims(&mut self) -> Result<Vec<AgentClaimRow>, LedgerError>;
    /// `agent` set their presence at `at` (on some node); an older setting arriving late
    /// changes nothing. An agent away is refused by [`Self::claim_agent`] on every node.
    fn set_presence(
        &mut self,
        agent: &str,
        presence: crate::agents::Presence,
        at: UnixMs,
    ) -> Result<(), LedgerError>;
    /// Every agent's presence as last set, by agent name.
    fn presences(&mut self) -> Result<Vec<PresenceRow>, LedgerError>;
}

/// The store chosen by configuration (`storage::open_store`) is a boxed one.
impl<S: LedgerStore + ?Sized> LedgerStore for Box<S> {
    fn insert(&mut self, p: &NewPromise, now: UnixMs) -> Result<Promise, LedgerError> {
        (**self).insert(p, now)
    }
    fn claim_due(
        &mut self,
        now: UnixMs,
        limit: usize,
    ) -> Result<Vec<(Promise, Attempt)>, LedgerError> {
        (**self).claim_due(now, limit)
    }
    fn finish_attempt(
        &mut self,
        attempt: i64,
        outcome: AttemptOutcome,
        state: PromiseState,
        next_attempt_at: UnixMs,
        now: UnixMs,
    ) -> Result<Promise, LedgerError> {
        (**self).finish_attempt(attempt, outcome, state, next_attempt_at, now)
    }
    fn mark_connected(&mut self, attempt: i64, now: UnixMs) -> Result<Promise, LedgerError> {
        (**self).mark_connected(attempt, now)
    }
    fn complete(&mut self, id: i64, reason: &str, now: UnixMs) -> Result<Promise, LedgerError> {
        (**self).complete(id, reason, now)
    }
    fn recover_interrupted(&mut self, now: UnixMs) -> Result<usize, LedgerError> {
        (**self).recover_interrupted(now)
    }
    fn keep_claims(&mut self, now: UnixMs) -> Result<usize, LedgerError> {
        (**self).keep_claims(now)
    }
    fn get(&mut self, id: i64) -> Result<Promise, LedgerError> {
        (**self).get(id)
    }
    fn attempts(&mut self, id: i64) -> Result<Vec<Attempt>, LedgerError> {
        (**self).attempts(id)
    }
    fn list(&mut self, state: Option<PromiseState>) -> Result<Vec<Promise>, LedgerError> {
        (**self).list(state)
    }
    fn count_by_state(&mut self) -> Result<Vec<(PromiseState, u64)>, LedgerError> {
        (**self).count_by_state()
    }
    fn attempt(&mut self, attempt: i64) -> Result<Attempt, LedgerError> {
        (**self).attempt(attempt)
    }
    fn beat(&mut self, node: &str, name: &str, now: UnixMs) -> Result<bool, LedgerError> {
        (**self).beat(node, name, now)
    }
    fn hold_call(&mut self, call: &HeldCall) -> Result<(), LedgerError> {
        (**self).hold_call(call)
    }
    fn release_call(&mut self, key: &str, served: bool, now: UnixMs) -> Result<(), LedgerError> {
        (**self).release_call(key, served, now)
    }
    fn adopt_dead_nodes(
        &mut self,
        me: &str,
        dead_before: UnixMs,
        now: UnixMs,
    ) -> Result<Vec<Promise>, LedgerError> {
        (**self).adopt_dead_nodes(me, dead_before, now)
    }
    fn held_calls(&mut self) -> Result<Vec<HeldCall>, LedgerError> {
        (**self).held_calls()
    }
    fn nodes(&mut self) -> Result<Vec<NodeBeat>, LedgerError> {
        (**self).nodes()
    }
    fn claim_agent(
        &mut self,
        agent: &str,
        node: &str,
        call: &str,
        dead_before: UnixMs,
        now: UnixMs,
    ) -> Result<AgentClaim, LedgerError> {
        (**self).claim_agent(agent, node, call, dead_before, now)
    }
    fn release_agent(&mut self, agent: &str, node: &str, call: &str) -> Result<(), LedgerError> {
        (**self).release_agent(agent, node, call)
    }
    fn agent_claims(&mut self) -> Result<Vec<AgentClaimRow>, LedgerError> {
        (**self).agent_claims()
    }
    fn set_presence(
        &mut self,
        agent: &str,
        presence: crate::agents::Presence,
        at: UnixMs,
    ) -> Result<(), LedgerError> {
        (**self).set_presence(agent, presence, at)
    }
    fn presences(&mut self) -> Result<Vec<PresenceRow>, LedgerError> {
        (**self).presences()
    }
}

/// When to try again, and when to stop trying and escalate to a person.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Wait after the first failed attempt; each later wait is `factor` times longer.
    pub first_delay_ms: i64,
    pub factor: f64,
    pub max_delay_ms: i64,
    pub max_attempts: u32,
    /// After this long since the promise was made, escalate instead of retrying.
    pub window_ms: i64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first_delay_ms: 60_000,
            factor: 2.0,
            max_delay_ms: 30 * 60_000,
            max_attempts: 6,
            window_ms: 3 * 24 * 3_600_000,
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt number `attempts + 1`, after `attempts` failed ones.
    pub fn delay_after(&self, attempts: u32) -> i64 {
        let exp = self.factor.powi(attempts.saturating_sub(1).min(30) as i32);
        // `as` saturates (NaN is 0); never negative, whatever the policy says.
        ((self.first_delay_ms as f64 * exp) as i64)
            .min(self.max_delay_ms)
            .max(0)
    }
}

/// The promises and the rules for keeping them.
pub struct CallbackLedger<S: LedgerStore> {
    store: S,
    policy: RetryPolicy,
}

impl<S: LedgerStore> CallbackLedger<S> {
    pub fn new(store: S, policy: RetryPolicy) -> Self {
        Self { store, policy }
    }

    /// Commits a promise. Only when this returns `Ok` may the caller hear it confirmed.
    pub fn promise(&mut self, p: &NewPromise, now: UnixMs) -> Result<Promise, LedgerError> {
        self.store.insert(p, now)
    }

    /// Claims promises due now for dialing.
    pub fn claim_due(
        &mut self,
        now: UnixMs,
        limit: usize,
    ) -> Result<Vec<(Promise, Attempt)>, LedgerError> {
        self.store.claim_due(now, limit)
    }

    pub fn connected(&mut self, attempt: i64, now: UnixMs) -> Result<Promise, LedgerError> {
        self.store.mark_connected(attempt, now)
    }

    /// Records how an attempt ended: completed, or retried with backoff, or escalated once
    /// attempts or the window run out.
    pub fn finish(
        &mut self,
        attempt: i64,
        outcome: AttemptOutcome,
        now: UnixMs,
    ) -> Result<Promise, LedgerError> {
        let a = self.store.attempt(attempt)?;
        let p = self.store.get(a.promise_id)?;
        if a.outcome.is_some_and(|o| o != AttemptOutcome::Connected) {
            return Err(LedgerError::StaleAttempt(attempt));
        }
        let (state, next) = match outcome {
            AttemptOutcome::Completed | AttemptOutcome::KeptElsewhere => {
                (PromiseState::Completed, p.next_attempt_at)
            }
            // No retry can dial a number we may not dial: a person must look.
            AttemptOutcome::BadNumber => (PromiseState::Escalated, p.next_attempt_at),
            AttemptOutcome::Connected => return self.store.mark_connected(attempt, now),
            _ => {
                let next = now.saturating_add(self.policy.delay_after(p.attempts));
                if p.attempts >= self.policy.max_attempts
                    || next.saturating_sub(p.created_at) > self.policy.window_ms
                {
                    (PromiseState::Escalated, next)
                } else {
                    (PromiseState::Retrying, next)
                }
            }
        };
        self.store
            .finish_attempt(attempt, outcome, state, next, now)
    }

    /// The caller reached a person: the promise is kept, never dialed (an attempt already
    /// open finds it kept before it calls the customer).
    pub fn keep(&mut self, id: i64, reason: &str, now: UnixMs) -> Result<Promise, LedgerError> {
        self.store.complete(id, reason, now)
    }

    /// On start-up: attempts a crash left open become interrupted; their promises are due.
    pub fn recover(&mut self, now: UnixMs) -> Result<usize, LedgerError> {
        self.store.recover_interrupted(now)
    }

    /// On every dialer tick: this node's claims renewed, a dead node's made due again.
    pub fn keep_claims(&mut self, now: UnixMs) -> Result<usize, LedgerError> {
        self.store.keep_claims(now)
    }

    pub fn get(&mut self, id: i64) -> Result<Promise, LedgerError> {
        self.store.get(id)
    }

    pub fn attempts(&mut self, id: i64) -> Result<Vec<Attempt>, LedgerError> {
        self.store.attempts(id)
    }

    pub fn list(&mut self, state: Option<PromiseState>) -> Result<Vec<Promise>, LedgerError> {
        self.store.list(state)
    }

    pub fn count_by_state(&mut self) -> Result<Vec<(PromiseState, u64)>, LedgerError> {
        self.store.count_by_state()
    }

    /// This node is alive (see [`LedgerStore::beat`]).
    pub fn beat(&mut self, node: &str, name: &str, now: UnixMs) -> Result<bool, LedgerError> {
        self.store.beat(node, name, now)
    }

    /// A caller on this node asked for a person: recorded, so that another node calls them
    /// back if this one dies while they wait.
    pub fn hold(&mut self, call: &HeldCall) -> Result<(), LedgerError> {
        self.store.hold_call(call)
    }

    /// The caller is no longer waiting for a person here (served, or gone).
    pub fn release(&mut self, key: &str, served: bool, now: UnixMs) -> Result<(), LedgerError> {
        self.store.release_call(key, served, now)
    }

    /// As `me`: the callers of nodes dead by `liveness` at `now` become promises, once.
    pub fn adopt_dead_nodes(
        &mut self,
        me: &str,
        liveness: Liveness,
        now: UnixMs,
    ) -> Result<Vec<Promise>, LedgerError> {
        self.store
            .adopt_dead_nodes(me, liveness.dead_before(now), now)
    }

    pub fn held_calls(&mut self) -> Result<Vec<HeldCall>, LedgerError> {
        self.store.held_calls()
    }

    pub fn nodes(&mut self) -> Result<Vec<NodeBeat>, LedgerError> {
        self.store.nodes()
    }

    /// As `node`, takes `agent` for `call` before ringing them, unless a node alive by
    /// `liveness` holds them.
    pub fn claim_agent(
        &mut self,
        agent: &str,
        node: &str,
        call: &str,
        liveness: Liveness,
        now: UnixMs,
    ) -> Result<AgentClaim, LedgerError> {
        self.store
            .claim_agent(agent, node, call, liveness.dead_before(now), now)
    }

    /// `node`'s leg to `agent` for `call` ended: any node may ring them again.
    pub fn release_agent(
        &mut self,
        agent: &str,
        node: &str,
        call: &str,
    ) -> Result<(), LedgerError> {
        self.store.release_agent(agent, node, call)
    }

    pub fn agent_claims(&mut self) -> Result<Vec<AgentClaimRow>, LedgerError> {
        self.store.agent_claims()
    }

    /// `agent` set their presence at `at`: every node sharing the store follows it.
    pub fn set_presence(
        &mut self,
        agent: &str,
        presence: crate::agents::Presence,
        at: UnixMs,
    ) -> Result<(), LedgerError> {
        self.store.set_presence(agent, presence, at)
    }

    pub fn presences(&mut self) -> Result<Vec<PresenceRow>, LedgerError> {
        self.store.presences()
    }
}

/// A ledger shared by the server's tasks.
pub type SharedLedger<S> = std::sync::Arc<std::sync::Mutex<CallbackLedger<S>>>;

/// Runs `f` on the shared ledger off the async runtime: a commit fsyncs, which must not
/// stall the calls being served.
pub async fn with_ledger<S, T>(
    ledger: &SharedLedger<S>,
    f: impl FnOnce(&mut CallbackLedger<S>) -> Result<T, LedgerError> + Send + 'static,
) -> Result<T, LedgerError>
where
    S: LedgerStore + 'static,
    T: Send + 'static,
{
    let ledger = ledger.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = ledger
            .lock()
            .map_err(|_| LedgerError::Storage("ledger lock poisoned by an earlier panic".into()))?;
        f(&mut guard)
    })
    .await
    .map_err(|e| LedgerError::Storage(format!("ledger task failed: {e}")))?
}
