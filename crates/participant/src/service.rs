//! The Ledger API (`meridian.v1.LedgerService`): admission (readiness, the step-down gate, the
//! in-flight limit), wire conversion (`meridian_proto::convert::ledger`), one call into the
//! runtime, and the answer as a gRPC status; plus the read streams. Every call and error is
//! documented in `docs/ledger-api.md`; keep the two in step.
//!
//! A submission: convert the request (INVALID_ARGUMENT naming the field) → take an in-flight
//! slot (RESOURCE_EXHAUSTED) → [`Core::submit`], whose one answer (committed, rejected,
//! duplicate with the original, refused, or unknown) maps to the status.
//!
//! Authorization comes first, before readiness and before anything is read or written: with
//! `[ledger_auth]` every call carries `authorization: Bearer <JWT>`, verified by
//! [`meridian_auth::Verifier`] (UNAUTHENTICATED saying which check failed), and the call must
//! be within the token's claims (PERMISSION_DENIED naming the party or claim): SubmitAndWait
//! acts only as `actAs` parties and as the token's user, the reads read only as `actAs` ∪
//! `readAs`, the completion stream is the token's user's, AllocateParty needs `admin`.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use meridian_auth::Authorized;
use meridian_core::ledger::Permission;
use meridian_core::protocol::ChangeId;
use meridian_core::topology::HostingRequest;
use meridian_core::{LedgerOffset, PartyId, Timestamp, TransactionId};
use meridian_node::Health;
use meridian_proto::convert::ledger::{
    completions_query_from_wire, created_event_to_wire, parties_from_wire, party_id,
    submit_and_wait_from_wire, transactions_query_from_wire, visible, CommittedTransaction,
    SubmitLimits,
};
use meridian_proto::convert::WireError;
use meridian_proto::v1;
use meridian_proto::v1::ledger_service_server::LedgerService;
use meridian_proto::v1::topology_admin_service_client::TopologyAdminServiceClient;
use meridian_store::{
    CompletionRecord, ParticipantStore, StoreError, StoredContract, TransactionRecord,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};

use crate::config::ParticipantConfig;
use crate::engine::{Completion, Outcome, StatusCode, SubmitError};
use crate::replication::{stepping_down_message, Serving};
use crate::runtime::{Core, SubmitAnswer, SubmitFailure, WriterCommand};

/// Rows read per page by the streams.
const PAGE_ROWS: u32 = 500;
/// Items buffered per stream before the reader waits for the client.
const STREAM_BUFFER: usize = 256;
/// How long AllocateParty waits for the new hosting to reach this participant's topology.
const ALLOCATE_WAIT: Duration = Duration::from_secs(15);
/// After this long without seeing the allocation, fetch the topology from the manager.
const ALLOCATE_FETCH_AFTER: Duration = Duration::from_secs(2);
const TOPOLOGY_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The gRPC service. Before the node is ready, and on a passive replica, every call is
/// UNAVAILABLE with the reason (naming the active replica when known).
#[derive(Clone)]
pub struct LedgerApi {
    pub(crate) serving: Arc<Serving>,
    pub(crate) health: Health,
    /// `None`: no `[ledger_auth]`, the API is open.
    pub(crate) auth: Option<Arc<meridian_auth::Verifier>>,
}

fn permission_denied(denied: meridian_auth::PermissionDenied) -> Status {
    Status::permission_denied(denied.to_string())
}

/// A request's user id, checked against the token's (an empty one becomes the token's).
fn authorize_user(
    authorized: Option<&Authorized>,
    field: &str,
    user_id: &mut String,
) -> Result<(), Status> {
    let Some(authorized) = authorized else {
        return Ok(());
    };
    if user_id.is_empty() {
        user_id.clone_from(&authorized.user);
        return Ok(());
    }
    authorized
        .check_user(field, user_id)
        .map_err(permission_denied)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A request field the conversion refused; the message names the field.
fn invalid(error: WireError) -> Status {
    Status::invalid_argument(error.to_string())
}

fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "committed",
        Code::InvalidArgument => "invalid_argument",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::Unauthenticated => "unauthenticated",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::ResourceExhausted => "resource_exhausted",
        Code::Unavailable => "unavailable",
        _ => "other",
    }
}

