//! One caller turn from a recording: the audio goes through the streaming recognizer 20 ms at a
//! time, as a phone line would deliver it, and what the recognizer hears comes out as brain
//! events with the time they would happen on a live call.
//!
//! Two clocks: `Paced` feeds audio in real time and decodes on the shared [`DecoderPool`]
//! (what a live call does); `Fast` runs as fast as the machine can, decoding inline, and
//! places each transcript at the time it would have arrived — the audio time it was requested
//! plus the measured decode time, one decoder per call — so figures match a live call on an
//! idle machine without waiting for the audio to play.

use crate::brain::Event;
use crate::escape::normalize::collapse_repeats;
use crate::speech::{
    DecodeKind, DecodeOptions, DecodeResult, DecoderPool, JobId, RecognizerConfig,
    RecognizerOutput, SpeechError, StreamingRecognizer, Transcriber,
};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const FRAME: usize = 320; // 20 ms at 16 kHz
const FRAME_MS: u64 = 20;
/// After the recording ends, silence is fed for this long so the VAD can see the speech end.
const TRAILING_SILENCE_MS: u64 = 2_000;
/// A turn never waits longer than this for outstanding decodes.
const MAX_WAIT_AFTER_AUDIO: Duration = Duration::from_secs(20);

pub enum Decoding<'a> {
    Fast {
        engine: &'a dyn Transcriber,
        opts: &'a DecodeOptions,
    },
    Paced {
        pool: &'a DecoderPool,
    },
}

/// What a turn measured.
#[derive(Debug, Default, Clone)]
pub struct TurnStats {
    /// Decode time of each final, ms.
    pub final_decode_ms: Vec<u64>,
    /// Decode time of each partial, ms.
    pub partial_decode_ms: Vec<u64>,
    pub finals: Vec<String>,
    pub partials: usize,
    /// The consumer stopped the turn (e.g. the caller was routed).
    pub stopped_at_ms: Option<u64>,
}

/// The end of speech in a recording: the end of the last 20 ms frame whose level is within
/// 35 dB of the loudest frame. Robust to the recording's own silence padding.
pub fn speech_end_ms(audio: &[f32]) -> u64 {
    let rms: Vec<f32> = audio
        .chunks(FRAME)
        .map(|f| (f.iter().map(|s| s * s).sum::<f32>() / f.len() as f32).sqrt())
        .collect();
    let peak = rms.iter().copied().fold(0.0f32, f32::max);
    if peak <= 1e-6 {
        return 0;
    }
    let floor = peak * 10f32.powf(-35.0 / 20.0);
    rms.iter()
        .rposition(|r| *r >= floor)
        .map_or(0, |i| (i as u64 + 1) * FRAME_MS)
}

