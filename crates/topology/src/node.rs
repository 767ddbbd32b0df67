//! The topology manager node: wiring and start-up.
//!
//! Start-up order: keys (fatal if unreadable) → admin HTTP (so `/readyz` can say what the node
//! waits for) → store → the signed history, verified against the owner key (fatal if it does
//! not verify: the key file was swapped) → the manager's own registration at the sequencer
//! with an owner-signed `TopologyManager` mapping (published as serial 1 on a new synchronizer)
//! → the manager's sequencer session → any unpublished intent finished → gRPC.
//! Everything that waits on the network or the database retries with capped backoff until
//! shutdown, reporting the reason as not-ready; each attempt is itself time-bounded.
//!
//! A replica (`[replication]`, DESIGN.md §5) opens the store and the gRPC port at once and
//! stays passive — UNAVAILABLE naming the active replica, health NOT_SERVING, `/readyz` 503 —
//! until it holds the lease; then it runs the steps from the history load on, exactly as a
//! restart does, and serves until it loses or hands over the lease.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meridian_client::{SequencerClient, SequencerClientConfig};
use meridian_core::crypto::SigningKey;
use meridian_core::topology::{SignedTopologyTransaction, TopologyMapping, TopologyTransaction};
use meridian_core::{MemberId, Timestamp};
use meridian_node::admin::{self, AdminState, StatusSource};
use meridian_node::conditions::Conditions;
use meridian_node::health::{grpc_health_service, Health};
use meridian_node::keys::load_or_create_key;
use meridian_node::metrics::Metrics;
use meridian_node::replica::{ReplicaManager, ReplicaSettings};
use meridian_node::replication::Replication;
use meridian_proto::v1::topology_admin_service_server::TopologyAdminServiceServer;
use meridian_store::{TopologyRecord, TopologyStore};
use tokio_util::sync::CancellationToken;

use crate::config::TopologyManagerConfig;
use crate::manager::{is_fenced, Loaded, Manager};
use crate::metrics::TopologyMetrics;
use crate::publisher::{Publisher, SEND_WINDOW};
use crate::service::{Serving, TopologyAdminApi};

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
    // A child, so that stopping on a fatal error stops our tasks but not the caller's others.
    let shutdown = shutdown.child_token();

    let health = Health::new();
    let readiness = Conditions::new(health.clone());
    readiness.fail("startup", "starting");
    let metrics = Arc::new(Metrics::new("meridian"));
    let topology_metrics = metrics.with_registry(TopologyMetrics::register);
    let serving = Arc::new(Serving::default());

    let step_down = config.replication.is_some().then(|| {
        let serving = serving.clone();
        Arc::new(move || serving.replication().is_some_and(|r| r.step_down()))
            as Arc<dyn Fn() -> bool + Send + Sync>
    });
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
                serving: serving.clone(),
            }),
            step_down,
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
    let activation = Activation {
        config: Arc::new(config.clone()),
        member,
        owner,
        key,
        store,
        readiness: readiness.clone(),
        metrics: topology_metrics.clone(),
    };
    let api = TopologyAdminApi {
        serving: serving.clone(),
        admin_token: config.admin_token.clone(),
        metrics: topology_metrics,
    };

    let result = match config.replica_settings() {
        None => serve_unreplicated(&config, activation, api, &health, &shutdown).await,
        Some(settings) => {
            serve_replicated(&config, settings, activation, api, &health, &shutdown).await
        }
    };
    readiness.fail("shutdown", "shutting down");
    shutdown.cancel();
    let _ = admin_task.await;
    result?;
    tracing::info!("topology manager stopped");
    Ok(())
}

/// A single manager: the gRPC port opens once the manager is ready to serve.
async fn serve_unreplicated(
    config: &TopologyManagerConfig,
    activation: Activation,
    api: TopologyAdminApi,
    health: &Health,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let readiness = activation.readiness.clone();
    let metrics = activation.metrics.clone();
    let Some(manager) = activation.activate(shutdown).await? else {
        return Ok(());
    };
    api.serving.set(Some(manager.clone()));
    tokio::spawn(retry_pending(
        manager,
        metrics,
        readiness.clone(),
        shutdown.clone(),
    ));
    let (grpc, listener) = grpc_server(config, api, health, false, shutdown).await?;
    readiness.clear("startup");
    tracing::info!(address = %config.listen_address, "topology manager gRPC listening");
    serve_grpc(grpc, listener, shutdown.clone()).await
}

