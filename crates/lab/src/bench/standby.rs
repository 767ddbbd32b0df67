//! `meridian bench failover --standby cold`: the recovery of a node whose only warm replica's
//! host is lost, by the controller starting its cold replica — and what a warm standby would
//! have cost instead.
//!
//! Each trial is a fresh deployment run by a real `meridian controller` child process: the
//! target node has one warm replica and one cold one (not running). Under the transfer load,
//! the warm (active) replica's host is lost: its config is moved away, so that the
//! controller's restarts in place fail at once ("cannot start"), and its process is
//! SIGKILLed. The controller restarts it in place until its crash-loop limit, marks it failed,
//! and starts the cold replica, which takes the node's lease. Every figure of the split is
//! measured from the kill:
//!
//! - the controller's first restart decision for the killed replica and its cold-start
//!   decision (the audit records' times; the latter also minus the fall threshold,
//!   `fall × probe_interval_ms`);
//! - the cold process running (its pidfile, written at the spawn), ready (its `/readyz`
//!   answering 200, polled every 10 ms) and the first commit of a request *sent after* the
//!   kill that needs the node: through it for a participant, any for the mediator, through
//!   every submitting participant for the sequencer, and for the topology manager (which
//!   transfers do not use) a party allocation.
//!
//! After each trial the ledgers are audited (nothing acknowledged lost, no IOU twice). Before
//! the first kill, every running replica's footprint is read ([`super::cost`]): what a warm
//! standby costs is what a passive replica of the same kind costs; a cold one costs nothing
//! until it starts.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use meridian_controller::api::{AuditKind, AuditRecord, ReplicaRole, Status};
use meridian_core::placement::{NodeKind, ReplicaName};
use meridian_core::{PartyId, Timestamp};
use nix::sys::signal::Signal;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::cost::{self, ProcessCost};
use super::failover::{FailoverBenchArgs, TargetNode};
use crate::controller::process::{signal, ReplicaFiles};
use crate::controller::{ControlledDeployment, ControllerChild};
use crate::deployment::{Backend, Description, Preset, Replica, Standby};
use crate::stats::median_and_max;
use crate::workload::{
    self, issue_lanes, run_transfers, Live, WorkloadSpec, BANK_PARTICIPANT, OWNER_PARTICIPANTS,
};

/// The controller replica the bench runs.
const CONTROLLER_NAME: &str = "bench-controller";
/// How long the controller gets to start a deployment and see every replica up.
const UP_WAIT: Duration = Duration::from_secs(120);
/// How long a trial waits for the cold replica and the first commit after the kill.
const RECOVERY_WAIT: Duration = Duration::from_secs(60);
/// Steady load before the kill, and after the recovery before the audit.
const SETTLE: Duration = Duration::from_secs(2);
/// How often the recovery is looked at: bounds each figure's error.
const POLL: Duration = Duration::from_millis(10);
/// Bound of the transfers of one trial (they are stopped long before).
const LOAD_LIMIT: Duration = Duration::from_secs(600);

/// What the target node's standby is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StandbyKind {
    /// A passive replica that runs and takes over by the lease (no controller).
    Warm,
    /// A replica that does not run until the controller starts it.
    Cold,
}

/// The options only `--standby cold` takes.
#[derive(Debug, Clone, Default)]
pub struct ColdOptions {
    /// Overrides the deployment's `[controller] crash_loop_restarts`: how many failed
    /// restarts in place the controller tries before it gives the lost replica up.
    pub crash_loop_restarts: Option<u32>,
}

/// The deployment of every trial and which replicas play.
#[derive(Debug, Clone)]
pub struct ColdPlan {
    pub description: Description,
    /// The node's directory name (`participant2`, `mediator`, ...).
    pub node: String,
    /// The warm replica whose host is lost.
    pub warm: String,
    /// The cold replica the controller must start.
    pub cold: String,
}

