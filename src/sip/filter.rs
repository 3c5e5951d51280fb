//! First look at every SIP message, before the stack parses it: UDP datagrams (the filter is
//! the stack's UDP socket) and framed TCP messages (through the stream hook of the patched
//! stack, `vendor/rsipstack`). Both go through the same pure [`classify`], so a message gets
//! the same answer over either transport.
//!
//! The stack drops what it cannot parse (silently, or by closing the TCP connection), accepts
//! some messages RFC 3261 calls invalid, and refuses some valid ones (folded header lines, LWS
//! around `;` and `=`). [`classify`]:
//! - passes well-formed messages (and CRLF keep-alives) on, normalized where the stack's
//!   parser is stricter than the grammar (folded lines unfolded, LWS around separators of
//!   the headers it parses removed, trailing octets of a datagram cut);
//! - answers requests it can answer (a Via and a CSeq line) but must refuse, with the status
//!   RFC 3261 and RFC 4475 name: 505 (version), 501 (unknown method), 416 (URI scheme), 400
//!   (syntax, missing or repeated single-value headers, scalars out of range, CSeq method
//!   mismatch, short body), 420 (`Require`), 415 and 406 (INVITE bodies we cannot read or
//!   answer in);
//! - drops everything else (garbage, broken responses, any ACK it would refuse: an ACK is
//!   never answered), counting it.
//!
//! Error replies are rate-limited so the port cannot be used as a reflector.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rsipstack::sip::prelude::{HeadersExt, ToTypedHeader};
use rsipstack::sip::{Request, SipMessage};
use tracing::debug;

/// How the message arrived: a datagram carries one message (extra octets are noise); a
/// stream message was framed by its Content-Length, which is then mandatory (RFC 3261 §18.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Datagram,
    Stream,
}

/// What to do with one message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hand the message to the stack as it is.
    Pass,
    /// Hand this normalized copy to the stack instead.
    PassNormalized(Vec<u8>),
    Drop(&'static str),
    /// Send `bytes` back to the source and drop the message. With `close`, the stream's
    /// framing cannot be trusted any more (bad or repeated Content-Length).
    Reply {
        status: u16,
        bytes: Vec<u8>,
        close: bool,
    },
}

/// Counters of the filter, readable through [`super::SipEndpoint::stats`].
#[derive(Debug, Default)]
pub(crate) struct FilterCounters {
    pub passed: AtomicU64,
    pub dropped: AtomicU64,
    /// Answered with an error other than 501.
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

/// Header fields that carry one value (RFC 3261 §7.3.1, §20): two of them make a request
/// ambiguous. Long and compact names.
const SINGLE_VALUED: &[(&str, &str)] = &[
    ("Call-ID", "i"),
    ("From", "f"),
    ("To", "t"),
    ("CSeq", ""),
    ("Max-Forwards", ""),
    ("Content-Length", "l"),
    ("Content-Type", "c"),
];

/// Header fields the stack parses: their LWS around separators is removed before it does.
const STRUCTURED: &[(&str, &str)] = &[
    ("Via", "v"),
    ("From", "f"),
    ("To", "t"),
    ("Contact", "m"),
    ("Call-ID", "i"),
    ("CSeq", ""),
    ("Max-Forwards", ""),
    ("Content-Length", "l"),
    ("Content-Type", "c"),
    ("Route", ""),
    ("Record-Route", ""),
    ("Expires", ""),
    ("Require", ""),
    ("Supported", "k"),
];

fn named(name: &str, long: &str, short: &str) -> bool {
    name.eq_ignore_ascii_case(long) || (!short.is_empty() && name.eq_ignore_ascii_case(short))
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c))
}

/// A message split into its start line, unfolded header fields and body, as text.
struct RawMessage<'a> {
    start: String,
    headers: Vec<(String, String)>,
    /// A non-empty line that is neither a header field nor a continuation.
    bad_line: bool,
    /// Some header line was folded (RFC 3261 §7.3.1).
    folded: bool,
    /// The head is valid UTF-8 (only then is a normalized copy built).
    utf8: bool,
    body: &'a [u8],
}

impl<'a> RawMessage<'a> {
    fn split(packet: &'a [u8]) -> RawMessage<'a> {
        let (head, body) = match head_end(packet) {
            Some((head_len, body_start)) => (&packet[..head_len], &packet[body_start..]),
            None => (packet, &packet[packet.len()..]),
        };
        let utf8 = std::str::from_utf8(head).is_ok();
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let start = lines.next().unwrap_or_default().to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        let (mut bad_line, mut folded) = (false, false);
        for line in lines {
            if line.is_empty() {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                match headers.last_mut() {
                    Some((_, value)) => {
                        folded = true;
                        let more = line.trim();
                        if !more.is_empty() {
                            if !value.is_empty() {
                                value.push(' ');
                            }
                            value.push_str(more);
                        }
                    }
                    None => bad_line = true,
                }
                continue;
            }
            match line.split_once(':') {
                Some((name, value)) if is_token(name.trim_end()) => {
                    headers.push((name.trim_end().to_string(), value.trim().to_string()));
                }
                _ => bad_line = true,
            }
        }
        RawMessage {
            start,
            headers,
            bad_line,
            folded,
            utf8,
            body,
        }
    }

    fn values(&self, long: &'static str, short: &'static str) -> impl Iterator<Item = &str> + '_ {
        self.headers
            .iter()
            .filter(move |(n, _)| named(n, long, short))
            .map(|(_, v)| v.as_str())
    }

