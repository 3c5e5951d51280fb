//! One call leg's RTP, sans-IO: inputs with a timestamp in, outputs out.
//!
//! ```text
//! loop {
//!     let deadline = loop {
//!         match session.poll_output() {
//!             Some(Output::Transmit(t)) => socket.send_to(&t.bytes, t.to),
//!             Some(Output::Event(e)) => handle(e),
//!             Some(Output::Timeout(at)) => break at,
//!             None => return, // closed
//!         }
//!     };
//!     // wait for a datagram or `deadline`, then:
//!     session.handle_input(now, Input::Receive(source, &datagram)); // or Input::Timeout
//! }
//! ```
//!
//! The session owns our SSRC, sequence number and timestamp; sends one packet every 20 ms
//! (prompt audio, bridged audio, DTMF, or silence so the remote's clock keeps running);
//! reorders and decodes what arrives into 160-sample frames; reports DTMF digits once each;
//! follows the remote's real address (symmetric RTP); and reports [`MediaEvent::MediaStopped`]
//! when nothing has arrived for `no_media_timeout`.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::codec::{Codec, SAMPLES_PER_FRAME};
use super::dtmf::{self, DtmfPacket, DtmfReceiver};
use super::jitter::{Entry, JitterBuffer, JitterConfig, JitterOutput, JitterStats};
use super::playout::{Clip, Frame, PlaybackEnded, PlaybackId, Playout};
use super::rtp::{self, RtpError, RtpHeader};
use super::sdp::RemoteMedia;

/// RFC 3389 comfort noise: carries no audio we use.
const COMFORT_NOISE_PT: u8 = 13;
/// A new source address may take over the stream once the current one has been silent this
/// long (NAT rebinding, or a media server that moved the call).
const RELATCH_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SessionError {
    #[error("telephone-event was not negotiated with the remote")]
    DtmfNotNegotiated,
    #[error(transparent)]
    Dtmf(#[from] dtmf::DtmfError),
}

/// Random starting values for our stream (RFC 3550 wants all three random). Made outside the
/// session so the session stays deterministic under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamIds {
    pub ssrc: u32,
    pub sequence: u16,
    pub timestamp: u32,
}

impl StreamIds {
    /// From the standard library's per-process random hash keys; plenty for SSRCs, which
    /// need to be unlikely to collide, not secret.
    pub fn random() -> StreamIds {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default(),
        );
        let a = h.finish();
        h.write_u8(1);
        let b = h.finish();
        StreamIds {
            ssrc: a as u32,
            sequence: (a >> 32) as u16,
            timestamp: b as u32,
        }
    }
}

/// Settings for one leg. Build it from the SDP agreement with [`SessionConfig::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    pub codec: Codec,
    /// The payload type for `codec` that we send with.
    pub payload_type: u8,
    pub telephone_event: Option<u8>,
    /// Where to send, from the SDP; `None` until learned from the first packet.
    pub remote: Option<SocketAddr>,
    /// False while the remote has us on hold (its SDP says it does not receive).
    pub we_send: bool,
    /// Whether the remote said it sends; the no-media timer only runs when it does.
    pub remote_sends: bool,
    /// Follow the address packets really come from (callers behind NAT).
    pub symmetric_rtp: bool,
    /// Report [`MediaEvent::MediaStopped`] after this long without a packet.
    pub no_media_timeout: Duration,
    pub jitter: JitterConfig,
    pub ids: StreamIds,
    /// Tone length of each DTMF digit we send.
    pub dtmf_duration: Duration,
    /// Pause between digits we send.
    pub dtmf_gap: Duration,
    /// Most bridged audio to hold before dropping the oldest (bounds bridge latency).
    pub bridge_max_delay: Duration,
}

impl SessionConfig {
    pub fn new(remote: &RemoteMedia, ids: StreamIds) -> SessionConfig {
        SessionConfig {
            codec: remote.codec,
            payload_type: remote.payload_type,
            telephone_event: remote.telephone_event,
            remote: remote.addr,
            we_send: remote.we_send(),
            remote_sends: remote.remote_sends(),
            symmetric_rtp: true,
            no_media_timeout: Duration::from_secs(30),
            jitter: JitterConfig::default(),
            ids,
            dtmf_duration: Duration::from_millis(100),
            dtmf_gap: Duration::from_millis(100),
            bridge_max_delay: Duration::from_millis(100),
        }
    }

    /// Report [`MediaEvent::MediaStopped`] after this long without a packet.
    pub fn with_no_media_timeout(mut self, timeout: Duration) -> SessionConfig {
        self.no_media_timeout = timeout;
        self
    }
}

/// What drives the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    /// A datagram arrived on our socket from `source`.
    Receive(SocketAddr, &'a [u8]),
    /// The deadline from the last [`Output::Timeout`] passed (early calls are harmless).
    Timeout,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

/// 20 ms of the remote's audio, decoded: always 160 samples at 8 kHz.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioFrame {
    pub samples: Vec<i16>,
    /// Some samples were filled in for lost or missing packets (silence).
    pub concealed: bool,
}

