//! Properties of the agent queue with agents who log in: over random registrations,
//! expiries, presence changes, callers and legs, an agent who is away, busy (ringing or in a
//! call) or without a current registration is never offered a call; and of the agents free
//! to take one, the one idle longest is offered it first.

use humanline::agents::{AgentFailure, AgentInput, AgentQueue, Assignment, Presence, QueueInput};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const AGENTS: [&str; 4] = ["ann", "bob", "cy", "dee"];

#[derive(Debug, Clone)]
enum Step {
    Register(usize, u64),
    Unregister(usize),
    Presence(usize, bool),
    Enqueue,
    Remove(usize),
    Answer(usize),
    Fail(usize),
    Finish(usize),
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => ((0usize..4), 1u64..400).prop_map(|(a, s)| Step::Register(a, s)),
        1 => (0usize..4).prop_map(Step::Unregister),
        2 => ((0usize..4), any::<bool>()).prop_map(|(a, p)| Step::Presence(a, p)),
        3 => Just(Step::Enqueue),
        1 => (0usize..16).prop_map(Step::Remove),
        3 => (0usize..8).prop_map(Step::Answer),
        1 => (0usize..8).prop_map(Step::Fail),
        2 => (0usize..8).prop_map(Step::Finish),
        2 => (1u64..120_000).prop_map(Step::Wait),
    ]
}

#[derive(Default, Clone)]
struct Model {
    away: bool,
    until: Option<Instant>,
}

struct World {
    q: AgentQueue,
    now: Instant,
    agents: BTreeMap<&'static str, Model>,
    /// (agent, call) -> answered
    legs: BTreeMap<(String, u64), bool>,
    calls: Vec<u64>,
    log: Vec<String>,
}

