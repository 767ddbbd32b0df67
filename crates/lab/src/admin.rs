//! `meridian admin ...`: operator commands against running nodes.
//!
//! `status` shows every replica of every node under a data directory (role, region and zone,
//! warm or cold, readiness) and, on PostgreSQL, the database servers with their roles;
//! `switchover` makes the active replica of one node step down and waits until another replica
//! is active; `fork-report` shows a participant's detected fork and the transactions the
//! sequencer's new history lacks; `fork-repair` rewinds a stopped, forked participant (see
//! docs/operations.md, "Fork after a region loss"; in [`crate::fork`]). Replicas are found
//! from the configs `meridian up`/`demo` write under `<data-dir>/<node>/*.toml`
//! ([`crate::replicas`]), so no address needs typing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::deployment::{Backend, Description, DESCRIPTION_FILE};
use crate::fork::{self, ForkRepairArgs, ForkReportArgs};
use crate::replicas::{first_active, get_status, http, replicas, role, ReplicaAddress};

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Show each replica's role and readiness.
    Status(StatusArgs),
    /// Hand a node over from its active replica to a passive one.
    Switchover(SwitchoverArgs),
    /// Show a node's detected fork and, for a participant, the transactions it committed that
    /// the sequencer's new history lacks (by transaction id and command id).
    ForkReport(ForkReportArgs),
    /// Rewind a stopped participant that recorded a fork to a point both histories share,
    /// after saving the lost transactions to a file; it then replays the new history.
    ForkRepair(ForkRepairArgs),
}

#[derive(Args)]
pub struct StatusArgs {
    #[arg(long, default_value = "meridian-data")]
    pub data_dir: PathBuf,
}

#[derive(Args)]
pub struct SwitchoverArgs {
    /// The node, e.g. `participant1` or `mediator`.
    #[arg(long)]
    pub node: String,
    #[arg(long, default_value = "meridian-data")]
    pub data_dir: PathBuf,
    /// How long to wait for a passive replica to take over.
    #[arg(long = "timeout", default_value_t = 10)]
    pub timeout_s: u64,
    /// The admin token to send (a 0600 file); default `<data-dir>/secrets/admin-token`,
    /// which `meridian up`/`demo` write.
    #[arg(long, env = "MERIDIAN_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
}

pub async fn run(command: AdminCommand) -> anyhow::Result<()> {
    // The deployment's CA and the lab certificate, when `up` started it with TLS.
    let data_dir = match &command {
        AdminCommand::Status(args) => &args.data_dir,
        AdminCommand::Switchover(args) => &args.data_dir,
        AdminCommand::ForkReport(args) => &args.data_dir,
        AdminCommand::ForkRepair(args) => &args.data_dir,
    };
    crate::tls::use_deployment(data_dir)?;
    match command {
        AdminCommand::Status(args) => status(&args.data_dir).await,
        AdminCommand::Switchover(args) => switchover(&args).await,
        AdminCommand::ForkReport(args) => fork::report(&args).await,
        AdminCommand::ForkRepair(args) => fork::repair(&args).await,
    }
}

/// The description `meridian up`/`demo` wrote into `data_dir`, if there is one (a data
/// directory from before deployment files has none).
fn description(data_dir: &Path) -> anyhow::Result<Option<Description>> {
    let path = data_dir.join(DESCRIPTION_FILE);
    if !path.exists() {
        return Ok(None);
    }
    Description::load(&path).map(Some)
}

/// `region/zone warm|cold` of replica `name`, as the description places it.
fn placement(description: Option<&Description>, name: &str) -> String {
    let Some(description) = description else {
        return "-".into();
    };
    let keys = description.node_keys();
    let nodes = description.nodes(&keys);
    let replica = nodes
        .iter()
        .flat_map(|node| node.replicas)
        .find(|replica| replica.name.as_str() == name);
    match replica {
        Some(replica) => format!(
            "{}/{} {}",
            description
                .region_of(&replica.zone)
                .map_or("?", |region| region.as_str()),
            replica.zone,
            replica.standby.name()
        ),
        None => "-".into(),
    }
}

/// The database lines of the status: each PostgreSQL cluster's servers with their roles.
fn database_lines(description: &Description) -> Vec<String> {
    if description.storage.backend == Backend::Sqlite {
        return vec!["storage: SQLite, one file per node".into()];
    }
    let mut lines = Vec::new();
    for cluster in &description.postgres_clusters {
        for server in &cluster.servers {
            lines.push(format!(
                "postgres {:<8} {:<14} {:<13} {}/{}",
                cluster.name,
                server.name,
                server.role.name(),
                description
                    .region_of(&server.zone)
                    .map_or("?", |region| region.as_str()),
                server.zone
            ));
        }
    }
    lines
}

