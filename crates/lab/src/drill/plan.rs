//! What a drill will do, checked before anything starts: the deployment (from a deployment
//! file or the embedded default), the scenarios, and the node each fault is aimed at. Every
//! mistake — an unknown key, an impossible topology, two processes on one port, a fault aimed
//! at a node the deployment does not run — is one clear error, raised before a single process
//! is spawned, so a drill never half-runs against the wrong thing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::bail;
use clap::builder::PossibleValue;
use clap::ValueEnum;
use serde::Deserialize;

use crate::deployment::Backend;
use crate::deployment::NodePorts;
use crate::fault::{Fault, PlannedFault, Redundancy};

/// Most participants and replicas a one-machine drill deployment runs.
const MAX_PARTICIPANTS: usize = 16;
const MAX_REPLICAS: usize = 8;
const MAX_SEQUENCERS: usize = 8;

/// What `--scenario` asks for: one fault, or every fault in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    One(Fault),
    All,
}

impl ValueEnum for Scenario {
    fn value_variants<'a>() -> &'a [Self] {
        // Every fault, then `all`: a new fault is a scenario without being listed here.
        static VARIANTS: OnceLock<Vec<Scenario>> = OnceLock::new();
        VARIANTS.get_or_init(|| {
            Fault::value_variants()
                .iter()
                .copied()
                .map(Scenario::One)
                .chain([Scenario::All])
                .collect()
        })
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        match self {
            Scenario::One(fault) => fault.to_possible_value(),
            Scenario::All => {
                Some(PossibleValue::new("all").help("Every scenario above, one after another"))
            }
        }
    }
}

/// The deployment file: what `meridian drill --deployment FILE` starts. Every key is optional;
/// the defaults are the embedded default deployment (SQLite, two of everything).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeploymentFile {
    /// Participants; the workload uses the first three (bank, alice, bob).
    pub participants: usize,
    /// Replicas of each participant, of the mediator and of the topology manager.
    pub replicas: usize,
    /// Sequencer instances on the sequencer's one database.
    pub sequencers: usize,
    pub backend: FileBackend,
    /// Lease timeout of the replicated nodes.
    pub lease_timeout_ms: u64,
    /// Fixed ports by process name (`participant2-a = { grpc = 4501, admin = 4601 }`).
    pub ports: BTreeMap<String, NodePorts>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileBackend {
    Sqlite,
    Postgres,
}

impl Default for DeploymentFile {
    fn default() -> Self {
        Self {
            participants: 3,
            replicas: 2,
            sequencers: 2,
            backend: FileBackend::Sqlite,
            lease_timeout_ms: 1_000,
            ports: BTreeMap::new(),
        }
    }
}

impl DeploymentFile {
    /// The embedded default on `backend`.
    pub fn embedded(backend: Backend) -> Self {
        Self {
            backend: match backend {
                Backend::Sqlite => FileBackend::Sqlite,
                Backend::Postgres => FileBackend::Postgres,
            },
            ..Self::default()
        }
    }

    /// Reads and checks a deployment file; errors name the file and the key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let file: DeploymentFile = meridian_node::config::load_toml(path)?;
        file.check()
            .map_err(|e| anyhow::anyhow!("deployment file {}: {e}", path.display()))?;
        Ok(file)
    }

    pub fn backend(&self) -> Backend {
        match self.backend {
            FileBackend::Sqlite => Backend::Sqlite,
            FileBackend::Postgres => Backend::Postgres,
        }
    }

    /// Refuses deployments that cannot run: no active replica, too few participants for the
    /// workload, two processes on one port, ports for processes the deployment does not run.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.participants < 3 || self.participants > MAX_PARTICIPANTS {
            bail!(
                "participants = {}: the workload needs 3 (bank, alice, bob); at most {MAX_PARTICIPANTS}",
                self.participants
            );
        }
        if self.replicas == 0 {
            bail!("replicas = 0: every node needs an active replica; passives alone cannot serve");
        }
        if self.replicas > MAX_REPLICAS {
            bail!("replicas = {}: at most {MAX_REPLICAS}", self.replicas);
        }
        if self.sequencers == 0 || self.sequencers > MAX_SEQUENCERS {
            bail!(
                "sequencers = {}: between 1 and {MAX_SEQUENCERS}",
                self.sequencers
            );
        }
        if self.lease_timeout_ms < 100 || self.lease_timeout_ms > 60_000 {
            bail!(
                "lease_timeout_ms = {}: between 100 and 60000",
                self.lease_timeout_ms
            );
        }
        let names = self.process_names();
        let mut owners: BTreeMap<u16, String> = BTreeMap::new();
        for (name, ports) in &self.ports {
            if !names.contains(name) {
                bail!(
                    "ports.{name}: the deployment runs no process {name:?} (it runs {})",
                    names.join(", ")
                );
            }
            for (kind, port) in [("grpc", ports.grpc), ("admin", ports.admin)] {
                if port == 0 {
                    bail!("ports.{name}.{kind}: port 0 is not a fixed port");
                }
                if let Some(other) = owners.insert(port, format!("{name}.{kind}")) {
                    bail!("ports.{name}.{kind}: port {port} is already taken by {other}");
                }
            }
        }
        Ok(())
    }

    /// Every process the deployment runs.
    pub fn process_names(&self) -> Vec<String> {
        crate::deployment::process_names(self.sequencers, self.replicas, self.participants)
    }
}

