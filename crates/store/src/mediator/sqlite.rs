//! The mediator's bulk writes on SQLite: multi-row `VALUES` and `IN (...)` lists, chunked
//! below SQLite's limit on bound parameters, added to the transaction's [`Script`].

use meridian_core::Timestamp;
use sqlx::Sqlite;

use super::ApplyPlan;
use crate::pool::Script;

/// Rows per multi-row statement: at most four bound parameters each, far below SQLite's limit.
const ROWS_PER_STATEMENT: usize = 500;

pub(super) fn insert_plan<'args>(script: &mut Script<'args, Sqlite>, plan: &'args ApplyPlan<'_>) {
    script.chunked(
        "INSERT INTO mediator_requests (request_id, deadline, informee) ",
        &plan.requests,
        ROWS_PER_STATEMENT,
        |mut row, (id, deadline, informee)| {
            row.push_bind(id.as_i64())
                .push_bind(deadline.as_i64())
                .push_bind(*informee);
        },
        "",
    );
    script.chunked(
        "INSERT INTO mediator_responses (request_id, participant, response) ",
        &plan.responses,
        ROWS_PER_STATEMENT,
        |mut row, (id, participant, response)| {
            row.push_bind(id.as_i64())
                .push_bind(participant.as_str())
                .push_bind(*response);
        },
        "",
    );
    script.chunked(
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
    );
}

/// `statement` (ending in `WHERE request_id`) for every id in `ids`, in `IN (VALUES ...)`
/// lists of at most [`ROWS_PER_STATEMENT`] ids.
pub(super) fn for_ids<'args>(
    script: &mut Script<'args, Sqlite>,
    statement: &str,
    ids: &'args [Timestamp],
) {
    script.chunked(
        &format!("{statement} IN ("),
        ids,
        ROWS_PER_STATEMENT,
        |mut row, id| {
            row.push_bind(id.as_i64());
        },
        ")",
    );
}
