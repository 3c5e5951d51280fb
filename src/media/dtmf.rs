//! RFC 4733 telephone-events (DTMF digits carried in RTP).
//!
//! One key press is one event: a run of packets with the same RTP timestamp (the event's
//! start) and a growing duration; the last one has the E bit set and is sent three times.
//! The receiver reports each event once, keyed on (SSRC, timestamp), as soon as any packet of
//! it arrives — the start is what an IVR wants, and if the start packets are lost the end
//! packets still report it.

use std::collections::VecDeque;
use thiserror::Error;

/// Samples per 20 ms at 8 kHz: the usual step between event packets and of `duration`.
pub const STEP_SAMPLES: u16 = 160;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DtmfError {
    #[error("telephone-event payload of {0} bytes (need at least 4)")]
    TooShort(usize),
    #[error("'{0}' is not a DTMF digit")]
    NotADigit(char),
}

/// One telephone-event payload (RFC 4733 section 2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// 0-9, 10 = '*', 11 = '#', 12-15 = 'A'-'D'; other codes are tones/flash we ignore.
    pub event: u8,
    /// End of the event.
    pub end: bool,
    /// Power level in -dBm0 (0-63).
    pub volume: u8,
    /// Duration so far, in timestamp units (samples at 8 kHz).
    pub duration: u16,
}

impl TelephoneEvent {
    /// Parse the first four bytes (RFC 4733 allows several events in one packet for
    /// redundancy; only the first matters to us).
    pub fn parse(payload: &[u8]) -> Result<Self, DtmfError> {
        let &[event, flags, d0, d1, ..] = payload else {
            return Err(DtmfError::TooShort(payload.len()));
        };
        Ok(TelephoneEvent {
            event,
            end: flags & 0x80 != 0,
            volume: flags & 0x3F,
            duration: u16::from_be_bytes([d0, d1]),
        })
    }

    pub fn to_bytes(self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            (if self.end { 0x80 } else { 0 }) | (self.volume & 0x3F),
            d[0],
            d[1],
        ]
    }

    /// The digit for DTMF events 0-15.
    pub fn digit(self) -> Option<char> {
        event_to_digit(self.event)
    }
}

/// Map an event code to its key: 0-9, '*', '#', 'A'-'D'.
pub fn event_to_digit(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + event - 12)),
        _ => None,
    }
}

/// Map a key to its event code (letters case-insensitive).
pub fn digit_to_event(digit: char) -> Result<u8, DtmfError> {
    match digit {
        '0'..='9' => Ok(digit as u8 - b'0'),
        '*' => Ok(10),
        '#' => Ok(11),
        'A'..='D' => Ok(digit as u8 - b'A' + 12),
        'a'..='d' => Ok(digit as u8 - b'a' + 12),
        _ => Err(DtmfError::NotADigit(digit)),
    }
}

/// How many recent events to remember for de-duplication. End packets come within a few
/// tens of milliseconds of each other, so a handful is plenty.
const REMEMBERED: usize = 16;

#[derive(Debug, Clone, Copy)]
struct SeenEvent {
    ssrc: u32,
    timestamp: u32,
    event: u8,
    duration: u16,
    ended: bool,
}

/// Turns telephone-event packets into digits, each reported once.
#[derive(Debug, Default)]
pub struct DtmfReceiver {
    seen: VecDeque<SeenEvent>,
}

impl DtmfReceiver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed one telephone-event packet. Returns the digit the first time an event is seen.
    pub fn receive(
        &mut self,
        ssrc: u32,
        timestamp: u32,
        payload: &[u8],
    ) -> Result<Option<char>, DtmfError> {
        let ev = TelephoneEvent::parse(payload)?;
        if let Some(seen) = self
            .seen
            .iter_mut()
            .find(|s| s.ssrc == ssrc && s.timestamp == timestamp)
        {
            seen.duration = seen.duration.max(ev.duration);
            seen.ended |= ev.end;
            return Ok(None);
        }
        // RFC 4733 2.5.1.3: an event longer than 0xFFFF samples (8 s) goes on as a new
        // segment whose timestamp is the old one plus 0xFFFF; that is the same key press.
        let continuation = self.seen.iter().any(|s| {
            s.ssrc == ssrc
                && s.event == ev.event
                && !s.ended
                && s.duration == u16::MAX
                && timestamp == s.timestamp.wrapping_add(u32::from(u16::MAX))
        });
        if self.seen.len() == REMEMBERED {
            self.seen.pop_front();
        }
        self.seen.push_back(SeenEvent {
            ssrc,
            timestamp,
            event: ev.event,
            duration: ev.duration,
            ended: ev.end,
        });
        if continuation {
            return Ok(None);
        }
        let digit = ev.digit();
        if digit.is_none() {
            tracing::debug!(event = ev.event, "ignoring non-DTMF telephone-event");
        }
        Ok(digit)
    }
}

/// One packet of an outgoing event, to send one per 20 ms tick. Every packet of the event
/// carries the same RTP timestamp (the event's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfPacket {
    pub event: TelephoneEvent,
    /// Set on the first packet of the event (RFC 4733 2.5.1.1).
    pub marker: bool,
}

