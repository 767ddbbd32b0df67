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
use meridian_sequencer::metrics::{SequencerMetrics, TailSourceLabel};
use meridian_sequencer::reader::{spawn_subscription, ReaderContext, Subscription};
use meridian_sequencer::tail::{OwnCommit, ReaderTail};
use meridian_store::{
    InstanceClaim, MemberRecord, MemberSeq, NewEvent, RoutedEvent, SequencerStore,
    SqlSequencerStore,
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
        let metrics = SequencerMetrics::register(&mut Registry::default());
        let tail = ReaderTail::with_metrics(&metrics);
        tail.start(store.clone(), safe_point_rx, shutdown.clone());
        let context = ReaderContext {
            store: store.clone(),
            directory: Arc::new(
                MemberDirectory::load(store.clone())
                    .await
                    .expect("directory"),
            ),
            tail,
            metrics,
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
        let event = self.event(ts, sender, envelopes);
        self.store
            .write_events(I0, self.incarnation, &[event], t(ts))
            .await
            .expect("write");
        self.safe_point.send_replace(t(ts));
    }

    /// As the writer commits: writes, hands the commit to the tail (its chain continuing from
    /// `after`), then publishes the safe point the commit read.
    async fn commit_reported(
        &self,
        after: u64,
        ts: u64,
        sender: &str,
        envelopes: &[&[&str]],
    ) -> Timestamp {
        let event = self.event(ts, sender, envelopes);
        let committed = self
            .store
            .write_events(I0, self.incarnation, std::slice::from_ref(&event), t(ts))
            .await
            .expect("write");
        self.context.tail.own_commit(OwnCommit {
            after: Some(t(after)),
            watermark: t(ts),
            events: vec![RoutedEvent::from(event)],
            safe_point: committed.safe_point,
            others_latest_event: committed.others_latest_event,
        });
        self.safe_point.send_replace(committed.safe_point);
        committed.safe_point
    }

    fn tail_advances(&self, source: &'static str) -> u64 {
        self.context
            .metrics
            .tail_advances
            .get_or_create(&TailSourceLabel { source })
            .get()
    }

    fn event(&self, ts: u64, sender: &str, envelopes: &[&[&str]]) -> NewEvent {
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
        NewEvent {
            timestamp: t(ts),
            sender: self.seq(sender),
            message_id: MessageId::new(format!("m{ts}")).expect("message id"),
            max_sequencing_time: Timestamp::MAX,
            recipients,
            batch: batch.encode_to_vec(),
        }
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

/// A single writer's commits reach the subscribers without the tail reading them back; once
/// another instance has written, the tail reads the store again, and every stream stays
/// exactly its member's history.
#[tokio::test]
async fn a_single_writers_commits_are_served_without_reading_them_back() {
    let world = World::new().await;
    let mut a = world.subscribe("a", None);
    let mut b = world.subscribe("b", None);
    let start = world.store.instances().await.expect("instances")[0]
        .watermark
        .as_micros();
    let mut after = start;
    for ts in (start + 10..start + 110).step_by(10) {
        world.commit_reported(after, ts, "a", &[&["a", "b"]]).await;
        after = ts;
    }
    assert_eq!(take(&mut a, 10).await.len(), 10);
    assert_eq!(take(&mut b, 10).await.len(), 10);
    let (from_store, from_own) = (
        world.tail_advances("store"),
        world.tail_advances("own_writes"),
    );
    assert!(from_own >= 1, "the commits came from the writer");

    // Another instance writes: its event is only in the store, so the tail reads it there.
    let peer = world
        .store
        .start_instance(
            InstanceIndex(1),
            t(after),
            InstanceClaim::Start {
                live_after: Timestamp::MAX,
            },
        )
        .await
        .expect("start peer");
    let peer_ts = peer.watermark.as_micros() + 1;
    let peer_event = world.event(peer_ts, "b", &[&["a"]]);
    world
        .store
        .write_events(
            InstanceIndex(1),
            peer.incarnation,
            &[peer_event],
            t(peer_ts + 100),
        )
        .await
        .expect("peer write");
    let own_ts = peer_ts + 100;
    let safe_point = world
        .commit_reported(after, own_ts, "a", &[&["a", "b"]])
        .await;
    assert_eq!(safe_point, t(own_ts));
    assert_eq!(
        take(&mut a, 2)
            .await
            .iter()
            .map(|e| e.0)
            .collect::<Vec<_>>(),
        vec![peer_ts, own_ts]
    );
    assert_eq!(take(&mut b, 1).await[0].0, own_ts);
    assert!(
        world.tail_advances("store") > from_store,
        "the peer's event was read"
    );
    assert_eq!(
        world.tail_advances("own_writes"),
        from_own,
        "not from the writer"
    );
    for stream in [&mut a, &mut b] {
        assert_quiet(stream).await;
    }
}
