//! Turning what a caller said ("call me at three", "tomorrow morning", "in an hour") into a
//! time. Business-hours reading: "at three" means 15:00, not 03:00.

use super::UnixMs;
use crate::escape::normalize;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// The furthest ahead a caller may ask to be called back.
pub const MAX_AHEAD: i64 = 14 * DAY;
/// Time zones run from UTC-12:00 to UTC+14:00.
pub const UTC_OFFSET_MIN_RANGE: std::ops::RangeInclusive<i64> = -720..=840;

const NUMBERS: &[(&str, i64)] = &[
    ("one", 1),
    ("two", 2),
    ("three", 3),
    ("four", 4),
    ("five", 5),
    ("six", 6),
    ("seven", 7),
    ("eight", 8),
    ("nine", 9),
    ("ten", 10),
    ("eleven", 11),
    ("twelve", 12),
    ("fifteen", 15),
    ("twenty", 20),
    ("thirty", 30),
    ("forty", 40),
    ("fortyfive", 45),
    ("an", 1),
    ("a", 1),
    ("een", 1),
    ("twee", 2),
    ("drie", 3),
    ("vier", 4),
    ("vijf", 5),
    ("zes", 6),
    ("zeven", 7),
    ("acht", 8),
    ("negen", 9),
    ("tien", 10),
    ("elf", 11),
    ("twaalf", 12),
    ("half", 0),
];

fn number(word: &str) -> Option<i64> {
    word.parse()
        .ok()
        .or_else(|| NUMBERS.iter().find(|(w, _)| *w == word).map(|(_, n)| *n))
}

/// The offset in milliseconds, within the time zones that exist (configuration is checked;
/// this keeps the arithmetic safe whatever a caller passes).
fn offset_ms(utc_offset_min: i64) -> i64 {
    utc_offset_min.clamp(*UTC_OFFSET_MIN_RANGE.start(), *UTC_OFFSET_MIN_RANGE.end()) * MINUTE
}

/// `at` as the caller should hear it: (days from today, hour, minute), local time.
pub fn local_clock(at: UnixMs, now: UnixMs, utc_offset_min: i64) -> (u32, u8, u8) {
    let offset = offset_ms(utc_offset_min);
    let local = at.saturating_add(offset);
    let local_now = now.saturating_add(offset);
    let days = (local.div_euclid(DAY) - local_now.div_euclid(DAY)).clamp(0, u32::MAX as i64);
    let in_day = local.rem_euclid(DAY);
    (
        days as u32,
        (in_day / HOUR) as u8,
        (in_day % HOUR / MINUTE) as u8,
    )
}

/// Whether the caller named a time to be called back ("at three", "tomorrow morning").
pub fn names_time(said: &str) -> bool {
    // Any fixed instant will do: only whether a time is named matters.
    resolve_when(said, 0, 0).is_some()
}

