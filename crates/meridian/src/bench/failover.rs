//! `meridian bench failover`: kill -9 the active replica of a node under load, N times, and
//! measure what applications see.
//!
//! The deployment runs two sequencer instances and two replicas of every participant, of the
//! mediator and of the topology manager. The transfer workload runs throughout with dedup-safe
//! retrying clients that know both replicas. Each trial SIGKILLs the target — the active
//! replica of a node, or one sequencer instance (in turn) — and measures the time from the kill
//! until the service the target provided is back, judged by requests *sent after* the kill:
//!
//! - participant: the first successful `SubmitAndWait` submitted through it;
//! - mediator: the first successful `SubmitAndWait` anywhere (every one needs a verdict);
//! - sequencer: every submitting participant has had a `SubmitAndWait` succeed (members
//!   subscribe to different instances, so the slowest to resume sets the figure; every
//!   transfer also needs the bank's participant and the mediator to have resumed);
//! - topology: the first party allocation that succeeds (transactions do not need the
//!   topology manager, so they keep flowing throughout).
//!
//! The killed process is restarted (a replica comes back passive) before the next trial. At
//! the end the ledgers are audited: acknowledged transactions missing on an informee
//! participant are *lost*, an IOU that exists twice is a *duplicate*.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use meridian_client::Backoff;
use meridian_core::UserId;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::admin::replicas;
use crate::bench::sequencer::Backend;
use crate::deployment::{Deployment, DeploymentBackend, DeploymentSpec};
use crate::launch::NodeProcess;
use crate::workload::{self, BackgroundLoad, FinishedLoad, Live, Parties};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetNode {
    Participant,
    Mediator,
    Sequencer,
    Topology,
}

#[derive(Debug, Clone, Args)]
pub struct FailoverBenchArgs {
    /// Which node's active replica (or, for the sequencer, which instance) to kill.
    #[arg(long, value_enum, default_value = "participant")]
    pub node: TargetNode,
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub trials: u64,
    /// Storage of every node. PostgreSQL starts a throwaway server.
    #[arg(long, value_enum, default_value = "sqlite")]
    pub backend: Backend,
    /// Concurrent transfer lanes.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub lanes: u64,
    /// Lease timeout of the replicated nodes.
    #[arg(long, default_value_t = 1_000)]
    pub lease_timeout_ms: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub killed: String,
    pub rto_ms: f64,
    /// Application requests that failed (after the client's own retries) during the trial.
    pub failed_requests: u64,
    /// Of those, rejected with a mediator TIMEOUT.
    pub timed_out_requests: u64,
}

#[derive(Debug, Serialize)]
pub struct FailoverReport {
    pub node: TargetNode,
    pub backend: Backend,
    pub trials: Vec<Trial>,
    pub rto_ms_p50: f64,
    pub rto_ms_max: f64,
    pub failed_requests: u64,
    pub timed_out_requests: u64,
    /// Failed attempts by status, over the whole run.
    pub rejections: BTreeMap<String, u64>,
    pub committed: u64,
    pub lost_transactions: usize,
    pub duplicate_transactions: usize,
    pub amounts_conserved: bool,
    pub audit_ok: bool,
}

/// Backoff of the bench's clients: short, so that a retry sleep does not hide the real RTO.
const CLIENT_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(10),
    max: Duration::from_millis(50),
    max_attempts: 400,
};
const TRIAL_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(args: FailoverBenchArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let report = measure(&args, shutdown).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let target = match report.node {
            TargetNode::Sequencer => "one sequencer instance (in turn)".to_owned(),
            node => format!("the active {} replica", node_label(node)),
        };
        println!(
            "meridian bench failover: kill -9 {target}, {} trials, {:?}",
            report.trials.len(),
            report.backend
        );
        for (i, trial) in report.trials.iter().enumerate() {
            println!(
                "  trial {:>2}: killed {:<16} RTO {:>7.0} ms   failed requests {}   timeouts {}",
                i + 1,
                trial.killed,
                trial.rto_ms,
                trial.failed_requests,
                trial.timed_out_requests
            );
        }
        println!(
            "  RTO p50 {:.0} ms, max {:.0} ms; {} committed; lost {}, duplicates {}; audit {}",
            report.rto_ms_p50,
            report.rto_ms_max,
            report.committed,
            report.lost_transactions,
            report.duplicate_transactions,
            if report.audit_ok { "OK" } else { "FAILED" }
        );
    }
    if !report.audit_ok {
        bail!("the audit after the failovers failed");
    }
    Ok(())
}

