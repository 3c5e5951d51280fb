//! One caller's call, from INVITE to the caller's hang-up: the driver around the call brain.
//!
//! It owns the caller's leg (SIP dialog and RTP session), the speech recognizer, and — once the
//! queue names an agent — the agent's leg, bridged to the caller's. Humanline is a B2BUA: the
//! caller's leg stays up whatever happens to the agent's. Nothing here can send BYE to a
//! caller (the SIP types have no such method for an inbound leg).

use super::queue::{QueueMsg, ToCall};
use super::{PromptAudio, Shared};
use crate::agents::{AgentFailure, QueueInput};
use crate::brain::{
    Action, CallBrain, CallbackRequest, CallbackTime, CallbackWhen, Event, Phase, PlayId,
    RouteReason, TimerKind,
};
use crate::callbacks::{
    CallbackLedger, LedgerError, LedgerStore, NewPromise, local_clock, resolve_when, with_ledger,
};
use crate::escape::normalize::collapse_repeats;
use crate::media::webrtc::PeerState;
use crate::media::{
    self, LocalMedia, MediaEvent, MediaHandle, PlaybackId, SessionConfig, StreamIds, sdp,
};
use crate::nodes::{HeldCall, HeldState};
use crate::sip::{
    FailReason, InboundCall, InboundEvent, InboundEvents, IncomingCall, OutboundCall,
    OutboundEvent, OutboundEvents, OutboundInvite, RejectStatus,
};
use crate::speech::{
    DecodeKind, DecodeResult, RecognitionWatch, RecognizerOutput, StreamResampler,
    StreamingRecognizer, Verdict, watch,
};
use crate::web::offers::{AcceptRefused, ConsoleRequest, OfferHandle};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, info_span, warn};

pub async fn run(shared: Arc<Shared>, incoming: IncomingCall) {
    let id = shared
        .next_call
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let caller = incoming.from.caller_id().to_string();
    let span = info_span!("call", call = id, sip = %incoming.call_id, caller = %caller);
    async move {
        shared.metrics.calls.inc();
        shared.metrics.active_calls.inc();
        if let Err(e) = run_inner(&shared, id, incoming).await {
            warn!(error = %format!("{e:#}"), "call ended with an error");
        }
        shared.metrics.active_calls.dec();
    }
    .instrument(span)
    .await
}

/// The agent's leg while it exists: on their SIP phone, or in their browser console.
struct AgentLeg {
    agent: String,
    /// Bridged to the caller: the SIP agent answered, or the browser agent's connection is up.
    answered: bool,
    media: Option<(MediaHandle, mpsc::Receiver<MediaEvent>)>,
    way: AgentWay,
}

/// How the agent's leg is signalled.
enum AgentWay {
    Sip {
        call: OutboundCall,
        events: OutboundEvents,
        /// Our SDP on this leg, versioned per RFC 3264 §8.
        sdp: sdp::LocalSdp,
        socket: Option<tokio::net::UdpSocket>,
    },
    /// Offered in the agent's console (`super::super::web::offers`): they accept with their
    /// browser's WebRTC offer, decline, or hang up from there.
    Browser {
        offer: OfferHandle,
        /// The console's requests can still arrive (the offer was not replaced).
        requests_open: bool,
        /// Once accepted: the agent's browser connection.
        state: Option<tokio::sync::watch::Receiver<PeerState>>,
    },
}

impl AgentLeg {
    /// Ends the agent's side of a leg that is not bridged: a SIP agent's phone is CANCELled
    /// (or sent BYE), a browser agent's connection closed and the offer withdrawn.
    async fn close(self) {
        if let AgentWay::Sip { call, .. } = &self.way {
            let _ = call.hangup().await;
        }
        if let Some((handle, _)) = self.media {
            handle.close().await;
        }
    }
}

struct Call {
    shared: Arc<Shared>,
    id: u64,
    sip_call_id: String,
    caller_id: String,
    brain: CallBrain,
    /// The recordings the call started with: a reload mid-call changes nothing under it.
    audio: Arc<PromptAudio>,
    media: MediaHandle,
    /// Our SDP on the caller's leg, versioned per RFC 3264 §8 (`None` for a browser caller,
    /// whose leg is never renegotiated).
    sdp: Option<sdp::LocalSdp>,
    /// Asks the caller's phone whether it is still there.
    prober: Prober,
    plays: HashMap<PlaybackId, PlayId>,
    next_playback: u64,
    queue_tx: mpsc::Sender<ToCall>,
    /// Events for the brain from tasks of this call: ledger results (one store or refusal
    /// in flight per call at most) and probe results (one probe at most).
    callback_tx: mpsc::Sender<Event>,
    /// Callbacks requested on this call so far, for their keys.
    promises_made: u32,
    queued: bool,
    /// The caller is recorded in the store as held here, waiting for a person (src/nodes):
    /// if this node dies, another calls them back.
    held: bool,
    /// The latest write of that record; each waits for the one before, so the store sees
    /// hold, connecting and release in the order they happened.
    held_write: Option<tokio::task::JoinHandle<()>>,
    agent: Option<AgentLeg>,
    /// End of the caller's latest speech (stream audio time) and the wall time it maps to.
    speech_end: Option<Instant>,
    /// Whether a refused or failed decode sends the caller to a person (a final missing too
    /// long after the end of speech is the brain's `FinalTranscript` timer).
    watch: RecognitionWatch,
    call_start: Instant,
    /// The caller's ACK came: the call is real (a forged INVITE never gets this far).
    confirmed: bool,
    /// Audio has arrived from the caller at least once.
    heard_caller: bool,
    /// The language the caller is heard in (the brain's; changed by `SetLanguage`).
    language: String,
    /// This call has a speech recognizer (else the caller goes to a person at once).
    speech_ok: bool,
}

/// The caller's dialog, for in-dialog OPTIONS probes (RFC 3261 §11; any answer but 408/481
/// means the phone is there).
#[derive(Clone)]
enum Prober {
    Inbound(InboundCall),
    CalledBack(OutboundCall),
    /// A browser is there while its ICE consent checks keep succeeding.
    Browser(tokio::sync::watch::Receiver<PeerState>),
}

