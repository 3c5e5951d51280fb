//! Agents and the queue of callers waiting for them. Pure logic (no I/O, time passed in), so
//! the rules — longest-idle agent first, next agent on busy / decline / no answer, a caller
//! keeps their place, wait estimates from live statistics — are testable on their own.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long an agent who failed to answer (busy, declined, unreachable) is skipped.
const AGENT_COOLDOWN: Duration = Duration::from_secs(10);
/// Handle time assumed before any call has been measured.
const DEFAULT_HANDLE_TIME: Duration = Duration::from_secs(180);
/// Weight of the newest measurement in the moving average of handle time.
const EWMA_WEIGHT: f64 = 0.2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgentState {
    Idle { since: Instant },
    Ringing,
    Busy { since: Instant },
    CoolingDown { until: Instant },
}

#[derive(Debug, Clone)]
struct Agent {
    uri: String,
    state: AgentState,
    /// The call this agent is ringing for or talking to.
    call: Option<u64>,
}

#[derive(Debug, Clone)]
struct Waiting {
    call: u64,
    since: Instant,
    /// Agents already tried for this caller in the current round.
    tried: Vec<String>,
    /// Ringing an agent now.
    ringing: bool,
}

/// What the queue wants the driver to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// Ring this agent for this caller.
    Ring { call: u64, agent: String },
    /// Every agent has been tried for this caller and none is free: tell the caller (the
    /// brain offers a callback); the caller stays queued and is tried again later.
    NoneAvailable { call: u64 },
}

/// Why an agent did not take a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentFailure {
    Busy,
    Declined,
    NoAnswer,
    Unreachable,
}

/// The agents, the waiting callers, and the statistics that estimate waits.
#[derive(Debug, Clone)]
pub struct AgentQueue {
    agents: Vec<Agent>,
    waiting: VecDeque<Waiting>,
    avg_handle: Duration,
    answered: u64,
}

impl AgentQueue {
    pub fn new<S: Into<String>>(agents: impl IntoIterator<Item = S>, now: Instant) -> Self {
        let agents = agents
            .into_iter()
            .map(|uri| Agent {
                uri: uri.into(),
                state: AgentState::Idle { since: now },
                call: None,
            })
            .collect();
        Self {
            agents,
            waiting: VecDeque::new(),
            avg_handle: DEFAULT_HANDLE_TIME,
            answered: 0,
        }
    }

    /// Adds a caller at the back of the line; returns their 1-based position.
    pub fn enqueue(&mut self, call: u64, now: Instant) -> u32 {
        if let Some(p) = self.position(call) {
            return p;
        }
        self.waiting.push_back(Waiting {
            call,
            since: now,
            tried: Vec::new(),
            ringing: false,
        });
        self.waiting.len() as u32
    }

    /// Takes a caller out of the line (they hung up, or an agent took them). Frees an agent
    /// who was ringing for them.
    pub fn remove(&mut self, call: u64, now: Instant) {
        self.waiting.retain(|w| w.call != call);
        for a in self
            .agents
            .iter_mut()
            .filter(|a| a.call == Some(call) && a.state == AgentState::Ringing)
        {
            a.state = AgentState::Idle { since: now };
            a.call = None;
        }
    }

