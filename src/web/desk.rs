//! The agents' desk over HTTP: the line (each caller's reason, words, language, time
//! waiting), the agents and their presence, as JSON and as a server-sent event stream, and
//! setting presence (available / away). The queue task owns the state; this only reads its
//! published view and sends it changes.

use super::api_error as error;
use super::auth::Session;
use crate::agents::{AgentInput, DeskView, Presence};
use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// What the console sees of agents and the line, where presence changes go, and the calls
/// offered to agents answering in the browser.
#[derive(Clone)]
pub struct Desk {
    pub view: watch::Receiver<DeskView>,
    /// To the queue task, bounded (`AGENTS_CAPACITY` in `server/queue.rs`): a change that
    /// finds it full is answered at once that the queue is busy.
    pub agents: mpsc::Sender<AgentInput>,
    pub offers: super::offers::ConsoleOffers,
}

impl axum::extract::FromRef<super::WebState> for Desk {
    fn from_ref(s: &super::WebState) -> Desk {
        s.desk.clone()
    }
}

/// How long a presence change waits to be seen in the desk view before it is answered.
const PRESENCE_SETTLE: Duration = Duration::from_secs(2);

/// `GET /api/desk`.
pub async fn view(State(desk): State<Desk>) -> Response {
    Json(desk.view.borrow().clone()).into_response()
}

/// Keep-alives on the event stream; also how soon a console that vanished without closing
/// its connection is noticed (the write fails) and stops being offered calls.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
struct EventsQuery {
    /// `browser`: this console answers calls (the agent is offered calls here while the
    /// stream is open).
    answer: Option<String>,
}

/// While a console that answers calls is connected: the agent is reachable in the browser.
struct ConsoleOpen {
    agents: mpsc::Sender<AgentInput>,
    agent: String,
}

impl Drop for ConsoleOpen {
    /// The queue must hear of it, or it would go on offering the agent calls in a browser
    /// nobody has open: a full queue is waited for in a task of its own (one per console
    /// that closed, so as many as there were consoles open).
    fn drop(&mut self) {
        let closed = AgentInput::ConsoleClosed {
            agent: std::mem::take(&mut self.agent),
        };
        match self.agents.try_send(closed) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(closed)) => {
                let agents = self.agents.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        runtime.spawn(async move {
                            let _ = agents.send(closed).await;
                        });
                    }
                    Err(_) => tracing::error!(
                        "a console closed while the queue was full, outside the runtime: the agent stays offered calls in the browser"
                    ),
                }
            }
        }
    }
}

/// The answer to a change the queue task cannot take now, or `None` once it is queued.
fn queue_refused(sent: Result<(), mpsc::error::TrySendError<AgentInput>>) -> Option<Response> {
    match sent {
        Ok(()) => None,
        Err(mpsc::error::TrySendError::Full(_)) => Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the queue is busy: nothing was changed; try again in a moment",
        )),
        Err(mpsc::error::TrySendError::Closed(_)) => Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the queue is not running",
        )),
    }
}

/// `GET /api/desk/events[?answer=browser]`: the desk view now, then again at each change (at
/// most about once a second: waiting times are whole seconds), with keep-alives between.
/// With `answer=browser` the logged-in agent takes calls in this console while it is open.
pub async fn events(State(desk): State<Desk>, req: Request) -> Response {
    let answers = axum::extract::Query::<EventsQuery>::try_from_uri(req.uri())
        .is_ok_and(|q| q.answer.as_deref() == Some("browser"));
    let console = match req.extensions().get::<Session>() {
        Some(s) if answers => {
            let sent = desk.agents.try_send(AgentInput::ConsoleOpened {
                agent: s.user.clone(),
            });
            if let Some(refused) = queue_refused(sent) {
                return refused;
            }
            tracing::info!(agent = %s.user, "console answers calls");
            Some(ConsoleOpen {
                agents: desk.agents.clone(),
                agent: s.user.clone(),
            })
        }
        _ => None,
    };
    let stream = futures_util::stream::unfold(
        (desk.view, true, console),
        |(mut rx, first, console)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let json = serde_json::to_string(&*rx.borrow_and_update()).unwrap_or_default();
            Some((
                Ok::<_, std::convert::Infallible>(Event::default().event("desk").data(json)),
                (rx, false, console),
            ))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

#[derive(Deserialize)]
struct PresenceBody {
    presence: String,
}

async fn set_presence(desk: &Desk, agent: String, body: &[u8]) -> Response {
    let Ok(PresenceBody { presence }) = serde_json::from_slice::<PresenceBody>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected JSON {\"presence\": \"available\" | \"away\"}",
        );
    };
    let Some(presence) = Presence::parse(&presence) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unknown presence `{presence}` (available or away)"),
        );
    };
    let input = AgentInput::SetPresence {
        agent: agent.clone(),
        presence,
    };
    if let Some(refused) = queue_refused(desk.agents.try_send(input)) {
        return refused;
    }
    // Answer once the queue has applied it, so that what the caller of this sees next
    // (and the next call offered) already follows it.
    let mut rx = desk.view.clone();
    let seen = tokio::time::timeout(
        PRESENCE_SETTLE,
        rx.wait_for(|v| {
            v.agents
                .iter()
                .any(|a| a.agent == agent && a.presence == presence)
        }),
    )
    .await;
    match seen {
        Ok(Ok(v)) => {
            let me = v.agents.iter().find(|a| a.agent == agent).cloned();
            Json(me).into_response()
        }
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "the queue did not answer"),
    }
}

