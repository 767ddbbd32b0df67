//! The participant node: wires store, topology, engine, sequencer client, writer, Ledger API
//! and admin server together, and owns the start-up order.
//!
//! The admin HTTP server and the gRPC port come up first, so `/readyz` and every Ledger API
//! call (UNAVAILABLE) can say *why* the node is not serving yet: database, topology manager
//! or sequencer unreachable, or this participant not yet registered. The node turns ready only
//! once its topology is synced and its sequencer subscription runs.
//!
//! With a `[replication]` table the process is one of several replicas (DESIGN.md §5). It
//! starts warm but passive — store open, topology synced, sequencer session authenticated —
//! and polls for the lease. Promotion is then only: load the state from the store (replay
//! from the checkpoint exactly as a restart does), subscribe from the checkpoint, serve. While
//! active the lease is renewed next to the work; losing it (or a write the store's fence
//! refuses, or a step-down) ends the *term*: the Ledger API refuses at once, waiting
//! SubmitAndWait callers get UNAVAILABLE (outcome unknown; retrying with the same command id
//! on the new active is deduplicated), nothing more is sent, and the replica is passive again.
//! A step-down drains first: with the lease still held, new calls are refused and the
//! submissions in flight are answered with their outcome (bounded, see
//! [`crate::replication::STEP_DOWN_DRAIN_TIMEOUT`]); then the lease goes and the term ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use meridian_client::{SequencerClient, SequencerClientConfig};
use meridian_core::crypto::SigningKey;
use meridian_core::topology::{SignedTopologyTransaction, TopologyState};
use meridian_core::{LedgerOffset, Timestamp};
use meridian_node::admin::{self, AdminHttpAuth, NodeState, Quiesce, StatusSource, StepDown};
use meridian_node::admin_token::AdminToken;
use meridian_node::fork::ForkAlarm;
use meridian_node::grpc::GrpcServer;
use meridian_node::replica::{HoldEnd, LeaseGuard, ReplicaManager};
use meridian_node::replication::Phase;
use meridian_node::retry::Retry;
use meridian_node::shutdown::{stop_after_hand_over, HandOver, Ticker};
use meridian_node::Conditions;
use meridian_proto::v1::ledger_service_server::LedgerServiceServer;
use meridian_store::{DatabaseOwner, DedupState, NodeKind, ParticipantStore};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ParticipantConfig;
use crate::engine::{LocalSubmission, ParticipantEngine, PendingRequest, RestoredState};
use crate::metrics::ParticipantMetrics;
use crate::replication::Serving;
use crate::runtime::{self, Core, WriterError, COMMAND_QUEUE, MAX_CONCURRENT_SENDS};
use crate::service::{permission_name, LedgerApi};
use crate::stages::StageClock;

/// How often a passive replica refreshes its topology from the manager, so a promotion finds
/// it (nearly) current.
const PASSIVE_TOPOLOGY_REFRESH: Duration = Duration::from_secs(2);
/// At promotion, how long the topology manager may take to supply what changed since the
/// last refresh; it runs next to loading the store, and a slow manager does not hold up the
/// takeover when the warm copy is complete up to the checkpoint (the sequencer stream brings
/// every change after it). When it may not be, the promotion waits for the manager (see
/// [`TopologyAsOf`]).
const PROMOTION_TOPOLOGY_BUDGET: Duration = Duration::from_millis(300);
/// How long a term's writer gets to stop after its term ended before it is aborted (its
/// writes are fenced off anyway).
const TERM_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `/status` from the running core, or a minimal object while starting or passive.
struct ParticipantStatus {
    participant: String,
    serving: Arc<Serving>,
    fork: ForkAlarm,
}

