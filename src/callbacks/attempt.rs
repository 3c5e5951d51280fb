//! One attempt at keeping a callback promise, as a pure state machine: events in, actions
//! out, time passed in (the driver in `server/dialer.rs` only carries actions out).
//!
//! Agent first: the attempt waits in the agent queue like a caller; when the queue offers
//! an agent, the attempt checks the promise is still open (the caller may have reached a
//! person meanwhile), rings the agent, and only once they answer dials the customer and
//! bridges the two. Every path ends in exactly one [`AttemptAction::Finish`] with the
//! outcome to record; every agent rung is reported back to the queue (answered, failed or
//! given back) and an answered one released; the machine has no action that hangs up the
//! customer: if the agent leaves first, the customer goes back to the IVR.

use super::AttemptOutcome;
use crate::agents::AgentFailure;
use std::time::{Duration, Instant};

/// An attempt that waited this long for an agent gives way and is retried later.
pub const AGENT_WAIT_LIMIT: Duration = Duration::from_secs(600);

/// What the driver reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptEvent {
    /// The queue offers this agent.
    AgentOffered {
        agent: String,
    },
    /// The promise is still open (answer to [`AttemptAction::CheckPromise`]).
    PromiseOpen,
    /// The promise was kept meanwhile: nobody is to be called.
    PromiseKept,
    AgentAnswered,
    /// The agent's leg ended unanswered (busy, declined, no answer, unreachable).
    AgentFailed {
        why: AgentFailure,
    },
    CustomerAnswered,
    /// The customer's leg ended unanswered: busy, declined, no answer or failed.
    CustomerFailed {
        outcome: AttemptOutcome,
    },
    /// Bridged, and the agent hung up.
    AgentLeft,
    /// Bridged (or dialing), and the customer hung up.
    CustomerLeft,
    /// The time is `next_timeout()` or later.
    TimerFired,
}

/// What the driver does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptAction {
    /// Wait in the agent queue for an agent.
    Enqueue,
    /// Leave the agent queue.
    LeaveQueue,
    /// Read the promise; answer `PromiseOpen` or `PromiseKept`.
    CheckPromise,
    /// Tell the queue the offered agent was never rung.
    GiveBackAgent {
        agent: String,
    },
    RingAgent {
        agent: String,
    },
    /// Tell the queue the agent answered (they are busy with this attempt).
    ReportAgentAnswered {
        agent: String,
    },
    /// Tell the queue the agent did not take it.
    ReportAgentFailed {
        agent: String,
        why: AgentFailure,
    },
    /// Hang up the agent's leg (the customer could not be reached, or left).
    HangUpAgent,
    /// Tell the queue the agent is free again.
    ReleaseAgent {
        agent: String,
    },
    DialCustomer {
        number: String,
    },
    /// The customer answered: record it before the conversation (a crash now is retried).
    RecordConnected,
    Bridge,
    Unbridge,
    /// The agent left first: the customer stays on the line, back with the IVR.
    HandCustomerToIvr,
    /// The attempt is over: record this outcome. Always the last action, exactly once.
    Finish {
        outcome: AttemptOutcome,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    NotStarted,
    /// In the agent queue.
    Waiting,
    /// An agent was offered; checking the promise is still open.
    Checking {
        agent: String,
    },
    RingingAgent {
        agent: String,
    },
    DialingCustomer {
        agent: String,
    },
    Bridged {
        agent: String,
    },
    Done,
}

/// One attempt. `number` is the promise's number as the dialing policy sees it: `Err` when
/// it may not be dialed (the attempt ends as `bad_number` without calling anyone).
#[derive(Debug, Clone)]
pub struct CallbackAttempt {
    state: State,
    number: Result<String, String>,
    wait_until: Option<Instant>,
}

impl CallbackAttempt {
    pub fn new(number: Result<String, String>) -> Self {
        Self {
            state: State::NotStarted,
            number,
            wait_until: None,
        }
    }

