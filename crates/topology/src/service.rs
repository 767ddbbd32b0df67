//! The gRPC surface: `TopologyAdminService`. Mutating calls establish whose authority they
//! carry — the owner's, by the admin token (when configured, with the one check every node
//! uses: [`AdminToken`]), or, for AllocateParty, a participant's, by its signature on the
//! request ([`crate::authority::authenticate`]) —, validate every field before anything is
//! signed ([`crate::request`]), and hand the mapping and the authority to the [`Manager`],
//! whose refusals map one-to-one onto statuses. GetTopology is open: members call it to catch
//! up, and every entry carries the owner's signature anyway.
//!
//! A passive replica (DESIGN.md §5) has no manager: mutating calls get UNAVAILABLE naming the
//! active replica, and GetTopology is answered from the shared database — the completed
//! entries there are exactly what the active replica serves, so members can catch up from any
//! replica.

use std::sync::{Arc, OnceLock, RwLock};

use meridian_core::crypto::PublicKey;
use meridian_core::topology::{SignedTopologyTransaction, TopologyMapping};
use meridian_core::Timestamp;
use meridian_node::admin_token::AdminToken;
use meridian_node::replication::Replication;
use meridian_proto::v1::topology_admin_service_server::TopologyAdminService;
use meridian_proto::v1::{self};
use meridian_store::TopologyStore;
use tonic::{Request, Response, Status};

use crate::authority::{self, Authority};
use crate::manager::{ChangeError, ChangeOutcome, Loaded, Manager};
use crate::metrics::TopologyMetrics;
use crate::request::{self, FieldError};

/// Who answers admin calls: the manager while this node is active, nobody otherwise.
#[derive(Default)]
pub struct Serving {
    manager: RwLock<Option<Arc<Manager>>>,
    /// Set for a replicated manager: names the active replica in refusals.
    replication: OnceLock<Arc<Replication>>,
    /// Set for a replicated manager: what a passive replica answers GetTopology from.
    store: OnceLock<(Arc<dyn TopologyStore>, PublicKey)>,
}

impl Serving {
    pub fn set(&self, manager: Option<Arc<Manager>>) {
        *self.manager.write().unwrap_or_else(|p| p.into_inner()) = manager;
    }

    pub fn manager(&self) -> Option<Arc<Manager>> {
        self.manager
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_replication(
        &self,
        replication: Arc<Replication>,
        store: Arc<dyn TopologyStore>,
        owner: PublicKey,
    ) {
        let _ = self.replication.set(replication);
        let _ = self.store.set((store, owner));
    }

    pub fn replication(&self) -> Option<&Arc<Replication>> {
        self.replication.get()
    }

    /// The serving manager, or UNAVAILABLE saying why there is none.
    fn active(&self) -> Result<Arc<Manager>, Status> {
        if let Some(manager) = self.manager() {
            return Ok(manager);
        }
        Err(Status::unavailable(match self.replication.get() {
            Some(replication) => format!(
                "this topology manager replica ({}) does not serve: {}; retry at the active replica",
                replication.manager().settings().replica_id,
                Replication::passive_reason(&replication.role())
            ),
            None => "the topology manager is starting".to_owned(),
        }))
    }

    /// The completed, owner-verified history with effective times.
    async fn history(
        &self,
    ) -> Result<(PublicKey, Vec<(Timestamp, SignedTopologyTransaction)>), Status> {
        let refusal = match self.active() {
            Ok(manager) => return Ok((manager.owner_public_key(), manager.signed_history())),
            Err(refusal) => refusal,
        };
        let Some((store, owner)) = self.store.get() else {
            return Err(refusal);
        };
        let records = store
            .records()
            .await
            .map_err(|e| Status::unavailable(format!("cannot read the topology history: {e}")))?;
        let loaded = Loaded::from_records(*owner, records)
            .map_err(|e| Status::internal(format!("the stored topology history: {e}")))?;
        Ok((*owner, loaded.state.signed_history()))
    }
}

#[derive(Clone)]
pub struct TopologyAdminApi {
    pub serving: Arc<Serving>,
    /// Required on mutating calls when configured.
    pub admin_token: AdminToken,
    pub metrics: TopologyMetrics,
}

impl From<ChangeError> for Status {
    fn from(error: ChangeError) -> Status {
        match error {
            ChangeError::AlreadyExists(m) => Status::already_exists(m),
            ChangeError::FailedPrecondition(m) => Status::failed_precondition(m),
            ChangeError::PermissionDenied(m) => Status::permission_denied(m),
            ChangeError::Unavailable(m) => Status::unavailable(m),
            ChangeError::Internal(m) => Status::internal(m),
        }
    }
}

fn invalid(error: FieldError) -> Status {
    Status::invalid_argument(error.to_string())
}

impl TopologyAdminApi {
    /// The body of an admin request, refused unless its token is the configured admin token.
    fn authorized<T>(&self, request: Request<T>) -> Result<T, Status> {
        self.admin_token.check(request.metadata())?;
        Ok(request.into_inner())
    }

