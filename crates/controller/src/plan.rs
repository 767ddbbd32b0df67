//! Plans as data: a region switchover (planned, or after a region loss) of the whole
//! deployment or of some components, as explicit steps that wait for an operator's approval.
//! A plan is persisted as JSON after every change, so that another controller replica picks it
//! up exactly where the last one left it. The engine ([`crate::engine`]) builds plans and moves
//! them on; the runtime runs their steps through the actuator.
//!
//! Every step is idempotent: run again after a controller failover, a step whose effect
//! already holds reports [`StepOutcome::AlreadyDone`] instead of acting twice.

use std::fmt;

use meridian_core::placement::{
    ClusterName, NodeKind, NodeName, RegionName, ReplicaName, ServerName,
};
use meridian_core::Timestamp;
use serde::{Deserialize, Serialize};

/// A plan's id: `plan-<n>`, `n` counting up per deployment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PlanId(pub String);

impl PlanId {
    pub fn numbered(n: u64) -> Self {
        Self(format!("plan-{n}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who did something: an operator (the name they gave, or "admin-token" when they gave
/// none) or the controller itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "name")]
pub enum Actor {
    Operator(String),
    Controller,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Operator(name) => write!(f, "operator {name}"),
            Actor::Controller => f.write_str("the controller"),
        }
    }
}

/// Why the plan exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlanKind {
    /// Planned: the old region is up; nothing acknowledged may be lost (the step
    /// [`StepAction::WaitForCatchUp`] waits for lag 0).
    Switchover,
    /// The old region is gone: what its asynchronous standbys had not received is lost, and
    /// the approval must acknowledge exactly that ([`DataLoss`]).
    RegionLoss,
}

/// What a region loss will lose: each cluster's asynchronous lag when the plan was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataLoss {
    pub lag_bytes: Vec<(ClusterName, u64)>,
    /// When the lag was last read (the old region stopped answering after that).
    pub read_at: Option<Timestamp>,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum StepAction {
    /// Stop (SIGTERM, then kill -9 after a grace) the moving components' replicas in the old
    /// region, so that none of them serves or writes again. On a region loss they are gone
    /// already; the step checks that and kills what still runs.
    FenceRegion {
        region: RegionName,
        replicas: Vec<ReplicaName>,
    },
    /// Wait until the target region's standbys replayed everything (lag 0) — switchover only.
    WaitForCatchUp { servers: Vec<ServerName> },
    /// Promote the target region's standbys (`pg_ctl promote`); nothing on SQLite.
    PromoteDatabases { servers: Vec<ServerName> },
    /// Start (cold) or keep (warm, running) the target region's replicas of one node kind.
    StartReplicas {
        kind: NodeKind,
        replicas: Vec<ReplicaName>,
    },
    /// Wait until one replica of every moving node in the target region is ready (every
    /// sequencer instance there, for the sequencer).
    WaitReady { replicas: Vec<ReplicaName> },
    /// Point the load balancer at the target region. Until a load balancer is configured
    /// (the load-balancer issue), the step records that there is none.
    MoveLoadBalancer { region: RegionName },
}

impl StepAction {
    /// One line for the CLI, the dashboard and the audit log.
    pub fn describe(&self) -> String {
        let names = |items: &[ReplicaName]| {
            items
                .iter()
                .map(ReplicaName::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let servers = |items: &[ServerName]| {
            items
                .iter()
                .map(ServerName::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            StepAction::FenceRegion { region, replicas } => {
                format!("fence {region}: stop {}", names(replicas))
            }
            StepAction::WaitForCatchUp { servers: s } => {
                format!("wait until {} replayed everything", servers(s))
            }
            StepAction::PromoteDatabases { servers: s } if s.is_empty() => {
                "promote databases: none (SQLite)".to_owned()
            }
            StepAction::PromoteDatabases { servers: s } => format!("promote {}", servers(s)),
            StepAction::StartReplicas { kind, replicas } => {
                format!("start the {} replicas {}", kind.command(), names(replicas))
            }
            StepAction::WaitReady { replicas } => format!("wait until ready: {}", names(replicas)),
            StepAction::MoveLoadBalancer { region } => {
                format!("move the load balancer to {region}")
            }
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "outcome", content = "detail")]
pub enum StepOutcome {
    /// It acted; what it did.
    Done(String),
    /// Its effect already held (run again after a controller failover, or nothing to do).
    AlreadyDone(String),
    Failed(String),
}

/// Where a step is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum StepState {
    Pending,
    /// Started at; a controller that takes over runs a running step again (idempotent).
    Running {
        started_at: Timestamp,
    },
    Finished {
        started_at: Timestamp,
        finished_at: Timestamp,
        outcome: StepOutcome,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub action: StepAction,
    pub state: StepState,
}

/// Who approved or rejected, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub by: Actor,
    pub at: Timestamp,
}

/// Where a plan is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum PlanState {
    AwaitingApproval,
    Running {
        approved: Decision,
    },
    Done {
        approved: Decision,
        at: Timestamp,
    },
    Failed {
        approved: Decision,
        at: Timestamp,
        error: String,
    },
    Rejected {
        rejected: Decision,
    },
    Expired {
        at: Timestamp,
    },
}

impl PlanState {
    pub fn name(&self) -> &'static str {
        match self {
            PlanState::AwaitingApproval => "awaiting-approval",
            PlanState::Running { .. } => "running",
            PlanState::Done { .. } => "done",
            PlanState::Failed { .. } => "failed",
            PlanState::Rejected { .. } => "rejected",
            PlanState::Expired { .. } => "expired",
        }
    }

    /// Pending or running: it still holds the deployment's one plan slot.
    pub fn is_open(&self) -> bool {
        matches!(
            self,
            PlanState::AwaitingApproval | PlanState::Running { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub id: PlanId,
    pub kind: PlanKind,
    pub from_region: RegionName,
    pub to_region: RegionName,
    /// The nodes that move; every node when the operator named none.
    pub components: Vec<NodeName>,
    pub proposed_by: Actor,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// For a region loss: what approving it accepts to lose.
    pub data_loss: Option<DataLoss>,
    pub steps: Vec<Step>,
    pub state: PlanState,
}
