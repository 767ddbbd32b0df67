//! The gRPC surface: `SequencerService` for members and `SequencerAdminService` for operators.
//! Each handler authenticates, converts wire types (rejecting malformed input with
//! INVALID_ARGUMENT), and hands off to the directory, writer or reader. Nothing here touches
//! the store on a failed check, so bad input changes nothing.

use std::sync::Arc;
use std::time::Duration;

use meridian_core::crypto::PublicKey;
use meridian_core::{MemberId, Timestamp};
use meridian_proto::convert;
use meridian_proto::v1::sequencer_admin_service_server::SequencerAdminService;
use meridian_proto::v1::sequencer_service_server::SequencerService;
use meridian_proto::v1::{self};
use meridian_store::{MemberHistoryAt, MemberRecord, SequencerStore, StoreError};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::auth::{bearer_token, AuthError, Authenticator};
use crate::directory::MemberDirectory;
use crate::error::SendError;
use crate::metrics::SequencerMetrics;
use crate::reader::{spawn_subscription, ReaderContext, Subscription};
use crate::registration::authorize_registration;
use crate::tail::ReaderTail;
use crate::validate::{validate_submission, SubmissionLimits};
use crate::writer::WriterHandle;
use meridian_node::admin_token::AdminToken;
use meridian_node::conditions::Conditions;

/// State shared by both services.
pub struct Shared {
    pub store: Arc<dyn SequencerStore>,
    pub directory: Arc<MemberDirectory>,
    pub auth: Authenticator,
    pub writer: WriterHandle,
    /// The instance's shared reader tail, which every subscription serves from.
    pub tail: Arc<ReaderTail>,
    pub limits: SubmissionLimits,
    pub metrics: SequencerMetrics,
    pub readiness: Conditions,
    pub shutdown: CancellationToken,
    /// Required on admin calls when configured.
    pub admin_token: AdminToken,
    /// The synchronizer owner's key; when set, registrations need an owner-signed topology
    /// transaction naming the member (see [`crate::registration`]).
    pub owner_key: Option<PublicKey>,
}

/// FAILED_PRECONDITION with [`v1::ForkDetails`], which the client turns into a typed fork.
fn fork_status(after: Timestamp, history: MemberHistoryAt) -> Status {
    let describe = |t: Option<Timestamp>| t.map_or_else(|| "none".to_owned(), |t| t.to_string());
    Status::with_details(
        tonic::Code::FailedPrecondition,
        format!(
            "fork: event {after} is not in this sequencer's history of the member; its latest \
             event for the member at or before it is {}, its latest is {}",
            describe(history.at_or_before),
            describe(history.latest)
        ),
        convert::sequencer::fork_to_status_details(after, history.at_or_before, history.latest)
            .into(),
    )
}

fn store_status(error: StoreError) -> Status {
    match error {
        // An outage of any kind, or this instance being fenced: another try (here, after the
        // database recovers, or at the other instance) may succeed.
        error if error.is_transient() => Status::unavailable(error.to_string()),
        StoreError::Fenced(_) | StoreError::Superseded { .. } => {
            Status::unavailable(error.to_string())
        }
        StoreError::MemberKeyConflict { .. } => Status::already_exists(error.to_string()),
        other => {
            tracing::error!(error = %other, "store failure");
            Status::internal(other.to_string())
        }
    }
}

fn auth_status(error: AuthError) -> Status {
    Status::unauthenticated(error.to_string())
}

