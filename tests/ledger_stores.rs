//! The callback ledger's rules, run against every store: embedded SQLite and a real
//! PostgreSQL (a private cluster on 127.0.0.1, started here; SKIP without the package, except in
//! CI). Then what only a shared store must do: two nodes claiming from one database never claim
//! the same promise, and a dead node's promise is kept by the other after its lease, once.
//! The users, the flow's versions and agents' presence, which live in the same store, are
//! checked on both stores too.

mod common;

use common::postgres::{Cluster, cluster};
use humanline::agents::Presence;
use humanline::callbacks::{
    AttemptOutcome, CallbackLedger, LedgerError, LedgerStore, NewPromise, PromiseState, RetryPolicy,
};
use humanline::config::versions::{FileChange, Snapshot, VersionStore};
use humanline::nodes::{AgentClaim, HeldCall, HeldState, Liveness, REASON_NODE_DIED};
use humanline::storage::{DEFAULT_LEASE_MS, PostgresStore, SqliteStore, StoreSetting};
use humanline::web::auth::{Role, User, UserError, UserStore};
use std::collections::HashSet;
use std::sync::{Arc, Barrier};

/// One ledger, reopened as often as a test likes (a restart, or another node).
enum Backend {
    Sqlite(tempfile::TempDir),
    /// The cluster is held so that it runs as long as the ledger is used.
    Postgres {
        _cluster: Arc<Cluster>,
        url: String,
    },
}

impl Backend {
    fn sqlite() -> Backend {
        Backend::Sqlite(tempfile::tempdir().expect("temp dir"))
    }

    fn postgres(test: &str) -> Option<Backend> {
        let c = cluster(test)?;
        let url = c.database();
        Some(Backend::Postgres { _cluster: c, url })
    }

    /// A new connection to the ledger, as `node`.
    fn open(&self, node: &str) -> Box<dyn LedgerStore> {
        match self {
            Backend::Sqlite(dir) => {
                Box::new(SqliteStore::open(&dir.path().join("ledger.db")).expect("open sqlite"))
            }
            Backend::Postgres { url, .. } => {
                Box::new(PostgresStore::connect(url, node).expect("connect postgres"))
            }
        }
    }

    fn ledger(&self, node: &str, policy: RetryPolicy) -> CallbackLedger<Box<dyn LedgerStore>> {
        CallbackLedger::new(self.open(node), policy)
    }

    /// The store as the server's `store` setting names it, with its data folder.
    fn setting(&self) -> (StoreSetting, std::path::PathBuf) {
        match self {
            Backend::Sqlite(dir) => (StoreSetting::Sqlite, dir.path().to_path_buf()),
            Backend::Postgres { url, .. } => (
                StoreSetting::Postgres(url.clone()),
                std::env::temp_dir().join("no-data-dir-for-postgres"),
            ),
        }
    }

    /// A new connection to the users, as a node (or `humanline users`) opens them.
    fn users(&self) -> Box<dyn UserStore> {
        let (store, dir) = self.setting();
        store.open_users(&dir).expect("open users")
    }

    fn versions(&self) -> Box<dyn VersionStore> {
        let (store, dir) = self.setting();
        store.open_versions(&dir).expect("open versions")
    }
}

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

/// Each case as a test on each store: `sqlite::CASE` and `postgres::CASE`.
macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $case() { super::$case(&super::Backend::sqlite()) } )*
        }
        mod postgres {
            $( #[test] fn $case() {
                if let Some(b) = super::Backend::postgres(stringify!($case)) {
                    super::$case(&b)
                }
            } )*
        }
    };
}

on_every_store!(
    a_promise_is_retried_with_backoff_then_escalated_never_dropped,
    a_chosen_time_is_honoured_and_completion_is_final,
    a_promise_kept_by_an_agent_is_never_dialed_and_says_why,
    a_crash_mid_dial_leaves_the_promise_due_again,
    a_dead_nodes_waiting_callers_become_promises_once,
    a_node_thought_dead_that_serves_its_caller_keeps_the_promise_made_for_them,
    an_agent_is_claimed_by_one_node_at_a_time_until_released_or_its_node_dies,
    nodes_claiming_one_agent_at_once_get_it_once,
    users_added_on_one_connection_are_read_on_another,
    versions_are_read_back_whole_by_another_node_newest_first,
    an_agent_away_is_claimed_by_no_node_and_the_latest_setting_wins,
);

fn user(name: &str, role: Role) -> User {
    User {
        name: name.into(),
        role,
        password_hash: "$argon2id$x".into(),
        sip_realm: "humanline".into(),
        sip_ha1: "0".repeat(32),
        created_at: 7,
    }
}

/// A user added through one connection (`humanline users add`) is what every other one (each
/// node) reads; names are unique; a removed user is gone for all.
fn users_added_on_one_connection_are_read_on_another(b: &Backend) {
    let (mut cli, mut node) = (b.users(), b.users());
    cli.add(&user("bob", Role::Agent)).unwrap();
    cli.add(&user("alice", Role::Operator)).unwrap();
    assert!(matches!(
        node.add(&user("bob", Role::Supervisor)),
        Err(UserError::Exists(_))
    ));
    let names: Vec<_> = node.list().unwrap().into_iter().map(|u| u.name).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(
        node.get("alice").unwrap(),
        Some(user("alice", Role::Operator))
    );
    cli.remove("bob").unwrap();
    assert!(node.get("bob").unwrap().is_none());
    assert!(matches!(node.remove("bob"), Err(UserError::NotFound(_))));
}

