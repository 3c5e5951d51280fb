//! The SIP layer against real peers (sipp, package `sip-tester`) and raw sockets, all on
//! 127.0.0.1. Every sipp run is bounded (`-timeout`, plus a kill at a deadline) and killed on
//! drop. When sipp is not installed the sipp tests print SKIP and pass; set
//! `HUMANLINE_REQUIRE_SIPP=1` to make that a failure instead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use humanline::sip::{
    FailReason, InboundEvent, IncomingCalls, OutboundEvent, SipEndpoint, SipTransport,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

const SDP: &str = "v=0\r\no=humanline 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n";
const HOLD_SDP: &str = "v=0\r\no=humanline 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=recvonly\r\n";

fn sipp_available() -> bool {
    let found = Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        if std::env::var_os("HUMANLINE_REQUIRE_SIPP").is_some() {
            panic!("sipp is required (apt-get install sip-tester)");
        }
        eprintln!("SKIP: sipp not installed (apt-get install sip-tester)");
    }
    found
}

/// A port free on 127.0.0.1 for both UDP and TCP (racy, but good enough for tests).
fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

struct Sipp {
    child: Child,
    dir: PathBuf,
}

impl Sipp {
    /// Starts sipp against `remote` (client scenarios) or as a server (remote = None).
    fn start(dir: &Path, remote: Option<SocketAddr>, local_port: u16, args: &[&str]) -> Sipp {
        let mut cmd = Command::new("sipp");
        if let Some(r) = remote {
            cmd.arg(r.to_string());
        }
        let mp = free_port().to_string();
        let cp = free_port().to_string();
        cmd.args([
            "-i",
            "127.0.0.1",
            "-p",
            &local_port.to_string(),
            "-mp",
            &mp,
            "-cp",
            &cp,
        ])
        .args([
            "-nostdin",
            "-timeout",
            "30s",
            "-timeout_error",
            "-trace_err",
            "-trace_msg",
        ])
        .arg("-message_file")
        .arg(dir.join("messages.log"))
        .arg("-error_file")
        .arg(dir.join("errors.log"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn sipp");
        Sipp {
            child,
            dir: dir.to_path_buf(),
        }
    }

    /// Waits for sipp to exit (at most `limit`, then kills it) and returns its exit code.
    async fn wait(&mut self, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.code().unwrap_or(-1000),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return -999;
                }
            }
        }
    }

    fn messages(&self) -> String {
        std::fs::read_to_string(self.dir.join("messages.log")).unwrap_or_default()
    }

    fn report(&self) -> String {
        format!(
            "--- errors.log ---\n{}\n--- messages.log ---\n{}",
            std::fs::read_to_string(self.dir.join("errors.log")).unwrap_or_default(),
            self.messages()
        )
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Answer,
    RingOnly,
}

/// Answers (or only rings) every incoming call and reports `(call_id, event)` strings.
fn harness(mut calls: IncomingCalls, mode: Mode) -> mpsc::UnboundedReceiver<(String, String)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(mut call) = calls.recv().await {
            let tx = tx.clone();
            tx.send((
                call.call_id.clone(),
                format!(
                    "Incoming from={} transport={} sdp_ok={}",
                    call.from.caller_id(),
                    call.transport,
                    call.offer_sdp.contains("m=audio")
                ),
            ))
            .ok();
            tokio::spawn(async move {
                match mode {
                    Mode::Answer => call.call.answer(SDP).expect("answer"),
                    Mode::RingOnly => call.call.ringing().expect("ringing"),
                }
                while let Some(ev) = call.events.recv().await {
                    let text = match &ev {
                        InboundEvent::Info { dtmf, .. } => {
                            format!("Info dtmf={:?}", dtmf.map(|d| d.digit))
                        }
                        InboundEvent::ReInvite { sdp, .. } => {
                            format!("ReInvite sendonly={}", sdp.contains("a=sendonly"))
                        }
                        other => format!("{other:?}"),
                    };
                    tx.send((call.call_id.clone(), text)).ok();
                    if let InboundEvent::ReInvite { reply, .. } = ev {
                        reply.accept(HOLD_SDP).await.expect("re-INVITE reply");
                    }
                }
                if let Mode::RingOnly = mode {
                    // answering a call that is over must fail, not send anything
                    let late = call.call.answer(SDP);
                    tx.send((
                        call.call_id.clone(),
                        format!("late answer ok={}", late.is_ok()),
                    ))
                    .ok();
                }
                drop(call.call);
            });
        }
    });
    rx
}

