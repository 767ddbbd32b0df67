//! Supervision of one replica's process: what the controller intends for it (idle, supervised,
//! stopped by a plan), what runs, the restart schedule with its backoff, and the crash-loop
//! limit. The node-level cold-standby decision is in [`super::Engine`] (it needs every
//! replica of a node); this module answers the per-replica questions it asks.
//!
//! Rules:
//! - A *supervised* replica (a warm one, or a cold one once the controller or a plan started
//!   it) whose process exited, or that is down with no process known, is restarted. The first
//!   restart within `crash_loop_window_s` is immediate; each further one waits
//!   `restart_backoff_initial_ms`, doubling, at most `restart_backoff_max_ms`. Deterministic
//!   (no jitter): one controller restarts one process, nobody to de-synchronise from.
//! - A replica needing its `crash_loop_restarts + 1`-th restart within the window is *failed*
//!   instead and never restarted by the engine again (a plan starting it clears that).
//! - A process that is known to run but does not answer (frozen) is never restarted: the
//!   replica lease does the failover, and killing is the plan's fence step's job.
//! - A *stopped* replica (fenced by a plan) is never restarted.
//! - A replica whose last start could not run a process at all (its host unavailable, as the
//!   actuator tells) keeps being restarted with the backoff, but its node does not wait for
//!   it: restarting in place is worth waiting for only where a process can run.

use std::collections::VecDeque;
use std::time::Duration;

use meridian_core::Timestamp;

use super::probe::{Health, Verdict};
use crate::model::ProbeOutcome;
use crate::settings::ControllerSettings;

/// What the controller intends for a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// A cold replica nobody started: left alone.
    Idle,
    /// Should run: restarted when its process exits.
    Supervised,
    /// Fenced by a plan: must not run, never restarted.
    Stopped,
}

/// The engine's record of one replica.
#[derive(Debug, Clone)]
pub struct ReplicaState {
    pub intent: Intent,
    pub health: Health,
    pub last_probe: Option<ProbeOutcome>,
    /// The process known to run (started, or adopted at takeover).
    pub pid: Option<u32>,
    /// When the running process was started (or adopted).
    pub started_at: Option<Timestamp>,
    /// A start was asked for and its `Started`/`Exited` answer has not come yet.
    pub start_in_flight: bool,
    pub last_exit: Option<Option<i32>>,
    /// When the next restart is due.
    pub restart_due: Option<Timestamp>,
    /// The restarts within the crash-loop window (bounded by `crash_loop_restarts`).
    pub recent_restarts: VecDeque<Timestamp>,
    /// Every restart since this controller became active, for the status.
    pub restarts_total: u32,
    /// Crash looping: why it is no longer restarted.
    pub failed: Option<String>,
    /// Its last start could not run a process at all (why): the host looks unavailable.
    /// Restarts go on with their backoff, but the node does not wait for this replica before
    /// it starts a cold one. Cleared when a process runs again.
    pub unstartable: Option<String>,
}

/// What scheduling a restart decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheduled {
    Due(Timestamp),
    CrashLoop(String),
}

impl ReplicaState {
    pub fn new(intent: Intent, now: Timestamp) -> Self {
        Self {
            intent,
            health: Health::new(now),
            last_probe: None,
            pid: None,
            started_at: None,
            start_in_flight: false,
            last_exit: None,
            restart_due: None,
            recent_restarts: VecDeque::new(),
            restarts_total: 0,
            failed: None,
            unstartable: None,
        }
    }

    /// The engine should restart it: supervised, not failed, down, no process known, nothing
    /// scheduled or in flight.
    pub fn needs_restart(&self) -> bool {
        self.intent == Intent::Supervised
            && self.failed.is_none()
            && self.health.verdict == Verdict::Down
            && self.pid.is_none()
            && !self.start_in_flight
            && self.restart_due.is_none()
    }

