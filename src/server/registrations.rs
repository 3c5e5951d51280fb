//! Agents' phones registering: the registrar's credentials come from the users table (with
//! the login rate limit shared with the console), and each registration goes to the queue.

use crate::agents::AgentInput;
use crate::sip::{Credentials, Registration};
use crate::web::auth::{Auth, SharedUsers};
use std::net::IpAddr;
use std::time::Instant;
use tokio::sync::mpsc;

/// Registrations waiting for the queue task at most (it reads them at once).
pub const CHANNEL: usize = 1024;

pub struct UserCredentials {
    pub users: SharedUsers,
    pub auth: Auth,
}

impl Credentials for UserCredentials {
    fn ha1(&self, user: &str, realm: &str) -> Option<String> {
        // The registrar asks on an async thread, where the PostgreSQL client (a runtime of its
        // own) cannot run: the look-up runs on a thread of its own, waited for.
        let found = std::thread::scope(|s| {
            s.spawn(|| {
                let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
                users.get(user)
            })
            .join()
        });
        let Ok(found) = found else {
            tracing::warn!(%user, "REGISTER: the users look-up failed");
            return None;
        };
        match found {
            Ok(Some(u)) if u.sip_realm == realm => Some(u.sip_ha1),
            Ok(Some(u)) => {
                tracing::warn!(%user, realm = %u.sip_realm, "REGISTER: this user's SIP password was set for another realm");
                None
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "REGISTER: cannot read users");
                None
            }
        }
    }

    fn locked(&self, user: &str, ip: IpAddr) -> bool {
        self.auth.login_refused(user, ip).is_some()
    }

    fn failed(&self, user: &str, ip: IpAddr) {
        self.auth.login_failed(user, ip);
    }
}

/// Passes registrations on to the queue until either side closes.
pub fn spawn(mut from_sip: mpsc::Receiver<Registration>, to_queue: mpsc::Sender<AgentInput>) {
    tokio::spawn(async move {
        while let Some(r) = from_sip.recv().await {
            let input = match r {
                Registration::Bound {
                    user,
                    contact,
                    expires,
                } => AgentInput::Registered {
                    agent: user,
                    target: contact,
                    until: Instant::now() + expires,
                },
                Registration::Unbound { user } => AgentInput::Unregistered { agent: user },
            };
            // A full queue makes this wait; meanwhile the registrar's channel fills and the
            // phone's next REGISTER refreshes what is dropped there.
            if to_queue.send(input).await.is_err() {
                break;
            }
        }
    });
}
