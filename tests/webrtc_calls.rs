//! Browser callers, end to end: `humanline serve` (the release binary) takes WebRTC calls on
//! its HTTP listener (`POST /call`, WHIP-style) and treats them as any other caller.
//!
//! - The endpoint alone (no browser needed): a malformed offer gets a 4xx with a reason and the
//!   server keeps serving; a site not allowed is refused; an offer as Chromium writes it is
//!   answered (201, `Location`, PCMU, DTLS fingerprint, our candidate), its `DELETE` ends it;
//!   one client cannot hold more than its share of calls.
//! - Real headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core from
//!   tests/browser): a caller whose fake microphone says "I want to talk to a human" is routed
//!   to a SIP agent (sipp), the agent hears the caller, the caller hears the IVR.
//!
//! Without Chromium, node or tests/browser/node_modules (scripts/setup.sh installs them) the
//! browser test prints SKIP and passes, unless `CI=true`.
//!
//! Run: `cargo test --release --test webrtc_calls -- --test-threads=2`.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// An HTTP/1.1 answer: status, headers (lower-case names), body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request (Connection: close) with `headers` and `body`.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {LOCALHOST}:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    // A refused request may be cut off before all of it is written.
    let _ = s.write_all(req.as_bytes());
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

fn post_offer(port: u16, offer: &str, origin: Option<&str>) -> Reply {
    let mut headers = vec![("Content-Type", "application/sdp")];
    if let Some(o) = origin {
        headers.push(("Origin", o));
    }
    http(port, "POST", "/call", &headers, offer)
}

/// An audio offer as Chromium writes it (opus first; PCMU and telephone-event offered too).
/// Never connects: nothing answers our ICE candidate.
const CHROMIUM_OFFER: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0\r\n\
a=msid-semantic: WMS stream\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 9 0 8 13 110 126\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Vq8A\r\n\
a=ice-pwd:rD4BvvG8mCmmjEvKXDKD6Cs7\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 6B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=sendrecv\r\n\
a=msid:stream track\r\n\
a=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:13 CN/8000\r\n\
a=rtpmap:110 telephone-event/48000\r\n\
a=rtpmap:126 telephone-event/8000\r\n\
a=ssrc:1001 cname:browsercname\r\n";

fn healthy(server: &Server) {
    let (status, body) = server.get("/healthz");
    assert_eq!(status, 200, "/healthz: {body}\n{}", server.story());
}

