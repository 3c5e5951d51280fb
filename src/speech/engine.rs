//! Whisper decoding: the model ([`WhisperEngine`], loaded once and shared), the decode
//! settings ([`DecodeOptions`]), and [`DecoderPool`], the worker threads that run decodes off
//! the async runtime.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use whisper_rs::{
    FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState,
};

use super::recognizer::{DecodeJob, DecodeKind, JobId};
use super::{SAMPLE_RATE, SpeechError, samples_to_ms};

/// Anything that turns 16 kHz mono audio into text. The Whisper engine implements it; tests
/// elsewhere in the crate can plug in a fake and need no model.
pub trait Transcriber: Send + Sync {
    fn transcribe(&self, audio_16k: &[f32], opts: &DecodeOptions) -> Result<String, SpeechError>;

    /// Called once per pool worker before it starts, to allocate per-worker decoder state
    /// up front (so the first call does not pay for it and errors show at start-up).
    fn prepare_worker(&self) -> Result<(), SpeechError> {
        Ok(())
    }
}

/// How to size Whisper's work to the audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DecodeStrategy {
    /// Encoder context sized to the audio, token budget sized to the audio, one greedy pass
    /// without temperature fallback. Made for 0.3-15 s utterances.
    Adaptive,
    /// Whisper's defaults: the full 30 s window whatever the audio length, temperature
    /// fallback, no token cap. The naive baseline; about 1 s per decode here.
    FullWindow,
}

/// Decode settings. The defaults are the measured choice for tiny.en on this machine.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DecodeOptions {
    pub strategy: DecodeStrategy,
    /// Text the decoder sees as preceding context, biasing it toward these words (e.g. the
    /// escape words). `None` for no prompt.
    pub initial_prompt: Option<String>,
    /// Threads per decode; `None` takes the engine's default.
    pub threads: Option<usize>,
    /// Adaptive: encoder positions per second of audio (Whisper's encoder has 50/s).
    pub ctx_per_second: f32,
    /// Adaptive: extra encoder positions beyond the audio. Some trailing padding shows the
    /// model where speech ends; without it, it tends to repeat itself.
    pub ctx_margin: u32,
    /// Adaptive: round the context up to a multiple of this (fewer distinct graph sizes).
    pub ctx_round: u32,
    /// Adaptive: smallest context used.
    pub min_audio_ctx: u32,
    /// Adaptive: token budget per second of audio. Callers say about 2-3 words (3-4 tokens)
    /// per second; the cap ends decoder loops early.
    pub tokens_per_second: f32,
    /// Adaptive: tokens allowed on top of the per-second budget.
    pub extra_tokens: u32,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            strategy: DecodeStrategy::Adaptive,
            initial_prompt: None,
            threads: None,
            ctx_per_second: 50.0,
            ctx_margin: 64,
            ctx_round: 64,
            min_audio_ctx: 128,
            tokens_per_second: 5.0,
            extra_tokens: 6,
        }
    }
}

impl DecodeOptions {
    /// The naive baseline.
    pub fn full_window() -> Self {
        DecodeOptions {
            strategy: DecodeStrategy::FullWindow,
            ..DecodeOptions::default()
        }
    }

    /// A prompt naming the escape words, which helps tiny.en hear them on phone audio.
    pub fn with_escape_prompt(mut self) -> Self {
        self.initial_prompt = Some(ESCAPE_PROMPT.to_string());
        self
    }

    /// Encoder context for `samples` of 16 kHz audio (0 = the model's full 1500).
    pub fn audio_ctx_for(&self, samples: usize) -> u32 {
        match self.strategy {
            DecodeStrategy::FullWindow => 0,
            DecodeStrategy::Adaptive => {
                let secs = samples as f32 / SAMPLE_RATE as f32;
                let needed = (secs * self.ctx_per_second).ceil() as u32 + self.ctx_margin;
                let round = self.ctx_round.max(1);
                let ctx = needed.div_ceil(round) * round;
                let ctx = ctx.max(self.min_audio_ctx);
                if ctx >= MAX_AUDIO_CTX { 0 } else { ctx }
            }
        }
    }

