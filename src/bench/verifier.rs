//! `humanline bench verifier`: the keyword verifier against the text matcher, on the same
//! decodes of the same audio. Each utterance is decoded once the live way (adaptive window,
//! the language's prompt) without the verifier, then again with it: the text matcher reads the
//! transcript, the verifier scores the phrases. The escape threshold is calibrated on the
//! tuning voices (at most 1% of their ordinary utterances may escape) and reported on the
//! others, beside the threshold in the language file. Reads synthetic and real corpora alike
//! ([`super::speech::load_corpus`]): a real corpus's tune split counts as tuning voices, and
//! its lines that mention an escape word ("press zero for an operator") are counted apart
//! from false escapes.

use super::speech::{Split, load_corpus};
use super::{loadavg, percentile, summary, write_json};
use crate::config::Flow;
use crate::speech::{DecodeOptions, PhraseKind, Transcriber, Verdict, WhisperEngine};
use anyhow::Context;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

pub struct VerifierRun {
    pub corpus: PathBuf,
    pub language: String,
    /// One model; default the language's own (`[speech] model`), as a live call hears it.
    pub model: Option<PathBuf>,
    pub prompts: Option<PathBuf>,
    /// Voices whose utterances set the threshold (with a real corpus's tune split); the rest
    /// are held out.
    pub tune_voices: Vec<String>,
    pub every: usize,
    pub threads: usize,
    /// The decode's initial prompt instead of the live one (the language's `[speech]
    /// decoder_prompt`, else the English escape prompt; "" for none).
    pub prompt: Option<String>,
    pub out: PathBuf,
    /// Skip the plain decode: the verified decode's transcript (the same text) is the text
    /// matcher's, at half the time, without the verifier's added-time figure.
    pub no_plain: bool,
}

/// One utterance's outcome.
struct Row {
    id: String,
    kind: String,
    voice: String,
    text: String,
    heard: String,
    text_escape: bool,
    /// The transcript is nothing but escape words (`EscapeMatch::echo_shaped`).
    echo_shaped: bool,
    /// Every escape phrase's score (for per-phrase thresholds).
    scores: Vec<crate::speech::verifier::PhraseScore>,
    /// Real speech with an escape word in it: rightly routed, not a false escape.
    mentions: bool,
    tuning: bool,
    escape: Option<Verdict>,
    plain_ms: f64,
    verified_ms: f64,
}

/// Fraction of false escapes allowed on the tuning voices.
const MAX_FALSE: f64 = 0.01;

/// The lowest threshold under which at most `MAX_FALSE` of `ordinary` scores pass.
fn calibrate(ordinary: &[f32]) -> Option<f32> {
    let mut v: Vec<f32> = ordinary.to_vec();
    v.sort_by(|a, b| b.total_cmp(a));
    let allowed = (MAX_FALSE * v.len() as f64).floor() as usize;
    // Just above the first score that must not pass.
    v.get(allowed).map(|s| s + 0.01)
}

