//! Login rate limit: failed logins counted per user name and per client address within a
//! window; past the limit, logins are refused (even with the right password) until the
//! window that began with the first failure ends. Pure: time is passed in.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Names and addresses tracked at most; beyond, stale ones are forgotten first, and a new one
/// is not tracked while every slot is fresh (the address limit still applies).
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Failures for one user name within `window` after which it is locked.
    pub per_user: u32,
    /// Failures from one address within `window` after which it is locked.
    pub per_ip: u32,
    pub window: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            per_user: 5,
            per_ip: 20,
            window: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first: Instant,
}

#[derive(Debug)]
struct Counter<K> {
    map: HashMap<K, Failures>,
}

impl<K> Default for Counter<K> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Counter<K> {
    /// How long `key` stays locked, if it is.
    fn locked(&self, key: &K, limit: u32, window: Duration, now: Instant) -> Option<Duration> {
        let f = self.map.get(key)?;
        let ends = f.first + window;
        (f.count >= limit && ends > now).then(|| ends - now)
    }

    fn fail(&mut self, key: &K, window: Duration, now: Instant) {
        if self.map.len() >= MAX_TRACKED && !self.map.contains_key(key) {
            self.map.retain(|_, f| f.first + window > now);
            if self.map.len() >= MAX_TRACKED {
                return;
            }
        }
        let f = self.map.entry(key.clone()).or_insert(Failures {
            count: 0,
            first: now,
        });
        if f.first + window <= now {
            *f = Failures {
                count: 0,
                first: now,
            };
        }
        f.count = f.count.saturating_add(1);
    }
}

#[derive(Debug)]
pub struct LoginLimiter {
    limits: LoginLimits,
    users: Counter<String>,
    ips: Counter<IpAddr>,
}

impl LoginLimiter {
    pub fn new(limits: LoginLimits) -> Self {
        Self {
            limits,
            users: Counter::default(),
            ips: Counter::default(),
        }
    }

    /// `Some(retry_after)` when a login for `user` from `ip` must be refused now, without
    /// checking the password.
    pub fn refused(&self, user: &str, ip: IpAddr, now: Instant) -> Option<Duration> {
        let l = self.limits;
        let by_user = self
            .users
            .locked(&user_key(user), l.per_user, l.window, now);
        let by_ip = self.ips.locked(&ip, l.per_ip, l.window, now);
        by_user.max(by_ip)
    }

    pub fn failed(&mut self, user: &str, ip: IpAddr, now: Instant) {
        let w = self.limits.window;
        self.users.fail(&user_key(user), w, now);
        self.ips.fail(&ip, w, now);
    }

    /// The right password: that name's failures are forgotten (the address's are not, so
    /// one known account cannot be used to reset guessing at others).
    pub fn succeeded(&mut self, user: &str) {
        self.users.map.remove(&user_key(user));
    }
}

/// Names are bounded before they are kept.
fn user_key(user: &str) -> String {
    user.chars()
        .take(super::users::MAX_NAME_CHARS + 1)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_and_an_address_are_locked_after_their_limit_until_the_window_ends() {
        let limits = LoginLimits {
            per_user: 3,
            per_ip: 5,
            window: Duration::from_secs(60),
        };
        let mut l = LoginLimiter::new(limits);
        let t = Instant::now();
        let ip: IpAddr = [127, 0, 0, 1].into();
        let other: IpAddr = [127, 0, 0, 2].into();
        for _ in 0..3 {
            assert_eq!(l.refused("ann", ip, t), None);
            l.failed("ann", ip, t);
        }
        // Locked for the name from anywhere, for the rest of the window.
        assert_eq!(l.refused("ann", other, t), Some(Duration::from_secs(60)));
        assert!(l.refused("ann", ip, t + Duration::from_secs(59)).is_some());
        assert_eq!(l.refused("ann", ip, t + Duration::from_secs(60)), None);
        // The address: two more failures, on other names, lock it for every name.
        l.failed("bob", ip, t);
        assert_eq!(l.refused("carl", ip, t), None);
        l.failed("carl", ip, t);
        assert!(l.refused("dora", ip, t).is_some());
        assert_eq!(l.refused("dora", other, t), None);
        // A success clears the name's count, not the address's.
        l.succeeded("bob");
        assert!(l.refused("bob", ip, t).is_some());
        assert_eq!(l.refused("bob", other, t), None);
    }
}
