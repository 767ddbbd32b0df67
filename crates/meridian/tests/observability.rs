//! Black-box tests of what monitoring sees of real node processes: every role's `/metrics`
//! passes `promtool check metrics`; gRPC health agrees with `/readyz` for the whole server
//! (`""`) and for the served service on active and passive replicas, through a switchover;
//! and reflection lists only the services a node serves.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use meridian_core::UserId;
use meridian_lab::admin;
use meridian_lab::deployment::DeploymentSpec;
use meridian_lab::launch::NodeProcess;
use meridian_lab::workload::Parties;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

mod common;

const LEDGER_SERVICE: &str = "meridian.v1.LedgerService";

/// Runs `promtool check metrics` on `text`; returns its complaints (empty when it has none).
/// Panics when promtool is missing: a silently skipped check would pass bad names.
fn promtool_complaints(text: &str) -> String {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool not found: run scripts/test.sh, which installs it (Debian package \
             `prometheus`), or `apt-get install prometheus`"
        ),
        Err(error) => panic!("cannot run promtool: {error}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() && said.trim().is_empty() {
        String::new()
    } else {
        format!("promtool exited with {}:\n{said}", output.status)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_roles_metrics_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DeploymentSpec {
        exe: common::EXE.into(),
        ..DeploymentSpec::local(dir.path().to_path_buf(), 3).unwrap()
    };
    let mut deployment = common::start_deployment(&spec).await;
    // Some traffic, so that families with labels have samples too.
    Parties::allocate(&deployment, &UserId::new("metrics").unwrap())
        .await
        .unwrap();
    let http = meridian_lab::tls::http().unwrap();
    let mut roles = std::collections::BTreeSet::new();
    let mut complaints = Vec::new();
    for process in deployment.processes() {
        let text = common::admin_metrics(&http, process.admin_address).await;
        assert!(text.contains("meridian_"), "{}: {text}", process.name());
        roles.insert(process.role_command());
        let said = promtool_complaints(&text);
        if !said.is_empty() {
            complaints.push(format!("{}: {said}", process.name()));
        }
    }
    assert!(
        roles.len() >= 4,
        "every role should have been scraped, got {roles:?}"
    );
    assert!(complaints.is_empty(), "{}", complaints.join("\n"));
    deployment.stop().await.unwrap();
}

async fn channel(process: &NodeProcess) -> Channel {
    common::endpoint(process.grpc_endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn health(process: &NodeProcess, service: &str) -> ServingStatus {
    let status = HealthClient::new(channel(process).await)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap_or_else(|status| panic!("{} health for {service:?}: {status}", process.name()))
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap()
}

async fn readyz(process: &NodeProcess) -> u16 {
    common::admin_get(
        &meridian_lab::tls::http().unwrap(),
        process.admin_address,
        "readyz",
    )
    .await
    .status()
    .as_u16()
}

/// Waits (bounded) until `process` answers `/readyz` with `code` and gRPC health with the
/// matching status for `""` and for the Ledger API; the health follower applies a change
/// asynchronously, so a brief lag is allowed, a lasting disagreement is not.
async fn wait_agreeing(process: &NodeProcess, code: u16) {
    let expected = if code == 200 {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let seen = (
            readyz(process).await,
            health(process, "").await,
            health(process, LEDGER_SERVICE).await,
        );
        if seen == (code, expected, expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: /readyz, health \"\" and {LEDGER_SERVICE} are {seen:?}, expected \
             ({code}, {expected:?}, {expected:?})",
            process.name()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn listed_services(process: &NodeProcess) -> Vec<String> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel(process).await)
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("not a service list: {response:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_health_agrees_with_readyz_through_a_switchover_and_reflection_lists_what_it_serves(
) {
    let dir = tempfile::tempdir().unwrap();
    let spec = common::replicated_spec(dir.path(), None);
    let mut deployment = common::start_deployment(&spec).await;
    let active = deployment.participants[0].name().to_owned();
    let passive = deployment.participant_standbys[0][0].name().to_owned();

    // Passive: 503 and NOT_SERVING for the whole server, not only for the Ledger API.
    wait_agreeing(&deployment.participant_standbys[0][0], 503).await;
    wait_agreeing(&deployment.participants[0], 200).await;

    assert_eq!(
        listed_services(&deployment.participants[0]).await,
        vec![
            "grpc.health.v1.Health".to_owned(),
            "grpc.reflection.v1.ServerReflection".to_owned(),
            LEDGER_SERVICE.to_owned(),
        ]
    );

    let (from, to, _) = admin::switch_over(
        &deployment.data_dir,
        "participant1",
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert_eq!(
        (from.as_str(), to.as_str()),
        (active.as_str(), passive.as_str())
    );
    // They swap, and health follows on both.
    wait_agreeing(&deployment.participants[0], 503).await;
    wait_agreeing(&deployment.participant_standbys[0][0], 200).await;

    deployment.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_only_the_services_each_role_serves() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DeploymentSpec {
        exe: common::EXE.into(),
        ..DeploymentSpec::local(dir.path().to_path_buf(), 1).unwrap()
    };
    let mut deployment = common::start_deployment(&spec).await;
    let own = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ];
    for (process, served) in [
        (
            &deployment.sequencers[0],
            &[
                "meridian.v1.SequencerAdminService",
                "meridian.v1.SequencerService",
            ][..],
        ),
        (
            &deployment.topology,
            &["meridian.v1.TopologyAdminService"][..],
        ),
        (&deployment.participants[0], &[LEDGER_SERVICE][..]),
    ] {
        let mut expected: Vec<String> = own
            .iter()
            .chain(served)
            .map(|name| (*name).to_owned())
            .collect();
        expected.sort();
        assert_eq!(
            listed_services(process).await,
            expected,
            "{}",
            process.name()
        );
    }
    deployment.stop().await.unwrap();
}
