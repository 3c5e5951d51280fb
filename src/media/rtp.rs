//! RTP packets (RFC 3550): a thin typed layer over the `rtp-types` crate.
//!
//! `rtp-types` (from the GStreamer Rust maintainers) does the byte work and checks lengths,
//! CSRC count, extension and padding before any field is read; here we add our error type,
//! recognise RTCP arriving on the RTP port, and give the rest of the media layer a plain
//! header struct.

use thiserror::Error;

/// A malformed or unwanted datagram. Never fatal: the session counts it and drops it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RtpError {
    #[error("datagram of {len} bytes is too short for an RTP header")]
    TooShort { len: usize },
    #[error("unsupported RTP version {0}")]
    BadVersion(u8),
    #[error("RTP packet truncated: needs {expected} bytes, has {actual}")]
    Truncated { expected: usize, actual: usize },
    #[error("invalid RTP padding length {0}")]
    BadPadding(u8),
    /// RTCP (payload types 200-204 in the second byte) on the RTP port, e.g. rtcp-mux peers.
    #[error("RTCP packet type {0} on the RTP port")]
    Rtcp(u8),
    #[error("payload type {0} does not fit in 7 bits")]
    InvalidPayloadType(u8),
    #[error("cannot write RTP packet: {0}")]
    Write(String),
}

/// The fixed RTP header fields we use (no CSRCs or extensions are ever sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub payload_type: u8,
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

/// A parsed packet borrowing its payload from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub header: RtpHeader,
    /// The payload with padding removed.
    pub payload: &'a [u8],
}

/// Parse one datagram. Checks everything `rtp-types` checks (version 2, lengths of CSRC list,
/// header extension and padding) and rejects RTCP sent to the RTP port.
pub fn parse(datagram: &[u8]) -> Result<RtpPacket<'_>, RtpError> {
    if datagram.len() < 12 {
        return Err(RtpError::TooShort {
            len: datagram.len(),
        });
    }
    // RTCP packet types SR..APP (200..=204) sit where RTP has marker + payload type; RFC 5761
    // reserves payload types 72-76 so the two can share a port.
    if let Some(&second) = datagram.get(1)
        && (200..=204).contains(&second)
    {
        return Err(RtpError::Rtcp(second));
    }
    let packet = rtp_types::RtpPacket::parse(datagram).map_err(|e| match e {
        rtp_types::RtpParseError::UnsupportedVersion(v) => RtpError::BadVersion(v),
        rtp_types::RtpParseError::Truncated { expected, actual } => {
            RtpError::Truncated { expected, actual }
        }
        rtp_types::RtpParseError::PaddingInvalid(p) => RtpError::BadPadding(p),
    })?;
    // `rtp_types::RtpPacket::payload` borrows the parser, not the datagram; slice ourselves
    // (the parser has checked the bounds, `get` keeps it panic-free regardless).
    let start = packet.payload_offset();
    let payload = datagram
        .get(start..start + packet.payload_len())
        .ok_or(RtpError::Truncated {
            expected: start + packet.payload_len(),
            actual: datagram.len(),
        })?;
    Ok(RtpPacket {
        header: RtpHeader {
            payload_type: packet.payload_type(),
            marker: packet.marker_bit(),
            sequence: packet.sequence_number(),
            timestamp: packet.timestamp(),
            ssrc: packet.ssrc(),
        },
        payload,
    })
}

/// Build a packet (no padding, CSRCs or extension), appending it to `out`.
pub fn write(header: &RtpHeader, payload: &[u8], out: &mut Vec<u8>) -> Result<(), RtpError> {
    if header.payload_type > 127 {
        return Err(RtpError::InvalidPayloadType(header.payload_type));
    }
    rtp_types::RtpPacketBuilder::<&[u8], &[u8]>::new()
        .payload_type(header.payload_type)
        .marker_bit(header.marker)
        .sequence_number(header.sequence)
        .timestamp(header.timestamp)
        .ssrc(header.ssrc)
        .payload(payload)
        .write_into_vec(out)
        .map_err(|e| RtpError::Write(e.to_string()))
}

