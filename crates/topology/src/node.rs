//! The topology manager node: wiring and start-up.
//!
//! Start-up order: keys (fatal if unreadable) → admin HTTP (so `/readyz` can say what the node
//! waits for) → store → the signed history, verified against the owner key (fatal if it does
//! not verify: the key file was swapped) → the manager's own registration at the sequencer
//! with an owner-signed `TopologyManager` mapping (published as serial 1 on a new synchronizer)
//! → the manager's sequencer session → its published history confirmed at the sequencer (a
//! sequencer that lost the last published change is a fork: the manager halts with the alarm
//! of [`meridian_node::fork`]) → any unpublished intent finished → gRPC.
//! Everything that waits on the network or the database retries through
//! [`meridian_node::retry`] until shutdown, reporting the reason as not-ready; each attempt is
//! itself time-bounded.
//!
//! A replica (`[replication]`, DESIGN.md §5) opens the store and the gRPC port at once and
//! stays passive — UNAVAILABLE naming the active replica, health NOT_SERVING, `/readyz` 503 —
//! until it holds the lease; then each *term* ([`Warm`] → `start_term`) runs the steps from
//! the history load on, exactly as a restart does, and serves until it loses or hands over the
//! lease.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use meridian_client::{SequencerClient, SequencerClientConfig};
use meridian_core::crypto::SigningKey;
use meridian_core::topology::{SignedTopologyTransaction, TopologyMapping, TopologyTransaction};
use meridian_core::{MemberId, Timestamp};
use meridian_node::admin::{self, AdminHttpAuth, NodeState, StatusSource};
use meridian_node::admin_token::AdminToken;
use meridian_node::conditions::Conditions;
use meridian_node::fork::ForkAlarm;
use meridian_node::grpc::GrpcServer;
use meridian_node::health::Health;
use meridian_node::keys::load_node_key;
use meridian_node::replica::{ReplicaManager, ReplicaSettings};
use meridian_node::replication::{hand_over_hooks, Replication};
use meridian_node::retry::Retry;
use meridian_node::shutdown::{stop_after_hand_over, Ticker};
use meridian_proto::v1::topology_admin_service_server::TopologyAdminServiceServer;
use meridian_store::{DatabaseOwner, NodeKind, TopologyRecord, TopologyStore};
use tokio_util::sync::CancellationToken;

use crate::config::TopologyManagerConfig;
use crate::manager::{is_fenced, Loaded, Manager};
use crate::metrics::TopologyMetrics;
use crate::publisher::{Publisher, SEND_WINDOW};
use crate::service::{Serving, TopologyAdminApi};

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

