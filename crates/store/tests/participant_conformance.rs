//! The participant store conformance suite: one set of checks of the `ParticipantStore`
//! contract, run against SQLite (a temp file) and PostgreSQL (a fresh database on the test
//! binary's shared throwaway server).

use std::collections::BTreeSet;

use harness::t;
use meridian_core::ledger::{Action, Contract, Transaction};
use meridian_core::{
    CommandId, ContractId, LedgerOffset, PartyId, TemplateId, Timestamp, TransactionId, UserId,
};
use meridian_store::{
    CompletionRecord, DedupRecord, DedupState, ForkRecord, ParticipantBatch, ParticipantStore,
    PendingRecord, QuietPoint, StoredContract, TransactionRecord,
};
use serde_json::json;

#[macro_use]
mod harness;

type Harness = harness::StoreHarness<dyn ParticipantStore>;
fn party(name: &str) -> PartyId {
    PartyId::new(name).expect("party")
}

fn contract(id: &str, owner: &str, amount: u64) -> Contract {
    Contract {
        id: ContractId::new(id).expect("id"),
        template: TemplateId::new("Iou").expect("template"),
        payload: json!({"issuer": "bank", "owner": owner, "amount": amount, "currency": "USD"}),
        signatories: BTreeSet::from([party("bank")]),
        observers: BTreeSet::from([party(owner)]),
    }
}

fn transaction(created: &Contract) -> Transaction {
    Transaction {
        roots: vec![Action::Create {
            contract: created.clone(),
        }],
    }
}

/// A contract created at `offset` and still active.
fn active(contract: Contract, offset: u64) -> StoredContract {
    StoredContract {
        contract,
        created_offset: LedgerOffset(offset),
        archived_offset: None,
    }
}

/// The stored deduplication entry of `change_key`, if any.
async fn dedup_entry(store: &dyn ParticipantStore, change_key: &str) -> Option<DedupRecord> {
    let mut found = store
        .dedup_entries(&[change_key.to_owned()])
        .await
        .expect("dedup entries");
    assert!(found.len() <= 1, "one entry per change key: {found:?}");
    found.pop()
}

/// The offsets of the transactions after `after`, at most `limit` of them.
async fn offsets_after(store: &dyn ParticipantStore, after: u64, limit: u32) -> Vec<LedgerOffset> {
    let page = store
        .transactions_after(LedgerOffset(after), limit)
        .await
        .expect("transactions");
    page.iter().map(|transaction| transaction.offset).collect()
}

fn tx_record(offset: u64, created: &Contract, local: bool) -> TransactionRecord {
    TransactionRecord {
        offset: LedgerOffset(offset),
        transaction_id: TransactionId::new(format!("tx-{offset}")).expect("tx id"),
        request_id: t(offset * 100),
        committed_at: t(offset * 100 + 10),
        user_id: local.then(|| UserId::new("app").expect("user")),
        command_id: local.then(|| CommandId::new(format!("cmd-{offset}")).expect("cmd")),
        informees: created.stakeholders(),
        transaction: transaction(created),
    }
}

fn completion(offset: u64, user: &str, code: i32) -> CompletionRecord {
    CompletionRecord {
        offset: LedgerOffset(offset),
        user_id: UserId::new(user).expect("user"),
        command_id: CommandId::new(format!("cmd-{offset}")).expect("cmd"),
        act_as: BTreeSet::from([party("alice")]),
        submission_id: format!("sub-{offset}"),
        status_code: code,
        message: if code == 0 {
            String::new()
        } else {
            "lost a race".into()
        },
        transaction_id: (code == 0)
            .then(|| TransactionId::new(format!("tx-{offset}")).expect("tx")),
        record_time: t(offset * 100),
    }
}