fn parse_member(field: &'static str, value: String) -> Result<MemberId, Status> {
    convert::member_id(field, value).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The `member` a request names, refused unless it is the session's own: a session acts only
/// for the member that authenticated it. `action` says what was refused, for the message.
fn own_member(
    session: &MemberId,
    member: String,
    action: impl FnOnce(&MemberId) -> String,
) -> Result<MemberId, Status> {
    let member = parse_member("member", member)?;
    if member != *session {
        return Err(Status::permission_denied(format!(
            "session belongs to {session}; it cannot {}",
            action(&member)
        )));
    }
    Ok(member)
}

impl Shared {
    fn session_member<T>(&self, request: &Request<T>) -> Result<MemberId, Status> {
        let token = bearer_token(request.metadata()).map_err(auth_status)?;
        self.auth.member_for_token(token).map_err(auth_status)
    }

    fn require_ready(&self) -> Result<(), Status> {
        match self.readiness.reason() {
            None => Ok(()),
            Some(reason) => Err(Status::unavailable(format!(
                "sequencer not ready: {reason}"
            ))),
        }
    }

    /// Refuses to resume `member` after `after` unless `after` is one of its events here. A
    /// member only ever resumes after an event it was delivered, so a missing one means this
    /// history lost it (a database failover to a standby that had not replayed it): the
    /// member is on a fork and must stop, which the typed answer tells its client at once,
    /// even when no new event would arrive to break its `previous_timestamp` chain.
    async fn check_known_event(
        &self,
        member: &MemberRecord,
        after: Timestamp,
    ) -> Result<(), Status> {
        let history = self
            .store
            .member_history_at(member.seq, after)
            .await
            .map_err(store_status)?;
        if history.at_or_before == Some(after) {
            return Ok(());
        }
        tracing::error!(
            member = %member.id,
            last_processed = %after,
            last_shared = ?history.at_or_before,
            sequencer_latest = ?history.latest,
            "refusing a subscription: the member processed an event this sequencer's history lacks (fork)"
        );
        Err(fork_status(after, history))
    }

    async fn validate(
        &self,
        submission: meridian_core::sequencing::Submission,
        session: &MemberId,
    ) -> Result<crate::engine::ValidatedSubmission, SendError> {
        let now = Timestamp::now();
        let lookup = |id: &MemberId| self.directory.seq(id);
        match validate_submission(submission.clone(), session, lookup, &self.limits, now) {
            // Another instance may have registered the member since our last reload.
            Err(SendError::UnknownRecipient(_) | SendError::UnknownSender(_)) => {
                if let Err(error) = self.directory.reload().await {
                    return Err(SendError::Unavailable(format!(
                        "cannot read members: {error}"
                    )));
                }
                let lookup = |id: &MemberId| self.directory.seq(id);
                validate_submission(submission, session, lookup, &self.limits, now)
            }
            other => other,
        }
    }
}

#[derive(Clone)]
pub struct SequencerApi(pub Arc<Shared>);

#[tonic::async_trait]
impl SequencerService for SequencerApi {
    async fn get_challenge(
        &self,
        request: Request<v1::GetChallengeRequest>,
    ) -> Result<Response<v1::GetChallengeResponse>, Status> {
        let member = parse_member("member", request.into_inner().member)?;
        let nonce = self.0.auth.challenge(&member);
        Ok(Response::new(v1::GetChallengeResponse {
            nonce: nonce.to_vec(),
        }))
    }

    async fn authenticate(
        &self,
        request: Request<v1::AuthenticateRequest>,
    ) -> Result<Response<v1::AuthenticateResponse>, Status> {
        let request = request.into_inner();
        let member = parse_member("member", request.member)?;
        let record = self
            .0
            .directory
            .get_or_reload(&member)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::unauthenticated(format!("member {member} is not registered")))?;
        let (token, ttl) = self
            .0
            .auth
            .authenticate(
                &member,
                &record.public_key,
                &request.nonce,
                &request.signature,
            )
            .map_err(auth_status)?;
        Ok(Response::new(v1::AuthenticateResponse {
            token,
            expires_at_us: Timestamp::now().saturating_add(ttl).as_micros(),
        }))
    }

    async fn send(
        &self,
        request: Request<v1::SendRequest>,
    ) -> Result<Response<v1::SendResponse>, Status> {
        let session = self.0.session_member(&request)?;
        self.0.require_ready()?;
        let wire = request
            .into_inner()
            .submission
            .ok_or_else(|| Status::invalid_argument("missing field `submission`"))?;
        let result = async {
            let submission = convert::submission_from_wire(wire)
                .map_err(|e| SendError::Malformed(e.to_string()))?;
            let validated = self.0.validate(submission, &session).await?;
            self.0.writer.submit(validated).await
        }
        .await;
        match result {
            Ok(outcome) => Ok(Response::new(v1::SendResponse {
                timestamp_us: outcome.timestamp.as_micros(),
                deduplicated: outcome.deduplicated,
            })),
            Err(error) => {
                if !matches!(
                    error,
                    SendError::Unavailable(_) | SendError::MaxSequencingTimeExceeded { .. }
                ) {
                    self.0.metrics.count("rejected");
                }
                Err(error.into())
            }
        }
    }

    type SubscribeStream = ReceiverStream<Result<v1::SequencedEvent, Status>>;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let session = self.0.session_member(&request)?;
        self.0.require_ready()?;
        let request = request.into_inner();
        let member = own_member(&session, request.member, |member| {
            format!("subscribe to {member}'s events")
        })?;
        let record = self
            .0
            .directory
            .get_or_reload(&member)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("member {member} is not registered")))?;
        let after = request.after_timestamp_us.map(Timestamp::from_micros);
        if let Some(after) = after {
            self.0.check_known_event(&record, after).await?;
        }
        let receiver = spawn_subscription(
            ReaderContext {
                store: self.0.store.clone(),
                directory: self.0.directory.clone(),
                tail: self.0.tail.clone(),
                metrics: self.0.metrics.clone(),
                shutdown: self.0.shutdown.clone(),
            },
            Subscription {
                member: record,
                after,
                keep_alive: request
                    .keep_alive_interval_ms
                    .map(|ms| Duration::from_millis(u64::from(ms))),
            },
        );
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn acknowledge(
        &self,
        request: Request<v1::AcknowledgeRequest>,
    ) -> Result<Response<v1::AcknowledgeResponse>, Status> {
        let session = self.0.session_member(&request)?;
        let request = request.into_inner();
        let member = own_member(&session, request.member, |member| {
            format!("acknowledge for {member}")
        })?;
        let record = self
            .0
            .directory
            .get(&member)
            .ok_or_else(|| Status::not_found(format!("member {member} is not registered")))?;
        self.0
            .store
            .acknowledge(record.seq, Timestamp::from_micros(request.timestamp_us))
            .await
            .map_err(store_status)?;
        Ok(Response::new(v1::AcknowledgeResponse {}))
    }
}

