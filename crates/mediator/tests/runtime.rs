//! End-to-end test of the mediator runtime: a real sequencer in-process (SQLite), a fake
//! topology manager serving a fixed signed history, and two participants played by the test
//! with plain sequencer clients. Covers approval, timeout driven by time proofs, a restart in
//! the middle of a request, and the admin endpoints.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{expect_approved, start_mediator, wait_ready, Synchronizer, HASH};
use meridian_core::protocol::{RejectionCode, VerdictOutcome};
use meridian_testkit::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mediator_decides_times_out_and_survives_a_restart() {
    let (synchronizer, mut p1, mut p2) = Synchronizer::start().await;
    let mediator_admin = free_port();
    let config = synchronizer.mediator_config(mediator_admin);
    let (mediator_stop, mediator) = start_mediator(&config);
    wait_ready(mediator_admin).await;
    let mediator_public = synchronizer.mediator_key.public_key();

    // 1. Both confirming parties approve: both informee participants learn it.
    let a = p1.request("request-a", &["alice", "bob"]).await;
    p1.approve(a, "alice").await;
    p2.approve(a, "bob").await;
    for participant in [&mut p1, &mut p2] {
        let verdict = participant.next_verdict(&mediator_public).await;
        assert_eq!(verdict.request_id, a);
        assert_eq!(verdict.request_hash, HASH);
        assert_eq!(verdict.outcome, VerdictOutcome::Approved);
    }

    // 2. bob never answers: the mediator's own time proofs carry it past the deadline.
    let b = p1.approved_by_alice("request-b").await;
    let verdict = p1.next_verdict(&mediator_public).await;
    assert_eq!(verdict.request_id, b);
    match verdict.outcome {
        VerdictOutcome::Rejected {
            code: RejectionCode::Timeout,
            message,
        } => assert!(message.ends_with("from: bob"), "{message}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(p2.next_verdict(&mediator_public).await.request_id, b);

    // 3. The mediator stops with request c half approved; bob approves while it is down.
    let c = p1.approved_by_alice("request-c").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    mediator_stop.cancel();
    mediator.await.unwrap().unwrap();
    p2.approve(c, "bob").await;
    let (mediator_stop, mediator) = start_mediator(&config);
    let why = "finished, not timed out";
    expect_approved([&mut p1, &mut p2], &mediator_public, c, why).await;

    // 4. What operators see.
    wait_ready(mediator_admin).await;
    let status: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{mediator_admin}/status"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(status["role"], "mediator");
    assert_eq!(status["pending_requests"], 0);
    assert!(status["last_processed_us"].as_u64().unwrap() > c.as_micros());
    let metrics = reqwest::get(format!("http://127.0.0.1:{mediator_admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("meridian_mediator_verdicts_total{outcome=\"approved\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meridian_mediator_pending_requests 0"),
        "{metrics}"
    );

    mediator_stop.cancel();
    mediator.await.unwrap().unwrap();
    synchronizer.stop().await;
}
