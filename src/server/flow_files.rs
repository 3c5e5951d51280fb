//! The flow task: the one place that changes the flow's files and the running flow. It
//! watches `prompts/` and the audio folder (a change that loads cleanly is the flow for new
//! calls; one with problems is refused, said in the log and on `/healthz`), and serves the
//! operator's requests (check, try, publish, roll back) one at a time, so a publish and a
//! reload never interleave. Calls keep the flow they started with ([`Shared::flow_and_audio`]):
//! a swap here changes only what new calls get.
//!
//! Every flow that runs is a version in the store: a publish, a roll back, and an edit on
//! disk that loaded (author "files on disk"), so the files and the versions never disagree
//! silently. A draft is staged in `data_dir/flow-staging` (a copy of the files with the
//! draft's changes, its changed prompts recorded there with the generator), checked, and
//! only then copied over the live files.
//!
//! On a store several nodes share (PostgreSQL) the newest version is every node's flow: each
//! node looks for a newer one as often as at its files, and makes one published (or rolled
//! back to) on another node live here once it loads, from the store's copy of its files. One
//! that does not load here is refused once, in the log, and the running flow stays.

use super::{PromptAudio, Shared};
use crate::brain::trial::{HeardEvent, MAX_EVENTS, try_hearing, try_saying};
use crate::callbacks::unix_now;
use crate::config::versions::{
    DISK_AUTHOR, FlowFiles, PROMPTS_ROOT, Snapshot, Version, VersionStore, diff,
};
use crate::config::{ConfigError, ConfigProblem, Flow};
use crate::web::{AuditWaiting, FlowRefused, FlowReply, FlowRequest, FlowRequests};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};
use tracing::{error, info, warn};

/// How often the files (and a shared store's newest version) are looked at.
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// The recorder (espeak-ng through scripts/gen-prompt-audio.py) may take this long.
const RECORD_WITHIN: Duration = Duration::from_secs(90);
/// A draft file's largest size.
const MAX_DRAFT_FILE: usize = 256 * 1024;

pub(crate) struct FlowTask {
    shared: Arc<Shared>,
    prompts: PathBuf,
    staging: PathBuf,
    store: Option<Box<dyn VersionStore>>,
    last: Vec<(PathBuf, u64, Option<SystemTime>)>,
    /// The version running now, if known.
    running: Option<i64>,
    /// The store is shared with other nodes: follow its newest version.
    follow: bool,
    /// The newest version when it did not load here (not tried again).
    refused: Option<i64>,
    /// Recordings uploaded for the draft (by flow path, `audio/en/greeting.wav`), already in
    /// the shipped format: staged with every check and publish until one is published.
    uploads: BTreeMap<String, Upload>,
    /// Audit entries the web side made, to write (`write_audit`).
    audit: Arc<std::sync::Mutex<AuditWaiting>>,
    /// Recordings being heard now, each on a thread of its own (`hear`).
    hearing: Arc<std::sync::atomic::AtomicUsize>,
}

/// A recording an operator uploaded for a prompt.
struct Upload {
    language: String,
    prompt: String,
    wav: Vec<u8>,
}

/// Recordings waiting in a draft at most (a flow has a few dozen prompts).
const MAX_UPLOADS: usize = 64;
/// An uploaded prompt recording's longest and shortest length.
const MAX_UPLOAD_SECS: f32 = 60.0;
/// Audio tried ("what does Humanline hear?") at most: a caller's few sentences.
const MAX_HEAR_SECS: f32 = 30.0;
const MIN_AUDIO_SECS: f32 = 0.3;
/// Quieter than this at its loudest, a recording is silence.
const SILENT_PEAK: f32 = 0.01;
/// How long one decode of tried audio may take (queue wait included).
const HEAR_WITHIN: Duration = Duration::from_secs(20);
/// Recordings heard at once at most: each decodes on the pool the calls use, behind their
/// finals, for about as long as it lasts.
const MAX_HEARING: usize = 2;

/// Runs the flow task on a thread of its own (its work is files, SQLite and the recorder:
/// blocking, and one at a time by design).
pub(crate) fn spawn(
    shared: Arc<Shared>,
    prompts: PathBuf,
    data_dir: &Path,
    store: Option<Box<dyn VersionStore>>,
    follow: bool,
    requests: FlowRequests,
) {
    let FlowRequests { requests, audit } = requests;
    let task = FlowTask {
        audit,
        follow,
        refused: None,
        last: fingerprint(&prompts, shared.flow().audio_dir.as_deref()),
        shared,
        prompts,
        staging: data_dir.join("flow-staging"),
        store,
        running: None,
        uploads: BTreeMap::new(),
        hearing: Arc::default(),
    };
    let spawned = std::thread::Builder::new()
        .name("flow-files".into())
        .spawn(move || task.run(requests));
    if let Err(e) = spawned {
        error!(error = %e, "the flow task did not start: prompts are not reloaded");
    }
}

