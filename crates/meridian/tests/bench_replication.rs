//! The replication benchmark's `sync` mode measures what it says: a short ledger run on the
//! bench's own cluster (a primary and a standby behind the delaying proxy, 1 ms round trip)
//! with the primary reporting the standby `sync` before and after it; a commit on that
//! primary waits while the standby is cut off; and after a kill -9 of the primary, the
//! promoted standby holds every transfer the application was told is committed, on every
//! participant's database.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use meridian_lab::bench::ledger;
use meridian_lab::bench::replication::{self, Cell, ReplicatedPostgres, Replication, StandbyLink};
use meridian_lab::deployment::DeploymentSpec;
use meridian_lab::timed_run::{RunReport, TimedRun};
use tokio_util::sync::CancellationToken;

mod common;

/// Short: the test is about where the commits went, not how many there are.
const RUN: Duration = Duration::from_secs(3);
/// A commit that waits for a cut-off synchronous standby is still waiting after this.
const COMMIT_BLOCKED_FOR: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_mode_commits_on_the_standby_before_answering() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DeploymentSpec {
        exe: common::EXE.into(),
        ..DeploymentSpec::local(dir.path().to_path_buf(), 3).unwrap()
    };
    let participant_databases: Vec<String> = spec
        .description
        .participants
        .iter()
        .map(|p| p.name.to_string().replace('-', "_"))
        .collect();
    let cell = Cell {
        replication: Replication::Sync,
        link: Some(StandbyLink::Proxied { rtt_ms: 1 }),
    };
    let run = TimedRun {
        lanes: 8,
        duration: RUN,
        rate: None,
        fault: None,
        json: true,
    };
    let mut results = replication::sweep(&[cell], 1, &mut |line| eprintln!("{line}"), |cluster| {
        let (spec, run) = (spec.clone(), run.clone());
        async move {
            let report =
                ledger::measure_cell(spec, &cluster, &run, CancellationToken::new()).await?;
            Ok::<(RunReport, Arc<ReplicatedPostgres>), anyhow::Error>((report, cluster))
        }
    })
    .await
    .unwrap();
    let measured = results.remove(0).runs.remove(0);
    assert_eq!(measured.sync_state_before.as_deref(), Some("sync"));
    assert_eq!(measured.sync_state_after.as_deref(), Some("sync"));
    let (report, cluster) = measured.result;
    assert!(report.audit.audit_ok, "audit failed: {:?}", report.audit);
    let acknowledged: BTreeSet<String> = report
        .workload
        .committed_transactions
        .iter()
        .cloned()
        .collect();
    assert!(!acknowledged.is_empty(), "the run committed nothing");

    assert_commit_waits_for_the_standby(&cluster).await;

    // Nothing the primary answered after this point can be missing from the standby below.
    cluster.primary().kill9().unwrap();
    let standby = cluster.standby().unwrap();
    standby.promote().unwrap();
    for database in &participant_databases {
        let rows = standby
            .psql(
                database,
                "SELECT transaction_id FROM participant_transactions",
            )
            .unwrap();
        let on_standby: BTreeSet<String> = rows.lines().map(str::to_owned).collect();
        let missing: Vec<&String> = acknowledged.difference(&on_standby).collect();
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged transactions missing from {database} on the promoted standby: {missing:?}",
            missing.len(),
            acknowledged.len()
        );
    }
}

/// With the standby link partitioned, a commit on the primary does not return; once healed,
/// it does. An asynchronous standby would let it return at once.
async fn assert_commit_waits_for_the_standby(cluster: &Arc<ReplicatedPostgres>) {
    cluster
        .primary()
        .psql("postgres", "CREATE TABLE probe (x integer)")
        .unwrap();
    let proxy = cluster.proxy().unwrap();
    proxy.partition();
    let primary = cluster.clone();
    let commit = tokio::task::spawn_blocking(move || {
        primary
            .primary()
            .psql("postgres", "INSERT INTO probe VALUES (1)")
    });
    let mut commit = std::pin::pin!(commit);
    assert!(
        tokio::time::timeout(COMMIT_BLOCKED_FOR, &mut commit)
            .await
            .is_err(),
        "a commit returned while the synchronous standby was cut off"
    );
    proxy.heal();
    tokio::time::timeout(Duration::from_secs(30), commit)
        .await
        .expect("the commit returns once the standby is back")
        .unwrap()
        .unwrap();
}

/// Bad input is refused before anything starts, naming what is wrong.
#[test]
fn bad_replication_flags_are_refused_up_front() {
    let refusal = |args: &[&str]| {
        let output = std::process::Command::new(common::EXE)
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let on_sqlite = refusal(&["bench", "ledger", "--replication", "sync"]);
    assert!(on_sqlite.contains("add --backend postgres"), "{on_sqlite}");
    assert!(on_sqlite.contains("sqlite"), "{on_sqlite}");
    let too_far = refusal(&[
        "bench",
        "ledger",
        "--backend",
        "postgres",
        "--replication",
        "sync",
        "--standby-rtt-ms",
        "1,5000",
    ]);
    assert!(
        too_far.contains("5000 ms is above the 1000 ms"),
        "{too_far}"
    );
    let without_mode = refusal(&["bench", "pgbench", "--standby-rtt-ms", "5"]);
    assert!(without_mode.contains("--replication"), "{without_mode}");
}
