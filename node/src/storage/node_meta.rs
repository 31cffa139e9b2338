//! What a node remembers about itself, to refuse a start with a config that
//! disagrees with its data: its identity, and each shard's range and initial
//! replicas as first configured.

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
