//! `meridian demo` and `meridian up`: a whole synchronizer on this machine.
//!
//! `demo` starts a replicated deployment (SQLite under `--data-dir`: two sequencer instances,
//! two replicas of the topology manager, the mediator and each participant), allocates
//! parties, issues one IOU per lane, runs three-participant transfers for `--duration` with a
//! live progress line and, halfway through, kill -9s the active replica of participant2 to
//! show a failover. Then it audits the ledgers and prints throughput, latency, rejections, the
//! failover (detection, RTO, RPO, failed and retried requests) and the audit. `up` starts the
//! same deployment, prints its endpoints and runs until Ctrl-C.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use meridian_core::UserId;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::deployment::args::ShapedDeploymentArgs;
use crate::deployment::{Deployment, DeploymentSpec};
use crate::drill::plan::{PlannedFault, Scenario};
use crate::drill::FaultReport;
use crate::workload::{self, Audit, Live, Parties, WorkloadReport, WorkloadSpec};

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where keys, configs, databases and logs live; a second run resumes the same ledger.
    #[arg(long, default_value = "meridian-data")]
    pub data_dir: PathBuf,
    /// Seconds of transfer workload.
    #[arg(long = "duration", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration_s: u64,
    /// Concurrent transfer lanes (each owns one IOU).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub lanes: u64,
    /// Target transfers per second; absent means as fast as possible.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Do not kill a participant replica halfway through.
    #[arg(long)]
    pub no_failover: bool,
    /// The deployment to start (default: the `replicated` preset on SQLite).
    #[command(flatten)]
    pub deployment: ShapedDeploymentArgs,
}

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    #[arg(long, default_value = "meridian-data")]
    pub data_dir: PathBuf,
    /// The deployment to start (default: the `replicated` preset on SQLite).
    #[command(flatten)]
    pub deployment: ShapedDeploymentArgs,
}

#[derive(Debug, Serialize)]
pub struct DemoReport {
    pub duration_s: f64,
    pub lanes: u64,
    #[serde(flatten)]
    pub workload: WorkloadReport,
    #[serde(flatten)]
    pub audit: Audit,
    /// The failover halfway through, if one was run.
    pub failover: Option<FaultReport>,
    pub interrupted: bool,
}

fn say(json: bool) -> impl FnMut(String) {
    move |line: String| {
        if !json {
            eprintln!("  {line}");
        }
    }
}

pub async fn up(args: UpArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut spec = DeploymentSpec::new(args.data_dir, args.deployment.resolve()?)?;
    // The server (if any) runs for as long as the deployment.
    let _postgres = spec.start_postgres()?;
    eprintln!("starting a synchronizer in {}", spec.data_dir.display());
    let mut deployment = Deployment::start(&spec, &mut say(false)).await?;
    println!("Meridian is up:");
    for line in deployment.endpoints() {
        println!("  {line}");
    }
    println!("Ctrl-C stops every node.");
    shutdown.cancelled().await;
    eprintln!("stopping...");
    deployment.stop().await
}

pub async fn demo(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut spec = DeploymentSpec::new(args.data_dir.clone(), args.deployment.resolve()?)?;
    let _postgres = spec.start_postgres()?;
    let failover = !args.no_failover && spec.description.min_warm_replicas() >= 2;
    let report = run_ledger_workload(
        &spec,
        args.lanes,
        Duration::from_secs(args.duration_s),
        args.rate,
        args.json,
        failover,
        shutdown,
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_summary(&report);
    }
    if !report.audit.audit_ok {
        anyhow::bail!("the ledger audit failed");
    }
    if let Some(problem) = report.failover.as_ref().and_then(|f| f.problem.as_ref()) {
        anyhow::bail!("the failover did not recover: {problem}");
    }
    Ok(())
}

