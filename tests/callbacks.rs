//! Callbacks end to end, with sipp as the caller's, the agent's and the customer's phones on
//! 127.0.0.1 and `humanline serve` (the release binary) keeping its promises through `--trunk`.
//!
//! The caller's audio goes to a socket the test owns (an [`Ear`]): it records every RTP packet
//! Humanline sends the caller, with its arrival time and loudness, and speaks for the caller.
//! That is how the tests know what a caller heard and when, e.g. that no confirmation was ever
//! sent for a promise that is not stored.
//!
//! Run: `cargo test --release --test callbacks -- --test-threads=2`.

mod common;

use common::*;
use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Louder than this (RMS, full scale 1.0) is a prompt being played, not silence.
const LOUD: f32 = 0.01;
/// An ear stops by itself after this long, whatever happens to the test.
const EAR_LIMIT: Duration = Duration::from_secs(240);

fn ulaw_to_linear(b: u8) -> f32 {
    let u = !b;
    let exp = (u >> 4) & 7;
    let mant = (u & 0x0f) as i32;
    let magnitude = (((mant << 3) + 0x84) << exp) - 0x84;
    let s = if u & 0x80 != 0 { -magnitude } else { magnitude };
    s as f32 / 32768.0
}

/// The test's end of an RTP stream: hears what Humanline sends (time, loudness per packet),
/// and once it has heard the sender, talks back every 20 ms: silence, or what it was told to
/// say.
struct Ear {
    port: u16,
    heard: Arc<Mutex<Vec<(Instant, f32)>>>,
    to_say: Arc<Mutex<VecDeque<u8>>>,
    stop: Arc<AtomicBool>,
}

