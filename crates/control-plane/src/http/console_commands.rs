//! Remote management from the console: commands sent to agents (test a
//! stream connection, restart, change the log level, fetch diagnostics),
//! draining a job, the audit log, and `/metrics`.
//!
//! Every command is recorded in the [audit log](crate::audit) with the
//! console token's name, the route, the target, the parameters (secrets
//! masked) and the outcome. A command waits for the agent's answer; the
//! answer's absence is an HTTP error: `504` (no answer in time), `502` (the
//! session ended first), `409` (the agent is not connected), `503` (too
//! many commands waiting).

use super::api_error::ApiError;
use super::console::ConsoleUser;
use crate::commands::{SendError, WaitError};
use crate::state::Shared;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use connectivity_protocol::command::ConnectionParams;
use connectivity_protocol::job::{JobPhase, Security};
use connectivity_protocol::secret::MASK;
use connectivity_protocol::{Command, CommandResult};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// Default and largest deadline of a connection test.
const DEFAULT_TEST_TIMEOUT_MS: u64 = 15_000;
const MAX_TEST_TIMEOUT_MS: u64 = 60_000;
/// Added to a command's own deadline for the round trip.
const ANSWER_MARGIN: Duration = Duration::from_secs(5);
/// How long restart, log-level and diagnostics wait for an answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Default and largest time a drain waits for agents to stop the job.
const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 30_000;
const MAX_DRAIN_TIMEOUT_MS: u64 = 300_000;
/// Default and largest `limit` of `GET /api/v1/audit`.
const DEFAULT_AUDIT_LIMIT: usize = 100;
/// Keys whose values are secrets wherever they appear in parameters.
const SECRET_KEYS: &[&str] = &["password", "data", "client_key_pem", "client_secret"];

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/agents/{id}/test-connection", post(test_agent))
        .route("/api/v1/groups/{group}/test-connection", post(test_group))
        .route("/api/v1/agents/{id}/restart", post(restart))
        .route("/api/v1/agents/{id}/log-level", put(log_level))
        .route("/api/v1/agents/{id}/diagnostics", get(diagnostics))
        .route("/api/v1/jobs/{id}/drain", post(drain_job))
        .route("/api/v1/audit", get(audit))
}

/// `GET /metrics`, behind the console token.
pub(crate) fn metrics_router(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    Router::new()
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            shared,
            super::console::require_console_token,
        ))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let text = shared.metrics.render(&shared.registry, &shared.jobs);
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// A copy of `v` with the value of every secret key replaced by the mask.
pub(crate) fn masked(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(masked_entry).collect()),
        Value::Array(a) => Value::Array(a.iter().map(masked).collect()),
        other => other.clone(),
    }
}

/// One key of an object and its value, every leaf masked if the key names
/// a secret (headers often carry credentials, so all of them are).
fn masked_entry((k, v): (&String, &Value)) -> (String, Value) {
    let secret =
        SECRET_KEYS.contains(&k.as_str()) && !v.is_null() || k.eq_ignore_ascii_case("headers");
    (k.clone(), if secret { masked_leaves(v) } else { masked(v) })
}

fn masked_leaves(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), masked_leaves(v)))
                .collect(),
        ),
        _ => Value::String(MASK.into()),
    }
}

/// Record the outcome of a command and turn it into the response.
fn audited(
    shared: &Shared,
    who: &str,
    action: &str,
    target: &str,
    params: Value,
    outcome: Result<Value, ApiError>,
) -> Response {
    match outcome {
        Ok(body) => {
            let ok = body.get("ok").and_then(Value::as_bool).unwrap_or(true);
            let message = body
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("done");
            shared
                .audit
                .record(who, action, target, params, ok, message);
            Json(body).into_response()
        }
        Err(e) => {
            shared.audit.record(
                who,
                action,
                target,
                params,
                false,
                &format!("{}: {}", e.status.as_u16(), e.message),
            );
            e.into_response()
        }
    }
}

