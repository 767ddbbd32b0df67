//! Undecodable and invalid requests, in one process against a real sequencer, topology manager
//! and participant (issue 11, item 5): bytes that do not decode as the request message are
//! answered `INVALID_ARGUMENT` naming the message and field (never `INTERNAL`) by every
//! Meridian service, and a bad command names its index and field — and none of it changes
//! anything.
//!
//! The undecodable bodies are sent through tonic's low-level `Grpc` client with a codec that
//! writes raw bytes, the same bytes a buggy or hostile client would put on the wire.

mod support;

use bytes::{Buf, BufMut};
use meridian_proto::v1;
use meridian_proto::v1::ledger_service_client::LedgerServiceClient;
use support::{logged, retry, sqlite, synchronizer};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Sends its bytes as they are and hands back the response's bytes as they are.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// Calls `path` on `endpoint` with `body` as the request message; the call must fail.
async fn raw_call(endpoint: &str, path: &'static str, body: &[u8]) -> Status {
    let channel = Channel::from_shared(endpoint.to_owned())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    grpc.unary(
        tonic::Request::new(body.to_vec()),
        PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .expect_err("undecodable bytes must be refused")
}

/// Asserts INVALID_ARGUMENT whose message contains every one of `needles`.
fn assert_invalid(status: &Status, needles: &[&str]) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "{needle:?} in {status:?}"
        );
    }
}

fn create(payload_json: &str) -> v1::Command {
    v1::Command {
        command: Some(v1::command::Command::Create(v1::CreateCommand {
            template: "Iou".into(),
            payload_json: payload_json.into(),
        })),
    }
}

fn iou(amount: i64) -> v1::Command {
    create(&format!(
        r#"{{"issuer":"bank","owner":"bank","amount":{amount},"currency":"USD"}}"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_invalid_argument_naming_the_field_and_change_nothing() {
    let sync = synchronizer().await;
    let d = sync.dir.path();
    let mut admin = sync.admin.clone();
    let key = meridian_node::keys::load_or_create_key(&d.join("p1.key")).expect("key");
    admin
        .add_participant(v1::AddParticipantRequest {
            participant: "p1".into(),
            public_key: key.public_key().to_bytes().to_vec(),
        })
        .await
        .expect("add participant");
    let config = sync.participant_config("p1", sqlite(d, "p1"));
    let ledger_endpoint = format!("http://{}", config.listen_address);
    tokio::spawn(logged(
        "participant",
        meridian_participant::run(config, sync.shutdown.clone()),
    ));
    let mut ledger = retry("participant ready", || {
        let endpoint = ledger_endpoint.clone();
        async move {
            let mut client = LedgerServiceClient::connect(endpoint)
                .await
                .map_err(|e| e.to_string())?;
            client
                .allocate_party(v1::AllocatePartyRequest {
                    party: "bank".into(),
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok(client)
        }
    })
    .await;
    let topology_before = admin
        .get_topology(v1::GetTopologyRequest {})
        .await
        .expect("topology")
        .into_inner();

    // Undecodable bytes, to each service. 0x12 0x01 0xff: field 2 (command_id), one byte, not
    // UTF-8. 0x0a 0xff: field 1's length, a varint cut off after its first byte.
    let submit = "/meridian.v1.LedgerService/SubmitAndWait";
    let status = raw_call(
        &ledger_endpoint,
        submit,
        &[0x0a, 0x01, b'u', 0x12, 0x01, 0xff],
    )
    .await;
    assert_invalid(
        &status,
        &[
            "meridian.v1.SubmitAndWaitRequest",
            "SubmitAndWaitRequest.command_id",
            "UTF-8",
        ],
    );
    let status = raw_call(&ledger_endpoint, submit, &[0x0a, 0xff]).await;
    assert_invalid(&status, &["meridian.v1.SubmitAndWaitRequest", "varint"]);

    let sequencer = sync.endpoints.sequencer.first().to_owned();
    let send = "/meridian.v1.SequencerService/Send";
    // SendRequest.submission (field 1) holding a SubmissionRequest whose sender is 0xff.
    let status = raw_call(&sequencer, send, &[0x0a, 0x03, 0x0a, 0x01, 0xff]).await;
    assert_invalid(&status, &["meridian.v1.SendRequest", "sender", "UTF-8"]);
    let status = raw_call(&sequencer, send, &[0x0a, 0xff]).await;
    assert_invalid(&status, &["meridian.v1.SendRequest", "varint"]);

    let topology = sync.endpoints.topology.first().to_owned();
    let allocate = "/meridian.v1.TopologyAdminService/AllocateParty";
    let status = raw_call(&topology, allocate, &[0x0a, 0x01, 0xff]).await;
    assert_invalid(
        &status,
        &["meridian.v1.TopologyAllocatePartyRequest", "party", "UTF-8"],
    );
    let status = raw_call(&topology, allocate, &[0x0a, 0xff]).await;
    assert_invalid(
        &status,
        &["meridian.v1.TopologyAllocatePartyRequest", "varint"],
    );

    // A negative amount in command 2 of 3: the index (from 0) and the field.
    let request = |command_id: &str, commands| v1::SubmitAndWaitRequest {
        user_id: "bank-app".into(),
        command_id: command_id.into(),
        act_as: vec!["bank".into()],
        commands,
        deduplication_period_s: None,
    };
    let status = ledger
        .submit_and_wait(request("negative", vec![iou(5), iou(-5), iou(7)]))
        .await
        .expect_err("a negative amount");
    assert_invalid(
        &status,
        &["commands[1].create.payload_json.amount", "-5", "u64"],
    );
    // An unknown template in command 3 of 3.
    let unknown = v1::Command {
        command: Some(v1::command::Command::Create(v1::CreateCommand {
            template: "Nope".into(),
            payload_json: "{}".into(),
        })),
    };
    let status = ledger
        .submit_and_wait(request("unknown", vec![iou(5), iou(6), unknown]))
        .await
        .expect_err("an unknown template");
    assert_invalid(&status, &["commands[2]", "unknown template Nope"]);

    // Nothing changed: no contract, no topology change.
    let active = ledger
        .get_active_contracts(v1::GetActiveContractsRequest {
            parties: vec!["bank".into()],
        })
        .await
        .expect("active contracts")
        .into_inner();
    assert!(active.contracts.is_empty(), "{active:?}");
    let topology_after = admin
        .get_topology(v1::GetTopologyRequest {})
        .await
        .expect("topology")
        .into_inner();
    assert_eq!(topology_after, topology_before);
    sync.shutdown.cancel();
}
