//! What a drill will do, checked before anything starts: the deployment (from a deployment
//! file or the embedded default), the scenarios, and the node each fault is aimed at. Every
//! mistake — an unknown key, an impossible topology, two processes on one port, a fault aimed
//! at a node the deployment does not run — is one clear error, raised before a single process
//! is spawned, so a drill never half-runs against the wrong thing.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::bail;
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::bench::sequencer::Backend;
use crate::deployment::NodePorts;

/// Most participants and replicas a one-machine drill deployment runs.
/// The topology manager's node name in a deployment (its replicas are `<name>-a`, ...).
pub const TOPOLOGY_NODE: &str = "topology-manager";
const MAX_PARTICIPANTS: usize = 16;
const MAX_REPLICAS: usize = 8;
const MAX_SEQUENCERS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// kill -9 the active replica of a participant.
    ParticipantCrash,
    /// SIGSTOP the active participant replica until a passive took over, then SIGCONT.
    ParticipantFreeze,
    /// Graceful stop (SIGTERM) of the active participant replica, as in a rolling upgrade.
    ParticipantStop,
    /// kill -9 the active mediator replica.
    MediatorCrash,
    /// kill -9 the active topology manager replica.
    TopologyCrash,
    /// kill -9 one sequencer instance.
    SequencerCrash,
    /// Stop the PostgreSQL server for a few seconds, then start it again.
    DatabaseRestart,
    /// `meridian admin switchover` of a participant under load.
    Switchover,
    /// Every scenario above, one after another.
    All,
}

impl Scenario {
    pub const EACH: [Scenario; 8] = [
        Scenario::ParticipantCrash,
        Scenario::ParticipantFreeze,
        Scenario::ParticipantStop,
        Scenario::MediatorCrash,
        Scenario::TopologyCrash,
        Scenario::SequencerCrash,
        Scenario::DatabaseRestart,
        Scenario::Switchover,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::ParticipantCrash => "participant-crash",
            Scenario::ParticipantFreeze => "participant-freeze",
            Scenario::ParticipantStop => "participant-stop",
            Scenario::MediatorCrash => "mediator-crash",
            Scenario::TopologyCrash => "topology-crash",
            Scenario::SequencerCrash => "sequencer-crash",
            Scenario::DatabaseRestart => "database-restart",
            Scenario::Switchover => "switchover",
            Scenario::All => "all",
        }
    }

    /// Whether the scenario kills or stops a process (RTO targets apply to these).
    pub fn is_crash(self) -> bool {
        matches!(
            self,
            Scenario::ParticipantCrash
                | Scenario::MediatorCrash
                | Scenario::TopologyCrash
                | Scenario::SequencerCrash
        )
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

/// The node a fault is aimed at, by the name of its directory (`participant2`, `mediator`,
/// `topology-manager`, `sequencer`).
pub fn default_target(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::ParticipantCrash
        | Scenario::ParticipantFreeze
        | Scenario::ParticipantStop
        | Scenario::Switchover => "participant2",
        Scenario::MediatorCrash => "mediator",
        Scenario::TopologyCrash => TOPOLOGY_NODE,
        Scenario::SequencerCrash | Scenario::DatabaseRestart => "sequencer",
        Scenario::All => "",
    }
}

/// One fault the drill will inject.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedFault {
    pub scenario: Scenario,
    /// The node (directory name) the fault is aimed at.
    pub target: String,
}

