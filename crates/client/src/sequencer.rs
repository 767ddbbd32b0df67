//! The sequencer client every member uses: challenge-response authentication, sends that are
//! retried safely, and subscriptions that check the event chain and survive sequencer restarts
//! and the loss of a sequencer instance.
//!
//! A client may know several endpoints: instances of one active-active sequencer sharing one
//! database. A subscription starts on the first endpoint of the list and stays on one instance
//! until its stream breaks or stalls; then it moves to the next. Sends go to the instance the
//! subscription is on (its *home*; the first endpoint for a client without one) and fail over
//! to the next on a transient failure. An endpoint that just failed is passed over for
//! [`ENDPOINT_COOLDOWN`] while others are healthy.
//!
//! Why one home rather than spreading sends: an event is delivered only once every live
//! instance's watermark has passed it. While one instance writes all events, the others are
//! idle and promise a watermark ahead of the clock, so nothing waits for them; when two
//! instances both write, every event waits for the other's next commit, and events written by
//! one instance reach a subscription on another only at that instance's next safe-point poll.
//! Each protocol hop cost 10–15 ms more that way (issue 14). Members that list the instances in
//! the same order therefore share one home and use the others as hot spares; the instances
//! share one database, so spreading the writes bought no throughput.
//!
//! For the members to stay together, a subscription away from the first endpoint returns to
//! it once it serves again: every [`FAILBACK_PROBE_INTERVAL`] it asks the first endpoint's
//! gRPC health service, and on `SERVING` it closes its stream between two events and resumes
//! there (after the last event it handed over, as after any reconnect). Without that, a member
//! that (re)started after a failover (a new replica's term) subscribed at the restarted first
//! instance while the others stayed on the survivor, and both wrote again.
//!
//! Retrying a send reuses the submission's message id, which the sequencer deduplicates on in
//! the shared database, so a retry after an ambiguous failure — on the same instance or another
//! — can never sequence the submission twice. A subscription resumes after the last event it
//! handed to the consumer, and every event passes through [`EventChain`], so neither a
//! reconnect, a switch of instance, nor a sequencer that lost history can make the member skip
//! or repeat an event unnoticed: a fork ends the subscription with an error.
//!
//! Stalls: a paused instance (SIGSTOP, a frozen VM) keeps its TCP connections open and sends
//! nothing. A subscription therefore asks the sequencer for keep-alives every half
//! `stall_timeout` and treats a stream that delivers neither an event nor a keep-alive for
//! `stall_timeout` as broken. HTTP/2 pings at the same pace break connections under sends in
//! flight to such an instance, so they fail over too.
//!
//! Session tokens live only in one sequencer instance's memory, so each endpoint has its own.
//! When an instance answers `UNAUTHENTICATED` (token expired, or the instance restarted) the
//! client signs a fresh challenge for that endpoint and repeats the call once; concurrent
//! callers share one re-authentication.
//!
//! Transient failures are transport errors, local request timeouts and `UNAVAILABLE`; every
//! other status from the sequencer is its definite answer and is never retried.

use std::error::Error as _;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use meridian_core::crypto::{authentication_challenge, PublicKey, SigningKey, SigningPurpose};
use meridian_core::sequencing::{EventChain, SequencedEvent, Submission};
use meridian_core::topology::{SignedTopologyTransaction, TopologyTransaction};
use meridian_core::{MemberId, Timestamp};
use meridian_proto::convert;
use meridian_proto::v1;
use meridian_proto::v1::sequencer_admin_service_client::SequencerAdminServiceClient;
use meridian_proto::v1::sequencer_service_client::SequencerServiceClient;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tracing::{debug, error, info, warn};

use crate::backoff::{Backoff, Delays};
use crate::error::{require_endpoints, ClientError, Peer};
use crate::tls::ClientTls;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// See [`SequencerClientConfig::stall_timeout`].
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a subscription away from the first endpoint asks whether it serves again.
pub const FAILBACK_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long that question may take: a frozen instance accepts connections but never answers,
/// and the subscription stays where it is.
const FAILBACK_PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// The service whose health decides a failback: `SERVING` exactly while the instance is ready.
const SEQUENCER_SERVICE: &str = "meridian.v1.SequencerService";

/// How long an endpoint that just failed is passed over while other endpoints are healthy.
/// Long enough not to hammer an instance that is restarting, short enough that load spreads
/// again soon after it is back. The ledger client's rotation uses it too (for replicas whose
/// connection failed).
pub const ENDPOINT_COOLDOWN: Duration = Duration::from_secs(2);

/// Events buffered between a subscription's background task and its consumer. When the
/// consumer falls behind, the task stops reading and gRPC flow control pushes back on the
/// sequencer instead of memory growing without bound.
pub const SUBSCRIPTION_BUFFER: usize = 1024;

/// HTTP/2 pings detect a dead connection under an idle subscription (a member may receive
/// nothing for minutes); without them a half-open TCP connection would stall it forever. Used
/// when stall detection is off; with it, pings follow `stall_timeout`.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Floors of the ping pace derived from `stall_timeout`: pings are cheap, but a CPU-starved
/// (not paused) server must not lose its connections to a tight ping deadline.
const MIN_PING_INTERVAL: Duration = Duration::from_millis(250);
const MIN_PING_TIMEOUT: Duration = Duration::from_secs(1);