impl Prober {
    async fn probe(&self) -> bool {
        match self {
            Prober::Inbound(call) => call.probe().await,
            Prober::CalledBack(call) => call.probe().await,
            Prober::Browser(state) => *state.borrow() == PeerState::Connected,
        }
    }

    /// The phone is gone (no media, no answer to the probe, no BYE): its dialog is dropped
    /// without a word to it, so a vanished caller leaves nothing in the SIP stack.
    fn release(&self) {
        match self {
            Prober::Inbound(call) => call.release(),
            Prober::CalledBack(call) => call.release(),
            // The media task closes the peer connection when the call ends.
            Prober::Browser(_) => {}
        }
    }
}

/// Decode results a call may leave unread. A call has at most one partial and one final per
/// utterance in the pool, and the pool's queue is bounded, so this is not reached; if it
/// were, a result is dropped rather than grow the queue or block a decoder thread, and the
/// caller goes to a person (a dropped final would otherwise leave them waiting on it).
const DECODE_RESULTS: usize = 64;

async fn run_inner(shared: &Arc<Shared>, id: u64, incoming: IncomingCall) -> anyhow::Result<()> {
    let IncomingCall {
        call_id,
        from,
        to,
        offer_sdp,
        call: inbound,
        events,
        ..
    } = incoming;
    let socket = match media::bind_rtp_socket(shared.media_ip, shared.rtp_ports).await {
        Ok(s) => s,
        Err(e) => {
            // No media port: we cannot carry audio at all. Busy, so the caller's network
            // can try elsewhere (the one refusal Humanline makes).
            inbound.reject(RejectStatus::ServiceUnavailable)?;
            return Err(e.into());
        }
    };
    let mut local_sdp = match local_media(shared, &socket) {
        Ok(l) => sdp::LocalSdp::new(l),
        Err(e) => {
            inbound.reject(RejectStatus::ServiceUnavailable)?;
            return Err(e);
        }
    };
    let answer = match local_sdp.answer(&offer_sdp) {
        Ok(a) => a,
        Err(e) => {
            info!(error = %e, "offer not acceptable");
            inbound.reject(RejectStatus::NotAcceptableHere)?;
            return Ok(());
        }
    };
    // Everything that can fail is done before the 200 OK: after it, the caller is in the
    // call and only a person (or the IVR) may follow, never an abandoned line.
    let (media, media_events) = match media::spawn(
        socket,
        SessionConfig::new(&answer.remote, StreamIds::random())
            .with_no_media_timeout(shared.no_media_timeout),
    ) {
        Ok(m) => m,
        Err(e) => {
            inbound.reject(RejectStatus::ServiceUnavailable)?;
            return Err(e.into());
        }
    };
    if let Err(e) = inbound.answer(&answer.sdp) {
        // The caller cancelled meanwhile: there is no call to serve.
        media.close().await;
        return Err(e.into());
    }
    info!(rtp = %media.local_addr(), codec = ?answer.remote.codec, "answered");

    // A call to a language's code (sip:nl@...) starts in that language.
    let flow = shared.flow();
    let language = to
        .user
        .filter(|u| flow.language(u).is_some())
        .inspect(|l| info!(language = %l, "dialled language"));
    let leg = CallerLeg {
        sip_call_id: call_id,
        caller_id: from.caller_id().to_string(),
        signal: CallerSignal::Inbound(events),
        prober: Prober::Inbound(inbound),
        sdp: Some(local_sdp),
        media,
        media_events,
        language,
    };
    let (flow, audio) = shared.flow_and_audio();
    drive(shared, id, leg, CallBrain::new(flow), audio, false).await;
    Ok(())
}

/// The caller's signalling, whichever side placed the call. Either way Humanline never ends
/// it: an inbound leg has no BYE at all, and a called-back customer's leg is kept here,
/// never hung up.
enum CallerSignal {
    Inbound(InboundEvents),
    /// The customer's leg is held (not used) so that it lives as long as the call.
    CalledBack {
        _leg: OutboundCall,
        events: OutboundEvents,
    },
    /// A browser caller: its connection's state, and its `DELETE /call/{id}`.
    Browser {
        state: tokio::sync::watch::Receiver<PeerState>,
        hang_up: mpsc::Receiver<()>,
    },
}

impl CallerSignal {
    /// The caller's next event, in an inbound call's terms.
    async fn recv(&mut self) -> Option<InboundEvent> {
        match self {
            CallerSignal::Inbound(events) => events.recv().await,
            CallerSignal::CalledBack { events, .. } => loop {
                return Some(match events.recv().await? {
                    OutboundEvent::Bye => InboundEvent::Bye,
                    OutboundEvent::Ended { reason } => InboundEvent::Ended { reason },
                    OutboundEvent::Failed { phrase, .. } => InboundEvent::Ended { reason: phrase },
                    OutboundEvent::ReInvite { sdp, reply } => InboundEvent::ReInvite { sdp, reply },
                    OutboundEvent::Info {
                        content_type,
                        body,
                        dtmf,
                    } => InboundEvent::Info {
                        content_type,
                        body,
                        dtmf,
                    },
                    OutboundEvent::Trying
                    | OutboundEvent::Ringing { .. }
                    | OutboundEvent::Answered { .. } => continue,
                });
            },
            CallerSignal::Browser { state, hang_up } => loop {
                tokio::select! {
                    changed = state.changed() => {
                        if changed.is_err() {
                            return Some(InboundEvent::Ended { reason: "browser media ended".into() });
                        }
                        // Connected is the browser's ACK: the IVR starts (once; the brain
                        // ignores a second one after a reconnect).
                        match *state.borrow_and_update() {
                            PeerState::Connected => return Some(InboundEvent::Confirmed),
                            PeerState::Gone => return Some(InboundEvent::Ended {
                                reason: "browser connection closed".into(),
                            }),
                            PeerState::Connecting | PeerState::Disconnected => continue,
                        }
                    }
                    Some(()) = hang_up.recv() => return Some(InboundEvent::Bye),
                }
            },
        }
    }
}