/// The faults of `scenario` (every one for `all`), each aimed at the node named `target` if
/// given, checked against `deployment`. Faults that cannot apply are refused, except that
/// `all` skips those the storage cannot run (a database restart on SQLite) and says so in
/// `skipped`.
pub fn plan(
    scenario: Scenario,
    target: Option<&str>,
    deployment: &DeploymentFile,
) -> anyhow::Result<(Vec<PlannedFault>, Vec<String>)> {
    let faults: Vec<Fault> = match scenario {
        Scenario::All if target.is_some() => {
            bail!("--target aims one scenario's fault; with --scenario all each uses its default")
        }
        Scenario::All => Fault::value_variants().to_vec(),
        Scenario::One(fault) => vec![fault],
    };
    let mut planned = Vec::new();
    let mut skipped = Vec::new();
    for fault in faults {
        if let Some(unsupported) = fault.unsupported_on(deployment.backend()) {
            if scenario == Scenario::All {
                skipped.push(format!("{}: {}", fault.name(), unsupported.reason));
                continue;
            }
            bail!("{}", unsupported.refusal);
        }
        planned.push(aim(fault, target, deployment)?);
    }
    Ok((planned, skipped))
}

/// `fault` aimed at the node named `target` (else its default), if the deployment runs that
/// node and has something for it to fail over to.
fn aim(
    fault: Fault,
    target: Option<&str>,
    deployment: &DeploymentFile,
) -> anyhow::Result<PlannedFault> {
    let valid = fault.nodes(deployment.participants);
    let node = match target {
        None => fault.default_node(),
        Some(name) => match valid.iter().find(|node| node.name() == name) {
            Some(node) => *node,
            None => {
                let names: Vec<String> = valid.iter().map(|node| node.name()).collect();
                bail!(
                    "{}: the deployment runs no {name:?} this fault can hit (valid: {})",
                    fault.name(),
                    names.join(", ")
                );
            }
        },
    };
    let shortage = match fault.fails_over_to() {
        Some(Redundancy::Sequencers) if deployment.sequencers < 2 => Some("sequencers"),
        Some(Redundancy::Replicas) if deployment.replicas < 2 => Some("replicas"),
        _ => None,
    };
    if let Some(what) = shortage {
        bail!(
            "{}: {} has nothing to fail over to (needs {what} ≥ 2 in the deployment)",
            fault.name(),
            node.name()
        );
    }
    Ok(PlannedFault { fault, node })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<DeploymentFile> {
        let file: DeploymentFile = meridian_node::config::parse_toml(text, "d.toml")?;
        file.check()?;
        Ok(file)
    }

    fn error(text: &str) -> String {
        format!("{:#}", parse(text).expect_err("should be refused"))
    }

    #[test]
    fn the_default_deployment_plans_every_scenario_but_freeze_and_restart_on_sqlite() {
        let file = parse("").expect("empty file is the default");
        let (faults, skipped) = plan(Scenario::All, None, &file).expect("plan");
        assert_eq!(faults.len(), 6);
        assert!(skipped[0].contains("participant-freeze"), "{skipped:?}");
        assert!(skipped[1].contains("database-restart"), "{skipped:?}");
        let postgres = parse("backend = \"postgres\"").expect("postgres");
        let (faults, skipped) = plan(Scenario::All, None, &postgres).expect("plan");
        assert_eq!(faults.len(), 8);
        assert!(skipped.is_empty());
    }

    #[test]
    fn impossible_deployments_are_refused_naming_the_problem() {
        assert!(error("replicaz = 2").contains("unknown field `replicaz`"));
        assert!(error("replicas = 0").contains("passives alone cannot serve"));
        assert!(error("participants = 2").contains("needs 3"));
        assert!(error("sequencers = 0").contains("sequencers = 0"));
        assert!(error("backend = \"oracle\"").contains("backend"));
        let clash = error(
            "[ports]\nparticipant1-a = { grpc = 4501, admin = 4601 }\nparticipant2-a = { grpc = 4601, admin = 4701 }\n",
        );
        assert!(
            clash.contains("port 4601 is already taken by participant1-a.admin"),
            "{clash}"
        );
        let unknown = error("[ports]\nparticipant9-a = { grpc = 4501, admin = 4601 }\n");
        assert!(
            unknown.contains("runs no process \"participant9-a\""),
            "{unknown}"
        );
    }

    #[test]
    fn faults_at_nodes_that_do_not_run_are_refused() {
        let file = parse("").expect("default");
        let single = parse("replicas = 1").expect("unreplicated");
        let cases = [
            (
                Fault::ParticipantCrash,
                Some("participant7"),
                &file,
                "no \"participant7\"",
            ),
            (
                Fault::MediatorCrash,
                Some("participant1"),
                &file,
                "valid: mediator",
            ),
            (
                Fault::ParticipantCrash,
                None,
                &single,
                "nothing to fail over to",
            ),
            (Fault::DatabaseRestart, None, &file, "--backend postgres"),
        ];
        for (fault, target, description, expected) in cases {
            let message = format!(
                "{:#}",
                plan(Scenario::One(fault), target, description).expect_err("refused")
            );
            assert!(
                message.contains(expected),
                "{fault:?} at {target:?}: {message}"
            );
        }
    }
}
