//! The topology manager against a real sequencer, both running in this process on SQLite temp
//! files: changes are registered and published to the members they concern, retries are
//! idempotent, bad input gets a precise status and changes nothing, the sequencer admits only
//! owner-signed members, and a restart finishes a change that was recorded but not confirmed.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{authorized, get_topology, loopback, time_until_ready, SequencerThread, TOKEN};
use futures::StreamExt;
use meridian_client::{ClientError, SequencerClient, SequencerClientConfig, Subscription};
use meridian_core::crypto::{PublicKey, SigningKey};
use meridian_core::ledger::Permission;
use meridian_core::protocol::ProtocolMessage;
use meridian_core::sequencing::{Envelope, SequencedEvent, Submission};
use meridian_core::topology::{
    HostingRequest, SignedTopologyTransaction, TopologyMapping, TopologyState, TopologyTransaction,
};
use meridian_core::{MemberId, MessageId, ParticipantId, PartyId, Timestamp};
use meridian_node::config::Endpoints;
use meridian_proto::v1;
use meridian_proto::v1::sequencer_admin_service_client::SequencerAdminServiceClient;
use meridian_proto::v1::topology_admin_service_client::TopologyAdminServiceClient;
use meridian_store::sqlite::SqliteSequencerStore;
use meridian_store::topology::SqliteTopologyStore;
use meridian_store::{SequencerStore, StorageConfig, TopologyStore};
use meridian_testkit::free_port;
use meridian_topology::TopologyManagerConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request};

struct Node {
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Node {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    owner: SigningKey,
    sequencer: SequencerThread,
    manager: Option<Node>,
    manager_config: TopologyManagerConfig,
}

async fn wait_ready(admin: &str) {
    time_until_ready(admin, Instant::now()).await;
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let owner_key_file = dir.path().join("owner.key");
        let owner = SigningKey::generate();
        meridian_node::keys::write_key(&owner_key_file, &owner).unwrap();

        let sequencer = SequencerThread::start(dir.path(), &owner.public_key()).await;

        let manager_config = TopologyManagerConfig {
            admin_token: Some(TOKEN.to_owned()),
            ..TopologyManagerConfig::new(
                owner_key_file,
                dir.path().join("manager.key"),
                Endpoints::one(sequencer.endpoint.clone()),
                loopback(free_port()),
                loopback(free_port()),
                StorageConfig::Sqlite {
                    path: dir.path().join("topology.db"),
                },
            )
        };
        let mut cluster = Cluster {
            dir,
            owner,
            sequencer,
            manager: None,
            manager_config,
        };
        cluster.start_manager().await;
        cluster
    }

    async fn start_manager(&mut self) {
        let stop = CancellationToken::new();
        let task = tokio::spawn(meridian_topology::run(
            self.manager_config.clone(),
            stop.clone(),
        ));
        wait_ready(&self.manager_config.admin_address.to_string()).await;
        self.manager = Some(Node { stop, task });
    }

    async fn stop_manager(&mut self) {
        if let Some(manager) = self.manager.take() {
            manager.stop().await;
        }
    }

    async fn admin(&self) -> TopologyAdminServiceClient<Channel> {
        TopologyAdminServiceClient::connect(format!(
            "http://{}",
            self.manager_config.listen_address
        ))
        .await
        .unwrap()
    }

    fn manager_key(&self) -> SigningKey {
        meridian_node::keys::load_or_create_key(&self.dir.path().join("manager.key")).unwrap()
    }

    fn topology_db(&self) -> PathBuf {
        self.dir.path().join("topology.db")
    }

    async fn shutdown(mut self) {
        self.stop_manager().await;
        self.sequencer.stop().await;
    }

    async fn topology(&self) -> Vec<(u64, TopologyTransaction)> {
        let response = get_topology(&self.manager_config.listen_address.to_string()).await;
        assert_eq!(
            response.owner_public_key,
            self.owner.public_key().to_string()
        );
        response
            .entries
            .into_iter()
            .map(|entry| {
                let signed = SignedTopologyTransaction {
                    transaction_json: entry.transaction_json,
                    signature: entry.signature,
                };
                (
                    entry.effective_us,
                    signed.verify(&self.owner.public_key()).unwrap(),
                )
            })
            .collect()
    }

    /// A client of the sequencer authenticating as member `name` with `key`.
    async fn sequencer_client(&self, name: &str, key: SigningKey) -> SequencerClient {
        let config = SequencerClientConfig::new(self.sequencer.endpoint.clone(), id(name), key);
        SequencerClient::connect(config).await.unwrap()
    }

