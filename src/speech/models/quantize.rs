//! Quantized copies of a ggml Whisper model (q8_0, q5_0), written with ggml's own quantizer
//! (`ggml_quantize_chunk`, linked in through whisper-rs-sys) so whisper.cpp reads them exactly
//! as it reads the files its `quantize` example makes:
//!
//! - header `ftype` = `GGML_QNT_VERSION` (2) × 1000 + the ggml file type (7 q8_0, 8 q5_0);
//! - every 2-D tensor is quantized (its rows must be whole blocks of 32), except the conv
//!   biases (stored [d, 1]) and both positional embeddings, which stay f32;
//! - everything else (1-D biases and norms in f32, the 3-D conv weights in f16) is copied.
//!
//! The same input always gives the same bytes (the quantizer has no randomness).

use std::fs;
use std::path::{Path, PathBuf};

use whisper_rs::whisper_rs_sys as sys;

use super::convert::ConvertError;

/// A quantization whisper.cpp's CPU backend runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantization {
    Q8_0,
    Q5_0,
}

impl Quantization {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "q8_0" => Some(Quantization::Q8_0),
            "q5_0" => Some(Quantization::Q5_0),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Quantization::Q8_0 => "q8_0",
            Quantization::Q5_0 => "q5_0",
        }
    }

    /// ggml's tensor type.
    fn ggml_type(self) -> sys::ggml_type {
        match self {
            Quantization::Q8_0 => sys::ggml_type_GGML_TYPE_Q8_0,
            Quantization::Q5_0 => sys::ggml_type_GGML_TYPE_Q5_0,
        }
    }

    /// The header's file type: `GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR` + `ggml_ftype`.
    fn header_ftype(self) -> i32 {
        let ftype = match self {
            Quantization::Q8_0 => 7, // GGML_FTYPE_MOSTLY_Q8_0
            Quantization::Q5_0 => 8, // GGML_FTYPE_MOSTLY_Q5_0
        };
        GGML_QNT_VERSION * 1000 + ftype
    }
}

/// ggml's quantization format version (ggml.h `GGML_QNT_VERSION`).
const GGML_QNT_VERSION: i32 = 2;
/// ggml type codes of unquantized tensors.
const GGML_F32: i32 = 0;
const GGML_F16: i32 = 1;
/// Values per quantization block of q8_0 and q5_0.
const BLOCK: u64 = 32;
/// 2-D tensors that stay f32, as whisper.cpp's loader creates them.
const KEEP: [&str; 4] = [
    "encoder.conv1.bias",
    "encoder.conv2.bias",
    "encoder.positional_embedding",
    "decoder.positional_embedding",
];

/// What [`quantize_ggml`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizeReport {
    pub tensors: usize,
    pub quantized: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Reads the ggml Whisper model at `input` (f16, as `convert-model` writes it) and writes a
/// `q` copy to `output`, atomically.
pub fn quantize_ggml(
    input: &Path,
    output: &Path,
    q: Quantization,
) -> Result<QuantizeReport, ConvertError> {
    let data = fs::read(input).map_err(|source| ConvertError::Read {
        path: input.to_path_buf(),
        source,
    })?;
    let (bytes, report) = quantize_bytes(&data, q).map_err(|e| match e {
        ConvertError::Malformed(m) => ConvertError::Malformed(format!("{}: {m}", input.display())),
        other => other,
    })?;
    super::convert::write_atomically(output, |w| std::io::Write::write_all(w, &bytes))?;
    Ok(QuantizeReport {
        bytes_in: data.len() as u64,
        bytes_out: bytes.len() as u64,
        ..report
    })
}

/// Bounds-checked reading of the input.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], ConvertError> {
        let available = self.data.len() - self.pos;
        let n_usize = usize::try_from(n).ok().filter(|n| *n <= available);
        let Some(n) = n_usize else {
            return Err(ConvertError::Truncated {
                what: what.to_string(),
                offset: self.pos,
                needed: n,
                available,
            });
        };
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn i32(&mut self, what: &str) -> Result<i32, ConvertError> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A count or size: a non-negative i32.
    fn count(&mut self, what: &str) -> Result<u64, ConvertError> {
        let v = self.i32(what)?;
        u64::try_from(v).map_err(|_| ConvertError::Malformed(format!("{what} is negative ({v})")))
    }

    fn done(&self) -> bool {
        self.pos == self.data.len()
    }
}

