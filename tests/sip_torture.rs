//! RFC 4475 torture messages against a running `humanline serve`, over UDP and over TCP.
//!
//! The messages are read at test time from `../shared/data/rfc4475/` beside the repository
//! (or `$HUMANLINE_RFC4475_DIR`), with `192.0.2.` rewritten to `127.0.0.` (same length, so
//! Content-Length stays right). Each gets the answer RFC 4475 §3 names for an endpoint: valid
//! messages are processed as usual (an OPTIONS gets 200, a REGISTER 401: agents' phones
//! register with digest authentication, and none of these carries valid credentials, an
//! INVITE is answered), invalid ones the 4xx/5xx the RFC names; where the RFC
//! allows rejecting or being liberal, either is accepted. The answers must be the same over
//! both transports, except where RFC 3261 itself makes the transport matter (noted in
//! [`EXPECTED`]). Afterwards the server still answers and serves.
//!
//! Each transport gets a fresh server, so that a message sent over TCP is not taken for a
//! retransmission of the same message sent over UDP.
//!
//! Run: `cargo test --release --test sip_torture`.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What an endpoint must answer.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// The first final response has one of these codes.
    Status(&'static [u16]),
    /// No answer at all (responses nobody asked for; unparseable junk).
    Nothing,
}
use Want::*;

/// Per message: the answer over UDP, and over TCP when RFC 3261 makes it differ.
const EXPECTED: &[(&str, Want, Option<Want>)] = &[
    // 3.1.1 valid messages
    ("wsinv", Status(&[481]), None), // valid; its To tag names a dialog we do not have
    ("intmeth", Status(&[501]), None),
    ("esc01", Status(&[200]), None),
    ("escnull", Status(&[401]), None),
    ("esc02", Status(&[501]), None),
    ("lwsdisp", Status(&[200]), None),
    ("longreq", Status(&[200]), None),
    // over TCP the octets after the REGISTER are a request of their own
    ("dblreq", Status(&[401]), None),
    ("semiuri", Status(&[200]), None),
    ("transports", Status(&[200]), None),
    ("mpart01", Status(&[405]), None),
    ("unreason", Nothing, None),
    ("noreason", Nothing, None),
    // 3.1.2 invalid messages
    ("badinv01", Status(&[400]), None),
    // "when sent over UDP ... 400"; on a stream the receiver waits for the rest
    ("clerr", Status(&[400]), Some(Nothing)),
    ("ncl", Status(&[400]), None),
    ("scalar02", Status(&[400]), None),
    ("scalarlg", Nothing, None),
    ("quotbal", Status(&[400]), None),
    ("ltgtruri", Status(&[400]), None),
    ("lwsruri", Status(&[400]), None),
    ("lwsstart", Status(&[400, 200]), None), // reject, or be liberal
    ("trws", Status(&[400, 200]), None),
    ("escruri", Status(&[400, 200]), None),
    ("baddate", Status(&[400, 200]), None),
    ("regbadct", Status(&[400, 401]), None),
    ("badaspec", Status(&[400, 200]), None),
    ("baddn", Status(&[400]), None),
    ("badvers", Status(&[505]), None),
    ("mismatch01", Status(&[400]), None),
    ("mismatch02", Status(&[501, 400]), None),
    ("bigcode", Nothing, None),
    // 3.2 transaction layer
    ("badbranch", Status(&[200]), None),
    // 3.3 application layer
    ("insuf", Status(&[400]), None),
    ("unkscm", Status(&[416]), None),
    ("novelsc", Status(&[416]), None),
    ("unksm2", Status(&[401]), None),
    ("bext01", Status(&[420]), None),
    ("invut", Status(&[415]), None),
    ("regaut01", Status(&[401]), None),
    ("multi01", Status(&[400]), None),
    ("mcl01", Status(&[400]), None),
    ("bcast", Nothing, None),
    ("zeromf", Status(&[200]), None),
    ("cparam01", Status(&[401]), None),
    ("cparam02", Status(&[401]), None),
    ("regescrt", Status(&[401]), None),
    ("sdp01", Status(&[406, 400]), None),
    // 3.4: valid RFC 2543 INVITE, but without Content-Length, which a stream requires
    // (RFC 3261 §18.3, §20.14)
    ("inv2543", Status(&[200]), Some(Status(&[400]))),
    // the archive's undocumented extra: no SIP version, no Via
    ("test", Nothing, None),
];

/// How long to wait for a final answer.
const WINDOW: Duration = Duration::from_secs(3);

fn torture_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("HUMANLINE_RFC4475_DIR") {
        return Some(PathBuf::from(d));
    }
    // CI keeps shared/ beside the clone; a worktree under wt/ is one level deeper
    ["../shared/data/rfc4475", "../../shared/data/rfc4475"]
        .iter()
        .map(|p| repo().join(p))
        .find(|p| p.join("README.md").is_file())
}

fn message(dir: &std::path::Path, name: &str) -> Vec<u8> {
    let raw = std::fs::read(dir.join(format!("{name}.dat")))
        .unwrap_or_else(|e| panic!("reading {name}.dat: {e}"));
    let (from, to) = (b"192.0.2.", b"127.0.0.");
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    out
}

/// The status codes of the responses in a byte stream, in order.
fn statuses(bytes: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(bytes);
    text.split("\r\n")
        .filter_map(|l| l.strip_prefix("SIP/2.0 "))
        .filter_map(|rest| rest.get(..3)?.parse().ok())
        .collect()
}

