//! Server settings: a TOML file (`--config`) and command-line flags, flags winning. Defaults
//! serve on a laptop as they are: everything on 127.0.0.1, data under `data/`.

use crate::callbacks::{NumberPolicy, RetryPolicy, UTC_OFFSET_MIN_RANGE, valid_prefix};
use crate::config::{ConfigError, ConfigProblem, line_col};
use crate::media::PortRange;
use crate::nodes::Liveness;
use crate::sip::AdmissionLimits;
use crate::storage::StoreSetting;
use crate::web::auth::{AuthConfig, LoginLimits};
use crate::web::{BrowserLimits, BrowserSettings};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// `--config FILE`: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub sip_listen: Option<SocketAddr>,
    /// "LOW-HIGH", e.g. "20000-20999".
    pub rtp_ports: Option<String>,
    pub http_listen: Option<SocketAddr>,
    pub prompts: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    /// Where the callback ledger lives: "sqlite" (`callbacks.db` in `data_dir`, the default)
    /// or a "postgres://user@host:port/database" URL several nodes share.
    pub store: Option<Spanned<String>>,
    /// This node's name among several sharing one store (letters, digits, `.`, `_`, `-`);
    /// unset: each run is named by its start time and process id.
    pub node: Option<Spanned<String>>,
    /// A node not heard from for this long is dead: the others call its waiting callers back
    /// and take over its callback attempts [default: 30000].
    pub node_timeout_ms: Option<Spanned<i64>>,
    /// One Whisper model for every language; unset: each language's own `[speech] model`.
    pub model: Option<PathBuf>,
    /// Decoder threads for speech recognition.
    pub decoders: Option<usize>,
    /// Threads per decode [default: the cores divided among the decoders].
    pub decode_threads: Option<usize>,
    /// Agents' SIP URIs, longest idle rung first.
    #[serde(default)]
    pub agents: Vec<String>,
    /// Where callbacks are dialed out: the request URI carries the number.
    pub trunk: Option<String>,
    /// Local time zone, minutes east of UTC, for callers' "call me at three".
    pub utc_offset_min: Option<Spanned<i64>>,
    /// How failed callback attempts are retried before a supervisor is asked to act.
    #[serde(default)]
    pub callback_retry: RetryFile,
    /// Which numbers may be called back.
    #[serde(default)]
    pub callback_numbers: NumbersFile,
    /// Silence from a caller's media after which their phone is probed (an in-dialog OPTIONS)
    /// to tell a quiet phone (silence suppression, DTX) from a dead line [default: 30000].
    pub no_media_timeout_ms: Option<Spanned<u64>>,
    /// When new calls are refused with 503 and Retry-After.
    pub admission: Option<AdmissionFile>,
    /// Web sites besides Humanline's own (`https://host[:port]`): their pages may place
    /// browser calls (CORS of `POST /call`) and make changes in the console (its Origin
    /// check). `"*"` lets any site place calls, never make changes.
    #[serde(default)]
    pub allowed_origins: Vec<Spanned<String>>,
    /// Browser callers (`POST /call`): which web sites may place calls, and limits.
    pub browser: Option<BrowserFile>,
    /// Login: cookies, sessions, the login rate limit, allowed origins.
    #[serde(default)]
    pub auth: AuthFile,
    /// Agents' phones registering (SIP REGISTER with digest authentication).
    #[serde(default)]
    pub registrar: RegistrarFile,
}

/// `[auth]`: every key optional (defaults in [`AuthConfig::default`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// Mark the session cookie Secure: set it when the console is reached over HTTPS.
    pub secure_cookie: Option<bool>,
    /// A session unused this long ends [default: 8 hours].
    pub session_idle_ms: Option<Spanned<u64>>,
    /// A session ends this long after login, however used [default: 24 hours].
    pub session_max_age_ms: Option<Spanned<u64>>,
    /// Failed logins for one user name within `failed_login_window_ms` that lock it.
    pub max_failed_logins_per_user: Option<Spanned<u32>>,
    /// Failed logins from one address within the window that lock it.
    pub max_failed_logins_per_ip: Option<Spanned<u32>>,
    pub failed_login_window_ms: Option<Spanned<u64>>,
    /// Moved to the top-level `allowed_origins`; read only to say so at its line.
    #[serde(default)]
    pub allowed_origins: Option<Spanned<toml::Value>>,
}

/// `[registrar]`: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrarFile {
    /// The digest realm phones authenticate in [default: "humanline"]. Passwords set for
    /// another realm do not work for SIP (set them again with `humanline users add`).
    pub realm: Option<Spanned<String>>,
    /// Shortest registration accepted, seconds (shorter: 423 with Min-Expires) [default: 60].
    pub min_expires_s: Option<Spanned<u32>>,
    /// Longest registration granted, seconds (longer requests get this) [default: 3600].
    pub max_expires_s: Option<Spanned<u32>>,
}

