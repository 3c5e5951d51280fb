//! Helpers for the end-to-end tests with real SIP peers: `humanline serve` as a child process,
//! sipp and baresip peers, speech made with espeak-ng and sox, a WAV reader for what a peer
//! heard, and per-test port blocks on 127.0.0.1. Every child process is killed (and reaped)
//! when its handle is dropped, also when a test panics.

#![allow(dead_code)]

pub mod impair;
pub mod postgres;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const LOCALHOST: &str = "127.0.0.1";

/// The repository root (where `prompts/` and `models/` are).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn sipp_dir() -> PathBuf {
    repo().join("tests/sipp")
}

/// The server under test: this build's `humanline`, or `$HUMANLINE_TEST_SERVER` (another
/// build, e.g. one from before a fix, to show that a test fails on it).
pub fn server_bin() -> PathBuf {
    match std::env::var_os("HUMANLINE_TEST_SERVER") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_humanline")),
    }
}

/// The prompts a test server runs with unless the test brings its own: the shipped ones, or
/// `$HUMANLINE_TEST_PROMPTS` (an older build's, for `$HUMANLINE_TEST_SERVER`).
pub fn prompts_dir() -> PathBuf {
    match std::env::var_os("HUMANLINE_TEST_PROMPTS") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo().join("prompts"),
    }
}

/// Copies a folder tree (prompts/ or audio/) for a test's own prompts.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// The shipped `prompts/` and `audio/` copied into `dir`, for a test that changes them;
/// answers the `--prompts` flag for a server running on the copy.
pub fn copy_of_shipped_flow(dir: &Path) -> [String; 2] {
    copy_tree(&repo().join("prompts"), &dir.join("prompts"));
    copy_tree(&repo().join("audio"), &dir.join("audio"));
    [
        "--prompts".into(),
        dir.join("prompts").display().to_string(),
    ]
}

/// A test's folder (logs, scenarios, recordings); kept when `HUMANLINE_KEEP_TEST_DIRS` is set.
pub fn tempdir(test: &str) -> tempfile::TempDir {
    let keep = std::env::var_os("HUMANLINE_KEEP_TEST_DIRS").is_some();
    let dir = tempfile::Builder::new()
        .prefix(&format!("humanline-{test}-"))
        .disable_cleanup(keep)
        .tempdir()
        .expect("tempdir");
    if keep {
        eprintln!("{test}: keeping {}", dir.path().display());
    }
    dir
}

/// The Whisper model: `$HUMANLINE_MODEL`, else `models/ggml-tiny.en.bin`.
pub fn model_path() -> PathBuf {
    match std::env::var_os("HUMANLINE_MODEL") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo().join("models/ggml-tiny.en.bin"),
    }
}

fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v.eq_ignore_ascii_case("true"))
        .unwrap_or(false)
}

fn tool_runs(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// True when the peers, the audio tools and the model are all here. Otherwise prints a SKIP
/// notice and returns false — or fails the test when `CI=true` (CI installs them).
pub fn peers_available(test: &str) -> bool {
    let mut missing = Vec::new();
    for (tool, arg, package) in [
        ("sipp", "-v", "sip-tester"),
        ("baresip", "-h", "baresip-core"),
        ("espeak-ng", "--version", "espeak-ng"),
        ("sox", "--version", "sox"),
    ] {
        if !tool_runs(tool, arg) {
            missing.push(format!("{tool} (package {package})"));
        }
    }
    let model = model_path();
    if !model.is_file() {
        missing.push(format!(
            "the Whisper model {} (scripts/fetch-model.sh)",
            model.display()
        ));
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: missing {}", missing.join(", "));
    if in_ci() {
        panic!("{msg} (CI=true: the test environment must provide them)");
    }
    eprintln!("SKIP {msg}");
    false
}

/// Speech recognition is the heavy part of a call: tests whose routing depends on it take
/// this lock, so at most one of them decodes at a time on a small, busy machine.
pub fn speech_lock() -> MutexGuard<'static, ()> {
    static SPEECH: Mutex<()> = Mutex::new(());
    SPEECH.lock().unwrap_or_else(|p| p.into_inner())
}

// --- ports ------------------------------------------------------------------------------------

/// A block of 100 ports on 127.0.0.1 owned by one test. Test `index` gets
/// `21000 + k*1000 + index*100` for the first `k` whose ports are all free (another run of the
/// suite may hold the first choice). Below the ephemeral range, above the server's default RTP
/// range.
///
/// Layout: +0 Humanline SIP (UDP and TCP), +1 HTTP; +10/+12/+18 caller sipp SIP/media/control;
/// +20/+22/+28 agent sipp SIP/media/control; +29 never bound (a dead agent); +30 baresip SIP
/// (+31 its TLS), +33 baresip control, +40..+49 baresip RTP; +50..+99 Humanline RTP. Tests
/// without baresip may use its ports for a third sipp (+30/+32/+38) and a relay (+34, +36).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub base: u16,
}

impl Ports {
    pub fn claim(index: u16) -> Ports {
        assert!(index < 10, "port block index out of range");
        for k in 0..8u16 {
            let base = 21000 + k * 1000 + index * 100;
            if (base..base + 100).all(port_free) {
                return Ports { base };
            }
        }
        panic!("no free port block for test index {index} in 21000-28999");
    }

    pub fn sip(&self) -> u16 {
        self.base
    }
    pub fn sip_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.sip()))
    }
    pub fn http(&self) -> u16 {
        self.base + 1
    }
    pub fn caller_sipp(&self) -> SippPorts {
        SippPorts {
            sip: self.base + 10,
            media: self.base + 12,
            control: self.base + 18,
        }
    }
    pub fn agent_sipp(&self) -> SippPorts {
        SippPorts {
            sip: self.base + 20,
            media: self.base + 22,
            control: self.base + 28,
        }
    }
    /// A port nothing listens on.
    pub fn dead(&self) -> u16 {
        self.base + 29
    }
    /// A third sipp (a second agent, a called-back customer), on baresip's ports.
    pub fn spare_sipp(&self) -> SippPorts {
        SippPorts {
            sip: self.base + 30,
            media: self.base + 32,
            control: self.base + 38,
        }
    }
    /// The impairing relay's SIP and RTP ports (`impair::ImpairedPath`), on baresip's.
    pub fn relay(&self) -> (u16, u16) {
        (self.base + 34, self.base + 36)
    }
    pub fn baresip(&self) -> BaresipPorts {
        BaresipPorts {
            sip: self.base + 30,
            control: self.base + 33,
            rtp: (self.base + 40, self.base + 49),
        }
    }
    pub fn rtp_range(&self) -> String {
        format!("{}-{}", self.base + 50, self.base + 99)
    }
}

