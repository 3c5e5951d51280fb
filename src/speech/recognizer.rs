//! [`StreamingRecognizer`]: a sans-IO utterance tracker. It decides *what* to decode and
//! *when* (in audio time); running the decodes is the caller's business (usually a
//! [`super::DecoderPool`]), which keeps this logic testable without threads, clocks or a model.
//!
//! ```ignore
//! let mut rec = StreamingRecognizer::new(call_id, RecognizerConfig::default())?;
//! loop {
//!     select! {
//!         frame = rtp.recv() => { resampler.process_mulaw(&frame, &mut pcm16k)?; rec.push_audio(&pcm16k); pcm16k.clear(); }
//!         result = decoded_rx.recv() => rec.on_result(&result),
//!     }
//!     while let Some(out) = rec.poll_output() {
//!         match out {
//!             RecognizerOutput::SpeechStarted { .. } => stop_prompt_playback(),   // barge-in
//!             RecognizerOutput::Decode(job) => { let tx = decoded_tx.clone(); pool.submit(job, move |r| { let _ = tx.send(r); })?; }
//!             RecognizerOutput::Partial { text, .. } => if wants_human(&text) { transfer() },
//!             RecognizerOutput::Final { text, .. } => brain.on_final(&text),
//!             RecognizerOutput::DecodeFailed { .. } => transfer(), // no ASR: a human it is
//!             RecognizerOutput::SpeechEnded { .. } => {}
//!         }
//!     }
//! }
//! ```

use std::collections::VecDeque;
use std::sync::Arc;

use super::vad::{FRAME_SAMPLES, Vad, VadConfig, VadEvent, VoiceScorer, level_dbfs_of_power};
use super::verifier::Verdict;
use super::{SpeechError, ms_to_samples, samples_to_ms};

/// Whether a decode is of the utterance so far (may be superseded) or of the whole utterance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DecodeKind {
    Partial,
    Final,
}

/// Identifies a decode request: which stream (call), utterance, and request number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct JobId {
    /// The stream (call) id the recognizer was created with.
    pub stream: u64,
    /// Utterance number within the stream, from 1.
    pub utterance: u64,
    /// Request number within the utterance, from 0; the final has the highest.
    pub seq: u64,
    pub kind: DecodeKind,
}

/// Audio to decode. `audio` is 16 kHz mono and starts at `start_ms` of stream audio time.
#[derive(Debug, Clone)]
pub struct DecodeJob {
    pub id: JobId,
    pub audio: Arc<[f32]>,
    pub start_ms: u64,
    /// A partial requested at a pause in speech: it holds everything said so far and is
    /// usually the utterance's whole text, so the pool runs it before other partials.
    pub at_pause: bool,
    /// The language to hear it in (an ISO 639-1 code such as "nl"); `None`: the decoder's
    /// own setting. Set from [`StreamingRecognizer::set_language`] when the job is made.
    pub language: Option<Arc<str>>,
    /// Nobody is on the line waiting for it (the operator console hearing a recording): the
    /// pool runs it after every call's decode and never on its last free decoder
    /// ([`super::JobClass::Background`]). The recognizer never sets it; its driver may.
    pub background: bool,
}

impl DecodeJob {
    pub fn audio_ms(&self) -> u64 {
        samples_to_ms(self.audio.len() as u64)
    }
}

/// What the recognizer has to say. Times are stream audio time in milliseconds.
#[derive(Debug, Clone)]
pub enum RecognizerOutput {
    /// Speech confirmed, starting at `at_ms` (the first voiced frame). Fire barge-in here.
    SpeechStarted { utterance: u64, at_ms: u64 },
    /// The utterance is over. `at_ms` is the end of its last voiced frame. `forced` means it
    /// hit the maximum length while the caller was still talking (a new one starts at once).
    SpeechEnded {
        utterance: u64,
        at_ms: u64,
        forced: bool,
    },
    /// Please decode this and report back with [`StreamingRecognizer::on_decoded`].
    Decode(DecodeJob),
    /// Transcript of the utterance so far. Later partials and the final replace it.
    Partial {
        utterance: u64,
        seq: u64,
        text: String,
        /// The keyword verifier's verdicts on this audio (empty when not verified).
        verdicts: Vec<Verdict>,
    },
    /// Transcript of the whole utterance (may be empty: noise with no words in it).
    Final {
        utterance: u64,
        text: String,
        verdicts: Vec<Verdict>,
    },
    /// A decode failed (not merely superseded). For a final this is the last word on the
    /// utterance: the driver should not wait for a transcript.
    DecodeFailed {
        utterance: u64,
        kind: DecodeKind,
        error: String,
        /// The decoders were too far behind to decode it in time (not a decoder fault).
        behind: bool,
    },
}

