//! The mediator node's wiring: config → components, and the start-up order; the runtime that
//! runs once everything is connected (event loop, persistence, verdict sending) is
//! [`crate::runtime`], as the participant splits `node` from `runtime`.
//!
//! Start-up order matters for operators: the admin HTTP server comes up first so `/readyz` can
//! say *why* the mediator is not working yet (database unreachable or read-only, topology
//! manager not answering, sequencer refusing us). Then: open the store, sync the topology,
//! rebuild the engine from the persisted pending requests, re-send the verdicts that were
//! decided but not known to be sent, and subscribe after the checkpoint. Every wait retries
//! through [`meridian_node::retry`], reporting what it waits for.
//!
//! Replicated (`[replication]`), the mediator uses the shared lifecycle of
//! [`meridian_node::replication`]: [`Warm`] is what it keeps while passive, and each *term*
//! ([`run_term`]) is exactly what an unreplicated mediator does from its start.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use meridian_client::{SequencerClient, SequencerClientConfig};
use meridian_core::crypto::{PublicKey, SigningKey};
use meridian_core::topology::TopologyState;
use meridian_core::MemberId;
use meridian_node::admin::{self, AdminHttpAuth, NodeState, StatusSource};
use meridian_node::admin_token::AdminToken;
use meridian_node::conditions::Conditions;
use meridian_node::fork::ForkAlarm;
use meridian_node::replica::ReplicaManager;
use meridian_node::replication::{hand_over_hooks, Replication};
use meridian_node::retry::Retry;
use meridian_node::shutdown::stop_after_hand_over;
use meridian_store::mediator::MediatorStore;
use meridian_store::{DatabaseOwner, NodeKind};
use tokio_util::sync::CancellationToken;

use crate::config::MediatorConfig;
use crate::engine::MediatorEngine;
use crate::metrics::MediatorMetrics;
use crate::persist;
use crate::runtime::{retry_store, Runtime, StatusState};

struct MediatorStatus {
    member: MemberId,
    backend: &'static str,
    state: Arc<StatusState>,
    /// Set once a replicated mediator has its lease store.
    replication: ReplicationSlot,
    fork: ForkAlarm,
}

/// The replica role of a replicated mediator, once known; empty for an unreplicated one.
type ReplicationSlot = Arc<OnceLock<Arc<Replication>>>;

impl StatusSource for MediatorStatus {
    fn status(&self) -> serde_json::Value {
        // Acquire: pairs with the runtime's release, so the pending count read below is at
        // least as new as this checkpoint.
        let last = self.state.last_event_us.load(Ordering::Acquire);
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
        status["fork"] = self.fork.status();
        status
    }
}

/// Runs a mediator until `shutdown` is cancelled. Returns an error for what a restart will not
/// fix by itself (an unusable key file, a fork in the sequencer's history, corrupt state).
pub async fn run(config: MediatorConfig, stop: CancellationToken) -> anyhow::Result<()> {
    let admin_token = AdminToken::configured(
        None,
        config.admin_token_file.as_deref(),
        "from the mediator config",
    )?;
    // TLS first: a config whose certificate or key cannot be used stops the node before it
    // listens, and every client of other nodes it opens uses these settings.
    let tls = config.tls.start("mediator")?;
    let node = NodeState::starting().with_tls(tls.server.clone());
    let (health, readiness) = (node.health.clone(), node.readiness.clone());
    let mediator_metrics = node.metrics.with_registry(MediatorMetrics::register);
    let status_state = Arc::new(StatusState::default());
    let fork = node
        .metrics
        .with_registry(|registry| ForkAlarm::register(registry, readiness.clone()));

    let admin_listener = admin::bind(config.admin_address).await?;
    let backend = match config.storage {
        meridian_store::StorageConfig::Sqlite { .. } => "sqlite",
        meridian_store::StorageConfig::Postgres { .. } => "postgres",
    };
    let replication = ReplicationSlot::default();
    // A stop steps an active replica down first, as a switchover does. Its own token, so that
    // stopping on a fatal error stops our tasks but not the caller's others.
    let (step_down, hand_over) = config
        .replication
        .is_some()
        .then(|| {
            let replication = replication.clone();
            hand_over_hooks(move || replication.get().cloned())
        })
        .unzip();
    let shutdown = stop_after_hand_over(stop, hand_over);
    let admin_task = node.spawn_admin_with(
        admin_listener,
        Arc::new(MediatorStatus {
            member: config.member_id.clone(),
            backend,
            state: status_state.clone(),
            replication: replication.clone(),
            fork: fork.clone(),
        }),
        step_down,
        AdminHttpAuth {
            token: admin_token,
            config: config.admin_http,
        },
        shutdown.clone(),
    );

    let result = serve(
        Arc::new(config),
        fork,
        readiness.clone(),
        mediator_metrics,
        status_state,
        replication,
        &shutdown,
    )
    .await;
    if let Err(error) = &result {
        health.set_failed(meridian_node::report::one_line(error));
    }
    readiness.fail("shutdown", "shutting down");
    // The admin server stops with the shutdown token; on a fatal error, stop it too.
    shutdown.cancel();
    let _ = admin_task.await;
    tracing::info!("mediator stopped");
    result
}

