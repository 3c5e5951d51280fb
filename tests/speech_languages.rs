//! Each language heard in its language, with the default set-up (no `--model`: English with
//! tiny.en, Dutch with the multilingual base, as the prompts' `[speech]` sections say), through
//! `humanline simulate --language L --caller X.wav` and `humanline transcribe --language L`:
//! an escape is routed, an ordinary request is not, silence gives nothing.

mod common;

use assert_cmd::Command;
// One speaking test at a time: the suite runs two tests at once on CI's 2 cores, and a test
// decoding as fast as it can (`--fast`) beside the real-time Dutch caller would take the cores
// that caller's recognition is measured on.
use common::speech_lock;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Both default models are here (CI fetches them: there a missing one fails).
fn models_present() -> bool {
    let missing: Vec<PathBuf> = ["models/ggml-tiny.en.bin", "models/ggml-base-q8_0.bin"]
        .iter()
        .map(|m| repo().join(m))
        .filter(|p| !p.is_file())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "speech models missing: {missing:?} (scripts/fetch-model.sh)"
    );
    eprintln!("skipping: speech models missing: {missing:?} (scripts/fetch-model.sh)");
    false
}

/// `text` said by espeak-ng `voice` through a telephone channel (300-3400 Hz, mu-law, 8 kHz).
fn phone_speech(dir: &Path, name: &str, text: &str, voice: &str) -> PathBuf {
    let raw = dir.join(format!("{name}.raw.wav"));
    let ulaw = dir.join(format!("{name}.ulaw.wav"));
    let out = dir.join(format!("{name}.wav"));
    let ok = Process::new("espeak-ng")
        .args(["-v", voice, "-s", "150", "-w"])
        .arg(&raw)
        .arg(text)
        .status();
    assert!(ok.is_ok_and(|s| s.success()), "espeak-ng failed");
    let ok = Process::new("sox")
        .arg(&raw)
        .args(["-r", "8000", "-c", "1", "-e", "mu-law"])
        .arg(&ulaw)
        .args(["sinc", "300-3400", "pad", "0.3", "0.8"])
        .status();
    assert!(ok.is_ok_and(|s| s.success()), "sox failed");
    let ok = Process::new("sox")
        .arg(&ulaw)
        .args(["-e", "signed-integer", "-b", "16"])
        .arg(&out)
        .status();
    assert!(ok.is_ok_and(|s| s.success()), "sox failed");
    out
}

/// The default set-up: run from the repository, no `--model`, no `$HUMANLINE_MODEL`.
fn humanline() -> Command {
    let mut cmd = Command::cargo_bin("humanline").unwrap();
    cmd.current_dir(repo()).env_remove("HUMANLINE_MODEL");
    cmd
}

