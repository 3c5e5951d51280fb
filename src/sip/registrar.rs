//! A registrar for agents' phones: REGISTER with digest authentication (see [`super::digest`]).
//! An agent registers from any phone with their user name and password; the latest
//! registration of a name wins (one phone per agent), and it lasts until it expires or the
//! phone unregisters. What to answer is decided by a pure function ([`decide`]); the
//! endpoint only extracts the request's fields and sends the reply.

use super::digest::{self, NonceCheck, Nonces};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Where the registrar finds what a phone's password must hash to.
pub trait Credentials: Send + Sync + 'static {
    /// HA1 of `user` in `realm`; `None` for an unknown user or one whose password was set for
    /// another realm.
    fn ha1(&self, user: &str, realm: &str) -> Option<String>;
    /// Whether guesses for `user` or from `ip` are refused now (a rate limit shared with the
    /// other logins, so a phone cannot be used to guess a console password).
    fn locked(&self, _user: &str, _ip: std::net::IpAddr) -> bool {
        false
    }
    /// A wrong password was given.
    fn failed(&self, _user: &str, _ip: std::net::IpAddr) {}
}

/// A registration made, refreshed or ended, for the application (the agent queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    Bound {
        user: String,
        /// The phone's Contact URI: where its calls go.
        contact: String,
        expires: Duration,
    },
    Unbound {
        user: String,
    },
}

/// Turns REGISTER on (without it, REGISTER gets 405 as before).
#[derive(Clone)]
pub struct RegistrarConfig {
    pub realm: String,
    /// Shorter registrations get 423 Interval Too Brief.
    pub min_expires_s: u32,
    /// Longer ones are granted this.
    pub max_expires_s: u32,
    pub credentials: Arc<dyn Credentials>,
    /// Registrations go here; a full channel drops one (with a warning), never blocks SIP.
    pub events: mpsc::Sender<Registration>,
    /// Secret for the stateless nonces: random per run.
    pub nonce_secret: [u8; 32],
}

impl std::fmt::Debug for RegistrarConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrarConfig")
            .field("realm", &self.realm)
            .field("min_expires_s", &self.min_expires_s)
            .field("max_expires_s", &self.max_expires_s)
            .finish_non_exhaustive()
    }
}

/// How long a nonce may be answered before the phone is told it is stale.
pub const NONCE_LIFETIME_MS: i64 = 5 * 60 * 1000;
/// Expires when a REGISTER says nothing (RFC 3261 10.2.1.1 leaves it to the registrar).
const DEFAULT_EXPIRES_S: u32 = 3600;

/// What a REGISTER carries that matters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterRequest {
    /// The user part of the To URI: whose registration this is.
    pub to_user: Option<String>,
    pub authorization: Option<String>,
    /// The first Contact header's value.
    pub contact: Option<String>,
    pub expires: Option<String>,
}

/// The answer to a REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterReply {
    /// 401 with a fresh nonce.
    Challenge {
        stale: bool,
    },
    /// 403: a wrong password, an unknown user, or credentials for another user.
    Forbidden(&'static str),
    /// 423 with Min-Expires.
    IntervalTooBrief {
        min_expires_s: u32,
    },
    BadRequest(&'static str),
    /// 200 OK with the binding.
    Bound {
        user: String,
        contact: String,
        expires_s: u32,
    },
    /// 200 OK: the phone unregistered.
    Unbound {
        user: String,
    },
    /// 200 OK to a query (no Contact): nothing changes.
    Queried,
}

/// A Contact header value: `*`, or its URI (without angle brackets) and `expires` parameter.
fn parse_contact(value: &str) -> Option<(String, Option<u32>)> {
    let v = value.trim();
    if v == "*" {
        return Some(("*".into(), None));
    }
    let (uri, params) = match v.find('<') {
        Some(open) => {
            let close = open + v[open..].find('>')?;
            (&v[open + 1..close], &v[close + 1..])
        }
        None => match v.find(';') {
            Some(semi) => (&v[..semi], &v[semi..]),
            None => (v, ""),
        },
    };
    let uri = uri.trim();
    if !(uri.starts_with("sip:") || uri.starts_with("sips:")) || uri.len() > 512 {
        return None;
    }
    let expires = params
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("expires"))
        .and_then(|(_, v)| v.trim().parse().ok());
    Some((uri.to_string(), expires))
}

