//! Black-box test of issue 11, items 3 and 7: admin authentication and secrets. A lab
//! deployment (one sequencer, two replicas of the topology manager, the mediator and one
//! participant) generates its admin token into `<data>/secrets/admin-token` (mode 0600) and
//! configures every node with it. Then every admin HTTP route of every process and every
//! topology / sequencer admin gRPC call is tried without a token, with a wrong token and with a
//! malformed header: mutations are refused (401 / UNAUTHENTICATED) and nothing changes (no
//! replica stepped down, no member added); `/livez`, `/readyz`, `/status`, `/metrics` and
//! GetTopology stay open. With the right token the same calls work. Finally no log line of any
//! process contains the token.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::Path;
use std::time::Duration;

use meridian_core::crypto::SigningKey;
use meridian_lab::deployment::{Deployment, DeploymentSpec, Description, Shape};
use meridian_proto::v1;
use meridian_proto::v1::sequencer_admin_service_client::SequencerAdminServiceClient;
use meridian_proto::v1::topology_admin_service_client::TopologyAdminServiceClient;
use reqwest::StatusCode;
use tonic::Code;

mod common;
use common::EXE;

/// The `authorization` values of the refused cases: (case, value or none).
fn refused_cases() -> [(&'static str, Option<&'static str>); 3] {
    [
        ("no token", None),
        (
            "wrong token",
            Some("Bearer 00000000000000000000000000000000"),
        ),
        ("malformed header", Some("Basic YWRtaW46YWRtaW4=")),
    ]
}

fn request<T>(message: T, authorization: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
    }
    request
}

async fn actives(data_dir: &Path) -> Vec<Option<String>> {
    let mut actives = Vec::new();
    for node in ["topology-manager", "mediator", "participant1"] {
        actives.push(
            meridian_lab::replicas::active_replica(data_dir, node)
                .await
                .unwrap(),
        );
    }
    actives
}

async fn topology_entries(deployment: &Deployment) -> usize {
    meridian_client::topology::fetch_topology(&[deployment.topology.grpc_endpoint()])
        .await
        .unwrap()
        .len()
}

/// Every admin HTTP route of every process, as a caller without the right token sees it.
async fn http_routes_refuse_mutations(deployment: &Deployment, token: &str) {
    let client = meridian_lab::tls::http_builder()
        .unwrap()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for process in deployment.processes() {
        let base = meridian_lab::tls::url(process.admin_address);
        for (case, authorization) in refused_cases() {
            let mut post = client.post(format!("{base}/admin/step-down"));
            if let Some(value) = authorization {
                post = post.header(reqwest::header::AUTHORIZATION, value);
            }
            let response = post.send().await.unwrap();
            let what = format!("{} step-down, {case}", process.name());
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
            assert_eq!(
                response.headers()[reqwest::header::WWW_AUTHENTICATE],
                "Bearer",
                "{what}"
            );
            let body: serde_json::Value = response.json().await.unwrap();
            let error = body["error"].as_str().unwrap();
            assert!(error.contains("Authorization"), "{what}: {error}");
            assert!(
                !error.contains(token),
                "{what}: the refusal shows the token"
            );
        }
        // Probes, status and metrics stay open by default (Prometheus scrapes need no token).
        for path in ["/livez", "/readyz", "/status", "/metrics"] {
            let response = client.get(format!("{base}{path}")).send().await.unwrap();
            assert_ne!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{} {path}",
                process.name()
            );
        }
    }
}

