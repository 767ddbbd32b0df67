//! `LedgerClient`: what applications use to talk to a participant's Ledger API.
//!
//! Its one promise beyond the generated stub is **dedup-safe retries**: a `submit_and_wait`
//! whose outcome is unknown (transport failure, UNAVAILABLE, DEADLINE_EXCEEDED) is retried
//! with the *same* command id, so the participant's command deduplication guarantees at most
//! one transaction. An ALREADY_EXISTS answer to a retry therefore means "your earlier attempt
//! committed": the client fetches that transaction from the replica that answered and returns
//! it as the commit (`AlreadyProcessed` only if it cannot be read), never as a failure.
//! Endpoints are tried in turn, so the same client fails over between participant replicas.
//! An ABORTED answer that proves the submission was not committed and that trying again can
//! change that — its max sequencing time passed unsequenced (typically a submission a crashed
//! replica left in flight), or the mediator timed it out waiting for a participant that could
//! not answer for a while — is resubmitted under the same command id, a bounded number of
//! times.
//!
//! A participant with `[ledger_auth]` wants `authorization: Bearer <JWT>` on every call:
//! [`LedgerClient::with_token`] sends one fixed token, [`LedgerClient::with_token_source`]
//! asks a source for the token before each call (one that mints a fresh token before the
//! current one expires keeps a long run authorized). The token is never logged: `Debug` shows
//! only whether one is set.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use meridian_core::ledger::{Command, Contract};
use meridian_core::{CommandId, ContractId, PartyId, TemplateId, UserId};
use meridian_proto::v1;
use meridian_proto::v1::ledger_service_client::LedgerServiceClient;
use tonic::transport::Channel;
use tonic::Code;

use crate::error::{require_endpoints, Peer};
use crate::tls::ClientTls;
use crate::{Backoff, ClientError, ENDPOINT_COOLDOWN};

/// How often an open connection to a replica is pinged, and how long a ping may go unanswered
/// before the connection counts as dead: together they bound how long a request can hang on
/// a frozen replica (about 0.5 s) before it is retried elsewhere. That must stay below the
/// replicas' lease timeout, or the clients, not the takeover, decide a freeze's recovery
/// time: at 250 + 750 ms they gave up on a frozen replica ~1 s after the freeze, after the
/// passive had taken over. A healthy but busy server answers pings from its connection task
/// within milliseconds, and a ping crosses regions in well under the timeout; a false alarm
/// only costs a dedup-safe retry.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_millis(150);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_millis(350);
/// A frozen replica's kernel still accepts TCP connections, so a reconnect to it (a retry
/// that rotated back to it while the passive was still taking over) hangs in the TLS
/// handshake: with the general 10 s bound, that was the 10 s of a participant freeze's
/// RTO on 2026-12-04. A handshake takes a round trip or two, far below this even across
/// regions.
const LEDGER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often one `submit_and_wait` resubmits a command whose earlier submission was definitely
/// not committed (see [`definitely_not_committed`]). Each such answer takes a max sequencing
/// time or a mediator deadline (10 s each by default) to come, so a few are plenty for a
/// failover or two.
const MAX_RESUBMISSIONS: u32 = 3;

/// A committed submission, as the client learned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub transaction_id: String,
    pub offset: u64,
    /// Contracts the transaction created, as the acting parties see them: the submitter's
    /// view of a fresh commit; for a retry answered ALREADY_EXISTS, the transaction stream's
    /// view, which holds only contracts the acting parties are stakeholders of (a transfer's
    /// new IOU, owned by someone else, is then absent).
    pub created: Vec<Contract>,
    /// How many attempts it took (1 = no retry).
    pub attempts: u32,
}

/// The outcome of [`LedgerClient::submit_and_wait`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    Committed(Committed),
    /// A retry found the command already processed: an earlier attempt's outcome (usually a
    /// commit) stands. The participant's message says which.
    AlreadyProcessed {
        message: String,
        attempts: u32,
    },
}

/// Supplies the bearer token sent with each call (`None`: send none).
pub type TokenSource = Arc<dyn Fn() -> Option<String> + Send + Sync>;

