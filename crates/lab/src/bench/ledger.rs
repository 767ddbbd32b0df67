//! `meridian bench ledger`: committed three-participant transfers per second and
//! `SubmitAndWait` latency, against a real deployment (every node a child process) on SQLite
//! or on a throwaway PostgreSQL server.

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::deployment::{Backend, DeploymentArgs, DeploymentSpec, Preset};
use crate::timed_run::{RunReport, WorkloadArgs};

#[derive(Debug, Clone, Args)]
pub struct LedgerBenchArgs {
    /// The deployment to measure (default: the `single` preset on SQLite).
    #[command(flatten)]
    pub deployment: DeploymentArgs,
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

pub async fn run(args: LedgerBenchArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let description = args.deployment.resolve(Preset::Single, None)?;
    let backend = description.storage.backend;
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let mut spec = DeploymentSpec::new(dir.path().to_path_buf(), description)?;
    // The server (if any) runs for as long as the deployment.
    let postgres = spec.start_postgres()?;
    let run = args.workload.timed_run(None);
    let report = run.run(&spec, postgres.as_ref(), shutdown).await?;
    if args.workload.json {
        println!(
            "{}",
            serde_json::to_string(&LedgerBenchReport::new(&args, backend, &report))?
        );
    } else {
        println!(
            "meridian bench ledger: {:?}, {} lanes, {} s, {}",
            backend,
            args.workload.lanes,
            args.workload.duration_s,
            args.workload
                .rate
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
            target_rate_per_s: args.workload.rate,
            report,
        }
    }
}
