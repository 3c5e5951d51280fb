//! HTTP digest authentication as SIP uses it (RFC 2617, RFC 8760's MD5 profile, which is
//! what baresip, sipp and most phones speak): challenges, parsing an `Authorization`
//! header, and checking its response. Pure functions; time is passed in.
//!
//! Nonces are stateless: the time they were made and a MAC of it under a per-run secret, so
//! nothing is stored per challenge and a nonce from another run, or a forged one, is refused.
//! A valid nonce past its lifetime is answered `stale=true` (the phone retries at once
//! with the same password). Nonce counts are not tracked: a REGISTER captured on the wire
//! could be replayed until its nonce expires, re-binding the same contact, nothing more.

// md-5 and sha2 implement two major versions of the `Digest` trait: both in scope, unnamed.
use md5::Digest as _;
use md5::Md5;
use sha2::Digest as _;
use sha2::Sha256;

/// Longest Authorization header value read; real ones are a few hundred bytes.
const MAX_HEADER_BYTES: usize = 4096;

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

fn md5_hex(s: &str) -> String {
    hex(&Md5::digest(s.as_bytes()))
}

/// HA1 = MD5(user:realm:password): what a server keeps to check digest responses.
pub fn ha1(user: &str, realm: &str, password: &str) -> String {
    md5_hex(&format!("{user}:{realm}:{password}"))
}

/// Equal without an early exit, so the time taken does not tell how much of a secret matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The fields of a `Digest` Authorization header that matter here.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DigestCredentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Option<String>,
    pub qop: Option<String>,
    pub nc: Option<String>,
    pub cnonce: Option<String>,
}

/// Parses `Digest k=v, k="v", ...`; `None` for another scheme or a malformed value.
pub fn parse_authorization(value: &str) -> Option<DigestCredentials> {
    if value.len() > MAX_HEADER_BYTES {
        return None;
    }
    let value = value.trim();
    let (scheme, rest) = value.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    let mut c = DigestCredentials::default();
    let mut rest = rest.trim_start();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (val, tail) = if let Some(quoted) = after.strip_prefix('"') {
            // A quoted string; `\` escapes the next character (RFC 2617 quoted-pair).
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, ch)) = chars.next() {
                match ch {
                    '\\' => out.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    _ => out.push(ch),
                }
            }
            (out, &quoted[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        match key.as_str() {
            "username" => c.username = val,
            "realm" => c.realm = val,
            "nonce" => c.nonce = val,
            "uri" => c.uri = val,
            "response" => c.response = val.to_ascii_lowercase(),
            "algorithm" => c.algorithm = Some(val),
            "qop" => c.qop = Some(val),
            "nc" => c.nc = Some(val),
            "cnonce" => c.cnonce = Some(val),
            _ => {}
        }
        let tail = tail.trim_start();
        rest = match tail.strip_prefix(',') {
            Some(t) => t.trim_start(),
            None if tail.is_empty() => tail,
            None => return None,
        };
    }
    (!c.username.is_empty() && !c.nonce.is_empty() && !c.response.is_empty()).then_some(c)
}

/// Whether the credentials prove knowledge of the password behind `ha1` for this request.
/// MD5 only (the algorithm absent, `MD5`, or `MD5-sess` is not accepted); qop absent or `auth`.
pub fn response_matches(c: &DigestCredentials, ha1: &str, method: &str) -> bool {
    if c.algorithm
        .as_deref()
        .is_some_and(|a| !a.eq_ignore_ascii_case("md5"))
    {
        return false;
    }
    let ha2 = md5_hex(&format!("{method}:{}", c.uri));
    let expected = match c.qop.as_deref() {
        None => md5_hex(&format!("{ha1}:{}:{ha2}", c.nonce)),
        Some(q) if q.eq_ignore_ascii_case("auth") => {
            let (Some(nc), Some(cnonce)) = (&c.nc, &c.cnonce) else {
                return false;
            };
            md5_hex(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", c.nonce))
        }
        Some(_) => return false,
    };
    constant_time_eq(expected.as_bytes(), c.response.as_bytes())
}

/// What a nonce a phone sent back is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Ours, but older than its lifetime: challenge again with `stale=true`.
    Stale,
    /// Not ours (forged, from another run, or garbage).
    Invalid,
}

/// Makes and checks stateless nonces under a secret.
#[derive(Clone)]
pub struct Nonces {
    secret: [u8; 32],
    lifetime_ms: i64,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nonces")
            .field("lifetime_ms", &self.lifetime_ms)
            .finish_non_exhaustive()
    }
}

impl Nonces {
    pub fn new(secret: [u8; 32], lifetime_ms: i64) -> Self {
        Self {
            secret,
            lifetime_ms,
        }
    }

    fn mac(&self, stamp: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(stamp.as_bytes());
        hex(&h.finalize()[..16])
    }

    pub fn issue(&self, now_ms: i64) -> String {
        let stamp = format!("{now_ms:x}");
        format!("{stamp}.{}", self.mac(&stamp))
    }

    pub fn check(&self, nonce: &str, now_ms: i64) -> NonceCheck {
        let Some((stamp, mac)) = nonce.split_once('.') else {
            return NonceCheck::Invalid;
        };
        let Ok(made) = i64::from_str_radix(stamp, 16) else {
            return NonceCheck::Invalid;
        };
        if stamp.len() > 16 || !constant_time_eq(self.mac(stamp).as_bytes(), mac.as_bytes()) {
            return NonceCheck::Invalid;
        }
        match now_ms.saturating_sub(made) {
            // Made in the future by more than clock jitter: not a nonce this run issued.
            age if age < -1_000 => NonceCheck::Invalid,
            age if age > self.lifetime_ms => NonceCheck::Stale,
            _ => NonceCheck::Valid,
        }
    }
}

/// A `WWW-Authenticate` value challenging for `realm`.
pub fn challenge(realm: &str, nonce: &str, stale: bool) -> String {
    let stale = if stale { ", stale=true" } else { "" };
    format!("Digest realm=\"{realm}\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\"{stale}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2617 section 3.5's example ("Mufasa", "Circle Of Life").
    #[test]
    fn the_rfc_2617_example_verifies() {
        let c = parse_authorization(
            r#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        )
        .expect("parses");
        assert_eq!(c.username, "Mufasa");
        let h = ha1("Mufasa", "testrealm@host.com", "Circle Of Life");
        assert!(response_matches(&c, &h, "GET"));
        assert!(!response_matches(&c, &h, "POST"));
        let wrong = ha1("Mufasa", "testrealm@host.com", "circle of life");
        assert!(!response_matches(&c, &wrong, "GET"));
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            "",
            "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
            "Digest username=\"a",
            "Digest username=\"a\" nonce=\"b\"",
            "Digest realm=\"r\"",
        ] {
            assert_eq!(parse_authorization(bad), None, "{bad}");
        }
        assert!(
            parse_authorization(&format!("Digest username=\"{}\"", "a".repeat(5000))).is_none()
        );
    }

    #[test]
    fn nonces_expire_and_cannot_be_forged() {
        let n = Nonces::new([7; 32], 60_000);
        let nonce = n.issue(1_000_000);
        assert_eq!(n.check(&nonce, 1_000_500), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, 1_070_000), NonceCheck::Stale);
        let other = Nonces::new([8; 32], 60_000);
        assert_eq!(other.check(&nonce, 1_000_500), NonceCheck::Invalid);
        assert_eq!(n.check("f4240.00", 1_000_500), NonceCheck::Invalid);
        assert_eq!(n.check("zz", 0), NonceCheck::Invalid);
    }
}
