//! The participant node: wires store, topology, engine, sequencer client, writer, Ledger API
//! and admin server together, and owns the start-up order.
//!
//! The admin HTTP server and the gRPC port come up first, so `/readyz` and every Ledger API
//! call (UNAVAILABLE) can say *why* the node is not serving yet: database, topology manager
//! or sequencer unreachable, or this participant not yet registered. The node turns ready only
//! once its topology is synced and its sequencer subscription runs.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use meridian_client::{SequencerClient, SequencerClientConfig};
use meridian_core::topology::TopologyState;
use meridian_core::{LedgerOffset, Timestamp};
use meridian_node::admin::{self, AdminState, StatusSource};
use meridian_node::health::Health;
use meridian_node::metrics::Metrics;
use meridian_node::Conditions;
use meridian_proto::v1::ledger_service_server::LedgerServiceServer;
use meridian_store::{DedupState, ParticipantStore};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::ParticipantConfig;
use crate::engine::{
    DedupStatus, LocalSubmission, ParticipantEngine, PendingRequest, RestoredState,
};
use crate::metrics::ParticipantMetrics;
use crate::runtime::{self, Core, COMMAND_QUEUE, MAX_CONCURRENT_SENDS};
use crate::service::{permission_name, LedgerApi};

const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Serves `/status` from the running core, or a minimal object while starting.
struct ParticipantStatus {
    participant: String,
    core: Arc<OnceLock<Arc<Core>>>,
}

impl StatusSource for ParticipantStatus {
    fn status(&self) -> serde_json::Value {
        let Some(core) = self.core.get() else {
            return serde_json::json!({
                "role": "participant",
                "participant_id": self.participant,
                "phase": "starting",
            });
        };
        let engine = core.engine();
        let hosted: serde_json::Map<String, serde_json::Value> = engine
            .topology()
            .latest()
            .hosted_by(&core.participant)
            .into_iter()
            .map(|(party, permission)| (party.to_string(), permission_name(permission).into()))
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
        })
    }
}

