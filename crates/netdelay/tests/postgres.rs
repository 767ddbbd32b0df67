//! A PostgreSQL standby streaming through the delaying proxy: its `primary_conninfo` names the
//! proxy in front of the primary, a row committed on the primary appears on it, a partition
//! stops the stream until healed, and once it is the synchronous standby every commit pays the
//! proxied round trip.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::time::{Duration, Instant};

use meridian_netdelay::DelayProxy;
use meridian_pgserver::{ApplicationName, PostgresServer, SyncState, SynchronousStandbys};
use sqlx::{Connection, PgConnection};

const WAIT: Duration = Duration::from_secs(30);
const ONE_WAY_DELAY: Duration = Duration::from_millis(20);

const ROWS: &str = "SELECT string_agg(id::text, ',' ORDER BY id) FROM t";

/// Polls the standby until its rows are `expected` (ids joined by commas), for at most [`WAIT`].
async fn wait_for_rows(standby: &PostgresServer, expected: &str) {
    let started = Instant::now();
    loop {
        let rows = tokio::task::block_in_place(|| standby.psql("postgres", ROWS));
        if rows.as_deref().ok() == Some(expected) {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "wanted rows {expected} on the standby, got {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_streams_through_the_proxy() {
    let name = ApplicationName::new("behind_proxy").unwrap();
    let primary = tokio::task::block_in_place(PostgresServer::start).unwrap();
    let proxy = DelayProxy::start(
        "127.0.0.1:0".parse().unwrap(),
        primary.address(),
        ONE_WAY_DELAY,
    )
    .await
    .unwrap();
    let standby = tokio::task::block_in_place(|| {
        let standby = primary.start_standby(proxy.local_addr(), &name).unwrap();
        primary.wait_for_streaming(&name, WAIT).unwrap();
        primary
            .psql("postgres", "CREATE TABLE t (id int PRIMARY KEY)")
            .unwrap();
        primary
            .psql("postgres", "INSERT INTO t VALUES (7)")
            .unwrap();
        standby
    });
    assert!(
        proxy.active_connections() >= 1,
        "the standby streams around the proxy"
    );
    wait_for_rows(&standby, "7").await;

    // A partition stops the stream; healed, the standby reconnects by itself and catches up.
    proxy.partition();
    tokio::task::block_in_place(|| {
        let started = Instant::now();
        while primary.standby_status(&name).unwrap().is_some() {
            assert!(started.elapsed() < WAIT, "the standby still streams");
            std::thread::sleep(Duration::from_millis(50));
        }
        primary
            .psql("postgres", "INSERT INTO t VALUES (8)")
            .unwrap();
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = tokio::task::block_in_place(|| standby.psql("postgres", ROWS)).unwrap();
    assert_eq!(rows, "7", "a row crossed the partition");
    proxy.heal();
    wait_for_rows(&standby, "7,8").await;

    // Synchronous through the proxy: a commit waits for WAL to go out and the standby's
    // flush to come back, each way through the proxy.
    tokio::task::block_in_place(|| {
        primary
            .set_synchronous_standbys(&SynchronousStandbys::one(name.clone()))
            .unwrap();
        primary
            .wait_for_sync_state(&name, SyncState::Sync, WAIT)
            .unwrap();
    });
    let mut connection = PgConnection::connect(&primary.url("postgres"))
        .await
        .unwrap();
    let mut commits = Vec::new();
    for id in 100..110 {
        let started = Instant::now();
        sqlx::query("INSERT INTO t VALUES ($1)")
            .bind(id)
            .execute(&mut connection)
            .await
            .unwrap();
        commits.push(started.elapsed());
    }
    commits.sort();
    println!(
        "synchronous commit through a {ONE_WAY_DELAY:?} one-way proxy: min {:?}, median {:?}, \
         max {:?}",
        commits[0],
        commits[commits.len() / 2],
        commits[commits.len() - 1]
    );
    assert!(
        commits[0] >= 2 * ONE_WAY_DELAY,
        "a synchronous commit took less than the proxied round trip: {:?}",
        commits[0]
    );
}
