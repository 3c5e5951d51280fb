//! Operator configuration: the prompts, lexicons and thresholds under `prompts/`.
//!
//! Loading either yields a complete, validated [`Flow`] or every problem found, each as
//! `FILE:LINE:COL: message`. A running server swaps in a new `Flow` only when it loaded
//! cleanly, so invalid configuration never replaces a valid one.

mod files;
pub mod recordings;
pub mod versions;

use crate::escape::{EscapeDetector, EscapeThresholds, PhraseSet, RepetitionDetector, normalize};
use crate::speech::verifier::{PhraseKind, VerifierSettings};
use files::{LanguageFile, SettingsFile};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prompts the call brain plays, so every language must define them.
pub const REQUIRED_PROMPTS: &[&str] = &[
    "greeting",
    "reprompt_no_input",
    "reprompt_no_match",
    "connecting",
    "queue_position",
    "callback_offer",
    "callback_confirmed",
    "callback_confirmed_at",
    "callback_confirmed_tomorrow",
    "callback_ask_number",
    "callback_failed",
    "after_agent",
];

/// Placeholders a prompt's text may use, filled in when it is played.
const PLACEHOLDERS: &[(&str, &[&str])] = &[
    ("queue_position", &["position", "minutes"]),
    ("callback_confirmed_at", &["hour", "minute"]),
    ("callback_confirmed_tomorrow", &["hour", "minute"]),
];

/// The shipped prompts, compiled in, so the binary runs without a prompts folder.
const EMBEDDED: &[(&str, &str)] = &[
    (
        "humanline.toml",
        include_str!("../../prompts/humanline.toml"),
    ),
    ("en.toml", include_str!("../../prompts/en.toml")),
    ("nl.toml", include_str!("../../prompts/nl.toml")),
];

/// The longest a flow timer may be (no input, queue announcements, callback re-offers).
pub const MAX_TIMER_MS: u64 = 3_600_000;

/// One problem in the operator's files, at a position a text editor can jump to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{} problem(s) in the configuration:\n{}", .0.len(), join_lines(.0))]
    Invalid(Vec<ConfigProblem>),
}

fn join_lines(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A prompt ready to play.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub text: String,
    /// Absolute or working-directory-relative path; `None` for embedded prompts.
    pub audio: Option<PathBuf>,
    pub barge_in: bool,
}

/// A self-service topic: keywords a caller might use, and the prompt that answers them.
#[derive(Debug, Clone)]
pub struct Topic {
    pub name: String,
    pub keywords: PhraseSet,
    pub prompt: String,
}

/// Everything the brain needs in one language.
#[derive(Debug, Clone)]
pub struct Language {
    pub code: String,
    pub name: String,
    pub switch_to: PhraseSet,
    pub prompts: HashMap<String, Prompt>,
    pub yes: PhraseSet,
    pub no: PhraseSet,
    pub repetition: RepetitionDetector,
    pub topics: Vec<Topic>,
    /// What the keyword verifier scores in this language: the escape phrases and requests,
    /// and the yes/no answers.
    pub verifier_phrases: Vec<(String, PhraseKind)>,
    pub verifier: VerifierSettings,
    pub speech: SpeechSettings,
    /// An escape in a partial transcript routes at once only when the text matcher found it
    /// before the partial's last word; otherwise the next partial or the final must have an
    /// escape too (`[escape] confirm_partials` of the language's file). The last word of a
    /// partial is often a longer word cut short ("Mijn persoon." for "persoonlijke").
    pub confirm_partials: bool,
}

/// How a language is heard (`[speech]` of its file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeechSettings {
    /// Whisper model file name, in the models folder.
    pub model: String,
    /// Decoder prompt; `None`: the recognizer's own ([`crate::speech::ESCAPE_PROMPT`]).
    pub decoder_prompt: Option<String>,
    /// Beam width of this language's decodes; `None`: greedy.
    pub beam_size: Option<u32>,
}