fn simulate(language: &str, caller: &Path, fast: bool) -> Vec<Value> {
    let mut cmd = humanline();
    cmd.args(["simulate", "--language", language]);
    if fast {
        cmd.arg("--fast");
    }
    let out = cmd.arg("--caller").arg(caller).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn keyword_route(events: &[Value]) -> Option<&Value> {
    events
        .iter()
        .find(|e| e["event"] == "route" && e["reason"] == "keyword")
}

fn transcribe(language: &str, files: &[&Path]) -> Vec<String> {
    let out = humanline()
        .args(["transcribe", "--language", language])
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn silence(dir: &Path) -> PathBuf {
    let path = dir.join("silence.wav");
    let ok = Process::new("sox")
        .args(["-n", "-r", "8000", "-c", "1", "-b", "16"])
        .arg(&path)
        .args(["trim", "0", "3"])
        .status();
    assert!(ok.is_ok_and(|s| s.success()));
    path
}

#[test]
fn a_dutch_caller_asking_for_a_medewerker_is_routed_in_real_time() {
    if !models_present() {
        return;
    }
    let _speech = speech_lock();
    let dir = tempfile::tempdir().unwrap();
    // Free transcription of espeak-ng Dutch often misses "medewerker" (the keyword verifier
    // of issue 10 is meant to fix that): the caller asks twice, the second time for "iemand".
    let first = phone_speech(
        dir.path(),
        "medewerker",
        "Ik wil graag een medewerker spreken",
        "nl",
    );
    let second = phone_speech(dir.path(), "iemand", "Mag ik iemand spreken", "nl");
    let wav = dir.path().join("caller.wav");
    let ok = Process::new("sox")
        .arg(&first)
        .arg(&second)
        .arg(&wav)
        .status();
    assert!(ok.is_ok_and(|s| s.success()), "sox failed");
    // Paced in real time, exactly `humanline simulate --language nl --caller X.wav`.
    let overloaded = common::machine_overloaded();
    let events = simulate("nl", &wav, false);
    // Routed on what the caller said: a phrase heard (by the transcript or the keyword
    // verifier: both route as `keyword`) or the request repeated. Not `speech_unavailable`:
    // that is recognition giving up (it fell behind real time), which the default set-up must
    // not need for one caller on 2 cores.
    let route = events
        .iter()
        .find(|e| e["event"] == "route")
        .unwrap_or_else(|| panic!("not routed: {events:?}"));
    let reason = route["reason"].as_str().unwrap_or_default();
    if reason == "speech_unavailable"
        && let Some(why) = &overloaded
    {
        eprintln!(
            "NOTE: not measured: the Dutch caller went to a person as speech_unavailable on an \
             overloaded machine ({why})"
        );
        return;
    }
    assert!(
        ["keyword", "repetition"].contains(&reason),
        "routed as {reason}, not on the caller's words (load {}): {events:?}",
        loadavg()
    );
    // The margin, for the record: how long after the end of speech the decision came.
    eprintln!(
        "Dutch route: {reason} {}ms after the end of speech (load {})",
        route["after_speech_end_ms"],
        loadavg()
    );
    assert_eq!(route["context"]["language"], "nl", "{route}");
    // The greeting was Dutch: the caller heard the Dutch IVR.
    let greeting = events
        .iter()
        .find(|e| e["event"] == "play" && e["prompt"] == "greeting")
        .expect("greeting");
    assert!(
        greeting["text"].as_str().unwrap().contains("medewerker"),
        "{greeting}"
    );
}

#[test]
fn dutch_ordinary_requests_do_not_escape_and_silence_gives_nothing() {
    if !models_present() {
        return;
    }
    let _speech = speech_lock();
    let dir = tempfile::tempdir().unwrap();
    for (i, text) in [
        "Mijn internet doet het niet",
        "Ik heb een vraag over mijn factuur",
        // At the old escape threshold (0.0) the verifier sent this caller to a person on a
        // partial: it scored "een mens" above 0 on the partial "Ik met." (every run here).
        "Ik wil mijn abonnement opzeggen",
        // Without `confirm_partials` this caller went to a person on the partial "Medial
        // mens." ("veel mensen" cut short), 3 runs of 3; with it, the next partial has no
        // escape and waits on.
        "Veel mensen hebben hier last van",
    ]
    .iter()
    .enumerate()
    {
        let wav = phone_speech(dir.path(), &format!("ordinary{i}"), text, "nl");
        let events = simulate("nl", &wav, true);
        assert!(keyword_route(&events).is_none(), "{text:?}: {events:?}");
    }
    let wav = phone_speech(dir.path(), "iemand", "Mag ik iemand spreken", "nl");
    assert!(
        keyword_route(&simulate("nl", &wav, true)).is_some(),
        "Mag ik iemand spreken: not routed"
    );
    let silent = silence(dir.path());
    assert_eq!(transcribe("nl", &[&silent]), vec![String::new()]);
}

#[test]
fn english_is_heard_by_its_own_model_escape_ordinary_and_silence() {
    if !models_present() {
        return;
    }
    let _speech = speech_lock();
    let dir = tempfile::tempdir().unwrap();
    let human = phone_speech(dir.path(), "human", "I want to talk to a human", "en-us");
    assert!(keyword_route(&simulate("en", &human, true)).is_some());
    let address = phone_speech(
        dir.path(),
        "address",
        "I want to change my address",
        "en-us",
    );
    let events = simulate("en", &address, true);
    assert!(keyword_route(&events).is_none(), "{events:?}");
    let silent = silence(dir.path());
    let texts = transcribe("en", &[&human, &silent]);
    assert!(texts[0].to_lowercase().contains("human"), "{texts:?}");
    assert_eq!(texts[1], "", "silence must give no transcript");
}

/// `humanline check-config` on a copy of the shipped prompts whose nl.toml has `from`
/// replaced by `to`: its stderr and the changed nl.toml.
fn check_dutch_config(from: &str, to: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    for f in ["humanline.toml", "en.toml", "nl.toml"] {
        let mut text = std::fs::read_to_string(repo().join("prompts").join(f)).unwrap();
        if f == "nl.toml" {
            assert!(text.contains(from), "nl.toml has no {from:?}");
            text = text.replace(from, to);
        }
        if f == "humanline.toml" {
            text = text.replace(
                "audio_dir = \"../audio\"",
                &format!("audio_dir = {:?}", repo().join("audio")),
            );
        }
        std::fs::write(dir.path().join(f), text).unwrap();
    }
    let out = Command::cargo_bin("humanline")
        .unwrap()
        .arg("check-config")
        .arg("--prompts")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let nl = std::fs::read_to_string(dir.path().join("nl.toml")).unwrap();
    (String::from_utf8_lossy(&out.stderr).into_owned(), nl)
}

#[test]
fn an_english_only_model_for_dutch_is_refused_at_its_line() {
    let (err, nl) = check_dutch_config(
        "model = \"ggml-base-q8_0.bin\"",
        "model = \"ggml-tiny.en.bin\"",
    );
    let line = nl.lines().position(|l| l.starts_with("model =")).unwrap() + 1;
    assert!(
        err.contains(&format!("nl.toml:{line}:")) && err.contains("English-only"),
        "{err}"
    );
}

#[test]
fn a_beam_too_wide_is_refused_at_its_line() {
    let (err, nl) = check_dutch_config("# beam_size = 5", "beam_size = 40");
    let line = nl
        .lines()
        .position(|l| l.starts_with("beam_size ="))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("nl.toml:{line}:")) && err.contains("beam_size must be 1 to 8"),
        "{err}"
    );
}
