//! A shard's meta record (key `shard ‖ 0x00`): what its state machine knows about
//! itself, written in the same write batch as every applied entry's data.

use rocksdb::DB;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::raft::types::{LogId, StoredMembership};
use crate::storage::db::cf;
use crate::storage::error::Result;
use crate::storage::keys::{self, CF_SM};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmMeta {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    /// The replicated clock (DESIGN.md: Time).
    pub clock_ms: u64,
    /// Stored outcomes (key family 0x03), for the count bound.
    pub outcomes_count: u64,
}

pub fn read_meta(db: &DB, shard_id: u64) -> Result<SmMeta> {
    let cf = cf(db, CF_SM)?;
    match db.get_pinned_cf(cf, keys::sm_meta_key(shard_id))? {
        Some(bytes) => Ok(codec::decode(&bytes)?),
        None => Ok(SmMeta::default()),
    }
}
