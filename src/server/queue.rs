//! The agent-queue task: owns the [`AgentQueue`], tells calls which agent to ring and where
//! they stand in line. Each call rings its agent itself and reports back (every leg's end,
//! whatever it was, so no agent drops out of the pool).
//!
//! On a shared store, before it hands out a `Ring`, the task claims the agent there, so that an
//! agent listed on several nodes is offered one call at a time across all of them; each leg's
//! end releases the claim. A claim is one store round trip on the way to an agent, bounded by
//! [`CLAIM_WAIT`]; releases run beside the queue, never holding it up.
//!
//! Presence is shared the same way: an agent's setting here (console or API) is written to the
//! store beside the queue, and every [`PRESENCE_POLL`] the store's settings made on other
//! nodes are applied here. The claim itself refuses an agent the store has as away, so an
//! agent set away on another node is not rung here even before the next look.

use crate::agents::{
    AgentInput, AgentQueue, Assignment, CallerInfo, DeskView, Presence, QueueInput, WaitingCaller,
};
use crate::callbacks::{UnixMs, unix_now, with_ledger};
use crate::nodes::{AgentClaim, HeldCall, Liveness, PresenceRow};
use crate::sync::lock;
use crate::web::{Metrics, SharedLedger};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::watch;
use tracing::{info, warn};

/// How often waiting callers are told their position and wait (only when it changed, or
/// every `STATUS_REFRESH`).
const TICK: Duration = Duration::from_millis(500);
const STATUS_REFRESH: Duration = Duration::from_secs(15);
/// Messages the queue may have waiting for one call. A call reads them as they come; one
/// that is stuck loses status updates (the next one replaces them), never a `Ring`.
pub const TO_CALL_CAPACITY: usize = 16;

/// Messages from calls (and callback attempts) waiting for the queue task at most. A call
/// sends one for each event of its own (its enqueue, an agent leg's end, leaving the line),
/// and the task applies each as it comes, so this holds several for every call of a node at
/// the default admission limit (200). When it is full a call waits for room (`send().await`):
/// its message is never lost, since a lost enqueue would leave a caller waiting for nobody and
/// a lost leg's end would take an agent out of the pool. The task never waits on a call, so
/// the wait ends.
pub const CALLS_CAPACITY: usize = 1024;
/// Agents' changes waiting for the queue task at most: registrations that passed digest
/// authentication (already at most [`super::registrations::CHANNEL`] at a time), consoles
/// opening and closing, presence set by logged-in users. When it is full a registration
/// waits for room; a console opening or a presence change is answered at once that the queue
/// is busy ([`crate::web::desk`]); a console closing waits for room in a task of its own,
/// because losing it would leave the agent offered calls in a browser nobody has open.
pub const AGENTS_CAPACITY: usize = 256;

/// From a call to the queue (at most [`CALLS_CAPACITY`] waiting).
#[derive(Debug)]
pub enum QueueMsg {
    Enqueue {
        call: u64,
        to_call: mpsc::Sender<ToCall>,
        /// Shown in the console while they wait (and to the agent offered the call).
        caller: CallerInfo,
    },
    /// Everything else a call reports, applied to the queue as it is.
    Call(QueueInput),
}

/// From the queue to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToCall {
    /// Ring `target` (the agent's phone); report back under `agent`.
    Ring {
        agent: String,
        target: String,
    },
    NoneAvailable,
    Status {
        position: u32,
        estimated_wait: Duration,
    },
}

/// The channel a call receives the queue's messages on.
pub fn to_call_channel() -> (mpsc::Sender<ToCall>, mpsc::Receiver<ToCall>) {
    mpsc::channel(TO_CALL_CAPACITY)
}

struct Waiter {
    to_call: mpsc::Sender<ToCall>,
    last: Option<(u32, Duration)>,
    sent_at: Instant,
    caller: CallerInfo,
}

