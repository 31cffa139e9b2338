//! The node's one RocksDB, its column families, and the group-commit syncer that
//! makes log appends durable.
//!
//! Group commit: a log append writes its entries without syncing, then hands its
//! completion callback to the node's single syncer thread. The syncer takes every
//! callback waiting (up to `SYNC_BATCH_MAX`), syncs the WAL once, and completes them
//! all. RocksDB's WAL is one sequential file for all column families, so one sync
//! makes every earlier write of every shard durable. Appends from all shards share
//! syncs; there is no thread and no sync per append.

use crate::telemetry::names;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{ColumnFamilyDescriptor, DB, Options};
use tokio::sync::mpsc;

use super::error::StorageError;
use super::keys;
use crate::raft::types::IOFlushed;

/// Callbacks completed by one WAL sync at most: bounds the latency a single sync
/// adds to the last callback of a huge burst.
pub const SYNC_BATCH_MAX: usize = 4_096;
/// Appends waiting for a sync at most; an append beyond waits for room (backpressure).
pub const SYNC_QUEUE_MAX: usize = 16_384;

/// One memtable's size, per column family (RocksDB's default is 64 MiB). Every
/// applied op writes a new version of its stock record, its stored outcome and an
/// age-index key, and every lookup and insert walks the memtable's skiplist: in a
/// 64 MiB memtable that walk took ~11% of a loaded node's CPU samples (cache misses
/// at every level), in an 8 MiB one ~6% (docs/PERFORMANCE.md). Smaller memtables also
/// bound the memory a write burst pins: 2 memtables × 8 MiB per family at most
/// (32 MiB for `sm`, below).
/// Flushes are more frequent but small: most versions in a flush are overwrites of
/// the same records.
const MEMTABLE_BYTES_MAX: usize = 8 << 20;

/// The state machine's memtable is larger. Stored outcomes are keyed by random
/// request ids, so every level-0 file spans the whole key range, and each level-0
/// compaction rewrites the base level with it: the fewer and larger the flushes, the
/// fewer those rewrites. With 32 MiB, a minute of `uniform --batch 100` compacted
/// 0.83 GB out of `sm` instead of 2.84 GB, and the second 20 s run of a sustained
/// load served 67–68,000 ops/s instead of 52–53,000 (docs/PERFORMANCE.md, item 17).
/// The skiplist walks lengthen by about two levels, which the short runs did not show.
/// Bound: 2 × 32 MiB for `sm` under a write burst, 48 MiB more than with 8 MiB.
const SM_MEMTABLE_BYTES_MAX: usize = 32 << 20;

/// Compression by LSM level: none in levels 0 and 1, LZ4 below. Every memtable
/// flush writes level 0 and most of it is soon compacted away (overwritten stock
/// records, pruned outcomes, purged log entries), so compressing it was wasted CPU:
/// LZ4 took 3.4% of a loaded leader's samples under `uniform --batch 100`
/// (docs/PERFORMANCE.md). The deeper levels hold the long-lived data, where LZ4 saves
/// space. (TiKV's defaults make the same choice.)
const COMPRESSION_PER_LEVEL: [rocksdb::DBCompressionType; 7] = {
    use rocksdb::DBCompressionType::{Lz4, None};
    [None, None, Lz4, Lz4, Lz4, Lz4, Lz4]
};

/// Counters of the write path, read by status and tests (syncs < appends shows
/// group commit at work).
#[derive(Debug, Default)]
pub struct WritePathStats {
    pub log_appends: AtomicU64,
    pub log_syncs: AtomicU64,
    /// Nanoseconds spent in WAL syncs, summed.
    pub log_sync_nanos: AtomicU64,
}

