//! One control-plane session: hello, then heartbeats both ways, job messages
//! in, batches and job states out, until the peer goes away or we stop.
//!
//! Reading and writing run as two loops joined in one task, so a control
//! plane that is slow to read our batches never stops us from reading its
//! acks (two peers each blocked on a full send buffer would deadlock).

use super::commands::CommandContext;
use super::connect::Channel;
use super::jobs::{JobHost, Outbound};
use connectivity_protocol::{
    AgentMessage, Command, CommandResult, ControlMessage, Hello, RejectReason,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long the control plane has to answer the hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Commands running at once on one agent.
const MAX_CONCURRENT_COMMANDS: usize = 4;

/// Outbound messages queued for the socket; a full queue slows the jobs down.
const OUTBOUND_QUEUE: usize = 64;

/// How a session ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// We were asked to stop; jobs drained, goodbye sent.
    Shutdown,
    /// The control plane said goodbye or closed the socket.
    ClosedByPeer(String),
}

/// How a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("control plane refused the agent ({reason:?}): {message}")]
    Rejected {
        reason: RejectReason,
        message: String,
    },
    #[error("control plane did not answer the hello within {0:?}")]
    HelloTimeout(Duration),
    #[error("control plane silent for {0:?}: connection declared dead")]
    PeerSilent(Duration),
    #[error("connection lost: {0}")]
    Io(String),
    #[error("control plane broke the protocol: {0}")]
    Protocol(String),
}

impl SessionError {
    /// Errors that retrying cannot fix.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SessionError::Rejected { .. })
    }
}

/// Session parameters from the welcome.
#[derive(Debug, Clone)]
pub struct Established {
    pub session_id: String,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
}

/// Send the hello and wait for the answer.
pub async fn handshake(ws: &mut Channel, hello: Hello) -> Result<Established, SessionError> {
    send(ws, &AgentMessage::Hello(hello)).await?;
    let deadline = Instant::now() + HELLO_TIMEOUT;
    loop {
        if let Some(text) = hello_answer(ws, deadline).await? {
            return welcome(&text);
        }
    }
}

/// The next frame while waiting for the welcome: its text, `None` for a
/// frame to skip (ping, pong).
async fn hello_answer(
    ws: &mut Channel,
    deadline: Instant,
) -> Result<Option<Utf8Bytes>, SessionError> {
    let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
        Err(_) => return Err(SessionError::HelloTimeout(HELLO_TIMEOUT)),
        Ok(None) => return Err(SessionError::Io("closed before answering the hello".into())),
        Ok(Some(Err(e))) => return Err(SessionError::Io(e.to_string())),
        Ok(Some(Ok(m))) => m,
    };
    match msg {
        Message::Text(t) => Ok(Some(t)),
        Message::Close(frame) => {
            let why = frame.map(|f| f.reason.to_string()).unwrap_or_default();
            Err(SessionError::Io(format!(
                "closed before answering the hello: {why}"
            )))
        }
        Message::Binary(_) => Err(SessionError::Protocol("binary frame before welcome".into())),
        _ => Ok(None),
    }
}

/// The session's parameters from the answer to the hello, or why there are none.
fn welcome(text: &str) -> Result<Established, SessionError> {
    match connectivity_protocol::decode::<ControlMessage>(text) {
        Ok(ControlMessage::Welcome {
            session_id,
            heartbeat_interval_ms,
            heartbeat_timeout_ms,
            ..
        }) => Ok(Established {
            session_id,
            heartbeat_interval: Duration::from_millis(heartbeat_interval_ms.clamp(100, 300_000)),
            heartbeat_timeout: Duration::from_millis(heartbeat_timeout_ms.clamp(300, 900_000)),
        }),
        Ok(ControlMessage::Rejected { reason, message }) => {
            Err(SessionError::Rejected { reason, message })
        }
        Ok(other) => Err(SessionError::Protocol(format!(
            "expected welcome, got {other:?}"
        ))),
        Err(e) => Err(SessionError::Protocol(e.to_string())),
    }
}

async fn send(ws: &mut Channel, msg: &AgentMessage) -> Result<(), SessionError> {
    ws.send(Message::text(connectivity_protocol::encode(msg)))
        .await
        .map_err(|e| SessionError::Io(e.to_string()))
}

