//! The command line of a deployment: `--deployment FILE`, `--preset NAME`, `--backend`,
//! `--promoter`, `--load-balancer` and the `[network]` round trips, flattened into every command
//! that starts one (`up`, `demo`, `drill`, `bench ledger`, `bench failover`), `meridian
//! deployment check FILE` and `meridian deployment export --kubernetes` (see
//! [`super::kubernetes`]).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use super::check::check;
use super::description::{Backend, Description, LoadBalancerKind, Preset, Promoter, Shape};

#[derive(Debug, Clone, Default, Args)]
pub struct DeploymentArgs {
    /// A deployment file (TOML, see docs/deployment.md) describing what to start.
    #[arg(long, conflicts_with = "preset")]
    pub deployment: Option<PathBuf>,
    /// A built-in deployment instead of a file.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Storage of every node, overriding the file's or preset's `[storage] backend`.
    /// PostgreSQL runs on a throwaway server.
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// Who fails a PostgreSQL cluster over inside its region, overriding the file's or
    /// preset's `[storage] promoter`: the lab (`pg_ctl promote`) or Patroni with etcd.
    #[arg(long, value_enum)]
    pub promoter: Option<Promoter>,
    /// Put a load balancer in front of the participants and the sequencer (the file's or
    /// preset's `[load_balancer]`, else one on free ports): clients then use one address per
    /// participant. Needs HAProxy (Debian package `haproxy`).
    #[arg(long, value_enum)]
    pub load_balancer: Option<LoadBalancerKind>,
    /// Round trip (ms) between two zones of a region on every link that crosses them,
    /// overriding the file's `[network] cross_zone_rtt_ms` (0: none).
    #[arg(long)]
    pub cross_zone_rtt_ms: Option<u64>,
    /// Round trip (ms) between regions on every link that crosses them, overriding the
    /// file's `[network] cross_region_rtt_ms` (0: none).
    #[arg(long)]
    pub cross_region_rtt_ms: Option<u64>,
}

impl DeploymentArgs {
    /// The checked description these arguments name: the file, the preset, else `shape`
    /// (built from shorthands like `--replicas`) if given, else `default`. Refuses a shape
    /// together with a file or preset, which would leave one of them silently ignored.
    pub fn resolve(&self, default: Preset, shape: Option<Shape>) -> anyhow::Result<Description> {
        let description = match (&self.deployment, self.preset, shape) {
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => bail!(
                "--replicas and --sequencers build a one-region deployment; give them without \
                 --deployment and --preset, or describe the shape in the file"
            ),
            (Some(path), _, None) => Description::load(path)?,
            (None, Some(preset), None) => Description::preset(preset),
            (None, None, Some(shape)) => Description::shaped(shape),
            (None, None, None) => Description::preset(default),
        };
        let mut description = match self.backend {
            Some(backend) => description.with_backend(backend),
            None => description,
        };
        if let Some(promoter) = self.promoter {
            description.storage.promoter = promoter;
        }
        if let Some(kind) = self.load_balancer {
            let load_balancer = description
                .load_balancer
                .get_or_insert_with(Default::default);
            load_balancer.kind = kind;
        }
        if let Some(rtt) = self.cross_zone_rtt_ms {
            description.network.cross_zone_rtt_ms = rtt;
        }
        if let Some(rtt) = self.cross_region_rtt_ms {
            description.network.cross_region_rtt_ms = rtt;
        }
        let origin = self
            .deployment
            .as_ref()
            .map_or_else(|| "the deployment".to_owned(), |p| p.display().to_string());
        check(&description).with_context(|| format!("{origin} cannot run"))?;
        Ok(description)
    }
}

/// The deployment choice of `demo` and `up`, which also take today's shorthands for a
/// one-region replicated deployment.
#[derive(Debug, Clone, Default, Args)]
pub struct ShapedDeploymentArgs {
    /// Replicas of each participant, the mediator and the topology manager (a shorthand that
    /// builds a one-region deployment; default 2).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4))]
    pub replicas: Option<u64>,
    /// Sequencer instances (a shorthand, like --replicas; default 2).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4))]
    pub sequencers: Option<u64>,
    #[command(flatten)]
    pub deployment: DeploymentArgs,
}

