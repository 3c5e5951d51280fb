//! Inbound calls (a caller INVITEd us): the handle and its events.
//!
//! By design there is no way to send BYE on an inbound dialog: only the caller ends the call.
//! [`InboundCall`] can ring, answer or reject (before answering), nothing else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use rsipstack::dialog::dialog::{DialogState, TerminatedReason, TransactionHandle};
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::platform::CancellationToken;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Method, StatusCode};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, warn};

use super::endpoint::{ALLOW, InboundSlot, Shared};
use super::error::{SipError, SipResult};
use super::types::{DtmfInfo, HeaderList, RejectStatus, SipParty, SipTransport, parse_dtmf_info};

/// A new call from a caller, delivered by [`super::IncomingCalls::recv`]. `100 Trying` was
/// already sent. Decide with [`InboundCall::answer`] or [`InboundCall::reject`]; until then
/// [`InboundCall::ringing`] may be sent. Dropping every `InboundCall` clone without deciding
/// rejects the call with `480 Temporarily Unavailable`.
#[derive(Debug)]
pub struct IncomingCall {
    /// The Call-ID header of the INVITE.
    pub call_id: String,
    /// The caller (From header). `from.user` is the caller ID.
    pub from: SipParty,
    /// The called party (To header): which number was dialled.
    pub to: SipParty,
    /// The request URI of the INVITE.
    pub request_uri: String,
    /// The SDP offer (body of the INVITE), as received.
    pub offer_sdp: String,
    /// All headers of the INVITE, in order.
    pub headers: HeaderList,
    /// Where the INVITE came from (the caller's SIP address, not its media address).
    pub remote_addr: Option<SocketAddr>,
    pub transport: SipTransport,
    /// Control handle: ringing / answer / reject. Has no BYE.
    pub call: InboundCall,
    /// What happens on this call from now on (ACK, CANCEL, BYE, re-INVITE, INFO).
    pub events: InboundEvents,
}

/// Events of an inbound call, in the order they happened.
#[derive(Debug)]
pub enum InboundEvent {
    /// The ACK for our 200 OK arrived: the call is established.
    Confirmed,
    /// The caller cancelled before we answered. The stack answered the CANCEL with 200 and
    /// the INVITE with 487. Final event.
    Cancelled,
    /// The caller hung up; the stack answered the BYE with 200. Final event.
    Bye,
    /// The caller sent a re-INVITE (hold, unhold, codec change). Answer it with
    /// [`ReInviteReply::accept`] (200 + our SDP) or [`ReInviteReply::reject`].
    ReInvite { sdp: String, reply: ReInviteReply },
    /// The caller sent INFO (answered 200). `dtmf` is set for `application/dtmf-relay`.
    Info {
        content_type: Option<String>,
        body: Vec<u8>,
        dtmf: Option<DtmfInfo>,
    },
    /// The call ended for another reason (no ACK for our 200 within 32 s, transport failure,
    /// rejected by us, endpoint shut down). Final event.
    Ended { reason: String },
}

impl InboundEvent {
    /// Whether no event follows this one.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            InboundEvent::Cancelled | InboundEvent::Bye | InboundEvent::Ended { .. }
        )
    }
}

/// How many events a call may leave unread. Input cannot grow the queue past it: an INFO that
/// finds it full is answered 200 but its key is dropped (a caller cannot key faster than a call
/// takes keys; the SIP stack's loop never waits for a call), a re-INVITE is answered 500 with
/// Retry-After (RFC 3261 §14.2), and the events that change the call (ACK, hang-up) wait for
/// room in this call's own task, never in the stack's.
pub(crate) const EVENT_QUEUE: usize = 64;

/// Receiver of [`InboundEvent`]s. `recv` returns `None` after the final event.
#[derive(Debug)]
pub struct InboundEvents {
    pub(crate) rx: mpsc::Receiver<InboundEvent>,
}

impl InboundEvents {
    pub async fn recv(&mut self) -> Option<InboundEvent> {
        self.rx.recv().await
    }
}

