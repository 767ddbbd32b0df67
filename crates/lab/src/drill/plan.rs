//! What a drill will do, checked before anything starts: the scenarios, and the node each
//! fault is aimed at, against the deployment (already checked as a whole by
//! `deployment::check`). Every mistake — too few participants for the workload, a fault aimed
//! at a node the deployment does not run or at one with nothing to fail over to — is one
//! clear error, raised before a single process is spawned, so a drill never half-runs
//! against the wrong thing.

use std::sync::OnceLock;

use anyhow::bail;
use clap::builder::PossibleValue;
use clap::ValueEnum;

use crate::deployment::description::ServerRole;
use crate::deployment::{Backend, Description, Promoter};
use crate::fault::{Fault, PlannedFault, Redundancy, Unsupported};

/// Participants the workload needs: bank, alice and bob.
const WORKLOAD_PARTICIPANTS: usize = 3;

/// What `--scenario` asks for: one fault, every fault in turn, or a nemesis run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    One(Fault),
    All,
    /// A seeded random schedule of overlapping faults (`crate::nemesis`).
    Random,
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
                .chain([Scenario::All, Scenario::Random])
                .collect()
        })
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        match self {
            Scenario::One(fault) => fault.to_possible_value(),
            Scenario::All => {
                Some(PossibleValue::new("all").help("Every scenario above, one after another"))
            }
            Scenario::Random => Some(PossibleValue::new("random").help(
                "A nemesis: random overlapping faults of every kind for --duration (--seed replays)",
            )),
        }
    }
}

/// What the planner needs to know of a deployment: its participants, the redundancy of its
/// warm replicas and sequencer instances, and its storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanView {
    pub participants: usize,
    /// Warm replicas of the least redundant replicated node.
    pub warm_replicas: usize,
    pub warm_sequencers: usize,
    pub backend: Backend,
    /// Whether the (only) PostgreSQL cluster has a synchronous standby to promote.
    pub sync_standby: bool,
    /// Whether the deployment spans two regions with an asynchronous standby of every
    /// PostgreSQL cluster in another region than its primary: a region move's target.
    pub region_standby: bool,
    /// Who promotes a standby when a primary is lost.
    pub promoter: Promoter,
}

impl PlanView {
    pub fn of(description: &Description) -> Self {
        Self {
            participants: description.participants.len(),
            warm_replicas: description.min_warm_replicas(),
            warm_sequencers: description.warm_sequencers(),
            backend: description.storage.backend,
            sync_standby: description.postgres_clusters.len() == 1
                && description.postgres_clusters[0]
                    .servers
                    .iter()
                    .any(|s| s.role == ServerRole::SyncStandby),
            region_standby: !description.postgres_clusters.is_empty()
                && description.regions.len() >= 2
                && description.postgres_clusters.iter().all(|cluster| {
                    cluster
                        .servers
                        .iter()
                        .any(|s| s.role == ServerRole::AsyncStandby)
                }),
            promoter: description.storage.promoter,
        }
    }
}

