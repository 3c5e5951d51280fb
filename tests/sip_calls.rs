//! End to end with real SIP peers: `humanline serve` (the release binary) answers sipp and
//! baresip callers on 127.0.0.1, hears them (Whisper), and rings sipp or baresip agents.
//!
//! Each test owns a port block (see `common::Ports`), starts its own server and peers, and
//! kills every child process on drop, also on panic. Tests whose routing depends on speech
//! recognition take a lock so that only one decodes at a time. Without sipp, baresip,
//! espeak-ng, sox or the model the tests print SKIP and pass, unless `CI=true`.
//!
//! Run: `cargo test --release --test sip_calls -- --test-threads=2`.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

fn route_line(server: &Server) -> String {
    server
        .log
        .find(&["route to a person"])
        .map(|(_, l)| l)
        .unwrap_or_default()
}

/// Checks the route reason of a call routed by what the caller said, and returns the route
/// line when it was `want`. When recognition fell behind real time, Humanline routes with
/// reason speech_unavailable instead (by design: the caller still reaches a person at once);
/// that is accepted, with a NOTE, only when the server logged it was behind, and `None` says
/// the words were not what routed (so the caller's words cannot be asserted on).
fn assert_speech_route(server: &Server, want: &str, peers: &[&Sipp]) -> Option<String> {
    let route = route_line(server);
    let reason = route
        .split("reason=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default();
    if !routed_on_words_or_behind(server, "sip_calls", reason, want) {
        panic!(
            "routed, but not for {want} (and recognition never fell behind): {route}\n{}",
            context(server, peers)
        );
    }
    (reason == want).then_some(route)
}

// --- 1 ------------------------------------------------------------------------------------------

/// "I want to talk to a human": the agent (baresip) is rung with the reason and the
/// transcript in the INVITE, answers, and hears the caller's next sentences.
#[test]
fn asking_for_a_human_rings_an_agent_who_hears_the_caller() {
    if !peers_available("asking_for_a_human_rings_an_agent_who_hears_the_caller") {
        return;
    }
    let _speech = speech_lock();
    let started = Instant::now();
    let ports = Ports::claim(1);
    let dir = tempdir("keyword");
    let d = dir.path();

    let agent_play = d.join("agent_says.wav");
    silence_wav(&agent_play, 90.0);
    let agent = Baresip::start(
        d,
        "agent",
        "agent",
        ports.baresip(),
        &agent_play,
        Duration::from_secs(85),
    );
    let server = Server::start(ports, d, &[agent.uri()]);

    let (audio, secs) = caller_audio(
        d,
        "caller",
        &[
            Part::Say("I want to talk to a human"),
            Part::Silence(1.5),
            Part::Say("my account number is four five six"),
            Part::Silence(0.7),
            Part::Say("I am calling about my last bill"),
            Part::Silence(0.7),
            Part::Say("it was much higher than usual"),
            Part::Silence(0.7),
            Part::Say("can you please tell me why"),
            Part::Silence(2.0),
        ],
    );
    let hold_ms = (secs * 1000.0) as u64 + 2000;
    let mut caller = speaking_caller(d, ports, ports.sip_addr(), &audio, hold_ms, "u1");

    let bridged = server
        .log
        .wait_for(&["agent answered; bridged"], Duration::from_secs(45));
    assert!(
        bridged.is_some(),
        "the agent was never bridged\n{}",
        context(&server, &[&caller])
    );
    let route = assert_speech_route(&server, "keyword", &[&caller]);

    let code = caller
        .proc
        .wait(Duration::from_millis(hold_ms) + Duration::from_secs(30));
    assert_sipp_ok("caller", code, &server, &[&caller]);

    // The caller hung up: Humanline hangs up the agent's leg, baresip closes its recording.
    assert!(
        agent.wait_trace("terminated", Duration::from_secs(15)),
        "the agent's call did not end after the caller hung up:\n{}\n{}",
        tail(&agent.trace_text(), 40),
        context(&server, &[&caller])
    );

    let trace = agent.trace_text();
    let invite = first_request(&trace, "INVITE")
        .unwrap_or_else(|| panic!("no INVITE in the agent's trace:\n{trace}"));
    // The agent is told why the caller is there, and (routed on the words) what they said.
    let reason = if route.is_some() {
        "keyword"
    } else {
        "speech_unavailable"
    };
    assert_eq!(
        header(&invite, "X-Humanline-Reason").as_deref(),
        Some(reason),
        "agent INVITE:\n{invite}"
    );
    let transcript = header(&invite, "X-Humanline-Transcript").unwrap_or_default();
    assert!(
        route.is_none() || transcript.to_lowercase().contains("human"),
        "transcript header {transcript:?}\n{invite}"
    );
    assert_eq!(
        header(&invite, "X-Humanline-Language").as_deref(),
        Some("en"),
        "agent INVITE:\n{invite}"
    );

    let heard = agent
        .heard()
        .unwrap_or_else(|| panic!("baresip recorded nothing in {}", agent.rec.display()));
    let (samples, rate) = read_wav(&heard);
    let env = envelope(&samples, rate, 0.5);
    let loud = env.iter().filter(|r| **r > 0.01).count();
    let peak = env.iter().cloned().fold(0.0f32, f32::max);
    assert!(
        peak > 0.02 && loud >= 2,
        "the agent heard (almost) silence: peak RMS {peak:.4}, {loud} loud half-seconds\n{}\n{}",
        describe_envelope(&env, 0.5),
        context(&server, &[&caller])
    );

    let metrics = server.metrics();
    assert_eq!(
        metric(
            &metrics,
            &format!("humanline_routes_total{{reason=\"{reason}\"}}")
        ),
        Some(1.0),
        "{metrics}"
    );
    eprintln!(
        "keyword: routed ({route:?}), agent heard {:.1} s with peak RMS {peak:.3}; {:.1} s",
        samples.len() as f32 / rate as f32,
        started.elapsed().as_secs_f32()
    );
}

// --- 2 ------------------------------------------------------------------------------------------

/// "My internet is down", the IVR's answer, and the same again: the second time goes to a
/// person, with reason repetition.
#[test]
fn a_repeated_request_reaches_an_agent() {
    if !peers_available("a_repeated_request_reaches_an_agent") {
        return;
    }
    let _speech = speech_lock();
    let started = Instant::now();
    let ports = Ports::claim(2);
    let dir = tempdir("repetition");
    let d = dir.path();

    let mut agent = answering_agent(d, ports, "u1", Duration::from_secs(80));
    let server = Server::start(ports, d, &[agent_uri(ports.agent_sipp().sip)]);
    let (audio, secs) = caller_audio(
        d,
        "caller",
        &[
            Part::Say("my internet is down"),
            Part::Silence(5.0),
            Part::Say("my internet is down"),
            Part::Silence(6.0),
        ],
    );
    let hold_ms = (secs * 1000.0) as u64 + 1000;
    let mut caller = speaking_caller(d, ports, ports.sip_addr(), &audio, hold_ms, "u1");

    let bridged = server
        .log
        .wait_for(&["agent answered; bridged"], Duration::from_secs(45));
    assert!(
        bridged.is_some(),
        "the agent was never bridged\n{}",
        context(&server, &[&caller, &agent])
    );
    let route = assert_speech_route(&server, "repetition", &[&caller, &agent]);
    // The first request got an answer from the IVR (the topic's, or a "say it another way" if
    // it was misheard) before the second went to a person.
    let (t_route, _) = server.log.find(&["route to a person"]).expect("route line");
    let answered_first = server
        .log
        .find_all(&["play", "prompt="])
        .into_iter()
        .any(|(t, l)| {
            t <= t_route
                && (l.contains("prompt=topic_internet") || l.contains("prompt=reprompt_no_match"))
        });
    assert!(
        route.is_none() || answered_first,
        "the IVR did not answer the first request before routing\n{}",
        context(&server, &[&caller])
    );

    let code = caller
        .proc
        .wait(Duration::from_millis(hold_ms) + Duration::from_secs(30));
    assert_sipp_ok("caller", code, &server, &[&caller, &agent]);
    let code = agent.proc.wait(Duration::from_secs(15));
    assert_sipp_ok("agent", code, &server, &[&caller, &agent]);

    let invite = agent
        .received_request("INVITE")
        .unwrap_or_else(|| panic!("agent saw no INVITE\n{}", agent.report()));
    let reason = if route.is_some() {
        "repetition"
    } else {
        "speech_unavailable"
    };
    assert_eq!(
        header(&invite, "X-Humanline-Reason").as_deref(),
        Some(reason),
        "agent INVITE:\n{invite}"
    );
    let transcript = header(&invite, "X-Humanline-Transcript")
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        route.is_none() || transcript.contains("internet"),
        "transcript header {transcript:?}"
    );
    let metrics = server.metrics();
    assert_eq!(
        metric(
            &metrics,
            &format!("humanline_routes_total{{reason=\"{reason}\"}}")
        ),
        Some(1.0),
        "{metrics}"
    );
    eprintln!(
        "repetition: {route:?}; transcript {transcript:?}; {:.1} s",
        started.elapsed().as_secs_f32()
    );
}