    fn first(&self, long: &'static str, short: &'static str) -> Option<&str> {
        self.values(long, short).next()
    }

    fn count(&self, long: &'static str, short: &'static str) -> usize {
        self.values(long, short).count()
    }
}

/// Length of the head and where the body starts (after CRLFCRLF, or LFLF).
fn head_end(packet: &[u8]) -> Option<(usize, usize)> {
    let crlf = packet.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = packet.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(c), Some(l)) if l < c => Some((l, l + 2)),
        (Some(c), _) => Some((c, c + 4)),
        (None, Some(l)) => Some((l, l + 2)),
        (None, None) => None,
    }
}

/// Removes LWS around `;`, `=`, `,` (and `/` in Via) and collapses other runs of LWS to one
/// SP, outside quoted strings and `<...>`; RFC 3261 §25.1 allows LWS there (SEMI, EQUAL,
/// COMMA, SLASH), the stack's parser does not.
fn normalize_lws(value: &str, slash: bool) -> String {
    let is_sep = |c: char| c == ';' || c == '=' || c == ',' || (slash && c == '/');
    let mut out = String::with_capacity(value.len());
    let (mut quoted, mut escaped, mut angle) = (false, false, false);
    let mut pending_space = false;
    for c in value.chars() {
        if quoted {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
            continue;
        }
        if angle {
            out.push(c);
            if c == '>' {
                angle = false;
            }
            continue;
        }
        if c == ' ' || c == '\t' {
            pending_space = true;
            continue;
        }
        if is_sep(c) {
            pending_space = false;
            out.push(c);
            // LWS after the separator is dropped too
            continue;
        }
        if pending_space && !out.is_empty() && !out.ends_with(is_sep) {
            out.push(' ');
        }
        pending_space = false;
        match c {
            '"' => quoted = true,
            '<' => angle = true,
            _ => {}
        }
        out.push(c);
    }
    out
}

/// Whether every quoted string in a header value is closed.
fn quotes_balanced(value: &str) -> bool {
    let (mut quoted, mut escaped) = (false, false);
    for c in value.chars() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        }
    }
    !quoted
}

/// Whether a header value (outside quotes and `<...>`) has an empty `;` parameter or an empty
/// `,` list element (RFC 4475 badinv01: `Via: SIP/2.0/UDP host;;,;,,`).
fn has_empty_element(value: &str) -> bool {
    let v = normalize_lws(value, false);
    let (mut quoted, mut escaped, mut angle) = (false, false, false);
    let mut prev: Option<char> = None;
    for c in v.chars() {
        if quoted {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
        } else if angle {
            angle = c != '>';
        } else if c == ';' || c == ',' {
            if matches!(prev, None | Some(';') | Some(',')) {
                return true;
            }
        } else if c == '"' {
            quoted = true;
        } else if c == '<' {
            angle = true;
        }
        prev = Some(c);
    }
    matches!(prev, Some(';') | Some(','))
}

/// Whether the display name of a name-addr is a quoted string or tokens (RFC 3261 §25.1;
/// RFC 4475 baddn: `From: Bell, Alexander <sip:...>`).
fn display_name_ok(value: &str) -> bool {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in value.char_indices() {
        if quoted {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
        } else if c == '"' {
            quoted = true;
        } else if c == '<' {
            let name = value[..i].trim();
            return name.starts_with('"')
                || name
                    .chars()
                    .all(|c| c == ' ' || c == '\t' || is_token(&c.to_string()));
        }
    }
    true
}

fn digits_at_most(value: &str, max: u64) -> bool {
    let v = value.trim();
    !v.is_empty()
        && v.len() <= 20
        && v.bytes().all(|b| b.is_ascii_digit())
        && v.parse::<u64>().is_ok_and(|n| n <= max)
}

/// The request-line problems RFC 4475 §3.1.2 names, or the method, URI and version.
enum RequestLine<'s> {
    NotSip,
    Ok {
        method: &'s str,
        uri: &'s str,
        version: &'s str,
        /// More than one SP between the elements, or LWS inside the URI.
        extra_spaces: bool,
    },
}

fn request_line(start: &str) -> RequestLine<'_> {
    // Trailing SP before the CRLF (RFC 4475 trws) is tolerated.
    let line = start.trim_end_matches([' ', '\t']);
    let parts: Vec<&str> = line.split(' ').collect();
    if parts.len() < 3 {
        return RequestLine::NotSip;
    }
    let (method, version) = (parts[0], parts[parts.len() - 1]);
    if !is_token(method) || !version.to_ascii_uppercase().starts_with("SIP/") {
        return RequestLine::NotSip;
    }
    let extra_spaces = parts.len() != 3;
    let uri = parts[1..parts.len() - 1]
        .iter()
        .find(|p| !p.is_empty())
        .copied()
        .unwrap_or("");
    RequestLine::Ok {
        method,
        uri,
        version,
        extra_spaces,
    }
}

