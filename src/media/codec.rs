//! G.711 mu-law (PCMU) and A-law (PCMA) for 16-bit PCM at 8 kHz.
//!
//! Own code rather than a crate: the only G.711 crate found (`ezk-g711`) pulls in a whole media
//! framework (ezk, ezk-rtp, rand, ...) for two small functions. The encoders follow the classic
//! Sun / CCITT reference (`g711.c`, the one sox and ffmpeg use), so our bytes match theirs; the
//! decoders are 256-entry tables built at compile time.

/// Samples in one 20 ms frame at 8 kHz.
pub const SAMPLES_PER_FRAME: usize = 160;
/// The RTP clock rate of both G.711 variants.
pub const CLOCK_RATE: u32 = 8000;

/// A G.711 variant. Both code one 8 kHz sample per byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// mu-law, static RTP payload type 0 (North America, Japan, and most SIP defaults).
    Pcmu,
    /// A-law, static RTP payload type 8 (Europe and most of the world's PSTN).
    Pcma,
}

impl Codec {
    /// The static RTP payload type (RFC 3551).
    pub const fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    /// The codec for a static payload type, if it is one of ours.
    pub const fn from_payload_type(pt: u8) -> Option<Codec> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            _ => None,
        }
    }

    /// The encoding name used in SDP `a=rtpmap`.
    pub const fn encoding_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    /// The codec for an SDP encoding name (case-insensitive, as RFC 4855 says).
    pub fn from_encoding_name(name: &str) -> Option<Codec> {
        if name.eq_ignore_ascii_case("PCMU") {
            Some(Codec::Pcmu)
        } else if name.eq_ignore_ascii_case("PCMA") {
            Some(Codec::Pcma)
        } else {
            None
        }
    }

    /// The byte that decodes to silence. For mu-law 0xFF (positive zero); for A-law 0xD5
    /// (the smallest positive step, +8, as A-law has no exact zero).
    pub const fn silence_byte(self) -> u8 {
        match self {
            Codec::Pcmu => 0xFF,
            Codec::Pcma => 0xD5,
        }
    }

    /// Encode one sample.
    #[inline]
    pub fn encode_sample(self, sample: i16) -> u8 {
        match self {
            Codec::Pcmu => ulaw_encode(sample),
            Codec::Pcma => alaw_encode(sample),
        }
    }

    /// Decode one byte.
    #[inline]
    pub fn decode_sample(self, byte: u8) -> i16 {
        match self {
            Codec::Pcmu => ULAW_DECODE[byte as usize],
            Codec::Pcma => ALAW_DECODE[byte as usize],
        }
    }

    /// Encode PCM, appending one byte per sample to `out`.
    pub fn encode_into(self, pcm: &[i16], out: &mut Vec<u8>) {
        out.extend(pcm.iter().map(|&s| self.encode_sample(s)));
    }

    /// Encode PCM into a new buffer.
    pub fn encode(self, pcm: &[i16]) -> Vec<u8> {
        let mut out = Vec::with_capacity(pcm.len());
        self.encode_into(pcm, &mut out);
        out
    }

    /// Decode bytes, appending one sample per byte to `out`.
    pub fn decode_into(self, bytes: &[u8], out: &mut Vec<i16>) {
        out.extend(bytes.iter().map(|&b| self.decode_sample(b)));
    }

    /// Decode bytes into a new buffer.
    pub fn decode(self, bytes: &[u8]) -> Vec<i16> {
        let mut out = Vec::with_capacity(bytes.len());
        self.decode_into(bytes, &mut out);
        out
    }
}

/// Convert a G.711 payload from one variant to the other without going through a PCM buffer
/// (table lookup per byte). Same codec in and out copies the bytes unchanged.
pub fn transcode(from: Codec, to: Codec, bytes: &[u8]) -> Vec<u8> {
    match (from, to) {
        (Codec::Pcmu, Codec::Pcma) => bytes.iter().map(|&b| ULAW_TO_ALAW[b as usize]).collect(),
        (Codec::Pcma, Codec::Pcmu) => bytes.iter().map(|&b| ALAW_TO_ULAW[b as usize]).collect(),
        _ => bytes.to_vec(),
    }
}