impl StatusSource for ParticipantStatus {
    fn status(&self) -> serde_json::Value {
        let mut status = match self.serving.core() {
            None => serde_json::json!({
                "role": "participant",
                "participant_id": self.participant,
                "phase": match self.serving.manager().map(|m| m.role()) {
                    None => "starting",
                    Some(role) if role.is_active() => "promoting",
                    Some(_) => "passive",
                },
            }),
            Some(core) => {
                let engine = core.engine();
                let hosted: serde_json::Map<String, serde_json::Value> = engine
                    .topology()
                    .latest()
                    .hosted_by(&core.participant)
                    .into_iter()
                    .map(|(party, permission)| {
                        (party.to_string(), permission_name(permission).into())
                    })
                    .collect();
                serde_json::json!({
                    "role": "participant",
                    "participant_id": self.participant,
                    "phase": "running",
                    "ledger_end": engine.ledger_end().0,
                    "last_processed_ts_us": engine.last_event().map(Timestamp::as_micros),
                    "pending_requests": engine.pending_count(),
                    "in_flight_submissions": engine.in_flight_count(),
                    "active_contracts": engine.active_contracts().count(),
                    "hosted_parties": hosted,
                    "mediator_id": core.config.mediator_id.to_string(),
                    "submissions": core.metrics.stages.status(),
                })
            }
        };
        if let (Some(replication), serde_json::Value::Object(map)) =
            (self.serving.status(), &mut status)
        {
            map.insert("replication".into(), replication);
        }
        if let serde_json::Value::Object(map) = &mut status {
            // `null` until a fork is detected; then the fork and the lost transactions.
            map.insert("fork".into(), self.fork.status());
        }
        status
    }
}

/// Runs a participant until `shutdown` is cancelled or a fatal error (a fork in the sequencer
/// stream, a database that stays unwritable).
pub async fn run(config: ParticipantConfig, stop: CancellationToken) -> anyhow::Result<()> {
    let admin_token = AdminToken::configured(
        None,
        config.admin_token_file.as_deref(),
        "from the participant config",
    )?;
    // TLS first: a config whose certificate or key cannot be used stops the node before it
    // listens, and every client of other nodes it opens uses these settings.
    let tls = config.tls.start("participant")?;
    let node = NodeState::starting().with_tls(tls.server.clone());
    let (health, readiness) = (node.health.clone(), node.readiness.clone());
    let participant_metrics = node.metrics.with_registry(ParticipantMetrics::register);
    let fork = node
        .metrics
        .with_registry(|registry| ForkAlarm::register(registry, readiness.clone()));
    let participant = config.participant_id.clone();
    let key = meridian_node::keys::load_node_key(&config.key_file, config.replication.is_some())
        .with_context(|| format!("participant key for {participant}"))?;
    let owner = config
        .owner_key()
        .map_err(|e| anyhow::anyhow!("owner_public_key: {e}"))?;
    tracing::info!(%participant, public_key = %key.public_key(), replica = ?config.replication.as_ref().map(|r| &r.replica_id), "participant identity");
    // Loaded before anything listens: a bad key file fails the start-up, naming the file.
    let ledger_auth = match &config.ledger_auth {
        Some(ledger_auth) => {
            let verifier = ledger_auth.verifier(&participant)?;
            tracing::info!(settings = ?verifier.settings(), "Ledger API authorization on: every call needs a bearer JWT");
            Some(Arc::new(verifier))
        }
        None => {
            tracing::warn!(%participant, "no [ledger_auth] configured: the Ledger API is OPEN — any client that reaches it may act and read as every party hosted here and allocate parties");
            None
        }
    };

    let serving = Arc::new(Serving::new(
        config.replication.as_ref().map(|r| r.replica_id.clone()),
    ));
    let step_down = serving.replica_id().is_some().then(|| {
        let (serving, readiness) = (serving.clone(), readiness.clone());
        Arc::new(move || serving.step_down(&readiness)) as StepDown
    });
    let quiesce = serving.replica_id().is_some().then(|| {
        let (serving, readiness) = (serving.clone(), readiness.clone());
        Arc::new(move || serving.quiesce(&readiness)) as Quiesce
    });
    let node = node.with_quiesce(quiesce);
    // A stop (SIGTERM) drains an active replica first, exactly as a switchover does: the
    // submissions it accepted are answered before the lease goes, instead of being inherited
    // by the new active replica, which can only wait out their max sequencing time.
    let hand_over = step_down.clone().map(|step_down| {
        let serving = serving.clone();
        HandOver {
            step_down,
            is_active: Arc::new(move || serving.manager().is_some_and(|m| m.role().is_active())),
        }
    });
    let shutdown = stop_after_hand_over(stop, hand_over);
    // Both ports are bound before anything runs: a port conflict fails the start-up whole.
    let admin_listener = admin::bind(config.admin_address).await?;
    let listener = meridian_node::grpc::bind(config.listen_address).await?;
    let admin_task = node.spawn_admin_with(
        admin_listener,
        Arc::new(ParticipantStatus {
            participant: participant.to_string(),
            serving: serving.clone(),
            fork: fork.clone(),
        }),
        step_down,
        AdminHttpAuth {
            token: admin_token,
            config: config.admin_http,
        },
        shutdown.clone(),
    );
    // Whichever way this function returns, the admin server stops with it.
    let _stop_on_return = shutdown.clone().drop_guard();

    // The Ledger API answers UNAVAILABLE (with the reason) until the core is ready, and on a
    // passive replica.
    let api = LedgerApi {
        serving: serving.clone(),
        health: health.clone(),
        auth: ledger_auth,
    };
    tracing::info!(address = %config.listen_address, "participant gRPC listening");
    let server = tokio::spawn(
        GrpcServer::new(&health, &[meridian_proto::FILE_DESCRIPTOR_SET])
            .add_service(LedgerServiceServer::new(api))
            .with_tls(tls.server.clone())
            .serve(listener, shutdown.clone())?,
    );

    let outcome = start_and_serve(
        config,
        key,
        owner,
        &readiness,
        (participant_metrics, fork),
        serving,
        shutdown.clone(),
    )
    .await;
    readiness.fail("shutdown", "shutting down");
    shutdown.cancel();
    let _ = server.await;
    let _ = admin_task.await;
    tracing::info!(%participant, "participant stopped");
    outcome
}