/// The model a language uses when its file names none: English-only tiny.en for English
/// (fastest, and as accurate there: BENCHMARKS.md), the multilingual base in q8_0 for the rest.
pub fn default_model(code: &str) -> &'static str {
    if code == "en" {
        crate::speech::models::TINY_EN_FILE
    } else {
        crate::speech::models::BASE_Q8_0_FILE
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub no_input: Duration,
    pub queue_announce_interval: Duration,
    pub callback_reoffer_interval: Duration,
    /// From the end of the caller's speech to its final transcript; later, recognition is
    /// behind and the caller goes to a person instead of waiting.
    pub final_transcript: Duration,
    /// How long an agent's phone may ring.
    pub agent_ring: Duration,
    /// How long the caller's phone has to answer a probe when their media stopped.
    pub probe_answer: Duration,
    /// While a caller who answered the probe still sends no media (silence suppression,
    /// DTX), how often they are probed again.
    pub probe_interval: Duration,
}

impl Timers {
    /// Deadlines that are the server's, not the operator's: how long recognition and phones
    /// may take.
    pub const FINAL_TRANSCRIPT: Duration = Duration::from_secs(3);
    pub const AGENT_RING: Duration = Duration::from_secs(20);
    /// An OPTIONS over UDP is retransmitted at 0.5, 1, 2 and 4 s: 8 s gives it four tries.
    pub const PROBE_ANSWER: Duration = Duration::from_secs(8);
    pub const PROBE_INTERVAL: Duration = Duration::from_secs(20);
}

/// The validated flow: what every call runs on. Shared read-only (`Arc<Flow>`).
#[derive(Debug, Clone)]
pub struct Flow {
    pub default_language: String,
    pub languages: BTreeMap<String, Language>,
    /// Escape phrases of every language: a caller reaches a person whatever language they
    /// ask in.
    pub escape: EscapeDetector,
    /// A partial transcript that is an escape word alone waits for the next partial or the
    /// final to confirm it (`[escape] confirm_lone_word`).
    pub confirm_lone_word: bool,
    pub timers: Timers,
    pub offer_callback_after_wait: Duration,
    /// Where the languages' Whisper models are (`models_dir`, relative to the prompts
    /// folder; `models/` in the working directory for the embedded prompts).
    pub models_dir: PathBuf,
    /// Looped to a waiting caller between announcements (`hold_music`); without one the
    /// drivers play a soft comfort tone, never dead air.
    pub hold_music: Option<PathBuf>,
    /// The recordings' folder (`audio_dir`, relative to the prompts folder); `None` for a
    /// flow without files (embedded, in memory).
    pub audio_dir: Option<PathBuf>,
}

impl Flow {
    /// Loads and validates the prompts folder (`humanline.toml` and one `<lang>.toml` per
    /// language), checking that every audio file exists.
    pub fn load_dir(dir: &Path) -> Result<Flow, ConfigError> {
        Flow::load_dir_noting_recordings(dir).0
    }

