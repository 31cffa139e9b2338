//! Incoming Raft messages for one shard: decoded with the codec, checked by the
//! guard, handed to the shard's Raft group, and the answer encoded for the sender
//! (openraft's result, or its error as text: a `RemoteResult`).
//!
//! The gRPC side (`api::raft_service`) only finds the shard and moves bytes.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ShardRaft;
use super::guard::{self, Refused};
use super::network::RemoteResult;
use super::types::{Snapshot, SnapshotData, SnapshotMeta, TypeConfig, Vote};
use crate::codec;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};

/// Why an incoming message was not handed to the shard.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error("undecodable raft message: {0}")]
    Undecodable(String),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("cannot encode the answer: {0}")]
    Encode(String),
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, InboundError> {
    codec::decode(bytes).map_err(|e| InboundError::Undecodable(e.to_string()))
}

fn encode<T: Serialize>(result: &RemoteResult<T>) -> Result<Vec<u8>, InboundError> {
    codec::encode(result).map_err(|e| InboundError::Encode(e.to_string()))
}

/// A snapshot stream's header, decoded and checked before its data is received.
pub struct SnapshotHeader {
    vote: Vote,
    meta: SnapshotMeta,
}

impl SnapshotHeader {
    pub fn last_log_index(&self) -> Option<u64> {
        self.meta.last_log_id.map(|l| l.index)
    }
}

impl ShardRaft {
    pub async fn handle_append_entries(
        &self,
        from: u64,
        payload: &[u8],
    ) -> Result<Vec<u8>, InboundError> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(payload)?;
        guard::append_entries(&rpc, from)?;
        self.wake();
        let result = self.inner().append_entries(rpc).await;
        encode(&result.map_err(|e| e.to_string()))
    }

    /// A Vote, or with `pre` a PreVote.
    pub async fn handle_vote(
        &self,
        from: u64,
        payload: &[u8],
        pre: bool,
    ) -> Result<Vec<u8>, InboundError> {
        let rpc: VoteRequest<TypeConfig> = decode(payload)?;
        let what = if pre { "pre_vote" } else { "vote" };
        guard::vote_request(&rpc, from, self.term(), what)?;
        self.wake();
        if pre {
            encode(&self.inner().pre_vote(rpc).await.map_err(|e| e.to_string()))
        } else {
            encode(&self.inner().vote(rpc).await.map_err(|e| e.to_string()))
        }
    }

    pub async fn handle_transfer_leader(
        &self,
        from: u64,
        payload: &[u8],
    ) -> Result<Vec<u8>, InboundError> {
        let rpc: TransferLeaderRequest<TypeConfig> = decode(payload)?;
        guard::transfer_leader(&rpc, from, self.term())?;
        self.wake();
        let result = self.inner().handle_transfer_leader(rpc).await;
        encode(&result.map_err(|e| e.to_string()))
    }

    /// Decodes and checks a snapshot stream's header (its first chunk).
    pub fn snapshot_header(
        &self,
        from: u64,
        vote: &[u8],
        meta: &[u8],
    ) -> Result<SnapshotHeader, InboundError> {
        let header = SnapshotHeader {
            vote: decode(vote)?,
            meta: decode(meta)?,
        };
        guard::install_snapshot(&header.vote, &header.meta, from)?;
        Ok(header)
    }

    /// Installs a received snapshot (`file` holds its data).
    pub async fn handle_install_snapshot(
        &self,
        header: SnapshotHeader,
        file: SnapshotData,
    ) -> Result<Vec<u8>, InboundError> {
        self.wake();
        let snapshot = Snapshot {
            meta: header.meta,
            snapshot: file,
        };
        let result = self
            .inner()
            .install_full_snapshot(header.vote, snapshot)
            .await;
        encode(&result.map_err(|e| e.to_string()))
    }
}