impl Ear {
    fn start(port: u16, talk: bool) -> Ear {
        let socket = UdpSocket::bind((LOCALHOST, port)).expect("bind the ear");
        socket
            .set_read_timeout(Some(Duration::from_millis(5)))
            .expect("timeout");
        let heard: Arc<Mutex<Vec<(Instant, f32)>>> = Arc::default();
        let to_say: Arc<Mutex<VecDeque<u8>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s, st) = (heard.clone(), to_say.clone(), stop.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut peer: Option<SocketAddr> = None;
            let mut buf = [0u8; 2048];
            let (mut seq, mut ts, ssrc) = (1u16, 0u32, 0x1234_5678u32);
            let mut next_send = Instant::now();
            while !st.load(Ordering::Relaxed) && started.elapsed() < EAR_LIMIT {
                if let Ok((n, from)) = socket.recv_from(&mut buf)
                    && n > 12
                    && buf[0] >> 6 == 2
                    && buf[1] & 0x7f == 0
                {
                    let offset = 12 + 4 * (buf[0] & 0x0f) as usize;
                    if n > offset {
                        let payload = &buf[offset..n];
                        let energy: f32 = payload.iter().map(|b| ulaw_to_linear(*b).powi(2)).sum();
                        let rms = (energy / payload.len() as f32).sqrt();
                        if let Ok(mut h) = h.lock() {
                            h.push((Instant::now(), rms));
                        }
                    }
                    peer.get_or_insert(from);
                }
                if let Some(to) = peer.filter(|_| talk)
                    && Instant::now() >= next_send
                {
                    next_send += Duration::from_millis(20);
                    let mut packet = Vec::with_capacity(172);
                    packet.extend([0x80, 0]);
                    packet.extend(seq.to_be_bytes());
                    packet.extend(ts.to_be_bytes());
                    packet.extend(ssrc.to_be_bytes());
                    let mut say = s.lock().map(|mut q| {
                        let n = q.len().min(160);
                        q.drain(..n).collect::<Vec<u8>>()
                    });
                    let voice = say.as_mut().map(std::mem::take).unwrap_or_default();
                    packet.extend(&voice);
                    packet.resize(172, 0xff);
                    let _ = socket.send_to(&packet, to);
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(160);
                }
            }
        });
        Ear {
            port,
            heard,
            to_say,
            stop,
        }
    }

    /// Queues headerless mu-law audio to say, from the next packet on.
    fn say(&self, pcmu: &[u8]) {
        if let Ok(mut q) = self.to_say.lock() {
            q.extend(pcmu);
        }
    }

    fn heard(&self) -> Vec<(Instant, f32)> {
        self.heard.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// The first loud packet at or after `from`.
    fn first_loud_after(&self, from: Instant) -> Option<Instant> {
        self.heard()
            .into_iter()
            .find(|(t, rms)| *t >= from && *rms > LOUD)
            .map(|(t, _)| t)
    }

    /// How long was loud between `from` and `to` (20 ms per packet).
    fn loud_between(&self, from: Instant, to: Instant) -> Duration {
        let n = self
            .heard()
            .iter()
            .filter(|(t, rms)| *t >= from && *t < to && *rms > LOUD)
            .count();
        Duration::from_millis(20 * n as u64)
    }

    fn wait_loud_after(&self, from: Instant, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(t) = self.first_loud_after(from) {
                return Some(t);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn describe(&self) -> String {
        let heard = self.heard();
        let Some((t0, _)) = heard.first() else {
            return format!("ear {}: heard nothing", self.port);
        };
        let mut out = format!("ear {}: {} packets; loud spans:", self.port, heard.len());
        let mut span: Option<(Instant, Instant)> = None;
        for (t, rms) in &heard {
            match (span, *rms > LOUD) {
                (None, true) => span = Some((*t, *t)),
                (Some((a, _)), true) => span = Some((a, *t)),
                (Some((a, b)), false) if t.duration_since(b) > Duration::from_millis(300) => {
                    out.push_str(&format!(
                        " {:.2}-{:.2}s",
                        a.duration_since(*t0).as_secs_f32(),
                        b.duration_since(*t0).as_secs_f32()
                    ));
                    span = None;
                }
                _ => {}
            }
        }
        if let Some((a, b)) = span {
            out.push_str(&format!(
                " {:.2}-{:.2}s",
                a.duration_since(*t0).as_secs_f32(),
                b.duration_since(*t0).as_secs_f32()
            ));
        }
        out
    }
}

impl Drop for Ear {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Port layout on top of `common::Ports`: the customer's sipp is the block's spare one, the
/// ears use baresip's RTP ports (no baresip here).
fn customer_sipp(ports: Ports) -> SippPorts {
    ports.spare_sipp()
}
fn caller_ear_port(ports: Ports) -> u16 {
    ports.base + 40
}
fn agent_ear_port(ports: Ports) -> u16 {
    ports.base + 42
}

/// A server whose callbacks go out through a trunk at the customer's sipp, retried 2 s apart.
fn start_server(ports: Ports, dir: &Path) -> Server {
    start_server_with(ports, dir, "")
}

/// [`start_server`] with more settings (`extra` is appended to the config file).
fn start_server_with(ports: Ports, dir: &Path, extra: &str) -> Server {
    let config = dir.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "trunk = \"sip:trunk@{LOCALHOST}:{}\"\n\n[callback_retry]\nfirst_delay_ms = 2000\nfactor = 1.0\nmax_delay_ms = 2000\nmax_attempts = 4\n{extra}",
            customer_sipp(ports).sip
        ),
    )
    .expect("write server.toml");
    Server::start_with(
        ports,
        dir,
        &[agent_uri(ports.agent_sipp().sip)],
        &["--config".into(), config.display().to_string()],
    )
}

/// The caller: keys 0 (to a person) after 1 s and `second` `second_after_ms` later, then
/// hangs up `hold_ms` after that. Their audio goes to and comes from `ear`.
fn keying_caller(
    dir: &Path,
    ports: Ports,
    ear: &Ear,
    second: char,
    second_after_ms: u64,
    hold_ms: u64,
) -> Sipp {
    keying_caller_from(
        dir,
        ports,
        ear,
        "caller",
        "+15550124",
        second,
        second_after_ms,
        hold_ms,
    )
}

/// [`keying_caller`] with the caller ID (From user part) `from`.
#[allow(clippy::too_many_arguments)]
fn keying_caller_from(
    dir: &Path,
    ports: Ports,
    ear: &Ear,
    name: &str,
    from: &str,
    second: char,
    second_after_ms: u64,
    hold_ms: u64,
) -> Sipp {
    KeyingCaller {
        name,
        from,
        remote: ports.sip_addr(),
        ports: ports.caller_sipp(),
        rtp_port: ear.port,
        second,
        second_after_ms,
        hold_ms,
    }
    .start(dir)
}

/// The agent's phone while the caller waits: busy, so the caller is offered a callback.
fn busy_agent(dir: &Path, ports: Ports) -> Sipp {
    Sipp::start(
        dir,
        SippRun {
            name: "agent-busy",
            scenario: "phone_busy.xml",
            vars: &[],
            remote: None,
            transport: "u1",
            ports: ports.agent_sipp(),
            timeout: Duration::from_secs(60),
            calls: 1,
        },
    )
}

/// The agent's phone for the callback: answers `calls` calls; what the agent hears goes to
/// the agent ear.
fn agent_with_ear(dir: &Path, ports: Ports, name: &str, calls: u32) -> Sipp {
    Sipp::start(
        dir,
        SippRun {
            name,
            scenario: "agent_answers_ear.xml",
            vars: &[("RTP_PORT", agent_ear_port(ports).to_string())],
            remote: None,
            transport: "u1",
            ports: ports.agent_sipp(),
            timeout: Duration::from_secs(120),
            calls,
        },
    )
}

/// The customer's phone: answers, says something (a tone) for `talk_ms`, hangs up.
fn answering_customer(dir: &Path, ports: Ports, name: &str, talk_ms: u64) -> Sipp {
    let tone = dir.join("customer-tone.pcmu");
    if !tone.exists() {
        let ok = std::process::Command::new("sox")
            .args([
                "-n", "-r", "8000", "-c", "1", "-t", "raw", "-e", "mu-law", "-b", "8",
            ])
            .arg(&tone)
            .args(["synth", "2", "sine", "440", "vol", "0.5"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "sox could not make the customer's tone");
    }
    Sipp::start(
        dir,
        SippRun {
            name,
            scenario: "customer_answers.xml",
            vars: &[
                ("AUDIO", tone.display().to_string()),
                ("TALK_MS", talk_ms.to_string()),
            ],
            remote: None,
            transport: "u1",
            ports: customer_sipp(ports),
            timeout: Duration::from_secs(150),
            calls: 1,
        },
    )
}

fn busy_customer(dir: &Path, ports: Ports) -> Sipp {
    Sipp::start(
        dir,
        SippRun {
            name: "customer-busy",
            scenario: "phone_busy.xml",
            vars: &[],
            remote: None,
            transport: "u1",
            ports: customer_sipp(ports),
            timeout: Duration::from_secs(90),
            calls: 1,
        },
    )
}

fn story(server: &Server, peers: &[&Sipp], ears: &[&Ear]) -> String {
    let mut out = format!("--- humanline log (tail) ---\n{}\n", server.story());
    for p in peers {
        out.push_str(&p.report());
        out.push('\n');
    }
    for e in ears {
        out.push_str(&e.describe());
        out.push('\n');
    }
    out
}

fn callbacks(server: &Server) -> Vec<serde_json::Value> {
    let (status, body) = server.api_get("/api/callbacks");
    assert_eq!(status, 200, "/api/callbacks: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/callbacks: {e}: {body}"))
}

fn callback(server: &Server, id: i64) -> serde_json::Value {
    let (status, body) = server.api_get(&format!("/api/callbacks/{id}"));
    assert_eq!(status, 200, "/api/callbacks/{id}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/callbacks/{id}: {e}: {body}"))
}

