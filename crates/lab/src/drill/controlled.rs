//! Region drills operated by the controller: `meridian drill --scenario region-switchover |
//! region-loss` with `--operator controller` (the default on SQLite). The drill starts
//! `meridian controller` as a child process on a fresh data directory per trial (the
//! controller starts the deployment itself), runs the transfer workload on every replica's
//! endpoint (or, with `--load-balancer haproxy`, on HAProxy's one address per participant
//! only), and then plays the operator:
//!
//! - **region-switchover**: proposes a switchover of every node to the other region, approves
//!   it as operator `drill`, waits (bounded) until the plan is done;
//! - **region-loss**: freezes every process of the active region (SIGSTOP — unreachable
//!   machines: the controller never restarts a process that still exists), waits (bounded)
//!   until the controller detects the region failure and proposes a region-loss plan, approves
//!   it acknowledging the loss it states, waits until it is done.
//!
//! It measures the controller's detection (loss → plan proposed), each plan step's duration,
//! and the figure the target is about: approval → the first committed transfer *sent after the
//! old region was fenced* (so it committed in the new region), plus when every submitting
//! participant had one; then the audit (RPO: acknowledged transactions missing; duplicates).
//! Through a load balancer the plan's load balancer step must have reloaded HAProxy, and
//! HAProxy must route every participant to the new region's replicas (its runtime socket).
//! Everything is checked before a process starts; every wait is bounded; the controller and
//! the node processes are killed when a trial ends, however it ends.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::ValueEnum;
use meridian_controller::client::ControllerClient;
use meridian_controller::model::Temperature;
use meridian_controller::plan::{Plan, PlanKind, PlanState, StepAction, StepOutcome, StepState};
use meridian_core::placement::RegionName;
use meridian_core::Timestamp;
use nix::sys::signal::Signal;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::plan::Scenario;
use super::DrillArgs;
use crate::controller::inventory::inventory;
use crate::controller::process::signal;
use crate::controller::{ControlledDeployment, ControllerChild};
use crate::deployment::description::LoadBalancerKind;
use crate::deployment::{Backend, Description};
use crate::fault::Fault;
use crate::stats::{fmt_ms, quantiles};
use crate::workload::{
    audit, baseline, duplicate_ious, issue_lanes, run_transfers, Live, WorkloadSpec,
    OWNER_PARTICIPANTS,
};

/// Who operates a region move in a drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operator {
    /// `meridian controller`, started by the drill: its plan, approved by the drill.
    Controller,
    /// The lab's own hand-written operator (`crate::region`), PostgreSQL only.
    Lab,
}

/// The controller replica the drill runs.
const CONTROLLER_NAME: &str = "controller-drill";
/// Who the controller's audit log records as the approver.
const APPROVER: &str = "drill";
/// The drill's own files beside the deployment's: the deployment file handed to the
/// controller, and the controller's log.
const DRILL_DIR: &str = "drill";
/// How long the controller gets to start the deployment until every replica is up.
const UP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the controller gets to propose a region-loss plan after the dwell.
const DETECTION_SLACK: Duration = Duration::from_secs(30);
/// How long an approved plan may run.
const PLAN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long after the plan finished the first commit in the new region may still come.
const FIRST_COMMIT_SLACK: Duration = Duration::from_secs(30);
/// How often the first commit is looked for (the figure's resolution).
const COMMIT_POLL: Duration = Duration::from_millis(10);
/// How long after a region move HAProxy's health checks may take to mark region one's
/// replicas down.
const ROUTES_SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// The summary name of the plan's `MoveLoadBalancer` step.
pub const LOAD_BALANCER_STEP: &str = "load balancer";
/// How often the plan is read while it runs.
const PLAN_POLL: Duration = Duration::from_millis(100);

