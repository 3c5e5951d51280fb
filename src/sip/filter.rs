//! First look at every UDP datagram, before the SIP stack parses it.
//!
//! The stack silently drops what it cannot parse, and cannot parse requests with a method it does
//! not know. This filter sits between the socket and the stack (as its UDP socket) and:
//! - passes well-formed messages (and CRLF keep-alives) on to the stack;
//! - answers `501 Not Implemented` to requests with an unknown method, and `400 Bad Request` to
//!   requests that parse far enough to answer (a Via, Call-ID, CSeq, From and To line) but are
//!   broken (bad or missing mandatory header, CSeq method mismatch, short body);
//! - drops everything else (garbage, broken responses, broken ACKs), counting it.
//!
//! Error replies are rate-limited so the port cannot be used as a reflector.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rsipstack::sip::prelude::{HeadersExt, ToTypedHeader};
use rsipstack::sip::{Method, Request, SipMessage};
use tracing::debug;

/// What to do with one datagram.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    Drop(&'static str),
    /// Send these bytes back to the source, then drop the datagram.
    Reply(Vec<u8>),
}

/// Counters of the filter, readable through [`super::SipEndpoint::stats`].
#[derive(Debug, Default)]
pub(crate) struct FilterCounters {
    pub passed: AtomicU64,
    pub dropped: AtomicU64,
    pub answered_400: AtomicU64,
    pub answered_501: AtomicU64,
}

/// Methods the stack can parse (everything else gets 501 here).
const KNOWN_METHODS: &[&str] = &[
    "ACK",
    "BYE",
    "CANCEL",
    "INFO",
    "INVITE",
    "MESSAGE",
    "NOTIFY",
    "OPTIONS",
    "PRACK",
    "PUBLISH",
    "REFER",
    "REGISTER",
    "SUBSCRIBE",
    "UPDATE",
];

pub(crate) fn classify(packet: &[u8], server: &str) -> Verdict {
    if packet.iter().all(|b| b.is_ascii_whitespace()) {
        return Verdict::Pass; // CRLF keep-alive: the stack answers it
    }
    match SipMessage::try_from(packet) {
        Ok(SipMessage::Request(req)) if !request_version_is_2_0(packet) => {
            if req.method == Method::Ack {
                return Verdict::Drop("ACK of another SIP version");
            }
            match text_reply(packet, 505, "Version Not Supported", None, server) {
                Some(bytes) => Verdict::Reply(bytes),
                None => Verdict::Drop("request of another SIP version"),
            }
        }
        Ok(SipMessage::Request(req)) => match check_request(&req, packet) {
            Ok(()) => Verdict::Pass,
            Err(problem) if req.method == Method::Ack => {
                let _ = problem;
                Verdict::Drop("malformed ACK")
            }
            Err(problem) => match text_reply(packet, 400, "Bad Request", Some(problem), server) {
                Some(bytes) => Verdict::Reply(bytes),
                None => Verdict::Drop("malformed request without headers to answer"),
            },
        },
        Ok(SipMessage::Response(resp)) => {
            let ok = resp.via_header().is_ok()
                && resp.call_id_header().is_ok()
                && resp.cseq_header().and_then(|c| c.typed()).is_ok()
                && resp.from_header().is_ok()
                && resp.to_header().is_ok();
            if ok {
                Verdict::Pass
            } else {
                Verdict::Drop("malformed response")
            }
        }
        Err(_) => {
            let Some(method) = request_line_method(packet) else {
                return Verdict::Drop("unparseable");
            };
            if method.eq_ignore_ascii_case("ACK") {
                return Verdict::Drop("unparseable ACK");
            }
            let known = KNOWN_METHODS.iter().any(|m| m.eq_ignore_ascii_case(method));
            let reply = if known {
                text_reply(
                    packet,
                    400,
                    "Bad Request",
                    Some("unparseable request"),
                    server,
                )
            } else {
                text_reply(packet, 501, "Not Implemented", None, server)
            };
            match reply {
                Some(bytes) => Verdict::Reply(bytes),
                None => Verdict::Drop("unparseable request without headers to answer"),
            }
        }
    }
}