/// What every term of this process shares, kept warm across terms so that a promotion only
/// loads the store and subscribes.
struct Warm {
    config: ParticipantConfig,
    key: SigningKey,
    store: Arc<dyn ParticipantStore>,
    client: SequencerClient,
    /// The topology as known outside a term: synced from the manager at start, refreshed
    /// while passive, and taken over from the engine when a term ends.
    topology: Arc<Mutex<TopologyState>>,
    /// Up to when `topology` is known complete.
    topology_as_of: TopologyAsOf,
    readiness: Conditions,
    metrics: ParticipantMetrics,
    serving: Arc<Serving>,
    fork: ForkAlarm,
}

/// Up to which (sequencer) time the warm topology is known to hold every change: when its last
/// successful fetch from the manager began, or the last event of the term it was taken over
/// from. Topology changes reach the participant as sequenced events, and a promotion replays
/// only the events after the store's checkpoint: a warm copy that is not complete up to the
/// checkpoint would miss the changes before it for good (say, a party allocated just before
/// an outage that also takes the manager away), and the new active would reject every request
/// of that party as not authorized.
#[derive(Clone, Default)]
struct TopologyAsOf(Arc<AtomicU64>);

impl TopologyAsOf {
    fn advance(&self, to: Timestamp) {
        self.0.fetch_max(to.as_micros(), Ordering::Relaxed);
    }

    /// Whether the warm topology holds every change a term resuming after `checkpoint` does
    /// not replay (none, without a checkpoint: the stream is replayed from its start).
    fn covers(&self, checkpoint: Option<Timestamp>) -> bool {
        checkpoint.is_none_or(|c| c.as_micros() < self.0.load(Ordering::Relaxed))
    }
}

