//! The Ledger API (`meridian.v1.LedgerService`): wire validation, the submission path
//! (deduplication, interpretation, the one sequencer send, waiting for the outcome), and the
//! read streams. Every call and error is documented in `docs/ledger-api.md`; keep the two in
//! step.
//!
//! Submission path, in order: validate fields (INVALID_ARGUMENT naming the field) → check
//! deduplication (ALREADY_EXISTS, or wait for the same change in flight) → interpret against
//! the active contracts (errors mapped to codes) → record the submission as in flight through
//! the writer (persisted) → send → wait (bounded) for the completion.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use meridian_client::ClientError;
use meridian_core::ledger::{Action, Command, Permission};
use meridian_core::protocol::ChangeId;
use meridian_core::{
    CommandId, ContractId, LedgerOffset, MessageId, PartyId, TemplateId, Timestamp, UserId,
};
use meridian_node::Health;
use meridian_proto::v1;
use meridian_proto::v1::ledger_service_server::LedgerService;
use meridian_proto::v1::topology_admin_service_client::TopologyAdminServiceClient;
use meridian_store::{CompletionRecord, StoredContract, TransactionRecord};
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};

use crate::engine::{
    Begin, Completion, DedupStatus, LocalSubmission, Outcome, StatusCode, SubmitError,
};
use crate::replication::{stepping_down_message, Serving};
use crate::runtime::{Core, WriterCommand};

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
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn invalid(field: &str, error: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {error}"))
}

fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "committed",
        Code::InvalidArgument => "invalid_argument",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
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
    transaction_id: &meridian_core::TransactionId,
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

fn parse_parties(field: &str, raw: Vec<String>) -> Result<BTreeSet<PartyId>, Status> {
    if raw.is_empty() {
        return Err(invalid(field, "at least one party is required"));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, p)| PartyId::new(p).map_err(|e| invalid(&format!("{field}[{i}]"), e)))
        .collect()
}

fn parse_json(field: &str, text: &str, limit_bytes: usize) -> Result<serde_json::Value, Status> {
    if text.len() > limit_bytes {
        return Err(invalid(
            field,
            format!("{} bytes exceed the limit of {limit_bytes}", text.len()),
        ));
    }
    serde_json::from_str(text).map_err(|e| invalid(field, format!("not valid JSON: {e}")))
}

fn parse_command(
    index: usize,
    command: v1::Command,
    limit_bytes: usize,
) -> Result<Command, Status> {
    let field = format!("commands[{index}]");
    match command.command {
        Some(v1::command::Command::Create(create)) => Ok(Command::Create {
            template: TemplateId::new(create.template)
                .map_err(|e| invalid(&format!("{field}.create.template"), e))?,
            payload: parse_json(
                &format!("{field}.create.payload_json"),
                &create.payload_json,
                limit_bytes,
            )?,
        }),
        Some(v1::command::Command::Exercise(exercise)) => {
            if exercise.choice.is_empty() {
                return Err(invalid(
                    &format!("{field}.exercise.choice"),
                    "must not be empty",
                ));
            }
            let argument = if exercise.argument_json.trim().is_empty() {
                serde_json::Value::Object(Default::default())
            } else {
                parse_json(
                    &format!("{field}.exercise.argument_json"),
                    &exercise.argument_json,
                    limit_bytes,
                )?
            };
            Ok(Command::Exercise {
                contract_id: ContractId::new(exercise.contract_id)
                    .map_err(|e| invalid(&format!("{field}.exercise.contract_id"), e))?,
                choice: exercise.choice,
                argument,
            })
        }
        None => Err(invalid(&field, "neither create nor exercise is set")),
    }
}

fn created_event(contract: &meridian_core::ledger::Contract) -> v1::CreatedEvent {
    v1::CreatedEvent {
        contract_id: contract.id.to_string(),
        template: contract.template.to_string(),
        payload_json: contract.payload.to_string(),
        signatories: contract
            .signatories
            .iter()
            .map(ToString::to_string)
            .collect(),
        observers: contract.observers.iter().map(ToString::to_string).collect(),
    }
}

