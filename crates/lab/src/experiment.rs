//! The one experiment runner behind `meridian demo`, `bench ledger`, `bench failover` and
//! `drill`: a deployment, the transfer workload in the background, a schedule of steady
//! periods and faults, and a report of what the applications saw.
//!
//! Around each fault it measures detection (the deployment noticed), RTO (fault to the first
//! success of a request *sent after* the fault, and to throughput back at 90 % of before),
//! retried requests, and keeps the throughput per 100 ms. After the load ended the ledgers
//! are audited: an acknowledged transaction missing on any informee participant counts
//! against the RPO of the fault it followed, and an IOU that exists twice is a duplicate.
//! Every failed request of the run, up to the load's very end, is counted against the fault
//! whose window (injection to the end of its observation) it falls in, or as "between
//! faults" (`crate::attribution`): the rows and the summary add up. A schedule may instead
//! hold a nemesis run (`crate::nemesis`), overlapping random faults, reported per fault.
//!
//! A fault served again whose throughput never comes back says why: throughput and commit
//! latency since, against before, and the commits in flight (Little's law), which tell a
//! deployment that runs slower as a whole — what a busier machine looks like — from lanes
//! that stopped submitting.
//!
//! Its own instruments are cheap on purpose — atomic counters per 100 ms bucket, and HTTP
//! polling of a handful of `/status` endpoints only while a fault is being measured — so they
//! do not lower the throughput they measure. What each fault does is `crate::fault`'s.

use std::collections::{BTreeMap, HashSet};
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::attribution::{self, Window};
use crate::deployment::{Databases, Deployment, DeploymentSpec};
use crate::fault::{Fault, Moment, PlannedFault, Recovery, Stage};
use crate::machine_cpu::{self, CpuJiffies, MachineLoad};
use crate::nemesis::{self, NemesisPlan, NemesisRun};
use crate::workload::{
    self, Audit, BackgroundLoad, FailureAt, FinishedLoad, Live, LoadEnd, LoadSpec, TimelineBucket,
    WorkloadReport, TIMELINE_BUCKET_MS,
};

/// Bounds of one fault's measurement.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(45);
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Throughput counts as back when a window this many buckets wide averages 90 % of before.
const RECOVERY_WINDOW_BUCKETS: usize = 5;
/// Buckets of context kept before each fault in its report.
const BUCKETS_BEFORE_FAULT: usize = 20;

/// What one fault did, as the application saw it.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    pub scenario: Fault,
    /// The node the fault was aimed at, e.g. `participant2`.
    pub target: String,
    /// What was done, e.g. "kill -9 participant2-a".
    pub action: String,
    /// The process the fault hit (a replica or a sequencer instance), when it hit one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faulted: Option<String>,
    /// When the fault was injected, ms since the workload started.
    pub injected_at_ms: f64,
    /// The end of its window (its observation), ms since the workload started: the failed
    /// requests between its injection and this count against it.
    pub window_end_ms: f64,
    /// Fault to the deployment noticing (another replica active, a node not ready).
    pub detection_ms: Option<f64>,
    /// Fault to the first commit of a request sent after the fault.
    pub rto_first_success_ms: Option<f64>,
    /// Fault to throughput back at 90 % of the steady state before it.
    pub rto_throughput_90_ms: Option<f64>,
    /// Acknowledged transactions (since the previous fault) missing afterwards on an informee.
    pub rpo_transactions: usize,
    /// Requests that failed in its window, up to the end of the run for the last fault.
    pub failed_requests: u64,
    /// Of the failed requests, those rejected with a mediator TIMEOUT.
    pub timed_out_requests: u64,
    /// Requests retried while its recovery was measured.
    pub retried_requests: u64,
    /// Mean throughput over the settle period before the fault.
    pub throughput_before_tx_per_s: f64,
    /// Commits per 100 ms from 2 s before the fault to the end of its observation.
    pub throughput_per_100ms: Vec<u64>,
    /// For a freeze: whether the resumed replica came back passive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_replica_passive: Option<bool>,
    /// For a database failover or zone loss: the promoter's share apart from Meridian's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promotion: Option<crate::promotion::PromotionReport>,
    /// For a region switchover or loss: the RTO's parts and every node's readiness after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<crate::region::RegionReport>,
    /// The transactions the application was told are committed that are missing afterwards
    /// (counted in `rpo_transactions`), by id.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lost_transactions: Vec<String>,
    /// Set when the deployment did not recover within the bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// When a fault's measurement is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovered {
    /// Detected and served again (`bench failover`: RTO is its figure, and throughput right
    /// after a failover wanders around 90 % of before for many seconds on a busy machine).
    FirstSuccess,
    /// Also throughput back at 90 % of before (the drill reports that figure too).
    Throughput,
}

/// One fault of a schedule.
#[derive(Debug, Clone)]
pub struct FaultStep {
    pub fault: PlannedFault,
    /// The steady load just before it, over which its "before" throughput is taken (whole
    /// seconds count).
    pub settle: Duration,
    pub until: Recovered,
}

/// One step of an experiment's schedule.
#[derive(Debug, Clone)]
pub enum Step {
    /// Steady load for this long.
    Steady(Duration),
    /// Inject a fault and measure until it recovered, then restore full redundancy.
    Fault(FaultStep),
    /// Play a nemesis schedule: random overlapping faults, each undone on time.
    Nemesis(NemesisPlan),
}

