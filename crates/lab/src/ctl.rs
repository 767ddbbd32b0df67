//! `meridian ctl ...`: the operator's commands against a running controller (`meridian
//! controller`), through its HTTP API ([`meridian_controller::client`]).
//!
//! - `status [--json]`: regions → zones → nodes → replicas with role, readiness reason,
//!   database role and lag, and the plans;
//! - `switchover --to REGION [--component NODE]... [--by NAME]`: proposes a plan, which waits
//!   for approval;
//! - `approve PLAN [--acknowledge-loss]`, `reject PLAN`.
//!
//! The controller is `--controller URL`, or found under `--data-dir`: each controller replica
//! writes its address to `<data-dir>/controller/<name>.url`, and the one whose `/readyz` answers
//! 200 is the active one (a passive replica serves the status too, and `status` falls back to
//! it). The API is `https://`: the client trusts the deployment's CA (`<data-dir>/tls/ca.crt`)
//! and nothing else, as `meridian admin` does. Commands send the admin token from
//! `--admin-token-file` (default `<data-dir>/secrets/admin-token`). A refusal exits non-zero
//! with the server's own message.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use meridian_controller::api::{ReplicaStatus, ServerStatus, Status};
use meridian_controller::client::ControllerClient;
use meridian_controller::plan::{Actor, Plan, PlanId, PlanState, StepOutcome, StepState};
use meridian_core::placement::{NodeName, RegionName};
use meridian_core::Timestamp;

use crate::controller::CONTROLLER_DIR;

/// How long one request to the controller may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long finding the active replica may take per replica.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many `*.url` files are tried (a deployment runs two controller replicas).
const MAX_URL_FILES: usize = 16;

#[derive(Args)]
pub struct CtlArgs {
    /// The controller's URL (e.g. https://127.0.0.1:7300); default: the active one of those
    /// listed in <data-dir>/controller/*.url.
    #[arg(long, global = true)]
    pub controller: Option<String>,
    /// The deployment's data directory: where the controller replicas' addresses
    /// (controller/*.url), the CA their certificate is checked with (tls/ca.crt) and the admin
    /// token (secrets/admin-token) are found.
    #[arg(long, global = true, default_value = "meridian-data")]
    pub data_dir: PathBuf,
    /// The admin token to send (a 0600 file); default `<data-dir>/secrets/admin-token`.
    #[arg(long, global = true, env = "MERIDIAN_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Subcommand)]
pub enum CtlCommand {
    /// Regions, zones, nodes and replicas with their roles, the databases, and the plans.
    Status {
        /// The controller's status as JSON (the API's `GET /api/status`).
        #[arg(long)]
        json: bool,
    },
    /// Propose moving the deployment (or some components) to another region; the plan waits
    /// for `meridian ctl approve`.
    Switchover {
        /// The region to move to.
        #[arg(long)]
        to: String,
        /// A node to move (repeat for several); every node when none is given.
        #[arg(long = "component")]
        components: Vec<String>,
        /// Who asks, for the audit log (default "admin-token").
        #[arg(long)]
        by: Option<String>,
    },
    /// Approve a plan awaiting approval; the controller starts running it.
    Approve {
        /// The plan, e.g. plan-3.
        plan: String,
        /// For a region-loss plan: accept the data loss it states.
        #[arg(long)]
        acknowledge_loss: bool,
        #[arg(long)]
        by: Option<String>,
    },
    /// Reject a plan awaiting approval.
    Reject {
        plan: String,
        #[arg(long)]
        by: Option<String>,
    },
}

pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    // The deployment's CA (and the lab certificate), so the controller's https:// is checked.
    crate::tls::use_deployment(&args.data_dir)?;
    let http = crate::tls::http_builder()?
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let needs_active = !matches!(args.command, CtlCommand::Status { .. });
    let client = connect(&http, &args, needs_active).await?;
    match args.command {
        CtlCommand::Status { json } => {
            let status = client.status().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", render_status(&status, Timestamp::now()));
            }
        }
        CtlCommand::Switchover { to, components, by } => {
            let components = components
                .iter()
                .map(|c| NodeName::from(c.as_str()))
                .collect();
            let plan = client
                .propose(RegionName::from(to.as_str()), components, by)
                .await?;
            print!("{}", render_plan(&plan));
            println!(
                "approve with `meridian ctl approve {}{}` or reject with `meridian ctl reject {}`",
                plan.id,
                if plan.data_loss.is_some() {
                    " --acknowledge-loss"
                } else {
                    ""
                },
                plan.id
            );
        }
        CtlCommand::Approve {
            plan,
            acknowledge_loss,
            by,
        } => {
            let plan = client.approve(&PlanId(plan), acknowledge_loss, by).await?;
            print!("{}", render_plan(&plan));
        }
        CtlCommand::Reject { plan, by } => {
            let plan = client.reject(&PlanId(plan), by).await?;
            print!("{}", render_plan(&plan));
        }
    }
    Ok(())
}

