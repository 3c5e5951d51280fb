//! The agent-queue task: owns the [`AgentQueue`], tells calls which agent to ring and where
//! they stand in line. Each call rings its agent itself and reports back.

use crate::agents::{AgentFailure, AgentQueue, Assignment};
use crate::web::Metrics;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often waiting callers are told their position and wait (only when it changed, or
/// every `STATUS_REFRESH`).
const TICK: Duration = Duration::from_millis(500);
const STATUS_REFRESH: Duration = Duration::from_secs(15);

/// From a call to the queue.
#[derive(Debug)]
pub enum QueueMsg {
    Enqueue {
        call: u64,
        to_call: mpsc::UnboundedSender<ToCall>,
    },
    Remove {
        call: u64,
    },
    AgentAnswered {
        agent: String,
        call: u64,
    },
    AgentFailed {
        agent: String,
        call: u64,
        why: AgentFailure,
    },
    AgentFinished {
        agent: String,
    },
}

/// From the queue to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToCall {
    Ring {
        agent: String,
    },
    NoneAvailable,
    Status {
        position: u32,
        estimated_wait: Duration,
    },
}

struct Waiter {
    to_call: mpsc::UnboundedSender<ToCall>,
    last: Option<(u32, Duration)>,
    sent_at: Instant,
}

pub fn spawn(agents: Vec<String>, metrics: Metrics) -> mpsc::UnboundedSender<QueueMsg> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(agents, rx, metrics));
    tx
}

async fn run(agents: Vec<String>, mut rx: mpsc::UnboundedReceiver<QueueMsg>, metrics: Metrics) {
    let mut queue = AgentQueue::new(agents, Instant::now());
    let mut waiters: HashMap<u64, Waiter> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { return };
                let now = Instant::now();
                match msg {
                    QueueMsg::Enqueue { call, to_call } => {
                        queue.enqueue(call, now);
                        waiters.insert(call, Waiter { to_call, last: None, sent_at: now });
                    }
                    QueueMsg::Remove { call } => {
                        queue.remove(call, now);
                        waiters.remove(&call);
                    }
                    QueueMsg::AgentAnswered { agent, call } => {
                        queue.agent_answered(&agent, call, now);
                        waiters.remove(&call);
                    }
                    QueueMsg::AgentFailed { agent, call, why } => queue.agent_failed(&agent, call, why, now),
                    QueueMsg::AgentFinished { agent } => queue.agent_finished(&agent, now),
                }
            }
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        while let Some(a) = queue.next_assignment(now) {
            let (call, msg) = match a {
                Assignment::Ring { call, agent } => (call, ToCall::Ring { agent }),
                Assignment::NoneAvailable { call } => (call, ToCall::NoneAvailable),
            };
            if let Some(w) = waiters.get(&call)
                && w.to_call.send(msg).is_err()
            {
                // The call task is gone without saying so: forget it.
                queue.remove(call, now);
                waiters.remove(&call);
            }
        }
        metrics.queue_length.set(queue.waiting() as i64);
        for (call, w) in &mut waiters {
            let (Some(position), Some(wait)) = (queue.position(*call), queue.estimated_wait(*call))
            else {
                continue;
            };
            let status = (position, wait);
            if w.last != Some(status) || now.duration_since(w.sent_at) >= STATUS_REFRESH {
                w.last = Some(status);
                w.sent_at = now;
                let _ = w.to_call.send(ToCall::Status {
                    position,
                    estimated_wait: wait,
                });
            }
        }
    }
}
