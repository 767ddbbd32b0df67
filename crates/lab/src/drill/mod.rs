//! `meridian drill`: proves a deployment meets its recovery objectives by breaking it on
//! purpose under load and measuring what applications saw.
//!
//! A drill starts a replicated deployment (the embedded default, or one described by a
//! deployment file), runs the IOU transfer workload with dedup-safe retrying clients, and
//! injects the planned faults one after another (`crate::fault`: kill -9, SIGSTOP/SIGCONT, a
//! switchover, a database server outage), each after a steady settle period and followed by
//! an observation period; `--trials N` repeats the whole round N times and summarises each
//! scenario ([`summary`]). `--scenario random` is the nemesis instead (`crate::nemesis`): a
//! seeded schedule of overlapping faults, printed before it starts. The measuring —
//! detection, RTO, RPO, failed and retried requests, throughput per 100 ms — is the experiment
//! runner's (`crate::experiment`); this module plans the drill, shows its progress, and
//! writes its table, JSON and chart. With `--load-balancer haproxy` the workload's clients know
//! only HAProxy's address per participant (every scenario then runs through it), and every
//! report says so (`load_balancer` in the JSON, the table's and the chart's titles).

pub mod controlled;
pub mod plan;
pub mod summary;
pub mod svg;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use meridian_client::Backoff;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::deployment::description::LoadBalancerKind;
use crate::deployment::{Backend, DeploymentArgs, DeploymentSpec, Description, Preset};
use crate::experiment::{
    Experiment, ExperimentReport, FaultReport, FaultStep, Observer, Phase, Recovered, Step,
};
use crate::fault::PlannedFault;
use crate::nemesis::{self, NemesisPlan, NemesisRun};
use crate::stats::{fmt_ms, quantiles};
use crate::workload::{Live, LoadSpec, TimelineBucket, TIMELINE_BUCKET_MS};
use plan::{PlanView, Scenario};
use summary::ScenarioSummary;

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
    /// Run every scenario this many times (round after round, in one deployment) and report
    /// RTO p50/p99/max per scenario.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub trials: u32,
    /// How long `--scenario random` runs, e.g. `90s`, `10m`, `1h`.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub duration: Duration,
    /// The seed of `--scenario random`'s schedule: the same seed replays the same schedule
    /// (default: a fresh one, printed).
    #[arg(long)]
    pub seed: Option<u64>,
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
    /// Who operates region-switchover and region-loss: `controller` (`meridian controller`,
    /// started by the drill, its plan approved by the drill; SQLite) or `lab` (the lab's own
    /// operator; PostgreSQL). Default: controller on SQLite, lab on PostgreSQL.
    #[arg(long, value_enum)]
    pub operator: Option<controlled::Operator>,
    /// The binary run as `meridian controller` (default: this one).
    #[arg(long, hide = true)]
    pub controller_exe: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct DrillReport {
    pub backend: Backend,
    /// The load balancer every application request went through (`--load-balancer`), or
    /// null when the clients used every replica's endpoint themselves.
    pub load_balancer: Option<LoadBalancerKind>,
    /// How many times each scenario ran.
    pub trials: u32,
    pub faults: Vec<FaultReport>,
    /// Each scenario over its trials.
    pub scenarios: Vec<ScenarioSummary>,
    /// Scenarios of `all` that do not apply to this deployment, with the reason.
    pub skipped: Vec<String>,
    pub committed: u64,
    /// Every request that failed, up to the end of the run: the faults' rows plus
    /// `failed_between_faults` (plus the nemesis faults' and its between-faults count).
    pub failed_requests: u64,
    /// Failed requests in no fault's window.
    pub failed_between_faults: u64,
    pub retried_requests: u64,
    /// The first failures' messages, to say why requests failed.
    pub failure_samples: Vec<String>,
    pub rpo_transactions: usize,
    pub duplicate_transactions: usize,
    pub amounts_conserved: bool,
    /// The participants' views of the IOUs agree.
    pub views_agree: bool,
    /// Whether the audit passed; a region loss's lost transactions (its RPO, expected) do
    /// not fail it, everything else does.
    pub audit_ok: bool,
    pub rto_first_success_ms_p50: f64,
    pub rto_first_success_ms_p99: f64,
    pub rto_first_success_ms_max: f64,
    /// The nemesis run of `--scenario random`: its schedule and what each fault did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nemesis: Option<NemesisRun>,
    pub bucket_ms: u64,
    /// The whole run, per 100 ms.
    pub timeline: Vec<TimelineBucket>,
}

