//! Plans: building a switchover's steps, and the plan state machine (approve, reject, expire,
//! a step finished). Every change of a plan yields its `SavePlan` before any action it causes,
//! so that the store always holds at least what was acted on.
//!
//! A plan's steps, in order:
//! 1. `FenceRegion` for each region the moving nodes are active in (usually one): every
//!    replica of a moving node there is stopped;
//! 2. on PostgreSQL, for a planned switchover only, `WaitForCatchUp` of the target region's
//!    standbys;
//! 3. `PromoteDatabases` of those standbys (an empty list on SQLite: the step stays, it
//!    documents the order);
//! 4. `StartReplicas` per node kind in start order, every replica of a moving node in the
//!    target region, cold and warm alike (starting a running one is a no-op);
//! 5. `WaitReady` on those replicas;
//! 6. `MoveLoadBalancer` to the target region.
//!
//! The inventory does not say which PostgreSQL cluster holds which node's database, so the
//! database steps name every server in the target region that is (or was placed as) a
//! standby: in the lab each deployment has one cluster per region pair.

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_core::placement::{ClusterName, NodeKind, NodeName, RegionName, ServerName};
use meridian_core::Timestamp;

use super::Effect;
use crate::api::{AuditKind, AuditRecord};
use crate::model::{DatabaseFact, DatabaseRole, Inventory};
use crate::plan::{
    Actor, DataLoss, Decision, Plan, PlanId, PlanKind, PlanState, Step, StepAction, StepOutcome,
    StepState,
};
use crate::settings::ControllerSettings;

/// What a new plan is made of; the engine has checked it (known regions and nodes, every
/// moving node has a replica in `to`).
#[derive(Debug)]
pub struct Proposal<'a> {
    pub id: PlanId,
    pub kind: PlanKind,
    pub to: RegionName,
    /// The moving nodes with the region each is active in, in start order.
    pub moving: Vec<(NodeName, RegionName)>,
    pub by: Actor,
    pub inventory: &'a Inventory,
    pub databases: &'a BTreeMap<ServerName, DatabaseFact>,
}

/// The plan, awaiting approval.
pub fn build(proposal: Proposal<'_>, now: Timestamp, settings: &ControllerSettings) -> Plan {
    let Proposal {
        id,
        kind,
        to,
        moving,
        by,
        inventory,
        databases,
    } = proposal;
    let moves = |node: &NodeName| moving.iter().any(|(moving, _)| moving == node);
    let mut from_regions: Vec<RegionName> = Vec::new();
    for (_, region) in &moving {
        if region != &to && !from_regions.contains(region) {
            from_regions.push(region.clone());
        }
    }
    let mut steps = Vec::new();
    for region in &from_regions {
        let replicas = inventory
            .replicas
            .iter()
            .filter(|r| &r.region == region && moves(&r.node))
            .map(|r| r.name.clone())
            .collect();
        steps.push(StepAction::FenceRegion {
            region: region.clone(),
            replicas,
        });
    }
    let standbys = target_standbys(inventory, databases, &to);
    if !inventory.servers.is_empty() && kind == PlanKind::Switchover {
        steps.push(StepAction::WaitForCatchUp {
            servers: standbys.clone(),
        });
    }
    steps.push(StepAction::PromoteDatabases { servers: standbys });
    let mut started = Vec::new();
    for kind in NodeKind::START_ORDER {
        let replicas: Vec<_> = inventory
            .replicas
            .iter()
            .filter(|r| r.kind == kind && r.region == to && moves(&r.node))
            .map(|r| r.name.clone())
            .collect();
        if !replicas.is_empty() {
            started.extend(replicas.iter().cloned());
            steps.push(StepAction::StartReplicas { kind, replicas });
        }
    }
    steps.push(StepAction::WaitReady { replicas: started });
    steps.push(StepAction::MoveLoadBalancer { region: to.clone() });
    let data_loss = (kind == PlanKind::RegionLoss).then(|| data_loss(inventory, databases, &to));
    Plan {
        id,
        kind,
        from_region: from_regions.first().cloned().unwrap_or_else(|| to.clone()),
        to_region: to,
        components: moving.into_iter().map(|(node, _)| node).collect(),
        proposed_by: by,
        created_at: now,
        expires_at: now.saturating_add(Duration::from_secs(settings.plan_expiry_s)),
        data_loss,
        steps: steps
            .into_iter()
            .map(|action| Step {
                action,
                state: StepState::Pending,
            })
            .collect(),
        state: PlanState::AwaitingApproval,
    }
}

/// The servers in `to` that are standbys now (as last read) or were placed as one.
fn target_standbys(
    inventory: &Inventory,
    databases: &BTreeMap<ServerName, DatabaseFact>,
    to: &RegionName,
) -> Vec<ServerName> {
    inventory
        .servers
        .iter()
        .filter(|server| &server.region == to)
        .filter(|server| {
            let role = databases
                .get(&server.name)
                .and_then(|fact| fact.role)
                .unwrap_or(server.placed_as);
            role != DatabaseRole::Primary
        })
        .map(|server| server.name.clone())
        .collect()
}

/// What a region loss to `to` loses: each cluster's asynchronous standby lag there, as last
/// read.
fn data_loss(
    inventory: &Inventory,
    databases: &BTreeMap<ServerName, DatabaseFact>,
    to: &RegionName,
) -> DataLoss {
    let mut lag_bytes: Vec<(ClusterName, u64)> = Vec::new();
    let mut read_at: Option<Timestamp> = None;
    for server in inventory.servers.iter().filter(|s| &s.region == to) {
        let Some(fact) = databases.get(&server.name) else {
            continue;
        };
        let Some(lag) = fact.lag_bytes else { continue };
        read_at = Some(read_at.map_or(fact.read_at, |at| at.max(fact.read_at)));
        match lag_bytes.iter_mut().find(|(c, _)| c == &server.cluster) {
            // Two standbys of one cluster there: the better one is promoted.
            Some((_, known)) => *known = (*known).min(lag),
            None => lag_bytes.push((server.cluster.clone(), lag)),
        }
    }
    DataLoss { lag_bytes, read_at }
}

