//! Row encoding and decoding for the participant store, shared by both backends. Party sets,
//! payloads and transaction trees are JSON text columns: the participant never queries inside
//! them, and JSON keeps the rows readable for operators. Anything that does not decode is
//! [`StoreError::Corrupt`] naming the table, never a panic.

use std::collections::BTreeSet;

use meridian_core::ledger::{Contract, Transaction};
use meridian_core::{
    CommandId, ContractId, LedgerOffset, PartyId, TemplateId, Timestamp, TransactionId, UserId,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::participant::{
    CompletionRecord, DedupRecord, DedupState, StoredContract, TransactionRecord,
};
use crate::StoreError;

pub(crate) type ContractRow = (String, String, String, String, String, i64, Option<i64>);
pub(crate) type TransactionRow = (
    i64,
    String,
    i64,
    Option<String>,
    Option<String>,
    String,
    String,
    Option<i64>,
);
pub(crate) type CompletionRow = (
    i64,
    String,
    String,
    String,
    String,
    i64,
    String,
    Option<String>,
    i64,
);
pub(crate) type DedupRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

pub(crate) const IN_FLIGHT: &str = "in_flight";
pub(crate) const COMMITTED: &str = "committed";

fn to_json<T: Serialize>(value: &T, table: &'static str) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::corrupt(table, format!("cannot encode: {e}")))
}

fn from_json<T: DeserializeOwned>(
    text: &str,
    table: &'static str,
    what: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::corrupt(table, format!("{what}: {e}")))
}

fn id<T, E: std::fmt::Display>(
    parsed: Result<T, E>,
    table: &'static str,
    what: &str,
) -> Result<T, StoreError> {
    parsed.map_err(|e| StoreError::corrupt(table, format!("{what}: {e}")))
}

/// Offsets are `BIGINT` columns; every offset we assign fits.
pub(crate) fn offset_column(offset: LedgerOffset) -> Result<i64, StoreError> {
    i64::try_from(offset.0).map_err(|_| {
        StoreError::Database(sqlx::Error::Encode(
            format!("ledger offset {offset} does not fit a BIGINT").into(),
        ))
    })
}

pub(crate) fn offset(value: i64, table: &'static str) -> Result<LedgerOffset, StoreError> {
    u64::try_from(value)
        .map(LedgerOffset)
        .map_err(|_| StoreError::corrupt(table, format!("negative ledger offset {value}")))
}

pub(crate) fn contract_row(stored: &StoredContract) -> Result<ContractRow, StoreError> {
    const T: &str = "participant_contracts";
    let c = &stored.contract;
    Ok((
        c.id.to_string(),
        c.template.to_string(),
        to_json(&c.payload, T)?,
        to_json(&c.signatories, T)?,
        to_json(&c.observers, T)?,
        offset_column(stored.created_offset)?,
        stored.archived_offset.map(offset_column).transpose()?,
    ))
}

pub(crate) fn stored_contract(row: ContractRow) -> Result<StoredContract, StoreError> {
    const T: &str = "participant_contracts";
    let (contract_id, template, payload, signatories, observers, created, archived) = row;
    let what = format!("contract {contract_id}");
    Ok(StoredContract {
        contract: Contract {
            id: id(ContractId::new(contract_id.clone()), T, &what)?,
            template: id(TemplateId::new(template), T, &what)?,
            payload: from_json(&payload, T, &what)?,
            signatories: from_json(&signatories, T, &what)?,
            observers: from_json(&observers, T, &what)?,
        },
        created_offset: offset(created, T)?,
        archived_offset: archived.map(|a| offset(a, T)).transpose()?,
    })
}

pub(crate) fn transaction_row(record: &TransactionRecord) -> Result<TransactionRow, StoreError> {
    const T: &str = "participant_transactions";
    Ok((
        offset_column(record.offset)?,
        record.transaction_id.to_string(),
        record.request_id.as_i64(),
        record.user_id.as_ref().map(ToString::to_string),
        record.command_id.as_ref().map(ToString::to_string),
        to_json(&record.informees, T)?,
        to_json(&record.transaction, T)?,
        Some(record.committed_at.as_i64()),
    ))
}

