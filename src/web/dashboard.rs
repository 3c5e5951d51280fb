//! The live dashboard (issue 13, item 6): `/dashboard`, for supervisors and operators, draws
//! pictures (calls now, the line and its waits, routes to a person by reason over the last
//! hour, time to route, callbacks by state and the escalated ones, speech engine load) from
//! one JSON answer, `GET /api/dashboard`, which it fetches again every few seconds.
//!
//! Everything here is read from what the server already keeps: the metrics (with the recent
//! routes below, recorded where a route is counted), the queue's desk view and the ledger.

use super::WebState;
use super::api_error as error;
use super::auth::{Auth, Role};
use crate::callbacks::{PromiseState, with_ledger};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

const PAGE: &str = include_str!("pages/dashboard.html");

/// Minutes of routes the picture covers.
pub const MINUTES: usize = 60;
/// Times to route kept for the distribution (the most recent).
pub const TIMES_KEPT: usize = 500;
/// Upper edges (seconds) of the time-to-route bars; one more bar holds the rest.
const TIME_EDGES: [f64; 6] = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0];
/// Escalated callbacks listed by name at most (the count says how many there are).
const ESCALATED_SHOWN: usize = 20;

/// Routes to a person in the last hour, minute by minute and by reason, and the latest times
/// to route. Pure: time is passed in (seconds since the epoch).
#[derive(Debug, Default)]
pub struct RecentRoutes {
    /// Oldest first; only minutes that had a route.
    minutes: VecDeque<(u64, BTreeMap<String, u32>)>,
    /// Since the server started.
    totals: BTreeMap<String, u64>,
    /// Oldest first.
    times: VecDeque<f64>,
}

/// One minute of the routes picture.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteMinute {
    /// The minute's start, seconds since the epoch.
    pub at_s: u64,
    pub by_reason: BTreeMap<String, u32>,
}

/// One bar of the time-to-route distribution.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeBar {
    /// Upper edge in seconds; `None` for the last bar (everything longer).
    pub le: Option<f64>,
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoutesPicture {
    /// The last hour, oldest first, one entry per minute (empty maps where none).
    pub minutes: Vec<RouteMinute>,
    pub totals: BTreeMap<String, u64>,
    pub time_to_route: Vec<TimeBar>,
    pub time_to_route_median_s: Option<f64>,
    pub time_to_route_p95_s: Option<f64>,
    pub time_to_route_count: usize,
}

impl RecentRoutes {
    pub fn record_route(&mut self, reason: &str, now_s: u64) {
        let minute = now_s / 60;
        match self.minutes.back_mut() {
            // A clock set back counts in the newest minute rather than reordering the past.
            Some((last, counts)) if *last >= minute => {
                *counts.entry(reason.to_string()).or_default() += 1;
            }
            _ => {
                self.minutes
                    .push_back((minute, BTreeMap::from([(reason.to_string(), 1)])));
            }
        }
        while self.minutes.len() > MINUTES {
            self.minutes.pop_front();
        }
        *self.totals.entry(reason.to_string()).or_default() += 1;
    }

    pub fn record_time_to_route(&mut self, secs: f64) {
        if !secs.is_finite() {
            return;
        }
        self.times.push_back(secs.max(0.0));
        while self.times.len() > TIMES_KEPT {
            self.times.pop_front();
        }
    }

    pub fn picture(&self, now_s: u64) -> RoutesPicture {
        let now_min = now_s / 60;
        let first = now_min.saturating_sub(MINUTES as u64 - 1);
        let minutes = (first..=now_min)
            .map(|m| RouteMinute {
                at_s: m * 60,
                by_reason: self
                    .minutes
                    .iter()
                    .find(|(at, _)| *at == m)
                    .map(|(_, c)| c.clone())
                    .unwrap_or_default(),
            })
            .collect();
        let mut bars: Vec<TimeBar> = TIME_EDGES
            .iter()
            .map(|&le| TimeBar {
                le: Some(le),
                count: 0,
            })
            .chain(std::iter::once(TimeBar { le: None, count: 0 }))
            .collect();
        for &t in &self.times {
            let i = TIME_EDGES
                .iter()
                .position(|&le| t <= le)
                .unwrap_or(TIME_EDGES.len());
            if let Some(bar) = bars.get_mut(i) {
                bar.count += 1;
            }
        }
        let mut sorted: Vec<f64> = self.times.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        // Nearest rank: the smallest time at least `q` of the times are at or below.
        let quantile = |q: f64| {
            let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
            sorted.get(rank - 1).copied()
        };
        RoutesPicture {
            minutes,
            totals: self.totals.clone(),
            time_to_route: bars,
            time_to_route_median_s: quantile(0.5),
            time_to_route_p95_s: quantile(0.95),
            time_to_route_count: sorted.len(),
        }
    }
}

fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `GET /dashboard`: the page, for supervisors and operators. Without a session the browser
/// goes to the login (and back here after it); an agent is told why not, with a way to log in
/// as someone else.
pub async fn page(State(auth): State<Auth>, req: Request) -> Response {
    match auth.session(req.headers()).await {
        None => (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, "/login?next=/dashboard")],
        )
            .into_response(),
        Some(s) if s.role.allows(Role::Supervisor) => super::console::page(PAGE),
        Some(s) => {
            let why = format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Humanline — dashboard</title></head>\
                 <body><h1>Not for agents</h1><p id=\"why\">The dashboard is for supervisors and operators; {} is an agent.</p>\
                 <p><a href=\"/console\">To the console</a> · <a href=\"/login?next=/dashboard\">Log in as someone else</a></p></body></html>",
                html_escape(&s.user)
            );
            let mut r = super::console::page_owned(why);
            *r.status_mut() = StatusCode::FORBIDDEN;
            r
        }
    }
}

