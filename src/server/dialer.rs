//! The callback dialer: keeps the ledger's promises. Agent-first: a due promise waits in the
//! agent queue like a caller; when an agent is free their phone rings first, with the
//! customer's context, and once they answer Humanline calls the customer through the trunk
//! and bridges the two. Every outcome is recorded; failures are retried by the ledger's
//! policy and exhausted promises escalated, never dropped. What an attempt does next is
//! decided by [`CallbackAttempt`] (src/callbacks/attempt.rs); this file only carries it out.
//! An agent who answers in the console is offered the callback there, with the customer's
//! words, and takes it over WebRTC exactly like a call from the line.

use super::Shared;
use super::queue::{QueueMsg, ToCall};
use crate::agents::{AgentFailure, QueueInput};
use crate::callbacks::{
    AttemptAction, AttemptEvent, AttemptOutcome, CallbackAttempt, Promise, with_ledger,
};
use crate::media::webrtc::PeerState;
use crate::media::{self, MediaEvent, MediaHandle, SessionConfig, StreamIds, sdp};
use crate::sip::{FailReason, OutboundCall, OutboundEvent, OutboundEvents, OutboundInvite};
use crate::web::offers::{AcceptRefused, ConsoleRequest, OfferHandle};
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, info, info_span, warn};

/// Queue ids of callbacks live above every inbound call id.
const CALLBACK_ID_BASE: u64 = 1 << 48;
const POLL: Duration = Duration::from_secs(1);
const RING_TIMEOUT: Duration = Duration::from_secs(30);

pub fn spawn(shared: Arc<Shared>, trunk: String) {
    tokio::spawn(run(shared, trunk));
}

async fn run(shared: Arc<Shared>, trunk: String) {
    let in_progress: Arc<Mutex<HashSet<i64>>> = Arc::default();
    // An attempt that ends frees its agent: look for the next due promise at once rather
    // than at the next tick.
    let attempt_ended = Arc::new(tokio::sync::Notify::new());
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = attempt_ended.notified() => {}
        }
        // Before anything else, busy or not: this node's claims on a shared ledger stay
        // renewed while it lives, and a dead node's run-out claims are taken back.
        match with_ledger(&shared.ledger, |l| l.keep_claims(unix_ms())).await {
            Ok(0) => {}
            Ok(recovered) => warn!(
                recovered,
                "callbacks a stopped node left unfinished are due again"
            ),
            Err(e) => warn!(error = %e, "cannot renew callback claims"),
        }
        // One attempt per agent at a time, at most.
        let busy = in_progress.lock().map(|s| s.len()).unwrap_or(usize::MAX);
        let staffed = shared
            .agents_staffed
            .load(std::sync::atomic::Ordering::Relaxed);
        let room = staffed.saturating_sub(busy);
        if room == 0 {
            continue;
        }
        let claimed = match with_ledger(&shared.ledger, move |l| l.claim_due(unix_ms(), room)).await
        {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot read due callbacks");
                continue;
            }
        };
        for (promise, attempt) in claimed {
            if let Ok(mut s) = in_progress.lock() {
                s.insert(promise.id);
            }
            let span = info_span!("callback", id = promise.id, attempt = attempt.id, number = %promise.number);
            let shared = shared.clone();
            let trunk = trunk.clone();
            let in_progress = in_progress.clone();
            let attempt_ended = attempt_ended.clone();
            tokio::spawn(
                async move {
                    let id = promise.id;
                    let outcome = attempt_callback(&shared, &trunk, &promise, attempt.id).await;
                    record(&shared, attempt.id, outcome).await;
                    if let Ok(mut s) = in_progress.lock() {
                        s.remove(&id);
                    }
                    attempt_ended.notify_one();
                }
                .instrument(span),
            );
        }
    }
}

async fn record(shared: &Shared, attempt: i64, outcome: AttemptOutcome) {
    match with_ledger(&shared.ledger, move |l| {
        l.finish(attempt, outcome, unix_ms())
    })
    .await
    {
        Ok(p) => info!(
            outcome = outcome.as_str(),
            state = p.state.as_str(),
            "callback attempt recorded"
        ),
        Err(e) => warn!(error = %e, "callback attempt not recorded"),
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The trunk URI with the customer's number as its user part.
pub fn customer_uri(trunk: &str, number: &str) -> String {
    let number: String = number
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '+')
        .collect();
    let (scheme, rest) = trunk.split_once(':').unwrap_or(("sip", trunk));
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}:{number}@{host}")
}

