//! `humanline bench`: the arguments. The measuring is in [`crate::bench`].

use crate::bench;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Debug, clap::Subcommand)]
enum BenchWhat {
    /// Speech: decode time, time to route after the end of speech, escape recall and false
    /// escapes, repetition, word error rate, and concurrent-caller capacity.
    Speech {
        /// Corpus folder with manifest.tsv: synthetic (scripts/gen-speech-corpus.py, English
        /// or --language nl) or real recorded voices (scripts/gen-real-corpus.py). Repeat for
        /// several; figures are reported per language and corpus kind.
        #[arg(long, default_value = "bench/corpus")]
        corpus: Vec<PathBuf>,
        /// Only utterances in this language.
        #[arg(long)]
        language: Option<String>,
        /// Which utterances of a real corpus: its report speakers (the default; never tuned
        /// on), its tune speakers, or all.
        #[arg(long, default_value = "report")]
        split: bench::speech::Split,
        /// One model for every language; default each language's own (`[speech] model`).
        #[arg(long)]
        model: Option<PathBuf>,
        /// The humanline setup without partials: its live decode of each utterance only (as
        /// `humanline transcribe`), for word error rates at a fraction of the time.
        #[arg(long)]
        finals_only: bool,
        /// Decode settings to try in the humanline setup: a JSON object of DecodeOptions
        /// fields over its defaults, e.g. '{"no_repeat_ngram":0}'.
        #[arg(long)]
        decode_options: Option<String>,
        /// Where to write the figures (JSON).
        #[arg(long, default_value = "bench/results/speech.json")]
        out: PathBuf,
        /// Where to save every timed transcript, for `bench rescore` (default: next to --out,
        /// `.transcripts.json`).
        #[arg(long)]
        transcripts: Option<PathBuf>,
        /// Use every Nth utterance only (quick runs).
        #[arg(long, default_value_t = 1)]
        every: usize,
        /// Run only these setups (comma-separated: humanline, baseline; none: capacity only).
        #[arg(long, value_delimiter = ',')]
        setups: Vec<String>,
        /// Only these voices or speakers (comma-separated, after --every): voices never used
        /// for tuning, measured apart.
        #[arg(long, value_delimiter = ',')]
        voices: Vec<String>,
        /// Also report recall and false escapes on this voice alone, and on the others: a voice
        /// not used for tuning shows whether the lexicon was fitted to the corpus.
        #[arg(long)]
        holdout_voice: Option<String>,
        /// Skip the concurrent-caller capacity search.
        #[arg(long)]
        no_capacity: bool,
        /// Seconds of each capacity run.
        #[arg(long, default_value_t = 30)]
        capacity_secs: u64,
        /// Decoder workers in the capacity search's shared pool.
        #[arg(long, default_value_t = 2)]
        capacity_workers: usize,
        /// Numbers of callers the capacity search tries, in order.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,6,8,10,12")]
        capacity_callers: Vec<usize>,
        /// Threads per decode (the setups' decodes and the capacity search's).
        #[arg(long, default_value_t = 1)]
        decode_threads: usize,
    },
    /// Scores saved transcripts (`bench speech --transcripts`) again with the current prompts,
    /// without decoding: for trying escape lexicons, brain rules and verifier thresholds (the
    /// saved verdicts are held to the prompts' thresholds). Decode times are those of the
    /// original run.
    Rescore {
        /// Transcripts written by `bench speech`.
        transcripts: PathBuf,
        /// Prompts folder (default: ./prompts if present, else the embedded prompts).
        #[arg(long)]
        prompts: Option<PathBuf>,
        /// Where to write the figures (JSON); printed only when absent.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        holdout_voice: Option<String>,
    },
    /// The keyword verifier against the text matcher on the same decodes: recall, false
    /// escapes and added time, with the escape threshold calibrated on the tuning voices.
    Verifier {
        /// Corpus folder with manifest.tsv: synthetic (scripts/gen-speech-corpus.py) or real
        /// recorded voices (scripts/gen-real-corpus.py, whose tune split counts as tuning).
        #[arg(long, default_value = "bench/corpus")]
        corpus: PathBuf,
        /// The language heard (its phrases, thresholds, model and prompt come from the
        /// prompts); only the corpus's utterances in it are used.
        #[arg(long, default_value = "en")]
        language: String,
        /// One model; default the language's own (`[speech] model`).
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        prompts: Option<PathBuf>,
        /// Voices that set the threshold (comma-separated); the others are held out.
        #[arg(long, value_delimiter = ',')]
        tune_voices: Vec<String>,
        #[arg(long, default_value_t = 1)]
        every: usize,
        /// Threads per decode.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Initial prompt instead of the live default ("" for none).
        #[arg(long)]
        prompt: Option<String>,
        #[arg(long, default_value = "bench/results/verifier.json")]
        out: PathBuf,
        /// Skip the plain decode of each utterance (half the time; no added-time figure):
        /// the verified decode's transcript is the same text.
        #[arg(long)]
        no_plain: bool,
    },
    /// Callbacks: commit latency of a promise with fsync (and without, as the baseline),
    /// under concurrent committers, and the dialer's claim among many pending promises.
    Callbacks(CallbacksArgs),
}

