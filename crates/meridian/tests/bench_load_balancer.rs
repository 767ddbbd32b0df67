//! `meridian bench lb` end to end with the real binary and the real HAProxy: one round without
//! and one through HAProxy at the same rate, both printed with their latency and a clean
//! audit, and the comparison line. Skips only where HAProxy is missing and the suite does not
//! demand it (`MERIDIAN_REQUIRE_HAPROXY`, set by scripts/test.sh).

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_meridian");

#[test]
fn bench_lb_runs_both_arms_and_audits_them() {
    if meridian_testkit::haproxy::binary().is_none() {
        return;
    }
    let output = Command::new(EXE)
        .args([
            "bench",
            "lb",
            "--rounds",
            "1",
            "--duration",
            "2",
            "--rate",
            "20",
            "--lanes",
            "4",
            "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let rounds = report["rounds"].as_array().unwrap();
    let arms: Vec<&str> = rounds.iter().map(|r| r["arm"].as_str().unwrap()).collect();
    assert_eq!(arms, ["direct", "haproxy"], "{report:#}");
    for round in rounds {
        assert!(round["committed"].as_u64().unwrap() > 0, "{report:#}");
        assert!(
            round["latency_p99_ms"].as_f64().unwrap() > 0.0,
            "{report:#}"
        );
        assert_eq!(round["audit_ok"], true, "{report:#}");
        assert_eq!(round["lost_transactions"], 0, "{report:#}");
        assert_eq!(round["duplicate_transactions"], 0, "{report:#}");
    }
    assert_eq!(report["target_rate_per_s"], 20, "{report:#}");
    assert!(report["added_p99_ms"].is_f64(), "{report:#}");
}

#[test]
fn bench_failover_compare_refuses_a_fixed_load_balancer() {
    // Both arms are the bench's to choose: a fixed --load-balancer is refused before anything
    // starts.
    let output = Command::new(EXE)
        .args([
            "bench",
            "failover",
            "--compare-load-balancer",
            "--load-balancer",
            "haproxy",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("leave out --load-balancer"), "{stderr}");
}
