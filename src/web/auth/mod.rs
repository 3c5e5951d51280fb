//! Login for everything not public: users with argon2 password hashes, sessions in an
//! HttpOnly, SameSite=Strict cookie (Secure when configured), a CSRF token and an Origin
//! check on every change, a login rate limit per user name and per address, and roles.
//!
//! `POST /login` (`{"name", "password"}`) answers the session's CSRF token; `POST /logout`
//! ends it; `GET /api/session` says who is logged in. Everything under `/api` needs a
//! session ([`require_login`]); some of it a role ([`require_role`]).

mod limiter;
pub mod password;
mod session;
mod users;

pub use limiter::{LoginLimiter, LoginLimits};
pub use session::{Session, Sessions};
pub use users::{MAX_NAME_CHARS, Role, User, UserError, UserStore, valid_name};

use super::api_error as error;
use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SESSION_COOKIE: &str = "humanline_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A login request's body is a name and a password: nothing bigger is read.
const MAX_LOGIN_BODY: usize = 4096;

pub type SharedUsers = Arc<Mutex<Box<dyn UserStore>>>;

/// Runs `f` on the users table off the async threads.
pub async fn with_users<T: Send + 'static>(
    users: &SharedUsers,
    f: impl FnOnce(&mut dyn UserStore) -> Result<T, UserError> + Send + 'static,
) -> Result<T, UserError> {
    let users = users.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = users.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut **guard)
    })
    .await
    .map_err(|e| UserError::Storage(e.to_string()))?
}

/// `[auth]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Mark the session cookie `Secure` (behind TLS: a reverse proxy in front of Humanline).
    pub secure_cookie: bool,
    pub session_idle: Duration,
    pub session_max_age: Duration,
    pub limits: LoginLimits,
    /// Origins besides Humanline's own (the `Host` it was reached at) allowed to make
    /// changes, e.g. "https://console.example.com" behind a proxy.
    pub allowed_origins: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            secure_cookie: false,
            session_idle: Duration::from_secs(8 * 3600),
            session_max_age: Duration::from_secs(24 * 3600),
            limits: LoginLimits::default(),
            allowed_origins: Vec::new(),
        }
    }
}

/// Where logins are recorded: (who, action, detail).
pub type AuditHook = Box<dyn Fn(&str, &str, &str) + Send + Sync>;

struct Inner {
    users: SharedUsers,
    sessions: Mutex<Sessions>,
    limiter: Mutex<LoginLimiter>,
    config: AuthConfig,
    /// The audit log of logins, once the server set one.
    audit: std::sync::OnceLock<AuditHook>,
}

/// Login state shared by the HTTP handlers. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

use crate::sync::lock;

fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Auth {
    pub fn new(users: SharedUsers, config: AuthConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                users,
                sessions: Mutex::new(Sessions::new(config.session_idle, config.session_max_age)),
                limiter: Mutex::new(LoginLimiter::new(config.limits)),
                config,
                audit: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Records every login, failed login and logout with `hook` from now on.
    pub fn set_audit(&self, hook: AuditHook) {
        let _ = self.inner.audit.set(hook);
    }

    fn audit(&self, who: &str, action: &str, detail: &str) {
        if let Some(hook) = self.inner.audit.get() {
            hook(who, action, detail);
        }
    }

    pub fn users(&self) -> &SharedUsers {
        &self.inner.users
    }

    /// `Some(retry_after)` while guesses for `user` or from `ip` are refused (every login
    /// path shares the limit: console, API, SIP REGISTER).
    pub fn login_refused(&self, user: &str, ip: IpAddr) -> Option<Duration> {
        lock(&self.inner.limiter).refused(user, ip, Instant::now())
    }

    pub fn login_failed(&self, user: &str, ip: IpAddr) {
        lock(&self.inner.limiter).failed(user, ip, Instant::now());
    }

    /// A change may come only from Humanline's own pages (or a configured origin). Browsers
    /// send `Origin` on every cross-origin request and on same-origin POSTs; a request
    /// without it is from a program, not a page another site made a browser send (those
    /// still need the CSRF token).
    pub fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
                Some(site) => site == "same-origin" || site == "none",
                None => true,
            };
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        // The configured origins are normalized (`crate::web::normalize_origin`): so is
        // the page's, or `https://Console.Example:443` would not be `https://console.example`.
        if crate::web::normalize_origin(origin)
            .is_ok_and(|o| o != "*" && self.inner.config.allowed_origins.contains(&o))
        {
            return true;
        }
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let own = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        matches!((own, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
    }

    fn session_cookie(&self, id: &str, max_age: Duration) -> HeaderValue {
        let secure = if self.inner.config.secure_cookie {
            "; Secure"
        } else {
            ""
        };
        let v = format!(
            "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            max_age.as_secs()
        );
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The live session a request carries, with the user's role as stored now (a user
    /// removed meanwhile has none).
    async fn session_of(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let id = cookie(headers, SESSION_COOKIE)?.to_string();
        let mut session = lock(&self.inner.sessions).touch(&id, Instant::now())?;
        let name = session.user.clone();
        match with_users(&self.inner.users, move |u| u.get(&name)).await {
            Ok(Some(user)) => {
                session.role = user.role;
                Some((id, session))
            }
            Ok(None) => {
                lock(&self.inner.sessions).remove_user(&session.user);
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read users");
                None
            }
        }
    }

    /// The request's live session, if it carries one (with the user's role as stored now).
    pub async fn session(&self, headers: &HeaderMap) -> Option<Session> {
        self.session_of(headers).await.map(|(_, s)| s)
    }

    /// Whether the request carries a live session.
    pub async fn logged_in(&self, headers: &HeaderMap) -> bool {
        self.session_of(headers).await.is_some()
    }

    async fn login(&self, ip: IpAddr, headers: &HeaderMap, body: &[u8]) -> Response {
        #[derive(Deserialize)]
        struct Login {
            name: String,
            password: String,
        }
        if !self.origin_allowed(headers) {
            return error(StatusCode::FORBIDDEN, "cross-origin request refused");
        }
        let Ok(Login { name, password }) = serde_json::from_slice::<Login>(body) else {
            return error(
                StatusCode::BAD_REQUEST,
                "expected JSON {\"name\": ..., \"password\": ...}",
            );
        };
        if let Some(wait) = self.login_refused(&name, ip) {
            tracing::warn!(user = %name.chars().take(64).collect::<String>(), %ip, "login refused: too many failures");
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed logins; try again later",
            );
            let secs = wait.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        let lookup = name.clone();
        let user = with_users(&self.inner.users, move |u| {
            if valid_name(&lookup) {
                u.get(&lookup)
            } else {
                Ok(None)
            }
        })
        .await;
        let user = match user {
            Ok(u) => u,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let verified = tokio::task::spawn_blocking(move || match user {
            Some(u) if password::verify(&password, &u.password_hash) => Some(u),
            Some(_) => None,
            None => {
                password::verify_nobody(&password);
                None
            }
        })
        .await
        .ok()
        .flatten();
        let Some(user) = verified else {
            self.login_failed(&name, ip);
            self.audit(&name, "login_failed", &format!("from {ip}"));
            tracing::info!(%ip, "login failed");
            return error(StatusCode::UNAUTHORIZED, "wrong user name or password");
        };
        lock(&self.inner.limiter).succeeded(&name);
        let (id, session) =
            lock(&self.inner.sessions).create(&user.name, user.role, Instant::now());
        tracing::info!(user = %user.name, role = %user.role, "logged in");
        self.audit(&user.name, "login", &format!("as {} from {ip}", user.role));
        let mut r = Json(serde_json::json!({
            "user": user.name, "role": user.role, "csrf": session.csrf,
        }))
        .into_response();
        r.headers_mut().insert(
            header::SET_COOKIE,
            self.session_cookie(&id, self.inner.config.session_max_age),
        );
        r
    }
}

/// `POST /login`.
pub async fn login(State(auth): State<Auth>, req: Request) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_LOGIN_BODY).await else {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "login body too large");
    };
    auth.login(ip, &parts.headers, &body).await
}

