//! Logic both sequencer store backends share and that needs no database: deduplication within
//! one `write_events` call, assembling its results, the statements both backends write alike,
//! and turning raw column values into domain types. Rows are decoded here so that bad data becomes [`StoreError::Corrupt`] in exactly the
//! same way on SQLite and PostgreSQL, never a panic.

use std::collections::HashMap;

use meridian_core::crypto::PublicKey;
use meridian_core::{InstanceIndex, MemberId, MessageId, Timestamp};

use sqlx::{Database, Encode, QueryBuilder, Type};

use super::{
    Committed, Incarnation, InstanceClaim, InstanceState, MemberRecord, MemberSeq, NewEvent,
    RoutedEvent, StoredEvent, WriteResult,
};
use crate::pool;
use crate::StoreError;

/// How one `write_events` call splits into first occurrences of each (sender, message_id) and
/// repeats of an earlier event in the same call.
pub(crate) struct WritePlan {
    /// Indexes of the events whose (sender, message_id) is the first of its kind in the call, in
    /// input order. Only these are checked against the table.
    pub firsts: Vec<usize>,
    /// For every event, the position in `firsts` of the first event with its key.
    first_of: Vec<usize>,
}

impl WritePlan {
    pub fn new(events: &[NewEvent]) -> Self {
        let mut seen: HashMap<(i64, &str), usize> = HashMap::with_capacity(events.len());
        let mut firsts = Vec::with_capacity(events.len());
        let first_of = events
            .iter()
            .enumerate()
            .map(|(i, event)| {
                *seen
                    .entry((event.sender.0, event.message_id.as_str()))
                    .or_insert_with(|| {
                        firsts.push(i);
                        firsts.len() - 1
                    })
            })
            .collect();
        Self { firsts, first_of }
    }

    /// Results in input order, given the table's verdict on each first occurrence (parallel to
    /// `firsts`). A repeat of a sequenced event is a duplicate of that event; a repeat of a
    /// duplicate is a duplicate of the same original.
    pub fn results(&self, events: &[NewEvent], verdicts: &[WriteResult]) -> Vec<WriteResult> {
        self.first_of
            .iter()
            .enumerate()
            .map(|(i, &position)| {
                let first = self.firsts[position];
                match verdicts[position] {
                    WriteResult::Sequenced if first != i => WriteResult::Duplicate {
                        original: events[first].timestamp,
                    },
                    verdict => verdict,
                }
            })
            .collect()
    }
}

/// The watermark to store: the caller's, but never below an event it writes, so that the
/// invariant "no committed event above its writer's watermark" holds even for a careless caller.
pub(crate) fn effective_watermark(events: &[NewEvent], watermark: Timestamp) -> Timestamp {
    events
        .iter()
        .map(|event| event.timestamp)
        .fold(watermark, Timestamp::max)
}

/// The row [`advance_watermark`] returns for an advanced instance, as both backends decode
/// it: the instance's new watermark, the lowest watermark of the other online instances
/// (`None`: there are none) and the newest event of any other instance index, online or not
/// (`None`: there is none).
pub(crate) type AdvancedRow = (i64, Option<i64>, Option<i64>);

/// What the committing call returns besides its results (see [`Committed`]): the safe point as
/// of the advance (the lower of the instance's new watermark and the other online instances'
/// lowest) and the other instances' newest event.
pub(crate) fn committed<T>(
    (watermark, others_watermark, others_latest_event): AdvancedRow,
    results: T,
) -> Committed<T> {
    let safe_point = others_watermark.map_or(watermark, |others| others.min(watermark));
    Committed {
        results,
        safe_point: Timestamp::from_i64(safe_point),
        others_latest_event: others_latest_event.map(Timestamp::from_i64),
    }
}

/// Placeholder for "no lower bound": every stored timestamp is at least zero.
pub(crate) fn after_bound(after: Option<Timestamp>) -> i64 {
    after.map_or(-1, Timestamp::as_i64)
}

pub(crate) fn member_record(
    seq: i64,
    id: String,
    public_key: &[u8],
    registered_at: i64,
) -> Result<MemberRecord, StoreError> {
    let corrupt = |column: &str, error: &dyn std::fmt::Display| {
        StoreError::corrupt("members", format!("{column} of member seq {seq}: {error}"))
    };
    let public_key = PublicKey::from_bytes(public_key).map_err(|e| corrupt("public key", &e))?;
    let id = MemberId::new(id).map_err(|e| corrupt("id", &e))?;
    Ok(MemberRecord {
        seq: MemberSeq(seq),
        id,
        public_key,
        registered_at: Timestamp::from_i64(registered_at),
    })
}

