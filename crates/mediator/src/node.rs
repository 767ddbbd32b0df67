//! The mediator node: wires the store, the topology, the sequencer client and the engine
//! together and performs the engine's effects.
//!
//! Start-up order matters for operators: the admin HTTP server comes up first so `/readyz` can
//! say *why* the mediator is not working yet (database unreachable or read-only, topology
//! manager not answering, sequencer refusing us). Then: open the store, sync the topology,
//! rebuild the engine from the persisted pending requests, re-send the verdicts that were
//! decided but not known to be sent, and subscribe after the checkpoint.
//!
//! One task owns the engine and processes events strictly in order. It takes whatever run of
//! events the subscription has buffered (up to [`MAX_EVENTS_PER_COMMIT`]), feeds them to the
//! engine, and stores every resulting change with the new checkpoint in one transaction; only
//! after that commit are the run's verdicts handed to the sender task. So a crash at any point
//! either loses a whole run (replayed from the checkpoint, reaching the same verdicts, whose
//! re-sends the sequencer deduplicates by message id) or nothing. The sender task sends with
//! bounded concurrency and marks verdicts sent in batches.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{FutureExt as _, StreamExt as _};
use meridian_client::{ClientError, SequencerClient, SequencerClientConfig};
use meridian_core::crypto::{PublicKey, SigningKey, SigningPurpose};
use meridian_core::protocol::{ProtocolMessage, Signed, Verdict};
use meridian_core::sequencing::{Envelope, SequencedEvent, Submission};
use meridian_core::topology::TopologyState;
use meridian_core::{MemberId, MessageId, ParticipantId, Timestamp};
use meridian_node::admin::{self, AdminState, StatusSource};
use meridian_node::conditions::Conditions;
use meridian_node::health::Health;
use meridian_node::metrics::Metrics;
use meridian_node::replica::ReplicaManager;
use meridian_node::replication::{self, Replication};
use meridian_store::mediator::{MediatorChange, MediatorStore};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::MediatorConfig;
use crate::engine::{Effect, MediatorEngine};
use crate::metrics::MediatorMetrics;
use crate::persist;

/// Events stored per database transaction at most. At ~3,000 events/s and a commit of a few
/// milliseconds, runs stay far below this; the bound keeps one transaction's size in check
/// after a long outage, when the subscription delivers a backlog.
pub const MAX_EVENTS_PER_COMMIT: usize = 1_000;
/// Verdicts and time proofs waiting for the sender task. When full, the event loop waits:
/// back-pressure instead of unbounded memory.
const OUTGOING_QUEUE: usize = 4_096;
/// Sends in flight at once. The sequencer batches concurrent sends into one commit, so
/// throughput needs concurrency; the bound keeps a slow sequencer from drowning in retries.
const MAX_IN_FLIGHT_SENDS: usize = 64;
/// How long a verdict may wait to be sequenced. Re-sends of the same verdict reuse its message
/// id, so the sequencer deduplicates them within this window (plus its retention).
const VERDICT_SEND_WINDOW: Duration = Duration::from_secs(30);
const TIME_PROOF_SEND_WINDOW: Duration = Duration::from_secs(5);
/// Spacing of retries of the database, topology manager, subscription and failed sends.
const RETRY_INITIAL: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often sent verdicts are marked in the store (one small transaction each).
const MARK_SENT_INTERVAL: Duration = Duration::from_millis(200);
/// Sent-verdict ids kept for marking while the database is away; beyond this the oldest are
/// dropped, which only means they are re-sent (and deduplicated) after a restart.
const MAX_UNMARKED_SENT: usize = 100_000;
/// Sent verdicts are kept this long in sequencer time for inspection, then pruned.
const VERDICT_RETENTION: Duration = Duration::from_secs(600);
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// What `/status` shows; updated by the event loop, read by the admin server.
#[derive(Debug, Default)]
struct StatusState {
    pending_requests: AtomicU64,
    last_event_us: AtomicU64,
    verdicts_decided: AtomicU64,
    verdicts_sent: AtomicU64,
}

