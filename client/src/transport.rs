//! Connections: one lazily connected channel per node address, carrying the client's
//! identity header; and the helpers every RPC uses (deadlines, the reply size limit,
//! one answer mapping for calls to a named node).

use std::time::Duration;

use stockpile_proto::v1::inventory_client::InventoryClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::{Client, Error};
/// A connection to one node: a lazily connected channel whose requests carry the
/// client identity header (admission control budgets by it).
pub(crate) type Conn = InterceptedService<Channel, Identity>;

/// Adds `x-stockpile-client` to every request.
#[derive(Clone)]
pub(crate) struct Identity(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Identity {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("x-stockpile-client", self.0.clone());
        Ok(request)
    }
}

/// Replies may be a few times their request (a Batch of reservations returns every
/// item's record): accept what a node may send.
pub(crate) const REPLY_BYTES_MAX: usize = 256 << 20;

pub(crate) fn inventory(ch: Conn) -> InventoryClient<Conn> {
    InventoryClient::new(ch).max_decoding_message_size(REPLY_BYTES_MAX)
}

pub(crate) fn with_timeout<T>(msg: T, t: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(t);
    r
}

/// The reply of an admin call to one named node, or `Unavailable` naming the node.
pub(crate) fn node_answer<T>(
    node_id: u64,
    answer: Result<Result<tonic::Response<T>, tonic::Status>, tokio::time::error::Elapsed>,
) -> Result<T, Error> {
    match answer {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(Error::Unavailable {
            message: format!("node {node_id}: {}", s.message()),
        }),
        Err(_) => Err(Error::Unavailable {
            message: format!("node {node_id}: no answer"),
        }),
    }
}

impl Client {
    pub(crate) fn channel(&self, addr: &str) -> Result<Conn, Error> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::Config {
                message: format!("bad address {addr:?}: {e}"),
            })?
            .connect_timeout(self.inner.cfg.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let conn = InterceptedService::new(
            endpoint.connect_lazy(),
            Identity(self.inner.identity.clone()),
        );
        channels.insert(addr.to_string(), conn.clone());
        Ok(conn)
    }

    /// The address of `node_id` in the cached shard map.
    pub(crate) fn node_addr(&self, node_id: u64) -> Result<String, Error> {
        self.routing()
            .map
            .nodes
            .get(&node_id)
            .map(|n| n.addr.clone())
            .ok_or_else(|| Error::Config {
                message: format!("no node {node_id}"),
            })
    }
}
