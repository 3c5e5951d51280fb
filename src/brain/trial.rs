//! "Try it" for operators: what a call would decide on a sentence typed in the console,
//! without a call. The sentence goes through a [`CallBrain`] exactly as a caller's words
//! do on a live call (speech starts, a partial transcript per word, the final), right after
//! the greeting, so the answer is the brain's own: an escape (which phrase, how it matched),
//! a self-service topic and the prompt that answers it, or neither.

use super::{Action, CallBrain, Event, RouteReason};
use crate::config::Flow;
use crate::escape::EscapeMatch;
use serde::Serialize;
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
    /// Self-service topics recognised.
    pub topics: Vec<String>,
    /// The prompt the caller would hear next, and its text.
    pub answer: Option<(String, String)>,
}

/// The most words of a sentence tried (a typed paragraph is not a caller's turn).
pub const MAX_WORDS: usize = 60;

/// Runs `text` through a new call on `flow` in `language` (default: the flow's).
pub fn try_saying(flow: Arc<Flow>, language: Option<&str>, text: &str) -> Trial {
    let start = Instant::now();
    let mut brain = CallBrain::new(flow);
    let mut now = start;
    brain.handle(
        now,
        Event::CallStarted {
            caller_id: Some("+15550100".into()),
            language: language.map(str::to_string),
        },
    );
    // The greeting ends; the caller speaks.
    if let Some(play) = brain.playing().map(|(p, _)| p) {
        brain.handle(now, Event::PromptFinished { play });
    }
    let words: Vec<&str> = text.split_whitespace().take(MAX_WORDS).collect();
    let mut events = vec![Event::SpeechStarted];
    events.extend((1..=words.len()).map(|n| Event::PartialTranscript {
        text: words[..n].join(" "),
    }));
    let partials = events.len();
    events.push(Event::SpeechEnded);
    events.push(Event::FinalTranscript {
        text: words.join(" "),
    });
    let mut trial = Trial {
        language: brain.context().language.clone(),
        route: None,
        escape: None,
        while_speaking: false,
        topics: Vec::new(),
        answer: None,
    };
    for (i, event) in events.into_iter().enumerate() {
        now += Duration::from_millis(350);
        for action in brain.handle(now, event) {
            match action {
                Action::RouteToAgent { reason, context } if trial.route.is_none() => {
                    trial.route = Some(reason);
                    trial.escape = context.escape;
                    trial.while_speaking = i < partials;
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
}
