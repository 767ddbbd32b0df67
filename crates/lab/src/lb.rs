//! The lab's global load balancer: a real HAProxy in front of a deployment's participants and
//! sequencer instances, built from the deployment description's `[load_balancer]` table.
//!
//! The description says where HAProxy listens; the running replicas say where they do; this
//! module turns both into a [`meridian_lb::LbPlan`], keeps HAProxy's files under
//! `<data>/haproxy/`, starts HAProxy with the deployment, and moves it to another region (a
//! hitless reload) for the controller's `MoveLoadBalancer` step and the lab's region operator.
//! `meridian lb config` writes the configuration of a deployment file with fixed ports,
//! without starting anything.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use meridian_lb::haproxy::{self, server_states};
use meridian_lb::{Frontend, Haproxy, HaproxyFiles, HealthChecks, LbPlan, LbTls, Server, Traffic};

use crate::deployment::description::{Description, LoadBalancer, Preset, RegionName, Role};

/// Where HAProxy's files live under a deployment's data directory.
pub const LB_DIR: &str = "haproxy";
/// The load balancer's certificate name in `<data>/tls` (it is a client of the replicas and a
/// server to the applications).
pub const LB_CERT_NAME: &str = "load-balancer";
/// How long a started or moved load balancer may take until every participant's frontend
/// routes to a ready replica.
const ROUTED_TIMEOUT: Duration = Duration::from_secs(20);

pub fn files(data_dir: &Path) -> HaproxyFiles {
    HaproxyFiles::new(data_dir.join(LB_DIR))
}

/// Where one replica listens: gRPC (the traffic) and admin (the health check).
#[derive(Debug, Clone, Copy)]
pub struct ReplicaAddresses {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

/// How HAProxy talks TLS in a deployment under `data_dir`: as the nodes do (mutual TLS with
/// the deployment's CA, `load-balancer.pem` as its identity), or plaintext h2 where the lab
/// runs plaintext.
pub fn tls(data_dir: &Path) -> LbTls {
    if crate::tls::is_plaintext() {
        return LbTls::Plaintext;
    }
    let dir = crate::tls::tls_dir(data_dir);
    LbTls::Mutual {
        ca_file: dir.join(meridian_node::certs::CA_CERT_FILE),
        identity_pem: dir.join(format!("{LB_CERT_NAME}.pem")),
    }
}

/// Joins the load balancer's certificate and key (written by `tls::deployment_certs`) into
/// the one PEM file HAProxy reads, readable by its owner only.
pub fn write_identity_pem(data_dir: &Path) -> anyhow::Result<()> {
    if crate::tls::is_plaintext() {
        return Ok(());
    }
    let dir = crate::tls::tls_dir(data_dir);
    let read = |name: String| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let pem = read(format!("{LB_CERT_NAME}.crt"))? + &read(format!("{LB_CERT_NAME}.key"))?;
    let path = dir.join(format!("{LB_CERT_NAME}.pem"));
    meridian_node::certs::write_private(&path, pem.as_bytes())
}

/// The plan of `description` with the replicas at `addresses` (by replica name; a replica
/// without an address is left out) and the frontends on `ports` (sequencer first, then each
/// participant in file order).
pub fn plan(
    description: &Description,
    load_balancer: &LoadBalancer,
    ports: &[u16],
    addresses: &HashMap<String, ReplicaAddresses>,
    data_dir: &Path,
    active_region: &RegionName,
) -> anyhow::Result<LbPlan> {
    let keys = description.node_keys();
    let nodes = description.nodes(&keys);
    let fronted = nodes
        .iter()
        .filter(|node| matches!(node.role, Role::Sequencer | Role::Participant));
    let mut frontends = Vec::new();
    for (node, port) in fronted.zip(ports) {
        let servers = node
            .replicas
            .iter()
            .filter_map(|replica| {
                let at = addresses.get(replica.name.as_str())?;
                Some(Server {
                    name: replica.name.to_string(),
                    region: description.region_of(&replica.zone)?.to_string(),
                    grpc: at.grpc,
                    admin: at.admin,
                })
            })
            .collect();
        frontends.push(Frontend {
            name: node.name.to_owned(),
            traffic: if node.role == Role::Sequencer {
                Traffic::Sequencer
            } else {
                Traffic::Ledger
            },
            bind: SocketAddr::new(load_balancer.address, *port),
            servers,
        });
    }
    let plan = LbPlan {
        active_region: active_region.to_string(),
        runtime_socket: files(data_dir).socket(),
        tls: tls(data_dir),
        checks: HealthChecks::default(),
        frontends,
    };
    plan.validate()?;
    Ok(plan)
}

/// The frontends' ports: the table's fixed ones, else free ones now.
pub fn frontend_ports(
    description: &Description,
    load_balancer: &LoadBalancer,
) -> anyhow::Result<Vec<u16>> {
    let count = 1 + description.participants.len();
    match load_balancer.first_port {
        Some(_) => (0..count)
            .map(|offset| {
                load_balancer
                    .fixed_port(offset)
                    .context("load_balancer.first_port: the ports run past 65535")
            })
            .collect(),
        None => {
            // Hold every listener until all are picked, so that no two frontends get one port.
            let listeners = (0..count)
                .map(|_| std::net::TcpListener::bind(SocketAddr::new(load_balancer.address, 0)))
                .collect::<std::io::Result<Vec<_>>>()
                .context("picking free ports for the load balancer")?;
            listeners
                .iter()
                .map(|l| Ok(l.local_addr()?.port()))
                .collect::<std::io::Result<_>>()
                .context("picking free ports for the load balancer")
        }
    }
}

/// The region HAProxy sends traffic to first at start: the first region.
pub fn initial_region(description: &Description) -> anyhow::Result<RegionName> {
    description
        .regions
        .first()
        .map(|r| r.name.clone())
        .context("the deployment has no region")
}

/// A running HAProxy of a lab deployment.
#[derive(Debug)]
pub struct LabLoadBalancer {
    pub plan: LbPlan,
    haproxy: Haproxy,
}

impl LabLoadBalancer {
    /// Writes the plan's configuration (checked by `haproxy -c`), starts HAProxy and waits
    /// until every participant's frontend routes to a ready replica.
    pub async fn start(data_dir: &Path, plan: LbPlan, detached: bool) -> anyhow::Result<Self> {
        let binary = haproxy::binary()?;
        let files = files(data_dir);
        if let Some(pid) = files.running_pid() {
            bail!(
                "an HAProxy (pid {pid}) still runs for {}: stop it first (kill {pid})",
                files.dir().display()
            );
        }
        haproxy::write_config(&binary, &files, &plan)?;
        let haproxy = Haproxy::start(&binary, &files, detached).await?;
        wait_routed(&files, &plan, ROUTED_TIMEOUT).await?;
        Ok(Self { plan, haproxy })
    }

