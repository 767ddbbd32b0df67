//! End-to-end test of the mediator runtime: a real sequencer in-process (SQLite), a fake
//! topology manager serving a fixed signed history, and two participants played by the test
//! with plain sequencer clients. Covers approval, timeout driven by time proofs, a restart in
//! the middle of a request, the admin endpoints, verdicts that do not wait for the mediator's
//! own commit, and runs processed while a commit waits.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{
    expect_approved, start_mediator, status, wait_processed, wait_ready, Synchronizer, HASH,
};
use meridian_core::protocol::{RejectionCode, VerdictOutcome};
use meridian_core::Timestamp;
use meridian_testkit::cancel::SqliteWriteLock;
use meridian_testkit::free_port;
use sqlx::{Connection as _, SqliteConnection};

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
    let bob_approved_c = p2.approve(c, "bob").await;
    let (mediator_stop, mediator) = start_mediator(&config);
    let why = "finished, not timed out";
    expect_approved([&mut p1, &mut p2], &mediator_public, c, why).await;

    // 4. What operators see, once the run that decided c is committed: the verdict goes out
    // before the mediator's commit, and the status counts only what is stored. The restored
    // checkpoint is already past c (alice's approval and time proofs came after it) with c
    // still pending, so only a checkpoint at bob's approval says the deciding run is stored.
    wait_ready(mediator_admin).await;
    wait_processed(mediator_admin, bob_approved_c).await;
    let status = status(mediator_admin).await;
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

/// `(stored, marked sent)` for the verdict of `request_id`, read from the mediator's database.
async fn stored_verdict(connection: &mut SqliteConnection, request_id: Timestamp) -> (bool, bool) {
    let micros = i64::try_from(request_id.as_micros()).unwrap();
    let sent: Option<bool> =
        sqlx::query_scalar("SELECT sent FROM mediator_verdicts WHERE request_id = $1")
            .bind(micros)
            .fetch_optional(&mut *connection)
            .await
            .unwrap();
    (sent.is_some(), sent.unwrap_or(false))
}

/// Waits until the verdict of `request_id` is stored and marked sent.
async fn expect_marked_sent(database: &std::path::Path, request_id: Timestamp, why: &str) {
    let mut connection = SqliteConnection::connect(&format!("sqlite://{}", database.display()))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (stored, sent) = stored_verdict(&mut connection, request_id).await;
        if stored && sent {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{why}: the verdict is stored {stored}, marked sent {sent}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    connection.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_go_out_before_the_mediators_commit_and_survive_losing_it() {
    let (synchronizer, mut p1, mut p2) = Synchronizer::start().await;
    let mediator_admin = free_port();
    let config = synchronizer.mediator_config(mediator_admin);
    let database = synchronizer.dir.path().join("mediator.db");
    let (mediator_stop, mediator) = start_mediator(&config);
    wait_ready(mediator_admin).await;
    let mediator_public = synchronizer.mediator_key.public_key();

    // 1. With alice's approval processed, the mediator's commits stall; bob's approval
    //    decides the request, and the verdict reaches both participants anyway, while the
    //    run that decided it is still unwritten.
    let a = p1.request("request-a", &["alice", "bob"]).await;
    let approved = p1.approve(a, "alice").await;
    wait_processed(mediator_admin, approved).await;
    let mut lock = SqliteWriteLock::take(&database).await;
    p2.approve(a, "bob").await;
    for participant in [&mut p1, &mut p2] {
        let verdict = tokio::time::timeout(
            Duration::from_secs(3),
            participant.next_verdict(&mediator_public),
        )
        .await
        .expect("the verdict does not wait for the mediator's commit");
        assert_eq!(verdict.request_id, a);
        assert_eq!(verdict.outcome, VerdictOutcome::Approved);
    }
    assert_eq!(
        stored_verdict(lock.connection(), a).await,
        (false, false),
        "the run that decided it is not committed yet"
    );

    // 2. Once the commit goes through, the verdict is stored and marked sent, never marked
    //    before its row exists (which would leave it unsent for good).
    lock.release().await;
    expect_marked_sent(&database, a, "after the stalled commit").await;

    // 3. A run whose verdict went out but whose commit never happened (the mediator stops
    //    while its commit stalls): the restarted mediator replays it from the checkpoint,
    //    decides the same, and stores it. The participants' ledgers moved on the first copy.
    let b = p1.request("request-b", &["alice", "bob"]).await;
    let approved = p1.approve(b, "alice").await;
    wait_processed(mediator_admin, approved).await;
    let lock = SqliteWriteLock::take(&database).await;
    p2.approve(b, "bob").await;
    expect_approved(
        [&mut p1, &mut p2],
        &mediator_public,
        b,
        "sent before the commit",
    )
    .await;
    mediator_stop.cancel();
    mediator.await.unwrap().unwrap();
    lock.release().await;
    let (mediator_stop, mediator) = start_mediator(&config);
    wait_ready(mediator_admin).await;
    expect_marked_sent(&database, b, "decided again by the replay").await;
    let status = status(mediator_admin).await;
    assert_eq!(status["pending_requests"], 0);

    mediator_stop.cancel();
    mediator.await.unwrap().unwrap();
    synchronizer.stop().await;
}

/// The mediator goes on deciding while its commit waits: with its database's write lock held
/// elsewhere, request after request is decided and its verdict delivered, and once the lock is
/// released every one of them is stored and marked sent. With one run at a time (process,
/// commit, then the next run) only the first request's events would be processed: its
/// approval would wait behind the stalled commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mediator_keeps_deciding_while_its_commit_waits() {
    let (synchronizer, mut p1, mut p2) = Synchronizer::start().await;
    let mediator_admin = free_port();
    let config = synchronizer.mediator_config(mediator_admin);
    let database = synchronizer.dir.path().join("mediator.db");
    let (mediator_stop, mediator) = start_mediator(&config);
    wait_ready(mediator_admin).await;
    let mediator_public = synchronizer.mediator_key.public_key();

    let lock = SqliteWriteLock::take(&database).await;
    let mut decided = Vec::new();
    for n in 0..3 {
        let request = p1.request(&format!("request-{n}"), &["alice"]).await;
        p1.approve(request, "alice").await;
        expect_approved(
            [&mut p1, &mut p2],
            &mediator_public,
            request,
            "decided while the mediator's commit waits",
        )
        .await;
        decided.push(request);
    }

    lock.release().await;
    for request in decided {
        expect_marked_sent(&database, request, "after the stalled commit").await;
    }
    assert_eq!(status(mediator_admin).await["pending_requests"], 0);

    mediator_stop.cancel();
    mediator.await.unwrap().unwrap();
    synchronizer.stop().await;
}