/// The queue task's ends: calls' messages, agents' changes (registrations, presence), what
/// the console sees, and how many agents are staffed (for the callback dialer).
pub struct QueueHandles {
    pub calls: mpsc::Sender<QueueMsg>,
    pub agents: mpsc::Sender<AgentInput>,
    pub desk: watch::Receiver<DeskView>,
    pub staffed: Arc<AtomicUsize>,
}

/// How long a claim may take before the agent is rung anyway: a store that hangs must not keep
/// the queue (every waiting caller) waiting.
pub const CLAIM_WAIT: Duration = Duration::from_secs(1);
/// A release the store refused is tried again after this, then after twice as long each time
/// up to [`RELEASE_RETRY_MAX`], until the store takes it: while the claim stays, no other node
/// offers the agent a call.
const RELEASE_RETRY: Duration = Duration::from_millis(500);
const RELEASE_RETRY_MAX: Duration = Duration::from_secs(10);

/// How often the presence other nodes' agents set is read from the shared store.
pub const PRESENCE_POLL: Duration = Duration::from_secs(1);

/// Where the queue claims its agents: the shared store, as this node.
pub struct AgentClaims {
    ledger: SharedLedger,
    /// This server run, as in its heartbeat: a claim lasts while it beats.
    node: String,
    /// When another node counts as dead (its claims lapse).
    liveness: Liveness,
    /// Claims of ended legs the store has not released yet: agent -> call. One per agent at
    /// most (a later claim of the agent by this node replaces an earlier one in the store, so
    /// only the latest leg's release matters), tried by one task until the store takes them.
    unreleased: Arc<std::sync::Mutex<HashMap<String, u64>>>,
    releasing: Arc<std::sync::atomic::AtomicBool>,
}

impl AgentClaims {
    pub fn new(ledger: SharedLedger, node: String, liveness: Liveness) -> Self {
        Self {
            ledger,
            node,
            liveness,
            unreleased: Default::default(),
            releasing: Default::default(),
        }
    }

    /// Whether this node may ring `agent` for `call` now. A store that does not answer (in
    /// [`CLAIM_WAIT`]) does not keep a caller from a person: the agent is rung (as before claims
    /// existed), and the failure is logged.
    async fn claim(&self, agent: &str, call: u64) -> bool {
        let (a, node, key, liveness) = (
            agent.to_string(),
            self.node.clone(),
            HeldCall::key_for(&self.node, call),
            self.liveness,
        );
        let claimed = with_ledger(&self.ledger, move |l| {
            l.claim_agent(&a, &node, &key, liveness, unix_now())
        });
        match tokio::time::timeout(CLAIM_WAIT, claimed).await {
            Ok(Ok(AgentClaim::Granted)) => true,
            Ok(Ok(AgentClaim::HeldBy { node, call: theirs })) => {
                info!(%agent, call, held_by = %node, their_call = %theirs, "agent engaged on another node: the caller waits for them or the next agent");
                false
            }
            Ok(Ok(AgentClaim::Away)) => {
                info!(%agent, call, "agent away (in the shared store): not rung");
                false
            }
            Ok(Err(e)) => {
                warn!(%agent, call, error = %e, "cannot claim the agent in the shared store: ringing them anyway");
                true
            }
            Err(_) => {
                warn!(%agent, call, wait_ms = CLAIM_WAIT.as_millis() as u64, "the shared store did not answer the agent's claim: ringing them anyway");
                true
            }
        }
    }