/// Retries `attempt` with capped exponential backoff until it succeeds or shutdown; while it
/// fails, readiness condition `condition` carries the error. `None` on shutdown.
async fn retry_until<T, E: std::fmt::Display, F, Fut>(
    condition: &'static str,
    readiness: &Conditions,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            result = attempt() => match result {
                Ok(value) => {
                    readiness.clear(condition);
                    return Some(value);
                }
                Err(error) => {
                    if readiness.fail(condition, error.to_string()) {
                        tracing::warn!(condition, %error, "start-up step failed; retrying");
                    }
                }
            },
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

/// Runs a participant until `shutdown` is cancelled or a fatal error (a fork in the sequencer
/// stream, a database that stays unwritable).
pub async fn run(config: ParticipantConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let health = Health::new();
    let readiness = Conditions::new(health.clone());
    readiness.fail("startup", "starting");
    let metrics = Arc::new(Metrics::new("meridian"));
    let participant_metrics = metrics.with_registry(ParticipantMetrics::register);
    let participant = config.participant_id.clone();
    let key = meridian_node::keys::load_or_create_key(&config.key_file)
        .with_context(|| format!("participant key for {participant}"))?;
    let owner = config
        .owner_key()
        .map_err(|e| anyhow::anyhow!("owner_public_key: {e}"))?;
    tracing::info!(%participant, public_key = %key.public_key(), "participant identity");

    let core_slot: Arc<OnceLock<Arc<Core>>> = Arc::default();
    let admin_listener = admin::bind(config.admin_address).await?;
    let admin_task = tokio::spawn(admin::serve_admin(
        admin_listener,
        AdminState {
            health: health.clone(),
            metrics: metrics.clone(),
            status: Arc::new(ParticipantStatus {
                participant: participant.to_string(),
                core: core_slot.clone(),
            }),
            step_down: None,
        },
        shutdown.clone(),
    ));

    // The Ledger API answers UNAVAILABLE (with the reason) until the core is ready.
    let api = LedgerApi {
        core: core_slot.clone(),
        health: health.clone(),
    };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(meridian_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building gRPC reflection")?;
    tokio::spawn(follow_health(
        health.clone(),
        health_reporter,
        shutdown.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(config.listen_address)
        .await
        .with_context(|| format!("cannot bind gRPC on {}", config.listen_address))?;
    tracing::info!(address = %config.listen_address, "participant gRPC listening");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(LedgerServiceServer::new(api))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown.clone().cancelled_owned(),
            ),
    );

    let outcome = start_and_serve(
        config,
        key,
        owner,
        &readiness,
        participant_metrics,
        core_slot,
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

async fn start_and_serve(
    config: ParticipantConfig,
    key: meridian_core::crypto::SigningKey,
    owner: meridian_core::crypto::PublicKey,
    readiness: &Conditions,
    metrics: ParticipantMetrics,
    core_slot: Arc<OnceLock<Arc<Core>>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let participant = config.participant_id.clone();
    let Some(store) = retry_until("database", readiness, &shutdown, || {
        meridian_store::open_participant_store(&config.storage)
    })
    .await
    else {
        return Ok(());
    };
    let Some(snapshot) = retry_until("database", readiness, &shutdown, || {
        store.load(Timestamp::now())
    })
    .await
    else {
        return Ok(());
    };

    let mut topology = TopologyState::new(owner);
    let endpoint = config.topology_endpoint.clone();
    let Some(added) = retry_until("topology", readiness, &shutdown, || {
        let endpoint = endpoint.clone();
        let mut state = topology.clone();
        async move {
            meridian_client::topology::sync_topology(&endpoint, &mut state)
                .await
                .map(|added| (added, state))
                .map_err(|e| format!("cannot sync from the topology manager at {endpoint}: {e}"))
        }
    })
    .await
    .map(|(added, state)| {
        topology = state;
        added
    }) else {
        return Ok(());
    };
    tracing::info!(added, "topology synced from the topology manager");

    let restored = restore(&snapshot)?;
    tracing::info!(
        checkpoint = ?restored.checkpoint,
        ledger_end = %restored.ledger_end,
        active_contracts = restored.active_contracts.len(),
        pending = restored.pending.len(),
        in_flight = restored.in_flight.len(),
        "participant state loaded"
    );
    let engine = ParticipantEngine::new(participant.clone(), key.clone(), topology, restored);

    let client_config = SequencerClientConfig::new(
        config.sequencer_endpoint.clone(),
        participant.as_member(),
        key,
    );
    let Some(client) = retry_until("sequencer", readiness, &shutdown, || {
        let client_config = client_config.clone();
        let member = client_config.member.clone();
        async move {
            SequencerClient::connect(client_config).await.map_err(|e| {
                format!(
                    "cannot connect to the sequencer as {member} (is the participant registered in the topology?): {e}"
                )
            })
        }
    })
    .await
    else {
        return Ok(());
    };

    let (commands, command_queue) = mpsc::channel(COMMAND_QUEUE);
    let ledger_end = engine.ledger_end();
    let core = Arc::new(Core {
        participant: participant.clone(),
        engine: Mutex::new(engine),
        store: store.clone() as Arc<dyn ParticipantStore>,
        client,
        commands,
        waiters: Mutex::default(),
        ledger_end: watch::channel(ledger_end).0,
        topology_version: watch::channel(0).0,
        in_flight: Arc::new(Semaphore::new(config.limits.max_in_flight)),
        sends: Arc::new(Semaphore::new(MAX_CONCURRENT_SENDS)),
        metrics,
        readiness: readiness.clone(),
        shutdown: shutdown.clone(),
        config,
    });

    // Responses of requests still pending were maybe never sent (crash right after the
    // commit); the sequencer deduplicates the ones that were.
    let responses: Vec<_> = core
        .engine()
        .pending()
        .filter_map(|p| p.response.clone())
        .collect();
    for response in responses {
        core.send_in_background(response).await;
    }

    let _ = core_slot.set(core.clone());
    let chores = tokio::spawn(runtime::run_chores(core.clone()));
    let writer = tokio::spawn(runtime::run_writer(core.clone(), command_queue));
    readiness.clear("startup");
    let result = writer.await;
    shutdown.cancel();
    let _ = chores.await;
    match result {
        Ok(result) => result,
        Err(join_error) => Err(anyhow::anyhow!("the writer task panicked: {join_error}")),
    }
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
    let mut committed = Vec::new();
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
            DedupState::Committed {
                transaction_id,
                offset,
                expires_at,
            } => committed.push((
                record.change_key.clone(),
                DedupStatus::Committed {
                    transaction_id: transaction_id.clone(),
                    offset: *offset,
                    expires_at: *expires_at,
                },
            )),
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
        committed,
    })
}

/// Mirrors readiness into `grpc.health.v1.Health` for the Ledger service.
async fn follow_health(
    health: Health,
    reporter: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    let mut changes = health.subscribe();
    loop {
        if health.is_ready() {
            reporter
                .set_serving::<LedgerServiceServer<LedgerApi>>()
                .await;
        } else {
            reporter
                .set_not_serving::<LedgerServiceServer<LedgerApi>>()
                .await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}