struct MediatorStatus {
    member: MemberId,
    backend: &'static str,
    state: Arc<StatusState>,
    /// Set once a replicated mediator has its lease store.
    replication: ReplicationSlot,
}

/// The replica role of a replicated mediator, once known; empty for an unreplicated one.
type ReplicationSlot = Arc<OnceLock<Arc<Replication>>>;

impl StatusSource for MediatorStatus {
    fn status(&self) -> serde_json::Value {
        let last = self.state.last_event_us.load(Ordering::Relaxed);
        let mut status = serde_json::json!({
            "role": "mediator",
            "member_id": self.member.as_str(),
            "backend": self.backend,
            "pending_requests": self.state.pending_requests.load(Ordering::Relaxed),
            "last_processed_us": (last > 0).then_some(last),
            "verdicts_decided": self.state.verdicts_decided.load(Ordering::Relaxed),
            "verdicts_sent": self.state.verdicts_sent.load(Ordering::Relaxed),
        });
        if let Some(replication) = self.replication.get() {
            status["replication"] = replication.status();
        }
        status
    }
}

/// What the sender task sends.
#[derive(Debug)]
enum Outgoing {
    Verdict {
        request_id: Timestamp,
        recipients: Vec<MemberId>,
        verdict: Verdict,
    },
    TimeProof,
}

/// Runs a mediator until `shutdown` is cancelled. Returns an error for what a restart will not
/// fix by itself (an unusable key file, a fork in the sequencer's history, corrupt state).
pub async fn run(config: MediatorConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    // A child, so that stopping on a fatal error stops our tasks but not the caller's others.
    let shutdown = shutdown.child_token();
    let health = Health::new();
    let readiness = Conditions::new(health.clone());
    readiness.fail("startup", "starting");
    let metrics = Arc::new(Metrics::new("meridian"));
    let mediator_metrics = metrics.with_registry(MediatorMetrics::register);
    let status_state = Arc::new(StatusState::default());

    let admin_listener = admin::bind(config.admin_address).await?;
    let backend = match config.storage {
        meridian_store::StorageConfig::Sqlite { .. } => "sqlite",
        meridian_store::StorageConfig::Postgres { .. } => "postgres",
    };
    let replication = ReplicationSlot::default();
    let step_down = config.replication.is_some().then(|| {
        let replication = replication.clone();
        Arc::new(move || replication.get().is_some_and(|r| r.step_down()))
            as Arc<dyn Fn() -> bool + Send + Sync>
    });
    let admin_state = AdminState {
        health: health.clone(),
        metrics: metrics.clone(),
        status: Arc::new(MediatorStatus {
            member: config.member_id.clone(),
            backend,
            state: status_state.clone(),
            replication: replication.clone(),
        }),
        step_down,
    };
    let admin_task = tokio::spawn(admin::serve_admin(
        admin_listener,
        admin_state,
        shutdown.clone(),
    ));

    let result = serve(
        Arc::new(config),
        health.clone(),
        readiness.clone(),
        mediator_metrics,
        status_state,
        replication,
        &shutdown,
    )
    .await;
    if let Err(error) = &result {
        health.set_failed(format!("{error:#}"));
    }
    readiness.fail("shutdown", "shutting down");
    // The admin server stops with the shutdown token; on a fatal error, stop it too.
    shutdown.cancel();
    let _ = admin_task.await;
    tracing::info!("mediator stopped");
    result
}

/// What the active work needs; shared by every promotion of a replicated mediator.
#[derive(Clone)]
struct Active {
    config: Arc<MediatorConfig>,
    key: SigningKey,
    owner: PublicKey,
    store: Arc<dyn MediatorStore>,
    health: Health,
    readiness: Conditions,
    metrics: MediatorMetrics,
    status: Arc<StatusState>,
    /// `None` for an unreplicated mediator, which is active from the start.
    replication: Option<Arc<Replication>>,
}