/// Runs one turn. `emit(at_ms, event)` receives each brain event at its time from the start of
/// the turn; returning `Break` ends the turn early.
pub fn run_turn(
    audio: &[f32],
    stream: u64,
    language: Option<&str>,
    config: RecognizerConfig,
    decoding: Decoding<'_>,
    mut emit: impl FnMut(u64, Event) -> ControlFlow<()>,
) -> Result<TurnStats, SpeechError> {
    let mut stats = TurnStats::default();
    let mut rec = StreamingRecognizer::new(stream, config)?;
    rec.set_language(language);
    let (tx, rx) = mpsc::channel::<DecodeResult>();
    let no_cancel = std::sync::atomic::AtomicBool::new(false);
    // Fast mode: results waiting for their (virtual) arrival time; the decoder is busy until.
    let mut arriving: Vec<(u64, DecodeResult)> = Vec::new();
    let mut busy_until = 0u64;
    let wall_start = Instant::now();
    let silence = [0f32; FRAME];
    let audio_frames = audio.len().div_ceil(FRAME) as u64;
    let mut step = 0u64;
    let mut finished = false;
    loop {
        let t = step * FRAME_MS;
        let in_audio = step < audio_frames;
        if let Decoding::Paced { .. } = decoding {
            let due = wall_start + Duration::from_millis(t);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        if in_audio {
            let start = step as usize * FRAME;
            rec.push_audio(&audio[start..(start + FRAME).min(audio.len())]);
        } else if t < audio_frames * FRAME_MS + TRAILING_SILENCE_MS {
            rec.push_audio(&silence);
        } else if !finished {
            rec.finish();
            finished = true;
        }
        // Results that have arrived by now.
        let mut ready: Vec<DecodeResult> = rx.try_iter().collect();
        arriving.sort_by_key(|(at, _)| *at);
        while arriving.first().is_some_and(|(at, _)| *at <= t) {
            ready.push(arriving.remove(0).1);
        }
        for r in ready {
            match r.job.kind {
                DecodeKind::Final => stats.final_decode_ms.push(r.decode_ms),
                DecodeKind::Partial => stats.partial_decode_ms.push(r.decode_ms),
            }
            rec.on_result(&r);
        }
        while let Some(out) = rec.poll_output() {
            let event = match out {
                RecognizerOutput::Decode(job) => {
                    match &decoding {
                        Decoding::Fast { engine, opts } => {
                            let began = Instant::now();
                            let heard = engine.transcribe_heard(
                                &job.audio,
                                &opts.for_language(job.language.as_deref()),
                                &no_cancel,
                            );
                            let (outcome, verdicts) = match heard {
                                Ok(h) => (Ok(h.text), h.verdicts),
                                Err(e) => (Err(e), Vec::new()),
                            };
                            let decode_ms = began.elapsed().as_millis() as u64;
                            let start = t.max(busy_until);
                            busy_until = start + decode_ms;
                            let audio_ms = job.audio_ms();
                            let result = DecodeResult {
                                job: job.id,
                                outcome,
                                decode_ms,
                                audio_ms,
                                queue_ms: start - t,
                                verdicts,
                            };
                            arriving.push((busy_until, result));
                        }
                        Decoding::Paced { pool } => {
                            let tx = tx.clone();
                            let id: JobId = job.id;
                            if let Err(e) = pool.submit(job, move |r| {
                                let _ = tx.send(r);
                            }) {
                                // Refused (overloaded): recognition cannot keep up for this
                                // caller, so hand them to a person.
                                tracing::warn!(?id, error = %e, "decode refused");
                                if emit(t, Event::SpeechEngineDegraded).is_break() {
                                    stats.stopped_at_ms = Some(t);
                                    return Ok(stats);
                                }
                            }
                        }
                    }
                    continue;
                }
                RecognizerOutput::SpeechStarted { .. } => Event::SpeechStarted,
                RecognizerOutput::SpeechEnded { .. } => Event::SpeechEnded,
                RecognizerOutput::Partial { text, verdicts, .. } => {
                    stats.partials += 1;
                    if !verdicts.is_empty() && emit(t, Event::Verified { verdicts }).is_break() {
                        stats.stopped_at_ms = Some(t);
                        return Ok(stats);
                    }
                    Event::PartialTranscript {
                        text: collapse_repeats(&text),
                    }
                }
                RecognizerOutput::Final { text, verdicts, .. } => {
                    let text = collapse_repeats(&text);
                    stats.finals.push(text.clone());
                    if !verdicts.is_empty() && emit(t, Event::Verified { verdicts }).is_break() {
                        stats.stopped_at_ms = Some(t);
                        return Ok(stats);
                    }
                    Event::FinalTranscript { text }
                }
                RecognizerOutput::DecodeFailed {
                    kind: DecodeKind::Final,
                    error,
                    ..
                } => {
                    tracing::warn!(%error, "final decode failed");
                    Event::SpeechEngineDegraded
                }
                RecognizerOutput::DecodeFailed { .. } => continue,
            };
            if emit(t, event).is_break() {
                stats.stopped_at_ms = Some(t);
                return Ok(stats);
            }
        }
        let outstanding = rec.in_speech() || rec.pending_finals() > 0 || !arriving.is_empty();
        if finished && !outstanding {
            return Ok(stats);
        }
        if finished && wall_start.elapsed() > Duration::from_millis(t) + MAX_WAIT_AFTER_AUDIO {
            tracing::warn!("gave up waiting for decodes");
            return Ok(stats);
        }
        step += 1;
    }
}

/// Loads a model for a command, with the path explained when it is missing.
pub fn load_engine(model: &std::path::Path) -> anyhow::Result<Arc<crate::speech::WhisperEngine>> {
    use anyhow::Context;
    let engine = crate::speech::WhisperEngine::load(model, crate::speech::EngineOptions::default())
        .with_context(|| {
            format!(
                "loading the speech model {} (scripts/setup.sh fetches it)",
                model.display()
            )
        })?;
    Ok(engine)
}

/// Loads each language's model for a command: `--model` (or `$HUMANLINE_MODEL`) for every
/// language when given, else each language's `[speech] model` from the models folder.
pub fn load_languages(
    flow: &crate::config::Flow,
    model: Option<&std::path::Path>,
) -> anyhow::Result<Arc<crate::speech::LanguageEngines>> {
    use crate::speech::models;
    use anyhow::Context;
    let every = models::explicit_model(model);
    let specs = flow.speech_specs(every.as_deref());
    for s in &specs {
        anyhow::ensure!(
            s.model.is_file(),
            "the speech model {} for language `{}` is missing (scripts/fetch-model.sh fetches it)",
            s.model.display(),
            s.code
        );
    }
    crate::speech::LanguageEngines::load(
        &specs,
        &flow.default_language,
        crate::speech::EngineOptions::default(),
    )
    .context("loading the speech models (scripts/setup.sh fetches them)")
}