    /// Like [`Flow::load_dir`], also answering the prompts (language, id) whose recordings
    /// are missing or say another text: what recording them again would fix.
    pub fn load_dir_noting_recordings(
        dir: &Path,
    ) -> (Result<Flow, ConfigError>, Vec<(String, String)>) {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| ConfigProblem {
                file: path.clone(),
                line: 1,
                col: 1,
                message: format!("cannot read: {e}"),
            })
        };
        let settings = match read("humanline.toml") {
            Ok(s) => s,
            Err(p) => return (Err(ConfigError::Invalid(vec![p])), Vec::new()),
        };
        Loader {
            sources: vec![(dir.join("humanline.toml"), settings)],
            dir: Some(dir),
            read: &read,
            to_record: Vec::new(),
        }
        .load_noting_recordings()
    }

    /// The shipped prompts, compiled into the binary (audio not checked: no folder).
    pub fn embedded() -> Result<Flow, ConfigError> {
        let read = |name: &str| {
            EMBEDDED
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| s.to_string())
                .ok_or_else(|| ConfigProblem {
                    file: PathBuf::from(format!("<embedded>/{name}")),
                    line: 1,
                    col: 1,
                    message: "no such embedded file".into(),
                })
        };
        let settings = read("humanline.toml").map_err(|p| ConfigError::Invalid(vec![p]))?;
        Loader {
            sources: vec![("<embedded>/humanline.toml".into(), settings)],
            dir: None,
            read: &read,
            to_record: Vec::new(),
        }
        .load()
    }

    /// A flow from texts in memory, `(file name, contents)`: `humanline.toml` and the
    /// language files it names (audio not checked: no folder). For tests and fuzzing.
    pub fn from_texts(files: &[(&str, &str)]) -> Result<Flow, ConfigError> {
        let read = |name: &str| {
            files
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| s.to_string())
                .ok_or_else(|| ConfigProblem {
                    file: PathBuf::from(format!("<memory>/{name}")),
                    line: 1,
                    col: 1,
                    message: "no such file".into(),
                })
        };
        let settings = read("humanline.toml").map_err(|p| ConfigError::Invalid(vec![p]))?;
        Loader {
            sources: vec![("<memory>/humanline.toml".into(), settings)],
            dir: None,
            read: &read,
            to_record: Vec::new(),
        }
        .load()
    }

    /// The prompts folder `dir` if given, else `prompts/` if it holds a humanline.toml, else
    /// the embedded prompts: what the command-line tools run with.
    pub fn load_dir_or_embedded(dir: Option<&Path>) -> Result<Flow, ConfigError> {
        match dir {
            Some(d) => Flow::load_dir(d),
            None if Path::new("prompts/humanline.toml").is_file() => {
                Flow::load_dir(Path::new("prompts"))
            }
            None => Flow::embedded(),
        }
    }

    /// What each language is heard with: its `[speech]` model in the models folder
    /// (`$HUMANLINE_MODELS_DIR` if set, else `models_dir`) and its decoder prompt, or the one
    /// model `every` for all languages (a `--model` flag).
    pub fn speech_specs(&self, every: Option<&Path>) -> Vec<crate::speech::LanguageSpec> {
        let models_dir =
            crate::speech::models::models_dir_override().unwrap_or_else(|| self.models_dir.clone());
        let models_dir = models_dir.as_path();
        self.languages
            .values()
            .map(|l| crate::speech::LanguageSpec {
                code: l.code.clone(),
                model: every.map_or_else(|| models_dir.join(&l.speech.model), Path::to_path_buf),
                prompt: l.speech.decoder_prompt.clone(),
                beam_size: l.speech.beam_size,
            })
            .collect()
    }

    pub fn language(&self, code: &str) -> Option<&Language> {
        self.languages.get(code)
    }

    pub fn default_language(&self) -> &Language {
        // Validation guarantees the default language exists.
        &self.languages[&self.default_language]
    }
}

type Reader<'a> = &'a dyn Fn(&str) -> Result<String, ConfigProblem>;

struct Loader<'a> {
    sources: Vec<(PathBuf, String)>,
    dir: Option<&'a Path>,
    read: Reader<'a>,
    /// Prompts (language, id) whose recordings are missing or say another text.
    to_record: Vec<(String, String)>,
}

