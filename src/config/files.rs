//! The on-disk shape of the operator's files, exactly as serde reads them. Fields that later
//! checks point at are `Spanned`, so a problem is reported at its line.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// `prompts/humanline.toml`: settings shared by every language.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsFile {
    pub default_language: Spanned<String>,
    pub languages: Spanned<Vec<String>>,
    /// Folder of the prompt recordings, relative to the prompts folder.
    #[serde(default = "default_audio_dir")]
    pub audio_dir: String,
    /// Folder of the Whisper models, relative to the prompts folder.
    #[serde(default = "default_models_dir")]
    pub models_dir: String,
    #[serde(default)]
    pub timers: TimersFile,
    #[serde(default)]
    pub escape: EscapeSettingsFile,
    #[serde(default)]
    pub repetition: RepetitionFile,
    #[serde(default)]
    pub callback: CallbackFile,
    /// Recording looped to a waiting caller between announcements, relative to the audio
    /// folder.
    pub hold_music: Option<Spanned<String>>,
}

fn default_audio_dir() -> String {
    "../audio".into()
}

fn default_models_dir() -> String {
    "../models".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimersFile {
    pub no_input_ms: Spanned<u64>,
    pub queue_announce_interval_ms: Spanned<u64>,
    pub callback_reoffer_interval_ms: Spanned<u64>,
}

impl Default for TimersFile {
    fn default() -> Self {
        Self {
            no_input_ms: Spanned::new(0..0, 7_000),
            queue_announce_interval_ms: Spanned::new(0..0, 30_000),
            callback_reoffer_interval_ms: Spanned::new(0..0, 120_000),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EscapeSettingsFile {
    pub fuzzy_letters: Spanned<f32>,
    pub fuzzy_sound: Spanned<f32>,
    pub min_fuzzy_letters: usize,
    /// A partial transcript that is an escape word alone routes on the second hearing (the
    /// next partial) or the final, not at once.
    pub confirm_lone_word: bool,
}

impl Default for EscapeSettingsFile {
    fn default() -> Self {
        let d = crate::escape::EscapeThresholds::default();
        Self {
            fuzzy_letters: Spanned::new(0..0, d.fuzzy_letters),
            fuzzy_sound: Spanned::new(0..0, d.fuzzy_sound),
            min_fuzzy_letters: d.min_fuzzy_letters,
            confirm_lone_word: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepetitionFile {
    pub threshold: Spanned<f32>,
}

impl Default for RepetitionFile {
    fn default() -> Self {
        Self {
            threshold: Spanned::new(0..0, 0.6),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallbackFile {
    /// Offer a callback once the estimated wait passes this.
    pub offer_when_wait_exceeds_ms: u64,
}

impl Default for CallbackFile {
    fn default() -> Self {
        Self {
            offer_when_wait_exceeds_ms: 120_000,
        }
    }
}

/// `prompts/<lang>.toml`: one language's prompts and lexicons.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanguageFile {
    /// The language's own name, said to callers ("English", "Nederlands").
    pub name: String,
    /// What a caller says to switch to this language.
    #[serde(default)]
    pub switch_phrases: Vec<String>,
    pub prompts: Spanned<BTreeMap<String, Spanned<PromptFile>>>,
    pub escape: EscapeLexiconFile,
    pub answers: AnswersFile,
    #[serde(default)]
    pub topics: Vec<TopicFile>,
    /// The keyword verifier's thresholds for this language (`[verifier]`).
    #[serde(default)]
    pub verifier: Option<Spanned<crate::speech::verifier::VerifierSettings>>,
    #[serde(default)]
    pub speech: SpeechFile,
}

/// `[speech]` of a language file: how this language is heard.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeechFile {
    /// Whisper model file, in the models folder (scripts/fetch-model.sh writes them there).
    pub model: Option<Spanned<String>>,
    /// Text the decoder is primed with: the escape words as this model should write them.
    pub decoder_prompt: Option<Spanned<String>>,
    /// Beam width of this language's decodes (1 to 8; 1 or absent: greedy).
    pub beam_size: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptFile {
    pub text: Spanned<String>,
    /// Recording, relative to the audio folder.
    pub audio: Spanned<String>,
    /// May the caller interrupt it by speaking?
    #[serde(default = "yes")]
    pub barge_in: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscapeLexiconFile {
    pub phrases: Spanned<Vec<String>>,
    /// Whole requests for a person, matched exactly only ("speak to an agent").
    #[serde(default)]
    pub requests: Vec<Spanned<String>>,
    /// What recognition writes for a phrase on phone audio -> the phrase.
    #[serde(default)]
    pub sounds_like: BTreeMap<String, Spanned<String>>,
    /// An escape found in a partial transcript waits for the next hearing when the match
    /// rests on the partial's last word (which may be a longer word cut short) or only the
    /// keyword verifier heard it.
    #[serde(default)]
    pub confirm_partials: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswersFile {
    pub yes: Vec<String>,
    pub no: Vec<String>,
    /// Words that carry no request ("my", "the"), ignored when comparing for repetition.
    pub stopwords: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicFile {
    pub name: String,
    pub keywords: Spanned<Vec<String>>,
    pub prompt: Spanned<String>,
}

/// `recordings.toml` beside a folder's recordings: what each recording there says, as the
/// generator noted it (or an operator, after recording one by hand).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// File name in this folder -> the words it says.
    #[serde(default)]
    pub recordings: BTreeMap<String, String>,
}