/// Decides what happens to one message (`server` names us in replies).
pub(crate) fn classify(packet: &[u8], framing: Framing, server: &str) -> Verdict {
    if packet.iter().all(|b| b.is_ascii_whitespace()) {
        return Verdict::Pass; // CRLF keep-alive: the stack answers it
    }
    if packet.len() >= 4 && packet[..4].eq_ignore_ascii_case(b"SIP/") {
        return classify_response(packet);
    }
    let msg = RawMessage::split(packet);
    let RequestLine::Ok {
        method,
        uri,
        version,
        extra_spaces,
    } = request_line(&msg.start)
    else {
        return Verdict::Drop("not a SIP message");
    };
    let is_ack = method.eq_ignore_ascii_case("ACK");
    let refuse = |status: u16, why: &'static str| -> Verdict {
        if is_ack {
            return Verdict::Drop("broken ACK (an ACK is never answered)");
        }
        match error_reply(&msg, status, Some(why), server) {
            Some(bytes) => Verdict::Reply {
                status,
                bytes,
                close: false,
            },
            None => Verdict::Drop("broken request without a Via and CSeq to answer"),
        }
    };
    match check_request_text(&msg, method, uri, version, extra_spaces, framing) {
        Err(Refusal {
            status,
            why,
            close_stream,
        }) => {
            let mut v = refuse(status, why);
            if let Verdict::Reply { close, .. } = &mut v {
                *close = close_stream && framing == Framing::Stream;
            }
            v
        }
        Ok(()) => {
            let normalized = normalize(&msg, framing);
            let bytes = normalized.as_deref().unwrap_or(packet);
            match SipMessage::try_from(bytes) {
                Ok(SipMessage::Request(req)) => match check_parsed_request(&req) {
                    Ok(()) => match normalized {
                        Some(n) => Verdict::PassNormalized(n),
                        None => Verdict::Pass,
                    },
                    Err(why) => refuse(400, why),
                },
                Ok(SipMessage::Response(_)) => Verdict::Drop("response with a request line"),
                Err(_) => refuse(400, "unparseable request"),
            }
        }
    }
}

/// A refusal: status, the reason (sent in a Warning) and whether a stream must be closed.
struct Refusal {
    status: u16,
    why: &'static str,
    close_stream: bool,
}

fn refusal(status: u16, why: &'static str) -> Refusal {
    Refusal {
        status,
        why,
        close_stream: false,
    }
}

