//! The operator's command line, run as a user would: `check-config`, `simulate`, `bench`.

use assert_cmd::Command;
use serde_json::Value;
use std::path::Path;

fn humanline() -> Command {
    Command::cargo_bin("humanline").expect("binary built")
}

/// What `cmd` printed, once it has succeeded (else its errors are the failure).
fn succeeded(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A copy of the shipped prompts and audio in a temporary folder, to break on purpose.
fn copy_of_shipped() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in [
        "prompts",
        "audio",
        "audio/en",
        "audio/nl",
        "audio/en/numbers",
        "audio/nl/numbers",
    ] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for entry in std::fs::read_dir(repo().join(sub)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), dir.path().join(sub).join(entry.file_name())).unwrap();
            }
        }
    }
    dir
}

fn check(dir: &Path) -> (bool, String) {
    let out = humanline()
        .arg("check-config")
        .arg("--prompts")
        .arg(dir.join("prompts"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn shipped_prompts_pass_check_config() {
    let out = humanline()
        .arg("check-config")
        .arg("--prompts")
        .arg(repo().join("prompts"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (2 languages"));
}

#[test]
fn broken_toml_is_reported_with_file_line_and_column() {
    let dir = copy_of_shipped();
    let en = dir.path().join("prompts/en.toml");
    let text = std::fs::read_to_string(&en).unwrap();
    // Line 5 loses its closing bracket.
    let broken: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 4 {
                l.trim_end_matches(']').to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(broken[4].starts_with("[prompts.greeting"));
    std::fs::write(&en, broken.join("\n")).unwrap();
    let (ok, err) = check(dir.path());
    assert!(!ok);
    let first = err.lines().next().unwrap();
    assert!(first.contains("prompts/en.toml:5:"), "{err}");
}

#[test]
fn unknown_keys_missing_audio_and_undefined_prompts_are_each_reported_at_their_line() {
    let dir = copy_of_shipped();
    let settings = dir.path().join("prompts/humanline.toml");
    let text = std::fs::read_to_string(&settings).unwrap();
    std::fs::write(
        &settings,
        text.replace("no_input_ms = 7000", "no_input_ms = 7000\nno_inptu_ms = 5"),
    )
    .unwrap();
    let (ok, err) = check(dir.path());
    assert!(!ok);
    // The misspelt key stands on the line after `no_input_ms`, wherever that is in the file.
    let typo_line = text
        .lines()
        .position(|l| l.trim() == "no_input_ms = 7000")
        .expect("the shipped settings set no_input_ms")
        + 2;
    assert!(
        err.contains(&format!(
            "humanline.toml:{typo_line}:1: unknown field `no_inptu_ms`"
        )),
        "{err}"
    );
    std::fs::write(&settings, text).unwrap();

    let en = dir.path().join("prompts/en.toml");
    let text = std::fs::read_to_string(&en).unwrap();
    let text = text.replace("prompt = \"topic_billing\"", "prompt = \"topic_bills\"");
    std::fs::write(&en, &text).unwrap();
    std::fs::remove_file(dir.path().join("audio/nl/greeting.wav")).unwrap();
    let (ok, err) = check(dir.path());
    assert!(!ok);
    let line = text
        .lines()
        .position(|l| l.contains("topic_bills"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!(
            "en.toml:{line}:10: topic `billing` uses prompt `topic_bills`, which is not defined"
        )),
        "{err}"
    );
    assert!(
        err.contains("nl.toml:7:9: audio file") && err.contains("greeting.wav cannot be read"),
        "{err}"
    );
}

/// The line (1-based) of the `text = ` of prompt `id` in a language file.
fn text_line(file: &str, id: &str) -> usize {
    let table = format!("[prompts.{id}]");
    let start = file
        .lines()
        .position(|l| l.trim() == table)
        .unwrap_or_else(|| panic!("{table} is in the file"));
    file.lines()
        .enumerate()
        .skip(start)
        .find(|(_, l)| l.starts_with("text = "))
        .map(|(i, _)| i + 1)
        .expect("the prompt has a text")
}

/// Issue 13, item 5: changing a prompt's text left the old recording playing, and nothing
/// said so. Now its recording's noted words (audio/en/recordings.toml, written by the
/// generator) no longer match: check-config reports it at the text's line, and recording it
/// again with the generator clears it.
#[test]
fn a_prompt_whose_text_changed_since_its_recording_is_reported_until_recorded_again() {
    let dir = copy_of_shipped();
    let (ok, err) = check(dir.path());
    assert!(ok, "the copy of the shipped flow is valid: {err}");
    let en = dir.path().join("prompts/en.toml");
    let text = std::fs::read_to_string(&en).unwrap();
    let changed = text.replace(
        "text = \"Welcome to Humanline. You can say human",
        "text = \"Hello, this is Humanline. You can say human",
    );
    assert_ne!(changed, text, "the shipped greeting starts with Welcome");
    std::fs::write(&en, &changed).unwrap();
    let (ok, err) = check(dir.path());
    assert!(!ok, "a stale recording passed check-config");
    let line = text_line(&changed, "greeting");
    assert!(
        err.contains(&format!(
            "prompts/en.toml:{line}:8: prompt `greeting` (en): its recording"
        )) && err.contains("says \"Welcome to Humanline."),
        "{err}"
    );
    assert!(
        err.contains("1 problem(s)"),
        "only the greeting is stale: {err}"
    );

    // Recorded again (espeak-ng, as shipped): the recording says the new text.
    let out = std::process::Command::new("python3")
        .arg(repo().join("scripts/gen-prompt-audio.py"))
        .args(["--only", "en", "--prompt", "greeting", "--prompts"])
        .arg(dir.path().join("prompts"))
        .output()
        .expect("python3 runs (scripts/setup.sh installs espeak-ng and sox)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, err) = check(dir.path());
    assert!(ok, "recorded again, the greeting is still reported: {err}");
    let noted = std::fs::read_to_string(dir.path().join("audio/en/recordings.toml")).unwrap();
    assert!(noted.contains("Hello, this is Humanline."), "{noted}");
}

/// Issue 13, item 5: a missing part file of a placeholder prompt passed silently and callers
/// heard words dropped ("you are number one, three minutes"). Each part and number clip a
/// prompt needs is now checked, and reported at the prompt's text.
#[test]
fn a_missing_part_or_number_of_a_placeholder_prompt_is_reported_at_its_line() {
    let dir = copy_of_shipped();
    std::fs::remove_file(dir.path().join("audio/nl/queue_position.1.wav")).unwrap();
    std::fs::remove_file(dir.path().join("audio/en/numbers/7.wav")).unwrap();
    let (ok, err) = check(dir.path());
    assert!(!ok, "a missing part file passed check-config");
    let nl = std::fs::read_to_string(dir.path().join("prompts/nl.toml")).unwrap();
    let line = text_line(&nl, "queue_position");
    assert!(
        err.contains(&format!(
            "prompts/nl.toml:{line}:8: prompt `queue_position` (nl) needs a recording of"
        )) && err.contains("queue_position.1.wav"),
        "{err}"
    );
    let en = std::fs::read_to_string(dir.path().join("prompts/en.toml")).unwrap();
    let line = text_line(&en, "queue_position");
    assert!(
        err.contains(&format!(
            "prompts/en.toml:{line}:8: prompt `queue_position` (en) says numbers from"
        )) && err.contains("no valid recording of 7:"),
        "{err}"
    );
}

fn simulate(says: &[&str]) -> Vec<Value> {
    let mut cmd = humanline();
    cmd.arg("simulate")
        .arg("--prompts")
        .arg(repo().join("prompts"));
    for s in says {
        cmd.arg("--say").arg(s);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn routes(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["event"] == "route").collect()
}

#[test]
fn asking_for_a_human_routes_with_reason_keyword_while_speaking() {
    let events = simulate(&["I want to talk to a human"]);
    let r = routes(&events);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["reason"], "keyword");
    assert_eq!(r[0]["context"]["said"][0], "I want to talk to a human");
    assert!(r[0]["after_speech_end_ms"].as_i64().unwrap() <= 0);
    // Every line carries the time.
    assert!(events.iter().all(|e| e["t_ms"].is_u64()));
}

#[test]
fn the_same_request_twice_routes_with_reason_repetition() {
    let events = simulate(&["my internet is down", "my internet is down"]);
    let r = routes(&events);
    assert_eq!(r[0]["reason"], "repetition");
    assert_eq!(r[0]["context"]["said"].as_array().unwrap().len(), 2);
}

#[test]
fn two_different_ordinary_requests_are_not_a_repetition() {
    let events = simulate(&[
        "what are your opening hours",
        "I have a question about my bill",
    ]);
    let finals: Vec<_> = events.iter().filter(|e| e["event"] == "final").collect();
    assert_eq!(finals.len(), 2);
    // Each request is answered with its own prompt...
    let prompts: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "play")
        .map(|e| e["prompt"].clone())
        .collect();
    assert!(
        prompts.contains(&"topic_hours".into()) && prompts.contains(&"topic_billing".into()),
        "{prompts:?}"
    );
    // ...and the caller, silent afterwards, reaches a person for that reason, not repetition.
    let r = routes(&events);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["reason"], "no_input");
}

#[test]
fn a_caller_who_is_not_understood_twice_reaches_a_person() {
    let events = simulate(&["blue elephants", "purple giraffes"]);
    assert_eq!(routes(&events)[0]["reason"], "no_match");
}

#[test]
fn an_unknown_prompts_folder_is_a_clear_error() {
    let out = humanline()
        .args(["simulate", "--prompts", "/nonexistent", "--say", "hi"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("/nonexistent/humanline.toml:1:1: cannot read")
    );
}

/// The callback benchmark's seeded ledger is what the recovery benchmark relies on: overdue
/// promises that `callbacks list` shows, oldest first in line; and the bench refuses to
/// overwrite a ledger.
#[test]
fn bench_callbacks_seeds_overdue_promises_and_never_overwrites_a_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join("callbacks.db");
    let out = humanline()
        .args(["bench", "callbacks", "--pending", "30", "--seed"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = succeeded(
        humanline()
            .args([
                "callbacks",
                "list",
                "--json",
                "--state",
                "promised",
                "--data-dir",
            ])
            .arg(&data),
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = list.as_array().expect("a JSON array");
    assert_eq!(list.len(), 30);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        list.iter()
            .all(|p| p["next_attempt_at"].as_i64().unwrap() < now)
    );
    let out = humanline()
        .args(["bench", "callbacks", "--pending", "5", "--seed"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a second seed must not write into the ledger"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));
}

/// `bench rescore` on a saved Dutch live run (`bench/results/`) with the shipped prompts
/// changed in one setting: the figures are those of the changed prompts, not of the run.
fn rescore_dutch(edit: impl Fn(String) -> String) -> Value {
    let dir = copy_of_shipped();
    let nl = dir.path().join("prompts/nl.toml");
    let text = std::fs::read_to_string(&nl).unwrap();
    let changed = edit(text.clone());
    std::fs::write(&nl, &changed).unwrap();
    let out = succeeded(
        humanline()
            .current_dir(repo())
            .args(["bench", "rescore"])
            .arg(repo().join("bench/results/speech-nl-live-every4.transcripts.json"))
            .arg("--prompts")
            .arg(dir.path().join("prompts")),
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["humanline"].clone()
}

#[test]
fn bench_rescore_holds_saved_verdicts_to_the_prompts_thresholds_and_rules() {
    let shipped = rescore_dutch(|t| t);
    let figure = |r: &Value, k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k}: {r}"));
    // Every verdict passes at the lowest threshold the settings allow, with no floor: far
    // more ordinary requests escape than as shipped.
    let lax = rescore_dutch(|t| {
        t.replace("escape_threshold = 0.5", "escape_threshold = -20")
            .replace(
                "escape_transcript_floor = -1.2",
                "escape_transcript_floor = -20",
            )
    });
    assert!(
        figure(&lax, "false_escapes") > figure(&shipped, "false_escapes") + 5,
        "lax {lax}\nshipped {shipped}"
    );
    // Without the Dutch partial confirmation, more escapes are decided on a partial.
    let unconfirmed =
        rescore_dutch(|t| t.replace("confirm_partials = true", "confirm_partials = false"));
    let on_partial = |r: &Value| {
        let s = r["escapes_decided_on_a_partial"]
            .as_str()
            .unwrap()
            .to_string();
        s.split('/').next().unwrap().parse::<u64>().unwrap()
    };
    assert!(
        on_partial(&unconfirmed) > on_partial(&shipped),
        "unconfirmed {unconfirmed}\nshipped {shipped}"
    );
    // Every escaping caller of the run reaches a person by the second turn.
    let by_second = |r: &Value, k: &str| {
        let s = r[k].as_str().unwrap().to_string();
        let (n, of) = s.split_once('/').unwrap();
        (n.parse::<u64>().unwrap(), of.parse::<u64>().unwrap())
    };
    let (heard, pairs) = by_second(&shipped, "escape_heard_by_the_second_turn");
    let (sent_on, _) = by_second(&shipped, "escape_not_understood_twice");
    assert!(pairs > 0 && heard + sent_on == pairs, "{shipped}");
}
