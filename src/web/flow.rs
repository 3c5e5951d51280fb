//! The operator's flow over HTTP (issue 13): the running version and whether the files on
//! disk are it, checking a draft (the same checks as `check-config`, each problem at its
//! `FILE:LINE:COL`), trying a sentence on the draft and the published flow, publishing,
//! rolling back, the versions with their diffs, and the audit log.
//!
//! The server's flow task owns the files and the versions (it also watches the files), so
//! every change to them happens in one place, one at a time: this only sends it requests.
//!
//! - `GET /api/flow` (supervisor): running version, disk state, the prompt files' texts.
//! - `GET /api/flow/versions`, `GET /api/flow/versions/{id}` (supervisor).
//! - `GET /api/flow/recording?path=audio/en/greeting.wav[&draft=true]` (supervisor): listen.
//! - `POST /api/flow/try` `{"text" | "heard", "language"?, "files"?}` (supervisor): what a
//!   call would decide on the published flow and on the draft (`files`: name -> new
//!   contents), on a typed sentence or on what was heard in a recording (`heard`: the
//!   `events` that `/api/flow/hear` gave).
//! - `POST /api/flow/hear?language=en` (supervisor), a WAV as the body: what Humanline hears
//!   in it, as a live call would (partials, the keyword verifier, finals, each at its time),
//!   and what the published flow decides on that (the page then tries the same events on the
//!   draft). 503 while two recordings are being heard already.
//! - `POST /api/flow/check` `{"files"}` (operator): the draft's problems; changed texts are
//!   recorded (espeak-ng) into the draft.
//! - `POST /api/flow/upload?language=en&prompt=greeting` (operator), a WAV as the body: the
//!   prompt's recording in the draft (staged by the next check or publish).
//! - `DELETE /api/flow/upload?language=en&prompt=greeting` (operator): that upload discarded
//!   before it is published (the prompt keeps the recording it had, or gets one by Check).
//! - `POST /api/flow/publish` `{"files", "message"?}` (operator): 200 with the new version,
//!   or 422 with the problems (nothing changes).
//! - `POST /api/flow/rollback` `{"version"}` (operator).
//! - `GET /api/audit` (operator): logins and changes.

use super::api_error as error;
use super::auth::{Role, Session};
use crate::brain::trial::HeardEvent;
use crate::config::ConfigProblem;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// A request's answer from the flow task.
pub type FlowReply = oneshot::Sender<Result<serde_json::Value, FlowRefused>>;

/// What the flow task is asked.
pub enum FlowRequest {
    Status(FlowReply),
    Versions(FlowReply),
    Version(i64, FlowReply),
    Audit(FlowReply),
    Try {
        text: String,
        /// What the recognizer heard in a recording (`/api/flow/hear`'s `events`): decided
        /// on instead of `text` when not empty.
        heard: Vec<HeardEvent>,
        language: Option<String>,
        files: BTreeMap<String, String>,
        reply: FlowReply,
    },
    Check {
        files: BTreeMap<String, String>,
        reply: FlowReply,
    },
    Publish {
        files: BTreeMap<String, String>,
        author: String,
        message: String,
        reply: FlowReply,
    },
    Rollback {
        version: i64,
        author: String,
        reply: FlowReply,
    },
    /// A WAV for a prompt's recording in the draft (converted to the shipped format).
    Upload {
        language: String,
        prompt: String,
        wav: Vec<u8>,
        author: String,
        reply: FlowReply,
    },
    /// An upload waiting in the draft taken out of it again (uploaded by mistake).
    Discard {
        language: String,
        prompt: String,
        author: String,
        reply: FlowReply,
    },
    /// What Humanline hears in a WAV, decoded as a call in that language is.
    Hear {
        language: Option<String>,
        wav: Vec<u8>,
        reply: FlowReply,
    },
    /// A recording's bytes (`audio/en/greeting.wav`): the running flow's, or the draft's last
    /// staged one.
    Recording {
        path: String,
        draft: bool,
        reply: oneshot::Sender<Result<Vec<u8>, FlowRefused>>,
    },
}

/// An entry for the audit log (a login, a logout), on its way to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: crate::callbacks::UnixMs,
    pub who: String,
    pub action: String,
    pub detail: String,
}

/// Audit entries waiting for the flow task, which writes them before its next request and at
/// least every few seconds. Kept apart from the requests' queue, where a publish (seconds of
/// recording prompts) would make them wait behind it: a burst of logins during one, which an
/// audit log is for, is kept whole. At most [`AUDIT_WAITING`] wait; past that the newest are
/// counted, and the count is logged in their place.
#[derive(Debug, Default)]
pub struct AuditWaiting {
    entries: std::collections::VecDeque<AuditEntry>,
    /// Entries not kept since the last write, for want of room.
    dropped: u64,
}

