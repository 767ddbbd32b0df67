//! The topology manager node: wiring and start-up.
//!
//! Start-up order: keys (fatal if unreadable) → admin HTTP (so `/readyz` can say what the node
//! waits for) → store → the signed history, verified against the owner key (fatal if it does
//! not verify: the key file was swapped) → the manager's own registration at the sequencer
//! with an owner-signed `TopologyManager` mapping (published as serial 1 on a new synchronizer)
//! → the manager's sequencer session → any unpublished intent finished → gRPC.
//! Everything that waits on the network or the database retries with capped backoff until
//! shutdown, reporting the reason as not-ready; each attempt is itself time-bounded.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use meridian_client::{SequencerClient, SequencerClientConfig};
use meridian_core::topology::{SignedTopologyTransaction, TopologyMapping, TopologyTransaction};
use meridian_core::Timestamp;
use meridian_node::admin::{self, AdminState, StatusSource};
use meridian_node::conditions::Conditions;
use meridian_node::health::Health;
use meridian_node::keys::load_or_create_key;
use meridian_node::metrics::Metrics;
use meridian_proto::v1::topology_admin_service_server::TopologyAdminServiceServer;
use meridian_store::{TopologyRecord, TopologyStore};
use tokio_util::sync::CancellationToken;

use crate::config::TopologyManagerConfig;
use crate::manager::{Loaded, Manager};
use crate::metrics::TopologyMetrics;
use crate::publisher::{Publisher, SEND_WINDOW};
use crate::service::TopologyAdminApi;

/// Longest wait between attempts while the database or the sequencer is away.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often an unpublished change is retried in the background.
const PENDING_RETRY: Duration = Duration::from_secs(1);

/// Runs a topology manager until `shutdown` is cancelled. The future is `Send`, so it can be
/// spawned on a multi-threaded runtime next to other nodes (tests do).
pub fn run(
    config: TopologyManagerConfig,
    shutdown: CancellationToken,
) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> {
    Box::pin(run_manager(config, shutdown))
}

async fn run_manager(
    config: TopologyManagerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // `run` may get a config that never went through `load`.
    config
        .check("topology manager config")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let member = config.member()?;
    let owner = load_or_create_key(&config.owner_key_file)?;
    let key = load_or_create_key(&config.key_file)?;
    anyhow::ensure!(
        owner.public_key() != key.public_key(),
        "key_file and owner_key_file hold the same key; the member key must not be the owner key"
    );
    tracing::info!(%member, owner_public_key = %owner.public_key(), "topology manager starting");

    let health = Health::new();
    let readiness = Conditions::new(health.clone());
    readiness.fail("startup", "starting");
    let metrics = Arc::new(Metrics::new("meridian"));
    let topology_metrics = metrics.with_registry(TopologyMetrics::register);
    let manager_slot: Arc<OnceLock<Arc<Manager>>> = Arc::default();

    let admin_listener = admin::bind(config.admin_address).await?;
    let admin_task = tokio::spawn(admin::serve_admin(
        admin_listener,
        AdminState {
            health: health.clone(),
            metrics: metrics.clone(),
            status: Arc::new(ManagerStatus {
                member: member.to_string(),
                owner_public_key: owner.public_key().to_string(),
                listen_address: config.listen_address.to_string(),
                manager: manager_slot.clone(),
            }),
            step_down: None,
        },
        shutdown.clone(),
    ));

    let waiter = Waiter {
        readiness: readiness.clone(),
        shutdown: shutdown.clone(),
    };
    let Some(store) = waiter
        .retry("database", "cannot open the topology database", || {
            let storage = config.storage.clone();
            async move { meridian_store::open_topology_store(&storage).await }
        })
        .await
    else {
        return Ok(());
    };
    let Some(records) = waiter
        .retry("database", "cannot read the topology history", || {
            let store = store.clone();
            async move { store.records().await }
        })
        .await
    else {
        return Ok(());
    };
    let mut loaded = Loaded::from_records(owner.public_key(), records)?;
    tracing::info!(
        published = loaded.state.signed_history().len(),
        pending = ?loaded.pending.as_ref().map(|p| p.serial),
        "topology history loaded"
    );

    let endpoint = config.sequencer_endpoint.clone();
    let own = loaded.own_registration(&member, &key.public_key(), &owner.public_key())?;
    let (own_signed, new_intent) = match own {
        Some(signed) => (signed, false),
        None => {
            let transaction = TopologyTransaction {
                serial: loaded.highest_serial + 1,
                mapping: TopologyMapping::TopologyManager {
                    manager: member.clone(),
                    public_key: key.public_key().to_string(),
                },
            };
            (SignedTopologyTransaction::sign(&transaction, &owner), true)
        }
    };
    // Registered before its intent is recorded, like every member (see `manager`).
    if waiter
        .retry("sequencer", "cannot register at the sequencer", || {
            let (endpoint, signed) = (endpoint.clone(), own_signed.clone());
            async move { meridian_client::register_member_with_topology(&endpoint, &signed).await }
        })
        .await
        .is_none()
    {
        return Ok(());
    }
    if new_intent {
        let serial = loaded.highest_serial + 1;
        let deadline = Timestamp::now().saturating_add(SEND_WINDOW);
        if waiter
            .retry(
                "database",
                "cannot record the manager's registration",
                || {
                    let (store, signed) = (store.clone(), own_signed.clone());
                    async move { store.record_intent(serial, &signed, deadline).await }
                },
            )
            .await
            .is_none()
        {
            return Ok(());
        }
        loaded.highest_serial = serial;
        loaded.pending = Some(TopologyRecord {
            serial,
            signed: own_signed.clone(),
            max_sequencing_time: deadline,
            effective: None,
        });
    }

    let client_config = SequencerClientConfig::new(endpoint.clone(), member.clone(), key.clone());
    let Some(client) = waiter
        .retry("sequencer", "cannot authenticate at the sequencer", || {
            SequencerClient::connect(client_config.clone())
        })
        .await
    else {
        return Ok(());
    };
    let manager = Arc::new(Manager::new(
        member.clone(),
        owner,
        store as Arc<dyn TopologyStore>,
        Publisher::new(endpoint, client),
        loaded,
    ));
    if waiter
        .retry(
            "publishing",
            "cannot publish the unpublished change",
            || {
                let manager = manager.clone();
                async move { manager.finish_pending().await }
            },
        )
        .await
        .is_none()
    {
        return Ok(());
    }
    let _ = manager_slot.set(manager.clone());
    tokio::spawn(retry_pending(
        manager.clone(),
        topology_metrics.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));

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
    readiness.clear("startup");
    tracing::info!(address = %config.listen_address, "topology manager gRPC listening");
    let served = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(TopologyAdminServiceServer::new(TopologyAdminApi {
            manager,
            admin_token: config.admin_token.clone(),
            metrics: topology_metrics,
        }))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.clone().cancelled_owned(),
        )
        .await;
    readiness.fail("shutdown", "shutting down");
    let _ = admin_task.await;
    served.context("gRPC server failed")?;
    tracing::info!("topology manager stopped");
    Ok(())
}

