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
//!
//! [`ReplicaManager::hold_draining`] is the graceful variant of `hold` for a switchover: on a
//! step-down request it first lets the active work finish what it accepted (still holding and
//! renewing the lease, so its writes still pass the fence), and releases the lease after.
//!
//! [`LeaseMetrics`] counts every term begun (by whether the lease was free or its holder was
//! deposed) and every term ended by a lost lease: with no fault, both deposition counts stay
//! at zero, so a lease timeout too short for the load shows up as a number, not a hunch.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_core::Timestamp;
use meridian_store::{Epoch, FenceSlot, LeaseState, LeaseStore, StoreError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::lease_watch::LeaseWatch;
use crate::metrics::RoleRegistry;

/// How a replica came to hold the lease, the label of [`LeaseMetrics::acquired`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AcquiredLabel {
    /// `free`: released, never taken, or its holder's process gone (its session or flock
    /// ended); `deposed`: taken from a live holder this replica watched stop renewing.
    pub how: &'static str,
}

/// The lease's counters, registered under the role's prefix
/// (`meridian_participant_lease_acquired_total`, ...). Cheap clones sharing the counts.
#[derive(Clone, Debug, Default)]
pub struct LeaseMetrics {
    /// Terms begun, by [`AcquiredLabel`].
    pub acquired: Family<AcquiredLabel, Counter>,
    /// Terms ended because the lease was lost: another replica took it (this one was deposed),
    /// or it could not be renewed within the lease timeout.
    pub lost: Counter,
}

impl LeaseMetrics {
    pub fn register(registry: &mut RoleRegistry<'_>) -> Self {
        Self {
            acquired: registry.family(
                "lease_acquired",
                "Terms begun by taking the replica lease, by how (free: released or its holder gone; deposed: a live holder that stopped renewing)",
            ),
            lost: registry.counter(
                "lease_lost",
                "Terms ended by losing the replica lease (deposed by another replica, or not renewed within the lease timeout)",
            ),
        }
    }

    fn count_acquired(&self, how: &'static str) {
        self.acquired.get_or_create(&AcquiredLabel { how }).inc();
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// A step-down was asked for during the current term. Cleared when a term starts and when
    /// the replica is demoted, so a request can never outlive its term and make a later
    /// promotion step down at once.
    step_down: watch::Sender<bool>,
    /// Until when, by this process's monotonic clock, no other replica can have taken the
    /// lease over: see [`LeaseGuard`]. `None` while not active.
    held_until: watch::Sender<Option<Instant>>,
    metrics: LeaseMetrics,
}

/// Whether this replica may act for its node *now*: what a replica sends (protocol messages
/// through the sequencer) must be gated on it, not only on its term's token. A replica
/// stopped (SIGSTOP, a frozen VM) for longer than the lease timeout was deposed meanwhile, but
/// on waking its tasks run on before its next renewal tells it so: it would process the events
/// that queued up — including what the new active replica submitted, which it knows nothing
/// of — and send answers for the node (both replicas are one member to the sequencer). The
/// guard closes that: the lease counts as held only until a fraction of the lease timeout
/// after the last renewal *began* (a passive deposes no sooner than a whole timeout after it
/// saw that renewal's row, which is after it began), so a replica that slept past that knows
/// at once, by its own clock, that it must not send until a renewal succeeds again — which
/// after a deposition it never does.
///
/// Checked after the work whose result is sent: a message computed before a stop was computed
/// while the lease was still held, so nobody else can have acted yet that it could contradict.
#[derive(Clone, Debug)]
pub struct LeaseGuard(Option<watch::Receiver<Option<Instant>>>);

/// The share of the lease timeout for which a renewal (from its start) vouches. Renewals run
/// every quarter timeout, so a healthy active is never without one; a stalled database pauses
/// its sends (it could not commit either).
const HELD_FOR_SHARE: f64 = 0.75;

impl LeaseGuard {
    /// A node without replicas: always its own.
    pub fn unreplicated() -> Self {
        Self(None)
    }

    /// Whether the lease is known held at this moment.
    pub fn held_now(&self) -> bool {
        self.0
            .as_ref()
            .is_none_or(|until| until.borrow().is_some_and(|until| Instant::now() < until))
    }

