//! Browser callers' driver, beside the SIP one: takes the web endpoint's requests, admits or
//! refuses each new call (`[browser]` limits), answers its offer with a WebRTC media leg and
//! starts the call; a `DELETE /call/{id}` reaches the call as the caller's hang-up.

use super::Shared;
use super::call::{BrowserCaller, run_browser};
use crate::media::webrtc::{self, PeerState, WebRtcError};
use crate::media::{self, MediaEvent, MediaHandle, SessionConfig, StreamIds};
use crate::sip::Admission;
use crate::web::{
    BrowserAdmission, BrowserClient, BrowserRequest, BrowserSettings, StartRefused, StartedCall,
};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// The calls in progress (by resource id) and the admission state.
struct Registry {
    admission: BrowserAdmission,
    hang_ups: HashMap<String, mpsc::Sender<()>>,
}

/// Serves the web endpoint's requests until the endpoint is gone.
pub(super) async fn serve(
    shared: Arc<Shared>,
    settings: BrowserSettings,
    mut requests: mpsc::Receiver<BrowserRequest>,
) {
    let registry = Arc::new(Mutex::new(Registry {
        admission: BrowserAdmission::new(settings.limits),
        hang_ups: HashMap::new(),
    }));
    while let Some(request) = requests.recv().await {
        match request {
            BrowserRequest::Start {
                offer,
                client,
                reply,
            } => {
                let result = start(&shared, &registry, &offer, client).await;
                if let Err(refused) = &result {
                    info!(?refused, "browser call refused");
                }
                let _ = reply.send(result);
            }
            BrowserRequest::HangUp { resource, reply } => {
                let hang_up = lock(&registry).hang_ups.get(&resource).cloned();
                let found = match hang_up {
                    // Full means a hang-up is already on its way.
                    Some(tx) => tx.try_send(()).is_ok() || tx.capacity() == 0,
                    None => false,
                };
                let _ = reply.send(found);
            }
        }
    }
}

use crate::sync::lock;

async fn start(
    shared: &Arc<Shared>,
    registry: &Arc<Mutex<Registry>>,
    offer: &str,
    client: BrowserClient,
) -> Result<StartedCall, StartRefused> {
    let keys = client.keys();
    if let Admission::Refuse {
        retry_after_secs,
        why,
    } = lock(registry).admission.admit(Instant::now(), &keys)
    {
        return Err(StartRefused::Limited {
            retry_after_secs,
            why,
            per_client: why.contains("client"),
        });
    }
    // From here on the admission is held by `slot`, released when it drops (a failed set-up
    // or the call's end).
    let mut slot = Slot {
        registry: registry.clone(),
        keys,
        resource: None,
    };
    let no_media_timeout = shared.no_media_timeout;
    let answered = answer_offer(shared, offer, |c| c.with_no_media_timeout(no_media_timeout))
        .await
        .map_err(|e| match e {
            LegRefused::BadOffer(why) => StartRefused::BadOffer(why),
            LegRefused::Unavailable(why) => StartRefused::Unavailable(why),
        })?;
    let BrowserLeg {
        answer_sdp,
        media,
        media_events,
        state,
    } = answered;
    let resource = resource_id();
    let (hang_up_tx, hang_up) = mpsc::channel(1);
    lock(registry).hang_ups.insert(resource.clone(), hang_up_tx);
    slot.resource = Some(resource.clone());
    let caller = BrowserCaller {
        resource: resource.clone(),
        media,
        media_events,
        state,
        hang_up,
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        run_browser(shared, caller).await;
        drop(slot);
    });
    Ok(StartedCall {
        resource,
        answer_sdp,
    })
}

/// A browser's WebRTC leg, answered and with its media task running: a browser caller's, or
/// an agent's who accepted a call in the console.
pub(super) struct BrowserLeg {
    pub(super) answer_sdp: String,
    pub(super) media: MediaHandle,
    pub(super) media_events: mpsc::Receiver<MediaEvent>,
    pub(super) state: watch::Receiver<PeerState>,
}

/// Why a browser's offer got no leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LegRefused {
    /// Malformed, or nothing we can answer (a 400 for the browser).
    BadOffer(String),
    /// No media port, or another failure on our side.
    Unavailable(String),
}

/// Answers a browser's offer on a media port of ours (the ICE candidate carries
/// `[browser] candidate_ip` when set) and starts its media task.
pub(super) async fn answer_offer(
    shared: &Shared,
    offer: &str,
    config: impl FnOnce(SessionConfig) -> SessionConfig,
) -> Result<BrowserLeg, LegRefused> {
    let unavailable = |e: &dyn std::fmt::Display| LegRefused::Unavailable(e.to_string());
    let socket = media::bind_rtp_socket(shared.media_ip, shared.rtp_ports)
        .await
        .map_err(|e| unavailable(&e))?;
    let bound = socket.local_addr().map_err(|e| unavailable(&e))?;
    let candidate = SocketAddr::new(
        shared.browser_candidate_ip.unwrap_or(bound.ip()),
        bound.port(),
    );
    let negotiated = webrtc::negotiate(offer, candidate, StreamIds::random(), Instant::now())
        .map_err(|e| match e {
            WebRtcError::BadOffer(_) | WebRtcError::NoAcceptableCodec => {
                LegRefused::BadOffer(e.to_string())
            }
            other => unavailable(&other),
        })?;
    let answer_sdp = negotiated.answer_sdp.clone();
    let (media, media_events, state) =
        webrtc::spawn(socket, negotiated, config).map_err(|e| unavailable(&e))?;
    Ok(BrowserLeg {
        answer_sdp,
        media,
        media_events,
        state,
    })
}

/// A browser call's hold on the admission and the registry.
struct Slot {
    registry: Arc<Mutex<Registry>>,
    keys: Vec<String>,
    resource: Option<String>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut r = lock(&self.registry);
        r.admission.ended(Instant::now(), &self.keys);
        if let Some(resource) = &self.resource
            && r.hang_ups.remove(resource).is_none()
        {
            warn!(%resource, "browser call was not registered");
        }
    }
}

/// An unguessable resource id (128 bits from the standard library's randomly keyed hasher),
/// so that one caller cannot hang up another's call.
fn resource_id() -> String {
    let mut out = String::with_capacity(32);
    for i in 0..2u8 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}
