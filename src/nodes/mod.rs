//! Several nodes on one shared store: which callers each node holds, and when a node is dead.
//!
//! Every node beats (renews its row in the store) about once a second. Each call whose caller
//! asked for a person (waiting in line, or an agent being rung) is recorded as held by its node,
//! with the caller's number and what they said. A node whose beat is older than the node timeout
//! is dead: another node takes its held callers over, once (row locks), and turns each into a
//! callback promise (reason [`REASON_NODE_DIED`]) that the ordinary dialer keeps. Humanline
//! could not keep the dead node's media, so it keeps the promise.
//!
//! This module is the policy, pure functions of the time passed in; the stores carry it out in
//! one transaction (src/storage) and the server drives it (src/server/nodes.rs).

use crate::callbacks::{NewPromise, UnixMs};
use serde::{Deserialize, Serialize};

/// The reason of a promise made for a caller whose node died while they waited for a person.
pub const REASON_NODE_DIED: &str = "node_died";
/// How often a node beats.
pub const BEAT_EVERY_MS: i64 = 1_000;

/// When a node counts as dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// A node not heard for longer than this is dead (`node_timeout_ms`).
    pub timeout_ms: i64,
}

impl Liveness {
    /// Whether a node whose last beat was at `beat_at` is dead at `now`.
    pub fn is_dead(&self, beat_at: UnixMs, now: UnixMs) -> bool {
        now.saturating_sub(beat_at) > self.timeout_ms
    }

    /// Beats before this are dead nodes' (what a store compares with): `is_dead(b, now)` is
    /// exactly `b < dead_before(now)`.
    pub fn dead_before(&self, now: UnixMs) -> UnixMs {
        now.saturating_sub(self.timeout_ms)
    }
}

/// How far a held caller got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldState {
    /// In line for a person.
    Waiting,
    /// An agent's phone is ringing for them.
    Connecting,
}

impl HeldState {
    pub fn as_str(self) -> &'static str {
        match self {
            HeldState::Waiting => "waiting",
            HeldState::Connecting => "connecting",
        }
    }

    /// An unknown state (a newer version wrote it) reads as waiting: still a caller to keep.
    pub fn parse(s: &str) -> Self {
        match s {
            "connecting" => HeldState::Connecting,
            _ => HeldState::Waiting,
        }
    }
}

/// A call on a node whose caller asked for a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldCall {
    /// `{node}-{call}`: also the start of the key of every promise made on this call, so a
    /// caller who already has one is not promised again when their node dies.
    pub key: String,
    /// The node holding it (its run id, as in its beats).
    pub node: String,
    /// The caller's number as their phone gave it (checked when dialed, like any promise's).
    pub number: String,
    /// The SIP Call-ID, for the record.
    pub call_id: String,
    /// Why they are going to a person (`keyword`, `repetition`, ...).
    pub reason: String,
    /// What they said, for the agent (JSON, as a promise's context).
    pub context: serde_json::Value,
    pub state: HeldState,
    pub since: UnixMs,
}

impl HeldCall {
    /// The key a call's held record has on `node`.
    pub fn key_for(node: &str, call: u64) -> String {
        format!("{node}-{call}")
    }

    /// What every promise made on this call starts with (`{node}-{call}-{n}`).
    pub fn promise_key_prefix(&self) -> String {
        format!("{}-", self.key)
    }

    /// The promise a surviving node makes for this caller at `now`: due at once, automatic,
    /// keyed on the held call so that two survivors (or one, twice) make it once.
    pub fn promise_after_node_died(&self, now: UnixMs) -> NewPromise {
        let mut context = self.context.clone();
        if let Some(map) = context.as_object_mut() {
            map.insert("node_died".into(), self.node.clone().into());
            map.insert("asked_for_person".into(), self.reason.clone().into());
        }
        NewPromise {
            number: self.number.clone(),
            not_before: now,
            reason: REASON_NODE_DIED.into(),
            context,
            automatic: true,
            key: adopted_key(&self.key),
            call_id: self.call_id.clone(),
        }
    }
}

