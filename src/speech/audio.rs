//! Audio in: WAV files of any common format to 16 kHz mono f32, streaming resampling of
//! telephone frames, and G.711 codecs (the SIP driver's PCMU/PCMA payloads).

use std::path::Path;

use rubato::{FftFixedIn, FftFixedInOut, Resampler};

use super::SpeechError;

/// The sample rate everything inside the speech engine runs at (Whisper's and earshot's rate).
pub const SAMPLE_RATE: u32 = 16_000;

/// Load a WAV file as 16 kHz mono f32 in [-1, 1].
///
/// Accepts any sample rate, any channel count (averaged to mono), 8/16/24/32-bit integer PCM,
/// 32-bit float, and G.711 mu-law/A-law (which `hound` does not read).
pub fn load_wav_mono_16k(path: impl AsRef<Path>) -> Result<Vec<f32>, SpeechError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| SpeechError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_wav_mono_16k(&bytes).map_err(|e| match e {
        SpeechError::UnsupportedAudio(detail) | SpeechError::Wav { detail, .. } => {
            SpeechError::wav(path, detail)
        }
        other => other,
    })
}

/// Decode WAV bytes (see [`load_wav_mono_16k`]) to 16 kHz mono.
pub fn decode_wav_mono_16k(bytes: &[u8]) -> Result<Vec<f32>, SpeechError> {
    let (mono, rate) = decode_wav_mono(bytes)?;
    resample(&mono, rate, SAMPLE_RATE)
}

/// Decode WAV bytes to mono f32 at the file's own rate. Returns (samples, sample rate).
pub fn decode_wav_mono(bytes: &[u8]) -> Result<(Vec<f32>, u32), SpeechError> {
    let fmt = read_fmt(bytes)?;
    match fmt.format_tag {
        WAVE_FORMAT_MULAW | WAVE_FORMAT_ALAW => decode_g711_wav(bytes, &fmt),
        _ => decode_with_hound(bytes),
    }
}

const WAVE_FORMAT_ALAW: u16 = 6;
const WAVE_FORMAT_MULAW: u16 = 7;
const WAVE_FORMAT_EXTENSIBLE: u16 = 0xFFFE;

/// The fields of a WAV "fmt " chunk we need; `format_tag` has WAVE_FORMAT_EXTENSIBLE resolved
/// to its sub-format.
struct WavFmt {
    format_tag: u16,
    channels: u16,
    sample_rate: u32,
    bits_per_sample: u16,
}

/// A RIFF chunk: id and body.
type Chunk<'a> = ([u8; 4], &'a [u8]);

/// The RIFF chunks of a WAVE file.
fn riff_chunks(bytes: &[u8]) -> Result<Vec<Chunk<'_>>, SpeechError> {
    let bad = |d: &str| SpeechError::UnsupportedAudio(format!("not a WAV file: {d}"));
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(bad("missing RIFF/WAVE header"));
    }
    let mut chunks = Vec::new();
    let mut pos = 12usize;
    while pos + 8 <= bytes.len() {
        let mut id = [0u8; 4];
        id.copy_from_slice(&bytes[pos..pos + 4]);
        let size = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]) as usize;
        let start = pos + 8;
        // Streaming writers leave the data size at 0 or 0xFFFFFFFF: take the rest of the file.
        let end = start.saturating_add(size).min(bytes.len());
        chunks.push((id, &bytes[start..end]));
        // Chunks are padded to an even length.
        pos = end + (size & 1);
    }
    Ok(chunks)
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn read_fmt(bytes: &[u8]) -> Result<WavFmt, SpeechError> {
    let chunks = riff_chunks(bytes)?;
    let body = chunks
        .iter()
        .find(|(id, _)| id == b"fmt ")
        .map(|(_, body)| *body)
        .ok_or_else(|| SpeechError::UnsupportedAudio("WAV file has no fmt chunk".into()))?;
    if body.len() < 16 {
        return Err(SpeechError::UnsupportedAudio(
            "WAV fmt chunk too short".into(),
        ));
    }
    let mut format_tag = le_u16(body, 0);
    if format_tag == WAVE_FORMAT_EXTENSIBLE && body.len() >= 26 {
        // The sub-format GUID starts with the plain format tag.
        format_tag = le_u16(body, 24);
    }
    Ok(WavFmt {
        format_tag,
        channels: le_u16(body, 2),
        sample_rate: u32::from_le_bytes([body[4], body[5], body[6], body[7]]),
        bits_per_sample: le_u16(body, 14),
    })
}

