//! Support shared by the black-box tests that start whole deployments of the real binary:
//! the replicated spec on SQLite or PostgreSQL, starting it with its progress on stderr, and
//! the background transfer load the failure tests run under.

// Each test crate compiles this module on its own and uses only part of it.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::HashMap;
use std::fmt::Display;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_client::{SendReceipt, SequencerClient};
use meridian_core::ledger::{Command, Contract};
use meridian_core::sequencing::Submission;
use meridian_core::template::IouPayload;
use meridian_core::{PartyId, TemplateId, Timestamp, UserId};
use meridian_lab::bench::failover;
use meridian_lab::deployment::{Deployment, DeploymentSpec, Description, Preset};
use meridian_lab::workload::BackgroundLoad;
use meridian_testkit::PostgresServer;
use tokio_util::sync::CancellationToken;

pub const EXE: &str = env!("CARGO_BIN_EXE_meridian");

/// Concurrent transfer lanes of the background load: enough to keep every submitting
/// participant busy, few enough for a shared two-core machine.
pub const LOAD_LANES: usize = 8;

/// The replicated preset under `dir`, on `postgres` if given, else on SQLite.
pub fn replicated_spec(dir: &Path, postgres: Option<&PostgresServer>) -> DeploymentSpec {
    let mut spec = DeploymentSpec {
        exe: EXE.into(),
        ..DeploymentSpec::new(dir.to_path_buf(), Description::preset(Preset::Replicated)).unwrap()
    };
    if let Some(server) = postgres {
        spec.use_postgres(server);
    }
    spec
}

/// Starts `spec`, its progress lines on stderr (shown for failing tests).
pub async fn start_deployment(spec: &DeploymentSpec) -> Deployment {
    Deployment::start(spec, &mut |line| eprintln!("{line}"))
        .await
        .unwrap()
}

/// Fails the test if any node process has exited: a database fault must not crash a node.
pub fn assert_all_running(deployment: &mut Deployment) {
    let mut exited = Vec::new();
    for process in deployment.processes_mut() {
        if !process.is_running() {
            exited.push(format!(
                "{} exited; log tail:\n{}",
                process.name(),
                process.log_tail(30)
            ));
        }
    }
    assert!(exited.is_empty(), "{}", exited.join("\n\n"));
}

/// Starts `LOAD_LANES` lanes of transfers by `user` in the run named `run`, retrying as a
/// failover client does.
pub async fn start_load(deployment: &Deployment, user: &str, run: &str) -> BackgroundLoad {
    BackgroundLoad::start(
        deployment,
        &UserId::new(user).unwrap(),
        failover::CLIENT_BACKOFF,
        LOAD_LANES,
        run,
        &CancellationToken::new(),
    )
    .await
    .unwrap()
}

/// The `/status` document of the process whose admin endpoint is `admin_address`.
pub async fn admin_status(
    client: &reqwest::Client,
    admin_address: impl Display,
) -> serde_json::Value {
    admin_get(client, admin_address, "status")
        .await
        .json()
        .await
        .unwrap()
}

/// The `/metrics` text of the process whose admin endpoint is `admin_address`.
pub async fn admin_metrics(client: &reqwest::Client, admin_address: impl Display) -> String {
    admin_get(client, admin_address, "metrics")
        .await
        .text()
        .await
        .unwrap()
}

/// The answer to `GET /page` on the admin endpoint `admin_address`, whatever its status.
pub async fn admin_get(
    client: &reqwest::Client,
    admin_address: impl Display,
    page: &str,
) -> reqwest::Response {
    client
        .get(format!("{}/{page}", meridian_lab::tls::url(admin_address)))
        .send()
        .await
        .unwrap()
}

/// Sends `submission` until it is acknowledged, every `retry_interval` for at most `timeout`:
/// resending the same message id is safe, the sequencer deduplicates it. The client already
/// retries and fails over; this outer loop rides out a restart longer than its backoff.
pub async fn send_until_acked(
    sender: &SequencerClient,
    submission: &Submission,
    timeout: Duration,
    retry_interval: Duration,
) -> SendReceipt {
    let deadline = Instant::now() + timeout;
    loop {
        match sender.send(submission.clone()).await {
            Ok(receipt) => return receipt,
            Err(error) if Instant::now() < deadline => {
                eprintln!("send {} failed, retrying: {error}", submission.message_id);
                tokio::time::sleep(retry_interval).await;
            }
            Err(error) => panic!("send {} never succeeded: {error}", submission.message_id),
        }
    }
}

/// Senders on several lanes, each sending `lane{L}-{i}` for i = 1, 2, … until stopped, every
/// message retried with the same id until it is acknowledged (see `send_until_acked`).
pub struct SendLoad {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<HashMap<String, Timestamp>>>,
    deduplicated: Arc<Mutex<u64>>,
    lanes: Vec<tokio::task::JoinHandle<()>>,
}

