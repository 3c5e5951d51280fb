//! "Try it" for operators: what a call would decide on a sentence typed in the console,
//! without a call. The sentence goes through a [`CallBrain`] exactly as a caller's words
//! do on a live call (speech starts, a partial transcript per word, the final), right after
//! the greeting, so the answer is the brain's own: an escape (which phrase, how it matched),
//! a self-service topic and the prompt that answers it, or neither.

use super::{Action, CallBrain, Event, RouteReason};
use crate::config::Flow;
use crate::escape::EscapeMatch;
use crate::speech::Verdict;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the brain decided on one sentence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trial {
    pub language: String,
    /// Routed to a person, and why (`keyword`, `repetition`, ...).
    pub route: Option<RouteReason>,
    /// The escape phrase that routed, how it matched and the words it was heard in.
    pub escape: Option<EscapeMatch>,
    /// Whether it routed on a partial transcript (while the caller was still speaking).
    pub while_speaking: bool,
    /// When it routed, in ms from the start of the recording (heard audio only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
    /// Self-service topics recognised.
    pub topics: Vec<String>,
    /// The prompt the caller would hear next, and its text.
    pub answer: Option<(String, String)>,
}

/// The most words of a sentence tried (a typed paragraph is not a caller's turn).
pub const MAX_WORDS: usize = 60;
/// The most recognizer events of a recording tried (30 s of speech has a few hundred).
pub const MAX_EVENTS: usize = 4_000;

/// What the recognizer reported during a caller's turn, at the time (`t`, ms from the start
/// of the turn) a live call would have it. Saved by `bench speech`, sent back by the console.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HeardEvent {
    SpeechStarted {
        t: u64,
    },
    SpeechEnded {
        t: u64,
    },
    Partial {
        t: u64,
        text: String,
    },
    Final {
        t: u64,
        text: String,
    },
    /// The keyword verifier's verdicts on the partial or final that comes next.
    Verified {
        t: u64,
        verdicts: Vec<Verdict>,
    },
    Degraded {
        t: u64,
    },
}

impl HeardEvent {
    /// The recognizer's side of a brain event (`None` for the rest).
    pub fn from_event(t: u64, event: Event) -> Option<HeardEvent> {
        Some(match event {
            Event::SpeechStarted => HeardEvent::SpeechStarted { t },
            Event::SpeechEnded => HeardEvent::SpeechEnded { t },
            Event::PartialTranscript { text } => HeardEvent::Partial { t, text },
            Event::FinalTranscript { text } => HeardEvent::Final { t, text },
            Event::SpeechEngineDegraded => HeardEvent::Degraded { t },
            Event::Verified { verdicts } => HeardEvent::Verified { t, verdicts },
            _ => return None,
        })
    }

    /// When it was heard (ms from the start of the turn).
    pub fn t(&self) -> u64 {
        match self {
            HeardEvent::SpeechStarted { t }
            | HeardEvent::SpeechEnded { t }
            | HeardEvent::Partial { t, .. }
            | HeardEvent::Final { t, .. }
            | HeardEvent::Verified { t, .. }
            | HeardEvent::Degraded { t } => *t,
        }
    }

    /// The brain event, and when it was heard.
    pub fn at(&self) -> (u64, Event) {
        match self.clone() {
            HeardEvent::SpeechStarted { t } => (t, Event::SpeechStarted),
            HeardEvent::SpeechEnded { t } => (t, Event::SpeechEnded),
            HeardEvent::Partial { t, text } => (t, Event::PartialTranscript { text }),
            HeardEvent::Final { t, text } => (t, Event::FinalTranscript { text }),
            HeardEvent::Degraded { t } => (t, Event::SpeechEngineDegraded),
            HeardEvent::Verified { t, verdicts } => (t, Event::Verified { verdicts }),
        }
    }
}

/// A new call on `flow` in `language` (default: the flow's) at `now`, past its greeting: the
/// caller is about to speak.
pub fn listening_brain(flow: Arc<Flow>, language: Option<&str>, now: Instant) -> CallBrain {
    let mut brain = CallBrain::new(flow);
    brain.handle(
        now,
        Event::CallStarted {
            caller_id: Some("+15550100".into()),
            language: language.map(str::to_string),
        },
    );
    if let Some(play) = brain.playing().map(|(p, _)| p) {
        brain.handle(now, Event::PromptFinished { play });
    }
    brain
}

/// Runs `text` through a new call on `flow` in `language` (default: the flow's): speech
/// starts, a partial per word 350 ms apart, the end of speech and the final.
pub fn try_saying(flow: Arc<Flow>, language: Option<&str>, text: &str) -> Trial {
    let words: Vec<&str> = text.split_whitespace().take(MAX_WORDS).collect();
    let mut heard = vec![HeardEvent::SpeechStarted { t: 0 }];
    let mut t = 0;
    for n in 1..=words.len() {
        t += 350;
        heard.push(HeardEvent::Partial {
            t,
            text: words[..n].join(" "),
        });
    }
    heard.push(HeardEvent::SpeechEnded { t: t + 350 });
    heard.push(HeardEvent::Final {
        t: t + 700,
        text: words.join(" "),
    });
    let mut trial = try_hearing(flow, language, &heard);
    trial.at_ms = None;
    trial
}

