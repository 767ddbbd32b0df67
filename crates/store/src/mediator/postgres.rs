//! The mediator's bulk writes on PostgreSQL: one `INSERT ... SELECT FROM UNNEST(arrays)` per
//! table and one `... = ANY(array)` per id list, so a run of a thousand events costs a handful
//! of round trips, each a statement of fixed text that the connection prepares once.

use meridian_core::Timestamp;
use sqlx::PgConnection;

use super::ApplyPlan;
use crate::StoreError;

pub(super) async fn insert_plan(
    connection: &mut PgConnection,
    plan: &ApplyPlan<'_>,
) -> Result<(), StoreError> {
    if !plan.requests.is_empty() {
        let ids: Vec<i64> = plan.requests.iter().map(|r| r.0.as_i64()).collect();
        let deadlines: Vec<i64> = plan.requests.iter().map(|r| r.1.as_i64()).collect();
        let informees: Vec<&str> = plan.requests.iter().map(|r| r.2).collect();
        sqlx::query(
            "INSERT INTO mediator_requests (request_id, deadline, informee) \
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[])",
        )
        .bind(&ids)
        .bind(&deadlines)
        .bind(&informees)
        .execute(&mut *connection)
        .await?;
    }
    if !plan.responses.is_empty() {
        let ids: Vec<i64> = plan.responses.iter().map(|r| r.0.as_i64()).collect();
        let participants: Vec<&str> = plan.responses.iter().map(|r| r.1.as_str()).collect();
        let responses: Vec<&str> = plan.responses.iter().map(|r| r.2).collect();
        sqlx::query(
            "INSERT INTO mediator_responses (request_id, participant, response) \
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[])",
        )
        .bind(&ids)
        .bind(&participants)
        .bind(&responses)
        .execute(&mut *connection)
        .await?;
    }
    if !plan.verdicts.is_empty() {
        let ids: Vec<i64> = plan.verdicts.iter().map(|v| v.0.as_i64()).collect();
        let recipients: Vec<&str> = plan.verdicts.iter().map(|v| v.1.as_str()).collect();
        let verdicts: Vec<&str> = plan.verdicts.iter().map(|v| v.2).collect();
        sqlx::query(
            "INSERT INTO mediator_verdicts (request_id, recipients, verdict, sent) \
             SELECT id, recipients, verdict, false \
             FROM UNNEST($1::bigint[], $2::text[], $3::text[]) AS u(id, recipients, verdict)",
        )
        .bind(&ids)
        .bind(&recipients)
        .bind(&verdicts)
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

/// `statement` (ending in `WHERE request_id`) for every id in `ids`, as one statement whose
/// text does not depend on how many ids there are.
pub(super) async fn execute_for_ids(
    connection: &mut PgConnection,
    statement: &str,
    ids: &[Timestamp],
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = ids.iter().map(|id| id.as_i64()).collect();
    sqlx::query(&format!("{statement} = ANY($1)"))
        .bind(&ids)
        .execute(connection)
        .await?;
    Ok(())
}