    /// Starts the manager, which finishes what it finds recorded, and stops it again once
    /// it answers; returns the history it answered with.
    async fn history_after_restart(&mut self) -> Vec<(u64, TopologyTransaction)> {
        self.start_manager().await;
        let history = self.topology().await;
        self.stop_manager().await;
        history
    }

    async fn sequencer_members(&self) -> Vec<String> {
        SequencerAdminServiceClient::connect(self.sequencer.endpoint.clone())
            .await
            .unwrap()
            .list_members(v1::ListMembersRequest {})
            .await
            .unwrap()
            .into_inner()
            .members
            .into_iter()
            .map(|m| m.member)
            .collect()
    }
}

fn add_participant(name: &str, key: &PublicKey) -> Request<v1::AddParticipantRequest> {
    authorized(v1::AddParticipantRequest {
        participant: name.into(),
        public_key: key.to_bytes().to_vec(),
    })
}

fn add_mediator(name: &str, key: &PublicKey) -> Request<v1::AddMediatorRequest> {
    authorized(v1::AddMediatorRequest {
        mediator: name.into(),
        public_key: key.to_bytes().to_vec(),
    })
}

fn allocate(
    party: &str,
    participant: &str,
    permission: &str,
) -> Request<v1::TopologyAllocatePartyRequest> {
    authorized(v1::TopologyAllocatePartyRequest {
        party: party.into(),
        participant: participant.into(),
        permission: permission.into(),
        ..Default::default()
    })
}

