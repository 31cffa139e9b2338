//! What a node remembers about itself, to refuse a start with a config that
//! disagrees with its data: its identity, and each shard's range and initial
//! replicas as first configured.

use std::io;

use rocksdb::{DB, Direction, IteratorMode};
use serde::{Deserialize, Serialize};

use super::codec;
use super::db::cf;
use super::keys::{self, CF_NODE_META, CF_RAFT_STATE, StateTag};

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

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

pub fn read_identity(db: &DB) -> io::Result<Option<NodeIdentity>> {
    let cf = cf(db, CF_NODE_META).map_err(io_err)?;
    match db.get_cf(cf, keys::NODE_IDENTITY_KEY).map_err(io_err)? {
        Some(b) => Ok(Some(codec::decode(&b)?)),
        None => Ok(None),
    }
}

pub fn write_identity(db: &DB, identity: &NodeIdentity) -> io::Result<()> {
    let cf = cf(db, CF_NODE_META).map_err(io_err)?;
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    db.put_cf_opt(cf, keys::NODE_IDENTITY_KEY, codec::encode(identity)?, &opts)
        .map_err(io_err)
}

pub fn read_descriptor(db: &DB, shard_id: u64) -> io::Result<Option<ShardDescriptor>> {
    let cf = cf(db, CF_RAFT_STATE).map_err(io_err)?;
    match db
        .get_cf(cf, keys::raft_state_key(shard_id, StateTag::Descriptor))
        .map_err(io_err)?
    {
        Some(b) => Ok(Some(codec::decode(&b)?)),
        None => Ok(None),
    }
}

pub fn write_descriptor(db: &DB, shard_id: u64, d: &ShardDescriptor) -> io::Result<()> {
    let cf = cf(db, CF_RAFT_STATE).map_err(io_err)?;
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    db.put_cf_opt(
        cf,
        keys::raft_state_key(shard_id, StateTag::Descriptor),
        codec::encode(d)?,
        &opts,
    )
    .map_err(io_err)
}

/// Ids of every shard with a descriptor on this node.
pub fn stored_shards(db: &DB) -> io::Result<Vec<u64>> {
    let cf = cf(db, CF_RAFT_STATE).map_err(io_err)?;
    let mut out = Vec::new();
    for item in db.iterator_cf(cf, IteratorMode::From(&[], Direction::Forward)) {
        let (k, _) = item.map_err(io_err)?;
        if k.len() == 9 && k[8] == StateTag::Descriptor as u8 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&k[..8]);
            out.push(u64::from_be_bytes(b));
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
        let db = super::super::db::open(&dir.path().join("db")).unwrap();
        let identity = NodeIdentity {
            cluster_name: "c".into(),
            node_id: 1,
        };
        write_identity(&db, &identity).unwrap();
        assert_eq!(read_identity(&db).unwrap(), Some(identity.clone()));
        let mut older = codec::encode(&identity).unwrap();
        older[0] = codec::FORMAT_VERSION - 1;
        db.put_cf(
            cf(&db, CF_NODE_META).unwrap(),
            keys::NODE_IDENTITY_KEY,
            older,
        )
        .unwrap();
        let err = read_identity(&db).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains(&format!(
                "unknown format version {}",
                codec::FORMAT_VERSION - 1
            )),
            "{err}"
        );
    }
}