fn decode_g711_wav(bytes: &[u8], fmt: &WavFmt) -> Result<(Vec<f32>, u32), SpeechError> {
    if fmt.bits_per_sample != 8 || fmt.channels == 0 || fmt.sample_rate == 0 {
        return Err(SpeechError::UnsupportedAudio(format!(
            "G.711 WAV with {} bits, {} channels, {} Hz",
            fmt.bits_per_sample, fmt.channels, fmt.sample_rate
        )));
    }
    let data = riff_chunks(bytes)?
        .into_iter()
        .find(|(id, _)| id == b"data")
        .map(|(_, body)| body)
        .ok_or_else(|| SpeechError::UnsupportedAudio("WAV file has no data chunk".into()))?;
    let decode: fn(u8) -> f32 = if fmt.format_tag == WAVE_FORMAT_MULAW {
        |b| f32::from(mulaw_decode(b)) / 32768.0
    } else {
        |b| f32::from(alaw_decode(b)) / 32768.0
    };
    let channels = usize::from(fmt.channels);
    let mono = data
        .chunks_exact(channels)
        .map(|frame| frame.iter().map(|&b| decode(b)).sum::<f32>() / channels as f32)
        .collect();
    Ok((mono, fmt.sample_rate))
}

fn decode_with_hound(bytes: &[u8]) -> Result<(Vec<f32>, u32), SpeechError> {
    let herr = |e: hound::Error| SpeechError::UnsupportedAudio(e.to_string());
    let mut reader = hound::WavReader::new(std::io::Cursor::new(bytes)).map_err(herr)?;
    let spec = reader.spec();
    if spec.channels == 0 || spec.sample_rate == 0 {
        return Err(SpeechError::UnsupportedAudio(
            "WAV file declares 0 channels or 0 Hz".into(),
        ));
    }
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(herr)?,
        hound::SampleFormat::Int => {
            if !(1..=32).contains(&spec.bits_per_sample) {
                return Err(SpeechError::UnsupportedAudio(format!(
                    "{}-bit integer WAV",
                    spec.bits_per_sample
                )));
            }
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(herr)?
        }
    };
    let channels = usize::from(spec.channels);
    let mono = if channels == 1 {
        interleaved
    } else {
        interleaved
            .chunks_exact(channels)
            .map(|frame| frame.iter().sum::<f32>() / channels as f32)
            .collect()
    };
    Ok((mono, spec.sample_rate))
}

fn resample_err(e: impl std::fmt::Display) -> SpeechError {
    SpeechError::Resample(e.to_string())
}

/// Resample a whole mono signal from `from_hz` to `to_hz` (FFT resampler, delay compensated:
/// output sample `i` lines up with input time `i / to_hz`).
pub fn resample(samples: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>, SpeechError> {
    if from_hz == 0 || to_hz == 0 {
        return Err(SpeechError::UnsupportedAudio(format!(
            "sample rate {from_hz} -> {to_hz} Hz"
        )));
    }
    if from_hz == to_hz || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let expected = (samples.len() as u64 * u64::from(to_hz)).div_ceil(u64::from(from_hz)) as usize;
    let mut rs = FftFixedIn::<f32>::new(from_hz as usize, to_hz as usize, 1024, 2, 1)
        .map_err(resample_err)?;
    let delay = rs.output_delay();
    let mut out: Vec<f32> = Vec::with_capacity(expected + delay + 2048);
    let mut pos = 0;
    while samples.len() - pos >= rs.input_frames_next() {
        let n = rs.input_frames_next();
        let chunk = rs
            .process(&[&samples[pos..pos + n]], None)
            .map_err(resample_err)?;
        out.extend_from_slice(&chunk[0]);
        pos += n;
    }
    if pos < samples.len() {
        let chunk = rs
            .process_partial(Some(&[&samples[pos..]]), None)
            .map_err(resample_err)?;
        out.extend_from_slice(&chunk[0]);
    }
    // Push the resampler's delayed tail out with silence.
    while out.len() < expected + delay {
        let chunk = rs
            .process_partial::<&[f32]>(None, None)
            .map_err(resample_err)?;
        if chunk[0].is_empty() {
            break;
        }
        out.extend_from_slice(&chunk[0]);
    }
    let end = (delay + expected).min(out.len());
    Ok(out.get(delay..end).map(<[f32]>::to_vec).unwrap_or_default())
}

/// Streaming resampler for live audio, e.g. 8 kHz telephone frames (160 samples = 20 ms) to
/// the engine's 16 kHz. Accepts input of any length; output comes in whole resampler blocks.
///
/// The output lags the input by [`StreamResampler::delay_samples`] (10 ms for 8k -> 16k), which
/// is not trimmed: in live audio a constant small lag is harmless.
pub struct StreamResampler {
    inner: FftFixedInOut<f32>,
    pending: Vec<f32>,
    out_buf: Vec<Vec<f32>>,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("chunk_in", &self.inner.input_frames_next())
            .field("chunk_out", &self.inner.output_frames_next())
            .finish()
    }
}

