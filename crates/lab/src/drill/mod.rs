//! `meridian drill`: proves a deployment meets its recovery objectives by breaking it on
//! purpose under load and measuring what applications saw.
//!
//! A drill starts a replicated deployment (the embedded default, or one described by a
//! deployment file), runs the IOU transfer workload with dedup-safe retrying clients, and
//! injects the planned faults one after another: kill -9, SIGSTOP/SIGCONT, a switchover, a
//! database server outage. Around each fault it measures detection (the deployment noticed:
//! another replica is active, or a node reports not-ready), RTO (fault to the first commit of
//! a request *sent after* the fault, and to throughput back at 90 % of before), failed and
//! retried requests, and keeps the throughput per 100 ms. After the last fault the ledgers are
//! audited: an acknowledged transaction missing on any informee participant counts against the
//! RPO of the fault it followed, and an IOU that exists twice is a duplicate.
//!
//! The drill's own instruments are cheap on purpose — atomic counters per 100 ms bucket, and
//! HTTP polling of a handful of `/status` endpoints only while a fault is being measured — so
//! they do not lower the throughput they measure.

pub mod plan;
pub mod svg;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use meridian_client::{Backoff, LedgerClient};
use meridian_core::{PartyId, UserId};
use nix::sys::signal::Signal;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::deployment::{Backend, Deployment, DeploymentArgs, DeploymentSpec, Description, Preset};
use crate::launch::NodeProcess;
use crate::workload::{
    self, BackgroundLoad, FinishedLoad, Live, Parties, TimelineBucket, TIMELINE_BUCKET_MS,
};
use plan::{DeploymentFile, PlannedFault, Scenario};

#[derive(Debug, Clone, Args)]
pub struct DrillArgs {
    /// The scenario to run (see docs/drills.md); `all` runs each in turn.
    #[arg(long, value_enum, default_value = "all")]
    pub scenario: Scenario,
    /// The deployment to break (default: the `replicated` preset on SQLite).
    #[command(flatten)]
    pub deployment: DeploymentArgs,
    /// The node to aim a single scenario's fault at (default: participant2, mediator, ...).
    #[arg(long)]
    pub target: Option<String>,
    /// Steady load before each fault, in seconds: the "before" throughput.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub settle_s: u64,
    /// How long to keep watching after a fault recovered, in seconds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub observe_s: u64,
    /// Concurrent transfer lanes (application clients).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub lanes: u64,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a timeline chart (SVG) to this file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Keep the deployment's data and logs here (default: a temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// What one fault did, as the application saw it.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    pub scenario: Scenario,
    pub target: String,
    /// What was done, e.g. "kill -9 participant2-a".
    pub action: String,
    /// The process the fault hit (a replica or a sequencer instance), when it hit one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faulted: Option<String>,
    /// When the fault was injected, ms since the workload started.
    pub injected_at_ms: f64,
    /// Fault to the deployment noticing (another replica active, a node not ready).
    pub detection_ms: Option<f64>,
    /// Fault to the first commit of a request sent after the fault.
    pub rto_first_success_ms: Option<f64>,
    /// Fault to throughput back at 90 % of the steady state before it.
    pub rto_throughput_90_ms: Option<f64>,
    /// Acknowledged transactions (since the previous fault) missing afterwards on an informee.
    pub rpo_transactions: usize,
    pub failed_requests: u64,
    /// Of the failed requests, those rejected with a mediator TIMEOUT.
    pub timed_out_requests: u64,
    pub retried_requests: u64,
    /// Mean throughput over the settle period before the fault.
    pub throughput_before_tx_per_s: f64,
    /// Commits per 100 ms from 2 s before the fault to the end of its observation.
    pub throughput_per_100ms: Vec<u64>,
    /// For a freeze: whether the resumed replica came back passive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_replica_passive: Option<bool>,
    /// Set when the deployment did not recover within the drill's bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DrillReport {
    pub backend: Backend,
    pub faults: Vec<FaultReport>,
    /// Scenarios of `all` that do not apply to this deployment, with the reason.
    pub skipped: Vec<String>,
    pub committed: u64,
    pub failed_requests: u64,
    pub retried_requests: u64,
    /// The first failures' messages, to say why requests failed.
    pub failure_samples: Vec<String>,
    pub rpo_transactions: usize,
    pub duplicate_transactions: usize,
    pub amounts_conserved: bool,
    pub audit_ok: bool,
    pub rto_first_success_ms_p50: f64,
    pub rto_first_success_ms_max: f64,
    pub bucket_ms: u64,
    /// The whole run, per 100 ms.
    pub timeline: Vec<TimelineBucket>,
}