    /// Releases the claims of legs that ended, beside the queue (a release matches its own
    /// claim only, so it may land after this node's next claim of the agent, harmlessly).
    fn release(&self, ended: Vec<(String, u64)>) {
        if ended.is_empty() {
            return;
        }
        let mut unreleased = lock(&self.unreleased);
        unreleased.extend(ended);
        drop(unreleased);
        if self.releasing.swap(true, Ordering::AcqRel) {
            return; // the releasing task takes these on its next round
        }
        let (ledger, node) = (self.ledger.clone(), self.node.clone());
        let (unreleased, releasing) = (self.unreleased.clone(), self.releasing.clone());
        tokio::spawn(async move {
            let mut wait = RELEASE_RETRY;
            loop {
                let batch: Vec<(String, u64)> = lock(&unreleased)
                    .iter()
                    .map(|(a, c)| (a.clone(), *c))
                    .collect();
                if batch.is_empty() {
                    releasing.store(false, Ordering::Release);
                    // A release added after the look and before the flag went down is
                    // this task's still, unless a new task took it.
                    if lock(&unreleased).is_empty() || releasing.swap(true, Ordering::AcqRel) {
                        return;
                    }
                    continue;
                }
                let (node, tried) = (node.clone(), batch.clone());
                let result = with_ledger(&ledger, move |l| {
                    for (agent, call) in &tried {
                        l.release_agent(agent, &node, &HeldCall::key_for(&node, *call))?;
                    }
                    Ok(())
                })
                .await;
                match result {
                    Ok(()) => {
                        let mut left = lock(&unreleased);
                        for (agent, call) in &batch {
                            // Not a newer leg's release that came in meanwhile.
                            if left.get(agent) == Some(call) {
                                left.remove(agent);
                            }
                        }
                        wait = RELEASE_RETRY;
                    }
                    Err(e) => {
                        warn!(error = %e, agents = batch.len(), retry_ms = wait.as_millis() as u64, "cannot release agents in the shared store: other nodes cannot offer them calls until it answers");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(RELEASE_RETRY_MAX);
                    }
                }
            }
        });
    }
}

impl AgentClaims {
    /// Writes a presence set on this node to the store, beside the queue.
    fn share_presence(&self, agent: String, presence: Presence, at: UnixMs) {
        let ledger = self.ledger.clone();
        tokio::spawn(async move {
            let a = agent.clone();
            let written = with_ledger(&ledger, move |l| l.set_presence(&a, presence, at)).await;
            if let Err(e) = written {
                warn!(%agent, presence = presence.as_str(), error = %e, "cannot share the agent's presence: other nodes keep the one they had");
            }
        });
    }

    /// Reads every agent's presence from the store each [`PRESENCE_POLL`] and hands it to the
    /// queue on `to_queue` (one reading waiting at most: the next one supersedes it).
    fn follow_presence(&self, to_queue: mpsc::Sender<Vec<PresenceRow>>) {
        let ledger = self.ledger.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(PRESENCE_POLL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                every.tick().await;
                match with_ledger(&ledger, |l| l.presences()).await {
                    Ok(rows) => {
                        failing = false;
                        match to_queue.try_send(rows) {
                            Err(TrySendError::Closed(_)) => return,
                            Ok(()) | Err(TrySendError::Full(_)) => {}
                        }
                    }
                    Err(e) if !failing => {
                        failing = true;
                        warn!(error = %e, "cannot read agents' presence from the shared store: the presence set on other nodes is not followed until it answers");
                    }
                    Err(_) => {}
                }
            }
        });
    }
}

/// `claims`: where to claim agents before ringing them (a shared store), or `None` (one node).
pub fn spawn(agents: Vec<String>, metrics: Metrics, claims: Option<AgentClaims>) -> QueueHandles {
    let (tx, rx) = mpsc::channel(CALLS_CAPACITY);
    let (agents_tx, agents_rx) = mpsc::channel(AGENTS_CAPACITY);
    let (desk_tx, desk) = watch::channel(DeskView::default());
    let staffed = Arc::new(AtomicUsize::new(agents.len()));
    tokio::spawn(run(
        agents,
        rx,
        agents_rx,
        desk_tx,
        staffed.clone(),
        metrics,
        claims,
    ));
    QueueHandles {
        calls: tx,
        agents: agents_tx,
        desk,
        staffed,
    }
}