/// Recognizer timing. All lengths are audio time.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RecognizerConfig {
    pub vad: VadConfig,
    /// Request a partial decode after this much new speech. 0 disables partials.
    pub partial_interval_ms: u32,
    /// Audio kept from before the VAD start so the first phoneme (often unvoiced, "h" of
    /// "human") is not cut off.
    pub pre_roll_ms: u32,
    /// Audio kept after the last voiced frame in the final: trailing consonants score low.
    pub tail_ms: u32,
    /// Longest utterance; at this length a final is forced and a new utterance begins.
    /// Keeps decode cost bounded and below Whisper's 30 s window.
    pub max_utterance_ms: u32,
    /// At most one partial per utterance in flight: the next is requested when the previous
    /// returns, so partials pace themselves to the decoder's speed instead of queueing up.
    pub single_partial_in_flight: bool,
    /// Speech rises and falls by 15-35 dB between syllables (p90-p10 of 16 ms frame levels);
    /// steady noise by 1-2 dB. Segments flatter than this are noise that fooled the VAD (a
    /// noise burst after digital silence): they get no decode and close with an empty final.
    /// 0 disables.
    pub min_dynamics_db: f32,
    /// After this much silence following new speech, request a partial at once (whatever the
    /// interval, or a partial in flight): it holds everything said so far, usually the whole
    /// utterance, and the pool runs it before other partials. 0 disables.
    pub pause_partial_ms: u32,
    /// When the utterance ends with no speech after its pause partial, that partial's
    /// transcript is the final: the same audio is not decoded twice, and the final comes as
    /// soon as the hangover ends instead of one decode later.
    pub final_from_pause: bool,
}

impl Default for RecognizerConfig {
    fn default() -> Self {
        RecognizerConfig {
            vad: VadConfig::default(),
            partial_interval_ms: 250,
            pre_roll_ms: 200,
            tail_ms: 100,
            max_utterance_ms: 15_000,
            single_partial_in_flight: true,
            min_dynamics_db: 6.0,
            pause_partial_ms: 100,
            final_from_pause: true,
        }
    }
}

impl RecognizerConfig {
    pub fn validate(&self) -> Result<(), SpeechError> {
        self.vad.validate()?;
        if self.max_utterance_ms < 1_000 || self.max_utterance_ms > 28_000 {
            return Err(SpeechError::InvalidConfig(format!(
                "max_utterance_ms must be 1000..=28000 (Whisper's window is 30 s), got {}",
                self.max_utterance_ms
            )));
        }
        if self.pre_roll_ms > 1_000 || self.tail_ms > 1_000 {
            return Err(SpeechError::InvalidConfig(
                "pre_roll_ms and tail_ms must be at most 1000".into(),
            ));
        }
        Ok(())
    }
}

/// The utterance being spoken.
#[derive(Debug)]
struct Utterance {
    id: u64,
    /// Stream sample index of `audio[0]`.
    start_sample: u64,
    audio: Vec<f32>,
    /// Stream sample index of the first voiced frame (after the pre-roll).
    voice_start: u64,
    /// Stream sample index just after the last voiced frame.
    voiced_end: u64,
    /// `voiced_end` when the last partial was requested: no new voice, no new partial.
    partial_voiced_end: u64,
    /// `audio.len()` when the last partial was requested.
    partial_len: usize,
    /// `voiced_end` when the last pause partial was requested.
    pause_voiced_end: u64,
    next_seq: u64,
}

/// Decode bookkeeping for a recent utterance (kept after it ends, until its final arrives).
#[derive(Debug)]
struct Track {
    utterance: u64,
    partial_in_flight: Option<u64>,
    last_partial_seq: Option<u64>,
    last_partial_text: String,
    final_done: bool,
    /// The latest pause partial, and whether (and with what text) it has come back: `None`
    /// while in flight, `Some(None)` if it failed or was dropped.
    pause: Option<(u64, Option<Option<String>>)>,
    /// The final's job, held while the pause partial that should stand in for it is in
    /// flight: requested only if that partial fails.
    held_final: Option<DecodeJob>,
}

/// How many ended utterances' bookkeeping to keep for late results.
const MAX_TRACKS: usize = 16;

/// Sans-IO streaming recognizer for one audio stream (one call). See the module docs.
pub struct StreamingRecognizer {
    stream: u64,
    cfg: RecognizerConfig,
    vad: Vad,
    /// Samples not yet making a whole VAD frame.
    frame_buf: Vec<f32>,
    /// The most recent audio, for pre-roll.
    history: VecDeque<f32>,
    history_cap: usize,
    /// Samples consumed by the VAD (whole frames): the stream's audio clock.
    processed: u64,
    current: Option<Utterance>,
    next_utterance: u64,
    tracks: VecDeque<Track>,
    outputs: VecDeque<RecognizerOutput>,
    /// The call's language, stamped on every decode job.
    language: Option<Arc<str>>,
}

impl std::fmt::Debug for StreamingRecognizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingRecognizer")
            .field("stream", &self.stream)
            .field("audio_ms", &self.audio_ms())
            .field("current", &self.current.as_ref().map(|u| u.id))
            .finish()
    }
}

impl StreamingRecognizer {
    /// A recognizer with earshot VAD. `stream` goes into every [`JobId`] so one
    /// [`super::DecoderPool`] can serve many calls.
    pub fn new(stream: u64, cfg: RecognizerConfig) -> Result<Self, SpeechError> {
        let vad = Vad::new(cfg.vad.clone())?;
        Self::with_vad(stream, cfg, vad)
    }

    /// A recognizer with another voice scorer (tests use an energy threshold).
    pub fn with_scorer(
        stream: u64,
        cfg: RecognizerConfig,
        scorer: Box<dyn VoiceScorer>,
    ) -> Result<Self, SpeechError> {
        let vad = Vad::with_scorer(cfg.vad.clone(), scorer)?;
        Self::with_vad(stream, cfg, vad)
    }

