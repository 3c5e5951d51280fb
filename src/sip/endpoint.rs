//! The SIP endpoint: one UDP and one TCP listener on the same port, request dispatch, and
//! outbound INVITEs.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use rsipstack::EndpointBuilder;
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::dialog::invitation::InviteOption;
use rsipstack::platform::CancellationToken;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Method, Param, StatusCode, Transport, Uri};
use rsipstack::transaction::Transaction;
use rsipstack::transaction::endpoint::EndpointOption;
use rsipstack::transport::udp::UdpConnection;
use rsipstack::transport::{SipConnection, TcpListenerConnection, TransportLayer};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, info, warn};

use super::admission::{Admission, AdmissionLimits, Admitter};
use super::digest::{Nonces, challenge};
use super::error::{SipError, SipResult};
use super::filter::{FilterCounters, FilteredUdpSocket, install_stream_filter};
use super::inbound::{IncomingCall, start_inbound};
use super::outbound::{
    OutboundCall, OutboundEvents, OutboundInvite, OutboundJob, Phase, supervise_outbound,
};
use super::registrar::{RegisterReply, RegisterRequest, RegistrarConfig, Registration, decide};
use super::types::{
    MAX_HEADER_VALUE_BYTES, SipTransport, sanitize_header_value, validate_header_name,
};

/// Methods we accept, as sent in `Allow`.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO";

/// Settings of a [`SipEndpoint`]. `SipConfig::new(addr)` gives the defaults.
#[derive(Debug, Clone)]
pub struct SipConfig {
    /// Address for both UDP and TCP. Port 0 picks a free port (the same for both).
    pub listen: SocketAddr,
    /// Address written into Via and Contact when `listen` is a wildcard or behind NAT.
    pub advertised_addr: Option<SocketAddr>,
    /// User-Agent / Server header value.
    pub user_agent: String,
    /// User part of our Contact and default From URI.
    pub local_user: String,
    /// Default time an outbound INVITE may ring before we CANCEL it.
    pub ring_timeout: Duration,
    /// How many undelivered incoming calls may queue before new ones get 503.
    pub incoming_queue: usize,
    /// Idle timeout of TCP connections (a caller's connection may idle for a whole call).
    pub tcp_idle_timeout: Duration,
    /// Longest value of one extra header on an outbound INVITE, in bytes.
    pub max_header_value_bytes: usize,
    /// When new calls are refused with 503 and Retry-After (before any answer).
    pub admission: AdmissionLimits,
    /// Agents' phones may REGISTER (digest authentication); `None`: REGISTER gets 405.
    pub registrar: Option<RegistrarConfig>,
}

impl SipConfig {
    pub fn new(listen: SocketAddr) -> Self {
        SipConfig {
            listen,
            advertised_addr: None,
            user_agent: "Humanline".into(),
            local_user: "humanline".into(),
            ring_timeout: Duration::from_secs(30),
            incoming_queue: 256,
            tcp_idle_timeout: Duration::from_secs(4 * 3600),
            max_header_value_bytes: MAX_HEADER_VALUE_BYTES,
            admission: AdmissionLimits::default(),
            registrar: None,
        }
    }
}

/// Counters for monitoring and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SipStats {
    /// Datagrams handed to the stack.
    pub udp_passed: u64,
    /// Datagrams dropped as garbage.
    pub udp_dropped: u64,
    /// Datagrams answered 400 (parseable enough, but broken).
    pub udp_answered_400: u64,
    /// Datagrams answered 501 (unknown method).
    pub udp_answered_501: u64,
    /// Dialogs the stack holds right now.
    pub dialogs: usize,
    /// Inbound calls in progress (admitted and not ended).
    pub inbound_calls: usize,
    /// New calls refused by admission control (503 with Retry-After).
    pub refused_503: u64,
}

pub(crate) struct Shared {
    pub(crate) dialogs: Arc<DialogLayer>,
    pub(crate) cancel: CancellationToken,
    pub(crate) config: SipConfig,
    pub(crate) local_addr: SocketAddr,
    pub(crate) contact: Uri,
    pub(crate) counters: Arc<FilterCounters>,
    admitter: std::sync::Mutex<Admitter>,
    /// Inbound calls in progress; each call's event pump holds one [`InboundSlot`].
    pub(crate) inbound_calls: Arc<AtomicUsize>,
    refused_503: AtomicU64,
    /// The registrar's nonces, when REGISTER is on.
    nonces: Option<Nonces>,
}