impl Loader<'_> {
    fn load(self) -> Result<Flow, ConfigError> {
        self.load_noting_recordings().0
    }

    /// The flow, and the prompts (language, id) whose recordings are missing or say another
    /// text: what recording them again would fix.
    fn load_noting_recordings(mut self) -> (Result<Flow, ConfigError>, Vec<(String, String)>) {
        let flow = self.load_inner();
        (flow, std::mem::take(&mut self.to_record))
    }

    fn load_inner(&mut self) -> Result<Flow, ConfigError> {
        let mut problems = Vec::new();
        let (settings_path, settings_text) = self.sources.remove(0);
        let at = |path: &Path, text: &str, span: Range<usize>, message: String| {
            let (line, col) = line_col(text, span.start);
            ConfigProblem {
                file: path.to_path_buf(),
                line,
                col,
                message,
            }
        };
        let settings: SettingsFile = match toml::from_str(&settings_text) {
            Ok(s) => s,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                return Err(ConfigError::Invalid(vec![at(
                    &settings_path,
                    &settings_text,
                    span,
                    e.message().trim().to_string(),
                )]));
            }
        };
        let sp =
            |span: Range<usize>, message: String| at(&settings_path, &settings_text, span, message);

        for (value, name) in [
            (&settings.escape.fuzzy_letters, "escape.fuzzy_letters"),
            (&settings.escape.fuzzy_sound, "escape.fuzzy_sound"),
            (&settings.repetition.threshold, "repetition.threshold"),
        ] {
            if !(0.0..=1.0).contains(value.get_ref()) {
                problems.push(sp(value.span(), format!("{name} must be between 0 and 1")));
            }
        }
        for (value, name) in [
            (&settings.timers.no_input_ms, "timers.no_input_ms"),
            (
                &settings.timers.queue_announce_interval_ms,
                "timers.queue_announce_interval_ms",
            ),
            (
                &settings.timers.callback_reoffer_interval_ms,
                "timers.callback_reoffer_interval_ms",
            ),
        ] {
            // Timers are added to the clock: an unbounded one overflows it (a panic), and
            // one of hours is a caller left waiting for nothing.
            if !(500..=MAX_TIMER_MS).contains(value.get_ref()) {
                problems.push(sp(
                    value.span(),
                    format!("{name} must be between 500 and {MAX_TIMER_MS} ms (one hour)"),
                ));
            }
        }
        if settings.languages.get_ref().is_empty() {
            problems.push(sp(
                settings.languages.span(),
                "list at least one language".into(),
            ));
        }
        if !settings
            .languages
            .get_ref()
            .contains(settings.default_language.get_ref())
        {
            problems.push(sp(
                settings.default_language.span(),
                format!(
                    "default language `{}` is not in `languages`",
                    settings.default_language.get_ref()
                ),
            ));
        }

        let audio_root = self.dir.map(|d| d.join(&settings.audio_dir));
        let models_dir = self.dir.map_or_else(
            || PathBuf::from(crate::speech::models::MODELS_DIR),
            |d| d.join(&settings.models_dir),
        );
        let hold_music = match (&settings.hold_music, &audio_root) {
            (Some(file), Some(root)) => {
                let path = root.join(file.get_ref());
                if let Err(m) = check_wav(&path) {
                    problems.push(sp(file.span(), m));
                }
                Some(path)
            }
            _ => None,
        };
        let mut manifests = recordings::Manifests::default();
        let mut languages = BTreeMap::new();
        let mut escape_phrases = Vec::new();
        let mut sounds_like = Vec::new();
        let mut requests = Vec::new();
        let repetition_threshold = *settings.repetition.threshold.get_ref();
        for code in settings.languages.get_ref() {
            let file_name = format!("{code}.toml");
            let text = match (self.read)(&file_name) {
                Ok(t) => t,
                Err(mut p) => {
                    p.message =
                        format!("language `{code}` listed in humanline.toml: {}", p.message);
                    problems.push(p);
                    continue;
                }
            };
            let path = self.dir.map_or_else(
                || PathBuf::from(format!("<embedded>/{file_name}")),
                |d| d.join(&file_name),
            );
            let file: LanguageFile = match toml::from_str(&text) {
                Ok(f) => f,
                Err(e) => {
                    problems.push(at(
                        &path,
                        &text,
                        e.span().unwrap_or(0..0),
                        e.message().trim().to_string(),
                    ));
                    continue;
                }
            };
            let lp = |span: Range<usize>, message: String| at(&path, &text, span, message);
            let mut prompts = HashMap::new();
            for (id, prompt) in file.prompts.get_ref() {
                let p = prompt.get_ref();
                check_placeholders(id, p.text.get_ref())
                    .into_iter()
                    .for_each(|m| problems.push(lp(p.text.span(), m)));
                if p.text.get_ref().split_whitespace().count() > 40 {
                    problems.push(lp(
                        p.text.span(),
                        format!("prompt `{id}` is over 40 words: keep prompts short"),
                    ));
                }
                let audio = match &audio_root {
                    Some(root) => {
                        let audio_path = root.join(p.audio.get_ref());
                        let before = problems.len();
                        match check_wav(&audio_path) {
                            Err(m) => problems.push(lp(p.audio.span(), m)),
                            Ok(()) => {
                                let said = manifests.check(&audio_path, p.text.get_ref());
                                if let Some(stale) = said {
                                    problems.push(lp(
                                        p.text.span(),
                                        stale_message(code, id, &audio_path, &stale),
                                    ));
                                }
                            }
                        }
                        for m in
                            check_parts(code, id, p.text.get_ref(), &audio_path, &mut manifests)
                        {
                            problems.push(lp(p.text.span(), m));
                        }
                        if problems.len() > before {
                            self.to_record.push((code.clone(), id.clone()));
                        }
                        Some(audio_path)
                    }
                    None => None,
                };
                prompts.insert(
                    id.clone(),
                    Prompt {
                        text: p.text.get_ref().clone(),
                        audio,
                        barge_in: p.barge_in,
                    },
                );
            }
            for required in REQUIRED_PROMPTS {
                if !prompts.contains_key(*required) {
                    problems.push(lp(
                        file.prompts.span(),
                        format!("required prompt `{required}` is not defined"),
                    ));
                }
            }
            let mut topics = Vec::new();
            for t in &file.topics {
                if !prompts.contains_key(t.prompt.get_ref()) {
                    problems.push(lp(
                        t.prompt.span(),
                        format!(
                            "topic `{}` uses prompt `{}`, which is not defined",
                            t.name,
                            t.prompt.get_ref()
                        ),
                    ));
                }
                if t.keywords.get_ref().is_empty() {
                    problems.push(lp(
                        t.keywords.span(),
                        format!("topic `{}` has no keywords", t.name),
                    ));
                }
                topics.push(Topic {
                    name: t.name.clone(),
                    keywords: PhraseSet::new(t.keywords.get_ref().iter().map(String::as_str)),
                    prompt: t.prompt.get_ref().clone(),
                });
            }
            if !crate::speech::is_language_code(code) {
                problems.push(sp(
                    settings.languages.span(),
                    format!(
                        "language code `{code}` must be two or three lowercase letters (ISO 639, as Whisper names languages)"
                    ),
                ));
            }
            let model = match &file.speech.model {
                Some(m) => {
                    let name = m.get_ref();
                    if name.trim().is_empty() || !name.ends_with(".bin") {
                        problems.push(lp(
                            m.span(),
                            format!("speech model `{name}` must name a ggml model file (ending in .bin) in the models folder"),
                        ));
                    } else if code != "en" && crate::speech::models::is_english_only(name) {
                        problems.push(lp(
                            m.span(),
                            format!(
                                "speech model `{name}` is English-only; language `{code}` needs a multilingual model such as `{}`",
                                crate::speech::models::BASE_FILE
                            ),
                        ));
                    }
                    name.clone()
                }
                None => default_model(code).to_string(),
            };
            let decoder_prompt = file.speech.decoder_prompt.as_ref().map(|p| {
                let words = p.get_ref().split_whitespace().count();
                if words == 0 || words > 60 {
                    problems.push(lp(
                        p.span(),
                        "decoder_prompt must have between 1 and 60 words".into(),
                    ));
                }
                p.get_ref().clone()
            });
            let beam_size = file.speech.beam_size.as_ref().map(|b| {
                if !(1..=8).contains(b.get_ref()) {
                    problems.push(lp(
                        b.span(),
                        format!("beam_size must be 1 to 8 (1: greedy), not {}", b.get_ref()),
                    ));
                }
                *b.get_ref()
            });
            if file.escape.phrases.get_ref().is_empty() {
                problems.push(lp(
                    file.escape.phrases.span(),
                    "list at least one escape phrase".into(),
                ));
            }
            for (heard, meant) in &file.escape.sounds_like {
                if !file
                    .escape
                    .phrases
                    .get_ref()
                    .iter()
                    .any(|p| p == meant.get_ref())
                {
                    problems.push(lp(
                        meant.span(),
                        format!(
                            "`{heard}` stands for `{}`, which is not an escape phrase",
                            meant.get_ref()
                        ),
                    ));
                }
                sounds_like.push((heard.clone(), meant.get_ref().clone()));
            }
            for request in &file.escape.requests {
                if normalize::words(request.get_ref()).is_empty() {
                    problems.push(lp(
                        request.span(),
                        format!("escape request `{}` has no words", request.get_ref()),
                    ));
                }
                requests.push(request.get_ref().clone());
            }
            escape_phrases.extend(file.escape.phrases.get_ref().iter().cloned());
            let answers = &file.answers;
            let verifier = match &file.verifier {
                Some(v) => {
                    if let Err(e) = v.get_ref().validate() {
                        problems.push(lp(v.span(), e));
                    }
                    v.get_ref().clone()
                }
                None => VerifierSettings::default(),
            };
            let escapes = file.escape.phrases.get_ref().iter();
            let whole_requests = file.escape.requests.iter().map(|r| r.get_ref());
            let verifier_phrases = escapes
                .chain(whole_requests)
                .map(|p| (p.clone(), PhraseKind::Escape))
                .chain(answers.yes.iter().map(|p| (p.clone(), PhraseKind::Yes)))
                .chain(answers.no.iter().map(|p| (p.clone(), PhraseKind::No)))
                .collect();
            languages.insert(
                code.clone(),
                Language {
                    code: code.clone(),
                    name: file.name.clone(),
                    switch_to: PhraseSet::new(file.switch_phrases.iter().map(String::as_str)),
                    prompts,
                    yes: PhraseSet::new(answers.yes.iter().map(String::as_str)),
                    no: PhraseSet::new(answers.no.iter().map(String::as_str)),
                    repetition: RepetitionDetector::new(
                        answers.stopwords.iter().map(String::as_str),
                        repetition_threshold,
                    ),
                    topics,
                    speech: SpeechSettings {
                        model,
                        decoder_prompt,
                        beam_size,
                    },
                    verifier_phrases,
                    verifier,
                    confirm_partials: file.escape.confirm_partials,
                },
            );
        }
        for e in manifests.errors {
            let (line, col) = line_col(&e.text, e.span.start);
            problems.push(ConfigProblem {
                file: e.file,
                line,
                col,
                message: e.message,
            });
        }
        if !problems.is_empty() {
            problems.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
            return Err(ConfigError::Invalid(problems));
        }
        let thresholds = EscapeThresholds {
            fuzzy_letters: *settings.escape.fuzzy_letters.get_ref(),
            fuzzy_sound: *settings.escape.fuzzy_sound.get_ref(),
            min_fuzzy_letters: settings.escape.min_fuzzy_letters,
        };
        let escape = EscapeDetector::new(
            escape_phrases.iter().map(String::as_str),
            sounds_like.iter().map(|(h, m)| (h.as_str(), m.as_str())),
            thresholds,
        )
        .with_requests(requests.iter().map(String::as_str));
        Ok(Flow {
            default_language: settings.default_language.into_inner(),
            languages,
            escape,
            confirm_lone_word: settings.escape.confirm_lone_word,
            timers: Timers {
                no_input: Duration::from_millis(*settings.timers.no_input_ms.get_ref()),
                queue_announce_interval: Duration::from_millis(
                    *settings.timers.queue_announce_interval_ms.get_ref(),
                ),
                callback_reoffer_interval: Duration::from_millis(
                    *settings.timers.callback_reoffer_interval_ms.get_ref(),
                ),
                final_transcript: Timers::FINAL_TRANSCRIPT,
                agent_ring: Timers::AGENT_RING,
                probe_answer: Timers::PROBE_ANSWER,
                probe_interval: Timers::PROBE_INTERVAL,
            },
            hold_music,
            audio_dir: audio_root,
            offer_callback_after_wait: Duration::from_millis(
                settings.callback.offer_when_wait_exceeds_ms,
            ),
            models_dir,
        })
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn check_placeholders(id: &str, text: &str) -> Vec<String> {
    let allowed = PLACEHOLDERS
        .iter()
        .find(|(p, _)| *p == id)
        .map_or(&[][..], |(_, a)| *a);
    let mut problems = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            problems.push(format!("prompt `{id}` has an unclosed `{{`"));
            break;
        };
        let name = &rest[open + 1..open + close];
        if !allowed.contains(&name) {
            let known = if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed.join(", ")
            };
            problems.push(format!(
                "prompt `{id}` uses unknown placeholder `{{{name}}}` (allowed: {known})"
            ));
        }
        rest = &rest[open + close + 1..];
    }
    problems
}