/// What `[registrar]` resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrarSettings {
    pub realm: String,
    pub min_expires_s: u32,
    pub max_expires_s: u32,
}

impl Default for RegistrarSettings {
    fn default() -> Self {
        Self {
            realm: DEFAULT_REALM.into(),
            min_expires_s: 60,
            max_expires_s: 3600,
        }
    }
}

pub const DEFAULT_REALM: &str = "humanline";
const SESSION_MS: std::ops::RangeInclusive<u64> = 60_000..=30 * DAY_MS as u64;
const FAILED_LOGINS: std::ops::RangeInclusive<u32> = 1..=1000;
const LOGIN_WINDOW_MS: std::ops::RangeInclusive<u64> = 1_000..=DAY_MS as u64;
const EXPIRES_S: std::ops::RangeInclusive<u32> = 10..=86_400;

/// What a file that still lists origins under `[table]` is told, at that line: one list
/// now serves both checks, so that an operator cannot allow a site in one and not the other.
fn origins_moved(table: &str) -> String {
    format!(
        "{table}.allowed_origins has moved: list these origins once in the top-level \
         `allowed_origins = [...]` (before the first [table]); it is used both for the \
         console's Origin check and for the sites that may place calls (POST /call)"
    )
}

impl AuthFile {
    /// The settings; `allowed_origins` are the server file's (see [`ServerFile::origins`]).
    pub fn config(&self, allowed_origins: &[String]) -> AuthConfig {
        let d = AuthConfig::default();
        let ms = |v: &Option<Spanned<u64>>, d: Duration| {
            v.as_ref()
                .map_or(d, |v| Duration::from_millis(*v.get_ref()))
        };
        let n = |v: &Option<Spanned<u32>>, d: u32| v.as_ref().map_or(d, |v| *v.get_ref());
        AuthConfig {
            secure_cookie: self.secure_cookie.unwrap_or(d.secure_cookie),
            session_idle: ms(&self.session_idle_ms, d.session_idle),
            session_max_age: ms(&self.session_max_age_ms, d.session_max_age),
            limits: LoginLimits {
                per_user: n(&self.max_failed_logins_per_user, d.limits.per_user),
                per_ip: n(&self.max_failed_logins_per_ip, d.limits.per_ip),
                window: ms(&self.failed_login_window_ms, d.limits.window),
            },
            // "*" is for placing calls only: any site making changes would be CSRF.
            allowed_origins: allowed_origins
                .iter()
                .filter(|o| *o != "*")
                .cloned()
                .collect(),
        }
    }

    fn check(&self, out: &mut Vec<(std::ops::Range<usize>, String)>) {
        for (key, v) in [
            ("session_idle_ms", &self.session_idle_ms),
            ("session_max_age_ms", &self.session_max_age_ms),
        ] {
            if let Some(v) = v
                && !SESSION_MS.contains(v.get_ref())
            {
                out.push((
                    v.span(),
                    format!(
                        "auth.{key} must be between {} and {} ms",
                        SESSION_MS.start(),
                        SESSION_MS.end()
                    ),
                ));
            }
        }
        for (key, v) in [
            (
                "max_failed_logins_per_user",
                &self.max_failed_logins_per_user,
            ),
            ("max_failed_logins_per_ip", &self.max_failed_logins_per_ip),
        ] {
            if let Some(v) = v
                && !FAILED_LOGINS.contains(v.get_ref())
            {
                out.push((
                    v.span(),
                    format!(
                        "auth.{key} must be between {} and {}",
                        FAILED_LOGINS.start(),
                        FAILED_LOGINS.end()
                    ),
                ));
            }
        }
        if let Some(v) = &self.failed_login_window_ms
            && !LOGIN_WINDOW_MS.contains(v.get_ref())
        {
            out.push((
                v.span(),
                format!(
                    "auth.failed_login_window_ms must be between {} and {} ms",
                    LOGIN_WINDOW_MS.start(),
                    LOGIN_WINDOW_MS.end()
                ),
            ));
        }
        if let Some(o) = &self.allowed_origins {
            out.push((o.span(), origins_moved("auth")));
        }
    }
}

impl RegistrarFile {
    pub fn settings(&self) -> RegistrarSettings {
        let d = RegistrarSettings::default();
        RegistrarSettings {
            realm: self.realm.as_ref().map_or(d.realm, |r| r.get_ref().clone()),
            min_expires_s: self
                .min_expires_s
                .as_ref()
                .map_or(d.min_expires_s, |v| *v.get_ref()),
            max_expires_s: self
                .max_expires_s
                .as_ref()
                .map_or(d.max_expires_s, |v| *v.get_ref()),
        }
    }