// --- mu-law -------------------------------------------------------------------------------

const ULAW_BIAS: i32 = 0x84;
/// Largest magnitude before the bias is added (14-bit domain: 8159 << 2 + 3).
const ULAW_CLIP: i32 = 8159;

/// End of each segment in the 14-bit magnitude domain.
const ULAW_SEG_END: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];

const fn segment(value: i32, ends: &[i32; 8]) -> usize {
    let mut i = 0;
    while i < ends.len() {
        if value <= ends[i] {
            return i;
        }
        i += 1;
    }
    ends.len()
}

/// Sun/CCITT `linear2ulaw` on a 16-bit sample (top 14 bits are used).
const fn ulaw_encode(sample: i16) -> u8 {
    let mut pcm = (sample as i32) >> 2;
    let mask: i32 = if pcm < 0 {
        pcm = -pcm;
        0x7F
    } else {
        0xFF
    };
    if pcm > ULAW_CLIP {
        pcm = ULAW_CLIP;
    }
    pcm += ULAW_BIAS >> 2;
    let seg = segment(pcm, &ULAW_SEG_END);
    let code = if seg >= 8 {
        0x7F
    } else {
        ((seg as i32) << 4) | ((pcm >> (seg + 1)) & 0x0F)
    };
    ((code ^ mask) & 0xFF) as u8
}

/// Sun/CCITT `ulaw2linear`.
const fn ulaw_decode(byte: u8) -> i16 {
    let u = !byte as i32;
    let mut t = ((u & 0x0F) << 3) + ULAW_BIAS;
    t <<= (u & 0x70) >> 4;
    if u & 0x80 != 0 {
        (ULAW_BIAS - t) as i16
    } else {
        (t - ULAW_BIAS) as i16
    }
}

// --- A-law --------------------------------------------------------------------------------

const ALAW_SEG_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

/// Sun/CCITT `linear2alaw` on a 16-bit sample (top 13 bits are used).
const fn alaw_encode(sample: i16) -> u8 {
    let mut pcm = (sample as i32) >> 3;
    let mask: i32 = if pcm >= 0 {
        0xD5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    let seg = segment(pcm, &ALAW_SEG_END);
    if seg >= 8 {
        return ((0x7F ^ mask) & 0xFF) as u8;
    }
    let mut code = (seg as i32) << 4;
    if seg < 2 {
        code |= (pcm >> 1) & 0x0F;
    } else {
        code |= (pcm >> seg) & 0x0F;
    }
    ((code ^ mask) & 0xFF) as u8
}

/// Sun/CCITT `alaw2linear`.
const fn alaw_decode(byte: u8) -> i16 {
    let a = (byte ^ 0x55) as i32;
    let mut t = (a & 0x0F) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    if a & 0x80 != 0 { t as i16 } else { -t as i16 }
}

// --- tables -------------------------------------------------------------------------------

const fn build_decode_table(alaw: bool) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = if alaw {
            alaw_decode(i as u8)
        } else {
            ulaw_decode(i as u8)
        };
        i += 1;
    }
    table
}

const fn build_transcode_table(from_alaw: bool) -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = if from_alaw {
            ulaw_encode(alaw_decode(i as u8))
        } else {
            alaw_encode(ulaw_decode(i as u8))
        };
        i += 1;
    }
    table
}

