//! Call setup rate with sipp (INVITE / 100 / 200 / ACK / BYE / 200, the endpoint auto-answering).
//! Not part of the normal run:
//!
//! ```sh
//! HUMANLINE_SIP_RATE=1000 HUMANLINE_SIP_CALLS=10000 \
//!   cargo test --release --test sip_rate -- --ignored --nocapture
//! ```
//!
//! Fails unless every call succeeds. Needs sipp (package sip-tester).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use humanline::sip::{InboundEvent, SipEndpoint};

const SDP: &str = "v=0\r\no=humanline 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "load measurement; run explicitly"]
async fn sip_call_rate() {
    let rate = env_u64("HUMANLINE_SIP_RATE", 200);
    let calls = env_u64("HUMANLINE_SIP_CALLS", rate * 10);
    let transport = std::env::var("HUMANLINE_SIP_TRANSPORT").unwrap_or_else(|_| "u1".into());
    let (sip, mut incoming) = SipEndpoint::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let byes = Arc::new(AtomicU64::new(0));
    let counter = byes.clone();
    tokio::spawn(async move {
        while let Some(mut call) = incoming.recv().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                call.call.answer(SDP).ok();
                while let Some(ev) = call.events.recv().await {
                    if let InboundEvent::Bye = ev {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let screen = dir.path().join("screen.txt");
    let mut child = Command::new("sipp")
        .arg(sip.local_addr().to_string())
        .args(["-sn", "uac", "-i", "127.0.0.1", "-d", "0", "-nostdin"])
        .args([
            "-p",
            &free_port().to_string(),
            "-mp",
            &free_port().to_string(),
        ])
        .args([
            "-t",
            &transport,
            "-r",
            &rate.to_string(),
            "-m",
            &calls.to_string(),
        ])
        .args([
            "-timeout",
            "120s",
            "-timeout_error",
            "-trace_screen",
            "-screen_file",
        ])
        .arg(&screen)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sipp (apt-get install sip-tester)");
    let start = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code().unwrap_or(-1);
        }
        if start.elapsed() > Duration::from_secs(150) {
            let _ = child.kill();
            let _ = child.wait();
            break -999;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elapsed = start.elapsed();
    // the event pumps may still be catching up on a loaded machine
    let settle = Instant::now();
    while byes.load(Ordering::Relaxed) < calls && settle.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = std::fs::read_to_string(&screen).unwrap_or_default();
    let summary: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains("Successful call") || l.contains("Failed call") || l.contains("Call Rate")
        })
        .collect();
    eprintln!(
        "sipp -r {rate} -m {calls} -t {transport}: exit {code} in {elapsed:?}, byes seen {}, {:?}\n{}",
        byes.load(Ordering::Relaxed),
        sip.stats(),
        summary.join("\n")
    );
    sip.shutdown();
    assert_eq!(code, 0, "sipp reported failed calls\n{text}");
    assert_eq!(byes.load(Ordering::Relaxed), calls);
}