/// The region move the controller operates in this drill, or `None` when the lab runs the
/// drill as before; an error, before anything starts, for a request the controller cannot
/// operate. `--operator` defaults to `controller` for a region move on SQLite and to `lab` on
/// PostgreSQL (where the lab's operator promotes the servers it runs).
pub fn operated_by_controller(
    args: &DrillArgs,
    description: &Description,
) -> anyhow::Result<Option<Fault>> {
    let region_move = match args.scenario {
        Scenario::One(fault) if fault.is_region_move() => Some(fault),
        _ => None,
    };
    let backend = description.storage.backend;
    let Some(fault) = region_move else {
        if args.operator == Some(Operator::Controller) {
            bail!(
                "--operator controller operates region-switchover and region-loss only; the \
                 lab injects the other scenarios (leave --operator out)"
            );
        }
        return Ok(None);
    };
    let operator = args.operator.unwrap_or(match backend {
        Backend::Sqlite => Operator::Controller,
        Backend::Postgres => Operator::Lab,
    });
    if operator == Operator::Lab {
        return Ok(None);
    }
    if backend == Backend::Postgres {
        bail!(
            "{}: --operator controller runs on SQLite only for now (the drill cannot take down \
             PostgreSQL servers the controller's process runs); use --backend sqlite, or \
             --operator lab for PostgreSQL",
            fault.name()
        );
    }
    for (given, option) in [
        (args.target.is_some(), "--target"),
        (args.svg.is_some(), "--svg"),
        (args.seed.is_some(), "--seed"),
    ] {
        if given {
            bail!(
                "{option} does not apply to {} operated by the controller (every node moves; \
                 the report is the table and --json)",
                fault.name()
            );
        }
    }
    if description.participants.len() < 3 {
        bail!(
            "the deployment runs {} participants; the workload needs 3 (bank, alice, bob)",
            description.participants.len()
        );
    }
    regions(description).with_context(|| {
        format!(
            "{} through the controller needs a second region with a cold replica of every \
             node (try --preset two-regions --backend sqlite, or --preset two-regions \
             --backend postgres --operator lab)",
            fault.name()
        )
    })?;
    Ok(Some(fault))
}

/// The region every warm replica runs in, and the other region holding a replica of every
/// node: where the drill moves the deployment.
fn regions(description: &Description) -> anyhow::Result<(RegionName, RegionName)> {
    let inventory = inventory(description);
    let mut warm = inventory
        .replicas
        .iter()
        .filter(|r| r.temperature == Temperature::Warm)
        .map(|r| &r.region);
    let from = warm.next().context("no warm replica")?.clone();
    if let Some(other) = warm.find(|region| **region != from) {
        bail!("warm replicas run in {from} and in {other}: no single region to move from");
    }
    let to = inventory
        .regions
        .iter()
        .map(|r| &r.name)
        .filter(|name| **name != from)
        .find(|name| {
            inventory.nodes().into_iter().all(|node| {
                inventory
                    .replicas_of(node)
                    .any(|r| &r.region == *name && r.temperature == Temperature::Cold)
            })
        })
        .with_context(|| format!("no region but {from} has a cold replica of every node"))?
        .clone();
    Ok((from, to))
}

/// One plan step's timing and outcome.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Its kind, for the summary: fence, catch-up, promote, start <node kind>, ...
    pub kind: String,
    pub step: String,
    /// done, already-done, failed (or pending / running if the plan stopped before it).
    pub outcome: String,
    pub detail: Option<String>,
    pub duration_ms: Option<f64>,
}

/// One trial: one fresh deployment, one region move.
#[derive(Debug, Clone, Serialize)]
pub struct TrialReport {
    pub trial: u32,
    pub scenario: Fault,
    pub from_region: String,
    pub to_region: String,
    pub plan: Option<String>,
    /// The plan's last state: done, failed, ...
    pub plan_state: String,
    /// Region loss: from the freeze to the controller's plan (its dwell included).
    pub detection_ms: Option<f64>,
    /// Region loss: the data loss the plan stated, which the drill acknowledged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_loss: Option<String>,
    /// From the approval to the plan's end.
    pub approval_to_done_ms: Option<f64>,
    /// From the approval to the first committed transfer sent after the old region was
    /// fenced (so committed in the new region): the target's figure.
    pub approval_to_first_commit_ms: Option<f64>,
    /// ... until each submitting participant had one.
    pub approval_to_all_participants_ms: Option<f64>,
    pub steps: Vec<StepReport>,
    pub committed: u64,
    pub failed_requests: u64,
    /// Failed requests from the approval (region-loss: from the freeze) to the first commit
    /// in the new region.
    pub failed_during_move: u64,
    pub retried_requests: u64,
    pub failure_samples: Vec<String>,
    /// Acknowledged transactions missing afterwards.
    pub rpo_transactions: usize,
    pub duplicate_transactions: usize,
    pub amounts_conserved: bool,
    pub views_agree: bool,
    /// With a load balancer: where HAProxy routes each participant once the plan is done
    /// (from its runtime socket).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub load_balancer_routes: Vec<LbRoute>,
    /// What went wrong, if anything.
    pub problem: Option<String>,
}

