//! `meridian bench ledger`: committed three-participant transfers per second and
//! `SubmitAndWait` latency, against a real deployment (every node a child process) on SQLite
//! or on a throwaway PostgreSQL server — and, with `--replication`, on a PostgreSQL primary
//! with no standby, an asynchronous or a synchronous one, over standby links of several round
//! trips (`replication`), one table for the whole sweep.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::replication::{self, Cell, CellRuns, ReplicatedPostgres, SweepArgs};
use crate::deployment::{Backend, DeploymentArgs, DeploymentSpec, Description, Preset};
use crate::experiment::StageMean;
use crate::timed_run::{RunReport, TimedRun, WorkloadArgs};

#[derive(Debug, Clone, Args)]
pub struct LedgerBenchArgs {
    /// The deployment to measure (default: the `single` preset on SQLite).
    #[command(flatten)]
    pub deployment: DeploymentArgs,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub sweep: SweepArgs,
    /// Run the deployment and the workload in plaintext (`[tls] plaintext = true`) instead of
    /// TLS (with mutual TLS between nodes), to measure what TLS costs side by side.
    #[arg(long)]
    pub plaintext: bool,
}

pub async fn run(args: LedgerBenchArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    if args.plaintext {
        crate::tls::set_plaintext()?;
    }
    let description = args.deployment.resolve(Preset::Single, None)?;
    if let Some(replications) = &args.sweep.replication {
        let cells = Cell::all(replications, &args.sweep.standby_rtt_ms);
        return run_sweep(&args, description, &cells, shutdown).await;
    }
    let backend = description.storage.backend;
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let mut spec = DeploymentSpec::new(dir.path().to_path_buf(), description)?;
    spec.ledger_auth = true;
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
            rate_label(&args.workload)
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
        let per_stage = |figure: fn(&StageMean) -> f64| {
            let figures: Vec<String> = report
                .submission_stages
                .iter()
                .map(|m| format!("{} {:.1}", m.stage, figure(m)))
                .collect();
            figures.join(", ")
        };
        println!("  stage means (ms)        {}", per_stage(|m| m.mean_ms));
        println!("  stage p99s (ms)         {}", per_stage(|m| m.p99_ms));
        println!("  rejections              {:?}", report.workload.rejections);
        let peaks: Vec<String> = report
            .peak_rss_mib_by_role
            .iter()
            .map(|(role, mib)| format!("{role} {mib:.0}"))
            .collect();
        println!("  peak RSS (MiB)          {}", peaks.join(", "));
        let cpu: Vec<String> = report
            .cpu_ms_per_transfer_by_role
            .iter()
            .map(|(role, ms)| format!("{role} {ms:.3}"))
            .collect();
        match report.node_cpu_ms_per_transfer {
            Some(nodes) => println!(
                "  CPU per transfer (ms)   nodes {nodes:.3}: {}",
                cpu.join(", ")
            ),
            None => println!("  CPU per transfer (ms)   no transfer committed"),
        }
        if let (Some(ms), Some(busy), Some(steal)) = (
            report.machine_cpu_ms_per_transfer,
            report.machine_busy_percent,
            report.machine_steal_percent,
        ) {
            println!(
                "  machine CPU             {ms:.3} ms per transfer (every process and the kernel), \
                 CPUs {busy:.0} % busy, {steal:.0} % stolen"
            );
        }
        println!(
            "  offline marks (seq.)    {}",
            report.sequencer_peers_marked_offline
        );
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

fn rate_label(workload: &WorkloadArgs) -> String {
    workload
        .rate
        .map(|r| format!("target {r}/s"))
        .unwrap_or_else(|| "saturation".into())
}

/// Runs `spec`'s deployment with every node's database on `cluster`'s primary, and the
/// workload `run`: one measurement of a replication sweep (the standby's state is checked
/// around it by [`replication::sweep`]).
pub async fn measure_cell(
    mut spec: DeploymentSpec,
    cluster: &ReplicatedPostgres,
    run: &TimedRun,
    shutdown: CancellationToken,
) -> anyhow::Result<RunReport> {
    spec.use_postgres(cluster.primary());
    // The run injects no database fault, so it needs no handle on the servers.
    let report = run.run(&spec, None, shutdown).await?;
    if report.interrupted {
        anyhow::bail!("interrupted");
    }
    Ok(report)
}

/// The figures of one ledger run in a sweep.
#[derive(Debug, serde::Serialize)]
pub struct LedgerRun {
    pub committed: u64,
    pub tx_per_s: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub audit_ok: bool,
}

impl From<&RunReport> for LedgerRun {
    fn from(report: &RunReport) -> Self {
        Self {
            committed: report.workload.committed,
            tx_per_s: report.workload.tx_per_s,
            latency_p50_ms: report.workload.latency_p50_ms,
            latency_p99_ms: report.workload.latency_p99_ms,
            latency_max_ms: report.workload.latency_max_ms,
            audit_ok: report.audit.audit_ok,
        }
    }
}

/// `--replication`: refuses a backend that is not PostgreSQL before anything starts, then
/// measures every cell and prints one table (or one JSON object).
async fn run_sweep(
    args: &LedgerBenchArgs,
    description: Description,
    cells: &[Cell],
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if description.storage.backend != Backend::Postgres {
        anyhow::bail!(
            "--replication measures PostgreSQL streaming replication, but the deployment keeps \
             its state on {}; add --backend postgres",
            format!("{:?}", description.storage.backend).to_lowercase()
        );
    }
    let run = args.workload.timed_run(None);
    let json = args.workload.json;
    let mut say = |line: String| {
        if !json {
            eprintln!("{line}");
        }
    };
    let results = replication::sweep(cells, args.sweep.runs, &mut say, |cluster| {
        let (description, run, shutdown) = (description.clone(), run.clone(), shutdown.clone());
        measure_in_temp_dir(description, cluster, run, shutdown)
    })
    .await?;
    if json {
        let rows: Vec<_> = results
            .iter()
            .map(|row| JsonRow::new(&results, row))
            .collect();
        let report = serde_json::json!({
            "benchmark": "ledger",
            "lanes": args.workload.lanes,
            "duration_s": args.workload.duration_s,
            "target_rate_per_s": args.workload.rate,
            "runs_per_cell": args.sweep.runs,
            "cells": rows,
        });
        println!("{report}");
    } else {
        print_table(args, &results);
    }
    Ok(())
}

async fn measure_in_temp_dir(
    description: Description,
    cluster: Arc<ReplicatedPostgres>,
    run: TimedRun,
    shutdown: CancellationToken,
) -> anyhow::Result<LedgerRun> {
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let mut spec = DeploymentSpec::new(dir.path().to_path_buf(), description)?;
    spec.ledger_auth = true;
    let report = measure_cell(spec, &cluster, &run, shutdown).await?;
    Ok(LedgerRun::from(&report))
}

/// One cell's runs with the figures the table shows.
#[derive(serde::Serialize)]
struct JsonRow<'a> {
    #[serde(flatten)]
    runs: &'a CellRuns<LedgerRun>,
    median_tx_per_s: f64,
    median_latency_p50_ms: f64,
    median_latency_p99_ms: f64,
    /// For a `sync` cell: its median throughput over the `async` cell's on the same link.
    sync_over_async: Option<f64>,
}

