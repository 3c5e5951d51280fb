//! The call brain's side of callback promises: a caller who reaches a person keeps (never
//! gets) their callback, a confirmation is heard only in the phase that asked for it, a
//! refused number is asked for again, and keying cannot grow the brain's buffers.

use humanline::brain::{Action, CallBrain, Event, Phase, PlayId};
use humanline::config::Flow;
use proptest::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONFIRMATIONS: [&str; 4] = [
    "callback_confirmed",
    "callback_confirmed_at",
    "callback_confirmed_tomorrow",
    "callback_failed",
];

fn brain(caller_id: Option<&str>) -> (CallBrain, Instant) {
    let flow = Arc::new(Flow::embedded().expect("shipped prompts are valid"));
    let mut b = CallBrain::new(flow);
    let t = Instant::now();
    b.handle(
        t,
        Event::CallStarted {
            caller_id: caller_id.map(String::from),
            language: None,
        },
    );
    (b, t)
}

fn plays(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Play { prompt, .. } => Some(prompt.as_str()),
            _ => None,
        })
        .collect()
}

fn keeps(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::KeepCallback { id } => Some(id.as_str()),
            _ => None,
        })
        .collect()
}

/// Queued, offered a callback, and accepted it with key 1: the store is in flight.
fn accepted(caller_id: Option<&str>) -> (CallBrain, Instant, Vec<Action>) {
    let (mut b, t) = brain(caller_id);
    b.handle(t, Event::Dtmf { digit: '0' });
    b.handle(t, Event::NoAgentAvailable);
    let a = b.handle(t, Event::Dtmf { digit: '1' });
    (b, t, a)
}

#[test]
fn a_caller_served_by_an_agent_keeps_the_stored_callback() {
    let (mut b, t, a) = accepted(Some("+15550124"));
    assert!(
        a.iter().any(|a| matches!(a, Action::StoreCallback(_))),
        "{a:?}"
    );
    let stored = b.handle(
        t,
        Event::CallbackStored {
            id: "7".into(),
            at: None,
        },
    );
    assert_eq!(plays(&stored), ["callback_confirmed"]);
    let answered = b.handle(
        t,
        Event::AgentAnswered {
            agent: "sip:a@h".into(),
        },
    );
    assert_eq!(keeps(&answered), ["7"], "{answered:?}");
    // After the agent leaves and a second wait, the old promise is not kept twice.
    b.handle(t, Event::AgentLeft);
    let again = b.handle(t, Event::Dtmf { digit: '0' });
    assert!(keeps(&again).is_empty());
}

#[test]
fn a_late_confirmation_is_not_played_into_the_agent_conversation() {
    let (mut b, t, _) = accepted(Some("+15550124"));
    b.handle(
        t,
        Event::AgentAnswered {
            agent: "sip:a@h".into(),
        },
    );
    assert_eq!(b.phase(), Phase::WithAgent);
    let late = b.handle(
        t,
        Event::CallbackStored {
            id: "8".into(),
            at: None,
        },
    );
    assert!(
        plays(&late).is_empty(),
        "played into the conversation: {late:?}"
    );
    assert_eq!(
        keeps(&late),
        ["8"],
        "the promise must be kept, not dialed: {late:?}"
    );

    // A failed store is not announced to the agent conversation either.
    let (mut b, t, _) = accepted(Some("+15550124"));
    b.handle(
        t,
        Event::AgentAnswered {
            agent: "sip:a@h".into(),
        },
    );
    let failed = b.handle(
        t,
        Event::CallbackStoreFailed {
            error: "disk".into(),
        },
    );
    assert!(plays(&failed).is_empty(), "{failed:?}");
}

#[test]
fn a_refused_number_is_asked_for_again_and_a_keyed_one_is_stored() {
    let (mut b, t, _) = accepted(Some("+19005550100"));
    let refused = b.handle(
        t,
        Event::CallbackNumberRefused {
            why: "not a number this centre calls".into(),
        },
    );
    assert_eq!(plays(&refused), ["callback_ask_number"], "{refused:?}");
    for d in "+31612345678".chars().filter(char::is_ascii_digit) {
        b.handle(t, Event::Dtmf { digit: d });
    }
    let stored = b.handle(t, Event::Dtmf { digit: '#' });
    let Some(Action::StoreCallback(req)) = stored
        .iter()
        .find(|a| matches!(a, Action::StoreCallback(_)))
    else {
        panic!("the keyed number was not stored: {stored:?}")
    };
    assert_eq!(req.number.as_deref(), Some("31612345678"));
}

#[test]
fn without_a_caller_id_the_caller_is_asked_for_a_number() {
    let (_, _, a) = accepted(None);
    assert_eq!(plays(&a), ["callback_ask_number"], "{a:?}");
}

