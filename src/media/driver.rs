//! The thin tokio driver: one task per call leg owns one UDP socket and one [`RtpSession`],
//! feeds it datagrams and timeouts, sends its transmits, and talks to the rest of the program
//! through channels. No media logic lives here.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::playout::{Clip, PlaybackId};
use super::sdp::RemoteMedia;
use super::session::{Input, MediaEvent, Output, RtpSession, SessionConfig, SessionStats};

/// Events waiting for a slow consumer; past this the oldest audio frames are dropped
/// (10 s of audio) so a stuck consumer cannot grow memory without bound.
const MAX_PENDING_EVENTS: usize = 500;
/// Capacity of the event channel handed to the consumer.
const EVENT_CHANNEL: usize = 256;
/// Bridge channel: 10 frames (200 ms). Fuller than that the far leg is not keeping up.
const BRIDGE_CHANNEL: usize = 10;
/// Big enough for any RTP packet we accept (typical G.711 is 172 bytes).
const RECV_BUFFER: usize = 2048;

#[derive(Debug, Error)]
pub enum DriverError {
    #[error("invalid RTP port range {low}-{high}")]
    InvalidRange { low: u16, high: u16 },
    #[error("no free even UDP port in {low}-{high} on {ip}")]
    NoFreePort { ip: IpAddr, low: u16, high: u16 },
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("the media task has ended")]
    Closed,
}

/// RTP ports to use, inclusive. RTP takes even ports (RFC 3550 11: RTCP would be the next
/// odd one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    low: u16,
    high: u16,
}

impl PortRange {
    pub fn new(low: u16, high: u16) -> Result<PortRange, DriverError> {
        let first_even = low.saturating_add(low % 2);
        if low == 0 || high < low || first_even > high {
            return Err(DriverError::InvalidRange { low, high });
        }
        Ok(PortRange { low, high })
    }

    pub fn low(&self) -> u16 {
        self.low
    }

    pub fn high(&self) -> u16 {
        self.high
    }

    fn even_ports(&self) -> Vec<u16> {
        (self.low..=self.high).filter(|p| p % 2 == 0).collect()
    }
}

/// Where the next search starts, so that calls spread over the range and a port just freed
/// is not handed out again at once (late packets of the old call would land in the new one).
static NEXT_PORT: AtomicUsize = AtomicUsize::new(0);

