//! `meridian deployment check` as an operator runs it: the shipped example passes with a
//! summary of what it runs, and a broken file fails with every problem named by its key and
//! value, and nothing started.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::process::{Command, Output};

use meridian_lab::deployment::{Description, Preset};

const EXE: &str = env!("CARGO_BIN_EXE_meridian");

fn check(path: &std::path::Path) -> Output {
    Command::new(EXE)
        .args(["deployment", "check"])
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn the_shipped_examples_pass_and_are_summarized() {
    let examples: [(&str, &[&str]); 3] = [
        (
            "two-regions.toml",
            &[
                "region region-2: zones zone-2a, zone-2b",
                "storage: PostgreSQL (the lab promotes standbys)",
                "cluster main: pg-1a (primary, zone-1a), pg-1b (sync-standby, zone-1b), pg-2a (async-standby, zone-2a); 5 ms one way to another region",
                "participant2: participant2-a (warm, zone-1a), participant2-b (warm, zone-1b), participant2-c (cold, zone-2a)",
            ],
        ),
        (
            "two-regions-network.toml",
            &[
                "network: 1 ms round trip between zones, 20 ms between regions, on every link that crosses them",
                "cluster main: pg-1a (primary, zone-1a), pg-1b (sync-standby, zone-1b), pg-2a (async-standby, zone-2a); 10 ms one way to another region",
            ],
        ),
        (
            "two-regions-split.toml",
            &[
                "cluster synchronizer: sync-1a (primary, zone-1a), sync-1b (sync-standby, zone-1b), sync-2a (async-standby, zone-2a); 300 ms one way to another region",
                "cluster participants: part-1a (primary, zone-1a), part-1b (sync-standby, zone-1b), part-2a (async-standby, zone-2a); 5 ms one way to another region",
            ],
        ),
    ];
    for (file, expected_lines) in examples {
        let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/examples")
            .join(file);
        let output = check(&example);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{file}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        for expected in expected_lines {
            assert!(
                stdout.contains(expected),
                "{file}: {expected:?} missing in:\n{stdout}"
            );
        }
    }
}

#[test]
fn a_broken_file_fails_naming_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let mut description = Description::preset(Preset::TwoRegions);
    description.mediator.replicas[0].zone = "zone-9z".into();
    description.participants[2].name = "participant1".into();
    description.topology_manager.replicas.clear();
    description.controller.fall = 0;
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, description.to_toml().unwrap()).unwrap();
    let output = check(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "accepted: {stderr}");
    for expected in [
        "cannot run",
        "mediator.replicas[0].zone = \"zone-9z\": no region lists this zone",
        "participants[2].name = \"participant1\": the node name is used twice",
        "topology_manager.replicas: node \"topology-manager\" has no replica",
        "controller.fall: 0 is outside 1..=100",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} missing in:\n{stderr}"
        );
    }
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "regionz = []\n").unwrap();
    let output = check(&unknown);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown field `regionz`"));
    let text = Description::preset(Preset::Single).to_toml().unwrap();
    let unknown = dir.path().join("unknown-controller-key.toml");
    std::fs::write(
        &unknown,
        format!("{text}\n[controller]\nprobe_interval = 50\n"),
    )
    .unwrap();
    let output = check(&unknown);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown field `probe_interval`"),
        "{stderr}"
    );
}

#[test]
fn standbys_placed_where_they_protect_nothing_are_refused_naming_the_servers() {
    let dir = tempfile::tempdir().unwrap();
    let mut description = Description::preset(Preset::TwoRegions);
    // The sync standby beside the primary, and a second async standby in region one.
    description.postgres_clusters[0].servers[1].zone = "zone-1a".into();
    let mut extra = description.postgres_clusters[0].servers[2].clone();
    extra.name = "pg-1c".into();
    extra.zone = "zone-1b".into();
    description.postgres_clusters[0].servers.push(extra);
    let path = dir.path().join("placement.toml");
    std::fs::write(&path, description.to_toml().unwrap()).unwrap();
    let output = check(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "accepted: {stderr}");
    for expected in [
        "postgres_clusters[0].servers[1]: sync standby \"pg-1b\" is in zone \"zone-1a\" with primary \"pg-1a\"",
        "postgres_clusters[0].servers[3]: async standby \"pg-1c\" is in region \"region-1\" with primary \"pg-1a\"",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} missing in:\n{stderr}"
        );
    }
}