/// The answer owed to a re-INVITE or other request that needs the application's decision.
/// Dropping it unanswered answers `488 Not Acceptable Here`.
#[derive(Debug)]
pub struct ReInviteReply {
    handle: Option<TransactionHandle>,
    call_id: String,
}

impl ReInviteReply {
    pub(crate) fn new(handle: TransactionHandle, call_id: String) -> Self {
        ReInviteReply {
            handle: Some(handle),
            call_id,
        }
    }

    /// 200 OK with our SDP.
    pub async fn accept(mut self, answer_sdp: &str) -> SipResult<()> {
        let handle = self.handle.take().ok_or_else(|| self.used())?;
        handle
            .respond(
                StatusCode::OK,
                Some(sdp_headers()),
                Some(answer_sdp.as_bytes().to_vec()),
            )
            .await
            .map_err(|_| self.gone())
    }

    /// A final error status (488 when the new offer is unacceptable, 491 on glare, ...).
    pub async fn reject(mut self, status: u16) -> SipResult<()> {
        let handle = self.handle.take().ok_or_else(|| self.used())?;
        let status = if (300..700).contains(&status) {
            status
        } else {
            488
        };
        handle
            .respond(StatusCode::from(status), None, None)
            .await
            .map_err(|_| self.gone())
    }

    /// 500 with Retry-After: the call cannot take the request now (RFC 3261 §14.2).
    pub(crate) async fn busy(mut self) {
        if let Some(handle) = self.handle.take() {
            handle
                .respond(
                    StatusCode::ServerInternalError,
                    Some(vec![Header::RetryAfter("1".to_string().into())]),
                    None,
                )
                .await
                .ok();
        }
    }

    fn used(&self) -> SipError {
        SipError::InvalidState {
            call_id: self.call_id.clone(),
            operation: "reply to re-INVITE",
            reason: "already answered".into(),
        }
    }

    fn gone(&self) -> SipError {
        SipError::InvalidState {
            call_id: self.call_id.clone(),
            operation: "reply to re-INVITE",
            reason: "the transaction is gone (timed out or the call ended)".into(),
        }
    }
}

impl Drop for ReInviteReply {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                handle
                    .respond(StatusCode::NotAcceptableHere, None, None)
                    .await
                    .ok();
            });
        }
    }
}

pub(crate) fn sdp_headers() -> Vec<Header> {
    vec![
        Header::ContentType("application/sdp".into()),
        Header::Allow(ALLOW.into()),
    ]
}

const UNDECIDED: u8 = 0;
const ANSWERED: u8 = 1;
const REJECTED: u8 = 2;

struct InboundInner {
    dialog: InviteDialog,
    call_id: String,
    decision: AtomicU8,
    /// Set by [`InboundCall::release`]: the call is over for Humanline, its dialog is dropped.
    released: CancellationToken,
}

impl Drop for InboundInner {
    fn drop(&mut self) {
        if self.decision.load(Ordering::SeqCst) == UNDECIDED
            && !matches!(self.dialog.state(), DialogState::Terminated(..))
        {
            warn!(call_id = %self.call_id, "inbound call dropped undecided: rejecting with 480");
            self.dialog
                .reject(Some(StatusCode::TemporarilyUnavailable), None)
                .ok();
        }
    }
}

/// Control handle of an inbound (caller) leg. Cheap to clone.
///
/// There is intentionally no `bye`/`hangup`: Humanline never ends a caller's call.
#[derive(Clone)]
pub struct InboundCall {
    inner: Arc<InboundInner>,
}

impl std::fmt::Debug for InboundCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundCall")
            .field("call_id", &self.inner.call_id)
            .finish()
    }
}

impl InboundCall {
    pub fn call_id(&self) -> &str {
        &self.inner.call_id
    }

    fn state_error(&self, operation: &'static str, reason: &str) -> SipError {
        SipError::InvalidState {
            call_id: self.inner.call_id.clone(),
            operation,
            reason: reason.to_string(),
        }
    }

    fn ensure_alive(&self, operation: &'static str) -> SipResult<()> {
        if let DialogState::Terminated(_, reason) = self.inner.dialog.state() {
            return Err(self.state_error(operation, &format!("call already ended ({reason:?})")));
        }
        Ok(())
    }