impl DrillReport {
    /// RPO 0, no duplicates, a clean audit and every fault recovered.
    pub fn passed(&self) -> bool {
        self.rpo_transactions == 0
            && self.duplicate_transactions == 0
            && self.audit_ok
            && self.faults.iter().all(|f| f.problem.is_none())
    }
}

/// Bounds of one fault's measurement.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(45);
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Throughput counts as back when a window this many buckets wide averages 90 % of before.
const RECOVERY_WINDOW_BUCKETS: usize = 5;
/// How long the database stays down in `database-restart`.
const DATABASE_OUTAGE: Duration = Duration::from_secs(3);
/// Buckets of context kept before each fault in its report.
const BUCKETS_BEFORE_FAULT: usize = 20;

const CLIENT_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(10),
    max: Duration::from_millis(100),
    max_attempts: 600,
};

pub async fn run(args: DrillArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Everything that can be wrong with the request is found before anything starts.
    let description = args.deployment.resolve(Preset::Replicated, None)?;
    let (faults, skipped) = plan::plan(
        args.scenario,
        args.target.as_deref(),
        &plan_view(&description),
    )?;
    for path in [&args.json, &args.svg].into_iter().flatten() {
        check_writable(path)?;
    }
    let report = execute(&args, &description, faults, skipped, shutdown).await?;
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("JSON report written to {}", path.display());
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, svg::render(&chart(&report)))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("timeline chart written to {}", path.display());
    }
    if !report.passed() {
        bail!("the drill failed: RPO, duplicates, audit or recovery not as required (see above)");
    }
    Ok(())
}

/// What the fault planner needs to know of a deployment: its participants, the redundancy
/// of its warm replicas and sequencer instances, and its backend.
fn plan_view(description: &Description) -> DeploymentFile {
    DeploymentFile {
        participants: description.participants.len(),
        replicas: description.min_warm_replicas(),
        sequencers: description.warm_sequencers(),
        backend: match description.storage.backend {
            Backend::Sqlite => plan::FileBackend::Sqlite,
            Backend::Postgres => plan::FileBackend::Postgres,
        },
        lease_timeout_ms: description.lease_timeout_ms,
        ports: Default::default(),
    }
}

/// Fails early on an output path whose directory does not exist, rather than after the drill.
fn check_writable(path: &std::path::Path) -> anyhow::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !parent.is_dir() {
        bail!(
            "cannot write {}: directory {} does not exist",
            path.display(),
            parent.display()
        );
    }
    Ok(())
}