/// Retries start-up steps with capped exponential backoff, reporting why the node waits.
struct Waiter {
    readiness: Conditions,
    shutdown: CancellationToken,
}

impl Waiter {
    /// Runs `attempt` until it succeeds (`Some`) or shutdown is requested (`None`).
    async fn retry<T, E, F, Fut>(
        &self,
        condition: &'static str,
        what: &'static str,
        mut attempt: F,
    ) -> Option<T>
    where
        E: Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut delay = Duration::from_millis(100);
        loop {
            match attempt().await {
                Ok(value) => {
                    self.readiness.clear(condition);
                    return Some(value);
                }
                Err(error) => {
                    if self.readiness.fail(condition, format!("{what}: {error}")) {
                        tracing::error!(%error, "{what}; retrying");
                    }
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_BACKOFF);
        }
    }
}

/// Publishes a change whose send failed, without waiting for the next admin call, so members
/// learn of it as soon as the sequencer is back; keeps readiness and gauges current.
async fn retry_pending(
    manager: Arc<Manager>,
    metrics: TopologyMetrics,
    readiness: Conditions,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(PENDING_RETRY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if manager.has_pending() {
            match manager.finish_pending().await {
                Ok(()) => readiness.clear("publishing"),
                Err(error) => {
                    if readiness.fail("publishing", error.to_string()) {
                        tracing::warn!(%error, "an accepted topology change is not published yet");
                    }
                }
            }
        } else {
            readiness.clear("publishing");
        }
        let summary = manager.summary();
        metrics.published_serial.set(
            summary
                .highest_published_serial
                .map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX)),
        );
        metrics
            .pending
            .set(i64::from(summary.pending_serial.is_some()));
    }
}

struct ManagerStatus {
    member: String,
    owner_public_key: String,
    listen_address: String,
    manager: Arc<OnceLock<Arc<Manager>>>,
}

impl StatusSource for ManagerStatus {
    fn status(&self) -> serde_json::Value {
        let mut status = serde_json::json!({
            "role": "topology-manager",
            "member": self.member,
            "owner_public_key": self.owner_public_key,
            "listen_address": self.listen_address,
        });
        match self.manager.get() {
            None => status["phase"] = "starting".into(),
            Some(manager) => {
                let summary = manager.summary();
                status["phase"] = "serving".into();
                status["published_serial"] = summary.highest_published_serial.into();
                status["pending_serial"] = summary.pending_serial.into();
                status["participants"] = summary.participants.into();
                status["mediators"] = summary.mediators.into();
                status["parties"] = summary.parties.into();
                status["last_effective_us"] = summary.last_effective.map(|t| t.as_micros()).into();
            }
        }
        status
    }
}

/// Mirrors readiness into `grpc.health.v1.Health` for the topology admin service.
async fn follow_health(
    health: Health,
    reporter: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    let mut changes = health.subscribe();
    loop {
        if health.is_ready() {
            reporter
                .set_serving::<TopologyAdminServiceServer<TopologyAdminApi>>()
                .await;
        } else {
            reporter
                .set_not_serving::<TopologyAdminServiceServer<TopologyAdminApi>>()
                .await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}