/// The endpoint's answers, without a browser.
#[test]
fn the_call_endpoint_answers_offers_and_refuses_bad_ones_and_other_sites() {
    let ports = Ports::claim(6);
    let dir = tempdir("webrtc-endpoint");
    let d = dir.path();
    let config = d.join("server.toml");
    std::fs::write(
        &config,
        "[browser]\nallowed_origins = [\"https://shop.example\"]\nmax_new_calls_per_second = 100\nmax_calls_per_client = 2\nmax_new_calls_per_second_per_client = 100\n",
    )
    .expect("config");
    let mut server = Server::start_with(
        ports,
        d,
        &[],
        &["--config".into(), config.display().to_string()],
    );
    let port = ports.http();

    // The caller page carries the promise.
    let page = http(port, "GET", "/call.html", &[], "");
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("say <strong>“human”</strong> at any time"),
        "{}",
        page.body
    );

    // Malformed offers: 4xx with the reason, and the server goes on.
    for (offer, want) in [
        ("hello", "v=0"),
        ("v=0\r\nthis is not sdp\r\n", "SDP"),
        (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n",
            "audio",
        ),
    ] {
        let r = post_offer(port, offer, None);
        assert_eq!(r.status, 400, "{offer:?}: {}", r.body);
        assert!(r.body.contains(want), "{offer:?}: {}", r.body);
        healthy(&server);
    }
    let wrong_type = http(
        port,
        "POST",
        "/call",
        &[("Content-Type", "text/plain")],
        CHROMIUM_OFFER,
    );
    assert_eq!(wrong_type.status, 415, "{}", wrong_type.body);
    // Too big: refused (413, or the connection is reset while the rest of the body is
    // still unread), never answered.
    let huge = format!("v=0\r\n{}", "a=x\r\n".repeat(8_000));
    let r = post_offer(port, &huge, None);
    assert!(r.status == 413 || r.status == 0, "{} {}", r.status, r.body);
    healthy(&server);

    // Another site may not place calls, nor ask to (CORS preflight).
    let evil = post_offer(port, CHROMIUM_OFFER, Some("https://evil.example"));
    assert_eq!(evil.status, 403, "{}", evil.body);
    assert!(evil.body.contains("evil.example"), "{}", evil.body);
    assert!(evil.header("access-control-allow-origin").is_none());
    let preflight = |origin: &str| {
        http(
            port,
            "OPTIONS",
            "/call",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "content-type"),
            ],
            "",
        )
    };
    assert_eq!(preflight("https://evil.example").status, 403);
    let ok = preflight("https://shop.example");
    assert_eq!(ok.status, 204);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://shop.example")
    );

    // An allowed site's offer is answered, WHIP-style.
    let r = post_offer(port, CHROMIUM_OFFER, Some("https://shop.example"));
    assert_eq!(r.status, 201, "{}\n{}", r.body, server.story());
    assert_eq!(r.header("content-type"), Some("application/sdp"));
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    let location = r.header("location").expect("Location").to_string();
    let id = location.strip_prefix("/call/").expect("a /call/ resource");
    assert!(
        id.len() >= 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "an unguessable id: {location}"
    );
    for want in [
        "a=rtpmap:0 PCMU/8000",
        "telephone-event/8000",
        "a=fingerprint:sha-256",
        "a=ice-lite",
        "typ host",
        "127.0.0.1",
    ] {
        assert!(r.body.contains(want), "answer lacks {want}:\n{}", r.body);
    }
    assert!(!r.body.contains("opus"), "{}", r.body);

    // The same client gets two calls at once, not three.
    let second = post_offer(port, CHROMIUM_OFFER, Some("https://shop.example"));
    assert_eq!(second.status, 201, "{}", second.body);
    let third = post_offer(port, CHROMIUM_OFFER, Some("https://shop.example"));
    assert_eq!(third.status, 429, "{}", third.body);
    assert!(third.header("retry-after").is_some());

    // Hanging up ends the call; the resource is gone after it.
    let bye = http(
        port,
        "DELETE",
        &location,
        &[("Origin", "https://shop.example")],
        "",
    );
    assert_eq!(bye.status, 200, "{}", bye.body);
    assert!(
        eventually(Duration::from_secs(5), || http(
            port,
            "DELETE",
            &location,
            &[],
            ""
        )
        .status
            == 404),
        "the hung-up call is still there\n{}",
        server.story()
    );
    let unknown = http(
        port,
        "DELETE",
        "/call/0123456789abcdef0123456789abcdef",
        &[],
        "",
    );
    assert_eq!(unknown.status, 404);
    // Its slot is free again.
    let again = post_offer(port, CHROMIUM_OFFER, Some("https://shop.example"));
    assert_eq!(again.status, 201, "{}", again.body);
    healthy(&server);
    server.assert_alive();
}

// --- a real browser ---------------------------------------------------------------------------

