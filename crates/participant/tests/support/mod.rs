//! What the in-process participant tests share: a real sequencer, topology manager and
//! mediator (SQLite, loopback gRPC) started as tasks of the test process, and the helpers to
//! run nodes there. Each test binary compiles this module on its own, so an item one binary
//! does not use is not dead code.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use meridian_core::crypto::PublicKey;
use meridian_core::ParticipantId;
use meridian_mediator::MediatorConfig;
use meridian_node::config::{Endpoints, MemberEndpoints};
use meridian_participant::ParticipantConfig;
use meridian_proto::v1;
use meridian_proto::v1::topology_admin_service_client::TopologyAdminServiceClient;
use meridian_sequencer::SequencerConfig;
use meridian_store::StorageConfig;
use meridian_testkit::free_port;
use meridian_topology::TopologyManagerConfig;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A loopback address on a port reserved for this test process.
pub fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// An SQLite database in `dir`.
pub fn sqlite(dir: &std::path::Path, name: &str) -> StorageConfig {
    StorageConfig::Sqlite {
        path: dir.join(format!("{name}.db")),
    }
}

/// Runs `attempt` until it succeeds; panics with its last error after a minute.
pub async fn retry<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(what, %error, "retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("{what}: {error}"),
        }
    }
}

/// Runs a node to its end and logs why it stopped early: in these tests nodes are tasks, and
/// an error nobody reads would otherwise surface only as a refused connection much later.
pub async fn logged(
    node: &'static str,
    run: impl std::future::Future<Output = anyhow::Result<()>>,
) {
    if let Err(error) = run.await {
        tracing::error!(node, "node stopped with an error: {error:#}");
    }
}

/// The synchronizer without participants: sequencer, topology manager and mediator.
pub struct Synchronizer {
    /// What every member's config shares: the owner's key and the endpoints.
    pub owner: PublicKey,
    pub endpoints: MemberEndpoints,
    pub admin: TopologyAdminServiceClient<Channel>,
    /// Sending a duration freezes the mediator for that long (see [`spawn_freezable`]).
    pub freeze_mediator: std::sync::mpsc::Sender<Duration>,
    pub shutdown: CancellationToken,
    pub dir: tempfile::TempDir,
}

/// Starts the synchronizer, with the mediator registered (response timeout 3 s), and logs
/// through the test harness (see [`meridian_testkit::init_logging`]).
pub async fn synchronizer() -> Synchronizer {
    meridian_testkit::init_logging();
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let shutdown = CancellationToken::new();
    let owner = meridian_node::keys::load_or_create_key(&d.join("owner.key")).expect("owner");

    let sequencer = SequencerConfig::new(addr(), addr(), sqlite(d, "sequencer"))
        .with_owner(&owner.public_key());
    let sequencer_endpoint = format!("http://{}", sequencer.listen_address);
    // The sequencer's future is not `Send`, so it gets a runtime of its own on a thread.
    let sequencer_shutdown = shutdown.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("sequencer runtime");
        runtime.block_on(logged(
            "sequencer",
            meridian_sequencer::run(sequencer, sequencer_shutdown),
        ));
    });

    let topology = TopologyManagerConfig::new(
        d.join("owner.key"),
        d.join("topology.key"),
        Endpoints::one(sequencer_endpoint.clone()),
        addr(),
        addr(),
        sqlite(d, "topology"),
    );
    let topology_endpoint = format!("http://{}", topology.listen_address);
    tokio::spawn(logged(
        "topology manager",
        meridian_topology::run(topology, shutdown.clone()),
    ));

    let admin = retry("topology manager", || {
        let endpoint = topology_endpoint.clone();
        async move {
            TopologyAdminServiceClient::connect(endpoint)
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await;
    let mediator_key =
        meridian_node::keys::load_or_create_key(&d.join("mediator.key")).expect("mediator key");
    retry("add mediator", || {
        let mut admin = admin.clone();
        let key = mediator_key.public_key().to_bytes().to_vec();
        async move {
            admin
                .add_mediator(v1::AddMediatorRequest {
                    mediator: "mediator".into(),
                    public_key: key,
                })
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await;
    let endpoints = MemberEndpoints {
        sequencer: Endpoints::one(sequencer_endpoint),
        topology: Endpoints::one(topology_endpoint),
    };
    let mediator = MediatorConfig {
        response_timeout_ms: 3_000,
        ..MediatorConfig::new(
            d.join("mediator.key"),
            &owner.public_key(),
            endpoints.clone(),
            addr(),
            sqlite(d, "mediator"),
        )
    };
    let freeze_mediator = spawn_freezable(logged(
        "mediator",
        meridian_mediator::run(mediator, shutdown.clone()),
    ));
    Synchronizer {
        owner: owner.public_key(),
        endpoints,
        admin,
        freeze_mediator,
        shutdown,
        dir,
    }
}

impl Synchronizer {
    /// Participant `id`'s config on fresh loopback ports, its key in `<dir>/<id>.key`;
    /// SubmitAndWait waits 15 s.
    pub fn participant_config(&self, id: &str, storage: StorageConfig) -> ParticipantConfig {
        let config = ParticipantConfig {
            submit_timeout_ms: 15_000,
            ..ParticipantConfig::new(
                ParticipantId::new(id).expect("participant id"),
                self.dir.path().join(format!("{id}.key")),
                &self.owner,
                self.endpoints.clone(),
                addr(),
                addr(),
                storage,
            )
        };
        config.check("participant.toml").expect("valid config");
        config
    }
}

/// Runs `node` on a tokio runtime of its own, on a thread of its own. Dropping the returned
/// sender kills it the hard way — the runtime goes with every task, socket, database
/// connection and lock in it, with no graceful release: the in-process stand-in for
/// `kill -9`. Sending a duration freezes it (every worker thread blocked, like SIGSTOP) for
/// that long.
pub fn spawn_freezable<F>(node: F) -> std::sync::mpsc::Sender<Duration>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    const WORKERS: usize = 2;
    let (control, controls) = std::sync::mpsc::channel::<Duration>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .enable_all()
            .build()
            .expect("node runtime");
        runtime.spawn(node);
        while let Ok(freeze) = controls.recv() {
            // The barrier makes every worker hold one of the blocking tasks at the same time.
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(WORKERS + 1));
            for _ in 0..WORKERS {
                let barrier = barrier.clone();
                runtime.spawn(async move {
                    barrier.wait();
                    std::thread::sleep(freeze);
                });
            }
            barrier.wait();
        }
        runtime.shutdown_background();
    });
    control
}
