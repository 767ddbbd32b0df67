//! The controller's I/O, as a trait: the runtime asks an actuator to probe replicas, start
//! processes, read the databases and run plan steps. The lab implements it for deployments on
//! one machine (child processes, throwaway PostgreSQL); the engine never sees it.

use async_trait::async_trait;
use meridian_core::placement::ReplicaName;

use crate::model::{DatabaseFact, ProbeOutcome, ReplicaSpec};
use crate::plan::{StepAction, StepOutcome};

/// What a start did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    Now {
        pid: u32,
    },
    /// It was running already (idempotent starts).
    AlreadyRunning {
        pid: u32,
    },
}

#[async_trait]
pub trait Actuator: Send + Sync + 'static {
    /// Called at the start of every active term, before anything is adopted or restored: the
    /// lab starts a deployment that never ran here. An error ends the controller (it cannot
    /// supervise what it cannot set up). Nothing to do by default.
    async fn prepare(&self) -> anyhow::Result<()> {
        Ok(())
    }

    /// `/livez`, `/readyz` and `/status` of the replica's admin port, each bounded.
    async fn probe(&self, replica: &ReplicaSpec) -> ProbeOutcome;

    /// The replicas whose process runs now, with its pid — at takeover, a controller adopts
    /// the processes the one before it started.
    async fn running(&self) -> anyhow::Result<Vec<(ReplicaName, u32)>>;

    /// Starts the replica's process; a running one is left alone.
    async fn start(&self, replica: &ReplicaSpec) -> anyhow::Result<Started>;

    /// The processes that exited since the last call, with their exit code (`None`: a signal).
    async fn exited(&self) -> Vec<(ReplicaName, Option<i32>)>;

    /// Every database server's role and lag; empty on SQLite.
    async fn databases(&self) -> anyhow::Result<Vec<DatabaseFact>>;

    /// Runs one plan step to its end (bounded); idempotent: a step whose effect already holds
    /// answers [`StepOutcome::AlreadyDone`].
    async fn run_step(&self, action: &StepAction) -> StepOutcome;
}