/// What a mediator keeps between terms (while passive) and starts each term from; an
/// unreplicated mediator runs one term from its start.
#[derive(Clone)]
struct Warm {
    config: Arc<MediatorConfig>,
    key: SigningKey,
    owner: PublicKey,
    store: Arc<dyn MediatorStore>,
    readiness: Conditions,
    metrics: MediatorMetrics,
    status: Arc<StatusState>,
    fork: ForkAlarm,
    /// `None` for an unreplicated mediator, which is active from the start.
    replication: Option<Arc<Replication>>,
}

/// Readiness conditions only a term sets. A replica whose term ends clears them, so its
/// `/readyz` reason says "passive", not what the old term last saw.
const TERM_CONDITIONS: [&str; 3] = ["topology", "subscription", "sequencer"];

async fn serve(
    config: Arc<MediatorConfig>,
    fork: ForkAlarm,
    readiness: Conditions,
    metrics: MediatorMetrics,
    status: Arc<StatusState>,
    replication_slot: ReplicationSlot,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let key = meridian_node::keys::load_node_key(&config.key_file, config.replication.is_some())?;
    let owner = config
        .owner_key()
        .context("owner_public_key is not a hex ed25519 public key")?;
    tracing::info!(member = %config.member_id, public_key = %key.public_key(), "mediator key loaded");

    let retry = Retry::new(&readiness, shutdown);
    let database_owner =
        DatabaseOwner::of_node(NodeKind::Mediator, config.member_id.as_str(), Some(&owner));
    let Some(store) = connect_store(&config, &database_owner, &retry).await? else {
        return Ok(());
    };
    let mut warm = Warm {
        config: config.clone(),
        key,
        owner,
        store,
        readiness: readiness.clone(),
        metrics,
        status,
        fork,
        replication: None,
    };
    let Some(settings) = config.replica_settings() else {
        return run_term(warm, shutdown.clone()).await;
    };

    // Replicated: warm (admin HTTP up, database open) but passive until the lease is ours.
    let node = settings.node.clone();
    let lease = retry_store("opening the replica lease", &retry, || {
        let (storage, node) = (config.storage.clone(), node.clone());
        Box::pin(async move { meridian_store::open_lease_store(&storage, &node).await })
    })
    .await?;
    let Some(lease) = lease else {
        return Ok(());
    };
    tracing::info!(replica = %settings.replica_id, endpoint = %settings.advertised_endpoint, "mediator replica starting passive");
    let replication = Arc::new(Replication::new(
        ReplicaManager::new(settings, lease, warm.store.fence())
            .with_metrics(warm.metrics.lease.clone()),
        readiness.clone(),
    ));
    let _ = replication_slot.set(replication.clone());
    let follower = tokio::spawn(replication.clone().follow(shutdown.clone()));
    warm.replication = Some(replication.clone());
    readiness.clear("startup");
    let result = replication
        .run(shutdown, |term| {
            let warm = warm.clone();
            async move {
                let readiness = warm.readiness.clone();
                let result = run_term(warm, term).await;
                for condition in TERM_CONDITIONS {
                    readiness.clear(condition);
                }
                result
            }
        })
        .await;
    follower.abort();
    result
}