impl<'a> JsonRow<'a> {
    fn new(all: &[CellRuns<LedgerRun>], runs: &'a CellRuns<LedgerRun>) -> Self {
        let median =
            |f: fn(&LedgerRun) -> f64| replication::median(runs.runs.iter().map(|m| f(&m.result)));
        Self {
            runs,
            median_tx_per_s: median(|r| r.tx_per_s),
            median_latency_p50_ms: median(|r| r.latency_p50_ms),
            median_latency_p99_ms: median(|r| r.latency_p99_ms),
            sync_over_async: replication::sync_over_async(all, runs, |r| r.tx_per_s),
        }
    }
}

fn print_table(args: &LedgerBenchArgs, results: &[CellRuns<LedgerRun>]) {
    println!(
        "meridian bench ledger: PostgreSQL, {} lanes, {} s per run, {}, {} run(s) per cell (medians)",
        args.workload.lanes,
        args.workload.duration_s,
        rate_label(&args.workload),
        args.sweep.runs
    );
    println!(
        "  {:<11} {:<12} {:>8} {:>13} {:>8} {:>8}  {:<7} {:>10}",
        "replication", "standby link", "tx/s", "range", "p50 ms", "p99 ms", "audit", "sync/async"
    );
    for row in results {
        let json = JsonRow::new(results, row);
        let failed = row.runs.iter().filter(|m| !m.result.audit_ok).count();
        let audit = if failed == 0 {
            "OK".to_owned()
        } else {
            format!("{failed} FAILED")
        };
        println!(
            "  {:<11} {:<12} {:>8.0} {:>13} {:>8.1} {:>8.1}  {:<7} {:>10}",
            row.cell.replication.to_string(),
            row.cell.link_label(),
            json.median_tx_per_s,
            replication::range(row.runs.iter().map(|m| m.result.tx_per_s)),
            json.median_latency_p50_ms,
            json.median_latency_p99_ms,
            audit,
            json.sync_over_async
                .map(|r| format!("{:.0} %", r * 100.0))
                .unwrap_or_default()
        );
    }
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
