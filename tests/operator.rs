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
    let ports = Ports::claim(0);
    let dir = tempdir("healthz-prompts");
    let d = dir.path();
    let prompts = copy_of_shipped_flow(d);
    let server = Server::start_with(ports, d, &[], &prompts);
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

/// The greeting texts played so far, in order.
fn greetings_played(server: &Server) -> Vec<String> {
    server
        .log
        .find_all(&["play", "prompt=greeting"])
        .into_iter()
        .map(|(_, l)| l)
        .collect()
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
    let ports = Ports::claim(1);
    let dir = tempdir("publish");
    let d = dir.path();
    let prompts = copy_of_shipped_flow(d);
    let server = Server::start_with(ports, d, &[], &prompts);
    server.add_user("olga", "operator", "operator password 1");
    server.add_user("sam", "supervisor", "supervisor password 1");
    let olga = server.login("olga", "operator password 1");
    let sam = server.login("sam", "supervisor password 1");

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
        ports.spare_sipp(),
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

    let mut caller = listening_call(&server, d, "caller-after-publish");
    let code = caller.proc.wait(Duration::from_secs(30));
    assert_sipp_ok("caller-after-publish", code, &server, &[&caller]);
    let played = greetings_played(&server);
    assert!(
        played
            .last()
            .is_some_and(|l| l.contains("Hello from Humanline.")),
        "{played:?}\n{}",
        server.story()
    );
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
    let mut caller = listening_call(&server, d, "caller-after-rollback");
    let code = caller.proc.wait(Duration::from_secs(30));
    assert_sipp_ok("caller-after-rollback", code, &server, &[&caller]);
    let played = greetings_played(&server);
    assert!(
        played
            .last()
            .is_some_and(|l| l.contains("Welcome to Humanline.")),
        "{played:?}\n{}",
        server.story()
    );

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
    server.add_user("olga", "operator", "operator password 1");
    let olga = server.login("olga", "operator password 1");
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
    let ports = Ports::claim(3);
    let dir = tempdir("operator-browser");
    let d = dir.path();
    let prompts = copy_of_shipped_flow(d);
    let server = Server::start_with(ports, d, &[], &prompts);
    server.add_user("olga", "operator", "operator password 1");
    server.add_user("sam", "supervisor", "supervisor password 1");
    let en = std::fs::read_to_string(d.join("prompts/en.toml")).unwrap();
    let new_greeting = "Hello from Humanline. You can say human at any time to reach a person. What can I do for you?";

    let refused = operator_in_browser(
        &server,
        d,
        ("sam", "supervisor password 1"),
        "refused",
        "Hi.",
    );
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
    let work = operator_in_browser(
        &server,
        d,
        ("olga", "operator password 1"),
        "publish",
        new_greeting,
    );
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

    let mut caller = listening_call(&server, d, "caller-after-publish");
    let code = caller.proc.wait(Duration::from_secs(30));
    assert_sipp_ok("caller-after-publish", code, &server, &[&caller]);
    let played = greetings_played(&server);
    assert!(
        played
            .last()
            .is_some_and(|l| l.contains("Hello from Humanline.")),
        "{played:?}"
    );

    let back = operator_in_browser(&server, d, ("olga", "operator password 1"), "rollback", "");
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
    let mut caller = listening_call(&server, d, "caller-after-rollback");
    let code = caller.proc.wait(Duration::from_secs(30));
    assert_sipp_ok("caller-after-rollback", code, &server, &[&caller]);
    let played = greetings_played(&server);
    assert!(
        played
            .last()
            .is_some_and(|l| l.contains("Welcome to Humanline.")),
        "{played:?}"
    );
}