fn port_free(port: u16) -> bool {
    UdpSocket::bind((LOCALHOST, port)).is_ok() && TcpListener::bind((LOCALHOST, port)).is_ok()
}

#[derive(Debug, Clone, Copy)]
pub struct SippPorts {
    pub sip: u16,
    pub media: u16,
    pub control: u16,
}

#[derive(Debug, Clone, Copy)]
pub struct BaresipPorts {
    pub sip: u16,
    pub control: u16,
    pub rtp: (u16, u16),
}

// --- child processes --------------------------------------------------------------------------

/// A child process killed and reaped on drop.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit code if it has exited (-1 for a signal).
    pub fn exited(&mut self) -> Option<i32> {
        match self.child.try_wait() {
            Ok(Some(s)) => Some(s.code().unwrap_or(-1)),
            _ => None,
        }
    }

    /// Waits at most `limit` for the exit code; None (and the process killed) on timeout.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(code) = self.exited() {
                return Some(code);
            }
            if Instant::now() >= deadline {
                self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Lines from a child's output, each with the instant the test read it.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<(Instant, String)>>>);

impl Lines {
    /// Reads `from` line by line on a thread (ANSI colours removed), also appending to `copy`.
    fn follow(from: impl Read + Send + 'static, copy: PathBuf) -> Lines {
        let lines = Lines::default();
        let sink = lines.0.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&copy).ok();
            let mut reader = BufReader::new(from);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = strip_ansi(&String::from_utf8_lossy(&buf))
                            .trim_end()
                            .to_string();
                        if let Some(f) = file.as_mut() {
                            let _ = writeln!(f, "{line}");
                        }
                        sink.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((Instant::now(), line));
                    }
                }
            }
        });
        lines
    }

    pub fn snapshot(&self) -> Vec<(Instant, String)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn text(&self) -> String {
        self.snapshot()
            .into_iter()
            .map(|(_, l)| l)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The first line containing every one of `needles`.
    pub fn find(&self, needles: &[&str]) -> Option<(Instant, String)> {
        self.snapshot()
            .into_iter()
            .find(|(_, l)| needles.iter().all(|n| l.contains(n)))
    }

    pub fn find_all(&self, needles: &[&str]) -> Vec<(Instant, String)> {
        self.snapshot()
            .into_iter()
            .filter(|(_, l)| needles.iter().all(|n| l.contains(n)))
            .collect()
    }

    /// Waits for a line containing every one of `needles`.
    pub fn wait_for(&self, needles: &[&str], limit: Duration) -> Option<(Instant, String)> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(hit) = self.find(needles) {
                return Some(hit);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The last `n` lines of a text, for failure messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// --- Humanline ----------------------------------------------------------------------------------

/// `humanline serve` on a port block, logging at info (debug for the call driver, which names
/// the prompts played) to a thread that timestamps each line.
pub struct Server {
    pub proc: Proc,
    pub log: Lines,
    pub ports: Ports,
    pub log_file: PathBuf,
    /// Its `--data-dir` (the ledger and the users).
    pub data_dir: PathBuf,
    /// The supervisor `api_get` logs in as, once made.
    supervisor: Mutex<Option<Login>>,
}

impl Server {
    pub fn start(ports: Ports, dir: &Path, agents: &[String]) -> Server {
        Server::start_with(ports, dir, agents, &[])
    }

    /// With more `serve` flags (`--trunk`, `--config`, ...). The ledger lives in `dir/data`, so
    /// a server started again on the same `dir` finds the promises of the one before.
    pub fn start_with(ports: Ports, dir: &Path, agents: &[String], extra: &[String]) -> Server {
        Server::start_inner(ports, dir, agents, extra, &[], true)
    }

    /// With the default set-up's speech: each language's own model from the prompts'
    /// `[speech]` (no `--model`, `$HUMANLINE_MODEL` not passed on) and the default decode
    /// threads. Hold [`speech_lock`].
    pub fn start_with_language_models(ports: Ports, dir: &Path, agents: &[String]) -> Server {
        Server::start_inner(ports, dir, agents, &[], &[], false)
    }

    /// Run through `wrapper` (e.g. `ip netns exec NS`). The HTTP listener is then out of the
    /// test's reach, so readiness is the log line only.
    pub fn start_wrapped(
        ports: Ports,
        dir: &Path,
        agents: &[String],
        extra: &[String],
        wrapper: &[String],
    ) -> Server {
        Server::start_inner(ports, dir, agents, extra, wrapper, true)
    }

    fn start_inner(
        ports: Ports,
        dir: &Path,
        agents: &[String],
        extra: &[String],
        wrapper: &[String],
        one_model: bool,
    ) -> Server {
        let data = dir.join("data");
        // A restarted server keeps the earlier one's log: humanline.log, humanline.2.log, ...
        let log_file = (1..)
            .map(|n| match n {
                1 => dir.join("humanline.log"),
                n => dir.join(format!("humanline.{n}.log")),
            })
            .find(|p| !p.exists())
            .expect("a free log name");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(server_bin());
                c
            }
            None => Command::new(server_bin()),
        };
        cmd.arg("serve")
            .arg("--sip-listen")
            .arg(ports.sip_addr().to_string())
            .arg("--http-listen")
            .arg(format!("{LOCALHOST}:{}", ports.http()))
            .arg("--data-dir")
            .arg(&data);
        // The block's RTP ports, unless the test narrows them.
        if !extra.iter().any(|a| a == "--rtp-ports") {
            cmd.arg("--rtp-ports").arg(ports.rtp_range());
        }
        if one_model {
            cmd.arg("--model").arg(model_path());
            // Two tests run at once on CI's 2 cores: one thread per decode keeps each server's
            // speech from spin-waiting on the other's cores.
            cmd.args(["--decode-threads", "1"]);
        } else {
            // The default set-up, decode threads included (the cores for one decoder): the
            // test holds the speech lock, so no other test's speech shares the cores.
            cmd.env_remove("HUMANLINE_MODEL");
        }
        // The shipped prompts, unless the test brings its own.
        if !extra.iter().any(|a| a == "--prompts") {
            cmd.arg("--prompts").arg(prompts_dir());
        }
        for a in agents {
            cmd.arg("--agent").arg(a);
        }
        cmd.args(extra);
        cmd.env("HUMANLINE_LOG", "info,humanline::server::call=debug")
            .env("NO_COLOR", "1")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut proc = Proc::spawn("humanline", &mut cmd);
        let stderr = proc.take_stderr().expect("stderr piped");
        let log = Lines::follow(stderr, log_file.clone());
        let mut server = Server {
            proc,
            log,
            ports,
            log_file,
            data_dir: data,
            supervisor: Mutex::new(None),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if server.log.find(&["humanline: ready"]).is_some() {
                break;
            }
            if let Some(code) = server.proc.exited() {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "humanline serve exited ({code}) before it was ready:\n{}",
                    server.log.text()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "humanline serve not ready within 60 s:\n{}",
                    server.log.text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if wrapper.is_empty() {
            let (status, body) = server.get("/healthz");
            assert_eq!(status, 200, "/healthz right after ready: {body}");
        }
        server
    }

    /// GETs `path` as `login` until `ok` holds for its JSON (Err: the last answer).
    pub fn json_until(
        &self,
        login: &Login,
        path: &str,
        limit: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, serde_json::Value> {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.request("GET", path, &[("Cookie", &login.cookie)], "");
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            if r.status == 200 && ok(&v) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(v);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.ports.http(), path).unwrap_or_else(|e| (0, format!("GET {path} failed: {e}")))
    }

    /// `humanline users add` on this server's data (it reads users as they are now).
    pub fn add_user(&self, name: &str, role: &str, password: &str) {
        add_user(&self.data_dir, name, role, password);
    }

    /// A change as Humanline's own page makes it: POST with the session cookie, the CSRF
    /// token, Humanline's origin and a JSON body.
    pub fn change(&self, login: &Login, path: &str, body: &str) -> HttpReply {
        self.change_with("POST", login, path, body)
    }

    /// [`Server::change`] with another method (`DELETE`).
    pub fn change_with(&self, method: &str, login: &Login, path: &str, body: &str) -> HttpReply {
        let origin = format!("http://{LOCALHOST}:{}", self.ports.http());
        self.request(
            method,
            path,
            &[
                ("Cookie", &login.cookie),
                ("Origin", &origin),
                ("X-CSRF-Token", &login.csrf),
                ("Content-Type", "application/json"),
            ],
            body,
        )
    }

    /// A WAV posted as Humanline's own page posts it (session, CSRF token, origin), answered
    /// within a minute (decoding speech on a busy machine).
    pub fn send_wav(&self, login: &Login, path: &str, wav: &[u8]) -> HttpReply {
        let origin = format!("http://{LOCALHOST}:{}", self.ports.http());
        http_request_bytes(
            self.ports.http(),
            "POST",
            path,
            &[
                ("Cookie", &login.cookie),
                ("Origin", &origin),
                ("X-CSRF-Token", &login.csrf),
                ("Content-Type", "audio/wav"),
            ],
            wav,
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("POST {path} failed: {e}"))
    }

    /// `POST /login`; panics unless it succeeds.
    pub fn login(&self, name: &str, password: &str) -> Login {
        let r = self.request(
            "POST",
            "/login",
            &[("Content-Type", "application/json")],
            &login_body(name, password),
        );
        assert_eq!(r.status, 200, "login as {name}: {}", r.body);
        Login::from_reply(&r)
    }

    /// A request to this server's HTTP listener.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> HttpReply {
        http_request(self.ports.http(), method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} failed: {e}"))
    }

    /// A GET under `/api`, logged in as a supervisor made for the purpose.
    pub fn api_get(&self, path: &str) -> (u16, String) {
        let mut sup = self.supervisor.lock().unwrap_or_else(|p| p.into_inner());
        if sup.is_none() {
            self.add_user("test-supervisor", "supervisor", "supervisor-password");
            *sup = Some(self.login("test-supervisor", "supervisor-password"));
        }
        let login = sup.as_ref().expect("logged in");
        let r = self.request("GET", path, &[("Cookie", &login.cookie)], "");
        (r.status, r.body)
    }

    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "/metrics: {body}");
        body
    }

    /// The server is still running.
    pub fn assert_alive(&mut self) {
        if let Some(code) = self.proc.exited() {
            panic!(
                "humanline serve exited ({code}):\n{}",
                tail(&self.log.text(), 80)
            );
        }
    }

    /// Lines from the call driver and the queue, the useful part of the log for a failure.
    pub fn story(&self) -> String {
        let text = self.log.text();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("PartialTranscript") && !l.contains("rsipstack::transport"))
            .collect();
        tail(&lines.join("\n"), 120)
    }
}

