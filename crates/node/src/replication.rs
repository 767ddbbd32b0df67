//! Active/passive replication shared by every replicated role (DESIGN.md §5): the
//! `[replication]` config table and the role loop around the [`ReplicaManager`]. Each role
//! crate keeps only what differs between roles — what its active work is (how it is promoted),
//! and how that work notices it was fenced and stops (how it is demoted) — so that the lease
//! handling, readiness and `/status` of a replica behave the same on every node.
//!
//! ```toml
//! [replication]                                # optional: active/passive replicas
//! replica_id = "mediator-a"                    # this replica; unique among the replicas
//! advertised_endpoint = "http://10.0.0.5:4201" # default: the role's own address
//! lease_timeout_ms = 700                       # an active not renewing this long is deposed
//! poll_interval_ms = 50                        # how often a passive tries to take over
//! ```
//!
//! [`Replication::run`] is the role loop: wait for the lease (passive), run the active work
//! under a child token while [`ReplicaManager::hold`] renews the lease, and when either ends —
//! lease lost, step-down, a write that found this replica fenced, shutdown — cancel the other,
//! mark the replica passive and start over. The active work itself is exactly what a restarted
//! unreplicated node does, so a promotion is a restart from the shared database without the
//! process start.
//!
//! Readiness: a passive replica fails the `replica` condition with a reason naming the active
//! replica, so `/readyz` is 503 and (where the node has gRPC) health is NOT_SERVING. Only the
//! active work clears it, once it serves: being granted the lease is not being ready.
//!
//! One vocabulary for every replicated role (mediator, topology manager, participant):
//! - a replica is *warm* while passive — store open, config and keys loaded — and each role
//!   keeps what it keeps between terms in a struct named `Warm`;
//! - a *term* is one stretch of being active, from promotion to demotion (each role's
//!   `start_term`/`run_term` is exactly what a restarted unreplicated node does);
//! - within it, a replica goes through the [`Phase`]s `Passive` → `Promoting` → `Active` →
//!   (`Draining` on a step-down) → `Demoting` → `Passive`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_core::Timestamp;
use meridian_store::StoreError;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::conditions::Conditions;
use crate::replica::{HoldEnd, ReplicaManager, ReplicaSettings, Role};

/// The `[replication]` table: this process is one of several replicas sharing the database,
/// and only the one holding the lease works.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    pub replica_id: String,
    /// How clients and the other replicas reach this replica while it is active (a passive
    /// replica names it in refusals, `/readyz` and `/status`). Absent: the role's own address,
    /// see [`ReplicationConfig::settings`].
    #[serde(default)]
    pub advertised_endpoint: Option<String>,
    #[serde(default = "default_lease_timeout_ms")]
    pub lease_timeout_ms: u64,
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
}

/// The admin step-down hook and the stop-time hand-over of a role whose [`Replication`] is made
/// later in its start-up and found by `current`: both act on it once it exists (before that,
/// there is nothing to step down). A stop then drains like a switchover.
pub fn hand_over_hooks(
    current: impl Fn() -> Option<Arc<Replication>> + Send + Sync + 'static,
) -> (crate::admin::StepDown, crate::shutdown::HandOver) {
    let current = Arc::new(current);
    let asked = current.clone();
    let step_down: crate::admin::StepDown =
        Arc::new(move || asked().is_some_and(|replication| replication.step_down()));
    let is_active =
        Arc::new(move || current().is_some_and(|replication| replication.role().is_active()));
    let hand_over = crate::shutdown::HandOver {
        step_down: step_down.clone(),
        is_active,
    };
    (step_down, hand_over)
}

