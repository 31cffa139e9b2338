//! Reads of a shard's state machine for the API, straight from RocksDB (never through
//! the Raft log). Each call reads from one RocksDB snapshot, so the records it returns
//! and the applied index it reports belong to the same state.

use std::sync::Arc;

use rocksdb::{DB, Direction, IteratorMode, ReadOptions};

use super::Store;
use super::db::cf;
use super::error::{Result, StorageError};
use super::keys::{self, CF_SM, SmSpace};
use super::state_machine::SmMeta;
use crate::codec;
use crate::inventory::cluster::{MoveRecord, NodeRecord};
use crate::inventory::{Reservation, StockRecord};
use crate::router::ShardId;

#[derive(Clone)]
pub struct ShardReader {
    /// The shard's id as its keys spell it.
    shard_id: u64,
    db: Arc<DB>,
}

/// A shard's digest (`ShardReader::digest`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    pub applied_index: u64,
    pub digest: u64,
    pub outcomes_count: u64,
}

/// Where a List page starts inside a shard.
#[derive(Clone, Copy, Debug)]
pub enum ListFrom<'a> {
    Start,
    /// The first SKU greater than this.
    After(&'a str),
    /// The first SKU greater than or equal to this.
    AtOrAfter(&'a str),
}

/// The meta shard's records (`inventory::cluster`), in id order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterMapRecords {
    pub nodes: Vec<NodeRecord>,
    pub moves: Vec<MoveRecord>,
}

pub struct ListPage {
    pub applied_index: u64,
    pub records: Vec<(String, StockRecord)>,
    /// True when the shard holds more SKUs after the last returned one.
    pub more: bool,
}

impl ShardReader {
    pub fn new(shard_id: ShardId, store: &Store) -> Self {
        ShardReader {
            shard_id: shard_id.0,
            db: store.db().clone(),
        }
    }

    fn meta_in(&self, snap: &rocksdb::SnapshotWithThreadMode<'_, DB>) -> Result<SmMeta> {
        let cf = cf(&self.db, CF_SM)?;
        match snap.get_cf(cf, keys::sm_meta_key(self.shard_id))? {
            Some(b) => Ok(codec::decode(&b)?),
            None => Ok(SmMeta::default()),
        }
    }

    pub fn meta(&self) -> Result<SmMeta> {
        self.meta_in(&self.db.snapshot())
    }

    /// The applied index and the stock records of `skus` (None when never set).
    pub fn get_many(&self, skus: &[&str]) -> Result<(u64, Vec<Option<StockRecord>>)> {
        let cf = cf(&self.db, CF_SM)?;
        let snap = self.db.snapshot();
        let applied = self
            .meta_in(&snap)?
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        let mut out = Vec::with_capacity(skus.len());
        for sku in skus {
            out.push(
                match snap.get_cf(cf, keys::stock_key(self.shard_id, sku))? {
                    Some(b) => Some(codec::decode(&b)?),
                    None => None,
                },
            );
        }
        Ok((applied, out))
    }

    pub fn reservation(&self, id: &str) -> Result<(u64, Option<Reservation>)> {
        let cf = cf(&self.db, CF_SM)?;
        let snap = self.db.snapshot();
        let applied = self
            .meta_in(&snap)?
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        let r = match snap.get_cf(cf, keys::reservation_key(self.shard_id, id))? {
            Some(b) => Some(codec::decode(&b)?),
            None => None,
        };
        Ok((applied, r))
    }

    /// Up to `limit` stock records in SKU order from `from`.
    pub fn list(&self, from: ListFrom<'_>, limit: usize) -> Result<ListPage> {
        let cf = cf(&self.db, CF_SM)?;
        let snap = self.db.snapshot();
        let applied_index = self
            .meta_in(&snap)?
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        let (space_start, space_end) = keys::sm_space_range(self.shard_id, SmSpace::Stock);
        let start = match from {
            ListFrom::Start => space_start.to_vec(),
            ListFrom::AtOrAfter(sku) => keys::stock_key(self.shard_id, sku),
            ListFrom::After(sku) => {
                let mut k = keys::stock_key(self.shard_id, sku);
                k.push(0);
                k
            }
        };
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(space_end.to_vec());
        let mut records = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        for item in snap.iterator_cf_opt(cf, opts, IteratorMode::From(&start, Direction::Forward)) {
            let (k, v) = item?;
            if records.len() == limit {
                more = true;
                break;
            }
            let sku = keys::stock_key_sku(self.shard_id, &k)
                .ok_or_else(|| StorageError::Corrupt("a malformed stock key".into()))?;
            records.push((sku.to_string(), codec::decode(&v)?));
        }
        Ok(ListPage {
            applied_index,
            records,
            more,
        })
    }

    /// The shard's stock records, counted up to `max` (a count stops there).
    pub fn count_skus(&self, max: u64) -> Result<u64> {
        let cf = cf(&self.db, CF_SM)?;
        let (start, end) = keys::sm_space_range(self.shard_id, SmSpace::Stock);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(end.to_vec());
        let mut count = 0u64;
        for item in
            self.db
                .iterator_cf_opt(cf, opts, IteratorMode::From(&start, Direction::Forward))
        {
            item?;
            count += 1;
            if count >= max {
                break;
            }
        }
        Ok(count)
    }