    /// Schedules the next restart (or declares the crash loop) at `now`.
    pub fn schedule_restart(&mut self, now: Timestamp, settings: &ControllerSettings) -> Scheduled {
        self.forget_old_restarts(now, settings);
        let in_window = self.recent_restarts.len();
        if in_window >= usize::try_from(settings.crash_loop_restarts).unwrap_or(usize::MAX) {
            let why = format!(
                "crash loop: {in_window} restarts within {} s",
                settings.crash_loop_window_s
            );
            self.failed = Some(why.clone());
            return Scheduled::CrashLoop(why);
        }
        let due = now.saturating_add(restart_delay(settings, in_window));
        self.restart_due = Some(due);
        Scheduled::Due(due)
    }

    /// Takes a due restart: the attempt number (1-based within the window), or `None`.
    pub fn take_due_restart(
        &mut self,
        now: Timestamp,
        settings: &ControllerSettings,
    ) -> Option<u32> {
        let due = self.restart_due?;
        if due > now {
            return None;
        }
        self.restart_due = None;
        if self.intent != Intent::Supervised || self.failed.is_some() || self.pid.is_some() {
            // It came back by itself (adopted) or was fenced meanwhile.
            return None;
        }
        self.forget_old_restarts(now, settings);
        self.recent_restarts.push_back(now);
        self.restarts_total = self.restarts_total.saturating_add(1);
        self.start_in_flight = true;
        Some(u32::try_from(self.recent_restarts.len()).unwrap_or(u32::MAX))
    }

    /// The process is still starting: started (or a start in flight) within `grace` and not
    /// up since. Its refused probes are expected; it may yet serve.
    pub fn starting(&self, now: Timestamp, grace: Duration) -> bool {
        if self.start_in_flight {
            return true;
        }
        match (self.pid, self.started_at) {
            (Some(_), Some(started)) => {
                !self.health.is_up()
                    && (self.health.verdict == Verdict::Unknown || self.health.since <= started)
                    && now < started.saturating_add(grace)
            }
            _ => false,
        }
    }

    /// It could serve again without a cold standby: supervised, not failed, its last start
    /// ran a process, and a restart is scheduled or it is starting.
    pub fn coming_back(&self, now: Timestamp, grace: Duration) -> bool {
        self.intent == Intent::Supervised
            && self.failed.is_none()
            && self.unstartable.is_none()
            && (self.restart_due.is_some() || self.starting(now, grace))
    }

    /// A plan starts it: supervised from now on, with a clean slate.
    pub fn supervise_afresh(&mut self) {
        self.intent = Intent::Supervised;
        self.failed = None;
        self.unstartable = None;
        self.recent_restarts.clear();
        self.restart_due = None;
    }

    /// A plan fences it.
    pub fn stop(&mut self) {
        self.intent = Intent::Stopped;
        self.restart_due = None;
    }

    fn forget_old_restarts(&mut self, now: Timestamp, settings: &ControllerSettings) {
        let window = Duration::from_secs(settings.crash_loop_window_s);
        while self
            .recent_restarts
            .front()
            .is_some_and(|at| at.saturating_add(window) <= now)
        {
            self.recent_restarts.pop_front();
        }
    }
}

/// The delay before the restart that follows `earlier` restarts within the window: none for
/// the first, then `initial`, doubling, at most `max`.
pub fn restart_delay(settings: &ControllerSettings, earlier: usize) -> Duration {
    if earlier == 0 {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(earlier - 1).unwrap_or(u32::MAX).min(32);
    let ms = settings
        .restart_backoff_initial_ms
        .saturating_mul(1_u64 << doublings)
        .min(settings.restart_backoff_max_ms);
    Duration::from_millis(ms)
}

/// How long a (re)started process counts as starting, and how long a node waits for a warm
/// replica to come back before it starts a cold one: one maximal backoff.
pub fn comeback_grace(settings: &ControllerSettings) -> Duration {
    Duration::from_millis(settings.restart_backoff_max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_restart_is_immediate_then_the_delay_doubles_to_the_cap() {
        let settings = ControllerSettings {
            restart_backoff_initial_ms: 200,
            restart_backoff_max_ms: 1_000,
            ..ControllerSettings::default()
        };
        let delays: Vec<u128> = (0..6)
            .map(|n| restart_delay(&settings, n).as_millis())
            .collect();
        assert_eq!(delays, [0, 200, 400, 800, 1_000, 1_000]);
    }
}