/// UNAVAILABLE for a call whose term ended under it: the process shuts down, or this replica
/// stopped being the active one. Either way the outcome of a submission is unknown and a retry
/// with the same command id (on the active replica) learns it.
fn term_ended(core: &Core) -> Status {
    match core.config.replication.as_ref() {
        Some(replication) if core.is_demoted() => Status::unavailable(format!(
            "this replica ({}) stopped being the active one; the outcome is unknown, retry with the same command id on the active replica",
            replication.replica_id
        )),
        _ => Status::unavailable(
            "the participant is shutting down; the outcome is unknown, retry with the same command id",
        ),
    }
}

/// UNAVAILABLE for a call that reaches a replica stepping down: it was not accepted, so the
/// client simply goes to the other replica (which takes over once the drain is done).
fn stepping_down(core: &Core) -> Status {
    let replica = core
        .config
        .replication
        .as_ref()
        .map_or("unreplicated", |r| r.replica_id.as_str());
    Status::unavailable(stepping_down_message(replica, None))
}

fn status_of(code: StatusCode, message: String) -> Status {
    Status::new(Code::from_i32(code.as_i32()), message)
}

/// ALREADY_EXISTS carrying the original outcome in the message and in metadata.
fn already_exists(
    change: &ChangeId,
    transaction_id: &TransactionId,
    offset: LedgerOffset,
) -> Status {
    let mut status = Status::already_exists(format!(
        "command {} of user {} acting as {} was already committed as transaction {} at offset {}",
        change.command_id,
        change.user_id,
        join(&change.act_as),
        transaction_id,
        offset
    ));
    if let Ok(value) = MetadataValue::try_from(transaction_id.as_str()) {
        status
            .metadata_mut()
            .insert("meridian-transaction-id", value);
    }
    if let Ok(value) = MetadataValue::try_from(offset.0.to_string()) {
        status.metadata_mut().insert("meridian-offset", value);
    }
    status
}