fn send_udp(server: SocketAddr, msg: &[u8]) -> Vec<u16> {
    let s = UdpSocket::bind((LOCALHOST, 0)).expect("udp bind");
    s.set_read_timeout(Some(Duration::from_millis(200))).ok();
    s.send_to(msg, server).expect("udp send");
    let deadline = Instant::now() + WINDOW;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65535];
    while Instant::now() < deadline {
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            got.extend(statuses(&buf[..n]));
            if got.iter().any(|c| *c >= 200) {
                break;
            }
        }
    }
    got
}

fn send_tcp(server: SocketAddr, msg: &[u8]) -> Vec<u16> {
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(3)).expect("tcp connect");
    s.set_read_timeout(Some(Duration::from_millis(200))).ok();
    s.write_all(msg).expect("tcp send");
    let deadline = Instant::now() + WINDOW;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65535];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break, // closed (after a framing error)
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if statuses(&got).iter().any(|c| *c >= 200) {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    statuses(&got)
}

fn options(transport: &str) -> String {
    format!(
        "OPTIONS sip:ivr@{LOCALHOST} SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {LOCALHOST}:9;branch=z9hG4bK-after-{transport}\r\n\
         From: <sip:t@{LOCALHOST}>;tag=after\r\nTo: <sip:ivr@{LOCALHOST}>\r\n\
         Call-ID: after-torture-{transport}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn verdict(want: Want, got: &[u16]) -> bool {
    let final_code = got.iter().find(|c| **c >= 200);
    match want {
        Nothing => got.is_empty(),
        Status(codes) => final_code.is_some_and(|c| codes.contains(c)),
    }
}

/// Sends every message at once (one thread each) and collects what came back.
fn run_all(
    dir: &std::path::Path,
    server: SocketAddr,
    tcp: bool,
) -> BTreeMap<&'static str, Vec<u16>> {
    let handles: Vec<_> = EXPECTED
        .iter()
        .map(|(name, _, _)| {
            let mut msg = message(dir, name);
            if tcp && !msg.windows(4).any(|w| w == b"\r\n\r\n") {
                // baddn.dat ends without the empty line after its headers: on a stream that
                // is an unfinished message, so the empty line is sent (a datagram ends anyway)
                msg.extend_from_slice(b"\r\n");
            }
            let name: &'static str = name;
            std::thread::spawn(move || {
                let got = if tcp {
                    send_tcp(server, &msg)
                } else {
                    send_udp(server, &msg)
                };
                (name, got)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("sender thread"))
        .collect()
}

#[test]
fn rfc4475_torture_messages_get_the_answers_the_rfc_names_over_udp_and_tcp() {
    let Some(dir) = torture_dir() else {
        let msg =
            "rfc4475: no ../shared/data/rfc4475 beside the repository (or $HUMANLINE_RFC4475_DIR)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("SKIP {msg}");
        return;
    };
    if !model_path().is_file() {
        eprintln!("SKIP rfc4475: no model at {}", model_path().display());
        return;
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("read torture dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".dat").map(str::to_string))
        .collect();
    names.sort();
    let mut listed: Vec<String> = EXPECTED.iter().map(|(n, _, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(
        names, listed,
        "every message of the archive has an expectation here"
    );

    let mut results = Vec::new();
    for tcp in [false, true] {
        let ports = Ports::claim(5);
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut server = Server::start(ports, tmp.path(), &[]);
        let got = run_all(&dir, ports.sip_addr(), tcp);
        // the server keeps serving after all of them, on both transports
        server.assert_alive();
        let after_udp = send_udp(ports.sip_addr(), options("UDP").as_bytes());
        let after_tcp = send_tcp(ports.sip_addr(), options("TCP").as_bytes());
        assert!(
            after_udp.contains(&200) && after_tcp.contains(&200),
            "after the torture messages over {}: OPTIONS got {after_udp:?} (UDP), {after_tcp:?} (TCP)\n{}",
            if tcp { "TCP" } else { "UDP" },
            server.story()
        );
        let (status, _) = server.get("/healthz");
        assert_eq!(status, 200);
        results.push(got);
    }
    let (udp, tcp) = (&results[0], &results[1]);
    let mut failures = Vec::new();
    let mut table = String::new();
    for (name, want_udp, want_tcp) in EXPECTED {
        let want_tcp = want_tcp.unwrap_or(*want_udp);
        let (u, t) = (&udp[name], &tcp[name]);
        let (ok_u, ok_t) = (verdict(*want_udp, u), verdict(want_tcp, t));
        table.push_str(&format!(
            "{name:11} want {want_udp:?}/{want_tcp:?}  UDP {u:?}{}  TCP {t:?}{}\n",
            if ok_u { "" } else { " <-- WRONG" },
            if ok_t { "" } else { " <-- WRONG" },
        ));
        if !ok_u || !ok_t {
            failures.push(*name);
        }
        // same final answer over both transports unless the RFC makes them differ
        let fin = |v: &[u16]| v.iter().copied().find(|c| *c >= 200);
        if want_tcp_is_same(name) && fin(u) != fin(t) {
            failures.push(*name);
            table.push_str(&format!("{name:11} differs between UDP and TCP\n"));
        }
    }
    eprintln!("{table}");
    assert!(
        failures.is_empty(),
        "wrong answers for {failures:?}:\n{table}"
    );
}

fn want_tcp_is_same(name: &str) -> bool {
    EXPECTED
        .iter()
        .any(|(n, _, tcp)| *n == name && tcp.is_none())
}
