//! Properties of the call brain over random event sequences: only the caller ends a call
//! (hanging up, or losing both media and signalling), a caller whose media comes back is where
//! they were, a waiting caller never hears dead air, an escape always routes, every state has
//! a way forward, a callback is announced only once stored.

use humanline::brain::{
    Action, CallBrain, CallbackRequest, CallbackTime, CallbackWhen, Event, Phase, PlayId,
    RouteReason, TimerKind,
};
use humanline::config::Flow;
use proptest::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn flow() -> Arc<Flow> {
    Arc::new(Flow::embedded().expect("shipped prompts are valid"))
}

/// Everything a driver might report, except the caller hanging up. Media losses and probe
/// results are in: a call may end only when both the caller's media and signalling are gone.
#[derive(Debug, Clone)]
enum Step {
    Start,
    FinishCurrentPrompt,
    FinishStalePrompt,
    SpeechStarted,
    SpeechEnded,
    Partial(&'static str),
    Final(&'static str),
    Dtmf(char),
    FireDueTimer,
    FireTimerEarly(TimerKind),
    AgentOffered,
    AgentAnswered,
    AgentDeclined,
    AgentLeft,
    NoAgent,
    Queue(u32, u64),
    Stored,
    StoreFailed,
    Degraded,
    MediaLost,
    MediaResumed,
    /// The probe the brain asked for is answered (only when one is out).
    ProbeAnswered,
    /// The probe the brain asked for failed (only when one is out).
    ProbeFailed,
    Wait(u64),
}

const UTTERANCES: &[&str] = &[
    "my internet is down",
    "my internet is still down",
    "what are your opening hours",
    "I have a question about my bill",
    "yes please",
    "no thanks",
    "blah",
    "",
    "nederlands",
    "english",
    "I want to change my address",
    "call me back at three",
    "tomorrow morning please",
    "call me on 06 1234 5678",
];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => Just(Step::Start),
        4 => Just(Step::FinishCurrentPrompt),
        1 => Just(Step::FinishStalePrompt),
        2 => Just(Step::SpeechStarted),
        1 => Just(Step::SpeechEnded),
        2 => prop::sample::select(UTTERANCES).prop_map(Step::Partial),
        3 => prop::sample::select(UTTERANCES).prop_map(Step::Final),
        1 => prop::sample::select(vec!['1', '2', '3', '5', '9', '#', '*']).prop_map(Step::Dtmf),
        3 => Just(Step::FireDueTimer),
        1 => prop::sample::select(TimerKind::ALL.to_vec()).prop_map(Step::FireTimerEarly),
        1 => Just(Step::AgentOffered),
        1 => Just(Step::AgentAnswered),
        1 => Just(Step::AgentDeclined),
        1 => Just(Step::AgentLeft),
        1 => Just(Step::NoAgent),
        1 => (1u32..20, 0u64..600).prop_map(|(p, w)| Step::Queue(p, w)),
        1 => Just(Step::Stored),
        1 => Just(Step::StoreFailed),
        1 => Just(Step::Degraded),
        1 => Just(Step::MediaLost),
        1 => Just(Step::MediaResumed),
        1 => Just(Step::ProbeAnswered),
        1 => Just(Step::ProbeFailed),
        1 => (1u64..20_000).prop_map(Step::Wait),
    ]
}

/// The call's language confirms escapes in partials (`[escape] confirm_partials`).
fn confirms_partials(d: &Driver) -> bool {
    let language = &d.brain.context().language;
    d.brain
        .flow()
        .language(language)
        .is_some_and(|l| l.confirm_partials)
}

/// A driver after those of `steps` (following a start) that keep `keep` true: a step that
/// would break it is left out. Steps are replayed from the start, since a brain is not
/// `Clone`; this draws the states a property needs instead of rejecting most cases (a
/// `prop_assume!` after random steps once rejected too many and failed CI).
fn driver_after(steps: &[Step], keep: impl Fn(&Driver) -> bool) -> Driver {
    let replay = |kept: &[&Step]| {
        let mut d = Driver::new();
        d.step(&Step::Start);
        for s in kept {
            d.step(s);
        }
        d
    };
    let mut kept: Vec<&Step> = Vec::with_capacity(steps.len());
    for s in steps {
        kept.push(s);
        if !keep(&replay(&kept)) {
            kept.pop();
        }
    }
    replay(&kept)
}

/// What the caller hears now, as a driver carrying out the brain's actions would play it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sound {
    play: PlayId,
    /// Hold music: loops until replaced, never finishes.
    looped: bool,
    barge_in: bool,
}

/// A driver that plays along: it plays what the brain says (a play replaces what plays),
/// keeps the clock, and knows whether the caller's media and signalling are there.
struct Driver {
    brain: CallBrain,
    now: Instant,
    sound: Option<Sound>,
    stale_play: Option<PlayId>,
    /// No media from the caller since the last `MediaLost` (and no `MediaResumed`).
    media_lost: bool,
    /// The brain asked for a probe and has not heard its result.
    probe_out: bool,
    /// A callback is being committed (asked for, no result fed yet).
    storing: bool,
    /// (event, actions) for every step.
    log: Vec<(String, Vec<Action>)>,
}

impl Driver {
    fn new() -> Self {
        Self::with_flow(flow())
    }

    fn with_flow(flow: Arc<Flow>) -> Self {
        let t0 = Instant::now();
        Self {
            brain: CallBrain::new(flow),
            now: t0,
            sound: None,
            stale_play: None,
            media_lost: false,
            probe_out: false,
            storing: false,
            log: vec![],
        }
    }

    fn current_play(&self) -> Option<PlayId> {
        self.sound.filter(|s| !s.looped).map(|s| s.play)
    }

