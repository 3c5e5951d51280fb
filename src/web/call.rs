//! Browser callers, WHIP-style (RFC 9725 conventions): `POST /call` with the browser's SDP
//! offer (`Content-Type: application/sdp`) answers `201 Created`, `Location: /call/{id}` and
//! the answer SDP; `DELETE /call/{id}` is the caller's hang-up. `GET /call.html` is the
//! caller page (a call button and the promise: say "human" at any time).
//!
//! Who may call: Humanline's own page, any client that sends no `Origin` (not a web page),
//! and the origins in the top-level `allowed_origins` (CORS). The HTTP side only checks and
//! forwards: the server (`crate::server::browser`) decides admission and answers the offer.

use super::WebState;
use crate::web::limits::BrowserLimits;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Largest offer taken (Chromium's audio-only offer is about 2 kB).
const MAX_OFFER_BYTES: usize = 32 * 1024;
/// Requests waiting for the server; beyond this, callers are told to retry.
const PENDING_REQUESTS: usize = 16;
/// How long a request waits for the server's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The caller page, served as it is.
const CALLER_PAGE: &str = include_str!("call.html");

/// `[browser]` settings, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrowserSettings {
    /// Normalized origins (`scheme://host[:port]`, lower case, default port left out); `*`
    /// allows any.
    pub allowed_origins: Vec<String>,
    pub limits: BrowserLimits,
    /// The address in our ICE candidate; `None`: the media socket's own.
    pub candidate_ip: Option<IpAddr>,
}

/// A browser as the limits see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserClient {
    pub ip: IpAddr,
    /// The page's origin, if a page placed the call.
    pub origin: Option<String>,
}

impl BrowserClient {
    /// The keys limited on their own: the IP address, and the web site.
    pub fn keys(&self) -> Vec<String> {
        let mut keys = vec![format!("ip {}", self.ip)];
        if let Some(o) = &self.origin {
            keys.push(format!("origin {o}"));
        }
        keys
    }
}

/// A call set up: its resource id and our answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedCall {
    pub resource: String,
    pub answer_sdp: String,
}

/// Why no call was set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartRefused {
    /// The offer is malformed or has nothing we can answer (400).
    BadOffer(String),
    /// A limit: 429 when it is this client's, 503 when the server's.
    Limited {
        retry_after_secs: u32,
        why: &'static str,
        per_client: bool,
    },
    /// No media port, or another server-side failure (503).
    Unavailable(String),
}

/// What the HTTP side asks of the server.
#[derive(Debug)]
pub enum BrowserRequest {
    Start {
        offer: String,
        client: BrowserClient,
        reply: oneshot::Sender<Result<StartedCall, StartRefused>>,
    },
    /// The caller hung up; the reply says whether there was such a call.
    HangUp {
        resource: String,
        reply: oneshot::Sender<bool>,
    },
}

/// The HTTP side's handle on browser calls.
#[derive(Debug, Clone)]
pub struct BrowserEndpoint {
    requests: mpsc::Sender<BrowserRequest>,
    allowed_origins: Arc<Vec<String>>,
}

impl BrowserEndpoint {
    /// The endpoint, and the requests for the server to serve.
    pub fn new(allowed_origins: Vec<String>) -> (BrowserEndpoint, mpsc::Receiver<BrowserRequest>) {
        let (tx, rx) = mpsc::channel(PENDING_REQUESTS);
        (
            BrowserEndpoint {
                requests: tx,
                allowed_origins: Arc::new(allowed_origins),
            },
            rx,
        )
    }
}

