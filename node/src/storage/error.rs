//! The one error type of storage. openraft's storage traits want `io::Error`; the
//! conversion keeps the kind (`InvalidData` for corrupt or undecodable data) and the
//! message.

use std::io;

use crate::codec::CodecError;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open RocksDB at {path}: {source}")]
    Open {
        path: String,
        source: rocksdb::Error,
    },
    #[error("RocksDB: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("column family {0} is missing")]
    MissingCf(&'static str),
    /// Stored bytes that break their layout (a malformed key, a hole in a log).
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A write by a replica of `shard_id` that was stopped to be deleted (`fence`).
    #[error("shard {shard_id}: this replica was stopped and its data deleted")]
    Retired { shard_id: u64 },
}

pub type Result<T> = std::result::Result<T, StorageError>;

impl From<StorageError> for io::Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Io(e) => e,
            e @ (StorageError::Codec(_) | StorageError::Corrupt(_)) => {
                io::Error::new(io::ErrorKind::InvalidData, e)
            }
            e => io::Error::other(e),
        }
    }
}