    fn feed(&mut self, event: Event) -> Vec<Action> {
        let label = format!("{event:?}");
        match &event {
            Event::MediaLost => self.media_lost = true,
            Event::MediaResumed => self.media_lost = false,
            Event::ProbeAnswered | Event::ProbeFailed => self.probe_out = false,
            Event::CallbackStored { .. }
            | Event::CallbackStoreFailed { .. }
            | Event::CallbackNumberRefused { .. } => self.storing = false,
            _ => {}
        }
        let actions = self.brain.handle(self.now, event);
        for a in &actions {
            let before = self.sound.map(|s| s.play);
            match a {
                Action::Play { play, barge_in, .. } => {
                    self.sound = Some(Sound {
                        play: *play,
                        looped: false,
                        barge_in: *barge_in,
                    });
                }
                Action::PlayHold { play } => {
                    self.sound = Some(Sound {
                        play: *play,
                        looped: true,
                        barge_in: false,
                    });
                }
                Action::StopPlayback => self.sound = None,
                Action::ProbeCaller => self.probe_out = true,
                Action::StoreCallback(_) => {
                    self.storing = true;
                    continue;
                }
                _ => continue,
            }
            if before.is_some() && before != self.sound.map(|s| s.play) {
                self.stale_play = before;
            }
        }
        if self.brain.phase() == Phase::Ended {
            // The caller is gone: the driver releases their media.
            self.sound = None;
        }
        self.log.push((label, actions.clone()));
        actions
    }

    /// The timer `s` fires, if it fires one that is due (not a stale or early fire).
    fn due_timer_fired_by(&self, s: &Step) -> Option<TimerKind> {
        match s {
            Step::FireDueTimer => self.brain.next_timeout().map(|(k, _)| k),
            Step::FireTimerEarly(k) => self
                .brain
                .deadline(*k)
                .filter(|at| *at <= self.now)
                .map(|_| *k),
            _ => None,
        }
    }

    /// Whether the caller is gone by the driver's account: no media, and the probe the
    /// brain asked for failed, or is still out when its deadline fires.
    fn caller_gone_after(&self, s: &Step, was_probe_out: bool, fired: Option<TimerKind>) -> bool {
        self.media_lost
            && was_probe_out
            && (matches!(s, Step::ProbeFailed) || fired == Some(TimerKind::MediaProbe))
    }

    fn step(&mut self, s: &Step) {
        let event = match s {
            Step::Start => Event::CallStarted {
                caller_id: Some("+3120555".into()),
                language: None,
            },
            Step::FinishCurrentPrompt => match self.current_play() {
                Some(play) => {
                    self.sound = None;
                    Event::PromptFinished { play }
                }
                None => return,
            },
            Step::FinishStalePrompt => match self.stale_play {
                Some(play) => Event::PromptFinished { play },
                None => return,
            },
            Step::SpeechStarted => Event::SpeechStarted,
            Step::SpeechEnded => Event::SpeechEnded,
            Step::Partial(t) => Event::PartialTranscript {
                text: t.to_string(),
            },
            Step::Final(t) => Event::FinalTranscript {
                text: t.to_string(),
            },
            Step::Dtmf(d) => Event::Dtmf { digit: *d },
            Step::FireDueTimer => match self.brain.next_timeout() {
                Some((timer, at)) => {
                    self.now = self.now.max(at);
                    Event::TimerFired { timer }
                }
                None => return,
            },
            Step::FireTimerEarly(timer) => Event::TimerFired { timer: *timer },
            Step::AgentOffered => Event::AgentOffered {
                agent: "sip:alice@127.0.0.1".into(),
            },
            Step::AgentAnswered => Event::AgentAnswered {
                agent: "sip:alice@127.0.0.1".into(),
            },
            Step::AgentDeclined => Event::AgentDeclined {
                agent: "sip:alice@127.0.0.1".into(),
            },
            Step::AgentLeft => Event::AgentLeft,
            Step::NoAgent => Event::NoAgentAvailable,
            Step::Queue(p, w) => Event::QueueStatus {
                position: *p,
                estimated_wait: Duration::from_secs(*w),
            },
            Step::Stored => Event::CallbackStored {
                id: "cb-1".into(),
                at: None,
            },
            Step::StoreFailed => Event::CallbackStoreFailed {
                error: "disk full".into(),
            },
            Step::Degraded => Event::SpeechEngineDegraded,
            Step::MediaLost => Event::MediaLost,
            Step::MediaResumed => Event::MediaResumed,
            Step::ProbeAnswered if self.probe_out => Event::ProbeAnswered,
            Step::ProbeFailed if self.probe_out => Event::ProbeFailed,
            Step::ProbeAnswered | Step::ProbeFailed => return,
            Step::Wait(ms) => {
                self.now += Duration::from_millis(*ms);
                return;
            }
        };
        self.feed(event);
    }
}

