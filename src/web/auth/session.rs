//! Login sessions, in memory: a random id in an HttpOnly cookie, a CSRF token beside it.
//! A restart logs everyone out. Pure: time is passed in.

use super::password::random_hex;
use super::users::Role;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Sessions kept at most; beyond, expired ones go first, then the least recently used.
const MAX_SESSIONS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// Sent back by the page in `X-CSRF-Token` on every change.
    pub csrf: String,
    last_seen: Instant,
    created: Instant,
}

#[derive(Debug)]
pub struct Sessions {
    by_id: HashMap<String, Session>,
    /// Unused this long, a session ends.
    idle: Duration,
    /// Whatever its use, a session ends this long after login.
    max_age: Duration,
}

impl Sessions {
    pub fn new(idle: Duration, max_age: Duration) -> Self {
        Self {
            by_id: HashMap::new(),
            idle,
            max_age,
        }
    }

    fn live(&self, s: &Session, now: Instant) -> bool {
        now.saturating_duration_since(s.last_seen) < self.idle
            && now.saturating_duration_since(s.created) < self.max_age
    }

    /// A new session; returns its id (the cookie's value) and the session.
    pub fn create(&mut self, user: &str, role: Role, now: Instant) -> (String, Session) {
        if self.by_id.len() >= MAX_SESSIONS {
            let live: HashMap<_, _> = std::mem::take(&mut self.by_id)
                .into_iter()
                .filter(|(_, s)| self.live(s, now))
                .collect();
            self.by_id = live;
            if self.by_id.len() >= MAX_SESSIONS
                && let Some(oldest) = self
                    .by_id
                    .iter()
                    .min_by_key(|(_, s)| s.last_seen)
                    .map(|(id, _)| id.clone())
            {
                self.by_id.remove(&oldest);
            }
        }
        let id = random_hex(32);
        let session = Session {
            user: user.into(),
            role,
            csrf: random_hex(32),
            last_seen: now,
            created: now,
        };
        self.by_id.insert(id.clone(), session.clone());
        (id, session)
    }

    /// The live session with this id (and marks it used); an expired one is removed.
    pub fn touch(&mut self, id: &str, now: Instant) -> Option<Session> {
        let live = self.by_id.get(id).map(|s| self.live(s, now))?;
        if !live {
            self.by_id.remove(id);
            return None;
        }
        let s = self.by_id.get_mut(id)?;
        s.last_seen = now;
        Some(s.clone())
    }

    pub fn remove(&mut self, id: &str) {
        self.by_id.remove(id);
    }

    /// Ends every session of a user (removed, or their role changed).
    pub fn remove_user(&mut self, user: &str) {
        self.by_id.retain(|_, s| s.user != user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_end_when_idle_or_old_and_on_logout() {
        let t = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(10), Duration::from_secs(25));
        let (id, made) = s.create("ann", Role::Agent, t);
        assert_eq!(made.csrf.len(), 64);
        let at = |secs| t + Duration::from_secs(secs);
        assert!(s.touch(&id, at(9)).is_some());
        assert!(s.touch(&id, at(18)).is_some());
        // Used every 9 s, it still ends 25 s after login.
        assert!(s.touch(&id, at(26)).is_none());
        let (id2, _) = s.create("ann", Role::Agent, at(30));
        assert!(s.touch(&id2, at(41)).is_none(), "idle 11 s");
        let (id3, _) = s.create("bob", Role::Agent, at(50));
        s.remove(&id3);
        assert!(s.touch(&id3, at(50)).is_none());
        assert!(s.touch("nonsense", at(50)).is_none());
    }
}