/// A subscription stream that stayed open this long counts as healthy when it breaks, even if
/// it delivered nothing: an idle member's stream breaking once an hour must not use up the
/// reconnect attempts meant for a sequencer that is really down.
const STABLE_SUBSCRIPTION: Duration = Duration::from_secs(10);

const AUTHORIZATION: &str = "authorization";

#[derive(Debug, Clone)]
pub struct SequencerClientConfig {
    /// The gRPC endpoints of the sequencer's instances, e.g. `http://127.0.0.1:4401`; at least
    /// one. All must be instances of the same sequencer (one shared database): a send retried
    /// on another instance is deduplicated there, and every instance serves the same stream.
    pub endpoints: Vec<String>,
    pub member: MemberId,
    /// Must match the public key the member was registered with.
    pub key: SigningKey,
    /// Limit for establishing a TCP/HTTP2 connection.
    pub connect_timeout: Duration,
    /// Limit for one unary call, and for a subscription to be accepted (not for the stream).
    /// With several endpoints, a lower value (a few seconds) fails a send over sooner when an
    /// instance hangs.
    pub request_timeout: Duration,
    /// Spacing and number of attempts for every retried operation. With several endpoints one
    /// attempt tries each of them once (at once, one after the other); the backoff delays
    /// come between such rounds.
    pub backoff: Backoff,
    /// A subscription that receives neither an event nor a keep-alive for this long treats its
    /// endpoint as stalled and resumes on another one (or the same, if it is the only one).
    /// The client asks the sequencer for a keep-alive every half of it, and sends HTTP/2 pings
    /// at about this pace. `None` turns stall detection off (then only 10 s pings detect a
    /// dead connection), e.g. for a sequencer that does not send keep-alives.
    pub stall_timeout: Option<Duration>,
}

impl SequencerClientConfig {
    /// A configuration for one endpoint with the default timeouts and backoff.
    pub fn new(endpoint: impl Into<String>, member: MemberId, key: SigningKey) -> Self {
        Self {
            endpoints: vec![endpoint.into()],
            member,
            key,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            backoff: Backoff::default(),
            stall_timeout: Some(DEFAULT_STALL_TIMEOUT),
        }
    }

    /// Replaces the endpoints (the one given to [`SequencerClientConfig::new`] included).
    /// Subscriptions start on the first endpoint of the list that is not cooling down, and
    /// sends follow them: give every member the same order (see the module docs).
    pub fn with_endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints = endpoints.into_iter().map(Into::into).collect();
        self
    }
}

/// The sequencer's acknowledgement of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendReceipt {
    /// The submission's sequencing timestamp.
    pub timestamp: Timestamp,
    /// True when the sequencer had already sequenced this (sender, message id), e.g. because an
    /// earlier attempt succeeded but its answer was lost; `timestamp` is then that earlier one.
    pub deduplicated: bool,
}

/// Connections to the instances of one sequencer, authenticated as one member. Cheap to clone;
/// clones share the connections and the sessions.
#[derive(Clone)]
pub struct SequencerClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for SequencerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SequencerClient")
            .field("endpoints", &self.inner.endpoint_list())
            .field("member", &self.inner.member)
            .finish_non_exhaustive()
    }
}

impl SequencerClient {
    /// Prepares the connections and authenticates with one of the endpoints (the others in
    /// the background, and again on use if that failed). A sequencer that is not up yet is
    /// retried with the configured backoff, so members may start before their sequencer.
    pub async fn connect(config: SequencerClientConfig) -> Result<Self, ClientError> {
        Self::connect_with_tls(config, None).await
    }

