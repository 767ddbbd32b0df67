//! The sequencer node: wires store, engine, writer, readers and the gRPC and admin servers
//! together, and owns the start-up checks.
//!
//! Start-up order matters for operators: the admin HTTP server comes up first so `/readyz`
//! can say *why* the node is not serving (database unreachable, a read-only standby,
//! `synchronous_commit` off); the gRPC port opens only once the instance holds its place.
//!
//! Claiming the instance index: a starting process claims its row with
//! [`InstanceClaim::Start`], which is refused while the row is online with a watermark younger
//! than `offline_after` — another live process is configured with the same index. A restart
//! after a crash sees the old watermark go stale within `offline_after` and proceeds; a second
//! live process never does, and after [`claim_patience`] gives up and exits with an error
//! naming the index, leaving the running process undisturbed. A paused process (SIGSTOP) whose
//! watermark went stale is taken over; when it resumes, its writes are refused as superseded
//! and it stops (see [`crate::writer`]).
//!
//! Before claiming its place, and every `clock_check` after, the instance compares its clock
//! with the database's (see [`crate::clock`]): it never claims, writes or judges its peers
//! from a clock beyond `max_clock_skew`. Peers are judged by whether their watermark moves
//! (see [`crate::liveness`]), never by comparing it with this instance's clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use meridian_core::backoff::Backoff;
use meridian_core::{InstanceIndex, Timestamp};
use meridian_node::admin::{self, AdminHttpAuth, NodeState, StatusSource};
use meridian_node::admin_token::AdminToken;
use meridian_node::forward::advance_to;
use meridian_node::grpc::GrpcServer;
use meridian_node::health::Health;
use meridian_node::shutdown::Ticker;
use meridian_proto::v1::sequencer_admin_service_server::SequencerAdminServiceServer;
use meridian_proto::v1::sequencer_service_server::SequencerServiceServer;
use meridian_store::{
    BackendStatus, DatabaseOwner, InstanceClaim, InstanceStart, NodeKind, PresenceHold,
    SequencerStore, StoreError,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::clock::ClockGate;
use crate::config::SequencerConfig;
use crate::directory::MemberDirectory;
use crate::engine::{OrderingEngine, Partition};
use crate::liveness::{
    peers_check_interval, presence_grace, Evidence, PeerWatch, PRESENCE_CHECK_INTERVAL,
};
use crate::metrics::{EvidenceLabel, SequencerMetrics};
use crate::service::{SequencerAdminApi, SequencerApi, Shared};
use crate::validate::SubmissionLimits;
use crate::writer::{IncarnationGauge, Writer, WriterExit, WriterGates, WriterSettings};
use meridian_node::conditions::Conditions;
use meridian_node::retry::{Retry, UNTIL_STOPPED};

/// gRPC framing and field overhead allowed on top of `max_request_bytes`, so that our own
/// size check (with its precise message) fires before tonic's generic one.
const WIRE_OVERHEAD_BYTES: usize = 64 * 1024;

/// The sequencer's node id in the record of whose database it is: one for all instances,
/// which share the database (the instance index is not part of the owner).
pub const SEQUENCER_NODE_ID: &str = "sequencer";

/// Why the backend may not be used for sequencing, if it may not.
pub fn backend_refusal(status: &BackendStatus) -> Option<String> {
    if status.read_only {
        return Some(match &status.read_only_reason {
            Some(reason) => {
                format!("{reason}; a sequencer only serves from a writable primary")
            }
            None => format!(
                "the {} database is read-only (a standby?); a sequencer only serves from a writable primary",
                status.backend
            ),
        });
    }
    match status.synchronous_commit.as_deref() {
        None | Some("on") | Some("remote_apply") | Some("remote_write") => None,
        Some(other) => Some(format!(
            "PostgreSQL synchronous_commit is '{other}'; acknowledged sends could be lost on a crash or failover. Set it to on, remote_apply or remote_write"
        )),
    }
}

struct SequencerStatus {
    config: SequencerConfig,
    backend: &'static str,
    watermark: watch::Receiver<Timestamp>,
    directory: Arc<MemberDirectory>,
    incarnation: IncarnationGauge,
    peers_marked_offline: Arc<AtomicU64>,
    /// Open subscriptions (the `subscribers` gauge): which instance the members use.
    subscribers: prometheus_client::metrics::gauge::Gauge,
}

impl StatusSource for SequencerStatus {
    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "role": "sequencer",
            "instance_index": self.config.instance.index,
            "instance_count": self.config.instance.count,
            "incarnation": self.incarnation.get(),
            "listen_address": self.config.listen_address.to_string(),
            "backend": self.backend,
            "safe_point_us": self.watermark.borrow().as_micros(),
            "members": self.directory.len(),
            // Operators and drills see from it that this instance noticed a dead peer.
            "peers_marked_offline": self.peers_marked_offline.load(Ordering::Relaxed),
            // Members subscribe where they send (`meridian_client::sequencer`): the instance
            // carrying the load has them all.
            "subscribers": self.subscribers.get(),
        })
    }
}

