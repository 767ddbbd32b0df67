//! How the HTTP server (and anything else in the controller's process) talks to the running
//! controller: the latest [`Status`] through a watch channel (published only when it changed,
//! [`ControllerSide::publish`]), new audit records through a broadcast channel (the
//! dashboard's server-sent events), and commands through a bounded queue with a reply each.

use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::api::{AuditRecord, Command, CommandError, CommandOutcome, Status};

/// How many commands may wait for the controller loop.
pub const COMMAND_QUEUE: usize = 16;
/// How many audit records a slow event subscriber may fall behind before it skips ahead.
pub const EVENT_BUFFER: usize = 256;
/// How long a command waits for its answer.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A command with the channel its answer goes back on.
#[derive(Debug)]
pub struct CommandRequest {
    pub command: Command,
    pub reply: oneshot::Sender<Result<CommandOutcome, CommandError>>,
}

/// The controller loop's end of the channels.
#[derive(Debug)]
pub struct ControllerSide {
    pub status: watch::Sender<Status>,
    pub events: broadcast::Sender<AuditRecord>,
    pub commands: mpsc::Receiver<CommandRequest>,
}

impl ControllerSide {
    /// Publishes `status` when it differs from the last one. The loops publish on every tick
    /// (several a second) and most ticks change nothing: without this check every event
    /// stream sent the same status again at its rate limit and every open dashboard rebuilt
    /// its whole page each time (a click landing during a rebuild was lost).
    pub fn publish(&self, status: Status) {
        self.status.send_if_modified(|current| {
            if *current == status {
                false
            } else {
                *current = status;
                true
            }
        });
    }
}

/// The server's end: cheap to clone.
#[derive(Debug, Clone)]
pub struct ControllerHandle {
    status: watch::Receiver<Status>,
    events: broadcast::Sender<AuditRecord>,
    commands: mpsc::Sender<CommandRequest>,
}

impl ControllerHandle {
    /// Both ends, starting from `initial`.
    pub fn new(initial: Status) -> (Self, ControllerSide) {
        let (status_tx, status_rx) = watch::channel(initial);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        (
            Self {
                status: status_rx,
                events: events.clone(),
                commands: commands_tx,
            },
            ControllerSide {
                status: status_tx,
                events,
                commands: commands_rx,
            },
        )
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Changes of the status, for long polls.
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Every audit record appended from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<AuditRecord> {
        self.events.subscribe()
    }

    /// Hands `command` to the controller loop and waits (bounded) for its answer.
    pub async fn submit(&self, command: Command) -> Result<CommandOutcome, CommandError> {
        let timeout = CommandError::Timeout {
            timeout_ms: u64::try_from(COMMAND_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
        };
        let (reply, answer) = oneshot::channel();
        let request = CommandRequest { command, reply };
        let ask = async {
            self.commands
                .send(request)
                .await
                .map_err(|_| timeout.clone())?;
            answer.await.map_err(|_| timeout.clone())?
        };
        tokio::time::timeout(COMMAND_TIMEOUT, ask)
            .await
            .unwrap_or_else(|_| Err(timeout.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ControllerInfo;

    fn status(active: bool) -> Status {
        Status::empty(ControllerInfo {
            replica: "controller-a".into(),
            active,
            active_replica: None,
        })
    }

    /// Subscribers hear of a status only when it changed, however often the loop publishes.
    #[test]
    fn an_unchanged_status_wakes_no_subscriber() {
        let (handle, side) = ControllerHandle::new(status(false));
        let mut watch = handle.watch_status();
        watch.mark_unchanged();
        side.publish(status(false));
        assert!(!watch.has_changed().unwrap(), "the same status again");
        side.publish(status(true));
        assert!(watch.has_changed().unwrap(), "a new status");
        watch.mark_unchanged();
        side.publish(status(true));
        assert!(!watch.has_changed().unwrap(), "the same status again");
    }
}
