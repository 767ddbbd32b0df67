//! Failover behaviour of the ledger client between participant replica endpoints, against a
//! minimal fake Ledger API (a real tonic server on 127.0.0.1) and a "frozen" endpoint: a
//! socket that the kernel accepts but no process ever answers, which is what a SIGSTOPped
//! replica looks like from the network.

// The fake server and helpers are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used)]

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use std::collections::BTreeSet;

use meridian_client::{Backoff, LedgerClient, SubmitOutcome};
use meridian_core::{CommandId, PartyId, UserId};
use meridian_proto::v1;
use meridian_proto::v1::ledger_service_server::{LedgerService, LedgerServiceServer};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Answers AllocateParty by echoing the party; counts the calls. Nothing else is needed here.
/// Answers AllocateParty by echoing the party and counts the calls. SubmitAndWait fails with
/// UNAVAILABLE once (the outcome is unknown to the client), then answers the retry with
/// ALREADY_EXISTS naming transaction `tx-1` at offset 7, which GetTransactions serves.
///
/// With `never_sequenced_first`, SubmitAndWait instead answers its first call as a new active
/// replica answers a retry of a submission its crashed predecessor never sent: ABORTED, not
/// sequenced before its max sequencing time; and commits the next one.
#[derive(Clone, Default)]
struct FakeParticipant {
    allocations: Arc<AtomicU32>,
    submissions: Arc<AtomicU32>,
    never_sequenced_first: bool,
}

fn created_iou() -> v1::Transaction {
    v1::Transaction {
        transaction_id: "tx-1".into(),
        offset: 7,
        events: vec![v1::Event {
            event: Some(v1::event::Event::Created(v1::CreatedEvent {
                contract_id: "c-2".into(),
                template: "Iou".into(),
                payload_json: r#"{"issuer":"bank","owner":"bob","amount":5}"#.into(),
                signatories: vec!["bank".into()],
                observers: vec!["bob".into()],
            })),
        }],
        ..Default::default()
    }
}

#[tonic::async_trait]
impl LedgerService for FakeParticipant {
    async fn allocate_party(
        &self,
        request: Request<v1::AllocatePartyRequest>,
    ) -> Result<Response<v1::AllocatePartyResponse>, Status> {
        self.allocations.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(v1::AllocatePartyResponse {
            party: request.into_inner().party,
        }))
    }

    async fn list_parties(
        &self,
        _: Request<v1::ListPartiesRequest>,
    ) -> Result<Response<v1::ListPartiesResponse>, Status> {
        Err(Status::unimplemented("not needed by these tests"))
    }

    async fn submit_and_wait(
        &self,
        _: Request<v1::SubmitAndWaitRequest>,
    ) -> Result<Response<v1::SubmitAndWaitResponse>, Status> {
        let first = self.submissions.fetch_add(1, Ordering::Relaxed) == 0;
        if self.never_sequenced_first {
            if first {
                return Err(Status::aborted(format!(
                    "a concurrent submission of the same command was rejected: {} \
                     1970-01-01T00:00:10Z; nothing was committed, resubmit",
                    meridian_core::protocol::NOT_SEQUENCED_REJECTION
                )));
            }
            return Ok(Response::new(v1::SubmitAndWaitResponse {
                transaction_id: "tx-1".into(),
                offset: 7,
                transaction: Some(created_iou()),
            }));
        }
        if first {
            return Err(Status::unavailable("connection lost; outcome unknown"));
        }
        let mut status = Status::already_exists("already committed as transaction tx-1");
        status
            .metadata_mut()
            .insert("meridian-transaction-id", "tx-1".parse().unwrap());
        status
            .metadata_mut()
            .insert("meridian-offset", "7".parse().unwrap());
        Err(status)
    }

    type GetTransactionsStream = Streamed<v1::Transaction>;

    async fn get_transactions(
        &self,
        request: Request<v1::GetTransactionsRequest>,
    ) -> Result<Response<Self::GetTransactionsStream>, Status> {
        let served = if request.into_inner().begin_offset < 7 {
            vec![Ok(created_iou())]
        } else {
            Vec::new()
        };
        Ok(Response::new(Box::pin(futures::stream::iter(served))))
    }

    async fn get_active_contracts(
        &self,
        _: Request<v1::GetActiveContractsRequest>,
    ) -> Result<Response<v1::GetActiveContractsResponse>, Status> {
        Err(Status::unimplemented("not needed by these tests"))
    }

    type CompletionStreamStream = Streamed<v1::Completion>;

    async fn completion_stream(
        &self,
        _: Request<v1::CompletionStreamRequest>,
    ) -> Result<Response<Self::CompletionStreamStream>, Status> {
        Err(Status::unimplemented("not needed by these tests"))
    }
}

