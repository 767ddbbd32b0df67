//! Two replicas of the topology manager on one SQLite database (DESIGN.md §5): the passive one
//! answers readiness 503, gRPC health NOT_SERVING and admin calls UNAVAILABLE naming the
//! active replica; when the active stops, the passive takes over and the next change gets the
//! next serial; a manual step-down hands the lease back.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use std::time::{Duration, Instant};

use common::{
    authorized, get_topology, loopback, readyz, time_until_ready, SequencerThread, TOKEN,
};
use meridian_core::crypto::SigningKey;
use meridian_node::config::Endpoints;
use meridian_proto::v1;
use meridian_proto::v1::topology_admin_service_client::TopologyAdminServiceClient;
use meridian_store::StorageConfig;
use meridian_testkit::free_port;
use meridian_topology::config::ReplicationConfig;
use meridian_topology::TopologyManagerConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A takeover must be well within this (the target is under a second).
const TAKEOVER_LIMIT: Duration = Duration::from_secs(3);

/// Asserts that the replica at `admin` serves within `TAKEOVER_LIMIT` of `since`, and prints
/// how long it took: "`who` serving N ms after `after`".
async fn expect_takeover(admin: &str, since: Instant, who: &str, after: &str) {
    let took = time_until_ready(admin, since).await;
    println!("{who} serving {} ms after {after}", took.as_millis());
    assert!(took < TAKEOVER_LIMIT, "took {took:?}");
}

/// Waits until `/readyz` is 503 naming `active`; returns the reason.
async fn wait_passive(admin: &str, active: &str) -> String {
    let started = Instant::now();
    loop {
        if let Some((503, body)) = readyz(admin).await {
            if body.contains(active) {
                return body;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{admin} never became passive behind {active}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status(admin: &str) -> serde_json::Value {
    reqwest::get(format!("http://{admin}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `POST /admin/step-down` with the manager's admin token, which it requires.
async fn step_down(admin: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{admin}/admin/step-down"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn health(listen: &str, service: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{listen}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let response = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(response.status).unwrap()
}

async fn add_participant(
    listen: &str,
    name: &str,
) -> Result<v1::TopologyChangeResponse, tonic::Status> {
    let mut admin = TopologyAdminServiceClient::connect(format!("http://{listen}"))
        .await
        .unwrap();
    let request = authorized(v1::AddParticipantRequest {
        participant: name.into(),
        public_key: SigningKey::generate().public_key().to_bytes().to_vec(),
    });
    admin.add_participant(request).await.map(|r| r.into_inner())
}

async fn topology_len(listen: &str) -> usize {
    get_topology(listen).await.entries.len()
}

struct Replica {
    config: TopologyManagerConfig,
    listen: String,
    admin: String,
}

impl Replica {
    fn new(dir: &std::path::Path, sequencer_endpoint: &str, replica_id: &str) -> Replica {
        let (listen, admin) = (loopback(free_port()), loopback(free_port()));
        let config = TopologyManagerConfig {
            admin_token: Some(TOKEN.to_owned()),
            replication: Some(ReplicationConfig::new(replica_id)),
            ..TopologyManagerConfig::new(
                dir.join("owner.key"),
                dir.join("manager.key"),
                Endpoints::one(sequencer_endpoint),
                listen,
                admin,
                StorageConfig::Sqlite {
                    path: dir.join("topology.db"),
                },
            )
        };
        Replica {
            config,
            listen: listen.to_string(),
            admin: admin.to_string(),
        }
    }

    fn start(&self) -> (CancellationToken, JoinHandle<anyhow::Result<()>>) {
        let stop = CancellationToken::new();
        let task = tokio::spawn(meridian_topology::run(self.config.clone(), stop.clone()));
        (stop, task)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_replica_takes_over_with_the_next_serial() {
    let dir = tempfile::tempdir().unwrap();
    let owner = SigningKey::generate();
    meridian_node::keys::write_key(&dir.path().join("owner.key"), &owner).unwrap();
    // The replicas share the manager's key; replicas never create one.
    meridian_node::keys::write_key(&dir.path().join("manager.key"), &SigningKey::generate())
        .unwrap();

    let sequencer = SequencerThread::start(dir.path(), &owner.public_key()).await;

    let a = Replica::new(dir.path(), &sequencer.endpoint, "tm-a");
    let b = Replica::new(dir.path(), &sequencer.endpoint, "tm-b");
    let (stop_a, task_a) = a.start();
    time_until_ready(&a.admin, Instant::now()).await;
    let (stop_b, task_b) = b.start();
    let reason = wait_passive(&b.admin, "tm-a").await;
    assert!(
        reason.contains(&a.listen),
        "names the active's endpoint: {reason}"
    );

    // The passive refuses changes naming the active replica, and reports NOT_SERVING.
    let refused = add_participant(&b.listen, "p0").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("tm-a"), "{}", refused.message());
    assert_eq!(health(&b.listen, "").await, ServingStatus::NotServing);
    assert_eq!(
        health(&b.listen, "meridian.v1.TopologyAdminService").await,
        ServingStatus::NotServing
    );
    assert_eq!(health(&a.listen, "").await, ServingStatus::Serving);
    let status_b = status(&b.admin).await;
    assert_eq!(status_b["replication"]["role"], "passive", "{status_b}");
    assert_eq!(status_b["replication"]["active_replica"], "tm-a");
    assert_eq!(status_b["phase"], "passive");
    let status_a = status(&a.admin).await;
    assert_eq!(status_a["replication"]["role"], "active", "{status_a}");
    let epoch_a = status_a["replication"]["epoch"].as_i64().unwrap();

    // Serial 1 is the manager's registration; the active adds serial 2. The passive serves
    // the same history from the shared database.
    let added = add_participant(&a.listen, "p1").await.unwrap();
    assert_eq!(added.serial, 2);
    assert_eq!(topology_len(&b.listen).await, 2);
    assert_eq!(step_down(&b.admin).await, 409, "a passive cannot step down");

    // The active stops; the passive takes over and continues with serial 3.
    let stopped = Instant::now();
    stop_a.cancel();
    expect_takeover(&b.admin, stopped, "failover: replica B", "A stopped").await;
    task_a.await.unwrap().unwrap();
    let added = add_participant(&b.listen, "p2").await.unwrap();
    assert_eq!(added.serial, 3);
    assert_eq!(health(&b.listen, "").await, ServingStatus::Serving);
    let status_b = status(&b.admin).await;
    assert!(status_b["replication"]["epoch"].as_i64().unwrap() > epoch_a);
    assert_eq!(status_b["published_serial"], 3);

    // A comes back passive; a step-down of B hands over to A, which continues with serial 4.
    let (stop_a, task_a) = a.start();
    wait_passive(&a.admin, "tm-b").await;
    let asked = Instant::now();
    // Without the admin token the active is not asked at all.
    let refused = reqwest::Client::new()
        .post(format!("http://{}/admin/step-down", b.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    assert_eq!(step_down(&b.admin).await, 202);
    let after = "the step-down request";
    expect_takeover(&a.admin, asked, "switchover: replica A", after).await;
    wait_passive(&b.admin, "tm-a").await;
    let added = add_participant(&a.listen, "p3").await.unwrap();
    assert_eq!(added.serial, 4);
    let refused = add_participant(&b.listen, "p4").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    stop_a.cancel();
    stop_b.cancel();
    task_a.await.unwrap().unwrap();
    task_b.await.unwrap().unwrap();
    sequencer.stop().await;
}