/// The recognizer's events of a recording, for `try_it`: few enough, and in time order.
fn check_heard(heard: &[HeardEvent]) -> Result<(), FlowRefused> {
    if heard.len() > MAX_EVENTS {
        return Err(FlowRefused::BadRequest(format!(
            "at most {MAX_EVENTS} heard events, please (a recording of {MAX_HEAR_SECS} s has fewer)"
        )));
    }
    if heard.windows(2).any(|w| w[1].t() < w[0].t()) {
        return Err(FlowRefused::BadRequest(
            "heard events must be in time order (as `/api/flow/hear` gives them)".into(),
        ));
    }
    Ok(())
}

/// Hears `audio` (16 kHz) as a call on `pool` would, and decides on it with `flow`.
fn hear_recording(
    pool: &crate::speech::DecoderPool,
    flow: Arc<Flow>,
    language: &str,
    audio: &[f32],
    stream: u64,
    config: crate::speech::RecognizerConfig,
) -> Result<serde_json::Value, FlowRefused> {
    use super::caller_turn::{Decoding, run_turn, speech_end_ms};
    let started = Instant::now();
    let mut heard = Vec::new();
    let decoding = Decoding::Pooled {
        pool,
        within: HEAR_WITHIN,
    };
    let stats = run_turn(audio, stream, Some(language), config, decoding, |t, e| {
        heard.extend(HeardEvent::from_event(t, e));
        std::ops::ControlFlow::Continue(())
    })
    .map_err(|e| match e {
        crate::speech::SpeechError::Behind { .. } | crate::speech::SpeechError::Overloaded { .. } => {
            FlowRefused::Busy(format!(
                "speech recognition is busy with calls, which come first; try again in a few seconds ({e})"
            ))
        }
        e => failed(format!("speech recognition failed: {e}")),
    })?;
    let finals: Vec<String> = stats.finals.into_iter().filter(|f| !f.is_empty()).collect();
    if finals.is_empty() {
        return Err(FlowRefused::BadRequest(
            "no words heard in the recording: only silence or noise".into(),
        ));
    }
    let published = try_hearing(flow, Some(language), &heard);
    Ok(json!({
        "language": language,
        "heard": finals.join(" "),
        "utterances": finals,
        "audio_ms": crate::speech::samples_to_ms(audio.len() as u64),
        "speech_end_ms": speech_end_ms(audio),
        "asr_ms": started.elapsed().as_millis() as u64,
        "events": heard,
        "published": published,
    }))
}

fn refused(problems: Vec<ConfigProblem>) -> FlowRefused {
    FlowRefused::Problems(problems)
}

fn failed(e: impl std::fmt::Display) -> FlowRefused {
    FlowRefused::Failed(e.to_string())
}

impl FlowTask {
    fn run(mut self, requests: Receiver<FlowRequest>) {
        if self.follow {
            self.follow_store(true);
        } else {
            self.note_version(DISK_AUTHOR, "the files the server started with");
        }
        let mut next_look = Instant::now() + WATCH_EVERY;
        loop {
            let wait = next_look.saturating_duration_since(Instant::now());
            let next = requests.recv_timeout(wait);
            // Before the request: a look at the audit log sees every entry made before it.
            self.write_audit();
            match next {
                Ok(req) => self.handle(req),
                Err(RecvTimeoutError::Timeout) => {}
                // Nobody can ask any more: keep watching the files.
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
            }
            if Instant::now() >= next_look {
                self.look();
                if self.follow {
                    self.follow_store(false);
                }
                next_look = Instant::now() + WATCH_EVERY;
            }
        }
    }

    fn files(&self) -> FlowFiles {
        let flow = self.shared.flow();
        FlowFiles {
            prompts: self.prompts.clone(),
            audio: flow
                .audio_dir
                .clone()
                .unwrap_or_else(|| self.prompts.join("../audio")),
        }
    }

    /// A change on disk: reload it if it loads cleanly.
    fn look(&mut self) {
        let now = fingerprint(&self.prompts, self.shared.flow().audio_dir.as_deref());
        if now == self.last {
            return;
        }
        self.last = now;
        match self.load_live() {
            Ok(()) => {
                info!(dir = %self.prompts.display(), "prompts reloaded; new calls use them");
                self.note_version(DISK_AUTHOR, "edited on disk");
            }
            Err(problems) => {
                error!(
                    "prompts not reloaded, the running ones stay: {} problem(s):\n{}",
                    problems.len(),
                    problems.join("\n")
                );
                self.shared.prompts_health.rejected(problems);
            }
        }
    }

