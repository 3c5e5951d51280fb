//! The operator's side of a running server (issue 13): prompt files that are not the running
//! flow are said on `/healthz` and in `/metrics`, with each problem at its line.
//!
//! Run: `cargo test --release --test operator -- --test-threads=2`.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Polls `/healthz` until `pred` holds on its body (at most `limit`).
fn healthz_until(server: &Server, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = server.get("/healthz");
        assert_eq!(status, 200, "/healthz: {body}");
        if pred(&body) || Instant::now() >= deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 13, item 5: `/healthz` stayed "ok" while the files on disk were broken (the reload
/// refused them and the old flow ran on, silently until the next restart failed). Now it says
/// the files are not the running flow and why, at the file and line, until they are fixed.
#[test]
fn healthz_says_when_the_prompt_files_on_disk_are_not_the_running_flow() {
    let (dir, server) = server_on_shipped_flow(0, "healthz-prompts");
    let d = dir.path();
    assert_eq!(server.get("/healthz"), (200, "ok\n".to_string()));
    assert!(
        server
            .metrics()
            .contains("humanline_prompts_disk_problems 0"),
        "{}",
        server.metrics()
    );

    // The operator changes the greeting's text but not its recording.
    let en = d.join("prompts/en.toml");
    let shipped = std::fs::read_to_string(&en).unwrap();
    let changed = shipped.replace("Welcome to Humanline.", "Hello from Humanline.");
    assert_ne!(changed, shipped);
    std::fs::write(&en, &changed).unwrap();
    let line = changed
        .lines()
        .position(|l| l.starts_with("text = \"Hello from Humanline."))
        .unwrap()
        + 1;
    let body = healthz_until(&server, Duration::from_secs(15), |b| b != "ok\n");
    assert!(
        body.starts_with("prompts on disk not in force")
            && body.contains(&format!("en.toml:{line}:8: prompt `greeting` (en)")),
        "{body}\n{}",
        server.story()
    );
    assert!(
        metric_reaches(
            &server,
            "humanline_prompts_disk_problems",
            1.0,
            Duration::from_secs(2)
        ),
        "{}",
        server.metrics()
    );
    assert!(
        server.log.find(&["prompts not reloaded"]).is_some(),
        "{}",
        server.story()
    );

    // Put back: the files are the running flow again.
    std::fs::write(&en, &shipped).unwrap();
    let body = healthz_until(&server, Duration::from_secs(15), |b| b == "ok\n");
    assert_eq!(body, "ok\n", "{}", server.story());
    assert!(
        metric_falls_to(
            &server,
            "humanline_prompts_disk_problems",
            0.0,
            Duration::from_secs(2)
        ),
        "{}",
        server.metrics()
    );
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn get_as(server: &Server, login: &Login, path: &str) -> HttpReply {
    server.request("GET", path, &[("Cookie", &login.cookie)], "")
}

/// The operator and the supervisor of these tests: name and password.
const OLGA: (&str, &str) = ("olga", "operator password 1");
const SAM: (&str, &str) = ("sam", "supervisor password 1");

/// A server on a copy of the shipped flow in a folder of its own (the tests change those
/// files), with Olga (operator) and Sam (supervisor) as its users.
fn server_on_shipped_flow(index: u16, name: &str) -> (tempfile::TempDir, Server) {
    let ports = Ports::claim(index);
    let dir = tempdir(name);
    let prompts = copy_of_shipped_flow(dir.path());
    let server = Server::start_with(ports, dir.path(), &[], &prompts);
    server.add_user(OLGA.0, "operator", OLGA.1);
    server.add_user(SAM.0, "supervisor", SAM.1);
    (dir, server)
}

fn log_in(server: &Server, (name, password): (&str, &str)) -> Login {
    server.login(name, password)
}

/// A check of the draft as it stands (no text changed) stages no recording: no upload waits.
fn assert_check_stages_no_recording(server: &Server, operator: &Login) {
    let r = server.change(operator, "/api/flow/check", "{\"files\": {}}");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        json(&r.body)["recorded"],
        serde_json::json!([]),
        "{}",
        r.body
    );
}

/// A SIP caller who listens for a few seconds: the greeting is played to it.
fn listening_call(server: &Server, d: &std::path::Path, name: &'static str) -> Sipp {
    listening_call_on(server, d, name, server.ports.caller_sipp(), 1500)
}

/// A SIP caller on `sipp` ports who says nothing for `quiet_ms`, then presses 5 and hangs up.
fn listening_call_on(
    server: &Server,
    d: &std::path::Path,
    name: &'static str,
    sipp: SippPorts,
    quiet_ms: u64,
) -> Sipp {
    Sipp::start(
        d,
        SippRun {
            name,
            scenario: "caller_listens.xml",
            vars: &[
                ("LISTEN_PORT", (sipp.media + 4).to_string()),
                ("DTMF_AFTER_MS", quiet_ms.to_string()),
                ("HOLD_MS", "500".into()),
                ("DIGIT", "5".into()),
            ],
            remote: Some(server.ports.sip_addr()),
            transport: "u1",
            ports: sipp,
            timeout: Duration::from_secs(30) + Duration::from_millis(quiet_ms),
            calls: 1,
        },
    )
}

/// The last greeting played (the server's log says its text) contains `text`.
fn assert_last_greeting_played(server: &Server, text: &str) {
    let played: Vec<String> = server
        .log
        .find_all(&["play", "prompt=greeting"])
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert!(
        played.last().is_some_and(|l| l.contains(text)),
        "the last greeting played is not {text:?}: {played:?}\n{}",
        server.story()
    );
}

/// A new caller who listens until the call ends as the scenario expects (sipp exits 0).
fn call_to_the_end(server: &Server, d: &std::path::Path, name: &'static str) {
    let mut caller = listening_call(server, d, name);
    let code = caller.proc.wait(Duration::from_secs(30));
    assert_sipp_ok(name, code, server, &[&caller]);
}

/// What a new caller hears first, transcribed: the opening seconds of the audio Humanline sent
/// to the caller's media port (recorded by the test itself, not taken from the server's log),
/// decoded by `humanline transcribe` with the test model. Lower case.
fn greeting_heard(server: &Server, d: &std::path::Path, name: &'static str) -> String {
    let ear = RtpListener::start(
        server.ports.caller_sipp().media + 4,
        Duration::from_secs(40),
    );
    call_to_the_end(server, d, name);
    let packets = ear.packets();
    let Some(first) = packets.first().map(|(t, _)| *t) else {
        panic!("{name} received no audio\n{}", server.story());
    };
    // The greeting's first sentence ("Welcome to Humanline." / "Hello from Humanline.").
    let opening: Vec<f32> = packets
        .iter()
        .filter(|(t, _)| t.duration_since(first) < Duration::from_millis(2500))
        .flat_map(|(_, s)| s.iter().map(|v| *v as f32 / 32768.0))
        .collect();
    let wav = d.join(format!("{name}-heard.wav"));
    let bytes = humanline::speech::audio::encode_wav_mono(&opening, 8000).expect("a WAV");
    std::fs::write(&wav, bytes).expect("write the WAV");
    let out = std::process::Command::new(server_bin())
        .args(["transcribe", "--language", "en", "--model"])
        .arg(model_path())
        .arg(&wav)
        .output()
        .expect("humanline transcribe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    let heard = json(&line)["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no transcript: {line}"))
        .to_lowercase();
    eprintln!("{name} heard: {heard}");
    heard
}

/// Issue 13, item 4 through the API: an invalid draft is refused with its line and changes
/// nothing; only an operator may publish; a published greeting is recorded anew, on disk,
/// a version with its diff, and what the next call hears; rolling back restores the files
/// and the next call hears the old greeting; logins and changes are in the audit log.
#[test]
fn an_operator_publishes_a_checked_flow_and_rolls_it_back() {
    if !peers_available("an_operator_publishes_a_checked_flow_and_rolls_it_back") {
        return;
    }
    let (dir, server) = server_on_shipped_flow(1, "publish");
    let d = dir.path();
    let (olga, sam) = (log_in(&server, OLGA), log_in(&server, SAM));

    let r = get_as(&server, &olga, "/api/flow");
    assert_eq!(r.status, 200, "{}", r.body);
    let status = json(&r.body);
    let first = status["running"]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("the files the server started with are a version: {status}"));
    assert_eq!(status["disk"]["in_force"], true, "{status}");
    let en = status["files"]["en.toml"]
        .as_str()
        .expect("en.toml")
        .to_string();
    let settings = status["files"]["humanline.toml"]
        .as_str()
        .expect("humanline.toml")
        .to_string();

    // An invalid value: refused at its line, nothing changes.
    let bad = settings.replace("no_input_ms = 7000", "no_input_ms = 10");
    assert_ne!(bad, settings);
    let line = bad.lines().position(|l| l == "no_input_ms = 10").unwrap() + 1;
    let body = serde_json::json!({"files": {"humanline.toml": bad}}).to_string();
    let r = server.change(&olga, "/api/flow/publish", &body);
    assert_eq!(r.status, 422, "{}", r.body);
    let problems = json(&r.body)["problems"].clone();
    assert!(
        problems[0]["text"]
            .as_str()
            .is_some_and(|t| t.contains(&format!(
                "humanline.toml:{line}:15: timers.no_input_ms must be between 500"
            ))),
        "{problems}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("prompts/humanline.toml")).unwrap(),
        settings,
        "a refused draft changed the files"
    );

    // A supervisor may try, not publish.
    let new_en = en.replace("Welcome to Humanline.", "Hello from Humanline.");
    assert_ne!(new_en, en);
    let draft = serde_json::json!({"files": {"en.toml": new_en}, "message": "friendlier greeting"})
        .to_string();
    let r = server.change(&sam, "/api/flow/publish", &draft);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        std::fs::read_to_string(d.join("prompts/en.toml")).unwrap(),
        en
    );

    // A call in progress: it hears the greeting, then (saying nothing) the no-input
    // re-prompt, which the operator changes meanwhile.
    let mut before = listening_call_on(
        &server,
        d,
        "caller-before-publish",
        server.ports.spare_sipp(),
        20_000,
    );
    assert!(
        server
            .log
            .wait_for(&["play", "prompt=greeting"], Duration::from_secs(15))
            .is_some(),
        "the first call was not greeted\n{}",
        server.story()
    );
    let new_en = new_en.replace(
        "I didn't hear anything. Tell me how I can help",
        "Nothing heard yet. Tell me how I can help",
    );
    let draft = serde_json::json!({"files": {"en.toml": new_en}, "message": "friendlier greeting"})
        .to_string();

    // The operator publishes: the greeting is recorded again and is what new calls get.
    let r = server.change(&olga, "/api/flow/publish", &draft);
    let published_at = Instant::now();
    assert_eq!(r.status, 200, "{}\n{}", r.body, server.story());
    let published = json(&r.body);
    let second = published["version"].as_i64().expect("a version id");
    assert!(second > first, "{published}");
    assert!(
        published["recorded"].to_string().contains("en/greeting"),
        "{published}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("prompts/en.toml")).unwrap(),
        new_en
    );
    let noted = std::fs::read_to_string(d.join("audio/en/recordings.toml")).unwrap();
    assert!(
        noted.contains("\"greeting.wav\" = \"Hello from Humanline."),
        "{noted}"
    );
    assert_eq!(server.get("/healthz"), (200, "ok\n".to_string()));

    let r = get_as(&server, &sam, "/api/flow/versions");
    assert_eq!(r.status, 200, "{}", r.body);
    let versions = json(&r.body);
    let newest = &versions["versions"][0];
    assert_eq!(newest["id"], second, "{versions}");
    assert_eq!(newest["author"], "olga", "{versions}");
    assert_eq!(newest["message"], "friendlier greeting", "{versions}");
    let changes = newest["changes"].as_array().expect("changes");
    let en_change = changes
        .iter()
        .find(|c| c["path"] == "prompts/en.toml")
        .unwrap_or_else(|| panic!("en.toml in the diff: {versions}"));
    let lines = en_change["lines"].to_string();
    assert!(
        lines.contains("-")
            && lines.contains("Welcome to Humanline.")
            && lines.contains("Hello from Humanline."),
        "{lines}"
    );
    assert!(
        changes.iter().any(|c| c["path"] == "audio/en/greeting.wav"),
        "the new recording is in the version: {versions}"
    );

    let heard = greeting_heard(&server, d, "caller-after-publish");
    assert!(
        heard.contains("hello") && !heard.contains("welcome"),
        "the caller after the publish did not hear the new greeting: {heard}\n{}",
        server.story()
    );
    assert_last_greeting_played(&server, "Hello from Humanline.");
    // The call that started before keeps the flow it started with.
    let reprompt = server.log.wait_for(
        &["play", "prompt=reprompt_no_input"],
        Duration::from_secs(20),
    );
    let code = before.proc.wait(Duration::from_secs(30));
    assert_sipp_ok("caller-before-publish", code, &server, &[&before]);
    assert!(
        reprompt.as_ref().is_some_and(|(t, _)| *t > published_at),
        "the re-prompt came before the publish (the machine is slow?): {reprompt:?}"
    );
    assert!(
        reprompt
            .as_ref()
            .is_some_and(|(_, l)| l.contains("I didn't hear anything.")),
        "the call in progress did not keep its flow: {reprompt:?}\n{}",
        server.story()
    );

    // Roll back to the first version: the old files, and the old greeting for new calls.
    let body = serde_json::json!({"version": first}).to_string();
    let r = server.change(&sam, "/api/flow/rollback", &body);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = server.change(&olga, "/api/flow/rollback", &body);
    assert_eq!(r.status, 200, "{}\n{}", r.body, server.story());
    let third = json(&r.body)["version"].as_i64().expect("a version id");
    assert!(third > second);
    assert_eq!(
        std::fs::read_to_string(d.join("prompts/en.toml")).unwrap(),
        en
    );
    assert_eq!(
        std::fs::read(d.join("audio/en/greeting.wav")).unwrap(),
        std::fs::read(repo().join("audio/en/greeting.wav")).unwrap(),
        "the rolled-back greeting is the shipped recording"
    );
    let heard = greeting_heard(&server, d, "caller-after-rollback");
    assert!(
        heard.contains("welcome") && !heard.contains("hello"),
        "the caller after the roll back did not hear the old greeting: {heard}\n{}",
        server.story()
    );
    assert_last_greeting_played(&server, "Welcome to Humanline.");

    // The audit log: operators only; logins and every change.
    assert_eq!(get_as(&server, &sam, "/api/audit").status, 403);
    let r = get_as(&server, &olga, "/api/audit");
    assert_eq!(r.status, 200, "{}", r.body);
    let log = json(&r.body);
    let actions: Vec<(String, String)> = log["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["who"].as_str().unwrap_or_default().to_string(),
                e["action"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for want in [
        ("olga", "login"),
        ("sam", "login"),
        ("olga", "publish_refused"),
        ("olga", "publish"),
    ] {
        assert!(
            actions
                .iter()
                .any(|(w, a)| (w.as_str(), a.as_str()) == want),
            "{want:?} not in {actions:?}"
        );
    }
    assert!(
        log.to_string()
            .contains(&format!("roll back to version {first}")),
        "{log}"
    );
}

/// Issue 13, item 3 through the API: "try it" answers what a call would decide, for the
/// published flow and for a draft side by side.
#[test]
fn try_it_shows_an_escape_for_a_real_person_and_none_for_paying_a_bill() {
    let ports = Ports::claim(2);
    let dir = tempdir("try-it");
    let server = Server::start(ports, dir.path(), &[]);
    server.add_user(OLGA.0, "operator", OLGA.1);
    let olga = log_in(&server, OLGA);
    let try_it = |text: &str, files: serde_json::Value| {
        let body = serde_json::json!({"text": text, "files": files}).to_string();
        let r = server.change(&olga, "/api/flow/try", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        json(&r.body)
    };
    let t = try_it("I want a real person", serde_json::json!({}));
    assert_eq!(t["published"]["route"], "keyword", "{t}");
    assert!(
        t["published"]["escape"]["phrase"]
            .as_str()
            .is_some_and(|p| p.contains("person")),
        "{t}"
    );
    assert_eq!(t["draft"]["route"], "keyword", "{t}");
    let t = try_it("I want to pay my bill", serde_json::json!({}));
    assert!(t["published"]["route"].is_null(), "{t}");
    assert_eq!(t["published"]["topics"][0], "billing", "{t}");

    // A draft that makes "bill" an escape phrase decides otherwise; the published flow not.
    let (_, status) = server.api_get("/api/flow");
    let en = json(&status)["files"]["en.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let draft = en.replace("phrases = [\n", "phrases = [\n  \"pay my bill\",\n");
    assert_ne!(draft, en);
    let t = try_it(
        "I want to pay my bill",
        serde_json::json!({"en.toml": draft}),
    );
    assert!(t["published"]["route"].is_null(), "{t}");
    assert_eq!(t["draft"]["route"], "keyword", "{t}");
}

/// One phase of `tests/browser/operator.mjs` in Chromium: its JSON lines.
fn operator_in_browser(
    server: &Server,
    d: &std::path::Path,
    login: (&str, &str),
    phase: &str,
    text: &str,
) -> Vec<serde_json::Value> {
    use std::process::{Command, Stdio};
    let _one_browser = browser_lock();
    let base = format!("http://{LOCALHOST}:{}", server.ports.http());
    let out = d.join(format!("browser-{phase}.jsonl"));
    let err = d.join(format!("browser-{phase}.stderr"));
    let mut browser = Proc::spawn(
        "chromium operator",
        Command::new("node")
            .arg(browser_dir().join("operator.mjs"))
            .args([base.as_str(), login.0, login.1, phase, text])
            .current_dir(browser_dir())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("out"))
            .stderr(std::fs::File::create(&err).expect("err")),
    );
    let code = browser.wait(Duration::from_secs(150));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(
        code,
        Some(0),
        "the browser's {phase} failed: {lines:?}\n{}\n{}",
        tail(&std::fs::read_to_string(&err).unwrap_or_default(), 30),
        server.story()
    );
    lines
}

fn event<'a>(lines: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["event"] == name)
        .unwrap_or_else(|| panic!("no {name} in {lines:?}"))
}

/// Issue 13's test, in Chromium: a user without the operator role cannot publish; an invalid
/// value shows its error at the field and is not published; fixed, the changed greeting is
/// recorded again (and plays in the page), published, and what a new SIP call hears; "try it"
/// shows an escape for "I want a real person" and none for "I want to pay my bill"; rolling
/// back brings the old greeting to the next call.
#[test]
fn in_the_browser_an_operator_changes_the_greeting_publishes_and_rolls_back() {
    let test = "in_the_browser_an_operator_changes_the_greeting_publishes_and_rolls_back";
    if !peers_available(test) || !browser_available(test) {
        return;
    }
    let (dir, server) = server_on_shipped_flow(3, "operator-browser");
    let d = dir.path();
    let en = std::fs::read_to_string(d.join("prompts/en.toml")).unwrap();
    let new_greeting = "Hello from Humanline. You can say human at any time to reach a person. What can I do for you?";

    let refused = operator_in_browser(&server, d, SAM, "refused", "Hi.");
    let r = event(&refused, "publish_as_sam");
    assert!(
        r["ok"] == false
            && r["text"]
                .as_str()
                .is_some_and(|t| t.contains("operator role")),
        "{r}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("prompts/en.toml")).unwrap(),
        en
    );

    let settings = std::fs::read_to_string(d.join("prompts/humanline.toml")).unwrap();
    let line = settings
        .lines()
        .position(|l| l.starts_with("no_input_ms = "))
        .unwrap()
        + 1;
    let work = operator_in_browser(&server, d, OLGA, "publish", new_greeting);
    let p = event(&work, "field_problem");
    assert!(
        p["published"] == false
            && p["problem"].as_str().is_some_and(|t| t.contains(&format!(
                "humanline.toml:{line}:15: timers.no_input_ms must be between 500"
            ))),
        "the error is not at the field: {p}"
    );
    let listen = event(&work, "listen");
    assert!(
        listen["checked"] == true
            && listen["status"] == 200
            && listen["riff"] == "RIFF"
            && listen["src"]
                .as_str()
                .is_some_and(|s| s.contains("draft=true")),
        "the new recording cannot be heard in the page: {listen}"
    );
    let published = event(&work, "published");
    assert!(
        published["ok"] == true
            && published["text"]
                .as_str()
                .is_some_and(|t| t.contains("published: version")),
        "{published}"
    );
    assert!(
        std::fs::read_to_string(d.join("prompts/en.toml"))
            .unwrap()
            .contains(new_greeting)
    );
    let tries: Vec<_> = work.iter().filter(|l| l["event"] == "try").collect();
    assert_eq!(tries.len(), 2, "{work:?}");
    assert!(
        tries[0]["escape"] == true,
        "no escape for a real person: {}",
        tries[0]
    );
    assert!(
        tries[1]["escape"] == false
            && tries[1]["published"]
                .as_str()
                .is_some_and(|t| t.contains("billing")),
        "paying a bill is not an escape: {}",
        tries[1]
    );

    call_to_the_end(&server, d, "caller-after-publish");
    assert_last_greeting_played(&server, "Hello from Humanline.");

    let back = operator_in_browser(&server, d, OLGA, "rollback", "");
    let r = event(&back, "rolled_back");
    assert!(r["ok"] == true, "{r}");
    assert!(
        event(&back, "greeting")["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Welcome to Humanline.")),
        "{back:?}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("prompts/en.toml")).unwrap(),
        en
    );
    call_to_the_end(&server, d, "caller-after-rollback");
    assert_last_greeting_played(&server, "Welcome to Humanline.");
}

/// Runs `tests/browser/dashboard.mjs` in Chromium as `login` (in the background: the page is
/// watched while calls are made); its JSON lines go to `browser-dashboard-PHASE.jsonl`.
fn dashboard_in_browser(
    server: &Server,
    d: &std::path::Path,
    login: (&str, &str),
    args: &[&str],
) -> (Proc, std::path::PathBuf, std::path::PathBuf) {
    use std::process::{Command, Stdio};
    let base = format!("http://{LOCALHOST}:{}", server.ports.http());
    let out = d.join(format!("browser-dashboard-{}.jsonl", args[0]));
    let err = d.join(format!("browser-dashboard-{}.stderr", args[0]));
    let browser = Proc::spawn(
        "chromium dashboard",
        Command::new("node")
            .arg(browser_dir().join("dashboard.mjs"))
            .args([base.as_str(), login.0, login.1])
            .args(args)
            .current_dir(browser_dir())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("out"))
            .stderr(std::fs::File::create(&err).expect("err")),
    );
    (browser, out, err)
}

fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Issue 13, item 6: the live dashboard. Without a login `/api/dashboard` is refused and the
/// page sends the browser to the login; an agent is told it is not for them; a supervisor
/// lands on it after logging in, and while they watch (the page refreshes itself) a caller
/// who says "human" shows up in the routes-by-reason picture and in the time to route.
#[test]
fn a_supervisor_watches_the_dashboard_count_a_caller_who_asked_for_a_human() {
    let test = "a_supervisor_watches_the_dashboard_count_a_caller_who_asked_for_a_human";
    if !peers_available(test) || !browser_available(test) {
        return;
    }
    let ports = Ports::claim(4);
    let dir = tempdir("dashboard");
    let d = dir.path();
    let server = Server::start(ports, d, &[]);
    server.add_user(SAM.0, "supervisor", SAM.1);
    server.add_user("alex", "agent", "agent password 1");

    // Without a login: the data is refused, the page sends to the login and back.
    let r = server.request("GET", "/api/dashboard", &[], "");
    assert_eq!(r.status, 401, "{}", r.body);
    let r = server.request("GET", "/dashboard", &[], "");
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/login?next=/dashboard"));
    let alex = server.login("alex", "agent password 1");
    let r = get_as(&server, &alex, "/api/dashboard");
    assert_eq!(r.status, 403, "{}", r.body);
    let sam = log_in(&server, SAM);
    let r = get_as(&server, &sam, "/api/dashboard");
    assert_eq!(r.status, 200, "{}", r.body);
    let before = json(&r.body);
    assert!(before["routes"]["totals"]["keyword"].is_null(), "{before}");
    assert_eq!(before["calls_now"], 0, "{before}");
    assert_eq!(before["callbacks"]["by_state"]["escalated"], 0, "{before}");

    // Speech, then the browser: the order every test here takes them in.
    let _speech = speech_lock();
    let _one_browser = browser_lock();
    // An agent logging in at /dashboard is told why not.
    let (mut agent, out, err) =
        dashboard_in_browser(&server, d, ("alex", "agent password 1"), &["refused"]);
    let code = agent.wait(Duration::from_secs(120));
    let lines = json_lines(&out);
    assert_eq!(
        code,
        Some(0),
        "{lines:?}\n{}",
        tail(&std::fs::read_to_string(&err).unwrap_or_default(), 30)
    );
    let refused = event(&lines, "refused");
    assert!(
        refused["status"] == 403
            && refused["drawn"] == 0
            && refused["text"]
                .as_str()
                .is_some_and(|t| t.contains("for supervisors and operators; alex is an agent")),
        "{refused}"
    );

    // The supervisor watches while a caller asks for a human.
    let (mut watcher, out, err) = dashboard_in_browser(&server, d, SAM, &["watch", "any", "1"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let page = loop {
        let lines = json_lines(&out);
        if let Some(p) = lines.iter().find(|l| l["event"] == "page") {
            break p.clone();
        }
        let exited = watcher.exited();
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "the dashboard did not show (exit {exited:?}): {lines:?}\n{}",
            tail(&std::fs::read_to_string(&err).unwrap_or_default(), 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        page["status"] == 200
            && page["url"]
                .as_str()
                .is_some_and(|u| u.ends_with("/dashboard"))
            && page["total"] == 0,
        "after logging in the supervisor is not at the dashboard: {page}"
    );
    let pictures = page["pictures"].to_string();
    for id in ["calls", "line", "routes", "time", "callbacks", "speech"] {
        assert!(pictures.contains(&format!("\"{id}\"")), "{page}");
    }

    let (audio, secs) = caller_audio(
        d,
        "caller",
        &[Part::Say("I want to talk to a human"), Part::Silence(4.0)],
    );
    let hold_ms = (secs * 1000.0) as u64 + 1000;
    let mut caller = speaking_caller(d, ports, ports.sip_addr(), &audio, hold_ms, "u1");
    let routed = server
        .log
        .wait_for(&["route to a person"], Duration::from_secs(60));
    // "keyword" unless recognition fell behind on a loaded machine (then `speech_unavailable`):
    // either way the picture must count the route under the reason the server gave.
    let reason = routed
        .as_ref()
        .and_then(|(_, l)| l.split("reason=").nth(1)?.split_whitespace().next())
        .map(|r| r.trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("no route\n{}", server.story()));
    if reason != "keyword" {
        eprintln!("the caller who said human was routed for {reason}, not keyword");
    }
    let code = caller
        .proc
        .wait(Duration::from_millis(hold_ms) + Duration::from_secs(30));
    assert_sipp_ok("caller", code, &server, &[&caller]);

    let code = watcher.wait(Duration::from_secs(150));
    let lines = json_lines(&out);
    assert_eq!(
        code,
        Some(0),
        "the dashboard never counted the route: {lines:?}\n{}\n{}",
        tail(&std::fs::read_to_string(&err).unwrap_or_default(), 30),
        server.story()
    );
    // A route on what the caller said is timed from the end of their speech; one because
    // recognition failed is not.
    let timed = ["keyword", "repetition", "no_match"].contains(&reason.as_str());
    let routes = event(&lines, "routes");
    assert!(
        routes["total"] == 1
            && routes["totals"][&reason] == 1
            && routes["bars"][&reason] == 1
            && routes["refreshes"].as_i64().is_some_and(|n| n >= 2)
            && routes["time"]
                .as_str()
                .is_some_and(|t| !timed || t.contains("over the last 1:")),
        "{routes}"
    );
    let r = get_as(&server, &sam, "/api/dashboard");
    assert_eq!(r.status, 200, "{}", r.body);
    let after = json(&r.body);
    assert_eq!(after["routes"]["totals"][&reason], 1, "{after}");
    assert_eq!(
        after["routes"]["time_to_route_count"],
        u64::from(timed),
        "{after}"
    );
    assert!(
        after["speech"]["workers"].as_u64().is_some_and(|w| w >= 1),
        "{after}"
    );
}

/// Issue 13, item 4: rolling back to a version brings back exactly its files. A recording
/// added since (here beside the shipped ones, by someone editing the folder) is removed, not
/// left behind, and the version made by the roll back says so.
#[test]
fn rolling_back_removes_the_files_the_old_version_did_not_have() {
    let (dir, server) = server_on_shipped_flow(5, "rollback-removes");
    let d = dir.path();
    let olga = log_in(&server, OLGA);
    let r = get_as(&server, &olga, "/api/flow");
    assert_eq!(r.status, 200, "{}", r.body);
    let first = json(&r.body)["running"]["id"].as_i64().expect("a version");

    let extra = d.join("audio/en/greeting-spring.wav");
    std::fs::copy(d.join("audio/en/greeting.wav"), &extra).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let added = loop {
        let r = get_as(&server, &olga, "/api/flow/versions");
        assert_eq!(r.status, 200, "{}", r.body);
        let v = json(&r.body);
        if v["versions"][0]["id"].as_i64().is_some_and(|id| id > first) {
            break v["versions"][0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "the added recording never became a version: {v}\n{}",
            server.story()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        added["changes"]
            .to_string()
            .contains("audio/en/greeting-spring.wav"),
        "{added}"
    );

    let body = serde_json::json!({"version": first}).to_string();
    let r = server.change(&olga, "/api/flow/rollback", &body);
    assert_eq!(r.status, 200, "{}\n{}", r.body, server.story());
    assert!(
        !extra.exists(),
        "the recording the old version did not have is still there"
    );
    assert!(d.join("audio/en/greeting.wav").is_file());
    let r = get_as(&server, &olga, "/api/flow/versions");
    let v = json(&r.body);
    let newest = &v["versions"][0];
    assert!(
        newest["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("roll back to version {first}")))
            && newest["changes"]
                .to_string()
                .contains("audio/en/greeting-spring.wav"),
        "{newest}"
    );
    // The files on disk are the running flow, and stay so (the watcher took no edit).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(server.get("/healthz"), (200, "ok\n".to_string()));
    let r = get_as(&server, &olga, "/api/flow/versions");
    assert_eq!(
        json(&r.body)["versions"][0]["id"],
        newest["id"],
        "{}",
        r.body
    );
}

/// Issue 13, item 3 with audio: "try it" on a recording. Humanline hears it as a call in that
/// language is heard (the speech pool, that language's recognizer, its partials and keyword
/// verifier at their times), decides on that with the published flow, and the same events
/// are tried on the draft; audio it cannot use is refused with a reason.
#[test]
fn try_it_hears_a_recording_and_decides_as_a_call_would() {
    if !peers_available("try_it_hears_a_recording_and_decides_as_a_call_would") {
        return;
    }
    let _speech = speech_lock();
    let ports = Ports::claim(6);
    let dir = tempdir("try-audio");
    let d = dir.path();
    let server = Server::start(ports, d, &[]);
    server.add_user(SAM.0, "supervisor", SAM.1);
    let sam = log_in(&server, SAM);

    let r = server.request("POST", "/api/flow/hear?language=en", &[], "RIFF");
    assert_eq!(r.status, 401, "{}", r.body);
    let hear = |name: &'static str, text: &str| {
        // The caller's audio as a WAV (8 kHz, as a phone sends it), not the sipp payload.
        caller_audio(d, name, &[Part::Say(text), Part::Silence(1.0)]);
        let wav = std::fs::read(d.join(format!("{name}.wav"))).unwrap();
        let r = server.send_wav(&sam, "/api/flow/hear?language=en", &wav);
        assert_eq!(r.status, 200, "{}\n{}", r.body, server.story());
        let heard = json(&r.body);
        let text = heard["heard"].as_str().unwrap_or_default().to_lowercase();
        // Heard as a call hears it: partial transcripts while the caller spoke, each with the
        // keyword verifier's verdicts, then the final.
        let events = heard["events"].as_array().cloned().unwrap_or_default();
        let has = |kind: &str| events.iter().any(|e| e["event"] == kind);
        assert!(
            has("partial") && has("verified") && has("final"),
            "{}",
            r.body
        );
        // The draft decides on the same events (the page sends them back while the text is
        // the one heard).
        let body = serde_json::json!({"text": text, "heard": events, "language": "en"}).to_string();
        let r = server.change(&sam, "/api/flow/try", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        let t = json(&r.body);
        assert_eq!(t["published"], heard["published"], "{t}\n{heard}");
        (text, t, heard)
    };
    let (text, t, heard) = hear("real-person", "I want a real person");
    assert!(text.contains("person"), "heard {text:?}");
    assert_eq!(t["published"]["route"], "keyword", "{t}");
    assert_eq!(t["draft"]["route"], "keyword", "{t}");
    // When, as on a call: within a second or so of the end of speech, or before it.
    let (at, end) = (
        heard["published"]["at_ms"].as_u64().unwrap_or(u64::MAX),
        heard["speech_end_ms"].as_u64().unwrap_or(0),
    );
    assert!(
        at < end + 3_000,
        "decided at {at} ms, speech ended at {end} ms: {heard}"
    );
    let (text, t, _) = hear("pay-bill", "I want to pay my bill");
    assert!(text.contains("bill"), "heard {text:?}");
    assert!(t["published"]["route"].is_null(), "{t}");
    assert_eq!(t["published"]["topics"][0], "billing", "{t}");
    assert!(t["draft"]["route"].is_null(), "{t}");

    // Heard events out of time order are not a recording's: refused, nothing decided.
    let body = serde_json::json!({"heard": [
        {"event": "final", "t": 900, "text": "agent"},
        {"event": "speech_started", "t": 100},
    ]})
    .to_string();
    let r = server.change(&sam, "/api/flow/try", &body);
    assert!(
        r.status == 400 && r.body.contains("time order"),
        "{} {}",
        r.status,
        r.body
    );

    // Audio it cannot use: each refused with what is wrong.
    let quiet = d.join("quiet.wav");
    silence_wav(&quiet, 2.0);
    let short = d.join("short.wav");
    silence_wav(&short, 0.1);
    for (what, body, says) in [
        (
            "not a WAV",
            b"this is not audio".to_vec(),
            "not a WAV recording",
        ),
        ("silence", std::fs::read(&quiet).unwrap(), "silent"),
        (
            "a tenth of a second",
            std::fs::read(&short).unwrap(),
            "too short",
        ),
    ] {
        let r = server.send_wav(&sam, "/api/flow/hear?language=en", &body);
        assert!(
            r.status == 400 && r.body.contains(says),
            "{what}: {} {}",
            r.status,
            r.body
        );
    }
    let r = server.send_wav(
        &sam,
        "/api/flow/hear?language=xx",
        &std::fs::read(d.join("real-person.wav")).unwrap(),
    );
    assert!(
        r.status == 400 && r.body.contains("unknown language"),
        "{}",
        r.body
    );

    // Three recordings at once: two are heard, the third is told to try again (the speech
    // pool is the calls' first), and once they are done a recording is heard again.
    let wav = std::fs::read(d.join("real-person.wav")).unwrap();
    let mut replies: Vec<(u16, String)> = std::thread::scope(|s| {
        let asks: Vec<_> = (0..3)
            .map(|_| s.spawn(|| server.send_wav(&sam, "/api/flow/hear?language=en", &wav)))
            .collect();
        asks.into_iter()
            .map(|a| a.join().expect("a hearing's request"))
            .map(|r| (r.status, r.body))
            .collect()
    });
    replies.sort();
    let statuses: Vec<u16> = replies.iter().map(|r| r.0).collect();
    assert_eq!(statuses, [200, 200, 503], "{replies:?}");
    assert!(
        replies[2].1.contains("being heard already"),
        "{}",
        replies[2].1
    );
    let r = server.send_wav(&sam, "/api/flow/hear?language=en", &wav);
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Issue 13, item 1 with an operator's own recording: an uploaded WAV (espeak-ng's 22 kHz
/// here) becomes the greeting, converted to the shipped 8 kHz mono format, with the text it
/// says noted in recordings.toml, so the stale-recording check stays right and it is not
/// recorded over. Audio that is no recording, a prompt spliced from parts, and a supervisor
/// are refused.
#[test]
fn an_uploaded_recording_becomes_the_greeting_in_the_shipped_format() {
    if !peers_available("an_uploaded_recording_becomes_the_greeting_in_the_shipped_format") {
        return;
    }
    let (dir, server) = server_on_shipped_flow(7, "upload");
    let d = dir.path();
    let (olga, sam) = (log_in(&server, OLGA), log_in(&server, SAM));

    let said = "Hello, this is Olga's own greeting. Say human at any time to reach a person.";
    let (_, secs) = caller_audio(d, "own", &[Part::Say(said)]);
    let own = std::fs::read(d.join("own.0.espeak.wav")).unwrap();
    let (_, own_rate) = read_wav(&d.join("own.0.espeak.wav"));
    assert_ne!(own_rate, 8000, "the upload should need converting");
    let upload = "/api/flow/upload?language=en&prompt=greeting";

    let r = server.send_wav(&sam, upload, &own);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = server.send_wav(&olga, upload, b"not audio at all");
    assert!(
        r.status == 400 && r.body.contains("not a WAV"),
        "{}",
        r.body
    );
    let r = server.send_wav(
        &olga,
        "/api/flow/upload?language=en&prompt=queue_position",
        &own,
    );
    assert!(
        r.status == 400 && r.body.contains("placeholders"),
        "{}",
        r.body
    );
    let r = server.send_wav(&olga, upload, &own);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json(&r.body)["path"], "audio/en/greeting.wav", "{}", r.body);

    // Uploaded by mistake: discarded before publishing, and the draft's greeting is the
    // shipped recording again. Discarding is a change: CSRF-checked, operators only.
    let shipped = std::fs::read(d.join("audio/en/greeting.wav")).unwrap();
    let waiting = || json(&get_as(&server, &olga, "/api/flow").body)["uploads"].clone();
    assert_eq!(
        waiting()[0]["path"],
        "audio/en/greeting.wav",
        "{}",
        waiting()
    );
    let origin = format!("http://127.0.0.1:{}", server.ports.http());
    let r = server.request(
        "DELETE",
        upload,
        &[("Cookie", &olga.cookie), ("Origin", &origin)],
        "",
    );
    assert_eq!(r.status, 403, "without the CSRF token: {}", r.body);
    let r = server.change_with("DELETE", &sam, upload, "");
    assert_eq!(r.status, 403, "a supervisor: {}", r.body);
    assert_eq!(waiting().as_array().map(Vec::len), Some(1), "{}", waiting());
    let r = server.change_with("DELETE", &olga, upload, "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        json(&r.body)["discarded"],
        "audio/en/greeting.wav",
        "{}",
        r.body
    );
    assert_eq!(waiting(), serde_json::json!([]));
    assert_check_stages_no_recording(&server, &olga);
    let draft = get_as(
        &server,
        &olga,
        "/api/flow/recording?path=audio/en/greeting.wav&draft=true",
    );
    assert_eq!(draft.status, 200);
    assert_eq!(
        draft.header("content-length"),
        Some(shipped.len().to_string().as_str()),
        "the draft's greeting is not the shipped recording"
    );
    let r = server.change_with("DELETE", &olga, upload, "");
    assert_eq!(r.status, 404, "nothing left to discard: {}", r.body);
    let r = get_as(&server, &olga, "/api/audit");
    assert!(r.body.contains("upload_discarded"), "{}", r.body);

    let r = server.send_wav(&olga, upload, &own);
    assert_eq!(r.status, 200, "uploaded again: {}", r.body);

    // Published with the greeting's new text: the upload is the recording, noted as saying it.
    let en = std::fs::read_to_string(d.join("prompts/en.toml")).unwrap();
    let line = en
        .lines()
        .find(|l| l.starts_with("text = \"Welcome to Humanline."))
        .expect("the greeting's text")
        .to_string();
    let new_en = en.replace(&line, &format!("text = \"{said}\""));
    let body =
        serde_json::json!({"files": {"en.toml": new_en}, "message": "Olga's greeting"}).to_string();
    let r = server.change(&olga, "/api/flow/publish", &body);
    assert_eq!(r.status, 200, "{}\n{}", r.body, server.story());
    let recorded = json(&r.body)["recorded"].to_string();
    assert!(recorded.contains("en/greeting (uploaded)"), "{recorded}");
    let (samples, rate) = read_wav(&d.join("audio/en/greeting.wav"));
    let published_secs = samples.len() as f32 / rate as f32;
    assert_eq!(rate, 8000);
    assert!(
        (published_secs - secs).abs() < 0.1,
        "the greeting is {published_secs:.2} s, the upload {secs:.2} s: not the upload"
    );
    let noted = std::fs::read_to_string(d.join("audio/en/recordings.toml")).unwrap();
    assert!(
        noted.contains(&format!("\"greeting.wav\" = \"{said}\"")),
        "{noted}"
    );
    assert_eq!(server.get("/healthz"), (200, "ok\n".to_string()));
    let r = get_as(&server, &olga, "/api/audit");
    assert!(
        r.body.contains("\"upload\"") && r.body.contains("audio/en/greeting.wav"),
        "{}",
        r.body
    );
    // The next publish does not bring the upload back: it was published.
    assert_check_stages_no_recording(&server, &olga);
}

/// Issue 13, items 1 and 3 in Chromium: "try it" with a WAV file, and with the microphone
/// (Record, Stop), shows what Humanline heard and an escape for "I want a real person"; an operator's own WAV becomes the
/// greeting's recording in the draft, converted (8 kHz mono), and plays in the page; then
/// the operator discards it with the prompt's button.
#[test]
fn in_the_browser_an_operator_tries_a_recording_and_uploads_a_greeting() {
    let test = "in_the_browser_an_operator_tries_a_recording_and_uploads_a_greeting";
    if !peers_available(test) || !browser_available(test) {
        return;
    }
    let _speech = speech_lock();
    let (dir, server) = server_on_shipped_flow(8, "operator-browser-audio");
    let d = dir.path();
    let olga = OLGA;

    caller_audio(
        d,
        "real-person",
        &[Part::Say("I want a real person"), Part::Silence(1.0)],
    );
    let wav = d.join("real-person.wav");
    let heard = operator_in_browser(&server, d, olga, "hear", &wav.display().to_string());
    let h = event(&heard, "heard");
    assert!(
        h["escape"] == true
            && h["heard"]
                .as_str()
                .is_some_and(|t| t.to_lowercase().contains("person"))
            && h["draft"]
                .as_str()
                .is_some_and(|t| t.contains("to a person")),
        "{h}"
    );

    // The same through the microphone: recorded in the page, sent as WAV.
    let recorded = operator_in_browser(&server, d, olga, "record", &wav.display().to_string());
    let h = event(&recorded, "heard");
    assert!(
        h["escape"] == true
            && h["heard"]
                .as_str()
                .is_some_and(|t| t.to_lowercase().contains("person")),
        "{h}"
    );

    caller_audio(
        d,
        "own",
        &[Part::Say("Welcome to Humanline. This is our own voice.")],
    );
    let own = d.join("own.0.espeak.wav");
    let up = operator_in_browser(&server, d, olga, "upload", &own.display().to_string());
    let l = event(&up, "listen");
    assert!(
        l["checked"] == true
            && l["status"] == 200
            && l["riff"] == "RIFF"
            && l["rate"] == 8000
            && l["channels"] == 1
            && l["src"].as_str().is_some_and(|s| s.contains("draft=true"))
            && l["result"]
                .as_str()
                .is_some_and(|t| t.contains("en/greeting (uploaded)")),
        "{l}"
    );
    // The operator discards it: the button that was there goes, the page plays the
    // published greeting again, and the server's draft holds no upload.
    let x = event(&up, "discarded");
    assert!(
        x["ok"] == true
            && x["shown"] == true
            && x["still_shown"] == false
            && x["before"][0]["prompt"] == "greeting"
            && x["after"] == serde_json::json!([])
            && x["src"].as_str().is_some_and(|s| !s.contains("draft=")),
        "{x}"
    );
}
