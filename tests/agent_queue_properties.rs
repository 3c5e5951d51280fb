//! Properties of the agent queue over random sequences of what calls tell it: callers
//! joining and leaving, agents' legs answered, failed, finished, a `Ring` the call never got,
//! stale reports for another call, time passing, and a driver that loses a leg's end
//! altogether. Whatever happens, no agent is lost from the pool, no agent is offered two calls
//! at once, and no caller waits while an agent is idle.

use humanline::agents::{AgentFailure, AgentQueue, Assignment, QueueInput, RING_LIMIT};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const AGENTS: [&str; 3] = ["sip:a@h", "sip:b@h", "sip:c@h"];
/// How long a real driver lets an agent's phone ring before it reports no answer.
const RING_TIMEOUT: Duration = Duration::from_secs(30);
/// Longer than any cool-down the queue applies.
const SETTLE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
enum Step {
    /// A new caller asks for a person.
    Enqueue,
    /// The n-th call, back with the IVR after its agent left, asks for a person again.
    Requeue(usize),
    /// The n-th call seen so far hangs up (it still reports its agent's leg ending).
    Remove(usize),
    /// The n-th open leg is answered.
    Answer(usize),
    Fail(usize, AgentFailure),
    /// The n-th answered leg's conversation ends.
    Finish(usize),
    /// The n-th ringing leg never reached its call (the call was gone).
    Undeliver(usize),
    /// A report for an agent and a call that are not a leg: must change nothing that matters.
    Stale(usize, usize, u8),
    /// The driver loses the n-th ringing leg: no end is ever reported (a bug elsewhere).
    Lose(usize),
    Wait(u64),
}

fn why() -> impl Strategy<Value = AgentFailure> {
    prop::sample::select(vec![
        AgentFailure::Busy,
        AgentFailure::Declined,
        AgentFailure::NoAnswer,
        AgentFailure::Unreachable,
    ])
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Enqueue),
        1 => (0usize..16).prop_map(Step::Remove),
        1 => (0usize..16).prop_map(Step::Requeue),
        3 => (0usize..8).prop_map(Step::Answer),
        2 => ((0usize..8), why()).prop_map(|(i, w)| Step::Fail(i, w)),
        3 => (0usize..8).prop_map(Step::Finish),
        1 => (0usize..8).prop_map(Step::Undeliver),
        1 => ((0usize..3), (0usize..16), 0u8..3).prop_map(|(a, c, k)| Step::Stale(a, c, k)),
        1 => (0usize..8).prop_map(Step::Lose),
        2 => (1u64..90_000).prop_map(Step::Wait),
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum Leg {
    Ringing {
        since: Instant,
    },
    Answered,
    /// The driver lost it (it rang from `since`): the agent's phone stopped ringing by
    /// `RING_TIMEOUT`, but nobody said.
    Lost {
        since: Instant,
    },
}

/// The calls and their agents' legs, as honest drivers (and one careless one) would see them.
struct World {
    queue: AgentQueue,
    now: Instant,
    calls: Vec<u64>,
    /// Calls in line, as the queue should have them.
    waiting: BTreeSet<u64>,
    legs: BTreeMap<(String, u64), Leg>,
    log: Vec<String>,
}

