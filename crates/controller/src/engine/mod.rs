//! Every decision the controller makes, sans I/O: observations, commands and the clock go in,
//! effects come out, in the order the runtime must carry them out (persist before act).
//! Replaying the same inputs gives the same effects, so every policy is unit-tested without a
//! process or a socket.
//!
//! INTERFACE ONLY (being implemented): the bodies below are placeholders with the agreed
//! signatures, so that the runtime and the HTTP server compile against them meanwhile.

use meridian_core::placement::ReplicaName;
use meridian_core::Timestamp;

use crate::api::{AuditRecord, Command, CommandError, CommandOutcome, ControllerInfo, Status};
use crate::model::{Inventory, Observation};
use crate::plan::{Plan, PlanId, StepAction, StepOutcome};
use crate::settings::ControllerSettings;

/// Why the engine wants a process started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartReason {
    /// A warm replica's process exited (or never came up); the n-th restart in the window.
    Restart { attempt: u32 },
    /// The node has no replica left that could serve, and no warm one to take over.
    ColdStandby,
}

/// What the runtime must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Persist the plan (upsert by id) before any later effect of the same batch.
    SavePlan(Plan),
    /// Append to the audit log (persisted), then publish it to event subscribers.
    Audit(AuditRecord),
    /// Start the replica's process (idempotent: a running one is left alone).
    Start {
        replica: ReplicaName,
        reason: StartReason,
    },
    /// Run one step of a plan; the runtime answers with [`Engine::step_finished`].
    RunStep {
        plan: PlanId,
        step: usize,
        action: StepAction,
    },
}

/// What a controller taking over restores from the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// Every plan, any state.
    pub plans: Vec<Plan>,
    /// The audit records of the last hour at least (the hourly cap counts them) and the last
    /// finished switchover (the cooldown starts there).
    pub recent_audit: Vec<AuditRecord>,
}

/// The controller's whole decision state.
#[derive(Debug)]
pub struct Engine {
    settings: ControllerSettings,
    inventory: Inventory,
    plans: Vec<Plan>,
}

impl Engine {
    /// A controller that became active at `now`, with what the store held. A plan found
    /// running continues with its first unfinished step (the step running when the last
    /// controller died runs again: steps are idempotent).
    pub fn new(
        settings: ControllerSettings,
        inventory: Inventory,
        restored: Restored,
        _now: Timestamp,
    ) -> Self {
        Self {
            settings,
            inventory,
            plans: restored.plans,
        }
    }

    pub fn settings(&self) -> &ControllerSettings {
        &self.settings
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// The effects a controller must run right after it became active (resume a running
    /// plan's step, an audit record that it took over).
    pub fn resume(&mut self, _now: Timestamp) -> Vec<Effect> {
        Vec::new()
    }

    /// Takes in one observation.
    pub fn observe(&mut self, _now: Timestamp, _observation: Observation) -> Vec<Effect> {
        Vec::new()
    }

    /// Timers: restarts whose backoff elapsed, dwell times, plan expiry.
    pub fn tick(&mut self, _now: Timestamp) -> Vec<Effect> {
        Vec::new()
    }

    /// An operator's command: its answer, and the effects (nothing on an error).
    pub fn command(
        &mut self,
        _now: Timestamp,
        command: Command,
    ) -> (Result<CommandOutcome, CommandError>, Vec<Effect>) {
        let plan = match command {
            Command::ProposeSwitchover { to, .. } => to.to_string(),
            Command::Approve { plan, .. } | Command::Reject { plan, .. } => plan.to_string(),
        };
        (Err(CommandError::UnknownPlan { plan }), Vec::new())
    }

    /// A step's outcome: the plan moves on (next step, done, or failed).
    pub fn step_finished(
        &mut self,
        _now: Timestamp,
        _plan: &PlanId,
        _step: usize,
        _outcome: StepOutcome,
    ) -> Vec<Effect> {
        Vec::new()
    }

    /// The status the API serves (regions → zones → replicas, plans, cooldown, cap), for
    /// the controller replica `controller`; `events` are the latest audit records.
    pub fn status(&self, controller: ControllerInfo, events: Vec<AuditRecord>) -> Status {
        Status {
            controller,
            regions: Vec::new(),
            plans: self.plans.clone(),
            cooldown_until: None,
            automatic_actions_last_hour: 0,
            events,
        }
    }
}
