//! `meridian controller`: one replica of a deployment's controller on this machine.
//!
//! ```text
//! meridian controller --deployment FILE | --preset NAME [--backend B]
//!     [--data-dir meridian-data] [--name controller-a] [--listen 127.0.0.1:0] [--database-url URL]
//!     [--plaintext]
//! ```
//!
//! Its own store is SQLite at `<data-dir>/controller/controller.db` unless `--database-url`
//! names a PostgreSQL database; every replica of the controller of one deployment must use the
//! same one (they share its lease). Its HTTP API listens on `--listen` over TLS with the
//! deployment's `controller` certificate ([`tls_config`]); the URL it got
//! (`https://...`) is written to `<data-dir>/controller/<name>.url`, where `meridian ctl` finds
//! it. `--plaintext` serves `http://` and starts the deployment without TLS, with a warning;
//! it is refused on a deployment that runs TLS, as TLS is on one that does not. A data
//! directory that holds another deployment than the one given is refused before anything
//! starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use meridian_controller::api::{ControllerInfo, Status};
use meridian_controller::handle::ControllerHandle;
use meridian_controller::runtime::{self, ControllerLease, ControllerReplica};
use meridian_node::admin_token::AdminToken;
use meridian_node::certs::CA_CERT_FILE;
use meridian_node::tls::TlsConfig;
use meridian_store::StorageConfig;
use tokio_util::sync::CancellationToken;

use super::{bootstrap, LabActuator, CONTROLLER_DIR};
use crate::deployment::{DeploymentArgs, Preset, DESCRIPTION_FILE};
use crate::tls::{self, CONTROLLER_CERT_NAME};

#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    /// The deployment to supervise (started here if DIR holds none yet).
    #[command(flatten)]
    pub deployment: DeploymentArgs,
    /// The deployment's data directory (the one `meridian ctl` reads by default).
    #[arg(long, default_value = "meridian-data")]
    pub data_dir: PathBuf,
    /// This controller replica: `controller-a`, `controller-b` (the lease holder's name).
    #[arg(long, default_value = "controller-a")]
    pub name: String,
    /// Where the controller's HTTP API (status, plans, dashboard) listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The controller's own database on PostgreSQL (default: SQLite in
    /// `<data-dir>/controller/controller.db`).
    #[arg(long)]
    pub database_url: Option<String>,
    /// How long a controller replica that stopped renewing keeps the lease.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub lease_timeout_ms: u64,
    /// Serve the API, and run a deployment this replica starts, without TLS: development and
    /// measurements only (the admin token then travels in cleartext); warned at start-up.
    #[arg(long)]
    pub plaintext: bool,
}

/// Where `name`'s HTTP address is written.
pub fn url_file(data_dir: &std::path::Path, name: &str) -> PathBuf {
    data_dir.join(CONTROLLER_DIR).join(format!("{name}.url"))
}

/// A controller replica's name: what the lease and the audit log show.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    anyhow::ensure!(
        valid,
        "--name {name:?}: 1 to 64 characters of a-z, 0-9 and '-' (e.g. controller-a)"
    );
    Ok(())
}