/// Send `command` to `agent_id` and wait at most `timeout` for its answer.
async fn run_command(
    shared: &Shared,
    agent_id: &str,
    command: Command,
    timeout: Duration,
) -> Result<CommandResult, ApiError> {
    let name = command.kind();
    let pending = shared
        .commands
        .send(agent_id, command)
        .map_err(|e| match e {
            SendError::NotConnected(_) => not_connected(shared, agent_id),
            SendError::Busy => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        })?;
    let result = pending.wait(timeout).await;
    let label = match &result {
        Ok(r) if r.ok => "ok",
        Ok(_) => "failed",
        Err(WaitError::Timeout(_)) => "timeout",
        Err(WaitError::Disconnected) => "disconnected",
    };
    shared.metrics.command(name, label);
    result.map_err(|e| match e {
        WaitError::Timeout(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("agent {agent_id:?}: {e}"),
        ),
        WaitError::Disconnected => {
            ApiError::new(StatusCode::BAD_GATEWAY, format!("agent {agent_id:?}: {e}"))
        }
    })
}

/// 404 for an unknown agent, 409 (with its state and reason) for one
/// without a session.
fn not_connected(shared: &Shared, agent_id: &str) -> ApiError {
    match shared.registry.get(agent_id) {
        None => ApiError::not_found(format!(
            "agent {agent_id:?} is not known to this control plane"
        )),
        Some(a) => ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "agent {agent_id:?} is not connected (state {}: {})",
                a.status.state.as_str(),
                a.status.reason
            ),
        ),
    }
}

/// An answer that reports a failure to act is a 422 with the agent's words.
fn answered(agent_id: &str, r: CommandResult) -> Result<Value, ApiError> {
    if !r.ok {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("agent {agent_id:?} could not do it: {}", r.message),
        ));
    }
    Ok(json!({"agent_id": agent_id, "ok": true, "message": r.message, "data": r.data}))
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

/// The body of a connection test.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestRequest {
    /// Test the connection of this stored job (its stored secrets are used).
    job: Option<String>,
    bootstrap_servers: Option<String>,
    topic: Option<String>,
    security: Option<Security>,
    timeout_ms: Option<u64>,
}

/// The parameters to test, checked, and what the audit log may show.
fn test_params(shared: &Shared, body: &[u8]) -> Result<(ConnectionParams, u64, Value), ApiError> {
    let raw: Value = serde_json::from_slice(body).map_err(|e| bad_request(format!("body is not JSON ({e}); send {{\"bootstrap_servers\": \"host:port\", \"topic\": \"...\", \"security\": {{...}}}}")))?;
    let shown = masked(&raw);
    let req: TestRequest = serde_json::from_value(raw).map_err(|e| {
        // serde's message may quote a value; only show it when no secret is near.
        let text = e.to_string();
        let safe = if SECRET_KEYS.iter().any(|k| text.contains(k)) || text.contains("security") { "a field has the wrong type".to_owned() } else { text };
        bad_request(format!("invalid connection test: {safe}; fields: job, bootstrap_servers, topic, security, timeout_ms (docs/CONTROL_PLANE.md)"))
    })?;
    let timeout_ms = req.timeout_ms.unwrap_or(DEFAULT_TEST_TIMEOUT_MS);
    if !(1..=MAX_TEST_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(bad_request(format!(
            "timeout_ms = {timeout_ms}: give 1 to {MAX_TEST_TIMEOUT_MS} ms"
        )));
    }
    let params = match (&req.job, &req.bootstrap_servers) {
        (Some(job), None) => {
            if req.security.is_some() {
                return Err(bad_request(
                    "give either job or bootstrap_servers and security, not both",
                ));
            }
            let stored = shared
                .jobs
                .delivery()
                .job(job)
                .ok_or_else(|| ApiError::not_found(format!("no job {job:?}")))?;
            let mut p = ConnectionParams::from(&stored.definition.spec);
            if req.topic.is_some() {
                p.topic = req.topic.clone();
            }
            p
        }
        (None, Some(servers)) => {
            if servers.trim().is_empty() {
                return Err(bad_request(
                    "bootstrap_servers is empty; give host:port[,host:port...]",
                ));
            }
            let security = req.security.unwrap_or_default();
            let mut secrets = Vec::new();
            if let Some(s) = &security.sasl {
                secrets.push(s.password.expose());
            }
            if let Some(t) = &security.truststore {
                secrets.push(t.data.expose());
                secrets.extend(t.password.as_ref().map(|p| p.expose()));
            }
            if secrets.contains(&MASK) {
                return Err(bad_request(format!(
                    "security holds the mask {MASK:?} instead of a secret; give the real value, or {{\"job\": \"<id>\"}} to test a stored job's connection"
                )));
            }
            ConnectionParams {
                bootstrap_servers: servers.clone(),
                topic: req.topic.clone(),
                security,
            }
        }
        _ => {
            return Err(bad_request(
                "give bootstrap_servers (and security), or job to test a stored job's connection",
            ));
        }
    };
    Ok((params, timeout_ms, shown))
}