    fn check(&self, out: &mut Vec<(std::ops::Range<usize>, String)>) {
        if let Some(r) = &self.realm {
            let v = r.get_ref();
            if v.is_empty()
                || v.len() > 64
                || !v
                    .chars()
                    .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
            {
                out.push((
                    r.span(),
                    "registrar.realm must be 1 to 64 printable ASCII characters without quotes or backslashes".into(),
                ));
            }
        }
        let s = self.settings();
        for (key, v) in [
            ("min_expires_s", &self.min_expires_s),
            ("max_expires_s", &self.max_expires_s),
        ] {
            if let Some(v) = v
                && !EXPIRES_S.contains(v.get_ref())
            {
                out.push((
                    v.span(),
                    format!(
                        "registrar.{key} must be between {} and {} s",
                        EXPIRES_S.start(),
                        EXPIRES_S.end()
                    ),
                ));
            }
        }
        if let Some(v) = &self.max_expires_s
            && EXPIRES_S.contains(v.get_ref())
            && s.max_expires_s < s.min_expires_s
        {
            out.push((
                v.span(),
                format!(
                    "registrar.max_expires_s must be at least min_expires_s ({})",
                    s.min_expires_s
                ),
            ));
        }
    }
}

/// `[browser]`: every key optional (see `crate::web::BrowserLimits` for the defaults).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrowserFile {
    /// Moved to the top-level `allowed_origins`; read only to say so at its line.
    #[serde(default)]
    pub allowed_origins: Option<Spanned<toml::Value>>,
    pub max_calls: Option<Spanned<usize>>,
    pub max_new_calls_per_second: Option<Spanned<u32>>,
    pub max_calls_per_client: Option<Spanned<usize>>,
    pub max_new_calls_per_second_per_client: Option<Spanned<u32>>,
    /// The address in our ICE candidate [default: the address the media socket is bound to];
    /// set it to the public address when Humanline is behind a 1:1 NAT.
    pub candidate_ip: Option<std::net::IpAddr>,
}

impl BrowserFile {
    /// The settings, or the problems (with the span of each bad value); `allowed_origins`
    /// are the server file's (see [`ServerFile::origins`]).
    pub fn settings(
        &self,
        allowed_origins: &[String],
    ) -> Result<BrowserSettings, Vec<(std::ops::Range<usize>, String)>> {
        let mut problems = Vec::new();
        let mut limits = BrowserLimits::default();
        let mut count = |v: &Option<Spanned<usize>>, name: &str, into: &mut usize| {
            if let Some(v) = v {
                if BrowserLimits::MAX_CALLS.contains(v.get_ref()) {
                    *into = *v.get_ref();
                } else {
                    problems.push((
                        v.span(),
                        format!(
                            "browser.{name} must be within {}..={}",
                            BrowserLimits::MAX_CALLS.start(),
                            BrowserLimits::MAX_CALLS.end()
                        ),
                    ));
                }
            }
        };
        count(&self.max_calls, "max_calls", &mut limits.max_calls);
        count(
            &self.max_calls_per_client,
            "max_calls_per_client",
            &mut limits.max_calls_per_client,
        );
        let mut rate = |v: &Option<Spanned<u32>>, name: &str, into: &mut u32| {
            if let Some(v) = v {
                if BrowserLimits::MAX_NEW_CALLS_PER_SECOND.contains(v.get_ref()) {
                    *into = *v.get_ref();
                } else {
                    problems.push((
                        v.span(),
                        format!(
                            "browser.{name} must be within {}..={}",
                            BrowserLimits::MAX_NEW_CALLS_PER_SECOND.start(),
                            BrowserLimits::MAX_NEW_CALLS_PER_SECOND.end()
                        ),
                    ));
                }
            }
        };
        rate(
            &self.max_new_calls_per_second,
            "max_new_calls_per_second",
            &mut limits.max_new_calls_per_second,
        );
        rate(
            &self.max_new_calls_per_second_per_client,
            "max_new_calls_per_second_per_client",
            &mut limits.max_new_calls_per_second_per_client,
        );
        if let Some(o) = &self.allowed_origins {
            problems.push((o.span(), origins_moved("browser")));
        }
        if problems.is_empty() {
            Ok(BrowserSettings {
                allowed_origins: allowed_origins.to_vec(),
                limits,
                candidate_ip: self.candidate_ip,
            })
        } else {
            Err(problems)
        }
    }
}