pub fn run(r: VerifierRun) -> anyhow::Result<()> {
    let flow = Flow::load_dir_or_embedded(r.prompts.as_deref())?;
    let lang = flow
        .language(&r.language)
        .with_context(|| format!("unknown language `{}`", r.language))?;
    let spec = flow
        .speech_specs(crate::speech::models::explicit_model(r.model.as_deref()).as_deref())
        .into_iter()
        .find(|s| s.code == r.language)
        .with_context(|| format!("no speech model for `{}`", r.language))?;
    let engine = WhisperEngine::load(&spec.model, Default::default())
        .with_context(|| format!("loading {}", spec.model.display()))?;
    let phrases = lang.verifier_phrases.iter().map(|(p, k)| (p.as_str(), *k));
    let verifier = engine.keyword_verifier(phrases, lang.verifier.clone())?;
    let mut opts = DecodeOptions {
        threads: Some(r.threads),
        language: Some(r.language.clone()),
        ..DecodeOptions::default()
    };
    // The live prompt: the language's own, as LanguageEngines gives it.
    if let Some(p) = r.prompt.clone().or(spec.prompt.clone()) {
        opts.initial_prompt = (!p.trim().is_empty()).then_some(p);
    }
    let plain_opts = DecodeOptions {
        verify: false,
        ..opts.clone()
    };
    let corpus = load_corpus(&r.corpus, r.every, Some(&r.language), Split::All)?;
    // Each utterance's row as it is measured, one JSON object a line: a long run stopped
    // early still leaves what it measured (bench/verifier_calibrate.py reads either file).
    let rows_path = r.out.with_extension("rows.jsonl");
    if let Some(dir) = rows_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut rows_file = std::io::BufWriter::new(
        std::fs::File::create(&rows_path)
            .with_context(|| format!("creating {}", rows_path.display()))?,
    );
    let mut rows = Vec::new();
    for u in corpus {
        let t = Instant::now();
        let plain = if r.no_plain {
            None
        } else {
            Some(engine.transcribe(&u.audio, &plain_opts)?)
        };
        let plain_ms = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        let verified = engine.transcribe_verified(&u.audio, &opts, &verifier, None)?;
        let verified_ms = t.elapsed().as_secs_f64() * 1000.0;
        // Without a plain decode its time is unknown: the added time is then reported as 0.
        let plain_ms = if plain.is_some() {
            plain_ms
        } else {
            verified_ms
        };
        let heard = plain.unwrap_or_else(|| verified.text.clone());
        let escape = verified
            .verdicts
            .iter()
            .find(|v| v.kind == PhraseKind::Escape)
            .cloned();
        let text_match = flow.escape.detect(&heard);
        let text_escape = text_match.is_some();
        let echo_shaped = text_match.is_some_and(|m| m.echo_shaped);
        let scores: Vec<_> = verified
            .scores
            .iter()
            .filter(|s| s.kind == PhraseKind::Escape)
            .cloned()
            .collect();
        let tuning = u.tune_split || r.tune_voices.iter().any(|v| v == &u.voice);
        println!(
            "{:36} {:8} {} {plain_ms:6.0} +{:5.0} ms text {} verifier {:>6} {:16} {heard:?}",
            u.id,
            u.kind,
            if tuning { "tune" } else { "held" },
            verified_ms - plain_ms,
            u8::from(text_escape),
            escape
                .as_ref()
                .map_or("-".into(), |e| format!("{:.2}", e.score)),
            escape.as_ref().map_or("", |e| e.phrase.as_str()),
        );
        rows.push(Row {
            id: u.id,
            kind: u.kind,
            voice: u.voice,
            text: u.text,
            heard,
            text_escape,
            echo_shaped,
            scores,
            mentions: u.mentions_escape_word,
            tuning,
            escape,
            plain_ms,
            verified_ms,
        });
        if let Some(row) = rows.last() {
            use std::io::Write;
            writeln!(rows_file, "{}", row_json(row))?;
            rows_file.flush()?;
        }
    }
    anyhow::ensure!(
        !rows.is_empty(),
        "no `{}` utterances in {}",
        r.language,
        r.corpus.display()
    );
    let tuning = |row: &Row| row.tuning;
    let score = |row: &Row| row.escape.as_ref().map_or(f32::NEG_INFINITY, |e| e.score);
    let tune_ordinary: Vec<f32> = rows
        .iter()
        .filter(|x| tuning(x) && x.kind != "escape" && !x.mentions)
        .map(score)
        .collect();
    let calibrated = calibrate(&tune_ordinary);
    let configured = lang.verifier.escape_threshold;
    let report = |part: &str, pick: &dyn Fn(&Row) -> bool| {
        let sel: Vec<&Row> = rows.iter().filter(|x| pick(x)).collect();
        let escapes: Vec<&&Row> = sel.iter().filter(|x| x.kind == "escape").collect();
        let others: Vec<&&Row> = sel
            .iter()
            .filter(|x| x.kind != "escape" && !x.mentions)
            .collect();
        let mentions: Vec<&&Row> = sel.iter().filter(|x| x.mentions).collect();
        let rate = |set: &[&&Row], f: &dyn Fn(&Row) -> bool| {
            (!set.is_empty()).then(|| set.iter().filter(|x| f(x)).count() as f64 / set.len() as f64)
        };
        // As the call brain decides (`CallBrain::escape_in`): nothing routes on a transcript
        // of escape words only that the model doubted.
        let doubted = |x: &Row| x.echo_shaped && x.escape.as_ref().is_some_and(|v| v.doubts_echo());
        let routes = |x: &Row, th: f32| !doubted(x) && (x.text_escape || score(x) >= th);
        let at = |th: f32| {
            json!({
                "threshold": th,
                "verifier": {"recall": rate(&escapes, &|x| score(x) >= th),
                             "false_escapes": rate(&others, &|x| score(x) >= th)},
                "either": {"recall": rate(&escapes, &|x| x.text_escape || score(x) >= th),
                           "false_escapes": rate(&others, &|x| x.text_escape || score(x) >= th),
                           "false_count": others.iter().filter(|x| x.text_escape || score(x) >= th).count()},
                "echo_guarded": {"recall": rate(&escapes, &|x| routes(x, th)),
                                 "false_escapes": rate(&others, &|x| routes(x, th)),
                                 "false_count": others.iter().filter(|x| routes(x, th)).count()},
                "mentions_routed": mentions.iter().filter(|x| x.text_escape || score(x) >= th).count(),
                "missed": escapes.iter().filter(|x| !x.text_escape && score(x) < th)
                    .map(|x| json!({"id": x.id, "heard": x.heard, "score": score(x)}))
                    .collect::<Vec<_>>(),
                "false": others.iter().filter(|x| x.text_escape || score(x) >= th)
                    .map(|x| json!({"id": x.id, "heard": x.heard, "score": score(x),
                                    "text_escape": x.text_escape}))
                    .collect::<Vec<_>>(),
            })
        };
        let added: Vec<f64> = sel.iter().map(|x| x.verified_ms - x.plain_ms).collect();
        let plain: Vec<f64> = sel.iter().map(|x| x.plain_ms).collect();
        let line = |name: &str, th: f32| {
            let v = at(th);
            println!(
                "{part:8} {name:10} threshold {th:6.2}: verifier recall {} false {} | text recall {} false {} | either recall {} false {} | echo-guarded recall {} false {}",
                fmt(&v["verifier"]["recall"]),
                fmt(&v["verifier"]["false_escapes"]),
                fmt(&rate(&escapes, &|x| x.text_escape).into()),
                fmt(&rate(&others, &|x| x.text_escape).into()),
                fmt(&v["either"]["recall"]),
                fmt(&v["either"]["false_escapes"]),
                fmt(&v["echo_guarded"]["recall"]),
                fmt(&v["echo_guarded"]["false_escapes"]),
            );
            v
        };
        json!({
            "escapes": escapes.len(), "others": others.len(), "mentions_escape_word": mentions.len(),
            "text_matcher": {"recall": rate(&escapes, &|x| x.text_escape),
                             "false_escapes": rate(&others, &|x| x.text_escape)},
            "at_configured": line("configured", configured),
            "at_calibrated": calibrated.map(|c| line("calibrated", c)),
            "plain_decode_ms": summary(&plain),
            "verifier_added_ms": summary(&added),
        })
    };
    let tuned = report("tuning", &|x| tuning(x));
    let held = report("held-out", &|x| !tuning(x));
    let added: Vec<f64> = rows.iter().map(|x| x.verified_ms - x.plain_ms).collect();
    println!(
        "verifier added per decode: median {:.0} ms, p95 {:.0} ms ({} threads; load {})",
        percentile(&added, 50.0).unwrap_or(0.0),
        percentile(&added, 95.0).unwrap_or(0.0),
        r.threads,
        loadavg()
    );
    let value = json!({
        "corpus": r.corpus, "language": r.language, "model": spec.model, "threads": r.threads,
        "every": r.every, "tune_voices": r.tune_voices, "loadavg": loadavg(),
        "prompt": opts.initial_prompt,
        "configured_threshold": configured, "calibrated_threshold": calibrated,
        "tuning": tuned, "held_out": held,
        "utterances": rows.iter().map(row_json).collect::<Vec<_>>(),
    });
    write_json(&r.out, &value)?;
    println!("wrote {}", r.out.display());
    Ok(())
}

fn row_json(x: &Row) -> serde_json::Value {
    json!({
        "id": x.id, "kind": x.kind, "voice": x.voice, "text": x.text, "heard": x.heard,
        "tuning": x.tuning, "mentions_escape_word": x.mentions, "text_escape": x.text_escape,
        "echo_shaped": x.echo_shaped, "verdict": x.escape, "scores": x.scores,
        "plain_ms": x.plain_ms, "verified_ms": x.verified_ms,
    })
}

fn fmt(v: &serde_json::Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.3}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_lets_at_most_one_percent_through() {
        let mut scores: Vec<f32> = (0..200).map(|i| -(i as f32) / 10.0).collect();
        scores.reverse();
        let t = calibrate(&scores).expect("threshold");
        let passed = scores.iter().filter(|&&s| s >= t).count();
        assert_eq!(passed, 2, "threshold {t}");
        assert_eq!(calibrate(&[]), None);
        // Fewer than 100: none may pass.
        let t = calibrate(&[-3.0, -1.0, -2.0]).expect("threshold");
        assert!(t > -1.0);
    }
}