async fn run_test(
    shared: &Shared,
    agent_id: &str,
    params: ConnectionParams,
    timeout_ms: u64,
) -> Result<Value, ApiError> {
    let command = Command::TestConnection { params, timeout_ms };
    let r = run_command(
        shared,
        agent_id,
        command,
        Duration::from_millis(timeout_ms) + ANSWER_MARGIN,
    )
    .await?;
    // A failed test is a successful command: the report says which step failed.
    Ok(json!({"agent_id": agent_id, "ok": r.ok, "message": r.message, "report": r.data}))
}

async fn test_agent(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<ConsoleUser>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let action = "POST /api/v1/agents/{id}/test-connection";
    let target = format!("agent:{id}");
    match test_params(&shared, &body) {
        Err(e) => audited(
            &shared,
            &who.0,
            action,
            &target,
            masked(&serde_json::from_slice(&body).unwrap_or(Value::Null)),
            Err(e),
        ),
        Ok((params, timeout_ms, shown)) => {
            let outcome = run_test(&shared, &id, params, timeout_ms).await;
            audited(&shared, &who.0, action, &target, shown, outcome)
        }
    }
}

async fn test_group(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<ConsoleUser>,
    Path(group): Path<String>,
    body: Bytes,
) -> Response {
    let action = "POST /api/v1/groups/{group}/test-connection";
    let target = format!("group:{group}");
    let outcome = async {
        if shared.config.group(&group).is_none() {
            return Err(ApiError::not_found(format!("agent group {group:?} does not exist")));
        }
        let (params, timeout_ms, _) = test_params(&shared, &body)?;
        // The most recently heard agent that is connected and not draining.
        let Some(agent_id) = shared.registry.connected_in_group(&group).into_iter().next() else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("no agent of group {group:?} is connected; start one (GET /api/v1/agents?group={group} shows their states)"),
            ));
        };
        run_test(&shared, &agent_id, params, timeout_ms).await
    }
    .await;
    let shown = masked(&serde_json::from_slice(&body).unwrap_or(Value::Null));
    audited(&shared, &who.0, action, &target, shown, outcome)
}

