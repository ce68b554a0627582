//! One agent session over an upgraded WebSocket.
//!
//! The first message must be a hello, within [`HELLO_TIMEOUT`]; it is answered
//! with `welcome` or `rejected` (version, group, permission). Then: a
//! heartbeat every interval; any frame from the agent proves it alive, and
//! silence past the timeout ends the session. A malformed, unknown or
//! oversized text frame gets a `protocol_error` reply and the session goes
//! on, up to [`MAX_PROTOCOL_ERRORS_IN_A_ROW`]. Binary frames are batches,
//! handed to the [`BatchSink`](super::sink::BatchSink) and acked when it
//! takes them. The session ends on goodbye, on replacement by a newer session
//! of the same agent, or on shutdown (with a goodbye of our own).
//!
//! Batches are handed to the sink in the order they arrived and acked as
//! each is delivered; the session reads on meanwhile, up to
//! [`MAX_IN_FLIGHT_BATCHES`] or [`MAX_IN_FLIGHT_BYTES`] not yet acked, so
//! that the sink can take the next batches while it writes one (a JSONL job
//! writes and syncs the batches queued behind a write in one go). It reads
//! on too while the sink makes room for a batch (a full job queue): batches
//! read meanwhile wait their turn within the same bounds, and the agent's
//! other messages are handled at once, since a kafka sink may be waiting
//! for this very agent's publish answer.
//!
//! Jobs: right after the welcome, and whenever [`JobService`](super::jobs::JobService)
//! signals a change, the session compares the jobs its group should run with
//! what it has assigned and sends `assign_job` / `revoke_job` for the
//! difference. Job states the agent reports are kept in the registry; a
//! state for a job the agent should not run (deleted or paused while it was
//! away, or of another group) is answered with `revoke_job`, because the
//! agent keeps its jobs across reconnects.

use super::auth::Principal;
use super::registry::NewSession;
use super::sink::{BatchOrigin, SinkError, Submitted};
use super::state::Shared;
use super::streams::hub::Answer;
use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use connectivity_protocol::job::{JobPhase, JobState};
use connectivity_protocol::{
    AgentMessage, Batch, ControlMessage, Hello, JobSpec, PROTOCOL_VERSION, RejectReason,
};
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, OptionFuture};
use futures_util::stream::FuturesUnordered;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long a new connection has to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Consecutive bad frames after which the session is closed.
pub const MAX_PROTOCOL_ERRORS_IN_A_ROW: u32 = 10;
/// How long to wait for the agent's close frame after ours.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest text taken from a peer into a reply or a log line.
const MAX_ECHO: usize = 512;
/// Longest id and name fields accepted in a hello (they are kept in memory).
const MAX_ID_LEN: usize = 128;
const MAX_FIELD_LEN: usize = 256;
/// Jobs remembered as revoked per session (a peer could name many).
const MAX_REVOKED: usize = 1024;
/// Most batches a session has handed to the sink and not yet acked; at this
/// many, or at [`MAX_IN_FLIGHT_BYTES`], it reads no frame until one is done.
/// The agent's default window (128 batches, 64 MiB) fits.
pub const MAX_IN_FLIGHT_BATCHES: usize = 128;
/// Most bytes of keys and values in those batches: bounds what a session
/// holds whatever its agent sends.
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

/// Run a session to its end. Never fails: every ending is logged and recorded.
pub(crate) async fn run(
    ws: WebSocket,
    shared: Arc<Shared>,
    principal: Principal,
    remote: SocketAddr,
) {
    let span = tracing::info_span!("session", %remote, agent_id = tracing::field::Empty, session_id = tracing::field::Empty);
    async move {
        let mut conn = Conn {
            ws,
            send_timeout: shared.config.heartbeat_timeout,
        };
        let Some(hello) = await_hello(&mut conn, &shared).await else {
            return;
        };
        let Some(mut live) = admit(conn, hello, shared, principal, remote).await else {
            return;
        };
        let reason = live.run().await;
        live.shared
            .commands
            .detach(&live.origin.agent_id, &live.origin.session_id);
        live.shared
            .streams
            .hub
            .detach(&live.origin.agent_id, &live.origin.session_id);
        live.shared
            .registry
            .disconnect(&live.origin.agent_id, &live.origin.session_id, &reason);
        tracing::info!(%reason, "agent session ended");
    }
    .instrument(span)
    .await
}