    /// Sends `180 Ringing` (only before the answer).
    pub fn ringing(&self) -> SipResult<()> {
        self.ensure_alive("ringing")?;
        if self.inner.decision.load(Ordering::SeqCst) != UNDECIDED {
            return Err(self.state_error("ringing", "already answered or rejected"));
        }
        self.inner.dialog.ringing(None, None)?;
        Ok(())
    }

    /// Answers with `200 OK` carrying `answer_sdp`. The stack retransmits the 200 until the ACK
    /// arrives ([`InboundEvent::Confirmed`]). Fails if the caller already cancelled.
    pub fn answer(&self, answer_sdp: &str) -> SipResult<()> {
        self.ensure_alive("answer")?;
        self.inner
            .decision
            .compare_exchange(UNDECIDED, ANSWERED, Ordering::SeqCst, Ordering::SeqCst)
            .map_err(|_| self.state_error("answer", "already answered or rejected"))?;
        self.inner
            .dialog
            .accept(Some(sdp_headers()), Some(answer_sdp.as_bytes().to_vec()))?;
        info!(call_id = %self.inner.call_id, "answered");
        Ok(())
    }

    /// Asks the caller's phone whether it is still there: an in-dialog OPTIONS (RFC 3261
    /// §11). True for any final answer but 408 and 481 (RFC 5057: the dialog is gone); false
    /// for those, for no answer within the transaction's timeout, and before the ACK.
    pub async fn probe(&self) -> bool {
        probe_dialog(&self.inner.dialog, &self.inner.call_id).await
    }

    /// Forgets a call whose caller is gone without a BYE (no media and no answer to the
    /// probe): the stack drops the dialog and its event pump ends, so a vanished phone leaves
    /// nothing behind. Nothing is sent to the caller (no BYE: Humanline never hangs up); a
    /// request that still comes on the dialog is answered 481, as for any unknown dialog.
    pub fn release(&self) {
        self.inner.released.cancel();
    }

    /// Rejects the INVITE (only before answering): for offers we cannot serve, never as a
    /// hang-up.
    pub fn reject(&self, status: RejectStatus) -> SipResult<()> {
        self.ensure_alive("reject")?;
        self.inner
            .decision
            .compare_exchange(UNDECIDED, REJECTED, Ordering::SeqCst, Ordering::SeqCst)
            .map_err(|_| self.state_error("reject", "already answered or rejected"))?;
        self.inner.dialog.reject(Some(status.to_stack()), None)?;
        info!(call_id = %self.inner.call_id, status = status.code(), "rejected");
        Ok(())
    }
}

/// An in-dialog OPTIONS on either side's dialog; see [`InboundCall::probe`].
pub(crate) async fn probe_dialog(dialog: &InviteDialog, call_id: &str) -> bool {
    if !dialog.state().is_confirmed() {
        return false;
    }
    match dialog
        .request(
            Method::Options,
            Some(vec![Header::Allow(ALLOW.into())]),
            None,
        )
        .await
    {
        Ok(Some(resp)) => {
            let code = resp.status_code.code();
            debug!(call_id, code, "probe answered");
            code != 408 && code != 481
        }
        Ok(None) => {
            debug!(call_id, "probe unanswered");
            false
        }
        Err(e) => {
            debug!(call_id, error = %e, "probe failed");
            false
        }
    }
}