async fn restart(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<ConsoleUser>,
    Path(id): Path<String>,
) -> Response {
    let outcome = async {
        answered(
            &id,
            run_command(&shared, &id, Command::Restart, COMMAND_TIMEOUT).await?,
        )
    }
    .await;
    audited(
        &shared,
        &who.0,
        "POST /api/v1/agents/{id}/restart",
        &format!("agent:{id}"),
        json!({}),
        outcome,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogLevel {
    level: String,
}

const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

async fn log_level(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<ConsoleUser>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let parsed: Result<LogLevel, _> = serde_json::from_slice(&body);
    let params = match &parsed {
        Ok(l) => json!({"level": l.level}),
        Err(_) => Value::Null,
    };
    let outcome = async {
        let level = parsed
            .map_err(|e| {
                bad_request(format!(
                    "invalid body ({e}); send {{\"level\": \"debug\"}} (one of {})",
                    LEVELS.join(", ")
                ))
            })?
            .level;
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(bad_request(format!(
                "level {level:?} is not a log level; use one of {}",
                LEVELS.join(", ")
            )));
        }
        answered(
            &id,
            run_command(
                &shared,
                &id,
                Command::SetLogLevel {
                    level: level.to_ascii_lowercase(),
                },
                COMMAND_TIMEOUT,
            )
            .await?,
        )
    }
    .await;
    audited(
        &shared,
        &who.0,
        "PUT /api/v1/agents/{id}/log-level",
        &format!("agent:{id}"),
        params,
        outcome,
    )
}

async fn diagnostics(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<ConsoleUser>,
    Path(id): Path<String>,
) -> Response {
    let outcome = async {
        let r = run_command(&shared, &id, Command::Diagnostics, COMMAND_TIMEOUT).await?;
        let mut body = answered(&id, r)?;
        if let Some(m) = body.as_object_mut() {
            let data = m.remove("data").unwrap_or(Value::Null);
            // The agent leaves secrets out; mask anything secret-named anyway.
            m.insert("bundle".into(), masked(&data));
        }
        Ok(body)
    }
    .await;
    audited(
        &shared,
        &who.0,
        "GET /api/v1/agents/{id}/diagnostics",
        &format!("agent:{id}"),
        json!({}),
        outcome,
    )
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DrainRequest {
    timeout_ms: Option<u64>,
}

/// Drain a job: every connected agent that runs it finishes its in-flight
/// batches, commits and stops it; the job is left paused. Answers when all
/// of them report it stopped (200), or at the deadline (504).
async fn drain_job(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<ConsoleUser>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let req: Result<DrainRequest, _> = if body.is_empty() {
        Ok(DrainRequest::default())
    } else {
        serde_json::from_slice(&body)
    };
    let params = json!({"timeout_ms": req.as_ref().ok().and_then(|r| r.timeout_ms)});
    let action = "POST /api/v1/jobs/{id}/drain";
    let target = format!("job:{id}");
    let timeout_ms = match drain_timeout(req).and_then(|t| job_exists(&shared, &id).map(|()| t)) {
        Ok(t) => t,
        Err(e) => return audited(&shared, &who.0, action, &target, params, Err(e)),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    let running = running_agents(&shared, &id);
    let agents = send_drains(&shared, &id, &running, deadline).await;
    // Paused after the drain commands, so no session re-assigns it.
    let view = match shared.jobs.set_paused(&id, true).await {
        Ok(v) => v,
        Err(e) => {
            let e = ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the agents drained the job but it could not be paused: {e}"),
            );
            return audited(&shared, &who.0, action, &target, params, Err(e));
        }
    };
    let drained = await_stopped(&shared, &id, &running, deadline).await;
    let message = if drained {
        format!(
            "job {id:?} drained on {} agent(s) and paused",
            running.len()
        )
    } else {
        format!(
            "job {id:?} is paused, but not every agent reported it stopped within {timeout_ms} ms"
        )
    };
    let body = json!({"ok": drained, "message": message, "agents": agents, "states": phases(&shared, &id, &running), "job": shared.jobs.view(&id).unwrap_or(view)});
    shared
        .audit
        .record(&who.0, action, &target, params, drained, &message);
    if drained {
        Json(body).into_response()
    } else {
        let mut body = body;
        body["error"] = Value::String(message);
        (StatusCode::GATEWAY_TIMEOUT, Json(body)).into_response()
    }
}

/// The drain deadline asked for, checked.
fn drain_timeout(req: Result<DrainRequest, serde_json::Error>) -> Result<u64, ApiError> {
    let req = req.map_err(|e| {
        bad_request(format!(
            "invalid body ({e}); send {{}} or {{\"timeout_ms\": 30000}}"
        ))
    })?;
    let timeout_ms = req.timeout_ms.unwrap_or(DEFAULT_DRAIN_TIMEOUT_MS);
    if !(1..=MAX_DRAIN_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(bad_request(format!(
            "timeout_ms = {timeout_ms}: give 1 to {MAX_DRAIN_TIMEOUT_MS} ms"
        )));
    }
    Ok(timeout_ms)
}

fn job_exists(shared: &Shared, id: &str) -> Result<(), ApiError> {
    match shared.jobs.view(id) {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!("no job {id:?}"))),
    }
}