/// The socket, with sends bounded in time so a stuck peer cannot stall us.
struct Conn {
    ws: WebSocket,
    send_timeout: Duration,
}

impl Conn {
    async fn send(&mut self, msg: &ControlMessage) -> Result<(), String> {
        let frame = Message::Text(connectivity_protocol::encode(msg).into());
        match tokio::time::timeout(self.send_timeout, self.ws.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(format!("cannot send to the agent: {err}")),
            Err(_) => Err(format!(
                "the agent did not take a frame within {} ms",
                self.send_timeout.as_millis()
            )),
        }
    }

    async fn protocol_error(&mut self, message: &str) -> Result<(), String> {
        self.send(&ControlMessage::ProtocolError {
            message: truncate(message),
        })
        .await
    }

    /// Send a close frame and wait (briefly) for the agent's, so the close
    /// handshake completes and the agent sees the reason.
    async fn close(&mut self, code: u16, reason: &str) {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: truncate_to(reason, 120).into(),
        }));
        let _ =
            tokio::time::timeout(self.send_timeout.min(CLOSE_TIMEOUT), self.ws.send(frame)).await;
        self.drain().await;
    }

    /// Send a close frame without waiting for an answer, for a peer that is
    /// already presumed dead.
    async fn abandon(&mut self, code: u16, reason: &str) {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: truncate_to(reason, 120).into(),
        }));
        let _ =
            tokio::time::timeout(CLOSE_TIMEOUT.min(self.send_timeout), self.ws.send(frame)).await;
    }

    /// Read until the stream ends (this also flushes a queued close reply).
    async fn drain(&mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(_)) = self.ws.recv().await {}
        })
        .await;
    }
}

/// Wait for the hello. On anything else the agent is told why and closed.
async fn await_hello(conn: &mut Conn, shared: &Shared) -> Option<Hello> {
    let deadline = Instant::now() + HELLO_TIMEOUT;
    loop {
        let frame = tokio::select! {
            _ = shared.shutdown.cancelled() => {
                conn.close(close_code::AWAY, "control plane shutting down").await;
                return None;
            }
            f = tokio::time::timeout_at(deadline, conn.ws.recv()) => f,
        };
        let problem = match frame {
            Err(_) => format!(
                "no hello within {} s of connecting; send a hello first",
                HELLO_TIMEOUT.as_secs()
            ),
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => {
                tracing::debug!("connection closed before hello");
                return None;
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(Message::Binary(_)))) => {
                "the first message must be a hello text frame, not a binary frame".to_owned()
            }
            Ok(Some(Ok(Message::Text(text)))) => match hello(&text) {
                Ok(hello) => return Some(hello),
                Err(problem) => problem,
            },
        };
        tracing::info!(%problem, "no valid hello; closing");
        let _ = conn.protocol_error(&problem).await;
        conn.close(close_code::PROTOCOL, "expected hello").await;
        return None;
    }
}

/// The hello in a first text frame, or what is wrong with the frame.
fn hello(text: &str) -> Result<Hello, String> {
    match connectivity_protocol::decode::<AgentMessage>(text) {
        Ok(AgentMessage::Hello(hello)) => Ok(hello),
        Ok(other) => Err(format!(
            "the first message must be hello, not {}",
            kind(&other)
        )),
        Err(err) => Err(err.to_string()),
    }
}

