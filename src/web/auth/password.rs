//! Passwords: argon2id hashes (the crate's default parameters, OWASP's minimum), checked off
//! the async threads by the callers (a check costs tens of milliseconds on purpose).

use super::users::{Role, User, UserError, valid_name};
use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Shorter passwords are refused when a user is added.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longer input is refused before hashing: a login cannot be made to hash megabytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

pub fn hash(password: &str) -> Result<String, UserError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

/// Whether `password` matches `hash`. A hash that does not parse matches nothing.
pub fn verify(password: &str, hash: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Does the work of a check for a user that does not exist, so that the answer's timing does
/// not tell which names do.
pub fn verify_nobody(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("not a password of anyone").unwrap_or_default());
    let _ = verify(password, dummy);
}

/// A new user with both the argon2 hash and the SIP digest HA1 for `realm`.
pub fn new_user(
    name: &str,
    role: Role,
    password: &str,
    realm: &str,
    now_ms: i64,
) -> Result<User, UserError> {
    if !valid_name(name) {
        return Err(UserError::BadName(name.into()));
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(UserError::BadPassword(format!(
            "the password must have at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(UserError::BadPassword(format!(
            "the password must have at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(User {
        name: name.into(),
        role,
        password_hash: hash(password)?,
        sip_realm: realm.into(),
        sip_ha1: crate::sip::digest::ha1(name, realm, password),
        created_at: now_ms,
    })
}

/// Random bytes from the operating system: secrets.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    OsRng.fill_bytes(&mut buf);
    buf
}

/// `bytes` random bytes from the operating system, hex-encoded: session ids, CSRF tokens.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    crate::sip::digest::hex(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let u = new_user("ann", Role::Agent, "correct horse", "humanline", 0).unwrap();
        assert!(u.password_hash.starts_with("$argon2id$"));
        assert!(verify("correct horse", &u.password_hash));
        assert!(!verify("correct horsE", &u.password_hash));
        assert!(!verify("correct horse", "garbage"));
        assert!(new_user("ann", Role::Agent, "short", "humanline", 0).is_err());
        assert!(new_user("a n", Role::Agent, "long enough", "humanline", 0).is_err());
        assert_eq!(random_hex(16).len(), 32);
        assert_ne!(random_hex(16), random_hex(16));
    }
}
