//! The region drills' operator: moves a deployment from the region holding the PostgreSQL
//! primaries to the region of their asynchronous standbys (one per cluster), either as a planned switchover (stop
//! region one's processes gracefully, wait until the standby replayed everything, stop region
//! one's servers, promote, start region two's cold replicas) or after the loss of region one
//! (kill -9 every process and server there at once, wait the lab's detection delay, promote,
//! start). Each step is timed, so a report shows the RTO by its parts; afterwards every
//! node's readiness is read (with its reason) so that a member halted on a forked history is
//! seen. After a loss, a participant halted on a fork is repaired as `docs/operations.md`
//! tells an operator to (stop it, rewind its database to the last quiet point before the fork,
//! start it: it replays the new history), so that the audit afterwards sees every ledger.
//! Every wait is bounded and a step that runs out says which it was. Both are one-shot:
//! region one is gone afterwards, nothing is restored.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::deployment::description::{ClusterName, RegionName, ServerName, ServerRole};
use crate::deployment::{Databases, Deployment};
use crate::promotion::DETECTION_DELAY;

/// How long region one's processes get to exit after SIGTERM (each wave).
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// How long the asynchronous standby gets to replay everything after the writes stopped.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the drill waits for every node to be ready before it records who is not.
const READINESS_WAIT: Duration = Duration::from_secs(20);
/// How long region two's participants get, after their start, to be either ready or halted on
/// a fork (the fork is found at their first subscription).
const FORK_WATCH: Duration = Duration::from_secs(30);
/// How long a forked participant gets to exit after SIGTERM, and to be ready after its repair
/// (it replays the new history from the quiet point).
const REPAIR_GRACE: Duration = Duration::from_secs(10);
const READY_AFTER_REPAIR: Duration = Duration::from_secs(60);
/// What a node's `/readyz` reason starts with when it halted on a fork.
const FORK_REASON: &str = "\"fork: ";
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
    /// The asynchronous standbys promoted, one per cluster (comma-separated).
    pub promoted: String,
    /// Switchover: SIGTERM to region one's processes until every one exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_ms: Option<f64>,
    /// Switchover: until every standby's replay lag was 0 (then region one's servers stop).
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
    /// `pg_ctl promote -w` of every standby, one after the other.
    pub promote_ms: f64,
    /// Spawning region two's cold replicas.
    pub start_ms: f64,
    /// Loss: from the spawn until every forked participant was repaired and ready again (the
    /// operator's part of the outage; absent when no member forked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair_ms: Option<f64>,
    /// From the replicas' start (after a fork repair: from its end) to the first committed
    /// transfer sent after the fault.
    pub first_commit_ms: Option<f64>,
    /// Region one's processes and servers stopped or killed.
    pub region_one: Vec<String>,
    /// Region two's replicas started.
    pub started: Vec<String>,
    /// Every running node's readiness once the move was measured (after a loss: after the
    /// forked participants' repair).
    pub readiness: Vec<NodeReadiness>,
    /// The members that halted on a forked history, and what their repair did.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub forked: Vec<ForkedMember>,
}

/// A member that halted on a fork after a region loss.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ForkedMember {
    pub process: String,
    /// Its `/readyz` reason: the fork alarm, naming its last event and what the sequencer
    /// serves now.
    pub reason: String,
    /// A repaired participant: how many of its committed transactions the rewind listed as
    /// lost (saved to `<data-dir>/lost-<node>.json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_transactions: Option<usize>,
    /// Why it was not repaired, or its repair failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair_problem: Option<String>,
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
    /// When region two's replicas were spawned, or their fork repair ended: the first commit
    /// is counted from here.
    started_at: Instant,
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

