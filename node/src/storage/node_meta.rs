//! What a node remembers about itself: its identity, and the replicas it holds (each
//! shard's range and initial replicas, and this node's replica id). After the first
//! boot these records, not the config, say which shards a node starts: replicas come
//! and go by moves (`node::moves`).

use rocksdb::{Direction, IteratorMode};
use serde::{Deserialize, Serialize};

use super::Store;
use super::db::cf;
use super::error::Result;
use super::keys::{self, CF_NODE_META, CF_RAFT_STATE, StateTag};
use crate::codec;
use crate::router::ShardId;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub cluster_name: String,
    pub node_id: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardDescriptor {
    pub start: String,
    pub end: String,
    pub replicas: Vec<u64>,
}

pub fn read_identity(store: &Store) -> Result<Option<NodeIdentity>> {
    let db = store.db();
    let cf = cf(db, CF_NODE_META)?;
    match db.get_cf(cf, keys::NODE_IDENTITY_KEY)? {
        Some(b) => Ok(Some(codec::decode(&b)?)),
        None => Ok(None),
    }
}

pub fn write_identity(store: &Store, identity: &NodeIdentity) -> Result<()> {
    let db = store.db();
    let cf = cf(db, CF_NODE_META)?;
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    Ok(db.put_cf_opt(cf, keys::NODE_IDENTITY_KEY, codec::encode(identity)?, &opts)?)
}

pub fn read_descriptor(store: &Store, shard_id: ShardId) -> Result<Option<ShardDescriptor>> {
    let db = store.db();
    let cf = cf(db, CF_RAFT_STATE)?;
    match db.get_cf(cf, keys::raft_state_key(shard_id.0, StateTag::Descriptor))? {
        Some(b) => Ok(Some(codec::decode(&b)?)),
        None => Ok(None),
    }
}

pub fn write_descriptor(store: &Store, shard_id: ShardId, d: &ShardDescriptor) -> Result<()> {
    let db = store.db();
    let cf = cf(db, CF_RAFT_STATE)?;
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    Ok(db.put_cf_opt(
        cf,
        keys::raft_state_key(shard_id.0, StateTag::Descriptor),
        codec::encode(d)?,
        &opts,
    )?)
}

/// Records that this node holds a replica of `shard_id` with id `replica_id`: its
/// descriptor and id in one synced write (a crash leaves both or neither).
pub fn write_replica(
    store: &Store,
    shard_id: ShardId,
    d: &ShardDescriptor,
    replica_id: u64,
) -> Result<()> {
    let db = store.db();
    let cf = cf(db, CF_RAFT_STATE)?;
    let mut batch = rocksdb::WriteBatch::default();
    batch.put_cf(
        cf,
        keys::raft_state_key(shard_id.0, StateTag::Descriptor),
        codec::encode(d)?,
    );
    batch.put_cf(
        cf,
        keys::raft_state_key(shard_id.0, StateTag::ReplicaId),
        replica_id.to_be_bytes(),
    );
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    Ok(db.write_opt(batch, &opts)?)
}

/// This node's replica id in `shard_id`'s group, if one was recorded (None: the
/// seeded replica of the first layout, whose id is the node id).
pub fn read_replica_id(store: &Store, shard_id: ShardId) -> Result<Option<u64>> {
    let db = store.db();
    let cf = cf(db, CF_RAFT_STATE)?;
    let raw = db.get_cf(cf, keys::raft_state_key(shard_id.0, StateTag::ReplicaId))?;
    Ok(raw.and_then(|b| {
        <[u8; 8]>::try_from(b.as_slice())
            .ok()
            .map(u64::from_be_bytes)
    }))
}

/// Deletes everything this node stores for `shard_id` (log, Raft state, state
/// machine in one synced write; then its snapshot files in `snapshot_dir`): a replica
/// removed from its group. Call only after the shard's Raft group here has stopped
/// and its write fence was closed (`Node::retire`).
pub fn delete_shard(
    store: &Store,
    snapshot_dir: &std::path::Path,
    shard_id: ShardId,
) -> Result<()> {
    let db = store.db();
    let (start, end) = keys::shard_bounds(shard_id.0);
    let mut batch = rocksdb::WriteBatch::default();
    for name in [keys::CF_RAFT_LOG, keys::CF_RAFT_STATE, keys::CF_SM] {
        batch.delete_range_cf(cf(db, name)?, start, end);
    }
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts)?;
    if snapshot_dir.exists() {
        super::snapshot::remove_all(snapshot_dir, shard_id.0)?;
    }
    Ok(())
}

/// Ids of every shard with a descriptor on this node.
pub fn stored_shards(store: &Store) -> Result<Vec<ShardId>> {
    let db = store.db();
    let cf = cf(db, CF_RAFT_STATE)?;
    let mut out = Vec::new();
    for item in db.iterator_cf(cf, IteratorMode::From(&[], Direction::Forward)) {
        let (k, _) = item?;
        if k.len() == 9 && k[8] == StateTag::Descriptor as u8 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&k[..8]);
            out.push(ShardId(u64::from_be_bytes(b)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_written_in_an_older_format_is_refused_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let db = Store::open(&dir.path().join("db")).unwrap();
        let identity = NodeIdentity {
            cluster_name: "c".into(),
            node_id: 1,
        };
        write_identity(&db, &identity).unwrap();
        assert_eq!(read_identity(&db).unwrap(), Some(identity.clone()));
        let mut older = codec::encode(&identity).unwrap();
        older[0] = codec::FORMAT_VERSION - 1;
        db.db()
            .put_cf(
                cf(db.db(), CF_NODE_META).unwrap(),
                keys::NODE_IDENTITY_KEY,
                older,
            )
            .unwrap();
        let err = read_identity(&db).unwrap_err();
        assert!(
            matches!(
                err,
                super::super::StorageError::Codec(
                    crate::codec::CodecError::UnknownFormatVersion { .. }
                )
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains(&format!(
                "unknown format version {}",
                codec::FORMAT_VERSION - 1
            )),
            "{err}"
        );
    }
}
