//! Black-box tests of active/passive replicas with every node a real process: kill -9 of the
//! active participant, mediator and topology manager and of one of two sequencer instances
//! under load (nothing acknowledged lost, nothing duplicated, no request timed out), the same
//! for a participant on PostgreSQL, SIGSTOP of the active participant
//! until the passive took over and then SIGCONT (the old active stays passive and writes
//! nothing), and a manual switchover under load.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use meridian_lab::bench::failover::{measure_with, FailoverBenchArgs, TargetNode};
use meridian_lab::deployment::{Backend, Deployment, DeploymentArgs};
use meridian_lab::workload::{self, BackgroundLoad, FinishedLoad};
use meridian_lab::{admin, replicas};
use meridian_testkit::PostgresServer;
use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;

mod common;
use common::{replicated_spec, start_deployment, start_load, EXE};

fn args(node: TargetNode, backend: Backend, trials: u64) -> FailoverBenchArgs {
    FailoverBenchArgs {
        node,
        trials,
        deployment: DeploymentArgs {
            backend: Some(backend),
            ..DeploymentArgs::default()
        },
        lanes: 8,
        lease_timeout_ms: Some(1_000),
        json: true,
    }
}

async fn failover(node: TargetNode, backend: Backend, trials: u64) {
    let report = measure_with(
        &args(node, backend, trials),
        EXE.into(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    eprintln!("{report:#?}");
    assert_eq!(report.trials.len() as u64, trials);
    assert_eq!(report.lost_transactions, 0, "nothing acknowledged is lost");
    assert_eq!(
        report.duplicate_transactions, 0,
        "nothing is committed twice"
    );
    assert!(report.amounts_conserved);
    assert!(report.audit_ok);
    assert_eq!(
        report.timed_out_requests, 0,
        "no request times out because of a failover"
    );
    // Failed requests are a reported figure (issue 4), not yet a guaranteed zero: under CPU
    // contention a lane can give up waiting for its IOU on a lagging participant. Nothing is
    // lost or duplicated either way, which is what the assertions above hold.
    eprintln!(
        "failed requests: {} {:?}",
        report.failed_requests, report.rejections
    );
    // Generous bound for a shared two-core machine; the benchmark records the real figures.
    assert!(report.rto_ms_max < 5_000.0, "{report:?}");
    assert!(report.committed > 0);
}

/// One test per failover case: which node is killed, on which backend, how many times.
macro_rules! failover_tests {
    ($($test:ident: $node:ident on $backend:ident, $trials:literal trials;)+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                failover(TargetNode::$node, Backend::$backend, $trials).await;
            }
        )+
    };
}

failover_tests! {
    killing_the_active_participant_loses_nothing: Participant on Sqlite, 3 trials;
    killing_the_active_mediator_times_nothing_out: Mediator on Sqlite, 3 trials;
    killing_a_sequencer_instance_loses_nothing: Sequencer on Sqlite, 2 trials;
    killing_the_active_topology_manager_loses_nothing: Topology on Sqlite, 2 trials;
    participant_failover_on_postgres: Participant on Postgres, 2 trials;
}

struct Running {
    deployment: Deployment,
    load: BackgroundLoad,
    _dir: tempfile::TempDir,
}

/// The replicated preset under load, on `postgres` if given, else on SQLite.
async fn start_with_load(postgres: Option<&PostgresServer>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let spec = replicated_spec(dir.path(), postgres);
    let deployment = start_deployment(&spec).await;
    let load = start_load(&deployment, "ha-test", "ha").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    Running {
        deployment,
        load,
        _dir: dir,
    }
}

impl Running {
    /// Stops the load and checks the ledgers; returns the workload report.
    async fn finish(mut self) -> workload::WorkloadReport {
        let FinishedLoad { report, audit, .. } = self.load.finish().await.unwrap();
        assert!(audit.audit_ok, "{audit:?}");
        self.deployment.stop().await.unwrap();
        report
    }

    /// Sends `signal` to the process of the replica `name` of participant `index` (from 0).
    fn signal_replica(&mut self, index: usize, name: &str, signal: Signal) {
        self.deployment
            .participant_replicas_mut(index)
            .into_iter()
            .find(|r| r.name() == name)
            .unwrap()
            .signal(signal)
            .unwrap();
    }

