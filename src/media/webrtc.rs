//! A browser caller's media leg: WebRTC (ICE-lite, DTLS-SRTP, PCMU and telephone-event) on
//! the sans-IO `rtc` core of webrtc-rs, carrying the same [`RtpSession`] as a SIP leg.
//!
//! The peer connection only unwraps and wraps the packets: RTP that arrives (decrypted) goes
//! into the call's `RtpSession` as if it had come over plain UDP, and what the session sends
//! goes out through the peer connection's sender. So jitter buffering, playout, DTMF, the
//! speech feed, bridging and the no-media timer are the SIP leg's, unchanged, and a browser
//! caller is just another caller to the call driver and the brain.
//!
//! [`negotiate`] is pure (offer in, answer and peer connection out); [`spawn`] is the thin task
//! that owns the UDP socket, like [`super::driver::spawn`] for a SIP leg.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::configure_rtcp_reports;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_PCMU, MIME_TYPE_TELEPHONE_EVENT, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::marshal::{Marshal, Unmarshal};
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::codec::Codec;
use super::driver::{Driver, MediaHandle, TaskChannels, spawn_task};
use super::sdp::{Direction, RemoteMedia};
use super::session::{Input, MediaEvent, Output, RtpSession, SessionConfig, StreamIds};

/// Biggest datagram we read (browsers keep RTP and DTLS records under the 1200-byte MTU).
const RECV_BUFFER: usize = 2048;
/// The session's stand-in for the browser's address: its packets reach the session through
/// the peer connection, never straight from a socket, so the address is only bookkeeping
/// (symmetric RTP sees one constant source and never re-latches).
const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 9);
/// Most we wait for a peer connection deadline when it names none.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// A browser that has not connected by then never will (it posted an offer and left, or its
/// network cannot reach our candidate): its admission slot is not held any longer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Error)]
pub enum WebRtcError {
    /// The offer is not SDP, or not one we can answer; the text says why (for a 4xx).
    #[error("{0}")]
    BadOffer(String),
    #[error("the offer has no audio we can take (PCMU is needed)")]
    NoAcceptableCodec,
    #[error("WebRTC set-up failed: {0}")]
    Setup(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// How the browser's connection stands, for the call: `Connected` is its "ACK" (the IVR
/// starts), `Gone` its hang-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// ICE and DTLS not finished yet.
    Connecting,
    Connected,
    /// ICE consent is failing: the browser may come back (a network change) or not.
    Disconnected,
    /// Failed or closed: the browser is gone.
    Gone,
}

/// An offer answered: the peer connection (not connected yet), our answer for the browser,
/// and the audio stream agreed on.
pub struct Negotiated {
    pc: RTCPeerConnection,
    sender: RTCRtpSenderId,
    pub answer_sdp: String,
    pub remote: RemoteMedia,
    ids: StreamIds,
}

impl std::fmt::Debug for Negotiated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Negotiated")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

/// Answers a browser's offer for audio on `local` (our socket's address, the one host
/// candidate). ICE-lite: the browser, always the controlling side, checks that candidate;
/// we only answer its checks, so nothing is gathered and loopback works.
pub fn negotiate(
    offer_sdp: &str,
    local: SocketAddr,
    ids: StreamIds,
    now: Instant,
) -> Result<Negotiated, WebRtcError> {
    let setup = |e: rtc::shared::error::Error| WebRtcError::Setup(e.to_string());
    let offer = RTCSessionDescription::offer(without_wideband_events(offer_sdp))
        .map_err(|e| WebRtcError::BadOffer(e.to_string()))?;
    let parsed = offer
        .unmarshal()
        .map_err(|e| WebRtcError::BadOffer(e.to_string()))?;
    if !parsed
        .media_descriptions
        .iter()
        .any(|m| m.media_name.media == "audio")
    {
        return Err(WebRtcError::BadOffer(
            "the offer has no audio section".into(),
        ));
    }

    let mut media_engine = MediaEngine::default();
    for codec in [pcmu(), telephone_event()] {
        media_engine
            .register_codec(codec, RtpCodecKind::Audio)
            .map_err(setup)?;
    }
    // Sender and receiver reports only: no header extensions, so the browser's RTP reaches the
    // session as plain RTP.
    let registry = configure_rtcp_reports(Registry::new());
    let settings = SettingEngineBuilder::new().with_lite(true).build();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .build(now)
        .map_err(setup)?;

    let track = MediaStreamTrack::new(
        "humanline".to_owned(),
        "humanline-audio".to_owned(),
        "Humanline".to_owned(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ids.ssrc),
                ..Default::default()
            },
            codec: pcmu().rtp_codec,
            ..Default::default()
        }],
    );
    let sender = pc.add_track(track).map_err(setup)?;
    pc.set_remote_description(now, offer)
        .map_err(|e| WebRtcError::BadOffer(e.to_string()))?;
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: local.ip().to_string(),
            port: local.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .map_err(setup)?;
    let init = RTCIceCandidate::from(&candidate).to_json().map_err(setup)?;
    pc.add_local_candidate(init).map_err(setup)?;
    let answer = pc
        .create_answer(None)
        .map_err(|e| WebRtcError::BadOffer(e.to_string()))?;
    pc.set_local_description(now, answer).map_err(setup)?;
    let answer_sdp = pc
        .local_description()
        .map(|d| d.sdp)
        .ok_or_else(|| WebRtcError::Setup("no local description".into()))?;

    // What was agreed, in the payload types the browser chose.
    let (mut audio, mut events) = (None, None);
    if let Some(mut s) = pc.rtp_sender(sender) {
        for c in &s.get_parameters().rtp_parameters.codecs {
            let mime = c.rtp_codec.mime_type.to_ascii_lowercase();
            if mime == MIME_TYPE_PCMU.to_ascii_lowercase() {
                audio.get_or_insert(c.payload_type);
            } else if mime == MIME_TYPE_TELEPHONE_EVENT.to_ascii_lowercase()
                && c.rtp_codec.clock_rate == 8000
            {
                events.get_or_insert(c.payload_type);
            }
        }
    }
    let payload_type = audio.ok_or(WebRtcError::NoAcceptableCodec)?;
    Ok(Negotiated {
        pc,
        sender,
        answer_sdp,
        remote: RemoteMedia {
            addr: Some(PEER),
            codec: Codec::Pcmu,
            payload_type,
            telephone_event: events,
            direction: Direction::SendRecv,
            null_address: false,
            ptime: None,
        },
        ids,
    })
}

