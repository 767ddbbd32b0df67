//! End-to-end tests of the sequencer client against a scripted fake sequencer: a real tonic
//! server on 127.0.0.1 that authenticates with real signatures and serves the event streams
//! and send answers each test scripts, recording what the client asked for.

// The fake server and helpers are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use meridian_client::{
    register_member, Backoff, ClientError, SequencerClient, SequencerClientConfig, Subscription,
    ENDPOINT_COOLDOWN, FAILBACK_PROBE_INTERVAL,
};
use meridian_core::crypto::{
    authentication_challenge, PublicKey, Signature, SigningKey, SigningPurpose,
};
use meridian_core::sequencing::{Envelope, ForkError, Submission};
use meridian_core::{MemberId, MessageId, Timestamp};
use meridian_proto::v1;
use meridian_proto::v1::sequencer_admin_service_server::{
    SequencerAdminService, SequencerAdminServiceServer,
};
use meridian_proto::v1::sequencer_service_server::{SequencerService, SequencerServiceServer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

// ---------------------------------------------------------------------------------------------
// The fake sequencer.

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::SequencedEvent, Status>> + Send>>;

/// What the fake does after serving a scripted batch of events.
enum Then {
    /// Ends the stream cleanly (as a sequencer shutting down would).
    Close,
    /// Ends the stream cleanly and forgets all session tokens: a sequencer restart.
    Restart,
    /// Ends the stream with this status.
    Fail(Status),
    /// Keeps the stream open without sending anything more.
    Hang,
    /// Keeps the stream open, sending a keep-alive at this interval (a live, idle sequencer).
    KeepAlive(Duration),
}

enum SubscribeReply {
    Refuse(Status),
    Serve(Vec<v1::SequencedEvent>, Then),
}

/// Given the call index (from 0) and the requested `after_timestamp_us`.
type SubscribeScript = Box<dyn Fn(usize, Option<u64>) -> SubscribeReply + Send + Sync>;
type SendScript =
    Box<dyn Fn(usize, &v1::SendRequest) -> Result<v1::SendResponse, Status> + Send + Sync>;

#[derive(Default)]
struct Recorded {
    nonces: HashSet<Vec<u8>>,
    tokens: HashSet<String>,
    next_token: u64,
    authentications: usize,
    /// Every Send that reached the service, including those refused for their token.
    send_calls: Vec<v1::SendRequest>,
    /// Every Subscribe's `after_timestamp_us`, including refused ones.
    subscribe_afters: Vec<Option<u64>>,
    /// Every Subscribe's `keep_alive_interval_ms`.
    keep_alive_asked: Vec<Option<u32>>,
    acknowledged: Vec<u64>,
    registered: HashSet<String>,
}

struct FakeSequencer {
    member: MemberId,
    public_key: PublicKey,
    send: SendScript,
    subscribe: SubscribeScript,
    recorded: Mutex<Recorded>,
    /// Set when a served stream has been dropped by the server (the client went away).
    stream_dropped: Arc<AtomicBool>,
}

impl FakeSequencer {
    fn new(public_key: PublicKey, send: SendScript, subscribe: SubscribeScript) -> Arc<Self> {
        Arc::new(Self {
            member: member(),
            public_key,
            send,
            subscribe,
            recorded: Mutex::new(Recorded::default()),
            stream_dropped: Arc::new(AtomicBool::new(false)),
        })
    }

    fn recorded<T>(&self, read: impl FnOnce(&Recorded) -> T) -> T {
        read(&self.recorded.lock().unwrap())
    }

    /// What a sequencer restart does to sessions: tokens live only in memory.
    fn forget_tokens(&self) {
        self.recorded.lock().unwrap().tokens.clear();
    }

    fn check_token<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("missing authorization"))?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| Status::unauthenticated("not a bearer token"))?;
        if self.recorded.lock().unwrap().tokens.contains(token) {
            Ok(())
        } else {
            Err(Status::unauthenticated("unknown or expired token"))
        }
    }
}

/// The service wrapper tonic needs (the state is shared with the test through the Arc).
#[derive(Clone)]
struct Service(Arc<FakeSequencer>);

#[tonic::async_trait]
impl SequencerService for Service {
    async fn get_challenge(
        &self,
        request: Request<v1::GetChallengeRequest>,
    ) -> Result<Response<v1::GetChallengeResponse>, Status> {
        if request.get_ref().member != self.0.member.as_str() {
            return Err(Status::not_found("unknown member"));
        }
        let nonce: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
        self.0.recorded.lock().unwrap().nonces.insert(nonce.clone());
        Ok(Response::new(v1::GetChallengeResponse { nonce }))
    }

    async fn authenticate(
        &self,
        request: Request<v1::AuthenticateRequest>,
    ) -> Result<Response<v1::AuthenticateResponse>, Status> {
        let request = request.into_inner();
        let mut recorded = self.0.recorded.lock().unwrap();
        if !recorded.nonces.remove(&request.nonce) {
            return Err(Status::unauthenticated("unknown nonce"));
        }
        let signature = Signature::from_bytes(&request.signature)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.0
            .public_key
            .verify(
                SigningPurpose::SequencerAuthentication,
                &authentication_challenge(&self.0.member, &request.nonce),
                &signature,
            )
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        recorded.next_token += 1;
        recorded.authentications += 1;
        let token = format!("token-{}", recorded.next_token);
        recorded.tokens.insert(token.clone());
        Ok(Response::new(v1::AuthenticateResponse {
            token,
            expires_at_us: Timestamp::now()
                .saturating_add(Duration::from_secs(3600))
                .as_micros(),
        }))
    }

