//! Subscriptions served by the shared reader tail, on a real (SQLite) store: members starting
//! from the beginning, from an old timestamp and at the tail all receive exactly their
//! member's stream, envelopes filtered and message ids only to the sender; once they are at
//! the tail, new commits cost no store read per subscriber.

use std::sync::Arc;
use std::time::Duration;

use meridian_core::crypto::SigningKey;
use meridian_core::{InstanceIndex, MemberId, MessageId, Timestamp};
use meridian_proto::v1;
use meridian_sequencer::directory::MemberDirectory;
use meridian_sequencer::metrics::SequencerMetrics;
use meridian_sequencer::reader::{spawn_subscription, ReaderContext, Subscription};
use meridian_sequencer::tail::ReaderTail;
use meridian_store::{
    InstanceClaim, MemberRecord, MemberSeq, NewEvent, SequencerStore, SqlSequencerStore,
};
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

const I0: InstanceIndex = InstanceIndex(0);

fn t(micros: u64) -> Timestamp {
    Timestamp::from_micros(micros)
}

struct World {
    store: Arc<dyn SequencerStore>,
    members: Vec<MemberRecord>,
    incarnation: meridian_store::Incarnation,
    safe_point: watch::Sender<Timestamp>,
    context: ReaderContext,
    _dir: tempfile::TempDir,
}

impl World {
    async fn new() -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn SequencerStore> = Arc::new(
            SqlSequencerStore::open(&dir.path().join("sequencer.db"))
                .await
                .expect("open store"),
        );
        let mut members = Vec::new();
        for (seed, name) in ["a", "b", "c"].into_iter().enumerate() {
            let key = SigningKey::from_seed([seed as u8 + 1; 32]).public_key();
            let (record, _) = store
                .register_member(&MemberId::new(name).expect("id"), &key, t(1))
                .await
                .expect("register");
            members.push(record);
        }
        let start = store
            .start_instance(
                I0,
                t(1_000),
                InstanceClaim::Start {
                    live_after: Timestamp::MAX,
                },
            )
            .await
            .expect("start instance");
        let (safe_point, safe_point_rx) = watch::channel(Timestamp::MIN);
        let shutdown = CancellationToken::new();
        let context = ReaderContext {
            store: store.clone(),
            directory: Arc::new(
                MemberDirectory::load(store.clone())
                    .await
                    .expect("directory"),
            ),
            tail: ReaderTail::spawn(store.clone(), safe_point_rx, shutdown.clone()),
            metrics: SequencerMetrics::register(&mut Registry::default()),
            shutdown,
        };
        World {
            store,
            members,
            incarnation: start.incarnation,
            safe_point,
            context,
            _dir: dir,
        }
    }

    fn seq(&self, name: &str) -> MemberSeq {
        self.record(name).seq
    }

    fn record(&self, name: &str) -> MemberRecord {
        self.members
            .iter()
            .find(|m| m.id.as_str() == name)
            .expect("member")
            .clone()
    }

    /// Commits an event from `sender` with one envelope per recipient list, and moves the safe
    /// point over it.
    async fn commit(&self, ts: u64, sender: &str, envelopes: &[&[&str]]) {
        let batch = v1::Batch {
            envelopes: envelopes
                .iter()
                .map(|recipients| v1::Envelope {
                    recipients: recipients.iter().map(|r| r.to_string()).collect(),
                    payload: format!("{ts}:{recipients:?}").into_bytes(),
                })
                .collect(),
        };
        let mut recipients: Vec<MemberSeq> = envelopes
            .iter()
            .flat_map(|r| r.iter().map(|name| self.seq(name)))
            .collect();
        recipients.sort();
        recipients.dedup();
        let event = NewEvent {
            timestamp: t(ts),
            sender: self.seq(sender),
            message_id: MessageId::new(format!("m{ts}")).expect("message id"),
            max_sequencing_time: Timestamp::MAX,
            recipients,
            batch: batch.encode_to_vec(),
        };
        self.store
            .write_events(I0, self.incarnation, &[event], t(ts))
            .await
            .expect("write");
        self.safe_point.send_replace(t(ts));
    }

    fn subscribe(
        &self,
        name: &str,
        after: Option<u64>,
    ) -> mpsc::Receiver<Result<v1::SequencedEvent, tonic::Status>> {
        spawn_subscription(
            self.context.clone(),
            Subscription {
                member: self.record(name),
                after: after.map(t),
                keep_alive: None,
            },
        )
    }

    fn store_reads(&self) -> u64 {
        self.context.metrics.store_reads.get()
    }
}