/// Collects harness events until `until` is seen or the time runs out.
async fn collect_until(
    rx: &mut mpsc::UnboundedReceiver<(String, String)>,
    until: &str,
    limit: Duration,
) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while let Ok(Some((_, ev))) = tokio::time::timeout_at(deadline, rx.recv()).await {
        let done = ev.starts_with(until);
        seen.push(ev);
        if done {
            break;
        }
    }
    seen
}

async fn endpoint() -> (SipEndpoint, IncomingCalls) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    SipEndpoint::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind endpoint")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write scenario");
    p.to_string_lossy().into_owned()
}

async fn inbound_call_over(transport_args: &[&str], expect_transport: SipTransport) {
    if !sipp_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (sip, calls) = endpoint().await;
    let mut events = harness(calls, Mode::Answer);
    let mut args = vec!["-sn", "uac", "-m", "1", "-d", "200"];
    args.extend_from_slice(transport_args);
    let mut sipp = Sipp::start(dir.path(), Some(sip.local_addr()), free_port(), &args);
    let code = sipp.wait(Duration::from_secs(40)).await;
    assert_eq!(code, 0, "sipp failed\n{}", sipp.report());
    let seen = collect_until(&mut events, "Bye", Duration::from_secs(5)).await;
    assert!(
        seen[0].starts_with(&format!(
            "Incoming from=sipp transport={expect_transport} sdp_ok=true"
        )),
        "{seen:?}"
    );
    assert!(seen.contains(&"Confirmed".to_string()), "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("Bye"), "{seen:?}");
    let msgs = sipp.messages();
    assert!(msgs.contains("SIP/2.0 100 Trying"), "{msgs}");
    assert!(msgs.contains("Content-Type: application/sdp"), "{msgs}");
    sip.shutdown();
}

/// (a) sipp calls us over UDP, we answer with SDP, sipp hangs up, we see Bye.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_uac_calls_over_udp() {
    inbound_call_over(&[], SipTransport::Udp).await;
}

/// (a) the same over TCP, on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_uac_calls_over_tcp() {
    inbound_call_over(&["-t", "t1"], SipTransport::Tcp).await;
}

const UAS_AGENT_HANGS_UP: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="agent answers, checks the X-Humanline headers, hangs up">
  <recv request="INVITE">
    <action>
      <ereg regexp="keyword" search_in="hdr" header="X-Humanline-Reason:" check_it="true" assign_to="reason"/>
      <ereg regexp="caller said" search_in="hdr" header="X-Humanline-Transcript:" check_it="true" assign_to="tr"/>
      <ereg regexp="m=audio" search_in="body" check_it="true" assign_to="m"/>
      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="remote_from"/>
      <ereg regexp=".*" search_in="hdr" header="To:" assign_to="remote_to"/>
      <ereg regexp="sip:[^>;]*" search_in="hdr" header="Contact:" assign_to="contact"/>
    </action>
  </recv>
  <send><![CDATA[
SIP/2.0 180 Ringing
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:agent@[local_ip]:[local_port];transport=[transport]>
Content-Length: 0

]]></send>
  <send retrans="500"><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:agent@[local_ip]:[local_port];transport=[transport]>
Content-Type: application/sdp
Content-Length: [len]

