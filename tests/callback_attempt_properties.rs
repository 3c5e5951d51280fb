//! Properties of one callback attempt over random sequences of what its driver reports
//! (agents offered, promise checks, answers, failures, hang-ups, timers, and stale or
//! duplicate reports): every attempt ends in exactly one recorded outcome, the customer is
//! never hung up on by the machine, and every agent offered is given back, failed or
//! released.

use humanline::agents::AgentFailure;
use humanline::callbacks::{AttemptAction, AttemptEvent, AttemptOutcome, CallbackAttempt};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
enum Step {
    Offer(u8),
    Open,
    Kept,
    AgentAnswered,
    AgentFailed,
    CustomerAnswered,
    CustomerFailed(u8),
    AgentLeft,
    CustomerLeft,
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..3).prop_map(Step::Offer),
        3 => Just(Step::Open),
        1 => Just(Step::Kept),
        3 => Just(Step::AgentAnswered),
        2 => Just(Step::AgentFailed),
        3 => Just(Step::CustomerAnswered),
        2 => (0u8..5).prop_map(Step::CustomerFailed),
        2 => Just(Step::AgentLeft),
        2 => Just(Step::CustomerLeft),
        2 => (1u64..400_000).prop_map(Step::Wait),
    ]
}

const OUTCOMES: [AttemptOutcome; 5] = [
    AttemptOutcome::Busy,
    AttemptOutcome::Declined,
    AttemptOutcome::NoAnswer,
    AttemptOutcome::Failed,
    AttemptOutcome::Connected,
];

/// What the agent queue and the phones see of the attempt's actions.
#[derive(Default)]
struct Observer {
    /// Agents offered and not yet given back, failed or released: agent -> answered?
    held: BTreeMap<String, bool>,
    customer_up: bool,
    customer_left: bool,
    handed_to_ivr: bool,
    finished: Option<AttemptOutcome>,
    log: Vec<String>,
}

impl Observer {
    fn offered(&mut self, agent: &str) {
        // The queue offers an agent at most once at a time to the attempt.
        self.held.entry(agent.to_string()).or_insert(false);
    }