fn visible(stakeholders: &BTreeSet<PartyId>, parties: &BTreeSet<PartyId>) -> bool {
    stakeholders.iter().any(|p| parties.contains(p))
}

/// The transaction as its submitters see it in the `SubmitAndWait` answer: as in Daml, the
/// informees of an exercise witness its whole subtree (a transfer's actor sees the IOU it
/// creates for the new owner), so applications can continue with the new contract ids.
fn submitter_view(
    record: &TransactionRecord,
    parties: &BTreeSet<PartyId>,
) -> Option<v1::Transaction> {
    fn walk(
        action: &Action,
        parties: &BTreeSet<PartyId>,
        inherited: bool,
        out: &mut Vec<v1::Event>,
    ) {
        match action {
            Action::Create { contract } => {
                if inherited || visible(&contract.stakeholders(), parties) {
                    out.push(v1::Event {
                        event: Some(v1::event::Event::Created(created_event(contract))),
                    });
                }
            }
            Action::Exercise {
                contract_id,
                template,
                consuming,
                stakeholders,
                actors,
                children,
                ..
            } => {
                let witnessed =
                    inherited || visible(stakeholders, parties) || visible(actors, parties);
                if witnessed && *consuming {
                    out.push(v1::Event {
                        event: Some(v1::event::Event::Archived(v1::ArchivedEvent {
                            contract_id: contract_id.to_string(),
                            template: template.to_string(),
                        })),
                    });
                }
                for child in children {
                    walk(child, parties, witnessed, out);
                }
            }
            Action::Fetch { .. } => {}
        }
    }
    let mut events = Vec::new();
    for root in &record.transaction.roots {
        walk(root, parties, false, &mut events);
    }
    let mut view = transaction_view(record, parties)?;
    view.events = events;
    Some(view)
}

