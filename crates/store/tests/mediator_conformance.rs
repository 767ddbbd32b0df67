//! The mediator store conformance suite: one set of checks of the `MediatorStore` contract, run
//! against SQLite (a temp file) and PostgreSQL (a fresh database on the test binary's shared
//! throwaway server). What the mediator's restart relies on — atomic `apply` with the
//! checkpoint, pending state and unsent verdicts surviving a reopen — belongs here.

use harness::{
    assert_unreachable_postgres_is_transient, open_own_postgres, reopen_with_setting, t,
};
use meridian_core::{MemberId, ParticipantId, Timestamp};
use meridian_store::mediator::{
    MediatorChange, MediatorSnapshot, MediatorStore, PendingRequestRecord, ResponseRecord,
    VerdictRecord,
};
use meridian_store::StoreError;

#[macro_use]
mod harness;

type Harness = harness::StoreHarness<dyn MediatorStore>;

fn p(name: &str) -> ParticipantId {
    ParticipantId::new(name).expect("participant id")
}

fn m(name: &str) -> MemberId {
    MemberId::new(name).expect("member id")
}

fn added(request: u64) -> MediatorChange {
    MediatorChange::RequestAdded {
        request_id: t(request),
        deadline: t(request + 1_000),
        informee_json: format!("{{\"informee\":{request}}}"),
    }
}

fn response(request: u64, participant: &str) -> MediatorChange {
    MediatorChange::ResponseAdded {
        request_id: t(request),
        participant: p(participant),
        response_json: format!("{{\"response\":\"{participant}@{request}\"}}"),
    }
}

fn decided(request: u64, recipients: &[&str]) -> MediatorChange {
    MediatorChange::VerdictDecided {
        request_id: t(request),
        recipients: recipients.iter().map(|r| m(r)).collect(),
        verdict_json: format!("{{\"verdict\":{request}}}"),
    }
}

fn pending(request: u64, responders: &[&str]) -> PendingRequestRecord {
    PendingRequestRecord {
        request_id: t(request),
        deadline: t(request + 1_000),
        informee_json: format!("{{\"informee\":{request}}}"),
        responses: responders
            .iter()
            .map(|participant| ResponseRecord {
                participant: p(participant),
                response_json: format!("{{\"response\":\"{participant}@{request}\"}}"),
            })
            .collect(),
    }
}

fn verdict(request: u64, recipients: &[&str], sent: bool) -> VerdictRecord {
    VerdictRecord {
        request_id: t(request),
        recipients: recipients.iter().map(|r| m(r)).collect(),
        verdict_json: format!("{{\"verdict\":{request}}}"),
        sent,
    }
}

// ---------------------------------------------------------------------------------------------
// The contract, once for both backends.

/// Applies `changes` up to `checkpoint`, which must succeed.
async fn apply_ok(store: &dyn MediatorStore, changes: &[MediatorChange], checkpoint: Timestamp) {
    store.apply(changes, checkpoint).await.expect("apply");
}

async fn a_new_store_is_empty(h: Harness) {
    assert_eq!(
        h.store.load().await.expect("load"),
        MediatorSnapshot::default()
    );
    assert_eq!(h.store.verdict(t(1)).await.expect("verdict"), None);
}

async fn pending_requests_and_responses_round_trip(h: Harness) {
    let store = &*h.store;
    apply_ok(store, &[added(10), response(10, "p2"), added(20)], t(20)).await;
    apply_ok(store, &[response(10, "p1"), response(20, "p1")], t(25)).await;
    let snapshot = store.load().await.expect("load");
    assert_eq!(snapshot.checkpoint, Some(t(25)));
    assert_eq!(
        snapshot.pending,
        vec![pending(10, &["p1", "p2"]), pending(20, &["p1"])],
        "requests in request order, responses in participant order"
    );
    assert!(snapshot.unsent.is_empty());
}

async fn deciding_replaces_the_pending_request_with_an_unsent_verdict(h: Harness) {
    let store = &*h.store;
    apply_ok(store, &[added(10), response(10, "p1"), added(20)], t(20)).await;
    apply_ok(store, &[decided(10, &["p1", "p2"])], t(30)).await;
    let snapshot = store.load().await.expect("load");
    assert_eq!(snapshot.pending, vec![pending(20, &[])]);
    assert_eq!(snapshot.unsent, vec![verdict(10, &["p1", "p2"], false)]);
    assert_eq!(
        store.verdict(t(10)).await.expect("verdict"),
        Some(verdict(10, &["p1", "p2"], false))
    );

    // A request added, answered and decided within one call leaves only its verdict.
    apply_ok(
        store,
        &[added(40), response(40, "p1"), decided(40, &["p1"])],
        t(40),
    )
    .await;
    let snapshot = store.load().await.expect("load");
    assert_eq!(snapshot.pending, vec![pending(20, &[])]);
    assert_eq!(
        snapshot.unsent,
        vec![
            verdict(10, &["p1", "p2"], false),
            verdict(40, &["p1"], false)
        ]
    );
}

