//! The mediator's bulk writes on PostgreSQL: one `INSERT ... SELECT FROM UNNEST(arrays)` per
//! table and one `... = ANY(array)` per id list, so a run of a thousand events costs a handful
//! of round trips, each a statement of fixed text that the connection prepares once.

use meridian_core::Timestamp;
use sqlx::Postgres;

use super::ApplyPlan;
use crate::pool::Script;

pub(super) fn insert_plan<'args>(script: &mut Script<'args, Postgres>, plan: &'args ApplyPlan<'_>) {
    if !plan.requests.is_empty() {
        let ids: Vec<i64> = plan.requests.iter().map(|r| r.0.as_i64()).collect();
        let deadlines: Vec<i64> = plan.requests.iter().map(|r| r.1.as_i64()).collect();
        let informees: Vec<&str> = plan.requests.iter().map(|r| r.2).collect();
        script
            .statement("INSERT INTO mediator_requests (request_id, deadline, informee) SELECT * FROM UNNEST(")
            .push_bind(ids)
            .push("::bigint[], ")
            .push_bind(deadlines)
            .push("::bigint[], ")
            .push_bind(informees)
            .push("::text[])");
    }
    if !plan.responses.is_empty() {
        let ids: Vec<i64> = plan.responses.iter().map(|r| r.0.as_i64()).collect();
        let participants: Vec<&str> = plan.responses.iter().map(|r| r.1.as_str()).collect();
        let responses: Vec<&str> = plan.responses.iter().map(|r| r.2).collect();
        script
            .statement("INSERT INTO mediator_responses (request_id, participant, response) SELECT * FROM UNNEST(")
            .push_bind(ids)
            .push("::bigint[], ")
            .push_bind(participants)
            .push("::text[], ")
            .push_bind(responses)
            .push("::text[])");
    }
    if !plan.verdicts.is_empty() {
        let ids: Vec<i64> = plan.verdicts.iter().map(|v| v.0.as_i64()).collect();
        let recipients: Vec<&str> = plan.verdicts.iter().map(|v| v.1.as_str()).collect();
        let verdicts: Vec<&str> = plan.verdicts.iter().map(|v| v.2).collect();
        script
            .statement(
                "INSERT INTO mediator_verdicts (request_id, recipients, verdict, sent) \
                 SELECT id, recipients, verdict, false FROM UNNEST(",
            )
            .push_bind(ids)
            .push("::bigint[], ")
            .push_bind(recipients)
            .push("::text[], ")
            .push_bind(verdicts)
            .push("::text[]) AS u(id, recipients, verdict)");
    }
}

/// `statement` (ending in `WHERE request_id`) for every id in `ids`, as one statement whose
/// text does not depend on how many ids there are.
pub(super) fn for_ids<'args>(
    script: &mut Script<'args, Postgres>,
    statement: &str,
    ids: &'args [Timestamp],
) {
    if ids.is_empty() {
        return;
    }
    let ids: Vec<i64> = ids.iter().map(|id| id.as_i64()).collect();
    script
        .statement(&format!("{statement} = ANY("))
        .push_bind(ids)
        .push(")");
}