    /// [`Self::connect`] with explicit TLS settings for `https://` endpoints instead of the
    /// process default ([`crate::tls::install_default`]).
    pub async fn connect_with_tls(
        config: SequencerClientConfig,
        tls: Option<ClientTls>,
    ) -> Result<Self, ClientError> {
        if config.endpoints.is_empty() {
            return Err(ClientError::InvalidConfig(
                "no sequencer endpoint configured".to_owned(),
            ));
        }
        let (ping_interval, ping_timeout) = match config.stall_timeout {
            Some(stall) => (
                stall.max(MIN_PING_INTERVAL),
                (stall * 2).max(MIN_PING_TIMEOUT),
            ),
            None => (KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT),
        };
        let endpoints = config
            .endpoints
            .iter()
            .map(|url| {
                let channel = channel_with_pings(
                    url,
                    tls.as_ref(),
                    config.connect_timeout,
                    ping_interval,
                    ping_timeout,
                )?;
                Ok(EndpointState {
                    url: url.clone(),
                    health: HealthClient::new(channel.clone()),
                    grpc: SequencerServiceClient::new(channel),
                    session: Mutex::new(None),
                    auth_lock: tokio::sync::Mutex::new(()),
                    avoid_until: Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        let inner = Inner {
            endpoints,
            home: AtomicUsize::new(0),
            member: config.member,
            key: config.key,
            request_timeout: config.request_timeout,
            backoff: config.backoff,
            stall_timeout: config.stall_timeout,
        };
        inner
            .retry_across(None, 0, |endpoint| inner.refresh_session(endpoint, None))
            .await?;
        let inner = Arc::new(inner);
        // The other instances in the background: a failover then finds a warm connection and
        // a session waiting, instead of a TLS handshake and a challenge-response paid while
        // every member moves at once (the first failover of a deployment took 100 ms more).
        tokio::spawn(Arc::clone(&inner).authenticate_everywhere());
        Ok(Self { inner })
    }

    pub fn member(&self) -> &MemberId {
        &self.inner.member
    }

    /// The configured endpoints, in configuration order.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner
            .endpoints
            .iter()
            .map(|endpoint| endpoint.url.clone())
            .collect()
    }

    /// Sequences a submission. Each send starts at the next endpoint in turn; transient
    /// failures fail over to the other endpoints and are retried with the same message id
    /// until the backoff's attempts are used up ([`ClientError::Unavailable`]) or the
    /// submission's `max_sequencing_time` has passed ([`ClientError::Timeout`]); in both cases
    /// the outcome is unknown. A definite refusal is returned at once as
    /// [`ClientError::Rejected`].
    pub async fn send(&self, submission: Submission) -> Result<SendReceipt, ClientError> {
        let deadline = submission.max_sequencing_time;
        let request = v1::SendRequest {
            submission: Some(convert::submission_to_wire(submission)),
        };
        let response = self
            .inner
            .call_with_retries(Some(deadline), |mut grpc, authorization| {
                let request = authorized(request.clone(), authorization);
                async move { grpc.send(request).await }
            })
            .await?;
        // proto3 decodes a missing field as 0, which is never a real sequencing time.
        if response.timestamp_us == 0 {
            return Err(ClientError::Protocol(
                "send response carries no timestamp".to_owned(),
            ));
        }
        Ok(SendReceipt {
            timestamp: Timestamp::from_micros(response.timestamp_us),
            deduplicated: response.deduplicated,
        })
    }

    /// Streams this member's events after `after`, which must be the timestamp of the last
    /// event the member processed (`None` if none): it is where the chain check starts, so an
    /// arbitrary time there makes the first event look like a fork.
    ///
    /// The stream yields events in order, exactly once, across reconnects and switches of
    /// endpoint. It ends after yielding one error: a fork, a malformed event, a definite
    /// refusal, or [`ClientError::Unavailable`] once the backoff's attempts are used up.
    /// Dropping the subscription stops its background task. Must be called inside a tokio
    /// runtime.
    pub fn subscribe(&self, after: Option<Timestamp>) -> Subscription {
        let (sender, events) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let task = tokio::spawn(run_subscription(Arc::clone(&self.inner), after, sender));
        Subscription { events, task }
    }

    /// Tells the sequencer that every event up to `timestamp` has been processed, so it may
    /// prune them. Idempotent, hence retried like a send.
    pub async fn acknowledge(&self, timestamp: Timestamp) -> Result<(), ClientError> {
        let request = v1::AcknowledgeRequest {
            member: self.inner.member.to_string(),
            timestamp_us: timestamp.as_micros(),
        };
        self.inner
            .call_with_retries(None, |mut grpc, authorization| {
                let request = authorized(request.clone(), authorization);
                async move { grpc.acknowledge(request).await }
            })
            .await?;
        Ok(())
    }
}

/// Registers a member with the sequencer's admin service. Returns `true` if it was created and
/// `false` if it was already registered with the same key (so setup scripts can rerun).
/// Transient failures are retried with [`Backoff::default`]. One endpoint suffices: instances
/// share the member table.
pub async fn register_member(
    endpoint: &str,
    member: &MemberId,
    public_key: &PublicKey,
) -> Result<bool, ClientError> {
    let admin = SequencerAdminServiceClient::new(channel(endpoint, DEFAULT_CONNECT_TIMEOUT)?);
    let request = v1::RegisterMemberRequest {
        member: member.to_string(),
        public_key: public_key.to_bytes().to_vec(),
        ..Default::default()
    };
    let attempt = || {
        let mut admin = admin.clone();
        let request = request.clone();
        async move {
            timed(DEFAULT_REQUEST_TIMEOUT, admin.register_member(request))
                .await
                .map_err(classify)
        }
    };
    let response = retry(endpoint, Backoff::default(), None, attempt).await?;
    Ok(response.created)
}

/// Registers the member that an owner-signed topology transaction admits (a participant,
/// mediator or topology manager mapping), sending the transaction along so that a sequencer
/// configured with `owner_public_key` can check the owner's signature. Returns `true` if the
/// member was created, `false` if it was already registered with the same key. The member and
/// key are taken from the transaction itself, so they cannot disagree with it. Transient
/// failures are retried with [`Backoff::default`], each attempt at the next of `endpoints`
/// (instances share the member table, so any live one will do).
pub async fn register_member_with_topology(
    endpoints: &[String],
    signed: &SignedTopologyTransaction,
) -> Result<bool, ClientError> {
    // Decoded without verifying: the sequencer verifies; here we only need the fields.
    let transaction: TopologyTransaction = serde_json::from_str(&signed.transaction_json)
        .map_err(|e| ClientError::InvalidConfig(format!("malformed topology transaction: {e}")))?;
    let (member, key_hex) = transaction.mapping.member_key().ok_or_else(|| {
        ClientError::InvalidConfig(format!(
            "topology transaction {} maps a party; it registers no member",
            transaction.serial
        ))
    })?;
    let public_key = PublicKey::from_hex(key_hex).map_err(|e| {
        ClientError::InvalidConfig(format!(
            "topology transaction {} names an invalid key for {member}: {e}",
            transaction.serial
        ))
    })?;
    require_endpoints(
        endpoints,
        "registering a member needs at least one sequencer endpoint",
    )?;
    let admins = endpoints
        .iter()
        .map(|endpoint| {
            Ok(SequencerAdminServiceClient::new(channel(
                endpoint,
                DEFAULT_CONNECT_TIMEOUT,
            )?))
        })
        .collect::<Result<Vec<_>, ClientError>>()?;
    let request = v1::RegisterMemberRequest {
        member: member.to_string(),
        public_key: public_key.to_bytes().to_vec(),
        topology_transaction_json: signed.transaction_json.clone(),
        owner_signature: signed.signature.clone(),
    };
    let mut attempt_index = 0usize;
    let attempt = || {
        let mut admin = admins[attempt_index % admins.len()].clone();
        attempt_index += 1;
        let request = request.clone();
        async move {
            timed(DEFAULT_REQUEST_TIMEOUT, admin.register_member(request))
                .await
                .map_err(classify)
        }
    };
    let response = retry(&endpoints.join(", "), Backoff::default(), None, attempt).await?;
    Ok(response.created)
}

/// A member's event stream; see [`SequencerClient::subscribe`].
#[derive(Debug)]
pub struct Subscription {
    events: mpsc::Receiver<Result<SequencedEvent, ClientError>>,
    task: JoinHandle<()>,
}

impl Stream for Subscription {
    type Item = Result<SequencedEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Stops the task even while it waits on the network or in a backoff sleep, where it
        // would not notice the closed channel.
        self.task.abort();
    }
}

fn channel(endpoint: &str, connect_timeout: Duration) -> Result<Channel, ClientError> {
    channel_with_pings(
        endpoint,
        None,
        connect_timeout,
        KEEP_ALIVE_INTERVAL,
        KEEP_ALIVE_TIMEOUT,
    )
}

fn channel_with_pings(
    endpoint: &str,
    tls: Option<&ClientTls>,
    connect_timeout: Duration,
    ping_interval: Duration,
    ping_timeout: Duration,
) -> Result<Channel, ClientError> {
    // http:// is plaintext, https:// is TLS (with `tls` or the process default).
    let parsed = crate::tls::endpoint(endpoint, tls, "sequencer endpoint")?;
    // Lazy: nothing is dialled until the first call, and a lost connection is re-dialled on
    // the next call, which is what the retry loops rely on.
    Ok(parsed
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(ping_interval)
        .keep_alive_timeout(ping_timeout)
        .keep_alive_while_idle(true)
        .connect_lazy())
}
/// How one attempt failed.
#[derive(Debug)]
enum Failure {
    /// Worth another attempt after a backoff delay.
    Transient(String),
    /// Final; returned to the caller as is.
    Fatal(ClientError),
}

/// Splits a status into transient and definite. A status that carries a source error was
/// synthesized locally from a transport failure (connection refused or reset, h2 error) or a
/// request timeout; one decoded from the sequencer's answer has none. So a `DEADLINE_EXCEEDED`
/// from the sequencer itself (say, for an expired submission) stays a definite answer.
fn classify(status: Status) -> Failure {
    // The sequencer's typed fork answer to Subscribe: the member must stop, like on a broken
    // chain.
    if status.code() == Code::FailedPrecondition {
        if let Some(fork) = convert::sequencer::fork_from_status_details(status.details()) {
            return Failure::Fatal(ClientError::Fork(fork));
        }
    }
    if status.code() == Code::Unavailable || status.source().is_some() {
        Failure::Transient(describe(&status))
    } else {
        Failure::Fatal(ClientError::Rejected {
            code: status.code(),
            message: status.message().to_owned(),
        })
    }
}

/// An answer that breaks the protocol: final, as another attempt would not mend the instance.
fn protocol_failure(what: &str) -> Failure {
    Failure::Fatal(ClientError::Protocol(what.to_owned()))
}

/// Statuses of the authentication calls: a refusal there means the identity is wrong.
fn classify_authentication(status: Status) -> Failure {
    match classify(status) {
        Failure::Fatal(ClientError::Rejected {
            code: Code::Unauthenticated | Code::PermissionDenied | Code::NotFound,
            message,
        }) => Failure::Fatal(ClientError::Unauthenticated(message)),
        other => other,
    }
}

fn describe(status: &Status) -> String {
    match status.source() {
        Some(source) => format!("{:?}: {} ({source})", status.code(), status.message()),
        None => format!("{:?}: {}", status.code(), status.message()),
    }
}

/// Awaits a call for at most `limit`. Running out of time becomes `DEADLINE_EXCEEDED` with the
/// timer's error as source, which [`classify`] treats as transient.
async fn timed<T>(
    limit: Duration,
    call: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map(Response::into_inner),
        Err(elapsed) => {
            let mut status =
                Status::deadline_exceeded(format!("no answer within {} ms", limit.as_millis()));
            status.set_source(Arc::new(elapsed));
            Err(status)
        }
    }
}

fn authorized<T>(message: T, authorization: AsciiMetadataValue) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(AUTHORIZATION, authorization);
    request
}