#[derive(Clone)]
pub struct LedgerClient {
    channels: Arc<Vec<(String, Channel)>>,
    current: Arc<AtomicUsize>,
    /// Per endpoint, when a call to it last failed without a server's answer.
    failed_at: Arc<Mutex<Vec<Option<Instant>>>>,
    user_id: UserId,
    backoff: Backoff,
    request_timeout: Duration,
    token: Option<TokenSource>,
}

impl std::fmt::Debug for LedgerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let endpoints: Vec<&str> = self.channels.iter().map(|(e, _)| e.as_str()).collect();
        f.debug_struct("LedgerClient")
            .field("endpoints", &endpoints)
            .field("user_id", &self.user_id)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .finish()
    }
}

impl LedgerClient {
    /// A client for one or more replica endpoints (`http://host:port`). Connections are lazy.
    pub fn new(endpoints: &[String], user_id: UserId) -> Result<Self, ClientError> {
        Self::with_tls(endpoints, user_id, None)
    }

    /// [`Self::new`] with explicit TLS settings for `https://` endpoints instead of the
    /// process default ([`crate::tls::install_default`]).
    pub fn with_tls(
        endpoints: &[String],
        user_id: UserId,
        tls: Option<&ClientTls>,
    ) -> Result<Self, ClientError> {
        require_endpoints(endpoints, "a ledger client needs at least one endpoint")?;
        let channels = endpoints
            .iter()
            .map(|endpoint| {
                let channel = crate::tls::endpoint_within(
                    endpoint,
                    tls,
                    "ledger endpoint",
                    LEDGER_HANDSHAKE_TIMEOUT,
                )?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                // A frozen replica (SIGSTOP, a stuck VM) keeps its TCP connections open
                // and answers nothing: without pings a SubmitAndWait sent to it would wait
                // for the whole request timeout instead of failing over to the new active.
                .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
                .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
                .connect_lazy();
                Ok((endpoint.clone(), channel))
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(Self {
            channels: Arc::new(channels),
            current: Arc::new(AtomicUsize::new(0)),
            failed_at: Arc::new(Mutex::new(vec![None; endpoints.len()])),
            user_id,
            backoff: Backoff::default(),
            request_timeout: Duration::from_secs(40),
            token: None,
        })
    }

    /// Sends `authorization: Bearer <token>` on every call.
    pub fn with_token(self, token: impl Into<String>) -> Self {
        let token: String = token.into();
        self.with_token_source(Arc::new(move || Some(token.clone())))
    }

    /// Asks `source` for the bearer token before every call (and every retry).
    pub fn with_token_source(mut self, source: TokenSource) -> Self {
        self.token = Some(source);
        self
    }

    /// `message` as a request carrying the bearer token, if any. A token that is not a valid
    /// header value is left out: the participant then answers UNAUTHENTICATED.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = self.token.as_ref().and_then(|source| source()) {
            if let Ok(value) = tonic::metadata::MetadataValue::try_from(format!("Bearer {token}")) {
                request.metadata_mut().insert("authorization", value);
            }
        }
        request
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Every endpoint, for errors after retrying across all of them.
    fn endpoints(&self) -> String {
        let endpoints: Vec<&str> = self.channels.iter().map(|(e, _)| e.as_str()).collect();
        endpoints.join(", ")
    }

    fn stub(&self) -> (String, LedgerServiceClient<Channel>) {
        let index = self.current.load(Ordering::Relaxed) % self.channels.len();
        let (endpoint, channel) = &self.channels[index];
        (endpoint.clone(), LedgerServiceClient::new(channel.clone()))
    }

    /// After a failure that may be the endpoint's fault, move on to the next replica
    /// ([`next_endpoint`]); `answered` says a server answered the failed call (a passive
    /// replica's UNAVAILABLE), as opposed to a connection that failed.
    fn rotate(&self, failed_endpoint: &str, answered: bool) {
        if self.channels.len() < 2 {
            return;
        }
        let now = Instant::now();
        let mut failed_at = self
            .failed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !answered {
            if let Some(slot) = self
                .channels
                .iter()
                .position(|(endpoint, _)| endpoint == failed_endpoint)
                .and_then(|i| failed_at.get_mut(i))
            {
                *slot = Some(now);
            }
        }
        let index = self.current.load(Ordering::Relaxed) % self.channels.len();
        if self.channels[index].0 == failed_endpoint {
            let next = next_endpoint(index, &failed_at, now, answered);
            self.current.store(next, Ordering::Relaxed);
        }
    }

    /// Runs `call` against the current endpoint, retrying outcome-unknown failures with
    /// bounded backoff and rotating endpoints.
    async fn with_retries<T, F, Fut>(&self, mut call: F) -> Result<(T, u32), (tonic::Status, u32)>
    where
        F: FnMut(LedgerServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut delays = self.backoff.delays();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (endpoint, stub) = self.stub();
            let result = tokio::time::timeout(self.request_timeout, call(stub))
                .await
                .unwrap_or_else(|_| {
                    Err(tonic::Status::deadline_exceeded("client request timeout"))
                });
            match result {
                Ok(value) => return Ok((value, attempts)),
                Err(status) if retryable(&status) => {
                    self.rotate(&endpoint, answered_by_server(&status));
                    match delays.next() {
                        Some(delay) => tokio::time::sleep(delay).await,
                        None => return Err((status, attempts)),
                    }
                }
                Err(status) => return Err((status, attempts)),
            }
        }
    }