fn dedup(key: &str, state: DedupState) -> DedupRecord {
    DedupRecord {
        change_key: key.into(),
        user_id: UserId::new("app").expect("user"),
        command_id: CommandId::new(format!("cmd-{key}")).expect("cmd"),
        act_as: BTreeSet::from([party("alice")]),
        submission_id: format!("sub-{key}"),
        max_sequencing_time: t(9_000),
        dedup_period_us: 600_000_000,
        state,
    }
}

async fn batches_round_trip(h: Harness) {
    let store = &h.store;
    let empty = store.load().await.expect("load");
    assert_eq!(empty.checkpoint, None);
    assert_eq!(empty.ledger_end, LedgerOffset(0));
    assert!(empty.active_contracts.is_empty());

    let a = contract("c-a", "alice", 100);
    let b = contract("c-b", "bob", 100);
    let first = ParticipantBatch {
        checkpoint: Some(t(100)),
        ledger_end: Some(LedgerOffset(2)),
        created: vec![active(a.clone(), 1)],
        transactions: vec![tx_record(1, &a, true)],
        completions: vec![completion(1, "app", 0), completion(2, "app", 10)],
        dedup_upserts: vec![
            dedup("k1", DedupState::InFlight),
            dedup(
                "k2",
                DedupState::Committed {
                    transaction_id: TransactionId::new("tx-1").expect("tx"),
                    offset: LedgerOffset(1),
                    expires_at: t(10_000),
                },
            ),
        ],
        pending_upserts: vec![PendingRecord {
            request_id: t(150),
            record: "{\"pending\":1}".into(),
        }],
        ..ParticipantBatch::default()
    };
    store.apply(&first).await.expect("first batch");
    let second = ParticipantBatch {
        checkpoint: Some(t(200)),
        ledger_end: Some(LedgerOffset(3)),
        created: vec![active(b.clone(), 3)],
        archived: vec![(a.id.clone(), LedgerOffset(3))],
        transactions: vec![tx_record(3, &b, false)],
        dedup_deletes: vec!["k1".into()],
        pending_deletes: vec![t(150)],
        pending_upserts: vec![PendingRecord {
            request_id: t(180),
            record: "{\"pending\":2}".into(),
        }],
        ..ParticipantBatch::default()
    };
    store.apply(&second).await.expect("second batch");

    // An older checkpoint or ledger end never moves them back.
    store
        .apply(&ParticipantBatch {
            checkpoint: Some(t(150)),
            ledger_end: Some(LedgerOffset(1)),
            ..ParticipantBatch::default()
        })
        .await
        .expect("stale batch");

    let reopened = h.reopen().await;
    for store in [store.clone(), reopened] {
        let snapshot = store.load().await.expect("load");
        assert_eq!(snapshot.checkpoint, Some(t(200)));
        assert_eq!(snapshot.ledger_end, LedgerOffset(3));
        assert_eq!(
            snapshot
                .active_contracts
                .iter()
                .map(|c| c.contract.clone())
                .collect::<Vec<_>>(),
            vec![b.clone()]
        );
        assert_eq!(snapshot.pending.len(), 1);
        assert_eq!(snapshot.pending[0].request_id, t(180));
        // k1's marker was deleted; the committed k2 is not loaded, but paged through.
        assert!(snapshot.dedup.is_empty());
        assert_eq!(
            store
                .committed_dedup_keys(t(5_000), None, 10)
                .await
                .expect("committed keys"),
            vec![("k2".to_owned(), t(10_000))]
        );
        // Expired committed entries are not listed.
        assert!(store
            .committed_dedup_keys(t(20_000), None, 10)
            .await
            .expect("committed keys")
            .is_empty());

        let (offset, active) = store.active_contracts().await.expect("acs");
        assert_eq!(offset, LedgerOffset(3));
        assert_eq!(active.len(), 1);
        let archived = store
            .contract(&a.id)
            .await
            .expect("contract")
            .expect("stored");
        assert_eq!(archived.archived_offset, Some(LedgerOffset(3)));
        assert_eq!(archived.contract, a);
        assert!(store
            .contract(&ContractId::new("nope").expect("id"))
            .await
            .expect("contract")
            .is_none());

        let transactions = store
            .transactions_after(LedgerOffset(0), 10)
            .await
            .expect("transactions");
        assert_eq!(
            transactions,
            vec![tx_record(1, &a, true), tx_record(3, &b, false)]
        );
        assert_eq!(offsets_after(&*store, 1, 1).await, [LedgerOffset(3)]);

        let completions = store
            .completions_after(&UserId::new("app").expect("user"), LedgerOffset(0), 10)
            .await
            .expect("completions");
        assert_eq!(
            completions,
            vec![completion(1, "app", 0), completion(2, "app", 10)]
        );
        assert!(store
            .completions_after(&UserId::new("other").expect("user"), LedgerOffset(0), 10)
            .await
            .expect("completions")
            .is_empty());
        assert_eq!(store.ledger_end().await.expect("end"), LedgerOffset(3));
        assert!(dedup_entry(store.as_ref(), "k1").await.is_none());
        assert!(dedup_entry(store.as_ref(), "k2").await.is_some());
    }

    // Upserting a dedup entry replaces it (a change submitted again after expiry).
    store
        .apply(&ParticipantBatch {
            dedup_upserts: vec![dedup("k2", DedupState::InFlight)],
            ..ParticipantBatch::default()
        })
        .await
        .expect("upsert");
    assert_eq!(
        dedup_entry(store.as_ref(), "k2").await.map(|d| d.state),
        Some(DedupState::InFlight)
    );
    // In-flight markers are never pruned; expired committed ones are.
    store
        .apply(&ParticipantBatch {
            dedup_upserts: vec![dedup(
                "k3",
                DedupState::Committed {
                    transaction_id: TransactionId::new("tx-3").expect("tx"),
                    offset: LedgerOffset(3),
                    expires_at: t(1_000),
                },
            )],
            ..ParticipantBatch::default()
        })
        .await
        .expect("upsert");
    assert_eq!(store.prune_dedup(t(2_000)).await.expect("prune"), 1);
    assert!(dedup_entry(store.as_ref(), "k2").await.is_some());
}

