//! The mediator's bulk inserts on SQLite: multi-row `VALUES`, chunked below SQLite's limit on
//! bound parameters.

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::ApplyPlan;
use crate::StoreError;

/// Rows per multi-row statement: at most four bound parameters each, far below SQLite's limit.
const ROWS_PER_STATEMENT: usize = 500;

pub(super) async fn insert_plan(
    connection: &mut SqliteConnection,
    plan: &ApplyPlan<'_>,
) -> Result<(), StoreError> {
    for chunk in plan.requests.chunks(ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO mediator_requests (request_id, deadline, informee) ",
        );
        insert.push_values(chunk, |mut row, (id, deadline, informee)| {
            row.push_bind(id.as_i64())
                .push_bind(deadline.as_i64())
                .push_bind(*informee);
        });
        insert.build().execute(&mut *connection).await?;
    }
    for chunk in plan.responses.chunks(ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO mediator_responses (request_id, participant, response) ",
        );
        insert.push_values(chunk, |mut row, (id, participant, response)| {
            row.push_bind(id.as_i64())
                .push_bind(participant.as_str())
                .push_bind(*response);
        });
        insert.build().execute(&mut *connection).await?;
    }
    for chunk in plan.verdicts.chunks(ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO mediator_verdicts (request_id, recipients, verdict, sent) ",
        );
        insert.push_values(chunk, |mut row, (id, recipients, verdict)| {
            row.push_bind(id.as_i64())
                .push_bind(recipients.as_str())
                .push_bind(*verdict)
                .push_bind(false);
        });
        insert.build().execute(&mut *connection).await?;
    }
    Ok(())
}
