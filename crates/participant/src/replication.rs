//! Active/passive replicas of the participant (DESIGN.md §5): what the rest of the node needs
//! to know about this replica's role. Several processes with the same `participant_id`, key
//! and database run as replicas; only the one holding the lease ([`ReplicaManager`]) serves.
//! The others stay warm — store open, topology synced, sequencer session authenticated — and
//! answer every Ledger API call with UNAVAILABLE naming the active replica, so a client (or
//! load balancer, through `/readyz`) goes there instead.
//!
//! [`Serving`] is the one place the Ledger API, `/status`, `/readyz` and the admin step-down
//! hook read: the current term's [`Core`] (none while passive), the replica manager, and the
//! replica's [`Phase`] in the lifecycle every replicated role shares
//! ([`meridian_node::replication`]).
//!
//! A step-down (manual switchover) is graceful: [`Serving::drain`] runs while the lease is
//! still held (see [`ReplicaManager::hold_draining`]). It closes the term's submission gate —
//! every new call is refused UNAVAILABLE, "stepping down", so clients move to the other
//! replica — and waits, at most [`STEP_DOWN_DRAIN_TIMEOUT`] (or the submit timeout when
//! shorter), for the SubmitAndWait calls already accepted to get their outcome, which they
//! are answered normally. Only then is the lease released and the term ended.
//! [`Serving::quiesce`] is that first half alone, for fencing a whole region.

use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use meridian_core::Timestamp;
use meridian_node::replica::{ReplicaManager, Role};
use meridian_node::replication::Phase;
use meridian_node::Conditions;
use meridian_store::LeaseState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::runtime::Core;

/// The readiness condition that carries this replica's role.
const CONDITION: &str = "replica";
/// How long a stepping-down replica waits, at most, for the SubmitAndWait calls it accepted
/// to complete before it releases the lease anyway (bounded further by the submit timeout).
/// Calls still waiting then get UNAVAILABLE, outcome unknown, and their retry on the new
/// active learns the outcome. A submission normally completes within a few hundred ms; this
/// covers a slow mediator or a sequencer failover, and stays well inside the 10 s that
/// `meridian admin switchover` waits by default.
pub(crate) const STEP_DOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Serving {
    /// The running term's core; `None` while starting, passive or promoting.
    core: RwLock<Option<Arc<Core>>>,
    /// This replica's id; `None` when the participant is not replicated.
    replica_id: Option<String>,
    /// Set once the store is open (the lease lives in it).
    manager: OnceLock<Arc<ReplicaManager>>,
    /// Where this replica is in the replicated lifecycle.
    phase: watch::Sender<Phase>,
    /// When this replica last became passive, for `/status`.
    passive_since: Mutex<Timestamp>,
}

impl Serving {
    pub fn new(replica_id: Option<String>) -> Self {
        Self {
            core: RwLock::new(None),
            replica_id,
            manager: OnceLock::new(),
            phase: watch::channel(Phase::Passive).0,
            passive_since: Mutex::new(Timestamp::now()),
        }
    }

