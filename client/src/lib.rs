//! `stockpile-client`: the Rust client of Stockpile.
//!
//! A [`Client`] is built from seed addresses. It fetches the shard map, routes each
//! request to the leader of the shard that owns its SKU, follows `NOT_LEADER` hints,
//! skips nodes that failed recently, and retries what is safe to retry inside the
//! caller's deadline. Every mutation gets a request id once and keeps it on every
//! retry, so the store applies it at most once; when the client cannot learn whether
//! a mutation happened it says so with [`Error::OutcomeUnknown`], carrying the id to
//! retry with.
//!
//! ```no_run
//! # async fn demo() -> Result<(), stockpile_client::Error> {
//! use stockpile_client::Client;
//! let client = Client::builder().seeds(["127.0.0.1:7001"]).build().await?;
//! client.set_stock("sku-1", 10).await?;
//! let left = client.decrement("sku-1", 3).await?.stock.available;
//! assert_eq!(left, 7);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod coalesce;
mod error;
mod mutation;
mod routing;
mod types;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use stockpile_proto::v1 as pb;
use stockpile_proto::v1::admin_client::AdminClient;
use stockpile_proto::v1::inventory_client::InventoryClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub use coalesce::CoalesceConfig;
pub use error::Error;
pub use mutation::{Mutation, MutationOutcome};
pub use routing::{NodeInfo, ShardInfo, ShardMap};
pub use types::*;

/// The wire types, for callers that need them (cluster status).
pub use stockpile_proto::v1 as proto;

/// The local 3-node cluster of `cluster-config/local-3node.toml`.
pub const LOCAL_CLUSTER: [&str; 3] = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"];

/// Builds a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    seeds: Vec<String>,
    region: Option<String>,
    request_timeout: Duration,
    attempt_timeout: Duration,
    connect_timeout: Duration,
    coalesce: CoalesceConfig,
    identity: String,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            seeds: Vec::new(),
            region: None,
            request_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(500),
            coalesce: CoalesceConfig::default(),
            identity: "anonymous".to_string(),
        }
    }
}

impl ClientBuilder {
    /// Addresses (`host:port`) of some nodes; any one reachable node is enough.
    pub fn seeds<S: Into<String>>(mut self, seeds: impl IntoIterator<Item = S>) -> Self {
        self.seeds = seeds.into_iter().map(Into::into).collect();
        self
    }

    /// The client's region: nodes there are tried first for discovery and stale reads.
    /// Default: none (no preference).
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// The deadline of one call, retries included. Default 10 s.
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// The longest one attempt may take before the client tries another node.
    /// Default 2 s.
    pub fn attempt_timeout(mut self, t: Duration) -> Self {
        self.attempt_timeout = t;
        self
    }

    /// Connection attempts give up after this long. Default 500 ms.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Coalesce concurrent mutations of one shard into Batch RPCs (default on):
    /// `linger` is how long a mutation may wait for others (default 0: only what is
    /// already waiting joins), `batch_max` the most mutations per RPC (default 1000).
    pub fn coalesce(mut self, linger: Duration, batch_max: usize) -> Self {
        self.coalesce = CoalesceConfig {
            enabled: true,
            linger,
            batch_max: batch_max.max(1),
            ..self.coalesce
        };
        self
    }

    /// The largest Batch RPC the client sends, in bytes (default 4 MiB, the store's
    /// default `limits.request_bytes_max`); larger batches go as several RPCs. Match it
    /// to the store's limit when that is configured otherwise.
    pub fn batch_bytes_max(mut self, bytes: usize) -> Self {
        self.coalesce.batch_bytes_max = bytes.max(1);
        self
    }

    /// The identity the store's admission control budgets this client by (the
    /// `x-stockpile-client` header). Default "anonymous". Printable ASCII only.
    pub fn identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = identity.into();
        self
    }

    /// Send every mutation as its own RPC.
    pub fn no_coalescing(mut self) -> Self {
        self.coalesce.enabled = false;
        self
    }

    /// Connects to the seeds and fetches the shard map.
    pub async fn build(self) -> Result<Client, Error> {
        if self.seeds.is_empty() {
            return Err(Error::Config {
                message: "no seed addresses given".into(),
            });
        }
        for s in &self.seeds {
            if s.parse::<std::net::SocketAddr>().is_err() && !s.contains(':') {
                return Err(Error::Config {
                    message: format!("seed {s:?} is not a host:port address"),
                });
            }
        }
        let identity =
            tonic::metadata::MetadataValue::try_from(self.identity.as_str()).map_err(|_| {
                Error::Config {
                    message: format!("identity {:?} is not printable ASCII", self.identity),
                }
            })?;
        let client = Client {
            inner: Arc::new(Inner {
                identity,
                cfg: self,
                routing: Mutex::new(routing::Routing::default()),
                channels: Mutex::new(HashMap::new()),
                rpcs: AtomicU64::new(0),
                coalescers: coalesce::Coalescers::default(),
            }),
        };
        client
            .refresh_map(Instant::now() + client.inner.cfg.request_timeout)
            .await?;
        Ok(client)
    }
}

/// A handle to a Stockpile cluster. Cheap to clone; share it across tasks.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ClientBuilder,
    /// The `x-stockpile-client` header value.
    identity: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    routing: Mutex<routing::Routing>,
    /// One lazily connected channel per node address.
    channels: Mutex<HashMap<String, Conn>>,
    /// RPCs sent (attempts, not calls), for tests and tuning.
    rpcs: AtomicU64,
    /// One coalescing queue per shard, made on first use.
    coalescers: coalesce::Coalescers,
}

/// Which replica a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Leader,
    /// Any replica (stale reads); the client's region first.
    Any,
}

impl Target {
    fn of(c: Consistency) -> Target {
        match c {
            Consistency::Linearizable => Target::Leader,
            Consistency::Stale => Target::Any,
        }
    }
}