/// Where HAProxy sends one participant's Ledger API traffic after a region move.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LbRoute {
    /// The frontend: the participant's name.
    pub frontend: String,
    /// The servers (replicas) up in its backend, and the region of each.
    pub up: Vec<String>,
    pub regions: Vec<String>,
}

impl TrialReport {
    fn passed(&self) -> bool {
        self.problem.is_none()
            && self.plan_state == "done"
            && self.approval_to_first_commit_ms.is_some()
            && self.rpo_transactions == 0
            && self.duplicate_transactions == 0
            && self.amounts_conserved
            && self.views_agree
    }
}

/// The drill's report: every trial, and p50/max over them.
#[derive(Debug, Clone, Serialize)]
pub struct ControlledReport {
    pub operator: Operator,
    pub backend: Backend,
    /// The load balancer every application request went through, or null when the clients
    /// used every replica's endpoint themselves.
    pub load_balancer: Option<LoadBalancerKind>,
    pub scenario: Fault,
    pub trials: Vec<TrialReport>,
    /// [p50, max] over the trials that reached it.
    pub approval_to_first_commit_ms_p50_max: [f64; 2],
    pub approval_to_all_participants_ms_p50_max: [f64; 2],
    pub approval_to_done_ms_p50_max: [f64; 2],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detection_ms_p50_max: Option<[f64; 2]>,
    /// Each step (by its position in the plan) [p50, max] ms.
    pub steps_ms_p50_max: Vec<(String, [f64; 2])>,
    pub rpo_transactions: usize,
    pub duplicate_transactions: usize,
    pub failed_requests: u64,
    pub passed: bool,
}

impl ControlledReport {
    fn new(description: &Description, scenario: Fault, trials: Vec<TrialReport>) -> Self {
        let p50_max = |values: Vec<f64>| {
            let [p50, max] = quantiles(values, [0.5, 1.0]);
            [p50, max]
        };
        let of = |figure: fn(&TrialReport) -> Option<f64>| {
            p50_max(trials.iter().filter_map(figure).collect())
        };
        let mut steps_ms_p50_max = Vec::new();
        if let Some(first) = trials.first() {
            for (index, step) in first.steps.iter().enumerate() {
                let kind = step.kind.clone();
                let values = trials
                    .iter()
                    .filter_map(|t| t.steps.get(index)?.duration_ms)
                    .collect();
                steps_ms_p50_max.push((kind, p50_max(values)));
            }
        }
        Self {
            operator: Operator::Controller,
            backend: description.storage.backend,
            load_balancer: super::routed_through(description),
            scenario,
            approval_to_first_commit_ms_p50_max: of(|t| t.approval_to_first_commit_ms),
            approval_to_all_participants_ms_p50_max: of(|t| t.approval_to_all_participants_ms),
            approval_to_done_ms_p50_max: of(|t| t.approval_to_done_ms),
            detection_ms_p50_max: (scenario == Fault::RegionLoss).then(|| of(|t| t.detection_ms)),
            steps_ms_p50_max,
            rpo_transactions: trials.iter().map(|t| t.rpo_transactions).sum(),
            duplicate_transactions: trials.iter().map(|t| t.duplicate_transactions).sum(),
            failed_requests: trials.iter().map(|t| t.failed_requests).sum(),
            passed: !trials.is_empty() && trials.iter().all(TrialReport::passed),
            trials,
        }
    }
}

/// A step's short name for the summary ("fence", "start participant").
fn step_kind(action: &StepAction) -> String {
    match action {
        StepAction::FenceRegion { .. } => "fence".to_owned(),
        StepAction::WaitForCatchUp { .. } => "catch-up".to_owned(),
        StepAction::PromoteDatabases { .. } => "promote".to_owned(),
        StepAction::StartReplicas { kind, .. } => format!("start {}", kind.command()),
        StepAction::WaitReady { .. } => "wait ready".to_owned(),
        StepAction::MoveLoadBalancer { .. } => LOAD_BALANCER_STEP.to_owned(),
    }
}