/// Counts consecutive failed attempts and hands out the delays between them.
struct Attempts {
    backoff: Backoff,
    delays: Delays,
    failed: u32,
}

impl Attempts {
    fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            delays: backoff.delays(),
            failed: 0,
        }
    }

    /// Records a failure; returns the delay before the next attempt, or `None` when the
    /// attempts are used up.
    fn failed(&mut self) -> Option<Duration> {
        self.failed = self.failed.saturating_add(1);
        self.delays.next()
    }

    /// Records a failure; returns the delay before the next attempt, or the error that ends
    /// the retrying: the attempts are used up, or the next attempt would start after
    /// `deadline`. `endpoints` is only evaluated for that error.
    fn next_delay(
        &mut self,
        endpoints: impl FnOnce() -> String,
        deadline: Option<Timestamp>,
        last_error: &str,
    ) -> Result<Duration, ClientError> {
        let Some(delay) = self.failed() else {
            return Err(ClientError::Unavailable {
                peer: Peer::Sequencer,
                endpoint: endpoints(),
                attempts: self.failed,
                last_error: last_error.to_owned(),
            });
        };
        if deadline.is_some_and(|deadline| Timestamp::now().saturating_add(delay) > deadline) {
            return Err(ClientError::Timeout {
                last_error: last_error.to_owned(),
            });
        }
        Ok(delay)
    }

    fn reset(&mut self) {
        self.delays = self.backoff.delays();
        self.failed = 0;
    }
}

