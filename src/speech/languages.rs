//! Each call heard in its language: a model and a decoder prompt per language, chosen per
//! decode from the job's language ([`super::DecodeJob::language`], set by the recognizer from
//! the call's language).
//!
//! English is heard best and fastest by the English-only tiny.en, Dutch needs the
//! multilingual base with the language forced and a Dutch prompt. [`LanguageEngines`] is a
//! [`Transcriber`] like a single engine, so the decoder pool and every driver stay as they are:
//! it looks up the decode's language, gives whisper that language and that language's prompt,
//! and runs the language's model. Each model file is loaded once, however many languages use it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::SpeechError;
use super::engine::{DecodeOptions, EngineOptions, Transcriber, WhisperEngine};

/// What one language is heard with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanguageSpec {
    /// ISO 639 code, as whisper names languages ("en", "nl").
    pub code: String,
    pub model: PathBuf,
    /// Decoder prompt for this language; `None`: the decode options' own.
    pub prompt: Option<String>,
    /// Beam width of this language's decodes; `None`: the decode options' own.
    pub beam_size: Option<u32>,
}

/// A language left out at load, and why.
pub type SkippedLanguage = (String, SpeechError);

#[derive(Clone)]
struct Heard {
    engine: Arc<WhisperEngine>,
    prompt: Option<String>,
    beam_size: Option<u32>,
}

/// Models per language, loaded once. Decodes in a language it does not know use the default
/// language's model (with the language still set, so a multilingual model hears it right).
pub struct LanguageEngines {
    languages: BTreeMap<String, Heard>,
    default: String,
    /// The default language's entry, for decodes in a language without one.
    fallback: Heard,
    /// Distinct models, for worker preparation.
    engines: Vec<Arc<WhisperEngine>>,
}

impl std::fmt::Debug for LanguageEngines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (code, h) in &self.languages {
            m.entry(code, &h.engine.path());
        }
        m.finish()
    }
}

impl LanguageEngines {
    /// Loads every language's model (each file once). `default` must be one of `specs`.
    pub fn load(
        specs: &[LanguageSpec],
        default: &str,
        opts: EngineOptions,
    ) -> Result<Arc<Self>, SpeechError> {
        let (engines, mut skipped) = Self::load_available(specs, default, opts);
        match skipped.pop() {
            Some((_, e)) => Err(e),
            None => engines,
        }
    }

    /// Like [`LanguageEngines::load`], but a language whose model cannot be loaded is left
    /// out (its calls are heard with the default language's model) and reported, so a server
    /// still hears the others. Fails only when the default language's model fails.
    pub fn load_available(
        specs: &[LanguageSpec],
        default: &str,
        opts: EngineOptions,
    ) -> (Result<Arc<Self>, SpeechError>, Vec<SkippedLanguage>) {
        let mut engines: Vec<Arc<WhisperEngine>> = Vec::new();
        let mut languages = BTreeMap::new();
        let mut skipped = Vec::new();
        for spec in specs {
            if !super::is_language_code(&spec.code) {
                let e =
                    SpeechError::InvalidConfig(format!("`{}` is not a language code", spec.code));
                skipped.push((spec.code.clone(), e));
                continue;
            }
            let engine = match engines.iter().find(|e| e.path() == spec.model) {
                Some(e) => Arc::clone(e),
                None => match WhisperEngine::load(&spec.model, opts.clone()) {
                    Ok(e) => {
                        engines.push(Arc::clone(&e));
                        e
                    }
                    Err(e) => {
                        skipped.push((spec.code.clone(), e));
                        continue;
                    }
                },
            };
            tracing::info!(language = %spec.code, model = %spec.model.display(), "speech model");
            languages.insert(
                spec.code.clone(),
                Heard {
                    engine,
                    prompt: spec.prompt.clone(),
                    beam_size: spec.beam_size,
                },
            );
        }
        let Some(fallback) = languages.get(default).cloned() else {
            let e = match skipped.iter().position(|(c, _)| c == default) {
                Some(i) => skipped.remove(i).1,
                None => SpeechError::InvalidConfig(format!(
                    "default language `{default}` has no speech model"
                )),
            };
            return (Err(e), skipped);
        };
        let engines = Arc::new(LanguageEngines {
            languages,
            default: default.to_string(),
            fallback,
            engines,
        });
        (Ok(engines), skipped)
    }

    /// The model a decode in `language` runs on.
    pub fn engine(&self, language: Option<&str>) -> &Arc<WhisperEngine> {
        &self.heard(language).engine
    }

