//! A phone number said aloud: "zero six, one two three, four five six seven eight",
//! "06-12345678", "plus three one six ...", "nul zes een twee ...". Recognition writes digits
//! either as numerals or as words; both are read, and a "double" doubles the next digit.

/// Fewer digits than this is not a number to call back (it is a time, a count, a position).
const MIN_DIGITS: usize = 6;

fn digit(word: &str) -> Option<char> {
    Some(match word {
        "zero" | "oh" | "o" | "nul" => '0',
        "one" | "een" | "één" => '1',
        "two" | "twee" => '2',
        "three" | "drie" => '3',
        "four" | "vier" => '4',
        "five" | "vijf" => '5',
        "six" | "zes" => '6',
        "seven" | "zeven" => '7',
        "eight" | "acht" => '8',
        "nine" | "negen" => '9',
        _ => return None,
    })
}

/// The longest run of digits the caller said, if it is long enough to be a phone number.
/// A leading "plus" (or "+") is kept.
pub fn spoken_number(said: &str) -> Option<String> {
    let lower = said.to_lowercase();
    let tokens = lower
        .split(|c: char| !(c.is_alphanumeric() || c == '+'))
        .filter(|t| !t.is_empty());
    let mut best = String::new();
    let mut run = String::new();
    let mut double = false;
    for t in tokens {
        let digits: Option<String> = if t.chars().all(|c| c.is_ascii_digit() || c == '+') {
            Some(t.to_string())
        } else {
            digit(t).map(|d| d.to_string())
        };
        match digits {
            Some(d) => {
                if double {
                    run.push_str(&d[..1]);
                    double = false;
                }
                if d.starts_with('+') && !run.is_empty() {
                    run.clear();
                }
                run.push_str(&d);
            }
            None if t == "double" || t == "dubbel" => double = true,
            None if (t == "plus") && run.is_empty() => run.push('+'),
            None => {
                if run.trim_start_matches('+').len() > best.trim_start_matches('+').len() {
                    best = std::mem::take(&mut run);
                }
                run.clear();
                double = false;
            }
        }
    }
    if run.trim_start_matches('+').len() > best.trim_start_matches('+').len() {
        best = run;
    }
    let digits = best.chars().filter(|c| c.is_ascii_digit()).count();
    let plus_only_at_start = !best.get(1..).unwrap_or("").contains('+');
    (digits >= MIN_DIGITS && plus_only_at_start).then_some(best)
}

/// Why a number is not one Humanline may call back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberRefused {
    /// Withheld ("anonymous"), a SIP user name, or anything else that is not digits.
    #[error("`{0}` is not a phone number")]
    NotANumber(String),
    /// A national number ("06 ...") and no `country_code` to make it international.
    #[error("`{0}` is not an international (E.164) number")]
    NotInternational(String),
    /// Not on the operator's list (`allowed_prefixes`): e.g. a premium-rate number.
    #[error("{0} is not a number this centre calls")]
    NotAllowed(String),
}

/// E.164 allows at most 15 digits after the `+`.
const E164_MAX_DIGITS: usize = 15;
/// Fewer than this after the `+` is no callable number (a country code and a few digits).
const E164_MIN_DIGITS: usize = 8;

/// Which numbers Humanline may call back: E.164 only, and, when the operator lists
/// prefixes (`[callback_numbers] allowed_prefixes`), only numbers that start with one, so a
/// caller cannot have a premium-rate or foreign number dialed at the centre's cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NumberPolicy {
    /// E.164 prefixes ("+31", "+1555"); empty allows every E.164 number.
    pub allowed_prefixes: Vec<String>,
    /// The centre's country code ("+31"): a national number ("06...") is taken as in that
    /// country, an international one ("0031...") as such. Without it only "+..." is taken.
    pub country_code: Option<String>,
}

/// Whether `s` is a prefix an operator may list: "+" and 1 to 15 digits, not starting with 0.
pub fn valid_prefix(s: &str) -> bool {
    s.strip_prefix('+').is_some_and(|d| {
        (1..=E164_MAX_DIGITS).contains(&d.len())
            && d.bytes().all(|b| b.is_ascii_digit())
            && !d.starts_with('0')
    })
}

