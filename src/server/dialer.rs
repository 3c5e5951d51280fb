//! The callback dialer: keeps the ledger's promises. Agent-first: a due promise waits in the
//! agent queue like a caller; when an agent is free their phone rings first, with the
//! customer's context, and once they answer Humanline calls the customer through the trunk
//! and bridges the two. Every outcome is recorded; failures are retried by the ledger's
//! policy and exhausted promises escalated, never dropped.

use super::Shared;
use super::queue::{QueueMsg, ToCall};
use crate::agents::{AgentFailure, QueueInput};
use crate::callbacks::{AttemptOutcome, Promise, with_ledger};
use crate::media::{self, MediaEvent, MediaHandle, SessionConfig, StreamIds, sdp};
use crate::sip::{FailReason, OutboundCall, OutboundEvent, OutboundEvents, OutboundInvite};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{Instrument, info, info_span, warn};

/// Queue ids of callbacks live above every inbound call id.
const CALLBACK_ID_BASE: u64 = 1 << 48;
const POLL: Duration = Duration::from_secs(1);
/// An attempt that waited this long for an agent gives way and is retried later.
const AGENT_WAIT_LIMIT: Duration = Duration::from_secs(600);
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
        // One attempt per agent at a time, at most.
        let busy = in_progress.lock().map(|s| s.len()).unwrap_or(usize::MAX);
        let room = shared.agent_count.saturating_sub(busy);
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

/// One attempt at keeping a promise.
async fn attempt_callback(
    shared: &Arc<Shared>,
    trunk: &str,
    promise: &Promise,
    attempt: i64,
) -> AttemptOutcome {
    // A number we may not dial (withheld, a SIP name, off the operator's list: an old
    // ledger may hold one) is never dialed: a supervisor must act.
    let number = match shared.numbers.dialable(&promise.number) {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, "the promised number cannot be dialed; escalating");
            return AttemptOutcome::BadNumber;
        }
    };
    let queue_id = CALLBACK_ID_BASE + promise.id as u64;
    let (to_call, mut from_queue) = super::queue::to_call_channel();
    let _ = shared.queue.send(QueueMsg::Enqueue {
        call: queue_id,
        to_call,
    });
    let said = promise
        .context
        .get("said")
        .and_then(|s| s.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        });
    let headers = vec![
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
    ];
    let deadline = tokio::time::Instant::now() + AGENT_WAIT_LIMIT;
    // Agent first.
    let (agent, agent_leg) = loop {
        let msg = tokio::select! {
            m = from_queue.recv() => m,
            _ = tokio::time::sleep_until(deadline) => None,
        };
        match msg {
            Some(ToCall::Ring { agent }) => {
                if kept_meanwhile(shared, promise.id).await {
                    info!("the caller reached a person meanwhile: nobody is called back");
                    let _ = shared
                        .queue
                        .send(QueueMsg::Call(QueueInput::RingUndelivered {
                            agent,
                            call: queue_id,
                        }));
                    let _ = shared
                        .queue
                        .send(QueueMsg::Call(QueueInput::Remove { call: queue_id }));
                    return AttemptOutcome::KeptElsewhere;
                }
                info!(%agent, "ringing agent for a callback");
                match dial(
                    shared,
                    &agent,
                    headers.clone(),
                    Some(promise.number.clone()),
                )
                .await
                {
                    Ok(leg) => {
                        let _ = shared.queue.send(QueueMsg::Call(QueueInput::AgentAnswered {
                            agent: agent.clone(),
                            call: queue_id,
                        }));
                        break (agent, leg);
                    }
                    Err(why) => {
                        let failure = match why {
                            AttemptOutcome::Busy => AgentFailure::Busy,
                            AttemptOutcome::Declined => AgentFailure::Declined,
                            AttemptOutcome::NoAnswer => AgentFailure::NoAnswer,
                            _ => AgentFailure::Unreachable,
                        };
                        let _ = shared.queue.send(QueueMsg::Call(QueueInput::AgentFailed {
                            agent,
                            call: queue_id,
                            why: failure,
                        }));
                    }
                }
            }
            Some(_) => {}
            None => {
                let _ = shared
                    .queue
                    .send(QueueMsg::Call(QueueInput::Remove { call: queue_id }));
                // A `Ring` already on its way would hold that agent: give it back.
                from_queue.close();
                while let Ok(msg) = from_queue.try_recv() {
                    if let ToCall::Ring { agent } = msg {
                        let _ = shared
                            .queue
                            .send(QueueMsg::Call(QueueInput::RingUndelivered {
                                agent,
                                call: queue_id,
                            }));
                    }
                }
                return AttemptOutcome::AgentUnavailable;
            }
        }
    };
    // Then the customer, unless they reached a person while the agent's phone rang.
    if kept_meanwhile(shared, promise.id).await {
        info!("the caller reached a person meanwhile: the customer is not called");
        let _ = agent_leg.call.hangup().await;
        agent_leg.media.close().await;
        let _ = shared.queue.send(QueueMsg::Call(QueueInput::AgentFinished {
            agent,
            call: queue_id,
        }));
        return AttemptOutcome::KeptElsewhere;
    }
    let uri = customer_uri(trunk, &number);
    info!(%uri, "calling the customer");
    let customer = match dial(
        shared,
        &uri,
        vec![("X-Humanline-Callback".into(), promise.id.to_string())],
        None,
    )
    .await
    {
        Ok(leg) => leg,
        Err(why) => {
            let _ = agent_leg.call.hangup().await;
            agent_leg.media.close().await;
            let _ = shared.queue.send(QueueMsg::Call(QueueInput::AgentFinished {
                agent,
                call: queue_id,
            }));
            return why;
        }
    };
    // Connected: recorded before the conversation, so a crash now is retried, not lost.
    if let Err(e) = with_ledger(&shared.ledger, move |l| l.connected(attempt, unix_ms())).await {
        warn!(error = %e, "could not record the connection");
    }
    let _ = media::bridge(&customer.media, &agent_leg.media).await;
    info!("customer answered; bridged to the agent");
    let Leg {
        call: customer_call,
        events: mut customer_events,
        local: customer_local,
        media: customer_media,
        media_events: customer_media_events,
    } = customer;
    let mut agent_events = agent_leg.events;
    // Until either side hangs up. A customer who hangs up releases the agent; an agent who
    // hangs up leaves the customer with the IVR, never hung up on.
    let agent_left = tokio::select! {
        _ = until_final(&mut agent_events) => true,
        _ = until_final(&mut customer_events) => false,
    };
    let _ = media::unbridge(&customer_media, &agent_leg.media).await;
    agent_leg.media.close().await;
    let _ = shared.queue.send(QueueMsg::Call(QueueInput::AgentFinished {
        agent,
        call: queue_id,
    }));
    if agent_left {
        info!("the agent hung up; the customer is back with the IVR");
        tokio::spawn(super::call::continue_called_back(
            shared.clone(),
            customer_call,
            customer_events,
            customer_local,
            customer_media,
            customer_media_events,
            promise.number.clone(),
        ));
    } else {
        let _ = agent_leg.call.hangup().await;
        customer_media.close().await;
    }
    AttemptOutcome::Completed
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
