//! Stores on a multi-host PostgreSQL URL follow the writer (issue 10, item 3): two real servers
//! stand in for a primary and its standby — the one not writing is made read-only
//! (`default_transaction_read_only`), and a failover copies the database over before the new
//! writer becomes writable (`meridian_testkit::failover`). The stores must settle on the
//! writable server whatever its place in the list, move to the other one after a read-only
//! refusal without being reopened, keep the replica lease's fencing intact across the move,
//! name every host and why when none takes writes, and refuse bad URLs with a clear error.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_core::crypto::SigningKey;
use meridian_core::{MemberId, Timestamp};
use meridian_store::follow::{MIN_SEARCH_INTERVAL, POSTGRES_ACQUIRE_TIMEOUT};
use meridian_store::{
    open_lease_store, open_mediator_store, open_participant_store, open_sequencer_store, Epoch,
    SequencerStore, StorageConfig, StoreError,
};
use meridian_testkit::failover::{copy_database, set_read_only};
use meridian_testkit::{ApplicationName, PostgresServer, SyncState, SynchronousStandbys};

/// Both servers' database, under the same name as replication would have it.
const DATABASE: &str = "follow";

fn t(micros: u64) -> Timestamp {
    Timestamp::from_micros(micros)
}

/// Two servers with an empty `follow` database each, the first read-only.
fn two_servers() -> (PostgresServer, PostgresServer) {
    let first = PostgresServer::start().unwrap();
    let second = PostgresServer::start().unwrap();
    for server in [&first, &second] {
        server
            .psql("postgres", &format!("CREATE DATABASE {DATABASE}"))
            .unwrap();
    }
    set_read_only(&first, true).unwrap();
    (first, second)
}

fn url_of(servers: &[&PostgresServer], parameters: &str) -> String {
    let hosts: Vec<String> = servers
        .iter()
        .map(|server| format!("127.0.0.1:{}", server.port()))
        .collect();
    format!(
        "postgres://meridian@{}/{DATABASE}?target_session_attrs=read-write{parameters}",
        hosts.join(",")
    )
}

fn config(url: &str) -> StorageConfig {
    StorageConfig::Postgres {
        url: url.to_owned(),
        max_connections: 2,
    }
}

/// What `sql` answers on `server`'s copy of the database ("" if the table is missing there).
fn query(server: &PostgresServer, sql: &str) -> String {
    server.psql(DATABASE, sql).unwrap_or_default()
}

async fn register(store: &dyn SequencerStore, name: &str) -> Result<(), StoreError> {
    let key = SigningKey::generate().public_key();
    store
        .register_member(&MemberId::new(name).unwrap(), &key, t(1))
        .await
        .map(|_| ())
}

