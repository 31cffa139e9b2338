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
//! - `fence`: a replica's write permission, closed before its data is deleted;
//! - `reader`: reads of a shard's state for the API; `node_meta`: the node's identity.

pub mod db;
pub mod error;
pub mod fence;
pub mod keys;
pub mod log_store;
pub mod node_meta;
pub mod reader;
pub mod snapshot;
pub mod state_machine;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use db::{LogSyncer, WritePathStats};
pub use error::StorageError;
pub use fence::WriteFence;
pub use log_store::LogStore;
pub use reader::{ClusterMapRecords, ShardReader};
pub use state_machine::{ApplyOrder, ApplyStats, StateMachineStore};

/// The node's database (shared by every shard): cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<rocksdb::DB>,
    /// Bumped after an apply records a replica for the node to start (a split's
    /// child, a snapshot's adopted children): the map follower lists the stored
    /// replicas only when it moved. The listing scans the Raft-state column, whose
    /// keys every commit rewrites, so a scan each round cost a 10,000-shard node
    /// more the more it had served.
    replicas_recorded: Arc<AtomicU64>,
    /// Woken with `replicas_recorded`: the map follower starts a split's child at
    /// once instead of on its next round (up to `MAP_FOLLOW_INTERVAL_MS` later),
    /// while the parent already refuses the child's SKUs.
    replicas_recorded_wake: Arc<tokio::sync::Notify>,
}

impl Store {
    /// Opens (or creates) the database at `path` with every column family.
    pub fn open(path: &Path) -> error::Result<Store> {
        Ok(Store {
            db: db::open(path)?,
            replicas_recorded: Arc::new(AtomicU64::new(0)),
            replicas_recorded_wake: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// An apply wrote replica records (`replicas_recorded`): call after the write.
    pub(crate) fn replicas_recorded(&self) {
        self.replicas_recorded.fetch_add(1, Ordering::AcqRel);
        self.replicas_recorded_wake.notify_one();
    }

    /// Returns once an apply recorded replicas since the last return (at once if
    /// one did meanwhile: the wake-up is kept until taken).
    pub async fn replicas_recorded_wait(&self) {
        self.replicas_recorded_wake.notified().await
    }

    /// How many applies recorded replicas so far: read before listing them, so a
    /// record written after the listing moves the mark past it.
    pub fn replicas_recorded_mark(&self) -> u64 {
        self.replicas_recorded.load(Ordering::Acquire)
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
