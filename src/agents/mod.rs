//! Agents and the queue of callers waiting for them. Pure logic (no I/O, time passed in), so
//! the rules — only available agents are offered calls, longest-idle first, next agent on
//! busy / decline / no answer, a caller keeps their place, wait estimates from live
//! statistics — are testable on their own.
//!
//! Agents are either configured (a fixed SIP URI, always reachable) or log in: their phone
//! REGISTERs (until its registration expires) and they set themselves available or away.
//! Busy is not set by anyone: an agent ringing or in a call is busy.
//!
//! Several nodes may list the same agent. Before ringing one, the driver claims them in the
//! shared store (the atomic part); when another node holds them the queue is told
//! ([`QueueInput::ClaimRefused`]), treats them as busy elsewhere for [`CLAIM_RETRY`] and asks
//! again, while the caller keeps their place (or gets the next agent). Every leg's end frees
//! the agent's claim ([`AgentQueue::take_released`]).

mod presence;

pub use presence::SharedPresence;
use serde::Serialize;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long an agent who failed to answer (busy, declined, unreachable) is skipped.
const AGENT_COOLDOWN: Duration = Duration::from_secs(10);
/// Handle time assumed before any call has been measured.
const DEFAULT_HANDLE_TIME: Duration = Duration::from_secs(180);
/// Weight of the newest measurement in the moving average of handle time.
const EWMA_WEIGHT: f64 = 0.2;
/// How long an agent another node holds is left before they are claimed again: about how
/// late a caller here learns that the other node's call ended.
pub const CLAIM_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgentState {
    Idle {
        since: Instant,
    },
    /// Their phone is ringing for `call`; only the end of that leg (answered, failed,
    /// finished) or [`RING_LIMIT`] frees them.
    Ringing {
        call: u64,
        since: Instant,
    },
    Busy {
        call: u64,
        since: Instant,
    },
    CoolingDown {
        until: Instant,
    },
    /// Another node holds them (ringing or talking): asked again at `until`.
    Elsewhere {
        until: Instant,
    },
}

/// An agent whose leg was never reported ended (a driver bug, a task that died) is
/// returned to the pool after this long: far longer than any ring timeout, so the leg is
/// surely over and the agent is never offered two calls at once.
pub const RING_LIMIT: Duration = Duration::from_secs(120);

/// Whether an agent wants calls: they say so in the console (or through the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Available,
    Away,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Available => "available",
            Presence::Away => "away",
        }
    }

    pub fn parse(s: &str) -> Option<Presence> {
        match s {
            "available" => Some(Presence::Available),
            "away" => Some(Presence::Away),
            _ => None,
        }
    }
}

/// How an agent is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// A URI from the configuration: always there.
    Configured,
    /// A phone registered until then.
    Registered { until: Instant },
    /// No phone: never registered, unregistered, or the registration expired.
    Offline,
}

/// What changes about agents themselves (not about a call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentInput {
    /// A phone registered (or refreshed its registration) for `agent` until `until`; their
    /// calls ring `target` (the phone's Contact). A new agent starts available.
    Registered {
        agent: String,
        target: String,
        until: Instant,
    },
    /// Their phone unregistered.
    Unregistered { agent: String },
    /// The agent (or a supervisor) set their presence. Kept across registrations.
    SetPresence { agent: String, presence: Presence },
    /// A console of theirs that answers calls in the browser opened: while one is open their
    /// calls are offered there (`browser:NAME`), not on their phone.
    ConsoleOpened { agent: String },
    /// That console closed (the page went away, or stopped answering calls).
    ConsoleClosed { agent: String },
}

#[derive(Debug, Clone)]
struct Agent {
    /// The agent's name in the queue: a configured URI, or a user name.
    uri: String,
    /// Where their calls ring now.
    target: String,
    reach: Reach,
    /// Consoles open that answer calls in the browser (an agent may have several tabs).
    consoles: u32,
    presence: Presence,
    state: AgentState,
}

impl Agent {
    fn new(uri: String, reach: Reach, now: Instant) -> Agent {
        Agent {
            target: uri.clone(),
            uri,
            reach,
            consoles: 0,
            presence: Presence::Available,
            state: AgentState::Idle { since: now },
        }
    }

