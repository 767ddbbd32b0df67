//! The region drills' operator: moves a deployment from the region holding the PostgreSQL
//! primary to the region of its asynchronous standby, either as a planned switchover (stop
//! region one's processes gracefully, wait until the standby replayed everything, stop region
//! one's servers, promote, start region two's cold replicas) or after the loss of region one
//! (kill -9 every process and server there at once, wait the lab's detection delay, promote,
//! start). Each step is timed, so a report shows the RTO by its parts; afterwards every
//! node's readiness is read (with its reason) so that a member halted on a forked history is
//! seen. Every wait is bounded and a step that runs out says which it was. Both are one-shot:
//! region one is gone afterwards, nothing is restored.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::deployment::description::{RegionName, ServerName, ServerRole};
use crate::deployment::{Databases, Deployment};
use crate::promotion::DETECTION_DELAY;

/// How long region one's processes get to exit after SIGTERM (each wave).
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// How long the asynchronous standby gets to replay everything after the writes stopped.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the drill waits for every node to be ready before it records who is not.
const READINESS_WAIT: Duration = Duration::from_secs(20);
/// A `/readyz` poll that takes longer counts as no answer.
const READYZ_TIMEOUT: Duration = Duration::from_millis(500);

/// Which region move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Planned: nothing acknowledged may be lost.
    Switchover,
    /// Region one lost at once: the standby's lag is lost.
    Loss,
}

/// The region move's parts, each in ms; the RTO runs from the fault to the first commit.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RegionReport {
    pub from_region: String,
    pub to_region: String,
    /// The asynchronous standby promoted.
    pub promoted: String,
    /// Switchover: SIGTERM to region one's processes until every one exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_ms: Option<f64>,
    /// Switchover: until the standby's replay lag was 0 (then region one's servers stop).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catch_up_ms: Option<f64>,
    /// Switchover: stopping region one's database servers (`pg_ctl stop -m immediate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_servers_ms: Option<f64>,
    /// Loss: the kill -9 of every process and server of region one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill_ms: Option<f64>,
    /// Loss: the lab's detection delay before it promotes (its choice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detection_delay_ms: Option<f64>,
    /// `pg_ctl promote -w`.
    pub promote_ms: f64,
    /// Spawning region two's cold replicas.
    pub start_ms: f64,
    /// From the replicas' start to the first committed transfer sent after the fault.
    pub first_commit_ms: Option<f64>,
    /// Region one's processes and servers stopped or killed.
    pub region_one: Vec<String>,
    /// Region two's replicas started.
    pub started: Vec<String>,
    /// Every running node's readiness once the move was measured.
    pub readiness: Vec<NodeReadiness>,
}

/// One node process's `/readyz` answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeReadiness {
    pub process: String,
    pub ready: bool,
    /// The not-ready reason (`/readyz` body), or why there was no answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A region move in progress: its figures so far.