    /// The owner's authority for an unsigned AllocateParty: the admin token. Unlike the other
    /// admin calls, a manager without a configured token does not open it to everyone, since
    /// hosting someone else's party is acting as that party.
    fn owner(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Authority, Status> {
        if !self.admin_token.is_required() {
            return Err(Status::unauthenticated(
                "an unsigned AllocateParty needs the synchronizer owner's admin token, and this topology manager has no `admin_token` configured; allocate through the hosting participant's Ledger API, which signs the request (`requested_by`, `requested_at_us`, `signature`), or configure `admin_token`",
            ));
        }
        self.admin_token.check(metadata)?;
        Ok(Authority::Owner)
    }

    /// The participant whose signature `signed` is, for `mapping`.
    fn participant(
        &self,
        mapping: &TopologyMapping,
        signed: &request::Signed,
    ) -> Result<Authority, Status> {
        let manager = self.serving.active()?;
        let Some(hosting) = signed.request(mapping) else {
            return Err(Status::internal(
                "only party hostings are signed by participants",
            ));
        };
        let key = manager.participant_key(&signed.requested_by);
        let requester =
            authority::authenticate(&hosting, &signed.signature, key.as_ref(), Timestamp::now())
                .map_err(|error| {
                    Status::unauthenticated(format!("AllocateParty signature: {error}"))
                })?;
        Ok(Authority::Participant(requester))
    }

    async fn change(
        &self,
        call: &'static str,
        mapping: Result<TopologyMapping, FieldError>,
        authority: Authority,
    ) -> Result<Response<v1::TopologyChangeResponse>, Status> {
        let mapping = match mapping {
            Ok(mapping) => mapping,
            Err(error) => {
                self.metrics.count("invalid");
                return Err(invalid(error));
            }
        };
        let manager = match self.serving.active() {
            Ok(manager) => manager,
            Err(refusal) => {
                self.metrics.count("failed");
                return Err(refusal);
            }
        };
        // In a task of its own: tonic drops a handler's future when the client goes away,
        // and a change cut off between its store write and its in-memory update would leave
        // the two disagreeing until the next re-read.
        let outcome = tokio::spawn(async move { manager.change(mapping, authority).await })
            .await
            .map_err(|e| Status::internal(format!("the change task failed: {e}")))?;
        match outcome {
            Ok(ChangeOutcome {
                serial,
                effective,
                changed,
            }) => {
                self.metrics
                    .count(if changed { "changed" } else { "unchanged" });
                Ok(Response::new(v1::TopologyChangeResponse {
                    serial,
                    effective_us: effective.as_micros(),
                    changed,
                }))
            }
            Err(error) => {
                self.metrics.count(match error {
                    ChangeError::Unavailable(_) | ChangeError::Internal(_) => "failed",
                    _ => "refused",
                });
                tracing::warn!(call, %error, "topology change not made");
                Err(error.into())
            }
        }
    }
}

#[tonic::async_trait]
impl TopologyAdminService for TopologyAdminApi {
    async fn add_participant(
        &self,
        request: Request<v1::AddParticipantRequest>,
    ) -> Result<Response<v1::TopologyChangeResponse>, Status> {
        let request = self.authorized(request)?;
        let mapping = request::add_participant(request.participant, &request.public_key);
        self.change("AddParticipant", mapping, Authority::Owner)
            .await
    }

    async fn add_mediator(
        &self,
        request: Request<v1::AddMediatorRequest>,
    ) -> Result<Response<v1::TopologyChangeResponse>, Status> {
        let request = self.authorized(request)?;
        let mapping = request::add_mediator(request.mediator, &request.public_key);
        self.change("AddMediator", mapping, Authority::Owner).await
    }

    async fn allocate_party(
        &self,
        request: Request<v1::TopologyAllocatePartyRequest>,
    ) -> Result<Response<v1::TopologyChangeResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let fields =
            request::allocate_party(request.party, request.participant, &request.permission)
                .and_then(|mapping| {
                    let signed = request::signed_by(
                        request.requested_by,
                        request.requested_at_us,
                        request.signature,
                    )?;
                    Ok((mapping, signed))
                });
        let (mapping, signed) = match fields {
            Ok(fields) => fields,
            Err(error) => {
                self.metrics.count("invalid");
                return Err(invalid(error));
            }
        };
        let authority = match &signed {
            None => self.owner(&metadata),
            Some(signed) => self.participant(&mapping, signed),
        };
        let authority = authority.inspect_err(|status| {
            self.metrics.count(match status.code() {
                tonic::Code::Unavailable => "failed",
                _ => "refused",
            });
            tracing::warn!(call = "AllocateParty", %status, "topology change not made");
        })?;
        self.change("AllocateParty", Ok(mapping), authority).await
    }

    async fn get_topology(
        &self,
        _request: Request<v1::GetTopologyRequest>,
    ) -> Result<Response<v1::GetTopologyResponse>, Status> {
        let (owner, history) = self.serving.history().await?;
        let entries = history
            .into_iter()
            .map(|(effective, signed)| v1::SignedTopologyEntry {
                effective_us: effective.as_micros(),
                transaction_json: signed.transaction_json,
                signature: signed.signature,
            })
            .collect();
        Ok(Response::new(v1::GetTopologyResponse {
            owner_public_key: owner.to_string(),
            entries,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_errors_map_to_their_statuses() {
        for (error, code) in [
            (
                ChangeError::AlreadyExists("x".into()),
                tonic::Code::AlreadyExists,
            ),
            (
                ChangeError::FailedPrecondition("x".into()),
                tonic::Code::FailedPrecondition,
            ),
            (
                ChangeError::PermissionDenied("x".into()),
                tonic::Code::PermissionDenied,
            ),
            (
                ChangeError::Unavailable("x".into()),
                tonic::Code::Unavailable,
            ),
            (ChangeError::Internal("x".into()), tonic::Code::Internal),
        ] {
            assert_eq!(Status::from(error).code(), code);
        }
    }
}