/// Runs a sequencer until `shutdown` is cancelled. Returns an error if the instance could not
/// claim its index, or stopped because another process claimed it.
pub async fn run(config: SequencerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    // The node also stops by itself when superseded; a child token keeps that from cancelling
    // the caller's token.
    let shutdown = shutdown.child_token();
    // Checked again here because `run` may be handed a config that never went through `load`.
    let owner_key = config
        .owner_key()
        .context("owner_public_key is not a valid ed25519 public key")?;
    let admin_token = AdminToken::configured(
        config.admin_token.as_deref(),
        config.admin_token_file.as_deref(),
        "from the sequencer config",
    )?;
    // TLS first: a config whose certificate or key cannot be used stops the node before it
    // listens, and every client of other nodes it opens uses these settings.
    let tls = config.tls.start("sequencer")?;
    let node = NodeState::starting().with_tls(tls.server.clone());
    let readiness = node.readiness.clone();
    let sequencer_metrics = node.metrics.with_registry(SequencerMetrics::register);

    let (safe_point_tx, safe_point_rx) = watch::channel(Timestamp::MIN);
    let (peers_waiting_tx, peers_waiting_rx) = watch::channel(Timestamp::MIN);
    let status_slot: Arc<std::sync::OnceLock<SequencerStatus>> = Arc::default();

    let admin_task = node.spawn_admin_with(
        admin::bind(config.admin_address).await?,
        Arc::new(LateStatus(status_slot.clone())),
        None,
        AdminHttpAuth {
            token: admin_token.clone(),
            config: config.admin_http,
        },
        shutdown.clone(),
    );
    // Whichever way this function returns, the admin server (and anything else on the token)
    // stops with it; `?` below would otherwise leave it answering for a node that is gone.
    let _stop_on_return = shutdown.clone().drop_guard();

    let retry = Retry::new(&readiness, &shutdown);
    let database_owner =
        DatabaseOwner::of_node(NodeKind::Sequencer, SEQUENCER_NODE_ID, owner_key.as_ref());
    let Some(store) = meridian_node::owner::open_own_store(
        &config.storage,
        &database_owner,
        &retry,
        "cannot open the database",
        || meridian_store::open_sequencer_store(&config.storage),
    )
    .await?
    else {
        return Ok(());
    };
    if !wait_for_usable_backend(store.as_ref(), &config, &retry).await? {
        return Ok(());
    }
    let Some(clock) = start_clock_gate(&store, &config, &retry, &shutdown).await? else {
        return Ok(());
    };

    let index = config.instance.index();
    // Before claiming the row, so that peers see this process present from its first
    // watermark on.
    let predecessor_gone = hold_presence(store.as_ref(), index, &mut PresenceLog::default()).await;
    let Some(start) = claim_instance(store.as_ref(), &config, &retry, predecessor_gone).await?
    else {
        return Ok(());
    };
    tracing::info!(instance = %index, watermark = %start.watermark, incarnation = %start.incarnation, "instance online");
    let directory = Arc::new(MemberDirectory::load(store.clone()).await?);
    let incarnation = IncarnationGauge::default();
    let tail = crate::tail::ReaderTail::with_metrics(&sequencer_metrics);
    let (writer_task, writer_handle) = start_writer(
        &config,
        store.clone(),
        start,
        &incarnation,
        safe_point_tx.clone(),
        sequencer_metrics.clone(),
        WriterGates {
            readiness: readiness.clone(),
            clock,
            stop: shutdown.clone(),
            peers_waiting: peers_waiting_rx,
            tail: tail.clone(),
        },
    )
    .await?;
    let peers_marked_offline = spawn_poll_peers(
        &store,
        &config,
        PollOutputs {
            safe_point: safe_point_tx,
            peers_waiting: peers_waiting_tx,
        },
        &readiness,
        &sequencer_metrics,
        &shutdown,
    );

    let backend = store.backend_status().await.map(|s| s.backend);
    let _ = status_slot.set(SequencerStatus {
        config: config.clone(),
        backend: backend.unwrap_or("unknown"),
        watermark: safe_point_rx.clone(),
        directory: directory.clone(),
        incarnation,
        peers_marked_offline: peers_marked_offline.clone(),
        subscribers: sequencer_metrics.subscribers.clone(),
    });

    let shared = Arc::new(Shared {
        store: store.clone(),
        directory,
        auth: Authenticator::new(config.timing.token_ttl()),
        writer: writer_handle,
        tail: {
            tail.start(store.clone(), safe_point_rx.clone(), shutdown.clone());
            tail
        },
        limits: SubmissionLimits {
            max_request_bytes: config.limits.max_request_bytes,
            max_envelopes: config.limits.max_envelopes,
        },
        metrics: sequencer_metrics,
        readiness: readiness.clone(),
        shutdown: shutdown.clone(),
        admin_token,
        owner_key,
    });

    let server = grpc_server(&config, &node.health, shared)
        .with_tls(tls.server.clone())
        .serve(
            meridian_node::grpc::bind(config.listen_address).await?,
            shutdown.clone(),
        )?;
    readiness.clear("startup");
    tracing::info!(address = %config.listen_address, "sequencer gRPC listening");
    let served = server.await;
    readiness.fail("shutdown", "shutting down");
    // The writer may be what stopped the node; make sure everything else stops too.
    shutdown.cancel();
    let exit = writer_task.await;
    let _ = admin_task.await;
    served?;
    if let Ok(WriterExit::Superseded(reason)) = exit {
        anyhow::bail!("sequencer instance {index} stopped: {reason}");
    }
    tracing::info!("sequencer stopped");
    Ok(())
}