/// Readiness conditions only the active work sets. A replica that stops being active clears
/// them, so its `/readyz` reason says "passive", not what the old work last saw.
const ACTIVE_CONDITIONS: [&str; 3] = ["topology", "subscription", "sequencer"];

async fn serve(
    config: Arc<MediatorConfig>,
    health: Health,
    readiness: Conditions,
    metrics: MediatorMetrics,
    status: Arc<StatusState>,
    replication_slot: ReplicationSlot,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let key = meridian_node::keys::load_or_create_key(&config.key_file)?;
    let owner = config
        .owner_key()
        .context("owner_public_key is not a hex ed25519 public key")?;
    tracing::info!(member = %config.member_id, public_key = %key.public_key(), "mediator key loaded");

    let Some(store) = connect_store(&config, &readiness, shutdown).await else {
        return Ok(());
    };
    let mut active = Active {
        config: config.clone(),
        key,
        owner,
        store,
        health,
        readiness: readiness.clone(),
        metrics,
        status,
        replication: None,
    };
    let Some(settings) = config.replica_settings() else {
        return serve_active(active, shutdown.clone()).await;
    };

    // Replicated: warm (admin HTTP up, database open) but passive until the lease is ours.
    let node = settings.node.clone();
    let lease = retry_store("opening the replica lease", &readiness, shutdown, || {
        let (storage, node) = (config.storage.clone(), node.clone());
        Box::pin(async move { meridian_store::open_lease_store(&storage, &node).await })
    })
    .await;
    let Some(lease) = lease else {
        return Ok(());
    };
    tracing::info!(replica = %settings.replica_id, endpoint = %settings.advertised_endpoint, "mediator replica starting passive");
    let replication = Arc::new(Replication::new(
        ReplicaManager::new(settings, lease, active.store.fence()),
        readiness.clone(),
    ));
    let _ = replication_slot.set(replication.clone());
    let follower = tokio::spawn(replication.clone().follow(shutdown.clone()));
    active.replication = Some(replication.clone());
    readiness.clear("startup");
    let result = replication
        .run(shutdown, |token| {
            let active = active.clone();
            async move {
                let readiness = active.readiness.clone();
                let result = serve_active(active, token).await;
                for condition in ACTIVE_CONDITIONS {
                    readiness.clear(condition);
                }
                result
            }
        })
        .await;
    follower.abort();
    result
}