    /// Waits until the lease is known held at this moment; false once it no longer can be
    /// (the replica is not active). Callers bound the wait with their term's token.
    pub async fn held(&mut self) -> bool {
        let Some(until) = &mut self.0 else {
            return true;
        };
        loop {
            match *until.borrow_and_update() {
                None => return false,
                Some(until) if Instant::now() < until => return true,
                Some(_) => {}
            }
            if until.changed().await.is_err() {
                return false;
            }
        }
    }
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
            step_down: watch::channel(false).0,
            held_until: watch::channel(None).0,
            metrics: LeaseMetrics::default(),
        }
    }

    /// The guard every send of this replica's terms checks (see [`LeaseGuard`]).
    pub fn lease_guard(&self) -> LeaseGuard {
        LeaseGuard(Some(self.held_until.subscribe()))
    }

    /// A lease confirmed by a call begun at `asked` is held until a share of the timeout later.
    fn vouch_from(&self, asked: Instant) {
        let until = asked + self.settings.lease_timeout.mul_f64(HELD_FOR_SHARE);
        self.held_until.send_replace(Some(until));
    }

    /// Counts acquisitions and losses into `metrics` (registered by the role) instead of
    /// counters nobody scrapes.
    pub fn with_metrics(mut self, metrics: LeaseMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &LeaseMetrics {
        &self.metrics
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

    /// Asks the active replica to hand over (manual switchover). Asking twice is asking once.
    pub fn request_step_down(&self) {
        self.step_down.send_replace(true);
    }

    /// Whether a step-down was asked for in the current term (it may be draining).
    pub fn step_down_requested(&self) -> bool {
        *self.step_down.borrow()
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
    ///
    /// A free lease (released, never taken, or its holder's process gone) is taken at the
    /// first poll; a holder that is alive but stopped renewing is deposed only once this
    /// replica has watched its row go unrenewed for the lease timeout (see [`LeaseWatch`]),
    /// so a database stall deposes nobody.
    pub async fn acquire(&self, shutdown: &CancellationToken) -> Option<Epoch> {
        let mut logged_holder: Option<String> = None;
        let mut watch = LeaseWatch::new(self.settings.lease_timeout);
        loop {
            let asked = Instant::now();
            let current = match self.lease.current().await {
                Ok(current) => {
                    watch.observed(current.as_ref(), asked, Instant::now());
                    current
                }
                Err(error) => {
                    watch.failed();
                    tracing::debug!(node = %self.settings.node, %error, "reading the lease failed");
                    None
                }
            };
            // `Duration::MAX`: no row is ever that stale, so only a free lease is taken.
            let may_depose = watch.unchanged_for(Instant::now()) >= self.settings.lease_timeout;
            let depose_after = if may_depose {
                self.settings.lease_timeout
            } else {
                Duration::MAX
            };
            // For the metrics only: a row that names a holder, taken by timeout, was a
            // deposition (a free lease is taken the same way whatever `depose_after` says).
            let deposing = may_depose && current.as_ref().is_some_and(|row| row.holder.is_some());
            let acquiring = Instant::now();
            match self
                .lease
                .try_acquire(
                    &self.settings.replica_id,
                    &self.settings.advertised_endpoint,
                    depose_after,
                    Timestamp::now(),
                )
                .await
            {
                Ok(Some(epoch)) => {
                    self.metrics
                        .count_acquired(if deposing { "deposed" } else { "free" });
                    self.step_down.send_replace(false);
                    self.fence.activate(&self.settings.node, epoch);
                    self.vouch_from(acquiring);
                    self.role.send_replace(Role::Active {
                        epoch,
                        since: Timestamp::now(),
                    });
                    tracing::info!(node = %self.settings.node, replica = %self.settings.replica_id, %epoch, "this replica is now active");
                    return Some(epoch);
                }
                Ok(None) => {
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
            let wait = watch.next_read_in(
                Instant::now(),
                self.settings.poll_interval,
                self.settings.lease_timeout,
            );
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Renews the lease while active. Returns when it is lost, handed over, or on shutdown
    /// (then the lease is released so a passive replica takes over at once).
    pub async fn hold(&self, epoch: Epoch, shutdown: &CancellationToken) -> HoldEnd {
        self.hold_then(epoch, shutdown, None::<fn() -> std::future::Ready<()>>)
            .await
    }

    /// As [`hold`](Self::hold), but a step-down first runs `drain` and releases the lease only
    /// once it completes. Meanwhile the lease stays held and renewed and the fence active, so
    /// the active work can finish — and persist — what it accepted before the request; `drain`
    /// is where it stops accepting more and waits for that, and it must bound its own wait.
    /// A lost lease or shutdown during the drain ends the hold as it would without one.
    pub async fn hold_draining<D, F>(
        &self,
        epoch: Epoch,
        shutdown: &CancellationToken,
        drain: D,
    ) -> HoldEnd
    where
        D: FnOnce() -> F,
        F: Future<Output = ()>,
    {
        self.hold_then(epoch, shutdown, Some(drain)).await
    }

    async fn hold_then<D, F>(
        &self,
        epoch: Epoch,
        shutdown: &CancellationToken,
        drain: Option<D>,
    ) -> HoldEnd
    where
        D: FnOnce() -> F,
        F: Future<Output = ()>,
    {
        let renew_every = (self.settings.lease_timeout / 4).max(Duration::from_millis(10));
        let mut last_renewed = Instant::now();
        let mut requests = self.step_down.subscribe();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.release(epoch).await;
                    return HoldEnd::Shutdown;
                }
                // Not the `Ref` itself: it must not be held (or sent) past this point.
                () = async { drop(requests.wait_for(|requested| *requested).await) } => break,
                _ = tokio::time::sleep(renew_every) => {}
            }
            if let Some(end) = self.renew(epoch, &mut last_renewed).await {
                return end;
            }
        }
        let Some(drain) = drain else {
            self.release(epoch).await;
            tracing::info!(node = %self.settings.node, %epoch, "stepped down for a switchover");
            return HoldEnd::SteppedDown;
        };
        tracing::info!(node = %self.settings.node, %epoch, "stepping down for a switchover: finishing the work in flight before releasing the lease");
        let drained_from = Instant::now();
        let drain = drain();
        tokio::pin!(drain);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.release(epoch).await;
                    return HoldEnd::Shutdown;
                }
                () = &mut drain => break,
                _ = tokio::time::sleep(renew_every) => {}
            }
            if let Some(end) = self.renew(epoch, &mut last_renewed).await {
                return end;
            }
        }
        self.release(epoch).await;
        tracing::info!(node = %self.settings.node, %epoch, drain_ms = drained_from.elapsed().as_millis() as u64, "stepped down for a switchover");
        HoldEnd::SteppedDown
    }

    /// One renewal. `Some` when the hold must end: the lease is lost, or could not be renewed
    /// within its timeout (a passive may already have taken over: stop writing).
    async fn renew(&self, epoch: Epoch, last_renewed: &mut Instant) -> Option<HoldEnd> {
        let asked = Instant::now();
        match self
            .lease
            .renew(&self.settings.replica_id, epoch, Timestamp::now())
            .await
        {
            Ok(()) => {
                *last_renewed = Instant::now();
                self.vouch_from(asked);
                self.restamp_if_delayed(epoch, asked).await;
            }
            Err(StoreError::LeaseLost { .. }) => {
                self.held_until.send_replace(None);
                tracing::error!(node = %self.settings.node, %epoch, "lease lost: another replica took over; demoting");
                self.metrics.lost.inc();
                return Some(HoldEnd::Lost);
            }
            Err(error) => {
                if last_renewed.elapsed() >= self.settings.lease_timeout {
                    self.held_until.send_replace(None);
                    tracing::error!(node = %self.settings.node, %error, "could not renew the lease within its timeout; demoting");
                    self.metrics.lost.inc();
                    return Some(HoldEnd::Lost);
                }
                tracing::warn!(node = %self.settings.node, %error, "lease renewal failed; retrying");
            }
        }
        None
    }

    /// A renewal records the time it was sent; one that took long (the database stalled) wrote
    /// a time already old when it committed, so it is renewed once more at once, making the
    /// row carry (within a round trip) the time the holder was last known alive. Best effort:
    /// an error here is the next renewal's to report.
    async fn restamp_if_delayed(&self, epoch: Epoch, asked: Instant) {
        let took = asked.elapsed();
        if took < self.settings.lease_timeout / 4 {
            return;
        }
        tracing::info!(node = %self.settings.node, took_ms = took.as_millis() as u64, "a lease renewal was delayed by the database; renewing again with the current time");
        let asked_again = Instant::now();
        match self
            .lease
            .renew(&self.settings.replica_id, epoch, Timestamp::now())
            .await
        {
            Ok(()) => self.vouch_from(asked_again),
            Err(error) => {
                tracing::debug!(node = %self.settings.node, %error, "the re-stamping renewal failed")
            }
        }
    }

    async fn release(&self, epoch: Epoch) {
        self.held_until.send_replace(None);
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
        self.held_until.send_replace(None);
        self.fence.deactivate(&self.settings.node);
        self.step_down.send_replace(false);
        self.role.send_replace(Role::Passive { active: None });
    }
}