fn join(parties: &BTreeSet<PartyId>) -> String {
    parties
        .iter()
        .map(PartyId::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

fn submit_limits(config: &ParticipantConfig) -> SubmitLimits {
    SubmitLimits {
        max_commands: config.limits.max_commands,
        max_payload_bytes: config.limits.max_payload_bytes,
        default_dedup_period_s: config.dedup_period_s,
        max_dedup_period_s: config.max_dedup_period_s,
    }
}

fn committed(record: &TransactionRecord) -> CommittedTransaction<'_> {
    CommittedTransaction {
        offset: record.offset,
        transaction_id: &record.transaction_id,
        record_time: record.request_id,
        command_id: record.command_id.as_ref(),
        informees: &record.informees,
        transaction: &record.transaction,
    }
}

fn completion_message(record: &CompletionRecord) -> v1::Completion {
    v1::Completion {
        command_id: record.command_id.to_string(),
        status_code: record.status_code,
        message: record.message.clone(),
        transaction_id: record
            .transaction_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        offset: record.offset.0,
    }
}

/// The answer to this call's own completion: the transaction as the submitters see it, or the
/// rejection.
fn own_completion(
    change: &ChangeId,
    completion: Completion,
) -> Result<v1::SubmitAndWaitResponse, Status> {
    match completion.outcome {
        Outcome::Committed {
            transaction_id,
            offset,
        } => {
            let transaction = completion.transaction.and_then(|transaction| {
                let informees = transaction.informees();
                let view = CommittedTransaction {
                    offset,
                    transaction_id: &transaction_id,
                    record_time: completion.record_time,
                    command_id: Some(&change.command_id),
                    informees: &informees,
                    transaction: &transaction,
                };
                view.submitter_view_to_wire(&change.act_as)
            });
            Ok(v1::SubmitAndWaitResponse {
                transaction_id: transaction_id.to_string(),
                offset: offset.0,
                transaction,
            })
        }
        Outcome::Rejected { code, message } => Err(status_of(code, message)),
    }
}

/// The answer to a call whose change an earlier submission carried: its outcome.
fn earlier_completion(change: &ChangeId, completion: Completion) -> Status {
    match completion.outcome {
        Outcome::Committed {
            transaction_id,
            offset,
        } => already_exists(change, &transaction_id, offset),
        Outcome::Rejected { code, message } => status_of(
            code,
            format!("a concurrent submission of the same command was rejected: {message}"),
        ),
    }
}

/// OUT_OF_RANGE for a stream that would begin past the ledger end.
/// One page of a stream: each row's offset, with its message unless the subscriber sees
/// nothing of it.
type Page<T> = Vec<(LedgerOffset, Option<T>)>;

/// Streams the rows `read_page` finds in the store after `begin`, page by page, then follows
/// the ledger end until the client goes away or the term ends. `rows` names them in a database
/// error. A `begin` beyond the ledger end is refused: there is nothing to resume from.
fn stream_after<T, F, Fut>(
    core: Arc<Core>,
    begin: LedgerOffset,
    rows: &'static str,
    mut read_page: F,
) -> Result<BoxStream<T>, Status>
where
    T: Send + 'static,
    F: FnMut(Arc<dyn ParticipantStore>, LedgerOffset) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Page<T>, StoreError>> + Send,
{
    let end = *core.ledger_end.borrow();
    if begin > end {
        return Err(Status::out_of_range(format!(
            "begin_offset {begin} is beyond the ledger end {end}"
        )));
    }
    let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        let mut cursor = begin;
        let mut end = core.ledger_end.subscribe();
        loop {
            // Read before the page: everything up to it is written, so after a short page the
            // cursor may skip ahead to it (past other users' completions, or rejections that
            // have no transaction) rather than read the same empty page again.
            let end_before = *end.borrow_and_update();
            let page = match read_page(core.store.clone(), cursor).await {
                Ok(page) => page,
                Err(error) => {
                    let status = Status::unavailable(format!("reading {rows}: {error}"));
                    let _ = sender.send(Err(status)).await;
                    return;
                }
            };
            let full = page.len() == PAGE_ROWS as usize;
            for (offset, message) in page {
                cursor = offset;
                let Some(message) = message else { continue };
                if sender.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            if full {
                continue;
            }
            cursor = cursor.max(end_before);
            if !wait_past(&core, &mut end, cursor, &sender).await {
                return;
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(receiver)))
}

impl LedgerApi {
    /// The caller's grants: `None` when the API is open, UNAUTHENTICATED when the token is
    /// missing or does not verify. Never logs or echoes the token.
    fn authorize<T>(&self, request: &Request<T>) -> Result<Option<Arc<Authorized>>, Status> {
        let Some(verifier) = &self.auth else {
            return Ok(None);
        };
        let header = match request.metadata().get("authorization") {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| {
                Status::unauthenticated(meridian_auth::Unauthenticated::NotBearer.to_string())
            })?),
        };
        verifier
            .verify_header(header, meridian_auth::now_s())
            .map(Some)
            .map_err(|refusal| Status::unauthenticated(refusal.to_string()))
    }

    fn core(&self) -> Result<Arc<Core>, Status> {
        if let Some(refusal) = self.serving.passive_refusal() {
            return Err(Status::unavailable(refusal));
        }
        let reason = || {
            self.health
                .readiness()
                .reason()
                .unwrap_or("starting")
                .to_owned()
        };
        let core = self
            .serving
            .core()
            .ok_or_else(|| Status::unavailable(format!("participant not ready: {}", reason())))?;
        // Before readiness, which turns false a moment later (and says less).
        if core.submissions.is_closed() {
            return Err(stepping_down(&core));
        }
        if !self.health.is_ready() {
            return Err(Status::unavailable(format!(
                "participant not ready: {}",
                reason()
            )));
        }
        Ok(core)
    }

    /// Maps an interpretation failure; an unknown contract is looked up to tell archived
    /// (FAILED_PRECONDITION) from never seen or invisible (NOT_FOUND).
    async fn submit_error(core: &Core, error: SubmitError) -> Status {
        match error {
            SubmitError::UnknownParty(_) => Status::not_found(error.to_string()),
            SubmitError::NotHosted { .. } | SubmitError::Unauthorized(_) => {
                Status::permission_denied(error.to_string())
            }
            SubmitError::InvalidCommand(message) => Status::invalid_argument(message),
            SubmitError::UnknownMediator(_) => Status::unavailable(error.to_string()),
            SubmitError::UnknownContract(id) => match core.store.contract(&id).await {
                Ok(Some(StoredContract {
                    archived_offset: Some(offset),
                    ..
                })) => Status::failed_precondition(format!(
                    "contract {id} is not active: it was archived at offset {offset}"
                )),
                Ok(_) => Status::not_found(format!(
                    "contract {id} is unknown, or not visible to the acting parties"
                )),
                Err(store_error) => Status::unavailable(format!(
                    "contract {id} is not active; looking it up failed: {store_error}"
                )),
            },
        }
    }

    async fn submit(
        &self,
        request: v1::SubmitAndWaitRequest,
    ) -> Result<v1::SubmitAndWaitResponse, Status> {
        let core = self.core()?;
        // Admitted calls are answered before a step-down releases the lease; once it began,
        // the gate refuses (the check in `core` can race with its start, this cannot).
        let Some(_admitted) = core.submissions.enter() else {
            return Err(stepping_down(&core));
        };
        let command =
            submit_and_wait_from_wire(request, &submit_limits(&core.config)).map_err(invalid)?;
        let Ok(_permit) = core.in_flight.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "{} submissions are already awaiting their outcome; retry later",
                core.config.limits.max_in_flight
            )));
        };
        let change = command.change.clone();
        match core.submit(command).await {
            Ok(SubmitAnswer::Completed(completion)) => own_completion(&change, *completion),
            Ok(SubmitAnswer::CompletedEarlier(completion)) => {
                Err(earlier_completion(&change, *completion))
            }
            Ok(SubmitAnswer::Duplicate {
                transaction_id,
                offset,
            }) => Err(already_exists(&change, &transaction_id, offset)),
            Ok(SubmitAnswer::Refused(error)) => Err(Self::submit_error(&core, error).await),
            Err(SubmitFailure::TermEnded) => Err(term_ended(&core)),
            Err(unknown) => Err(Status::deadline_exceeded(unknown.to_string())),
        }
    }

    async fn allocate(&self, party: PartyId) -> Result<(), Status> {
        let core = self.core()?;
        let participant = core.participant.clone();
        let hosted = |core: &Core| {
            core.engine()
                .topology()
                .latest()
                .permission(&party, &participant)
                == Some(Permission::Submission)
        };
        if hosted(&core) {
            return Ok(());
        }
        // Signed with this participant's member key: the manager checks who asks against the
        // topology and lets a participant host only a new party or one it hosts already.
        let hosting = HostingRequest {
            party: party.clone(),
            participant: participant.clone(),
            permission: Permission::Submission,
            requested_by: participant.clone(),
            requested_at: Timestamp::now(),
        };
        let signature = hosting.sign(&core.key);
        allocate_at_topology_manager(
            core.config.topology_endpoints.as_slice(),
            v1::TopologyAllocatePartyRequest {
                party: party.to_string(),
                participant: participant.to_string(),
                permission: Permission::Submission.as_str().into(),
                requested_by: participant.to_string(),
                requested_at_us: hosting.requested_at.as_micros(),
                signature: signature.to_bytes().to_vec(),
            },
        )
        .await?;

        let started = Instant::now();
        let mut fetched = false;
        let mut version = core.topology_version.subscribe();
        while !hosted(&core) {
            let elapsed = started.elapsed();
            if elapsed >= ALLOCATE_WAIT {
                return Err(Status::deadline_exceeded(format!(
                    "party {party} was allocated but has not reached this participant's topology within {} s; it will appear shortly",
                    ALLOCATE_WAIT.as_secs()
                )));
            }
            if !fetched && elapsed >= ALLOCATE_FETCH_AFTER {
                fetched = true;
                match meridian_client::topology::fetch_topology(
                    core.config.topology_endpoints.as_slice(),
                )
                .await
                {
                    Ok(entries) => {
                        let _ = core.commands.send(WriterCommand::Topology(entries)).await;
                    }
                    Err(error) => tracing::warn!(%error, "fetching the topology failed"),
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), version.changed()).await;
        }
        Ok(())
    }
}
#[tonic::async_trait]
impl LedgerService for LedgerApi {
    async fn allocate_party(
        &self,
        request: Request<v1::AllocatePartyRequest>,
    ) -> Result<Response<v1::AllocatePartyResponse>, Status> {
        if let Some(authorized) = self.authorize(&request)? {
            authorized.check_admin().map_err(permission_denied)?;
        }
        let party = party_id("party", request.into_inner().party).map_err(invalid)?;
        self.allocate(party.clone()).await?;
        Ok(Response::new(v1::AllocatePartyResponse {
            party: party.to_string(),
        }))
    }

