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
//! Each trial is a drill fault (`crate::drill::run_fault`, the same code as `meridian drill`
//! and the demo's failover), so the two tools cannot disagree on what recovery means. The
//! killed process is restarted (a replica comes back passive) before the next trial. At the end the ledgers are audited: acknowledged
//! transactions missing on an informee participant are *lost*, an IOU that exists twice is a
//! *duplicate*.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use meridian_client::Backoff;
use meridian_core::UserId;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::deployment::{Backend, Deployment, DeploymentArgs, DeploymentSpec, Preset};
use crate::drill::plan::{PlannedFault, Scenario, TOPOLOGY_NODE};
use crate::drill::{run_fault, Recovered};
use crate::workload::{self, BackgroundLoad, FinishedLoad};

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
    /// The deployment to break (default: the `replicated` preset on SQLite).
    #[command(flatten)]
    pub deployment: DeploymentArgs,
    /// Concurrent transfer lanes.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub lanes: u64,
    /// Lease timeout of the replicated nodes (default: the deployment's, 1000 ms unless it
    /// says otherwise).
    #[arg(long)]
    pub lease_timeout_ms: Option<u64>,
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

/// Backoff of the bench's clients (and of the HA tests'): short, so that a retry sleep does
/// not hide the real RTO.
pub const CLIENT_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(10),
    max: Duration::from_millis(50),
    max_attempts: 400,
};
/// Steady load before the first trial and between trials; the throughput a trial's recovery
/// is judged against is taken over it.
const SETTLE_S: u64 = 2;

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
    let mut description = args.deployment.resolve(Preset::Replicated, None)?;
    if let Some(lease_timeout_ms) = args.lease_timeout_ms {
        description.lease_timeout_ms = lease_timeout_ms;
    }
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let mut spec = DeploymentSpec {
        exe,
        ..DeploymentSpec::new(dir.path().to_path_buf(), description)?
    };
    // The server (if any) runs for as long as the deployment.
    let _postgres = spec.start_postgres()?;
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
    tokio::time::sleep(Duration::from_secs(SETTLE_S)).await;

    let mut trials = Vec::new();
    for trial in 0..args.trials {
        if shutdown.is_cancelled() {
            break;
        }
        let fault = planned_fault(deployment, args.node, trial);
        let report = run_fault(
            deployment,
            &live,
            &parties,
            &fault,
            SETTLE_S,
            None,
            Recovered::FirstSuccess,
        )
        .await?;
        let killed = report
            .faulted
            .clone()
            .unwrap_or_else(|| fault.target.clone());
        let rto_ms = match (&report.problem, report.rto_first_success_ms) {
            (None, Some(rto_ms)) => rto_ms,
            (problem, _) => bail!(
                "trial {}: {} not back after killing {killed}: {}",
                trial + 1,
                node_label(args.node),
                problem.as_deref().unwrap_or("no first success")
            ),
        };
        trials.push(Trial {
            killed,
            rto_ms,
            failed_requests: report.failed_requests,
            timed_out_requests: report.timed_out_requests,
        });
        tokio::time::sleep(Duration::from_secs(SETTLE_S)).await;
    }
    let FinishedLoad { report, audit, .. } = load.finish().await?;
    let duplicates = workload::duplicate_ious(&parties).await?;

    let (p50, max) = super::median_and_max(trials.iter().map(|t| t.rto_ms).collect());
    let backend = deployment.description.storage.backend;
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

fn node_label(node: TargetNode) -> &'static str {
    match node {
        TargetNode::Participant => "participant",
        TargetNode::Mediator => "mediator",
        TargetNode::Sequencer => "sequencer",
        TargetNode::Topology => "topology manager",
    }
}

/// The drill fault a trial injects: the active replica of the node, or the sequencer
/// instances in turn.
fn planned_fault(deployment: &Deployment, node: TargetNode, trial: u64) -> PlannedFault {
    let (scenario, target) = match node {
        TargetNode::Participant => (
            Scenario::ParticipantCrash,
            deployment.participant_ids[1].to_string(),
        ),
        TargetNode::Mediator => (
            Scenario::MediatorCrash,
            Deployment::mediator_id().to_string(),
        ),
        TargetNode::Topology => (Scenario::TopologyCrash, TOPOLOGY_NODE.to_owned()),
        TargetNode::Sequencer => {
            let instances = &deployment.sequencers;
            let index = usize::try_from(trial).unwrap_or(0) % instances.len().max(1);
            let target = instances
                .get(index)
                .map_or_else(|| "sequencer".to_owned(), |i| i.name().to_owned());
            (Scenario::SequencerCrash, target)
        }
    };
    PlannedFault { scenario, target }
}