/// The split of one trial, in ms after the kill (`None`: the controller did not record it).
#[derive(Debug, Clone, Serialize)]
pub struct ColdTrial {
    pub killed: String,
    pub started: String,
    /// The controller's first restart decision for the killed replica.
    pub restart_decision_ms: Option<f64>,
    /// The controller's giving up on it (crash loop).
    pub crash_loop_ms: Option<f64>,
    /// The controller's decision to start the cold replica.
    pub cold_decision_ms: f64,
    /// `cold_decision_ms` minus the fall threshold (`fall × probe_interval_ms`).
    pub cold_decision_after_fall_ms: f64,
    /// The cold replica's process spawned (its pidfile written).
    pub cold_running_ms: f64,
    /// Its `/readyz` answered 200.
    pub cold_ready_ms: f64,
    /// The first commit (or party allocation) needing the node, sent after the kill.
    pub first_commit_ms: f64,
    /// `first_commit_ms - cold_decision_ms`: the cold start itself (process start, replay,
    /// lease, first transaction).
    pub cold_start_to_commit_ms: f64,
    pub committed: u64,
    pub failed_requests: u64,
    pub lost_transactions: usize,
    pub duplicate_transactions: usize,
    pub audit_ok: bool,
}

/// p50 and max of one column of the split.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    pub p50_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    fn of(values: impl Iterator<Item = f64>) -> Self {
        let (p50_ms, max_ms) = median_and_max(values.collect());
        Self { p50_ms, max_ms }
    }
}

/// One running replica's footprint, taken under load before the first kill.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaCost {
    pub replica: String,
    pub kind: NodeKind,
    /// `active` or `passive` (a sequencer instance is always active).
    pub role: String,
    pub pid: u32,
    #[serde(flatten)]
    pub cost: ProcessCost,
}

#[derive(Debug, Serialize)]
pub struct ColdReport {
    pub standby: StandbyKind,
    pub node: TargetNode,
    pub backend: Backend,
    pub probe_interval_ms: u64,
    pub fall: u32,
    pub fall_threshold_ms: u64,
    pub crash_loop_restarts: u32,
    pub restart_backoff_initial_ms: u64,
    pub trials: Vec<ColdTrial>,
    pub restart_decision: Summary,
    pub cold_decision: Summary,
    pub cold_decision_after_fall: Summary,
    pub cold_running: Summary,
    pub cold_ready: Summary,
    pub first_commit: Summary,
    pub cold_start_to_commit: Summary,
    /// Every running replica's footprint (before the first kill); a cold replica has none.
    pub costs: Vec<ReplicaCost>,
    pub committed: u64,
    pub failed_requests: u64,
    pub lost_transactions: usize,
    pub duplicate_transactions: usize,
    pub audit_ok: bool,
}

/// `meridian bench failover --standby cold`: runs the trials, prints the split and the costs
/// (or one JSON object), and fails if an audit did.
pub async fn run(
    args: &FailoverBenchArgs,
    options: &ColdOptions,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the meridian binary")?;
    let quiet = args.json;
    let mut progress = |line: String| {
        if !quiet {
            eprintln!("  {line}");
        }
    };
    let report = measure_with(args, options, &exe, &mut progress, shutdown).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    if !report.audit_ok {
        bail!("the audit after a cold-standby trial failed");
    }
    Ok(())
}