    async fn list_parties(
        &self,
        request: Request<v1::ListPartiesRequest>,
    ) -> Result<Response<v1::ListPartiesResponse>, Status> {
        self.authorize(&request)?;
        let core = self.core()?;
        let engine = core.engine();
        let parties = engine
            .topology()
            .latest()
            .parties()
            .map(|(party, hosts)| v1::PartyDetails {
                party: party.to_string(),
                hosting: hosts
                    .iter()
                    .map(|(p, permission)| (p.to_string(), permission_name(*permission).into()))
                    .collect(),
                local: hosts.contains_key(&core.participant),
            })
            .collect();
        Ok(Response::new(v1::ListPartiesResponse { parties }))
    }

    async fn submit_and_wait(
        &self,
        request: Request<v1::SubmitAndWaitRequest>,
    ) -> Result<Response<v1::SubmitAndWaitResponse>, Status> {
        let started = Instant::now();
        let result = match self.authorize(&request) {
            Ok(authorized) => {
                let mut request = request.into_inner();
                match authorize_submission(authorized.as_deref(), &mut request) {
                    Ok(()) => self.submit(request).await,
                    Err(status) => Err(status),
                }
            }
            Err(status) => Err(status),
        };
        if let Some(core) = self.serving.core() {
            match &result {
                Ok(_) => {
                    core.metrics.count("committed");
                    core.metrics
                        .commit_latency_seconds
                        .observe(started.elapsed().as_secs_f64());
                }
                Err(status) => core.metrics.count(code_label(status.code())),
            }
        }
        result.map(Response::new)
    }

