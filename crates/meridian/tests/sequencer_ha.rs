//! Black-box tests of active-active sequencers: several `meridian sequencer` processes on one
//! database (a shared SQLite file, or PostgreSQL), clients that know every instance, and the
//! failures a deployment must ride out — an instance killed with SIGKILL under load, an
//! instance paused with SIGSTOP and resumed (a zombie of its old incarnation), and a second
//! process configured with an index that is already in use.
//!
//! What every scenario checks: each subscriber sees every acknowledged send exactly once, at its
//! acknowledged timestamp, in timestamp order, with an unbroken chain (the client would report a
//! fork otherwise); and subscribers resume within a bound after the failure. The measured
//! interruption is printed (`--nocapture`).

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use meridian_client::{register_member, SequencerClient, SequencerClientConfig};
use meridian_core::crypto::SigningKey;
use meridian_core::sequencing::{Envelope, Submission};
use meridian_core::{MemberId, MessageId, Timestamp};
use meridian_lab::deployment::configs::POSTGRES_POOL_CONNECTIONS;
use meridian_lab::launch::SequencerProcess;
use meridian_sequencer::config::InstanceConfig;
use meridian_sequencer::SequencerConfig;
use meridian_store::StorageConfig;
use meridian_testkit::PostgresServer;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

mod common;
use common::{SendLoad, EXE};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Instances per deployment in these tests (timestamps t with t % 4 == index).
const INSTANCE_COUNT: u32 = 4;
/// The generous bound asserted on a subscriber's interruption; the target is about 1 s.
const RESUME_BOUND: Duration = Duration::from_secs(5);
const SENDER_LANES: usize = 6;

fn id(name: &str) -> MemberId {
    MemberId::new(name).unwrap()
}

/// Timings set on every instance of a cluster; `None` keeps the default.
#[derive(Debug, Clone, Copy, Default)]
struct Timing {
    offline_after_ms: Option<u64>,
    watermark_interval_ms: Option<u64>,
}

impl Timing {
    fn offline_after_ms(offline_after_ms: u64) -> Self {
        Self {
            offline_after_ms: Some(offline_after_ms),
            ..Self::default()
        }
    }
}

/// Sets the instance index of a sequencer config, and the timings given.
fn instance(index: u32, timing: Timing) -> impl FnOnce(&mut SequencerConfig) {
    move |config| {
        config.instance = InstanceConfig {
            index,
            count: INSTANCE_COUNT,
        };
        if let Some(offline_after_ms) = timing.offline_after_ms {
            config.timing.offline_after_ms = offline_after_ms;
        }
        if let Some(watermark_interval_ms) = timing.watermark_interval_ms {
            config.timing.watermark_interval_ms = watermark_interval_ms;
        }
    }
}

/// The kill tests' `offline_after`: twice the resume bound, so that a subscriber resuming
/// within the bound proves the killed instance was found dead by its released presence lock,
/// not by its watermark's age.
const KILL_OFFLINE_AFTER_MS: u64 = 10_000;
/// The pause tests' `offline_after`: well within their 2 s pause, so that the paused instance
/// is marked offline by its watermark's age (the default, 2 s, would race the resume).
const PAUSE_OFFLINE_AFTER_MS: u64 = 500;

/// Several sequencer processes on one database.
struct Cluster {
    dir: TempDir,
    storage: StorageConfig,
    instances: Vec<SequencerProcess>,
    keys: HashMap<String, SigningKey>,
    timing: Timing,
}

impl Cluster {
    /// Starts `count` instances (indexes 0..count) one after the other.
    async fn start(backend: &str, count: u32) -> Cluster {
        Self::start_with(backend, count, Timing::default()).await
    }

