//! Flow versions: every flow that ran is a version (who, when, what changed), so an operator
//! can see what changed and roll back to any version. The files under `prompts/` and the
//! audio folder stay the source: a version is a snapshot of them (each file by its SHA-256;
//! the contents kept once per hash), taken when the console publishes or rolls back, and
//! when an edit on disk loads cleanly ("files on disk"), so the versions and the files never
//! disagree silently.

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::callbacks::UnixMs;

/// The roots of a flow's files as versions name them: `prompts/en.toml`, `audio/en/greeting.wav`.
pub const PROMPTS_ROOT: &str = "prompts";
pub const AUDIO_ROOT: &str = "audio";

/// The files of a flow: path (under [`PROMPTS_ROOT`] or [`AUDIO_ROOT`]) -> SHA-256 (hex).
pub type FileTree = BTreeMap<String, String>;

/// A snapshot of a flow's files: the tree and every file's contents by hash.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub tree: FileTree,
    pub blobs: BTreeMap<String, Vec<u8>>,
}

/// Where a flow's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowFiles {
    pub prompts: PathBuf,
    pub audio: PathBuf,
}

/// The largest file a version keeps (a recording of a minute at 16 kHz is 2 MB).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// The most files a version keeps.
pub const MAX_FILES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("version storage: {0}")]
    Storage(String),
    #[error("reading the flow's files: {0}")]
    Files(String),
    #[error("no version {0}")]
    NotFound(i64),
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::sip::digest::hex(&Sha256::digest(bytes))
}

impl FlowFiles {
    /// The file a version path names on disk, or `None` for a path outside both roots (or
    /// one that climbs out of them).
    pub fn on_disk(&self, path: &str) -> Option<PathBuf> {
        let (root, rest) = path.split_once('/')?;
        let rel = Path::new(rest);
        let plain = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain || rest.is_empty() {
            return None;
        }
        match root {
            PROMPTS_ROOT => Some(self.prompts.join(rel)),
            AUDIO_ROOT => Some(self.audio.join(rel)),
            _ => None,
        }
    }

    /// Reads every file of the flow: the `.toml` files of the prompts folder and everything
    /// under the audio folder.
    pub fn snapshot(&self) -> Result<Snapshot, VersionError> {
        let mut snap = Snapshot::default();
        let prompts = std::fs::read_dir(&self.prompts)
            .map_err(|e| VersionError::Files(format!("{}: {e}", self.prompts.display())))?;
        for e in prompts.flatten() {
            let path = e.path();
            if path.is_file() && path.extension().is_some_and(|x| x == "toml") {
                let name = e.file_name().to_string_lossy().into_owned();
                add_file(&mut snap, format!("{PROMPTS_ROOT}/{name}"), &path)?;
            }
        }
        let mut stack = vec![(self.audio.clone(), String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let entries = std::fs::read_dir(&dir)
                .map_err(|e| VersionError::Files(format!("{}: {e}", dir.display())))?;
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let path = e.path();
                let rel = format!("{prefix}{name}");
                if path.is_dir() {
                    stack.push((path, format!("{rel}/")));
                } else if path.is_file() && !name.ends_with(".tmp") {
                    add_file(&mut snap, format!("{AUDIO_ROOT}/{rel}"), &path)?;
                }
            }
        }
        Ok(snap)
    }
}

fn add_file(snap: &mut Snapshot, name: String, path: &Path) -> Result<(), VersionError> {
    if snap.tree.len() >= MAX_FILES {
        return Err(VersionError::Files(format!(
            "more than {MAX_FILES} files in the flow's folders"
        )));
    }
    let len = std::fs::metadata(path)
        .map_err(|e| VersionError::Files(format!("{}: {e}", path.display())))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(VersionError::Files(format!(
            "{} is larger than {MAX_FILE_BYTES} bytes",
            path.display()
        )));
    }
    let bytes =
        std::fs::read(path).map_err(|e| VersionError::Files(format!("{}: {e}", path.display())))?;
    let hash = sha256_hex(&bytes);
    snap.tree.insert(name, hash.clone());
    snap.blobs.insert(hash, bytes);
    Ok(())
}

/// How a file changed between two versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FileChange {
    pub path: String,
    /// `added`, `removed` or `changed`.
    pub change: String,
    /// For text files: the lines that differ, `-N: old` and `+N: new` (N the line in the old
    /// or new file). Recordings: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<String>,
}