impl StreamResampler {
    /// A resampler from `from_hz` to `to_hz`, working on blocks of about `block` input samples.
    pub fn new(from_hz: u32, to_hz: u32, block: usize) -> Result<Self, SpeechError> {
        if from_hz == 0 || to_hz == 0 || block == 0 {
            return Err(SpeechError::InvalidConfig(format!(
                "resampler {from_hz} -> {to_hz} Hz, block {block}"
            )));
        }
        let inner = FftFixedInOut::<f32>::new(from_hz as usize, to_hz as usize, block, 1)
            .map_err(resample_err)?;
        let out_buf = inner.output_buffer_allocate(true);
        Ok(StreamResampler {
            inner,
            pending: Vec::new(),
            out_buf,
        })
    }

    /// 8 kHz telephone audio in 20 ms frames (160 samples) to 16 kHz (320 samples per frame).
    pub fn telephone_to_16k() -> Result<Self, SpeechError> {
        Self::new(8_000, SAMPLE_RATE, 160)
    }

    /// Output delay in output samples.
    pub fn delay_samples(&self) -> usize {
        self.inner.output_delay()
    }

    /// Resample `input`, appending whatever output is ready to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<(), SpeechError> {
        self.pending.extend_from_slice(input);
        let mut pos = 0;
        while self.pending.len() - pos >= self.inner.input_frames_next() {
            let n = self.inner.input_frames_next();
            let (_, written) = self
                .inner
                .process_into_buffer(&[&self.pending[pos..pos + n]], &mut self.out_buf, None)
                .map_err(resample_err)?;
            out.extend_from_slice(&self.out_buf[0][..written]);
            pos += n;
        }
        self.pending.drain(..pos);
        Ok(())
    }

    /// Convenience for the SIP driver: decode a G.711 mu-law payload and resample it.
    pub fn process_mulaw(&mut self, payload: &[u8], out: &mut Vec<f32>) -> Result<(), SpeechError> {
        let pcm: Vec<f32> = payload
            .iter()
            .map(|&b| f32::from(mulaw_decode(b)) / 32768.0)
            .collect();
        self.process(&pcm, out)
    }

    /// End of stream: pad with silence and emit the remaining (delayed) output.
    pub fn flush(&mut self, out: &mut Vec<f32>) -> Result<(), SpeechError> {
        let n = self.inner.input_frames_next();
        let tail = self.pending.len() + self.inner.output_delay();
        let mut padded = std::mem::take(&mut self.pending);
        // Enough silence to push the delayed samples out.
        padded.resize(tail.div_ceil(n).max(1) * n, 0.0);
        self.process(&padded, out)?;
        self.inner.reset();
        Ok(())
    }
}

// G.711 lives in `media::codec` (table-driven, checked against sox); these names stay for the
// speech engine's callers.

/// G.711 mu-law byte to 16-bit linear PCM.
pub fn mulaw_decode(byte: u8) -> i16 {
    crate::media::Codec::Pcmu.decode_sample(byte)
}

/// 16-bit linear PCM to G.711 mu-law.
pub fn mulaw_encode(sample: i16) -> u8 {
    crate::media::Codec::Pcmu.encode_sample(sample)
}

/// G.711 A-law byte to 16-bit linear PCM.
pub fn alaw_decode(byte: u8) -> i16 {
    crate::media::Codec::Pcma.decode_sample(byte)
}

