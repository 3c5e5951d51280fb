//! What each prompt recording says. The recording generator (`scripts/gen-prompt-audio.py`)
//! notes, in a `recordings.toml` beside the recordings of a folder, the text each file was
//! made from. A prompt whose text no longer matches its recording would play the old words;
//! a prompt with placeholders whose part file is missing would drop words ("you are number
//! one, three minutes"). Both are configuration problems, reported at the prompt's text, so
//! `check-config`, the reload and the console all refuse them.

use super::files::ManifestFile;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The file beside a folder's recordings that says what each of them says.
pub const MANIFEST: &str = "recordings.toml";

/// Highest number recorded as a clip (`numbers/<n>.wav`) for a prompt's placeholders; larger
/// values are said as this one.
pub const MAX_SPOKEN_NUMBER: u64 = 60;

/// The pieces of a prompt's text between its placeholders, in order:
/// "You are number {position} in line" is `["You are number ", " in line"]`. A text without
/// placeholders is one piece. (The same split as the generator's `re.split(r"\{\w+\}")`.)
pub fn text_parts(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        parts.push(&rest[..open]);
        rest = &rest[open + close + 1..];
    }
    parts.push(rest);
    parts
}

/// Whether a piece of a prompt's text is said (and so recorded as a part file): ":" between
/// `{hour}` and `{minute}` is not.
pub fn is_said(part: &str) -> bool {
    part.chars().any(char::is_alphanumeric)
}

/// Where part `i` of the prompt recorded in `whole` is: `en/queue_position.wav` has its parts
/// in `en/queue_position.0.wav`, `.1.wav`, ...
pub fn part_path(whole: &Path, i: usize) -> PathBuf {
    let stem = whole.with_extension("");
    PathBuf::from(format!("{}.{i}.wav", stem.display()))
}

/// A folder's `recordings.toml`, read: file name -> the text it says.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    pub path: PathBuf,
    pub says: HashMap<String, String>,
}

/// The manifests of the folders a load looks at, each read once.
#[derive(Debug, Default)]
pub struct Manifests {
    folders: HashMap<PathBuf, Option<Manifest>>,
    /// Manifests that could not be read, each once.
    pub errors: Vec<ManifestError>,
}

/// Why a recording cannot be trusted to say its prompt's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    /// The manifest notes another text: the recording says the old words.
    Says { manifest: PathBuf, said: String },
    /// The folder has a manifest that does not mention this file.
    Unlisted { manifest: PathBuf },
}

impl Manifests {
    /// The manifest of `folder`, `None` when it has none (recordings made by hand, whose
    /// words nothing notes) or it cannot be read (then in `errors`).
    fn of(&mut self, folder: &Path) -> Option<&Manifest> {
        if !self.folders.contains_key(folder) {
            let loaded = read_manifest(folder).unwrap_or_else(|e| {
                self.errors.push(e);
                None
            });
            self.folders.insert(folder.to_path_buf(), loaded);
        }
        self.folders.get(folder).and_then(Option::as_ref)
    }

    /// Whether the recording at `path` says `text` (trimmed, as it was recorded), per its
    /// folder's manifest. `None` when it does or when nothing notes what it says.
    pub fn check(&mut self, path: &Path, text: &str) -> Option<Stale> {
        let (folder, name) = (path.parent()?, path.file_name()?);
        let manifest = self.of(folder)?;
        let name = name.to_string_lossy();
        match manifest.says.get(name.as_ref()) {
            Some(said) if said.trim() == text.trim() => None,
            Some(said) => Some(Stale::Says {
                manifest: manifest.path.clone(),
                said: said.clone(),
            }),
            None => Some(Stale::Unlisted {
                manifest: manifest.path.clone(),
            }),
        }
    }
}

/// A manifest that cannot be read or parsed, with where.
#[derive(Debug, Clone)]
pub struct ManifestError {
    pub file: PathBuf,
    pub text: String,
    pub span: std::ops::Range<usize>,
    pub message: String,
}

fn read_manifest(folder: &Path) -> Result<Option<Manifest>, ManifestError> {
    let path = folder.join(MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ManifestError {
                file: path,
                text: String::new(),
                span: 0..0,
                message: format!("cannot read: {e}"),
            });
        }
    };
    match toml::from_str::<ManifestFile>(&text) {
        Ok(file) => Ok(Some(Manifest {
            path,
            says: file.recordings.into_iter().collect(),
        })),
        Err(e) => Err(ManifestError {
            file: path,
            span: e.span().unwrap_or(0..0),
            message: e.message().trim().to_string(),
            text,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_parts_split_at_placeholders_as_the_generator_does() {
        assert_eq!(
            text_parts("You are number {position} in line. About {minutes} minutes."),
            ["You are number ", " in line. About ", " minutes."]
        );
        assert_eq!(
            text_parts("Booked for {hour}:{minute} today."),
            ["Booked for ", ":", " today."]
        );
        assert!(!is_said(":"));
        assert_eq!(text_parts("No placeholders."), ["No placeholders."]);
        assert_eq!(
            part_path(Path::new("a/en/queue_position.wav"), 1),
            Path::new("a/en/queue_position.1.wav")
        );
    }

    #[test]
    fn a_recording_is_stale_when_its_manifest_notes_other_words_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(MANIFEST),
            "[recordings]\n\"greeting.wav\" = \"Hello there.\"\n",
        )
        .unwrap();
        let mut m = Manifests::default();
        let greeting = dir.path().join("greeting.wav");
        assert_eq!(m.check(&greeting, " Hello there. "), None);
        assert!(matches!(
            m.check(&greeting, "Hello you."),
            Some(Stale::Says { said, .. }) if said == "Hello there."
        ));
        assert!(matches!(
            m.check(&dir.path().join("other.wav"), "x"),
            Some(Stale::Unlisted { .. })
        ));
        // A folder without a manifest: nothing notes what its recordings say.
        let bare = tempfile::tempdir().unwrap();
        assert_eq!(m.check(&bare.path().join("a.wav"), "x"), None);
        // A broken one is reported once, and checks nothing.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join(MANIFEST), "[recordings]\n\"a.wav\" = 3\n").unwrap();
        assert_eq!(m.check(&other.path().join("a.wav"), "x"), None);
        assert_eq!(m.check(&other.path().join("a.wav"), "x"), None);
        assert_eq!(m.errors.len(), 1, "{:?}", m.errors);
        assert_eq!(m.errors[0].file, other.path().join(MANIFEST));
    }
}