/// Bind a UDP socket on `ip` at a free even port from `ports`.
pub async fn bind_rtp_socket(ip: IpAddr, ports: PortRange) -> Result<UdpSocket, DriverError> {
    let candidates = ports.even_ports();
    let start = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
    for i in 0..candidates.len() {
        let Some(&port) = candidates.get(start.wrapping_add(i) % candidates.len()) else {
            continue;
        };
        match UdpSocket::bind(SocketAddr::new(ip, port)).await {
            Ok(socket) => {
                NEXT_PORT.store(start.wrapping_add(i + 1), Ordering::Relaxed);
                return Ok(socket);
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(DriverError::NoFreePort {
        ip,
        low: ports.low,
        high: ports.high,
    })
}

/// Orders for a media task.
#[derive(Debug)]
pub enum Command {
    /// Queue clips to play back to back (a prompt in parts plus number clips).
    Play {
        id: PlaybackId,
        clips: Vec<Clip>,
    },
    /// Loop clips (hold music) until stopped or until something else is played.
    PlayLoop {
        id: PlaybackId,
        clips: Vec<Clip>,
    },
    /// Play (or loop) clips now, replacing whatever plays or waits.
    PlayNow {
        id: PlaybackId,
        clips: Vec<Clip>,
        looped: bool,
    },
    /// Barge-in: stop playback now.
    StopPlayout,
    SendDtmf(String),
    /// Send this leg's received audio to another leg's bridge input.
    BridgeTo(mpsc::Sender<Vec<i16>>),
    Unbridge,
    /// The remote's SDP changed (re-INVITE).
    UpdateRemote(RemoteMedia),
    /// End the task (also happens when the handle is dropped).
    Close,
}

/// The rest of the program's side of a media task.
#[derive(Debug)]
pub struct MediaHandle {
    local_addr: SocketAddr,
    commands: mpsc::Sender<Command>,
    bridge_in: mpsc::Sender<Vec<i16>>,
    task: JoinHandle<SessionStats>,
}

impl MediaHandle {
    /// Our RTP address (for the SDP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub async fn send(&self, command: Command) -> Result<(), DriverError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| DriverError::Closed)
    }

    pub async fn play(&self, id: PlaybackId, clips: Vec<Clip>) -> Result<(), DriverError> {
        self.send(Command::Play { id, clips }).await
    }

    pub async fn play_loop(&self, id: PlaybackId, clips: Vec<Clip>) -> Result<(), DriverError> {
        self.send(Command::PlayLoop { id, clips }).await
    }

    /// Plays `clips` at once, replacing whatever plays (see [`Command::PlayNow`]).
    pub async fn play_now(&self, id: PlaybackId, clips: Vec<Clip>) -> Result<(), DriverError> {
        self.send(Command::PlayNow {
            id,
            clips,
            looped: false,
        })
        .await
    }

    /// Loops `clips` (hold music) at once, replacing whatever plays.
    pub async fn hold(&self, id: PlaybackId, clips: Vec<Clip>) -> Result<(), DriverError> {
        self.send(Command::PlayNow {
            id,
            clips,
            looped: true,
        })
        .await
    }

    pub async fn stop_playout(&self) -> Result<(), DriverError> {
        self.send(Command::StopPlayout).await
    }

    pub async fn send_dtmf(&self, digits: &str) -> Result<(), DriverError> {
        self.send(Command::SendDtmf(digits.to_owned())).await
    }

    pub async fn update_remote(&self, remote: RemoteMedia) -> Result<(), DriverError> {
        self.send(Command::UpdateRemote(remote)).await
    }

    /// Where other legs send audio to be mixed into what this leg sends.
    pub fn bridge_input(&self) -> mpsc::Sender<Vec<i16>> {
        self.bridge_in.clone()
    }

    /// Stop the task and return its counters.
    pub async fn close(self) -> SessionStats {
        // If the task already ended, the join below still returns its stats.
        let _ = self.commands.send(Command::Close).await;
        self.task.await.unwrap_or_default()
    }
}

/// Connect two legs both ways (caller <-> agent). Each leg decodes what it receives and the
/// other encodes it with its own codec, so PCMU <-> PCMA legs are transcoded.
pub async fn bridge(a: &MediaHandle, b: &MediaHandle) -> Result<(), DriverError> {
    a.send(Command::BridgeTo(b.bridge_input())).await?;
    b.send(Command::BridgeTo(a.bridge_input())).await
}

/// Undo [`bridge`].
pub async fn unbridge(a: &MediaHandle, b: &MediaHandle) -> Result<(), DriverError> {
    a.send(Command::Unbridge).await?;
    b.send(Command::Unbridge).await
}

/// Start the media task for one leg on a bound socket. Must be called inside a tokio
/// runtime. Events come out of the returned receiver; dropping the handle ends the task.
pub fn spawn(
    socket: UdpSocket,
    config: SessionConfig,
) -> Result<(MediaHandle, mpsc::Receiver<MediaEvent>), DriverError> {
    let local_addr = socket.local_addr()?;
    let session = RtpSession::new(Instant::now(), config);
    Ok(spawn_task(local_addr, move |channels| {
        run(socket, session, channels)
    }))
}

/// A media task's side of its channels, whatever carries its packets (a plain UDP socket
/// here, a WebRTC peer connection in [`super::webrtc`]).
pub(super) struct TaskChannels {
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) bridge: mpsc::Receiver<Vec<i16>>,
    pub(super) events: mpsc::Sender<MediaEvent>,
}

/// Spawns `task` with fresh channels and returns the program's side of them.
pub(super) fn spawn_task<F, Fut>(
    local_addr: SocketAddr,
    task: F,
) -> (MediaHandle, mpsc::Receiver<MediaEvent>)
where
    F: FnOnce(TaskChannels) -> Fut,
    Fut: std::future::Future<Output = SessionStats> + Send + 'static,
{
    let (cmd_tx, cmd_rx) = mpsc::channel(32);
    let (bridge_tx, bridge_rx) = mpsc::channel(BRIDGE_CHANNEL);
    let (event_tx, event_rx) = mpsc::channel(EVENT_CHANNEL);
    let task = tokio::spawn(task(TaskChannels {
        commands: cmd_rx,
        bridge: bridge_rx,
        events: event_tx,
    }));
    (
        MediaHandle {
            local_addr,
            commands: cmd_tx,
            bridge_in: bridge_tx,
            task,
        },
        event_rx,
    )
}

/// What every media task keeps beside its session: events waiting for the consumer and the
/// bridge to another leg.
pub(super) struct Driver {
    pub(super) session: RtpSession,
    pending: VecDeque<MediaEvent>,
    bridge_out: Option<mpsc::Sender<Vec<i16>>>,
    dropped_audio: u64,
}

#[tracing::instrument(name = "media", skip_all, fields(local = ?socket.local_addr().ok()))]
async fn run(socket: UdpSocket, session: RtpSession, channels: TaskChannels) -> SessionStats {
    let TaskChannels {
        mut commands,
        bridge: mut bridge_rx,
        events,
    } = channels;
    let mut d = Driver::new(session);
    let mut buf = vec![0u8; RECV_BUFFER];
    tracing::debug!("media task started");
    loop {
        let deadline = loop {
            match d.session.poll_output() {
                Some(Output::Transmit(t)) => {
                    // A failed send (remote unreachable) is not fatal for RTP.
                    if let Err(e) = socket.send_to(&t.bytes, t.to).await {
                        tracing::debug!(to = %t.to, error = %e, "RTP send failed");
                    }
                }
                Some(Output::Event(e)) => d.dispatch(e),
                Some(Output::Timeout(at)) => break Some(at),
                None => break None,
            }
        };
        d.flush_events(&events);
        let Some(deadline) = deadline else {
            break;
        };
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, from)) => {
                    let datagram = buf.get(..n).unwrap_or_default();
                    d.session.handle_input(Instant::now(), Input::Receive(from, datagram));
                }
                Err(e) => tracing::debug!(error = %e, "RTP receive error"),
            },
            command = commands.recv() => match command {
                Some(c) => d.apply(c),
                None => d.session.close(),
            },
            Some(samples) = bridge_rx.recv() => d.session.push_bridge_audio(&samples),
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                d.session.handle_input(Instant::now(), Input::Timeout);
            }
            permit = events.reserve(), if d.has_pending() => d.send_reserved(permit),
        }
    }
    d.finish()
}