/// Runs `call` until it gives a definite answer (success or an error no retry changes), as a
/// node's retry loop does; every failure before that must be transient.
async fn until_definite<T, F, Fut>(what: &str, mut call: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    for attempt in 0..40 {
        match call().await {
            Err(error) if error.is_transient() => {
                eprintln!("{what}: attempt {attempt}: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            definite => return definite,
        }
    }
    panic!("{what}: still failing after 40 attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_writes_on_the_writer_and_follows_it_to_the_other_host() {
    let (first, second) = two_servers();
    let url = url_of(&[&first, &second], "");
    let store = open_sequencer_store(&config(&url)).await.unwrap();

    // The read-only server is listed first; the store writes on the second.
    register(store.as_ref(), "alice").await.unwrap();
    assert_eq!(query(&second, "SELECT count(*) FROM members"), "1");
    assert_eq!(
        query(&first, "SELECT to_regclass('members') IS NULL"),
        "t",
        "nothing reached the read-only server, not even the schema"
    );

    // The roles swap: the second server refuses writes, the first takes them.
    set_read_only(&first, false).unwrap();
    set_read_only(&second, true).unwrap();
    // The search before the next call is due (at most one per interval).
    tokio::time::sleep(MIN_SEARCH_INTERVAL).await;
    let refused = register(store.as_ref(), "bob").await;
    assert!(
        matches!(refused, Err(StoreError::ReadOnly)),
        "the pooled connection meets the read-only server once: {refused:?}"
    );
    assert!(refused.unwrap_err().is_transient());
    // The retry, on the same store object, lands on the new writer (migrated by the search).
    register(store.as_ref(), "bob").await.unwrap();
    assert_eq!(query(&first, "SELECT id FROM members"), "bob");
    assert_eq!(query(&second, "SELECT count(*) FROM members"), "1");
    // Reads follow too.
    let members = store.members().await.unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0].id.as_str(), "bob");
    assert!(!store.backend_status().await.unwrap().read_only);
}

/// A database failover between the lease's checks: the active replica that re-takes the lock
/// on the new writer first keeps its epoch; a passive that takes it first bumps the epoch, and
/// the old active's writes on the new writer are then refused by the fencing check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_follows_the_writer_and_fencing_still_holds() {
    const NODE: &str = "mediator";
    const LEASE_TIMEOUT: Duration = Duration::from_secs(5);
    let (first, second) = two_servers();
    let storage = config(&url_of(&[&first, &second], ""));
    let mediator = open_mediator_store(&storage).await.unwrap();
    let active = open_lease_store(&storage, NODE).await.unwrap();
    let passive = open_lease_store(&storage, NODE).await.unwrap();
    let epoch = active
        .try_acquire("a", "http://a", LEASE_TIMEOUT, Timestamp::now())
        .await
        .unwrap()
        .expect("a free lease");
    assert_eq!(epoch, Epoch(1));
    mediator.fence().activate(NODE, epoch);
    mediator.apply(&[], t(10)).await.unwrap();
    assert_eq!(query(&second, "SELECT ts FROM mediator_checkpoint"), "10");

    // Failover to the first server, everything replicated; the active renews first.
    set_read_only(&second, true).unwrap();
    copy_database(&second, &first, DATABASE).unwrap();
    set_read_only(&first, false).unwrap();
    tokio::time::sleep(MIN_SEARCH_INTERVAL).await;
    until_definite("renewing", || active.renew("a", epoch, Timestamp::now()))
        .await
        .expect("the active keeps its epoch on the promoted server");
    assert_eq!(
        query(
            &first,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        ),
        "1",
        "the active holds the lock on the new writer"
    );
    let taken = until_definite("polling", || {
        passive.try_acquire("b", "http://b", Duration::MAX, Timestamp::now())
    })
    .await
    .unwrap();
    assert_eq!(taken, None, "the lease is held");
    until_definite("writing", || mediator.apply(&[], t(20)))
        .await
        .expect("the active writes on the new writer");
    assert_eq!(query(&first, "SELECT ts FROM mediator_checkpoint"), "20");

    // Failover back, the old writer's sessions all ended (as a demotion ends them); this time
    // the passive reaches the new writer first.
    set_read_only(&first, true).unwrap();
    copy_database(&first, &second, DATABASE).unwrap();
    first
        .psql(
            "postgres",
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = '{DATABASE}'"
            ),
        )
        .unwrap();
    set_read_only(&second, false).unwrap();
    tokio::time::sleep(MIN_SEARCH_INTERVAL).await;
    let mut deposed_by = None;
    for _ in 0..20 {
        match passive
            .try_acquire("b", "http://b", Duration::MAX, Timestamp::now())
            .await
        {
            Ok(Some(epoch)) => {
                deposed_by = Some(epoch);
                break;
            }
            Ok(None) => {}
            Err(error) => assert!(error.is_transient(), "{error:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        deposed_by,
        Some(Epoch(2)),
        "the passive takes the free lock there"
    );
    let refused = until_definite("writing as the deposed active", || {
        mediator.apply(&[], t(30))
    })
    .await;
    assert!(
        matches!(refused, Err(StoreError::LeaseLost { epoch: 1, .. })),
        "the fencing check refuses the old epoch on the new writer: {refused:?}"
    );
    let renewed = until_definite("renewing as the deposed active", || {
        active.renew("a", epoch, Timestamp::now())
    })
    .await;
    assert!(
        matches!(renewed, Err(StoreError::LeaseLost { .. })),
        "{renewed:?}"
    );
    assert_eq!(query(&second, "SELECT ts FROM mediator_checkpoint"), "20");
    assert_eq!(query(&second, "SELECT epoch FROM replica_lease"), "2");
}

/// With real streaming replication: the standby, listed first, is passed over as a standby;
/// the primary is killed (kill -9, as a lost machine) and its synchronous standby promoted, and
/// the same store then writes on the promoted server, which has everything it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_follows_a_real_promotion() {
    const WAIT: Duration = Duration::from_secs(30);
    let primary = PostgresServer::start().unwrap();
    primary
        .psql("postgres", &format!("CREATE DATABASE {DATABASE}"))
        .unwrap();
    let name = ApplicationName::new("follow_standby").unwrap();
    let standby = primary.start_standby(primary.address(), &name).unwrap();
    primary
        .set_synchronous_standbys(&SynchronousStandbys::one(name.clone()))
        .unwrap();
    primary
        .wait_for_sync_state(&name, SyncState::Sync, WAIT)
        .unwrap();
    let (standby_host, primary_host) = (
        format!("127.0.0.1:{}", standby.port()),
        format!("127.0.0.1:{}", primary.port()),
    );

    // Only the standby: a store that must write does not open, and says why.
    let error = open_participant_store(&config(&url_of(&[&standby], "")))
        .await
        .err()
        .expect("a standby takes no writes");
    assert!(
        error.to_string().contains(&format!(
            "the database is a standby (in recovery) at {standby_host}"
        )),
        "{error}"
    );

    let store = open_sequencer_store(&config(&url_of(&[&standby, &primary], "")))
        .await
        .unwrap();
    register(store.as_ref(), "alice").await.unwrap();
    register(store.as_ref(), "bob").await.unwrap();

    primary.kill9().unwrap();
    tokio::time::sleep(MIN_SEARCH_INTERVAL).await;
    // The write meets the dead primary; the search finds no writer and names both.
    let mut reported = None;
    for _ in 0..3 {
        match register(store.as_ref(), "carol").await {
            Err(error @ StoreError::NoWriter(_)) => {
                reported = Some(error.to_string());
                break;
            }
            Err(error) => assert!(error.is_transient(), "{error:?}"),
            Ok(()) => panic!("nothing takes writes"),
        }
        tokio::time::sleep(MIN_SEARCH_INTERVAL).await;
    }
    let reported = reported.expect("no writer reported");
    assert!(
        reported.contains(&format!(
            "the database is a standby (in recovery) at {standby_host}"
        )) && reported.contains(&format!("{primary_host} refused the connection")),
        "{reported}"
    );

    standby.promote().unwrap();
    until_definite("registering after the promotion", || {
        register(store.as_ref(), "carol")
    })
    .await
    .unwrap();
    assert_eq!(
        standby
            .psql(
                DATABASE,
                "SELECT string_agg(id, ',' ORDER BY seq) FROM members"
            )
            .unwrap(),
        "alice,bob,carol",
        "everything acknowledged before the kill, and the write after, on the promoted server"
    );
}