fn print_report(report: &ColdReport) {
    let opt = crate::stats::fmt_ms;
    println!(
        "meridian bench failover --standby cold: {} trials, {:?}; kill -9 of the only warm {} \
         replica with its host lost, the controller starts the cold one",
        report.trials.len(),
        report.backend,
        node_arg(report.node)
    );
    println!(
        "  controller: probe every {} ms, fall {} (threshold {} ms), crash loop after {} \
         restarts (backoff from {} ms)",
        report.probe_interval_ms,
        report.fall,
        report.fall_threshold_ms,
        report.crash_loop_restarts,
        report.restart_backoff_initial_ms
    );
    println!(
        "  ms after the kill:  restart-decision  crash-loop  cold-decision (-fall)  running  \
         ready  first-commit  (decision->commit)"
    );
    for (i, t) in report.trials.iter().enumerate() {
        println!(
            "  trial {:>2}: {:>16} {:>11} {:>14.0} ({:>5.0}) {:>8.0} {:>6.0} {:>13.0} ({:>6.0})   \
             committed {}, failed {}, lost {}, duplicates {}",
            i + 1,
            opt(t.restart_decision_ms),
            opt(t.crash_loop_ms),
            t.cold_decision_ms,
            t.cold_decision_after_fall_ms,
            t.cold_running_ms,
            t.cold_ready_ms,
            t.first_commit_ms,
            t.cold_start_to_commit_ms,
            t.committed,
            t.failed_requests,
            t.lost_transactions,
            t.duplicate_transactions
        );
    }
    let p50: fn(&Summary) -> f64 = |s| s.p50_ms;
    let max: fn(&Summary) -> f64 = |s| s.max_ms;
    for (name, s) in [("p50", p50), ("max", max)] {
        println!(
            "  {name}:      {:>16.0} {:>11} {:>14.0} ({:>5.0}) {:>8.0} {:>6.0} {:>13.0} ({:>6.0})",
            s(&report.restart_decision),
            "",
            s(&report.cold_decision),
            s(&report.cold_decision_after_fall),
            s(&report.cold_running),
            s(&report.cold_ready),
            s(&report.first_commit),
            s(&report.cold_start_to_commit)
        );
    }
    println!(
        "  {} committed, {} failed requests; lost {}, duplicates {}; audit {}",
        report.committed,
        report.failed_requests,
        report.lost_transactions,
        report.duplicate_transactions,
        if report.audit_ok { "OK" } else { "FAILED" }
    );
    println!("  what each running replica costs (a cold replica: no process, none of this):");
    println!("    replica              kind              role     RSS MiB  threads  TCP listen  TCP conn  SQLite conn  SQLite files");
    for c in &report.costs {
        println!(
            "    {:<20} {:<17} {:<8} {:>7.1} {:>8} {:>11} {:>9} {:>12} {:>13}",
            c.replica,
            c.kind.command(),
            c.role,
            c.cost.rss_mib,
            c.cost.threads,
            c.cost.tcp_listening,
            c.cost.tcp_established,
            c.cost.sqlite_connections,
            c.cost.sqlite_files
        );
    }
}

/// The deployment of a cold trial: `--deployment`/`--preset`/`--backend` (default: the
/// `replicated` preset on SQLite) with the target node's second replica made cold. Refuses,
/// before anything starts, what the bench cannot measure.
pub fn plan(args: &FailoverBenchArgs, options: &ColdOptions) -> anyhow::Result<ColdPlan> {
    let mut description = args.deployment.resolve(Preset::Replicated, None)?;
    if description.storage.backend != Backend::Sqlite {
        bail!(
            "--standby cold runs on SQLite only (the deployment is on {:?}): on PostgreSQL the \
             controller's first start owns the throwaway servers, which this bench does not \
             measure yet; give --backend sqlite",
            description.storage.backend
        );
    }
    if description.participants.len() < 3 {
        bail!("--standby cold: the workload needs three participants");
    }
    if let Some(lease_timeout_ms) = args.lease_timeout_ms {
        description.lease_timeout_ms = lease_timeout_ms;
    }
    if let Some(restarts) = options.crash_loop_restarts {
        description.controller.crash_loop_restarts = restarts;
    }
    description
        .controller
        .check()
        .map_err(|error| anyhow::anyhow!("--crash-loop-restarts: {error}"))?;
    let (node, replicas): (String, &mut Vec<Replica>) = match args.node {
        TargetNode::Participant => {
            let participant = &mut description.participants[OWNER_PARTICIPANTS[0]];
            (participant.name.to_string(), &mut participant.replicas)
        }
        TargetNode::Mediator => (
            crate::deployment::description::MEDIATOR_NODE.to_owned(),
            &mut description.mediator.replicas,
        ),
        TargetNode::Topology => (
            crate::deployment::description::TOPOLOGY_NODE.to_owned(),
            &mut description.topology_manager.replicas,
        ),
        TargetNode::Sequencer => (
            crate::deployment::description::SEQUENCER_NODE.to_owned(),
            &mut description.sequencer.instances,
        ),
    };
    if replicas.len() < 2 {
        bail!(
            "--standby cold --node {}: {node} has {} replica(s); it needs a second one to make \
             cold",
            node_arg(args.node),
            replicas.len()
        );
    }
    if replicas[0].standby != Standby::Warm {
        bail!(
            "--standby cold --node {}: {node}'s first replica {} is cold; it must be the warm \
             one whose host is lost",
            node_arg(args.node),
            replicas[0].name
        );
    }
    replicas[1].standby = Standby::Cold;
    if let Some(other) = replicas[2..].iter().find(|r| r.standby == Standby::Warm) {
        bail!(
            "--standby cold --node {}: {node}'s replica {} is warm too; it would take over by \
             the lease and the controller would never start a cold one (give a deployment \
             whose {node} has one warm replica)",
            node_arg(args.node),
            other.name
        );
    }
    let (warm, cold) = (replicas[0].name.to_string(), replicas[1].name.to_string());
    crate::deployment::check::check(&description)
        .context("the deployment with its cold replica cannot run")?;
    Ok(ColdPlan {
        description,
        node,
        warm,
        cold,
    })
}