/// Check the hello; welcome and register the agent, or reject it.
async fn admit(
    mut conn: Conn,
    hello: Hello,
    shared: Arc<Shared>,
    principal: Principal,
    remote: SocketAddr,
) -> Option<Live> {
    if let Err(problem) = check_fields(&hello) {
        tracing::info!(%problem, "hello refused");
        let _ = conn.protocol_error(&problem).await;
        conn.close(close_code::PROTOCOL, "invalid hello").await;
        return None;
    }
    let span = tracing::Span::current();
    span.record("agent_id", hello.agent_id.as_str());
    if let Some((reason, message)) = refusal(&hello, &shared, &principal) {
        let session = new_session(
            &hello,
            &principal,
            remote,
            String::new(),
            CancellationToken::new(),
        );
        reject(&mut conn, &shared, session, reason, message).await;
        return None;
    }

    let session_id = uuid::Uuid::new_v4().to_string();
    span.record("session_id", session_id.as_str());
    let cancel = shared.shutdown.child_token();
    // Subscribed before the welcome: a change from now on is seen.
    let job_changes = shared.jobs.subscribe();
    let origin = BatchOrigin {
        agent_id: hello.agent_id.clone(),
        group: hello.group.clone(),
        session_id: session_id.clone(),
    };
    let session = new_session(
        &hello,
        &principal,
        remote,
        session_id.clone(),
        cancel.clone(),
    );
    if !register(&mut conn, &shared, session).await {
        return None;
    }
    // Attached before the welcome: the console may send a command as soon
    // as the registry shows the agent connected.
    let commands = shared.commands.attach(&origin.agent_id, &origin.session_id);
    shared.streams.hub.attach(super::streams::hub::AgentFacts {
        agent_id: &origin.agent_id,
        session_id: &origin.session_id,
        group: &origin.group,
        name: &hello.agent_name,
        version: &hello.agent_version,
        capabilities: &hello.capabilities,
    });
    if let Err(err) = conn.send(&welcome(&shared, session_id)).await {
        shared.commands.detach(&origin.agent_id, &origin.session_id);
        shared
            .streams
            .hub
            .detach(&origin.agent_id, &origin.session_id);
        shared
            .registry
            .disconnect(&origin.agent_id, &origin.session_id, &err);
        tracing::info!(%err, "agent left before welcome");
        return None;
    }
    shared.metrics.session_opened();
    tracing::info!(name = %hello.agent_name, group = %hello.group, version = %hello.agent_version, %principal, "agent connected");
    Some(Live::new(
        conn,
        shared,
        origin,
        cancel,
        job_changes,
        commands,
    ))
}

/// Why the hello is refused (version, group, permission), if it is.
fn refusal(
    hello: &Hello,
    shared: &Shared,
    principal: &Principal,
) -> Option<(RejectReason, String)> {
    if hello.protocol_version != PROTOCOL_VERSION {
        Some((
            RejectReason::VersionRefused,
            format!(
                "protocol version {} is not supported; this control plane speaks {PROTOCOL_VERSION}",
                hello.protocol_version
            ),
        ))
    } else if shared.config.group(&hello.group).is_none() {
        Some((
            RejectReason::UnknownGroup,
            format!(
                "agent group {:?} does not exist; create it in the control plane config",
                hello.group
            ),
        ))
    } else if !principal.groups(&shared.config).contains(&hello.group) {
        Some((
            RejectReason::Forbidden,
            format!(
                "{principal} may not join agent group {:?}; add the group to its groups in the control plane config",
                hello.group
            ),
        ))
    } else {
        None
    }
}

/// Record the refusal (the console shows it) and tell the agent why.
async fn reject(
    conn: &mut Conn,
    shared: &Shared,
    session: NewSession,
    reason: RejectReason,
    message: String,
) {
    tracing::info!(?reason, %message, group = %session.group, "agent rejected");
    shared.registry.reject(session, reason, &message);
    let _ = conn
        .send(&ControlMessage::Rejected { reason, message })
        .await;
    conn.close(close_code::POLICY, "rejected").await;
}

/// Register the session, closing an older one of the same agent. `false`
/// (and the agent told to come back later) when the registry is full.
async fn register(conn: &mut Conn, shared: &Shared, session: NewSession) -> bool {
    match shared.registry.connect(session) {
        Ok(Some(older)) => {
            tracing::info!("agent reconnected; closing its older session");
            older.cancel();
            true
        }
        Ok(None) => true,
        Err(full) => {
            tracing::warn!(%full, "agent refused");
            let _ = conn
                .send(&ControlMessage::Goodbye {
                    reason: full.to_string(),
                })
                .await;
            conn.close(close_code::AGAIN, "agent limit reached").await;
            false
        }
    }
}

fn welcome(shared: &Shared, session_id: String) -> ControlMessage {
    let config = &shared.config;
    ControlMessage::Welcome {
        session_id,
        heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
        heartbeat_timeout_ms: config.heartbeat_timeout.as_millis() as u64,
        protocol_version: PROTOCOL_VERSION,
    }
}

/// The registry's view of a hello.
fn new_session(
    hello: &Hello,
    principal: &Principal,
    remote: SocketAddr,
    session_id: String,
    cancel: CancellationToken,
) -> NewSession {
    NewSession {
        agent_id: hello.agent_id.clone(),
        agent_name: hello.agent_name.clone(),
        group: hello.group.clone(),
        version: hello.agent_version.clone(),
        protocol_version: hello.protocol_version,
        host: hello.host.clone(),
        proxy: hello.proxy.clone(),
        principal: principal.to_string(),
        remote_addr: remote,
        session_id,
        cancel,
    }
}