/// Test support for every replicated role's config: `valid` is a whole valid config text of
/// the role, and `load(text)` parses and checks a config text, returning its replica settings
/// or the error's message. Asserts that no table means not replicated, that a table naming
/// only `replica_id` gets the shared defaults (node `node`, advertised at `default_endpoint`),
/// and that each bad value or unknown key is refused naming it; the roles share the table, so
/// they share the cases.
pub fn assert_replication_table(
    valid: &str,
    node: &str,
    default_endpoint: &str,
    load: impl Fn(&str) -> Result<Option<crate::replica::ReplicaSettings>, String>,
) {
    assert_eq!(
        load(valid),
        Ok(None),
        "no [replication] table: not replicated"
    );
    let settings = load(&format!("{valid}\n[replication]\nreplica_id = \"r-b\"\n"))
        .expect("a [replication] table naming only replica_id is valid")
        .expect("replicated");
    assert_eq!(settings.node, node);
    assert_eq!(settings.replica_id, "r-b");
    assert_eq!(settings.advertised_endpoint, default_endpoint);
    assert_eq!(settings.lease_timeout, Duration::from_millis(700));
    assert_eq!(settings.poll_interval, Duration::from_millis(50));
    for (table, named) in [
        ("replica_id = \"a b\"", "replication.replica_id"),
        ("replica_id = \"\"", "replication.replica_id"),
        (
            "replica_id = \"a\"\nlease_timeout_ms = 0",
            "replication.lease_timeout_ms",
        ),
        (
            "replica_id = \"a\"\nlease_timeout_ms = 5",
            "replication.lease_timeout_ms",
        ),
        (
            "replica_id = \"a\"\npoll_interval_ms = 0",
            "replication.poll_interval_ms",
        ),
        (
            "replica_id = \"a\"\npoll_interval_ms = 2000",
            "replication.poll_interval_ms",
        ),
        (
            "replica_id = \"a\"\nadvertised_endpoint = \"x\"",
            "replication.advertised_endpoint",
        ),
        (
            "replica_id = \"a\"\nadvertised_endpoint = \"10.0.0.5:1\"",
            "replication.advertised_endpoint",
        ),
        ("replica = \"a\"", "unknown field `replica`"),
        (
            "replica_id = \"a\"\nlease_timeout = 5",
            "unknown field `lease_timeout`",
        ),
    ] {
        let message = load(&format!("{valid}\n[replication]\n{table}\n")).expect_err(table);
        assert!(message.contains(named), "{table}: {message}");
    }
}

/// Longest lease timeout accepted: beyond a minute a stuck active blocks its node's work for
/// longer than any caller waits, which is almost certainly a unit mistake.
pub const MAX_LEASE_TIMEOUT_MS: u64 = 60_000;

/// 700 ms, with clients that give up on a frozen replica within 0.5 s, brings a frozen
/// participant's recovery under a second (docs/benchmarks.md); ten minutes at saturation on
/// two cores deposed no live active.
fn default_lease_timeout_ms() -> u64 {
    700
}

fn default_poll_interval_ms() -> u64 {
    50
}

impl ReplicationConfig {
    /// Replica `replica_id` with the defaults a `[replication]` table naming only it gets.
    pub fn new(replica_id: impl Into<String>) -> Self {
        Self {
            replica_id: replica_id.into(),
            advertised_endpoint: None,
            lease_timeout_ms: default_lease_timeout_ms(),
            poll_interval_ms: default_poll_interval_ms(),
        }
    }
}

