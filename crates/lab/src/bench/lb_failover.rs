//! `meridian bench failover --compare-load-balancer`: the kill -9 failover of a participant's
//! active replica as applications see it, with the clients' own list of every replica's
//! endpoint against through HAProxy (one address per participant), in one invocation.
//!
//! Each arm is the warm failover bench (`super::failover`) on the same deployment shape, the
//! `[load_balancer]` removed for one arm and present for the other; the arms' deployments run
//! alternately (without, with, without, with... `--rounds` of each), each with `--trials`
//! kills, so that a machine getting busier hits both. Per arm: RTO (kill to the first
//! `SubmitAndWait` sent after it that commits) p50 and p99 over all its trials, the requests
//! that failed after the client's retries and those it retried, and the audit (no
//! acknowledged transaction lost, no IOU twice). Through HAProxy the client has one address,
//! so its own failover is gone: what remains is HAProxy's — its health check marking the new
//! active replica up (`HealthChecks`) and its retry of a request whose connection failed.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::failover::{self, FailoverBenchArgs, FailoverReport, TargetNode, Trial};
use super::lb::Arm;
use anyhow::{bail, Context};

/// Issue 13's target for a participant failover through HAProxy.
pub const TARGET_RTO_P99_MS: f64 = 500.0;

/// One arm's trials over all its rounds.
#[derive(Debug, Serialize)]
pub struct ArmFailover {
    pub arm: Arm,
    pub trials: Vec<Trial>,
    pub rto_ms_p50: f64,
    /// Nearest rank: with fewer than 100 trials, the largest.
    pub rto_ms_p99: f64,
    pub failed_requests: u64,
    pub retried_requests: u64,
    /// Failed attempts by status, over all its rounds.
    pub rejections: BTreeMap<String, u64>,
    /// The first few failures' messages of each round, to say why.
    pub failure_samples: Vec<String>,
    pub committed: u64,
    pub lost_transactions: usize,
    pub duplicate_transactions: usize,
    pub audit_ok: bool,
}

#[derive(Debug, Serialize)]
pub struct CompareReport {
    pub benchmark: &'static str,
    pub rounds_per_arm: u64,
    pub trials_per_round: u64,
    pub arms: [ArmFailover; 2],
    pub target_rto_p99_ms: f64,
    /// Through HAProxy: RTO p99 within the target and no failed request.
    pub target_met: bool,
}

pub async fn run(
    args: &FailoverBenchArgs,
    rounds: u64,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the meridian binary")?;
    let report = measure_with(args, rounds, exe, shutdown).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    if !report.arms.iter().all(|a| a.audit_ok) {
        bail!("the audit after the failovers failed");
    }
    Ok(())
}

/// Both arms, alternately, with the nodes run by the `meridian` binary at `exe`.
pub async fn measure_with(
    args: &FailoverBenchArgs,
    rounds: u64,
    exe: std::path::PathBuf,
    shutdown: &CancellationToken,
) -> anyhow::Result<CompareReport> {
    if args.node != TargetNode::Participant {
        bail!(
            "--compare-load-balancer: HAProxy fronts the participants' Ledger API, so only \
             --node participant tells the arms apart"
        );
    }
    if args.deployment.load_balancer.is_some() {
        bail!("--compare-load-balancer runs with and without HAProxy; leave out --load-balancer");
    }
    let description = failover::resolve(args)?;
    meridian_lb::haproxy::binary()?;
    let mut reports: [Vec<FailoverReport>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (slot, arm) in [Arm::Direct, Arm::Haproxy].into_iter().enumerate() {
            if shutdown.is_cancelled() {
                bail!("interrupted");
            }
            if !args.json {
                eprintln!("round {} of {rounds}: {}", round + 1, arm.label());
            }
            let report = failover::measure_description(
                args,
                arm.apply(description.clone()),
                exe.clone(),
                shutdown.clone(),
            )
            .await
            .with_context(|| format!("round {} {}", round + 1, arm.label()))?;
            reports[slot].push(report);
        }
    }
    let [direct, haproxy] = reports;
    let arms = [
        ArmFailover::new(Arm::Direct, direct),
        ArmFailover::new(Arm::Haproxy, haproxy),
    ];
    let through = &arms[1];
    Ok(CompareReport {
        benchmark: "failover-load-balancer",
        rounds_per_arm: rounds,
        trials_per_round: args.trials,
        target_rto_p99_ms: TARGET_RTO_P99_MS,
        target_met: through.rto_ms_p99 <= TARGET_RTO_P99_MS && through.failed_requests == 0,
        arms,
    })
}

