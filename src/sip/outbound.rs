//! Outbound calls (we INVITE an agent's phone or a callback customer): the only legs we may end.

use std::sync::Arc;
use std::time::Duration;

use rsipstack::dialog::dialog::{DialogState, DialogStateReceiver, TerminatedReason};
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::{Header, Method, Response, StatusCode, StatusCodeKind};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::endpoint::{ALLOW, Shared};
use super::error::{SipError, SipResult};
use super::inbound::{ReInviteCarrier, ReInviteReply, offer_info, offer_reinvite};
use super::types::{DtmfInfo, parse_dtmf_info};

/// Why an outbound INVITE did not lead to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FailReason {
    /// 486 Busy Here / 600 Busy Everywhere.
    Busy,
    /// 603 Decline.
    Declined,
    /// Rang without an answer for the ring timeout: we sent CANCEL.
    NoAnswer,
    /// No response at all (Timer B), or the transport failed.
    Unreachable,
    /// We cancelled it ([`OutboundCall::cancel`]).
    Cancelled,
    /// Any other final status (404, 480, 488, 5xx, ...).
    Rejected,
}

/// Events of an outbound call.
#[derive(Debug)]
pub enum OutboundEvent {
    /// 100 Trying received.
    Trying,
    /// 180 Ringing or 183 Session Progress (with early-media SDP, if any).
    Ringing {
        status: u16,
        early_sdp: Option<String>,
    },
    /// 200 OK: the ACK was sent by the stack.
    Answered { answer_sdp: String },
    /// The INVITE failed. Final event.
    Failed {
        status: Option<u16>,
        reason: FailReason,
        phrase: String,
    },
    /// The far end (agent) hung up; the stack answered its BYE with 200. Final event.
    Bye,
    /// The far end sent a re-INVITE: answer it through `reply`.
    ReInvite { sdp: String, reply: ReInviteReply },
    /// The far end sent INFO (answered 200).
    Info {
        content_type: Option<String>,
        body: Vec<u8>,
        dtmf: Option<DtmfInfo>,
    },
    /// We ended the call with [`OutboundCall::bye`], or it ended otherwise. Final event.
    Ended { reason: String },
}

impl OutboundEvent {
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            OutboundEvent::Failed { .. } | OutboundEvent::Bye | OutboundEvent::Ended { .. }
        )
    }
}

/// Receiver of [`OutboundEvent`]s; `recv` returns `None` after the final event.
/// Bounded like an inbound call's (see `inbound::EVENT_QUEUE`): a far end flooding INFO or
/// re-INVITEs cannot grow it.
#[derive(Debug)]
pub struct OutboundEvents {
    pub(crate) rx: mpsc::Receiver<OutboundEvent>,
}

impl OutboundEvents {
    pub async fn recv(&mut self) -> Option<OutboundEvent> {
        self.rx.recv().await
    }
}

/// What to INVITE. `extra_headers` are sanitised (see [`super::sanitize_header_value`]).
#[derive(Debug, Clone, Default)]
pub struct OutboundInvite {
    /// `sip:agent1@10.0.0.5:5060`, `sip:+4930123@gw.example;transport=tcp`.
    pub target_uri: String,
    pub offer_sdp: String,
    pub extra_headers: Vec<(String, String)>,
    /// User part of our From URI (e.g. the customer's number when calling an agent).
    /// Default: the endpoint's `local_user`.
    pub from_user: Option<String>,
    /// Display name in our From header.
    pub from_display_name: Option<String>,
    /// How long it may ring before we CANCEL and report [`FailReason::NoAnswer`].
    /// Default: the endpoint's `ring_timeout`.
    pub ring_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Inviting,
    Answered,
    Over,
}

/// Control handle of an outbound (agent / callback) leg. Cheap to clone.
#[derive(Clone)]
pub struct OutboundCall {
    pub(crate) dialog: InviteDialog,
    pub(crate) call_id: String,
    pub(crate) phase: watch::Receiver<Phase>,
    pub(crate) cancel_requested: Arc<tokio::sync::Notify>,
    pub(crate) released: rsipstack::platform::CancellationToken,
}