/// The packets for one key press, one per 20 ms: a start packet, updates with a growing
/// duration, then the end packet three times (RFC 4733 2.5.1.4; the repeats guard against
/// loss). `duration_ms` is the tone length (rounded up to whole 20 ms steps, at least one).
pub fn digit_packets(
    digit: char,
    duration_ms: u32,
    volume: u8,
) -> Result<Vec<DtmfPacket>, DtmfError> {
    let event = digit_to_event(digit)?;
    let steps = duration_ms.div_ceil(20).clamp(1, 400) as u16;
    let volume = volume.min(63);
    let mut packets = Vec::with_capacity(usize::from(steps) + 3);
    for i in 1..steps {
        packets.push(DtmfPacket {
            event: TelephoneEvent {
                event,
                end: false,
                volume,
                duration: i * STEP_SAMPLES,
            },
            marker: i == 1,
        });
    }
    for _ in 0..3 {
        packets.push(DtmfPacket {
            event: TelephoneEvent {
                event,
                end: true,
                volume,
                duration: steps * STEP_SAMPLES,
            },
            marker: false,
        });
    }
    if let Some(first) = packets.first_mut() {
        first.marker = true;
    }
    Ok(packets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_codes_map_to_digits() {
        let all: String = (0..16).filter_map(event_to_digit).collect();
        assert_eq!(all, "0123456789*#ABCD");
        assert_eq!(event_to_digit(16), None);
        for (i, c) in "0123456789*#ABCD".chars().enumerate() {
            assert_eq!(digit_to_event(c), Ok(i as u8));
        }
        assert_eq!(digit_to_event('b'), Ok(13));
        assert_eq!(digit_to_event('x'), Err(DtmfError::NotADigit('x')));
    }

    #[test]
    fn payload_layout() {
        // '5', end, volume 10, duration 800: RFC 4733 figure 1 layout.
        let ev = TelephoneEvent {
            event: 5,
            end: true,
            volume: 10,
            duration: 800,
        };
        assert_eq!(ev.to_bytes(), [5, 0x8A, 0x03, 0x20]);
        assert_eq!(TelephoneEvent::parse(&[5, 0x8A, 0x03, 0x20]), Ok(ev));
        // The reserved bit is ignored.
        assert_eq!(TelephoneEvent::parse(&[5, 0xCA, 0x03, 0x20]), Ok(ev));
        assert_eq!(
            TelephoneEvent::parse(&[5, 0x8A]),
            Err(DtmfError::TooShort(2))
        );
    }

    #[test]
    fn repeated_end_packets_report_the_digit_once() {
        let mut rx = DtmfReceiver::new();
        let packets = digit_packets('7', 100, 10).expect("packets");
        assert_eq!(packets.iter().filter(|p| p.event.end).count(), 3);
        let digits: Vec<char> = packets
            .iter()
            .filter_map(|p| rx.receive(1, 8000, &p.event.to_bytes()).expect("valid"))
            .collect();
        assert_eq!(digits, vec!['7']);
    }

    #[test]
    fn only_end_packets_still_report() {
        let mut rx = DtmfReceiver::new();
        let end = TelephoneEvent {
            event: 11,
            end: true,
            volume: 10,
            duration: 960,
        }
        .to_bytes();
        let got: Vec<_> = (0..3)
            .filter_map(|_| rx.receive(1, 1600, &end).expect("valid"))
            .collect();
        assert_eq!(got, vec!['#']);
    }

    #[test]
    fn same_digit_twice_is_two_presses() {
        let mut rx = DtmfReceiver::new();
        let mut digits = String::new();
        for ts in [1000u32, 3000] {
            for p in digit_packets('1', 60, 10).expect("packets") {
                if let Some(d) = rx.receive(1, ts, &p.event.to_bytes()).expect("valid") {
                    digits.push(d);
                }
            }
        }
        assert_eq!(digits, "11");
    }

    #[test]
    fn long_event_continuation_is_one_press() {
        let mut rx = DtmfReceiver::new();
        let long = TelephoneEvent {
            event: 3,
            end: false,
            volume: 10,
            duration: u16::MAX,
        };
        assert_eq!(rx.receive(1, 100, &long.to_bytes()), Ok(Some('3')));
        let next = TelephoneEvent {
            duration: 160,
            ..long
        };
        assert_eq!(
            rx.receive(1, 100 + u32::from(u16::MAX), &next.to_bytes()),
            Ok(None)
        );
    }

    #[test]
    fn sender_packets_grow_and_end() {
        let p = digit_packets('*', 100, 99).expect("packets");
        // 5 steps of 20 ms: 4 updates (160..640) then the end at 800, three times.
        let durations: Vec<u16> = p.iter().map(|p| p.event.duration).collect();
        assert_eq!(durations, vec![160, 320, 480, 640, 800, 800, 800]);
        assert!(p[0].marker && p.iter().skip(1).all(|p| !p.marker));
        assert!(
            p.iter()
                .all(|p| p.event.event == 10 && p.event.volume == 63)
        );
        let one = digit_packets('0', 0, 10).expect("packets");
        assert_eq!(one.len(), 3);
        assert!(one[0].marker);
        assert!(digit_packets('z', 100, 10).is_err());
    }

    #[test]
    fn garbage_payload_is_an_error() {
        let mut rx = DtmfReceiver::new();
        assert_eq!(rx.receive(1, 1, &[1, 2, 3]), Err(DtmfError::TooShort(3)));
        // Non-DTMF events (e.g. 16 = flash) are not digits.
        assert_eq!(rx.receive(1, 2, &[16, 0x80, 0, 160]), Ok(None));
    }
}
