//! One lexicon phrase, pre-normalised, with the matching rules every set of phrases shares.

use super::normalize;
use rphonetic::{Encoder, Metaphone};

/// Where in the heard words a phrase was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    pub start: usize,
    pub len: usize,
}

#[derive(Debug, Clone)]
pub(super) struct Phrase {
    /// Canonical text ("a real person").
    pub text: String,
    words: Vec<String>,
    /// Letters without spaces, for spelling similarity.
    joined: String,
    /// Phonetic code of the whole phrase.
    sound: String,
    pub letters: usize,
}

impl Phrase {
    pub fn new(text: &str) -> Option<Self> {
        let words = normalize::words(text);
        if words.is_empty() {
            return None;
        }
        let joined: String = words.concat();
        Some(Self {
            text: words.join(" "),
            sound: sound_of(&words),
            letters: joined.len(),
            joined,
            words,
        })
    }

    /// `word` (normalised) is one of this phrase's words.
    pub fn has_word(&self, word: &str) -> bool {
        self.words.iter().any(|w| w == word)
    }

    /// The heard words that equal this phrase (a trailing plural "s" allowed on each word):
    /// where they start and how many there are.
    pub fn find_exact(&self, heard: &[String]) -> Option<Span> {
        let n = self.words.len();
        heard.windows(n).enumerate().find_map(|(start, w)| {
            let hit = w
                .iter()
                .zip(&self.words)
                .all(|(h, p)| h == p || h.strip_suffix('s') == Some(p));
            hit.then_some(Span { start, len: n })
        })
    }

    /// Heard words, in a window of about the phrase's length, whose spelling and sound are
    /// both close to the phrase. Both must agree: spelling alone confuses "operation" with
    /// "operator", sound alone confuses "agenda" with "agent".
    pub fn find_fuzzy(&self, heard: &[String], min_letters: f32, min_sound: f32) -> Option<Span> {
        let n = self.words.len();
        for len in n.saturating_sub(1).max(1)..=n + 1 {
            for (start, w) in heard.windows(len).enumerate() {
                let joined: String = w.concat();
                if similarity(&joined, &self.joined) < min_letters {
                    continue;
                }
                if similarity(&sound_of(w), &self.sound) >= min_sound {
                    return Some(Span { start, len });
                }
            }
        }
        None
    }
}

/// 1 - normalised Levenshtein distance.
fn similarity(a: &str, b: &str) -> f32 {
    let longest = a.len().max(b.len());
    if longest == 0 {
        return 1.0;
    }
    1.0 - strsim::levenshtein(a, b) as f32 / longest as f32
}

fn sound_of(words: &[String]) -> String {
    // Words are ASCII alphanumerics (normalize::words), which Metaphone indexes safely.
    let m = Metaphone::new(None);
    words.iter().map(|w| m.encode(w)).collect()
}

/// Two heard words are "the same" for repetition: equal, plural of each other, or (for
/// words long enough to be distinctive) close in spelling and equal in sound.
pub fn fuzzy_word_eq(a: &str, b: &str) -> bool {
    if a == b || a.strip_suffix('s') == Some(b) || b.strip_suffix('s') == Some(a) {
        return true;
    }
    if a.len() < 4 || b.len() < 4 || !a.is_ascii() || !b.is_ascii() {
        return false;
    }
    let m = Metaphone::new(None);
    strsim::jaro_winkler(a, b) >= 0.9 && m.encode(a) == m.encode(b)
}