    fn see(&mut self, actions: &[AttemptAction]) -> Result<(), TestCaseError> {
        self.log.push(format!("  -> {actions:?}"));
        for (i, a) in actions.iter().enumerate() {
            prop_assert!(
                self.finished.is_none(),
                "an action after Finish\n{}",
                self.log.join("\n")
            );
            match a {
                AttemptAction::GiveBackAgent { agent }
                | AttemptAction::ReportAgentFailed { agent, .. } => {
                    prop_assert_eq!(
                        self.held.get(agent),
                        Some(&false),
                        "{}",
                        self.log.join("\n")
                    );
                    self.held.remove(agent);
                }
                AttemptAction::ReportAgentAnswered { agent } => {
                    prop_assert_eq!(
                        self.held.get(agent),
                        Some(&false),
                        "{}",
                        self.log.join("\n")
                    );
                    self.held.insert(agent.clone(), true);
                }
                AttemptAction::ReleaseAgent { agent } => {
                    prop_assert_eq!(self.held.get(agent), Some(&true), "{}", self.log.join("\n"));
                    self.held.remove(agent);
                }
                AttemptAction::DialCustomer { number } => {
                    prop_assert_eq!(number.as_str(), "+15550124");
                    prop_assert!(
                        self.held.values().any(|answered| *answered),
                        "the customer dialed before an agent answered\n{}",
                        self.log.join("\n")
                    );
                }
                AttemptAction::HandCustomerToIvr => self.handed_to_ivr = true,
                AttemptAction::Finish { outcome } => {
                    prop_assert_eq!(i, actions.len() - 1, "Finish is not last");
                    self.finished = Some(*outcome);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_end(&self) -> Result<(), TestCaseError> {
        let log = self.log.join("\n");
        prop_assert!(self.finished.is_some(), "the attempt never ended\n{log}");
        prop_assert!(
            self.held.is_empty(),
            "agents never released: {:?}\n{log}",
            self.held
        );
        if self.customer_up && !self.customer_left {
            // Nothing hangs up on a customer who is still there: they go back to the IVR.
            prop_assert!(
                self.handed_to_ivr,
                "the customer was left, not handed to the IVR\n{log}"
            );
        }
        if self.finished == Some(AttemptOutcome::Completed) {
            prop_assert!(
                self.customer_up,
                "completed without the customer answering\n{log}"
            );
        }
        Ok(())
    }
}

fn drive(
    a: &mut CallbackAttempt,
    o: &mut Observer,
    now: Instant,
    ev: AttemptEvent,
) -> Result<(), TestCaseError> {
    if let AttemptEvent::AgentOffered { agent } = &ev {
        if o.held.contains_key(agent) {
            // The queue never offers an agent it has already offered to this attempt.
            return Ok(());
        }
        if o.finished.is_none() {
            o.offered(agent);
        }
    }
    o.log.push(format!("{ev:?}"));
    let actions = a.handle(now, ev.clone());
    if ev == AttemptEvent::CustomerAnswered && actions.contains(&AttemptAction::Bridge) {
        o.customer_up = true;
    }
    if ev == AttemptEvent::CustomerLeft && o.customer_up && !actions.is_empty() {
        o.customer_left = true;
    }
    o.see(&actions)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn every_attempt_ends_recorded_agents_released_customer_never_hung_up(
        steps in prop::collection::vec(step(), 0..40),
        bad_number in prop::bool::weighted(0.1),
    ) {
        let number = if bad_number { Err("anonymous".to_string()) } else { Ok("+15550124".to_string()) };
        let mut a = CallbackAttempt::new(number);
        let mut o = Observer::default();
        let mut now = Instant::now();
        let started = a.start(now);
        o.see(&started)?;
        for s in &steps {
            let ev = match s {
                Step::Offer(n) => AttemptEvent::AgentOffered { agent: format!("sip:{n}@h") },
                Step::Open => AttemptEvent::PromiseOpen,
                Step::Kept => AttemptEvent::PromiseKept,
                Step::AgentAnswered => AttemptEvent::AgentAnswered,
                Step::AgentFailed => AttemptEvent::AgentFailed { why: AgentFailure::Busy },
                Step::CustomerAnswered => AttemptEvent::CustomerAnswered,
                Step::CustomerFailed(i) => AttemptEvent::CustomerFailed { outcome: OUTCOMES[*i as usize] },
                Step::AgentLeft => AttemptEvent::AgentLeft,
                Step::CustomerLeft => AttemptEvent::CustomerLeft,
                Step::Wait(ms) => {
                    now += Duration::from_millis(*ms);
                    AttemptEvent::TimerFired
                }
            };
            drive(&mut a, &mut o, now, ev)?;
        }
        // From wherever it is, an honest driver's next reports end it: the promise is open,
        // the agent's phone fails, the customer's fails or they hang up, time runs out.
        for _ in 0..20 {
            if o.finished.is_some() {
                break;
            }
            for ev in [
                AttemptEvent::PromiseOpen,
                AttemptEvent::AgentFailed { why: AgentFailure::NoAnswer },
                AttemptEvent::CustomerFailed { outcome: AttemptOutcome::NoAnswer },
                AttemptEvent::CustomerLeft,
            ] {
                drive(&mut a, &mut o, now, ev)?;
            }
            if let Some(at) = a.next_timeout() {
                now = now.max(at);
                drive(&mut a, &mut o, now, AttemptEvent::TimerFired)?;
            }
        }
        o.check_end()?;
        prop_assert!(a.is_done());
        if bad_number {
            prop_assert_eq!(o.finished, Some(AttemptOutcome::BadNumber));
        }
    }
}