fn node_arg(node: TargetNode) -> &'static str {
    match node {
        TargetNode::Participant => "participant",
        TargetNode::Mediator => "mediator",
        TargetNode::Sequencer => "sequencer",
        TargetNode::Topology => "topology",
    }
}

/// Runs the trials with the `meridian` binary at `exe`; progress lines go to `progress`.
pub async fn measure_with(
    args: &FailoverBenchArgs,
    options: &ColdOptions,
    exe: &Path,
    progress: &mut (dyn FnMut(String) + Send),
    shutdown: &CancellationToken,
) -> anyhow::Result<ColdReport> {
    let plan = plan(args, options)?;
    let settings = plan.description.controller.clone();
    let mut trials = Vec::new();
    let mut costs = Vec::new();
    for index in 0..args.trials {
        let first = index == 0;
        let (trial, measured) = run_trial(args, &plan, exe, first, progress, shutdown)
            .await
            .with_context(|| format!("trial {}", index + 1))?;
        progress(format!(
            "trial {}: cold decision {:.0} ms, ready {:.0} ms, first commit {:.0} ms after the \
             kill; audit {}",
            index + 1,
            trial.cold_decision_ms,
            trial.cold_ready_ms,
            trial.first_commit_ms,
            if trial.audit_ok { "OK" } else { "FAILED" }
        ));
        if first {
            costs = measured;
        }
        trials.push(trial);
    }
    let column = |f: fn(&ColdTrial) -> f64| Summary::of(trials.iter().map(f));
    Ok(ColdReport {
        standby: StandbyKind::Cold,
        node: args.node,
        backend: plan.description.storage.backend,
        probe_interval_ms: settings.probe_interval_ms,
        fall: settings.fall,
        fall_threshold_ms: fall_threshold_ms(&plan.description),
        crash_loop_restarts: settings.crash_loop_restarts,
        restart_backoff_initial_ms: settings.restart_backoff_initial_ms,
        restart_decision: Summary::of(trials.iter().filter_map(|t| t.restart_decision_ms)),
        cold_decision: column(|t| t.cold_decision_ms),
        cold_decision_after_fall: column(|t| t.cold_decision_after_fall_ms),
        cold_running: column(|t| t.cold_running_ms),
        cold_ready: column(|t| t.cold_ready_ms),
        first_commit: column(|t| t.first_commit_ms),
        cold_start_to_commit: column(|t| t.cold_start_to_commit_ms),
        costs,
        committed: trials.iter().map(|t| t.committed).sum(),
        failed_requests: trials.iter().map(|t| t.failed_requests).sum(),
        lost_transactions: trials.iter().map(|t| t.lost_transactions).sum(),
        duplicate_transactions: trials.iter().map(|t| t.duplicate_transactions).sum(),
        audit_ok: trials.iter().all(|t| t.audit_ok),
        trials,
    })
}