/// A browser caller whose offer is answered and whose media task runs (see `super::browser`).
pub(super) struct BrowserCaller {
    /// The `/call/{id}` resource, also the call's "Call-ID" in logs and promises.
    pub(super) resource: String,
    pub(super) media: MediaHandle,
    pub(super) media_events: mpsc::Receiver<MediaEvent>,
    pub(super) state: tokio::sync::watch::Receiver<PeerState>,
    pub(super) hang_up: mpsc::Receiver<()>,
}

/// Runs a browser caller's call: from the moment their connection is up the IVR greets them,
/// exactly as a SIP caller after the ACK.
pub(super) async fn run_browser(shared: Arc<Shared>, caller: BrowserCaller) {
    let id = shared
        .next_call
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let span = info_span!("call", call = id, browser = %caller.resource);
    async move {
        shared.metrics.calls.inc();
        shared.metrics.active_calls.inc();
        info!(rtp = %caller.media.local_addr(), "browser caller answered");
        let leg = CallerLeg {
            sip_call_id: caller.resource,
            // Not a number: a callback asks the caller for one.
            caller_id: "browser".into(),
            prober: Prober::Browser(caller.state.clone()),
            signal: CallerSignal::Browser {
                state: caller.state,
                hang_up: caller.hang_up,
            },
            sdp: None,
            media: caller.media,
            media_events: caller.media_events,
            language: None,
        };
        let (flow, audio) = shared.flow_and_audio();
        drive(&shared, id, leg, CallBrain::new(flow), audio, false).await;
        shared.metrics.active_calls.dec();
    }
    .instrument(span)
    .await
}

/// A caller's leg, answered and with media running.
pub(super) struct CallerLeg {
    sip_call_id: String,
    caller_id: String,
    signal: CallerSignal,
    prober: Prober,
    sdp: Option<sdp::LocalSdp>,
    media: MediaHandle,
    media_events: mpsc::Receiver<MediaEvent>,
    /// The language the call starts in; `None`: the flow's default.
    language: Option<String>,
}

/// A called-back customer whose agent hung up first: they stay on the line, back with the
/// IVR ("say human to reach someone again"), exactly like a caller whose agent left.
pub(super) async fn continue_called_back(
    shared: Arc<Shared>,
    customer: OutboundCall,
    events: OutboundEvents,
    local: LocalMedia,
    media: MediaHandle,
    media_events: mpsc::Receiver<MediaEvent>,
    number: String,
) {
    let id = shared
        .next_call
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let span = info_span!("call", call = id, sip = %customer.call_id(), caller = %number);
    async move {
        shared.metrics.active_calls.inc();
        let (flow, audio) = shared.flow_and_audio();
        let brain = CallBrain::after_agent(flow, Some(number.clone()));
        let leg = CallerLeg {
            sip_call_id: customer.call_id().to_string(),
            caller_id: number,
            prober: Prober::CalledBack(customer.clone()),
            signal: CallerSignal::CalledBack {
                _leg: customer,
                events,
            },
            sdp: Some(sdp::LocalSdp::after_offer(local)),
            media,
            media_events,
            language: None,
        };
        drive(&shared, id, leg, brain, audio, true).await;
        shared.metrics.active_calls.dec();
    }
    .instrument(span)
    .await
}

/// Runs a caller's call until they hang up (or both their media and signalling are gone).
/// `established`: the call is already up (a called-back customer), so the brain is told at
/// once that their agent left. Nothing here may fail the call: the caller is answered, so a
/// failure routes them to a person instead.
async fn drive(
    shared: &Arc<Shared>,
    id: u64,
    leg: CallerLeg,
    brain: CallBrain,
    audio: Arc<PromptAudio>,
    established: bool,
) {
    let CallerLeg {
        sip_call_id,
        caller_id,
        mut signal,
        prober,
        sdp,
        media,
        mut media_events,
        language,
    } = leg;
    let language = language.unwrap_or_else(|| brain.context().language.clone());
    let (queue_tx, mut queue_rx) = super::queue::to_call_channel();
    let (callback_tx, mut callback_rx) = mpsc::channel(4);
    let (decode_tx, mut decode_rx) = mpsc::channel::<DecodeResult>(DECODE_RESULTS);
    let results_lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Without a recognizer the call goes on: the caller is routed to a person at once.
    let speech = match (
        StreamingRecognizer::new(id, shared.recognizer.clone()),
        StreamResampler::telephone_to_16k(),
    ) {
        (Ok(r), Ok(s)) => Some((r, s)),
        (r, s) => {
            let error = r
                .err()
                .map(|e| e.to_string())
                .or(s.err().map(|e| e.to_string()));
            warn!(error = ?error, "speech recognition unavailable for this call: routing to a person");
            None
        }
    };
    let mut call = Call {
        shared: shared.clone(),
        id,
        sip_call_id,
        caller_id,
        brain,
        audio,
        media,
        sdp,
        prober,
        plays: HashMap::new(),
        next_playback: 0,
        queue_tx,
        callback_tx,
        promises_made: 0,
        queued: false,
        held: false,
        held_write: None,
        agent: None,
        speech_end: None,
        watch: RecognitionWatch::default(),
        call_start: Instant::now(),
        confirmed: established,
        heard_caller: established,
        language,
        speech_ok: speech.is_some(),
    };
    let (mut recognizer, mut resampler) = match speech {
        Some((r, s)) => (Some(r), Some(s)),
        None => (None, None),
    };
    let mut pcm = Vec::with_capacity(320);
    if established {
        call.feed(Event::AgentLeft).await;
    }

    loop {
        let timeout = call.next_deadline();
        tokio::select! {
            ev = signal.recv() => {
                let Some(ev) = ev else { break };
                let last = ev.is_final();
                call.on_sip(ev).await;
                if last { break; }
            }
            ev = media_events.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    MediaEvent::Audio(frame) => {
                        if !call.confirmed {
                            continue;
                        }
                        call.heard_caller |= !frame.concealed;
                        let (Some(rec), Some(res)) = (recognizer.as_mut(), resampler.as_mut()) else {
                            continue;
                        };
                        pcm.clear();
                        pcm.extend(frame.samples.iter().map(|s| *s as f32 / 32768.0));
                        let mut out = Vec::with_capacity(340);
                        if res.process(&pcm, &mut out).is_ok() {
                            if rec.language() != Some(call.language.as_str()) {
                                rec.set_language(Some(&call.language));
                            }
                            rec.push_audio(&out);
                        }
                        call.drain_recognizer(rec, &decode_tx, &results_lost).await;
                    }
                    other => call.on_media(other).await,
                }
            }
            Some(r) = decode_rx.recv() => {
                if results_lost.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    warn!(queue = DECODE_RESULTS, "decode results lost: routing to a person");
                    call.feed(Event::SpeechEngineDegraded).await;
                }
                if let Some(rec) = recognizer.as_mut() {
                    rec.on_result(&r);
                    call.drain_recognizer(rec, &decode_tx, &results_lost).await;
                }
            }
            Some(msg) = queue_rx.recv() => call.on_queue(msg).await,
            Some(ev) = callback_rx.recv() => call.feed(ev).await,
            ev = next_agent_event(&mut call.agent) => call.on_agent(ev).await,
            _ = sleep_until(timeout) => call.on_deadline().await,
        }
        if call.brain.phase() == Phase::Ended {
            // Both the caller's media and signalling are gone (a hang-up ends the loop above).
            info!("caller gone: no media and no answer to the probe");
            call.prober.release();
            break;
        }
    }
    // A `Ring` the queue sent that this call never acted on would hold that agent for good:
    // no more may come, and the ones that did go back to the pool.
    queue_rx.close();
    while let Ok(msg) = queue_rx.try_recv() {
        if let ToCall::Ring { agent, .. } = msg {
            shared
                .tell_queue(QueueMsg::Call(QueueInput::RingUndelivered {
                    agent,
                    call: id,
                }))
                .await;
        }
    }
    call.finish().await;
}