#[derive(Debug)]
pub struct RegionMove {
    pub kind: Move,
    pub report: RegionReport,
    /// When region two's replicas were spawned: the first commit is counted from here.
    started_at: Instant,
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

/// The region of the running primary and the running asynchronous standby in another one.
fn regions(databases: &Databases) -> anyhow::Result<(RegionName, ServerName, RegionName)> {
    let servers = databases.servers();
    let primary = servers
        .iter()
        .find(|s| s.role == ServerRole::Primary && s.running)
        .context("no running primary: region one is already gone")?;
    let standby = servers
        .iter()
        .find(|s| s.role == ServerRole::AsyncStandby && s.running && s.region != primary.region)
        .context("no running asynchronous standby in another region to promote")?;
    Ok((
        primary.region.clone(),
        standby.name.clone(),
        standby.region.clone(),
    ))
}

impl RegionMove {
    /// Does the whole move on `deployment` (its PostgreSQL clusters in `databases`), timing
    /// each step; the fault was injected at `injected_at`.
    pub async fn run(
        kind: Move,
        deployment: &mut Deployment,
        databases: &Databases,
        injected_at: Instant,
    ) -> anyhow::Result<Self> {
        let (from, standby, to) = regions(databases)?;
        let mut report = RegionReport {
            from_region: from.to_string(),
            to_region: to.to_string(),
            promoted: standby.to_string(),
            ..RegionReport::default()
        };
        match kind {
            Move::Switchover => {
                let processes = deployment
                    .stop_region(&from, DRAIN_GRACE)
                    .await
                    .context("draining region one (SIGTERM)")?;
                let drained_at = Instant::now();
                report.drain_ms = Some(ms(drained_at - injected_at));
                tokio::task::block_in_place(|| {
                    databases.wait_for_catch_up(&standby, CATCH_UP_TIMEOUT)
                })
                .with_context(|| {
                    format!(
                        "waiting {} s for {standby} to replay everything (lag 0)",
                        CATCH_UP_TIMEOUT.as_secs()
                    )
                })?;
                let caught_up_at = Instant::now();
                report.catch_up_ms = Some(ms(caught_up_at - drained_at));
                let servers = tokio::task::block_in_place(|| databases.stop_region(&from))?;
                report.stop_servers_ms = Some(ms(caught_up_at.elapsed()));
                report.region_one = processes
                    .into_iter()
                    .chain(servers.iter().map(ToString::to_string))
                    .collect();
            }
            Move::Loss => {
                report.region_one = tokio::task::block_in_place(|| deployment.kill9_region(&from))?;
                let struck_at = Instant::now();
                report.kill_ms = Some(ms(struck_at - injected_at));
                report.detection_delay_ms = Some(ms(DETECTION_DELAY));
                tokio::time::sleep_until((struck_at + DETECTION_DELAY).into()).await;
            }
        }
        let promote = tokio::task::block_in_place(|| databases.promote(&standby))?;
        report.promote_ms = ms(promote);
        let spawning = Instant::now();
        report.started = deployment
            .start_cold(&to)
            .with_context(|| format!("starting the cold replicas of {to}"))?;
        report.start_ms = ms(spawning.elapsed());
        Ok(Self {
            kind,
            report,
            started_at: Instant::now(),
        })
    }

    /// The figures, with the first committed transfer sent after the fault at
    /// `first_success`.
    pub fn report(&self, first_success: Option<Instant>) -> RegionReport {
        let mut report = self.report.clone();
        report.first_commit_ms =
            first_success.map(|at| ms(at.saturating_duration_since(self.started_at)));
        report
    }

    /// Whether region two took over: one of the replicas it started reports itself ready.
    pub async fn detected(&self, deployment: &Deployment) -> bool {
        let readiness = readiness_of(deployment, Some(&self.report.started)).await;
        readiness.iter().any(|r| r.ready)
    }

    /// Waits (bounded) until every running node is ready, then records each one's readiness.
    pub async fn record_readiness(&mut self, deployment: &Deployment) {
        let deadline = Instant::now() + READINESS_WAIT;
        loop {
            let readiness = readiness_of(deployment, None).await;
            if readiness.iter().all(|r| r.ready) || Instant::now() >= deadline {
                self.report.readiness = readiness;
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The nodes not ready after the bounded wait, as one line.
    pub fn not_ready(&self) -> Option<String> {
        let not_ready: Vec<String> = self
            .report
            .readiness
            .iter()
            .filter(|r| !r.ready)
            .map(|r| format!("{} ({})", r.process, r.reason.as_deref().unwrap_or("?")))
            .collect();
        (!not_ready.is_empty()).then(|| {
            format!(
                "not ready {} s after the move: {}",
                READINESS_WAIT.as_secs(),
                not_ready.join(", ")
            )
        })
    }
}

/// `/readyz` of every running process (of `only` those, if given).
async fn readiness_of(deployment: &Deployment, only: Option<&[String]>) -> Vec<NodeReadiness> {
    let mut readiness = Vec::new();
    for process in deployment.processes() {
        if process.pid().is_none() {
            continue;
        }
        if only.is_some_and(|names| !names.iter().any(|n| n == process.name())) {
            continue;
        }
        let url = format!("http://{}/readyz", process.admin_address);
        let answer = match crate::replicas::http() {
            Ok(client) => client.get(&url).timeout(READYZ_TIMEOUT).send().await,
            Err(error) => {
                readiness.push(NodeReadiness {
                    process: process.name().to_owned(),
                    ready: false,
                    reason: Some(format!("no HTTP client: {error:#}")),
                });
                continue;
            }
        };
        let (ready, reason) = match answer {
            Ok(response) => {
                let ready = response.status().is_success();
                let body = response.text().await.unwrap_or_default();
                (ready, (!ready).then(|| body.trim().to_owned()))
            }
            Err(error) => (false, Some(format!("no answer: {error}"))),
        };
        readiness.push(NodeReadiness {
            process: process.name().to_owned(),
            ready,
            reason,
        });
    }
    readiness
}