fn fall_threshold_ms(description: &Description) -> u64 {
    u64::from(description.controller.fall) * description.controller.probe_interval_ms
}

/// A trial's controller and deployment (killed on drop, see [`ControllerChild`]), then its
/// directory.
struct TrialRun {
    controller: ControllerChild,
    _dir: tempfile::TempDir,
}

async fn run_trial(
    args: &FailoverBenchArgs,
    plan: &ColdPlan,
    exe: &Path,
    measure_costs: bool,
    progress: &mut (dyn FnMut(String) + Send),
    shutdown: &CancellationToken,
) -> anyhow::Result<(ColdTrial, Vec<ReplicaCost>)> {
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let file = dir.path().join("deployment.toml");
    std::fs::write(&file, plan.description.to_toml()?)
        .with_context(|| format!("writing {}", file.display()))?;
    let data_dir = dir.path().join("data");
    let log = dir.path().join("controller.log");
    let controller = ControllerChild::spawn(exe, &file, &data_dir, CONTROLLER_NAME, &log)?;
    let mut run = TrialRun {
        controller,
        _dir: dir,
    };
    progress(format!(
        "starting the deployment under the controller ({} warm, {} cold)",
        plan.warm, plan.cold
    ));
    let controller = run.controller.wait_until_up(UP_WAIT, shutdown).await?;

    let deployment = ControlledDeployment::open(&data_dir)?;
    let parties = deployment.parties("standby-bench").await?;
    let run_tag = format!("standby{}", std::process::id());
    let lanes = issue_lanes(&parties, usize::try_from(args.lanes)?, &run_tag).await?;
    let baseline = workload::baseline(&parties).await?;
    let live = Arc::new(Live::default());
    live.epoch();
    let stop = shutdown.child_token();
    // An error or a panic before the end stops the transfers too.
    let _stop_on_drop = stop.clone().drop_guard();
    let load = {
        let (parties, live, stop) = (parties.clone(), live.clone(), stop.clone());
        let spec = WorkloadSpec {
            duration: LOAD_LIMIT,
            rate: None,
            run: run_tag,
        };
        tokio::spawn(async move { run_transfers(&parties, lanes, &spec, live, stop).await })
    };
    tokio::time::sleep(SETTLE).await;
    let costs = if measure_costs {
        replica_costs(&controller.status().await?)?
    } else {
        Vec::new()
    };

    // The host is lost: its config goes (a restart in place cannot start), then the process.
    let warm_pid = deployment
        .pid(&plan.warm)
        .with_context(|| format!("{} does not run before the kill", plan.warm))?;
    let warm_config = deployment.config_path(&plan.warm)?;
    let moved = warm_config.with_extension("toml.host-lost");
    std::fs::rename(&warm_config, &moved)
        .with_context(|| format!("moving {} away", warm_config.display()))?;
    let killed_at = Timestamp::now();
    let killed = Instant::now();
    signal(warm_pid, Signal::SIGKILL)?;
    progress(format!(
        "killed {} (pid {warm_pid}), its host lost",
        plan.warm
    ));
    let allocation = (args.node == TargetNode::Topology).then(|| {
        let client = parties.clients[BANK_PARTICIPANT].clone();
        tokio::spawn(async move {
            let party = PartyId::new(format!("standby-probe-{}", Timestamp::now().as_micros()))?;
            client.allocate_party(&party).await?;
            anyhow::Ok(Instant::now())
        })
    });

    let files = ReplicaFiles::new(
        &data_dir.join(&plan.node),
        &ReplicaName(plan.cold.clone()),
        "unused",
    );
    let ready_url = format!(
        "{}/readyz",
        crate::tls::url(admin_address(&files.cold_config)?)
    );
    let http = crate::tls::http_builder()?
        .timeout(Duration::from_millis(500))
        .build()?;
    let bearer = crate::secrets::bearer(&crate::secrets::admin_token_path(&data_dir)).ok();
    let mut allocation = allocation;
    let (mut running_ms, mut ready_ms, mut commit_at) = (None, None, None);
    let deadline = killed + RECOVERY_WAIT;
    while ready_ms.is_none() || commit_at.is_none() {
        if shutdown.is_cancelled() {
            bail!("interrupted");
        }
        if Instant::now() > deadline {
            bail!(
                "{} not running, ready and committing {} s after the kill (running: {}, ready: \
                 {}, first commit: {}); {}'s log:\n{}\ncontroller log:\n{}",
                plan.cold,
                RECOVERY_WAIT.as_secs(),
                running_ms.is_some(),
                ready_ms.is_some(),
                commit_at.is_some(),
                plan.cold,
                deployment.log_tail(&plan.cold, 20),
                run.controller.log_tail(20)
            );
        }
        if running_ms.is_none() {
            running_ms = spawned_ms(&files.pidfile, killed_at);
        }
        if running_ms.is_some() && ready_ms.is_none() {
            let mut request = http.get(&ready_url);
            if let Some(bearer) = &bearer {
                request = request.header("authorization", bearer);
            }
            if request.send().await.is_ok_and(|r| r.status().is_success()) {
                ready_ms = Some(ms(killed.elapsed()));
            }
        }
        if commit_at.is_none() {
            commit_at = match &mut allocation {
                Some(task) if task.is_finished() => {
                    Some(task.await.context("the allocation task")??)
                }
                Some(_) => None,
                None => first_commit(args.node, &live, killed),
            };
        }
        tokio::time::sleep(POLL).await;
    }
    let first_commit_ms = commit_at.map_or(0.0, |at| ms(at.saturating_duration_since(killed)));

    tokio::time::sleep(SETTLE).await;
    stop.cancel();
    let report = load.await.context("the workload task panicked")??;
    let audit = workload::audit(&parties, &baseline, &report.committed_transactions).await?;
    let duplicates = workload::duplicate_ious(&parties).await?;
    let status = controller.status().await?;
    let since = |record: &AuditRecord| {
        (record.at.as_micros() as f64 - killed_at.as_micros() as f64) / 1_000.0
    };
    let first_record = |kind: AuditKind, replica: &str| {
        status
            .events
            .iter()
            .filter(|e| e.kind == kind && e.at >= killed_at)
            .find(|e| e.replica.as_ref().is_some_and(|r| r.as_str() == replica))
            .map(since)
    };
    let cold_decision_ms = first_record(AuditKind::ColdStart, &plan.cold).with_context(|| {
        format!(
            "{} runs but the controller recorded no cold start for it: {:?}",
            plan.cold, status.events
        )
    })?;
    let fall_ms = fall_threshold_ms(&plan.description) as f64;
    let trial = ColdTrial {
        killed: plan.warm.clone(),
        started: plan.cold.clone(),
        restart_decision_ms: first_record(AuditKind::Restart, &plan.warm),
        crash_loop_ms: first_record(AuditKind::CrashLoop, &plan.warm),
        cold_decision_ms,
        cold_decision_after_fall_ms: cold_decision_ms - fall_ms,
        cold_running_ms: running_ms.unwrap_or_default(),
        cold_ready_ms: ready_ms.unwrap_or_default(),
        first_commit_ms,
        cold_start_to_commit_ms: first_commit_ms - cold_decision_ms,
        committed: report.committed,
        failed_requests: report.rejections.values().sum(),
        lost_transactions: audit.acknowledged_missing,
        duplicate_transactions: duplicates,
        audit_ok: audit.audit_ok && duplicates == 0,
    };
    drop(run);
    Ok((trial, costs))
}

