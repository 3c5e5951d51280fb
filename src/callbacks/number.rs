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

#[cfg(test)]
mod tests {
    use super::spoken_number;

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
