//! `humanline simulate`: a whole call through the call brain, driven from the terminal.
//!
//! The driver here plays the parts a real call has: prompts take as long as their recording
//! (or their text read aloud), the caller answers each question with the next `--say`, and
//! the brain's timers fire. Time is simulated, so a call of minutes runs in milliseconds and
//! every run prints the same lines.

use crate::brain::{Action, CallBrain, Event, Phase, PlayId, RouteReason};
use crate::server::caller_turn::{Decoding, load_languages, run_turn, speech_end_ms};
use crate::speech::{
    DecodeOptions, DecoderPool, LanguageEngines, PoolConfig, RecognizerConfig, load_wav_mono_16k,
};
use anyhow::Context;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Prompts folder; defaults to ./prompts if present, else the built-in prompts.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// What the caller says at the next listening turn (repeatable, in order).
    #[arg(long = "say", value_name = "TEXT")]
    say: Vec<String>,
    /// A recording of what the caller says at the next listening turn (repeatable; any WAV
    /// rate or channel count). Recordings come after any --say turns.
    #[arg(long = "caller", value_name = "FILE.wav")]
    caller: Vec<PathBuf>,
    /// Do not pace recordings in real time: decode inline and place each transcript at the
    /// time it would have arrived.
    #[arg(long)]
    fast: bool,
    /// Whisper model (ggml) for --caller, for every language; default $HUMANLINE_MODEL, else
    /// each language's own (`[speech] model` in its prompts file, in models/).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Language to start in (a code from humanline.toml); default: the configured one.
    #[arg(long)]
    language: Option<String>,
    /// Caller ID presented by the simulated caller.
    #[arg(long, default_value = "+15550100")]
    caller_id: String,
}

/// Spoken pace used when a prompt has no recording, and for the simulated caller.
const MS_PER_WORD: u64 = 350;
/// The caller starts answering this long after a question ends.
const CALLER_REACTION: Duration = Duration::from_millis(600);
/// A simulated call never runs longer than this.
const MAX_CALL: Duration = Duration::from_secs(600);

enum Turn {
    Say(String),
    Audio(PathBuf),
}

enum Pending {
    PromptFinished(PlayId),
    Caller(Event),
    CallerTurn(Turn),
}

/// Speech recognition for recorded turns.
struct Speech {
    engine: Arc<LanguageEngines>,
    pool: Option<DecoderPool>,
    opts: DecodeOptions,
    config: RecognizerConfig,
}

struct Sim<W: Write> {
    brain: CallBrain,
    start: Instant,
    now: Duration,
    pending: Vec<(Duration, u64, Pending)>,
    seq: u64,
    turns: VecDeque<Turn>,
    speech: Option<Speech>,
    out: W,
    /// End of the caller's latest utterance, for the route's `after_speech_end_ms`.
    speech_end: Option<Duration>,
    awaiting_answer: bool,
    /// The call's language, as the brain last set it: recordings are heard in it.
    language: String,
}

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let flow = Arc::new(super::load_flow(args.prompts.as_deref()).context("loading prompts")?);
    if let Some(l) = &args.language {
        anyhow::ensure!(flow.language(l).is_some(), "unknown language `{l}`");
    }
    let mut turns: VecDeque<Turn> = args.say.into_iter().map(Turn::Say).collect();
    turns.extend(args.caller.iter().cloned().map(Turn::Audio));
    let speech = if args.caller.is_empty() {
        None
    } else {
        for f in &args.caller {
            anyhow::ensure!(f.is_file(), "caller recording {} not found", f.display());
        }
        let engine = load_languages(&flow, args.model.as_deref())?;
        engine.install_verifiers(&flow)?;
        let opts = DecodeOptions::default().with_escape_prompt();
        let pool = if args.fast {
            None
        } else {
            // One caller: one decoder with every core, as `serve` defaults to.
            let cfg = PoolConfig::sharing_cores(1, opts.clone());
            Some(DecoderPool::new(engine.clone(), cfg)?)
        };
        Some(Speech {
            engine,
            pool,
            opts,
            config: RecognizerConfig::default(),
        })
    };
    let language = flow.default_language.clone();
    let mut sim = Sim {
        brain: CallBrain::new(flow),
        start: Instant::now(),
        now: Duration::ZERO,
        pending: Vec::new(),
        seq: 0,
        turns,
        speech,
        out: std::io::stdout().lock(),
        speech_end: None,
        awaiting_answer: false,
        language,
    };
    sim.emit(json!({"event": "call_started", "caller_id": args.caller_id}))?;
    sim.feed(Event::CallStarted {
        caller_id: Some(args.caller_id),
        language: args.language,
    })?;
    sim.run_until_routed()
}

