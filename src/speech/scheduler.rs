//! Which decode runs next, and which are not worth running at all: the [`super::DecoderPool`]'s
//! policy as a sans-IO queue (time passed in), so ordering, shedding and overload are tested
//! without threads, clocks or a model.
//!
//! The rules, in the order a caller would notice them:
//! - **Finals first.** A final is what the brain acts on (and the one decode a caller waits
//!   for once they stop talking), so a queued final always runs before any partial; then a
//!   partial taken at a pause in speech (it holds everything said so far and is usually the
//!   utterance's whole text); then other partials. Oldest first within each class.
//! - **Partials are shed first.** Only the newest partial of an utterance is kept (a newer one
//!   takes the older one's place in line); a final or pause partial drops the older partials of
//!   its utterance (and asks the pool to abort a running one); a partial that has waited longer
//!   than [`SchedulerConfig::partial_max_wait_ms`] is dropped when its turn comes (the caller has
//!   said more since); a full queue sheds its oldest partial for a final. A pause partial, which
//!   usually stands in for the final, waits as long as a final may.
//! - **No caller waits on a decode that will not come in time.** A final whose expected wait is
//!   over [`SchedulerConfig::final_max_wait_ms`] is refused at once, and a queued final that has
//!   waited that long is dropped instead of decoded: either way its reply says
//!   [`SpeechError::Behind`], and the driver sends the caller to a person.
//! - **A call that hangs up** takes its queued decodes with it ([`DecodeQueue::cancel_stream`]).
//! - **Calls before everything else.** A decode nobody is waiting for on a line (the operator
//!   console hearing a recording) runs after every call's decode, never on the last free
//!   decoder (a call's final arriving just after it would wait a whole decode), is shed
//!   first, and is dropped ([`Dropped::Unserved`]) after
//!   [`SchedulerConfig::background_max_wait_ms`], so the console hears "busy" rather than
//!   taking a decoder from a caller.
//!
//! Every job pushed comes back exactly once: popped to run, or in a [`Dropped`] list with the
//! reason, which the pool turns into the job's one reply.

use std::collections::VecDeque;
use std::time::Instant;

use super::SpeechError;
use super::recognizer::{DecodeJob, DecodeKind, JobId};

/// How urgent a job is. Declared in priority order (a smaller value runs first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum JobClass {
    Final,
    /// A partial requested at a pause in speech (see [`DecodeJob::at_pause`]).
    PausePartial,
    Partial,
    /// Not for a call (see [`DecodeJob::background`]), final or partial.
    Background,
}

impl JobClass {
    pub fn of(job: &DecodeJob) -> Self {
        if job.background {
            return JobClass::Background;
        }
        match (job.id.kind, job.at_pause) {
            (DecodeKind::Final, _) => JobClass::Final,
            (DecodeKind::Partial, true) => JobClass::PausePartial,
            (DecodeKind::Partial, false) => JobClass::Partial,
        }
    }

    fn is_partial(self) -> bool {
        self != JobClass::Final
    }
}

/// Queue limits.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// Most jobs waiting. A full queue sheds a partial for a final; full of finals, it refuses.
    pub max_queue: usize,
    /// A partial that has waited this long is dropped instead of run: by now the caller has
    /// said more, and a newer partial or the final covers it.
    pub partial_max_wait_ms: u64,
    /// Longest a final may wait for a decoder. A final expected to wait longer is refused
    /// when submitted, and one that has waited this long is dropped: the caller goes to a
    /// person instead (the brain's `speech_unavailable`). About the pause a caller accepts
    /// after speaking before the line feels dead.
    pub final_max_wait_ms: u64,
    /// Longest a background job ([`JobClass::Background`]) waits for a decoder a call does
    /// not need before it is dropped as [`Dropped::Unserved`].
    pub background_max_wait_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_queue: 32,
            partial_max_wait_ms: 500,
            final_max_wait_ms: 1_200,
            background_max_wait_ms: 10_000,
        }
    }
}

impl SchedulerConfig {
    pub fn validate(&self) -> Result<(), SpeechError> {
        if self.max_queue == 0 || self.final_max_wait_ms == 0 {
            return Err(SpeechError::InvalidConfig(
                "the decode queue needs room for a job and a final wait above 0 ms".into(),
            ));
        }
        Ok(())
    }
}

