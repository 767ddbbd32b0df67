//! A node follows its database's writer without a restart (issue 10, item 3): a real
//! `meridian sequencer` process on a two-host URL whose writable server is listed second,
//! under a continuous send load, through a database failover played on two plain PostgreSQL
//! servers (`meridian_testkit::failover`): the writer is made read-only, waited on until no
//! transaction can still commit there, its database copied to the other server (what
//! synchronous replication would have done), and the other server made writable (the
//! promotion). In between, no server takes writes: the sequencer must report not ready naming
//! both hosts and why, then serve again by itself, in the same process, and every
//! acknowledged send must be delivered, once, at its timestamp.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::Path;

use std::time::{Duration, Instant};

use meridian_client::{register_member, SequencerClient, SequencerClientConfig};
use meridian_core::crypto::SigningKey;
use meridian_core::sequencing::{Envelope, Submission};
use meridian_core::{MemberId, MessageId, Timestamp};
use meridian_lab::launch::SequencerProcess;
use meridian_store::StorageConfig;
use meridian_testkit::failover::{
    copy_database, drop_database, set_read_only, wait_for_writes_to_end,
};
use meridian_testkit::{ApplicationName, PostgresServer, SyncState, SynchronousStandbys};

mod common;
use common::{DeliveryRecorder, SendLoad, EXE};

const DATABASE: &str = "sequencer";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The sequencer must serve again this soon after the new writer accepts writes. It searches
/// for the writer at most every 200 ms, its heartbeat writes every 50 ms and its backend check
/// runs every second, so about a second is expected; the bound leaves room for a loaded
/// two-core machine. The real figures are printed.
const BACK_IN_SERVICE_BOUND: Duration = Duration::from_secs(10);

fn submission(message: &str) -> Submission {
    Submission {
        sender: MemberId::new("alice").unwrap(),
        message_id: MessageId::new(message).unwrap(),
        envelopes: vec![Envelope {
            recipients: [MemberId::new("bob").unwrap()].into(),
            payload: message.as_bytes().to_vec(),
        }],
        max_sequencing_time: Timestamp::now().saturating_add(Duration::from_secs(120)),
    }
}

async fn member(endpoint: &str, name: &str) -> SequencerClient {
    let id = MemberId::new(name).unwrap();
    let key = SigningKey::generate();
    assert!(register_member(endpoint, &id, &key.public_key())
        .await
        .unwrap());
    SequencerClient::connect(SequencerClientConfig::new(endpoint.to_owned(), id, key))
        .await
        .unwrap()
}

/// `127.0.0.1:<port>` of `server`, as the storage URL and the not-ready reasons name it.
fn host_of(server: &PostgresServer) -> String {
    format!("127.0.0.1:{}", server.port())
}