async fn a_failing_batch_changes_nothing(h: Harness) {
    let store = &h.store;
    let a = contract("c-a", "alice", 100);
    let created = active(a.clone(), 1);
    store
        .apply(&ParticipantBatch {
            checkpoint: Some(t(100)),
            ledger_end: Some(LedgerOffset(1)),
            created: vec![created.clone()],
            transactions: vec![tx_record(1, &a, false)],
            ..ParticipantBatch::default()
        })
        .await
        .expect("first");
    // The same offset again violates the transactions' primary key: all or nothing.
    let err = store
        .apply(&ParticipantBatch {
            checkpoint: Some(t(200)),
            ledger_end: Some(LedgerOffset(2)),
            created: vec![active(contract("c-b", "bob", 5), 2)],
            archived: vec![(a.id.clone(), LedgerOffset(2))],
            transactions: vec![tx_record(1, &a, false)],
            ..ParticipantBatch::default()
        })
        .await;
    assert!(err.is_err());
    let snapshot = store.load().await.expect("load");
    assert_eq!(snapshot.checkpoint, Some(t(100)));
    assert_eq!(snapshot.ledger_end, LedgerOffset(1));
    assert_eq!(snapshot.active_contracts, vec![created]);
}

async fn many_rows_in_one_batch(h: Harness) {
    let store = &h.store;
    let contracts: Vec<StoredContract> = (0..1_000)
        .map(|i| active(contract(&format!("c-{i}"), "alice", i + 1), i + 1))
        .collect();
    let transactions: Vec<TransactionRecord> = contracts
        .iter()
        .map(|c| tx_record(c.created_offset.0, &c.contract, false))
        .collect();
    store
        .apply(&ParticipantBatch {
            checkpoint: Some(t(1)),
            ledger_end: Some(LedgerOffset(1_000)),
            created: contracts,
            transactions,
            ..ParticipantBatch::default()
        })
        .await
        .expect("big batch");
    let (end, active) = store.active_contracts().await.expect("acs");
    assert_eq!(end, LedgerOffset(1_000));
    assert_eq!(active.len(), 1_000);
    let page = offsets_after(&**store, 500, 1_000).await;
    assert_eq!(page, (501..=1_000).map(LedgerOffset).collect::<Vec<_>>());

    // Archives, and deletes of in-flight markers and pending requests, are written as lists
    // too: more than one statement's worth, each archive at its own offset.
    let keys: Vec<String> = (0..1_000).map(|i| format!("k-{i}")).collect();
    store
        .apply(&ParticipantBatch {
            dedup_upserts: keys
                .iter()
                .map(|key| dedup(key, DedupState::InFlight))
                .collect(),
            pending_upserts: (0..1_000)
                .map(|i| PendingRecord {
                    request_id: t(10 + i),
                    record: format!("{{\"pending\":{i}}}"),
                })
                .collect(),
            archived: vec![(active[0].contract.id.clone(), LedgerOffset(5_000))],
            ..ParticipantBatch::default()
        })
        .await
        .expect("markers and one archive");
    let ids: Vec<ContractId> = active.iter().map(|c| c.contract.id.clone()).collect();
    store
        .apply(&ParticipantBatch {
            checkpoint: Some(t(2)),
            ledger_end: Some(LedgerOffset(2_001)),
            // Every other contract, the first of which is archived already: its archive must
            // not move.
            archived: ids
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == 0)
                .map(|(i, id)| (id.clone(), LedgerOffset(1_001 + i as u64)))
                .collect(),
            dedup_deletes: keys[..900].to_vec(),
            pending_deletes: (0..900).map(|i| t(10 + i)).collect(),
            ..ParticipantBatch::default()
        })
        .await
        .expect("archives and deletes");
    let (_, active) = store.active_contracts().await.expect("acs");
    assert_eq!(active.len(), 500);
    for (i, id) in ids.iter().enumerate() {
        let stored = store.contract(id).await.expect("contract").expect("stored");
        let expected = match i {
            0 => Some(LedgerOffset(5_000)),
            _ if i % 2 == 0 => Some(LedgerOffset(1_001 + i as u64)),
            _ => None,
        };
        assert_eq!(stored.archived_offset, expected, "contract {i}");
    }
    let snapshot = store.load().await.expect("load");
    let mut left: Vec<String> = snapshot.dedup.into_iter().map(|d| d.change_key).collect();
    left.sort();
    let mut expected: Vec<String> = keys[900..].to_vec();
    expected.sort();
    assert_eq!(left, expected);
    let pending: Vec<_> = snapshot.pending.iter().map(|p| p.request_id).collect();
    assert_eq!(pending, (900..1_000).map(|i| t(10 + i)).collect::<Vec<_>>());
}

