//! Speech engine: audio in, transcripts out, as early as possible.
//!
//! Humanline's product is speed to a human, so the engine is built around *partial* transcripts:
//! the caller's words are decoded every few hundred milliseconds while they are still speaking,
//! and the driver can act on "agent" before the sentence ends.
//!
//! Pieces, from the wire inward:
//! - [`audio`]: WAV loading (any rate, channels, PCM/float/G.711) to 16 kHz mono, a streaming
//!   resampler for 8 kHz telephone frames, and G.711 (mu-law/A-law) codecs.
//! - [`vad`]: earshot voice activity detection with start/end hysteresis, so silence is never
//!   decoded (Whisper invents text on silence).
//! - [`recognizer`]: [`StreamingRecognizer`], a sans-IO state machine: push 16 kHz audio, poll
//!   outputs (speech started/ended, decode jobs to run), feed decode results back, poll
//!   partial/final transcripts. No threads, no clocks: audio time is the only time.
//! - [`engine`]: [`WhisperEngine`] (the model, loaded once) implementing [`Transcriber`], the
//!   decode settings ([`DecodeOptions`]) and [`DecoderPool`], a bounded set of worker threads that
//!   drops superseded partial decodes and reports how far behind it is.
//! - [`languages`]: [`LanguageEngines`], a model and a decoder prompt per language, chosen per
//!   decode from the call's language.
//! - [`models`]: where models come from: CTranslate2 to ggml conversion ([`models::convert`])
//!   and which model file a command uses.
//! - [`scheduler`]: the pool's queue policy (finals first, partials shed first, a final that
//!   cannot be decoded in time refused at once); [`watch`]: when a call gives up on
//!   recognition and sends the caller to a person. Both sans-IO.
//!
//! A driver loop, per call (see `recognizer` for a fuller example):
//! ```ignore
//! rec.push_audio(&samples_16k);
//! while let Some(out) = rec.poll_output() {
//!     match out {
//!         RecognizerOutput::Decode(job) => {
//!             let tx = tx.clone();
//!             // The reply always comes (also for refused or superseded jobs).
//!             let _ = pool.submit(job, move |r| { let _ = tx.send(r); });
//!         }
//!         RecognizerOutput::Partial { text, .. } => brain.on_partial(&text),
//!         other => { /* speech started: barge-in; final: ... */ }
//!     }
//! }
//! // when a DecodeResult arrives on rx: rec.on_result(&result)
//! ```
//!
//! Measured here (tiny.en, 26 espeak-ng phone-band clips of 0.7-2.2 s, 2 cores): Adaptive
//! decodes take a median 330 ms on one thread (190 ms on two), the full 30 s window 1.65 s
//! (1.1 s); see `engine::bench` to reproduce.

pub mod audio;
pub mod engine;
pub mod languages;
pub mod models;
pub mod recognizer;
pub mod scheduler;
pub mod vad;
pub mod verifier;
pub mod watch;

use std::path::{Path, PathBuf};
use std::time::Instant;

pub use audio::{
    SAMPLE_RATE, StreamResampler, alaw_decode, alaw_encode, decode_wav_mono, decode_wav_mono_16k,
    encode_wav_mono, f32_to_i16, load_wav_mono_16k, mulaw_decode, mulaw_encode, resample,
};
pub use engine::{
    DecodeOptions, DecodeResult, DecodeStrategy, DecoderPool, ESCAPE_PROMPT, EngineOptions, Heard,
    PoolConfig, PoolStats, Transcriber, WhisperEngine, clean_transcript, is_language_code,
    threads_per_decoder,
};
pub use languages::{LanguageEngines, LanguageSpec};
pub use recognizer::{
    DecodeJob, DecodeKind, JobId, RecognizerConfig, RecognizerOutput, StreamingRecognizer,
};
pub use scheduler::{JobClass, SchedulerConfig};
pub use vad::{
    EarshotScorer, EnergyScorer, FRAME_MS, FRAME_SAMPLES, Vad, VadConfig, VadEvent, VadFrame,
    VadGate, VoiceScorer,
};
pub use verifier::{KeywordVerifier, PhraseKind, Verdict, VerifierSettings};
pub use watch::{GiveUp, RecognitionWatch};