/// The offer without its telephone-event payload types at other rates than 8 kHz (Chromium
/// offers /48000 beside /8000). `rtc` matches codecs by name, not rate, and would otherwise
/// answer the first one for our 8 kHz events; the browser then sees them left out.
fn without_wideband_events(sdp: &str) -> String {
    let drop: Vec<&str> = sdp
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=rtpmap:"))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(_, codec)| {
            let codec = codec.to_ascii_lowercase();
            codec.starts_with("telephone-event/") && !codec.starts_with("telephone-event/8000")
        })
        .map(|(pt, _)| pt)
        .collect();
    if drop.is_empty() {
        return sdp.to_owned();
    }
    let names_dropped = |l: &str| {
        ["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"].iter().any(|p| {
            l.strip_prefix(p)
                .and_then(|rest| rest.split([' ', '\t']).next())
                .is_some_and(|pt| drop.contains(&pt))
        })
    };
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let ending = &line[body.len()..];
        if names_dropped(body) {
            continue;
        }
        if let Some(media) = body.strip_prefix("m=audio ") {
            // m=audio PORT PROTO FMT...: the first three fields stay.
            let fields: Vec<&str> = media.split(' ').collect();
            let kept: Vec<&str> = fields
                .iter()
                .enumerate()
                .filter(|(i, f)| *i < 2 || !drop.contains(f))
                .map(|(_, f)| *f)
                .collect();
            out.push_str("m=audio ");
            out.push_str(&kept.join(" "));
            out.push_str(ending);
            continue;
        }
        out.push_str(line);
    }
    out
}

fn pcmu() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_PCMU.to_owned(),
            clock_rate: 8000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        },
        payload_type: 0,
    }
}

fn telephone_event() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_TELEPHONE_EVENT.to_owned(),
            clock_rate: 8000,
            channels: 0,
            sdp_fmtp_line: "0-16".to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: 101,
    }
}

/// Starts the media task of a negotiated browser leg on `socket` (the one whose address
/// [`negotiate`] put in the answer). The handle and events are a SIP leg's; the watch says
/// how the browser's connection stands.
pub fn spawn(
    socket: UdpSocket,
    negotiated: Negotiated,
    config: impl FnOnce(SessionConfig) -> SessionConfig,
) -> Result<
    (
        MediaHandle,
        mpsc::Receiver<MediaEvent>,
        watch::Receiver<PeerState>,
    ),
    WebRtcError,
> {
    let local_addr = socket.local_addr()?;
    let (state_tx, state_rx) = watch::channel(PeerState::Connecting);
    let session = RtpSession::new(
        Instant::now(),
        config(SessionConfig::new(&negotiated.remote, negotiated.ids)),
    );
    let (handle, events) = spawn_task(local_addr, move |channels| {
        run(socket, local_addr, negotiated, session, channels, state_tx)
    });
    Ok((handle, events, state_rx))
}

