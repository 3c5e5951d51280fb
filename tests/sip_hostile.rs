//! Hostile and broken peers against `humanline serve` (the release binary), with sipp:
//! - a caller whose phone never ACKs the 200 to its re-INVITE keeps the call (issue 11,
//!   defect 4: the SIP stack used to send BYE);
//! - an INVITE flood at several times the setup rate while a real caller asks for a person:
//!   the caller still reaches the agent, the flood is refused with 503 and Retry-After before
//!   any answer, never after.
//!
//! Each test owns a port block and kills its children on drop. Without sipp or the model the
//! tests print SKIP and pass, unless `CI=true`.
//!
//! Run: `cargo test --release --test sip_hostile -- --test-threads=2`.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Requests of `method` in a sipp message trace (sent and received).
fn count_requests(trace: &str, method: &str) -> usize {
    trace
        .lines()
        .filter(|l| l.trim_start().starts_with(&format!("{method} sip:")))
        .count()
}

/// The caller reaches a person, then re-INVITEs and never ACKs the 200. RFC 3261 §14.2 says
/// the UAS SHOULD hang up after 64*T1 (32 s); Humanline keeps the call while the caller's
/// media flows: no BYE reaches the caller, the agent stays bridged until the caller hangs up.
#[test]
fn a_reinvite_never_acked_does_not_end_the_call() {
    if !peers_available("a_reinvite_never_acked_does_not_end_the_call") {
        return;
    }
    let started = Instant::now();
    let ports = Ports::claim(1);
    let dir = tempdir("reinvite-no-ack");
    let d = dir.path();
    let mut agent = answering_agent(d, ports, "u1", Duration::from_secs(75));
    let server = Server::start(ports, d, &[agent_uri(ports.agent_sipp().sip)]);
    let silence = d.join("silence.pcmu");
    silence_pcmu(&silence, 1.0);
    // 40 s after the re-INVITE: the stack's ACK wait (32 s) is over by then
    let hold_ms = 40_000u64;
    let mut caller = Sipp::start(
        d,
        SippRun {
            name: "caller",
            scenario: "caller_reinvite_no_ack.xml",
            vars: &[
                ("AUDIO", silence.display().to_string()),
                ("DTMF_AFTER_MS", "1500".into()),
                ("REINVITE_AFTER_MS", "3000".into()),
                ("HOLD_MS", hold_ms.to_string()),
            ],
            remote: Some(ports.sip_addr()),
            transport: "u1",
            ports: ports.caller_sipp(),
            timeout: Duration::from_secs(70),
            calls: 1,
        },
    );
    assert!(
        server
            .log
            .wait_for(&["agent answered; bridged"], Duration::from_secs(20))
            .is_some(),
        "the caller never reached the agent\n{}",
        context(&server, &[&caller, &agent])
    );
    let code = caller.proc.wait(Duration::from_secs(70));
    let trace = caller.messages();
    assert_eq!(
        code,
        Some(0),
        "the caller's sipp did not complete cleanly (a BYE from Humanline fails it)\n{}",
        context(&server, &[&caller, &agent])
    );
    assert_eq!(
        count_requests(&trace, "BYE"),
        1,
        "a BYE other than the caller's own is in the caller's trace\n{}",
        context(&server, &[&caller, &agent])
    );
    // the stack noticed the missing ACK, and kept the call
    assert!(
        server
            .log
            .find(&["no ACK for the 2xx to a re-INVITE; the dialog stays up"])
            .is_some(),
        "the re-INVITE's ACK timeout never passed (the test proves nothing)\n{}",
        context(&server, &[&caller, &agent])
    );
    assert!(
        server.log.find(&["ending the session"]).is_none(),
        "the stack ended the session\n{}",
        context(&server, &[&caller, &agent])
    );
    // the caller's own BYE ended the call, and with it the agent's leg
    let ended = server
        .log
        .wait_for(&["inbound call ended"], Duration::from_secs(5))
        .map(|(_, l)| l)
        .unwrap_or_default();
    assert!(
        ended.contains("Bye"),
        "the call ended, but not by the caller's BYE: {ended}\n{}",
        context(&server, &[&caller, &agent])
    );
    let agent_code = agent.proc.wait(Duration::from_secs(15));
    assert_eq!(
        agent_code,
        Some(0),
        "the agent's leg did not end cleanly after the caller hung up\n{}",
        context(&server, &[&caller, &agent])
    );
    eprintln!(
        "re-INVITE without ACK: call kept {} s past the re-INVITE; {:.1} s",
        hold_ms / 1000,
        started.elapsed().as_secs_f32()
    );
}

