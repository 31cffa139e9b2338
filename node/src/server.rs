//! Serves a node's gRPC services (Inventory, Admin, Raft) on its one address, until
//! the shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;

use stockpile_proto::v1::admin_server::AdminServer;
use stockpile_proto::v1::inventory_server::InventoryServer;
use stockpile_proto::v1::raft_server::RaftServer;
use tokio::net::TcpListener;
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
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let inventory = InventoryServer::new(InventoryService::new(node.clone()))
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let admin = AdminServer::new(AdminService::new(node.clone()));
    let raft = RaftServer::new(RaftService::new(node.clone()))
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(inventory)
        .add_service(admin)
        .add_service(raft)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