/// What the session tells the rest of the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    Audio(AudioFrame),
    Dtmf(char),
    /// A playback finished or was stopped.
    PlaybackEnded(PlaybackEnded),
    /// Nothing arrived for `no_media_timeout`: the remote's network probably died.
    MediaStopped,
    /// Packets arrive again after `MediaStopped`.
    MediaResumed,
    /// Symmetric RTP: we now send to where the remote's packets come from.
    RemoteAddressChanged(SocketAddr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Transmit(Transmit),
    Event(MediaEvent),
    /// Call [`RtpSession::handle_input`] with [`Input::Timeout`] at this moment.
    Timeout(Instant),
}

/// Counters for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub packets_received: u64,
    pub packets_sent: u64,
    pub malformed: u64,
    pub rtcp_ignored: u64,
    /// Packets from an address other than the remote's, not taken over.
    pub foreign_source: u64,
    pub unknown_payload_type: u64,
    pub jitter: JitterStats,
}

#[derive(Debug)]
struct OutgoingDigit {
    packets: Vec<DtmfPacket>,
    next: usize,
    timestamp: u32,
}

struct OutgoingEventPacket {
    payload_type: u8,
    timestamp: u32,
    payload: [u8; 4],
    marker: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub struct RtpSession {
    config: SessionConfig,
    remote: Option<SocketAddr>,
    /// Whether a packet from `remote` was ever accepted (before that, any source may latch).
    heard_remote: bool,
    last_from_remote: Option<Instant>,
    remote_ssrc: Option<u32>,

    playout: Playout,
    sequence: u16,
    marker_next: bool,

    dtmf_rx: DtmfReceiver,
    dtmf_queue: VecDeque<char>,
    dtmf_active: Option<OutgoingDigit>,
    dtmf_pause_ticks: u32,

    jitter: JitterBuffer,
    inbound: Vec<i16>,
    inbound_concealed: bool,

    bridge_in: VecDeque<i16>,
    /// Bridged audio is only taken once a little is buffered, so the other leg's packet
    /// jitter does not chop it into partial frames.
    bridge_primed: bool,

    last_activity: Instant,
    media_stopped: bool,

    outputs: VecDeque<Output>,
    closed: bool,
    stats: SessionStats,
}

impl RtpSession {
    /// A session whose send clock starts at `now`.
    pub fn new(now: Instant, config: SessionConfig) -> RtpSession {
        RtpSession {
            remote: config.remote,
            heard_remote: false,
            last_from_remote: None,
            remote_ssrc: None,
            playout: Playout::new(now),
            sequence: config.ids.sequence,
            marker_next: true,
            dtmf_rx: DtmfReceiver::new(),
            dtmf_queue: VecDeque::new(),
            dtmf_active: None,
            dtmf_pause_ticks: 0,
            jitter: JitterBuffer::new(config.jitter),
            inbound: Vec::with_capacity(SAMPLES_PER_FRAME * 2),
            inbound_concealed: false,
            bridge_in: VecDeque::new(),
            bridge_primed: false,
            last_activity: now,
            media_stopped: false,
            outputs: VecDeque::new(),
            closed: false,
            stats: SessionStats::default(),
            config,
        }
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Where we currently send.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote
    }

    pub fn stats(&self) -> SessionStats {
        SessionStats {
            jitter: self.jitter.stats(),
            ..self.stats
        }
    }

    /// Feed one input. Then drain [`poll_output`](Self::poll_output).
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        if self.closed {
            return;
        }
        if let Input::Receive(source, datagram) = input {
            self.receive(now, source, datagram);
        }
        self.drive(now);
    }

    /// The next output: transmits and events in order, then always a `Timeout` with the
    /// next deadline. `None` only once the session is closed and drained.
    pub fn poll_output(&mut self) -> Option<Output> {
        if let Some(out) = self.outputs.pop_front() {
            return Some(out);
        }
        if self.closed {
            return None;
        }
        Some(Output::Timeout(self.next_deadline()))
    }

    fn next_deadline(&self) -> Instant {
        let mut at = self.playout.next_deadline();
        if let Some(j) = self.jitter.next_deadline() {
            at = at.min(j);
        }
        if let Some(m) = self.no_media_deadline() {
            at = at.min(m);
        }
        at
    }

    fn no_media_deadline(&self) -> Option<Instant> {
        if !self.config.remote_sends || self.media_stopped {
            return None;
        }
        // A timeout too large to add up means "never".
        self.last_activity.checked_add(self.config.no_media_timeout)
    }

    /// Stop sending and receiving; queued outputs can still be drained.
    pub fn close(&mut self) {
        self.closed = true;
    }

    // --- commands -------------------------------------------------------------------------

    /// Queue clips to play back to back after anything already queued.
    pub fn play(&mut self, id: PlaybackId, clips: Vec<Clip>) {
        self.playout.enqueue(id, clips);
    }

    /// Loop clips (hold music) until stopped or until something else is played.
    pub fn play_loop(&mut self, id: PlaybackId, clips: Vec<Clip>) {
        self.playout.play_loop(id, clips);
    }

    /// Play clips now, replacing whatever plays or waits (each reported interrupted): what a
    /// call brain means by "play" ("connecting" must not wait behind a prompt).
    pub fn play_now(&mut self, id: PlaybackId, clips: Vec<Clip>, looped: bool) {
        self.stop_playout();
        if looped {
            self.play_loop(id, clips);
        } else {
            self.play(id, clips);
        }
    }

    /// Barge-in: stop all playback now. Returns true if something was playing.
    pub fn stop_playout(&mut self) -> bool {
        let stopped = self.playout.stop();
        self.collect_playout_events();
        stopped
    }

