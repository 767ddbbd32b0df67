//! `meridian bench ledger` end to end, on the embedded default: a short saturation run of the
//! replicated preset reports what issue 14 bounds besides throughput — each role's peak RSS and
//! how many sequencer instances were marked offline (in a run without faults, every mark is a
//! wrongful one) — next to a clean audit.

use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_meridian");

#[test]
fn a_short_run_reports_throughput_rss_by_role_and_offline_marks_with_a_clean_audit() {
    let output = Command::new(EXE)
        .args([
            "bench",
            "ledger",
            "--preset",
            "replicated",
            "--duration",
            "3",
            "--json",
        ])
        .output()
        .expect("run meridian bench ledger");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON report on stdout");
    assert_eq!(report["audit_ok"], true, "{report}");
    assert!(
        report["tx_per_s"].as_f64().expect("tx_per_s") > 0.0,
        "{report}"
    );
    for role in ["participant", "sequencer", "mediator", "topology"] {
        let mib = report["peak_rss_mib_by_role"][role]
            .as_f64()
            .unwrap_or_else(|| panic!("no peak RSS for {role}: {report}"));
        assert!(mib > 1.0, "{role}: {mib} MiB");
    }
    let marks = report["sequencer_peers_marked_offline"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offline marks figure: {report}"));
    println!("sequencer instances marked offline in a fault-free run: {marks}");
}
