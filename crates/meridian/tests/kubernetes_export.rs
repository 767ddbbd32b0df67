//! `meridian deployment export --kubernetes` as an operator runs it: the manifests of the
//! `replicated` (on PostgreSQL) and `two-regions` deployments pass a strict offline schema
//! check (`kubernetes-validate --strict`: unknown fields are errors), probe `/readyz` and
//! `/livez`, pin every replica to its zone, and give each participant one Service that selects
//! its pods only; `deploy/kubernetes/replicated/` is what the command writes today; bad input
//! is one error line and no directory.
//!
//! The schema check needs `kubernetes-validate` (PyPI) on `PATH` or in
//! `target/tools/kubernetes-validate` (where `scripts/test.sh` installs it); without it the
//! check is skipped with a note, unless `MERIDIAN_REQUIRE_KUBERNETES_VALIDATE` is set, which
//! makes a missing validator a failure.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use meridian_lab::deployment::{Description, Preset};
use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_meridian");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn export(out: &Path, source: &[&str]) -> Output {
    Command::new(EXE)
        .args(["deployment", "export", "--kubernetes", "--out"])
        .arg(out)
        .args(source)
        .output()
        .unwrap()
}

/// Exports `source` into a new directory under `dir` and returns it.
fn exported(dir: &Path, name: &str, source: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let output = export(&out, source);
    assert!(
        output.status.success(),
        "{source:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// Every file of an export by name.
fn files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect()
}

/// Every manifest of an export, parsed.
fn objects(dir: &Path) -> Vec<Value> {
    files(dir)
        .into_iter()
        .filter(|(name, _)| name.ends_with(".json"))
        .map(|(name, text)| serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}")))
        .collect()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// `kubernetes-validate`: on PATH, or where scripts/test.sh installs it.
fn validator() -> Option<PathBuf> {
    let installed = repo().join("target/tools/kubernetes-validate/bin/kubernetes-validate");
    if installed.exists() {
        return Some(installed);
    }
    let on_path = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    on_path.then(|| PathBuf::from("kubernetes-validate"))
}

/// Validates every manifest in `dir` strictly; skips only where the validator is missing and
/// not required.
fn validate_strictly(dir: &Path) {
    let Some(validator) = validator() else {
        assert!(
            std::env::var_os("MERIDIAN_REQUIRE_KUBERNETES_VALIDATE").is_none(),
            "kubernetes-validate is required (MERIDIAN_REQUIRE_KUBERNETES_VALIDATE is set) but \
             missing: run scripts/test.sh, which installs it"
        );
        eprintln!("kubernetes-validate is not installed: schema check skipped (scripts/test.sh installs it)");
        return;
    };
    let manifests: Vec<PathBuf> = files(dir)
        .keys()
        .filter(|name| name.ends_with(".json"))
        .map(|name| dir.join(name))
        .collect();
    let output = Command::new(&validator)
        .args(["--strict", "--quiet"])
        .args(&manifests)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} does not validate:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The pod labels of every StatefulSet, by its name.
fn pod_labels(objects: &[Value]) -> BTreeMap<String, serde_json::Map<String, Value>> {
    of_kind(objects, "StatefulSet")
        .into_iter()
        .map(|set| {
            let name = set["metadata"]["name"].as_str().unwrap().to_owned();
            let labels = set["spec"]["template"]["metadata"]["labels"]
                .as_object()
                .unwrap()
                .clone();
            (name, labels)
        })
        .collect()
}

fn selects(
    selector: &serde_json::Map<String, Value>,
    labels: &serde_json::Map<String, Value>,
) -> bool {
    selector
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// What the issue asks of the manifests of `description`, exported into `dir`.
fn assert_behaviour(dir: &Path, description: &Description) {
    let objects = objects(dir);
    let keys = description.node_keys();
    let nodes = description.nodes(&keys);
    let sets = of_kind(&objects, "StatefulSet");
    let replicas: usize = nodes.iter().map(|n| n.replicas.len()).sum();
    assert_eq!(sets.len(), replicas, "one StatefulSet per replica");

    for node in &nodes {
        for replica in node.replicas {
            let name = replica.name.as_str();
            let set = sets
                .iter()
                .find(|s| s["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("no StatefulSet {name}"));
            let warm = replica.standby == meridian_lab::deployment::description::Standby::Warm;
            assert_eq!(
                set["spec"]["replicas"],
                u64::from(warm),
                "{name}: cold ones at 0"
            );
            let pod = &set["spec"]["template"]["spec"];
            let term = &pod["affinity"]["nodeAffinity"]
                ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
            assert_eq!(term.as_array().unwrap().len(), 1, "{name}");
            let expression = &term[0]["matchExpressions"][0];
            assert_eq!(expression["key"], "topology.kubernetes.io/zone", "{name}");
            assert_eq!(expression["operator"], "In", "{name}");
            assert_eq!(
                expression["values"],
                serde_json::json!([replica.zone.as_str()]),
                "{name} is pinned to its zone"
            );
            let container = &pod["containers"][0];
            let readiness = &container["readinessProbe"]["httpGet"];
            assert_eq!(readiness["path"], "/readyz", "{name}");
            assert_eq!(readiness["scheme"], "HTTPS", "{name}");
            assert_eq!(readiness["port"], "admin", "{name}");
            assert_eq!(
                container["livenessProbe"]["httpGet"]["path"], "/livez",
                "{name}"
            );
            assert_eq!(container["command"][1], node.role.command(), "{name}");
        }
    }

    // One Service per participant, selecting that participant's pods and nothing else.
    let labels = pod_labels(&objects);
    let services = of_kind(&objects, "Service");
    for participant in nodes
        .iter()
        .filter(|n| n.role == meridian_lab::deployment::description::Role::Participant)
    {
        let service_name = format!("{}-ledger-api", participant.name);
        let matching: Vec<&&Value> = services
            .iter()
            .filter(|s| s["metadata"]["name"] == service_name.as_str())
            .collect();
        assert_eq!(matching.len(), 1, "one Service for {}", participant.name);
        let service = matching[0];
        assert_ne!(service["spec"]["clusterIP"], "None", "routed, not headless");
        assert!(
            service["spec"].get("publishNotReadyAddresses").is_none(),
            "{service_name} must route to ready pods only"
        );
        let selector = service["spec"]["selector"].as_object().unwrap();
        let selected: Vec<&String> = labels
            .iter()
            .filter(|(_, l)| selects(selector, l))
            .map(|(name, _)| name)
            .collect();
        let expected: Vec<String> = participant
            .replicas
            .iter()
            .map(|r| r.name.to_string())
            .collect();
        assert_eq!(
            selected.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            {
                let mut sorted: Vec<&str> = expected.iter().map(String::as_str).collect();
                sorted.sort_unstable();
                sorted
            },
            "{service_name} selects exactly {}'s replicas",
            participant.name
        );
    }
}

#[test]
fn replicated_and_two_regions_validate_strictly_and_route_to_ready_participants() {
    let dir = tempfile::tempdir().unwrap();
    let replicated = exported(
        dir.path(),
        "replicated",
        &["--preset", "replicated", "--backend", "postgres"],
    );
    let example = repo().join("docs/examples/two-regions.toml");
    let two_regions = exported(dir.path(), "two-regions", &[example.to_str().unwrap()]);
    let single = exported(dir.path(), "single", &["--preset", "single"]);

    validate_strictly(&replicated);
    validate_strictly(&two_regions);
    validate_strictly(&single);

    let on_postgres = Description::preset(Preset::Replicated)
        .with_backend(meridian_lab::deployment::Backend::Postgres);
    assert_behaviour(&replicated, &on_postgres);
    assert_behaviour(&two_regions, &Description::preset(Preset::TwoRegions));
    assert_behaviour(&single, &Description::preset(Preset::Single));

    // SQLite: the node's file on the pod's own volume.
    let single_objects = objects(&single);
    for set in of_kind(&single_objects, "StatefulSet") {
        assert_eq!(
            set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "data",
            "{}",
            set["metadata"]["name"]
        );
    }
}

#[test]
fn the_committed_manifests_are_what_the_command_writes() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = exported(
        dir.path(),
        "replicated",
        &["--preset", "replicated", "--backend", "postgres"],
    );
    let committed = repo().join("deploy/kubernetes/replicated");
    assert_eq!(
        files(&committed),
        files(&fresh),
        "deploy/kubernetes/replicated is stale: regenerate it as deploy/kubernetes/README.md says"
    );
}

#[test]
fn bad_input_is_one_error_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    let text = Description::preset(Preset::Single)
        .to_toml()
        .unwrap()
        .replace("zone = \"zone-1a\"", "zone = \"zone-9z\"");
    std::fs::write(&broken, text).unwrap();
    let occupied = dir.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("keep.txt"), "mine").unwrap();

    let cases: [(&str, PathBuf, Vec<&str>, &str); 6] = [
        (
            "unknown preset",
            dir.path().join("a"),
            vec!["--preset", "nope"],
            "nope",
        ),
        (
            "file that does not check",
            dir.path().join("b"),
            vec![broken.to_str().unwrap()],
            "zone-9z",
        ),
        (
            "replicas sharing an SQLite file",
            dir.path().join("c"),
            vec!["--preset", "replicated"],
            "--backend postgres",
        ),
        (
            "bad namespace",
            dir.path().join("d"),
            vec!["--preset", "single", "--namespace", "Not_A_Name"],
            "--namespace",
        ),
        (
            "occupied directory",
            occupied.clone(),
            vec!["--preset", "single"],
            "not empty",
        ),
        (
            "unwritable place",
            dir.path().join("missing/out"),
            vec!["--preset", "single"],
            "cannot write into",
        ),
    ];
    for (what, out, args, expected) in cases {
        let output = export(&out, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{what}: succeeded");
        assert!(
            stderr.contains(expected),
            "{what}: {expected:?} not in {stderr}"
        );
        // One error (a description that does not check lists each problem on a line of its
        // own below it, as `deployment check` does).
        let errors = stderr.lines().filter(|l| l.starts_with("error")).count();
        assert_eq!(errors, 1, "{what}: {stderr}");
        if out != occupied {
            assert!(!out.exists(), "{what}: {} was written", out.display());
        }
    }
    assert_eq!(
        files(&occupied).len(),
        1,
        "the occupied directory is untouched"
    );
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".meridian-export"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "staging directories left: {leftovers:?}"
    );
}