// --- 3 ------------------------------------------------------------------------------------------

/// Pressing 0 (RFC 4733 telephone-event) goes to a person with reason dtmf.
#[test]
fn dtmf_zero_reaches_an_agent() {
    if !peers_available("dtmf_zero_reaches_an_agent") {
        return;
    }
    let started = Instant::now();
    let ports = Ports::claim(3);
    let dir = tempdir("dtmf");
    let d = dir.path();

    let mut agent = answering_agent(d, ports, "u1", Duration::from_secs(60));
    let server = Server::start(ports, d, &[agent_uri(ports.agent_sipp().sip)]);
    let mut caller = dtmf_caller(d, ports, false, 2500, 8000, "u1");

    let bridged = server
        .log
        .wait_for(&["agent answered; bridged"], Duration::from_secs(30));
    assert!(
        bridged.is_some(),
        "the agent was never bridged\n{}",
        context(&server, &[&caller, &agent])
    );
    let route = route_line(&server);
    assert!(
        route.contains("reason=\"dtmf\""),
        "routed, but not for DTMF: {route}\n{}",
        context(&server, &[&caller, &agent])
    );

    let code = caller.proc.wait(Duration::from_secs(40));
    assert_sipp_ok("caller", code, &server, &[&caller, &agent]);
    let code = agent.proc.wait(Duration::from_secs(15));
    assert_sipp_ok("agent", code, &server, &[&caller, &agent]);

    let invite = agent
        .received_request("INVITE")
        .unwrap_or_else(|| panic!("agent saw no INVITE\n{}", agent.report()));
    assert_eq!(
        header(&invite, "X-Humanline-Reason").as_deref(),
        Some("dtmf"),
        "agent INVITE:\n{invite}"
    );
    assert!(
        header(&invite, "X-Humanline-Transcript").is_some(),
        "no transcript header:\n{invite}"
    );
    let metrics = server.metrics();
    assert_eq!(
        metric(&metrics, "humanline_routes_total{reason=\"dtmf\"}"),
        Some(1.0),
        "{metrics}"
    );
    eprintln!("dtmf: {route}; {:.1} s", started.elapsed().as_secs_f32());
}