fn outcomes(detail: &serde_json::Value) -> Vec<String> {
    detail["attempts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x["outcome"].as_str().unwrap_or("open").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the promise reaches `state` (the dialer records outcomes after the calls end).
fn wait_state(server: &Server, id: i64, state: &str, limit: Duration) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let done = eventually(limit, || {
        last = callback(server, id);
        last["promise"]["state"] == state
    });
    assert!(
        done,
        "callback {id} never reached {state}: {last}\n{}",
        server.story()
    );
    last
}

fn promised_id(line: &str) -> i64 {
    let after = line
        .split("id=")
        .nth(1)
        .unwrap_or_else(|| panic!("no id in {line:?}"));
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no id in {line:?}"))
}

/// How most callback tests begin: the only agent is busy, the caller keys 0 (to a person) and
/// accepts the callback with 1 after 5 s, then stays `hold_ms` more. Returns once the promise
/// is stored: when, and its id.
struct Promised {
    agent_busy: Sipp,
    server: Server,
    ear: Ear,
    caller: Sipp,
    at: Instant,
    id: i64,
}

fn promise_with_busy_agent(d: &Path, ports: Ports, hold_ms: u64) -> Promised {
    let agent_busy = busy_agent(d, ports);
    let server = start_server(ports, d);
    let ear = Ear::start(caller_ear_port(ports), true);
    let caller = keying_caller(d, ports, &ear, '1', 4000, hold_ms);
    let (at, line) = server
        .log
        .wait_for(&["callback promised"], Duration::from_secs(25))
        .unwrap_or_else(|| {
            panic!(
                "the callback was not stored\n{}",
                story(&server, &[&caller, &agent_busy], &[&ear])
            )
        });
    let id = promised_id(&line);
    Promised {
        agent_busy,
        server,
        ear,
        caller,
        at,
        id,
    }
}

/// The INVITE a phone received, from its message log.
fn invite(phone: &Sipp) -> String {
    phone.received_request("INVITE").unwrap_or_default()
}

// --- 1 ------------------------------------------------------------------------------------------

/// The caller keys 0; the only agent is busy, so Humanline offers a callback; the caller
/// accepts (1), hears the confirmation only after the commit, and hangs up. The dialer rings
/// the agent first (with the callback's context), then calls the customer through the trunk:
/// the first try finds the customer's phone busy, the retry 2 s later is answered, and the
/// agent hears the customer. The promise ends completed with both attempts on record.
#[test]
fn an_accepted_callback_is_retried_when_busy_then_bridged_to_an_agent() {
    if !peers_available("an_accepted_callback_is_retried_when_busy_then_bridged_to_an_agent") {
        return;
    }
    let ports = Ports::claim(0);
    let dir = tempdir("callback-kept");
    let d = dir.path();

    let mut agent_busy = busy_agent(d, ports);
    let mut customer_busy = busy_customer(d, ports);
    let mut server = start_server(ports, d);
    let ear = Ear::start(caller_ear_port(ports), true);
    let mut caller = keying_caller(d, ports, &ear, '1', 4000, 3000);

    let (committing, _) = server
        .log
        .wait_for(&["committing a callback"], Duration::from_secs(20))
        .unwrap_or_else(|| {
            panic!(
                "no callback was committed\n{}",
                story(&server, &[&caller, &agent_busy], &[&ear])
            )
        });
    let (promised, line) = server
        .log
        .wait_for(&["callback promised"], Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "the callback was not stored\n{}",
                story(&server, &[&caller], &[&ear])
            )
        });
    let id = promised_id(&line);
    assert!(
        server.log.find(&["prompt=callback_offer"]).is_some(),
        "the caller was never offered a callback\n{}",
        server.story()
    );
    let heard = ear.wait_loud_after(promised, Duration::from_secs(5));
    assert!(
        heard.is_some(),
        "the caller heard no confirmation after the commit\n{}",
        story(&server, &[&caller], &[&ear])
    );
    assert!(
        server.log.find(&["prompt=callback_confirmed"]).is_some(),
        "the confirmation prompt was not played\n{}",
        server.story()
    );
    eprintln!(
        "commit took {:?}; the caller heard the confirmation {:?} after it",
        promised.duration_since(committing),
        heard.map(|h| h.saturating_duration_since(promised))
    );

    let code = caller.proc.wait(Duration::from_secs(30));
    assert_eq!(
        code,
        Some(0),
        "the caller's call did not end cleanly\n{}",
        story(&server, &[&caller], &[&ear])
    );
    assert_eq!(
        agent_busy.proc.wait(Duration::from_secs(10)),
        Some(0),
        "{}",
        agent_busy.report()
    );

    // The callback: the agent answers twice (one per attempt).
    let agent_ear = Ear::start(agent_ear_port(ports), false);
    let mut agent = agent_with_ear(d, ports, "agent", 2);
    let code = customer_busy.proc.wait(Duration::from_secs(60));
    assert_eq!(
        code,
        Some(0),
        "the customer's busy phone was never called\n{}",
        story(&server, &[&agent, &customer_busy], &[])
    );
    let first = invite(&customer_busy);
    assert!(
        first.contains(&format!(
            "INVITE sip:+15550124@{LOCALHOST}:{}",
            customer_sipp(ports).sip
        )),
        "the trunk's request URI does not carry the caller's number:\n{first}"
    );
    let mut customer = answering_customer(d, ports, "customer", 3000);
    let code = customer.proc.wait(Duration::from_secs(60));
    assert_eq!(
        code,
        Some(0),
        "the customer was not called back after the busy try\n{}",
        story(&server, &[&agent, &customer], &[&agent_ear])
    );
    let detail = wait_state(&server, id, "completed", Duration::from_secs(15));
    assert_eq!(outcomes(&detail), vec!["busy", "completed"], "{detail}");
    assert_eq!(detail["promise"]["number"], "+15550124", "{detail}");
    let answered = customer.messages().find("SIP/2.0 200 OK").is_some();
    assert!(answered, "{}", customer.report());

    // The agent was rung first, with the callback's context, and heard the customer.
    let agent_invite = invite(&agent);
    assert!(
        header(&agent_invite, "X-Humanline-Callback").is_some_and(|v| v.contains("+15550124")),
        "the agent's INVITE lacks the callback's context:\n{agent_invite}"
    );
    let code = agent.proc.wait(Duration::from_secs(20));
    assert_eq!(
        code,
        Some(0),
        "the agent's phone was not released cleanly\n{}",
        agent.report()
    );
    let loud = agent_ear.loud_between(Instant::now() - Duration::from_secs(120), Instant::now());
    assert!(
        loud >= Duration::from_millis(1000),
        "the agent heard {loud:?} of the customer (expected ~2 s of tone): not bridged\n{}",
        agent_ear.describe()
    );
    server.assert_alive();
    eprintln!("callback {id}: busy, then kept; the agent heard {loud:?} of the customer");
}

