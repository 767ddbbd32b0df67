//! Who brings a PostgreSQL cluster back after a drill killed its primary, timed so that a
//! report can show the promoter's share of the outage apart from Meridian's. Either the lab as
//! the database operator — it waits a detection delay (what an operator's or a monitor's
//! decision takes), promotes the synchronous standby with `pg_ctl promote` and re-points the
//! other standbys at it — or Patroni, which notices the lost leader and promotes by itself
//! while the lab only watches for the new leader's first commit. Once the drill's measurement
//! is over the lost servers come back as standbys (rebuilt by the lab, or rejoined under
//! Patroni), so that the next trial starts from a fully redundant cluster.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::deployment::description::{ServerName, ServerRole};
use crate::deployment::{Databases, Promoter};

/// How long the lab, as operator, waits after the primary died before it promotes: a
/// monitor that probes every 100 ms and decides after five missed probes. Real operators
/// (or Patroni with a tuned ttl) take longer; this is the lab's choice, reported beside
/// every figure.
pub const DETECTION_DELAY: Duration = Duration::from_millis(500);
/// How long Patroni may take to elect and promote a new leader: its `ttl` (7 s, see
/// `meridian_patroni::Timing::TUNED`) plus the election, with room for a busy machine.
const PATRONI_FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// A promotion the lab performs after a primary was lost: a task of its own, so that the
/// drill's polling of the nodes never delays it.
#[derive(Debug)]
pub struct Promotion {
    /// The servers the fault killed; rebuilt when the measurement is over.
    killed: Vec<ServerName>,
    promoter: Promoter,
    /// The server promoted: the synchronous standby the lab picked, or the new leader once
    /// Patroni has one.
    promoted: Option<ServerName>,
    injected_at: Instant,
    /// When the kill -9 returned (every process of the servers is gone): the detection delay
    /// runs from here.
    struck_at: Instant,
    task: Option<JoinHandle<anyhow::Result<Promoted>>>,
    promoted_at: Option<Instant>,
    /// How long `pg_ctl promote -w` took (the lab only).
    promote_command: Option<Duration>,
    /// What went wrong on the way (a re-point or a rebuild that failed).
    pub problem: Option<String>,
}

/// What the promotion task did.
#[derive(Debug)]
struct Promoted {
    server: ServerName,
    /// When the new primary accepted writes: `pg_ctl promote -w` returned, or Patroni's new
    /// leader committed the lab's probe.
    at: Instant,
    command: Option<Duration>,
    /// A re-point that failed (the new primary serves without it).
    problem: Option<String>,
}

/// Waits until `promote_at`, promotes `standby`, re-points the other running standbys.
async fn promote_after(
    databases: Databases,
    standby: ServerName,
    promote_at: Instant,
) -> anyhow::Result<Promoted> {
    tokio::time::sleep_until(promote_at.into()).await;
    let command = tokio::task::block_in_place(|| databases.promote(&standby))?;
    let at = Instant::now();
    let others: Vec<ServerName> = databases
        .servers()
        .into_iter()
        .filter(|s| s.running && s.role != ServerRole::Primary && s.name != standby)
        .map(|s| s.name)
        .collect();
    let mut problem = None;
    for other in others {
        if let Err(error) = databases.repoint(&other).await {
            problem.get_or_insert(format!("re-pointing {other}: {error:#}"));
        }
    }
    Ok(Promoted {
        server: standby,
        at,
        command: Some(command),
        problem,
    })
}

/// Waits for Patroni's new leader to commit.
async fn patroni_promotes(databases: Databases) -> anyhow::Result<Promoted> {
    let leaders = databases
        .wait_for_new_leaders(PATRONI_FAILOVER_TIMEOUT)
        .await?;
    let at = Instant::now();
    let server = leaders
        .into_iter()
        .next()
        .context("Patroni had no leader to replace")?;
    Ok(Promoted {
        server,
        at,
        command: None,
        problem: None,
    })
}

/// The promoter's share of a database failover.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PromotionReport {
    /// `lab` or `patroni`.
    pub promoter: &'static str,
    /// The server promoted (empty when nobody was).
    pub promoted: String,
    /// How long the kill -9 itself took (until every process of the servers was gone; on a
    /// busy machine this is the lab's cost, not a database's).
    pub kill_ms: f64,
    /// The detection delay the lab waited after that (its choice, [`DETECTION_DELAY`]); under
    /// Patroni, detection is Patroni's own and inside `promoter_ms`.
    pub detection_delay_ms: Option<f64>,
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
    /// `injected_at` (by the lab), or starts watching for Patroni's new leader; refuses when
    /// there is no running sync standby to promote.
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
        let struck_at = Instant::now();
        let promoter = databases.promoter();
        let (task, promoted) = match promoter {
            Promoter::Lab => (
                tokio::spawn(promote_after(
                    databases.clone(),
                    standby.clone(),
                    struck_at + DETECTION_DELAY,
                )),
                Some(standby),
            ),
            // Patroni picks the synchronous standby it recorded itself.
            Promoter::Patroni => (tokio::spawn(patroni_promotes(databases.clone())), None),
        };
        Ok(Self {
            killed,
            promoter,
            promoted,
            injected_at,
            struck_at,
            task: Some(task),
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

    /// Collects the promotion task's outcome once it is over; with `wait`, waits for it.
    pub async fn advance(&mut self, wait: bool) -> anyhow::Result<()> {
        let Some(task) = self.task.as_mut() else {
            return Ok(());
        };
        if !wait && !task.is_finished() {
            return Ok(());
        }
        let promoted = task.await.context("the promotion task")?;
        self.task = None;
        let promoted = promoted?;
        self.promoted = Some(promoted.server);
        self.promoted_at = Some(promoted.at);
        self.promote_command = promoted.command;
        self.problem = promoted.problem;
        Ok(())
    }

    /// Rebuilds every killed server as a standby of the new primary (under Patroni: starts its
    /// Patroni again, and it rejoins).
    pub async fn rebuild(&mut self, databases: &Databases) {
        for name in self.killed.clone() {
            if let Err(error) = databases.rebuild(&name).await {
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
            promoter: self.promoter.name(),
            promoted: self
                .promoted
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            kill_ms: ms(self.struck_at.saturating_duration_since(self.injected_at)),
            detection_delay_ms: (self.promoter == Promoter::Lab).then(|| ms(DETECTION_DELAY)),
            promote_command_ms: self.promote_command.map(ms),
            promoter_ms: self
                .promoted_at
                .map(|at| ms(at.saturating_duration_since(self.injected_at))),
            meridian_ms: meridian,
        }
    }
}