/// A version stored by one node is read back by another with its files and changes; the
/// newest is the latest; the audit log keeps its order.
fn versions_are_read_back_whole_by_another_node_newest_first(b: &Backend) {
    let (mut a, other) = (b.versions(), b.versions());
    assert!(other.latest().unwrap().is_none());
    let mut snap = Snapshot::default();
    snap.tree.insert("prompts/en.toml".into(), "h1".into());
    snap.blobs.insert("h1".into(), b"x = 1".to_vec());
    let v1 = a.add_version(1, "alice", "first", &snap, &[]).unwrap();
    snap.tree.insert("audio/en/a.wav".into(), "h2".into());
    snap.blobs.insert("h2".into(), vec![0, 159, 255, 82]);
    let change = FileChange {
        path: "audio/en/a.wav".into(),
        change: "added".into(),
        lines: vec![],
    };
    let v2 = a
        .add_version(2, "bob", "second", &snap, std::slice::from_ref(&change))
        .unwrap();
    assert!(v2 > v1);
    let latest = other.latest().unwrap().unwrap();
    assert_eq!((latest.id, latest.author.as_str()), (v2, "bob"));
    assert_eq!(latest.changes, [change]);
    assert_eq!(latest.tree, snap.tree);
    assert_eq!(other.version(v1).unwrap().unwrap().tree.len(), 1);
    assert_eq!(other.blob("h2").unwrap().unwrap(), [0, 159, 255, 82]);
    assert!(other.blob("h3").unwrap().is_none());
    let ids: Vec<_> = other.versions(10).unwrap().iter().map(|v| v.id).collect();
    assert_eq!(ids, [v2, v1]);
    a.audit(5, "alice", "login", "").unwrap();
    a.audit(6, "alice", "publish", "version 2").unwrap();
    let log = other.audit_log(10).unwrap();
    assert_eq!(log[0].action, "publish");
    assert_eq!(log[1].action, "login");
}

type Ledger = CallbackLedger<Box<dyn LedgerStore>>;

/// Nodes `node-a` and `node-b` on one store, both beating at 10 s, and when a node counts as
/// dead (3 s without a beat).
fn two_live_nodes(b: &Backend) -> (Liveness, Ledger, Ledger) {
    let (mut a, mut bn) = (
        b.ledger("node-a", RetryPolicy::default()),
        b.ledger("node-b", RetryPolicy::default()),
    );
    a.beat("node-a", "a", 10_000).unwrap();
    bn.beat("node-b", "b", 10_000).unwrap();
    (Liveness { timeout_ms: 3_000 }, a, bn)
}

/// An agent set away on one node is claimed by no node until set available again; a setting
/// older than the stored one (a late write) changes nothing.
fn an_agent_away_is_claimed_by_no_node_and_the_latest_setting_wins(b: &Backend) {
    let (liveness, mut a, mut bn) = two_live_nodes(b);
    let ann = "ann";
    a.set_presence(ann, Presence::Away, 10_000).unwrap();
    assert_eq!(
        bn.claim_agent(ann, "node-b", "node-b-1", liveness, 10_001)
            .unwrap(),
        AgentClaim::Away
    );
    assert!(bn.agent_claims().unwrap().is_empty());
    // A late write of an older setting is ignored.
    bn.set_presence(ann, Presence::Available, 9_000).unwrap();
    let rows = bn.presences().unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| (r.agent.as_str(), r.presence, r.set_at))
            .collect::<Vec<_>>(),
        [(ann, Presence::Away, 10_000)]
    );
    bn.set_presence(ann, Presence::Available, 10_500).unwrap();
    assert_eq!(
        bn.claim_agent(ann, "node-b", "node-b-1", liveness, 10_501)
            .unwrap(),
        AgentClaim::Granted
    );
    assert_eq!(a.presences().unwrap()[0].presence, Presence::Available);
}

fn a_promise_is_retried_with_backoff_then_escalated_never_dropped(b: &Backend) {
    let policy = RetryPolicy {
        first_delay_ms: 1000,
        factor: 2.0,
        max_delay_ms: 10_000,
        max_attempts: 3,
        window_ms: 1 << 40,
    };
    let mut l = b.ledger("node-a", policy);
    let p = l.promise(&promise("call-1", 0), 100).unwrap();
    assert_eq!(p.state, PromiseState::Promised);
    assert_eq!(p.context["said"][1], "human");
    // Committing the same request's promise again is the same promise.
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
    assert_eq!(l.list(None).unwrap().len(), 1);
    let attempts = l.attempts(p.id).unwrap();
    assert_eq!(attempts.len(), 3);
    assert!(
        attempts
            .iter()
            .all(|a| a.outcome == Some(AttemptOutcome::Busy))
    );
}

