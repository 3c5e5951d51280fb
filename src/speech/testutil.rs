//! Test helpers: phone-band speech from espeak-ng + sox, noise, and the model (tests that need
//! any of them skip with a printed notice when it is missing).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::engine::{EngineOptions, WhisperEngine};
use super::load_wav_mono_16k;

/// `$HUMANLINE_MODEL` (the variable scripts/test.sh, CI and the integration tests set), else
/// `models/ggml-tiny.en.bin` in the crate.
pub fn model_path() -> PathBuf {
    match std::env::var_os("HUMANLINE_MODEL") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/ggml-tiny.en.bin"),
    }
}

/// CI installs the model: there a missing one fails the test instead of skipping it.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The model, loaded once per test binary; `None` (with a notice) if absent.
pub fn engine() -> Option<Arc<WhisperEngine>> {
    static ENGINE: OnceLock<Option<Arc<WhisperEngine>>> = OnceLock::new();
    let e = ENGINE.get_or_init(|| {
        let path = model_path();
        if !path.exists() {
            return None;
        }
        match WhisperEngine::load(&path, EngineOptions::default()) {
            Ok(e) => Some(e),
            Err(err) => panic!("model present but failed to load: {err}"),
        }
    });
    if e.is_none() {
        let msg = format!(
            "no Whisper model at {} (set HUMANLINE_MODEL)",
            model_path().display()
        );
        assert!(
            !in_ci(),
            "{msg} (CI=true: the test environment must provide it)"
        );
        eprintln!("SKIPPED: {msg}");
    }
    e.clone()
}

fn tool_ok(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// espeak-ng and sox both installed; prints a notice if not.
pub fn have_tools() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    let ok = *OK.get_or_init(|| tool_ok("espeak-ng") && tool_ok("sox"));
    if !ok {
        eprintln!("SKIPPED: espeak-ng and sox are needed to synthesise test speech");
    }
    ok
}

fn scratch_path(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "humanline-speech-{}-{n}-{tag}.wav",
        std::process::id()
    ))
}

fn run(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

/// `text` spoken by espeak-ng (`voice`, `wpm`), sent through a phone channel (300-3400 Hz,
/// 8 kHz mu-law) and loaded back at 16 kHz. `None` if the tools are missing.
pub fn phone_speech(text: &str, voice: &str, wpm: u32) -> Option<Vec<f32>> {
    if !have_tools() {
        return None;
    }
    let raw = scratch_path("tts");
    let phone = scratch_path("phone");
    let ok = run(Command::new("espeak-ng")
        .args(["-v", voice, "-s", &wpm.to_string(), "-w"])
        .arg(&raw)
        .arg(text))
        // -D: no dither, so the same text always gives the same audio (sox dithers randomly
        // when it reduces to 8 bits, which made transcripts differ from run to run).
        && run(Command::new("sox")
            .arg("-D")
            .arg(&raw)
            .args(["-r", "8000", "-c", "1", "-e", "mu-law"])
            .arg(&phone)
            .args(["sinc", "300-3400"]));
    let audio = ok.then(|| load_wav_mono_16k(&phone).ok()).flatten();
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(&phone);
    audio
}

/// Noise from sox's synth (`kind`: whitenoise, pinknoise, brownnoise) at `vol` (0..1), phone
/// band, 16 kHz.
pub fn phone_noise(kind: &str, secs: f32, vol: f32) -> Option<Vec<f32>> {
    if !have_tools() {
        return None;
    }
    let path = scratch_path("noise");
    let ok = run(Command::new("sox")
        .args(["-D", "-n", "-r", "8000", "-c", "1", "-e", "mu-law"])
        .arg(&path)
        .args([
            "synth",
            &secs.to_string(),
            kind,
            "vol",
            &vol.to_string(),
            "sinc",
            "300-3400",
        ]));
    let audio = ok.then(|| load_wav_mono_16k(&path).ok()).flatten();
    let _ = std::fs::remove_file(&path);
    audio
}

/// `ms` of digital silence at 16 kHz.
pub fn silence(ms: u64) -> Vec<f32> {
    vec![0.0; (ms * 16) as usize]
}

/// Lower-case words without punctuation, for lenient comparisons (the escape matcher's own).
pub use crate::escape::normalize::words;
