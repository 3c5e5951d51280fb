//! Voice activity detection: earshot's per-frame voice score plus start/end hysteresis.
//!
//! Whisper invents text on silence and noise ("Thank you.", "you"), so only audio the VAD calls
//! speech is ever decoded. The gate is split from the neural net so its logic can be tested
//! with synthetic scores.

use earshot::Detector;

use super::SpeechError;

/// earshot works on 16 ms frames of 256 samples at 16 kHz.
pub const FRAME_SAMPLES: usize = 256;
/// Length of one VAD frame in milliseconds.
pub const FRAME_MS: u32 = 16;

/// VAD thresholds and timing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct VadConfig {
    /// Score (0..1) a frame needs to count as voiced while idle.
    pub start_threshold: f32,
    /// Lower score that keeps an utterance going once started, so soft syllables and
    /// consonants inside a sentence do not split it.
    pub continue_threshold: f32,
    /// Consecutive voiced frames needed to declare speech (48 ms at 3): rejects clicks and
    /// single noisy frames while still firing barge-in quickly.
    pub start_frames: u32,
    /// Silence after the last voiced frame before the utterance ends. Shorter ends finals
    /// sooner but splits slow speech ("I want... an agent").
    pub hangover_ms: u32,
    /// Frames quieter than this (dBFS) never count as voiced: line hiss scored by the network
    /// must not open an utterance.
    pub min_level_dbfs: f32,
}

impl Default for VadConfig {
    fn default() -> Self {
        VadConfig {
            start_threshold: 0.5,
            continue_threshold: 0.35,
            start_frames: 3,
            hangover_ms: 300,
            min_level_dbfs: -55.0,
        }
    }
}

impl VadConfig {
    /// Check the values make sense.
    pub fn validate(&self) -> Result<(), SpeechError> {
        let ok = (0.0..=1.0).contains(&self.start_threshold)
            && (0.0..=1.0).contains(&self.continue_threshold)
            && self.continue_threshold <= self.start_threshold
            && self.start_frames >= 1
            && self.hangover_ms >= FRAME_MS;
        if ok {
            Ok(())
        } else {
            Err(SpeechError::InvalidConfig(format!(
                "VAD thresholds must satisfy 0 <= continue <= start <= 1, start_frames >= 1 and \
                 hangover_ms >= {FRAME_MS}: {self:?}"
            )))
        }
    }

    fn hangover_frames(&self) -> u32 {
        self.hangover_ms.div_ceil(FRAME_MS).max(1)
    }
}

/// A change of speech state, in frame indices (frame `i` covers samples `i*256 .. (i+1)*256`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadEvent {
    /// Speech confirmed; it began at this frame (earlier than the frame that confirmed it).
    Start { first_voiced_frame: u64 },
    /// The hangover expired; the last voiced frame was this one.
    End { last_voiced_frame: u64 },
}

/// The gate's verdict on one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadFrame {
    pub index: u64,
    pub score: f32,
    pub level_dbfs: f32,
    /// The frame counted as voice (against the threshold that applied at the time).
    pub voiced: bool,
    /// Inside an utterance after this frame.
    pub in_speech: bool,
    pub event: Option<VadEvent>,
}

/// The hysteresis state machine on top of per-frame scores. Pure: no audio, no clock.
#[derive(Debug, Clone)]
pub struct VadGate {
    cfg: VadConfig,
    hangover_frames: u32,
    next_index: u64,
    in_speech: bool,
    run_len: u32,
    run_start: u64,
    last_voiced: u64,
    silent_run: u32,
}

impl VadGate {
    pub fn new(cfg: VadConfig) -> Result<Self, SpeechError> {
        cfg.validate()?;
        Ok(VadGate {
            hangover_frames: cfg.hangover_frames(),
            cfg,
            next_index: 0,
            in_speech: false,
            run_len: 0,
            run_start: 0,
            last_voiced: 0,
            silent_run: 0,
        })
    }

    pub fn config(&self) -> &VadConfig {
        &self.cfg
    }

    pub fn in_speech(&self) -> bool {
        self.in_speech
    }

