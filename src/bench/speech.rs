//! `humanline bench speech`: how fast and how well Humanline hears a caller ask for a person,
//! side by side with the naive baseline (Whisper's full 30 s window, decoded once at the end of
//! speech), on the phone-band corpora: synthetic voices (`scripts/gen-speech-corpus.py`,
//! English and `--language nl`) and real recorded people (`scripts/gen-real-corpus.py`). Every
//! figure is reported per language and per corpus kind (synthetic, real).

use super::{loadavg, percentile, summary, word_errors, write_json, written_twice};
use crate::brain::trial::{HeardEvent, listening_brain};
use crate::brain::{Action, Event, Phase, RouteReason};
use crate::config::Flow;
use crate::escape::EscapeDetector;
use crate::server::caller_turn::{Decoding, load_languages, run_turn, speech_end_ms};
use crate::speech::{
    DecodeOptions, DecodeResult, DecoderPool, LanguageEngines, PoolConfig, RecognitionWatch,
    RecognizerConfig, RecognizerOutput, StreamingRecognizer, Transcriber, load_wav_mono_16k, watch,
};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What kind of voices a corpus holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoiceKind {
    /// espeak-ng voices (`scripts/gen-speech-corpus.py`).
    Synthetic,
    /// Recorded people (`scripts/gen-real-corpus.py`).
    Real,
}

impl VoiceKind {
    fn as_str(self) -> &'static str {
        match self {
            VoiceKind::Synthetic => "synthetic",
            VoiceKind::Real => "real",
        }
    }
}

/// Which utterances of a real corpus to use: its speakers are split once, in the corpus
/// script, into those settings may be tuned on and those figures are reported on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Tune,
    Report,
    All,
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tune" => Ok(Split::Tune),
            "report" => Ok(Split::Report),
            "all" => Ok(Split::All),
            _ => Err(format!("`{s}`: expected tune, report or all")),
        }
    }
}

pub(crate) struct Utterance {
    pub id: String,
    /// "escape" or "ordinary".
    pub kind: String,
    pub voice: String,
    pub text: String,
    pub language: String,
    pub voices: VoiceKind,
    /// The text has an escape word without asking for a person ("for an operator, press
    /// zero"): a caller saying it is rightly routed, so it is counted apart.
    pub mentions_escape_word: bool,
    /// In a real corpus's tune split (settings may be chosen on it); synthetic corpora have
    /// no split (tuning there is by voice).
    pub tune_split: bool,
    pub audio: Vec<f32>,
}