/// Everything that can go wrong in the speech engine.
#[derive(Debug, thiserror::Error)]
pub enum SpeechError {
    #[error("cannot read audio file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot decode WAV file {path}: {detail}")]
    Wav { path: PathBuf, detail: String },
    #[error("unsupported audio: {0}")]
    UnsupportedAudio(String),
    #[error("resampling failed: {0}")]
    Resample(String),
    #[error(
        "Whisper model not found at {path}; run the set-up step that converts the model to ggml"
    )]
    ModelNotFound { path: PathBuf },
    #[error("cannot load Whisper model {path}: {detail}")]
    ModelLoad { path: PathBuf, detail: String },
    #[error("Whisper decoding failed: {0}")]
    Decode(String),
    #[error("invalid speech configuration: {0}")]
    InvalidConfig(String),
    /// A queued partial decode was replaced by a newer one for the same utterance.
    #[error("decode job superseded by a newer one")]
    Superseded,
    /// The decode queue is full: recognition is falling behind real time.
    #[error("decoder queue full ({capacity} jobs): recognition is falling behind")]
    Overloaded { capacity: usize },
    /// A final could not be decoded in time (the decoders are that far behind): the caller
    /// should go to a person rather than wait.
    #[error("recognition is behind: a final would wait {wait_ms} ms")]
    Behind { wait_ms: u64 },
    #[error("decoder pool is shut down")]
    PoolShutDown,
}

impl SpeechError {
    pub(crate) fn wav(path: &Path, detail: impl std::fmt::Display) -> Self {
        SpeechError::Wav {
            path: path.to_path_buf(),
            detail: detail.to_string(),
        }
    }
}

/// Transcript of a whole file, decoded the way a live call would be (VAD-segmented utterances).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FileTranscript {
    /// Utterance texts joined by a space.
    pub text: String,
    /// One entry per utterance the VAD found.
    pub utterances: Vec<String>,
    /// Length of the audio in milliseconds.
    pub audio_ms: u64,
    /// Wall-clock time spent in recognition (VAD and decoding, not file loading).
    pub asr_ms: u64,
}

/// Transcribe a WAV file: load, split into utterances with the VAD, decode each final.
///
/// Silence is never decoded, so a silent file gives an empty transcript instead of Whisper's
/// invented "Thank you." Partials are not decoded here (there is no one to act on them).
pub fn transcribe_file(
    engine: &dyn Transcriber,
    path: impl AsRef<Path>,
    opts: &DecodeOptions,
) -> Result<FileTranscript, SpeechError> {
    let audio = load_wav_mono_16k(path)?;
    let started = Instant::now();
    let config = RecognizerConfig {
        partial_interval_ms: 0,
        ..RecognizerConfig::default()
    };
    let utterances = transcribe_utterances(engine, &audio, config, opts)?;
    Ok(FileTranscript {
        text: utterances.join(" "),
        utterances,
        audio_ms: samples_to_ms(audio.len() as u64),
        asr_ms: started.elapsed().as_millis() as u64,
    })
}

/// Run 16 kHz audio through a [`StreamingRecognizer`] synchronously and return the finals.
/// Empty finals (noise the model heard no words in) are left out.
pub fn transcribe_utterances(
    engine: &dyn Transcriber,
    audio_16k: &[f32],
    config: RecognizerConfig,
    opts: &DecodeOptions,
) -> Result<Vec<String>, SpeechError> {
    let mut rec = StreamingRecognizer::new(0, config)?;
    let mut finals = Vec::new();
    // Feed in 20 ms pieces, as a phone line would, so the result matches live behaviour.
    for chunk in audio_16k.chunks(320) {
        rec.push_audio(chunk);
        drain_sync(&mut rec, engine, opts, &mut finals)?;
    }
    rec.finish();
    drain_sync(&mut rec, engine, opts, &mut finals)?;
    Ok(finals)
}