    /// Token cap for `samples` of audio (0 = none).
    pub fn max_tokens_for(&self, samples: usize) -> u32 {
        match self.strategy {
            DecodeStrategy::FullWindow => 0,
            DecodeStrategy::Adaptive => {
                let secs = samples as f32 / SAMPLE_RATE as f32;
                (secs * self.tokens_per_second).ceil() as u32 + self.extra_tokens
            }
        }
    }
}

/// Prompt biasing the decoder toward the words that mean "get me a person".
pub const ESCAPE_PROMPT: &str = "Human. Agent. Operator. Representative.";

/// The model's encoder length (30 s).
const MAX_AUDIO_CTX: u32 = 1500;

/// Engine-wide settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EngineOptions {
    /// Default threads per decode.
    pub threads: usize,
    /// Route whisper.cpp's own logging away from stderr (it prints every model load).
    pub quiet: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            threads: 2,
            quiet: true,
        }
    }
}

/// A loaded Whisper model, shared by all calls. Each concurrent decode needs its own decoder
/// state (~tens of MB); idle states are kept and reused.
pub struct WhisperEngine {
    ctx: WhisperContext,
    path: PathBuf,
    opts: EngineOptions,
    idle_states: Mutex<Vec<WhisperState>>,
    prompt_tokens: Mutex<HashMap<String, Arc<Vec<i32>>>>,
}