/// Starts the deployment and the workload, runs `faults`, audits. Public for the tests.
pub async fn execute(
    args: &DrillArgs,
    description: &Description,
    faults: Vec<PlannedFault>,
    skipped: Vec<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<DrillReport> {
    let temp;
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir().context("creating a temp dir")?;
            temp.path().to_path_buf()
        }
    };
    let mut spec = DeploymentSpec::new(data_dir, description.clone())?;
    let postgres = spec.start_postgres()?;
    eprintln!("meridian drill: starting the deployment");
    let mut deployment = Deployment::start(&spec, &mut |line| eprintln!("  {line}")).await?;
    let result = drill(
        &mut deployment,
        args,
        faults,
        skipped,
        postgres.as_ref(),
        description.storage.backend,
        shutdown,
    )
    .await;
    let stopped = deployment.stop().await;
    let report = result?;
    if let Err(error) = stopped {
        tracing::warn!(%error, "stopping the deployment after the drill");
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn drill(
    deployment: &mut Deployment,
    args: &DrillArgs,
    faults: Vec<PlannedFault>,
    skipped: Vec<String>,
    postgres: Option<&meridian_pgserver::PostgresServer>,
    backend: Backend,
    shutdown: CancellationToken,
) -> anyhow::Result<DrillReport> {
    let user = UserId::new("drill")?;
    let run = format!("drill{}", std::process::id());
    let load = BackgroundLoad::start(
        deployment,
        &user,
        CLIENT_BACKOFF,
        args.lanes as usize,
        &run,
        &shutdown,
    )
    .await?;
    let live = load.live.clone();
    let progress = Progress::start(live.clone(), faults.len());

    let mut reports = Vec::new();
    for (index, fault) in faults.iter().enumerate() {
        if shutdown.is_cancelled() {
            break;
        }
        progress.phase(index, fault.scenario, "steady load");
        tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
        progress.phase(index, fault.scenario, "fault injected, measuring");
        let report = run_fault(
            deployment,
            &live,
            &load.parties,
            fault,
            args.settle_s,
            postgres,
            Recovered::Throughput,
        )
        .await?;
        progress.phase(index, fault.scenario, "recovered, observing");
        tokio::time::sleep(Duration::from_secs(args.observe_s)).await;
        reports.push(report);
    }
    progress.finish();
    eprintln!("auditing the ledgers");
    let FinishedLoad {
        report: workload,
        audit,
        parties,
    } = load.finish().await?;
    let duplicates = workload::duplicate_ious(&parties).await?;

    // Each missing transaction counts against the last fault injected before it was
    // acknowledged: that is the fault that could have lost it.
    let missing: std::collections::HashSet<&str> = audit
        .missing_transactions
        .iter()
        .map(String::as_str)
        .collect();
    for (id, acknowledged_us) in workload
        .committed_transactions
        .iter()
        .zip(&workload.committed_at_us)
    {
        if missing.contains(id.as_str()) {
            let acknowledged_ms = *acknowledged_us as f64 / 1_000.0;
            if let Some(report) = reports
                .iter_mut()
                .rev()
                .find(|r| r.injected_at_ms <= acknowledged_ms)
            {
                report.rpo_transactions += 1;
            }
        }
    }
    let end_bucket = live.bucket_of(Instant::now()) + 1;
    for report in &mut reports {
        let start = live
            .bucket_of(live.epoch() + Duration::from_secs_f64(report.injected_at_ms / 1_000.0))
            .saturating_sub(BUCKETS_BEFORE_FAULT);
        let after_buckets =
            usize::try_from((args.settle_s + args.observe_s) * 1_000 / TIMELINE_BUCKET_MS)
                .unwrap_or(usize::MAX);
        let end = start
            .saturating_add(BUCKETS_BEFORE_FAULT)
            .saturating_add(after_buckets)
            .min(end_bucket);
        report.throughput_per_100ms = live.timeline.committed_per_bucket(start, end);
    }
    let (rto_p50, rto_max) = crate::bench::median_and_max(
        reports
            .iter()
            .filter_map(|r| r.rto_first_success_ms)
            .collect(),
    );
    Ok(DrillReport {
        backend,
        skipped,
        committed: workload.committed,
        failed_requests: live.failed.load(Ordering::Relaxed),
        retried_requests: live.retried.load(Ordering::Relaxed),
        failure_samples: workload.failure_samples.clone(),
        rpo_transactions: audit.acknowledged_missing,
        duplicate_transactions: duplicates,
        amounts_conserved: audit.amounts_conserved,
        audit_ok: audit.audit_ok && duplicates == 0,
        rto_first_success_ms_p50: rto_p50,
        rto_first_success_ms_max: rto_max,
        bucket_ms: TIMELINE_BUCKET_MS,
        timeline: live.timeline.snapshot(end_bucket),
        faults: reports,
    })
}

/// What the drill is waiting for after a fault, and when each thing happened.
struct Watch {
    injected_at: Instant,
    detected: Option<Instant>,
    first_success: Option<Instant>,
    throughput_back: Option<Instant>,
}

impl Watch {
    fn ms(&self, at: Option<Instant>) -> Option<f64> {
        at.map(|t| t.saturating_duration_since(self.injected_at).as_secs_f64() * 1_000.0)
    }
}

/// When [`run_fault`] considers a fault over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovered {
    /// Detected and served again (`bench failover`: RTO is its figure, and throughput right
    /// after a failover wanders around 90 % of before for many seconds on a busy machine).
    FirstSuccess,
    /// Also throughput back at 90 % of before (the drill reports that figure too).
    Throughput,
}