/// Why a job leaves the queue without running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// A newer job of its utterance covers it, or it waited past its use (partials only).
    Superseded,
    /// Shed for a final when the queue was full (partials only).
    Shed,
    /// A final (or the pause partial standing in for it) that could not be decoded in time:
    /// the caller should go to a person.
    Behind { wait_ms: u64 },
    /// Refused: the queue is full of jobs it cannot shed for this one.
    Full { capacity: usize },
    /// Its call hung up.
    Cancelled,
    /// A background job that found no decoder the calls could spare in time.
    Unserved { wait_ms: u64 },
}

impl Dropped {
    /// The reply a dropped job gets.
    pub fn error(self) -> SpeechError {
        match self {
            Dropped::Superseded | Dropped::Shed | Dropped::Cancelled => SpeechError::Superseded,
            Dropped::Behind { wait_ms } => SpeechError::Behind { wait_ms },
            Dropped::Full { capacity } => SpeechError::Overloaded { capacity },
            Dropped::Unserved { wait_ms } => SpeechError::Behind { wait_ms },
        }
    }
}

/// A queued job.
#[derive(Debug)]
pub struct Entry<T> {
    pub id: JobId,
    pub class: JobClass,
    /// When the utterance started waiting (a replacing partial keeps its predecessor's time).
    pub enqueued: Instant,
    pub payload: T,
}

/// What a push did besides queueing (or not) the new job.
#[derive(Debug)]
pub struct Pushed<T> {
    /// The new job, when it was not queued, with the reason.
    pub refused: Option<(T, Dropped)>,
    /// Queued jobs it displaced.
    pub dropped: Vec<(T, Dropped)>,
    /// Running partials of this utterance older than `seq` are now useless: abort them.
    pub abort_older_partials: Option<(JobId, u64)>,
}

/// What the pool knows that the queue does not: how many decoders there are and how long a
/// decode takes (measured).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    pub workers: usize,
    /// Decoders busy now.
    pub running: usize,
    /// Typical decode time (ms).
    pub decode_ms: f64,
}

impl Capacity {
    /// Expected wait (ms) of a final queued behind `finals_ahead` other finals.
    pub fn final_wait_ms(&self, finals_ahead: usize) -> u64 {
        let workers = self.workers.max(1);
        let free = workers.saturating_sub(self.running);
        if finals_ahead < free {
            return 0;
        }
        // Its place among the finals that wait for a decoder to come free: a busy decoder
        // is on average half-way through its decode, one that takes a final now a whole one.
        let place = finals_ahead - free;
        let first = if self.running > 0 { 0.5 } else { 1.0 };
        let rounds = (place / workers) as f64 + first;
        (rounds * self.decode_ms.max(0.0)).round() as u64
    }
}

impl Capacity {
    /// Whether starting a plain partial now could make a final miss its deadline: it would
    /// take the last free decoder, and a decode takes more than half of `final_max_wait_ms`.
    /// A running decode cannot be stopped in time (whisper.cpp checks its abort callback only
    /// after the encoder, which is most of a short decode), so a final or pause partial that
    /// arrives just after the partial starts waits most of a decode; on a CPU that slow, the
    /// caller would go to a person without their words. Without plain partials the pause
    /// partial, which usually holds the whole utterance, starts the moment the caller pauses.
    pub fn partials_would_delay_finals(&self, final_max_wait_ms: u64) -> bool {
        let free = self.workers.max(1).saturating_sub(self.running);
        free <= 1 && self.decode_ms * 2.0 > final_max_wait_ms as f64
    }

    /// Whether a background job may start now: a decoder stays free for a call's final. A
    /// pool of one decoder runs it only when that decoder is idle (and nothing else waits,
    /// since a background job is the last in line).
    pub fn may_run_background(&self) -> bool {
        let workers = self.workers.max(1);
        let free = workers.saturating_sub(self.running);
        if workers == 1 { free == 1 } else { free >= 2 }
    }
}

/// The pool's queue. Generic over what rides along with each job (the pool's reply).
#[derive(Debug)]
pub struct DecodeQueue<T> {
    cfg: SchedulerConfig,
    entries: VecDeque<Entry<T>>,
}