/// `[admission]`: limits on new calls (see `crate::sip::AdmissionLimits` for the defaults).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionFile {
    /// Calls in progress beyond which new calls get 503 [default: 200, 1..=10000].
    pub max_calls: Option<toml::Spanned<usize>>,
    /// New calls per second beyond which they get 503 [default: 20, 1..=1000].
    pub max_new_calls_per_second: Option<toml::Spanned<u32>>,
}

impl AdmissionFile {
    /// The limits, or the problems (with the span of each bad value).
    pub fn limits(&self) -> Result<AdmissionLimits, Vec<(std::ops::Range<usize>, String)>> {
        let mut limits = AdmissionLimits::default();
        let mut problems = Vec::new();
        if let Some(v) = &self.max_calls {
            if AdmissionLimits::MAX_CALLS.contains(v.get_ref()) {
                limits.max_calls = *v.get_ref();
            } else {
                problems.push((
                    v.span(),
                    format!(
                        "admission.max_calls must be within {}..={}",
                        AdmissionLimits::MAX_CALLS.start(),
                        AdmissionLimits::MAX_CALLS.end()
                    ),
                ));
            }
        }
        if let Some(v) = &self.max_new_calls_per_second {
            if AdmissionLimits::MAX_NEW_CALLS_PER_SECOND.contains(v.get_ref()) {
                limits.max_new_calls_per_second = *v.get_ref();
            } else {
                problems.push((
                    v.span(),
                    format!(
                        "admission.max_new_calls_per_second must be within {}..={}",
                        AdmissionLimits::MAX_NEW_CALLS_PER_SECOND.start(),
                        AdmissionLimits::MAX_NEW_CALLS_PER_SECOND.end()
                    ),
                ));
            }
        }
        if problems.is_empty() {
            Ok(limits)
        } else {
            Err(problems)
        }
    }
}

/// `[callback_retry]`: every key optional, each checked against its bounds at its line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    pub first_delay_ms: Option<Spanned<i64>>,
    pub factor: Option<Spanned<f64>>,
    pub max_delay_ms: Option<Spanned<i64>>,
    pub max_attempts: Option<Spanned<u32>>,
    pub window_ms: Option<Spanned<i64>>,
}

/// `[callback_numbers]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumbersFile {
    /// E.164 prefixes a callback may go to ("+31", "+1555"); none listed allows any.
    #[serde(default)]
    pub allowed_prefixes: Vec<Spanned<String>>,
    /// The centre's country code, for national numbers callers say or key ("+31").
    pub country_code: Option<Spanned<String>>,
}

const SECOND_MS: i64 = 1_000;
const DAY_MS: i64 = 86_400_000;
/// Bounds of the retry settings: a delay under a second is a retry storm (a negative one
/// an immediate loop), and delays, windows or counts beyond these keep no promise better.
const FIRST_DELAY_MS: std::ops::RangeInclusive<i64> = SECOND_MS..=DAY_MS;
const MAX_DELAY_MS: i64 = 7 * DAY_MS;
const FACTOR: std::ops::RangeInclusive<f64> = 1.0..=10.0;
const MAX_ATTEMPTS: std::ops::RangeInclusive<u32> = 1..=100;
const WINDOW_MS: std::ops::RangeInclusive<i64> = 60 * SECOND_MS..=30 * DAY_MS;
/// How long a caller's media may be silent before their phone is probed.
const NO_MEDIA_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1_000..=600_000;
const NO_MEDIA_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// A node timeout under 2 s would take a node for dead on one slow commit (it beats every
/// second); over 10 minutes a dead node's callers wait too long for their callback.
const NODE_TIMEOUT_MS: std::ops::RangeInclusive<i64> = 2_000..=600_000;

