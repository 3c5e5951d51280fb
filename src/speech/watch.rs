//! When a caller stops waiting on recognition and goes to a person instead: the driver's half
//! of the overload rule, sans-IO (time passed in). The pool's half is in [`super::scheduler`]:
//! a final it cannot decode in time is answered at once with [`SpeechError::Behind`]. Here:
//!
//! - a final refused or failed (behind, queue full, decoder error, pool gone) sends the caller
//!   to a person: without it nobody knows what they said;
//! - a refused or failed partial does not: the final still comes, or the rule above fires;
//! - a final still missing [`RecognitionWatch::deadline`] after the end of speech sends the
//!   caller to a person whatever the reason (a hung decoder, a lost reply): no caller waits on
//!   a decode that will not come.
//!
//! The driver turns [`Verdict::SendToPerson`] into the brain's `SpeechEngineDegraded`, which
//! routes a caller still in the IVR with reason `speech_unavailable`.

use std::time::{Duration, Instant};

use super::SpeechError;
use super::recognizer::DecodeKind;

/// What the driver should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep listening: a transcript is still coming.
    Wait,
    /// Recognition cannot answer this caller in time: a person should.
    SendToPerson(GiveUp),
}

/// Why recognition was given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The pool said a final could not be decoded in time, or its queue was full.
    Overloaded,
    /// A final's decode failed.
    Failed,
    /// No final by the deadline.
    Deadline,
}

impl GiveUp {
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUp::Overloaded => "recognition behind",
            GiveUp::Failed => "final decode failed",
            GiveUp::Deadline => "no final in time",
        }
    }
}

/// Watches one call's recognition.
#[derive(Debug, Clone)]
pub struct RecognitionWatch {
    limit: Duration,
    /// End of the speech whose final is awaited.
    awaiting: Option<Instant>,
}

/// The default deadline: longer than the pool's longest final wait (1.2 s) plus a slow
/// decode, so it fires only when something is wrong, not merely slow.
pub const FINAL_DEADLINE: Duration = Duration::from_secs(3);

impl Default for RecognitionWatch {
    fn default() -> Self {
        Self::new(FINAL_DEADLINE)
    }
}

impl RecognitionWatch {
    pub fn new(limit: Duration) -> Self {
        RecognitionWatch {
            limit,
            awaiting: None,
        }
    }

    /// The caller stopped talking at `now`: a final is owed.
    pub fn speech_ended(&mut self, now: Instant) {
        self.awaiting.get_or_insert(now);
    }

    /// A final arrived (or the recognizer closed the utterance itself, e.g. as noise).
    pub fn final_heard(&mut self) {
        self.awaiting = None;
    }

    /// The pool refused a decode when it was submitted.
    pub fn refused(&mut self, kind: DecodeKind, error: &SpeechError) -> Verdict {
        match (kind, error) {
            (DecodeKind::Partial, _) | (DecodeKind::Final, SpeechError::Superseded) => {
                Verdict::Wait
            }
            (DecodeKind::Final, SpeechError::Behind { .. } | SpeechError::Overloaded { .. }) => {
                self.awaiting = None;
                Verdict::SendToPerson(GiveUp::Overloaded)
            }
            (DecodeKind::Final, _) => {
                self.awaiting = None;
                Verdict::SendToPerson(GiveUp::Failed)
            }
        }
    }

    /// A decode came back without text (the recognizer's `DecodeFailed`; `behind`: the pool
    /// could not decode it in time).
    pub fn failed(&mut self, kind: DecodeKind, behind: bool) -> Verdict {
        if kind == DecodeKind::Partial {
            return Verdict::Wait;
        }
        self.awaiting = None;
        Verdict::SendToPerson(if behind {
            GiveUp::Overloaded
        } else {
            GiveUp::Failed
        })
    }

    /// When [`RecognitionWatch::on_time`] must be called next.
    pub fn deadline(&self) -> Option<Instant> {
        self.awaiting.map(|t| t + self.limit)
    }