fn routes(actions: &[Action]) -> Option<RouteReason> {
    match actions.first() {
        Some(Action::RouteToAgent { reason, .. }) => Some(*reason),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// A call ends only when the caller is gone: here (no hang-up in the steps) only when
    /// their media is lost and the probe failed or went unanswered. A caller with silence
    /// suppression who answers the probe stays, for as long as they like. An automatic
    /// callback is made only for a caller who is gone.
    #[test]
    fn only_the_caller_ends_a_call(steps in prop::collection::vec(step(), 0..80)) {
        let mut d = Driver::new();
        d.step(&Step::Start);
        for s in &steps {
            let was_probe_out = d.probe_out;
            let fired = d.due_timer_fired_by(s);
            d.step(s);
            let ended = d.brain.phase() == Phase::Ended;
            let gone = d.caller_gone_after(s, was_probe_out, fired);
            prop_assert_eq!(ended, gone,
                "after {:?}: ended {}, caller gone {} (media lost {}, probe out {})", s, ended, gone, d.media_lost, was_probe_out);
            if ended {
                break;
            }
        }
        for (event, actions) in &d.log {
            for a in actions {
                if let Action::StoreCallback(req) = a
                    && req.automatic
                {
                    prop_assert!(
                        event.starts_with("ProbeFailed") || event.contains("MediaProbe"),
                        "an automatic callback for a caller still there, on {}", event
                    );
                }
            }
        }
    }

    /// A caller whose media stops and comes back (silence suppression, DTX, a tunnel) is
    /// exactly where they were: same phase, not routed, not promised a callback, not
    /// re-prompted, and (while queued) still hearing what they heard.
    #[test]
    fn a_caller_whose_media_comes_back_is_where_they_were(
        steps in prop::collection::vec(step(), 0..60),
        answered in any::<bool>(),
        reprobes in 0..3u8,
    ) {
        let mut d = driver_after(&steps, |d| d.brain.phase() != Phase::Ended);
        d.feed(Event::MediaResumed);
        let phase = d.brain.phase();
        let reason = d.brain.route_reason();
        let context = d.brain.context().clone();
        let sound = d.sound;
        let mut during = d.feed(Event::MediaLost);
        prop_assert!(during.contains(&Action::ProbeCaller), "no probe: {:?}", during);
        if answered {
            during.extend(d.feed(Event::ProbeAnswered));
            for _ in 0..reprobes {
                // Still quiet: the brain probes again when its timer fires, and is answered.
                let Some((TimerKind::MediaProbe, at)) = d.brain.next_timeout() else { break };
                d.now = d.now.max(at);
                let again = d.feed(Event::TimerFired { timer: TimerKind::MediaProbe });
                prop_assert!(again.contains(&Action::ProbeCaller), "no second probe: {:?}", again);
                during.extend(again);
                during.extend(d.feed(Event::ProbeAnswered));
            }
        }
        during.extend(d.feed(Event::MediaResumed));
        prop_assert_eq!(d.brain.phase(), phase);
        prop_assert_eq!(d.brain.route_reason(), reason);
        prop_assert_eq!(d.brain.context(), &context);
        prop_assert_eq!(d.sound, sound);
        for a in &during {
            prop_assert!(
                matches!(a, Action::ProbeCaller | Action::SetTimer { .. } | Action::CancelTimer { .. }),
                "the caller noticed their own silence: {:?}", a
            );
        }
        // Nothing is left armed for the lost media.
        prop_assert!(d.brain.next_timeout().is_none_or(|(k, _)| k != TimerKind::MediaProbe));
    }

    /// A waiting caller always hears something: a prompt, or the hold music between them
    /// (except while their callback is being committed).
    #[test]
    fn a_waiting_caller_never_hears_dead_air(steps in prop::collection::vec(step(), 0..80)) {
        let mut d = Driver::new();
        d.step(&Step::Start);
        for s in &steps {
            d.step(s);
            // While a callback is committed (milliseconds) nothing at all is heard, so
            // nothing can be taken for its confirmation.
            if d.brain.phase() == Phase::Queued && !d.storing {
                prop_assert!(d.sound.is_some(), "dead air in the queue after {:?}", s);
            }
        }
    }

    /// A late "finished" for a prompt that was replaced changes nothing about the one that
    /// plays: speaking still interrupts it if it may be interrupted.
    #[test]
    fn a_stale_prompt_finished_keeps_barge_in(steps in prop::collection::vec(step(), 0..60)) {
        // The first moment the steps reach where a replaced prompt may still report its end
        // while an interruptible one plays.
        let mut d = Driver::new();
        d.step(&Step::Start);
        let mut at = None;
        for s in std::iter::once(None).chain(steps.iter().map(Some)) {
            if let Some(s) = s {
                d.step(s);
            }
            if d.brain.phase() == Phase::Ended {
                break;
            }
            if let (Some(stale), Some(now)) = (d.stale_play, d.sound)
                && !now.looped && now.barge_in && stale != now.play
            {
                at = Some(stale);
                break;
            }
        }
        prop_assume!(at.is_some());
        let Some(stale) = at else { return Ok(()) };
        let a = d.feed(Event::PromptFinished { play: stale });
        prop_assert!(!a.iter().any(|a| matches!(a, Action::StopPlayback | Action::Play { .. })), "{:?}", a);
        let a = d.feed(Event::SpeechStarted);
        prop_assert!(a.contains(&Action::StopPlayback), "barge-in lost after a stale finish: {:?}", a);
    }

    /// An escape routes in the step it is heard, except a partial transcript whose only
    /// escape is its last word: that one routes on the next partial that still has it.
    #[test]
    fn an_escape_always_routes_in_that_same_step(
        steps in prop::collection::vec(step(), 0..60),
        escape in prop::sample::select(vec![
            "human", "I want to talk to a human", "agent please", "operator", "give me a representative",
            "a real person", "ik wil een medewerker", "een mens alstublieft", "I want to talk to a few men",
        ]),
        how in 0..3u8,
    ) {
        let mut d = Driver::new();
        d.step(&Step::Start);
        for s in &steps {
            d.step(s);
        }
        let before = d.brain.phase();
        let mut actions = match how {
            0 => d.feed(Event::PartialTranscript { text: escape.into() }),
            1 => d.feed(Event::FinalTranscript { text: escape.into() }),
            _ => d.feed(Event::Dtmf { digit: '0' }),
        };
        // A partial that is an escape word alone routes when it is heard again; in a language
        // that confirms partials, so does one whose escape rests on its last word.
        let found = flow().escape.detect(escape);
        let second_hearing = if confirms_partials(&d) {
            found.is_some_and(|m| m.needs_last_word)
        } else {
            found.is_some_and(|m| m.lone_word)
        };
        if how == 0 && second_hearing && before == Phase::Ivr {
            prop_assert_eq!(routes(&actions), None);
            actions = d.feed(Event::PartialTranscript { text: escape.into() });
        }
        if before == Phase::Ivr {
            let want = if how == 2 { RouteReason::Dtmf } else { RouteReason::Keyword };
            prop_assert_eq!(routes(&actions), Some(want));
            prop_assert_eq!(d.brain.phase(), Phase::Queued);
            if let Some(Action::RouteToAgent { context, .. }) = actions.first()
                && how != 2
            {
                prop_assert_eq!(context.said.last().map(String::as_str), Some(escape));
            }
        } else if before == Phase::Ended {
            // The caller is gone: nothing more happens.
            prop_assert!(actions.is_empty(), "{:?}", actions);
        } else {
            // Already queued or with a person: nothing to route, and never a step back.
            prop_assert!(matches!(before, Phase::Queued | Phase::WithAgent));
            prop_assert_eq!(d.brain.phase(), before);
        }
    }

    /// For a moment of ordinary speech Whisper sometimes writes an escape word alone ("Agent."
    /// for "I forgot my account"). A partial that is an escape word alone routes on a second
    /// hearing (the next partial still has it) or on the final; a next partial without it,
    /// then an ordinary final, never routes on a keyword. With words around it, it routes at
    /// once.
    #[test]
    fn a_lone_escape_word_in_a_partial_needs_a_second_hearing(
        steps in prop::collection::vec(step(), 0..40),
        said in prop::sample::select(vec![
            "I forgot my account", "my operation was cancelled", "the presentation starts at noon",
            "what is on the", "the television has no",
        ]),
        word in prop::sample::select(vec!["agent", "Human.", "operator", "Representative.", "agents"]),
        then in 0..5u8,
    ) {
        // Where partials are confirmed, an escape at a partial's end waits too (below), so
        // only steps that keep the caller in the menu without confirmation are kept.
        let mut d = driver_after(&steps, |d| {
            d.brain.phase() == Phase::Ivr && !confirms_partials(d)
        });
        let lone = word.to_string();
        prop_assert_eq!(routes(&d.feed(Event::PartialTranscript { text: lone.clone() })), None);
        prop_assert_eq!(d.brain.phase(), Phase::Ivr);
        match then {
            // Heard again, alone or with more words: routes now.
            0 => {
                let a = d.feed(Event::PartialTranscript { text: lone.clone() });
                prop_assert_eq!(routes(&a), Some(RouteReason::Keyword));
            }
            1 => {
                let a = d.feed(Event::PartialTranscript { text: format!("{lone} please") });
                prop_assert_eq!(routes(&a), Some(RouteReason::Keyword));
            }
            // The final has it: routes on the final.
            2 => {
                let a = d.feed(Event::FinalTranscript { text: lone.clone() });
                prop_assert_eq!(routes(&a), Some(RouteReason::Keyword));
                if let Some(Action::RouteToAgent { context, .. }) = a.first() {
                    prop_assert_eq!(context.said.last(), Some(&lone));
                }
            }
            // Said at the end of a longer partial: what the caller said, routes at once.
            3 => {
                let a = d.feed(Event::PartialTranscript { text: format!("{said} {word}") });
                prop_assert_eq!(routes(&a), Some(RouteReason::Keyword));
            }
            // It was invented: the next partial and the final do without it.
            _ => {
                let a = d.feed(Event::PartialTranscript { text: said.to_string() });
                prop_assert_eq!(routes(&a), None);
                // A later lone partial is a first hearing again.
                let a = d.feed(Event::PartialTranscript { text: lone.clone() });
                prop_assert_eq!(routes(&a), None);
                let a = d.feed(Event::FinalTranscript { text: said.to_string() });
                prop_assert_ne!(routes(&a), Some(RouteReason::Keyword));
            }
        }
    }

    #[test]
    fn a_silent_caller_always_reaches_a_person(steps in prop::collection::vec(step(), 0..60)) {
        let mut d = driver_after(&steps, |d| d.brain.phase() != Phase::Ended);
        // Silent, but on the line: their (silent) media flows.
        d.feed(Event::MediaResumed);
        if d.brain.phase() == Phase::WithAgent {
            // The agent leaves: the caller is back with the IVR, hearing something.
            let actions = d.feed(Event::AgentLeft);
            let back = actions.iter().any(|a| matches!(a, Action::Play { prompt, .. } if prompt == "after_agent"));
            prop_assert!(back);
        }
        // The caller now says nothing at all: prompts finish, timers fire.
        for _ in 0..20 {
            if d.brain.phase() == Phase::Queued {
                break;
            }
            d.step(&Step::FinishCurrentPrompt);
            let armed = d.brain.next_timeout();
            prop_assert!(armed.is_some() || d.current_play().is_some(),
                "stuck in {:?}: nothing playing and no timer armed", d.brain.phase());
            d.step(&Step::FireDueTimer);
        }
        prop_assert_eq!(d.brain.phase(), Phase::Queued);
        // A waiting caller is never left in silence: an announcement is always scheduled.
        prop_assert!(d.brain.next_timeout().is_some());
    }

    #[test]
    fn a_callback_is_confirmed_only_after_it_is_stored(steps in prop::collection::vec(step(), 0..80)) {
        let mut d = Driver::new();
        d.step(&Step::Start);
        for s in &steps {
            d.step(s);
        }
        let mut requested = false;
        for (event, actions) in &d.log {
            for a in actions {
                if matches!(a, Action::StoreCallback(_)) {
                    requested = true;
                }
                if let Action::StoreCallback(req) = a {
                    prop_assert!(req.number.as_deref().is_some_and(|n| !n.is_empty()), "a callback with no number: {:?}", req);
                }
                if let Action::Play { prompt, .. } = a
                    && prompt.starts_with("callback_confirmed")
                {
                    prop_assert!(event.starts_with("CallbackStored"), "confirmed on {}", event);
                    prop_assert!(requested, "confirmed a callback never requested");
                }
            }
        }
    }
}

#[test]
fn hanging_up_is_the_callers_alone_and_ends_all_timers() {
    let mut d = Driver::new();
    d.step(&Step::Start);
    d.feed(Event::PartialTranscript {
        text: "operator".into(),
    });
    let actions = d.feed(Event::CallerHungUp);
    assert_eq!(d.brain.phase(), Phase::Ended);
    assert!(
        actions
            .iter()
            .all(|a| matches!(a, Action::CancelTimer { .. }))
    );
    assert!(d.brain.next_timeout().is_none());
    assert!(
        d.feed(Event::PartialTranscript {
            text: "human".into()
        })
        .is_empty()
    );
}

#[test]
fn a_waiting_caller_who_says_yes_gets_a_callback_confirmed_after_the_commit() {
    let mut d = Driver::new();
    d.step(&Step::Start);
    d.feed(Event::FinalTranscript {
        text: "agent".into(),
    });
    let offer = d.feed(Event::NoAgentAvailable);
    assert!(offer.contains(&Action::OfferCallback));
    let store = d.feed(Event::FinalTranscript {
        text: "yes, call me back".into(),
    });
    let Some(Action::StoreCallback(req)) =
        store.iter().find(|a| matches!(a, Action::StoreCallback(_)))
    else {
        panic!("no callback stored: {store:?}")
    };
    assert_eq!(req.number.as_deref(), Some("+3120555"));
    assert!(req.context.said.contains(&"agent".to_string()));
    assert!(
        !store
            .iter()
            .any(|a| matches!(a, Action::Play { prompt, .. } if prompt == "callback_confirmed"))
    );
    let confirmed = d.feed(Event::CallbackStored {
        id: "cb-7".into(),
        at: None,
    });
    assert!(
        confirmed
            .iter()
            .any(|a| matches!(a, Action::Play { prompt, .. } if prompt == "callback_confirmed"))
    );
}

#[test]
fn a_caller_whose_line_dies_in_the_queue_is_called_back_unasked() {
    let mut d = Driver::new();
    d.step(&Step::Start);
    d.feed(Event::Dtmf { digit: '0' });
    // The media stops: first the phone is asked whether it is there, and nothing is decided.
    let probe = d.feed(Event::MediaLost);
    assert!(probe.contains(&Action::ProbeCaller), "{probe:?}");
    assert_eq!(d.brain.phase(), Phase::Queued);
    assert!(
        !probe.iter().any(|a| matches!(a, Action::StoreCallback(_))),
        "{probe:?}"
    );
    // No answer either: they are gone, and called back.
    let actions = d.feed(Event::ProbeFailed);
    let Some(Action::StoreCallback(req)) = actions.first() else {
        panic!("no callback: {actions:?}")
    };
    assert!(req.automatic);
    assert_eq!(req.reason, RouteReason::Dtmf);
    assert_eq!(d.brain.phase(), Phase::Ended);

    // The probe's answer never comes at all: the same when its deadline passes.
    let mut d = Driver::new();
    d.step(&Step::Start);
    d.feed(Event::Dtmf { digit: '0' });
    d.feed(Event::MediaLost);
    let (timer, at) = d.brain.next_timeout().expect("the probe deadline");
    assert_eq!(timer, TimerKind::MediaProbe);
    d.now = at;
    let actions = d.feed(Event::TimerFired { timer });
    assert!(
        matches!(actions.first(), Some(Action::StoreCallback(r)) if r.automatic),
        "{actions:?}"
    );
    assert_eq!(d.brain.phase(), Phase::Ended);
}

/// A queued caller with silence suppression: no media, but the phone answers the probe. They
/// stay in line, are probed again while quiet, and are bridged when an agent answers.
#[test]
fn a_quiet_caller_who_answers_the_probe_stays_in_line() {
    let mut d = Driver::new();
    d.step(&Step::Start);
    d.feed(Event::Dtmf { digit: '0' });
    d.feed(Event::MediaLost);
    d.feed(Event::ProbeAnswered);
    for _ in 0..10 {
        let (timer, at) = d.brain.next_timeout().expect("a timer");
        d.now = d.now.max(at);
        let a = d.feed(Event::TimerFired { timer });
        if a.contains(&Action::ProbeCaller) {
            d.feed(Event::ProbeAnswered);
        }
    }
    assert_eq!(d.brain.phase(), Phase::Queued);
    assert!(
        !d.log
            .iter()
            .flat_map(|(_, a)| a)
            .any(|a| matches!(a, Action::StoreCallback(_))),
        "a callback for a caller who is there"
    );
    d.feed(Event::AgentOffered {
        agent: "sip:alice@127.0.0.1".into(),
    });
    d.feed(Event::AgentAnswered {
        agent: "sip:alice@127.0.0.1".into(),
    });
    assert_eq!(d.brain.phase(), Phase::WithAgent);
    // Still quiet with the agent, then gone: the call is over (no callback: they were served).
    let (timer, at) = d.brain.next_timeout().expect("the media probe");
    assert_eq!(timer, TimerKind::MediaProbe);
    d.now = at;
    assert!(
        d.feed(Event::TimerFired { timer })
            .contains(&Action::ProbeCaller)
    );
    let gone = d.feed(Event::ProbeFailed);
    assert_eq!(d.brain.phase(), Phase::Ended);
    assert!(
        !gone.iter().any(|a| matches!(a, Action::StoreCallback(_))),
        "{gone:?}"
    );
}

/// The brain keeps the call's deadlines: a final transcript that does not come, and an agent
/// who does not answer.
#[test]
fn call_deadlines_are_brain_timers() {
    let mut d = Driver::new();
    d.step(&Step::Start);
    d.feed(Event::SpeechStarted);
    d.feed(Event::SpeechEnded);
    let (timer, at) = d.brain.next_timeout().expect("a deadline");
    assert_eq!(timer, TimerKind::FinalTranscript);
    d.now = at;
    let routed = d.feed(Event::TimerFired { timer });
    assert_eq!(routes(&routed), Some(RouteReason::SpeechUnavailable));
    // A final in time cancels it.
    let mut d = Driver::new();
    d.step(&Step::Start);
    d.feed(Event::SpeechEnded);
    let a = d.feed(Event::FinalTranscript {
        text: "my internet is down".into(),
    });
    assert!(a.contains(&Action::CancelTimer {
        timer: TimerKind::FinalTranscript
    }));
    // An agent rings too long: the brain gives up on that agent, the caller stays queued.
    let mut d = Driver::new();
    d.step(&Step::Start);
    d.feed(Event::Dtmf { digit: '0' });
    d.feed(Event::AgentOffered {
        agent: "sip:bob@127.0.0.1".into(),
    });
    let ring = d
        .log
        .last()
        .and_then(|(_, a)| {
            a.iter().find_map(|a| match a {
                Action::SetTimer {
                    timer: TimerKind::AgentRing,
                    at,
                } => Some(*at),
                _ => None,
            })
        })
        .expect("a ring deadline");
    assert!(ring > d.now + flow().timers.agent_ring);
    d.now = ring;
    let a = d.feed(Event::TimerFired {
        timer: TimerKind::AgentRing,
    });
    assert_eq!(
        a,
        vec![Action::StopRinging {
            agent: "sip:bob@127.0.0.1".into()
        }]
    );
    assert_eq!(d.brain.phase(), Phase::Queued);
}

#[test]
fn a_long_wait_brings_a_callback_offer_and_a_short_one_an_announcement() {
    let mut d = Driver::new();
    d.step(&Step::Start);
    d.feed(Event::FinalTranscript {
        text: "human".into(),
    });
    d.step(&Step::FinishCurrentPrompt);
    let short = d.feed(Event::QueueStatus {
        position: 2,
        estimated_wait: Duration::from_secs(90),
    });
    let text = short.iter().find_map(|a| match a {
        Action::Play { prompt, text, .. } if prompt == "queue_position" => Some(text.clone()),
        _ => None,
    });
    assert_eq!(
        text.as_deref(),
        Some("You are number 2 in line. The wait is about 2 minutes.")
    );
    let long = d.feed(Event::QueueStatus {
        position: 9,
        estimated_wait: Duration::from_secs(900),
    });
    assert!(long.contains(&Action::OfferCallback));
}

#[test]
fn speech_failure_hands_the_caller_to_a_person() {
    let mut d = Driver::new();
    d.step(&Step::Start);
    assert_eq!(
        routes(&d.feed(Event::SpeechEngineDegraded)),
        Some(RouteReason::SpeechUnavailable)
    );
}

#[test]
fn a_dutch_caller_can_switch_language_and_is_greeted_in_dutch() {
    let mut d = Driver::new();
    d.step(&Step::Start);
    let actions = d.feed(Event::FinalTranscript {
        text: "Nederlands graag".into(),
    });
    assert!(actions.contains(&Action::SetLanguage { code: "nl".into() }));
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Play { text, .. } if text.starts_with("Welkom")))
    );
    assert_eq!(
        routes(&d.feed(Event::FinalTranscript {
            text: "mijn internet doet het niet".into()
        })),
        None
    );
    assert_eq!(
        routes(&d.feed(Event::FinalTranscript {
            text: "mijn internet doet het nog steeds niet".into()
        })),
        Some(RouteReason::Repetition)
    );
}