impl std::fmt::Debug for WhisperEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperEngine")
            .field("path", &self.path)
            .field("opts", &self.opts)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent across a panic elsewhere (we never hold a guard over
    // user code), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl WhisperEngine {
    /// Load a ggml Whisper model. Checks the file first so a missing or non-ggml file gives a
    /// clear error rather than whisper.cpp's generic failure.
    pub fn load(path: impl AsRef<Path>, opts: EngineOptions) -> Result<Arc<Self>, SpeechError> {
        let path = path.as_ref().to_path_buf();
        if opts.threads == 0 {
            return Err(SpeechError::InvalidConfig(
                "engine threads must be >= 1".into(),
            ));
        }
        let mut magic = [0u8; 4];
        {
            use std::io::Read;
            let mut f = std::fs::File::open(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => SpeechError::ModelNotFound { path: path.clone() },
                _ => SpeechError::ModelLoad {
                    path: path.clone(),
                    detail: e.to_string(),
                },
            })?;
            f.read_exact(&mut magic)
                .map_err(|_| SpeechError::ModelLoad {
                    path: path.clone(),
                    detail: "file is too short to be a model".into(),
                })?;
        }
        // whisper.cpp's GGML_FILE_MAGIC 0x67676d6c, little-endian.
        if u32::from_le_bytes(magic) != 0x6767_6d6c {
            return Err(SpeechError::ModelLoad {
                path,
                detail: "not a ggml Whisper model (bad magic); convert it with ggml_convert".into(),
            });
        }
        if opts.quiet {
            // With no logging backend feature enabled this drops whisper.cpp's chatter.
            whisper_rs::install_logging_hooks();
        }
        let ctx = WhisperContext::new_with_params(&path, WhisperContextParameters::default())
            .map_err(|e| SpeechError::ModelLoad {
                path: path.clone(),
                detail: format!("whisper.cpp rejected the file ({e}); truncated or wrong format?"),
            })?;
        tracing::info!(path = %path.display(), "Whisper model loaded");
        Ok(Arc::new(WhisperEngine {
            ctx,
            path,
            opts,
            idle_states: Mutex::new(Vec::new()),
            prompt_tokens: Mutex::new(HashMap::new()),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    fn take_state(&self) -> Result<WhisperState, SpeechError> {
        if let Some(state) = lock(&self.idle_states).pop() {
            return Ok(state);
        }
        self.ctx
            .create_state()
            .map_err(|e| SpeechError::Decode(format!("cannot create decoder state: {e}")))
    }

    /// Tokenize a prompt once and cache it. (FullParams::set_initial_prompt leaks its C string
    /// on every call in whisper-rs 0.16, and would re-tokenize every decode.)
    fn prompt_tokens(&self, prompt: &str) -> Result<Arc<Vec<i32>>, SpeechError> {
        if let Some(t) = lock(&self.prompt_tokens).get(prompt) {
            return Ok(Arc::clone(t));
        }
        // A token is at least one byte, so len+8 slots cannot overflow (whisper-rs mishandles
        // whisper.cpp's "needed more" return).
        let mut tokens = self
            .ctx
            .tokenize(prompt, prompt.len() + 8)
            .map_err(|e| SpeechError::InvalidConfig(format!("cannot tokenize prompt: {e}")))?;
        // whisper.cpp keeps at most n_text_ctx/2 (224) prompt tokens: keep the end, as it does.
        if tokens.len() > 200 {
            tokens.drain(..tokens.len() - 200);
        }
        let tokens = Arc::new(tokens);
        lock(&self.prompt_tokens).insert(prompt.to_string(), Arc::clone(&tokens));
        Ok(tokens)
    }

    fn decode(
        &self,
        state: &mut WhisperState,
        audio: &[f32],
        opts: &DecodeOptions,
    ) -> Result<String, SpeechError> {
        let prompt = match &opts.initial_prompt {
            Some(p) if !p.trim().is_empty() => Some(self.prompt_tokens(p)?),
            _ => None,
        };
        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        let threads = opts.threads.unwrap_or(self.opts.threads).max(1);
        params.set_n_threads(threads as i32);
        params.set_translate(false);
        params.set_print_special(false);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_timestamps(false);
        // Each utterance stands alone: text from a previous decode must not leak in.
        params.set_no_context(true);
        // Never emit bracketed non-speech ("[MUSIC]") or a leading blank.
        params.set_suppress_blank(true);
        params.set_suppress_nst(true);
        if let Some(tokens) = &prompt {
            params.set_tokens(tokens);
        }
        match opts.strategy {
            DecodeStrategy::Adaptive => {
                params.set_single_segment(true);
                params.set_no_timestamps(true);
                params.set_temperature(0.0);
                // No fallback re-decodes: a second pass at a higher temperature costs a whole
                // decode, and on a partial the next partial is a better retry.
                params.set_temperature_inc(0.0);
                params.set_audio_ctx(opts.audio_ctx_for(audio.len()) as i32);
                params.set_max_tokens(opts.max_tokens_for(audio.len()) as i32);
            }
            DecodeStrategy::FullWindow => {}
        }
        state
            .full(params, audio)
            .map_err(|e| SpeechError::Decode(e.to_string()))?;
        let mut text = String::new();
        for segment in state.as_iter() {
            let piece = segment
                .to_str_lossy()
                .map_err(|e| SpeechError::Decode(e.to_string()))?;
            text.push_str(&piece);
        }
        Ok(clean_transcript(&text))
    }
}

impl Transcriber for WhisperEngine {
    fn transcribe(&self, audio_16k: &[f32], opts: &DecodeOptions) -> Result<String, SpeechError> {
        if audio_16k.is_empty() {
            return Ok(String::new());
        }
        // whisper.cpp refuses input under 100 ms; pad very short clips with silence.
        let min = SAMPLE_RATE as usize / 5;
        let padded;
        let audio = if audio_16k.len() < min {
            let mut v = audio_16k.to_vec();
            v.resize(min, 0.0);
            padded = v;
            &padded[..]
        } else {
            audio_16k
        };
        let mut state = self.take_state()?;
        let result = self.decode(&mut state, audio, opts);
        lock(&self.idle_states).push(state);
        result
    }

    fn prepare_worker(&self) -> Result<(), SpeechError> {
        let state = self.take_state()?;
        lock(&self.idle_states).push(state);
        Ok(())
    }
}

/// Tidy Whisper's text: trim, collapse whitespace, and drop non-speech annotations such as
/// "[BLANK_AUDIO]", "(music)" or "*coughs*". Those are never words a caller said, and left in
/// they would read as speech to the matcher. Ordinary words are never removed (a caller can
/// really say "thank you").
pub fn clean_transcript(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut close: Option<char> = None;
    for c in raw.chars() {
        match (close, c) {
            (Some(end), c) if c == end => close = None,
            (Some(_), _) => {}
            (None, '[') => close = Some(']'),
            (None, '(') => close = Some(')'),
            (None, '*') => close = Some('*'),
            (None, c) => out.push(c),
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The outcome of a pool decode.
#[derive(Debug)]
pub struct DecodeResult {
    pub job: JobId,
    /// The text, or why there is none ([`SpeechError::Superseded`] for a dropped partial).
    pub outcome: Result<String, SpeechError>,
    /// Time spent decoding (0 if never run).
    pub decode_ms: u64,
    /// Length of the job's audio.
    pub audio_ms: u64,
    /// Time the job waited in the queue.
    pub queue_ms: u64,
}

impl DecodeResult {
    pub fn text(&self) -> Option<&str> {
        self.outcome.as_ref().ok().map(String::as_str)
    }
}

/// Pool sizing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PoolConfig {
    /// Decoder threads (each runs one decode at a time, with `decode.threads` threads).
    pub workers: usize,
    /// Most jobs waiting. Beyond this, partials are shed and new jobs refused: the driver
    /// should route callers to a human rather than fall further behind.
    pub max_queue: usize,
    pub decode: DecodeOptions,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            workers: 1,
            max_queue: 32,
            decode: DecodeOptions::default(),
        }
    }
}

/// A snapshot of the pool's load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    pub workers: usize,
    pub queued: usize,
    pub running: usize,
    /// How long the oldest waiting job has waited: the "falling behind" signal.
    pub oldest_queued_ms: Option<u64>,
    /// How long the longest-running decode has run: a hung decoder shows here.
    pub oldest_running_ms: Option<u64>,
    pub completed: u64,
    pub failed: u64,
    pub superseded: u64,
    pub rejected: u64,
}

type Reply = Box<dyn FnOnce(DecodeResult) + Send>;

struct Queued {
    job: DecodeJob,
    reply: Reply,
    enqueued: Instant,
}

#[derive(Default)]
struct PoolState {
    queue: VecDeque<Queued>,
    running: Vec<(JobId, Instant)>,
    shutdown: bool,
    completed: u64,
    failed: u64,
    superseded: u64,
    rejected: u64,
}

struct PoolShared {
    state: Mutex<PoolState>,
    wake: Condvar,
    transcriber: Arc<dyn Transcriber>,
    decode: DecodeOptions,
}

/// Bounded worker threads running decodes (std threads: a decode is ~100 ms of CPU and
/// would stall an async runtime).
///
/// Only the latest partial of an utterance matters: a new partial replaces a queued one for
/// the same utterance (keeping its place in line), and a final drops queued partials of its
/// utterance. Finals are never dropped. Replaced jobs get a reply with
/// [`SpeechError::Superseded`], so every accepted job gets exactly one reply.
pub struct DecoderPool {
    shared: Arc<PoolShared>,
    workers: Vec<JoinHandle<()>>,
    max_queue: usize,
}

impl std::fmt::Debug for DecoderPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecoderPool")
            .field("stats", &self.stats())
            .finish()
    }
}