// --- 4 ------------------------------------------------------------------------------------------

/// The only agent cannot be reached (nothing listens on its port): the caller asks for a
/// person and stays on the line for a minute, never hung up on, and the server stays healthy.
#[test]
fn with_no_agent_reachable_the_caller_is_never_hung_up_on() {
    if !peers_available("with_no_agent_reachable_the_caller_is_never_hung_up_on") {
        return;
    }
    let started = Instant::now();
    let ports = Ports::claim(4);
    let dir = tempdir("noagent");
    let d = dir.path();

    let dead_agent = agent_uri(ports.dead());
    let mut server = Server::start(ports, d, std::slice::from_ref(&dead_agent));
    // sipp fails the call on a BYE from the server; it hangs up itself after 2 + 60 s.
    let mut caller = dtmf_caller(d, ports, false, 2000, 60_000, "u1");

    let rang = server
        .log
        .wait_for(&["ringing agent", &dead_agent], Duration::from_secs(20));
    assert!(
        rang.is_some(),
        "the dead agent was never tried\n{}",
        context(&server, &[&caller])
    );
    let failed = server
        .log
        // "agent did not take the call" (SIP failure) or "agent did not answer in time"
        // (Humanline's own ring deadline, for an agent that never even says ringing).
        .wait_for(&["agent did not"], Duration::from_secs(40))
        .or_else(|| server.log.find(&["could not ring agent"]));
    assert!(
        failed.is_some(),
        "the dead agent's failure was never noticed\n{}",
        context(&server, &[&caller])
    );

    let code = caller.proc.wait(Duration::from_secs(80));
    assert_sipp_ok("caller", code, &server, &[&caller]);
    let held = started.elapsed();
    assert!(
        held >= Duration::from_secs(60),
        "the call ended after only {held:?}"
    );
    assert!(
        !caller.messages().contains("BYE sip:+15550124"),
        "the server sent the caller a BYE:\n{}",
        caller.report()
    );

    server.assert_alive();
    let (status, body) = server.get("/healthz");
    assert_eq!(
        status,
        200,
        "/healthz after the call: {body}\n{}",
        server.story()
    );
    let metrics = server.metrics();
    assert_eq!(
        metric(&metrics, "humanline_routes_total{reason=\"dtmf\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        server.log.find(&["agent answered"]).is_none(),
        "a dead agent answered?\n{}",
        server.story()
    );
    let attempts = server.log.find_all(&["ringing agent"]).len();
    eprintln!(
        "no agent: caller held {:.1} s without a BYE; {attempts} ring attempt(s)",
        held.as_secs_f32()
    );
}

// --- 5 ------------------------------------------------------------------------------------------

/// The agent hangs up: the caller (baresip, recording what it hears) is back with the IVR and
/// hears its after-agent prompt; Humanline never hangs up on the caller.
#[test]
fn when_the_agent_hangs_up_the_caller_hears_the_ivr_again() {
    if !peers_available("when_the_agent_hangs_up_the_caller_hears_the_ivr_again") {
        return;
    }
    let started = Instant::now();
    let ports = Ports::claim(5);
    let dir = tempdir("agentleft");
    let d = dir.path();

    let mut agent = Sipp::start(
        d,
        SippRun {
            name: "agent",
            scenario: "agent_hangs_up.xml",
            vars: &[("BYE_AFTER_MS", "3000".into())],
            remote: None,
            transport: "u1",
            ports: ports.agent_sipp(),
            timeout: Duration::from_secs(60),
            calls: 1,
        },
    );
    let server = Server::start(ports, d, &[agent_uri(ports.agent_sipp().sip)]);
    let caller_play = d.join("caller_says.wav");
    silence_wav(&caller_play, 80.0);
    let phone = Baresip::start(
        d,
        "caller",
        "caller",
        ports.baresip(),
        &caller_play,
        Duration::from_secs(75),
    );
    let mut ctrl = phone.control();
    ctrl.command("dial", &format!("sip:ivr@{}", ports.sip_addr()));
    let (t0, _) = ctrl
        .wait_event("CALL_ESTABLISHED", Duration::from_secs(15))
        .unwrap_or_else(|| {
            panic!(
                "the call was not established:\n{}\n{}",
                ctrl.describe(),
                server.story()
            )
        });
    std::thread::sleep(Duration::from_millis(2500));
    ctrl.command("sndcode", "0");
    std::thread::sleep(Duration::from_millis(250));
    ctrl.command("sndcode", "");

    let (t_bridged, _) = server
        .log
        .wait_for(&["agent answered; bridged"], Duration::from_secs(20))
        .unwrap_or_else(|| {
            panic!(
                "the agent was never bridged\n{}",
                context(&server, &[&agent])
            )
        });
    let (t_left, _) = server
        .log
        .wait_for(
            &["agent left; caller back with the IVR"],
            Duration::from_secs(20),
        )
        .unwrap_or_else(|| {
            panic!(
                "the agent's hang-up was not noticed\n{}",
                context(&server, &[&agent])
            )
        });
    let code = agent.proc.wait(Duration::from_secs(10));
    assert_sipp_ok("agent", code, &server, &[&agent]);

    // Stay on the line while the IVR speaks again, then hang up ourselves.
    std::thread::sleep(Duration::from_secs(7));
    assert!(
        ctrl.event("CALL_CLOSED").is_none(),
        "the caller's call was closed by the server:\n{}",
        ctrl.describe()
    );
    let trace = phone.trace_text();
    assert!(
        !trace.contains("BYE sip:"),
        "a BYE was exchanged before the caller hung up:\n{}",
        tail(&trace, 60)
    );
    ctrl.command("hangup", "");
    ctrl.wait_event("CALL_CLOSED", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("hangup did not close the call:\n{}", ctrl.describe()));
    assert!(
        server
            .log
            .wait_for(&["caller hung up"], Duration::from_secs(10))
            .is_some(),
        "the server did not see the caller hang up\n{}",
        server.story()
    );

    let (t_prompt, prompt) = server
        .log
        .find(&["play", "prompt=after_agent"])
        .unwrap_or_else(|| panic!("no after-agent prompt played\n{}", server.story()));
    assert!(
        t_prompt >= t_left,
        "after_agent played before the agent left: {prompt}"
    );

    let heard = phone
        .heard()
        .unwrap_or_else(|| panic!("baresip recorded nothing in {}", phone.rec.display()));
    let (samples, rate) = read_wav(&heard);
    let env = envelope(&samples, rate, 0.5);
    let at = |t: Instant| t.saturating_duration_since(t0).as_secs_f32();
    let (bridged, left) = (at(t_bridged), at(t_left));
    let why = format!(
        "bridged at {bridged:.2} s, agent left at {left:.2} s (call time); what the caller heard:\n{}\n{}",
        describe_envelope(&env, 0.5),
        server.story()
    );
    // While bridged the (silent) agent is all the caller hears...
    if left - bridged > 1.5 {
        let quiet = rms(&samples, rate, bridged + 0.6, left - bridged - 1.0);
        assert!(
            quiet < 0.005,
            "the caller heard sound while bridged to a silent agent (RMS {quiet:.4}); {why}"
        );
    }
    // ...and after the agent's BYE, the IVR speaks again.
    let after = rms(&samples, rate, left + 0.3, 2.7);
    assert!(
        after > 0.02,
        "silence after the agent left (RMS {after:.4}); {why}"
    );
    eprintln!(
        "agent left: bridged {bridged:.1} s, left {left:.1} s, after-agent RMS {after:.3}; {:.1} s",
        started.elapsed().as_secs_f32()
    );
}

// --- 6 ------------------------------------------------------------------------------------------

/// SIP over TCP, both legs: the caller (sipp -t t1) presses 0 as SIP INFO, the agent is
/// reached at a `;transport=tcp` URI (sipp -t t1).
#[test]
fn tcp_callers_and_agents_work_too() {
    if !peers_available("tcp_callers_and_agents_work_too") {
        return;
    }
    let started = Instant::now();
    let ports = Ports::claim(6);
    let dir = tempdir("tcp");
    let d = dir.path();

    let mut agent = answering_agent(d, ports, "t1", Duration::from_secs(60));
    let server = Server::start(
        ports,
        d,
        &[format!(
            "{};transport=tcp",
            agent_uri(ports.agent_sipp().sip)
        )],
    );
    let mut caller = dtmf_caller(d, ports, true, 2500, 8000, "t1");

    let bridged = server
        .log
        .wait_for(&["agent answered; bridged"], Duration::from_secs(30));
    assert!(
        bridged.is_some(),
        "the agent was never bridged\n{}",
        context(&server, &[&caller, &agent])
    );
    let route = route_line(&server);
    assert!(
        route.contains("reason=\"dtmf\""),
        "routed, but not for DTMF: {route}\n{}",
        context(&server, &[&caller, &agent])
    );
    assert!(
        server
            .log
            .find(&["incoming call", "transport=tcp"])
            .is_some(),
        "the call did not arrive over TCP\n{}",
        server.story()
    );

    let code = caller.proc.wait(Duration::from_secs(40));
    assert_sipp_ok("caller", code, &server, &[&caller, &agent]);
    let code = agent.proc.wait(Duration::from_secs(15));
    assert_sipp_ok("agent", code, &server, &[&caller, &agent]);

    let messages = caller.messages();
    let info_ok = messages
        .split("\n----")
        .any(|m| m.contains("SIP/2.0 200") && m.contains("CSeq: 2 INFO"));
    assert!(
        info_ok,
        "the INFO was not answered 200\n{}",
        caller.report()
    );
    let invite = agent
        .received_request("INVITE")
        .unwrap_or_else(|| panic!("agent saw no INVITE\n{}", agent.report()));
    assert!(
        header(&invite, "Via").is_some_and(|v| v.to_uppercase().starts_with("SIP/2.0/TCP")),
        "agent INVITE not over TCP:\n{invite}"
    );
    assert_eq!(
        header(&invite, "X-Humanline-Reason").as_deref(),
        Some("dtmf"),
        "agent INVITE:\n{invite}"
    );
    eprintln!("tcp: {route}; {:.1} s", started.elapsed().as_secs_f32());
}

// --- 7 ------------------------------------------------------------------------------------------

fn invite_text(
    port: u16,
    i: usize,
    via: &str,
    extra: &str,
    content_length: &str,
    body: &str,
) -> String {
    format!(
        "INVITE sip:ivr@127.0.0.1:{port} SIP/2.0\r\n{via}From: <sip:junk@127.0.0.1:9>;tag=j{i}\r\nTo: <sip:ivr@127.0.0.1:{port}>\r\nCall-ID: junk-{i}@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: <sip:junk@127.0.0.1:9>\r\nMax-Forwards: 70\r\n{extra}Content-Type: application/sdp\r\nContent-Length: {content_length}\r\n\r\n{body}"
    )
}

/// One malformed datagram: garbage, cut-off INVITEs, INVITEs with broken headers, requests and
/// responses for dialogs that do not exist. None of them is a valid new call. (Two kinds that
/// Humanline wrongly answers are left out here and shown in
/// `invites_with_a_bad_version_or_header_line_are_refused`.)
fn junk_datagram(rng: &mut impair::SeededRng, port: u16, i: usize) -> Vec<u8> {
    let via = format!("Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKjunk{i}\r\n");
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n";
    let whole = invite_text(port, i, &via, "", &sdp.len().to_string(), sdp);
    match i % 16 {
        0 => {
            let n = 1 + rng.below(1400);
            rng.bytes(n)
        }
        1 => {
            // cut off inside the headers
            let cut = 10 + rng.below(whole.find("\r\n\r\n").unwrap_or(whole.len()) - 10);
            whole.as_bytes()[..cut].to_vec()
        }
        2 => invite_text(port, i, &via, "", "99999", sdp).into_bytes(),
        3 => invite_text(port, i, &via, "", "-7", sdp).into_bytes(),
        4 => invite_text(port, i, "", "", &sdp.len().to_string(), sdp).into_bytes(), // no Via
        5 => whole.replace(&format!("Call-ID: junk-{i}@127.0.0.1\r\n"), "").into_bytes(), // no Call-ID
        6 => whole.replace("CSeq: 1 INVITE", "CSeq: one INVITE").into_bytes(),
        7 => whole.replace("To: <sip:ivr", "To: <<<sip:::ivr").replace("From: <sip:junk@127.0.0.1:9>", "From: \"unterminated <sip:").into_bytes(),
        8 => {
            let mut b = whole.into_bytes();
            for _ in 0..20 {
                let at = rng.below(b.len());
                b[at] = rng.next_u64() as u8; // NULs, non-UTF-8, broken CRLFs
            }
            b
        }
        9 => invite_text(port, i, &via, &format!("X-Huge: {}\r\n", "A".repeat(8000)), &sdp.len().to_string(), sdp).into_bytes(),
        10 => format!("INVITE nonsense SIP/2.0\r\n{via}Call-ID: junk-{i}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").into_bytes(),
        11 => whole.replacen(" SIP/2.0\r\n", "\r\n", 1).into_bytes(), // no version
        12 => format!("SIP/2.0 200 OK\r\n{via}From: <sip:a@b>;tag=x\r\nTo: <sip:c@d>;tag=y\r\nCall-ID: nobody-{i}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").into_bytes(),
        13 => format!("BYE sip:ivr@127.0.0.1:{port} SIP/2.0\r\n{via}From: <sip:a@b>;tag=x\r\nTo: <sip:c@d>;tag=y\r\nCall-ID: nobody-{i}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n").into_bytes(),
        14 => "\r\n\r\n".repeat(1 + rng.below(50)).into_bytes(),
        _ => whole.replace("CSeq: 1 INVITE", "CSeq: 1 BYE").into_bytes(), // CSeq method != request method
    }
}

/// A burst of malformed SIP while a good caller presses 0 and reaches the agent: the good call
/// completes and /healthz stays 200 throughout.
#[test]
fn a_burst_of_malformed_sip_does_not_disturb_a_good_call() {
    if !peers_available("a_burst_of_malformed_sip_does_not_disturb_a_good_call") {
        return;
    }
    let started = Instant::now();
    let ports = Ports::claim(7);
    let dir = tempdir("junk");
    let d = dir.path();

    let mut agent = answering_agent(d, ports, "u1", Duration::from_secs(60));
    let mut server = Server::start(ports, d, &[agent_uri(ports.agent_sipp().sip)]);
    let sip_port = ports.sip();

    let burst = std::thread::spawn(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("junk socket");
        sock.set_nonblocking(true).ok();
        let mut rng = impair::SeededRng::new(0x9E37_79B9_7F4A_7C15);
        let mut sent = 0usize;
        for i in 0..400 {
            let d = junk_datagram(&mut rng, sip_port, i);
            if sock.send_to(&d, ("127.0.0.1", sip_port)).is_ok() {
                sent += 1;
            }
            // drain whatever the server answers (400s and the like)
            let mut buf = [0u8; 2048];
            while sock.recv_from(&mut buf).is_ok() {}
            if i % 40 == 39 {
                // the same over TCP: a connection that writes junk and goes away
                if let Ok(mut s) = TcpStream::connect(("127.0.0.1", sip_port)) {
                    let _ = s.write_all(&junk_datagram(&mut rng, sip_port, i + 1));
                    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
                    let _ = s.read(&mut buf);
                }
            }
            std::thread::sleep(Duration::from_millis(12));
        }
        sent
    });
    let mut caller = dtmf_caller(d, ports, false, 3000, 8000, "u1");

    // /healthz during the burst
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(700));
        let (status, body) = server.get("/healthz");
        assert_eq!(
            status,
            200,
            "/healthz during the burst: {body}\n{}",
            server.story()
        );
    }
    let sent = burst.join().expect("burst thread");
    assert!(sent >= 300, "only {sent} junk datagrams sent");

    let bridged = server
        .log
        .wait_for(&["agent answered; bridged"], Duration::from_secs(30));
    assert!(
        bridged.is_some(),
        "the good call never reached the agent\n{}",
        context(&server, &[&caller, &agent])
    );
    let route = route_line(&server);
    assert!(
        route.contains("reason=\"dtmf\""),
        "routed, but not for DTMF: {route}\n{}",
        context(&server, &[&caller, &agent])
    );
    let code = caller.proc.wait(Duration::from_secs(40));
    assert_sipp_ok("caller", code, &server, &[&caller, &agent]);
    let code = agent.proc.wait(Duration::from_secs(15));
    assert_sipp_ok("agent", code, &server, &[&caller, &agent]);

    server.assert_alive();
    let (status, body) = server.get("/healthz");
    assert_eq!(
        status,
        200,
        "/healthz after the burst: {body}\n{}",
        server.story()
    );
    let metrics = server.metrics();
    assert_eq!(
        metric(&metrics, "humanline_calls_total"),
        Some(1.0),
        "junk became calls:\n{metrics}\n{}",
        server.story()
    );
    eprintln!(
        "junk: {sent} malformed datagrams, the good call routed ({route}); {:.1} s",
        started.elapsed().as_secs_f32()
    );
}