/// Whether the request line ends in `SIP/2.0` (the parser accepts any version).
fn request_version_is_2_0(packet: &[u8]) -> bool {
    let end = packet
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(packet.len());
    std::str::from_utf8(&packet[..end])
        .map(|l| {
            l.trim_end_matches('\r')
                .rsplit(' ')
                .next()
                .is_some_and(|v| v.eq_ignore_ascii_case("SIP/2.0"))
        })
        .unwrap_or(false)
}

/// Checks what the stack and the dialog layer rely on.
fn check_request(req: &Request, packet: &[u8]) -> Result<(), &'static str> {
    // Every header line is `name: value` (or a folded continuation starting with white space);
    // the parser skips a line without a colon, which would hide a broken message.
    let head_end = body_offset(packet).unwrap_or(packet.len());
    let bad_line = packet[..head_end]
        .split(|&b| b == b'\n')
        .skip(1)
        .any(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            !line.is_empty() && !line[0].is_ascii_whitespace() && !line.contains(&b':')
        });
    if bad_line {
        return Err("header line without a colon");
    }
    let via = req.via_header().map_err(|_| "missing Via")?;
    let via = via.typed().map_err(|_| "bad Via")?;
    if !via
        .params
        .iter()
        .any(|p| matches!(p, rsipstack::sip::Param::Branch(_)))
    {
        return Err("Via without branch");
    }
    let from = req.from_header().map_err(|_| "missing From")?;
    from.typed().map_err(|_| "bad From")?;
    if from.tag().ok().flatten().is_none() {
        return Err("From without tag");
    }
    req.to_header()
        .map_err(|_| "missing To")?
        .typed()
        .map_err(|_| "bad To")?;
    let call_id = req.call_id_header().map_err(|_| "missing Call-ID")?;
    if call_id.value().trim().is_empty() {
        return Err("empty Call-ID");
    }
    let cseq = req
        .cseq_header()
        .map_err(|_| "missing CSeq")?
        .typed()
        .map_err(|_| "bad CSeq")?;
    if cseq.method != req.method {
        return Err("CSeq method does not match the request method");
    }
    // A body shorter than Content-Length means a truncated datagram (RFC 3261 §18.3).
    if let Some(declared) = content_length(packet) {
        let body_len = body_offset(packet).map(|o| packet.len() - o).unwrap_or(0);
        if declared > body_len {
            return Err("body shorter than Content-Length");
        }
    }
    Ok(())
}

/// The method of a request line `METHOD SP Request-URI SP SIP/2.0`, if the first line is one.
fn request_line_method(packet: &[u8]) -> Option<&str> {
    let end = packet
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(packet.len());
    let line = std::str::from_utf8(&packet[..end])
        .ok()?
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let _uri = parts.next().filter(|u| !u.is_empty())?;
    let version = parts.next()?;
    if parts.next().is_some() || !version.eq_ignore_ascii_case("SIP/2.0") {
        return None;
    }
    let token = |c: char| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c);
    (!method.is_empty() && method.len() <= 32 && method.chars().all(token)).then_some(method)
}

fn header_lines(packet: &[u8]) -> impl Iterator<Item = (&str, &str)> {
    let head_end = body_offset(packet).unwrap_or(packet.len());
    packet[..head_end]
        .split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|line| std::str::from_utf8(line).ok())
        .map(|line| line.trim_end_matches('\r'))
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim(), value.trim()))
        })
}

fn body_offset(packet: &[u8]) -> Option<usize> {
    packet
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .or_else(|| packet.windows(2).position(|w| w == b"\n\n").map(|p| p + 2))
}

fn content_length(packet: &[u8]) -> Option<usize> {
    header_lines(packet)
        .find(|(n, _)| n.eq_ignore_ascii_case("Content-Length") || n.eq_ignore_ascii_case("l"))
        .and_then(|(_, v)| v.parse().ok())
}