/// `batch` counts as applied only after it was written.
async fn applied_only_once_written(store: &dyn ParticipantStore, batch: &ParticipantBatch) {
    assert!(!store.applied(batch).await.expect("not yet"));
    store.apply(batch).await.expect("apply");
    assert!(store.applied(batch).await.expect("written"));
}

/// `applied` answers whether this very batch committed — what a writer asks before retrying a
/// batch whose commit's outcome it never learnt — and refuses to answer a fenced replica.
async fn applied_recognises_a_committed_batch(h: Harness) {
    let store = &h.store;
    let a = contract("c-a", "alice", 100);
    let batch = ParticipantBatch {
        checkpoint: Some(t(100)),
        ledger_end: Some(LedgerOffset(1)),
        created: vec![StoredContract {
            contract: a.clone(),
            created_offset: LedgerOffset(1),
            archived_offset: None,
        }],
        transactions: vec![tx_record(1, &a, true)],
        completions: vec![completion(1, "app", 0)],
        ..ParticipantBatch::default()
    };
    applied_only_once_written(&**store, &batch).await;
    // Another batch at the same offset (another transaction id) was not written.
    let mut other = batch.clone();
    other.transactions[0].transaction_id = TransactionId::new("tx-other").expect("tx id");
    assert!(!store.applied(&other).await.expect("another batch"));

    // Only a rejection: recognised by its completion's submission id.
    let rejected = ParticipantBatch {
        checkpoint: Some(t(200)),
        ledger_end: Some(LedgerOffset(2)),
        completions: vec![completion(2, "app", 10)],
        ..ParticipantBatch::default()
    };
    applied_only_once_written(&**store, &rejected).await;
    let mut resubmitted = rejected.clone();
    resubmitted.completions[0].submission_id = "sub-other".into();
    assert!(!store
        .applied(&resubmitted)
        .await
        .expect("another submission"));

    // Nothing at an offset: all upserts, safe to apply again, so "not applied".
    let markers = ParticipantBatch {
        dedup_upserts: vec![dedup("k1", DedupState::InFlight)],
        ..ParticipantBatch::default()
    };
    store.apply(&markers).await.expect("apply");
    assert!(!store.applied(&markers).await.expect("upserts only"));
    store.apply(&markers).await.expect("applied twice");

    store.fence().deactivate("participant1");
    let fenced = store.applied(&batch).await;
    assert!(
        matches!(fenced, Err(meridian_store::StoreError::Passive { .. })),
        "{fenced:?}"
    );
}