    /// Reachable at all: a configured URI, a current registration, or a console open.
    fn reachable(&self) -> bool {
        self.reach != Reach::Offline || self.consoles > 0
    }

    /// May be offered calls (when idle): available and reachable.
    fn offerable(&self) -> bool {
        self.presence == Presence::Available && self.reachable()
    }

    /// The call this agent is ringing for or talking to.
    fn call(&self) -> Option<u64> {
        match self.state {
            AgentState::Ringing { call, .. } | AgentState::Busy { call, .. } => Some(call),
            _ => None,
        }
    }
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

/// An agent as the console shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentView {
    pub agent: String,
    pub presence: Presence,
    /// A configured URI (always reachable), not a login.
    pub configured: bool,
    /// Configured, or their phone's registration is current.
    pub reachable: bool,
    /// A console of theirs answers calls in the browser (their calls are offered there).
    pub browser: bool,
    /// `idle`, `ringing`, `busy` (in a call), `cooling_down` (just missed one) or
    /// `elsewhere` (another node holds them).
    pub state: &'static str,
    pub call: Option<u64>,
    /// How long they have been free to take a call, whole seconds (longest is offered first).
    pub idle_s: Option<u64>,
}

/// A caller in line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaitingView {
    pub call: u64,
    pub position: u32,
    /// Whole seconds (the view changes at most once a second).
    pub waiting_s: u64,
    /// The agent being rung for them now.
    pub ringing: Option<String>,
}

/// Where an agent takes calls, read from the queue's ring target: a SIP URI (a configured
/// agent, or a registered phone's Contact), or `browser:NAME` while a console of theirs
/// answers calls (the call is offered there and bridged like a SIP agent's leg).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentTarget {
    Sip(String),
    Browser { agent: String },
}

impl AgentTarget {
    pub const BROWSER_PREFIX: &'static str = "browser:";

    pub fn parse(target: &str) -> AgentTarget {
        match target.strip_prefix(Self::BROWSER_PREFIX) {
            Some(agent) => AgentTarget::Browser {
                agent: agent.to_string(),
            },
            None => AgentTarget::Sip(target.to_string()),
        }
    }
}

/// Why a caller came and what they said: shown to agents before they answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CallerInfo {
    pub reason: String,
    pub said: Vec<String>,
    pub language: String,
}

/// A caller in line with what they said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaitingCaller {
    #[serde(flatten)]
    pub place: WaitingView,
    #[serde(flatten)]
    pub caller: CallerInfo,
}

/// The agents and the line, as the console shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeskView {
    pub agents: Vec<AgentView>,
    pub waiting: Vec<WaitingCaller>,
}

/// Why an agent did not take a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentFailure {
    Busy,
    Declined,
    NoAnswer,
    Unreachable,
}

/// What a call (or the callback dialer) tells the queue. Every `Ring` the queue hands out
/// is answered by exactly one of `AgentAnswered` or `AgentFailed` for that agent and call,
/// and an answered one later by `AgentFinished`: whatever way the agent's leg ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueInput {
    Enqueue {
        call: u64,
    },
    /// The caller left the line (hung up, or gave up waiting).
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
        call: u64,
    },
    /// The driver could not hand a `Ring` to its call (the call is gone): nobody rang.
    RingUndelivered {
        agent: String,
        call: u64,
    },
    /// The driver could not claim the agent for this `Ring`: another node holds them. Nobody
    /// rang; the caller waits for them (or the next agent), and they are asked for again
    /// after [`CLAIM_RETRY`].
    ClaimRefused {
        agent: String,
        call: u64,
    },
}

/// The agents, the waiting callers, and the statistics that estimate waits.
#[derive(Debug, Clone)]
pub struct AgentQueue {
    agents: Vec<Agent>,
    waiting: VecDeque<Waiting>,
    avg_handle: Duration,
    answered: u64,
    /// Agents whose leg for a call ended since the driver last took them: their claims in the
    /// shared store are to be released.
    released: Vec<(String, u64)>,
}

impl AgentQueue {
    pub fn new<S: Into<String>>(agents: impl IntoIterator<Item = S>, now: Instant) -> Self {
        let agents = agents
            .into_iter()
            .map(|uri| Agent::new(uri.into(), Reach::Configured, now))
            .collect();
        Self {
            agents,
            waiting: VecDeque::new(),
            avg_handle: DEFAULT_HANDLE_TIME,
            answered: 0,
            released: Vec::new(),
        }
    }