    fn with_vad(stream: u64, cfg: RecognizerConfig, vad: Vad) -> Result<Self, SpeechError> {
        cfg.validate()?;
        // Pre-roll reaches back from the first voiced frame, which is start_frames before the
        // frame that confirms speech.
        let history_cap = ms_to_samples(u64::from(cfg.pre_roll_ms)) as usize
            + (cfg.vad.start_frames as usize + 1) * FRAME_SAMPLES;
        Ok(StreamingRecognizer {
            stream,
            cfg,
            vad,
            frame_buf: Vec::with_capacity(FRAME_SAMPLES),
            history: VecDeque::with_capacity(history_cap),
            history_cap,
            processed: 0,
            current: None,
            next_utterance: 1,
            tracks: VecDeque::new(),
            outputs: VecDeque::new(),
            language: None,
        })
    }

    pub fn config(&self) -> &RecognizerConfig {
        &self.cfg
    }

    /// Decode from now on in `language` (the caller chose or switched language). Jobs
    /// already handed out keep theirs.
    pub fn set_language(&mut self, language: Option<&str>) {
        self.language = language.map(Arc::from);
    }

    pub fn language(&self) -> Option<&str> {
        self.language.as_deref()
    }

    pub fn stream(&self) -> u64 {
        self.stream
    }

    /// Audio time processed so far.
    pub fn audio_ms(&self) -> u64 {
        samples_to_ms(self.processed)
    }

    /// Inside an utterance (the caller is talking, or paused for less than the hangover).
    pub fn in_speech(&self) -> bool {
        self.current.is_some()
    }

    /// The utterance being spoken, if any.
    pub fn current_utterance(&self) -> Option<u64> {
        self.current.as_ref().map(|u| u.id)
    }

    /// Utterances whose final transcript has been requested but not yet delivered.
    pub fn pending_finals(&self) -> usize {
        self.tracks
            .iter()
            .filter(|t| !t.final_done && self.current_utterance() != Some(t.utterance))
            .count()
    }

    /// Feed 16 kHz mono audio, any amount.
    pub fn push_audio(&mut self, samples_16k: &[f32]) {
        let mut rest = samples_16k;
        while !rest.is_empty() {
            let take = (FRAME_SAMPLES - self.frame_buf.len()).min(rest.len());
            self.frame_buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.frame_buf.len() == FRAME_SAMPLES {
                let frame = std::mem::take(&mut self.frame_buf);
                self.process_frame(&frame);
                self.frame_buf = frame;
                self.frame_buf.clear();
            }
        }
    }

    /// End of the stream (hang-up, end of file): close the open utterance and request its
    /// final. Partial frames are padded with silence.
    pub fn finish(&mut self) {
        if !self.frame_buf.is_empty() {
            let mut frame = std::mem::take(&mut self.frame_buf);
            frame.resize(FRAME_SAMPLES, 0.0);
            self.process_frame(&frame);
        }
        if let Some(VadEvent::End { last_voiced_frame }) = self.vad.gate_mut().finish() {
            self.end_utterance(last_voiced_frame, false);
        }
    }

    /// Next output, oldest first.
    pub fn poll_output(&mut self) -> Option<RecognizerOutput> {
        self.outputs.pop_front()
    }

    /// Feed back a pool result (text, failure, or superseded).
    pub fn on_result(&mut self, result: &super::DecodeResult) {
        match &result.outcome {
            Ok(text) => self.on_heard(result.job, text, &result.verdicts),
            Err(SpeechError::Superseded) => self.on_superseded(result.job),
            Err(e) => {
                let behind = matches!(
                    e,
                    SpeechError::Behind { .. } | SpeechError::Overloaded { .. }
                );
                self.fail(result.job, &e.to_string(), behind);
            }
        }
    }

    /// A decode finished with `text`.
    pub fn on_decoded(&mut self, job: JobId, text: &str) {
        self.on_heard(job, text, &[]);
    }

    /// A decode finished with `text` and the keyword verifier's `verdicts`. A partial whose
    /// text is unchanged is still reported when a verdict passed: the verifier may hear what
    /// the transcript does not say.
    pub fn on_heard(&mut self, job: JobId, text: &str, verdicts: &[Verdict]) {
        if job.stream != self.stream {
            return;
        }
        let text = text.trim();
        let Some(track) = self
            .tracks
            .iter_mut()
            .find(|t| t.utterance == job.utterance)
        else {
            return; // Long forgotten.
        };
        match job.kind {
            DecodeKind::Partial => {
                if track.partial_in_flight == Some(job.seq) {
                    track.partial_in_flight = None;
                }
                let is_pause = matches!(track.pause, Some((seq, None)) if seq == job.seq);
                if is_pause {
                    track.pause = Some((job.seq, Some(Some(text.to_string()))));
                }
                // Stale: after the final, or older than a partial already shown. A pause
                // partial is a new hearing of the whole utterance even when its text is the
                // same (a lone escape word heard twice is confirmed).
                let stale =
                    track.final_done || track.last_partial_seq.is_some_and(|s| s >= job.seq);
                let news = (!text.is_empty() && (is_pause || text != track.last_partial_text))
                    || verdicts.iter().any(Verdict::passed);
                if !stale && news {
                    track.last_partial_seq = Some(job.seq);
                    track.last_partial_text = text.to_string();
                    self.outputs.push_back(RecognizerOutput::Partial {
                        utterance: job.utterance,
                        seq: job.seq,
                        text: text.to_string(),
                        verdicts: verdicts.to_vec(),
                    });
                }
                if is_pause && let Some(held) = track.held_final.take() {
                    // It stands in for the final, which was held for it.
                    track.final_done = true;
                    track.partial_in_flight = None;
                    self.outputs.push_back(RecognizerOutput::Final {
                        utterance: held.id.utterance,
                        text: text.to_string(),
                        verdicts: verdicts.to_vec(),
                    });
                }
                // The decoder is free again: catch up if speech piled up meanwhile.
                self.maybe_request_partial();
            }
            DecodeKind::Final => {
                if !track.final_done {
                    track.final_done = true;
                    track.partial_in_flight = None;
                    self.outputs.push_back(RecognizerOutput::Final {
                        utterance: job.utterance,
                        text: text.to_string(),
                        verdicts: verdicts.to_vec(),
                    });
                }
            }
        }
    }