/// The outcome of a registration once the insert has run: a new member when the insert
/// returned its `seq`, otherwise the member already stored under that id (`existing`), which
/// must carry the same key. Shared so both backends answer a conflict identically.
pub(crate) fn registration_outcome(
    id: &MemberId,
    public_key: &PublicKey,
    now: Timestamp,
    inserted: Option<i64>,
    existing: Option<MemberRecord>,
) -> Result<(MemberRecord, bool), StoreError> {
    if let Some(seq) = inserted {
        let record = MemberRecord {
            seq: MemberSeq(seq),
            id: id.clone(),
            public_key: *public_key,
            registered_at: now,
        };
        return Ok((record, true));
    }
    let existing = existing.ok_or_else(|| {
        StoreError::corrupt(
            "members",
            format!("member {id} conflicted on insert but cannot be read"),
        )
    })?;
    if existing.public_key != *public_key {
        return Err(StoreError::MemberKeyConflict { member: id.clone() });
    }
    Ok((existing, false))
}

pub(crate) fn instance_state(
    idx: i64,
    watermark: i64,
    online: bool,
    incarnation: i64,
) -> Result<InstanceState, StoreError> {
    let index = u32::try_from(idx).map_err(|_| {
        StoreError::corrupt(
            "sequencer_instances",
            format!("instance index {idx} out of range"),
        )
    })?;
    Ok(InstanceState {
        index: InstanceIndex(index),
        watermark: Timestamp::from_i64(watermark),
        online,
        incarnation: Incarnation(incarnation),
    })
}

/// The row of an instance as `start_instance` finds it (after inserting it if missing).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClaimedRow {
    pub watermark: i64,
    pub online: bool,
    pub incarnation: i64,
}

/// Whether `claim` may take the row; the same decision on both backends. Run inside the
/// transaction that holds the claim lock, so the row cannot change between check and claim.
pub(crate) fn check_claim(
    index: InstanceIndex,
    row: ClaimedRow,
    claim: InstanceClaim,
) -> Result<(), StoreError> {
    match claim {
        InstanceClaim::Start { live_after } => {
            if row.online && row.watermark >= live_after.as_i64() {
                return Err(StoreError::InstanceInUse {
                    index,
                    watermark_us: row.watermark,
                });
            }
        }
        InstanceClaim::Rejoin(incarnation) => {
            if incarnation.0 != row.incarnation {
                return Err(StoreError::Superseded {
                    index,
                    incarnation,
                    current: Incarnation(row.incarnation),
                });
            }
        }
    }
    Ok(())
}

/// Why a write of (`index`, `incarnation`) found no online row to advance: the row's current
/// incarnation (`None` if there is no row) decides between superseded and merely fenced.
pub(crate) fn refused_write(
    index: InstanceIndex,
    incarnation: Incarnation,
    current: Option<i64>,
) -> StoreError {
    match current {
        Some(current) if current != incarnation.0 => StoreError::Superseded {
            index,
            incarnation,
            current: Incarnation(current),
        },
        _ => StoreError::Fenced(index),
    }
}

/// One row of the read query: the recipient entry, the member's previous timestamp and the
/// event's columns, which are NULL if the event row is missing.
pub(crate) type EventRow = (
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<Vec<u8>>,
);

pub(crate) fn stored_event(row: EventRow) -> Result<StoredEvent, StoreError> {
    let (ts, previous, sender, message_id, batch) = row;
    let (Some(sender), Some(message_id), Some(batch)) = (sender, message_id, batch) else {
        return Err(StoreError::corrupt(
            "event_recipients",
            format!("recipient entry at ts {ts} has no event"),
        ));
    };
    let message_id = MessageId::new(message_id).map_err(|error| {
        StoreError::corrupt(
            "events",
            format!("message id of the event at ts {ts}: {error}"),
        )
    })?;
    Ok(StoredEvent {
        timestamp: Timestamp::from_i64(ts),
        previous_timestamp: previous.map(Timestamp::from_i64),
        sender: MemberSeq(sender),
        message_id,
        batch,
    })
}