impl Warm {
    fn topology(&self) -> std::sync::MutexGuard<'_, TopologyState> {
        self.topology.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A term that serves: its core and its tasks.
struct Term {
    core: Arc<Core>,
    writer: JoinHandle<Result<(), WriterError>>,
    chores: JoinHandle<()>,
}

/// Why a replica's term ended.
enum TermEnd {
    /// The lease manager stopped renewing: lost, stepped down, or shutdown.
    Lease(HoldEnd),
    /// The writer stopped first (fenced, fatal, or at shutdown).
    Writer(Result<Result<(), WriterError>, tokio::task::JoinError>),
}

async fn start_and_serve(
    config: ParticipantConfig,
    key: SigningKey,
    owner: meridian_core::crypto::PublicKey,
    readiness: &Conditions,
    // What the node reports through: its metrics and the fork alarm.
    (metrics, fork): (ParticipantMetrics, ForkAlarm),
    serving: Arc<Serving>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let retry = Retry::new(readiness, &shutdown);
    let database_owner = DatabaseOwner::of_node(
        NodeKind::Participant,
        config.participant_id.as_str(),
        Some(&owner),
    );
    let Some(store) =
        meridian_node::owner::open_own_store(&config.storage, &database_owner, &retry, "", || {
            meridian_store::open_participant_store(&config.storage)
        })
        .await?
    else {
        return Ok(());
    };

    // A replica fences its store before anything else: until it wins the lease, every write
    // is refused.
    let manager = match config.replica_settings() {
        None => None,
        Some(settings) => {
            let node = settings.node.clone();
            let Some(lease) = retry
                .until("database", "", || {
                    meridian_store::open_lease_store(&config.storage, &node)
                })
                .await?
            else {
                return Ok(());
            };
            let manager = Arc::new(
                ReplicaManager::new(settings, lease, store.fence())
                    .with_metrics(metrics.lease.clone()),
            );
            serving.set_manager(manager.clone());
            tokio::spawn(
                serving
                    .clone()
                    .follow_role(readiness.clone(), shutdown.clone()),
            );
            Some(manager)
        }
    };

    let topology_as_of = TopologyAsOf::default();
    let Some(topology) = sync_topology(&config, owner, &topology_as_of, &retry).await? else {
        return Ok(());
    };
    let Some(client) = connect_sequencer(&config, &key, &retry).await? else {
        return Ok(());
    };

    let warm = Warm {
        config,
        key,
        store,
        client,
        topology: Arc::new(Mutex::new(topology)),
        topology_as_of,
        readiness: readiness.clone(),
        metrics,
        serving,
        fork,
    };
    match manager {
        None => serve_unreplicated(&warm, &shutdown).await,
        Some(manager) => {
            tokio::spawn(refresh_topology_while_passive(
                warm.topology.clone(),
                warm.topology_as_of.clone(),
                warm.config.topology_endpoints.clone(),
                manager.clone(),
                shutdown.clone(),
            ));
            // Warm and competing for the lease: the `replica` condition now says why this
            // replica is not ready.
            readiness.clear("startup");
            run_replica(&warm, &manager, &shutdown).await
        }
    }
}

/// The topology from the manager (everything it has), as the warm copy; `None` on shutdown.
async fn sync_topology(
    config: &ParticipantConfig,
    owner: meridian_core::crypto::PublicKey,
    as_of: &TopologyAsOf,
    retry: &Retry,
) -> anyhow::Result<Option<TopologyState>> {
    let endpoints = &config.topology_endpoints;
    let what = format!("cannot sync from the topology manager at {endpoints}");
    let topology = TopologyState::new(owner);
    let synced = retry
        .until("topology", &what, || {
            let mut state = topology.clone();
            async move {
                let started = Timestamp::now();
                meridian_client::topology::sync_topology(endpoints.as_slice(), &mut state)
                    .await
                    .map(|added| (added, state, started))
            }
        })
        .await?;
    Ok(synced.map(|(added, state, started)| {
        as_of.advance(started);
        tracing::info!(added, "topology synced from the topology manager");
        state
    }))
}

/// The sequencer session, authenticated; `None` on shutdown.
async fn connect_sequencer(
    config: &ParticipantConfig,
    key: &SigningKey,
    retry: &Retry,
) -> anyhow::Result<Option<SequencerClient>> {
    let member = config.participant_id.as_member();
    let client_config = SequencerClientConfig::new(
        config.sequencer_endpoints.first(),
        member.clone(),
        key.clone(),
    )
    .with_endpoints(config.sequencer_endpoints.as_slice().to_vec());
    let what = format!(
        "cannot connect to the sequencer as {member} (is the participant registered in the topology?)"
    );
    let client = retry
        .until("sequencer", &what, || {
            SequencerClient::connect(client_config.clone())
        })
        .await?;
    Ok(client)
}

/// The node as it always was: one term, from start-up to shutdown or a fatal error.
async fn serve_unreplicated(warm: &Warm, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let Some(mut term) =
        start_term(warm, shutdown.clone(), false, LeaseGuard::unreplicated()).await?
    else {
        return Ok(());
    };
    let result = (&mut term.writer).await;
    shutdown.cancel();
    let _ = term.chores.await;
    match result {
        Ok(Ok(()) | Err(WriterError::Interrupted)) => Ok(()),
        Ok(Err(WriterError::Fatal(error))) => Err(error),
        Ok(Err(error @ WriterError::Fenced(_))) => Err(error.into()),
        Err(join_error) => Err(anyhow::anyhow!("the writer task panicked: {join_error}")),
    }
}

/// A replica's life: passive until it wins the lease, then one term of serving, then passive
/// again — until shutdown or a fatal error.
async fn run_replica(
    warm: &Warm,
    manager: &ReplicaManager,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let Some(epoch) = manager.acquire(shutdown).await else {
            return Ok(());
        };
        let promoted_at = Instant::now();
        warm.serving.promoting();
        // Its own token, so that a fatal error can release the lease before the process
        // exits (a passive takes over at its next poll instead of after the lease timeout).
        let hold_token = shutdown.child_token();
        // A step-down drains the term (refuse new calls, answer the ones in flight) before the
        // lease goes.
        let hold = manager.hold_draining(epoch, &hold_token, || warm.serving.drain());
        tokio::pin!(hold);
        let term_token = shutdown.child_token();
        // The lease is renewed from the first moment, promotion included.
        let started = tokio::select! {
            end = &mut hold => Err(end),
            started = start_term(warm, term_token.clone(), true, manager.lease_guard()) => Ok(started),
        };
        let end = match started {
            Err(end) => {
                term_token.cancel();
                TermEnd::Lease(end)
            }
            Ok(Err(error)) => {
                // The stored state is unreadable: no replica can do better, stop loudly.
                term_token.cancel();
                hold_token.cancel();
                let _ = tokio::time::timeout(TERM_STOP_TIMEOUT, &mut hold).await;
                return Err(error);
            }
            Ok(Ok(None)) => {
                // Shutdown during promotion; the hold releases the lease on the same token.
                let _ = tokio::time::timeout(TERM_STOP_TIMEOUT, &mut hold).await;
                return Ok(());
            }
            Ok(Ok(Some(mut term))) => {
                tracing::info!(
                    %epoch,
                    promotion_ms = promoted_at.elapsed().as_millis(),
                    "promoted: replayed from the checkpoint, subscribed, serving"
                );
                let end = tokio::select! {
                    end = &mut hold => TermEnd::Lease(end),
                    result = &mut term.writer => TermEnd::Writer(result),
                };
                let demoted = !shutdown.is_cancelled();
                stop_term(warm, term, demoted, matches!(end, TermEnd::Writer(_))).await;
                end
            }
        };
        // The hold still runs when the writer ended first: stop it (which releases the lease
        // if this replica still holds it; a lost lease is not touched by a stale epoch).
        if matches!(end, TermEnd::Writer(_)) {
            hold_token.cancel();
            let _ = tokio::time::timeout(TERM_STOP_TIMEOUT, &mut hold).await;
        }
        if shutdown.is_cancelled() {
            return Ok(());
        }
        warm.readiness.clear("sequencer");
        // Each arm below reports the replica passive (or stops the process) first.
        let _demote_then_passive = PassiveOnDrop(&warm.serving);
        match end {
            TermEnd::Lease(HoldEnd::Shutdown) => return Ok(()),
            TermEnd::Lease(HoldEnd::Lost) => {
                tracing::warn!(%epoch, "lease lost; this replica is passive again");
                manager.demoted();
            }
            TermEnd::Lease(HoldEnd::SteppedDown) => {
                manager.demoted();
                if !manager.yield_to_others(shutdown).await {
                    return Ok(());
                }
            }
            TermEnd::Writer(Ok(Err(WriterError::Fenced(error)))) => {
                tracing::warn!(%epoch, %error, "the store refused a write; this replica is passive again");
                manager.demoted();
                // A step-down deactivates the fence before the hold reports it, so the writer
                // can be the first to notice: yield here too, or this replica would win the
                // released lease straight back.
                if !manager.yield_to_others(shutdown).await {
                    return Ok(());
                }
            }
            TermEnd::Writer(Ok(Ok(()) | Err(WriterError::Interrupted))) => {
                manager.demoted();
                return Err(anyhow::anyhow!(
                    "the writer stopped although this replica was active and not shutting down"
                ));
            }
            TermEnd::Writer(Ok(Err(WriterError::Fatal(error)))) => {
                manager.demoted();
                return Err(error);
            }
            TermEnd::Writer(Err(join_error)) => {
                manager.demoted();
                return Err(anyhow::anyhow!("the writer task panicked: {join_error}"));
            }
        }
    }
}