    /// Index the next frame will get.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Feed one frame's score and level.
    pub fn push(&mut self, score: f32, level_dbfs: f32) -> VadFrame {
        let index = self.next_index;
        self.next_index += 1;
        let loud = level_dbfs >= self.cfg.min_level_dbfs;
        let mut event = None;
        let voiced;
        if self.in_speech {
            voiced = loud && score >= self.cfg.continue_threshold;
            if voiced {
                self.last_voiced = index;
                self.silent_run = 0;
            } else {
                self.silent_run += 1;
                if self.silent_run >= self.hangover_frames {
                    self.in_speech = false;
                    self.run_len = 0;
                    event = Some(VadEvent::End {
                        last_voiced_frame: self.last_voiced,
                    });
                }
            }
        } else {
            voiced = loud && score >= self.cfg.start_threshold;
            if voiced {
                if self.run_len == 0 {
                    self.run_start = index;
                }
                self.run_len += 1;
                if self.run_len >= self.cfg.start_frames {
                    self.in_speech = true;
                    self.last_voiced = index;
                    self.silent_run = 0;
                    event = Some(VadEvent::Start {
                        first_voiced_frame: self.run_start,
                    });
                }
            } else {
                self.run_len = 0;
            }
        }
        VadFrame {
            index,
            score,
            level_dbfs,
            voiced,
            in_speech: self.in_speech,
            event,
        }
    }

    /// End of input: close an open utterance at its last voiced frame.
    pub fn finish(&mut self) -> Option<VadEvent> {
        self.run_len = 0;
        if self.in_speech {
            self.in_speech = false;
            Some(VadEvent::End {
                last_voiced_frame: self.last_voiced,
            })
        } else {
            None
        }
    }
}

/// Scores one frame of [`FRAME_SAMPLES`] samples (clamped to [-1, 1]) for voice, 0..1.
pub trait VoiceScorer: Send {
    fn score(&mut self, frame: &[f32; FRAME_SAMPLES]) -> f32;
    fn reset(&mut self);
}

/// earshot's neural network: robust to noise, ~3000x faster than real time.
pub struct EarshotScorer(Box<Detector>);

impl Default for EarshotScorer {
    fn default() -> Self {
        // Boxed: the detector keeps ~8 KiB of state, too much to move around on the stack.
        EarshotScorer(Detector::default_boxed())
    }
}

impl VoiceScorer for EarshotScorer {
    fn score(&mut self, frame: &[f32; FRAME_SAMPLES]) -> f32 {
        self.0.predict_f32(frame)
    }
    fn reset(&mut self) {
        self.0.reset();
    }
}

/// Loudness only: 1.0 above `threshold_dbfs`, else 0.0. For tests with synthetic signals
/// (the network rightly refuses to call a tone speech), not for real calls.
#[derive(Debug, Clone, Copy)]
pub struct EnergyScorer {
    pub threshold_dbfs: f32,
}

impl VoiceScorer for EnergyScorer {
    fn score(&mut self, frame: &[f32; FRAME_SAMPLES]) -> f32 {
        let ms = frame
            .iter()
            .map(|&s| f64::from(s) * f64::from(s))
            .sum::<f64>()
            / FRAME_SAMPLES as f64;
        if level_dbfs(ms) >= self.threshold_dbfs {
            1.0
        } else {
            0.0
        }
    }
    fn reset(&mut self) {}
}

/// A [`VoiceScorer`] (earshot by default) plus [`VadGate`]: 16 kHz frames in, verdicts out.
pub struct Vad {
    scorer: Box<dyn VoiceScorer>,
    gate: VadGate,
    scratch: [f32; FRAME_SAMPLES],
}

impl std::fmt::Debug for Vad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vad").field("gate", &self.gate).finish()
    }
}

impl Vad {
    /// earshot-based VAD.
    pub fn new(cfg: VadConfig) -> Result<Self, SpeechError> {
        Self::with_scorer(cfg, Box::new(EarshotScorer::default()))
    }

    pub fn with_scorer(cfg: VadConfig, scorer: Box<dyn VoiceScorer>) -> Result<Self, SpeechError> {
        Ok(Vad {
            scorer,
            gate: VadGate::new(cfg)?,
            scratch: [0.0; FRAME_SAMPLES],
        })
    }

    pub fn gate(&self) -> &VadGate {
        &self.gate
    }

    pub fn gate_mut(&mut self) -> &mut VadGate {
        &mut self.gate
    }

    /// Score one frame of exactly [`FRAME_SAMPLES`] samples (shorter frames are zero-padded,
    /// longer ones truncated; the recognizer always passes whole frames).
    pub fn process_frame(&mut self, frame: &[f32]) -> VadFrame {
        let n = frame.len().min(FRAME_SAMPLES);
        let mut energy = 0.0f64;
        for (dst, &src) in self.scratch.iter_mut().zip(&frame[..n]) {
            // earshot asserts [-1, 1] in debug builds; clipped input must not panic.
            let s = if src.is_finite() {
                src.clamp(-1.0, 1.0)
            } else {
                0.0
            };
            energy += f64::from(s) * f64::from(s);
            *dst = s;
        }
        self.scratch[n..].fill(0.0);
        let score = self.scorer.score(&self.scratch);
        let level_dbfs = level_dbfs(energy / FRAME_SAMPLES as f64);
        self.gate.push(score, level_dbfs)
    }