    /// The languages and the model file each uses.
    pub fn models(&self) -> impl Iterator<Item = (&str, &std::path::Path)> {
        self.languages
            .iter()
            .map(|(c, h)| (c.as_str(), h.engine.path()))
    }

    /// Installs the keyword verifier of every language on each model (see
    /// [`WhisperEngine::install_verifiers`]).
    pub fn install_verifiers(&self, flow: &crate::config::Flow) -> Result<(), SpeechError> {
        for e in &self.engines {
            e.install_verifiers(flow)?;
        }
        Ok(())
    }

    pub fn default_language(&self) -> &str {
        &self.default
    }

    fn heard(&self, language: Option<&str>) -> &Heard {
        language
            .and_then(|l| self.languages.get(l))
            .unwrap_or(&self.fallback)
    }

    /// The decode options for `opts.language` (the default language when unset): whisper's
    /// language set, the language's prompt in place of the generic one when prompting, and
    /// the language's beam width unless the options set one (1 asks for greedy).
    pub fn options_for<'a>(&self, opts: &'a DecodeOptions) -> std::borrow::Cow<'a, DecodeOptions> {
        let code = opts.language.as_deref().unwrap_or(&self.default);
        let heard = self.heard(Some(code));
        let prompt = match (&opts.initial_prompt, &heard.prompt) {
            (Some(_), Some(own)) => Some(own),
            _ => None,
        };
        let beam = heard.beam_size.filter(|_| opts.beam_size == 0);
        if opts.language.as_deref() == Some(code)
            && prompt.is_none_or(|p| opts.initial_prompt.as_ref() == Some(p))
            && beam.is_none_or(|b| b == opts.beam_size)
        {
            return std::borrow::Cow::Borrowed(opts);
        }
        let mut o = opts.clone();
        o.language = Some(code.to_string());
        if let Some(p) = prompt {
            o.initial_prompt = Some(p.clone());
        }
        if let Some(b) = beam {
            o.beam_size = b;
        }
        std::borrow::Cow::Owned(o)
    }
}

impl Transcriber for LanguageEngines {
    fn transcribe(&self, audio_16k: &[f32], opts: &DecodeOptions) -> Result<String, SpeechError> {
        let opts = self.options_for(opts);
        self.engine(opts.language.as_deref())
            .transcribe(audio_16k, &opts)
    }

    fn transcribe_cancellable(
        &self,
        audio_16k: &[f32],
        opts: &DecodeOptions,
        cancel: &AtomicBool,
    ) -> Result<String, SpeechError> {
        let opts = self.options_for(opts);
        self.engine(opts.language.as_deref())
            .transcribe_cancellable(audio_16k, &opts, cancel)
    }

    // Forwarded explicitly: the trait's default would drop the verifier's verdicts, and the
    // pool calls this one, so without it no live call was ever verified.
    fn transcribe_heard(
        &self,
        audio_16k: &[f32],
        opts: &DecodeOptions,
        cancel: &AtomicBool,
    ) -> Result<super::engine::Heard, SpeechError> {
        let opts = self.options_for(opts);
        self.engine(opts.language.as_deref())
            .transcribe_heard(audio_16k, &opts, cancel)
    }

    fn prepare_worker(&self) -> Result<(), SpeechError> {
        for e in &self.engines {
            e.prepare_worker()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::speech::testutil;

    /// The decoder pool asks a [`LanguageEngines`] for `transcribe_heard`; the trait's default
    /// answers with no verdicts, so this is what keeps the keyword verifier on live calls.
    #[test]
    fn verdicts_reach_the_pool_through_the_language_engines() {
        if testutil::engine().is_none() || !testutil::have_tools() {
            return;
        }
        let Some(audio) = testutil::phone_speech("I want to talk to a human", "en-us", 150) else {
            return;
        };
        let spec = LanguageSpec {
            code: "en".into(),
            model: testutil::model_path(),
            prompt: None,
            beam_size: None,
        };
        let engines =
            LanguageEngines::load(&[spec], "en", EngineOptions::default()).expect("tiny.en loads");
        let flow = crate::config::Flow::embedded().expect("embedded flow");
        engines.install_verifiers(&flow).expect("verifiers install");
        let opts = DecodeOptions {
            language: Some("en".into()),
            ..DecodeOptions::default().with_escape_prompt()
        };
        let heard = engines
            .transcribe_heard(&audio, &opts, &AtomicBool::new(false))
            .expect("decodes");
        assert!(
            !heard.verdicts.is_empty(),
            "no verifier verdicts through LanguageEngines (heard {:?})",
            heard.text
        );
    }
}
