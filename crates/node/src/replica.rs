//! Active/passive replication of a node: the replica manager.
//!
//! Several replicas of one node (say `participant1`) share its database. The manager polls the
//! node's lease until this replica wins it (passive → active), renews it while active, and
//! reports when it is lost or handed over (active → passive). On promotion it sets the store's
//! [`FenceSlot`] to the new epoch, so every write transaction checks the epoch inside the
//! transaction; on demotion it marks the slot passive, so nothing more is written even by work
//! still winding down. The role runtime drives it:
//!
//! ```text
//! loop {
//!     let epoch = manager.acquire(&shutdown).await?;       // passive until this returns
//!     start the active work under a child token;           // replay from checkpoint, serve
//!     let end = manager.hold(epoch, &shutdown).await;      // renew until lost / step-down
//!     cancel the active work and wait for it; manager.demoted();
//! }
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_core::Timestamp;
use meridian_store::{Epoch, FenceSlot, LeaseState, LeaseStore, StoreError};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    /// The replicated node, e.g. `participant1` (the lease row's key).
    pub node: String,
    /// This replica, e.g. `participant1-a`.
    pub replica_id: String,
    /// What clients should use to reach this replica when it is active.
    pub advertised_endpoint: String,
    /// A holder not renewed for this long may be deposed.
    pub lease_timeout: Duration,
    /// How often a passive replica tries to take the lease.
    pub poll_interval: Duration,
}

/// This replica's role, for `/status`, `/readyz` and Ledger API refusals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Waiting for the lease; `active` is the current holder as last seen.
    Passive {
        active: Option<LeaseState>,
    },
    Active {
        epoch: Epoch,
        since: Timestamp,
    },
}

impl Role {
    pub fn is_active(&self) -> bool {
        matches!(self, Role::Active { .. })
    }

    /// The active replica's endpoint, when this one is passive and knows it.
    pub fn active_endpoint(&self) -> Option<&str> {
        match self {
            Role::Passive { active } => active.as_ref()?.holder_endpoint.as_deref(),
            Role::Active { .. } => None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Role::Active { epoch, since } => serde_json::json!({
                "role": "active", "epoch": epoch.0, "since_us": since.as_micros(),
            }),
            Role::Passive { active } => serde_json::json!({
                "role": "passive",
                "active_replica": active.as_ref().and_then(|a| a.holder.clone()),
                "active_endpoint": active.as_ref().and_then(|a| a.holder_endpoint.clone()),
                "active_epoch": active.as_ref().map(|a| a.epoch.0),
            }),
        }
    }
}

/// Why [`ReplicaManager::hold`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldEnd {
    /// Another replica took over (or renewals failed past the lease timeout).
    Lost,
    /// A manual switchover asked this replica to step down; the lease was released.
    SteppedDown,
    Shutdown,
}

pub struct ReplicaManager {
    settings: ReplicaSettings,
    lease: Arc<dyn LeaseStore>,
    fence: FenceSlot,
    role: watch::Sender<Role>,
    step_down: Notify,
}

impl ReplicaManager {
    pub fn new(settings: ReplicaSettings, lease: Arc<dyn LeaseStore>, fence: FenceSlot) -> Self {
        fence.deactivate(&settings.node);
        let (role, _) = watch::channel(Role::Passive { active: None });
        Self {
            settings,
            lease,
            fence,
            role,
            step_down: Notify::new(),
        }
    }