/// A listener that accepts connections and never answers: a host that is up but stuck.
async fn silent_host() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_writer_the_error_names_every_host_and_why() {
    let refusing = meridian_testkit::free_port();
    let (silent, _listener) = silent_host().await;
    let url = format!(
        "postgres://meridian@127.0.0.1:{refusing},127.0.0.1:{silent}/nowhere\
         ?target_session_attrs=read-write&connect_timeout=1"
    );
    let started = Instant::now();
    let error = open_sequencer_store(&config(&url))
        .await
        .err()
        .expect("nothing to open on");
    let took = started.elapsed();
    let message = error.to_string();
    eprintln!("{message} (after {took:?})");
    assert!(matches!(error, StoreError::NoWriter(_)), "{error:?}");
    assert!(error.is_transient(), "a node waits for its database");
    assert!(
        message.contains(&format!("127.0.0.1:{refusing} refused the connection")),
        "{message}"
    );
    assert!(
        message.contains(&format!("127.0.0.1:{silent} did not answer within 1000 ms")),
        "{message}"
    );
    assert!(took < Duration::from_secs(5), "bounded per host: {took:?}");

    // A reachable server that is read-only is named as such; a store that must migrate does
    // not open on it.
    let read_only = PostgresServer::start().unwrap();
    read_only
        .psql("postgres", "CREATE DATABASE nowhere")
        .unwrap();
    // With the schema, as a standby of a primary would have it.
    open_sequencer_store(&config(&read_only.url("nowhere")))
        .await
        .unwrap();
    set_read_only(&read_only, true).unwrap();
    let url = format!(
        "postgres://meridian@127.0.0.1:{refusing},127.0.0.1:{}/nowhere?connect_timeout=1",
        read_only.port()
    );
    let error = open_participant_store(&config(&url))
        .await
        .err()
        .expect("no writer");
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "the database is read-only (default_transaction_read_only) at 127.0.0.1:{}",
            read_only.port()
        )) && message.contains(&format!("127.0.0.1:{refusing} refused")),
        "{message}"
    );
    // The sequencer's store opens there anyway, to report why it must not serve.
    let store = open_sequencer_store(&config(&url)).await.unwrap();
    let status = store.backend_status().await.unwrap();
    assert!(status.read_only);
    assert_eq!(status.read_only_reason.as_deref(), Some(message.as_str()));
    let write = register(store.as_ref(), "zed").await;
    assert!(
        matches!(&write, Err(StoreError::NoWriter(_))),
        "a refused write names the hosts: {write:?}"
    );

    // `target_session_attrs=any` settles on the first server that answers, whatever it is:
    // that is the operator's choice, so there is nothing to report but the refusal itself.
    let any = format!(
        "postgres://meridian@127.0.0.1:{refusing},127.0.0.1:{}/nowhere\
         ?target_session_attrs=any&connect_timeout=1",
        read_only.port()
    );
    let refused = open_participant_store(&config(&any))
        .await
        .err()
        .expect("its first write is refused");
    assert!(matches!(refused, StoreError::ReadOnly), "{refused:?}");
    let store = open_sequencer_store(&config(&any)).await.unwrap();
    let write = register(store.as_ref(), "zed").await;
    assert!(matches!(write, Err(StoreError::ReadOnly)), "{write:?}");
}

