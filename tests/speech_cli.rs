//! Speech as a caller would meet it, with the real model: phone-band speech made by espeak-ng
//! and sox, run through `humanline simulate --caller` and `humanline transcribe`.

use assert_cmd::Command;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

fn model() -> Option<PathBuf> {
    let path = std::env::var_os("HUMANLINE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ggml-tiny.en.bin"));
    if path.is_file() {
        return Some(path);
    }
    // CI fetches the model first; a missing one there is a failure, not a skip.
    assert!(
        std::env::var("CI").is_err(),
        "speech model missing at {}",
        path.display()
    );
    eprintln!(
        "skipping: no speech model at {} (scripts/setup.sh fetches it)",
        path.display()
    );
    None
}

/// Says `text` through a telephone channel (300-3400 Hz, mu-law, 8 kHz) into a WAV at `rate`.
fn phone_speech(dir: &Path, name: &str, text: &str, voice: &str, rate: u32) -> PathBuf {
    let raw = dir.join(format!("{name}.raw.wav"));
    let ulaw = dir.join(format!("{name}.ulaw.wav"));
    let out = dir.join(format!("{name}.wav"));
    let ok = Process::new("espeak-ng")
        .args(["-v", voice, "-s", "150", "-w"])
        .arg(&raw)
        .arg(text)
        .status();
    assert!(
        ok.is_ok_and(|s| s.success()),
        "espeak-ng failed (scripts/setup.sh installs it)"
    );
    let ok = Process::new("sox")
        .arg(&raw)
        .args(["-r", "8000", "-c", "1", "-e", "mu-law"])
        .arg(&ulaw)
        .args(["sinc", "300-3400", "pad", "0.3", "0.8"])
        .status();
    assert!(ok.is_ok_and(|s| s.success()), "sox failed");
    let ok = Process::new("sox")
        .arg(&ulaw)
        .args(["-e", "signed-integer", "-b", "16", "-r"])
        .arg(rate.to_string())
        .arg(&out)
        .status();
    assert!(ok.is_ok_and(|s| s.success()), "sox failed");
    out
}

fn simulate(model: &Path, callers: &[&Path]) -> Vec<Value> {
    let mut cmd = Command::cargo_bin("humanline").unwrap();
    cmd.arg("simulate").arg("--fast").arg("--model").arg(model);
    cmd.arg("--prompts")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts"));
    for c in callers {
        cmd.arg("--caller").arg(c);
    }
    let out = cmd.output().unwrap();
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

fn route(events: &[Value]) -> Option<&Value> {
    events.iter().find(|e| e["event"] == "route")
}

#[test]
fn a_caller_asking_for_a_human_on_a_phone_line_is_routed_while_speaking_or_just_after() {
    let Some(model) = model() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (i, text) in [
        "I want to talk to a human",
        "let me talk to an agent",
        "operator please",
    ]
    .iter()
    .enumerate()
    {
        let wav = phone_speech(dir.path(), &format!("esc{i}"), text, "en-us", 8000);
        let events = simulate(&model, &[&wav]);
        let r = route(&events).unwrap_or_else(|| panic!("not routed for {text:?}: {events:?}"));
        assert_eq!(r["reason"], "keyword", "{text:?}: {r}");
        // Decided on the words as soon as they were heard: at the instant of the transcript
        // that held them, before the final's 3 s timer. How soon after the end of speech
        // depends on the CPU (620-740 ms on one machine, 2060-2080 ms on a slower one, where
        // a tiny.en decode of this sentence takes 1.6 s, with today's build and ac5121f
        // alike): speed is measured by `humanline bench speech`, not here.
        let at = r["t_ms"].as_i64();
        assert!(
            events
                .iter()
                .any(|e| (e["event"] == "partial" || e["event"] == "final")
                    && e["t_ms"].as_i64() == at
                    && e["text"] == r["context"]["said"][0]),
            "{text:?}: the route did not come with the transcript that held the words: {events:?}"
        );
        assert!(r["after_speech_end_ms"].as_i64().unwrap() < 3000, "{r}");
    }
}

#[test]
fn the_same_request_twice_routes_with_repetition_and_different_ones_do_not_escape() {
    let Some(model) = model() else { return };
    let dir = tempfile::tempdir().unwrap();
    // tiny.en mishears this on a phone line ("my internet is now"), the same way twice: a
    // repetition is still a repetition.
    let first = phone_speech(dir.path(), "a", "my internet is down", "en", 8000);
    let again = phone_speech(dir.path(), "b", "my internet is down", "en", 16000);
    let events = simulate(&model, &[&first, &again]);
    assert_eq!(
        route(&events).map(|r| r["reason"].clone()),
        Some("repetition".into()),
        "{events:?}"
    );

    let hours = phone_speech(
        dir.path(),
        "c",
        "what are your opening hours",
        "en-us",
        8000,
    );
    let internet = phone_speech(dir.path(), "d", "my internet is down", "en", 16000);
    let events = simulate(&model, &[&hours, &internet]);
    let reasons: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "route")
        .map(|e| e["reason"].clone())
        .collect();
    assert!(
        !reasons.contains(&"keyword".into()) && !reasons.contains(&"repetition".into()),
        "{events:?}"
    );
    // Both requests were understood and answered.
    let prompts: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "play")
        .map(|e| e["prompt"].clone())
        .collect();
    assert!(
        prompts.contains(&"topic_hours".into()) && prompts.contains(&"topic_internet".into()),
        "{prompts:?}"
    );
}

#[test]
fn transcribe_reads_8_and_16_khz_and_hears_nothing_in_silence() {
    let Some(model) = model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let narrow = phone_speech(dir.path(), "n", "operator please", "en-us", 8000);
    let wide = phone_speech(dir.path(), "w", "I want to talk to a human", "en-us", 16000);
    let silence = dir.path().join("silence.wav");
    let ok = Process::new("sox")
        .args(["-n", "-r", "8000", "-c", "1", "-b", "16"])
        .arg(&silence)
        .args(["trim", "0", "3"])
        .status();
    assert!(ok.is_ok_and(|s| s.success()));
    let noise = dir.path().join("noise.wav");
    let ok = Process::new("sox")
        .args(["-n", "-r", "16000", "-c", "2", "-b", "16"])
        .arg(&noise)
        .args(["synth", "3", "whitenoise", "vol", "0.003"])
        .status();
    assert!(ok.is_ok_and(|s| s.success()));
    let out = Command::cargo_bin("humanline")
        .unwrap()
        .arg("transcribe")
        .arg("--model")
        .arg(&model)
        .args([&narrow, &wide, &silence, &noise])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    let text = |i: usize| lines[i]["text"].as_str().unwrap().to_lowercase();
    assert!(text(0).contains("operator"), "{}", lines[0]);
    assert!(text(1).contains("human"), "{}", lines[1]);
    assert_eq!(text(2), "", "silence must give no transcript: {}", lines[2]);
    assert_eq!(
        text(3),
        "",
        "faint noise must give no transcript: {}",
        lines[3]
    );
    assert!(lines[0]["audio_ms"].as_u64().unwrap() > 500 && lines[0]["asr_ms"].is_u64());
}

#[test]
fn a_missing_recording_is_a_clear_error_and_other_files_still_transcribe() {
    let Some(model) = model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let good = phone_speech(dir.path(), "g", "agent", "en-us", 8000);
    let out = Command::cargo_bin("humanline")
        .unwrap()
        .arg("transcribe")
        .arg("--model")
        .arg(&model)
        .arg(dir.path().join("missing.wav"))
        .arg(&good)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.wav"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}
