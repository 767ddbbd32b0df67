//! Regions on the network: the `[network]` round trips put on every link of a deployment that
//! crosses a zone or region boundary. Before any config is written the lab plans one delaying
//! proxy per (source zone, target address) pair whose zones differ — node to node (every
//! replica's sequencer and topology endpoints), node to database (the hosts of its PostgreSQL
//! URL), client to replica (the lab's clients sit in [`client_zone`]) — and every config
//! names the proxy's address instead of the target's, so a replica in zone Z reaches a target
//! in zone Y through the Z→Y link. Same zone: no proxy. The delays: half the cross-zone round
//! trip between two zones of a region, half the larger of the two round trips between regions.
//! (Standby to primary links are the database clusters' own, in [`super::clusters`].)
//!
//! The proxies run in a process of their own, `meridian netdelay --links FILE`, started by the
//! lab ([`NetworkProcess`]) — detached like the nodes under `meridian controller`, whose
//! processes outlive it — with its pid in `<data>/netdelay/netdelay.pid` and its links in
//! `<data>/netdelay/links.toml`, which is also where anyone (the controller's workload, the
//! load balancer) looks up what to dial ([`Network::load`], [`Network::dial`]). Every second
//! it writes each link's counters to `<data>/netdelay/status.toml`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::description::{Description, ZoneName};

/// The directory under the data directory that holds the links, status, pid and log.
pub const NETDELAY_DIR: &str = "netdelay";
const LINKS_FILE: &str = "links.toml";
const STATUS_FILE: &str = "status.toml";
const PID_FILE: &str = "netdelay.pid";
const LOG_FILE: &str = "netdelay.log";
/// How long the proxy process may take to bind every listener.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the proxy process rewrites its status file.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// Bounds the plan: more links than this is a description no lab machine runs.
const MAX_LINKS: usize = 2_000;

/// What a link carries, for the status and the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkKind {
    /// A replica to a sequencer instance or a topology manager replica (gRPC).
    Node,
    /// A replica to a PostgreSQL server.
    Database,
    /// A client in [`client_zone`] to a participant replica's Ledger API or admin port (a
    /// load balancer's health checks).
    Client,
}

/// One delaying proxy: connections to `listen` reach `upstream` with `one_way_delay_us` each
/// way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub kind: LinkKind,
    pub from_zone: ZoneName,
    pub to_zone: ZoneName,
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub one_way_delay_us: u64,
}

/// Something the lab's processes dial, placed in a zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: LinkKind,
    pub zone: ZoneName,
    pub address: SocketAddr,
}

/// The planned links of a deployment; empty when `[network]` sets no round trip.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    #[serde(default, rename = "link")]
    pub links: Vec<Link>,
}

/// The zone the lab's clients (workload, drills, benches) and the load balancer sit in: the
/// first zone of the first region.
pub fn client_zone(description: &Description) -> Option<&ZoneName> {
    description.regions.first()?.zones.first()
}

/// The one-way delay between zones `from` and `to`: none within a zone, half the cross-zone
/// round trip between zones of one region, half the larger round trip between regions (a
/// link between regions also crosses zones). Microsecond precision: 1 ms RTT is 500 µs.
pub fn one_way_delay(description: &Description, from: &ZoneName, to: &ZoneName) -> Duration {
    let network = &description.network;
    let rtt_ms = if from == to {
        0
    } else if description.region_of(from) == description.region_of(to) {
        network.cross_zone_rtt_ms
    } else {
        network.cross_region_rtt_ms.max(network.cross_zone_rtt_ms)
    };
    Duration::from_micros(rtt_ms.saturating_mul(500))
}

/// Zones that host a replica of any node (warm or cold), in the file's order.
fn replica_zones(description: &Description) -> Vec<ZoneName> {
    let keys = description.node_keys();
    let mut seen = BTreeSet::new();
    let mut zones = Vec::new();
    for node in description.nodes(&keys) {
        for replica in node.replicas {
            if seen.insert(replica.zone.clone()) {
                zones.push(replica.zone.clone());
            }
        }
    }
    zones
}

