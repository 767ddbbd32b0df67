//! A participant on a fork of the sequencer's history (see `meridian_node::fork` for the
//! alarm): what it records, which of its transactions the new history lacks, and the
//! operator's repair that rewinds it to a point both histories share.
//!
//! A transaction is lost exactly when the verdict that committed it lies after the fork point
//! (the last event both histories share): its request may be older, but without the verdict
//! the new history never committed it. The repair rewinds to a *quiet point* — a recorded
//! batch boundary at or before the fork point with no request awaiting its verdict — because
//! the participant's state there is exactly its rows up to that ledger end; it then replays the
//! new history from there, so nothing is guessed. Sans-I/O parts (the lost list, the repair's
//! checks) are plain functions, tested below.

use std::path::Path;

use anyhow::{bail, Context};
use meridian_core::sequencing::{ForkError, ForkPoint};
use meridian_core::Timestamp;
use meridian_store::{ForkRecord, ParticipantStore, QuietPoint, RewindOutcome, TransactionRecord};
use serde::Serialize;
use serde_json::{json, Value};

/// At most this many lost transactions are listed (in `/status` and in the repair's file);
/// an asynchronous standby loses milliseconds of commits, far fewer.
pub const MAX_LISTED: u32 = 10_000;

/// One committed transaction the new history lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LostTransaction {
    pub offset: u64,
    pub transaction_id: String,
    /// Set when this participant submitted it: the command an application resubmits.
    pub user_id: Option<String>,
    pub command_id: Option<String>,
    pub record_time_us: u64,
    pub committed_at_us: u64,
}

/// The transactions of `records` that a fork at `fork_point` loses (`None`: the histories
/// share no event, every commit is lost), in offset order.
pub fn lost_transactions<'a>(
    fork_point: Option<Timestamp>,
    records: impl IntoIterator<Item = &'a TransactionRecord>,
) -> Vec<LostTransaction> {
    let mut lost: Vec<LostTransaction> = records
        .into_iter()
        .filter(|record| fork_point.is_none_or(|point| record.committed_at > point))
        .map(|record| LostTransaction {
            offset: record.offset.0,
            transaction_id: record.transaction_id.to_string(),
            user_id: record.user_id.as_ref().map(ToString::to_string),
            command_id: record.command_id.as_ref().map(ToString::to_string),
            record_time_us: record.request_id.as_micros(),
            committed_at_us: record.committed_at.as_micros(),
        })
        .collect();
    lost.sort_by_key(|l| l.offset);
    lost
}

/// The record of a detected fork.
pub fn fork_record(fork: &ForkError, detected_at: Timestamp) -> ForkRecord {
    ForkRecord {
        last_processed: fork.last_processed(),
        fork_point: match fork.fork_point() {
            ForkPoint::Shared(point) => Some(point),
            ForkPoint::Unknown => None,
        },
        detected_at,
        reason: fork.to_string(),
    }
}

/// The list for `/status`: the lost transactions and whether the list is complete.
async fn listed(
    store: &dyn ParticipantStore,
    fork_point: Option<Timestamp>,
) -> anyhow::Result<(Vec<LostTransaction>, bool)> {
    let records = store
        .transactions_committed_after(fork_point, MAX_LISTED + 1)
        .await?;
    let complete = records.len() <= MAX_LISTED as usize;
    let mut lost = lost_transactions(fork_point, &records);
    lost.truncate(MAX_LISTED as usize);
    Ok((lost, complete))
}

/// Records the fork in the store (so that the repair finds it after a restart) and lists the
/// lost transactions: the details `/status` shows beside the alarm. Failures are part of the
/// details, never a reason to continue processing.
pub async fn on_fork(store: &dyn ParticipantStore, fork: &ForkError) -> Value {
    let record = fork_record(fork, Timestamp::now());
    if let Err(error) = store.record_fork(&record).await {
        tracing::error!(%error, "cannot record the fork in the store; the repair will refuse until it is recorded");
    }
    let Some(fork_point) = record.fork_point else {
        return json!({ "lost_transactions": null, "lost_error": "the fork point is unknown" });
    };
    match listed(store, fork_point).await {
        Ok((lost, complete)) => {
            for transaction in &lost {
                tracing::error!(
                    offset = transaction.offset,
                    transaction_id = %transaction.transaction_id,
                    command_id = ?transaction.command_id,
                    "FORK: committed here, missing from the sequencer's history"
                );
            }
            json!({ "lost_transactions": lost, "lost_list_complete": complete })
        }
        Err(error) => json!({ "lost_transactions": null, "lost_error": error.to_string() }),
    }
}

/// What the repair did (also the content of the file it saves first, with `outcome` empty).
#[derive(Debug, Clone, Serialize)]
pub struct RepairReport {
    pub fork_reason: String,
    pub last_processed_us: Option<u64>,
    pub fork_point_us: Option<u64>,
    pub rewound_to_us: u64,
    pub rewound_to_ledger_end: u64,
    pub lost_transactions: Vec<LostTransaction>,
    pub outcome: Option<RewindOutcome>,
}