fn stored_request(actions: &[Action]) -> CallbackRequest {
    match actions
        .iter()
        .find(|a| matches!(a, Action::StoreCallback(_)))
    {
        Some(Action::StoreCallback(req)) => (**req).clone(),
        _ => panic!("no callback stored: {actions:?}"),
    }
}

fn played(actions: &[Action]) -> Vec<(String, Vec<(String, String)>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Play { prompt, vars, .. } => Some((prompt.clone(), vars.clone())),
            _ => None,
        })
        .collect()
}

/// "Call me back at three": the time is kept with the promise and confirmed back to the
/// caller, once stored.
#[test]
fn a_caller_who_names_a_time_hears_that_time_confirmed() {
    let mut d = Driver::new();
    d.step(&Step::Start);
    d.feed(Event::Dtmf { digit: '0' });
    d.feed(Event::NoAgentAvailable);
    let store = d.feed(Event::FinalTranscript {
        text: "Call me back at three.".into(),
    });
    let req = stored_request(&store);
    assert_eq!(
        req.when,
        CallbackWhen::Requested("Call me back at three.".into())
    );
    assert_eq!(req.number.as_deref(), Some("+3120555"));
    assert!(played(&store).is_empty(), "{store:?}");
    let confirmed = d.feed(Event::CallbackStored {
        id: "9".into(),
        at: Some(CallbackTime {
            days_from_today: 0,
            hour: 15,
            minute: 0,
        }),
    });
    assert_eq!(
        played(&confirmed),
        vec![(
            "callback_confirmed_at".to_string(),
            vec![
                ("hour".to_string(), "15".to_string()),
                ("minute".to_string(), "00".to_string())
            ]
        )]
    );
    // "tomorrow morning" alone is an acceptance too.
    let mut d = Driver::new();
    d.step(&Step::Start);
    d.feed(Event::Dtmf { digit: '0' });
    d.feed(Event::NoAgentAvailable);
    let store = d.feed(Event::FinalTranscript {
        text: "tomorrow morning".into(),
    });
    assert_eq!(
        stored_request(&store).when,
        CallbackWhen::Requested("tomorrow morning".into())
    );
}