/// The checks on the text of a request, in the order that gives each RFC 4475 message the
/// answer the RFC names (an unknown method is 501 even when its CSeq does not match).
fn check_request_text(
    msg: &RawMessage<'_>,
    method: &str,
    uri: &str,
    version: &str,
    extra_spaces: bool,
    framing: Framing,
) -> Result<(), Refusal> {
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return Err(refusal(505, "only SIP/2.0 is supported"));
    }
    if extra_spaces {
        return Err(refusal(400, "extra white space in the Request-Line"));
    }
    if !KNOWN_METHODS.iter().any(|m| m.eq_ignore_ascii_case(method)) {
        return Err(refusal(501, "unknown method"));
    }
    if uri.starts_with('<') {
        return Err(refusal(400, "Request-URI enclosed in <>"));
    }
    let scheme = uri.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("sip") | Some("sips") => {}
        Some(s) if is_token(s) => return Err(refusal(416, "only sip: and sips: URIs are served")),
        _ => return Err(refusal(400, "malformed Request-URI")),
    }
    if msg.bad_line {
        return Err(refusal(400, "header line without a colon"));
    }
    for (long, short) in SINGLE_VALUED {
        if msg.count(long, short) > 1 {
            let close_stream = *long == "Content-Length";
            return Err(Refusal {
                status: 400,
                why: "a single-value header field appears more than once",
                close_stream,
            });
        }
    }
    for (long, short, why) in [
        ("Via", "v", "missing Via"),
        ("From", "f", "missing From"),
        ("To", "t", "missing To"),
        ("Call-ID", "i", "missing Call-ID"),
        ("CSeq", "", "missing CSeq"),
    ] {
        if msg.count(long, short) == 0 {
            return Err(refusal(400, why));
        }
    }
    match msg.first("Content-Length", "l") {
        Some(cl) if !digits_at_most(cl, u32::MAX as u64) => {
            return Err(Refusal {
                status: 400,
                why: "bad Content-Length",
                close_stream: true,
            });
        }
        Some(cl) => {
            let declared: usize = cl.trim().parse().unwrap_or(usize::MAX);
            if framing == Framing::Datagram && declared > msg.body.len() {
                return Err(refusal(400, "body shorter than Content-Length"));
            }
        }
        None if framing == Framing::Stream && !method.eq_ignore_ascii_case("ACK") => {
            return Err(refusal(400, "Content-Length is required over TCP"));
        }
        None => {}
    }
    let cseq = msg.first("CSeq", "").unwrap_or_default();
    let (seq, cseq_method) = cseq.split_once([' ', '\t']).unwrap_or((cseq, ""));
    if !digits_at_most(seq, (1 << 31) - 1) {
        return Err(refusal(400, "CSeq number out of range"));
    }
    if cseq_method.trim() != method {
        return Err(refusal(
            400,
            "CSeq method does not match the request method",
        ));
    }
    if let Some(mf) = msg.first("Max-Forwards", "")
        && !digits_at_most(mf, 255)
    {
        return Err(refusal(400, "Max-Forwards out of range"));
    }
    for expires in msg.values("Expires", "") {
        if !digits_at_most(expires, u32::MAX as u64) {
            return Err(refusal(400, "Expires out of range"));
        }
    }
    for contact in msg.values("Contact", "m") {
        let lower = normalize_lws(contact, false).to_ascii_lowercase();
        for param in lower.split(';').skip(1) {
            if let Some(v) = param.strip_prefix("expires=")
                && !digits_at_most(v.split(',').next().unwrap_or(v), u32::MAX as u64)
            {
                return Err(refusal(400, "Contact expires out of range"));
            }
        }
    }
    for (long, short) in [("From", "f"), ("To", "t"), ("Contact", "m")] {
        if msg.values(long, short).any(|v| !quotes_balanced(v)) {
            return Err(refusal(400, "unterminated quoted string"));
        }
    }
    for (long, short) in [("Via", "v"), ("Contact", "m"), ("From", "f"), ("To", "t")] {
        if msg.values(long, short).any(has_empty_element) {
            return Err(refusal(400, "empty parameter or list element"));
        }
    }
    for (long, short) in [("From", "f"), ("To", "t")] {
        if msg.values(long, short).any(|v| !display_name_ok(v)) {
            return Err(refusal(
                400,
                "display name with characters that need quotes",
            ));
        }
    }
    let call_id = msg.first("Call-ID", "i").unwrap_or_default();
    if call_id.is_empty() {
        return Err(refusal(400, "empty Call-ID"));
    }
    let is = |m: &str| method.eq_ignore_ascii_case(m);
    if !is("ACK") && !is("CANCEL") && msg.values("Require", "").any(|r| !r.trim().is_empty()) {
        // We support no extension (100rel, timer, ...). Proxy-Require is for proxies.
        return Err(refusal(420, "unsupported extension"));
    }
    if is("INVITE") {
        let body_len = match msg.first("Content-Length", "l") {
            Some(cl) => cl.trim().parse().unwrap_or(0),
            None => msg.body.len(),
        };
        let mime = msg
            .first("Content-Type", "c")
            .and_then(|c| c.split(';').next())
            .map(|m| normalize_lws(m, true).to_ascii_lowercase())
            .unwrap_or_default();
        if body_len > 0 && mime != "application/sdp" {
            return Err(refusal(
                415,
                "the session description must be application/sdp",
            ));
        }
        if let Some(accept) = msg.first("Accept", "")
            && !accept.trim().is_empty()
            && !accept.split(',').any(|a| {
                let a = normalize_lws(a.split(';').next().unwrap_or(a), true).to_ascii_lowercase();
                a == "application/sdp" || a == "application/*" || a == "*/*"
            })
        {
            return Err(refusal(406, "our answer is application/sdp"));
        }
    }
    Ok(())
}

/// What the stack and the dialog layer rely on, on the parsed request.
fn check_parsed_request(req: &Request) -> Result<(), &'static str> {
    let via = req.via_header().map_err(|_| "missing Via")?;
    via.typed().map_err(|_| "bad Via")?;
    req.from_header()
        .map_err(|_| "missing From")?
        .typed()
        .map_err(|_| "bad From")?;
    req.to_header()
        .map_err(|_| "missing To")?
        .typed()
        .map_err(|_| "bad To")?;
    req.call_id_header().map_err(|_| "missing Call-ID")?;
    let cseq = req
        .cseq_header()
        .map_err(|_| "missing CSeq")?
        .typed()
        .map_err(|_| "bad CSeq")?;
    if cseq.method != req.method {
        return Err("CSeq method does not match the request method");
    }
    Ok(())
}