/// Runs what the recognizer heard in a recording (`heard`, in time order) through a new call
/// on `flow` in `language`, exactly as a live call would have it: the verifier's verdicts,
/// each partial and the final, at their times.
pub fn try_hearing(flow: Arc<Flow>, language: Option<&str>, heard: &[HeardEvent]) -> Trial {
    let start = Instant::now();
    let mut brain = listening_brain(flow, language, start);
    let mut trial = Trial {
        language: brain.context().language.clone(),
        route: None,
        escape: None,
        while_speaking: false,
        at_ms: None,
        topics: Vec::new(),
        answer: None,
    };
    for h in heard.iter().take(MAX_EVENTS) {
        let (t, event) = h.at();
        let partial = matches!(event, Event::PartialTranscript { .. });
        for action in brain.handle(start + Duration::from_millis(t), event) {
            match action {
                Action::RouteToAgent { reason, context } if trial.route.is_none() => {
                    trial.route = Some(reason);
                    trial.escape = context.escape;
                    trial.while_speaking = partial;
                    trial.at_ms = Some(t);
                }
                Action::Play { prompt, text, .. } if trial.answer.is_none() => {
                    trial.answer = Some((prompt, text));
                }
                _ => {}
            }
        }
        if trial.route.is_some() {
            break;
        }
    }
    trial.topics = brain.context().topics.clone();
    trial.language = brain.context().language.clone();
    trial
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_person_escapes_and_paying_a_bill_does_not() {
        let flow = Arc::new(Flow::embedded().unwrap());
        let t = try_saying(flow.clone(), None, "I want a real person");
        assert_eq!(t.route, Some(RouteReason::Keyword), "{t:?}");
        assert!(
            t.escape
                .as_ref()
                .is_some_and(|e| e.phrase.contains("person")),
            "{t:?}"
        );
        let t = try_saying(flow.clone(), None, "I want to pay my bill");
        assert_eq!(t.route, None, "{t:?}");
        assert_eq!(t.topics, ["billing"], "{t:?}");
        assert_eq!(
            t.answer.as_ref().map(|a| a.0.as_str()),
            Some("topic_billing")
        );
        let t = try_saying(flow, Some("nl"), "ik wil een medewerker spreken");
        assert_eq!(t.route, Some(RouteReason::Keyword), "{t:?}");
        assert_eq!(t.language, "nl");
    }

    /// A recording is decided on what a call hears in it: the keyword verifier's verdicts
    /// too, not only the words of the transcript, and with the language's rules for partials.
    #[test]
    fn a_recording_is_decided_on_the_verifier_as_a_call_is() {
        use crate::escape::MatchKind;
        use crate::speech::PhraseKind;
        let flow = Arc::new(Flow::embedded().unwrap());
        let verified = |t, score| HeardEvent::Verified {
            t,
            verdicts: vec![Verdict {
                kind: PhraseKind::Escape,
                phrase: "medewerker".into(),
                score,
                threshold: 0.5,
                hypothesis_lp: -0.6,
                echo_threshold: -0.75,
                transcript_floor: -1.2,
            }],
        };
        // How base wrote "ik wil een medewerker spreken" in an espeak-ng voice.
        let said = "Ik meel en me even marker spreken.";
        let heard = |score| {
            vec![
                HeardEvent::SpeechStarted { t: 0 },
                verified(900, score),
                HeardEvent::Partial {
                    t: 900,
                    text: "Ik meel en me even marker".into(),
                },
                HeardEvent::SpeechEnded { t: 1500 },
                verified(1800, score),
                HeardEvent::Final {
                    t: 1800,
                    text: said.into(),
                },
            ]
        };
        let t = try_hearing(flow.clone(), Some("nl"), &heard(0.9));
        assert_eq!(t.route, Some(RouteReason::Keyword), "{t:?}");
        assert_eq!(t.escape.as_ref().map(|e| e.kind), Some(MatchKind::Verified));
        // Dutch confirms a partial only the verifier heard on the next hearing: the final.
        assert_eq!((t.at_ms, t.while_speaking), (Some(1800), false), "{t:?}");
        let t = try_hearing(flow.clone(), Some("nl"), &heard(-1.9));
        assert_eq!(t.route, None, "{t:?}");
        // Typed, the same words do not escape: only the audio says what was asked for.
        let t = try_saying(flow, Some("nl"), said);
        assert_eq!((t.route, t.at_ms), (None, None), "{t:?}");
    }
}