/// The client of the controller to talk to, with the admin token when commands need it.
async fn connect(
    http: &reqwest::Client,
    args: &CtlArgs,
    needs_active: bool,
) -> anyhow::Result<ControllerClient> {
    let client = match &args.controller {
        Some(url) => ControllerClient::new(http.clone(), checked_url(url, "--controller")?),
        None => find_controller(http, &args.data_dir, needs_active).await?,
    };
    if !needs_active {
        return Ok(client);
    }
    match crate::secrets::admin_token_for(&args.data_dir, args.admin_token_file.as_deref()) {
        Some(path) => {
            let token = meridian_node::secrets::read_secret(&path, "admin token")?;
            Ok(client.with_token(token))
        }
        // The controller answers 401 naming what it needs.
        None => Ok(client),
    }
}

fn checked_url(url: &str, what: &str) -> anyhow::Result<String> {
    let url = url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
        bail!("{what} {url:?} is not an http:// or https:// URL");
    }
    Ok(url.to_owned())
}

/// The active controller replica among those listed in `<data_dir>/controller/*.url`; when
/// none is active and `needs_active` is false, one that answers (a passive replica serves the
/// status too).
pub async fn find_controller(
    http: &reqwest::Client,
    data_dir: &Path,
    needs_active: bool,
) -> anyhow::Result<ControllerClient> {
    let dir = data_dir.join(CONTROLLER_DIR);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "url"))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files.truncate(MAX_URL_FILES);
    if files.is_empty() {
        bail!(
            "no controller address under {} (no *.url file): is `meridian controller --data-dir \
             {}` running? Or give --controller URL",
            dir.display(),
            data_dir.display()
        );
    }
    let probe = crate::tls::http_builder()?
        .timeout(PROBE_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let mut tried = Vec::new();
    let mut answering = None;
    for file in files {
        let name = file
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        let url = match std::fs::read_to_string(&file)
            .map_err(anyhow::Error::from)
            .and_then(|text| checked_url(&text, &file.display().to_string()))
        {
            Ok(url) => url,
            Err(error) => {
                tried.push(format!("{name}: {error}"));
                continue;
            }
        };
        match ControllerClient::new(probe.clone(), url.clone())
            .readiness()
            .await
        {
            Ok(readiness) if readiness.active => {
                return Ok(ControllerClient::new(http.clone(), url));
            }
            Ok(readiness) => {
                tried.push(format!("{name} at {url}: {}", readiness.message));
                answering.get_or_insert(url);
            }
            Err(error) => tried.push(format!("{name} at {url}: {error}")),
        }
    }
    match answering {
        Some(url) if !needs_active => Ok(ControllerClient::new(http.clone(), url)),
        _ => bail!("no active controller replica: {}", tried.join("; ")),
    }
}

/// A timestamp as `YYYY-MM-DD hh:mm:ssZ` (UTC).
pub fn utc(at: Timestamp) -> String {
    let seconds = at.as_micros() / 1_000_000;
    let days = i64::try_from(seconds / 86_400).unwrap_or(i64::MAX);
    let of_day = seconds % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

fn bytes(n: Option<u64>) -> String {
    match n {
        None => "-".to_owned(),
        Some(n) if n < 1024 => format!("{n} B"),
        Some(n) if n < 1024 * 1024 => format!("{:.1} KiB", n as f64 / 1024.0),
        Some(n) => format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0)),
    }
}

