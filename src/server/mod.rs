//! `humanline serve`: the IVR server. SIP in (UDP and TCP), RTP media, live speech
//! recognition, the call brain per call, the agent queue, the callback ledger, and the HTTP
//! listener (health, metrics, callbacks API, browser callers over WebRTC). Prompts reload when their files change; an
//! invalid change is reported and the running prompts stay.

mod browser;
mod call;
pub(crate) mod caller_turn;
mod dialer;
mod flow_files;
mod nodes;
mod prompt_audio;
mod queue;
mod registrations;
mod settings;

pub use prompt_audio::PromptAudio;
pub use settings::{
    DEFAULT_REALM, RegistrarSettings, ServeOptions, ServerFile,
    parse_port_range as settings_port_range, valid_node_name,
};

use crate::callbacks::CallbackLedger;
use crate::config::Flow;
use crate::media::PortRange;
use crate::sip::{SipConfig, SipEndpoint};
use crate::speech::{DecodeOptions, DecoderPool, LanguageEngines, PoolConfig};
use crate::web::auth::{Auth, SharedUsers, with_users};
use crate::web::offers::ConsoleOffers;
use crate::web::{
    BrowserEndpoint, Desk, FlowEndpoint, Metrics, PromptsHealth, SharedLedger, WebState,
};
use anyhow::Context;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tracing::{error, info, warn};

/// What every call shares.
pub struct Shared {
    flow: RwLock<(Arc<Flow>, Arc<PromptAudio>)>,
    pub(crate) sip: SipEndpoint,
    pub(crate) media_ip: IpAddr,
    pub(crate) rtp_ports: PortRange,
    pub(crate) speech: Option<Arc<DecoderPool>>,
    /// The model behind `speech`, to re-tokenize the verifier's phrases on a prompt reload.
    pub(crate) engine: Option<Arc<crate::speech::LanguageEngines>>,
    pub(crate) queue: tokio::sync::mpsc::Sender<queue::QueueMsg>,
    /// Agents who may be offered calls now or when free (the dialer's room).
    pub(crate) agents_staffed: Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) ledger: SharedLedger,
    pub(crate) metrics: Metrics,
    pub(crate) next_call: AtomicU64,
    pub(crate) utc_offset_min: i64,
    pub(crate) recognizer: crate::speech::RecognizerConfig,
    /// Silence from a caller after which their phone is probed (`no_media_timeout_ms`).
    pub(crate) no_media_timeout: Duration,
    /// Which numbers callbacks may go to.
    pub(crate) numbers: crate::callbacks::NumberPolicy,
    /// This server run, in the keys of the promises it makes (unique across restarts), in a
    /// shared store's claims and in its heartbeat.
    pub(crate) instance: String,
    /// The address in our ICE candidates for browsers (`[browser] candidate_ip`); `None`:
    /// the media socket's own.
    pub(crate) browser_candidate_ip: Option<IpAddr>,
    /// Calls offered to agents who answer in the console.
    pub(crate) offers: ConsoleOffers,
    /// Whether the prompt files on disk are the running flow (`/healthz`).
    pub(crate) prompts_health: PromptsHealth,
}

impl Shared {
    /// Tells the agent queue `msg`, waiting for room while its channel is full: never
    /// dropped (see [`queue::CALLS_CAPACITY`]), and the queue never waits on a call, so the
    /// wait ends. An error means the queue task is gone, and with it every call's line.
    pub(crate) async fn tell_queue(&self, msg: queue::QueueMsg) {
        let _ = self.queue.send(msg).await;
    }

    /// The flow in force now: a call takes it at its start and keeps it.
    pub fn flow(&self) -> Arc<Flow> {
        self.flow
            .read()
            .map(|g| g.0.clone())
            .unwrap_or_else(|p| p.into_inner().0.clone())
    }

    /// The flow and its recordings, taken together at a call's start: the call keeps both
    /// whatever is reloaded meanwhile.
    pub fn flow_and_audio(&self) -> (Arc<Flow>, Arc<PromptAudio>) {
        let pair = |g: &(Arc<Flow>, Arc<PromptAudio>)| (g.0.clone(), g.1.clone());
        self.flow
            .read()
            .map(|g| pair(&g))
            .unwrap_or_else(|p| pair(&p.into_inner()))
    }
}