    async fn send(
        &self,
        request: Request<v1::SendRequest>,
    ) -> Result<Response<v1::SendResponse>, Status> {
        let index = {
            let mut recorded = self.0.recorded.lock().unwrap();
            recorded.send_calls.push(request.get_ref().clone());
            recorded.send_calls.len() - 1
        };
        self.0.check_token(&request)?;
        (self.0.send)(index, request.get_ref()).map(Response::new)
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let after = request.get_ref().after_timestamp_us;
        let index = {
            let mut recorded = self.0.recorded.lock().unwrap();
            recorded.subscribe_afters.push(after);
            recorded
                .keep_alive_asked
                .push(request.get_ref().keep_alive_interval_ms);
            recorded.subscribe_afters.len() - 1
        };
        self.0.check_token(&request)?;
        let (events, then) = match (self.0.subscribe)(index, after) {
            SubscribeReply::Refuse(status) => return Err(status),
            SubscribeReply::Serve(events, then) => (events, then),
        };
        let tail: EventStream = match then {
            Then::Close => Box::pin(futures::stream::empty()),
            Then::Restart => {
                self.0.forget_tokens();
                Box::pin(futures::stream::empty())
            }
            Then::Fail(status) => Box::pin(futures::stream::iter([Err(status)])),
            Then::Hang => Box::pin(futures::stream::pending()),
            Then::KeepAlive(interval) => {
                Box::pin(futures::stream::unfold((), move |()| async move {
                    tokio::time::sleep(interval).await;
                    let keep_alive = v1::SequencedEvent {
                        keep_alive: true,
                        ..Default::default()
                    };
                    Some((Ok(keep_alive), ()))
                }))
            }
        };
        let guard = DropFlag(Arc::clone(&self.0.stream_dropped));
        let stream = futures::stream::iter(events.into_iter().map(Ok))
            .chain(tail)
            .map(move |item| {
                let _keep_alive_until_the_stream_is_dropped = &guard;
                item
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn acknowledge(
        &self,
        request: Request<v1::AcknowledgeRequest>,
    ) -> Result<Response<v1::AcknowledgeResponse>, Status> {
        self.0.check_token(&request)?;
        let mut recorded = self.0.recorded.lock().unwrap();
        recorded.acknowledged.push(request.get_ref().timestamp_us);
        Ok(Response::new(v1::AcknowledgeResponse {}))
    }
}

#[tonic::async_trait]
impl SequencerAdminService for Service {
    async fn register_member(
        &self,
        request: Request<v1::RegisterMemberRequest>,
    ) -> Result<Response<v1::RegisterMemberResponse>, Status> {
        let request = request.into_inner();
        PublicKey::from_bytes(&request.public_key)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let created = self
            .0
            .recorded
            .lock()
            .unwrap()
            .registered
            .insert(request.member);
        Ok(Response::new(v1::RegisterMemberResponse { created }))
    }

    async fn list_members(
        &self,
        _request: Request<v1::ListMembersRequest>,
    ) -> Result<Response<v1::ListMembersResponse>, Status> {
        Ok(Response::new(v1::ListMembersResponse { members: vec![] }))
    }
}

struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

struct Running {
    endpoint: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    /// The fake's gRPC health service: it says nothing of the sequencer service (a client
    /// asking gets NOT_FOUND) until a test declares it serving.
    health: tonic_health::server::HealthReporter,
}

impl Running {
    /// Declares the sequencer service `SERVING` on the health service, as a ready instance.
    async fn report_serving(&self) {
        self.health
            .set_service_status(
                "meridian.v1.SequencerService",
                tonic_health::ServingStatus::Serving,
            )
            .await;
    }

    /// Stops accepting connections and closes the existing ones.
    async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        // Graceful shutdown waits for open streams; a hanging one would block it forever.
        if tokio::time::timeout(Duration::from_secs(2), &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
    }
}

async fn serve(fake: &Arc<FakeSequencer>) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (shutdown, shutdown_signal) = oneshot::channel::<()>();
    let service = Service(Arc::clone(fake));
    let (health, health_service) = tonic_health::server::health_reporter();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(SequencerServiceServer::new(service.clone()))
            .add_service(SequencerAdminServiceServer::new(service))
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = shutdown_signal.await;
            })
            .await
            .unwrap();
    });
    Running {
        endpoint,
        shutdown: Some(shutdown),
        server,
        health,
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn member() -> MemberId {
    MemberId::new("participant::p1").unwrap()
}

fn event(timestamp_us: u64, previous_timestamp_us: Option<u64>) -> v1::SequencedEvent {
    v1::SequencedEvent {
        timestamp_us,
        previous_timestamp_us,
        sender: "participant::p2".to_owned(),
        message_id: String::new(),
        envelopes: vec![v1::Envelope {
            recipients: vec![member().to_string()],
            payload: timestamp_us.to_be_bytes().to_vec(),
        }],
        keep_alive: false,
    }
}

/// Ten events 100..1000 as every instance would serve them, from `after`.
fn history_after(after: Option<u64>) -> Vec<v1::SequencedEvent> {
    (1..=10u64)
        .map(|k| event(100 * k, (k > 1).then(|| 100 * (k - 1))))
        .filter(|e| after.is_none_or(|after| e.timestamp_us > after))
        .collect()
}

/// Serves at most `count` events of [`history_after`] the requested point, then `then()`.
fn serving_history(
    count: usize,
    then: impl Fn() -> Then + Send + Sync + 'static,
) -> SubscribeScript {
    Box::new(move |_, after| {
        let events = history_after(after).into_iter().take(count).collect();
        SubscribeReply::Serve(events, then())
    })
}

/// A healthy instance: all of [`history_after`] the requested point, then keep-alives.
fn healthy_history(keep_alive_interval: Duration) -> SubscribeScript {
    serving_history(usize::MAX, move || Then::KeepAlive(keep_alive_interval))
}

/// Small delays so that outage tests finish in well under a second.
fn fast_backoff(max_attempts: u32) -> Backoff {
    Backoff {
        initial: Duration::from_millis(2),
        max: Duration::from_millis(20),
        max_attempts,
    }
}

/// One endpoint; stall detection off, since most fakes send no keep-alives.
fn config(endpoint: &str, key: &SigningKey, max_attempts: u32) -> SequencerClientConfig {
    SequencerClientConfig {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(5),
        backoff: fast_backoff(max_attempts),
        stall_timeout: None,
        ..SequencerClientConfig::new(endpoint, member(), key.clone())
    }
}

/// Several endpoints, with stall detection.
fn multi_config(
    endpoints: &[&str],
    key: &SigningKey,
    max_attempts: u32,
    stall_timeout: Duration,
) -> SequencerClientConfig {
    SequencerClientConfig {
        stall_timeout: Some(stall_timeout),
        ..config(endpoints[0], key, max_attempts).with_endpoints(endpoints.iter().copied())
    }
}

fn no_sends() -> SendScript {
    Box::new(|_, _| Err(Status::unimplemented("not scripted")))
}

fn no_subscriptions() -> SubscribeScript {
    Box::new(|_, _| SubscribeReply::Refuse(Status::unimplemented("not scripted")))
}

fn submission(message_id: &str, max_sequencing_time: Timestamp) -> Submission {
    Submission {
        sender: member(),
        message_id: MessageId::new(message_id).unwrap(),
        envelopes: vec![Envelope {
            recipients: vec![MemberId::new("participant::p2").unwrap()],
            payload: b"hello".to_vec(),
        }],
        max_sequencing_time,
    }
}

fn in_a_minute() -> Timestamp {
    Timestamp::now().saturating_add(Duration::from_secs(60))
}

/// A fake sequencer that knows the member by `key`, served on 127.0.0.1.
async fn served(
    key: &SigningKey,
    send: SendScript,
    subscribe: SubscribeScript,
) -> (Arc<FakeSequencer>, Running) {
    let fake = FakeSequencer::new(key.public_key(), send, subscribe);
    let server = serve(&fake).await;
    (fake, server)
}

/// A fake sequencer served on 127.0.0.1 and a client connected to it with one endpoint: how
/// every single-instance scenario starts.
async fn scenario(
    send: SendScript,
    subscribe: SubscribeScript,
    max_attempts: u32,
) -> (Arc<FakeSequencer>, Running, SequencerClient) {
    scenario_with(send, subscribe, |endpoint, key| {
        config(endpoint, key, max_attempts)
    })
    .await
}

/// A [`scenario`] whose client is configured by `client_config` (given the endpoint and key).
async fn scenario_with(
    send: SendScript,
    subscribe: SubscribeScript,
    client_config: impl FnOnce(&str, &SigningKey) -> SequencerClientConfig,
) -> (Arc<FakeSequencer>, Running, SequencerClient) {
    let key = SigningKey::generate();
    let (fake, server) = served(&key, send, subscribe).await;
    let client = SequencerClient::connect(client_config(&server.endpoint, &key))
        .await
        .unwrap();
    (fake, server, client)
}

/// A [`scenario`] of sends only (subscriptions are not scripted).
async fn sending(
    send: SendScript,
    max_attempts: u32,
) -> (Arc<FakeSequencer>, Running, SequencerClient) {
    scenario(send, no_subscriptions(), max_attempts).await
}

/// A [`scenario`] of subscriptions only (sends are not scripted), subscribed from the start.
async fn subscribed(
    subscribe: SubscribeScript,
    max_attempts: u32,
) -> (Arc<FakeSequencer>, Running, Subscription) {
    let (fake, server, client) = scenario(no_sends(), subscribe, max_attempts).await;
    (fake, server, client.subscribe(None))
}

/// What one instance of the fake serves: its send and its subscribe script.
type Scripts = (SendScript, SubscribeScript);

/// Two instances of one sequencer, served, and one client connected to both.
struct TwoInstances {
    a: Arc<FakeSequencer>,
    b: Arc<FakeSequencer>,
    server_a: Running,
    server_b: Running,
    client: SequencerClient,
}

impl TwoInstances {
    /// Serves instances scripted by `a` and `b` and connects one client to both, with stall
    /// detection.
    async fn start(a: Scripts, b: Scripts, max_attempts: u32, stall_timeout: Duration) -> Self {
        let key = SigningKey::generate();
        let (a, server_a) = served(&key, a.0, a.1).await;
        let (b, server_b) = served(&key, b.0, b.1).await;
        let client = SequencerClient::connect(multi_config(
            &[&server_a.endpoint, &server_b.endpoint],
            &key,
            max_attempts,
            stall_timeout,
        ))
        .await
        .unwrap();
        Self {
            a,
            b,
            server_a,
            server_b,
            client,
        }
    }
}

/// Refuses every send with `refusal`.
fn refusing_sends(refusal: Status) -> SendScript {
    Box::new(move |_, _| Err(refusal.clone()))
}

/// Answers every send with `timestamp_us` plus the call index.
fn answer_with(timestamp_us: u64) -> SendScript {
    Box::new(move |index, _| {
        Ok(v1::SendResponse {
            timestamp_us: timestamp_us + index as u64,
            deduplicated: false,
        })
    })
}

/// The timestamp of the next item, which must be an event.
async fn next_timestamp(subscription: &mut Subscription) -> u64 {
    next(subscription)
        .await
        .expect("the subscription ended")
        .expect("an error instead of an event")
        .timestamp
        .as_micros()
}

/// The error a subscription ends with: its next item must be an error, and nothing follows.
async fn final_error(subscription: &mut Subscription) -> ClientError {
    let error = match next(subscription).await {
        Some(Err(error)) => error,
        other => panic!("expected an error, got {other:?}"),
    };
    assert!(
        next(subscription).await.is_none(),
        "nothing after the error {error:?}"
    );
    error
}

/// Checks that the subscription yields nothing (neither an item nor its end) for `quiet_ms`.
async fn assert_quiet(subscription: &mut Subscription, quiet_ms: u64) {
    let item = tokio::time::timeout(Duration::from_millis(quiet_ms), subscription.next()).await;
    assert!(item.is_err(), "unexpected item: {item:?}");
}

/// The next item, failing the test instead of hanging if none comes.
async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the subscription neither yielded nor ended within 10 s")
}

