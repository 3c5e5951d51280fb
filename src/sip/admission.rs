//! Admission control for new calls: whether an initial INVITE is taken or refused with
//! `503 Service Unavailable` and `Retry-After`, decided before anything is answered (so a
//! caller is never refused after the 200). Sans-IO: the caller count and the time are passed
//! in.
//!
//! Two limits: calls in progress (each holds an RTP port, a recognizer and a share of the
//! decoders), and new calls per second (a token bucket holding one second's worth), so that
//! an INVITE flood cannot take the setup work away from the calls in progress.

use std::time::{Duration, Instant};

/// The limits, from the server settings (`[admission]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Calls in progress (inbound legs) beyond which new calls are refused.
    pub max_calls: usize,
    /// New calls admitted per second (also the burst).
    pub max_new_calls_per_second: u32,
}

impl AdmissionLimits {
    /// Bounds a setting must stay within.
    pub const MAX_CALLS: std::ops::RangeInclusive<usize> = 1..=10_000;
    pub const MAX_NEW_CALLS_PER_SECOND: std::ops::RangeInclusive<u32> = 1..=1_000;
}

impl Default for AdmissionLimits {
    /// 200 calls: the default RTP range (1000 ports) holds a caller and an agent leg each
    /// with room to spare; 20 new calls a second is about a tenth of what the stack sets up
    /// (BENCHMARKS.md, SIP call rate), so answering them never starves the calls in progress.
    fn default() -> Self {
        AdmissionLimits {
            max_calls: 200,
            max_new_calls_per_second: 20,
        }
    }
}

/// The decision for one new call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admit,
    /// Refuse with 503 and `Retry-After: retry_after_secs`.
    Refuse {
        retry_after_secs: u32,
        why: &'static str,
    },
}

/// The admission state: a token bucket for the setup rate.
#[derive(Debug, Clone)]
pub struct Admitter {
    limits: AdmissionLimits,
    tokens: f64,
    last: Option<Instant>,
}

/// How long a caller refused for capacity waits before trying again.
const RETRY_WHEN_FULL: u32 = 10;

impl Admitter {
    pub fn new(limits: AdmissionLimits) -> Self {
        Admitter {
            limits,
            tokens: f64::from(limits.max_new_calls_per_second.max(1)),
            last: None,
        }
    }

    pub fn limits(&self) -> AdmissionLimits {
        self.limits
    }

    /// Decides for a new call arriving at `now` while `active` calls are in progress; an
    /// admitted call takes a token.
    pub fn decide(&mut self, now: Instant, active: usize) -> Admission {
        let rate = f64::from(self.limits.max_new_calls_per_second.max(1));
        let elapsed = self
            .last
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.last = Some(self.last.map_or(now, |t| t.max(now)));
        self.tokens = (self.tokens + elapsed.as_secs_f64() * rate).min(rate);
        if active >= self.limits.max_calls {
            return Admission::Refuse {
                retry_after_secs: RETRY_WHEN_FULL,
                why: "all call slots are taken",
            };
        }
        if self.tokens < 1.0 {
            let wait = ((1.0 - self.tokens) / rate).ceil().max(1.0);
            return Admission::Refuse {
                retry_after_secs: wait.min(f64::from(RETRY_WHEN_FULL)) as u32,
                why: "too many new calls at once",
            };
        }
        self.tokens -= 1.0;
        Admission::Admit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_calls: usize, rate: u32) -> AdmissionLimits {
        AdmissionLimits {
            max_calls,
            max_new_calls_per_second: rate,
        }
    }

    #[test]
    fn a_burst_beyond_the_rate_is_refused_with_retry_after_and_refills() {
        let t0 = Instant::now();
        let mut a = Admitter::new(limits(100, 5));
        let decisions: Vec<_> = (0..12).map(|i| a.decide(t0, i)).collect();
        assert_eq!(
            decisions.iter().filter(|d| **d == Admission::Admit).count(),
            5
        );
        assert!(decisions[5..].iter().all(|d| matches!(
            d,
            Admission::Refuse {
                retry_after_secs: 1,
                ..
            }
        )));
        // a second later the bucket is full again, but not fuller
        let t1 = t0 + Duration::from_secs(1);
        let admitted = (0..12)
            .filter(|_| a.decide(t1, 0) == Admission::Admit)
            .count();
        assert_eq!(admitted, 5);
        // 200 ms refills one call at 5 per second
        assert_eq!(
            a.decide(t1 + Duration::from_millis(200), 0),
            Admission::Admit
        );
    }

    #[test]
    fn full_capacity_refuses_whatever_the_rate() {
        let t0 = Instant::now();
        let mut a = Admitter::new(limits(3, 100));
        assert_eq!(a.decide(t0, 2), Admission::Admit);
        assert!(matches!(
            a.decide(t0, 3),
            Admission::Refuse {
                retry_after_secs: RETRY_WHEN_FULL,
                ..
            }
        ));
        // a refusal costs no token
        let mut b = Admitter::new(limits(1, 1));
        assert!(matches!(b.decide(t0, 1), Admission::Refuse { .. }));
        assert_eq!(b.decide(t0, 0), Admission::Admit);
    }

    #[test]
    fn time_going_backwards_gives_no_tokens() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut a = Admitter::new(limits(100, 1));
        assert_eq!(a.decide(t0, 0), Admission::Admit);
        assert!(matches!(
            a.decide(t0 - Duration::from_secs(5), 0),
            Admission::Refuse { .. }
        ));
        assert!(matches!(a.decide(t0, 0), Admission::Refuse { .. }));
        assert_eq!(a.decide(t0 + Duration::from_secs(1), 0), Admission::Admit);
    }

    #[test]
    fn the_default_is_within_the_bounds() {
        let d = AdmissionLimits::default();
        assert!(AdmissionLimits::MAX_CALLS.contains(&d.max_calls));
        assert!(AdmissionLimits::MAX_NEW_CALLS_PER_SECOND.contains(&d.max_new_calls_per_second));
    }
}