/// Injects `fault` into the running deployment while `live` load runs, measures until it
/// recovered, and restores full redundancy. `settle_s` is how long the load ran steadily
/// before: the "before" throughput is taken from it. The demo uses this too.
///
/// The first success is what proves the faulted node serves again: a transfer *sent after*
/// the fault committing through the participant it hit; for a sequencer instance, through
/// both submitting participants (every subscriber resumed); for the topology manager, which
/// transfers do not use, a party allocated through participant 1.
pub(crate) async fn run_fault(
    deployment: &mut Deployment,
    live: &Live,
    parties: &Parties,
    fault: &PlannedFault,
    settle_s: u64,
    postgres: Option<&meridian_pgserver::PostgresServer>,
    until: Recovered,
) -> anyhow::Result<FaultReport> {
    let data_dir = deployment.data_dir.clone();
    let now_bucket = live.bucket_of(Instant::now());
    let settle_buckets =
        usize::try_from(settle_s * 1_000 / TIMELINE_BUCKET_MS).unwrap_or(usize::MAX);
    let before_from = now_bucket.saturating_sub(settle_buckets.saturating_sub(5).max(5));
    let before_buckets = now_bucket.saturating_sub(before_from).max(1);
    let before_per_bucket =
        live.timeline.committed_between(before_from, now_bucket) as f64 / before_buckets as f64;
    let failed_before = live.failed.load(Ordering::Relaxed);
    let timeouts_before = live.timeouts.load(Ordering::Relaxed);
    let retried_before = live.retried.load(Ordering::Relaxed);

    // The replica that is active before the fault: detection means another one is.
    let active_before = if fault.scenario == Scenario::SequencerCrash
        || fault.scenario == Scenario::DatabaseRestart
    {
        None
    } else {
        admin::active_replica(&data_dir, &fault.target).await?
    };
    let mut killed: Option<String> = None;
    let mut frozen: Option<String> = None;
    let mut switchover: Option<
        tokio::task::JoinHandle<anyhow::Result<(String, String, Duration)>>,
    > = None;
    let mut database: Option<tokio::task::JoinHandle<()>> = None;
    let offline_marks_before = if fault.scenario == Scenario::SequencerCrash {
        peers_marked_offline(deployment).await
    } else {
        BTreeMap::new()
    };
    // The replica a kill, stop or freeze is aimed at.
    let active_name = || {
        active_before
            .clone()
            .with_context(|| format!("no active replica of {}", fault.target))
    };
    let injected_at = Instant::now();
    let action = match fault.scenario {
        Scenario::ParticipantCrash | Scenario::MediatorCrash | Scenario::TopologyCrash => {
            let name = active_name()?;
            process_named(deployment, &name)?.kill9()?;
            killed = Some(name.clone());
            format!("kill -9 {name}")
        }
        Scenario::ParticipantStop => {
            let name = active_name()?;
            // SIGTERM: the replica drains, releases its lease and exits; the passive takes
            // over without waiting for the lease to expire.
            let process = process_named(deployment, &name)?;
            process.signal(Signal::SIGTERM)?;
            killed = Some(name.clone());
            format!("SIGTERM {name} (graceful stop)")
        }
        Scenario::ParticipantFreeze => {
            let name = active_name()?;
            process_named(deployment, &name)?.signal(Signal::SIGSTOP)?;
            frozen = Some(name.clone());
            format!("SIGSTOP {name} until a passive took over, then SIGCONT")
        }
        Scenario::SequencerCrash => {
            // The instance named by the target (`bench failover` takes them in turn), else
            // the first.
            let index = deployment
                .sequencers
                .iter()
                .position(|instance| instance.name() == fault.target)
                .unwrap_or(0);
            let sequencer = deployment
                .sequencers
                .get_mut(index)
                .context("the deployment runs no sequencer")?;
            sequencer.kill9()?;
            let name = sequencer.name().to_owned();
            killed = Some(name.clone());
            format!("kill -9 {name}")
        }
        Scenario::Switchover => {
            let (dir, node) = (data_dir.clone(), fault.target.clone());
            switchover = Some(tokio::spawn(async move {
                admin::switch_over(&dir, &node, Duration::from_secs(15)).await
            }));
            format!("meridian admin switchover --node {}", fault.target)
        }
        Scenario::DatabaseRestart => {
            let server = postgres.context("database-restart needs the PostgreSQL backend")?;
            // pg_ctl blocks for a moment; keep the runtime's other tasks (the load) running.
            tokio::task::block_in_place(|| server.stop_fast()).context("stopping PostgreSQL")?;
            database = Some(tokio::spawn(tokio::time::sleep(DATABASE_OUTAGE)));
            format!(
                "stop PostgreSQL for {} s, then start it",
                DATABASE_OUTAGE.as_secs()
            )
        }
        Scenario::All => bail!("`all` is expanded into its scenarios before running"),
    };

    let mut topology_probe = (fault.target == plan::TOPOLOGY_NODE)
        .then(|| tokio::spawn(allocate_probe_party(parties.clients[0].clone())));

    let mut watch = Watch {
        injected_at,
        detected: None,
        first_success: None,
        throughput_back: None,
    };
    let mut problem = None;
    let mut database_back = false;
    let mut resumed = false;
    let fault_bucket = live.bucket_of(injected_at);
    loop {
        let now = Instant::now();
        if now.duration_since(injected_at) > RECOVERY_TIMEOUT {
            problem = Some(format!(
                "not recovered within {} s (detected: {}, first success: {}, throughput back: {})",
                RECOVERY_TIMEOUT.as_secs(),
                watch.detected.is_some(),
                watch.first_success.is_some(),
                watch.throughput_back.is_some()
            ));
            break;
        }
        if let Some(task) = database.as_ref() {
            if task.is_finished() && !database_back {
                if let Some(server) = postgres {
                    tokio::task::block_in_place(|| server.resume())
                        .context("starting PostgreSQL again")?;
                }
                database_back = true;
            }
        }
        if watch.detected.is_none() {
            let detected = match fault.scenario {
                Scenario::SequencerCrash => marked_another_offline(
                    &offline_marks_before,
                    &peers_marked_offline(deployment).await,
                ),
                Scenario::DatabaseRestart => any_not_ready(deployment).await,
                Scenario::Switchover => switchover.as_ref().is_some_and(|t| t.is_finished()),
                _ => another_replica_active(&data_dir, &fault.target, active_before.as_deref())
                    .await
                    .unwrap_or(false),
            };
            if detected {
                watch.detected = Some(Instant::now());
            }
        }
        if watch.first_success.is_none() {
            let fresh = |index: usize| live.committed_a_request_sent_after(index, injected_at);
            let back = match (&mut topology_probe, fault.scenario) {
                (Some(probe), _) if probe.is_finished() => {
                    let allocated = probe.await.context("the topology probe task")?;
                    topology_probe = None;
                    match allocated {
                        Ok(at) => Some(at),
                        Err(error) => {
                            problem = Some(format!("allocating a party failed: {error:#}"));
                            break;
                        }
                    }
                }
                (Some(_), _) => None,
                (None, Scenario::SequencerCrash) => (fresh(1) && fresh(2)).then(Instant::now),
                (None, _) => match fault.target.as_str() {
                    "participant2" => fresh(1),
                    "participant3" => fresh(2),
                    _ => fresh(1) || fresh(2),
                }
                .then(Instant::now),
            };
            watch.first_success = back;
        }
        if watch.first_success.is_some() && watch.throughput_back.is_none() {
            let current = live.bucket_of(Instant::now());
            // Only complete windows after the fault count: the fault's own bucket still holds
            // commits from before it, and the current bucket is still filling.
            // Nor can throughput be "back" before the first success after the fault.
            let first_success_bucket = watch.first_success.map_or(0, |t| live.bucket_of(t));
            let mut start = (fault_bucket + 1).max(first_success_bucket);
            while start + RECOVERY_WINDOW_BUCKETS <= current {
                let window = live
                    .timeline
                    .committed_between(start, start + RECOVERY_WINDOW_BUCKETS)
                    as f64
                    / RECOVERY_WINDOW_BUCKETS as f64;
                if window >= 0.9 * before_per_bucket {
                    let at = live.epoch()
                        + Duration::from_millis(
                            u64::try_from(start).unwrap_or(u64::MAX) * TIMELINE_BUCKET_MS,
                        );
                    watch.throughput_back =
                        Some(at.max(watch.first_success.unwrap_or(injected_at)));
                    break;
                }
                start += 1;
            }
        }
        if let Some(name) = &frozen {
            // Resume the frozen replica once the passive took over and serves.
            if !resumed && watch.detected.is_some() && watch.first_success.is_some() {
                process_named(deployment, name)?.signal(Signal::SIGCONT)?;
                resumed = true;
            }
        }
        if watch.detected.is_some()
            && watch.first_success.is_some()
            && (watch.throughput_back.is_some() || until == Recovered::FirstSuccess)
            && (database.is_none() || database_back)
        {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }

    let mut resumed_replica_passive = None;
    if let Some(name) = &frozen {
        // Not resumed yet if the deployment never recovered: resume it now either way.
        if !resumed {
            process_named(deployment, name)?.signal(Signal::SIGCONT)?;
        }
        resumed_replica_passive = Some(became_passive(&data_dir, &fault.target, name).await);
        if resumed_replica_passive == Some(false) && problem.is_none() {
            problem = Some(format!("{name} did not come back passive after SIGCONT"));
        }
    }
    if let Some(task) = switchover {
        if let Err(error) = task.await.context("switchover task")? {
            problem.get_or_insert(format!("switchover failed: {error:#}"));
        }
    }
    if database.is_some() && !database_back {
        if let Some(server) = postgres {
            tokio::task::block_in_place(|| server.resume()).context("starting PostgreSQL again")?;
        }
    }
    // Restore full redundancy before the next fault.
    if let Some(name) = &killed {
        let exe = deployment.exe().to_path_buf();
        let process = process_named(deployment, name)?;
        // Reaps a gracefully stopped process (a killed one is already reaped).
        process.terminate(Duration::from_secs(15)).await?;
        process.start(&exe)?;
        process.wait_alive(Duration::from_secs(30)).await?;
    }
    Ok(FaultReport {
        scenario: fault.scenario,
        target: fault.target.clone(),
        action,
        faulted: killed
            .or(frozen)
            .or(if fault.scenario == Scenario::Switchover {
                active_before
            } else {
                None
            }),
        injected_at_ms: injected_at
            .saturating_duration_since(live.epoch())
            .as_secs_f64()
            * 1_000.0,
        detection_ms: watch.ms(watch.detected),
        rto_first_success_ms: watch.ms(watch.first_success),
        rto_throughput_90_ms: watch.ms(watch.throughput_back),
        rpo_transactions: 0,
        failed_requests: live.failed.load(Ordering::Relaxed) - failed_before,
        timed_out_requests: live.timeouts.load(Ordering::Relaxed) - timeouts_before,
        retried_requests: live.retried.load(Ordering::Relaxed) - retried_before,
        throughput_before_tx_per_s: before_per_bucket * 1_000.0 / TIMELINE_BUCKET_MS as f64,
        throughput_per_100ms: Vec::new(),
        resumed_replica_passive,
        problem,
    })
}

/// Allocates a fresh party through `client` (which retries UNAVAILABLE while no topology
/// manager replica serves) and says when that succeeded.
async fn allocate_probe_party(client: LedgerClient) -> anyhow::Result<Instant> {
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let party = PartyId::new(format!(
        "drill-probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    ))?;
    client.allocate_party(&party).await?;
    Ok(Instant::now())
}

/// Whether a replica of `node` other than `faulted` reports itself active. The faulted one
/// is not asked: frozen, it would hold every poll up by the HTTP timeout and blur the timing.
async fn another_replica_active(
    data_dir: &std::path::Path,
    node: &str,
    faulted: Option<&str>,
) -> anyhow::Result<bool> {
    Ok(admin::replica_roles(data_dir, node, faulted)
        .await?
        .iter()
        .any(|(_, role)| role.as_deref() == Some("active")))
}

/// A poll of one admin endpoint may take this long; a node that answers slower counts as not
/// answering this time.
const POLL_HTTP_TIMEOUT: Duration = Duration::from_millis(500);

async fn get_admin(address: std::net::SocketAddr, path: &str) -> Option<reqwest::Response> {
    admin::http()
        .ok()?
        .get(format!("http://{address}{path}"))
        .timeout(POLL_HTTP_TIMEOUT)
        .send()
        .await
        .ok()
}

/// How many times the sequencer instances that answer have marked a peer offline: a killed
/// instance is detected when a survivor does.
/// How many peers each reachable sequencer instance has marked offline since it started. Per
/// instance, because a sum would hide a new mark behind the killed instance's own count
/// dropping out (it marked the other one offline in an earlier fault).
async fn peers_marked_offline(deployment: &Deployment) -> BTreeMap<String, u64> {
    let mut marks = BTreeMap::new();
    for sequencer in &deployment.sequencers {
        if let Some(response) = get_admin(sequencer.admin_address, "/status").await {
            if let Ok(status) = response.json::<serde_json::Value>().await {
                let count = status["peers_marked_offline"].as_u64().unwrap_or(0);
                marks.insert(sequencer.name().to_owned(), count);
            }
        }
    }
    marks
}

/// Whether an instance marked a peer offline since `before` was taken.
fn marked_another_offline(before: &BTreeMap<String, u64>, now: &BTreeMap<String, u64>) -> bool {
    now.iter()
        .any(|(name, count)| *count > before.get(name).copied().unwrap_or(0))
}

async fn any_not_ready(deployment: &Deployment) -> bool {
    for process in deployment.sequencers.iter().chain(&deployment.participants) {
        match get_admin(process.admin_address, "/readyz").await {
            Some(response) if response.status().is_success() => {}
            _ => return true,
        }
    }
    false
}

/// Whether the resumed `replica` of `node` reports itself passive while another is active.
async fn became_passive(data_dir: &std::path::Path, node: &str, replica: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(roles) = admin::replica_roles(data_dir, node, None).await {
            let role_of = |name: &str| {
                roles
                    .iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, role)| role.as_deref())
            };
            let other_active = roles
                .iter()
                .any(|(n, role)| n != replica && role.as_deref() == Some("active"));
            if other_active && role_of(replica) == Some("passive") {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn process_named<'a>(
    deployment: &'a mut Deployment,
    name: &str,
) -> anyhow::Result<&'a mut NodeProcess> {
    deployment
        .processes_mut()
        .into_iter()
        .find(|p| p.name() == name)
        .with_context(|| format!("the deployment runs no process named {name}"))
}

/// The live progress line: scenario, phase and current throughput.
struct Progress {
    bar: indicatif::ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(live: Arc<Live>, faults: usize) -> Self {
        let bar = indicatif::ProgressBar::new(faults as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "  {spinner} fault {pos}/{len} {elapsed:>4} {wide_msg}",
            )
            .expect("static progress template is valid"),
        );
        let task = {
            let bar = bar.clone();
            tokio::spawn(async move {
                let mut last = live.committed.load(Ordering::Relaxed);
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let now = live.committed.load(Ordering::Relaxed);
                    bar.set_prefix(format!("{} tx/s", (now - last) * 2));
                    last = now;
                    bar.tick();
                }
            })
        };
        Self { bar, task }
    }

    fn phase(&self, index: usize, scenario: Scenario, phase: &str) {
        self.bar.set_position(index as u64 + 1);
        self.bar.set_message(format!(
            "{}: {phase}  ({})",
            scenario.name(),
            self.bar.prefix()
        ));
    }

    fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

fn fmt_ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

fn print_table(report: &DrillReport) {
    println!(
        "\nmeridian drill ({:?}): {} fault(s), {} committed",
        report.backend,
        report.faults.len(),
        report.committed
    );
    println!(
        "  {:<19} {:<28} {:>9} {:>9} {:>9} {:>4} {:>7} {:>8}",
        "scenario", "action", "detect ms", "RTO ms", "RTO90 ms", "RPO", "failed", "retried"
    );
    for fault in &report.faults {
        let mut action = fault.action.clone();
        action.truncate(28);
        println!(
            "  {:<19} {:<28} {:>9} {:>9} {:>9} {:>4} {:>7} {:>8}",
            fault.scenario.name(),
            action,
            fmt_ms(fault.detection_ms),
            fmt_ms(fault.rto_first_success_ms),
            fmt_ms(fault.rto_throughput_90_ms),
            fault.rpo_transactions,
            fault.failed_requests,
            fault.retried_requests
        );
        if let Some(problem) = &fault.problem {
            println!("      problem: {problem}");
        }
    }
    for skipped in &report.skipped {
        println!("  skipped {skipped}");
    }
    for sample in &report.failure_samples {
        println!("  failed: {sample}");
    }
    println!(
        "  RTO p50 {:.0} ms, max {:.0} ms; RPO {}; duplicates {}; failed requests {}; retried {}; audit {}",
        report.rto_first_success_ms_p50,
        report.rto_first_success_ms_max,
        report.rpo_transactions,
        report.duplicate_transactions,
        report.failed_requests,
        report.retried_requests,
        if report.audit_ok { "OK" } else { "FAILED" }
    );
}

fn chart(report: &DrillReport) -> svg::TimelineChart {
    let ms = |at: Option<f64>, fault: &FaultReport| at.map(|v| fault.injected_at_ms + v);
    svg::TimelineChart {
        title: format!(
            "meridian drill — {} fault(s), {:?}, RPO {}, duplicates {}",
            report.faults.len(),
            report.backend,
            report.rpo_transactions,
            report.duplicate_transactions
        ),
        bucket_ms: report.bucket_ms,
        committed_per_bucket: report.timeline.iter().map(|b| b.committed).collect(),
        failed_per_bucket: report.timeline.iter().map(|b| b.failed).collect(),
        latency_p99_ms: report.timeline.iter().map(|b| b.latency_p99_ms).collect(),
        faults: report
            .faults
            .iter()
            .map(|fault| svg::FaultMark {
                label: format!("{}: {}", fault.scenario.name(), fault.action),
                injected_at_ms: fault.injected_at_ms,
                detected_at_ms: ms(fault.detection_ms, fault),
                recovered_at_ms: ms(fault.rto_first_success_ms, fault),
                throughput_back_at_ms: ms(fault.rto_throughput_90_ms, fault),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(entries: &[(&str, u64)]) -> BTreeMap<String, u64> {
        entries.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect()
    }

    #[test]
    fn a_new_offline_mark_is_seen_even_when_the_killed_instance_drops_out() {
        // b marked a offline in an earlier fault; now b is killed and a marks it.
        let before = marks(&[("sequencer-a", 0), ("sequencer-b", 1)]);
        assert!(!marked_another_offline(
            &before,
            &marks(&[("sequencer-a", 0)])
        ));
        assert!(marked_another_offline(
            &before,
            &marks(&[("sequencer-a", 1)])
        ));
        // A restarted instance counts from zero again: no false detection.
        let restarted = marks(&[("sequencer-a", 0), ("sequencer-b", 0)]);
        assert!(!marked_another_offline(&before, &restarted));
    }
}
