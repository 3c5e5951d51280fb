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

/// Removes the loops Whisper falls into on short windows of telephone audio ("My internet is
/// down. My internet is down. My internet"): a run of words said again right after itself is
/// kept once, and a trailing fragment that only restarts an earlier sentence is dropped. What
/// is left is what the caller said, for matching and for the agent to read.
pub fn collapse_repeats(text: &str) -> String {
    let mut tokens: Vec<&str> = text.split_whitespace().collect();
    let key = |t: &str| canonical(t);
    let same = |a: &[&str], b: &[&str]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| key(x) == key(y))
    };
    let mut changed = true;
    while changed {
        changed = false;
        'outer: for period in (1..=tokens.len() / 2).rev() {
            for i in 0..=tokens.len() - 2 * period {
                if same(&tokens[i..i + period], &tokens[i + period..i + 2 * period]) {
                    tokens.drain(i + period..i + 2 * period);
                    changed = true;
                    break 'outer;
                }
            }
        }
    }
    // "... a human. I want": the tail restarts a sentence already said. The token cap may cut
    // it inside a word ("The conference is now unmuted. The conference is now unm"): a last
    // word with no punctuation after it may be the start of the sentence's word.
    let n = tokens.len();
    let ends_sentence = |t: &str| t.ends_with(['.', '?', '!', ',']);
    let restarts = |said: &[&str], tail: &[&str]| {
        let Some((last, rest)) = tail.split_last() else {
            return false;
        };
        let (cut, whole) = (key(last), key(said[said.len() - 1]));
        same(&said[..rest.len()], rest)
            && (cut == whole
                || (!ends_sentence(last) && !cut.is_empty() && whole.starts_with(&cut)))
    };
    for k in (1..n / 2 + 1).rev() {
        let tail = &tokens[n - k..];
        if n > k && ends_sentence(tokens[n - k - 1]) {
            let starts = (0..n - k).filter(|&s| s == 0 || ends_sentence(tokens[s - 1]));
            if starts
                .into_iter()
                .any(|s| s + k <= n - k && restarts(&tokens[s..s + k], tail))
            {
                tokens.truncate(n - k);
                break;
            }
        }
    }
    tokens.join(" ")
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

    #[test]
    fn whisper_loops_collapse_to_what_was_said() {
        assert_eq!(
            collapse_repeats("I want to talk to a human. I want to talk to a human. I want"),
            "I want to talk to a human."
        );
        assert_eq!(
            collapse_repeats("Director. Director. Director. Director"),
            "Director."
        );
        assert_eq!(
            collapse_repeats("My internet is down"),
            "My internet is down"
        );
        assert_eq!(collapse_repeats("very very good"), "very good");
        assert_eq!(collapse_repeats(""), "");
        assert_eq!(collapse_repeats("no, no thanks"), "no, thanks");
        // Cut by the token cap inside a word (tiny.en on real voices, a smaller window).
        assert_eq!(
            collapse_repeats("The conference is now unmuted. The conference is now unm"),
            "The conference is now unmuted."
        );
        assert_eq!(collapse_repeats("Received. Rece"), "Received.");
        // A word that is whole, or another word, is not a cut restart.
        assert_eq!(
            collapse_repeats("I want to pay. I want to pa."),
            "I want to pay. I want to pa."
        );
        assert_eq!(
            collapse_repeats("Agent. Age of empires"),
            "Agent. Age of empires"
        );
    }
}