v=0
o=agent 1 1 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000

]]></send>
  <recv request="ACK"/>
  <pause milliseconds="300"/>
  <send retrans="500"><![CDATA[
BYE [$contact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From:[$remote_to];tag=[pid]SIPpTag01[call_number]
To:[$remote_from]
[last_Call-ID:]
CSeq: 1 BYE
Max-Forwards: 70
X-Checked: [$reason] [$tr] [$m]
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"#;

/// (b) we INVITE an agent (sipp uas) with X-Humanline headers; the agent answers, then hangs up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_invite_reaches_agent_with_headers_then_agent_hangs_up() {
    if !sipp_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (sip, _calls) = endpoint().await;
    let agent_port = free_port();
    let scenario = write(dir.path(), "agent.xml", UAS_AGENT_HANGS_UP);
    let mut sipp = Sipp::start(dir.path(), None, agent_port, &["-sf", &scenario, "-m", "1"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let transcript = format!(
        "caller said: I want to talk to a human\r\nVia: injected\r\n{}",
        "blah ".repeat(400)
    );
    let (call, mut events) = sip
        .invite(
            &format!("sip:agent@127.0.0.1:{agent_port}"),
            SDP,
            vec![
                ("X-Humanline-Reason".into(), "keyword".into()),
                ("X-Humanline-Transcript".into(), transcript),
            ],
        )
        .await
        .expect("invite");
    let mut seen = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
        let done = ev.is_final();
        seen.push(match ev {
            OutboundEvent::Answered { answer_sdp } => {
                format!("Answered m={}", answer_sdp.contains("m=audio"))
            }
            other => format!("{other:?}"),
        });
        if done {
            break;
        }
    }
    assert!(seen.iter().any(|e| e.starts_with("Ringing")), "{seen:?}");
    assert!(seen.contains(&"Answered m=true".to_string()), "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("Bye"), "{seen:?}");
    assert!(
        call.bye().await.is_err(),
        "BYE after the agent hung up must fail"
    );
    let code = sipp.wait(Duration::from_secs(10)).await;
    assert_eq!(code, 0, "sipp failed\n{}", sipp.report());
    let msgs = sipp.messages();
    assert!(msgs.contains("X-Humanline-Reason: keyword\r\n"), "{msgs}");
    let line = msgs
        .lines()
        .find(|l| l.starts_with("X-Humanline-Transcript:"))
        .expect("transcript header");
    assert!(
        line.len() <= "X-Humanline-Transcript: ".len() + 1000,
        "{}",
        line.len()
    );
    assert!(line.ends_with("..."), "{line}");
    assert!(
        !msgs.contains("\nVia: injected"),
        "header injection got through"
    );
    sip.shutdown();
}

/// (b') the agent (sipp's built-in uas) answers and we end the agent leg with BYE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_we_hang_up_with_bye() {
    if !sipp_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (sip, _calls) = endpoint().await;
    let agent_port = free_port();
    let mut sipp = Sipp::start(dir.path(), None, agent_port, &["-sn", "uas", "-m", "1"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (call, mut events) = sip
        .invite_with(humanline::sip::OutboundInvite {
            target_uri: format!("sip:agent@127.0.0.1:{agent_port}"),
            offer_sdp: SDP.into(),
            from_user: Some("+4930123456;evil=1".into()),
            from_display_name: Some("Caller \"Bob\"\\".into()),
            ..Default::default()
        })
        .await
        .expect("invite");
    assert!(call.bye().await.is_err(), "BYE before the answer must fail");
    let mut answered = false;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
        if let OutboundEvent::Answered { .. } = ev {
            answered = true;
            break;
        }
    }
    assert!(answered);
    call.bye().await.expect("bye");
    let last = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("event in time");
    assert!(
        matches!(last, Some(OutboundEvent::Ended { .. })),
        "{last:?}"
    );
    let code = sipp.wait(Duration::from_secs(10)).await;
    assert_eq!(code, 0, "sipp failed\n{}", sipp.report());
    let msgs = sipp.messages();
    let from = msgs
        .lines()
        .find(|l| l.starts_with("From:"))
        .expect("From header");
    assert!(from.contains("<sip:+4930123456evil=1@127.0.0.1:"), "{from}");
    assert!(from.contains("Caller 'Bob'"), "{from}");
    sip.shutdown();
}

const UAS_BUSY: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="busy agent">
  <recv request="INVITE"/>
  <send><![CDATA[
SIP/2.0 486 Busy Here
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
  <recv request="ACK"/>
</scenario>
"#;

const UAS_NO_ANSWER: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="agent rings forever, gets CANCEL">
  <recv request="INVITE">
    <action>
      <ereg regexp="[0-9]+ INVITE" search_in="hdr" header="CSeq:" assign_to="cseqnum"/>
    </action>
  </recv>
  <send><![CDATA[
SIP/2.0 180 Ringing
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
  <recv request="CANCEL"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
  <send><![CDATA[
SIP/2.0 487 Request Terminated
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
CSeq: [$cseqnum]
Content-Length: 0

]]></send>
  <recv request="ACK"/>
</scenario>
"#;

async fn outbound_failure(
    scenario: &str,
    ring_timeout: Option<Duration>,
    cancel_after: Option<Duration>,
) -> (Option<u16>, FailReason, Sipp) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sip, _calls) = endpoint().await;
    let agent_port = free_port();
    let scenario = write(dir.path(), "agent.xml", scenario);
    let sipp = Sipp::start(dir.path(), None, agent_port, &["-sf", &scenario, "-m", "1"]);
    // keep the tempdir alive as long as sipp
    std::mem::forget(dir);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (call, mut events) = sip
        .invite_with(humanline::sip::OutboundInvite {
            target_uri: format!("sip:agent@127.0.0.1:{agent_port}"),
            offer_sdp: SDP.into(),
            ring_timeout,
            ..Default::default()
        })
        .await
        .expect("invite");
    if let Some(after) = cancel_after {
        tokio::time::sleep(after).await;
        call.cancel().await.expect("cancel");
    }
    let mut result = None;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
        if let OutboundEvent::Failed { status, reason, .. } = ev {
            result = Some((status, reason));
            break;
        }
        assert!(!ev.is_final(), "unexpected final event {ev:?}");
    }
    sip.shutdown();
    let (status, reason) = result.expect("a Failed event");
    (status, reason, sipp)
}

/// A busy agent (486) is reported as Busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_busy_is_reported() {
    if !sipp_available() {
        return;
    }
    let (status, reason, mut sipp) = outbound_failure(UAS_BUSY, None, None).await;
    assert_eq!((status, reason), (Some(486), FailReason::Busy));
    assert_eq!(
        sipp.wait(Duration::from_secs(10)).await,
        0,
        "{}",
        sipp.report()
    );
}

/// An agent that only rings is CANCELled after the ring timeout: NoAnswer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_no_answer_is_cancelled() {
    if !sipp_available() {
        return;
    }
    let (status, reason, mut sipp) =
        outbound_failure(UAS_NO_ANSWER, Some(Duration::from_millis(1500)), None).await;
    assert_eq!(reason, FailReason::NoAnswer, "status {status:?}");
    assert_eq!(
        sipp.wait(Duration::from_secs(10)).await,
        0,
        "{}",
        sipp.report()
    );
}

/// cancel() before the answer sends CANCEL: Cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_cancel_before_answer() {
    if !sipp_available() {
        return;
    }
    let (status, reason, mut sipp) =
        outbound_failure(UAS_NO_ANSWER, None, Some(Duration::from_millis(500))).await;
    assert_eq!(reason, FailReason::Cancelled, "status {status:?}");
    assert_eq!(
        sipp.wait(Duration::from_secs(10)).await,
        0,
        "{}",
        sipp.report()
    );
}

/// Sends a burst of garbage and broken SIP to `target` from one socket; returns the replies.
async fn garbage_burst(target: SocketAddr, rounds: usize) -> Vec<String> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let me = sock.local_addr().expect("addr");
    let good_head = |method: &str, cseq_method: &str, extra: &str| {
        format!(
            "{method} sip:ivr@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-g{method}{extra}\r\nFrom: <sip:g@{me}>;tag=g1\r\nTo: <sip:ivr@{target}>\r\nCall-ID: garbage-{method}@x\r\nCSeq: 1 {cseq_method}\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
        )
    };
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..rounds {
        let msg: Vec<u8> = match i % 8 {
            0 => (0..(rnd() % 1400)).map(|_| rnd() as u8).collect(),
            1 => b"INVITE sip:x SIP/2.0\r\n\r\n".to_vec(),
            2 => good_head("FROBNICATE", "FROBNICATE", "").into_bytes(), // 501
            3 => good_head("INVITE", "BYE", "").into_bytes(),            // 400 (CSeq mismatch)
            4 => {
                let mut m = good_head("INVITE", "INVITE", "").into_bytes();
                let cut = (rnd() as usize) % m.len();
                m.truncate(cut);
                m
            }
            5 => good_head(
                "INVITE",
                "INVITE",
                "Content-Type: application/sdp\r\nContent-Length: 900\r\n",
            )
            .into_bytes(), // body shorter than Content-Length
            6 => b"SIP/2.0 200 OK\r\nVia: nonsense\r\n\r\n".to_vec(),
            _ => {
                let mut m = good_head("OPTIONS", "OPTIONS", "").into_bytes();
                let i = (rnd() as usize) % m.len();
                m[i] = rnd() as u8;
                m
            }
        };
        sock.send_to(&msg, target).await.ok();
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let mut replies = Vec::new();
    let mut buf = vec![0u8; 65535];
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await
    {
        replies.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    replies
}

/// (c) a burst of garbage while a good sipp call completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_burst_does_not_disturb_a_call() {
    if !sipp_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (sip, calls) = endpoint().await;
    let mut events = harness(calls, Mode::Answer);
    let mut sipp = Sipp::start(
        dir.path(),
        Some(sip.local_addr()),
        free_port(),
        &["-sn", "uac", "-m", "3", "-r", "2", "-d", "1500"],
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let replies = garbage_burst(sip.local_addr(), 2000).await;
    let code = sipp.wait(Duration::from_secs(40)).await;
    assert_eq!(code, 0, "sipp failed\n{}", sipp.report());
    let mut byes = 0;
    for _ in 0..3 {
        let seen = collect_until(&mut events, "Bye", Duration::from_secs(5)).await;
        if seen.last().map(String::as_str) == Some("Bye") {
            byes += 1;
        }
    }
    assert_eq!(byes, 3);
    assert!(
        replies.iter().any(|r| r.starts_with("SIP/2.0 501 ")),
        "{replies:?}"
    );
    assert!(
        replies.iter().any(|r| r.starts_with("SIP/2.0 400 ")),
        "{replies:?}"
    );
    let stats = sip.stats();
    // the kernel drops part of a 2000-datagram burst on a full socket buffer
    assert!(stats.udp_dropped >= 100, "{stats:?}");
    assert!(stats.udp_answered_501 >= 20, "{stats:?}");
    assert!(stats.udp_answered_400 >= 20, "{stats:?}");
    eprintln!("garbage burst: {stats:?}, {} replies", replies.len());
    sip.shutdown();
}

const UAC_CANCEL: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="caller cancels before answer">
  <send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-[pid]-[call_number]-inv
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: [service] <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: sip:sipp@[local_ip]:[local_port]
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000

]]></send>
  <recv response="100" optional="true"/>
  <recv response="180"/>
  <pause milliseconds="200"/>
  <send retrans="500"><![CDATA[
CANCEL sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-[pid]-[call_number]-inv
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: [service] <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 CANCEL
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
  <recv response="487"/>
  <send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-[pid]-[call_number]-inv
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: [service] <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <pause milliseconds="100"/>
</scenario>
"#;

/// (d) the caller CANCELs before we answer: 200 to CANCEL, 487 to INVITE, Cancelled event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_cancels_before_answer() {
    if !sipp_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (sip, calls) = endpoint().await;
    let mut events = harness(calls, Mode::RingOnly);
    let scenario = write(dir.path(), "cancel.xml", UAC_CANCEL);
    let mut sipp = Sipp::start(
        dir.path(),
        Some(sip.local_addr()),
        free_port(),
        &["-sf", &scenario, "-m", "1"],
    );
    let code = sipp.wait(Duration::from_secs(40)).await;
    assert_eq!(code, 0, "sipp failed\n{}", sipp.report());
    let seen = collect_until(&mut events, "Cancelled", Duration::from_secs(5)).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("Cancelled"),
        "{seen:?}"
    );
    sip.shutdown();
}

const UAC_INFO_REINVITE: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="call, DTMF by INFO, hold by re-INVITE, BYE">
  <send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:+4930123456@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: [service] <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: sip:sipp@[local_ip]:[local_port]
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000

]]></send>
  <recv response="100" optional="true"/>
  <recv response="200" rrs="true"/>
  <send><![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:+4930123456@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: [service] <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <send retrans="500"><![CDATA[
INFO [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:+4930123456@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: [service] <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 INFO
Max-Forwards: 70
Content-Type: application/dtmf-relay
Content-Length: [len]

Signal=5
Duration=160
]]></send>
  <recv response="200"/>
  <send retrans="500"><![CDATA[
INVITE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:+4930123456@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: [service] <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 3 INVITE
Contact: sip:sipp@[local_ip]:[local_port]
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=user1 53655765 2353687638 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
a=sendonly

]]></send>
  <recv response="100" optional="true"/>
  <recv response="200">
    <action>
      <ereg regexp="a=recvonly" search_in="body" check_it="true" assign_to="held"/>
    </action>
  </recv>
  <send><![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:+4930123456@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: [service] <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 3 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <pause milliseconds="200"/>
  <send retrans="500"><![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:+4930123456@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: [service] <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 4 BYE
Max-Forwards: 70
X-Held: [$held]
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"#;

/// INFO DTMF (Signal=5) and a hold re-INVITE answered with the SDP the application supplies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_dtmf_and_hold_reinvite() {
    if !sipp_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (sip, calls) = endpoint().await;
    let mut events = harness(calls, Mode::Answer);
    let scenario = write(dir.path(), "info.xml", UAC_INFO_REINVITE);
    let mut sipp = Sipp::start(
        dir.path(),
        Some(sip.local_addr()),
        free_port(),
        &["-sf", &scenario, "-m", "1"],
    );
    let code = sipp.wait(Duration::from_secs(40)).await;
    assert_eq!(code, 0, "sipp failed\n{}", sipp.report());
    let seen = collect_until(&mut events, "Bye", Duration::from_secs(5)).await;
    assert!(
        seen[0].starts_with("Incoming from=+4930123456 "),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"Info dtmf=Some('5')".to_string()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"ReInvite sendonly=true".to_string()),
        "{seen:?}"
    );
    assert_eq!(seen.last().map(String::as_str), Some("Bye"), "{seen:?}");
    sip.shutdown();
}

fn raw_invite(target: SocketAddr, me: SocketAddr, call_id: &str) -> String {
    let sdp = "v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    format!(
        "INVITE sip:ivr@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{call_id}\r\nFrom: <sip:raw@{me}>;tag=r1\r\nTo: <sip:ivr@{target}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:raw@{me}>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

fn to_header_of(resp: &str) -> String {
    resp.lines()
        .find(|l| l.starts_with("To:"))
        .unwrap_or_default()
        .to_string()
}

/// Our 200 OK is retransmitted (T1 = 500 ms, doubling) until the ACK comes, then no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_is_retransmitted_until_ack_over_udp() {
    let (sip, calls) = endpoint().await;
    let mut events = harness(calls, Mode::Answer);
    let target = sip.local_addr();
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let me = sock.local_addr().expect("addr");
    sock.send_to(raw_invite(target, me, "retrans-1").as_bytes(), target)
        .await
        .expect("send");
    let mut buf = vec![0u8; 65535];
    let start = Instant::now();
    let mut oks = Vec::new();
    let mut to = String::new();
    while start.elapsed() < Duration::from_millis(2500) {
        let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(200), sock.recv_from(&mut buf)).await
        else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with("SIP/2.0 200 OK") {
            oks.push(start.elapsed());
            to = to_header_of(&text);
        }
    }
    // 200 at ~0, retransmitted at ~0.5 s and ~1.5 s
    assert!(oks.len() >= 3, "200 OK seen at {oks:?}");
    let ack = format!(
        "ACK sip:ivr@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-ack1\r\nFrom: <sip:raw@{me}>;tag=r1\r\n{to}\r\nCall-ID: retrans-1\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    sock.send_to(ack.as_bytes(), target).await.expect("ack");
    let after_ack = Instant::now();
    let mut late = 0;
    while after_ack.elapsed() < Duration::from_millis(2500) {
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(200), sock.recv_from(&mut buf)).await
            && buf[..n].starts_with(b"SIP/2.0 200 OK")
        {
            late += 1;
        }
    }
    assert_eq!(late, 0, "200 OK retransmitted after the ACK");
    let seen = collect_until(&mut events, "Confirmed", Duration::from_secs(2)).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("Confirmed"),
        "{seen:?}"
    );
    // the caller hangs up
    let bye = format!(
        "BYE sip:ivr@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-bye1\r\nFrom: <sip:raw@{me}>;tag=r1\r\n{to}\r\nCall-ID: retrans-1\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    sock.send_to(bye.as_bytes(), target).await.expect("bye");
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
        .await
        .expect("reply in time")
        .expect("recv");
    assert!(buf[..n].starts_with(b"SIP/2.0 200 OK"));
    let seen = collect_until(&mut events, "Bye", Duration::from_secs(2)).await;
    assert_eq!(seen.last().map(String::as_str), Some("Bye"), "{seen:?}");
    sip.shutdown();
}

/// OPTIONS gets 200 with Allow; REGISTER 405; an unknown method 501; a BYE for no call 481.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_dialog_requests() {
    let (sip, _calls) = endpoint().await;
    let target = sip.local_addr();
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let me = sock.local_addr().expect("addr");
    let mut buf = vec![0u8; 65535];
    for (method, to_tag, expect) in [
        ("OPTIONS", "", "SIP/2.0 200 OK"),
        ("REGISTER", "", "SIP/2.0 405 "),
        ("FROBNICATE", "", "SIP/2.0 501 "),
        ("BYE", ";tag=nosuch", "SIP/2.0 481 "),
    ] {
        let req = format!(
            "{method} sip:ivr@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{method}\r\nFrom: <sip:raw@{me}>;tag=r1\r\nTo: <sip:ivr@{target}>{to_tag}\r\nCall-ID: ood-{method}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        sock.send_to(req.as_bytes(), target).await.expect("send");
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no reply to {method}"))
            .expect("recv");
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with(expect), "{method}: {text}");
        if method == "OPTIONS" || method == "REGISTER" {
            assert!(
                text.contains("Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO"),
                "{text}"
            );
        }
    }
    // the endpoint still takes calls afterwards
    assert!(
        SipEndpoint::bind(target).await.is_err(),
        "port must be taken"
    );
    sip.shutdown();
}