/// One admitted inbound call, counted until its event pump ends.
pub(crate) struct InboundSlot(Arc<AtomicUsize>);

impl Drop for InboundSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The receiving end of new calls.
#[derive(Debug)]
pub struct IncomingCalls {
    rx: mpsc::Receiver<IncomingCall>,
}

impl IncomingCalls {
    /// The next new call; `None` once the endpoint is shut down.
    pub async fn recv(&mut self) -> Option<IncomingCall> {
        self.rx.recv().await
    }
}

/// A SIP user agent listening on UDP and TCP on one port. Cheap to clone.
#[derive(Clone)]
pub struct SipEndpoint {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SipEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipEndpoint")
            .field("local_addr", &self.shared.local_addr)
            .finish()
    }
}

impl SipEndpoint {
    /// Binds UDP and TCP on `listen` with default settings.
    pub async fn bind(listen: SocketAddr) -> SipResult<(SipEndpoint, IncomingCalls)> {
        Self::bind_with(SipConfig::new(listen)).await
    }

    /// Binds UDP and TCP on `config.listen` and starts serving.
    pub async fn bind_with(config: SipConfig) -> SipResult<(SipEndpoint, IncomingCalls)> {
        let bind_err = |transport, addr, source| SipError::Bind {
            transport,
            addr,
            source,
        };
        // With port 0 the UDP port the system picks may be taken for TCP: try a few.
        let attempts = if config.listen.port() == 0 { 20 } else { 1 };
        let mut bound = None;
        for attempt in 1..=attempts {
            let udp = tokio::net::UdpSocket::bind(config.listen)
                .await
                .map_err(|e| bind_err("UDP", config.listen, e))?;
            let local_addr = udp
                .local_addr()
                .map_err(|e| bind_err("UDP", config.listen, e))?;
            // The stack binds its TCP listener only when serving starts and reports a failure
            // only in its log: try the port here so that a taken port is an error of bind().
            match std::net::TcpListener::bind(local_addr) {
                Ok(_probe) => {
                    bound = Some((udp, local_addr));
                    break;
                }
                Err(e) if attempt == attempts => return Err(bind_err("TCP", local_addr, e)),
                Err(_) => continue,
            }
        }
        let Some((udp, local_addr)) = bound else {
            return Err(bind_err(
                "TCP",
                config.listen,
                std::io::Error::from(std::io::ErrorKind::AddrInUse),
            ));
        };

        let cancel = CancellationToken::new();
        let transport_layer = TransportLayer::new(cancel.child_token());
        transport_layer.set_stream_idle_timeout(config.tcp_idle_timeout);
        let counters = Arc::new(FilterCounters::default());
        install_stream_filter(config.user_agent.clone(), counters.clone());
        let socket = FilteredUdpSocket::new(udp, config.user_agent.clone(), counters.clone());
        let external = config.advertised_addr;
        let udp_conn =
            UdpConnection::from_socket(Arc::new(socket), external, Some(cancel.child_token()))
                .await?;
        transport_layer.add_transport(udp_conn.into());
        let tcp = TcpListenerConnection::new(
            local_addr,
            external.map(|a| SocketAddr::new(a.ip(), local_addr.port())),
        )
        .await?;
        transport_layer.add_transport(tcp.into());

        let endpoint = EndpointBuilder::new()
            .with_user_agent(&config.user_agent)
            .with_transport_layer(transport_layer)
            .with_cancel_token(cancel.clone())
            .with_allows(vec![
                Method::Invite,
                Method::Ack,
                Method::Cancel,
                Method::Bye,
                Method::Options,
                Method::Info,
            ])
            .with_option(EndpointOption {
                // the stack's default Call-ID suffix is its vendor's domain
                callid_suffix: Some(callid_suffix(external.unwrap_or(local_addr))),
                ..Default::default()
            })
            .build();
        let incoming_tx = endpoint.incoming_transactions()?;
        let inner = endpoint.inner.clone();
        let dialogs = Arc::new(DialogLayer::new(inner.clone()));
        let contact = dialogs.build_local_contact(Some(config.local_user.clone()), None)?;

        let (calls_tx, calls_rx) = mpsc::channel(config.incoming_queue.max(1));
        let admitter = std::sync::Mutex::new(Admitter::new(config.admission));
        let nonces = config
            .registrar
            .as_ref()
            .map(|r| Nonces::new(r.nonce_secret, super::registrar::NONCE_LIFETIME_MS));
        let shared = Arc::new(Shared {
            nonces,
            dialogs,
            cancel: cancel.clone(),
            config,
            local_addr,
            contact,
            counters,
            admitter,
            inbound_calls: Arc::new(AtomicUsize::new(0)),
            refused_503: AtomicU64::new(0),
        });
        let serve_cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = endpoint.serve() => {}
                _ = serve_cancel.cancelled() => {}
            }
            debug!("SIP endpoint stopped");
        });
        tokio::spawn(dispatch(shared.clone(), incoming_tx, calls_tx));
        // Give the stack's serve task a moment to start its TCP listener.
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(loopback_of(local_addr))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        info!(%local_addr, "SIP endpoint listening on UDP and TCP");
        Ok((SipEndpoint { shared }, IncomingCalls { rx: calls_rx }))
    }

    /// The bound address (UDP and TCP share the port).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Our Contact URI (e.g. `sip:humanline@127.0.0.1:5060`).
    pub fn contact_uri(&self) -> String {
        self.shared.contact.to_string()
    }

    pub fn stats(&self) -> SipStats {
        let c = &self.shared.counters;
        SipStats {
            udp_passed: c.passed.load(Ordering::Relaxed),
            udp_dropped: c.dropped.load(Ordering::Relaxed),
            udp_answered_400: c.answered_400.load(Ordering::Relaxed),
            udp_answered_501: c.answered_501.load(Ordering::Relaxed),
            dialogs: self.shared.dialogs.len(),
            inbound_calls: self.shared.inbound_calls.load(Ordering::Relaxed),
            refused_503: self.shared.refused_503.load(Ordering::Relaxed),
        }
    }

    /// Stops listening and ends every event stream. Active dialogs are abandoned without
    /// signalling (callers are never sent BYE).
    pub fn shutdown(&self) {
        self.shared.cancel.cancel();
    }

    /// INVITEs `target_uri` with `offer_sdp` and `extra_headers` (e.g.
    /// `("X-Humanline-Reason", "keyword")`), using the default ring timeout.
    pub async fn invite(
        &self,
        target_uri: &str,
        offer_sdp: &str,
        extra_headers: Vec<(String, String)>,
    ) -> SipResult<(OutboundCall, OutboundEvents)> {
        self.invite_with(OutboundInvite {
            target_uri: target_uri.to_string(),
            offer_sdp: offer_sdp.to_string(),
            extra_headers,
            ..Default::default()
        })
        .await
    }

    /// INVITEs with every option.
    pub async fn invite_with(
        &self,
        req: OutboundInvite,
    ) -> SipResult<(OutboundCall, OutboundEvents)> {
        let shared = &self.shared;
        if shared.cancel.is_cancelled() {
            return Err(SipError::Shutdown);
        }
        let callee = Uri::try_from(req.target_uri.as_str()).map_err(|e| SipError::InvalidUri {
            uri: req.target_uri.clone(),
            reason: e.to_string(),
        })?;
        let mut headers = Vec::with_capacity(req.extra_headers.len() + 1);
        for (name, value) in &req.extra_headers {
            validate_header_name(name)?;
            let value = sanitize_header_value(value, shared.config.max_header_value_bytes);
            headers.push(rsipstack::sip::headers::make_header(name, value));
        }
        headers.push(Header::Allow(ALLOW.into()));
        let mut caller = shared.contact.clone();
        if let Some(user) = &req.from_user {
            let user = sanitize_user(user);
            caller.auth = Some(rsipstack::sip::Auth {
                user,
                password: None,
            });
        }
        let caller_display_name = req.from_display_name.as_deref().map(|d| {
            sanitize_header_value(d, 64)
                .replace('"', "'")
                .replace('\\', "")
        });
        let option = InviteOption {
            caller_display_name,
            caller,
            callee,
            content_type: Some("application/sdp".into()),
            offer: Some(req.offer_sdp.as_bytes().to_vec()),
            contact: shared.contact.clone(),
            headers: Some(headers),
            ..Default::default()
        };
        let (state_tx, state_rx) = shared.dialogs.new_dialog_state_channel();
        let (dialog, job) = shared.dialogs.do_invite_async(option, state_tx)?;
        let call_id = dialog.id().call_id.clone();
        let (ev_tx, ev_rx) = mpsc::channel(super::inbound::EVENT_QUEUE);
        let (phase_tx, phase_rx) = watch::channel(Phase::Inviting);
        let cancel_requested = Arc::new(tokio::sync::Notify::new());
        let released = CancellationToken::new();
        let span = tracing::info_span!("sip_call", call_id = %call_id, dir = "out");
        span.in_scope(|| info!(target = %req.target_uri, "INVITE sent"));
        tokio::spawn(
            supervise_outbound(OutboundJob {
                shared: shared.clone(),
                dialog: dialog.clone(),
                state_rx,
                invite: job,
                events: ev_tx,
                phase: phase_tx,
                cancel_requested: cancel_requested.clone(),
                released: released.clone(),
                ring_timeout: req.ring_timeout.unwrap_or(shared.config.ring_timeout),
            })
            .instrument(span),
        );
        Ok((
            OutboundCall {
                dialog,
                call_id,
                phase: phase_rx,
                cancel_requested,
                released,
            },
            OutboundEvents { rx: ev_rx },
        ))
    }
}

