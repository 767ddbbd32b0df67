//! Black-box test of a sequencer instance whose clock is wrong: two `meridian sequencer`
//! processes on one database (SQLite, then PostgreSQL), one of them started under the
//! `clockshift` shim so its wall clock can be moved while it runs. Shifted 2 s ahead, it must
//! report itself not ready naming the skew and the bound, must not fence its healthy peer, and
//! the healthy one must keep sequencing and delivering; shifted back, it must be ready again.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use meridian_client::{register_member, SequencerClient, SequencerClientConfig};
use meridian_core::crypto::SigningKey;
use meridian_core::sequencing::{Envelope, Submission};
use meridian_core::{MemberId, MessageId, Timestamp};
use meridian_lab::clockshift::ClockShift;
use meridian_lab::deployment::configs::POSTGRES_POOL_CONNECTIONS;
use meridian_lab::launch::{NodeProcess, SequencerProcess};
use meridian_sequencer::config::InstanceConfig;
use meridian_sequencer::SequencerConfig;
use meridian_store::StorageConfig;
use meridian_testkit::PostgresServer;
use tonic_health::pb::health_check_response::ServingStatus;

mod common;
use common::EXE;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The shift of the fast instance: well beyond the default bound of 250 ms.
const SHIFT_MS: i64 = 2_000;
/// How long the test keeps the clock shifted while it sends through the healthy instance.
const SKEWED_FOR: Duration = Duration::from_secs(3);
/// The comparison runs every second and the shim follows its file within 100 ms.
const NOTICE_BOUND: Duration = Duration::from_secs(5);
/// A send through the healthy instance, and its delivery, take milliseconds.
const SEND_BOUND: Duration = Duration::from_secs(2);

fn id(name: &str) -> MemberId {
    MemberId::new(name).unwrap()
}

/// The skewed instance is alive and keeps its presence lock, so its peers find it only by its
/// watermark's age: `offline_after_ms` 500 ms (the default, 2 s, is longer than this test's
/// bound on a send's delivery) keeps the test about the skew, not about that default.
const OFFLINE_AFTER_MS: u64 = 500;

fn instance(index: u32) -> impl FnOnce(&mut SequencerConfig) {
    move |config| {
        config.instance = InstanceConfig::new(index, 2);
        config.timing.offline_after_ms = OFFLINE_AFTER_MS;
    }
}

/// `/readyz`: (HTTP status, reason or "").
async fn readiness(process: &NodeProcess) -> (u16, String) {
    let response = common::admin_get(
        &meridian_lab::tls::http().unwrap(),
        process.admin_address,
        "readyz",
    )
    .await;
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    (status, body["reason"].as_str().unwrap_or("").to_owned())
}

