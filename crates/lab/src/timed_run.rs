//! A transfer load run for a fixed time against a fresh deployment, with a live progress line
//! and, optionally, one fault halfway through: what `meridian demo` (with its failover) and
//! `meridian bench ledger` (without) run. One configuration of the experiment runner.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_core::UserId;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::deployment::{Databases, DeploymentSpec};
use crate::experiment::{Experiment, FaultReport, FaultStep, Observer, Recovered, StageMean, Step};
use crate::fault::{Node, PlannedFault};
use crate::stats::fmt_ms;
use crate::workload::{Audit, Live, LoadSpec, WorkloadReport, OWNER_PARTICIPANTS};

/// The workload flags `meridian demo` and `meridian bench ledger` share.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadArgs {
    /// Seconds of transfer workload.
    #[arg(long = "duration", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration_s: u64,
    /// Concurrent transfer lanes (each owns one IOU).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub lanes: u64,
    /// Target transfers per second; absent means as fast as possible (saturation).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
}

impl WorkloadArgs {
    /// The run these flags ask for, with `fault` injected halfway through if given.
    pub fn timed_run(&self, fault: Option<PlannedFault>) -> TimedRun {
        TimedRun {
            lanes: self.lanes,
            duration: Duration::from_secs(self.duration_s),
            rate: self.rate,
            fault,
            json: self.json,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct TimedRun {
    pub lanes: u64,
    pub duration: Duration,
    /// Target transfers per second; `None` = as fast as the lanes go.
    pub rate: Option<u64>,
    /// Injected halfway through, measured until throughput is back.
    pub fault: Option<PlannedFault>,
    /// Print one JSON object at the end instead of progress on stderr.
    pub json: bool,
}

/// What a load run for a fixed time saw, with its fault if one was injected.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub duration_s: f64,
    pub lanes: u64,
    #[serde(flatten)]
    pub workload: WorkloadReport,
    #[serde(flatten)]
    pub audit: Audit,
    /// The failover halfway through, if one was run.
    pub failover: Option<FaultReport>,
    pub interrupted: bool,
    /// Each role's largest peak resident set size, in MiB (issue 14 bounds it at 100).
    pub peak_rss_mib_by_role: std::collections::BTreeMap<String, f64>,
    /// CPU per committed transfer over the load, in ms, by role (each role's processes
    /// together) and for the load's client (`load client`).
    pub cpu_ms_per_transfer_by_role: std::collections::BTreeMap<String, f64>,
    /// The nodes' CPU per committed transfer, in ms: the sum of the roles above without the
    /// load's client. Steadier from run to run than throughput on a shared machine, so a
    /// change's CPU cost is best compared with `bench compare --metric
    /// node_cpu_ms_per_transfer`. `None` without committed transfers.
    pub node_cpu_ms_per_transfer: Option<f64>,
    /// The whole machine's busy CPU per committed transfer, in ms: the nodes, the load's
    /// client, a PostgreSQL server, HAProxy and the kernel's own work (interrupts, I/O
    /// completions), which `node_cpu_ms_per_transfer` leaves out. `None` without
    /// `/proc/stat` or without committed transfers.
    pub machine_cpu_ms_per_transfer: Option<f64>,
    /// How busy the machine's CPUs were over the load, in per cent: a latency measured near
    /// 100 includes queueing for a CPU.
    pub machine_busy_percent: Option<f64>,
    /// The share of the CPUs' time the host gave to other guests, in per cent.
    pub machine_steal_percent: Option<f64>,
    /// Peers the sequencer instances marked offline during the run (issue 14: none may be
    /// in a run without a fault).
    pub sequencer_peers_marked_offline: u64,
    /// Where the participants' own submissions spent their time, in stage order.
    pub submission_stages: Vec<StageMean>,
}

/// See [`RunReport::node_cpu_ms_per_transfer`].
fn node_cpu_ms_per_transfer(by_role: &std::collections::BTreeMap<String, f64>) -> Option<f64> {
    let nodes: Vec<f64> = by_role
        .iter()
        .filter(|(role, _)| role.as_str() != crate::experiment::LOAD_CLIENT)
        .map(|(_, ms)| *ms)
        .collect();
    (!nodes.is_empty()).then(|| nodes.iter().sum())
}

impl TimedRun {
    /// Starts the deployment `spec` describes, runs the load (and the fault), audits, and
    /// stops every node.
    pub async fn run(
        &self,
        spec: &DeploymentSpec,
        postgres: Option<&Databases>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<RunReport> {
        if !self.json {
            eprintln!("starting a synchronizer in {}", spec.data_dir.display());
        }
        let mut progress = ProgressLine {
            run: self,
            task: None,
        };
        let report = self
            .experiment()?
            .run_on(
                spec,
                postgres,
                &mut say(self.json),
                &mut progress,
                &shutdown,
            )
            .await?;
        Ok(RunReport {
            duration_s: report.duration_s,
            lanes: self.lanes,
            workload: report.workload,
            audit: report.audit,
            failover: report.faults.into_iter().next(),
            interrupted: report.interrupted,
            peak_rss_mib_by_role: report.peak_rss_mib_by_role,
            node_cpu_ms_per_transfer: node_cpu_ms_per_transfer(&report.cpu_ms_per_transfer_by_role),
            cpu_ms_per_transfer_by_role: report.cpu_ms_per_transfer_by_role,
            machine_cpu_ms_per_transfer: report.machine_load.map(|m| m.cpu_ms_per_transfer),
            machine_busy_percent: report.machine_load.map(|m| m.busy_percent),
            machine_steal_percent: report.machine_load.map(|m| m.steal_percent),
            sequencer_peers_marked_offline: report.sequencer_peers_marked_offline,
            submission_stages: report.submission_stages,
        })
    }

    fn experiment(&self) -> anyhow::Result<Experiment> {
        let halfway = self.duration / 2;
        let steps = match self.fault {
            Some(fault) => vec![
                Step::Steady(halfway),
                Step::Fault(FaultStep {
                    fault,
                    settle: halfway,
                    until: Recovered::Throughput,
                }),
            ],
            None => Vec::new(),
        };
        let run = format!(
            "run{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis()
        );
        Ok(Experiment {
            load: LoadSpec {
                user: UserId::new("demo-app")?,
                backoff: meridian_client::Backoff::default(),
                lanes: usize::try_from(self.lanes)?,
                run,
                rate: self.rate,
                duration: Some(self.duration),
            },
            steps,
        })
    }
}

/// Progress lines on stderr, unless the output is JSON.
fn say(json: bool) -> impl FnMut(String) {
    move |line: String| {
        if !json {
            eprintln!("  {line}");
        }
    }
}

/// The live progress line while the load runs, and the failover's outcome when it is known.
struct ProgressLine<'a> {
    run: &'a TimedRun,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Observer for ProgressLine<'_> {
    fn load_starting(&mut self) {
        say(self.run.json)(format!(
            "issuing {} IOUs from bank to alice",
            self.run.lanes
        ));
    }

    fn load_started(&mut self, live: &Arc<Live>) {
        let [alice, bob] = OWNER_PARTICIPANTS.map(|index| Node::Participant(index).name());
        say(self.run.json)(format!(
            "transferring between alice ({alice}) and bob ({bob}) for {} s",
            self.run.duration.as_secs()
        ));
        self.task = Some(progress_line(
            live.clone(),
            self.run.duration,
            self.run.json,
        ));
    }

    fn measured(&mut self, report: &FaultReport) -> ControlFlow<()> {
        say(self.run.json)(format!(
            "failover: {}; first success after {} ms",
            report.action,
            fmt_ms(report.rto_first_success_ms)
        ));
        ControlFlow::Continue(())
    }

    /// The show goes on without its failover.
    fn fault_failed(&mut self, error: anyhow::Error) -> anyhow::Result<()> {
        tracing::warn!(%error, "the demo's failover could not be run");
        Ok(())
    }

    fn load_ended(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if !self.run.json {
            eprintln!();
        }
    }
}

fn progress_line(live: Arc<Live>, duration: Duration, json: bool) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let bar = if json {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(duration.as_secs())
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("  {spinner} {elapsed}/{len}s {wide_msg}")
                .expect("static progress template is valid"),
        );
        let started = Instant::now();
        let mut last = (Instant::now(), 0u64);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let committed = live.committed.load(Ordering::Relaxed);
            let now = Instant::now();
            let rate = (committed - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            last = (now, committed);
            bar.set_position(started.elapsed().as_secs());
            bar.set_message(format!(
                "{committed} committed  {rate:>6.0} tx/s  {} failed",
                live.failed.load(Ordering::Relaxed)
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_cpu_is_every_role_but_the_load_client() {
        let by_role = std::collections::BTreeMap::from([
            (crate::experiment::LOAD_CLIENT.to_owned(), 0.1),
            ("participant".to_owned(), 0.9),
            ("sequencer".to_owned(), 0.5),
        ]);
        let nodes = node_cpu_ms_per_transfer(&by_role).expect("nodes ran");
        assert!((nodes - 1.4).abs() < 1e-9, "{nodes}");
        let only_client =
            std::collections::BTreeMap::from([(crate::experiment::LOAD_CLIENT.to_owned(), 0.1)]);
        assert_eq!(node_cpu_ms_per_transfer(&only_client), None);
    }
}
