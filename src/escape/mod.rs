//! Deciding, from what speech recognition heard, that a caller wants a person.
//!
//! Recognition on telephone audio mishears short words ("a human" -> "a few men",
//! "representative" -> "preventative"), so exact string matching is not enough. The
//! [`EscapeDetector`] matches a lexicon of phrases exactly, through operator-listed
//! "sounds like" variants, and fuzzily (spelling and sound both close) for longer phrases,
//! where a near miss is unlikely to be an ordinary word. The [`RepetitionDetector`] notices a
//! caller saying the same thing again, whatever the transcription noise.

pub mod normalize;
mod phrase;

pub use phrase::fuzzy_word_eq;
use phrase::{Phrase, Span};
use serde::Serialize;

/// How closely a transcript must resemble an escape phrase to count. Operators tune these in
/// `prompts/humanline.toml`; the defaults were chosen on phone-band speech.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EscapeThresholds {
    /// Minimum similarity (0..1) of the letters of a heard window and a phrase.
    pub fuzzy_letters: f32,
    /// Minimum similarity (0..1) of their phonetic codes.
    pub fuzzy_sound: f32,
    /// Phrases shorter than this many letters match exactly only: a short word is one edit
    /// away from too many ordinary words ("agent" / "agenda").
    pub min_fuzzy_letters: usize,
}

impl Default for EscapeThresholds {
    fn default() -> Self {
        Self {
            fuzzy_letters: 0.78,
            fuzzy_sound: 0.75,
            min_fuzzy_letters: 7,
        }
    }
}

/// How an escape was recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchKind {
    Exact,
    SoundsLike,
    Fuzzy,
    /// Heard by the keyword verifier (the model scored the phrase on the audio), whatever
    /// the transcript's words.
    Verified,
}

/// A detected request for a person: which lexicon phrase, and the words it was heard in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EscapeMatch {
    pub phrase: String,
    pub heard: String,
    pub kind: MatchKind,
    /// The transcript is this one escape word and nothing else. For a fraction of a second of
    /// ordinary speech Whisper sometimes writes a word of its prompt alone ("Agent." for "I
    /// forgot my account"), so a partial like this is worth a second hearing before it routes.
    #[serde(skip)]
    pub lone_word: bool,
    /// Every word of the transcript is a word of the escape phrases ("Een mens.",
    /// "Medewerker, medewerker."): the shape of the decoder echoing the escape words of its
    /// prompt on unclear audio, which only the model's confidence in its transcript can tell
    /// from a caller who said them (`Verdict::doubts_echo`).
    #[serde(skip)]
    pub echo_shaped: bool,
    /// No escape is left once the transcript's last word is taken away: the match needs that
    /// word, which in a partial transcript may be a longer word cut short ("Mijn persoon."
    /// on the way to "Mijn persoonlijke gegevens").
    #[serde(skip)]
    pub needs_last_word: bool,
}

/// A phrase found in heard words, before it becomes an [`EscapeMatch`].
struct Found {
    span: Span,
    phrase: String,
    kind: MatchKind,
}

/// Finds requests for a human in transcripts.
#[derive(Debug, Clone)]
pub struct EscapeDetector {
    phrases: Vec<Phrase>,
    /// Matched exactly only, never fuzzily: whole requests ("speak to an agent") whose words
    /// agree with each other, so that a mis-heard last word is not enough.
    requests: Vec<Phrase>,
    sounds_like: Vec<(Phrase, String)>,
    thresholds: EscapeThresholds,
}