// --- known product bugs (reproducers, ignored until fixed) ---------------------------------------

/// Sends one datagram to the server's SIP port and collects the first lines of what comes back
/// within `wait`.
fn exchange(port: u16, msg: &str, wait: Duration) -> Vec<String> {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("socket");
    sock.set_read_timeout(Some(Duration::from_millis(200))).ok();
    sock.send_to(msg.as_bytes(), ("127.0.0.1", port))
        .expect("send");
    let deadline = Instant::now() + wait;
    let mut replies = Vec::new();
    let mut buf = [0u8; 65535];
    while Instant::now() < deadline {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            replies.push(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            );
        }
    }
    replies
}

/// An INVITE with an unknown SIP version must get 505, and one with a header line that has no
/// colon 400 — Humanline answers both with 200 OK and starts a call (the 505 case even
/// replies "SIP/7.3 200 OK").
#[test]
fn invites_with_a_bad_version_or_header_line_are_refused() {
    if !peers_available("invites_with_a_bad_version_or_header_line_are_refused") {
        return;
    }
    let ports = Ports::claim(8);
    let dir = tempdir("badinvite");
    let server = Server::start(ports, dir.path(), &[]);
    let port = ports.sip();
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n";
    let whole = |i: usize| {
        invite_text(
            port,
            i,
            &format!("Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKbad{i}\r\n"),
            "",
            &sdp.len().to_string(),
            sdp,
        )
    };
    let version = exchange(
        port,
        &whole(1).replacen("SIP/2.0", "SIP/7.3", 1),
        Duration::from_secs(1),
    );
    let colon = exchange(
        port,
        &whole(2).replace(
            "Content-Type: application/sdp\r\n",
            "Content-Type: application/sdp\r\nBroken header line without a colon\r\n",
        ),
        Duration::from_secs(1),
    );
    let answered: Vec<String> = server
        .log
        .find_all(&["incoming call"])
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert!(
        answered.is_empty()
            && version.iter().any(|r| r.contains(" 505 "))
            && colon.iter().any(|r| r.contains(" 400 ")),
        "SIP/7.3 INVITE got {version:?} (want 505), colon-less header got {colon:?} (want 400); calls started: {answered:?}"
    );
}