fn a_chosen_time_is_honoured_and_completion_is_final(b: &Backend) {
    let mut l = b.ledger("node-a", RetryPolicy::default());
    l.promise(&promise("call-2", 50_000), 0).unwrap();
    assert!(l.claim_due(49_999, 10).unwrap().is_empty());
    let (p, a) = l.claim_due(50_000, 10).unwrap().remove(0);
    assert_eq!(
        l.connected(a.id, 50_100).unwrap().state,
        PromiseState::Connected
    );
    let done = l.finish(a.id, AttemptOutcome::Completed, 60_000).unwrap();
    assert_eq!(
        (done.state, done.completed_at),
        (PromiseState::Completed, Some(60_000))
    );
    assert_eq!(done.completed_reason.as_deref(), Some("called_back"));
    // A late report for the same attempt cannot reopen it, and it is never claimed again.
    assert!(matches!(
        l.finish(a.id, AttemptOutcome::Failed, 61_000),
        Err(LedgerError::StaleAttempt(_))
    ));
    assert!(l.claim_due(i64::MAX / 2, 10).unwrap().is_empty());
    assert_eq!(l.get(p.id).unwrap().state, PromiseState::Completed);
    assert!(matches!(l.get(p.id + 1000), Err(LedgerError::NotFound(_))));
}

fn a_promise_kept_by_an_agent_is_never_dialed_and_says_why(b: &Backend) {
    let mut l = b.ledger("node-a", RetryPolicy::default());
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

/// A node stopped with attempts open (one ringing, one connected): after the restart both
/// promises are due again, their attempts recorded as interrupted. On a shared store that
/// waits for the lease, since another node might still be dialing.
fn a_crash_mid_dial_leaves_the_promise_due_again(b: &Backend) {
    {
        let mut l = b.ledger("run-1", RetryPolicy::default());
        l.promise(&promise("call-3", 0), 0).unwrap();
        l.promise(&promise("call-4", 0), 0).unwrap();
        let claimed = l.claim_due(10, 10).unwrap();
        assert_eq!(claimed.len(), 2);
        l.connected(claimed[1].1.id, 20).unwrap();
        // "Crash": dropped with both attempts open.
    }
    let after_lease = 10 + DEFAULT_LEASE_MS + 1;
    let mut l = b.ledger("run-2", RetryPolicy::default());
    assert_eq!(l.recover(after_lease).unwrap(), 2);
    assert_eq!(l.recover(after_lease).unwrap(), 0, "recovered twice");
    let due = l.claim_due(after_lease, 10).unwrap();
    assert_eq!(due.len(), 2);
    for (p, _) in due {
        assert_eq!(p.attempts, 2);
        let attempts = l.attempts(p.id).unwrap();
        assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Interrupted));
        assert_eq!(attempts[1].outcome, None);
    }
}

// --- only a shared store ----------------------------------------------------------------------

/// Two nodes' dialers on one database, claiming at the same moment in small batches, 300
/// promises: every promise is claimed, and by exactly one node, once.
#[test]
fn two_nodes_claiming_at_once_claim_each_promise_exactly_once() {
    let Some(b) = Backend::postgres("two_nodes_claiming") else {
        return;
    };
    const PROMISES: usize = 300;
    let mut setup = b.ledger("setup", RetryPolicy::default());
    for i in 0..PROMISES {
        setup.promise(&promise(&format!("p-{i}"), 0), 0).unwrap();
    }
    let b = Arc::new(b);
    let start = Arc::new(Barrier::new(2));
    let nodes: Vec<_> = ["node-a", "node-b"]
        .into_iter()
        .map(|node| {
            let (b, start) = (b.clone(), start.clone());
            std::thread::spawn(move || {
                let mut l = b.ledger(node, RetryPolicy::default());
                let mut mine = Vec::new();
                start.wait();
                loop {
                    let claimed = l.claim_due(1_000, 3).unwrap();
                    if claimed.is_empty() {
                        return mine;
                    }
                    for (p, a) in claimed {
                        l.finish(a.id, AttemptOutcome::Completed, 1_001).unwrap();
                        mine.push(p.id);
                    }
                }
            })
        })
        .collect();
    let claims: Vec<Vec<i64>> = nodes.into_iter().map(|n| n.join().unwrap()).collect();
    let (a, b_ids): (HashSet<i64>, HashSet<i64>) = (
        claims[0].iter().copied().collect(),
        claims[1].iter().copied().collect(),
    );
    assert_eq!(a.len(), claims[0].len(), "node a claimed a promise twice");
    assert_eq!(
        b_ids.len(),
        claims[1].len(),
        "node b claimed a promise twice"
    );
    assert!(a.is_disjoint(&b_ids), "a promise claimed by both nodes");
    assert_eq!(a.len() + b_ids.len(), PROMISES, "promises left unclaimed");
    // Both really took part (else this proved nothing about concurrency).
    assert!(
        !a.is_empty() && !b_ids.is_empty(),
        "one node claimed all: {} / {}",
        a.len(),
        b_ids.len()
    );
    let done = setup.list(Some(PromiseState::Completed)).unwrap();
    assert_eq!(done.len(), PROMISES);
    assert!(
        done.iter().all(|p| p.attempts == 1),
        "a promise dialed twice"
    );
}