impl SendLoad {
    /// Starts `lanes` lanes sending through `sender` what `submission` makes of each message
    /// name, each message for at most `timeout`, retried every `retry_interval`.
    pub fn start(
        sender: &SequencerClient,
        lanes: usize,
        submission: fn(&str) -> Submission,
        timeout: Duration,
        retry_interval: Duration,
    ) -> SendLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<HashMap<String, Timestamp>>> = Arc::default();
        let deduplicated: Arc<Mutex<u64>> = Arc::default();
        let lanes = (0..lanes)
            .map(|lane| {
                let sender = sender.clone();
                let stop = stop.clone();
                let acked = acked.clone();
                let deduplicated = deduplicated.clone();
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let message = format!("lane{lane}-{i}");
                        let receipt = send_until_acked(
                            &sender,
                            &submission(&message),
                            timeout,
                            retry_interval,
                        )
                        .await;
                        if receipt.deduplicated {
                            *deduplicated.lock().unwrap() += 1;
                        }
                        acked.lock().unwrap().insert(message, receipt.timestamp);
                    }
                })
            })
            .collect();
        SendLoad {
            stop,
            acked,
            deduplicated,
            lanes,
        }
    }

    /// How many messages have been acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops every lane after its current message; returns each acknowledged message's
    /// timestamp and how many acknowledgements were deduplicated resends.
    pub async fn stop(self) -> (HashMap<String, Timestamp>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for lane in self.lanes {
            lane.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        let deduplicated = *self.deduplicated.lock().unwrap();
        (acked, deduplicated)
    }
}

/// Every event a member's subscription delivers, as (timestamp, payload text), and the error
/// that ended it, if any.
pub struct DeliveryRecorder {
    delivered: Arc<Mutex<Vec<(Timestamp, String)>>>,
    error: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl DeliveryRecorder {
    /// Subscribes `receiver` from the start of its history and records what arrives.
    pub fn start(receiver: &SequencerClient) -> DeliveryRecorder {
        use futures::StreamExt;
        let delivered: Arc<Mutex<Vec<(Timestamp, String)>>> = Arc::default();
        let error: Arc<Mutex<Option<String>>> = Arc::default();
        let mut events = receiver.subscribe(None);
        let task = {
            let (delivered, error) = (delivered.clone(), error.clone());
            tokio::spawn(async move {
                while let Some(event) = events.next().await {
                    match event {
                        Ok(event) => {
                            let text =
                                String::from_utf8(event.envelopes[0].payload.clone()).unwrap();
                            delivered.lock().unwrap().push((event.timestamp, text));
                        }
                        Err(failure) => {
                            *error.lock().unwrap() = Some(failure.to_string());
                            return;
                        }
                    }
                }
            })
        };
        DeliveryRecorder {
            delivered,
            error,
            task,
        }
    }

    /// Waits (at most 20 s) until as many events arrived as `acked` holds, stops recording,
    /// and asserts that the subscription never failed, that timestamps strictly increase, and
    /// that every acknowledged message was delivered exactly once at its timestamp and
    /// nothing else was (sends in flight at a fault were retried until acknowledged, so every
    /// delivered event is an acknowledged one too).
    pub async fn assert_delivered_exactly(self, acked: &HashMap<String, Timestamp>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.delivered.lock().unwrap().len() < acked.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.task.abort();
        assert_eq!(*self.error.lock().unwrap(), None);
        let delivered = self.delivered.lock().unwrap().clone();
        for window in delivered.windows(2) {
            assert!(window[0].0 < window[1].0, "timestamps strictly increase");
        }
        let mut seen = HashMap::new();
        for (timestamp, message) in &delivered {
            assert!(
                seen.insert(message.clone(), *timestamp).is_none(),
                "{message} delivered twice"
            );
        }
        for (message, timestamp) in acked {
            assert_eq!(
                seen.get(message),
                Some(timestamp),
                "acknowledged {message} delivered at its timestamp"
            );
        }
        assert_eq!(delivered.len(), acked.len());
    }
}

/// The party called `name` (a valid id in every test).
pub fn party(name: &str) -> PartyId {
    PartyId::new(name).unwrap()
}

/// A command creating an IOU of `amount` USD from the bank to `owner`.
pub fn iou_create(owner: &str, amount: u64) -> Command {
    Command::Create {
        template: TemplateId::new("Iou").unwrap(),
        payload: IouPayload {
            issuer: party("bank"),
            owner: party(owner),
            amount,
            currency: "USD".into(),
        }
        .to_value(),
    }
}

/// A command transferring the IOU `contract` to `new_owner`.
pub fn transfer(contract: &Contract, new_owner: &str) -> Command {
    Command::Exercise {
        contract_id: contract.id.clone(),
        choice: "Transfer".into(),
        argument: serde_json::json!({ "new_owner": new_owner }),
    }
}

/// A gRPC client of `new`'s kind connected to `url`: plaintext for `http://`, TLS with the
/// lab's CA and client certificate (the process default the lab installs) for `https://`.
#[allow(dead_code)]
pub async fn grpc<C>(
    new: impl FnOnce(tonic::transport::Channel) -> C,
    url: impl Into<String>,
) -> Result<C, tonic::transport::Error> {
    endpoint(url)
        .expect("a usable endpoint")
        .connect()
        .await
        .map(new)
}

/// The tonic endpoint of `url`, with TLS for `https://` (see [`grpc`]).
#[allow(dead_code)]
pub fn endpoint(
    url: impl Into<String>,
) -> Result<tonic::transport::Endpoint, meridian_client::ClientError> {
    meridian_client::tls::endpoint(&url.into(), None, "test endpoint")
}