impl ReplicationConfig {
    /// Refuses values that cannot work: the offending key (as `replication.<key>`, so a role
    /// can put it in its own error type unchanged) and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.replica_id.is_empty()
            || self.replica_id.len() > 128
            || self
                .replica_id
                .contains(|c: char| c.is_whitespace() || c.is_control())
        {
            return Err((
                "replication.replica_id",
                format!(
                    "{:?} must be 1 to 128 characters without whitespace",
                    self.replica_id
                ),
            ));
        }
        if let Some(endpoint) = &self.advertised_endpoint {
            let host = endpoint
                .strip_prefix("https://")
                .or_else(|| endpoint.strip_prefix("http://"))
                .unwrap_or_default();
            if host.is_empty() || host.contains(char::is_whitespace) {
                return Err((
                    "replication.advertised_endpoint",
                    format!(
                        "{endpoint:?} must be an https:// (or, plaintext, http://) URL like \"https://10.0.0.5:4201\""
                    ),
                ));
            }
        }
        if self.lease_timeout_ms < 10 || self.lease_timeout_ms > MAX_LEASE_TIMEOUT_MS {
            return Err((
                "replication.lease_timeout_ms",
                format!(
                    "must be between 10 and {MAX_LEASE_TIMEOUT_MS}, got {}",
                    self.lease_timeout_ms
                ),
            ));
        }
        if self.poll_interval_ms == 0 || self.poll_interval_ms >= self.lease_timeout_ms {
            return Err((
                "replication.poll_interval_ms",
                format!(
                    "must be at least 1 and below lease_timeout_ms ({}), got {}",
                    self.lease_timeout_ms, self.poll_interval_ms
                ),
            ));
        }
        Ok(())
    }

    /// The replica manager's settings. `node` keys the lease row, so every replica of one node
    /// must pass the same; `default_endpoint` is the role's own address, used when
    /// `advertised_endpoint` is not set (only then is it built).
    pub fn settings(
        &self,
        node: String,
        default_endpoint: impl FnOnce() -> String,
    ) -> ReplicaSettings {
        ReplicaSettings {
            node,
            replica_id: self.replica_id.clone(),
            advertised_endpoint: self
                .advertised_endpoint
                .clone()
                .unwrap_or_else(default_endpoint),
            lease_timeout: Duration::from_millis(self.lease_timeout_ms),
            poll_interval: Duration::from_millis(self.poll_interval_ms),
        }
    }
}

/// Where a replica is in the replicated lifecycle. Each role reports these names, so an
/// operator reads every node's `/status` the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Not holding the lease: warm, competing for it, refusing work.
    Passive,
    /// Holds the lease; restoring its state from the database before it serves.
    Promoting,
    /// Holds the lease and serves: the term's work runs.
    Active,
    /// Holds the lease but hands over (a step-down): refuses new work while the work in flight
    /// finishes; the lease is released after.
    Draining,
    /// The term ended (lease lost or handed over, a fenced write, shutdown) and its work winds
    /// down; passive next.
    Demoting,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Passive => "passive",
            Phase::Promoting => "promoting",
            Phase::Active => "active",
            Phase::Draining => "draining",
            Phase::Demoting => "demoting",
        }
    }
}

/// The readiness condition a passive replica fails.
pub const CONDITION: &str = "replica";

/// How long the active work may take to stop after it was told to. It stops at its next await
/// point; the bound only keeps a wedged task from blocking the replica from ever competing for
/// the lease again (its writes are fenced either way).
const WIND_DOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a store error means "this replica may not write any more": another replica took
/// over (its epoch is in the lease row), or this one was already marked passive.
pub fn is_fenced(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::LeaseLost { .. } | StoreError::Passive { .. }
    )
}

/// One replica's role loop and what it reports: readiness, `/status`, the step-down hook.
pub struct Replication {
    manager: ReplicaManager,
    readiness: Conditions,
    /// Serializes changes of the `replica` condition: the role follower and the role loop both
    /// set it, and a follower acting on a stale "passive" after the work cleared it would leave
    /// an active replica unready.
    gate: Mutex<()>,
    /// When this replica last changed role (µs since the epoch), for `/status`.
    since_us: AtomicU64,
    phase: Mutex<Phase>,
}

impl Replication {
    pub fn new(manager: ReplicaManager, readiness: Conditions) -> Self {
        let replication = Self {
            manager,
            readiness,
            gate: Mutex::new(()),
            since_us: AtomicU64::new(Timestamp::now().as_micros()),
            phase: Mutex::new(Phase::Passive),
        };
        replication.set_condition("passive: not holding the lease yet".to_owned());
        replication
    }

    pub fn manager(&self) -> &ReplicaManager {
        &self.manager
    }

    pub fn role(&self) -> Role {
        self.manager.role()
    }