impl EscapeDetector {
    /// `phrases` are what callers say ("human", "a real person"); `sounds_like` maps what
    /// recognition is known to write for them ("a few men") to the phrase they stand for.
    pub fn new<'a>(
        phrases: impl IntoIterator<Item = &'a str>,
        sounds_like: impl IntoIterator<Item = (&'a str, &'a str)>,
        thresholds: EscapeThresholds,
    ) -> Self {
        let phrases = phrases.into_iter().filter_map(Phrase::new).collect();
        let sounds_like = sounds_like
            .into_iter()
            .filter_map(|(heard, meant)| Some((Phrase::new(heard)?, normalize::canonical(meant))))
            .collect();
        Self {
            phrases,
            requests: Vec::new(),
            sounds_like,
            thresholds,
        }
    }

    /// Adds requests matched exactly only ("customer service", "speak to an agent").
    pub fn with_requests<'a>(mut self, requests: impl IntoIterator<Item = &'a str>) -> Self {
        self.requests
            .extend(requests.into_iter().filter_map(Phrase::new));
        self
    }

    /// The first escape phrase found in `transcript`, if any. Exact matches win over variants,
    /// variants over fuzzy matches.
    pub fn detect(&self, transcript: &str) -> Option<EscapeMatch> {
        let heard = normalize::words(transcript);
        let found = self.find(&heard)?;
        Some(self.to_match(&heard, found))
    }

    fn to_match(&self, heard: &[String], f: Found) -> EscapeMatch {
        EscapeMatch {
            phrase: f.phrase,
            heard: heard[f.span.start..f.span.start + f.span.len].join(" "),
            kind: f.kind,
            lone_word: heard.len() == 1,
            echo_shaped: heard.iter().all(|w| self.is_escape_word(w)),
            needs_last_word: heard
                .split_last()
                .is_none_or(|(_, before)| self.find(before).is_none()),
        }
    }

    /// `word` is a word of an escape phrase or request (a trailing plural "s" allowed).
    fn is_escape_word(&self, word: &str) -> bool {
        let singular = word.strip_suffix('s');
        self.phrases
            .iter()
            .chain(&self.requests)
            .any(|p| p.has_word(word) || singular.is_some_and(|w| p.has_word(w)))
    }

    fn find(&self, heard: &[String]) -> Option<Found> {
        if heard.is_empty() {
            return None;
        }
        let exact = |p: &Phrase| {
            p.find_exact(heard).map(|span| Found {
                span,
                phrase: p.text.clone(),
                kind: MatchKind::Exact,
            })
        };
        if let Some(f) = self.phrases.iter().find_map(exact) {
            return Some(f);
        }
        if let Some(f) = self.requests.iter().find_map(exact) {
            return Some(f);
        }
        for (variant, meant) in &self.sounds_like {
            if let Some(span) = variant.find_exact(heard) {
                return Some(Found {
                    span,
                    phrase: meant.clone(),
                    kind: MatchKind::SoundsLike,
                });
            }
        }
        let t = self.thresholds;
        self.phrases
            .iter()
            .filter(|p| p.letters >= t.min_fuzzy_letters)
            .find_map(|p| {
                p.find_fuzzy(heard, t.fuzzy_letters, t.fuzzy_sound)
                    .map(|span| Found {
                        span,
                        phrase: p.text.clone(),
                        kind: MatchKind::Fuzzy,
                    })
            })
    }

    /// The phrases, for biasing speech recognition toward them.
    pub fn phrases(&self) -> impl Iterator<Item = &str> {
        self.phrases.iter().map(|p| p.text.as_str())
    }
}

/// Finds any of a list of phrases (exact words, plurals allowed): yes/no answers, topic keywords.
#[derive(Debug, Clone, Default)]
pub struct PhraseSet {
    phrases: Vec<Phrase>,
}

impl PhraseSet {
    pub fn new<'a>(phrases: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            phrases: phrases.into_iter().filter_map(Phrase::new).collect(),
        }
    }

    pub fn matches(&self, transcript: &str) -> bool {
        let heard = normalize::words(transcript);
        self.phrases.iter().any(|p| p.find_exact(&heard).is_some())
    }
}

/// Notices the same request said again. Compares content words (stop words dropped), each
/// pair equal when spelling or sound is close, and scores the overlap as a Dice coefficient.
#[derive(Debug, Clone)]
pub struct RepetitionDetector {
    stopwords: std::collections::HashSet<String>,
    threshold: f32,
}

