//! `meridian bench failover --standby cold`: one trial on the participant with the real binary
//! — a deployment under a real `meridian controller`, the only warm replica's host lost under
//! load — must see the controller start the cold replica, a transfer through the participant
//! commit after the kill, a clean audit, and the split in order: kill ≤ cold-start decision ≤
//! process running ≤ ready ≤ first commit. And what the bench cannot measure is refused with
//! a clear error before anything starts.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::process::Command;
use std::time::{Duration, Instant};

use meridian_core::placement::NodeKind;
use meridian_lab::bench::failover::{FailoverBenchArgs, TargetNode};
use meridian_lab::bench::standby::{measure_with, ColdOptions};
use meridian_lab::deployment::DeploymentArgs;
use tokio_util::sync::CancellationToken;

const EXE: &str = env!("CARGO_BIN_EXE_meridian");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_participant_replica_is_started_by_the_controller_and_commits() {
    let args = FailoverBenchArgs {
        node: TargetNode::Participant,
        trials: 1,
        deployment: DeploymentArgs::default(),
        lanes: 4,
        lease_timeout_ms: None,
        json: true,
    };
    let report = measure_with(
        &args,
        &ColdOptions::default(),
        EXE.as_ref(),
        &mut |line| eprintln!("{line}"),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let json = serde_json::to_string_pretty(&report).unwrap();
    assert_eq!(report.trials.len(), 1, "{json}");
    let trial = &report.trials[0];
    assert_eq!(trial.killed, "participant2-a", "{json}");
    assert_eq!(trial.started, "participant2-b", "{json}");
    // The controller tried to restart the lost replica in place first; that start could not
    // run a process, so it started the cold replica without waiting for the crash loop
    // (measure_with fails without the cold-start record).
    let restart = trial.restart_decision_ms.expect("a restart decision");
    assert!(
        0.0 <= restart && restart <= trial.cold_decision_ms,
        "{json}"
    );
    assert!(
        trial
            .crash_loop_ms
            .is_none_or(|crash_loop| crash_loop > trial.cold_decision_ms),
        "the crash loop was not waited for: {json}"
    );
    // Ordered: the pidfile's time has a coarser clock than the audit's, hence the 20 ms.
    assert!(
        trial.cold_decision_ms <= trial.cold_running_ms + 20.0,
        "{json}"
    );
    assert!(trial.cold_running_ms <= trial.cold_ready_ms, "{json}");
    assert!(trial.cold_ready_ms <= trial.first_commit_ms, "{json}");
    assert!(trial.committed > 0, "{json}");
    assert!(report.audit_ok, "{json}");
    assert_eq!(report.lost_transactions, 0, "{json}");
    assert_eq!(report.duplicate_transactions, 0, "{json}");
    // The costs: every running replica measured, the passive participants among them.
    let passive = report
        .costs
        .iter()
        .find(|c| c.kind == NodeKind::Participant && c.role == "passive")
        .unwrap_or_else(|| panic!("a passive participant's cost: {json}"));
    assert!(passive.cost.rss_mib > 1.0, "{json}");
    assert!(passive.cost.tcp_listening >= 1, "{json}");
    assert!(
        !report.costs.iter().any(|c| c.replica == "participant2-b"),
        "the cold replica did not run when the costs were taken: {json}"
    );
}

/// Runs `meridian bench failover ARGS` and returns its stderr; it must fail within seconds
/// (nothing was started).
fn refused(args: &[&str]) -> String {
    let started = Instant::now();
    let output = Command::new(EXE)
        .args(["bench", "failover"])
        .args(args)
        .output()
        .unwrap();
    assert!(!output.status.success(), "{args:?} was accepted");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{args:?}: refused only after {:?}",
        started.elapsed()
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn what_the_cold_bench_cannot_measure_is_refused_before_anything_starts() {
    let error = refused(&["--standby", "cold", "--backend", "postgres"]);
    assert!(error.contains("SQLite only"), "{error}");
    let error = refused(&[
        "--standby",
        "cold",
        "--node",
        "mediator",
        "--preset",
        "single",
    ]);
    assert!(
        error.contains("mediator has 1 replica(s); it needs a second one"),
        "{error}"
    );
    let error = refused(&["--standby", "warm", "--crash-loop-restarts", "2"]);
    assert!(error.contains("only --standby cold"), "{error}");
    let error = refused(&["--standby", "lukewarm"]);
    assert!(error.contains("--standby"), "{error}");
}
