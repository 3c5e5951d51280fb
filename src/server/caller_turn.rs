//! One caller turn from a recording: the audio goes through the streaming recognizer 20 ms at a
//! time, as a phone line would deliver it, and what the recognizer hears comes out as brain
//! events with the time they would happen on a live call.
//!
//! Two clocks: `Paced` feeds audio in real time and decodes on the shared [`DecoderPool`]
//! (what a live call does); `Fast` and `Pooled` run as fast as the machine can and place each
//! transcript at the time it would have arrived — the audio time it was requested plus the
//! measured decode time, one decoder per call — so figures match a live call on an idle
//! machine without waiting for the audio to play. `Fast` decodes inline on an engine of its
//! own (the benchmarks); `Pooled` one job at a time on the server's shared pool as a
//! background job, behind every live call's decodes and never on the pool's last free
//! decoder (the operator console's "try it" on a recording).

use crate::brain::Event;
use crate::escape::normalize::collapse_repeats;
use crate::speech::{
    DecodeKind, DecodeOptions, DecodeResult, DecoderPool, JobId, RecognitionWatch,
    RecognizerConfig, RecognizerOutput, SpeechError, StreamingRecognizer, Transcriber, watch,
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
    Pooled {
        pool: &'a DecoderPool,
        /// How long one decode may take, queue wait included, before the turn fails.
        within: Duration,
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
    // Paced: a final still missing at the deadline sends the caller to a person, as on a
    // live call (Fast mode decodes inline, so its finals always come).
    let mut watch = RecognitionWatch::default();
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
                    let urgent = job.id.kind == DecodeKind::Final || job.at_pause;
                    // On the virtual clock, as the pool does, a final or pause partial aborts
                    // the running partial of its utterance rather than wait for it.
                    if !matches!(decoding, Decoding::Paced { .. })
                        && urgent
                        && busy_until > t
                        && let Some(i) = arriving.iter().position(|(at, r)| {
                            *at == busy_until
                                && r.job.kind == DecodeKind::Partial
                                && r.job.utterance == job.id.utterance
                        })
                    {
                        let (_, mut aborted) = arriving.remove(i);
                        aborted.outcome = Err(SpeechError::Superseded);
                        arriving.push((t, aborted));
                        busy_until = t;
                    }
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
                            let result = DecodeResult {
                                job: job.id,
                                outcome,
                                decode_ms,
                                audio_ms: job.audio_ms(),
                                queue_ms: 0,
                                verdicts,
                            };
                            arrives(&mut arriving, &mut busy_until, t, result);
                        }
                        Decoding::Pooled { pool, within } => {
                            let id = job.id;
                            let (reply, answer) = mpsc::channel();
                            // Nobody is on a line waiting for it: calls come first.
                            let job = crate::speech::DecodeJob {
                                background: true,
                                ..job
                            };
                            // A refused job is answered on the channel too.
                            let _ = pool.submit_to(job, reply);
                            let Ok(mut result) = answer.recv_timeout(*within) else {
                                return Err(SpeechError::Decode(format!(
                                    "no answer from speech recognition within {} s ({id:?})",
                                    within.as_secs()
                                )));
                            };
                            // The calls left no decoder for it: the whole hearing is refused
                            // rather than reported as a caller sent to a person.
                            if let Err(
                                e @ (SpeechError::Behind { .. } | SpeechError::Overloaded { .. }),
                            ) = result.outcome
                            {
                                return Err(e);
                            }
                            // Waiting behind live calls is not this caller's time.
                            result.queue_ms = 0;
                            arrives(&mut arriving, &mut busy_until, t, result);
                        }
                        Decoding::Paced { pool } => {
                            let tx = tx.clone();
                            let id: JobId = job.id;
                            if let Err(e) = pool.submit(job, move |r| {
                                let _ = tx.send(r);
                            }) && let watch::Verdict::SendToPerson(why) =
                                RecognitionWatch::default().refused(id.kind, &e)
                            {
                                // Recognition cannot answer this caller in time: a person.
                                tracing::warn!(?id, error = %e, why = why.as_str(), "decode refused");
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
                RecognizerOutput::SpeechEnded { .. } => {
                    watch.speech_ended(Instant::now());
                    Event::SpeechEnded
                }
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
                    watch.final_heard();
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
                    watch.final_heard();
                    Event::SpeechEngineDegraded
                }
                RecognizerOutput::DecodeFailed { .. } => continue,
            };
            if emit(t, event).is_break() {
                stats.stopped_at_ms = Some(t);
                return Ok(stats);
            }
        }
        if let Decoding::Paced { .. } = decoding
            && let watch::Verdict::SendToPerson(why) = watch.on_time(Instant::now())
        {
            tracing::warn!(why = why.as_str(), "recognition given up on");
            if emit(t, Event::SpeechEngineDegraded).is_break() {
                stats.stopped_at_ms = Some(t);
                return Ok(stats);
            }
        }
        let outstanding = rec.in_speech() || rec.pending_finals() > 0 || !arriving.is_empty();
        if finished && !outstanding {
            return Ok(stats);
        }
        // Paced turns wait on the wall clock; the others' results are decoded already and
        // arrive on the virtual one, which runs on from the end of the audio.
        let given_up = match decoding {
            Decoding::Paced { .. } => {
                wall_start.elapsed() > Duration::from_millis(t) + MAX_WAIT_AFTER_AUDIO
            }
            _ => {
                Duration::from_millis(t)
                    > Duration::from_millis(audio_frames * FRAME_MS + TRAILING_SILENCE_MS)
                        + MAX_WAIT_AFTER_AUDIO
            }
        };
        if finished && given_up {
            tracing::warn!("gave up waiting for decodes");
            return Ok(stats);
        }
        step += 1;
    }
}

