//! Storage: the only module that names RocksDB. One RocksDB per node holds every
//! shard's Raft log, Raft state and state machine, laid out by `keys` and encoded by
//! the codec. Outside this module the database is a [`Store`].
//!
//! - `db`: opening the database, its column families, and the group-commit syncer;
//! - `keys`: every byte layout; `error`: the one storage error;
//! - `log_store`: a shard's Raft log (openraft's `RaftLogStorage`);
//! - `state_machine`: a shard's state machine (openraft's `RaftStateMachine`), split
//!   into its meta record, the index hints, and the overlay `inventory::apply` runs on;
//! - `snapshot`: snapshot files (build, install);
//! - `reader`: reads of a shard's state for the API; `node_meta`: the node's identity.

pub mod db;
pub mod error;
pub mod keys;
pub mod log_store;
pub mod node_meta;
pub mod reader;
pub mod snapshot;
pub mod state_machine;

use std::path::Path;
use std::sync::Arc;

pub use db::{LogSyncer, WritePathStats};
pub use error::StorageError;
pub use log_store::LogStore;
pub use reader::{ClusterMapRecords, ShardReader};
pub use state_machine::{ApplyStats, StateMachineStore};

/// The node's database (shared by every shard): cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<rocksdb::DB>,
}

impl Store {
    /// Opens (or creates) the database at `path` with every column family.
    pub fn open(path: &Path) -> error::Result<Store> {
        Ok(Store {
            db: db::open(path)?,
        })
    }

    /// Makes every write so far durable (one WAL sync).
    pub fn sync_wal(&self) -> error::Result<()> {
        Ok(self.db.flush_wal(true)?)
    }

    /// Stops flushes and compactions: call last, before the process exits, so that no
    /// background job runs while the process tears down RocksDB's static state.
    pub fn stop_background_work(&self) {
        self.db.cancel_all_background_work(true);
    }

    pub(crate) fn db(&self) -> &Arc<rocksdb::DB> {
        &self.db
    }
}