    /// Makes a shared store's newest version the flow here if it is not yet (published or
    /// rolled back to on another node). At start, a store with no version yet gets these files.
    fn follow_store(&mut self, starting: bool) {
        let latest = match self.store.as_ref().map(|s| s.latest()) {
            None => return,
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                warn!(error = %e, "cannot read the shared flow versions: the running flow stays");
                return;
            }
        };
        let Some(latest) = latest else {
            if starting {
                self.note_version(DISK_AUTHOR, "the files the server started with");
            }
            return;
        };
        if self.running == Some(latest.id) || self.refused == Some(latest.id) {
            return;
        }
        match self.adopt(&latest) {
            Ok(()) => {
                info!(version = latest.id, author = %latest.author, "the shared store's newest flow version is live here; new calls use it");
                self.running = Some(latest.id);
                self.refused = None;
            }
            Err(refusal) => {
                // One line, with the version named on it.
                let why = match refusal {
                    FlowRefused::Problems(p) => p
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                    FlowRefused::NotFound(m)
                    | FlowRefused::BadRequest(m)
                    | FlowRefused::Busy(m)
                    | FlowRefused::Failed(m) => m,
                };
                error!(
                    version = latest.id,
                    "the shared store's newest flow version does not load on this node, the running flow stays: {why}"
                );
                self.refused = Some(latest.id);
            }
        }
    }

    /// Makes version `v` live here after checking it loads, prompts and recordings, in the
    /// staging folder: what does not load never replaces the running flow.
    fn adopt(&mut self, v: &Version) -> Result<(), FlowRefused> {
        let live = self.files();
        if live.snapshot().map_err(failed)?.tree == v.tree {
            // These files already (a folder the nodes share): the watcher loads them.
            return Ok(());
        }
        let snap = self.snapshot_of(v)?;
        let staged = self.staged_files(&live)?;
        write_tree(&staged, &snap).map_err(failed)?;
        let flow = Flow::load_dir(&staged.prompts)
            .map_err(|ConfigError::Invalid(p)| refused(unstage(p, &staged, &live)))?;
        PromptAudio::load(&flow).map_err(|e| failed(format!("{e:#}")))?;
        self.install(&staged)
    }

    /// Version `v`'s files, from the store.
    fn snapshot_of(&self, v: &Version) -> Result<Snapshot, FlowRefused> {
        let store = self.store()?;
        let mut snap = Snapshot {
            tree: v.tree.clone(),
            blobs: BTreeMap::new(),
        };
        for hash in v.tree.values() {
            let bytes = store
                .blob(hash)
                .map_err(failed)?
                .ok_or_else(|| failed(format!("version {} lacks a file ({hash})", v.id)))?;
            snap.blobs.insert(hash.clone(), bytes);
        }
        Ok(snap)
    }

    /// Loads the live files and makes them the flow for new calls.
    fn load_live(&mut self) -> Result<(), Vec<String>> {
        let flow = Flow::load_dir(&self.prompts).map_err(|ConfigError::Invalid(p)| {
            p.iter().map(ToString::to_string).collect::<Vec<_>>()
        })?;
        let audio = PromptAudio::load(&flow).map_err(|e| vec![format!("{e:#}")])?;
        if let Some(engine) = &self.shared.engine
            && let Err(e) = engine.install_verifiers(&flow)
        {
            return Err(vec![format!(
                "{}: the keyword verifier's phrases do not tokenize: {e}",
                self.prompts.display()
            )]);
        }
        if let Ok(mut g) = self.shared.flow.write() {
            *g = (Arc::new(flow), Arc::new(audio));
        }
        self.shared.prompts_health.in_force();
        Ok(())
    }

    /// Stores the files on disk as a version if they differ from the latest one; answers the
    /// version running now.
    fn note_version(&mut self, author: &str, message: &str) -> Option<i64> {
        let files = self.files();
        let store = self.store.as_mut()?;
        let result = (|| {
            let snap = files.snapshot()?;
            let latest = store.latest()?;
            if let Some(v) = latest.as_ref().filter(|v| v.tree == snap.tree) {
                return Ok(v.id);
            }
            let before = latest.map(|v| v.tree).unwrap_or_default();
            let changes = {
                let store = &*store;
                let contents = |h: &str| {
                    snap.blobs
                        .get(h)
                        .cloned()
                        .or_else(|| store.blob(h).ok().flatten())
                };
                diff(&before, &snap.tree, &contents)
            };
            let id = store.add_version(unix_now(), author, message, &snap, &changes)?;
            let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
            store.audit(
                unix_now(),
                author,
                if author == DISK_AUTHOR {
                    "disk_edit"
                } else {
                    "publish"
                },
                &format!("version {id}: {message} ({})", paths.join(", ")),
            )?;
            Ok::<_, crate::config::versions::VersionError>(id)
        })();
        match result {
            Ok(id) => {
                self.running = Some(id);
                Some(id)
            }
            Err(e) => {
                warn!(error = %e, "the running flow is not stored as a version");
                None
            }
        }
    }

    fn handle(&mut self, req: FlowRequest) {
        let answer = |reply: FlowReply, r: Result<serde_json::Value, FlowRefused>| {
            let _ = reply.send(r);
        };
        match req {
            FlowRequest::Status(reply) => answer(reply, self.status()),
            FlowRequest::Versions(reply) => answer(reply, self.versions()),
            FlowRequest::Version(id, reply) => answer(reply, self.version(id)),
            FlowRequest::Audit(reply) => answer(reply, self.audit_log()),
            FlowRequest::Try {
                text,
                heard,
                language,
                files,
                reply,
            } => answer(
                reply,
                self.try_it(&text, &heard, language.as_deref(), &files),
            ),
            FlowRequest::Check { files, reply } => {
                let r = self
                    .stage(&files)
                    .map(|(_, recorded)| json!({"ok": true, "recorded": recorded}));
                answer(reply, r)
            }
            FlowRequest::Publish {
                files,
                author,
                message,
                reply,
            } => {
                let r = self.publish(&files, &author, &message);
                if let Err(FlowRefused::Problems(p)) = &r {
                    self.record(
                        &author,
                        "publish_refused",
                        &format!("{} problem(s)", p.len()),
                    );
                }
                answer(reply, r)
            }
            FlowRequest::Rollback {
                version,
                author,
                reply,
            } => answer(reply, self.rollback(version, &author)),
            FlowRequest::Upload {
                language,
                prompt,
                wav,
                author,
                reply,
            } => {
                let r = self.upload(&language, &prompt, &wav, &author);
                answer(reply, r)
            }
            FlowRequest::Discard {
                language,
                prompt,
                author,
                reply,
            } => answer(reply, self.discard(&language, &prompt, &author)),
            FlowRequest::Hear {
                language,
                wav,
                reply,
            } => {
                if let Err(refused) = self.hear(language, &wav, reply) {
                    // `hear` answers on its own thread unless it refused at once.
                    let (reply, why) = *refused;
                    answer(reply, Err(why));
                }
            }
            FlowRequest::Recording { path, draft, reply } => {
                let _ = reply.send(self.recording(&path, draft));
            }
        }
    }

    /// An entry of the task's own (a refused publish, an upload), after those waiting.
    fn record(&mut self, who: &str, action: &str, detail: &str) {
        self.write_audit();
        if let Some(store) = self.store.as_mut()
            && let Err(e) = store.audit(unix_now(), who, action, detail)
        {
            warn!(error = %e, "audit log not written");
        }
    }

    /// Writes the audit entries waiting, and how many found no room.
    fn write_audit(&mut self) {
        let (entries, dropped) = crate::sync::lock(&self.audit).take();
        let Some(store) = self.store.as_mut() else {
            return;
        };
        for e in &entries {
            if let Err(err) = store.audit(e.at, &e.who, &e.action, &e.detail) {
                warn!(error = %err, who = %e.who, action = %e.action, "audit log not written");
            }
        }
        if dropped > 0 {
            let detail = format!("{dropped} entries were not logged: the audit log was far behind");
            warn!(dropped, "audit entries not logged");
            if let Err(err) = store.audit(unix_now(), "humanline", "audit_dropped", &detail) {
                warn!(error = %err, "audit log not written");
            }
        }
    }

    fn store(&self) -> Result<&dyn VersionStore, FlowRefused> {
        self.store
            .as_deref()
            .ok_or_else(|| failed("versions are not stored (the database did not open)"))
    }

    fn status(&self) -> Result<serde_json::Value, FlowRefused> {
        let running = match (self.running, self.store.as_deref()) {
            (Some(id), Some(store)) => store.version(id).map_err(failed)?,
            _ => None,
        };
        let flow = self.shared.flow();
        let mut texts = BTreeMap::new();
        for name in prompt_file_names(&self.prompts).map_err(failed)? {
            let text = std::fs::read_to_string(self.prompts.join(&name)).map_err(failed)?;
            texts.insert(name, text);
        }
        let problems = self.shared.prompts_health.problems();
        Ok(json!({
            "running": running,
            "uploads": self.waiting_uploads(),
            "disk": {"in_force": problems.is_none(), "problems": problems.unwrap_or_default()},
            "default_language": flow.default_language,
            "languages": flow.languages.keys().collect::<Vec<_>>(),
            "files": texts,
        }))
    }

    fn versions(&self) -> Result<serde_json::Value, FlowRefused> {
        let list = self.store()?.versions(200).map_err(failed)?;
        Ok(json!({"running": self.running, "versions": list}))
    }

    fn version(&self, id: i64) -> Result<serde_json::Value, FlowRefused> {
        match self.store()?.version(id).map_err(failed)? {
            Some(v) => Ok(json!(v)),
            None => Err(FlowRefused::NotFound(format!("no version {id}"))),
        }
    }

    /// A recording of the running flow, or of the last staged draft.
    fn recording(&self, path: &str, draft: bool) -> Result<Vec<u8>, FlowRefused> {
        if !path.starts_with("audio/") || !path.ends_with(".wav") {
            return Err(FlowRefused::BadRequest(format!(
                "`{path}` is not a recording (audio/....wav)"
            )));
        }
        let live = self.files();
        let files = if draft {
            // Where the last check or publish staged the draft.
            let rel = live
                .audio
                .strip_prefix(&self.prompts)
                .map_err(failed)?
                .to_path_buf();
            let prompts = self.staging.join("a/b/c").join(PROMPTS_ROOT);
            FlowFiles {
                audio: prompts.join(rel),
                prompts,
            }
        } else {
            live
        };
        let file = files
            .on_disk(path)
            .ok_or_else(|| FlowRefused::BadRequest(format!("`{path}` is not a flow file")))?;
        std::fs::read(&file).map_err(|_| FlowRefused::NotFound(format!("no recording {path}")))
    }

    fn audit_log(&self) -> Result<serde_json::Value, FlowRefused> {
        Ok(json!({"entries": self.store()?.audit_log(500).map_err(failed)?}))
    }

    /// What a call would decide with the published flow, and with the draft (the files on
    /// disk with `files` changed; its recordings do not matter here): on what the recognizer
    /// `heard` in a recording (`hear`'s events) when given, else on `text` as typed.
    fn try_it(
        &self,
        text: &str,
        heard: &[HeardEvent],
        language: Option<&str>,
        files: &BTreeMap<String, String>,
    ) -> Result<serde_json::Value, FlowRefused> {
        check_heard(heard)?;
        let try_on = |flow: Arc<Flow>, language: Option<&str>| {
            if heard.is_empty() {
                try_saying(flow, language, text)
            } else {
                try_hearing(flow, language, heard)
            }
        };
        let published = self.shared.flow();
        if let Some(l) = language
            && published.language(l).is_none()
        {
            return Err(FlowRefused::BadRequest(format!("unknown language `{l}`")));
        }
        let mut texts = BTreeMap::new();
        for name in prompt_file_names(&self.prompts).map_err(failed)? {
            let text = std::fs::read_to_string(self.prompts.join(&name)).map_err(failed)?;
            texts.insert(name, text);
        }
        self.check_draft_names(files)?;
        texts.extend(files.iter().map(|(k, v)| (k.clone(), v.clone())));
        let pairs: Vec<(&str, &str)> = texts
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let draft = match Flow::from_texts(&pairs) {
            Ok(flow) => {
                let flow = Arc::new(flow);
                let lang = language.filter(|l| flow.language(l).is_some());
                json!(try_on(flow, lang))
            }
            Err(ConfigError::Invalid(problems)) => json!({
                "problems": problems.iter().map(crate::web::flow::problem_json).collect::<Vec<_>>()
            }),
        };
        Ok(json!({
            "text": text,
            "published": try_on(published, language),
            "draft": draft,
        }))
    }

    /// A draft names only the prompt files that exist (`en.toml`, `humanline.toml`).
    fn check_draft_names(&self, files: &BTreeMap<String, String>) -> Result<(), FlowRefused> {
        let known = prompt_file_names(&self.prompts).map_err(failed)?;
        for (name, text) in files {
            if !known.contains(name) {
                return Err(FlowRefused::BadRequest(format!(
                    "`{name}` is not one of the prompt files ({})",
                    known.join(", ")
                )));
            }
            if text.len() > MAX_DRAFT_FILE {
                return Err(FlowRefused::BadRequest(format!(
                    "`{name}` is larger than {MAX_DRAFT_FILE} bytes"
                )));
            }
        }
        Ok(())
    }

    /// Stages the files on disk with `files` changed, records the prompts whose recordings
    /// no longer say their text, and checks the result. Answers the staged files and what was
    /// recorded, or the problems (named as the live files, so the operator finds them).
    fn stage(
        &self,
        files: &BTreeMap<String, String>,
    ) -> Result<(FlowFiles, Vec<String>), FlowRefused> {
        self.check_draft_names(files)?;
        let live = self.files();
        let staged = self.staged_files(&live)?;
        let snapshot = live.snapshot().map_err(failed)?;
        write_tree(&staged, &snapshot).map_err(failed)?;
        for (name, text) in files {
            write_atomically(&staged.prompts.join(name), text.as_bytes()).map_err(failed)?;
        }
        let mut recorded = Vec::new();
        // Uploaded recordings say their prompt's (draft) text: noted so by the generator, the
        // one writer of recordings.toml, so they are not recorded over.
        let mut uploaded: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (path, up) in &self.uploads {
            let target = staged
                .on_disk(path)
                .ok_or_else(|| failed(format!("`{path}` is not a flow file")))?;
            write_atomically(&target, &up.wav).map_err(failed)?;
            uploaded
                .entry(up.language.as_str())
                .or_default()
                .push(up.prompt.clone());
            recorded.push(format!("{}/{} (uploaded)", up.language, up.prompt));
        }
        for (lang, ids) in &uploaded {
            record_prompts(
                &staged.prompts,
                &self.prompts,
                lang,
                ids,
                Recorder::NoteOnly,
            )
            .map_err(failed)?;
        }
        let (loaded, to_record) = Flow::load_dir_noting_recordings(&staged.prompts);
        let loaded = if to_record.is_empty() || loaded.is_ok() {
            loaded
        } else {
            let mut by_language: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (lang, id) in to_record {
                by_language.entry(lang).or_default().push(id);
            }
            for (lang, ids) in &by_language {
                record_prompts(&staged.prompts, &self.prompts, lang, ids, Recorder::Speak)
                    .map_err(failed)?;
                recorded.extend(ids.iter().map(|id| format!("{lang}/{id}")));
            }
            Flow::load_dir(&staged.prompts)
        };
        match loaded {
            Ok(_) => Ok((staged, recorded)),
            Err(ConfigError::Invalid(problems)) => Err(refused(unstage(problems, &staged, &live))),
        }
    }

    /// Where a draft is staged: the prompts in `staging/a/b/c/prompts` and the audio where
    /// the prompts' `audio_dir` puts it from there, so the staged files load as the live
    /// ones do.
    fn staged_files(&self, live: &FlowFiles) -> Result<FlowFiles, FlowRefused> {
        let rel = live
            .audio
            .strip_prefix(&self.prompts)
            .map_err(|_| {
                failed("publishing needs audio_dir relative to the prompts folder (as shipped: \"../audio\")")
            })?
            .to_path_buf();
        let ups = rel
            .components()
            .filter(|c| matches!(c, std::path::Component::ParentDir))
            .count();
        if ups > 3 || rel.is_absolute() {
            return Err(failed(
                "publishing needs audio_dir at most three folders up from the prompts folder",
            ));
        }
        if self.staging.exists() {
            std::fs::remove_dir_all(&self.staging).map_err(failed)?;
        }
        let prompts = self.staging.join("a/b/c").join(PROMPTS_ROOT);
        std::fs::create_dir_all(&prompts).map_err(failed)?;
        Ok(FlowFiles {
            audio: prompts.join(rel),
            prompts,
        })
    }

    /// An uploaded WAV as prompt `prompt`'s recording in `language`, for the draft: converted
    /// to the shipped format (8 kHz mono 16-bit) and staged with the next check or publish.
    fn upload(
        &mut self,
        language: &str,
        prompt: &str,
        wav: &[u8],
        author: &str,
    ) -> Result<serde_json::Value, FlowRefused> {
        use crate::config::recordings::text_parts;
        let flow = self.shared.flow();
        let lang = flow
            .language(language)
            .ok_or_else(|| FlowRefused::BadRequest(format!("unknown language `{language}`")))?;
        let p = lang.prompts.get(prompt).ok_or_else(|| {
            FlowRefused::BadRequest(format!("no prompt `{prompt}` in language `{language}`"))
        })?;
        let audio = p.audio.as_ref().ok_or_else(|| {
            FlowRefused::BadRequest(format!("prompt `{prompt}` has no recording file"))
        })?;
        if text_parts(&p.text).len() > 1 {
            return Err(FlowRefused::BadRequest(format!(
                "prompt `{prompt}` has placeholders: its recording is spliced from parts and numbers, so it is recorded by Check, not uploaded"
            )));
        }
        let live = self.files();
        let rel = audio.strip_prefix(&live.audio).map_err(|_| {
            failed(format!(
                "{} is not in the audio folder {}",
                audio.display(),
                live.audio.display()
            ))
        })?;
        let path = format!(
            "{}/{}",
            crate::config::versions::AUDIO_ROOT,
            rel.to_string_lossy()
        );
        if !self.uploads.contains_key(&path) && self.uploads.len() >= MAX_UPLOADS {
            return Err(FlowRefused::BadRequest(format!(
                "{MAX_UPLOADS} recordings are waiting in the draft already: publish first"
            )));
        }
        let (samples, rate) = readable_audio(wav, MAX_UPLOAD_SECS)?;
        let rate_out = crate::media::codec::CLOCK_RATE;
        let converted = crate::speech::resample(&samples, rate, rate_out)
            .and_then(|s| crate::speech::encode_wav_mono(&s, rate_out))
            .map_err(failed)?;
        let secs = samples.len() as f32 / rate as f32;
        info!(%path, %author, secs, "recording uploaded for the draft");
        self.record(
            author,
            "upload",
            &format!("{path} for prompt `{prompt}` ({language}), {secs:.1} s"),
        );
        self.uploads.insert(
            path.clone(),
            Upload {
                language: language.to_string(),
                prompt: prompt.to_string(),
                wav: converted,
            },
        );
        Ok(json!({
            "path": path,
            "seconds": secs,
            "from_rate": rate,
            "waiting": self.waiting_uploads(),
        }))
    }

    /// Takes prompt `prompt`'s upload in `language` out of the draft: the next check or
    /// publish stages the prompt's recording as it was (or records its changed text).
    fn discard(
        &mut self,
        language: &str,
        prompt: &str,
        author: &str,
    ) -> Result<serde_json::Value, FlowRefused> {
        let path = self
            .uploads
            .iter()
            .find(|(_, up)| up.language == language && up.prompt == prompt)
            .map(|(path, _)| path.clone())
            .ok_or_else(|| {
                FlowRefused::NotFound(format!(
                    "no uploaded recording is waiting for prompt `{prompt}` ({language})"
                ))
            })?;
        self.uploads.remove(&path);
        info!(%path, %author, "uploaded recording discarded from the draft");
        self.record(
            author,
            "upload_discarded",
            &format!("{path} for prompt `{prompt}` ({language})"),
        );
        Ok(json!({"discarded": path, "waiting": self.waiting_uploads()}))
    }

    /// The uploads waiting in the draft, as the console shows them at their prompts.
    fn waiting_uploads(&self) -> Vec<serde_json::Value> {
        self.uploads
            .iter()
            .map(|(path, up)| json!({"path": path, "language": up.language, "prompt": up.prompt}))
            .collect()
    }

    /// What Humanline hears in `wav`, decoded as a call in `language` is: its utterances
    /// through the recognizer, each final on the speech pool (that language's model).
    /// What Humanline hears in a recording, and what the published flow decides on it, as
    /// a live call would: the recognizer's partials at the server's interval, the keyword
    /// verifier's verdicts and the finals, through the call brain at the times a call would
    /// have them. Decodes on the calls' pool, on a thread of its own (it takes about as long
    /// as the recording), and answers there; refuses at once (handing `reply` back) on bad
    /// input or when `MAX_HEARING` recordings are being heard.
    fn hear(
        &self,
        language: Option<String>,
        wav: &[u8],
        reply: FlowReply,
    ) -> Result<(), Box<(FlowReply, FlowRefused)>> {
        let flow = self.shared.flow();
        let language = language.unwrap_or_else(|| flow.default_language.clone());
        if flow.language(&language).is_none() {
            let why = FlowRefused::BadRequest(format!("unknown language `{language}`"));
            return Err(Box::new((reply, why)));
        }
        let Some(pool) = self.shared.speech.clone() else {
            let why = failed("speech recognition is not running on this server");
            return Err(Box::new((reply, why)));
        };
        let audio = match readable_audio(wav, MAX_HEAR_SECS).and_then(|(samples, rate)| {
            crate::speech::resample(&samples, rate, crate::speech::SAMPLE_RATE).map_err(failed)
        }) {
            Ok(audio) => audio,
            Err(why) => return Err(Box::new((reply, why))),
        };
        let hearing = self.hearing.clone();
        let taken = hearing.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_HEARING).then_some(n + 1)
        });
        if taken.is_err() {
            let why = FlowRefused::Busy(format!(
                "{MAX_HEARING} recordings are being heard already; try again in a few seconds"
            ));
            return Err(Box::new((reply, why)));
        }
        let stream = self.shared.next_call.fetch_add(1, Ordering::Relaxed);
        let config = self.shared.recognizer.clone();
        /// Gives the place back however the hearing ends (a panic included).
        struct Place(Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Place {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let place = Place(hearing);
        let spawned = std::thread::Builder::new()
            .name("flow-hear".into())
            .spawn(move || {
                let _place = place;
                let _span = tracing::info_span!("hear", call = stream, %language).entered();
                let r = hear_recording(&pool, flow, &language, &audio, stream, config);
                let _ = reply.send(r);
            });
        // Not spawned: the closure (place and reply) is dropped, so the request is answered
        // as failed and the place is free again.
        if let Err(e) = spawned {
            error!(error = %e, "no thread to hear a recording on");
        }
        Ok(())
    }

    fn publish(
        &mut self,
        files: &BTreeMap<String, String>,
        author: &str,
        message: &str,
    ) -> Result<serde_json::Value, FlowRefused> {
        let (staged, recorded) = self.stage(files)?;
        let message = if message.trim().is_empty() {
            "published from the console"
        } else {
            message
        };
        let id = self.make_live(&staged, author, message)?;
        self.uploads.clear();
        info!(version = id, %author, "flow published; new calls use it");
        Ok(json!({"version": id, "recorded": recorded}))
    }

    fn rollback(&mut self, version: i64, author: &str) -> Result<serde_json::Value, FlowRefused> {
        let Some(v) = self.store()?.version(version).map_err(failed)? else {
            return Err(FlowRefused::NotFound(format!("no version {version}")));
        };
        let snap = self.snapshot_of(&v)?;
        let live = self.files();
        let staged = self.staged_files(&live)?;
        write_tree(&staged, &snap).map_err(failed)?;
        if let Err(ConfigError::Invalid(problems)) = Flow::load_dir(&staged.prompts) {
            return Err(refused(unstage(problems, &staged, &live)));
        }
        let id = self.make_live(&staged, author, &format!("roll back to version {version}"))?;
        info!(version = id, to = version, %author, "flow rolled back; new calls use it");
        Ok(json!({"version": id, "rolled_back_to": version}))
    }

    /// Installs the staged files ([`Self::install`]) and stores the version.
    fn make_live(
        &mut self,
        staged: &FlowFiles,
        author: &str,
        message: &str,
    ) -> Result<i64, FlowRefused> {
        self.install(staged)?;
        self.note_version(author, message)
            .ok_or_else(|| failed("published, but the version was not stored"))
    }

    /// Copies the staged files that differ over the live ones and loads them as the flow for
    /// new calls.
    fn install(&mut self, staged: &FlowFiles) -> Result<(), FlowRefused> {
        let live = self.files();
        let now = live.snapshot().map_err(failed)?;
        let wanted = staged.snapshot().map_err(failed)?;
        for (path, hash) in &wanted.tree {
            if now.tree.get(path) == Some(hash) {
                continue;
            }
            let (Some(target), Some(bytes)) = (live.on_disk(path), wanted.blobs.get(hash)) else {
                continue;
            };
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir).map_err(failed)?;
            }
            write_atomically(&target, bytes).map_err(failed)?;
        }
        // A file the version does not have (a recording or a language added since) goes:
        // otherwise a roll back would leave it behind, and the files would not be the version.
        for path in now.tree.keys().filter(|p| !wanted.tree.contains_key(*p)) {
            let Some(target) = live.on_disk(path) else {
                continue;
            };
            match std::fs::remove_file(&target) {
                Ok(()) => info!(file = %target.display(), "removed: not in the version made live"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(failed(format!("{}: {e}", target.display()))),
            }
        }
        // The watcher must not take this for an edit on disk.
        self.last = fingerprint(&self.prompts, Some(&live.audio));
        self.load_live().map_err(|p| {
            failed(format!(
                "the published files did not load: {}",
                p.join("; ")
            ))
        })
    }
}

