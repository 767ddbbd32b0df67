//! The first start of a deployment by its controller, and the check that a controller
//! pointed at a data directory supervises what runs there. A directory without a deployment
//! gets one: the active controller starts it with the lab's own [`Deployment::start`], its
//! processes detached (they outlive the controller), and keeps only their child handles and
//! pidfiles. A directory with one must hold the same description as the controller was
//! given; any difference is an error naming each differing key, and nothing is started.

use std::path::Path;
use std::process::Child;

use anyhow::Context as _;
use meridian_core::placement::ReplicaName;

use crate::deployment::{Databases, Deployment, DeploymentSpec, Description, DESCRIPTION_FILE};

/// What a first start left running.
#[derive(Debug)]
pub struct Bootstrapped {
    pub processes: Vec<(ReplicaName, Child)>,
    /// The throwaway PostgreSQL clusters (they stop with this process).
    pub databases: Option<Databases>,
}

/// Whether `data_dir` holds a deployment; an error naming what differs if it holds another
/// one than `description`.
pub fn check_matches(data_dir: &Path, description: &Description) -> anyhow::Result<bool> {
    let path = data_dir.join(DESCRIPTION_FILE);
    if !path.exists() {
        return Ok(false);
    }
    let running = Description::load(&path)
        .with_context(|| format!("reading the running deployment's {}", path.display()))?;
    let differences = differences(&running, description)?;
    if !differences.is_empty() {
        anyhow::bail!(
            "the deployment running in {} is not the one given: {}; nothing was started or \
             changed (give the same file, or another --data-dir)",
            data_dir.display(),
            differences.join("; ")
        );
    }
    Ok(true)
}

/// Each key whose value differs, as `key: running X, given Y`.
pub fn differences(running: &Description, given: &Description) -> anyhow::Result<Vec<String>> {
    let value = |d: &Description| -> anyhow::Result<toml::Value> {
        Ok(toml::Value::Table(toml::from_str(&d.to_toml()?)?))
    };
    let mut found = Vec::new();
    diff("", &value(running)?, &value(given)?, &mut found);
    Ok(found)
}

fn diff(path: &str, running: &toml::Value, given: &toml::Value, found: &mut Vec<String>) {
    use toml::Value;
    let key = |suffix: &str| {
        if path.is_empty() {
            suffix.to_owned()
        } else if suffix.starts_with('[') {
            format!("{path}{suffix}")
        } else {
            format!("{path}.{suffix}")
        }
    };
    match (running, given) {
        (Value::Table(a), Value::Table(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for name in keys {
                match (a.get(name), b.get(name)) {
                    (Some(x), Some(y)) => diff(&key(name), x, y, found),
                    (Some(x), None) => {
                        found.push(format!("{}: running {x}, given none", key(name)))
                    }
                    (None, Some(y)) => {
                        found.push(format!("{}: running none, given {y}", key(name)))
                    }
                    (None, None) => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for index in 0..a.len().max(b.len()) {
                let at = key(&format!("[{index}]"));
                match (a.get(index), b.get(index)) {
                    (Some(x), Some(y)) => diff(&at, x, y, found),
                    (Some(_), None) => found.push(format!("{at}: running has it, given has not")),
                    (None, Some(_)) => found.push(format!("{at}: given has it, running has not")),
                    (None, None) => {}
                }
            }
        }
        (a, b) if a != b => found.push(format!("{path}: running {a}, given {b}")),
        _ => {}
    }
}

/// Starts the deployment in `data_dir` unless it runs there already (then checks it is the
/// same, and makes this process's clients trust its certificates). `Some` after a first
/// start.
pub fn prepare(
    exe: &Path,
    data_dir: &Path,
    description: &Description,
) -> anyhow::Result<Option<Bootstrapped>> {
    if check_matches(data_dir, description)? {
        crate::tls::use_deployment(data_dir)?;
        return Ok(None);
    }
    tracing::info!(data_dir = %data_dir.display(), "no deployment here yet: starting it");
    let mut spec = DeploymentSpec::new(data_dir.to_path_buf(), description.clone())?;
    spec.exe = exe.to_path_buf();
    spec.ledger_auth = true;
    spec.detached = true;
    // `Deployment::start` holds its progress sink across awaits, which makes its future not
    // `Send`; run it on this thread (a multi-threaded runtime keeps the others working).
    let (databases, mut deployment) = tokio::task::block_in_place(|| {
        let databases = spec.start_postgres()?;
        let mut progress = |line: String| tracing::info!("{line}");
        let deployment =
            tokio::runtime::Handle::current().block_on(Deployment::start(&spec, &mut progress))?;
        anyhow::Ok((databases, deployment))
    })?;
    let mut processes = Vec::new();
    for process in deployment.processes_mut() {
        let name = ReplicaName(process.name().to_owned());
        if let Some(child) = process.detach() {
            processes.push((name, child));
        }
    }
    Ok(Some(Bootstrapped {
        processes,
        databases,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::description::{Backend, Preset, Standby};

    #[test]
    fn every_differing_key_is_named() {
        let running = Description::preset(Preset::Replicated);
        assert!(differences(&running, &running)
            .expect("compares")
            .is_empty());
        let mut given = running.clone();
        given.lease_timeout_ms = 2_000;
        given.participants[0].replicas[1].standby = Standby::Cold;
        let found = differences(&running, &given).expect("compares");
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("lease_timeout_ms: running 700, given 2000"),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("participants[0].replicas[1].standby"),
            "{found:?}"
        );
        let other = Description::preset(Preset::TwoRegions).with_backend(Backend::Sqlite);
        let found = differences(&running, &other).expect("compares");
        assert!(
            found.iter().any(|f| f.starts_with("regions[1]")),
            "{found:?}"
        );
    }

    #[test]
    fn a_directory_without_a_deployment_matches_nothing_and_a_different_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let description = Description::preset(Preset::Replicated);
        assert!(!check_matches(dir.path(), &description).expect("empty directory"));
        std::fs::write(
            dir.path().join(DESCRIPTION_FILE),
            description.to_toml().expect("serializes"),
        )
        .expect("writes");
        assert!(check_matches(dir.path(), &description).expect("the same"));
        let error = check_matches(dir.path(), &Description::preset(Preset::Single))
            .expect_err("another deployment");
        let message = format!("{error:#}");
        assert!(message.contains("not the one given"), "{message}");
        assert!(message.contains("sequencer.instances[1]"), "{message}");
    }
}