struct Leg {
    pc: RTCPeerConnection,
    sender: RTCRtpSenderId,
    connected: bool,
    ever_connected: bool,
    state: watch::Sender<PeerState>,
}

impl Leg {
    /// Sends one packet the session made, once DTLS is up (before that there are no keys;
    /// the session's silence while connecting is dropped).
    fn send_rtp(&mut self, bytes: &[u8]) {
        if !self.connected {
            return;
        }
        let mut buf = bytes;
        let packet = match rtc::rtp::Packet::unmarshal(&mut buf) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "own RTP packet unreadable");
                return;
            }
        };
        if let Some(mut s) = self.pc.rtp_sender(self.sender)
            && let Err(e) = s.write_rtp(Instant::now(), packet)
        {
            tracing::trace!(error = %e, "RTP not sent");
        }
    }

    /// Hands the browser's RTP to the session.
    fn take_reads(&mut self, session: &mut RtpSession) {
        while let Some(TaggedRTCMessage { now, message }) = self.pc.poll_read() {
            if let RTCMessage::RtpPacket(_, packet) = message {
                match packet.marshal() {
                    Ok(bytes) => session.handle_input(now, Input::Receive(PEER, &bytes)),
                    Err(e) => tracing::debug!(error = %e, "browser RTP unreadable"),
                }
            }
        }
    }

    /// Follows the connection's state; false once the browser is gone for good.
    fn take_events(&mut self) -> bool {
        let mut alive = true;
        while let Some(event) = self.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = event {
                tracing::debug!(state = %s, "browser connection");
                let state = match s {
                    RTCPeerConnectionState::Connected => PeerState::Connected,
                    RTCPeerConnectionState::Disconnected => PeerState::Disconnected,
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        alive = false;
                        PeerState::Gone
                    }
                    _ => PeerState::Connecting,
                };
                self.connected = state == PeerState::Connected;
                self.ever_connected |= self.connected;
                self.state.send_replace(state);
            }
        }
        alive
    }
}