/// Runs `attempt` until it succeeds, fails definitely, the backoff is used up, or the next
/// attempt would start after `deadline`.
async fn retry<T, F, Fut>(
    endpoint: &str,
    backoff: Backoff,
    deadline: Option<Timestamp>,
    mut attempt: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut attempts = Attempts::new(backoff);
    loop {
        let last_error = match attempt().await {
            Ok(value) => return Ok(value),
            Err(Failure::Fatal(error)) => return Err(error),
            Err(Failure::Transient(error)) => error,
        };
        let delay = attempts.next_delay(|| endpoint.to_owned(), deadline, &last_error)?;
        debug!(
            endpoint,
            attempt = attempts.failed,
            delay_ms = delay.as_millis(),
            error = %last_error,
            "sequencer call failed; retrying"
        );
        tokio::time::sleep(delay).await;
    }
}

/// A session token, ready to be sent as metadata.
#[derive(Clone)]
struct Session {
    authorization: AsciiMetadataValue,
    /// Increases with each authentication, so that callers that saw the same stale token
    /// trigger one re-authentication, not one each.
    generation: u64,
}

/// One sequencer instance as the client sees it: its connection, its session (tokens are per
/// instance) and whether it recently failed.
struct EndpointState {
    url: String,
    grpc: SequencerServiceClient<Channel>,
    /// The instance's gRPC health service, asked before a failback.
    health: HealthClient<Channel>,
    /// The current token; never held across an await.
    session: Mutex<Option<Session>>,
    /// Serializes authentications.
    auth_lock: tokio::sync::Mutex<()>,
    /// Passed over until then (if other endpoints are healthy) after a transient failure.
    avoid_until: Mutex<Option<Instant>>,
}

impl EndpointState {
    fn current_session(&self) -> Option<Session> {
        self.session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the instance says it is ready (its sequencer service `SERVING`) within
    /// [`FAILBACK_PROBE_TIMEOUT`].
    async fn is_serving(&self) -> bool {
        let mut health = self.health.clone();
        let request = HealthCheckRequest {
            service: SEQUENCER_SERVICE.to_owned(),
        };
        matches!(
            tokio::time::timeout(FAILBACK_PROBE_TIMEOUT, health.check(request)).await,
            Ok(Ok(response)) if response.get_ref().status() == ServingStatus::Serving
        )
    }

    fn avoid(&self) {
        *self
            .avoid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + ENDPOINT_COOLDOWN);
    }

    fn mark_healthy(&self) {
        *self
            .avoid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn is_avoided(&self, now: Instant) -> bool {
        self.avoid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| now < until)
    }
}

struct Inner {
    endpoints: Vec<EndpointState>,
    /// Where sends start: the endpoint the subscription last opened a stream on (the first
    /// one until then).
    home: AtomicUsize,
    member: MemberId,
    key: SigningKey,
    request_timeout: Duration,
    backoff: Backoff,
    stall_timeout: Option<Duration>,
}