/// Places a result decoded for a request made at `t` when one decoder per call would have
/// had it: after the decodes before it, plus its own decode time.
fn arrives(
    arriving: &mut Vec<(u64, DecodeResult)>,
    busy_until: &mut u64,
    t: u64,
    mut result: DecodeResult,
) {
    let start = t.max(*busy_until);
    *busy_until = start + result.decode_ms;
    result.queue_ms += start - t;
    arriving.push((*busy_until, result));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brain::{Action, CallBrain, RouteReason};
    use crate::config::Flow;
    use crate::speech::{PoolConfig, testutil::phone_speech};

    /// A decoder that hears every caller ask for an agent, slowly.
    struct SlowEar;

    impl Transcriber for SlowEar {
        fn transcribe(&self, _: &[f32], _: &DecodeOptions) -> Result<String, SpeechError> {
            std::thread::sleep(Duration::from_millis(400));
            Ok("I want to talk to an agent".into())
        }
    }

    /// Past capacity every caller still reaches a person: 12 callers say the same sentence at
    /// the same moment to one decoder that needs 400 ms a decode. Those it can decode in time
    /// are routed on what they said; the others are sent to a person because recognition is
    /// behind; none waits on a decode that will not come.
    #[test]
    fn past_capacity_every_caller_reaches_a_person() {
        let Some(audio) = phone_speech("I want to talk to an agent", "en-us", 165) else {
            return;
        };
        let flow = Arc::new(Flow::embedded().expect("flow"));
        let cfg = PoolConfig {
            workers: 1,
            ..PoolConfig::default()
        };
        let pool = Arc::new(DecoderPool::new(Arc::new(SlowEar), cfg).expect("pool"));
        let speech_end = speech_end_ms(&audio);
        let audio = Arc::new(audio);
        let callers: Vec<_> = (0..12u64)
            .map(|stream| {
                let (pool, flow, audio) = (pool.clone(), flow.clone(), audio.clone());
                std::thread::spawn(move || {
                    let t0 = Instant::now();
                    let mut brain = CallBrain::new(flow);
                    let started = Event::CallStarted {
                        caller_id: None,
                        language: None,
                    };
                    for a in brain.handle(t0, started) {
                        if let Action::Play { play, .. } = a {
                            brain.handle(t0, Event::PromptFinished { play });
                        }
                    }
                    let mut routed = None;
                    let decoding = Decoding::Paced { pool: &pool };
                    run_turn(
                        &audio,
                        stream,
                        None,
                        RecognizerConfig::default(),
                        decoding,
                        |t, e| {
                            let now = t0 + Duration::from_millis(t);
                            for a in brain.handle(now, e) {
                                if let Action::RouteToAgent { reason, .. } = a {
                                    routed = Some((reason, t));
                                    return ControlFlow::Break(());
                                }
                            }
                            ControlFlow::Continue(())
                        },
                    )
                    .expect("turn");
                    routed
                })
            })
            .collect();
        let routes: Vec<Option<(RouteReason, u64)>> = callers
            .into_iter()
            .map(|h| h.join().expect("caller"))
            .collect();
        assert!(
            routes.iter().all(Option::is_some),
            "someone was left waiting: {routes:?}"
        );
        let routes: Vec<(RouteReason, u64)> = routes.into_iter().flatten().collect();
        let by_ear = routes
            .iter()
            .filter(|r| r.0 == RouteReason::Keyword)
            .count();
        let overload = routes
            .iter()
            .filter(|r| r.0 == RouteReason::SpeechUnavailable)
            .count();
        assert!(by_ear >= 1, "the decoder heard nobody: {routes:?}");
        assert!(
            overload >= 1,
            "12 callers at once did not overload one slow decoder: {routes:?}"
        );
        assert_eq!(by_ear + overload, 12, "{routes:?}");
        // Every caller reached a person well within the watch's deadline after speaking
        // (the pool refuses what it cannot decode in time, so nobody needs the deadline).
        let limit = speech_end + crate::speech::watch::FINAL_DEADLINE.as_millis() as u64;
        assert!(
            routes.iter().all(|r| r.1 <= limit),
            "{routes:?} (speech ends at {speech_end} ms)"
        );
    }
}