fn kebab<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "?".to_owned(),
    }
}

fn actor(actor: &Actor) -> String {
    match actor {
        Actor::Operator(name) => name.clone(),
        Actor::Controller => "the controller".to_owned(),
    }
}

fn replica_line(out: &mut String, replica: &ReplicaStatus) {
    let readiness = if replica.ready {
        "ready".to_owned()
    } else {
        format!(
            "not ready: {}",
            replica.reason.as_deref().unwrap_or("no reason given")
        )
    };
    let mut extra = kebab(&replica.temperature);
    if let Some(pid) = replica.pid {
        let _ = write!(extra, ", pid {pid}");
    }
    if replica.restarts > 0 {
        let _ = write!(extra, ", {} restarts", replica.restarts);
    }
    let _ = writeln!(
        out,
        "      {:<22} {:<9} {}  ({extra})",
        replica.name.as_str(),
        kebab(&replica.role),
        readiness
    );
}

fn server_line(out: &mut String, server: &ServerStatus) {
    let role = match (&server.role, server.reachable) {
        (_, false) => "unreachable".to_owned(),
        (Some(role), true) => kebab(role),
        (None, true) => "?".to_owned(),
    };
    let _ = writeln!(
        out,
        "    database {:<14} {:<10} {:<14} lag {:<10} (placed as {})",
        server.name.as_str(),
        server.cluster.as_str(),
        role,
        bytes(server.lag_bytes),
        kebab(&server.placed_as)
    );
}

