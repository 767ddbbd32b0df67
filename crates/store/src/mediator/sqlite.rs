//! The mediator's bulk writes on SQLite: multi-row `VALUES` and `IN (...)` lists, chunked
//! below SQLite's limit on bound parameters.

use meridian_core::Timestamp;
use sqlx::SqliteConnection;

use super::ApplyPlan;
use crate::pool::ExecuteChunked;
use crate::StoreError;

/// Rows per multi-row statement: at most four bound parameters each, far below SQLite's limit.
const ROWS_PER_STATEMENT: usize = 500;

pub(super) async fn insert_plan(
    connection: &mut SqliteConnection,
    plan: &ApplyPlan<'_>,
) -> Result<(), StoreError> {
    connection
        .execute_chunked(
            "INSERT INTO mediator_requests (request_id, deadline, informee) ",
            &plan.requests,
            ROWS_PER_STATEMENT,
            |mut row, (id, deadline, informee)| {
                row.push_bind(id.as_i64())
                    .push_bind(deadline.as_i64())
                    .push_bind(*informee);
            },
            "",
        )
        .await?;
    connection
        .execute_chunked(
            "INSERT INTO mediator_responses (request_id, participant, response) ",
            &plan.responses,
            ROWS_PER_STATEMENT,
            |mut row, (id, participant, response)| {
                row.push_bind(id.as_i64())
                    .push_bind(participant.as_str())
                    .push_bind(*response);
            },
            "",
        )
        .await?;
    connection
        .execute_chunked(
            "INSERT INTO mediator_verdicts (request_id, recipients, verdict, sent) ",
            &plan.verdicts,
            ROWS_PER_STATEMENT,
            |mut row, (id, recipients, verdict)| {
                row.push_bind(id.as_i64())
                    .push_bind(recipients.as_str())
                    .push_bind(*verdict)
                    .push_bind(false);
            },
            "",
        )
        .await
}

/// `statement` (ending in `WHERE request_id`) for every id in `ids`, in `IN (VALUES ...)`
/// lists of at most [`ROWS_PER_STATEMENT`] ids.
pub(super) async fn execute_for_ids(
    connection: &mut SqliteConnection,
    statement: &str,
    ids: &[Timestamp],
) -> Result<(), StoreError> {
    connection
        .execute_chunked(
            &format!("{statement} IN ("),
            ids,
            ROWS_PER_STATEMENT,
            |mut row, id| {
                row.push_bind(id.as_i64());
            },
            ")",
        )
        .await
}