/// Node A claims two promises and dies mid-attempt. While A's lease runs, node B leaves them
/// alone; after it, B makes them due and keeps them. A's late report (a node thought dead)
/// cannot reopen them, and a live node's renewed claims are never taken, however long.
#[test]
fn a_dead_nodes_promise_is_kept_by_the_other_after_its_lease_once() {
    let Some(b) = Backend::postgres("a_dead_nodes_promise") else {
        return;
    };
    let Backend::Postgres { url, .. } = &b else {
        unreachable!()
    };
    let lease = 1_000;
    let node = |name: &str| {
        CallbackLedger::new(
            PostgresStore::connect(url, name).unwrap().with_lease(lease),
            RetryPolicy::default(),
        )
    };
    let (mut a, mut b) = (node("node-a"), node("node-b"));
    a.promise(&promise("dies-1", 0), 0).unwrap();
    a.promise(&promise("dies-2", 0), 0).unwrap();
    let a_claims = a.claim_due(0, 10).unwrap();
    assert_eq!(a_claims.len(), 2);
    a.connected(a_claims[1].1.id, 100).unwrap();
    // A lives a while, renewing on its ticks: B takes nothing, even past the first lease.
    for t in [500, 1_400, 2_300] {
        assert_eq!(a.keep_claims(t).unwrap(), 0);
        assert_eq!(
            b.keep_claims(t + 100).unwrap(),
            0,
            "a live node's claim taken"
        );
        assert!(b.claim_due(t + 100, 10).unwrap().is_empty());
    }
    // A dies (last renewal at 2300: lease until 3300).
    drop(a);
    assert_eq!(
        b.keep_claims(3_300).unwrap(),
        0,
        "taken before the lease ran out"
    );
    assert_eq!(b.keep_claims(3_301).unwrap(), 2);
    assert_eq!(b.keep_claims(3_302).unwrap(), 0, "recovered twice");
    let b_claims = b.claim_due(3_301, 10).unwrap();
    assert_eq!(b_claims.len(), 2);
    for (_, attempt) in &b_claims {
        b.finish(attempt.id, AttemptOutcome::Completed, 4_000)
            .unwrap();
    }
    // A was only slow, not dead: its reports come too late to change anything.
    let mut zombie = node("node-a");
    for (_, attempt) in &a_claims {
        assert!(matches!(
            zombie.finish(attempt.id, AttemptOutcome::Completed, 4_100),
            Err(LedgerError::StaleAttempt(_))
        ));
    }
    for (p, _) in &b_claims {
        let p = b.get(p.id).unwrap();
        assert_eq!(p.state, PromiseState::Completed);
        assert_eq!(p.attempts, 2);
        let outcomes: Vec<_> = b
            .attempts(p.id)
            .unwrap()
            .iter()
            .map(|a| a.outcome)
            .collect();
        assert_eq!(
            outcomes,
            vec![
                Some(AttemptOutcome::Interrupted),
                Some(AttemptOutcome::Completed)
            ]
        );
    }
    assert!(b.claim_due(i64::MAX / 2, 10).unwrap().is_empty());
}

/// Two nodes starting together migrate one database once, and a promise committed by one is
/// read by the other at once (no cache between them).
#[test]
fn nodes_starting_together_share_one_schema() {
    let Some(b) = Backend::postgres("nodes_starting_together") else {
        return;
    };
    let b = Arc::new(b);
    let opened: Vec<_> = (0..3)
        .map(|i| {
            let b = b.clone();
            std::thread::spawn(move || b.ledger(&format!("n{i}"), RetryPolicy::default()))
        })
        .collect();
    let mut ledgers: Vec<_> = opened.into_iter().map(|t| t.join().unwrap()).collect();
    let p = ledgers[0].promise(&promise("shared", 0), 0).unwrap();
    assert_eq!(ledgers[2].get(p.id).unwrap().key, "shared");
    assert_eq!(
        ledgers[1].promise(&promise("shared", 0), 5).unwrap().id,
        p.id
    );
}

// --- nodes: the callers each node holds ---------------------------------------------------------

const TIMEOUT: Liveness = Liveness { timeout_ms: 3_000 };

/// A caller on `node`'s call number `call` who asked for a person and said something.
fn held(node: &str, call: u64, number: &str, state: HeldState) -> HeldCall {
    HeldCall {
        key: HeldCall::key_for(node, call),
        node: node.into(),
        number: number.into(),
        call_id: format!("sip-{node}-{call}"),
        reason: "keyword".into(),
        context: serde_json::json!({"said": [format!("my order {call}"), "human"], "language": "en"}),
        state,
        since: 100 + call as i64,
    }
}

