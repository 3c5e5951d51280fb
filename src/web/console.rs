//! The console's pages: `/login` (the form; `POST /login` is the JSON login itself),
//! `/console` (agents) and `/operator` (the flow), which without a session send the browser to
//! `/login`. The pages hold no data:
//! everything they show comes from `/api` with the session.

use super::auth::Auth;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const LOGIN: &str = include_str!("pages/login.html");
const CONSOLE: &str = include_str!("pages/console.html");
const OPERATOR: &str = include_str!("pages/operator.html");

/// Pages may not be framed by another site (clickjacking) and load nothing from elsewhere.
pub(super) fn page(html: &'static str) -> Response {
    with_page_headers((StatusCode::OK, html).into_response())
}

/// [`page`] for a page made for this request.
pub(super) fn page_owned(html: String) -> Response {
    with_page_headers((StatusCode::OK, html).into_response())
}

fn with_page_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `GET /login`.
pub async fn login_page() -> Response {
    page(LOGIN)
}

/// `GET /operator`: the flow (prompts, escape words, timers; try, publish, roll back).
pub async fn operator_page(State(auth): State<Auth>, req: Request) -> Response {
    if auth.logged_in(req.headers()).await {
        page(OPERATOR)
    } else {
        (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, "/login?next=/operator")],
        )
            .into_response()
    }
}

/// `GET /console`.
pub async fn console_page(State(auth): State<Auth>, req: Request) -> Response {
    if auth.logged_in(req.headers()).await {
        page(CONSOLE)
    } else {
        (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response()
    }
}
