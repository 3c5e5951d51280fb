//! The keyword verifier: ask the model about the phrases that matter, instead of reading its
//! free transcript.
//!
//! Free transcription followed by text matching cannot hear Dutch escapes on the phone band
//! (recall 0.55 with 5% false escapes; base's WER on real Dutch phone speech is near 68%). The
//! model often *does* give the phrase a good probability where the caller said it, even when
//! its greedy transcript writes something else. So after the free decode (which encodes the
//! audio once), each phrase of the call's language is scored as a forced token sequence, at
//! word boundaries of the free hypothesis, against what the hypothesis itself wrote there: a
//! length-normalised log-likelihood ratio
//!
//! ```text
//! llr(p, k) = mean_j log P(p_j | prefix, hyp[..k], p[..j])  -  mean_j log P(hyp[k+j] | prefix, hyp[..k+j])
//! ```
//!
//! 0 means "as likely as what the model wrote"; ordinary speech scores far below. The score
//! of a phrase is its best over anchors.
//!
//! Cost is kept bounded:
//! - the free decode's own logits rows are recorded as it runs ([`StepRecorder`], through
//!   whisper.cpp's logits filter callback), so every phrase's first token is screened at every
//!   anchor for free, and one-token phrases are scored entirely from them;
//! - only the best `max_candidates` (anchor, phrase) pairs are scored in full, one token per
//!   decode (after a multi-token decode whisper.cpp's logits row is not the last token's), on
//!   the KV cache the free decode left: `decode` drops KV beyond `n_past`, so the hypothesis
//!   prefix is shared by every phrase at an anchor and re-extended (one batch) to the next.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use whisper_rs::{WhisperContext, WhisperState};

use super::SpeechError;

/// What a phrase means when the caller says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhraseKind {
    /// A request for a person.
    Escape,
    /// Yes (to a callback offer).
    Yes,
    /// No.
    No,
}

impl PhraseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PhraseKind::Escape => "escape",
            PhraseKind::Yes => "yes",
            PhraseKind::No => "no",
        }
    }
}

/// A phrase the verifier heard: the best-scoring phrase of a kind, with the threshold it was
/// held to. Only verdicts whose score reaches the threshold are acted on ([`Verdict::passed`]).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Verdict {
    pub kind: PhraseKind,
    pub phrase: String,
    /// Length-normalised log-likelihood ratio against the free hypothesis (nats per token).
    pub score: f32,
    pub threshold: f32,
    /// How sure the model was of its own transcript: the free hypothesis's mean token
    /// log-probability (nats; 0 = certain). Scores are relative to the hypothesis, so when
    /// the transcript *is* an escape phrase its score is 0 whatever the audio; this is what
    /// tells a caller who said "een mens" from the decoder echoing its prompt on unclear
    /// audio ([`Verdict::doubts_echo`]).
    #[serde(default)]
    pub hypothesis_lp: f32,
    /// Below this `hypothesis_lp` a transcript that is nothing but escape words is taken for
    /// an echo of the decoder prompt.
    #[serde(default = "no_bar")]
    pub echo_threshold: f32,
    /// An escape verdict passes only when `hypothesis_lp` is at least this
    /// ([`VerifierSettings::escape_transcript_floor`]).
    #[serde(default = "no_bar")]
    pub transcript_floor: f32,
}

/// No bar at all: verdicts saved before a bar existed pass it.
fn no_bar() -> f32 {
    f32::NEG_INFINITY
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.score >= self.threshold
            && (self.kind != PhraseKind::Escape || self.hypothesis_lp >= self.transcript_floor)
    }

    /// The model was too unsure of its transcript for an escape phrase written alone to be
    /// believed (see [`VerifierSettings::echo_threshold`]).
    pub fn doubts_echo(&self) -> bool {
        self.hypothesis_lp < self.echo_threshold
    }
}

