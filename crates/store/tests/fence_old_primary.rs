//! No second writer (issue 10, item 4), on real servers with streaming replication: primary A
//! and its synchronous standby B, the stores' URL listing A then B. A is killed (kill -9),
//! B promoted (`pg_ctl promote`, timeline 2), writes continue on B; then A is started again
//! *as a primary* on its old data directory (not rewound: it is writable on timeline 1). No
//! store may write on A again — not the running one when it searches again, not one opened
//! afresh, not the replica lease, not one whose pooled connections reconnect to A without any
//! call failing in between — and once A is the only writable server left, the error (a node's
//! not-ready reason) says why. Each check looks at A's tables directly.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::time::Duration;

use meridian_core::crypto::SigningKey;
use meridian_core::{MemberId, Timestamp};
use meridian_store::follow::MIN_SEARCH_INTERVAL;
use meridian_store::{
    open_lease_store, open_sequencer_store, SequencerStore, StorageConfig, StoreError,
};
use meridian_testkit::{ApplicationName, PostgresServer, SyncState, SynchronousStandbys};

const DATABASE: &str = "fence";
const WAIT: Duration = Duration::from_secs(30);

fn host(server: &PostgresServer) -> String {
    format!("127.0.0.1:{}", server.port())
}

fn config(servers: &[&PostgresServer]) -> StorageConfig {
    let hosts: Vec<String> = servers.iter().map(|server| host(server)).collect();
    StorageConfig::Postgres {
        url: format!(
            "postgres://meridian@{}/{DATABASE}?target_session_attrs=read-write&connect_timeout=2",
            hosts.join(",")
        ),
        max_connections: 2,
    }
}

async fn register(store: &dyn SequencerStore, name: &str) -> Result<(), StoreError> {
    let key = SigningKey::generate().public_key();
    store
        .register_member(
            &MemberId::new(name).unwrap(),
            &key,
            Timestamp::from_micros(1),
        )
        .await
        .map(|_| ())
}