/// The message as the stack can parse it, or `None` when it already can: folded lines
/// unfolded, LWS around the separators of the headers the stack parses removed, a datagram's
/// octets after the declared body cut (RFC 3261 §18.3).
fn normalize(msg: &RawMessage<'_>, framing: Framing) -> Option<Vec<u8>> {
    if !msg.utf8 {
        return None;
    }
    let declared: Option<usize> = msg
        .first("Content-Length", "l")
        .and_then(|cl| cl.trim().parse().ok());
    let body = match (framing, declared) {
        (Framing::Datagram, Some(n)) if n < msg.body.len() => &msg.body[..n],
        _ => msg.body,
    };
    let mut changed = msg.folded || body.len() != msg.body.len();
    let mut head = String::with_capacity(msg.start.len() + 64 * msg.headers.len());
    head.push_str(msg.start.trim_end_matches([' ', '\t']));
    changed |= head.len() != msg.start.len();
    head.push_str("\r\n");
    let call_id = msg.first("Call-ID", "i").unwrap_or_default();
    for (name, value) in &msg.headers {
        let structured = STRUCTURED.iter().any(|(l, s)| named(name, l, s));
        let mut value = if structured {
            let is_via = named(name, "Via", "v");
            let v = normalize_lws(value, is_via || named(name, "Content-Type", "c"));
            changed |= v != *value;
            v
        } else {
            value.clone()
        };
        if named(name, "From", "f") && !has_tag(&value) {
            // An RFC 2543 request has no From tag; the dialog layer needs one. The same
            // request (and the ACK and BYE after it) always gets the same tag.
            value.push_str(&format!(";tag=rfc2543-{:016x}", fnv1a(call_id.as_bytes())));
            changed = true;
        }
        head.push_str(name);
        head.push_str(": ");
        head.push_str(&value);
        head.push_str("\r\n");
    }
    let is_invite = msg.start.split(' ').next() == Some("INVITE");
    if is_invite && msg.count("Contact", "m") == 0 {
        // RFC 2543 let an INVITE go without Contact: the From address is where the caller
        // is reached (the dialog layer needs a remote target).
        if let Some(uri) = msg.first("From", "f").and_then(addr_spec) {
            head.push_str(&format!("Contact: <{uri}>\r\n"));
            changed = true;
        }
    }
    if declared.is_none() && framing == Framing::Datagram && !body.is_empty() {
        // Without Content-Length the body of a datagram is the rest of it (RFC 3261 §18.3);
        // the stack's parser would drop it.
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        changed = true;
    }
    if !changed {
        return None;
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    Some(out)
}

/// Whether a From/To value carries a `tag` header parameter (outside `<...>`).
fn has_tag(value: &str) -> bool {
    let v = normalize_lws(value, false).to_ascii_lowercase();
    let params = match v.rfind('>') {
        Some(i) => &v[i..],
        None => v.as_str(),
    };
    params.split(';').skip(1).any(|p| p.starts_with("tag="))
}

/// The URI of a name-addr or addr-spec header value (`"A" <sip:a@b>;tag=1` gives `sip:a@b`).
fn addr_spec(value: &str) -> Option<String> {
    let uri = match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next().unwrap_or(value).trim(),
    };
    (uri.contains(':') && !uri.contains(char::is_whitespace)).then(|| uri.to_string())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn classify_response(packet: &[u8]) -> Verdict {
    match SipMessage::try_from(packet) {
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
        _ => Verdict::Drop("unparseable response"),
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        406 => "Not Acceptable",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        501 => "Not Implemented",
        505 => "Version Not Supported",
        _ => "Error",
    }
}

/// Builds an error response from the header fields of a request: it needs a Via and a CSeq
/// (otherwise `None`); From, To and Call-ID are copied when present (RFC 4475 insuf has none).
fn error_reply(
    msg: &RawMessage<'_>,
    status: u16,
    why: Option<&str>,
    server: &str,
) -> Option<Vec<u8>> {
    let clean = |v: &str| -> String {
        v.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(1024)
            .collect()
    };
    let vias: Vec<String> = msg.values("Via", "v").map(clean).collect();
    let cseq = msg.first("CSeq", "").map(clean)?;
    if vias.is_empty() {
        return None;
    }
    let mut out = format!("SIP/2.0 {status} {}\r\n", reason_phrase(status));
    for via in vias {
        out.push_str(&format!("Via: {via}\r\n"));
    }
    if let Some(from) = msg.first("From", "f") {
        out.push_str(&format!("From: {}\r\n", clean(from)));
    }
    if let Some(to) = msg.first("To", "t") {
        let mut to = clean(to);
        if !normalize_lws(&to, false)
            .to_ascii_lowercase()
            .contains(";tag=")
        {
            to.push_str(";tag=hl-refused");
        }
        out.push_str(&format!("To: {to}\r\n"));
    }
    if let Some(call_id) = msg.first("Call-ID", "i") {
        out.push_str(&format!("Call-ID: {}\r\n", clean(call_id)));
    }
    out.push_str(&format!("CSeq: {cseq}\r\n"));
    if let Some(w) = why {
        out.push_str(&format!("Warning: 399 humanline \"{w}\"\r\n"));
    }
    match status {
        501 | 405 => out.push_str(&format!("Allow: {}\r\n", super::endpoint::ALLOW)),
        415 | 406 => out.push_str("Accept: application/sdp\r\n"),
        420 => {
            let tags: Vec<String> = msg
                .values("Require", "")
                .flat_map(|r| r.split(','))
                .map(|t| clean(t.trim()))
                .filter(|t| !t.is_empty())
                .collect();
            out.push_str(&format!("Unsupported: {}\r\n", tags.join(", ")));
        }
        _ => {}
    }
    out.push_str(&format!("Server: {server}\r\nContent-Length: 0\r\n\r\n"));
    Some(out.into_bytes())
}

/// Simple global budget for error replies (per second).
pub(crate) struct ReplyBudget {
    window_start: Instant,
    used: u32,
}

const ERROR_REPLIES_PER_SECOND: u32 = 200;

impl ReplyBudget {
    pub(crate) fn new() -> Self {
        ReplyBudget {
            window_start: Instant::now(),
            used: 0,
        }
    }

    /// Whether one more error reply fits in this second's budget.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.used = 0;
        }
        self.used = self.used.saturating_add(1);
        self.used <= ERROR_REPLIES_PER_SECOND
    }
}