#[cfg(test)]
mod tests {
    use meridian_store::SqliteLeaseStore;
    use tokio::sync::oneshot;

    use super::*;

    const LEASE_TIMEOUT: Duration = Duration::from_millis(300);

    async fn manager(dir: &std::path::Path, replica: &str) -> ReplicaManager {
        let lease = SqliteLeaseStore::open(&dir.join("node.db"), "node1")
            .await
            .expect("lease store");
        let settings = ReplicaSettings {
            node: "node1".into(),
            replica_id: replica.into(),
            advertised_endpoint: format!("http://{replica}"),
            lease_timeout: LEASE_TIMEOUT,
            poll_interval: Duration::from_millis(20),
        };
        ReplicaManager::new(settings, Arc::new(lease), FenceSlot::default())
    }

    /// Two replicas of one node sharing one lease store; `a` took the free lease at `epoch`.
    struct Replicas {
        /// Holds the lease database; dropping it deletes the directory.
        _dir: tempfile::TempDir,
        a: ReplicaManager,
        b: ReplicaManager,
        shutdown: CancellationToken,
        epoch: Epoch,
    }

    async fn a_active_b_passive() -> Replicas {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = manager(dir.path(), "a").await;
        let b = manager(dir.path(), "b").await;
        let shutdown = CancellationToken::new();
        let epoch = a.acquire(&shutdown).await.expect("a takes the free lease");
        Replicas {
            _dir: dir,
            a,
            b,
            shutdown,
            epoch,
        }
    }