pub async fn measure(
    args: &FailoverBenchArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<FailoverReport> {
    let exe = std::env::current_exe().context("locating the meridian binary")?;
    measure_with(args, exe, shutdown).await
}

/// [`measure`] running the nodes with the `meridian` binary at `exe` (tests pass theirs).
pub async fn measure_with(
    args: &FailoverBenchArgs,
    exe: std::path::PathBuf,
    shutdown: CancellationToken,
) -> anyhow::Result<FailoverReport> {
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let mut _postgres = None;
    let backend = match args.backend {
        Backend::Sqlite => DeploymentBackend::Sqlite,
        Backend::Postgres => {
            let server = meridian_testkit::PostgresServer::start()
                .context("starting a throwaway PostgreSQL")?;
            let server_url = format!("postgres://meridian@127.0.0.1:{}", server.port());
            _postgres = Some(server);
            DeploymentBackend::Postgres { server_url }
        }
    };
    let spec = DeploymentSpec {
        exe,
        backend,
        replicas: 2,
        sequencers: 2,
        lease_timeout_ms: args.lease_timeout_ms,
        ..DeploymentSpec::local(dir.path().to_path_buf(), 3)?
    };
    let quiet = args.json;
    let mut deployment = Deployment::start(&spec, &mut |line| {
        if !quiet {
            eprintln!("  {line}");
        }
    })
    .await?;
    let result = trials(&mut deployment, args, shutdown).await;
    let stopped = deployment.stop().await;
    let report = result?;
    stopped.context("stopping the nodes")?;
    Ok(report)
}

async fn trials(
    deployment: &mut Deployment,
    args: &FailoverBenchArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<FailoverReport> {
    let user = UserId::new("failover-bench")?;
    let run = format!("failover{}", std::process::id());
    let load = BackgroundLoad::start(
        deployment,
        &user,
        CLIENT_BACKOFF,
        args.lanes as usize,
        &run,
        &shutdown,
    )
    .await?;
    let (live, parties) = (load.live.clone(), load.parties.clone());
    // Let the workload reach a steady state first.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut trials = Vec::new();
    for trial in 0..args.trials {
        if shutdown.is_cancelled() {
            break;
        }
        let failed_before = live.failed.load(Ordering::Relaxed);
        let timeouts_before = live.timeouts.load(Ordering::Relaxed);
        let killed = kill_target(deployment, args.node, trial).await?;
        let killed_at = Instant::now();
        let rto = match tokio::time::timeout(
            TRIAL_TIMEOUT,
            recovered(args.node, &live, &parties, killed_at, trial),
        )
        .await
        {
            Ok(rto) => rto?,
            Err(_) => bail!(
                "trial {}: {:?} not back within {TRIAL_TIMEOUT:?} of killing {killed}",
                trial + 1,
                args.node
            ),
        };
        // Let the failed-request counters settle, then bring the killed replica back.
        tokio::time::sleep(Duration::from_millis(500)).await;
        restart(deployment, &killed).await?;
        trials.push(Trial {
            killed,
            rto_ms: rto.as_secs_f64() * 1_000.0,
            failed_requests: live.failed.load(Ordering::Relaxed) - failed_before,
            timed_out_requests: live.timeouts.load(Ordering::Relaxed) - timeouts_before,
        });
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    }
    let FinishedLoad { report, audit, .. } = load.finish().await?;
    let duplicates = workload::duplicate_ious(&parties).await?;

    let (p50, max) = super::median_and_max(trials.iter().map(|t| t.rto_ms).collect());
    let backend = args.backend;
    Ok(FailoverReport {
        node: args.node,
        backend,
        rto_ms_p50: p50,
        rto_ms_max: max,
        failed_requests: trials.iter().map(|t| t.failed_requests).sum(),
        timed_out_requests: trials.iter().map(|t| t.timed_out_requests).sum(),
        trials,
        rejections: report.rejections.clone(),
        committed: report.committed,
        lost_transactions: audit.acknowledged_missing,
        duplicate_transactions: duplicates,
        amounts_conserved: audit.amounts_conserved,
        audit_ok: audit.audit_ok && duplicates == 0,
    })
}

/// How long after `killed_at` the service of the killed `node` was back (see the module doc).
async fn recovered(
    node: TargetNode,
    live: &Live,
    parties: &Parties,
    killed_at: Instant,
    trial: u64,
) -> anyhow::Result<Duration> {
    // A request that was already under way when the node died and finishes later proves
    // little (its verdict may have been sent before the kill); one sent after the kill
    // proves the service is back.
    let fresh_commit = |index: usize| {
        live.committed_a_request_sent_after(index, killed_at)
            .then(Instant::now)
    };
    loop {
        let back = match node {
            TargetNode::Participant => fresh_commit(1),
            TargetNode::Mediator => (1..3).find_map(fresh_commit),
            // Transfers are submitted through participants 2 and 3 (participant 1 hosts the
            // bank, which confirms every one of them).
            TargetNode::Sequencer => (1..3)
                .map(fresh_commit)
                .collect::<Option<Vec<_>>>()
                .map(|_| Instant::now()),
            TargetNode::Topology => {
                let party = meridian_core::PartyId::new(format!(
                    "failover-party-{}-{trial}",
                    std::process::id()
                ))?;
                // The client retries UNAVAILABLE itself, with the bench's short backoff.
                parties.clients[0].allocate_party(&party).await?;
                Some(Instant::now())
            }
        };
        if let Some(back) = back {
            return Ok(back.duration_since(killed_at));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn node_label(node: TargetNode) -> &'static str {
    match node {
        TargetNode::Participant => "participant",
        TargetNode::Mediator => "mediator",
        TargetNode::Sequencer => "sequencer",
        TargetNode::Topology => "topology manager",
    }
}

/// The node name under the data directory that `node` targets.
fn node_name(deployment: &Deployment, node: TargetNode) -> String {
    match node {
        TargetNode::Participant => deployment.participant_ids[1].to_string(),
        TargetNode::Mediator => Deployment::mediator_id().to_string(),
        TargetNode::Sequencer => "sequencer".into(),
        TargetNode::Topology => "topology-manager".into(),
    }
}

fn replicas_of(deployment: &mut Deployment, node: TargetNode) -> Vec<&mut NodeProcess> {
    match node {
        TargetNode::Participant => deployment.participant_replicas_mut(1),
        TargetNode::Mediator => deployment.mediator_replicas_mut(),
        TargetNode::Sequencer => deployment.sequencers.iter_mut().collect(),
        TargetNode::Topology => deployment.topology_replicas_mut(),
    }
}

/// SIGKILLs the target of trial `trial`: the active replica of a replicated node, or the
/// sequencer instances in turn. Returns the killed process's name.
async fn kill_target(
    deployment: &mut Deployment,
    node: TargetNode,
    trial: u64,
) -> anyhow::Result<String> {
    if node == TargetNode::Sequencer {
        let mut instances = replicas_of(deployment, node);
        let count = instances.len() as u64;
        let index = usize::try_from(trial % count.max(1))?;
        let instance = instances
            .get_mut(index)
            .context("the deployment runs no sequencer")?;
        instance.kill9()?;
        return Ok(instance.name().to_owned());
    }
    let node_name = node_name(deployment, node);
    kill_active(deployment, node, &node_name).await
}

/// SIGKILLs the replica of `node_name` that reports itself active. Returns its name.
async fn kill_active(
    deployment: &mut Deployment,
    node: TargetNode,
    node_name: &str,
) -> anyhow::Result<String> {
    let data_dir = deployment.data_dir.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let active = crate::admin::active_replica(&data_dir, node_name).await?;
        if let Some(active) = active {
            for replica in replicas_of(deployment, node) {
                if replica.name() == active {
                    replica.kill9()?;
                    return Ok(active);
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "no active replica of {node_name} among {:?}",
                replicas(&data_dir, node_name)?
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn restart(deployment: &mut Deployment, name: &str) -> anyhow::Result<()> {
    let exe = deployment.exe().to_path_buf();
    for node in deployment.processes_mut() {
        if node.name() == name {
            node.start(&exe)?;
            return node.wait_alive(Duration::from_secs(30)).await;
        }
    }
    bail!("no replica named {name}")
}
