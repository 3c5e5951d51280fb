//! Text normalisation shared by every matcher: what speech recognition writes varies in case,
//! punctuation, accents and digits, while what we compare is the words.

use unicode_normalization::UnicodeNormalization;

/// Lower-cased ASCII words: accents folded ("één" -> "een"), apostrophes dropped inside
/// words ("don't" -> "dont"), every other non-alphanumeric character a separator.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for ch in text.nfkd() {
        if ch.is_ascii_alphanumeric() {
            current.push(ch.to_ascii_lowercase());
        } else if ch == '\'' || ch == '\u{2019}' || !ch.is_ascii() && is_combining(ch) {
            // Inside a word: "don't", or a combining accent left by NFKD.
        } else if !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn is_combining(ch: char) -> bool {
    matches!(ch as u32, 0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF)
}

/// Words joined by single spaces: the canonical form of a phrase.
pub fn canonical(text: &str) -> String {
    words(text).join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case_punctuation_and_accents() {
        assert_eq!(
            words("Hello, I'd like a HUMAN!"),
            ["hello", "id", "like", "a", "human"]
        );
        assert_eq!(
            words("Ik wil één medewerker."),
            ["ik", "wil", "een", "medewerker"]
        );
        assert_eq!(canonical("  a   real-person  "), "a real person");
        assert!(words("...").is_empty());
    }
}