/// (timestamp, previous timestamp, message id, payloads) of the next `n` events.
async fn take(
    stream: &mut mpsc::Receiver<Result<v1::SequencedEvent, tonic::Status>>,
    n: usize,
) -> Vec<(u64, Option<u64>, String, Vec<String>)> {
    let mut events = Vec::new();
    while events.len() < n {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.recv())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("no error");
        events.push((
            event.timestamp_us,
            event.previous_timestamp_us,
            event.message_id,
            event
                .envelopes
                .iter()
                .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
                .collect(),
        ));
    }
    events
}

async fn assert_quiet(stream: &mut mpsc::Receiver<Result<v1::SequencedEvent, tonic::Status>>) {
    let next = tokio::time::timeout(Duration::from_millis(200), stream.recv()).await;
    assert!(next.is_err(), "nothing more expected: {next:?}");
}

#[tokio::test]
async fn subscriptions_from_the_store_and_the_tail_get_exactly_their_stream() {
    let world = World::new().await;
    // Before the tail has started: served from the store later.
    world.commit(1_010, "a", &[&["a", "b"], &["c"]]).await;
    world.commit(1_020, "b", &[&["b"]]).await;

    let mut a = world.subscribe("a", None);
    let mut b = world.subscribe("b", None);
    assert_eq!(
        take(&mut a, 1).await,
        vec![(
            1_010,
            None,
            "m1010".into(),
            vec!["1010:[\"a\", \"b\"]".into()]
        )]
    );
    assert_eq!(take(&mut b, 2).await.len(), 2);

    world.commit(1_030, "c", &[&["a"], &["b", "c"]]).await;
    world.commit(1_040, "a", &[&["a", "c"]]).await;
    assert_eq!(
        take(&mut a, 2).await,
        vec![
            (
                1_030,
                Some(1_010),
                String::new(),
                vec!["1030:[\"a\"]".into()]
            ),
            (
                1_040,
                Some(1_030),
                "m1040".into(),
                vec!["1040:[\"a\", \"c\"]".into()]
            ),
        ]
    );
    assert_eq!(
        take(&mut b, 1).await,
        vec![(
            1_030,
            Some(1_020),
            String::new(),
            vec!["1030:[\"b\", \"c\"]".into()]
        )]
    );

    // Resuming from an old timestamp (not one of c's events) reads the store, then joins the
    // tail: c's previous event before 1_015 is 1_010.
    let mut c = world.subscribe("c", Some(1_015));
    assert_eq!(
        take(&mut c, 2).await,
        vec![
            (
                1_030,
                Some(1_010),
                "m1030".into(),
                vec!["1030:[\"b\", \"c\"]".into()]
            ),
            (
                1_040,
                Some(1_030),
                String::new(),
                vec!["1040:[\"a\", \"c\"]".into()]
            ),
        ]
    );

    // Everyone is at the tail now: further commits cost the subscribers no store read.
    let reads = world.store_reads();
    for ts in (1_050..1_150).step_by(10) {
        world.commit(ts, "b", &[&["a", "b", "c"]]).await;
    }
    for (stream, previous) in [(&mut a, 1_040), (&mut b, 1_030), (&mut c, 1_040)] {
        let events = take(stream, 10).await;
        let chain: Vec<(u64, Option<u64>)> = events.iter().map(|e| (e.0, e.1)).collect();
        let expected: Vec<(u64, Option<u64>)> = (1_050..1_150)
            .step_by(10)
            .map(|ts| (ts, Some(if ts == 1_050 { previous } else { ts - 10 })))
            .collect();
        assert_eq!(chain, expected);
    }
    assert_eq!(world.store_reads(), reads, "served from the tail");
    for stream in [&mut a, &mut b, &mut c] {
        assert_quiet(stream).await;
    }

    // Each stream equals the store's history of its member.
    let mut all = world.subscribe("b", None);
    let from_start = take(&mut all, 13).await;
    let stored = world
        .store
        .read_events(world.seq("b"), None, Timestamp::MAX, 1_000)
        .await
        .expect("read");
    assert_eq!(
        from_start.iter().map(|e| (e.0, e.1)).collect::<Vec<_>>(),
        stored
            .iter()
            .map(|e| (
                e.timestamp.as_micros(),
                e.previous_timestamp.map(Timestamp::as_micros)
            ))
            .collect::<Vec<_>>()
    );
    assert_quiet(&mut all).await;
}