/// One term of the mediator: everything a start from the database does, then the runtime
/// until `shutdown` (for a replica: until it stops being active). Restoring from the store is
/// the whole of a promotion's catch-up: the pending requests and the checkpoint, the verdicts
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
async fn run_term(warm: Warm, shutdown: CancellationToken) -> anyhow::Result<()> {
    let retry = Retry::new(&warm.readiness, &shutdown);
    let Some(topology) =
        sync_topology(&warm.config, TopologyState::new(warm.owner), &retry).await?
    else {
        return Ok(());
    };
    let Some((engine, unsent)) = restore(&warm, topology, &retry).await? else {
        return Ok(());
    };
    let Some(client) = connect_sequencer(&warm.config, warm.key.clone(), &retry).await? else {
        return Ok(());
    };
    let runtime = Runtime {
        engine,
        unsent,
        store: warm.store.clone(),
        client,
        key: warm.key.clone(),
        member: warm.config.member_id.clone(),
        readiness: warm.readiness.clone(),
        metrics: warm.metrics.clone(),
        status: warm.status.clone(),
        time_proof_interval: warm.config.time_proof_interval(),
        fork: warm.fork.clone(),
    };
    let serving = || match &warm.replication {
        Some(replication) => replication.serving(),
        None => warm.readiness.clear("startup"),
    };
    runtime.run(&shutdown, serving).await
}

/// The engine as the store left it, and the verdicts still to send. `None` on shutdown.
async fn restore(
    warm: &Warm,
    topology: TopologyState,
    retry: &Retry,
) -> anyhow::Result<Option<(MediatorEngine, Vec<meridian_store::mediator::VerdictRecord>)>> {
    let store = &warm.store;
    let Some(snapshot) = retry_store("loading the mediator state", retry, || store.load()).await?
    else {
        return Ok(None);
    };
    let requests = snapshot
        .pending
        .into_iter()
        .map(persist::restored)
        .collect::<Result<Vec<_>, _>>()?;
    let engine = MediatorEngine::restore(
        warm.config.member_id.clone(),
        topology,
        warm.config.response_timeout(),
        snapshot.checkpoint,
        requests,
    );
    tracing::info!(
        checkpoint = ?snapshot.checkpoint,
        pending = engine.pending_count(),
        unsent_verdicts = snapshot.unsent.len(),
        "mediator state restored"
    );
    let pending = engine.pending_count();
    warm.status
        .pending_requests
        .store(pending as u64, Ordering::Relaxed);
    warm.metrics.pending_requests.set(pending as i64);
    if let Some(checkpoint) = snapshot.checkpoint {
        warm.status
            .last_event_us
            .store(checkpoint.as_micros(), Ordering::Release);
    }
    Ok(Some((engine, snapshot.unsent)))
}

/// Opens the store on the mediator's own database, waiting until it is reachable and writable.
async fn connect_store(
    config: &MediatorConfig,
    database_owner: &DatabaseOwner,
    retry: &Retry,
) -> anyhow::Result<Option<Arc<dyn MediatorStore>>> {
    meridian_node::owner::open_own_store(&config.storage, database_owner, retry, "", || async {
        let store = meridian_store::open_mediator_store(&config.storage)
            .await
            .map_err(|error| format!("cannot open the database: {error}"))?;
        let status = store
            .backend_status()
            .await
            .map_err(|error| format!("cannot inspect the database: {error}"))?;
        if status.read_only {
            return Err(format!(
                "the {} database is read-only (a standby?); the mediator needs a writable primary",
                status.backend
            ));
        }
        Ok(store)
    })
    .await
}

async fn sync_topology(
    config: &MediatorConfig,
    state: TopologyState,
    retry: &Retry,
) -> anyhow::Result<Option<TopologyState>> {
    retry
        .readiness()
        .fail("topology", "not synced with the topology manager yet");
    let endpoints = &config.topology_endpoints;
    let what = format!("cannot sync with the topology manager at {endpoints}");
    let synced = retry
        .until("topology", &what, || {
            let mut state = state.clone();
            async move {
                meridian_client::topology::sync_topology(endpoints.as_slice(), &mut state)
                    .await
                    .map(|added| (added, state))
            }
        })
        .await?;
    Ok(synced.map(|(added, state)| {
        tracing::info!(added, endpoints = %config.topology_endpoints, "topology synced");
        state
    }))
}

async fn connect_sequencer(
    config: &MediatorConfig,
    key: SigningKey,
    retry: &Retry,
) -> anyhow::Result<Option<SequencerClient>> {
    retry.readiness().fail("subscription", "not subscribed yet");
    let client_config = SequencerClientConfig::new(
        config.sequencer_endpoints.first(),
        config.member_id.clone(),
        key,
    )
    .with_endpoints(config.sequencer_endpoints.as_slice().to_vec());
    let what = format!(
        "cannot connect to the sequencer at {}",
        config.sequencer_endpoints
    );
    let client = retry
        .until("sequencer", &what, || {
            SequencerClient::connect(client_config.clone())
        })
        .await?;
    Ok(client)
}