struct Leg {
    call: OutboundCall,
    events: OutboundEvents,
    /// Our media as offered: its SDP version goes on from there on a re-INVITE.
    local: media::LocalMedia,
    media: MediaHandle,
    media_events: mpsc::Receiver<MediaEvent>,
}

/// The agent's answered leg: their phone, or their console's WebRTC connection.
enum AgentLeg {
    Phone(Leg),
    Console(ConsoleLeg),
}

/// A callback taken in the agent's console: the offer stays theirs (its hang-up arrives on
/// it) and the browser's connection carries the audio.
struct ConsoleLeg {
    offer: OfferHandle,
    media: MediaHandle,
    /// Kept so the media task's events never block it; nothing in them is needed here.
    _media_events: mpsc::Receiver<MediaEvent>,
    state: watch::Receiver<PeerState>,
}

impl AgentLeg {
    fn media(&self) -> &MediaHandle {
        match self {
            AgentLeg::Phone(leg) => &leg.media,
            AgentLeg::Console(leg) => &leg.media,
        }
    }

    fn into_media(self) -> MediaHandle {
        match self {
            AgentLeg::Phone(leg) => leg.media,
            AgentLeg::Console(leg) => leg.media,
        }
    }

    /// Hangs up the agent's side (a BYE to the phone; the console's connection closed, which
    /// its page sees as the call's end).
    async fn hang_up(self) {
        if let AgentLeg::Phone(leg) = &self {
            let _ = leg.call.hangup().await;
        }
        self.into_media().close().await;
    }

    /// Until the agent's side is over: the phone's BYE, the console's hang-up, or the
    /// browser gone.
    async fn ended(&mut self) {
        match self {
            AgentLeg::Phone(leg) => until_final(&mut leg.events).await,
            AgentLeg::Console(leg) => loop {
                tokio::select! {
                    request = leg.offer.requests.recv() => match request {
                        Some(ConsoleRequest::Accept { reply, .. }) => {
                            let _ = reply.send(Err(AcceptRefused::Gone(
                                "this call is answered already".into(),
                            )));
                        }
                        Some(ConsoleRequest::Decline | ConsoleRequest::HangUp) | None => return,
                    },
                    changed = leg.state.changed() => {
                        if changed.is_err() || *leg.state.borrow_and_update() == PeerState::Gone {
                            return;
                        }
                    }
                }
            },
        }
    }
}

/// A console's accepted leg while its browser connects.
type Connecting = (
    MediaHandle,
    mpsc::Receiver<MediaEvent>,
    watch::Receiver<PeerState>,
);