impl Inner {
    /// The endpoints for reporting: the one URL, or all of them.
    fn endpoint_list(&self) -> String {
        self.endpoints
            .iter()
            .map(|endpoint| endpoint.url.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every endpoint once, starting at `first` and going round; those cooling down after a
    /// failure go last, so they are tried only when the healthy ones fail too.
    fn order(&self, first: usize) -> Vec<usize> {
        let count = self.endpoints.len();
        let now = Instant::now();
        let (mut healthy, avoided): (Vec<usize>, Vec<usize>) = (0..count)
            .map(|offset| (first + offset) % count)
            .partition(|&i| !self.endpoints[i].is_avoided(now));
        healthy.extend(avoided);
        healthy
    }

    /// Authenticates once with every endpoint that has no session yet. A failure is left
    /// for the first real call there to retry.
    async fn authenticate_everywhere(self: Arc<Self>) {
        for endpoint in 0..self.endpoints.len() {
            if let Err(failure) = self.session(endpoint).await {
                debug!(
                    member = %self.member,
                    endpoint = %self.endpoints[endpoint].url,
                    ?failure,
                    "authenticating ahead of use failed; the first call there will retry"
                );
            }
        }
    }

    async fn session(&self, endpoint: usize) -> Result<Session, Failure> {
        match self.endpoints[endpoint].current_session() {
            Some(session) => Ok(session),
            None => self.refresh_session(endpoint, None).await,
        }
    }

    /// Authenticates with `endpoint` unless someone already replaced its token of generation
    /// `stale` (or, with `None`, unless there is a token at all).
    async fn refresh_session(
        &self,
        endpoint: usize,
        stale: Option<u64>,
    ) -> Result<Session, Failure> {
        let state = &self.endpoints[endpoint];
        let _serialized = state.auth_lock.lock().await;
        let current = state.current_session();
        if let Some(session) = &current {
            if stale.is_none_or(|stale| session.generation != stale) {
                return Ok(session.clone());
            }
        }
        let authorization = self.authenticate(state).await?;
        let session = Session {
            authorization,
            generation: current.map_or(1, |session| session.generation.wrapping_add(1)),
        };
        *state.session.lock().unwrap_or_else(PoisonError::into_inner) = Some(session.clone());
        debug!(member = %self.member, endpoint = %state.url, generation = session.generation, "authenticated");
        Ok(session)
    }

    /// One challenge-response exchange: the member signs the instance's nonce bound to its id.
    async fn authenticate(&self, state: &EndpointState) -> Result<AsciiMetadataValue, Failure> {
        let mut grpc = state.grpc.clone();
        let challenge = v1::GetChallengeRequest {
            member: self.member.to_string(),
        };
        let nonce = timed(self.request_timeout, grpc.get_challenge(challenge))
            .await
            .map_err(classify_authentication)?
            .nonce;
        if nonce.is_empty() {
            return Err(protocol_failure(
                "authentication challenge with an empty nonce",
            ));
        }
        let signature = self.key.sign(
            SigningPurpose::SequencerAuthentication,
            &authentication_challenge(&self.member, &nonce),
        );
        let request = v1::AuthenticateRequest {
            member: self.member.to_string(),
            nonce,
            signature: signature.to_bytes().to_vec(),
        };
        let token = timed(self.request_timeout, grpc.authenticate(request))
            .await
            .map_err(classify_authentication)?
            .token;
        if token.is_empty() {
            return Err(protocol_failure("authentication returned an empty token"));
        }
        AsciiMetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| protocol_failure("session token is not printable ASCII"))
    }

    /// One attempt of an authenticated call on `endpoint`. If the instance no longer knows the
    /// token, it re-authenticates and repeats the call once, within the same attempt.
    async fn authorized_call<T, F, Fut>(&self, endpoint: usize, call: &F) -> Result<T, Failure>
    where
        F: Fn(SequencerServiceClient<Channel>, AsciiMetadataValue) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let state = &self.endpoints[endpoint];
        let session = self.session(endpoint).await?;
        let first = call(state.grpc.clone(), session.authorization.clone());
        match timed(self.request_timeout, first).await {
            Err(status) if status.code() == Code::Unauthenticated => {
                info!(
                    member = %self.member,
                    endpoint = %state.url,
                    reason = status.message(),
                    "sequencer refused the session token; re-authenticating"
                );
                let session = self
                    .refresh_session(endpoint, Some(session.generation))
                    .await?;
                let second = call(state.grpc.clone(), session.authorization);
                timed(self.request_timeout, second)
                    .await
                    .map_err(|status| match status.code() {
                        Code::Unauthenticated => Failure::Fatal(ClientError::Unauthenticated(
                            format!("fresh session token refused: {}", status.message()),
                        )),
                        _ => classify(status),
                    })
            }
            other => other.map_err(classify),
        }
    }