fn committed(offset: u64) -> DedupState {
    DedupState::Committed {
        transaction_id: TransactionId::new(format!("tx-{offset}")).expect("tx"),
        offset: LedgerOffset(offset),
        expires_at: t(10_000),
    }
}

/// Three batches: quiet at 100 (ledger end 1), pending at 200 (2), quiet at 300 (3). A fork
/// at 205 loses the commits of offsets 2 (requested at 200, committed at 210) and 3; the
/// rewind goes back to the quiet point at 100.
async fn a_fork_rewinds_to_a_quiet_point(h: Harness) {
    let store = h.store.clone();
    let (a, b, c) = (
        contract("c-a", "alice", 1),
        contract("c-b", "bob", 1),
        contract("c-c", "bob", 2),
    );
    let batches = [
        ParticipantBatch {
            checkpoint: Some(t(100)),
            ledger_end: Some(LedgerOffset(1)),
            created: vec![active(a.clone(), 1)],
            transactions: vec![tx_record(1, &a, true)],
            dedup_upserts: vec![dedup("k-1", committed(1))],
            quiet: true,
            ..ParticipantBatch::default()
        },
        ParticipantBatch {
            checkpoint: Some(t(200)),
            ledger_end: Some(LedgerOffset(2)),
            created: vec![active(b.clone(), 2)],
            archived: vec![(a.id.clone(), LedgerOffset(2))],
            transactions: vec![tx_record(2, &b, true)],
            completions: vec![completion(2, "app", 0)],
            dedup_upserts: vec![dedup("k-2", committed(2))],
            pending_upserts: vec![PendingRecord {
                request_id: t(190),
                record: "{}".into(),
            }],
            quiet: false,
            ..ParticipantBatch::default()
        },
        ParticipantBatch {
            checkpoint: Some(t(300)),
            ledger_end: Some(LedgerOffset(3)),
            created: vec![active(c.clone(), 3)],
            transactions: vec![tx_record(3, &c, true)],
            dedup_upserts: vec![dedup("k-3", committed(3))],
            quiet: true,
            ..ParticipantBatch::default()
        },
    ];
    for batch in &batches {
        store.apply(batch).await.expect("batch");
    }
    let quiet = store
        .quiet_point_at_or_before(t(205))
        .await
        .expect("quiet point")
        .expect("one at 100");
    assert_eq!(
        quiet,
        QuietPoint {
            checkpoint: t(100),
            ledger_end: LedgerOffset(1)
        }
    );
    let lost: Vec<u64> = store
        .transactions_committed_after(Some(t(205)), 10)
        .await
        .expect("lost")
        .iter()
        .map(|r| r.offset.0)
        .collect();
    assert_eq!(
        lost,
        vec![2, 3],
        "committed at 210 and 310, after the fork at 205"
    );
    assert_eq!(store.fork().await.expect("no fork"), None);
    let fork = ForkRecord {
        last_processed: Some(t(300)),
        fork_point: Some(Some(t(205))),
        detected_at: t(400),
        reason: "test fork".into(),
    };
    store.record_fork(&fork).await.expect("record");
    assert_eq!(store.fork().await.expect("fork"), Some(fork));

    let outcome = store.rewind(quiet, Some(t(205))).await.expect("rewind");
    assert_eq!(outcome.transactions_removed, 2);
    assert_eq!(outcome.contracts_removed, 2);
    assert_eq!(outcome.contracts_reactivated, 1);
    assert_eq!(
        outcome.submissions_reopened, 1,
        "k-2: its request (200) is shared"
    );
    assert_eq!(
        outcome.submissions_forgotten, 1,
        "k-3: its request (300) is lost"
    );
    assert_eq!(outcome.pending_removed, 1);
    let reopened = h.reopen().await;
    for store in [store.clone(), reopened] {
        let snapshot = store.load().await.expect("load");
        assert_eq!(snapshot.checkpoint, Some(t(100)));
        assert_eq!(snapshot.ledger_end, LedgerOffset(1));
        let active: Vec<_> = snapshot
            .active_contracts
            .iter()
            .map(|s| &s.contract.id)
            .collect();
        assert_eq!(active, vec![&a.id]);
        assert!(snapshot.pending.is_empty());
        let state = |key: &str| {
            snapshot
                .dedup
                .iter()
                .find(|d| d.change_key == key)
                .map(|d| d.state.clone())
        };
        // Committed entries are not part of the snapshot; k-1's is still stored.
        assert_eq!(state("k-1"), None);
        assert_eq!(
            dedup_entry(store.as_ref(), "k-1").await.map(|d| d.state),
            Some(committed(1))
        );
        assert_eq!(state("k-2"), Some(DedupState::InFlight));
        assert_eq!(state("k-3"), None);
        assert_eq!(
            offsets_after(store.as_ref(), 0, 10).await,
            vec![LedgerOffset(1)]
        );
        assert_eq!(store.fork().await.expect("cleared"), None);
    }
    // A later batch moves on from the rewound point as usual.
    store
        .apply(&ParticipantBatch {
            checkpoint: Some(t(500)),
            quiet: true,
            ..ParticipantBatch::default()
        })
        .await
        .expect("after the rewind");
    assert_eq!(store.load().await.expect("load").checkpoint, Some(t(500)));
}

