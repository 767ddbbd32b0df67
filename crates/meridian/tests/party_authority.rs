//! Black-box test of issue 11, item 1: hosting a party is its owner's decision, so no party can
//! be taken over. On a local deployment (SQLite, three participants) with bank, alice and bob
//! allocated on participants 1, 2 and 3 and an IOU owned by bob, a plain gRPC client of
//! participant1 asks it to allocate bob — the takeover a user reproduced: the Ledger API
//! answers PERMISSION_DENIED naming bob's host, bob stays hosted on participant3 alone (in the
//! manager's topology and every participant's), and a transfer of bob's IOU submitted through
//! participant1 acting as bob is refused. Going to the topology manager directly does not help
//! either: unsigned, or signed with a key that is not participant3's, it is UNAUTHENTICATED.
//! The legitimate paths keep working: participant3 re-allocating bob, participant1 a new party.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use meridian_client::{ClientError, SubmitOutcome};
use meridian_core::crypto::SigningKey;
use meridian_core::ledger::Permission;
use meridian_core::topology::{HostingRequest, TopologyMapping, TopologyTransaction};
use meridian_core::{CommandId, ParticipantId, Timestamp, UserId};
use meridian_lab::deployment::{Deployment, DeploymentSpec};
use meridian_lab::workload::Parties;
use meridian_proto::v1;
use meridian_proto::v1::ledger_service_client::LedgerServiceClient;
use meridian_proto::v1::topology_admin_service_client::TopologyAdminServiceClient;
use tonic::Code;

mod common;
use common::{iou_create, party, transfer, EXE};

/// Every (participant → permission) hosting bob in the topology manager's published history.
async fn bob_in_the_manager_topology(deployment: &Deployment) -> BTreeMap<String, Permission> {
    let entries = meridian_client::topology::fetch_topology(&[deployment.topology.grpc_endpoint()])
        .await
        .unwrap();
    let mut hosts = BTreeMap::new();
    for (_, signed) in entries {
        let transaction: TopologyTransaction =
            serde_json::from_str(&signed.transaction_json).unwrap();
        if let TopologyMapping::PartyToParticipant {
            party,
            participant,
            permission,
        } = transaction.mapping
        {
            if party.as_str() == "bob" {
                hosts.insert(participant.to_string(), permission);
            }
        }
    }
    hosts
}