/// One replica of several: warm (store open, gRPC up answering UNAVAILABLE, health
/// NOT_SERVING) while passive; on promotion it starts exactly as an unreplicated manager
/// restarts — finishing the intent the previous active may have left — and serves.
async fn serve_replicated(
    config: &TopologyManagerConfig,
    settings: ReplicaSettings,
    activation: Activation,
    api: TopologyAdminApi,
    health: &Health,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let readiness = activation.readiness.clone();
    let waiter = Waiter {
        readiness: readiness.clone(),
        shutdown: shutdown.clone(),
    };
    let Some(lease) = waiter
        .retry("database", "cannot open the replica lease", || {
            let (storage, node) = (config.storage.clone(), settings.node.clone());
            async move { meridian_store::open_lease_store(&storage, &node).await }
        })
        .await
    else {
        return Ok(());
    };
    tracing::info!(replica = %settings.replica_id, endpoint = %settings.advertised_endpoint, "topology manager replica starting passive");
    let replication = Arc::new(Replication::new(
        ReplicaManager::new(settings, lease, activation.store.fence()),
        readiness.clone(),
    ));
    let serving = api.serving.clone();
    serving.set_replication(
        replication.clone(),
        activation.store.clone(),
        activation.owner.public_key(),
    );
    let follower = tokio::spawn(replication.clone().follow(shutdown.clone()));
    let (grpc, listener) = grpc_server(config, api, health, true, shutdown).await?;
    tracing::info!(address = %config.listen_address, "topology manager gRPC listening (passive until it holds the lease)");
    let grpc_task = tokio::spawn(serve_grpc(grpc, listener, shutdown.clone()));
    readiness.clear("startup");

    let result = replication
        .run(shutdown, |active| {
            let (activation, serving, replication) =
                (activation.clone(), serving.clone(), replication.clone());
            async move {
                let readiness = activation.readiness.clone();
                let metrics = activation.metrics.clone();
                let Some(manager) = activation.activate(&active).await? else {
                    return Ok(());
                };
                serving.set(Some(manager.clone()));
                let retry = tokio::spawn(retry_pending(
                    manager,
                    metrics,
                    readiness.clone(),
                    active.clone(),
                ));
                replication.serving();
                active.cancelled().await;
                serving.set(None);
                let _ = retry.await;
                for condition in ACTIVE_CONDITIONS {
                    readiness.clear(condition);
                }
                Ok(())
            }
        })
        .await;
    follower.abort();
    shutdown.cancel();
    let served = grpc_task
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("the gRPC task failed: {e}")));
    result.and(served)
}

/// Readiness conditions only the active work sets; a replica that stops being active clears
/// them, so its `/readyz` reason says "passive", not what the old work last saw.
const ACTIVE_CONDITIONS: [&str; 2] = ["sequencer", "publishing"];

/// Builds the gRPC services and binds the listener. Health mirrors readiness for the admin
/// service; for a replica also for the whole server (`""`), so a probe without a service name
/// sees a passive replica as NOT_SERVING too.
async fn grpc_server(
    config: &TopologyManagerConfig,
    api: TopologyAdminApi,
    health: &Health,
    overall: bool,
    shutdown: &CancellationToken,
) -> anyhow::Result<(tonic::transport::server::Router, tokio::net::TcpListener)> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(meridian_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building gRPC reflection")?;
    let admin = <TopologyAdminServiceServer<TopologyAdminApi> as tonic::server::NamedService>::NAME;
    // With `overall`, the whole server (the empty service name) mirrors readiness too.
    let services = if overall {
        vec![admin, ""]
    } else {
        vec![admin]
    };
    let health_service = grpc_health_service(health, services, shutdown);
    let listener = tokio::net::TcpListener::bind(config.listen_address)
        .await
        .with_context(|| format!("cannot bind gRPC on {}", config.listen_address))?;
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(TopologyAdminServiceServer::new(api));
    Ok((router, listener))
}