pub(crate) fn transaction_record(row: TransactionRow) -> Result<TransactionRecord, StoreError> {
    const T: &str = "participant_transactions";
    let (offset_value, transaction_id, request_id, user_id, command_id, informees, tree, committed) =
        row;
    let what = format!("transaction at offset {offset_value}");
    let informees: BTreeSet<PartyId> = from_json(&informees, T, &what)?;
    let transaction: Transaction = from_json(&tree, T, &what)?;
    Ok(TransactionRecord {
        offset: offset(offset_value, T)?,
        transaction_id: id(TransactionId::new(transaction_id), T, &what)?,
        request_id: Timestamp::from_i64(request_id),
        // Rows from before the column: the request time is the closest known bound.
        committed_at: Timestamp::from_i64(committed.unwrap_or(request_id)),
        user_id: user_id.map(|u| id(UserId::new(u), T, &what)).transpose()?,
        command_id: command_id
            .map(|c| id(CommandId::new(c), T, &what))
            .transpose()?,
        informees,
        transaction,
    })
}

pub(crate) fn completion_row(record: &CompletionRecord) -> Result<CompletionRow, StoreError> {
    const T: &str = "participant_completions";
    Ok((
        offset_column(record.offset)?,
        record.user_id.to_string(),
        record.command_id.to_string(),
        to_json(&record.act_as, T)?,
        record.submission_id.clone(),
        i64::from(record.status_code),
        record.message.clone(),
        record.transaction_id.as_ref().map(ToString::to_string),
        record.record_time.as_i64(),
    ))
}

pub(crate) fn completion_record(row: CompletionRow) -> Result<CompletionRecord, StoreError> {
    const T: &str = "participant_completions";
    let (
        offset_value,
        user_id,
        command_id,
        act_as,
        submission_id,
        status_code,
        message,
        transaction_id,
        record_time,
    ) = row;
    let what = format!("completion at offset {offset_value}");
    Ok(CompletionRecord {
        offset: offset(offset_value, T)?,
        user_id: id(UserId::new(user_id), T, &what)?,
        command_id: id(CommandId::new(command_id), T, &what)?,
        act_as: from_json(&act_as, T, &what)?,
        submission_id,
        status_code: id(i32::try_from(status_code), T, &what)?,
        message,
        transaction_id: transaction_id
            .map(|t| id(TransactionId::new(t), T, &what))
            .transpose()?,
        record_time: Timestamp::from_i64(record_time),
    })
}

pub(crate) fn dedup_row(record: &DedupRecord) -> DedupRow {
    let act_as = serde_json::to_string(&record.act_as).unwrap_or_else(|_| "[]".to_owned());
    let period = i64::try_from(record.dedup_period_us).unwrap_or(i64::MAX);
    let (state, transaction_id, ledger_offset, expires_at) = match &record.state {
        DedupState::InFlight => (IN_FLIGHT, None, None, None),
        DedupState::Committed {
            transaction_id,
            offset,
            expires_at,
        } => (
            COMMITTED,
            Some(transaction_id.to_string()),
            Some(i64::try_from(offset.0).unwrap_or(i64::MAX)),
            Some(expires_at.as_i64()),
        ),
    };
    (
        record.change_key.clone(),
        record.user_id.to_string(),
        record.command_id.to_string(),
        act_as,
        record.submission_id.clone(),
        state.to_owned(),
        record.max_sequencing_time.as_i64(),
        period,
        transaction_id,
        ledger_offset,
        expires_at,
    )
}

pub(crate) fn dedup_record(row: DedupRow) -> Result<DedupRecord, StoreError> {
    const T: &str = "participant_dedup";
    let (
        change_key,
        user_id,
        command_id,
        act_as,
        submission_id,
        state,
        max_sequencing_time,
        period,
        transaction_id,
        ledger_offset,
        expires_at,
    ) = row;
    let what = format!("change {change_key}");
    let state = match (state.as_str(), transaction_id, ledger_offset, expires_at) {
        (IN_FLIGHT, _, _, _) => DedupState::InFlight,
        (COMMITTED, Some(transaction_id), Some(ledger_offset), Some(expires_at)) => {
            DedupState::Committed {
                transaction_id: id(TransactionId::new(transaction_id), T, &what)?,
                offset: offset(ledger_offset, T)?,
                expires_at: Timestamp::from_i64(expires_at),
            }
        }
        (other, ..) => {
            return Err(StoreError::corrupt(
                T,
                format!("{what}: state {other:?} with missing or unknown columns"),
            ))
        }
    };
    Ok(DedupRecord {
        user_id: id(UserId::new(user_id), T, &what)?,
        command_id: id(CommandId::new(command_id), T, &what)?,
        act_as: from_json(&act_as, T, &what)?,
        submission_id,
        max_sequencing_time: Timestamp::from_i64(max_sequencing_time),
        dedup_period_us: u64::try_from(period).unwrap_or(0),
        state,
        change_key,
    })
}