    /// [`Cluster::start`] with `timing` set on every instance.
    async fn start_with(backend: &str, count: u32, timing: Timing) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let storage = match backend {
            "sqlite" => StorageConfig::Sqlite {
                path: dir.path().join("shared.db"),
            },
            _ => StorageConfig::Postgres {
                url: PostgresServer::shared().create_database("ha").unwrap(),
                max_connections: POSTGRES_POOL_CONNECTIONS,
            },
        };
        let mut cluster = Cluster {
            dir,
            storage,
            instances: Vec::new(),
            keys: HashMap::new(),
            timing,
        };
        for index in 0..count {
            let mut process = cluster.spawn(&format!("sequencer{index}"), index);
            process.wait_ready(READY_TIMEOUT).await.unwrap();
            cluster.instances.push(process);
        }
        cluster
    }

    /// Spawns a sequencer process named `name` with instance index `index` on the cluster's
    /// database, without waiting for it (nor counting it among the instances).
    fn spawn(&self, name: &str, index: u32) -> SequencerProcess {
        SequencerProcess::spawn(
            Path::new(EXE),
            self.dir.path(),
            name,
            &self.storage,
            instance(index, self.timing),
        )
        .unwrap()
    }

    fn endpoints(&self) -> Vec<String> {
        self.instances
            .iter()
            .map(SequencerProcess::grpc_endpoint)
            .collect()
    }

    async fn register(&mut self, name: &str) {
        let key = SigningKey::generate();
        assert!(register_member(
            &self.instances[0].grpc_endpoint(),
            &id(name),
            &key.public_key()
        )
        .await
        .unwrap());
        self.keys.insert(name.to_owned(), key);
    }

    /// A client of `name` knowing `endpoints`, in that order (subscriptions start on the first).
    async fn client(&self, name: &str, endpoints: Vec<String>) -> SequencerClient {
        let config = SequencerClientConfig {
            // A hung instance fails a send over after this long at the latest.
            request_timeout: Duration::from_secs(2),
            ..SequencerClientConfig::new(endpoints[0].clone(), id(name), self.keys[name].clone())
                .with_endpoints(endpoints)
        };
        SequencerClient::connect(config).await.unwrap()
    }

    async fn status(&self, instance: usize) -> serde_json::Value {
        let client = meridian_lab::tls::http().unwrap();
        common::admin_status(&client, self.instances[instance].admin_address).await
    }

    fn signal(&self, instance: usize, signal: Signal) {
        let pid = self.instances[instance].pid().expect("running");
        kill(Pid::from_raw(i32::try_from(pid).unwrap()), signal).unwrap();
    }

    fn log(&self, instance: usize) -> String {
        std::fs::read_to_string(&self.instances[instance].log_path).unwrap_or_default()
    }
}

fn submission(sender: &str, message_id: &str, recipients: &[&str]) -> Submission {
    Submission {
        sender: id(sender),
        message_id: MessageId::new(message_id).unwrap(),
        envelopes: vec![Envelope {
            recipients: recipients.iter().map(|r| id(r)).collect(),
            payload: message_id.as_bytes().to_vec(),
        }],
        max_sequencing_time: Timestamp::now().saturating_add(Duration::from_secs(60)),
    }
}

/// What one subscriber received: (timestamp, payload, when it arrived).
type Received = Arc<Mutex<Vec<(Timestamp, String, Instant)>>>;

struct Subscriber {
    name: String,
    received: Received,
    error: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

fn subscribe(name: &str, client: &SequencerClient) -> Subscriber {
    let received: Received = Arc::default();
    let error: Arc<Mutex<Option<String>>> = Arc::default();
    let mut events = client.subscribe(None);
    let task = tokio::spawn({
        let received = received.clone();
        let error = error.clone();
        async move {
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        let text = String::from_utf8(event.envelopes[0].payload.clone()).unwrap();
                        received
                            .lock()
                            .unwrap()
                            .push((event.timestamp, text, Instant::now()));
                    }
                    Err(failure) => {
                        *error.lock().unwrap() = Some(failure.to_string());
                        return;
                    }
                }
            }
        }
    });
    Subscriber {
        name: name.to_owned(),
        received,
        error,
        task,
    }
}