/// A WAV's mono samples and rate, or why it is not audio an operator meant: unreadable,
/// shorter than [`MIN_AUDIO_SECS`], longer than `max_secs`, or silent.
fn readable_audio(wav: &[u8], max_secs: f32) -> Result<(Vec<f32>, u32), FlowRefused> {
    let bad = FlowRefused::BadRequest;
    let (samples, rate) = crate::speech::decode_wav_mono(wav)
        .map_err(|e| bad(format!("not a WAV recording Humanline can read: {e}")))?;
    let secs = samples.len() as f32 / rate.max(1) as f32;
    if secs < MIN_AUDIO_SECS {
        return Err(bad(format!(
            "the recording is {secs:.2} s long: too short to say anything"
        )));
    }
    if secs > max_secs {
        return Err(bad(format!(
            "the recording is {secs:.0} s long: at most {max_secs:.0} s, please"
        )));
    }
    let peak = samples.iter().fold(0f32, |m, s| m.max(s.abs()));
    if peak < SILENT_PEAK {
        return Err(bad("the recording is silent".into()));
    }
    Ok((samples, rate))
}

/// The prompt files of a folder (`*.toml`), by name.
fn prompt_file_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    Ok(names)
}

/// Writes a snapshot's files under `files`.
fn write_tree(files: &FlowFiles, snap: &Snapshot) -> std::io::Result<()> {
    for (path, hash) in &snap.tree {
        let (Some(target), Some(bytes)) = (files.on_disk(path), snap.blobs.get(hash)) else {
            continue;
        };
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&target, bytes)?;
    }
    Ok(())
}