/// Runs the drill: `args.trials` trials, each on a fresh deployment; prints the table and
/// writes the JSON. An error if a trial could not run; `Ok` with `passed` false if one ran
/// and missed a requirement.
pub async fn run(
    args: &DrillArgs,
    description: &Description,
    fault: Fault,
    shutdown: CancellationToken,
) -> anyhow::Result<ControlledReport> {
    let exe = match &args.controller_exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe().context("locating the meridian binary")?,
    };
    let (from, to) = regions(description)?;
    let temp = match &args.data_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().context("creating a temp dir")?),
    };
    let base = args
        .data_dir
        .clone()
        .or_else(|| temp.as_ref().map(|t| t.path().to_path_buf()))
        .context("no data directory")?;
    let mut trials = Vec::new();
    for trial in 1..=args.trials {
        if shutdown.is_cancelled() {
            break;
        }
        let data_dir = if args.trials == 1 && args.data_dir.is_some() {
            base.clone()
        } else {
            base.join(format!("trial-{trial}"))
        };
        eprintln!(
            "meridian drill: {} operated by the controller, trial {trial} of {}: starting the \
             controller on {}",
            fault.name(),
            args.trials,
            data_dir.display()
        );
        let setup = TrialSetup {
            exe: &exe,
            data_dir: &data_dir,
            description,
            fault,
            from: &from,
            to: &to,
            trial,
        };
        let report = run_trial(args, &setup, &shutdown)
            .await
            .with_context(|| format!("trial {trial}"))?;
        eprintln!("  {}", trial_line(&report));
        trials.push(report);
    }
    Ok(ControlledReport::new(description, fault, trials))
}

struct TrialSetup<'a> {
    exe: &'a Path,
    data_dir: &'a Path,
    description: &'a Description,
    fault: Fault,
    from: &'a RegionName,
    to: &'a RegionName,
    trial: u32,
}

async fn run_trial(
    args: &DrillArgs,
    setup: &TrialSetup<'_>,
    shutdown: &CancellationToken,
) -> anyhow::Result<TrialReport> {
    let data_dir = std::path::absolute(setup.data_dir)?;
    let drill_dir = data_dir.join(DRILL_DIR);
    std::fs::create_dir_all(&drill_dir)
        .with_context(|| format!("creating {}", drill_dir.display()))?;
    let deployment_file = drill_dir.join("deployment.toml");
    std::fs::write(&deployment_file, setup.description.to_toml()?)
        .with_context(|| format!("writing {}", deployment_file.display()))?;
    let log_path = drill_dir.join(format!("{CONTROLLER_NAME}.log"));
    let mut controller = ControllerChild::spawn(
        setup.exe,
        &deployment_file,
        &data_dir,
        CONTROLLER_NAME,
        &log_path,
    )?;
    let client = controller.wait_until_up(UP_TIMEOUT, shutdown).await?;
    eprintln!("  the controller started the deployment; starting the workload");

    let deployment = ControlledDeployment::open(&data_dir)?;
    let token = std::fs::read_to_string(crate::secrets::admin_token_path(&data_dir))
        .context("reading the deployment's admin token")?;
    let client = client.with_token(token.trim());
    let parties = deployment.parties("drill").await?;
    let run = format!("drill{}t{}", std::process::id(), setup.trial);
    let lanes = issue_lanes(&parties, usize::try_from(args.lanes)?, &run).await?;
    let before = baseline(&parties).await?;
    let live = Arc::new(Live::default());
    live.epoch();
    let stop = shutdown.child_token();
    let workload = {
        let (parties, live, stop) = (parties.clone(), live.clone(), stop.clone());
        let spec = WorkloadSpec {
            duration: Duration::from_secs(3_600),
            rate: None,
            run,
        };
        tokio::spawn(async move { run_transfers(&parties, lanes, &spec, live, stop).await })
    };
    tokio::time::sleep(Duration::from_secs(args.settle_s)).await;

    let mut report = TrialReport {
        trial: setup.trial,
        scenario: setup.fault,
        from_region: setup.from.to_string(),
        to_region: setup.to.to_string(),
        plan: None,
        plan_state: "none".to_owned(),
        detection_ms: None,
        data_loss: None,
        approval_to_done_ms: None,
        approval_to_first_commit_ms: None,
        approval_to_all_participants_ms: None,
        steps: Vec::new(),
        committed: 0,
        failed_requests: 0,
        failed_during_move: 0,
        retried_requests: 0,
        failure_samples: Vec::new(),
        rpo_transactions: 0,
        duplicate_transactions: 0,
        amounts_conserved: false,
        views_agree: false,
        load_balancer_routes: Vec::new(),
        problem: None,
    };
    let mut moved = operate(setup, &deployment, &client, &live, &mut report).await;
    if moved.is_ok() && setup.description.load_balancer.is_some() {
        moved = check_load_balancer(&data_dir, setup.to, &mut report).await;
    }
    if let Err(error) = moved {
        report.problem = Some(format!("{error:#}"));
    } else {
        tokio::time::sleep(Duration::from_secs(args.observe_s)).await;
    }
    stop.cancel();
    let workload = workload.await.context("the workload task panicked")??;
    report.committed = workload.committed;
    report.failed_requests = live.failed.load(std::sync::atomic::Ordering::Relaxed);
    report.retried_requests = live.retried.load(std::sync::atomic::Ordering::Relaxed);
    report.failure_samples = workload.failure_samples.clone();
    eprintln!("  auditing the ledgers");
    let audited = audit(&parties, &before, &workload.committed_transactions).await?;
    report.rpo_transactions = audited.acknowledged_missing;
    report.amounts_conserved = audited.amounts_conserved;
    report.views_agree = audited.views_agree;
    report.duplicate_transactions = duplicate_ious(&parties).await?;
    drop(controller);
    Ok(report)
}

