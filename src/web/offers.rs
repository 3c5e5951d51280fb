//! Calls offered to agents who answer in the console. The call that rings a browser agent
//! registers its offer here (by agent name); the logged-in agent's console then accepts it
//! with its WebRTC offer, declines it, or hangs up the call it took:
//!
//! - `POST /api/me/calls/{call}/accept` (`Content-Type: application/sdp`, the browser's
//!   offer) → `201` and our answer SDP: the call sets up the agent's WebRTC leg and bridges
//!   it once connected, exactly like a SIP agent's answered leg;
//! - `POST /api/me/calls/{call}/decline` → `204`: the caller is offered to the next agent;
//! - `POST /api/me/calls/{call}/hangup` → `204`: the caller goes back to the IVR.
//!
//! Only the agent the call is offered to can act on it (the session's user), and only on the
//! call it is offered now. The HTTP side only forwards; the call's driver decides.

use super::api_error as error;
use super::auth::Session;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Largest WebRTC offer taken (Chromium's audio-only offer is about 2 kB).
const MAX_OFFER_BYTES: usize = 32 * 1024;
/// Requests one offer may have waiting for its call (an agent clicks; nothing floods).
const REQUESTS_PER_OFFER: usize = 4;
/// The console may see the offer (the queue's view) a moment before the call has put it
/// here: an accept waits this long for it.
const OFFER_APPEARS_WITHIN: Duration = Duration::from_secs(2);
/// How long a request waits for the call's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What an agent's console asks of the call offered to them.
#[derive(Debug)]
pub enum ConsoleRequest {
    /// Take the call: the browser's SDP offer; the reply is our answer, or why not.
    Accept {
        offer: String,
        reply: oneshot::Sender<Result<String, AcceptRefused>>,
    },
    Decline,
    HangUp,
}

/// Why an accept got no answer SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptRefused {
    /// The offer is malformed or has no audio we can take (400).
    BadOffer(String),
    /// Taken already (by another tab), or the offer is over (409).
    Gone(String),
    /// No media port or another server-side failure (503).
    Unavailable(String),
}

struct Offered {
    call: u64,
    requests: mpsc::Sender<ConsoleRequest>,
}

/// The calls offered to browser agents now, by agent name. Cheap to clone.
#[derive(Clone, Default)]
pub struct ConsoleOffers {
    offers: Arc<Mutex<HashMap<String, Offered>>>,
}

impl std::fmt::Debug for ConsoleOffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleOffers").finish_non_exhaustive()
    }
}

/// A call's hold on its offer to an agent: the console's requests arrive on `requests`;
/// dropping it withdraws the offer (the call ended, or the agent's leg did).
pub struct OfferHandle {
    offers: ConsoleOffers,
    agent: String,
    call: u64,
    pub requests: mpsc::Receiver<ConsoleRequest>,
}

impl std::fmt::Debug for OfferHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfferHandle")
            .field("agent", &self.agent)
            .field("call", &self.call)
            .finish_non_exhaustive()
    }
}

impl Drop for OfferHandle {
    fn drop(&mut self) {
        let mut offers = self.offers.lock();
        // Only our own: a newer offer to the same agent stays.
        if offers.get(&self.agent).is_some_and(|o| o.call == self.call) {
            offers.remove(&self.agent);
        }
    }
}