impl std::fmt::Debug for OutboundCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundCall")
            .field("call_id", &self.call_id)
            .finish()
    }
}

impl OutboundCall {
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    fn state_error(&self, operation: &'static str, reason: &str) -> SipError {
        SipError::InvalidState {
            call_id: self.call_id.clone(),
            operation,
            reason: reason.to_string(),
        }
    }

    /// Cancels the INVITE before it is answered (CANCEL; the event stream then reports
    /// `Failed { reason: Cancelled }`). A 200 that crosses the CANCEL is ACKed and BYEd by the
    /// stack.
    pub async fn cancel(&self) -> SipResult<()> {
        match *self.phase.borrow() {
            Phase::Inviting => {}
            Phase::Answered => return Err(self.state_error("cancel", "already answered: use bye")),
            Phase::Over => return Err(self.state_error("cancel", "call already over")),
        }
        self.cancel_requested.notify_one();
        Ok(())
    }

    /// Ends an answered outbound call with BYE. Allowed only on outbound legs.
    pub async fn bye(&self) -> SipResult<()> {
        match *self.phase.borrow() {
            Phase::Answered => {}
            Phase::Inviting => return Err(self.state_error("bye", "not answered yet: use cancel")),
            Phase::Over => return Err(self.state_error("bye", "call already over")),
        }
        self.dialog.bye().await?;
        Ok(())
    }

    /// Asks the remote phone whether it is still there (an in-dialog OPTIONS); see
    /// [`super::InboundCall::probe`].
    pub async fn probe(&self) -> bool {
        *self.phase.borrow() == Phase::Answered
            && super::inbound::probe_dialog(&self.dialog, &self.call_id).await
    }

    /// Forgets an answered leg whose far end is gone without a BYE (no media, no answer to the
    /// probe): the stack drops the dialog and nothing is sent (a called-back customer is never
    /// hung up on).
    pub fn release(&self) {
        self.released.cancel();
    }

    /// CANCEL before the answer, BYE after it; no-op once over.
    pub async fn hangup(&self) -> SipResult<()> {
        let phase = *self.phase.borrow();
        match phase {
            Phase::Inviting => self.cancel().await,
            Phase::Answered => self.bye().await,
            Phase::Over => Ok(()),
        }
    }
}

fn body_string(resp: &Response) -> Option<String> {
    (!resp.body.is_empty()).then(|| String::from_utf8_lossy(&resp.body).into_owned())
}

fn failure_of(status: Option<&StatusCode>) -> (Option<u16>, FailReason, String) {
    match status {
        None => (None, FailReason::Unreachable, "no response".into()),
        Some(s) => {
            let code = s.code();
            let reason = match code {
                486 | 600 => FailReason::Busy,
                603 => FailReason::Declined,
                408 => FailReason::Unreachable,
                487 => FailReason::Cancelled,
                _ => FailReason::Rejected,
            };
            (Some(code), reason, s.text().to_string())
        }
    }
}

/// Everything the supervisor task of one outbound call owns.
pub(crate) struct OutboundJob {
    pub(crate) shared: Arc<Shared>,
    pub(crate) dialog: InviteDialog,
    pub(crate) state_rx: DialogStateReceiver,
    pub(crate) invite: tokio::task::JoinHandle<rsipstack::dialog::invitation::InviteAsyncResult>,
    pub(crate) events: mpsc::Sender<OutboundEvent>,
    pub(crate) phase: watch::Sender<Phase>,
    pub(crate) cancel_requested: Arc<tokio::sync::Notify>,
    pub(crate) released: rsipstack::platform::CancellationToken,
    pub(crate) ring_timeout: Duration,
}

/// The supervisor's running state.
struct Supervisor {
    shared: Arc<Shared>,
    dialog: InviteDialog,
    events: mpsc::Sender<OutboundEvent>,
    phase: watch::Sender<Phase>,
    /// Set when we decided the INVITE's fate (no answer / cancel) before its final response.
    our_failure: Option<FailReason>,
    final_sent: bool,
}

