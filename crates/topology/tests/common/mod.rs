//! Shared by the topology manager's tests: a real sequencer on SQLite running in this process
//! on a thread of its own, readiness polling, and admin requests carrying the test token.

// Test code: a failed unwrap is a failed test. Not every test file uses every helper.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use meridian_core::crypto::PublicKey;
use meridian_proto::v1;
use meridian_proto::v1::topology_admin_service_client::TopologyAdminServiceClient;
use meridian_sequencer::SequencerConfig;
use meridian_store::StorageConfig;
use meridian_testkit::free_port;
use tokio_util::sync::CancellationToken;
use tonic::Request;

/// The admin token every manager of these tests is configured with.
pub const TOKEN: &str = "test-admin-token";

/// How long a node may take to report ready before the test fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `message` with the admin token attached.
pub fn authorized<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    request
}

/// The whole history the manager listening on `listen` (`host:port`) serves.
pub async fn get_topology(listen: &str) -> v1::GetTopologyResponse {
    let endpoint = format!("http://{listen}");
    let mut admin = TopologyAdminServiceClient::connect(endpoint).await.unwrap();
    let request = v1::GetTopologyRequest {};
    admin.get_topology(request).await.unwrap().into_inner()
}

/// The `/readyz` status code and body of the admin endpoint `admin`, if it answers.
pub async fn readyz(admin: &str) -> Option<(u16, String)> {
    let response = reqwest::get(format!("http://{admin}/readyz")).await.ok()?;
    let code = response.status().as_u16();
    Some((code, response.text().await.unwrap_or_default()))
}

/// Polls `/readyz` every 10 ms until 200, for at most `READY_TIMEOUT`; returns how long it
/// took since `since`.
pub async fn time_until_ready(admin: &str, since: Instant) -> Duration {
    loop {
        if let Some((200, _)) = readyz(admin).await {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < READY_TIMEOUT,
            "{admin} never became ready"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A sequencer on SQLite under a test's directory. It runs on a runtime of its own: its `run`
/// future is not `Send` (an sqlx higher-ranked lifetime in its PostgreSQL migration), so it
/// cannot be `tokio::spawn`ed.
pub struct SequencerThread {
    /// Its gRPC endpoint, `http://…`.
    pub endpoint: String,
    stop: CancellationToken,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl SequencerThread {
    /// Starts a sequencer keeping `sequencer.db` in `dir` that admits only members signed by
    /// `owner`, and waits until it is ready.
    pub async fn start(dir: &Path, owner: &PublicKey) -> SequencerThread {
        let (grpc, admin) = (free_port(), free_port());
        let config = SequencerConfig::new(
            loopback(grpc),
            loopback(admin),
            StorageConfig::Sqlite {
                path: dir.join("sequencer.db"),
            },
        )
        .with_owner(owner);
        let stop = CancellationToken::new();
        let token = stop.clone();
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(meridian_sequencer::run(config, token))
        });
        time_until_ready(&format!("127.0.0.1:{admin}"), Instant::now()).await;
        SequencerThread {
            endpoint: format!("http://127.0.0.1:{grpc}"),
            stop,
            thread,
        }
    }

    /// Stops the sequencer and asserts it ended without an error.
    pub async fn stop(self) {
        self.stop.cancel();
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
