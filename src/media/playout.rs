//! Prompt playback paced by the caller's clock: 20 ms frames of 8 kHz PCM.
//!
//! [`Playout`] owns the send clock of a call: frame `k` is due at `start + k * 20 ms`, and
//! a frame comes out for every tick whether or not a prompt is playing (silence then), so the
//! RTP timestamp keeps running. Playbacks queue one after another; a playback is a list of
//! clips played back to back with no gap (a prompt recorded in parts plus number clips). A
//! looping playback (hold music) plays until stopped or until anything else is queued.
//! [`Playout::stop`] drops everything at once (barge-in).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::codec::{CLOCK_RATE, SAMPLES_PER_FRAME};

/// Length of one frame.
pub const FRAME_DURATION: Duration = Duration::from_millis(20);

/// If the driver falls this far behind (a stalled process), the clock jumps forward instead
/// of sending a burst of late frames; the prompt itself is not skipped.
const MAX_LAG: Duration = Duration::from_millis(100);

#[derive(Debug, Error)]
pub enum PlayoutError {
    #[error("cannot read WAV: {0}")]
    Wav(#[from] hound::Error),
    #[error("unsupported WAV format: {0}")]
    Unsupported(String),
    #[error("resampling failed: {0}")]
    Resample(String),
}

/// Audio ready to play: mono 16-bit PCM at 8 kHz. Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq)]
pub struct Clip {
    samples: Arc<[i16]>,
}

impl std::fmt::Debug for Clip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clip({} ms)", self.duration().as_millis())
    }
}

impl Clip {
    /// Samples that are already 8 kHz mono.
    pub fn from_8k(samples: impl Into<Arc<[i16]>>) -> Clip {
        Clip {
            samples: samples.into(),
        }
    }

    /// Mono samples at any rate (16 kHz prompts are resampled to 8 kHz).
    pub fn from_samples(samples: &[i16], sample_rate: u32) -> Result<Clip, PlayoutError> {
        if sample_rate == CLOCK_RATE {
            return Ok(Clip::from_8k(samples));
        }
        let float: Vec<f32> = samples.iter().map(|&s| f32::from(s) / 32768.0).collect();
        let out = resample(&float, sample_rate, CLOCK_RATE)?;
        Ok(Clip::from_8k(
            out.iter().map(|&s| f32_to_i16(s)).collect::<Vec<_>>(),
        ))
    }

    /// `duration` of silence (a pause between clips).
    pub fn silence(duration: Duration) -> Clip {
        let n = duration.as_millis() as usize * (CLOCK_RATE as usize / 1000);
        Clip::from_8k(vec![0i16; n])
    }

    /// A WAV file (PCM 8/16/24/32-bit or float; any rate; channels are mixed down).
    pub fn load_wav(path: impl AsRef<Path>) -> Result<Clip, PlayoutError> {
        Self::from_wav_reader(hound::WavReader::open(path)?)
    }

    /// A WAV file held in memory.
    pub fn from_wav_bytes(bytes: &[u8]) -> Result<Clip, PlayoutError> {
        Self::from_wav_reader(hound::WavReader::new(std::io::Cursor::new(bytes))?)
    }

    fn from_wav_reader<R: std::io::Read>(
        reader: hound::WavReader<R>,
    ) -> Result<Clip, PlayoutError> {
        let spec = reader.spec();
        let channels = usize::from(spec.channels.max(1));
        let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
            (hound::SampleFormat::Float, 32) => {
                reader.into_samples::<f32>().collect::<Result<_, _>>()?
            }
            (hound::SampleFormat::Int, bits @ 8..=32) => {
                let scale = 2f32.powi(i32::from(bits) - 1);
                reader
                    .into_samples::<i32>()
                    .map(|s| s.map(|v| v as f32 / scale))
                    .collect::<Result<_, _>>()?
            }
            (format, bits) => {
                return Err(PlayoutError::Unsupported(format!("{format:?} {bits}-bit")));
            }
        };
        let mono: Vec<f32> = interleaved
            .chunks(channels)
            .map(|frame| frame.iter().sum::<f32>() / frame.len() as f32)
            .collect();
        let at_8k = if spec.sample_rate == CLOCK_RATE {
            mono
        } else {
            resample(&mono, spec.sample_rate, CLOCK_RATE)?
        };
        Ok(Clip::from_8k(
            at_8k.iter().map(|&s| f32_to_i16(s)).collect::<Vec<_>>(),
        ))
    }

    pub fn samples(&self) -> &[i16] {
        &self.samples
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.samples.len() as u64 * 1_000_000 / u64::from(CLOCK_RATE))
    }
}