/// The region of the running primaries, each cluster's running asynchronous standby in
/// another region, and that region: every cluster must move, and to the same region.
fn regions(databases: &Databases) -> anyhow::Result<(RegionName, Vec<ServerName>, RegionName)> {
    let servers = databases.servers();
    let from = servers
        .iter()
        .find(|s| s.role == ServerRole::Primary && s.running)
        .context("no running primary: region one is already gone")?
        .region
        .clone();
    let mut clusters: Vec<&ClusterName> = servers.iter().map(|s| &s.cluster).collect();
    clusters.dedup();
    let mut standbys = Vec::new();
    let mut to: Option<RegionName> = None;
    for cluster in clusters {
        let of_cluster = || servers.iter().filter(move |s| &s.cluster == cluster);
        if !of_cluster().any(|s| s.role == ServerRole::Primary && s.running && s.region == from) {
            bail!("cluster {cluster} has no running primary in {from}");
        }
        let standby = of_cluster()
            .find(|s| s.role == ServerRole::AsyncStandby && s.running && s.region != from)
            .with_context(|| {
                format!("cluster {cluster} has no running asynchronous standby outside {from}")
            })?;
        match &to {
            Some(region) if region != &standby.region => bail!(
                "the clusters' asynchronous standbys are in {region} and {}; a region move \
                 needs them in one region",
                standby.region
            ),
            _ => to = Some(standby.region.clone()),
        }
        standbys.push(standby.name.clone());
    }
    let to = to.context("no PostgreSQL cluster to move")?;
    Ok((from, standbys, to))
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
        let (from, standbys, to) = regions(databases)?;
        let names: Vec<&str> = standbys.iter().map(ServerName::as_str).collect();
        let mut report = RegionReport {
            from_region: from.to_string(),
            to_region: to.to_string(),
            promoted: names.join(", "),
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
                for standby in &standbys {
                    tokio::task::block_in_place(|| {
                        databases.wait_for_catch_up(standby, CATCH_UP_TIMEOUT)
                    })
                    .with_context(|| {
                        format!(
                            "waiting {} s for {standby} to replay everything (lag 0)",
                            CATCH_UP_TIMEOUT.as_secs()
                        )
                    })?;
                }
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
        let mut promote = Duration::ZERO;
        for standby in &standbys {
            promote += tokio::task::block_in_place(|| databases.promote(standby))?;
        }
        report.promote_ms = ms(promote);
        let spawning = Instant::now();
        report.started = deployment
            .start_cold(&to)
            .with_context(|| format!("starting the cold replicas of {to}"))?;
        report.start_ms = ms(spawning.elapsed());
        // The load balancer already sends traffic to the new region's replicas (backups take
        // over when no server of the active region is up); moving it makes that final, so
        // that region one's replicas, back, would only be backups. In the background: the
        // move waits for the new replicas to be ready, which the drill measures itself.
        if deployment.load_balancer.is_some() {
            let data_dir = deployment.data_dir.clone();
            let region = to.clone();
            tokio::spawn(async move {
                match crate::lb::move_to_region(&data_dir, &region).await {
                    Ok(moved) => tracing::info!(?moved, "load balancer moved"),
                    Err(error) => {
                        tracing::error!("moving the load balancer to {region}: {error:#}")
                    }
                }
            });
        }
        let mut moved = Self {
            kind,
            report,
            started_at: Instant::now(),
        };
        if kind == Move::Loss {
            moved.repair_forks(deployment).await;
        }
        Ok(moved)
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

    /// Waits (bounded) until every started replica is ready or halted on a fork, then repairs
    /// each forked participant as an operator follows `docs/operations.md`: SIGTERM,
    /// `fork-repair` (the lost list saved first), start, wait until ready. A forked mediator,
    /// topology manager or sequencer is recorded, not repaired (no rewind is built for them).
    async fn repair_forks(&mut self, deployment: &mut Deployment) {
        let deadline = Instant::now() + FORK_WATCH;
        let forked = loop {
            let readiness = readiness_of(deployment, Some(&self.report.started)).await;
            let forked: Vec<NodeReadiness> =
                readiness.iter().filter(|r| is_forked(r)).cloned().collect();
            let undecided = readiness.iter().any(|r| !r.ready && !is_forked(r));
            if !undecided || Instant::now() >= deadline {
                break forked;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        if forked.is_empty() {
            return;
        }
        for member in forked {
            let outcome = repair_participant(deployment, &member.process).await;
            let (lost_transactions, repair_problem) = match outcome {
                Ok(lost) => (Some(lost), None),
                Err(error) => (None, Some(format!("{error:#}"))),
            };
            self.report.forked.push(ForkedMember {
                process: member.process,
                reason: member.reason.unwrap_or_default(),
                lost_transactions,
                repair_problem,
            });
        }
        self.report.repair_ms = Some(ms(self.started_at.elapsed()));
        // The parts add up: the first commit counts from the end of the repair.
        self.started_at = Instant::now();
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

fn is_forked(readiness: &NodeReadiness) -> bool {
    !readiness.ready
        && readiness
            .reason
            .as_deref()
            .is_some_and(|reason| reason.contains(FORK_REASON))
}

/// Stops the forked participant process `name`, rewinds its node's database and starts it
/// again; returns how many transactions the rewind listed as lost.
async fn repair_participant(deployment: &mut Deployment, name: &str) -> anyhow::Result<usize> {
    let data_dir = deployment.data_dir.clone();
    let exe = deployment.exe().to_path_buf();
    let process = deployment
        .processes_mut()
        .into_iter()
        .find(|p| p.name() == name)
        .with_context(|| format!("no process {name}"))?;
    if process.role_command() != "participant" {
        bail!(
            "a forked {} is not repaired: only a participant has a rewind",
            process.role_command()
        );
    }
    let node = node_of(&process.config_path)
        .with_context(|| format!("no node directory above {}", process.config_path.display()))?;
    process.terminate(REPAIR_GRACE).await?;
    let replicas = crate::replicas::replicas_with_cold(&data_dir, &node)?;
    let configs: Vec<&std::path::Path> = replicas.iter().map(|r| r.config_path.as_path()).collect();
    let save = data_dir.join(format!("lost-{node}.json"));
    let report = crate::fork::rewind(&configs, &save)
        .await
        .with_context(|| format!("rewinding {node}"))?;
    tracing::info!(%node, lost = report.lost_transactions.len(), saved = %save.display(), "forked participant rewound");
    let process = deployment
        .processes_mut()
        .into_iter()
        .find(|p| p.name() == name)
        .with_context(|| format!("no process {name}"))?;
    process.start(&exe)?;
    process
        .wait_ready(READY_AFTER_REPAIR)
        .await
        .with_context(|| format!("{name} after its repair"))?;
    Ok(report.lost_transactions.len())
}

/// The node a replica's config belongs to: `<data-dir>/<node>/<replica>.toml`, or
/// `<data-dir>/<node>/cold/<replica>.toml` for a cold one.
fn node_of(config_path: &std::path::Path) -> Option<String> {
    let mut dir = config_path.parent()?;
    if dir.file_name()? == "cold" {
        dir = dir.parent()?;
    }
    Some(dir.file_name()?.to_str()?.to_owned())
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
        let url = format!("{}/readyz", crate::tls::url(process.admin_address));
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::node_of;

    #[test]
    fn a_replica_config_names_its_node_warm_or_cold() {
        assert_eq!(
            node_of(Path::new("/data/participant2/participant2-a.toml")).as_deref(),
            Some("participant2")
        );
        assert_eq!(
            node_of(Path::new("/data/participant2/cold/participant2-c.toml")).as_deref(),
            Some("participant2")
        );
    }
}