/// Quantizes a whole ggml Whisper file held in memory.
fn quantize_bytes(data: &[u8], q: Quantization) -> Result<(Vec<u8>, QuantizeReport), ConvertError> {
    let mut r = Reader { data, pos: 0 };
    let mut out = Vec::with_capacity(data.len() / 2);
    let magic = r.take(4, "the magic")?;
    if u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]) != 0x6767_6d6c {
        return Err(ConvertError::Malformed(
            "not a ggml model (bad magic)".into(),
        ));
    }
    out.extend_from_slice(magic);
    // Ten hyper-parameters, then the file type.
    let hparams = r.take(40, "the hyper-parameters")?;
    out.extend_from_slice(hparams);
    let ftype = r.i32("the file type")?;
    if ftype != GGML_F16 && ftype != GGML_F32 {
        return Err(ConvertError::Malformed(format!(
            "file type {ftype}: only f16 or f32 models can be quantized (is it quantized already?)"
        )));
    }
    out.extend_from_slice(&q.header_ftype().to_le_bytes());
    // Mel filters: n_mel, n_fft, then n_mel * n_fft f32.
    let n_mel = r.count("n_mel")?;
    let n_fft = r.count("n_fft")?;
    let filters = r.take(n_mel * n_fft * 4, "the mel filters")?;
    for v in [n_mel, n_fft] {
        out.extend_from_slice(&(v as i32).to_le_bytes());
    }
    out.extend_from_slice(filters);
    // Vocabulary: a count, then (length, bytes) per token.
    let n_vocab = r.count("the vocabulary size")?;
    out.extend_from_slice(&(n_vocab as i32).to_le_bytes());
    for _ in 0..n_vocab {
        let len = r.count("a token length")?;
        let token = r.take(len, "a token")?;
        out.extend_from_slice(&(len as i32).to_le_bytes());
        out.extend_from_slice(token);
    }
    let mut report = QuantizeReport {
        tensors: 0,
        quantized: 0,
        bytes_in: 0,
        bytes_out: 0,
    };
    let mut f32s: Vec<f32> = Vec::new();
    let mut quantized: Vec<u8> = Vec::new();
    while !r.done() {
        let n_dims = r.count("a tensor rank")?;
        if !(1..=4).contains(&n_dims) {
            return Err(ConvertError::Malformed(format!("tensor rank {n_dims}")));
        }
        let name_len = r.count("a tensor name length")?;
        let ttype = r.i32("a tensor type")?;
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(r.count("a tensor dimension")?);
        }
        let name_bytes = r.take(name_len, "a tensor name")?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        let elements = ne
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| ConvertError::Malformed(format!("tensor {name:?} is too large")))?;
        let elem_size = match ttype {
            GGML_F32 => 4,
            GGML_F16 => 2,
            other => {
                return Err(ConvertError::Malformed(format!(
                    "tensor {name:?} has type {other}; only f32 and f16 tensors can be quantized"
                )));
            }
        };
        let raw = r.take(elements * elem_size, "tensor data")?;
        report.tensors += 1;
        let quantize = n_dims == 2 && !KEEP.contains(&name.as_str()) && ne[0] % BLOCK == 0;
        let out_type = if quantize {
            q.ggml_type() as i32
        } else {
            ttype
        };
        out.extend_from_slice(&(n_dims as i32).to_le_bytes());
        out.extend_from_slice(&(name_len as i32).to_le_bytes());
        out.extend_from_slice(&out_type.to_le_bytes());
        for d in &ne {
            out.extend_from_slice(&(*d as i32).to_le_bytes());
        }
        out.extend_from_slice(name_bytes);
        if !quantize {
            out.extend_from_slice(raw);
            continue;
        }
        report.quantized += 1;
        f32s.clear();
        f32s.extend(raw.chunks_exact(elem_size as usize).map(|b| match b {
            [a, b] => super::convert::f16_to_f32(u16::from_le_bytes([*a, *b])),
            [a, b, c, d] => f32::from_le_bytes([*a, *b, *c, *d]),
            _ => 0.0,
        }));
        let (rows, per_row) = (ne[1], ne[0]);
        let too_large = || ConvertError::Malformed(format!("tensor {name:?} is too large"));
        let per_row_i64 = i64::try_from(per_row).map_err(|_| too_large())?;
        let rows_i64 = i64::try_from(rows).map_err(|_| too_large())?;
        // SAFETY: ggml_row_size only computes a size from the type and the row length.
        let row_bytes = unsafe { sys::ggml_row_size(q.ggml_type(), per_row_i64) };
        let size = row_bytes
            .checked_mul(usize::try_from(rows).map_err(|_| too_large())?)
            .ok_or_else(too_large)?;
        quantized.clear();
        quantized.resize(size, 0);
        // SAFETY: `f32s` holds rows * per_row values and `quantized` has room for rows whole
        // quantized rows (ggml_row_size each); per_row is a multiple of the block size, and
        // q8_0 / q5_0 need no importance matrix.
        let written = unsafe {
            sys::ggml_quantize_chunk(
                q.ggml_type(),
                f32s.as_ptr(),
                quantized.as_mut_ptr().cast(),
                0,
                rows_i64,
                per_row_i64,
                std::ptr::null(),
            )
        };
        if written != size {
            return Err(ConvertError::Malformed(format!(
                "ggml wrote {written} bytes for tensor {name:?}, expected {size}"
            )));
        }
        out.extend_from_slice(&quantized);
    }
    Ok((out, report))
}

