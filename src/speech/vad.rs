//! Voice activity detection: earshot's per-frame voice score plus start/end hysteresis.
//!
//! Whisper invents text on silence and noise ("Thank you.", "you"), so only audio the VAD calls
//! speech is ever decoded. The gate is split from the neural net so its logic can be tested
//! with synthetic scores.

use std::collections::VecDeque;

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
    /// A frame must be this far (dB) above the noise floor to start speech. earshot scores
    /// steady pink/brown noise up to 0.66 on phone-band audio, about what it gives synthetic
    /// speech, so loudness against the line's own floor is the better separator there.
    /// 0 disables the floor gate.
    pub start_snr_db: f32,
    /// Distance above the noise floor that keeps speech going (0 disables).
    pub continue_snr_db: f32,
    /// The noise floor is the quietest 48 ms stretch in this much recent audio (minimum
    /// statistics). Speech always has dips between words; steady noise never rises above its
    /// own minimum by much. Shorter adapts faster to noise that starts mid-call.
    pub floor_window_ms: u32,
}

impl Default for VadConfig {
    fn default() -> Self {
        VadConfig {
            start_threshold: 0.5,
            continue_threshold: 0.35,
            start_frames: 3,
            hangover_ms: 300,
            min_level_dbfs: -55.0,
            start_snr_db: 9.0,
            continue_snr_db: 4.0,
            floor_window_ms: 1_200,
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
            && self.hangover_ms >= FRAME_MS
            && self.start_snr_db >= 0.0
            && self.continue_snr_db >= 0.0
            && self.floor_window_ms >= 3 * FRAME_MS;
        if ok {
            Ok(())
        } else {
            Err(SpeechError::InvalidConfig(format!(
                "VAD thresholds must satisfy 0 <= continue <= start <= 1, start_frames >= 1, \
                 hangover_ms >= {FRAME_MS}, SNRs >= 0, floor_window_ms >= 48: {self:?}"
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
    /// Level above the tracked noise floor.
    pub snr_db: f32,
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
    /// Power of the last three frames (for the 48 ms smoothed level).
    recent_power: [f64; 3],
    /// Smoothed levels over the floor window, newest last.
    floor_levels: VecDeque<f32>,
    floor_len: usize,
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
            recent_power: [0.0; 3],
            floor_len: cfg.floor_window_ms.div_ceil(FRAME_MS) as usize,
            floor_levels: VecDeque::new(),
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

    /// The tracked noise floor in dBFS (None before the first frame).
    pub fn noise_floor_dbfs(&self) -> Option<f32> {
        self.floor_levels.iter().copied().reduce(f32::min)
    }

    /// Update the noise floor with this frame; returns the frame's level above it.
    fn track_floor(&mut self, level_dbfs: f32) -> f32 {
        self.recent_power.rotate_left(1);
        self.recent_power[2] = 10f64.powf(f64::from(level_dbfs) / 10.0);
        let seen = (self.next_index as usize).min(3);
        let mean = self.recent_power[3 - seen..].iter().sum::<f64>() / seen as f64;
        if self.floor_levels.len() == self.floor_len {
            self.floor_levels.pop_front();
        }
        self.floor_levels.push_back(level_dbfs_of_power(mean));
        level_dbfs - self.noise_floor_dbfs().unwrap_or(level_dbfs)
    }

    /// Feed one frame's score and level.
    pub fn push(&mut self, score: f32, level_dbfs: f32) -> VadFrame {
        let index = self.next_index;
        self.next_index += 1;
        let snr_db = self.track_floor(level_dbfs);
        let loud = level_dbfs >= self.cfg.min_level_dbfs;
        let mut event = None;
        let voiced;
        if self.in_speech {
            voiced =
                loud && snr_db >= self.cfg.continue_snr_db && score >= self.cfg.continue_threshold;
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
            voiced = loud && snr_db >= self.cfg.start_snr_db && score >= self.cfg.start_threshold;
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
            snr_db,
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
        if level_dbfs_of_power(ms) >= self.threshold_dbfs {
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
        let level_dbfs = level_dbfs_of_power(energy / FRAME_SAMPLES as f64);
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
pub fn level_dbfs_of_power(mean_square: f64) -> f32 {
    if mean_square <= 1e-12 {
        -120.0
    } else {
        (10.0 * mean_square.log10()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gate without the noise-floor test, to check the score logic alone.
    fn gate() -> VadGate {
        VadGate::new(VadConfig {
            start_snr_db: 0.0,
            continue_snr_db: 0.0,
            ..VadConfig::default()
        })
        .expect("gate")
    }

    #[test]
    fn steady_noise_never_starts_but_speech_over_it_does() {
        let mut g = VadGate::new(VadConfig::default()).expect("gate");
        // Noise the network likes (score 0.9) at a steady -30 dBFS +- 1 dB.
        for i in 0..200 {
            let wobble = if i % 2 == 0 { 1.0 } else { -1.0 };
            assert_eq!(g.push(0.9, -30.0 + wobble).event, None, "frame {i}");
        }
        assert!((g.noise_floor_dbfs().unwrap_or(0.0) + 31.0).abs() < 1.0);
        // Speech 15 dB above the noise.
        let mut started = None;
        for _ in 0..10 {
            started = started.or(g.push(0.9, -15.0).event);
        }
        assert_eq!(
            started,
            Some(VadEvent::Start {
                first_voiced_frame: 200
            })
        );
        // Back to the noise: ends after the hangover although the score stays high.
        let mut ended = None;
        for _ in 0..40 {
            ended = ended.or(g.push(0.9, -30.0).event);
        }
        assert_eq!(
            ended,
            Some(VadEvent::End {
                last_voiced_frame: 209
            })
        );
    }

    #[test]
    fn first_frames_cannot_start_without_a_floor_below_them() {
        let mut g = VadGate::new(VadConfig::default()).expect("gate");
        // Loud from the first frame with no quieter audio before: no floor to stand above.
        for _ in 0..5 {
            assert_eq!(g.push(0.9, -20.0).event, None);
        }
        // A rising onset (soft /h/, then the vowel) is enough.
        let mut g = VadGate::new(VadConfig::default()).expect("gate");
        for level in [-40.0, -38.0, -25.0, -20.0, -20.0] {
            g.push(0.9, level);
        }
        assert!(g.in_speech());
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

#[cfg(test)]
mod calibration {
    //! The VAD against espeak-ng speech through a phone channel and against sox noise.
    use super::*;
    use crate::speech::testutil::{phone_noise, phone_speech, silence};

    /// (start ms, end ms) of each segment the VAD finds.
    pub(crate) fn segments(audio: &[f32], cfg: &VadConfig) -> Vec<(u64, u64)> {
        let mut vad = Vad::new(cfg.clone()).expect("vad");
        let mut segs = Vec::new();
        let mut start = None;
        let mut handle = |e: Option<VadEvent>, segs: &mut Vec<(u64, u64)>| match e {
            Some(VadEvent::Start { first_voiced_frame }) => start = Some(first_voiced_frame),
            Some(VadEvent::End { last_voiced_frame }) => {
                let s = start.take().unwrap_or(0);
                segs.push((s * 16, (last_voiced_frame + 1) * 16));
            }
            None => {}
        };
        for frame in audio.chunks(FRAME_SAMPLES) {
            let e = vad.process_frame(frame).event;
            handle(e, &mut segs);
        }
        let e = vad.gate_mut().finish();
        handle(e, &mut segs);
        segs
    }

    /// Where the speech really is: first and last 16 ms frame within 35 dB of the loudest.
    fn true_extent(clean: &[f32]) -> (u64, u64) {
        let levels: Vec<f32> = clean
            .chunks(FRAME_SAMPLES)
            .map(|f| {
                level_dbfs_of_power(
                    f.iter().map(|&s| f64::from(s * s)).sum::<f64>() / f.len() as f64,
                )
            })
            .collect();
        let max = levels.iter().copied().fold(-200.0, f32::max);
        let first = levels.iter().position(|&l| l > max - 35.0).unwrap_or(0) as u64;
        let last = levels.iter().rposition(|&l| l > max - 35.0).unwrap_or(0) as u64;
        (first * 16, (last + 1) * 16)
    }

    fn mix(speech: &[f32], noise: Option<&[f32]>, lead_ms: u64, trail_ms: u64) -> Vec<f32> {
        let mut out = silence(lead_ms);
        out.extend_from_slice(speech);
        out.extend(silence(trail_ms));
        if let Some(noise) = noise {
            for (o, n) in out.iter_mut().zip(noise.iter().cycle()) {
                *o += n;
            }
        }
        out
    }

    const PHRASES: [&str; 6] = [
        "I want to talk to a human",
        "agent",
        "operator please",
        "representative",
        "can I speak to a real person",
        "I need to check my account balance",
    ];

    #[test]
    fn phone_speech_gives_one_segment_each() {
        let cfg = VadConfig::default();
        let Some(white) = phone_noise("whitenoise", 3.0, 0.01) else {
            return;
        };
        let Some(pink) = phone_noise("pinknoise", 3.0, 0.02) else {
            return;
        };
        let mut failures = Vec::new();
        for voice in ["en-us", "en", "en-us+f3"] {
            for wpm in [140, 180] {
                for phrase in PHRASES {
                    let Some(speech) = phone_speech(phrase, voice, wpm) else {
                        return;
                    };
                    let (on, off) = true_extent(&speech);
                    for (bg, noise) in [
                        ("quiet", None),
                        ("white", Some(&white[..])),
                        ("pink", Some(&pink[..])),
                    ] {
                        let segs = segments(&mix(&speech, noise, 500, 800), &cfg);
                        let (on, off) = (on + 500, off + 500);
                        let ok = segs.len() == 1
                            && segs[0].0 + 100 >= on
                            && segs[0].0 <= on + 150
                            && segs[0].1 + 200 >= off
                            && segs[0].1 <= off + 100;
                        if !ok {
                            failures.push(format!(
                                "{voice} {wpm} {bg} {phrase:?}: truth ({on}, {off}) vad {segs:?}"
                            ));
                        }
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} cases:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn noise_and_silence_give_no_segment() {
        let cfg = VadConfig::default();
        let mut cases = vec![("digital silence".to_string(), silence(2_000))];
        for (kind, vol) in [
            ("whitenoise", 0.005),
            ("whitenoise", 0.02),
            ("whitenoise", 0.1),
            ("pinknoise", 0.02),
            ("pinknoise", 0.05),
            ("pinknoise", 0.2),
            ("brownnoise", 0.05),
            ("brownnoise", 0.2),
            ("brownnoise", 0.5),
        ] {
            let Some(noise) = phone_noise(kind, 2.0, vol) else {
                return;
            };
            // Noise that starts after digital silence does open a segment (the floor needs
            // floor_window_ms to catch up); the recognizer's dynamics check vetoes it, see
            // recognizer::tests::noise_never_reaches_the_decoder.
            cases.push((format!("{kind} {vol}"), noise));
        }
        let found: Vec<String> = cases
            .iter()
            .filter_map(|(name, audio)| {
                let segs = segments(audio, &cfg);
                (!segs.is_empty()).then(|| format!("{name}: {segs:?}"))
            })
            .collect();
        assert!(
            found.is_empty(),
            "noise opened speech:\n{}",
            found.join("\n")
        );
    }

    #[test]
    #[ignore = "exploration: level dynamics of speech vs noise segments"]
    fn print_dynamics() {
        let cfg = VadConfig::default();
        let dyn_of = |audio: &[f32], (s, e): (u64, u64)| {
            let a = &audio[(s * 16) as usize..((e * 16) as usize).min(audio.len())];
            let mut lv: Vec<f32> = a
                .chunks(FRAME_SAMPLES)
                .map(|f| {
                    level_dbfs_of_power(
                        f.iter().map(|&x| f64::from(x * x)).sum::<f64>() / f.len() as f64,
                    )
                })
                .collect();
            lv.sort_by(f32::total_cmp);
            let p = |q: f32| lv[((lv.len() - 1) as f32 * q) as usize];
            (p(0.9) - p(0.1), lv.len())
        };
        let Some(white) = phone_noise("whitenoise", 3.0, 0.01) else {
            return;
        };
        for voice in ["en-us", "en", "en-us+f3"] {
            for phrase in PHRASES {
                let Some(speech) = phone_speech(phrase, voice, 180) else {
                    return;
                };
                let audio = mix(&speech, Some(&white), 500, 800);
                for seg in segments(&audio, &cfg) {
                    let (d, n) = dyn_of(&audio, seg);
                    let (d2, _) = dyn_of(&audio, (seg.0, (seg.0 + 250).min(seg.1)));
                    println!(
                        "speech {voice:9} {phrase:40} frames {n:3} p90-p10 {d:5.1} first250 {d2:5.1}"
                    );
                }
            }
        }
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
            for seg in segments(&late, &cfg) {
                let (d, n) = dyn_of(&late, seg);
                let (d2, _) = dyn_of(&late, (seg.0, (seg.0 + 250).min(seg.1)));
                println!("noise {kind} {vol}: frames {n} p90-p10 {d:5.1} first250 {d2:5.1}");
            }
        }
    }
}