/// Build a packet into a new buffer.
pub fn build(header: &RtpHeader, payload: &[u8]) -> Result<Vec<u8>, RtpError> {
    let mut out = Vec::with_capacity(12 + payload.len());
    write(header, payload, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> RtpHeader {
        RtpHeader {
            payload_type: 0,
            marker: true,
            sequence: 0xFFFE,
            timestamp: 0xDEAD_BEEF,
            ssrc: 0x1234_5678,
        }
    }

    #[test]
    fn build_then_parse() {
        let payload = [0xFFu8; 160];
        let bytes = build(&header(), &payload).expect("build");
        assert_eq!(bytes.len(), 172);
        // Byte layout per RFC 3550 section 5.1.
        assert_eq!(
            &bytes[..12],
            &[
                0x80, 0x80, 0xFF, 0xFE, 0xDE, 0xAD, 0xBE, 0xEF, 0x12, 0x34, 0x56, 0x78
            ]
        );
        let p = parse(&bytes).expect("parse");
        assert_eq!(p.header, header());
        assert_eq!(p.payload, &payload[..]);
    }

    #[test]
    fn known_packet_with_csrc_extension_and_padding() {
        // V=2 P=1 X=1 CC=1, M=0 PT=8, seq 1, ts 2, ssrc 3, one CSRC, a one-word extension,
        // payload "ab", 2 bytes of padding.
        let bytes = [
            0xB1, 0x08, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x03, // header
            0x00, 0x00, 0x00, 0x09, // CSRC
            0xBE, 0xDE, 0x00, 0x01, 0x01, 0x02, 0x03, 0x04, // extension
            b'a', b'b', 0x00, 0x02, // payload + padding
        ];
        let p = parse(&bytes).expect("parse");
        assert_eq!(p.header.payload_type, 8);
        assert!(!p.header.marker);
        assert_eq!(p.header.sequence, 1);
        assert_eq!(p.header.timestamp, 2);
        assert_eq!(p.header.ssrc, 3);
        assert_eq!(p.payload, b"ab");
    }

    #[test]
    fn malformed_datagrams_are_typed_errors() {
        assert_eq!(parse(&[]), Err(RtpError::TooShort { len: 0 }));
        assert_eq!(parse(&[0x80; 11]), Err(RtpError::TooShort { len: 11 }));
        // Version 1.
        let mut v1 = build(&header(), b"x").expect("build");
        v1[0] = 0x40;
        assert_eq!(parse(&v1), Err(RtpError::BadVersion(1)));
        // CSRC count 15 but no CSRCs.
        let mut cc = build(&header(), b"").expect("build");
        cc[0] = 0x8F;
        assert!(matches!(parse(&cc), Err(RtpError::Truncated { .. })));
        // Extension bit without an extension header.
        let mut x = build(&header(), b"").expect("build");
        x[0] = 0x90;
        assert!(matches!(parse(&x), Err(RtpError::Truncated { .. })));
        // Padding longer than the packet.
        let mut pad = build(&header(), b"abc").expect("build");
        pad[0] = 0xA0;
        if let Some(last) = pad.last_mut() {
            *last = 200;
        }
        assert!(matches!(parse(&pad), Err(RtpError::Truncated { .. })));
        // Padding of zero.
        let mut pad0 = build(&header(), b"abc").expect("build");
        pad0[0] = 0xA0;
        if let Some(last) = pad0.last_mut() {
            *last = 0;
        }
        assert_eq!(parse(&pad0), Err(RtpError::BadPadding(0)));
        // An RTCP receiver report.
        let rr = [0x81, 201, 0x00, 0x07, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0];
        assert_eq!(parse(&rr), Err(RtpError::Rtcp(201)));
    }

    #[test]
    fn payload_type_must_fit() {
        let mut h = header();
        h.payload_type = 128;
        assert_eq!(build(&h, b""), Err(RtpError::InvalidPayloadType(128)));
    }

    proptest! {
        /// Any bytes at all: parse returns Ok or Err, and never panics; what parses has a
        /// payload inside the datagram.
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = parse(&data) {
                prop_assert!(p.payload.len() + 12 <= data.len());
            }
        }

        /// Version-2 headers with random flags, CSRC counts, extensions and padding: the
        /// shapes that reach the length checks.
        #[test]
        fn parse_never_panics_on_v2_headers(first in 0x80u8..0xC0,
                                            rest in proptest::collection::vec(any::<u8>(), 0..120)) {
            let mut data = vec![first];
            data.extend(rest);
            if let Ok(p) = parse(&data) {
                prop_assert!(p.payload.len() + 12 <= data.len());
            }
        }

        #[test]
        fn round_trip(pt in 0u8..128, marker: bool, seq: u16, ts: u32, ssrc: u32,
                      payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let h = RtpHeader { payload_type: pt, marker, sequence: seq, timestamp: ts, ssrc };
            let bytes = build(&h, &payload).expect("build");
            let p = parse(&bytes);
            if (72..=76).contains(&pt) && marker {
                // These collide with RTCP by design (RFC 5761 forbids them for RTP).
                prop_assert!(matches!(p, Err(RtpError::Rtcp(_))));
            } else {
                let p = p.expect("parse");
                prop_assert_eq!(p.header, h);
                prop_assert_eq!(p.payload, &payload[..]);
            }
        }
    }
}