impl DecoderPool {
    pub fn new(transcriber: Arc<dyn Transcriber>, cfg: PoolConfig) -> Result<Self, SpeechError> {
        if cfg.workers == 0 || cfg.max_queue == 0 {
            return Err(SpeechError::InvalidConfig(
                "decoder pool needs at least one worker and a queue of at least one".into(),
            ));
        }
        for _ in 0..cfg.workers {
            transcriber.prepare_worker()?;
        }
        let shared = Arc::new(PoolShared {
            state: Mutex::new(PoolState::default()),
            wake: Condvar::new(),
            transcriber,
            decode: cfg.decode,
        });
        let mut workers = Vec::with_capacity(cfg.workers);
        for i in 0..cfg.workers {
            let shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("asr-worker-{i}"))
                .spawn(move || worker_loop(&shared))
                .map_err(|e| SpeechError::InvalidConfig(format!("cannot spawn decoder: {e}")))?;
            workers.push(handle);
        }
        Ok(DecoderPool {
            shared,
            workers,
            max_queue: cfg.max_queue,
        })
    }

    /// Queue a job. `reply` is called exactly once, with the result: on a worker thread
    /// after decoding, or at once if the job is refused or dropped. Keep it short (send on a
    /// channel).
    ///
    /// A refused job also returns the error here, for callers who want to know at once:
    /// [`SpeechError::Overloaded`] when the queue is full of jobs that cannot be shed (the
    /// driver should stop waiting on recognition and route the caller to a human), or
    /// [`SpeechError::PoolShutDown`].
    pub fn submit(
        &self,
        job: DecodeJob,
        reply: impl FnOnce(DecodeResult) + Send + 'static,
    ) -> Result<(), SpeechError> {
        let now = Instant::now();
        let new = Queued {
            job,
            reply: Box::new(reply),
            enqueued: now,
        };
        let mut dropped: Vec<Queued> = Vec::new();
        let refused = {
            let mut st = lock(&self.shared.state);
            let refused = self.enqueue(&mut st, new, &mut dropped).err();
            st.superseded += dropped.len() as u64;
            if refused.is_some() {
                st.rejected += 1;
            }
            refused
        };
        for q in dropped {
            reply_now(q, Err(SpeechError::Superseded), now);
        }
        match refused {
            None => {
                self.shared.wake.notify_one();
                Ok(())
            }
            Some((err, q)) => {
                let copy = match &err {
                    SpeechError::Overloaded { capacity } => SpeechError::Overloaded {
                        capacity: *capacity,
                    },
                    _ => SpeechError::PoolShutDown,
                };
                reply_now(*q, Err(copy), now);
                Err(err)
            }
        }
    }

    /// Queue `new`, or hand it back with the reason. Jobs it displaces go to `dropped`.
    fn enqueue(
        &self,
        st: &mut PoolState,
        mut new: Queued,
        dropped: &mut Vec<Queued>,
    ) -> Result<(), (SpeechError, Box<Queued>)> {
        if st.shutdown {
            return Err((SpeechError::PoolShutDown, Box::new(new)));
        }
        let id = new.job.id;
        let is_partial_of_utt =
            |q: &Queued| q.job.id.kind == DecodeKind::Partial && same_utterance(&q.job.id, &id);
        match id.kind {
            DecodeKind::Partial => {
                if let Some(slot) = st.queue.iter_mut().find(|q| is_partial_of_utt(q)) {
                    // Take the old slot's place in line and its age: the utterance has been
                    // waiting for a partial that long.
                    new.enqueued = slot.enqueued;
                    dropped.push(std::mem::replace(slot, new));
                    return Ok(());
                }
            }
            DecodeKind::Final => {
                // The final covers everything its queued partials would have said.
                let (gone, keep): (VecDeque<Queued>, VecDeque<Queued>) =
                    std::mem::take(&mut st.queue)
                        .into_iter()
                        .partition(is_partial_of_utt);
                st.queue = keep;
                dropped.extend(gone);
            }
        }
        if st.queue.len() >= self.max_queue {
            // Shed the oldest queued partial (of any call) for a final; a later partial or
            // its final covers it. A partial is not worth shedding another for.
            let shed = match id.kind {
                DecodeKind::Final => st
                    .queue
                    .iter()
                    .position(|q| q.job.id.kind == DecodeKind::Partial),
                DecodeKind::Partial => None,
            };
            match shed.and_then(|i| st.queue.remove(i)) {
                Some(q) => dropped.push(q),
                None => {
                    let capacity = self.max_queue;
                    return Err((SpeechError::Overloaded { capacity }, Box::new(new)));
                }
            }
        }
        st.queue.push_back(new);
        Ok(())
    }

    /// Submit and deliver the result on a std channel.
    pub fn submit_to(
        &self,
        job: DecodeJob,
        tx: std::sync::mpsc::Sender<DecodeResult>,
    ) -> Result<(), SpeechError> {
        self.submit(job, move |r| {
            // The receiver may be gone (call ended): nothing to do then.
            let _ = tx.send(r);
        })
    }

    /// Drop every queued job of a stream (the call hung up). Their replies get
    /// [`SpeechError::Superseded`]. Returns how many were dropped.
    pub fn cancel_stream(&self, stream: u64) -> usize {
        let now = Instant::now();
        let dropped: Vec<Queued> = {
            let mut st = lock(&self.shared.state);
            let (gone, keep): (VecDeque<Queued>, VecDeque<Queued>) = std::mem::take(&mut st.queue)
                .into_iter()
                .partition(|q| q.job.id.stream == stream);
            st.queue = keep;
            st.superseded += gone.len() as u64;
            gone.into_iter().collect()
        };
        let n = dropped.len();
        for q in dropped {
            reply_now(q, Err(SpeechError::Superseded), now);
        }
        n
    }

    pub fn stats(&self) -> PoolStats {
        let now = Instant::now();
        let st = lock(&self.shared.state);
        let age = |t: Instant| now.duration_since(t).as_millis() as u64;
        PoolStats {
            workers: self.workers.len(),
            queued: st.queue.len(),
            running: st.running.len(),
            oldest_queued_ms: st.queue.iter().map(|q| age(q.enqueued)).max(),
            oldest_running_ms: st.running.iter().map(|(_, t)| age(*t)).max(),
            completed: st.completed,
            failed: st.failed,
            superseded: st.superseded,
            rejected: st.rejected,
        }
    }

    /// Stop accepting jobs, fail the queued ones with [`SpeechError::PoolShutDown`], and wait
    /// for running decodes to finish.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let now = Instant::now();
        let queued: Vec<Queued> = {
            let mut st = lock(&self.shared.state);
            st.shutdown = true;
            st.queue.drain(..).collect()
        };
        self.shared.wake.notify_all();
        for q in queued {
            reply_now(q, Err(SpeechError::PoolShutDown), now);
        }
        for handle in self.workers.drain(..) {
            if handle.join().is_err() {
                tracing::error!("decoder worker panicked");
            }
        }
    }
}