/// Verifier settings of one language.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifierSettings {
    /// An escape phrase scoring at least this routes (calibrated per language for at most 1%
    /// false escapes on ordinary speech of the tuning voices).
    pub escape_threshold: f32,
    /// Escape phrases held to their own threshold instead of `escape_threshold` (a short
    /// phrase such as "een mens" is easier for ordinary speech to score well on).
    pub phrase_thresholds: std::collections::BTreeMap<String, f32>,
    /// A transcript that is nothing but escape words ("Een mens.") only routes when the
    /// model's mean token log-probability of it is at least this: the decoder writes the
    /// escape words of its prompt on unclear audio, and then scores them as sure as itself.
    /// Off (-20) by default.
    pub echo_threshold: f32,
    /// An escape phrase the verifier scores counts only when the model's mean token
    /// log-probability of its own transcript is at least this. The score is a ratio against
    /// that transcript: when the model could make nothing of the audio, any phrase explains
    /// it about as well, and ordinary garbled speech passes as often as a caller who asked.
    /// Off (-20) by default.
    pub escape_transcript_floor: f32,
    /// A yes or no scoring at least this counts as the answer.
    pub answer_threshold: f32,
    /// Screening: a phrase whose first token is this much (nats) less likely than the
    /// hypothesis's token at an anchor is not scored further there.
    pub screen_margin: f32,
    /// Most (anchor, phrase) pairs scored in full per decode: bounds the cost.
    pub max_candidates: usize,
}

impl Default for VerifierSettings {
    fn default() -> Self {
        VerifierSettings {
            escape_threshold: -1.0,
            phrase_thresholds: Default::default(),
            echo_threshold: -20.0,
            escape_transcript_floor: -20.0,
            answer_threshold: -1.0,
            screen_margin: 4.0,
            max_candidates: 8,
        }
    }
}

impl VerifierSettings {
    /// The threshold `phrase` of `kind` is held to.
    pub fn threshold(&self, kind: PhraseKind, phrase: &str) -> f32 {
        match kind {
            PhraseKind::Escape => self
                .phrase_thresholds
                .get(phrase)
                .copied()
                .unwrap_or(self.escape_threshold),
            PhraseKind::Yes | PhraseKind::No => self.answer_threshold,
        }
    }

    /// `verdict` held to these settings instead of those it was given with (a saved run
    /// scored again with new thresholds). Exact for the phrase it names; which phrase was the
    /// best of its kind was decided with the old thresholds.
    pub fn rejudge(&self, verdict: &mut Verdict) {
        verdict.threshold = self.threshold(verdict.kind, &verdict.phrase);
        verdict.echo_threshold = self.echo_threshold;
        verdict.transcript_floor = self.escape_transcript_floor;
    }

    pub fn validate(&self) -> Result<(), String> {
        let finite = |x: f32| x.is_finite() && (-20.0..=5.0).contains(&x);
        if !finite(self.escape_threshold)
            || !finite(self.answer_threshold)
            || !finite(self.echo_threshold)
            || !finite(self.escape_transcript_floor)
            || !self.phrase_thresholds.values().all(|&t| finite(t))
        {
            return Err("verifier thresholds must be between -20 and 5 (nats per token)".into());
        }
        if !(self.screen_margin.is_finite() && self.screen_margin > 0.0) {
            return Err("verifier screen_margin must be a positive number".into());
        }
        if self.max_candidates > 64 {
            return Err("verifier max_candidates must be at most 64".into());
        }
        Ok(())
    }
}

/// One spelling of a phrase as tokens (" medewerker", " Medewerker").
#[derive(Debug, Clone)]
struct Variant {
    tokens: Vec<i32>,
}

#[derive(Debug, Clone)]
struct Phrase {
    text: String,
    kind: PhraseKind,
    variants: Vec<Variant>,
}

/// The phrases of one language, tokenized for one model, with their settings.
#[derive(Debug, Clone)]
pub struct KeywordVerifier {
    phrases: Vec<Phrase>,
    settings: VerifierSettings,
}

/// The score of every phrase (best over anchors and spellings), for calibration and reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhraseScore {
    pub kind: PhraseKind,
    pub phrase: String,
    pub score: f32,
}

/// What [`KeywordVerifier::score`] found on one decode.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Scored {
    /// Every phrase's score (best over anchors and spellings).
    pub phrases: Vec<PhraseScore>,
    /// The free hypothesis's mean token log-probability (end-of-text included when the
    /// decode ended on it; 0 for an empty hypothesis).
    pub hypothesis_lp: f32,
}