/// Builds the [`IncomingCall`] for a new INVITE and starts its event pump.
#[allow(clippy::too_many_arguments)] // what the endpoint knows of a new INVITE, moved in once
pub(crate) fn start_inbound(
    shared: &Arc<Shared>,
    slot: InboundSlot,
    dialog: InviteDialog,
    state_rx: rsipstack::dialog::dialog::DialogStateReceiver,
    req: &rsipstack::sip::Request,
    remote_addr: Option<SocketAddr>,
    transport: SipTransport,
    call_id: String,
) -> (IncomingCall, tokio::sync::oneshot::Receiver<()>) {
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let released = CancellationToken::new();
    let span = tracing::info_span!("sip_call", call_id = %call_id, dir = "in");
    tokio::spawn(
        pump_inbound(
            shared.clone(),
            slot,
            dialog.clone(),
            state_rx,
            ev_tx,
            call_id.clone(),
            started_tx,
            released.clone(),
        )
        .instrument(span),
    );
    let call = IncomingCall {
        from: party_of(req.from_header().ok().map(|h| h.value())),
        to: party_of(req.to_header().ok().map(|h| h.value())),
        request_uri: req.uri.to_string(),
        offer_sdp: String::from_utf8_lossy(&req.body).into_owned(),
        headers: req
            .headers
            .iter()
            .map(|h| (h.name().to_string(), h.value().to_string()))
            .collect(),
        remote_addr,
        transport,
        call: InboundCall {
            inner: Arc::new(InboundInner {
                dialog,
                call_id: call_id.clone(),
                decision: AtomicU8::new(UNDECIDED),
                released,
            }),
        },
        events: InboundEvents { rx: ev_rx },
        call_id,
    };
    (call, started_rx)
}

/// Parses a From/To header value into a [`SipParty`]; tolerant (falls back to the raw value).
pub(crate) fn party_of(value: Option<&str>) -> SipParty {
    let raw = value.unwrap_or_default();
    match rsipstack::sip::typed::From::parse(raw) {
        Ok(f) => SipParty {
            uri: f.uri.to_string(),
            display_name: f
                .display_name
                .map(|d| d.trim().trim_matches('"').to_string())
                .filter(|d| !d.is_empty()),
            user: f.uri.auth.map(|a| a.user).filter(|u| !u.is_empty()),
        },
        Err(_) => SipParty {
            uri: raw.to_string(),
            display_name: None,
            user: None,
        },
    }
}

/// Translates the dialog's states into [`InboundEvent`]s until the dialog ends.
#[allow(clippy::too_many_arguments)] // one task's inputs, each moved in once
async fn pump_inbound(
    shared: Arc<Shared>,
    _slot: InboundSlot,
    dialog: InviteDialog,
    mut state_rx: rsipstack::dialog::dialog::DialogStateReceiver,
    events: mpsc::Sender<InboundEvent>,
    call_id: String,
    started: tokio::sync::oneshot::Sender<()>,
    released: CancellationToken,
) {
    let mut started = Some(started);
    let mut confirmed = false;
    let cancel = shared.cancel.clone();
    loop {
        let state = tokio::select! {
            s = state_rx.recv() => s,
            _ = cancel.cancelled() => {
                events.send(InboundEvent::Ended { reason: "endpoint shut down".into() }).await.ok();
                break;
            }
            _ = released.cancelled() => {
                info!("caller gone without a BYE: dialog released");
                break;
            }
        };
        let Some(state) = state else {
            events
                .send(InboundEvent::Ended {
                    reason: "dialog closed".into(),
                })
                .await
                .ok();
            break;
        };
        match state {
            DialogState::Confirmed(..) => {
                if !confirmed {
                    confirmed = true;
                    debug!("ACK received, call confirmed");
                    events.send(InboundEvent::Confirmed).await.ok();
                }
            }
            DialogState::Updated(_, req, handle) => {
                if req.method == Method::Invite {
                    let sdp = String::from_utf8_lossy(&req.body).into_owned();
                    info!("re-INVITE received");
                    let reply = ReInviteReply::new(handle, call_id.clone());
                    offer_reinvite(&events, InboundEvent::ReInvite { sdp, reply });
                } else {
                    // UPDATE: not offered in Allow
                    handle
                        .respond(
                            StatusCode::MethodNotAllowed,
                            Some(vec![Header::Allow(ALLOW.into())]),
                            None,
                        )
                        .await
                        .ok();
                }
            }
            DialogState::Info(_, req, handle) => {
                handle.reply(StatusCode::OK).await.ok();
                let content_type = req.headers.iter().find_map(|h| match h {
                    Header::ContentType(c) => Some(c.value().to_string()),
                    _ => None,
                });
                let dtmf = parse_dtmf_info(content_type.as_deref(), &req.body);
                debug!(?dtmf, "INFO received");
                offer_info(
                    &events,
                    InboundEvent::Info {
                        content_type,
                        body: req.body.clone(),
                        dtmf,
                    },
                );
            }
            DialogState::Options(_, _, handle) => {
                handle
                    .respond(
                        StatusCode::OK,
                        Some(vec![Header::Allow(ALLOW.into())]),
                        None,
                    )
                    .await
                    .ok();
            }
            DialogState::Refer(_, _, handle)
            | DialogState::Message(_, _, handle)
            | DialogState::Notify(_, _, handle)
            | DialogState::Publish(_, _, handle) => {
                handle
                    .respond(
                        StatusCode::MethodNotAllowed,
                        Some(vec![Header::Allow(ALLOW.into())]),
                        None,
                    )
                    .await
                    .ok();
            }
            DialogState::Terminated(id, reason) => {
                let ev = match reason {
                    TerminatedReason::UacBye => InboundEvent::Bye,
                    TerminatedReason::UacCancel => InboundEvent::Cancelled,
                    TerminatedReason::Timeout => InboundEvent::Ended {
                        reason: "no ACK for our 200 OK".into(),
                    },
                    TerminatedReason::UasDecline => InboundEvent::Ended {
                        reason: "rejected".into(),
                    },
                    other => InboundEvent::Ended {
                        reason: format!("{other:?}"),
                    },
                };
                info!(event = ?ev, "inbound call ended");
                events.send(ev).await.ok();
                shared.dialogs.remove_dialog(&id);
                break;
            }
            DialogState::Calling(_) => {
                // the INVITE transaction is being driven: 100 Trying goes out before any
                // response the application sends
                if let Some(s) = started.take() {
                    s.send(()).ok();
                }
            }
            DialogState::Trying(_) | DialogState::Early(..) | DialogState::WaitAck(..) => {}
        }
    }
    shared.dialogs.remove_dialog(&dialog.id());
}