/// Starts following the other instances ([`poll_peers`]); returns the count of peers it
/// marked offline, for `/status`.
fn spawn_poll_peers(
    store: &Arc<dyn SequencerStore>,
    config: &SequencerConfig,
    outputs: PollOutputs,
    readiness: &Conditions,
    metrics: &SequencerMetrics,
    shutdown: &CancellationToken,
) -> Arc<AtomicU64> {
    let peers_marked_offline = Arc::new(AtomicU64::new(0));
    tokio::spawn(poll_peers(
        store.clone(),
        config.clone(),
        outputs,
        readiness.clone(),
        OfflineCounts {
            total: peers_marked_offline.clone(),
            metrics: metrics.clone(),
        },
        shutdown.clone(),
    ));
    peers_marked_offline
}

/// Starts the writer of this instance from its claimed place, with the safe point as the
/// database has it.
async fn start_writer(
    config: &SequencerConfig,
    store: Arc<dyn SequencerStore>,
    start: InstanceStart,
    incarnation: &IncarnationGauge,
    safe_point: watch::Sender<Timestamp>,
    metrics: SequencerMetrics,
    gates: WriterGates,
) -> anyhow::Result<(
    tokio::task::JoinHandle<WriterExit>,
    crate::writer::WriterHandle,
)> {
    let index = config.instance.index();
    let partition = Partition::new(index, config.instance.count)?;
    let (writer, handle) = Writer::new(
        store,
        OrderingEngine::new(partition, start.watermark),
        start.incarnation,
        incarnation.clone(),
        WriterSettings {
            index,
            max_batch_events: config.limits.max_batch_events,
            queue_capacity: config.limits.queue_capacity,
            watermark_interval: config.timing.watermark_interval(),
            dedup_retention: config.timing.dedup_retention(),
        },
        safe_point,
        metrics,
        gates,
    );
    writer.refresh_safe_point().await;
    Ok((tokio::spawn(writer.run()), handle))
}