// --- 2 ------------------------------------------------------------------------------------------

/// "Call me back in one minute": the promise is stored for then, the caller hears the time
/// confirmed, and the customer's phone does not ring before it.
#[test]
fn a_time_the_caller_chose_is_honoured() {
    if !peers_available("a_time_the_caller_chose_is_honoured") {
        return;
    }
    let ports = Ports::claim(1);
    let dir = tempdir("callback-time");
    let d = dir.path();
    let (words, secs) = caller_audio(
        d,
        "answer",
        &[Part::Say("Please call me back in one minute.")],
    );
    let pcmu = std::fs::read(&words).expect("caller audio");

    let mut agent_busy = busy_agent(d, ports);
    let server = start_server(ports, d);
    let ear = Ear::start(caller_ear_port(ports), true);
    // The 5 is not an answer to anything: the caller just waits a little, then hangs up.
    let mut caller = keying_caller(d, ports, &ear, '5', 9000, 2000);
    let guard = speech_lock();
    let offered = server
        .log
        .wait_for(&["prompt=callback_offer"], Duration::from_secs(20))
        .unwrap_or_else(|| {
            panic!(
                "no callback offered\n{}",
                story(&server, &[&caller, &agent_busy], &[&ear])
            )
        });
    let _ = offered;
    std::thread::sleep(Duration::from_millis(800));
    ear.say(&pcmu);
    let (promised, line) = server
        .log
        .wait_for(&["callback promised"], Duration::from_secs(15))
        .unwrap_or_else(|| {
            panic!(
                "the spoken time was not taken as a yes ({secs:.1} s said)\n{}",
                story(&server, &[&caller], &[&ear])
            )
        });
    drop(guard);
    let id = promised_id(&line);
    assert!(
        server
            .log
            .wait_for(&["prompt=callback_confirmed_at"], Duration::from_secs(3))
            .is_some(),
        "the caller did not hear the chosen time confirmed\n{}",
        server.story()
    );
    let detail = callback(&server, id);
    let created = detail["promise"]["created_at"].as_i64().unwrap_or_default();
    let not_before = detail["promise"]["not_before"].as_i64().unwrap_or_default();
    let asked = not_before - created;
    assert!(
        (55_000..=65_000).contains(&asked),
        "asked for a minute, stored for {asked} ms later: {detail}"
    );
    let _ = caller.proc.wait(Duration::from_secs(30));
    let _ = agent_busy.proc.wait(Duration::from_secs(5));

    // Everything about the first call is long over by then: the agent and customer wait.
    let mut customer = answering_customer(d, ports, "customer", 2000);
    std::thread::sleep(Duration::from_millis(50_000).saturating_sub(promised.elapsed()));
    assert!(
        customer.received_request("INVITE").is_none(),
        "the customer was called before the time they chose\n{}",
        customer.report()
    );
    let mut agent = agent_with_ear(d, ports, "agent", 1);
    let code = customer.proc.wait(Duration::from_secs(40));
    assert_eq!(
        code,
        Some(0),
        "the customer was not called back\n{}",
        story(&server, &[&agent, &customer], &[])
    );
    let rang_after = promised.elapsed();
    let detail = wait_state(&server, id, "completed", Duration::from_secs(15));
    let started = detail["attempts"][0]["started_at"]
        .as_i64()
        .unwrap_or_default();
    assert!(
        started >= not_before,
        "the attempt started {} ms before the chosen time: {detail}",
        not_before - started
    );
    let _ = agent.proc.wait(Duration::from_secs(10));
    eprintln!(
        "chosen time: +{:.1} s; the attempt started {} ms after it; call over {rang_after:?} after the promise",
        asked as f64 / 1000.0,
        started - not_before
    );
}

