//! Storage: the only module that names RocksDB. One RocksDB per node holds every
//! shard's Raft log, Raft state and state machine, laid out by `keys` and encoded
//! by `codec`.

pub mod codec;
pub mod db;
pub mod keys;
pub mod log_store;
pub mod node_meta;
pub mod reader;
pub mod snapshot;
pub mod state_machine;

pub use db::{LogSyncer, WritePathStats};
pub use log_store::LogStore;
pub use reader::ShardReader;
pub use state_machine::{ApplyStats, StateMachineStore};

/// The node's database handle (shared by every shard).
pub type Db = rocksdb::DB;