/// The active mediator: everything a start from the database does, then the event loop until
/// `shutdown` (for a replica: until it stops being active). Restoring from the store is the
/// whole of a promotion's catch-up: the pending requests and the checkpoint, the verdicts
/// decided but not known to be sent, then the stream replayed from the checkpoint.
///
/// Why a failover does not time requests out: the TIMEOUT decision is a function of the
/// sequenced stream alone — a request times out when an event stamped after its deadline is
/// processed before the approvals. Confirmation responses are sent to the sequencer, not to
/// the mediator, so they are sequenced (and their order against the deadline is fixed) whether
/// or not any mediator replica is up. The promoted replica replays every event after the
/// checkpoint in sequencer order, so a response sequenced before the deadline is processed
/// before any later event and the request is approved, however long the takeover took. The
/// takeover time (about `poll_interval_ms` after a crash or a step-down, `lease_timeout_ms`
/// for a stuck active) against `response_timeout_ms` (10 s by default) therefore bounds only
/// how late the verdict arrives, never which verdict it is; and time proofs, the one thing a
/// missing mediator does not send, only move time forward for requests whose responses are
/// genuinely missing. Verdicts the old active had decided are re-sent under the same message
/// id, which the sequencer deduplicates (its window is 30 s, far beyond a takeover).
async fn serve_active(active: Active, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Active {
        config,
        key,
        owner,
        store,
        health,
        readiness,
        metrics,
        status,
        replication,
    } = active;
    let shutdown = &shutdown;
    let Some(topology) =
        sync_topology(&config, TopologyState::new(owner), &readiness, shutdown).await
    else {
        return Ok(());
    };
    let Some(snapshot) = retry_store("loading the mediator state", &readiness, shutdown, || {
        store.load()
    })
    .await
    else {
        return Ok(());
    };
    let requests = snapshot
        .pending
        .into_iter()
        .map(persist::restored)
        .collect::<Result<Vec<_>, _>>()?;
    let engine = MediatorEngine::restore(
        config.member_id.clone(),
        topology,
        config.response_timeout(),
        snapshot.checkpoint,
        requests,
    );
    tracing::info!(
        checkpoint = ?snapshot.checkpoint,
        pending = engine.pending_count(),
        unsent_verdicts = snapshot.unsent.len(),
        "mediator state restored"
    );
    status
        .pending_requests
        .store(engine.pending_count() as u64, Ordering::Relaxed);
    metrics.pending_requests.set(engine.pending_count() as i64);
    if let Some(checkpoint) = snapshot.checkpoint {
        status
            .last_event_us
            .store(checkpoint.as_micros(), Ordering::Relaxed);
    }

    let Some(client) = connect_sequencer(&config, key.clone(), &readiness, shutdown).await else {
        return Ok(());
    };

    let (outgoing, outgoing_rx) = mpsc::channel(OUTGOING_QUEUE);
    let sender_task = tokio::spawn(
        Sender {
            client: client.clone(),
            key,
            member: config.member_id.clone(),
            store: store.clone(),
            readiness: readiness.clone(),
            metrics: metrics.clone(),
            status: status.clone(),
            shutdown: shutdown.clone(),
        }
        .run(outgoing_rx),
    );
    for record in snapshot.unsent {
        let verdict = persist::verdict(&record)?;
        let job = Outgoing::Verdict {
            request_id: record.request_id,
            recipients: record.recipients,
            verdict,
        };
        if outgoing.send(job).await.is_err() {
            break;
        }
    }

    let event_loop = EventLoop {
        engine,
        store,
        client,
        outgoing,
        readiness: readiness.clone(),
        metrics,
        status,
        time_proof_interval: config.time_proof_interval(),
    };
    match &replication {
        Some(replication) => replication.serving(),
        None => readiness.clear("startup"),
    }
    let result = event_loop.run(&health, shutdown).await;
    shutdown.cancel();
    let _ = sender_task.await;
    result
}

struct EventLoop {
    engine: MediatorEngine,
    store: Arc<dyn MediatorStore>,
    client: SequencerClient,
    outgoing: mpsc::Sender<Outgoing>,
    readiness: Conditions,
    metrics: MediatorMetrics,
    status: Arc<StatusState>,
    time_proof_interval: Duration,
}

/// The effects of a run of events, to carry out after its commit.
#[derive(Default)]
struct RunOutput {
    changes: Vec<MediatorChange>,
    verdicts: Vec<Outgoing>,
}