    /// A decode failed. Finals report [`RecognizerOutput::DecodeFailed`] so the driver stops
    /// waiting; partial failures are reported too but the utterance carries on.
    pub fn on_decode_failed(&mut self, job: JobId, error: &str) {
        self.fail(job, error, false);
    }

    fn fail(&mut self, job: JobId, error: &str, behind: bool) {
        if job.stream != self.stream {
            return;
        }
        let Some(track) = self
            .tracks
            .iter_mut()
            .find(|t| t.utterance == job.utterance)
        else {
            return;
        };
        if track.final_done {
            return;
        }
        let stands_in = matches!(track.pause, Some((seq, None)) if seq == job.seq)
            && job.kind == DecodeKind::Partial
            && track.held_final.is_some();
        if behind && stands_in {
            // The pause partial standing in for the final waited too long: a decode of the
            // same audio would too. The driver hears that the final will not come.
            track.pause = Some((job.seq, Some(None)));
            track.held_final = None;
            track.final_done = true;
            track.partial_in_flight = None;
            self.outputs.push_back(RecognizerOutput::DecodeFailed {
                utterance: job.utterance,
                kind: DecodeKind::Final,
                error: error.to_string(),
                behind,
            });
            return;
        }
        if job.kind == DecodeKind::Final {
            track.final_done = true;
        }
        if track.partial_in_flight == Some(job.seq) {
            track.partial_in_flight = None;
        }
        let held = Self::pause_lost(track, job);
        self.outputs.extend(held);
        self.outputs.push_back(RecognizerOutput::DecodeFailed {
            utterance: job.utterance,
            kind: job.kind,
            error: error.to_string(),
            behind,
        });
    }

    /// The pool dropped a queued partial in favour of a newer one: nothing to report.
    pub fn on_superseded(&mut self, job: JobId) {
        if job.stream != self.stream {
            return;
        }
        if let Some(track) = self
            .tracks
            .iter_mut()
            .find(|t| t.utterance == job.utterance)
        {
            if track.partial_in_flight == Some(job.seq) {
                track.partial_in_flight = None;
            }
            let held = Self::pause_lost(track, job);
            self.outputs.extend(held);
        }
    }

    /// The pause partial `job` will not come back: the final it stood in for is decoded
    /// after all.
    fn pause_lost(track: &mut Track, job: JobId) -> Option<RecognizerOutput> {
        if job.kind != DecodeKind::Partial
            || !matches!(track.pause, Some((seq, None)) if seq == job.seq)
        {
            return None;
        }
        track.pause = Some((job.seq, Some(None)));
        track.held_final.take().map(RecognizerOutput::Decode)
    }

    fn process_frame(&mut self, frame: &[f32]) {
        let verdict = self.vad.process_frame(frame);
        let frame_start = self.processed;
        self.processed += FRAME_SAMPLES as u64;

        if self.history.len() + frame.len() > self.history_cap {
            let excess = self.history.len() + frame.len() - self.history_cap;
            self.history.drain(..excess.min(self.history.len()));
        }
        self.history.extend(frame.iter().copied());

        if let Some(u) = self.current.as_mut() {
            u.audio.extend_from_slice(frame);
            if verdict.voiced {
                u.voiced_end = self.processed;
            }
        }

        match verdict.event {
            Some(VadEvent::Start { first_voiced_frame }) => {
                self.begin_utterance(first_voiced_frame * FRAME_SAMPLES as u64);
            }
            Some(VadEvent::End { last_voiced_frame }) => {
                self.end_utterance(last_voiced_frame, false);
                return;
            }
            None => {}
        }

        let max_samples = ms_to_samples(u64::from(self.cfg.max_utterance_ms)) as usize;
        if self
            .current
            .as_ref()
            .is_some_and(|u| u.audio.len() + FRAME_SAMPLES > max_samples)
        {
            // Cut here; the caller is still talking, so the next utterance starts right away.
            let last = frame_start / FRAME_SAMPLES as u64;
            self.end_utterance(last, true);
            self.begin_utterance(self.processed);
            return;
        }
        self.maybe_request_partial();
    }

    /// Start an utterance whose first voiced sample is `voice_start` (stream sample index).
    fn begin_utterance(&mut self, voice_start: u64) {
        let pre_roll = ms_to_samples(u64::from(self.cfg.pre_roll_ms));
        let history_start = self.processed - self.history.len() as u64;
        let start_sample = voice_start.saturating_sub(pre_roll).max(history_start);
        let skip = (start_sample - history_start) as usize;
        let audio: Vec<f32> = self.history.iter().skip(skip).copied().collect();
        let id = self.next_utterance;
        self.next_utterance += 1;
        self.current = Some(Utterance {
            id,
            start_sample,
            audio,
            voice_start,
            voiced_end: self.processed,
            partial_voiced_end: 0,
            // Count the partial interval from the first voiced sample, not from the pre-roll.
            partial_len: voice_start.saturating_sub(start_sample) as usize,
            pause_voiced_end: 0,
            next_seq: 0,
        });
        if self.tracks.len() >= MAX_TRACKS {
            self.tracks.pop_front();
        }
        self.tracks.push_back(Track {
            utterance: id,
            partial_in_flight: None,
            last_partial_seq: None,
            last_partial_text: String::new(),
            final_done: false,
            pause: None,
            held_final: None,
        });
        self.outputs.push_back(RecognizerOutput::SpeechStarted {
            utterance: id,
            at_ms: samples_to_ms(voice_start),
        });
    }