/// A caller with no caller ID (or who wants another phone) gives the number by voice or keys.
#[test]
fn the_number_to_call_can_be_spoken_or_keyed() {
    let start = |caller_id: Option<&str>| {
        let mut d = Driver::new();
        d.feed(Event::CallStarted {
            caller_id: caller_id.map(str::to_string),
            language: None,
        });
        d.feed(Event::Dtmf { digit: '0' });
        d.feed(Event::NoAgentAvailable);
        d
    };
    // Anonymous: yes → asked for a number → keys it.
    let mut d = start(None);
    let asked = d.feed(Event::Dtmf { digit: '1' });
    assert!(
        played(&asked)
            .iter()
            .any(|(p, _)| p == "callback_ask_number"),
        "{asked:?}"
    );
    assert!(!asked.iter().any(|a| matches!(a, Action::StoreCallback(_))));
    for digit in "0612345678".chars() {
        let out = d.feed(Event::Dtmf { digit });
        assert!(!out.iter().any(|a| matches!(a, Action::StoreCallback(_))));
    }
    let store = d.feed(Event::Dtmf { digit: '#' });
    assert_eq!(stored_request(&store).number.as_deref(), Some("0612345678"));

    // Anonymous: says it.
    let mut d = start(None);
    d.feed(Event::FinalTranscript { text: "yes".into() });
    let store = d.feed(Event::FinalTranscript {
        text: "zero six, one two three four, five six seven eight".into(),
    });
    assert_eq!(stored_request(&store).number.as_deref(), Some("0612345678"));

    // With a caller ID, saying another number in the answer uses that one.
    let mut d = start(Some("+3120555"));
    let store = d.feed(Event::FinalTranscript {
        text: "yes, call me on 06 1234 5678".into(),
    });
    assert_eq!(stored_request(&store).number.as_deref(), Some("0612345678"));

    // Press 3 for another number.
    let mut d = start(Some("+3120555"));
    let asked = d.feed(Event::Dtmf { digit: '3' });
    assert!(
        played(&asked)
            .iter()
            .any(|(p, _)| p == "callback_ask_number")
    );
    for digit in "555123#".chars() {
        d.feed(Event::Dtmf { digit });
    }
    let last = d.log.last().map(|(_, a)| a.clone()).unwrap_or_default();
    assert_eq!(stored_request(&last).number.as_deref(), Some("555123"));
}