/// What the runner is doing around a fault, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Steady load before the fault.
    Settling,
    /// The fault is injected and its recovery measured.
    Measuring,
    /// Watching after the fault recovered.
    Observing,
}

/// Follows an experiment as it runs; every method has a quiet default.
pub trait Observer {
    /// The load's parties and IOUs are about to be set up.
    fn load_starting(&mut self) {}
    /// The load runs; `live` counts its commits as they happen.
    fn load_started(&mut self, _live: &Arc<Live>) {}
    /// Fault number `index` of the schedule (from 0) enters `phase`.
    fn phase(&mut self, _index: usize, _fault: &PlannedFault, _phase: Phase) {}
    /// A fault was measured; `Break` ends the schedule here.
    fn measured(&mut self, _report: &FaultReport) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
    /// A fault could not be run (no active replica, a restart failed): the error ends the
    /// experiment unless the observer swallows it.
    fn fault_failed(&mut self, error: anyhow::Error) -> anyhow::Result<()> {
        Err(error)
    }
    /// A line worth showing as it happens (a nemesis fault struck or skipped).
    fn say(&mut self, _line: String) {}
    /// The load's transfers ended; the audit comes next.
    fn load_ended(&mut self) {}
}

/// An observer that says nothing.
pub struct Quiet;

impl Observer for Quiet {}

/// See [`ExperimentReport::peak_rss_mib_by_role`]. A process that is not running (killed by
/// a fault) has no figure.
fn peak_rss_mib_by_role(deployment: &Deployment) -> BTreeMap<String, f64> {
    let mut peaks = BTreeMap::new();
    for process in deployment.processes() {
        if let Some(bytes) = process.peak_rss_bytes() {
            let mib = bytes as f64 / (1024.0 * 1024.0);
            let peak = peaks
                .entry(process.role_command().to_owned())
                .or_insert(0.0_f64);
            *peak = peak.max(mib);
        }
    }
    peaks
}

/// Who used how much CPU so far: each running node process (by role and pid) and this
/// process, which runs the load's client; with the transfers committed by then.
struct CpuSnapshot {
    nodes: Vec<(&'static str, u32, u64)>,
    load_client: Option<u64>,
    /// The whole machine's counters; `None` without `/proc/stat`.
    machine: Option<CpuJiffies>,
    committed: u64,
}

impl CpuSnapshot {
    fn take(deployment: &Deployment, live: &Live) -> Self {
        let nodes = deployment
            .processes()
            .into_iter()
            .filter_map(|process| {
                let pid = process.pid()?;
                Some((
                    process.role_command(),
                    pid,
                    machine_cpu::process_jiffies(pid)?,
                ))
            })
            .collect();
        Self {
            nodes,
            load_client: machine_cpu::process_jiffies(std::process::id()),
            machine: CpuJiffies::read(),
            committed: live.committed.load(Ordering::Relaxed),
        }
    }

    /// See [`ExperimentReport::machine_load`].
    fn machine_since(&self, earlier: &Self) -> Option<MachineLoad> {
        let spent = self.machine?.since(earlier.machine?);
        MachineLoad::of(spent, self.committed.saturating_sub(earlier.committed))
    }

