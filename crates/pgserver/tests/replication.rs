//! Real streaming replication between throwaway servers: an asynchronous standby receives what
//! the primary commits; a commit waits for a stopped synchronous standby and completes once it
//! is back; and a kill -9 of the primary under a stream of commits loses nothing it
//! acknowledged once its synchronous standby is promoted (RPO 0).

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_pgserver::{
    ApplicationName, PostgresServer, ReplicationError, SyncState, SynchronousStandbys,
};
use sqlx::{Connection, PgConnection};

/// Bound on every wait for replication; generous for a loaded two-core machine.
const WAIT: Duration = Duration::from_secs(30);
/// How long a commit must stay pending to count as waiting for the stopped standby.
const PENDING_FOR: Duration = Duration::from_secs(1);

fn name(text: &str) -> ApplicationName {
    ApplicationName::new(text).unwrap()
}

/// A primary and one standby streaming from it directly.
fn cluster(standby_name: &ApplicationName) -> (PostgresServer, PostgresServer) {
    let primary = PostgresServer::start().unwrap();
    let standby = primary
        .start_standby(primary.address(), standby_name)
        .unwrap();
    primary.wait_for_streaming(standby_name, WAIT).unwrap();
    (primary, standby)
}

/// A primary whose commits wait for its one standby (`sync_state = sync`), with an empty
/// table `t (id bigint PRIMARY KEY)`.
fn synchronous_cluster(standby_name: &ApplicationName) -> (PostgresServer, PostgresServer) {
    let (primary, standby) = cluster(standby_name);
    primary
        .set_synchronous_standbys(&SynchronousStandbys::one(standby_name.clone()))
        .unwrap();
    primary
        .wait_for_sync_state(standby_name, SyncState::Sync, WAIT)
        .unwrap();
    primary
        .psql("postgres", "CREATE TABLE t (id bigint PRIMARY KEY)")
        .unwrap();
    (primary, standby)
}

/// Polls `query` on `server` until it answers `expected`, for at most [`WAIT`].
fn wait_for_answer(server: &PostgresServer, query: &str, expected: &str) {
    let started = Instant::now();
    loop {
        match server.psql("postgres", query) {
            Ok(answer) if answer == expected => return,
            Ok(_) | Err(_) if started.elapsed() < WAIT => {
                std::thread::sleep(Duration::from_millis(50))
            }
            other => panic!("{query} on {server}: wanted {expected:?}, last got {other:?}"),
        }
    }
}

#[test]
fn async_standby_receives_commits() {
    let standby_name = name("async_b");
    let (primary, standby) = cluster(&standby_name);
    assert!(standby.is_in_recovery().unwrap());
    assert!(!primary.is_in_recovery().unwrap());
    assert_eq!(standby.application_name(), Some(&standby_name));

    primary
        .psql("postgres", "CREATE TABLE t (id int PRIMARY KEY)")
        .unwrap();
    primary
        .psql("postgres", "INSERT INTO t VALUES (42)")
        .unwrap();
    wait_for_answer(&standby, "SELECT string_agg(id::text, ',') FROM t", "42");

    let status = primary.wait_for_catch_up(&standby_name, WAIT).unwrap();
    assert_eq!(status.sync_state, SyncState::Async);
    assert_eq!(status.lag_bytes, Some(0));
    // A standby refuses writes, and cannot itself be promoted twice.
    assert!(standby
        .psql("postgres", "INSERT INTO t VALUES (1)")
        .is_err());
    let error = primary.promote().unwrap_err();
    assert!(
        matches!(error, ReplicationError::NotAStandby { .. }),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_waits_for_the_stopped_synchronous_standby() {
    let standby_name = name("sync_b");
    let (primary, standby) = tokio::task::block_in_place(|| {
        let (primary, standby) = synchronous_cluster(&standby_name);
        standby.stop_fast().unwrap();
        (primary, standby)
    });

    let url = primary.url("postgres");
    let mut connection = PgConnection::connect(&url).await.unwrap();
    let started = Instant::now();
    let insert = tokio::spawn(async move {
        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut connection)
            .await
            .map(|_| started.elapsed())
    });
    tokio::time::sleep(PENDING_FOR).await;
    assert!(
        !insert.is_finished(),
        "a commit completed without its synchronous standby"
    );
    // The backend is waiting for the standby, not for anything else.
    let waiting = tokio::task::block_in_place(|| {
        primary.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
        )
    })
    .unwrap();
    assert_eq!(waiting, "1");

    let resume_started = Instant::now();
    tokio::task::block_in_place(|| standby.resume()).unwrap();
    println!("standby resumed in {:?}", resume_started.elapsed());
    let waited = tokio::time::timeout(WAIT, insert)
        .await
        .expect("the commit completes once the standby is back")
        .unwrap()
        .unwrap();
    println!("commit waited {waited:?} for the stopped synchronous standby");
    assert!(waited >= PENDING_FOR);
    tokio::task::block_in_place(|| {
        let status = primary
            .wait_for_sync_state(&standby_name, SyncState::Sync, WAIT)
            .unwrap();
        assert_eq!(status.application_name, "sync_b");
        wait_for_answer(&standby, "SELECT count(*) FROM t", "1");
    });
}