#[derive(Clone)]
pub struct SequencerAdminApi(pub Arc<Shared>);

impl SequencerAdminApi {
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.0.admin_token.check(request.metadata())
    }
}

/// Bound on a registration's database round trip, so a stuck database fails the call
/// instead of hanging the operator's command.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

#[tonic::async_trait]
impl SequencerAdminService for SequencerAdminApi {
    async fn register_member(
        &self,
        request: Request<v1::RegisterMemberRequest>,
    ) -> Result<Response<v1::RegisterMemberResponse>, Status> {
        // With an owner key, the owner's signature on the topology transaction is the
        // authorisation: the topology manager that carries it holds no admin token. Without
        // one, the admin token (if configured) guards open registration as before.
        if self.0.owner_key.is_none() {
            self.authorize(&request)?;
        }
        let request = request.into_inner();
        let member = parse_member("member", request.member)?;
        let public_key = PublicKey::from_bytes(&request.public_key)
            .map_err(|e| Status::invalid_argument(format!("invalid `public_key`: {e}")))?;
        authorize_registration(
            self.0.owner_key.as_ref(),
            &member,
            &public_key,
            &request.topology_transaction_json,
            &request.owner_signature,
        )?;
        let (record, created) = tokio::time::timeout(
            ADMIN_TIMEOUT,
            self.0
                .store
                .register_member(&member, &public_key, Timestamp::now()),
        )
        .await
        .map_err(|_| Status::deadline_exceeded("the database did not answer within 10 s"))?
        .map_err(store_status)?;
        if created {
            tracing::info!(%member, key = %public_key, "registered member");
        }
        self.0.directory.insert(record);
        Ok(Response::new(v1::RegisterMemberResponse { created }))
    }

    async fn list_members(
        &self,
        request: Request<v1::ListMembersRequest>,
    ) -> Result<Response<v1::ListMembersResponse>, Status> {
        self.authorize(&request)?;
        let members = self.0.store.members().await.map_err(store_status)?;
        Ok(Response::new(v1::ListMembersResponse {
            members: members
                .into_iter()
                .map(|m| v1::MemberInfo {
                    member: m.id.to_string(),
                    public_key: m.public_key.to_bytes().to_vec(),
                    registered_at_us: m.registered_at.as_micros(),
                })
                .collect(),
        }))
    }
}