fn same_utterance(a: &JobId, b: &JobId) -> bool {
    a.stream == b.stream && a.utterance == b.utterance
}

/// Answer a job that will not be decoded.
fn reply_now(q: Queued, outcome: Result<String, SpeechError>, now: Instant) {
    (q.reply)(DecodeResult {
        audio_ms: q.job.audio_ms(),
        job: q.job.id,
        outcome,
        decode_ms: 0,
        queue_ms: now.saturating_duration_since(q.enqueued).as_millis() as u64,
    });
}

impl Drop for DecoderPool {
    fn drop(&mut self) {
        self.stop();
    }
}

fn worker_loop(shared: &PoolShared) {
    loop {
        let (q, started) = {
            let mut st = lock(&shared.state);
            loop {
                if st.shutdown {
                    return;
                }
                if let Some(q) = st.queue.pop_front() {
                    let started = Instant::now();
                    st.running.push((q.job.id, started));
                    break (q, started);
                }
                st = shared.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let queue_ms = started.duration_since(q.enqueued).as_millis() as u64;
        // A panic inside a decode must not take the worker (and every later call) with it.
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            shared.transcriber.transcribe(&q.job.audio, &shared.decode)
        }))
        .unwrap_or_else(|_| Err(SpeechError::Decode("decoder panicked".into())));
        let decode_ms = started.elapsed().as_millis() as u64;
        {
            let mut st = lock(&shared.state);
            if let Some(i) = st
                .running
                .iter()
                .position(|(id, t)| *id == q.job.id && *t == started)
            {
                st.running.swap_remove(i);
            }
            if outcome.is_ok() {
                st.completed += 1;
            } else {
                st.failed += 1;
            }
        }
        let audio_ms = samples_to_ms(q.job.audio.len() as u64);
        if decode_ms > audio_ms.max(1_000) {
            tracing::warn!(decode_ms, audio_ms, "decode slower than real time");
        }
        (q.reply)(DecodeResult {
            job: q.job.id,
            outcome,
            decode_ms,
            audio_ms,
            queue_ms,
        });
    }
}