impl<W: Write> Sim<W> {
    fn emit(&mut self, v: Value) -> anyhow::Result<()> {
        let mut line = serde_json::Map::new();
        line.insert("t_ms".into(), json!(self.now.as_millis() as u64));
        if let Value::Object(fields) = v {
            line.extend(fields);
        }
        writeln!(self.out, "{}", Value::Object(line))?;
        Ok(())
    }

    fn schedule(&mut self, after: Duration, what: Pending) {
        self.seq += 1;
        self.pending.push((self.now + after, self.seq, what));
    }

    /// Feeds `event` once the current batch of actions is carried out.
    fn feed_later(&mut self, event: Event) {
        self.schedule(Duration::ZERO, Pending::Caller(event));
    }

    fn feed(&mut self, event: Event) -> anyhow::Result<()> {
        let now = self.start + self.now;
        let actions = self.brain.handle(now, event);
        for a in actions {
            self.act(a)?;
        }
        Ok(())
    }

    fn act(&mut self, action: Action) -> anyhow::Result<()> {
        match action {
            Action::Play {
                play,
                prompt,
                text,
                audio,
                barge_in,
                ..
            } => {
                let length = audio
                    .as_deref()
                    .and_then(|p| hound::WavReader::open(p).ok())
                    .map(|r| {
                        Duration::from_secs_f64(r.duration() as f64 / r.spec().sample_rate as f64)
                    })
                    .unwrap_or_else(|| {
                        Duration::from_millis(MS_PER_WORD * text.split_whitespace().count() as u64)
                    });
                self.pending
                    .retain(|(_, _, p)| !matches!(p, Pending::PromptFinished(_)));
                self.schedule(length, Pending::PromptFinished(play));
                self.emit(
                    json!({"event": "play", "prompt": prompt, "text": text, "barge_in": barge_in,
                    "ms": length.as_millis() as u64}),
                )?;
            }
            Action::StopPlayback => {
                self.pending
                    .retain(|(_, _, p)| !matches!(p, Pending::PromptFinished(_)));
                self.emit(json!({"event": "stop_playback"}))?;
            }
            Action::PlayHold { .. } => {
                // Loops until something else plays: it never finishes.
                self.pending
                    .retain(|(_, _, p)| !matches!(p, Pending::PromptFinished(_)));
                self.emit(json!({"event": "hold_music"}))?;
            }
            // The simulated caller's media never stops, and there are no agents to ring.
            Action::ProbeCaller => self.feed_later(Event::ProbeAnswered),
            Action::StopRinging { agent } => {
                self.emit(json!({"event": "stop_ringing", "agent": agent}))?
            }
            Action::Listen => self.awaiting_answer = true,
            Action::SetLanguage { code } => {
                self.emit(json!({"event": "language", "code": code}))?;
                self.language = code;
            }
            Action::RouteToAgent { reason, context } => {
                // Only a decision on what the caller said has a "speech end" to measure from.
                let spoken = matches!(
                    reason,
                    RouteReason::Keyword | RouteReason::Repetition | RouteReason::NoMatch
                );
                let after = self
                    .speech_end
                    .filter(|_| spoken)
                    .map(|end| self.now.as_millis() as i64 - end.as_millis() as i64);
                self.emit(json!({"event": "route", "reason": reason.as_str(), "after_speech_end_ms": after,
                    "context": context}))?;
            }
            Action::OfferCallback => self.emit(json!({"event": "offer_callback"}))?,
            Action::StoreCallback(req) => {
                self.emit(json!({"event": "store_callback", "request": req}))?
            }
            Action::KeepCallback { id } => {
                self.emit(json!({"event": "keep_callback", "id": id}))?
            }
            Action::SetTimer { .. } | Action::CancelTimer { .. } => {}
        }
        Ok(())
    }

    /// The caller says `text`: speech starts, a partial transcript per word, then the final.
    fn caller_speaks(&mut self, text: String) -> anyhow::Result<()> {
        self.emit(json!({"event": "caller_says", "text": text}))?;
        let words: Vec<&str> = text.split_whitespace().collect();
        let word = Duration::from_millis(MS_PER_WORD);
        self.schedule(Duration::ZERO, Pending::Caller(Event::SpeechStarted));
        for n in 1..=words.len() {
            let partial = words[..n].join(" ");
            self.schedule(
                word * n as u32,
                Pending::Caller(Event::PartialTranscript { text: partial }),
            );
        }
        let end = word * words.len() as u32;
        self.schedule(end, Pending::Caller(Event::SpeechEnded));
        self.schedule(end, Pending::Caller(Event::FinalTranscript { text }));
        self.speech_end = Some(self.now + end);
        Ok(())
    }