async fn sent_verdicts_are_no_longer_unsent_and_can_be_pruned(h: Harness) {
    let store = &*h.store;
    apply_ok(
        store,
        &[
            added(10),
            decided(10, &["p1"]),
            added(20),
            decided(20, &["p1"]),
            added(30),
            decided(30, &["p1"]),
        ],
        t(30),
    )
    .await;
    store
        .mark_verdicts_sent(&[t(10), t(30), t(99)])
        .await
        .expect("mark sent; unknown ids are ignored");
    store
        .mark_verdicts_sent(&[])
        .await
        .expect("nothing to mark");
    let snapshot = store.load().await.expect("load");
    assert_eq!(snapshot.unsent, vec![verdict(20, &["p1"], false)]);
    assert_eq!(
        store.verdict(t(10)).await.expect("verdict"),
        Some(verdict(10, &["p1"], true))
    );

    // Only sent verdicts before the bound go; the unsent one stays whatever its age.
    assert_eq!(store.prune_verdicts(t(25)).await.expect("prune"), 1);
    assert_eq!(store.verdict(t(10)).await.expect("verdict"), None);
    assert_eq!(store.prune_verdicts(t(100)).await.expect("prune"), 1);
    assert_eq!(store.verdict(t(30)).await.expect("verdict"), None);
    assert_eq!(
        store.verdict(t(20)).await.expect("verdict"),
        Some(verdict(20, &["p1"], false))
    );
}

async fn a_failed_apply_changes_nothing(h: Harness) {
    let store = &*h.store;
    apply_ok(store, &[added(10), response(10, "p1")], t(10)).await;
    let before = store.load().await.expect("load");

    // The second response of p1 to request 10 conflicts, after other rows were written.
    let failed = store
        .apply(&[added(20), decided(5, &["p9"]), response(10, "p1")], t(20))
        .await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(store.load().await.expect("load"), before);
    assert_eq!(store.verdict(t(5)).await.expect("verdict"), None);

    // Deciding a request twice fails too.
    apply_ok(store, &[decided(10, &["p1"])], t(30)).await;
    let before = store.load().await.expect("load");
    let failed = store.apply(&[added(40), decided(10, &["p1"])], t(40)).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(store.load().await.expect("load"), before);
}

async fn the_checkpoint_never_moves_backwards(h: Harness) {
    let store = &*h.store;
    apply_ok(store, &[], t(50)).await;
    assert_eq!(store.load().await.expect("load").checkpoint, Some(t(50)));
    apply_ok(store, &[added(60)], t(40)).await;
    let snapshot = store.load().await.expect("load");
    assert_eq!(snapshot.checkpoint, Some(t(50)));
    assert_eq!(snapshot.pending, vec![pending(60, &[])]);
    apply_ok(store, &[], t(70)).await;
    assert_eq!(store.load().await.expect("load").checkpoint, Some(t(70)));
}

async fn reopening_keeps_everything(h: Harness) {
    apply_ok(
        &*h.store,
        &[
            added(10),
            response(10, "p1"),
            added(20),
            decided(20, &["p1", "p2"]),
        ],
        t(21),
    )
    .await;
    let before = h.store.load().await.expect("load");
    let reopened = h.reopen().await;
    assert_eq!(reopened.load().await.expect("load"), before);
    assert_eq!(before.checkpoint, Some(t(21)));
    assert_eq!(before.pending, vec![pending(10, &["p1"])]);
    assert_eq!(before.unsent, vec![verdict(20, &["p1", "p2"], false)]);
}

async fn large_runs_are_applied_in_one_call(h: Harness) {
    // More rows than one multi-row statement holds, on every table.
    let mut first = Vec::new();
    for request in 1..=1_200u64 {
        first.push(added(request));
        first.push(response(request, "p1"));
    }
    apply_ok(&*h.store, &first, t(1_200)).await;
    let mut second = Vec::new();
    for request in 1..=1_100u64 {
        second.push(decided(request, &["p1", "p2"]));
    }
    apply_ok(&*h.store, &second, t(1_300)).await;
    let ids: Vec<Timestamp> = (1..=1_050u64).map(t).collect();
    h.store.mark_verdicts_sent(&ids).await.expect("mark sent");
    let snapshot = h.store.load().await.expect("load");
    assert_eq!(snapshot.pending.len(), 100);
    assert!(snapshot.pending.iter().all(|p| p.responses.len() == 1));
    assert_eq!(snapshot.unsent.len(), 50);
    assert_eq!(snapshot.unsent[0].request_id, t(1_051));
}

async fn backend_status_reports_a_writable_database(h: Harness) {
    let status = h.store.backend_status().await.expect("status");
    assert!(!status.read_only, "{status:?}");
}

conformance!(
    "mediator":
    a_new_store_is_empty,
    pending_requests_and_responses_round_trip,
    deciding_replaces_the_pending_request_with_an_unsent_verdict,
    sent_verdicts_are_no_longer_unsent_and_can_be_pruned,
    a_failed_apply_changes_nothing,
    the_checkpoint_never_moves_backwards,
    reopening_keeps_everything,
    large_runs_are_applied_in_one_call,
    backend_status_reports_a_writable_database,
);

// ---------------------------------------------------------------------------------------------
// PostgreSQL only.

#[tokio::test]
async fn postgres_unreachable_is_transient() {
    assert_unreachable_postgres_is_transient::<dyn MediatorStore>().await;
}

#[tokio::test]
async fn postgres_read_only_database_is_reported_and_refuses_writes() {
    let (_, url) = open_own_postgres::<dyn MediatorStore>("mediator_read_only").await;
    let read_only =
        reopen_with_setting::<dyn MediatorStore>(&url, "default_transaction_read_only = on").await;
    assert!(read_only.backend_status().await.expect("status").read_only);
    let write = read_only.apply(&[added(1)], t(1)).await;
    assert!(
        matches!(&write, Err(error @ StoreError::NoWriter(_)) if error.to_string().contains("read-only")),
        "{write:?}"
    );
    assert_eq!(
        read_only.load().await.expect("reads still work"),
        MediatorSnapshot::default()
    );
}