/// Marks the replica's phase passive once the manager reports it passive (at the end of the scope that
/// called `manager.demoted()`).
struct PassiveOnDrop<'a>(&'a Serving);

impl Drop for PassiveOnDrop<'_> {
    fn drop(&mut self) {
        self.0.withdraw(Phase::Passive);
    }
}

/// Ends a term: the Ledger API refuses at once, waiters learn the outcome is unknown, nothing
/// more is sent, and the tasks stop. The engine's topology becomes the warm topology.
async fn stop_term(warm: &Warm, mut term: Term, demoted: bool, writer_done: bool) {
    warm.serving.withdraw(if demoted {
        Phase::Demoting
    } else {
        Phase::Passive
    });
    term.core.end_term(demoted);
    if !writer_done
        && tokio::time::timeout(TERM_STOP_TIMEOUT, &mut term.writer)
            .await
            .is_err()
    {
        tracing::warn!("the writer did not stop in time; aborting it (its writes are fenced)");
        term.writer.abort();
    }
    if tokio::time::timeout(TERM_STOP_TIMEOUT, &mut term.chores)
        .await
        .is_err()
    {
        term.chores.abort();
    }
    let engine = term.core.engine();
    *warm.topology() = engine.topology().clone();
    if let Some(last_event) = engine.last_event() {
        warm.topology_as_of.advance(last_event);
    }
}