/// Node A holds four callers: two waiting (one with an agent ringing), one who already has a
/// promise from their call, one served (released). A dies. While its beat is fresh nobody takes
/// anything; once it is older than the timeout, B turns exactly the two into promises (reason
/// node_died, their number and words), once, whoever else looks; a live node's caller is
/// never taken; and every promise is dialed once.
fn a_dead_nodes_waiting_callers_become_promises_once(b: &Backend) {
    let mut a = b.ledger("a-run", RetryPolicy::default());
    let mut node_b = b.ledger("b-run", RetryPolicy::default());
    assert!(!a.beat("a-run", "a", 0).unwrap());
    assert!(!node_b.beat("b-run", "b", 0).unwrap());
    a.hold(&held("a-run", 1, "+31205550101", HeldState::Waiting))
        .unwrap();
    a.hold(&held("a-run", 2, "+31205550102", HeldState::Waiting))
        .unwrap();
    // The agent's phone rings for caller 2: the same record, further along.
    a.hold(&held("a-run", 2, "+31205550102", HeldState::Connecting))
        .unwrap();
    a.hold(&held("a-run", 3, "+31205550103", HeldState::Waiting))
        .unwrap();
    a.hold(&held("a-run", 4, "+31205550104", HeldState::Waiting))
        .unwrap();
    // Caller 3 accepted a callback and kept waiting: their promise is keyed on their call.
    let mut own = promise("a-run-3-1", 0);
    own.number = "+31205550103".into();
    let own = a.promise(&own, 150).unwrap();
    a.release(&HeldCall::key_for("a-run", 4), true, 160)
        .unwrap();
    node_b
        .hold(&held("b-run", 1, "+31205550201", HeldState::Waiting))
        .unwrap();
    assert_eq!(a.held_calls().unwrap().len(), 4);

    // A dies after its beat at 1000; B keeps beating.
    assert!(!a.beat("a-run", "a", 1_000).unwrap());
    drop(a);
    assert!(!node_b.beat("b-run", "b", 3_900).unwrap());
    assert!(
        node_b
            .adopt_dead_nodes("b-run", TIMEOUT, 4_000)
            .unwrap()
            .is_empty(),
        "taken at the timeout, not after it"
    );
    let made = node_b.adopt_dead_nodes("b-run", TIMEOUT, 4_001).unwrap();
    let mut numbers: Vec<&str> = made.iter().map(|p| p.number.as_str()).collect();
    numbers.sort();
    assert_eq!(numbers, ["+31205550101", "+31205550102"], "{made:?}");
    for p in &made {
        assert_eq!(p.reason, REASON_NODE_DIED);
        assert!(p.automatic);
        assert_eq!(p.state, PromiseState::Promised);
        assert_eq!(p.next_attempt_at, 4_001);
        assert_eq!(p.context["said"][1], "human");
        assert_eq!(p.context["node_died"], "a-run");
    }
    assert!(
        node_b
            .adopt_dead_nodes("b-run", TIMEOUT, 4_002)
            .unwrap()
            .is_empty(),
        "twice"
    );
    // A third node looking later finds nothing either, and B (alive) is not taken.
    let mut c = b.ledger("c-run", RetryPolicy::default());
    c.beat("c-run", "c", 4_500).unwrap();
    node_b.beat("b-run", "b", 4_600).unwrap();
    assert!(
        c.adopt_dead_nodes("c-run", TIMEOUT, 5_000)
            .unwrap()
            .is_empty()
    );
    let still: Vec<String> = c.held_calls().unwrap().into_iter().map(|h| h.key).collect();
    assert_eq!(still, ["b-run-1"], "A's held callers are gone, B's stay");
    let nodes = c.nodes().unwrap();
    let a_row = nodes.iter().find(|n| n.node == "a-run").unwrap();
    assert_eq!(
        (a_row.name.as_str(), a_row.adopted_by.as_deref()),
        ("a", Some("b-run"))
    );
    assert!(
        nodes
            .iter()
            .filter(|n| n.node != "a-run")
            .all(|n| n.adopted_by.is_none())
    );

    // The dialers keep all three promises, each once.
    let mut dialed = Vec::new();
    for l in [&mut node_b, &mut c] {
        for (p, attempt) in l.claim_due(5_000, 10).unwrap() {
            l.finish(attempt.id, AttemptOutcome::Completed, 5_100)
                .unwrap();
            dialed.push(p.number);
        }
    }
    dialed.sort();
    assert_eq!(dialed, ["+31205550101", "+31205550102", "+31205550103"]);
    assert!(c.claim_due(i64::MAX / 2, 10).unwrap().is_empty());
    assert_eq!(c.get(own.id).unwrap().attempts, 1);
    assert_eq!(c.list(None).unwrap().len(), 3, "one promise per caller");
}