    fn end_utterance(&mut self, last_voiced_frame: u64, forced: bool) {
        let Some(mut u) = self.current.take() else {
            return;
        };
        let voiced_end = (last_voiced_frame + 1) * FRAME_SAMPLES as u64;
        let keep_until = if forced {
            self.processed
        } else {
            voiced_end + ms_to_samples(u64::from(self.cfg.tail_ms))
        };
        let keep = keep_until.saturating_sub(u.start_sample) as usize;
        u.audio.truncate(keep);
        self.outputs.push_back(RecognizerOutput::SpeechEnded {
            utterance: u.id,
            at_ms: samples_to_ms(voiced_end.min(self.processed)),
            forced,
        });
        if !self.sounds_like_speech(&u, voiced_end) {
            // Not worth a decode: Whisper would only invent words for it.
            if let Some(track) = self.tracks.iter_mut().find(|t| t.utterance == u.id) {
                track.final_done = true;
            }
            self.outputs.push_back(RecognizerOutput::Final {
                utterance: u.id,
                text: String::new(),
                verdicts: Vec::new(),
            });
            return;
        }
        let id = JobId {
            stream: self.stream,
            utterance: u.id,
            seq: u.next_seq,
            kind: DecodeKind::Final,
        };
        let job = DecodeJob {
            id,
            start_ms: samples_to_ms(u.start_sample),
            audio: Arc::from(u.audio),
            at_pause: false,
            language: self.language.clone(),
            background: false,
        };
        // Nothing said after the pause partial: it heard all of this utterance.
        let covered = !forced && self.cfg.final_from_pause && u.pause_voiced_end >= voiced_end;
        let track = self.tracks.iter_mut().find(|t| t.utterance == u.id);
        if covered && let Some(track) = track {
            match &track.pause {
                Some((_, Some(Some(text)))) => {
                    track.final_done = true;
                    track.partial_in_flight = None;
                    let text = text.clone();
                    // Its verdicts went out with it as a partial.
                    self.outputs.push_back(RecognizerOutput::Final {
                        utterance: u.id,
                        text,
                        verdicts: Vec::new(),
                    });
                    return;
                }
                Some((_, None)) => {
                    track.held_final = Some(job);
                    return;
                }
                Some((_, Some(None))) | None => {}
            }
        }
        self.outputs.push_back(RecognizerOutput::Decode(job));
    }

    fn sounds_like_speech(&self, u: &Utterance, voiced_end: u64) -> bool {
        speech_dynamics_ok(u, voiced_end, self.cfg.min_dynamics_db)
    }

    fn maybe_request_partial(&mut self) {
        if self.cfg.partial_interval_ms == 0 {
            return;
        }
        let interval = ms_to_samples(u64::from(self.cfg.partial_interval_ms)) as usize;
        let Some(u) = self.current.as_mut() else {
            return;
        };
        let Some(track) = self.tracks.iter_mut().find(|t| t.utterance == u.id) else {
            return;
        };
        let silence = self.processed.saturating_sub(u.voiced_end);
        let at_pause = self.cfg.pause_partial_ms > 0
            && silence >= ms_to_samples(u64::from(self.cfg.pause_partial_ms))
            && u.voiced_end > u.pause_voiced_end;
        let due = u.audio.len() >= u.partial_len + interval
            // Nothing new said since the last partial (hangover silence): same answer.
            && u.voiced_end > u.partial_voiced_end;
        let busy = self.cfg.single_partial_in_flight && track.partial_in_flight.is_some();
        if !at_pause && (!due || busy) {
            return;
        }
        if !speech_dynamics_ok(u, u.voiced_end, self.cfg.min_dynamics_db) {
            return;
        }
        let seq = u.next_seq;
        u.next_seq += 1;
        u.partial_len = u.audio.len();
        u.partial_voiced_end = u.voiced_end;
        track.partial_in_flight = Some(seq);
        if at_pause {
            u.pause_voiced_end = u.voiced_end;
            track.pause = Some((seq, None));
        }
        self.outputs.push_back(RecognizerOutput::Decode(DecodeJob {
            id: JobId {
                stream: self.stream,
                utterance: u.id,
                seq,
                kind: DecodeKind::Partial,
            },
            start_ms: samples_to_ms(u.start_sample),
            audio: Arc::from(u.audio.as_slice()),
            at_pause,
            language: self.language.clone(),
            background: false,
        }));
    }
}