impl ShapedDeploymentArgs {
    /// The file or preset named, or the replicated shape with the shorthands given, or the
    /// `replicated` preset.
    pub fn resolve(&self) -> anyhow::Result<Description> {
        let shape = match (self.replicas, self.sequencers) {
            (None, None) => None,
            (replicas, sequencers) => Some(Shape {
                replicas: replicas.map_or(Ok(Shape::REPLICATED.replicas), usize::try_from)?,
                sequencers: sequencers.map_or(Ok(Shape::REPLICATED.sequencers), usize::try_from)?,
                ..Shape::REPLICATED
            }),
        };
        self.deployment.resolve(Preset::Replicated, shape)
    }
}

#[derive(Debug, Subcommand)]
pub enum DeploymentCommand {
    /// Validate a deployment file and print a summary; starts nothing.
    Check {
        /// The deployment file (TOML).
        file: PathBuf,
    },
    /// Write Kubernetes manifests for a deployment (see docs/operations.md, "Kubernetes"):
    /// a StatefulSet, headless Service and ConfigMap per replica, a Ledger API Service per
    /// participant, and NOTES.txt listing the Secrets and databases to provide.
    Export {
        /// The format: Kubernetes manifests (JSON, which kubectl reads), the only one.
        #[arg(long, required = true)]
        kubernetes: bool,
        /// The directory to create (it must not exist, or be empty).
        #[arg(long)]
        out: PathBuf,
        /// The namespace of every object and of the cluster DNS names in the configs.
        #[arg(long, default_value = super::kubernetes::DEFAULT_NAMESPACE)]
        namespace: String,
        /// The container image holding the `meridian` binary.
        #[arg(long, default_value = super::kubernetes::DEFAULT_IMAGE)]
        image: String,
        /// The synchronizer owner's public key (hex); without it the configs carry a
        /// placeholder that the nodes refuse.
        #[arg(long)]
        owner_public_key: Option<String>,
        /// The deployment file (TOML).
        #[arg(conflicts_with = "preset", required_unless_present = "preset")]
        file: Option<PathBuf>,
        /// A built-in deployment instead of a file.
        #[arg(long, value_enum)]
        preset: Option<Preset>,
        /// Storage of every node, overriding the file's or preset's (replicated nodes need
        /// `postgres` on Kubernetes).
        #[arg(long, value_enum)]
        backend: Option<Backend>,
    },
}

pub fn run(command: DeploymentCommand) -> anyhow::Result<()> {
    match command {
        DeploymentCommand::Check { file } => {
            let description = Description::load(&file)?;
            check(&description)
                .with_context(|| format!("deployment file {} cannot run", file.display()))?;
            println!("{}: OK", file.display());
            for line in summary(&description) {
                println!("  {line}");
            }
            Ok(())
        }
        DeploymentCommand::Export {
            kubernetes: _,
            out,
            namespace,
            image,
            owner_public_key,
            file,
            preset,
            backend,
        } => {
            let args = DeploymentArgs {
                deployment: file,
                preset,
                backend,
                promoter: None,
                load_balancer: None,
                cross_zone_rtt_ms: None,
                cross_region_rtt_ms: None,
            };
            let description = args.resolve(Preset::Replicated, None)?;
            let options = super::kubernetes::ExportOptions {
                namespace,
                image,
                owner_public_key,
            };
            let files = super::kubernetes::manifests(&description, &options)?;
            super::kubernetes::write(&out, &files)?;
            println!(
                "wrote {} files into {}; read {} before applying them",
                files.len(),
                out.display(),
                out.join("NOTES.txt").display()
            );
            Ok(())
        }
    }
}

/// `name (role, zone), ...`: where a cluster's servers or a node's replicas run.
fn placements<N, R, Z>(placed: impl Iterator<Item = (N, R, Z)>) -> String
where
    N: std::fmt::Display,
    R: std::fmt::Display,
    Z: std::fmt::Display,
{
    let placed: Vec<String> = placed
        .map(|(name, role, zone)| format!("{name} ({role}, {zone})"))
        .collect();
    placed.join(", ")
}

