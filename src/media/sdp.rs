//! SDP offer/answer (RFC 3264) for one G.711 audio stream plus RFC 4733 telephone-events.
//!
//! Parsing and writing use the `sdp-types` crate (GStreamer Rust maintainers). It was chosen
//! over `ezk-sdp-types` because it tolerates what real offers contain: an `m=image` (T.38)
//! line, a missing `t=`, an attribute it cannot read; the typed crate rejects the whole offer
//! for any of those, which would turn a usable call into a 488.
//!
//! The SIP layer calls [`answer`] with the caller's offer (an [`SdpError`] maps to a SIP
//! status via [`SdpError::sip_status`], 488 for "nothing acceptable"), [`offer`] +
//! [`parse_answer`] for calls it places to agents, and [`RemoteMedia::is_hold`] on re-INVITEs.

use std::net::{IpAddr, SocketAddr};

use sdp_types::{
    AddrType, Attribute, Connection, Media, NetType, Origin, RtpMap, Session, TypedAttribute,
};
use thiserror::Error;

use super::codec::Codec;

/// Payload type we give telephone-event in our own offers (the common choice).
pub const DEFAULT_TELEPHONE_EVENT_PT: u8 = 101;
/// Packet time we send and ask for.
pub const PTIME_MS: u32 = 20;
/// Our codec preference: PCMU first.
pub const PREFERENCE: [Codec; 2] = [Codec::Pcmu, Codec::Pcma];

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SdpError {
    #[error("malformed SDP: {0}")]
    Parse(String),
    #[error("no audio stream offered")]
    NoAudio,
    /// Audio offered, but no codec or transport we can do (e.g. only G.729, opus or SRTP).
    #[error("no acceptable audio codec (offered: {offered})")]
    NoAcceptableCodec { offered: String },
}

impl SdpError {
    /// The SIP response for an offer that failed like this.
    pub fn sip_status(&self) -> u16 {
        match self {
            SdpError::Parse(_) => 400,
            SdpError::NoAudio | SdpError::NoAcceptableCodec { .. } => 488,
        }
    }
}

/// Media direction (RFC 3264 section 5.1), as written by whoever wrote the SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn from_attribute(name: &str) -> Option<Direction> {
        match name.to_ascii_lowercase().as_str() {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction the other side answers with.
    pub fn reversed(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }

    /// Whether the party that wrote this direction sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether the party that wrote this direction wants to receive media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

/// Our side of the media: where we receive RTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalMedia {
    pub ip: IpAddr,
    pub port: u16,
    /// `o=` session id: fixed for the dialog.
    pub session_id: u64,
    /// `o=` version: the SIP layer increments it for each new offer or answer it sends.
    pub session_version: u64,
}

/// What the remote side's SDP says about the audio stream we agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteMedia {
    /// Where to send RTP. `None` for `c=0.0.0.0` (old-style hold), port 0, or a host name
    /// (symmetric RTP then learns the address from the first packet).
    pub addr: Option<SocketAddr>,
    pub codec: Codec,
    /// Payload type for `codec` (0 or 8, or a dynamic one if the remote mapped it so).
    pub payload_type: u8,
    /// telephone-event payload type, if both sides do RFC 4733.
    pub telephone_event: Option<u8>,
    /// The remote's direction as written in its SDP.
    pub direction: Direction,
    /// `c=0.0.0.0`: the RFC 2543 way of putting a call on hold.
    pub null_address: bool,
    pub ptime: Option<u32>,
}

impl RemoteMedia {
    /// The remote put the call on hold (a=sendonly, a=inactive or c=0.0.0.0).
    pub fn is_hold(&self) -> bool {
        self.null_address || !self.direction.receives()
    }

    /// Whether we should send RTP to the remote.
    pub fn we_send(&self) -> bool {
        !self.null_address && self.direction.receives()
    }

    /// Whether the remote says it will send RTP (to arm the no-media timer).
    pub fn remote_sends(&self) -> bool {
        self.direction.sends()
    }
}