    pub fn is_playing(&self) -> bool {
        self.playout.is_playing()
    }

    /// Send DTMF digits (RFC 4733), one after another.
    pub fn send_dtmf(&mut self, digits: &str) -> Result<(), SessionError> {
        if self.config.telephone_event.is_none() {
            return Err(SessionError::DtmfNotNegotiated);
        }
        for d in digits.chars() {
            dtmf::digit_to_event(d)?;
        }
        self.dtmf_queue.extend(digits.chars());
        Ok(())
    }

    /// Audio from the other leg of a bridge (8 kHz PCM), mixed into what we send. The
    /// buffer is bounded: past `bridge_max_delay` the oldest samples are dropped.
    pub fn push_bridge_audio(&mut self, samples: &[i16]) {
        self.bridge_in.extend(samples.iter().copied());
        let max = (self.config.bridge_max_delay.as_millis() as usize * 8).max(SAMPLES_PER_FRAME);
        if self.bridge_in.len() > max {
            let excess = self.bridge_in.len() - max;
            self.bridge_in.drain(..excess);
        }
    }

    /// Forget bridged audio not yet sent (bridge torn down).
    pub fn clear_bridge_audio(&mut self) {
        self.bridge_in.clear();
        self.bridge_primed = false;
    }

    /// The remote's SDP changed (re-INVITE): new address, codec, hold or resume.
    pub fn update_remote(&mut self, now: Instant, remote: &RemoteMedia) {
        let resumed = !self.config.we_send && remote.we_send();
        self.config.codec = remote.codec;
        self.config.payload_type = remote.payload_type;
        self.config.telephone_event = remote.telephone_event;
        self.config.we_send = remote.we_send();
        self.config.remote_sends = remote.remote_sends();
        if let Some(addr) = remote.addr
            && Some(addr) != self.remote
        {
            self.remote = Some(addr);
            self.heard_remote = false;
            self.last_from_remote = None;
        }
        if resumed {
            self.marker_next = true;
        }
        // A fresh start for the no-media timer: hold/resume changes who sends.
        self.last_activity = now;
        self.media_stopped = false;
    }

    // --- receiving ------------------------------------------------------------------------

    fn receive(&mut self, now: Instant, source: SocketAddr, datagram: &[u8]) {
        let packet = match rtp::parse(datagram) {
            Ok(p) => p,
            Err(RtpError::Rtcp(_)) => {
                self.stats.rtcp_ignored += 1;
                return;
            }
            Err(e) => {
                self.stats.malformed += 1;
                tracing::trace!(%source, error = %e, "dropping malformed datagram");
                return;
            }
        };
        let h = packet.header;
        if !self.accept_source(now, source, h.ssrc) {
            self.stats.foreign_source += 1;
            tracing::trace!(%source, "dropping RTP from a foreign address");
            return;
        }
        self.stats.packets_received += 1;
        self.last_activity = now;
        if self.media_stopped {
            self.media_stopped = false;
            self.event(MediaEvent::MediaResumed);
        }

        let same_stream = self.jitter.ssrc() == Some(h.ssrc);
        if Some(h.payload_type) == self.config.telephone_event {
            match self.dtmf_rx.receive(h.ssrc, h.timestamp, packet.payload) {
                Ok(Some(digit)) => {
                    tracing::debug!(%digit, "DTMF received");
                    self.event(MediaEvent::Dtmf(digit));
                }
                Ok(None) => {}
                Err(e) => {
                    self.stats.malformed += 1;
                    tracing::trace!(error = %e, "bad telephone-event");
                }
            }
            // Holds the sequence number so the jitter buffer does not wait for it as lost.
            // Another SSRC's events (a separate DTMF source) must not reset the audio stream.
            if same_stream {
                self.jitter
                    .push(now, h.ssrc, h.sequence, h.timestamp, Entry::Placeholder);
            }
        } else if let Some(_codec) = self.codec_for(h.payload_type) {
            self.jitter.push(
                now,
                h.ssrc,
                h.sequence,
                h.timestamp,
                Entry::Audio {
                    payload_type: h.payload_type,
                    payload: packet.payload.to_vec(),
                },
            );
        } else {
            if h.payload_type != COMFORT_NOISE_PT {
                self.stats.unknown_payload_type += 1;
                tracing::trace!(pt = h.payload_type, "ignoring unknown payload type");
            }
            if same_stream {
                self.jitter
                    .push(now, h.ssrc, h.sequence, h.timestamp, Entry::Placeholder);
            }
        }
    }

    /// Symmetric RTP with a guard against media hijacking: a new source takes over only
    /// before anything came from the current one, for the same SSRC (NAT rebinding), or once
    /// the current source has been silent for a while.
    fn accept_source(&mut self, now: Instant, source: SocketAddr, ssrc: u32) -> bool {
        let matches = self.remote == Some(source);
        if !matches {
            if !self.config.symmetric_rtp {
                // Without latching, accept media from anywhere but keep sending to the SDP's.
                return true;
            }
            let silent = self
                .last_from_remote
                .is_none_or(|t| now.saturating_duration_since(t) >= RELATCH_AFTER);
            let take_over = self.remote.is_none()
                || !self.heard_remote
                || self.remote_ssrc == Some(ssrc)
                || silent;
            if !take_over {
                return false;
            }
            tracing::info!(from = ?self.remote, to = %source, "RTP source moved; following it");
            self.remote = Some(source);
            self.event(MediaEvent::RemoteAddressChanged(source));
        }
        self.heard_remote = true;
        self.last_from_remote = Some(now);
        self.remote_ssrc = Some(ssrc);
        true
    }