/// The data loss in words, for the error that asks for its acknowledgement and the audit log.
pub fn describe_loss(plan: &Plan, inventory: &Inventory) -> String {
    let Some(loss) = &plan.data_loss else {
        return "nothing".to_owned();
    };
    if inventory.servers.is_empty() {
        return "what the old region's processes had not written (SQLite: no database \
                replication, no lag to measure)"
            .to_owned();
    }
    if loss.lag_bytes.is_empty() {
        return "an unknown amount (no standby lag was read in the target region)".to_owned();
    }
    let parts: Vec<String> = loss
        .lag_bytes
        .iter()
        .map(|(cluster, bytes)| format!("{bytes} bytes of cluster {cluster}"))
        .collect();
    match loss.read_at {
        Some(at) => format!("{} (lag read at {at})", parts.join(", ")),
        None => parts.join(", "),
    }
}

/// The plan's number, if its id is `plan-<n>`.
pub fn number(id: &PlanId) -> Option<u64> {
    id.as_str().strip_prefix("plan-")?.parse().ok()
}

/// A record about `plan`.
pub fn record(
    now: Timestamp,
    kind: AuditKind,
    actor: Actor,
    plan: &Plan,
    detail: String,
) -> AuditRecord {
    AuditRecord {
        seq: 0,
        at: now,
        kind,
        actor,
        plan: Some(plan.id.clone()),
        step: None,
        replica: None,
        region: None,
        detail,
    }
}

/// Approves `plan` (checked: awaiting approval, not expired, loss acknowledged): running, its
/// first step started.
pub fn approve(plan: &mut Plan, by: Actor, now: Timestamp) -> Vec<Effect> {
    plan.state = PlanState::Running {
        approved: Decision {
            by: by.clone(),
            at: now,
        },
    };
    let approved = record(
        now,
        AuditKind::PlanApproved,
        by.clone(),
        plan,
        format!(
            "approved by {by}: {} to {}",
            plan_scope(plan),
            plan.to_region
        ),
    );
    let mut effects = Vec::new();
    let mut records = vec![approved];
    let run = start_step(plan, 0, now, &mut records, false);
    effects.push(Effect::SavePlan(plan.clone()));
    effects.extend(records.into_iter().map(Effect::Audit));
    effects.extend(run);
    effects
}

/// Marks step `index` running (unless it is already) and returns its `RunStep`; records its
/// start. The caller saves the plan before the returned effect.
pub fn start_step(
    plan: &mut Plan,
    index: usize,
    now: Timestamp,
    records: &mut Vec<AuditRecord>,
    again: bool,
) -> Option<Effect> {
    let plan_id = plan.id.clone();
    let step = plan.steps.get_mut(index)?;
    if !matches!(step.state, StepState::Running { .. }) {
        step.state = StepState::Running { started_at: now };
    }
    let action = step.action.clone();
    let mut detail = action.describe();
    if again {
        detail.push_str(" (again, after a controller takeover: steps are idempotent)");
    }
    records.push(AuditRecord {
        step: Some(index),
        ..record(now, AuditKind::StepStarted, Actor::Controller, plan, detail)
    });
    Some(Effect::RunStep {
        plan: plan_id,
        step: index,
        action,
    })
}

/// The index of a running plan's first unfinished step.
pub fn first_unfinished(plan: &Plan) -> Option<usize> {
    plan.steps
        .iter()
        .position(|step| !matches!(step.state, StepState::Finished { .. }))
}

/// What a finished step did to the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The next step starts.
    Next(usize),
    Done,
    Failed(String),
}

/// Records step `index`'s outcome on a running plan whose step `index` is running; `None`
/// (and nothing changed) when the report is stale.
pub fn finish_step(
    plan: &mut Plan,
    index: usize,
    outcome: StepOutcome,
    now: Timestamp,
) -> Option<Progress> {
    let PlanState::Running { approved } = &plan.state else {
        return None;
    };
    let approved = approved.clone();
    let step = plan.steps.get_mut(index)?;
    let StepState::Running { started_at } = step.state else {
        return None;
    };
    step.state = StepState::Finished {
        started_at,
        finished_at: now,
        outcome: outcome.clone(),
    };
    let progress = match outcome {
        StepOutcome::Failed(error) => {
            plan.state = PlanState::Failed {
                approved,
                at: now,
                error: format!(
                    "step {index} ({}): {error}",
                    plan.steps[index].action.describe()
                ),
            };
            Progress::Failed(error)
        }
        StepOutcome::Done(_) | StepOutcome::AlreadyDone(_) => {
            if index + 1 < plan.steps.len() {
                Progress::Next(index + 1)
            } else {
                plan.state = PlanState::Done { approved, at: now };
                Progress::Done
            }
        }
    };
    Some(progress)
}

/// "every node" or the components' names.
pub fn plan_scope(plan: &Plan) -> String {
    let names: Vec<&str> = plan.components.iter().map(NodeName::as_str).collect();
    names.join(", ")
}

/// The step's outcome in words.
pub fn describe_outcome(outcome: &StepOutcome) -> String {
    match outcome {
        StepOutcome::Done(what) => format!("done: {what}"),
        StepOutcome::AlreadyDone(what) => format!("already done: {what}"),
        StepOutcome::Failed(error) => format!("failed: {error}"),
    }
}