/// Everything useful when a test fails: the server's story and each sipp's report.
pub fn context(server: &Server, peers: &[&Sipp]) -> String {
    let mut out = format!("--- humanline log (tail) ---\n{}\n", server.story());
    for p in peers {
        out.push_str(&p.report());
        out.push('\n');
    }
    out
}

/// How often speech recognition fell behind real time in this server's log. The server then
/// routes with reason `speech_unavailable` by design: on a saturated machine that caller went
/// to a person, it is not a failure to hear them.
/// Why a real-time speech measurement cannot mean anything on this machine now: its load
/// average is over twice its cores (other work takes the cores a caller's recognition needs;
/// CI running the suite two tests at a time stays well under it). `None` on a machine fit to
/// measure. Real-time tests still run then, and report instead of failing on the timing.
pub fn machine_overloaded() -> Option<String> {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let one: f64 = load
        .split_whitespace()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    (one > 2.0 * cores).then(|| format!("load average {} on {cores} cores", load.trim()))
}

pub fn recognition_behind(server: &Server) -> usize {
    server.log.find_all(&["recognition is behind"]).len()
        + server.log.find_all(&["slower than real time"]).len()
}

/// Whether a caller routed with `reason` was routed on their words (`want`), or, with
/// recognition behind real time, as `speech_unavailable` (printed as a NOTE).
pub fn routed_on_words_or_behind(server: &Server, test: &str, reason: &str, want: &str) -> bool {
    if reason == want {
        return true;
    }
    let behind = recognition_behind(server);
    if reason == "speech_unavailable" && behind > 0 {
        eprintln!(
            "NOTE {test}: speech recognition fell behind real time {behind} time(s) (loadavg {}): \
             routed as speech_unavailable, not on the words",
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        );
        return true;
    }
    false
}