/// Decides the answer to a REGISTER at `now_ms`.
pub fn decide(
    req: &RegisterRequest,
    cfg: &RegistrarConfig,
    nonces: &Nonces,
    now_ms: i64,
) -> RegisterReply {
    let Some(auth) = req.authorization.as_deref() else {
        return RegisterReply::Challenge { stale: false };
    };
    let Some(creds) = digest::parse_authorization(auth) else {
        return RegisterReply::Challenge { stale: false };
    };
    if creds.realm != cfg.realm {
        return RegisterReply::Challenge { stale: false };
    }
    match nonces.check(&creds.nonce, now_ms) {
        NonceCheck::Valid => {}
        NonceCheck::Stale => return RegisterReply::Challenge { stale: true },
        NonceCheck::Invalid => return RegisterReply::Challenge { stale: false },
    }
    let Some(ha1) = cfg.credentials.ha1(&creds.username, &cfg.realm) else {
        return RegisterReply::Forbidden("unknown user or wrong password");
    };
    if !digest::response_matches(&creds, &ha1, "REGISTER") {
        return RegisterReply::Forbidden("unknown user or wrong password");
    }
    // One may register only oneself.
    if req.to_user.as_deref() != Some(creds.username.as_str()) {
        return RegisterReply::Forbidden("credentials for another user");
    }
    let user = creds.username;
    let Some(contact) = req.contact.as_deref() else {
        return RegisterReply::Queried;
    };
    let Some((contact, contact_expires)) = parse_contact(contact) else {
        return RegisterReply::BadRequest("unreadable Contact");
    };
    let header_expires = match req.expires.as_deref().map(|e| e.trim().parse::<u32>()) {
        Some(Ok(e)) => Some(e),
        Some(Err(_)) => return RegisterReply::BadRequest("unreadable Expires"),
        None => None,
    };
    let expires = contact_expires
        .or(header_expires)
        .unwrap_or(DEFAULT_EXPIRES_S);
    if contact == "*" {
        return if expires == 0 {
            RegisterReply::Unbound { user }
        } else {
            RegisterReply::BadRequest("Contact * needs Expires: 0")
        };
    }
    if expires == 0 {
        return RegisterReply::Unbound { user };
    }
    if expires < cfg.min_expires_s {
        return RegisterReply::IntervalTooBrief {
            min_expires_s: cfg.min_expires_s,
        };
    }
    RegisterReply::Bound {
        user,
        contact,
        expires_s: expires.min(cfg.max_expires_s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct One;
    impl Credentials for One {
        fn ha1(&self, user: &str, realm: &str) -> Option<String> {
            (user == "alice").then(|| digest::ha1("alice", realm, "secret-pw"))
        }
    }

    fn config() -> RegistrarConfig {
        RegistrarConfig {
            realm: "humanline".into(),
            min_expires_s: 60,
            max_expires_s: 3600,
            credentials: Arc::new(One),
            events: mpsc::channel(1).0,
            nonce_secret: [1; 32],
        }
    }

    /// What a phone sends back for `password` (qop=auth, as baresip does).
    fn authorization(user: &str, password: &str, nonce: &str) -> String {
        let ha1 = digest::ha1(user, "humanline", password);
        let ha2 = digest::hex(&md5::Md5::digest(b"REGISTER:sip:127.0.0.1"));
        let response = digest::hex(&md5::Md5::digest(
            format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}").as_bytes(),
        ));
        format!(
            "Digest username=\"{user}\", realm=\"humanline\", nonce=\"{nonce}\", uri=\"sip:127.0.0.1\", \
             response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\""
        )
    }
    use md5::Digest;

    #[test]
    fn a_phone_is_challenged_then_bound_and_a_wrong_password_is_forbidden() {
        let cfg = config();
        let nonces = Nonces::new(cfg.nonce_secret, NONCE_LIFETIME_MS);
        let mut req = RegisterRequest {
            to_user: Some("alice".into()),
            contact: Some("<sip:alice-0x1@127.0.0.1:5070;transport=udp>;expires=600".into()),
            ..Default::default()
        };
        assert_eq!(
            decide(&req, &cfg, &nonces, 0),
            RegisterReply::Challenge { stale: false }
        );
        let nonce = nonces.issue(1000);
        req.authorization = Some(authorization("alice", "secret-pw", &nonce));
        assert_eq!(
            decide(&req, &cfg, &nonces, 2000),
            RegisterReply::Bound {
                user: "alice".into(),
                contact: "sip:alice-0x1@127.0.0.1:5070;transport=udp".into(),
                expires_s: 600
            }
        );
        // Later than the nonce's lifetime: stale, try again with a new one.
        assert_eq!(
            decide(&req, &cfg, &nonces, 1000 + NONCE_LIFETIME_MS + 1),
            RegisterReply::Challenge { stale: true }
        );
        req.authorization = Some(authorization("alice", "wrong-pw", &nonce));
        assert!(matches!(
            decide(&req, &cfg, &nonces, 2000),
            RegisterReply::Forbidden(_)
        ));
        req.authorization = Some(authorization("mallory", "secret-pw", &nonce));
        assert!(matches!(
            decide(&req, &cfg, &nonces, 2000),
            RegisterReply::Forbidden(_)
        ));
        // Her credentials do not register someone else.
        req.authorization = Some(authorization("alice", "secret-pw", &nonce));
        req.to_user = Some("bob".into());
        assert!(matches!(
            decide(&req, &cfg, &nonces, 2000),
            RegisterReply::Forbidden(_)
        ));
    }

    #[test]
    fn expiry_is_bounded_and_zero_unregisters() {
        let cfg = config();
        let nonces = Nonces::new(cfg.nonce_secret, NONCE_LIFETIME_MS);
        let nonce = nonces.issue(0);
        let req = |contact: &str, expires: Option<&str>| RegisterRequest {
            to_user: Some("alice".into()),
            authorization: Some(authorization("alice", "secret-pw", &nonce)),
            contact: Some(contact.into()),
            expires: expires.map(Into::into),
        };
        let d = |r| decide(&r, &cfg, &nonces, 10);
        assert!(matches!(
            d(req("<sip:a@h>", Some("999999"))),
            RegisterReply::Bound {
                expires_s: 3600,
                ..
            }
        ));
        assert_eq!(
            d(req("<sip:a@h>", Some("5"))),
            RegisterReply::IntervalTooBrief { min_expires_s: 60 }
        );
        assert_eq!(
            d(req("<sip:a@h>;expires=0", Some("600"))),
            RegisterReply::Unbound {
                user: "alice".into()
            }
        );
        assert_eq!(
            d(req("*", Some("0"))),
            RegisterReply::Unbound {
                user: "alice".into()
            }
        );
        assert!(matches!(d(req("*", None)), RegisterReply::BadRequest(_)));
        assert!(matches!(
            d(req("<tel:123>", None)),
            RegisterReply::BadRequest(_)
        ));
        assert!(matches!(
            d(req("sip:a@h", Some("x"))),
            RegisterReply::BadRequest(_)
        ));
    }
}