/// One row of the events page of `events_after`: ts, sender, message id, batch.
pub(crate) type RoutedRow = (i64, i64, String, Vec<u8>);

/// Joins `events_after`'s page (in timestamp order) with its recipient rows (ts, member; any
/// order). A recipient row of an event outside the page is corrupt: the recipient query is
/// bounded by the page.
pub(crate) fn routed_events(
    rows: Vec<RoutedRow>,
    recipients: Vec<(i64, i64)>,
) -> Result<Vec<RoutedEvent>, StoreError> {
    let mut events = rows
        .into_iter()
        .map(|(ts, sender, message_id, batch)| {
            let message_id = MessageId::new(message_id).map_err(|error| {
                StoreError::corrupt(
                    "events",
                    format!("message id of the event at ts {ts}: {error}"),
                )
            })?;
            Ok(RoutedEvent {
                timestamp: Timestamp::from_i64(ts),
                sender: MemberSeq(sender),
                message_id,
                recipients: Vec::new(),
                batch,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    for (ts, member) in recipients {
        let at = Timestamp::from_i64(ts);
        let Ok(position) = events.binary_search_by_key(&at, |e| e.timestamp) else {
            return Err(StoreError::corrupt(
                "event_recipients",
                format!("recipient entry of member {member} at ts {ts} has no event"),
            ));
        };
        events[position].recipients.push(MemberSeq(member));
    }
    for event in &mut events {
        event.recipients.sort_unstable();
        event.recipients.dedup();
    }
    Ok(events)
}

/// Marks instance $1 offline if it is online with a watermark before $2; the same statement on
/// both backends (PostgreSQL bounds its wait for the row lock around it).
pub(crate) const MARK_OFFLINE: &str = "UPDATE sequencer_instances SET online = false \
     WHERE idx = $1 AND online AND watermark < $2";

/// The incarnation now holding instance $1, read after a refused write to say why.
pub(crate) const CURRENT_INCARNATION: &str =
    "SELECT incarnation FROM sequencer_instances WHERE idx = $1";

/// Advances the watermark of `idx` to at least `watermark`, only while the row is online and
/// still held by `incarnation`: the check every write of an instance makes first. Returns, for
/// an advanced row, an [`AdvancedRow`]: its new watermark, the lowest watermark of the other
/// online instances and the other instance indexes' newest event (an index seek each, on
/// `events (instance, ts)`), from which the commit's [`Committed`] is made. The other rows are
/// not written by this statement, so both backends read them as committed before it. The
/// row's first column is named `watermark`, which tells it from other statements' rows in one
/// SQLite text.
pub(crate) fn advance_watermark<'args, DB: Database>(
    dialect: &pool::Dialect,
    query: &mut QueryBuilder<'args, DB>,
    idx: i32,
    incarnation: Incarnation,
    watermark: Timestamp,
) where
    i64: Encode<'args, DB> + Type<DB>,
    i32: Encode<'args, DB> + Type<DB>,
{
    query
        .push("UPDATE sequencer_instances SET watermark = ")
        .push(dialect.greatest)
        .push("(watermark, ")
        .push_bind(watermark.as_i64())
        .push(") WHERE idx = ")
        .push_bind(idx)
        .push(" AND online AND incarnation = ")
        .push_bind(incarnation.0)
        .push(
            " RETURNING watermark, \
             (SELECT min(others.watermark) FROM sequencer_instances AS others \
              WHERE others.online AND others.idx <> ",
        )
        .push_bind(idx)
        .push(
            ") AS others_watermark, \
             (SELECT max((SELECT max(e.ts) FROM events AS e WHERE e.instance = others.idx)) \
              FROM sequencer_instances AS others WHERE others.idx <> ",
        )
        .push_bind(idx)
        .push(") AS others_latest_event");
}

/// What the transaction of [`super::SequencerStore::write_events`] did.
pub(crate) enum BatchOutcome {
    /// Committed: each first's verdict, and what [`advance_watermark`] returned.
    Written {
        verdicts: Vec<WriteResult>,
        advanced: AdvancedRow,
    },
    /// The instance's row refused the advance (offline, or claimed by a newer incarnation),
    /// so nothing was written; `current` is the row's incarnation, read after.
    Refused { current: Option<i64> },
}

/// The firsts whose verdict is [`WriteResult::Sequenced`]: the events a batch inserts.
pub(crate) fn sequenced<'e>(
    firsts: &[&'e NewEvent],
    verdicts: &[WriteResult],
) -> Vec<&'e NewEvent> {
    firsts
        .iter()
        .zip(verdicts)
        .filter(|(_, verdict)| **verdict == WriteResult::Sequenced)
        .map(|(event, _)| *event)
        .collect()
}

/// The instance index as stored: an `INTEGER` column on both backends.
pub(crate) fn instance_column(index: InstanceIndex) -> Result<i32, StoreError> {
    i32::try_from(index.0).map_err(|error| {
        StoreError::Database(sqlx::Error::Encode(
            format!("instance index {index} does not fit the INTEGER column: {error}").into(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ts: u64, sender: i64, message_id: &str) -> NewEvent {
        NewEvent {
            timestamp: Timestamp::from_micros(ts),
            sender: MemberSeq(sender),
            message_id: MessageId::new(message_id).expect("valid id"),
            max_sequencing_time: Timestamp::from_micros(ts + 1_000),
            recipients: vec![MemberSeq(sender)],
            batch: Vec::new(),
        }
    }

    #[test]
    fn repeats_within_a_call_follow_their_first_occurrence() {
        let events = [
            event(10, 1, "a"),
            event(11, 2, "a"),
            event(12, 1, "a"),
            event(13, 1, "b"),
            event(14, 1, "b"),
        ];
        let plan = WritePlan::new(&events);
        assert_eq!(plan.firsts, vec![0, 1, 3]);

        // (1, "b") was already in the table at 5.
        let original = Timestamp::from_micros(5);
        let verdicts = [
            WriteResult::Sequenced,
            WriteResult::Sequenced,
            WriteResult::Duplicate { original },
        ];
        let at = |ts| WriteResult::Duplicate {
            original: Timestamp::from_micros(ts),
        };
        assert_eq!(
            plan.results(&events, &verdicts),
            vec![
                WriteResult::Sequenced,
                WriteResult::Sequenced,
                at(10),
                at(5),
                at(5)
            ]
        );
    }

    #[test]
    fn watermark_covers_every_event() {
        let events = [event(10, 1, "a"), event(30, 1, "b")];
        assert_eq!(
            effective_watermark(&events, Timestamp::from_micros(20)),
            Timestamp::from_micros(30)
        );
        assert_eq!(
            effective_watermark(&events, Timestamp::from_micros(40)),
            Timestamp::from_micros(40)
        );
    }

    #[test]
    fn corrupt_rows_are_errors() {
        assert!(matches!(
            member_record(1, "m1".into(), &[1, 2, 3], 0),
            Err(StoreError::Corrupt {
                table: "members",
                ..
            })
        ));
        assert!(matches!(
            stored_event((5, None, Some(1), Some("bad id".into()), Some(vec![]))),
            Err(StoreError::Corrupt {
                table: "events",
                ..
            })
        ));
        assert!(matches!(
            stored_event((5, None, None, None, None)),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            instance_state(-1, 0, true, 1),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn claims_respect_live_holders_and_newer_incarnations() {
        let index = InstanceIndex(3);
        let live = ClaimedRow {
            watermark: 1_000,
            online: true,
            incarnation: 7,
        };
        let start = |live_after| InstanceClaim::Start {
            live_after: Timestamp::from_micros(live_after),
        };
        assert!(matches!(
            check_claim(index, live, start(1_000)),
            Err(StoreError::InstanceInUse {
                watermark_us: 1_000,
                ..
            })
        ));
        assert!(check_claim(index, live, start(1_001)).is_ok(), "stale");
        let offline = ClaimedRow {
            online: false,
            ..live
        };
        assert!(check_claim(index, offline, start(0)).is_ok(), "offline");
        assert!(check_claim(index, live, InstanceClaim::Rejoin(Incarnation(7))).is_ok());
        assert!(matches!(
            check_claim(index, live, InstanceClaim::Rejoin(Incarnation(6))),
            Err(StoreError::Superseded {
                incarnation: Incarnation(6),
                current: Incarnation(7),
                ..
            })
        ));
        assert!(matches!(
            refused_write(index, Incarnation(7), Some(7)),
            StoreError::Fenced(_)
        ));
        assert!(matches!(
            refused_write(index, Incarnation(7), None),
            StoreError::Fenced(_)
        ));
        assert!(matches!(
            refused_write(index, Incarnation(7), Some(8)),
            StoreError::Superseded { .. }
        ));
    }
}