/// The SDP answer text and what was agreed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub sdp: String,
    pub remote: RemoteMedia,
}

fn parse(sdp: &str) -> Result<Session, SdpError> {
    Session::parse(sdp.as_bytes()).map_err(|e| SdpError::Parse(e.to_string()))
}

/// RTP/AVP or RTP/AVPF (we ignore feedback); not SRTP or DTLS, which we cannot do.
fn plain_rtp(proto: &str) -> bool {
    proto.eq_ignore_ascii_case("RTP/AVP") || proto.eq_ignore_ascii_case("RTP/AVPF")
}

fn formats(media: &Media) -> impl Iterator<Item = u8> + '_ {
    media
        .fmt
        .split_ascii_whitespace()
        .filter_map(|f| f.parse().ok())
}

fn rtpmaps(media: &Media) -> Vec<RtpMap> {
    media
        .attributes_typed::<RtpMap>()
        .filter_map(Result::ok)
        .collect()
}

/// The payload type `media` uses for `codec`: the static one (unless remapped to something
/// else by an rtpmap) or a dynamic one whose rtpmap names it.
fn payload_type_for(media: &Media, maps: &[RtpMap], codec: Codec) -> Option<u8> {
    formats(media).find(|&pt| match maps.iter().find(|m| m.payload_type == pt) {
        Some(m) => {
            Codec::from_encoding_name(&m.encoding_name) == Some(codec) && m.clock_rate == 8000
        }
        None => Codec::from_payload_type(pt) == Some(codec),
    })
}

fn telephone_event_pt(media: &Media, maps: &[RtpMap]) -> Option<u8> {
    formats(media).find(|&pt| {
        maps.iter().any(|m| {
            m.payload_type == pt
                && m.encoding_name.eq_ignore_ascii_case("telephone-event")
                && m.clock_rate == 8000
        })
    })
}

fn direction_of(session: &Session, media: &Media) -> Direction {
    let find = |attrs: &[Attribute]| {
        attrs
            .iter()
            .find_map(|a| Direction::from_attribute(&a.attribute))
    };
    find(&media.attributes)
        .or_else(|| find(&session.attributes))
        .unwrap_or_default()
}

fn ptime_of(media: &Media) -> Option<u32> {
    media
        .get_first_attribute_value("ptime")
        .flatten()
        .and_then(|v| v.trim().parse().ok())
}

/// The remote address of a media section: media-level `c=` over session-level.
fn address_of(session: &Session, media: &Media) -> (Option<IpAddr>, bool) {
    let conn = media.connections.first().or(session.connection.as_ref());
    let ip = conn.and_then(|c| c.try_address().ok()).map(|a| a.ip);
    let null = ip.is_some_and(|ip| ip.is_unspecified());
    (ip.filter(|ip| !ip.is_unspecified()), null)
}

/// Agree on a codec for one audio section, preferring `PREFERENCE` order.
fn negotiate(session: &Session, media: &Media) -> Option<RemoteMedia> {
    if !media.media.eq_ignore_ascii_case("audio") || media.port == 0 || !plain_rtp(&media.proto) {
        return None;
    }
    let maps = rtpmaps(media);
    let (codec, payload_type) = PREFERENCE
        .iter()
        .find_map(|&c| payload_type_for(media, &maps, c).map(|pt| (c, pt)))?;
    let (ip, null_address) = address_of(session, media);
    Some(RemoteMedia {
        addr: ip.map(|ip| SocketAddr::new(ip, media.port)),
        codec,
        payload_type,
        telephone_event: telephone_event_pt(media, &maps),
        direction: direction_of(session, media),
        null_address,
        ptime: ptime_of(media),
    })
}

/// Names of the static payload types phones still offer (RFC 3551 table 4), for messages.
fn static_name(pt: u8) -> Option<&'static str> {
    Some(match pt {
        0 => "PCMU",
        3 => "GSM",
        4 => "G723",
        8 => "PCMA",
        9 => "G722",
        13 => "CN",
        18 => "G729",
        _ => return None,
    })
}

