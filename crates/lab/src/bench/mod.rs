//! `meridian bench ...`: benchmarks against real processes. Each prints a human summary, or
//! one JSON object with `--json`, and shows progress on stderr while it runs.

pub mod cost;
pub mod failover;
pub mod lb;
pub mod lb_failover;
pub mod ledger;
pub mod pgbench;
pub mod replication;
pub mod sequencer;
pub mod standby;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// N senders and M subscribers against a real sequencer process.
    Sequencer(sequencer::SequencerBenchArgs),
    /// Three-participant IOU transfers against a whole deployment of real processes.
    Ledger(ledger::LedgerBenchArgs),
    /// Kill -9 the active replica of a node under load, N times: RTO, failed requests, audit
    /// (`--standby cold`: its host lost, the controller starts the cold replica; with the
    /// split and what each replica costs).
    Failover(failover::FailoverCommand),
    /// What HAProxy in front of the participants costs: the same deployment at the same
    /// `--rate`, rounds alternately without and with it, `SubmitAndWait` p50/p99 side by side.
    Lb(lb::LbBenchArgs),
    /// The distribution's pgbench (one-row INSERTs) on the same replicated clusters as
    /// `bench ledger --replication`: what PostgreSQL itself shows.
    Pgbench(pgbench::PgbenchArgs),
}

pub async fn run(
    command: BenchCommand,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    match command {
        BenchCommand::Sequencer(args) => sequencer::run(args).await,
        BenchCommand::Ledger(args) => ledger::run(args, shutdown).await,
        BenchCommand::Failover(args) => failover::run(args, shutdown).await,
        BenchCommand::Lb(args) => lb::run(args, shutdown).await,
        BenchCommand::Pgbench(args) => pgbench::run(args).await,
    }
}