fn f32_to_i16(s: f32) -> i16 {
    (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

/// Whole-signal resampling with rubato's FFT resampler, delay compensated.
fn resample(samples: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>, PlayoutError> {
    use rubato::{FftFixedIn, Resampler};
    let err = |e: &dyn std::fmt::Display| PlayoutError::Resample(e.to_string());
    if from_hz == 0 {
        return Err(PlayoutError::Unsupported("sample rate 0".into()));
    }
    if from_hz == to_hz || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let expected = (samples.len() as u64 * u64::from(to_hz)).div_ceil(u64::from(from_hz)) as usize;
    let mut rs = FftFixedIn::<f32>::new(from_hz as usize, to_hz as usize, 1024, 2, 1)
        .map_err(|e| err(&e))?;
    let delay = rs.output_delay();
    let mut out = Vec::with_capacity(expected + delay + 2048);
    let mut rest = samples;
    while rest.len() >= rs.input_frames_next() {
        let (chunk, tail) = rest.split_at(rs.input_frames_next());
        let res = rs.process(&[chunk], None).map_err(|e| err(&e))?;
        out.extend(res.into_iter().flatten());
        rest = tail;
    }
    if !rest.is_empty() {
        let res = rs
            .process_partial(Some(&[rest]), None)
            .map_err(|e| err(&e))?;
        out.extend(res.into_iter().flatten());
    }
    // Flush the resampler's delayed tail.
    while out.len() < expected + delay {
        let res = rs
            .process_partial::<&[f32]>(None, None)
            .map_err(|e| err(&e))?;
        let before = out.len();
        out.extend(res.into_iter().flatten());
        if out.len() == before {
            break;
        }
    }
    let end = (delay + expected).min(out.len());
    Ok(out.get(delay..end).map(<[f32]>::to_vec).unwrap_or_default())
}

/// Identifies a playback in events. Chosen by the caller.
pub type PlaybackId = u64;

/// One 20 ms frame to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub samples: [i16; SAMPLES_PER_FRAME],
    /// Tick number since the clock started: the RTP timestamp is `base + tick * 160`. It can
    /// jump when the driver fell behind.
    pub tick: u64,
    /// The playback this frame (or most of it) came from; `None` for silence.
    pub playback: Option<PlaybackId>,
}

/// A playback left the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaybackEnded {
    pub id: PlaybackId,
    /// True when stopped or replaced, false when it played to the end.
    pub interrupted: bool,
}

#[derive(Debug)]
struct Playback {
    id: PlaybackId,
    clips: Vec<Clip>,
    looping: bool,
    clip: usize,
    pos: usize,
}

impl Playback {
    fn new(id: PlaybackId, clips: Vec<Clip>, looping: bool) -> Self {
        // Empty clips would make a loop spin without producing audio.
        let clips: Vec<Clip> = clips.into_iter().filter(|c| !c.is_empty()).collect();
        Playback {
            id,
            clips,
            looping,
            clip: 0,
            pos: 0,
        }
    }

    /// Copy samples into `out`; returns how many. Zero means the playback is over.
    fn read(&mut self, out: &mut [i16]) -> usize {
        let mut written = 0;
        while written < out.len() {
            let Some(clip) = self.clips.get(self.clip) else {
                if self.looping && !self.clips.is_empty() {
                    self.clip = 0;
                    self.pos = 0;
                    continue;
                }
                break;
            };
            let src = clip.samples().get(self.pos..).unwrap_or_default();
            let n = src.len().min(out.len() - written);
            if let (Some(dst), Some(src)) = (out.get_mut(written..written + n), src.get(..n)) {
                dst.copy_from_slice(src);
            }
            written += n;
            self.pos += n;
            if self.pos >= clip.len() {
                self.clip += 1;
                self.pos = 0;
            }
        }
        written
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Playout {
    start: Instant,
    next_tick: u64,
    queue: VecDeque<Playback>,
    ended: VecDeque<PlaybackEnded>,
}

impl Playout {
    /// A clock whose first frame is due at `now`.
    pub fn new(now: Instant) -> Self {
        Playout {
            start: now,
            next_tick: 0,
            queue: VecDeque::new(),
            ended: VecDeque::new(),
        }
    }

    /// Play `clips` back to back after whatever is queued. A looping playback that is
    /// playing gives way at once.
    pub fn enqueue(&mut self, id: PlaybackId, clips: Vec<Clip>) {
        self.end_loops();
        self.queue.push_back(Playback::new(id, clips, false));
    }

    /// Loop `clips` (hold music) until [`stop`](Self::stop) or until anything else is queued.
    pub fn play_loop(&mut self, id: PlaybackId, clips: Vec<Clip>) {
        self.end_loops();
        self.queue.push_back(Playback::new(id, clips, true));
    }

    /// Stop and forget everything (barge-in). Returns true if something was playing.
    pub fn stop(&mut self) -> bool {
        let any = !self.queue.is_empty();
        for p in self.queue.drain(..) {
            self.ended.push_back(PlaybackEnded {
                id: p.id,
                interrupted: true,
            });
        }
        any
    }

    /// Whether a playback is playing or queued.
    pub fn is_playing(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Playbacks that ended, in order.
    pub fn poll_ended(&mut self) -> Option<PlaybackEnded> {
        self.ended.pop_front()
    }

    /// When the next frame is due.
    pub fn next_deadline(&self) -> Instant {
        self.due(self.next_tick)
    }

    fn due(&self, tick: u64) -> Instant {
        // 2^64 ticks of 20 ms will not happen; saturate rather than overflow anyway.
        let ms = tick.saturating_mul(20);
        self.start + Duration::from_millis(ms)
    }

    /// The next frame if it is due at `now`. Call until `None`.
    pub fn poll(&mut self, now: Instant) -> Option<Frame> {
        let due = self.next_deadline();
        if now < due {
            return None;
        }
        if now.duration_since(due) > MAX_LAG {
            // Jump to the tick for `now`; the skipped ticks are never sent.
            let behind = now.duration_since(self.start).as_millis() / 20;
            let skipped = behind as u64 - self.next_tick;
            tracing::debug!(skipped, "playout fell behind; clock jumps forward");
            self.next_tick = behind as u64;
        }
        let tick = self.next_tick;
        self.next_tick += 1;
        let mut samples = [0i16; SAMPLES_PER_FRAME];
        let mut filled = 0;
        let mut playback = None;
        while filled < SAMPLES_PER_FRAME {
            let Some(current) = self.queue.front_mut() else {
                break;
            };
            let n = current.read(samples.get_mut(filled..).unwrap_or_default());
            if n > 0 && playback.is_none() {
                playback = Some(current.id);
            }
            filled += n;
            if filled < SAMPLES_PER_FRAME || current.clip >= current.clips.len() {
                // Reached the end of a one-shot playback (loops never return short).
                if !current.looping || current.clips.is_empty() {
                    let id = current.id;
                    self.queue.pop_front();
                    self.ended.push_back(PlaybackEnded {
                        id,
                        interrupted: false,
                    });
                }
            }
        }
        Some(Frame {
            samples,
            tick,
            playback,
        })
    }

    /// Interrupt looping playbacks (they only ever give way to something newer).
    fn end_loops(&mut self) {
        let before = self.queue.len();
        let mut kept = VecDeque::with_capacity(before);
        for p in self.queue.drain(..) {
            if p.looping {
                self.ended.push_back(PlaybackEnded {
                    id: p.id,
                    interrupted: true,
                });
            } else {
                kept.push_back(p);
            }
        }
        self.queue = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(len: usize, start: i16) -> Clip {
        Clip::from_8k((0..len).map(|i| start + i as i16).collect::<Vec<_>>())
    }

    fn frames(p: &mut Playout, t: Instant, n: u64) -> Vec<Frame> {
        (0..n)
            .filter_map(|i| p.poll(t + FRAME_DURATION * i as u32))
            .collect()
    }

    #[test]
    fn paced_by_the_clock() {
        let t = Instant::now();
        let mut p = Playout::new(t);
        assert_eq!(p.next_deadline(), t);
        let f0 = p.poll(t).expect("first frame due at start");
        assert_eq!(f0.tick, 0);
        assert_eq!(f0.playback, None);
        assert!(f0.samples.iter().all(|&s| s == 0), "silence when idle");
        assert_eq!(p.poll(t), None);
        assert_eq!(p.next_deadline(), t + FRAME_DURATION);
        assert_eq!(p.poll(t + Duration::from_millis(19)), None);
        assert_eq!(p.poll(t + FRAME_DURATION).map(|f| f.tick), Some(1));
    }

    #[test]
    fn clips_are_concatenated_without_gaps() {
        let t = Instant::now();
        let mut p = Playout::new(t);
        // 100 + 300 samples: 2.5 frames; frame 0 spans the clip boundary.
        p.enqueue(7, vec![ramp(100, 0), ramp(300, 1000)]);
        let f = frames(&mut p, t, 4);
        assert_eq!(f[0].samples[99], 99);
        assert_eq!(f[0].samples[100], 1000);
        assert_eq!(f[1].samples[0], 1060);
        assert_eq!(f[2].samples[79], 1299);
        assert_eq!(f[2].samples[80], 0, "last frame padded with silence");
        assert_eq!(f[2].playback, Some(7));
        assert_eq!(f[3].playback, None);
        assert_eq!(
            p.poll_ended(),
            Some(PlaybackEnded {
                id: 7,
                interrupted: false
            })
        );
        assert_eq!(p.poll_ended(), None);
    }

    #[test]
    fn queued_playbacks_follow_each_other() {
        let t = Instant::now();
        let mut p = Playout::new(t);
        p.enqueue(1, vec![ramp(160, 1)]);
        p.enqueue(2, vec![ramp(160, 500)]);
        let f = frames(&mut p, t, 2);
        assert_eq!((f[0].playback, f[0].samples[0]), (Some(1), 1));
        assert_eq!((f[1].playback, f[1].samples[0]), (Some(2), 500));
        assert_eq!(p.poll_ended().map(|e| e.id), Some(1));
        assert_eq!(p.poll_ended().map(|e| e.id), Some(2));
    }

    #[test]
    fn stop_is_immediate() {
        let t = Instant::now();
        let mut p = Playout::new(t);
        p.enqueue(1, vec![ramp(8000, 1)]);
        p.enqueue(2, vec![ramp(8000, 1)]);
        assert!(p.poll(t).is_some_and(|f| f.playback == Some(1)));
        assert!(p.stop());
        assert!(!p.is_playing());
        let f = p.poll(t + FRAME_DURATION).expect("frame");
        assert_eq!(f.playback, None);
        assert!(f.samples.iter().all(|&s| s == 0));
        let ended: Vec<_> = std::iter::from_fn(|| p.poll_ended()).collect();
        assert_eq!(ended.len(), 2);
        assert!(ended.iter().all(|e| e.interrupted));
    }

    #[test]
    fn loop_repeats_until_something_is_queued() {
        let t = Instant::now();
        let mut p = Playout::new(t);
        p.play_loop(9, vec![ramp(100, 1)]);
        let f = frames(&mut p, t, 10);
        // 1600 samples from a 100-sample clip: sample i is 1 + i % 100.
        for (k, frame) in f.iter().enumerate() {
            for (i, &s) in frame.samples.iter().enumerate() {
                assert_eq!(s, 1 + ((k * 160 + i) % 100) as i16);
            }
            assert_eq!(frame.playback, Some(9));
        }
        assert_eq!(p.poll_ended(), None);
        p.enqueue(10, vec![ramp(160, 7)]);
        let next = p.poll(t + FRAME_DURATION * 10).expect("frame");
        assert_eq!((next.playback, next.samples[0]), (Some(10), 7));
        assert_eq!(
            p.poll_ended(),
            Some(PlaybackEnded {
                id: 9,
                interrupted: true
            })
        );
    }

    #[test]
    fn empty_loop_does_not_spin() {
        let t = Instant::now();
        let mut p = Playout::new(t);
        p.play_loop(1, vec![Clip::from_8k(Vec::new())]);
        let f = p.poll(t).expect("frame");
        assert_eq!(f.playback, None);
        assert_eq!(p.poll_ended().map(|e| e.id), Some(1));
    }

    #[test]
    fn falling_behind_jumps_the_clock_not_the_prompt() {
        let t = Instant::now();
        let mut p = Playout::new(t);
        p.enqueue(1, vec![ramp(480, 0)]);
        assert_eq!(p.poll(t).map(|f| f.tick), Some(0));
        // A one-second stall.
        let late = t + Duration::from_secs(1);
        let f = p.poll(late).expect("frame");
        assert_eq!(f.tick, 50);
        assert_eq!(f.samples[0], 160, "prompt continues where it was");
        assert_eq!(p.poll(late), None);
        // A small delay is caught up frame by frame instead.
        let a = p.poll(late + Duration::from_millis(60)).expect("frame");
        let b = p.poll(late + Duration::from_millis(60)).expect("frame");
        assert_eq!((a.tick, b.tick), (51, 52));
    }

    #[test]
    fn silence_clip_and_duration() {
        let c = Clip::silence(Duration::from_millis(250));
        assert_eq!(c.len(), 2000);
        assert_eq!(c.duration(), Duration::from_millis(250));
    }

    #[test]
    fn sixteen_khz_is_resampled() {
        // A 440 Hz tone, 1 s at 16 kHz.
        let tone: Vec<i16> = (0..16_000)
            .map(|i| {
                let x = i as f32 * 440.0 * std::f32::consts::TAU / 16_000.0;
                (x.sin() * 10_000.0) as i16
            })
            .collect();
        let c = Clip::from_samples(&tone, 16_000).expect("resample");
        assert_eq!(c.len(), 8000);
        // Still a 440 Hz tone of the same level: compare with the ideal 8 kHz signal.
        let err: f64 = c.samples()[200..7800]
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let x = (i + 200) as f32 * 440.0 * std::f32::consts::TAU / 8_000.0;
                let ideal = x.sin() * 10_000.0;
                f64::from((f32::from(s) - ideal).abs())
            })
            .sum::<f64>()
            / 7600.0;
        assert!(err < 200.0, "mean error {err}");
    }

    #[test]
    fn wav_files_load_at_8k() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (rate, channels) in [(8000u32, 1u16), (16000, 1), (16000, 2)] {
            let path = dir.path().join(format!("t{rate}_{channels}.wav"));
            let spec = hound::WavSpec {
                channels,
                sample_rate: rate,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut w = hound::WavWriter::create(&path, spec).expect("create");
            for _ in 0..rate / 2 {
                for _ in 0..channels {
                    w.write_sample(1000i16).expect("write");
                }
            }
            w.finalize().expect("finalize");
            let c = Clip::load_wav(&path).expect("load");
            assert_eq!(c.len(), 4000, "{rate} Hz x{channels}");
            assert!((c.samples()[2000] - 1000).abs() < 20);
        }
        assert!(Clip::from_wav_bytes(b"not a wav").is_err());
    }
}