/// Logits rows of the free decode, one per step, captured by the logits filter callback.
#[derive(Debug, Default)]
pub struct StepRecorder {
    /// Row i: log-softmax over text tokens and end-of-text of the logits before token i.
    rows: Vec<Vec<f32>>,
    used: usize,
    eot: usize,
}

impl StepRecorder {
    pub fn new(eot: i32) -> Self {
        StepRecorder {
            rows: Vec::new(),
            used: 0,
            eot: usize::try_from(eot).unwrap_or(0),
        }
    }

    /// Forget the previous decode's rows (keeps the buffers).
    pub fn reset(&mut self) {
        self.used = 0;
    }

    /// Record the logits whisper.cpp is about to sample step `step` from.
    pub fn record(&mut self, step: usize, logits: &[f32]) {
        if step > self.used || step > 448 {
            return; // A step was missed (should not happen): keep what is consistent.
        }
        if self.rows.len() <= step {
            self.rows.resize_with(step + 1, Vec::new);
        }
        let row = &mut self.rows[step];
        row.clear();
        row.extend_from_slice(logits);
        log_softmax_text(row, self.eot);
        self.used = step + 1;
    }

    fn rows(&self) -> &[Vec<f32>] {
        &self.rows[..self.used]
    }
}

/// Log-softmax in place over the text tokens and end-of-text; special tokens (sot, language,
/// timestamps) are set to -inf: a caller's words never contain them.
fn log_softmax_text(row: &mut [f32], eot: usize) {
    let n = row.len().min(eot + 1);
    for x in row.iter_mut().skip(n) {
        *x = f32::NEG_INFINITY;
    }
    let max = row[..n]
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return;
    }
    let sum: f32 = row[..n]
        .iter()
        .filter(|x| x.is_finite())
        .map(|x| (x - max).exp())
        .sum();
    let lse = max + sum.ln();
    for x in row[..n].iter_mut() {
        *x -= lse;
    }
}

/// What the free decode left behind, for scoring.
pub struct Hypothesis<'a> {
    /// The hypothesis's text tokens (no special tokens).
    pub tokens: &'a [i32],
    /// Text of each token (to find word boundaries).
    pub pieces: &'a [String],
    /// Number of tokens before the hypothesis in the decoder's KV cache (previous-text marker,
    /// prompt, start-of-transcript, language, task, no-timestamps).
    pub prefix_len: usize,
    pub recorder: &'a StepRecorder,
    pub eot: i32,
    /// The hypothesis came from a beam search (its rows were made by decoding it again).
    pub beam: bool,
}

impl KeywordVerifier {
    /// Tokenize `phrases` (text, kind) for `ctx`'s vocabulary. Each phrase is scored as said
    /// mid-sentence (" medewerker") and as a transcript's first word (" Medewerker").
    pub fn new<'a>(
        ctx: &WhisperContext,
        phrases: impl IntoIterator<Item = (&'a str, PhraseKind)>,
        settings: VerifierSettings,
    ) -> Result<Self, SpeechError> {
        settings.validate().map_err(SpeechError::InvalidConfig)?;
        let mut out: Vec<Phrase> = Vec::new();
        for (text, kind) in phrases {
            let text = text.trim().to_lowercase();
            if text.is_empty() || out.iter().any(|p| p.text == text && p.kind == kind) {
                continue;
            }
            let mut spellings = vec![format!(" {text}")];
            let mut chars = text.chars();
            if let Some(first) = chars.next() {
                let capital: String = first.to_uppercase().chain(chars).collect();
                spellings.push(format!(" {capital}"));
            }
            let mut variants: Vec<Variant> = Vec::new();
            for s in spellings {
                let tokens = ctx.tokenize(&s, s.len() + 8).map_err(|e| {
                    SpeechError::InvalidConfig(format!("cannot tokenize phrase {s:?}: {e}"))
                })?;
                if !tokens.is_empty() && !variants.iter().any(|v| v.tokens == tokens) {
                    variants.push(Variant { tokens });
                }
            }
            if !variants.is_empty() {
                out.push(Phrase {
                    text,
                    kind,
                    variants,
                });
            }
        }
        Ok(KeywordVerifier {
            phrases: out,
            settings,
        })
    }

    pub fn settings(&self) -> &VerifierSettings {
        &self.settings
    }

    pub fn is_empty(&self) -> bool {
        self.phrases.is_empty()
    }