/// Reads a corpus folder's manifest.tsv, whichever script wrote it (told by its header):
/// synthetic `id kind voice rate text` (the language from the voice: nl* is Dutch), or real
/// `id language kind speaker split is_escape mentions_escape_word text`. Keeps every
/// `every`th line, then only `language` (when given) and, for a real corpus, `split`.
pub(crate) fn load_corpus(
    dir: &Path,
    every: usize,
    language: Option<&str>,
    split: Split,
) -> anyhow::Result<Vec<Utterance>> {
    let manifest = dir.join("manifest.tsv");
    let text = std::fs::read_to_string(&manifest).with_context(|| {
        format!(
            "reading {} (make it with scripts/gen-speech-corpus.py or scripts/gen-real-corpus.py)",
            manifest.display()
        )
    })?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    let real = header.get(1) == Some(&"language");
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        if i % every.max(1) != 0 {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let bad = || {
            anyhow::anyhow!(
                "{}:{}: expected {} tab-separated fields",
                manifest.display(),
                i + 2,
                header.len()
            )
        };
        let (id, kind, voice, lang, text, mentions, in_split, tune_split) = if real {
            let [id, lang, _kind, speaker, sp, is_escape, mentions, sentence] = f[..] else {
                return Err(bad());
            };
            let kind = if is_escape == "1" {
                "escape"
            } else {
                "ordinary"
            };
            let in_split = match split {
                Split::All => true,
                Split::Tune => sp == "tune",
                Split::Report => sp == "report",
            };
            let tune = sp == "tune";
            (
                id,
                kind,
                speaker,
                lang,
                sentence,
                mentions == "1",
                in_split,
                tune,
            )
        } else {
            let [id, kind, voice, _rate, sentence] = f[..] else {
                return Err(bad());
            };
            let lang = if voice.starts_with("nl") { "nl" } else { "en" };
            (id, kind, voice, lang, sentence, false, true, false)
        };
        if !in_split || language.is_some_and(|l| l != lang) {
            continue;
        }
        let audio = load_wav_mono_16k(dir.join(format!("{id}.wav")))?;
        out.push(Utterance {
            id: id.into(),
            kind: kind.into(),
            voice: voice.into(),
            text: text.into(),
            language: lang.into(),
            voices: if real {
                VoiceKind::Real
            } else {
                VoiceKind::Synthetic
            },
            mentions_escape_word: mentions,
            tune_split,
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

/// One utterance as decoded by one setup: everything needed to score it again.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Recording {
    id: String,
    kind: String,
    voice: String,
    text: String,
    #[serde(default = "english")]
    language: String,
    #[serde(default = "synthetic")]
    voices: VoiceKind,
    #[serde(default)]
    mentions_escape_word: bool,
    /// End of speech in the recording, and its length (ms).
    end_ms: u64,
    len_ms: u64,
    events: Vec<HeardEvent>,
    final_decode_ms: Vec<u64>,
    partial_decode_ms: Vec<u64>,
}

/// Transcripts saved before the real corpus existed are English espeak-ng.
fn english() -> String {
    "en".into()
}

fn synthetic() -> VoiceKind {
    VoiceKind::Synthetic
}

impl Recording {
    fn finals(&self) -> Vec<&str> {
        self.events
            .iter()
            .filter_map(|h| match h {
                HeardEvent::Final { text, .. } if !text.is_empty() => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// Decodes one utterance the way a live call does (see `caller_turn`). A new recognizer per
/// turn, so a turn heard after another is heard exactly as it is alone.
fn record(u: &Utterance, engine: &dyn Transcriber, setup: &Setup) -> anyhow::Result<Recording> {
    let mut events = Vec::new();
    let decoding = Decoding::Fast {
        engine,
        opts: &setup.opts,
    };
    let stats = run_turn(
        &u.audio,
        1,
        Some(&u.language),
        setup.recognizer.clone(),
        decoding,
        |at, e| {
            events.extend(HeardEvent::from_event(at, e));
            ControlFlow::Continue(())
        },
    )?;
    Ok(Recording {
        id: u.id.clone(),
        kind: u.kind.clone(),
        voice: u.voice.clone(),
        text: u.text.clone(),
        language: u.language.clone(),
        voices: u.voices,
        mentions_escape_word: u.mentions_escape_word,
        end_ms: speech_end_ms(&u.audio),
        len_ms: u.audio.len() as u64 * 1000 / 16_000,
        events,
        final_decode_ms: stats.final_decode_ms,
        partial_decode_ms: stats.partial_decode_ms,
    })
}

/// How a call went: the route (reason, ms after the end of speech of the turn it happened in,
/// and whether a partial or the final decided it).
#[derive(Default)]
struct CallResult {
    route: Option<(RouteReason, i64, bool)>,
}

/// Plays turns of one call through the brain; the next turn starts after this one's audio and
/// a prompt. Every turn runs to its final, as on a live call.
fn replay(flow: &Arc<Flow>, turns: &[&Recording]) -> CallResult {
    let t0 = Instant::now();
    let language = turns.first().map_or("en", |u| u.language.as_str());
    let mut brain = listening_brain(flow.clone(), Some(language), t0);
    let mut result = CallResult::default();
    let mut turn_start = 0u64;
    for u in turns {
        let end = turn_start + u.end_ms;
        for h in &u.events {
            let (at, event) = h.at();
            let partial = matches!(event, Event::PartialTranscript { .. });
            let now = turn_start + at;
            let actions = brain.handle(t0 + Duration::from_millis(now), event);
            if let Some(Action::RouteToAgent { reason, .. }) = actions.first() {
                result
                    .route
                    .get_or_insert((*reason, now as i64 - end as i64, partial));
            }
        }
        turn_start += u.len_ms + 4_000;
        if brain.phase() != Phase::Ivr {
            break;
        }
    }
    result
}

/// Escapes recalled and ordinary utterances that escaped, among `recordings`.
#[derive(Default)]
struct Tally {
    escapes: usize,
    recalled: usize,
    ordinary: usize,
    false_escapes: usize,
    /// Ordinary utterances with an escape word in them ("for an operator, press zero"),
    /// apart: routing them is right for a caller who says so.
    mentions: usize,
    mentions_routed: usize,
}

impl Tally {
    fn add(&mut self, u: &Recording, routed: bool) {
        if u.kind == "escape" {
            self.escapes += 1;
            self.recalled += usize::from(routed);
        } else if u.mentions_escape_word {
            self.mentions += 1;
            self.mentions_routed += usize::from(routed);
        } else {
            self.ordinary += 1;
            self.false_escapes += usize::from(routed);
        }
    }

    fn json(&self) -> serde_json::Value {
        let rate = |k: usize, n: usize| (n > 0).then(|| k as f64 / n as f64);
        json!({"escape": self.escapes, "ordinary": self.ordinary,
            "escape_recall": rate(self.recalled, self.escapes),
            "false_escape_rate": rate(self.false_escapes, self.ordinary),
            "recalled": self.recalled, "false_escapes": self.false_escapes,
            "mentions_escape_word": {"n": self.mentions, "routed": self.mentions_routed}})
    }
}

/// The figures of one setup, from its recordings.
fn score(
    flow: &Arc<Flow>,
    recordings: &[Recording],
    holdout_voice: Option<&str>,
) -> serde_json::Value {
    let (mut route_ms, mut final_ms, mut partial_ms) = (vec![], vec![], vec![]);
    let (mut word_err, mut words, mut on_partial) = (0usize, 0usize, 0usize);
    let (mut all, mut held_out, mut tuning) =
        (Tally::default(), Tally::default(), Tally::default());
    let mut by_voice: std::collections::BTreeMap<&str, Tally> = Default::default();
    let mut misses = Vec::new();
    let mut twice = Vec::new();
    for u in recordings {
        let r = replay(flow, &[u]);
        final_ms.extend(u.final_decode_ms.iter().map(|&v| v as f64));
        partial_ms.extend(u.partial_decode_ms.iter().map(|&v| v as f64));
        let heard = u.finals().join(" ");
        let (e, n) = word_errors(&u.text, &heard);
        word_err += e;
        words += n;
        if written_twice(&u.text, &heard) {
            twice.push(json!({"id": u.id, "text": u.text, "heard": heard}));
        }
        let keyword = matches!(r.route, Some((RouteReason::Keyword, _, _)));
        let voice = by_voice.entry(u.voice.as_str()).or_default();
        let split = if holdout_voice == Some(u.voice.as_str()) {
            &mut held_out
        } else {
            &mut tuning
        };
        for t in [&mut all, split, voice] {
            t.add(u, keyword);
        }
        if u.kind == "escape" {
            if let Some((RouteReason::Keyword, after, partial)) = r.route {
                route_ms.push(after as f64);
                on_partial += usize::from(partial);
            } else {
                misses.push(json!({"id": u.id, "heard": heard}));
            }
        } else if keyword {
            misses.push(json!({"id": u.id, "false_escape": heard,
                "mentions_escape_word": u.mentions_escape_word}));
        }
    }
    // Repetition: the same request by two voices in a row should route; two different
    // requests should not.
    let ordinary: Vec<&Recording> = recordings.iter().filter(|u| u.kind == "ordinary").collect();
    let (mut rep_hit, mut rep_pairs, mut rep_false, mut diff_pairs) = (0, 0, 0, 0);
    for (i, a) in ordinary.iter().enumerate() {
        if let Some(b) = ordinary
            .iter()
            .find(|b| b.text == a.text && b.voice != a.voice)
            && i % 2 == 0
        {
            rep_pairs += 1;
            let r = replay(flow, &[a, b]);
            rep_hit += usize::from(matches!(r.route, Some((RouteReason::Repetition, _, _))));
        }
        if let Some(c) = ordinary
            .get(i + 7)
            .filter(|c| c.text != a.text && i % 4 == 0)
        {
            diff_pairs += 1;
            let r = replay(flow, &[a, c]);
            rep_false += usize::from(matches!(r.route, Some((RouteReason::Repetition, _, _))));
        }
    }
    // A caller who was not understood is asked again, and says it again (the same request by
    // another voice: a repeat is never the same audio). How the escapes reach a person by the
    // second turn: heard (the keyword either time, or repetition), or sent on as not
    // understood twice.
    let escapes: Vec<&Recording> = recordings.iter().filter(|u| u.kind == "escape").collect();
    let (mut heard_by_second, mut not_understood, mut second_pairs) = (0, 0, 0);
    for a in &escapes {
        if let Some(b) = escapes
            .iter()
            .find(|b| b.text == a.text && b.voice != a.voice)
        {
            second_pairs += 1;
            match replay(flow, &[a, b]).route {
                Some((RouteReason::Keyword | RouteReason::Repetition, _, _)) => {
                    heard_by_second += 1
                }
                Some((RouteReason::NoMatch, _, _)) => not_understood += 1,
                _ => {}
            }
        }
    }
    let mut figures = json!({
        "decode_ms_final": summary(&final_ms),
        "decode_ms_partial": summary(&partial_ms),
        "route_after_speech_end_ms": summary(&route_ms),
        "utterances": recordings.len(),
        "escape_recall": all.json()["escape_recall"],
        "false_escape_rate": all.json()["false_escape_rate"],
        "false_escapes": all.false_escapes,
        "ordinary": all.ordinary,
        "mentions_escape_word": all.json()["mentions_escape_word"],
        "escapes_decided_on_a_partial": format!("{on_partial}/{}", all.recalled),
        "repetition_detected": format!("{rep_hit}/{rep_pairs}"),
        "repetition_false": format!("{rep_false}/{diff_pairs}"),
        "escape_heard_by_the_second_turn": format!("{heard_by_second}/{second_pairs}"),
        "escape_not_understood_twice": format!("{not_understood}/{second_pairs}"),
        "word_error_rate": word_err as f64 / words.max(1) as f64,
        "written_twice": twice.len(),
        "written_twice_list": twice,
        "by_voice": by_voice.iter().map(|(v, t)| (v.to_string(), t.json())).collect::<serde_json::Map<_, _>>(),
        "misses": misses,
    });
    if let Some(v) = holdout_voice {
        figures["holdout"] =
            json!({"voice": v, "held_out": held_out.json(), "others": tuning.json()});
    }
    figures
}

/// What `bench speech` runs (the command line's flags, resolved).
#[derive(Debug, Clone)]
pub struct SpeechRun {
    /// Corpus folders (synthetic and real manifests both read).
    pub corpora: Vec<PathBuf>,
    /// Only this language's utterances.
    pub language: Option<String>,
    /// Which part of a real corpus (synthetic corpora are read whole).
    pub split: Split,
    /// One model for every language; default each language's own (`[speech] model`).
    pub model: Option<PathBuf>,
    pub out: PathBuf,
    pub transcripts: PathBuf,
    pub every: usize,
    pub setups: Vec<String>,
    /// Only these voices or speakers (none: all).
    pub voices: Vec<String>,
    pub holdout_voice: Option<String>,
    pub no_capacity: bool,
    pub capacity: CapacityRun,
    /// Threads per decode for the setups' decodes.
    pub threads: usize,
    /// No partials in the humanline setup: its finals (the live decode, as `humanline
    /// transcribe` runs it) only, for word error rates at a fraction of the cost. Route times
    /// are then those of a decision on the final.
    pub finals_only: bool,
    /// Decode settings to try in the humanline setup, as JSON fields of `DecodeOptions`
    /// over its defaults (`{"no_repeat_ngram":0}`).
    pub decode_overrides: Option<String>,
}

/// `base` with the fields of the JSON object `overrides` replaced.
fn override_options(base: &DecodeOptions, overrides: &str) -> anyhow::Result<DecodeOptions> {
    let mut value = serde_json::to_value(base)?;
    let changes: serde_json::Value =
        serde_json::from_str(overrides).context("--decode-options is not JSON")?;
    let (Some(fields), Some(changes)) = (value.as_object_mut(), changes.as_object()) else {
        anyhow::bail!("--decode-options must be a JSON object");
    };
    for (k, v) in changes {
        anyhow::ensure!(fields.contains_key(k), "--decode-options: no field `{k}`");
        fields.insert(k.clone(), v.clone());
    }
    serde_json::from_value(value).context("--decode-options")
}

/// The figures of every setup for each language and corpus kind ("en/real"), side by side.
fn by_corpus(
    flow: &Arc<Flow>,
    setups: &[(String, Vec<Recording>)],
    holdout_voice: Option<&str>,
) -> serde_json::Value {
    let mut groups: std::collections::BTreeSet<(String, VoiceKind)> = Default::default();
    for (_, recordings) in setups {
        groups.extend(recordings.iter().map(|r| (r.language.clone(), r.voices)));
    }
    let mut out = serde_json::Map::new();
    for (language, voices) in groups {
        let name = format!("{language}/{}", voices.as_str());
        let mut group = serde_json::Map::new();
        for (setup, recordings) in setups {
            let mine: Vec<Recording> = recordings
                .iter()
                .filter(|r| r.language == language && r.voices == voices)
                .cloned()
                .collect();
            let figures = score(flow, &mine, holdout_voice);
            eprintln!(
                "{name:13} {setup:9} n {:3}  WER {:.3}  written twice {:2}  recall {}  false escapes {}/{}  (mentions routed {})  decode final median {} ms",
                mine.len(),
                figures["word_error_rate"].as_f64().unwrap_or(0.0),
                figures["written_twice"],
                figures["escape_recall"],
                figures["false_escapes"],
                figures["ordinary"],
                figures["mentions_escape_word"]["routed"],
                figures["decode_ms_final"]["median"],
            );
            group.insert(setup.clone(), figures);
        }
        out.insert(name, serde_json::Value::Object(group));
    }
    serde_json::Value::Object(out)
}

pub fn speech(args: SpeechRun) -> anyhow::Result<()> {
    // `none`: only the capacity search.
    let mut chosen: Vec<Setup> = setups()
        .into_iter()
        .filter(|s| args.setups.is_empty() || args.setups.iter().any(|n| n == s.name))
        .map(|mut s| {
            s.opts.threads = Some(args.threads);
            s
        })
        .collect();
    if let Some(unknown) = args
        .setups
        .iter()
        .find(|n| *n != "none" && !setups().iter().any(|s| s.name == n.as_str()))
    {
        anyhow::bail!("unknown setup `{unknown}` (humanline, baseline, none)");
    }
    for s in chosen.iter_mut().filter(|s| s.name == "humanline") {
        if args.finals_only {
            s.recognizer.partial_interval_ms = 0;
        }
        if let Some(o) = &args.decode_overrides {
            s.opts = override_options(&s.opts, o)?;
        }
    }
    let flow = Arc::new(Flow::load_dir_or_embedded(None)?);
    let mut corpus = Vec::new();
    for dir in &args.corpora {
        corpus.extend(load_corpus(
            dir,
            args.every,
            args.language.as_deref(),
            args.split,
        )?);
    }
    if !args.voices.is_empty() {
        corpus.retain(|u| args.voices.contains(&u.voice));
    }
    anyhow::ensure!(
        !corpus.is_empty(),
        "no utterances in {:?} (voices {:?})",
        args.corpora,
        args.voices
    );
    let engine = load_languages(&flow, args.model.as_deref())?;
    engine.install_verifiers(&flow)?;
    let escapes = corpus.iter().filter(|u| u.kind == "escape").count();
    let ordinary = corpus.iter().filter(|u| u.kind == "ordinary").count();
    let models: Vec<String> = engine
        .models()
        .map(|(l, p)| format!("{l}: {}", p.display()))
        .collect();
    eprintln!(
        "bench speech: {escapes} escape and {ordinary} ordinary utterances, models {models:?}"
    );
    let mut report = serde_json::Map::new();
    report.insert(
        "corpus".into(),
        json!({"folders": args.corpora, "escape": escapes, "ordinary": ordinary,
        "language": args.language, "real_split": format!("{:?}", args.split).to_lowercase(),
        "channel": "300-3400 Hz, mu-law 8 kHz"}),
    );
    report.insert("models".into(), json!(models));
    report.insert(
        "machine".into(),
        json!({"cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "loadavg_at_start": loadavg(), "threads_per_decode": args.threads}),
    );
    let mut saved = serde_json::Map::new();
    let mut all = Vec::new();
    for setup in &chosen {
        let started = Instant::now();
        let mut recordings = Vec::new();
        for (i, u) in corpus.iter().enumerate() {
            recordings.push(record(u, &*engine, setup)?);
            if i % 40 == 39 {
                eprintln!("  {}: {}/{}", setup.name, i + 1, corpus.len());
            }
        }
        let mut figures = score(&flow, &recordings, args.holdout_voice.as_deref());
        figures["wall_s"] = json!(started.elapsed().as_secs());
        figures["loadavg_after"] = json!(loadavg());
        figures["decode_options"] = serde_json::to_value(&setup.opts)?;
        figures["partials"] = json!(setup.recognizer.partial_interval_ms > 0);
        report.insert(setup.name.into(), figures);
        saved.insert(setup.name.into(), serde_json::to_value(&recordings)?);
        all.push((setup.name.to_string(), recordings));
    }
    report.insert(
        "by_corpus".into(),
        by_corpus(&flow, &all, args.holdout_voice.as_deref()),
    );
    if !args.no_capacity {
        report.insert(
            "capacity".into(),
            capacity(engine.clone(), &flow, &corpus, &args.capacity)?,
        );
    }
    report.insert("loadavg_at_end".into(), json!(loadavg()));
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    report.insert("command".into(), json!(command));
    report.insert(
        "transcripts".into(),
        json!(args.transcripts.display().to_string()),
    );
    write_json(
        &args.transcripts,
        &json!({"command": command, "models": models, "setups": saved}),
    )?;
    let report = serde_json::Value::Object(report);
    write_json(&args.out, &report)?;
    eprintln!(
        "bench speech: written to {} (transcripts: {})",
        args.out.display(),
        args.transcripts.display()
    );
    Ok(())
}

pub fn rescore(
    transcripts: &Path,
    prompts: Option<&Path>,
    out: Option<&Path>,
    holdout_voice: Option<&str>,
) -> anyhow::Result<()> {
    let flow = Arc::new(Flow::load_dir_or_embedded(prompts)?);
    let text = std::fs::read_to_string(transcripts)
        .with_context(|| format!("reading {}", transcripts.display()))?;
    let saved: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", transcripts.display()))?;
    let setups = saved["setups"]
        .as_object()
        .with_context(|| format!("{}: no `setups`", transcripts.display()))?;
    let mut report = serde_json::Map::new();
    report.insert("rescored".into(), json!(transcripts.display().to_string()));
    report.insert("decoded_by".into(), saved["command"].clone());
    let mut all = Vec::new();
    for (name, recordings) in setups {
        let mut recordings: Vec<Recording> = serde_json::from_value(recordings.clone())
            .with_context(|| format!("{}: setup `{name}`", transcripts.display()))?;
        // The verdicts were saved with the phrases and thresholds of the run: hold them to
        // these prompts'. A verdict on a phrase these prompts no longer have is dropped (the
        // next best phrase of its kind was not saved, so this undercounts such a change).
        for u in &mut recordings {
            let Some(language) = flow.language(&u.language) else {
                continue;
            };
            for h in &mut u.events {
                if let HeardEvent::Verified { verdicts, .. } = h {
                    verdicts.retain(|v| {
                        language
                            .verifier_phrases
                            .iter()
                            .any(|(p, k)| *p == v.phrase && *k == v.kind)
                    });
                    verdicts
                        .iter_mut()
                        .for_each(|v| language.verifier.rejudge(v));
                }
            }
        }
        report.insert(name.clone(), score(&flow, &recordings, holdout_voice));
        all.push((name.clone(), recordings));
    }
    report.insert("by_corpus".into(), by_corpus(&flow, &all, holdout_voice));
    report.insert(
        "command".into(),
        json!(std::env::args().collect::<Vec<_>>().join(" ")),
    );
    let report = serde_json::Value::Object(report);
    if let Some(out) = out {
        write_json(out, &report)?;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// How the capacity search runs.
#[derive(Debug, Clone)]
pub struct CapacityRun {
    pub secs: u64,
    /// Decoder workers in the shared pool.
    pub workers: usize,
    /// Threads per decode.
    pub threads: usize,
    /// Numbers of callers to try, in order (the search stops past a 1 s p95).
    pub callers: Vec<usize>,
}

/// More utterances than this sent to a person for overload and a level does not count as
/// served, whatever its latency: shedding everyone is fast but is not capacity.
const MAX_OVERLOAD_SHARE: f64 = 0.05;

/// How many callers, each talking a third of the time (a corpus utterance, then silence twice
/// as long), the machine serves before the time to decide on an escape passes 300 ms at p95
/// (the target), and before it passes 1 s (where a caller starts to notice). A decision is the
/// detector seeing an escape in a partial or final, or the caller being sent to a person
/// because recognition could not answer in time ([`RecognitionWatch`]: the pool refused or
/// dropped their final); those overload routes are counted apart, and a level with more than
/// 5% of its utterances so routed is not within capacity. Every utterance must end in a
/// transcript or a person within the watch's deadline: the longest wait is reported.
fn capacity(
    engine: Arc<LanguageEngines>,
    flow: &Flow,
    corpus: &[Utterance],
    run: &CapacityRun,
) -> anyhow::Result<serde_json::Value> {
    // The callers all speak the first utterance's language, heard in it.
    let language = corpus
        .first()
        .map_or("en", |u| u.language.as_str())
        .to_string();
    let corpus: Vec<&Utterance> = corpus.iter().filter(|u| u.language == language).collect();
    let escape = &flow.escape;
    let mut runs = Vec::new();
    let (mut best, mut within_1s, mut all_within_300) = (0, 0, true);
    for &callers in &run.callers {
        let cfg = PoolConfig {
            workers: run.workers,
            decode: DecodeOptions {
                threads: Some(run.threads),
                ..DecodeOptions::default().with_escape_prompt()
            },
            ..PoolConfig::default()
        };
        let pool = Arc::new(DecoderPool::new(engine.clone(), cfg)?);
        let load_before = loadavg();
        let mut handles = Vec::new();
        for c in 0..callers {
            let pool = pool.clone();
            let escape = escape.clone();
            let language = language.clone();
            // Each caller: an utterance, then silence twice its length (30% talking), repeated.
            let mut stream = Vec::new();
            let mut ends = Vec::new();
            let mut k = c * 7;
            while stream.len() < run.secs as usize * 16_000 {
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
                stream_caller(c as u64, &language, &stream, &ends, &pool, &escape)
            }));
        }
        let mut total = CallerTally::default();
        for h in handles {
            let t = h
                .join()
                .map_err(|_| anyhow::anyhow!("caller thread panicked"))??;
            total.add(t);
        }
        let decided: Vec<f64> = total
            .heard
            .iter()
            .chain(&total.overload_escape)
            .copied()
            .collect();
        let p95 = percentile(&decided, 95.0);
        let overload_share = (total.overload_escape.len() + total.overload_ordinary) as f64
            / total.utterances.max(1) as f64;
        let run_figures = json!({"callers": callers, "utterances": total.utterances,
            "escapes": total.escapes,
            "decided": decided.len(), "decided_by_hearing": total.heard.len(),
            "sent_to_person_for_overload": {"escape": total.overload_escape.len(),
                "ordinary": total.overload_ordinary, "share": overload_share},
            "missed": total.missed,
            "decide_after_speech_end_ms": summary(&decided),
            "heard_after_speech_end_ms": summary(&total.heard),
            "longest_wait_for_final_or_person_ms": total.longest_wait,
            "pool": pool.stats(), "loadavg_before": load_before, "loadavg_after": loadavg()});
        eprintln!("capacity: {run_figures}");
        runs.push(run_figures);
        let served = overload_share <= MAX_OVERLOAD_SHARE;
        all_within_300 &= served && p95.is_some_and(|p| p <= 300.0);
        if all_within_300 {
            best = callers;
        }
        if served && p95.is_some_and(|p| p <= 1000.0) {
            within_1s = callers;
        } else {
            break;
        }
    }
    Ok(
        json!({"max_callers_p95_within_300ms": best, "max_callers_p95_within_1000ms": within_1s,
        "workers": run.workers, "threads_per_decode": run.threads,
        "max_overload_share": MAX_OVERLOAD_SHARE, "runs": runs, "talk_fraction": 0.33}),
    )
}

/// What one caller's run measured.
#[derive(Debug, Default)]
struct CallerTally {
    utterances: usize,
    escapes: usize,
    /// Escape decisions by hearing: ms after the end of speech.
    heard: Vec<f64>,
    /// Escape utterances sent to a person because recognition was behind: ms after the end of
    /// speech.
    overload_escape: Vec<f64>,
    /// Ordinary utterances sent to a person because recognition was behind.
    overload_ordinary: usize,
    /// Escapes neither heard nor sent to a person (misheard).
    missed: usize,
    /// Longest time from an end of speech to its final or a give-up (ms).
    longest_wait: u64,
}

impl CallerTally {
    fn add(&mut self, o: CallerTally) {
        self.utterances += o.utterances;
        self.escapes += o.escapes;
        self.heard.extend(o.heard);
        self.overload_escape.extend(o.overload_escape);
        self.overload_ordinary += o.overload_ordinary;
        self.missed += o.missed;
        self.longest_wait = self.longest_wait.max(o.longest_wait);
    }
}

/// One real-time caller, driven as a live call drives its recognizer (refusals and failures
/// through [`RecognitionWatch`]).
fn stream_caller(
    id: u64,
    language: &str,
    audio: &[f32],
    utterances: &[(u64, u64, bool)],
    pool: &DecoderPool,
    escape: &EscapeDetector,
) -> anyhow::Result<CallerTally> {
    let mut rec = StreamingRecognizer::new(id, RecognizerConfig::default())?;
    rec.set_language(Some(language));
    let (tx, rx) = std::sync::mpsc::channel::<DecodeResult>();
    let start = Instant::now();
    let mut watch = RecognitionWatch::default();
    let mut decided = vec![false; utterances.len()];
    let mut tally = CallerTally::default();
    // Speech ends (ms) whose final has not come yet.
    let mut waiting: Vec<u64> = Vec::new();
    // The utterance that started at or before `now`.
    let current = |now: u64| utterances.iter().rposition(|(s, _, _)| *s <= now);
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
        let mut verdicts = vec![watch.on_time(Instant::now())];
        while let Some(out) = rec.poll_output() {
            let now = start.elapsed().as_millis() as u64;
            let text = match out {
                RecognizerOutput::Decode(job) => {
                    let tx = tx.clone();
                    let kind = job.id.kind;
                    if let Err(e) = pool.submit(job, move |r| {
                        let _ = tx.send(r);
                    }) {
                        verdicts.push(watch.refused(kind, &e));
                    }
                    continue;
                }
                RecognizerOutput::SpeechEnded { .. } => {
                    watch.speech_ended(Instant::now());
                    waiting.push(now);
                    continue;
                }
                RecognizerOutput::DecodeFailed { kind, behind, .. } => {
                    verdicts.push(watch.failed(kind, behind));
                    continue;
                }
                RecognizerOutput::Final { text, .. } => {
                    watch.final_heard();
                    if !waiting.is_empty() {
                        let ended = waiting.remove(0);
                        tally.longest_wait = tally.longest_wait.max(now.saturating_sub(ended));
                    }
                    text
                }
                RecognizerOutput::Partial { text, .. } => text,
                RecognizerOutput::SpeechStarted { .. } => continue,
            };
            if escape.detect(&text).is_some()
                && let Some(i) = current(now)
                && !decided[i]
                && utterances[i].2
            {
                decided[i] = true;
                tally.heard.push(now as f64 - utterances[i].1 as f64);
            }
        }
        if verdicts
            .iter()
            .any(|v| matches!(v, watch::Verdict::SendToPerson(_)))
        {
            // A live call would now be with a person; here the caller carries on talking so
            // the load stays the same, and the utterance counts as routed for overload.
            let now = start.elapsed().as_millis() as u64;
            for ended in waiting.drain(..) {
                tally.longest_wait = tally.longest_wait.max(now.saturating_sub(ended));
            }
            if let Some(i) = current(now)
                && !decided[i]
            {
                decided[i] = true;
                if utterances[i].2 {
                    tally
                        .overload_escape
                        .push(now as f64 - utterances[i].1 as f64);
                } else {
                    tally.overload_ordinary += 1;
                }
            }
        }
    }
    let heard_all = |end: u64| end + 2000 < audio.len() as u64 / 16;
    for ((_, end, esc), d) in utterances.iter().zip(&decided) {
        if heard_all(*end) {
            tally.utterances += 1;
            tally.escapes += usize::from(*esc);
            tally.missed += usize::from(*esc && !*d);
        }
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_overrides_replace_only_the_fields_given() {
        let base = DecodeOptions::default();
        let o = override_options(&base, r#"{"no_repeat_ngram":3,"initial_prompt":null}"#)
            .expect("overrides");
        assert_eq!(o.no_repeat_ngram, 3);
        assert_eq!(o.initial_prompt, None);
        assert_eq!(o.ctx_margin, base.ctx_margin);
        assert!(override_options(&base, r#"{"no_such_field":1}"#).is_err());
        assert!(override_options(&base, "[1]").is_err());
    }

    #[test]
    fn both_manifests_are_read_with_language_kind_and_split() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real-voices");
        let all = load_corpus(&dir, 1, None, Split::All).expect("real");
        assert_eq!(all.len(), 5);
        assert!(all.iter().all(|u| u.language == "en"
            && u.voices == VoiceKind::Real
            && u.kind == "ordinary"
            && !u.text.is_empty()
            && !u.audio.is_empty()));
        // The fixture is all tune split.
        assert!(
            load_corpus(&dir, 1, None, Split::Report)
                .expect("real")
                .is_empty()
        );
        assert!(
            load_corpus(&dir, 1, Some("nl"), Split::All)
                .expect("real")
                .is_empty()
        );
    }

    #[test]
    fn a_sentence_written_twice_is_told_from_small_insertions() {
        use crate::bench::written_twice;
        assert!(written_twice(
            "You have entered an invalid option.",
            "You have entered an invalid option. You have enter in invalid option"
        ));
        assert!(written_twice(
            "We're sorry.",
            "We are sorry. We are so sorry."
        ));
        assert!(!written_twice("Call forwarding.", "Call flow reading."));
        assert!(!written_twice("", "anything at all"));
    }
}