/// Waits until `subscriber` has everything acknowledged, then checks: strictly increasing
/// timestamps, no payload twice, every acknowledged send at its timestamp, nothing else.
/// Returns the longest pause between two deliveries in `[failure, failure + window]`.
async fn check_delivery(
    subscriber: &Subscriber,
    acked: &HashMap<String, Timestamp>,
    failure: Instant,
) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(30);
    while subscriber.received.lock().unwrap().len() < acked.len() && Instant::now() < deadline {
        if subscriber.error.lock().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        *subscriber.error.lock().unwrap(),
        None,
        "{}'s subscription ended",
        subscriber.name
    );
    let received = subscriber.received.lock().unwrap().clone();
    for pair in received.windows(2) {
        assert!(
            pair[0].0 < pair[1].0,
            "{}: timestamps strictly increase",
            subscriber.name
        );
    }
    let mut seen = HashMap::new();
    for (timestamp, message, _) in &received {
        assert!(
            seen.insert(message.clone(), *timestamp).is_none(),
            "{}: {message} delivered twice",
            subscriber.name
        );
    }
    for (message, timestamp) in acked {
        assert_eq!(
            seen.get(message),
            Some(timestamp),
            "{}: acknowledged {message} delivered at its timestamp",
            subscriber.name
        );
    }
    assert_eq!(
        received.len(),
        acked.len(),
        "{}: nothing but acknowledged sends",
        subscriber.name
    );
    // The interruption: the longest gap between deliveries from just before the failure on.
    let mut longest = Duration::ZERO;
    let mut previous: Option<Instant> = None;
    for (_, _, arrived) in &received {
        if *arrived + Duration::from_millis(200) < failure {
            previous = Some(*arrived);
            continue;
        }
        if let Some(previous) = previous {
            longest = longest.max(arrived.saturating_duration_since(previous.max(failure)));
        }
        previous = Some(*arrived);
    }
    longest
}

/// The full stream of `member` as served by each endpoint alone: identical everywhere.
async fn assert_same_stream_everywhere(cluster: &Cluster, member: &str, expected: usize) {
    let mut streams = Vec::new();
    for endpoint in cluster.endpoints() {
        let client = cluster.client(member, vec![endpoint.clone()]).await;
        let mut events = client.subscribe(None);
        let mut stream = Vec::new();
        while stream.len() < expected {
            let event = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .unwrap_or_else(|_| panic!("{endpoint} stopped after {} events", stream.len()))
                .expect("open")
                .expect("no error");
            stream.push((event.timestamp, event.previous_timestamp, event.envelopes));
        }
        streams.push(stream);
    }
    for stream in &streams[1..] {
        assert!(
            *stream == streams[0],
            "every instance serves {member} the same stream"
        );
    }
}