fn describe_offer(session: &Session) -> String {
    let mut parts = Vec::new();
    for media in &session.medias {
        let maps = rtpmaps(media);
        let names: Vec<String> = formats(media)
            .map(|pt| {
                maps.iter()
                    .find(|m| m.payload_type == pt)
                    .map(|m| m.encoding_name.clone())
                    .or_else(|| static_name(pt).map(String::from))
                    .unwrap_or_else(|| pt.to_string())
            })
            .collect();
        parts.push(format!(
            "{} {} [{}]",
            media.media,
            media.proto,
            names.join(" ")
        ));
    }
    parts.join("; ")
}

fn origin(local: &LocalMedia) -> Origin {
    Origin {
        username: Some("humanline".into()),
        sess_id: local.session_id.to_string(),
        sess_version: local.session_version,
        nettype: NetType::In,
        addrtype: if local.ip.is_ipv4() {
            AddrType::Ip4
        } else {
            AddrType::Ip6
        },
        unicast_address: local.ip.to_string(),
    }
}

fn audio_media(
    local: &LocalMedia,
    codecs: &[(Codec, u8)],
    telephone_event: Option<u8>,
    direction: Direction,
) -> Media {
    let mut fmt: Vec<String> = codecs.iter().map(|(_, pt)| pt.to_string()).collect();
    fmt.extend(telephone_event.map(|pt| pt.to_string()));
    let mut media = Media {
        media: "audio".into(),
        port: local.port,
        num_ports: None,
        proto: "RTP/AVP".into(),
        fmt: fmt.join(" "),
        media_title: None,
        connections: Vec::new(),
        bandwidths: Vec::new(),
        key: None,
        attributes: Vec::new(),
    };
    for &(codec, pt) in codecs {
        media.add_attribute_with_value(RtpMap::NAME, RtpMap::new(pt, codec.encoding_name(), 8000));
    }
    if let Some(pt) = telephone_event {
        media.add_attribute_with_value(RtpMap::NAME, RtpMap::new(pt, "telephone-event", 8000));
        media.add_attribute_with_value("fmtp", format!("{pt} 0-15"));
    }
    media.add_attribute_with_value("ptime", PTIME_MS);
    media.add_attribute(Attribute::new(direction.as_str()));
    media
}

fn session_for(local: &LocalMedia) -> Session {
    let mut session = Session::new(origin(local), "Humanline");
    session.set_connection(Connection::from_ip_addr(local.ip));
    session.add_time(sdp_types::Time::new(0, 0));
    session
}

/// Answer a caller's offer: take the first plain-RTP audio stream with PCMU or PCMA (PCMU
/// preferred), keep the offer's telephone-event payload type, reject every other stream
/// (port 0), and answer the direction that mirrors the offer's (a hold gets `recvonly`).
pub fn answer(offer: &str, local: &LocalMedia) -> Result<Answer, SdpError> {
    let session = parse(offer)?;
    if !session
        .medias
        .iter()
        .any(|m| m.media.eq_ignore_ascii_case("audio"))
    {
        return Err(SdpError::NoAudio);
    }
    let chosen = session
        .medias
        .iter()
        .enumerate()
        .find_map(|(i, m)| negotiate(&session, m).map(|r| (i, r)));
    let Some((index, remote)) = chosen else {
        return Err(SdpError::NoAcceptableCodec {
            offered: describe_offer(&session),
        });
    };
    let mut out = session_for(local);
    // RFC 3264 6: one answer m-line per offered one, in order; unwanted ones get port 0.
    for (i, offered) in session.medias.iter().enumerate() {
        if i == index {
            let ours = if remote.null_address {
                Direction::RecvOnly
            } else {
                remote.direction.reversed()
            };
            out.add_media(audio_media(
                local,
                &[(remote.codec, remote.payload_type)],
                remote.telephone_event,
                ours,
            ));
        } else {
            out.add_media(Media {
                media: offered.media.clone(),
                port: 0,
                num_ports: None,
                proto: offered.proto.clone(),
                fmt: offered.fmt.clone(),
                media_title: None,
                connections: Vec::new(),
                bandwidths: Vec::new(),
                key: None,
                attributes: Vec::new(),
            });
        }
    }
    Ok(Answer {
        sdp: out.to_string(),
        remote,
    })
}