/// `scheme://host[:port]` in lower case without a default port, or why `text` is not an
/// origin. `*` stays `*`.
pub fn normalize_origin(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t == "*" {
        return Ok(t.into());
    }
    let (scheme, rest) = t
        .split_once("://")
        .ok_or_else(|| format!("`{text}` is not an origin (expected https://host[:port])"))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!("`{text}`: only http and https origins can call"));
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "`{text}` is not an origin: no path, query or user, only scheme://host[:port]"
        ));
    }
    let host = rest.to_ascii_lowercase();
    let host = match (scheme.as_str(), host.rsplit_once(':')) {
        ("http", Some((h, "80"))) | ("https", Some((h, "443"))) => h.to_string(),
        (_, Some((_, port))) if !port.is_empty() && port.parse::<u16>().is_err() => {
            return Err(format!("`{text}`: bad port `{port}`"));
        }
        _ => host,
    };
    Ok(format!("{scheme}://{host}"))
}

pub(super) fn routes() -> Router<WebState> {
    Router::new()
        .route("/call.html", get(caller_page))
        .route(
            "/call",
            post(start_call)
                .options(preflight)
                .layer(DefaultBodyLimit::max(MAX_OFFER_BYTES)),
        )
        .route(
            "/call/{id}",
            axum::routing::delete(hang_up).options(preflight),
        )
}

async fn caller_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        CALLER_PAGE,
    )
        .into_response()
}

/// How a request's origin stands.
enum Caller {
    /// Not a web page (no `Origin`), or Humanline's own page.
    Direct,
    /// An allowed other site: the answer carries CORS headers for it.
    CrossOrigin(String),
}

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    let mut m = message.into();
    m.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        m,
    )
        .into_response()
}

/// Whether the page asking may place calls; if not, why (for a 403).
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<Caller, String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(Caller::Direct);
    };
    let refused = |o: &str| format!("origin {o} may not place calls here (see allowed_origins)");
    let raw = origin.to_str().map_err(|_| refused("(unreadable)"))?;
    let origin = normalize_origin(raw).map_err(|_| refused(raw))?;
    let own = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|host| normalize_origin(&format!("http://{host}")).ok());
    if own.as_deref() == Some(origin.as_str()) {
        return Ok(Caller::Direct);
    }
    if allowed.iter().any(|a| a == "*" || *a == origin) {
        return Ok(Caller::CrossOrigin(origin));
    }
    Err(refused(raw))
}

fn with_cors(mut response: Response, caller: &Caller) -> Response {
    if let Caller::CrossOrigin(origin) = caller
        && let Ok(v) = HeaderValue::from_str(origin)
    {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Location"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

async fn preflight(State(s): State<WebState>, headers: HeaderMap) -> Response {
    let caller = match check_origin(&headers, &s.browser.allowed_origins) {
        Ok(c) => c,
        Err(why) => return text(StatusCode::FORBIDDEN, why),
    };
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    with_cors(response, &caller)
}

async fn start_call(
    State(s): State<WebState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match check_origin(&headers, &s.browser.allowed_origins) {
        Ok(c) => c,
        Err(why) => return text(StatusCode::FORBIDDEN, why),
    };
    let response = start(&s, peer, &headers, &caller, body).await;
    with_cors(response, &caller)
}

async fn start(
    s: &WebState,
    peer: SocketAddr,
    headers: &HeaderMap,
    caller: &Caller,
    body: Bytes,
) -> Response {
    if !s.ready.load(Ordering::Acquire) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting; try again shortly",
        );
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
    {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "POST /call takes an SDP offer with Content-Type: application/sdp",
        );
    }
    let Ok(offer) = String::from_utf8(body.to_vec()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "malformed SDP offer: not UTF-8 text",
        );
    };
    if !offer.trim_start().starts_with("v=0") {
        return text(
            StatusCode::BAD_REQUEST,
            "malformed SDP offer: an SDP description starts with v=0",
        );
    }
    let client = BrowserClient {
        ip: peer.ip(),
        origin: match caller {
            Caller::CrossOrigin(o) => Some(o.clone()),
            Caller::Direct => None,
        },
    };
    let (reply, answer) = oneshot::channel();
    let request = BrowserRequest::Start {
        offer,
        client,
        reply,
    };
    if s.browser.requests.try_send(request).is_err() {
        return busy(
            StatusCode::SERVICE_UNAVAILABLE,
            1,
            "too many calls being set up",
        );
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(Ok(call))) => {
            let location = format!("/call/{}", call.resource);
            let mut response = (
                StatusCode::CREATED,
                [(header::CONTENT_TYPE, "application/sdp")],
                call.answer_sdp,
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, v);
            }
            response
        }
        Ok(Ok(Err(StartRefused::BadOffer(why)))) => text(
            StatusCode::BAD_REQUEST,
            format!("malformed or unusable SDP offer: {why}"),
        ),
        Ok(Ok(Err(StartRefused::Limited {
            retry_after_secs,
            why,
            per_client,
        }))) => {
            let status = if per_client {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            busy(status, retry_after_secs, why)
        }
        Ok(Ok(Err(StartRefused::Unavailable(why)))) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot take the call: {why}"),
        ),
        Ok(Err(_)) | Err(_) => busy(StatusCode::SERVICE_UNAVAILABLE, 1, "the server is busy"),
    }
}