/// The footprint of every replica that runs, by the pids the controller reports.
fn replica_costs(status: &Status) -> anyhow::Result<Vec<ReplicaCost>> {
    let mut costs = Vec::new();
    for replica in status.replicas() {
        let (Some(pid), role) = (replica.pid, replica.role) else {
            continue;
        };
        let role = match role {
            ReplicaRole::Active => "active",
            ReplicaRole::Passive => "passive",
            _ => continue,
        };
        costs.push(ReplicaCost {
            replica: replica.name.to_string(),
            kind: replica.kind,
            role: role.to_owned(),
            pid,
            cost: cost::measure(pid).with_context(|| format!("measuring {}", replica.name))?,
        });
    }
    Ok(costs)
}

/// `admin_address` of a replica's config.
fn admin_address(config: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
    table
        .get("admin_address")
        .and_then(toml::Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("{} has no admin_address", config.display()))
}

/// When the process of a pidfile was spawned, in ms after `killed_at`: the pidfile's
/// modification time (it is written right after the spawn); `None` while there is none.
fn spawned_ms(pidfile: &Path, killed_at: Timestamp) -> Option<f64> {
    let modified = std::fs::metadata(pidfile).ok()?.modified().ok()?;
    let micros = modified
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_micros();
    let micros = u64::try_from(micros).ok()?;
    Some((micros as f64 - killed_at.as_micros() as f64) / 1_000.0)
}