/// The time a caller asked to be called back, from `now` in a time zone `utc_offset_min`
/// minutes east of UTC. `None` when no time is named (call as soon as possible).
pub fn resolve_when(said: &str, now: UnixMs, utc_offset_min: i64) -> Option<UnixMs> {
    let w = normalize::words(said);
    let has = |x: &str| w.iter().any(|v| v == x);
    let offset = offset_ms(utc_offset_min);
    let local_now = now.checked_add(offset)?;
    let midnight = local_now - local_now.rem_euclid(DAY);
    let to_utc = |local: i64| local.checked_sub(offset);

    // "in ten minutes", "in an hour", "in half an hour", "over een uur".
    if let Some(i) = w.iter().position(|v| v == "in" || v == "over") {
        let rest = &w[i + 1..];
        if rest.first().map(String::as_str) == Some("half") {
            return now.checked_add(30 * MINUTE);
        }
        if let (Some(n), Some(unit)) = (rest.first().and_then(|x| number(x)), rest.get(1)) {
            let unit = unit.as_str();
            let unit_ms = if unit.starts_with("minute") || unit.starts_with("minuten") {
                Some(MINUTE)
            } else if unit.starts_with("hour") || unit == "uur" {
                Some(HOUR)
            } else {
                None
            };
            // "in 99999999999999 minutes" is no time we can keep: not a time at all.
            if let Some(unit_ms) = unit_ms {
                return n
                    .checked_mul(unit_ms)
                    .filter(|ahead| (0..=MAX_AHEAD).contains(ahead))
                    .and_then(|ahead| now.checked_add(ahead));
            }
        }
    }

    let tomorrow = has("tomorrow") || has("morgen");
    let part_of_day = if has("morning") || has("ochtend") || has("morgens") {
        Some(9)
    } else if has("afternoon") || has("middag") || has("lunchtime") {
        Some(14)
    } else if has("evening") || has("tonight") || has("avond") {
        Some(18)
    } else {
        None
    };

    // "at three", "at 3 30", "at half past four", "om drie uur".
    let mut at: Option<(i64, i64)> = None;
    if let Some(i) = w.iter().position(|v| v == "at" || v == "om") {
        let rest = &w[i + 1..];
        let (mut h, mut m) = (None, 0);
        if rest.first().map(String::as_str) == Some("half")
            && rest.get(1).map(String::as_str) == Some("past")
        {
            h = rest.get(2).and_then(|x| number(x));
            m = 30;
        } else if let Some(first) = rest.first() {
            // "3", "330", "15"
            if let Ok(n) = first.parse::<i64>() {
                if n >= 100 {
                    h = Some(n / 100);
                    m = n % 100;
                } else {
                    h = Some(n);
                }
            } else {
                h = number(first);
            }
            if let Some(min) = rest
                .get(1)
                .and_then(|x| number(x))
                .filter(|n| (1..60).contains(n))
            {
                m = min;
            }
        }
        if let Some(mut h) = h.filter(|h| (0..24).contains(h)) {
            let pm = has("pm") || has("p") || part_of_day.is_some_and(|p| p >= 14);
            let am = has("am") || part_of_day == Some(9);
            if h < 12 && (pm || (!am && (1..=7).contains(&h))) {
                h += 12;
            }
            at = Some((h, m));
        }
    }

    let (h, m) = match (at, part_of_day) {
        (Some(hm), _) => hm,
        (None, Some(p)) => (p, 0),
        (None, None) if tomorrow => (9, 0),
        (None, None) => return None,
    };
    let mut local = midnight.checked_add(h * HOUR + m * MINUTE)?;
    if tomorrow {
        local = local.checked_add(DAY)?;
    } else if local <= local_now {
        // "this morning" said in the afternoon: as soon as possible.
        at?;
        local = local.checked_add(DAY)?;
    }
    to_utc(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-23 10:00 UTC
    const NOW: i64 = 1_795_428_000_000;

    fn hm(t: i64) -> (i64, i64, i64) {
        let day = (t - (NOW - NOW.rem_euclid(DAY))) / DAY;
        (day, t.rem_euclid(DAY) / HOUR, t.rem_euclid(HOUR) / MINUTE)
    }

    #[test]
    fn reads_times_the_way_callers_say_them() {
        assert_eq!(NOW.rem_euclid(DAY) / HOUR, 10);
        assert_eq!(resolve_when("yes please", NOW, 0), None);
        assert_eq!(
            hm(resolve_when("call me at three", NOW, 0).unwrap()),
            (0, 15, 0)
        );
        assert_eq!(hm(resolve_when("at 9 am", NOW, 0).unwrap()), (1, 9, 0));
        assert_eq!(
            hm(resolve_when("at half past four", NOW, 0).unwrap()),
            (0, 16, 30)
        );
        assert_eq!(
            hm(resolve_when("tomorrow morning", NOW, 0).unwrap()),
            (1, 9, 0)
        );
        assert_eq!(
            hm(resolve_when("this afternoon", NOW, 0).unwrap()),
            (0, 14, 0)
        );
        assert_eq!(resolve_when("in an hour", NOW, 0), Some(NOW + HOUR));
        assert_eq!(
            resolve_when("in 20 minutes", NOW, 0),
            Some(NOW + 20 * MINUTE)
        );
        assert_eq!(
            hm(resolve_when("morgen om drie uur", NOW, 0).unwrap()),
            (1, 15, 0)
        );
        let at = resolve_when("tomorrow at half past four", NOW, 60).unwrap();
        assert_eq!(local_clock(at, NOW, 60), (1, 16, 30));
        assert_eq!(local_clock(NOW + 20 * MINUTE, NOW, 0), (0, 10, 20));
        // In a zone one hour east, "at three" is 14:00 UTC.
        assert_eq!(hm(resolve_when("at three", NOW, 60).unwrap()), (0, 14, 0));
    }

    #[test]
    fn absurd_times_are_no_time_and_never_overflow() {
        for said in [
            "call me back in 99999999999999 minutes",
            "in 99999999999999 hours",
            "in 9223372036854775807 minutes",
            "in 153722867280912931 minutes",
            "in 15 days of hours",
            "in 337 hours",
        ] {
            assert_eq!(resolve_when(said, NOW, 0), None, "{said}");
            assert!(!names_time(said), "{said}");
        }
        assert_eq!(resolve_when("in 336 hours", NOW, 0), Some(NOW + MAX_AHEAD));
        // Extreme clocks and offsets do not overflow either.
        for now in [i64::MIN, i64::MAX, 0] {
            for offset in [i64::MIN, -720, 840, i64::MAX] {
                let _ = resolve_when("tomorrow at half past four", now, offset);
                let _ = resolve_when("in 20 minutes", now, offset);
                let _ = local_clock(now, 0, offset);
            }
        }
    }
}
