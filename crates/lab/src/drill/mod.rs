//! `meridian drill`: proves a deployment meets its recovery objectives by breaking it on
//! purpose under load and measuring what applications saw.
//!
//! A drill starts a replicated deployment (the embedded default, or one described by a
//! deployment file), runs the IOU transfer workload with dedup-safe retrying clients, and
//! injects the planned faults one after another (`crate::fault`: kill -9, SIGSTOP/SIGCONT, a
//! switchover, a database server outage), each after a steady settle period and followed by
//! an observation period. The measuring — detection, RTO, RPO, failed and retried requests,
//! throughput per 100 ms — is the experiment runner's (`crate::experiment`); this module plans
//! the drill, shows its progress, and writes its table, JSON and chart.

pub mod plan;
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

use crate::deployment::{Backend, DeploymentArgs, DeploymentSpec, Description, Preset};
use crate::experiment::{
    Experiment, ExperimentReport, FaultReport, FaultStep, Observer, Phase, Recovered, Step,
};
use crate::fault::PlannedFault;
use crate::stats::fmt_ms;
use crate::workload::{Live, LoadSpec, TimelineBucket, TIMELINE_BUCKET_MS};
use plan::{PlanView, Scenario};

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
    fn new(backend: Backend, skipped: Vec<String>, report: ExperimentReport) -> Self {
        let (rto_p50, rto_max) = report.rto_p50_and_max_ms();
        Self {
            backend,
            skipped,
            committed: report.workload.committed,
            failed_requests: report.failed_requests,
            retried_requests: report.retried_requests,
            failure_samples: report.workload.failure_samples,
            rpo_transactions: report.audit.acknowledged_missing,
            duplicate_transactions: report.duplicate_transactions,
            amounts_conserved: report.audit.amounts_conserved,
            audit_ok: report.audit.audit_ok && report.duplicate_transactions == 0,
            rto_first_success_ms_p50: rto_p50,
            rto_first_success_ms_max: rto_max,
            bucket_ms: TIMELINE_BUCKET_MS,
            timeline: report.timeline,
            faults: report.faults,
        }
    }

    /// RPO 0, no duplicates, a clean audit and every fault recovered.
    pub fn passed(&self) -> bool {
        self.rpo_transactions == 0
            && self.duplicate_transactions == 0
            && self.audit_ok
            && self.faults.iter().all(|f| f.problem.is_none())
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
    let (faults, skipped) = plan::plan(
        args.scenario,
        args.target.as_deref(),
        &PlanView::of(&description),
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
fn experiment(args: &DrillArgs, faults: Vec<PlannedFault>) -> anyhow::Result<Experiment> {
    let (settle, observe) = (
        Duration::from_secs(args.settle_s),
        Duration::from_secs(args.observe_s),
    );
    let steps = faults
        .into_iter()
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
    // The server (if any) runs for as long as the deployment.
    let postgres = spec.start_postgres()?;
    let mut progress = Progress::new(faults.len());
    let experiment = experiment(args, faults)?;
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
    Ok(DrillReport::new(
        description.storage.backend,
        skipped,
        report,
    ))
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

    fn load_ended(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.bar.finish_and_clear();
        eprintln!("auditing the ledgers");
    }
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
