//! The media layer over real UDP sockets on 127.0.0.1: media tasks talking to each other,
//! a bridge between a PCMU and a PCMA leg, the no-media timer, and sipp (a real, independent
//! RTP sender) playing RFC 4733 digits from its pcap files. Every wait is bounded.
//!
//! A test module of `media` rather than a `tests/` file, so it compiles only where the crate
//! declares the module.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::media::{
    self, Clip, Codec, Direction, MediaEvent, MediaHandle, PortRange, RemoteMedia, SessionConfig,
    StreamIds,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

fn localhost() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

fn ports() -> PortRange {
    PortRange::new(34_000, 34_999).expect("range")
}

fn remote(addr: SocketAddr, codec: Codec) -> RemoteMedia {
    RemoteMedia {
        addr: Some(addr),
        codec,
        payload_type: codec.payload_type(),
        telephone_event: Some(101),
        direction: Direction::SendRecv,
        null_address: false,
        ptime: Some(20),
    }
}

/// Two media tasks wired to each other: (a, a_events, b, b_events).
async fn pair(
    codec: Codec,
) -> (
    MediaHandle,
    mpsc::Receiver<MediaEvent>,
    MediaHandle,
    mpsc::Receiver<MediaEvent>,
) {
    let sa = media::bind_rtp_socket(localhost(), ports())
        .await
        .expect("bind a");
    let sb = media::bind_rtp_socket(localhost(), ports())
        .await
        .expect("bind b");
    let (aa, ab) = (sa.local_addr().expect("a"), sb.local_addr().expect("b"));
    let (a, ea) = media::spawn(
        sa,
        SessionConfig::new(&remote(ab, codec), StreamIds::random()),
    )
    .expect("spawn a");
    let (b, eb) = media::spawn(
        sb,
        SessionConfig::new(&remote(aa, codec), StreamIds::random()),
    )
    .expect("spawn b");
    (a, ea, b, eb)
}

/// A 1 kHz tone at 8 kHz.
fn tone(ms: usize) -> Clip {
    Clip::from_8k(
        (0..ms * 8)
            .map(|i| {
                let x = i as f32 * 1000.0 * std::f32::consts::TAU / 8000.0;
                (x.sin() * 8000.0) as i16
            })
            .collect::<Vec<_>>(),
    )
}

fn rms(samples: &[i16]) -> f64 {
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / samples.len().max(1) as f64).sqrt()
}

/// Sign changes in a frame: about 40 for 20 ms of a 1 kHz tone.
fn zero_crossings(samples: &[i16]) -> usize {
    samples
        .windows(2)
        .filter(|w| (w[0] < 0) != (w[1] < 0))
        .count()
}

/// Collect events until `until` says stop or `limit` passes.
async fn collect(
    events: &mut mpsc::Receiver<MediaEvent>,
    limit: Duration,
    mut until: impl FnMut(&[MediaEvent]) -> bool,
) -> Vec<MediaEvent> {
    let end = Instant::now() + limit;
    let mut got = Vec::new();
    while !until(&got) {
        match tokio::time::timeout_at(end, events.recv()).await {
            Ok(Some(e)) => got.push(e),
            Ok(None) | Err(_) => break,
        }
    }
    got
}

fn tone_frames(events: &[MediaEvent]) -> usize {
    events
        .iter()
        .filter(|e| match e {
            MediaEvent::Audio(f) => {
                rms(&f.samples) > 3000.0 && {
                    let z = zero_crossings(&f.samples);
                    (35..=45).contains(&z)
                }
            }
            _ => false,
        })
        .count()
}