/// Loads the state from the store (the checkpoint and everything derived up to it, exactly as
/// a restart does), builds the engine and starts the writer, which subscribes from the
/// checkpoint. `None` when `term` ended first. With `refresh_topology` the topology manager
/// is asked, within a small budget, for changes since the warm copy.
async fn start_term(
    warm: &Warm,
    term: CancellationToken,
    refresh_topology: bool,
    lease: LeaseGuard,
) -> anyhow::Result<Option<Term>> {
    let retry = Retry::new(&warm.readiness, &term);
    let load = retry.until("database", "", || warm.store.load());
    let endpoints = warm.config.topology_endpoints.as_slice();
    let fetch = async {
        if !refresh_topology {
            return None;
        }
        fetch_topology_within(endpoints, PROMOTION_TOPOLOGY_BUDGET)
            .await
            .map_err(|error| tracing::warn!("promotion: {error}; using the warm copy"))
            .ok()
    };
    let (snapshot, fetched) = tokio::join!(load, fetch);
    let Some(snapshot) = snapshot? else {
        return Ok(None);
    };
    let fetched = match fetched {
        // The warm copy may lack changes the previous active processed before the checkpoint,
        // which the stream does not bring again (see `TopologyAsOf`): serving with it could
        // reject valid requests for good, so wait for the manager instead (not ready meanwhile).
        None if refresh_topology && !warm.topology_as_of.covers(snapshot.checkpoint) => {
            tracing::warn!(
                checkpoint = ?snapshot.checkpoint,
                "promotion: the warm topology may predate the checkpoint; waiting for the topology manager"
            );
            let fetched = retry
                .until("topology", "promotion", || {
                    fetch_topology_within(endpoints, PASSIVE_TOPOLOGY_REFRESH)
                })
                .await?;
            let Some(fetched) = fetched else {
                return Ok(None);
            };
            Some(fetched)
        }
        fetched => fetched,
    };
    let mut topology = warm.topology().clone();
    if let Some(entries) = fetched {
        let added = add_topology(&mut topology, &entries);
        if added > 0 {
            tracing::info!(
                added,
                "promotion: topology refreshed from the topology manager"
            );
        }
    }

    let restored = restore(&snapshot)?;
    tracing::info!(
        checkpoint = ?restored.checkpoint,
        ledger_end = %restored.ledger_end,
        active_contracts = restored.active_contracts.len(),
        pending = restored.pending.len(),
        in_flight = restored.in_flight.len(),
        "participant state loaded"
    );
    let participant = warm.config.participant_id.clone();
    let mut engine =
        ParticipantEngine::new(participant.clone(), warm.key.clone(), topology, restored);
    // The period's committed changes are read after the node serves (`remember_committed_changes`).
    engine.begin_remembering();
    let (commands, command_queue) = mpsc::channel(COMMAND_QUEUE);
    let ledger_end = engine.ledger_end();
    let core = Arc::new(Core {
        participant,
        key: warm.key.clone(),
        engine: Mutex::new(engine),
        store: warm.store.clone(),
        client: warm.client.clone(),
        commands,
        waiters: Mutex::default(),
        ledger_end: watch::channel(ledger_end).0,
        topology_version: watch::channel(0).0,
        in_flight: Arc::new(Semaphore::new(warm.config.limits.max_in_flight)),
        sends: Arc::new(Semaphore::new(MAX_CONCURRENT_SENDS)),
        metrics: warm.metrics.clone(),
        readiness: warm.readiness.clone(),
        fork: warm.fork.clone(),
        shutdown: term,
        lease,
        demoted: std::sync::atomic::AtomicBool::new(false),
        submissions: runtime::SubmissionGate::default(),
        stages: StageClock::new(warm.metrics.stages.clone()),
        config: warm.config.clone(),
    });

    // Responses of requests still pending were maybe never sent (crash right after the
    // commit); the mediator ignores a second copy of the ones that were.
    let responses: Vec<_> = core
        .engine()
        .pending()
        .filter_map(|p| p.response.clone())
        .collect();
    if !responses.is_empty() {
        core.send_in_background(responses).await;
    }

    let chores = tokio::spawn(runtime::run_chores(core.clone()));
    let writer = tokio::spawn(runtime::run_writer(core.clone(), command_queue));
    let settling = core.clone();
    tokio::spawn(async move { settling.settle_inherited().await });
    tokio::spawn(remember_committed_changes(core.clone()));
    warm.serving.serve(core.clone());
    warm.readiness.clear("startup");
    Ok(Some(Term {
        core,
        writer,
        chores,
    }))
}