/// `POST /logout` (behind [`require_login`]).
pub async fn logout(State(auth): State<Auth>, req: Request) -> Response {
    if let Some(user) = req.extensions().get::<Session>() {
        auth.audit(&user.user, "logout", "");
    }
    if let Some(id) = cookie(req.headers(), SESSION_COOKIE) {
        lock(&auth.inner.sessions).remove(id);
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, auth.session_cookie("", Duration::ZERO));
    r
}

/// `GET /api/session`: who is logged in, and the CSRF token for changes.
pub async fn whoami(req: Request) -> Response {
    match req.extensions().get::<Session>() {
        Some(s) => Json(serde_json::json!({"user": s.user, "role": s.role, "csrf": s.csrf}))
            .into_response(),
        None => error(StatusCode::UNAUTHORIZED, "log in first"),
    }
}

/// Middleware: a live session, and for a change also an allowed Origin and its CSRF token.
/// The session is handed to the handler as a request extension.
pub async fn require_login(
    State(auth): State<Auth>,
    mut req: Request<Body>,
    next: Next,
) -> Response {
    let Some((_, session)) = auth.session_of(req.headers()).await else {
        return error(StatusCode::UNAUTHORIZED, "log in first");
    };
    if changes_state(req.method()) {
        if !auth.origin_allowed(req.headers()) {
            return error(StatusCode::FORBIDDEN, "cross-origin request refused");
        }
        let token = req
            .headers()
            .get(CSRF_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !crate::sip::digest::constant_time_eq(token, session.csrf.as_bytes()) {
            return error(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
        }
    }
    req.extensions_mut().insert(session);
    next.run(req).await
}

/// Middleware (inside [`require_login`]): the session's role must allow `needed`.
pub async fn require_role(State(needed): State<Role>, req: Request<Body>, next: Next) -> Response {
    match req.extensions().get::<Session>() {
        Some(s) if s.role.allows(needed) => next.run(req).await,
        Some(s) => error(
            StatusCode::FORBIDDEN,
            format!("this needs the {needed} role; {} is {}", s.user, s.role),
        ),
        None => error(StatusCode::UNAUTHORIZED, "log in first"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_humanlines_own_or_configured_origins_may_change_things() {
        let users: SharedUsers = Arc::new(Mutex::new(Box::new(
            crate::storage::SqliteUsers::in_memory().unwrap(),
        )));
        let auth = Auth::new(
            users,
            AuthConfig {
                allowed_origins: vec!["https://console.example".into()],
                ..AuthConfig::default()
            },
        );
        let host = ("host", "127.0.0.1:8080");
        assert!(auth.origin_allowed(&headers(&[host, ("origin", "http://127.0.0.1:8080")])));
        assert!(auth.origin_allowed(&headers(&[host, ("origin", "https://console.example")])));
        assert!(!auth.origin_allowed(&headers(&[host, ("origin", "http://evil.example")])));
        assert!(!auth.origin_allowed(&headers(&[host, ("origin", "null")])));
        assert!(!auth.origin_allowed(&headers(&[host, ("sec-fetch-site", "cross-site")])));
        assert!(auth.origin_allowed(&headers(&[host])));
        assert_eq!(
            cookie(
                &headers(&[("cookie", "a=1; humanline_session=xyz; b=2")]),
                SESSION_COOKIE
            ),
            Some("xyz")
        );
    }
}