impl DrillReport {
    fn new(
        description: &Description,
        trials: u32,
        skipped: Vec<String>,
        report: ExperimentReport,
    ) -> Self {
        let [rto_p50, rto_p99, rto_max] = quantiles(
            report
                .faults
                .iter()
                .filter_map(|f| f.rto_first_success_ms)
                .collect(),
            [0.5, 0.99, 1.0],
        );
        Self {
            backend: description.storage.backend,
            load_balancer: routed_through(description),
            trials,
            scenarios: summary::by_scenario(&report.faults),
            skipped,
            committed: report.workload.committed,
            failed_requests: report.failed_requests,
            failed_between_faults: report.failed_between_faults,
            retried_requests: report.retried_requests,
            failure_samples: report.workload.failure_samples,
            rpo_transactions: report.audit.acknowledged_missing,
            duplicate_transactions: report.duplicate_transactions,
            amounts_conserved: report.audit.amounts_conserved,
            views_agree: report.audit.views_agree,
            audit_ok: report.audit.amounts_conserved
                && report.audit.views_agree
                && report.audit.acknowledged_missing == region_loss_rpo(&report.faults)
                && report.duplicate_transactions == 0,
            rto_first_success_ms_p50: rto_p50,
            rto_first_success_ms_p99: rto_p99,
            rto_first_success_ms_max: rto_max,
            nemesis: report.nemesis,
            bucket_ms: TIMELINE_BUCKET_MS,
            timeline: report.timeline,
            faults: report.faults,
        }
    }

    /// Joins the report of a later trial run on a deployment of its own: its faults and
    /// timeline follow this one's (its times shifted by this timeline's length), its counts
    /// add up, and every figure over the faults is taken again.
    fn append(&mut self, later: DrillReport) {
        let offset_ms = (self.timeline.len() as u64 * self.bucket_ms) as f64;
        self.faults
            .extend(later.faults.into_iter().map(|mut fault| {
                fault.injected_at_ms += offset_ms;
                fault.window_end_ms += offset_ms;
                fault
            }));
        self.timeline.extend(later.timeline);
        self.scenarios = summary::by_scenario(&self.faults);
        self.committed += later.committed;
        self.failed_requests += later.failed_requests;
        self.failed_between_faults += later.failed_between_faults;
        self.retried_requests += later.retried_requests;
        self.failure_samples.extend(later.failure_samples);
        self.failure_samples.truncate(10);
        self.rpo_transactions += later.rpo_transactions;
        self.duplicate_transactions += later.duplicate_transactions;
        self.amounts_conserved &= later.amounts_conserved;
        self.views_agree &= later.views_agree;
        self.audit_ok &= later.audit_ok;
        [
            self.rto_first_success_ms_p50,
            self.rto_first_success_ms_p99,
            self.rto_first_success_ms_max,
        ] = quantiles(
            self.faults
                .iter()
                .filter_map(|f| f.rto_first_success_ms)
                .collect(),
            [0.5, 0.99, 1.0],
        );
    }

    /// RPO 0 (but for a region loss, whose RPO is measured, not required), no duplicates, a
    /// clean audit, every fault recovered and undone, and no node that exited by itself.
    pub fn passed(&self) -> bool {
        self.rpo_transactions == region_loss_rpo(&self.faults)
            && self.duplicate_transactions == 0
            && self.audit_ok
            && self.faults.iter().all(|f| f.problem.is_none())
            && self.nemesis.as_ref().is_none_or(|run| {
                run.unexpected_exits.is_empty() && run.faults.iter().all(|f| f.problem.is_none())
            })
    }
}