/// Whether `name` may name a node: it goes into promise keys and log lines.
pub fn valid_node_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl ServerFile {
    /// `allowed_origins`, normalized (`scheme://host[:port]`, lower case, no default port);
    /// one that is not an origin is left out (and reported by `load`).
    pub fn origins(&self) -> Vec<String> {
        self.allowed_origins
            .iter()
            .filter_map(|o| crate::web::normalize_origin(o.get_ref()).ok())
            .collect()
    }

    /// `[auth]` with the file's allowed origins.
    pub fn auth_config(&self) -> AuthConfig {
        self.auth.config(&self.origins())
    }

    /// `[browser]` with the file's allowed origins (checked by `load`).
    pub fn browser_settings(&self) -> BrowserSettings {
        let origins = self.origins();
        match &self.browser {
            Some(b) => b.settings(&origins).unwrap_or_default(),
            None => BrowserSettings {
                allowed_origins: origins,
                ..BrowserSettings::default()
            },
        }
    }

    /// The retry policy: the file's values over the defaults (checked by `load`).
    pub fn callback_retry(&self) -> RetryPolicy {
        let d = RetryPolicy::default();
        let r = &self.callback_retry;
        RetryPolicy {
            first_delay_ms: r
                .first_delay_ms
                .as_ref()
                .map_or(d.first_delay_ms, |v| *v.get_ref()),
            factor: r.factor.as_ref().map_or(d.factor, |v| *v.get_ref()),
            max_delay_ms: r
                .max_delay_ms
                .as_ref()
                .map_or(d.max_delay_ms, |v| *v.get_ref()),
            max_attempts: r
                .max_attempts
                .as_ref()
                .map_or(d.max_attempts, |v| *v.get_ref()),
            window_ms: r.window_ms.as_ref().map_or(d.window_ms, |v| *v.get_ref()),
        }
    }

    /// The ledger's store (checked by `load`).
    pub fn store(&self) -> StoreSetting {
        self.store
            .as_ref()
            .and_then(|s| StoreSetting::parse(s.get_ref()).ok())
            .unwrap_or_default()
    }

    /// When a node counts as dead (checked by `load`).
    pub fn node_liveness(&self) -> Liveness {
        Liveness {
            timeout_ms: self
                .node_timeout_ms
                .as_ref()
                .map_or(crate::storage::DEFAULT_LEASE_MS, |v| *v.get_ref()),
        }
    }

    /// Silence from a caller after which their phone is probed.
    pub fn no_media_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.no_media_timeout_ms
                .as_ref()
                .map_or(NO_MEDIA_TIMEOUT_MS_DEFAULT, |v| *v.get_ref()),
        )
    }

    pub fn utc_offset_min(&self) -> i64 {
        self.utc_offset_min.as_ref().map_or(0, |v| *v.get_ref())
    }

    pub fn number_policy(&self) -> NumberPolicy {
        NumberPolicy {
            allowed_prefixes: self
                .callback_numbers
                .allowed_prefixes
                .iter()
                .map(|p| p.get_ref().clone())
                .collect(),
            country_code: self
                .callback_numbers
                .country_code
                .as_ref()
                .map(|c| c.get_ref().clone()),
        }
    }

    /// Every value out of bounds, with where it is.
    fn check(&self) -> Vec<(std::ops::Range<usize>, String)> {
        let mut out = Vec::new();
        let r = &self.callback_retry;
        let policy = self.callback_retry();
        if let Some(v) = &r.first_delay_ms
            && !FIRST_DELAY_MS.contains(v.get_ref())
        {
            out.push((
                v.span(),
                format!(
                    "callback_retry.first_delay_ms must be between {} and {} ms",
                    FIRST_DELAY_MS.start(),
                    FIRST_DELAY_MS.end()
                ),
            ));
        }
        if let Some(v) = &r.factor
            && !FACTOR.contains(v.get_ref())
        {
            out.push((
                v.span(),
                format!(
                    "callback_retry.factor must be between {} and {}",
                    FACTOR.start(),
                    FACTOR.end()
                ),
            ));
        }
        if let Some(v) = &r.max_delay_ms
            && !(policy.first_delay_ms..=MAX_DELAY_MS).contains(v.get_ref())
        {
            out.push((
                v.span(),
                format!(
                    "callback_retry.max_delay_ms must be between first_delay_ms ({}) and {MAX_DELAY_MS} ms",
                    policy.first_delay_ms
                ),
            ));
        }
        if let Some(v) = &r.max_attempts
            && !MAX_ATTEMPTS.contains(v.get_ref())
        {
            out.push((
                v.span(),
                format!(
                    "callback_retry.max_attempts must be between {} and {}",
                    MAX_ATTEMPTS.start(),
                    MAX_ATTEMPTS.end()
                ),
            ));
        }
        if let Some(v) = &r.window_ms
            && !WINDOW_MS.contains(v.get_ref())
        {
            out.push((
                v.span(),
                format!(
                    "callback_retry.window_ms must be between {} and {} ms",
                    WINDOW_MS.start(),
                    WINDOW_MS.end()
                ),
            ));
        }
        if let Some(v) = &self.utc_offset_min
            && !UTC_OFFSET_MIN_RANGE.contains(v.get_ref())
        {
            out.push((
                v.span(),
                format!(
                    "utc_offset_min must be between {} and {} (UTC-12:00 to UTC+14:00)",
                    UTC_OFFSET_MIN_RANGE.start(),
                    UTC_OFFSET_MIN_RANGE.end()
                ),
            ));
        }
        if let Some(v) = &self.no_media_timeout_ms
            && !NO_MEDIA_TIMEOUT_MS.contains(v.get_ref())
        {
            out.push((
                v.span(),
                format!(
                    "no_media_timeout_ms must be between {} and {} ms",
                    NO_MEDIA_TIMEOUT_MS.start(),
                    NO_MEDIA_TIMEOUT_MS.end()
                ),
            ));
        }
        for p in &self.callback_numbers.allowed_prefixes {
            if !valid_prefix(p.get_ref()) {
                out.push((
                    p.span(),
                    format!(
                        "callback_numbers.allowed_prefixes: `{}` is not an E.164 prefix (\"+\" and digits, e.g. \"+31\")",
                        p.get_ref()
                    ),
                ));
            }
        }
        if let Some(c) = &self.callback_numbers.country_code
            && !(valid_prefix(c.get_ref()) && c.get_ref().len() <= 4)
        {
            out.push((
                c.span(),
                format!(
                    "callback_numbers.country_code: `{}` is not a country code (\"+\" and 1 to 3 digits)",
                    c.get_ref()
                ),
            ));
        }
        if let Some(s) = &self.store
            && let Err(message) = StoreSetting::parse(s.get_ref())
        {
            out.push((s.span(), message));
        }
        if let Some(n) = &self.node
            && !valid_node_name(n.get_ref())
        {
            out.push((
                n.span(),
                "node must be 1 to 64 letters, digits, `.`, `_` or `-`".into(),
            ));
        }
        if let Some(v) = &self.node_timeout_ms
            && !NODE_TIMEOUT_MS.contains(v.get_ref())
        {
            out.push((
                v.span(),
                format!(
                    "node_timeout_ms must be between {} and {} ms",
                    NODE_TIMEOUT_MS.start(),
                    NODE_TIMEOUT_MS.end()
                ),
            ));
        }
        if let Some(Err(problems)) = self.admission.as_ref().map(AdmissionFile::limits) {
            out.extend(problems);
        }
        for o in &self.allowed_origins {
            if let Err(why) = crate::web::normalize_origin(o.get_ref()) {
                out.push((o.span(), format!("allowed_origins: {why}")));
            }
        }
        if let Some(Err(problems)) = self.browser.as_ref().map(|b| b.settings(&[])) {
            out.extend(problems);
        }
        self.auth.check(&mut out);
        self.registrar.check(&mut out);
        out
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::Invalid(vec![ConfigProblem {
                file: path.into(),
                line: 1,
                col: 1,
                message: format!("cannot read: {e}"),
            }])
        })?;
        Self::parse(path, &text)
    }

    /// Reads a server file's text; `path` is only for the messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let file: Self = toml::from_str(text).map_err(|e| {
            let (line, col) = line_col(text, e.span().map_or(0, |s| s.start));
            ConfigError::Invalid(vec![ConfigProblem {
                file: path.into(),
                line,
                col,
                message: e.message().trim().to_string(),
            }])
        })?;
        let problems: Vec<ConfigProblem> = file
            .check()
            .into_iter()
            .map(|(span, message)| {
                let (line, col) = line_col(text, span.start);
                ConfigProblem {
                    file: path.into(),
                    line,
                    col,
                    message,
                }
            })
            .collect();
        if problems.is_empty() {
            Ok(file)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

/// Everything `serve` runs with, resolved.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub sip_listen: SocketAddr,
    pub rtp_ports: PortRange,
    pub http_listen: SocketAddr,
    pub prompts: PathBuf,
    pub data_dir: PathBuf,
    /// Where the callback ledger lives.
    pub store: StoreSetting,
    /// This node's name (`node`), if it has one.
    pub node: Option<String>,
    /// When a node counts as dead; also how long its callback claims hold.
    pub node_timeout: Liveness,
    /// One model for every language (`--model`); `None`: each language's `[speech] model`.
    pub model: Option<PathBuf>,
    pub decoders: usize,
    /// Threads each decode uses.
    pub decode_threads: usize,
    pub agents: Vec<String>,
    pub trunk: Option<String>,
    pub utc_offset_min: i64,
    pub callback_retry: RetryPolicy,
    /// Which numbers callbacks may go to.
    pub callback_numbers: NumberPolicy,
    /// Decode partial transcripts while the caller speaks (off only for baselines).
    pub partials: bool,
    /// Silence from a caller's media after which their phone is probed.
    pub no_media_timeout: std::time::Duration,
    /// When new calls are refused with 503 and Retry-After.
    pub admission: AdmissionLimits,
    /// Browser callers: allowed origins, limits, the ICE candidate's address.
    pub browser: BrowserSettings,
    pub auth: AuthConfig,
    pub registrar: RegistrarSettings,
}

