//! `meridian bench lb`: what the HAProxy load balancer costs an application — the same
//! deployment shape at the same fixed transfer rate, run alternately without and with HAProxy
//! in front of the participants, and the `SubmitAndWait` latency of each round side by side.
//!
//! Each round is a fresh deployment (so a round starts from the same state whichever arm it
//! is), and the arms alternate — without, with, without, with — so that noise from a machine
//! that gets busier or quieter over the run hits both. Without HAProxy the clients list every
//! replica's endpoint; with it, they know the one frontend address of each participant
//! (`Deployment::ledger_endpoints`). What is compared is the per-round pairs: the median of
//! (with − without) for p50 and p99, which a single slow round cannot swing the way it swings
//! a difference of means. Every round is audited (RPO 0: no acknowledged transaction missing;
//! no IOU twice), and a failed audit fails the command after the table is printed.
//!
//! The failover side of the comparison (what HAProxy saves or costs when the active replica
//! dies) is `bench failover --compare-load-balancer` (`super::failover`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use meridian_core::UserId;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::deployment::{Backend, DeploymentArgs, DeploymentSpec, Description, Preset};
use crate::experiment::{Experiment, Quiet};
use crate::workload::LoadSpec;

/// What HAProxy may add to `SubmitAndWait` p99 (issue 13's target).
pub const TARGET_ADDED_P99_MS: f64 = 1.0;

#[derive(Debug, Clone, Args)]
pub struct LbBenchArgs {
    /// The deployment to measure (default: the `single` preset on SQLite). Its
    /// `[load_balancer]` table, if any, is used for the rounds with HAProxy and removed for
    /// the others; `--load-balancer` is implied.
    #[command(flatten)]
    pub deployment: DeploymentArgs,
    /// Rounds of each arm (without and with HAProxy), run alternately.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    pub rounds: u64,
    /// Seconds of transfer workload per round.
    #[arg(long = "duration", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub duration_s: u64,
    /// Concurrent transfer lanes (each owns one IOU).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub lanes: u64,
    /// Target transfers per second, the same in every round: a latency comparison needs the
    /// same load on both arms, which saturation would not give.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub rate: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The two arms of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    /// Clients list every replica's endpoint themselves.
    Direct,
    /// Clients know one HAProxy frontend per participant.
    Haproxy,
}

impl Arm {
    pub fn label(self) -> &'static str {
        match self {
            Arm::Direct => "without HAProxy",
            Arm::Haproxy => "through HAProxy",
        }
    }

    /// `description` as this arm runs it: with a `[load_balancer]` (the description's own,
    /// else one on free ports) or without any.
    pub fn apply(self, mut description: Description) -> Description {
        match self {
            Arm::Direct => description.load_balancer = None,
            Arm::Haproxy => {
                description
                    .load_balancer
                    .get_or_insert_with(Default::default);
            }
        }
        description
    }
}

/// One round: one fresh deployment, one arm.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// From 1, in the order run.
    pub round: u64,
    pub arm: Arm,
    pub committed: u64,
    pub tx_per_s: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub failed_requests: u64,
    pub retried_requests: u64,
    /// Acknowledged transactions missing afterwards on an informee participant.
    pub lost_transactions: usize,
    pub duplicate_transactions: usize,
    pub audit_ok: bool,
}

