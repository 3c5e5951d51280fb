//! `humanline bench speech`: how fast and how well Humanline hears a caller ask for a person,
//! side by side with the naive baseline (Whisper's full 30 s window, decoded once at the end of
//! speech), on the phone-band corpus `scripts/gen-speech-corpus.py` makes.

use super::caller_turn::{Decoding, load_engine, model_path, run_turn, speech_end_ms};
use crate::brain::{Action, CallBrain, Event, Phase, RouteReason};
use crate::config::Flow;
use crate::escape::{EscapeDetector, normalize};
use crate::speech::{
    DecodeOptions, DecodeResult, DecoderPool, PoolConfig, RecognizerConfig, RecognizerOutput,
    StreamingRecognizer, Transcriber, load_wav_mono_16k,
};
use anyhow::Context;
use serde_json::json;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
        /// Corpus folder with manifest.tsv (scripts/gen-speech-corpus.py).
        #[arg(long, default_value = "bench/corpus")]
        corpus: PathBuf,
        #[arg(long)]
        model: Option<PathBuf>,
        /// Where to write the figures (JSON).
        #[arg(long, default_value = "bench/results/speech.json")]
        out: PathBuf,
        /// Use every Nth utterance only (quick runs).
        #[arg(long, default_value_t = 1)]
        every: usize,
        /// Skip the concurrent-caller capacity search.
        #[arg(long)]
        no_capacity: bool,
        /// Seconds of each capacity run.
        #[arg(long, default_value_t = 30)]
        capacity_secs: u64,
    },
    /// Callbacks: commit latency of a promise with fsync (and without, as the baseline),
    /// under concurrent committers, and the dialer's claim among many pending promises.
    Callbacks(super::bench_callbacks::CallbacksBenchArgs),
}

struct Utterance {
    id: String,
    kind: String,
    voice: String,
    text: String,
    audio: Vec<f32>,
}