/// Run an established session until it ends: the writer, the reader, the
/// commands and the drain run joined in this task, and the first to end
/// ends the session.
pub async fn run(
    ws: Channel,
    est: &Established,
    jobs: &dyn JobHost,
    ctx: &CommandContext,
    shutdown: &CancellationToken,
    drain_timeout: Duration,
) -> Result<SessionEnd, SessionError> {
    let (out_tx, mut out_rx) = mpsc::channel::<Outbound>(OUTBOUND_QUEUE);
    // Protocol errors and command results go through the writer.
    let (reply_tx, mut reply_rx) = mpsc::channel::<AgentMessage>(16);
    // Commands run beside the reader, a few at a time; more are refused.
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<(String, Command)>(MAX_CONCURRENT_COMMANDS);
    // Publish and read requests likewise; a full queue answers "busy".
    let (stream_tx, mut stream_rx) = mpsc::channel::<ControlMessage>(crate::streams::MAX_IN_FLIGHT);
    jobs.session_restored(out_tx);

    let (mut sink, mut stream) = ws.split();
    let draining = CancellationToken::new();
    let finished = CancellationToken::new();

    let writer = write_loop(
        &mut sink,
        &mut out_rx,
        &mut reply_rx,
        est.heartbeat_interval,
        &finished,
        &draining,
    );
    let reader = read_loop(
        &mut stream,
        est.heartbeat_timeout,
        &finished,
        Queues {
            reply: &reply_tx,
            commands: &cmd_tx,
            streams: &stream_tx,
        },
        jobs,
    );
    let commands = async {
        tokio::join!(
            command_loop(&mut cmd_rx, &reply_tx, ctx, jobs),
            stream_loop(&mut stream_rx, &reply_tx, &ctx.streams)
        )
    };
    let drain = drain(shutdown, drain_timeout, &reply_tx, &draining, jobs);

    tokio::pin!(writer, reader, drain, commands);
    let result = tokio::select! {
        _ = &mut commands => unreachable_end(),
        r = &mut reader => { finished.cancel(); r }
        w = &mut writer => {
            finished.cancel();
            match w { Err(e) => Err(e), Ok(()) => Ok(SessionEnd::Shutdown) }
        }
        _ = &mut drain => {
            finished.cancel();
            // Let the writer send the goodbye and close frame.
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
            Ok(SessionEnd::Shutdown)
        }
    };
    if result.is_err() || matches!(result, Ok(SessionEnd::ClosedByPeer(_))) {
        debug!("session over, jobs stop fetching");
    }
    result
}

/// The socket's writer: replies, batches, job states and heartbeats until
/// the session is finished, then what the jobs queued while draining and,
/// when draining, the goodbye.
async fn write_loop(
    sink: &mut SplitSink<Channel, Message>,
    out_rx: &mut mpsc::Receiver<Outbound>,
    reply_rx: &mut mpsc::Receiver<AgentMessage>,
    heartbeat_interval: Duration,
    finished: &CancellationToken,
    draining: &CancellationToken,
) -> Result<(), SessionError> {
    let mut tick = tokio::time::interval(heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    loop {
        let msg = tokio::select! {
            biased;
            _ = finished.cancelled() => break,
            Some(m) = reply_rx.recv() => Message::text(connectivity_protocol::encode(&m)),
            Some(out) = out_rx.recv() => outbound_message(out),
            _ = tick.tick() => {
                seq += 1;
                super::mark_progress();
                Message::text(connectivity_protocol::encode(&AgentMessage::Heartbeat { seq }))
            }
        };
        sink.send(msg)
            .await
            .map_err(|e| SessionError::Io(e.to_string()))?;
    }
    finish_writing(sink, out_rx, draining.is_cancelled()).await;
    Ok(())
}

/// The frame of a batch or job state, counted in the metrics.
fn outbound_message(out: Outbound) -> Message {
    match out {
        Outbound::Batch {
            frame,
            job_id,
            batch_seq,
        } => {
            crate::metrics::batch_sent(&job_id, batch_seq);
            Message::Binary(frame)
        }
        Outbound::State(state) => {
            crate::metrics::observe_job(&state);
            Message::text(connectivity_protocol::encode(&AgentMessage::JobState(
                state,
            )))
        }
    }
}

/// Flush what the jobs queued while draining, then say goodbye. Best
/// effort: the session is over either way.
async fn finish_writing(
    sink: &mut SplitSink<Channel, Message>,
    out_rx: &mut mpsc::Receiver<Outbound>,
    draining: bool,
) {
    while let Ok(out) = out_rx.try_recv() {
        let msg = match out {
            Outbound::Batch { frame, .. } => Message::Binary(frame),
            Outbound::State(state) => Message::text(connectivity_protocol::encode(
                &AgentMessage::JobState(state),
            )),
        };
        let _ = sink.send(msg).await;
    }
    if draining {
        let bye = AgentMessage::Goodbye {
            reason: "agent shutting down".into(),
        };
        let _ = sink
            .send(Message::text(connectivity_protocol::encode(&bye)))
            .await;
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "agent shutting down".into(),
            })))
            .await;
    }
    let _ = sink.flush().await;
}