/// One line of a running replica: its role, placement and readiness.
async fn replica_line(
    client: &reqwest::Client,
    replica: &ReplicaAddress,
    description: Option<&Description>,
) -> String {
    let place = placement(description, &replica.name);
    match get_status(client, replica).await {
        Some(status) => format!(
            "{:<22} {:<8} {:<24} readiness {}",
            replica.name,
            if role(&status) == Some("active") {
                "active"
            } else if status.get("replication").is_some() {
                "passive"
            } else {
                "-"
            },
            place,
            status
                .get("readiness")
                .and_then(|r| r.get("status"))
                .and_then(|s| s.as_str())
                .unwrap_or("?")
        ),
        None => format!(
            "{:<22} {:<8} {:<24} unreachable at {}",
            replica.name, "-", place, replica.admin_address
        ),
    }
}

async fn status(data_dir: &Path) -> anyhow::Result<()> {
    let client = &http()?;
    let description = description(data_dir)?;
    let mut nodes: Vec<String> = std::fs::read_dir(data_dir)
        .with_context(|| format!("reading {}", data_dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.path().is_dir() && e.file_name() != "keys" && e.file_name() != crate::tls::TLS_DIR
        })
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    nodes.sort();
    let mut lines = description.as_ref().map(database_lines).unwrap_or_default();
    for node in nodes {
        for replica in replicas(data_dir, &node)? {
            lines.push(replica_line(client, &replica, description.as_ref()).await);
        }
        for cold in cold_replicas(description.as_ref(), &node) {
            lines.push(format!(
                "{:<22} {:<8} {:<24} not started",
                cold,
                "-",
                placement(description.as_ref(), &cold)
            ));
        }
    }
    // Piped into `head` and the like: stop quietly once the reader is gone.
    let mut out = std::io::stdout().lock();
    for line in lines {
        if writeln!(out, "{line}").is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// The cold replicas of `node` in the description.
fn cold_replicas(description: Option<&Description>, node: &str) -> Vec<String> {
    let Some(description) = description else {
        return Vec::new();
    };
    let keys = description.node_keys();
    let nodes = description.nodes(&keys);
    nodes
        .iter()
        .filter(|view| view.name == node)
        .flat_map(|view| view.cold())
        .map(|replica| replica.name.to_string())
        .collect()
}

/// Asks the active replica to step down and waits for another to become active. Returns the
/// time the handover took. Sends the deployment's admin token (`<data-dir>/secrets/admin-token`)
/// if it has one.
pub async fn switch_over(
    data_dir: &Path,
    node: &str,
    timeout: Duration,
) -> anyhow::Result<(String, String, Duration)> {
    switch_over_with(data_dir, node, timeout, None).await
}

/// [`switch_over`] sending the admin token in `admin_token_file` if given (else the
/// deployment's own, see [`crate::secrets::admin_token_for`]).
pub async fn switch_over_with(
    data_dir: &Path,
    node: &str,
    timeout: Duration,
    admin_token_file: Option<&Path>,
) -> anyhow::Result<(String, String, Duration)> {
    if node == "sequencer" {
        bail!(
            "sequencer instances are all active (active-active), so there is nothing to switch \
             over; stop an instance with SIGTERM and members move to the others"
        );
    }
    let client = &http()?;
    let replicas = replicas(data_dir, node)?;
    if replicas.len() < 2 {
        bail!(
            "{node} has {} replica(s); a switchover needs at least two",
            replicas.len()
        );
    }
    let active = first_active(client, &replicas)
        .await
        .with_context(|| format!("no replica of {node} reports itself active"))?
        .clone();
    let others: Vec<ReplicaAddress> = replicas
        .into_iter()
        .filter(|r| r.name != active.name)
        .collect();
    let mut request = client.post(format!(
        "{}/admin/step-down",
        crate::tls::url(&active.admin_address)
    ));
    if let Some(path) = crate::secrets::admin_token_for(data_dir, admin_token_file) {
        request = request.header(
            reqwest::header::AUTHORIZATION,
            crate::secrets::bearer(&path)?,
        );
    }
    let started = Instant::now();
    let response = request
        .send()
        .await
        .with_context(|| format!("asking {} to step down", active.name))?;
    if !response.status().is_success() {
        bail!(
            "{} refused to step down ({}): {}",
            active.name,
            response.status(),
            response.text().await.unwrap_or_default()
        );
    }
    while started.elapsed() < timeout {
        if let Some(successor) = first_active(client, &others).await {
            return Ok((active.name, successor.name.clone(), started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("no passive replica of {node} took over within {timeout:?}")
}

async fn switchover(args: &SwitchoverArgs) -> anyhow::Result<()> {
    let (from, to, took) = switch_over_with(
        &args.data_dir,
        &args.node,
        Duration::from_secs(args.timeout_s),
        args.admin_token_file.as_deref(),
    )
    .await?;
    println!(
        "{}: {from} stepped down, {to} is active ({:.0} ms)",
        args.node,
        took.as_secs_f64() * 1_000.0
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_switchover_of_the_active_active_sequencer_is_refused_with_the_reason() {
        let cases = [
            ("sequencer", "active-active"),
            ("participant1", "no node participant1"),
        ];
        for (node, expected) in cases {
            let error = switch_over(Path::new("/nonexistent"), node, Duration::from_secs(1))
                .await
                .expect_err("the sequencer has no passive, and there is no data directory");
            assert!(error.to_string().contains(expected), "{node}: {error}");
        }
    }
}