    /// Applies one message from a call.
    pub fn handle(&mut self, input: QueueInput, now: Instant) {
        match input {
            QueueInput::Enqueue { call } => {
                self.enqueue(call, now);
            }
            QueueInput::Remove { call } => self.remove(call, now),
            QueueInput::AgentAnswered { agent, call } => self.agent_answered(&agent, call, now),
            QueueInput::AgentFailed { agent, call, why } => {
                self.agent_failed(&agent, call, why, now)
            }
            QueueInput::AgentFinished { agent, call } => self.agent_finished(&agent, call, now),
            QueueInput::RingUndelivered { agent, call } => {
                if let Some(a) = self.engaged_with(&agent, call) {
                    a.state = AgentState::Idle { since: now };
                    self.stop_ringing(call);
                    self.released.push((agent, call));
                }
            }
            QueueInput::ClaimRefused { agent, call } => {
                if let Some(a) = self.engaged_with(&agent, call) {
                    a.state = AgentState::Elsewhere {
                        until: now + CLAIM_RETRY,
                    };
                    self.stop_ringing(call);
                    // Not tried: they never rang, so the caller waits for them rather than
                    // being told that nobody can take the call.
                    if let Some(w) = self.waiting.iter_mut().find(|w| w.call == call) {
                        w.tried.retain(|t| *t != agent);
                    }
                }
            }
        }
    }

    /// The agents whose leg ended (`(agent, call)`, each once) since the last call: the driver
    /// releases their claims in the shared store.
    pub fn take_released(&mut self) -> Vec<(String, u64)> {
        std::mem::take(&mut self.released)
    }

    /// Applies a change to an agent: registration, presence.
    pub fn agent_input(&mut self, input: AgentInput, now: Instant) {
        let mut consoles: i32 = 0;
        let (name, reach, target, presence) = match input {
            AgentInput::Registered {
                agent,
                target,
                until,
            } => (agent, Some(Reach::Registered { until }), Some(target), None),
            AgentInput::Unregistered { agent } => (agent, Some(Reach::Offline), None, None),
            AgentInput::SetPresence { agent, presence } => (agent, None, None, Some(presence)),
            AgentInput::ConsoleOpened { agent } => {
                consoles = 1;
                (agent, None, None, None)
            }
            AgentInput::ConsoleClosed { agent } => {
                consoles = -1;
                (agent, None, None, None)
            }
        };
        let i = match self.agents.iter().position(|a| a.uri == name) {
            Some(i) => i,
            None => {
                self.agents.push(Agent::new(name, Reach::Offline, now));
                self.agents.len() - 1
            }
        };
        let a = &mut self.agents[i];
        // A configured agent stays reachable (at its URI) whatever registers or opens a
        // console under its name.
        if a.reach == Reach::Configured {
            if let Some(p) = presence {
                a.presence = p;
            }
            return;
        }
        let was = a.offerable();
        a.consoles = match consoles {
            1 => a.consoles.saturating_add(1),
            -1 => a.consoles.saturating_sub(1),
            _ => a.consoles,
        };
        if let Some(r) = reach {
            a.reach = r;
        }
        if let Some(t) = target {
            a.target = t;
        }
        if let Some(p) = presence {
            a.presence = p;
        }
        // Idle time counts from when they could take calls.
        if !was
            && a.offerable()
            && let AgentState::Idle { since } = &mut a.state
        {
            *since = now;
        }
    }

    /// An agent's presence, if the queue knows them.
    pub fn presence(&self, agent: &str) -> Option<Presence> {
        self.agents
            .iter()
            .find(|a| a.uri == agent)
            .map(|a| a.presence)
    }

    /// Where an agent's calls ring now: their console (`browser:NAME`) while one answers
    /// calls, else their phone's Contact, or their configured URI.
    pub fn target(&self, agent: &str) -> Option<String> {
        self.agents.iter().find(|a| a.uri == agent).map(|a| {
            if a.consoles > 0 {
                format!("{}{}", AgentTarget::BROWSER_PREFIX, a.uri)
            } else {
                a.target.clone()
            }
        })
    }