/// Backoff between attempts: 10 ms doubling, at most 500 ms, full jitter above half.
fn backoff(attempt: u32) -> Duration {
    let ms = (10u64 << attempt.min(6)).min(500);
    Duration::from_millis(ms / 2 + rand::random::<u64>() % (ms / 2 + 1))
}

fn decode_detail(status: &tonic::Status) -> Option<pb::ErrorDetail> {
    if status.details().is_empty() {
        return None;
    }
    pb::ErrorDetail::decode(status.details())
        .ok()
        .filter(|d| d.reason() != pb::Reason::Unspecified)
}

/// True when a transport error shows the request never left (no connection).
fn never_sent(status: &tonic::Status) -> bool {
    let mut text = status.message().to_lowercase();
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        text.push_str(&s.to_string().to_lowercase());
        source = s.source();
    }
    // Only a failure to establish the connection proves the request never left; a
    // reset or broken connection ("connection reset" contains "connect"!) may come after
    // the node received it.
    text.contains("error trying to connect")
        || text.contains("tcp connect error")
        || text.contains("connection refused")
}

impl Client {
    /// A builder with the documented defaults; give it seeds, then `build()`.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// RPC attempts this client has sent (every retry counts).
    pub fn rpcs_sent(&self) -> u64 {
        self.inner.rpcs.load(Ordering::Relaxed)
    }

    /// The cached shard map.
    pub fn shard_map(&self) -> ShardMap {
        self.routing().map.clone()
    }

    /// The shard leader the client last saw for `shard_id`.
    pub fn cached_leader(&self, shard_id: u64) -> Option<u64> {
        self.routing().leaders.get(&shard_id).copied()
    }