// ---------------------------------------------------------------------------------------------
// (a) Chain check.

#[tokio::test]
async fn rewritten_history_after_reconnect_is_a_fork_and_ends_the_stream() {
    // The member sees 10 and 20; the stream breaks; the sequencer comes back having lost 20
    // and sequenced 25 after a 15 the member never saw.
    let (fake, server, mut subscription) = subscribed(
        Box::new(|index, _| match index {
            0 => SubscribeReply::Serve(vec![event(10, None), event(20, Some(10))], Then::Close),
            _ => SubscribeReply::Serve(vec![event(25, Some(15)), event(30, Some(25))], Then::Hang),
        }),
        5,
    )
    .await;

    let first = next(&mut subscription).await.unwrap().unwrap();
    let second = next(&mut subscription).await.unwrap().unwrap();
    assert_eq!(first.timestamp.as_micros(), 10);
    assert_eq!(second.timestamp.as_micros(), 20);
    // The fork ends the stream: nothing after it, not even 30.
    match final_error(&mut subscription).await {
        ClientError::Fork(ForkError::PreviousMismatch {
            timestamp,
            claimed_previous,
            last_processed,
        }) => {
            assert_eq!(timestamp.as_micros(), 25);
            assert_eq!(claimed_previous.map(Timestamp::as_micros), Some(15));
            assert_eq!(last_processed.map(Timestamp::as_micros), Some(20));
        }
        other => panic!("expected a fork, got {other:?}"),
    }
    assert_eq!(
        fake.recorded(|r| r.subscribe_afters.clone()),
        vec![None, Some(20)]
    );
    server.stop().await;
}

