//! A controller replica between terms: it serves the status (active=false, naming the active
//! replica, the plans and the audit records as the store holds them) and refuses every
//! command with [`CommandError::NotActive`], so that an operator who reached the wrong replica
//! learns which one to ask. It owns the channels only while no term runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_node::replica::Role;
use tokio_util::sync::CancellationToken;

use super::{persist, status_of, ControllerStore, Shared, PASSIVE_REFRESH};
use crate::actuator::Actuator;
use crate::api::{CommandError, ControllerInfo};
use crate::engine::Restored;
use crate::handle::ControllerSide;

/// The active replica as this one last saw the lease.
fn active_replica(role: &Role, own: &str) -> Option<String> {
    match role {
        Role::Active { .. } => Some(own.to_owned()),
        Role::Passive { active } => active.as_ref().and_then(|lease| lease.holder.clone()),
    }
}

pub(super) async fn serve<A, S>(
    shared: Arc<Shared<A, S>>,
    side: Arc<tokio::sync::Mutex<ControllerSide>>,
    stop: CancellationToken,
) where
    A: Actuator + ?Sized,
    S: ControllerStore + ?Sized,
{
    let interval = Duration::from_millis(shared.replica.settings.probe_interval_ms);
    // The status of a fresh engine over what the store held at the last refresh.
    let mut shown: Option<crate::api::Status> = None;
    let mut refreshed: Option<Instant> = None;
    loop {
        if stop.is_cancelled() {
            return;
        }
        if shared.replication.role().is_active() {
            // A term runs or is about to: leave it the channels.
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(10)) => continue,
            }
        }
        let mut side = side.lock().await;
        let role = shared.replication.role();
        if role.is_active() {
            continue;
        }
        let active = active_replica(&role, &shared.replica.name);
        tokio::select! {
            () = stop.cancelled() => return,
            request = side.commands.recv() => {
                let Some(request) = request else { return };
                let _ = request.reply.send(Err(CommandError::NotActive {
                    active: active.clone().unwrap_or_else(|| "none right now".to_owned()),
                }));
            }
            () = tokio::time::sleep(interval) => {
                if refreshed.is_none_or(|at| at.elapsed() >= PASSIVE_REFRESH) {
                    refreshed = Some(Instant::now());
                    let restored = persist::restore(&*shared.store).await.unwrap_or_else(|error| {
                        tracing::debug!(error = %error, "a passive controller cannot read the store");
                        Restored::default()
                    });
                    shown = Some(status_of(&shared.replica, restored, info(&shared.replica.name, None)));
                }
                if let Some(status) = &shown {
                    let mut status = status.clone();
                    status.controller = info(&shared.replica.name, active);
                    side.publish(status);
                }
            }
        }
    }
}

fn info(replica: &str, active_replica: Option<String>) -> ControllerInfo {
    ControllerInfo {
        replica: replica.to_owned(),
        active: false,
        active_replica,
    }
}