pub async fn run(args: ControllerArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    check_name(&args.name)?;
    if args.deployment.deployment.is_none() && args.deployment.preset.is_none() {
        anyhow::bail!("give the deployment to supervise: --deployment FILE or --preset NAME");
    }
    let description = args.deployment.resolve(Preset::Replicated, None)?;
    let data_dir = std::path::absolute(&args.data_dir)
        .with_context(|| format!("--data-dir {}", args.data_dir.display()))?;
    // Before anything is opened or written: a directory running another deployment is
    // refused, and nothing changes.
    bootstrap::check_matches(&data_dir, &description)?;
    if args.plaintext {
        crate::tls::set_plaintext()?;
    }
    let settings = description.controller.clone();
    settings
        .check()
        .map_err(|error| anyhow::anyhow!("the deployment's {error}"))?;
    // Before anything is opened: TLS that does not fit the deployment (`--plaintext` on one
    // that runs TLS, or the reverse) is refused with nothing changed, and the API serves TLS
    // from its first request on.
    let tls = tls_config(&data_dir)?;
    let server_tls = tls
        .load()
        .context("loading the controller's TLS certificate")?
        .server;

    let controller_dir = data_dir.join(CONTROLLER_DIR);
    std::fs::create_dir_all(&controller_dir)
        .with_context(|| format!("creating {}", controller_dir.display()))?;
    let token_file = crate::secrets::admin_token(&data_dir)?;
    let admin = AdminToken::configured(
        None,
        Some(&token_file),
        "from <data-dir>/secrets/admin-token",
    )?;

    let storage = match &args.database_url {
        Some(url) => StorageConfig::Postgres {
            url: url.clone(),
            max_connections: 4,
        },
        None => meridian_store::controller::default_storage(&data_dir),
    };
    let stores = meridian_store::controller::open(&storage, runtime::LEASE_NODE, None)
        .await
        .context("opening the controller's store")?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    let address = listener.local_addr()?;
    let url = tls.url(address);
    let url_path = url_file(&data_dir, &args.name);
    std::fs::write(&url_path, format!("{url}\n"))
        .with_context(|| format!("writing {}", url_path.display()))?;
    tracing::info!(replica = %args.name, %url, "controller API listening");

    let (handle, side) = ControllerHandle::new(Status::empty(ControllerInfo {
        replica: args.name.clone(),
        active: false,
        active_replica: None,
    }));
    let router = meridian_controller::http::router(handle, admin);
    let http = tokio::spawn(meridian_controller::http::serve(
        listener,
        router,
        server_tls,
        args.name.clone(),
        shutdown.clone(),
    ));

    let exe = std::env::current_exe().context("locating the meridian binary")?;
    let actuator = Arc::new(LabActuator::new(exe, data_dir, description));
    let replica = ControllerReplica {
        name: args.name.clone(),
        advertised_endpoint: url,
        settings,
        inventory: actuator.inventory().clone(),
    };
    let lease = ControllerLease {
        store: stores.lease,
        fence: stores.fence,
        timeout: Duration::from_millis(args.lease_timeout_ms),
        poll_interval: Duration::from_millis(100),
    };
    let result = runtime::run(
        replica,
        actuator,
        stores.store,
        lease,
        side,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let _ = http.await;
    result
}

/// The `[tls]` the controller of the deployment in `data_dir` serves its HTTP API with, and
/// this process's clients then trust that deployment's CA.
///
/// - Under [`tls::set_plaintext`] (`meridian controller --plaintext`): plaintext, refused if the
///   deployment there runs TLS (the controller could not probe its nodes).
/// - A deployment with certificates: the `controller` certificate its first start issued.
/// - A directory without a deployment yet: this process's CA and its `controller`
///   certificate are written now, before the API listens; the deployment's first start (by
///   this process, the active replica) writes the same two again and the nodes' from that CA.
///
/// The certificate is not required from clients (no mutual TLS): the dashboard runs in a
/// browser, which has no client certificate; the admin token guards every command.
fn tls_config(data_dir: &Path) -> anyhow::Result<TlsConfig> {
    let dir = tls::tls_dir(data_dir);
    let has_ca = dir.join(CA_CERT_FILE).exists();
    let has_deployment = data_dir.join(DESCRIPTION_FILE).exists();
    if tls::is_plaintext() {
        anyhow::ensure!(
            !has_ca,
            "--plaintext: the deployment in {} runs TLS ({} exists); drop --plaintext",
            data_dir.display(),
            dir.join(CA_CERT_FILE).display()
        );
        return Ok(TlsConfig::plaintext());
    }
    if has_ca {
        tls::use_deployment(data_dir)?;
    } else if has_deployment {
        anyhow::bail!(
            "the deployment in {} runs without TLS (no {}); start its controller with \
             --plaintext, or start the deployment anew with TLS",
            data_dir.display(),
            dir.join(CA_CERT_FILE).display()
        );
    } else {
        tls::deployment_certs(data_dir, &[])?;
    }
    let cert_file = dir.join(format!("{CONTROLLER_CERT_NAME}.crt"));
    anyhow::ensure!(
        cert_file.exists(),
        "no controller certificate {}: the deployment in {} was started without one (before \
         the controller served TLS); issue it from the deployment's CA with `meridian certs` \
         or start the deployment anew",
        cert_file.display(),
        data_dir.display()
    );
    Ok(TlsConfig::files(
        cert_file,
        dir.join(format!("{CONTROLLER_CERT_NAME}.key")),
        dir.join(CA_CERT_FILE),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_name_is_checked() {
        assert!(check_name("controller-a").is_ok());
        for bad in ["", "Controller", "a b", &"x".repeat(65)] {
            let error = check_name(bad).expect_err(bad).to_string();
            assert!(error.contains("--name"), "{error}");
        }
    }
}