impl Network {
    /// One link per (source zone, target address) pair across a boundary with a delay:
    /// node and database targets from every zone that hosts a replica, client targets from
    /// the client zone. `allocate` gives each link its listening address.
    pub fn plan(
        description: &Description,
        targets: &[Target],
        mut allocate: impl FnMut() -> anyhow::Result<SocketAddr>,
    ) -> anyhow::Result<Network> {
        let mut network = Network::default();
        if !description.network.is_on() {
            return Ok(network);
        }
        let client_zones: Vec<ZoneName> = client_zone(description).cloned().into_iter().collect();
        // The client zone dials nodes too (a load balancer in front of the sequencer).
        let mut replica_zones = replica_zones(description);
        for zone in &client_zones {
            if !replica_zones.contains(zone) {
                replica_zones.push(zone.clone());
            }
        }
        for target in targets {
            let sources = match target.kind {
                LinkKind::Node | LinkKind::Database => &replica_zones,
                LinkKind::Client => &client_zones,
            };
            for from in sources {
                let delay = one_way_delay(description, from, &target.zone);
                let known = network
                    .links
                    .iter()
                    .any(|l| &l.from_zone == from && l.upstream == target.address);
                if delay.is_zero() || known {
                    continue;
                }
                if network.links.len() >= MAX_LINKS {
                    bail!("more than {MAX_LINKS} delayed links; the deployment is too large");
                }
                network.links.push(Link {
                    kind: target.kind,
                    from_zone: from.clone(),
                    to_zone: target.zone.clone(),
                    listen: allocate()?,
                    upstream: target.address,
                    one_way_delay_us: u64::try_from(delay.as_micros()).unwrap_or(u64::MAX),
                });
            }
        }
        Ok(network)
    }

    /// What a process in zone `from` dials to reach `upstream`: the link's proxy, or
    /// `upstream` itself when no link crosses (same zone, no delay, or not a planned target).
    pub fn dial(&self, from: &ZoneName, upstream: SocketAddr) -> SocketAddr {
        self.links
            .iter()
            .find(|l| &l.from_zone == from && l.upstream == upstream)
            .map_or(upstream, |l| l.listen)
    }