    /// Reset the scorer and the gate (a new call on a reused detector).
    pub fn reset(&mut self) -> Result<(), SpeechError> {
        self.scorer.reset();
        self.gate = VadGate::new(self.gate.cfg.clone())?;
        Ok(())
    }
}

/// Mean-square power to dBFS (full-scale sine = -3 dBFS), floored at -120.
pub fn level_dbfs(mean_square: f64) -> f32 {
    if mean_square <= 1e-12 {
        -120.0
    } else {
        (10.0 * mean_square.log10()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> VadGate {
        VadGate::new(VadConfig::default()).expect("gate")
    }

    #[test]
    fn needs_consecutive_voiced_frames_to_start() {
        let mut g = gate();
        // Two voiced, one silent, repeated: never three in a row.
        for _ in 0..20 {
            assert_eq!(g.push(0.9, -20.0).event, None);
            assert_eq!(g.push(0.9, -20.0).event, None);
            assert_eq!(g.push(0.1, -20.0).event, None);
        }
        assert!(!g.in_speech());
        g.push(0.9, -20.0);
        g.push(0.9, -20.0);
        let f = g.push(0.9, -20.0);
        assert_eq!(
            f.event,
            Some(VadEvent::Start {
                first_voiced_frame: 60
            })
        );
    }

    #[test]
    fn ends_after_hangover_and_reports_last_voiced_frame() {
        let mut g = gate();
        for _ in 0..10 {
            g.push(0.9, -20.0);
        }
        // 300 ms hangover = 19 frames of 16 ms.
        let mut ended = None;
        for i in 0..40 {
            if let Some(e) = g.push(0.0, -90.0).event {
                ended = Some((i, e));
                break;
            }
        }
        assert_eq!(
            ended,
            Some((
                18,
                VadEvent::End {
                    last_voiced_frame: 9
                }
            ))
        );
    }

    #[test]
    fn continue_threshold_keeps_soft_frames_in_speech() {
        let mut g = gate();
        for _ in 0..5 {
            g.push(0.9, -20.0);
        }
        // 0.4 would not start speech but keeps it going.
        for _ in 0..100 {
            assert_eq!(g.push(0.4, -30.0).event, None);
        }
        assert!(g.in_speech());
    }

    #[test]
    fn quiet_frames_never_count_as_voice() {
        let mut g = gate();
        for _ in 0..100 {
            assert!(!g.push(0.99, -70.0).voiced);
        }
        assert!(!g.in_speech());
    }

    #[test]
    fn short_pause_does_not_split() {
        let mut g = gate();
        for _ in 0..10 {
            g.push(0.9, -20.0);
        }
        for _ in 0..15 {
            assert_eq!(g.push(0.0, -90.0).event, None); // 240 ms < 300 ms
        }
        for _ in 0..10 {
            assert_eq!(g.push(0.9, -20.0).event, None);
        }
        assert!(g.in_speech());
    }

    #[test]
    fn rejects_bad_config() {
        let cfg = VadConfig {
            continue_threshold: 0.8,
            start_threshold: 0.5,
            ..VadConfig::default()
        };
        assert!(VadGate::new(cfg).is_err());
    }

    #[test]
    fn earshot_is_quiet_on_silence_and_tones() {
        let mut vad = Vad::new(VadConfig::default()).expect("vad");
        // 2 s of digital silence, then 2 s of a steady 1 kHz tone (a dial tone is not speech).
        let mut starts = 0;
        for i in 0..250 {
            let frame: Vec<f32> = (0..FRAME_SAMPLES)
                .map(|j| {
                    if i < 125 {
                        0.0
                    } else {
                        let t = (i * FRAME_SAMPLES + j) as f32 / 16_000.0;
                        0.3 * (std::f32::consts::TAU * 1_000.0 * t).sin()
                    }
                })
                .collect();
            if matches!(
                vad.process_frame(&frame).event,
                Some(VadEvent::Start { .. })
            ) {
                starts += 1;
            }
        }
        assert_eq!(starts, 0);
    }

    #[test]
    fn odd_input_does_not_panic() {
        let mut vad = Vad::new(VadConfig::default()).expect("vad");
        vad.process_frame(&[2.0; 10]);
        vad.process_frame(&[f32::NAN; FRAME_SAMPLES]);
        vad.process_frame(&[]);
        vad.process_frame(&[0.5; 1000]);
    }
}