    pub fn on_time(&mut self, now: Instant) -> Verdict {
        match self.deadline() {
            Some(at) if at <= now => {
                self.awaiting = None;
                Verdict::SendToPerson(GiveUp::Deadline)
            }
            _ => Verdict::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_final_that_cannot_come_sends_the_caller_to_a_person() {
        let mut w = RecognitionWatch::default();
        let t0 = Instant::now();
        w.speech_ended(t0);
        let behind = SpeechError::Behind { wait_ms: 1_500 };
        assert_eq!(w.refused(DecodeKind::Partial, &behind), Verdict::Wait);
        assert_eq!(
            w.refused(DecodeKind::Final, &behind),
            Verdict::SendToPerson(GiveUp::Overloaded)
        );
        assert_eq!(w.deadline(), None, "answered: no deadline left");
        w.speech_ended(t0);
        assert_eq!(
            w.failed(DecodeKind::Final, true),
            Verdict::SendToPerson(GiveUp::Overloaded)
        );
        w.speech_ended(t0);
        assert_eq!(
            w.failed(DecodeKind::Final, false),
            Verdict::SendToPerson(GiveUp::Failed)
        );
        assert_eq!(w.failed(DecodeKind::Partial, true), Verdict::Wait);
    }

    #[test]
    fn no_final_by_the_deadline_sends_the_caller_to_a_person_once() {
        let mut w = RecognitionWatch::new(Duration::from_millis(500));
        let t0 = Instant::now();
        assert_eq!(w.deadline(), None);
        w.speech_ended(t0);
        // A second utterance ending does not push the deadline back.
        w.speech_ended(t0 + Duration::from_millis(300));
        assert_eq!(w.deadline(), Some(t0 + Duration::from_millis(500)));
        assert_eq!(w.on_time(t0 + Duration::from_millis(499)), Verdict::Wait);
        assert_eq!(
            w.on_time(t0 + Duration::from_millis(500)),
            Verdict::SendToPerson(GiveUp::Deadline)
        );
        assert_eq!(w.on_time(t0 + Duration::from_secs(9)), Verdict::Wait);
        w.speech_ended(t0);
        w.final_heard();
        assert_eq!(w.on_time(t0 + Duration::from_secs(9)), Verdict::Wait);
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Ended,
        Final,
        RefusedFinal,
        FailedFinal,
        Partial,
        Wait(u64),
    }

    proptest! {
        /// Whatever the decoder does, a caller whose speech ended is either answered by a
        /// final or sent to a person no later than the deadline after it.
        #[test]
        fn no_caller_waits_past_the_deadline(evs in prop::collection::vec(prop_oneof![
            3 => Just(Ev::Ended), 2 => Just(Ev::Final), 1 => Just(Ev::RefusedFinal),
            1 => Just(Ev::FailedFinal), 2 => Just(Ev::Partial), 4 => (0u64..2_000).prop_map(Ev::Wait),
        ], 1..60)) {
            let limit = Duration::from_millis(1_000);
            let mut w = RecognitionWatch::new(limit);
            let t0 = Instant::now();
            let mut now = t0;
            // Oldest speech end with nothing decided since.
            let mut owed: Option<Instant> = None;
            let settle = |v: Verdict, owed: &mut Option<Instant>| {
                if let Verdict::SendToPerson(_) = v {
                    *owed = None;
                }
            };
            for ev in evs {
                match ev {
                    Ev::Ended => { w.speech_ended(now); owed.get_or_insert(now); }
                    Ev::Final => { w.final_heard(); owed = None; }
                    Ev::RefusedFinal => {
                        let v = w.refused(DecodeKind::Final, &SpeechError::Overloaded { capacity: 1 });
                        prop_assert!(matches!(v, Verdict::SendToPerson(_)));
                        settle(v, &mut owed);
                    }
                    Ev::FailedFinal => {
                        let v = w.failed(DecodeKind::Final, false);
                        prop_assert!(matches!(v, Verdict::SendToPerson(_)));
                        settle(v, &mut owed);
                    }
                    Ev::Partial => {
                        prop_assert_eq!(w.refused(DecodeKind::Partial, &SpeechError::Superseded), Verdict::Wait);
                    }
                    Ev::Wait(ms) => {
                        // The driver wakes at the watch's deadline, as a timer would.
                        let target = now + Duration::from_millis(ms);
                        while let Some(at) = w.deadline().filter(|at| *at <= target) {
                            now = at;
                            let v = w.on_time(now);
                            prop_assert!(matches!(v, Verdict::SendToPerson(_)));
                            settle(v, &mut owed);
                        }
                        now = target;
                    }
                }
                if let Some(since) = owed {
                    prop_assert!(now.duration_since(since) <= limit, "a caller waited past the deadline");
                    prop_assert_eq!(w.deadline(), Some(since + limit));
                }
            }
        }
    }
}
