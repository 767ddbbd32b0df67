//! The lab as the database operator of a drill: after a primary is lost it waits a detection
//! delay (what an operator's or a monitor's decision takes), promotes the synchronous standby
//! with `pg_ctl promote`, re-points the other standbys at it, and once the drill's
//! measurement is over rebuilds the lost servers as fresh standbys so that the next trial
//! starts from a fully redundant cluster. It times each step, so a report can show the
//! promoter's share of the outage apart from Meridian's.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::deployment::description::{ServerName, ServerRole};
use crate::deployment::Databases;

/// How long the lab, as operator, waits after the primary died before it promotes: a
/// monitor that probes every 100 ms and decides after five missed probes. Real operators
/// (or Patroni with a tuned ttl) take longer; this is the lab's choice, reported beside
/// every figure.
pub const DETECTION_DELAY: Duration = Duration::from_millis(500);

/// A promotion the lab performs after a primary was lost.
#[derive(Debug)]
pub struct Promotion {
    /// The servers the fault killed; rebuilt when the measurement is over.
    killed: Vec<ServerName>,
    /// The synchronous standby to promote.
    standby: ServerName,
    injected_at: Instant,
    promote_at: Instant,
    promoted_at: Option<Instant>,
    promote_command: Option<Duration>,
    /// What went wrong on the way (a re-point or a rebuild that failed).
    pub problem: Option<String>,
}

/// The promoter's share of a database failover.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PromotionReport {
    /// The server promoted.
    pub promoted: String,
    /// The detection delay the lab waited (its choice, [`DETECTION_DELAY`]).
    pub detection_delay_ms: f64,
    /// How long `pg_ctl promote -w` took.
    pub promote_command_ms: Option<f64>,
    /// Fault to the new primary accepting writes: the promoter's share of the RTO.
    pub promoter_ms: Option<f64>,
    /// New primary accepting writes to the first committed transfer sent after the fault:
    /// Meridian's share (target ≤ 1 s).
    pub meridian_ms: Option<f64>,
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

impl Promotion {
    /// Plans the promotion of the synchronous standby after `killed` were killed at
    /// `injected_at`; refuses when there is no running sync standby to promote.
    pub fn plan(
        databases: &Databases,
        killed: Vec<ServerName>,
        injected_at: Instant,
    ) -> anyhow::Result<Self> {
        let standby = databases
            .with_role(None, ServerRole::SyncStandby)
            .into_iter()
            .find(|s| s.running)
            .context("no running synchronous standby to promote")?
            .name;
        Ok(Self {
            killed,
            standby,
            injected_at,
            promote_at: injected_at + DETECTION_DELAY,
            promoted_at: None,
            promote_command: None,
            problem: None,
        })
    }

    pub fn is_promoted(&self) -> bool {
        self.promoted_at.is_some()
    }

    pub fn killed(&self) -> &[ServerName] {
        &self.killed
    }

    /// Promotes once the detection delay has passed (and only once), then re-points the
    /// other running standbys at the new primary. A failed re-point is a problem of the
    /// drill, not an error: the new primary serves without it.
    pub async fn advance(
        &mut self,
        databases: &Databases,
        cross_region_delay: Duration,
    ) -> anyhow::Result<()> {
        if self.promoted_at.is_some() || Instant::now() < self.promote_at {
            return Ok(());
        }
        let took = tokio::task::block_in_place(|| databases.promote(&self.standby))?;
        self.promoted_at = Some(Instant::now());
        self.promote_command = Some(took);
        let others: Vec<ServerName> = databases
            .servers()
            .into_iter()
            .filter(|s| s.running && s.role != ServerRole::Primary && s.name != self.standby)
            .map(|s| s.name)
            .collect();
        for other in others {
            if let Err(error) = databases.repoint(&other, cross_region_delay).await {
                self.problem
                    .get_or_insert(format!("re-pointing {other}: {error:#}"));
            }
        }
        Ok(())
    }

    /// Rebuilds every killed server as a standby of the new primary.
    pub async fn rebuild(&mut self, databases: &Databases, cross_region_delay: Duration) {
        for name in self.killed.clone() {
            if let Err(error) = databases.rebuild(&name, cross_region_delay).await {
                self.problem
                    .get_or_insert(format!("rebuilding {name}: {error:#}"));
            }
        }
    }

    /// The figures, with the first committed transfer sent after the fault at
    /// `first_success`.
    pub fn report(&self, first_success: Option<Instant>) -> PromotionReport {
        let meridian = match (self.promoted_at, first_success) {
            (Some(promoted), Some(success)) => {
                Some(ms(success.saturating_duration_since(promoted)))
            }
            _ => None,
        };
        PromotionReport {
            promoted: self.standby.to_string(),
            detection_delay_ms: ms(DETECTION_DELAY),
            promote_command_ms: self.promote_command.map(ms),
            promoter_ms: self
                .promoted_at
                .map(|at| ms(at.saturating_duration_since(self.injected_at))),
            meridian_ms: meridian,
        }
    }
}