/// The caller's sipp must end cleanly: no BYE from Humanline (that fails the scenario), no
/// timeout.
pub fn assert_sipp_ok(name: &str, code: Option<i32>, server: &Server, peers: &[&Sipp]) {
    assert_passed(
        code,
        &format!("{name} sipp did not complete cleanly"),
        || context(server, peers),
    );
}

/// A sipp scenario's exit `code` must be 0: else `what` went wrong, and `story()` (made only
/// then) shows the servers' and peers' side of it.
pub fn assert_passed(code: Option<i32>, what: &str, story: impl FnOnce() -> String) {
    if code != Some(0) {
        panic!("{what} (sipp exit {code:?})\n{}", story());
    }
}

/// The metric reaches `want` or more within `limit` (polled over HTTP).
pub fn metric_reaches(server: &Server, series: &str, want: f64, limit: Duration) -> bool {
    eventually(limit, || {
        metric(&server.metrics(), series).is_some_and(|v| v >= want)
    })
}

/// The metric falls to `want` or less within `limit` (polled over HTTP).
pub fn metric_falls_to(server: &Server, series: &str, want: f64, limit: Duration) -> bool {
    eventually(limit, || {
        metric(&server.metrics(), series).is_some_and(|v| v <= want)
    })
}

/// A minimal HTTP/1.1 GET (Connection: close): status and body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_request(port, "GET", path, &[], "").map(|r| (r.status, r.body))
}

/// An HTTP answer: status, headers (names lowercased) and body.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 request (Connection: close; Host is 127.0.0.1:PORT, Content-Length set
/// for a body). Chunked answers are not decoded (axum sends Content-Length for these).
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<HttpReply> {
    http_request_bytes(
        port,
        method,
        path,
        headers,
        body.as_bytes(),
        Duration::from_secs(10),
    )
}

/// [`http_request`] with a body of any bytes (a WAV), answered within `answer_within`.
pub fn http_request_bytes(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    answer_within: Duration,
) -> std::io::Result<HttpReply> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(answer_within))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {LOCALHOST}:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    req.extend_from_slice(body);
    // A refused request may be cut off before all of it is written: its answer is still read.
    let written = s.write_all(&req);
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    if raw.is_empty() {
        written?;
        read?;
    }
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
    Ok(HttpReply {
        status,
        headers,
        body: body.to_string(),
    })
}

/// A logged-in session: the `Cookie` header to send and the CSRF token for changes.
#[derive(Debug, Clone)]
pub struct Login {
    pub cookie: String,
    pub csrf: String,
    /// The whole Set-Cookie the server sent.
    pub set_cookie: String,
}

impl Login {
    pub fn from_reply(r: &HttpReply) -> Login {
        let set_cookie = r.header("set-cookie").unwrap_or_default().to_string();
        let cookie = set_cookie.split(';').next().unwrap_or_default().to_string();
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        Login {
            cookie,
            csrf: v["csrf"].as_str().unwrap_or_default().to_string(),
            set_cookie,
        }
    }
}

pub fn login_body(name: &str, password: &str) -> String {
    serde_json::json!({"name": name, "password": password}).to_string()
}

/// `humanline users ARGS... --data-dir DIR` with `stdin`.
pub fn users_command(data_dir: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_humanline"))
        .arg("users")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning humanline users");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("stdin");
    }
    child.wait_with_output().expect("humanline users")
}

/// `humanline users add NAME --role ROLE --data-dir DIR`, the password on stdin.
pub fn add_user(data_dir: &Path, name: &str, role: &str, password: &str) {
    let out = users_command(
        data_dir,
        &["add", name, "--role", role],
        &format!("{password}\n"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || stderr.contains("already exists"),
        "humanline users add {name}: {stderr}"
    );
}

// --- sipp ---------------------------------------------------------------------------------------

/// One sipp run (`-m 1`) on fixed ports, with its message and error logs in the test's folder.
pub struct Sipp {
    pub proc: Proc,
    pub name: String,
    dir: PathBuf,
}

pub struct SippRun<'a> {
    pub name: &'a str,
    /// Scenario file under tests/sipp/.
    pub scenario: &'a str,
    /// Placeholders written into the scenario (sipp does not substitute -key values inside
    /// exec attributes).
    pub vars: &'a [(&'a str, String)],
    /// The server to call (a UAC scenario), or None for a UAS.
    pub remote: Option<SocketAddr>,
    /// "u1" (UDP) or "t1" (TCP).
    pub transport: &'a str,
    pub ports: SippPorts,
    /// sipp's own limit for the whole run.
    pub timeout: Duration,
    /// Calls to handle before exiting (`-m`).
    pub calls: u32,
}

impl Sipp {
    pub fn start(dir: &Path, run: SippRun<'_>) -> Sipp {
        Sipp::start_wrapped(dir, run, &[])
    }