    /// `url` with every `host:port` of its authority (one, or a PostgreSQL multi-host list)
    /// replaced by what zone `from` dials for it; anything that is not an address stays.
    pub fn dial_url(&self, from: &ZoneName, url: &str) -> String {
        if self.links.is_empty() {
            return url.to_owned();
        }
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
            return url.to_owned();
        };
        let rest = &url[scheme_end..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let (user, hosts) = match authority.rfind('@') {
            Some(at) => (&authority[..=at], &authority[at + 1..]),
            None => ("", authority),
        };
        let hosts: Vec<String> = hosts
            .split(',')
            .map(|host| match host.parse::<SocketAddr>() {
                Ok(address) => self.dial(from, address).to_string(),
                Err(_) => host.to_owned(),
            })
            .collect();
        format!(
            "{}{user}{}{}",
            &url[..scheme_end],
            hosts.join(","),
            &rest[authority_end..]
        )
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// The links of the deployment in `data_dir`; empty when it runs without delays.
    pub fn load(data_dir: &Path) -> anyhow::Result<Network> {
        let path = links_path(data_dir);
        if !path.exists() {
            return Ok(Network::default());
        }
        meridian_node::config::load_toml(&path)
            .with_context(|| format!("reading the deployment's links {}", path.display()))
    }

    fn save(&self, data_dir: &Path) -> anyhow::Result<PathBuf> {
        let dir = data_dir.join(NETDELAY_DIR);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = links_path(data_dir);
        std::fs::write(&path, toml::to_string(self)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

fn links_path(data_dir: &Path) -> PathBuf {
    data_dir.join(NETDELAY_DIR).join(LINKS_FILE)
}

/// One link's counters, as the proxy process last wrote them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkStatus {
    #[serde(flatten)]
    pub link: Link,
    pub forwarded_connections: u64,
    pub forwarded_bytes: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StatusFile {
    #[serde(default)]
    link: Vec<LinkStatus>,
}

/// The proxy process's last written counters of every link of the deployment in `data_dir`.
pub fn read_status(data_dir: &Path) -> anyhow::Result<Vec<LinkStatus>> {
    let path = data_dir.join(NETDELAY_DIR).join(STATUS_FILE);
    let status: StatusFile = meridian_node::config::load_toml(&path)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(status.link)
}

/// `meridian netdelay --links FILE`: runs every link of the file until killed, writing the
/// counters beside it (`status.toml`, first once every listener is bound) every second.
pub async fn serve(links_file: &Path) -> anyhow::Result<()> {
    let network: Network = meridian_node::config::load_toml(links_file)
        .with_context(|| format!("reading {}", links_file.display()))?;
    let status_path = links_file.with_file_name(STATUS_FILE);
    let mut proxies = Vec::with_capacity(network.links.len());
    for link in &network.links {
        let proxy = meridian_netdelay::DelayProxy::start(
            link.listen,
            link.upstream,
            Duration::from_micros(link.one_way_delay_us),
        )
        .await
        .with_context(|| {
            format!(
                "the {:?} link {} -> {} ({})",
                link.kind, link.from_zone, link.to_zone, link.upstream
            )
        })?;
        proxies.push((link, proxy));
    }
    tracing::info!(links = proxies.len(), "delaying links up");
    loop {
        let status = StatusFile {
            link: proxies
                .iter()
                .map(|(link, proxy)| LinkStatus {
                    link: (*link).clone(),
                    forwarded_connections: proxy.forwarded_connections(),
                    forwarded_bytes: proxy.forwarded_bytes(),
                })
                .collect(),
        };
        // Written aside and renamed, so a reader never sees half a file.
        let partial = status_path.with_extension("toml.partial");
        std::fs::write(&partial, toml::to_string(&status)?)
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &status_path)
            .with_context(|| format!("writing {}", status_path.display()))?;
        tokio::time::sleep(STATUS_INTERVAL).await;
    }
}

/// The running `meridian netdelay` process of a deployment. Dropped, it kills the process —
/// unless detached: then the process outlives this handle (and the lab process), like the
/// nodes a controller starts, and [`kill_detached`] stops it.
#[derive(Debug)]
pub struct NetworkProcess {
    child: Option<Child>,
    detached: bool,
    pub network: Network,
}

impl NetworkProcess {
    /// Writes the links under `data_dir` and starts `exe netdelay` on them; returns once every
    /// listener is bound (the first status file is written).
    pub fn start(
        exe: &Path,
        data_dir: &Path,
        network: Network,
        detached: bool,
    ) -> anyhow::Result<NetworkProcess> {
        let links = network.save(data_dir)?;
        let dir = data_dir.join(NETDELAY_DIR);
        let status = dir.join(STATUS_FILE);
        // A status left by an earlier start must not pass for this one's.
        if status.exists() {
            std::fs::remove_file(&status)
                .with_context(|| format!("removing {}", status.display()))?;
        }
        let log_path = dir.join(LOG_FILE);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut command = Command::new(exe);
        command
            .arg("netdelay")
            .arg("--links")
            .arg(&links)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if detached {
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {} netdelay", exe.display()))?;
        let pidfile = dir.join(PID_FILE);
        std::fs::write(&pidfile, format!("{}\n", child.id()))
            .with_context(|| format!("writing {}", pidfile.display()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        while !status.exists() {
            if let Some(exit) = child.try_wait()? {
                bail!(
                    "the delaying proxies exited ({exit}) before they were up; see {}",
                    log_path.display()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "the delaying proxies were not up within {START_TIMEOUT:?}; see {}",
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(NetworkProcess {
            child: Some(child),
            detached,
            network,
        })
    }

    /// Hands the child over (the controller reaps it); the handle then no longer kills it.
    pub fn detach(&mut self) -> Option<Child> {
        self.child.take()
    }
}

impl Drop for NetworkProcess {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGKILLs the detached proxy process of the deployment in `data_dir`, if its pidfile names
/// a live `meridian netdelay`; whether one was killed.
pub fn kill_detached(data_dir: &Path) -> bool {
    let dir = data_dir.join(NETDELAY_DIR);
    let Ok(text) = std::fs::read_to_string(dir.join(PID_FILE)) else {
        return false;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return false;
    };
    // A reused pid must not be taken for ours: its command line names our links file.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let links = links_path(data_dir);
    let ours = String::from_utf8_lossy(&cmdline).contains(&*links.to_string_lossy());
    ours && nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::description::Preset;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn target(kind: LinkKind, zone: &str, port: u16) -> Target {
        Target {
            kind,
            zone: zone.into(),
            address: addr(port),
        }
    }

    fn two_regions(cross_zone_rtt_ms: u64, cross_region_rtt_ms: u64) -> Description {
        let mut description = Description::preset(Preset::TwoRegions);
        description.network.cross_zone_rtt_ms = cross_zone_rtt_ms;
        description.network.cross_region_rtt_ms = cross_region_rtt_ms;
        description
    }

    fn plan(description: &Description, targets: &[Target]) -> Network {
        let mut next = 50_000;
        Network::plan(description, targets, || {
            next += 1;
            Ok(addr(next))
        })
        .expect("plans")
    }

    #[test]
    fn delays_are_half_the_round_trip_of_the_boundary_crossed() {
        let description = two_regions(1, 20);
        let delay = |from: &str, to: &str| one_way_delay(&description, &from.into(), &to.into());
        assert_eq!(delay("zone-1a", "zone-1a"), Duration::ZERO, "same zone");
        assert_eq!(delay("zone-1a", "zone-1b"), Duration::from_micros(500));
        assert_eq!(delay("zone-1b", "zone-2a"), Duration::from_millis(10));
        assert_eq!(delay("zone-2b", "zone-1a"), Duration::from_millis(10));
        // Regions without their own round trip still cross zones.
        let zones_only = two_regions(1, 0);
        assert_eq!(
            one_way_delay(&zones_only, &"zone-1a".into(), &"zone-2a".into()),
            Duration::from_micros(500)
        );
    }

    #[test]
    fn one_link_per_source_zone_and_target_and_none_within_a_zone() {
        let description = two_regions(1, 20);
        let targets = [
            target(LinkKind::Node, "zone-1a", 1000),
            target(LinkKind::Database, "zone-2a", 2000),
            target(LinkKind::Client, "zone-1b", 3000),
            target(LinkKind::Client, "zone-1a", 3001),
            // Listed twice (a target reached two ways): still one link per source zone.
            target(LinkKind::Node, "zone-1a", 1000),
        ];
        let network = plan(&description, &targets);
        let pairs: Vec<(LinkKind, &str, u16, u64)> = network
            .links
            .iter()
            .map(|l| {
                (
                    l.kind,
                    l.from_zone.as_str(),
                    l.upstream.port(),
                    l.one_way_delay_us,
                )
            })
            .collect();
        assert_eq!(
            pairs,
            [
                // The node in zone-1a from the three other zones that host replicas.
                (LinkKind::Node, "zone-1b", 1000, 500),
                (LinkKind::Node, "zone-2a", 1000, 10_000),
                (LinkKind::Node, "zone-2b", 1000, 10_000),
                // The database in zone-2a from every other replica zone.
                (LinkKind::Database, "zone-1a", 2000, 10_000),
                (LinkKind::Database, "zone-1b", 2000, 10_000),
                (LinkKind::Database, "zone-2b", 2000, 500),
                // Clients sit in zone-1a only; the replica in zone-1a needs no link.
                (LinkKind::Client, "zone-1a", 3000, 500),
            ]
        );
        let listens: BTreeSet<SocketAddr> = network.links.iter().map(|l| l.listen).collect();
        assert_eq!(listens.len(), network.links.len(), "one address per link");
    }

    #[test]
    fn no_round_trip_plans_no_link() {
        let network = plan(
            &Description::preset(Preset::TwoRegions),
            &[target(LinkKind::Node, "zone-1a", 1000)],
        );
        assert!(network.is_empty());
    }

    #[test]
    fn urls_are_rewritten_host_by_host_for_the_dialing_zone() {
        let description = two_regions(1, 20);
        let network = plan(
            &description,
            &[
                target(LinkKind::Database, "zone-1a", 5432),
                target(LinkKind::Database, "zone-1b", 5433),
                target(LinkKind::Node, "zone-1b", 7000),
            ],
        );
        let from_1a: ZoneName = "zone-1a".into();
        let to_1b = network.dial(&from_1a, addr(5433));
        assert_ne!(to_1b, addr(5433));
        assert_eq!(network.dial(&from_1a, addr(5432)), addr(5432), "same zone");
        assert_eq!(
            network.dial_url(
                &from_1a,
                "postgres://meridian@127.0.0.1:5432,127.0.0.1:5433/db?target_session_attrs=read-write"
            ),
            format!(
                "postgres://meridian@127.0.0.1:5432,{to_1b}/db?target_session_attrs=read-write"
            )
        );
        let grpc = network.dial(&from_1a, addr(7000));
        assert_eq!(
            network.dial_url(&from_1a, "https://127.0.0.1:7000"),
            format!("https://{grpc}")
        );
        // A port that merely starts like a target's is left alone.
        assert_eq!(
            network.dial_url(&from_1a, "https://127.0.0.1:70001"),
            "https://127.0.0.1:70001"
        );
        let text = toml::to_string(&network).expect("serializes");
        let back: Network = toml::from_str(&text).expect("parses");
        assert_eq!(back, network);
    }
}