static ULAW_DECODE: [i16; 256] = build_decode_table(false);
static ALAW_DECODE: [i16; 256] = build_decode_table(true);
static ULAW_TO_ALAW: [u8; 256] = build_transcode_table(false);
static ALAW_TO_ULAW: [u8; 256] = build_transcode_table(true);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_types_and_names() {
        assert_eq!(Codec::Pcmu.payload_type(), 0);
        assert_eq!(Codec::Pcma.payload_type(), 8);
        assert_eq!(Codec::from_payload_type(0), Some(Codec::Pcmu));
        assert_eq!(Codec::from_payload_type(8), Some(Codec::Pcma));
        assert_eq!(Codec::from_payload_type(18), None);
        assert_eq!(Codec::from_encoding_name("pcmu"), Some(Codec::Pcmu));
        assert_eq!(Codec::from_encoding_name("G729"), None);
    }

    /// Values from the G.711 tables (and every reference decoder): mu-law 0x00/0x80 are the
    /// extremes -32124/+32124, 0xFF and 0x7F are (positive and negative) zero.
    #[test]
    fn ulaw_known_decode_values() {
        let d = |b| Codec::Pcmu.decode_sample(b);
        assert_eq!(d(0x00), -32124);
        assert_eq!(d(0x80), 32124);
        assert_eq!(d(0xFF), 0);
        assert_eq!(d(0x7F), 0);
        assert_eq!(d(0xFE), 8);
        assert_eq!(d(0x7E), -8);
        assert_eq!(d(0xF0), 120);
        assert_eq!(d(0xEF), 132);
        assert_eq!(d(0xDF), 396);
        assert_eq!(d(0x8F), 16764);
        assert_eq!(d(0x0F), -16764);
    }

    #[test]
    fn ulaw_known_encode_values() {
        let e = |s| Codec::Pcmu.encode_sample(s);
        assert_eq!(e(0), 0xFF);
        assert_eq!(e(i16::MAX), 0x80);
        assert_eq!(e(i16::MIN), 0x00);
        assert_eq!(e(32124), 0x80);
        assert_eq!(e(-32124), 0x00);
        assert_eq!(e(8), 0xFE);
        assert_eq!(e(1000), 0xCE);
        assert_eq!(e(-1000), 0x4E);
    }

    /// A-law: 0xD5 / 0x55 are +8 / -8 (the smallest steps), 0xAA / 0x2A the extremes.
    #[test]
    fn alaw_known_values() {
        let d = |b| Codec::Pcma.decode_sample(b);
        assert_eq!(d(0xD5), 8);
        assert_eq!(d(0x55), -8);
        assert_eq!(d(0xAA), 32256);
        assert_eq!(d(0x2A), -32256);
        assert_eq!(d(0xD4), 24);
        assert_eq!(d(0xC5), 264);
        let e = |s| Codec::Pcma.encode_sample(s);
        assert_eq!(e(0), 0xD5);
        assert_eq!(e(-1), 0x55);
        assert_eq!(e(i16::MAX), 0xAA);
        assert_eq!(e(i16::MIN), 0x2A);
        assert_eq!(e(1000), 0xFA);
        assert_eq!(e(-1000), 0x7A);
    }

    /// Decoding then encoding gives back the code for every byte (G.711 is a quantiser:
    /// each code's reconstruction value lies inside its own interval). mu-law 0x7F is
    /// "negative zero" and comes back as 0xFF.
    #[test]
    fn every_code_round_trips() {
        for b in 0..=255u8 {
            let ulaw = Codec::Pcmu.encode_sample(Codec::Pcmu.decode_sample(b));
            if b == 0x7F {
                assert_eq!(ulaw, 0xFF);
            } else {
                assert_eq!(ulaw, b, "mu-law code {b:#04x}");
            }
            let alaw = Codec::Pcma.encode_sample(Codec::Pcma.decode_sample(b));
            assert_eq!(alaw, b, "A-law code {b:#04x}");
        }
    }

    /// Encoding is monotonic and the quantisation error stays within half a step.
    #[test]
    fn pcm_round_trip_error_is_bounded() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let mut last = i16::MIN;
            for s in (i16::MIN..=i16::MAX).step_by(7) {
                let y = codec.decode_sample(codec.encode_sample(s));
                assert!(y >= last, "{codec:?} not monotonic at {s}");
                last = y;
                let err = (i32::from(y) - i32::from(s)).abs();
                // Largest step is 1024 (mu-law) / 1024 (A-law); clipping adds a bit at the ends.
                let bound = (i32::from(s).abs() / 16).max(16) + 700;
                assert!(err <= bound, "{codec:?}: {s} -> {y}");
            }
        }
    }

    #[test]
    fn transcode_matches_decode_encode() {
        let all: Vec<u8> = (0..=255).collect();
        let a = transcode(Codec::Pcmu, Codec::Pcma, &all);
        for (&u, &x) in all.iter().zip(&a) {
            assert_eq!(x, Codec::Pcma.encode_sample(Codec::Pcmu.decode_sample(u)));
        }
        assert_eq!(transcode(Codec::Pcmu, Codec::Pcmu, &all), all);
        // Silence survives transcoding both ways.
        assert_eq!(
            transcode(Codec::Pcmu, Codec::Pcma, &[0xFF]),
            vec![Codec::Pcma.silence_byte()]
        );
        assert_eq!(
            transcode(Codec::Pcma, Codec::Pcmu, &[0xD5]),
            vec![Codec::Pcmu.encode_sample(8)]
        );
    }

    #[test]
    fn buffers() {
        let pcm = [0i16, 100, -100, 30000, -30000];
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let bytes = codec.encode(&pcm);
            assert_eq!(bytes.len(), pcm.len());
            let back = codec.decode(&bytes);
            assert_eq!(back.len(), pcm.len());
        }
    }
    /// Cross-check against sox, an independent G.711 implementation (`-D`: no dither, or sox
    /// adds noise). Every byte is decoded. Encoding is compared on the inputs G.711 really
    /// sees (14-bit for mu-law, 13-bit for A-law): sox rounds 16-bit input to that width
    /// where the reference coder truncates, so between grid points they may differ by one
    /// step. Skipped (with a note) where sox is not installed.
    #[test]
    fn matches_sox_bit_for_bit() {
        use std::process::Command;
        if Command::new("sox").arg("--version").output().is_err() {
            eprintln!("sox not installed: skipping the sox cross-check");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let sox =
            |args: &[&str], input: &std::path::Path, out_args: &[&str], out: &std::path::Path| {
                let status = Command::new("sox")
                    .arg("-D")
                    .args(args)
                    .arg(input)
                    .args(out_args)
                    .arg(out)
                    .status()
                    .expect("sox runs");
                assert!(status.success());
                std::fs::read(out).expect("sox output")
            };
        let s16 = [
            "-t", "raw", "-e", "signed", "-b", "16", "-L", "-r", "8000", "-c", "1",
        ];
        for (codec, enc, step) in [(Codec::Pcmu, "mu-law", 4), (Codec::Pcma, "a-law", 8)] {
            let g711 = ["-t", "raw", "-e", enc, "-b", "8", "-r", "8000", "-c", "1"];
            let pcm: Vec<i16> = (i16::MIN..=i16::MAX).step_by(step).collect();
            let pcm_path = dir.path().join(format!("grid.{enc}.raw"));
            let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
            std::fs::write(&pcm_path, bytes).expect("write");
            let theirs = sox(
                &s16,
                &pcm_path,
                &g711,
                &dir.path().join(format!("grid.{enc}")),
            );
            assert_eq!(
                theirs,
                codec.encode(&pcm),
                "{codec:?} encode differs from sox"
            );

            let codes: Vec<u8> = (0..=255).collect();
            let code_path = dir.path().join(format!("codes.{enc}"));
            std::fs::write(&code_path, &codes).expect("write");
            let raw = sox(
                &g711,
                &code_path,
                &s16,
                &dir.path().join(format!("dec.{enc}.raw")),
            );
            let theirs: Vec<i16> = raw
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            assert_eq!(
                theirs,
                codec.decode(&codes),
                "{codec:?} decode differs from sox"
            );
        }
    }
}