/// The gRPC health of the whole server (`service = ""`).
async fn grpc_health(process: &NodeProcess) -> i32 {
    let channel = common::endpoint(process.grpc_endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

async fn status(process: &NodeProcess) -> serde_json::Value {
    common::admin_status(&meridian_lab::tls::http().unwrap(), process.admin_address).await
}

/// Polls `/readyz` until `wanted` holds for (status, reason), failing after `within`.
async fn wait_readiness(
    process: &NodeProcess,
    within: Duration,
    what: &str,
    wanted: impl Fn(u16, &str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (code, reason) = readiness(process).await;
        if wanted(code, &reason) {
            return reason;
        }
        assert!(
            Instant::now() < deadline,
            "{}: not {what} within {within:?} (last /readyz {code}: {reason}); log tail:\n{}",
            process.name(),
            process.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn submission(message_id: &str) -> Submission {
    Submission {
        sender: id("alice"),
        message_id: MessageId::new(message_id).unwrap(),
        envelopes: vec![Envelope {
            recipients: vec![id("bob")],
            payload: message_id.as_bytes().to_vec(),
        }],
        max_sequencing_time: Timestamp::now().saturating_add(Duration::from_secs(30)),
    }
}

async fn client(name: &str, key: &SigningKey, endpoint: String) -> SequencerClient {
    let config = SequencerClientConfig {
        request_timeout: SEND_BOUND,
        ..SequencerClientConfig::new(endpoint, id(name), key.clone())
    };
    SequencerClient::connect(config).await.unwrap()
}

async fn clock_skew_is_refused_without_fencing_the_peer(storage: StorageConfig, dir: &Path) {
    let mut healthy =
        SequencerProcess::spawn(Path::new(EXE), dir, "sequencer0", &storage, instance(0)).unwrap();
    healthy.wait_ready(READY_TIMEOUT).await.unwrap();
    let shift = ClockShift::new(&dir.join("clockshift"), "sequencer1").unwrap();
    let mut shifted = NodeProcess::sequencer(dir, "sequencer1", &storage, instance(1)).unwrap();
    shift.apply(&mut shifted);
    shifted.start(Path::new(EXE)).unwrap();
    shifted.wait_ready(READY_TIMEOUT).await.unwrap();

    let alice = SigningKey::generate();
    let bob = SigningKey::generate();
    for (name, key) in [("alice", &alice), ("bob", &bob)] {
        assert!(
            register_member(&healthy.grpc_endpoint(), &id(name), &key.public_key())
                .await
                .unwrap()
        );
    }
    let sender = client("alice", &alice, healthy.grpc_endpoint()).await;
    let receiver = client("bob", &bob, healthy.grpc_endpoint()).await;
    let mut deliveries = receiver.subscribe(None);
    let healthy_incarnation = status(&healthy).await["incarnation"].clone();

    shift.set_offset_ms(SHIFT_MS).unwrap();
    let shifted_at = Instant::now();
    let reason = wait_readiness(
        &shifted,
        NOTICE_BOUND,
        "refusing for its clock",
        |code, r| code == 503 && r.contains("ms ahead of"),
    )
    .await;
    eprintln!(
        "refused {:?} after the shift: {reason}",
        shifted_at.elapsed()
    );
    assert!(reason.contains("max_clock_skew_ms = 250"), "{reason}");
    let skew_ms: i64 = reason
        .split("clock is ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("the reason names the skew: {reason}"));
    assert!(
        (SHIFT_MS - 300..=SHIFT_MS + 300).contains(&skew_ms),
        "measured {skew_ms} ms for a shift of {SHIFT_MS} ms"
    );
    assert_eq!(
        grpc_health(&shifted).await,
        ServingStatus::NotServing as i32,
        "gRPC health follows /readyz"
    );

    // While the clock is off, the healthy instance sequences and delivers every send.
    let mut sent = 0;
    while shifted_at.elapsed() < SKEWED_FOR {
        sent += 1;
        let message = format!("during-skew-{sent}");
        let started = Instant::now();
        let receipt = sender.send(submission(&message)).await.unwrap();
        let event = tokio::time::timeout(SEND_BOUND, deliveries.next())
            .await
            .unwrap_or_else(|_| panic!("{message} not delivered within {SEND_BOUND:?}"))
            .unwrap()
            .unwrap();
        assert_eq!(event.timestamp, receipt.timestamp);
        assert_eq!(event.envelopes[0].payload, message.as_bytes());
        assert!(
            started.elapsed() < SEND_BOUND,
            "{message} took {:?}",
            started.elapsed()
        );
        assert_eq!(
            readiness(&healthy).await.0,
            200,
            "the healthy instance stays ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sent >= 5, "only {sent} sends in {SKEWED_FOR:?}");

    shift.set_offset_ms(0).unwrap();
    let back_at = Instant::now();
    shifted.wait_ready(NOTICE_BOUND).await.unwrap();
    eprintln!(
        "ready again {:?} after the clock returned",
        back_at.elapsed()
    );
    let through_shifted = client("alice", &alice, shifted.grpc_endpoint()).await;
    let receipt = through_shifted
        .send(submission("after-skew"))
        .await
        .unwrap();
    let event = tokio::time::timeout(SEND_BOUND, deliveries.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.timestamp, receipt.timestamp);

    // The fast instance never fenced the healthy one: it marked no peer offline, and the
    // healthy one kept its incarnation (a fenced instance rejoins with a new one).
    assert_eq!(status(&shifted).await["peers_marked_offline"], 0);
    assert_eq!(status(&healthy).await["incarnation"], healthy_incarnation);
    assert!(
        !std::fs::read_to_string(&healthy.log_path)
            .unwrap()
            .contains("marked offline by its peers"),
        "the healthy instance was fenced:\n{}",
        healthy.log_tail(30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let storage = StorageConfig::Sqlite {
        path: dir.path().join("shared.db"),
    };
    clock_skew_is_refused_without_fencing_the_peer(storage, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let storage = StorageConfig::Postgres {
        url: PostgresServer::shared().create_database("skew").unwrap(),
        max_connections: POSTGRES_POOL_CONNECTIONS,
    };
    clock_skew_is_refused_without_fencing_the_peer(storage, dir.path()).await;
}