    /// Whether the attempt is over (its `Finish` was given).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// When the driver should send `TimerFired`.
    pub fn next_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Waiting => self.wait_until,
            _ => None,
        }
    }

    /// Starts the attempt.
    pub fn start(&mut self, now: Instant) -> Vec<AttemptAction> {
        if self.state != State::NotStarted {
            return vec![];
        }
        if self.number.is_err() {
            return self.finish(vec![], AttemptOutcome::BadNumber);
        }
        self.state = State::Waiting;
        self.wait_until = Some(now + AGENT_WAIT_LIMIT);
        vec![AttemptAction::Enqueue]
    }

    fn finish(
        &mut self,
        mut out: Vec<AttemptAction>,
        outcome: AttemptOutcome,
    ) -> Vec<AttemptAction> {
        self.state = State::Done;
        out.push(AttemptAction::Finish { outcome });
        out
    }

    pub fn handle(&mut self, now: Instant, event: AttemptEvent) -> Vec<AttemptAction> {
        use AttemptAction as A;
        use AttemptEvent as E;
        let state = std::mem::replace(&mut self.state, State::Done);
        let (state, out) = match (state, event) {
            (State::Done, _) => (State::Done, vec![]),
            // An offer that finds the attempt not waiting (a duplicate, a late one) is given
            // back at once: the agent must not be held.
            (s @ State::NotStarted, E::AgentOffered { agent })
            | (s @ State::Checking { .. }, E::AgentOffered { agent })
            | (s @ State::RingingAgent { .. }, E::AgentOffered { agent })
            | (s @ State::DialingCustomer { .. }, E::AgentOffered { agent })
            | (s @ State::Bridged { .. }, E::AgentOffered { agent }) => {
                (s, vec![A::GiveBackAgent { agent }])
            }
            (State::Waiting, E::AgentOffered { agent }) => {
                (State::Checking { agent }, vec![A::CheckPromise])
            }
            (State::Waiting, E::TimerFired) if self.wait_until.is_some_and(|t| t <= now) => {
                return self.finish(vec![A::LeaveQueue], AttemptOutcome::AgentUnavailable);
            }
            (State::Checking { agent }, E::PromiseKept) => {
                return self.finish(
                    vec![A::GiveBackAgent { agent }, A::LeaveQueue],
                    AttemptOutcome::KeptElsewhere,
                );
            }
            (State::Checking { agent }, E::PromiseOpen) => (
                State::RingingAgent {
                    agent: agent.clone(),
                },
                vec![A::RingAgent { agent }],
            ),
            (State::RingingAgent { agent }, E::AgentLeft) => (
                State::Waiting,
                vec![A::ReportAgentFailed {
                    agent,
                    why: AgentFailure::Unreachable,
                }],
            ),
            (State::RingingAgent { agent }, E::AgentFailed { why }) => (
                // Back to waiting for the next agent, place kept.
                State::Waiting,
                vec![A::ReportAgentFailed { agent, why }],
            ),
            (State::RingingAgent { agent }, E::AgentAnswered) => {
                let Ok(number) = self.number.clone() else {
                    // Cannot happen (checked at start); never dial what may not be dialed.
                    return self.finish(
                        vec![
                            A::ReportAgentAnswered {
                                agent: agent.clone(),
                            },
                            A::HangUpAgent,
                            A::ReleaseAgent { agent },
                        ],
                        AttemptOutcome::BadNumber,
                    );
                };
                (
                    State::DialingCustomer {
                        agent: agent.clone(),
                    },
                    vec![A::ReportAgentAnswered { agent }, A::DialCustomer { number }],
                )
            }
            (State::DialingCustomer { agent }, E::CustomerFailed { outcome }) => {
                let outcome = match outcome {
                    AttemptOutcome::Busy
                    | AttemptOutcome::Declined
                    | AttemptOutcome::NoAnswer
                    | AttemptOutcome::Failed => outcome,
                    _ => AttemptOutcome::Failed,
                };
                return self.finish(vec![A::HangUpAgent, A::ReleaseAgent { agent }], outcome);
            }
            (State::DialingCustomer { agent }, E::AgentLeft) => {
                // The agent gave up while the customer's phone rang: try again later.
                return self.finish(vec![A::ReleaseAgent { agent }], AttemptOutcome::Failed);
            }
            (State::DialingCustomer { agent }, E::CustomerAnswered) => (
                State::Bridged { agent },
                vec![A::RecordConnected, A::Bridge],
            ),
            (State::Bridged { agent }, E::AgentLeft) => {
                return self.finish(
                    vec![A::Unbridge, A::ReleaseAgent { agent }, A::HandCustomerToIvr],
                    AttemptOutcome::Completed,
                );
            }
            (State::Bridged { agent }, E::CustomerLeft) => {
                return self.finish(
                    vec![A::Unbridge, A::HangUpAgent, A::ReleaseAgent { agent }],
                    AttemptOutcome::Completed,
                );
            }
            // Anything else is stale or out of place: ignored.
            (s, _) => (s, vec![]),
        };
        self.state = state;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_happy_path_rings_the_agent_first_then_the_customer() {
        let t = Instant::now();
        let mut a = CallbackAttempt::new(Ok("+15550124".into()));
        assert_eq!(a.start(t), vec![AttemptAction::Enqueue]);
        let agent = "sip:a@h".to_string();
        assert_eq!(
            a.handle(
                t,
                AttemptEvent::AgentOffered {
                    agent: agent.clone()
                }
            ),
            vec![AttemptAction::CheckPromise]
        );
        assert_eq!(
            a.handle(t, AttemptEvent::PromiseOpen),
            vec![AttemptAction::RingAgent {
                agent: agent.clone()
            }]
        );
        assert_eq!(
            a.handle(t, AttemptEvent::AgentAnswered),
            vec![
                AttemptAction::ReportAgentAnswered {
                    agent: agent.clone()
                },
                AttemptAction::DialCustomer {
                    number: "+15550124".into()
                }
            ]
        );
        assert_eq!(
            a.handle(t, AttemptEvent::CustomerAnswered),
            vec![AttemptAction::RecordConnected, AttemptAction::Bridge]
        );
        assert_eq!(
            a.handle(t, AttemptEvent::AgentLeft),
            vec![
                AttemptAction::Unbridge,
                AttemptAction::ReleaseAgent { agent },
                AttemptAction::HandCustomerToIvr,
                AttemptAction::Finish {
                    outcome: AttemptOutcome::Completed
                }
            ]
        );
        assert!(a.is_done());
    }

    #[test]
    fn an_undialable_number_ends_at_once_and_a_long_wait_gives_way() {
        let t = Instant::now();
        let mut a = CallbackAttempt::new(Err("anonymous".into()));
        assert_eq!(
            a.start(t),
            vec![AttemptAction::Finish {
                outcome: AttemptOutcome::BadNumber
            }]
        );
        let mut a = CallbackAttempt::new(Ok("+15550124".into()));
        a.start(t);
        assert!(
            a.handle(t, AttemptEvent::TimerFired).is_empty(),
            "too early"
        );
        let at = a.next_timeout().unwrap();
        assert_eq!(
            a.handle(at, AttemptEvent::TimerFired),
            vec![
                AttemptAction::LeaveQueue,
                AttemptAction::Finish {
                    outcome: AttemptOutcome::AgentUnavailable
                }
            ]
        );
    }
}