/// The browser's JSON lines.
fn browser_report(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn inbound_energy(report: &[serde_json::Value]) -> f64 {
    report
        .iter()
        .filter_map(|v| v.pointer("/inbound/totalAudioEnergy")?.as_f64())
        .fold(0.0, f64::max)
}

fn outbound_packets(report: &[serde_json::Value]) -> u64 {
    report
        .iter()
        .filter_map(|v| v.pointer("/outbound/packetsSent")?.as_u64())
        .max()
        .unwrap_or(0)
}

/// "I want to talk to a human" into a browser's microphone: the SIP agent is rung with the
/// reason and transcript, answers, and hears the caller; the caller heard the IVR's greeting
/// (audio energy in Chromium's own statistics); the browser's hang-up ends both legs.
#[test]
fn a_browser_caller_who_asks_for_a_human_reaches_a_sip_agent() {
    let test = "a_browser_caller_who_asks_for_a_human_reaches_a_sip_agent";
    if !peers_available(test) || !browser_available(test) {
        return;
    }
    let _browser = browser_lock();
    let _speech = speech_lock();
    let started = Instant::now();
    let ports = Ports::claim(7);
    let dir = tempdir("webrtc-browser");
    let d = dir.path();

    // What the agent hears goes to a socket of ours.
    let ear_port = ports.base + 42;
    let ear = RtpListener::start(ear_port, Duration::from_secs(120));
    let mut agent = Sipp::start(
        d,
        SippRun {
            name: "agent",
            scenario: "agent_answers_ear.xml",
            vars: &[("RTP_PORT", ear_port.to_string())],
            remote: None,
            transport: "u1",
            ports: ports.agent_sipp(),
            timeout: Duration::from_secs(100),
            calls: 1,
        },
    );
    let agent_uri = format!("sip:agent@{LOCALHOST}:{}", ports.agent_sipp().sip);
    let server = Server::start(ports, d, &[agent_uri]);

    // The microphone: a moment of silence (the connection comes up), the request, then more
    // words for the agent to hear once bridged.
    let (_, _) = caller_audio(
        d,
        "caller",
        &[
            Part::Silence(2.0),
            Part::Say("I want to talk to a human"),
            Part::Silence(2.5),
            Part::Say("my account number is four five six"),
            Part::Silence(0.7),
            Part::Say("I am calling about my last bill"),
            Part::Silence(0.7),
            Part::Say("it was much higher than usual"),
            Part::Silence(0.7),
            Part::Say("can you please tell me why"),
            Part::Silence(1.0),
        ],
    );
    let mic = d.join("mic.wav");
    let converted = Command::new("sox")
        .arg(d.join("caller.wav"))
        .args(["-r", "48000", "-c", "1", "-b", "16"])
        .arg(&mic)
        .status()
        .is_ok_and(|s| s.success());
    assert!(converted, "sox could not make the microphone file");

    let url = format!("http://{LOCALHOST}:{}/call.html", ports.http());
    let browser_out = d.join("browser.jsonl");
    let mut browser = Proc::spawn(
        "chromium caller",
        Command::new("node")
            .arg(browser_dir().join("caller.mjs"))
            .arg(&url)
            .arg(&mic)
            .arg("35")
            .current_dir(browser_dir())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&browser_out).expect("out"))
            .stderr(std::fs::File::create(d.join("browser.stderr")).expect("err")),
    );
    let browser_story = || {
        format!(
            "--- browser ---\n{}\n{}\n--- humanline ---\n{}",
            tail(
                &std::fs::read_to_string(&browser_out).unwrap_or_default(),
                30
            ),
            tail(
                &std::fs::read_to_string(d.join("browser.stderr")).unwrap_or_default(),
                30
            ),
            server.story()
        )
    };

    let bridged = server
        .log
        .wait_for(&["agent answered; bridged"], Duration::from_secs(45));
    assert!(
        bridged.is_some(),
        "the agent was never bridged\n{}",
        browser_story()
    );
    let route = server
        .log
        .find(&["route to a person"])
        .map(|(_, l)| l)
        .unwrap_or_default();
    assert!(
        route.contains("reason=\"keyword\""),
        "{route}\n{}",
        browser_story()
    );

    let code = browser.wait(Duration::from_secs(60));
    assert_eq!(
        code,
        Some(0),
        "the browser caller failed\n{}",
        browser_story()
    );
    let report = browser_report(&std::fs::read_to_string(&browser_out).unwrap_or_default());
    let promise = report
        .iter()
        .find_map(|v| v.get("promise")?.as_str().map(str::to_string))
        .unwrap_or_default();
    assert!(promise.contains("human"), "page shows {promise:?}");
    let energy = inbound_energy(&report);
    assert!(
        energy > 0.01,
        "the browser caller heard silence (totalAudioEnergy {energy})\n{}",
        browser_story()
    );
    assert!(outbound_packets(&report) > 100, "{}", browser_story());

    // The hang-up (DELETE) reaches the call: the agent's leg is hung up, sipp ends cleanly.
    assert!(
        server
            .log
            .wait_for(&["caller hung up"], Duration::from_secs(10))
            .is_some(),
        "{}",
        browser_story()
    );
    let agent_code = agent.proc.wait(Duration::from_secs(20));
    assert_eq!(
        agent_code,
        Some(0),
        "the agent's sipp did not end cleanly\n{}\n{}",
        agent.report(),
        browser_story()
    );
    let messages = agent.messages();
    let invite = first_request(&messages, "INVITE").expect("INVITE to the agent");
    assert_eq!(
        header(&invite, "X-Humanline-Reason").as_deref(),
        Some("keyword"),
        "{invite}"
    );
    let transcript = header(&invite, "X-Humanline-Transcript").unwrap_or_default();
    assert!(transcript.to_lowercase().contains("human"), "{invite}");

    // The agent heard the caller's later sentences.
    let loud = ear.loudness(
        Duration::ZERO,
        Duration::from_secs(20),
        Duration::from_millis(500),
    );
    let peak = loud.iter().cloned().fold(0.0f32, f32::max);
    let loud_windows = loud.iter().filter(|r| **r > 0.01).count();
    assert!(
        peak > 0.02 && loud_windows >= 2,
        "the agent heard (almost) silence: {loud:?}\n{}",
        browser_story()
    );
    eprintln!(
        "browser caller: routed ({route}); caller heard energy {energy:.3}; agent peak RMS {peak:.3}; {:.1} s",
        started.elapsed().as_secs_f32()
    );
}