impl AuditWaiting {
    /// What is waiting, taken (the waiting list is empty after).
    pub fn take(&mut self) -> (Vec<AuditEntry>, u64) {
        (
            self.entries.drain(..).collect(),
            std::mem::take(&mut self.dropped),
        )
    }
}

/// Audit entries that may wait for the flow task at most (a few MB).
pub const AUDIT_WAITING: usize = 10_000;

/// The flow task's end: the requests, and the audit entries waiting to be written.
pub struct FlowRequests {
    pub requests: std::sync::mpsc::Receiver<FlowRequest>,
    pub audit: Arc<std::sync::Mutex<AuditWaiting>>,
}

/// Why the flow task refused.
#[derive(Debug)]
pub enum FlowRefused {
    /// The draft has these problems: nothing was changed.
    Problems(Vec<ConfigProblem>),
    NotFound(String),
    BadRequest(String),
    /// Busy for now: asking again later may succeed.
    Busy(String),
    Failed(String),
}

/// Requests queued for the flow task at most (a publish records prompts: seconds).
pub const QUEUE: usize = 32;
/// How long a request may wait for its answer (recording prompts with espeak-ng included).
const ANSWER_WITHIN: Duration = Duration::from_secs(120);
/// A draft's files together (the shipped ones are about 15 kB).
const MAX_BODY: usize = 1024 * 1024;
/// An uploaded WAV (a minute of 48 kHz stereo 16-bit is 11 MB).
const MAX_WAV_BODY: usize = 12 * 1024 * 1024;

/// Where the web side sends the flow task its requests. Cheap to clone.
#[derive(Clone)]
pub struct FlowEndpoint {
    tx: std::sync::mpsc::SyncSender<FlowRequest>,
    audit: Arc<std::sync::Mutex<AuditWaiting>>,
}

impl FlowEndpoint {
    pub fn new() -> (Self, FlowRequests) {
        let (tx, requests) = std::sync::mpsc::sync_channel(QUEUE);
        let audit = Arc::new(std::sync::Mutex::new(AuditWaiting::default()));
        (
            Self {
                tx,
                audit: audit.clone(),
            },
            FlowRequests { requests, audit },
        )
    }

    /// Adds an entry to the audit log: written by the flow task before its next request (so
    /// a look at the log sees it) and within seconds otherwise.
    pub fn record(&self, who: &str, action: &str, detail: &str) {
        let mut waiting = crate::sync::lock(&self.audit);
        if waiting.entries.len() >= AUDIT_WAITING {
            waiting.dropped += 1;
            return;
        }
        waiting.entries.push_back(AuditEntry {
            at: crate::callbacks::unix_now(),
            who: who.chars().take(64).collect(),
            action: action.chars().take(64).collect(),
            detail: detail.chars().take(512).collect(),
        });
    }

    async fn ask(&self, make: impl FnOnce(FlowReply) -> FlowRequest) -> Response {
        let (reply, answer) = oneshot::channel();
        if self.tx.try_send(make(reply)).is_err() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the flow task is busy or not running; try again",
            );
        }
        match tokio::time::timeout(ANSWER_WITHIN, answer).await {
            Ok(Ok(Ok(v))) => Json(v).into_response(),
            Ok(Ok(Err(refused))) => refusal(refused),
            Ok(Err(_)) => error(StatusCode::SERVICE_UNAVAILABLE, "the flow task stopped"),
            Err(_) => error(StatusCode::GATEWAY_TIMEOUT, "the flow task did not answer"),
        }
    }
}

impl axum::extract::FromRef<super::WebState> for FlowEndpoint {
    fn from_ref(s: &super::WebState) -> FlowEndpoint {
        s.flow.clone()
    }
}

/// A problem as the console shows it at its field.
pub fn problem_json(p: &ConfigProblem) -> serde_json::Value {
    serde_json::json!({
        "file": p.file.display().to_string(),
        "line": p.line,
        "col": p.col,
        "message": p.message,
        "text": p.to_string(),
    })
}

fn refusal(r: FlowRefused) -> Response {
    match r {
        FlowRefused::Problems(problems) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(serde_json::json!({
                "error": format!("{} problem(s): nothing was changed", problems.len()),
                "problems": problems.iter().map(problem_json).collect::<Vec<_>>(),
            })),
        )
            .into_response(),
        FlowRefused::NotFound(m) => error(StatusCode::NOT_FOUND, m),
        FlowRefused::BadRequest(m) => error(StatusCode::BAD_REQUEST, m),
        FlowRefused::Busy(m) => error(StatusCode::SERVICE_UNAVAILABLE, m),
        FlowRefused::Failed(m) => error(StatusCode::INTERNAL_SERVER_ERROR, m),
    }
}