// --- 3 ------------------------------------------------------------------------------------------

/// SIGKILL right after the caller starts hearing the confirmation, then a restart: the promise
/// is still there and is kept.
#[test]
fn a_promise_survives_sigkill_right_after_it_is_confirmed() {
    if !peers_available("a_promise_survives_sigkill_right_after_it_is_confirmed") {
        return;
    }
    let ports = Ports::claim(2);
    let dir = tempdir("callback-sigkill");
    let d = dir.path();

    let Promised {
        mut agent_busy,
        mut server,
        ear,
        mut caller,
        at: promised,
        id,
    } = promise_with_busy_agent(d, ports, 30_000);
    let heard = ear.wait_loud_after(promised, Duration::from_secs(5));
    assert!(
        heard.is_some(),
        "no confirmation heard\n{}",
        story(&server, &[&caller], &[&ear])
    );
    server.proc.kill();
    let killed = Instant::now();
    caller.proc.kill();
    agent_busy.proc.kill();
    eprintln!(
        "killed {:?} after the confirmation started",
        heard.map(|h| killed.saturating_duration_since(h))
    );

    let agent_ear = Ear::start(agent_ear_port(ports), false);
    let mut agent = agent_with_ear(d, ports, "agent", 1);
    let mut customer = answering_customer(d, ports, "customer", 2000);
    let server = start_server(ports, d);
    let code = customer.proc.wait(Duration::from_secs(60));
    assert_eq!(
        code,
        Some(0),
        "after the restart the customer was never called back\n{}",
        story(&server, &[&agent, &customer], &[&agent_ear])
    );
    let detail = wait_state(&server, id, "completed", Duration::from_secs(15));
    assert_eq!(outcomes(&detail), vec!["completed"], "{detail}");
    assert!(
        header(&invite(&customer), "X-Humanline-Callback")
            .is_some_and(|v| v.trim() == id.to_string()),
        "{}",
        invite(&customer)
    );
    let _ = agent.proc.wait(Duration::from_secs(10));
    assert_eq!(callbacks(&server).len(), 1, "one promise, kept once");
}

