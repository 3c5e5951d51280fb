//! The entry points of the fuzz targets (`fuzz/`, run with `cargo fuzz`) and of the
//! regression corpus test (`tests/fuzz_corpus.rs`, run by `cargo test`): one function per
//! target, fed arbitrary bytes. Each must return without panicking whatever it is given;
//! where a result must hold a property, the function asserts it.

use crate::callbacks::{UnixMs, local_clock, resolve_when};
use crate::media::{LocalMedia, dtmf, rtp, sdp};

/// One target: arbitrary bytes in, a panic is a crash.
pub type Target = fn(&[u8]);

/// Every target by name, as `cargo fuzz` and the corpus folders name them.
pub const TARGETS: &[(&str, Target)] = &[
    ("sip_filter", sip_filter),
    ("sdp", sdp_offer),
    ("rtp", rtp_packet),
    ("dtmf", dtmf_input),
    ("prompts_toml", prompts_toml),
    ("spoken_time", spoken_time),
    ("spoken_number", spoken_number),
];

/// A SIP message through the filter, as a datagram and as a stream message.
pub fn sip_filter(data: &[u8]) {
    crate::sip::filter_status(data, false);
    crate::sip::filter_status(data, true);
}

/// A caller's SDP offer (and the same text read as an answer, and as a hold check).
pub fn sdp_offer(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let local = LocalMedia {
        ip: [127, 0, 0, 1].into(),
        port: 20000,
        session_id: 1,
        session_version: 1,
    };
    if let Ok(answer) = sdp::answer(&text, &local) {
        // what we answer must be an SDP we ourselves can read back
        assert!(
            sdp::parse_answer(&answer.sdp).is_ok(),
            "our answer does not parse: {:?}",
            answer.sdp
        );
    }
    let _ = sdp::parse_answer(&text);
    let _ = sdp::is_hold(&text);
}

/// A datagram on an RTP port (RTP, or RTCP from an rtcp-mux peer).
pub fn rtp_packet(data: &[u8]) {
    if let Ok(p) = rtp::parse(data) {
        let again = rtp::build(&p.header, p.payload).expect("a parsed packet builds");
        let q = rtp::parse(&again).expect("a built packet parses");
        assert_eq!((q.header, q.payload), (p.header, p.payload));
    }
}

/// RFC 4733 telephone-event payloads (a stream of 4-byte events, with SSRC and timestamp
/// from the input), and SIP INFO DTMF bodies.
pub fn dtmf_input(data: &[u8]) {
    let mut receiver = dtmf::DtmfReceiver::new();
    for chunk in data.chunks(8) {
        let ts = chunk
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0);
        let payload = chunk.get(4..).unwrap_or_default();
        let _ = receiver.receive(u32::from(chunk[0] & 3), ts & 0xff, payload);
    }
    let (ct, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (
            Some(String::from_utf8_lossy(&data[..i]).into_owned()),
            &data[i + 1..],
        ),
        None => (None, data),
    };
    let _ = crate::sip::parse_dtmf_info(ct.as_deref(), body);
}

/// Prompts: `humanline.toml`, then after a 0xFF byte the English prompts file.
pub fn prompts_toml(data: &[u8]) {
    let (settings, en) = match data.iter().position(|b| *b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[data.len()..]),
    };
    let settings = String::from_utf8_lossy(settings);
    let en = String::from_utf8_lossy(en);
    let _ = crate::config::Flow::from_texts(&[("humanline.toml", &settings), ("en.toml", &en)]);
}

/// "Call me back at three", "in 99999999999999 minutes": a time from what a caller said.
pub fn spoken_time(data: &[u8]) {
    let (offset, said) = match data.split_first() {
        Some((b, rest)) => (i64::from(*b as i8) * 15, rest),
        None => (0, data),
    };
    let said = String::from_utf8_lossy(said);
    let now: UnixMs = 1_780_000_000_000;
    let _ = crate::callbacks::names_time(&said);
    if let Some(at) = resolve_when(&said, now, offset) {
        let _ = local_clock(at, now, offset);
    }
}

/// A phone number said aloud.
pub fn spoken_number(data: &[u8]) {
    let said = String::from_utf8_lossy(data);
    if let Some(n) = crate::callbacks::spoken_number(&said) {
        assert!(n.chars().all(|c| c.is_ascii_digit() || c == '+'), "{n:?}");
    }
}