    /// [`Self::with_retries`] for calls where every failure is the caller's error.
    /// Each attempt gets its own copy of `request`: tonic consumes the request it sends.
    async fn call<R, T, F, Fut>(&self, request: &R, mut call: F) -> Result<T, ClientError>
    where
        R: Clone,
        F: FnMut(LedgerServiceClient<Channel>, tonic::Request<R>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.with_retries(|stub| call(stub, self.request(request.clone())))
            .await
            .map(|(value, _)| value)
            .map_err(|(status, attempts)| status_error(&self.endpoints(), status, attempts))
    }

    pub async fn allocate_party(&self, party: &PartyId) -> Result<PartyId, ClientError> {
        let request = v1::AllocatePartyRequest {
            party: party.to_string(),
        };
        let response = self
            .call(&request, |mut stub, request| async move {
                stub.allocate_party(request).await
            })
            .await?;
        PartyId::new(response.into_inner().party)
            .map_err(|e| invalid(format!("allocated party: {e}")))
    }

    /// Submits `commands` as `act_as` and waits for the outcome, retrying with the same
    /// command id whenever the outcome is unknown.
    pub async fn submit_and_wait(
        &self,
        command_id: &CommandId,
        act_as: &BTreeSet<PartyId>,
        commands: &[Command],
    ) -> Result<SubmitOutcome, ClientError> {
        let request = v1::SubmitAndWaitRequest {
            user_id: self.user_id.to_string(),
            command_id: command_id.to_string(),
            act_as: act_as.iter().map(ToString::to_string).collect(),
            commands: commands.iter().map(command_to_wire).collect(),
            deduplication_period_s: None,
        };
        let mut resubmissions = 0;
        let mut earlier_attempts = 0;
        let result = loop {
            let result = self
                .with_retries(|mut stub| {
                    let request = self.request(request.clone());
                    async move { stub.submit_and_wait(request).await }
                })
                .await
                .map_err(|(status, attempts)| (status, earlier_attempts + attempts))
                .map(|(response, attempts)| (response, earlier_attempts + attempts));
            match result {
                Err((status, attempts))
                    if definitely_not_committed(&status) && resubmissions < MAX_RESUBMISSIONS =>
                {
                    resubmissions += 1;
                    earlier_attempts = attempts;
                    tracing::debug!(%command_id, attempts, reason = status.message(), "the command was definitely not committed; resubmitting");
                }
                other => break other,
            }
        };
        match result {
            Ok((response, attempts)) => {
                let response = response.into_inner();
                let created = response
                    .transaction
                    .map(|t| created_contracts(&t.events))
                    .transpose()?
                    .unwrap_or_default();
                Ok(SubmitOutcome::Committed(Committed {
                    transaction_id: response.transaction_id,
                    offset: response.offset,
                    created,
                    attempts,
                }))
            }
            Err((status, attempts)) if status.code() == Code::AlreadyExists && attempts > 1 => {
                // A retry found its earlier attempt committed. Fetch that transaction, so the
                // caller gets the answer the first attempt would have had — with the created
                // contracts — instead of having to look them up on a possibly lagging view.
                match self.original_commit(&status, act_as, attempts).await {
                    Some(committed) => Ok(SubmitOutcome::Committed(committed)),
                    None => Ok(SubmitOutcome::AlreadyProcessed {
                        message: status.message().to_owned(),
                        attempts,
                    }),
                }
            }
            Err((status, attempts)) => Err(status_error(&self.endpoints(), status, attempts)),
        }
    }