impl EventLoop {
    async fn run(mut self, health: &Health, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut subscription = self.client.subscribe(self.engine.last_event());
        self.readiness.clear("subscription");
        let mut retry_delay = RETRY_INITIAL;
        let mut quiet_until = tokio::time::Instant::now() + self.time_proof_interval;
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                next = subscription.next() => next,
                () = tokio::time::sleep_until(quiet_until) => {
                    quiet_until = tokio::time::Instant::now() + self.time_proof_interval;
                    self.on_quiet();
                    continue;
                }
            };
            let mut run = Vec::new();
            let mut ended = None;
            match next {
                Some(Ok(event)) => run.push(event),
                Some(Err(error)) => ended = Some(error),
                None => {
                    ended = Some(ClientError::Protocol(
                        "the subscription ended without an error".to_owned(),
                    ))
                }
            }
            // Whatever else is buffered already joins this run: one commit for all of it.
            while ended.is_none() && !run.is_empty() && run.len() < MAX_EVENTS_PER_COMMIT {
                match subscription.next().now_or_never() {
                    Some(Some(Ok(event))) => run.push(event),
                    Some(Some(Err(error))) => ended = Some(error),
                    Some(None) => {
                        ended = Some(ClientError::Protocol(
                            "the subscription ended without an error".to_owned(),
                        ))
                    }
                    None => break,
                }
            }
            if !run.is_empty() {
                quiet_until = tokio::time::Instant::now() + self.time_proof_interval;
                if !self.process_run(run, shutdown).await {
                    return Ok(());
                }
                retry_delay = RETRY_INITIAL;
            }
            let Some(error) = ended else { continue };
            if let ClientError::Fork(fork) = &error {
                // Never continue past a fork: the history we decided on is not the sequencer's.
                health.set_failed(format!("sequencer history forked: {fork}"));
                anyhow::bail!("stopped processing: {fork}");
            }
            if self
                .readiness
                .fail("subscription", format!("subscription interrupted: {error}"))
            {
                tracing::warn!(%error, after = ?self.engine.last_event(), "subscription ended; resubscribing");
            }
            drop(subscription);
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(retry_delay) => {}
            }
            retry_delay = (retry_delay * 2).min(RETRY_MAX);
            // Every processed event is persisted by now, so the engine's last event is the
            // stored checkpoint: exactly where the chain check must start.
            subscription = self.client.subscribe(self.engine.last_event());
            self.readiness.clear("subscription");
        }
    }

    /// Feeds a run of events to the engine, persists the outcome and hands its verdicts to the
    /// sender. Returns false on shutdown.
    async fn process_run(
        &mut self,
        run: Vec<SequencedEvent>,
        shutdown: &CancellationToken,
    ) -> bool {
        let events = run.len();
        let mut output = RunOutput::default();
        let mut checkpoint = None;
        for event in run {
            checkpoint = Some(event.timestamp);
            let mut fed = false;
            for envelope in &event.envelopes {
                match ProtocolMessage::decode(&envelope.payload) {
                    Ok(message) => {
                        fed = true;
                        let effects =
                            self.engine
                                .on_event(event.timestamp, event.sender.clone(), message);
                        self.collect(effects, &mut output);
                    }
                    Err(error) => {
                        tracing::warn!(timestamp = %event.timestamp, sender = %event.sender, %error, "ignoring a malformed envelope");
                        self.metrics.count_ignored("malformed_envelope", false);
                    }
                }
            }
            if !fed {
                let effects = self.engine.on_time(event.timestamp);
                self.collect(effects, &mut output);
            }
        }
        let Some(checkpoint) = checkpoint else {
            return true;
        };

        let started = Instant::now();
        let store = self.store.clone();
        let changes = output.changes;
        let persisted = retry_store(
            "storing processed events",
            &self.readiness,
            shutdown,
            || store.apply(&changes, checkpoint),
        )
        .await;
        if persisted.is_none() {
            return false;
        }
        self.metrics
            .commit_latency_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.batch_size.observe(events as f64);
        self.metrics.events.inc_by(events as u64);
        self.metrics
            .last_event_us
            .set(i64::try_from(checkpoint.as_micros()).unwrap_or(i64::MAX));
        self.metrics
            .pending_requests
            .set(self.engine.pending_count() as i64);
        self.status
            .last_event_us
            .store(checkpoint.as_micros(), Ordering::Relaxed);
        self.status
            .pending_requests
            .store(self.engine.pending_count() as u64, Ordering::Relaxed);
        for job in output.verdicts {
            if let Outgoing::Verdict { verdict, .. } = &job {
                self.metrics.count_verdict(&verdict.outcome);
                self.status.verdicts_decided.fetch_add(1, Ordering::Relaxed);
            }
            if self.outgoing.send(job).await.is_err() {
                // The sender stops only at shutdown; the verdict stays unsent in the store.
                return false;
            }
        }
        true
    }

    fn collect(&self, effects: Vec<Effect>, output: &mut RunOutput) {
        for effect in effects {
            match effect {
                Effect::Persist(change) => output.changes.push(persist::to_store(&change)),
                Effect::SendVerdict {
                    request_id,
                    informee_participants,
                    verdict,
                } => output.verdicts.push(Outgoing::Verdict {
                    request_id,
                    recipients: informee_participants
                        .iter()
                        .map(ParticipantId::as_member)
                        .collect(),
                    verdict,
                }),
                Effect::RequestTimeProof => self.request_time_proof(),
                Effect::Ignored(ignored) => {
                    if ignored.is_suspicious() {
                        tracing::warn!(reason = ignored.reason(), "ignored: {ignored}");
                    } else {
                        tracing::debug!(reason = ignored.reason(), "ignored: {ignored}");
                    }
                    self.metrics
                        .count_ignored(ignored.reason(), ignored.is_invalid_response());
                }
            }
        }
    }

    fn on_quiet(&mut self) {
        let effects = self.engine.on_quiet();
        let mut output = RunOutput::default();
        self.collect(effects, &mut output);
        debug_assert!(output.changes.is_empty() && output.verdicts.is_empty());
    }

    fn request_time_proof(&self) {
        // Never wait for queue space here: a full queue means traffic, and traffic moves time.
        match self.outgoing.try_send(Outgoing::TimeProof) {
            Ok(()) => {
                self.metrics.time_proofs.inc();
            }
            Err(error) => tracing::debug!(%error, "time proof not queued"),
        }
    }
}

