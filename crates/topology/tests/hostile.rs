//! Hostile admin requests to the topology manager's gRPC handlers, in process (issue 11,
//! item 6): arbitrary AddParticipant, AddMediator and AllocateParty requests (hostile ids,
//! keys, permissions, signatures, times) with no, wrong, garbage or the right admin token, to
//! a manager that has no active replica. Nothing may panic and no answer is INTERNAL or
//! UNKNOWN; without a manager nothing can change, so what this shows is that validation and
//! authentication answer every shape of request with a client status before any change is
//! attempted. The field conversion alone is also checked: an error names the field.
//!
//! Case count: `MERIDIAN_HOSTILE_CASES` (see `meridian_testkit::hostile`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use meridian_node::admin_token::AdminToken;
use meridian_proto::v1;
use meridian_proto::v1::topology_admin_service_server::TopologyAdminService;
use meridian_testkit::hostile::hostile_config;
use meridian_topology::metrics::TopologyMetrics;
use meridian_topology::request;
use meridian_topology::service::{Serving, TopologyAdminApi};
use proptest::collection::vec;
use proptest::prelude::*;
use tonic::metadata::MetadataValue;
use tonic::Request;

const TOKEN: &str = "hostile-admin-token";

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9_.:-]{1,12}",
        1 => Just(String::new()),
        2 => any::<String>(),
        1 => "[a-z]{250,260}",
    ]
}

fn key_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 32..=32),
        vec(any::<u8>(), 0..70),
        Just(vec![0u8; 32]),
        Just(vec![0xffu8; 32]),
    ]
}

/// The `authorization` header, if any: missing, right, wrong, or not a bearer token at all.
fn authorization() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some(format!("Bearer {TOKEN}"))),
        "[ -~]{0,40}".prop_map(Some),
        "[ -~]{0,40}".prop_map(|t| Some(format!("Bearer {t}"))),
    ]
}

fn with_auth<T>(message: T, authorization: &Option<String>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = authorization {
        if let Ok(value) = value.parse::<MetadataValue<_>>() {
            request.metadata_mut().insert("authorization", value);
        }
    }
    request
}

fn api() -> TopologyAdminApi {
    let mut registry = prometheus_client::registry::Registry::default();
    TopologyAdminApi {
        serving: Arc::new(Serving::default()),
        admin_token: AdminToken::new(Some(TOKEN), "the topology manager's admin_token"),
        metrics: TopologyMetrics::register(&mut registry),
    }
}

fn assert_client_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>) {
    let status = result.expect_err("a manager with no active replica changes nothing");
    assert!(
        !matches!(status.code(), tonic::Code::Internal | tonic::Code::Unknown),
        "{status:?}"
    );
    assert!(!status.message().is_empty(), "{status:?}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(hostile_config())]

    #[test]
    fn hostile_topology_admin_requests_get_client_statuses(
        participant in text(),
        party in text(),
        permission in prop_oneof![
            Just("submission".to_owned()), Just("observation".to_owned()), text(),
        ],
        public_key in key_bytes(),
        requested_by in text(),
        requested_at_us in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
        signature in prop_oneof![Just(Vec::new()), vec(any::<u8>(), 0..80)],
        authorization in authorization(),
    ) {
        // The conversions on their own: Ok, or an error naming a field.
        for result in [
            request::add_participant(participant.clone(), &public_key),
            request::add_mediator(participant.clone(), &public_key),
            request::allocate_party(party.clone(), participant.clone(), &permission),
        ] {
            if let Err(error) = result {
                prop_assert!(!error.field.is_empty());
            }
        }
        if let Err(error) =
            request::signed_by(requested_by.clone(), requested_at_us, signature.clone())
        {
            prop_assert!(!error.field.is_empty());
        }

        let api = api();
        runtime().block_on(async {
            assert_client_status(
                api.add_participant(with_auth(
                    v1::AddParticipantRequest {
                        participant: participant.clone(),
                        public_key: public_key.clone(),
                    },
                    &authorization,
                ))
                .await,
            );
            assert_client_status(
                api.add_mediator(with_auth(
                    v1::AddMediatorRequest {
                        mediator: participant.clone(),
                        public_key: public_key.clone(),
                    },
                    &authorization,
                ))
                .await,
            );
            assert_client_status(
                api.allocate_party(with_auth(
                    v1::TopologyAllocatePartyRequest {
                        party,
                        participant,
                        permission,
                        requested_by,
                        requested_at_us,
                        signature,
                    },
                    &authorization,
                ))
                .await,
            );
        });
    }
}