/// Counts a verdict and logs it; returns whether a reply may be sent.
fn account(
    verdict: &Verdict,
    counters: &FilterCounters,
    budget: &Mutex<ReplyBudget>,
    src: &dyn std::fmt::Display,
    len: usize,
) -> bool {
    match verdict {
        Verdict::Pass | Verdict::PassNormalized(_) => {
            counters.passed.fetch_add(1, Ordering::Relaxed);
            false
        }
        Verdict::Drop(why) => {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            debug!(%src, len, why, "dropped SIP message");
            false
        }
        Verdict::Reply { status, .. } => {
            if *status == 501 {
                counters.answered_501.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.answered_400.fetch_add(1, Ordering::Relaxed);
            }
            let ok = budget
                .lock()
                .map(|mut b| b.take(Instant::now()))
                .unwrap_or(false);
            debug!(%src, len, status, sent = ok, "answered bad SIP message");
            ok
        }
    }
}

/// Puts [`classify`] in front of the stack's TCP parser (once per process; the first
/// endpoint's counters and name are used).
pub(crate) fn install_stream_filter(server: String, counters: std::sync::Arc<FilterCounters>) {
    use rsipstack::transport::stream::{StreamVerdict, set_stream_filter};
    let budget = Mutex::new(ReplyBudget::new());
    set_stream_filter(Box::new(move |message: &[u8]| {
        let verdict = classify(message, Framing::Stream, &server);
        let may_reply = account(&verdict, &counters, &budget, &"tcp", message.len());
        match verdict {
            Verdict::Pass => StreamVerdict::Pass(message.to_vec()),
            Verdict::PassNormalized(bytes) => StreamVerdict::Pass(bytes),
            Verdict::Drop(_) => StreamVerdict::Drop,
            Verdict::Reply { bytes, close, .. } if may_reply => {
                StreamVerdict::Reply { bytes, close }
            }
            Verdict::Reply { close: true, .. } => StreamVerdict::Reply {
                bytes: Vec::new(),
                close: true,
            },
            Verdict::Reply { .. } => StreamVerdict::Drop,
        }
    }));
}

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
            budget: Mutex::new(ReplyBudget::new()),
            counters,
        }
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
            let verdict = classify(packet, Framing::Datagram, &self.server);
            let may_reply = account(&verdict, &self.counters, &self.budget, &src, len);
            match verdict {
                Verdict::Pass => return Ok((len, src)),
                Verdict::PassNormalized(bytes) => match buf.get_mut(..bytes.len()) {
                    Some(dst) => {
                        dst.copy_from_slice(&bytes);
                        return Ok((bytes.len(), src));
                    }
                    None => return Ok((len, src)),
                },
                Verdict::Drop(_) => {}
                Verdict::Reply { bytes, .. } => {
                    if may_reply && let Err(e) = self.socket.send_to(&bytes, src).await {
                        debug!(%src, error = %e, "cannot answer bad datagram");
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
Contact: <sip:alice@127.0.0.1:5061>\r\n\
To: <sip:ivr@127.0.0.1:5060>\r\n\
Call-ID: c1@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Max-Forwards: 70\r\n\
Content-Length: 0\r\n\r\n";

    fn udp(m: &str) -> Verdict {
        classify(m.as_bytes(), Framing::Datagram, "t")
    }

    fn reply_of(v: Verdict) -> String {
        match v {
            Verdict::Reply { bytes, .. } => String::from_utf8(bytes).expect("utf8"),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn status_of(v: Verdict) -> u16 {
        match v {
            Verdict::Reply { status, .. } => status,
            Verdict::Pass | Verdict::PassNormalized(_) => 0,
            Verdict::Drop(_) => 1,
        }
    }

    #[test]
    fn good_request_passes_unchanged() {
        assert_eq!(udp(GOOD), Verdict::Pass);
        assert_eq!(
            classify(GOOD.as_bytes(), Framing::Stream, "t"),
            Verdict::Pass
        );
        assert_eq!(udp("\r\n\r\n"), Verdict::Pass);
    }

    #[test]
    fn unknown_method_gets_501_with_allow() {
        let msg = GOOD
            .replace("INVITE sip", "FROBNICATE sip")
            .replace("1 INVITE", "1 FROBNICATE");
        let r = reply_of(udp(&msg));
        assert!(r.starts_with("SIP/2.0 501 Not Implemented\r\n"), "{r}");
        assert!(r.contains("Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1\r\n"));
        assert!(r.contains("Call-ID: c1@127.0.0.1\r\n"));
        assert!(r.contains(";tag="));
        assert!(r.contains("Allow: "));
        // a long method is still a method (RFC 4475 intmeth)
        let long = "!interesting-Method0123456789_*+`.%indeed'~";
        let msg = GOOD
            .replace("INVITE sip", &format!("{long} sip"))
            .replace("1 INVITE", &format!("1 {long}"));
        assert_eq!(status_of(udp(&msg)), 501);
    }

    #[test]
    fn broken_mandatory_headers_get_400() {
        // without Call-ID, From and To there is still a Via and CSeq to answer with
        let msg = GOOD.replace("Call-ID: c1@127.0.0.1\r\n", "");
        let r = reply_of(udp(&msg));
        assert!(r.starts_with("SIP/2.0 400 "), "{r}");
        assert!(!r.contains("Call-ID:"), "{r}");
        for (from, to) in [
            ("CSeq: 1 INVITE", "CSeq: 1 BYE"),
            ("CSeq: 1 INVITE", "CSeq: x INVITE"),
            ("CSeq: 1 INVITE", "CSeq: 36893488147419103232 INVITE"),
            ("Max-Forwards: 70", "Max-Forwards: 300"),
            ("Content-Length: 0", "Content-Length: 500"),
            ("Content-Length: 0", "Content-Length: -999"),
            ("Max-Forwards: 70", "Max-Forwards 70"),
            (
                "Call-ID: c1@127.0.0.1",
                "Call-ID: c1@127.0.0.1\r\ni: c2@127.0.0.1",
            ),
            (
                "To: <sip:ivr@127.0.0.1:5060>",
                "To: \"Mr. J. User <sip:ivr@127.0.0.1:5060>",
            ),
            (
                "INVITE sip:ivr@127.0.0.1:5060 SIP",
                "INVITE  sip:ivr@127.0.0.1:5060  SIP",
            ),
            (
                "INVITE sip:ivr@127.0.0.1:5060 SIP",
                "INVITE sip:ivr@127.0.0.1:5060; lr SIP",
            ),
            (
                "INVITE sip:ivr@127.0.0.1:5060 SIP",
                "INVITE <sip:ivr@127.0.0.1:5060> SIP",
            ),
        ] {
            assert!(GOOD.contains(from), "fixture lacks {from}");
            let msg = GOOD.replace(from, to);
            assert_eq!(status_of(udp(&msg)), 400, "{to}: {:?}", udp(&msg));
        }
    }

    #[test]
    fn policy_refusals_name_their_status() {
        let v7 = GOOD.replace("SIP/2.0\r\nVia", "SIP/7.3\r\nVia");
        assert_eq!(status_of(udp(&v7)), 505);
        let im = GOOD.replace("INVITE sip:ivr@127.0.0.1:5060", "INVITE im:ivr@127.0.0.1");
        assert_eq!(status_of(udp(&im)), 416);
        let req = GOOD.replace("Max-Forwards: 70", "Max-Forwards: 70\r\nRequire: nothing");
        let r = reply_of(udp(&req));
        assert!(
            r.starts_with("SIP/2.0 420 ") && r.contains("Unsupported: nothing\r\n"),
            "{r}"
        );
        // Proxy-Require is for proxies; Require never refuses an ACK or CANCEL
        let preq = GOOD.replace("Max-Forwards: 70", "Max-Forwards: 70\r\nProxy-Require: foo");
        assert_eq!(udp(&preq), Verdict::Pass);
        let body = "v=0\r\n";
        let text = GOOD.replace(
            "Content-Length: 0",
            &format!("Content-Type: text/plain\r\nContent-Length: {}", body.len()),
        ) + body;
        let r = reply_of(udp(&text));
        assert!(
            r.starts_with("SIP/2.0 415 ") && r.contains("Accept: application/sdp"),
            "{r}"
        );
        let accept = GOOD.replace(
            "Max-Forwards: 70",
            "Max-Forwards: 70\r\nAccept: text/nobodyKnowsThis",
        );
        assert_eq!(status_of(udp(&accept)), 406);
        let accept = GOOD.replace(
            "Max-Forwards: 70",
            "Max-Forwards: 70\r\nAccept: application/sdp, text/x",
        );
        assert_eq!(udp(&accept), Verdict::Pass);
    }

    #[test]
    fn folded_and_spaced_headers_are_normalized_for_the_stack() {
        let folded = GOOD
            .replace("CSeq: 1 INVITE", "cseq: 0001\r\n  INVITE")
            .replace(
                "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1",
                "Via  : SIP  /   2.0\r\n /UDP\r\n    127.0.0.1:5061 ;  branch = z9hG4bK-1",
            )
            .replace(
                "To: <sip:ivr@127.0.0.1:5060>",
                "TO :\r\n <sip:ivr@127.0.0.1:5060> ; x = \"a  ;b\"",
            );
        let Verdict::PassNormalized(n) = udp(&folded) else {
            panic!("{:?}", udp(&folded));
        };
        let n = String::from_utf8(n).expect("utf8");
        assert!(
            n.contains("Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1\r\n"),
            "{n}"
        );
        assert!(n.contains("cseq: 0001 INVITE\r\n"), "{n}");
        assert!(
            n.contains("TO: <sip:ivr@127.0.0.1:5060>;x=\"a  ;b\"\r\n"),
            "{n}"
        );
        // extra octets after the declared body of a datagram are noise (RFC 3261 §18.3)
        let extra = GOOD.to_string() + "INVITE sip:x SIP/2.0\r\n";
        assert_eq!(
            udp(&extra),
            Verdict::PassNormalized(GOOD.as_bytes().to_vec())
        );
    }

    #[test]
    fn stream_framing_problems_close_the_connection() {
        let neg = GOOD.replace("Content-Length: 0", "Content-Length: -999");
        assert!(matches!(
            classify(neg.as_bytes(), Framing::Stream, "t"),
            Verdict::Reply {
                status: 400,
                close: true,
                ..
            }
        ));
        let none = GOOD.replace("Content-Length: 0\r\n", "");
        assert_eq!(udp(&none), Verdict::Pass);
        assert!(matches!(
            classify(none.as_bytes(), Framing::Stream, "t"),
            Verdict::Reply {
                status: 400,
                close: false,
                ..
            }
        ));
    }

    #[test]
    fn rfc2543_requests_without_branch_or_tag_pass() {
        let old = GOOD
            .replace(";branch=z9hG4bK-1", "")
            .replace(";tag=a1", "")
            .replace("Contact: <sip:alice@127.0.0.1:5061>\r\n", "")
            .replace("Max-Forwards: 70\r\n", "");
        let Verdict::PassNormalized(n) = udp(&old) else {
            panic!("{:?}", udp(&old));
        };
        let n = String::from_utf8(n).expect("utf8");
        // without Contact the From address is the caller's (RFC 2543)
        assert!(n.contains("Contact: <sip:alice@127.0.0.1:5061>\r\n"), "{n}");
        assert!(
            n.contains("From: <sip:alice@127.0.0.1:5061>;tag=rfc2543-"),
            "{n}"
        );
        // the ACK for it gets the same tag
        let ack = old
            .replace("INVITE sip", "ACK sip")
            .replace("1 INVITE", "1 ACK");
        let Verdict::PassNormalized(a) = udp(&ack) else {
            panic!("{:?}", udp(&ack));
        };
        let tag = |m: &str| m.split("tag=").nth(1).map(|t| t[..24].to_string());
        assert_eq!(tag(&n), tag(&String::from_utf8(a).expect("utf8")));
    }

    #[test]
    fn empty_parameters_and_unquoted_display_names_get_400() {
        for (from, to) in [
            ("branch=z9hG4bK-1", "branch=z9hG4bK-1;;,;,,"),
            (
                "<sip:alice@127.0.0.1:5061>;tag=a1",
                "Bell, Alexander <sip:alice@127.0.0.1:5061>;tag=a1",
            ),
        ] {
            let msg = GOOD.replace(from, to);
            assert_eq!(status_of(udp(&msg)), 400, "{to}");
        }
        let quoted = GOOD.replace("<sip:alice", "\"Bell, Alexander\" <sip:alice");
        assert_eq!(udp(&quoted), Verdict::Pass);
        let tokens = GOOD.replace("<sip:alice", "Alexander Bell <sip:alice");
        assert_eq!(udp(&tokens), Verdict::Pass);
    }

    #[test]
    fn garbage_and_broken_acks_are_dropped() {
        for g in [
            &b"\x00\x01\x02garbage"[..],
            b"hello world",
            b"INVITE\r\n\r\n",
            b"SIP/2.0 200 OK\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK1\r\n\r\n",
        ] {
            assert!(
                matches!(udp(&String::from_utf8_lossy(g)), Verdict::Drop(_)),
                "{g:?}"
            );
        }
        let ack = GOOD
            .replace("INVITE sip", "ACK sip")
            .replace("1 INVITE", "1 BYE");
        assert!(matches!(udp(&ack), Verdict::Drop(_)));
    }

    #[test]
    fn reply_budget_refills_each_second() {
        let t0 = Instant::now();
        let mut b = ReplyBudget::new();
        let sent = (0..300).filter(|_| b.take(t0)).count();
        assert_eq!(sent, ERROR_REPLIES_PER_SECOND as usize);
        assert!(b.take(t0 + Duration::from_millis(1100)));
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
            let _ = classify(&v, Framing::Datagram, "t");
            let mut m = GOOD.as_bytes().to_vec();
            let i = (seed as usize) % m.len();
            m[i] = (seed >> 8) as u8;
            m.truncate(((seed >> 16) as usize) % (m.len() + 1));
            let _ = classify(&m, Framing::Datagram, "t");
            let _ = classify(&m, Framing::Stream, "t");
        }
    }
}