/// What to tell the operator about a recording that does not say its prompt's text.
fn stale_message(code: &str, id: &str, path: &Path, stale: &recordings::Stale) -> String {
    let redo = format!(
        "record it again (the console, or scripts/gen-prompt-audio.py --only {code} --prompt {id})"
    );
    match stale {
        recordings::Stale::Says { manifest, said } => format!(
            "prompt `{id}` ({code}): its recording {} says \"{said}\" (per {}), not this text: callers would hear the old words; {redo}",
            path.display(),
            manifest.display()
        ),
        recordings::Stale::Unlisted { manifest } => format!(
            "prompt `{id}` ({code}): {} does not say what its recording {} says: {redo}, or note its words there",
            manifest.display(),
            path.display()
        ),
    }
}

/// A prompt with placeholders is played from its parts (`<name>.<i>.wav` between them) and
/// the number clips: each part it says must be recorded, with its words, and the numbers
/// there, or callers hear words dropped.
fn check_parts(
    code: &str,
    id: &str,
    text: &str,
    whole: &Path,
    manifests: &mut recordings::Manifests,
) -> Vec<String> {
    let parts = recordings::text_parts(text);
    if parts.len() < 2 {
        return Vec::new();
    }
    let mut problems = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if !recordings::is_said(part) {
            continue;
        }
        let path = recordings::part_path(whole, i);
        match check_wav(&path) {
            Err(m) => problems.push(format!(
                "prompt `{id}` ({code}) needs a recording of \"{}\" (part {i}, between its placeholders): {m}",
                part.trim()
            )),
            Ok(()) => {
                if let Some(stale) = manifests.check(&path, part) {
                    problems.push(stale_message(code, id, &path, &stale));
                }
            }
        }
    }
    let numbers = whole.parent().map(|d| d.join("numbers"));
    if let Some(numbers) = numbers {
        let missing: Vec<String> = (1..=recordings::MAX_SPOKEN_NUMBER)
            .filter(|n| check_wav(&numbers.join(format!("{n}.wav"))).is_err())
            .map(|n| n.to_string())
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "prompt `{id}` ({code}) says numbers from {}, which has no valid recording of {}: callers would hear the number dropped",
                numbers.display(),
                missing.join(", ")
            ));
        }
    }
    problems
}