/// Medians of one arm's rounds.
#[derive(Debug, Clone, Serialize)]
pub struct ArmSummary {
    pub arm: Arm,
    pub rounds: usize,
    pub median_tx_per_s: f64,
    pub median_latency_p50_ms: f64,
    pub median_latency_p99_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct LbBenchReport {
    pub benchmark: &'static str,
    pub backend: Backend,
    pub lanes: u64,
    pub duration_s: u64,
    pub target_rate_per_s: u64,
    pub rounds: Vec<Round>,
    pub arms: [ArmSummary; 2],
    /// Median over round pairs of (with HAProxy − without) p50, in ms.
    pub added_p50_ms: f64,
    /// Median over round pairs of (with HAProxy − without) p99, in ms.
    pub added_p99_ms: f64,
    pub target_added_p99_ms: f64,
    pub target_met: bool,
    pub audit_ok: bool,
}

pub async fn run(args: LbBenchArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the meridian binary")?;
    let json = args.json;
    let report = measure_with(
        &args,
        exe,
        &mut |line| {
            if !json {
                eprintln!("  {line}");
            }
        },
        &shutdown,
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    if !report.audit_ok {
        bail!("the audit of a round failed (see the audit column)");
    }
    Ok(())
}

/// Runs the rounds with the nodes run by the `meridian` binary at `exe` (tests pass theirs);
/// `say` gets a line per round as it ends.
pub async fn measure_with(
    args: &LbBenchArgs,
    exe: PathBuf,
    say: &mut dyn FnMut(String),
    shutdown: &CancellationToken,
) -> anyhow::Result<LbBenchReport> {
    let description = args.deployment.resolve(Preset::Single, None)?;
    // HAProxy must be there before a single round runs, not found missing halfway through.
    meridian_lb::haproxy::binary()?;
    let backend = description.storage.backend;
    let mut rounds = Vec::new();
    for index in 0..args.rounds * 2 {
        if shutdown.is_cancelled() {
            bail!("interrupted");
        }
        // Without first: A/B/A/B.
        let arm = if index % 2 == 0 {
            Arm::Direct
        } else {
            Arm::Haproxy
        };
        let round = measure_round(args, index + 1, arm, &description, &exe, shutdown)
            .await
            .with_context(|| format!("round {} ({})", index + 1, arm.label()))?;
        say(format!(
            "round {} {}: {:.0} tx/s, p50 {:.2} ms, p99 {:.2} ms, audit {}",
            round.round,
            arm.label(),
            round.tx_per_s,
            round.latency_p50_ms,
            round.latency_p99_ms,
            audit_label(round.audit_ok)
        ));
        rounds.push(round);
    }
    Ok(LbBenchReport::new(args, backend, rounds))
}

async fn measure_round(
    args: &LbBenchArgs,
    number: u64,
    arm: Arm,
    description: &Description,
    exe: &std::path::Path,
    shutdown: &CancellationToken,
) -> anyhow::Result<Round> {
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let mut spec = DeploymentSpec {
        exe: exe.to_path_buf(),
        ledger_auth: true,
        ..DeploymentSpec::new(dir.path().to_path_buf(), arm.apply(description.clone()))?
    };
    // The server (if any) runs for as long as the deployment.
    let postgres = spec.start_postgres()?;
    let experiment = Experiment {
        load: LoadSpec {
            user: UserId::new("lb-bench")?,
            backoff: meridian_client::Backoff::default(),
            lanes: usize::try_from(args.lanes)?,
            run: format!("lb{number}x{}", std::process::id()),
            rate: Some(args.rate),
            duration: Some(Duration::from_secs(args.duration_s)),
        },
        steps: Vec::new(),
    };
    let report = experiment
        .run_on(&spec, postgres.as_ref(), &mut |_| {}, &mut Quiet, shutdown)
        .await?;
    if report.interrupted {
        bail!("interrupted");
    }
    let lost = report.audit.acknowledged_missing;
    let duplicates = report.duplicate_transactions;
    Ok(Round {
        round: number,
        arm,
        committed: report.workload.committed,
        tx_per_s: report.workload.tx_per_s,
        latency_p50_ms: report.workload.latency_p50_ms,
        latency_p99_ms: report.workload.latency_p99_ms,
        latency_max_ms: report.workload.latency_max_ms,
        failed_requests: report.failed_requests,
        retried_requests: report.retried_requests,
        lost_transactions: lost,
        duplicate_transactions: duplicates,
        audit_ok: report.audit.audit_ok && lost == 0 && duplicates == 0,
    })
}

impl LbBenchReport {
    fn new(args: &LbBenchArgs, backend: Backend, rounds: Vec<Round>) -> Self {
        let summary = |arm: Arm| {
            let of_arm: Vec<&Round> = rounds.iter().filter(|r| r.arm == arm).collect();
            let median = |f: fn(&Round) -> f64| median(of_arm.iter().map(|r| f(r)).collect());
            ArmSummary {
                arm,
                rounds: of_arm.len(),
                median_tx_per_s: median(|r| r.tx_per_s),
                median_latency_p50_ms: median(|r| r.latency_p50_ms),
                median_latency_p99_ms: median(|r| r.latency_p99_ms),
            }
        };
        let added_p50_ms = median_pair_difference(&rounds, |r| r.latency_p50_ms);
        let added_p99_ms = median_pair_difference(&rounds, |r| r.latency_p99_ms);
        Self {
            benchmark: "lb",
            backend,
            lanes: args.lanes,
            duration_s: args.duration_s,
            target_rate_per_s: args.rate,
            arms: [summary(Arm::Direct), summary(Arm::Haproxy)],
            added_p50_ms,
            added_p99_ms,
            target_added_p99_ms: TARGET_ADDED_P99_MS,
            target_met: added_p99_ms <= TARGET_ADDED_P99_MS,
            audit_ok: rounds.iter().all(|r| r.audit_ok),
            rounds,
        }
    }
}

/// The median of `values` (the mean of the two middle ones of an even count), 0 when empty.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The median over consecutive (without, with) pairs of rounds of `with − without`.
fn median_pair_difference(rounds: &[Round], figure: fn(&Round) -> f64) -> f64 {
    let differences = rounds
        .chunks_exact(2)
        .filter_map(|pair| match (pair[0].arm, pair[1].arm) {
            (Arm::Direct, Arm::Haproxy) => Some(figure(&pair[1]) - figure(&pair[0])),
            _ => None,
        })
        .collect();
    median(differences)
}

fn audit_label(ok: bool) -> &'static str {
    if ok {
        "OK"
    } else {
        "FAILED"
    }
}

fn print_table(report: &LbBenchReport) {
    println!(
        "meridian bench lb: {:?}, {} lanes, {} s per round at {}/s, {} round(s) per arm, alternating",
        report.backend,
        report.lanes,
        report.duration_s,
        report.target_rate_per_s,
        report.arms[0].rounds
    );
    println!(
        "  {:>5}  {:<16} {:>8} {:>9} {:>9} {:>9} {:>7} {:>8}  audit",
        "round", "arm", "tx/s", "p50 ms", "p99 ms", "max ms", "failed", "retried"
    );
    for round in &report.rounds {
        println!(
            "  {:>5}  {:<16} {:>8.1} {:>9.2} {:>9.2} {:>9.1} {:>7} {:>8}  {}",
            round.round,
            round.arm.label(),
            round.tx_per_s,
            round.latency_p50_ms,
            round.latency_p99_ms,
            round.latency_max_ms,
            round.failed_requests,
            round.retried_requests,
            if round.audit_ok {
                "OK".to_owned()
            } else {
                format!(
                    "FAILED (lost {}, duplicates {})",
                    round.lost_transactions, round.duplicate_transactions
                )
            }
        );
    }
    for arm in &report.arms {
        println!(
            "  median {:<16} {:>8.1} tx/s   p50 {:.2} ms   p99 {:.2} ms",
            arm.arm.label(),
            arm.median_tx_per_s,
            arm.median_latency_p50_ms,
            arm.median_latency_p99_ms
        );
    }
    println!(
        "  HAProxy adds (median of round pairs): p50 {:+.2} ms, p99 {:+.2} ms; target p99 ≤ {} ms: {}",
        report.added_p50_ms,
        report.added_p99_ms,
        report.target_added_p99_ms,
        if report.target_met { "met" } else { "MISSED" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(number: u64, arm: Arm, p99: f64) -> Round {
        Round {
            round: number,
            arm,
            committed: 1,
            tx_per_s: 1.0,
            latency_p50_ms: p99 / 2.0,
            latency_p99_ms: p99,
            latency_max_ms: p99,
            failed_requests: 0,
            retried_requests: 0,
            lost_transactions: 0,
            duplicate_transactions: 0,
            audit_ok: true,
        }
    }

    #[test]
    fn the_added_latency_is_the_median_of_the_round_pairs() {
        // Pairs: +1, +0.5, +10 (a noisy round) → the median is +1, not the mean's +3.83.
        let rounds = vec![
            round(1, Arm::Direct, 10.0),
            round(2, Arm::Haproxy, 11.0),
            round(3, Arm::Direct, 12.0),
            round(4, Arm::Haproxy, 12.5),
            round(5, Arm::Direct, 10.0),
            round(6, Arm::Haproxy, 20.0),
        ];
        assert_eq!(median_pair_difference(&rounds, |r| r.latency_p99_ms), 1.0);
        assert_eq!(median_pair_difference(&rounds, |r| r.latency_p50_ms), 0.5);
        assert_eq!(median(vec![3.0, 1.0]), 2.0);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[test]
    fn the_arms_add_and_remove_the_load_balancer() {
        let description = Description::preset(Preset::Single);
        assert!(Arm::Haproxy
            .apply(description.clone())
            .load_balancer
            .is_some());
        let with = Arm::Haproxy.apply(description);
        assert!(Arm::Direct.apply(with).load_balancer.is_none());
    }
}