/// The routes, for inside `/api` (which needs a login).
pub fn routes() -> Router<super::WebState> {
    let supervisor = Router::new()
        .route("/flow", get(status))
        .route("/flow/versions", get(versions))
        .route("/flow/versions/{id}", get(version))
        .route("/flow/try", post(try_it))
        .route("/flow/recording", get(recording))
        .route("/flow/hear", post(hear))
        .route_layer(from_fn_with_state(
            Role::Supervisor,
            super::auth::require_role,
        ));
    let operator = Router::new()
        .route("/flow/check", post(check))
        .route("/flow/upload", post(upload).delete(discard))
        .route("/flow/publish", post(publish))
        .route("/flow/rollback", post(rollback))
        .route("/audit", get(audit))
        .route_layer(from_fn_with_state(
            Role::Operator,
            super::auth::require_role,
        ));
    supervisor.merge(operator)
}

async fn status(State(flow): State<FlowEndpoint>) -> Response {
    flow.ask(FlowRequest::Status).await
}

async fn versions(State(flow): State<FlowEndpoint>) -> Response {
    flow.ask(FlowRequest::Versions).await
}

async fn version(State(flow): State<FlowEndpoint>, Path(id): Path<i64>) -> Response {
    flow.ask(|reply| FlowRequest::Version(id, reply)).await
}

#[derive(Deserialize)]
struct RecordingQuery {
    path: String,
    #[serde(default)]
    draft: bool,
}

/// `GET /api/flow/recording?path=audio/en/greeting.wav[&draft=true]`: the WAV, to listen.
async fn recording(
    State(flow): State<FlowEndpoint>,
    axum::extract::Query(q): axum::extract::Query<RecordingQuery>,
) -> Response {
    let (reply, answer) = oneshot::channel();
    let req = FlowRequest::Recording {
        path: q.path,
        draft: q.draft,
        reply,
    };
    if flow.tx.try_send(req).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the flow task is busy; try again",
        );
    }
    match tokio::time::timeout(ANSWER_WITHIN, answer).await {
        Ok(Ok(Ok(bytes))) => (
            [
                (axum::http::header::CONTENT_TYPE, "audio/wav"),
                (axum::http::header::CACHE_CONTROL, "no-store"),
            ],
            bytes,
        )
            .into_response(),
        Ok(Ok(Err(r))) => refusal(r),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the flow task did not answer",
        ),
    }
}

async fn audit(State(flow): State<FlowEndpoint>) -> Response {
    flow.ask(FlowRequest::Audit).await
}

/// The session's user and the body as `T`, or the answer that refuses the request.
async fn session_and_body<T: serde::de::DeserializeOwned>(
    req: Request,
    expected: &str,
) -> Result<(String, T), Response> {
    let Some(user) = req.extensions().get::<Session>().map(|s| s.user.clone()) else {
        return Err(error(StatusCode::UNAUTHORIZED, "log in first"));
    };
    let Ok(body) = axum::body::to_bytes(req.into_body(), MAX_BODY).await else {
        return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"));
    };
    match serde_json::from_slice::<T>(&body) {
        Ok(v) => Ok((user, v)),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("expected JSON {expected}: {e}"),
        )),
    }
}

#[derive(Deserialize)]
struct TryBody {
    #[serde(default)]
    text: String,
    #[serde(default)]
    heard: Vec<HeardEvent>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    files: BTreeMap<String, String>,
}

async fn try_it(State(flow): State<FlowEndpoint>, req: Request) -> Response {
    let (_, body) = match session_and_body::<TryBody>(req, "{\"text\": ...}").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    flow.ask(|reply| FlowRequest::Try {
        text: body.text,
        heard: body.heard,
        language: body.language,
        files: body.files,
        reply,
    })
    .await
}

#[derive(Deserialize)]
struct DraftBody {
    #[serde(default)]
    files: BTreeMap<String, String>,
    #[serde(default)]
    message: String,
}

async fn check(State(flow): State<FlowEndpoint>, req: Request) -> Response {
    let (_, body) = match session_and_body::<DraftBody>(req, "{\"files\": {...}}").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    flow.ask(|reply| FlowRequest::Check {
        files: body.files,
        reply,
    })
    .await
}

async fn publish(State(flow): State<FlowEndpoint>, req: Request) -> Response {
    let (author, body) =
        match session_and_body::<DraftBody>(req, "{\"files\": {...}, \"message\": ...}").await {
            Ok(v) => v,
            Err(r) => return r,
        };
    flow.ask(|reply| FlowRequest::Publish {
        files: body.files,
        author,
        message: body.message.chars().take(500).collect(),
        reply,
    })
    .await
}