/// Sends verdicts and time proofs, marks verdicts sent, prunes old ones.
struct Sender {
    client: SequencerClient,
    key: SigningKey,
    member: MemberId,
    store: Arc<dyn MediatorStore>,
    readiness: Conditions,
    metrics: MediatorMetrics,
    status: Arc<StatusState>,
    shutdown: CancellationToken,
}

impl Sender {
    async fn run(self, mut jobs: mpsc::Receiver<Outgoing>) {
        let this = Arc::new(self);
        let mut in_flight: JoinSet<Option<Timestamp>> = JoinSet::new();
        let mut unmarked: Vec<Timestamp> = Vec::new();
        let mut mark = tokio::time::interval(MARK_SENT_INTERVAL);
        mark.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(PRUNE_INTERVAL);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut time_proof_seq: u64 = 0;
        loop {
            tokio::select! {
                () = this.shutdown.cancelled() => break,
                job = jobs.recv(), if in_flight.len() < MAX_IN_FLIGHT_SENDS => {
                    let Some(job) = job else { break };
                    let sender = this.clone();
                    match job {
                        Outgoing::Verdict { request_id, recipients, verdict } => {
                            in_flight.spawn(async move {
                                sender.send_verdict(request_id, recipients, verdict).await
                            });
                        }
                        Outgoing::TimeProof => {
                            time_proof_seq = time_proof_seq.wrapping_add(1);
                            let seq = time_proof_seq;
                            in_flight.spawn(async move {
                                sender.send_time_proof(seq).await;
                                None
                            });
                        }
                    }
                }
                Some(done) = in_flight.join_next() => {
                    if let Ok(Some(request_id)) = done {
                        if unmarked.len() >= MAX_UNMARKED_SENT {
                            unmarked.remove(0);
                        }
                        unmarked.push(request_id);
                    }
                }
                _ = mark.tick() => this.mark_sent(&mut unmarked).await,
                _ = prune.tick() => this.prune().await,
            }
        }
        in_flight.abort_all();
        // What was acknowledged is worth recording; the rest is re-sent after a restart.
        while let Some(done) = in_flight.join_next().await {
            if let Ok(Some(request_id)) = done {
                unmarked.push(request_id);
            }
        }
        this.mark_sent(&mut unmarked).await;
    }

