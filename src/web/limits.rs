//! Limits on browser calls, the one public way in that costs a media port, a recognizer and
//! a share of the decoders: calls at once and new calls per second, for the whole server and
//! for each client (its IP address, and the web site it calls from). Sans-IO, like the SIP
//! admission whose token bucket it reuses: the time is passed in.

use crate::sip::{Admission, AdmissionLimits, Admitter};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// `[browser]` limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrowserLimits {
    /// Browser calls in progress beyond which new ones are refused.
    pub max_calls: usize,
    /// New browser calls per second for the whole server.
    pub max_new_calls_per_second: u32,
    /// Calls in progress from one IP address, or from one origin.
    pub max_calls_per_client: usize,
    /// New calls per second from one IP address, or from one origin.
    pub max_new_calls_per_second_per_client: u32,
}

impl BrowserLimits {
    pub const MAX_CALLS: std::ops::RangeInclusive<usize> = AdmissionLimits::MAX_CALLS;
    pub const MAX_NEW_CALLS_PER_SECOND: std::ops::RangeInclusive<u32> =
        AdmissionLimits::MAX_NEW_CALLS_PER_SECOND;
}

impl Default for BrowserLimits {
    /// A quarter of the SIP defaults for the server; a client may hold two calls (a second tab)
    /// and start one a second.
    fn default() -> Self {
        BrowserLimits {
            max_calls: 50,
            max_new_calls_per_second: 5,
            max_calls_per_client: 2,
            max_new_calls_per_second_per_client: 1,
        }
    }
}

/// Who is calling: each key is limited on its own ("ip 127.0.0.1", "origin https://...").
pub type ClientKeys = Vec<String>;

#[derive(Debug)]
struct Client {
    active: usize,
    admitter: Admitter,
    last: Instant,
}

/// Admission state for browser calls. A client with no call and no recent one is forgotten,
/// so the table holds at most what the server-wide rate let in during the last second plus
/// the calls in progress.
#[derive(Debug)]
pub struct BrowserAdmission {
    limits: BrowserLimits,
    server: Admitter,
    active: usize,
    clients: HashMap<String, Client>,
}

/// How long an idle client's bucket is kept (it is full again by then).
const FORGET_AFTER: Duration = Duration::from_secs(1);

impl BrowserAdmission {
    pub fn new(limits: BrowserLimits) -> Self {
        BrowserAdmission {
            limits,
            server: Admitter::new(AdmissionLimits {
                max_calls: limits.max_calls,
                max_new_calls_per_second: limits.max_new_calls_per_second,
            }),
            active: 0,
            clients: HashMap::new(),
        }
    }

    /// Calls admitted and not yet ended.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Decides for a new call from `keys` at `now`; an admitted call counts until [`ended`].
    ///
    /// [`ended`]: BrowserAdmission::ended
    pub fn admit(&mut self, now: Instant, keys: &[String]) -> Admission {
        self.clients
            .retain(|_, c| c.active > 0 || now.saturating_duration_since(c.last) < FORGET_AFTER);
        let decision = self.server.decide(now, self.active);
        if decision != Admission::Admit {
            return decision;
        }
        let per_client = AdmissionLimits {
            max_calls: self.limits.max_calls_per_client,
            max_new_calls_per_second: self.limits.max_new_calls_per_second_per_client,
        };
        for key in keys {
            let client = self.clients.entry(key.clone()).or_insert_with(|| Client {
                active: 0,
                admitter: Admitter::new(per_client),
                last: now,
            });
            client.last = now;
            if let Admission::Refuse {
                retry_after_secs, ..
            } = client.admitter.decide(now, client.active)
            {
                return Admission::Refuse {
                    retry_after_secs,
                    why: "too many calls from this client",
                };
            }
        }
        for key in keys {
            if let Some(c) = self.clients.get_mut(key) {
                c.active += 1;
            }
        }
        self.active += 1;
        Admission::Admit
    }

    /// A call admitted for `keys` has ended.
    pub fn ended(&mut self, now: Instant, keys: &[String]) {
        self.active = self.active.saturating_sub(1);
        for key in keys {
            if let Some(c) = self.clients.get_mut(key) {
                c.active = c.active.saturating_sub(1);
                c.last = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ip: &str) -> ClientKeys {
        vec![format!("ip {ip}"), "origin https://shop.example".into()]
    }

    fn limits() -> BrowserLimits {
        BrowserLimits {
            max_calls: 3,
            max_new_calls_per_second: 100,
            max_calls_per_client: 1,
            max_new_calls_per_second_per_client: 5,
        }
    }

    #[test]
    fn one_client_cannot_hold_more_than_its_share() {
        let t = Instant::now();
        let mut a = BrowserAdmission::new(BrowserLimits {
            max_calls_per_client: 2,
            ..limits()
        });
        let k = vec!["ip 10.0.0.1".to_string()];
        assert_eq!(a.admit(t, &k), Admission::Admit);
        assert_eq!(a.admit(t, &k), Admission::Admit);
        assert!(matches!(a.admit(t, &k), Admission::Refuse { .. }));
        // Another client still gets in; an ended call frees its client's slot.
        assert_eq!(a.admit(t, &["ip 10.0.0.2".to_string()]), Admission::Admit);
        a.ended(t, &k);
        assert_eq!(a.admit(t, &k), Admission::Admit);
        assert_eq!(a.active(), 3);
        assert!(
            matches!(a.admit(t, &["ip 10.0.0.3".to_string()]), Admission::Refuse { why, .. } if why.contains("slots")),
            "the server-wide limit"
        );
    }

    #[test]
    fn the_origin_is_a_client_too_and_rates_refill() {
        let t = Instant::now();
        let mut a = BrowserAdmission::new(BrowserLimits {
            max_calls: 100,
            max_calls_per_client: 100,
            max_new_calls_per_second_per_client: 2,
            ..limits()
        });
        // Two IPs behind one site share the site's rate.
        assert_eq!(a.admit(t, &keys("1.1.1.1")), Admission::Admit);
        assert_eq!(a.admit(t, &keys("2.2.2.2")), Admission::Admit);
        let refused = a.admit(t, &keys("3.3.3.3"));
        assert!(
            matches!(refused, Admission::Refuse { retry_after_secs, .. } if retry_after_secs >= 1),
            "{refused:?}"
        );
        assert_eq!(
            a.admit(t + Duration::from_secs(1), &keys("3.3.3.3")),
            Admission::Admit
        );
    }

    #[test]
    fn idle_clients_are_forgotten() {
        let t = Instant::now();
        let mut a = BrowserAdmission::new(BrowserLimits {
            max_calls: 10_000,
            max_new_calls_per_second: 1_000,
            ..limits()
        });
        for i in 0..500 {
            let k = vec![format!("ip 10.0.{}.{}", i / 256, i % 256)];
            assert_eq!(a.admit(t, &k), Admission::Admit);
            a.ended(t, &k);
        }
        a.admit(t + Duration::from_secs(2), &["ip 192.0.2.1".to_string()]);
        assert_eq!(a.clients.len(), 1);
    }
}
