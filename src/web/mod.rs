//! The HTTP listener: health and metrics (open), login, the API behind it (the web console
//! grows here), and browser callers (`/call`, the caller page `/call.html`). Everything under
//! `/api` needs a login; see [`auth`].

pub mod auth;
pub mod call;
mod console;
mod dashboard;
mod desk;
pub mod flow;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod offers;

pub use desk::Desk;
pub use flow::{
    AuditEntry, AuditWaiting, FlowEndpoint, FlowRefused, FlowReply, FlowRequest, FlowRequests,
};
pub use health::PromptsHealth;

use crate::callbacks::LedgerStore;
use crate::callbacks::{LedgerError, PromiseState, with_ledger};
use auth::{Auth, Role};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
pub use call::{
    BrowserClient, BrowserEndpoint, BrowserRequest, BrowserSettings, StartRefused, StartedCall,
    normalize_origin,
};
pub use limits::{BrowserAdmission, BrowserLimits};
pub use metrics::Metrics;
use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// The ledger in whichever store the configuration chose.
pub type SharedLedger = crate::callbacks::SharedLedger<Box<dyn LedgerStore>>;

#[derive(Clone)]
pub struct WebState {
    pub ready: Arc<AtomicBool>,
    pub metrics: Metrics,
    pub ledger: SharedLedger,
    /// Browser callers' requests, served by the server.
    pub browser: BrowserEndpoint,
    pub auth: Auth,
    pub desk: Desk,
    /// Whether the prompt files on disk are the running flow (`/healthz`).
    pub prompts: PromptsHealth,
    /// The operator's flow: versions, publish, roll back (served by the server's flow task).
    pub flow: FlowEndpoint,
}

impl axum::extract::FromRef<WebState> for Auth {
    fn from_ref(s: &WebState) -> Auth {
        s.auth.clone()
    }
}

pub fn router(state: WebState) -> Router {
    let auth = state.auth.clone();
    // Callers' numbers and words: supervisors.
    let supervisor = Router::new()
        .route("/callbacks", get(list_callbacks))
        .route("/callbacks/{id}", get(show_callback))
        .route("/dashboard", get(dashboard::snapshot))
        .route("/agents/{name}/presence", post(desk::set_agent_presence))
        .route_layer(from_fn_with_state(Role::Supervisor, auth::require_role));
    let api = Router::new()
        .route("/session", get(auth::whoami))
        .route("/desk", get(desk::view))
        .route("/desk/events", get(desk::events))
        .route("/me/presence", post(desk::set_own_presence))
        .route("/me/calls/{call}/accept", post(offers::accept))
        .route("/me/calls/{call}/decline", post(offers::decline))
        .route("/me/calls/{call}/hangup", post(offers::hang_up))
        .merge(supervisor)
        .merge(flow::routes())
        // An unknown path under /api says nothing without a login either.
        .fallback(api_not_found)
        .layer(from_fn_with_state(auth.clone(), auth::require_login));
    let logout = Router::new()
        .route("/logout", post(auth::logout))
        .route_layer(from_fn_with_state(auth, auth::require_login));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(metrics))
        .route("/login", get(console::login_page).post(auth::login))
        .route("/console", get(console::console_page))
        .route("/operator", get(console::operator_page))
        .route("/dashboard", get(dashboard::page))
        .merge(logout)
        .nest("/api", api)
        .merge(call::routes())
        .with_state(state)
}

async fn api_not_found() -> Response {
    api_error(StatusCode::NOT_FOUND, "no such resource")
}

async fn metrics(State(s): State<WebState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
}

/// An error answer: `{"error": message}`.
pub(crate) fn api_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({"error": message.into()}))).into_response()
}

async fn list_callbacks(State(s): State<WebState>, Query(q): Query<ListQuery>) -> Response {
    let state = match q.state.as_deref().map(|v| PromiseState::parse(v).ok_or(v)) {
        Some(Err(bad)) => {
            let known: Vec<_> = PromiseState::ALL.iter().map(|s| s.as_str()).collect();
            return api_error(
                StatusCode::BAD_REQUEST,
                format!("unknown state `{bad}` (one of {})", known.join(", ")),
            );
        }
        Some(Ok(s)) => Some(s),
        None => None,
    };
    match with_ledger(&s.ledger, move |l| l.list(state)).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn show_callback(State(s): State<WebState>, Path(id): Path<i64>) -> Response {
    let result = with_ledger(&s.ledger, move |l| {
        let promise = l.get(id)?;
        let attempts = l.attempts(id)?;
        Ok(serde_json::json!({"promise": promise, "attempts": attempts}))
    })
    .await;
    match result {
        Ok(v) => Json(v).into_response(),
        Err(LedgerError::NotFound(id)) => {
            api_error(StatusCode::NOT_FOUND, format!("no callback {id}"))
        }
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