/// The key of the promise made for a held call after its node died.
pub fn adopted_key(held_key: &str) -> String {
    format!("{REASON_NODE_DIED}:{held_key}")
}

/// A node as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBeat {
    /// This server run (unique across restarts).
    pub node: String,
    /// The name it was given (`node` in the server file), or its run id.
    pub name: String,
    pub started_at: UnixMs,
    pub beat_at: UnixMs,
    /// The node that took its held callers over when it was found dead.
    pub adopted_by: Option<String>,
}

/// What a node asking the shared store for an agent is told ([`crate::callbacks::LedgerStore::claim_agent`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "claim", rename_all = "snake_case")]
pub enum AgentClaim {
    /// The agent is this node's to ring until it releases them (or dies).
    Granted,
    /// A live node holds the agent, ringing or talking for one of its calls.
    HeldBy { node: String, call: String },
    /// The agent set themselves away (on any node): nobody rings them.
    Away,
}

/// An agent's presence as last set on any node ([`crate::callbacks::LedgerStore::set_presence`]):
/// every node's queue follows it, so an agent away on one node is offered no call by another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRow {
    /// The agent's name in the queue, as in [`AgentClaimRow::agent`].
    pub agent: String,
    pub presence: crate::agents::Presence,
    /// When it was set (the setting node's clock): a later setting wins.
    pub set_at: UnixMs,
}

/// An agent engaged by a node, as the store holds it: one row per agent, so one call at a
/// time across all nodes. It lasts until its node releases it, or stops beating: a dead
/// node's agents are free again once it is dead by [`Liveness`], with no renewal of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentClaimRow {
    /// The agent's name in the queue (a configured URI, or a user name): the same on every node.
    pub agent: String,
    pub node: String,
    /// The call it is for, `{node}-{call}` ([`HeldCall::key_for`]).
    pub call: String,
    pub claimed_at: UnixMs,
}

impl AgentClaimRow {
    /// Whether `me` may take an agent held by this claim: its own (a release it could not make
    /// reached the store later, or never), or a node dead by `dead_before` (`holder_beat`:
    /// that node's last beat; none when it never beat, or its row is gone).
    pub fn yields_to(&self, me: &str, holder_beat: Option<UnixMs>, dead_before: UnixMs) -> bool {
        self.node == me || holder_beat.is_none_or(|b| b < dead_before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_dead_only_after_its_timeout_and_the_cutoff_agrees() {
        let l = Liveness { timeout_ms: 3_000 };
        assert!(!l.is_dead(10_000, 13_000));
        assert!(l.is_dead(10_000, 13_001));
        // A beat from the future (clocks apart) is alive, never an overflow.
        assert!(!l.is_dead(20_000, 13_000));
        assert!(!l.is_dead(i64::MAX, i64::MIN));
        for (beat, now) in [(10_000, 13_000), (10_000, 13_001), (0, i64::MAX)] {
            assert_eq!(
                l.is_dead(beat, now),
                beat < l.dead_before(now),
                "{beat} {now}"
            );
        }
    }

    #[test]
    fn a_dead_nodes_caller_becomes_an_automatic_promise_keyed_on_the_call() {
        let held = HeldCall {
            key: HeldCall::key_for("a-1", 7),
            node: "a-1".into(),
            number: "+31205550100".into(),
            call_id: "sip-7".into(),
            reason: "keyword".into(),
            context: serde_json::json!({"said": ["my bill", "human"], "language": "en"}),
            state: HeldState::Waiting,
            since: 5,
        };
        let p = held.promise_after_node_died(1_000);
        assert_eq!(p.reason, REASON_NODE_DIED);
        assert!(p.automatic);
        assert_eq!((p.not_before, p.number.as_str()), (1_000, "+31205550100"));
        assert_eq!(p.context["said"][1], "human");
        assert_eq!(p.context["node_died"], "a-1");
        assert_eq!(p.key, "node_died:a-1-7");
        // The call's own promises (`a-1-7-1`, ...) start with the prefix; call 70's do not.
        assert!("a-1-7-1".starts_with(&held.promise_key_prefix()));
        assert!(!"a-1-70-1".starts_with(&held.promise_key_prefix()));
    }
}