    fn codec_for(&self, pt: u8) -> Option<Codec> {
        if pt == self.config.payload_type {
            Some(self.config.codec)
        } else {
            // The other G.711 by its static type: harmless to accept, some phones switch.
            Codec::from_payload_type(pt)
        }
    }

    fn drain_jitter(&mut self, now: Instant) {
        while let Some(out) = self.jitter.poll(now) {
            match out {
                JitterOutput::Audio {
                    payload_type,
                    payload,
                    ..
                } => {
                    let codec = self.codec_for(payload_type).unwrap_or(self.config.codec);
                    codec.decode_into(&payload, &mut self.inbound);
                }
                JitterOutput::Gap { samples, .. } => {
                    let n = samples as usize;
                    self.inbound.resize(self.inbound.len() + n, 0);
                    self.inbound_concealed = true;
                }
            }
            self.emit_inbound_frames();
        }
    }

    fn emit_inbound_frames(&mut self) {
        while self.inbound.len() >= SAMPLES_PER_FRAME {
            let rest = self.inbound.split_off(SAMPLES_PER_FRAME);
            let samples = std::mem::replace(&mut self.inbound, rest);
            let concealed = std::mem::take(&mut self.inbound_concealed);
            self.event(MediaEvent::Audio(AudioFrame { samples, concealed }));
        }
    }

    // --- timers and sending ---------------------------------------------------------------

    fn drive(&mut self, now: Instant) {
        self.drain_jitter(now);
        while let Some(frame) = self.playout.poll(now) {
            self.send_tick(frame);
        }
        self.collect_playout_events();
        if let Some(deadline) = self.no_media_deadline()
            && now >= deadline
        {
            tracing::info!(
                after = ?self.config.no_media_timeout,
                "no RTP from the remote: media stopped"
            );
            self.media_stopped = true;
            self.event(MediaEvent::MediaStopped);
        }
    }

    fn collect_playout_events(&mut self) {
        while let Some(ended) = self.playout.poll_ended() {
            self.event(MediaEvent::PlaybackEnded(ended));
        }
    }

    fn send_tick(&mut self, frame: Frame) {
        let timestamp = self
            .config
            .ids
            .timestamp
            .wrapping_add((frame.tick as u32).wrapping_mul(SAMPLES_PER_FRAME as u32));

        // Bridged audio is consumed every tick even if not sent, so it never goes stale.
        // Whole frames only; after running dry, wait for two frames (40 ms) before resuming.
        let mut samples = frame.samples;
        if !self.bridge_primed && self.bridge_in.len() >= 2 * SAMPLES_PER_FRAME {
            self.bridge_primed = true;
        }
        if self.bridge_primed {
            if self.bridge_in.len() >= SAMPLES_PER_FRAME {
                for (s, b) in samples
                    .iter_mut()
                    .zip(self.bridge_in.drain(..SAMPLES_PER_FRAME))
                {
                    *s = s.saturating_add(b);
                }
            } else {
                self.bridge_primed = false;
            }
        }

        if let Some(dtmf) = self.next_dtmf_packet(timestamp) {
            self.transmit(
                dtmf.payload_type,
                dtmf.marker,
                dtmf.timestamp,
                &dtmf.payload,
            );
            return;
        }
        let mut payload = Vec::with_capacity(SAMPLES_PER_FRAME);
        self.config.codec.encode_into(&samples, &mut payload);
        let marker = std::mem::take(&mut self.marker_next);
        self.transmit(self.config.payload_type, marker, timestamp, &payload);
    }

    /// The DTMF packet for this tick, if a digit is being sent. Audio is not sent while a
    /// digit is (RFC 4733 2.5.1.2 lets events replace it).
    fn next_dtmf_packet(&mut self, now_ts: u32) -> Option<OutgoingEventPacket> {
        let pt = self.config.telephone_event?;
        if self.dtmf_active.is_none() {
            if self.dtmf_pause_ticks > 0 {
                self.dtmf_pause_ticks -= 1;
                return None;
            }
            let digit = self.dtmf_queue.pop_front()?;
            let ms = self.config.dtmf_duration.as_millis().min(8000) as u32;
            let packets = dtmf::digit_packets(digit, ms, 10).ok()?;
            self.dtmf_active = Some(OutgoingDigit {
                packets,
                next: 0,
                timestamp: now_ts,
            });
        }
        let active = self.dtmf_active.as_mut()?;
        let packet = *active.packets.get(active.next)?;
        let timestamp = active.timestamp;
        active.next += 1;
        if active.next >= active.packets.len() {
            self.dtmf_active = None;
            self.dtmf_pause_ticks = (self.config.dtmf_gap.as_millis() / 20) as u32;
        }
        Some(OutgoingEventPacket {
            payload_type: pt,
            timestamp,
            payload: packet.event.to_bytes(),
            marker: packet.marker,
        })
    }