    /// The threshold `phrase` of `kind` is held to.
    pub fn threshold(&self, kind: PhraseKind, phrase: &str) -> f32 {
        self.settings.threshold(kind, phrase)
    }

    /// The verdict of each kind: its phrase that passes by the widest margin over its own
    /// threshold, else the one that comes closest.
    pub fn verdicts(&self, scored: &Scored) -> Vec<Verdict> {
        let mut best: Vec<Verdict> = Vec::new();
        for s in &scored.phrases {
            let threshold = self.threshold(s.kind, &s.phrase);
            let verdict = Verdict {
                kind: s.kind,
                phrase: s.phrase.clone(),
                score: s.score,
                threshold,
                hypothesis_lp: scored.hypothesis_lp,
                echo_threshold: self.settings.echo_threshold,
                transcript_floor: self.settings.escape_transcript_floor,
            };
            match best.iter_mut().find(|v| v.kind == s.kind) {
                Some(v) if v.score - v.threshold >= s.score - threshold => {}
                Some(v) => *v = verdict,
                None => best.push(verdict),
            }
        }
        best
    }

    /// Score every phrase against the free hypothesis in `state` (which `full()` just left:
    /// encoder output and the hypothesis's KV cache). Gives up (with what it has) once
    /// `cancel` is set.
    pub fn score(
        &self,
        state: &mut WhisperState,
        hyp: &Hypothesis<'_>,
        threads: usize,
        cancel: Option<&AtomicBool>,
    ) -> Result<Scored, SpeechError> {
        let rows = hyp.recorder.rows();
        let n = hyp.tokens.len();
        // The recorder saw one row per hypothesis token, and one more if the decode ended on
        // end-of-text. Anything else means the callback did not follow this decode: no verdict.
        if rows.len() < n || rows.len() > n + 1 || self.phrases.is_empty() {
            return Ok(Scored::default());
        }
        let eot = usize::try_from(hyp.eot).unwrap_or(0);
        let lp = |row: &[f32], t: i32| -> f32 {
            usize::try_from(t)
                .ok()
                .and_then(|i| row.get(i).copied())
                .unwrap_or(f32::NEG_INFINITY)
        };
        // Log-probability of what the hypothesis wrote at each step (end-of-text last).
        let mut hyp_lp: Vec<f32> = (0..n).map(|i| lp(&rows[i], hyp.tokens[i])).collect();
        if rows.len() == n + 1 {
            hyp_lp.push(rows[n].get(eot).copied().unwrap_or(0.0));
        }
        let hypothesis_lp = if hyp_lp.is_empty() {
            0.0
        } else {
            hyp_lp.iter().sum::<f32>() / hyp_lp.len() as f32
        };
        // What a phrase is weighed against at each step. A greedy hypothesis took the likeliest
        // token at every step; a beam's did not always, and against a token the model found
        // unlikely there any phrase looks likely (ordinary Dutch requests scored 1.5 to 2.8
        // against beam hypotheses). So a beam hypothesis's steps count at their likeliest
        // token, which is what the greedy thresholds were calibrated against.
        let base_lp: std::borrow::Cow<[f32]> = if hyp.beam {
            (0..hyp_lp.len())
                .map(|i| rows[i].iter().copied().fold(f32::NEG_INFINITY, f32::max))
                .collect()
        } else {
            std::borrow::Cow::Borrowed(&hyp_lp)
        };
        let hyp_mean = |k: usize, m: usize| -> f32 {
            // Past the end, compare with the hypothesis's last known step.
            let vals: Vec<f32> = (k..k + m)
                .map(|i| base_lp.get(i.min(base_lp.len().saturating_sub(1))).copied())
                .map(|v| v.unwrap_or(0.0))
                .collect();
            vals.iter().sum::<f32>() / m.max(1) as f32
        };
        // Anchors: before the first token, before every token that starts a word, and after
        // the last one if the decode ended there.
        let anchors: Vec<usize> = (0..rows.len())
            .filter(|&k| {
                k == 0
                    || k == n
                    || hyp
                        .pieces
                        .get(k)
                        .is_some_and(|p| p.starts_with(' ') || p.starts_with('-'))
            })
            .collect();

        let mut best: Vec<f32> = vec![f32::NEG_INFINITY; self.phrases.len()];
        // (screen value, anchor, phrase, variant) of multi-token phrases worth scoring.
        let mut candidates: Vec<(f32, usize, usize, usize)> = Vec::new();
        for &k in &anchors {
            let row = &rows[k];
            let here = base_lp.get(k).copied().unwrap_or(0.0);
            for (pi, p) in self.phrases.iter().enumerate() {
                for (vi, v) in p.variants.iter().enumerate() {
                    let first = lp(row, v.tokens[0]);
                    if v.tokens.len() == 1 {
                        best[pi] = best[pi].max(first - hyp_mean(k, 1));
                    } else if first - here >= -self.settings.screen_margin {
                        candidates.push((first - here, k, pi, vi));
                    }
                }
            }
        }
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
        candidates.truncate(self.settings.max_candidates);
        candidates.sort_by_key(|c| (c.1, c.2, c.3));

        // Positions of the KV cache that hold the prefix and hypothesis as decoded: row i
        // came from decoding token i-1, so tokens before the last row are in the cache.
        let mut valid = hyp.prefix_len + rows.len().saturating_sub(1);
        let threads = threads.max(1);
        let decode = |state: &mut WhisperState, tokens: &[i32], n_past: usize| {
            state
                .decode(tokens, n_past, threads)
                .map_err(|e| SpeechError::Decode(format!("verifier decode: {e}")))
        };
        let mut logits = Vec::new();
        for &(_, k, pi, vi) in &candidates {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                break;
            }
            let at = hyp.prefix_len + k;
            if valid < at {
                // Re-extend the shared hypothesis prefix (logits of this batch are not needed).
                let from = valid - hyp.prefix_len;
                decode(state, &hyp.tokens[from..k], valid)?;
            }
            let tokens = &self.phrases[pi].variants[vi].tokens;
            let mut sum = lp(&rows[k], tokens[0]);
            for j in 1..tokens.len() {
                // One token per decode: only then is the logits row the one we want.
                decode(state, &tokens[j - 1..j], at + j - 1)?;
                logits.clear();
                logits.extend_from_slice(
                    state
                        .get_logits()
                        .map_err(|e| SpeechError::Decode(format!("verifier logits: {e}")))?,
                );
                log_softmax_text(&mut logits, eot);
                sum += lp(&logits, tokens[j]);
            }
            valid = at;
            let m = tokens.len();
            best[pi] = best[pi].max(sum / m as f32 - hyp_mean(k, m));
        }
        let phrases = self
            .phrases
            .iter()
            .zip(best)
            .filter(|(_, s)| s.is_finite())
            .map(|(p, score)| PhraseScore {
                kind: p.kind,
                phrase: p.text.clone(),
                score,
            })
            .collect();
        Ok(Scored {
            phrases,
            hypothesis_lp,
        })
    }
}