/// Poll the recognizer dry, decoding each job on the spot.
fn drain_sync(
    rec: &mut StreamingRecognizer,
    engine: &dyn Transcriber,
    opts: &DecodeOptions,
    finals: &mut Vec<String>,
) -> Result<(), SpeechError> {
    while let Some(out) = rec.poll_output() {
        match out {
            RecognizerOutput::Decode(job) => {
                let text = engine.transcribe(&job.audio, opts)?;
                rec.on_decoded(job.id, &text);
            }
            RecognizerOutput::Final { text, .. } if !text.is_empty() => finals.push(text),
            _ => {}
        }
    }
    Ok(())
}

/// Audio time of a 16 kHz sample count, in milliseconds.
pub fn samples_to_ms(samples: u64) -> u64 {
    samples * 1000 / SAMPLE_RATE as u64
}

/// Number of 16 kHz samples in `ms` milliseconds.
pub fn ms_to_samples(ms: u64) -> u64 {
    ms * SAMPLE_RATE as u64 / 1000
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests {
    use super::testutil::{engine, phone_noise, phone_speech, silence, words};
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, mpsc};
    use std::time::Duration;

    /// Counts decodes; answers "hello".
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Transcriber for Counting {
        fn transcribe(&self, _: &[f32], _: &DecodeOptions) -> Result<String, SpeechError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok("hello".into())
        }
    }

    #[test]
    fn silence_and_noise_are_never_decoded() {
        let mut cases = vec![("silence", silence(2_000))];
        for (name, kind, vol) in [("white", "whitenoise", 0.01), ("pink", "pinknoise", 0.03)] {
            let Some(noise) = phone_noise(kind, 2.0, vol) else {
                return;
            };
            cases.push((name, noise));
        }
        for (name, audio) in cases {
            let counter = Counting::default();
            let finals = transcribe_utterances(
                &counter,
                &audio,
                RecognizerConfig::default(),
                &DecodeOptions::default(),
            )
            .expect("transcribe");
            assert!(finals.is_empty(), "{name}: {finals:?}");
            assert_eq!(counter.0.load(Ordering::Relaxed), 0, "{name} was decoded");
        }
    }

    #[test]
    fn transcribe_file_finds_the_human_request() {
        let Some(engine) = engine() else { return };
        let Some(speech) = phone_speech("I want to talk to a human", "en-us", 165) else {
            return;
        };
        let mut audio = silence(700);
        audio.extend_from_slice(&speech);
        audio.extend(silence(700));
        // Through a file, as the CLI would: 16-bit 8 kHz WAV, like a call recording.
        let path = std::env::temp_dir().join(format!("humanline-human-{}.wav", std::process::id()));
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let audio_8k = resample(&audio, 16_000, 8_000).expect("resample");
        {
            let mut w = hound::WavWriter::create(&path, spec).expect("wav");
            for s in audio_8k {
                w.write_sample(audio::f32_to_i16(s)).expect("sample");
            }
            w.finalize().expect("finalize");
        }
        let t =
            transcribe_file(engine.as_ref(), &path, &DecodeOptions::default()).expect("transcribe");
        let _ = std::fs::remove_file(&path);
        eprintln!("transcript: {t:?}");
        assert_eq!(t.utterances.len(), 1, "{t:?}");
        assert!(words(&t.text).contains(&"human".to_string()), "{t:?}");
        assert!((3_000..3_400).contains(&t.audio_ms), "{t:?}");
    }

    /// Stream `audio` in real time (20 ms chunks) through a recognizer and a decoder pool.
    /// Returns (audio time ms when it arrived, output) for partials, finals and speech events.
    fn stream_realtime(
        engine: Arc<dyn Transcriber>,
        audio: &[f32],
    ) -> Vec<(u64, RecognizerOutput)> {
        let pool = DecoderPool::new(engine, PoolConfig::default()).expect("pool");
        let mut rec = StreamingRecognizer::new(1, RecognizerConfig::default()).expect("rec");
        let (tx, rx) = mpsc::channel();
        let mut log = Vec::new();
        let started = std::time::Instant::now();
        let mut chunks = audio.chunks(320);
        let mut finished = false;
        loop {
            match chunks.next() {
                Some(chunk) => {
                    // Keep to real time: this chunk is due at its audio time.
                    let due = Duration::from_millis(rec.audio_ms() + 20);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    rec.push_audio(chunk);
                }
                None if !finished => {
                    rec.finish();
                    finished = true;
                }
                None => match rx.recv_timeout(Duration::from_secs(10)) {
                    Ok(r) => rec.on_result(&r),
                    Err(_) => break,
                },
            }
            while let Ok(r) = rx.try_recv() {
                rec.on_result(&r);
            }
            let now_ms = started.elapsed().as_millis() as u64;
            while let Some(out) = rec.poll_output() {
                match out {
                    RecognizerOutput::Decode(job) => {
                        let tx = tx.clone();
                        pool.submit(job, move |r| {
                            let _ = tx.send(r);
                        })
                        .expect("submit");
                    }
                    RecognizerOutput::Final { .. } => {
                        log.push((now_ms, out));
                        if finished {
                            return log;
                        }
                    }
                    other => log.push((now_ms, other)),
                }
            }
        }
        log
    }

    #[test]
    fn partials_come_before_the_final() {
        // Deterministic: every decode runs at once, so the count only depends on the audio.
        let Some(engine) = engine() else { return };
        let Some(speech) = phone_speech(
            "I would like to talk to a representative about my bill",
            "en-us",
            165,
        ) else {
            return;
        };
        let mut audio = silence(500);
        audio.extend_from_slice(&speech);
        audio.extend(silence(1_000));
        let mut rec = StreamingRecognizer::new(1, RecognizerConfig::default()).expect("rec");
        let mut texts = Vec::new();
        for chunk in audio.chunks(320) {
            rec.push_audio(chunk);
            while let Some(out) = rec.poll_output() {
                match out {
                    RecognizerOutput::Decode(job) => {
                        let text = engine
                            .transcribe(&job.audio, &DecodeOptions::default())
                            .expect("decode");
                        rec.on_decoded(job.id, &text);
                    }
                    RecognizerOutput::Partial { text, .. } => {
                        texts.push(format!("partial: {text}"))
                    }
                    RecognizerOutput::Final { text, .. } => texts.push(format!("final: {text}")),
                    _ => {}
                }
            }
        }
        eprintln!("{texts:#?}");
        assert!(
            speech.len() >= 16_000 * 5 / 2,
            "utterance should be about 3 s"
        );
        let last = texts.last().cloned().unwrap_or_default();
        assert!(
            last.starts_with("final: ") && words(&last).len() >= 6,
            "{texts:?}"
        );
        assert!(texts.len() >= 6, "expected several partials: {texts:?}");
    }

    #[test]
    fn long_utterance_gives_partials_before_the_final() {
        let Some(engine) = engine() else { return };
        let Some(speech) = phone_speech(
            "I would like to talk to a representative about my bill",
            "en-us",
            165,
        ) else {
            return;
        };
        let mut audio = silence(500);
        audio.extend_from_slice(&speech);
        audio.extend(silence(1_000));
        let log = stream_realtime(engine, &audio);
        for (ms, out) in &log {
            eprintln!("{ms:5} ms wall: {out:?}");
        }
        let final_at = log
            .iter()
            .position(|(_, o)| matches!(o, RecognizerOutput::Final { .. }))
            .expect("final");
        let partials = log[..final_at]
            .iter()
            .filter(|(_, o)| matches!(o, RecognizerOutput::Partial { .. }))
            .count();
        // At least one even on a loaded machine; 3-4 on an idle one.
        assert!(partials >= 1, "{partials} partials before the final");
        let RecognizerOutput::Final { text, .. } = &log[final_at].1 else {
            unreachable!()
        };
        assert!(words(text).len() >= 5, "{text:?}");
        assert!(
            speech.len() >= 16_000 * 5 / 2,
            "utterance should be about 3 s"
        );
    }
}