    /// See [`ExperimentReport::cpu_ms_per_transfer_by_role`]. A process that is not running at
    /// both snapshots (killed, restarted) is left out: its CPU time cannot be told.
    fn per_transfer_since(&self, earlier: &Self) -> BTreeMap<String, f64> {
        let transfers = self.committed.saturating_sub(earlier.committed);
        let mut jiffies: BTreeMap<String, u64> = BTreeMap::new();
        for (role, pid, now) in &self.nodes {
            let before = earlier
                .nodes
                .iter()
                .find(|(_, earlier_pid, _)| earlier_pid == pid)
                .map(|(_, _, before)| *before);
            if let Some(before) = before {
                *jiffies.entry((*role).to_owned()).or_default() += now.saturating_sub(before);
            }
        }
        if let (Some(now), Some(before)) = (self.load_client, earlier.load_client) {
            jiffies.insert(LOAD_CLIENT.to_owned(), now.saturating_sub(before));
        }
        jiffies
            .into_iter()
            .filter_map(|(role, spent)| Some((role, machine_cpu::ms_per(spent, transfers as f64)?)))
            .collect()
    }
}

/// The key of the load's client (this process) in [`ExperimentReport::cpu_ms_per_transfer_by_role`].
pub const LOAD_CLIENT: &str = "load client";

/// A deployment's load and the faults to inject into it.
#[derive(Debug, Clone)]
pub struct Experiment {
    /// The background load; with a `duration` it runs that long whatever the schedule, else
    /// it is stopped after the last step.
    pub load: LoadSpec,
    pub steps: Vec<Step>,
}

/// Everything an experiment measured.
#[derive(Debug)]
pub struct ExperimentReport {
    /// Each fault in schedule order, with its RPO and throughput window.
    pub faults: Vec<FaultReport>,
    pub workload: WorkloadReport,
    pub audit: Audit,
    /// IOUs that exist twice: transfers committed twice.
    pub duplicate_transactions: usize,
    /// Requests that failed for the application, over the whole run.
    pub failed_requests: u64,
    /// Of those, the ones in no fault's window.
    pub failed_between_faults: u64,
    /// The nemesis run, when the schedule held one.
    pub nemesis: Option<NemesisRun>,
    pub retried_requests: u64,
    /// The whole run, per 100 ms.
    pub timeline: Vec<TimelineBucket>,
    /// From the start of the transfers to the end of the audit.
    pub duration_s: f64,
    /// Whether a shutdown cut the experiment short.
    pub interrupted: bool,
    /// The highest peak resident set size (`VmHWM`) among the running processes of each role
    /// (`sequencer`, `participant`, ...), in MiB, read just before the nodes stop.
    pub peak_rss_mib_by_role: BTreeMap<String, f64>,
    /// CPU time (user and system) per committed transfer, in milliseconds, from the start of
    /// the load to its end: the processes of each role together (all participants under
    /// `participant`), and the process running the load's client under [`LOAD_CLIENT`].
    pub cpu_ms_per_transfer_by_role: BTreeMap<String, f64>,
    /// The whole machine's CPU over the same window: per committed transfer, and how busy
    /// (and stolen) the CPUs were. `None` without `/proc/stat` or without a transfer.
    pub machine_load: Option<MachineLoad>,
    /// Peers the running sequencer instances marked offline over the run, summed, read just
    /// before the nodes stop. In a run without faults every one is a wrongful mark.
    pub sequencer_peers_marked_offline: u64,
    /// Where the submitting participants' own submissions spent their time, stage by stage
    /// (their `/status`), read just before the nodes stop.
    pub submission_stages: Vec<StageMean>,
}

/// One stage of a local submission across the running participants (see
/// `meridian_participant::stages`): how many submissions passed it, their mean time in it,
/// and the highest of the participants' 99th percentiles (quantiles of separate histograms do
/// not merge; the slowest participant's is the one a p99 target must meet).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StageMean {
    pub stage: String,
    pub count: u64,
    pub mean_ms: f64,
    pub p99_ms: f64,
}

/// The running participants' stage means, weighted by their counts, and p99s; in stage order.
async fn submission_stages(deployment: &Deployment) -> Vec<StageMean> {
    let mut statuses = Vec::new();
    for participant in &deployment.participants {
        if let Some(status) = crate::fault::admin_status(participant.admin_address).await {
            statuses.push(status);
        }
    }
    stage_means(&statuses)
}

/// Merges the `submissions.stages` objects of participants' `/status`.
fn stage_means(statuses: &[serde_json::Value]) -> Vec<StageMean> {
    let mut merged: Vec<StageMean> = Vec::new();
    for status in statuses {
        let Some(stages) = status["submissions"]["stages"].as_object() else {
            continue;
        };
        for (stage, figures) in stages {
            let count = figures["count"].as_u64().unwrap_or(0);
            let mean_ms = figures["mean_ms"].as_f64().unwrap_or(0.0);
            // An older participant reports no p99: 0, which never wins the maximum.
            let p99_ms = figures["p99_ms"].as_f64().unwrap_or(0.0);
            match merged.iter_mut().find(|m| m.stage == *stage) {
                Some(m) => {
                    let total = m.count + count;
                    if total > 0 {
                        m.mean_ms =
                            (m.mean_ms * m.count as f64 + mean_ms * count as f64) / total as f64;
                    }
                    m.count = total;
                    m.p99_ms = m.p99_ms.max(p99_ms);
                }
                None => merged.push(StageMean {
                    stage: stage.clone(),
                    count,
                    mean_ms,
                    p99_ms,
                }),
            }
        }
    }
    merged.sort_by_key(|m| stage_rank(&m.stage));
    merged
}

/// A stage's place in a submission's life; an unknown name sorts last.
fn stage_rank(stage: &str) -> usize {
    meridian_participant::stages::Stage::ALL
        .iter()
        .position(|s| s.name() == stage)
        .unwrap_or(usize::MAX)
}

impl ExperimentReport {
    /// The median and maximum of the faults' RTOs (first success).
    pub fn rto_p50_and_max_ms(&self) -> (f64, f64) {
        crate::stats::median_and_max(
            self.faults
                .iter()
                .filter_map(|f| f.rto_first_success_ms)
                .collect(),
        )
    }
}