fn busy(status: StatusCode, retry_after_secs: u32, why: &str) -> Response {
    let mut response = text(status, format!("{why}; try again in {retry_after_secs} s"));
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

async fn hang_up(
    State(s): State<WebState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let caller = match check_origin(&headers, &s.browser.allowed_origins) {
        Ok(c) => c,
        Err(why) => return text(StatusCode::FORBIDDEN, why),
    };
    let (reply, found) = oneshot::channel();
    let request = BrowserRequest::HangUp {
        resource: id,
        reply,
    };
    if s.browser.requests.send(request).await.is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping");
    }
    let response = match tokio::time::timeout(ANSWER_TIMEOUT, found).await {
        Ok(Ok(true)) => text(StatusCode::OK, "call ended"),
        Ok(Ok(false)) => text(StatusCode::NOT_FOUND, "no such call"),
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "the server is busy"),
    };
    with_cors(response, &caller)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalized_and_non_origins_refused() {
        assert_eq!(
            normalize_origin("HTTPS://Shop.Example:443").as_deref(),
            Ok("https://shop.example")
        );
        assert_eq!(
            normalize_origin("http://127.0.0.1:8080").as_deref(),
            Ok("http://127.0.0.1:8080")
        );
        assert_eq!(normalize_origin("*").as_deref(), Ok("*"));
        for bad in [
            "shop.example",
            "ftp://shop.example",
            "https://shop.example/",
            "https://a@shop.example",
            "https://shop.example:http",
            "https://",
        ] {
            assert!(normalize_origin(bad).is_err(), "{bad}");
        }
    }

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).expect("host"));
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).expect("origin"));
        }
        h
    }

    #[test]
    fn own_page_and_listed_sites_may_call_others_not() {
        let allowed = vec!["https://shop.example".to_string()];
        let host = "127.0.0.1:8080";
        assert!(matches!(
            check_origin(&headers(None, host), &allowed),
            Ok(Caller::Direct)
        ));
        assert!(matches!(
            check_origin(&headers(Some("http://127.0.0.1:8080"), host), &allowed),
            Ok(Caller::Direct)
        ));
        assert!(matches!(
            check_origin(&headers(Some("https://shop.example"), host), &allowed),
            Ok(Caller::CrossOrigin(o)) if o == "https://shop.example"
        ));
        for other in ["https://evil.example", "null", "http://127.0.0.1:9999"] {
            let refused = check_origin(&headers(Some(other), host), &allowed);
            assert!(
                matches!(&refused, Err(why) if why.contains("may not place calls")),
                "{other}"
            );
        }
        let any = vec!["*".to_string()];
        assert!(matches!(
            check_origin(&headers(Some("https://evil.example"), host), &any),
            Ok(Caller::CrossOrigin(_))
        ));
    }
}