    /// Run through `wrapper` (e.g. `ip netns exec NS`).
    pub fn start_wrapped(dir: &Path, run: SippRun<'_>, wrapper: &[String]) -> Sipp {
        let template = std::fs::read_to_string(sipp_dir().join(run.scenario))
            .unwrap_or_else(|e| panic!("reading tests/sipp/{}: {e}", run.scenario));
        let mut text = template;
        for (k, v) in run.vars {
            text = text.replace(&format!("@{k}@"), v);
        }
        if let Some(p) = unfilled_placeholder(&text) {
            panic!(
                "scenario {} has an unfilled placeholder @{p}@",
                run.scenario
            );
        }
        let scenario = dir.join(format!("{}.xml", run.name));
        std::fs::write(&scenario, text).expect("write scenario");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg("sipp");
                c
            }
            None => Command::new("sipp"),
        };
        if let Some(r) = run.remote {
            cmd.arg(r.to_string());
        }
        cmd.arg("-sf")
            .arg(&scenario)
            .args(["-t", run.transport, "-i", LOCALHOST])
            .args(["-p", &run.ports.sip.to_string()])
            .args(["-mp", &run.ports.media.to_string()])
            .args(["-cp", &run.ports.control.to_string()])
            .args([
                "-m",
                &run.calls.max(1).to_string(),
                "-nostdin",
                "-timeout_error",
                "-trace_err",
                "-trace_msg",
            ])
            .args(["-timeout", &format!("{}s", run.timeout.as_secs().max(1))])
            .arg("-message_file")
            .arg(dir.join(format!("{}.msg", run.name)))
            .arg("-error_file")
            .arg(dir.join(format!("{}.err", run.name)))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join(format!("{}.stderr", run.name)))
                    .expect("stderr file"),
            );
        let proc = Proc::spawn(run.name, &mut cmd);
        Sipp {
            proc,
            name: run.name.to_string(),
            dir: dir.to_path_buf(),
        }
    }

    pub fn messages(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.msg", self.name))).unwrap_or_default()
    }

    pub fn report(&self) -> String {
        let read = |ext: &str| {
            std::fs::read_to_string(self.dir.join(format!("{}.{ext}", self.name)))
                .unwrap_or_default()
        };
        format!(
            "--- sipp {} stderr ---\n{}\n--- errors ---\n{}\n--- messages (tail) ---\n{}",
            self.name,
            tail(&read("stderr"), 20),
            tail(&read("err"), 40),
            tail(&self.messages(), 60)
        )
    }

    /// The first received request of this method, as text (header lines and body).
    pub fn received_request(&self, method: &str) -> Option<String> {
        first_request(&self.messages(), method)
    }
}

/// A caller (sipp, UAC, `caller_keys.xml`) calling `remote` from `from`: keys 0 (to a person)
/// after 1 s and `second` `second_after_ms` later, then hangs up `hold_ms` after that. Their
/// audio goes to and comes from `rtp_port` (a socket the test may own).
pub struct KeyingCaller<'a> {
    pub name: &'a str,
    pub from: &'a str,
    pub remote: SocketAddr,
    pub ports: SippPorts,
    pub rtp_port: u16,
    pub second: char,
    pub second_after_ms: u64,
    pub hold_ms: u64,
}

impl KeyingCaller<'_> {
    pub fn start(&self, dir: &Path) -> Sipp {
        Sipp::start(
            dir,
            SippRun {
                name: self.name,
                scenario: "caller_keys.xml",
                vars: &[
                    ("CALLER", self.from.to_string()),
                    ("RTP_PORT", self.rtp_port.to_string()),
                    ("KEY1", "0".into()),
                    ("KEY1_AFTER_MS", "1000".into()),
                    ("KEY2", self.second.to_string()),
                    ("KEY2_AFTER_MS", self.second_after_ms.to_string()),
                    ("HOLD_MS", self.hold_ms.to_string()),
                ],
                remote: Some(self.remote),
                transport: "u1",
                ports: self.ports,
                timeout: Duration::from_millis(1000 + self.second_after_ms + self.hold_ms)
                    + Duration::from_secs(20),
                calls: 1,
            },
        )
    }
}

pub fn agent_uri(port: u16) -> String {
    format!("sip:agent@{LOCALHOST}:{port}")
}

/// An agent's phone (sipp, UAS, `agent_answers.xml`) that answers and stays until Humanline
/// hangs up its leg.
pub fn answering_agent(dir: &Path, ports: Ports, transport: &str, timeout: Duration) -> Sipp {
    answering_agent_wrapped(dir, ports, transport, timeout, &[])
}

/// [`answering_agent`] run through `wrapper` (e.g. `ip netns exec NS`).
pub fn answering_agent_wrapped(
    dir: &Path,
    ports: Ports,
    transport: &str,
    timeout: Duration,
    wrapper: &[String],
) -> Sipp {
    Sipp::start_wrapped(
        dir,
        SippRun {
            name: "agent",
            scenario: "agent_answers.xml",
            vars: &[],
            remote: None,
            transport,
            ports: ports.agent_sipp(),
            timeout,
            calls: 1,
        },
        wrapper,
    )
}

/// An agent's phone (`agent_answers_unusable_sdp.xml`) whose 200 OK cannot carry audio
/// (`media` is its SDP media section); it completes only when ACKed and then sent BYE.
pub fn unusable_agent(dir: &Path, name: &str, ports: SippPorts, media: &str, calls: u32) -> Sipp {
    Sipp::start(
        dir,
        SippRun {
            name,
            scenario: "agent_answers_unusable_sdp.xml",
            vars: &[("MEDIA", media.to_string())],
            remote: None,
            transport: "u1",
            ports,
            timeout: Duration::from_secs(90),
            calls,
        },
    )
}

/// A caller (sipp, UAC, `caller_speaks.xml`) who streams `audio` and hangs up `hold_ms` after
/// starting it, calling `remote`.
pub fn speaking_caller(
    dir: &Path,
    ports: Ports,
    remote: SocketAddr,
    audio: &Path,
    hold_ms: u64,
    transport: &str,
) -> Sipp {
    speaking_caller_wrapped(dir, ports, remote, audio, hold_ms, transport, &[])
}

/// [`speaking_caller`] run through `wrapper` (e.g. `ip netns exec NS`).
pub fn speaking_caller_wrapped(
    dir: &Path,
    ports: Ports,
    remote: SocketAddr,
    audio: &Path,
    hold_ms: u64,
    transport: &str,
    wrapper: &[String],
) -> Sipp {
    Sipp::start_wrapped(
        dir,
        SippRun {
            name: "caller",
            scenario: "caller_speaks.xml",
            vars: &[
                ("AUDIO", audio.display().to_string()),
                ("HOLD_MS", hold_ms.to_string()),
            ],
            remote: Some(remote),
            transport,
            ports: ports.caller_sipp(),
            timeout: Duration::from_millis(hold_ms) + Duration::from_secs(40),
            calls: 1,
        },
        wrapper,
    )
}

/// RFC 4733 key 0 as sipp plays it (package sip-tester ships it).
pub const DTMF_0: &str = "/usr/share/sip-tester/dtmf_2833_0.pcap";