#[cfg(test)]
mod bench_partials {
    //! How early partials show the escape word, and whether the escape prompt makes partials
    //! of other sentences show one that was never said. Run with
    //! `cargo test --release --lib bench_partial -- --ignored --nocapture`.
    use super::testutil::{engine, phone_speech, silence, words};
    use super::*;

    const ESCAPE_WORDS: [&str; 6] = [
        "human",
        "agent",
        "operator",
        "representative",
        "person",
        "someone",
    ];

    fn has_escape(text: &str) -> bool {
        words(text)
            .iter()
            .any(|w| ESCAPE_WORDS.iter().any(|e| w.starts_with(e)))
    }

    #[test]
    #[ignore = "benchmark"]
    fn bench_partial_escape_words() {
        let Some(engine) = engine() else { return };
        let escape = [
            "I want to talk to a human",
            "can I speak to an agent please",
            "operator",
            "get me a representative",
            "I just want a real person",
        ];
        let other = [
            "I need to check my account balance",
            "my internet is not working since yesterday",
            "I would like to pay my bill",
            "what are your opening hours",
            "can you tell me the status of my order",
            "I want to change my address",
            "my card was declined",
            "yes that is correct",
        ];
        // BENCH_MARGIN overrides the context margin, to compare.
        let base = DecodeOptions {
            ctx_margin: std::env::var("BENCH_MARGIN")
                .ok()
                .and_then(|m| m.parse().ok())
                .unwrap_or(DecodeOptions::default().ctx_margin),
            ..DecodeOptions::default()
        };
        for (name, opts) in [
            ("with prompt", base.clone()),
            ("no prompt", base.clone().without_prompt()),
        ] {
            let (mut false_partials, mut total_partials, mut false_finals) = (0, 0, 0);
            let mut leads = Vec::new();
            let mut missed = 0;
            for voice in ["en-us", "en-us+f3"] {
                for (is_escape, phrase) in escape
                    .iter()
                    .map(|p| (true, p))
                    .chain(other.iter().map(|p| (false, p)))
                {
                    let Some(speech) = phone_speech(phrase, voice, 165) else {
                        return;
                    };
                    let mut audio = silence(500);
                    audio.extend_from_slice(&speech);
                    audio.extend(silence(800));
                    let mut rec =
                        StreamingRecognizer::new(1, RecognizerConfig::default()).expect("rec");
                    let mut first_hit: Option<u64> = None;
                    let mut end_ms = None;
                    let mut texts = Vec::new();
                    for chunk in audio.chunks(320) {
                        rec.push_audio(chunk);
                        while let Some(out) = rec.poll_output() {
                            match out {
                                RecognizerOutput::Decode(job) => {
                                    let end = job.start_ms + job.audio_ms();
                                    let text =
                                        engine.transcribe(&job.audio, &opts).unwrap_or_default();
                                    if job.id.kind == DecodeKind::Partial && !text.is_empty() {
                                        total_partials += usize::from(!is_escape);
                                        if has_escape(&text) {
                                            if is_escape {
                                                first_hit.get_or_insert(end);
                                            } else {
                                                false_partials += 1;
                                            }
                                        }
                                    }
                                    if job.id.kind == DecodeKind::Final && has_escape(&text) {
                                        if is_escape {
                                            first_hit.get_or_insert(end);
                                        } else {
                                            false_finals += 1;
                                        }
                                    }
                                    texts.push(format!("{:?}@{end}: {text}", job.id.kind));
                                    rec.on_decoded(job.id, &text);
                                }
                                RecognizerOutput::SpeechEnded { at_ms, .. } => end_ms = Some(at_ms),
                                _ => {}
                            }
                        }
                    }
                    if std::env::var_os("BENCH_VERBOSE").is_some() {
                        println!("  {voice} {phrase:?}: {texts:?}");
                    }
                    if is_escape {
                        match (first_hit, end_ms) {
                            // Audio time of the first hit relative to the end of speech
                            // (negative: while the caller was still talking).
                            (Some(hit), Some(end)) => leads.push(hit as i64 - end as i64),
                            _ => missed += 1,
                        }
                    }
                }
            }
            leads.sort_unstable();
            println!(
                "{name:12}: escape word first heard at {leads:?} ms of audio relative to the end of speech (missed {missed}/10); \
                 non-escape sentences: {false_partials}/{total_partials} partials and {false_finals}/16 finals show an escape word"
            );
        }
    }
}