async fn serve_grpc(
    router: tonic::transport::server::Router,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    router
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.cancelled_owned(),
        )
        .await
        .context("gRPC server failed")
}

/// What it takes to start the manager from the database: at first start, at a restart, and
/// at every promotion of a replica.
#[derive(Clone)]
struct Activation {
    config: Arc<TopologyManagerConfig>,
    member: MemberId,
    owner: SigningKey,
    key: SigningKey,
    store: Arc<dyn TopologyStore>,
    readiness: Conditions,
    metrics: TopologyMetrics,
}

impl Activation {
    /// Loads and verifies the history, registers the manager itself, connects to the
    /// sequencer and publishes any unfinished intent. `Ok(None)` when `stop` is cancelled
    /// first — at shutdown, or when a write found this replica fenced (then `stop` is
    /// cancelled here).
    async fn activate(&self, stop: &CancellationToken) -> anyhow::Result<Option<Arc<Manager>>> {
        let Activation {
            config,
            member,
            owner,
            key,
            store,
            readiness,
            metrics: _,
        } = self;
        let waiter = Waiter {
            readiness: readiness.clone(),
            shutdown: stop.clone(),
        };
        let Some(records) = waiter
            .retry("database", "cannot read the topology history", || {
                let store = store.clone();
                async move { store.records().await }
            })
            .await
        else {
            return Ok(None);
        };
        let mut loaded = Loaded::from_records(owner.public_key(), records)?;
        tracing::info!(
            published = loaded.state.signed_history().len(),
            pending = ?loaded.pending.as_ref().map(|p| p.serial),
            "topology history loaded"
        );

        let endpoints = config.sequencer_endpoints.as_slice().to_vec();
        let own = loaded.own_registration(member, &key.public_key(), &owner.public_key())?;
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
                (SignedTopologyTransaction::sign(&transaction, owner), true)
            }
        };
        // Registered before its intent is recorded, like every member (see `manager`).
        if waiter
            .retry("sequencer", "cannot register at the sequencer", || {
                let (endpoints, signed) = (endpoints.clone(), own_signed.clone());
                async move {
                    meridian_client::register_member_with_topology(&endpoints, &signed).await
                }
            })
            .await
            .is_none()
        {
            return Ok(None);
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
                        async move {
                            let recorded = store.record_intent(serial, &signed, deadline).await;
                            if let Err(error) = &recorded {
                                if is_fenced(error) {
                                    // Another replica is active: stop, the role loop demotes.
                                    stop.cancel();
                                }
                            }
                            recorded
                        }
                    },
                )
                .await
                .is_none()
            {
                return Ok(None);
            }
            loaded.highest_serial = serial;
            loaded.pending = Some(TopologyRecord {
                serial,
                signed: own_signed.clone(),
                max_sequencing_time: deadline,
                effective: None,
            });
        }

        let client_config =
            SequencerClientConfig::new(endpoints[0].clone(), member.clone(), key.clone())
                .with_endpoints(endpoints.clone());
        let Some(client) = waiter
            .retry("sequencer", "cannot authenticate at the sequencer", || {
                SequencerClient::connect(client_config.clone())
            })
            .await
        else {
            return Ok(None);
        };
        let manager = Arc::new(
            Manager::new(
                member.clone(),
                owner.clone(),
                store.clone(),
                Publisher::new(endpoints, client),
                loaded,
            )
            .with_fence_alarm(stop.clone()),
        );
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
            return Ok(None);
        }
        Ok(Some(manager))
    }
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
    serving: Arc<Serving>,
}

impl StatusSource for ManagerStatus {
    fn status(&self) -> serde_json::Value {
        let mut status = serde_json::json!({
            "role": "topology-manager",
            "member": self.member,
            "owner_public_key": self.owner_public_key,
            "listen_address": self.listen_address,
        });
        if let Some(replication) = self.serving.replication() {
            status["replication"] = replication.status();
        }
        match self.serving.manager() {
            None if self.serving.replication().is_some() => status["phase"] = "passive".into(),
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