// --- 4 ------------------------------------------------------------------------------------------

/// The ledger cannot commit (another process holds the database's write lock), and the server
/// is killed while it waits: the caller heard nothing of a confirmation, and after a restart
/// there is no promise either. Never a promise heard that is not stored.
#[test]
fn no_confirmation_is_heard_for_a_promise_not_stored() {
    if !peers_available("no_confirmation_is_heard_for_a_promise_not_stored") {
        return;
    }
    let ports = Ports::claim(3);
    let dir = tempdir("callback-uncommitted");
    let d = dir.path();

    let mut agent_busy = busy_agent(d, ports);
    let mut server = start_server(ports, d);
    let db: PathBuf = d.join("data").join("callbacks.db");
    let lock = rusqlite::Connection::open(&db).expect("open the ledger");
    lock.execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");

    let ear = Ear::start(caller_ear_port(ports), true);
    let mut caller = keying_caller(d, ports, &ear, '1', 4000, 30_000);
    let (committing, _) = server
        .log
        .wait_for(&["committing a callback"], Duration::from_secs(25))
        .unwrap_or_else(|| {
            panic!(
                "no commit attempted\n{}",
                story(&server, &[&caller, &agent_busy], &[&ear])
            )
        });
    std::thread::sleep(Duration::from_millis(2000));
    assert!(
        server.log.find(&["callback promised"]).is_none(),
        "stored through a held write lock?\n{}",
        server.story()
    );
    server.proc.kill();
    let killed = Instant::now();
    // Packets already on their way when the caller keyed 1 may still land just after the
    // commit began; from 300 ms on, nothing may be heard.
    let loud = ear.loud_between(committing + Duration::from_millis(300), killed);
    caller.proc.kill();
    agent_busy.proc.kill();
    lock.execute_batch("ROLLBACK").expect("release the lock");
    drop(lock);
    assert_eq!(
        loud,
        Duration::ZERO,
        "the caller heard {loud:?} of audio while the promise was not stored\n{}\n{}",
        ear.describe(),
        server.story()
    );
    assert!(
        server.log.find(&["prompt=callback_confirmed"]).is_none(),
        "a confirmation was played for an uncommitted promise\n{}",
        server.story()
    );
    let heard_before = ear.loud_between(committing - Duration::from_secs(5), committing);
    assert!(
        heard_before > Duration::ZERO,
        "the ear heard nothing at all (the offer should have been audible): the test is blind\n{}",
        ear.describe()
    );

    let server = start_server(ports, d);
    let list = callbacks(&server);
    assert!(
        list.is_empty(),
        "a promise appeared that the caller never heard confirmed: {list:?}"
    );
}

// --- 5 ------------------------------------------------------------------------------------------

