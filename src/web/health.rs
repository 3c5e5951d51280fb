//! `GET /healthz`: whether the server is up, and whether the prompt files on disk are the flow
//! it runs. A change with problems is not loaded (the last valid flow keeps running), so the
//! files and the running flow then differ: that is said here, with every problem at its
//! `FILE:LINE:COL`, and counted in `humanline_prompts_disk_problems`, instead of "ok" while
//! the next restart would fail.

use super::WebState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// The prompt files on disk as the watcher last found them. Cheap to clone.
#[derive(Clone, Default)]
pub struct PromptsHealth {
    /// `None`: the files are the running flow. `Some`: why they are not.
    rejected: Arc<Mutex<Option<Vec<String>>>>,
    metrics: Option<super::Metrics>,
}

impl PromptsHealth {
    pub fn new(metrics: super::Metrics) -> Self {
        Self {
            rejected: Arc::default(),
            metrics: Some(metrics),
        }
    }

    fn set(&self, rejected: Option<Vec<String>>) {
        if let Some(m) = &self.metrics {
            m.prompts_disk_problems
                .set(rejected.as_ref().map_or(0, |p| p.len().max(1)) as i64);
        }
        *self.rejected.lock().unwrap_or_else(|p| p.into_inner()) = rejected;
    }

    /// The files on disk were loaded: they are the running flow.
    pub fn in_force(&self) {
        self.set(None);
    }

    /// The files on disk were not loaded, for these reasons; the running flow stays.
    pub fn rejected(&self, problems: Vec<String>) {
        self.set(Some(problems));
    }

    /// Why the files on disk are not the running flow, if they are not.
    pub fn problems(&self) -> Option<Vec<String>> {
        self.rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// `GET /healthz`. Calls are still served while the files on disk are rejected (with the
/// last valid flow), so the status stays 200: a load balancer must not take a node that
/// serves calls out over a typo; the body says what is wrong.
pub async fn healthz(State(s): State<WebState>) -> Response {
    if !s.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response();
    }
    match s.prompts.problems() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(problems) => {
            let mut body = format!(
                "prompts on disk not in force: the files under the prompts folder are not the running flow ({} problem(s)); calls use the last valid flow\n",
                problems.len()
            );
            for p in problems {
                body.push_str(&p);
                body.push('\n');
            }
            (StatusCode::OK, body).into_response()
        }
    }
}