impl ConsoleOffers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Offered>> {
        crate::sync::lock(&self.offers)
    }

    /// Offers `call` to `agent`'s console. The queue rings an agent for one call at a time,
    /// so an older offer to them is over: it is replaced (its call hears its requests end).
    pub fn offer(&self, agent: &str, call: u64) -> OfferHandle {
        let (tx, rx) = mpsc::channel(REQUESTS_PER_OFFER);
        self.lock()
            .insert(agent.to_string(), Offered { call, requests: tx });
        OfferHandle {
            offers: self.clone(),
            agent: agent.to_string(),
            call,
            requests: rx,
        }
    }

    fn find(&self, agent: &str, call: u64) -> Option<mpsc::Sender<ConsoleRequest>> {
        self.lock()
            .get(agent)
            .filter(|o| o.call == call)
            .map(|o| o.requests.clone())
    }

    /// The offer of `call` to `agent`, waiting a moment for it to appear.
    async fn wait_for(&self, agent: &str, call: u64) -> Option<mpsc::Sender<ConsoleRequest>> {
        let until = Instant::now() + OFFER_APPEARS_WITHIN;
        loop {
            if let Some(tx) = self.find(agent, call) {
                return Some(tx);
            }
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many offers are out (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl axum::extract::FromRef<super::WebState> for ConsoleOffers {
    fn from_ref(s: &super::WebState) -> ConsoleOffers {
        s.desk.offers.clone()
    }
}

fn session_user(req: &Request) -> Option<String> {
    req.extensions().get::<Session>().map(|s| s.user.clone())
}

fn no_offer(call: u64) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("call {call} is not offered to you (any more)"),
    )
}

/// `POST /api/me/calls/{call}/accept`.
pub async fn accept(
    State(offers): State<ConsoleOffers>,
    Path(call): Path<u64>,
    req: Request,
) -> Response {
    let Some(agent) = session_user(&req) else {
        return error(StatusCode::UNAUTHORIZED, "log in first");
    };
    let is_sdp = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"));
    if !is_sdp {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "accept takes the browser's SDP offer with Content-Type: application/sdp",
        );
    }
    let Ok(body) = axum::body::to_bytes(req.into_body(), MAX_OFFER_BYTES).await else {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "offer too large");
    };
    let Ok(offer) = String::from_utf8(body.to_vec()) else {
        return error(StatusCode::BAD_REQUEST, "malformed SDP offer: not UTF-8");
    };
    if !offer.trim_start().starts_with("v=0") {
        return error(
            StatusCode::BAD_REQUEST,
            "malformed SDP offer: an SDP description starts with v=0",
        );
    }
    let Some(tx) = offers.wait_for(&agent, call).await else {
        return no_offer(call);
    };
    let (reply, answer) = oneshot::channel();
    if tx
        .try_send(ConsoleRequest::Accept { offer, reply })
        .is_err()
    {
        return error(StatusCode::CONFLICT, "the call is busy answering you");
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(Ok(sdp))) => (
            StatusCode::CREATED,
            [(header::CONTENT_TYPE, "application/sdp")],
            sdp,
        )
            .into_response(),
        Ok(Ok(Err(AcceptRefused::BadOffer(why)))) => error(
            StatusCode::BAD_REQUEST,
            format!("malformed or unusable SDP offer: {why}"),
        ),
        Ok(Ok(Err(AcceptRefused::Gone(why)))) => error(StatusCode::CONFLICT, why),
        Ok(Ok(Err(AcceptRefused::Unavailable(why)))) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot connect you: {why}"),
        ),
        // The call ended meanwhile.
        Ok(Err(_)) => no_offer(call),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the call did not answer"),
    }
}

async fn forward(
    offers: &ConsoleOffers,
    call: u64,
    agent: Option<String>,
    request: ConsoleRequest,
) -> Response {
    let Some(agent) = agent else {
        return error(StatusCode::UNAUTHORIZED, "log in first");
    };
    let Some(tx) = offers.wait_for(&agent, call).await else {
        return no_offer(call);
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, tx.send(request)).await {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(_)) => no_offer(call),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the call did not answer"),
    }
}

/// `POST /api/me/calls/{call}/decline`.
pub async fn decline(
    State(offers): State<ConsoleOffers>,
    Path(call): Path<u64>,
    req: Request,
) -> Response {
    forward(&offers, call, session_user(&req), ConsoleRequest::Decline).await
}

/// `POST /api/me/calls/{call}/hangup`.
pub async fn hang_up(
    State(offers): State<ConsoleOffers>,
    Path(call): Path<u64>,
    req: Request,
) -> Response {
    forward(&offers, call, session_user(&req), ConsoleRequest::HangUp).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_is_the_agents_for_that_call_until_its_handle_drops() {
        let offers = ConsoleOffers::default();
        let first = offers.offer("ann", 1);
        assert!(offers.find("ann", 1).is_some());
        assert!(offers.find("ann", 2).is_none(), "another call's id");
        assert!(offers.find("bob", 1).is_none(), "another agent");
        // A newer offer to ann replaces the old one; the old handle's drop leaves it.
        let second = offers.offer("ann", 2);
        assert!(offers.find("ann", 1).is_none());
        drop(first);
        assert!(offers.find("ann", 2).is_some());
        drop(second);
        assert!(offers.is_empty());
    }
}