    /// The URL clients use for frontend `name` (`participant1`, `sequencer`).
    pub fn url(&self, name: &str) -> Option<String> {
        self.plan.frontend(name).map(|f| crate::tls::url(f.bind))
    }

    pub fn files(&self) -> &HaproxyFiles {
        self.haproxy.files()
    }

    /// One line per frontend, for `up` and `demo`.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "load balancer: HAProxy (pid {}), config {}, runtime socket {}",
            self.haproxy.master_pid(),
            self.files().config().display(),
            self.files().socket().display()
        )];
        for frontend in &self.plan.frontends {
            let what = match frontend.traffic {
                Traffic::Ledger => "Ledger API",
                Traffic::Sequencer => "sequencer API",
            };
            lines.push(format!(
                "  {:<17} {what} {}",
                frontend.name,
                crate::tls::url(frontend.bind)
            ));
        }
        lines
    }

    /// Stops HAProxy (also when started detached).
    pub fn stop(&mut self) {
        self.haproxy.stop();
    }
}

/// Waits until every participant's frontend has a server that is up.
async fn wait_routed(files: &HaproxyFiles, plan: &LbPlan, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let states = server_states(&files.socket()).await?;
        let unrouted: Vec<&str> = plan
            .frontends
            .iter()
            .filter(|f| f.traffic == Traffic::Ledger)
            .filter(|f| !states.iter().any(|s| s.backend == f.name && s.is_up()))
            .map(|f| f.name.as_str())
            .collect();
        if unrouted.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "after {timeout:?} HAProxy still routes {} to no ready replica (log {})",
                unrouted.join(", "),
                files.log().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What [`move_to_region`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    /// HAProxy reloaded; which replica each participant's frontend routes to now.
    Reloaded(String),
    AlreadyThere(String),
    /// The deployment has no load balancer.
    NoLoadBalancer,
}

/// Moves the load balancer of the deployment in `data_dir` to `region`: the region's
/// replicas become the normal servers, the others backups; HAProxy reloads without dropping
/// a connection, and this returns once every participant's frontend routes to a ready
/// replica.
pub async fn move_to_region(data_dir: &Path, region: &RegionName) -> anyhow::Result<Moved> {
    let files = files(data_dir);
    if !files.plan().exists() {
        return Ok(Moved::NoLoadBalancer);
    }
    let mut plan = files.load_plan()?;
    if plan.active_region == region.as_str() {
        return Ok(Moved::AlreadyThere(format!(
            "HAProxy already sends traffic to {region}"
        )));
    }
    let from = std::mem::replace(&mut plan.active_region, region.to_string());
    let binary = haproxy::binary()?;
    let running = Haproxy::adopt(&files)?;
    haproxy::write_config(&binary, &files, &plan)?;
    running.reload().await?;
    wait_routed(&files, &plan, ROUTED_TIMEOUT).await?;
    let states = server_states(&files.socket()).await?;
    let routes: Vec<String> = plan
        .frontends
        .iter()
        .filter(|f| f.traffic == Traffic::Ledger)
        .map(|f| {
            let up: Vec<&str> = states
                .iter()
                .filter(|s| s.backend == f.name && s.is_up())
                .map(|s| s.server.as_str())
                .collect();
            format!("{} → {}", f.name, up.join("+"))
        })
        .collect();
    Ok(Moved::Reloaded(format!(
        "HAProxy reloaded (master pid {}): {from} → {region}; {}",
        running.master_pid(),
        routes.join(", ")
    )))
}

/// Stops the HAProxy of the deployment in `data_dir` if one runs (by its pid file); whether
/// one did.
pub fn stop(data_dir: &Path) -> bool {
    match Haproxy::adopt(&files(data_dir)) {
        Ok(mut running) => {
            running.stop();
            true
        }
        Err(_) => false,
    }
}

#[derive(Debug, Subcommand)]
pub enum LbCommand {
    /// Write the HAProxy configuration of a deployment: a gRPC frontend per participant and
    /// one for the sequencer, every replica a server health-checked on `/readyz`, the active
    /// region's replicas first and the others backups. Checked with `haproxy -c` when HAProxy
    /// is installed.
    Config(LbConfigArgs),
}

#[derive(Debug, Args)]
pub struct LbConfigArgs {
    /// The deployment file; every replica needs fixed `ports` and `[load_balancer]` a
    /// `first_port`, since the configuration names them.
    #[arg(long, conflicts_with = "preset")]
    pub deployment: Option<PathBuf>,
    /// A built-in deployment (its replicas have no fixed ports: for trying the command only).
    #[arg(long, value_enum, hide = true)]
    pub preset: Option<Preset>,
    /// The region whose replicas take traffic (default: the first region).
    #[arg(long)]
    pub region: Option<String>,
    /// The deployment's data directory: certificates under `<data>/tls`, the runtime socket
    /// under `<data>/haproxy`.
    #[arg(long, default_value = "meridian-data")]
    pub data_dir: PathBuf,
    /// HTTP/2 cleartext end to end instead of mutual TLS (for a deployment run with `[tls]
    /// plaintext = true`).
    #[arg(long)]
    pub plaintext: bool,
    /// Write here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(command: LbCommand) -> anyhow::Result<()> {
    match command {
        LbCommand::Config(args) => config(args),
    }
}

fn config(args: LbConfigArgs) -> anyhow::Result<()> {
    let (description, origin) = match (&args.deployment, args.preset) {
        (Some(path), _) => (Description::load(path)?, path.display().to_string()),
        (None, Some(preset)) => (Description::preset(preset), "the preset".to_owned()),
        (None, None) => bail!("give the deployment: --deployment FILE"),
    };
    crate::deployment::check::check(&description)
        .with_context(|| format!("{origin} cannot run"))?;
    let load_balancer = description.load_balancer.clone().with_context(|| {
        format!("{origin} has no [load_balancer] table: add one (docs/deployment.md) to put HAProxy in front of it")
    })?;
    if load_balancer.first_port.is_none() {
        bail!(
            "{origin}: [load_balancer] needs first_port for a configuration written ahead of time"
        );
    }
    let keys = description.node_keys();
    let mut addresses = HashMap::new();
    for node in description.nodes(&keys) {
        if !matches!(node.role, Role::Sequencer | Role::Participant) {
            continue;
        }
        for (index, replica) in node.replicas.iter().enumerate() {
            let ports = replica.ports.with_context(|| {
                format!(
                    "{origin}: {} ({}) has no fixed ports; the configuration must name them: set `ports = {{ grpc = ..., admin = ... }}` on it (replica {index} of {})",
                    replica.name, node.key, node.name
                )
            })?;
            // The lab runs every replica on this machine's loopback.
            let host = std::net::Ipv4Addr::LOCALHOST;
            addresses.insert(
                replica.name.to_string(),
                ReplicaAddresses {
                    grpc: SocketAddr::from((host, ports.grpc)),
                    admin: SocketAddr::from((host, ports.admin)),
                },
            );
        }
    }
    if args.plaintext {
        crate::tls::set_plaintext()?;
    }
    let region = match &args.region {
        Some(name) => {
            let region = RegionName::from(name.as_str());
            if !description.regions.iter().any(|r| r.name == region) {
                bail!("--region {name}: {origin} has no such region");
            }
            region
        }
        None => initial_region(&description)?,
    };
    if !args.plaintext {
        let dir = crate::tls::tls_dir(&args.data_dir);
        let cert = dir.join(format!("{LB_CERT_NAME}.crt"));
        if !cert.exists() {
            bail!(
                "no certificate for the load balancer: {} is missing; put its certificate and key \
                 ({LB_CERT_NAME}.crt, {LB_CERT_NAME}.key) there, issued by the CA the nodes trust \
                 (`meridian certs --node {LB_CERT_NAME} --node ...` issues it together with the \
                 nodes'), or pass --plaintext for a deployment without TLS",
                cert.display()
            );
        }
        write_identity_pem(&args.data_dir)?;
    }
    let ports = frontend_ports(&description, &load_balancer)?;
    let plan = plan(
        &description,
        &load_balancer,
        &ports,
        &addresses,
        &args.data_dir,
        &region,
    )?;
    let config = meridian_lb::plan::render(&plan)?;
    match &args.out {
        Some(path) => {
            std::fs::write(path, &config).with_context(|| format!("writing {}", path.display()))?;
            match haproxy::binary() {
                Ok(binary) => {
                    haproxy::check_config(&binary, path)?;
                    eprintln!("{}: written; haproxy -c accepts it", path.display());
                }
                Err(error) => eprintln!("{}: written; not checked: {error}", path.display()),
            }
        }
        None => print!("{config}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::description::SEQUENCER_NODE;

    #[test]
    fn the_two_region_plan_fronts_every_participant_and_the_sequencer() {
        let description = Description::preset(Preset::TwoRegions);
        let keys = description.node_keys();
        let mut addresses = HashMap::new();
        let mut port = 30_000;
        for node in description.nodes(&keys) {
            for replica in node.replicas {
                addresses.insert(
                    replica.name.to_string(),
                    ReplicaAddresses {
                        grpc: SocketAddr::from(([127, 0, 0, 1], port)),
                        admin: SocketAddr::from(([127, 0, 0, 1], port + 1)),
                    },
                );
                port += 2;
            }
        }
        let load_balancer = LoadBalancer {
            first_port: Some(24_700),
            ..LoadBalancer::default()
        };
        let ports = frontend_ports(&description, &load_balancer).expect("fixed ports");
        let dir = Path::new("/d");
        let plan = plan(
            &description,
            &load_balancer,
            &ports,
            &addresses,
            dir,
            &"region-1".into(),
        )
        .expect("a plan");
        let names: Vec<&str> = plan.frontends.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                SEQUENCER_NODE,
                "participant1",
                "participant2",
                "participant3"
            ]
        );
        assert_eq!(plan.frontends[1].bind.port(), 24_701);
        let participant1 = &plan.frontends[1];
        let regions: Vec<(&str, &str)> = participant1
            .servers
            .iter()
            .map(|s| (s.name.as_str(), s.region.as_str()))
            .collect();
        assert_eq!(
            regions,
            [
                ("participant1-a", "region-1"),
                ("participant1-b", "region-1"),
                ("participant1-c", "region-2")
            ]
        );
        assert_eq!(plan.runtime_socket, Path::new("/d/haproxy/haproxy.sock"));
    }
}
