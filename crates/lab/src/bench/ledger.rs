//! `meridian bench ledger`: committed three-participant transfers per second and
//! `SubmitAndWait` latency, against a real deployment (every node a child process) on SQLite
//! or on a throwaway PostgreSQL server.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::deployment::{Backend, DeploymentArgs, DeploymentSpec, Preset};
use crate::timed_run::{RunReport, TimedRun};

#[derive(Debug, Clone, Args)]
pub struct LedgerBenchArgs {
    /// The deployment to measure (default: the `single` preset on SQLite).
    #[command(flatten)]
    pub deployment: DeploymentArgs,
    /// Seconds of workload.
    #[arg(long = "duration", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration_s: u64,
    /// Concurrent transfer lanes.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub lanes: u64,
    /// Target transfers per second; absent means saturation.
    #[arg(long)]
    pub rate: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: LedgerBenchArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let description = args.deployment.resolve(Preset::Single, None)?;
    let backend = description.storage.backend;
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let mut spec = DeploymentSpec::new(dir.path().to_path_buf(), description)?;
    // The server (if any) runs for as long as the deployment.
    let postgres = spec.start_postgres()?;
    let run = TimedRun {
        lanes: args.lanes,
        duration: Duration::from_secs(args.duration_s),
        rate: args.rate,
        fault: None,
        json: args.json,
    };
    let report = run.run(&spec, postgres.as_ref(), shutdown).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&LedgerBenchReport::new(&args, backend, &report))?
        );
    } else {
        println!(
            "meridian bench ledger: {:?}, {} lanes, {} s, {}",
            backend,
            args.lanes,
            args.duration_s,
            args.rate
                .map(|r| format!("target {r}/s"))
                .unwrap_or_else(|| "saturation".into())
        );
        println!(
            "  committed transfers/s   {:>10.0}",
            report.workload.tx_per_s
        );
        println!(
            "  SubmitAndWait latency   p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
            report.workload.latency_p50_ms,
            report.workload.latency_p99_ms,
            report.workload.latency_max_ms
        );
        println!("  rejections              {:?}", report.workload.rejections);
        println!(
            "  audit                   {}",
            if report.audit.audit_ok {
                "OK"
            } else {
                "FAILED"
            }
        );
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct LedgerBenchReport<'a> {
    backend: Backend,
    target_rate_per_s: Option<u64>,
    #[serde(flatten)]
    report: &'a RunReport,
}

impl<'a> LedgerBenchReport<'a> {
    fn new(args: &LedgerBenchArgs, backend: Backend, report: &'a RunReport) -> Self {
        Self {
            backend,
            target_rate_per_s: args.rate,
            report,
        }
    }
}