    /// A holder that stops renewing (stuck, stopped) is deposed once a passive has watched
    /// its row go unrenewed for the lease timeout, and not before.
    #[tokio::test]
    async fn a_holder_that_stops_renewing_is_deposed_after_one_watched_timeout() {
        let Replicas {
            _dir,
            a: _a,
            b,
            shutdown,
            epoch,
        } = a_active_b_passive().await;
        // `a` keeps its process (and flock) but never renews.
        let started = Instant::now();
        let taken = tokio::time::timeout(LEASE_TIMEOUT * 10, b.acquire(&shutdown))
            .await
            .expect("b deposes the silent holder")
            .expect("not shut down");
        assert_eq!(taken, Epoch(epoch.0 + 1));
        assert!(
            started.elapsed() >= LEASE_TIMEOUT,
            "deposed after {:?}, before a whole lease timeout of watching",
            started.elapsed()
        );
        assert_eq!(acquired(&b, "deposed"), 1, "counted as a deposition");
        assert_eq!(acquired(&b, "free"), 0);
    }

    /// A holder that stops renewing (stopped) knows by its own clock, before any renewal
    /// fails and before a passive can have taken over, that it must not act for the node; a
    /// renewal restores that, a deposition ends it for good.
    #[tokio::test]
    async fn the_lease_guard_lapses_with_the_holders_silence_and_returns_with_a_renewal() {
        let Replicas {
            _dir,
            a,
            b,
            shutdown,
            epoch,
        } = a_active_b_passive().await;
        let guard = a.lease_guard();
        assert!(guard.held_now(), "just acquired");
        assert!(LeaseGuard::unreplicated().held_now());

        // Silent (as if stopped) for a lease timeout: not known to be held any more, although
        // nobody has taken the lease yet.
        tokio::time::sleep(LEASE_TIMEOUT).await;
        assert!(!guard.held_now(), "silent for a whole lease timeout");

        // Holding again: its first renewal (a quarter timeout in) vouches for it once more.
        let holding = tokio::time::timeout(LEASE_TIMEOUT * 3 / 8, a.hold(epoch, &shutdown)).await;
        assert!(holding.is_err(), "still holding");
        assert!(guard.held_now(), "renewed");
        assert!(guard.clone().held().await);

        // Silent again, long enough for `b` to depose it: its guard lapsed before that.
        let taken = tokio::time::timeout(LEASE_TIMEOUT * 10, b.acquire(&shutdown))
            .await
            .expect("b deposes the silent holder")
            .expect("not shut down");
        assert!(taken > epoch);
        assert!(!guard.held_now(), "lapsed before the deposition");
        let end = tokio::time::timeout(Duration::from_secs(2), a.hold(epoch, &shutdown))
            .await
            .expect("the first renewal fails");
        assert_eq!(end, HoldEnd::Lost);
        assert!(
            !guard.clone().held().await,
            "a deposed holder never holds again"
        );
        assert!(b.lease_guard().held_now(), "the new holder's guard holds");
    }