    /// Sends one verdict until the sequencer acknowledges it or refuses it definitely, or
    /// shutdown. Returns the request id to mark as sent (also for a definite refusal: retrying
    /// it forever would not help), `None` on shutdown.
    async fn send_verdict(
        &self,
        request_id: Timestamp,
        recipients: Vec<MemberId>,
        verdict: Verdict,
    ) -> Option<Timestamp> {
        let signed = Signed::sign(
            &verdict,
            self.member.clone(),
            &self.key,
            SigningPurpose::Verdict,
        );
        let payload = ProtocolMessage::Verdict(signed).encode();
        // The same message id on every attempt and after restarts: the sequencer deduplicates.
        let message_id = MessageId::new(format!("verdict-{}", request_id.as_micros()))
            .expect("digits make a valid message id");
        let mut delay = RETRY_INITIAL;
        loop {
            let submission = Submission {
                sender: self.member.clone(),
                message_id: message_id.clone(),
                envelopes: vec![Envelope {
                    recipients: recipients.clone(),
                    payload: payload.clone(),
                }],
                max_sequencing_time: Timestamp::now().saturating_add(VERDICT_SEND_WINDOW),
            };
            match self.client.send(submission).await {
                Ok(receipt) => {
                    tracing::debug!(request = %request_id, sequenced = %receipt.timestamp, deduplicated = receipt.deduplicated, "verdict sent");
                    self.readiness.clear("sequencer");
                    self.metrics.verdicts_sent.inc();
                    self.status.verdicts_sent.fetch_add(1, Ordering::Relaxed);
                    return Some(request_id);
                }
                Err(ClientError::Rejected { code, message }) if is_definite(code) => {
                    tracing::error!(request = %request_id, ?code, %message, "the sequencer refused a verdict; giving it up");
                    self.metrics.verdicts_abandoned.inc();
                    return Some(request_id);
                }
                Err(error) => {
                    if self
                        .readiness
                        .fail("sequencer", format!("cannot send verdicts: {error}"))
                    {
                        tracing::warn!(request = %request_id, %error, "sending a verdict failed; retrying");
                    }
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(RETRY_MAX);
        }
    }

    /// One attempt (with the client's own retries): the engine asks again if it gets lost.
    async fn send_time_proof(&self, seq: u64) {
        let now = Timestamp::now();
        let Ok(message_id) = MessageId::new(format!("time-proof-{}-{seq}", now.as_micros())) else {
            return;
        };
        let submission = Submission {
            sender: self.member.clone(),
            message_id,
            envelopes: vec![Envelope {
                recipients: vec![self.member.clone()],
                payload: ProtocolMessage::TimeProof.encode(),
            }],
            max_sequencing_time: now.saturating_add(TIME_PROOF_SEND_WINDOW),
        };
        if let Err(error) = self.client.send(submission).await {
            tracing::debug!(%error, "time proof not sent");
        }
    }

    async fn mark_sent(&self, unmarked: &mut Vec<Timestamp>) {
        if unmarked.is_empty() {
            return;
        }
        match self.store.mark_verdicts_sent(unmarked).await {
            Ok(()) => unmarked.clear(),
            // Demoted: the new active re-sends these (deduplicated) and marks them itself.
            Err(error) if replication::is_fenced(&error) => {
                tracing::debug!(%error, "not marking verdicts sent: this replica is fenced");
                unmarked.clear();
                self.shutdown.cancel();
            }
            // Kept for the next tick; the event loop reports the database's state.
            Err(error) => tracing::debug!(%error, "marking verdicts sent failed"),
        }
    }

    async fn prune(&self) {
        let last = self.status.last_event_us.load(Ordering::Relaxed);
        if last == 0 {
            return;
        }
        let before = Timestamp::from_micros(last).saturating_sub(VERDICT_RETENTION);
        match self.store.prune_verdicts(before).await {
            Ok(pruned) if pruned > 0 => tracing::debug!(pruned, "pruned sent verdicts"),
            Ok(_) => {}
            Err(error) if replication::is_fenced(&error) => self.shutdown.cancel(),
            Err(error) => tracing::debug!(%error, "pruning verdicts failed"),
        }
    }
}

/// A refusal that a retry cannot change: the submission itself is wrong.
fn is_definite(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented
    )
}

async fn connect_store(
    config: &MediatorConfig,
    readiness: &Conditions,
    shutdown: &CancellationToken,
) -> Option<Arc<dyn MediatorStore>> {
    let mut delay = RETRY_INITIAL;
    loop {
        let reason = match meridian_store::open_mediator_store(&config.storage).await {
            Ok(store) => match store.backend_status().await {
                Ok(status) if !status.read_only => {
                    readiness.clear("database");
                    return Some(store);
                }
                Ok(status) => format!(
                    "the {} database is read-only (a standby?); the mediator needs a writable primary",
                    status.backend
                ),
                Err(error) => format!("cannot inspect the database: {error}"),
            },
            Err(error) => format!("cannot open the database: {error}"),
        };
        if readiness.fail("database", reason.clone()) {
            tracing::error!("{reason}; retrying");
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}

/// A store call's future, boxed as the store trait returns it. Taking this concrete type
/// (rather than any `Future`) keeps the mediator's futures provably `Send`.
type StoreCall<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, meridian_store::StoreError>> + Send + 'a>>;

/// Runs a store call until it succeeds, reporting the database not ready meanwhile. `None` on
/// shutdown. Every error is retried — the mediator cannot go on without its state, and a
/// database failing over (even to a read-only standby for a while) comes back — except a
/// fenced write: then this replica is no longer the active one, so `shutdown` (the active
/// work's token) is cancelled and `None` returned.
async fn retry_store<'a, T>(
    what: &'static str,
    readiness: &Conditions,
    shutdown: &CancellationToken,
    mut call: impl FnMut() -> StoreCall<'a, T>,
) -> Option<T> {
    let mut delay = RETRY_INITIAL;
    loop {
        // Verdicts wait on this call: while it stalls, /readyz says so.
        match readiness.watch_database_call(call()).await {
            Ok(value) => {
                readiness.clear("database");
                return Some(value);
            }
            Err(error) if replication::is_fenced(&error) => {
                // The database answered: a stall reported meanwhile is over.
                readiness.clear("database");
                // Another replica is active: stop this one's work; the role loop demotes it.
                tracing::warn!(%error, "{what}: this replica may no longer write; stopping");
                shutdown.cancel();
                return None;
            }
            Err(error) => {
                if readiness.fail("database", format!("{what}: {error}")) {
                    tracing::error!(%error, "{what} failed; retrying");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}

async fn sync_topology(
    config: &MediatorConfig,
    mut state: TopologyState,
    readiness: &Conditions,
    shutdown: &CancellationToken,
) -> Option<TopologyState> {
    readiness.fail("topology", "not synced with the topology manager yet");
    let mut delay = RETRY_INITIAL;
    loop {
        match meridian_client::topology::sync_topology(
            config.topology_endpoints.as_slice(),
            &mut state,
        )
        .await
        {
            Ok(added) => {
                tracing::info!(added, endpoints = %config.topology_endpoints, "topology synced");
                readiness.clear("topology");
                return Some(state);
            }
            Err(error) => {
                if readiness.fail(
                    "topology",
                    format!(
                        "cannot sync with the topology manager at {}: {error}",
                        config.topology_endpoints
                    ),
                ) {
                    tracing::warn!(%error, "topology sync failed; retrying");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}

async fn connect_sequencer(
    config: &MediatorConfig,
    key: SigningKey,
    readiness: &Conditions,
    shutdown: &CancellationToken,
) -> Option<SequencerClient> {
    readiness.fail("subscription", "not subscribed yet");
    let mut delay = RETRY_INITIAL;
    loop {
        let client_config = SequencerClientConfig::new(
            config.sequencer_endpoints.first(),
            config.member_id.clone(),
            key.clone(),
        )
        .with_endpoints(config.sequencer_endpoints.as_slice().to_vec());
        let connected = tokio::select! {
            () = shutdown.cancelled() => return None,
            connected = SequencerClient::connect(client_config) => connected,
        };
        match connected {
            Ok(client) => {
                readiness.clear("sequencer");
                return Some(client);
            }
            Err(error) => {
                if readiness.fail(
                    "sequencer",
                    format!(
                        "cannot connect to the sequencer at {}: {error}",
                        config.sequencer_endpoints
                    ),
                ) {
                    tracing::warn!(%error, "connecting to the sequencer failed; retrying");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}
