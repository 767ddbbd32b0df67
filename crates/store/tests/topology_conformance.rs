//! The topology store conformance suite: the `TopologyStore` contract, run against SQLite (a
//! temp file) and PostgreSQL (a fresh database on the test binary's shared throwaway server).
//! The topology manager's crash recovery rests on these behaviours: intents are recorded before
//! sending, serials are gap-free with at most one open intent, and completed rows never change.

use harness::t;
use meridian_core::topology::SignedTopologyTransaction;
use meridian_store::{TopologyRecord, TopologyStore, TopologyStoreError};

#[macro_use]
mod harness;

type Harness = harness::StoreHarness<dyn TopologyStore>;

fn tx(serial: u64) -> SignedTopologyTransaction {
    SignedTopologyTransaction {
        transaction_json: format!("{{\"serial\":{serial}}}"),
        signature: format!("sig-{serial}"),
    }
}

fn complete(serial: u64, deadline: u64, effective: u64) -> TopologyRecord {
    TopologyRecord {
        serial,
        signed: tx(serial),
        max_sequencing_time: t(deadline),
        effective: Some(t(effective)),
    }
}

async fn intents_complete_in_order_and_survive_reopening(h: Harness) {
    let store = h.store.as_ref();
    assert!(store.records().await.expect("records").is_empty());
    assert!(store
        .record_intent(1, &tx(1), t(100))
        .await
        .expect("intent"));
    let open = store.records().await.expect("records");
    assert_eq!(
        open,
        vec![TopologyRecord {
            serial: 1,
            signed: tx(1),
            max_sequencing_time: t(100),
            effective: None,
        }]
    );
    store.complete(1, t(50)).await.expect("complete");
    assert!(store
        .record_intent(2, &tx(2), t(200))
        .await
        .expect("intent"));
    store.complete(2, t(150)).await.expect("complete");

    let expected = vec![complete(1, 100, 50), complete(2, 200, 150)];
    assert_eq!(store.records().await.expect("records"), expected);
    let again = h.reopen().await;
    assert_eq!(again.records().await.expect("records"), expected);
}

async fn serials_are_gap_free_with_one_open_intent(h: Harness) {
    let store = h.store.as_ref();
    assert!(matches!(
        store.record_intent(2, &tx(2), t(1)).await,
        Err(TopologyStoreError::SerialGap {
            serial: 2,
            highest: 0
        })
    ));
    assert!(matches!(
        store.record_intent(0, &tx(0), t(1)).await,
        Err(TopologyStoreError::SerialGap { serial: 0, .. })
    ));
    store
        .record_intent(1, &tx(1), t(100))
        .await
        .expect("intent");
    let err = store
        .record_intent(2, &tx(2), t(100))
        .await
        .expect_err("must be refused");
    assert!(
        matches!(
            err,
            TopologyStoreError::Pending {
                pending: 1,
                serial: 2
            }
        ),
        "{err}"
    );
    // A retry of the identical intent (after an ambiguous commit) is a no-op...
    assert!(!store.record_intent(1, &tx(1), t(999)).await.expect("retry"));
    // ...while another transaction under a taken serial is refused, even from another store.
    let other = h.reopen().await;
    let mut forged = tx(1);
    forged.transaction_json.push(' ');
    assert!(matches!(
        other.record_intent(1, &forged, t(100)).await,
        Err(TopologyStoreError::SerialTaken { serial: 1 })
    ));
    store.complete(1, t(40)).await.expect("complete");
    assert!(matches!(
        store.record_intent(3, &tx(3), t(1)).await,
        Err(TopologyStoreError::SerialGap {
            serial: 3,
            highest: 1
        })
    ));
    let records = store.records().await.expect("records");
    assert_eq!(
        records,
        vec![complete(1, 100, 40)],
        "refusals change nothing"
    );
}

async fn completed_rows_never_change(h: Harness) {
    let store = h.store.as_ref();
    assert!(matches!(
        store.complete(1, t(5)).await,
        Err(TopologyStoreError::UnknownSerial { serial: 1 })
    ));
    store
        .record_intent(1, &tx(1), t(100))
        .await
        .expect("intent");
    store.renew_intent(1, t(300)).await.expect("renew");
    store.complete(1, t(250)).await.expect("complete");
    store
        .complete(1, t(250))
        .await
        .expect("completing again is idempotent");
    let err = store
        .complete(1, t(251))
        .await
        .expect_err("must be refused");
    assert!(
        matches!(
            err,
            TopologyStoreError::AlreadyComplete { serial: 1, effective } if effective == t(250)
        ),
        "{err}"
    );
    assert!(matches!(
        store.renew_intent(1, t(400)).await,
        Err(TopologyStoreError::AlreadyComplete { serial: 1, .. })
    ));
    assert!(matches!(
        store.renew_intent(7, t(400)).await,
        Err(TopologyStoreError::UnknownSerial { serial: 7 })
    ));
    assert_eq!(
        store.records().await.expect("records"),
        vec![complete(1, 300, 250)]
    );
}

async fn concurrent_managers_cannot_both_take_a_serial(h: Harness) {
    let a = h.store.clone();
    let b = h.reopen().await;
    let mut other = tx(1);
    other.signature = "another manager's".into();
    let (ra, rb) = tokio::join!(async { a.record_intent(1, &tx(1), t(10)).await }, async {
        b.record_intent(1, &other, t(10)).await
    },);
    let won = [ra.is_ok(), rb.is_ok()];
    assert_eq!(
        won.iter().filter(|ok| **ok).count(),
        1,
        "exactly one wins: {ra:?} {rb:?}"
    );
    let loser = if ra.is_ok() { rb } else { ra };
    assert!(
        matches!(loser, Err(TopologyStoreError::SerialTaken { serial: 1 })),
        "{loser:?}"
    );
    assert_eq!(h.store.records().await.expect("records").len(), 1);
}

conformance!(
    "topology":
    intents_complete_in_order_and_survive_reopening,
    serials_are_gap_free_with_one_open_intent,
    completed_rows_never_change,
    concurrent_managers_cannot_both_take_a_serial,
);