/// The instant of the controller's timestamp `at`, by the pair (`anchor`, `anchor_at`) read at
/// the same moment (the controller runs on this machine: one wall clock).
fn instant_of(at: Timestamp, anchor: Instant, anchor_at: Timestamp) -> Instant {
    if at >= anchor_at {
        anchor + at.duration_since(anchor_at)
    } else {
        anchor
            .checked_sub(anchor_at.duration_since(at))
            .unwrap_or(anchor)
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

/// Plays the operator of one region move and measures it into `report`.
async fn operate(
    setup: &TrialSetup<'_>,
    deployment: &ControlledDeployment,
    client: &ControllerClient,
    live: &Live,
    report: &mut TrialReport,
) -> anyhow::Result<()> {
    let by = Some(APPROVER.to_owned());
    let (plan, failed_at_freeze) = match setup.fault {
        Fault::RegionLoss => {
            let failed = live.failed.load(std::sync::atomic::Ordering::Relaxed);
            let (_, struck_ts) = freeze_region(deployment, setup.from)?;
            eprintln!("  froze every process of {} (SIGSTOP)", setup.from);
            let plan = wait_for_loss_plan(client, setup, deployment).await?;
            report.detection_ms = Some(ms(plan.created_at.duration_since(struck_ts)));
            report.data_loss = plan.data_loss.as_ref().map(|loss| {
                let clusters: Vec<String> = loss
                    .lag_bytes
                    .iter()
                    .map(|(cluster, bytes)| format!("{cluster} {bytes} bytes"))
                    .collect();
                if clusters.is_empty() {
                    "none stated (SQLite: one shared file per node)".to_owned()
                } else {
                    clusters.join(", ")
                }
            });
            (plan, Some(failed))
        }
        _ => {
            let plan = client
                .propose(setup.to.clone(), Vec::new(), by.clone())
                .await
                .context("proposing the switchover")?;
            (plan, None)
        }
    };
    report.plan = Some(plan.id.to_string());
    let approved_at = Instant::now();
    let failed_before = live.failed.load(std::sync::atomic::Ordering::Relaxed);
    let plan = client
        .approve(&plan.id, plan.kind == PlanKind::RegionLoss, by)
        .await
        .with_context(|| format!("approving {}", plan.id))?;
    eprintln!("  approved {} as operator {APPROVER}", plan.id);

    // Follow the plan (every 100 ms) and the commits (every 10 ms) until the plan ended and
    // the new region's first commits came, each bounded.
    let mut last = plan;
    let mut fenced_at: Option<Instant> = None;
    let mut done_at: Option<Instant> = None;
    let mut first: Option<Instant> = None;
    let mut all: Option<Instant> = None;
    let mut next_read = Instant::now();
    let plan_deadline = approved_at + PLAN_TIMEOUT;
    loop {
        let now = Instant::now();
        if now >= next_read && done_at.is_none() {
            next_read = now + PLAN_POLL;
            let status = client.status().await.context("reading the plan")?;
            let (anchor, anchor_at) = (Instant::now(), Timestamp::now());
            if let Some(plan) = status.plans.into_iter().find(|p| p.id == last.id) {
                last = plan;
            }
            if fenced_at.is_none() {
                fenced_at = fence_end(&last).map(|at| instant_of(at, anchor, anchor_at));
            }
            match &last.state {
                PlanState::Done { at, .. } | PlanState::Failed { at, .. } => {
                    done_at = Some(instant_of(*at, anchor, anchor_at));
                }
                PlanState::Running { .. } | PlanState::AwaitingApproval => {}
                other => bail!("plan {} is {} after its approval", last.id, other.name()),
            }
        }
        if let Some(fenced) = fenced_at {
            let fresh = |index: &usize| live.committed_a_request_sent_after(*index, fenced);
            if first.is_none() && OWNER_PARTICIPANTS.iter().any(fresh) {
                first = Some(Instant::now());
                report.failed_during_move = live
                    .failed
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .saturating_sub(failed_from_for(failed_at_freeze, failed_before));
            }
            if all.is_none() && OWNER_PARTICIPANTS.iter().all(fresh) {
                all = Some(Instant::now());
            }
        }
        if let Some(done) = done_at {
            if all.is_some() || Instant::now() >= done.max(approved_at) + FIRST_COMMIT_SLACK {
                break;
            }
        } else if Instant::now() >= plan_deadline {
            break;
        }
        tokio::time::sleep(COMMIT_POLL).await;
    }
    report.plan_state = last.state.name().to_owned();
    report.steps = last.steps.iter().map(step_report).collect();
    report.approval_to_done_ms = done_at.map(|at| ms(at.saturating_duration_since(approved_at)));
    report.approval_to_first_commit_ms =
        first.map(|at| ms(at.saturating_duration_since(approved_at)));
    report.approval_to_all_participants_ms =
        all.map(|at| ms(at.saturating_duration_since(approved_at)));
    if let PlanState::Failed { error, .. } = &last.state {
        bail!("plan {} failed: {error}", last.id);
    }
    if done_at.is_none() {
        bail!(
            "plan {} was still {} {} s after its approval",
            last.id,
            last.state.name(),
            PLAN_TIMEOUT.as_secs()
        );
    }
    if first.is_none() {
        bail!(
            "no transfer sent after the fence of {} committed within {} s of the plan's end",
            setup.from,
            FIRST_COMMIT_SLACK.as_secs()
        );
    }
    Ok(())
}

/// After a region move through a load balancer: the plan's load balancer step must have
/// reloaded HAProxy (not found it already there, nor no load balancer at all), and HAProxy must
/// route every participant to replicas of `to` only. Records the routes in `report`.
async fn check_load_balancer(
    data_dir: &Path,
    to: &RegionName,
    report: &mut TrialReport,
) -> anyhow::Result<()> {
    let step = report
        .steps
        .iter()
        .find(|s| s.kind == LOAD_BALANCER_STEP)
        .context("the plan has no load balancer step")?;
    if step.outcome != "done" {
        bail!(
            "the plan's load balancer step is {} ({}), not done: HAProxy was not reloaded",
            step.outcome,
            step.detail.as_deref().unwrap_or("no detail")
        );
    }
    let files = crate::lb::files(data_dir);
    let plan = files.load_plan()?;
    // A reload starts every server up until its checks say otherwise (HAProxy keeps no state
    // across it), so region one's fenced replicas may still show up for a few checks.
    let deadline = Instant::now() + ROUTES_SETTLE_TIMEOUT;
    loop {
        let states = meridian_lb::haproxy::server_states(&files.socket()).await?;
        report.load_balancer_routes = routes(&plan, &states);
        let astray: Vec<String> = report
            .load_balancer_routes
            .iter()
            .filter(|r| r.up.is_empty() || r.regions.iter().any(|region| region != to.as_str()))
            .map(|r| {
                format!(
                    "{} → {} ({})",
                    r.frontend,
                    r.up.join("+"),
                    r.regions.join("+")
                )
            })
            .collect();
        if astray.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} s after the move HAProxy does not route every participant to {to} only: {}",
                ROUTES_SETTLE_TIMEOUT.as_secs(),
                astray.join(", ")
            );
        }
        tokio::time::sleep(PLAN_POLL).await;
    }
}