/// A was only slow: B took its caller over, then A's caller reached an agent on A. The
/// promise B made is kept (served by an agent), never dialed; A hears it was given up for dead.
fn a_node_thought_dead_that_serves_its_caller_keeps_the_promise_made_for_them(b: &Backend) {
    let mut a = b.ledger("slow-a", RetryPolicy::default());
    let mut node_b = b.ledger("b", RetryPolicy::default());
    a.beat("slow-a", "a", 0).unwrap();
    a.hold(&held("slow-a", 9, "+31205550109", HeldState::Waiting))
        .unwrap();
    node_b.beat("b", "b", 3_500).unwrap();
    let made = node_b.adopt_dead_nodes("b", TIMEOUT, 3_500).unwrap();
    assert_eq!(made.len(), 1);
    assert!(
        a.beat("slow-a", "a", 3_600).unwrap(),
        "A is not told it was given up"
    );
    assert!(!a.beat("slow-a", "a", 3_700).unwrap(), "told twice");
    a.release(&HeldCall::key_for("slow-a", 9), true, 3_800)
        .unwrap();
    let p = node_b.get(made[0].id).unwrap();
    assert_eq!(p.state, PromiseState::Completed);
    assert_eq!(p.completed_reason.as_deref(), Some("served_by_agent"));
    assert!(node_b.claim_due(10_000, 10).unwrap().is_empty());
    // A beats again: it is alive, and nothing of it is taken now.
    node_b.beat("b", "b", 5_000).unwrap();
    assert!(
        node_b
            .adopt_dead_nodes("b", TIMEOUT, 5_000)
            .unwrap()
            .is_empty()
    );
}

/// The whole of a node's death on the shared store: node A holds 40 waiting callers, has
/// promises not yet due, due and undialed, and one it is dialing; it is SIGKILLed (dropped).
/// Two survivors look at the same moment: each caller becomes one promise (by one of them),
/// A's dialing attempt comes back after its lease, and every promise is dialed exactly once.
#[test]
fn two_survivors_take_a_dead_nodes_callers_and_promises_over_once() {
    let Some(b) = Backend::postgres("two_survivors") else {
        return;
    };
    let Backend::Postgres { url, .. } = &b else {
        unreachable!()
    };
    let url = url.clone();
    let node = move |name: &str| {
        CallbackLedger::new(
            PostgresStore::connect(&url, name)
                .unwrap()
                .with_lease(TIMEOUT.timeout_ms),
            RetryPolicy::default(),
        )
    };
    const CALLERS: u64 = 40;
    let mut a = node("a");
    a.beat("a", "a", 0).unwrap();
    for call in 0..CALLERS {
        a.hold(&held(
            "a",
            call,
            &format!("+3120555{call:04}"),
            HeldState::Waiting,
        ))
        .unwrap();
    }
    a.promise(&promise("a-later", 60_000), 0).unwrap();
    a.promise(&promise("a-due", 0), 0).unwrap();
    a.promise(&promise("a-dialing", 0), 0).unwrap();
    let dialing = a.claim_due(0, 1).unwrap();
    assert_eq!(dialing.len(), 1);
    a.beat("a", "a", 1_000).unwrap();
    a.keep_claims(1_000).unwrap();
    drop(a);

    let start = Arc::new(Barrier::new(2));
    let survivors: Vec<_> = ["b", "c"]
        .into_iter()
        .map(|name| {
            let (start, mut l) = (start.clone(), node(name));
            std::thread::spawn(move || {
                l.beat(name, name, 4_001).unwrap();
                start.wait();
                let made = l.adopt_dead_nodes(name, TIMEOUT, 4_001).unwrap();
                (l, made.into_iter().map(|p| p.id).collect::<Vec<_>>())
            })
        })
        .collect();
    let mut ledgers = Vec::new();
    let mut made = Vec::new();
    for s in survivors {
        let (l, ids) = s.join().unwrap();
        ledgers.push(l);
        made.extend(ids);
    }
    let unique: HashSet<i64> = made.iter().copied().collect();
    assert_eq!(unique.len(), made.len(), "a caller promised twice");
    assert_eq!(made.len() as u64, CALLERS, "callers left without a promise");
    // Before A's lease (1000 + 3000) ran out its attempt stays A's; after, it is due again.
    assert_eq!(ledgers[0].keep_claims(4_000).unwrap(), 0);
    assert_eq!(ledgers[0].keep_claims(4_001).unwrap(), 1);
    let mut dialed: Vec<String> = Vec::new();
    let mut t = 4_001;
    while t <= 70_000 {
        for l in ledgers.iter_mut() {
            for (p, attempt) in l.claim_due(t, 7).unwrap() {
                l.finish(attempt.id, AttemptOutcome::Completed, t).unwrap();
                dialed.push(p.key);
            }
        }
        t += 1_000;
    }
    let keys: HashSet<&String> = dialed.iter().collect();
    assert_eq!(
        keys.len(),
        dialed.len(),
        "a promise dialed twice: {dialed:?}"
    );
    assert_eq!(dialed.len() as u64, CALLERS + 3, "{dialed:?}");
    for k in ["a-later", "a-due", "a-dialing"] {
        assert!(keys.contains(&k.to_string()), "{k} not kept");
    }
    let all = ledgers[0].list(None).unwrap();
    assert!(all.iter().all(|p| p.state == PromiseState::Completed));
    let redialed = ledgers[0].attempts(dialing[0].0.id).unwrap();
    assert_eq!(redialed.len(), 2, "{redialed:?}");
    assert_eq!(redialed[0].outcome, Some(AttemptOutcome::Interrupted));
}