    /// Runs `attempt` on the endpoints, starting at `first`: one round tries each endpoint
    /// once, without waiting in between; the backoff delays separate rounds, and its attempt
    /// count bounds the rounds. Ends on success, a definite failure, the attempts used up, or
    /// the next round would start after `deadline`.
    async fn retry_across<T, F, Fut>(
        &self,
        deadline: Option<Timestamp>,
        first: usize,
        mut attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut attempts = Attempts::new(self.backoff);
        let several = self.endpoints.len() > 1;
        loop {
            let mut last_error = String::new();
            for endpoint in self.order(first) {
                let state = &self.endpoints[endpoint];
                match attempt(endpoint).await {
                    Ok(value) => {
                        state.mark_healthy();
                        return Ok(value);
                    }
                    Err(Failure::Fatal(error)) => return Err(error),
                    Err(Failure::Transient(error)) => {
                        state.avoid();
                        if several {
                            debug!(endpoint = %state.url, %error, "sequencer call failed; trying the next endpoint");
                            last_error = format!("{}: {error}", state.url);
                        } else {
                            last_error = error;
                        }
                    }
                }
            }
            let delay = attempts.next_delay(|| self.endpoint_list(), deadline, &last_error)?;
            debug!(
                endpoints = %self.endpoint_list(),
                attempt = attempts.failed,
                delay_ms = delay.as_millis(),
                error = %last_error,
                "sequencer call failed on every endpoint; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    async fn call_with_retries<T, F, Fut>(
        &self,
        deadline: Option<Timestamp>,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(SequencerServiceClient<Channel>, AsciiMetadataValue) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let call = &call;
        let first = self.home.load(Ordering::Relaxed) % self.endpoints.len();
        self.retry_across(deadline, first, move |endpoint| {
            self.authorized_call(endpoint, call)
        })
        .await
    }

    /// What a subscription asks for: keep-alives at half the stall timeout, so one lost to
    /// scheduling jitter does not yet count as a stall.
    fn keep_alive_interval_ms(&self) -> Option<u32> {
        self.stall_timeout.map(|stall| {
            u32::try_from((stall / 2).as_millis())
                .unwrap_or(u32::MAX)
                .max(1)
        })
    }
}

/// How reading one subscription stream ended.
enum StreamEnd {
    /// The consumer dropped the subscription.
    ConsumerGone,
    /// Reconnect (on another endpoint if there is one) and resume.
    Broken { error: String, delivered: u64 },
    /// The first endpoint serves again: resume there.
    Failback,
    /// End the subscription with this error.
    Fatal(ClientError),
}

async fn run_subscription(
    inner: Arc<Inner>,
    after: Option<Timestamp>,
    sender: mpsc::Sender<Result<SequencedEvent, ClientError>>,
) {
    if let Err(error) = subscription_loop(&inner, after, &sender).await {
        match &error {
            ClientError::Fork(_) => error!(member = %inner.member, %error, "subscription stopped"),
            _ => warn!(member = %inner.member, %error, "subscription stopped"),
        }
        // The consumer may be gone already; then nobody needs the error.
        let _ = sender.send(Err(error)).await;
    }
}

/// Returns `Ok` when the consumer went away, `Err` with the error that ends the subscription.
///
/// The subscription stays on one endpoint while it works. When its stream breaks, stalls or
/// cannot be opened, it moves at once to the next endpoint (healthy ones first) until every
/// endpoint has failed since the last pause; then it waits the next backoff delay. A stream
/// that delivers events resets the backoff.
async fn subscription_loop(
    inner: &Inner,
    after: Option<Timestamp>,
    sender: &mpsc::Sender<Result<SequencedEvent, ClientError>>,
) -> Result<(), ClientError> {
    let mut chain = EventChain::new(after);
    let mut attempts = Attempts::new(inner.backoff);
    let endpoint_count = inner.endpoints.len();
    let mut current = inner.order(0)[0];
    // Endpoints that failed since the last backoff pause (or the last healthy stream).
    let mut failed_in_round = 0;
    let mut interrupted_at: Option<Instant> = None;
    loop {
        let url = &inner.endpoints[current].url;
        // Resume strictly after the last event handed to the consumer: no gap, no duplicate.
        let resume_after = chain.last_processed();
        let request = v1::SubscribeRequest {
            member: inner.member.to_string(),
            after_timestamp_us: resume_after.map(Timestamp::as_micros),
            keep_alive_interval_ms: inner.keep_alive_interval_ms(),
        };
        let opened = inner
            .authorized_call(
                current,
                &|mut grpc: SequencerServiceClient<Channel>, authorization| {
                    let request = authorized(request.clone(), authorization);
                    async move { grpc.subscribe(request).await }
                },
            )
            .await;
        let error = match opened {
            Err(Failure::Fatal(error)) => return Err(error),
            Err(Failure::Transient(error)) => error,
            Ok(mut stream) => {
                inner.home.store(current, Ordering::Relaxed);
                if let Some(since) = interrupted_at.take() {
                    info!(
                        member = %inner.member,
                        endpoint = %url,
                        after = ?resume_after,
                        interrupted_ms = since.elapsed().as_millis(),
                        "subscription re-established"
                    );
                }
                let opened_at = Instant::now();
                let first = &inner.endpoints[0];
                let on_first = current == 0;
                let failback = async move {
                    if on_first {
                        return std::future::pending().await;
                    }
                    loop {
                        tokio::time::sleep(FAILBACK_PROBE_INTERVAL).await;
                        if first.is_serving().await {
                            return;
                        }
                    }
                };
                tokio::pin!(failback);
                let end = read_stream(
                    &mut stream,
                    &mut chain,
                    sender,
                    inner.stall_timeout,
                    failback,
                )
                .await;
                match end {
                    StreamEnd::ConsumerGone => return Ok(()),
                    StreamEnd::Fatal(error) => return Err(error),
                    StreamEnd::Failback => {
                        info!(
                            member = %inner.member,
                            from = %url,
                            to = %first.url,
                            after = ?chain.last_processed(),
                            "the first sequencer endpoint serves again; moving the subscription back"
                        );
                        first.mark_healthy();
                        attempts.reset();
                        failed_in_round = 0;
                        current = 0;
                        continue;
                    }
                    StreamEnd::Broken { error, delivered } => {
                        if delivered > 0 || opened_at.elapsed() >= STABLE_SUBSCRIPTION {
                            inner.endpoints[current].mark_healthy();
                            attempts.reset();
                            failed_in_round = 0;
                        }
                        error
                    }
                }
            }
        };
        inner.endpoints[current].avoid();
        failed_in_round += 1;
        let previous = current;
        current = inner.order((current + 1) % endpoint_count)[0];
        if interrupted_at.is_none() {
            interrupted_at = Some(Instant::now());
            // One warning per outage; the individual attempts of a reconnect are debug noise.
            warn!(
                member = %inner.member,
                endpoint = %inner.endpoints[previous].url,
                next_endpoint = %inner.endpoints[current].url,
                after = ?chain.last_processed(),
                %error,
                "subscription interrupted; resuming"
            );
        }
        if failed_in_round < endpoint_count {
            debug!(
                member = %inner.member,
                failed = %inner.endpoints[previous].url,
                next = %inner.endpoints[current].url,
                %error,
                "subscription switching endpoint"
            );
            continue;
        }
        failed_in_round = 0;
        let delay = attempts.next_delay(|| inner.endpoint_list(), None, &error)?;
        debug!(
            member = %inner.member,
            attempt = attempts.failed,
            delay_ms = delay.as_millis(),
            %error,
            "subscription reconnect failed on every endpoint"
        );
        tokio::time::sleep(delay).await;
    }
}

async fn read_stream(
    stream: &mut tonic::Streaming<v1::SequencedEvent>,
    chain: &mut EventChain,
    sender: &mpsc::Sender<Result<SequencedEvent, ClientError>>,
    stall_timeout: Option<Duration>,
    mut failback: Pin<&mut impl Future<Output = ()>>,
) -> StreamEnd {
    let mut delivered = 0;
    loop {
        // Only the wait for the network counts towards a stall, never a slow consumer.
        let next = async {
            match stall_timeout {
                Some(limit) => tokio::time::timeout(limit, stream.message()).await.ok(),
                None => Some(stream.message().await),
            }
        };
        // A failback is taken only here, between two events: an event received is always
        // handed over before the stream is dropped.
        let received = tokio::select! {
            biased;
            received = next => match received {
                Some(received) => received,
                None => {
                    return StreamEnd::Broken {
                        error: format!(
                            "no event or keep-alive within {} ms: the sequencer stalled",
                            stall_timeout.unwrap_or_default().as_millis()
                        ),
                        delivered,
                    }
                }
            },
            () = &mut failback => return StreamEnd::Failback,
        };
        let wire = match received {
            Ok(Some(wire)) => wire,
            Ok(None) => {
                return StreamEnd::Broken {
                    error: "the sequencer ended the stream".to_owned(),
                    delivered,
                }
            }
            // A token that expires mid-stream: the reconnect re-authenticates if needed.
            Err(status) if status.code() == Code::Unauthenticated => {
                return StreamEnd::Broken {
                    error: describe(&status),
                    delivered,
                }
            }
            Err(status) => {
                return match classify(status) {
                    Failure::Transient(error) => StreamEnd::Broken { error, delivered },
                    Failure::Fatal(error) => StreamEnd::Fatal(error),
                }
            }
        };
        if wire.keep_alive {
            continue;
        }
        let event = match convert::event_from_wire(wire) {
            Ok(event) => event,
            Err(error) => {
                return StreamEnd::Fatal(ClientError::Protocol(format!(
                    "malformed event after {:?}: {error}",
                    chain.last_processed()
                )))
            }
        };
        // A fork leaves the chain where it was; the member must stop, never skip the event.
        if let Err(fork) = chain.accept(event.timestamp, event.previous_timestamp) {
            return StreamEnd::Fatal(ClientError::Fork(fork));
        }
        if sender.send(Ok(event)).await.is_err() {
            return StreamEnd::ConsumerGone;
        }
        delivered += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_are_transient_and_answers_are_not() {
        assert!(matches!(
            classify(Status::unavailable("restarting")),
            Failure::Transient(_)
        ));
        // The sequencer's own DEADLINE_EXCEEDED is an answer, not a timeout of ours.
        assert!(matches!(
            classify(Status::deadline_exceeded("submission expired")),
            Failure::Fatal(ClientError::Rejected {
                code: Code::DeadlineExceeded,
                ..
            })
        ));
        // Synthesized locally from an I/O error: the sequencer never answered.
        let reset = Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert!(matches!(classify(reset), Failure::Transient(_)));

        match classify(Status::invalid_argument("bad recipient")) {
            Failure::Fatal(ClientError::Rejected { code, message }) => {
                assert_eq!(code, Code::InvalidArgument);
                assert_eq!(message, "bad recipient");
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert!(matches!(
            classify(Status::internal("bug")),
            Failure::Fatal(ClientError::Rejected { .. })
        ));
    }

    #[tokio::test]
    async fn a_local_timeout_is_transient() {
        let never = futures::future::pending::<Result<Response<()>, Status>>();
        let status = timed(Duration::from_millis(5), never).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        match classify(status) {
            Failure::Transient(error) => {
                assert!(error.contains("no answer within 5 ms"), "{error}")
            }
            other => panic!("expected a transient failure, got {other:?}"),
        }
    }

    #[test]
    fn authentication_refusals_name_the_identity_problem() {
        assert!(matches!(
            classify_authentication(Status::unauthenticated("bad signature")),
            Failure::Fatal(ClientError::Unauthenticated(m)) if m == "bad signature"
        ));
        assert!(matches!(
            classify_authentication(Status::not_found("unknown member")),
            Failure::Fatal(ClientError::Unauthenticated(_))
        ));
        assert!(matches!(
            classify_authentication(Status::unavailable("down")),
            Failure::Transient(_)
        ));
    }

    #[test]
    fn endpoints_are_validated() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            assert!(channel("http://127.0.0.1:1", DEFAULT_CONNECT_TIMEOUT).is_ok());
            assert!(matches!(
                channel("127.0.0.1:1", DEFAULT_CONNECT_TIMEOUT),
                Err(ClientError::InvalidConfig(_))
            ));
            assert!(matches!(
                channel("not a uri", DEFAULT_CONNECT_TIMEOUT),
                Err(ClientError::InvalidConfig(_))
            ));
        });
    }
}