/// The acknowledged transactions the region losses lost: their RPO is a figure to report,
/// the price of asynchronous replication between regions.
fn region_loss_rpo(faults: &[FaultReport]) -> usize {
    faults
        .iter()
        .filter(|f| f.scenario == crate::fault::Fault::RegionLoss)
        .map(|f| f.rpo_transactions)
        .sum()
}

/// The load balancer the deployment puts in front of the participants, if any: the
/// workload's clients then know only its address per participant
/// (`Deployment::ledger_endpoints`), and the drill says so in every report.
pub fn routed_through(description: &Description) -> Option<LoadBalancerKind> {
    description.load_balancer.as_ref().map(|lb| lb.kind)
}

/// How the applications reach the participants, for the reports' titles.
pub fn routing_name(load_balancer: Option<LoadBalancerKind>) -> &'static str {
    match load_balancer {
        Some(LoadBalancerKind::Haproxy) => "through HAProxy",
        None => "client endpoint lists",
    }
}

const CLIENT_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(10),
    max: Duration::from_millis(100),
    max_attempts: 600,
};

pub async fn run(args: DrillArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Everything that can be wrong with the request is found before anything starts.
    let description = args.deployment.resolve(Preset::Replicated, None)?;
    if let Some(fault) = controlled::operated_by_controller(&args, &description)? {
        if let Some(path) = &args.json {
            check_writable(path)?;
        }
        let report = controlled::run(&args, &description, fault, shutdown).await?;
        controlled::print_table(&report);
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("JSON report written to {}", path.display());
        }
        if !report.passed {
            bail!("the drill failed: a plan, the first commit in the new region, RPO, duplicates or the audit not as required (see above)");
        }
        return Ok(());
    }
    let schedule = schedule(&args, &PlanView::of(&description))?;
    for path in [&args.json, &args.svg].into_iter().flatten() {
        check_writable(path)?;
    }
    if let Schedule::Nemesis(plan) = &schedule {
        print_nemesis_plan(plan);
    }
    let report = execute(&args, &description, schedule, shutdown).await?;
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
        bail!("the drill failed: RPO, duplicates, audit, recovery or a node exit not as required (see above)");
    }
    Ok(())
}

/// What a drill will inject.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// The scenarios' faults one after another (each `--trials` times), with the scenarios
    /// `all` skipped and why.
    Faults {
        faults: Vec<PlannedFault>,
        skipped: Vec<String>,
    },
    /// A nemesis run.
    Nemesis(NemesisPlan),
}

/// The drill's schedule for `args` on `deployment`, or the reason it cannot run.
pub fn schedule(args: &DrillArgs, deployment: &PlanView) -> anyhow::Result<Schedule> {
    if args.scenario == Scenario::Random {
        if args.trials != 1 || args.target.is_some() {
            bail!("--trials and --target do not apply to --scenario random (its --seed replays a run)");
        }
        let seed = args.seed.unwrap_or_else(nemesis::fresh_seed);
        return Ok(Schedule::Nemesis(nemesis::plan(
            seed,
            args.duration,
            deployment,
        )?));
    }
    if args.seed.is_some() {
        bail!("--seed replays the schedule of --scenario random");
    }
    let (faults, skipped) = plan::plan(args.scenario, args.target.as_deref(), deployment)?;
    Ok(Schedule::Faults { faults, skipped })
}

/// `90`, `90s`, `10m`, `1h`, `2m30s`: a duration of whole seconds, minutes and hours.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration like 90s, 10m or 1h");
    let mut total_s: u64 = 0;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit_s = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            _ => return Err(invalid()),
        };
        let value: u64 = number.parse().map_err(|_| invalid())?;
        total_s = total_s.saturating_add(value.saturating_mul(unit_s));
        number.clear();
    }
    if !number.is_empty() {
        total_s = total_s.saturating_add(number.parse::<u64>().map_err(|_| invalid())?);
    }
    if total_s == 0 {
        return Err(invalid());
    }
    Ok(Duration::from_secs(total_s))
}