/// Per participant frontend of `plan`, the servers `states` shows up, with their regions.
fn routes(
    plan: &meridian_lb::LbPlan,
    states: &[meridian_lb::haproxy::ServerState],
) -> Vec<LbRoute> {
    plan.frontends
        .iter()
        .filter(|f| f.traffic == meridian_lb::Traffic::Ledger)
        .map(|frontend| {
            let up: Vec<&meridian_lb::Server> = frontend
                .servers
                .iter()
                .filter(|server| {
                    states
                        .iter()
                        .any(|s| s.backend == frontend.name && s.server == server.name && s.is_up())
                })
                .collect();
            LbRoute {
                frontend: frontend.name.clone(),
                up: up.iter().map(|s| s.name.clone()).collect(),
                regions: up.iter().map(|s| s.region.clone()).collect(),
            }
        })
        .collect()
}

/// Where the move's failures are counted from: a region loss's start with the freeze, before
/// the approval (the counter at the freeze); a switchover's with the approval.
fn failed_from_for(failed_at_freeze: Option<u64>, failed_at_approval: u64) -> u64 {
    failed_at_freeze.unwrap_or(failed_at_approval)
}

/// When the plan's fence step finished, if it did.
fn fence_end(plan: &Plan) -> Option<Timestamp> {
    plan.steps
        .iter()
        .find_map(|step| match (&step.action, &step.state) {
            (StepAction::FenceRegion { .. }, StepState::Finished { finished_at, .. }) => {
                Some(*finished_at)
            }
            _ => None,
        })
}