/// One agent listed on two nodes: the first node to claim them rings them; the other is told
/// who holds them, and gets them once the holder releases them, or once the holder is dead by
/// its heartbeat (a dead node's agents are free again). A release that is not the current
/// claim's (a late one, another node's) leaves the agent held.
fn an_agent_is_claimed_by_one_node_at_a_time_until_released_or_its_node_dies(b: &Backend) {
    let (liveness, mut a, mut bn) = two_live_nodes(b);
    let alice = "sip:alice@127.0.0.1:5080";
    assert_eq!(
        a.claim_agent(alice, "node-a", "node-a-1", liveness, 10_000)
            .unwrap(),
        AgentClaim::Granted
    );
    let held_by_a = AgentClaim::HeldBy {
        node: "node-a".into(),
        call: "node-a-1".into(),
    };
    assert_eq!(
        bn.claim_agent(alice, "node-b", "node-b-1", liveness, 10_001)
            .unwrap(),
        held_by_a
    );
    // Another agent is unaffected.
    assert_eq!(
        bn.claim_agent("bob", "node-b", "node-b-1", liveness, 10_001)
            .unwrap(),
        AgentClaim::Granted
    );
    // B cannot release A's claim, nor A with another call's key.
    bn.release_agent(alice, "node-b", "node-a-1").unwrap();
    a.release_agent(alice, "node-a", "node-a-9").unwrap();
    assert_eq!(
        bn.claim_agent(alice, "node-b", "node-b-1", liveness, 10_002)
            .unwrap(),
        held_by_a
    );
    // A's own next call may take them (its release of the first may be on its way).
    assert_eq!(
        a.claim_agent(alice, "node-a", "node-a-2", liveness, 10_003)
            .unwrap(),
        AgentClaim::Granted
    );
    a.release_agent(alice, "node-a", "node-a-1").unwrap();
    let claims = a.agent_claims().unwrap();
    assert_eq!(
        claims
            .iter()
            .map(|c| (c.agent.as_str(), c.node.as_str(), c.call.as_str()))
            .collect::<Vec<_>>(),
        vec![("bob", "node-b", "node-b-1"), (alice, "node-a", "node-a-2")]
    );
    // Released: B gets them.
    a.release_agent(alice, "node-a", "node-a-2").unwrap();
    assert_eq!(
        bn.claim_agent(alice, "node-b", "node-b-2", liveness, 10_004)
            .unwrap(),
        AgentClaim::Granted
    );
    // B goes quiet; A keeps beating. Within B's timeout A is refused, after it A gets them.
    a.beat("node-a", "a", 13_000).unwrap();
    assert_eq!(
        a.claim_agent(alice, "node-a", "node-a-3", liveness, 13_000)
            .unwrap(),
        AgentClaim::HeldBy {
            node: "node-b".into(),
            call: "node-b-2".into(),
        }
    );
    a.beat("node-a", "a", 13_001).unwrap();
    assert_eq!(
        a.claim_agent(alice, "node-a", "node-a-3", liveness, 13_001)
            .unwrap(),
        AgentClaim::Granted
    );
    // B's late release (it was only cut off) does not free A's claim.
    bn.release_agent(alice, "node-b", "node-b-2").unwrap();
    assert!(
        a.agent_claims()
            .unwrap()
            .iter()
            .any(|c| c.agent == alice && c.node == "node-a" && c.call == "node-a-3")
    );
}

