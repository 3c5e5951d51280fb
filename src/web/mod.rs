//! The HTTP listener: health, metrics, the callbacks API, and browser callers (`/call`, the
//! caller page `/call.html`).

pub mod call;
pub mod limits;
pub mod metrics;

use crate::callbacks::{LedgerError, PromiseState, with_ledger};
use crate::storage::SqliteStore;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
pub use call::{
    BrowserClient, BrowserEndpoint, BrowserRequest, BrowserSettings, StartRefused, StartedCall,
    normalize_origin,
};
pub use limits::{BrowserAdmission, BrowserLimits};
pub use metrics::Metrics;
use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub type SharedLedger = crate::callbacks::SharedLedger<SqliteStore>;

#[derive(Clone)]
pub struct WebState {
    pub ready: Arc<AtomicBool>,
    pub metrics: Metrics,
    pub ledger: SharedLedger,
    /// Browser callers' requests, served by the server.
    pub browser: BrowserEndpoint,
}

pub fn router(state: WebState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/callbacks", get(list_callbacks))
        .route("/api/callbacks/{id}", get(show_callback))
        .merge(call::routes())
        .with_state(state)
}

async fn healthz(State(s): State<WebState>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
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

fn api_error(status: StatusCode, message: impl Into<String>) -> Response {
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