#[derive(Deserialize)]
struct RollbackBody {
    version: i64,
}

async fn rollback(State(flow): State<FlowEndpoint>, req: Request) -> Response {
    let (author, body) = match session_and_body::<RollbackBody>(req, "{\"version\": N}").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    flow.ask(|reply| FlowRequest::Rollback {
        version: body.version,
        author,
        reply,
    })
    .await
}

/// The session's user, the query as `Q` and the body's bytes (a WAV), or the refusal.
async fn session_query_and_wav<Q: serde::de::DeserializeOwned>(
    req: Request,
    expected: &str,
) -> Result<(String, Q, Vec<u8>), Response> {
    let Some(user) = req.extensions().get::<Session>().map(|s| s.user.clone()) else {
        return Err(error(StatusCode::UNAUTHORIZED, "log in first"));
    };
    let query = match axum::extract::Query::<Q>::try_from_uri(req.uri()) {
        Ok(q) => q.0,
        Err(e) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("expected {expected}: {e}"),
            ));
        }
    };
    let Ok(body) = axum::body::to_bytes(req.into_body(), MAX_WAV_BODY).await else {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a recording of at most {} MB, please", MAX_WAV_BODY >> 20),
        ));
    };
    if body.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "send the recording (a WAV file) as the body",
        ));
    }
    Ok((user, query, body.to_vec()))
}

#[derive(Deserialize)]
struct HearQuery {
    #[serde(default)]
    language: Option<String>,
}

/// `POST /api/flow/hear?language=en`: what Humanline hears in the WAV sent.
async fn hear(State(flow): State<FlowEndpoint>, req: Request) -> Response {
    let (_, q, wav) = match session_query_and_wav::<HearQuery>(req, "?language=CODE").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    flow.ask(|reply| FlowRequest::Hear {
        language: q.language,
        wav,
        reply,
    })
    .await
}

#[derive(Deserialize)]
struct UploadQuery {
    language: String,
    prompt: String,
}

/// `POST /api/flow/upload?language=en&prompt=greeting`: the WAV sent as that prompt's
/// recording in the draft.
async fn upload(State(flow): State<FlowEndpoint>, req: Request) -> Response {
    let (author, q, wav) =
        match session_query_and_wav::<UploadQuery>(req, "?language=CODE&prompt=NAME").await {
            Ok(v) => v,
            Err(r) => return r,
        };
    flow.ask(|reply| FlowRequest::Upload {
        language: q.language,
        prompt: q.prompt,
        wav,
        author,
        reply,
    })
    .await
}

/// `DELETE /api/flow/upload?language=en&prompt=greeting`: the upload waiting for that prompt
/// is no longer in the draft.
async fn discard(State(flow): State<FlowEndpoint>, req: Request) -> Response {
    let Some(author) = req.extensions().get::<Session>().map(|s| s.user.clone()) else {
        return error(StatusCode::UNAUTHORIZED, "log in first");
    };
    let q = match axum::extract::Query::<UploadQuery>::try_from_uri(req.uri()) {
        Ok(q) => q.0,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected ?language=CODE&prompt=NAME: {e}"),
            );
        }
    };
    flow.ask(|reply| FlowRequest::Discard {
        language: q.language,
        prompt: q.prompt,
        author,
        reply,
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of logins while the flow task is busy (a publish records prompts for
    /// seconds): every entry waits for it, more than its requests' queue holds; past the
    /// waiting room they are counted, never silently lost.
    #[test]
    fn audit_entries_wait_for_a_busy_flow_task_and_an_overflow_is_counted() {
        let (endpoint, task) = FlowEndpoint::new();
        for i in 0..QUEUE * 4 {
            endpoint.record(&format!("user{i}"), "login_failed", "from 127.0.0.1");
        }
        let (entries, dropped) = crate::sync::lock(&task.audit).take();
        assert_eq!((entries.len(), dropped), (QUEUE * 4, 0));
        assert_eq!(entries[0].who, "user0");
        assert_eq!(entries[QUEUE * 4 - 1].who, format!("user{}", QUEUE * 4 - 1));
        // The requests' queue is untouched: a look at the log still gets in.
        assert!(task.requests.try_recv().is_err());

        for _ in 0..AUDIT_WAITING + 5 {
            endpoint.record("mallory", "login_failed", "");
        }
        let (entries, dropped) = crate::sync::lock(&task.audit).take();
        assert_eq!((entries.len(), dropped), (AUDIT_WAITING, 5));
        assert_eq!(crate::sync::lock(&task.audit).take(), (Vec::new(), 0));
    }
}