/// `meridian ctl status` as text: regions → zones → nodes → replicas, then the plans.
pub fn render_status(status: &Status, now: Timestamp) -> String {
    let mut out = String::new();
    let info = &status.controller;
    let _ = write!(
        out,
        "controller {}: {}",
        info.replica,
        if info.active { "active" } else { "passive" }
    );
    if !info.active {
        match &info.active_replica {
            Some(active) => {
                let _ = write!(out, " (the active replica is {active})");
            }
            None => out.push_str(" (no active replica known)"),
        }
    }
    let _ = write!(
        out,
        "; automatic actions in the last hour: {}",
        status.automatic_actions_last_hour
    );
    if let Some(until) = status.cooldown_until.filter(|until| *until > now) {
        let _ = write!(out, "; cooldown until {}", utc(until));
    }
    out.push('\n');
    for region in &status.regions {
        let _ = write!(out, "{}", region.name);
        if let Some(since) = region.failed_since {
            let _ = write!(out, "  FAILED since {}", utc(since));
        }
        out.push('\n');
        for zone in &region.zones {
            let _ = writeln!(out, "  {}", zone.name);
            let mut nodes: Vec<&NodeName> = Vec::new();
            for replica in &zone.replicas {
                if !nodes.contains(&&replica.node) {
                    nodes.push(&replica.node);
                }
            }
            for node in nodes {
                let _ = writeln!(out, "    {node}");
                for replica in zone.replicas.iter().filter(|r| &r.node == node) {
                    replica_line(&mut out, replica);
                }
            }
            for server in &zone.servers {
                server_line(&mut out, server);
            }
        }
    }
    let open: Vec<&Plan> = status.plans.iter().filter(|p| p.state.is_open()).collect();
    if open.is_empty() {
        out.push_str("plans: none pending\n");
    } else {
        out.push_str("plans:\n");
    }
    for plan in &status.plans {
        for line in render_plan(plan).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// One plan: its header, what approving it means, and its steps with their outcomes.
pub fn render_plan(plan: &Plan) -> String {
    let mut out = String::new();
    let components = if plan.components.is_empty() {
        "every node".to_owned()
    } else {
        plan.components
            .iter()
            .map(NodeName::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "{} {} {} -> {} ({components}): {}",
        plan.id,
        kebab(&plan.kind),
        plan.from_region,
        plan.to_region,
        plan.state.name()
    );
    let _ = write!(
        out,
        "  proposed by {} at {}",
        actor(&plan.proposed_by),
        utc(plan.created_at)
    );
    match &plan.state {
        PlanState::AwaitingApproval => {
            let _ = write!(out, "; expires {}", utc(plan.expires_at));
        }
        PlanState::Running { approved } => {
            let _ = write!(out, "; approved by {}", actor(&approved.by));
        }
        PlanState::Done { approved, at } => {
            let _ = write!(
                out,
                "; approved by {}; done at {}",
                actor(&approved.by),
                utc(*at)
            );
        }
        PlanState::Failed {
            approved,
            at,
            error,
        } => {
            let _ = write!(
                out,
                "; approved by {}; failed at {}: {error}",
                actor(&approved.by),
                utc(*at)
            );
        }
        PlanState::Rejected { rejected } => {
            let _ = write!(out, "; rejected by {}", actor(&rejected.by));
        }
        PlanState::Expired { at } => {
            let _ = write!(out, "; expired at {}", utc(*at));
        }
    }
    out.push('\n');
    if let Some(loss) = &plan.data_loss {
        let lags = loss
            .lag_bytes
            .iter()
            .map(|(cluster, lag)| format!("{cluster} {}", bytes(Some(*lag))))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "  data loss if approved: {} (approve with --acknowledge-loss)",
            if lags.is_empty() {
                "none measured"
            } else {
                &lags
            }
        );
    }
    for (index, step) in plan.steps.iter().enumerate() {
        let (state, detail) = match &step.state {
            StepState::Pending => ("pending", None),
            StepState::Running { .. } => ("running", None),
            StepState::Finished { outcome, .. } => match outcome {
                StepOutcome::Done(detail) => ("done", Some(detail)),
                StepOutcome::AlreadyDone(detail) => ("already-done", Some(detail)),
                StepOutcome::Failed(detail) => ("FAILED", Some(detail)),
            },
        };
        let _ = write!(
            out,
            "  {}. {state:<12} {}",
            index + 1,
            step.action.describe()
        );
        if let Some(detail) = detail.filter(|d| !d.is_empty()) {
            let _ = write!(out, " — {detail}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_controller::api::{ControllerInfo, RegionStatus, ReplicaRole, ZoneStatus};
    use meridian_controller::handle::ControllerHandle;
    use meridian_controller::model::{DatabaseRole, Temperature};
    use meridian_controller::plan::{DataLoss, PlanKind, Step, StepAction};
    use meridian_core::placement::NodeKind;
    use meridian_node::admin_token::AdminToken;

    fn status(replica: &str, active: bool) -> Status {
        let replica_status =
            |name: &str, node: &str, role, ready, reason: Option<&str>| ReplicaStatus {
                name: name.into(),
                node: node.into(),
                kind: NodeKind::Participant,
                temperature: Temperature::Warm,
                role,
                ready,
                reason: reason.map(str::to_owned),
                restarts: 0,
                pid: Some(7),
            };
        let now = Timestamp::from_micros(1_800_000_000_000_000);
        Status {
            controller: ControllerInfo {
                replica: replica.to_owned(),
                active,
                active_replica: Some("controller-a".to_owned()),
            },
            regions: vec![RegionStatus {
                name: "region-1".into(),
                failed_since: None,
                zones: vec![ZoneStatus {
                    name: "zone-1a".into(),
                    replicas: vec![
                        replica_status(
                            "participant1-a",
                            "participant1",
                            ReplicaRole::Active,
                            true,
                            None,
                        ),
                        replica_status(
                            "participant1-b",
                            "participant1",
                            ReplicaRole::Passive,
                            false,
                            Some("passive: the active replica is participant1-a"),
                        ),
                    ],
                    servers: vec![ServerStatus {
                        name: "pg-1b".into(),
                        cluster: "main".into(),
                        placed_as: DatabaseRole::AsyncStandby,
                        role: Some(DatabaseRole::AsyncStandby),
                        reachable: true,
                        lag_bytes: Some(4096),
                    }],
                }],
            }],
            plans: vec![Plan {
                id: PlanId::numbered(2),
                kind: PlanKind::RegionLoss,
                from_region: "region-1".into(),
                to_region: "region-2".into(),
                components: vec!["participant1".into()],
                proposed_by: Actor::Controller,
                created_at: now,
                expires_at: now,
                data_loss: Some(DataLoss {
                    lag_bytes: vec![("main".into(), 4096)],
                    read_at: Some(now),
                }),
                steps: vec![Step {
                    action: StepAction::MoveLoadBalancer {
                        region: "region-2".into(),
                    },
                    state: StepState::Pending,
                }],
                state: PlanState::AwaitingApproval,
            }],
            cooldown_until: None,
            automatic_actions_last_hour: 1,
            events: Vec::new(),
        }
    }

    #[test]
    fn status_lists_regions_zones_nodes_replicas_databases_and_plans() {
        let text = render_status(&status("controller-a", true), Timestamp::now());
        let expected_in_order = [
            "controller controller-a: active",
            "region-1",
            "  zone-1a",
            "    participant1",
            "participant1-a         active    ready",
            "participant1-b         passive   not ready: passive: the active replica is participant1-a",
            "database pg-1b",
            "async-standby  lag 4.0 KiB",
            "plans:",
            "plan-2 region-loss region-1 -> region-2 (participant1): awaiting-approval",
            "data loss if approved: main 4.0 KiB (approve with --acknowledge-loss)",
            "1. pending      move the load balancer to region-2",
        ];
        let mut rest = text.as_str();
        for needle in expected_in_order {
            let at = rest
                .find(needle)
                .unwrap_or_else(|| panic!("{needle:?} missing (in order) from:\n{text}"));
            rest = &rest[at + needle.len()..];
        }
    }

    #[test]
    fn utc_formats_the_civil_date() {
        assert_eq!(utc(Timestamp::from_micros(0)), "1970-01-01 00:00:00Z");
        assert_eq!(
            utc(Timestamp::from_micros(
                1_767_225_600_000_000 + 3_723_000_000
            )),
            "2026-01-01 01:02:03Z"
        );
    }

    async fn serve(replica: &str, active: bool) -> (String, tokio::sync::watch::Sender<Status>) {
        let (handle, side) = ControllerHandle::new(status(replica, active));
        let app = meridian_controller::http::router(handle, AdminToken::new(Some("t"), ""));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        tokio::spawn(async move { axum_serve(listener, app).await });
        (url, side.status)
    }

    async fn axum_serve(listener: tokio::net::TcpListener, app: axum::Router) {
        let _ = axum::serve(listener, app).await;
    }

    #[tokio::test]
    async fn the_active_replica_is_found_from_the_url_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let controller_dir = dir.path().join(CONTROLLER_DIR);
        std::fs::create_dir_all(&controller_dir).expect("dir");
        let http = reqwest::Client::new();

        let missing = find_controller(&http, dir.path(), false)
            .await
            .expect_err("no url files");
        assert!(
            missing.to_string().contains("--controller URL"),
            "{missing}"
        );

        let (passive, _passive_status) = serve("controller-b", false).await;
        std::fs::write(
            controller_dir.join("controller-a.url"),
            "http://127.0.0.1:1\n",
        )
        .expect("written");
        std::fs::write(
            controller_dir.join("controller-b.url"),
            format!("{passive}\n"),
        )
        .expect("written");
        let refused = find_controller(&http, dir.path(), true)
            .await
            .expect_err("only a passive replica answers");
        let message = refused.to_string();
        assert!(
            message.contains("controller-a at http://127.0.0.1:1"),
            "{message}"
        );
        assert!(
            message.contains("the active controller replica is controller-a"),
            "{message}"
        );
        // The status is served by a passive replica too.
        let client = find_controller(&http, dir.path(), false)
            .await
            .expect("a passive one for the status");
        assert_eq!(client.base_url(), passive);

        let (active, _active_status) = serve("controller-a", true).await;
        std::fs::write(
            controller_dir.join("controller-a.url"),
            format!("{active}\n"),
        )
        .expect("written");
        let client = find_controller(&http, dir.path(), true)
            .await
            .expect("the active one");
        assert_eq!(client.base_url(), active);
    }
}