/// Builds an error response from the raw header lines of a request: it needs at least one Via,
/// and a Call-ID, CSeq, From and To line. Returns `None` when they are missing.
fn text_reply(
    packet: &[u8],
    code: u16,
    phrase: &str,
    warning: Option<&str>,
    server: &str,
) -> Option<Vec<u8>> {
    let is = |n: &str, long: &str, short: &str| {
        n.eq_ignore_ascii_case(long) || n.eq_ignore_ascii_case(short)
    };
    let clean = |v: &str| -> String {
        v.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(512)
            .collect()
    };
    let mut vias = Vec::new();
    let (mut from, mut to, mut call_id, mut cseq) = (None, None, None, None);
    for (name, value) in header_lines(packet) {
        if is(name, "Via", "v") {
            vias.push(clean(value));
        } else if is(name, "From", "f") && from.is_none() {
            from = Some(clean(value));
        } else if is(name, "To", "t") && to.is_none() {
            to = Some(clean(value));
        } else if is(name, "Call-ID", "i") && call_id.is_none() {
            call_id = Some(clean(value));
        } else if name.eq_ignore_ascii_case("CSeq") && cseq.is_none() {
            cseq = Some(clean(value));
        }
    }
    if vias.is_empty() || vias.len() > 16 {
        return None;
    }
    let (from, mut to, call_id, cseq) = (from?, to?, call_id?, cseq?);
    if !to.to_ascii_lowercase().contains(";tag=") {
        to.push_str(";tag=hl400");
    }
    let mut out = format!("SIP/2.0 {code} {phrase}\r\n");
    for via in vias {
        out.push_str(&format!("Via: {via}\r\n"));
    }
    out.push_str(&format!(
        "From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\n"
    ));
    if let Some(w) = warning {
        out.push_str(&format!("Warning: 399 humanline \"{w}\"\r\n"));
    }
    if code == 501 || code == 405 {
        out.push_str(&format!("Allow: {}\r\n", super::endpoint::ALLOW));
    }
    out.push_str(&format!("Server: {server}\r\nContent-Length: 0\r\n\r\n"));
    Some(out.into_bytes())
}

/// Simple global budget for error replies (per second).
struct ReplyBudget {
    window_start: Instant,
    used: u32,
}

const ERROR_REPLIES_PER_SECOND: u32 = 200;

/// The endpoint's UDP socket as the stack sees it: the real socket plus [`classify`].
pub(crate) struct FilteredUdpSocket {
    socket: tokio::net::UdpSocket,
    server: String,
    budget: Mutex<ReplyBudget>,
    pub(crate) counters: std::sync::Arc<FilterCounters>,
}

impl FilteredUdpSocket {
    pub(crate) fn new(
        socket: tokio::net::UdpSocket,
        server: String,
        counters: std::sync::Arc<FilterCounters>,
    ) -> Self {
        FilteredUdpSocket {
            socket,
            server,
            budget: Mutex::new(ReplyBudget {
                window_start: Instant::now(),
                used: 0,
            }),
            counters,
        }
    }

    fn may_reply(&self) -> bool {
        let Ok(mut b) = self.budget.lock() else {
            return false;
        };
        if b.window_start.elapsed() >= Duration::from_secs(1) {
            b.window_start = Instant::now();
            b.used = 0;
        }
        b.used += 1;
        b.used <= ERROR_REPLIES_PER_SECOND
    }
}