/// The socket's reader: control messages until the peer goes away, falls
/// silent, says goodbye or breaks the protocol ten times in a row.
async fn read_loop(
    stream: &mut SplitStream<Channel>,
    heartbeat_timeout: Duration,
    finished: &CancellationToken,
    queues: Queues<'_>,
    jobs: &dyn JobHost,
) -> Result<SessionEnd, SessionError> {
    let reply_tx = queues.reply;
    let mut protocol_errors = 0u32;
    loop {
        let next = tokio::select! {
            _ = finished.cancelled() => return Ok(SessionEnd::Shutdown),
            n = tokio::time::timeout(heartbeat_timeout, stream.next()) => n,
        };
        let msg = match next {
            Err(_) => return Err(SessionError::PeerSilent(heartbeat_timeout)),
            Ok(None) => return Ok(SessionEnd::ClosedByPeer("socket closed".into())),
            Ok(Some(Err(e))) => return Err(SessionError::Io(e.to_string())),
            Ok(Some(Ok(m))) => m,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(frame) => {
                let why = frame
                    .map(|f| f.reason.to_string())
                    .unwrap_or_else(|| "no reason given".into());
                return Ok(SessionEnd::ClosedByPeer(why));
            }
            Message::Binary(b) => {
                let _ = reply_tx.try_send(AgentMessage::ProtocolError {
                    message: format!("unexpected binary frame of {} bytes", b.len()),
                });
                continue;
            }
            _ => continue,
        };
        match connectivity_protocol::decode_control(&text) {
            Ok(m) => {
                protocol_errors = 0;
                if let Some(end) = on_control_message(m, jobs, &queues) {
                    return Ok(end);
                }
            }
            Err(e) => {
                protocol_errors += 1;
                on_malformed(&e, protocol_errors, reply_tx)?;
            }
        }
    }
}

/// Where the reader hands what it does not do itself.
#[derive(Clone, Copy)]
struct Queues<'a> {
    /// Replies for the writer (protocol errors, "busy" answers).
    reply: &'a mpsc::Sender<AgentMessage>,
    commands: &'a mpsc::Sender<(String, Command)>,
    /// Publish and read requests for the stream loop.
    streams: &'a mpsc::Sender<ControlMessage>,
}

/// A well-formed control message: a command, publish or read is queued
/// for its loop (or refused when too many run), anything else is
/// dispatched. `Some` ends the session.
fn on_control_message(
    msg: ControlMessage,
    jobs: &dyn JobHost,
    queues: &Queues<'_>,
) -> Option<SessionEnd> {
    let (reply_tx, cmd_tx) = (queues.reply, queues.commands);
    if matches!(msg, ControlMessage::Publish(_) | ControlMessage::Read(_)) {
        if let Err(e) = queues.streams.try_send(msg) {
            let msg = e.into_inner();
            if let Some(busy) = crate::streams::busy(&msg) {
                let _ = reply_tx.try_send(busy);
            }
        }
        return None;
    }
    let ControlMessage::Command {
        command_id,
        command,
    } = msg
    else {
        return dispatch(msg, jobs);
    };
    info!(command = %command_id, kind = command.kind(), "command received");
    if cmd_tx.try_send((command_id.clone(), command)).is_err() {
        let busy = CommandResult {
            command_id,
            ok: false,
            message: format!(
                "agent busy: {MAX_CONCURRENT_COMMANDS} commands already running; try again"
            ),
            data: None,
        };
        let _ = reply_tx.try_send(AgentMessage::CommandResult(busy));
    }
    None
}