fn print_nemesis_plan(plan: &NemesisPlan) {
    println!(
        "meridian drill --scenario random --seed {} --duration {}s: {} fault(s)",
        plan.seed,
        plan.duration.as_secs(),
        plan.events.len()
    );
    for event in &plan.events {
        println!("  {}", event.describe());
    }
    for skipped in &plan.skipped {
        println!("  not scheduled: {skipped}");
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

/// The drill's schedule: for each fault, steady load, the fault, then watching.
fn experiment(args: &DrillArgs, schedule: Schedule) -> anyhow::Result<Experiment> {
    let (settle, observe) = (
        Duration::from_secs(args.settle_s),
        Duration::from_secs(args.observe_s),
    );
    let faults = match schedule {
        Schedule::Nemesis(plan) => {
            return Ok(Experiment {
                load: LoadSpec::until_stopped("drill", CLIENT_BACKOFF, args.lanes)?,
                steps: vec![Step::Nemesis(plan)],
            })
        }
        Schedule::Faults { faults, .. } => faults,
    };
    let rounds = usize::try_from(args.trials).unwrap_or(1);
    let steps = std::iter::repeat_n(faults, rounds)
        .flatten()
        .flat_map(|fault| {
            [
                Step::Steady(settle),
                Step::Fault(FaultStep {
                    fault,
                    settle,
                    until: Recovered::Throughput,
                }),
                Step::Steady(observe),
            ]
        })
        .collect();
    Ok(Experiment {
        load: LoadSpec::until_stopped("drill", CLIENT_BACKOFF, args.lanes)?,
        steps,
    })
}

/// Starts the deployment and the workload, runs `schedule`, audits. Public for the tests.
/// A region move is one-shot (region one is gone after it), so with `--trials N` each of its
/// trials runs on a fresh deployment of its own (`<data-dir>/trial-N` when a data directory
/// is given), and the trials' reports are joined one after another.
pub async fn execute(
    args: &DrillArgs,
    description: &Description,
    schedule: Schedule,
    shutdown: CancellationToken,
) -> anyhow::Result<DrillReport> {
    let one_shot = matches!(&schedule, Schedule::Faults { faults, .. }
        if faults.iter().any(|f| f.fault.is_region_move()));
    if !one_shot || args.trials == 1 {
        return execute_once(args, description, schedule, shutdown).await;
    }
    let mut joined: Option<DrillReport> = None;
    for trial in 1..=args.trials {
        if shutdown.is_cancelled() {
            break;
        }
        eprintln!(
            "meridian drill: trial {trial} of {} on a fresh deployment",
            args.trials
        );
        let mut once = args.clone();
        once.trials = 1;
        once.data_dir = args
            .data_dir
            .as_ref()
            .map(|d| d.join(format!("trial-{trial}")));
        let report = execute_once(&once, description, schedule.clone(), shutdown.clone()).await?;
        joined = Some(match joined {
            None => report,
            Some(mut so_far) => {
                so_far.append(report);
                so_far
            }
        });
    }
    let mut report = joined.context("no trial ran")?;
    report.trials = args.trials;
    Ok(report)
}

/// One deployment: start it, run `schedule` on it, audit.
async fn execute_once(
    args: &DrillArgs,
    description: &Description,
    schedule: Schedule,
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
    spec.ledger_auth = true;
    spec.shiftable_sequencer_clocks =
        matches!(&schedule, Schedule::Nemesis(plan) if plan.needs_shiftable_clocks());
    // The server (if any) runs for as long as the deployment.
    let postgres = spec.start_postgres()?;
    let (steps, skipped) = match &schedule {
        Schedule::Faults { faults, skipped } => {
            (faults.len() * args.trials as usize, skipped.clone())
        }
        Schedule::Nemesis(plan) => (plan.events.len(), plan.skipped.clone()),
    };
    let mut progress = Progress::new(steps);
    let experiment = experiment(args, schedule)?;
    eprintln!("meridian drill: starting the deployment");
    let report = experiment
        .run_on(
            &spec,
            postgres.as_ref(),
            &mut |line| eprintln!("  {line}"),
            &mut progress,
            &shutdown,
        )
        .await?;
    Ok(DrillReport::new(description, args.trials, skipped, report))
}

/// The live progress line: scenario, phase and current throughput.
struct Progress {
    bar: indicatif::ProgressBar,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn new(faults: usize) -> Self {
        let bar = indicatif::ProgressBar::new(faults as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "  {spinner} fault {pos}/{len} {elapsed:>4} {wide_msg}",
            )
            .expect("static progress template is valid"),
        );
        Self { bar, task: None }
    }
}

impl Observer for Progress {
    fn load_started(&mut self, live: &Arc<Live>) {
        // The clock shows the faults' time, not the deployment's start.
        self.bar.reset_elapsed();
        let (bar, live) = (self.bar.clone(), live.clone());
        self.task = Some(tokio::spawn(async move {
            let mut last = live.committed.load(Ordering::Relaxed);
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let now = live.committed.load(Ordering::Relaxed);
                bar.set_prefix(format!("{} tx/s", (now - last) * 2));
                last = now;
                bar.tick();
            }
        }));
    }

    fn phase(&mut self, index: usize, fault: &PlannedFault, phase: Phase) {
        let phase = match phase {
            Phase::Settling => "steady load",
            Phase::Measuring => "fault injected, measuring",
            Phase::Observing => "recovered, observing",
        };
        self.bar.set_position(index as u64 + 1);
        self.bar.set_message(format!(
            "{}: {phase}  ({})",
            fault.fault.name(),
            self.bar.prefix()
        ));
    }

    fn say(&mut self, line: String) {
        self.bar.inc(1);
        // A hidden bar (stderr is not a terminal) drops what it is asked to print.
        if self.bar.is_hidden() {
            eprintln!("  {line}");
        } else {
            self.bar.println(format!("  {line}"));
        }
    }

    fn load_ended(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.bar.finish_and_clear();
        eprintln!("auditing the ledgers");
    }
}

