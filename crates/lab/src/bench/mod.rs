//! `meridian bench ...`: benchmarks against real processes. Each prints a human summary, or
//! one JSON object with `--json`, and shows progress on stderr while it runs; `compare` runs
//! one of them with two binaries and prints the ratio.

pub mod compare;
pub mod cost;
pub mod failover;
pub mod lb;
pub mod lb_failover;
pub mod ledger;
pub mod pgbench;
pub mod replication;
pub mod sequencer;
pub mod standby;

use anyhow::bail;
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use failover::FailoverBenchArgs;
use standby::{ColdOptions, StandbyKind};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// N senders and M subscribers against a real sequencer process.
    Sequencer(sequencer::SequencerBenchArgs),
    /// Three-participant IOU transfers against a whole deployment of real processes.
    Ledger(ledger::LedgerBenchArgs),
    /// Kill -9 the active replica of a node under load, N times: RTO, failed requests, audit
    /// (`--standby cold`: its host lost, the controller starts the cold replica; with the
    /// split and what each replica costs).
    Failover(FailoverCommand),
    /// What HAProxy in front of the participants costs: the same deployment at the same
    /// `--rate`, rounds alternately without and with it, `SubmitAndWait` p50/p99 side by side.
    Lb(lb::LbBenchArgs),
    /// The distribution's pgbench (one-row INSERTs) on the same replicated clusters as
    /// `bench ledger --replication`: what PostgreSQL itself shows.
    Pgbench(pgbench::PgbenchArgs),
    /// Run `bench ledger` or `bench sequencer` with two binaries, alternately, N rounds:
    /// each round's figure per side, candidate/baseline, the medians.
    Compare(compare::CompareArgs),
}

pub async fn run(command: BenchCommand, shutdown: CancellationToken) -> anyhow::Result<()> {
    match command {
        BenchCommand::Sequencer(args) => sequencer::run(args).await,
        BenchCommand::Ledger(args) => ledger::run(args, shutdown).await,
        BenchCommand::Failover(args) => run_failover(args, shutdown).await,
        BenchCommand::Lb(args) => lb::run(args, shutdown).await,
        BenchCommand::Pgbench(args) => pgbench::run(args).await,
        BenchCommand::Compare(args) => compare::run(args, shutdown).await,
    }
}

/// `meridian bench failover`: the warm bench's arguments, and which standby the target node
/// has (`--standby cold`: see [`super::standby`]).
#[derive(Debug, Clone, Args)]
pub struct FailoverCommand {
    #[command(flatten)]
    pub bench: FailoverBenchArgs,
    /// The target node's standby: `warm`, a passive replica that takes over by the lease (no
    /// controller); `cold`, a replica that does not run until `meridian controller` starts it
    /// (each trial a fresh deployment under a controller, SQLite only).
    #[arg(long, value_enum, default_value = "warm")]
    pub standby: StandbyKind,
    /// With `--standby cold`: the deployment's `[controller] crash_loop_restarts`, the failed
    /// restarts in place of the lost replica before the controller gives it up and starts
    /// the cold one (default: the deployment's, 5).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub crash_loop_restarts: Option<u32>,
    /// Run the trials twice over, alternately: with the clients' own list of every replica's
    /// endpoint, and through HAProxy in front of the participants (clients then know one
    /// address per participant); RTO p50/p99 and failed/retried requests per arm. Warm
    /// standby, participant only.
    #[arg(long)]
    pub compare_load_balancer: bool,
    /// With `--compare-load-balancer`: deployments per arm, each running `--trials` trials,
    /// in the order without, with, without, with...
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10))]
    pub rounds: u64,
}

/// `meridian bench failover`: the warm bench, the cold one (`standby`), or both arms of the
/// load balancer comparison (`lb_failover`). Dispatched here, so that none of those modules
/// imports another's entry point.
async fn run_failover(command: FailoverCommand, shutdown: CancellationToken) -> anyhow::Result<()> {
    if command.compare_load_balancer {
        if command.standby != StandbyKind::Warm || command.crash_loop_restarts.is_some() {
            bail!("--compare-load-balancer measures the warm standby's failover (--standby warm)");
        }
        return lb_failover::run(&command.bench, command.rounds, &shutdown).await;
    }
    if command.rounds != 1 {
        bail!(
            "--rounds counts the deployments of each arm of --compare-load-balancer; give that too"
        );
    }
    match command.standby {
        StandbyKind::Cold => {
            let options = ColdOptions {
                crash_loop_restarts: command.crash_loop_restarts,
            };
            standby::run(&command.bench, &options, &shutdown).await
        }
        StandbyKind::Warm if command.crash_loop_restarts.is_some() => bail!(
            "--crash-loop-restarts is a setting of the controller, which only --standby cold \
             runs; a warm standby takes over by the lease"
        ),
        StandbyKind::Warm => failover::run_warm(command.bench, shutdown).await,
    }
}