/// Whether the voiced part of `u` (first voiced frame to `voiced_end`) rises and falls like
/// speech: p90-p10 of its 16 ms frame levels at least `min_db`.
fn speech_dynamics_ok(u: &Utterance, voiced_end: u64, min_db: f32) -> bool {
    if min_db <= 0.0 {
        return true;
    }
    let from = u.voice_start.saturating_sub(u.start_sample) as usize;
    let to = (voiced_end.saturating_sub(u.start_sample) as usize).min(u.audio.len());
    let Some(voiced) = u.audio.get(from..to) else {
        return true;
    };
    let mut levels: Vec<f32> = voiced
        .chunks(FRAME_SAMPLES)
        .map(|f| {
            let power =
                f.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / f.len() as f64;
            level_dbfs_of_power(power)
        })
        .collect();
    if levels.len() < 3 {
        return true; // Too short to judge; the VAD's own start rule already passed it.
    }
    let last = levels.len() - 1;
    let p10 = *levels.select_nth_unstable_by(last / 10, f32::total_cmp).1;
    let p90 = *levels
        .select_nth_unstable_by(last * 9 / 10, f32::total_cmp)
        .1;
    p90 - p10 >= min_db
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::speech::vad::EnergyScorer;

    const LOUD: f32 = 0.3;

    /// Tracker tests use a loudness scorer and steady tones, so the noise-floor gate (which
    /// rightly ends a steady tone) is off.
    fn rec(mut cfg: RecognizerConfig) -> StreamingRecognizer {
        cfg.vad.start_snr_db = 0.0;
        cfg.vad.continue_snr_db = 0.0;
        cfg.min_dynamics_db = 0.0;
        StreamingRecognizer::with_scorer(
            7,
            cfg,
            Box::new(EnergyScorer {
                threshold_dbfs: -40.0,
            }),
        )
        .expect("recognizer")
    }

    /// Without pause partials: every final is decoded.
    fn no_pause() -> RecognizerConfig {
        RecognizerConfig {
            pause_partial_ms: 0,
            ..RecognizerConfig::default()
        }
    }

    fn decodes(outs: &[RecognizerOutput]) -> Vec<DecodeJob> {
        outs.iter()
            .filter_map(|o| match o {
                RecognizerOutput::Decode(j) => Some(j.clone()),
                _ => None,
            })
            .collect()
    }

    fn tone(ms: u64) -> Vec<f32> {
        (0..ms_to_samples(ms))
            .map(|i| LOUD * (i as f32 * 0.2).sin())
            .collect()
    }

    fn silence(ms: u64) -> Vec<f32> {
        vec![0.0; ms_to_samples(ms) as usize]
    }

    /// Push audio in 20 ms pieces, answering every decode with "seq N" immediately.
    fn run(r: &mut StreamingRecognizer, audio: &[f32], answer: bool) -> Vec<RecognizerOutput> {
        let mut outs = Vec::new();
        for chunk in audio.chunks(320) {
            r.push_audio(chunk);
            drain(r, answer, &mut outs);
        }
        outs
    }

    fn drain(r: &mut StreamingRecognizer, answer: bool, outs: &mut Vec<RecognizerOutput>) {
        while let Some(o) = r.poll_output() {
            if let (true, RecognizerOutput::Decode(job)) = (answer, &o) {
                r.on_decoded(job.id, &format!("{:?} {}", job.id.kind, job.id.seq));
            }
            outs.push(o);
        }
    }

    #[test]
    fn silence_gives_nothing() {
        let mut r = rec(RecognizerConfig::default());
        let outs = run(&mut r, &silence(3_000), true);
        assert!(outs.is_empty(), "{outs:?}");
        r.finish();
        assert!(r.poll_output().is_none());
    }

    #[test]
    fn utterance_lifecycle_with_partials_then_final() {
        let mut r = rec(no_pause());
        let mut audio = silence(500);
        audio.extend(tone(1_000));
        audio.extend(silence(1_000));
        let outs = run(&mut r, &audio, true);
        let kinds: Vec<String> = outs
            .iter()
            .map(|o| match o {
                RecognizerOutput::SpeechStarted { at_ms, .. } => format!("start@{at_ms}"),
                RecognizerOutput::SpeechEnded { at_ms, .. } => format!("end@{at_ms}"),
                RecognizerOutput::Decode(j) => format!("decode:{:?}", j.id.kind),
                RecognizerOutput::Partial { .. } => "partial".into(),
                RecognizerOutput::Final { .. } => "final".into(),
                RecognizerOutput::DecodeFailed { .. } => "failed".into(),
            })
            .collect();
        // Speech from 500 ms (frame 31 starts at 496 ms), ends at 1500 ms (frame boundary 1504).
        assert_eq!(
            kinds.first().map(String::as_str),
            Some("start@496"),
            "{kinds:?}"
        );
        let partials = kinds.iter().filter(|k| *k == "partial").count();
        assert!((3..=4).contains(&partials), "{kinds:?}");
        let end = kinds
            .iter()
            .position(|k| k.starts_with("end@"))
            .expect("end");
        assert_eq!(kinds[end], "end@1504");
        assert_eq!(&kinds[end + 1..], ["decode:Final", "final"]);
        // The final holds pre-roll + speech + tail.
        let final_job = outs
            .iter()
            .find_map(|o| match o {
                RecognizerOutput::Decode(j) if j.id.kind == DecodeKind::Final => Some(j.clone()),
                _ => None,
            })
            .expect("final job");
        assert_eq!(final_job.start_ms, 296);
        let ms = final_job.audio_ms();
        assert!((1_290..=1_330).contains(&ms), "final audio {ms} ms");
        // Pre-roll: the audio starts in silence and the tone begins 200 ms in.
        assert!(final_job.audio[..3_000].iter().all(|&s| s == 0.0));
        assert!(final_job.audio[3_300..3_400].iter().any(|&s| s.abs() > 0.1));
    }

    #[test]
    fn partials_every_interval_when_decoder_keeps_up() {
        let mut r = rec(RecognizerConfig::default());
        let outs = run(&mut r, &tone(2_000), true);
        let partial_lens: Vec<u64> = outs
            .iter()
            .filter_map(|o| match o {
                RecognizerOutput::Decode(j) if j.id.kind == DecodeKind::Partial => {
                    Some(j.audio_ms())
                }
                _ => None,
            })
            .collect();
        assert!(partial_lens.len() >= 7, "{partial_lens:?}");
        for w in partial_lens.windows(2) {
            assert!((240..=260).contains(&(w[1] - w[0])), "{partial_lens:?}");
        }
    }

    #[test]
    fn one_partial_in_flight_paces_requests() {
        let mut r = rec(RecognizerConfig::default());
        // Never answer: only the first partial is requested.
        let outs = run(&mut r, &tone(2_000), false);
        let decodes: Vec<&DecodeJob> = outs
            .iter()
            .filter_map(|o| match o {
                RecognizerOutput::Decode(j) => Some(j),
                _ => None,
            })
            .collect();
        assert_eq!(decodes.len(), 1);
        // Answering it immediately requests a catch-up partial with all the audio so far.
        let first = decodes[0].id;
        r.on_decoded(first, "hello");
        let mut more = Vec::new();
        drain(&mut r, false, &mut more);
        assert!(matches!(&more[0], RecognizerOutput::Partial { text, .. } if text == "hello"));
        assert!(
            matches!(&more[1], RecognizerOutput::Decode(j) if j.id.seq == 1 && j.audio_ms() >= 1_900),
            "{more:?}"
        );
    }

    #[test]
    fn stale_partials_are_ignored() {
        let cfg = RecognizerConfig {
            single_partial_in_flight: false,
            ..no_pause()
        };
        let mut r = rec(cfg);
        let mut audio = tone(1_000);
        audio.extend(silence(600));
        let outs = run(&mut r, &audio, false);
        let jobs: Vec<JobId> = outs
            .iter()
            .filter_map(|o| match o {
                RecognizerOutput::Decode(j) => Some(j.id),
                _ => None,
            })
            .collect();
        let fin = *jobs.last().expect("final");
        assert_eq!(fin.kind, DecodeKind::Final);
        let p1 = jobs[1];
        let p2 = jobs[2];
        // p2 returns before p1; p1 is then stale. Then the final; then a late partial.
        r.on_decoded(p2, "two");
        r.on_decoded(p1, "one");
        r.on_decoded(fin, "final text");
        r.on_decoded(jobs[0], "zero");
        let mut outs = Vec::new();
        drain(&mut r, false, &mut outs);
        let texts: Vec<String> = outs
            .iter()
            .filter_map(|o| match o {
                RecognizerOutput::Partial { text, .. } => Some(format!("P:{text}")),
                RecognizerOutput::Final { text, .. } => Some(format!("F:{text}")),
                _ => None,
            })
            .collect();
        assert_eq!(texts, ["P:two", "F:final text"]);
        // A duplicate final is ignored too.
        r.on_decoded(fin, "again");
        assert!(r.poll_output().is_none());
    }

    #[test]
    fn max_length_forces_final_and_continues() {
        let cfg = RecognizerConfig {
            max_utterance_ms: 2_000,
            partial_interval_ms: 0,
            ..RecognizerConfig::default()
        };
        let mut r = rec(cfg);
        let mut audio = tone(5_000);
        audio.extend(silence(1_000));
        let outs = run(&mut r, &audio, true);
        let ends: Vec<(u64, bool)> = outs
            .iter()
            .filter_map(|o| match o {
                RecognizerOutput::SpeechEnded {
                    utterance, forced, ..
                } => Some((*utterance, *forced)),
                _ => None,
            })
            .collect();
        assert_eq!(ends, [(1, true), (2, true), (3, false)]);
        let finals: Vec<u64> = outs
            .iter()
            .filter_map(|o| match o {
                RecognizerOutput::Decode(j) => Some(j.audio_ms()),
                _ => None,
            })
            .collect();
        assert!(finals.iter().all(|&ms| ms <= 2_000), "{finals:?}");
    }

    #[test]
    fn finish_flushes_open_utterance() {
        let mut r = rec(RecognizerConfig {
            partial_interval_ms: 0,
            ..RecognizerConfig::default()
        });
        let outs = run(&mut r, &tone(700), true);
        assert!(matches!(outs[0], RecognizerOutput::SpeechStarted { .. }));
        assert_eq!(outs.len(), 1);
        r.finish();
        let mut outs = Vec::new();
        drain(&mut r, true, &mut outs);
        assert!(matches!(
            outs[0],
            RecognizerOutput::SpeechEnded { forced: false, .. }
        ));
        assert!(matches!(&outs[2], RecognizerOutput::Final { text, .. } if text == "Final 0"));
    }

    #[test]
    fn failures_and_supersedes() {
        let mut r = rec(no_pause());
        let mut audio = tone(600);
        audio.extend(silence(600));
        let outs = run(&mut r, &audio, false);
        let jobs: Vec<JobId> = outs
            .iter()
            .filter_map(|o| match o {
                RecognizerOutput::Decode(j) => Some(j.id),
                _ => None,
            })
            .collect();
        r.on_superseded(jobs[0]);
        assert!(r.poll_output().is_none());
        let fin = *jobs.last().expect("final");
        assert_eq!(r.pending_finals(), 1);
        r.on_decode_failed(fin, "boom");
        assert!(matches!(
            r.poll_output(),
            Some(RecognizerOutput::DecodeFailed {
                kind: DecodeKind::Final,
                ..
            })
        ));
        assert_eq!(r.pending_finals(), 0);
        // Results for another stream are ignored.
        r.on_decoded(JobId { stream: 99, ..fin }, "x");
        assert!(r.poll_output().is_none());
    }

    #[test]
    fn noise_never_reaches_the_decoder() {
        use crate::speech::testutil::{phone_noise, silence};
        let mut cases = vec![("silence".to_string(), silence(2_000))];
        for (kind, vol) in [
            ("whitenoise", 0.02),
            ("whitenoise", 0.1),
            ("pinknoise", 0.05),
            ("pinknoise", 0.2),
            ("brownnoise", 0.2),
            ("brownnoise", 0.5),
        ] {
            let Some(noise) = phone_noise(kind, 2.0, vol) else {
                return;
            };
            let mut late = silence(500);
            late.extend_from_slice(&noise);
            late.extend(silence(500));
            cases.push((format!("{kind} {vol}"), noise));
            cases.push((format!("{kind} {vol} after silence"), late));
        }
        for (name, audio) in cases {
            let mut r = StreamingRecognizer::new(1, RecognizerConfig::default()).expect("rec");
            let mut outs = run(&mut r, &audio, true);
            r.finish();
            drain(&mut r, true, &mut outs);
            let decodes = outs
                .iter()
                .filter(|o| matches!(o, RecognizerOutput::Decode(_)))
                .count();
            assert_eq!(decodes, 0, "{name}: {outs:?}");
            if !name.contains("after silence") {
                assert!(outs.is_empty(), "{name}: {outs:?}");
            }
        }
    }

    #[test]
    fn a_pause_partial_hears_the_whole_utterance_and_stands_in_for_the_final() {
        let mut r = rec(RecognizerConfig::default());
        let mut audio = silence(500);
        audio.extend(tone(1_000));
        audio.extend(silence(1_000));
        let outs = run(&mut r, &audio, true);
        let jobs = decodes(&outs);
        // No final decode: the pause partial, 100 ms into the silence, is the last decode.
        assert!(
            jobs.iter().all(|j| j.id.kind == DecodeKind::Partial),
            "{jobs:?}"
        );
        let pause = jobs.last().expect("pause partial");
        assert!(pause.at_pause && jobs[..jobs.len() - 1].iter().all(|j| !j.at_pause));
        // Pre-roll + speech + 100 ms of silence (the final's tail): what the final would hold.
        let ms = pause.audio_ms();
        assert!((1_290..=1_330).contains(&ms), "pause partial audio {ms} ms");
        let text = format!("Partial {}", pause.id.seq);
        let finals: Vec<&String> = outs
            .iter()
            .filter_map(|o| match o {
                RecognizerOutput::Final { text, .. } => Some(text),
                _ => None,
            })
            .collect();
        assert_eq!(finals, [&text]);
        assert_eq!(r.pending_finals(), 0);
    }

    #[test]
    fn a_final_waits_for_its_pause_partial_or_is_decoded_if_that_is_lost() {
        for lost in [false, true] {
            let mut r = rec(RecognizerConfig::default());
            let mut audio = tone(800);
            audio.extend(silence(800));
            let mut outs = run(&mut r, &audio, false);
            let jobs = decodes(&outs);
            // The first partial is still in flight, yet the pause partial was requested.
            assert_eq!(jobs.len(), 2, "{jobs:?}");
            let pause = jobs[1].id;
            assert!(jobs[1].at_pause);
            assert_eq!(r.pending_finals(), 1, "the final is held, not requested");
            if lost {
                r.on_superseded(pause);
            } else {
                r.on_decoded(pause, "agent");
            }
            outs.clear();
            drain(&mut r, false, &mut outs);
            if lost {
                let jobs = decodes(&outs);
                assert_eq!(jobs.len(), 1);
                assert_eq!(jobs[0].id.kind, DecodeKind::Final);
                assert!(jobs[0].audio_ms() >= 850);
                r.on_decoded(jobs[0].id, "final");
                assert!(
                    matches!(r.poll_output(), Some(RecognizerOutput::Final { text, .. }) if text == "final")
                );
            } else {
                assert!(
                    matches!(&outs[0], RecognizerOutput::Partial { text, .. } if text == "agent")
                );
                assert!(
                    matches!(&outs[1], RecognizerOutput::Final { text, .. } if text == "agent")
                );
            }
            assert_eq!(r.pending_finals(), 0);
            // The first partial arriving late changes nothing.
            r.on_decoded(jobs[0].id, "late");
            assert!(r.poll_output().is_none());
        }
    }

    #[test]
    fn speech_after_a_pause_gets_a_new_pause_partial_and_a_repeated_text_is_heard_again() {
        let mut r = rec(RecognizerConfig::default());
        let mut audio = tone(600);
        audio.extend(silence(200));
        audio.extend(tone(400));
        audio.extend(silence(800));
        let mut outs = Vec::new();
        for chunk in audio.chunks(320) {
            r.push_audio(chunk);
            while let Some(o) = r.poll_output() {
                if let RecognizerOutput::Decode(job) = &o {
                    // Every decode hears the same word.
                    r.on_decoded(job.id, "agent");
                }
                outs.push(o);
            }
        }
        let pauses = decodes(&outs).iter().filter(|j| j.at_pause).count();
        assert_eq!(pauses, 2);
        let heard: Vec<&str> = outs
            .iter()
            .filter_map(|o| match o {
                RecognizerOutput::Partial { .. } => Some("P"),
                RecognizerOutput::Final { .. } => Some("F"),
                _ => None,
            })
            .collect();
        // The first partial, then each pause partial again although its text is the same.
        assert_eq!(heard, ["P", "P", "P", "F"]);
    }
}