/// The sequencer's gRPC services: the member API and the admin API.
fn grpc_server(config: &SequencerConfig, health: &Health, shared: Arc<Shared>) -> GrpcServer {
    let max_message_bytes = config.limits.max_request_bytes + WIRE_OVERHEAD_BYTES;
    GrpcServer::new(health, &[meridian_proto::FILE_DESCRIPTOR_SET])
        .add_service(
            SequencerServiceServer::new(SequencerApi(shared.clone()))
                .max_decoding_message_size(max_message_bytes),
        )
        .add_service(
            SequencerAdminServiceServer::new(SequencerAdminApi(shared))
                .max_decoding_message_size(max_message_bytes),
        )
}

/// How long a starting process waits for its index to be released by a previous holder whose
/// watermark is still fresh: a crashed predecessor goes stale after `offline_after`; one still
/// fresh after twice that (plus slack for a slow start) is alive.
pub fn claim_patience(offline_after: Duration) -> Duration {
    offline_after * 2 + Duration::from_secs(1)
}

/// Claims this instance's row; `None` on shutdown. Refuses (an error) when a live process holds
/// the same index for longer than [`claim_patience`]. With `predecessor_gone` (this process
/// took the index's presence lock, so no earlier process of it is alive) the row is taken at
/// once, without waiting for a crashed predecessor's watermark to go stale.
async fn claim_instance(
    store: &dyn SequencerStore,
    config: &SequencerConfig,
    retry: &Retry,
    predecessor_gone: bool,
) -> anyhow::Result<Option<InstanceStart>> {
    let index = config.instance.index();
    let offline_after = config.timing.offline_after();
    let pause = (offline_after / 4).max(Duration::from_millis(10));
    let claimed = retry
        .clone()
        .with_backoff(Backoff {
            initial: pause,
            max: pause,
            ..UNTIL_STOPPED
        })
        .within(claim_patience(offline_after))
        .until("instance", "waiting for the index", || async {
            let now = Timestamp::now();
            let claim = InstanceClaim::Start {
                live_after: if predecessor_gone {
                    Timestamp::MAX
                } else {
                    now.saturating_sub(offline_after)
                },
            };
            match store.start_instance(index, now, claim).await {
                Ok(start) => Ok(Ok(start)),
                // Retried: the previous holder's watermark may yet go stale.
                Err(in_use @ StoreError::InstanceInUse { .. }) => Err(in_use),
                // Anything else is not worth waiting for.
                Err(error) => Ok(Err(error)),
            }
        })
        .await;
    match claimed {
        Ok(None) => Ok(None),
        Ok(Some(Ok(start))) => Ok(Some(start)),
        Ok(Some(Err(error))) => {
            Err(anyhow::Error::new(error).context("taking this instance's place in the database"))
        }
        Err(gave_up) => {
            let in_use = gave_up.last;
            retry.readiness().fail("instance", in_use.to_string());
            tracing::error!(%in_use, "refusing to start");
            Err(anyhow::Error::new(in_use).context(format!(
                "instance index {index} is taken; give each sequencer process its own [instance] index"
            )))
        }
    }
}

/// Serves `/status` only once the node knows its parts; before that, a minimal object.
struct LateStatus(Arc<std::sync::OnceLock<SequencerStatus>>);

impl StatusSource for LateStatus {
    fn status(&self) -> serde_json::Value {
        match self.0.get() {
            Some(status) => status.status(),
            None => serde_json::json!({ "role": "sequencer", "phase": "starting" }),
        }
    }
}