/// Transaction ids are not indexed (migration 0012): a random key cost every transaction a
/// page of its own in each commit, and nothing reads a transaction by its id. A transaction
/// is committed once because the engine commits a request once; a second commit of one that
/// creates anything would still fail on the contracts' key. So the store takes a repeated id
/// at a new offset, on both backends (PostgreSQL would refuse it if the index were left).
async fn transaction_ids_are_not_indexed(h: Harness) {
    let store = &h.store;
    let a = contract("c-a", "alice", 100);
    let same_id = |offset: u64| TransactionRecord {
        transaction_id: TransactionId::new("tx-repeated").expect("tx id"),
        ..tx_record(offset, &a, false)
    };
    for offset in [1, 2] {
        store
            .apply(&ParticipantBatch {
                checkpoint: Some(t(offset * 100)),
                ledger_end: Some(LedgerOffset(offset)),
                transactions: vec![same_id(offset)],
                ..ParticipantBatch::default()
            })
            .await
            .expect("no unique index on the transaction id");
    }
    assert_eq!(
        offsets_after(&**store, 0, 10).await,
        [LedgerOffset(1), LedgerOffset(2)]
    );
}

/// `dedup_entries` finds every stored key among many (more than one read's worth), skips the
/// missing ones, and reads each entry back as it was stored.
async fn dedup_entries_are_read_in_bulk(h: Harness) {
    let store = &h.store;
    let stored: Vec<DedupRecord> = (0..1_200)
        .map(|i| {
            dedup(
                &format!("k-{i}"),
                DedupState::Committed {
                    transaction_id: TransactionId::new(format!("tx-{i}")).expect("tx"),
                    offset: LedgerOffset(i + 1),
                    expires_at: t(5_000 + i),
                },
            )
        })
        .collect();
    store
        .apply(&ParticipantBatch {
            dedup_upserts: stored.clone(),
            ..ParticipantBatch::default()
        })
        .await
        .expect("upsert");
    // Every key stored, and as many that are not: 2,400 keys, three reads.
    let asked: Vec<String> = (0..1_200)
        .flat_map(|i| [format!("k-{i}"), format!("missing-{i}")])
        .collect();
    let mut found = store.dedup_entries(&asked).await.expect("bulk read");
    found.sort_by_key(|record| match &record.state {
        DedupState::Committed { offset, .. } => offset.0,
        DedupState::InFlight => 0,
    });
    assert_eq!(found, stored);
    assert!(store
        .dedup_entries(&[])
        .await
        .expect("none asked")
        .is_empty());
}