/// What a description runs, one line per region, database server and node.
pub fn summary(description: &Description) -> Vec<String> {
    let mut lines = Vec::new();
    for region in &description.regions {
        let zones: Vec<&str> = region.zones.iter().map(|z| z.as_str()).collect();
        lines.push(format!(
            "region {}: zones {}",
            region.name,
            zones.join(", ")
        ));
    }
    lines.push(format!(
        "storage: {}",
        match (description.storage.backend, description.storage.promoter) {
            (Backend::Sqlite, _) => "SQLite, one file per node",
            (Backend::Postgres, Promoter::Lab) => "PostgreSQL (the lab promotes standbys)",
            (Backend::Postgres, Promoter::Patroni) => "PostgreSQL under Patroni and etcd",
        }
    ));
    for cluster in &description.postgres_clusters {
        let servers = cluster.servers.iter();
        let servers = placements(servers.map(|s| (&s.name, s.role.name(), &s.zone)));
        lines.push(format!(
            "cluster {}: {servers}; {} ms one way to another region",
            cluster.name,
            cluster.link_delay_ms(description)
        ));
    }
    if let Some(load_balancer) = &description.load_balancer {
        let ports = match load_balancer.first_port {
            Some(first) => format!(
                "ports {first} (sequencer) to {}",
                usize::from(first) + description.participants.len()
            ),
            None => "free ports at start".to_owned(),
        };
        lines.push(format!(
            "load balancer: {} on {}, {ports}",
            load_balancer.kind.name(),
            load_balancer.address
        ));
    }
    let network = description.network;
    lines.push(if network.is_on() {
        format!(
            "network: {} ms round trip between zones, {} ms between regions, on every link \
             that crosses them",
            network.cross_zone_rtt_ms, network.cross_region_rtt_ms
        )
    } else {
        "network: no delays between zones and regions".to_owned()
    });
    let keys = description.node_keys();
    for node in description.nodes(&keys) {
        let replicas = node.replicas.iter();
        let replicas = placements(replicas.map(|r| (&r.name, r.standby.name(), &r.zone)));
        lines.push(format!("{}: {replicas}", node.name));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorthands_build_a_shape_and_refuse_a_preset_beside_them() {
        let shaped = ShapedDeploymentArgs {
            replicas: Some(3),
            ..ShapedDeploymentArgs::default()
        };
        let description = shaped.resolve().expect("a shape alone");
        assert_eq!(description.mediator.replicas.len(), 3);
        assert_eq!(description.sequencer.instances.len(), 2);
        let both = ShapedDeploymentArgs {
            deployment: DeploymentArgs {
                preset: Some(Preset::Single),
                ..DeploymentArgs::default()
            },
            ..shaped
        };
        let error = both.resolve().expect_err("a shape and a preset");
        assert!(error.to_string().contains("--replicas"), "{error}");
        let default = ShapedDeploymentArgs::default().resolve().expect("default");
        assert_eq!(default, Description::preset(Preset::Replicated));
    }

    #[test]
    fn the_round_trip_flags_override_the_file_and_are_checked() {
        let args = DeploymentArgs {
            preset: Some(Preset::TwoRegions),
            cross_zone_rtt_ms: Some(1),
            cross_region_rtt_ms: Some(20),
            ..DeploymentArgs::default()
        };
        let description = args.resolve(Preset::Single, None).expect("runs");
        assert_eq!(description.network.cross_zone_rtt_ms, 1);
        assert_eq!(description.network.cross_region_rtt_ms, 20);
        assert!(summary(&description)
            .iter()
            .any(|l| l.contains("1 ms round trip")));
        let too_long = DeploymentArgs {
            cross_region_rtt_ms: Some(5_000),
            ..args
        };
        let error = too_long.resolve(Preset::Single, None).expect_err("bounded");
        assert!(
            format!("{error:#}").contains("network.cross_region_rtt_ms = 5000"),
            "{error:#}"
        );
    }

    #[test]
    fn the_backend_flag_overrides_the_preset() {
        let args = DeploymentArgs {
            preset: Some(Preset::TwoRegions),
            backend: Some(Backend::Sqlite),
            ..DeploymentArgs::default()
        };
        let description = args.resolve(Preset::Single, None).expect("runs on SQLite");
        assert_eq!(description.storage.backend, Backend::Sqlite);
        assert!(description.postgres_clusters.is_empty());
    }
}