/// User names are letters, digits and `._-` ([`super::auth::valid_name`]), but a page never
/// trusts that.
fn html_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

#[derive(Serialize)]
struct LinePlace {
    position: u32,
    waiting_s: u64,
    reason: String,
    ringing: bool,
}

#[derive(Serialize)]
struct Escalated {
    id: i64,
    number: String,
    reason: String,
    created_at: i64,
    attempts: u32,
}

/// `GET /api/dashboard` (supervisor): everything the page draws.
pub async fn snapshot(State(s): State<WebState>) -> Response {
    let now_s = unix_now_s();
    let (line, agents) = {
        let view = s.desk.view.borrow();
        let line: Vec<LinePlace> = view
            .waiting
            .iter()
            .map(|w| LinePlace {
                position: w.place.position,
                waiting_s: w.place.waiting_s,
                reason: w.caller.reason.clone(),
                ringing: w.place.ringing.is_some(),
            })
            .collect();
        let mut agents: BTreeMap<&'static str, u32> = BTreeMap::new();
        for a in &view.agents {
            let shown = match a.presence {
                crate::agents::Presence::Away => "away",
                crate::agents::Presence::Available if !a.reachable => "unreachable",
                crate::agents::Presence::Available => a.state,
            };
            *agents.entry(shown).or_default() += 1;
        }
        (line, agents)
    };
    let callbacks = with_ledger(&s.ledger, |l| {
        let counts = l.count_by_state()?;
        let mut escalated = l.list(Some(PromiseState::Escalated))?;
        let total = escalated.len();
        escalated.sort_by_key(|p| std::cmp::Reverse(p.created_at));
        escalated.truncate(ESCALATED_SHOWN);
        Ok((counts, escalated, total))
    })
    .await;
    let (counts, escalated, escalated_total) = match callbacks {
        Ok(v) => v,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let by_state: BTreeMap<&str, u64> = PromiseState::ALL
        .iter()
        .map(|st| {
            let n = counts.iter().find(|(c, _)| c == st).map_or(0, |(_, n)| *n);
            (st.as_str(), n)
        })
        .collect();
    let escalated: Vec<Escalated> = escalated
        .into_iter()
        .map(|p| Escalated {
            id: p.id,
            number: p.number,
            reason: p.reason,
            created_at: p.created_at,
            attempts: p.attempts,
        })
        .collect();
    let speech = s.metrics.speech_stats().map(|p| {
        serde_json::json!({
            "workers": p.workers,
            "running": p.running,
            "queued": p.queued,
            "queued_finals": p.queued_finals,
            "load": (p.running + p.queued) as f64 / p.workers.max(1) as f64,
            "oldest_queued_ms": p.oldest_queued_ms,
            "behind": p.behind,
        })
    });
    axum::Json(serde_json::json!({
        "at_s": now_s,
        "calls_now": s.metrics.active_calls.get(),
        "calls_answered": s.metrics.calls.get(),
        "line": line,
        "agents": agents,
        "routes": s.metrics.recent_routes(now_s),
        "callbacks": {
            "by_state": by_state,
            "escalated": escalated,
            "escalated_total": escalated_total,
        },
        "speech": speech,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_drawn_by_minute_and_reason_for_the_last_hour_only() {
        let mut r = RecentRoutes::default();
        let t0 = 1_000_000 * 60;
        r.record_route("keyword", t0);
        r.record_route("keyword", t0 + 30);
        r.record_route("dtmf", t0 + 59);
        r.record_route("repetition", t0 + 61);
        let p = r.picture(t0 + 61);
        assert_eq!(p.minutes.len(), MINUTES);
        let last = &p.minutes[MINUTES - 1];
        assert_eq!(last.at_s, t0 + 60);
        assert_eq!(last.by_reason, BTreeMap::from([("repetition".into(), 1)]));
        let before = &p.minutes[MINUTES - 2];
        assert_eq!(
            before.by_reason,
            BTreeMap::from([("dtmf".into(), 1), ("keyword".into(), 2)])
        );
        // An hour on, the first minute has left the picture; the totals stay.
        let p = r.picture(t0 + 3600);
        assert!(
            p.minutes
                .iter()
                .all(|m| !m.by_reason.contains_key("keyword"))
        );
        assert_eq!(p.totals["keyword"], 2);
        // However many minutes had routes, no more than an hour of them is kept.
        for m in 0..(3 * MINUTES as u64) {
            r.record_route("dtmf", t0 + 120 + m * 60);
        }
        assert_eq!(r.minutes.len(), MINUTES);
    }

    #[test]
    fn time_to_route_is_a_distribution_with_its_median_and_p95() {
        let mut r = RecentRoutes::default();
        assert_eq!(r.picture(0).time_to_route_median_s, None);
        for i in 0..100 {
            r.record_time_to_route(f64::from(i) / 100.0);
        }
        r.record_time_to_route(f64::NAN);
        r.record_time_to_route(9.0);
        let p = r.picture(0);
        assert_eq!(p.time_to_route_count, 101);
        assert_eq!(p.time_to_route_median_s, Some(0.5));
        assert_eq!(p.time_to_route_p95_s, Some(0.95));
        let counts: Vec<u32> = p.time_to_route.iter().map(|b| b.count).collect();
        // <=0.1: 0..=10 (11), <=0.25: 11..=25 (15), <=0.5: 25, <=1: 50, <=2, <=5: 0, more: 1.
        assert_eq!(counts, vec![11, 15, 25, 49, 0, 0, 1]);
        for _ in 0..(2 * TIMES_KEPT) {
            r.record_time_to_route(0.2);
        }
        assert_eq!(r.picture(0).time_to_route_count, TIMES_KEPT);
    }
}