    fn transmit(&mut self, payload_type: u8, marker: bool, timestamp: u32, payload: &[u8]) {
        let Some(to) = self.remote.filter(|_| self.config.we_send) else {
            return;
        };
        let header = RtpHeader {
            payload_type,
            marker,
            sequence: self.sequence,
            timestamp,
            ssrc: self.config.ids.ssrc,
        };
        match rtp::build(&header, payload) {
            Ok(bytes) => {
                self.sequence = self.sequence.wrapping_add(1);
                self.stats.packets_sent += 1;
                self.outputs
                    .push_back(Output::Transmit(Transmit { to, bytes }));
            }
            Err(e) => tracing::warn!(error = %e, "cannot build RTP packet"),
        }
    }

    fn event(&mut self, e: MediaEvent) {
        self.outputs.push_back(Output::Event(e));
    }
}

/// Bridge helper: relay one leg's decoded audio into the other leg's outgoing stream.
/// Transcoding between PCMU and PCMA falls out of it: audio is decoded with the source
/// leg's codec and encoded with the target's (for the same codec that round trip is exact,
/// see the codec tests). Returns true if the event was audio and was relayed.
pub fn relay(event: &MediaEvent, to: &mut RtpSession) -> bool {
    match event {
        MediaEvent::Audio(frame) => {
            to.push_bridge_audio(&frame.samples);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::sdp::Direction;

    const CALLER: &str = "192.0.2.10:4000";

    fn remote(codec: Codec) -> RemoteMedia {
        RemoteMedia {
            addr: Some(CALLER.parse().expect("addr")),
            codec,
            payload_type: codec.payload_type(),
            telephone_event: Some(101),
            direction: Direction::SendRecv,
            null_address: false,
            ptime: Some(20),
        }
    }

    fn ids() -> StreamIds {
        StreamIds {
            ssrc: 0x1111,
            sequence: 65530,
            timestamp: 4_294_967_000,
        }
    }

    fn session(t: Instant, codec: Codec) -> RtpSession {
        RtpSession::new(t, SessionConfig::new(&remote(codec), ids()))
    }

    /// Drain outputs, returning (transmits, events, timeout).
    fn drain(s: &mut RtpSession) -> (Vec<Transmit>, Vec<MediaEvent>, Option<Instant>) {
        let mut tx = Vec::new();
        let mut ev = Vec::new();
        while let Some(o) = s.poll_output() {
            match o {
                Output::Transmit(t) => tx.push(t),
                Output::Event(e) => ev.push(e),
                Output::Timeout(t) => return (tx, ev, Some(t)),
            }
        }
        (tx, ev, None)
    }

    /// An RTP packet as the caller would send it.
    fn caller_packet(seq: u16, ts: u32, pt: u8, payload: &[u8]) -> Vec<u8> {
        rtp::build(
            &RtpHeader {
                payload_type: pt,
                marker: false,
                sequence: seq,
                timestamp: ts,
                ssrc: 0xCA11,
            },
            payload,
        )
        .expect("build")
    }

    fn src() -> SocketAddr {
        CALLER.parse().expect("addr")
    }

    fn audio_frames(ev: &[MediaEvent]) -> Vec<&AudioFrame> {
        ev.iter()
            .filter_map(|e| match e {
                MediaEvent::Audio(f) => Some(f),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn sends_silence_every_20ms_with_a_running_clock() {
        let t = Instant::now();
        let mut s = session(t, Codec::Pcmu);
        s.handle_input(t, Input::Timeout);
        let (tx, _, timeout) = drain(&mut s);
        assert_eq!(tx.len(), 1);
        assert_eq!(timeout, Some(t + Duration::from_millis(20)));
        for i in 1..5u32 {
            s.handle_input(t + Duration::from_millis(20) * i, Input::Timeout);
        }
        let (more, _, _) = drain(&mut s);
        let all: Vec<_> = tx.iter().chain(&more).collect();
        assert_eq!(all.len(), 5);
        let parsed: Vec<RtpHeader> = all
            .iter()
            .map(|t| rtp::parse(&t.bytes).expect("parse").header)
            .collect();
        for (i, h) in parsed.iter().enumerate() {
            assert_eq!(h.ssrc, 0x1111);
            assert_eq!(h.payload_type, 0);
            assert_eq!(h.sequence, 65530u16.wrapping_add(i as u16));
            assert_eq!(
                h.timestamp,
                4_294_967_000u32.wrapping_add(160 * i as u32),
                "timestamp wraps"
            );
            assert_eq!(h.marker, i == 0);
        }
        let p = rtp::parse(&all[0].bytes).expect("parse");
        assert!(p.payload.iter().all(|&b| b == 0xFF), "PCMU silence");
        assert_eq!(all[0].to, src());
    }

    /// A brain's "play" replaces: the prompt before is cut off (reported interrupted) and the
    /// new one is on the wire in the next packet, not after the old one.
    #[test]
    fn play_now_replaces_what_plays() {
        let t = Instant::now();
        let mut s = session(t, Codec::Pcma);
        s.play(1, vec![Clip::from_8k(vec![1000i16; 8000])]);
        s.handle_input(t, Input::Timeout);
        drain(&mut s);
        s.play_now(2, vec![Clip::from_8k(vec![-3000i16; 8000])], false);
        s.handle_input(t + Duration::from_millis(20), Input::Timeout);
        let (sent, events, _) = drain(&mut s);
        assert!(events.contains(&MediaEvent::PlaybackEnded(PlaybackEnded {
            id: 1,
            interrupted: true
        })));
        let code = Codec::Pcma.encode_sample(-3000);
        let last = sent.last().expect("a packet");
        let payload = rtp::parse(&last.bytes).expect("rtp").payload.to_vec();
        assert!(payload.iter().all(|&b| b == code), "still the old prompt");
        // Hold music loops, and the next play_now replaces it too.
        s.play_now(3, vec![Clip::from_8k(vec![500i16; 160])], true);
        for i in 2..6u32 {
            s.handle_input(t + Duration::from_millis(20) * i, Input::Timeout);
        }
        let (_, events, _) = drain(&mut s);
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, MediaEvent::PlaybackEnded(p) if p.id == 3))
        );
        s.play_now(4, vec![Clip::from_8k(vec![1i16; 160])], false);
        let (_, events, _) = drain(&mut s);
        assert!(events.contains(&MediaEvent::PlaybackEnded(PlaybackEnded {
            id: 3,
            interrupted: true
        })));
    }

    #[test]
    fn prompt_audio_is_encoded_and_paced() {
        let t = Instant::now();
        let mut s = session(t, Codec::Pcma);
        let clip = Clip::from_8k(vec![1000i16; 400]);
        s.play(5, vec![clip]);
        let mut sent = Vec::new();
        let mut events = Vec::new();
        for i in 0..4u32 {
            s.handle_input(t + Duration::from_millis(20) * i, Input::Timeout);
            let (tx, ev, _) = drain(&mut s);
            sent.extend(tx);
            events.extend(ev);
        }
        let payloads: Vec<Vec<u8>> = sent
            .iter()
            .map(|t| rtp::parse(&t.bytes).expect("rtp").payload.to_vec())
            .collect();
        let code = Codec::Pcma.encode_sample(1000);
        assert!(payloads[0].iter().all(|&b| b == code));
        assert!(payloads[1].iter().all(|&b| b == code));
        assert_eq!(payloads[2][79], code);
        assert_eq!(payloads[2][80], Codec::Pcma.silence_byte());
        assert!(events.contains(&MediaEvent::PlaybackEnded(PlaybackEnded {
            id: 5,
            interrupted: false
        })));
    }

    #[test]
    fn received_audio_comes_out_as_frames_in_order() {
        let t = Instant::now();
        let mut s = session(t, Codec::Pcmu);
        let tone = |v: i16| Codec::Pcmu.encode(&[v; 160]);
        // Packets 1, 3, 2: reordered.
        for (seq, v) in [(1u16, 100i16), (3, 300), (2, 200)] {
            let p = caller_packet(seq, u32::from(seq) * 160, 0, &tone(v));
            s.handle_input(t, Input::Receive(src(), &p));
        }
        let (_, ev, _) = drain(&mut s);
        let frames = audio_frames(&ev);
        assert_eq!(frames.len(), 3);
        let firsts: Vec<i16> = frames.iter().map(|f| f.samples[0]).collect();
        let expect: Vec<i16> = [100, 200, 300]
            .iter()
            .map(|&v| Codec::Pcmu.decode_sample(Codec::Pcmu.encode_sample(v)))
            .collect();
        assert_eq!(firsts, expect);
        assert!(
            frames
                .iter()
                .all(|f| f.samples.len() == 160 && !f.concealed)
        );
    }

    #[test]
    fn loss_becomes_a_concealed_frame_after_the_wait() {
        let t = Instant::now();
        let mut s = session(t, Codec::Pcmu);
        let pay = Codec::Pcmu.encode(&[500; 160]);
        s.handle_input(t, Input::Receive(src(), &caller_packet(1, 160, 0, &pay)));
        s.handle_input(t, Input::Receive(src(), &caller_packet(3, 480, 0, &pay)));
        let (_, ev, timeout) = drain(&mut s);
        assert_eq!(audio_frames(&ev).len(), 1);
        let deadline = timeout.expect("timeout");
        assert!(deadline <= t + Duration::from_millis(60));
        // Walk time forward to the loss deadline.
        let mut frames = Vec::new();
        let mut now = t;
        while now <= t + Duration::from_millis(60) {
            now += Duration::from_millis(10);
            s.handle_input(now, Input::Timeout);
            let (_, ev, _) = drain(&mut s);
            frames.extend(audio_frames(&ev).into_iter().cloned());
        }
        assert_eq!(frames.len(), 2);
        assert!(frames[0].concealed && frames[0].samples.iter().all(|&x| x == 0));
        assert!(!frames[1].concealed);
        assert_eq!(s.stats().jitter.lost, 1);
    }

    #[test]
    fn dtmf_end_repeats_give_one_digit_and_no_false_loss() {
        let t = Instant::now();
        let mut s = session(t, Codec::Pcmu);
        let pay = Codec::Pcmu.encode(&[0; 160]);
        let mut seq = 10u16;
        let mut ts = 1600u32;
        let mut digits = Vec::new();
        let mut feed = |s: &mut RtpSession, bytes: Vec<u8>| {
            s.handle_input(t, Input::Receive(src(), &bytes));
            let (_, ev, _) = drain(s);
            for e in ev {
                if let MediaEvent::Dtmf(d) = e {
                    digits.push(d);
                }
            }
        };
        feed(&mut s, caller_packet(seq, ts, 0, &pay));
        seq += 1;
        ts += 160;
        for p in dtmf::digit_packets('5', 100, 10).expect("packets") {
            feed(&mut s, caller_packet(seq, ts, 101, &p.event.to_bytes()));
            seq += 1;
        }
        feed(&mut s, caller_packet(seq, ts + 800, 0, &pay));
        assert_eq!(digits, vec!['5']);
        assert_eq!(s.stats().jitter.lost, 0, "event packets are not losses");
    }

    #[test]
    fn sends_dtmf_as_rfc4733_events() {
        let t = Instant::now();
        let mut s = session(t, Codec::Pcmu);
        s.send_dtmf("1#").expect("negotiated");
        let mut sent = Vec::new();
        for i in 0..30u32 {
            s.handle_input(t + Duration::from_millis(20) * i, Input::Timeout);
            sent.extend(drain(&mut s).0);
        }
        let mut rx = DtmfReceiver::new();
        let mut digits = String::new();
        let mut event_ts = Vec::new();
        for tx in &sent {
            let p = rtp::parse(&tx.bytes).expect("rtp");
            if p.header.payload_type == 101 {
                event_ts.push(p.header.timestamp);
                if let Some(d) = rx
                    .receive(p.header.ssrc, p.header.timestamp, p.payload)
                    .expect("ok")
                {
                    digits.push(d);
                }
            }
        }
        assert_eq!(digits, "1#");
        // 4 updates + 3 ends per 100 ms digit.
        assert_eq!(event_ts.len(), 14);
        // Sequence numbers stay contiguous across audio and events.
        let seqs: Vec<u16> = sent
            .iter()
            .map(|t| rtp::parse(&t.bytes).expect("rtp").header.sequence)
            .collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
        assert!(s.send_dtmf("x").is_err());
    }

    #[test]
    fn dtmf_needs_negotiation() {
        let t = Instant::now();
        let mut r = remote(Codec::Pcmu);
        r.telephone_event = None;
        let mut s = RtpSession::new(t, SessionConfig::new(&r, ids()));
        assert_eq!(s.send_dtmf("1"), Err(SessionError::DtmfNotNegotiated));
    }

    #[test]
    fn media_stopped_after_silence_and_resumed() {
        let t = Instant::now();
        let mut cfg = SessionConfig::new(&remote(Codec::Pcmu), ids());
        cfg.no_media_timeout = Duration::from_secs(30);
        let mut s = RtpSession::new(t, cfg);
        let pay = Codec::Pcmu.encode(&[0; 160]);
        s.handle_input(t, Input::Receive(src(), &caller_packet(1, 0, 0, &pay)));
        drain(&mut s);
        s.handle_input(t + Duration::from_secs(29), Input::Timeout);
        let (_, ev, _) = drain(&mut s);
        assert!(!ev.contains(&MediaEvent::MediaStopped));
        s.handle_input(t + Duration::from_secs(30), Input::Timeout);
        let (_, ev, _) = drain(&mut s);
        assert_eq!(
            ev.iter()
                .filter(|e| **e == MediaEvent::MediaStopped)
                .count(),
            1
        );
        // Reported once only.
        s.handle_input(t + Duration::from_secs(40), Input::Timeout);
        let (_, ev, _) = drain(&mut s);
        assert!(!ev.contains(&MediaEvent::MediaStopped));
        let later = t + Duration::from_secs(41);
        s.handle_input(
            later,
            Input::Receive(src(), &caller_packet(2, 160, 0, &pay)),
        );
        let (_, ev, _) = drain(&mut s);
        assert!(ev.contains(&MediaEvent::MediaResumed));
    }

    #[test]
    fn no_media_timer_is_off_while_the_remote_does_not_send() {
        let t = Instant::now();
        let mut s = session(t, Codec::Pcmu);
        let mut held = remote(Codec::Pcmu);
        held.direction = Direction::Inactive;
        s.update_remote(t, &held);
        s.handle_input(t + Duration::from_secs(60), Input::Timeout);
        let (tx, ev, _) = drain(&mut s);
        assert!(!ev.contains(&MediaEvent::MediaStopped));
        assert!(tx.is_empty(), "inactive: we do not send");
    }

    #[test]
    fn symmetric_rtp_follows_the_real_source() {
        let t = Instant::now();
        let mut s = session(t, Codec::Pcmu);
        let nat: SocketAddr = "203.0.113.5:61000".parse().expect("addr");
        let pay = Codec::Pcmu.encode(&[0; 160]);
        s.handle_input(t, Input::Receive(nat, &caller_packet(1, 0, 0, &pay)));
        let (tx, ev, _) = drain(&mut s);
        assert!(ev.contains(&MediaEvent::RemoteAddressChanged(nat)));
        assert!(tx.iter().all(|t| t.to == nat));
        assert_eq!(s.remote_addr(), Some(nat));
        // Someone else spraying packets with another SSRC is ignored...
        let evil: SocketAddr = "198.51.100.66:5000".parse().expect("addr");
        let mut spoof = caller_packet(2, 160, 0, &pay);
        spoof[11] ^= 0xFF; // different SSRC
        s.handle_input(t + Duration::from_millis(20), Input::Receive(evil, &spoof));
        drain(&mut s);
        assert_eq!(s.remote_addr(), Some(nat));
        assert_eq!(s.stats().foreign_source, 1);
        // ...but the same SSRC from a new port (NAT rebinding) is followed.
        let rebound: SocketAddr = "203.0.113.5:61002".parse().expect("addr");
        s.handle_input(
            t + Duration::from_millis(40),
            Input::Receive(rebound, &caller_packet(3, 320, 0, &pay)),
        );
        let (_, ev, _) = drain(&mut s);
        assert!(ev.contains(&MediaEvent::RemoteAddressChanged(rebound)));
    }

    #[test]
    fn garbage_and_rtcp_are_counted_not_fatal() {
        let t = Instant::now();
        let mut s = session(t, Codec::Pcmu);
        s.handle_input(t, Input::Receive(src(), b"\x00\x01garbage"));
        s.handle_input(t, Input::Receive(src(), &[0x81, 201, 0, 1, 0, 0, 0, 1]));
        s.handle_input(
            t,
            Input::Receive(src(), &[0x81, 201, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0]),
        );
        s.handle_input(t, Input::Receive(src(), &caller_packet(1, 0, 101, &[1, 2])));
        s.handle_input(t, Input::Receive(src(), &caller_packet(2, 0, 99, &[1, 2])));
        let stats = s.stats();
        assert_eq!(stats.malformed, 3);
        assert_eq!(stats.rtcp_ignored, 1);
        assert_eq!(stats.unknown_payload_type, 1);
    }

    #[test]
    fn bridge_relays_and_transcodes_pcmu_to_pcma() {
        let t = Instant::now();
        let mut caller = session(t, Codec::Pcmu);
        let mut agent_cfg = SessionConfig::new(&remote(Codec::Pcma), ids());
        agent_cfg.remote = Some("127.0.0.1:40000".parse().expect("addr"));
        let mut agent = RtpSession::new(t, agent_cfg);
        // The caller says something (a ramp, so order and content are checkable).
        let speech: Vec<i16> = (0..160).map(|i| (i * 50) as i16 - 4000).collect();
        for seq in 1..=2u16 {
            let p = caller_packet(seq, u32::from(seq) * 160, 0, &Codec::Pcmu.encode(&speech));
            caller.handle_input(t, Input::Receive(src(), &p));
        }
        let (_, ev, _) = drain(&mut caller);
        let mut relayed = 0;
        for e in &ev {
            if relay(e, &mut agent) {
                relayed += 1;
            }
        }
        assert_eq!(relayed, 2);
        agent.handle_input(t, Input::Timeout);
        let (tx, _, _) = drain(&mut agent);
        let pkt = tx.first().expect("agent gets a packet");
        let parsed = rtp::parse(&pkt.bytes).expect("rtp");
        assert_eq!(parsed.header.payload_type, 8);
        // Same bytes as a direct table transcode of the caller's payload.
        let direct =
            super::super::codec::transcode(Codec::Pcmu, Codec::Pcma, &Codec::Pcmu.encode(&speech));
        assert_eq!(parsed.payload, &direct[..]);
    }

    #[test]
    fn bridge_waits_for_two_frames_then_takes_whole_frames() {
        let t = Instant::now();
        let mut s = session(t, Codec::Pcmu);
        let tick = |s: &mut RtpSession, i: u32| {
            s.handle_input(t + Duration::from_millis(20) * i, Input::Timeout);
            let (tx, _, _) = drain(s);
            let p = rtp::parse(&tx[0].bytes).expect("rtp").payload.to_vec();
            Codec::Pcmu.decode(&p)[0]
        };
        s.push_bridge_audio(&[1000; 160]);
        assert_eq!(tick(&mut s, 0), 0, "one frame is not enough to start");
        s.push_bridge_audio(&[1000; 100]);
        assert_eq!(tick(&mut s, 1), 0);
        s.push_bridge_audio(&[1000; 60]);
        assert_ne!(tick(&mut s, 2), 0, "primed with two frames");
        assert_ne!(tick(&mut s, 3), 0);
        assert_eq!(tick(&mut s, 4), 0, "ran dry: silence, not a partial frame");
    }

    #[test]
    fn bridge_buffer_is_bounded() {
        let t = Instant::now();
        let mut s = session(t, Codec::Pcmu);
        for _ in 0..100 {
            s.push_bridge_audio(&[1; 160]);
        }
        assert!(s.bridge_in.len() <= 800);
    }

    #[test]
    fn barge_in_stops_the_prompt_at_once() {
        let t = Instant::now();
        let mut s = session(t, Codec::Pcmu);
        s.play(1, vec![Clip::from_8k(vec![8000i16; 8000])]);
        s.handle_input(t, Input::Timeout);
        drain(&mut s);
        assert!(s.stop_playout());
        let (_, ev, _) = drain(&mut s);
        assert!(ev.contains(&MediaEvent::PlaybackEnded(PlaybackEnded {
            id: 1,
            interrupted: true
        })));
        s.handle_input(t + Duration::from_millis(20), Input::Timeout);
        let (tx, _, _) = drain(&mut s);
        let p = rtp::parse(&tx[0].bytes).expect("rtp");
        assert!(p.payload.iter().all(|&b| b == 0xFF));
    }

    #[test]
    fn closed_session_ends_output() {
        let t = Instant::now();
        let mut s = session(t, Codec::Pcmu);
        s.close();
        s.handle_input(t, Input::Timeout);
        assert_eq!(s.poll_output(), None);
    }
}
