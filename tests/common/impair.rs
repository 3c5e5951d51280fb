//! A bad network in user space, for kernels without `netem`: a UDP relay between a sipp
//! caller and Humanline that drops a share of the packets and delays each by a random time
//! (so packets overtake each other), both ways, for the caller's SIP and RTP alike.
//!
//! The caller's sipp talks SIP to the relay; the relay passes each message on, writing its
//! own address into the top Via (so the answers come back through it) and its RTP port into
//! the SDP of both sides (so both sides' RTP goes through it too). Every flow (SIP up, SIP
//! down, RTP up, RTP down) has its own generator seeded from one seed: which packets are
//! dropped, and by how much each is delayed, is the same on every run. Packets held for
//! delivery are bounded; the relay stops when dropped.

use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::LOCALHOST;

/// How bad the network is.
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    /// Share of packets dropped, 0.0..1.0.
    pub loss: f64,
    /// Each packet is delayed by a uniformly random time in 0..=max_delay.
    pub max_delay: Duration,
    pub seed: u64,
}

/// splitmix64: small, fast, and the same sequence for the same seed everywhere.
#[derive(Debug, Clone)]
pub struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> SeededRng {
        SeededRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (0 when n is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// The four flows through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Flow {
    /// Caller's SIP to Humanline.
    SipUp = 0,
    SipDown = 1,
    /// Caller's RTP to Humanline: what recognition hears.
    RtpUp = 2,
    RtpDown = 3,
}

const FLOWS: usize = 4;
/// Packets held for delayed delivery at most (60 ms of two RTP streams is ~6).
const MAX_HELD: usize = 4096;

/// What happened to one flow's packets.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlowStats {
    pub received: u64,
    pub dropped: u64,
    pub delivered: u64,
    /// Delivered after a packet that came in later than them.
    pub reordered: u64,
}

#[derive(Default)]
struct Counters {
    received: [AtomicU64; FLOWS],
    dropped: [AtomicU64; FLOWS],
    delivered: [AtomicU64; FLOWS],
    reordered: [AtomicU64; FLOWS],
}

struct Held {
    at: Instant,
    /// Arrival order within its flow.
    seq: u64,
    flow: Flow,
    to: SocketAddr,
    bytes: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.flow, self.seq) == (other.at, other.flow, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    /// Earliest delivery first out of the (max-)heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.flow, other.seq).cmp(&(self.at, self.flow, self.seq))
    }
}

/// What the relay has learnt about the two ends.
#[derive(Default)]
struct Ends {
    /// The caller's SIP address (the first datagram not from Humanline).
    caller_sip: Option<SocketAddr>,
    /// The caller's RTP address, from its SDP.
    caller_rtp: Option<SocketAddr>,
    /// Humanline's RTP address, from its SDP.
    humanline_rtp: Option<SocketAddr>,
}

struct Shared {
    impairment: Impairment,
    humanline_sip: SocketAddr,
    sip_port: u16,
    rtp_port: u16,
    ends: Mutex<Ends>,
    rngs: Mutex<[SeededRng; FLOWS]>,
    next_seq: [AtomicU64; FLOWS],
    held: Mutex<BinaryHeap<Held>>,
    wake: Condvar,
    counters: Counters,
    stop: AtomicBool,
}