/// The agents that run the job now, by their reports.
fn running_agents(shared: &Shared, id: &str) -> Vec<String> {
    shared
        .registry
        .job_states(id)
        .into_iter()
        .filter(|s| {
            s.agent_state == crate::AgentState::Connected
                && !matches!(s.state.phase, JobPhase::Stopped)
        })
        .map(|s| s.agent_id)
        .collect()
}

/// Send the drain command to each agent in turn, within the deadline; one
/// answer (or failure) per agent.
async fn send_drains(
    shared: &Shared,
    id: &str,
    running: &[String],
    deadline: tokio::time::Instant,
) -> Vec<Value> {
    let mut agents = Vec::new();
    for agent_id in running {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let answer = run_command(
            shared,
            agent_id,
            Command::DrainJob {
                job_id: id.to_owned(),
            },
            left.min(COMMAND_TIMEOUT),
        )
        .await;
        agents.push(match answer {
            Ok(r) => json!({"agent_id": agent_id, "ok": r.ok, "message": r.message}),
            Err(e) => json!({"agent_id": agent_id, "ok": false, "message": e.message}),
        });
    }
    agents
}

/// Wait until each of the agents reports the job stopped (or is gone);
/// whether they all did by the deadline.
async fn await_stopped(
    shared: &Shared,
    id: &str,
    running: &[String],
    deadline: tokio::time::Instant,
) -> bool {
    let stopped = || {
        shared
            .registry
            .job_states(id)
            .iter()
            .filter(|s| running.contains(&s.agent_id))
            .all(|s| {
                s.agent_state != crate::AgentState::Connected
                    || matches!(s.state.phase, JobPhase::Stopped)
            })
    };
    while !stopped() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stopped()
}

/// The job's phase on each of the agents, as they last reported it.
fn phases(shared: &Shared, id: &str, running: &[String]) -> Vec<Value> {
    shared
        .registry
        .job_states(id)
        .into_iter()
        .filter(|s| running.contains(&s.agent_id))
        .map(|s| json!({"agent_id": s.agent_id, "phase": s.state.phase, "partitions": s.state.partitions}))
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            e.status(),
            format!("{}; the only parameter is ?limit=N", e.body_text()),
        )
    })?;
    let limit = q.limit.unwrap_or(DEFAULT_AUDIT_LIMIT);
    if !(1..=crate::audit::MAX_KEPT).contains(&limit) {
        return Err(bad_request(format!(
            "limit = {limit}: give 1 to {}",
            crate::audit::MAX_KEPT
        )));
    }
    Ok(Json(json!({"entries": shared.audit.newest(limit)})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_wherever_they_are() {
        let v = json!({"bootstrap_servers": "h:9092", "security": {"sasl": {"username": "alice", "password": "p"},
                       "truststore": {"format": "pem", "data": "-----BEGIN", "password": null}},
                       "sink": {"headers": {"Authorization": "Bearer x"}}});
        let m = masked(&v);
        assert_eq!(
            m["security"]["sasl"],
            json!({"username": "alice", "password": MASK})
        );
        assert_eq!(
            m["security"]["truststore"],
            json!({"format": "pem", "data": MASK, "password": null})
        );
        assert_eq!(m["sink"]["headers"]["Authorization"], MASK);
        assert_eq!(m["bootstrap_servers"], "h:9092");
    }
}