/// Two instances, load spread over both, a subscriber starting on each; `failure` hits
/// instance 0 under load. Returns the cluster for scenario-specific checks.
async fn under_load(backend: &str, failure: Failure) -> Cluster {
    let offline_after_ms = match failure {
        Failure::Kill => KILL_OFFLINE_AFTER_MS,
        // Found by its watermark's age, well within the 2 s pause.
        Failure::Pause(_) => PAUSE_OFFLINE_AFTER_MS,
    };
    let mut cluster =
        Cluster::start_with(backend, 2, Timing::offline_after_ms(offline_after_ms)).await;
    for name in ["alice", "bob", "carol"] {
        cluster.register(name).await;
    }
    let [a, b] = [0, 1].map(|i| cluster.instances[i].grpc_endpoint());

    // A send retried through the other instance is deduplicated there, not sequenced twice.
    let only_a = cluster.client("alice", vec![a.clone()]).await;
    let only_b = cluster.client("alice", vec![b.clone()]).await;
    let first = only_a
        .send(submission("alice", "probe", &["alice"]))
        .await
        .unwrap();
    let again = only_b
        .send(submission("alice", "probe", &["alice"]))
        .await
        .unwrap();
    assert!(!first.deduplicated);
    assert!(again.deduplicated, "deduplicated across instances");
    assert_eq!(again.timestamp, first.timestamp);

    let alice = cluster.client("alice", vec![a.clone(), b.clone()]).await;
    // bob starts on the instance that fails, carol on the survivor.
    let bob = subscribe(
        "bob",
        &cluster.client("bob", vec![a.clone(), b.clone()]).await,
    );
    let carol = subscribe(
        "carol",
        &cluster.client("carol", vec![b.clone(), a.clone()]).await,
    );
    // The client already fails over between instances; the load's outer retry only rides out
    // the rare case where every instance was unreachable for the client's whole backoff.
    let load = SendLoad::start(
        &alice,
        SENDER_LANES,
        |message| submission("alice", message, &["bob", "carol"]),
        Duration::from_secs(45),
        Duration::from_millis(100),
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before = load.acked_count();
    assert!(before > 0, "load was running before the failure");

    let failed_at = Instant::now();
    match failure {
        Failure::Kill => cluster.instances[0].kill9().unwrap(),
        Failure::Pause(pause) => {
            cluster.signal(0, Signal::SIGSTOP);
            tokio::time::sleep(pause).await;
            cluster.signal(0, Signal::SIGCONT);
        }
    }
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let (acked, deduplicated) = load.stop().await;
    assert!(
        acked.len() > before,
        "sends went on after the failure ({before} before, {} in all)",
        acked.len()
    );
    for subscriber in [&bob, &carol] {
        let interruption = check_delivery(subscriber, &acked, failed_at).await;
        println!(
            "{backend} {failure:?}: {} ({}) resumed after {} ms; {} sends acknowledged, {deduplicated} of them as duplicates of an earlier attempt",
            subscriber.name,
            if subscriber.name == "bob" { "on the failed instance" } else { "on the survivor" },
            interruption.as_millis(),
            acked.len(),
        );
        assert!(
            interruption < RESUME_BOUND,
            "{} was interrupted for {interruption:?}",
            subscriber.name
        );
    }
    bob.task.abort();
    carol.task.abort();
    cluster
}

#[derive(Debug, Clone, Copy)]
enum Failure {
    Kill,
    Pause(Duration),
}

/// How many peers instance `instance` marked offline on `evidence`, from its metrics.
async fn marked_offline(cluster: &Cluster, instance: usize, evidence: &str) -> u64 {
    counter(
        cluster,
        instance,
        &format!("meridian_sequencer_peers_marked_offline_total{{evidence=\"{evidence}\"}}"),
    )
    .await
}

/// The value of counter `series` (name and labels) in instance `instance`'s metrics; 0 when
/// absent.
async fn counter(cluster: &Cluster, instance: usize, series: &str) -> u64 {
    let client = meridian_lab::tls::http().unwrap();
    let metrics = common::admin_metrics(&client, cluster.instances[instance].admin_address).await;
    let prefix = format!("{series} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .map_or(0, |value| value.trim().parse().unwrap())
}

async fn kill9_one_instance(backend: &str) {
    let mut cluster = under_load(backend, Failure::Kill).await;
    // Found dead by its released lock (its watermark's age would take 10 s), exactly once.
    assert_eq!(marked_offline(&cluster, 1, "lock_released").await, 1);
    assert_eq!(marked_offline(&cluster, 1, "watermark_still").await, 0);
    // The killed instance comes back: its row was marked offline, so it claims it at once and
    // joins above the survivor; then both serve the same history.
    cluster.instances[0].start(Path::new(EXE)).unwrap();
    cluster.instances[0]
        .wait_ready(READY_TIMEOUT)
        .await
        .unwrap();
    let incarnation = cluster.status(0).await["incarnation"].as_i64().unwrap();
    assert!(incarnation >= 2, "a new incarnation: {incarnation}");
    let probes = cluster.client("alice", cluster.endpoints()).await;
    let receipt = probes
        .send(submission("alice", "after-restart", &["bob"]))
        .await
        .unwrap();
    assert!(!receipt.deduplicated);
    let expected = count_events_of(&cluster, "bob").await;
    assert_same_stream_everywhere(&cluster, "bob", expected).await;
}

/// How many events `member` has, read through instance 1.
async fn count_events_of(cluster: &Cluster, member: &str) -> usize {
    let client = cluster
        .client(member, vec![cluster.instances[1].grpc_endpoint()])
        .await;
    let mut events = client.subscribe(None);
    let mut count = 0;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(2), events.next()).await {
        count += 1;
    }
    count
}

async fn sigstop_one_instance(backend: &str) {
    let mut cluster = under_load(backend, Failure::Pause(Duration::from_secs(2))).await;
    assert!(
        cluster.instances[0].is_running(),
        "the resumed instance rejoins, it does not exit"
    );
    cluster.instances[0]
        .wait_ready(READY_TIMEOUT)
        .await
        .unwrap();
    let incarnation = cluster.status(0).await["incarnation"].as_i64().unwrap();
    // A stopped process keeps its presence lock: it is never taken for dead on that evidence.
    assert_eq!(marked_offline(&cluster, 1, "lock_released").await, 0);
    let log = cluster.log(0);
    let fenced = log.contains("marked offline by its peers");
    println!("{backend}: the paused instance is at incarnation {incarnation}; fenced on resume: {fenced}");
    if backend == "postgres" {
        // Its peers always mark it offline (the server ends a transaction it was paused in),
        // so its first write after resuming is refused and it rejoins with a new incarnation.
        assert!(fenced, "log of the paused instance:\n{log}");
        assert!(incarnation >= 2, "rejoined with a new incarnation");
    } else {
        // On SQLite a pause inside a write transaction holds the file lock: nobody progressed
        // meanwhile and the instance may carry on with its incarnation. Otherwise it rejoins.
        assert_eq!(
            fenced,
            incarnation >= 2,
            "log of the paused instance:\n{log}"
        );
    }
    // It serves again, and the same history as its peer.
    let only_a = cluster
        .client("alice", vec![cluster.instances[0].grpc_endpoint()])
        .await;
    only_a
        .send(submission("alice", "after-resume", &["bob"]))
        .await
        .unwrap();
    let expected = count_events_of(&cluster, "bob").await;
    assert_same_stream_everywhere(&cluster, "bob", expected).await;
}

/// A send to one instance whose peer's watermark is behind it is delivered at once: the peer
/// sees the event waiting above the safe point and advances its watermark (a catch-up)
/// instead of waiting for its next heartbeat. The heartbeat here comes every 10 s, and the
/// peer is never idle long enough (4 intervals) to promise a lead, so without catch-ups each
/// of the sends one after the other would wait for most of 10 s.
async fn a_peer_releases_an_event_at_once_instead_of_at_its_heartbeat(backend: &str) {
    const HEARTBEAT_MS: u64 = 10_000;
    const SENDS: usize = 5;
    let mut cluster = Cluster::start_with(
        backend,
        2,
        Timing {
            offline_after_ms: Some(HEARTBEAT_MS * 3),
            watermark_interval_ms: Some(HEARTBEAT_MS),
        },
    )
    .await;
    for name in ["alice", "bob"] {
        cluster.register(name).await;
    }
    let on_0 = vec![cluster.instances[0].grpc_endpoint()];
    let sender = cluster.client("alice", on_0.clone()).await;
    let receiver = subscribe("bob", &cluster.client("bob", on_0).await);
    for n in 0..SENDS {
        let sent = Instant::now();
        sender
            .send(submission("alice", &format!("m{n}"), &["bob"]))
            .await
            .unwrap();
        loop {
            if receiver.received.lock().unwrap().len() > n {
                break;
            }
            assert!(
                receiver.error.lock().unwrap().is_none(),
                "{:?}",
                receiver.error
            );
            // Well short of the heartbeat: only a catch-up delivers this soon.
            assert!(
                sent.elapsed() < Duration::from_millis(HEARTBEAT_MS / 2),
                "send {n} not delivered after {:?}",
                sent.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let catch_ups = counter(&cluster, 1, "meridian_sequencer_watermark_catch_ups_total").await;
    assert!(
        catch_ups >= SENDS as u64,
        "instance 1 caught up {catch_ups} times for {SENDS} sends"
    );
    receiver.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_releases_an_event_at_once_instead_of_at_its_heartbeat_sqlite() {
    a_peer_releases_an_event_at_once_instead_of_at_its_heartbeat("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_releases_an_event_at_once_instead_of_at_its_heartbeat_postgres() {
    a_peer_releases_an_event_at_once_instead_of_at_its_heartbeat("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_one_of_two_instances_sqlite() {
    kill9_one_instance("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_one_of_two_instances_postgres() {
    kill9_one_instance("postgres").await;
}

/// A lone instance killed and started again: the new process takes the index's presence lock,
/// which proves its predecessor dead, and claims the row at once instead of waiting for the
/// predecessor's watermark to be `offline_after` (here 10 s) old.
async fn a_restart_after_a_kill_claims_its_index_at_once(backend: &str) {
    let mut cluster =
        Cluster::start_with(backend, 1, Timing::offline_after_ms(KILL_OFFLINE_AFTER_MS)).await;
    cluster.instances[0].kill9().unwrap();
    let restarted = Instant::now();
    cluster.instances[0].start(Path::new(EXE)).unwrap();
    cluster.instances[0]
        .wait_ready(READY_TIMEOUT)
        .await
        .unwrap();
    let waited = restarted.elapsed();
    println!(
        "{backend}: the restarted instance was ready after {} ms",
        waited.as_millis()
    );
    assert!(
        waited < Duration::from_millis(KILL_OFFLINE_AFTER_MS / 2),
        "the restart waited {waited:?}, as if for the killed process's watermark to go stale"
    );
    let incarnation = cluster.status(0).await["incarnation"].as_i64().unwrap();
    assert_eq!(incarnation, 2, "the row was claimed by a new incarnation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_kill_claims_its_index_at_once_sqlite() {
    a_restart_after_a_kill_claims_its_index_at_once("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_kill_claims_its_index_at_once_postgres() {
    a_restart_after_a_kill_claims_its_index_at_once("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_one_of_two_instances_sqlite() {
    sigstop_one_instance("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_one_of_two_instances_postgres() {
    sigstop_one_instance("postgres").await;
}

/// Waits up to 20 s for `process` (named `what` in the failure) to exit on its own.
async fn wait_stopped(process: &mut SequencerProcess, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while process.is_running() {
        assert!(Instant::now() < deadline, "{what} is still running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A second process configured with an index a live process holds refuses to start and leaves
/// the running one alone.
async fn same_index_twice(backend: &str) {
    let mut cluster = Cluster::start(backend, 1).await;
    cluster.register("alice").await;
    let mut twin = cluster.spawn("twin", 0);
    wait_stopped(&mut twin, "the twin").await;
    let log = twin.log_tail(20);
    assert!(log.contains("instance index 0 is taken"), "{log}");
    assert_eq!(cluster.status(0).await["incarnation"], 1);
    let alice = cluster.client("alice", cluster.endpoints()).await;
    alice
        .send(submission("alice", "still-serving", &["alice"]))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_taken_index_refuses_to_start_sqlite() {
    same_index_twice("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_taken_index_refuses_to_start_postgres() {
    same_index_twice("postgres").await;
}

/// A process paused long enough for its watermark to go stale is taken over by a new process
/// with the same index; when the old one resumes, its writes are refused as superseded and it
/// stops, and the new one goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_zombie_of_a_replaced_process_stops() {
    let mut cluster = Cluster::start("postgres", 1).await;
    cluster.register("alice").await;
    cluster.signal(0, Signal::SIGSTOP);
    let mut replacement = cluster.spawn("replacement", 0);
    replacement.wait_ready(READY_TIMEOUT).await.unwrap();
    cluster.signal(0, Signal::SIGCONT);
    wait_stopped(&mut cluster.instances[0], "the zombie").await;
    let log = cluster.log(0);
    assert!(
        log.contains("another process claimed this sequencer instance"),
        "{log}"
    );
    let alice = cluster
        .client("alice", vec![replacement.grpc_endpoint()])
        .await;
    let receipt = alice
        .send(submission("alice", "after-takeover", &["alice"]))
        .await
        .unwrap();
    let mut events = alice.subscribe(None);
    let event = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.timestamp, receipt.timestamp);
}

/// HAProxy's one sequencer frontend in front of two instances, as `[load_balancer]` configures
/// it: members that know only the frontend send and subscribe through it; when instance 0 is
/// killed under load, HAProxy marks it down and sends the reconnects to the survivor, and the
/// subscription resumes with every acknowledged send exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_members_reach_the_surviving_instance_after_a_kill() {
    use meridian_lb::{haproxy, Frontend, Haproxy, HaproxyFiles, HealthChecks, LbPlan, LbTls};

    let Some(binary) = meridian_testkit::haproxy::binary() else {
        return;
    };
    let mut cluster = Cluster::start("sqlite", 2).await;
    for name in ["alice", "bob"] {
        cluster.register(name).await;
    }
    // HAProxy checks the instances' /readyz with the directory's node certificate.
    let tls_dir = meridian_lab::tls::tls_dir(cluster.dir.path());
    let node = meridian_lab::tls::STANDALONE_NODE;
    let pem = tls_dir.join("haproxy.pem");
    let identity = std::fs::read_to_string(tls_dir.join(format!("{node}.crt"))).unwrap()
        + &std::fs::read_to_string(tls_dir.join(format!("{node}.key"))).unwrap();
    meridian_node::certs::write_private(&pem, identity.as_bytes()).unwrap();
    let files = HaproxyFiles::new(cluster.dir.path().join("haproxy"));
    let bind = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let plan = LbPlan {
        active_region: "region-1".to_owned(),
        runtime_socket: files.socket(),
        tls: LbTls::Mutual {
            ca_file: tls_dir.join(meridian_node::certs::CA_CERT_FILE),
            identity_pem: pem,
        },
        checks: HealthChecks::default(),
        frontends: vec![Frontend {
            name: "sequencer".to_owned(),
            traffic: meridian_lb::Traffic::Sequencer,
            bind,
            servers: cluster
                .instances
                .iter()
                .map(|i| meridian_lb::Server {
                    name: i.name().to_owned(),
                    region: "region-1".to_owned(),
                    grpc: i.grpc_address,
                    admin: i.admin_address,
                })
                .collect(),
        }],
    };
    haproxy::write_config(&binary, &files, &plan).unwrap();
    let _haproxy = Haproxy::start(&binary, &files, false).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while haproxy::server_states(&files.socket())
        .await
        .unwrap()
        .iter()
        .filter(|s| s.is_up())
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "both instances up in HAProxy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let frontend = meridian_lab::tls::url(bind);
    let alice = cluster.client("alice", vec![frontend.clone()]).await;
    let bob = subscribe("bob", &cluster.client("bob", vec![frontend.clone()]).await);
    let load = SendLoad::start(
        &alice,
        SENDER_LANES,
        |message| submission("alice", message, &["bob"]),
        Duration::from_secs(45),
        Duration::from_millis(100),
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before = load.acked_count();
    assert!(
        before > 0,
        "sends went through the frontend before the kill"
    );
    let failed_at = Instant::now();
    cluster.instances[0].kill9().unwrap();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let (acked, _) = load.stop().await;
    assert!(
        acked.len() > before,
        "sends went on through the frontend after the kill ({before} before, {} in all)",
        acked.len()
    );
    let interruption = check_delivery(&bob, &acked, failed_at).await;
    println!(
        "through HAProxy: bob resumed after {} ms; {} sends acknowledged",
        interruption.as_millis(),
        acked.len()
    );
    assert!(
        interruption < RESUME_BOUND,
        "bob was interrupted for {interruption:?}"
    );
    let states = haproxy::server_states(&files.socket()).await.unwrap();
    let up: Vec<&str> = states
        .iter()
        .filter(|s| s.is_up())
        .map(|s| s.server.as_str())
        .collect();
    assert_eq!(up, [cluster.instances[1].name()], "{states:?}");
    bob.task.abort();
}