#[derive(Debug, clap::Args)]
pub struct CallbacksArgs {
    /// Promises committed one after another, per durability setting.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Concurrent committers, each with its own connection (as tasks or nodes would be).
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Pending promises in the ledger while the dialer's claim is timed.
    #[arg(long, default_value_t = 10_000)]
    pending: usize,
    /// Folder for the benchmark databases; it must be on a real disk, since fsync is what is
    /// measured [default: bench/tmp-callbacks, removed afterwards].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where to write the figures (JSON).
    #[arg(long, default_value = "bench/results/callbacks.json")]
    out: PathBuf,
    /// Only write a ledger at DB holding `--pending` overdue promises (the oldest first in
    /// line), then exit.
    #[arg(long, value_name = "DB")]
    seed: Option<PathBuf>,
    /// Also time the commits on this PostgreSQL database, beside SQLite
    /// ("postgres://user@host:port/database").
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchWhat::Callbacks(a) => bench::callbacks::run(bench::callbacks::CallbacksBench {
            count: a.count,
            writers: a.writers,
            pending: a.pending,
            dir: a.dir,
            out: a.out,
            seed: a.seed,
            postgres: a.postgres,
        }),
        BenchWhat::Verifier {
            corpus,
            language,
            model,
            prompts,
            tune_voices,
            every,
            threads,
            prompt,
            out,
            no_plain,
        } => bench::verifier::run(bench::verifier::VerifierRun {
            corpus,
            language,
            model,
            prompts,
            tune_voices,
            every,
            threads,
            prompt,
            out,
            no_plain,
        }),
        BenchWhat::Speech {
            corpus,
            language,
            split,
            model,
            finals_only,
            decode_options,
            out,
            transcripts,
            every,
            setups,
            voices,
            holdout_voice,
            no_capacity,
            capacity_secs,
            capacity_workers,
            capacity_callers,
            decode_threads,
        } => bench::speech::speech(bench::speech::SpeechRun {
            corpora: corpus,
            language,
            split,
            model,
            finals_only,
            decode_overrides: decode_options,
            transcripts: transcripts.unwrap_or_else(|| out.with_extension("transcripts.json")),
            out,
            every,
            setups,
            voices,
            holdout_voice,
            no_capacity,
            capacity: bench::speech::CapacityRun {
                secs: capacity_secs,
                workers: capacity_workers.max(1),
                threads: decode_threads.max(1),
                callers: capacity_callers,
            },
            threads: decode_threads.max(1),
        }),
        BenchWhat::Rescore {
            transcripts,
            prompts,
            out,
            holdout_voice,
        } => bench::speech::rescore(
            &transcripts,
            prompts.as_deref(),
            out.as_deref(),
            holdout_voice.as_deref(),
        ),
    }
}