/// Starts a deployment, runs the transfer workload (with a participant failover halfway when
/// `failover`), audits, and stops every node.
pub async fn run_ledger_workload(
    spec: &DeploymentSpec,
    lanes: u64,
    duration: Duration,
    rate: Option<u64>,
    json: bool,
    failover: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<DemoReport> {
    if !json {
        eprintln!("starting a synchronizer in {}", spec.data_dir.display());
    }
    let mut deployment = Deployment::start(spec, &mut say(json)).await?;
    let result = drive(
        &mut deployment,
        lanes,
        duration,
        rate,
        json,
        failover,
        shutdown,
    )
    .await;
    let stopped = deployment.stop().await;
    let report = result?;
    stopped.context("stopping the nodes")?;
    Ok(report)
}

async fn drive(
    deployment: &mut Deployment,
    lanes: u64,
    duration: Duration,
    rate: Option<u64>,
    json: bool,
    failover: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<DemoReport> {
    let run = format!(
        "run{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    );
    let user = UserId::new("demo-app")?;
    let parties = Parties::allocate(deployment, &user).await?;
    say(json)(format!("issuing {lanes} IOUs from bank to alice"));
    let lane_states = workload::issue_lanes(&parties, lanes as usize, &run).await?;
    let baseline = workload::baseline(&parties).await?;
    say(json)(format!(
        "transferring between alice (participant2) and bob (participant3) for {} s",
        duration.as_secs()
    ));

    let live = Arc::new(Live::default());
    let progress = progress_line(live.clone(), duration, json);
    let spec = WorkloadSpec {
        duration,
        rate,
        run,
    };
    let started = Instant::now();
    let workload = {
        let (parties, live, stop) = (parties.clone(), live.clone(), shutdown.clone());
        tokio::spawn(async move {
            workload::run_transfers(&parties, lane_states, &spec, live, stop).await
        })
    };
    let mut fault = None;
    if failover {
        let halfway = duration / 2;
        tokio::select! {
            () = tokio::time::sleep(halfway) => {
                let planned = PlannedFault {
                    scenario: Scenario::ParticipantCrash,
                    target: "participant2".into(),
                };
                let measured =
                    crate::drill::run_fault(
                        deployment,
                        &live,
                        &parties,
                        &planned,
                        halfway.as_secs(),
                        None,
                        crate::drill::Recovered::Throughput,
                    )
                        .await;
                match measured {
                    Ok(report) => {
                        say(json)(format!(
                            "failover: {}; first success after {} ms",
                            report.action,
                            report.rto_first_success_ms.map_or_else(|| "-".into(), |ms| format!("{ms:.0}"))
                        ));
                        fault = Some(report);
                    }
                    Err(error) => tracing::warn!(%error, "the demo's failover could not be run"),
                }
            }
            () = shutdown.cancelled() => {}
        }
    }
    let report = workload.await.context("the workload task panicked")?;
    progress.abort();
    if !json {
        eprintln!();
    }
    let report = report?;
    let audit = workload::audit(&parties, &baseline, &report.committed_transactions).await?;
    Ok(DemoReport {
        duration_s: started.elapsed().as_secs_f64(),
        lanes,
        workload: report,
        audit,
        failover: fault,
        interrupted: shutdown.is_cancelled(),
    })
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

fn print_summary(report: &DemoReport) {
    let w = &report.workload;
    let a = &report.audit;
    println!(
        "Meridian demo: {} lanes, {:.1} s{}",
        report.lanes,
        report.duration_s,
        if report.interrupted {
            " (interrupted)"
        } else {
            ""
        }
    );
    println!("  committed transfers       {:>10}", w.committed);
    println!("  throughput                {:>10.0} tx/s", w.tx_per_s);
    println!(
        "  SubmitAndWait latency     p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
        w.latency_p50_ms, w.latency_p99_ms, w.latency_max_ms
    );
    if w.rejections.is_empty() {
        println!("  rejections                {:>10}", 0);
    } else {
        for (reason, count) in &w.rejections {
            println!("  rejections: {reason:<13} {count:>10}");
        }
    }
    for sample in w.failure_samples.iter().take(3) {
        println!("    e.g. {sample}");
    }
    println!("  client retries            {:>10}", w.retried_submissions);
    if let Some(f) = &report.failover {
        let ms = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.0} ms"));
        println!("  failover: {}", f.action);
        println!(
            "    detected after {}; first successful transaction after {} (RTO); throughput back to 90 % after {}",
            ms(f.detection_ms),
            ms(f.rto_first_success_ms),
            ms(f.rto_throughput_90_ms)
        );
        println!(
            "    RPO {} lost transactions; {} failed and {} retried requests around it",
            report.audit.acknowledged_missing, f.failed_requests, f.retried_requests
        );
    }
    println!("  waits for visibility      {:>10}", w.visibility_waits);
    println!(
        "  audit: amounts conserved  {:>10}  ({} before, {} after)",
        yes(a.amounts_conserved),
        a.total_before,
        a.total_after
    );
    println!("  audit: views agree        {:>10}", yes(a.views_agree));
    println!(
        "  audit: acknowledged on every informee  {} of {} ({} missing)",
        a.acknowledged_checked - a.acknowledged_missing,
        a.acknowledged_checked,
        a.acknowledged_missing
    );
    println!(
        "  audit                     {:>10}",
        if a.audit_ok { "OK" } else { "FAILED" }
    );
}

fn yes(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "NO"
    }
}