/// An INVITE that is never acknowledged (spoofable over UDP: no ACK, no RTP) must not lead to
/// a callback promise. Humanline answers it, plays the IVR to the SDP address for 32 s, routes
/// it after two no-inputs, and when "the caller's media stops" stores an automatic callback
/// to the From number — which it will dial once a trunk is configured.
#[test]
fn an_invite_never_acknowledged_promises_no_callback() {
    if !peers_available("an_invite_never_acknowledged_promises_no_callback") {
        return;
    }
    let ports = Ports::claim(9);
    let dir = tempdir("noack");
    let server = Server::start(ports, dir.path(), &[]);
    let port = ports.sip();
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n";
    let invite = invite_text(
        port,
        1,
        "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKnoack1\r\n",
        "",
        &sdp.len().to_string(),
        sdp,
    )
    .replace("sip:junk@", "sip:+15550199@");
    exchange(port, &invite, Duration::from_millis(500));
    let ended = server
        .log
        .wait_for(&["no ACK for our 200 OK"], Duration::from_secs(45));
    std::thread::sleep(Duration::from_secs(1));
    let promised = metric(&server.metrics(), "humanline_callbacks_promised_total");
    assert!(
        ended.is_some(),
        "the unacknowledged call did not end\n{}",
        server.story()
    );
    assert_eq!(
        promised,
        Some(0.0),
        "a callback was promised for a call never acknowledged\n{}",
        server.story()
    );
}