/// An offer for a call we place (to an agent): PCMU, PCMA, telephone-event 101.
/// `direction` is `SendRecv` normally, `SendOnly` to put the remote on hold.
pub fn offer(local: &LocalMedia, direction: Direction) -> String {
    let codecs: Vec<(Codec, u8)> = PREFERENCE.iter().map(|&c| (c, c.payload_type())).collect();
    let mut session = session_for(local);
    session.add_media(audio_media(
        local,
        &codecs,
        Some(DEFAULT_TELEPHONE_EVENT_PT),
        direction,
    ));
    session.to_string()
}

/// Our side of one leg's SDP over the whole dialog. RFC 3264 §8: every SDP we send after
/// the first keeps the `o=` line's session id and address, and its version grows by one
/// when the SDP changed, and only then (an unchanged SDP repeats the version it had).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSdp {
    local: LocalMedia,
    /// The last SDP we sent, without its `o=` line.
    last: Option<String>,
}

impl LocalSdp {
    /// Nothing sent yet: the first SDP carries `local.session_version`.
    pub fn new(local: LocalMedia) -> LocalSdp {
        LocalSdp { local, last: None }
    }

    /// After our offer for this leg was sent (by whoever placed the call): the next SDP we
    /// send is compared with that offer.
    pub fn after_offer(local: LocalMedia) -> LocalSdp {
        let mut sdp = LocalSdp::new(local);
        sdp.last = Some(without_origin(&offer(&local, Direction::SendRecv)));
        sdp
    }

    pub fn local(&self) -> LocalMedia {
        self.local
    }

    /// [`answer`] with this leg's `o=` line.
    pub fn answer(&mut self, offer: &str) -> Result<Answer, SdpError> {
        let mut out = answer(offer, &self.local)?;
        if self.stamp(&out.sdp) {
            out = answer(offer, &self.local)?;
        }
        Ok(out)
    }

    /// [`offer`] with this leg's `o=` line.
    pub fn offer(&mut self, direction: Direction) -> String {
        let text = offer(&self.local, direction);
        if self.stamp(&text) {
            return offer(&self.local, direction);
        }
        text
    }

    /// Records `sdp` as sent; true if it differs from the last one, so the version grew and
    /// the SDP must be written again.
    fn stamp(&mut self, sdp: &str) -> bool {
        let body = without_origin(sdp);
        let changed = self.last.as_ref().is_some_and(|last| *last != body);
        if changed {
            self.local.session_version = self.local.session_version.wrapping_add(1);
        }
        self.last = Some(body);
        changed
    }
}