#[test]
fn with_confirm_lone_word_off_a_lone_escape_word_routes_at_once() {
    let mut flow = Flow::embedded().unwrap();
    flow.confirm_lone_word = false;
    let mut d = Driver::with_flow(Arc::new(flow));
    d.step(&Step::Start);
    let a = d.feed(Event::PartialTranscript {
        text: "Agent.".into(),
    });
    assert_eq!(routes(&a), Some(RouteReason::Keyword));
}

#[test]
fn a_confirmed_request_ending_a_partial_routes_at_once() {
    let mut d = Driver::new();
    d.step(&Step::Start);
    // Several words agree: no second hearing needed.
    let a = d.feed(Event::PartialTranscript {
        text: "can I speak to an agent".into(),
    });
    assert_eq!(routes(&a), Some(RouteReason::Keyword));
}

/// A call that starts in Dutch (a Dutch number, or `--language nl`).
fn dutch_call() -> Driver {
    let mut d = Driver::new();
    d.feed(Event::CallStarted {
        caller_id: Some("+3120555".into()),
        language: Some("nl".into()),
    });
    assert!(confirms_partials(&d), "nl.toml confirms partials");
    d
}

#[test]
fn a_dutch_escape_at_a_partials_end_waits_for_the_next_hearing() {
    // "Mijn persoon." is the decoder half way through "Mijn persoonlijke gegevens": it must not
    // route, and the rest of the sentence is an ordinary request.
    let mut d = dutch_call();
    for text in ["Mijn persoon.", "Mijn persoonlijke gegevens kloppen"] {
        let a = d.feed(Event::PartialTranscript { text: text.into() });
        assert_eq!(routes(&a), None, "{text}: {a:?}");
    }
    let a = d.feed(Event::FinalTranscript {
        text: "Mijn persoonlijke gegevens kloppen niet.".into(),
    });
    assert_ne!(routes(&a), Some(RouteReason::Keyword), "{a:?}");

    // A caller who asks for one: heard at the end of a partial, routed on the next partial
    // that still has an escape, with the words of that partial.
    let mut d = dutch_call();
    let a = d.feed(Event::PartialTranscript {
        text: "Ik wil een medewerker".into(),
    });
    assert_eq!(routes(&a), None, "{a:?}");
    let a = d.feed(Event::PartialTranscript {
        text: "Ik wil een medewerker spreken".into(),
    });
    assert_eq!(routes(&a), Some(RouteReason::Keyword), "{a:?}");
    assert_eq!(
        d.brain.context().said.last().map(String::as_str),
        Some("Ik wil een medewerker spreken")
    );

    // Or on the final, when the partial was the last one.
    let mut d = dutch_call();
    d.feed(Event::PartialTranscript {
        text: "Een medewerker".into(),
    });
    let a = d.feed(Event::FinalTranscript {
        text: "Een medewerker.".into(),
    });
    assert_eq!(routes(&a), Some(RouteReason::Keyword), "{a:?}");
}