impl World {
    fn open_legs(&self, answered: Option<bool>) -> Vec<(String, u64)> {
        self.legs
            .iter()
            .filter(|(_, a)| answered.is_none_or(|want| **a == want))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn step(&mut self, s: &Step) {
        self.log.push(format!("{s:?}"));
        let now = self.now;
        match s {
            Step::Register(i, secs) => {
                let until = now + Duration::from_secs(*secs);
                self.agents.entry(AGENTS[*i]).or_default().until = Some(until);
                self.q.agent_input(
                    AgentInput::Registered {
                        agent: AGENTS[*i].into(),
                        target: format!("sip:{}@phone", AGENTS[*i]),
                        until,
                    },
                    now,
                );
            }
            Step::Unregister(i) => {
                self.agents.entry(AGENTS[*i]).or_default().until = None;
                self.q.agent_input(
                    AgentInput::Unregistered {
                        agent: AGENTS[*i].into(),
                    },
                    now,
                );
            }
            Step::Presence(i, away) => {
                self.agents.entry(AGENTS[*i]).or_default().away = *away;
                let presence = if *away {
                    Presence::Away
                } else {
                    Presence::Available
                };
                self.q.agent_input(
                    AgentInput::SetPresence {
                        agent: AGENTS[*i].into(),
                        presence,
                    },
                    now,
                );
            }
            Step::Enqueue => {
                let call = self.calls.len() as u64 + 1;
                self.calls.push(call);
                self.q.handle(QueueInput::Enqueue { call }, now);
            }
            Step::Remove(i) => {
                if let Some(&call) = self.calls.get(i % self.calls.len().max(1)) {
                    self.q.handle(QueueInput::Remove { call }, now);
                }
            }
            Step::Answer(i) => {
                let ringing = self.open_legs(Some(false));
                if let Some((agent, call)) = ringing.get(i % ringing.len().max(1)).cloned() {
                    self.legs.insert((agent.clone(), call), true);
                    self.q
                        .handle(QueueInput::AgentAnswered { agent, call }, now);
                }
            }
            Step::Fail(i) => {
                let open = self.open_legs(None);
                if let Some((agent, call)) = open.get(i % open.len().max(1)).cloned() {
                    self.legs.remove(&(agent.clone(), call));
                    self.q.handle(
                        QueueInput::AgentFailed {
                            agent,
                            call,
                            why: AgentFailure::Declined,
                        },
                        now,
                    );
                }
            }
            Step::Finish(i) => {
                let answered = self.open_legs(Some(true));
                if let Some((agent, call)) = answered.get(i % answered.len().max(1)).cloned() {
                    self.legs.remove(&(agent.clone(), call));
                    self.q
                        .handle(QueueInput::AgentFinished { agent, call }, now);
                }
            }
            Step::Wait(ms) => {
                self.now += Duration::from_millis(*ms);
                // A phone rings 30 s at most before the driver reports no answer.
                for (agent, call) in self.open_legs(Some(false)) {
                    self.legs.remove(&(agent.clone(), call));
                    self.q.handle(
                        QueueInput::AgentFailed {
                            agent,
                            call,
                            why: AgentFailure::NoAnswer,
                        },
                        self.now,
                    );
                }
            }
        }
    }

    fn drain(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..100 {
            let Some(a) = self.q.next_assignment(self.now) else {
                return Ok(());
            };
            self.log.push(format!("-> {a:?}"));
            if let Assignment::Ring { call, agent } = a {
                let m = self.agents.get(agent.as_str()).cloned().unwrap_or_default();
                prop_assert!(
                    !m.away,
                    "{agent} is away, yet offered call {call}\n{}",
                    self.log.join("\n")
                );
                prop_assert!(
                    m.until.is_some_and(|u| u > self.now),
                    "{agent} has no current registration, yet offered call {call}\n{}",
                    self.log.join("\n")
                );
                prop_assert!(
                    !self.legs.keys().any(|(a, _)| *a == agent),
                    "{agent} is busy, yet offered call {call}\n{}",
                    self.log.join("\n")
                );
                prop_assert_eq!(self.q.target(&agent), Some(format!("sip:{agent}@phone")));
                self.legs.insert((agent, call), false);
            }
        }
        Err(TestCaseError::fail("the queue never stops assigning"))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn away_busy_or_unregistered_agents_are_never_offered_calls(
        steps in prop::collection::vec(step(), 0..80)
    ) {
        let now = Instant::now();
        let mut w = World {
            q: AgentQueue::new(Vec::<String>::new(), now),
            now,
            agents: BTreeMap::new(),
            legs: BTreeMap::new(),
            calls: vec![],
            log: vec![],
        };
        for s in &steps {
            w.step(s);
            w.drain()?;
        }
    }

    /// Agents take a call each and finish in a random order; some go away, some unregister.
    /// New callers are then offered to the available, registered agents in the order they
    /// became free: longest idle first.
    #[test]
    fn the_longest_idle_available_agent_is_offered_first(
        order in Just((0..4usize).collect::<Vec<_>>()).prop_shuffle(),
        away in prop::collection::vec(any::<bool>(), 4),
        gone in prop::collection::vec(any::<bool>(), 4),
    ) {
        let t = Instant::now();
        let at = |s: u64| t + Duration::from_secs(s);
        let mut q = AgentQueue::new(Vec::<String>::new(), t);
        for a in AGENTS {
            q.agent_input(
                AgentInput::Registered { agent: a.into(), target: format!("sip:{a}@phone"), until: at(3600) },
                t,
            );
        }
        for call in 1..=4u64 {
            q.enqueue(call, t);
        }
        let mut legs = BTreeMap::new();
        while let Some(Assignment::Ring { call, agent }) = q.next_assignment(t) {
            q.agent_answered(&agent, call, t);
            legs.insert(agent, call);
        }
        prop_assert_eq!(legs.len(), 4);
        for (k, &i) in order.iter().enumerate() {
            let agent = AGENTS[i];
            q.agent_finished(agent, legs[agent], at(10 + k as u64));
        }
        for (i, a) in AGENTS.iter().enumerate() {
            if away[i] {
                q.agent_input(AgentInput::SetPresence { agent: (*a).into(), presence: Presence::Away }, at(20));
            }
            if gone[i] {
                q.agent_input(AgentInput::Unregistered { agent: (*a).into() }, at(20));
            }
        }
        let expected: Vec<&str> = order
            .iter()
            .filter(|&&i| !away[i] && !gone[i])
            .map(|&i| AGENTS[i])
            .collect();
        let mut offered = Vec::new();
        for call in 10..14u64 {
            q.enqueue(call, at(30));
            match q.next_assignment(at(30)) {
                Some(Assignment::Ring { agent, call: c }) => {
                    prop_assert_eq!(c, call);
                    q.agent_answered(&agent, call, at(30));
                    offered.push(agent);
                }
                Some(Assignment::NoneAvailable { .. }) | None => break,
            }
        }
        prop_assert_eq!(offered, expected);
    }
}
