//! `meridian admin fork-report NODE` and `meridian admin fork-repair PARTICIPANT`: what an
//! operator runs after a region loss left a member on a fork (docs/operations.md, "Fork after
//! a region loss"). The report reads the `fork` object of each replica's `/status`; the repair
//! works on the participant's database directly, and only while every replica is stopped.
//! Cold replicas count: after a region move they are the ones that run, and the only ones
//! whose configs name a database server that is up. The region-loss drill repairs through
//! [`rewind`] too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use meridian_participant::fork::RepairReport;
use meridian_store::ParticipantStore;
use serde_json::Value;

use crate::replicas::{get_status, http, replicas_with_cold};

#[derive(Args)]
pub struct ForkReportArgs {
    /// The node, e.g. `participant1`.
    pub node: String,
    #[arg(long, default_value = "meridian-data")]
    pub data_dir: PathBuf,
    /// Print the `fork` object of `/status` as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ForkRepairArgs {
    /// The participant, e.g. `participant1`.
    pub node: String,
    #[arg(long, default_value = "meridian-data")]
    pub data_dir: PathBuf,
    /// A new file for the lost transactions (written before anything changes).
    #[arg(long)]
    pub save: PathBuf,
}

/// How long a replica's admin port is given to accept a connection before it counts as
/// stopped.
const ALIVE_PROBE: Duration = Duration::from_millis(500);
/// How long one replica config's database gets to open: a config listing only the lost
/// region's servers fails within its hosts' connect timeouts.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

pub async fn report(args: &ForkReportArgs) -> anyhow::Result<()> {
    let replicas = replicas_with_cold(&args.data_dir, &args.node)?;
    let client = &http()?;
    let mut answered = 0;
    for replica in &replicas {
        let Some(status) = get_status(client, replica).await else {
            continue;
        };
        answered += 1;
        let fork = status.get("fork").cloned().unwrap_or(Value::Null);
        if fork.is_null() {
            continue;
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&fork)?);
        } else {
            print!("{}", describe(&replica.name, &fork));
        }
        return Ok(());
    }
    if answered == 0 {
        bail!(
            "no replica of {} answered /status (is it running? a stopped participant's fork is \
             listed by fork-repair, which saves it to a file)",
            args.node
        );
    }
    println!("{}: no fork detected", args.node);
    Ok(())
}

/// The fork as text: the alarm, then one line per lost transaction.
fn describe(replica: &str, fork: &Value) -> String {
    let mut out = format!(
        "{replica}: FORK\n  {}\n  last processed event: {}\n  last shared event:    {}\n",
        fork["reason"].as_str().unwrap_or("?"),
        fork["last_processed_us"],
        fork["last_shared_event_us"],
    );
    match fork.get("lost_transactions").and_then(Value::as_array) {
        Some(lost) => {
            out.push_str(&format!(
                "  {} committed transaction(s) the sequencer's history lacks{}:\n",
                lost.len(),
                if fork["lost_list_complete"] == Value::Bool(false) {
                    " (list truncated)"
                } else {
                    ""
                }
            ));
            out.push_str("  offset  transaction_id                        command_id\n");
            for tx in lost {
                out.push_str(&format!(
                    "  {:<7} {:<37} {}\n",
                    tx["offset"],
                    tx["transaction_id"].as_str().unwrap_or("?"),
                    tx["command_id"].as_str().unwrap_or("-"),
                ));
            }
        }
        None if fork.get("lost_error").is_some() => {
            out.push_str(&format!(
                "  lost transactions unknown: {}\n",
                fork["lost_error"]
            ));
        }
        None => {}
    }
    out
}

pub async fn repair(args: &ForkRepairArgs) -> anyhow::Result<()> {
    let replicas = replicas_with_cold(&args.data_dir, &args.node)?;
    if replicas.is_empty() {
        bail!(
            "no replica config of {} under {}",
            args.node,
            args.data_dir.display()
        );
    }
    // The rewind is not fenced: a running replica would write on top of it.
    for replica in &replicas {
        if alive(&replica.admin_address).await {
            bail!(
                "replica {} of {} is running (its admin endpoint {} accepts connections); stop \
                 every replica of the participant first; nothing was changed",
                replica.name,
                args.node,
                replica.admin_address
            );
        }
    }
    let configs: Vec<&Path> = replicas.iter().map(|r| r.config_path.as_path()).collect();
    let report = rewind(&configs, &args.save).await?;
    println!(
        "{}: rewound to event {}us (ledger end {}), the last quiet point at or before the fork \
         point {}us",
        args.node,
        report.rewound_to_us,
        report.rewound_to_ledger_end,
        report.fork_point_us.unwrap_or_default()
    );
    println!(
        "{} lost transaction(s) saved to {}:",
        report.lost_transactions.len(),
        args.save.display()
    );
    for tx in &report.lost_transactions {
        println!(
            "  offset {:<6} {}  command {}",
            tx.offset,
            tx.transaction_id,
            tx.command_id.as_deref().unwrap_or("-")
        );
    }
    if let Some(outcome) = &report.outcome {
        println!("changed: {}", serde_json::to_string(outcome)?);
    }
    println!(
        "start the participant: it replays the sequencer's history from there; applications \
         resubmit the listed commands of theirs (deduplication keeps that safe)"
    );
    Ok(())
}

/// Rewinds a stopped participant to the last quiet point before its fork, saving the lost
/// transactions to `save` first, on the database of the first of `configs` (its replicas'
/// configs) that opens.
pub async fn rewind(configs: &[&Path], save: &Path) -> anyhow::Result<RepairReport> {
    let store = open_store(configs).await?;
    meridian_participant::fork::repair(store.as_ref(), save).await
}

async fn open_store(configs: &[&Path]) -> anyhow::Result<Arc<dyn ParticipantStore>> {
    let mut tried = Vec::new();
    for path in configs {
        let config = meridian_participant::ParticipantConfig::load(path)
            .with_context(|| format!("loading {}", path.display()))?;
        let opened = tokio::time::timeout(
            OPEN_TIMEOUT,
            meridian_store::open_participant_store(&config.storage),
        )
        .await;
        match opened {
            Ok(Ok(store)) => return Ok(store),
            Ok(Err(error)) => tried.push(format!("{}: {error}", path.display())),
            Err(_) => tried.push(format!(
                "{}: no answer within {} s",
                path.display(),
                OPEN_TIMEOUT.as_secs()
            )),
        }
    }
    bail!("no replica's database opened; tried {}", tried.join("; "))
}

async fn alive(address: &str) -> bool {
    matches!(
        tokio::time::timeout(ALIVE_PROBE, tokio::net::TcpStream::connect(address)).await,
        Ok(Ok(_))
    )
}