fn without_origin(sdp: &str) -> String {
    sdp.lines()
        .filter(|l| !l.starts_with("o="))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Read the answer to our [`offer`] (or a re-INVITE offer, to see hold and new addresses):
/// the first audio stream the remote accepted, with its first codec we know.
pub fn parse_answer(sdp: &str) -> Result<RemoteMedia, SdpError> {
    let session = parse(sdp)?;
    let audio: Vec<&Media> = session
        .medias
        .iter()
        .filter(|m| m.media.eq_ignore_ascii_case("audio"))
        .collect();
    if audio.is_empty() {
        return Err(SdpError::NoAudio);
    }
    for media in audio {
        if media.port == 0 || !plain_rtp(&media.proto) {
            continue;
        }
        let maps = rtpmaps(media);
        // The answerer's order is its preference; take its first codec we do.
        let first = formats(media).find_map(|pt| {
            [Codec::Pcmu, Codec::Pcma]
                .into_iter()
                .find(|&c| payload_type_for(media, &maps, c) == Some(pt))
                .map(|c| (c, pt))
        });
        if let Some((codec, payload_type)) = first {
            let (ip, null_address) = address_of(&session, media);
            return Ok(RemoteMedia {
                addr: ip.map(|ip| SocketAddr::new(ip, media.port)),
                codec,
                payload_type,
                telephone_event: telephone_event_pt(media, &maps),
                direction: direction_of(&session, media),
                null_address,
                ptime: ptime_of(media),
            });
        }
    }
    Err(SdpError::NoAcceptableCodec {
        offered: describe_offer(&session),
    })
}

/// Whether an SDP (typically a re-INVITE offer) puts the call on hold.
pub fn is_hold(sdp: &str) -> Result<bool, SdpError> {
    parse_answer(sdp).map(|r| r.is_hold())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn local() -> LocalMedia {
        LocalMedia {
            ip: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
            port: 30000,
            session_id: 42,
            session_version: 1,
        }
    }

    fn offer_with(m_line: &str, extra: &str) -> String {
        format!(
            "v=0\r\no=alice 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
             {m_line}\r\n{extra}"
        )
    }

    /// A typical desk-phone offer: PCMA listed first, G.729, telephone-event 101.
    const PHONE_OFFER: &str = "v=0\r\n\
        o=- 3912 3912 IN IP4 192.0.2.10\r\n\
        s=call\r\n\
        c=IN IP4 192.0.2.10\r\n\
        t=0 0\r\n\
        m=audio 49170 RTP/AVP 8 0 18 101\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:18 G729/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-16\r\n\
        a=ptime:20\r\n\
        a=sendrecv\r\n";

    fn origin_of(sdp: &str) -> (String, u64) {
        let o = sdp.lines().find(|l| l.starts_with("o=")).expect("o= line");
        let f: Vec<&str> = o.split_whitespace().collect();
        (f[1].to_string(), f[2].parse().expect("version"))
    }

    /// RFC 3264 §8: the session id stays, the version grows by one for a changed SDP and
    /// only then, and an unchanged SDP is the same SDP again.
    #[test]
    fn o_line_versions_follow_rfc_3264() {
        let mut ours = LocalSdp::new(local());
        let first = ours.answer(PHONE_OFFER).expect("answer").sdp;
        assert_eq!(origin_of(&first), ("42".into(), 1));
        // The same offer again (a session refresh): the very same answer.
        let again = ours.answer(PHONE_OFFER).expect("answer").sdp;
        assert_eq!(again, first);
        // Hold: our answer changes (recvonly), so its version grows by one.
        let hold = PHONE_OFFER.replace("a=sendrecv", "a=sendonly");
        let held = ours.answer(&hold).expect("answer").sdp;
        assert!(held.contains("a=recvonly"), "{held}");
        assert_eq!(origin_of(&held), ("42".into(), 2));
        assert_eq!(origin_of(&ours.answer(&hold).expect("answer").sdp).1, 2);
        // Unhold: changed again.
        let back = ours.answer(PHONE_OFFER).expect("answer").sdp;
        assert_eq!(origin_of(&back), ("42".into(), 3));
        // A leg we offered on: an answer like the offer keeps the version, a changed one
        // grows it.
        let mut placed = LocalSdp::after_offer(local());
        let o = placed.offer(Direction::SendRecv);
        assert_eq!(origin_of(&o), ("42".into(), 1));
        assert_eq!(
            origin_of(&placed.offer(Direction::SendOnly)),
            ("42".into(), 2)
        );
    }

    #[test]
    fn answer_picks_pcmu_and_keeps_101() {
        let a = answer(PHONE_OFFER, &local()).expect("answer");
        assert_eq!(a.remote.codec, Codec::Pcmu);
        assert_eq!(a.remote.payload_type, 0);
        assert_eq!(a.remote.telephone_event, Some(101));
        assert_eq!(
            a.remote.addr,
            Some("192.0.2.10:49170".parse().expect("addr"))
        );
        assert_eq!(a.remote.ptime, Some(20));
        assert!(!a.remote.is_hold());
        for line in [
            "c=IN IP4 127.0.0.1\r\n",
            "m=audio 30000 RTP/AVP 0 101\r\n",
            "a=rtpmap:0 PCMU/8000\r\n",
            "a=rtpmap:101 telephone-event/8000\r\n",
            "a=fmtp:101 0-15\r\n",
            "a=ptime:20\r\n",
            "a=sendrecv\r\n",
        ] {
            assert!(a.sdp.contains(line), "missing {line:?} in\n{}", a.sdp);
        }
        assert!(
            a.sdp
                .starts_with("v=0\r\no=humanline 42 1 IN IP4 127.0.0.1\r\n")
        );
        // Our answer parses back to the same agreement.
        let back = parse_answer(&a.sdp).expect("parse own answer");
        assert_eq!(back.codec, Codec::Pcmu);
        assert_eq!(back.telephone_event, Some(101));
        assert_eq!(back.addr, Some("127.0.0.1:30000".parse().expect("addr")));
    }

    #[test]
    fn pcma_only_offer_gets_pcma_and_a_dynamic_dtmf_pt_is_kept() {
        let offer = offer_with(
            "m=audio 4000 RTP/AVP 8 96",
            "a=rtpmap:96 telephone-event/8000\r\n",
        );
        let a = answer(&offer, &local()).expect("answer");
        assert_eq!(a.remote.codec, Codec::Pcma);
        assert_eq!(a.remote.telephone_event, Some(96));
        assert!(a.sdp.contains("m=audio 30000 RTP/AVP 8 96\r\n"));
        assert!(a.sdp.contains("a=fmtp:96 0-15\r\n"));
    }

    #[test]
    fn static_pt_without_rtpmap_and_no_dtmf() {
        let offer = offer_with("m=audio 4000 RTP/AVP 0", "");
        let a = answer(&offer, &local()).expect("answer");
        assert_eq!(a.remote.telephone_event, None);
        assert!(a.sdp.contains("m=audio 30000 RTP/AVP 0\r\n"));
        assert!(!a.sdp.contains("telephone-event"));
    }

    #[test]
    fn g729_or_opus_only_is_488() {
        for offer in [
            offer_with("m=audio 4000 RTP/AVP 18", "a=rtpmap:18 G729/8000\r\n"),
            offer_with(
                "m=audio 4000 RTP/AVP 111 101",
                "a=rtpmap:111 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\n",
            ),
            // PCMU, but over SRTP.
            offer_with("m=audio 4000 RTP/SAVP 0", ""),
        ] {
            let err = answer(&offer, &local()).expect_err("no codec");
            assert!(matches!(err, SdpError::NoAcceptableCodec { .. }), "{err}");
            assert_eq!(err.sip_status(), 488);
        }
        let err = answer(&offer_with("m=audio 4000 RTP/AVP 18", ""), &local()).expect_err("x");
        assert!(err.to_string().contains("G729"), "{err}");
    }

    #[test]
    fn static_pt_remapped_to_something_else_is_not_pcmu() {
        let offer = offer_with("m=audio 4000 RTP/AVP 0", "a=rtpmap:0 G722/8000\r\n");
        assert!(answer(&offer, &local()).is_err());
    }

    #[test]
    fn no_audio_and_garbage() {
        let video = offer_with("m=video 4000 RTP/AVP 96", "");
        assert_eq!(answer(&video, &local()), Err(SdpError::NoAudio));
        let err = answer("hello world", &local()).expect_err("garbage");
        assert_eq!(err.sip_status(), 400);
    }

    #[test]
    fn other_streams_are_rejected_in_place() {
        // Audio plus T.38 fax: the answer keeps both m-lines, the image one with port 0.
        let offer = offer_with("m=audio 4000 RTP/AVP 0", "m=image 4002 udptl t38\r\n");
        let a = answer(&offer, &local()).expect("answer");
        let m_lines: Vec<&str> = a.sdp.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            m_lines,
            vec!["m=audio 30000 RTP/AVP 0", "m=image 0 udptl t38"]
        );
    }

    #[test]
    fn hold_is_detected() {
        let sendonly = offer_with("m=audio 4000 RTP/AVP 0", "a=sendonly\r\n");
        assert_eq!(is_hold(&sendonly), Ok(true));
        let a = answer(&sendonly, &local()).expect("answer");
        assert!(a.sdp.contains("a=recvonly\r\n"));
        assert!(!a.remote.we_send());
        assert!(a.remote.remote_sends());

        let inactive = offer_with("m=audio 4000 RTP/AVP 0", "a=inactive\r\n");
        assert_eq!(is_hold(&inactive), Ok(true));
        let a = answer(&inactive, &local()).expect("answer");
        assert!(a.sdp.contains("a=inactive\r\n"));
        assert!(!a.remote.remote_sends());

        let null = "v=0\r\no=- 1 2 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
                    m=audio 4000 RTP/AVP 0\r\n";
        assert_eq!(is_hold(null), Ok(true));
        let a = answer(null, &local()).expect("answer");
        assert_eq!(a.remote.addr, None);
        assert!(a.sdp.contains("a=recvonly\r\n"));

        // Session-level direction applies when the media has none.
        let session_level = "v=0\r\no=- 1 2 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\n\
                             t=0 0\r\na=sendonly\r\nm=audio 4000 RTP/AVP 0\r\n";
        assert_eq!(is_hold(session_level), Ok(true));

        // Resume.
        let resume = offer_with("m=audio 4000 RTP/AVP 0", "a=sendrecv\r\n");
        assert_eq!(is_hold(&resume), Ok(false));
    }

    #[test]
    fn our_offer_and_an_agent_answer() {
        let o = offer(&local(), Direction::SendRecv);
        assert!(o.contains("m=audio 30000 RTP/AVP 0 8 101\r\n"), "{o}");
        assert!(o.contains("a=rtpmap:8 PCMA/8000\r\n"));
        assert!(o.contains("a=fmtp:101 0-15\r\n"));
        assert!(o.contains("a=sendrecv\r\n"));
        // The agent's phone picks PCMA.
        let agent = "v=0\r\no=agent 5 5 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                     m=audio 40000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n\
                     a=rtpmap:101 telephone-event/8000\r\n";
        let r = parse_answer(agent).expect("answer");
        assert_eq!((r.codec, r.payload_type), (Codec::Pcma, 8));
        assert_eq!(r.telephone_event, Some(101));
        assert_eq!(r.addr, Some("127.0.0.1:40000".parse().expect("addr")));
        // An answer that rejected our audio.
        let rejected = "v=0\r\no=a 5 5 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                        m=audio 0 RTP/AVP 0\r\n";
        assert!(matches!(
            parse_answer(rejected),
            Err(SdpError::NoAcceptableCodec { .. })
        ));
    }

    #[test]
    fn tolerant_of_real_world_offers() {
        // LF line ends, media-level c=, no t= line, an unreadable attribute.
        let offer = "v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nm=audio 4000 RTP/AVP 0 101\n\
                     c=IN IP4 198.51.100.7\na=rtpmap:bad\na=rtpmap:101 telephone-event/8000\n";
        let a = answer(offer, &local()).expect("answer");
        assert_eq!(
            a.remote.addr,
            Some("198.51.100.7:4000".parse().expect("addr"))
        );
        assert_eq!(a.remote.telephone_event, Some(101));
        // sipp's built-in uac offer.
        let sipp = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n\
                    c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
        assert!(answer(sipp, &local()).is_ok());
    }

    #[test]
    fn ipv6_local() {
        let l = LocalMedia {
            ip: "::1".parse().expect("ip"),
            ..local()
        };
        let o = offer(&l, Direction::SendRecv);
        assert!(o.contains("c=IN IP6 ::1\r\n"), "{o}");
        assert!(o.contains("IN IP6 ::1\r\n"));
    }
}