    /// The caller says what is in a recording, heard through the speech engine.
    fn caller_plays(&mut self, path: &std::path::Path) -> anyhow::Result<()> {
        let audio = load_wav_mono_16k(path)?;
        let Some(speech) = self.speech.take() else {
            anyhow::bail!("no speech engine loaded")
        };
        let start = self.now;
        let end = speech_end_ms(&audio);
        self.speech_end = Some(start + Duration::from_millis(end));
        self.emit(
            json!({"event": "caller_plays", "file": path.display().to_string(), "speech_ms": end}),
        )?;
        let decoding = match &speech.pool {
            Some(pool) => Decoding::Paced { pool },
            None => Decoding::Fast {
                engine: &*speech.engine,
                opts: &speech.opts,
            },
        };
        let mut failure = None;
        let language = self.language.clone();
        let config = speech.config.clone();
        let stats = run_turn(&audio, 1, Some(&language), config, decoding, |at, event| {
            self.now = start + Duration::from_millis(at);
            let label = match &event {
                Event::PartialTranscript { text } => {
                    Some(json!({"event": "partial", "text": text}))
                }
                Event::FinalTranscript { text } => Some(json!({"event": "final", "text": text})),
                Event::SpeechStarted => Some(json!({"event": "speech_started"})),
                Event::SpeechEnded => Some(json!({"event": "speech_ended"})),
                _ => None,
            };
            let result = label
                .map_or(Ok(()), |l| self.emit(l))
                .and_then(|_| self.feed(event));
            if let Err(e) = result {
                failure = Some(e);
                return ControlFlow::Break(());
            }
            if self.brain.phase() == Phase::Ivr {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        });
        self.speech = Some(speech);
        if let Some(e) = failure {
            return Err(e);
        }
        let stats = stats?;
        if stats.stopped_at_ms.is_none() {
            self.now = self.now.max(start + Duration::from_millis(end));
        }
        Ok(())
    }

    fn run_until_routed(&mut self) -> anyhow::Result<()> {
        loop {
            if self.brain.phase() != Phase::Ivr {
                break;
            }
            // The caller answers a question once it has been asked.
            if self.awaiting_answer && self.brain.playing().is_none() {
                self.awaiting_answer = false;
                if let Some(text) = self.turns.pop_front() {
                    self.schedule(CALLER_REACTION, Pending::CallerTurn(text));
                }
            }
            let next_pending = self
                .pending
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| (p.0, p.1))
                .map(|(i, p)| (i, p.0));
            let next_timer = self
                .brain
                .next_timeout()
                .map(|(k, at)| (k, at - self.start));
            let take_pending = match (next_pending, next_timer) {
                (Some((_, a)), Some((_, b))) => a <= b,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_pending {
                let Some((i, at)) = next_pending else { break };
                let (_, _, what) = self.pending.swap_remove(i);
                self.now = self.now.max(at);
                match what {
                    Pending::PromptFinished(play) => self.feed(Event::PromptFinished { play })?,
                    Pending::CallerTurn(Turn::Say(text)) => self.caller_speaks(text)?,
                    Pending::CallerTurn(Turn::Audio(path)) => self.caller_plays(&path)?,
                    Pending::Caller(e) => {
                        match &e {
                            Event::FinalTranscript { text } => {
                                self.emit(json!({"event": "final", "text": text}))?
                            }
                            Event::PartialTranscript { text } => {
                                self.emit(json!({"event": "partial", "text": text}))?
                            }
                            _ => {}
                        }
                        self.feed(e)?;
                    }
                }
            } else if let Some((timer, at)) = next_timer {
                self.now = self.now.max(at);
                self.emit(json!({"event": "timer", "timer": timer}))?;
                self.feed(Event::TimerFired { timer })?;
            }
            anyhow::ensure!(
                self.now < MAX_CALL,
                "simulated call ran past {MAX_CALL:?} without reaching a person"
            );
        }
        let phase = self.brain.phase();
        self.emit(json!({"event": "end", "phase": phase, "note": "simulation stops here; the caller stays on the line"}))
    }
}
