//! Prometheus metrics: what an operator watches (calls, routes by reason, time to route,
//! queue length, and how far behind speech recognition is).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::sip::SipStats;
use crate::speech::PoolStats;

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
    time_to_route: Histogram,
    pub queue_length: Gauge,
    pub callbacks_promised: Counter,
    /// Problems in the prompt files on disk, which are therefore not the running flow (0:
    /// they are).
    pub prompts_disk_problems: Gauge,
    speech: Source<PoolStats>,
    sip: Source<SipStats>,
    /// The last hour's routes and the latest times to route, for the dashboard (a counter
    /// and a histogram cannot be read back by reason and over time).
    recent: std::sync::Arc<std::sync::Mutex<super::dashboard::RecentRoutes>>,
    registry: std::sync::Arc<Registry>,
}

/// Where a part of the server's figures come from, read at each scrape (set once that part is
/// up: the decoder pool once the model loads, the SIP stack once it listens).
type Source<S> = std::sync::Arc<std::sync::OnceLock<Box<dyn Fn() -> S + Send + Sync>>>;

type Encode<S> = fn(&S, &mut DescriptorEncoder) -> Result<(), std::fmt::Error>;

/// Encodes one source's figures at scrape time; nothing before the source is set.
struct Watched<S> {
    source: Source<S>,
    encode: Encode<S>,
}

impl<S> std::fmt::Debug for Watched<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watched")
    }
}

impl<S: 'static> Collector for Watched<S> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        match self.source.get().map(|f| f()) {
            Some(stats) => (self.encode)(&stats, &mut encoder),
            None => Ok(()),
        }
    }
}

/// (name, help, value) rows as gauges, or as counters.
fn encode_rows(
    encoder: &mut DescriptorEncoder,
    rows: &[(&str, &str, f64)],
    counters: bool,
) -> Result<(), std::fmt::Error> {
    for &(name, help, value) in rows {
        if counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        } else {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
    }
    Ok(())
}

/// The decoder pool's load.
fn encode_speech(
    stats: &PoolStats,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let secs = |ms: Option<u64>| ms.unwrap_or(0) as f64 / 1000.0;
    let workers = stats.workers.max(1) as f64;
    let gauges = [
        ("speech_workers", "Decoder workers", stats.workers as f64),
        (
            "speech_decoding",
            "Decodes running now",
            stats.running as f64,
        ),
        (
            "speech_queued",
            "Decodes waiting (finals and partials)",
            stats.queued as f64,
        ),
        (
            "speech_queued_finals",
            "Finals waiting: callers who stopped talking",
            stats.queued_finals as f64,
        ),
        (
            "speech_queue_age_seconds",
            "How long the oldest waiting decode has waited",
            secs(stats.oldest_queued_ms),
        ),
        (
            "speech_final_queue_age_seconds",
            "How long the oldest waiting final has waited",
            secs(stats.oldest_queued_final_ms),
        ),
        (
            "speech_load",
            "Decodes running and waiting per worker (above 1: falling behind)",
            (stats.running + stats.queued) as f64 / workers,
        ),
    ];
    encode_rows(encoder, &gauges, false)?;
    let counters = [
        (
            "speech_busy_seconds",
            "Time spent decoding, all workers (its rate per worker is the utilisation)",
            stats.busy_ms as f64 / 1000.0,
        ),
        (
            "speech_decoded",
            "Decodes completed",
            stats.completed as f64,
        ),
        ("speech_failed", "Decodes that failed", stats.failed as f64),
        (
            "speech_superseded",
            "Partials replaced, shed or aborted, and decodes of calls that hung up",
            stats.superseded as f64,
        ),
        (
            "speech_rejected",
            "Decodes refused: queue full",
            stats.rejected as f64,
        ),
        (
            "speech_behind",
            "Finals not decoded in time: those callers went to a person",
            stats.behind as f64,
        ),
    ];
    encode_rows(encoder, &counters, true)
}