/// A prompt recording must be a mono WAV at 8 or 16 kHz: what telephone playback expects.
fn check_wav(path: &Path) -> Result<(), String> {
    let reader = hound::WavReader::open(path).map_err(|e| match e {
        hound::Error::IoError(io) => format!("audio file {} cannot be read: {io}", path.display()),
        other => format!("audio file {} is not a valid WAV: {other}", path.display()),
    })?;
    let spec = reader.spec();
    if spec.channels != 1 || !matches!(spec.sample_rate, 8000 | 16000) {
        return Err(format!(
            "audio file {} is {} Hz with {} channel(s); it must be mono at 8000 or 16000 Hz",
            path.display(),
            spec.sample_rate,
            spec.channels
        ));
    }
    if reader.duration() == 0 {
        return Err(format!("audio file {} is empty", path.display()));
    }
    Ok(())
}

/// Fills `{name}` placeholders of a prompt's text.
pub fn render(text: &str, vars: &[(&str, String)]) -> String {
    let mut out = text.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc\nd", 0), (1, 1));
        assert_eq!(line_col("a\nbc\nd", 3), (2, 2));
        assert_eq!(line_col("a\nbc\nd", 99), (3, 2));
    }

    #[test]
    fn timers_are_bounded_and_reported_at_their_line() {
        let settings = embedded("humanline.toml");
        for (key, value) in [
            ("no_input_ms = 7000", "no_input_ms = 99999999999999"),
            (
                "callback_reoffer_interval_ms = 120000",
                "callback_reoffer_interval_ms = 3600001",
            ),
            (
                "queue_announce_interval_ms = 30000",
                "queue_announce_interval_ms = 10",
            ),
        ] {
            let bad = settings.replace(key, value);
            assert_ne!(bad, settings, "humanline.toml sets {key}");
            let Err(ConfigError::Invalid(problems)) = load_with(&[("humanline.toml", bad.clone())])
            else {
                panic!("{value} accepted")
            };
            let line = bad.lines().position(|l| l == value).unwrap() + 1;
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].line, line, "{problems:?}");
            assert!(
                problems[0].message.contains("between 500 and"),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn embedded_flow_is_valid() {
        let flow = Flow::embedded().unwrap();
        assert!(flow.languages.contains_key("en") && flow.languages.contains_key("nl"));
        assert!(
            flow.escape
                .detect("ik wil een medewerker spreken")
                .is_some()
        );
    }

    /// Loads the embedded flow with some files replaced.
    fn load_with(replace: &[(&str, String)]) -> Result<Flow, ConfigError> {
        let read = |name: &str| {
            replace
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| s.clone())
                .or_else(|| {
                    EMBEDDED
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, s)| s.to_string())
                })
                .ok_or_else(|| ConfigProblem {
                    file: PathBuf::from(name),
                    line: 1,
                    col: 1,
                    message: "no such file".into(),
                })
        };
        let settings = read("humanline.toml").map_err(|p| ConfigError::Invalid(vec![p]))?;
        Loader {
            sources: vec![("humanline.toml".into(), settings)],
            dir: None,
            read: &read,
            to_record: Vec::new(),
        }
        .load()
    }

    fn embedded(name: &str) -> String {
        EMBEDDED
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1
            .to_string()
    }

    #[test]
    fn escape_requests_are_exact_phrases_and_an_empty_one_is_reported_at_its_line() {
        let flow = Flow::embedded().unwrap();
        assert!(flow.confirm_lone_word);
        let m = flow.escape.detect("customer service please").unwrap();
        assert_eq!(m.phrase, "customer service");
        let en = embedded("en.toml").replace(
            "requests = [",
            "requests = [\n  \"talk to a human\",\n  \"?!\",",
        );
        assert_ne!(en, embedded("en.toml"), "en.toml has a requests list");
        let Err(ConfigError::Invalid(problems)) = load_with(&[("en.toml", en.clone())]) else {
            panic!("an empty request must be rejected");
        };
        let line = en.lines().position(|l| l.contains("\"?!\"")).unwrap() + 1;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!((problems[0].line, problems[0].col), (line, 3));
        assert!(problems[0].message.contains("has no words"), "{problems:?}");
    }

    #[test]
    fn confirm_lone_word_can_be_turned_off_and_must_be_a_boolean() {
        let settings = embedded("humanline.toml");
        let off = settings.replace("confirm_lone_word = true", "confirm_lone_word = false");
        assert_ne!(off, settings, "humanline.toml sets confirm_lone_word");
        let flow = load_with(&[("humanline.toml", off)]).unwrap();
        assert!(!flow.confirm_lone_word);
        let bad = settings.replace("confirm_lone_word = true", "confirm_lone_word = 1");
        let Err(ConfigError::Invalid(problems)) = load_with(&[("humanline.toml", bad.clone())])
        else {
            panic!("a number is not a boolean");
        };
        let line = bad
            .lines()
            .position(|l| l.starts_with("confirm_lone_word"))
            .unwrap()
            + 1;
        assert_eq!(problems[0].line, line, "{problems:?}");
    }

    #[test]
    fn placeholders_are_checked() {
        assert!(check_placeholders("queue_position", "You are number {position}").is_empty());
        assert_eq!(check_placeholders("greeting", "Hi {name}").len(), 1);
    }
}