    /// Where this replica is in its lifecycle.
    pub fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enter(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase;
    }

    /// The admin step-down hook: asks the active replica to hand over. False on a passive one
    /// (its request would otherwise linger and make it step down right after a promotion).
    /// The replica is not ready from the moment this returns true, so whoever looks at
    /// `/readyz` right after the answer does not still find it ready.
    pub fn step_down(&self) -> bool {
        let accepted = self.manager.step_down_if_active();
        if accepted {
            self.enter(Phase::Draining);
            self.set_condition(
                "stepping down for a switchover: handing the lease to another replica".to_owned(),
            );
        }
        accepted
    }

    /// Why a passive replica does not serve, naming the active one when known.
    pub fn passive_reason(role: &Role) -> String {
        match role {
            Role::Active { epoch, .. } => format!("active at epoch {epoch}"),
            Role::Passive {
                active: Some(lease),
            } => match &lease.holder {
                Some(holder) => format!(
                    "passive: the active replica is {holder} at {} (epoch {})",
                    lease
                        .holder_endpoint
                        .as_deref()
                        .unwrap_or("an unknown endpoint"),
                    lease.epoch
                ),
                None => "passive: the lease is free; taking it over".to_owned(),
            },
            Role::Passive { active: None } => "passive: waiting for the lease".to_owned(),
        }
    }

    /// The `replication` object of `/status`: role, epoch and since when.
    pub fn status(&self) -> serde_json::Value {
        let mut status = self.manager.role().to_json();
        let settings = self.manager.settings();
        if let Some(object) = status.as_object_mut() {
            object.insert("replica_id".to_owned(), settings.replica_id.clone().into());
            object.insert("node".to_owned(), settings.node.clone().into());
            object.insert(
                "advertised_endpoint".to_owned(),
                settings.advertised_endpoint.clone().into(),
            );
            object
                .entry("since_us")
                .or_insert_with(|| self.since_us.load(Ordering::Relaxed).into());
            object.insert("phase".to_owned(), self.phase().as_str().into());
        }
        status
    }

    fn set_condition(&self, reason: String) {
        let _gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        self.readiness.fail(CONDITION, reason);
    }

    /// Called by the active work once it serves.
    pub fn serving(&self) {
        let _gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        if self.manager.role().is_active() {
            self.enter(Phase::Active);
            self.readiness.clear(CONDITION);
        }
    }