/// Bound what a peer can make us keep: the registry holds these strings.
fn check_fields(h: &Hello) -> Result<(), String> {
    let fields = [
        ("agent_id", h.agent_id.as_str(), MAX_ID_LEN),
        ("agent_name", &h.agent_name, MAX_FIELD_LEN),
        ("group", &h.group, MAX_ID_LEN),
        ("agent_version", &h.agent_version, MAX_ID_LEN),
        ("host.hostname", &h.host.hostname, MAX_FIELD_LEN),
        ("host.os", &h.host.os, MAX_ID_LEN),
        ("host.arch", &h.host.arch, MAX_ID_LEN),
        ("proxy", h.proxy.as_deref().unwrap_or(""), MAX_FIELD_LEN),
    ];
    for (name, value, max) in fields {
        if value.len() > max {
            return Err(format!(
                "hello.{name} is {} bytes long; the limit is {max}",
                value.len()
            ));
        }
    }
    if h.agent_id.trim().is_empty() {
        return Err("hello.agent_id must not be empty".into());
    }
    Ok(())
}

/// What the loop does after a frame.
enum Flow {
    Continue,
    End(String),
}

/// An established session.
struct Live {
    conn: Conn,
    shared: Arc<Shared>,
    origin: BatchOrigin,
    /// Cancelled on shutdown (a child of the root token) or on replacement.
    cancel: CancellationToken,
    ticker: Interval,
    heartbeat_seq: u64,
    last_seen: Instant,
    errors_in_a_row: u32,
    /// Bumped by the job service on every job change.
    job_changes: tokio::sync::watch::Receiver<u64>,
    /// The specs this session assigned, by job id.
    assigned: BTreeMap<String, JobSpec>,
    /// Jobs this session told the agent to revoke (and has not assigned since).
    revoked: HashSet<String>,
    /// Console commands for this agent ([`CommandHub`](super::commands::CommandHub)).
    commands: mpsc::Receiver<ControlMessage>,
    /// Batches read, waiting to be handed to the sink, in arrival order.
    waiting: VecDeque<Batch>,
    /// The hand-over of the batch before them, while the sink makes room.
    handing: Option<BoxFuture<'static, Handed>>,
    /// Batches handed to the sink, not yet acked.
    in_flight: FuturesUnordered<BoxFuture<'static, Delivered>>,
    /// Bytes of keys and values in all three.
    held_bytes: usize,
}

/// What a batch's hand-over to the sink and its delivery are known by.
struct Receipt {
    job_id: String,
    batch_seq: u64,
    records: usize,
    bytes: usize,
    received: Instant,
}

/// A batch the sink has taken, with its outcome to await.
struct Handed {
    receipt: Receipt,
    outcome: Submitted,
}

/// A batch the sink is done with, one way or the other.
struct Delivered {
    receipt: Receipt,
    result: Result<(), SinkError>,
}

/// Bytes of keys and values in a batch: what holding it costs.
fn batch_bytes(batch: &Batch) -> usize {
    batch
        .records
        .iter()
        .map(|r| r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len()))
        .sum()
}