/// Binding a taken port (UDP or TCP) is an error, not a silent half-endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_reports_taken_ports() {
    // The same port number must be free for UDP and taken for TCP. A test running beside this
    // one can take the UDP number between the check and the bind (ephemeral ports are shared),
    // so a UDP clash picks another port; only an error naming TCP passes, up to 10 tries.
    let mut last = String::new();
    for _ in 0..10 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let port = tcp.local_addr().expect("addr").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let err = SipEndpoint::bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .expect_err("TCP port is taken");
        last = err.to_string();
        if last.contains("TCP") {
            return;
        }
        if !last.contains("UDP") {
            break;
        }
    }
    panic!("a taken TCP port was not reported as TCP: {last:?}");
}

/// A call the application drops without deciding is rejected with 480, after 100 Trying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecided_call_is_rejected_480() {
    let (sip, mut calls) = endpoint().await;
    tokio::spawn(async move {
        while let Some(call) = calls.recv().await {
            drop(call);
        }
    });
    let target = sip.local_addr();
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let me = sock.local_addr().expect("addr");
    sock.send_to(raw_invite(target, me, "drop-1").as_bytes(), target)
        .await
        .expect("send");
    let mut buf = vec![0u8; 65535];
    let mut statuses = Vec::new();
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await
    {
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        statuses.push(text.lines().next().unwrap_or_default().to_string());
        if text.starts_with("SIP/2.0 480") {
            break;
        }
    }
    assert_eq!(
        statuses,
        vec!["SIP/2.0 100 Trying", "SIP/2.0 480 Temporarily Unavailable"],
        "{statuses:?}"
    );
    sip.shutdown();
}

/// An INVITE without SDP (delayed offer) gets 488, one with another body type 415.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_we_cannot_serve_are_rejected() {
    let (sip, _calls) = endpoint().await;
    let target = sip.local_addr();
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let me = sock.local_addr().expect("addr");
    let mut buf = vec![0u8; 65535];
    for (call_id, ctype, body, expect) in [
        ("noffer-1", "", "", "SIP/2.0 488 "),
        (
            "text-1",
            "Content-Type: text/plain\r\n",
            "hello",
            "SIP/2.0 415 ",
        ),
    ] {
        let req = format!(
            "INVITE sip:ivr@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{call_id}\r\nFrom: <sip:raw@{me}>;tag=r1\r\nTo: <sip:ivr@{target}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:raw@{me}>\r\nMax-Forwards: 70\r\n{ctype}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        sock.send_to(req.as_bytes(), target).await.expect("send");
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
            .await
            .expect("reply in time")
            .expect("recv");
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with(expect), "{call_id}: {text}");
    }
    sip.shutdown();
}