/// A malformed message: tell the peer; `Err` once `count` in a row reach ten.
fn on_malformed(
    e: &impl std::fmt::Display,
    count: u32,
    reply_tx: &mpsc::Sender<AgentMessage>,
) -> Result<(), SessionError> {
    warn!(error = %e, "malformed message from control plane");
    let _ = reply_tx.try_send(AgentMessage::ProtocolError {
        message: e.to_string(),
    });
    if count >= 10 {
        return Err(SessionError::Protocol(format!(
            "10 malformed messages in a row, last: {e}"
        )));
    }
    Ok(())
}

/// Run the queued commands, a few at a time, and send their results.
/// Returns when the queue closes or the writer is gone.
async fn command_loop(
    cmd_rx: &mut mpsc::Receiver<(String, Command)>,
    reply_tx: &mpsc::Sender<AgentMessage>,
    ctx: &CommandContext,
    jobs: &dyn JobHost,
) {
    let mut running = futures_util::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            Some((id, command)) = cmd_rx.recv(), if running.len() < MAX_CONCURRENT_COMMANDS => {
                running.push(super::commands::execute(ctx, jobs, id, command));
            }
            Some(result) = running.next(), if !running.is_empty() => {
                let result: CommandResult = result;
                info!(command = %result.command_id, ok = result.ok, message = %result.message, "command done");
                if reply_tx.send(AgentMessage::CommandResult(result)).await.is_err() {
                    return;
                }
            }
            else => return,
        }
    }
}

/// Run the queued publish and read requests, up to
/// [`MAX_IN_FLIGHT`](crate::streams::MAX_IN_FLIGHT) at a time, and send
/// their answers. Returns when the queue closes or the writer is gone.
async fn stream_loop(
    rx: &mut mpsc::Receiver<ControlMessage>,
    reply_tx: &mpsc::Sender<AgentMessage>,
    streams: &crate::streams::Streams,
) {
    let mut running = futures_util::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            Some(msg) = rx.recv(), if running.len() < crate::streams::MAX_IN_FLIGHT => {
                running.push(streams.handle(msg));
            }
            Some(answer) = running.next(), if !running.is_empty() => {
                let Some(answer) = answer else { continue };
                crate::streams::crash_after_publish(&answer);
                if reply_tx.send(answer).await.is_err() {
                    return;
                }
            }
            else => return,
        }
    }
}

/// On shutdown: tell the control plane, drain the jobs within the
/// deadline, and leave the writer a moment for the final job states.
async fn drain(
    shutdown: &CancellationToken,
    drain_timeout: Duration,
    reply_tx: &mpsc::Sender<AgentMessage>,
    draining: &CancellationToken,
    jobs: &dyn JobHost,
) {
    shutdown.cancelled().await;
    info!(deadline = ?drain_timeout, "draining: finishing in-flight batches");
    crate::service::notify_stopping();
    let _ = reply_tx.try_send(AgentMessage::Draining {
        deadline_ms: drain_timeout.as_millis() as u64,
    });
    draining.cancel();
    jobs.drain(drain_timeout).await;
    // Give the writer the chance to flush final job states.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The command loop only returns when its channels close, which happens
/// after the reader ended; treat it as a normal end.
fn unreachable_end() -> Result<SessionEnd, SessionError> {
    Ok(SessionEnd::ClosedByPeer("command loop ended".into()))
}

/// Act on one control message; `Some` ends the session.
fn dispatch(msg: ControlMessage, jobs: &dyn JobHost) -> Option<SessionEnd> {
    match msg {
        ControlMessage::Heartbeat { .. } => None,
        ControlMessage::AssignJob(spec) => {
            info!(job = %spec.id, topic = %spec.topic, "job assigned");
            jobs.assign(spec);
            None
        }
        ControlMessage::RevokeJob { job_id } => {
            info!(job = %job_id, "job revoked");
            jobs.revoke(&job_id);
            None
        }
        ControlMessage::Ack { job_id, batch_seq } => {
            crate::metrics::batch_acked(&job_id, batch_seq);
            jobs.ack(&job_id, batch_seq);
            None
        }
        ControlMessage::ProtocolError { message } => {
            warn!(%message, "control plane reports a protocol error");
            None
        }
        // Handled by the reader before dispatch.
        ControlMessage::Command { .. } | ControlMessage::Publish(_) | ControlMessage::Read(_) => {
            None
        }
        ControlMessage::Goodbye { reason } => Some(SessionEnd::ClosedByPeer(reason)),
        ControlMessage::Welcome { .. } | ControlMessage::Rejected { .. } => {
            warn!("unexpected welcome/rejected in an established session; ignored");
            None
        }
    }
}
