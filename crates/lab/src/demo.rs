//! `meridian demo` and `meridian up`: a whole synchronizer on this machine.
//!
//! `demo` starts a replicated deployment (SQLite under `--data-dir`: two sequencer instances,
//! two replicas of the topology manager, the mediator and each participant), allocates
//! parties, issues one IOU per lane, runs three-participant transfers for `--duration` with a
//! live progress line and, halfway through, kill -9s the active replica of alice's
//! participant (participant2) to show a failover (`crate::timed_run`). Then it audits the ledgers and prints throughput, latency, rejections, the
//! failover (detection, RTO, RPO, failed and retried requests) and the audit. `up` starts the
//! same deployment, prints its endpoints and runs until Ctrl-C.

use std::path::PathBuf;

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::deployment::args::ShapedDeploymentArgs;
use crate::deployment::{Deployment, DeploymentSpec};
use crate::fault::Fault;
use crate::timed_run::{RunReport, WorkloadArgs};

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where keys, configs, databases and logs live; a second run resumes the same ledger.
    #[arg(long, default_value = "meridian-data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub workload: WorkloadArgs,
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

/// Progress lines of `up` on stderr.
fn say(line: String) {
    eprintln!("  {line}");
}

pub async fn up(args: UpArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut spec = DeploymentSpec::new(args.data_dir, args.deployment.resolve()?)?;
    spec.ledger_auth = true;
    // The server (if any) runs for as long as the deployment.
    let _postgres = spec.start_postgres()?;
    eprintln!("starting a synchronizer in {}", spec.data_dir.display());
    let mut deployment = Deployment::start(&spec, &mut say).await?;
    println!("Meridian is up:");
    for line in deployment.endpoints() {
        println!("  {line}");
    }
    if let Some(load_balancer) = &deployment.load_balancer {
        println!("Clients use the load balancer, one address per participant:");
        for line in load_balancer.lines() {
            println!("  {line}");
        }
    }
    if let Some(auth) = &deployment.ledger_auth {
        println!(
            "The Ledger API needs a bearer token (JWKS {}); mint one with:",
            auth.files.jwks.display()
        );
        println!("  {}", auth.command_line("<PARTICIPANT>"));
    }
    for line in deployment.tls_lines() {
        println!("{line}");
    }
    println!("Ctrl-C stops every node.");
    shutdown.cancelled().await;
    eprintln!("stopping...");
    deployment.stop().await
}

pub async fn demo(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut spec = DeploymentSpec::new(args.data_dir.clone(), args.deployment.resolve()?)?;
    spec.ledger_auth = true;
    // The server (if any) runs for as long as the deployment.
    let postgres = spec.start_postgres()?;
    let failover = !args.no_failover && spec.description.min_warm_replicas() >= 2;
    let run = args
        .workload
        .timed_run(failover.then(|| Fault::ParticipantCrash.planned()));
    let report = run.run(&spec, postgres.as_ref(), shutdown).await?;
    if args.workload.json {
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

fn print_summary(report: &RunReport) {
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
