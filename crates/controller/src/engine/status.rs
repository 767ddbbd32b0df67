//! The engine's state as the API's [`Status`]: regions → zones → replicas (each with the role
//! the controller sees and why) and database servers, the open plans first and then the most
//! recent others, the cooldown and the automatic actions of the last hour.

use super::probe::Verdict;
use super::supervise::{comeback_grace, Intent, ReplicaState};
use super::Engine;
use crate::api::{
    AuditRecord, ControllerInfo, RegionStatus, ReplicaRole, ReplicaStatus, ServerStatus, Status,
    ZoneStatus,
};
use crate::model::{ReplicaSpec, ServingRole};
use crate::plan::Plan;

/// How many finished plans the status lists after the open ones.
pub const RECENT_PLANS: usize = 20;

pub fn render(engine: &Engine, controller: ControllerInfo, events: Vec<AuditRecord>) -> Status {
    let regions = engine
        .inventory
        .regions
        .iter()
        .map(|region| RegionStatus {
            name: region.name.clone(),
            failed_since: engine
                .regions
                .get(&region.name)
                .and_then(|state| state.failed_since),
            zones: region
                .zones
                .iter()
                .map(|zone| ZoneStatus {
                    name: zone.clone(),
                    replicas: engine
                        .inventory
                        .replicas
                        .iter()
                        .zip(&engine.replicas)
                        .filter(|(spec, _)| &spec.zone == zone)
                        .map(|(spec, state)| replica(engine, spec, state))
                        .collect(),
                    servers: engine
                        .inventory
                        .servers
                        .iter()
                        .filter(|server| &server.zone == zone)
                        .map(|server| {
                            let fact = engine.databases.get(&server.name);
                            ServerStatus {
                                name: server.name.clone(),
                                cluster: server.cluster.clone(),
                                placed_as: server.placed_as,
                                role: fact.and_then(|f| f.role),
                                reachable: fact.is_some_and(|f| f.reachable),
                                lag_bytes: fact.and_then(|f| f.lag_bytes),
                            }
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect();
    Status {
        controller,
        regions,
        plans: plans(&engine.plans),
        // Only a cooldown that still runs: a past one says nothing.
        cooldown_until: engine
            .policy
            .cooling_down(engine.now, &engine.settings)
            .map(|(_, until)| until),
        automatic_actions_last_hour: engine.policy.actions_last_hour(engine.now),
        events,
    }
}

/// Open plans in id order, then the most recent finished ones, newest first.
fn plans(all: &[Plan]) -> Vec<Plan> {
    let mut listed: Vec<Plan> = all.iter().filter(|p| p.state.is_open()).cloned().collect();
    listed.extend(
        all.iter()
            .rev()
            .filter(|p| !p.state.is_open())
            .take(RECENT_PLANS)
            .cloned(),
    );
    listed
}

fn replica(engine: &Engine, spec: &ReplicaSpec, state: &ReplicaState) -> ReplicaStatus {
    let now = engine.now;
    let probe = state.last_probe.as_ref();
    let probe_reason = probe.and_then(|p| p.reason.clone());
    let (role, reason) = if let Some(why) = &state.failed {
        (ReplicaRole::Failed, Some(why.clone()))
    } else if state.intent == Intent::Stopped {
        (
            ReplicaRole::Stopped,
            Some("stopped by a plan's fence step".to_owned()),
        )
    } else if state.health.is_up() {
        let role = match probe.and_then(|p| p.role) {
            Some(ServingRole::Active | ServingRole::Single) => ReplicaRole::Active,
            Some(ServingRole::Passive) => ReplicaRole::Passive,
            None if probe.is_some_and(|p| p.ready) => ReplicaRole::Active,
            None => ReplicaRole::Passive,
        };
        (role, probe_reason)
    } else if state.intent == Intent::Idle && state.pid.is_none() {
        (
            ReplicaRole::Cold,
            Some("cold standby, not running".to_owned()),
        )
    } else if state.starting(now, comeback_grace(&engine.settings)) {
        (ReplicaRole::Starting, Some("starting".to_owned()))
    } else if let Some(due) = state.restart_due {
        let why = match &state.unstartable {
            Some(error) => format!("restart due at {due}; the last start failed: {error}"),
            None => format!("restart due at {due}"),
        };
        (ReplicaRole::Down, Some(why))
    } else if state.health.verdict == Verdict::Unknown {
        (ReplicaRole::Starting, Some("no verdict yet".to_owned()))
    } else if state.pid.is_some() {
        (
            ReplicaRole::Down,
            Some(format!(
                "its process runs but does not answer ({}); the replica lease fails it over",
                probe_reason.unwrap_or_else(|| "no probe answer".to_owned())
            )),
        )
    } else {
        (ReplicaRole::Down, probe_reason)
    };
    ReplicaStatus {
        name: spec.name.clone(),
        node: spec.node.clone(),
        kind: spec.kind,
        temperature: spec.temperature,
        role,
        ready: probe.is_some_and(|p| p.ready) && state.health.is_up(),
        reason,
        restarts: state.restarts_total,
        pid: state.pid,
    }
}