fn digits(events: &[MediaEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            MediaEvent::Dtmf(d) => Some(*d),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn audio_and_dtmf_cross_a_real_socket() {
    let (a, _ea, b, mut eb) = pair(Codec::Pcmu).await;
    a.play(1, vec![tone(600)]).await.expect("play");
    let got = collect(&mut eb, Duration::from_secs(3), |g| tone_frames(g) >= 25).await;
    assert!(
        tone_frames(&got) >= 25,
        "B heard {} tone frames",
        tone_frames(&got)
    );

    a.send_dtmf("5#").await.expect("dtmf");
    let got = collect(&mut eb, Duration::from_secs(3), |g| digits(g).len() >= 2).await;
    assert_eq!(digits(&got), "5#");
    // The repeated end packets must not produce a second report.
    let more = collect(&mut eb, Duration::from_millis(300), |_| false).await;
    assert_eq!(digits(&more), "");

    let stats = b.close().await;
    assert!(stats.packets_received > 30, "{stats:?}");
    assert_eq!(stats.malformed, 0);
    a.close().await;
}

#[tokio::test]
async fn bridge_transcodes_between_pcmu_and_pcma_legs() {
    // caller phone <-PCMU-> leg A  ==bridge==  leg B <-PCMA-> agent phone
    let (phone1, _e1, leg_a, _ea) = pair(Codec::Pcmu).await;
    let (leg_b, _eb, phone2, mut e2) = pair(Codec::Pcma).await;
    media::bridge(&leg_a, &leg_b).await.expect("bridge");
    phone1.play(1, vec![tone(800)]).await.expect("play");
    let got = collect(&mut e2, Duration::from_secs(3), |g| tone_frames(g) >= 25).await;
    assert!(
        tone_frames(&got) >= 25,
        "agent heard {} tone frames through the bridge",
        tone_frames(&got)
    );

    // After unbridging, the agent hears silence again.
    media::unbridge(&leg_a, &leg_b).await.expect("unbridge");
    tokio::time::sleep(Duration::from_millis(100)).await;
    while e2.try_recv().is_ok() {}
    phone1.play(2, vec![tone(400)]).await.expect("play");
    let after = collect(&mut e2, Duration::from_millis(600), |_| false).await;
    assert_eq!(tone_frames(&after), 0);

    for h in [phone1, leg_a, leg_b, phone2] {
        h.close().await;
    }
}

#[tokio::test]
async fn media_stopped_when_the_peer_goes_silent() {
    let sa = media::bind_rtp_socket(localhost(), ports())
        .await
        .expect("bind");
    let sb = media::bind_rtp_socket(localhost(), ports())
        .await
        .expect("bind");
    let (aa, ab) = (sa.local_addr().expect("a"), sb.local_addr().expect("b"));
    let mut cfg = SessionConfig::new(&remote(ab, Codec::Pcmu), StreamIds::random());
    cfg.no_media_timeout = Duration::from_millis(400);
    let (a, mut ea) = media::spawn(sa, cfg).expect("spawn");
    let (b, _eb) = media::spawn(
        sb,
        SessionConfig::new(&remote(aa, Codec::Pcmu), StreamIds::random()),
    )
    .expect("spawn");

    // While B sends (silence frames every 20 ms), A is content.
    let early = collect(&mut ea, Duration::from_millis(800), |_| false).await;
    assert!(!early.contains(&MediaEvent::MediaStopped));
    assert!(early.iter().any(|e| matches!(e, MediaEvent::Audio(_))));

    // B's "network dies".
    b.close().await;
    let got = collect(&mut ea, Duration::from_secs(3), |g| {
        g.contains(&MediaEvent::MediaStopped)
    })
    .await;
    assert!(got.contains(&MediaEvent::MediaStopped));
    a.close().await;
}

// --- sipp as an independent RTP sender ------------------------------------------------------

const PCAP_DIR: &str = "/usr/share/sip-tester";

/// sipp places a call to our tiny SIP answerer below and, once answered, plays two of its
/// RFC 4733 pcap files (digits 1 and 7) to the media address in our SDP answer.
fn uac_scenario() -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="dtmf to humanline">
  <send retrans="500">
    <![CDATA[
INVITE sip:ivr@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:ivr@[remote_ip]:[remote_port]>
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
m=audio [media_port] RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
    ]]>
  </send>
  <recv response="200" rtd="true" />
  <send>
    <![CDATA[
ACK sip:ivr@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:ivr@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
  <nop><action><exec play_pcap_audio="{PCAP_DIR}/dtmf_2833_1.pcap"/></action></nop>
  <pause milliseconds="600"/>
  <nop><action><exec play_pcap_audio="{PCAP_DIR}/dtmf_2833_7.pcap"/></action></nop>
  <pause milliseconds="600"/>
  <send retrans="500">
    <![CDATA[
BYE sip:ivr@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:ivr@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 BYE
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true" />
</scenario>
"#
    )
}

/// Answer one SIP request with `status`, echoing the headers a UAC matches on.
fn sip_response(request: &str, status: &str, body: Option<&str>) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in request.lines() {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("via:")
            || lower.starts_with("from:")
            || lower.starts_with("call-id:")
            || lower.starts_with("cseq:")
        {
            out.push_str(line.trim_end());
            out.push_str("\r\n");
        } else if lower.starts_with("to:") {
            out.push_str(line.trim_end());
            if !lower.contains("tag=") {
                out.push_str(";tag=humanline1");
            }
            out.push_str("\r\n");
        }
    }
    out.push_str("Contact: <sip:ivr@127.0.0.1>\r\n");
    match body {
        Some(b) => {
            out.push_str("Content-Type: application/sdp\r\n");
            out.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len()));
        }
        None => out.push_str("Content-Length: 0\r\n\r\n"),
    }
    out
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Only our own child, by its handle.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sipp_rfc4733_digits_are_reported_once_each() {
    let have_sipp = std::process::Command::new("sipp")
        .arg("-v")
        .output()
        .is_ok();
    let pcap = std::path::Path::new(PCAP_DIR).join("dtmf_2833_1.pcap");
    if !have_sipp || !pcap.exists() {
        eprintln!("sipp or its pcap files not installed (apt-get install sip-tester): skipping");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = dir.path().join("uac.xml");
    std::fs::write(&scenario, uac_scenario()).expect("write scenario");

    // Our side: a SIP socket (this test plays the SIP layer) and a media task.
    let sip = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("sip");
    let sip_addr = sip.local_addr().expect("addr");
    let rtp = media::bind_rtp_socket(localhost(), ports())
        .await
        .expect("rtp");
    let local = media::LocalMedia {
        ip: localhost(),
        port: rtp.local_addr().expect("addr").port(),
        session_id: 1,
        session_version: 1,
    };

    // The main crate's tokio has no "process" feature: a std child, polled, killed on drop.
    let child = std::process::Command::new("sipp")
        .arg("-sf")
        .arg(&scenario)
        .args([
            "-m",
            "1",
            "-i",
            "127.0.0.1",
            "-mi",
            "127.0.0.1",
            "-p",
            "35060",
        ])
        .args([
            "-mp",
            "35100",
            "-timeout",
            "15s",
            "-timeout_error",
            "-nostdin",
        ])
        .arg(sip_addr.to_string())
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("sipp starts");
    let mut child = KillOnDrop(child);

    let mut buf = vec![0u8; 4096];
    let deadline = Duration::from_secs(10);
    // INVITE -> 200 OK with our SDP answer.
    let (n, peer) = timeout(deadline, sip.recv_from(&mut buf))
        .await
        .expect("INVITE in time")
        .expect("recv");
    let invite = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(invite.starts_with("INVITE"), "{invite}");
    let offer = invite.split("\r\n\r\n").nth(1).expect("SDP body");
    let answer = media::sdp::answer(offer, &local).expect("sipp's offer is acceptable");
    assert_eq!(answer.remote.codec, Codec::Pcmu);
    assert_eq!(answer.remote.telephone_event, Some(101));
    let (handle, mut events) =
        media::spawn(rtp, SessionConfig::new(&answer.remote, StreamIds::random())).expect("spawn");
    let ok = sip_response(&invite, "200 OK", Some(&answer.sdp));
    sip.send_to(ok.as_bytes(), peer).await.expect("send 200");

    // Then sipp sends ACK, plays the digits, sends BYE: answer the BYE and any resends.
    let sip_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok(Ok((n, from))) =
            timeout(Duration::from_secs(10), sip.recv_from(&mut buf)).await
        {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            if msg.starts_with("BYE") {
                let ok = sip_response(&msg, "200 OK", None);
                let _ = sip.send_to(ok.as_bytes(), from).await;
                break;
            }
            if msg.starts_with("INVITE") {
                let _ = sip
                    .send_to(
                        sip_response(&msg, "200 OK", Some(&answer.sdp)).as_bytes(),
                        from,
                    )
                    .await;
            }
        }
    });

    let got = collect(&mut events, Duration::from_secs(8), |g| {
        digits(g).len() >= 2
    })
    .await;
    let extra = collect(&mut events, Duration::from_millis(500), |_| false).await;
    assert_eq!(digits(&got), "17", "digits from sipp's pcap files");
    assert_eq!(digits(&extra), "", "each digit reported once");

    let mut status = None;
    for _ in 0..150 {
        if let Some(s) = child.0.try_wait().expect("sipp status") {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = status.expect("sipp ends in time");
    let _ = sip_task.await;
    let stats = handle.close().await;
    assert!(status.success(), "sipp failed: {status}");
    assert!(stats.packets_received >= 16, "{stats:?}");
}