fn print_table(report: &DrillReport) {
    let faults = report
        .nemesis
        .as_ref()
        .map_or(report.faults.len(), |run| run.faults.len());
    println!(
        "\nmeridian drill ({:?}, {}): {faults} fault(s), {} committed",
        report.backend,
        routing_name(report.load_balancer),
        report.committed
    );
    if !report.faults.is_empty() {
        println!(
            "  {:<19} {:<28} {:>9} {:>9} {:>9} {:>4} {:>7} {:>8}",
            "scenario", "action", "detect ms", "RTO ms", "RTO90 ms", "RPO", "failed", "retried"
        );
    }
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
        if let Some(promotion) = &fault.promotion {
            println!("      {}", promotion_line(promotion));
        }
        if let Some(region) = &fault.region {
            for line in region_lines(region, fault) {
                println!("      {line}");
            }
        }
        if let Some(problem) = &fault.problem {
            println!("      problem: {problem}");
        }
    }
    if !report.faults.is_empty() {
        println!(
            "  {:<19} {:<28} {:>9} {:>9} {:>9} {:>4} {:>7}",
            "between faults", "", "", "", "", "", report.failed_between_faults
        );
    }
    if report.trials > 1 {
        print_scenarios(&report.scenarios);
    }
    if let Some(run) = &report.nemesis {
        print_nemesis(run);
    }
    for skipped in &report.skipped {
        println!("  skipped {skipped}");
    }
    for sample in &report.failure_samples {
        println!("  failed: {sample}");
    }
    println!(
        "  RTO p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; RPO {}; duplicates {}; failed requests {}; retried {}; audit {}",
        report.rto_first_success_ms_p50,
        report.rto_first_success_ms_p99,
        report.rto_first_success_ms_max,
        report.rpo_transactions,
        report.duplicate_transactions,
        report.failed_requests,
        report.retried_requests,
        if report.audit_ok { "OK" } else { "FAILED" }
    );
}