/// A caller (sipp, UAC) who streams silence, presses 0 after `dtmf_after_ms` (RFC 4733 from a
/// pcap, or SIP INFO), stays `hold_ms` more, and hangs up.
pub fn dtmf_caller(
    dir: &Path,
    ports: Ports,
    info: bool,
    dtmf_after_ms: u64,
    hold_ms: u64,
    transport: &str,
) -> Sipp {
    assert!(
        Path::new(DTMF_0).is_file() || info,
        "{DTMF_0} is missing (package sip-tester ships it)"
    );
    let silence = dir.join("silence.pcmu");
    silence_pcmu(&silence, 1.0);
    let mut vars = vec![
        ("AUDIO", silence.display().to_string()),
        ("DTMF_AFTER_MS", dtmf_after_ms.to_string()),
        ("HOLD_MS", hold_ms.to_string()),
    ];
    if info {
        vars.push(("DIGIT", "0".into()));
    } else {
        vars.push(("DTMF_PCAP", DTMF_0.into()));
    }
    Sipp::start(
        dir,
        SippRun {
            name: "caller",
            scenario: if info {
                "caller_info.xml"
            } else {
                "caller_dtmf.xml"
            },
            vars: &vars,
            remote: Some(ports.sip_addr()),
            transport,
            ports: ports.caller_sipp(),
            timeout: Duration::from_millis(dtmf_after_ms + hold_ms) + Duration::from_secs(25),
            calls: 1,
        },
    )
}