async fn serve(fake: FakeParticipant) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(LedgerServiceServer::new(fake))
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    endpoint
}

#[tokio::test]
async fn a_request_stuck_on_a_frozen_replica_fails_over_within_the_keep_alive_bound() {
    // Bound but never accepted: connections complete in the kernel backlog and then hang,
    // exactly like a stopped process's listening socket.
    let frozen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let frozen_endpoint = format!("http://{}", frozen.local_addr().unwrap());
    let fake = FakeParticipant::default();
    let live_endpoint = serve(fake.clone()).await;
    let client = LedgerClient::new(
        &[frozen_endpoint, live_endpoint],
        UserId::new("failover-test").unwrap(),
    )
    .unwrap()
    .with_backoff(Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
        max_attempts: 5,
    });
    let started = Instant::now();
    let party = PartyId::new("alice").unwrap();
    // The client's own request timeout is 40 s; only the keep-alive can end this sooner.
    let allocated = tokio::time::timeout(Duration::from_secs(10), client.allocate_party(&party))
        .await
        .expect("the request stayed stuck on the frozen endpoint")
        .unwrap();
    assert_eq!(allocated, party);
    assert_eq!(fake.allocations.load(Ordering::Relaxed), 1);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "failing over took {took:?}");
    drop(frozen);
}

/// Submits command `cmd-1` for alice through a client of `fake` with a quick backoff.
async fn submit_to(fake: &FakeParticipant) -> Result<SubmitOutcome, meridian_client::ClientError> {
    let endpoint = serve(fake.clone()).await;
    let client = LedgerClient::new(&[endpoint], UserId::new("retry-test").unwrap())
        .unwrap()
        .with_backoff(Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
            max_attempts: 5,
        });
    client
        .submit_and_wait(
            &CommandId::new("cmd-1").unwrap(),
            &BTreeSet::from([PartyId::new("alice").unwrap()]),
            &[],
        )
        .await
}

#[tokio::test]
async fn a_retry_answered_already_exists_returns_the_original_transaction() {
    let fake = FakeParticipant::default();
    let outcome = submit_to(&fake).await.unwrap();
    // The caller learns what its first attempt created, as if it had been answered.
    let SubmitOutcome::Committed(committed) = outcome else {
        panic!("expected the original commit, got {outcome:?}");
    };
    assert_eq!(committed.transaction_id, "tx-1");
    assert_eq!(committed.offset, 7);
    assert_eq!(committed.attempts, 2);
    assert_eq!(committed.created.len(), 1);
    assert_eq!(committed.created[0].id.as_str(), "c-2");
    assert_eq!(fake.submissions.load(Ordering::Relaxed), 2);
}

/// A retry around a failover can be answered with the outcome of a submission the old active
/// replica never sent: ABORTED, not sequenced before its max sequencing time. Nothing was
/// committed, so the client resubmits instead of failing the command.
#[tokio::test]
async fn a_submission_proven_never_sequenced_is_resubmitted() {
    let fake = FakeParticipant {
        never_sequenced_first: true,
        ..FakeParticipant::default()
    };
    let outcome = submit_to(&fake)
        .await
        .expect("resubmitted rather than failed");
    let SubmitOutcome::Committed(committed) = outcome else {
        panic!("expected a commit, got {outcome:?}");
    };
    assert_eq!(committed.transaction_id, "tx-1");
    assert_eq!(committed.attempts, 2);
    assert_eq!(fake.submissions.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn an_unreachable_participant_is_named_as_one() {
    // A port nobody listens on: every attempt is refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let client = LedgerClient::new(std::slice::from_ref(&endpoint), UserId::new("u").unwrap())
        .unwrap()
        .with_backoff(Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(1),
            max_attempts: 2,
        });
    let error = client
        .allocate_party(&PartyId::new("alice").unwrap())
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with(&format!(
            "participant at {endpoint} unavailable after 2 attempts"
        )),
        "{message}"
    );
    assert!(!message.contains("sequencer"), "{message}");
}