    async fn committed_since(&self, since: Instant, participant: usize) -> bool {
        self.load
            .live
            .last_commit(participant)
            .is_some_and(|t| t > since)
    }
}

/// Prints the end of every replica's log of `node`, to explain a failed expectation.
fn print_log_tails(data_dir: &std::path::Path, node: &str) {
    for log in std::fs::read_dir(data_dir.join(node)).unwrap() {
        let path = log.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("--- {}:\n{}", path.display(), tail.join("\n"));
        }
    }
}

/// On PostgreSQL only: a process frozen inside an SQLite write transaction holds the file's
/// write lock, which no other process can break (docs/high-availability.md), whereas on
/// PostgreSQL the taker terminates the frozen holder's backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_active_is_replaced_and_stays_passive_after_it_resumes() {
    let server = PostgresServer::shared();
    let mut running = start_with_load(Some(server)).await;
    let data_dir = running.deployment.data_dir.clone();
    let active = replicas::active_replica(&data_dir, "participant2")
        .await
        .unwrap()
        .unwrap();
    let frozen_at = Instant::now();
    running.signal_replica(1, &active, Signal::SIGSTOP);
    // The passive takes over once the frozen active's lease expires.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now_active = replicas::active_replica(&data_dir, "participant2")
            .await
            .unwrap();
        if now_active.as_deref().is_some_and(|a| a != active)
            && running.committed_since(frozen_at, 1).await
        {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "active now: {now_active:?}; no commit through participant2 since the freeze"
            );
            print_log_tails(&data_dir, "participant2");
            panic!("no takeover from the frozen {active}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("taken over after {:?}", frozen_at.elapsed());
    running.signal_replica(1, &active, Signal::SIGCONT);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // The resumed replica noticed it lost the lease and is passive; only one is active.
    let replicas = replicas::replicas(&data_dir, "participant2").unwrap();
    let client = meridian_lab::tls::http().unwrap();
    let mut active_count = 0;
    for replica in replicas {
        let status = common::admin_status(&client, replica.admin_address).await;
        let role = status["replication"]["role"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if replica.name == active {
            assert_eq!(role, "passive", "{status}");
        }
        active_count += usize::from(role == "active");
    }
    assert_eq!(active_count, 1);
    let failed_before_finish = running.load.live.failed.load(Ordering::Relaxed);
    let report = running.finish().await;
    assert_eq!(
        failed_before_finish, 0,
        "{} committed; failures: {:?}",
        report.committed, report.failure_samples
    );
}

/// Switches participant2, the mediator and participant3 over under load; returns the
/// application-visible failures. The ledger audit (nothing lost, nothing twice) always holds.
async fn switchover_under_load() -> u64 {
    let running = start_with_load(None).await;
    let data_dir = running.deployment.data_dir.clone();
    for node in ["participant2", "mediator", "participant3"] {
        let (from, to, took) =
            match admin::switch_over(&data_dir, node, Duration::from_secs(10)).await {
                Ok(done) => done,
                Err(error) => {
                    print_log_tails(&data_dir, node);
                    panic!("switchover of {node}: {error:#}");
                }
            };
        eprintln!("{node}: {from} -> {to} in {took:?}");
        assert_ne!(from, to);
        let since = Instant::now();
        let deadline = since + Duration::from_secs(10);
        while !(running.committed_since(since, 1).await && running.committed_since(since, 2).await)
        {
            if Instant::now() >= deadline {
                print_log_tails(&data_dir, node);
                panic!(
                    "no commits after switching {node}; failed so far: {}",
                    running.load.live.failed.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let failed = running.load.live.failed.load(Ordering::Relaxed);
    let report = running.finish().await;
    eprintln!(
        "failed requests: {failed}; {} committed, {} retried; failures: {:?} {:?}",
        report.committed, report.retried_submissions, report.rejections, report.failure_samples
    );
    failed
}

/// The load's audit (run by `finish`) shows nothing lost or duplicated, and no request failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_under_load_fails_no_request_and_loses_nothing() {
    assert_eq!(switchover_under_load().await, 0);
}
