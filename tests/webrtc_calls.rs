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
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One request (Connection: close) with `headers` and `body`, answered within 15 s.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> HttpReply {
    http_request_bytes(
        port,
        method,
        path,
        headers,
        body.as_bytes(),
        Duration::from_secs(15),
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn post_offer(port: u16, offer: &str, origin: Option<&str>) -> HttpReply {
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

/// The endpoint's answers, without a browser. The site allowed (the one `allowed_origins`
/// list) may place calls and make changes in the console; another site may do neither.
#[test]
fn the_call_endpoint_answers_offers_and_refuses_bad_ones_and_other_sites() {
    let ports = Ports::claim(6);
    let dir = tempdir("webrtc-endpoint");
    let d = dir.path();
    let config = d.join("server.toml");
    std::fs::write(
        &config,
        "allowed_origins = [\"https://Shop.Example:443\"]\n\n[browser]\nmax_new_calls_per_second = 100\nmax_calls_per_client = 2\nmax_new_calls_per_second_per_client = 100\n",
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

    // The same list is the console's: a change from the allowed site's page is taken, one
    // from another site refused (an operator keeps one list, not two in step).
    server.add_user("ann", "agent", "ann-password-1");
    let login = server.login("ann", "ann-password-1");
    let presence = |origin: &str| {
        server.request(
            "POST",
            "/api/me/presence",
            &[
                ("Cookie", &login.cookie),
                ("Origin", origin),
                ("X-CSRF-Token", &login.csrf),
                ("Content-Type", "application/json"),
            ],
            r#"{"presence": "away"}"#,
        )
    };
    let from_shop = presence("https://shop.example");
    assert_eq!(from_shop.status, 200, "{}", from_shop.body);
    let from_evil = presence("https://evil.example");
    assert_eq!(from_evil.status, 403, "{}", from_evil.body);
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
    let Some(_running) = browser_test(test, true) else {
        return;
    };
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
    let reason = route
        .split("reason=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default();
    assert!(
        routed_on_words_or_behind(&server, test, reason, "keyword"),
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
        Some(reason),
        "{invite}"
    );
    let transcript = header(&invite, "X-Humanline-Transcript").unwrap_or_default();
    assert!(
        reason != "keyword" || transcript.to_lowercase().contains("human"),
        "{invite}"
    );

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

// --- agents who answer in the console ---------------------------------------------------------

/// The stats lines of one page (`agent` or `caller`) of desk.mjs's report.
fn page_stats<'a>(
    report: &'a [serde_json::Value],
    page: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    report
        .iter()
        .filter(move |v| v["event"] == "stats" && v["page"] == page)
}

/// Audio energy a page received between two moments (ms since desk.mjs started): the growth
/// of Chromium's cumulative `totalAudioEnergy` (silence adds nothing).
fn energy_between(report: &[serde_json::Value], page: &str, from_ms: u64, to_ms: u64) -> f64 {
    let points: Vec<f64> = page_stats(report, page)
        .filter(|v| {
            v["t_ms"]
                .as_u64()
                .is_some_and(|t| t >= from_ms && t <= to_ms)
        })
        .filter_map(|v| v.pointer("/inbound/totalAudioEnergy")?.as_f64())
        .collect();
    match (points.first(), points.last()) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    }
}

fn event<'a>(report: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    report.iter().find(|v| v["event"] == name)
}

fn event_ms(report: &[serde_json::Value], name: &str) -> u64 {
    event(report, name)
        .and_then(|v| v["t_ms"].as_u64())
        .unwrap_or_else(|| panic!("no {name} event in the browser's report"))
}

/// desk.mjs in one Chromium: the agent `ann` logs in and answers in the console (her voice a
/// tone), and with `browser_caller` a browser caller whose microphone plays `mic` calls too.
/// With `callbacks` (`start_desk_with`) she reports the console's callback tables first.
fn start_desk(
    d: &Path,
    http_port: u16,
    mic: &Path,
    browser_caller: bool,
    talk_s: u32,
    after_s: u32,
) -> Proc {
    start_desk_with(d, http_port, mic, browser_caller, talk_s, after_s, false)
}

fn start_desk_with(
    d: &Path,
    http_port: u16,
    mic: &Path,
    browser_caller: bool,
    talk_s: u32,
    after_s: u32,
    callbacks: bool,
) -> Proc {
    let config = serde_json::json!({
        "base": format!("http://{LOCALHOST}:{http_port}"),
        "wav": mic.display().to_string(),
        "user": "ann",
        "password": "ann-password-1",
        "caller": browser_caller,
        "talk_s": talk_s,
        "after_s": after_s,
        "timeout_s": 50,
        "callbacks": callbacks,
    });
    Proc::spawn(
        "chromium desk",
        Command::new("node")
            .arg(browser_dir().join("desk.mjs"))
            .arg(config.to_string())
            .current_dir(browser_dir())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.join("desk.jsonl")).expect("out"))
            .stderr(std::fs::File::create(d.join("desk.stderr")).expect("err")),
    )
}

/// desk.mjs's JSON lines so far, and the story for a failure.
fn desk_report(d: &Path, server: &Server) -> (Vec<serde_json::Value>, String) {
    let text = std::fs::read_to_string(d.join("desk.jsonl")).unwrap_or_default();
    let story = format!(
        "--- browser ---\n{}\n{}\n--- humanline ---\n{}",
        tail(&text, 40),
        tail(
            &std::fs::read_to_string(d.join("desk.stderr")).unwrap_or_default(),
            30
        ),
        server.story()
    );
    (browser_report(&text), story)
}

/// The caller's voice for the console tests: the request, then talk for the agent to hear.
fn console_caller_audio(d: &Path) -> PathBuf {
    let mut parts = vec![Part::Silence(2.0), Part::Say("I want to talk to a human")];
    parts.push(Part::Silence(2.5));
    for _ in 0..3 {
        for s in [
            "my account number is four five six",
            "I am calling about my last bill",
            "it was much higher than usual",
            "can you please tell me why",
        ] {
            parts.push(Part::Say(s));
            parts.push(Part::Silence(0.7));
        }
    }
    caller_audio(d, "caller", &parts);
    d.join("caller.wav")
}

fn mic_48k(d: &Path, wav: &Path) -> PathBuf {
    let mic = d.join("mic.wav");
    let converted = Command::new("sox")
        .arg(wav)
        .args(["-r", "48000", "-c", "1", "-b", "16"])
        .arg(&mic)
        .status()
        .is_ok_and(|s| s.success());
    assert!(converted, "sox could not make the microphone file");
    mic
}

/// The offer as the agent saw it before answering: the caller's words and the reason (on an
/// overloaded machine whose recognition fell behind, `speech_unavailable` with no words).
fn assert_offer_shows_the_caller(
    report: &[serde_json::Value],
    story: &str,
    server: &Server,
    test: &str,
) {
    let offer = event(report, "offer").unwrap_or_else(|| panic!("no offer shown\n{story}"));
    let reason = offer["reason"].as_str().unwrap_or_default();
    assert!(
        routed_on_words_or_behind(server, test, reason, "keyword"),
        "{offer}\n{story}"
    );
    let shown = offer["shown"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        reason != "keyword" || shown.contains("human"),
        "the console showed {shown:?}\n{story}"
    );
    assert!(
        offer["language"].as_str().is_some_and(|l| !l.is_empty()),
        "{offer}"
    );
    assert!(offer["waiting_s"].as_u64().is_some(), "{offer}");
}

/// A browser caller says "I want to talk to a human"; the call is offered to ann, logged in
/// to the console in another browser, with the transcript shown before she answers; she
/// accepts; each hears the other (the caller her tone, she the caller's words, in Chromium's
/// own audio statistics); she hangs up; the caller is back with the IVR (its "anything
/// else?" reaches the caller's browser) and still connected.
#[test]
fn a_browser_caller_reaches_a_browser_agent_and_is_back_with_the_ivr_when_she_hangs_up() {
    let test =
        "a_browser_caller_reaches_a_browser_agent_and_is_back_with_the_ivr_when_she_hangs_up";
    let Some(_running) = browser_test(test, true) else {
        return;
    };
    let started = Instant::now();
    let ports = Ports::claim(8);
    let dir = tempdir("webrtc-browser-agent");
    let d = dir.path();
    let server = Server::start(ports, d, &[]);
    server.add_user("ann", "agent", "ann-password-1");
    let mic = mic_48k(d, &console_caller_audio(d));

    let mut desk = start_desk(d, ports.http(), &mic, true, 7, 7);
    let code = desk.wait(Duration::from_secs(120));
    let (report, story) = desk_report(d, &server);
    assert_eq!(code, Some(0), "the browsers failed\n{story}");
    assert_offer_shows_the_caller(&report, &story, &server, test);
    assert!(
        server
            .log
            .find(&["agent answered in the console; bridged"])
            .is_some(),
        "{story}"
    );
    let connected = event_ms(&report, "agent_connected");
    let hung_up = event_ms(&report, "agent_hung_up");
    let end = report
        .iter()
        .filter_map(|v| v["t_ms"].as_u64())
        .max()
        .unwrap_or(0);
    // Each side hears the other while bridged (the first half second is the bridge coming up).
    let agent_heard = energy_between(&report, "agent", connected + 500, hung_up);
    let caller_heard = energy_between(&report, "caller", connected + 500, hung_up);
    assert!(
        agent_heard > 0.01,
        "the agent heard silence ({agent_heard})\n{story}"
    );
    assert!(
        caller_heard > 0.01,
        "the caller did not hear the agent ({caller_heard})\n{story}"
    );
    // The agent hung up: the caller is back with the IVR, not cut off.
    let left = server.log.wait_for(
        &["agent left; caller back with the IVR"],
        Duration::from_secs(5),
    );
    assert!(left.is_some(), "{story}");
    let back = server.log.find(&["play", "prompt=after_agent"]);
    assert!(back.is_some(), "the IVR did not speak again\n{story}");
    let ivr_again = energy_between(&report, "caller", hung_up + 300, end);
    assert!(
        ivr_again > 0.01,
        "the caller heard nothing after the agent left ({ivr_again})\n{story}"
    );
    let status = event(&report, "caller_status").map(|v| v["status"].clone());
    assert_eq!(
        status,
        Some(serde_json::json!("connected")),
        "the caller was cut off\n{story}"
    );
    eprintln!(
        "browser agent: agent heard {agent_heard:.3}, caller heard {caller_heard:.3}, then the IVR {ivr_again:.3}; {:.1} s",
        started.elapsed().as_secs_f32()
    );
}

/// A SIP caller (sipp) who says "human" is offered to ann in the console, who accepts and
/// hears them, then hangs up: the caller is back with the IVR (sipp fails on a BYE).
#[test]
fn a_sip_caller_reaches_a_browser_agent() {
    let test = "a_sip_caller_reaches_a_browser_agent";
    let Some(_running) = browser_test(test, true) else {
        return;
    };
    let ports = Ports::claim(9);
    let dir = tempdir("webrtc-sip-to-browser-agent");
    let d = dir.path();
    let server = Server::start(ports, d, &[]);
    server.add_user("ann", "agent", "ann-password-1");
    // Chromium's fake microphone needs a file: silence (the agent speaks a tone anyway).
    let quiet = d.join("quiet.wav");
    silence_wav(&quiet, 1.0);
    let mic = mic_48k(d, &quiet);
    let audio = console_caller_audio(d);
    let pcmu = audio.with_extension("pcmu");

    // The console first (so the agent is there), then the caller.
    let mut desk = start_desk(d, ports.http(), &mic, false, 7, 3);
    let ready = eventually(Duration::from_secs(30), || {
        std::fs::read_to_string(d.join("desk.jsonl")).is_ok_and(|t| t.contains("console_ready"))
    });
    assert!(
        ready,
        "the console never came up\n{}",
        desk_report(d, &server).1
    );
    let mut caller = speaking_caller(d, ports, ports.sip_addr(), &pcmu, 40_000, "u1");
    let code = desk.wait(Duration::from_secs(120));
    let (report, story) = desk_report(d, &server);
    assert_eq!(code, Some(0), "the console failed\n{story}");
    assert_offer_shows_the_caller(&report, &story, &server, test);
    let connected = event_ms(&report, "agent_connected");
    let hung_up = event_ms(&report, "agent_hung_up");
    let agent_heard = energy_between(&report, "agent", connected + 500, hung_up);
    assert!(
        agent_heard > 0.01,
        "the agent heard silence ({agent_heard})\n{story}"
    );
    assert!(
        server
            .log
            .wait_for(&["play", "prompt=after_agent"], Duration::from_secs(5))
            .is_some(),
        "the IVR did not take the caller back\n{story}"
    );
    let caller_code = caller.proc.wait(Duration::from_secs(60));
    assert_sipp_ok("caller", caller_code, &server, &[&caller]);
}

/// A caller keys 0 (to a person) while nobody is logged in, accepts the callback Humanline
/// offers (1) and hangs up. Then ann, a supervisor, opens the console: she sees the promise in
/// its callback table, and the dialer offers the callback to her there, with its reason,
/// before it calls anyone; she accepts; Humanline calls the customer through the trunk and
/// she hears them (their phone's tone, in Chromium's audio statistics); she hangs up; the
/// customer is back with the IVR (never hung up on) and the promise is completed.
#[test]
fn a_callback_is_offered_to_a_browser_agent_who_answers_it_in_the_console() {
    let test = "a_callback_is_offered_to_a_browser_agent_who_answers_it_in_the_console";
    let Some(_running) = browser_test(test, false) else {
        return;
    };
    let ports = Ports::claim(5);
    let dir = tempdir("webrtc-callback-browser-agent");
    let d = dir.path();
    let customer_ports = ports.spare_sipp();
    let config = d.join("server.toml");
    std::fs::write(
        &config,
        format!("trunk = \"sip:trunk@{LOCALHOST}:{}\"\n", customer_ports.sip),
    )
    .expect("config");
    let server = Server::start_with(
        ports,
        d,
        &[],
        &["--config".into(), config.display().to_string()],
    );
    server.add_user("ann", "supervisor", "ann-password-1");

    // Nobody is there: the caller is offered a callback and takes it.
    let ear = RtpListener::start(ports.base + 40, Duration::from_secs(60));
    let mut caller = Sipp::start(
        d,
        SippRun {
            name: "caller",
            scenario: "caller_keys.xml",
            vars: &[
                ("CALLER", "+15550124".into()),
                ("RTP_PORT", ear.port.to_string()),
                ("KEY1", "0".into()),
                ("KEY1_AFTER_MS", "1000".into()),
                ("KEY2", "1".into()),
                ("KEY2_AFTER_MS", "5000".into()),
                ("HOLD_MS", "3000".into()),
            ],
            remote: Some(ports.sip_addr()),
            transport: "u1",
            ports: ports.caller_sipp(),
            timeout: Duration::from_secs(40),
            calls: 1,
        },
    );
    let promised = server
        .log
        .wait_for(&["callback promised"], Duration::from_secs(30));
    assert!(
        promised.is_some(),
        "no callback was promised\n{}",
        context(&server, &[&caller])
    );
    let code = caller.proc.wait(Duration::from_secs(30));
    assert_sipp_ok("caller", code, &server, &[&caller]);

    // The customer's phone, then ann's console.
    let tone = d.join("customer-tone.pcmu");
    let made = Command::new("sox")
        .args([
            "-n", "-r", "8000", "-c", "1", "-t", "raw", "-e", "mu-law", "-b", "8",
        ])
        .arg(&tone)
        .args(["synth", "20", "sine", "440", "vol", "0.5"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(made, "sox could not make the customer's tone");
    let mut customer = Sipp::start(
        d,
        SippRun {
            name: "customer",
            scenario: "customer_answers.xml",
            vars: &[
                ("AUDIO", tone.display().to_string()),
                ("TALK_MS", "14000".into()),
            ],
            remote: None,
            transport: "u1",
            ports: customer_ports,
            timeout: Duration::from_secs(90),
            calls: 1,
        },
    );
    let quiet = d.join("quiet.wav");
    silence_wav(&quiet, 1.0);
    let mic = mic_48k(d, &quiet);
    let mut desk = start_desk_with(d, ports.http(), &mic, false, 6, 2, true);
    let code = desk.wait(Duration::from_secs(120));
    let (report, story) = desk_report(d, &server);
    let story = format!("{story}\n{}", customer.report());
    assert_eq!(code, Some(0), "the console failed\n{story}");

    // The supervisor's console lists the promise before it is kept.
    let tables =
        event(&report, "callbacks").unwrap_or_else(|| panic!("no callback tables\n{story}"));
    assert_eq!(tables["shown"], true, "{tables}\n{story}");
    let listed = tables["promised"].as_array().is_some_and(|rows| {
        rows.iter()
            .any(|r| r.as_str().is_some_and(|r| r.contains("+15550124")))
    });
    assert!(
        listed,
        "the promise is not in the console: {tables}\n{story}"
    );

    // Offered in the console as a callback, accepted there, then the customer called.
    let offer = event(&report, "offer").unwrap_or_else(|| panic!("no offer shown\n{story}"));
    assert!(
        offer["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("callback")),
        "{offer}\n{story}"
    );
    assert!(
        server
            .log
            .find(&["agent accepted the callback in the console"])
            .is_some(),
        "{story}"
    );
    let connected = event_ms(&report, "agent_connected");
    let hung_up = event_ms(&report, "agent_hung_up");
    let heard = energy_between(&report, "agent", connected + 1000, hung_up);
    assert!(
        heard > 0.01,
        "the agent did not hear the customer ({heard})\n{story}"
    );
    // She hung up first: the customer is back with the IVR, and hangs up themselves.
    assert!(
        server
            .log
            .wait_for(&["prompt=after_agent"], Duration::from_secs(5))
            .is_some(),
        "the customer was not taken back to the IVR\n{story}"
    );
    let code = customer.proc.wait(Duration::from_secs(40));
    assert_sipp_ok("customer", code, &server, &[&customer]);
    let done = eventually(Duration::from_secs(10), || {
        let (_, body) = server.api_get("/api/callbacks?state=completed");
        body.contains("+15550124")
    });
    assert!(done, "the promise was not completed\n{}", server.story());
    eprintln!("callback in the console: the agent heard the customer at {heard:.3}");
}