#[test]
fn a_dutch_escape_with_words_after_it_routes_on_the_partial() {
    let mut d = dutch_call();
    let a = d.feed(Event::PartialTranscript {
        text: "Ik wil een medewerker spreken".into(),
    });
    assert_eq!(routes(&a), Some(RouteReason::Keyword), "{a:?}");
}

#[test]
fn a_dutch_partial_only_the_verifier_heard_waits_for_the_next_hearing() {
    let verified = |d: &mut Driver| {
        let mut v = escape_verdict("medewerker", -0.3);
        v.score = 1.0;
        v.threshold = 0.5;
        d.feed(Event::Verified { verdicts: vec![v] });
    };
    let text = "Ik wil met de mede";
    let mut d = dutch_call();
    verified(&mut d);
    let a = d.feed(Event::PartialTranscript { text: text.into() });
    assert_eq!(routes(&a), None, "{a:?}");
    // Heard again, by the verifier or the text: routes.
    verified(&mut d);
    let a = d.feed(Event::PartialTranscript {
        text: "Ik wil met de medewer".into(),
    });
    assert_eq!(routes(&a), Some(RouteReason::Keyword), "{a:?}");

    // The same partial in English (no confirm_partials) routes at once.
    let mut d = Driver::new();
    d.step(&Step::Start);
    assert!(!confirms_partials(&d), "en.toml does not confirm partials");
    verified(&mut d);
    let a = d.feed(Event::PartialTranscript { text: text.into() });
    assert_eq!(routes(&a), Some(RouteReason::Keyword), "{a:?}");
}