#[test]
fn keying_on_does_not_grow_the_brain() {
    let (mut b, t) = brain(None);
    b.handle(t, Event::Dtmf { digit: '0' });
    b.handle(t, Event::NoAgentAvailable);
    b.handle(t, Event::Dtmf { digit: '1' }); // asked for a number
    for _ in 0..100_000 {
        b.handle(t, Event::Dtmf { digit: '5' });
    }
    assert!(b.context().dtmf.len() <= 64, "{}", b.context().dtmf.len());
    let a = b.handle(t, Event::Dtmf { digit: '#' });
    let Some(Action::StoreCallback(req)) = a.iter().find(|a| matches!(a, Action::StoreCallback(_)))
    else {
        panic!("{a:?}")
    };
    assert!(
        req.number.as_ref().is_some_and(|n| n.len() <= 20),
        "{req:?}"
    );
}

#[derive(Debug, Clone)]
enum Step {
    Key(char),
    NoAgent,
    Stored,
    StoreFailed,
    Refused,
    Answered,
    Left,
    FinishPrompt,
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => prop::sample::select(vec!['0', '1', '2', '3', '4', '#']).prop_map(Step::Key),
        2 => Just(Step::NoAgent),
        2 => Just(Step::Stored),
        1 => Just(Step::StoreFailed),
        1 => Just(Step::Refused),
        2 => Just(Step::Answered),
        1 => Just(Step::Left),
        2 => Just(Step::FinishPrompt),
        1 => (1u64..200_000).prop_map(Step::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Whatever the order of stores, agents and keys: a confirmation (or its failure) is
    /// heard only by a caller still waiting in line, and every promise stored while or
    /// before the caller reached a person on that wait is kept exactly once.
    #[test]
    fn confirmations_only_in_line_and_served_callers_keep_their_promise(
        steps in prop::collection::vec(step(), 0..60)
    ) {
        let (mut b, mut t) = brain(Some("+15550124"));
        let mut next_id = 0;
        let mut current: Option<PlayId> = None;
        let mut kept: Vec<String> = vec![];
        let mut log = vec![];
        for s in &steps {
            let phase = b.phase();
            let event = match s {
                Step::Key(d) => Event::Dtmf { digit: *d },
                Step::NoAgent => Event::NoAgentAvailable,
                Step::Stored => {
                    next_id += 1;
                    Event::CallbackStored { id: next_id.to_string(), at: None }
                }
                Step::StoreFailed => Event::CallbackStoreFailed { error: "x".into() },
                Step::Refused => Event::CallbackNumberRefused { why: "x".into() },
                Step::Answered => Event::AgentAnswered { agent: "sip:a@h".into() },
                Step::Left => Event::AgentLeft,
                Step::FinishPrompt => match current.take() {
                    Some(play) => Event::PromptFinished { play },
                    None => continue,
                },
                Step::Wait(ms) => {
                    t += Duration::from_millis(*ms);
                    match b.next_timeout() {
                        Some((timer, at)) if at <= t => Event::TimerFired { timer },
                        _ => continue,
                    }
                }
            };
            log.push(format!("{phase:?} {event:?}"));
            let actions = b.handle(t, event);
            log.push(format!("  -> {actions:?}"));
            for a in &actions {
                if let Action::Play { play, prompt, .. } = a {
                    current = Some(*play);
                    prop_assert!(
                        !CONFIRMATIONS.contains(&prompt.as_str()) || phase == humanline::brain::Phase::Queued,
                        "{prompt} played in {phase:?}\n{}", log.join("\n")
                    );
                }
                if let Action::KeepCallback { id } = a {
                    prop_assert!(!kept.contains(id), "{id} kept twice\n{}", log.join("\n"));
                    kept.push(id.clone());
                }
            }
            if matches!(s, Step::Answered) && phase == Phase::Queued {
                prop_assert_eq!(b.phase(), Phase::WithAgent);
            }
        }
    }
}

#[test]
fn a_promise_stored_before_the_agent_answers_is_kept_when_they_do() {
    // The property above only says "at most once"; this is the "at least once".
    let (mut b, t, _) = accepted(Some("+15550124"));
    b.handle(
        t,
        Event::CallbackStored {
            id: "3".into(),
            at: None,
        },
    );
    b.handle(
        t,
        Event::QueueStatus {
            position: 1,
            estimated_wait: Duration::ZERO,
        },
    );
    let a = b.handle(
        t,
        Event::AgentAnswered {
            agent: "sip:a@h".into(),
        },
    );
    assert_eq!(keeps(&a), ["3"]);
}