    pub fn position(&self, call: u64) -> Option<u32> {
        self.waiting
            .iter()
            .position(|w| w.call == call)
            .map(|i| i as u32 + 1)
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Estimated wait for a queued caller: the callers ahead of them (and they themselves)
    /// served by the agents in parallel, each taking the average handle time seen so far.
    pub fn estimated_wait(&self, call: u64) -> Option<Duration> {
        let position = self.position(call)?;
        if self.waiting.iter().any(|w| w.call == call && w.ringing) {
            // Their agent's phone is ringing now.
            return Some(Duration::ZERO);
        }
        let staffed = self.agents.len().max(1) as u32;
        let free = self
            .agents
            .iter()
            .filter(|a| matches!(a.state, AgentState::Idle { .. }))
            .count() as u32;
        if position <= free {
            return Some(Duration::ZERO);
        }
        let rounds = (position - free).div_ceil(staffed);
        Some(self.avg_handle * rounds)
    }

    /// The next thing to do: ring the longest-idle free agent for the first caller not yet
    /// ringing one. Call repeatedly until `None`.
    pub fn next_assignment(&mut self, now: Instant) -> Option<Assignment> {
        for a in &mut self.agents {
            if let AgentState::CoolingDown { until } = a.state
                && until <= now
            {
                a.state = AgentState::Idle { since: until };
            }
        }
        let agents = &mut self.agents;
        for w in self.waiting.iter_mut().filter(|w| !w.ringing) {
            let free = agents
                .iter_mut()
                .filter(|a| !w.tried.contains(&a.uri))
                .filter_map(|a| match a.state {
                    AgentState::Idle { since } => Some((since, a)),
                    _ => None,
                })
                .min_by_key(|(since, _)| *since);
            if let Some((_, agent)) = free {
                agent.state = AgentState::Ringing;
                agent.call = Some(w.call);
                w.ringing = true;
                w.tried.push(agent.uri.clone());
                return Some(Assignment::Ring {
                    call: w.call,
                    agent: agent.uri.clone(),
                });
            }
            if agents.is_empty() {
                // Nobody staffed at all: say so once per caller (the marker is never an agent).
                if w.tried.is_empty() {
                    w.tried.push(String::new());
                    return Some(Assignment::NoneAvailable { call: w.call });
                }
                continue;
            }
            // Every agent tried this round and none can take it: say so once, start a new round.
            if agents.iter().all(|a| w.tried.contains(&a.uri)) {
                w.tried.clear();
                return Some(Assignment::NoneAvailable { call: w.call });
            }
        }
        None
    }

    /// The agent answered: the caller leaves the line.
    pub fn agent_answered(&mut self, agent: &str, call: u64, now: Instant) {
        if let Some(a) = self.agents.iter_mut().find(|a| a.uri == agent) {
            a.state = AgentState::Busy { since: now };
            a.call = Some(call);
        }
        self.waiting.retain(|w| w.call != call);
    }

    /// The agent did not take the call: they cool down, the caller keeps their place and is
    /// offered to the next agent.
    pub fn agent_failed(&mut self, agent: &str, call: u64, _why: AgentFailure, now: Instant) {
        if let Some(a) = self
            .agents
            .iter_mut()
            .find(|a| a.uri == agent && a.call == Some(call))
        {
            a.state = AgentState::CoolingDown {
                until: now + AGENT_COOLDOWN,
            };
            a.call = None;
        }
        if let Some(w) = self.waiting.iter_mut().find(|w| w.call == call) {
            w.ringing = false;
        }
    }

    /// The call with this agent ended: they are free again, and their handle time feeds the
    /// wait estimates.
    pub fn agent_finished(&mut self, agent: &str, now: Instant) {
        if let Some(a) = self.agents.iter_mut().find(|a| a.uri == agent) {
            if let AgentState::Busy { since } = a.state {
                let took = now.saturating_duration_since(since).as_secs_f64();
                let avg = if self.answered == 0 {
                    took
                } else {
                    self.avg_handle.as_secs_f64() * (1.0 - EWMA_WEIGHT) + took * EWMA_WEIGHT
                };
                self.avg_handle = Duration::from_secs_f64(avg.max(1.0));
                self.answered += 1;
            }
            a.state = AgentState::Idle { since: now };
            a.call = None;
        }
    }

    /// How long the longest-waiting caller has waited.
    pub fn longest_wait(&self, now: Instant) -> Duration {
        self.waiting
            .front()
            .map_or(Duration::ZERO, |w| now.saturating_duration_since(w.since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_idle_agent_rings_first_and_next_agent_on_failure() {
        let t = Instant::now();
        let mut q = AgentQueue::new(["sip:a@h", "sip:b@h"], t);
        q.agent_finished("sip:a@h", t + Duration::from_secs(5)); // a idle since later
        q.enqueue(1, t);
        assert_eq!(
            q.next_assignment(t),
            Some(Assignment::Ring {
                call: 1,
                agent: "sip:b@h".into()
            })
        );
        assert_eq!(q.next_assignment(t), None);
        q.agent_failed("sip:b@h", 1, AgentFailure::Busy, t);
        assert_eq!(
            q.next_assignment(t),
            Some(Assignment::Ring {
                call: 1,
                agent: "sip:a@h".into()
            })
        );
        q.agent_failed("sip:a@h", 1, AgentFailure::NoAnswer, t);
        assert_eq!(
            q.next_assignment(t),
            Some(Assignment::NoneAvailable { call: 1 })
        );
        // The caller kept their place, and is tried again once agents cool down.
        assert_eq!(q.position(1), Some(1));
        assert_eq!(
            q.next_assignment(t + AGENT_COOLDOWN),
            Some(Assignment::Ring {
                call: 1,
                agent: "sip:a@h".into()
            })
        );
    }

    #[test]
    fn wait_estimates_follow_measured_handle_times() {
        let t = Instant::now();
        let mut q = AgentQueue::new(["sip:a@h"], t);
        q.enqueue(1, t);
        assert_eq!(q.estimated_wait(1), Some(Duration::ZERO));
        let Some(Assignment::Ring { agent, .. }) = q.next_assignment(t) else {
            panic!()
        };
        q.agent_answered(&agent, 1, t);
        q.agent_finished(&agent, t + Duration::from_secs(60));
        let Some(Assignment::Ring { .. }) = ({
            q.enqueue(2, t);
            q.next_assignment(t)
        }) else {
            panic!()
        };
        q.agent_answered("sip:a@h", 2, t);
        q.enqueue(3, t);
        q.enqueue(4, t);
        assert_eq!(q.position(4), Some(2));
        assert_eq!(q.estimated_wait(3), Some(Duration::from_secs(60)));
        assert_eq!(q.estimated_wait(4), Some(Duration::from_secs(120)));
    }

    #[test]
    fn no_agents_at_all_is_reported_once() {
        let t = Instant::now();
        let mut q = AgentQueue::new(Vec::<String>::new(), t);
        q.enqueue(9, t);
        assert_eq!(
            q.next_assignment(t),
            Some(Assignment::NoneAvailable { call: 9 })
        );
        assert_eq!(q.next_assignment(t), None);
    }
}
