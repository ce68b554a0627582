//! `GET /api/v1/events`: live updates for the web console, as
//! Server-Sent Events.
//!
//! Every [`INTERVAL`] each open stream gets one `snapshot` event: groups
//! with their agents by state, every agent (as in `GET /api/v1/agents`),
//! refused logins, and one line per job (state, rates, lag, partitions,
//! sink). A snapshot is built at most once per interval whatever the number
//! of open pages (they share it), and only while a page is open. Streams
//! are bounded ([`MAX_STREAMS`]); each one ends at logout, at the session's
//! expiry and at shutdown. The browser's `EventSource` reconnects by itself.
//! The page keeps the history its charts need, bounded, on its side.

use super::api_error::ApiError;
use crate::jobs::JobView;
use crate::state::Shared;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use connectivity_common::timefmt;
use connectivity_protocol::job::JobPhase;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// How often a stream gets a snapshot.
pub(crate) const INTERVAL: Duration = Duration::from_secs(2);
/// Event streams open at once, over all pages.
pub(crate) const MAX_STREAMS: usize = 64;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    let hub = Arc::new(EventHub::default());
    Router::new().route(
        "/api/v1/events",
        get(move |State(shared): State<Arc<Shared>>, req: Request| {
            events(shared, hub.clone(), req)
        }),
    )
}

/// Open streams, and the last snapshot they share.
#[derive(Default)]
pub(crate) struct EventHub {
    open: AtomicUsize,
    last: Mutex<Option<(Instant, Arc<str>)>>,
}

impl EventHub {
    /// The current snapshot as JSON: the last one if it is younger than
    /// half an interval, else a new one.
    pub(crate) fn snapshot(&self, shared: &Shared) -> Arc<str> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, text)) = last.as_ref()
            && at.elapsed() < INTERVAL / 2
        {
            return text.clone();
        }
        let text: Arc<str> = snapshot(shared).to_string().into();
        *last = Some((Instant::now(), text.clone()));
        text
    }
}

/// Holds one of the [`MAX_STREAMS`] places while its stream is open.
struct StreamSlot {
    shared: Arc<Shared>,
    hub: Arc<EventHub>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.hub.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn events(shared: Arc<Shared>, hub: Arc<EventHub>, req: Request) -> Response {
    let open = hub.open.fetch_add(1, Ordering::Relaxed);
    let slot = StreamSlot { shared, hub };
    if open >= MAX_STREAMS {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{MAX_STREAMS} event streams are open, the limit; close a console page or try again later"
            ),
        );
        e.retry_after = Some(10);
        return e.into_response();
    }
    let session = super::console_web::session_id(req.headers());
    let stream =
        futures_util::stream::unfold((slot, session, true), |(slot, session, first)| async move {
            let shared = slot.shared.clone();
            if !first {
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(INTERVAL) => {}
                }
            }
            if !super::console_web::session_alive(&shared, session.as_deref()) {
                return None;
            }
            let data = slot.hub.snapshot(&shared);
            let event = Event::default().event("snapshot").data(&*data);
            Some((Ok::<_, Infallible>(event), (slot, session, false)))
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Everything the console's lists show, at one instant.
pub(crate) fn snapshot(shared: &Shared) -> Value {
    let groups: Vec<Value> = shared
        .config
        .groups
        .iter()
        .map(|g| json!({"id": g.id, "agents": shared.registry.counts(&g.id)}))
        .collect();
    let jobs: Vec<Value> = shared.jobs.views().iter().map(job_line).collect();
    json!({
        "at": timefmt::rfc3339(SystemTime::now()),
        "interval_ms": INTERVAL.as_millis() as u64,
        "groups": groups,
        "agents": shared.registry.list(None),
        "auth_failures": shared.registry.auth_failures(),
        "jobs": jobs,
    })
}

/// One job in short: what the jobs list, the overview and the charts need.
/// The definition's secrets never appear: only its group, topic and the
/// kind of sink.
pub(crate) fn job_line(v: &JobView) -> Value {
    let d = &v.definition;
    let connected: Vec<_> = v
        .agents
        .iter()
        .filter(|a| a.agent_state == crate::AgentState::Connected)
        .collect();
    let error = connected
        .iter()
        .find_map(|a| a.state.error.as_ref())
        .map(|e| json!({"class": e.class, "message": e.message}));
    let sink_state = v.delivery.as_ref().map(|s| s.sink_state);
    let state = if d.paused {
        "paused".to_owned()
    } else if error.is_some() {
        "failing".to_owned()
    } else if sink_state == Some(crate::delivery::SinkState::Failed) {
        "sink refusing".to_owned()
    } else if sink_state == Some(crate::delivery::SinkState::Retrying) {
        "sink retrying".to_owned()
    } else if connected.iter().any(|a| a.state.phase == JobPhase::Running) {
        "running".to_owned()
    } else if let Some(a) = connected.first() {
        serde_json::to_value(a.state.phase)
            .ok()
            .and_then(|p| p.as_str().map(str::to_owned))
            .unwrap_or_default()
    } else {
        "no agent".to_owned()
    };
    let known: Vec<i64> = v.partitions.iter().filter_map(|p| p.lag).collect();
    let lag = (!known.is_empty()).then(|| known.iter().sum::<i64>());
    let sink = match &d.sink {
        crate::delivery::SinkConfig::Jsonl(_) => "jsonl",
        crate::delivery::SinkConfig::Webhook(_) => "webhook",
        crate::delivery::SinkConfig::Kafka(_) => "kafka",
        crate::delivery::SinkConfig::Discard => "discard",
    };
    let agents: Vec<Value> = v
        .agents
        .iter()
        .map(|a| {
            json!({"agent_id": a.agent_id, "agent_name": a.agent_name, "agent_state": a.agent_state,
                   "phase": a.state.phase, "error": a.state.error, "records_per_sec": a.records_per_sec})
        })
        .collect();
    let delivery = v.delivery.as_ref().map(|s| {
        json!({"sink_state": s.sink_state, "records_delivered": s.records_delivered,
               "batches_acked": s.batches_acked, "sink_errors": s.sink_errors,
               "last_sink_error": s.last_sink_error, "last_delivered_at_ms": s.last_delivered_at_ms,
               "queued_batches": s.queued_batches})
    });
    json!({
        "id": v.id, "group": d.group, "topic": d.spec.topic, "paused": d.paused,
        "defined_in": v.defined_in, "sink": sink, "value_format": d.value_format,
        "state": state, "error": error, "records_per_sec": v.records_per_sec, "lag": lag,
        "delivery": delivery, "partitions": v.partitions, "agents": agents,
    })
}