    /// The transaction an ALREADY_EXISTS answer names (metadata `meridian-transaction-id` and
    /// `meridian-offset`), read from the replica that answered, which has committed it.
    async fn original_commit(
        &self,
        status: &tonic::Status,
        act_as: &BTreeSet<PartyId>,
        attempts: u32,
    ) -> Option<Committed> {
        let metadata = status.metadata();
        let transaction_id = metadata.get("meridian-transaction-id")?.to_str().ok()?;
        let offset: u64 = metadata
            .get("meridian-offset")?
            .to_str()
            .ok()?
            .parse()
            .ok()?;
        let transactions = match self
            .transactions(act_as, offset.checked_sub(1)?, offset)
            .await
        {
            Ok(transactions) => transactions,
            Err(error) => {
                tracing::debug!(transaction_id, offset, %error, "cannot read the original transaction of a duplicate");
                return None;
            }
        };
        let Some(transaction) = transactions
            .into_iter()
            .find(|t| t.transaction_id == transaction_id)
        else {
            tracing::debug!(
                transaction_id,
                offset,
                "the original transaction of a duplicate is not in the stream"
            );
            return None;
        };
        Some(Committed {
            transaction_id: transaction.transaction_id.clone(),
            offset,
            created: created_contracts(&transaction.events).ok()?,
            attempts,
        })
    }

    /// Active contracts visible to `parties`, and the offset they are valid at.
    pub async fn active_contracts(
        &self,
        parties: &BTreeSet<PartyId>,
    ) -> Result<(u64, Vec<Contract>), ClientError> {
        let request = v1::GetActiveContractsRequest {
            parties: parties.iter().map(ToString::to_string).collect(),
        };
        let response = self
            .call(&request, |mut stub, request| async move {
                stub.get_active_contracts(request).await
            })
            .await?;
        let response = response.into_inner();
        let contracts = response
            .contracts
            .iter()
            .map(contract_from_wire)
            .collect::<Result<_, _>>()?;
        Ok((response.offset, contracts))
    }

    /// Every transaction visible to `parties` after `begin_offset`, up to `up_to_offset`
    /// (typically the ledger end at the time of the call). Offsets also count entries the
    /// parties do not see (rejections, others' transactions), so the stream may never reach
    /// `up_to_offset`: it is read until it does or until it stays idle for
    /// [`STREAM_IDLE_END`], whichever comes first.
    pub async fn transactions(
        &self,
        parties: &BTreeSet<PartyId>,
        begin_offset: u64,
        up_to_offset: u64,
    ) -> Result<Vec<v1::Transaction>, ClientError> {
        use futures::StreamExt;
        let mut out = Vec::new();
        if up_to_offset <= begin_offset {
            return Ok(out);
        }
        let request = v1::GetTransactionsRequest {
            begin_offset,
            parties: parties.iter().map(ToString::to_string).collect(),
        };
        // Opening goes through the retries, so a passive or dead replica is skipped.
        let response = self
            .call(&request, |mut stub, request| async move {
                stub.get_transactions(request).await
            })
            .await?;
        let endpoint = self.stub().0;
        let mut stream = response.into_inner();
        // An idle stream means everything up to now has been delivered.
        while let Ok(Some(item)) = tokio::time::timeout(STREAM_IDLE_END, stream.next()).await {
            let transaction = item.map_err(|status| status_error(&endpoint, status, 1))?;
            let offset = transaction.offset;
            out.push(transaction);
            if offset >= up_to_offset {
                break;
            }
        }
        Ok(out)
    }
}