/// The faults of `scenario` (every one for `all`), each aimed at the node named `target` if
/// given, checked against `deployment`. Faults that cannot apply are refused, except that
/// `all` skips those the storage cannot run (a database restart on SQLite) and says so in
/// `skipped`.
pub fn plan(
    scenario: Scenario,
    target: Option<&str>,
    deployment: &PlanView,
) -> anyhow::Result<(Vec<PlannedFault>, Vec<String>)> {
    if deployment.participants < WORKLOAD_PARTICIPANTS {
        bail!(
            "the deployment runs {} participants; the workload needs {WORKLOAD_PARTICIPANTS} (bank, alice, bob)",
            deployment.participants
        );
    }
    let faults: Vec<Fault> = match scenario {
        Scenario::All if target.is_some() => {
            bail!("--target aims one scenario's fault; with --scenario all each uses its default")
        }
        Scenario::All => Fault::value_variants().to_vec(),
        Scenario::One(fault) => vec![fault],
        Scenario::Random => bail!("a random scenario is planned by the nemesis, not here"),
    };
    let mut planned = Vec::new();
    let mut skipped = Vec::new();
    for fault in faults {
        let unsupported = fault.unsupported_on(deployment.backend).or_else(|| {
            (fault.needs_sync_standby() && !deployment.sync_standby).then(|| Unsupported {
                reason: "the deployment has no PostgreSQL cluster with a synchronous standby to promote (try --preset two-regions)",
                refusal: format!(
                    "{}: the deployment has no PostgreSQL cluster with a synchronous standby to promote (try --preset two-regions)",
                    fault.name()
                ),
            })
        })
        .or_else(|| patroni_refusal(fault, deployment))
        .or_else(|| region_move_refusal(fault, scenario, deployment));
        if let Some(unsupported) = unsupported {
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

/// What Patroni's clusters cannot be put through: it restarts a crashed PostgreSQL by itself
/// (a database restart would race it), and it fails over only inside a region.
fn patroni_refusal(fault: Fault, deployment: &PlanView) -> Option<Unsupported> {
    if deployment.promoter != Promoter::Patroni {
        return None;
    }
    let reason = match fault {
        Fault::DatabaseRestart => {
            "Patroni restarts a crashed PostgreSQL by itself (use --promoter lab)"
        }
        Fault::RegionSwitchover | Fault::RegionLoss => {
            "Patroni fails over only inside a region; a region move is the lab's (use --promoter lab)"
        }
        _ => return None,
    };
    Some(Unsupported {
        reason,
        refusal: format!("{}: {reason}", fault.name()),
    })
}

/// Why a region move cannot be planned: the deployment has no other region with an
/// asynchronous standby, or (in `all`) because it is one-shot — region one is gone after it,
/// so it runs on its own, one fresh deployment per trial.
fn region_move_refusal(
    fault: Fault,
    scenario: Scenario,
    deployment: &PlanView,
) -> Option<Unsupported> {
    if !fault.is_region_move() {
        return None;
    }
    if !deployment.region_standby {
        return Some(Unsupported {
            reason: "the deployment has one region, or no asynchronous standby in another region to promote (try --preset two-regions)",
            refusal: format!(
                "{}: the deployment has no second region with an asynchronous PostgreSQL standby to promote (try --preset two-regions --backend postgres)",
                fault.name()
            ),
        });
    }
    (scenario == Scenario::All).then(|| Unsupported {
        reason: "one-shot, region one is gone afterwards: run it on its own (--scenario region-switchover or region-loss)",
        refusal: String::new(),
    })
}

/// `fault` aimed at the node named `target` (else its default), if the deployment runs that
/// node and has something for it to fail over to.
fn aim(fault: Fault, target: Option<&str>, deployment: &PlanView) -> anyhow::Result<PlannedFault> {
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
        Some(Redundancy::Sequencers) if deployment.warm_sequencers < 2 => Some("sequencers"),
        Some(Redundancy::Replicas) if deployment.warm_replicas < 2 => Some("replicas"),
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
    use crate::deployment::{Preset, Shape};

    fn view(preset: Preset) -> PlanView {
        PlanView::of(&Description::preset(preset))
    }

    #[test]
    fn region_moves_run_on_their_own_and_only_with_a_second_region() {
        let two_regions =
            PlanView::of(&Description::preset(Preset::TwoRegions).with_backend(Backend::Postgres));
        assert!(two_regions.region_standby);
        let (faults, skipped) = plan(Scenario::All, None, &two_regions).expect("plan");
        assert!(
            faults.iter().all(|f| !f.fault.is_region_move()),
            "{faults:?}"
        );
        for name in ["region-switchover", "region-loss"] {
            assert!(
                skipped
                    .iter()
                    .any(|s| s.starts_with(name) && s.contains("one-shot")),
                "{skipped:?}"
            );
        }
        let (faults, _) =
            plan(Scenario::One(Fault::RegionLoss), None, &two_regions).expect("alone it runs");
        assert_eq!(faults[0].fault, Fault::RegionLoss);
        let one_region =
            PlanView::of(&Description::preset(Preset::Replicated).with_backend(Backend::Postgres));
        let (_, skipped) = plan(Scenario::All, None, &one_region).expect("plan");
        assert!(
            skipped
                .iter()
                .any(|s| s.starts_with("region-switchover") && s.contains("one region")),
            "{skipped:?}"
        );
        let error = plan(Scenario::One(Fault::RegionSwitchover), None, &one_region)
            .expect_err("no second region");
        assert!(error.to_string().contains("no second region"), "{error}");
    }

    #[test]
    fn patroni_runs_the_in_region_failovers_and_refuses_restarts_and_region_moves() {
        let mut description = Description::preset(Preset::TwoRegions);
        description.storage.promoter = Promoter::Patroni;
        let patroni = PlanView::of(&description);
        for fault in [Fault::DatabaseFailover, Fault::ZoneLoss] {
            let (faults, _) =
                plan(Scenario::One(fault), None, &patroni).expect("Patroni fails over");
            assert_eq!(faults[0].fault, fault);
        }
        for (fault, why) in [
            (
                Fault::DatabaseRestart,
                "database-restart: Patroni restarts a crashed PostgreSQL by itself",
            ),
            (
                Fault::RegionLoss,
                "region-loss: Patroni fails over only inside a region",
            ),
            (
                Fault::RegionSwitchover,
                "region-switchover: Patroni fails over only inside a region",
            ),
        ] {
            let error = plan(Scenario::One(fault), None, &patroni).expect_err("refused");
            assert!(error.to_string().starts_with(why), "{error}");
        }
        let (_, skipped) = plan(Scenario::All, None, &patroni).expect("plan");
        assert!(
            skipped
                .iter()
                .any(|s| s.starts_with("database-restart: Patroni")),
            "{skipped:?}"
        );
    }

    #[test]
    fn the_default_deployment_plans_every_scenario_but_freeze_and_restart_on_sqlite() {
        let (faults, skipped) = plan(Scenario::All, None, &view(Preset::Replicated)).expect("plan");
        assert_eq!(faults.len(), 6);
        assert!(skipped[0].contains("participant-freeze"), "{skipped:?}");
        assert!(skipped[1].contains("database-restart"), "{skipped:?}");
        assert!(
            skipped[2].starts_with("database-failover: SQLite"),
            "{skipped:?}"
        );
        assert!(skipped[3].starts_with("zone-loss: SQLite"), "{skipped:?}");
        // On one PostgreSQL server there is no standby to promote.
        let postgres =
            PlanView::of(&Description::preset(Preset::Replicated).with_backend(Backend::Postgres));
        let (faults, skipped) = plan(Scenario::All, None, &postgres).expect("plan");
        assert_eq!(faults.len(), 8);
        // The two database failovers, and the two region moves (one region).
        assert_eq!(skipped.len(), 4, "{skipped:?}");
        assert!(
            skipped[0].contains("no PostgreSQL cluster with a synchronous standby"),
            "{skipped:?}"
        );
        let error = plan(Scenario::One(Fault::DatabaseFailover), None, &postgres)
            .expect_err("nothing to promote");
        assert!(
            error
                .to_string()
                .starts_with("database-failover: the deployment has no"),
            "{error}"
        );
        // The two-region preset runs them all but the one-shot region moves.
        let (faults, skipped) = plan(Scenario::All, None, &view(Preset::TwoRegions)).expect("plan");
        assert_eq!(faults.len(), 10, "{skipped:?}");
        assert_eq!(skipped.len(), 2, "{skipped:?}");
    }

    #[test]
    fn too_few_participants_for_the_workload_are_refused() {
        let two = PlanView::of(&Description::shaped(Shape {
            participants: 2,
            ..Shape::REPLICATED
        }));
        let message = format!(
            "{:#}",
            plan(Scenario::All, None, &two).expect_err("refused")
        );
        assert!(message.contains("needs 3"), "{message}");
    }

    #[test]
    fn faults_at_nodes_that_do_not_run_are_refused() {
        let replicated = view(Preset::Replicated);
        let single = view(Preset::Single);
        let cases = [
            (
                Fault::ParticipantCrash,
                Some("participant7"),
                &replicated,
                "no \"participant7\"",
            ),
            (
                Fault::MediatorCrash,
                Some("participant1"),
                &replicated,
                "valid: mediator",
            ),
            (
                Fault::ParticipantCrash,
                None,
                &single,
                "nothing to fail over to",
            ),
            (
                Fault::DatabaseRestart,
                None,
                &replicated,
                "--backend postgres",
            ),
        ];
        for (fault, target, deployment, expected) in cases {
            let message = format!(
                "{:#}",
                plan(Scenario::One(fault), target, deployment).expect_err("refused")
            );
            assert!(
                message.contains(expected),
                "{fault:?} at {target:?}: {message}"
            );
        }
    }
}