    type GetTransactionsStream = BoxStream<v1::Transaction>;

    async fn get_transactions(
        &self,
        request: Request<v1::GetTransactionsRequest>,
    ) -> Result<Response<Self::GetTransactionsStream>, Status> {
        if let Some(authorized) = self.authorize(&request)? {
            authorized
                .check_read_as(request.get_ref().parties.iter().map(String::as_str))
                .map_err(permission_denied)?;
        }
        let core = self.core()?;
        let query = transactions_query_from_wire(request.into_inner()).map_err(invalid)?;
        let parties = Arc::new(query.parties);
        let stream = stream_after(core, query.begin, "transactions", move |store, cursor| {
            let parties = parties.clone();
            async move {
                let page = store.transactions_after(cursor, PAGE_ROWS).await?;
                Ok(page
                    .iter()
                    .map(|record| (record.offset, committed(record).flat_to_wire(&parties)))
                    .collect())
            }
        })?;
        Ok(Response::new(stream))
    }

    async fn get_active_contracts(
        &self,
        request: Request<v1::GetActiveContractsRequest>,
    ) -> Result<Response<v1::GetActiveContractsResponse>, Status> {
        if let Some(authorized) = self.authorize(&request)? {
            authorized
                .check_read_as(request.get_ref().parties.iter().map(String::as_str))
                .map_err(permission_denied)?;
        }
        let core = self.core()?;
        let parties =
            parties_from_wire("parties", request.into_inner().parties).map_err(invalid)?;
        let (offset, contracts) = core
            .store
            .active_contracts()
            .await
            .map_err(|e| Status::unavailable(format!("reading active contracts: {e}")))?;
        Ok(Response::new(v1::GetActiveContractsResponse {
            offset: offset.0,
            contracts: contracts
                .iter()
                .filter(|c| visible(&c.contract.stakeholders(), &parties))
                .map(|c| created_event_to_wire(&c.contract))
                .collect(),
        }))
    }

    type CompletionStreamStream = BoxStream<v1::Completion>;