impl RepetitionDetector {
    pub fn new<'a>(stopwords: impl IntoIterator<Item = &'a str>, threshold: f32) -> Self {
        Self {
            stopwords: stopwords.into_iter().map(normalize::canonical).collect(),
            threshold,
        }
    }

    /// The content words of an utterance, as compared.
    pub fn content_words(&self, text: &str) -> Vec<String> {
        normalize::words(text)
            .into_iter()
            .filter(|w| !self.stopwords.contains(w))
            .collect()
    }

    /// Similarity in 0..=1 of two utterances' content.
    pub fn similarity(&self, a: &str, b: &str) -> f32 {
        let (a, b) = (self.content_words(a), self.content_words(b));
        if a.is_empty() || b.is_empty() {
            return 0.0;
        }
        let mut used = vec![false; b.len()];
        let mut matched = 0usize;
        for wa in &a {
            if let Some(j) = (0..b.len()).find(|&j| !used[j] && fuzzy_word_eq(wa, &b[j])) {
                used[j] = true;
                matched += 1;
            }
        }
        (2 * matched) as f32 / (a.len() + b.len()) as f32
    }

    /// Whether `text` repeats any of `earlier`.
    pub fn repeats<'a>(&self, text: &str, earlier: impl IntoIterator<Item = &'a str>) -> bool {
        earlier
            .into_iter()
            .any(|e| self.similarity(text, e) >= self.threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn english() -> EscapeDetector {
        EscapeDetector::new(
            [
                "human",
                "agent",
                "operator",
                "representative",
                "a real person",
                "customer service",
            ],
            [("a few men", "human")],
            EscapeThresholds::default(),
        )
    }

    #[test]
    fn finds_escape_words_exactly_and_in_plural() {
        let d = english();
        let m = d.detect("I want to talk to a Human, please.").unwrap();
        assert_eq!((m.phrase.as_str(), m.kind), ("human", MatchKind::Exact));
        assert!(d.detect("are there any agents").is_some());
        assert_eq!(
            d.detect("Get me a real person").unwrap().phrase,
            "a real person"
        );
    }

    #[test]
    fn finds_known_mishearings_and_near_misses() {
        let d = english();
        let m = d.detect("I want to talk to a few men").unwrap();
        assert_eq!(
            (m.phrase.as_str(), m.kind),
            ("human", MatchKind::SoundsLike)
        );
        let m = d.detect("let me speak to a representive").unwrap();
        assert_eq!(
            (m.phrase.as_str(), m.kind),
            ("representative", MatchKind::Fuzzy)
        );
        assert!(d.detect("I need an operater").is_some());
    }

    #[test]
    fn ordinary_requests_do_not_escape() {
        let d = english();
        for text in [
            "my internet is down",
            "what is on the agenda",
            "my operation was cancelled",
            "I have a question about my bill",
            "the presentation starts at noon",
            "what are your opening hours",
            "I want to change my address",
            "",
        ] {
            assert_eq!(d.detect(text), None, "{text}");
        }
    }

    #[test]
    fn a_lone_escape_word_is_marked_for_a_second_hearing() {
        let d = english().with_requests(["speak to an agent", "talk to a human"]);
        // Whisper writes its prompt's words alone for a fraction of a second of other speech.
        for text in ["Agent.", "operator", "Representative", "agents"] {
            let m = d.detect(text).unwrap();
            assert!(m.lone_word, "{text}: {m:?}");
        }
        // With other words around it, it is what the caller said.
        for text in [
            "what is on the agent",
            "agent please",
            "agent agent",
            "human, I said human",
            "I want to speak to an agent",
            "can I talk to a human",
            "get me a real person",
        ] {
            let m = d.detect(text).unwrap();
            assert!(!m.lone_word, "{text}: {m:?}");
        }
    }

    #[test]
    fn a_match_that_needs_the_transcripts_last_word_is_marked() {
        let d = EscapeDetector::new(
            ["medewerker", "persoon", "een mens"],
            [],
            EscapeThresholds::default(),
        )
        .with_requests(["iemand spreken"]);
        // Take the last word away and no escape is left: in a partial it may be cut short.
        for text in [
            "Mijn persoon.",
            "medewerker",
            "Ik wil iemand spreken",
            "met een mens",
        ] {
            let m = d.detect(text).unwrap();
            assert!(m.needs_last_word, "{text}: {m:?}");
        }
        // An escape before the last word stands whatever that word becomes.
        for text in [
            "Ik wil een medewerker spreken",
            "medewerker medewerker",
            "een mens alstublieft",
        ] {
            let m = d.detect(text).unwrap();
            assert!(!m.needs_last_word, "{text}: {m:?}");
        }
    }

    #[test]
    fn a_transcript_of_escape_words_only_has_the_echo_shape() {
        let d = EscapeDetector::new(["medewerker", "een mens"], [], EscapeThresholds::default())
            .with_requests(["iemand spreken"]);
        for text in [
            "Een mens.",
            "Medewerker, medewerker.",
            "Een medewerker",
            "iemand spreken",
        ] {
            let m = d.detect(text).unwrap();
            assert!(m.echo_shaped, "{text}: {m:?}");
        }
        for text in [
            "ik wil een medewerker",
            "een mens alstublieft",
            "mag ik iemand spreken",
        ] {
            let m = d.detect(text).unwrap();
            assert!(!m.echo_shaped, "{text}: {m:?}");
        }
    }

    #[test]
    fn requests_match_exactly_only() {
        let d = EscapeDetector::new(["human"], [], EscapeThresholds::default())
            .with_requests(["customer service", "speak to someone"]);
        let m = d.detect("Customer service, please.").unwrap();
        assert_eq!(
            (m.phrase.as_str(), m.kind, m.lone_word),
            ("customer service", MatchKind::Exact, false)
        );
        assert!(d.detect("can I speak to someone").is_some());
        assert!(d.detect("customer services").is_some());
        // Close is not enough for a request: it is never matched fuzzily.
        assert_eq!(d.detect("costumer service"), None);
        assert_eq!(d.detect("speak to some one"), None);
        assert_eq!(d.detect("my service is down"), None);
    }

    #[test]
    fn shipped_mishearings_do_not_touch_ordinary_sentences() {
        let flow = crate::config::Flow::embedded().unwrap();
        for (heard, meant) in [
            ("Speak to our reprimand.", "representative"),
            ("can I speak to a repremand please", "representative"),
            ("Speak to our every man to live.", "representative"),
            ("Speak to our every name of him.", "representative"),
        ] {
            let m = flow.escape.detect(heard);
            assert_eq!(m.map(|m| m.phrase), Some(meant.to_string()), "{heard}");
        }
        for text in [
            "my internet is down",
            "I have a question about my bill",
            "what are your opening hours",
            "I want to change my address",
            "my package has not arrived yet",
            "how do I reset my password",
            "I was charged twice this month",
            "my operation was cancelled",
            "what is on the agenda today",
            "I need a new router",
            "the connection keeps dropping every evening",
            "can you tell me my balance",
            "I am moving house next week",
            "my phone screen is broken",
            "I would like to cancel my subscription",
            "the presentation starts at noon",
            "when will the engineer arrive",
            "I forgot my account number",
            "the television has no signal",
            "I want to upgrade my plan",
            "is there a fee for that",
            "the reprimand was unfair",
            "every man for himself",
            "I gave every name on the list",
            "I remember the man",
        ] {
            assert_eq!(flow.escape.detect(text), None, "{text}");
        }
    }

    #[test]
    fn repetition_tolerates_noise_but_not_different_requests() {
        let r = RepetitionDetector::new(["my", "is", "i", "a", "the", "still", "about"], 0.6);
        assert!(r.repeats("my internet is down", ["my internet is down"]));
        assert!(r.repeats("My internet is still down!", ["my internet is down"]));
        assert!(r.repeats("my internet is down", ["my internets down"]));
        assert!(!r.repeats("I have a question about my bill", ["my internet is down"]));
        assert!(!r.repeats(
            "what are your opening hours",
            ["I want to change my address"]
        ));
        assert!(!r.repeats("", [""]));
    }
}