async fn topology_calls_refuse_mutations(deployment: &Deployment) {
    let mut admin = common::grpc(
        TopologyAdminServiceClient::new,
        deployment.topology.grpc_endpoint(),
    )
    .await
    .unwrap();
    let key = SigningKey::generate().public_key().to_bytes().to_vec();
    for (case, authorization) in refused_cases() {
        let statuses = [
            admin
                .add_participant(request(
                    v1::AddParticipantRequest {
                        participant: "intruder".into(),
                        public_key: key.clone(),
                    },
                    authorization,
                ))
                .await
                .unwrap_err(),
            admin
                .add_mediator(request(
                    v1::AddMediatorRequest {
                        mediator: "intruder-mediator".into(),
                        public_key: key.clone(),
                    },
                    authorization,
                ))
                .await
                .unwrap_err(),
            admin
                .allocate_party(request(
                    v1::TopologyAllocatePartyRequest {
                        party: "mallory".into(),
                        participant: "participant1".into(),
                        permission: "submission".into(),
                        ..Default::default()
                    },
                    authorization,
                ))
                .await
                .unwrap_err(),
        ];
        for (call, status) in ["AddParticipant", "AddMediator", "AllocateParty"]
            .iter()
            .zip(statuses)
        {
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{call}, {case}: {status:?}"
            );
            assert!(
                status.message().contains("admin_token"),
                "{call}: {status:?}"
            );
        }
        // Read-only: members catching up fetch the topology without credentials.
        admin
            .get_topology(request(v1::GetTopologyRequest::default(), authorization))
            .await
            .unwrap();
    }
}

async fn sequencer_calls_refuse_without_token(deployment: &Deployment, token: &str) {
    let endpoint = deployment.sequencer_endpoints()[0].clone();
    let mut admin = common::grpc(SequencerAdminServiceClient::new, endpoint)
        .await
        .unwrap();
    for (case, authorization) in refused_cases() {
        let status = admin
            .list_members(request(v1::ListMembersRequest {}, authorization))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "ListMembers, {case}");
        // An owner-keyed sequencer registers only what the owner signed: a bare request is
        // refused whatever its token.
        admin
            .register_member(request(
                v1::RegisterMemberRequest {
                    member: "intruder".into(),
                    public_key: SigningKey::generate().public_key().to_bytes().to_vec(),
                    ..Default::default()
                },
                authorization,
            ))
            .await
            .unwrap_err();
    }
    let members = admin
        .list_members(request(
            v1::ListMembersRequest {},
            Some(&format!("Bearer {token}")),
        ))
        .await
        .unwrap()
        .into_inner()
        .members;
    assert!(!members.is_empty());
    assert!(
        members.iter().all(|m| m.member != "intruder"),
        "{members:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_the_generated_token_and_it_is_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    let spec = DeploymentSpec {
        exe: EXE.into(),
        ..DeploymentSpec::new(
            data_dir.clone(),
            Description::shaped(Shape {
                sequencers: 1,
                replicas: 2,
                participants: 1,
            }),
        )
        .unwrap()
    };
    let mut deployment = common::start_deployment(&spec).await;

    let token_file = data_dir.join("secrets/admin-token");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the admin token is the owner's alone");
    }
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(token.len(), 64, "32 random bytes as hex");

    let before = actives(&data_dir).await;
    assert!(before.iter().all(Option::is_some), "{before:?}");
    let entries_before = topology_entries(&deployment).await;

    http_routes_refuse_mutations(&deployment, &token).await;
    topology_calls_refuse_mutations(&deployment).await;
    sequencer_calls_refuse_without_token(&deployment, &token).await;

    // Nothing changed: every active replica is still active, no topology entry was added.
    assert_eq!(actives(&data_dir).await, before, "nothing stepped down");
    assert_eq!(topology_entries(&deployment).await, entries_before);

    // With the right token: a switchover (the lab sends the deployment's token) and a change.
    let (from, to, _) =
        meridian_lab::admin::switch_over(&data_dir, "participant1", Duration::from_secs(20))
            .await
            .unwrap();
    assert_ne!(from, to);
    let mut admin = common::grpc(
        TopologyAdminServiceClient::new,
        deployment.topology.grpc_endpoint(),
    )
    .await
    .unwrap();
    admin
        .add_participant(request(
            v1::AddParticipantRequest {
                participant: "participant9".into(),
                public_key: SigningKey::generate().public_key().to_bytes().to_vec(),
            },
            Some(&format!("Bearer {token}")),
        ))
        .await
        .unwrap();
    assert_eq!(topology_entries(&deployment).await, entries_before + 1);

    deployment.stop().await.unwrap();

    // No log line of any process shows the token.
    let mut logs = 0;
    let mut pending = vec![data_dir.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "log") {
                logs += 1;
                let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
                assert!(
                    !text.contains(&token),
                    "{} contains the admin token",
                    path.display()
                );
            }
        }
    }
    assert!(logs >= 7, "one log per process, found {logs}");
}