/// Checks that a repair can run on what the store recorded: a fork with a known fork point
/// that the histories share, and a quiet point at or before it. Changes nothing.
pub fn plan_repair(
    fork: Option<&ForkRecord>,
    quiet: Option<QuietPoint>,
) -> anyhow::Result<(Timestamp, QuietPoint)> {
    let Some(fork) = fork else {
        bail!(
            "no fork is recorded in this participant's database: nothing to repair (a \
             participant records the fork it detects; rewinding without one would discard \
             valid state)"
        );
    };
    let Some(point) = fork.fork_point else {
        bail!(
            "the recorded fork has no known fork point ({}); rewinding cannot be planned",
            fork.reason
        );
    };
    let Some(point) = point else {
        bail!(
            "the sequencer's history shares no event with this participant's: there is no \
             point to rewind to; give the participant a fresh database instead"
        );
    };
    let Some(quiet) = quiet else {
        bail!(
            "no quiet point (a batch boundary with nothing pending) is recorded at or before \
             the fork point {point}; the participant cannot be rewound"
        );
    };
    if quiet.checkpoint > point {
        bail!(
            "the quiet point {} lies after the fork point {point}",
            quiet.checkpoint
        );
    }
    Ok((point, quiet))
}

/// The operator's repair of a stopped participant: checks the recorded fork, saves the lost
/// transactions to `save_to` (a new file) before changing anything, then rewinds the store in
/// one transaction. On the next start the participant resubscribes from the quiet point and
/// replays the new history.
pub async fn repair(store: &dyn ParticipantStore, save_to: &Path) -> anyhow::Result<RepairReport> {
    let fork = store.fork().await?;
    let quiet = match fork.as_ref().and_then(|f| f.fork_point).flatten() {
        Some(point) => store.quiet_point_at_or_before(point).await?,
        None => None,
    };
    let (point, quiet) = plan_repair(fork.as_ref(), quiet)?;
    let fork = fork.expect("plan_repair refuses without a recorded fork");
    let (lost, complete) = listed(store, Some(point)).await?;
    if !complete {
        bail!(
            "over {MAX_LISTED} transactions would be lost; refusing to rewind that far \
             automatically"
        );
    }
    let mut report = RepairReport {
        fork_reason: fork.reason.clone(),
        last_processed_us: fork.last_processed.map(Timestamp::as_micros),
        fork_point_us: Some(point.as_micros()),
        rewound_to_us: quiet.checkpoint.as_micros(),
        rewound_to_ledger_end: quiet.ledger_end.0,
        lost_transactions: lost,
        outcome: None,
    };
    save(&report, save_to)?;
    report.outcome = Some(store.rewind(quiet, Some(point)).await?);
    Ok(report)
}

/// Writes the report to a new file: an existing one (an earlier repair's list) is never
/// overwritten.
fn save(report: &RepairReport, path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(report).context("encoding the lost transactions")?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_core::ledger::Transaction;
    use meridian_core::{LedgerOffset, TransactionId};

    fn ts(micros: u64) -> Timestamp {
        Timestamp::from_micros(micros)
    }

    fn record(offset: u64, request: u64, verdict: u64) -> TransactionRecord {
        TransactionRecord {
            offset: LedgerOffset(offset),
            transaction_id: TransactionId::new(format!("tx-{offset}")).expect("valid id"),
            request_id: ts(request),
            committed_at: ts(verdict),
            user_id: None,
            command_id: None,
            informees: Default::default(),
            transaction: Transaction::default(),
        }
    }

    #[test]
    fn a_commit_is_lost_when_its_verdict_follows_the_fork_point() {
        let records = [
            record(1, 10, 12),
            // Requested before the fork point, committed after it: lost too.
            record(2, 15, 25),
            record(3, 30, 32),
        ];
        let lost = lost_transactions(Some(ts(20)), &records);
        let offsets: Vec<u64> = lost.iter().map(|l| l.offset).collect();
        assert_eq!(offsets, vec![2, 3]);
        assert_eq!(lost[0].record_time_us, 15);
        assert_eq!(lost[0].committed_at_us, 25);
        // On the fork point itself: shared, not lost.
        assert!(lost_transactions(Some(ts(32)), &records).is_empty());
        // Nothing shared: everything is lost.
        assert_eq!(lost_transactions(None, &records).len(), 3);
    }

    #[test]
    fn the_repair_refuses_without_a_usable_fork() {
        let quiet = QuietPoint {
            checkpoint: ts(18),
            ledger_end: LedgerOffset(1),
        };
        let error = plan_repair(None, Some(quiet)).unwrap_err().to_string();
        assert!(error.contains("no fork is recorded"), "{error}");
        let mut fork = ForkRecord {
            last_processed: Some(ts(40)),
            fork_point: None,
            detected_at: ts(50),
            reason: "fork".into(),
        };
        assert!(plan_repair(Some(&fork), Some(quiet)).is_err());
        fork.fork_point = Some(None);
        assert!(plan_repair(Some(&fork), Some(quiet)).is_err());
        fork.fork_point = Some(Some(ts(20)));
        assert!(plan_repair(Some(&fork), None).is_err());
        let late = QuietPoint {
            checkpoint: ts(21),
            ..quiet
        };
        assert!(plan_repair(Some(&fork), Some(late)).is_err());
        assert_eq!(
            plan_repair(Some(&fork), Some(quiet)).unwrap(),
            (ts(20), quiet)
        );
    }

    #[test]
    fn the_record_keeps_the_fork_point() {
        let fork = ForkError::UnknownLastEvent {
            last_processed: ts(30),
            last_shared: Some(ts(20)),
            sequencer_latest: Some(ts(50)),
        };
        let record = fork_record(&fork, ts(60));
        assert_eq!(record.fork_point, Some(Some(ts(20))));
        assert_eq!(record.last_processed, Some(ts(30)));
    }
}