/// An INVITE flood (sipp, 60 calls a second for 3 s: six times the admission rate this
/// server is given) while a real caller asks for a person: the caller reaches the agent for
/// the reason they gave; what the server cannot take is refused with 503 and Retry-After
/// before any answer (the flood's scenario fails a call that gets a 503 after its 200, a 503
/// without Retry-After, or a BYE); the server keeps serving.
#[test]
fn an_invite_flood_is_refused_with_503_while_a_caller_still_reaches_a_person() {
    if !peers_available("an_invite_flood_is_refused_with_503_while_a_caller_still_reaches_a_person")
    {
        return;
    }
    let _speech = speech_lock();
    let started = Instant::now();
    let ports = Ports::claim(2);
    let dir = tempdir("flood");
    let d = dir.path();
    let config = d.join("server.toml");
    std::fs::write(
        &config,
        "[admission]\nmax_calls = 20\nmax_new_calls_per_second = 10\n",
    )
    .expect("config");
    let mut agent = answering_agent(d, ports, "u1", Duration::from_secs(80));
    let mut server = Server::start_with(
        ports,
        d,
        &[agent_uri(ports.agent_sipp().sip)],
        &["--config".into(), config.display().to_string()],
    );
    let (audio, secs) = caller_audio(
        d,
        "caller",
        &[
            Part::Silence(2.5),
            Part::Say("I want to talk to a human"),
            Part::Silence(4.0),
        ],
    );
    let hold_ms = (secs * 1000.0) as u64 + 3000;
    let mut caller = speaking_caller(d, ports, ports.sip_addr(), &audio, hold_ms, "u1");
    assert!(
        server
            .log
            .wait_for(&["answered"], Duration::from_secs(15))
            .is_some(),
        "the real caller was not answered\n{}",
        context(&server, &[&caller])
    );
    // the flood, while the caller is still in the IVR
    let flood_calls = 180;
    let scenario = sipp_dir().join("flood_caller.xml");
    let b = ports.baresip(); // unused by this test: free ports for the flood's sipp
    let mut flood_cmd = std::process::Command::new("sipp");
    flood_cmd
        .arg(ports.sip_addr().to_string())
        .arg("-sf")
        .arg(&scenario)
        .args(["-t", "u1", "-i", LOCALHOST])
        .args(["-p", &b.sip.to_string()])
        .args(["-mp", &b.rtp.0.to_string()])
        .args(["-cp", &b.control.to_string()])
        .args(["-r", "60", "-m", &flood_calls.to_string(), "-l", "100"])
        .args([
            "-nostdin",
            "-timeout",
            "40s",
            "-timeout_error",
            "-trace_err",
            "-trace_msg",
        ])
        .arg("-message_file")
        .arg(d.join("flood.msg"))
        .arg("-error_file")
        .arg(d.join("flood.err"))
        .current_dir(d)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(d.join("flood.stderr")).expect("stderr file"));
    let mut flood = Proc::spawn("flood", &mut flood_cmd);
    let flood_code = flood.wait(Duration::from_secs(45));
    let flood_trace = std::fs::read_to_string(d.join("flood.msg")).unwrap_or_default();
    let flood_report = format!(
        "--- flood stderr ---\n{}\n--- flood errors ---\n{}",
        tail(
            &std::fs::read_to_string(d.join("flood.stderr")).unwrap_or_default(),
            20
        ),
        tail(
            &std::fs::read_to_string(d.join("flood.err")).unwrap_or_default(),
            40
        )
    );
    let refused = flood_trace.matches("SIP/2.0 503 ").count();
    let answered = flood_trace.matches("SIP/2.0 200 OK").count();
    assert_eq!(
        flood_code,
        Some(0),
        "the flood's calls must each be refused before an answer or answered and hung up\n{flood_report}\n{}",
        context(&server, &[&caller])
    );
    assert!(
        refused >= flood_calls / 2,
        "only {refused} of {flood_calls} flood calls were refused with 503\n{flood_report}"
    );
    let retry_after = flood_trace.matches("Retry-After:").count();
    assert!(
        retry_after >= refused,
        "{refused} 503s but {retry_after} Retry-After headers"
    );

    // the real caller: routed to a person for what they said, and never hung up on
    let bridged = server
        .log
        .wait_for(&["agent answered; bridged"], Duration::from_secs(45));
    assert!(
        bridged.is_some(),
        "the caller never reached the agent during the flood\n{}",
        context(&server, &[&caller])
    );
    let route = server
        .log
        .find(&["route to a person"])
        .map(|(_, l)| l)
        .unwrap_or_default();
    assert!(
        route.contains("reason=\"keyword\""),
        "routed, but not for what the caller said: {route}\n{}",
        context(&server, &[&caller])
    );
    let code = caller
        .proc
        .wait(Duration::from_millis(hold_ms) + Duration::from_secs(30));
    assert_eq!(
        code,
        Some(0),
        "the caller's sipp did not complete cleanly\n{}",
        context(&server, &[&caller])
    );
    server.assert_alive();
    let agent_code = agent.proc.wait(Duration::from_secs(15));
    assert_eq!(
        agent_code,
        Some(0),
        "{}",
        context(&server, &[&caller, &agent])
    );
    eprintln!(
        "flood: {flood_calls} INVITEs at 60/s, {refused} refused with 503, {answered} 200s in the flood trace; caller routed ({route}); {:.1} s",
        started.elapsed().as_secs_f32()
    );
}