pub fn parse_port_range(s: &str) -> anyhow::Result<PortRange> {
    let (low, high) = s
        .split_once('-')
        .ok_or_else(|| anyhow::anyhow!("rtp ports `{s}`: expected LOW-HIGH"))?;
    let low: u16 = low
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("rtp ports `{s}`: bad low port"))?;
    let high: u16 = high
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("rtp ports `{s}`: bad high port"))?;
    PortRange::new(low, high).map_err(|e| anyhow::anyhow!("rtp ports `{s}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<ConfigProblem> {
        match ServerFile::parse(Path::new("server.toml"), text) {
            Ok(_) => vec![],
            Err(ConfigError::Invalid(p)) => p,
        }
    }

    #[test]
    fn admission_limits_default_and_validate_with_their_line() {
        let f = ServerFile::parse(Path::new("s"), "").expect("empty file");
        assert!(f.admission.is_none());
        let text = "[admission]\nmax_calls = 5\nmax_new_calls_per_second = 2\n";
        let f = ServerFile::parse(Path::new("s"), text).expect("ok");
        let limits = f.admission.expect("table").limits().expect("valid");
        assert_eq!((limits.max_calls, limits.max_new_calls_per_second), (5, 2));
        let p = problems("[admission]\nmax_calls = 0\n\nmax_new_calls_per_second = 5000\n");
        let lines: Vec<usize> = p.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![2, 4], "{p:?}");
        assert!(!problems("[admission]\nmax_calls = -1\n").is_empty());
    }

    #[test]
    fn browser_settings_are_checked_at_their_line() {
        let text = "[browser]\nmax_calls_per_client = 3\ncandidate_ip = \"127.0.0.1\"\n";
        let f = ServerFile::parse(Path::new("s"), text).expect("valid");
        assert_eq!(f.browser_settings().limits.max_calls_per_client, 3);
        let p = problems("[browser]\nmax_calls = 0\n\nmax_new_calls_per_second_per_client = 0\n");
        let lines: Vec<usize> = p.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![2, 4], "{p:?}");
        assert!(!problems("[browser]\ncandidate_ip = \"nowhere\"\n").is_empty());
        assert!(!problems("[browser]\nallowed_origin = []\n").is_empty());
    }

    #[test]
    fn one_origins_list_serves_the_console_and_the_call_endpoint() {
        let text = "allowed_origins = [\"https://Shop.Example:443\", \"http://127.0.0.1:8080\", \"*\"]\n\n[browser]\nmax_calls = 9\n";
        let f = ServerFile::parse(Path::new("s"), text).expect("valid");
        assert_eq!(
            f.browser_settings().allowed_origins,
            ["https://shop.example", "http://127.0.0.1:8080", "*"]
        );
        assert_eq!(f.browser_settings().limits.max_calls, 9);
        // "*" lets any site place calls, never make changes in the console.
        assert_eq!(
            f.auth_config().allowed_origins,
            ["https://shop.example", "http://127.0.0.1:8080"]
        );
        // Without a [browser] table the list still reaches the call endpoint.
        let f = ServerFile::parse(
            Path::new("s"),
            "allowed_origins = [\"https://a.example\"]\n",
        )
        .expect("valid");
        assert_eq!(f.browser_settings().allowed_origins, ["https://a.example"]);
        assert_eq!(f.auth_config().allowed_origins, ["https://a.example"]);
        // A bad origin, at its line.
        let p = problems(
            "trunk = \"sip:gw@127.0.0.1\"\nallowed_origins = [\"https://ok.example\",\n  \"https://shop.example/path\"]\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!((p[0].line, p[0].col), (3, 3), "{p:?}");
        assert!(p[0].message.contains("path"), "{p:?}");
        // The two old per-table lists are refused at their line, saying where the origins
        // go now (two lists an operator had to keep in step).
        for table in ["auth", "browser"] {
            let p = problems(&format!(
                "[{table}]\n\nallowed_origins = [\"https://shop.example\"]\n"
            ));
            assert_eq!(p.len(), 1, "{table}: {p:?}");
            assert_eq!(p[0].line, 3, "{table}: {p:?}");
            assert!(
                p[0].message
                    .contains(&format!("{table}.allowed_origins has moved"))
                    && p[0].message.contains("top-level `allowed_origins"),
                "{table}: {p:?}"
            );
        }
    }

    #[test]
    fn the_store_is_sqlite_or_a_postgres_url_reported_at_its_line() {
        assert_eq!(
            ServerFile::parse(Path::new("s"), "").unwrap().store(),
            StoreSetting::Sqlite
        );
        let url = "postgres://humanline@127.0.0.1:5432/humanline";
        let f = ServerFile::parse(Path::new("s"), &format!("store = \"{url}\"\n")).unwrap();
        assert_eq!(f.store(), StoreSetting::Postgres(url.into()));
        for bad in [
            "store = \"mysql://x\"",
            "store = \"postgres://h:notaport/db\"",
        ] {
            let p = problems(&format!("trunk = \"sip:gw@127.0.0.1\"\n\n{bad}\n"));
            assert_eq!(p.len(), 1, "{bad}: {p:?}");
            assert_eq!((p[0].line, p[0].col), (3, 9), "{bad}: {p:?}");
            assert!(p[0].message.contains("store"), "{bad}: {p:?}");
        }
    }

    #[test]
    fn the_node_name_and_timeout_are_checked_at_their_line() {
        let f = ServerFile::parse(
            Path::new("s"),
            "node = \"a-1.east\"\nnode_timeout_ms = 3000\n",
        )
        .expect("valid");
        assert_eq!(f.node_liveness().timeout_ms, 3000);
        assert_eq!(
            ServerFile::parse(Path::new("s"), "")
                .unwrap()
                .node_liveness()
                .timeout_ms,
            crate::storage::DEFAULT_LEASE_MS
        );
        for bad in [
            "node = \"a b\"",
            "node = \"\"",
            "node_timeout_ms = 500",
            "node_timeout_ms = -1",
        ] {
            let p = problems(&format!("trunk = \"sip:gw@127.0.0.1\"\n\n{bad}\n"));
            assert_eq!(p.len(), 1, "{bad}: {p:?}");
            assert_eq!(p[0].line, 3, "{bad}: {p:?}");
        }
    }

    #[test]
    fn auth_and_registrar_settings_are_bounded_and_reported_at_their_line() {
        let good = "[auth]\nsecure_cookie = true\nsession_idle_ms = 600000\nmax_failed_logins_per_user = 3\nmax_failed_logins_per_ip = 10\nfailed_login_window_ms = 60000\n\n[registrar]\nrealm = \"callcentre\"\nmin_expires_s = 30\nmax_expires_s = 600\n";
        assert!(problems(good).is_empty(), "{:?}", problems(good));
        let file = ServerFile::parse(Path::new("s"), good).unwrap();
        let auth = file.auth_config();
        assert!(auth.secure_cookie);
        assert_eq!(auth.limits.per_user, 3);
        assert_eq!(file.registrar.settings().realm, "callcentre");
        for (from, to) in [
            ("session_idle_ms = 600000", "session_idle_ms = 5"),
            (
                "max_failed_logins_per_user = 3",
                "max_failed_logins_per_user = 0",
            ),
            (
                "failed_login_window_ms = 60000",
                "failed_login_window_ms = 1",
            ),
            ("realm = \"callcentre\"", "realm = \"a\\\"b\""),
            ("min_expires_s = 30", "min_expires_s = 1"),
            ("max_expires_s = 600", "max_expires_s = 20"),
        ] {
            let bad = good.replace(from, to);
            let p = problems(&bad);
            let line = bad.lines().position(|l| l.contains(to)).unwrap() + 1;
            assert_eq!(p.len(), 1, "{to}: {p:?}");
            assert_eq!(p[0].line, line, "{to}: {p:?}");
        }
    }

    #[test]
    fn retry_and_number_settings_are_bounded_and_reported_at_their_line() {
        let good = "trunk = \"sip:gw@127.0.0.1\"\nutc_offset_min = 60\n\n[callback_retry]\nfirst_delay_ms = 2000\nfactor = 1.0\nmax_delay_ms = 2000\nmax_attempts = 4\nwindow_ms = 259200000\n\n[callback_numbers]\nallowed_prefixes = [\"+31\", \"+1555\"]\ncountry_code = \"+31\"\n";
        assert!(problems(good).is_empty(), "{:?}", problems(good));
        let file = ServerFile::parse(Path::new("s"), good).unwrap();
        assert_eq!(file.callback_retry().max_attempts, 4);
        assert_eq!(file.number_policy().allowed_prefixes, vec!["+31", "+1555"]);
        for (from, to) in [
            ("first_delay_ms = 2000", "first_delay_ms = -5"),
            ("first_delay_ms = 2000", "first_delay_ms = 0"),
            ("factor = 1.0", "factor = 1e300"),
            ("factor = 1.0", "factor = nan"),
            ("max_delay_ms = 2000", "max_delay_ms = 1000"),
            ("max_attempts = 4", "max_attempts = 0"),
            ("max_attempts = 4", "max_attempts = 4000000"),
            ("window_ms = 259200000", "window_ms = -1"),
            ("utc_offset_min = 60", "utc_offset_min = 99999999999"),
            ("\"+1555\"]", "\"0900\"]"),
            ("country_code = \"+31\"", "country_code = \"31\""),
        ] {
            let bad = good.replace(from, to);
            let p = problems(&bad);
            let line = bad.lines().position(|l| l.contains(to)).unwrap() + 1;
            assert_eq!(p.len(), 1, "{to}: {p:?}");
            assert_eq!(p[0].line, line, "{to}: {p:?}");
        }
    }
}
