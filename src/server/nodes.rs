//! This node's heartbeat, and taking over the callers of nodes that died: once a second the
//! node beats in the shared store, then asks it for nodes silent longer than the node timeout
//! ([`crate::nodes::Liveness`]); their held callers become promises the dialer keeps (this
//! node's, or any other's). On one SQLite node the "other nodes" are its own earlier runs: a
//! caller waiting when it crashed is called back after the restart.

use super::Shared;
use crate::callbacks::{unix_now, with_ledger};
use crate::nodes::{BEAT_EVERY_MS, Liveness};
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

pub fn spawn(shared: Arc<Shared>, name: String, liveness: Liveness) {
    tokio::spawn(run(shared, name, liveness));
}

async fn run(shared: Arc<Shared>, name: String, liveness: Liveness) {
    let mut tick = tokio::time::interval(Duration::from_millis(BEAT_EVERY_MS.unsigned_abs()));
    // A missed beat is not made up with a burst: the next one says the same.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (me, n) = (shared.instance.clone(), name.clone());
        match with_ledger(&shared.ledger, move |l| l.beat(&me, &n, unix_now())).await {
            Ok(false) => {}
            Ok(true) => error!(
                "other nodes had given this node up for dead (no beat for {} ms): callers it held then are being called back by them",
                liveness.timeout_ms
            ),
            Err(e) => warn!(error = %e, "cannot renew this node's heartbeat"),
        }
        let me = shared.instance.clone();
        match with_ledger(&shared.ledger, move |l| {
            l.adopt_dead_nodes(&me, liveness, unix_now())
        })
        .await
        {
            Ok(made) => {
                for p in made {
                    let node = p.context["node_died"].as_str().unwrap_or("?").to_string();
                    info!(id = p.id, number = %p.number, %node, "a caller held by a node that died will be called back");
                    shared.metrics.callbacks_promised.inc();
                }
            }
            Err(e) => warn!(error = %e, "cannot look for nodes that died"),
        }
    }
}