    /// Agents who may be offered calls now or when free: available and reachable.
    pub fn staffed(&self) -> usize {
        self.agents.iter().filter(|a| a.offerable()).count()
    }

    /// Time-driven changes: cool-downs ending, legs never reported, registrations expiring.
    fn settle(&mut self, now: Instant) {
        for a in &mut self.agents {
            if let Reach::Registered { until } = a.reach
                && until <= now
            {
                tracing::info!(agent = %a.uri, "registration expired");
                a.reach = Reach::Offline;
            }
            match a.state {
                AgentState::CoolingDown { until } | AgentState::Elsewhere { until }
                    if until <= now =>
                {
                    a.state = AgentState::Idle { since: until };
                }
                AgentState::Ringing { call, since }
                    if now.saturating_duration_since(since) >= RING_LIMIT =>
                {
                    tracing::warn!(agent = %a.uri, call, "no end was reported for this agent's leg: back in the pool");
                    a.state = AgentState::Idle { since: now };
                    self.released.push((a.uri.clone(), call));
                    if let Some(w) = self.waiting.iter_mut().find(|w| w.call == call) {
                        w.ringing = false;
                    }
                }
                _ => {}
            }
        }
    }

    /// The caller's agent is no longer ringing: they may be offered the next one.
    fn stop_ringing(&mut self, call: u64) {
        if let Some(w) = self.waiting.iter_mut().find(|w| w.call == call) {
            w.ringing = false;
        }
    }

