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

//!
//! Modules: `builder` (the [`ClientBuilder`]), `transport` (one channel per node,
//! identity header, TLS), `certs` (certificates and tokens), `retry` (routing, retries, failure classification), `ops`
//! (mutations and reads), `batch`, `carts`, `coalesce` (per-shard Batch RPCs),
//! `admin` (operator calls), `routing` (the cached shard map), `error`, `types`,
//! `mutation`.

#![deny(missing_docs)]

mod admin;
mod balance;
mod batch;
mod batch_rpc;
mod builder;
mod carts;
pub mod certs;
pub mod classify;
mod coalesce;
pub mod cork;
mod error;
mod moves;
mod mutation;
mod ops;
mod reads;
mod retry;
mod routing;
mod splits;
mod transport;
mod types;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use balance::{BalanceStep, BalanceView, plan_balance};
pub use builder::{ClientBuilder, TlsOptions};
pub use coalesce::CoalesceConfig;
pub use error::Error;
pub use moves::{MoveReport, PlannedMove, plan_evacuation};
pub use mutation::{Mutation, MutationOutcome};
pub use routing::{NodeInfo, ShardInfo, ShardMap};
pub use splits::SplitReport;
pub use types::*;

/// The wire types, for callers that need them (cluster status).
pub use stockpile_proto::v1 as proto;

/// The local 3-node cluster of `cluster-config/local-3node.toml`.
pub const LOCAL_CLUSTER: [&str; 3] = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"];

/// A handle to a Stockpile cluster. Cheap to clone; share it across tasks.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) cfg: ClientBuilder,
    /// The headers every request carries (identity, and the bearer token if any).
    pub(crate) headers: transport::Headers,
    /// TLS towards every node, when the cluster runs it.
    pub(crate) tls: Option<tonic::transport::ClientTlsConfig>,
    pub(crate) routing: Mutex<routing::Routing>,
    /// One lazily connected channel per node address.
    pub(crate) channels: Mutex<HashMap<String, transport::Conn>>,
    /// RPCs sent (attempts, not calls), for tests and tuning.
    pub(crate) rpcs: AtomicU64,
    /// One coalescing queue per shard, made on first use.
    pub(crate) coalescers: coalesce::Coalescers,
}

/// Which replica a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Leader,
    /// Any replica (stale reads); the client's region first.
    Any,
}

impl Target {
    pub(crate) fn of(c: Consistency) -> Target {
        match c {
            Consistency::Linearizable => Target::Leader,
            Consistency::Stale => Target::Any,
        }
    }
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

    pub(crate) fn routing(&self) -> std::sync::MutexGuard<'_, routing::Routing> {
        // A panic while holding this lock cannot leave the routing cache inconsistent
        // in a way that matters (it is a cache), so a poisoned lock is still used.
        self.inner.routing.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.inner.cfg.request_timeout
    }
}