impl Experiment {
    /// Starts the deployment `spec` describes (`say` gets its progress lines), runs the
    /// experiment on it and stops every node. `postgres` is the server the nodes store in,
    /// if they use one.
    pub async fn run_on(
        &self,
        spec: &DeploymentSpec,
        postgres: Option<&Databases>,
        say: &mut dyn FnMut(String),
        observer: &mut dyn Observer,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<ExperimentReport> {
        let mut deployment = Deployment::start(spec, say).await?;
        let mut result = self
            .run(&mut deployment, postgres, observer, shutdown)
            .await;
        if let Ok(report) = &mut result {
            report.peak_rss_mib_by_role = peak_rss_mib_by_role(&deployment);
            report.sequencer_peers_marked_offline = crate::fault::peers_marked_offline(&deployment)
                .await
                .values()
                .sum();
            report.submission_stages = submission_stages(&deployment).await;
        }
        let stopped = deployment.stop().await;
        let report = result?;
        stopped.context("stopping the nodes")?;
        Ok(report)
    }

    /// Runs the load and the schedule on a running deployment, then audits.
    pub async fn run(
        &self,
        deployment: &mut Deployment,
        postgres: Option<&Databases>,
        observer: &mut dyn Observer,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<ExperimentReport> {
        observer.load_starting();
        let load = BackgroundLoad::start_with(deployment, &self.load, shutdown).await?;
        let live = load.live.clone();
        let cpu_at_start = CpuSnapshot::take(deployment, &live);
        observer.load_started(&live);
        let parties = load.parties.clone();
        let mut stage = Stage {
            deployment,
            postgres,
            parties: &parties,
        };
        let scheduled = self.schedule(&mut stage, &live, observer, shutdown).await;
        let end = match (&scheduled, self.load.duration) {
            (Ok(_), Some(_)) => LoadEnd::RunOut,
            _ => LoadEnd::Stop,
        };
        let ended = load.end(end).await;
        let cpu_at_end = CpuSnapshot::take(deployment, &live);
        let cpu_ms_per_transfer_by_role = cpu_at_end.per_transfer_since(&cpu_at_start);
        let machine_load = cpu_at_end.machine_since(&cpu_at_start);
        observer.load_ended();
        let Played {
            mut faults,
            mut nemesis,
        } = scheduled?;
        let ended = ended?;
        let started = ended.started;
        let FinishedLoad {
            report: workload,
            audit,
            parties,
        } = ended.audit().await?;
        let duration_s = started.elapsed().as_secs_f64();
        let duplicate_transactions = workload::duplicate_ious(&parties).await?;
        attribute_rpo(&mut faults, &workload, &audit);
        // The last fault's window runs to the end of the run.
        if let Some((last, _)) = faults.last_mut() {
            last.window_end_ms = ms_since_epoch(&live, Instant::now());
        }
        let failures = live.failures();
        let failed_between_faults = attribute_failures(&mut faults, &failures);
        if let Some(run) = nemesis.as_mut() {
            run.attribute(&failures, &missing_acknowledged_at_us(&workload, &audit));
        }
        let end_bucket = live.bucket_of(Instant::now()) + 1;
        let faults = faults
            .into_iter()
            .map(|(mut report, window)| {
                report.throughput_per_100ms = throughput_around(&live, &report, window, end_bucket);
                report
            })
            .collect();
        Ok(ExperimentReport {
            faults,
            workload,
            audit,
            duplicate_transactions,
            failed_requests: live.failed.load(Ordering::Relaxed),
            failed_between_faults,
            nemesis,
            retried_requests: live.retried.load(Ordering::Relaxed),
            timeline: live.timeline.snapshot(end_bucket),
            duration_s,
            interrupted: shutdown.is_cancelled(),
            peak_rss_mib_by_role: BTreeMap::new(),
            cpu_ms_per_transfer_by_role,
            machine_load,
            sequencer_peers_marked_offline: 0,
            submission_stages: Vec::new(),
        })
    }

    /// Runs the steps; each fault's report comes with how long after it its throughput is
    /// kept (its settle period and the steady load that follows it), and its window ends when
    /// that steady load does.
    async fn schedule(
        &self,
        stage: &mut Stage<'_>,
        live: &Live,
        observer: &mut dyn Observer,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Played> {
        let mut played = Played::default();
        let mut index = 0;
        let mut after_fault = None;
        for (position, step) in self.steps.iter().enumerate() {
            if shutdown.is_cancelled() {
                break;
            }
            match step {
                Step::Steady(duration) => {
                    if let Some((done, fault)) = after_fault {
                        observer.phase(done, fault, Phase::Observing);
                    } else if let Some(next) = self.next_fault(position) {
                        observer.phase(index, &next.fault, Phase::Settling);
                    }
                    // A shutdown ends the wait; the loop's check then ends the schedule.
                    tokio::select! {
                        () = tokio::time::sleep(*duration) => {}
                        () = shutdown.cancelled() => {}
                    }
                    if after_fault.is_some() {
                        if let Some((report, window)) = played.faults.last_mut() {
                            *window += *duration;
                            report.window_end_ms = ms_since_epoch(live, Instant::now());
                        }
                    }
                }
                Step::Fault(step) => {
                    observer.phase(index, &step.fault, Phase::Measuring);
                    after_fault = Some((index, &step.fault));
                    index += 1;
                    match measure(stage, live, step).await {
                        Ok(report) => {
                            let flow = observer.measured(&report);
                            played.faults.push((report, step.settle));
                            if flow.is_break() {
                                break;
                            }
                        }
                        Err(error) => observer.fault_failed(error)?,
                    }
                    continue;
                }
                Step::Nemesis(plan) => {
                    let mut say = |line: String| observer.say(line);
                    played.nemesis =
                        Some(nemesis::play(plan, stage, live, &mut say, shutdown).await?);
                }
            }
            after_fault = None;
        }
        Ok(played)
    }

    /// The first fault scheduled after step `position`.
    fn next_fault(&self, position: usize) -> Option<&FaultStep> {
        self.steps[position..].iter().find_map(|step| match step {
            Step::Fault(fault) => Some(fault),
            Step::Steady(_) | Step::Nemesis(_) => None,
        })
    }
}

/// What the schedule did: each fault's report with how long its throughput is kept after it,
/// and the nemesis run if there was one.
#[derive(Default)]
struct Played {
    faults: Vec<(FaultReport, Duration)>,
    nemesis: Option<NemesisRun>,
}

fn ms_since_epoch(live: &Live, at: Instant) -> f64 {
    live.micros_since_epoch(at) as f64 / 1_000.0
}

/// Gives each fault the failed requests of its window; returns how many fell in none.
fn attribute_failures(faults: &mut [(FaultReport, Duration)], failures: &[FailureAt]) -> u64 {
    let windows: Vec<Window> = faults
        .iter()
        .map(|(report, _)| Window::from_ms(report.injected_at_ms, report.window_end_ms))
        .collect();
    let failed = attribution::count(&windows, failures.iter().map(|f| f.at_us));
    let timed_out = attribution::count(
        &windows,
        failures.iter().filter(|f| f.timed_out).map(|f| f.at_us),
    );
    for (index, (report, _)) in faults.iter_mut().enumerate() {
        report.failed_requests = failed.per_window[index];
        report.timed_out_requests = timed_out.per_window[index];
    }
    failed.between_faults
}

/// When each acknowledged transaction the audit found missing was acknowledged (µs since the
/// workload started).
fn missing_acknowledged_at_us(workload: &WorkloadReport, audit: &Audit) -> Vec<u64> {
    missing_acknowledged(workload, audit)
        .into_iter()
        .map(|(_, at)| at)
        .collect()
}

/// Each acknowledged transaction the audit found missing, with when it was acknowledged.
fn missing_acknowledged<'a>(workload: &'a WorkloadReport, audit: &Audit) -> Vec<(&'a str, u64)> {
    let missing: HashSet<&str> = audit
        .missing_transactions
        .iter()
        .map(String::as_str)
        .collect();
    workload
        .committed_transactions
        .iter()
        .zip(&workload.committed_at_us)
        .filter(|(id, _)| missing.contains(id.as_str()))
        .map(|(id, at)| (id.as_str(), *at))
        .collect()
}

/// Each missing transaction counts against the last fault injected before it was
/// acknowledged (that is the fault that could have lost it), and is listed there by id. A
/// lost region loses what was acknowledged *before* the fault (the standby's lag), so a
/// transaction acknowledged before a region move counts against that move.
fn attribute_rpo(faults: &mut [(FaultReport, Duration)], workload: &WorkloadReport, audit: &Audit) {
    for (id, acknowledged_us) in missing_acknowledged(workload, audit) {
        let acknowledged_ms = acknowledged_us as f64 / 1_000.0;
        let region_move = faults.iter().position(|(r, _)| r.scenario.is_region_move());
        let before = faults
            .iter()
            .rposition(|(r, _)| r.injected_at_ms <= acknowledged_ms);
        let blamed = match (before, region_move) {
            (Some(index), Some(region)) if index < region => Some(region),
            (None, Some(region)) => Some(region),
            (found, _) => found,
        };
        if let Some((report, _)) = blamed.and_then(|index| faults.get_mut(index)) {
            report.rpo_transactions += 1;
            report.lost_transactions.push(id.to_owned());
        }
    }
}

/// Commits per bucket from [`BUCKETS_BEFORE_FAULT`] before the fault to `after` past that.
fn throughput_around(
    live: &Live,
    report: &FaultReport,
    after: Duration,
    end_bucket: usize,
) -> Vec<u64> {
    let start = live
        .bucket_of(live.epoch() + Duration::from_secs_f64(report.injected_at_ms / 1_000.0))
        .saturating_sub(BUCKETS_BEFORE_FAULT);
    let after_buckets =
        usize::try_from(after.as_secs() * 1_000 / TIMELINE_BUCKET_MS).unwrap_or(usize::MAX);
    let end = start
        .saturating_add(BUCKETS_BEFORE_FAULT)
        .saturating_add(after_buckets)
        .min(end_bucket);
    live.timeline.committed_per_bucket(start, end)
}

/// The load's throughput and mean commit latency over a window of the timeline.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LoadRate {
    commits_per_bucket: f64,
    /// `None` when nothing committed in the window.
    mean_latency_ms: Option<f64>,
    /// Buckets in the window.
    buckets: usize,
    /// What the machine's CPUs did over the window.
    cpu: CpuJiffies,
}

impl LoadRate {
    /// Over buckets `from..to` (at least one bucket is counted).
    fn over(live: &Live, from: usize, to: usize) -> Self {
        let buckets = to.saturating_sub(from).max(1);
        Self {
            commits_per_bucket: live.timeline.committed_between(from, to) as f64 / buckets as f64,
            mean_latency_ms: live.timeline.mean_latency_ms(from, to),
            buckets,
            cpu: live.timeline.cpu_between(from, to),
        }
    }