fn load_corpus(dir: &Path, every: usize) -> anyhow::Result<Vec<Utterance>> {
    let manifest = dir.join("manifest.tsv");
    let text = std::fs::read_to_string(&manifest).with_context(|| {
        format!(
            "reading {} (make it with scripts/gen-speech-corpus.py)",
            manifest.display()
        )
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().skip(1).enumerate() {
        if i % every.max(1) != 0 {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let [id, kind, voice, _rate, sentence] = f[..] else {
            anyhow::bail!(
                "{}:{}: expected 5 tab-separated fields",
                manifest.display(),
                i + 2
            )
        };
        let audio = load_wav_mono_16k(dir.join(format!("{id}.wav")))?;
        out.push(Utterance {
            id: id.into(),
            kind: kind.into(),
            voice: voice.into(),
            text: sentence.into(),
            audio,
        });
    }
    Ok(out)
}

/// One configuration under test.
struct Setup {
    name: &'static str,
    opts: DecodeOptions,
    recognizer: RecognizerConfig,
}

fn setups() -> Vec<Setup> {
    vec![
        Setup {
            name: "baseline",
            opts: DecodeOptions::full_window(),
            recognizer: RecognizerConfig {
                partial_interval_ms: 0,
                ..RecognizerConfig::default()
            },
        },
        Setup {
            name: "humanline",
            opts: DecodeOptions::default().with_escape_prompt(),
            recognizer: RecognizerConfig::default(),
        },
    ]
}

/// A caller at the question, hearing nothing else: the brain as a live call has it.
fn listening_brain(flow: &Arc<Flow>, t0: Instant) -> CallBrain {
    let mut brain = CallBrain::new(flow.clone());
    let actions = brain.handle(
        t0,
        Event::CallStarted {
            caller_id: Some("+15550100".into()),
            language: None,
        },
    );
    if let Some(Action::Play { play, .. }) =
        actions.iter().find(|a| matches!(a, Action::Play { .. }))
    {
        brain.handle(t0, Event::PromptFinished { play: *play });
    }
    brain
}

#[derive(Default)]
struct TurnResult {
    route: Option<(RouteReason, i64)>,
    finals: Vec<String>,
    final_decode_ms: Vec<u64>,
    partial_decode_ms: Vec<u64>,
}

/// Runs turns of one call through the brain; the route (reason, ms after the end of the
/// speech of the turn it happened in) is recorded, and every turn still runs to its final.
fn run_call(
    flow: &Arc<Flow>,
    turns: &[&Utterance],
    engine: &dyn Transcriber,
    setup: &Setup,
) -> anyhow::Result<TurnResult> {
    let t0 = Instant::now();
    let mut brain = listening_brain(flow, t0);
    let mut result = TurnResult::default();
    let mut turn_start = 0u64;
    for u in turns {
        let end = turn_start + speech_end_ms(&u.audio);
        let decoding = Decoding::Fast {
            engine,
            opts: &setup.opts,
        };
        let stats = run_turn(
            &u.audio,
            1,
            setup.recognizer.clone(),
            decoding,
            |at, event| {
                let now = turn_start + at;
                let actions = brain.handle(t0 + Duration::from_millis(now), event);
                if let Some(Action::RouteToAgent { reason, .. }) = actions.first() {
                    result
                        .route
                        .get_or_insert((*reason, now as i64 - end as i64));
                }
                ControlFlow::Continue(())
            },
        )?;
        result
            .finals
            .extend(stats.finals.iter().filter(|f| !f.is_empty()).cloned());
        result.final_decode_ms.extend(stats.final_decode_ms);
        result.partial_decode_ms.extend(stats.partial_decode_ms);
        // The next turn starts after this one's audio and a prompt.
        turn_start += (u.audio.len() as u64 * 1000 / 16_000) + 4_000;
        if brain.phase() != Phase::Ivr {
            break;
        }
    }
    Ok(result)
}

fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (p / 100.0 * (v.len() - 1) as f64).round() as usize;
    v.get(rank).copied()
}

fn summary(values: &[f64]) -> serde_json::Value {
    json!({"n": values.len(), "median": percentile(values, 50.0), "p95": percentile(values, 95.0),
        "max": values.iter().copied().reduce(f64::max)})
}

/// Word error rate of a hypothesis against a reference, on normalised words.
pub fn word_errors(reference: &str, hypothesis: &str) -> (usize, usize) {
    let r = normalize::words(reference);
    let h = normalize::words(hypothesis);
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(rw != hw))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    (prev[h.len()], r.len())
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (corpus, model, out, every, no_capacity, capacity_secs) = match args.what {
        BenchWhat::Callbacks(args) => return super::bench_callbacks::run(args),
        BenchWhat::Speech {
            corpus,
            model,
            out,
            every,
            no_capacity,
            capacity_secs,
        } => (corpus, model, out, every, no_capacity, capacity_secs),
    };
    let flow = Arc::new(super::load_flow(None)?);
    let corpus = load_corpus(&corpus, every)?;
    let engine = load_engine(&model_path(model.as_deref()))?;
    let escapes: Vec<&Utterance> = corpus.iter().filter(|u| u.kind == "escape").collect();
    let ordinary: Vec<&Utterance> = corpus.iter().filter(|u| u.kind == "ordinary").collect();
    eprintln!(
        "bench speech: {} escape and {} ordinary utterances, model {}",
        escapes.len(),
        ordinary.len(),
        engine.path().display()
    );
    let mut report = serde_json::Map::new();
    report.insert(
        "corpus".into(),
        json!({"escape": escapes.len(), "ordinary": ordinary.len(),
        "channel": "espeak-ng voices, 300-3400 Hz, mu-law 8 kHz"}),
    );
    report.insert(
        "machine".into(),
        json!({"cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "loadavg_at_start": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()}),
    );
    for setup in setups() {
        let started = Instant::now();
        let (mut route_ms, mut final_ms, mut partial_ms) = (vec![], vec![], vec![]);
        let (mut recalled, mut false_escapes, mut word_err, mut words) =
            (0usize, 0usize, 0usize, 0usize);
        let mut misses = Vec::new();
        for (i, u) in corpus.iter().enumerate() {
            let r = run_call(&flow, &[u], &*engine, &setup)?;
            final_ms.extend(r.final_decode_ms.iter().map(|&v| v as f64));
            partial_ms.extend(r.partial_decode_ms.iter().map(|&v| v as f64));
            let (e, n) = word_errors(&u.text, &r.finals.join(" "));
            word_err += e;
            words += n;
            let keyword = matches!(r.route, Some((RouteReason::Keyword, _)));
            if u.kind == "escape" {
                if let Some((RouteReason::Keyword, after)) = r.route {
                    recalled += 1;
                    route_ms.push(after as f64);
                } else {
                    misses.push(json!({"id": u.id, "heard": r.finals.join(" ")}));
                }
            } else if keyword {
                false_escapes += 1;
                misses.push(json!({"id": u.id, "false_escape": r.finals.join(" ")}));
            }
            if i % 40 == 39 {
                eprintln!("  {}: {}/{}", setup.name, i + 1, corpus.len());
            }
        }
        // Repetition: the same request by two voices in a row should route; two different
        // requests should not.
        let (mut rep_hit, mut rep_pairs, mut rep_false, mut diff_pairs) = (0, 0, 0, 0);
        for (i, a) in ordinary.iter().enumerate() {
            if let Some(b) = ordinary
                .iter()
                .find(|b| b.text == a.text && b.voice != a.voice)
                && i % 2 == 0
            {
                {
                    rep_pairs += 1;
                    let r = run_call(&flow, &[a, b], &*engine, &setup)?;
                    rep_hit += usize::from(matches!(r.route, Some((RouteReason::Repetition, _))));
                }
            }
            if let Some(c) = ordinary
                .get(i + 7)
                .filter(|c| c.text != a.text && i % 4 == 0)
            {
                diff_pairs += 1;
                let r = run_call(&flow, &[a, c], &*engine, &setup)?;
                rep_false += usize::from(matches!(r.route, Some((RouteReason::Repetition, _))));
            }
        }
        let figures = json!({
            "decode_ms_final": summary(&final_ms),
            "decode_ms_partial": summary(&partial_ms),
            "route_after_speech_end_ms": summary(&route_ms),
            "escape_recall": recalled as f64 / escapes.len().max(1) as f64,
            "false_escape_rate": false_escapes as f64 / ordinary.len().max(1) as f64,
            "repetition_detected": format!("{rep_hit}/{rep_pairs}"),
            "repetition_false": format!("{rep_false}/{diff_pairs}"),
            "word_error_rate": word_err as f64 / words.max(1) as f64,
            "misses": misses,
            "wall_s": started.elapsed().as_secs(),
        });
        eprintln!("{}: {}", setup.name, figures);
        report.insert(setup.name.into(), figures);
    }
    if !no_capacity {
        report.insert(
            "capacity".into(),
            capacity(&engine, &flow.escape, &corpus, capacity_secs)?,
        );
    }
    report.insert(
        "loadavg_at_end".into(),
        json!(
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        ),
    );
    report.insert(
        "command".into(),
        json!(std::env::args().collect::<Vec<_>>().join(" ")),
    );
    let report = serde_json::Value::Object(report);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!("bench speech: written to {}", out.display());
    Ok(())
}

/// How many callers speaking at once (each ~30% of the time) the machine serves before the
/// time to decide on an escape passes 300 ms at p95. Each caller is a real-time stream of
/// silence and corpus utterances; all share one decoder pool.
fn capacity(
    engine: &Arc<crate::speech::WhisperEngine>,
    escape: &EscapeDetector,
    corpus: &[Utterance],
    secs: u64,
) -> anyhow::Result<serde_json::Value> {
    let mut runs = Vec::new();
    let mut best = 0;
    for callers in [1usize, 2, 3, 4, 6, 8, 12] {
        let cfg = PoolConfig {
            workers: 2,
            decode: DecodeOptions::default().with_escape_prompt(),
            ..PoolConfig::default()
        };
        let pool = Arc::new(DecoderPool::new(engine.clone(), cfg)?);
        let mut handles = Vec::new();
        for c in 0..callers {
            let pool = pool.clone();
            let escape = escape.clone();
            // Each caller: an utterance, then silence twice its length (30% talking), repeated.
            let mut stream = Vec::new();
            let mut ends = Vec::new();
            let mut k = c * 7;
            while stream.len() < secs as usize * 16_000 {
                let u = &corpus[k % corpus.len()];
                k += 3;
                let offset = stream.len();
                stream.extend_from_slice(&u.audio);
                ends.push((
                    offset as u64 * 1000 / 16_000,
                    offset as u64 * 1000 / 16_000 + speech_end_ms(&u.audio),
                    u.kind == "escape",
                ));
                stream.extend(std::iter::repeat_n(0.0f32, u.audio.len() * 2));
            }
            handles.push(std::thread::spawn(move || {
                stream_caller(c as u64, &stream, &ends, &pool, &escape)
            }));
        }
        let mut lat = Vec::new();
        let mut missed = 0;
        for h in handles {
            let (l, m) = h
                .join()
                .map_err(|_| anyhow::anyhow!("caller thread panicked"))??;
            lat.extend(l);
            missed += m;
        }
        let p95 = percentile(&lat, 95.0);
        let run = json!({"callers": callers, "decided": lat.len(), "missed": missed,
            "decide_after_speech_end_ms": summary(&lat), "pool": pool.stats()});
        eprintln!("capacity: {run}");
        runs.push(run);
        if p95.is_some_and(|p| p <= 300.0) {
            best = callers;
        } else {
            break;
        }
    }
    Ok(json!({"max_callers_p95_within_300ms": best, "runs": runs, "talk_fraction": 0.33}))
}

/// One real-time caller: returns, for each escape utterance, the decision time after its
/// speech end (ms), and how many were never decided.
fn stream_caller(
    id: u64,
    audio: &[f32],
    utterances: &[(u64, u64, bool)],
    pool: &DecoderPool,
    escape: &EscapeDetector,
) -> anyhow::Result<(Vec<f64>, usize)> {
    let mut rec = StreamingRecognizer::new(id, RecognizerConfig::default())?;
    let (tx, rx) = std::sync::mpsc::channel::<DecodeResult>();
    let start = Instant::now();
    let mut decided = vec![false; utterances.len()];
    let mut lat = Vec::new();
    for (step, frame) in audio.chunks(320).enumerate() {
        let t = step as u64 * 20;
        if let Some(wait) =
            (start + Duration::from_millis(t)).checked_duration_since(Instant::now())
        {
            std::thread::sleep(wait);
        }
        rec.push_audio(frame);
        for r in rx.try_iter() {
            rec.on_result(&r);
        }
        while let Some(out) = rec.poll_output() {
            let text = match out {
                RecognizerOutput::Decode(job) => {
                    let tx = tx.clone();
                    let _ = pool.submit(job, move |r| {
                        let _ = tx.send(r);
                    });
                    continue;
                }
                RecognizerOutput::Partial { text, .. } | RecognizerOutput::Final { text, .. } => {
                    text
                }
                _ => continue,
            };
            let now = start.elapsed().as_millis() as u64;
            if escape.detect(&text).is_some() {
                // Attribute to the latest utterance that has started and is undecided.
                if let Some(i) = utterances.iter().rposition(|(s, _, _)| *s <= now)
                    && !decided[i]
                    && utterances[i].2
                {
                    decided[i] = true;
                    lat.push(now as f64 - utterances[i].1 as f64);
                }
            }
        }
    }
    let missed = utterances
        .iter()
        .zip(&decided)
        .filter(|((_, end, esc), d)| *esc && !**d && *end + 2000 < audio.len() as u64 / 16)
        .count();
    Ok((lat, missed))
}