/// What the SIP stack holds: a dialog count that only grows is a leak.
fn encode_sip(stats: &SipStats, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let gauges = [
        (
            "sip_dialogs",
            "Dialogs the SIP stack holds (callers' and agents' legs)",
            stats.dialogs as f64,
        ),
        (
            "sip_inbound_calls",
            "Inbound calls admitted and not ended",
            stats.inbound_calls as f64,
        ),
    ];
    encode_rows(encoder, &gauges, false)
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
        let prompts_disk_problems = Gauge::default();
        registry.register(
            "prompts_disk_problems",
            "Problems in the prompt files on disk, which are not the running flow until fixed (0: they are)",
            prompts_disk_problems.clone(),
        );
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
        let speech = Source::<PoolStats>::default();
        registry.register_collector(Box::new(Watched {
            source: speech.clone(),
            encode: encode_speech,
        }));
        let sip = Source::<SipStats>::default();
        registry.register_collector(Box::new(Watched {
            source: sip.clone(),
            encode: encode_sip,
        }));
        Self {
            speech,
            sip,
            calls,
            active_calls,
            routes,
            time_to_route,
            queue_length,
            callbacks_promised,
            prompts_disk_problems,
            recent: std::sync::Arc::default(),
            registry: std::sync::Arc::new(registry),
        }
    }

    pub fn route(&self, reason: &str) {
        self.routes
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.recent_lock().record_route(reason, now_s);
    }

    /// Seconds from the end of the caller's speech to a route decision.
    pub fn observe_time_to_route(&self, secs: f64) {
        self.time_to_route.observe(secs);
        self.recent_lock().record_time_to_route(secs);
    }

    fn recent_lock(&self) -> std::sync::MutexGuard<'_, super::dashboard::RecentRoutes> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The dashboard's routes picture at `now_s` (seconds since the epoch).
    pub fn recent_routes(&self, now_s: u64) -> super::dashboard::RoutesPicture {
        self.recent_lock().picture(now_s)
    }

    /// The decoder pool's figures now, once it is up.
    pub fn speech_stats(&self) -> Option<PoolStats> {
        self.speech.get().map(|f| f())
    }

    /// Report the decoder pool's load (queue age, load, decodes behind) from now on; the
    /// first source set stays.
    pub fn watch_speech(&self, stats: impl Fn() -> PoolStats + Send + Sync + 'static) {
        let _ = self.speech.set(Box::new(stats));
    }

    /// Report the SIP stack's dialogs and calls from now on; the first source set stays.
    pub fn watch_sip(&self, stats: impl Fn() -> SipStats + Send + Sync + 'static) {
        let _ = self.sip.set(Box::new(stats));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
    }

    #[test]
    fn metrics_expose_the_decoder_pools_queue_age_and_load() {
        let m = Metrics::new();
        assert!(
            !m.render().contains("speech_"),
            "nothing before a pool exists"
        );
        m.watch_speech(|| PoolStats {
            workers: 2,
            queued: 3,
            queued_finals: 1,
            running: 2,
            oldest_queued_ms: Some(450),
            oldest_queued_final_ms: Some(120),
            behind: 4,
            busy_ms: 12_500,
            ..PoolStats::default()
        });
        let text = m.render();
        assert_eq!(
            value(&text, "humanline_speech_queue_age_seconds"),
            Some(0.45),
            "{text}"
        );
        assert_eq!(
            value(&text, "humanline_speech_final_queue_age_seconds"),
            Some(0.12)
        );
        assert_eq!(value(&text, "humanline_speech_load"), Some(2.5));
        assert_eq!(value(&text, "humanline_speech_queued_finals"), Some(1.0));
        assert_eq!(value(&text, "humanline_speech_behind_total"), Some(4.0));
        assert_eq!(
            value(&text, "humanline_speech_busy_seconds_total"),
            Some(12.5)
        );
        assert!(
            text.contains("# TYPE humanline_speech_load gauge"),
            "{text}"
        );
    }

    #[test]
    fn metrics_expose_the_sip_stacks_dialogs() {
        let m = Metrics::new();
        assert!(!m.render().contains("sip_"), "nothing before SIP is up");
        m.watch_sip(|| SipStats {
            dialogs: 3,
            inbound_calls: 2,
            ..SipStats::default()
        });
        let text = m.render();
        assert_eq!(value(&text, "humanline_sip_dialogs"), Some(3.0), "{text}");
        assert_eq!(value(&text, "humanline_sip_inbound_calls"), Some(2.0));
    }
}