impl Live {
    /// A welcomed session, its first heartbeat one interval away.
    fn new(
        conn: Conn,
        shared: Arc<Shared>,
        origin: BatchOrigin,
        cancel: CancellationToken,
        job_changes: tokio::sync::watch::Receiver<u64>,
        commands: mpsc::Receiver<ControlMessage>,
    ) -> Live {
        let interval = shared.config.heartbeat_interval;
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        // After a stall (a slow sink), resume the rhythm instead of a burst.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Live {
            conn,
            origin,
            cancel,
            ticker,
            heartbeat_seq: 0,
            last_seen: Instant::now(),
            errors_in_a_row: 0,
            job_changes,
            assigned: BTreeMap::new(),
            revoked: HashSet::new(),
            commands,
            waiting: VecDeque::new(),
            handing: None,
            in_flight: FuturesUnordered::new(),
            held_bytes: 0,
            shared,
        }
    }

    /// Batches read and not yet acked: waiting, being handed over, in flight.
    fn held(&self) -> usize {
        self.waiting.len() + usize::from(self.handing.is_some()) + self.in_flight.len()
    }

    /// Whether the session may read another frame: fewer batches and bytes
    /// held than the bounds.
    fn reading(&self) -> bool {
        self.held() < MAX_IN_FLIGHT_BATCHES && self.held_bytes < MAX_IN_FLIGHT_BYTES
    }

    /// The session loop; returns why it ended.
    async fn run(&mut self) -> String {
        let timeout = self.shared.config.heartbeat_timeout;
        self.job_changes.mark_unchanged();
        if let Flow::End(reason) = self.reconcile().await {
            return reason;
        }
        loop {
            let flow = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    let reason = if self.shared.shutdown.is_cancelled() {
                        "control plane shutting down"
                    } else {
                        "replaced by a newer session of the same agent"
                    };
                    let _ = self.conn.send(&ControlMessage::Goodbye { reason: reason.to_owned() }).await;
                    self.conn.close(close_code::AWAY, reason).await;
                    Flow::End(reason.to_owned())
                }
                // Not while the bounds stop the reading: the agent's frames
                // wait unread, the sink's slowness is not its fault.
                _ = tokio::time::sleep_until(self.last_seen + timeout), if self.reading() => {
                    tracing::warn!(timeout_ms = timeout.as_millis() as u64, "agent missed its heartbeats; declaring it dead");
                    self.conn.abandon(close_code::AWAY, "heartbeat timeout").await;
                    Flow::End(format!("heartbeat timeout: nothing received for {} ms", timeout.as_millis()))
                }
                _ = self.ticker.tick() => self.heartbeat().await,
                _ = self.job_changes.changed() => self.reconcile().await,
                Some(command) = self.commands.recv() => match self.conn.send(&command).await {
                    Ok(()) => Flow::Continue,
                    Err(err) => Flow::End(err),
                },
                Some(handed) = OptionFuture::from(self.handing.as_mut()) => self.handed(handed),
                Some(done) = self.in_flight.next() => self.acknowledge(done).await,
                frame = self.conn.ws.recv(), if self.reading() => match frame {
                    None => Flow::End("connection closed without a close frame".into()),
                    Some(Err(err)) => Flow::End(format!("connection lost: {err}")),
                    Some(Ok(msg)) => {
                        self.last_seen = Instant::now();
                        self.shared.registry.touch(&self.origin.agent_id, &self.origin.session_id);
                        self.on_frame(msg).await
                    }
                },
            };
            if let Flow::End(reason) = flow {
                return reason;
            }
        }
    }

    async fn heartbeat(&mut self) -> Flow {
        self.heartbeat_seq += 1;
        match self
            .conn
            .send(&ControlMessage::Heartbeat {
                seq: self.heartbeat_seq,
            })
            .await
        {
            Ok(()) => Flow::Continue,
            Err(err) => Flow::End(err),
        }
    }

    async fn on_frame(&mut self, msg: Message) -> Flow {
        match msg {
            Message::Text(text) => match connectivity_protocol::decode::<AgentMessage>(&text) {
                Ok(m) => {
                    self.errors_in_a_row = 0;
                    self.on_message(m).await
                }
                Err(err) => self.protocol_error(err.to_string()).await,
            },
            Message::Binary(bytes) => match connectivity_protocol::batch::decode(bytes) {
                Ok(batch) => {
                    self.errors_in_a_row = 0;
                    self.submit(batch).await
                }
                Err(err) => self.protocol_error(err.to_string()).await,
            },
            Message::Ping(_) | Message::Pong(_) => Flow::Continue,
            Message::Close(frame) => {
                self.conn.drain().await;
                let why = frame
                    .map(|f| format!(" ({}: {})", f.code, truncate(f.reason.as_str())))
                    .unwrap_or_default();
                Flow::End(format!("agent closed the connection{why}"))
            }
        }
    }

    async fn on_message(&mut self, msg: AgentMessage) -> Flow {
        match msg {
            AgentMessage::Hello(_) => {
                self.protocol_error(
                    "hello was already received; this session is established".into(),
                )
                .await
            }
            AgentMessage::Heartbeat { seq } => {
                tracing::trace!(seq, "heartbeat");
                Flow::Continue
            }
            AgentMessage::JobState(state) => self.on_job_state(state).await,
            AgentMessage::Draining { deadline_ms } => {
                tracing::info!(deadline_ms, "agent is draining");
                self.shared.registry.set_draining(
                    &self.origin.agent_id,
                    &self.origin.session_id,
                    deadline_ms,
                );
                Flow::Continue
            }
            AgentMessage::CommandResult(result) => {
                let (id, ok) = (truncate(&result.command_id), result.ok);
                if self.shared.commands.complete(
                    &self.origin.agent_id,
                    &self.origin.session_id,
                    result,
                ) {
                    tracing::info!(command = %id, ok, "command answered");
                } else {
                    tracing::info!(command = %id, ok, "answer to a command nobody waits for (timed out or unknown); ignored");
                }
                Flow::Continue
            }
            AgentMessage::PublishResult(r) => self.on_stream_answer(Answer::Publish(r)),
            AgentMessage::ReadResult(r) => self.on_stream_answer(Answer::Read(r)),
            AgentMessage::ProtocolError { message } => {
                tracing::warn!(message = %truncate(&message), "agent reported a protocol error");
                Flow::Continue
            }
            AgentMessage::Goodbye { reason } => {
                self.shared
                    .registry
                    .note_goodbye(&self.origin.agent_id, &self.origin.session_id);
                self.conn.close(close_code::NORMAL, "goodbye").await;
                Flow::End(format!("agent said goodbye: {}", truncate(&reason)))
            }
        }
    }

    /// A publish or read answer goes to whoever waits for it.
    fn on_stream_answer(&mut self, answer: Answer) -> Flow {
        let (agent, session) = (&self.origin.agent_id, &self.origin.session_id);
        if !self.shared.streams.hub.complete(agent, session, answer) {
            tracing::info!("answer to a publish or read nobody waits for (timed out); ignored");
        }
        Flow::Continue
    }

    /// Send `assign_job` for every job of the group that is new or changed
    /// since this session last assigned it, `revoke_job` for every job it
    /// assigned that the group no longer runs (deleted, paused, moved).
    async fn reconcile(&mut self) -> Flow {
        let desired = self.shared.jobs.desired_for(&self.origin.group);
        let mut messages = Vec::new();
        for (id, spec) in &desired {
            if self.assigned.get(id) != Some(spec) {
                tracing::info!(job = %id, topic = %spec.topic, "assigning job");
                messages.push(ControlMessage::AssignJob(spec.clone()));
                self.revoked.remove(id);
            }
        }
        let gone: Vec<String> = self
            .assigned
            .keys()
            .filter(|id| !desired.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            tracing::info!(job = %id, "revoking job");
            self.note_revoked(&id);
            messages.push(ControlMessage::RevokeJob { job_id: id });
        }
        self.assigned = desired;
        for m in messages {
            if let Err(err) = self.conn.send(&m).await {
                return Flow::End(err);
            }
        }
        Flow::Continue
    }

    fn note_revoked(&mut self, id: &str) {
        if self.revoked.len() >= MAX_REVOKED {
            self.revoked.clear();
        }
        self.revoked.insert(id.to_owned());
    }

    /// Keep a job state for the console; revoke a job the agent should not run.
    async fn on_job_state(&mut self, state: JobState) -> Flow {
        let id = state.job_id.clone();
        let in_group = self
            .shared
            .jobs
            .group_of(&id)
            .is_some_and(|g| g == self.origin.group);
        tracing::debug!(job = %truncate(&id), phase = ?state.phase, error = ?state.error.as_ref().map(|e| e.class), "job state");
        let still_running = !matches!(state.phase, JobPhase::Stopped | JobPhase::Draining);
        if in_group {
            self.shared.registry.record_job_state(
                &self.origin.agent_id,
                &self.origin.session_id,
                state,
            );
        }
        if still_running
            && !self.assigned.contains_key(&id)
            && !self.revoked.contains(&id)
            && id.len() <= MAX_ID_LEN
        {
            // It ran before this session (the agent keeps jobs across
            // reconnects) and was deleted or paused meanwhile.
            tracing::info!(job = %id, "agent runs a job it should not; revoking it");
            self.note_revoked(&id);
            if let Err(err) = self
                .conn
                .send(&ControlMessage::RevokeJob { job_id: id })
                .await
            {
                return Flow::End(err);
            }
        }
        Flow::Continue
    }

    /// Answer a bad frame; close after too many in a row.
    async fn protocol_error(&mut self, problem: String) -> Flow {
        self.errors_in_a_row += 1;
        tracing::info!(%problem, in_a_row = self.errors_in_a_row, "protocol error from agent");
        if let Err(err) = self.conn.protocol_error(&problem).await {
            return Flow::End(err);
        }
        if self.errors_in_a_row >= MAX_PROTOCOL_ERRORS_IN_A_ROW {
            let reason = format!("{MAX_PROTOCOL_ERRORS_IN_A_ROW} protocol errors in a row");
            self.conn.close(close_code::POLICY, &reason).await;
            return Flow::End(reason);
        }
        Flow::Continue
    }

    /// Queue a batch for the sink, behind those before it.
    async fn submit(&mut self, batch: Batch) -> Flow {
        let (job_id, batch_seq) = (&batch.job_id, batch.batch_seq);
        if let Some(group) = self
            .shared
            .jobs
            .group_of(job_id)
            .filter(|g| *g != self.origin.group)
        {
            let problem = format!(
                "batch {batch_seq} of job {job_id:?} was not acknowledged: the job belongs to agent group {group:?}, not to this agent's group {:?}",
                self.origin.group
            );
            return self.protocol_error(problem).await;
        }
        self.held_bytes += batch_bytes(&batch);
        self.waiting.push_back(batch);
        self.hand_over_next();
        Flow::Continue
    }

    /// Start handing the first waiting batch to the sink, unless one is
    /// being handed over: the sink takes an agent's batches in order.
    fn hand_over_next(&mut self) {
        if self.handing.is_some() {
            return;
        }
        let Some(batch) = self.waiting.pop_front() else {
            return;
        };
        let receipt = Receipt {
            job_id: batch.job_id.clone(),
            batch_seq: batch.batch_seq,
            records: batch.records.len(),
            bytes: batch_bytes(&batch),
            received: Instant::now(),
        };
        let (sink, origin) = (self.shared.sink.clone(), self.origin.clone());
        self.handing = Some(Box::pin(async move {
            let outcome = sink.submit(&origin, batch).await;
            Handed { receipt, outcome }
        }));
    }

    /// The sink has taken a batch: await its outcome with the others, and
    /// hand over the next.
    fn handed(&mut self, handed: Handed) -> Flow {
        self.handing = None;
        let Handed { receipt, outcome } = handed;
        self.in_flight.push(Box::pin(async move {
            Delivered {
                receipt,
                result: outcome.await,
            }
        }));
        self.hand_over_next();
        Flow::Continue
    }

    /// The sink is done with a batch: ack it, or tell the agent why not.
    async fn acknowledge(&mut self, done: Delivered) -> Flow {
        // `done` has left `in_flight` already.
        let was_full =
            self.held() + 1 >= MAX_IN_FLIGHT_BATCHES || self.held_bytes >= MAX_IN_FLIGHT_BYTES;
        if was_full {
            // Frames were not read while the bounds held; not the agent's fault.
            self.last_seen = Instant::now();
        }
        let Delivered {
            receipt:
                Receipt {
                    job_id,
                    batch_seq,
                    records,
                    bytes,
                    received,
                },
            result,
        } = done;
        self.held_bytes -= bytes;
        self.shared
            .metrics
            .batch(&job_id, records, received.elapsed(), result.is_ok());
        let reply = match result {
            Ok(()) => {
                tracing::debug!(%job_id, batch_seq, records, "batch delivered");
                ControlMessage::Ack { job_id, batch_seq }
            }
            Err(err) => {
                tracing::warn!(%job_id, batch_seq, %err, "batch not delivered");
                ControlMessage::ProtocolError {
                    message: truncate(&format!(
                        "batch {batch_seq} of job {job_id:?} was not acknowledged: {err}"
                    )),
                }
            }
        };
        match self.conn.send(&reply).await {
            Ok(()) => Flow::Continue,
            Err(err) => Flow::End(err),
        }
    }
}

/// The `type` tag of an agent message, for messages.
fn kind(m: &AgentMessage) -> &'static str {
    match m {
        AgentMessage::Hello(_) => "hello",
        AgentMessage::Heartbeat { .. } => "heartbeat",
        AgentMessage::JobState(_) => "job_state",
        AgentMessage::CommandResult(_) => "command_result",
        AgentMessage::PublishResult(_) => "publish_result",
        AgentMessage::ReadResult(_) => "read_result",
        AgentMessage::Draining { .. } => "draining",
        AgentMessage::ProtocolError { .. } => "protocol_error",
        AgentMessage::Goodbye { .. } => "goodbye",
    }
}

fn truncate(s: &str) -> String {
    truncate_to(s, MAX_ECHO)
}

fn truncate_to(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let cut = (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}...", &s[..cut])
}