/// A sequencer process whose storage URL lists `first` then `second` (writes go to whichever
/// takes them), started and ready; keep the directory for as long as it runs.
async fn ready_sequencer_on(
    first: &PostgresServer,
    second: &PostgresServer,
) -> (SequencerProcess, tempfile::TempDir) {
    let storage = StorageConfig::Postgres {
        url: format!(
            "postgres://meridian@{},{}/{DATABASE}\
             ?target_session_attrs=read-write&connect_timeout=2",
            host_of(first),
            host_of(second)
        ),
        max_connections: meridian_lab::deployment::configs::POSTGRES_POOL_CONNECTIONS,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut sequencer =
        SequencerProcess::spawn(Path::new(EXE), dir.path(), "sequencer", &storage, |_| {}).unwrap();
    sequencer.wait_ready(READY_TIMEOUT).await.unwrap();
    (sequencer, dir)
}
/// `/readyz`: whether ready, and the reason when not.
async fn readyz(http: &reqwest::Client, sequencer: &SequencerProcess) -> Option<(bool, String)> {
    let response = http
        .get(format!(
            "{}/readyz",
            meridian_lab::tls::url(sequencer.admin_address)
        ))
        .send()
        .await
        .ok()?;
    let ready = response.status().is_success();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    Some((ready, body["reason"].as_str().unwrap_or("").to_owned()))
}

/// Polls `/readyz` until `done` accepts an answer; returns it and when it came.
async fn wait_for_readyz(
    http: &reqwest::Client,
    sequencer: &SequencerProcess,
    what: &str,
    done: impl Fn(bool, &str) -> bool,
) -> (String, Instant) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    loop {
        if let Some((ready, reason)) = readyz(http, sequencer).await {
            if done(ready, &reason) {
                return (reason, Instant::now());
            }
            last = Some((ready, reason));
        }
        assert!(
            Instant::now() < deadline,
            "never {what}; last /readyz: {last:?}\n{}",
            sequencer.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequencer_follows_the_writer_without_a_restart() {
    // `first` plays the standby at first, `second` the primary.
    let first = PostgresServer::start().unwrap();
    let second = PostgresServer::start().unwrap();
    for server in [&first, &second] {
        server
            .psql("postgres", &format!("CREATE DATABASE {DATABASE}"))
            .unwrap();
    }
    set_read_only(&first, true).unwrap();
    let (first_host, second_host) = (host_of(&first), host_of(&second));
    let (mut sequencer, _dir) = ready_sequencer_on(&first, &second).await;
    let pid = sequencer.pid();
    assert_eq!(
        second
            .psql(DATABASE, "SELECT count(*) FROM sequencer_instances")
            .unwrap(),
        "1",
        "the sequencer runs on the writable server, listed second"
    );
    assert_eq!(
        first
            .psql(
                DATABASE,
                "SELECT to_regclass('sequencer_instances') IS NULL"
            )
            .unwrap(),
        "t",
        "and wrote nothing on the read-only one"
    );

    let endpoint = sequencer.grpc_endpoint();
    let alice = member(&endpoint, "alice").await;
    let bob = member(&endpoint, "bob").await;
    let recorder = DeliveryRecorder::start(&bob);
    let load = SendLoad::start(
        &alice,
        4,
        submission,
        Duration::from_secs(60),
        Duration::from_millis(50),
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        load.acked_count() > 0,
        "sends are acknowledged before the failover"
    );
    let http = meridian_lab::tls::http_builder()
        .unwrap()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();

    // The failover. The standby's copy is rebuilt from the primary's below; until then it has
    // no database of that name, so nothing can use a stale one.
    drop_database(&first, DATABASE).unwrap();
    set_read_only(&second, true).unwrap();
    wait_for_writes_to_end(&second, DATABASE, Duration::from_secs(10)).unwrap();
    let acked_at_demotion = load.acked_count();
    copy_database(&second, &first, DATABASE).unwrap();
    // No server takes writes now: not ready, naming both and what they are.
    let (reason, _) = wait_for_readyz(
        &http,
        &sequencer,
        "not ready naming both hosts",
        |ready, reason| {
            !ready
                && reason.contains(&format!(
                    "the database is read-only (default_transaction_read_only) at {first_host}"
                ))
                && reason.contains(&format!(
                    "the database is read-only (default_transaction_read_only) at {second_host}"
                ))
        },
    )
    .await;
    eprintln!("not ready while no server takes writes: {reason}");
    assert!(sequencer.is_running(), "{}", sequencer.log_tail(30));

    // The promotion. Service is back with the first send acknowledged after it (the lanes
    // retry every 50 ms); `/readyz` follows within `timing.backend_check_ms` (1 s), when the
    // backend check next finds a writer.
    let acked_at_promotion = load.acked_count();
    set_read_only(&first, false).unwrap();
    let promoted_at = Instant::now();
    let mut first_ack = None;
    while first_ack.is_none() && promoted_at.elapsed() < BACK_IN_SERVICE_BOUND {
        if load.acked_count() > acked_at_promotion {
            first_ack = Some(promoted_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first_ack = first_ack.expect("a send acknowledged after the promotion");
    let (_, ready_at) = wait_for_readyz(&http, &sequencer, "ready again", |ready, _| ready).await;
    let took = ready_at - promoted_at;
    eprintln!(
        "after the new writer accepted writes: first send acknowledged {:.3} s, ready again \
         {:.3} s",
        first_ack.as_secs_f64(),
        took.as_secs_f64()
    );
    assert!(took < BACK_IN_SERVICE_BOUND, "back only after {took:?}");
    assert_eq!(sequencer.pid(), pid, "the same process: no restart");

    // Sends go on, on the new writer.
    let resumed = Instant::now();
    while load.acked_count() <= acked_at_demotion + 20 {
        assert!(
            resumed.elapsed() < Duration::from_secs(20),
            "sends stay stuck after the failover\n{}",
            sequencer.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (acked, _) = load.stop().await;
    // Nothing acknowledged is lost, nothing is delivered twice, the history is in order.
    recorder.assert_delivered_exactly(&acked).await;
    // All of it is on the new writer; the old one kept what it had at the demotion.
    let on_first: usize = first
        .psql(DATABASE, "SELECT count(*) FROM events")
        .unwrap()
        .parse()
        .unwrap();
    let on_second: usize = second
        .psql(DATABASE, "SELECT count(*) FROM events")
        .unwrap()
        .parse()
        .unwrap();
    eprintln!(
        "{} sends acknowledged ({acked_at_demotion} before the demotion); events: {on_first} \
         on the new writer, {on_second} on the old one",
        acked.len()
    );
    assert_eq!(on_first, acked.len());
    assert!(on_second < on_first);
    assert!(sequencer.is_running());
}

/// What `server`'s copy of the sequencer database holds: the events' count and a digest of
/// the instance rows (any heartbeat changes the watermark) and the members.
fn database_state(server: &PostgresServer) -> String {
    server
        .psql(
            DATABASE,
            "SELECT (SELECT count(*) FROM events) || ' ' || \
                    (SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM sequencer_instances t) || ' ' || \
                    (SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM members t)",
        )
        .unwrap()
}

/// No second writer (issue 10, item 4), as a process: a sequencer on primary A and its
/// synchronous standby B (URL A,B) under a send load; kill -9 of A, `pg_ctl promote` of B,
/// sends go on; A is started again as a primary on its old data directory (timeline 1). The
/// sequencer, losing its connections to B, searches again and stays on B; once B is gone too
/// it is not ready, saying why A is refused; A's database never changes after the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequencer_never_writes_on_an_old_primary_back_as_a_primary() {
    let a = PostgresServer::start().unwrap();
    a.psql("postgres", &format!("CREATE DATABASE {DATABASE}"))
        .unwrap();
    let name = ApplicationName::new("fence_sequencer_standby").unwrap();
    let b = a.start_standby(a.address(), &name).unwrap();
    a.set_synchronous_standbys(&SynchronousStandbys::one(name.clone()))
        .unwrap();
    a.wait_for_sync_state(&name, SyncState::Sync, READY_TIMEOUT)
        .unwrap();
    let (a_host, b_host) = (host_of(&a), host_of(&b));
    let (mut sequencer, _dir) = ready_sequencer_on(&a, &b).await;
    let alice = member(&sequencer.grpc_endpoint(), "alice").await;
    // The recipient of every send.
    let _bob = member(&sequencer.grpc_endpoint(), "bob").await;
    let load = SendLoad::start(
        &alice,
        4,
        submission,
        Duration::from_secs(90),
        Duration::from_millis(50),
    );
    let acked_more_than = |count: usize, what: &str| {
        let started = Instant::now();
        let what = what.to_owned();
        let load = &load;
        let sequencer = &sequencer;
        async move {
            while load.acked_count() <= count {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "sends stay stuck {what}\n{}",
                    sequencer.log_tail(30)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    acked_more_than(10, "before the failover").await;

    a.kill9().unwrap();
    b.promote().unwrap();
    acked_more_than(load.acked_count() + 10, "after the promotion").await;

    // A back as a primary, answering commits at once (its synchronous standby is gone).
    a.resume().unwrap();
    a.set_synchronous_standbys(&SynchronousStandbys::None)
        .unwrap();
    assert!(!a.is_in_recovery().unwrap());
    let on_a = database_state(&a);
    // The sequencer's sessions on B end: it searches the hosts again, A listed first.
    b.psql(
        "postgres",
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{DATABASE}'"
        ),
    )
    .unwrap();
    acked_more_than(load.acked_count() + 10, "after B's sessions ended").await;

    // The load stops (its lanes give up on a sequencer that stays unavailable); the
    // sequencer's own heartbeat keeps writing. B is lost too: A is the only writable server.
    let (acked, _) = load.stop().await;
    b.kill9().unwrap();
    let http = meridian_lab::tls::http_builder()
        .unwrap()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let expected =
        format!("{a_host} accepts writes but is on timeline 1, behind timeline 2 seen on {b_host}");
    let (reason, _) = wait_for_readyz(
        &http,
        &sequencer,
        "not ready naming the old primary",
        |ready, reason| !ready && reason.contains(&expected),
    )
    .await;
    eprintln!("not ready with only the old primary: {reason}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        database_state(&a),
        on_a,
        "nothing written on the old primary after the failover ({} sends acknowledged)\n{}",
        acked.len(),
        sequencer.log_tail(40)
    );
    assert!(sequencer.is_running(), "{}", sequencer.log_tail(30));
}

/// A storage URL the node could not use is refused when the config is read: the process exits
/// at once naming the file, the key and the bad part of the URL, never the password.
#[test]
fn a_bad_storage_url_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sequencer.toml");
    for (url, needle) in [
        ("postgres://meridian:secret@/sequencer", "names no host"),
        (
            "postgres://meridian:secret@127.0.0.1:5432,/sequencer",
            "entry 2 of the PostgreSQL URL's host list is empty",
        ),
        (
            "postgres://meridian:secret@127.0.0.1:5432,127.0.0.1:54x2/sequencer",
            "the port of host 127.0.0.1 in the PostgreSQL URL is \"54x2\"",
        ),
        (
            "postgres://meridian:secret@127.0.0.1:5432,127.0.0.1:5433/sequencer?target_session_attrs=read-only",
            "target_session_attrs=read-only in the PostgreSQL URL is not supported",
        ),
    ] {
        std::fs::write(
            &config,
            format!(
                "listen_address = \"127.0.0.1:1\"\nadmin_address = \"127.0.0.1:2\"\n\
                 [storage]\nbackend = \"postgres\"\nurl = \"{url}\"\n"
            ),
        )
        .unwrap();
        let started = Instant::now();
        let output = std::process::Command::new(EXE)
            .args(["sequencer", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{url}: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refused at once, not retried"
        );
        assert!(stderr.contains(needle), "{url}: {stderr}");
        assert!(stderr.contains("sequencer.toml"), "{url}: {stderr}");
        assert!(stderr.contains("storage"), "{url}: {stderr}");
        assert!(!stderr.contains("secret"), "{url}: the password leaked: {stderr}");
    }
}