/// During a callback the agent hangs up first: the customer is not hung up on but is back with
/// the IVR ("say human to reach someone again"), and hangs up when they like.
#[test]
fn a_called_back_customer_whose_agent_hangs_up_stays_with_the_ivr() {
    if !peers_available("a_called_back_customer_whose_agent_hangs_up_stays_with_the_ivr") {
        return;
    }
    let ports = Ports::claim(4);
    let dir = tempdir("callback-agent-leaves");
    let d = dir.path();

    let Promised {
        mut agent_busy,
        server,
        ear: _ear,
        mut caller,
        at: _,
        id,
    } = promise_with_busy_agent(d, ports, 3000);
    assert_eq!(
        caller.proc.wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        caller.report()
    );
    let _ = agent_busy.proc.wait(Duration::from_secs(5));

    let mut agent = Sipp::start(
        d,
        SippRun {
            name: "agent",
            scenario: "agent_hangs_up.xml",
            vars: &[("BYE_AFTER_MS", "2500".into())],
            remote: None,
            transport: "u1",
            ports: ports.agent_sipp(),
            timeout: Duration::from_secs(60),
            calls: 1,
        },
    );
    // The customer stays 10 s after answering; a BYE from Humanline would fail their sipp.
    let mut customer = answering_customer(d, ports, "customer", 10_000);
    assert_eq!(
        agent.proc.wait(Duration::from_secs(45)),
        Some(0),
        "the agent never took the callback\n{}",
        story(&server, &[&agent, &customer], &[])
    );
    let back = server
        .log
        .wait_for(&["prompt=after_agent"], Duration::from_secs(5));
    assert!(
        back.is_some(),
        "the customer was not taken back to the IVR when the agent left\n{}",
        story(&server, &[&agent, &customer], &[])
    );
    let code = customer.proc.wait(Duration::from_secs(30));
    assert_eq!(
        code,
        Some(0),
        "the customer's call did not end on their own terms (a BYE from Humanline fails it)\n{}",
        story(&server, &[&customer], &[])
    );
    assert!(
        !customer.messages().contains("BYE sip:customer"),
        "Humanline sent the customer a BYE:\n{}",
        customer.report()
    );
    let detail = wait_state(&server, id, "completed", Duration::from_secs(10));
    assert_eq!(outcomes(&detail), vec!["completed"], "{detail}");
}

// --- 6 ------------------------------------------------------------------------------------------

/// A caller whose caller ID is withheld ("anonymous"), and one whose number is not on the
/// operator's list (a premium-rate number), accept a callback: neither is stored on that
/// number (the dialer would dial `sip:@trunk`, or a premium line); each is asked for a
/// number instead.
#[test]
fn a_withheld_or_forbidden_caller_id_is_asked_for_a_number_not_stored() {
    if !peers_available("a_withheld_or_forbidden_caller_id_is_asked_for_a_number_not_stored") {
        return;
    }
    let ports = Ports::claim(5);
    let dir = tempdir("callback-number");
    let d = dir.path();
    let mut server = start_server_with(
        ports,
        d,
        "\n[callback_numbers]\nallowed_prefixes = [\"+1555\"]\n",
    );
    // (The second caller's ear takes the agent ear's port: no agent answers here.)
    for (name, from, ear_port) in [
        ("anonymous", "anonymous", caller_ear_port(ports)),
        ("premium", "+19005550100", agent_ear_port(ports)),
    ] {
        let mut agent_busy = busy_agent(d, ports);
        let ear = Ear::start(ear_port, true);
        let since = Instant::now();
        let mut caller = keying_caller_from(d, ports, &ear, name, from, '1', 4000, 4000);
        let asked = eventually(Duration::from_secs(25), || {
            server
                .log
                .find_all(&["prompt=callback_ask_number"])
                .iter()
                .any(|(t, _)| *t >= since)
        });
        assert!(
            asked,
            "caller {from} accepted a callback and was not asked for a number\n{}",
            story(&server, &[&caller, &agent_busy], &[&ear])
        );
        assert_eq!(
            caller.proc.wait(Duration::from_secs(30)),
            Some(0),
            "{}",
            caller.report()
        );
        let _ = agent_busy.proc.wait(Duration::from_secs(5));
    }
    assert!(
        server.log.find(&["committing a callback"]).is_none(),
        "a callback was committed to a number that cannot be called\n{}",
        server.story()
    );
    let list = callbacks(&server);
    assert!(list.is_empty(), "promises on undialable numbers: {list:?}");
    server.assert_alive();
}

// --- 7 ------------------------------------------------------------------------------------------