/// An `@NAME@` left in a scenario (SIP URIs have single `@`s between lowercase text).
fn unfilled_placeholder(text: &str) -> Option<String> {
    let parts: Vec<&str> = text.split('@').collect();
    parts
        .windows(2)
        .skip(1)
        .find(|w| !w[0].is_empty() && w[0].chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(|w| w[0].to_string())
}

/// Finds the first SIP request of `method` in a trace and returns it up to its end (the next
/// blank line after the body, or the next trace separator).
pub fn first_request(trace: &str, method: &str) -> Option<String> {
    let start = trace
        .find(&format!("\n{method} sip:"))
        .map(|i| i + 1)
        .or_else(|| trace.starts_with(&format!("{method} sip:")).then_some(0))?;
    let rest = &trace[start..];
    let end = ["\n----", "\n#\n", "\nUDP ", "\nTCP "]
        .iter()
        .filter_map(|sep| rest.find(sep))
        .min()
        .unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

/// A header's value in a SIP message (first occurrence, case-insensitive name).
pub fn header(msg: &str, name: &str) -> Option<String> {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    msg.lines().find_map(|l| {
        let lower = l.to_ascii_lowercase();
        lower
            .starts_with(&prefix)
            .then(|| l[prefix.len()..].trim().to_string())
    })
}

// --- baresip ------------------------------------------------------------------------------------

/// A baresip phone (auto-answer, PCMU) with a SIP trace (`-s`) on stdout, the sndfile module
/// recording what it hears (`*-dec.wav`) and sends (`*-enc.wav`), and ctrl_tcp for commands.
pub struct Baresip {
    pub proc: Proc,
    pub dir: PathBuf,
    pub rec: PathBuf,
    pub trace: PathBuf,
    pub ports: BaresipPorts,
    pub user: String,
}

impl Baresip {
    /// `play` is what it sends (a WAV; baresip hangs up when it ends, so make it long);
    /// it quits by itself after `run_for`.
    pub fn start(
        dir: &Path,
        name: &str,
        user: &str,
        ports: BaresipPorts,
        play: &Path,
        run_for: Duration,
    ) -> Baresip {
        let account = format!(
            "<sip:{user}@{LOCALHOST}:{}>;regint=0;answermode=auto;audio_codecs=PCMU",
            ports.sip
        );
        Baresip::start_with_account(dir, name, user, &account, ports, play, run_for)
    }

    /// A phone that registers with Humanline (`registrar`) as `user` with `password`
    /// (digest authentication), every minute, and answers what it is called with.
    #[allow(clippy::too_many_arguments)]
    pub fn start_registered(
        dir: &Path,
        name: &str,
        user: &str,
        password: &str,
        registrar: SocketAddr,
        ports: BaresipPorts,
        play: &Path,
        run_for: Duration,
    ) -> Baresip {
        let account = format!(
            "<sip:{user}@{registrar}>;auth_pass={password};regint=60;answermode=auto;audio_codecs=PCMU"
        );
        Baresip::start_with_account(dir, name, user, &account, ports, play, run_for)
    }

    /// With the `accounts` line given.
    fn start_with_account(
        dir: &Path,
        name: &str,
        user: &str,
        account: &str,
        ports: BaresipPorts,
        play: &Path,
        run_for: Duration,
    ) -> Baresip {
        let home = dir.join(name);
        let rec = home.join("rec");
        std::fs::create_dir_all(&rec).expect("baresip dirs");
        let config = format!(
            "sip_listen {LOCALHOST}:{sip}\n\
             net_interface {LOCALHOST}\n\
             rtp_ports {lo}-{hi}\n\
             audio_source aufile,{play}\n\
             audio_player aubridge,nil\n\
             snd_path {rec}\n\
             module_path /usr/lib/baresip/modules\n\
             module g711.so\n\
             module sndfile.so\n\
             module aufile.so\n\
             module aubridge.so\n\
             module account.so\n\
             module_app menu.so\n\
             module ctrl_tcp.so\n\
             ctrl_tcp_listen {LOCALHOST}:{ctrl}\n",
            sip = ports.sip,
            lo = ports.rtp.0,
            hi = ports.rtp.1,
            play = play.display(),
            rec = rec.display(),
            ctrl = ports.control,
        );
        std::fs::write(home.join("config"), config).expect("baresip config");
        std::fs::write(home.join("accounts"), format!("{account}\n")).expect("baresip accounts");
        let trace = home.join("trace.log");
        let mut cmd = Command::new("baresip");
        cmd.arg("-f")
            .arg(&home)
            .arg("-s")
            .arg("-t")
            .arg(run_for.as_secs().max(1).to_string())
            .current_dir(&home)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&trace).expect("trace file"))
            .stderr(std::fs::File::create(home.join("stderr.log")).expect("stderr file"));
        let proc = Proc::spawn(name, &mut cmd);
        let mut phone = Baresip {
            proc,
            dir: home,
            rec,
            trace,
            ports,
            user: user.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let t = phone.trace_text();
            if t.contains("baresip is ready") {
                assert!(
                    t.contains("Populated 1 account"),
                    "baresip did not load its account:\n{t}"
                );
                break;
            }
            if let Some(code) = phone.proc.exited() {
                panic!("baresip exited ({code}) before it was ready:\n{t}");
            }
            if Instant::now() >= deadline {
                panic!("baresip not ready within 20 s:\n{t}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        phone
    }

    pub fn uri(&self) -> String {
        format!("sip:{}@{LOCALHOST}:{}", self.user, self.ports.sip)
    }

    pub fn trace_text(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(
            &std::fs::read(&self.trace).unwrap_or_default(),
        ))
    }

    pub fn wait_trace(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.trace_text().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn control(&self) -> Ctrl {
        Ctrl::connect(self.ports.control)
    }

    /// The recording of what it heard (sndfile's `*-dec.wav`).
    pub fn heard(&self) -> Option<PathBuf> {
        std::fs::read_dir(&self.rec)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
    }
}

/// baresip's ctrl_tcp: netstring-framed JSON commands, events read on a thread.
pub struct Ctrl {
    stream: TcpStream,
    events: Arc<Mutex<Vec<(Instant, serde_json::Value)>>>,
}

impl Ctrl {
    pub fn connect(port: u16) -> Ctrl {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => panic!("baresip ctrl_tcp on {addr}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let mut reader = stream.try_clone().expect("clone ctrl stream");
        std::thread::spawn(move || {
            let mut buf: Vec<u8> = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                // netstrings: "<len>:<payload>,"
                while let Some(colon) = buf.iter().position(|&b| b == b':') {
                    let Some(len) = std::str::from_utf8(&buf[..colon])
                        .ok()
                        .and_then(|s| s.trim().parse::<usize>().ok())
                    else {
                        buf.clear();
                        break;
                    };
                    if buf.len() < colon + 1 + len + 1 {
                        break;
                    }
                    let payload = buf[colon + 1..colon + 1 + len].to_vec();
                    buf.drain(..colon + 1 + len + 1);
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&payload) {
                        sink.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((Instant::now(), v));
                    }
                }
            }
        });
        Ctrl { stream, events }
    }

    pub fn command(&mut self, command: &str, params: &str) {
        let body = serde_json::json!({ "command": command, "params": params, "token": command })
            .to_string();
        let framed = format!("{}:{},", body.len(), body);
        self.stream
            .write_all(framed.as_bytes())
            .expect("ctrl_tcp write");
    }

    pub fn events(&self) -> Vec<(Instant, serde_json::Value)> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn event(&self, kind: &str) -> Option<(Instant, serde_json::Value)> {
        self.events().into_iter().find(|(_, v)| v["type"] == kind)
    }

    pub fn wait_event(&self, kind: &str, limit: Duration) -> Option<(Instant, serde_json::Value)> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(e) = self.event(kind) {
                return Some(e);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn describe(&self) -> String {
        self.events()
            .iter()
            .map(|(_, v)| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

// --- audio ----------------------------------------------------------------------------------------

pub enum Part<'a> {
    Say(&'a str),
    /// Said by this espeak-ng voice ("nl" for Dutch).
    SayAs(&'a str, &'a str),
    Silence(f32),
}

fn run_tool(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Speech and pauses as an 8 kHz 16-bit mono WAV (`NAME.wav`) and as the headerless mu-law
/// sipp streams (`NAME.pcmu`). Returns the .pcmu path and the length in seconds.
pub fn caller_audio(dir: &Path, name: &str, parts: &[Part<'_>]) -> (PathBuf, f32) {
    let mut pieces = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let piece = dir.join(format!("{name}.{i}.wav"));
        match part {
            Part::Say(text) | Part::SayAs(_, text) => {
                let voice = match part {
                    Part::SayAs(voice, _) => voice,
                    _ => "en-us",
                };
                let raw = dir.join(format!("{name}.{i}.espeak.wav"));
                run_tool(
                    Command::new("espeak-ng")
                        .args(["-v", voice, "-s", "145", "-w"])
                        .arg(&raw)
                        .arg(text),
                );
                run_tool(
                    Command::new("sox")
                        .arg(&raw)
                        .args(["-r", "8000", "-c", "1", "-b", "16"])
                        .arg(&piece),
                );
            }
            Part::Silence(secs) => silence_wav(&piece, *secs),
        }
        pieces.push(piece);
    }
    let wav = dir.join(format!("{name}.wav"));
    if pieces.len() == 1 {
        std::fs::copy(&pieces[0], &wav).expect("copy wav");
    } else {
        run_tool(Command::new("sox").args(&pieces).arg(&wav));
    }
    let pcmu = dir.join(format!("{name}.pcmu"));
    run_tool(
        Command::new("sox")
            .arg(&wav)
            .args([
                "-t", "raw", "-e", "mu-law", "-b", "8", "-r", "8000", "-c", "1",
            ])
            .arg(&pcmu),
    );
    let secs = std::fs::metadata(&pcmu).expect("pcmu").len() as f32 / 8000.0;
    (pcmu, secs)
}

/// Silence as an 8 kHz 16-bit mono WAV.
pub fn silence_wav(path: &Path, secs: f32) {
    run_tool(
        Command::new("sox")
            .args(["-n", "-r", "8000", "-c", "1", "-b", "16"])
            .arg(path)
            .args(["trim", "0", &format!("{secs:.3}")]),
    );
}

/// Silence as headerless mu-law for sipp.
pub fn silence_pcmu(path: &Path, secs: f32) {
    run_tool(
        Command::new("sox")
            .args([
                "-n", "-r", "8000", "-c", "1", "-t", "raw", "-e", "mu-law", "-b", "8",
            ])
            .arg(path)
            .args(["trim", "0", &format!("{secs:.3}")]),
    );
}

/// A 16-bit PCM WAV as samples in [-1, 1] (first channel) and its rate. Reads to the end of
/// the file whatever the header says, so a recording still being written is readable.
pub fn read_wav(path: &Path) -> (Vec<f32>, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE",
        "{} is not a WAV",
        path.display()
    );
    let mut pos = 12;
    let (mut channels, mut rate, mut bits) = (1u16, 8000u32, 16u16);
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let body = pos + 8;
        if id == b"fmt " && body + 16 <= bytes.len() {
            channels = u16::from_le_bytes([bytes[body + 2], bytes[body + 3]]);
            rate = u32::from_le_bytes(bytes[body + 4..body + 8].try_into().unwrap());
            bits = u16::from_le_bytes([bytes[body + 14], bytes[body + 15]]);
        } else if id == b"data" {
            assert_eq!(bits, 16, "{}: only 16-bit PCM is read", path.display());
            let frame = 2 * channels.max(1) as usize;
            let samples = bytes[body..]
                .chunks_exact(frame)
                .map(|f| i16::from_le_bytes([f[0], f[1]]) as f32 / 32768.0)
                .collect();
            return (samples, rate);
        }
        pos = body + len + (len & 1);
    }
    panic!("{}: no data chunk", path.display());
}

/// RMS of `samples[from..from+len]` in seconds (clamped to the recording).
pub fn rms(samples: &[f32], rate: u32, from: f32, len: f32) -> f32 {
    let a = ((from.max(0.0) * rate as f32) as usize).min(samples.len());
    let b = (((from.max(0.0) + len) * rate as f32) as usize).min(samples.len());
    if b <= a {
        return 0.0;
    }
    let sum: f64 = samples[a..b]
        .iter()
        .map(|s| (*s as f64) * (*s as f64))
        .sum();
    ((sum / (b - a) as f64).sqrt()) as f32
}

/// The RMS of every `win`-second window, for failure messages and loudness checks.
pub fn envelope(samples: &[f32], rate: u32, win: f32) -> Vec<f32> {
    let n = (samples.len() as f32 / (win * rate as f32)).ceil() as usize;
    (0..n)
        .map(|i| rms(samples, rate, i as f32 * win, win))
        .collect()
}

pub fn describe_envelope(env: &[f32], win: f32) -> String {
    env.iter()
        .enumerate()
        .map(|(i, r)| format!("{:.1}s:{:.4}", i as f32 * win, r))
        .collect::<Vec<_>>()
        .join(" ")
}

// --- misc -------------------------------------------------------------------------------------------

/// The value of a Prometheus sample line (`name{labels} value`), if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// Fails with `msg` unless `cond` becomes true within `limit`.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// --- RTP capture ------------------------------------------------------------------------------

/// Packets as they arrived: (arrival, samples at 8 kHz).
type Arrivals = Arc<Mutex<Vec<(Instant, Vec<i16>)>>>;

/// A caller's media port played by the test itself: records the PCMU audio Humanline sends
/// there, each packet with the instant it arrived.
pub struct RtpListener {
    pub port: u16,
    packets: Arrivals,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl RtpListener {
    /// Listens on 127.0.0.1:`port` for at most `limit`.
    pub fn start(port: u16, limit: Duration) -> RtpListener {
        let sock = UdpSocket::bind((LOCALHOST, port)).expect("RTP listener port");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let packets: Arrivals = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sink, halt) = (packets.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            let mut buf = [0u8; 2048];
            while Instant::now() < deadline && !halt.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, _)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(p) = humanline::media::rtp::parse(&buf[..n]) else {
                    continue;
                };
                if p.header.payload_type != 0 {
                    continue;
                }
                let samples = humanline::media::Codec::Pcmu.decode(p.payload);
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((Instant::now(), samples));
            }
        });
        RtpListener {
            port,
            packets,
            stop,
        }
    }

    /// Every packet so far: (arrival, samples at 8 kHz).
    pub fn packets(&self) -> Vec<(Instant, Vec<i16>)> {
        self.packets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until packets have arrived for `span` after the first one (or `limit` passed).
    pub fn wait_for_span(&self, span: Duration, limit: Duration) -> bool {
        eventually(limit, || {
            let p = self.packets();
            match (p.first(), p.last()) {
                (Some((a, _)), Some((b, _))) => b.duration_since(*a) >= span,
                _ => false,
            }
        })
    }

    /// RMS (of full scale) of the audio in each `win` window from `from` to `to` after the
    /// first packet, by arrival time.
    pub fn loudness(&self, from: Duration, to: Duration, win: Duration) -> Vec<f32> {
        let p = self.packets();
        let Some((t0, _)) = p.first().map(|(t, s)| (*t, s.len())) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut start = from;
        while start + win <= to {
            let (a, b) = (t0 + start, t0 + start + win);
            let samples: Vec<f32> = p
                .iter()
                .filter(|(t, _)| *t >= a && *t < b)
                .flat_map(|(_, s)| s.iter().map(|v| *v as f32 / 32768.0))
                .collect();
            out.push(rms(&samples, 8000, 0.0, samples.len() as f32 / 8000.0));
            start += win;
        }
        out
    }
}

impl Drop for RtpListener {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

// --- a real browser ---------------------------------------------------------------------------

/// tests/browser: the playwright-core scripts (pinned by its lockfile).
pub fn browser_dir() -> PathBuf {
    repo().join("tests/browser")
}

/// True when Chromium, node and the pinned playwright-core are here. Otherwise SKIP, or fail
/// when `CI=true` (scripts/setup.sh installs them).
pub fn browser_available(test: &str) -> bool {
    let mut missing = Vec::new();
    if !Path::new("/usr/bin/chromium").is_file() {
        missing.push("/usr/bin/chromium (package chromium)".to_string());
    }
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !node {
        missing.push("node (package nodejs)".into());
    }
    if !browser_dir().join("node_modules/playwright-core").is_dir() {
        missing.push("tests/browser/node_modules (npm ci in tests/browser)".into());
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: missing {}", missing.join(", "));
    let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    if ci {
        panic!("{msg} (CI=true: the test environment must provide them)");
    }
    eprintln!("SKIP {msg}");
    false
}

/// One browser at a time on a small machine.
pub fn browser_lock() -> std::sync::MutexGuard<'static, ()> {
    static BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());
    BROWSER.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a test that drives Chromium holds while it runs: the browser to itself and, when it
/// decodes speech, the speech models too (taken in that order, always).
pub struct BrowserTest {
    _browser: MutexGuard<'static, ()>,
    _speech: Option<MutexGuard<'static, ()>>,
}

/// `None` (the test skips, saying why) without the SIP peers or the browser; else the test
/// holds the browser (and with `speech` the speech models) until it ends.
pub fn browser_test(test: &str, speech: bool) -> Option<BrowserTest> {
    if !peers_available(test) || !browser_available(test) {
        return None;
    }
    Some(BrowserTest {
        _browser: browser_lock(),
        _speech: speech.then(speech_lock),
    })
}