async fn run_manager(config: TopologyManagerConfig, stop: CancellationToken) -> anyhow::Result<()> {
    // `run` may get a config that never went through `load`.
    config
        .check("topology manager config")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let member = config.member()?;
    let replicated = config.replication.is_some();
    let owner = load_node_key(&config.owner_key_file, replicated)?;
    let key = load_node_key(&config.key_file, replicated)?;
    anyhow::ensure!(
        owner.public_key() != key.public_key(),
        "key_file and owner_key_file hold the same key; the member key must not be the owner key"
    );
    tracing::info!(%member, owner_public_key = %owner.public_key(), "topology manager starting");
    let admin_token = AdminToken::configured(
        config.admin_token.as_deref(),
        config.admin_token_file.as_deref(),
        "from the topology manager's config",
    )?;

    // TLS first: a config whose certificate or key cannot be used stops the node before it
    // listens, and every client of other nodes it opens uses these settings.
    let tls = config.tls.start("topology manager")?;
    let node = NodeState::starting().with_tls(tls.server.clone());
    let readiness = node.readiness.clone();
    let topology_metrics = node.metrics.with_registry(TopologyMetrics::register);
    let fork = node
        .metrics
        .with_registry(|registry| ForkAlarm::register(registry, readiness.clone()));
    let serving = Arc::new(Serving::default());

    // A stop steps an active replica down first, as a switchover does. Its own token, so that
    // stopping on a fatal error stops our tasks but not the caller's others.
    let (step_down, hand_over) = config
        .replication
        .is_some()
        .then(|| {
            let serving = serving.clone();
            hand_over_hooks(move || serving.replication().cloned())
        })
        .unzip();
    let shutdown = stop_after_hand_over(stop, hand_over);
    let admin_task = node.spawn_admin_with(
        admin::bind(config.admin_address).await?,
        Arc::new(ManagerStatus {
            member: member.to_string(),
            owner_public_key: owner.public_key().to_string(),
            listen_address: config.listen_address.to_string(),
            serving: serving.clone(),
            fork: fork.clone(),
        }),
        step_down,
        AdminHttpAuth {
            token: admin_token.clone(),
            config: config.admin_http,
        },
        shutdown.clone(),
    );

    let retry = Retry::new(&readiness, &shutdown);
    let owner_key = owner.public_key();
    let database_owner =
        DatabaseOwner::of_node(NodeKind::TopologyManager, member.as_str(), Some(&owner_key));
    let Some(store) = meridian_node::owner::open_own_store(
        &config.storage,
        &database_owner,
        &retry,
        "cannot open the topology database",
        || meridian_store::open_topology_store(&config.storage),
    )
    .await?
    else {
        return Ok(());
    };
    let warm = Warm {
        config: Arc::new(config.clone()),
        member,
        owner,
        key,
        store,
        readiness: readiness.clone(),
        metrics: topology_metrics.clone(),
        fork,
    };
    let api = TopologyAdminApi {
        serving: serving.clone(),
        admin_token: admin_token.clone(),
        metrics: topology_metrics,
    };

    let result = match config.replica_settings() {
        None => serve_unreplicated(&config, warm, api, &node.health, &shutdown).await,
        Some(settings) => {
            serve_replicated(&config, settings, warm, api, &node.health, &shutdown).await
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
    warm: Warm,
    api: TopologyAdminApi,
    health: &Health,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // The retry task stops with `shutdown`; nothing waits for it.
    if warm.serve_term(&api.serving, shutdown).await?.is_none() {
        return Ok(());
    }
    let grpc = grpc_server(config, api, health, shutdown).await?;
    warm.readiness.clear("startup");
    tracing::info!(address = %config.listen_address, "topology manager gRPC listening");
    grpc.await
}

/// One replica of several: warm (store open, gRPC up answering UNAVAILABLE, health
/// NOT_SERVING) while passive; on promotion it starts exactly as an unreplicated manager
/// restarts — finishing the intent the previous active may have left — and serves.
async fn serve_replicated(
    config: &TopologyManagerConfig,
    settings: ReplicaSettings,
    warm: Warm,
    api: TopologyAdminApi,
    health: &Health,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let readiness = warm.readiness.clone();
    let Some(lease) = Retry::new(&readiness, shutdown)
        .until("database", "cannot open the replica lease", || {
            meridian_store::open_lease_store(&config.storage, &settings.node)
        })
        .await?
    else {
        return Ok(());
    };
    tracing::info!(replica = %settings.replica_id, endpoint = %settings.advertised_endpoint, "topology manager replica starting passive");
    let replication = Arc::new(Replication::new(
        ReplicaManager::new(settings, lease, warm.store.fence())
            .with_metrics(warm.metrics.lease.clone()),
        readiness.clone(),
    ));
    let serving = api.serving.clone();
    serving.set_replication(
        replication.clone(),
        warm.store.clone(),
        warm.owner.public_key(),
    );
    let follower = tokio::spawn(replication.clone().follow(shutdown.clone()));
    let grpc = grpc_server(config, api, health, shutdown).await?;
    tracing::info!(address = %config.listen_address, "topology manager gRPC listening (passive until it holds the lease)");
    let grpc_task = tokio::spawn(grpc);
    readiness.clear("startup");

    let result = replication
        .run(shutdown, |term| {
            let (warm, serving, replication) = (warm.clone(), serving.clone(), replication.clone());
            async move {
                let Some(retry) = warm.serve_term(&serving, &term).await? else {
                    return Ok(());
                };
                replication.serving();
                term.cancelled().await;
                serving.set(None);
                let _ = retry.await;
                for condition in TERM_CONDITIONS {
                    warm.readiness.clear(condition);
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

/// Readiness conditions only a term sets; a replica whose term ends clears them, so its
/// `/readyz` reason says "passive", not what the old term last saw.
const TERM_CONDITIONS: [&str; 2] = ["sequencer", "publishing"];

/// Binds the gRPC port and returns its server, to be awaited. Health mirrors readiness for the
/// whole server and the admin service, so a passive replica is NOT_SERVING either way.
async fn grpc_server(
    config: &TopologyManagerConfig,
    api: TopologyAdminApi,
    health: &Health,
    shutdown: &CancellationToken,
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>> + Send> {
    let listener = meridian_node::grpc::bind(config.listen_address).await?;
    GrpcServer::new(health, &[meridian_proto::FILE_DESCRIPTOR_SET])
        .add_service(TopologyAdminServiceServer::new(api))
        .with_tls(config.tls.load()?.server)
        .serve(listener, shutdown.clone())
}

/// What a manager keeps between terms (while passive) and starts each term from: at first
/// start, at a restart, and at every promotion of a replica.
#[derive(Clone)]
struct Warm {
    config: Arc<TopologyManagerConfig>,
    member: MemberId,
    owner: SigningKey,
    key: SigningKey,
    store: Arc<dyn TopologyStore>,
    readiness: Conditions,
    metrics: TopologyMetrics,
    fork: ForkAlarm,
}

impl Warm {
    /// Starts a term (see [`Warm::start_term`]) and serves it: the manager answers through
    /// `serving`, and a task retries its pending intent until `stop`. `Ok(None)` when the
    /// term never started.
    async fn serve_term(
        &self,
        serving: &Serving,
        stop: &CancellationToken,
    ) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
        let Some(manager) = self.start_term(stop).await? else {
            return Ok(None);
        };
        serving.set(Some(manager.clone()));
        Ok(Some(tokio::spawn(retry_pending(
            manager,
            self.metrics.clone(),
            self.readiness.clone(),
            stop.clone(),
        ))))
    }

    /// Starts a term: loads and verifies the history, registers the manager itself, connects
    /// to the sequencer and publishes any unfinished intent. `Ok(None)` when `stop` is
    /// cancelled first — at shutdown, or when a write found this replica fenced (then `stop`
    /// is cancelled here).
    async fn start_term(&self, stop: &CancellationToken) -> anyhow::Result<Option<Arc<Manager>>> {
        let Warm {
            config,
            member,
            owner,
            key,
            store,
            readiness,
            metrics: _,
            fork: _,
        } = self;
        let retry = Retry::new(readiness, stop);
        let Some(records) = retry
            .until("database", "cannot read the topology history", || {
                store.records()
            })
            .await?
        else {
            return Ok(None);
        };
        let mut loaded = Loaded::from_records(owner.public_key(), records)?;
        let last_published = loaded.state.signed_history().last().map(|(at, _)| *at);
        tracing::info!(
            published = loaded.state.signed_history().len(),
            pending = ?loaded.pending.as_ref().map(|p| p.serial),
            "topology history loaded"
        );

        let endpoints = config.sequencer_endpoints.as_slice().to_vec();
        if self
            .register_self(&mut loaded, &endpoints, &retry)
            .await?
            .is_none()
        {
            return Ok(None);
        }

        let client_config =
            SequencerClientConfig::new(endpoints[0].clone(), member.clone(), key.clone())
                .with_endpoints(endpoints.clone());
        let Some(client) = retry
            .until("sequencer", "cannot authenticate at the sequencer", || {
                SequencerClient::connect(client_config.clone())
            })
            .await?
        else {
            return Ok(None);
        };
        let publisher = Publisher::new(endpoints, client);
        if let Some(last_published) = last_published {
            let Some(confirmed) = retry
                .until(
                    "sequencer",
                    "cannot confirm the published history at the sequencer",
                    || publisher.confirm_history(last_published),
                )
                .await?
            else {
                return Ok(None);
            };
            if let Err(fork) = confirmed {
                // Publishing on top of a history the members no longer have would fork them
                // further. Halt holding the lease, as the mediator does: another replica on
                // the same database would find the same fork.
                self.fork
                    .raise(member.as_str(), &fork, serde_json::Value::Null);
                self.fork.halt(stop).await;
                return Ok(None);
            }
        }
        let manager = Arc::new(
            Manager::new(
                member.clone(),
                owner.clone(),
                store.clone(),
                publisher,
                loaded,
            )
            .with_fence_alarm(stop.clone()),
        );
        if retry
            .until(
                "publishing",
                "cannot publish the unpublished change",
                || manager.finish_pending(),
            )
            .await?
            .is_none()
        {
            return Ok(None);
        }
        Ok(Some(manager))
    }

    /// Registers the manager itself at the sequencer with an owner-signed `TopologyManager`
    /// mapping, recording it as an intent first when the history lacks it. `Ok(None)` when
    /// the retry's stop token is cancelled first.
    async fn register_self(
        &self,
        loaded: &mut Loaded,
        endpoints: &[String],
        retry: &Retry,
    ) -> anyhow::Result<Option<()>> {
        let Warm {
            member, owner, key, ..
        } = self;
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
        if retry
            .until("sequencer", "cannot register at the sequencer", || {
                meridian_client::register_member_with_topology(endpoints, &own_signed)
            })
            .await?
            .is_none()
        {
            return Ok(None);
        }
        if new_intent {
            let serial = loaded.highest_serial + 1;
            let deadline = Timestamp::now().saturating_add(SEND_WINDOW);
            if retry
                .until(
                    "database",
                    "cannot record the manager's registration",
                    || {
                        let (store, signed) = (&self.store, &own_signed);
                        async move {
                            let recorded = store.record_intent(serial, signed, deadline).await;
                            if let Err(error) = &recorded {
                                if is_fenced(error) {
                                    // Another replica is active: stop, the role loop demotes.
                                    retry.stop_token().cancel();
                                }
                            }
                            recorded
                        }
                    },
                )
                .await?
                .is_none()
            {
                return Ok(None);
            }
            loaded.highest_serial = serial;
            loaded.pending = Some(TopologyRecord {
                serial,
                signed: own_signed,
                max_sequencing_time: deadline,
                effective: None,
            });
        }
        Ok(Some(()))
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
    let mut ticks = Ticker::new(PENDING_RETRY, shutdown);
    while ticks.tick().await {
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
    fork: ForkAlarm,
}

impl StatusSource for ManagerStatus {
    fn status(&self) -> serde_json::Value {
        let mut status = serde_json::json!({
            "role": "topology-manager",
            "member": self.member,
            "owner_public_key": self.owner_public_key,
            "listen_address": self.listen_address,
            "fork": self.fork.status(),
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
