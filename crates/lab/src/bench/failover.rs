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
//! Each trial is a fault of `crate::fault` run by the experiment runner, the same code as
//! `meridian drill` and the demo's failover, so the tools cannot disagree on what recovery
//! means. The killed process is restarted (a replica comes back passive) before the next
//! trial. At the end the ledgers are audited: acknowledged
//! transactions missing on an informee participant are *lost*, an IOU that exists twice is a
//! *duplicate*.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use meridian_client::Backoff;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::deployment::{Backend, DeploymentArgs, DeploymentSpec, Description, Preset};
use crate::experiment::{
    Experiment, ExperimentReport, FaultReport, FaultStep, Observer, Recovered, Step,
};
use crate::fault::{Fault, Node, PlannedFault};
use crate::workload::LoadSpec;

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
    /// Requests the clients retried (same command id) while the recovery was measured.
    pub retried_requests: u64,
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
    /// The first few failures' messages, to say why.
    pub failure_samples: Vec<String>,
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

/// The warm standby's bench: kill -9 the active replica `--trials` times, then the audit.
pub async fn run_warm(args: FailoverBenchArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
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
    let description = resolve(args)?;
    measure_description(args, description, exe, shutdown).await
}

/// The deployment `args` name (default: the `replicated` preset), checked.
pub fn resolve(args: &FailoverBenchArgs) -> anyhow::Result<Description> {
    args.deployment.resolve(Preset::Replicated, None)
}

/// [`measure_with`] on `description` instead of the one `args` name.
pub async fn measure_description(
    args: &FailoverBenchArgs,
    mut description: Description,
    exe: std::path::PathBuf,
    shutdown: CancellationToken,
) -> anyhow::Result<FailoverReport> {
    if let Some(lease_timeout_ms) = args.lease_timeout_ms {
        description.lease_timeout_ms = lease_timeout_ms;
    }
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let mut spec = DeploymentSpec {
        exe,
        ledger_auth: true,
        ..DeploymentSpec::new(dir.path().to_path_buf(), description)?
    };
    let backend = spec.description.storage.backend;
    let sequencer_instances = spec.description.warm_sequencers();
    // The server (if any) runs for as long as the deployment.
    let postgres = spec.start_postgres()?;
    let quiet = args.json;
    let report = experiment(args, sequencer_instances)?
        .run_on(
            &spec,
            postgres.as_ref(),
            &mut |line| {
                if !quiet {
                    eprintln!("  {line}");
                }
            },
            &mut StopAtFirstFailure,
            &shutdown,
        )
        .await?;
    FailoverReport::new(args, backend, report)
}

/// Steady load first, then each trial's fault followed by steady load again.
fn experiment(args: &FailoverBenchArgs, sequencer_instances: usize) -> anyhow::Result<Experiment> {
    let settle = Duration::from_secs(SETTLE_S);
    let mut steps = vec![Step::Steady(settle)];
    for trial in 0..args.trials {
        steps.push(Step::Fault(FaultStep {
            fault: planned_fault(args.node, trial, sequencer_instances),
            settle,
            until: Recovered::FirstSuccess,
        }));
        steps.push(Step::Steady(settle));
    }
    Ok(Experiment {
        load: LoadSpec::until_stopped("failover-bench", CLIENT_BACKOFF, args.lanes)?,
        steps,
    })
}

/// Ends the trials at the first that did not recover: the deployment is not fit for more.
struct StopAtFirstFailure;

impl Observer for StopAtFirstFailure {
    fn measured(&mut self, report: &FaultReport) -> ControlFlow<()> {
        match (&report.problem, report.rto_first_success_ms) {
            (None, Some(_)) => ControlFlow::Continue(()),
            _ => ControlFlow::Break(()),
        }
    }
}

impl FailoverReport {
    /// The trials of `report`; an error names the first trial that did not recover.
    fn new(
        args: &FailoverBenchArgs,
        backend: Backend,
        report: ExperimentReport,
    ) -> anyhow::Result<Self> {
        let mut trials = Vec::new();
        for (index, fault) in report.faults.iter().enumerate() {
            let killed = fault
                .faulted
                .clone()
                .unwrap_or_else(|| fault.target.clone());
            let rto_ms = match (&fault.problem, fault.rto_first_success_ms) {
                (None, Some(rto_ms)) => rto_ms,
                (problem, _) => bail!(
                    "trial {}: {} not back after killing {killed}: {}",
                    index + 1,
                    node_label(args.node),
                    problem.as_deref().unwrap_or("no first success")
                ),
            };
            trials.push(Trial {
                killed,
                rto_ms,
                failed_requests: fault.failed_requests,
                timed_out_requests: fault.timed_out_requests,
                retried_requests: fault.retried_requests,
            });
        }
        let (p50, max) = report.rto_p50_and_max_ms();
        let duplicates = report.duplicate_transactions;
        Ok(Self {
            node: args.node,
            backend,
            rto_ms_p50: p50,
            rto_ms_max: max,
            failed_requests: trials.iter().map(|t| t.failed_requests).sum(),
            timed_out_requests: trials.iter().map(|t| t.timed_out_requests).sum(),
            trials,
            rejections: report.workload.rejections,
            failure_samples: report.workload.failure_samples,
            committed: report.workload.committed,
            lost_transactions: report.audit.acknowledged_missing,
            duplicate_transactions: duplicates,
            amounts_conserved: report.audit.amounts_conserved,
            audit_ok: report.audit.audit_ok && duplicates == 0,
        })
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

/// The fault a trial injects: kill -9 the active replica of the node (a participant: alice's,
/// whose transfers it serves), or of the sequencer instances each in turn.
fn planned_fault(node: TargetNode, trial: u64, sequencer_instances: usize) -> PlannedFault {
    let (fault, node) = match node {
        TargetNode::Participant => (
            Fault::ParticipantCrash,
            Fault::ParticipantCrash.default_node(),
        ),
        TargetNode::Mediator => (Fault::MediatorCrash, Node::Mediator),
        TargetNode::Topology => (Fault::TopologyCrash, Node::TopologyManager),
        TargetNode::Sequencer => {
            let instance = usize::try_from(trial).unwrap_or(0) % sequencer_instances.max(1);
            (Fault::SequencerCrash, Node::Sequencer { instance })
        }
    };
    PlannedFault { fault, node }
}
