//! Serves a node's gRPC services (Inventory, Admin, Raft) on its one address, until
//! the shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;

use stockpile_proto::v1::admin_server::AdminServer;
use stockpile_proto::v1::inventory_server::InventoryServer;
use stockpile_proto::v1::raft_server::RaftServer;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api::admin::AdminService;
use crate::api::inventory::InventoryService;
use crate::api::raft_service::RaftService;
use crate::node::Node;

/// Largest gRPC message accepted or sent: Raft batches and snapshot chunks fit well.
pub const MESSAGE_BYTES_MAX: usize = 256 << 20;

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
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(stockpile_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let inventory = InventoryServer::new(InventoryService::new(node.clone()))
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let admin = AdminServer::new(AdminService::new(node.clone()));
    let raft = RaftServer::new(RaftService::new(node.clone()))
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    // Accepted connections get TCP_NODELAY here: the builder's own `tcp_nodelay` only
    // applies to listeners tonic binds itself. Without it, Nagle's algorithm and
    // delayed ACKs hold small replies back for up to 40 ms.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.and_then(|s| {
            s.set_nodelay(true)?;
            Ok(s)
        })
    });
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health)
        .add_service(reflection)
        .add_service(inventory)
        .add_service(admin)
        .add_service(raft)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
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
