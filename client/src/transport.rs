//! Connections: one lazily connected channel per node address (TLS when configured),
//! carrying the client's identity header and bearer token; and the helpers every RPC uses (deadlines, the reply size limit,
//! one answer mapping for calls to a named node).

use std::time::Duration;

use stockpile_proto::v1::inventory_client::InventoryClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use std::sync::atomic::Ordering;

use crate::classify::decode_detail;
use crate::{Client, Error};
/// A connection to one node: a lazily connected channel whose requests carry the
/// client's headers.
pub(crate) type Conn = InterceptedService<Channel, Headers>;

type Ascii = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// Adds `x-stockpile-client` (admission control budgets by it) and, with a token,
/// `authorization: Bearer …` to every request.
#[derive(Clone)]
pub(crate) struct Headers {
    pub(crate) identity: Ascii,
    pub(crate) authorization: Option<Ascii>,
}

impl tonic::service::Interceptor for Headers {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let m = request.metadata_mut();
        m.insert("x-stockpile-client", self.identity.clone());
        if let Some(a) = &self.authorization {
            m.insert("authorization", a.clone());
        }
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
        let bad = |e: tonic::transport::Error| Error::Config {
            message: format!("bad address {addr:?}: {e}"),
        };
        let scheme = if self.inner.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(bad)?
            .connect_timeout(self.inner.cfg.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.inner.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(bad)?;
        }
        let dialer = crate::cork::Dialer::new(self.inner.cfg.connect_timeout, None);
        let channel = endpoint.connect_with_connector_lazy(dialer);
        let conn = InterceptedService::new(channel, self.inner.headers.clone());
        channels.insert(addr.to_string(), conn.clone());
        Ok(conn)
    }

    /// One call to the named node, without routing or retries (operator calls, and
    /// tests that pin a node): a definite refusal keeps its reason; anything else is
    /// `Unavailable` naming the node.
    pub(crate) async fn at_node<T, F, Fut>(&self, node_id: u64, call: F) -> Result<T, Error>
    where
        F: FnOnce(Conn, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let addr = match self.node_addr(node_id) {
            Ok(addr) => addr,
            // A node the cached map does not know may have joined since: ask again.
            Err(_) => {
                let deadline = std::time::Instant::now() + self.inner.cfg.attempt_timeout;
                self.refresh_map(deadline).await?;
                self.node_addr(node_id)?
            }
        };
        self.at_addr(&addr, &format!("node {node_id}"), call).await
    }

    /// One call, one attempt, to the node at `addr` (named `who` in errors), whether
    /// or not the cached map lists it.
    pub(crate) async fn at_addr<T, F, Fut>(
        &self,
        addr: &str,
        who: &str,
        call: F,
    ) -> Result<T, Error>
    where
        F: FnOnce(Conn, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let t = self.inner.cfg.attempt_timeout;
        self.inner.rpcs.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(t, call(self.channel(addr)?, t)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(decode_detail(&s)
                .and_then(|d| Error::from_detail(&d, None))
                .unwrap_or(Error::Unavailable {
                    message: format!("{who}: {}", s.message()),
                })),
            Err(_) => Err(Error::Unavailable {
                message: format!("{who}: no answer within {} ms", t.as_millis()),
            }),
        }
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