    fn commits(&self) -> f64 {
        self.commits_per_bucket * self.buckets as f64
    }

    fn tx_per_s(&self) -> f64 {
        self.commits_per_bucket * 1_000.0 / TIMELINE_BUCKET_MS as f64
    }

    /// Commits under way on average (Little's law: throughput × time each took). With every
    /// lane submitting it is about the lane count; lanes that wait outside a submission
    /// (backing off after a failure, looking their IOU up, stuck) lower it.
    fn in_flight(&self) -> Option<f64> {
        self.mean_latency_ms
            .map(|ms| self.tx_per_s() * ms / 1_000.0)
    }
}

/// Below this share of the commits in flight before, lanes are said to wait outside their
/// submissions; above it, that each commit took longer.
const IN_FLIGHT_KEPT: f64 = 0.8;

/// Why throughput is short of before (`after`, over `after_buckets` buckets), for the problem
/// line of a fault whose throughput never came back: a CI log shows only that line. Every
/// lane still committing, each commit slower, is a slower deployment — which is also what a
/// machine that got busier makes of it (another test starting its own deployment beside the
/// drill does exactly that); fewer commits in flight is lanes that stopped submitting. What
/// the machine's CPUs did then tells a deployment doing more work per commit from a host that
/// took the machine's time.
fn describe_shortfall(before: LoadRate, after: LoadRate) -> String {
    let mut text = format!(
        "the last {:.1} s ran {:.1} tx/s, {:.0} % of the {:.1} tx/s before",
        after.buckets as f64 * TIMELINE_BUCKET_MS as f64 / 1_000.0,
        after.tx_per_s(),
        100.0 * after.commits_per_bucket / before.commits_per_bucket.max(f64::MIN_POSITIVE),
        before.tx_per_s(),
    );
    if let (Some(after_ms), Some(before_ms)) = (after.mean_latency_ms, before.mean_latency_ms) {
        text.push_str(&format!(
            ", at a mean commit latency of {after_ms:.0} ms against {before_ms:.0} ms ({:.1}×)",
            after_ms / before_ms.max(f64::MIN_POSITIVE)
        ));
    }
    if let (Some(after), Some(before)) = (after.in_flight(), before.in_flight()) {
        let verdict = if after >= IN_FLIGHT_KEPT * before {
            "the lanes kept submitting, each commit slower: the deployment as a whole ran slower, as on a machine that got busier (retries count in the latency: see the retried column)"
        } else {
            "lanes spent their time outside their submissions (waiting after failures, looking IOUs up, or stuck)"
        };
        text.push_str(&format!(
            "; commits in flight {after:.1} against {before:.1}: {verdict}"
        ));
    }
    if let Some(cpu) =
        machine_cpu::describe_change(before.cpu, before.commits(), after.cpu, after.commits())
    {
        text.push_str(&format!("; {cpu}"));
    }
    text
}

/// The window [`describe_shortfall`] looks at: the last 5 s (none of it before the first
/// success).
const SHORTFALL_WINDOW_BUCKETS: usize = 50;

/// The load's counters just before a fault, which its figures are measured against.
struct Before {
    rate: LoadRate,
    retried: u64,
}

impl Before {
    /// Takes the throughput over the `settle` period just past (whole seconds).
    fn take(live: &Live, settle: Duration) -> Self {
        let now_bucket = live.bucket_of(Instant::now());
        let settle_buckets =
            usize::try_from(settle.as_secs() * 1_000 / TIMELINE_BUCKET_MS).unwrap_or(usize::MAX);
        let from = now_bucket.saturating_sub(settle_buckets.saturating_sub(5).max(5));
        Self {
            rate: LoadRate::over(live, from, now_bucket),
            retried: live.retried.load(Ordering::Relaxed),
        }
    }
}

/// What the runner is waiting for after a fault, and when each thing happened.
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