impl ArmFailover {
    fn new(arm: Arm, reports: Vec<FailoverReport>) -> Self {
        let trials: Vec<Trial> = reports.iter().flat_map(|r| r.trials.clone()).collect();
        let [p50, p99] =
            crate::stats::quantiles(trials.iter().map(|t| t.rto_ms).collect(), [0.5, 0.99]);
        let mut rejections = BTreeMap::new();
        for (status, count) in reports.iter().flat_map(|r| &r.rejections) {
            *rejections.entry(status.clone()).or_insert(0) += count;
        }
        Self {
            arm,
            rejections,
            failure_samples: reports
                .iter()
                .flat_map(|r| r.failure_samples.iter().cloned())
                .take(crate::workload::MAX_FAILURE_SAMPLES)
                .collect(),
            rto_ms_p50: p50,
            rto_ms_p99: p99,
            failed_requests: trials.iter().map(|t| t.failed_requests).sum(),
            retried_requests: trials.iter().map(|t| t.retried_requests).sum(),
            committed: reports.iter().map(|r| r.committed).sum(),
            lost_transactions: reports.iter().map(|r| r.lost_transactions).sum(),
            duplicate_transactions: reports.iter().map(|r| r.duplicate_transactions).sum(),
            audit_ok: reports.iter().all(|r| r.audit_ok),
            trials,
        }
    }
}

fn print_report(report: &CompareReport) {
    println!(
        "meridian bench failover --compare-load-balancer: kill -9 the active participant replica, \
         {} round(s) of {} trial(s) per arm, alternating",
        report.rounds_per_arm, report.trials_per_round
    );
    for arm in &report.arms {
        let rtos: Vec<String> = arm
            .trials
            .iter()
            .map(|t| format!("{:.0}", t.rto_ms))
            .collect();
        println!(
            "  {:<16} RTO per trial (ms): {}",
            arm.arm.label(),
            rtos.join(" ")
        );
    }
    println!(
        "  {:<16} {:>11} {:>11} {:>7} {:>8} {:>10} {:>5} {:>5}  audit",
        "arm", "RTO p50 ms", "RTO p99 ms", "failed", "retried", "committed", "lost", "dup"
    );
    for arm in &report.arms {
        println!(
            "  {:<16} {:>11.0} {:>11.0} {:>7} {:>8} {:>10} {:>5} {:>5}  {}",
            arm.arm.label(),
            arm.rto_ms_p50,
            arm.rto_ms_p99,
            arm.failed_requests,
            arm.retried_requests,
            arm.committed,
            arm.lost_transactions,
            arm.duplicate_transactions,
            if arm.audit_ok { "OK" } else { "FAILED" }
        );
    }
    for arm in &report.arms {
        if !arm.rejections.is_empty() {
            println!(
                "  {:<16} failed attempts: {:?}",
                arm.arm.label(),
                arm.rejections
            );
        }
        for sample in &arm.failure_samples {
            println!("  {:<16} failure: {sample}", arm.arm.label());
        }
    }
    println!(
        "  target through HAProxy: RTO p99 ≤ {:.0} ms with 0 failed requests: {}",
        report.target_rto_p99_ms,
        if report.target_met { "met" } else { "MISSED" }
    );
}