    fn routing(&self) -> std::sync::MutexGuard<'_, routing::Routing> {
        // A panic while holding this lock cannot leave the routing cache inconsistent
        // in a way that matters (it is a cache), so a poisoned lock is still used.
        self.inner.routing.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.inner.cfg.request_timeout
    }

    fn channel(&self, addr: &str) -> Result<Conn, Error> {
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

    /// Fetches the shard map from the first node that answers (own region first,
    /// then the seeds).
    pub async fn refresh_map(&self, deadline: Instant) -> Result<ShardMap, Error> {
        let region = self.inner.cfg.region.clone();
        let mut attempt = 0u32;
        let mut last_error = String::from("no node answered");
        loop {
            let mut addrs: Vec<(Option<u64>, String)> = self
                .routing()
                .discovery_order(region.as_deref())
                .into_iter()
                .map(|n| (Some(n.node_id), n.addr))
                .collect();
            for s in &self.inner.cfg.seeds {
                if !addrs.iter().any(|(_, a)| a == s) {
                    addrs.push((None, s.clone()));
                }
            }
            for (node_id, addr) in addrs {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                let channel = self.channel(&addr)?;
                let t = remaining.min(self.inner.cfg.attempt_timeout);
                let mut request = tonic::Request::new(pb::ShardMapRequest {});
                request.set_timeout(t);
                self.inner.rpcs.fetch_add(1, Ordering::Relaxed);
                match tokio::time::timeout(t, AdminClient::new(channel).shard_map(request)).await {
                    Ok(Ok(reply)) => {
                        let reply = reply.into_inner();
                        let map = ShardMap::from_pb(&reply);
                        let mut r = self.routing();
                        if map.epoch >= r.map.epoch {
                            r.map = map.clone();
                        }
                        for s in &reply.shards {
                            if s.leader_id != 0 {
                                r.leaders.insert(s.shard_id, s.leader_id);
                            }
                        }
                        if let Some(id) = node_id.or(Some(reply.node_id)) {
                            r.node_ok(id);
                        }
                        return Ok(map);
                    }
                    Ok(Err(s)) => last_error = format!("{addr}: {}", s.message()),
                    Err(_) => last_error = format!("{addr}: no answer within {} ms", t.as_millis()),
                }
                if let Some(id) = node_id {
                    self.routing().node_failed(id);
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable {
                    message: format!("cannot fetch the shard map: {last_error}"),
                });
            }
            tokio::time::sleep(
                backoff(attempt).min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
            attempt += 1;
        }
    }

    fn shard_for(&self, sku: &str) -> Result<u64, Error> {
        self.routing()
            .map
            .shard_for(sku)
            .map(|s| s.shard_id)
            .ok_or_else(|| Error::Unavailable {
                message: format!("no shard covers {sku:?}"),
            })
    }

    /// Sends `call` to a node of `shard_id` and retries what is retryable until
    /// `deadline`. For a mutation (`request_id` set), any attempt that may have reached
    /// the store makes an eventual give-up `OutcomeUnknown` instead of `Unavailable`.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        shard_id: u64,
        target: Target,
        request_id: Option<RequestId>,
        deadline: Instant,
        call: F,
    ) -> Result<T, Error>
    where
        F: Fn(Conn, Duration) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let region = self.inner.cfg.region.clone();
        let mut maybe_applied = false;
        let mut last_error = String::from("no attempt made");
        let mut attempt = 0u32;
        let mut tried_in_round: Vec<u64> = Vec::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(match (request_id, maybe_applied) {
                    (Some(request_id), true) => Error::OutcomeUnknown {
                        request_id,
                        message: last_error,
                    },
                    _ => Error::Unavailable {
                        message: format!("shard {shard_id}: {last_error}"),
                    },
                });
            }
            // A failure to refresh the map after an attempt that may have been applied
            // leaves the outcome unknown, not certainly failed.
            let unknown_if_sent = |e: Error| match (request_id, maybe_applied) {
                (Some(request_id), true) => Error::OutcomeUnknown {
                    request_id,
                    message: e.to_string(),
                },
                _ => e,
            };
            let candidates =
                self.routing()
                    .candidates(shard_id, region.as_deref(), target == Target::Leader);
            if candidates.is_empty() {
                self.refresh_map(deadline).await.map_err(unknown_if_sent)?;
                attempt += 1;
                continue;
            }
            // Walk the candidates in order, starting over when all were tried.
            let node_id = match candidates.iter().find(|c| !tried_in_round.contains(c)) {
                Some(&n) => n,
                None => {
                    tried_in_round.clear();
                    tokio::time::sleep(backoff(attempt).min(remaining)).await;
                    attempt += 1;
                    continue;
                }
            };
            tried_in_round.push(node_id);
            let addr = self
                .routing()
                .map
                .nodes
                .get(&node_id)
                .map(|n| n.addr.clone());
            let addr = match addr {
                Some(a) => a,
                None => {
                    self.refresh_map(deadline).await.map_err(unknown_if_sent)?;
                    continue;
                }
            };
            let t = remaining.min(self.inner.cfg.attempt_timeout);
            self.inner.rpcs.fetch_add(1, Ordering::Relaxed);
            let outcome = tokio::time::timeout(t, call(self.channel(&addr)?, t)).await;
            let status = match outcome {
                Ok(Ok(v)) => {
                    let mut r = self.routing();
                    r.node_ok(node_id);
                    if target == Target::Leader {
                        r.leaders.insert(shard_id, node_id);
                    }
                    return Ok(v);
                }
                Ok(Err(status)) => status,
                Err(_) => {
                    maybe_applied = true;
                    last_error =
                        format!("node {node_id} gave no answer within {} ms", t.as_millis());
                    self.routing().node_failed(node_id);
                    continue;
                }
            };
            let Some(detail) = decode_detail(&status) else {
                // A transport failure or a status without our detail.
                if !never_sent(&status) {
                    maybe_applied = true;
                }
                last_error = format!("node {node_id}: {}", status.message());
                self.routing().node_failed(node_id);
                continue;
            };
            if let Some(definite) = Error::from_detail(&detail, request_id) {
                return Err(definite);
            }
            last_error = format!("node {node_id}: {}", detail.message);
            match detail.reason() {
                pb::Reason::NotLeader => {
                    let mut r = self.routing();
                    if detail.leader_id != 0
                        && detail.leader_id != node_id
                        && r.map.nodes.contains_key(&detail.leader_id)
                    {
                        r.leaders.insert(shard_id, detail.leader_id);
                        // Follow the hint at once: let the hinted node be tried even if
                        // it was tried in this round.
                        tried_in_round.retain(|n| *n != detail.leader_id);
                    } else {
                        r.leaders.remove(&shard_id);
                    }
                }
                pb::Reason::ShardUnavailable => {
                    self.routing().leaders.remove(&shard_id);
                }
                pb::Reason::RateLimited => {
                    let wait = Duration::from_millis(detail.retry_after_ms.max(1));
                    if Instant::now() + wait >= deadline {
                        if maybe_applied && let Some(request_id) = request_id {
                            return Err(Error::OutcomeUnknown {
                                request_id,
                                message: last_error,
                            });
                        }
                        return Err(Error::RateLimited {
                            message: detail.message,
                            retry_after_ms: detail.retry_after_ms,
                        });
                    }
                    tokio::time::sleep(wait).await;
                    tried_in_round.retain(|n| *n != node_id);
                }
                pb::Reason::OutcomeUnknown => {
                    maybe_applied = true;
                    self.routing().leaders.remove(&shard_id);
                }
                pb::Reason::ShardMoved => {
                    self.refresh_map(deadline).await.map_err(unknown_if_sent)?;
                }
                _ => {}
            }
        }
    }

    /// Applies one mutation with `request_id`: through the shard's coalescer when
    /// coalescing is on, else as its own RPC.
    pub async fn execute(
        &self,
        request_id: RequestId,
        mutation: Mutation,
    ) -> Result<MutationOutcome, Error> {
        let shard_id = self.shard_for(mutation.route_sku())?;
        let op = mutation.to_pb(&request_id);
        let deadline = self.deadline();
        let result = if self.inner.cfg.coalesce.enabled {
            coalesce::submit(self, shard_id, request_id, op, deadline).await?
        } else {
            self.call(
                shard_id,
                Target::Leader,
                Some(request_id),
                deadline,
                |ch, t| unary(ch, t, op.clone()),
            )
            .await?
        };
        let outcome =
            MutationOutcome::from_pb(result, request_id).ok_or_else(|| Error::Internal {
                message: "a reply without an outcome".into(),
            })?;
        if let MutationOutcome::Reservation(r) = &outcome {
            self.remember_reservation(&r.reservation);
        }
        Ok(outcome)
    }

    async fn execute_stock(
        &self,
        request_id: RequestId,
        mutation: Mutation,
    ) -> Result<StockUpdate, Error> {
        self.execute(request_id, mutation)
            .await?
            .stock()
            .ok_or_else(|| Error::Internal {
                message: "a stock command produced no stock record".into(),
            })
    }

    async fn execute_reservation(
        &self,
        request_id: RequestId,
        mutation: Mutation,
    ) -> Result<ReservationUpdate, Error> {
        self.execute(request_id, mutation)
            .await?
            .reservation()
            .ok_or_else(|| Error::Internal {
                message: "a reservation command produced no reservation".into(),
            })
    }

    /// Sets `sku`'s on-hand stock (creating the SKU if needed).
    pub async fn set_stock(&self, sku: &str, on_hand: u64) -> Result<StockUpdate, Error> {
        self.set_stock_with_id(new_request_id(), sku, on_hand).await
    }

    /// [`set_stock`](Self::set_stock) with a caller-chosen request id (to retry).
    pub async fn set_stock_with_id(
        &self,
        request_id: RequestId,
        sku: &str,
        on_hand: u64,
    ) -> Result<StockUpdate, Error> {
        self.execute_stock(
            request_id,
            Mutation::SetStock {
                sku: sku.to_string(),
                on_hand,
            },
        )
        .await
    }

    /// Adds `delta` (may be negative) to `sku`'s on-hand stock; refused with
    /// `InsufficientStock` if it would leave on-hand below reserved.
    pub async fn adjust_stock(&self, sku: &str, delta: i64) -> Result<StockUpdate, Error> {
        self.adjust_stock_with_id(new_request_id(), sku, delta)
            .await
    }

    /// [`adjust_stock`](Self::adjust_stock) with a caller-chosen request id (to retry).
    pub async fn adjust_stock_with_id(
        &self,
        request_id: RequestId,
        sku: &str,
        delta: i64,
    ) -> Result<StockUpdate, Error> {
        self.execute_stock(
            request_id,
            Mutation::AdjustStock {
                sku: sku.to_string(),
                delta,
            },
        )
        .await
    }

    /// Takes `quantity` units of `sku` if that many are available; otherwise
    /// `InsufficientStock` and nothing changes. Never goes below zero.
    pub async fn decrement(&self, sku: &str, quantity: u64) -> Result<StockUpdate, Error> {
        self.decrement_with_id(new_request_id(), sku, quantity)
            .await
    }

    /// [`decrement`](Self::decrement) with a caller-chosen request id (to retry).
    ///
    /// ```no_run
    /// # async fn demo(client: stockpile_client::Client) -> Result<(), stockpile_client::Error> {
    /// use stockpile_client::{new_request_id, Error};
    /// let id = new_request_id();
    /// match client.decrement_with_id(id, "sku-1", 1).await {
    ///     Ok(sold) => println!("{} left", sold.stock.available),
    ///     // Not known whether it happened: the same id later applies it at most once.
    ///     Err(Error::OutcomeUnknown { request_id, .. }) => { client.decrement_with_id(request_id, "sku-1", 1).await?; }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn decrement_with_id(
        &self,
        request_id: RequestId,
        sku: &str,
        quantity: u64,
    ) -> Result<StockUpdate, Error> {
        self.execute_stock(
            request_id,
            Mutation::Decrement {
                sku: sku.to_string(),
                quantity,
            },
        )
        .await
    }

    /// Holds `items` (all in one shard) for `ttl`; the store picks the id. For items
    /// across shards, see [`reserve_cart`](Self::reserve_cart).
    pub async fn reserve(&self, items: &[Item], ttl: Duration) -> Result<ReservationUpdate, Error> {
        self.reserve_with_id(new_request_id(), None, items, ttl)
            .await
    }

    /// [`reserve`](Self::reserve) with a caller-chosen request id and, optionally,
    /// reservation id.
    pub async fn reserve_with_id(
        &self,
        request_id: RequestId,
        reservation_id: Option<&str>,
        items: &[Item],
        ttl: Duration,
    ) -> Result<ReservationUpdate, Error> {
        if items.is_empty() {
            return Err(Error::InvalidArgument {
                field: "items".into(),
                message: "must hold at least one item".into(),
            });
        }
        let m = Mutation::Reserve {
            reservation_id: reservation_id.map(str::to_string),
            items: items.to_vec(),
            ttl,
        };
        self.execute_reservation(request_id, m).await
    }

    fn remember_reservation(&self, r: &Reservation) {
        let Some(item) = r.items.first() else {
            return;
        };
        if r.reservation_id.is_empty() {
            return;
        }
        let mut routing = self.routing();
        if routing.reservation_skus.len() >= routing::RESERVATIONS_REMEMBERED_MAX {
            routing.reservation_skus.clear();
        }
        routing
            .reservation_skus
            .insert(r.reservation_id.clone(), item.sku.clone());
    }

    /// A SKU routing to the reservation's shard: given, remembered, or found by
    /// asking every shard.
    async fn reservation_route(
        &self,
        reservation_id: &str,
        sku: Option<&str>,
    ) -> Result<String, Error> {
        if let Some(sku) = sku {
            return Ok(sku.to_string());
        }
        let remembered = self.routing().reservation_skus.get(reservation_id).cloned();
        if let Some(sku) = remembered {
            return Ok(sku);
        }
        let shards = self.routing().map.shards.clone();
        for shard in shards {
            match self
                .get_reservation_routed(
                    reservation_id,
                    shard.routing_sku(),
                    Consistency::Linearizable,
                )
                .await
            {
                Ok(r) => {
                    return Ok(r
                        .items
                        .first()
                        .map(|i| i.sku.clone())
                        .unwrap_or_else(|| shard.routing_sku()));
                }
                Err(Error::ReservationNotFound { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::ReservationNotFound {
            reservation_id: reservation_id.to_string(),
        })
    }

    /// Turns an active reservation into a sale. `sku` (any SKU of the reservation)
    /// saves a lookup when the client did not make the reservation itself.
    pub async fn confirm(
        &self,
        reservation_id: &str,
        sku: Option<&str>,
    ) -> Result<ReservationUpdate, Error> {
        self.confirm_with_id(new_request_id(), reservation_id, sku)
            .await
    }

    /// [`confirm`](Self::confirm) with a caller-chosen request id (to retry).
    pub async fn confirm_with_id(
        &self,
        request_id: RequestId,
        reservation_id: &str,
        sku: Option<&str>,
    ) -> Result<ReservationUpdate, Error> {
        let sku = self.reservation_route(reservation_id, sku).await?;
        self.execute_reservation(
            request_id,
            Mutation::Confirm {
                reservation_id: reservation_id.to_string(),
                sku,
            },
        )
        .await
    }

    /// Gives an active reservation's stock back.
    pub async fn release(
        &self,
        reservation_id: &str,
        sku: Option<&str>,
    ) -> Result<ReservationUpdate, Error> {
        self.release_with_id(new_request_id(), reservation_id, sku)
            .await
    }

    /// [`release`](Self::release) with a caller-chosen request id (to retry).
    pub async fn release_with_id(
        &self,
        request_id: RequestId,
        reservation_id: &str,
        sku: Option<&str>,
    ) -> Result<ReservationUpdate, Error> {
        let sku = self.reservation_route(reservation_id, sku).await?;
        self.execute_reservation(
            request_id,
            Mutation::Release {
                reservation_id: reservation_id.to_string(),
                sku,
            },
        )
        .await
    }

    /// Holds `items` that may span shards: one reservation per shard, named
    /// `{cart_id}.{shard_id}`, made concurrently. If any shard refuses, every part that
    /// was held is released and the refusal is returned.
    ///
    /// What this guarantees and what it does not (it is **not** atomic):
    /// - each part is atomic within its shard, and nothing is ever oversold;
    /// - on success every item is held until `ttl` passes or the cart is confirmed or
    ///   released;
    /// - while the cart is being reserved, and while a failed cart is being released, a
    ///   reader may see some parts held and others not: stock of one shard may be
    ///   briefly unavailable to others even though the cart as a whole fails;
    /// - if the client dies midway, or a release fails, the held parts return at their
    ///   TTL; a part whose outcome was unknown is released if it exists, and if it is
    ///   applied later still, it expires at its TTL.
    ///
    /// ```no_run
    /// # async fn demo(client: stockpile_client::Client) -> Result<(), stockpile_client::Error> {
    /// use std::time::Duration;
    /// use stockpile_client::Item;
    /// let cart = client.reserve_cart(&[Item::new("apple", 2), Item::new("zucchini", 1)], Duration::from_secs(300)).await?;
    /// for part in client.confirm_cart(&cart).await {
    ///     part?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn reserve_cart(&self, items: &[Item], ttl: Duration) -> Result<Cart, Error> {
        let cart_id = format!("cart-{}", &request_id_hex(&new_request_id())[..16]);
        self.reserve_cart_with_id(&cart_id, items, ttl).await
    }

    /// [`reserve_cart`](Self::reserve_cart) with a caller-chosen cart id (1..=40 of
    /// `[A-Za-z0-9._:-]`).
    pub async fn reserve_cart_with_id(
        &self,
        cart_id: &str,
        items: &[Item],
        ttl: Duration,
    ) -> Result<Cart, Error> {
        if cart_id.is_empty()
            || cart_id.len() > 40
            || !cart_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
        {
            return Err(Error::InvalidArgument {
                field: "cart_id".into(),
                message: "must be 1..=40 of A-Z a-z 0-9 . _ : -".into(),
            });
        }
        if items.is_empty() {
            return Err(Error::InvalidArgument {
                field: "items".into(),
                message: "must hold at least one item".into(),
            });
        }
        let mut by_shard: BTreeMap<u64, Vec<Item>> = BTreeMap::new();
        for item in items {
            by_shard
                .entry(self.shard_for(&item.sku)?)
                .or_default()
                .push(item.clone());
        }
        let attempts = by_shard.into_iter().map(|(shard_id, items)| async move {
            let reservation_id = format!("{cart_id}.{shard_id}");
            let result = self
                .reserve_with_id(new_request_id(), Some(&reservation_id), &items, ttl)
                .await;
            (
                CartPart {
                    shard_id,
                    sku: items[0].sku.clone(),
                    reservation_id,
                    items,
                },
                result,
            )
        });
        let results = futures::future::join_all(attempts).await;
        let failure = results
            .iter()
            .find_map(|(_, r)| r.as_ref().err().filter(|e| e.is_definite()).cloned())
            .or_else(|| results.iter().find_map(|(_, r)| r.as_ref().err().cloned()));
        match failure {
            None => {
                let expires_at_ms = results
                    .iter()
                    .filter_map(|(_, r)| r.as_ref().ok())
                    .map(|u| u.reservation.expires_at_ms)
                    .min()
                    .unwrap_or(0);
                Ok(Cart {
                    cart_id: cart_id.to_string(),
                    parts: results.into_iter().map(|(p, _)| p).collect(),
                    expires_at_ms,
                })
            }
            Some(e) => {
                // Give back what was (or may have been) held.
                for (part, r) in &results {
                    let held_or_unknown = match r {
                        Ok(_) => true,
                        Err(e) => !e.is_definite(),
                    };
                    if held_or_unknown {
                        match self.release(&part.reservation_id, Some(&part.sku)).await {
                            Ok(_)
                            | Err(Error::ReservationNotFound { .. })
                            | Err(Error::ReservationExpired { .. })
                            | Err(Error::ReservationNotActive { .. }) => {}
                            Err(re) => {
                                tracing::warn!(reservation = %part.reservation_id, error = %re, "cart part not released; it expires at its TTL")
                            }
                        }
                    }
                }
                Err(e)
            }
        }
    }

    /// Confirms every part of a cart; one result per part. Parts are independent: one
    /// may fail (say, expired) while others succeed, and the caller decides.
    pub async fn confirm_cart(&self, cart: &Cart) -> Vec<Result<ReservationUpdate, Error>> {
        futures::future::join_all(
            cart.parts
                .iter()
                .map(|p| self.confirm(&p.reservation_id, Some(&p.sku))),
        )
        .await
    }

    /// Releases every part of a cart; one result per part.
    pub async fn release_cart(&self, cart: &Cart) -> Vec<Result<ReservationUpdate, Error>> {
        futures::future::join_all(
            cart.parts
                .iter()
                .map(|p| self.release(&p.reservation_id, Some(&p.sku))),
        )
        .await
    }

    /// Finds a cart's parts by asking every shard for `{cart_id}.{shard_id}`.
    pub async fn find_cart(&self, cart_id: &str) -> Result<(Cart, Vec<Reservation>), Error> {
        let shards = self.routing().map.shards.clone();
        let mut parts = Vec::new();
        let mut found = Vec::new();
        for shard in shards {
            let id = format!("{cart_id}.{}", shard.shard_id);
            match self
                .get_reservation_routed(&id, shard.routing_sku(), Consistency::Linearizable)
                .await
            {
                Ok(r) => {
                    parts.push(CartPart {
                        shard_id: shard.shard_id,
                        reservation_id: id,
                        sku: r
                            .items
                            .first()
                            .map(|i| i.sku.clone())
                            .unwrap_or_else(|| shard.routing_sku()),
                        items: r.items.clone(),
                    });
                    found.push(r);
                }
                Err(Error::ReservationNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if parts.is_empty() {
            return Err(Error::ReservationNotFound {
                reservation_id: cart_id.to_string(),
            });
        }
        let expires_at_ms = found.iter().map(|r| r.expires_at_ms).min().unwrap_or(0);
        Ok((
            Cart {
                cart_id: cart_id.to_string(),
                parts,
                expires_at_ms,
            },
            found,
        ))
    }

    /// Applies many mutations (new request ids each), grouped by shard into one Batch
    /// RPC per shard (in chunks of the coalescing batch size), all shards at once.
    /// Returns one result per mutation, in order; one may fail while others succeed.
    ///
    /// ```no_run
    /// # async fn demo(client: stockpile_client::Client) -> Result<(), stockpile_client::Error> {
    /// use stockpile_client::Mutation;
    /// let results = client
    ///     .batch(vec![
    ///         Mutation::SetStock { sku: "apple".into(), on_hand: 10 },
    ///         Mutation::Decrement { sku: "kiwi".into(), quantity: 1 },
    ///     ])
    ///     .await?;
    /// assert_eq!(results.len(), 2);
    /// # Ok(()) }
    /// ```
    pub async fn batch(
        &self,
        mutations: Vec<Mutation>,
    ) -> Result<Vec<Result<MutationOutcome, Error>>, Error> {
        let ops = mutations
            .into_iter()
            .map(|m| (new_request_id(), m))
            .collect();
        self.batch_with_ids(ops, false).await
    }

    /// [`batch`](Self::batch) with caller-chosen request ids. With `atomic`, every
    /// mutation applies or none does; all must then live in one shard (else
    /// `CrossShard`).
    pub async fn batch_with_ids(
        &self,
        ops: Vec<(RequestId, Mutation)>,
        atomic: bool,
    ) -> Result<Vec<Result<MutationOutcome, Error>>, Error> {
        let mut by_shard: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, (_, m)) in ops.iter().enumerate() {
            by_shard
                .entry(self.shard_for(m.route_sku())?)
                .or_default()
                .push(i);
        }
        if atomic && by_shard.len() > 1 {
            let shard_ids: Vec<u64> = by_shard.keys().copied().collect();
            return Err(Error::CrossShard {
                message: format!("an all-or-nothing batch spans shards {shard_ids:?}"),
                shard_ids,
            });
        }
        let chunk = if atomic {
            usize::MAX
        } else {
            self.inner.cfg.coalesce.batch_max.max(1)
        };
        let deadline = self.deadline();
        let mut calls = Vec::new();
        for (shard_id, idxs) in by_shard {
            for part in idxs.chunks(chunk.min(idxs.len()).max(1)) {
                let part: Vec<usize> = part.to_vec();
                let wire: Vec<(RequestId, pb::operation::Op)> = part
                    .iter()
                    .map(|&i| (ops[i].0, ops[i].1.to_pb(&ops[i].0)))
                    .collect();
                calls.push(async move {
                    let results =
                        coalesce::send_batch(self, shard_id, wire, atomic, deadline).await;
                    (part, results)
                });
            }
        }
        let mut out: Vec<Option<Result<MutationOutcome, Error>>> = vec![None; ops.len()];
        for (part, results) in futures::future::join_all(calls).await {
            for (i, r) in part.into_iter().zip(results) {
                let rid = ops[i].0;
                out[i] = Some(r.and_then(|r| {
                    MutationOutcome::from_pb(r, rid).ok_or_else(|| Error::Internal {
                        message: "a reply without an outcome".into(),
                    })
                }));
            }
        }
        Ok(out
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(Error::Internal {
                        message: "no result".into(),
                    })
                })
            })
            .collect())
    }

    /// A reservation's items, state and expiry.
    pub async fn get_reservation(
        &self,
        reservation_id: &str,
        sku: Option<&str>,
        consistency: Consistency,
    ) -> Result<Reservation, Error> {
        let route = match sku {
            Some(s) => s.to_string(),
            None => self.reservation_route(reservation_id, None).await?,
        };
        self.get_reservation_routed(reservation_id, route, consistency)
            .await
    }

    async fn get_reservation_routed(
        &self,
        reservation_id: &str,
        route: String,
        consistency: Consistency,
    ) -> Result<Reservation, Error> {
        let shard_id = self.shard_for(&route)?;
        let req = pb::GetReservationRequest {
            reservation_id: reservation_id.to_string(),
            sku: route,
            consistency: consistency.to_pb(),
        };
        let reply = self
            .call(
                shard_id,
                Target::of(consistency),
                None,
                self.deadline(),
                |ch, t| {
                    let r = with_timeout(req.clone(), t);
                    async move { inventory(ch).get_reservation(r).await }
                },
            )
            .await?;
        reply
            .into_inner()
            .reservation
            .map(Reservation::from)
            .ok_or_else(|| Error::Internal {
                message: "reply without reservation".into(),
            })
    }

    /// Reads the stock of `skus` (in the order given). SKUs of different shards are
    /// read from their shards concurrently.
    pub async fn get(&self, skus: &[&str], consistency: Consistency) -> Result<Vec<Read>, Error> {
        let mut by_shard: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, sku) in skus.iter().enumerate() {
            by_shard.entry(self.shard_for(sku)?).or_default().push(i);
        }
        let deadline = self.deadline();
        let calls = by_shard.into_iter().map(|(shard_id, idxs)| {
            let req = pb::GetRequest {
                skus: idxs.iter().map(|&i| skus[i].to_string()).collect(),
                consistency: consistency.to_pb(),
            };
            async move {
                let reply = self
                    .call(
                        shard_id,
                        Target::of(consistency),
                        None,
                        deadline,
                        |ch, t| {
                            let r = with_timeout(req.clone(), t);
                            async move { inventory(ch).get(r).await }
                        },
                    )
                    .await?;
                Ok::<_, Error>((idxs, reply.into_inner()))
            }
        });
        let mut out: Vec<Option<Read>> = vec![None; skus.len()];
        for result in futures::future::join_all(calls).await {
            let (idxs, reply) = result?;
            let info = |shard_id: u64| {
                reply
                    .shards
                    .iter()
                    .find(|s| s.shard_id == shard_id)
                    .map(|s| (s.node_id, s.applied_index))
                    .unwrap_or((0, 0))
            };
            for (i, r) in idxs.into_iter().zip(reply.results.iter()) {
                let (node_id, applied_index) = info(r.shard_id);
                out[i] = Some(Read {
                    sku: r.sku.clone(),
                    stock: if r.found {
                        r.record.clone().map(Stock::from)
                    } else {
                        None
                    },
                    shard_id: r.shard_id,
                    node_id,
                    applied_index,
                });
            }
        }
        out.into_iter()
            .map(|r| {
                r.ok_or_else(|| Error::Internal {
                    message: "a SKU got no read result".into(),
                })
            })
            .collect()
    }

    /// One SKU's stock (None when never set).
    pub async fn get_one(
        &self,
        sku: &str,
        consistency: Consistency,
    ) -> Result<Option<Stock>, Error> {
        Ok(self
            .get(&[sku], consistency)
            .await?
            .pop()
            .and_then(|r| r.stock))
    }

    /// Up to `limit` stock records in SKU order, after `start_after` (None = from the
    /// first SKU), across every shard.
    pub async fn list(
        &self,
        start_after: Option<&str>,
        limit: usize,
        consistency: Consistency,
    ) -> Result<Vec<Stock>, Error> {
        let mut out = Vec::new();
        let mut token = String::new();
        let mut shard_id = self.shard_for(start_after.unwrap_or(""))?;
        let deadline = self.deadline();
        while out.len() < limit {
            let page = u32::try_from((limit - out.len()).min(1_000)).unwrap_or(1_000);
            let req = pb::ListRequest {
                page_token: token.clone(),
                start_after: if token.is_empty() {
                    start_after.unwrap_or_default().to_string()
                } else {
                    String::new()
                },
                limit: page,
                consistency: consistency.to_pb(),
            };
            let reply = self
                .call(
                    shard_id,
                    Target::of(consistency),
                    None,
                    deadline,
                    |ch, t| {
                        let r = with_timeout(req.clone(), t);
                        async move { inventory(ch).list(r).await }
                    },
                )
                .await?
                .into_inner();
            out.extend(reply.records.into_iter().map(Stock::from));
            if reply.next_page_token.is_empty() {
                break;
            }
            token = reply.next_page_token;
            shard_id = reply.next_shard_id;
        }
        Ok(out)
    }

    /// Every node's status, gathered by one node.
    pub async fn cluster_status(&self) -> Result<pb::ClusterStatusReply, Error> {
        let deadline = self.deadline();
        let mut last = String::from("no node answered");
        loop {
            let nodes = self
                .routing()
                .discovery_order(self.inner.cfg.region.as_deref());
            for n in nodes {
                let t = deadline
                    .saturating_duration_since(Instant::now())
                    .min(self.inner.cfg.attempt_timeout);
                if t.is_zero() {
                    return Err(Error::Unavailable { message: last });
                }
                let mut req = tonic::Request::new(pb::ClusterStatusRequest {});
                req.set_timeout(t);
                self.inner.rpcs.fetch_add(1, Ordering::Relaxed);
                match tokio::time::timeout(
                    t,
                    AdminClient::new(self.channel(&n.addr)?).cluster_status(req),
                )
                .await
                {
                    Ok(Ok(r)) => return Ok(r.into_inner()),
                    Ok(Err(s)) => last = format!("node {}: {}", n.node_id, s.message()),
                    Err(_) => last = format!("node {}: no answer", n.node_id),
                }
                self.routing().node_failed(n.node_id);
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable { message: last });
            }
        }
    }

    /// Moves `shard_id`'s leadership to `to_node_id` (a replica); returns the leader
    /// once the move is seen, or whoever leads when the wait ends.
    pub async fn transfer_leader(&self, shard_id: u64, to_node_id: u64) -> Result<u64, Error> {
        let req = pb::TransferLeaderRequest {
            shard_id,
            to_node_id,
            timeout_ms: 5_000,
        };
        let reply = self
            .call(
                shard_id,
                Target::Leader,
                None,
                Instant::now() + Duration::from_secs(15),
                |ch, _| {
                    let r = with_timeout(req, Duration::from_secs(6));
                    async move { AdminClient::new(ch).transfer_leader(r).await }
                },
            )
            .await?;
        let leader = reply.into_inner().leader_id;
        if leader != 0 {
            self.routing().leaders.insert(shard_id, leader);
        }
        Ok(leader)
    }

    /// Stale reads of `skus` answered by one given node (which must hold their
    /// shards): what that replica has applied, for tests and operators.
    pub async fn get_from_node(&self, node_id: u64, skus: &[&str]) -> Result<Vec<Read>, Error> {
        self.get_at_node(node_id, skus, Consistency::Stale).await
    }

    /// Reads `skus` from one given node with `consistency`, without retries or
    /// routing: a linearizable read there answers only if that node leads the shards
    /// (else `NOT_LEADER`). For tests that pin a client to a node.
    pub async fn get_at_node(
        &self,
        node_id: u64,
        skus: &[&str],
        consistency: Consistency,
    ) -> Result<Vec<Read>, Error> {
        let addr = self.node_addr(node_id)?;
        let t = self.inner.cfg.attempt_timeout;
        let req = with_timeout(
            pb::GetRequest {
                skus: skus.iter().map(|s| s.to_string()).collect(),
                consistency: consistency.to_pb(),
            },
            t,
        );
        self.inner.rpcs.fetch_add(1, Ordering::Relaxed);
        let reply = match tokio::time::timeout(t, inventory(self.channel(&addr)?).get(req)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => {
                return Err(decode_detail(&s)
                    .and_then(|d| Error::from_detail(&d, None))
                    .unwrap_or(Error::Unavailable {
                        message: format!("node {node_id}: {}", s.message()),
                    }));
            }
            Err(_) => {
                return Err(Error::Unavailable {
                    message: format!("node {node_id}: no answer"),
                });
            }
        };
        Ok(reply
            .results
            .iter()
            .map(|r| {
                let (node_id, applied_index) = reply
                    .shards
                    .iter()
                    .find(|s| s.shard_id == r.shard_id)
                    .map(|s| (s.node_id, s.applied_index))
                    .unwrap_or((0, 0));
                Read {
                    sku: r.sku.clone(),
                    stock: if r.found {
                        r.record.clone().map(Stock::from)
                    } else {
                        None
                    },
                    shard_id: r.shard_id,
                    node_id,
                    applied_index,
                }
            })
            .collect())
    }

    /// Repair: asks every node to let the shards it leads rebuild `node_id` from
    /// scratch once (its data directory was wiped). Returns the shards covered.
    pub async fn allow_rebuild(&self, node_id: u64) -> Result<Vec<u64>, Error> {
        let nodes: Vec<NodeInfo> = self.routing().map.nodes.values().cloned().collect();
        if !nodes.iter().any(|n| n.node_id == node_id) {
            return Err(Error::NodeNotFound { node_id });
        }
        let mut covered = Vec::new();
        for n in nodes.into_iter().filter(|n| n.node_id != node_id) {
            let t = self.inner.cfg.attempt_timeout;
            self.inner.rpcs.fetch_add(1, Ordering::Relaxed);
            let mut admin = AdminClient::new(self.channel(&n.addr)?);
            match tokio::time::timeout(
                t,
                admin.allow_rebuild(with_timeout(pb::AllowRebuildRequest { node_id }, t)),
            )
            .await
            {
                Ok(Ok(r)) => covered.extend(r.into_inner().shard_ids),
                // A definite refusal (an unknown node) holds for every node: report it.
                Ok(Err(s)) => {
                    if let Some(e) = decode_detail(&s).and_then(|d| Error::from_detail(&d, None)) {
                        return Err(e);
                    }
                }
                Err(_) => {}
            }
        }
        covered.sort_unstable();
        Ok(covered)
    }

    /// Digests of a node's shard state machines, with their stored outcome counts.
    /// Replicas at the same applied index must have the same digest.
    pub async fn shard_digests(&self, node_id: u64) -> Result<Vec<ShardDigest>, Error> {
        let addr = self.node_addr(node_id)?;
        let t = self.inner.cfg.attempt_timeout;
        self.inner.rpcs.fetch_add(1, Ordering::Relaxed);
        let answer = tokio::time::timeout(
            t,
            AdminClient::new(self.channel(&addr)?)
                .shard_digests(with_timeout(pb::ShardDigestsRequest {}, t)),
        )
        .await;
        let reply = node_answer(node_id, answer)?;
        Ok(reply
            .shards
            .into_iter()
            .map(|d| ShardDigest {
                shard_id: d.shard_id,
                applied_index: d.applied_index,
                digest: d.digest,
                outcomes_count: d.outcomes_count,
            })
            .collect())
    }

    /// One node's own status (its shards' Raft state and write-path counters).
    pub async fn node_status(&self, node_id: u64) -> Result<pb::NodeStatusReply, Error> {
        let addr = self.node_addr(node_id)?;
        let t = self.inner.cfg.attempt_timeout;
        let req = with_timeout(pb::NodeStatusRequest {}, t);
        self.inner.rpcs.fetch_add(1, Ordering::Relaxed);
        let answer =
            tokio::time::timeout(t, AdminClient::new(self.channel(&addr)?).node_status(req)).await;
        node_answer(node_id, answer)
    }

    /// The address of `node_id` in the cached shard map.
    fn node_addr(&self, node_id: u64) -> Result<String, Error> {
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

/// The reply of an admin call to one named node, or `Unavailable` naming the node.
fn node_answer<T>(
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

/// One operation as its own unary RPC.
async fn unary(
    ch: Conn,
    t: Duration,
    op: pb::operation::Op,
) -> Result<pb::operation_result::Result, tonic::Status> {
    use pb::operation::Op;
    use pb::operation_result::Result as R;
    let mut c = inventory(ch);
    Ok(match op {
        Op::SetStock(r) => R::Stock(c.set_stock(with_timeout(r, t)).await?.into_inner()),
        Op::AdjustStock(r) => R::Stock(c.adjust_stock(with_timeout(r, t)).await?.into_inner()),
        Op::Decrement(r) => R::Stock(c.decrement(with_timeout(r, t)).await?.into_inner()),
        Op::Reserve(r) => R::Reservation(c.reserve(with_timeout(r, t)).await?.into_inner()),
        Op::Confirm(r) => R::Reservation(c.confirm(with_timeout(r, t)).await?.into_inner()),
        Op::Release(r) => R::Reservation(c.release(with_timeout(r, t)).await?.into_inner()),
    })
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

pub(crate) fn stock_update(r: pb::StockReply, request_id: RequestId) -> StockUpdate {
    StockUpdate {
        stock: r.record.map(Stock::from).unwrap_or_else(empty_stock),
        applied: r.applied.into(),
        request_id,
    }
}

fn empty_stock() -> Stock {
    Stock {
        sku: String::new(),
        on_hand: 0,
        reserved: 0,
        available: 0,
        version: 0,
    }
}

pub(crate) fn reservation_update(
    r: pb::ReservationReply,
    request_id: RequestId,
) -> ReservationUpdate {
    ReservationUpdate {
        reservation: r.reservation.map(Reservation::from).unwrap_or(Reservation {
            reservation_id: String::new(),
            items: Vec::new(),
            state: ReservationState::Unknown,
            created_at_ms: 0,
            expires_at_ms: 0,
            shard_id: 0,
        }),
        stock: r.records.into_iter().map(Stock::from).collect(),
        applied: r.applied.into(),
        request_id,
    }
}
