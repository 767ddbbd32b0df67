//! The gRPC server every node builds ([`GrpcServer`]): health for the whole server and for each
//! served service follows readiness, and reflection lists exactly the services served.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use meridian_node::grpc::{GrpcServer, HEALTH_SERVICE, REFLECTION_SERVICE};
use meridian_node::{Conditions, Health};
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

/// A role's service, as far as the server builder sees it: a name and answers.
#[derive(Clone)]
struct RoleService;

impl NamedService for RoleService {
    const NAME: &'static str = "meridian.test.RoleService";
}

impl tonic::codegen::Service<Request<Body>> for RoleService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Body>) -> Self::Future {
        Box::pin(async { Ok(tonic::Status::unimplemented("test service").into_http()) })
    }
}

async fn status(client: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    let response = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("a known service");
    ServingStatus::try_from(response.into_inner().status).expect("a known status")
}

/// Waits (bounded) until health reports `expected` for both the server and the service: the
/// follower task applies a readiness change asynchronously.
async fn wait_for(client: &mut HealthClient<Channel>, expected: ServingStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let overall = status(client, "").await;
        let service = status(client, RoleService::NAME).await;
        if overall == expected && service == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health is {overall:?} / {service:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn listed_services(channel: Channel) -> Vec<String> {
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let response = responses
        .next()
        .await
        .expect("one response")
        .expect("not an error");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("not a service list: {response:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

#[tokio::test]
async fn health_follows_readiness_and_reflection_lists_only_the_served_services() {
    let health = Health::new();
    let readiness = Conditions::new(health.clone());
    readiness.fail("replica", "passive: the active replica is elsewhere");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let address = listener.local_addr().expect("bound");
    let shutdown = CancellationToken::new();
    // The extra descriptor set describes a service this node does not serve.
    let server = GrpcServer::new(
        &health,
        &[tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET],
    )
    .add_service(RoleService);
    assert_eq!(server.health_names(), vec!["", RoleService::NAME]);
    let serving = tokio::spawn(
        server
            .serve(listener, shutdown.clone())
            .expect("reflection builds"),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("a valid URI")
        .connect()
        .await
        .expect("the server listens");
    let mut client = HealthClient::new(channel.clone());

    // Not ready: NOT_SERVING for the whole server too, not only for the service.
    wait_for(&mut client, ServingStatus::NotServing).await;
    readiness.clear("replica");
    wait_for(&mut client, ServingStatus::Serving).await;
    readiness.fail("database", "unreachable");
    wait_for(&mut client, ServingStatus::NotServing).await;
    let unknown = client
        .check(HealthCheckRequest {
            service: "meridian.v1.LedgerService".to_owned(),
        })
        .await
        .expect_err("not served here");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    assert_eq!(
        listed_services(channel).await,
        vec![
            HEALTH_SERVICE.to_owned(),
            REFLECTION_SERVICE.to_owned(),
            RoleService::NAME.to_owned(),
        ]
    );

    shutdown.cancel();
    serving
        .await
        .expect("the server task")
        .expect("a clean stop");
}
