//! `meridian`: the one binary. Each role is a subcommand; the roles themselves live in their
//! crates, so this file only parses arguments, sets up logging and shutdown, and dispatches.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meridian_lab::{admin, bench, controller, demo, deployment, drill, lb, token};
use meridian_node::telemetry::{init_tracing, LogFormat};

// glibc's allocator was an eighth of all CPU at saturation (`malloc`, `free` and their
// arena consolidation, per transfer across every node); mimalloc's thread-local free lists
// cost a fraction of that for the many short-lived buffers of a protocol hop. Every role
// runs from this binary, so this one line covers every node. It is built without transparent
// huge pages (`no_thp`): mimalloc asks the kernel for them on its arenas, so a node's memory
// grew in 2 MiB pages partly used: at saturation a participant held 100-110 MiB for a live heap
// heaptrack put near 21 MiB; without them it stays below 90 (docs/benchmarks.md, issue 14).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "meridian",
    version,
    about = "A highly available multi-party ledger synchronizer"
)]
struct Cli {
    /// Log format on stderr: text or json. Filter with RUST_LOG (default info).
    #[arg(
        long,
        global = true,
        default_value = "text",
        env = "MERIDIAN_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Threads running the process's tasks: 1 runs them all on the main thread, the fastest
    /// when several nodes share a few cores (the lab gives each node it starts
    /// cores / 6, at least 1). Default: one per core.
    #[arg(long, global = true, env = meridian_node::runtime::RUNTIME_THREADS_ENV)]
    runtime_threads: Option<std::num::NonZeroUsize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a sequencer instance.
    Sequencer {
        /// TOML config file (see docs/configuration.md).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the topology manager: owns the synchronizer's signed topology.
    Topology {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the mediator: collects confirmations and sends verdicts.
    Mediator {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a participant node: hosts parties and serves the Ledger API.
    Participant {
        #[arg(long)]
        config: PathBuf,
    },
    /// Start a whole synchronizer (sequencer, topology manager, mediator, 3 participants),
    /// run an IOU transfer workload, audit the ledgers and print the results.
    Demo(demo::DemoArgs),
    /// Start the same deployment as `demo` without a workload; print endpoints; run until Ctrl-C.
    Up(demo::UpArgs),
    /// Supervise a deployment: restart crashed processes, start cold standbys, run
    /// approval-gated region switchover plans (see docs/controller.md).
    Controller(controller::ControllerArgs),
    /// Deployment files: check one before running it (see docs/deployment.md).
    #[command(subcommand)]
    Deployment(deployment::DeploymentCommand),
    /// The global load balancer: write the HAProxy configuration of a deployment (see
    /// docs/load-balancer.md).
    #[command(subcommand)]
    Lb(lb::LbCommand),
    /// Operate running nodes: status of replicas, switchover.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Operate the controller: status, region switchover plans, approve or reject them
    /// (see docs/controller.md).
    Ctl(meridian_lab::ctl::CtlArgs),
    /// Measure throughput and latency against real processes.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Break a replicated deployment on purpose under load and measure detection, RTO, RPO,
    /// failed requests and duplicates for every fault (see docs/drills.md).
    Drill(drill::DrillArgs),
    /// Development Ledger API tokens: mint one from a private key, or create a key pair
    /// (`token keygen`). See docs/ledger-api.md, "Authorization".
    Token(token::TokenArgs),
    /// Run the delaying proxies of a deployment's links between zones and regions (started
    /// by the lab from a deployment's `[network]` table; see docs/deployment.md).
    Netdelay {
        /// The links file the lab wrote (`<data-dir>/netdelay/links.toml`).
        #[arg(long)]
        links: PathBuf,
    },
    /// Write a development CA and a TLS certificate + key per node (see docs/tls.md).
    Certs {
        /// Directory to write ca.crt, ca.key, NAME.crt and NAME.key into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// A node: NAME, or NAME=host,host,... for names besides localhost and 127.0.0.1.
        #[arg(long = "node", required = true)]
        nodes: Vec<meridian_node::certs::NodeSpec>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match meridian_node::runtime::build_runtime(cli.runtime_threads) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Sequencer { config } => run_sequencer(config).await,
            Command::Certs { out, nodes } => {
                let written = meridian_node::certs::write_dev_certs(&out, &nodes)?;
                for file in written.files() {
                    println!("wrote {}", file.display());
                }
                println!(
                    "private keys are mode 0600; clients trust {} (e.g. grpcurl -cacert {})",
                    written.ca_cert_file.display(),
                    written.ca_cert_file.display()
                );
                Ok(())
            }
            Command::Topology { config } => {
                let config = meridian_topology::TopologyManagerConfig::load(&config)?;
                meridian_topology::run(config, meridian_node::shutdown::shutdown_token()).await
            }
            Command::Mediator { config } => {
                let config = meridian_mediator::MediatorConfig::load(&config)?;
                meridian_mediator::run(config, meridian_node::shutdown::shutdown_token()).await
            }
            Command::Participant { config } => {
                let config = meridian_participant::ParticipantConfig::load(&config)?;
                meridian_participant::run(config, meridian_node::shutdown::shutdown_token()).await
            }
            Command::Demo(args) => {
                demo::demo(args, meridian_node::shutdown::shutdown_token()).await
            }
            Command::Up(args) => demo::up(args, meridian_node::shutdown::shutdown_token()).await,
            Command::Controller(args) => {
                controller::command::run(args, meridian_node::shutdown::shutdown_token()).await
            }
            Command::Deployment(command) => deployment::args::run(command),
            Command::Lb(command) => lb::run(command),
            Command::Netdelay { links } => deployment::network::serve(&links).await,
            Command::Admin(command) => admin::run(command).await,
            Command::Ctl(args) => meridian_lab::ctl::run(args).await,
            Command::Bench(command) => {
                bench::run(command, meridian_node::shutdown::shutdown_token()).await
            }
            Command::Token(args) => token::run(args),
            Command::Drill(args) => {
                drill::run(args, meridian_node::shutdown::shutdown_token()).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", meridian_node::report::one_line(&error));
            ExitCode::FAILURE
        }
    }
}

async fn run_sequencer(config_path: PathBuf) -> anyhow::Result<()> {
    let config = meridian_sequencer::SequencerConfig::load(&config_path)?;
    let shutdown = meridian_node::shutdown::shutdown_token();
    meridian_sequencer::run(config, shutdown).await
}