/// Subscribes to a fake serving `script`: the events at `delivered` come through in order, and
/// then a fork for which `expected` holds ends the subscription.
async fn assert_fork_after(
    script: SubscribeScript,
    delivered: &[u64],
    expected: fn(&ForkError) -> bool,
) {
    let (_fake, server, mut subscription) = subscribed(script, 5).await;
    for timestamp_us in delivered {
        assert_eq!(next_timestamp(&mut subscription).await, *timestamp_us);
    }
    match final_error(&mut subscription).await {
        ClientError::Fork(fork) => assert!(expected(&fork), "{fork:?}"),
        other => panic!("expected a fork, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn a_gap_within_one_stream_is_a_fork() {
    assert_fork_after(
        Box::new(|_, _| {
            SubscribeReply::Serve(vec![event(10, None), event(30, Some(20))], Then::Hang)
        }),
        &[10],
        |fork| matches!(fork, ForkError::PreviousMismatch { .. }),
    )
    .await;
}

#[tokio::test]
async fn a_replayed_history_is_a_fork_not_a_duplicate_to_skip() {
    // On reconnect the sequencer ignores `after` and starts over.
    assert_fork_after(
        Box::new(|index, _| {
            let then = if index == 0 { Then::Close } else { Then::Hang };
            SubscribeReply::Serve(vec![event(10, None), event(20, Some(10))], then)
        }),
        &[10, 20],
        |fork| matches!(fork, ForkError::NotIncreasing { .. }),
    )
    .await;
}

#[tokio::test]
async fn the_chain_check_starts_at_the_given_after() {
    // The member resumes after 20, but the sequencer's history says the event after 20 ...
    // follows 15: the member's own past and the sequencer's disagree.
    let (fake, server, client) = scenario(
        no_sends(),
        Box::new(|_, _| SubscribeReply::Serve(vec![event(30, Some(15))], Then::Hang)),
        5,
    )
    .await;
    let mut subscription = client.subscribe(Some(Timestamp::from_micros(20)));
    assert!(matches!(
        next(&mut subscription).await,
        Some(Err(ClientError::Fork(_)))
    ));
    assert_eq!(
        fake.recorded(|r| r.subscribe_afters.clone()),
        vec![Some(20)]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_malformed_event_is_a_protocol_error_and_ends_the_stream() {
    let (_fake, server, mut subscription) = subscribed(
        Box::new(|_, _| {
            let mut bad = event(20, Some(10));
            bad.sender = "not a member id".to_owned();
            SubscribeReply::Serve(vec![event(10, None), bad, event(30, Some(20))], Then::Hang)
        }),
        5,
    )
    .await;
    next(&mut subscription).await.unwrap().unwrap();
    match final_error(&mut subscription).await {
        ClientError::Protocol(message) => assert!(message.contains("sender"), "{message}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// (b) Reconnects.

#[tokio::test]
async fn reconnects_resume_after_the_last_delivered_event_exactly_once() {
    // Ten events 100, 200, ..., 1000. Each stream serves at most three events after `after`
    // and then breaks, alternately cleanly and with UNAVAILABLE; the last one stays open.
    // Two attempts only: the four breaks in a row succeed only because each reconnect that
    // delivers resets the backoff.
    let (fake, server, mut subscription) = subscribed(
        Box::new(move |index, after| {
            let rest = history_after(after);
            let served: Vec<_> = rest.iter().take(3).cloned().collect();
            let then = if rest.len() <= 3 {
                Then::Hang
            } else if index % 2 == 0 {
                Then::Close
            } else {
                Then::Fail(Status::unavailable("sequencer restarting"))
            };
            SubscribeReply::Serve(served, then)
        }),
        2,
    )
    .await;

    let mut delivered = Vec::new();
    while delivered.len() < 10 {
        let event = next(&mut subscription)
            .await
            .expect("stream ended early")
            .expect("error instead of an event");
        delivered.push(event.timestamp.as_micros());
    }
    assert_eq!(delivered, (1..=10).map(|k| 100 * k).collect::<Vec<u64>>());
    // Nothing else after the tenth event: no duplicate, no error.
    assert_quiet(&mut subscription, 300).await;
    assert_eq!(
        fake.recorded(|r| r.subscribe_afters.clone()),
        vec![None, Some(300), Some(600), Some(900)]
    );
    server.stop().await;
}

#[tokio::test]
async fn subscription_survives_a_sequencer_restart_that_forgets_sessions() {
    let (fake, server, mut subscription) = subscribed(
        Box::new(|index, _| match index {
            0 => SubscribeReply::Serve(vec![event(10, None)], Then::Restart),
            _ => SubscribeReply::Serve(vec![event(20, Some(10))], Then::Hang),
        }),
        3,
    )
    .await;
    assert_eq!(next_timestamp(&mut subscription).await, 10);
    assert_eq!(next_timestamp(&mut subscription).await, 20);
    assert_eq!(
        fake.recorded(|r| r.authentications),
        2,
        "one re-authentication"
    );
    // The refused resubscribe and its repetition after re-authenticating both resume after 10.
    assert_eq!(
        fake.recorded(|r| r.subscribe_afters.clone()),
        vec![None, Some(10), Some(10)]
    );
    server.stop().await;
}

#[tokio::test]
async fn dropping_the_subscription_stops_it() {
    let (fake, server, mut subscription) = subscribed(
        Box::new(|_, _| SubscribeReply::Serve(vec![event(10, None)], Then::Hang)),
        3,
    )
    .await;
    next(&mut subscription).await.unwrap().unwrap();
    assert!(!fake.stream_dropped.load(Ordering::SeqCst));
    drop(subscription);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fake.stream_dropped.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the server still streams to a dropped subscription"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        fake.recorded(|r| r.subscribe_afters.len()),
        1,
        "no resubscribe"
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// (c) Authentication.

#[tokio::test]
async fn send_re_authenticates_once_when_the_token_is_refused() {
    let (fake, server, client) = sending(
        Box::new(|_, _| {
            Ok(v1::SendResponse {
                timestamp_us: 1_000,
                deduplicated: false,
            })
        }),
        3,
    )
    .await;
    assert_eq!(fake.recorded(|r| r.authentications), 1);

    fake.forget_tokens();
    let receipt = client.send(submission("m-1", in_a_minute())).await.unwrap();
    assert_eq!(receipt.timestamp.as_micros(), 1_000);
    assert!(!receipt.deduplicated);
    assert_eq!(fake.recorded(|r| r.authentications), 2);
    let calls = fake.recorded(|r| r.send_calls.clone());
    assert_eq!(calls.len(), 2, "the refused call and its repetition");
    assert_eq!(calls[0], calls[1], "the repetition is the same submission");

    // The new token is kept: the next send needs no authentication.
    client.send(submission("m-2", in_a_minute())).await.unwrap();
    assert_eq!(fake.recorded(|r| r.authentications), 2);
    server.stop().await;
}

#[tokio::test]
async fn concurrent_callers_share_one_re_authentication() {
    let (fake, server, client) = sending(answer_with(1_000), 3).await;
    fake.forget_tokens();
    let sends = (0..8).map(|i| {
        let client = client.clone();
        async move {
            client
                .send(submission(&format!("m-{i}"), in_a_minute()))
                .await
        }
    });
    for result in futures::future::join_all(sends).await {
        result.unwrap();
    }
    assert_eq!(fake.recorded(|r| r.authentications), 2);
    server.stop().await;
}

#[tokio::test]
async fn acknowledge_carries_the_token_and_the_timestamp() {
    let (fake, server, client) = scenario(no_sends(), no_subscriptions(), 3).await;
    client
        .acknowledge(Timestamp::from_micros(42))
        .await
        .unwrap();
    fake.forget_tokens();
    client
        .acknowledge(Timestamp::from_micros(43))
        .await
        .unwrap();
    assert_eq!(fake.recorded(|r| r.acknowledged.clone()), vec![42, 43]);
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_key_is_refused_without_retrying() {
    let registered = SigningKey::generate();
    let (fake, server) = served(&registered, no_sends(), no_subscriptions()).await;
    let wrong = SigningKey::generate();
    match SequencerClient::connect(config(&server.endpoint, &wrong, 10)).await {
        Err(ClientError::Unauthenticated(message)) => {
            assert!(message.contains("signature"), "{message}")
        }
        other => panic!("expected Unauthenticated, got {other:?}"),
    }
    assert_eq!(fake.recorded(|r| r.authentications), 0);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// (d) Send retries.

#[tokio::test]
async fn send_does_not_retry_a_definite_rejection() {
    let (fake, server, client) = sending(
        refusing_sends(Status::invalid_argument(
            "max sequencing time is in the past",
        )),
        10,
    )
    .await;
    match client.send(submission("m-1", in_a_minute())).await {
        Err(ClientError::Rejected { code, message }) => {
            assert_eq!(code, Code::InvalidArgument);
            assert_eq!(message, "max sequencing time is in the past");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(fake.recorded(|r| r.send_calls.len()), 1);
    server.stop().await;
}

#[tokio::test]
async fn send_retries_unavailable_with_the_same_message_id() {
    let (fake, server, client) = sending(
        Box::new(|index, _| match index {
            0 | 1 => Err(Status::unavailable("writer failing over")),
            _ => Ok(v1::SendResponse {
                timestamp_us: 7_000,
                deduplicated: true,
            }),
        }),
        5,
    )
    .await;
    let receipt = client.send(submission("m-1", in_a_minute())).await.unwrap();
    assert_eq!(receipt.timestamp.as_micros(), 7_000);
    assert!(receipt.deduplicated);
    let calls = fake.recorded(|r| r.send_calls.clone());
    assert_eq!(calls.len(), 3);
    for call in &calls {
        assert_eq!(call.submission.as_ref().unwrap().message_id, "m-1");
    }
    server.stop().await;
}

#[tokio::test]
async fn send_gives_up_after_max_attempts() {
    let (fake, server, client) =
        sending(refusing_sends(Status::unavailable("overloaded")), 4).await;
    match client.send(submission("m-1", in_a_minute())).await {
        Err(ClientError::Unavailable {
            endpoint,
            attempts,
            last_error,
            ..
        }) => {
            assert_eq!(endpoint, server.endpoint);
            assert_eq!(attempts, 4);
            assert!(last_error.contains("overloaded"), "{last_error}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(fake.recorded(|r| r.send_calls.len()), 4);
    server.stop().await;
}

#[tokio::test]
async fn send_stops_retrying_when_the_max_sequencing_time_passes() {
    let (fake, server, client) = scenario_with(
        refusing_sends(Status::unavailable("overloaded")),
        no_subscriptions(),
        |endpoint, key| {
            let mut config = config(endpoint, key, 1_000);
            config.backoff.initial = Duration::from_millis(20);
            config.backoff.max = Duration::from_millis(50);
            config
        },
    )
    .await;
    let started = Instant::now();
    let deadline = Timestamp::now().saturating_add(Duration::from_millis(300));
    match client.send(submission("m-1", deadline)).await {
        Err(ClientError::Timeout { last_error }) => assert!(last_error.contains("overloaded")),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let calls = fake.recorded(|r| r.send_calls.len());
    assert!((2..100).contains(&calls), "{calls} calls");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// (e) Outages.

#[tokio::test]
async fn subscribe_gives_up_after_bounded_attempts_when_the_sequencer_is_down() {
    let (fake, server, client) = scenario(no_sends(), no_subscriptions(), 4).await;
    let endpoint = server.endpoint.clone();
    server.stop().await;

    let started = Instant::now();
    let mut subscription = client.subscribe(None);
    match final_error(&mut subscription).await {
        ClientError::Unavailable {
            endpoint: reported,
            attempts,
            ..
        } => {
            assert_eq!(reported, endpoint);
            assert_eq!(attempts, 4);
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(fake.recorded(|r| r.subscribe_afters.is_empty()));
}

/// Subscribes, with `max_attempts`, to a fake that answers every Subscribe with `refusal`:
/// the subscription ends with an error for which `expected` holds, after `calls` Subscribes.
async fn assert_refused_subscription(
    refusal: Status,
    max_attempts: u32,
    expected: fn(&ClientError) -> bool,
    calls: usize,
) {
    let (fake, server, mut subscription) = subscribed(
        Box::new(move |_, _| SubscribeReply::Refuse(refusal.clone())),
        max_attempts,
    )
    .await;
    let error = final_error(&mut subscription).await;
    assert!(expected(&error), "{error:?}");
    assert_eq!(fake.recorded(|r| r.subscribe_afters.len()), calls);
    server.stop().await;
}

#[tokio::test]
async fn subscribe_counts_unavailable_answers_as_failed_attempts() {
    assert_refused_subscription(
        Status::unavailable("not ready"),
        3,
        |error| matches!(error, ClientError::Unavailable { attempts: 3, .. }),
        3,
    )
    .await;
}

#[tokio::test]
async fn subscribe_ends_on_a_definite_refusal() {
    assert_refused_subscription(
        Status::permission_denied("not your events"),
        5,
        |error| {
            matches!(
                error,
                ClientError::Rejected {
                    code: Code::PermissionDenied,
                    ..
                }
            )
        },
        1,
    )
    .await;
}

#[tokio::test]
async fn connect_gives_up_when_nothing_listens() {
    // Bind and release a port so that nothing listens on it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let key = SigningKey::generate();
    match SequencerClient::connect(config(&endpoint, &key, 3)).await {
        Err(ClientError::Unavailable { attempts, .. }) => assert_eq!(attempts, 3),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn connect_rejects_an_endpoint_without_scheme() {
    let key = SigningKey::generate();
    assert!(matches!(
        SequencerClient::connect(config("127.0.0.1:1", &key, 3)).await,
        Err(ClientError::InvalidConfig(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Admin.

#[tokio::test]
async fn register_member_reports_whether_it_created() {
    let key = SigningKey::generate();
    let (_fake, server) = served(&key, no_sends(), no_subscriptions()).await;
    let p1 = member();
    assert!(register_member(&server.endpoint, &p1, &key.public_key())
        .await
        .unwrap());
    assert!(!register_member(&server.endpoint, &p1, &key.public_key())
        .await
        .unwrap());
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// (f) Several endpoints: one home for sends and the subscription, failover, stall detection.

fn message_ids(fake: &FakeSequencer) -> Vec<String> {
    fake.recorded(|r| {
        r.send_calls
            .iter()
            .map(|call| call.submission.as_ref().unwrap().message_id.clone())
            .collect()
    })
}

/// Sends do not spread over the instances: two instances writing would each make the other's
/// events wait for its watermark.
#[tokio::test]
async fn sends_stay_on_the_first_endpoint_while_it_is_healthy() {
    let TwoInstances {
        a,
        b,
        server_a,
        server_b,
        client,
    } = TwoInstances::start(
        (answer_with(1_000), no_subscriptions()),
        (answer_with(2_000), no_subscriptions()),
        3,
        Duration::from_secs(1),
    )
    .await;
    for i in 0..4 {
        client
            .send(submission(&format!("m{i}"), in_a_minute()))
            .await
            .unwrap();
    }
    assert_eq!(message_ids(&a), vec!["m0", "m1", "m2", "m3"]);
    assert!(message_ids(&b).is_empty());
    // Tokens are per instance: the member authenticated once with each, with the spare ahead
    // of any use, so that a failover finds a session waiting.
    assert_eq!(a.recorded(|r| r.authentications), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while b.recorded(|r| r.authentications) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.recorded(|r| r.authentications), 1);
    assert!(message_ids(&b).is_empty());
    assert_eq!(
        client.endpoints(),
        vec![server_a.endpoint.clone(), server_b.endpoint.clone()]
    );
    server_a.stop().await;
    server_b.stop().await;
}

#[tokio::test]
async fn a_failed_send_moves_to_the_next_endpoint_with_the_same_message_id() {
    let TwoInstances {
        a,
        b,
        server_a,
        server_b,
        client,
    } = TwoInstances::start(
        (
            refusing_sends(Status::unavailable("instance going down")),
            no_subscriptions(),
        ),
        (answer_with(2_000), no_subscriptions()),
        1,
        Duration::from_secs(1),
    )
    .await;
    // One attempt (a round over both endpoints) is enough: the failover needs no backoff.
    let started = Instant::now();
    let receipt = client.send(submission("m0", in_a_minute())).await.unwrap();
    assert_eq!(receipt.timestamp.as_micros(), 2_000);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(message_ids(&a), vec!["m0"]);
    assert_eq!(
        message_ids(&b),
        vec!["m0"],
        "retried with the same message id"
    );
    // A is cooling down now: the following sends go to B first, whoever's turn it is.
    for i in 1..4 {
        client
            .send(submission(&format!("m{i}"), in_a_minute()))
            .await
            .unwrap();
    }
    assert_eq!(message_ids(&a), vec!["m0"]);
    assert_eq!(message_ids(&b), vec!["m0", "m1", "m2", "m3"]);
    let endpoints = (server_a.endpoint.clone(), server_b.endpoint.clone());
    server_a.stop().await;

    // With every endpoint failing, the error names them all.
    server_b.stop().await;
    match client.send(submission("m4", in_a_minute())).await {
        Err(ClientError::Unavailable {
            endpoint, attempts, ..
        }) => {
            assert_eq!(attempts, 1);
            assert!(
                endpoint.contains(&endpoints.0) && endpoint.contains(&endpoints.1),
                "{endpoint}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_broken_stream_resumes_on_the_next_endpoint_without_gap_or_duplicate() {
    // A serves three events and fails; B serves the rest and stays open with keep-alives.
    let TwoInstances {
        a,
        b,
        server_a,
        server_b,
        client,
    } = TwoInstances::start(
        (
            answer_with(1_000),
            serving_history(3, || Then::Fail(Status::unavailable("instance killed"))),
        ),
        (
            answer_with(2_000),
            healthy_history(Duration::from_millis(50)),
        ),
        2,
        Duration::from_millis(500),
    )
    .await;
    let mut subscription = client.subscribe(None);
    let mut delivered = Vec::new();
    while delivered.len() < 10 {
        let event = next(&mut subscription).await.unwrap().unwrap();
        delivered.push(event.timestamp.as_micros());
    }
    assert_eq!(delivered, (1..=10).map(|k| 100 * k).collect::<Vec<u64>>());
    assert_eq!(a.recorded(|r| r.subscribe_afters.clone()), vec![None]);
    assert_eq!(b.recorded(|r| r.subscribe_afters.clone()), vec![Some(300)]);
    // B's keep-alives keep the subscription there, and nothing more arrives.
    assert_quiet(&mut subscription, 1_200).await;
    assert_eq!(
        b.recorded(|r| r.subscribe_afters.len()),
        1,
        "no resubscribe"
    );
    // Sends follow the subscription to B, also once A's cooldown has passed and A would
    // answer: the member's events then come from the instance it reads from.
    tokio::time::sleep(ENDPOINT_COOLDOWN).await;
    client.send(submission("m0", in_a_minute())).await.unwrap();
    assert!(message_ids(&a).is_empty(), "{:?}", message_ids(&a));
    assert_eq!(message_ids(&b), vec!["m0"]);
    server_a.stop().await;
    server_b.stop().await;
}

/// A member away from the first endpoint returns to it once it serves again, so that members
/// that failed over and members that started later end up on one instance again.
#[tokio::test]
async fn a_subscription_returns_to_the_first_endpoint_once_it_serves_again() {
    // A serves three events and fails the first stream; every later one is healthy.
    let a_subscriptions: SubscribeScript = Box::new(|call, after| {
        let history = history_after(after);
        if call == 0 {
            let first_three = history.into_iter().take(3).collect();
            SubscribeReply::Serve(first_three, Then::Fail(Status::unavailable("restarting")))
        } else {
            SubscribeReply::Serve(history, Then::KeepAlive(Duration::from_millis(50)))
        }
    });
    let TwoInstances {
        a,
        b,
        server_a,
        server_b,
        client,
    } = TwoInstances::start(
        (answer_with(1_000), a_subscriptions),
        (
            answer_with(2_000),
            healthy_history(Duration::from_millis(50)),
        ),
        2,
        Duration::from_millis(500),
    )
    .await;
    let mut subscription = client.subscribe(None);
    let mut delivered = Vec::new();
    while delivered.len() < 10 {
        delivered.push(next_timestamp(&mut subscription).await);
    }
    assert_eq!(delivered, (1..=10).map(|k| 100 * k).collect::<Vec<u64>>());
    // A does not say it serves: the subscription stays on B.
    assert_quiet(&mut subscription, 1_500).await;
    assert_eq!(a.recorded(|r| r.subscribe_afters.clone()), vec![None]);

    let back_from = Instant::now();
    server_a.report_serving().await;
    let deadline = back_from + FAILBACK_PROBE_INTERVAL * 3;
    while a.recorded(|r| r.subscribe_afters.len()) < 2 {
        assert!(Instant::now() < deadline, "no failback to A");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Resumed on A after the last event handed over: no gap, no duplicate.
    assert_eq!(
        a.recorded(|r| r.subscribe_afters.clone()),
        vec![None, Some(1_000)]
    );
    assert_quiet(&mut subscription, 300).await;
    // Sends follow the subscription back.
    client.send(submission("m0", in_a_minute())).await.unwrap();
    assert_eq!(message_ids(&a), vec!["m0"]);
    assert!(message_ids(&b).is_empty(), "{:?}", message_ids(&b));
    server_a.stop().await;
    server_b.stop().await;
}

#[tokio::test]
async fn a_stalled_endpoint_is_detected_within_the_stall_timeout() {
    // A serves two events and then sends nothing at all, as a paused (SIGSTOPped) process
    // would; B is healthy.
    let stall = Duration::from_millis(400);
    let TwoInstances {
        a: _,
        b,
        server_a,
        server_b,
        client,
    } = TwoInstances::start(
        (no_sends(), serving_history(2, || Then::Hang)),
        (no_sends(), healthy_history(Duration::from_millis(100))),
        2,
        stall,
    )
    .await;
    let mut subscription = client.subscribe(None);
    for expected in [100, 200] {
        assert_eq!(next_timestamp(&mut subscription).await, expected);
    }
    let stalled_at = Instant::now();
    assert_eq!(next_timestamp(&mut subscription).await, 300);
    let resumed_after = stalled_at.elapsed();
    assert!(
        resumed_after >= stall,
        "switched before the stall timeout: {resumed_after:?}"
    );
    assert!(
        resumed_after < stall * 3,
        "stall detected late: {resumed_after:?}"
    );
    assert_eq!(b.recorded(|r| r.subscribe_afters.clone()), vec![Some(200)]);
    for _ in 3..10 {
        next(&mut subscription).await.unwrap().unwrap();
    }
    server_a.stop().await;
    server_b.stop().await;
}

#[tokio::test]
async fn subscriptions_ask_for_keep_alives_at_half_the_stall_timeout() {
    let (fake, server, client) = scenario_with(
        no_sends(),
        // An idle sequencer: no events, only keep-alives.
        serving_history(0, || Then::KeepAlive(Duration::from_millis(50))),
        |endpoint, key| multi_config(&[endpoint], key, 2, Duration::from_millis(600)),
    )
    .await;
    let mut subscription = client.subscribe(None);
    // Keep-alives are not events: nothing is yielded, and the stream is not seen as stalled.
    assert_quiet(&mut subscription, 1_500).await;
    assert_eq!(fake.recorded(|r| r.subscribe_afters.len()), 1);
    assert_eq!(
        fake.recorded(|r| r.keep_alive_asked.clone()),
        vec![Some(300)]
    );
    server.stop().await;
}
