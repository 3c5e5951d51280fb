//! A small reorder buffer for the audio a remote party sends us.
//!
//! Packets go in as they arrive (sequence number, RTP timestamp, arrival time); audio comes out
//! in sequence order as soon as it is in order, so the speech recogniser gets it with no added
//! delay on a clean network. A hole in the sequence is waited for until either `max_reorder`
//! later packets are buffered or the oldest buffered one has waited `max_wait`; then it is
//! declared lost. Whenever the audio timeline has a hole (loss, silence suppression, or the
//! time a DTMF event replaced audio) a [`JitterOutput::Gap`] says how many samples are
//! missing, so downstream time stays right.
//!
//! Memory is bounded by `capacity` packets. Sequence numbers are unwrapped to 64 bits, so
//! wrap-around at 65535 is ordinary. A new SSRC means a new stream: the buffer resets.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Tuning for [`JitterBuffer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// A missing packet is declared lost once this many later packets are waiting.
    pub max_reorder: usize,
    /// ... or once the oldest waiting packet has waited this long.
    pub max_wait: Duration,
    /// Timestamp holes up to this many samples are filled with a gap; larger jumps are taken
    /// as a discontinuity (the sender's clock jumped) and not filled.
    pub max_gap_samples: u32,
    /// Hard bound on buffered packets.
    pub capacity: usize,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            max_reorder: 3,
            max_wait: Duration::from_millis(60),
            // Two seconds at 8 kHz: covers DTMF and short silence suppression.
            max_gap_samples: 16_000,
            capacity: 32,
        }
    }
}

/// What a pushed packet carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// G.711 audio: one byte per sample.
    Audio { payload_type: u8, payload: Vec<u8> },
    /// A packet of the same stream that carries no audio (telephone-event, comfort noise).
    /// It holds its sequence number so it is not taken for a loss.
    Placeholder,
}

/// What [`JitterBuffer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Same sequence number as a packet still buffered.
    Duplicate,
    /// Older than what was already released (a late packet or a duplicate of one).
    Late,
    /// The stream restarted (new SSRC, or the sequence jumped far back): buffer reset, and
    /// this packet starts the new stream.
    Reset,
    /// Buffer full; packet dropped. Cannot happen when `poll` is drained after each push.
    Overflow,
}

/// Released in order by [`JitterBuffer::poll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JitterOutput {
    Audio {
        timestamp: u32,
        payload_type: u8,
        payload: Vec<u8>,
    },
    /// `samples` of audio are missing starting at `timestamp`: fill them (with silence).
    Gap { timestamp: u32, samples: u32 },
}

/// Counters, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub late: u64,
    pub resets: u64,
    pub overflows: u64,
}

/// How far back (in packets) a sequence number may jump before it counts as a restart of
/// the stream rather than a late packet: 2 s of 20 ms packets.
const RESTART_DISTANCE: u64 = 100;
/// Holes bigger than this are a sequence jump, not packet loss, and are not counted as lost.
const MAX_COUNTED_LOSS: u64 = 1000;

#[derive(Debug)]
struct Slot {
    arrival: Instant,
    timestamp: u32,
    entry: Entry,
}

/// See the module documentation.
#[derive(Debug)]
pub struct JitterBuffer {
    config: JitterConfig,
    ssrc: Option<u32>,
    /// Highest unwrapped sequence number seen: the reference for unwrapping.
    highest: Option<u64>,
    /// Unwrapped sequence number of the next packet to release.
    next_seq: Option<u64>,
    /// RTP timestamp just after the last released audio.
    next_timestamp: Option<u32>,
    slots: BTreeMap<u64, Slot>,
    ready: VecDeque<JitterOutput>,
    stats: JitterStats,
}

impl JitterBuffer {
    pub fn new(config: JitterConfig) -> Self {
        let config = JitterConfig {
            max_reorder: config.max_reorder.max(1),
            capacity: config.capacity.max(config.max_reorder + 1),
            ..config
        };
        JitterBuffer {
            config,
            ssrc: None,
            highest: None,
            next_seq: None,
            next_timestamp: None,
            slots: BTreeMap::new(),
            ready: VecDeque::new(),
            stats: JitterStats::default(),
        }
    }

