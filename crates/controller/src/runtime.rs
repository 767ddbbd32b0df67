//! The controller's loop: the effectful shell around the sans-I/O [`Engine`]. One controller
//! replica runs [`run`]; the replicas of a deployment share a lease (the node replicas'
//! [`ReplicaManager`] and [`Replication::run`], over the controller store), and only the one
//! holding it acts.
//!
//! While passive ([`passive`]), a replica serves the status (active=false, naming the active
//! replica, the plans and audit records as the store holds them) and answers every command
//! [`CommandError::NotActive`](crate::api::CommandError::NotActive). Each active *term*
//! ([`term`]) lets the actuator prepare (the lab starts a deployment that never ran), restores
//! the plans and the recent audit log from the store into a new engine, adopts the processes
//! that run, resumes a plan that was running, and then loops every `probe_interval_ms`: probe,
//! collect exits and database facts, observe, tick, answer commands, and carry out the effects
//! in order — persisted first (one fenced commit per batch), then acted on. A commit the store
//! refuses ends the term: another replica took over (its fence), or the store is away and the
//! next term rebuilds the engine from what was persisted. Nothing here is on the transaction
//! path: the deployment serves with no controller at all.

mod passive;
pub mod persist;
mod term;

use std::sync::Arc;
use std::time::Duration;

use meridian_node::conditions::Conditions;
use meridian_node::health::Health;
use meridian_node::replica::{ReplicaManager, ReplicaSettings};
use meridian_node::replication::Replication;
use meridian_store::{FenceSlot, LeaseStore};
use tokio_util::sync::CancellationToken;

use crate::actuator::Actuator;
use crate::engine::Engine;
use crate::handle::ControllerSide;
use crate::model::Inventory;
use crate::settings::ControllerSettings;

pub use meridian_store::controller::LEASE_NODE;
pub use persist::ControllerStore;

/// How many audit records [`crate::api::Status::events`] carries.
pub const STATUS_EVENTS: usize = 50;
/// How many finished step outcomes may wait for the loop.
const STEP_RESULTS: usize = 16;
/// Database facts are read at most this often (each read is a query per server).
const DATABASE_INTERVAL: Duration = Duration::from_secs(1);
/// How often a passive replica refreshes the plans and audit records it shows.
const PASSIVE_REFRESH: Duration = Duration::from_secs(1);

/// Who this controller replica is and what it supervises.
#[derive(Debug, Clone)]
pub struct ControllerReplica {
    /// `controller-a`, `controller-b`: the lease holder's name.
    pub name: String,
    /// Where this replica's HTTP API is, shown by a passive replica's peers.
    pub advertised_endpoint: String,
    pub settings: ControllerSettings,
    pub inventory: Inventory,
}

/// The lease the controller replicas share, as the controller store opened it.
pub struct ControllerLease {
    pub store: Arc<dyn LeaseStore>,
    /// The controller store's fence slot: set while active, so every commit is fenced.
    pub fence: FenceSlot,
    /// A holder not renewed for this long may be deposed.
    pub timeout: Duration,
    /// How often a passive replica tries to take the lease.
    pub poll_interval: Duration,
}

impl std::fmt::Debug for ControllerLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerLease")
            .field("timeout", &self.timeout)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

/// What a term and the passive loop share.
struct Shared<A: ?Sized, S: ?Sized> {
    replica: ControllerReplica,
    actuator: Arc<A>,
    store: Arc<S>,
    replication: Arc<Replication>,
}

/// Runs this controller replica until `shutdown`: passive until it holds the lease, then an
/// active term until the lease is lost, a commit is fenced or refused, or `shutdown`. An
/// error is what another term would not fix (the actuator cannot prepare the deployment, the
/// store holds a plan that does not parse).
pub async fn run<A, S>(
    replica: ControllerReplica,
    actuator: Arc<A>,
    store: Arc<S>,
    lease: ControllerLease,
    side: ControllerSide,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    A: Actuator + ?Sized,
    S: ControllerStore + ?Sized,
{
    replica
        .settings
        .check()
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    let manager = ReplicaManager::new(
        ReplicaSettings {
            node: LEASE_NODE.to_owned(),
            replica_id: replica.name.clone(),
            advertised_endpoint: replica.advertised_endpoint.clone(),
            lease_timeout: lease.timeout,
            poll_interval: lease.poll_interval,
        },
        lease.store,
        lease.fence,
    );
    // The controller's own readiness is its role; nothing serves it yet beyond the status.
    let replication = Arc::new(Replication::new(manager, Conditions::new(Health::new())));
    let shared = Arc::new(Shared {
        replica,
        actuator,
        store,
        replication: replication.clone(),
    });
    // One owner of the channels at a time: the passive loop between terms, a term while it
    // runs (it takes the lock when it starts and keeps it to its end).
    let side = Arc::new(tokio::sync::Mutex::new(side));
    let passive_stop = shutdown.child_token();
    let passive = tokio::spawn(passive::serve(
        shared.clone(),
        side.clone(),
        passive_stop.clone(),
    ));
    let result = replication
        .run(&shutdown, |token| {
            let (shared, side) = (shared.clone(), side.clone());
            async move { term::run(shared, side, token).await }
        })
        .await;
    passive_stop.cancel();
    let _ = passive.await;
    result
}

/// A fresh engine's status for a replica that is not active: what the store holds, no
/// observations.
fn status_of(
    replica: &ControllerReplica,
    restored: crate::engine::Restored,
    info: crate::api::ControllerInfo,
) -> crate::api::Status {
    let events = last_events(&restored.recent_audit);
    let engine = Engine::new(
        replica.settings.clone(),
        replica.inventory.clone(),
        restored,
        meridian_core::Timestamp::now(),
    );
    engine.status(info, events)
}

/// The newest [`STATUS_EVENTS`] of `records` (oldest first).
fn last_events(records: &[crate::api::AuditRecord]) -> Vec<crate::api::AuditRecord> {
    records[records.len().saturating_sub(STATUS_EVENTS)..].to_vec()
}