impl Supervisor {
    fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Events that change the call wait for room in this leg's own task (never the stack's).
    async fn send(&self, ev: OutboundEvent) {
        self.events.send(ev).await.ok();
    }

    async fn finish(&mut self, ev: OutboundEvent) {
        self.phase.send_replace(Phase::Over);
        if !self.final_sent {
            self.final_sent = true;
            info!(event = ?ev, "outbound call over");
            self.events.send(ev).await.ok();
        }
    }

    async fn fail(&mut self, status: Option<&StatusCode>, phrase: Option<String>) {
        let (code, mut reason, default_phrase) = failure_of(status);
        if let Some(ours) = self.our_failure
            && (reason == FailReason::Cancelled || code.is_none())
        {
            reason = ours;
        }
        self.finish(OutboundEvent::Failed {
            status: code,
            reason,
            phrase: phrase.unwrap_or(default_phrase),
        })
        .await;
    }

    /// Handles one dialog state; returns true when the call is over for good.
    async fn on_state(&mut self, state: DialogState, invite_done: bool) -> bool {
        let allow = || Some(vec![Header::Allow(ALLOW.into())]);
        match state {
            DialogState::Trying(_) => self.send(OutboundEvent::Trying).await,
            DialogState::Early(_, resp) => {
                self.send(OutboundEvent::Ringing {
                    status: resp.status_code.code(),
                    early_sdp: body_string(&resp),
                })
                .await
            }
            DialogState::Confirmed(_, resp) => {
                if self.phase() == Phase::Inviting
                    && resp.status_code.kind() == StatusCodeKind::Successful
                {
                    self.phase.send_replace(Phase::Answered);
                    info!("answered");
                    self.send(OutboundEvent::Answered {
                        answer_sdp: body_string(&resp).unwrap_or_default(),
                    })
                    .await;
                }
            }
            DialogState::Updated(_, req, handle) => {
                if req.method == Method::Invite {
                    let sdp = String::from_utf8_lossy(&req.body).into_owned();
                    let reply = ReInviteReply::new(handle, self.dialog.id().call_id.clone());
                    offer_reinvite(&self.events, OutboundEvent::ReInvite { sdp, reply });
                } else {
                    handle
                        .respond(StatusCode::MethodNotAllowed, allow(), None)
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
                offer_info(
                    &self.events,
                    OutboundEvent::Info {
                        content_type,
                        body: req.body.clone(),
                        dtmf,
                    },
                );
            }
            DialogState::Options(_, _, handle) => {
                handle.respond(StatusCode::OK, allow(), None).await.ok();
            }
            DialogState::Refer(_, _, handle)
            | DialogState::Message(_, _, handle)
            | DialogState::Notify(_, _, handle)
            | DialogState::Publish(_, _, handle) => {
                handle
                    .respond(StatusCode::MethodNotAllowed, allow(), None)
                    .await
                    .ok();
            }
            DialogState::Terminated(id, reason) => {
                let was = self.phase();
                self.shared.dialogs.remove_dialog(&id);
                match (was, reason) {
                    (Phase::Answered, TerminatedReason::UasBye) => {
                        self.finish(OutboundEvent::Bye).await
                    }
                    (Phase::Answered, TerminatedReason::UacBye) => {
                        self.finish(OutboundEvent::Ended {
                            reason: "we sent BYE".into(),
                        })
                        .await
                    }
                    (Phase::Answered, other) => {
                        self.finish(OutboundEvent::Ended {
                            reason: format!("{other:?}"),
                        })
                        .await
                    }
                    (_, TerminatedReason::UacCancel) => {
                        let status = StatusCode::RequestTerminated;
                        self.fail(Some(&status), Some("cancelled".into())).await;
                    }
                    (_, TerminatedReason::UasOther(status))
                    | (_, TerminatedReason::UacOther(status))
                    | (_, TerminatedReason::ProxyError(status)) => {
                        self.fail(Some(&status), None).await
                    }
                    (_, other) => self.fail(None, Some(format!("{other:?}"))).await,
                }
                // Before the answer, wait for the INVITE task too (it ACKs the final response).
                return was == Phase::Answered || invite_done;
            }
            DialogState::Calling(_) | DialogState::WaitAck(..) => {}
        }
        false
    }

    /// Handles the end of the INVITE task; returns true when the call is over for good.
    async fn on_invite_done(
        &mut self,
        res: Result<rsipstack::dialog::invitation::InviteAsyncResult, tokio::task::JoinError>,
    ) -> bool {
        match res {
            Ok(Ok((_, Some(resp)))) if resp.status_code.kind() == StatusCodeKind::Successful => {
                // Answered (Confirmed comes through the state channel), or a 2xx that crossed
                // our CANCEL (the stack ACKs and BYEs it; Terminated follows).
                self.final_sent
            }
            Ok(Ok((_, resp))) => {
                // A non-2xx final response, or none at all (Timer B).
                self.fail(resp.as_ref().map(|r| &r.status_code), None).await;
                true
            }
            Ok(Err(e)) => {
                warn!(error = %e, "INVITE failed");
                self.fail(None, Some(e.to_string())).await;
                true
            }
            Err(e) => {
                self.fail(None, Some(format!("INVITE task failed: {e}")))
                    .await;
                true
            }
        }
    }
}

