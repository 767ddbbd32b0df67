//! The one way a node serves gRPC: [`GrpcServer`] takes the role's services and adds what every
//! node's gRPC port has — `grpc.health.v1`, whose status mirrors the node's readiness for the
//! whole server (the empty service name) and for each service it serves, and reflection that
//! lists exactly those services — then serves them with TCP_NODELAY until shutdown, over TLS
//! when given [`ServerTls`] ([`GrpcServer::with_tls`]).
//!
//! Why here: a probe asking for `""` and one asking for a service must both agree with
//! `/readyz` (a passive replica is NOT_SERVING either way), and `grpcurl list` must show what
//! this node answers, not every service Meridian defines.

use std::convert::Infallible;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;

use crate::health::{grpc_health_service, Health};
use crate::tls::ServerTls;

/// The gRPC services of one node, with health and reflection added when served.
pub struct GrpcServer {
    health: Health,
    routes: RoutesBuilder,
    /// The role's services, for health and reflection.
    names: Vec<&'static str>,
    /// Encoded file descriptor sets describing them, for reflection.
    descriptors: Vec<&'static [u8]>,
    /// Serve TLS with this; plaintext without.
    tls: Option<Arc<ServerTls>>,
}

impl GrpcServer {
    /// A server whose health mirrors `health`. `descriptors` are the encoded file descriptor
    /// sets that describe the services to be added (e.g. `meridian_proto::FILE_DESCRIPTOR_SET`);
    /// reflection lists only the services added, whatever else the sets describe.
    pub fn new(health: &Health, descriptors: &[&'static [u8]]) -> Self {
        Self {
            health: health.clone(),
            routes: RoutesBuilder::default(),
            names: Vec::new(),
            descriptors: descriptors.to_vec(),
            tls: None,
        }
    }

    /// Serves TLS (mutual TLS when `tls` requires client certificates); `None` keeps the
    /// server plaintext, which only a `[tls] plaintext = true` config asks for.
    pub fn with_tls(mut self, tls: Option<Arc<ServerTls>>) -> Self {
        self.tls = tls;
        self
    }

    /// Serves `service` (a tonic-generated server, configured as the role needs it).
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// The names health reports on: the whole server (`""`) and every service added.
    pub fn health_names(&self) -> Vec<&'static str> {
        std::iter::once("")
            .chain(self.names.iter().copied())
            .collect()
    }

    /// Serves on `listener` until `shutdown` is cancelled. Health follows readiness until then.
    /// Call it inside a Tokio runtime (it spawns the health follower at once).
    pub fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>> + Send> {
        let mut reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for descriptor in &self.descriptors {
            reflection = reflection.register_encoded_file_descriptor_set(descriptor);
        }
        // Naming the services stops reflection from listing every service of the sets.
        for name in self
            .names
            .iter()
            .chain([&HEALTH_SERVICE, &REFLECTION_SERVICE])
        {
            reflection = reflection.with_service_name(*name);
        }
        let reflection = reflection.build_v1().context("building gRPC reflection")?;
        let health = grpc_health_service(&self.health, self.health_names(), &shutdown);
        let mut routes = self.routes;
        routes.add_service(health).add_service(reflection);
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &self.tls {
            builder = builder
                .tls_config(tls.tonic_config())
                .context("the gRPC server's TLS settings")?;
        }
        let router = builder.add_routes(routes.routes());
        Ok(async move {
            router
                .serve_with_incoming_shutdown(
                    // Without TCP_NODELAY, small replies wait on Nagle + delayed ACK (~10-40 ms).
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown.cancelled_owned(),
                )
                .await
                .context("gRPC server failed")
        })
    }
}

/// `grpc.health.v1.Health`, served by every node.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
/// `grpc.reflection.v1.ServerReflection`, served by every node.
pub const REFLECTION_SERVICE: &str = "grpc.reflection.v1.ServerReflection";

/// Binds the gRPC port, naming the address when it cannot.
pub async fn bind(address: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot bind gRPC on {address}"))
}