/// Retries `name`'s registration while the failures are transient, as a node's loop does.
async fn register_retrying(store: &dyn SequencerStore, name: &str) {
    for attempt in 0..50 {
        match register(store, name).await {
            Ok(()) => return,
            Err(error) if error.is_transient() => {
                eprintln!("registering {name}: attempt {attempt}: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("registering {name}: {error}"),
        }
    }
    panic!("registering {name}: still failing after 50 attempts");
}

/// The members on `server`, in order of registration.
fn members(server: &PostgresServer) -> String {
    server
        .psql(
            DATABASE,
            "SELECT coalesce(string_agg(id, ',' ORDER BY seq), '') FROM members",
        )
        .unwrap()
}

/// The timeline `server`'s current WAL file is on (a server not in recovery).
fn timeline(server: &PostgresServer) -> u32 {
    let name = server
        .psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())")
        .unwrap();
    u32::from_str_radix(&name[..8], 16).unwrap()
}

/// Primary A with the `fence` database, and B, its synchronous standby.
fn primary_and_sync_standby(standby_name: &str) -> (PostgresServer, PostgresServer) {
    let a = PostgresServer::start().unwrap();
    a.psql("postgres", &format!("CREATE DATABASE {DATABASE}"))
        .unwrap();
    let name = ApplicationName::new(standby_name).unwrap();
    let b = a.start_standby(a.address(), &name).unwrap();
    a.set_synchronous_standbys(&SynchronousStandbys::one(name.clone()))
        .unwrap();
    a.wait_for_sync_state(&name, SyncState::Sync, WAIT).unwrap();
    (a, b)
}

/// Kills A, promotes B, and starts A again as a primary on its old data directory.
fn fail_over_and_bring_back_the_old_primary(a: &PostgresServer, b: &PostgresServer) {
    a.kill9().unwrap();
    b.promote().unwrap();
    a.resume().unwrap();
    // A still names B as its synchronous standby, so a commit there would wait for ever (and
    // stay invisible). An operator "fixing" that makes A a writer that answers at once: the
    // case the fence must hold against, so the test can fail if it does not.
    a.set_synchronous_standbys(&SynchronousStandbys::None)
        .unwrap();
    assert!(!a.is_in_recovery().unwrap(), "A is back as a primary");
    assert_eq!((timeline(a), timeline(b)), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_primary_back_as_a_primary_gets_no_write() {
    let (a, b) = primary_and_sync_standby("fence_standby");
    let storage = config(&[&a, &b]);
    let store = open_sequencer_store(&storage).await.unwrap();
    register(store.as_ref(), "alice").await.unwrap();
    register(store.as_ref(), "bob").await.unwrap();
    assert_eq!(members(&a), "alice,bob");

    // Failover; writes continue on B.
    a.kill9().unwrap();
    b.promote().unwrap();
    register_retrying(store.as_ref(), "carol").await;
    assert_eq!(members(&b), "alice,bob,carol");

    // A comes back as a primary, writable, on timeline 1.
    a.resume().unwrap();
    a.set_synchronous_standbys(&SynchronousStandbys::None)
        .unwrap();
    assert!(!a.is_in_recovery().unwrap());
    assert_eq!((timeline(&a), timeline(&b)), (1, 2));
    a.psql(
        DATABASE,
        "CREATE TABLE probe_write (x int); DROP TABLE probe_write",
    )
    .expect("A really takes writes");

    // The running store loses its connections to B and searches again: A is listed first and
    // writable, and must still be passed over.
    b.psql(
        "postgres",
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{DATABASE}'"
        ),
    )
    .unwrap();
    tokio::time::sleep(MIN_SEARCH_INTERVAL).await;
    register_retrying(store.as_ref(), "dave").await;
    // A store opened afresh, and the replica lease, settle on B too.
    let fresh = open_sequencer_store(&storage).await.unwrap();
    register(fresh.as_ref(), "erin").await.unwrap();
    let lease = open_lease_store(&storage, "mediator").await.unwrap();
    let epoch = lease
        .try_acquire("m", "http://m", Duration::from_secs(5), Timestamp::now())
        .await
        .unwrap();
    assert!(epoch.is_some(), "a free lease");
    assert_eq!(members(&b), "alice,bob,carol,dave,erin");
    assert_eq!(
        b.psql(DATABASE, "SELECT count(*) FROM replica_lease")
            .unwrap(),
        "1"
    );
    assert_eq!(
        members(&a),
        "alice,bob",
        "nothing written on A after the failover"
    );
    assert_eq!(
        a.psql(DATABASE, "SELECT count(*) FROM replica_lease")
            .unwrap(),
        "0"
    );

    // B goes away: A is the only writable server the stores can reach, and they refuse it,
    // naming why (what a node reports as its not-ready reason).
    b.kill9().unwrap();
    let expected = format!(
        "{} accepts writes but is on timeline 1, behind timeline 2 seen on {}: an old \
         primary that was not rewound; refusing to write to it",
        host(&a),
        host(&b)
    );
    let mut refused = None;
    for _ in 0..20 {
        tokio::time::sleep(MIN_SEARCH_INTERVAL).await;
        match register(store.as_ref(), "frank").await {
            Err(error @ StoreError::NoWriter(_)) => {
                refused = Some(error.to_string());
                break;
            }
            Err(error) => assert!(error.is_transient(), "{error:?}"),
            Ok(()) => panic!("a write was accepted with only the old primary reachable"),
        }
    }
    let refused = refused.expect("the store reports no writer");
    assert!(refused.contains(&expected), "{refused}");
    assert!(
        refused.contains(&format!("{} refused the connection", host(&b))),
        "{refused}"
    );
    // The status a sequencer's readiness reads says the same.
    match store.backend_status().await {
        Err(StoreError::NoWriter(no_writer)) => {
            assert!(no_writer.to_string().contains(&expected), "{no_writer}")
        }
        Ok(status) => assert!(
            status
                .read_only_reason
                .as_deref()
                .is_some_and(|reason| reason.contains(&expected)),
            "{status:?}"
        ),
        Err(other) => panic!("{other:?}"),
    }
    // A store opened afresh in this process remembers timeline 2 as well.
    let error = open_sequencer_store(&storage)
        .await
        .err()
        .expect("no store opens on the old primary");
    assert!(error.to_string().contains(&expected), "{error}");
    let lease_error = lease
        .try_acquire("m", "http://m", Duration::from_secs(5), Timestamp::now())
        .await
        .expect_err("the lease refuses the old primary");
    assert!(
        lease_error.is_transient(),
        "the lease waits for a writer: {lease_error:?}"
    );
    assert_eq!(members(&a), "alice,bob", "still nothing written on A");
    assert_eq!(
        a.psql(DATABASE, "SELECT count(*) FROM replica_lease")
            .unwrap(),
        "0"
    );
}

/// The store calls nothing while A dies, B is promoted and A comes back as a primary: its
/// pooled connections to A are broken, and the pool would quietly reconnect to A — the same
/// address — without any call failing. The new connection finds A restarted, the search
/// prefers B's timeline, and the write lands on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_store_does_not_reconnect_to_the_old_primary() {
    let (a, b) = primary_and_sync_standby("fence_idle_standby");
    let storage = config(&[&a, &b]);
    let store = open_sequencer_store(&storage).await.unwrap();
    register(store.as_ref(), "alice").await.unwrap();
    assert_eq!(members(&a), "alice");

    fail_over_and_bring_back_the_old_primary(&a, &b);
    register_retrying(store.as_ref(), "bob").await;
    assert_eq!(members(&b), "alice,bob");
    assert_eq!(
        members(&a),
        "alice",
        "nothing written on A after the failover"
    );
    let seen = store.members().await.unwrap();
    assert_eq!(seen.len(), 2, "reads moved to B as well: {seen:?}");
}