/// A Dutch caller who dials the Dutch line (sip:nl@...) and asks for a person reaches an
/// agent, with the default set-up's speech: Dutch heard by the multilingual base model in Dutch
/// with the Dutch prompt (no `--model`). The caller asks for "een medewerker" and then "iemand":
/// free transcription of espeak-ng Dutch over RTP often misses "medewerker" (the keyword
/// verifier of issue 10 is meant to fix that), so the test asserts the route, not which ask.
#[test]
fn a_dutch_caller_asking_for_a_medewerker_reaches_an_agent() {
    if !peers_available("a_dutch_caller_asking_for_a_medewerker_reaches_an_agent") {
        return;
    }
    let base = repo().join("models/ggml-base-q8_0.bin");
    if !base.is_file() {
        assert!(
            std::env::var("CI").is_err(),
            "{} missing (scripts/fetch-model.sh)",
            base.display()
        );
        eprintln!("SKIP: {} missing (scripts/fetch-model.sh)", base.display());
        return;
    }
    let _speech = speech_lock();
    let ports = Ports::claim(5);
    let dir = tempdir("dutch");
    let d = dir.path();

    let mut agent = answering_agent(d, ports, "u1", Duration::from_secs(80));
    let server = Server::start_with_language_models(ports, d, &[agent_uri(ports.agent_sipp().sip)]);
    let (audio, secs) = caller_audio(
        d,
        "caller",
        &[
            Part::SayAs("nl", "Ik wil graag een medewerker spreken"),
            Part::Silence(4.0),
            Part::SayAs("nl", "Mag ik iemand spreken"),
            Part::Silence(8.0),
        ],
    );
    // The shared caller scenario, dialling the Dutch line instead of sip:ivr@.
    let scenario = std::fs::read_to_string(sipp_dir().join("caller_speaks.xml"))
        .expect("caller scenario")
        .replace("sip:ivr@", "sip:nl@");
    let scenario_path = d.join("caller_speaks_nl.xml");
    std::fs::write(&scenario_path, scenario).expect("write scenario");
    let hold_ms = (secs * 1000.0) as u64 + 2000;
    let mut caller = Sipp::start(
        d,
        SippRun {
            name: "caller",
            scenario: scenario_path.to_str().expect("utf-8 path"),
            vars: &[
                ("AUDIO", audio.display().to_string()),
                ("HOLD_MS", hold_ms.to_string()),
            ],
            remote: Some(ports.sip_addr()),
            transport: "u1",
            ports: ports.caller_sipp(),
            timeout: Duration::from_millis(hold_ms) + Duration::from_secs(40),
            calls: 1,
        },
    );

    let bridged = server
        .log
        .wait_for(&["agent answered; bridged"], Duration::from_secs(60));
    assert!(
        bridged.is_some(),
        "the agent was never bridged\n{}",
        context(&server, &[&caller, &agent])
    );
    assert!(
        server.log.find(&["dialled language", "nl"]).is_some(),
        "the call did not start in Dutch\n{}",
        context(&server, &[&caller])
    );
    assert!(
        server.log.find(&["code=nl", "language"]).is_some(),
        "the recognizer was never switched to Dutch\n{}",
        context(&server, &[&caller])
    );
    // Routed on the caller's words (the transcript or the keyword verifier: `keyword`), not
    // as `speech_unavailable`, unless recognition fell behind real time.
    let route = route_line(&server);
    assert_speech_route(&server, "keyword", &[&caller, &agent]);
    eprintln!(
        "Dutch SIP route: {route} (loadavg {})",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let code = caller
        .proc
        .wait(Duration::from_millis(hold_ms) + Duration::from_secs(30));
    assert_sipp_ok("caller", code, &server, &[&caller, &agent]);
    let code = agent.proc.wait(Duration::from_secs(15));
    assert_sipp_ok("agent", code, &server, &[&caller, &agent]);
}