#[cfg(test)]
pub(crate) mod explore {
    //! Measurements on the corpora (ignored tests; run with --release --ignored --nocapture).
    use super::*;
    use crate::speech::engine::{DecodeOptions, EngineOptions, WhisperEngine};
    use std::io::Write;
    use std::time::Instant;

    /// Scores of every corpus utterance, to a TSV: id, kind, voice, ms, text, phrase:score...
    /// Env: VERIFY_MODEL, VERIFY_CORPUS (dir with manifest.tsv), VERIFY_LANG, VERIFY_OUT,
    /// VERIFY_PROMPT (initial prompt; empty for none), VERIFY_THREADS, VERIFY_EVERY.
    #[test]
    #[ignore]
    fn score_corpus() {
        let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
        let model = env("VERIFY_MODEL", "models/ggml-base.bin");
        let corpus = std::path::PathBuf::from(env("VERIFY_CORPUS", "bench/corpus-nl"));
        let lang = env("VERIFY_LANG", "nl");
        let out = env("VERIFY_OUT", "/tmp/verify.tsv");
        let prompt = env("VERIFY_PROMPT", "");
        let threads: usize = env("VERIFY_THREADS", "1").parse().unwrap_or(1);
        let every: usize = env("VERIFY_EVERY", "1").parse().unwrap_or(1);
        let engine = WhisperEngine::load(&model, EngineOptions::default()).expect("model");
        let flow = crate::config::Flow::load_dir(std::path::Path::new("prompts")).expect("prompts");
        let language = flow.languages.get(&lang).expect("language");
        let phrases = language
            .verifier_phrases
            .iter()
            .map(|(p, k)| (p.as_str(), *k));
        let settings = VerifierSettings {
            max_candidates: env("VERIFY_CANDIDATES", "8").parse().unwrap_or(8),
            ..VerifierSettings::default()
        };
        let verifier = engine
            .keyword_verifier(phrases, settings)
            .expect("verifier");
        let opts = DecodeOptions {
            language: Some(lang.clone()),
            initial_prompt: (!prompt.is_empty()).then_some(prompt),
            threads: Some(threads),
            ..DecodeOptions::default()
        };
        let manifest = std::fs::read_to_string(corpus.join("manifest.tsv")).expect("manifest");
        let mut f = std::fs::File::create(&out).expect("out");
        for (i, line) in manifest.lines().skip(1).enumerate() {
            if i % every != 0 {
                continue;
            }
            let cols: Vec<&str> = line.split('\t').collect();
            let audio = crate::speech::load_wav_mono_16k(corpus.join(format!("{}.wav", cols[0])))
                .expect("wav");
            let t = Instant::now();
            let plain = crate::speech::Transcriber::transcribe(engine.as_ref(), &audio, &opts)
                .expect("decode");
            let plain_ms = t.elapsed().as_millis();
            let t = Instant::now();
            let heard = engine
                .transcribe_verified(&audio, &opts, &verifier, None)
                .expect("verify");
            let ms = t.elapsed().as_millis();
            assert_eq!(plain, heard.text);
            let scores: Vec<String> = heard
                .verdicts
                .iter()
                .map(|s| format!("{}:{}:{:.3}", s.kind.as_str(), s.phrase, s.score))
                .collect();
            writeln!(
                f,
                "{}\t{}\t{}\t{plain_ms}\t{ms}\t{}\t{}\t{}",
                cols[0],
                cols[1],
                cols[2],
                cols.get(4).unwrap_or(&""),
                heard.text,
                scores.join("|")
            )
            .expect("write");
            eprintln!("{} {plain_ms} {ms} {:?}", cols[0], heard.text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::speech::testutil::{engine, phone_speech, silence};
    use crate::speech::{DecodeOptions, Transcriber};

    /// The English verifier of the shipped prompts, for the test model.
    fn english(engine: &crate::speech::WhisperEngine) -> KeywordVerifier {
        let flow = crate::config::Flow::embedded().expect("prompts");
        let lang = flow.language("en").expect("en");
        let phrases = lang.verifier_phrases.iter().map(|(p, k)| (p.as_str(), *k));
        engine
            .keyword_verifier(phrases, lang.verifier.clone())
            .expect("verifier")
    }

    fn escape_verdict(heard: &crate::speech::Heard) -> Option<&Verdict> {
        heard.verdicts.iter().find(|v| v.kind == PhraseKind::Escape)
    }

    /// English requests, and whether each asks for a person.
    const SAID: [(&str, bool); 4] = [
        ("I want to talk to a human", true),
        ("operator please", true),
        ("I need to check my account balance", false),
        ("my internet is not working", false),
    ];

    #[test]
    fn a_said_escape_passes_and_an_ordinary_request_does_not() {
        let Some(engine) = engine() else { return };
        let verifier = english(&engine);
        let opts = DecodeOptions::default();
        for (text, escape) in SAID {
            let Some(audio) = phone_speech(text, "en-us", 165) else {
                return;
            };
            let heard = engine
                .transcribe_verified(&audio, &opts, &verifier, None)
                .expect("decode");
            // The verifier never changes the transcript.
            assert_eq!(heard.text, engine.transcribe(&audio, &opts).expect("plain"));
            let v = escape_verdict(&heard).expect("an escape score");
            assert_eq!(v.passed(), escape, "{text:?} heard {heard:?}");
        }
    }

    /// After a beam decode the hypothesis is decoded again for the verifier. Where the beams
    /// write what the greedy decode wrote, the scores must be the greedy decode's: rows out by
    /// one step, or the beams' KV cache left behind, would move them far.
    #[test]
    fn a_beam_decode_is_verified_as_the_greedy_decode_is() {
        let Some(engine) = engine() else { return };
        let verifier = english(&engine);
        let greedy = DecodeOptions::default();
        let beam = DecodeOptions {
            beam_size: 5,
            ..DecodeOptions::default()
        };
        let mut compared = 0;
        for (text, escape) in SAID {
            let Some(audio) = phone_speech(text, "en-us", 165) else {
                return;
            };
            let g = engine
                .transcribe_verified(&audio, &greedy, &verifier, None)
                .expect("greedy");
            let b = engine
                .transcribe_verified(&audio, &beam, &verifier, None)
                .expect("beam");
            let v = escape_verdict(&b).expect("an escape score after a beam decode");
            assert_eq!(v.passed(), escape, "{text:?} heard {b:?}");
            if g.text != b.text {
                continue;
            }
            compared += 1;
            for (x, y) in g.scores.iter().zip(&b.scores) {
                assert_eq!(x.phrase, y.phrase);
                assert!(
                    (x.score - y.score).abs() < 0.2,
                    "{text:?}: {} scored {} greedy, {} after the beams",
                    x.phrase,
                    x.score,
                    y.score
                );
            }
        }
        assert!(compared > 0, "the beams wrote something else every time");
    }

    #[test]
    fn silence_and_empty_audio_give_no_verdict_that_passes() {
        let Some(engine) = engine() else { return };
        let verifier = english(&engine);
        let opts = DecodeOptions::default();
        let empty = engine
            .transcribe_verified(&[], &opts, &verifier, None)
            .expect("empty");
        assert!(
            empty.verdicts.is_empty() && empty.text.is_empty(),
            "{empty:?}"
        );
        for audio in [silence(50), silence(1_500)] {
            let heard = engine
                .transcribe_verified(&audio, &opts, &verifier, None)
                .expect("silence");
            assert!(!heard.verdicts.iter().any(Verdict::passed), "{heard:?}");
        }
    }

    #[test]
    fn log_softmax_ignores_special_tokens() {
        let mut row = vec![1.0, 1.0, f32::NEG_INFINITY, 1.0, 50.0];
        log_softmax_text(&mut row, 3);
        let p: f32 = row[..4]
            .iter()
            .filter(|x| x.is_finite())
            .map(|x| x.exp())
            .sum();
        assert!((p - 1.0).abs() < 1e-5, "{row:?}");
        assert_eq!(row[4], f32::NEG_INFINITY);
    }

    #[test]
    fn a_saved_verdict_is_held_to_new_thresholds() {
        let settings = VerifierSettings {
            escape_threshold: 0.5,
            phrase_thresholds: [("een mens".to_string(), 1.0)].into(),
            echo_threshold: -0.75,
            ..VerifierSettings::default()
        };
        let saved = |phrase: &str| Verdict {
            kind: PhraseKind::Escape,
            phrase: phrase.into(),
            score: 0.7,
            threshold: 0.0,
            hypothesis_lp: -0.7,
            echo_threshold: -0.65,
            transcript_floor: -20.0,
        };
        let mut v = saved("medewerker");
        assert!(v.passed() && v.doubts_echo());
        settings.rejudge(&mut v);
        assert!(v.passed() && !v.doubts_echo(), "{v:?}");
        let mut v = saved("een mens");
        settings.rejudge(&mut v);
        assert!(!v.passed(), "its own threshold: {v:?}");
        // The model unsure of its transcript: the escape's score against it does not count.
        let floor = VerifierSettings {
            escape_transcript_floor: -0.5,
            ..settings.clone()
        };
        let mut v = saved("medewerker");
        floor.rejudge(&mut v);
        assert!(!v.passed(), "{v:?}");
        let mut answer = Verdict {
            kind: PhraseKind::Yes,
            ..saved("ja")
        };
        floor.rejudge(&mut answer);
        assert!(
            answer.passed(),
            "answers are not held to the floor: {answer:?}"
        );
    }

    #[test]
    fn settings_are_validated() {
        assert!(VerifierSettings::default().validate().is_ok());
        let bad = VerifierSettings {
            escape_threshold: f32::NAN,
            ..VerifierSettings::default()
        };
        assert!(bad.validate().is_err());
        let bad = VerifierSettings {
            max_candidates: 1000,
            ..VerifierSettings::default()
        };
        assert!(bad.validate().is_err());
    }
}
