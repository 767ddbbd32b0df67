//! `meridian bench ...`: benchmarks against real processes. Each prints a human summary, or
//! one JSON object with `--json`, and shows progress on stderr while it runs.

pub mod failover;
pub mod ledger;
pub mod sequencer;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// N senders and M subscribers against a real sequencer process.
    Sequencer(sequencer::SequencerBenchArgs),
    /// Three-participant IOU transfers against a whole deployment of real processes.
    Ledger(ledger::LedgerBenchArgs),
    /// Kill -9 the active replica of a node under load, N times: RTO, failed requests, audit.
    Failover(failover::FailoverBenchArgs),
}

pub async fn run(
    command: BenchCommand,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    match command {
        BenchCommand::Sequencer(args) => sequencer::run(args).await,
        BenchCommand::Ledger(args) => ledger::run(args, shutdown).await,
        BenchCommand::Failover(args) => failover::run(args, shutdown).await,
    }
}

/// Latency in milliseconds from a histogram of microseconds.
pub(crate) fn quantile_ms(histogram: &hdrhistogram::Histogram<u64>, quantile: f64) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    histogram.value_at_quantile(quantile) as f64 / 1_000.0
}

/// The median (the lower one of an even count) and the maximum of `values`, 0 when empty:
/// how failover benchmarks and drills summarise their recovery times.
pub(crate) fn median_and_max(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let median = values
        .get(values.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0.0);
    (median, values.last().copied().unwrap_or(0.0))
}