/// The relay; the caller's sipp sends its INVITE to [`ImpairedPath::sip_addr`].
pub struct ImpairedPath {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ImpairedPath {
    /// Relays between a caller and Humanline at `humanline_sip`, on 127.0.0.1:`sip_port`
    /// (SIP) and :`rtp_port` (RTP).
    pub fn start(
        impairment: Impairment,
        humanline_sip: SocketAddr,
        sip_port: u16,
        rtp_port: u16,
    ) -> ImpairedPath {
        let sip = UdpSocket::bind((LOCALHOST, sip_port)).expect("relay SIP port");
        let rtp = UdpSocket::bind((LOCALHOST, rtp_port)).expect("relay RTP port");
        let rngs = [0u64, 1, 2, 3].map(|f| SeededRng::new(impairment.seed ^ (f << 56)));
        let shared = Arc::new(Shared {
            impairment,
            humanline_sip,
            sip_port,
            rtp_port,
            ends: Mutex::new(Ends::default()),
            rngs: Mutex::new(rngs),
            next_seq: Default::default(),
            held: Mutex::new(BinaryHeap::new()),
            wake: Condvar::new(),
            counters: Counters::default(),
            stop: AtomicBool::new(false),
        });
        let send_sip = sip.try_clone().expect("clone relay socket");
        let send_rtp = rtp.try_clone().expect("clone relay socket");
        let mut threads = Vec::new();
        for (socket, is_sip) in [(sip, true), (rtp, false)] {
            let shared = shared.clone();
            threads.push(std::thread::spawn(move || {
                receive(&shared, &socket, is_sip)
            }));
        }
        let s = shared.clone();
        threads.push(std::thread::spawn(move || {
            deliver(&s, &send_sip, &send_rtp)
        }));
        ImpairedPath { shared, threads }
    }