/// Waits until this instance's clock agrees with the database's, then keeps comparing them in
/// the background; the gate refuses to issue timestamps while they disagree. `None` on shutdown.
async fn start_clock_gate(
    store: &Arc<dyn SequencerStore>,
    config: &SequencerConfig,
    retry: &Retry,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<ClockGate>> {
    let clock = ClockGate::new(config.timing.max_clock_skew(), retry.readiness().clone());
    if !wait_for_agreeing_clock(store.as_ref(), &clock, retry).await? {
        return Ok(None);
    }
    tokio::spawn(compare_clock(
        store.clone(),
        clock.clone(),
        config.timing.clock_check(),
        shutdown.clone(),
    ));
    Ok(Some(clock))
}

/// Waits until the database may be used for sequencing, checking every `backend_check`.
/// `Ok(false)` on shutdown.
async fn wait_for_usable_backend(
    store: &dyn SequencerStore,
    config: &SequencerConfig,
    retry: &Retry,
) -> anyhow::Result<bool> {
    let every = config.timing.backend_check();
    let usable = retry
        .clone()
        .with_backoff(Backoff {
            initial: every,
            max: every,
            ..UNTIL_STOPPED
        })
        .until("backend", "", || usable_backend(store))
        .await?;
    Ok(usable.is_some())
}

/// Whether the backend may be used for sequencing: `Err` says why not.
async fn usable_backend(store: &dyn SequencerStore) -> Result<(), String> {
    let status = store
        .backend_status()
        .await
        .map_err(|error| format!("cannot inspect the database: {error}"))?;
    backend_refusal(&status).map_or(Ok(()), Err)
}

/// Waits until this instance's clock agrees with the database's (see [`crate::clock`]);
/// `Ok(false)` on shutdown. Until then `/readyz` names the skew.
async fn wait_for_agreeing_clock(
    store: &dyn SequencerStore,
    clock: &ClockGate,
    retry: &Retry,
) -> anyhow::Result<bool> {
    let agreed = retry
        .until("clock", "", || async {
            match clock.compare(store).await {
                Err(error) => Err(format!(
                    "cannot compare the clock with the database's: {error}"
                )),
                Ok(_) => clock.check(Timestamp::now(), Instant::now()),
            }
        })
        .await?;
    Ok(agreed.is_some())
}

/// Compares the clock with the database's every `every` until shutdown. A comparison that
/// fails leaves the gate as it was: a database outage is reported by the database calls.
async fn compare_clock(
    store: Arc<dyn SequencerStore>,
    clock: ClockGate,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = Ticker::new(every, shutdown);
    while ticker.tick().await {
        if let Err(error) = clock.compare(store.as_ref()).await {
            tracing::debug!(%error, "comparing the clock with the database's failed");
        }
    }
}

/// Where the peers this instance marks offline are counted: the total for `/status`, and by
/// evidence in the metrics.
struct OfflineCounts {
    total: Arc<AtomicU64>,
    metrics: SequencerMetrics,
}

/// What [`hold_presence`] last logged, so a lasting state is logged once, not every second.
#[derive(Debug, Default, PartialEq, Eq)]
enum PresenceLog {
    #[default]
    Nothing,
    Held,
    NotHeld,
}

/// Takes or checks this instance's presence lock (see `meridian_store`'s presence): without
/// it a peer finds this process's death only by its watermark's age, not at once. Never
/// fatal: the lock is evidence for the peers, fencing rests on the instance row. Returns
/// whether this process holds it.
async fn hold_presence(
    store: &dyn SequencerStore,
    index: InstanceIndex,
    log: &mut PresenceLog,
) -> bool {
    match store.hold_presence(index).await {
        Ok(PresenceHold::Held) => {
            if *log == PresenceLog::NotHeld {
                tracing::info!(instance = %index, "holding this instance's presence lock again");
            }
            *log = PresenceLog::Held;
            true
        }
        Ok(PresenceHold::HeldElsewhere) => {
            if *log != PresenceLog::NotHeld {
                tracing::warn!(
                    instance = %index,
                    "another process holds this instance's presence lock (a stopped predecessor?); peers will find this one's death by its watermark's age until it is released"
                );
            }
            *log = PresenceLog::NotHeld;
            false
        }
        Err(error) => {
            if *log != PresenceLog::NotHeld {
                tracing::warn!(instance = %index, %error, "taking this instance's presence lock failed; retrying");
            }
            *log = PresenceLog::NotHeld;
            false
        }
    }
}

/// Marks the peers offline that `watch` judges dead (see [`crate::liveness`]), each only if
/// its watermark is still the one seen (the store's conditional update), so a peer that
/// advanced meanwhile is left alone. Returns whether it marked one.
async fn mark_stale_peers(
    store: &dyn SequencerStore,
    watch: &mut PeerWatch,
    present: Option<&[InstanceIndex]>,
    counts: &OfflineCounts,
) -> bool {
    let instances = match store.instances().await {
        Ok(instances) => instances,
        Err(error) => {
            tracing::debug!(%error, "reading instances failed");
            return false;
        }
    };
    let mut marked = false;
    for peer in watch.observe(&instances, present, Instant::now()) {
        match store.mark_offline(peer.index, peer.stale_before()).await {
            Ok(true) => {
                marked = true;
                counts.total.fetch_add(1, Ordering::Relaxed);
                counts
                    .metrics
                    .peers_marked_offline
                    .get_or_create(&EvidenceLabel {
                        evidence: peer.evidence.as_str(),
                    })
                    .inc();
                tracing::warn!(
                    peer = %peer.index,
                    watermark = %peer.watermark,
                    unchanged_ms = peer.unchanged_for.as_millis(),
                    evidence = peer.evidence.as_str(),
                    "marked a sequencer instance offline: {}",
                    match peer.evidence {
                        Evidence::LockReleased => "its process is gone (presence lock released)",
                        Evidence::WatermarkStill => "its watermark stopped moving",
                    }
                );
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "marking a peer offline failed"),
        }
    }
    marked
}

/// Reads the safe point and the latest event; publishes the safe point to the readers and an
/// event waiting above it to the writer. Returns whether one waits.
async fn follow_progress(store: &dyn SequencerStore, outputs: &PollOutputs) -> bool {
    let progress = match store.ordering_progress().await {
        Ok(progress) => progress,
        // The writer's own calls report the database's state; this poll just tries again.
        Err(error) => {
            tracing::debug!(%error, "reading the ordering progress failed");
            return false;
        }
    };
    if let Some(point) = progress.safe_point {
        advance_to(&outputs.safe_point, point);
    }
    match progress.waiting_through() {
        Some(waiting) => {
            advance_to(&outputs.peers_waiting, waiting);
            true
        }
        None => false,
    }
}

/// When [`judge_peers`] reads the instances' rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    Always,
    /// Only when an online peer's presence lock is gone: the presence check's cheap look.
    IfALockIsGone,
}

