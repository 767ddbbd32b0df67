//! `meridian bench pgbench`: what PostgreSQL itself shows on the same clusters as
//! `bench ledger --replication` (same primary settings, same standby, same delaying proxy):
//! the distribution's `pgbench` with N clients committing one-row INSERT transactions for a
//! fixed time, its tps and average latency per cell. The baseline Meridian's figures are read
//! against: plain PostgreSQL pays one standby round trip per commit.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::replication::{
    self, blocking, Cell, CellRuns, ReplicatedPostgres, Replication, SweepArgs,
};

/// The database pgbench writes to, created on every fresh primary.
const DATABASE: &str = "bench";
/// One transaction of the workload: a one-row INSERT (pgbench wraps nothing around it, so in
/// autocommit it is one commit).
const SCRIPT: &str = "INSERT INTO bench_rows (client, v) VALUES (:client_id, 1);\n";

#[derive(Debug, Clone, Args)]
pub struct PgbenchArgs {
    #[command(flatten)]
    pub sweep: SweepArgs,
    /// Concurrent pgbench clients (each its own connection).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub clients: u64,
    /// Seconds of pgbench per run.
    #[arg(long = "duration", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration_s: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// What one pgbench run reported.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PgbenchRun {
    /// Committed transactions per second, without the initial connection time.
    pub tps: f64,
    pub latency_average_ms: f64,
    pub transactions: u64,
    /// Transactions pgbench counted as failed (0 unless the server refused some).
    pub failed: u64,
}

pub async fn run(args: PgbenchArgs) -> anyhow::Result<()> {
    let replications = args
        .sweep
        .replication
        .clone()
        .unwrap_or_else(|| vec![Replication::None]);
    let cells = Cell::all(&replications, &args.sweep.standby_rtt_ms);
    // Found before anything starts, so a missing binary is the first thing said.
    let pgbench = pgbench_binary()?;
    let json = args.json;
    let mut say = |line: String| {
        if !json {
            eprintln!("{line}");
        }
    };
    let results = replication::sweep(&cells, args.sweep.runs, &mut say, |cluster| {
        measure(pgbench.clone(), cluster, args.clients, args.duration_s)
    })
    .await?;
    if json {
        let rows: Vec<_> = results
            .iter()
            .map(|row| JsonRow::new(&results, row))
            .collect();
        let report = serde_json::json!({
            "benchmark": "pgbench",
            "clients": args.clients,
            "duration_s": args.duration_s,
            "runs_per_cell": args.sweep.runs,
            "cells": rows,
        });
        println!("{report}");
    } else {
        print_table(&args, &results);
    }
    Ok(())
}

/// The `pgbench` beside the server binaries pgserver runs.
fn pgbench_binary() -> anyhow::Result<PathBuf> {
    let path = meridian_pgserver::find_bin_dir()?.join("pgbench");
    if !path.is_file() {
        anyhow::bail!(
            "{} not found; it ships with the PostgreSQL server package (postgresql)",
            path.display()
        );
    }
    Ok(path)
}