/// Eight nodes claim one free agent at the same moment, twenty rounds: each round exactly one
/// is granted, whatever the interleaving; the others are told it is that one's.
fn nodes_claiming_one_agent_at_once_get_it_once(b: &Backend) {
    const NODES: usize = 8;
    const ROUNDS: usize = 20;
    let liveness = Liveness { timeout_ms: 60_000 };
    // Opened and registered before the threads start: nothing in a thread panics between the
    // barriers (one that did would leave the others waiting); errors are outcomes.
    let ledgers: Vec<_> = (0..NODES)
        .map(|i| {
            let node = format!("node-{i}");
            let mut l = b.ledger(&node, RetryPolicy::default());
            l.beat(&node, &node, 1_000).unwrap();
            (node, l)
        })
        .collect();
    let start = Barrier::new(NODES);
    let results: Vec<(String, Vec<Result<AgentClaim, String>>)> = std::thread::scope(|scope| {
        let threads: Vec<_> = ledgers
            .into_iter()
            .map(|(node, mut l)| {
                let start = &start;
                scope.spawn(move || {
                    let mut outcomes = Vec::new();
                    for round in 0..ROUNDS {
                        start.wait();
                        let call = format!("{node}-{round}");
                        let got = l
                            .claim_agent("alice", &node, &call, liveness, 1_000)
                            .map_err(|e| e.to_string());
                        start.wait();
                        // The winner releases; everyone waits for that before the next round.
                        let got = match got {
                            Ok(AgentClaim::Granted) => l
                                .release_agent("alice", &node, &call)
                                .map(|()| AgentClaim::Granted)
                                .map_err(|e| format!("release: {e}")),
                            other => other,
                        };
                        outcomes.push(got);
                        start.wait();
                    }
                    (node, outcomes)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (node, o) in &results {
        assert!(o.iter().all(Result::is_ok), "{node}: {o:?}");
    }
    let results: Vec<(String, Vec<AgentClaim>)> = results
        .into_iter()
        .map(|(n, o)| (n, o.into_iter().flatten().collect()))
        .collect();
    let mut winners = HashSet::new();
    for round in 0..ROUNDS {
        let granted: Vec<&str> = results
            .iter()
            .filter(|(_, o)| o[round] == AgentClaim::Granted)
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(granted.len(), 1, "round {round}: granted to {granted:?}");
        let winner = granted[0];
        winners.insert(winner.to_string());
        for (node, o) in &results {
            if node != winner {
                assert_eq!(
                    o[round],
                    AgentClaim::HeldBy {
                        node: winner.to_string(),
                        call: format!("{winner}-{round}"),
                    },
                    "round {round}, {node}"
                );
            }
        }
    }
    eprintln!("winners over {ROUNDS} rounds: {winners:?}");
}

/// Benchmark (bench/results/agent-claims.json): what claiming an agent adds on the way to them,
/// one claim and one release (two store round trips, each one commit) per call offered to an
/// agent, on SQLite (fsynced) and PostgreSQL (flushed), beside a heartbeat on the same store in
/// the same run (one commit, the cheapest write a node makes).
/// `HUMANLINE_CLAIM_BENCH_RUNS=500 cargo test --release --test ledger_stores -- --ignored --nocapture bench_`
#[test]
#[ignore = "benchmark: run with --ignored"]
fn bench_agent_claim_round_trips_on_both_stores() {
    let runs: usize = std::env::var("HUMANLINE_CLAIM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
        .clamp(10, 100_000);
    let liveness = Liveness { timeout_ms: 30_000 };
    let mut stores = vec![("sqlite", Backend::sqlite())];
    if let Some(pg) = Backend::postgres("bench_agent_claims") {
        stores.push(("postgres", pg));
    }
    let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1000.0;
    let mut result = serde_json::Map::new();
    for (name, b) in &stores {
        let mut l = b.ledger("node-a", RetryPolicy::default());
        let (mut claim, mut release, mut beat) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs {
            let now = 1_000_000 + i as i64;
            let t = std::time::Instant::now();
            l.beat("node-a", "a", now).unwrap();
            beat.push(ms(t));
            let call = format!("node-a-{i}");
            let t = std::time::Instant::now();
            let got = l
                .claim_agent("alice", "node-a", &call, liveness, now)
                .unwrap();
            claim.push(ms(t));
            assert_eq!(got, AgentClaim::Granted);
            let t = std::time::Instant::now();
            l.release_agent("alice", "node-a", &call).unwrap();
            release.push(ms(t));
        }
        // The shared reads presence added: with 100 other agents' settings stored (away), the
        // claim (its away check is in the same statement), a setting's write, and the
        // once-a-second read of every setting each node makes.
        for n in 0..100 {
            l.set_presence(&format!("agent-{n}"), Presence::Away, 1)
                .unwrap();
        }
        let (mut claim_with, mut set, mut read) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs {
            let now = 2_000_000 + i as i64;
            l.beat("node-a", "a", now).unwrap();
            let call = format!("node-a-p{i}");
            let t = std::time::Instant::now();
            let got = l
                .claim_agent("alice", "node-a", &call, liveness, now)
                .unwrap();
            claim_with.push(ms(t));
            assert_eq!(got, AgentClaim::Granted);
            l.release_agent("alice", "node-a", &call).unwrap();
            let t = std::time::Instant::now();
            l.set_presence("alice", Presence::Available, now).unwrap();
            set.push(ms(t));
            let t = std::time::Instant::now();
            assert_eq!(l.presences().unwrap().len(), 101);
            read.push(ms(t));
        }
        let p99 = |v: &[f64]| humanline::bench::percentile(v, 99.0);
        result.insert(
            name.to_string(),
            serde_json::json!({
                "claim_with_100_presences_ms": humanline::bench::summary(&claim_with),
                "claim_with_100_presences_p99_ms": p99(&claim_with),
                "set_presence_ms": humanline::bench::summary(&set),
                "set_presence_p99_ms": p99(&set),
                "read_101_presences_ms": humanline::bench::summary(&read),
                "read_101_presences_p99_ms": p99(&read),
                "claim_ms": humanline::bench::summary(&claim),
                "claim_p99_ms": p99(&claim),
                "release_ms": humanline::bench::summary(&release),
                "release_p99_ms": p99(&release),
                "baseline_beat_ms": humanline::bench::summary(&beat),
                "baseline_beat_p99_ms": p99(&beat),
            }),
        );
    }
    result.insert(
        "command".into(),
        format!("HUMANLINE_CLAIM_BENCH_RUNS={runs} cargo test --release --test ledger_stores -- --ignored --nocapture bench_").into(),
    );
    result.insert(
        "load_average_at_end".into(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .into(),
    );
    let out =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results/agent-claims.json");
    let text = serde_json::to_string_pretty(&result).expect("json");
    std::fs::write(&out, &text).expect("write result");
    eprintln!("{text}");
}
