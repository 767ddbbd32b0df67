//! Through the load balancer, nothing fails: the real `meridian drill --load-balancer haproxy`
//! runs the transfer workload with clients that know only HAProxy's one address per
//! participant, and breaks the deployment under that load — a kill -9 of the active
//! participant replica, a participant switchover (`meridian admin switchover`'s call), and a
//! region switchover planned by `meridian controller` and approved by the drill. Each asserts
//! 0 failed application requests (retries with the same command id are fine), RPO 0, no
//! duplicate and a clean audit; the region switchover also that the plan's load balancer step
//! reloaded HAProxy and that HAProxy (its runtime socket, read by the drill) then routes every
//! participant to its region-two replica.
//!
//! And, deterministically, the reason those requests do not fail: while no replica is ready,
//! HAProxy's own answer reaches a gRPC client as UNAVAILABLE (which clients retry), not as an
//! HTML error page tonic reports as INTERNAL.
//!
//! Needs HAProxy: skipped, with a line saying so, where it is missing — unless
//! `MERIDIAN_REQUIRE_HAPROXY` is set (scripts/test.sh sets it), which makes that a failure.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use meridian_lb::haproxy::{self, server_states};
use meridian_lb::{Frontend, Haproxy, HaproxyFiles, HealthChecks, LbPlan, LbTls, Server, Traffic};

const EXE: &str = env!("CARGO_BIN_EXE_meridian");

/// Runs `meridian drill --load-balancer haproxy` with `args` in `dir`, asserts it passed, and
/// returns its JSON report and its table.
fn drill_through_haproxy(dir: &Path, args: &[&str]) -> (serde_json::Value, String) {
    let json = dir.join("drill.json");
    let data = dir.join("data");
    let output = Command::new(EXE)
        .arg("drill")
        .args(["--load-balancer", "haproxy"])
        .args(["--settle-s", "2", "--observe-s", "1", "--lanes", "8"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--json")
        .arg(&json)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "drill failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["load_balancer"], "haproxy", "{report}");
    assert!(stdout.contains("through HAProxy"), "{stdout}");
    (report, stdout)
}

/// One participant fault through HAProxy: it was detected and recovered, and the
/// applications saw no failure, lost nothing and duplicated nothing.
fn assert_participant_fault_lost_nothing(scenario: &str, action: &str) {
    if meridian_testkit::haproxy::binary().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (report, _) = drill_through_haproxy(dir.path(), &["--scenario", scenario]);
    let faults = report["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 1, "{report}");
    let fault = &faults[0];
    assert_eq!(fault["scenario"], scenario, "{fault}");
    assert!(
        fault["action"].as_str().unwrap().starts_with(action),
        "{fault}"
    );
    assert!(fault["detection_ms"].as_f64().is_some(), "{fault}");
    assert!(fault["rto_first_success_ms"].as_f64().is_some(), "{fault}");
    assert!(fault["problem"].is_null(), "{fault}");
    assert_eq!(report["failed_requests"], 0, "{report}");
    assert_eq!(report["rpo_transactions"], 0, "{report}");
    assert_eq!(report["duplicate_transactions"], 0, "{report}");
    assert_eq!(report["audit_ok"], true, "{report}");
    assert!(report["committed"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn a_killed_active_participant_replica_fails_over_behind_haproxy_with_no_failed_request() {
    assert_participant_fault_lost_nothing("participant-crash", "kill -9 participant2-");
}

#[test]
fn a_participant_switchover_behind_haproxy_fails_no_request() {
    assert_participant_fault_lost_nothing("switchover", "meridian admin switchover");
}

#[test]
fn a_controller_region_switchover_reloads_haproxy_onto_region_two_with_no_failed_request() {
    if meridian_testkit::haproxy::binary().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (report, stdout) = drill_through_haproxy(
        dir.path(),
        &[
            "--scenario",
            "region-switchover",
            "--preset",
            "two-regions",
            "--backend",
            "sqlite",
        ],
    );
    assert!(stdout.contains("operated by the controller"), "{stdout}");
    assert_eq!(report["passed"], true, "{report}");
    let trial = &report["trials"][0];
    assert_eq!(trial["plan_state"], "done", "{trial}");
    assert_eq!(trial["to_region"], "region-2", "{trial}");
    assert!(trial["problem"].is_null(), "{trial}");
    assert_eq!(trial["failed_requests"], 0, "{trial}");
    assert_eq!(trial["rpo_transactions"], 0, "{trial}");
    assert_eq!(trial["duplicate_transactions"], 0, "{trial}");
    assert_eq!(trial["amounts_conserved"], true, "{trial}");
    assert_eq!(trial["views_agree"], true, "{trial}");
    assert!(
        trial["approval_to_first_commit_ms"].as_f64().is_some(),
        "{trial}"
    );
    // The plan moved HAProxy for real: reloaded, not "no load balancer configured".
    let step = trial["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "load balancer")
        .unwrap_or_else(|| panic!("no load balancer step: {trial}"));
    assert_eq!(step["outcome"], "done", "{step}");
    let detail = step["detail"].as_str().unwrap();
    assert!(detail.starts_with("HAProxy reloaded"), "{step}");
    assert!(detail.contains("region-1 → region-2"), "{step}");
    // Afterwards HAProxy's runtime socket shows participant1 served by its region-two replica
    // only.
    let routes = trial["load_balancer_routes"].as_array().unwrap();
    let participant1 = routes
        .iter()
        .find(|r| r["frontend"] == "participant1")
        .unwrap_or_else(|| panic!("no route of participant1: {trial}"));
    assert_eq!(
        participant1["up"],
        serde_json::json!(["participant1-c"]),
        "{trial}"
    );
    assert_eq!(
        participant1["regions"],
        serde_json::json!(["region-2"]),
        "{trial}"
    );
    assert_eq!(routes.len(), 3, "every participant is routed: {trial}");
}

fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn with_no_replica_ready_haproxy_answers_grpc_unavailable_not_an_html_page() {
    let Some(binary) = meridian_testkit::haproxy::binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let files = HaproxyFiles::new(dir.path());
    // One replica, nothing listening on its ports: its checks fail, no server is up.
    let plan = LbPlan {
        active_region: "region-1".to_owned(),
        runtime_socket: files.socket(),
        tls: LbTls::Plaintext,
        checks: HealthChecks::default(),
        frontends: vec![Frontend {
            name: "participant1".to_owned(),
            traffic: Traffic::Ledger,
            bind: free_port(),
            servers: vec![Server {
                name: "participant1-a".to_owned(),
                region: "region-1".to_owned(),
                grpc: free_port(),
                admin: free_port(),
            }],
        }],
    };
    haproxy::write_config(&binary, &files, &plan).unwrap();
    let _lb = Haproxy::start(&binary, &files, false).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server_states(&files.socket())
        .await
        .unwrap()
        .iter()
        .any(|s| s.is_up())
    {
        assert!(Instant::now() < deadline, "the replica never went down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", plan.frontends[0].bind))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect_err("no replica is ready");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains("no replica of the participant is ready"),
        "{status:?}"
    );
}