impl<T> DecodeQueue<T> {
    pub fn new(cfg: SchedulerConfig) -> Result<Self, SpeechError> {
        cfg.validate()?;
        Ok(DecodeQueue {
            cfg,
            entries: VecDeque::new(),
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queued jobs of each class, in [`JobClass`] order.
    pub fn counts(&self) -> [usize; 4] {
        let mut n = [0; 4];
        for e in &self.entries {
            n[e.class as usize] += 1;
        }
        n
    }

    /// How long the oldest job of `class` (any class for `None`) has waited.
    pub fn oldest_wait_ms(&self, now: Instant, class: Option<JobClass>) -> Option<u64> {
        self.entries
            .iter()
            .filter(|e| class.is_none_or(|c| e.class == c))
            .map(|e| ms_between(e.enqueued, now))
            .max()
    }

    /// Offer a job at `now`.
    pub fn push(
        &mut self,
        now: Instant,
        id: JobId,
        class: JobClass,
        payload: T,
        cap: Capacity,
    ) -> Pushed<T> {
        let mut out = Pushed {
            refused: None,
            dropped: Vec::new(),
            abort_older_partials: None,
        };
        let same_utt = |e: &Entry<T>| e.id.stream == id.stream && e.id.utterance == id.utterance;
        let mut enqueued = now;
        if class == JobClass::Partial {
            // Only the newest partial of an utterance is worth running: take the older one's
            // place in line and its age (the utterance has waited that long for a partial).
            if let Some(slot) = self
                .entries
                .iter_mut()
                .find(|e| e.class == JobClass::Partial && same_utt(e))
            {
                if slot.id.seq > id.seq {
                    out.refused = Some((payload, Dropped::Superseded));
                    return out;
                }
                let old = std::mem::replace(
                    slot,
                    Entry {
                        id,
                        class,
                        enqueued: slot.enqueued,
                        payload,
                    },
                );
                out.dropped.push((old.payload, Dropped::Superseded));
                return out;
            }
        } else if class != JobClass::Background {
            // A final or a pause partial holds everything the older partials of its
            // utterance would say.
            let mut i = 0;
            while i < self.entries.len() {
                let e = &self.entries[i];
                if e.class.is_partial() && same_utt(e) && e.id.seq < id.seq {
                    if let Some(old) = self.entries.remove(i) {
                        // A pause partial replaced by a newer one keeps its place in line.
                        if class == JobClass::PausePartial {
                            enqueued = enqueued.min(old.enqueued);
                        }
                        out.dropped.push((old.payload, Dropped::Superseded));
                    }
                } else {
                    i += 1;
                }
            }
            out.abort_older_partials = Some((id, id.seq));
        }
        if class == JobClass::Final {
            let ahead = self
                .entries
                .iter()
                .filter(|e| e.class == JobClass::Final)
                .count();
            let wait_ms = cap.final_wait_ms(ahead);
            if wait_ms > self.cfg.final_max_wait_ms {
                out.refused = Some((payload, Dropped::Behind { wait_ms }));
                return out;
            }
        }
        if self.entries.len() >= self.cfg.max_queue {
            // Shed the least urgent, oldest queued partial (background jobs first) for a
            // final or pause partial; a plain partial or background job is not worth
            // shedding another for.
            let shed = if matches!(class, JobClass::Partial | JobClass::Background) {
                None
            } else {
                self.entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.class.is_partial() && e.class > class)
                    .max_by_key(|(i, e)| (e.class, std::cmp::Reverse(*i)))
                    .map(|(i, _)| i)
            };
            match shed.and_then(|i| self.entries.remove(i)) {
                Some(old) => out.dropped.push((old.payload, Dropped::Shed)),
                None => {
                    let capacity = self.cfg.max_queue;
                    out.refused = Some((payload, Dropped::Full { capacity }));
                    return out;
                }
            }
        }
        self.entries.push_back(Entry {
            id,
            class,
            enqueued,
            payload,
        });
        out
    }

    /// The next job to run at `now` on a decoder that `cap` counts as free, with the jobs that
    /// expired on the way (stale partials, finals that waited too long).
    ///
    /// A plain partial is not started on the last free decoder when a decode takes more than
    /// half the time a final may wait ([`Capacity::partials_would_delay_finals`]): it is
    /// dropped as superseded, and the decoder stays free for the pause partial or final.
    /// A background job starts only where [`Capacity::may_run_background`].
    pub fn pop(&mut self, now: Instant, cap: Capacity) -> (Option<Entry<T>>, Vec<(T, Dropped)>) {
        let mut expired = self.expire(now);
        if cap.partials_would_delay_finals(self.cfg.final_max_wait_ms) {
            let (plain, keep): (VecDeque<Entry<T>>, VecDeque<Entry<T>>) =
                std::mem::take(&mut self.entries)
                    .into_iter()
                    .partition(|e| e.class == JobClass::Partial);
            self.entries = keep;
            expired.extend(plain.into_iter().map(|e| (e.payload, Dropped::Superseded)));
        }
        let background = cap.may_run_background();
        let next = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| background || e.class != JobClass::Background)
            .min_by_key(|(i, e)| (e.class, e.enqueued, *i))
            .map(|(i, _)| i)
            .and_then(|i| self.entries.remove(i));
        (next, expired)
    }

    /// Drop what has waited past its use.
    pub fn expire(&mut self, now: Instant) -> Vec<(T, Dropped)> {
        let (partial_max, final_max) = (self.cfg.partial_max_wait_ms, self.cfg.final_max_wait_ms);
        let background_max = self.cfg.background_max_wait_ms;
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.entries.len() {
            let e = &self.entries[i];
            let waited = ms_between(e.enqueued, now);
            let why = match e.class {
                // A pause partial usually stands in for its utterance's final: it waits as
                // long as a final may.
                JobClass::Final | JobClass::PausePartial if waited >= final_max => {
                    Some(Dropped::Behind { wait_ms: waited })
                }
                JobClass::Partial if waited >= partial_max => Some(Dropped::Superseded),
                JobClass::Background if waited >= background_max => {
                    Some(Dropped::Unserved { wait_ms: waited })
                }
                _ => None,
            };
            match why.and_then(|w| self.entries.remove(i).map(|e| (e.payload, w))) {
                Some(d) => out.push(d),
                None => i += 1,
            }
        }
        out
    }

    /// Remove every queued job of a stream.
    pub fn cancel_stream(&mut self, stream: u64) -> Vec<(T, Dropped)> {
        let (gone, keep): (VecDeque<Entry<T>>, VecDeque<Entry<T>>) =
            std::mem::take(&mut self.entries)
                .into_iter()
                .partition(|e| e.id.stream == stream);
        self.entries = keep;
        gone.into_iter()
            .map(|e| (e.payload, Dropped::Cancelled))
            .collect()
    }

    /// Empty the queue (shutdown).
    pub fn drain(&mut self) -> Vec<Entry<T>> {
        self.entries.drain(..).collect()
    }
}

fn ms_between(from: Instant, to: Instant) -> u64 {
    to.saturating_duration_since(from).as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::time::Duration;

    fn id(stream: u64, utterance: u64, seq: u64, kind: DecodeKind) -> JobId {
        JobId {
            stream,
            utterance,
            seq,
            kind,
        }
    }

    fn idle() -> Capacity {
        Capacity {
            workers: 1,
            running: 0,
            decode_ms: 200.0,
        }
    }

    fn queue(max_queue: usize) -> DecodeQueue<u32> {
        DecodeQueue::new(SchedulerConfig {
            max_queue,
            ..SchedulerConfig::default()
        })
        .expect("queue")
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn finals_run_before_pause_partials_before_partials() {
        let t0 = Instant::now();
        let mut q = queue(8);
        q.push(
            t0,
            id(1, 1, 0, DecodeKind::Partial),
            JobClass::Partial,
            1,
            idle(),
        );
        q.push(
            at(t0, 1),
            id(2, 1, 3, DecodeKind::Partial),
            JobClass::PausePartial,
            2,
            idle(),
        );
        q.push(
            at(t0, 2),
            id(3, 1, 0, DecodeKind::Final),
            JobClass::Final,
            3,
            idle(),
        );
        q.push(
            at(t0, 3),
            id(4, 1, 0, DecodeKind::Partial),
            JobClass::Partial,
            4,
            idle(),
        );
        q.push(
            at(t0, 4),
            id(5, 1, 0, DecodeKind::Final),
            JobClass::Final,
            5,
            idle(),
        );
        let order: Vec<u32> =
            std::iter::from_fn(|| q.pop(at(t0, 10), idle()).0.map(|e| e.payload)).collect();
        assert_eq!(order, [3, 5, 2, 1, 4]);
    }

    #[test]
    fn newest_partial_takes_the_older_ones_place() {
        let t0 = Instant::now();
        let mut q = queue(8);
        q.push(
            t0,
            id(1, 1, 0, DecodeKind::Partial),
            JobClass::Partial,
            10,
            idle(),
        );
        q.push(
            at(t0, 5),
            id(2, 1, 0, DecodeKind::Partial),
            JobClass::Partial,
            20,
            idle(),
        );
        let p = q.push(
            at(t0, 9),
            id(1, 1, 1, DecodeKind::Partial),
            JobClass::Partial,
            11,
            idle(),
        );
        assert_eq!(p.dropped, [(10, Dropped::Superseded)]);
        // An out-of-order older partial is refused, not queued.
        let p = q.push(
            at(t0, 9),
            id(1, 1, 0, DecodeKind::Partial),
            JobClass::Partial,
            9,
            idle(),
        );
        assert_eq!(p.refused, Some((9, Dropped::Superseded)));
        let (first, _) = q.pop(at(t0, 10), idle());
        let first = first.expect("job");
        assert_eq!((first.payload, first.enqueued), (11, t0));
    }

    #[test]
    fn a_final_or_pause_partial_drops_older_partials_and_aborts_running_ones() {
        let t0 = Instant::now();
        let mut q = queue(8);
        q.push(
            t0,
            id(1, 1, 0, DecodeKind::Partial),
            JobClass::Partial,
            1,
            idle(),
        );
        q.push(
            t0,
            id(2, 1, 0, DecodeKind::Partial),
            JobClass::Partial,
            2,
            idle(),
        );
        let p = q.push(
            t0,
            id(1, 1, 1, DecodeKind::Partial),
            JobClass::PausePartial,
            3,
            idle(),
        );
        assert_eq!(p.dropped, [(1, Dropped::Superseded)]);
        assert_eq!(p.abort_older_partials.map(|(_, s)| s), Some(1));
        let p = q.push(
            t0,
            id(1, 1, 2, DecodeKind::Final),
            JobClass::Final,
            4,
            idle(),
        );
        assert_eq!(p.dropped, [(3, Dropped::Superseded)]);
        assert_eq!(q.len(), 2, "stream 2's partial stays");
    }

    #[test]
    fn a_full_queue_sheds_partials_for_finals_and_refuses_beyond() {
        let t0 = Instant::now();
        let mut q = queue(2);
        q.push(
            t0,
            id(1, 1, 0, DecodeKind::Partial),
            JobClass::Partial,
            1,
            idle(),
        );
        q.push(
            t0,
            id(2, 1, 0, DecodeKind::Final),
            JobClass::Final,
            2,
            idle(),
        );
        let p = q.push(
            t0,
            id(3, 1, 0, DecodeKind::Partial),
            JobClass::Partial,
            3,
            idle(),
        );
        assert_eq!(p.refused, Some((3, Dropped::Full { capacity: 2 })));
        let p = q.push(
            t0,
            id(4, 1, 0, DecodeKind::Final),
            JobClass::Final,
            4,
            idle(),
        );
        assert_eq!((p.refused, p.dropped), (None, vec![(1, Dropped::Shed)]));
        let p = q.push(
            t0,
            id(5, 1, 0, DecodeKind::Final),
            JobClass::Final,
            5,
            idle(),
        );
        assert_eq!(p.refused, Some((5, Dropped::Full { capacity: 2 })));
    }

    #[test]
    fn stale_partials_and_late_finals_expire_instead_of_running() {
        let t0 = Instant::now();
        let mut q = queue(8);
        q.push(
            t0,
            id(1, 1, 0, DecodeKind::Final),
            JobClass::Final,
            1,
            idle(),
        );
        q.push(
            t0,
            id(2, 1, 0, DecodeKind::Partial),
            JobClass::Partial,
            2,
            idle(),
        );
        q.push(
            at(t0, 400),
            id(3, 1, 0, DecodeKind::Partial),
            JobClass::Partial,
            3,
            idle(),
        );
        let (next, expired) = q.pop(at(t0, 600), idle());
        assert_eq!(next.map(|e| e.payload), Some(1));
        assert_eq!(expired, [(2, Dropped::Superseded)]);
        q.push(
            at(t0, 600),
            id(4, 1, 0, DecodeKind::Final),
            JobClass::Final,
            4,
            idle(),
        );
        let pause = id(5, 1, 0, DecodeKind::Partial);
        q.push(at(t0, 600), pause, JobClass::PausePartial, 5, idle());
        let (next, expired) = q.pop(at(t0, 1_900), idle());
        assert!(next.is_none());
        assert_eq!(
            expired,
            [
                (3, Dropped::Superseded),
                (4, Dropped::Behind { wait_ms: 1_300 }),
                (5, Dropped::Behind { wait_ms: 1_300 })
            ]
        );
    }

    #[test]
    fn a_final_that_cannot_be_decoded_in_time_is_refused_at_once() {
        let t0 = Instant::now();
        let mut q = queue(32);
        let busy = Capacity {
            workers: 2,
            running: 2,
            decode_ms: 300.0,
        };
        let mut refused = None;
        for s in 0..10 {
            let p = q.push(
                t0,
                id(s, 1, 0, DecodeKind::Final),
                JobClass::Final,
                s as u32,
                busy,
            );
            if let Some(r) = p.refused {
                refused = Some((s, r.1));
                break;
            }
        }
        // 2 workers busy, 300 ms a decode: the 9th final would wait 0.5 + 4 rounds = 1350 ms.
        assert_eq!(refused, Some((8, Dropped::Behind { wait_ms: 1_350 })));
        assert_eq!(busy.final_wait_ms(0), 150);
        let idle2 = Capacity { running: 0, ..busy };
        assert_eq!(
            (
                idle2.final_wait_ms(0),
                idle2.final_wait_ms(1),
                idle2.final_wait_ms(2)
            ),
            (0, 0, 300)
        );
    }

    #[test]
    fn cancel_takes_a_streams_jobs_only() {
        let t0 = Instant::now();
        let mut q = queue(8);
        q.push(
            t0,
            id(1, 1, 0, DecodeKind::Final),
            JobClass::Final,
            1,
            idle(),
        );
        q.push(
            t0,
            id(2, 1, 0, DecodeKind::Final),
            JobClass::Final,
            2,
            idle(),
        );
        q.push(
            t0,
            id(1, 2, 0, DecodeKind::Partial),
            JobClass::Partial,
            3,
            idle(),
        );
        let gone: Vec<u32> = q.cancel_stream(1).into_iter().map(|(p, _)| p).collect();
        assert_eq!(gone, [1, 3]);
        assert_eq!(q.pop(t0, idle()).0.map(|e| e.payload), Some(2));
    }

    /// On a CPU where a decode takes over half a final's wait, the last free decoder is kept
    /// for the pause partial and the final: a plain partial is dropped instead of started; a
    /// second free decoder still runs it.
    #[test]
    fn slow_decodes_keep_the_last_decoder_for_the_pause_partial() {
        let t0 = Instant::now();
        let mut q = queue(8);
        let slow = Capacity {
            decode_ms: 900.0,
            ..idle()
        };
        q.push(
            t0,
            id(1, 1, 0, DecodeKind::Partial),
            JobClass::Partial,
            1,
            slow,
        );
        let (next, expired) = q.pop(at(t0, 10), slow);
        assert!(
            next.is_none(),
            "a plain partial started on the only decoder"
        );
        assert!(
            matches!(expired[..], [(1, Dropped::Superseded)]),
            "{expired:?}"
        );
        q.push(
            at(t0, 20),
            id(1, 1, 1, DecodeKind::Partial),
            JobClass::PausePartial,
            2,
            slow,
        );
        assert_eq!(q.pop(at(t0, 30), slow).0.map(|e| e.payload), Some(2));
        // With two decoders free, one may run the partial and the other waits for the final.
        q.push(
            at(t0, 40),
            id(2, 1, 0, DecodeKind::Partial),
            JobClass::Partial,
            3,
            slow,
        );
        let two = Capacity { workers: 2, ..slow };
        assert_eq!(q.pop(at(t0, 50), two).0.map(|e| e.payload), Some(3));
        // Fast decodes: partials run on the only decoder as before.
        q.push(
            at(t0, 60),
            id(3, 1, 0, DecodeKind::Partial),
            JobClass::Partial,
            4,
            idle(),
        );
        assert_eq!(q.pop(at(t0, 70), idle()).0.map(|e| e.payload), Some(4));
    }

    /// The console hearing a recording takes no decoder a caller needs: it runs after every
    /// call's job, never on the last free decoder of two, is shed first for a final, and
    /// is dropped as unserved when no decoder could be spared for it.
    #[test]
    fn a_background_job_waits_for_the_calls_and_a_spare_decoder() {
        let t0 = Instant::now();
        let mut q = queue(3);
        let pool = |running| Capacity {
            workers: 2,
            running,
            decode_ms: 300.0,
        };
        q.push(
            t0,
            id(9, 1, 0, DecodeKind::Final),
            JobClass::Background,
            1,
            pool(0),
        );
        q.push(
            at(t0, 1),
            id(1, 1, 0, DecodeKind::Partial),
            JobClass::Partial,
            2,
            pool(0),
        );
        // Calls first, even a plain partial queued after it.
        assert_eq!(q.pop(at(t0, 2), pool(0)).0.map(|e| e.payload), Some(2));
        // One decoder busy, one free: that one is kept for a call.
        let (next, expired) = q.pop(at(t0, 3), pool(1));
        assert!(next.is_none() && expired.is_empty());
        assert_eq!(q.len(), 1);
        // Both free: it runs.
        assert_eq!(q.pop(at(t0, 4), pool(0)).0.map(|e| e.payload), Some(1));
        // A pool of one runs it only on an idle decoder.
        let one = |running| Capacity {
            workers: 1,
            running,
            decode_ms: 300.0,
        };
        assert!(one(0).may_run_background() && !one(1).may_run_background());

        // A full queue sheds it for a call's final, before any call's partial.
        for (p, class, kind) in [
            (3, JobClass::Background, DecodeKind::Final),
            (4, JobClass::Partial, DecodeKind::Partial),
            (5, JobClass::Final, DecodeKind::Final),
        ] {
            q.push(at(t0, 10), id(u64::from(p), 1, 0, kind), class, p, pool(1));
        }
        let p = q.push(
            at(t0, 11),
            id(6, 1, 0, DecodeKind::Final),
            JobClass::Final,
            6,
            pool(1),
        );
        assert_eq!(p.dropped, [(3, Dropped::Shed)]);
        // A background job does not shed a call's.
        let p = q.push(
            at(t0, 12),
            id(9, 2, 0, DecodeKind::Final),
            JobClass::Background,
            7,
            pool(1),
        );
        assert_eq!(p.refused, Some((7, Dropped::Full { capacity: 3 })));

        // Kept waiting by the calls, it is dropped as unserved rather than run late.
        let mut q = queue(3);
        q.push(
            t0,
            id(9, 3, 0, DecodeKind::Final),
            JobClass::Background,
            8,
            pool(1),
        );
        let wait = SchedulerConfig::default().background_max_wait_ms;
        let (next, expired) = q.pop(at(t0, wait), pool(0));
        assert!(next.is_none());
        assert_eq!(expired, [(8, Dropped::Unserved { wait_ms: wait })]);
        assert!(matches!(
            Dropped::Unserved { wait_ms: wait }.error(),
            SpeechError::Behind { .. }
        ));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push {
            stream: u64,
            utterance: u64,
            class: JobClass,
            running: usize,
        },
        /// A decoder comes free, with `running` of the pool's `workers` busy; `slow` decodes
        /// take 900 ms (over half a final's wait).
        Pop {
            slow: bool,
            workers: usize,
            running: usize,
        },
        Cancel(u64),
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..4, 1u64..3, prop::sample::select(vec![JobClass::Final, JobClass::PausePartial, JobClass::Partial, JobClass::Background]), 0usize..3)
                .prop_map(|(stream, utterance, class, running)| Op::Push { stream, utterance, class, running }),
            3 => (any::<bool>(), 1usize..3)
                .prop_flat_map(|(slow, workers)| (Just(slow), Just(workers), 0..workers))
                .prop_map(|(slow, workers, running)| Op::Pop { slow, workers, running }),
            1 => (0u64..4).prop_map(Op::Cancel),
            2 => (0u64..800).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Whatever happens, every job comes back exactly once, the queue stays within its
        /// bound, a partial never runs while a final waits, a final is only ever dropped for
        /// lateness, a full queue of finals or its call's hang-up, and nothing runs after
        /// waiting longer than its class allows. A background job runs only when no call's
        /// job waits, and never on the last free decoder of a pool of several.
        #[test]
        fn every_job_is_answered_once_and_finals_come_first(ops in prop::collection::vec(op(), 1..120)) {
            let t0 = Instant::now();
            let cfg = SchedulerConfig { max_queue: 5, ..SchedulerConfig::default() };
            let mut q: DecodeQueue<u32> = DecodeQueue::new(cfg.clone()).expect("queue");
            let mut now = t0;
            let mut next_payload = 0u32;
            let mut seqs = std::collections::HashMap::new();
            let mut classes = std::collections::HashMap::new();
            let mut answered: HashSet<u32> = HashSet::new();
            let answer = |p: u32, answered: &mut HashSet<u32>| {
                assert!(answered.insert(p), "job {p} answered twice");
            };
            let check_drop = |p: u32, d: Dropped, classes: &std::collections::HashMap<u32, JobClass>| {
                if classes[&p] == JobClass::Final {
                    assert!(matches!(d, Dropped::Behind { .. } | Dropped::Full { .. } | Dropped::Cancelled), "final {p} dropped: {d:?}");
                }
            };
            for op in ops {
                match op {
                    Op::Push { stream, utterance, class, running } => {
                        let seq = seqs.entry((stream, utterance)).or_insert(0u64);
                        *seq += 1;
                        let kind = if class == JobClass::Final { DecodeKind::Final } else { DecodeKind::Partial };
                        let p = next_payload;
                        next_payload += 1;
                        classes.insert(p, class);
                        let cap = Capacity { workers: 2, running, decode_ms: 250.0 };
                        let pushed = q.push(now, id(stream, utterance, *seq, kind), class, p, cap);
                        for (d, why) in pushed.dropped.into_iter().chain(pushed.refused) {
                            check_drop(d, why, &classes);
                            answer(d, &mut answered);
                        }
                        prop_assert!(q.len() <= cfg.max_queue);
                    }
                    Op::Pop { slow, workers, running } => {
                        let cap = Capacity { workers, running, decode_ms: if slow { 900.0 } else { 200.0 } };
                        let (next, expired) = q.pop(now, cap);
                        for (d, why) in expired {
                            check_drop(d, why, &classes);
                            answer(d, &mut answered);
                        }
                        if let Some(e) = next {
                            let waited = now.duration_since(e.enqueued).as_millis() as u64;
                            match e.class {
                                JobClass::Partial => prop_assert!(waited < cfg.partial_max_wait_ms),
                                JobClass::Background => {
                                    prop_assert!(waited < cfg.background_max_wait_ms);
                                    prop_assert!(q.entries.iter().all(|w| w.class == JobClass::Background),
                                        "a background job ran while a call's job waited");
                                    prop_assert!(workers == 1 || running + 2 <= workers, "a background job took the last free decoder");
                                }
                                _ => prop_assert!(waited < cfg.final_max_wait_ms),
                            }
                            if e.class != JobClass::Final {
                                prop_assert_eq!(q.counts()[0], 0, "a partial ran while a final waited");
                            }
                            prop_assert!(!(cap.partials_would_delay_finals(cfg.final_max_wait_ms) && e.class == JobClass::Partial),
                                "a plain partial took the last decoder when decodes are slow");
                            answer(e.payload, &mut answered);
                        }
                    }
                    Op::Cancel(stream) => {
                        for (d, _) in q.cancel_stream(stream) {
                            answer(d, &mut answered);
                        }
                    }
                    Op::Wait(ms) => now += Duration::from_millis(ms),
                }
                // At most one plain partial queued per utterance.
                let mut seen = HashSet::new();
                for e in &q.entries {
                    if e.class == JobClass::Partial {
                        prop_assert!(seen.insert((e.id.stream, e.id.utterance)));
                    }
                }
            }
            for e in q.drain() {
                answer(e.payload, &mut answered);
            }
            prop_assert_eq!(answered.len() as u32, next_payload);
        }
    }
}