/// What changed from `old` to `new`; `contents(hash)` gives a file's bytes (for line diffs of
/// text files).
pub fn diff(
    old: &FileTree,
    new: &FileTree,
    contents: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> Vec<FileChange> {
    let mut changes = Vec::new();
    for (path, hash) in new {
        match old.get(path) {
            None => changes.push(FileChange {
                path: path.clone(),
                change: "added".into(),
                lines: Vec::new(),
            }),
            Some(before) if before != hash => {
                let lines = if is_text(path) {
                    let text = |h: &str| {
                        contents(h)
                            .map(|b| String::from_utf8_lossy(&b).into_owned())
                            .unwrap_or_default()
                    };
                    line_diff(&text(before), &text(hash))
                } else {
                    Vec::new()
                };
                changes.push(FileChange {
                    path: path.clone(),
                    change: "changed".into(),
                    lines,
                });
            }
            Some(_) => {}
        }
    }
    for path in old.keys().filter(|p| !new.contains_key(*p)) {
        changes.push(FileChange {
            path: path.clone(),
            change: "removed".into(),
            lines: Vec::new(),
        });
    }
    changes
}

fn is_text(path: &str) -> bool {
    path.ends_with(".toml")
}

/// The most lines of a file the diff compares by longest common subsequence (cells are
/// `old × new` lines); longer files are reported as every line changed.
const MAX_DIFF_CELLS: usize = 4_000_000;

/// The lines that differ between two texts (longest common subsequence), as `-N: line` and
/// `+N: line`.
pub fn line_diff(old: &str, new: &str) -> Vec<String> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    if a.len().saturating_mul(b.len()) > MAX_DIFF_CELLS {
        let mut out: Vec<String> = a
            .iter()
            .enumerate()
            .map(|(i, l)| format!("-{}: {l}", i + 1))
            .collect();
        out.extend(
            b.iter()
                .enumerate()
                .map(|(i, l)| format!("+{}: {l}", i + 1)),
        );
        return out;
    }
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("-{}: {}", i + 1, a[i]));
            i += 1;
        } else {
            out.push(format!("+{}: {}", j + 1, b[j]));
            j += 1;
        }
    }
    out
}

/// A stored version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    pub id: i64,
    pub created_at: UnixMs,
    /// Who made it: a user's name, or `files on disk` for an edit loaded from the files.
    pub author: String,
    pub message: String,
    /// What changed from the version before.
    pub changes: Vec<FileChange>,
    #[serde(skip)]
    pub tree: FileTree,
}

/// The author of a version loaded from the files themselves (a text editor, git).
pub const DISK_AUTHOR: &str = "files on disk";

/// One line of the audit log: who did what, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: UnixMs,
    pub who: String,
    /// `login`, `login_failed`, `logout`, `publish`, `rollback`, `publish_refused`, `disk_edit`.
    pub action: String,
    pub detail: String,
}

/// Where versions and the audit log are kept: SQLite beside the ledger
/// ([`crate::storage::SqliteVersions`]); a shared store (PostgreSQL) can implement it too.
pub trait VersionStore: Send {
    /// Stores a version with the contents of its files (kept once per hash); answers its id.
    fn add_version(
        &mut self,
        created_at: UnixMs,
        author: &str,
        message: &str,
        snapshot: &Snapshot,
        changes: &[FileChange],
    ) -> Result<i64, VersionError>;
    fn version(&self, id: i64) -> Result<Option<Version>, VersionError>;
    fn latest(&self) -> Result<Option<Version>, VersionError>;
    /// The newest `limit` versions, newest first.
    fn versions(&self, limit: usize) -> Result<Vec<Version>, VersionError>;
    fn blob(&self, hash: &str) -> Result<Option<Vec<u8>>, VersionError>;
    fn audit(
        &mut self,
        at: UnixMs,
        who: &str,
        action: &str,
        detail: &str,
    ) -> Result<(), VersionError>;
    /// The newest `limit` entries, newest first.
    fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, VersionError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_diff_names_the_lines_that_changed() {
        let old = "a\nb\nc\n";
        let new = "a\nB\nc\nd\n";
        assert_eq!(line_diff(old, new), ["-2: b", "+2: B", "+4: d"]);
        assert!(line_diff(old, old).is_empty());
    }

    #[test]
    fn paths_outside_the_flow_have_no_place_on_disk() {
        let files = FlowFiles {
            prompts: "/p".into(),
            audio: "/a".into(),
        };
        assert_eq!(files.on_disk("prompts/en.toml"), Some("/p/en.toml".into()));
        assert_eq!(
            files.on_disk("audio/en/greeting.wav"),
            Some("/a/en/greeting.wav".into())
        );
        for bad in [
            "prompts/../x",
            "other/x",
            "audio/",
            "audio//etc/passwd",
            "x",
        ] {
            assert_eq!(files.on_disk(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_diff_lists_added_removed_and_changed_files() {
        let old: FileTree = [("prompts/en.toml", "1"), ("audio/x.wav", "2")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let new: FileTree = [("prompts/en.toml", "3"), ("audio/y.wav", "4")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let contents = |h: &str| {
            Some(if h == "1" {
                b"x = 1\n".to_vec()
            } else {
                b"x = 2\n".to_vec()
            })
        };
        let changes = diff(&old, &new, &contents);
        let summary: Vec<_> = changes
            .iter()
            .map(|c| (c.path.as_str(), c.change.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ("audio/y.wav", "added"),
                ("prompts/en.toml", "changed"),
                ("audio/x.wav", "removed")
            ]
        );
        assert_eq!(changes[1].lines, ["-1: x = 1", "+1: x = 2"]);
    }
}