    /// The bytes (keys and values) of the shard's state machine, counted up to `max`
    /// (a count stops past it): what a merge would carry, within a few records.
    pub fn state_bytes(&self, max: u64) -> Result<u64> {
        let cf = cf(&self.db, CF_SM)?;
        let (start, end) = keys::sm_range(self.shard_id);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(end.to_vec());
        let mut bytes = 0u64;
        for item in
            self.db
                .iterator_cf_opt(cf, opts, IteratorMode::From(&start, Direction::Forward))
        {
            let (k, v) = item?;
            bytes += (k.len() + v.len()) as u64;
            if bytes > max {
                break;
            }
        }
        Ok(bytes)
    }

    /// The frozen shard's state for a merge into its left neighbour; None when it is
    /// not frozen here (yet).
    pub fn merge_source(&self) -> Result<Option<crate::inventory::MergeSource>> {
        super::state_machine::merge_source(&self.db, self.shard_id)
    }

    /// The version this shard reached when it merged its right neighbour `right`, if
    /// it did.
    pub fn merged(&self, right: ShardId) -> Result<Option<u64>> {
        let cf = cf(&self.db, CF_SM)?;
        match self
            .db
            .get_pinned_cf(cf, keys::sm_merged_key(self.shard_id, right.0))?
        {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// The SKU in the middle of the shard's stock records (by count), where a split
    /// leaves two halves of equal size; None with fewer than two records. Two passes
    /// over the keys on one snapshot: a split is rare and the shard bounded.
    pub fn middle_sku(&self) -> Result<Option<String>> {
        let cf = cf(&self.db, CF_SM)?;
        let snap = self.db.snapshot();
        let (start, end) = keys::sm_space_range(self.shard_id, SmSpace::Stock);
        let keys_of = || {
            let mut opts = ReadOptions::default();
            opts.set_iterate_upper_bound(end.to_vec());
            snap.iterator_cf_opt(cf, opts, IteratorMode::From(&start, Direction::Forward))
        };
        let mut count = 0usize;
        for item in keys_of() {
            item?;
            count += 1;
        }
        if count < 2 {
            return Ok(None);
        }
        match keys_of().nth(count / 2) {
            Some(item) => {
                let (k, _) = item?;
                let sku = keys::stock_key_sku(self.shard_id, &k)
                    .ok_or_else(|| StorageError::Corrupt("a malformed stock key".into()))?;
                Ok(Some(sku.to_string()))
            }
            None => Ok(None),
        }
    }

    /// The cluster map this (meta) shard holds: every node and every move under way.
    /// Bounded by the map's size: nodes and shards of one cluster.
    pub fn cluster_map(&self) -> Result<ClusterMapRecords> {
        let snap = self.db.snapshot();
        Ok(ClusterMapRecords {
            nodes: self.space_values(&snap, SmSpace::ClusterNode)?,
            moves: self.space_values(&snap, SmSpace::ClusterMove)?,
        })
    }

    /// The children this shard's splits made that it still remembers (a child merged
    /// back is forgotten), by id.
    pub fn children(&self) -> Result<Vec<u64>> {
        let snap = self.db.snapshot();
        let children: Vec<super::state_machine::ChildRecord> =
            self.space_values(&snap, SmSpace::Child)?;
        Ok(children.into_iter().map(|c| c.child).collect())
    }

    fn space_values<T: serde::de::DeserializeOwned>(
        &self,
        snap: &rocksdb::SnapshotWithThreadMode<'_, DB>,
        space: SmSpace,
    ) -> Result<Vec<T>> {
        let cf = cf(&self.db, CF_SM)?;
        let (start, end) = keys::sm_space_range(self.shard_id, space);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(end.to_vec());
        let mut values = Vec::new();
        for item in snap.iterator_cf_opt(cf, opts, IteratorMode::From(&start, Direction::Forward)) {
            let (_, v) = item?;
            values.push(codec::decode(&v)?);
        }
        Ok(values)
    }

    /// The earliest timer of the shard (reservation expiry or forget), if any: the
    /// leader proposes a tick when it is due.
    pub fn earliest_timer_ms(&self) -> Result<Option<u64>> {
        let cf = cf(&self.db, CF_SM)?;
        let (start, end) = keys::sm_space_range(self.shard_id, SmSpace::Timer);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(end.to_vec());
        let mut it =
            self.db
                .iterator_cf_opt(cf, opts, IteratorMode::From(&start, Direction::Forward));
        match it.next() {
            Some(item) => {
                let (k, _) = item?;
                Ok(keys::parse_timer_key(self.shard_id, &k).map(|(ms, _)| ms))
            }
            None => Ok(None),
        }
    }

    /// A digest of the shard's whole state machine except the meta record's
    /// membership log id, with the applied index and the stored outcome count:
    /// replicas at the same index must have the same digest.
    pub fn digest(&self) -> Result<Digest> {
        let cf = cf(&self.db, CF_SM)?;
        let snap = self.db.snapshot();
        let meta = self.meta_in(&snap)?;
        let (start, end) = keys::sm_range(self.shard_id);
        let meta_key = keys::sm_meta_key(self.shard_id);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(end.to_vec());
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for item in snap.iterator_cf_opt(cf, opts, IteratorMode::From(&start, Direction::Forward)) {
            let (k, v) = item?;
            if *k == *meta_key {
                continue;
            }
            h.update(&(k.len() as u64).to_le_bytes());
            h.update(&k);
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(&v);
        }
        h.update(&meta.clock_ms.to_le_bytes());
        h.update(&meta.outcomes_count.to_le_bytes());
        Ok(Digest {
            applied_index: meta.last_applied.map(|l| l.index).unwrap_or(0),
            digest: h.digest(),
            outcomes_count: meta.outcomes_count,
        })
    }
}