impl Driver {
    pub(super) fn new(session: RtpSession) -> Driver {
        Driver {
            session,
            pending: VecDeque::new(),
            bridge_out: None,
            dropped_audio: 0,
        }
    }

    /// Whether events wait for room in the consumer's channel.
    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The `reserve` branch of a task's select: hand over one waiting event.
    pub(super) fn send_reserved(
        &mut self,
        permit: Result<mpsc::Permit<'_, MediaEvent>, mpsc::error::SendError<()>>,
    ) {
        if let (Ok(permit), Some(e)) = (permit, self.pending.pop_front()) {
            permit.send(e);
        } else {
            // Nobody listens any more; keep the media running, drop the events.
            self.pending.clear();
        }
    }

    /// The task ends: its counters.
    pub(super) fn finish(&self) -> SessionStats {
        if self.dropped_audio > 0 {
            tracing::warn!(
                frames = self.dropped_audio,
                "audio events dropped: consumer too slow"
            );
        }
        let stats = self.session.stats();
        tracing::debug!(?stats, "media task ended");
        stats
    }

    pub(super) fn apply(&mut self, command: Command) {
        match command {
            Command::Play { id, clips } => self.session.play(id, clips),
            Command::PlayLoop { id, clips } => self.session.play_loop(id, clips),
            Command::PlayNow { id, clips, looped } => self.session.play_now(id, clips, looped),
            Command::StopPlayout => {
                self.session.stop_playout();
            }
            Command::SendDtmf(digits) => {
                if let Err(e) = self.session.send_dtmf(&digits) {
                    tracing::warn!(%digits, error = %e, "cannot send DTMF");
                }
            }
            Command::BridgeTo(tx) => self.bridge_out = Some(tx),
            Command::Unbridge => {
                self.bridge_out = None;
                self.session.clear_bridge_audio();
            }
            Command::UpdateRemote(remote) => self.session.update_remote(Instant::now(), &remote),
            Command::Close => self.session.close(),
        }
    }

    pub(super) fn dispatch(&mut self, event: MediaEvent) {
        if let (MediaEvent::Audio(frame), Some(tx)) = (&event, &self.bridge_out) {
            match tx.try_send(frame.samples.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::trace!("bridge peer not keeping up; frame dropped");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => self.bridge_out = None,
            }
        }
        if self.pending.len() >= MAX_PENDING_EVENTS {
            if let Some(i) = self
                .pending
                .iter()
                .position(|e| matches!(e, MediaEvent::Audio(_)))
            {
                self.pending.remove(i);
                self.dropped_audio += 1;
            } else if matches!(event, MediaEvent::Audio(_)) {
                self.dropped_audio += 1;
                return;
            }
        }
        self.pending.push_back(event);
    }

    /// Hand over what the channel has room for without waiting; the rest waits in `pending`
    /// for the `reserve` branch.
    pub(super) fn flush_events(&mut self, events: &mpsc::Sender<MediaEvent>) {
        while let Some(e) = self.pending.pop_front() {
            match events.try_send(e) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(e)) => {
                    self.pending.push_front(e);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.pending.clear();
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert!(PortRange::new(0, 10).is_err());
        assert!(PortRange::new(20, 10).is_err());
        assert!(PortRange::new(21, 21).is_err(), "no even port");
        let r = PortRange::new(21, 26).expect("range");
        assert_eq!(r.even_ports(), vec![22, 24, 26]);
    }

    #[tokio::test]
    async fn binds_even_ports_and_reports_exhaustion() {
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let range = PortRange::new(39_000, 39_003).expect("range");
        let a = bind_rtp_socket(ip, range).await.expect("first");
        let b = bind_rtp_socket(ip, range).await.expect("second");
        for s in [&a, &b] {
            assert_eq!(s.local_addr().expect("addr").port() % 2, 0);
        }
        assert_ne!(
            a.local_addr().expect("addr").port(),
            b.local_addr().expect("addr").port()
        );
        let err = bind_rtp_socket(ip, range).await.expect_err("full");
        assert!(matches!(err, DriverError::NoFreePort { .. }), "{err}");
    }
}