/// Asks who holds a presence lock and marks the peers offline that are judged dead
/// ([`mark_stale_peers`]). Returns whether it marked one: the caller then reads the safe
/// point at once, so the dead peer's hold on it ends with the mark.
async fn judge_peers(
    store: &dyn SequencerStore,
    watch: &mut PeerWatch,
    counts: &OfflineCounts,
    rows: Rows,
) -> bool {
    let online = watch.online_peers();
    let present = present_peers(store, &online).await;
    if rows == Rows::IfALockIsGone {
        let a_lock_is_gone = present
            .as_deref()
            .is_some_and(|present| online.iter().any(|peer| !present.contains(peer)));
        if !a_lock_is_gone {
            return false;
        }
    }
    mark_stale_peers(store, watch, present.as_deref(), counts).await
}

/// Who of the online peers holds a presence lock; `None` when the store could not say.
async fn present_peers(
    store: &dyn SequencerStore,
    online: &[InstanceIndex],
) -> Option<Vec<InstanceIndex>> {
    match store.present_instances(online).await {
        Ok(present) => Some(present),
        Err(error) => {
            tracing::debug!(%error, "asking who holds a presence lock failed");
            None
        }
    }
}

/// How often this instance re-checks (and after a lost database session retakes) its own
/// presence lock.
const PRESENCE_HOLD_INTERVAL: Duration = Duration::from_secs(1);

/// What the peer poll publishes.
struct PollOutputs {
    /// The safe point, for this instance's readers.
    safe_point: watch::Sender<Timestamp>,
    /// The latest event above the safe point, for the writer: if this instance's watermark is
    /// what holds it back, the writer advances it at once.
    peers_waiting: watch::Sender<Timestamp>,
}