#[tokio::test]
async fn bad_urls_are_refused_with_a_clear_error() {
    for (url, needle) in [
        ("postgres://meridian@/db", "names no host"),
        ("postgres://meridian@127.0.0.1:5432,/db", "entry 2"),
        (
            "postgres://meridian@127.0.0.1:port/db",
            "port of host 127.0.0.1",
        ),
        (
            "postgres://meridian@127.0.0.1:5432,127.0.0.1:5433/db?target_session_attrs=standby",
            "target_session_attrs=standby",
        ),
    ] {
        let storage = config(url);
        let error = open_sequencer_store(&storage).await.err().expect(url);
        assert!(matches!(error, StoreError::BadUrl(_)), "{url}: {error:?}");
        assert!(!error.is_transient(), "{url}: retrying cannot mend a URL");
        assert!(error.to_string().contains(needle), "{url}: {error}");
        let lease = open_lease_store(&storage, "n").await.err().expect(url);
        assert!(lease.to_string().contains(needle), "{url}: {lease}");
    }
}

/// The stores a node opens share nothing: each finds the writer on its own, so one opened
/// before a failover and one after end up on the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_opened_apart_agree_on_the_writer() {
    let (first, second) = two_servers();
    let url = url_of(&[&first, &second], "&connect_timeout=2");
    let before: Arc<dyn SequencerStore> = open_sequencer_store(&config(&url)).await.unwrap();
    register(before.as_ref(), "alice").await.unwrap();
    set_read_only(&second, true).unwrap();
    copy_database(&second, &first, DATABASE).unwrap();
    set_read_only(&first, false).unwrap();
    let after = open_sequencer_store(&config(&url)).await.unwrap();
    register(after.as_ref(), "bob").await.unwrap();
    tokio::time::sleep(MIN_SEARCH_INTERVAL).await;
    until_definite("registering", || register(before.as_ref(), "carol"))
        .await
        .unwrap();
    assert_eq!(
        query(
            &first,
            "SELECT string_agg(id, ',' ORDER BY seq) FROM members"
        ),
        "alice,bob,carol"
    );
}

/// After a kill -9 of the server, sqlx would retry the refused connection until the pool's
/// acquire timeout; the store instead notices the server is gone while the call waits, so the
/// call fails (and the search for a writer starts) well before that timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_a_killed_server_does_not_wait_out_the_pool() {
    let server = PostgresServer::start().unwrap();
    server
        .psql("postgres", &format!("CREATE DATABASE {DATABASE}"))
        .unwrap();
    let store = open_sequencer_store(&config(&url_of(&[&server], "")))
        .await
        .unwrap();
    register(store.as_ref(), "alice").await.unwrap();

    server.kill9().unwrap();
    let started = Instant::now();
    let error = register(store.as_ref(), "bob")
        .await
        .expect_err("the only server is gone");
    let waited = started.elapsed();
    assert!(error.is_transient(), "{error:?}");
    assert!(
        waited < POSTGRES_ACQUIRE_TIMEOUT,
        "the call waited {waited:?}, the pool's whole acquire timeout: {error}"
    );
    assert!(
        error.to_string().contains("refused the connection"),
        "{error}"
    );
}