/// The caller accepts a callback (the only agent is busy), stays on the line, and the agent
/// becomes free and answers them: the promise is kept then (completed, "served_by_agent"),
/// and nobody is called back later.
#[test]
fn a_caller_who_reaches_an_agent_is_not_called_back_later() {
    if !peers_available("a_caller_who_reaches_an_agent_is_not_called_back_later") {
        return;
    }
    let ports = Ports::claim(6);
    let dir = tempdir("callback-served");
    let d = dir.path();

    // Keys 0 at 1 s, accepts with 1 at 5 s, stays 25 s more (the agent's cool-down is 10 s).
    let Promised {
        mut agent_busy,
        server,
        ear,
        mut caller,
        at: _,
        id,
    } = promise_with_busy_agent(d, ports, 25_000);
    assert_eq!(
        agent_busy.proc.wait(Duration::from_secs(10)),
        Some(0),
        "{}",
        agent_busy.report()
    );
    // Now the agent is free, and takes the waiting caller.
    // Where the agent's audio goes (a socket must be there; nothing is checked in it).
    let _agent_ear = Ear::start(agent_ear_port(ports), false);
    let mut agent = agent_with_ear(d, ports, "agent", 1);
    let mut customer = answering_customer(d, ports, "customer", 2000);
    let kept = server.log.wait_for(
        &["callback kept: the caller reached a person"],
        Duration::from_secs(30),
    );
    assert!(
        kept.is_some(),
        "the caller reached the agent but their callback was not kept\n{}",
        story(&server, &[&caller, &agent], &[&ear])
    );
    let detail = wait_state(&server, id, "completed", Duration::from_secs(5));
    assert_eq!(
        detail["promise"]["completed_reason"], "served_by_agent",
        "{detail}"
    );
    assert_eq!(
        caller.proc.wait(Duration::from_secs(40)),
        Some(0),
        "{}",
        caller.report()
    );
    let _ = agent.proc.wait(Duration::from_secs(10));
    // The dialer had the promise in line; once the agent is free again it must not call.
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        customer.received_request("INVITE").is_none(),
        "the customer was called back although they had reached a person\n{}",
        story(&server, &[&customer], &[])
    );
    let detail = callback(&server, id);
    assert!(
        outcomes(&detail).iter().all(|o| o == "kept_elsewhere"),
        "{detail}"
    );
    customer.proc.kill();
}

// --- 8 ------------------------------------------------------------------------------------------

/// Issue 11, defect 7 (dialer): the agent rung for a callback answers with an SDP nobody can
/// use (audio port 0). Humanline ACKs and hangs that leg up with BYE instead of leaving it up
/// at the agent (before the fix the dialer dropped the leg without a word), the promise waits
/// for the next agent, and is kept when one answers properly. No dialog is left behind.
#[test]
fn an_agent_answering_a_callback_with_an_unusable_sdp_is_hung_up_and_the_promise_kept_later() {
    let test =
        "an_agent_answering_a_callback_with_an_unusable_sdp_is_hung_up_and_the_promise_kept_later";
    if !peers_available(test) {
        return;
    }
    let ports = Ports::claim(7);
    let dir = tempdir("callback-bad-sdp");
    let d = dir.path();

    let Promised {
        mut agent_busy,
        server,
        ear: _ear,
        mut caller,
        at: _,
        id,
    } = promise_with_busy_agent(d, ports, 3000);
    assert_eq!(
        agent_busy.proc.wait(Duration::from_secs(10)),
        Some(0),
        "{}",
        agent_busy.report()
    );
    // The dialer rings the agent for the callback (after their cool-down): they answer, but
    // with audio port 0.
    let mut bad = unusable_agent(
        d,
        "agent-bad-sdp",
        ports.agent_sipp(),
        "m=audio 0 RTP/AVP 0\n      a=rtpmap:0 PCMU/8000",
        1,
    );
    assert_eq!(
        caller.proc.wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        caller.report()
    );
    let code = bad.proc.wait(Duration::from_secs(60));
    assert_eq!(
        code,
        Some(0),
        "{test}: the agent whose answer was unusable was not ACKed and hung up with BYE\n{}",
        story(&server, &[&bad], &[])
    );
    let detail = callback(&server, id);
    assert_ne!(
        detail["promise"]["state"], "completed",
        "{test}: the promise was closed on an unusable leg: {detail}"
    );
    // The next try finds a working agent: the customer is called and bridged.
    let _agent_ear = Ear::start(agent_ear_port(ports), false);
    let mut agent = agent_with_ear(d, ports, "agent", 1);
    let mut customer = answering_customer(d, ports, "customer", 2000);
    wait_state(&server, id, "completed", Duration::from_secs(60));
    assert_eq!(
        customer.proc.wait(Duration::from_secs(20)),
        Some(0),
        "{}",
        customer.report()
    );
    assert_eq!(
        agent.proc.wait(Duration::from_secs(20)),
        Some(0),
        "{}",
        agent.report()
    );
    assert!(
        metric_falls_to(
            &server,
            "humanline_sip_dialogs",
            0.0,
            Duration::from_secs(10)
        ),
        "{test}: dialogs left in the SIP stack: {:?}\n{}",
        metric(&server.metrics(), "humanline_sip_dialogs"),
        server.story()
    );
}