    pub fn settings(&self) -> &ReplicaSettings {
        &self.settings
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// Asks the active replica to hand over (manual switchover).
    pub fn request_step_down(&self) {
        self.step_down.notify_one();
    }

    /// The admin step-down hook: asks this replica to hand over if it is active. False on a
    /// passive one, without arming anything: a stored request would make it step down the
    /// moment it is promoted later.
    pub fn step_down_if_active(&self) -> bool {
        if self.role().is_active() {
            self.request_step_down();
            true
        } else {
            false
        }
    }

    /// Polls until this replica holds the lease. Returns `None` on shutdown.
    pub async fn acquire(&self, shutdown: &CancellationToken) -> Option<Epoch> {
        let mut logged_holder: Option<String> = None;
        loop {
            match self
                .lease
                .try_acquire(
                    &self.settings.replica_id,
                    &self.settings.advertised_endpoint,
                    self.settings.lease_timeout,
                    Timestamp::now(),
                )
                .await
            {
                Ok(Some(epoch)) => {
                    self.fence.activate(&self.settings.node, epoch);
                    self.role.send_replace(Role::Active {
                        epoch,
                        since: Timestamp::now(),
                    });
                    tracing::info!(node = %self.settings.node, replica = %self.settings.replica_id, %epoch, "this replica is now active");
                    return Some(epoch);
                }
                Ok(None) => {
                    let current = self.lease.current().await.ok().flatten();
                    let holder = current.as_ref().and_then(|c| c.holder.clone());
                    if holder != logged_holder {
                        tracing::info!(node = %self.settings.node, active = ?holder, "passive; another replica is active");
                        logged_holder = holder;
                    }
                    self.role.send_replace(Role::Passive { active: current });
                }
                Err(error) => {
                    tracing::warn!(node = %self.settings.node, %error, "cannot reach the lease; staying passive");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
    }

    /// Renews the lease while active. Returns when it is lost, handed over, or on shutdown
    /// (then the lease is released so a passive replica takes over at once).
    pub async fn hold(&self, epoch: Epoch, shutdown: &CancellationToken) -> HoldEnd {
        let renew_every = (self.settings.lease_timeout / 4).max(Duration::from_millis(10));
        let mut last_renewed = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.release(epoch).await;
                    return HoldEnd::Shutdown;
                }
                _ = self.step_down.notified() => {
                    self.release(epoch).await;
                    tracing::info!(node = %self.settings.node, %epoch, "stepped down for a switchover");
                    return HoldEnd::SteppedDown;
                }
                _ = tokio::time::sleep(renew_every) => {}
            }
            match self
                .lease
                .renew(&self.settings.replica_id, epoch, Timestamp::now())
                .await
            {
                Ok(()) => last_renewed = Instant::now(),
                Err(StoreError::LeaseLost { .. }) => {
                    tracing::error!(node = %self.settings.node, %epoch, "lease lost: another replica took over; demoting");
                    return HoldEnd::Lost;
                }
                Err(error) => {
                    // Past the timeout a passive may already have taken over: stop writing.
                    if last_renewed.elapsed() >= self.settings.lease_timeout {
                        tracing::error!(node = %self.settings.node, %error, "could not renew the lease within its timeout; demoting");
                        return HoldEnd::Lost;
                    }
                    tracing::warn!(node = %self.settings.node, %error, "lease renewal failed; retrying");
                }
            }
        }
    }

    async fn release(&self, epoch: Epoch) {
        self.fence.deactivate(&self.settings.node);
        if let Err(error) = self.lease.release(&self.settings.replica_id, epoch).await {
            tracing::warn!(node = %self.settings.node, %error, "releasing the lease failed; a passive takes over after the lease timeout");
        }
    }

    /// After stepping down (or finding its own writes refused, which a step-down can cause
    /// before the hold reports it), gives the other replicas the first go at the lease:
    /// waits until another replica holds it, or for at most the lease timeout when none does.
    /// Competing at once would mostly win the released lease straight back. False on shutdown.
    pub async fn yield_to_others(&self, shutdown: &CancellationToken) -> bool {
        let deadline = Instant::now() + self.settings.lease_timeout;
        while Instant::now() < deadline {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
            }
            match self.lease.current().await {
                Ok(Some(state))
                    if state
                        .holder
                        .as_ref()
                        .is_some_and(|holder| *holder != self.settings.replica_id) =>
                {
                    return true;
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(%error, "reading the lease while yielding failed"),
            }
        }
        true
    }

    /// After the active work stopped: no more writes, and report passive.
    pub fn demoted(&self) {
        self.fence.deactivate(&self.settings.node);
        self.role.send_replace(Role::Passive { active: None });
    }
}