impl NumberPolicy {
    /// The number to dial for what a caller gave (caller ID, keyed or spoken), in E.164,
    /// or why there is none.
    pub fn dialable(&self, raw: &str) -> Result<String, NumberRefused> {
        let not_a_number = || NumberRefused::NotANumber(raw.chars().take(40).collect());
        let mut digits = String::new();
        let mut plus = false;
        for (i, c) in raw.trim().chars().enumerate() {
            match c {
                '0'..='9' => digits.push(c),
                '+' if i == 0 => plus = true,
                ' ' | '-' | '.' | '(' | ')' => {}
                _ => return Err(not_a_number()),
            }
            if digits.len() > E164_MAX_DIGITS + 4 {
                return Err(not_a_number());
            }
        }
        if digits.is_empty() {
            return Err(not_a_number());
        }
        let e164 = if plus {
            format!("+{digits}")
        } else if let Some(intl) = digits.strip_prefix("00") {
            format!("+{intl}")
        } else if let (Some(national), Some(cc)) = (digits.strip_prefix('0'), &self.country_code) {
            format!("{cc}{national}")
        } else {
            return Err(NumberRefused::NotInternational(digits));
        };
        let body = &e164[1..];
        if !(E164_MIN_DIGITS..=E164_MAX_DIGITS).contains(&body.len()) || body.starts_with('0') {
            return Err(NumberRefused::NotInternational(e164));
        }
        if !self.allowed_prefixes.is_empty()
            && !self
                .allowed_prefixes
                .iter()
                .any(|p| e164.starts_with(p.as_str()))
        {
            return Err(NumberRefused::NotAllowed(e164));
        }
        Ok(e164)
    }
}

#[cfg(test)]
mod tests {
    use super::{NumberPolicy, NumberRefused, spoken_number, valid_prefix};

    #[test]
    fn only_e164_numbers_on_the_operators_list_are_dialable() {
        let open = NumberPolicy::default();
        assert_eq!(open.dialable("+15550124").as_deref(), Ok("+15550124"));
        assert_eq!(
            open.dialable("+31 20 555-0100").as_deref(),
            Ok("+31205550100")
        );
        assert_eq!(
            open.dialable("0031205550100").as_deref(),
            Ok("+31205550100")
        );
        for withheld in [
            "anonymous",
            "Anonymous",
            "alice",
            "",
            "+",
            "sip:bob@x",
            "12ab",
        ] {
            assert!(
                matches!(open.dialable(withheld), Err(NumberRefused::NotANumber(_))),
                "{withheld}"
            );
        }
        // National without a country code, too short, too long, a leading zero after "+".
        assert!(open.dialable("0612345678").is_err());
        assert!(open.dialable("+1555").is_err());
        assert!(open.dialable("+1234567890123456").is_err());
        assert!(open.dialable("+0612345678").is_err());
        assert!(open.dialable(&"9".repeat(10_000)).is_err());

        let dutch = NumberPolicy {
            allowed_prefixes: vec!["+316".into(), "+3120".into()],
            country_code: Some("+31".into()),
        };
        assert_eq!(dutch.dialable("0612345678").as_deref(), Ok("+31612345678"));
        assert_eq!(
            dutch.dialable("020 555 0100").as_deref(),
            Ok("+31205550100")
        );
        // A premium-rate number (0900) and a foreign one are refused: toll fraud.
        assert_eq!(
            dutch.dialable("0900 123 4567"),
            Err(NumberRefused::NotAllowed("+319001234567".into()))
        );
        assert!(matches!(
            dutch.dialable("+15550124"),
            Err(NumberRefused::NotAllowed(_))
        ));
    }

    #[test]
    fn prefixes_are_plus_and_digits() {
        assert!(valid_prefix("+31") && valid_prefix("+1555"));
        for bad in ["31", "+", "+0", "+31a", "+1234567890123456", " +31"] {
            assert!(!valid_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn reads_numbers_as_callers_say_them() {
        assert_eq!(
            spoken_number("Call me on 06-12345678 please.").as_deref(),
            Some("0612345678")
        );
        assert_eq!(
            spoken_number("zero six, one two three, four five six seven eight").as_deref(),
            Some("0612345678")
        );
        assert_eq!(
            spoken_number("my number is plus three one 20 555 0100").as_deref(),
            Some("+31205550100")
        );
        assert_eq!(
            spoken_number("oh seven seven double nine one two three").as_deref(),
            Some("07799123")
        );
        assert_eq!(
            spoken_number("bel me op nul zes een twee drie vier vijf zes zeven acht").as_deref(),
            Some("0612345678")
        );
    }

    #[test]
    fn times_and_counts_are_not_numbers() {
        assert_eq!(spoken_number("call me back at three"), None);
        assert_eq!(spoken_number("in 20 minutes"), None);
        assert_eq!(spoken_number("yes please"), None);
        assert_eq!(spoken_number("I have 2 questions about 1 bill"), None);
    }
}