#[async_trait::async_trait]
impl rsipstack::platform::net::UdpSocket for FilteredUdpSocket {
    async fn recv_from(&self, buf: &mut [u8]) -> rsipstack::Result<(usize, SocketAddr)> {
        loop {
            let (len, src) = self.socket.recv_from(buf).await?;
            let Some(packet) = buf.get(..len) else {
                continue;
            };
            match classify(packet, &self.server) {
                Verdict::Pass => {
                    self.counters.passed.fetch_add(1, Ordering::Relaxed);
                    return Ok((len, src));
                }
                Verdict::Drop(why) => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    debug!(%src, len, why, "dropped SIP datagram");
                }
                Verdict::Reply(bytes) => {
                    let is_501 = bytes.starts_with(b"SIP/2.0 501");
                    if is_501 {
                        self.counters.answered_501.fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.counters.answered_400.fetch_add(1, Ordering::Relaxed);
                    }
                    if self.may_reply() {
                        debug!(%src, len, status = if is_501 { 501 } else { 400 }, "answered bad SIP datagram");
                        if let Err(e) = self.socket.send_to(&bytes, src).await {
                            debug!(%src, error = %e, "cannot answer bad datagram");
                        }
                    }
                }
            }
        }
    }

    async fn send_to(&self, buf: &[u8], addr: SocketAddr) -> rsipstack::Result<usize> {
        Ok(self.socket.send_to(buf, addr).await?)
    }

    fn local_addr(&self) -> rsipstack::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "INVITE sip:ivr@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1\r\n\
From: <sip:alice@127.0.0.1:5061>;tag=a1\r\n\
To: <sip:ivr@127.0.0.1:5060>\r\n\
Call-ID: c1@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Max-Forwards: 70\r\n\
Content-Length: 0\r\n\r\n";

    fn reply_of(v: Verdict) -> String {
        match v {
            Verdict::Reply(b) => String::from_utf8(b).expect("utf8"),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn good_request_passes() {
        assert_eq!(classify(GOOD.as_bytes(), "t"), Verdict::Pass);
        assert_eq!(classify(b"\r\n\r\n", "t"), Verdict::Pass);
    }

    #[test]
    fn unknown_method_gets_501() {
        let msg = GOOD
            .replace("INVITE sip", "FROBNICATE sip")
            .replace("1 INVITE", "1 FROBNICATE");
        let r = reply_of(classify(msg.as_bytes(), "t"));
        assert!(r.starts_with("SIP/2.0 501 Not Implemented\r\n"), "{r}");
        assert!(r.contains("Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1\r\n"));
        assert!(r.contains("Call-ID: c1@127.0.0.1\r\n"));
        assert!(r.contains(";tag="));
        assert!(r.contains("Allow: "));
    }

    #[test]
    fn missing_call_id_gets_400() {
        let msg = GOOD.replace("Call-ID: c1@127.0.0.1\r\n", "");
        // no Call-ID at all: nothing to answer with
        assert!(matches!(classify(msg.as_bytes(), "t"), Verdict::Drop(_)));
        let msg = GOOD.replace("CSeq: 1 INVITE", "CSeq: 1 BYE");
        let r = reply_of(classify(msg.as_bytes(), "t"));
        assert!(r.starts_with("SIP/2.0 400 Bad Request\r\n"), "{r}");
        let msg = GOOD.replace("CSeq: 1 INVITE", "CSeq: x INVITE");
        let r = reply_of(classify(msg.as_bytes(), "t"));
        assert!(r.starts_with("SIP/2.0 400 "), "{r}");
        let msg = GOOD.replace("Content-Length: 0", "Content-Length: 500");
        let r = reply_of(classify(msg.as_bytes(), "t"));
        assert!(r.contains("Content-Length"), "{r}");
    }

    #[test]
    fn another_sip_version_gets_505_and_a_colonless_header_line_400() {
        let v7 = GOOD.replace("SIP/2.0\r\nVia", "SIP/7.3\r\nVia");
        let r = reply_of(classify(v7.as_bytes(), "t"));
        assert!(r.starts_with("SIP/2.0 505 "), "{r}");
        let broken = GOOD.replace("Max-Forwards: 70", "Max-Forwards 70");
        assert!(broken != GOOD, "fixture has no Max-Forwards line");
        let r = reply_of(classify(broken.as_bytes(), "t"));
        assert!(r.starts_with("SIP/2.0 400 "), "{r}");
    }

    #[test]
    fn garbage_is_dropped() {
        for g in [
            &b"\x00\x01\x02garbage"[..],
            b"hello world",
            b"INVITE\r\n\r\n",
            b"SIP/2.0 200 OK\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK1\r\n\r\n",
        ] {
            assert!(matches!(classify(g, "t"), Verdict::Drop(_)), "{g:?}");
        }
        let ack = GOOD
            .replace("INVITE sip", "ACK sip")
            .replace("1 INVITE", "1 BYE");
        assert!(matches!(classify(ack.as_bytes(), "t"), Verdict::Drop(_)));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..2000usize {
            let mut v = Vec::with_capacity(len % 700);
            for _ in 0..(len % 700) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                v.push((seed & 0xff) as u8);
            }
            let _ = classify(&v, "t");
            // and mutations of a good message
            let mut m = GOOD.as_bytes().to_vec();
            let i = (seed as usize) % m.len();
            m[i] = (seed >> 8) as u8;
            m.truncate(((seed >> 16) as usize) % (m.len() + 1));
            let _ = classify(&m, "t");
        }
    }
}