/// Follows other instances: re-reads the safe point so their events become deliverable (every
/// `safe_point_poll`, and every `catch_up_poll` while an event waits above it, so that this
/// instance's writer releases a peer's event at once and its readers see the release at
/// once), marks dead peers offline so they stop holding readers back — at once when a presence lock
/// is released, by watermark age otherwise — keeps this instance's own presence lock, and
/// keeps re-checking that the backend is still usable (a failover may leave us on a standby).
async fn poll_peers(
    store: Arc<dyn SequencerStore>,
    config: SequencerConfig,
    outputs: PollOutputs,
    readiness: Conditions,
    counts: OfflineCounts,
    shutdown: CancellationToken,
) {
    let index = config.instance.index();
    let offline_after = config.timing.offline_after();
    let mut watch = PeerWatch::new(
        index,
        offline_after,
        presence_grace(config.timing.watermark_interval()),
    );
    let mut next_poll = tokio::time::Instant::now();
    let mut last_judged = Instant::now();
    let mut peers_check = tokio::time::interval(peers_check_interval(offline_after));
    peers_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut presence_check = tokio::time::interval(PRESENCE_CHECK_INTERVAL);
    presence_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut presence_hold = tokio::time::interval(PRESENCE_HOLD_INTERVAL);
    presence_hold.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut presence_log = PresenceLog::Held;
    let mut backend_check = tokio::time::interval(config.timing.backend_check());
    let mut recheck_refused = tokio::time::interval(BACKEND_RECHECK_WHILE_REFUSED);
    recheck_refused.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next_poll) => {
                let waiting = follow_progress(store.as_ref(), &outputs).await;
                next_poll = tokio::time::Instant::now()
                    + if waiting {
                        config.timing.catch_up_poll()
                    } else {
                        config.timing.safe_point_poll()
                    };
            }
            _ = peers_check.tick() => {
                if judge_peers(store.as_ref(), &mut watch, &counts, Rows::Always).await {
                    next_poll = tokio::time::Instant::now();
                }
            }
            // The cheap look, many times a second.
            _ = presence_check.tick() => {
                if judge_peers(store.as_ref(), &mut watch, &counts, Rows::IfALockIsGone).await {
                    next_poll = tokio::time::Instant::now();
                }
            }
            // A peer without its lock whose grace ends now: judged at once, not up to a
            // presence check later.
            _ = sleep_until_some(
                watch.next_judgement().map(|due| due.max(last_judged + JUDGEMENT_RETRY_INTERVAL))
            ) => {
                last_judged = Instant::now();
                if judge_peers(store.as_ref(), &mut watch, &counts, Rows::Always).await {
                    next_poll = tokio::time::Instant::now();
                }
            }
            _ = presence_hold.tick() => {
                let _held = hold_presence(store.as_ref(), index, &mut presence_log).await;
            }
            _ = backend_check.tick() => check_backend(store.as_ref(), &readiness).await,
            _ = recheck_refused.tick(), if readiness.is_failing("backend") => {
                check_backend(store.as_ref(), &readiness).await;
            }
        }
    }
}

/// The least time between two judgements of a peer whose grace is over, so that a store that
/// fails to mark it is not asked again in a busy loop.
const JUDGEMENT_RETRY_INTERVAL: Duration = Duration::from_millis(5);

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// While the backend is refused (a standby, no writer among the hosts), how often it is
/// checked again instead of every `backend_check`: sends are refused meanwhile, so a promoted
/// database should bring the instance back within a fraction of a second. The store searches
/// for the writer at most every 200 ms whatever the rate of checks.
const BACKEND_RECHECK_WHILE_REFUSED: Duration = Duration::from_millis(100);

/// Sets or clears the `backend` condition from a fresh look at the database.
async fn check_backend(store: &dyn SequencerStore, readiness: &Conditions) {
    match usable_backend(store).await {
        Ok(()) => readiness.clear("backend"),
        Err(reason) => {
            if readiness.fail("backend", reason.clone()) {
                tracing::error!("refusing to serve: {reason}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn postgres(read_only: bool, reason: Option<&str>, synchronous_commit: &str) -> BackendStatus {
        BackendStatus {
            backend: "postgres",
            read_only,
            synchronous_commit: Some(synchronous_commit.to_owned()),
            read_only_reason: reason.map(str::to_owned),
        }
    }

    #[test]
    fn a_refusal_says_why_and_names_the_hosts_when_it_knows_them() {
        assert_eq!(backend_refusal(&postgres(false, None, "on")), None);
        let no_writer = "no writable PostgreSQL server: the database is a standby (in recovery) \
                         at 10.0.0.1:5432; 10.0.0.2:5432 refused the connection";
        let refusal = backend_refusal(&postgres(true, Some(no_writer), "on")).expect("refused");
        assert!(refusal.starts_with(no_writer), "{refusal}");
        assert!(refusal.ends_with("a sequencer only serves from a writable primary"));
        let refusal = backend_refusal(&postgres(true, None, "on")).expect("refused");
        assert!(refusal.contains("read-only (a standby?)"), "{refusal}");
        let refusal = backend_refusal(&postgres(false, None, "off")).expect("refused");
        assert!(refusal.contains("synchronous_commit is 'off'"), "{refusal}");
    }
}