/// One pgbench run against `cluster`'s primary: a fresh database and table, then
/// `duration_s` of one-row INSERTs from `clients` connections.
async fn measure(
    pgbench: PathBuf,
    cluster: Arc<ReplicatedPostgres>,
    clients: u64,
    duration_s: u64,
) -> anyhow::Result<PgbenchRun> {
    blocking(move || {
        let primary = cluster.primary();
        primary.psql("postgres", &format!("CREATE DATABASE {DATABASE}"))?;
        primary.psql(
            DATABASE,
            "CREATE TABLE bench_rows (id bigserial PRIMARY KEY, client integer NOT NULL, \
             v integer NOT NULL)",
        )?;
        let dir = tempfile::tempdir().context("creating a temp dir for the pgbench script")?;
        let script = dir.path().join("insert.sql");
        std::fs::write(&script, SCRIPT).context("writing the pgbench script")?;
        let output = Command::new(&pgbench)
            // No vacuum of pgbench's own tables, which this script does not use.
            .arg("-n")
            .args(["-c", &clients.to_string(), "-j", &clients.to_string()])
            .args(["-T", &duration_s.to_string()])
            .arg("-f")
            .arg(&script)
            .args(["-h", "127.0.0.1", "-U", "meridian", "-p"])
            .arg(primary.port().to_string())
            .arg(DATABASE)
            .output()
            .with_context(|| format!("running {}", pgbench.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            anyhow::bail!(
                "pgbench failed ({}): {}{}",
                output.status,
                stdout,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        parse_output(&stdout)
    })
    .await
}

/// The figures of pgbench's summary.
fn parse_output(stdout: &str) -> anyhow::Result<PgbenchRun> {
    let field = |prefix: &str| -> anyhow::Result<&str> {
        stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .with_context(|| format!("no {prefix:?} in pgbench's output:\n{stdout}"))
    };
    let number = |prefix: &str| -> anyhow::Result<f64> {
        let text = field(prefix)?;
        text.parse()
            .with_context(|| format!("pgbench's {prefix:?} is not a number: {text:?}"))
    };
    let count = |prefix: &str| -> anyhow::Result<u64> {
        let text = field(prefix)?;
        text.parse()
            .with_context(|| format!("pgbench's {prefix:?} is not a count: {text:?}"))
    };
    Ok(PgbenchRun {
        tps: number("tps = ")?,
        latency_average_ms: number("latency average = ")?,
        transactions: count("number of transactions actually processed: ")?,
        // Older pgbench versions do not print it; they have no failed transactions to count.
        failed: count("number of failed transactions: ").unwrap_or(0),
    })
}

#[derive(serde::Serialize)]
struct JsonRow<'a> {
    #[serde(flatten)]
    runs: &'a CellRuns<PgbenchRun>,
    median_tps: f64,
    median_latency_average_ms: f64,
    /// For a `sync` cell: its median tps over the `async` cell's on the same link.
    sync_over_async: Option<f64>,
}

impl<'a> JsonRow<'a> {
    fn new(all: &[CellRuns<PgbenchRun>], runs: &'a CellRuns<PgbenchRun>) -> Self {
        Self {
            runs,
            median_tps: replication::median(runs.runs.iter().map(|m| m.result.tps)),
            median_latency_average_ms: replication::median(
                runs.runs.iter().map(|m| m.result.latency_average_ms),
            ),
            sync_over_async: replication::sync_over_async(all, runs, |r| r.tps),
        }
    }
}

fn print_table(args: &PgbenchArgs, results: &[CellRuns<PgbenchRun>]) {
    println!(
        "meridian bench pgbench: {} clients, one-row INSERT transactions, {} s per run, {} run(s) per cell (medians)",
        args.clients, args.duration_s, args.sweep.runs
    );
    println!(
        "  {:<11} {:<12} {:>8} {:>13} {:>12} {:>7} {:>10}",
        "replication", "standby link", "tps", "range", "latency avg", "failed", "sync/async"
    );
    for row in results {
        let json = JsonRow::new(results, row);
        println!(
            "  {:<11} {:<12} {:>8.0} {:>13} {:>9.3} ms {:>7} {:>10}",
            row.cell.replication.to_string(),
            row.cell.link_label(),
            json.median_tps,
            replication::range(row.runs.iter().map(|m| m.result.tps)),
            json.median_latency_average_ms,
            row.runs.iter().map(|m| m.result.failed).sum::<u64>(),
            json.sync_over_async
                .map(|r| format!("{:.0} %", r * 100.0))
                .unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pgbench 15's summary, as it prints it.
    const OUTPUT: &str = "\
transaction type: /tmp/x/insert.sql
scaling factor: 1
query mode: simple
number of clients: 4
number of threads: 4
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 23093
number of failed transactions: 0 (0.000%)
latency average = 1.732 ms
initial connection time = 6.123 ms
tps = 2309.412345 (without initial connection time)
";

    #[test]
    fn parses_the_summary() {
        assert_eq!(
            parse_output(OUTPUT).unwrap(),
            PgbenchRun {
                tps: 2309.412345,
                latency_average_ms: 1.732,
                transactions: 23093,
                failed: 0,
            }
        );
    }

    #[test]
    fn a_summary_without_tps_is_an_error_naming_it() {
        let error = parse_output("latency average = 1.0 ms\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("tps = "), "{error}");
    }
}