/// Inserts consecutive ids from `first` through one connection until an insert fails, and
/// records each id whose commit was acknowledged.
async fn insert_until_failure(url: String, first: i64, acknowledged: Arc<Mutex<Vec<i64>>>) {
    let Ok(mut connection) = PgConnection::connect(&url).await else {
        return;
    };
    for id in first.. {
        let inserted = sqlx::query("INSERT INTO t VALUES ($1)")
            .bind(id)
            .execute(&mut connection)
            .await;
        if inserted.is_err() {
            return;
        }
        acknowledged.lock().unwrap().push(id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoted_synchronous_standby_has_every_acknowledged_commit() {
    const WRITERS: i64 = 4;
    let standby_name = name("sync_b");
    let (primary, standby) = tokio::task::block_in_place(|| synchronous_cluster(&standby_name));

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let url = primary.url("postgres");
            tokio::spawn(insert_until_failure(
                url,
                writer * 1_000_000_000,
                acknowledged.clone(),
            ))
        })
        .collect();
    // Let the stream run, then crash the primary in the middle of it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    tokio::task::block_in_place(|| primary.kill9()).unwrap();
    for writer in writers {
        tokio::time::timeout(WAIT, writer)
            .await
            .expect("every writer stops once the primary is gone")
            .unwrap();
    }
    let acknowledged: BTreeSet<i64> = acknowledged.lock().unwrap().iter().copied().collect();
    assert!(
        acknowledged.len() >= 10,
        "only {} commits before the crash",
        acknowledged.len()
    );

    let promote_started = Instant::now();
    tokio::task::block_in_place(|| standby.promote()).unwrap();
    let promote_took = promote_started.elapsed();
    let mut connection = PgConnection::connect(&standby.url("postgres"))
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (-1)")
        .execute(&mut connection)
        .await
        .expect("the promoted server accepts writes");
    let first_write_after = promote_started.elapsed();
    assert!(!tokio::task::block_in_place(|| standby.is_in_recovery()).unwrap());

    let present: BTreeSet<i64> = sqlx::query_scalar("SELECT id FROM t WHERE id >= 0")
        .fetch_all(&mut connection)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let lost: Vec<_> = acknowledged.difference(&present).collect();
    println!(
        "promote took {promote_took:?}; first write {first_write_after:?} after the promote call; \
         {} commits acknowledged, {} rows on the promoted server ({} committed unacknowledged)",
        acknowledged.len(),
        present.len(),
        present.len().saturating_sub(acknowledged.len())
    );
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
}