/// `committed_dedup_keys` pages through exactly the committed entries not yet expired, each
/// once, in key order, whatever the page size; in-flight markers and expired entries are left
/// out.
async fn committed_dedup_keys_are_paged_in_key_order(h: Harness) {
    let store = &h.store;
    let mut upserts: Vec<DedupRecord> = (0..250)
        .map(|i| {
            dedup(
                &format!("c-{i:03}"),
                DedupState::Committed {
                    transaction_id: TransactionId::new(format!("tx-{i}")).expect("tx"),
                    offset: LedgerOffset(i + 1),
                    // Every fifth one expired by 5,000.
                    expires_at: t(if i % 5 == 0 { 4_000 } else { 6_000 + i }),
                },
            )
        })
        .collect();
    upserts.extend((0..30).map(|i| dedup(&format!("f-{i:02}"), DedupState::InFlight)));
    store
        .apply(&ParticipantBatch {
            dedup_upserts: upserts,
            ..ParticipantBatch::default()
        })
        .await
        .expect("upsert");
    let expected: Vec<(String, Timestamp)> = (0..250)
        .filter(|i| i % 5 != 0)
        .map(|i| (format!("c-{i:03}"), t(6_000 + i)))
        .collect();
    for limit in [1, 7, 200, 1_000] {
        let mut listed = Vec::new();
        let mut pages = 0;
        loop {
            let after = listed
                .last()
                .map(|(key, _): &(String, Timestamp)| key.clone());
            let page = store
                .committed_dedup_keys(t(5_000), after.as_deref(), limit)
                .await
                .expect("page");
            assert!(page.len() <= limit as usize);
            if page.is_empty() {
                break;
            }
            pages += 1;
            listed.extend(page);
        }
        assert_eq!(listed, expected, "limit {limit}");
        assert_eq!(
            pages,
            expected.len().div_ceil(limit as usize),
            "limit {limit}"
        );
    }
}

conformance!(
    "participant":
    committed_dedup_keys_are_paged_in_key_order,
    dedup_entries_are_read_in_bulk,
    a_fork_rewinds_to_a_quiet_point,
    batches_round_trip,
    a_failing_batch_changes_nothing,
    many_rows_in_one_batch,
    applied_recognises_a_committed_batch,
    transaction_ids_are_not_indexed
);