    fn acquired(manager: &ReplicaManager, how: &'static str) -> u64 {
        manager
            .metrics()
            .acquired
            .get_or_create(&AcquiredLabel { how })
            .get()
    }

    /// The drain of a step-down runs with the lease held and renewed — here for several lease
    /// timeouts, during which no other replica can take over — and the lease is released
    /// right after it. The request does not outlive the term.
    #[tokio::test]
    async fn a_step_down_keeps_the_lease_until_the_drain_is_done() {
        let Replicas {
            _dir,
            a,
            b,
            shutdown,
            epoch,
        } = a_active_b_passive().await;
        assert!(
            !b.step_down_if_active(),
            "a passive replica cannot step down"
        );

        let (drained, drain_done) = oneshot::channel::<()>();
        let (drain_started, started) = oneshot::channel::<()>();
        let hold = a.hold_draining(epoch, &shutdown, move || async move {
            let _ = drain_started.send(());
            let _ = drain_done.await;
        });
        let check = async {
            assert!(a.step_down_if_active());
            started.await.expect("the drain starts on the request");
            // Without renewals the lease would have expired twice over by now.
            tokio::time::sleep(LEASE_TIMEOUT * 3).await;
            let taken = b
                .lease
                .try_acquire("b", "http://b", LEASE_TIMEOUT, Timestamp::now())
                .await
                .expect("lease readable");
            assert_eq!(taken, None, "the draining replica still holds the lease");
            assert!(a.role().is_active() && a.step_down_requested());
            drained.send(()).expect("drain waiting");
        };
        let (end, ()) = tokio::join!(hold, check);
        assert_eq!(end, HoldEnd::SteppedDown);
        a.demoted();
        assert!(!a.step_down_requested(), "the request ends with the term");

        // Released: b takes over at its first poll, at a higher epoch.
        let taken = tokio::time::timeout(Duration::from_secs(2), b.acquire(&shutdown))
            .await
            .expect("b takes over at once")
            .expect("not shut down");
        assert!(taken > epoch);
        assert_eq!(acquired(&a, "free"), 1, "a took the lease nobody held");
        assert_eq!(acquired(&b, "free"), 1, "a released lease is no deposition");
        assert_eq!(acquired(&b, "deposed"), 0);
        assert_eq!(a.metrics().lost.get(), 0, "a step-down is no loss");
    }

    /// A hold without a drain releases at once on a step-down, and a lost lease during a drain
    /// ends the hold as `Lost` (the drain is abandoned; the new holder owns the node).
    #[tokio::test]
    async fn a_plain_hold_releases_at_once_and_a_lost_lease_ends_a_drain() {
        let Replicas {
            _dir,
            a,
            b,
            shutdown,
            epoch,
        } = a_active_b_passive().await;
        assert!(a.step_down_if_active());
        let end = tokio::time::timeout(Duration::from_secs(2), a.hold(epoch, &shutdown))
            .await
            .expect("released at once");
        assert_eq!(end, HoldEnd::SteppedDown);
        a.demoted();

        let epoch = b
            .acquire(&shutdown)
            .await
            .expect("b takes the released lease");
        assert!(b.step_down_if_active());
        // b's drain never finishes, and b's renewals are refused once a took the lease by
        // timeout (as from a stuck holder).
        let hold = b.hold_draining(epoch, &shutdown, std::future::pending::<()>);
        let depose = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut taken = None;
            while taken.is_none() {
                taken = a
                    .lease
                    .try_acquire("a", "http://a", Duration::ZERO, Timestamp::now())
                    .await
                    .expect("lease readable");
            }
        };
        let (end, ()) =
            tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(hold, depose) })
                .await
                .expect("the hold notices the lost lease");
        assert_eq!(end, HoldEnd::Lost);
        assert_eq!(b.metrics().lost.get(), 1, "the lost lease is counted");
    }
}