fn step_report(step: &meridian_controller::plan::Step) -> StepReport {
    let (outcome, detail, duration_ms) = match &step.state {
        StepState::Pending => ("pending".to_owned(), None, None),
        StepState::Running { .. } => ("running".to_owned(), None, None),
        StepState::Finished {
            started_at,
            finished_at,
            outcome,
        } => {
            let (name, detail) = match outcome {
                StepOutcome::Done(detail) => ("done", detail),
                StepOutcome::AlreadyDone(detail) => ("already-done", detail),
                StepOutcome::Failed(detail) => ("failed", detail),
            };
            (
                name.to_owned(),
                Some(detail.clone()),
                Some(ms(finished_at.duration_since(*started_at))),
            )
        }
    };
    StepReport {
        kind: step_kind(&step.action),
        step: step.action.describe(),
        outcome,
        detail,
        duration_ms,
    }
}

/// SIGSTOPs every running process of `region`: its machines stop answering, and the
/// controller, which restarts only a process that is gone, restarts none of them.
fn freeze_region(
    deployment: &ControlledDeployment,
    region: &RegionName,
) -> anyhow::Result<(Instant, Timestamp)> {
    let inventory = inventory(&deployment.description);
    let pids: Vec<(String, u32)> = inventory
        .replicas
        .iter()
        .filter(|r| &r.region == region)
        .filter_map(|r| {
            let name = r.name.to_string();
            deployment.pid(&name).map(|pid| (name, pid))
        })
        .collect();
    if pids.is_empty() {
        bail!("no process of {region} runs: nothing to lose");
    }
    let struck = (Instant::now(), Timestamp::now());
    for (name, pid) in &pids {
        signal(*pid, Signal::SIGSTOP).with_context(|| format!("freezing {name}"))?;
    }
    Ok(struck)
}