    pub fn sip_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.shared.sip_port))
    }

    pub fn stats(&self, flow: Flow) -> FlowStats {
        let c = &self.shared.counters;
        let i = flow as usize;
        FlowStats {
            received: c.received[i].load(Ordering::Relaxed),
            dropped: c.dropped[i].load(Ordering::Relaxed),
            delivered: c.delivered[i].load(Ordering::Relaxed),
            reordered: c.reordered[i].load(Ordering::Relaxed),
        }
    }

    pub fn describe(&self) -> String {
        [Flow::SipUp, Flow::SipDown, Flow::RtpUp, Flow::RtpDown]
            .iter()
            .map(|f| format!("{f:?}: {:?}", self.stats(*f)))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Drop for ImpairedPath {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn receive(shared: &Shared, socket: &UdpSocket, is_sip: bool) {
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("read timeout");
    let mut buf = vec![0u8; 65536];
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let packet = &buf[..n];
        let routed = if is_sip {
            route_sip(shared, packet, from)
        } else {
            route_rtp(shared, packet, from)
        };
        if let Some((flow, to, bytes)) = routed {
            impair(shared, flow, to, bytes);
        }
    }
}

/// Where a SIP message goes, rewritten so that the rest of the call comes back through us.
fn route_sip(
    shared: &Shared,
    packet: &[u8],
    from: SocketAddr,
) -> Option<(Flow, SocketAddr, Vec<u8>)> {
    let text = String::from_utf8_lossy(packet).into_owned();
    let relay = SocketAddr::from(([127, 0, 0, 1], shared.sip_port));
    let mut ends = shared.ends.lock().unwrap_or_else(|p| p.into_inner());
    if from == shared.humanline_sip {
        let caller = ends.caller_sip?;
        let text = replace_in_top_via(&text, &relay.to_string(), &caller.to_string());
        let (text, port) = rewrite_audio_port(&text, shared.rtp_port);
        if let Some(p) = port {
            ends.humanline_rtp = Some(SocketAddr::from(([127, 0, 0, 1], p)));
        }
        Some((Flow::SipDown, caller, text.into_bytes()))
    } else {
        ends.caller_sip.get_or_insert(from);
        let text = replace_in_top_via(&text, &from.to_string(), &relay.to_string());
        let (text, port) = rewrite_audio_port(&text, shared.rtp_port);
        if let Some(p) = port {
            ends.caller_rtp = Some(SocketAddr::from(([127, 0, 0, 1], p)));
        }
        Some((Flow::SipUp, shared.humanline_sip, text.into_bytes()))
    }
}

fn route_rtp(
    shared: &Shared,
    packet: &[u8],
    from: SocketAddr,
) -> Option<(Flow, SocketAddr, Vec<u8>)> {
    let ends = shared.ends.lock().unwrap_or_else(|p| p.into_inner());
    if Some(from) == ends.humanline_rtp {
        Some((Flow::RtpDown, ends.caller_rtp?, packet.to_vec()))
    } else {
        Some((Flow::RtpUp, ends.humanline_rtp?, packet.to_vec()))
    }
}

fn impair(shared: &Shared, flow: Flow, to: SocketAddr, bytes: Vec<u8>) {
    let i = flow as usize;
    shared.counters.received[i].fetch_add(1, Ordering::Relaxed);
    let seq = shared.next_seq[i].fetch_add(1, Ordering::Relaxed);
    let (lost, delay) = {
        let mut rngs = shared.rngs.lock().unwrap_or_else(|p| p.into_inner());
        let rng = &mut rngs[i];
        let lost = rng.unit() < shared.impairment.loss;
        let max_us = shared.impairment.max_delay.as_micros() as u64;
        let delay = Duration::from_micros(rng.next_u64() % (max_us + 1));
        (lost, delay)
    };
    if lost {
        shared.counters.dropped[i].fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut held = shared.held.lock().unwrap_or_else(|p| p.into_inner());
    if held.len() >= MAX_HELD {
        shared.counters.dropped[i].fetch_add(1, Ordering::Relaxed);
        return;
    }
    held.push(Held {
        at: Instant::now() + delay,
        seq,
        flow,
        to,
        bytes,
    });
    shared.wake.notify_all();
}

fn deliver(shared: &Shared, sip: &UdpSocket, rtp: &UdpSocket) {
    let mut last_seq: [Option<u64>; FLOWS] = [None; FLOWS];
    let mut held = shared.held.lock().unwrap_or_else(|p| p.into_inner());
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        match held.peek().map(|h| h.at) {
            Some(at) if at <= now => {
                let Some(h) = held.pop() else { continue };
                let i = h.flow as usize;
                if last_seq[i].is_some_and(|l| h.seq < l) {
                    shared.counters.reordered[i].fetch_add(1, Ordering::Relaxed);
                }
                last_seq[i] = Some(last_seq[i].map_or(h.seq, |l| l.max(h.seq)));
                let socket = match h.flow {
                    Flow::SipUp | Flow::SipDown => sip,
                    Flow::RtpUp | Flow::RtpDown => rtp,
                };
                if socket.send_to(&h.bytes, h.to).is_ok() {
                    shared.counters.delivered[i].fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(at) => {
                held = shared
                    .wake
                    .wait_timeout(held, at - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            None => {
                held = shared
                    .wake
                    .wait_timeout(held, Duration::from_millis(50))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
    }
}

/// Replaces `from` by `to` in the first Via header line (full or compact form).
pub fn replace_in_top_via(msg: &str, from: &str, to: &str) -> String {
    let mut done = false;
    let mut out = String::with_capacity(msg.len() + 8);
    for line in msg.split_inclusive('\n') {
        let lower = line.to_ascii_lowercase();
        if !done && (lower.starts_with("via:") || lower.starts_with("v:")) {
            out.push_str(&line.replacen(from, to, 1));
            done = true;
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Writes `port` into the body's `m=audio` line and fixes Content-Length; returns the port
/// it replaced (None: no SDP).
pub fn rewrite_audio_port(msg: &str, port: u16) -> (String, Option<u16>) {
    let Some(split) = msg.find("\r\n\r\n") else {
        return (msg.to_string(), None);
    };
    let (head, body) = (&msg[..split], &msg[split + 4..]);
    let mut old = None;
    let body: String = body
        .split_inclusive('\n')
        .map(|line| match line.strip_prefix("m=audio ") {
            Some(rest) if old.is_none() => {
                let (p, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                old = p.trim().parse::<u16>().ok();
                format!("m=audio {port} {tail}")
            }
            _ => line.to_string(),
        })
        .collect();
    if old.is_none() {
        return (msg.to_string(), None);
    }
    let head: String = head
        .split("\r\n")
        .map(|line| {
            let lower = line.to_ascii_lowercase();
            if lower.starts_with("content-length:") || lower.starts_with("l:") {
                format!("Content-Length: {}", body.len())
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n");
    (format!("{head}\r\n\r\n{body}"), old)
}