    /// The SSRC of the stream being buffered.
    pub fn ssrc(&self) -> Option<u32> {
        self.ssrc
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Forget the stream (e.g. after a re-INVITE changed the remote).
    pub fn reset(&mut self) {
        self.ssrc = None;
        self.highest = None;
        self.next_seq = None;
        self.next_timestamp = None;
        self.slots.clear();
        self.ready.clear();
    }

    /// Unwrap a 16-bit sequence number to the one nearest the highest seen.
    fn unwrap_seq(&self, seq: u16) -> u64 {
        match self.highest {
            // Start well above zero so unwrapping backwards never underflows.
            None => (1u64 << 32) + u64::from(seq),
            Some(h) => {
                let delta = i64::from(seq.wrapping_sub(h as u16) as i16);
                h.saturating_add_signed(delta)
            }
        }
    }

    /// Add one packet of the stream. Drain [`poll`](Self::poll) afterwards.
    pub fn push(
        &mut self,
        now: Instant,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
        entry: Entry,
    ) -> Pushed {
        let mut result = Pushed::Queued;
        if self.ssrc.is_some_and(|s| s != ssrc) {
            tracing::debug!(old = ?self.ssrc, new = ssrc, "jitter: new SSRC, resetting");
            self.reset();
            self.stats.resets += 1;
            result = Pushed::Reset;
        }
        self.ssrc = Some(ssrc);
        let ext = self.unwrap_seq(seq);
        if let Some(next) = self.next_seq
            && ext < next
        {
            if next - ext > RESTART_DISTANCE {
                tracing::debug!(seq, "jitter: sequence jumped back, restarting stream");
                self.reset();
                self.ssrc = Some(ssrc);
                self.stats.resets += 1;
                result = Pushed::Reset;
            } else {
                self.stats.late += 1;
                return Pushed::Late;
            }
        }
        let ext = self.unwrap_seq(seq);
        if self.slots.contains_key(&ext) {
            self.stats.duplicates += 1;
            return Pushed::Duplicate;
        }
        if self.slots.len() >= self.config.capacity {
            self.stats.overflows += 1;
            return Pushed::Overflow;
        }
        self.stats.received += 1;
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        if self.next_seq.is_none() {
            self.next_seq = Some(ext);
        }
        self.slots.insert(
            ext,
            Slot {
                arrival: now,
                timestamp,
                entry,
            },
        );
        result
    }

    /// The next output that is due at `now`, in order. Call until `None`.
    pub fn poll(&mut self, now: Instant) -> Option<JitterOutput> {
        loop {
            if let Some(out) = self.ready.pop_front() {
                return Some(out);
            }
            let next = self.next_seq?;
            if let Some(slot) = self.slots.remove(&next) {
                self.next_seq = Some(next + 1);
                self.release(slot);
                continue;
            }
            // `next` is missing: wait for it, or give it up.
            let (&first, _) = self.slots.first_key_value()?;
            let oldest = self.slots.values().map(|s| s.arrival).min()?;
            let waited_enough = now.saturating_duration_since(oldest) >= self.config.max_wait;
            if self.slots.len() < self.config.max_reorder && !waited_enough {
                return None;
            }
            let missing = first - next;
            if missing <= MAX_COUNTED_LOSS {
                self.stats.lost += missing;
            }
            tracing::trace!(missing, "jitter: declaring packets lost");
            self.next_seq = Some(first);
        }
    }

    /// When `poll` may next have something to release even if no packet arrives: the moment
    /// a hole will be given up.
    pub fn next_deadline(&self) -> Option<Instant> {
        let next = self.next_seq?;
        if self.slots.contains_key(&next) {
            return None;
        }
        let oldest = self.slots.values().map(|s| s.arrival).min()?;
        Some(oldest + self.config.max_wait)
    }

    fn release(&mut self, slot: Slot) {
        let Entry::Audio {
            payload_type,
            payload,
        } = slot.entry
        else {
            return;
        };
        let samples = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        if let Some(expected) = self.next_timestamp {
            let hole = slot.timestamp.wrapping_sub(expected);
            // `hole` read as a signed number: negative means overlap or a backwards clock;
            // neither is filled.
            if hole > 0 && hole <= self.config.max_gap_samples {
                self.ready.push_back(JitterOutput::Gap {
                    timestamp: expected,
                    samples: hole,
                });
            } else if hole != 0 {
                tracing::debug!(
                    expected,
                    got = slot.timestamp,
                    "jitter: timestamp discontinuity"
                );
            }
        }
        self.next_timestamp = Some(slot.timestamp.wrapping_add(samples));
        self.ready.push_back(JitterOutput::Audio {
            timestamp: slot.timestamp,
            payload_type,
            payload,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSRC: u32 = 0xABCD;

    fn audio(tag: u8) -> Entry {
        Entry::Audio {
            payload_type: 0,
            payload: vec![tag; 160],
        }
    }

    /// Push seq with timestamp seq*160 and payload tagged by seq.
    fn push(jb: &mut JitterBuffer, now: Instant, seq: u16) -> Pushed {
        jb.push(
            now,
            SSRC,
            seq,
            u32::from(seq).wrapping_mul(160),
            audio(seq as u8),
        )
    }

    fn drain(jb: &mut JitterBuffer, now: Instant) -> Vec<String> {
        std::iter::from_fn(|| jb.poll(now))
            .map(|o| match o {
                JitterOutput::Audio { payload, .. } => format!("a{}", payload[0]),
                JitterOutput::Gap { samples, .. } => format!("gap{samples}"),
            })
            .collect()
    }

    #[test]
    fn in_order_packets_pass_at_once() {
        let t = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        for seq in 1..=3u16 {
            assert_eq!(push(&mut jb, t, seq), Pushed::Queued);
            assert_eq!(drain(&mut jb, t), vec![format!("a{seq}")]);
        }
        assert_eq!(jb.next_deadline(), None);
    }

    #[test]
    fn reordering_is_repaired() {
        let t = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        push(&mut jb, t, 1);
        assert_eq!(drain(&mut jb, t), vec!["a1"]);
        push(&mut jb, t, 3);
        assert_eq!(drain(&mut jb, t), Vec::<String>::new(), "waits for 2");
        assert!(jb.next_deadline().is_some());
        push(&mut jb, t, 4);
        assert_eq!(drain(&mut jb, t), Vec::<String>::new());
        push(&mut jb, t, 2);
        assert_eq!(drain(&mut jb, t), vec!["a2", "a3", "a4"]);
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn duplicates_are_dropped() {
        let t = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        push(&mut jb, t, 10);
        push(&mut jb, t, 12);
        assert_eq!(push(&mut jb, t, 12), Pushed::Duplicate);
        assert_eq!(drain(&mut jb, t), vec!["a10"]);
        assert_eq!(push(&mut jb, t, 10), Pushed::Late);
        push(&mut jb, t, 11);
        assert_eq!(drain(&mut jb, t), vec!["a11", "a12"]);
        let s = jb.stats();
        assert_eq!((s.duplicates, s.late, s.received), (1, 1, 3));
    }

    #[test]
    fn loss_after_max_reorder_emits_a_gap() {
        let t = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        push(&mut jb, t, 1);
        drain(&mut jb, t);
        for seq in [3u16, 4] {
            push(&mut jb, t, seq);
            assert!(drain(&mut jb, t).is_empty());
        }
        push(&mut jb, t, 5);
        assert_eq!(drain(&mut jb, t), vec!["gap160", "a3", "a4", "a5"]);
        assert_eq!(jb.stats().lost, 1);
        // The late packet 2 is now too late.
        assert_eq!(push(&mut jb, t, 2), Pushed::Late);
    }

    #[test]
    fn loss_after_max_wait_emits_a_gap() {
        let t = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        push(&mut jb, t, 1);
        drain(&mut jb, t);
        let t1 = t + Duration::from_millis(20);
        push(&mut jb, t1, 4); // 2 and 3 missing
        assert!(drain(&mut jb, t1).is_empty());
        let deadline = jb.next_deadline().expect("deadline");
        assert_eq!(deadline, t1 + Duration::from_millis(60));
        assert!(drain(&mut jb, deadline - Duration::from_millis(1)).is_empty());
        assert_eq!(drain(&mut jb, deadline), vec!["gap320", "a4"]);
        assert_eq!(jb.stats().lost, 2);
        assert_eq!(jb.next_deadline(), None);
    }

    #[test]
    fn sequence_wraps_around() {
        let t = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let seqs = [65534u16, 65535, 1, 0, 2];
        let mut out = Vec::new();
        for s in seqs {
            push(&mut jb, t, s);
            out.extend(drain(&mut jb, t));
        }
        // Timestamps wrap too (seq * 160 modulo 2^32), and stay contiguous.
        assert_eq!(out, vec!["a254", "a255", "a0", "a1", "a2"]);
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn timestamp_gap_without_loss_is_filled() {
        // Silence suppression or a DTMF event: sequence contiguous, timestamp jumps.
        let t = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.push(t, SSRC, 1, 1000, audio(1));
        jb.push(t, SSRC, 2, 1000, Entry::Placeholder); // a telephone-event packet
        jb.push(t, SSRC, 3, 1000 + 160 + 800, audio(3));
        assert_eq!(drain(&mut jb, t), vec!["a1", "gap800", "a3"]);
        // A huge jump is a discontinuity: not filled.
        jb.push(t, SSRC, 4, 5_000_000, audio(4));
        assert_eq!(drain(&mut jb, t), vec!["a4"]);
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn new_ssrc_resets() {
        let t = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        push(&mut jb, t, 1);
        push(&mut jb, t, 3);
        assert_eq!(drain(&mut jb, t), vec!["a1"]);
        assert_eq!(jb.push(t, 99, 500, 7, audio(7)), Pushed::Reset);
        assert_eq!(jb.ssrc(), Some(99));
        assert_eq!(drain(&mut jb, t), vec!["a7"]);
        assert_eq!(jb.stats().resets, 1);
    }

    #[test]
    fn far_backwards_jump_restarts() {
        let t = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        push(&mut jb, t, 5000);
        drain(&mut jb, t);
        assert_eq!(push(&mut jb, t, 10), Pushed::Reset);
        assert_eq!(drain(&mut jb, t), vec!["a10"]);
    }

    #[test]
    fn memory_is_bounded() {
        let t = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig {
            max_reorder: 100,
            max_wait: Duration::from_secs(100),
            ..JitterConfig::default()
        });
        push(&mut jb, t, 1);
        drain(&mut jb, t);
        // 2 never comes; without draining, pushes stop at the capacity.
        let mut overflow = 0;
        for seq in 3..200u16 {
            if push(&mut jb, t, seq) == Pushed::Overflow {
                overflow += 1;
            }
        }
        assert!(jb.slots.len() <= 101);
        assert!(overflow > 0);
    }

    #[test]
    fn random_arrival_orders_release_everything_in_order() {
        use proptest::prelude::*;
        proptest!(|(start in any::<u16>(), swaps in proptest::collection::vec(0usize..40, 0..20))| {
            let t = Instant::now();
            let mut jb = JitterBuffer::new(JitterConfig::default());
            let mut order: Vec<u16> = (0..40u16).map(|i| start.wrapping_add(i)).collect();
            // Local swaps of neighbours: reordering by at most a couple of places.
            for i in swaps {
                if i + 1 < order.len() && i > 0 {
                    order.swap(i, i + 1);
                }
            }
            let mut out = Vec::new();
            for s in &order {
                let ts = u32::from(s.wrapping_sub(start)) * 160 + 7;
                jb.push(t, SSRC, *s, ts, audio(*s as u8));
                while let Some(o) = jb.poll(t) { out.push(o); }
            }
            // Give up on anything still missing.
            while let Some(o) = jb.poll(t + Duration::from_secs(1)) { out.push(o); }
            let mut samples = 0u64;
            let mut last_ts: Option<u32> = None;
            for o in &out {
                match o {
                    JitterOutput::Audio { timestamp, payload, .. } => {
                        if let Some(l) = last_ts { prop_assert!(timestamp.wrapping_sub(l) < 1 << 31); }
                        last_ts = Some(*timestamp);
                        samples += payload.len() as u64;
                    }
                    JitterOutput::Gap { samples: n, .. } => samples += u64::from(*n),
                }
            }
            // Timeline is whole apart from packets lost before the first released one.
            prop_assert!(samples <= 40 * 160);
            prop_assert_eq!(samples % 160, 0);
        });
    }
}