/// The region-loss plan the controller proposes for `setup.from`, waited for (bounded: the
/// dwell and some slack).
async fn wait_for_loss_plan(
    client: &ControllerClient,
    setup: &TrialSetup<'_>,
    deployment: &ControlledDeployment,
) -> anyhow::Result<Plan> {
    let dwell = Duration::from_millis(deployment.description.controller.region_failure_dwell_ms);
    let deadline = Instant::now() + dwell + DETECTION_SLACK;
    loop {
        let status = client.status().await.context("reading the plans")?;
        if let Some(plan) = status.plans.into_iter().find(|p| {
            p.kind == PlanKind::RegionLoss
                && &p.from_region == setup.from
                && p.state == PlanState::AwaitingApproval
        }) {
            return Ok(plan);
        }
        if Instant::now() >= deadline {
            bail!(
                "the controller proposed no region-loss plan for {} within {} s of the freeze \
                 (dwell {} ms)",
                setup.from,
                (dwell + DETECTION_SLACK).as_secs(),
                dwell.as_millis()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One trial as one line of progress.
fn trial_line(report: &TrialReport) -> String {
    format!(
        "trial {}: plan {} {}; approval → first commit in {} {} ms (every participant {} ms); \
         detection {} ms; RPO {}; duplicates {}; failed {}{}",
        report.trial,
        report.plan.as_deref().unwrap_or("-"),
        report.plan_state,
        report.to_region,
        fmt_ms(report.approval_to_first_commit_ms),
        fmt_ms(report.approval_to_all_participants_ms),
        fmt_ms(report.detection_ms),
        report.rpo_transactions,
        report.duplicate_transactions,
        report.failed_requests,
        report
            .problem
            .as_ref()
            .map(|p| format!("; problem: {p}"))
            .unwrap_or_default()
    )
}

/// The drill's table.
pub fn print_table(report: &ControlledReport) {
    println!(
        "\nmeridian drill {} operated by the controller ({:?}, {}): {} trial(s)",
        report.scenario.name(),
        report.backend,
        super::routing_name(report.load_balancer),
        report.trials.len()
    );
    println!(
        "  {:>5} {:<8} {:<6} {:>9} {:>13} {:>13} {:>9} {:>4} {:>4} {:>7} {:>7}",
        "trial",
        "plan",
        "state",
        "detect ms",
        "→1st commit",
        "→all commit",
        "→done ms",
        "RPO",
        "dup",
        "failed",
        "retried"
    );
    for trial in &report.trials {
        println!(
            "  {:>5} {:<8} {:<6} {:>9} {:>13} {:>13} {:>9} {:>4} {:>4} {:>7} {:>7}",
            trial.trial,
            trial.plan.as_deref().unwrap_or("-"),
            trial.plan_state,
            fmt_ms(trial.detection_ms),
            fmt_ms(trial.approval_to_first_commit_ms),
            fmt_ms(trial.approval_to_all_participants_ms),
            fmt_ms(trial.approval_to_done_ms),
            trial.rpo_transactions,
            trial.duplicate_transactions,
            trial.failed_requests,
            trial.retried_requests
        );
        for step in &trial.steps {
            println!(
                "        {:>7} ms  {:<12} {}",
                fmt_ms(step.duration_ms),
                step.outcome,
                step.step
            );
        }
        if let Some(loss) = &trial.data_loss {
            println!("        data loss acknowledged: {loss}");
        }
        for route in &trial.load_balancer_routes {
            println!(
                "        HAProxy routes {} → {} ({})",
                route.frontend,
                route.up.join("+"),
                route.regions.join("+")
            );
        }
        if let Some(problem) = &trial.problem {
            println!("        problem: {problem}");
        }
        for sample in trial.failure_samples.iter().take(3) {
            println!("        failed: {sample}");
        }
    }
    let [p50, max] = report.approval_to_first_commit_ms_p50_max;
    let [all_p50, all_max] = report.approval_to_all_participants_ms_p50_max;
    let [done_p50, done_max] = report.approval_to_done_ms_p50_max;
    println!(
        "  approval → first commit in the new region p50 {p50:.0} ms, max {max:.0} ms; every \
         participant p50 {all_p50:.0} ms, max {all_max:.0} ms; plan done p50 {done_p50:.0} ms, \
         max {done_max:.0} ms"
    );
    if let Some([p50, max]) = report.detection_ms_p50_max {
        println!("  detection (freeze → plan proposed) p50 {p50:.0} ms, max {max:.0} ms");
    }
    let steps: Vec<String> = report
        .steps_ms_p50_max
        .iter()
        .map(|(step, [p50, max])| format!("{step} {p50:.0}/{max:.0}"))
        .collect();
    println!("  steps p50/max ms: {}", steps.join(", "));
    println!(
        "  RPO {}; duplicates {}; failed requests {}; {}",
        report.rpo_transactions,
        report.duplicate_transactions,
        report.failed_requests,
        if report.passed { "PASSED" } else { "FAILED" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::Preset;

    #[test]
    fn the_two_regions_preset_moves_from_region_one_to_region_two() {
        let description = Description::preset(Preset::TwoRegions).with_backend(Backend::Sqlite);
        let (from, to) = regions(&description).expect("two regions");
        assert_eq!((from.as_str(), to.as_str()), ("region-1", "region-2"));
        let error = regions(&Description::preset(Preset::Replicated)).expect_err("one region");
        assert!(format!("{error:#}").contains("cold replica of every node"));
    }

    #[test]
    fn a_step_is_summarised_by_its_kind() {
        let start = StepAction::StartReplicas {
            kind: meridian_core::placement::NodeKind::Participant,
            replicas: vec!["participant1-c".into()],
        };
        assert_eq!(step_kind(&start), "start participant");
        let fence = StepAction::FenceRegion {
            region: "region-1".into(),
            replicas: Vec::new(),
        };
        assert_eq!(step_kind(&fence), "fence");
    }

    #[test]
    fn a_controller_timestamp_maps_to_an_instant_either_side_of_the_anchor() {
        let anchor = Instant::now();
        let at = Timestamp::from_micros(10_000_000);
        assert_eq!(
            instant_of(Timestamp::from_micros(10_250_000), anchor, at),
            anchor + Duration::from_millis(250)
        );
        if let Some(earlier) = anchor.checked_sub(Duration::from_millis(250)) {
            assert_eq!(
                instant_of(Timestamp::from_micros(9_750_000), anchor, at),
                earlier
            );
        }
    }
}