/// Offers the callback in `agent`'s console (the queue's view shows the customer's words
/// there) until they accept and their browser connects, decline, or `RING_TIMEOUT` passes.
async fn offer_in_console(
    shared: &Shared,
    agent: &str,
    queue_id: u64,
) -> Result<ConsoleLeg, AgentFailure> {
    enum Next {
        Request(Option<ConsoleRequest>),
        Connection(PeerState),
        TimedOut,
    }
    let mut offer = shared.offers.offer(agent, queue_id);
    let deadline = tokio::time::Instant::now() + RING_TIMEOUT;
    let mut accepted: Option<Connecting> = None;
    let why = loop {
        let next = {
            let connection = async {
                match accepted.as_mut() {
                    Some((_, _, state)) => match state.changed().await {
                        Ok(()) => *state.borrow_and_update(),
                        Err(_) => PeerState::Gone,
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                request = offer.requests.recv() => Next::Request(request),
                state = connection => Next::Connection(state),
                _ = tokio::time::sleep_until(deadline) => Next::TimedOut,
            }
        };
        match next {
            Next::Request(Some(ConsoleRequest::Accept { offer: sdp, reply })) => {
                if accepted.is_some() {
                    let _ = reply.send(Err(AcceptRefused::Gone(
                        "this call is being answered already".into(),
                    )));
                    continue;
                }
                match super::browser::answer_offer(shared, &sdp, |c| c).await {
                    Ok(leg) => {
                        if reply.send(Ok(leg.answer_sdp)).is_ok() {
                            info!(%agent, "agent accepted the callback in the console; connecting");
                        }
                        // An answer that never reached the console: its browser cannot
                        // connect, and the ring timeout ends the offer.
                        accepted = Some((leg.media, leg.media_events, leg.state));
                    }
                    Err(why) => {
                        info!(%agent, ?why, "the console's offer was not usable");
                        let _ = reply.send(Err(match why {
                            super::browser::LegRefused::BadOffer(w) => AcceptRefused::BadOffer(w),
                            super::browser::LegRefused::Unavailable(w) => {
                                AcceptRefused::Unavailable(w)
                            }
                        }));
                    }
                }
            }
            Next::Request(Some(ConsoleRequest::Decline | ConsoleRequest::HangUp)) => {
                info!(%agent, "agent declined the callback in the console");
                break AgentFailure::Declined;
            }
            // The offer was replaced (the console closed, or another call rang them).
            Next::Request(None) => break AgentFailure::Unreachable,
            Next::Connection(PeerState::Connected) => {
                if let Some((media, media_events, state)) = accepted.take() {
                    return Ok(ConsoleLeg {
                        offer,
                        media,
                        _media_events: media_events,
                        state,
                    });
                }
            }
            Next::Connection(PeerState::Gone) => {
                info!(%agent, "agent's browser never connected");
                break AgentFailure::Unreachable;
            }
            // ICE consent failing: the browser may come back; its end is `Gone`.
            Next::Connection(PeerState::Connecting | PeerState::Disconnected) => {}
            Next::TimedOut => {
                info!(%agent, "the console did not take the callback in time");
                break AgentFailure::NoAnswer;
            }
        }
    };
    if let Some((media, _, _)) = accepted {
        media.close().await;
    }
    Err(why)
}

/// Rings `uri`; returns the answered leg with its media, or why not.
async fn dial(
    shared: &Shared,
    uri: &str,
    headers: Vec<(String, String)>,
    from: Option<String>,
) -> Result<Leg, AttemptOutcome> {
    let socket = media::bind_rtp_socket(shared.media_ip, shared.rtp_ports)
        .await
        .map_err(|_| AttemptOutcome::Failed)?;
    let port = socket
        .local_addr()
        .map_err(|_| AttemptOutcome::Failed)?
        .port();
    let local = media::LocalMedia {
        ip: shared.media_ip,
        port,
        session_id: unix_ms() as u64,
        session_version: 1,
    };
    let invite = OutboundInvite {
        target_uri: uri.to_string(),
        offer_sdp: sdp::offer(&local, media::Direction::SendRecv),
        extra_headers: headers,
        from_user: from,
        ring_timeout: Some(RING_TIMEOUT),
        ..Default::default()
    };
    let (call, mut events) = shared.sip.invite_with(invite).await.map_err(|e| {
        warn!(%uri, error = %e, "INVITE failed");
        AttemptOutcome::Failed
    })?;
    loop {
        match events.recv().await {
            Some(OutboundEvent::Answered { answer_sdp }) => {
                // An answered leg we cannot use is hung up, not left up at the far end.
                let spawned = sdp::parse_answer(&answer_sdp)
                    .map_err(|e| e.to_string())
                    .and_then(|remote| {
                        media::spawn(socket, SessionConfig::new(&remote, StreamIds::random()))
                            .map_err(|e| e.to_string())
                    });
                let (media, media_events) = match spawned {
                    Ok(m) => m,
                    Err(error) => {
                        warn!(%uri, %error, "answer unusable: hanging up that leg");
                        let _ = call.hangup().await;
                        return Err(AttemptOutcome::Failed);
                    }
                };
                return Ok(Leg {
                    call,
                    events,
                    local,
                    media,
                    media_events,
                });
            }
            Some(OutboundEvent::Failed { reason, .. }) => {
                return Err(match reason {
                    FailReason::Busy => AttemptOutcome::Busy,
                    FailReason::Declined => AttemptOutcome::Declined,
                    FailReason::NoAnswer => AttemptOutcome::NoAnswer,
                    _ => AttemptOutcome::Failed,
                });
            }
            Some(ev) if ev.is_final() => return Err(AttemptOutcome::Failed),
            Some(_) => {}
            None => return Err(AttemptOutcome::Failed),
        }
    }
}

/// One attempt at keeping a promise: the [`CallbackAttempt`] decides, this carries it out.
async fn attempt_callback(
    shared: &Arc<Shared>,
    trunk: &str,
    promise: &Promise,
    attempt: i64,
) -> AttemptOutcome {
    let queue_id = CALLBACK_ID_BASE + promise.id as u64;
    let (to_call, mut from_queue) = super::queue::to_call_channel();
    let number = shared.numbers.dialable(&promise.number).map_err(|e| {
        // An old ledger may hold one: never dialed, a supervisor must act.
        warn!(error = %e, "the promised number cannot be dialed; escalating");
        e.to_string()
    });
    let mut machine = CallbackAttempt::new(number);
    let mut agent_leg: Option<AgentLeg> = None;
    let mut customer: Option<Leg> = None;
    let mut queue_open = true;
    // Where each agent the queue offered rings (their phone's Contact).
    let mut targets: std::collections::HashMap<String, String> = Default::default();
    let mut pending: VecDeque<AttemptAction> = machine.start(Instant::now()).into();
    loop {
        while let Some(action) = pending.pop_front() {
            let event = match action {
                AttemptAction::Enqueue => {
                    let caller = crate::agents::CallerInfo {
                        reason: format!("callback ({})", promise.reason),
                        said: promise_said(promise),
                        language: promise.context["language"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    };
                    shared
                        .tell_queue(QueueMsg::Enqueue {
                            call: queue_id,
                            to_call: to_call.clone(),
                            caller,
                        })
                        .await;
                    None
                }
                AttemptAction::LeaveQueue => {
                    shared
                        .tell_queue(QueueMsg::Call(QueueInput::Remove { call: queue_id }))
                        .await;
                    None
                }
                AttemptAction::CheckPromise => Some(if kept_meanwhile(shared, promise.id).await {
                    info!("the caller reached a person meanwhile: nobody is called back");
                    AttemptEvent::PromiseKept
                } else {
                    AttemptEvent::PromiseOpen
                }),
                AttemptAction::GiveBackAgent { agent } => {
                    shared
                        .tell_queue(QueueMsg::Call(QueueInput::RingUndelivered {
                            agent,
                            call: queue_id,
                        }))
                        .await;
                    None
                }
                AttemptAction::RingAgent { agent } => {
                    let target = targets
                        .get(&agent)
                        .cloned()
                        .unwrap_or_else(|| agent.clone());
                    let headers = agent_headers(promise);
                    Some(match crate::agents::AgentTarget::parse(&target) {
                        crate::agents::AgentTarget::Browser { .. } => {
                            info!(%agent, "offering the callback in the agent's console");
                            match offer_in_console(shared, &agent, queue_id).await {
                                Ok(leg) => {
                                    agent_leg = Some(AgentLeg::Console(leg));
                                    AttemptEvent::AgentAnswered
                                }
                                Err(why) => AttemptEvent::AgentFailed { why },
                            }
                        }
                        crate::agents::AgentTarget::Sip(uri) => {
                            info!(%agent, target = %uri, "ringing agent for a callback");
                            match dial(shared, &uri, headers, Some(promise.number.clone())).await {
                                Ok(leg) => {
                                    agent_leg = Some(AgentLeg::Phone(leg));
                                    AttemptEvent::AgentAnswered
                                }
                                Err(why) => AttemptEvent::AgentFailed {
                                    why: match why {
                                        AttemptOutcome::Busy => AgentFailure::Busy,
                                        AttemptOutcome::Declined => AgentFailure::Declined,
                                        AttemptOutcome::NoAnswer => AgentFailure::NoAnswer,
                                        _ => AgentFailure::Unreachable,
                                    },
                                },
                            }
                        }
                    })
                }
                AttemptAction::ReportAgentAnswered { agent } => {
                    shared
                        .tell_queue(QueueMsg::Call(QueueInput::AgentAnswered {
                            agent,
                            call: queue_id,
                        }))
                        .await;
                    None
                }
                AttemptAction::ReportAgentFailed { agent, why } => {
                    shared
                        .tell_queue(QueueMsg::Call(QueueInput::AgentFailed {
                            agent,
                            call: queue_id,
                            why,
                        }))
                        .await;
                    None
                }
                AttemptAction::ReleaseAgent { agent } => {
                    shared
                        .tell_queue(QueueMsg::Call(QueueInput::AgentFinished {
                            agent,
                            call: queue_id,
                        }))
                        .await;
                    None
                }
                AttemptAction::HangUpAgent => {
                    if let Some(leg) = agent_leg.take() {
                        leg.hang_up().await;
                    }
                    None
                }
                AttemptAction::DialCustomer { number } => {
                    let uri = customer_uri(trunk, &number);
                    info!(%uri, "calling the customer");
                    let headers = vec![("X-Humanline-Callback".into(), promise.id.to_string())];
                    Some(match dial(shared, &uri, headers, None).await {
                        Ok(leg) => {
                            customer = Some(leg);
                            AttemptEvent::CustomerAnswered
                        }
                        Err(outcome) => AttemptEvent::CustomerFailed { outcome },
                    })
                }
                AttemptAction::RecordConnected => {
                    // Recorded before the conversation, so a crash now is retried, not lost.
                    if let Err(e) =
                        with_ledger(&shared.ledger, move |l| l.connected(attempt, unix_ms())).await
                    {
                        warn!(error = %e, "could not record the connection");
                    }
                    None
                }
                AttemptAction::Bridge => {
                    if let (Some(c), Some(a)) = (&customer, &agent_leg) {
                        let _ = media::bridge(&c.media, a.media()).await;
                        info!("customer answered; bridged to the agent");
                    }
                    None
                }
                AttemptAction::Unbridge => {
                    if let (Some(c), Some(a)) = (&customer, &agent_leg) {
                        let _ = media::unbridge(&c.media, a.media()).await;
                    }
                    None
                }
                AttemptAction::HandCustomerToIvr => {
                    if let Some(c) = customer.take() {
                        info!("the agent hung up; the customer is back with the IVR");
                        tokio::spawn(super::call::continue_called_back(
                            shared.clone(),
                            c.call,
                            c.events,
                            c.local,
                            c.media,
                            c.media_events,
                            promise.number.clone(),
                        ));
                    }
                    None
                }
                AttemptAction::Finish { outcome } => {
                    // Whatever is left is over: the agent's leg ended or was hung up, a
                    // customer still here hung up themselves (never hung up on).
                    if let Some(leg) = agent_leg.take() {
                        leg.into_media().close().await;
                    }
                    if let Some(c) = customer.take() {
                        c.media.close().await;
                    }
                    // A `Ring` already on its way would hold that agent: give it back.
                    from_queue.close();
                    while let Ok(msg) = from_queue.try_recv() {
                        if let ToCall::Ring { agent, .. } = msg {
                            shared
                                .tell_queue(QueueMsg::Call(QueueInput::RingUndelivered {
                                    agent,
                                    call: queue_id,
                                }))
                                .await;
                        }
                    }
                    return outcome;
                }
            };
            if let Some(event) = event {
                let next = machine.handle(Instant::now(), event);
                pending.extend(next);
            }
        }
        let event = tokio::select! {
            msg = from_queue.recv(), if queue_open => match msg {
                Some(ToCall::Ring { agent, target }) => {
                    targets.insert(agent.clone(), target);
                    AttemptEvent::AgentOffered { agent }
                }
                Some(_) => continue,
                None => {
                    queue_open = false;
                    continue;
                }
            },
            _ = agent_ended(agent_leg.as_mut()) => AttemptEvent::AgentLeft,
            _ = leg_ended(customer.as_mut()) => AttemptEvent::CustomerLeft,
            _ = sleep_until(machine.next_timeout()) => AttemptEvent::TimerFired,
        };
        pending.extend(machine.handle(Instant::now(), event));
    }
}

/// What the customer said when they asked for the callback.
fn promise_said(promise: &Promise) -> Vec<String> {
    promise
        .context
        .get("said")
        .and_then(|s| s.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// What the agent's phone shows for a callback: why, what the customer said, who.
fn agent_headers(promise: &Promise) -> Vec<(String, String)> {
    let said = Some(promise_said(promise).join(" | "));
    vec![
        (
            "X-Humanline-Reason".to_string(),
            format!("callback ({})", promise.reason),
        ),
        (
            "X-Humanline-Transcript".to_string(),
            said.filter(|s| !s.is_empty())
                .unwrap_or_else(|| "(nothing said)".into()),
        ),
        (
            "X-Humanline-Callback".to_string(),
            format!("{} to {}", promise.id, promise.number),
        ),
    ]
}

/// Until the agent's side is over; never, when there is no agent leg.
async fn agent_ended(leg: Option<&mut AgentLeg>) {
    match leg {
        Some(leg) => leg.ended().await,
        None => std::future::pending().await,
    }
}

/// Until this leg's final event; never, when there is no leg.
async fn leg_ended(leg: Option<&mut Leg>) {
    match leg {
        Some(leg) => until_final(&mut leg.events).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Whether the promise was kept while this attempt waited (the caller reached a person).
async fn kept_meanwhile(shared: &Shared, id: i64) -> bool {
    with_ledger(&shared.ledger, move |l| l.get(id))
        .await
        .is_ok_and(|p| p.state == crate::callbacks::PromiseState::Completed)
}

async fn until_final(events: &mut OutboundEvents) {
    while let Some(ev) = events.recv().await {
        if ev.is_final() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::customer_uri;

    #[test]
    fn the_number_goes_in_the_request_uri() {
        assert_eq!(
            customer_uri("sip:trunk@127.0.0.1:5080", "+31 20 555 0100"),
            "sip:+31205550100@127.0.0.1:5080"
        );
        assert_eq!(
            customer_uri("sip:gw.example.com;transport=tcp", "555"),
            "sip:555@gw.example.com;transport=tcp"
        );
    }
}