#[tracing::instrument(name = "webrtc", skip_all, fields(local = %local_addr))]
async fn run(
    socket: UdpSocket,
    local_addr: SocketAddr,
    negotiated: Negotiated,
    session: RtpSession,
    channels: TaskChannels,
    state: watch::Sender<PeerState>,
) -> crate::media::SessionStats {
    let TaskChannels {
        mut commands,
        bridge: mut bridge_rx,
        events,
    } = channels;
    let mut d = Driver::new(session);
    let mut leg = Leg {
        pc: negotiated.pc,
        sender: negotiated.sender,
        connected: false,
        ever_connected: false,
        state,
    };
    let connect_by = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let mut buf = vec![0u8; RECV_BUFFER];
    tracing::debug!("browser media task started");
    let mut alive = true;
    loop {
        leg.take_reads(&mut d.session);
        let session_deadline = loop {
            match d.session.poll_output() {
                Some(Output::Transmit(t)) => leg.send_rtp(&t.bytes),
                Some(Output::Event(e)) => d.dispatch(e),
                Some(Output::Timeout(at)) => break Some(at),
                None => break None,
            }
        };
        while let Some(out) = leg.pc.poll_write() {
            if let Err(e) = socket.send_to(&out.message, out.transport.peer_addr).await {
                tracing::debug!(to = %out.transport.peer_addr, error = %e, "send failed");
            }
        }
        alive &= leg.take_events();
        d.flush_events(&events);
        let Some(session_deadline) = session_deadline else {
            break;
        };
        if !alive {
            // The browser closed or failed: the call hears it through the state; the task
            // stays for the call's own close (its events and counters).
            d.session.close();
            continue;
        }
        let now = Instant::now();
        let pc_deadline = leg.pc.poll_timeout().unwrap_or(now + IDLE_POLL);
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, from)) => {
                    let datagram = buf.get(..n).unwrap_or_default();
                    let read = leg.pc.handle_read(TaggedBytesMut {
                        now: Instant::now(),
                        transport: TransportContext {
                            local_addr,
                            peer_addr: from,
                            ecn: None,
                            transport_protocol: TransportProtocol::UDP,
                        },
                        message: BytesMut::from(datagram),
                    });
                    if let Err(e) = read {
                        tracing::trace!(%from, error = %e, "datagram refused");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "receive error"),
            },
            command = commands.recv() => match command {
                Some(c) => d.apply(c),
                None => d.session.close(),
            },
            Some(samples) = bridge_rx.recv() => d.session.push_bridge_audio(&samples),
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(session_deadline)) => {
                d.session.handle_input(Instant::now(), Input::Timeout);
            }
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(pc_deadline)) => {
                if let Err(e) = leg.pc.handle_timeout(Instant::now()) {
                    tracing::debug!(error = %e, "peer connection timeout handling failed");
                }
            }
            permit = events.reserve(), if d.has_pending() => d.send_reserved(permit),
            () = tokio::time::sleep_until(connect_by), if !leg.ever_connected => {
                tracing::info!("the browser never connected");
                alive = false;
            }
        }
    }
    // A DTLS close_notify tells the browser at once (it shows the call ended).
    let _ = leg.pc.close();
    while let Some(out) = leg.pc.poll_write() {
        let _ = socket.send_to(&out.message, out.transport.peer_addr).await;
    }
    if !matches!(*leg.state.borrow(), PeerState::Gone) {
        leg.state.send_replace(PeerState::Gone);
    }
    d.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The audio part of an offer as Chromium writes it (opus first; PCMU and
    /// telephone-event offered too).
    const CHROMIUM_OFFER: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0\r\n\
a=extmap-allow-mixed\r\n\
a=msid-semantic: WMS stream\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Vq8A\r\n\
a=ice-pwd:rD4BvvG8mCmmjEvKXDKD6Cs7\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 6B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
a=sendrecv\r\n\
a=msid:stream track\r\n\
a=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:63 red/48000/2\r\n\
a=fmtp:63 111/111\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:13 CN/8000\r\n\
a=rtpmap:110 telephone-event/48000\r\n\
a=rtpmap:126 telephone-event/8000\r\n\
a=ssrc:1001 cname:browsercname\r\n\
a=ssrc:1001 msid:stream track\r\n";

    fn local() -> SocketAddr {
        "127.0.0.1:40000".parse().expect("addr")
    }

    #[test]
    fn a_chromium_offer_is_answered_with_pcmu_telephone_event_and_our_candidate() {
        let n = negotiate(CHROMIUM_OFFER, local(), StreamIds::random(), Instant::now())
            .expect("answered");
        assert_eq!(n.remote.codec, Codec::Pcmu);
        assert_eq!(n.remote.payload_type, 0);
        assert_eq!(n.remote.telephone_event, Some(126));
        let sdp = &n.answer_sdp;
        assert!(sdp.contains("a=rtpmap:0 PCMU/8000"), "{sdp}");
        assert!(!sdp.contains("opus"), "only what the session speaks: {sdp}");
        assert!(sdp.contains("a=fingerprint:sha-256"), "DTLS-SRTP: {sdp}");
        assert!(sdp.contains("a=ice-lite"), "{sdp}");
        assert!(sdp.contains("127.0.0.1 40000 typ host"), "{sdp}");
        assert!(sdp.contains("a=rtpmap:126 telephone-event/8000"), "{sdp}");
        assert!(!sdp.contains("/48000"), "{sdp}");
    }

    #[test]
    fn wideband_telephone_events_are_left_out_of_the_offer() {
        let filtered = without_wideband_events(CHROMIUM_OFFER);
        assert!(filtered.contains("m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 126\r\n"));
        assert!(!filtered.contains("telephone-event/48000"));
        assert!(filtered.contains("a=rtpmap:126 telephone-event/8000\r\n"));
        assert_eq!(
            filtered.len(),
            CHROMIUM_OFFER.len() - " 110".len() - "a=rtpmap:110 telephone-event/48000\r\n".len()
        );
        let plain = "v=0\r\nm=audio 9 RTP/AVP 0\r\n";
        assert_eq!(without_wideband_events(plain), plain);
    }

    #[test]
    fn garbage_and_offers_without_usable_audio_are_refused_with_a_reason() {
        let now = Instant::now();
        for bad in ["", "hello", "v=0\r\nnonsense\r\n"] {
            let e = negotiate(bad, local(), StreamIds::random(), now).expect_err(bad);
            assert!(matches!(e, WebRtcError::BadOffer(_)), "{bad:?}: {e}");
        }
        let opus_only = CHROMIUM_OFFER
            .replace(" 111 63 9 0 8 13 110 126", " 111")
            .replace("a=rtpmap:0 PCMU/8000\r\n", "")
            .replace("a=rtpmap:8 PCMA/8000\r\n", "");
        let e = negotiate(&opus_only, local(), StreamIds::random(), now).expect_err("opus only");
        assert!(
            matches!(e, WebRtcError::NoAcceptableCodec | WebRtcError::BadOffer(_)),
            "{e}"
        );
    }
}