    pub fn core(&self) -> Option<Arc<Core>> {
        self.core
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Installs the term's core: this replica serves from now on.
    pub fn serve(&self, core: Arc<Core>) {
        *self.core.write().unwrap_or_else(PoisonError::into_inner) = Some(core);
        self.phase.send_replace(Phase::Active);
    }

    /// The replica holds the lease and restores its state: no core serves yet.
    pub fn promoting(&self) {
        self.phase.send_replace(Phase::Promoting);
    }

    /// Withdraws the term's core: no new call reaches it. `Demoting` while the term winds
    /// down (until the manager reports the replica passive), `Passive` after.
    pub fn withdraw(&self, phase: Phase) {
        *self.core.write().unwrap_or_else(PoisonError::into_inner) = None;
        *self
            .passive_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Timestamp::now();
        self.phase.send_replace(phase);
    }

    pub fn replica_id(&self) -> Option<&str> {
        self.replica_id.as_deref()
    }

    pub fn set_manager(&self, manager: Arc<ReplicaManager>) {
        let _ = self.manager.set(manager);
    }

    pub fn manager(&self) -> Option<&Arc<ReplicaManager>> {
        self.manager.get()
    }

    /// The admin step-down hook: asks the active replica to hand over. False on a passive
    /// replica (without arming anything: a stored request would make this replica step down
    /// the moment it is promoted later).
    ///
    /// A serving term stops accepting calls, and `/readyz` says so, before this returns: a
    /// switchover tool or load balancer that looks right after the answer must not find the
    /// replica still ready. The lease manager's drain then waits for the calls in flight.
    pub fn step_down(&self, readiness: &Conditions) -> bool {
        let Some(manager) = self.manager() else {
            return false;
        };
        if !manager.step_down_if_active() {
            return false;
        }
        if let (Some(core), Role::Active { epoch, .. }) = (self.core(), manager.role()) {
            self.stop_admitting(&core);
            let replica = self.replica_id.as_deref().unwrap_or_default();
            readiness.fail(CONDITION, stepping_down_message(replica, Some(epoch)));
        }
        true
    }

    /// The admin quiesce hook: an active serving replica stops admitting SubmitAndWait calls
    /// — the first half of a step-down — but keeps its lease and goes on confirming others'
    /// requests, until a stop (its drain then finds nothing left) or a step-down. A fence of a
    /// whole region quiesces every participant there before stopping any: a participant that
    /// stopped right after its own drain would leave the others' submissions waiting for its
    /// confirmation until their drain bound. `Some(running)`: the admitted calls still running;
    /// `None` on a replica that does not serve.
    pub fn quiesce(&self, readiness: &Conditions) -> Option<usize> {
        let manager = self.manager()?;
        let core = self.core()?;
        let Role::Active { epoch, .. } = manager.role() else {
            return None;
        };
        let running = self.stop_admitting(&core);
        let replica = self.replica_id.as_deref().unwrap_or_default();
        readiness.fail(CONDITION, stepping_down_message(replica, Some(epoch)));
        Some(running)
    }

    /// The drain of a step-down, run by the lease manager while it still holds the lease:
    /// refuse new calls, then wait (bounded) for the submissions in flight to be answered.
    /// Returns at once when no term serves (say, a step-down during the promotion).
    pub async fn drain(&self) {
        let Some(core) = self.core() else {
            return;
        };
        let running = self.stop_admitting(&core);
        let bound = STEP_DOWN_DRAIN_TIMEOUT.min(core.config.submit_timeout());
        let started = Instant::now();
        tracing::info!(
            running,
            bound_ms = bound.as_millis() as u64,
            "stepping down: refusing new calls; waiting for the submissions in flight"
        );
        match tokio::time::timeout(bound, core.submissions.drained()).await {
            Ok(()) => tracing::info!(
                drained = running,
                drain_ms = started.elapsed().as_millis() as u64,
                "stepping down: every submission in flight was answered"
            ),
            Err(_) => tracing::warn!(
                left = core.submissions.running(),
                bound_ms = bound.as_millis() as u64,
                "stepping down: submissions still waiting after the drain bound get UNAVAILABLE (outcome unknown; a retry learns it on the new active)"
            ),
        }
    }

    /// The first step of a step-down, idempotent: the term admits no more SubmitAndWait calls.
    /// Returns how many admitted ones are still running.
    fn stop_admitting(&self, core: &Core) -> usize {
        self.phase.send_replace(Phase::Draining);
        core.submissions.close()
    }

    /// Why the Ledger API must refuse calls on this replica: `Some` when it is replicated and
    /// passive, naming the active replica when the lease says who that is.
    pub fn passive_refusal(&self) -> Option<String> {
        let replica = self.replica_id.as_deref()?;
        let Some(manager) = self.manager() else {
            return Some(format!(
                "this replica ({replica}) is passive: it is still starting and has not yet competed for the lease"
            ));
        };
        match manager.role() {
            Role::Active { .. } => None,
            Role::Passive { active } => Some(passive_message(replica, manager, active.as_ref())),
        }
    }

    /// The `replication` object of `/status`; `None` when not replicated.
    pub fn status(&self) -> Option<serde_json::Value> {
        let replica = self.replica_id.as_deref()?;
        let mut status = match self.manager().map(|m| m.role()) {
            Some(role) => role.to_json(),
            None => serde_json::json!({"role": "passive", "active_replica": null}),
        };
        if let serde_json::Value::Object(map) = &mut status {
            map.insert("replica_id".into(), replica.into());
            let phase = *self.phase.borrow();
            map.insert("serving".into(), (phase == Phase::Active).into());
            map.insert("stepping_down".into(), (phase == Phase::Draining).into());
            if !map.contains_key("since_us") {
                let since = *self
                    .passive_since
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                map.insert("since_us".into(), since.as_micros().into());
            }
        }
        Some(status)
    }

    /// Keeps the `replica` readiness condition in step with the role and the term's phase:
    /// passive (naming the active replica) → not ready; active but still replaying, or winding
    /// down → not ready; active and serving → ready. Reading both latest values on every change
    /// means the two writers (manager, node loop) can never leave a stale verdict behind.
    pub async fn follow_role(self: Arc<Self>, readiness: Conditions, shutdown: CancellationToken) {
        let (Some(replica), Some(manager)) = (self.replica_id.clone(), self.manager().cloned())
        else {
            return;
        };
        let mut roles = manager.subscribe();
        let mut phases = self.phase.subscribe();
        loop {
            let role = roles.borrow_and_update().clone();
            let phase = *phases.borrow_and_update();
            match role {
                Role::Passive { active } => {
                    readiness.fail(
                        CONDITION,
                        passive_message(&replica, &manager, active.as_ref()),
                    );
                }
                Role::Active { .. } if phase == Phase::Active => readiness.clear(CONDITION),
                Role::Active { epoch, .. } if phase == Phase::Draining => {
                    readiness.fail(CONDITION, stepping_down_message(&replica, Some(epoch)));
                }
                Role::Active { epoch, .. } if phase == Phase::Demoting => {
                    readiness.fail(
                        CONDITION,
                        format!("this replica ({replica}) is stepping down from epoch {epoch} (lease lost or handed over); retry shortly on the active replica"),
                    );
                }
                Role::Active { epoch, .. } => {
                    readiness.fail(
                        CONDITION,
                        format!("this replica ({replica}) is being promoted at epoch {epoch}: replaying from the checkpoint"),
                    );
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = roles.changed() => if changed.is_err() { return },
                changed = phases.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// Why a stepping-down replica refuses a call (and is not ready).
pub(crate) fn stepping_down_message(replica: &str, epoch: Option<meridian_store::Epoch>) -> String {
    let epoch = epoch
        .map(|e| format!(" from epoch {e}"))
        .unwrap_or_default();
    format!("this replica ({replica}) is stepping down{epoch} for a switchover: it accepts no new calls while it finishes the submissions in flight; retry on the other replica")
}

/// "this replica (b) is passive; the active replica is a at http://…".
fn passive_message(replica: &str, manager: &ReplicaManager, active: Option<&LeaseState>) -> String {
    let Some(lease) = active else {
        return format!(
            "this replica ({replica}) is passive; the active replica is not known yet, retry shortly"
        );
    };
    let Some(holder) = lease.holder.as_deref() else {
        return format!(
            "this replica ({replica}) is passive; no replica holds the lease right now (a switchover is under way), retry shortly"
        );
    };
    let endpoint = lease
        .holder_endpoint
        .as_deref()
        .unwrap_or("an unknown endpoint");
    let age = Timestamp::now().duration_since(lease.renewed_at);
    if age > manager.settings().lease_timeout {
        return format!(
            "this replica ({replica}) is passive; the active replica was {holder} at {endpoint}, but its lease was last renewed {} ms ago: a takeover is under way, retry shortly",
            age.as_millis()
        );
    }
    format!("this replica ({replica}) is passive; the active replica is {holder} at {endpoint}")
}