impl World {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            queue: AgentQueue::new(AGENTS, now),
            now,
            calls: vec![],
            waiting: BTreeSet::new(),
            legs: BTreeMap::new(),
            log: vec![],
        }
    }

    fn send(&mut self, input: QueueInput) {
        self.log.push(format!("{input:?}"));
        if let QueueInput::Remove { call } | QueueInput::AgentAnswered { call, .. } = &input {
            self.waiting.remove(call);
        }
        self.queue.handle(input, self.now);
    }

    fn legs_where(&self, f: impl Fn(&Leg) -> bool) -> Vec<(String, u64)> {
        self.legs
            .iter()
            .filter(|(_, l)| f(l))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Whether the agent's phone may still be ringing or in a call.
    fn agent_in_a_leg(&self, agent: &str) -> Option<u64> {
        self.legs.iter().find_map(|((a, c), l)| {
            let live = match l {
                Leg::Ringing { .. } | Leg::Answered => true,
                // The queue cannot know; it may give them back after RING_LIMIT.
                Leg::Lost { since } => self.now.saturating_duration_since(*since) < RING_LIMIT,
            };
            (a == agent && live).then_some(*c)
        })
    }

    fn step(&mut self, s: &Step) {
        match s {
            Step::Enqueue => {
                let call = self.calls.len() as u64 + 1;
                self.calls.push(call);
                self.waiting.insert(call);
                self.send(QueueInput::Enqueue { call });
            }
            Step::Requeue(i) => {
                if let Some(&call) = self.calls.get(i % self.calls.len().max(1))
                    && !self.waiting.contains(&call)
                    && !self.legs.keys().any(|(_, c)| *c == call)
                {
                    self.waiting.insert(call);
                    self.send(QueueInput::Enqueue { call });
                }
            }
            Step::Remove(i) => {
                if let Some(&call) = self.calls.get(i % self.calls.len().max(1)) {
                    self.send(QueueInput::Remove { call });
                }
            }
            Step::Answer(i) => {
                let ringing = self.legs_where(|l| matches!(l, Leg::Ringing { .. }));
                if let Some((agent, call)) = ringing.get(i % ringing.len().max(1)).cloned() {
                    self.legs.insert((agent.clone(), call), Leg::Answered);
                    self.send(QueueInput::AgentAnswered { agent, call });
                }
            }
            Step::Fail(i, why) => {
                // Before or after the answer: either way the leg's end is reported.
                let open = self.legs_where(|l| !matches!(l, Leg::Lost { .. }));
                if let Some((agent, call)) = open.get(i % open.len().max(1)).cloned() {
                    self.legs.remove(&(agent.clone(), call));
                    self.send(QueueInput::AgentFailed {
                        agent,
                        call,
                        why: *why,
                    });
                }
            }
            Step::Finish(i) => {
                let answered = self.legs_where(|l| *l == Leg::Answered);
                if let Some((agent, call)) = answered.get(i % answered.len().max(1)).cloned() {
                    self.legs.remove(&(agent.clone(), call));
                    self.send(QueueInput::AgentFinished { agent, call });
                }
            }
            Step::Undeliver(i) => {
                let ringing = self.legs_where(|l| matches!(l, Leg::Ringing { .. }));
                if let Some((agent, call)) = ringing.get(i % ringing.len().max(1)).cloned() {
                    self.legs.remove(&(agent.clone(), call));
                    self.send(QueueInput::RingUndelivered { agent, call });
                }
            }
            Step::Stale(a, c, kind) => {
                let agent = AGENTS[*a].to_string();
                let call = self.calls.get(*c).copied().unwrap_or(999);
                if self.legs.contains_key(&(agent.clone(), call)) {
                    return;
                }
                // Reports for a leg that is not open (a late duplicate, another call's).
                let input = match kind {
                    0 => QueueInput::AgentFailed {
                        agent,
                        call,
                        why: AgentFailure::Busy,
                    },
                    1 => QueueInput::AgentFinished { agent, call },
                    _ => QueueInput::RingUndelivered { agent, call },
                };
                self.send(input);
            }
            Step::Lose(i) => {
                let ringing = self.legs_where(|l| matches!(l, Leg::Ringing { .. }));
                if let Some(key) = ringing.get(i % ringing.len().max(1)).cloned()
                    && let Some(Leg::Ringing { since }) = self.legs.get(&key).cloned()
                {
                    self.log.push(format!("driver loses {key:?}"));
                    self.legs.insert(key, Leg::Lost { since });
                }
            }
            Step::Wait(ms) => self.wait(Duration::from_millis(*ms)),
        }
    }

    /// Time passes; an honest driver reports a phone that rang too long as not answered.
    fn wait(&mut self, d: Duration) {
        self.now += d;
        self.log.push(format!("wait {d:?}"));
        let timed_out: Vec<_> = self
            .legs
            .iter()
            .filter(|(_, l)| {
                matches!(l, Leg::Ringing { since } if self.now.saturating_duration_since(*since) >= RING_TIMEOUT)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for (agent, call) in timed_out {
            self.legs.remove(&(agent.clone(), call));
            self.send(QueueInput::AgentFailed {
                agent,
                call,
                why: AgentFailure::NoAnswer,
            });
        }
        self.legs.retain(
            |_, l| !matches!(l, Leg::Lost { since } if self.now.saturating_duration_since(*since) >= RING_LIMIT),
        );
    }

    /// Takes every assignment the queue has now, checking each offer.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..1000 {
            let Some(a) = self.queue.next_assignment(self.now) else {
                return Ok(());
            };
            self.log.push(format!("-> {a:?}"));
            match a {
                Assignment::Ring { call, agent } => {
                    if let Some(other) = self.agent_in_a_leg(&agent) {
                        return Err(TestCaseError::fail(format!(
                            "{agent} offered call {call} while still in call {other}'s leg\n{}",
                            self.log.join("\n")
                        )));
                    }
                    prop_assert!(
                        self.waiting.contains(&call),
                        "rang {agent} for call {call}, which is not waiting\n{}",
                        self.log.join("\n")
                    );
                    prop_assert!(
                        self.ringing_for(call).is_none(),
                        "rang {agent} for call {call}, which is already ringing {:?}\n{}",
                        self.ringing_for(call),
                        self.log.join("\n")
                    );
                    self.legs
                        .insert((agent, call), Leg::Ringing { since: self.now });
                }
                Assignment::NoneAvailable { call } => prop_assert!(
                    self.waiting.contains(&call),
                    "told call {call}, not waiting, that nobody is free\n{}",
                    self.log.join("\n")
                ),
            }
        }
        Err(TestCaseError::fail(format!(
            "the queue never stops assigning\n{}",
            self.log.join("\n")
        )))
    }

    /// The agent whose phone rings (or may still ring) for this call.
    fn ringing_for(&self, call: u64) -> Option<String> {
        self.legs.iter().find_map(|((a, c), l)| {
            let ringing = match l {
                Leg::Ringing { .. } => true,
                Leg::Lost { since } => self.now.saturating_duration_since(*since) < RING_LIMIT,
                Leg::Answered => false,
            };
            (*c == call && ringing).then(|| a.clone())
        })
    }

    /// No agent the drivers see as free is held by the queue for a call, and no caller
    /// waits unrung while an agent is idle.
    fn check_pool(&self) -> Result<(), TestCaseError> {
        if self.queue.idle_agents() > 0 {
            for call in &self.waiting {
                prop_assert!(
                    self.ringing_for(*call).is_some(),
                    "call {call} waits while {} agent(s) are idle\n{}",
                    self.queue.idle_agents(),
                    self.log.join("\n")
                );
            }
        }
        for agent in self.queue.agents() {
            if let Some(call) = self.queue.engaged(agent) {
                let held = self.legs.contains_key(&(agent.to_string(), call));
                prop_assert!(
                    held,
                    "{agent} is held for call {call}, but that leg has ended: lost from the pool\n{}",
                    self.log.join("\n")
                );
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn no_agent_is_lost_and_none_is_offered_two_calls(steps in prop::collection::vec(step(), 0..80)) {
        let mut w = World::new();
        for s in &steps {
            w.step(s);
            w.drain()?;
            w.check_pool()?;
        }
        // Every leg ends, every caller leaves, time passes: the whole pool is free again.
        let open = w.legs_where(|l| !matches!(l, Leg::Lost { .. }));
        for (agent, call) in open {
            w.legs.remove(&(agent.clone(), call));
            w.send(QueueInput::AgentFailed { agent, call, why: AgentFailure::NoAnswer });
        }
        for call in w.calls.clone() {
            w.send(QueueInput::Remove { call });
        }
        w.wait(SETTLE.max(RING_LIMIT));
        w.drain()?;
        for agent in AGENTS {
            prop_assert!(
                w.queue.available(agent) && w.queue.engaged(agent).is_none(),
                "{agent} never came back to the pool\n{}",
                w.log.join("\n")
            );
        }
        // And they take calls: a new caller rings one of them at once.
        w.step(&Step::Enqueue);
        let before = w.legs.len();
        w.drain()?;
        prop_assert_eq!(w.legs.len(), before + 1, "a free pool did not ring for a new caller");
    }
}
