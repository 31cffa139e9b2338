//! `stockpile-node`: a node of Stockpile, a sharded, Raft-replicated inventory store.
//!
//! The map (docs/ARCHITECTURE.md has the long form):
//!
//! - `server`, `connections`: the one gRPC port and its limits;
//! - `api`: the services; `api::decode` validates every request, `api::status` is the
//!   one error mapping, `api::encode` builds replies;
//! - `router`: `ShardId`, shard descriptors and the shard map (SKU → shard, NOT_LEADER,
//!   SHARD_NOT_HERE);
//! - `node`: the running node and its shards; `shard`: proposer and expiry sweeper;
//! - `raft`: `ShardRaft`, the only face of openraft (network, inbound, guard);
//! - `storage`: the only RocksDB user (keys, log store, state machine, snapshots);
//! - `inventory`: pure domain logic (types, `apply`, validation), imports nothing else;
//! - `codec` (a leaf), `config`, `admission`, `telemetry`, `clock`, `error`;
//! - `planted`: deliberately broken modes, only with the `planted-bugs` feature.
//!
//! Placement rules, checked by scripts/check-placement.sh: `inventory` imports nothing
//! from the crate; only `storage` names RocksDB; only `raft` and `storage` name
//! openraft; `planted` exists only with its feature; no test-only environment variable.

pub mod admission;
pub mod api;
pub mod clock;
pub mod codec;
pub mod config;
pub mod connections;
pub mod error;
pub mod inventory;
pub mod node;
#[cfg(feature = "planted-bugs")]
pub mod planted;
pub mod raft;
pub mod router;
pub mod security;
pub mod server;
pub mod shard;
pub mod storage;
pub mod telemetry;

pub use error::Error;

#[cfg(test)]
mod fuzz_tests;