/// How long [`LedgerClient::transactions`] waits for a next transaction before concluding
/// that the stream has delivered everything there is.
pub const STREAM_IDLE_END: Duration = Duration::from_secs(2);

/// Whether `status` says the command's submission was definitely not committed and may be
/// submitted again (same command id) without any risk of a second commit: it never reached
/// the ledger ([`never_sequenced`]), or the mediator rejected it because a confirming
/// participant did not answer in time ([`meridian_core::protocol::TIMEOUT_REJECTION`]: a
/// participant whose database restarted for a few seconds, say). Other rejections (a contract
/// already archived, no authority) would only be rejected again, so they reach the caller.
fn definitely_not_committed(status: &tonic::Status) -> bool {
    never_sequenced(status)
        || (status.code() == Code::Aborted
            && status
                .message()
                .contains(meridian_core::protocol::TIMEOUT_REJECTION))
}

/// Whether `status` says the command's submission provably never reached the ledger.
///
/// Why a retry gets this answer: a SubmitAndWait whose replica crashed (or stopped without
/// draining) is retried with the same command id on the replica that took over. That replica
/// inherited the old one's in-flight marker for the command — persisted before the send —
/// but cannot know whether the submission was sent, so command deduplication attaches the
/// retry to the inherited submission and answers it with that submission's outcome. When it
/// never reached the sequencer, the only outcome is ABORTED "not sequenced before its max
/// sequencing time", once sequencer time passes that deadline. The answer is definite — the
/// sequencer never sequences past the deadline, nothing was committed, the command id is free
/// again — so resubmitting is what the application would do, and the client does it.
fn never_sequenced(status: &tonic::Status) -> bool {
    status.code() == Code::Aborted
        && status
            .message()
            .contains(meridian_core::protocol::NOT_SEQUENCED_REJECTION)
}

/// Which endpoint a client moves to from `index` after a failure: the next one whose
/// connection has not failed within [`ENDPOINT_COOLDOWN`], the sequencer client's cool-down: a
/// replica frozen or killed a moment ago. Without it, a retry that met the passive during the
/// takeover ("the active replica is …") rotated straight back to the frozen one and waited out
/// a connect or handshake there. If every other one has, it stays where a
/// server just `answered` (alive, and about to take over if it is the passive), and
/// otherwise moves on anyway: an endpoint is never given up for good.
fn next_endpoint(
    index: usize,
    failed_at: &[Option<Instant>],
    now: Instant,
    answered: bool,
) -> usize {
    let count = failed_at.len().max(1);
    let cool = |i: usize| {
        failed_at[i].is_none_or(|at| now.saturating_duration_since(at) >= ENDPOINT_COOLDOWN)
    };
    (1..count)
        .map(|step| (index + step) % count)
        .find(|&i| cool(i))
        .unwrap_or(if answered { index } else { (index + 1) % count })
}

/// Whether a server sent `status` (its response headers are in the metadata), rather than the
/// transport making it up for a connection that failed: a refused or timed-out connect, a TLS
/// handshake that never finished, a connection whose pings went unanswered.
pub fn answered_by_server(status: &tonic::Status) -> bool {
    status.metadata().get("content-type").is_some()
}

/// Failures after which the command may or may not have been processed.
fn retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    ) || broken_connection(status)
}

/// Whether `status` is the transport's, not the participant's: tonic reports an HTTP/2
/// connection that broke under a call (a replica killed mid-request) as INTERNAL "h2 protocol
/// error", although the server never answered and the outcome is unknown.
fn broken_connection(status: &tonic::Status) -> bool {
    status.code() == Code::Internal && status.message().starts_with("h2 protocol error")
}

/// The participant's answer did not follow the Ledger API.
fn invalid(detail: String) -> ClientError {
    ClientError::InvalidAnswer {
        peer: Peer::Participant,
        detail,
    }
}

