//! A shard's Raft log in the node's RocksDB (`raft_log` and `raft_state` column
//! families), implementing openraft's `RaftLogStorage`.
//!
//! Appends are written without a sync and made durable by the node's group-commit
//! syncer before openraft is told they are flushed. Votes are synced at once
//! (rare, and a vote must never be forgotten). Purging syncs the WAL first, so the
//! state machine writes that the purged entries produced are durable before the
//! entries disappear.

use crate::telemetry::names;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::storage::{RaftLogReader, RaftLogStorage};
use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions};

use super::Store;
use super::db::{LogSyncer, cf};
use super::error::{Result, StorageError};
use super::keys::{self, CF_RAFT_LOG, CF_RAFT_STATE, StateTag};
use crate::codec;
use crate::raft::types::{Entry, IOFlushed, LogId, LogState, TypeConfig, Vote};
use crate::router::ShardId;

/// Entries read in one `try_get_log_entries` call at most; openraft asks again for more.
pub const READ_ENTRIES_MAX: u64 = 4_096;

#[derive(Clone)]
pub struct LogStore {
    /// The shard's id as its keys spell it.
    shard_id: u64,
    db: Arc<DB>,
    syncer: LogSyncer,
}

impl LogStore {
    pub fn new(shard_id: ShardId, store: &Store, syncer: LogSyncer) -> Self {
        LogStore {
            shard_id: shard_id.0,
            db: store.db().clone(),
            syncer,
        }
    }

    fn get_state<T: serde::de::DeserializeOwned>(&self, tag: StateTag) -> Result<Option<T>> {
        let cf = cf(&self.db, CF_RAFT_STATE)?;
        match self
            .db
            .get_pinned_cf(cf, keys::raft_state_key(self.shard_id, tag))?
        {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn put_state<T: serde::Serialize>(&self, tag: StateTag, value: &T, sync: bool) -> Result<()> {
        let cf = cf(&self.db, CF_RAFT_STATE)?;
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        Ok(self.db.put_cf_opt(
            cf,
            keys::raft_state_key(self.shard_id, tag),
            codec::encode(value)?,
            &opts,
        )?)
    }

    fn last_log_id_in_log(&self) -> Result<Option<LogId>> {
        let cf = cf(&self.db, CF_RAFT_LOG)?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(keys::log_key(self.shard_id, 0).to_vec());
        opts.set_iterate_upper_bound(keys::log_key(self.shard_id + 1, 0).to_vec());
        let mut it = self.db.iterator_cf_opt(cf, opts, IteratorMode::End);
        match it.next() {
            Some(Ok((_, value))) => {
                let entry: Entry = codec::decode(&value)?;
                Ok(Some(entry.log_id()))
            }
            Some(Err(e)) => Err(e.into()),
            None => Ok(None),
        }
    }

    /// True when this shard has never stored a vote or a log entry on this node.
    pub fn is_pristine(&self) -> Result<bool> {
        Ok(self.get_state::<Vote>(StateTag::Vote)?.is_none()
            && self.get_state::<LogId>(StateTag::LastPurged)?.is_none()
            && self.last_log_id_in_log()?.is_none())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        Ok(self.read_range(start, end)?)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        Ok(self.read_range(start, end.min(start.saturating_add(READ_ENTRIES_MAX)))?)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        Ok(self.get_state(StateTag::Vote)?)
    }
}

impl LogStore {
    /// Entries `[start, end)` present in the log, from one consistent iterator; a hole
    /// inside what is present is an error.
    fn read_range(&self, start: u64, end: u64) -> Result<Vec<Entry>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let cf = cf(&self.db, CF_RAFT_LOG)?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(keys::log_key(self.shard_id, end).to_vec());
        let from = keys::log_key(self.shard_id, start);
        let mut entries = Vec::with_capacity((end - start).min(256) as usize);
        for item in self
            .db
            .iterator_cf_opt(cf, opts, IteratorMode::From(&from, Direction::Forward))
        {
            let (key, value) = item?;
            let Some(index) = keys::log_key_index(self.shard_id, &key) else {
                break;
            };
            let entry: Entry = codec::decode(&value)?;
            assert_eq!(
                entry.index(),
                index,
                "shard {}: entry under key {index} has index {}",
                self.shard_id,
                entry.index()
            );
            if let Some(prev) = entries.last().map(|e: &Entry| e.index())
                && prev + 1 != index
            {
                return Err(StorageError::Corrupt(format!(
                    "shard {}: hole in the log between {prev} and {index}",
                    self.shard_id
                )));
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState> {
        let last_purged_log_id: Option<LogId> = self.get_state(StateTag::LastPurged)?;
        let last_log_id = self.last_log_id_in_log()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        Ok(self.put_state(StateTag::Vote, vote, true)?)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Not synced: a lost committed id is recomputed from a quorum; it only lets a
        // restarted node apply sooner.
        Ok(self.put_state(StateTag::Committed, &committed, false)?)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self
            .get_state::<Option<LogId>>(StateTag::Committed)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let cf = cf(&self.db, CF_RAFT_LOG)?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put_cf(
                cf,
                keys::log_key(self.shard_id, entry.index()),
                codec::encode(&entry).map_err(StorageError::from)?,
            );
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        let started = std::time::Instant::now();
        self.db
            .write_opt(batch, &opts)
            .map_err(StorageError::from)?;
        metrics::histogram!(names::LOG_APPEND_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        self.syncer.after_sync(callback).await
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map(|l| l.index() + 1).unwrap_or(0);
        let cf = cf(&self.db, CF_RAFT_LOG)?;
        // Later appends are synced after this write, which makes it durable first.
        self.db
            .delete_range_cf(
                cf,
                keys::log_key(self.shard_id, from),
                keys::log_key(self.shard_id + 1, 0),
            )
            .map_err(|e| StorageError::from(e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // The state machine's writes up to `log_id` must be durable before the entries
        // that produced them are gone.
        self.db.flush_wal(true).map_err(StorageError::from)?;
        self.put_state(StateTag::LastPurged, &log_id, true)?;
        let cf = cf(&self.db, CF_RAFT_LOG)?;
        self.db
            .delete_range_cf(
                cf,
                keys::log_key(self.shard_id, 0),
                keys::log_key(self.shard_id, log_id.index() + 1),
            )
            .map_err(|e| StorageError::from(e).into())
    }
}