/// The next event of `events`, within 10 s.
async fn next_event(events: &mut Subscription) -> SequencedEvent {
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

fn id(name: &str) -> MemberId {
    MemberId::new(name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_registered_published_and_idempotent() {
    let cluster = Cluster::start().await;
    let mut admin = cluster.admin().await;

    // Serial 1 is the manager's own registration, published at start-up.
    let history = cluster.topology().await;
    assert_eq!(history.len(), 1);
    assert!(matches!(
        history[0].1.mapping,
        TopologyMapping::TopologyManager { .. }
    ));

    let p1 = SigningKey::generate();
    let added = accepted(
        admin
            .add_participant(add_participant("p1", &p1.public_key()))
            .await,
    );
    assert!(added.changed);
    assert_eq!(added.serial, 2);
    assert!(added.effective_us > history[0].0);

    // Registered at the sequencer: p1 can authenticate, and its stream starts with its own
    // admission, sequenced at the effective time.
    let client = cluster.sequencer_client("p1", p1.clone()).await;
    let mut events = client.subscribe(None);
    let first = next_event(&mut events).await;
    assert_eq!(first.timestamp.as_micros(), added.effective_us);
    assert_eq!(first.sender, id("topology-manager"));
    let ProtocolMessage::Topology(signed) =
        ProtocolMessage::decode(&first.envelopes[0].payload).unwrap()
    else {
        panic!("expected a topology message");
    };
    assert_eq!(
        signed.verify(&cluster.owner.public_key()).unwrap().serial,
        2
    );

    let hosted = accepted(
        admin
            .allocate_party(allocate("alice", "p1", "submission"))
            .await,
    );
    assert_eq!((hosted.serial, hosted.changed), (3, true));
    let second = next_event(&mut events).await;
    assert_eq!(second.timestamp.as_micros(), hosted.effective_us);

    // Retries answer with the original serial and effective time.
    let again = accepted(
        admin
            .allocate_party(allocate("alice", "p1", "submission"))
            .await,
    );
    assert_eq!(again, unchanged(hosted));
    let again = accepted(
        admin
            .add_participant(add_participant("p1", &p1.public_key()))
            .await,
    );
    assert_eq!(again, unchanged(added));

    // A different permission is an update.
    let updated = accepted(
        admin
            .allocate_party(allocate("alice", "p1", "observation"))
            .await,
    );
    assert_eq!((updated.serial, updated.changed), (4, true));

    // GetTopology: everything, ordered by effective time, and a member catching up ends with
    // the same topology.
    let history = cluster.topology().await;
    let serials: Vec<u64> = history.iter().map(|(_, t)| t.serial).collect();
    assert_eq!(serials, vec![1, 2, 3, 4]);
    assert!(history.windows(2).all(|w| w[0].0 < w[1].0));
    let mut state = TopologyState::new(cluster.owner.public_key());
    let endpoint = format!("http://{}", cluster.manager_config.listen_address);
    assert_eq!(
        meridian_client::topology::sync_topology(std::slice::from_ref(&endpoint), &mut state)
            .await
            .unwrap(),
        4
    );
    let alice = PartyId::new("alice").unwrap();
    let p1_id = ParticipantId::new("p1").unwrap();
    assert_eq!(
        state.latest().permission(&alice, &p1_id),
        Some(Permission::Observation)
    );
    assert_eq!(
        state
            .snapshot_at(Timestamp::from_micros(updated.effective_us))
            .permission(&alice, &p1_id),
        Some(Permission::Submission),
        "the update takes effect only after its effective time"
    );

    drop(events);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_clear_statuses_and_change_nothing() {
    let cluster = Cluster::start().await;
    let mut admin = cluster.admin().await;
    let p1 = SigningKey::generate();
    admin
        .add_participant(add_participant("p1", &p1.public_key()))
        .await
        .unwrap();
    let before = cluster.topology().await;
    let members_before = cluster.sequencer_members().await;

    let fresh = SigningKey::generate().public_key();
    let unauthenticated = admin
        .add_participant(v1::AddParticipantRequest {
            participant: "p2".into(),
            public_key: fresh.to_bytes().to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
    let mut wrong = add_participant("p2", &fresh);
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(
        admin.add_participant(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let bad_key = authorized(v1::AddParticipantRequest {
        participant: "p2".into(),
        public_key: vec![1, 2, 3],
    });
    for (result, needle) in [
        (
            admin.add_participant(add_participant("", &fresh)).await,
            "invalid `participant`",
        ),
        (admin.add_participant(bad_key).await, "invalid `public_key`"),
        (
            admin.add_mediator(add_mediator("m 1", &fresh)).await,
            "invalid `mediator`",
        ),
        (
            admin.allocate_party(allocate("alice", "p1", "owner")).await,
            "invalid `permission`",
        ),
        (
            admin.allocate_party(allocate("", "p1", "submission")).await,
            "invalid `party`",
        ),
    ] {
        expect_rejected(result, Code::InvalidArgument, needle);
    }
    let unknown_host = allocate("alice", "nowhere", "submission");
    let needle = "participant nowhere is not registered";
    expect_rejected(
        admin.allocate_party(unknown_host).await,
        Code::FailedPrecondition,
        needle,
    );
    let (other_key, manager_name) = (
        add_participant("p1", &fresh),
        add_participant("topology-manager", &fresh),
    );
    for (result, needle) in [
        (
            admin.add_participant(other_key).await,
            "already registered with a different key",
        ),
        (
            admin.add_mediator(add_mediator("p1", &fresh)).await,
            "already taken by the participant",
        ),
        (
            admin.add_participant(manager_name).await,
            "already taken by the topology manager",
        ),
    ] {
        expect_rejected(result, Code::AlreadyExists, needle);
    }

    // The sequencer itself admits only owner-signed members.
    let refused =
        meridian_client::register_member(&cluster.sequencer.endpoint, &id("intruder"), &fresh)
            .await
            .unwrap_err();
    assert!(
        matches!(&refused, ClientError::Rejected { code: Code::Unauthenticated, message } if message.contains("owner-signed")),
        "{refused:?}"
    );
    let forged = SignedTopologyTransaction::sign(
        &TopologyTransaction {
            serial: 99,
            mapping: TopologyMapping::Participant {
                participant: ParticipantId::new("intruder").unwrap(),
                public_key: fresh.to_string(),
            },
        },
        &SigningKey::generate(),
    );
    let refused = meridian_client::register_member_with_topology(
        std::slice::from_ref(&cluster.sequencer.endpoint),
        &forged,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            refused,
            ClientError::Rejected {
                code: Code::Unauthenticated,
                ..
            }
        ),
        "{refused:?}"
    );

    assert_eq!(
        cluster.topology().await,
        before,
        "bad input changes nothing"
    );
    assert_eq!(cluster.sequencer_members().await, members_before);
    cluster.shutdown().await;
}

/// An AllocateParty request `requested_by` signs with `key`, made at `at`: the form a
/// participant's Ledger API sends, without the admin token.
fn signed_allocation(
    party: &str,
    participant: &str,
    requested_by: &str,
    key: &SigningKey,
    at: Timestamp,
) -> Request<v1::TopologyAllocatePartyRequest> {
    let hosting = HostingRequest {
        party: PartyId::new(party).unwrap(),
        participant: ParticipantId::new(participant).unwrap(),
        permission: Permission::Submission,
        requested_by: ParticipantId::new(requested_by).unwrap(),
        requested_at: at,
    };
    Request::new(v1::TopologyAllocatePartyRequest {
        party: party.into(),
        participant: participant.into(),
        permission: "submission".into(),
        requested_by: requested_by.into(),
        requested_at_us: at.as_micros(),
        signature: hosting.sign(key).to_bytes().to_vec(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn party_hosting_needs_its_host_or_the_owner() {
    let cluster = Cluster::start().await;
    let mut admin = cluster.admin().await;
    let (p1, p2, p3) = (
        SigningKey::generate(),
        SigningKey::generate(),
        SigningKey::generate(),
    );
    for (name, key) in [("p1", &p1), ("p2", &p2), ("p3", &p3)] {
        accepted(
            admin
                .add_participant(add_participant(name, &key.public_key()))
                .await,
        );
    }

    // A new party, by its first host's signed request (no admin token needed); a retry is
    // unchanged.
    let bob = accepted(
        admin
            .allocate_party(signed_allocation("bob", "p3", "p3", &p3, Timestamp::now()))
            .await,
    );
    assert!(bob.changed);
    let again = accepted(
        admin
            .allocate_party(signed_allocation("bob", "p3", "p3", &p3, Timestamp::now()))
            .await,
    );
    assert_eq!(again, unchanged(bob));
    let before = cluster.topology().await;

    // The takeover and its variants: refused, and nothing is recorded or published.
    expect_rejected(
        admin
            .allocate_party(signed_allocation("bob", "p1", "p1", &p1, Timestamp::now()))
            .await,
        Code::PermissionDenied,
        "party bob is hosted on p3 (submission); p1 is not one of its hosts",
    );
    expect_rejected(
        admin
            .allocate_party(signed_allocation(
                "carol",
                "p2",
                "p1",
                &p1,
                Timestamp::now(),
            ))
            .await,
        Code::PermissionDenied,
        "only p2 itself may become its first host",
    );
    expect_rejected(
        admin
            .allocate_party(signed_allocation("bob", "p1", "p3", &p1, Timestamp::now()))
            .await,
        Code::Unauthenticated,
        "`signature`: does not verify against the registered key of participant p3",
    );
    let stale = Timestamp::now().saturating_sub(Duration::from_secs(120));
    expect_rejected(
        admin
            .allocate_party(signed_allocation("bob", "p3", "p3", &p3, stale))
            .await,
        Code::Unauthenticated,
        "`requested_at_us`",
    );
    expect_rejected(
        admin
            .allocate_party(signed_allocation("bob", "p1", "p9", &p1, Timestamp::now()))
            .await,
        Code::Unauthenticated,
        "p9 is not a registered participant",
    );
    let mut unsigned = v1::TopologyAllocatePartyRequest {
        party: "bob".into(),
        participant: "p1".into(),
        permission: "submission".into(),
        ..Default::default()
    };
    expect_rejected(
        admin.allocate_party(Request::new(unsigned.clone())).await,
        Code::Unauthenticated,
        "Bearer <admin_token>",
    );
    unsigned.requested_by = "p1".into();
    unsigned.requested_at_us = Timestamp::now().as_micros();
    unsigned.signature = vec![1, 2, 3];
    expect_rejected(
        admin.allocate_party(Request::new(unsigned)).await,
        Code::Unauthenticated,
        "3 bytes are not an ed25519 signature",
    );
    assert_eq!(cluster.topology().await, before, "refusals change nothing");

    // bob's host may add a host; the owner (admin token) may too.
    let on_p1 = accepted(
        admin
            .allocate_party(signed_allocation("bob", "p1", "p3", &p3, Timestamp::now()))
            .await,
    );
    assert!(on_p1.changed);
    let on_p2 = accepted(
        admin
            .allocate_party(allocate("bob", "p2", "observation"))
            .await,
    );
    assert!(on_p2.changed);
    // The observing host cannot promote itself.
    expect_rejected(
        admin
            .allocate_party(signed_allocation("bob", "p2", "p2", &p2, Timestamp::now()))
            .await,
        Code::PermissionDenied,
        "p2 (observation)",
    );
    cluster.shutdown().await;
}

/// The answer to an admin call that must succeed.
fn accepted<T>(result: Result<tonic::Response<T>, tonic::Status>) -> T {
    result.unwrap().into_inner()
}

/// What a retry of the change answered with `first` answers: the same, but not a change.
fn unchanged(first: v1::TopologyChangeResponse) -> v1::TopologyChangeResponse {
    v1::TopologyChangeResponse {
        changed: false,
        ..first
    }
}

/// Asserts that `result` is an error with `code` whose message contains `needle`.
fn expect_rejected<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    needle: &str,
) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "{needle:?} in {status:?}"
    );
}

/// Plays the manager's part up to a crash: signs `mapping` as `serial`, registers the member,
/// records the intent with `deadline`, and sends it only if `send` — then "crashes" (the
/// effective time is never recorded). Returns the send's timestamp, if sent.
async fn crash_midway(
    cluster: &Cluster,
    serial: u64,
    mapping: TopologyMapping,
    deadline: Timestamp,
    send: bool,
) -> Option<Timestamp> {
    let signed =
        SignedTopologyTransaction::sign(&TopologyTransaction { serial, mapping }, &cluster.owner);
    meridian_client::register_member_with_topology(
        std::slice::from_ref(&cluster.sequencer.endpoint),
        &signed,
    )
    .await
    .unwrap();
    let store = SqliteTopologyStore::open(&cluster.topology_db())
        .await
        .unwrap();
    assert!(store
        .record_intent(serial, &signed, deadline)
        .await
        .unwrap());
    if !send {
        return None;
    }
    let manager = cluster
        .sequencer_client("topology-manager", cluster.manager_key())
        .await;
    let receipt = manager
        .send(Submission {
            sender: id("topology-manager"),
            message_id: MessageId::new(format!("topology-{serial}")).unwrap(),
            envelopes: vec![Envelope {
                recipients: vec![id("topology-manager")],
                payload: ProtocolMessage::Topology(signed).encode(),
            }],
            max_sequencing_time: deadline,
        })
        .await
        .unwrap();
    Some(receipt.timestamp)
}

fn mediator(name: &str) -> TopologyMapping {
    TopologyMapping::Mediator {
        mediator: id(name),
        public_key: SigningKey::generate().public_key().to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_finishes_changes_recorded_but_not_confirmed() {
    let mut cluster = Cluster::start().await;
    cluster.stop_manager().await;

    // Sent, answer lost, deadline still ahead: the re-send is deduplicated.
    let deadline = Timestamp::now().saturating_add(Duration::from_secs(30));
    let sent_at = crash_midway(&cluster, 2, mediator("m1"), deadline, true)
        .await
        .unwrap();
    let history = cluster.history_after_restart().await;
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].0, sent_at.as_micros(), "original timestamp kept");

    // Sent, deadline passed before the restart: found in the manager's own stream.
    let deadline = Timestamp::now().saturating_add(Duration::from_millis(1_500));
    let sent_at = crash_midway(&cluster, 3, mediator("m2"), deadline, true)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    // Forget the sequencer's deduplication entry (as its pruning does eventually), so that only
    // the stream search, not a deduplicated re-send, can yield the original timestamp.
    let sequencer_store = SqliteSequencerStore::open(&cluster.dir.path().join("sequencer.db"))
        .await
        .unwrap();
    assert_eq!(
        sequencer_store
            .prune_message_ids(Timestamp::now())
            .await
            .unwrap(),
        1
    );
    let history = cluster.history_after_restart().await;
    assert_eq!(history.len(), 3);
    assert_eq!(history[2].0, sent_at.as_micros(), "found, not sent twice");

    // Never sent, deadline passed: provably not sequenced, so sent now with a new deadline.
    let deadline = Timestamp::now().saturating_sub(Duration::from_secs(1));
    assert!(crash_midway(&cluster, 4, mediator("m3"), deadline, false)
        .await
        .is_none());
    cluster.start_manager().await;
    let history = cluster.topology().await;
    let serials: Vec<u64> = history.iter().map(|(_, t)| t.serial).collect();
    assert_eq!(serials, vec![1, 2, 3, 4]);
    assert!(history[3].0 > history[2].0);

    // And the manager goes on with the next serial.
    let added = cluster
        .admin()
        .await
        .add_participant(add_participant("p1", &SigningKey::generate().public_key()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((added.serial, added.changed), (5, true));
    cluster.shutdown().await;
}
