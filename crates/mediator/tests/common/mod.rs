//! Shared by the mediator's end-to-end tests: a real sequencer in-process (SQLite), a fake
//! topology manager serving a fixed signed history, and two participants played by the test
//! with plain sequencer clients (alice on p1, bob on p2).

// Test code: a failed unwrap is a failed test. Not every test file uses every helper.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use meridian_client::{register_member, SequencerClient, SequencerClientConfig, Subscription};
use meridian_core::crypto::{PublicKey, SigningKey, SigningPurpose};
use meridian_core::ledger::Permission;
use meridian_core::protocol::{
    ConfirmationResponse, InformeeMessage, LocalVerdict, ProtocolMessage, Signed, Verdict,
    VerdictOutcome,
};
use meridian_core::sequencing::{Envelope, Submission};
use meridian_core::topology::{SignedTopologyTransaction, TopologyMapping, TopologyTransaction};
use meridian_core::{MemberId, MessageId, ParticipantId, PartyId, Timestamp};
use meridian_mediator::MediatorConfig;
use meridian_node::config::{Endpoints, MemberEndpoints};
use meridian_proto::v1;
use meridian_proto::v1::topology_admin_service_server::{
    TopologyAdminService, TopologyAdminServiceServer,
};
use meridian_store::StorageConfig;
use meridian_testkit::free_port;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub const HASH: &str = "hash-of-the-request";
pub const RESPONSE_TIMEOUT_MS: u64 = 3_000;

pub struct FakeTopologyManager {
    pub entries: Vec<v1::SignedTopologyEntry>,
    pub owner: String,
}

#[tonic::async_trait]
impl TopologyAdminService for FakeTopologyManager {
    async fn add_participant(
        &self,
        _: Request<v1::AddParticipantRequest>,
    ) -> Result<Response<v1::TopologyChangeResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn add_mediator(
        &self,
        _: Request<v1::AddMediatorRequest>,
    ) -> Result<Response<v1::TopologyChangeResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn allocate_party(
        &self,
        _: Request<v1::TopologyAllocatePartyRequest>,
    ) -> Result<Response<v1::TopologyChangeResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_topology(
        &self,
        _: Request<v1::GetTopologyRequest>,
    ) -> Result<Response<v1::GetTopologyResponse>, Status> {
        Ok(Response::new(v1::GetTopologyResponse {
            owner_public_key: self.owner.clone(),
            entries: self.entries.clone(),
        }))
    }
}

pub fn member(name: &str) -> MemberId {
    MemberId::new(name).unwrap()
}

pub fn pid(name: &str) -> ParticipantId {
    ParticipantId::new(name).unwrap()
}

pub fn party(name: &str) -> PartyId {
    PartyId::new(name).unwrap()
}

