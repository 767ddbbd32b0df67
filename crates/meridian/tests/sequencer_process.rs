//! Black-box tests of `meridian sequencer` as a real process: bad input, configuration errors,
//! deduplication, health endpoints, kill -9 under load on both backends, refusing to serve
//! from an unsafe PostgreSQL, and fork detection after lost history.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use meridian_client::{register_member, ClientError, SequencerClient, SequencerClientConfig};
use meridian_core::crypto::{authentication_challenge, SigningKey, SigningPurpose};
use meridian_core::sequencing::{Envelope, SequencedEvent, Submission};
use meridian_core::{MemberId, MessageId, Timestamp};
use meridian_lab::launch::SequencerProcess;
use meridian_proto::v1;
use meridian_proto::v1::sequencer_admin_service_client::SequencerAdminServiceClient;
use meridian_proto::v1::sequencer_service_client::SequencerServiceClient;
use meridian_store::StorageConfig;
use meridian_testkit::PostgresServer;
use tempfile::TempDir;

mod common;
use common::{DeliveryRecorder, SendLoad, EXE};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

struct Harness {
    dir: TempDir,
    sequencer: SequencerProcess,
}

fn sqlite(path: std::path::PathBuf) -> StorageConfig {
    StorageConfig::Sqlite { path }
}

fn postgres(url: String) -> StorageConfig {
    StorageConfig::Postgres {
        url,
        max_connections: meridian_lab::deployment::configs::POSTGRES_POOL_CONNECTIONS,
    }
}

impl Harness {
    async fn start(storage: impl FnOnce(&Path) -> StorageConfig) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(dir.path());
        let mut sequencer =
            SequencerProcess::spawn(Path::new(EXE), dir.path(), "sequencer", &storage, |_| {})
                .unwrap();
        sequencer.wait_ready(READY_TIMEOUT).await.unwrap();
        Harness { dir, sequencer }
    }

    async fn sqlite() -> Harness {
        Self::start(|dir| sqlite(dir.join("sequencer.db"))).await
    }

    async fn postgres() -> Harness {
        let url = PostgresServer::shared().create_database("seq").unwrap();
        Self::start(|_| postgres(url)).await
    }

    fn endpoint(&self) -> String {
        self.sequencer.grpc_endpoint()
    }

    async fn member(&self, name: &str) -> (SequencerClient, SigningKey) {
        let id = MemberId::new(name).unwrap();
        let key = SigningKey::generate();
        assert!(register_member(&self.endpoint(), &id, &key.public_key())
            .await
            .unwrap());
        let client =
            SequencerClient::connect(SequencerClientConfig::new(self.endpoint(), id, key.clone()))
                .await
                .unwrap();
        (client, key)
    }

    async fn restart(&mut self) {
        self.sequencer.start(Path::new(EXE)).unwrap();
        self.sequencer.wait_ready(READY_TIMEOUT).await.unwrap();
    }
}

fn id(name: &str) -> MemberId {
    MemberId::new(name).unwrap()
}

fn submission(sender: &str, message_id: &str, recipients: &[&str], payload: &[u8]) -> Submission {
    Submission {
        sender: id(sender),
        message_id: MessageId::new(message_id).unwrap(),
        envelopes: vec![Envelope {
            recipients: recipients.iter().map(|r| id(r)).collect(),
            payload: payload.to_vec(),
        }],
        max_sequencing_time: Timestamp::now().saturating_add(Duration::from_secs(60)),
    }
}

