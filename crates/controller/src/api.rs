//! The controller's API as JSON: what `GET /api/status` answers (and `meridian ctl status
//! --json` prints), the commands `POST /api/plans`, `/approve` and `/reject` carry, their
//! errors with the HTTP status each maps to, and the audit records the timeline shows. One set
//! of types for the server, the CLI, the drills and the dashboard.

use meridian_core::placement::{
    ClusterName, NodeKind, NodeName, RegionName, ReplicaName, ServerName, ZoneName,
};
use meridian_core::Timestamp;
use serde::{Deserialize, Serialize};

use crate::model::{DatabaseRole, Temperature};
use crate::plan::{Actor, Plan, PlanId};

/// What an operator (or the drill) asks the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "command")]
pub enum Command {
    /// Plan a move of `components` (every node when empty) to region `to`.
    ProposeSwitchover {
        to: RegionName,
        #[serde(default)]
        components: Vec<NodeName>,
        by: Actor,
    },
    /// Approve a plan awaiting approval. A region-loss plan needs `acknowledge_loss`: the
    /// approver accepts the data loss the plan states.
    Approve {
        plan: PlanId,
        by: Actor,
        #[serde(default)]
        acknowledge_loss: bool,
    },
    Reject {
        plan: PlanId,
        by: Actor,
    },
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutcome {
    pub plan: Plan,
}

/// Why a command was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "error")]
pub enum CommandError {
    #[error("unknown region {region}; the deployment's regions are {known}")]
    UnknownRegion { region: String, known: String },
    #[error("unknown component {component}; the deployment's nodes are {known}")]
    UnknownComponent { component: String, known: String },
    #[error("{components} already run in {region}: nothing to move")]
    AlreadyThere { components: String, region: String },
    #[error("{region} has no replica of {node} to move to")]
    NoReplicaThere { node: String, region: String },
    #[error("plan {plan} is still {state}: one plan at a time")]
    PlanOpen { plan: String, state: String },
    #[error("a switchover finished at {finished_at}; the cooldown lasts until {until}")]
    Cooldown {
        finished_at: Timestamp,
        until: Timestamp,
    },
    #[error("no plan {plan}")]
    UnknownPlan { plan: String },
    #[error("plan {plan} is {state}, not awaiting approval")]
    NotAwaitingApproval { plan: String, state: String },
    #[error("plan {plan} expired at {at}")]
    Expired { plan: String, at: Timestamp },
    #[error(
        "plan {plan} is a region loss that loses {lag}; approve it with acknowledge_loss \
         (`meridian ctl approve {plan} --acknowledge-loss`)"
    )]
    LossNotAcknowledged { plan: String, lag: String },
    #[error("this controller replica is not active; the active one is {active}")]
    NotActive { active: String },
    #[error("the controller did not answer within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
}

impl CommandError {
    /// The HTTP status the API answers it with.
    pub fn http_status(&self) -> u16 {
        match self {
            CommandError::UnknownRegion { .. }
            | CommandError::UnknownComponent { .. }
            | CommandError::AlreadyThere { .. }
            | CommandError::NoReplicaThere { .. }
            | CommandError::LossNotAcknowledged { .. } => 400,
            CommandError::UnknownPlan { .. } => 404,
            CommandError::PlanOpen { .. }
            | CommandError::Cooldown { .. }
            | CommandError::NotAwaitingApproval { .. }
            | CommandError::Expired { .. } => 409,
            CommandError::NotActive { .. } | CommandError::Timeout { .. } => 503,
        }
    }
}

/// What a replica is, as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaRole {
    Active,
    Passive,
    /// Configured, never started (or stopped by a plan and cold again).
    Cold,
    /// Its process runs but has not passed `rise` probes yet, or is being restarted.
    Starting,
    /// Failed `fall` probes, or its process exited; a restart may be pending.
    Down,
    /// Stopped on purpose (a plan fenced it).
    Stopped,
    /// Crash-looping: the controller stopped restarting it.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub name: ReplicaName,
    pub node: NodeName,
    pub kind: NodeKind,
    pub temperature: Temperature,
    pub role: ReplicaRole,
    pub ready: bool,
    /// The replica's own `/readyz` reason, or the controller's ("crash loop: 5 restarts in
    /// 60 s").
    pub reason: Option<String>,
    pub restarts: u32,
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub name: ServerName,
    pub cluster: ClusterName,
    pub placed_as: DatabaseRole,
    pub role: Option<DatabaseRole>,
    pub reachable: bool,
    pub lag_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneStatus {
    pub name: ZoneName,
    pub replicas: Vec<ReplicaStatus>,
    pub servers: Vec<ServerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionStatus {
    pub name: RegionName,
    /// Every replica placed here down for the dwell time.
    pub failed_since: Option<Timestamp>,
    pub zones: Vec<ZoneStatus>,
}

/// The controller replica answering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerInfo {
    pub replica: String,
    pub active: bool,
    /// The active controller replica, if known.
    pub active_replica: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub controller: ControllerInfo,
    pub regions: Vec<RegionStatus>,
    /// Open plans first, then the most recent finished ones (bounded).
    pub plans: Vec<Plan>,
    pub cooldown_until: Option<Timestamp>,
    pub automatic_actions_last_hour: u32,
    /// The most recent audit records, oldest first (bounded).
    pub events: Vec<AuditRecord>,
}

impl Status {
    /// What a controller replica shows before it knows anything: no regions, plans or events.
    pub fn empty(controller: ControllerInfo) -> Self {
        Self {
            controller,
            regions: Vec::new(),
            plans: Vec::new(),
            cooldown_until: None,
            automatic_actions_last_hour: 0,
            events: Vec::new(),
        }
    }

    /// Every replica the status lists, region by region, zone by zone.
    pub fn replicas(&self) -> impl Iterator<Item = &ReplicaStatus> {
        self.regions
            .iter()
            .flat_map(|region| &region.zones)
            .flat_map(|zone| &zone.replicas)
    }

    /// The deployment is up as this controller sees it: it is active and every replica it
    /// lists is active, passive or cold (none starting, down, stopped or failed).
    pub fn deployment_up(&self) -> bool {
        self.controller.active
            && !self.regions.is_empty()
            && self.replicas().all(|replica| {
                matches!(
                    replica.role,
                    ReplicaRole::Active | ReplicaRole::Passive | ReplicaRole::Cold
                )
            })
    }
}

/// What an audit record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditKind {
    ControllerActive,
    ReplicaDown,
    ReplicaUp,
    Restart,
    CrashLoop,
    ColdStart,
    RegionFailed,
    RegionRecovered,
    PlanProposed,
    PlanApproved,
    PlanRejected,
    PlanExpired,
    StepStarted,
    StepFinished,
    PlanDone,
    PlanFailed,
    /// An automatic action the policy held back (cooldown, hourly cap, dwell).
    ActionHeld,
}

/// One line of the append-only audit log (and of the dashboard's timeline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Assigned by the store when appended; 0 before.
    pub seq: u64,
    pub at: Timestamp,
    pub kind: AuditKind,
    pub actor: Actor,
    pub plan: Option<PlanId>,
    /// The step's index, for step records.
    pub step: Option<usize>,
    pub replica: Option<ReplicaName>,
    pub region: Option<RegionName>,
    pub detail: String,
}