pub async fn wait_ready(admin_port: u16) {
    let url = format!("http://127.0.0.1:{admin_port}/readyz");
    for _ in 0..200 {
        if let Ok(response) = reqwest::get(&url).await {
            if response.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = match reqwest::get(&url).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(error) => error.to_string(),
    };
    panic!("{url} never became ready: {body}");
}

/// The mediator's `/status`.
pub async fn status(admin_port: u16) -> serde_json::Value {
    reqwest::get(format!("http://127.0.0.1:{admin_port}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until the mediator has processed and stored everything up to `timestamp`.
pub async fn wait_processed(admin_port: u16, timestamp: Timestamp) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = status(admin_port).await;
        if status["last_processed_us"].as_u64() >= Some(timestamp.as_micros()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mediator never processed {timestamp}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct Participant {
    pub id: ParticipantId,
    pub key: SigningKey,
    pub client: SequencerClient,
    pub events: Subscription,
}

impl Participant {
    pub async fn send(&self, message_id: &str, message: &ProtocolMessage) -> Timestamp {
        let submission = Submission {
            sender: self.id.as_member(),
            message_id: MessageId::new(message_id).unwrap(),
            envelopes: vec![Envelope {
                recipients: vec![member("mediator")],
                payload: message.encode(),
            }],
            max_sequencing_time: Timestamp::now().saturating_add(Duration::from_secs(10)),
        };
        self.client.send(submission).await.unwrap().timestamp
    }

    pub async fn request(&self, message_id: &str, confirming: &[&str]) -> Timestamp {
        let parties: BTreeSet<PartyId> = confirming.iter().map(|p| party(p)).collect();
        let informee = InformeeMessage {
            submitter: self.id.clone(),
            informees: parties.clone(),
            confirming_parties: parties,
            informee_participants: BTreeSet::from([pid("p1"), pid("p2")]),
            request_hash: HASH.to_owned(),
        };
        self.send(message_id, &ProtocolMessage::InformeeMessage(informee))
            .await
    }

    /// Sends an approval of `request_id` for `for_party`; returns when it was sequenced.
    pub async fn approve(&self, request_id: Timestamp, for_party: &str) -> Timestamp {
        let response = ConfirmationResponse {
            request_id,
            request_hash: HASH.to_owned(),
            participant: self.id.clone(),
            parties: BTreeSet::from([party(for_party)]),
            verdict: LocalVerdict::Approve,
        };
        let signed = Signed::sign(
            &response,
            self.id.as_member(),
            &self.key,
            SigningPurpose::ConfirmationResponse,
        );
        let message_id = format!("response-{}-{}", self.id, request_id.as_micros());
        self.send(&message_id, &ProtocolMessage::ConfirmationResponse(signed))
            .await
    }

    /// Sends the request `message_id` for alice and bob and approves it for alice only, as
    /// p1 does: the request is left waiting for bob.
    pub async fn approved_by_alice(&self, message_id: &str) -> Timestamp {
        let request_id = self.request(message_id, &["alice", "bob"]).await;
        self.approve(request_id, "alice").await;
        request_id
    }

    /// The next verdict delivered to this participant, verified with the mediator's key.
    pub async fn next_verdict(&mut self, mediator: &PublicKey) -> Verdict {
        let event = tokio::time::timeout(Duration::from_secs(15), self.events.next())
            .await
            .expect("a verdict in time")
            .expect("subscription open")
            .expect("no subscription error");
        assert_eq!(event.sender, member("mediator"));
        assert_eq!(event.envelopes.len(), 1);
        match ProtocolMessage::decode(&event.envelopes[0].payload).unwrap() {
            ProtocolMessage::Verdict(signed) => {
                assert_eq!(signed.signer, member("mediator"));
                signed.verify(mediator, SigningPurpose::Verdict).unwrap()
            }
            other => panic!("expected a verdict, got {other:?}"),
        }
    }
}

/// Asserts that each of `participants` is told next that `request_id` was approved; `why`
/// says what the approval proves.
pub async fn expect_approved(
    participants: [&mut Participant; 2],
    mediator: &PublicKey,
    request_id: Timestamp,
    why: &str,
) {
    for participant in participants {
        let verdict = participant.next_verdict(mediator).await;
        assert_eq!(verdict.request_id, request_id, "{why}");
        assert_eq!(verdict.outcome, VerdictOutcome::Approved, "{why}");
    }
}

/// A single mediator's config for this synchronizer (a replica sets `replication`). Every
/// replica of the mediator shares the key file and the database.
pub fn mediator_config(dir: &Path, owner: &PublicKey, ports: [u16; 3]) -> MediatorConfig {
    let [sequencer, topology, admin] = ports;
    let endpoints = MemberEndpoints {
        sequencer: Endpoints::one(format!("http://127.0.0.1:{sequencer}")),
        topology: Endpoints::one(format!("http://127.0.0.1:{topology}")),
    };
    let config = MediatorConfig {
        response_timeout_ms: RESPONSE_TIMEOUT_MS,
        time_proof_interval_ms: 100,
        ..MediatorConfig::new(
            dir.join("mediator.key"),
            owner,
            endpoints,
            SocketAddr::from(([127, 0, 0, 1], admin)),
            StorageConfig::Sqlite {
                path: dir.join("mediator.db"),
            },
        )
    };
    config.check("<test>").unwrap();
    config
}

pub fn start_mediator(
    config: &MediatorConfig,
) -> (CancellationToken, JoinHandle<anyhow::Result<()>>) {
    let token = CancellationToken::new();
    let task = tokio::spawn(meridian_mediator::run(config.clone(), token.clone()));
    (token, task)
}

/// The sequencer, the fake topology manager and the mediator's identity.
pub struct Synchronizer {
    pub dir: tempfile::TempDir,
    pub shutdown: CancellationToken,
    sequencer: std::thread::JoinHandle<anyhow::Result<()>>,
    pub sequencer_port: u16,
    pub topology_port: u16,
    pub owner: SigningKey,
    pub mediator_key: SigningKey,
}

impl Synchronizer {
    /// Starts everything but the mediator; returns the two participants, subscribed.
    pub async fn start() -> (Synchronizer, Participant, Participant) {
        let dir = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();

        // The sequencer, with open registration.
        let (sequencer_port, sequencer_admin) = (free_port(), free_port());
        let sequencer_config = meridian_sequencer::SequencerConfig::new(
            SocketAddr::from(([127, 0, 0, 1], sequencer_port)),
            SocketAddr::from(([127, 0, 0, 1], sequencer_admin)),
            StorageConfig::Sqlite {
                path: dir.path().join("sequencer.db"),
            },
        );
        // On a thread of its own: the sequencer's run future is not `Send`, so it cannot be spawned.
        let sequencer_shutdown = shutdown.clone();
        let sequencer = std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
                .block_on(meridian_sequencer::run(
                    sequencer_config,
                    sequencer_shutdown,
                ))
        });
        wait_ready(sequencer_admin).await;
        let endpoint = format!("http://127.0.0.1:{sequencer_port}");

        // Identities and the topology: alice on p1, bob on p2.
        let owner = SigningKey::generate();
        let mediator_key = SigningKey::generate();
        meridian_node::keys::write_key(&dir.path().join("mediator.key"), &mediator_key).unwrap();
        let keys = [
            ("p1", SigningKey::generate()),
            ("p2", SigningKey::generate()),
        ];
        register_member(&endpoint, &member("mediator"), &mediator_key.public_key())
            .await
            .unwrap();
        let mut mappings = Vec::new();
        for (name, key) in &keys {
            register_member(&endpoint, &member(name), &key.public_key())
                .await
                .unwrap();
            mappings.push(TopologyMapping::Participant {
                participant: pid(name),
                public_key: key.public_key().to_string(),
            });
        }
        for (who, host) in [("alice", "p1"), ("bob", "p2")] {
            mappings.push(TopologyMapping::PartyToParticipant {
                party: party(who),
                participant: pid(host),
                permission: Permission::Submission,
            });
        }
        let entries = mappings
            .into_iter()
            .enumerate()
            .map(|(i, mapping)| {
                let signed = SignedTopologyTransaction::sign(
                    &TopologyTransaction {
                        serial: i as u64 + 1,
                        mapping,
                    },
                    &owner,
                );
                v1::SignedTopologyEntry {
                    effective_us: i as u64 + 1,
                    transaction_json: signed.transaction_json,
                    signature: signed.signature,
                }
            })
            .collect();
        let topology_port = free_port();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", topology_port))
            .await
            .unwrap();
        let fake = FakeTopologyManager {
            entries,
            owner: owner.public_key().to_string(),
        };
        let topology_shutdown = shutdown.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(TopologyAdminServiceServer::new(fake))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    topology_shutdown.cancelled_owned(),
                )
                .await
        });

        let mut participants = Vec::new();
        for (name, key) in keys {
            let client = SequencerClient::connect(SequencerClientConfig::new(
                endpoint.clone(),
                member(name),
                key.clone(),
            ))
            .await
            .unwrap();
            let events = client.subscribe(None);
            participants.push(Participant {
                id: pid(name),
                key,
                client,
                events,
            });
        }
        let [p1, p2] = <[Participant; 2]>::try_from(participants).ok().unwrap();
        let synchronizer = Synchronizer {
            dir,
            shutdown,
            sequencer,
            sequencer_port,
            topology_port,
            owner,
            mediator_key,
        };
        (synchronizer, p1, p2)
    }

    pub fn mediator_config(&self, admin_port: u16) -> MediatorConfig {
        mediator_config(
            self.dir.path(),
            &self.owner.public_key(),
            [self.sequencer_port, self.topology_port, admin_port],
        )
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let sequencer = self.sequencer;
        tokio::task::spawn_blocking(move || sequencer.join().unwrap().unwrap())
            .await
            .unwrap();
    }
}