/// Runs the server until Ctrl-C / SIGTERM.
pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));

    let flow = Flow::load_dir(&opts.prompts)
        .with_context(|| format!("loading prompts from {}", opts.prompts.display()))?;
    let audio = PromptAudio::load(&flow)?;
    info!(languages = flow.languages.len(), "prompts loaded");

    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating {}", opts.data_dir.display()))?;
    // This server run: in the keys of the promises it makes, in a shared ledger's claims and
    // in its heartbeat; it starts with the node's name when one is configured.
    let run = format!("{:x}-{:x}", unix_ms(), std::process::id());
    let instance = match &opts.node {
        Some(name) => format!("{name}-{run}"),
        None => run,
    };
    let node_name = opts.node.clone().unwrap_or_else(|| instance.clone());
    // Off the runtime: the PostgreSQL client blocks (and runs a runtime of its own, which
    // cannot start inside this one).
    let ledger = {
        let (store, data_dir, retry) = (
            opts.store.clone(),
            opts.data_dir.clone(),
            opts.callback_retry,
        );
        let (instance, node_name, timeout_ms) = (
            instance.clone(),
            node_name.clone(),
            opts.node_timeout.timeout_ms,
        );
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let opened = store
                .open(&data_dir, &instance, timeout_ms)
                .with_context(|| format!("opening {}", store.describe(&data_dir)))?;
            let mut ledger = CallbackLedger::new(opened, retry);
            let recovered = ledger.recover(unix_ms())?;
            if recovered > 0 {
                warn!(
                    recovered,
                    "callbacks interrupted by the last stop are due again"
                );
            }
            // Alive before the first call is taken: no other node may think this one dead.
            ledger
                .beat(&instance, &node_name, unix_ms())
                .context("registering this node's heartbeat")?;
            Ok(ledger)
        })
        .await
        .context("opening the ledger")??
    };
    info!(node = %node_name, run = %instance, timeout_ms = opts.node_timeout.timeout_ms, "node registered");
    let ledger: SharedLedger = Arc::new(Mutex::new(ledger));
    // The users and the flow's versions are in the ledger's store: on PostgreSQL every node's,
    // so a user added once logs in on any node and a flow published on one is every node's.
    // Opened off the runtime, as the ledger is.
    let (users, versions) = {
        let (store, data_dir) = (opts.store.clone(), opts.data_dir.clone());
        tokio::task::spawn_blocking(move || {
            let users = store
                .open_users(&data_dir)
                .with_context(|| format!("opening the users in {}", store.describe(&data_dir)));
            let versions = store.open_versions(&data_dir).map_err(|e| {
                error!(error = %e, "flow versions unavailable: publishing and rolling back refused");
            });
            users.map(|u| (u, versions.ok()))
        })
        .await
        .context("opening the users")??
    };
    let users: SharedUsers = Arc::new(Mutex::new(users));
    match with_users(&users, |u| u.list()).await {
        Ok(list) if list.is_empty() => warn!(
            "no users yet: nobody can log in to the console or the API, and no phone can register (add one with `humanline users add NAME --role operator`)"
        ),
        Ok(list) => {
            for u in list.iter().filter(|u| u.sip_realm != opts.registrar.realm) {
                warn!(user = %u.name, realm = %u.sip_realm, "this user's SIP password was set for another realm: their phone cannot register until it is set again");
            }
        }
        Err(e) => return Err(e).context("reading users"),
    }

    let queue = queue::spawn(
        opts.agents.clone(),
        metrics.clone(),
        opts.store
            .shared()
            .then(|| queue::AgentClaims::new(ledger.clone(), instance.clone(), opts.node_timeout)),
    );
    let auth = Auth::new(users.clone(), opts.auth.clone());
    let http = tokio::net::TcpListener::bind(opts.http_listen)
        .await
        .with_context(|| format!("binding HTTP on {}", opts.http_listen))?;
    let (browser_endpoint, browser_requests) =
        BrowserEndpoint::new(opts.browser.allowed_origins.clone());
    let offers = ConsoleOffers::default();
    let prompts_health = PromptsHealth::new(metrics.clone());
    let (flow_endpoint, flow_requests) = FlowEndpoint::new();
    {
        let audit = flow_endpoint.clone();
        auth.set_audit(Box::new(move |who, action, detail| {
            audit.record(who, action, detail)
        }));
    }
    let web = WebState {
        prompts: prompts_health.clone(),
        flow: flow_endpoint,
        ready: ready.clone(),
        metrics: metrics.clone(),
        ledger: ledger.clone(),
        browser: browser_endpoint,
        auth: auth.clone(),
        desk: Desk {
            view: queue.desk.clone(),
            agents: queue.agents.clone(),
            offers: offers.clone(),
        },
    };
    info!(addr = %opts.http_listen, "HTTP listening");
    tokio::spawn(async move {
        // The client's address, for the login rate limit and a browser caller's limits.
        let app =
            crate::web::router(web).into_make_service_with_connect_info::<std::net::SocketAddr>();
        if let Err(e) = axum::serve(http, app).await {
            error!(error = %e, "HTTP server stopped");
        }
    });

    // The models are loaded before the first call; if the default language's cannot be, calls
    // still get a person. Each language is heard with its own model (prompts' `[speech]`), or
    // every language with `--model`. Models are not reloaded with the prompts.
    let specs = flow.speech_specs(opts.model.as_deref());
    let (engines, skipped) = LanguageEngines::load_available(
        &specs,
        &flow.default_language,
        crate::speech::EngineOptions::default(),
    );
    for (language, e) in &skipped {
        error!(%language, error = %e, "speech model unavailable: this language is heard with the default language's model");
    }
    let mut engine_for_reload = None;
    let speech = match engines {
        Ok(engines) => {
            // The keyword verifier of each language, from the prompts' phrases and thresholds.
            engines.install_verifiers(&flow)?;
            engine_for_reload = Some(engines.clone());
            let cfg = PoolConfig {
                workers: opts.decoders,
                decode: DecodeOptions {
                    threads: Some(opts.decode_threads),
                    ..DecodeOptions::default().with_escape_prompt()
                },
                ..PoolConfig::default()
            };
            let pool = Arc::new(DecoderPool::new(engines, cfg)?);
            let watched = Arc::downgrade(&pool);
            metrics.watch_speech(move || watched.upgrade().map(|p| p.stats()).unwrap_or_default());
            Some(pool)
        }
        Err(e) => {
            error!(error = %e, "speech recognition unavailable: every caller goes straight to a person");
            None
        }
    };

    let mut sip_config = SipConfig::new(opts.sip_listen);
    sip_config.user_agent = format!("Humanline/{}", env!("CARGO_PKG_VERSION"));
    sip_config.admission = opts.admission;
    let (registered_tx, registered_rx) = tokio::sync::mpsc::channel(registrations::CHANNEL);
    sip_config.registrar = Some(crate::sip::RegistrarConfig {
        realm: opts.registrar.realm.clone(),
        min_expires_s: opts.registrar.min_expires_s,
        max_expires_s: opts.registrar.max_expires_s,
        credentials: Arc::new(registrations::UserCredentials {
            users: users.clone(),
            auth,
        }),
        events: registered_tx,
        nonce_secret: crate::web::auth::password::random_bytes(),
    });
    registrations::spawn(registered_rx, queue.agents.clone());
    let (sip, mut incoming) = SipEndpoint::bind_with(sip_config)
        .await
        .context("starting SIP")?;
    info!(addr = %sip.local_addr(), agents = ?opts.agents, "SIP listening (UDP and TCP)");

    let media_ip = if opts.sip_listen.ip().is_unspecified() {
        local_ip_guess()
    } else {
        opts.sip_listen.ip()
    };
    let shared = Arc::new(Shared {
        flow: RwLock::new((Arc::new(flow), Arc::new(audio))),
        sip,
        media_ip,
        rtp_ports: opts.rtp_ports,
        speech,
        engine: engine_for_reload,
        queue: queue.calls,
        agents_staffed: queue.staffed,
        ledger,
        metrics,
        next_call: AtomicU64::new(1),
        utc_offset_min: opts.utc_offset_min,
        no_media_timeout: opts.no_media_timeout,
        numbers: opts.callback_numbers.clone(),
        instance,
        browser_candidate_ip: opts.browser.candidate_ip,
        offers,
        prompts_health,
        recognizer: if opts.partials {
            crate::speech::RecognizerConfig::default()
        } else {
            crate::speech::RecognizerConfig {
                partial_interval_ms: 0,
                ..Default::default()
            }
        },
    });
    let watched = Arc::downgrade(&shared);
    shared
        .metrics
        .watch_sip(move || watched.upgrade().map(|s| s.sip.stats()).unwrap_or_default());
    flow_files::spawn(
        shared.clone(),
        opts.prompts.clone(),
        &opts.data_dir,
        versions,
        opts.store.shared(),
        flow_requests,
    );
    tokio::spawn(browser::serve(
        shared.clone(),
        opts.browser.clone(),
        browser_requests,
    ));
    nodes::spawn(shared.clone(), node_name, opts.node_timeout);
    match &opts.trunk {
        Some(trunk) => dialer::spawn(shared.clone(), trunk.clone()),
        None => {
            warn!("no --trunk: callbacks are promised and stored, but not dialed until one is set")
        }
    }
    ready.store(true, Ordering::Release);
    // Tests and scripts wait for this line.
    eprintln!(
        "humanline: ready (SIP {}, HTTP {})",
        shared.sip.local_addr(),
        opts.http_listen
    );

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            call = incoming.recv() => {
                let Some(call) = call else { break };
                tokio::spawn(call::run(shared.clone(), call));
            }
            _ = &mut shutdown => {
                info!("shutting down");
                break;
            }
        }
    }
    shared.sip.shutdown();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn unix_ms() -> i64 {
    crate::callbacks::unix_now()
}

/// The address peers can send media to when SIP listens on a wildcard address.
fn local_ip_guess() -> IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}
