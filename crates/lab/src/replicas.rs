//! A node's replicas as an operator's tools reach them: found from the configs `meridian
//! up`/`demo`/the lab write under `<data-dir>/<node>/*.toml` (and a cold replica's under
//! `<data-dir>/<node>/cold/`, once a region move started it), and asked over their admin HTTP
//! endpoints (`/status`) which of them is active, or asked to quiesce before a region is
//! stopped. `meridian admin`, the fork commands, the drills, the controller's actuator and
//! the tests share these.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

/// A replica as found on disk: its name, config file and admin HTTP address.
#[derive(Debug, Clone)]
pub struct ReplicaAddress {
    pub name: String,
    pub config_path: std::path::PathBuf,
    pub admin_address: String,
}

/// Replicas of `node`: every config under `<data_dir>/<node>/` with an `admin_address`.
pub fn replicas(data_dir: &Path, node: &str) -> anyhow::Result<Vec<ReplicaAddress>> {
    let dir = data_dir.join(node);
    let entries = std::fs::read_dir(&dir)
        .with_context(|| format!("no node {node} under {}", data_dir.display()))?;
    let mut out = configs_in(entries, node)?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// [`replicas`] and then the cold ones (`<data_dir>/<node>/cold/`): after a region move, the
/// replicas that run are those.
pub fn replicas_with_cold(data_dir: &Path, node: &str) -> anyhow::Result<Vec<ReplicaAddress>> {
    let mut out = replicas(data_dir, node)?;
    let cold = data_dir.join(node).join("cold");
    if cold.is_dir() {
        let entries =
            std::fs::read_dir(&cold).with_context(|| format!("reading {}", cold.display()))?;
        let mut cold = configs_in(entries, node)?;
        cold.sort_by(|a, b| a.name.cmp(&b.name));
        out.extend(cold);
    }
    Ok(out)
}

fn configs_in(entries: std::fs::ReadDir, node: &str) -> anyhow::Result<Vec<ReplicaAddress>> {
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let value: toml::Value =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if let Some(address) = value.get("admin_address").and_then(|v| v.as_str()) {
            out.push(ReplicaAddress {
                name: path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or(node)
                    .to_owned(),
                config_path: path.clone(),
                admin_address: address.to_owned(),
            });
        }
    }
    Ok(out)
}

pub async fn get_status(
    client: &reqwest::Client,
    replica: &ReplicaAddress,
) -> Option<serde_json::Value> {
    let url = format!("{}/status", crate::tls::url(&replica.admin_address));
    client.get(url).send().await.ok()?.json().await.ok()
}

/// The replication role (`active`, `passive`) a `/status` document reports; for an
/// unreplicated node, its top-level role.
pub(crate) fn role(status: &serde_json::Value) -> Option<&str> {
    status
        .get("replication")
        .and_then(|r| r.get("role"))
        .or_else(|| status.get("role"))
        .and_then(|r| r.as_str())
}

/// One HTTP client for every admin call of this process: drills poll every few
/// milliseconds, and a client per call would build a connection pool per call.
/// It speaks https to TLS deployments (see [`crate::tls::http`]).
pub fn http() -> anyhow::Result<reqwest::Client> {
    crate::tls::http()
}

/// Each replica of `node` except `skip`, with the role its `/status` reports (`None` if it
/// does not answer). The replicas are asked at once, so a frozen one holds the answer up by
/// at most one HTTP timeout; a caller that knows which one is frozen skips it altogether.
pub async fn replica_roles(
    data_dir: &Path,
    node: &str,
    skip: Option<&str>,
) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let replicas: Vec<ReplicaAddress> = replicas(data_dir, node)?
        .into_iter()
        .filter(|r| Some(r.name.as_str()) != skip)
        .collect();
    let roles = roles(&http()?, &replicas).await;
    Ok(replicas
        .into_iter()
        .zip(roles)
        .map(|(replica, role)| (replica.name, role))
        .collect())
}

/// The role each of `replicas` reports (`None` if it does not answer), asked at once.
async fn roles(client: &reqwest::Client, replicas: &[ReplicaAddress]) -> Vec<Option<String>> {
    let statuses = futures::future::join_all(replicas.iter().map(|r| get_status(client, r))).await;
    statuses
        .iter()
        .map(|status| status.as_ref().and_then(role).map(str::to_owned))
        .collect()
}

/// The first of `replicas` that reports itself active.
pub(crate) async fn first_active<'r>(
    client: &reqwest::Client,
    replicas: &'r [ReplicaAddress],
) -> Option<&'r ReplicaAddress> {
    let roles = roles(client, replicas).await;
    replicas
        .iter()
        .zip(roles)
        .find(|(_, role)| role.as_deref() == Some("active"))
        .map(|(replica, _)| replica)
}

/// The name of the replica of `node` that reports itself active, if any answers so.
pub async fn active_replica(data_dir: &Path, node: &str) -> anyhow::Result<Option<String>> {
    let replicas = replicas(data_dir, node)?;
    Ok(first_active(&http()?, &replicas)
        .await
        .map(|replica| replica.name.clone()))
}

/// How long [`quiesce_participants`] waits for the admitted calls to finish before the caller
/// stops the participants anyway (each then drains what is left, bounded by its own drain).
const QUIESCE_WAIT: Duration = Duration::from_secs(5);
/// One quiesce request's bound: a replica that does not answer is stopped without it.
const QUIESCE_REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

/// Before a whole region's participants are stopped: asks each (name, admin address) to stop
/// admitting calls while it keeps its lease and goes on confirming (`POST /admin/quiesce`),
/// and waits, at most 5 s, until none has an admitted call running. Stopped without that, a
/// participant whose own calls are done exits while the others' calls still wait for its
/// confirmation, until their drain bound (5 s). Replicas that are passive, frozen or
/// unreachable do not answer and are left out. `None` when none answered; else what happened,
/// for a report.
pub async fn quiesce_participants(
    targets: &[(String, std::net::SocketAddr)],
    bearer: Option<&str>,
) -> Option<String> {
    let client = crate::tls::http().ok()?;
    let ask = |address: std::net::SocketAddr| {
        let mut request = client
            .post(format!("{}/admin/quiesce", crate::tls::url(address)))
            .timeout(QUIESCE_REQUEST_TIMEOUT);
        if let Some(bearer) = bearer {
            request = request.header(reqwest::header::AUTHORIZATION, bearer);
        }
        async move {
            let response = request.send().await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            let body: serde_json::Value = response.json().await.ok()?;
            body.get("running").and_then(serde_json::Value::as_u64)
        }
    };
    let started = Instant::now();
    let mut quiesced: Vec<&str> = Vec::new();
    loop {
        let answers =
            futures::future::join_all(targets.iter().map(|(_, address)| ask(*address))).await;
        let mut running = 0;
        for ((name, _), answer) in targets.iter().zip(&answers) {
            if let Some(calls) = answer {
                running += calls;
                if !quiesced.contains(&name.as_str()) {
                    quiesced.push(name);
                }
            }
        }
        if quiesced.is_empty() {
            return None;
        }
        let elapsed_ms = started.elapsed().as_millis();
        if running == 0 {
            return Some(format!(
                "quiesced {} in {elapsed_ms} ms",
                quiesced.join(", ")
            ));
        }
        if started.elapsed() >= QUIESCE_WAIT {
            return Some(format!(
                "quiesced {}; {running} calls still running after {elapsed_ms} ms",
                quiesced.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
