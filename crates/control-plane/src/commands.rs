//! Commands sent to agents on behalf of the console, and their answers.
//!
//! Each live session registers a small bounded queue here; the console puts
//! a [`ControlMessage::Command`] in the queue of the agent's current session
//! and waits on a oneshot for the [`CommandResult`] with the same id. The
//! map of pending commands is bounded ([`MAX_PENDING`]); an entry goes when
//! its answer arrives, when the waiter gives up (its [`PendingCommand`] is
//! dropped), or when the session ends (the waiter then sees
//! [`WaitError::Disconnected`]).

use connectivity_protocol::{Command, CommandResult, ControlMessage};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Commands waiting for an answer, over all agents.
pub const MAX_PENDING: usize = 256;
/// Commands queued for one session before the console is told it is busy.
/// Publish and read requests share the queue, so it holds one agent's
/// requests in flight on top of a few commands.
const SESSION_QUEUE: usize = 16;

/// Why a command could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("agent {0:?} is not connected")]
    NotConnected(String),
    #[error("too many commands are waiting for answers; try again shortly")]
    Busy,
}

/// Why no answer came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("the agent did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("agent disconnected before answering")]
    Disconnected,
}

struct Link {
    session_id: String,
    tx: mpsc::Sender<ControlMessage>,
}

struct Pending {
    agent_id: String,
    session_id: String,
    tx: oneshot::Sender<CommandResult>,
}

#[derive(Default)]
struct Inner {
    /// The live session of each agent.
    links: HashMap<String, Link>,
    pending: HashMap<String, Pending>,
}

/// Sessions' command queues and the commands waiting for answers.
#[derive(Default)]
pub struct CommandHub {
    inner: Mutex<Inner>,
}

impl CommandHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A session was welcomed: commands for `agent_id` go to the returned
    /// queue from now on (a replaced session's queue is dropped).
    pub fn attach(&self, agent_id: &str, session_id: &str) -> mpsc::Receiver<ControlMessage> {
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        self.lock().links.insert(
            agent_id.to_owned(),
            Link {
                session_id: session_id.to_owned(),
                tx,
            },
        );
        rx
    }

    /// A session ended: its commands will never be answered.
    pub fn detach(&self, agent_id: &str, session_id: &str) {
        let mut inner = self.lock();
        if inner
            .links
            .get(agent_id)
            .is_some_and(|l| l.session_id == session_id)
        {
            inner.links.remove(agent_id);
        }
        // Dropping the senders wakes the waiters with `Disconnected`.
        inner
            .pending
            .retain(|_, p| !(p.agent_id == agent_id && p.session_id == session_id));
    }

    /// Whether `agent_id` has a live session.
    pub fn is_connected(&self, agent_id: &str) -> bool {
        self.lock().links.contains_key(agent_id)
    }

    /// Queue `command` for the agent's live session.
    pub fn send(
        self: &Arc<Self>,
        agent_id: &str,
        command: Command,
    ) -> Result<PendingCommand, SendError> {
        let mut inner = self.lock();
        if inner.pending.len() >= MAX_PENDING {
            return Err(SendError::Busy);
        }
        let link = inner
            .links
            .get(agent_id)
            .ok_or_else(|| SendError::NotConnected(agent_id.to_owned()))?;
        let command_id = uuid::Uuid::new_v4().to_string();
        let session_id = link.session_id.clone();
        match link.tx.try_send(ControlMessage::Command {
            command_id: command_id.clone(),
            command,
        }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(SendError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(SendError::NotConnected(agent_id.to_owned()));
            }
        }
        let (tx, rx) = oneshot::channel();
        inner.pending.insert(
            command_id.clone(),
            Pending {
                agent_id: agent_id.to_owned(),
                session_id,
                tx,
            },
        );
        Ok(PendingCommand {
            command_id,
            rx,
            hub: self.clone(),
        })
    }

    /// Queue a message that is not a command (a publish or read request,
    /// whose answers `streams::hub` tracks) for the agent's live session.
    pub fn forward(&self, agent_id: &str, msg: ControlMessage) -> Result<(), SendError> {
        let inner = self.lock();
        let link = inner
            .links
            .get(agent_id)
            .ok_or_else(|| SendError::NotConnected(agent_id.to_owned()))?;
        link.tx.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Busy,
            mpsc::error::TrySendError::Closed(_) => SendError::NotConnected(agent_id.to_owned()),
        })
    }

    /// An answer arrived from `agent_id`'s session `session_id`. Answers
    /// to unknown ids, or from another agent, are ignored (false).
    pub fn complete(&self, agent_id: &str, session_id: &str, result: CommandResult) -> bool {
        let mut inner = self.lock();
        let ours = inner
            .pending
            .get(&result.command_id)
            .is_some_and(|p| p.agent_id == agent_id && p.session_id == session_id);
        if !ours {
            return false;
        }
        match inner.pending.remove(&result.command_id) {
            Some(p) => p.tx.send(result).is_ok(),
            None => false,
        }
    }

    /// Commands waiting for an answer.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }
}