    async fn completion_stream(
        &self,
        request: Request<v1::CompletionStreamRequest>,
    ) -> Result<Response<Self::CompletionStreamStream>, Status> {
        let authorized = self.authorize(&request)?;
        let mut request = request.into_inner();
        authorize_user(authorized.as_deref(), "user_id", &mut request.user_id)?;
        let core = self.core()?;
        let query = completions_query_from_wire(request).map_err(invalid)?;
        let user = Arc::new(query.user_id);
        let stream = stream_after(core, query.begin, "completions", move |store, cursor| {
            let user = user.clone();
            async move {
                let page = store.completions_after(&user, cursor, PAGE_ROWS).await?;
                Ok(page
                    .iter()
                    .map(|record| (record.offset, Some(completion_message(record))))
                    .collect())
            }
        })?;
        Ok(Response::new(stream))
    }
}

/// A submission within the token's claims: its user (filled in when empty) and every acting
/// party.
fn authorize_submission(
    authorized: Option<&Authorized>,
    request: &mut v1::SubmitAndWaitRequest,
) -> Result<(), Status> {
    let Some(authorized) = authorized else {
        return Ok(());
    };
    authorize_user(Some(authorized), "user_id", &mut request.user_id)?;
    authorized
        .check_act_as(request.act_as.iter().map(String::as_str))
        .map_err(permission_denied)
}

/// Waits until the ledger end passes `cursor`. False when the stream should end (client gone,
/// or the term ended: then the client is told to resume elsewhere).
async fn wait_past<T>(
    core: &Core,
    end: &mut tokio::sync::watch::Receiver<LedgerOffset>,
    cursor: LedgerOffset,
    sender: &mpsc::Sender<Result<T, Status>>,
) -> bool {
    loop {
        if *end.borrow_and_update() > cursor {
            return true;
        }
        tokio::select! {
            _ = core.shutdown.cancelled() => {
                let status = term_ended(core);
                let _ = sender
                    .send(Err(Status::unavailable(format!(
                        "{}; resume the stream after offset {cursor}",
                        status.message()
                    ))))
                    .await;
                return false;
            }
            _ = sender.closed() => return false,
            changed = end.changed() => if changed.is_err() { return false },
        }
    }
}

pub(crate) fn permission_name(permission: Permission) -> &'static str {
    match permission {
        Permission::Submission => "submission",
        Permission::Confirmation => "confirmation",
        Permission::Observation => "observation",
    }
}

/// Asks the topology manager to allocate a party, trying its replicas in turn: only the active
/// one accepts changes, the passive ones answer UNAVAILABLE (as does one that is down). Any
/// other answer is the manager's decision and goes back to the client with its code, at once:
/// PERMISSION_DENIED (the party is another participant's) is not retried.
async fn allocate_at_topology_manager(
    endpoints: &[String],
    request: v1::TopologyAllocatePartyRequest,
) -> Result<(), Status> {
    let mut last = Status::unavailable("no topology manager endpoint is configured");
    for endpoint in endpoints {
        // https:// endpoints use the node's `[tls]` client settings (the process default).
        let endpoint_tls =
            match meridian_client::tls::endpoint(endpoint, None, "topology manager endpoint") {
                Ok(endpoint_tls) => endpoint_tls,
                Err(error) => {
                    last = Status::unavailable(format!("topology manager at {endpoint}: {error}"));
                    continue;
                }
            };
        let connected = tokio::time::timeout(TOPOLOGY_CALL_TIMEOUT, endpoint_tls.connect()).await;
        let mut client = match connected {
            Ok(Ok(channel)) => TopologyAdminServiceClient::new(channel),
            Ok(Err(error)) => {
                last = Status::unavailable(format!("topology manager at {endpoint}: {error}"));
                continue;
            }
            Err(_) => {
                last = Status::unavailable(format!(
                    "topology manager at {endpoint}: connect timed out"
                ));
                continue;
            }
        };
        let answer = tokio::time::timeout(
            TOPOLOGY_CALL_TIMEOUT,
            client.allocate_party(request.clone()),
        )
        .await;
        match answer {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                last = Status::unavailable(format!(
                    "topology manager at {endpoint}: {}",
                    status.message()
                ));
            }
            Ok(Err(status)) => {
                return Err(Status::new(
                    status.code(),
                    format!("topology manager: {}", status.message()),
                ))
            }
            Err(_) => {
                last = Status::unavailable(format!(
                    "the topology manager at {endpoint} did not answer in time"
                ));
            }
        }
    }
    Err(last)
}