pub(super) fn open(path: &Path) -> Result<Arc<DB>, StorageError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Two cores: one background job for flushes and one for compactions.
    opts.set_max_background_jobs(2);
    opts.set_keep_log_file_num(4);
    let cfs = keys::ALL_CFS.iter().map(|name| {
        let mut cf_opts = Options::default();
        cf_opts.set_compression_per_level(&COMPRESSION_PER_LEVEL);
        cf_opts.set_write_buffer_size(MEMTABLE_BYTES_MAX);
        if *name == keys::CF_SM {
            cf_opts.set_write_buffer_size(SM_MEMTABLE_BYTES_MAX);
            // Most state machine reads are point lookups, many of them misses (is this
            // request id stored?): bloom filters in the memtable and in every SST file
            // answer a miss without walking the skiplist or reading a block.
            cf_opts.set_memtable_whole_key_filtering(true);
            cf_opts.set_memtable_prefix_bloom_ratio(0.1);
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_bloom_filter(10.0, false);
            table.set_whole_key_filtering(true);
            cf_opts.set_block_based_table_factory(&table);
        }
        ColumnFamilyDescriptor::new(*name, cf_opts)
    });
    let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|source| StorageError::Open {
        path: path.display().to_string(),
        source,
    })?;
    for name in keys::ALL_CFS {
        if db.cf_handle(name).is_none() {
            return Err(StorageError::MissingCf(name));
        }
    }
    Ok(Arc::new(db))
}

/// A column family handle that `open` checked exists.
pub fn cf<'a>(db: &'a DB, name: &'static str) -> Result<&'a rocksdb::ColumnFamily, StorageError> {
    db.cf_handle(name).ok_or(StorageError::MissingCf(name))
}

/// Sends append callbacks to the syncer thread. Cheap to clone, one per log store.
#[derive(Clone)]
pub struct LogSyncer {
    tx: mpsc::Sender<IOFlushed>,
    pub stats: Arc<WritePathStats>,
}

impl LogSyncer {
    /// Starts the node's syncer thread. It ends when every `LogSyncer` is dropped.
    ///
    /// The thread holds the database only while it syncs (a `Weak` otherwise): it must
    /// never be the last owner, or the database would close on this detached thread,
    /// possibly while the process exits and RocksDB's static state is being torn down
    /// (which aborts with "pthread lock: Invalid argument"). Every callback is completed
    /// after the database reference is released.
    pub fn start(store: &super::Store, stats: Arc<WritePathStats>) -> std::io::Result<LogSyncer> {
        let (tx, mut rx) = mpsc::channel::<IOFlushed>(SYNC_QUEUE_MAX);
        let thread_stats = stats.clone();
        let db = Arc::downgrade(store.db());
        std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(64);
                while let Some(first) = rx.blocking_recv() {
                    batch.push(first);
                    while batch.len() < SYNC_BATCH_MAX {
                        match rx.try_recv() {
                            Ok(cb) => batch.push(cb),
                            Err(_) => break,
                        }
                    }
                    let started = std::time::Instant::now();
                    let result = match db.upgrade() {
                        Some(db) => db.flush_wal(true).map_err(|e| e.to_string()),
                        None => Err("the database is closed".to_string()),
                    };
                    thread_stats
                        .log_sync_nanos
                        .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    thread_stats.log_syncs.fetch_add(1, Ordering::Relaxed);
                    metrics::histogram!(names::LOG_SYNC_DURATION_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "WAL sync failed: log appends are not durable");
                    }
                    for cb in batch.drain(..) {
                        cb.io_completed(
                            result
                                .as_ref()
                                .map(|_| ())
                                .map_err(|e| std::io::Error::other(e.clone())),
                        );
                    }
                }
            })?;
        Ok(LogSyncer { tx, stats })
    }

    /// Queues `callback` to complete after the next WAL sync.
    pub async fn after_sync(&self, callback: IOFlushed) -> std::io::Result<()> {
        self.stats.log_appends.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(callback)
            .await
            .map_err(|_| std::io::Error::other("the WAL syncer has stopped"))
    }
}