/// Where a quantized copy of `model` goes by default: `ggml-tiny.en.bin` →
/// `ggml-tiny.en-q8_0.bin`.
pub fn quantized_path(model: &Path, q: Quantization) -> PathBuf {
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    model.with_file_name(format!("{stem}-{}.bin", q.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny ggml Whisper-shaped file: header, filters, a vocabulary, and one tensor of each
    /// kind the rules treat differently.
    fn synthetic() -> Vec<u8> {
        let mut v = Vec::new();
        let i = |v: &mut Vec<u8>, x: i32| v.extend_from_slice(&x.to_le_bytes());
        v.extend_from_slice(&0x6767_6d6cu32.to_le_bytes());
        for x in [51864, 1500, 64, 1, 1, 448, 64, 1, 1, 80] {
            i(&mut v, x);
        }
        i(&mut v, 1);
        i(&mut v, 2); // n_mel
        i(&mut v, 3); // n_fft
        for k in 0..6 {
            v.extend_from_slice(&(k as f32).to_le_bytes());
        }
        i(&mut v, 2);
        for t in [b"ab".as_slice(), b"c"] {
            i(&mut v, t.len() as i32);
            v.extend_from_slice(t);
        }
        let tensor = |v: &mut Vec<u8>, name: &str, ne: &[i32], ttype: i32| {
            i(v, ne.len() as i32);
            i(v, name.len() as i32);
            i(v, ttype);
            for d in ne {
                i(v, *d);
            }
            v.extend_from_slice(name.as_bytes());
            let n: i32 = ne.iter().product();
            for k in 0..n {
                let x = ((k % 17) as f32 - 8.0) / 8.0;
                if ttype == GGML_F32 {
                    v.extend_from_slice(&x.to_le_bytes());
                } else {
                    v.extend_from_slice(&super::super::convert::f32_to_f16(x).to_le_bytes());
                }
            }
        };
        tensor(&mut v, "decoder.blocks.0.mlp.0.weight", &[64, 4], GGML_F16);
        tensor(&mut v, "decoder.blocks.0.mlp.0.bias", &[4], GGML_F32);
        tensor(&mut v, "encoder.conv1.weight", &[3, 2, 64], GGML_F16);
        tensor(&mut v, "encoder.conv1.bias", &[1, 64], GGML_F32);
        tensor(&mut v, "decoder.positional_embedding", &[64, 2], GGML_F32);
        v
    }

    /// (name, type, data bytes) of every tensor in a ggml file `data`, and the header ftype.
    fn tensors(data: &[u8]) -> (i32, Vec<(String, i32, usize)>) {
        let mut r = Reader { data, pos: 0 };
        r.take(44, "header").expect("header");
        let ftype = r.i32("ftype").expect("ftype");
        let (m, f) = (r.count("m").expect("m"), r.count("f").expect("f"));
        r.take(m * f * 4, "filters").expect("filters");
        for _ in 0..r.count("vocab").expect("vocab") {
            let len = r.count("len").expect("len");
            r.take(len, "token").expect("token");
        }
        let mut out = Vec::new();
        while !r.done() {
            let n = r.count("rank").expect("rank");
            let len = r.count("name").expect("name");
            let t = r.i32("type").expect("type");
            let ne: Vec<u64> = (0..n).map(|_| r.count("dim").expect("dim")).collect();
            let name = String::from_utf8(r.take(len, "n").expect("n").to_vec()).expect("utf8");
            let elements: u64 = ne.iter().product();
            let bytes = match t {
                GGML_F32 => elements * 4,
                GGML_F16 => elements * 2,
                // SAFETY: a size computation only.
                q => {
                    (unsafe { sys::ggml_row_size(q as sys::ggml_type, ne[0] as i64) }) as u64
                        * ne[1]
                }
            };
            r.take(bytes, "data").expect("data");
            out.push((name, t, bytes as usize));
        }
        (ftype, out)
    }

    #[test]
    fn quantizes_2d_weights_only_and_marks_the_header_as_whisper_cpp_does() {
        let input = synthetic();
        for (q, ftype, code, block_bytes) in [
            (Quantization::Q8_0, 2007, 8, 34),
            (Quantization::Q5_0, 2008, 6, 22),
        ] {
            let (out, report) = quantize_bytes(&input, q).expect("quantize");
            assert_eq!((report.tensors, report.quantized), (5, 1));
            let (header, tensors) = tensors(&out);
            assert_eq!(header, ftype);
            let types: Vec<i32> = tensors.iter().map(|t| t.1).collect();
            assert_eq!(types, [code, GGML_F32, GGML_F16, GGML_F32, GGML_F32]);
            // 4 rows of 64 values: 2 blocks of 32 per row.
            assert_eq!(tensors[0].2, 4 * 2 * block_bytes);
            // The same input gives the same bytes.
            assert_eq!(quantize_bytes(&input, q).expect("again").0, out);
            // A quantized model is not quantized again.
            assert!(quantize_bytes(&out, q).is_err());
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let input = synthetic();
        for cut in (0..input.len()).step_by(7) {
            assert!(
                quantize_bytes(&input[..cut], Quantization::Q8_0).is_err(),
                "cut {cut}"
            );
        }
        assert!(quantize_bytes(b"nope", Quantization::Q8_0).is_err());
    }

    #[test]
    fn names_the_quantized_copy_after_the_model() {
        assert_eq!(
            quantized_path(Path::new("models/ggml-tiny.en.bin"), Quantization::Q8_0),
            Path::new("models/ggml-tiny.en-q8_0.bin")
        );
        assert_eq!(Quantization::parse("q5_0"), Some(Quantization::Q5_0));
        assert_eq!(Quantization::parse("q4_0"), None);
    }

    /// whisper.cpp loads the quantized tiny.en and still hears the caller.
    #[test]
    fn whisper_loads_and_transcribes_the_quantized_model() {
        use crate::speech::{DecodeOptions, EngineOptions, Transcriber, WhisperEngine};
        let model = crate::speech::models::model_path(None);
        if !model.is_file() {
            return;
        }
        let Some(audio) =
            crate::speech::testutil::phone_speech("I want to talk to a human", "en-us", 165)
        else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("q.bin");
        let report = quantize_ggml(&model, &out, Quantization::Q8_0).expect("quantize");
        assert!(report.bytes_out < report.bytes_in * 6 / 10, "{report:?}");
        let engine = WhisperEngine::load(&out, EngineOptions::default()).expect("load");
        let text = engine
            .transcribe(&audio, &DecodeOptions::default())
            .expect("transcribe");
        assert!(text.to_lowercase().contains("human"), "{text:?}");
    }
}