/// A file replaced whole or not at all: a reader never sees half of it.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Problems in staged files, named as the live files they stand for.
fn unstage(
    problems: Vec<ConfigProblem>,
    staged: &FlowFiles,
    live: &FlowFiles,
) -> Vec<ConfigProblem> {
    let swap = |text: &str| {
        text.replace(
            &staged.prompts.display().to_string(),
            &live.prompts.display().to_string(),
        )
        .replace(
            &staged.audio.display().to_string(),
            &live.audio.display().to_string(),
        )
    };
    problems
        .into_iter()
        .map(|p| {
            let file = match p.file.strip_prefix(&staged.prompts) {
                Ok(rel) => live.prompts.join(rel),
                Err(_) => match p.file.strip_prefix(&staged.audio) {
                    Ok(rel) => live.audio.join(rel),
                    Err(_) => p.file.clone(),
                },
            };
            ConfigProblem {
                file,
                message: swap(&p.message),
                ..p
            }
        })
        .collect()
}

/// The prompt recorder: `$HUMANLINE_PROMPT_RECORDER`, else `scripts/gen-prompt-audio.py` next
/// to the prompts folder, beside the binary's build tree, or in the working directory.
fn recorder(live_prompts: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HUMANLINE_PROMPT_RECORDER").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let script = Path::new("scripts").join("gen-prompt-audio.py");
    let exe_repo = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent()?.parent()?.parent().map(Path::to_path_buf));
    [
        live_prompts.join("..").join(&script),
        exe_repo.map(|r| r.join(&script)).unwrap_or_default(),
        script.clone(),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// What the generator is run for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Recorder {
    /// Record the prompts with espeak-ng and note their words.
    Speak,
    /// Only note the prompts' texts as what their recordings say (uploaded ones).
    NoteOnly,
}