fn rejected(result: Result<impl std::fmt::Debug, ClientError>) -> (tonic::Code, String) {
    match result {
        Err(ClientError::Rejected { code, message }) => (code, message),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

async fn next_event(
    events: &mut (impl futures::Stream<Item = Result<SequencedEvent, ClientError>> + Unpin),
) -> SequencedEvent {
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream is open")
        .expect("no subscription error")
}

/// Answers `member`'s authentication challenge signed with `key` over raw gRPC, expecting the
/// sequencer to refuse; returns its refusal.
async fn authenticate_as(
    raw: &mut SequencerServiceClient<tonic::transport::Channel>,
    member: &str,
    key: &SigningKey,
) -> tonic::Status {
    let nonce = raw
        .get_challenge(v1::GetChallengeRequest {
            member: member.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .nonce;
    let signature = key.sign(
        SigningPurpose::SequencerAuthentication,
        &authentication_challenge(&id(member), &nonce),
    );
    raw.authenticate(v1::AuthenticateRequest {
        member: member.into(),
        nonce,
        signature: signature.to_bytes().to_vec(),
    })
    .await
    .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_changes_nothing() {
    let harness = Harness::sqlite().await;
    let (alice, _) = harness.member("alice").await;
    let (bob, _) = harness.member("bob").await;
    let mut bob_events = bob.subscribe(None);

    // Empty batch.
    let mut empty = submission("alice", "m1", &["bob"], b"x");
    empty.envelopes.clear();
    let (code, message) = rejected(alice.send(empty).await);
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(message.contains("empty"), "{message}");

    // Unknown recipient.
    let (code, message) = rejected(
        alice
            .send(submission("alice", "m2", &["carol"], b"x"))
            .await,
    );
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(message.contains("unknown recipient carol"), "{message}");

    // Envelope without recipients.
    let (code, message) = rejected(alice.send(submission("alice", "m3", &[], b"x")).await);
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(message.contains("no recipients"), "{message}");

    // Over the 4 MiB default limit.
    let big = vec![0u8; 4 * 1024 * 1024 + 1];
    let (code, message) = rejected(alice.send(submission("alice", "m4", &["bob"], &big)).await);
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(message.contains("limit"), "{message}");

    // Max sequencing time already past.
    let mut late = submission("alice", "m5", &["bob"], b"x");
    late.max_sequencing_time = Timestamp::now().saturating_sub(Duration::from_secs(1));
    let (code, message) = rejected(alice.send(late).await);
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(message.contains("already past"), "{message}");

    // Sending in someone else's name.
    let (code, message) = rejected(alice.send(submission("bob", "m6", &["bob"], b"x")).await);
    assert_eq!(code, tonic::Code::PermissionDenied);
    assert!(message.contains("alice"), "{message}");

    // Raw gRPC: what the client library would never send.
    let mut raw = common::grpc(SequencerServiceClient::new, harness.endpoint())
        .await
        .unwrap();
    let status = raw
        .send(v1::SendRequest {
            submission: Some(meridian_proto::convert::submission_to_wire(submission(
                "alice",
                "m7",
                &["bob"],
                b"x",
            ))),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "no token");
    let mut with_bad_token = tonic::Request::new(v1::SendRequest { submission: None });
    with_bad_token
        .metadata_mut()
        .insert("authorization", "Bearer 00ff".parse().unwrap());
    let status = raw.send(with_bad_token).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "bad token");
    assert!(
        status.message().contains("authenticate again"),
        "{status:?}"
    );

    // Unregistered member and bad signature at authentication.
    let mallory_key = SigningKey::generate();
    let status = authenticate_as(&mut raw, "mallory", &mallory_key).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("not registered"), "{status:?}");
    let status = authenticate_as(&mut raw, "alice", &mallory_key).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("does not verify"), "{status:?}");
    let status = raw
        .get_challenge(v1::GetChallengeRequest {
            member: "bad id".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // Admin: bad key, and re-registering with a different key.
    let mut admin = common::grpc(SequencerAdminServiceClient::new, harness.endpoint())
        .await
        .unwrap();
    let status = admin
        .register_member(v1::RegisterMemberRequest {
            member: "carol".into(),
            public_key: vec![1, 2, 3],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("public_key"), "{status:?}");
    let status = admin
        .register_member(v1::RegisterMemberRequest {
            member: "alice".into(),
            public_key: SigningKey::generate().public_key().to_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    let members = admin
        .list_members(v1::ListMembersRequest {})
        .await
        .unwrap()
        .into_inner()
        .members;
    let names: Vec<&str> = members.iter().map(|m| m.member.as_str()).collect();
    let impostor = SequencerClient::connect(SequencerClientConfig::new(
        harness.endpoint(),
        id("alice"),
        SigningKey::generate(),
    ))
    .await;
    assert!(
        matches!(impostor, Err(ClientError::Unauthenticated(_))),
        "a wrong key cannot authenticate: {impostor:?}"
    );
    assert_eq!(
        names,
        vec!["alice", "bob"],
        "no failed call registered anyone"
    );

    // Nothing above was sequenced: the first event bob ever sees is this one.
    let receipt = alice
        .send(submission("alice", "good", &["bob"], b"hello"))
        .await
        .unwrap();
    let first = next_event(&mut bob_events).await;
    assert_eq!(first.timestamp, receipt.timestamp);
    assert_eq!(first.previous_timestamp, None);
    assert_eq!(first.envelopes[0].payload, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deduplicates_filters_envelopes_and_serves_health() {
    let harness = Harness::sqlite().await;
    let (alice, _) = harness.member("alice").await;
    let (bob, _) = harness.member("bob").await;
    let (carol, _) = harness.member("carol").await;

    let mut both = submission("alice", "dup", &["bob"], b"for bob");
    both.envelopes.push(Envelope {
        recipients: vec![id("carol")],
        payload: b"for carol".to_vec(),
    });
    let first = alice.send(both.clone()).await.unwrap();
    let again = alice.send(both).await.unwrap();
    assert!(!first.deduplicated);
    assert!(again.deduplicated);
    assert_eq!(again.timestamp, first.timestamp);
    let second = alice
        .send(submission("alice", "next", &["bob"], b"second"))
        .await
        .unwrap();

    let mut bob_events = bob.subscribe(None);
    let e1 = next_event(&mut bob_events).await;
    let e2 = next_event(&mut bob_events).await;
    assert_eq!(e1.timestamp, first.timestamp);
    assert_eq!(e1.envelopes.len(), 1, "only bob's envelope");
    assert_eq!(e1.envelopes[0].payload, b"for bob");
    assert_eq!(e1.message_id, None, "message ids go only to the sender");
    assert_eq!(e2.timestamp, second.timestamp);
    assert_eq!(e2.previous_timestamp, Some(first.timestamp));
    let mut carol_events = carol.subscribe(None);
    let c1 = next_event(&mut carol_events).await;
    assert_eq!(c1.envelopes[0].payload, b"for carol");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), carol_events.next())
            .await
            .is_err(),
        "carol gets nothing else"
    );

    // Resuming after the first event yields exactly the second.
    let mut resumed = bob.subscribe(Some(first.timestamp));
    assert_eq!(next_event(&mut resumed).await.timestamp, second.timestamp);

    // gRPC health, and the admin HTTP endpoints.
    let channel = common::endpoint(harness.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "meridian.v1.SequencerService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let admin = harness.sequencer.admin_address;
    let http = meridian_lab::tls::http().unwrap();
    let status = common::admin_status(&http, admin).await;
    assert_eq!(status["role"], "sequencer");
    assert_eq!(status["members"], 3);
    let metrics = common::admin_metrics(&http, admin).await;
    assert!(
        metrics.contains("meridian_sequencer_submissions_total{outcome=\"deduplicated\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        common::admin_get(&http, admin, "readyz").await.status(),
        200
    );
}

/// Runs `meridian sequencer --config config`, expects a refusal and returns its stderr.
fn refused_sequencer_config(config: &Path) -> String {
    let output = std::process::Command::new(EXE)
        .args(["sequencer", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Writes `toml` to `config` and returns the stderr of the refused start with it.
fn refused_sequencer_toml(config: &Path, toml: &str) -> String {
    std::fs::write(config, toml).unwrap();
    refused_sequencer_config(config)
}

#[test]
fn malformed_config_is_refused_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let stderr = refused_sequencer_toml(
        &path,
        "listen_adress = \"127.0.0.1:1\"\nadmin_address = \"127.0.0.1:2\"\n[storage]\nbackend = \"sqlite\"\npath = \"x.db\"\n",
    );
    assert!(stderr.contains("listen_adress"), "{stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");
    assert!(!dir.path().join("x.db").exists(), "nothing was created");

    let stderr = refused_sequencer_toml(
        &path,
        "listen_address = \"127.0.0.1:1\"\nadmin_address = \"127.0.0.1:2\"\n[instance]\nindex = 4\ncount = 4\n[storage]\nbackend = \"sqlite\"\npath = \"x.db\"\n",
    );
    assert!(stderr.contains("index 4 must be below count 4"), "{stderr}");

    let stderr = refused_sequencer_config(Path::new("/nonexistent/seq.toml"));
    assert!(stderr.contains("/nonexistent/seq.toml"), "{stderr}");
}

/// Sends continuously, kills the sequencer with SIGKILL mid-load, restarts it, and checks
/// that the subscriber saw every acknowledged submission exactly once, in order, with an
/// unbroken chain (the client would report a fork otherwise).
async fn kill9_under_load(mut harness: Harness) {
    let (alice, _) = harness.member("alice").await;
    let (bob, _) = harness.member("bob").await;

    let recorder = DeliveryRecorder::start(&bob);

    let load = SendLoad::start(
        &alice,
        8,
        |message| submission("alice", message, &["bob"], message.as_bytes()),
        Duration::from_secs(30),
        Duration::from_millis(50),
    );

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before_kill = load.acked_count();
    assert!(before_kill > 0, "load was running before the kill");
    harness.sequencer.kill9().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    harness.restart().await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (acked, _) = load.stop().await;
    assert!(
        acked.len() > before_kill,
        "sends succeeded after the restart"
    );

    // Nothing acknowledged is lost, nothing is delivered twice, the history is in order.
    recorder.assert_delivered_exactly(&acked).await;
    drop(harness.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_load_sqlite() {
    kill9_under_load(Harness::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_load_postgres() {
    kill9_under_load(Harness::postgres().await).await;
}

async fn readyz_reason(sequencer: &SequencerProcess) -> (u16, serde_json::Value) {
    let response = meridian_lab::tls::http()
        .unwrap()
        .get(format!(
            "{}/readyz",
            meridian_lab::tls::url(sequencer.admin_address)
        ))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Waits until `/readyz` reports not-ready with a reason containing `needle`.
async fn wait_for_refusal(sequencer: &SequencerProcess, needle: &str) -> serde_json::Value {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(response) = meridian_lab::tls::http()
            .unwrap()
            .get(format!(
                "{}/readyz",
                meridian_lab::tls::url(sequencer.admin_address)
            ))
            .send()
            .await
        {
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            if status == 503 && body["reason"].as_str().unwrap_or("").contains(needle) {
                return body;
            }
        }
        assert!(Instant::now() < deadline, "no refusal mentioning {needle}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_serve_from_unsafe_postgres() {
    let server = PostgresServer::shared();
    for (setting, needle) in [
        ("synchronous_commit = off", "synchronous_commit"),
        ("default_transaction_read_only = on", "read-only"),
    ] {
        let url = server.create_database("unsafe").unwrap();
        let db = url.rsplit('/').next().unwrap().to_owned();
        if setting.starts_with("default_transaction_read_only") {
            // Create the schema first, as a demoted primary would have it.
            let mut harness = Harness::start(|_| postgres(url.clone())).await;
            harness
                .sequencer
                .terminate(Duration::from_secs(10))
                .await
                .unwrap();
        }
        server
            .psql(
                "postgres",
                &format!("ALTER DATABASE \"{db}\" SET {setting}"),
            )
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sequencer = SequencerProcess::spawn(
            Path::new(EXE),
            dir.path(),
            "sequencer",
            &postgres(url),
            |_| {},
        )
        .unwrap();
        let body = wait_for_refusal(&sequencer, needle).await;
        assert_eq!(body["status"], "not_ready");
        let (status, _) = readyz_reason(&sequencer).await;
        assert_eq!(status, 503);
        // The gRPC port stays closed: nothing can be sequenced.
        assert!(
            common::grpc(SequencerServiceClient::new, sequencer.grpc_endpoint())
                .await
                .is_err()
        );
        let log = sequencer.log_tail(50);
        assert!(log.contains(needle), "the log says why: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_history_is_reported_as_a_fork() {
    let mut harness = Harness::sqlite().await;
    let (alice, _) = harness.member("alice").await;
    let (bob, bob_key) = harness.member("bob").await;
    let mut stamps = Vec::new();
    for i in 0..3 {
        let receipt = alice
            .send(submission("alice", &format!("m{i}"), &["bob"], b"x"))
            .await
            .unwrap();
        stamps.push(receipt.timestamp);
    }
    let mut events = bob.subscribe(None);
    for stamp in &stamps {
        assert_eq!(next_event(&mut events).await.timestamp, *stamp);
    }
    drop(events);

    // Lose the last event, as an asynchronously replicated database might in a failover.
    harness
        .sequencer
        .terminate(Duration::from_secs(10))
        .await
        .unwrap();
    let db = harness.dir.path().join("sequencer.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    for table in ["events", "event_recipients"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE ts = ?"))
            .bind(stamps[2].as_i64())
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
    harness.restart().await;

    // A new event after the loss: its predecessor for bob is now the second event.
    let (dave, _) = harness.member("dave").await;
    dave.send(submission("dave", "after-loss", &["bob"], b"y"))
        .await
        .unwrap();
    // Bob reconnects and resumes after the last event it processed (now lost).
    let bob = SequencerClient::connect(SequencerClientConfig::new(
        harness.endpoint(),
        id("bob"),
        bob_key,
    ))
    .await
    .unwrap();
    let mut resumed = bob.subscribe(Some(stamps[2]));
    let outcome = tokio::time::timeout(Duration::from_secs(10), resumed.next())
        .await
        .expect("an answer within 10 s")
        .expect("the stream yields the fork");
    match outcome {
        Err(ClientError::Fork(fork)) => {
            assert!(fork.to_string().starts_with("fork detected"), "{fork}")
        }
        other => panic!("expected a fork, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(2), resumed.next())
            .await
            .map(|next| next.is_none())
            .unwrap_or(true),
        "the stream ends after a fork"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_owner_key_only_owner_signed_members_are_registered() {
    use meridian_client::register_member_with_topology;
    use meridian_core::topology::{
        SignedTopologyTransaction, TopologyMapping, TopologyTransaction,
    };

    let owner = SigningKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let mut sequencer = SequencerProcess::spawn(
        Path::new(EXE),
        dir.path(),
        "sequencer",
        &sqlite(dir.path().join("sequencer.db")),
        |config| config.owner_public_key = Some(owner.public_key().to_string()),
    )
    .unwrap();
    sequencer.wait_ready(READY_TIMEOUT).await.unwrap();
    let endpoint = sequencer.grpc_endpoint();
    let key = SigningKey::generate();

    // The open admin registration is refused.
    let refused = register_member(&endpoint, &id("p1"), &key.public_key()).await;
    assert!(
        matches!(&refused, Err(ClientError::Rejected { code: tonic::Code::Unauthenticated, message }) if message.contains("owner")),
        "{refused:?}"
    );
    let mapping = TopologyMapping::Participant {
        participant: meridian_core::ParticipantId::new("p1").unwrap(),
        public_key: key.public_key().to_string(),
    };
    // Signed by someone else: refused.
    let forged = SignedTopologyTransaction::sign(
        &TopologyTransaction {
            serial: 1,
            mapping: mapping.clone(),
        },
        &SigningKey::generate(),
    );
    let refused = register_member_with_topology(std::slice::from_ref(&endpoint), &forged).await;
    assert!(
        matches!(
            &refused,
            Err(ClientError::Rejected {
                code: tonic::Code::Unauthenticated,
                ..
            })
        ),
        "{refused:?}"
    );
    // Signed by the owner: registered once, idempotent after, and the member can authenticate.
    let signed =
        SignedTopologyTransaction::sign(&TopologyTransaction { serial: 1, mapping }, &owner);
    assert!(
        register_member_with_topology(std::slice::from_ref(&endpoint), &signed)
            .await
            .unwrap()
    );
    assert!(
        !register_member_with_topology(std::slice::from_ref(&endpoint), &signed)
            .await
            .unwrap()
    );
    SequencerClient::connect(SequencerClientConfig::new(endpoint, id("p1"), key))
        .await
        .unwrap();
}

#[test]
fn a_bad_runtime_thread_count_is_refused_before_anything_starts() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("missing.toml");
    let run = |flag: Option<&str>, env: Option<&str>| {
        let mut command = std::process::Command::new(EXE);
        command.env_remove(meridian_node::runtime::RUNTIME_THREADS_ENV);
        if let Some(count) = flag {
            command.arg(format!("--runtime-threads={count}"));
        }
        if let Some(count) = env {
            command.env(meridian_node::runtime::RUNTIME_THREADS_ENV, count);
        }
        command.arg("sequencer").arg("--config").arg(&missing);
        command.output().unwrap()
    };
    for (flag, env, detail) in [
        (Some("0"), None, "number would be zero"),
        (None, Some("abc"), "invalid digit"),
        (Some("-3"), None, "invalid digit"),
        (Some(""), None, "--runtime-threads"),
    ] {
        let output = run(flag, env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("--runtime-threads"), "{stderr}");
        assert!(stderr.contains(detail), "{stderr}");
    }
    // A good count gets as far as the config file.
    for (flag, env) in [(Some("1"), None), (None, Some("3"))] {
        let output = run(flag, env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("cannot read config file"), "{stderr}");
    }
}
