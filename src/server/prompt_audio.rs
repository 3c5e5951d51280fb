//! Prompt recordings loaded once, ready to play: a flow's prompts as media clips, with
//! templated prompts ("You are number {position} in line") spliced from their recorded parts
//! and number clips at play time.

use crate::config::Flow;
use crate::media::Clip;
use std::collections::HashMap;
use std::time::Duration;

use crate::config::recordings::{MAX_SPOKEN_NUMBER as MAX_NUMBER, part_path, text_parts};

#[derive(Debug, Default)]
pub struct PromptAudio {
    whole: HashMap<(String, String), Clip>,
    /// Parts between placeholders, in order (None where a part is empty).
    parts: HashMap<(String, String), Vec<Option<Clip>>>,
    numbers: HashMap<(String, u64), Clip>,
    /// Looped to waiting callers (the flow's `hold_music`, else a soft comfort tone).
    hold: Option<Clip>,
}

impl PromptAudio {
    /// Loads every prompt of every language of `flow`. A flow without audio (the embedded
    /// one) gives an empty library: prompts are then silent pauses of their spoken length.
    pub fn load(flow: &Flow) -> anyhow::Result<Self> {
        let mut lib = PromptAudio::default();
        if let Some(path) = &flow.hold_music {
            lib.hold =
                Some(Clip::load_wav(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?);
        }
        for (code, lang) in &flow.languages {
            let mut templated = false;
            for (id, prompt) in &lang.prompts {
                let Some(path) = &prompt.audio else { continue };
                let clip =
                    Clip::load_wav(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                lib.whole.insert((code.clone(), id.clone()), clip);
                let pieces = text_parts(&prompt.text).len();
                if pieces > 1 {
                    templated = true;
                    // The flow was checked: every part it says is recorded.
                    let parts = (0..pieces)
                        .map(|i| {
                            let part = part_path(path, i);
                            part.is_file().then(|| Clip::load_wav(&part).ok()).flatten()
                        })
                        .collect();
                    lib.parts.insert((code.clone(), id.clone()), parts);
                }
            }
            if templated {
                let Some(dir) = lang
                    .prompts
                    .values()
                    .find_map(|p| p.audio.as_ref())
                    .and_then(|p| p.parent())
                else {
                    continue;
                };
                for n in 1..=MAX_NUMBER {
                    if let Ok(clip) = Clip::load_wav(dir.join("numbers").join(format!("{n}.wav"))) {
                        lib.numbers.insert((code.clone(), n), clip);
                    }
                }
            }
        }
        Ok(lib)
    }

    /// What a waiting caller hears between announcements, looped.
    pub fn hold(&self) -> Vec<Clip> {
        vec![self.hold.clone().unwrap_or_else(comfort_tone)]
    }

    /// The clips that say `prompt` in `language` with these placeholder values.
    pub fn clips(
        &self,
        language: &str,
        prompt: &str,
        text: &str,
        vars: &[(String, String)],
    ) -> Vec<Clip> {
        let key = (language.to_string(), prompt.to_string());
        if let Some(parts) = self.parts.get(&key).filter(|_| !vars.is_empty()) {
            let mut clips = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                clips.extend(part.clone());
                if let Some((_, value)) = vars.get(i) {
                    // Zero is left unsaid ("fifteen hundred" is "15:00" said as "fifteen").
                    let n = value.parse::<u64>().unwrap_or(MAX_NUMBER).min(MAX_NUMBER);
                    if n > 0 {
                        clips.extend(self.numbers.get(&(language.to_string(), n)).cloned());
                    }
                }
            }
            if !clips.is_empty() {
                return clips;
            }
        }
        match self.whole.get(&key) {
            Some(clip) => vec![clip.clone()],
            // No recording: a pause as long as the text would take to say, so the flow's
            // timing still holds.
            None => vec![Clip::silence(Duration::from_millis(
                350 * text.split_whitespace().count() as u64,
            ))],
        }
    }
}

/// Without hold music: a soft 425 Hz tone swelling gently (four seconds, looped), so a
/// waiting caller hears the line is alive: never dead air, quiet enough not to annoy.
fn comfort_tone() -> Clip {
    const RATE: f32 = 8000.0;
    let samples: Vec<i16> = (0..(4.0 * RATE) as usize)
        .map(|i| {
            let t = i as f32 / RATE;
            // Between 60% and 100% of 1500, one swell per loop: seamless at the seam.
            let swell = 0.8 - 0.2 * (2.0 * std::f32::consts::PI * t / 4.0).cos();
            ((2.0 * std::f32::consts::PI * 425.0 * t).sin() * 1500.0 * swell) as i16
        })
        .collect();
    Clip::from_8k(samples)
}