/// Drives one outbound INVITE and its dialog, turning stack states into [`OutboundEvent`]s.
pub(crate) async fn supervise_outbound(job: OutboundJob) {
    let OutboundJob {
        shared,
        dialog,
        mut state_rx,
        invite,
        events,
        phase,
        cancel_requested,
        released,
        ring_timeout,
    } = job;
    let shutdown = shared.cancel.clone();
    let mut sup = Supervisor {
        shared,
        dialog,
        events,
        phase,
        our_failure: None,
        final_sent: false,
    };
    let ring_deadline = tokio::time::sleep(ring_timeout);
    tokio::pin!(ring_deadline);
    let mut invite = Some(invite);
    loop {
        let inviting = sup.phase() == Phase::Inviting;
        let invite_done = async {
            match invite.as_mut() {
                Some(j) => j.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            state = state_rx.recv() => {
                let Some(state) = state else { break };
                if sup.on_state(state, invite.is_none()).await {
                    break;
                }
            }
            res = invite_done => {
                invite = None;
                if sup.on_invite_done(res).await {
                    break;
                }
            }
            _ = &mut ring_deadline, if inviting && sup.our_failure.is_none() => {
                info!(timeout = ?ring_timeout, "no answer: cancelling");
                sup.our_failure = Some(FailReason::NoAnswer);
                if let Err(e) = sup.dialog.cancel().await {
                    debug!(error = %e, "cancel after ring timeout");
                }
            }
            _ = cancel_requested.notified(), if inviting => {
                sup.our_failure.get_or_insert(FailReason::Cancelled);
                if let Err(e) = sup.dialog.cancel().await {
                    debug!(error = %e, "cancel");
                }
            }
            _ = shutdown.cancelled() => {
                sup.finish(OutboundEvent::Ended { reason: "endpoint shut down".into() }).await;
                break;
            }
            _ = released.cancelled(), if !inviting => {
                info!("far end gone without a BYE: dialog released");
                sup.finish(OutboundEvent::Ended { reason: "released".into() }).await;
                break;
            }
        }
    }
    if !sup.final_sent {
        sup.finish(OutboundEvent::Ended {
            reason: "dialog closed".into(),
        })
        .await;
    }
    sup.phase.send_replace(Phase::Over);
    sup.shared.dialogs.remove_dialog(&sup.dialog.id());
}

impl ReInviteCarrier for OutboundEvent {
    fn into_reply(self) -> Option<ReInviteReply> {
        match self {
            OutboundEvent::ReInvite { reply, .. } => Some(reply),
            _ => None,
        }
    }
}
