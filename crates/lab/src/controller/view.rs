//! A deployment a controller started, seen from another process (a test, a drill): where its
//! replicas listen, which pid runs each, the workload's parties on its participants — all read
//! from the data directory, since the process that started it keeps no handle to share.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use meridian_core::placement::ReplicaName;
use meridian_core::UserId;
use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;

use super::process::{signal, ReplicaFiles};
use crate::deployment::description::{Role, Standby};
use crate::deployment::{Description, DESCRIPTION_FILE};
use crate::workload::{issue_lanes, run_transfers, Live, Parties, WorkloadReport, WorkloadSpec};

/// The deployment in a data directory, as its files describe it.
#[derive(Debug, Clone)]
pub struct ControlledDeployment {
    pub data_dir: PathBuf,
    pub description: Description,
}

impl ControlledDeployment {
    /// The deployment recorded in `data_dir`; this process's clients then trust its CA.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let data_dir = std::path::absolute(data_dir)?;
        let description = Description::load(&data_dir.join(DESCRIPTION_FILE))?;
        crate::tls::use_deployment(&data_dir)?;
        Ok(Self {
            data_dir,
            description,
        })
    }

    fn files(&self, replica: &str) -> anyhow::Result<ReplicaFiles> {
        let keys = self.description.node_keys();
        let node = self
            .description
            .nodes(&keys)
            .into_iter()
            .find(|node| node.replicas.iter().any(|r| r.name.as_str() == replica))
            .with_context(|| format!("no replica {replica} in the deployment"))?;
        Ok(ReplicaFiles::new(
            &self.data_dir.join(node.name),
            &ReplicaName(replica.to_owned()),
            node.role.command(),
        ))
    }

    /// The config `replica` runs (or will run) with.
    pub fn config_path(&self, replica: &str) -> anyhow::Result<PathBuf> {
        let files = self.files(replica)?;
        Ok(if files.config.exists() {
            files.config
        } else {
            files.cold_config
        })
    }

    /// The pid of `replica`'s running process (its pidfile, checked).
    pub fn pid(&self, replica: &str) -> Option<u32> {
        self.files(replica).ok()?.adoptable_pid()
    }

    /// The last `lines` lines of `replica`'s log (empty if it never ran).
    pub fn log_tail(&self, replica: &str, lines: usize) -> String {
        match self.files(replica) {
            Ok(files) => super::file_tail(&files.log, lines),
            Err(_) => String::new(),
        }
    }

    /// Every replica's name, nodes in start order.
    pub fn replicas(&self) -> Vec<String> {
        let keys = self.description.node_keys();
        self.description
            .nodes(&keys)
            .iter()
            .flat_map(|node| node.replicas.iter().map(|r| r.name.to_string()))
            .collect()
    }

    /// A value of `replica`'s config (`listen_address`, `admin_address`).
    fn config_value(&self, replica: &str, key: &str) -> anyhow::Result<String> {
        let path = self.config_path(replica)?;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let table: toml::Table = toml::from_str(&text)?;
        table
            .get(key)
            .and_then(toml::Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("{} has no {key}", path.display()))
    }

    /// The Ledger API endpoints of participant `index`: the load balancer's address when the
    /// deployment has one, else warm replicas, then cold ones, each through the delayed link
    /// from the clients' zone when `[network]` sets one.
    pub fn ledger_endpoints(&self, index: usize) -> anyhow::Result<Vec<String>> {
        let participant = self
            .description
            .participants
            .get(index)
            .with_context(|| format!("no participant {index}"))?;
        let files = crate::lb::files(&self.data_dir);
        if files.plan().exists() {
            let plan = files.load_plan()?;
            let frontend = plan.frontend(participant.name.as_str()).with_context(|| {
                format!("the load balancer has no frontend for {}", participant.name)
            })?;
            return Ok(vec![crate::tls::url(frontend.bind)]);
        }
        let network = crate::deployment::network::Network::load(&self.data_dir)?;
        let client_zone = crate::deployment::network::client_zone(&self.description);
        let mut endpoints = Vec::new();
        for standby in [Standby::Warm, Standby::Cold] {
            for replica in participant.replicas.iter().filter(|r| r.standby == standby) {
                let address = self.config_value(replica.name.as_str(), "listen_address")?;
                let endpoint = crate::tls::url(address);
                endpoints.push(match client_zone {
                    Some(zone) => network.dial_url(zone, &endpoint),
                    None => endpoint,
                });
            }
        }
        Ok(endpoints)
    }

    /// The workload's parties on the first three participants, allocated for `user`.
    pub async fn parties(&self, user: &str) -> anyhow::Result<Parties> {
        let endpoints = (0..3)
            .map(|i| self.ledger_endpoints(i))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ids: Vec<&str> = self
            .description
            .participants
            .iter()
            .take(3)
            .map(|p| p.name.as_str())
            .collect();
        let auth = crate::secrets::ledger_auth(&self.data_dir)?;
        Parties::allocate_on(
            &endpoints,
            &ids,
            Some(&auth),
            &UserId::new(user)?,
            crate::bench::failover::CLIENT_BACKOFF,
        )
        .await
    }

    /// Runs IOU transfers on one lane for `duration` and reports what committed.
    pub async fn transfers(&self, run: &str, duration: Duration) -> anyhow::Result<WorkloadReport> {
        let parties = self.parties("controller-check").await?;
        let lanes = issue_lanes(&parties, 1, run).await?;
        let spec = WorkloadSpec {
            duration,
            rate: None,
            run: run.to_owned(),
        };
        run_transfers(
            &parties,
            lanes,
            &spec,
            std::sync::Arc::new(Live::default()),
            CancellationToken::new(),
        )
        .await
    }

    /// SIGKILLs every node process of the deployment that runs (by pidfile), and stops its
    /// load balancer: the processes outlive their controller, so whoever is done with the
    /// deployment stops them.
    pub fn kill_all(&self) -> Vec<String> {
        let mut killed = Vec::new();
        if crate::lb::stop(&self.data_dir) {
            killed.push(crate::lb::LB_DIR.to_owned());
        }
        // The delaying proxies between zones, when `[network]` runs them: detached too.
        if crate::deployment::network::kill_detached(&self.data_dir) {
            killed.push("netdelay".to_owned());
        }
        for replica in self.replicas() {
            if let Some(pid) = self.pid(&replica) {
                if signal(pid, Signal::SIGKILL).is_ok() {
                    killed.push(replica);
                }
            }
        }
        killed
    }

    /// The node kind of `replica`.
    pub fn kind(&self, replica: &str) -> Option<Role> {
        let keys = self.description.node_keys();
        self.description
            .nodes(&keys)
            .into_iter()
            .find(|node| node.replicas.iter().any(|r| r.name.as_str() == replica))
            .map(|node| node.role)
    }
}