#[test]
fn a_verdict_against_a_transcript_the_model_was_unsure_of_does_not_route() {
    // "Ik wil mijn abonnement opzeggen", garbled: the verifier scored "medewerker" well
    // above its threshold against a transcript the model gave -1.47 nats a token.
    let verdict = |hypothesis_lp: f32| {
        let mut v = escape_verdict("medewerker", hypothesis_lp);
        (v.score, v.threshold, v.transcript_floor) = (1.27, 0.5, -1.2);
        v
    };
    let text = "Ik wil mijn nabonement op, meen je.";
    let mut d = dutch_call();
    d.feed(Event::Verified {
        verdicts: vec![verdict(-1.47)],
    });
    let a = d.feed(Event::FinalTranscript { text: text.into() });
    assert_ne!(routes(&a), Some(RouteReason::Keyword), "{a:?}");
    // The same score with the model sure of its transcript routes.
    let mut d = dutch_call();
    d.feed(Event::Verified {
        verdicts: vec![verdict(-0.9)],
    });
    let a = d.feed(Event::FinalTranscript { text: text.into() });
    assert_eq!(routes(&a), Some(RouteReason::Keyword), "{a:?}");
}

/// A verdict on a transcript, as the keyword verifier gives it, with the model's mean token
/// log-probability of its own transcript and the language's echo bar.
fn escape_verdict(phrase: &str, hypothesis_lp: f32) -> humanline::speech::Verdict {
    humanline::speech::Verdict {
        kind: humanline::speech::PhraseKind::Escape,
        phrase: phrase.into(),
        // The transcript is the phrase: it scores 0 against itself, whatever the audio.
        score: 0.0,
        threshold: 0.0,
        hypothesis_lp,
        echo_threshold: -1.0,
        transcript_floor: f32::NEG_INFINITY,
    }
}

#[test]
fn escape_words_alone_that_the_model_doubted_do_not_route() {
    let mut d = Driver::new();
    d.step(&Step::Start);
    // The decoder wrote its prompt's escape words for unclear audio, unsure of them: neither
    // the partial nor the final that is that partial again routes.
    d.feed(Event::Verified {
        verdicts: vec![escape_verdict("een mens", -2.0)],
    });
    let a = d.feed(Event::PartialTranscript {
        text: "Een mens.".into(),
    });
    assert_eq!(routes(&a), None, "{a:?}");
    let a = d.feed(Event::FinalTranscript {
        text: "Een mens.".into(),
    });
    assert_ne!(routes(&a), Some(RouteReason::Keyword), "{a:?}");
    // The same doubt does not stop a sentence with other words in it.
    d.feed(Event::Verified {
        verdicts: vec![escape_verdict("medewerker", -2.0)],
    });
    let a = d.feed(Event::FinalTranscript {
        text: "Ik wil een medewerker spreken.".into(),
    });
    assert_eq!(routes(&a), Some(RouteReason::Keyword), "{a:?}");
}

#[test]
fn escape_words_alone_that_the_model_was_sure_of_route() {
    for (verdicts, text) in [
        (vec![escape_verdict("een mens", -0.3)], "Een mens."),
        // No verifier (English without a verdict, or a fake transcriber): as before.
        (vec![], "Een mens."),
    ] {
        let mut d = Driver::new();
        d.step(&Step::Start);
        d.feed(Event::Verified { verdicts });
        let a = d.feed(Event::FinalTranscript { text: text.into() });
        assert_eq!(routes(&a), Some(RouteReason::Keyword), "{text}: {a:?}");
    }
}