async fn run(
    agents: Vec<String>,
    mut rx: mpsc::Receiver<QueueMsg>,
    mut agents_rx: mpsc::Receiver<AgentInput>,
    desk: watch::Sender<DeskView>,
    staffed: Arc<AtomicUsize>,
    metrics: Metrics,
    claims: Option<AgentClaims>,
) {
    let mut queue = AgentQueue::new(agents, Instant::now());
    let mut waiters: HashMap<u64, Waiter> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut agents_open = true;
    let mut shared_presence = crate::agents::SharedPresence::default();
    let (presence_tx, mut presence_rx) = mpsc::channel(1);
    let mut presence_open = claims.is_some();
    if let Some(claims) = &claims {
        claims.follow_presence(presence_tx);
    }
    loop {
        tokio::select! {
            input = agents_rx.recv(), if agents_open => match input {
                Some(input) => {
                    if let (Some(claims), AgentInput::SetPresence { agent, presence }) = (&claims, &input) {
                        let at = unix_now();
                        shared_presence.set_here(agent, *presence, at);
                        claims.share_presence(agent.clone(), *presence, at);
                    }
                    queue.agent_input(input, Instant::now());
                }
                None => agents_open = false,
            },
            rows = presence_rx.recv(), if presence_open => match rows {
                Some(rows) => shared_presence.follow(rows, &mut queue, Instant::now()),
                None => presence_open = false,
            },
            msg = rx.recv() => {
                let Some(msg) = msg else { return };
                let now = Instant::now();
                match msg {
                    QueueMsg::Enqueue { call, to_call, caller } => {
                        queue.handle(QueueInput::Enqueue { call }, now);
                        waiters.insert(call, Waiter { to_call, last: None, sent_at: now, caller });
                    }
                    QueueMsg::Call(input) => {
                        if let QueueInput::Remove { call } | QueueInput::AgentAnswered { call, .. } = &input {
                            waiters.remove(call);
                        }
                        queue.handle(input, now);
                    }
                }
            }
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        while let Some(a) = queue.next_assignment(now) {
            let (call, msg) = match a {
                Assignment::Ring { call, agent } => {
                    // Bounded: a refused agent is busy elsewhere until CLAIM_RETRY, so this
                    // loop asks for each agent at most once.
                    if let Some(claims) = &claims
                        && !claims.claim(&agent, call).await
                    {
                        queue.handle(QueueInput::ClaimRefused { agent, call }, now);
                        continue;
                    }
                    let target = queue.target(&agent).unwrap_or_else(|| agent.clone());
                    (call, ToCall::Ring { agent, target })
                }
                Assignment::NoneAvailable { call } => (call, ToCall::NoneAvailable),
            };
            let sent = match waiters.get(&call) {
                Some(w) => w.to_call.try_send(msg.clone()),
                None => Err(TrySendError::Closed(msg.clone())),
            };
            if let Err(e) = sent {
                // Nobody will ring this agent: they go straight back to the pool.
                if let ToCall::Ring { agent, .. } = msg {
                    queue.handle(QueueInput::RingUndelivered { agent, call }, now);
                }
                match e {
                    TrySendError::Closed(_) => {
                        // The call task is gone without saying so: forget it.
                        queue.remove(call, now);
                        waiters.remove(&call);
                    }
                    // The call is not reading: offer it again at the next tick, not in a
                    // loop now.
                    TrySendError::Full(_) => break,
                }
            }
        }
        let ended = queue.take_released();
        if let Some(claims) = &claims {
            claims.release(ended);
        }
        metrics.queue_length.set(queue.waiting() as i64);
        staffed.store(queue.staffed(), Ordering::Relaxed);
        let view = DeskView {
            agents: queue.agent_views(now),
            waiting: queue
                .waiting_views(now)
                .into_iter()
                .map(|place| WaitingCaller {
                    caller: waiters
                        .get(&place.call)
                        .map(|w| w.caller.clone())
                        .unwrap_or_default(),
                    place,
                })
                .collect(),
        };
        // Watchers (the console's event streams) wake only for a change.
        desk.send_if_modified(|old| {
            let changed = *old != view;
            if changed {
                *old = view;
            }
            changed
        });
        for (call, w) in &mut waiters {
            let (Some(position), Some(wait)) = (queue.position(*call), queue.estimated_wait(*call))
            else {
                continue;
            };
            let status = (position, wait);
            if w.last != Some(status) || now.duration_since(w.sent_at) >= STATUS_REFRESH {
                w.last = Some(status);
                w.sent_at = now;
                // A full channel drops this status: the next one supersedes it.
                let _ = w.to_call.try_send(ToCall::Status {
                    position,
                    estimated_wait: wait,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callbacks::{CallbackLedger, RetryPolicy};
    use crate::storage::SqliteStore;

    /// The shared store refuses the release of an ended leg's claim for longer than a few
    /// tries (here its claims table is gone for 4 s, as in a failover): once it answers
    /// again the claim is released, and no agent is left held for another node's callers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_release_the_store_refused_is_made_once_it_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let store: Box<dyn crate::callbacks::LedgerStore> =
            Box::new(SqliteStore::open(&path).unwrap());
        let ledger: SharedLedger = Arc::new(std::sync::Mutex::new(CallbackLedger::new(
            store,
            RetryPolicy::default(),
        )));
        let claims = AgentClaims::new(
            ledger.clone(),
            "node-a".into(),
            Liveness { timeout_ms: 3_000 },
        );
        assert!(claims.claim("alice", 7).await);
        let held = |l: &SharedLedger| crate::sync::lock(l).agent_claims().unwrap().len();
        assert_eq!(held(&ledger), 1);

        // Another connection to the same file takes the table away, and brings it back.
        let other = rusqlite::Connection::open(&path).unwrap();
        other
            .execute_batch("ALTER TABLE agent_claims RENAME TO agent_claims_away")
            .unwrap();
        claims.release(vec![("alice".into(), 7)]);
        tokio::time::sleep(Duration::from_secs(4)).await;
        other
            .execute_batch("ALTER TABLE agent_claims_away RENAME TO agent_claims")
            .unwrap();
        assert_eq!(held(&ledger), 1, "the store refused the release meanwhile");

        // Released in the store, and then no longer waiting here (the task notes it just
        // after the store answers: both are waited for).
        let t0 = Instant::now();
        while held(&ledger) > 0 || !lock(&claims.unreleased).is_empty() {
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "the claim was never released: {:?}, waiting: {:?}",
                crate::sync::lock(&ledger).agent_claims(),
                lock(&claims.unreleased)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// More callers at once than the queue's channel holds: the ones that find it full wait
    /// for room, and every one of them is answered (here: nobody is staffed).
    #[tokio::test]
    async fn callers_who_find_the_queue_full_wait_and_none_is_lost() {
        let handles = spawn(Vec::new(), Metrics::new(), None);
        let callers = CALLS_CAPACITY + 100;
        let mut answers = Vec::with_capacity(callers);
        let enqueue = |call: u64, to_call| QueueMsg::Enqueue {
            call,
            to_call,
            caller: CallerInfo::default(),
        };
        // The queue task has not run yet (one thread, and this one has not yielded): the
        // channel takes exactly its capacity, then says it is full; the rest wait for room.
        let mut queued = 0;
        let mut full = false;
        for call in 0..callers as u64 {
            let (tx, rx) = to_call_channel();
            answers.push(rx);
            let msg = enqueue(call, tx);
            let msg = if full {
                msg
            } else {
                match handles.calls.try_send(msg) {
                    Ok(()) => {
                        queued += 1;
                        continue;
                    }
                    Err(TrySendError::Full(msg)) => {
                        full = true;
                        msg
                    }
                    Err(e) => panic!("caller {call}: {e}"),
                }
            };
            let waited =
                tokio::time::timeout(Duration::from_secs(10), handles.calls.send(msg)).await;
            assert!(
                matches!(waited, Ok(Ok(()))),
                "caller {call} waited for good"
            );
        }
        assert_eq!(queued, CALLS_CAPACITY, "the channel is not bounded as said");
        for (call, rx) in answers.iter_mut().enumerate() {
            let told = tokio::time::timeout(Duration::from_secs(10), async {
                while let Some(msg) = rx.recv().await {
                    if msg == ToCall::NoneAvailable {
                        return true;
                    }
                }
                false
            })
            .await;
            assert_eq!(told, Ok(true), "caller {call} was never answered: lost");
        }
    }
}
