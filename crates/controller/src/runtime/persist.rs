//! What the runtime persists and how: plans and audit records as the JSON bodies the
//! controller store keeps (`meridian_store::controller`, which knows nothing of the
//! controller's types), both ways. A body that does not parse back is an error naming the
//! plan or the record, never a panic: the store is disk.

use meridian_core::Timestamp;

use crate::api::{AuditKind, AuditRecord};
use crate::engine::Restored;
use crate::plan::Plan;

pub use meridian_store::controller::{
    ControllerBatch, ControllerStore, NewAuditRecord, StoredAuditRecord, StoredPlan,
};

/// How many audit records a controller taking over reads back: the engine's hourly cap and
/// cooldown need the last hour (the store caps one read at 1000).
pub const RESTORED_AUDIT: u32 = 1_000;

/// The store's row of `plan`, stamped `now`.
pub fn stored_plan(plan: &Plan, now: Timestamp) -> anyhow::Result<StoredPlan> {
    Ok(StoredPlan {
        id: plan.id.to_string(),
        state: plan.state.name().to_owned(),
        body_json: serde_json::to_string(plan)?,
        updated_at: now,
    })
}

/// The name of an audit kind as the store's `kind` column holds it (the JSON name).
pub fn kind_name(kind: AuditKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{kind:?}"))
}

pub fn new_audit(record: &AuditRecord) -> anyhow::Result<NewAuditRecord> {
    Ok(NewAuditRecord {
        at: record.at,
        kind: kind_name(record.kind),
        plan: record.plan.as_ref().map(ToString::to_string),
        body_json: serde_json::to_string(record)?,
    })
}

/// A stored record back as the API's, with the sequence number the store gave it.
pub fn audit_record(stored: &StoredAuditRecord) -> anyhow::Result<AuditRecord> {
    let mut record: AuditRecord = serde_json::from_str(&stored.body_json).map_err(|error| {
        anyhow::anyhow!(
            "audit record {} in the controller store does not parse: {error}",
            stored.seq
        )
    })?;
    record.seq = stored.seq;
    Ok(record)
}

pub fn plan(stored: &StoredPlan) -> anyhow::Result<Plan> {
    serde_json::from_str(&stored.body_json).map_err(|error| {
        anyhow::anyhow!(
            "plan {} in the controller store does not parse: {error}",
            stored.id
        )
    })
}

/// Everything a controller taking over needs from the store: every plan and the latest
/// audit records.
pub async fn restore<S: ControllerStore + ?Sized>(store: &S) -> anyhow::Result<Restored> {
    let plans = store
        .plans()
        .await?
        .iter()
        .map(plan)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let recent_audit = store
        .audit_latest(RESTORED_AUDIT)
        .await?
        .iter()
        .map(audit_record)
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Restored {
        plans,
        recent_audit,
    })
}

#[cfg(test)]
mod tests {
    use meridian_core::placement::RegionName;

    use super::*;
    use crate::plan::{Actor, PlanId, PlanKind, PlanState};

    #[test]
    fn plans_and_records_round_trip_through_their_bodies() {
        let plan = Plan {
            id: PlanId::numbered(3),
            kind: PlanKind::Switchover,
            from_region: RegionName::from("region-1"),
            to_region: RegionName::from("region-2"),
            components: Vec::new(),
            proposed_by: Actor::Operator("ops".into()),
            created_at: Timestamp::from_micros(1),
            expires_at: Timestamp::from_micros(2),
            data_loss: None,
            steps: Vec::new(),
            state: PlanState::AwaitingApproval,
        };
        let stored = stored_plan(&plan, Timestamp::from_micros(5)).expect("serializes");
        assert_eq!(stored.id, "plan-3");
        assert_eq!(stored.state, "awaiting-approval");
        assert_eq!(super::plan(&stored).expect("parses"), plan);

        let record = AuditRecord {
            seq: 0,
            at: Timestamp::from_micros(7),
            kind: AuditKind::PlanProposed,
            actor: Actor::Controller,
            plan: Some(PlanId::numbered(3)),
            step: None,
            replica: None,
            region: None,
            detail: "proposed".into(),
        };
        let new = new_audit(&record).expect("serializes");
        assert_eq!(new.kind, "plan-proposed");
        assert_eq!(new.plan.as_deref(), Some("plan-3"));
        let back = audit_record(&StoredAuditRecord {
            seq: 42,
            at: new.at,
            kind: new.kind,
            plan: new.plan,
            body_json: new.body_json,
        })
        .expect("parses");
        assert_eq!(back, AuditRecord { seq: 42, ..record });
    }

    #[test]
    fn a_body_that_does_not_parse_is_an_error_naming_it() {
        let error = plan(&StoredPlan {
            id: "plan-9".into(),
            state: "running".into(),
            body_json: "{".into(),
            updated_at: Timestamp::from_micros(1),
        })
        .expect_err("corrupt");
        assert!(error.to_string().contains("plan-9"), "{error}");
    }
}