/// Records prompts `ids` of `lang` in the staged folder with espeak-ng (the generator
/// writes the recordings and notes their words beside them), or only notes their texts,
/// within [`RECORD_WITHIN`].
fn record_prompts(
    staged_prompts: &Path,
    live_prompts: &Path,
    lang: &str,
    ids: &[String],
    mode: Recorder,
) -> Result<(), String> {
    let script = recorder(live_prompts).ok_or(
        "the prompt recorder scripts/gen-prompt-audio.py was not found (set HUMANLINE_PROMPT_RECORDER)",
    )?;
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(&script)
        .arg("--prompts")
        .arg(staged_prompts)
        .args(["--only", lang]);
    if mode == Recorder::NoteOnly {
        cmd.arg("--note-only");
    }
    for id in ids {
        cmd.arg("--prompt").arg(id);
    }
    // Its messages go to a file: a pipe nobody reads while waiting could fill and stall it.
    let log_path = staged_prompts.with_file_name("recorder.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    let deadline = Instant::now() + RECORD_WITHIN;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                let err = std::fs::read_to_string(&log_path).unwrap_or_default();
                let err: String = err
                    .chars()
                    .rev()
                    .take(2000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                return Err(format!(
                    "recording {lang} prompts {} failed ({status}): {}",
                    ids.join(", "),
                    err.trim()
                ));
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "recording {lang} prompts took longer than {} s",
                    RECORD_WITHIN.as_secs()
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Sizes and modification times of the prompt files and recordings.
pub(super) fn fingerprint(
    dir: &Path,
    audio: Option<&Path>,
) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let audio = audio.map_or_else(|| dir.join("../audio"), Path::to_path_buf);
    for root in [dir.to_path_buf(), audio] {
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let Ok(meta) = e.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(e.path());
                } else {
                    out.push((e.path(), meta.len(), meta.modified().ok()));
                }
            }
        }
    }
    out.sort();
    out
}