/// The faults of `scenario` (every one for `all`), each aimed at `target` if given, checked
/// against `deployment`. Scenarios that cannot apply are refused, except that `all` skips the
/// database restart on SQLite (there is no server to restart) and says so in `skipped`.
pub fn plan(
    scenario: Scenario,
    target: Option<&str>,
    deployment: &DeploymentFile,
) -> anyhow::Result<(Vec<PlannedFault>, Vec<String>)> {
    let scenarios: Vec<Scenario> = if scenario == Scenario::All {
        Scenario::EACH.to_vec()
    } else {
        vec![scenario]
    };
    if scenario == Scenario::All && target.is_some() {
        bail!("--target aims one scenario's fault; with --scenario all each uses its default");
    }
    let mut faults = Vec::new();
    let mut skipped = Vec::new();
    for each in scenarios {
        if each == Scenario::DatabaseRestart && deployment.backend == FileBackend::Sqlite {
            if scenario == Scenario::All {
                skipped.push(format!(
                    "{}: SQLite is embedded, there is no database server to restart (use --backend postgres)",
                    each.name()
                ));
                continue;
            }
            bail!("database-restart restarts a PostgreSQL server; run it with --backend postgres");
        }
        if each == Scenario::ParticipantFreeze && deployment.backend == FileBackend::Sqlite {
            // A process stopped inside a write transaction keeps the SQLite file's write lock,
            // and no other process can break it: the passive could never write. PostgreSQL
            // terminates the frozen holder's session instead (docs/high-availability.md).
            let reason = "on SQLite a frozen process can keep the database file's write lock, which no other process can break (use --backend postgres)";
            if scenario == Scenario::All {
                skipped.push(format!("{}: {reason}", each.name()));
                continue;
            }
            bail!("participant-freeze: {reason}");
        }
        let target = target.unwrap_or(default_target(each)).to_owned();
        check_target(each, &target, deployment)?;
        faults.push(PlannedFault {
            scenario: each,
            target,
        });
    }
    Ok((faults, skipped))
}

fn check_target(
    scenario: Scenario,
    target: &str,
    deployment: &DeploymentFile,
) -> anyhow::Result<()> {
    let participants: Vec<String> = (1..=deployment.participants)
        .map(|i| format!("participant{i}"))
        .collect();
    let valid: Vec<String> = match scenario {
        Scenario::ParticipantCrash
        | Scenario::ParticipantFreeze
        | Scenario::ParticipantStop
        | Scenario::Switchover => participants,
        Scenario::MediatorCrash => vec!["mediator".into()],
        Scenario::TopologyCrash => vec![TOPOLOGY_NODE.into()],
        Scenario::SequencerCrash | Scenario::DatabaseRestart => vec!["sequencer".into()],
        Scenario::All => Vec::new(),
    };
    if !valid.iter().any(|v| v == target) {
        bail!(
            "{}: the deployment runs no {target:?} this fault can hit (valid: {})",
            scenario.name(),
            valid.join(", ")
        );
    }
    let redundant = match scenario {
        Scenario::SequencerCrash => deployment.sequencers >= 2,
        Scenario::DatabaseRestart => true,
        _ => deployment.replicas >= 2,
    };
    if !redundant {
        bail!(
            "{}: {target} has nothing to fail over to (needs {} ≥ 2 in the deployment)",
            scenario.name(),
            if scenario == Scenario::SequencerCrash {
                "sequencers"
            } else {
                "replicas"
            }
        );
    }
    Ok(())
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
        let message = format!(
            "{:#}",
            plan(Scenario::ParticipantCrash, Some("participant7"), &file).expect_err("refused")
        );
        assert!(message.contains("no \"participant7\""), "{message}");
        let message = format!(
            "{:#}",
            plan(Scenario::MediatorCrash, Some("participant1"), &file).expect_err("refused")
        );
        assert!(message.contains("valid: mediator"), "{message}");
        let single = parse("replicas = 1").expect("unreplicated");
        let message = format!(
            "{:#}",
            plan(Scenario::ParticipantCrash, None, &single).expect_err("refused")
        );
        assert!(message.contains("nothing to fail over to"), "{message}");
        let message = format!(
            "{:#}",
            plan(Scenario::DatabaseRestart, None, &file).expect_err("refused")
        );
        assert!(message.contains("--backend postgres"), "{message}");
    }
}