/// bob's hosting as participant `index` lists it (ListParties).
async fn bob_at(deployment: &Deployment, index: usize) -> BTreeMap<String, String> {
    let mut ledger = common::grpc(LedgerServiceClient::new, deployment.ledger_endpoint(index))
        .await
        .unwrap();
    let parties = ledger
        .list_parties(v1::ListPartiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .parties;
    parties
        .into_iter()
        .find(|p| p.party == "bob")
        .map(|p| p.hosting.into_iter().collect())
        .unwrap_or_default()
}

/// What a request to the topology manager to host bob on participant1 (made directly, not
/// through a Ledger API) is answered with: signed by `key` in participant3's name, or unsigned.
async fn direct_request(deployment: &Deployment, key: Option<&SigningKey>) -> tonic::Status {
    let mut admin = common::grpc(
        TopologyAdminServiceClient::new,
        deployment.topology.grpc_endpoint(),
    )
    .await
    .unwrap();
    let mut request = v1::TopologyAllocatePartyRequest {
        party: "bob".into(),
        participant: "participant1".into(),
        permission: "submission".into(),
        ..Default::default()
    };
    if let Some(key) = key {
        let hosting = HostingRequest {
            party: party("bob"),
            participant: ParticipantId::new("participant1").unwrap(),
            permission: Permission::Submission,
            requested_by: ParticipantId::new("participant3").unwrap(),
            requested_at: Timestamp::now(),
        };
        request.requested_by = "participant3".into();
        request.requested_at_us = hosting.requested_at.as_micros();
        request.signature = hosting.sign(key).to_bytes().to_vec();
    }
    admin.allocate_party(request).await.unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_one_participant_cannot_take_over_a_party_hosted_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DeploymentSpec {
        exe: EXE.into(),
        ..DeploymentSpec::local(dir.path().to_path_buf(), 3).unwrap()
    };
    let mut deployment = common::start_deployment(&spec).await;
    let user = UserId::new("test").unwrap();
    let parties = Parties::allocate(&deployment, &user).await.unwrap();
    assert_eq!(deployment.participant_ids[2].as_str(), "participant3");

    // An IOU the bank issues to bob: what a takeover of bob would be after.
    let bank = BTreeSet::from([party("bank")]);
    let started = Instant::now();
    let iou = loop {
        // bob reaches participant1's topology through the sequencer shortly after his
        // allocation; until then the issue is refused NOT_FOUND.
        match parties.clients[0]
            .submit_and_wait(
                &CommandId::new("issue-to-bob").unwrap(),
                &bank,
                &[iou_create("bob", 100)],
            )
            .await
        {
            Ok(SubmitOutcome::Committed(committed)) => break committed.created[0].clone(),
            Err(ClientError::Rejected {
                code: Code::NotFound,
                ..
            }) if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("issuing bob's IOU: {other:?}"),
        }
    };
    let before = bob_in_the_manager_topology(&deployment).await;
    assert_eq!(
        before,
        BTreeMap::from([("participant3".to_owned(), Permission::Submission)])
    );

    // The takeover, as the user played it: a plain gRPC client of participant1.
    let mut ledger1 = common::grpc(LedgerServiceClient::new, deployment.ledger_endpoint(0))
        .await
        .unwrap();
    let refused = ledger1
        .allocate_party(v1::AllocatePartyRequest {
            party: "bob".into(),
        })
        .await
        .expect_err("participant1 must not take bob over");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    for needle in ["party bob is hosted on participant3", "participant1"] {
        assert!(
            refused.message().contains(needle),
            "{needle:?} in {refused:?}"
        );
    }

    // Nothing changed: bob is hosted on participant3 alone, for the manager and for every
    // participant.
    assert_eq!(bob_in_the_manager_topology(&deployment).await, before);
    let only_participant3 = BTreeMap::from([("participant3".to_owned(), "submission".to_owned())]);
    for index in 0..3 {
        assert_eq!(
            bob_at(&deployment, index).await,
            only_participant3,
            "bob's hosting as participant{} sees it",
            index + 1
        );
    }

    // And bob's IOU cannot be moved through participant1 acting as bob.
    let stolen = parties.clients[0]
        .submit_and_wait(
            &CommandId::new("steal-bobs-iou").unwrap(),
            &BTreeSet::from([party("bob")]),
            &[transfer(&iou, "bank")],
        )
        .await;
    assert!(
        matches!(
            &stolen,
            Err(ClientError::Rejected {
                code: Code::PermissionDenied,
                message,
            }) if message.contains("bob")
        ),
        "{stolen:?}"
    );
    let (_, bobs) = parties.clients[2]
        .active_contracts(&BTreeSet::from([party("bob")]))
        .await
        .unwrap();
    assert!(
        bobs.iter().any(|c| c.id == iou.id),
        "bob still owns his IOU"
    );

    // Straight to the topology manager: unsigned (without the deployment's admin token there
    // is no owner path), or signed in participant3's name with another key.
    let unsigned = direct_request(&deployment, None).await;
    assert_eq!(unsigned.code(), Code::Unauthenticated, "{unsigned:?}");
    assert!(unsigned.message().contains("admin_token"), "{unsigned:?}");
    let forged = direct_request(&deployment, Some(&SigningKey::generate())).await;
    assert_eq!(forged.code(), Code::Unauthenticated, "{forged:?}");
    assert!(forged.message().contains("participant3"), "{forged:?}");
    assert_eq!(bob_in_the_manager_topology(&deployment).await, before);

    // The legitimate paths: bob's own participant re-allocates him (idempotent), and
    // participant1 allocates a party nobody hosts yet.
    parties.clients[2]
        .allocate_party(&party("bob"))
        .await
        .unwrap();
    parties.clients[0]
        .allocate_party(&party("carol"))
        .await
        .unwrap();
    assert_eq!(bob_in_the_manager_topology(&deployment).await, before);

    deployment.stop().await.unwrap();
}
