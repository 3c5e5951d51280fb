//! Prometheus metrics: what an operator watches (calls, routes by reason, time to route,
//! queue length).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// The server's metrics; cheap to clone (every metric is shared).
#[derive(Clone)]
pub struct Metrics {
    pub calls: Counter,
    pub active_calls: Gauge,
    pub routes: Family<ReasonLabel, Counter>,
    /// Seconds from the end of the caller's speech to the route decision (negative values,
    /// decided while speaking, are recorded as 0).
    pub time_to_route: Histogram,
    pub queue_length: Gauge,
    pub callbacks_promised: Counter,
    registry: std::sync::Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("humanline");
        let calls = Counter::default();
        let active_calls = Gauge::default();
        let routes = Family::<ReasonLabel, Counter>::default();
        let time_to_route = Histogram::new([0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0]);
        let queue_length = Gauge::default();
        let callbacks_promised = Counter::default();
        registry.register("calls", "Calls answered", calls.clone());
        registry.register("active_calls", "Calls in progress", active_calls.clone());
        registry.register(
            "routes",
            "Callers routed to a person, by reason",
            routes.clone(),
        );
        registry.register(
            "time_to_route_seconds",
            "From the end of the caller's speech to the route decision",
            time_to_route.clone(),
        );
        registry.register(
            "queue_length",
            "Callers waiting for a person",
            queue_length.clone(),
        );
        registry.register(
            "callbacks_promised",
            "Callbacks committed to the ledger",
            callbacks_promised.clone(),
        );
        Self {
            calls,
            active_calls,
            routes,
            time_to_route,
            queue_length,
            callbacks_promised,
            registry: std::sync::Arc::new(registry),
        }
    }

    pub fn route(&self, reason: &str) {
        self.routes
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