/// Every topology transaction the manager has, or why not within `budget`.
async fn fetch_topology_within(
    endpoints: &[String],
    budget: Duration,
) -> Result<Vec<(Timestamp, SignedTopologyTransaction)>, String> {
    match tokio::time::timeout(budget, meridian_client::topology::fetch_topology(endpoints)).await {
        Ok(Ok(entries)) => Ok(entries),
        Ok(Err(error)) => Err(format!(
            "cannot fetch the topology from the manager: {error}"
        )),
        Err(_) => Err(format!(
            "the topology manager did not answer within {} ms",
            budget.as_millis()
        )),
    }
}

/// Adds verified topology entries; invalid ones are skipped (the engine does the same).
fn add_topology(
    state: &mut TopologyState,
    entries: &[(Timestamp, SignedTopologyTransaction)],
) -> usize {
    let mut added = 0;
    for (effective, signed) in entries {
        match state.add(*effective, signed) {
            Ok(true) => added += 1,
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "ignoring a topology transaction"),
        }
    }
    added
}

/// While passive, keeps the warm topology close to the manager's, so that a promotion does not
/// depend on the manager being reachable right then.
async fn refresh_topology_while_passive(
    topology: Arc<Mutex<TopologyState>>,
    as_of: TopologyAsOf,
    endpoints: meridian_node::config::Endpoints,
    manager: Arc<ReplicaManager>,
    shutdown: CancellationToken,
) {
    let mut ticks = Ticker::new(PASSIVE_TOPOLOGY_REFRESH, shutdown);
    while ticks.tick().await {
        if manager.role().is_active() {
            continue;
        }
        let started = Timestamp::now();
        match fetch_topology_within(endpoints.as_slice(), PASSIVE_TOPOLOGY_REFRESH).await {
            Ok(entries) => {
                let added = add_topology(
                    &mut topology.lock().unwrap_or_else(PoisonError::into_inner),
                    &entries,
                );
                as_of.advance(started);
                if added > 0 {
                    tracing::debug!(added, "passive: topology refreshed");
                }
            }
            Err(error) => tracing::debug!("passive: topology refresh: {error}"),
        }
    }
}