fn status_error(endpoint: &str, status: tonic::Status, attempts: u32) -> ClientError {
    if retryable(&status) {
        ClientError::Unavailable {
            peer: Peer::Participant,
            endpoint: endpoint.to_owned(),
            attempts,
            last_error: status.message().to_owned(),
        }
    } else {
        ClientError::Rejected {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

pub fn command_to_wire(command: &Command) -> v1::Command {
    v1::Command {
        command: Some(match command {
            Command::Create { template, payload } => {
                v1::command::Command::Create(v1::CreateCommand {
                    template: template.to_string(),
                    payload_json: payload.to_string(),
                })
            }
            Command::Exercise {
                contract_id,
                choice,
                argument,
            } => v1::command::Command::Exercise(v1::ExerciseCommand {
                contract_id: contract_id.to_string(),
                choice: choice.clone(),
                argument_json: argument.to_string(),
            }),
        }),
    }
}

fn parties(field: &str, names: &[String]) -> Result<BTreeSet<PartyId>, ClientError> {
    names
        .iter()
        .map(|n| PartyId::new(n.clone()))
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(format!("{field}: {e}")))
}

pub fn contract_from_wire(event: &v1::CreatedEvent) -> Result<Contract, ClientError> {
    let bad = |what: String| invalid(format!("created event: {what}"));
    Ok(Contract {
        id: ContractId::new(event.contract_id.clone()).map_err(|e| bad(e.to_string()))?,
        template: TemplateId::new(event.template.clone()).map_err(|e| bad(e.to_string()))?,
        payload: serde_json::from_str(&event.payload_json).map_err(|e| bad(e.to_string()))?,
        signatories: parties("signatories", &event.signatories)?,
        observers: parties("observers", &event.observers)?,
    })
}

fn created_contracts(events: &[v1::Event]) -> Result<Vec<Contract>, ClientError> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Some(v1::event::Event::Created(created)) => Some(contract_from_wire(created)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The participant freeze: a lane's call to the frozen active failed without an answer,
    /// the passive then answered "the active replica is …" during the takeover. Rotation must
    /// stay on the passive rather than go back to the frozen one.
    #[test]
    fn rotation_passes_over_an_endpoint_whose_connection_just_failed() {
        let now = Instant::now();
        let just_failed = Some(now - Duration::from_millis(100));
        let long_ago = Some(now - ENDPOINT_COOLDOWN - Duration::from_millis(1));
        // From the frozen one (0) to the passive (1).
        assert_eq!(next_endpoint(0, &[just_failed, None], now, false), 1);
        // The passive answered; the frozen one is cooling: stay.
        assert_eq!(next_endpoint(1, &[just_failed, None], now, true), 1);
        // Once the cool-down is over, the other one is tried again.
        assert_eq!(next_endpoint(1, &[long_ago, None], now, true), 0);
        // Every other one cooling and no answer here either: move on anyway.
        assert_eq!(next_endpoint(1, &[just_failed, just_failed], now, false), 0);
        // Three replicas: skip the cooling one.
        assert_eq!(next_endpoint(0, &[None, just_failed, None], now, true), 2);
        // One endpoint: always itself.
        assert_eq!(next_endpoint(0, &[just_failed], now, false), 0);
    }

    /// Seen in a nemesis run: a participant replica killed under a SubmitAndWait failed the
    /// command instead of retrying it on the other replica.
    #[test]
    fn a_connection_broken_under_a_call_is_retried_but_a_server_error_is_not() {
        assert!(retryable(&tonic::Status::internal(
            "h2 protocol error: http2 error"
        )));
        assert!(!retryable(&tonic::Status::internal(
            "the participant's store is corrupt"
        )));
        assert!(never_sequenced(&tonic::Status::aborted(format!(
            "{} 5us; nothing was committed, resubmit",
            meridian_core::protocol::NOT_SEQUENCED_REJECTION
        ))));
        assert!(!never_sequenced(&tonic::Status::aborted(
            "rejected by the mediator (TIMEOUT)"
        )));
        // Definite rejections: resubmitted only when time ran out, not when a resubmission
        // would be rejected again.
        assert!(definitely_not_committed(&tonic::Status::aborted(format!(
            "a concurrent submission of the same command was rejected: {}: no approval \
             before the deadline 5us from: alice",
            meridian_core::protocol::mediator_rejection("TIMEOUT")
        ))));
        assert!(!definitely_not_committed(&tonic::Status::aborted(
            "rejected by the mediator (INACTIVE_CONTRACTS): already archived"
        )));
    }
}