    fn engaged_with(&mut self, agent: &str, call: u64) -> Option<&mut Agent> {
        self.agents
            .iter_mut()
            .find(|a| a.uri == agent && a.call() == Some(call))
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

    /// Takes a caller out of the line (they hung up, or gave up). An agent ringing for them
    /// stays engaged until their leg's end is reported: their phone may still be ringing.
    pub fn remove(&mut self, call: u64, _now: Instant) {
        self.waiting.retain(|w| w.call != call);
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

    /// The agents' URIs, for checks that none is ever lost.
    pub fn agents(&self) -> impl Iterator<Item = &str> {
        self.agents.iter().map(|a| a.uri.as_str())
    }

    /// The call an agent is ringing for or talking to, if any.
    pub fn engaged(&self, agent: &str) -> Option<u64> {
        self.agents.iter().find(|a| a.uri == agent)?.call()
    }

    /// Agents free to take a call now (idle, available, reachable).
    pub fn idle_agents(&self) -> usize {
        self.agents
            .iter()
            .filter(|a| a.offerable() && matches!(a.state, AgentState::Idle { .. }))
            .count()
    }

    /// Whether the agent can be offered a call now or once their cool-down ends.
    pub fn available(&self, agent: &str) -> bool {
        self.agents.iter().any(|a| {
            a.uri == agent
                && a.offerable()
                && matches!(
                    a.state,
                    AgentState::Idle { .. } | AgentState::CoolingDown { .. }
                )
        })
    }

    /// Estimated wait for a queued caller: the callers ahead of them (and they themselves)
    /// served by the agents in parallel, each taking the average handle time seen so far.
    pub fn estimated_wait(&self, call: u64) -> Option<Duration> {
        let position = self.position(call)?;
        if self.waiting.iter().any(|w| w.call == call && w.ringing) {
            // Their agent's phone is ringing now.
            return Some(Duration::ZERO);
        }
        let staffed = self.staffed().max(1) as u32;
        let free = self.idle_agents() as u32;
        if position <= free {
            return Some(Duration::ZERO);
        }
        let rounds = (position - free).div_ceil(staffed);
        Some(self.avg_handle.saturating_mul(rounds))
    }

    /// The next thing to do: ring the longest-idle free agent for the first caller not yet
    /// ringing one. Call repeatedly until `None`.
    pub fn next_assignment(&mut self, now: Instant) -> Option<Assignment> {
        self.settle(now);
        let agents = &mut self.agents;
        let staffed = agents.iter().any(Agent::offerable);
        for w in self.waiting.iter_mut().filter(|w| !w.ringing) {
            let free = agents
                .iter_mut()
                .filter(|a| a.offerable() && !w.tried.contains(&a.uri))
                .filter_map(|a| match a.state {
                    AgentState::Idle { since } => Some((since, a)),
                    _ => None,
                })
                .min_by_key(|(since, _)| *since);
            if let Some((_, agent)) = free {
                agent.state = AgentState::Ringing {
                    call: w.call,
                    since: now,
                };
                w.ringing = true;
                w.tried.push(agent.uri.clone());
                return Some(Assignment::Ring {
                    call: w.call,
                    agent: agent.uri.clone(),
                });
            }
            if !staffed {
                // Nobody available at all: say so once per caller (the marker is never an
                // agent), until someone is.
                if !w.tried.iter().any(String::is_empty) {
                    w.tried.clear();
                    w.tried.push(String::new());
                    return Some(Assignment::NoneAvailable { call: w.call });
                }
                continue;
            }
            // Every available agent tried this round and none can take it: say so once,
            // start a new round.
            if agents
                .iter()
                .filter(|a| a.offerable())
                .all(|a| w.tried.contains(&a.uri))
            {
                w.tried.clear();
                return Some(Assignment::NoneAvailable { call: w.call });
            }
            // The agents not yet tried are all engaged or cooling down, and one tried before
            // is free again: ring them again rather than leave them idle while the caller
            // waits.
            let again = agents
                .iter_mut()
                .filter(|a| a.offerable())
                .filter_map(|a| match a.state {
                    AgentState::Idle { since } => Some((since, a)),
                    _ => None,
                })
                .min_by_key(|(since, _)| *since);
            if let Some((_, agent)) = again {
                agent.state = AgentState::Ringing {
                    call: w.call,
                    since: now,
                };
                w.ringing = true;
                return Some(Assignment::Ring {
                    call: w.call,
                    agent: agent.uri.clone(),
                });
            }
        }
        None
    }

    /// The agent answered: the caller leaves the line.
    pub fn agent_answered(&mut self, agent: &str, call: u64, now: Instant) {
        if let Some(a) = self.agents.iter_mut().find(|a| a.uri == agent) {
            // Ringing for this call (or returned to the pool by RING_LIMIT meanwhile): they
            // are talking to this caller now. Engaged with another call: that leg's own end
            // will be reported; this answer cannot be undone, so it is not a second offer.
            match a.state {
                AgentState::Ringing { call: c, .. } | AgentState::Busy { call: c, .. }
                    if c != call => {}
                _ => a.state = AgentState::Busy { call, since: now },
            }
        }
        self.waiting.retain(|w| w.call != call);
    }

    /// The agent did not take the call (or their leg ended before it was answered): they
    /// cool down, the caller keeps their place and is offered to the next agent.
    pub fn agent_failed(&mut self, agent: &str, call: u64, _why: AgentFailure, now: Instant) {
        // A report for a leg that is not this agent's current one is stale: it must not
        // free the agent, nor let the caller ring a second agent.
        if let Some(a) = self.engaged_with(agent, call) {
            a.state = AgentState::CoolingDown {
                until: now + AGENT_COOLDOWN,
            };
            self.stop_ringing(call);
            self.released.push((agent.to_string(), call));
        }
    }

    /// The call with this agent ended: they are free again, and their handle time feeds the
    /// wait estimates. A report for another call than the agent's is stale and ignored.
    pub fn agent_finished(&mut self, agent: &str, call: u64, now: Instant) {
        let (answered, avg_handle) = (self.answered, self.avg_handle);
        let Some(a) = self.engaged_with(agent, call) else {
            return;
        };
        let talked = match a.state {
            AgentState::Busy { since, .. } => Some(now.saturating_duration_since(since)),
            _ => None,
        };
        a.state = AgentState::Idle { since: now };
        self.stop_ringing(call);
        self.released.push((agent.to_string(), call));
        if let Some(took) = talked {
            let took = took.as_secs_f64();
            let avg = if answered == 0 {
                took
            } else {
                avg_handle.as_secs_f64() * (1.0 - EWMA_WEIGHT) + took * EWMA_WEIGHT
            };
            self.avg_handle = Duration::from_secs_f64(avg.clamp(1.0, 86_400.0));
            self.answered += 1;
        }
    }

    /// The agents, as the console shows them.
    pub fn agent_views(&self, now: Instant) -> Vec<AgentView> {
        self.agents
            .iter()
            .map(|a| {
                let (state, idle) = match a.state {
                    AgentState::Idle { since } => ("idle", Some(since)),
                    AgentState::Ringing { .. } => ("ringing", None),
                    AgentState::Busy { .. } => ("busy", None),
                    AgentState::CoolingDown { .. } => ("cooling_down", None),
                    AgentState::Elsewhere { .. } => ("elsewhere", None),
                };
                AgentView {
                    agent: a.uri.clone(),
                    presence: a.presence,
                    configured: a.reach == Reach::Configured,
                    reachable: a.reachable(),
                    browser: a.consoles > 0,
                    state,
                    call: a.call(),
                    idle_s: idle
                        .filter(|_| a.offerable())
                        .map(|s| now.saturating_duration_since(s).as_secs()),
                }
            })
            .collect()
    }

    /// The callers in line, first first.
    pub fn waiting_views(&self, now: Instant) -> Vec<WaitingView> {
        self.waiting
            .iter()
            .enumerate()
            .map(|(i, w)| WaitingView {
                call: w.call,
                position: i as u32 + 1,
                waiting_s: now.saturating_duration_since(w.since).as_secs(),
                ringing: if w.ringing {
                    self.agents
                        .iter()
                        .find(|a| matches!(a.state, AgentState::Ringing { call, .. } if call == w.call))
                        .map(|a| a.uri.clone())
                } else {
                    None
                },
            })
            .collect()
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
        // a takes a call and finishes it at t + 5 s: idle since later than b.
        q.handle(QueueInput::Enqueue { call: 0 }, t);
        assert_eq!(
            q.next_assignment(t),
            Some(Assignment::Ring {
                call: 0,
                agent: "sip:a@h".into()
            })
        );
        q.agent_answered("sip:a@h", 0, t);
        q.agent_finished("sip:a@h", 0, t + Duration::from_secs(5));
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
        q.agent_finished(&agent, 1, t + Duration::from_secs(60));
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
    fn only_available_reachable_agents_are_offered_longest_idle_first() {
        let t = Instant::now();
        let at = |s| t + Duration::from_secs(s);
        let mut q = AgentQueue::new(Vec::<String>::new(), t);
        let reg = |agent: &str, until| AgentInput::Registered {
            agent: agent.into(),
            target: format!("sip:{agent}-phone@h"),
            until,
        };
        q.agent_input(reg("ann", at(100)), at(1));
        q.agent_input(reg("bob", at(100)), at(2));
        q.agent_input(
            AgentInput::SetPresence {
                agent: "ann".into(),
                presence: Presence::Away,
            },
            at(3),
        );
        q.enqueue(1, at(4));
        // Ann is away though idle longest: Bob, at his phone's Contact.
        assert_eq!(
            q.next_assignment(at(4)),
            Some(Assignment::Ring {
                call: 1,
                agent: "bob".into()
            })
        );
        assert_eq!(q.target("bob").as_deref(), Some("sip:bob-phone@h"));
        q.agent_answered("bob", 1, at(5));
        q.enqueue(2, at(6));
        // Bob busy, Ann away: the caller waits.
        assert_eq!(q.next_assignment(at(6)), None);
        // Ann back: offered at once.
        q.agent_input(
            AgentInput::SetPresence {
                agent: "ann".into(),
                presence: Presence::Available,
            },
            at(8),
        );
        assert_eq!(
            q.next_assignment(at(8)),
            Some(Assignment::Ring {
                call: 2,
                agent: "ann".into()
            })
        );
        q.agent_failed("ann", 2, AgentFailure::NoAnswer, at(9));
        // Both registrations expire: nobody can be offered the caller, who is told once.
        assert_eq!(
            q.next_assignment(at(101)),
            Some(Assignment::NoneAvailable { call: 2 })
        );
        assert_eq!(q.next_assignment(at(102)), None);
        assert!(!q.available("ann"));
        let views = q.agent_views(at(101));
        assert!(views.iter().any(|v| v.agent == "ann" && !v.reachable));
        assert!(
            views
                .iter()
                .any(|v| v.agent == "bob" && v.state == "busy" && !v.reachable)
        );
    }

    #[test]
    fn ring_targets_are_sip_uris_or_browser_legs() {
        assert_eq!(
            AgentTarget::parse("sip:bob-0x1@127.0.0.1:5070"),
            AgentTarget::Sip("sip:bob-0x1@127.0.0.1:5070".into())
        );
        assert_eq!(
            AgentTarget::parse("browser:ann"),
            AgentTarget::Browser {
                agent: "ann".into()
            }
        );
    }

    #[test]
    fn an_open_console_makes_an_agent_reachable_in_the_browser_until_it_closes() {
        let t = Instant::now();
        let at = |s| t + Duration::from_secs(s);
        let mut q = AgentQueue::new(Vec::<String>::new(), t);
        let console = |agent: &str| AgentInput::ConsoleOpened {
            agent: agent.into(),
        };
        let closed = |agent: &str| AgentInput::ConsoleClosed {
            agent: agent.into(),
        };
        // Two tabs; no phone.
        q.agent_input(console("ann"), at(1));
        q.agent_input(console("ann"), at(1));
        assert_eq!(q.target("ann").as_deref(), Some("browser:ann"));
        q.enqueue(1, at(2));
        assert_eq!(
            q.next_assignment(at(2)),
            Some(Assignment::Ring {
                call: 1,
                agent: "ann".into()
            })
        );
        let view = q.agent_views(at(2));
        assert!(
            view.iter()
                .any(|v| v.agent == "ann" && v.browser && v.reachable)
        );
        q.agent_failed("ann", 1, AgentFailure::Declined, at(3));
        // One tab closed: still in the browser. A phone registers: the console still wins.
        q.agent_input(closed("ann"), at(4));
        q.agent_input(
            AgentInput::Registered {
                agent: "ann".into(),
                target: "sip:ann-phone@h".into(),
                until: at(100),
            },
            at(4),
        );
        assert_eq!(q.target("ann").as_deref(), Some("browser:ann"));
        // The last tab closed: the phone again; the phone gone too: nobody to offer.
        q.agent_input(closed("ann"), at(5));
        q.agent_input(closed("ann"), at(5));
        assert_eq!(q.target("ann").as_deref(), Some("sip:ann-phone@h"));
        q.agent_input(
            AgentInput::Unregistered {
                agent: "ann".into(),
            },
            at(6),
        );
        assert_eq!(q.staffed(), 0);
        assert!(!q.available("ann"));
    }

    #[test]
    fn an_agent_another_node_holds_is_waited_for_and_every_leg_end_releases_its_claim() {
        let t = Instant::now();
        let at = |ms| t + Duration::from_millis(ms);
        let mut q = AgentQueue::new(["sip:a@h"], t);
        q.enqueue(1, t);
        assert_eq!(
            q.next_assignment(t),
            Some(Assignment::Ring {
                call: 1,
                agent: "sip:a@h".into()
            })
        );
        q.handle(
            QueueInput::ClaimRefused {
                agent: "sip:a@h".into(),
                call: 1,
            },
            at(0),
        );
        // Busy elsewhere: the caller waits, is not told that nobody can take it, and nothing
        // was rung here, so there is no claim to release.
        assert_eq!(q.next_assignment(at(500)), None);
        assert_eq!(q.agent_views(at(500))[0].state, "elsewhere");
        assert_eq!(q.position(1), Some(1));
        assert!(q.take_released().is_empty());
        // Asked for again once CLAIM_RETRY is over; granted this time, answered, finished.
        let retry = CLAIM_RETRY.as_millis() as u64;
        assert_eq!(
            q.next_assignment(at(retry)),
            Some(Assignment::Ring {
                call: 1,
                agent: "sip:a@h".into()
            })
        );
        q.agent_answered("sip:a@h", 1, at(retry));
        assert!(q.take_released().is_empty());
        q.agent_finished("sip:a@h", 1, at(retry + 100));
        assert_eq!(q.take_released(), vec![("sip:a@h".to_string(), 1)]);
        // A failed leg and an undelivered ring release too; a stale report does not.
        q.enqueue(2, at(retry + 200));
        assert!(q.next_assignment(at(retry + 200)).is_some());
        q.agent_failed("sip:a@h", 7, AgentFailure::Busy, at(retry + 300));
        assert!(q.take_released().is_empty());
        q.handle(
            QueueInput::RingUndelivered {
                agent: "sip:a@h".into(),
                call: 2,
            },
            at(retry + 300),
        );
        assert_eq!(q.take_released(), vec![("sip:a@h".to_string(), 2)]);
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
