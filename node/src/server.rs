//! Serves a node's gRPC services (Inventory, Admin, Raft) and its HTTP/JSON face
//! (`api::http`) on its one address, until the shutdown signal.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::time::Duration;
use stockpile_proto::v1::admin_server::AdminServer;
use stockpile_proto::v1::inventory_server::InventoryServer;
use stockpile_proto::v1::raft_server::RaftServer;

use tokio::net::TcpListener;

use crate::api::admin::AdminService;
use crate::api::inventory::InventoryService;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

use crate::api::raft_service::RaftService;
use crate::api::status::to_status;
use crate::error::Error;
use crate::node::Node;
use futures::StreamExt;
use stockpile_client::cork::Corked;

/// Largest Inventory reply sent: a reply may be a few times its request (a Batch of
/// reservations returns every item's record), and requests are bounded by
/// `limits.request_bytes_max` (at most 64 MiB).
pub const REPLY_BYTES_MAX: usize = 256 << 20;

/// Request headers (metadata, including tokens) of one call at most.
const HEADER_LIST_BYTES_MAX: u32 = 64 << 10;

/// Streams a client may open and reset before the server has accepted them (HTTP/2
/// "rapid reset" floods).
const PENDING_RESETS_MAX: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("bad listen address {addr}: {source}")]
    Addr {
        addr: String,
        source: std::net::AddrParseError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds the node's address. Separate from `serve` so a caller knows the port is
/// taken before it starts anything else.
pub async fn bind(addr: &str) -> Result<TcpListener, ServeError> {
    let sock: SocketAddr = addr.parse().map_err(|source| ServeError::Addr {
        addr: addr.to_string(),
        source,
    })?;
    TcpListener::bind(sock)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.to_string(),
            source,
        })
}

pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    // Reflection as both `v1` and `v1alpha`: older grpcurl releases, Postman and
    // Python's grpcio-reflection still ask for v1alpha.
    let reflection_files = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(stockpile_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let reflection = reflection_files()
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection_files()
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    // A request over `limits.request_bytes_max` is refused from its length prefix,
    // unread, and answered REQUEST_TOO_LARGE; Raft messages may carry one call's
    // entries or a snapshot chunk.
    let request_bytes_max = node.cluster.limits.request_bytes_max;
    let inventory = TooLargeAnswer {
        inner: InventoryServer::new(InventoryService::new(node.clone()))
            .max_decoding_message_size(request_bytes_max)
            .max_encoding_message_size(REPLY_BYTES_MAX),
        limit_bytes: request_bytes_max as u64,
    };
    let admin = AdminServer::new(AdminService::new(node.clone()));
    let raft = RaftServer::new(RaftService::new(node.clone()))
        .max_decoding_message_size(node.cluster.raft_message_bytes_max())
        .max_encoding_message_size(node.cluster.raft_message_bytes_max());
    let tuning = &node.cluster.server;
    let keepalive = Duration::from_millis(tuning.keepalive_interval_ms);
    // gRPC services and the HTTP/JSON face (`api::http`) share one axum router: gRPC
    // by service path, HTTP under `/v1/`; anything else is answered by `fallback`.
    let routes = tonic::service::Routes::new(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(inventory)
        .add_service(admin)
        .add_service(raft)
        .into_axum_router()
        .merge(crate::api::http::router(node.clone()))
        .fallback(crate::api::http::fallback);
    let router = tonic::transport::Server::builder()
        .accept_http1(true)
        .max_concurrent_streams(tuning.streams_per_connection_max)
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive))
        .http2_max_header_list_size(HEADER_LIST_BYTES_MAX)
        .http2_max_pending_accept_reset_streams(Some(PENDING_RESETS_MAX))
        .add_routes(routes.into());
    let max = tuning.connections_max;
    if node.security.tls_on() {
        let incoming = crate::connections::tls_incoming(listener, max, node.security.clone())
            .map(|conn| conn.map(Corked::new));
        router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
    } else {
        let incoming =
            crate::connections::incoming(listener, max).map(|conn| conn.map(Corked::new));
        router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
    }
    Ok(())
}

/// Wraps a gRPC service whose requests tonic refuses over its decoding limit: tonic
/// answers those with a bare OUT_OF_RANGE before any of our code runs (and our code
/// never answers OUT_OF_RANGE itself), so that one answer becomes REQUEST_TOO_LARGE
/// with both sizes as fields, through the one error mapping.
#[derive(Clone)]
struct TooLargeAnswer<S> {
    inner: S,
    limit_bytes: u64,
}

impl<S: NamedService> NamedService for TooLargeAnswer<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for TooLargeAnswer<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let answer = self.inner.call(request);
        let limit_bytes = self.limit_bytes;
        Box::pin(async move {
            let response = answer.await?;
            let too_large = response
                .extensions()
                .get::<tonic::Status>()
                .filter(|s| s.code() == tonic::Code::OutOfRange)
                .map(|s| found_bytes(s.message()));
            Ok(match too_large {
                Some(size_bytes) => to_status(Error::RequestTooLarge {
                    what: "the request".into(),
                    size_bytes,
                    limit_bytes,
                })
                .into_http(),
                None => response,
            })
        })
    }
}

/// The size tonic names in its refusal ("... found 66060288 bytes, ..."), or 0 when its
/// wording changes: the limit, the reason and the code stay right either way.
fn found_bytes(message: &str) -> u64 {
    message
        .split_once("found ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Reports the node SERVING on the standard health service once it has joined every
/// shard (each knows a leader), and NOT_SERVING again when `stopping` fires.
pub fn spawn_health(
    node: Arc<Node>,
    reporter: tonic_health::server::HealthReporter,
    mut stopping: tokio::sync::broadcast::Receiver<()>,
) {
    tokio::spawn(async move {
        let services = ["", "stockpile.v1.Inventory", "stockpile.v1.Admin"];
        for s in services {
            reporter
                .set_service_status(s, tonic_health::ServingStatus::NotServing)
                .await;
        }
        let mut serving = false;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopping.recv() => break,
            }
            if !serving && node.joined() {
                serving = true;
                for s in services {
                    reporter
                        .set_service_status(s, tonic_health::ServingStatus::Serving)
                        .await;
                }
                tracing::info!("joined every shard: health SERVING");
            }
        }
        for s in services {
            reporter
                .set_service_status(s, tonic_health::ServingStatus::NotServing)
                .await;
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_refused_size_is_read_from_tonics_words_or_left_unknown() {
        assert_eq!(
            super::found_bytes(
                "Error, decoded message length too large: found 66060288 bytes, the limit is: 4194304 bytes"
            ),
            66_060_288
        );
        assert_eq!(super::found_bytes("something else"), 0);
    }
}