fn callid_suffix(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        "humanline".into()
    } else {
        addr.ip().to_string()
    }
}

fn loopback_of(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip: IpAddr = if addr.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

/// Keeps only characters allowed unescaped in a SIP URI user part.
fn sanitize_user(user: &str) -> String {
    let ok = |c: char| c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,".contains(c);
    let s: String = user.chars().filter(|&c| ok(c)).take(64).collect();
    if s.is_empty() { "anonymous".into() } else { s }
}

fn has_to_tag(tx: &Transaction) -> bool {
    tx.original
        .to_header()
        .ok()
        .and_then(|t| t.tag().ok().flatten())
        .is_some()
}

fn transport_of(tx: &Transaction) -> SipTransport {
    match tx.connection.as_ref().map(|c| c.transport()) {
        Some(Transport::Tcp) => SipTransport::Tcp,
        _ => SipTransport::Udp,
    }
}

fn remote_of(tx: &Transaction) -> Option<SocketAddr> {
    tx.connection
        .as_ref()
        .and_then(SipConnection::get_remote_addr)
        .and_then(|a| a.get_socketaddr().ok())
}

/// Reads the stack's new server transactions and routes them.
async fn dispatch(
    shared: Arc<Shared>,
    mut incoming: rsipstack::transaction::TransactionReceiver,
    calls: mpsc::Sender<IncomingCall>,
) {
    loop {
        let tx = tokio::select! {
            tx = incoming.recv() => tx,
            _ = shared.cancel.cancelled() => None,
        };
        let Some(tx) = tx else { break };
        let shared = shared.clone();
        let calls = calls.clone();
        let call_id = tx
            .original
            .call_id_header()
            .map(|c| c.value().to_string())
            .unwrap_or_default();
        let span =
            tracing::info_span!("sip_request", call_id = %call_id, method = %tx.original.method);
        tokio::spawn(
            async move {
                if let Err(e) = route(shared, tx, calls, call_id).await {
                    debug!(error = %e, "request handling failed");
                }
            }
            .instrument(span),
        );
    }
    debug!("dispatcher stopped");
}

async fn route(
    shared: Arc<Shared>,
    mut tx: Transaction,
    calls: mpsc::Sender<IncomingCall>,
    call_id: String,
) -> SipResult<()> {
    let method = tx.original.method;
    if has_to_tag(&tx) {
        // In-dialog request: hand it to its dialog.
        if let Some(rsipstack::dialog::dialog::Dialog::Invite(mut dialog)) =
            shared.dialogs.match_dialog(&tx)
        {
            let handled = dialog.handle(&mut tx).await;
            // The stack leaves some requests unanswered (a lower CSeq, INFO before the ACK):
            // answer them rather than let the peer retransmit into the void (RFC 3261 12.2.2).
            if tx.last_response.is_none() && !matches!(method, Method::Ack | Method::Cancel) {
                debug!("in-dialog request left unanswered by the stack: 500");
                tx.reply(StatusCode::ServerInternalError).await?;
            }
            handled?;
            return Ok(());
        }
        if method != Method::Ack {
            debug!("in-dialog request for an unknown dialog");
            tx.reply(StatusCode::CallTransactionDoesNotExist).await?;
        }
        return Ok(());
    }
    match method {
        Method::Invite => new_call(shared, tx, calls, call_id).await,
        Method::Options => {
            tx.reply_with(
                StatusCode::OK,
                vec![
                    Header::Allow(ALLOW.into()),
                    Header::Accept("application/sdp".into()),
                ],
                None,
            )
            .await?;
            Ok(())
        }
        Method::Register if shared.config.registrar.is_some() => register(&shared, tx).await,
        Method::Ack => Ok(()),
        Method::Bye | Method::Info | Method::Cancel | Method::PRack | Method::Update => {
            tx.reply(StatusCode::CallTransactionDoesNotExist).await?;
            Ok(())
        }
        _ => {
            tx.reply_with(
                StatusCode::MethodNotAllowed,
                vec![Header::Allow(ALLOW.into())],
                None,
            )
            .await?;
            Ok(())
        }
    }
}

/// A REGISTER: challenged, checked and bound (see [`super::registrar`]).
async fn register(shared: &Shared, mut tx: Transaction) -> SipResult<()> {
    let (Some(cfg), Some(nonces)) = (&shared.config.registrar, &shared.nonces) else {
        return Ok(());
    };
    let mut req = RegisterRequest {
        to_user: super::inbound::party_of(tx.original.to_header().ok().map(|h| h.value())).user,
        ..Default::default()
    };
    for h in tx.original.headers.iter() {
        let slot = match h {
            Header::Authorization(_) => &mut req.authorization,
            Header::Contact(_) => &mut req.contact,
            Header::Expires(_) => &mut req.expires,
            _ => continue,
        };
        slot.get_or_insert_with(|| h.value().to_string());
    }
    let ip = remote_of(&tx).map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let claimed = req
        .authorization
        .as_deref()
        .and_then(super::digest::parse_authorization)
        .map(|c| c.username);
    if let Some(user) = &claimed
        && cfg.credentials.locked(user, ip)
    {
        info!(%user, %ip, "REGISTER refused: too many failed attempts");
        tx.reply_with(
            StatusCode::Forbidden,
            vec![Header::Warning(
                "399 humanline \"too many failed attempts\"".into(),
            )],
            None,
        )
        .await?;
        return Ok(());
    }
    let now_ms = crate::callbacks::unix_now();
    let warning = |why: &str| Header::Warning(format!("399 humanline \"{why}\"").into());
    match decide(&req, cfg, nonces, now_ms) {
        RegisterReply::Challenge { stale } => {
            let value = challenge(&cfg.realm, &nonces.issue(now_ms), stale);
            tx.reply_with(
                StatusCode::Unauthorized,
                vec![Header::WwwAuthenticate(value.into())],
                None,
            )
            .await?;
        }
        RegisterReply::Forbidden(why) => {
            let user = claimed.unwrap_or_default();
            info!(%user, %ip, why, "REGISTER refused");
            cfg.credentials.failed(&user, ip);
            tx.reply_with(StatusCode::Forbidden, vec![warning(why)], None)
                .await?;
        }
        RegisterReply::IntervalTooBrief { min_expires_s } => {
            tx.reply_with(
                StatusCode::IntervalTooBrief,
                vec![Header::MinExpires(min_expires_s.to_string().into())],
                None,
            )
            .await?;
        }
        RegisterReply::BadRequest(why) => {
            tx.reply_with(StatusCode::BadRequest, vec![warning(why)], None)
                .await?;
        }
        RegisterReply::Bound {
            user,
            contact,
            expires_s,
        } => {
            info!(%user, %contact, expires_s, "registered");
            let headers = vec![
                Header::Contact(format!("<{contact}>;expires={expires_s}").into()),
                Header::Expires(expires_s.to_string().into()),
            ];
            let event = Registration::Bound {
                user,
                contact,
                expires: Duration::from_secs(u64::from(expires_s)),
            };
            if cfg.events.try_send(event).is_err() {
                warn!("registration not passed on: the application is not reading them");
            }
            tx.reply_with(StatusCode::OK, headers, None).await?;
        }
        RegisterReply::Unbound { user } => {
            info!(%user, "unregistered");
            if cfg.events.try_send(Registration::Unbound { user }).is_err() {
                warn!("registration not passed on: the application is not reading them");
            }
            tx.reply(StatusCode::OK).await?;
        }
        RegisterReply::Queried => tx.reply(StatusCode::OK).await?,
    }
    Ok(())
}

async fn new_call(
    shared: Arc<Shared>,
    mut tx: Transaction,
    calls: mpsc::Sender<IncomingCall>,
    call_id: String,
) -> SipResult<()> {
    // The filter already refused bodies that are not SDP (415), unanswerable Accept (406)
    // and any Require (420).
    if tx.original.body.is_empty() {
        // Delayed offer (offer in our 200, answer in ACK) is not supported by this API.
        info!("INVITE without SDP offer: 488");
        tx.reply_with(
            StatusCode::NotAcceptableHere,
            vec![Header::Warning(
                "399 humanline \"INVITE without SDP offer\"".into(),
            )],
            None,
        )
        .await?;
        return Ok(());
    }
    // Admission control: refuse what we cannot serve now, before anything is answered.
    let active = shared.inbound_calls.load(Ordering::Relaxed);
    let decision = match shared.admitter.lock() {
        Ok(mut a) => a.decide(std::time::Instant::now(), active),
        Err(_) => Admission::Admit,
    };
    if let Admission::Refuse {
        retry_after_secs,
        why,
    } = decision
    {
        shared.refused_503.fetch_add(1, Ordering::Relaxed);
        info!(active, why, retry_after_secs, "new call refused: 503");
        tx.reply_with(
            StatusCode::ServiceUnavailable,
            vec![
                Header::RetryAfter(retry_after_secs.to_string().into()),
                Header::Warning(format!("399 humanline \"{why}\"").into()),
            ],
            None,
        )
        .await?;
        return Ok(());
    }
    shared.inbound_calls.fetch_add(1, Ordering::Relaxed);
    let slot = InboundSlot(shared.inbound_calls.clone());

    let mut contact = shared.contact.clone();
    let transport = transport_of(&tx);
    if transport == SipTransport::Tcp {
        contact.params.push(Param::Transport(Transport::Tcp));
    }
    let (state_tx, state_rx) = shared.dialogs.new_dialog_state_channel();
    let dialog =
        match shared
            .dialogs
            .get_or_create_server_invite(&tx, state_tx, None, Some(contact))
        {
            Ok(dialog) => dialog,
            Err(e) => {
                // never leave an INVITE unanswered
                info!(error = %e, "cannot make a dialog of this INVITE: 400");
                let warning = sanitize_header_value(&e.to_string(), 200).replace('"', "'");
                tx.reply_with(
                    StatusCode::BadRequest,
                    vec![Header::Warning(
                        format!("399 humanline \"{warning}\"").into(),
                    )],
                    None,
                )
                .await?;
                return Ok(());
            }
        };
    let (call, started) = start_inbound(
        &shared,
        slot,
        dialog.clone(),
        state_rx,
        &tx.original,
        remote_of(&tx),
        transport,
        call_id,
    );
    info!(from = %call.from.uri, to = %call.to.uri, %transport, "incoming call");
    // Send 100 Trying, then wait for ACK / CANCEL on the INVITE transaction.
    let mut driver = dialog.clone();
    let driver_task = tokio::spawn(
        async move {
            if let Err(e) = driver.handle(&mut tx).await {
                debug!(error = %e, "INVITE transaction ended with an error");
            }
        }
        .in_current_span(),
    );
    // Deliver the call only once 100 Trying is on its way (the app may answer at once).
    if tokio::time::timeout(Duration::from_secs(2), started)
        .await
        .is_err()
    {
        debug!("INVITE transaction slow to start");
    }
    match calls.try_send(call) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(call)) => {
            warn!("incoming call queue full: 503");
            call.call
                .reject(super::types::RejectStatus::ServiceUnavailable)
                .ok();
        }
        Err(mpsc::error::TrySendError::Closed(call)) => {
            warn!("nobody takes incoming calls: 480");
            call.call
                .reject(super::types::RejectStatus::TemporarilyUnavailable)
                .ok();
        }
    }
    driver_task.await.ok();
    Ok(())
}