/// 16-bit linear PCM to G.711 A-law.
pub fn alaw_encode(sample: i16) -> u8 {
    crate::media::Codec::Pcma.encode_sample(sample)
}

/// f32 in [-1, 1] to i16, clamped.
pub fn f32_to_i16(sample: f32) -> i16 {
    (sample.clamp(-1.0, 1.0) * 32767.0).round() as i16
}

/// Mono samples in [-1, 1] as a 16-bit PCM WAV file at `rate` (the shipped prompts' format at
/// 8 kHz).
pub fn encode_wav_mono(samples: &[f32], rate: u32) -> Result<Vec<u8>, SpeechError> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut buf = Vec::with_capacity(44 + samples.len() * 2);
    let bad = |e: hound::Error| SpeechError::UnsupportedAudio(e.to_string());
    let mut w = hound::WavWriter::new(std::io::Cursor::new(&mut buf), spec).map_err(bad)?;
    for &s in samples {
        w.write_sample(f32_to_i16(s)).map_err(bad)?;
    }
    w.finalize().map_err(bad)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wav_of_any_rate_converts_to_8k_mono_pcm_and_reads_back() {
        let tone: Vec<f32> = (0..44_100)
            .map(|i| (i as f32 * 440.0 * std::f32::consts::TAU / 44_100.0).sin() * 0.5)
            .collect();
        let at_44k = encode_wav_mono(&tone, 44_100).unwrap();
        let (mono, rate) = decode_wav_mono(&at_44k).unwrap();
        assert_eq!(rate, 44_100);
        let at_8k = encode_wav_mono(&resample(&mono, rate, 8000).unwrap(), 8000).unwrap();
        let (back, rate) = decode_wav_mono(&at_8k).unwrap();
        assert_eq!(rate, 8000);
        assert!((7990..=8010).contains(&back.len()), "{}", back.len());
        let peak = back.iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!((0.45..0.55).contains(&peak), "{peak}");
    }

    fn sine(rate: u32, hz: f32, secs: f32) -> Vec<f32> {
        let n = (rate as f32 * secs) as usize;
        (0..n)
            .map(|i| 0.5 * (std::f32::consts::TAU * hz * i as f32 / rate as f32).sin())
            .collect()
    }

    /// Dominant frequency by zero crossings (enough to check a resampled sine kept its pitch).
    fn zero_crossing_hz(x: &[f32], rate: u32) -> f32 {
        let crossings = x.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        crossings as f32 * rate as f32 / x.len() as f32
    }

    fn wav_bytes(
        spec: hound::WavSpec,
        write: impl FnOnce(&mut hound::WavWriter<std::io::Cursor<&mut Vec<u8>>>),
    ) -> Vec<u8> {
        let mut buf = Vec::new();
        {
            let mut w =
                hound::WavWriter::new(std::io::Cursor::new(&mut buf), spec).expect("writer");
            write(&mut w);
            w.finalize().expect("finalize");
        }
        buf
    }

    #[test]
    fn mulaw_roundtrip_is_stable() {
        for b in 0..=255u8 {
            let lin = mulaw_decode(b);
            assert_eq!(mulaw_decode(mulaw_encode(lin)), lin, "byte {b:#x}");
        }
        assert_eq!(mulaw_decode(0xFF), 0);
        assert_eq!(mulaw_decode(0x80), 32124);
        assert_eq!(mulaw_decode(0x00), -32124);
    }

    #[test]
    fn alaw_roundtrip_is_stable() {
        for b in 0..=255u8 {
            let lin = alaw_decode(b);
            assert_eq!(alaw_decode(alaw_encode(lin)), lin, "byte {b:#x}");
        }
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0xAA), 32256);
    }

    #[test]
    fn resample_keeps_length_and_pitch() {
        for rate in [8_000, 11_025, 22_050, 44_100, 48_000] {
            let x = sine(rate, 440.0, 1.0);
            let y = resample(&x, rate, SAMPLE_RATE).expect("resample");
            assert!((y.len() as i64 - 16_000).abs() <= 1, "{rate}: {}", y.len());
            let hz = zero_crossing_hz(&y[1000..15_000], SAMPLE_RATE);
            assert!((hz - 440.0).abs() < 5.0, "{rate}: {hz}");
            // Delay compensated: the start is not a block of silence.
            assert!(
                y[40..200].iter().any(|s| s.abs() > 0.2),
                "{rate}: delayed start"
            );
        }
    }

    #[test]
    fn loads_every_wav_flavour() {
        let tone8k = sine(8_000, 300.0, 0.5);
        let pcm16 = wav_bytes(
            hound::WavSpec {
                channels: 2,
                sample_rate: 8_000,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            },
            |w| {
                for &s in &tone8k {
                    w.write_sample(f32_to_i16(s)).expect("w");
                    w.write_sample(f32_to_i16(s)).expect("w");
                }
            },
        );
        let float = wav_bytes(
            hound::WavSpec {
                channels: 1,
                sample_rate: 48_000,
                bits_per_sample: 32,
                sample_format: hound::SampleFormat::Float,
            },
            |w| {
                sine(48_000, 300.0, 0.5)
                    .iter()
                    .for_each(|&s| w.write_sample(s).expect("w"))
            },
        );
        let pcm8 = wav_bytes(
            hound::WavSpec {
                channels: 1,
                sample_rate: 22_050,
                bits_per_sample: 8,
                sample_format: hound::SampleFormat::Int,
            },
            |w| {
                sine(22_050, 300.0, 0.5)
                    .iter()
                    .for_each(|&s| w.write_sample((s * 127.0) as i8).expect("w"))
            },
        );
        for (name, bytes) in [
            ("pcm16 stereo 8k", pcm16),
            ("float 48k", float),
            ("pcm8 22k", pcm8),
        ] {
            let y = decode_wav_mono_16k(&bytes).expect(name);
            assert!((y.len() as i64 - 8_000).abs() <= 1, "{name}: {}", y.len());
            let peak = y.iter().fold(0f32, |m, s| m.max(s.abs()));
            assert!((0.4..0.6).contains(&peak), "{name}: peak {peak}");
            let hz = zero_crossing_hz(&y[500..7_500], SAMPLE_RATE);
            assert!((hz - 300.0).abs() < 5.0, "{name}: {hz}");
        }
    }

    #[test]
    fn loads_mulaw_wav() {
        let tone = sine(8_000, 300.0, 0.5);
        let data: Vec<u8> = tone.iter().map(|&s| mulaw_encode(f32_to_i16(s))).collect();
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&((4 + 26 + 8 + data.len()) as u32).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&18u32.to_le_bytes());
        for v in [7u16, 1] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&8_000u32.to_le_bytes());
        b.extend_from_slice(&8_000u32.to_le_bytes());
        for v in [1u16, 8, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(b"data");
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(&data);
        let y = decode_wav_mono_16k(&b).expect("mu-law wav");
        assert!((y.len() as i64 - 8_000).abs() <= 1);
        let hz = zero_crossing_hz(&y[500..7_500], SAMPLE_RATE);
        assert!((hz - 300.0).abs() < 5.0, "{hz}");
    }

    #[test]
    fn rejects_garbage_with_clear_error() {
        let e = decode_wav_mono_16k(b"definitely not a wav file").expect_err("garbage");
        assert!(e.to_string().contains("not a WAV"), "{e}");
        let e = load_wav_mono_16k("/nonexistent/x.wav").expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/x.wav"), "{e}");
    }

    #[test]
    fn stream_resampler_matches_frame_rate() {
        let mut rs = StreamResampler::telephone_to_16k().expect("rs");
        let x = sine(8_000, 400.0, 1.0);
        let mut out = Vec::new();
        for frame in x.chunks(160) {
            rs.process(frame, &mut out).expect("process");
        }
        // 20 ms in, 20 ms out: no buffering beyond a frame.
        assert_eq!(out.len(), 16_000);
        rs.flush(&mut out).expect("flush");
        assert!(out.len() >= 16_000 + rs.delay_samples());
        let hz = zero_crossing_hz(&out[1000..15_000], SAMPLE_RATE);
        assert!((hz - 400.0).abs() < 5.0, "{hz}");
        // Odd-sized pushes work too.
        let mut out2 = Vec::new();
        for frame in x.chunks(37) {
            rs.process(frame, &mut out2).expect("process");
        }
        assert!(out2.len() >= 15_680);
    }
}