    fn is_over(&self, until: Recovered) -> bool {
        self.detected.is_some()
            && self.first_success.is_some()
            && (self.throughput_back.is_some() || until == Recovered::FirstSuccess)
    }
}

/// Injects the step's fault into the running deployment while `live` load runs, measures
/// until it recovered, and restores full redundancy.
async fn measure(
    stage: &mut Stage<'_>,
    live: &Live,
    step: &FaultStep,
) -> anyhow::Result<FaultReport> {
    let before = Before::take(live, step.settle);
    let mut injected = step.fault.inject(stage).await?;
    let mut watch = Watch {
        injected_at: injected.injected_at,
        detected: None,
        first_success: None,
        throughput_back: None,
    };
    let fault_bucket = live.bucket_of(watch.injected_at);
    let mut problem = None;
    loop {
        if watch.injected_at.elapsed() > RECOVERY_TIMEOUT {
            let mut message = format!(
                "not recovered within {} s (detected: {}, first success: {}, throughput back: {})",
                RECOVERY_TIMEOUT.as_secs(),
                watch.detected.is_some(),
                watch.first_success.is_some(),
                watch.throughput_back.is_some()
            );
            if let (Some(first_success), None) = (watch.first_success, watch.throughput_back) {
                // The last complete buckets, none before the first success.
                let to = live.bucket_of(Instant::now());
                let from = to
                    .saturating_sub(SHORTFALL_WINDOW_BUCKETS)
                    .max(live.bucket_of(first_success));
                let after = LoadRate::over(live, from, to);
                let shortfall = describe_shortfall(before.rate, after);
                message.push_str(&format!("; {shortfall}"));
            }
            problem = Some(message);
            break;
        }
        if watch.detected.is_none() && injected.detected(stage.deployment).await {
            watch.detected = Some(Instant::now());
        }
        if watch.first_success.is_none() {
            match injected.recovered(live).await? {
                Recovery::NotYet => {}
                Recovery::At(at) => watch.first_success = Some(at),
                Recovery::Failed(failure) => {
                    problem = Some(failure);
                    break;
                }
            }
        }
        if watch.first_success.is_some() && watch.throughput_back.is_none() {
            watch.throughput_back =
                throughput_back(live, &watch, fault_bucket, before.rate.commits_per_bucket);
        }
        let moment = Moment::Measuring {
            detected: watch.detected.is_some(),
            served: watch.first_success.is_some(),
        };
        injected.restore(stage, moment).await?;
        if watch.is_over(step.until) && !injected.recovery_needs_restore() {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let action = injected.action.clone();
    let faulted = injected.faulted();
    let promotion = injected.promotion_report(watch.first_success);
    let restored = injected.finish(stage, watch.first_success).await?;
    Ok(FaultReport {
        scenario: step.fault.fault,
        target: step.fault.node.name(),
        action,
        faulted,
        injected_at_ms: ms_since_epoch(live, watch.injected_at),
        window_end_ms: ms_since_epoch(live, Instant::now()),
        detection_ms: watch.ms(watch.detected),
        rto_first_success_ms: watch.ms(watch.first_success),
        rto_throughput_90_ms: watch.ms(watch.throughput_back),
        rpo_transactions: 0,
        // Attributed by window once the run is over.
        failed_requests: 0,
        timed_out_requests: 0,
        retried_requests: live.retried.load(Ordering::Relaxed) - before.retried,
        throughput_before_tx_per_s: before.rate.tx_per_s(),
        throughput_per_100ms: Vec::new(),
        resumed_replica_passive: restored.resumed_replica_passive,
        promotion,
        region: restored.region,
        lost_transactions: Vec::new(),
        problem: problem.or(restored.problem),
    })
}

/// When throughput was first back at 90 % of `before_per_bucket`, if it is yet. Only
/// complete windows after the fault count: the fault's own bucket still holds commits from
/// before it, and the current bucket is still filling. Nor can throughput be "back" before
/// the first success after the fault.
fn throughput_back(
    live: &Live,
    watch: &Watch,
    fault_bucket: usize,
    before_per_bucket: f64,
) -> Option<Instant> {
    let current = live.bucket_of(Instant::now());
    let first_success_bucket = watch.first_success.map_or(0, |t| live.bucket_of(t));
    let mut start = (fault_bucket + 1).max(first_success_bucket);
    while start + RECOVERY_WINDOW_BUCKETS <= current {
        let window = live
            .timeline
            .committed_between(start, start + RECOVERY_WINDOW_BUCKETS) as f64
            / RECOVERY_WINDOW_BUCKETS as f64;
        if window >= 0.9 * before_per_bucket {
            let at = live.epoch()
                + Duration::from_millis(
                    u64::try_from(start).unwrap_or(u64::MAX) * TIMELINE_BUCKET_MS,
                );
            return Some(at.max(watch.first_success.unwrap_or(watch.injected_at)));
        }
        start += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each role's processes add up, a process not running at both ends (restarted: a new
    /// pid) counts for nothing, the load's client has its own entry, and no transfer means
    /// no figure.
    #[test]
    fn cpu_per_transfer_adds_up_each_role_and_leaves_out_restarted_processes() {
        let start = CpuSnapshot {
            nodes: vec![
                ("participant", 10, 100),
                ("participant", 11, 200),
                ("sequencer", 20, 1_000),
                ("mediator", 30, 50),
            ],
            load_client: Some(7),
            machine: Some(CpuJiffies {
                busy: 5_000,
                idle: 9_000,
                steal: 10,
            }),
            committed: 1_000,
        };
        let end = CpuSnapshot {
            nodes: vec![
                ("participant", 10, 150),
                ("participant", 11, 230),
                ("sequencer", 20, 1_040),
                // The mediator was restarted: a new pid, whose time is not comparable.
                ("mediator", 31, 5),
            ],
            load_client: Some(27),
            machine: Some(CpuJiffies {
                busy: 5_200,
                idle: 9_190,
                steal: 20,
            }),
            committed: 1_800,
        };
        let per_transfer = end.per_transfer_since(&start);
        // 800 transfers; a jiffy is 10 ms.
        assert_eq!(
            per_transfer,
            BTreeMap::from([
                (LOAD_CLIENT.to_owned(), 0.25),
                ("participant".to_owned(), 1.0),
                ("sequencer".to_owned(), 0.5),
            ])
        );
        // The machine: 200 busy jiffies (2 s) over 800 transfers, of 400 in all.
        assert_eq!(
            end.machine_since(&start),
            Some(MachineLoad {
                cpu_ms_per_transfer: 2.5,
                busy_percent: 50.0,
                steal_percent: 2.5,
            })
        );
        let without_proc_stat = CpuSnapshot {
            machine: None,
            nodes: end.nodes.clone(),
            ..end
        };
        assert_eq!(without_proc_stat.machine_since(&start), None);
        let idle = CpuSnapshot {
            committed: 1_000,
            ..end
        };
        assert!(idle.per_transfer_since(&start).is_empty());
        assert_eq!(idle.machine_since(&start), None);
    }

    #[test]
    fn stage_means_of_participants_are_weighted_by_count_and_in_stage_order() {
        let status = |admitted: (u64, f64, f64), decided: (u64, f64, f64)| {
            serde_json::json!({ "submissions": { "stages": {
                "decided": { "count": decided.0, "mean_ms": decided.1, "p99_ms": decided.2 },
                "admitted": { "count": admitted.0, "mean_ms": admitted.1, "p99_ms": admitted.2 },
            }}})
        };
        let statuses = [
            status((300, 2.0, 9.0), (300, 10.0, 30.0)),
            // A passive replica has no `submissions`; an idle participant has zero counts.
            serde_json::json!({ "phase": "passive" }),
            status((100, 6.0, 14.0), (0, 0.0, 0.0)),
        ];
        assert_eq!(
            stage_means(&statuses),
            vec![
                StageMean {
                    stage: "admitted".into(),
                    count: 400,
                    mean_ms: 3.0,
                    p99_ms: 14.0,
                },
                StageMean {
                    stage: "decided".into(),
                    count: 300,
                    mean_ms: 10.0,
                    p99_ms: 30.0,
                },
            ]
        );
    }

    /// A 5 s window without CPU samples.
    fn rate(tx_per_s: f64, mean_latency_ms: f64) -> LoadRate {
        LoadRate {
            commits_per_bucket: tx_per_s * TIMELINE_BUCKET_MS as f64 / 1_000.0,
            mean_latency_ms: Some(mean_latency_ms),
            buckets: 50,
            cpu: CpuJiffies::default(),
        }
    }

    /// A CI run failed with only "throughput back: false" to go on. The same failure
    /// reproduced with a second deployment started beside the drill: every lane kept
    /// committing at three times the latency. Lanes that stop submitting (stuck, or backing
    /// off outside their calls) look different, and the problem line says which it was.
    #[test]
    fn a_slower_deployment_is_told_from_lanes_that_stopped_submitting() {
        let before = rate(100.0, 80.0);
        assert_eq!(before.in_flight(), Some(8.0));

        let busier_machine = describe_shortfall(before, rate(33.0, 240.0));
        assert!(
            busier_machine.starts_with("the last 5.0 s ran 33.0 tx/s, 33 % of the 100.0 tx/s before, at a mean commit latency of 240 ms against 80 ms (3.0×); commits in flight 7.9 against 8.0"),
            "{busier_machine}"
        );
        assert!(
            busier_machine.contains("the lanes kept submitting"),
            "{busier_machine}"
        );

        let stuck_lanes = describe_shortfall(before, rate(50.0, 80.0));
        assert!(
            stuck_lanes.contains("commits in flight 4.0 against 8.0: lanes spent their time outside their submissions"),
            "{stuck_lanes}"
        );
    }

    #[test]
    fn a_window_without_commits_says_only_its_throughput() {
        let silent = LoadRate {
            commits_per_bucket: 0.0,
            mean_latency_ms: None,
            buckets: 20,
            cpu: CpuJiffies::default(),
        };
        assert_eq!(
            describe_shortfall(rate(100.0, 80.0), silent),
            "the last 2.0 s ran 0.0 tx/s, 0 % of the 100.0 tx/s before"
        );
    }

    #[test]
    fn a_window_rate_is_read_from_the_timeline() {
        let live = Live::default();
        for (bucket, latency_ms) in [(3u64, 100u64), (3, 300), (4, 200), (9, 5_000)] {
            live.timeline.record_commit(
                Duration::from_millis(bucket * TIMELINE_BUCKET_MS + 1),
                Duration::from_millis(latency_ms),
            );
        }
        let spent = |busy| CpuJiffies {
            busy,
            idle: 20 - busy,
            steal: 0,
        };
        for (bucket, busy) in [(2u64, 1), (3, 15), (4, 19), (5, 2)] {
            live.timeline.record_cpu(
                Duration::from_millis(bucket * TIMELINE_BUCKET_MS + 1),
                spent(busy),
            );
        }
        let window = LoadRate::over(&live, 3, 5);
        assert_eq!(
            window,
            LoadRate {
                commits_per_bucket: 1.5,
                mean_latency_ms: Some(200.0),
                buckets: 2,
                cpu: CpuJiffies {
                    busy: 34,
                    idle: 6,
                    steal: 0
                },
            }
        );
        assert_eq!(window.in_flight(), Some(3.0));
    }

    /// The CI failure this line was added for: every lane kept submitting, each commit 1.4
    /// times slower, for 45 s after a database restart, and nothing in the log said whether
    /// the deployment or the machine had slowed down.
    #[test]
    fn the_machines_cpus_are_part_of_the_shortfall() {
        let with_cpu = |tx_per_s, latency_ms, busy, steal| LoadRate {
            cpu: CpuJiffies {
                busy,
                idle: 1_000 - busy - steal,
                steal,
            },
            ..rate(tx_per_s, latency_ms)
        };
        let shortfall = describe_shortfall(
            with_cpu(275.0, 29.0, 960, 0),
            with_cpu(191.0, 42.0, 800, 150),
        );
        assert!(
            shortfall.ends_with("; the machine's CPUs were 80 % busy and 15 % stolen by the host against 96 % and 0 % before, 8.4 ms of CPU per commit against 7.0 ms: the host took CPU time from this machine"),
            "{shortfall}"
        );
    }
}