/// A command sent and not yet answered.
pub struct PendingCommand {
    pub command_id: String,
    rx: oneshot::Receiver<CommandResult>,
    hub: Arc<CommandHub>,
}

impl PendingCommand {
    /// Wait at most `timeout` for the answer.
    pub async fn wait(mut self, timeout: Duration) -> Result<CommandResult, WaitError> {
        match tokio::time::timeout(timeout, &mut self.rx).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(WaitError::Disconnected),
            Err(_) => Err(WaitError::Timeout(timeout)),
        }
    }
}

impl Drop for PendingCommand {
    fn drop(&mut self) {
        self.hub.lock().pending.remove(&self.command_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: &str) -> CommandResult {
        CommandResult {
            command_id: id.into(),
            ok: true,
            message: "done".into(),
            data: None,
        }
    }

    #[tokio::test]
    async fn answer_reaches_the_waiter_and_only_from_the_right_session() {
        let hub = Arc::new(CommandHub::default());
        let mut rx = hub.attach("a1", "s1");
        let pending = hub.send("a1", Command::Restart).unwrap();
        let Some(ControlMessage::Command {
            command_id,
            command: Command::Restart,
        }) = rx.recv().await
        else {
            panic!("no command queued")
        };
        assert_eq!(command_id, pending.command_id);
        assert!(
            !hub.complete("a2", "s1", answer(&command_id)),
            "another agent cannot answer"
        );
        assert!(
            !hub.complete("a1", "old", answer(&command_id)),
            "another session cannot answer"
        );
        assert!(hub.complete("a1", "s1", answer(&command_id)));
        assert_eq!(
            pending.wait(Duration::from_secs(1)).await.unwrap().message,
            "done"
        );
        assert_eq!(hub.pending(), 0);
    }

    #[tokio::test]
    async fn session_end_fails_waiters_and_timeouts_clean_up() {
        let hub = Arc::new(CommandHub::default());
        assert_eq!(
            hub.send("a1", Command::Diagnostics).err(),
            Some(SendError::NotConnected("a1".into()))
        );
        let _rx = hub.attach("a1", "s1");
        let pending = hub.send("a1", Command::Diagnostics).unwrap();
        hub.detach("a1", "s1");
        assert_eq!(
            pending.wait(Duration::from_secs(1)).await.unwrap_err(),
            WaitError::Disconnected
        );
        let _rx = hub.attach("a1", "s2");
        let pending = hub.send("a1", Command::Diagnostics).unwrap();
        hub.detach("a1", "s1"); // a late end of the replaced session changes nothing
        assert!(hub.is_connected("a1"));
        assert_eq!(
            pending.wait(Duration::from_millis(10)).await.unwrap_err(),
            WaitError::Timeout(Duration::from_millis(10))
        );
        assert_eq!(hub.pending(), 0, "a timed-out command is forgotten");
    }

    #[tokio::test]
    async fn queue_and_pending_map_are_bounded() {
        let hub = Arc::new(CommandHub::default());
        let _rx = hub.attach("a1", "s1");
        let kept: Vec<_> = (0..SESSION_QUEUE)
            .map(|_| hub.send("a1", Command::Diagnostics).unwrap())
            .collect();
        assert_eq!(
            hub.send("a1", Command::Diagnostics).err(),
            Some(SendError::Busy)
        );
        drop(kept);
        assert_eq!(hub.pending(), 0);
    }
}
