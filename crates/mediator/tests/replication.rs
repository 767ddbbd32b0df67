//! Two replicas of the mediator on one SQLite database (DESIGN.md §5): one active, one warm
//! passive that refuses readiness naming the active one; the active stops with a request half
//! answered and the passive takes over and approves it (no TIMEOUT because of the failover);
//! a manual step-down hands the lease back; an active that hangs is replaced once its lease
//! times out.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{expect_approved, start_mediator, status, wait_processed, wait_ready, Synchronizer};
use meridian_mediator::config::ReplicationConfig;
use meridian_mediator::MediatorConfig;
use meridian_testkit::free_port;

/// A takeover must be well within this (the target is under a second).
const TAKEOVER_LIMIT: Duration = Duration::from_secs(3);

/// Replica `replica_id`: lease 1 s, polled every 100 ms.
fn replica(synchronizer: &Synchronizer, admin_port: u16, replica_id: &str) -> MediatorConfig {
    MediatorConfig {
        replication: Some(ReplicationConfig::new(replica_id)),
        ..synchronizer.mediator_config(admin_port)
    }
}

async fn step_down(port: u16) -> u16 {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/admin/step-down"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits until the replica at `port` reports itself passive with `/readyz` 503 naming
/// `active` as the active replica.
async fn wait_passive(port: u16, active: &str) -> serde_json::Value {
    let started = Instant::now();
    loop {
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
            let code = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            if code == 503 && body.to_string().contains(active) {
                return body;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "replica on {port} never became passive behind {active}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `/readyz` every 10 ms until 200; returns how long it took.
async fn time_until_ready(port: u16, since: Instant) -> Duration {
    loop {
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
            if response.status().is_success() {
                return since.elapsed();
            }
        }
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "replica on {port} never took over"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts that the replica at `port` serves within `TAKEOVER_LIMIT` of `since`, and prints
/// how long it took: "`who` serving N ms after `after`".
async fn expect_takeover(port: u16, since: Instant, who: &str, after: &str) {
    let took = time_until_ready(port, since).await;
    println!("{who} serving {} ms after {after}", took.as_millis());
    assert!(took < TAKEOVER_LIMIT, "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_replica_takes_over_and_finishes_in_flight_requests() {
    let (synchronizer, mut p1, mut p2) = Synchronizer::start().await;
    let mediator_public = synchronizer.mediator_key.public_key();
    let (admin_a, admin_b) = (free_port(), free_port());
    let config_a = replica(&synchronizer, admin_a, "mediator-a");
    let config_b = replica(&synchronizer, admin_b, "mediator-b");

    // A starts first and takes the lease; B waits warm, refusing readiness and naming A.
    let (stop_a, task_a) = start_mediator(&config_a);
    wait_ready(admin_a).await;
    let (stop_b, task_b) = start_mediator(&config_b);
    let reason = wait_passive(admin_b, "mediator-a").await;
    assert!(
        reason.to_string().contains(&format!("127.0.0.1:{admin_a}")),
        "names the active replica's endpoint: {reason}"
    );
    let status_a = status(admin_a).await;
    let status_b = status(admin_b).await;
    assert_eq!(status_a["role"], "mediator");
    assert_eq!(status_a["replication"]["role"], "active", "{status_a}");
    assert_eq!(status_a["replication"]["replica_id"], "mediator-a");
    let epoch_a = status_a["replication"]["epoch"].as_i64().unwrap();
    assert!(status_a["replication"]["since_us"].as_u64().unwrap() > 0);
    assert_eq!(status_b["replication"]["role"], "passive", "{status_b}");
    assert_eq!(status_b["replication"]["active_replica"], "mediator-a");
    assert!(status_b["replication"]["since_us"].as_u64().unwrap() > 0);
    assert_eq!(step_down(admin_b).await, 409, "a passive cannot step down");

    // The active replica works.
    let a = p1.request("request-a", &["alice", "bob"]).await;
    p1.approve(a, "alice").await;
    p2.approve(a, "bob").await;
    expect_approved([&mut p1, &mut p2], &mediator_public, a, "request a").await;

    // A stops with request c half approved (persisted); bob approves during the takeover.
    let c = p1.approved_by_alice("request-c").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = Instant::now();
    stop_a.cancel();
    let bob_approved_c = p2.approve(c, "bob").await;
    expect_takeover(admin_b, stopped, "failover: replica B", "A stopped").await;
    task_a.await.unwrap().unwrap();
    let why = "finished by the new active, not timed out";
    expect_approved([&mut p1, &mut p2], &mediator_public, c, why).await;
    // The verdict goes out before B's commit of the run that decided c: the pending count is
    // read once B's stored checkpoint covers bob's approval.
    wait_processed(admin_b, bob_approved_c).await;
    let status_b = status(admin_b).await;
    assert_eq!(status_b["replication"]["role"], "active", "{status_b}");
    let epoch_b = status_b["replication"]["epoch"].as_i64().unwrap();
    assert!(
        epoch_b > epoch_a,
        "a takeover bumps the epoch: {epoch_a} → {epoch_b}"
    );
    assert_eq!(status_b["pending_requests"], 0);

    // A comes back as the passive one.
    let (stop_a, task_a) = start_mediator(&config_a);
    wait_passive(admin_a, "mediator-b").await;

    // Switchover with request d in flight: B steps down, A takes over and finishes d.
    let d = p1.approved_by_alice("request-d").await;
    let asked = Instant::now();
    assert_eq!(step_down(admin_b).await, 202);
    p2.approve(d, "bob").await;
    let after = "the step-down request";
    expect_takeover(admin_a, asked, "switchover: replica A", after).await;
    wait_passive(admin_b, "mediator-a").await;
    expect_approved([&mut p1, &mut p2], &mediator_public, d, "request d").await;
    let status_a = status(admin_a).await;
    assert!(status_a["replication"]["epoch"].as_i64().unwrap() > epoch_b);

    // A hangs: its task is dropped mid-flight, so it neither renews nor releases the lease and
    // its process (this test) keeps the lease lock file. B takes over once the lease expires.
    let e = p1.approved_by_alice("request-e").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hung = Instant::now();
    task_a.abort();
    p2.approve(e, "bob").await;
    let after = "A stopped renewing (lease timeout 1000 ms)";
    expect_takeover(admin_b, hung, "stuck active: replica B", after).await;
    expect_approved([&mut p1, &mut p2], &mediator_public, e, "request e").await;

    // Stops what the dropped task had spawned (its admin server, its verdict sender).
    stop_a.cancel();
    stop_b.cancel();
    assert!(task_a.await.unwrap_err().is_cancelled());
    task_b.await.unwrap().unwrap();
    synchronizer.stop().await;
}