/// An INFO for a call that has `EVENT_QUEUE` events unread is dropped (it was answered 200:
/// a caller flooding keys loses the excess, the call and the stack carry on).
pub(crate) fn offer_info<T>(events: &mpsc::Sender<T>, ev: T) {
    if let Err(mpsc::error::TrySendError::Full(_)) = events.try_send(ev) {
        warn!(
            queue = EVENT_QUEUE,
            "the call is behind on its events: INFO dropped"
        );
    }
}

/// A re-INVITE for a call that is behind is answered 500 with Retry-After (RFC 3261 §14.2)
/// rather than queued without bound; nobody listening answers 488 (the reply's drop).
pub(crate) fn offer_reinvite<T: ReInviteCarrier>(events: &mpsc::Sender<T>, ev: T) {
    if let Err(mpsc::error::TrySendError::Full(ev)) = events.try_send(ev)
        && let Some(reply) = ev.into_reply()
    {
        warn!(
            queue = EVENT_QUEUE,
            "the call is behind on its events: re-INVITE answered 500"
        );
        tokio::spawn(reply.busy());
    }
}

/// An event that may carry a re-INVITE's reply (inbound or outbound).
pub(crate) trait ReInviteCarrier {
    fn into_reply(self) -> Option<ReInviteReply>;
}

impl ReInviteCarrier for InboundEvent {
    fn into_reply(self) -> Option<ReInviteReply> {
        match self {
            InboundEvent::ReInvite { reply, .. } => Some(reply),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood of INFO into a call that reads nothing neither blocks nor grows the queue.
    #[tokio::test]
    async fn an_info_flood_never_blocks_and_never_grows_the_queue() {
        let (tx, mut rx) = mpsc::channel::<u32>(EVENT_QUEUE);
        for i in 0..(EVENT_QUEUE as u32 * 10) {
            offer_info(&tx, i);
        }
        let mut kept = Vec::new();
        while let Ok(v) = rx.try_recv() {
            kept.push(v);
        }
        // The first ones are kept in order; the excess was dropped, not queued.
        assert_eq!(kept, (0..EVENT_QUEUE as u32).collect::<Vec<_>>());
    }
}
