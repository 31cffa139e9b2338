//! `stockpile-node`: a node of Stockpile, a sharded, Raft-replicated inventory store.
//!
//! Layout (DESIGN.md: Node, inside): `api` (gRPC services) → `node`/`shard` (routing,
//! proposals, reads) → `inventory` (pure domain logic) and `raft` (openraft adapter)
//! → `storage` (RocksDB: keys, codec, log store, state machine, snapshots).

pub mod admission;
pub mod api;
pub mod config;
pub mod connections;
pub mod error;
pub mod inventory;
pub mod node;
pub mod planted;
pub mod raft;
pub mod server;
pub mod shard;
pub mod storage;
pub mod telemetry;

pub use error::Error;

#[cfg(test)]
mod fuzz_tests;