    /// Keeps readiness and `/status` in step with the role while passive (the holder named in
    /// the reason changes as the manager polls the lease). Runs until `shutdown`.
    pub async fn follow(self: Arc<Self>, shutdown: CancellationToken) {
        let mut roles = self.manager.subscribe();
        let mut was_active = false;
        loop {
            {
                let _gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
                // Read fresh under the gate rather than the notified value: see `gate`.
                let role = self.manager.role();
                if role.is_active() != was_active {
                    was_active = role.is_active();
                    self.since_us
                        .store(Timestamp::now().as_micros(), Ordering::Relaxed);
                }
                if !role.is_active() {
                    self.readiness.fail(CONDITION, Self::passive_reason(&role));
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = roles.changed() => if changed.is_err() { return },
            }
        }
    }

    /// The role loop. `work` is started with a token of its own each time this replica becomes
    /// active; it must return when that token is cancelled, and it must cancel the token
    /// itself (and return `Ok`) when a write finds this replica fenced. An `Err` from `work` is
    /// fatal: the lease is released so another replica can try, and the error is returned.
    pub async fn run<F, Fut>(&self, shutdown: &CancellationToken, mut work: F) -> anyhow::Result<()>
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let node = self.manager.settings().node.clone();
        loop {
            let Some(epoch) = self.manager.acquire(shutdown).await else {
                return Ok(());
            };
            let promoted = Instant::now();
            self.enter(Phase::Promoting);
            self.set_condition(format!(
                "promoted to active at epoch {epoch}; restoring state and connecting"
            ));
            let active = shutdown.child_token();
            let hold_stop = shutdown.child_token();
            let work = work(active.clone());
            tokio::pin!(work);
            let hold = self.manager.hold(epoch, &hold_stop);
            tokio::pin!(hold);
            let (end, result) = tokio::select! {
                end = &mut hold => {
                    self.enter(Phase::Demoting);
                    self.set_condition(format!("demoting after epoch {epoch}: {end:?}"));
                    active.cancel();
                    let result = match tokio::time::timeout(WIND_DOWN_TIMEOUT, &mut work).await {
                        Ok(result) => result,
                        Err(_) => {
                            tracing::error!(%node, timeout_ms = WIND_DOWN_TIMEOUT.as_millis() as u64, "the active work did not stop in time; abandoning it (its writes are fenced)");
                            Ok(())
                        }
                    };
                    (end, result)
                }
                result = &mut work => {
                    self.enter(Phase::Demoting);
                    self.set_condition(format!("demoting after epoch {epoch}"));
                    active.cancel();
                    // Work stops by itself on shutdown, on a fatal error, or when a write found
                    // this replica fenced. Releasing is conditional on our epoch, so it hands
                    // the lease over at once in the first two cases and is a no-op (bar
                    // dropping the lock file) in the last.
                    hold_stop.cancel();
                    hold.await;
                    let end = if shutdown.is_cancelled() {
                        HoldEnd::Shutdown
                    } else {
                        if result.is_ok() {
                            tracing::warn!(%node, %epoch, "a write found this replica fenced; demoting");
                        }
                        HoldEnd::Lost
                    };
                    (end, result)
                }
            };
            self.manager.demoted();
            self.enter(Phase::Passive);
            tracing::info!(%node, %epoch, ?end, active_ms = promoted.elapsed().as_millis() as u64, "this replica is passive again");
            result?;
            match end {
                HoldEnd::Shutdown => return Ok(()),
                // A refused write ends up here as `Lost` even when this replica's own
                // step-down caused it, so yield in both cases; after a real loss another
                // replica holds the lease and this returns at the first poll.
                HoldEnd::Lost | HoldEnd::SteppedDown => {
                    self.set_condition(
                        "demoted; giving the other replicas the first go at the lease".to_owned(),
                    );
                    if !self.manager.yield_to_others(shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ReplicationConfig {
        crate::config::parse_toml(text, "r.toml").expect("parses")
    }

    #[test]
    fn defaults_and_the_role_supplied_endpoint() {
        let config = parse("replica_id = \"a\"\n");
        config.check().expect("valid");
        let settings = config.settings("node1".to_owned(), || "http://127.0.0.1:1".to_owned());
        assert_eq!(settings.node, "node1");
        assert_eq!(settings.replica_id, "a");
        assert_eq!(settings.advertised_endpoint, "http://127.0.0.1:1");
        assert_eq!(settings.lease_timeout, Duration::from_millis(700));
        assert_eq!(settings.poll_interval, Duration::from_millis(50));

        let config = parse("replica_id = \"a\"\nadvertised_endpoint = \"http://10.0.0.5:2\"\n");
        let settings = config.settings("node1".to_owned(), || unreachable!("configured"));
        assert_eq!(settings.advertised_endpoint, "http://10.0.0.5:2");
    }

    #[test]
    fn check_names_the_full_key() {
        for (text, key) in [
            ("replica_id = \"a b\"", "replication.replica_id"),
            (
                "replica_id = \"a\"\nadvertised_endpoint = \"x\"",
                "replication.advertised_endpoint",
            ),
            (
                "replica_id = \"a\"\nlease_timeout_ms = 60001",
                "replication.lease_timeout_ms",
            ),
            (
                "replica_id = \"a\"\npoll_interval_ms = 1000",
                "replication.poll_interval_ms",
            ),
        ] {
            let (field, _) = parse(text).check().expect_err(text);
            assert_eq!(field, key, "{text}");
        }
    }
}