async fn next_agent_event(agent: &mut Option<AgentLeg>) -> AgentEvent {
    let Some(AgentLeg { media, way, .. }) = agent else {
        return std::future::pending().await;
    };
    let media = async {
        match media {
            Some((_, rx)) => rx.recv().await,
            None => std::future::pending().await,
        }
    };
    match way {
        AgentWay::Sip { events, .. } => tokio::select! {
            ev = events.recv() => AgentEvent::Sip(ev),
            ev = media => AgentEvent::Media(ev),
        },
        AgentWay::Browser {
            offer,
            requests_open,
            state,
        } => {
            let requests = async {
                if *requests_open {
                    offer.requests.recv().await
                } else {
                    std::future::pending().await
                }
            };
            let connection = async {
                match state {
                    Some(s) => match s.changed().await {
                        Ok(()) => *s.borrow_and_update(),
                        // The media task is over: so is the connection.
                        Err(_) => PeerState::Gone,
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = requests => AgentEvent::Console(r),
                c = connection => AgentEvent::Browser(c),
                ev = media => AgentEvent::Media(ev),
            }
        }
    }
}

enum AgentEvent {
    Sip(Option<OutboundEvent>),
    Media(Option<MediaEvent>),
    /// From the agent's console; `None`: the offer was replaced, no more will come.
    Console(Option<ConsoleRequest>),
    /// The agent's browser connection changed.
    Browser(PeerState),
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn local_media(shared: &Shared, socket: &tokio::net::UdpSocket) -> anyhow::Result<LocalMedia> {
    let session_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(LocalMedia {
        ip: shared.media_ip,
        port: socket.local_addr()?.port(),
        session_id,
        session_version: session_id,
    })
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Call {
    /// Every deadline of the call is one of the brain's timers.
    fn next_deadline(&self) -> Option<Instant> {
        self.brain.next_timeout().map(|(_, at)| at)
    }

    async fn on_deadline(&mut self) {
        let now = Instant::now();
        if let Some((timer, at)) = self.brain.next_timeout()
            && at <= now
        {
            if timer == TimerKind::FinalTranscript {
                warn!("no final transcript in time: recognition is behind");
            }
            self.feed(Event::TimerFired { timer }).await;
        }
    }

    /// Hands an event to the brain and carries out what it says.
    async fn feed(&mut self, event: Event) {
        let now = Instant::now();
        debug!(?event, "event");
        let actions = self.brain.handle(now, event);
        for action in actions {
            self.act(action).await;
        }
    }

    async fn act(&mut self, action: Action) {
        match action {
            Action::Play {
                play,
                prompt,
                language,
                text,
                vars,
                ..
            } => {
                let clips = self.audio.clips(&language, &prompt, &text, &vars);
                let id = self.playback_for(play);
                info!(%prompt, %text, "play");
                // The brain's play replaces what plays: "connecting" never waits behind a
                // prompt.
                let _ = self.media.play_now(id, clips).await;
            }
            Action::PlayHold { play } => {
                let id = self.playback_for(play);
                debug!("hold music");
                let _ = self.media.hold(id, self.audio.hold()).await;
            }
            Action::StopPlayback => {
                let _ = self.media.stop_playout().await;
            }
            Action::ProbeCaller => {
                info!("no media from the caller: probing with OPTIONS");
                let prober = self.prober.clone();
                let tx = self.callback_tx.clone();
                tokio::spawn(
                    async move {
                        let answered = prober.probe().await;
                        info!(answered, "probe done");
                        let result = if answered {
                            Event::ProbeAnswered
                        } else {
                            Event::ProbeFailed
                        };
                        // Waits for room rather than lose the result (the deadline would
                        // then drop a caller who is there).
                        let _ = tx.send(result).await;
                    }
                    .instrument(tracing::Span::current()),
                );
            }
            Action::StopRinging { agent } => {
                if let Some(leg) = &self.agent
                    && leg.agent == agent
                    && !leg.answered
                {
                    // An agent that does not even say "ringing" cannot be CANCELled by the
                    // SIP layer's ring timeout (nor can a console that never answers): give
                    // up on it here.
                    info!(%agent, "agent did not answer in time");
                    if let Some(leg) = self.agent.take() {
                        leg.close().await;
                    }
                    // The brain knows already (it asked): only the queue is told.
                    self.shared
                        .tell_queue(QueueMsg::Call(QueueInput::AgentFailed {
                            agent,
                            call: self.id,
                            why: AgentFailure::NoAnswer,
                        }))
                        .await;
                }
            }
            Action::Listen
            | Action::OfferCallback
            | Action::SetTimer { .. }
            | Action::CancelTimer { .. } => {}
            Action::SetLanguage { code } => {
                info!(%code, "language");
                self.language = code;
            }
            Action::RouteToAgent { reason, context } => {
                let after = self
                    .speech_end
                    .map(|end| Instant::now().saturating_duration_since(end));
                info!(reason = reason.as_str(), said = ?context.said, after_speech_end_ms = after.map(|d| d.as_millis() as u64), "route to a person");
                self.shared.metrics.route(reason.as_str());
                if matches!(
                    reason,
                    RouteReason::Keyword | RouteReason::Repetition | RouteReason::NoMatch
                ) {
                    self.shared
                        .metrics
                        .observe_time_to_route(after.map_or(0.0, |d| d.as_secs_f64()));
                }
                if !self.queued {
                    self.queued = true;
                    let context = self.brain.context();
                    let caller = crate::agents::CallerInfo {
                        reason: self.route_reason(),
                        said: context.said.clone(),
                        language: context.language.clone(),
                    };
                    self.shared
                        .tell_queue(QueueMsg::Enqueue {
                            call: self.id,
                            to_call: self.queue_tx.clone(),
                            caller,
                        })
                        .await;
                    self.hold(HeldState::Waiting);
                }
            }
            Action::StoreCallback(req) => self.store_callback(*req),
            Action::KeepCallback { id } => self.keep_callback(id),
        }
    }

    /// A media playback id for the brain's play, so its end is reported for that play only.
    fn playback_for(&mut self, play: PlayId) -> PlaybackId {
        let id: PlaybackId = self.next_playback;
        self.next_playback += 1;
        self.plays.insert(id, play);
        id
    }

    /// Commits a callback off the async runtime (SQLite fsyncs); the brain hears
    /// `CallbackStored` only once it is on disk, and the confirmation says what was stored.
    /// A number Humanline may not dial is refused before anything is stored.
    fn store_callback(&mut self, req: CallbackRequest) {
        let number = match req
            .number
            .as_deref()
            .map(|n| self.shared.numbers.dialable(n))
        {
            Some(Ok(n)) => n,
            refused => {
                let why = match refused {
                    Some(Err(e)) => e.to_string(),
                    _ => "no number to call".into(),
                };
                info!(%why, "callback number refused; asking for one");
                // The channel has room: one store is in flight per call at most.
                let _ = self
                    .callback_tx
                    .try_send(Event::CallbackNumberRefused { why });
                return;
            }
        };
        let now = unix_ms();
        let offset = self.shared.utc_offset_min;
        let chosen = match &req.when {
            CallbackWhen::Asap => None,
            CallbackWhen::Requested(said) => resolve_when(said, now, offset),
        };
        self.promises_made += 1;
        let promise = NewPromise {
            number,
            not_before: chosen.unwrap_or(now),
            reason: req.reason.as_str().into(),
            context: serde_json::to_value(&req.context).unwrap_or_default(),
            automatic: req.automatic,
            // Ours, not the caller's Call-ID: a reused Call-ID is a new promise. A held
            // caller whose line died gets the key another node would give them if it took
            // this node for dead: one promise for them either way.
            key: if req.automatic && self.held {
                crate::nodes::adopted_key(&HeldCall::key_for(&self.shared.instance, self.id))
            } else {
                format!(
                    "{}-{}-{}",
                    self.shared.instance, self.id, self.promises_made
                )
            },
            call_id: self.sip_call_id.clone(),
        };
        let ledger = self.shared.ledger.clone();
        let tx = self.callback_tx.clone();
        let metrics = self.shared.metrics.clone();
        info!(number = %promise.number, not_before = promise.not_before, "committing a callback");
        tokio::spawn(
            async move {
                let event = match with_ledger(&ledger, move |l| l.promise(&promise, now)).await {
                    Ok(p) => {
                        metrics.callbacks_promised.inc();
                        info!(id = p.id, number = %p.number, not_before = p.not_before, "callback promised");
                        // What the caller hears is what is stored.
                        let at = chosen.map(|_| {
                            let (days_from_today, hour, minute) =
                                local_clock(p.not_before, now, offset);
                            CallbackTime {
                                days_from_today,
                                hour,
                                minute,
                            }
                        });
                        Event::CallbackStored {
                            id: p.id.to_string(),
                            at,
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "callback not stored");
                        Event::CallbackStoreFailed {
                            error: e.to_string(),
                        }
                    }
                };
                let _ = tx.send(event).await;
            }
            // The commit's log lines belong to this call, like the rest of its story.
            .instrument(tracing::Span::current()),
        );
    }

    /// The keyword verifier's verdicts go to the brain just before their transcript.
    async fn feed_verdicts(&mut self, verdicts: Vec<Verdict>) {
        if let Some(v) = verdicts.iter().find(|v| v.passed()) {
            info!(kind = v.kind.as_str(), phrase = %v.phrase, score = v.score, threshold = v.threshold, "verified");
        }
        if !verdicts.is_empty() {
            self.feed(Event::Verified { verdicts }).await;
        }
    }

    /// Records (or updates) the caller as held here, waiting for a person, with what they said.
    fn hold(&mut self, state: HeldState) {
        let context = self.brain.context();
        let call = HeldCall {
            key: HeldCall::key_for(&self.shared.instance, self.id),
            node: self.shared.instance.clone(),
            number: self.caller_id.clone(),
            call_id: self.sip_call_id.clone(),
            reason: self.route_reason(),
            context: serde_json::to_value(context).unwrap_or_default(),
            state,
            since: unix_ms(),
        };
        self.held = true;
        self.write_held("record the caller as held", move |l| l.hold(&call));
    }

    /// The caller no longer waits for a person here: `served` (they reached one) or gone.
    fn release_held(&mut self, served: bool) {
        if !std::mem::take(&mut self.held) {
            return;
        }
        let key = HeldCall::key_for(&self.shared.instance, self.id);
        self.write_held("release the held caller", move |l| {
            l.release(&key, served, unix_ms())
        });
    }

    /// Runs a write of this call's held record after the one before it, off the call's loop
    /// (a commit must not delay what the caller hears). A failure is logged: the caller is
    /// served as ever, only a node failure would not be covered for them.
    fn write_held(
        &mut self,
        what: &'static str,
        op: impl FnOnce(&mut CallbackLedger<Box<dyn LedgerStore>>) -> Result<(), LedgerError>
        + Send
        + 'static,
    ) {
        let before = self.held_write.take();
        let ledger = self.shared.ledger.clone();
        self.held_write = Some(tokio::spawn(
            async move {
                if let Some(before) = before {
                    let _ = before.await;
                }
                if let Err(e) = with_ledger(&ledger, op).await {
                    warn!(error = %e, "could not {what}");
                }
            }
            .instrument(tracing::Span::current()),
        ));
    }

    /// The caller reached a person: their stored callback is kept, never dialed.
    fn keep_callback(&self, id: String) {
        let Ok(id) = id.parse::<i64>() else { return };
        let ledger = self.shared.ledger.clone();
        tokio::spawn(
            async move {
                match with_ledger(&ledger, move |l| l.keep(id, "served_by_agent", unix_ms())).await
                {
                    Ok(p) => info!(
                        id,
                        state = p.state.as_str(),
                        "callback kept: the caller reached a person"
                    ),
                    Err(e) => warn!(id, error = %e, "could not mark the callback kept"),
                }
            }
            .instrument(tracing::Span::current()),
        );
    }

    async fn drain_recognizer(
        &mut self,
        rec: &mut StreamingRecognizer,
        decode_tx: &mpsc::Sender<DecodeResult>,
        results_lost: &Arc<std::sync::atomic::AtomicBool>,
    ) {
        while let Some(out) = rec.poll_output() {
            let event = match out {
                RecognizerOutput::Decode(job) => {
                    let Some(pool) = &self.shared.speech else {
                        continue;
                    };
                    let tx = decode_tx.clone();
                    let lost = results_lost.clone();
                    let kind = job.id.kind;
                    if let Err(e) = pool.submit(job, move |r| {
                        // A decoder thread never waits for a call (see DECODE_RESULTS).
                        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(r) {
                            lost.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                    }) {
                        debug!(error = %e, ?kind, "decode refused");
                        let verdict = self.watch.refused(kind, &e);
                        self.give_up_if(verdict).await;
                    }
                    continue;
                }
                RecognizerOutput::SpeechStarted { .. } => Event::SpeechStarted,
                RecognizerOutput::SpeechEnded { .. } => {
                    self.speech_end = Some(Instant::now());
                    Event::SpeechEnded
                }
                RecognizerOutput::Partial { text, verdicts, .. } => {
                    self.feed_verdicts(verdicts).await;
                    Event::PartialTranscript {
                        text: collapse_repeats(&text),
                    }
                }
                RecognizerOutput::Final { text, verdicts, .. } => {
                    let text = collapse_repeats(&text);
                    info!(%text, "heard");
                    self.feed_verdicts(verdicts).await;
                    Event::FinalTranscript { text }
                }
                RecognizerOutput::DecodeFailed {
                    kind,
                    error,
                    behind,
                    ..
                } => {
                    if kind == DecodeKind::Final {
                        warn!(%error, "no final transcript");
                    }
                    let verdict = self.watch.failed(kind, behind);
                    self.give_up_if(verdict).await;
                    continue;
                }
            };
            self.feed(event).await;
        }
    }

    /// Recognition cannot answer in time: a person will (the brain routes a caller still in
    /// the IVR with reason `speech_unavailable`).
    async fn give_up_if(&mut self, verdict: watch::Verdict) {
        if let watch::Verdict::SendToPerson(why) = verdict {
            warn!(
                why = why.as_str(),
                "recognition given up on for this caller"
            );
            self.feed(Event::SpeechEngineDegraded).await;
        }
    }

    async fn on_sip(&mut self, ev: InboundEvent) {
        match ev {
            InboundEvent::Confirmed => {
                // The IVR starts once the caller's ACK proves the call is real: nothing is
                // played, routed or promised for an INVITE nobody completes.
                if !self.confirmed {
                    self.confirmed = true;
                    // Only a number we may call back is a caller ID to the brain: withheld
                    // ("anonymous"), a SIP user name or a number off the operator's list
                    // means asking the caller for one.
                    let caller_id = self.shared.numbers.dialable(&self.caller_id).ok();
                    self.feed(Event::CallStarted {
                        caller_id,
                        language: Some(self.language.clone()),
                    })
                    .await;
                    if self.shared.speech.is_none() || !self.speech_ok {
                        // Without speech recognition only a person can help: route now.
                        self.feed(Event::SpeechEngineDegraded).await;
                    }
                }
            }
            InboundEvent::Cancelled | InboundEvent::Bye | InboundEvent::Ended { .. } => {
                info!("caller hung up");
                self.feed(Event::CallerHungUp).await;
            }
            InboundEvent::ReInvite { sdp: offer, reply } => {
                // Hold / unhold or a new address: follow it, answer with our media.
                let Some(local) = self.sdp.as_mut() else {
                    return;
                };
                match local.answer(&offer) {
                    Ok(answer) => {
                        let _ = self.media.update_remote(answer.remote).await;
                        let _ = reply.accept(&answer.sdp).await;
                    }
                    Err(e) => {
                        let _ = reply.reject(e.sip_status()).await;
                    }
                }
            }
            InboundEvent::Info { dtmf: Some(d), .. } => {
                self.feed(Event::Dtmf { digit: d.digit }).await
            }
            InboundEvent::Info { .. } => {}
        }
    }

    async fn on_media(&mut self, ev: MediaEvent) {
        match ev {
            MediaEvent::Dtmf(digit) => self.feed(Event::Dtmf { digit }).await,
            MediaEvent::PlaybackEnded(ended) => {
                if let Some(play) = self.plays.remove(&ended.id)
                    && !ended.interrupted
                {
                    self.feed(Event::PromptFinished { play }).await;
                }
            }
            MediaEvent::MediaStopped if self.heard_caller => {
                warn!("caller's media stopped");
                self.feed(Event::MediaLost).await;
            }
            MediaEvent::MediaStopped => debug!("no media from the caller yet"),
            MediaEvent::MediaResumed => {
                info!("caller's media resumed");
                self.feed(Event::MediaResumed).await;
            }
            MediaEvent::Audio(_) | MediaEvent::RemoteAddressChanged(_) => {}
        }
    }

    async fn on_queue(&mut self, msg: ToCall) {
        match msg {
            ToCall::Status {
                position,
                estimated_wait,
            } => {
                self.feed(Event::QueueStatus {
                    position,
                    estimated_wait,
                })
                .await
            }
            ToCall::NoneAvailable => self.feed(Event::NoAgentAvailable).await,
            ToCall::Ring { agent, target } => {
                if let Err(e) = self.ring_agent(&agent, &target).await {
                    warn!(%agent, error = %format!("{e:#}"), "could not ring agent");
                    self.shared
                        .tell_queue(QueueMsg::Call(QueueInput::AgentFailed {
                            agent: agent.clone(),
                            call: self.id,
                            why: AgentFailure::Unreachable,
                        }))
                        .await;
                    self.feed(Event::AgentDeclined { agent }).await;
                }
            }
        }
    }

    /// Rings an agent with the caller's context in the INVITE, so they never ask again.
    /// `agent` is the queue's name for them, `target` where their phone is now.
    async fn ring_agent(&mut self, agent: &str, target: &str) -> anyhow::Result<()> {
        let uri = match crate::agents::AgentTarget::parse(target) {
            crate::agents::AgentTarget::Sip(uri) => uri,
            crate::agents::AgentTarget::Browser { .. } => {
                // The console shows the caller's words, reason, language and wait (the
                // queue's view) with Accept and Decline.
                let offer = self.shared.offers.offer(agent, self.id);
                info!(%agent, "offering the call in the agent's console");
                self.hold(HeldState::Connecting);
                self.agent = Some(AgentLeg {
                    agent: agent.to_string(),
                    answered: false,
                    media: None,
                    way: AgentWay::Browser {
                        offer,
                        requests_open: true,
                        state: None,
                    },
                });
                self.feed(Event::AgentOffered {
                    agent: agent.to_string(),
                })
                .await;
                return Ok(());
            }
        };
        let socket = media::bind_rtp_socket(self.shared.media_ip, self.shared.rtp_ports).await?;
        let mut local_sdp = sdp::LocalSdp::new(local_media(&self.shared, &socket)?);
        let ring_timeout = self.brain.flow().timers.agent_ring;
        let context = self.brain.context();
        let said = context.said.join(" | ");
        let mut headers = vec![
            ("X-Humanline-Reason".to_string(), self.route_reason()),
            (
                "X-Humanline-Transcript".to_string(),
                if said.is_empty() {
                    "(nothing said)".into()
                } else {
                    said
                },
            ),
            ("X-Humanline-Language".to_string(), context.language.clone()),
        ];
        if !context.topics.is_empty() {
            headers.push(("X-Humanline-Topics".into(), context.topics.join(", ")));
        }
        let invite = OutboundInvite {
            target_uri: uri,
            offer_sdp: local_sdp.offer(media::Direction::SendRecv),
            extra_headers: headers,
            from_user: Some(self.caller_id.clone()).filter(|c| !c.is_empty()),
            ring_timeout: Some(ring_timeout),
            ..Default::default()
        };
        let (call, events) = self.shared.sip.invite_with(invite).await?;
        info!(%agent, %target, "ringing agent");
        self.hold(HeldState::Connecting);
        self.agent = Some(AgentLeg {
            agent: agent.to_string(),
            answered: false,
            media: None,
            way: AgentWay::Sip {
                call,
                events,
                sdp: local_sdp,
                socket: Some(socket),
            },
        });
        self.feed(Event::AgentOffered {
            agent: agent.to_string(),
        })
        .await;
        Ok(())
    }

    fn route_reason(&self) -> String {
        self.brain
            .route_reason()
            .map_or("assistance", RouteReason::as_str)
            .to_string()
    }

    async fn on_agent(&mut self, ev: AgentEvent) {
        let Some(leg) = self.agent.as_mut() else {
            return;
        };
        let agent = leg.agent.clone();
        match ev {
            AgentEvent::Sip(Some(OutboundEvent::Answered { answer_sdp })) => {
                let AgentWay::Sip { call, socket, .. } = &mut leg.way else {
                    return;
                };
                let remote = match sdp::parse_answer(&answer_sdp) {
                    Ok(r) => r,
                    Err(e) => {
                        warn!(%agent, error = %e, "agent's answer unusable");
                        let _ = call.hangup().await;
                        return self.agent_failed(AgentFailure::Unreachable).await;
                    }
                };
                let Some(socket) = socket.take() else {
                    return;
                };
                match media::spawn(socket, SessionConfig::new(&remote, StreamIds::random())) {
                    Ok(media) => {
                        leg.media = Some(media);
                        self.bridge_agent("agent answered; bridged").await;
                    }
                    Err(e) => {
                        warn!(error = %e, "agent media failed");
                        let _ = call.hangup().await;
                        self.agent_failed(AgentFailure::Unreachable).await;
                    }
                }
            }
            AgentEvent::Sip(Some(OutboundEvent::Failed { reason, status, .. })) => {
                info!(%agent, ?reason, ?status, "agent did not take the call");
                let why = match reason {
                    FailReason::Busy => AgentFailure::Busy,
                    FailReason::Declined | FailReason::Rejected | FailReason::Cancelled => {
                        AgentFailure::Declined
                    }
                    FailReason::NoAnswer => AgentFailure::NoAnswer,
                    FailReason::Unreachable => AgentFailure::Unreachable,
                };
                self.agent_failed(why).await;
            }
            AgentEvent::Sip(Some(OutboundEvent::Bye | OutboundEvent::Ended { .. }) | None) => {
                if leg.answered {
                    self.agent_left().await;
                } else {
                    // The leg ended before it was answered: the queue must hear of it, or
                    // the agent stays "ringing" for good (`agent_failed` takes the leg).
                    self.agent_failed(AgentFailure::Unreachable).await;
                }
            }
            AgentEvent::Sip(Some(OutboundEvent::ReInvite { sdp: offer, reply })) => {
                let AgentWay::Sip { sdp, .. } = &mut leg.way else {
                    return;
                };
                match sdp.answer(&offer) {
                    Ok(answer) => {
                        if let Some((h, _)) = &leg.media {
                            let _ = h.update_remote(answer.remote).await;
                        }
                        let _ = reply.accept(&answer.sdp).await;
                    }
                    Err(e) => {
                        let _ = reply.reject(e.sip_status()).await;
                    }
                }
            }
            AgentEvent::Sip(Some(_)) => {}
            AgentEvent::Console(Some(ConsoleRequest::Accept { offer, reply })) => {
                let AgentWay::Browser { state, .. } = &mut leg.way else {
                    return;
                };
                if state.is_some() {
                    let _ = reply.send(Err(AcceptRefused::Gone(
                        "this call is being answered already".into(),
                    )));
                    return;
                }
                match super::browser::answer_offer(&self.shared, &offer, |c| c).await {
                    Ok(answered) => {
                        leg.media = Some((answered.media, answered.media_events));
                        *state = Some(answered.state);
                        if reply.send(Ok(answered.answer_sdp)).is_ok() {
                            info!(%agent, "agent accepted in the console; connecting");
                        }
                        // An accept whose answer never reached the console: its browser
                        // cannot connect, and the ring timeout ends the offer.
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
            AgentEvent::Console(Some(ConsoleRequest::Decline | ConsoleRequest::HangUp))
                if leg.answered =>
            {
                info!(%agent, "agent hung up in the console");
                self.agent_left().await;
            }
            AgentEvent::Console(Some(ConsoleRequest::Decline | ConsoleRequest::HangUp)) => {
                info!(%agent, "agent declined in the console");
                self.agent_failed(AgentFailure::Declined).await;
            }
            AgentEvent::Console(None) => {
                if let AgentWay::Browser { requests_open, .. } = &mut leg.way {
                    *requests_open = false;
                }
                if !leg.answered {
                    self.agent_failed(AgentFailure::Unreachable).await;
                }
            }
            AgentEvent::Browser(PeerState::Connected) => {
                if !leg.answered {
                    self.bridge_agent("agent answered in the console; bridged")
                        .await;
                }
            }
            AgentEvent::Browser(PeerState::Gone) => {
                if leg.answered {
                    info!(%agent, "agent's browser connection closed");
                    self.agent_left().await;
                } else {
                    info!(%agent, "agent's browser never connected");
                    self.agent_failed(AgentFailure::Unreachable).await;
                }
            }
            // ICE consent failing: the browser may come back; its end is `Gone`.
            AgentEvent::Browser(PeerState::Connecting | PeerState::Disconnected) => {}
            AgentEvent::Media(Some(_)) => {}
            AgentEvent::Media(None) => {
                if let Some(leg) = self.agent.as_mut() {
                    leg.media = None;
                }
            }
        }
    }

    /// The agent's leg has media and the agent is there: bridge it to the caller, exactly
    /// alike for a SIP phone and a browser console. The queue and the brain hear of it.
    async fn bridge_agent(&mut self, what: &'static str) {
        let Some(leg) = self.agent.as_mut() else {
            return;
        };
        let Some((handle, _)) = &leg.media else {
            return;
        };
        if let Err(e) = media::bridge(&self.media, handle).await {
            warn!(error = %e, "bridge failed");
        }
        leg.answered = true;
        let agent = leg.agent.clone();
        info!(%agent, "{what}");
        self.shared
            .tell_queue(QueueMsg::Call(QueueInput::AgentAnswered {
                agent: agent.clone(),
                call: self.id,
            }))
            .await;
        self.queued = false;
        self.release_held(true);
        self.feed(Event::AgentAnswered { agent }).await;
    }

    /// The agent hung up (or their browser went away) after answering: the caller is back
    /// with the IVR, never cut off.
    async fn agent_left(&mut self) {
        let Some(agent) = self.agent.as_ref().map(|l| l.agent.clone()) else {
            return;
        };
        self.drop_agent_leg().await;
        info!(%agent, "agent left; caller back with the IVR");
        self.shared
            .tell_queue(QueueMsg::Call(QueueInput::AgentFinished {
                agent,
                call: self.id,
            }))
            .await;
        self.feed(Event::AgentLeft).await;
    }

    async fn agent_failed(&mut self, why: AgentFailure) {
        let Some(leg) = self.agent.take() else { return };
        let agent = leg.agent.clone();
        self.shared
            .tell_queue(QueueMsg::Call(QueueInput::AgentFailed {
                agent: agent.clone(),
                call: self.id,
                why,
            }))
            .await;
        // A browser leg accepted but never connected still has its media task.
        if let Some((handle, _)) = leg.media {
            handle.close().await;
        }
        self.feed(Event::AgentDeclined { agent }).await;
    }

    async fn drop_agent_leg(&mut self) {
        if let Some(leg) = self.agent.take()
            && let Some((handle, _)) = leg.media
        {
            let _ = media::unbridge(&self.media, &handle).await;
            handle.close().await;
        }
    }

    /// The caller is gone: release the agent (they may hang up on an agent; we hang up the
    /// agent's leg for them), leave the queue.
    async fn finish(mut self) {
        if let Some(pool) = &self.shared.speech {
            // Their decodes would only keep other callers waiting.
            let n = pool.cancel_stream(self.id);
            if n > 0 {
                debug!(n, "queued decodes cancelled");
            }
        }
        if self.queued {
            self.shared
                .tell_queue(QueueMsg::Call(QueueInput::Remove { call: self.id }))
                .await;
        }
        // The call is over here (a caller whose line died has their promise already): this
        // node no longer holds them. Waited for, so that nothing of the call outlives it.
        self.release_held(false);
        if let Some(write) = self.held_write.take() {
            let _ = write.await;
        }
        if let Some(leg) = self.agent.take() {
            let (agent, answered) = (leg.agent.clone(), leg.answered);
            // Hung up before the agent is free again: never offered a call while still on
            // this one.
            leg.close().await;
            let input = if answered {
                QueueInput::AgentFinished {
                    agent,
                    call: self.id,
                }
            } else {
                QueueInput::AgentFailed {
                    agent,
                    call: self.id,
                    why: AgentFailure::NoAnswer,
                }
            };
            self.shared.tell_queue(QueueMsg::Call(input)).await;
        }
        let stats = self.media.close().await;
        info!(
            secs = self.call_start.elapsed().as_secs(),
            ?stats,
            "call over"
        );
    }
}