/// When the first request sent after `killed` that needed the target node committed, once
/// it has.
fn first_commit(node: TargetNode, live: &Live, killed: Instant) -> Option<Instant> {
    let committed = |index: usize| {
        live.committed_a_request_sent_after(index, killed)
            .then(|| live.last_commit(index))
            .flatten()
    };
    match node {
        TargetNode::Participant => committed(OWNER_PARTICIPANTS[0]),
        TargetNode::Mediator => (0..3).filter_map(committed).min(),
        // Every submitting participant: members subscribe to different instances.
        TargetNode::Sequencer => OWNER_PARTICIPANTS
            .iter()
            .map(|&i| committed(i))
            .collect::<Option<Vec<Instant>>>()?
            .into_iter()
            .max(),
        // Transfers do not need it; its probe is a party allocation.
        TargetNode::Topology => None,
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::DeploymentArgs;

    fn args(node: TargetNode, deployment: DeploymentArgs) -> FailoverBenchArgs {
        FailoverBenchArgs {
            node,
            trials: 1,
            deployment,
            lanes: 4,
            lease_timeout_ms: None,
            json: true,
        }
    }

    #[test]
    fn the_target_nodes_second_replica_is_made_cold() {
        for (node, warm, cold) in [
            (TargetNode::Participant, "participant2-a", "participant2-b"),
            (TargetNode::Mediator, "mediator-a", "mediator-b"),
            (
                TargetNode::Topology,
                "topology-manager-a",
                "topology-manager-b",
            ),
            (TargetNode::Sequencer, "sequencer-a", "sequencer-b"),
        ] {
            let plan = plan(
                &args(node, DeploymentArgs::default()),
                &ColdOptions::default(),
            )
            .expect("a plan");
            assert_eq!((plan.warm.as_str(), plan.cold.as_str()), (warm, cold));
            let keys = plan.description.node_keys();
            let view = plan
                .description
                .nodes(&keys)
                .into_iter()
                .find(|n| n.name == plan.node)
                .expect("the node");
            assert_eq!(view.cold().count(), 1, "{node:?}");
            assert_eq!(view.warm().count(), 1, "{node:?}");
        }
    }

    #[test]
    fn what_it_cannot_measure_is_refused_naming_why() {
        let postgres = DeploymentArgs {
            backend: Some(Backend::Postgres),
            ..DeploymentArgs::default()
        };
        let error = plan(
            &args(TargetNode::Participant, postgres),
            &ColdOptions::default(),
        )
        .expect_err("PostgreSQL")
        .to_string();
        assert!(error.contains("SQLite only"), "{error}");
        let single = DeploymentArgs {
            preset: Some(Preset::Single),
            ..DeploymentArgs::default()
        };
        let error = plan(&args(TargetNode::Mediator, single), &ColdOptions::default())
            .expect_err("one replica")
            .to_string();
        assert!(error.contains("mediator has 1 replica"), "{error}");
        let error = plan(
            &args(TargetNode::Participant, DeploymentArgs::default()),
            &ColdOptions {
                crash_loop_restarts: Some(0),
            },
        )
        .expect_err("zero restarts")
        .to_string();
        assert!(error.contains("crash_loop_restarts"), "{error}");
    }
}