/// The transaction as `parties` may see it: creates and archives of contracts they are
/// stakeholders of. `None` when they see nothing of it.
fn transaction_view(
    record: &TransactionRecord,
    parties: &BTreeSet<PartyId>,
) -> Option<v1::Transaction> {
    let mut events = Vec::new();
    for action in record.transaction.actions() {
        match action {
            Action::Create { contract } if visible(&contract.stakeholders(), parties) => {
                events.push(v1::Event {
                    event: Some(v1::event::Event::Created(created_event(contract))),
                });
            }
            Action::Exercise {
                contract_id,
                template,
                consuming: true,
                stakeholders,
                ..
            } if visible(stakeholders, parties) => events.push(v1::Event {
                event: Some(v1::event::Event::Archived(v1::ArchivedEvent {
                    contract_id: contract_id.to_string(),
                    template: template.to_string(),
                })),
            }),
            _ => {}
        }
    }
    if events.is_empty() && !record.informees.iter().any(|p| parties.contains(p)) {
        return None;
    }
    Some(v1::Transaction {
        transaction_id: record.transaction_id.to_string(),
        offset: record.offset.0,
        record_time_us: record.request_id.as_micros(),
        command_id: record
            .command_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        events,
        tree_json: serde_json::to_string(&record.transaction).unwrap_or_default(),
    })
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

impl LedgerApi {
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

    /// The ALREADY_EXISTS answer to a command that committed at `offset`, given once that
    /// commit is persisted and published. The engine learns of a commit before the writer has
    /// persisted it; answering then would name an offset beyond the ledger end, which
    /// GetTransactions refuses, so the caller could not read the transaction it was told of.
    async fn duplicate(
        core: &Core,
        change: &ChangeId,
        transaction_id: &meridian_core::TransactionId,
        offset: LedgerOffset,
    ) -> Status {
        let mut published = core.ledger_end.subscribe();
        let timeout = core.config.submit_timeout();
        tokio::select! {
            _ = core.shutdown.cancelled() => term_ended(core),
            waited = tokio::time::timeout(timeout, published.wait_for(|end| *end >= offset)) => match waited {
                Ok(Ok(_)) => already_exists(change, transaction_id, offset),
                Ok(Err(_)) => term_ended(core),
                Err(_) => Status::deadline_exceeded(format!(
                    "command {} was committed at offset {offset}, which is not yet written after {} ms; retry with the same command id",
                    change.command_id,
                    timeout.as_millis()
                )),
            },
        }
    }

    /// Waits for a completion and turns it into the answer. `own` is our submission id: a
    /// completion of another submission of the same change answers a duplicate.
    async fn await_completion(
        core: &Core,
        change: &ChangeId,
        waiter: oneshot::Receiver<Completion>,
        own: Option<&str>,
    ) -> Result<v1::SubmitAndWaitResponse, Status> {
        let timeout = core.config.submit_timeout();
        let waited = tokio::select! {
            // The term's waiters are dropped when it ends; this also covers a waiter that was
            // registered just after that.
            _ = core.shutdown.cancelled() => return Err(term_ended(core)),
            waited = tokio::time::timeout(timeout, waiter) => waited,
        };
        let completion = match waited {
            Ok(Ok(completion)) => completion,
            Ok(Err(_)) => return Err(term_ended(core)),
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no outcome within {} ms; the outcome is unknown, retry with the same command id to learn it",
                    timeout.as_millis()
                )))
            }
        };
        let is_own = own.is_some_and(|id| id == completion.submission.submission_id);
        match completion.outcome {
            Outcome::Committed {
                transaction_id,
                offset,
            } if is_own => Ok(v1::SubmitAndWaitResponse {
                transaction_id: transaction_id.to_string(),
                offset: offset.0,
                transaction: completion.transaction.and_then(|transaction| {
                    submitter_view(
                        &TransactionRecord {
                            offset,
                            transaction_id: transaction_id.clone(),
                            request_id: completion.record_time,
                            user_id: Some(change.user_id.clone()),
                            command_id: Some(change.command_id.clone()),
                            informees: transaction.informees(),
                            transaction: *transaction,
                        },
                        &change.act_as,
                    )
                }),
            }),
            Outcome::Committed {
                transaction_id,
                offset,
            } => Err(already_exists(change, &transaction_id, offset)),
            Outcome::Rejected { code, message } if is_own => Err(status_of(code, message)),
            Outcome::Rejected { code, message } => Err(status_of(
                code,
                format!("a concurrent submission of the same command was rejected: {message}"),
            )),
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
        let config = &core.config;
        let user_id = UserId::new(request.user_id).map_err(|e| invalid("user_id", e))?;
        let command_id =
            CommandId::new(request.command_id).map_err(|e| invalid("command_id", e))?;
        let act_as = parse_parties("act_as", request.act_as)?;
        if request.commands.is_empty() {
            return Err(invalid("commands", "at least one command is required"));
        }
        if request.commands.len() > config.limits.max_commands {
            return Err(invalid(
                "commands",
                format!(
                    "{} commands exceed the limit of {}",
                    request.commands.len(),
                    config.limits.max_commands
                ),
            ));
        }
        let commands: Vec<Command> = request
            .commands
            .into_iter()
            .enumerate()
            .map(|(i, c)| parse_command(i, c, config.limits.max_payload_bytes))
            .collect::<Result<_, _>>()?;
        let period_s = request
            .deduplication_period_s
            .unwrap_or(config.dedup_period_s);
        if period_s == 0 || period_s > config.max_dedup_period_s {
            return Err(invalid(
                "deduplication_period_s",
                format!("must be between 1 and {}", config.max_dedup_period_s),
            ));
        }
        let change = ChangeId {
            user_id,
            act_as,
            command_id,
        };
        let change_key = change.key();

        let Ok(_permit) = core.in_flight.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "{} submissions are already awaiting their outcome; retry later",
                config.limits.max_in_flight
            )));
        };

        // Deduplication first: a retry of a committed command must get ALREADY_EXISTS even
        // though its input contracts are archived by now.
        let now = Timestamp::now();
        let mediator = config.mediator_id.clone();
        let mut seed = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut seed);
        let mut nonce = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut nonce);
        let submission_id = MessageId::new(format!("sub-{}", hex::encode(nonce)))
            .map_err(|e| Status::internal(e.to_string()))?;
        let max_sequencing_time = now.saturating_add(config.max_sequencing_delay());
        enum First {
            Prepared(Result<meridian_core::sequencing::Submission, SubmitError>),
            Wait(oneshot::Receiver<Completion>),
            Duplicate(meridian_core::TransactionId, LedgerOffset),
        }
        let first = {
            let engine = core.engine();
            match engine.dedup_status(&change_key, now) {
                Some(DedupStatus::Committed {
                    transaction_id,
                    offset,
                    ..
                }) => First::Duplicate(transaction_id, offset),
                // Registered under the engine lock, so the completion cannot slip in between.
                Some(DedupStatus::InFlight { .. }) => First::Wait(core.wait_for(&change_key)),
                None => First::Prepared(engine.prepare_submission(
                    &change,
                    &commands,
                    seed,
                    &submission_id,
                    &mediator,
                    max_sequencing_time,
                )),
            }
        };
        let submission = match first {
            First::Wait(waiter) => {
                return Self::await_completion(&core, &change, waiter, None).await
            }
            First::Duplicate(transaction_id, offset) => {
                return Err(Self::duplicate(&core, &change, &transaction_id, offset).await)
            }
            First::Prepared(Ok(submission)) => submission,
            First::Prepared(Err(error)) => return Err(Self::submit_error(&core, error).await),
        };

        let (reply, answer) = oneshot::channel();
        let local = LocalSubmission {
            change: change.clone(),
            submission_id: submission_id.to_string(),
            max_sequencing_time,
            dedup_period_us: period_s.saturating_mul(1_000_000),
        };
        core.commands
            .send(WriterCommand::Begin {
                submission: local,
                now,
                reply,
            })
            .await
            .map_err(|_| term_ended(&core))?;
        let (begin, waiter) = answer.await.map_err(|_| term_ended(&core))?;
        let waiter = match (begin, waiter) {
            (
                Begin::Duplicate {
                    transaction_id,
                    offset,
                },
                _,
            ) => return Err(already_exists(&change, &transaction_id, offset)),
            (Begin::InFlight { .. }, Some(waiter)) => {
                return Self::await_completion(&core, &change, waiter, None).await
            }
            (Begin::Started, Some(waiter)) => waiter,
            (_, None) => return Err(Status::internal("no completion waiter was registered")),
        };

        // The in-flight marker is persisted (under this replica's epoch), so the send may go
        // out; but not once the term ended: the new active replica owns the participant then,
        // and learns the marker's fate from the stream or its max sequencing time.
        let sent = tokio::select! {
            _ = core.shutdown.cancelled() => return Err(term_ended(&core)),
            sent = core.client.send(submission) => sent,
        };
        match sent {
            Ok(receipt) => {
                tracing::debug!(%submission_id, ts = %receipt.timestamp, "submission sequenced")
            }
            Err(ClientError::Rejected { code, message }) => {
                // Not a definite "never sequenced": the client retries lost answers with the
                // same message id, so a refusal (say, max sequencing time passed) can answer a
                // retry of an attempt that *was* sequenced. Completing the command now could
                // tell the application ABORTED for a transaction that then commits (see the
                // `abandoned_submission_of_a_multi_hosted_party_commits` simulation). So the
                // stream decides, as for any unknown outcome: the request shows up, or
                // sequencer time passes its max sequencing time and the engine aborts it.
                tracing::warn!(%submission_id, ?code, %message, "the sequencer refused the submission; waiting for the stream to settle its fate");
            }
            Err(error) => {
                // Outcome unknown: the stream tells. Once sequencer time passes the max
                // sequencing time without the request, the engine completes it as ABORTED.
                tracing::warn!(%submission_id, %error, "sending a submission failed; waiting for the sequencer stream to tell its fate");
            }
        }
        Self::await_completion(&core, &change, waiter, Some(submission_id.as_str())).await
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
        allocate_at_topology_manager(
            core.config.topology_endpoints.as_slice(),
            v1::TopologyAllocatePartyRequest {
                party: party.to_string(),
                participant: participant.to_string(),
                permission: "submission".into(),
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
        let party = PartyId::new(request.into_inner().party).map_err(|e| invalid("party", e))?;
        self.allocate(party.clone()).await?;
        Ok(Response::new(v1::AllocatePartyResponse {
            party: party.to_string(),
        }))
    }

    async fn list_parties(
        &self,
        _request: Request<v1::ListPartiesRequest>,
    ) -> Result<Response<v1::ListPartiesResponse>, Status> {
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
        let result = self.submit(request.into_inner()).await;
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
        let core = self.core()?;
        let request = request.into_inner();
        let parties = parse_parties("parties", request.parties)?;
        let end = *core.ledger_end.borrow();
        if request.begin_offset > end.0 {
            return Err(Status::out_of_range(format!(
                "begin_offset {} is beyond the ledger end {}",
                request.begin_offset, end
            )));
        }
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            let mut cursor = LedgerOffset(request.begin_offset);
            let mut end = core.ledger_end.subscribe();
            loop {
                let page = match core.store.transactions_after(cursor, PAGE_ROWS).await {
                    Ok(page) => page,
                    Err(error) => {
                        let _ = sender
                            .send(Err(Status::unavailable(format!(
                                "reading transactions: {error}"
                            ))))
                            .await;
                        return;
                    }
                };
                let full = page.len() == PAGE_ROWS as usize;
                for record in page {
                    cursor = record.offset;
                    if let Some(view) = transaction_view(&record, &parties) {
                        if sender.send(Ok(view)).await.is_err() {
                            return;
                        }
                    }
                }
                if full {
                    continue;
                }
                if !wait_past(&core, &mut end, cursor, &sender).await {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn get_active_contracts(
        &self,
        request: Request<v1::GetActiveContractsRequest>,
    ) -> Result<Response<v1::GetActiveContractsResponse>, Status> {
        let core = self.core()?;
        let parties = parse_parties("parties", request.into_inner().parties)?;
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
                .map(|c| created_event(&c.contract))
                .collect(),
        }))
    }

    type CompletionStreamStream = BoxStream<v1::Completion>;

    async fn completion_stream(
        &self,
        request: Request<v1::CompletionStreamRequest>,
    ) -> Result<Response<Self::CompletionStreamStream>, Status> {
        let core = self.core()?;
        let request = request.into_inner();
        let user = UserId::new(request.user_id).map_err(|e| invalid("user_id", e))?;
        let end = *core.ledger_end.borrow();
        if request.begin_offset > end.0 {
            return Err(Status::out_of_range(format!(
                "begin_offset {} is beyond the ledger end {}",
                request.begin_offset, end
            )));
        }
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            let mut cursor = LedgerOffset(request.begin_offset);
            let mut end = core.ledger_end.subscribe();
            loop {
                // Read before the page: everything up to it is committed, so after a short
                // page the cursor may skip ahead to it (other users' offsets).
                let end_before = *end.borrow_and_update();
                let page = match core.store.completions_after(&user, cursor, PAGE_ROWS).await {
                    Ok(page) => page,
                    Err(error) => {
                        let _ = sender
                            .send(Err(Status::unavailable(format!(
                                "reading completions: {error}"
                            ))))
                            .await;
                        return;
                    }
                };
                let full = page.len() == PAGE_ROWS as usize;
                for record in &page {
                    cursor = record.offset;
                    if sender.send(Ok(completion_message(record))).await.is_err() {
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
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
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
/// one accepts changes, the passive ones answer UNAVAILABLE (as does one that is down).
async fn allocate_at_topology_manager(
    endpoints: &[String],
    request: v1::TopologyAllocatePartyRequest,
) -> Result<(), Status> {
    let mut last = Status::unavailable("no topology manager endpoint is configured");
    for endpoint in endpoints {
        let connected = tokio::time::timeout(
            TOPOLOGY_CALL_TIMEOUT,
            TopologyAdminServiceClient::connect(endpoint.clone()),
        )
        .await;
        let mut client = match connected {
            Ok(Ok(client)) => client,
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