/// The promoter's share of a database failover apart from Meridian's.
fn promotion_line(promotion: &crate::promotion::PromotionReport) -> String {
    let parts = match promotion.detection_delay_ms {
        Some(detection_delay_ms) => format!(
            "kill {:.0} ms + detection delay {detection_delay_ms:.0} ms + pg_ctl promote {} ms",
            promotion.kill_ms,
            fmt_ms(promotion.promote_command_ms)
        ),
        None => format!(
            "kill {:.0} ms + {}'s detection, election and promotion",
            promotion.kill_ms, promotion.promoter
        ),
    };
    format!(
        "promoted {} ({}): promoter {} ms ({parts}), then Meridian {} ms to its first commit",
        promotion.promoted,
        promotion.promoter,
        fmt_ms(promotion.promoter_ms),
        fmt_ms(promotion.meridian_ms)
    )
}

/// A region move's RTO by its parts, its lost transactions, and who is not ready after it.
fn region_lines(region: &crate::region::RegionReport, fault: &FaultReport) -> Vec<String> {
    let part = |name: &str, value: Option<f64>| value.map(|v| format!("{name} {v:.0} ms"));
    let parts: Vec<String> = [
        part("drain", region.drain_ms),
        part("catch-up", region.catch_up_ms),
        part("stop servers", region.stop_servers_ms),
        part("kill", region.kill_ms),
        part("detection delay", region.detection_delay_ms),
        part("promote", Some(region.promote_ms)),
        part("start", Some(region.start_ms)),
        part("fork repair", region.repair_ms),
        part("first commit", region.first_commit_ms),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut lines = vec![format!(
        "{} → {}, promoted {}: {}",
        region.from_region,
        region.to_region,
        region.promoted,
        parts.join(" + ")
    )];
    if !fault.lost_transactions.is_empty() {
        lines.push(format!(
            "lost {} acknowledged transaction(s) (ids in the JSON)",
            fault.lost_transactions.len()
        ));
    }
    for member in &region.forked {
        lines.push(match (member.lost_transactions, &member.repair_problem) {
            (Some(lost), _) => format!(
                "fork: {} halted on a forked history; repaired (rewound, {lost} of its transactions listed lost), ready again",
                member.process
            ),
            (None, problem) => format!(
                "fork: {} halted on a forked history; not repaired: {}",
                member.process,
                problem.as_deref().unwrap_or("?")
            ),
        });
    }
    let ready = region.readiness.iter().filter(|r| r.ready).count();
    lines.push(format!(
        "afterwards {ready} of {} node processes ready",
        region.readiness.len()
    ));
    for node in region.readiness.iter().filter(|r| !r.ready) {
        lines.push(format!(
            "  not ready: {}: {}",
            node.process,
            node.reason.as_deref().unwrap_or("?")
        ));
    }
    lines
}

fn print_scenarios(scenarios: &[ScenarioSummary]) {
    println!(
        "\n  {:<19} {:>6} {:>11} {:>11} {:>11} {:>4} {:>7} {:>8}",
        "per scenario",
        "trials",
        "RTO p50 ms",
        "RTO p99 ms",
        "RTO max ms",
        "RPO",
        "failed",
        "problems"
    );
    for scenario in scenarios {
        println!(
            "  {:<19} {:>6} {:>11.0} {:>11.0} {:>11.0} {:>4} {:>7} {:>8}",
            scenario.scenario.name(),
            scenario.trials,
            scenario.rto_first_success_ms_p50,
            scenario.rto_first_success_ms_p99,
            scenario.rto_first_success_ms_max,
            scenario.rpo_transactions,
            scenario.failed_requests,
            scenario.problems
        );
        if let (Some([promoter_p50, promoter_max]), Some([meridian_p50, meridian_max])) =
            (scenario.promoter_ms_p50_max, scenario.meridian_ms_p50_max)
        {
            println!(
                "      promoter p50 {promoter_p50:.0} ms, max {promoter_max:.0} ms; Meridian after the promotion p50 {meridian_p50:.0} ms, max {meridian_max:.0} ms"
            );
        }
        if !scenario.region_parts_ms_p50_max.is_empty() {
            let parts: Vec<String> = scenario
                .region_parts_ms_p50_max
                .iter()
                .map(|(part, [p50, max])| format!("{part} {p50:.0}/{max:.0}"))
                .collect();
            println!("      parts p50/max ms: {}", parts.join(", "));
        }
    }
}

fn print_nemesis(run: &NemesisRun) {
    println!(
        "  seed {}: {} fault(s) scheduled over {} s",
        run.plan.seed,
        run.faults.len(),
        run.plan.duration.as_secs()
    );
    println!(
        "  {:>9} {:<20} {:<22} {:>7} {:>4} {:>7} {:>8}",
        "at s", "fault", "target", "hold s", "RPO", "failed", "replica Δ"
    );
    for fault in &run.faults {
        let event = &fault.event;
        println!(
            "  {:>9.1} {:<20} {:<22} {:>7.1} {:>4} {:>7} {:>8}",
            event.at.as_secs_f64(),
            event.kind.name(),
            fault
                .action
                .as_deref()
                .unwrap_or("(skipped)")
                .chars()
                .take(22)
                .collect::<String>(),
            event.hold.as_secs_f64(),
            fault.in_window.rpo_transactions,
            fault.in_window.failed_requests,
            fault.in_window.replica_changes
        );
        for note in [&fault.skipped, &fault.problem].into_iter().flatten() {
            println!("      {note}");
        }
    }
    println!(
        "  {:>9} {:<20} {:<22} {:>7} {:>4} {:>7} {:>8}",
        "",
        "between faults",
        "",
        "",
        run.between_faults.rpo_transactions,
        run.between_faults.failed_requests,
        run.between_faults.replica_changes
    );
    for name in &run.unexpected_exits {
        println!("  problem: {name} exited by itself (restarted for the audit)");
    }
}

fn chart(report: &DrillReport) -> svg::TimelineChart {
    let ms = |at: Option<f64>, fault: &FaultReport| at.map(|v| fault.injected_at_ms + v);
    svg::TimelineChart {
        title: format!(
            "meridian drill — {} fault(s), {:?}, {}, RPO {}, duplicates {}",
            report.faults.len(),
            report.backend,
            routing_name(report.load_balancer),
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
                label: match (&fault.promotion, &fault.region) {
                    (_, Some(r)) => format!(
                        "{}: {} → {} (promoted {}), RPO {}",
                        fault.scenario.name(),
                        r.from_region,
                        r.to_region,
                        r.promoted,
                        fault.rpo_transactions
                    ),
                    (Some(p), None) => format!(
                        "{}: {} (promoted {} at +{} ms)",
                        fault.scenario.name(),
                        fault.action,
                        p.promoted,
                        fmt_ms(p.promoter_ms)
                    ),
                    (None, None) => format!("{}: {}", fault.scenario.name(), fault.action),
                },
                injected_at_ms: fault.injected_at_ms,
                detected_at_ms: ms(fault.detection_ms, fault),
                recovered_at_ms: ms(fault.rto_first_success_ms, fault),
                throughput_back_at_ms: ms(fault.rto_throughput_90_ms, fault),
            })
            .chain(report.nemesis.iter().flat_map(nemesis_marks))
            .collect(),
    }
}

/// A nemesis run's struck faults on the chart: from the strike to the undo.
fn nemesis_marks(run: &NemesisRun) -> impl Iterator<Item = svg::FaultMark> + '_ {
    run.faults.iter().filter_map(|fault| {
        Some(svg::FaultMark {
            label: format!("{}: {}", fault.event.kind.name(), fault.action.as_deref()?),
            injected_at_ms: fault.struck_at_ms?,
            detected_at_ms: None,
            recovered_at_ms: fault.restored_at_ms,
            throughput_back_at_ms: None,
        })
    })
}