const MAX_BODY: usize = 1024;

/// `POST /api/me/presence` `{"presence": "available" | "away"}`: the logged-in agent's own.
pub async fn set_own_presence(State(desk): State<Desk>, req: Request) -> Response {
    let Some(user) = req.extensions().get::<Session>().map(|s| s.user.clone()) else {
        return error(StatusCode::UNAUTHORIZED, "log in first");
    };
    let Ok(body) = axum::body::to_bytes(req.into_body(), MAX_BODY).await else {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    };
    set_presence(&desk, user, &body).await
}

/// `POST /api/agents/{name}/presence`: a supervisor sets someone's.
pub async fn set_agent_presence(
    State(desk): State<Desk>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    if !super::auth::valid_name(&name) {
        return error(StatusCode::BAD_REQUEST, "not a user name");
    }
    let Ok(body) = axum::body::to_bytes(req.into_body(), MAX_BODY).await else {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    };
    set_presence(&desk, name, &body).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::DeskView;

    /// A desk whose queue holds `capacity` changes, already full of someone else's.
    fn full_desk(capacity: usize) -> (Desk, mpsc::Receiver<AgentInput>) {
        let (agents, rx) = mpsc::channel(capacity);
        for _ in 0..capacity {
            let other = AgentInput::ConsoleOpened {
                agent: "bob".into(),
            };
            assert!(agents.try_send(other).is_ok());
        }
        let (_published, view) = watch::channel(DeskView::default());
        let desk = Desk {
            view,
            agents,
            offers: Default::default(),
        };
        (desk, rx)
    }

    #[tokio::test]
    async fn a_presence_change_the_full_queue_cannot_take_is_refused_at_once_and_changes_nothing() {
        let (desk, mut rx) = full_desk(2);
        let asked = std::time::Instant::now();
        let r = set_presence(&desk, "ann".into(), br#"{"presence": "away"}"#).await;
        assert!(
            asked.elapsed() < PRESENCE_SETTLE,
            "answered after {:?}: it waited for the queue",
            asked.elapsed()
        );
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(r.into_body(), 4096).await;
        let body = String::from_utf8_lossy(body.as_deref().unwrap_or_default()).into_owned();
        assert!(
            body.contains("busy") && body.contains("try again"),
            "{body}"
        );
        for _ in 0..2 {
            assert!(matches!(
                rx.try_recv(),
                Ok(AgentInput::ConsoleOpened { .. })
            ));
        }
        assert!(rx.try_recv().is_err(), "ann's change was queued after all");
    }

    #[tokio::test]
    async fn a_console_that_closes_while_the_queue_is_full_still_reaches_the_queue() {
        let (desk, mut rx) = full_desk(1);
        drop(ConsoleOpen {
            agents: desk.agents.clone(),
            agent: "ann".into(),
        });
        assert!(matches!(
            rx.recv().await,
            Some(AgentInput::ConsoleOpened { .. })
        ));
        let next = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
        assert_eq!(
            next.ok().flatten(),
            Some(AgentInput::ConsoleClosed {
                agent: "ann".into()
            }),
            "the queue never heard that ann's console closed: it would go on offering her calls there"
        );
    }
}