/// Committed changes read per page by [`remember_committed_changes`]: a page's keys are what
/// it holds in memory beyond the fingerprints (some 100 bytes each).
const COMMITTED_KEYS_PER_PAGE: u32 = 10_000;

/// Gives the engine a fingerprint of every committed change still within its deduplication
/// period, page by page, so that a retry of one is read back from the store before it is
/// decided; then ends the engine's remembering. Runs while the node already serves: reading
/// the keys takes about half a second per 200,000 (a period at saturation is most of a
/// million), which a takeover would otherwise wait for, and until it ends every submission
/// is read from the store instead. Loading the entries whole took several hundred MiB.
async fn remember_committed_changes(core: Arc<Core>) {
    let started = std::time::Instant::now();
    let now = Timestamp::now();
    let retry = Retry::new(&core.readiness, &core.shutdown);
    let mut after: Option<String> = None;
    let mut remembered = 0u64;
    loop {
        let page = retry
            .until("database", "cannot read the deduplication keys", || {
                core.store
                    .committed_dedup_keys(now, after.as_deref(), COMMITTED_KEYS_PER_PAGE)
            })
            .await;
        let page = match page {
            Ok(Some(page)) => page,
            Ok(None) => return,
            Err(gave_up) => {
                // Correct, only slower: the engine keeps reading every submission's entry.
                tracing::error!(
                    "{gave_up}; every submission's deduplication entry is read from the \
                     database until the participant restarts"
                );
                return;
            }
        };
        let Some((last, _)) = page.last() else {
            break;
        };
        let last = last.clone();
        let mut engine = core.engine();
        for (change_key, expires_at) in &page {
            engine.remember_forgotten(change_key, *expires_at);
        }
        drop(engine);
        remembered += page.len() as u64;
        after = Some(last);
    }
    core.engine().end_remembering();
    tracing::info!(
        committed = remembered,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "committed changes of the deduplication period remembered as fingerprints"
    );
}

/// The engine's restored state from the store's snapshot.
fn restore(snapshot: &meridian_store::ParticipantSnapshot) -> anyhow::Result<RestoredState> {
    let pending: Vec<PendingRequest> = snapshot
        .pending
        .iter()
        .map(|p| {
            serde_json::from_str(&p.record).with_context(|| {
                format!(
                    "pending request {} in the store is unreadable",
                    p.request_id
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut in_flight = Vec::new();
    for record in &snapshot.dedup {
        match &record.state {
            DedupState::InFlight => in_flight.push(LocalSubmission {
                change: meridian_core::protocol::ChangeId {
                    user_id: record.user_id.clone(),
                    act_as: record.act_as.clone(),
                    command_id: record.command_id.clone(),
                },
                submission_id: record.submission_id.clone(),
                max_sequencing_time: record.max_sequencing_time,
                dedup_period_us: record.dedup_period_us,
            }),
            // Not in a snapshot: the engine takes them as fingerprints
            // (`remember_committed_changes`).
            DedupState::Committed { .. } => {}
        }
    }
    Ok(RestoredState {
        checkpoint: snapshot.checkpoint,
        ledger_end: LedgerOffset(snapshot.ledger_end.0),
        active_contracts: snapshot
            .active_contracts
            .iter()
            .map(|c| c.contract.clone())
            .collect(),
        pending,
        in_flight,
    })
}
