//! openraft's type configuration for Stockpile: one per cluster, shared by every
//! shard's Raft group. Log entries carry a `ShardRequest`; applying one yields a
//! `ShardResponse`.

use crate::inventory::{ShardRequest, ShardResponse};

openraft::declare_raft_types!(
    /// Stockpile's Raft types: node ids are `u64`, node info is the gRPC address.
    pub TypeConfig:
        D = ShardRequest,
        R = ShardResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
);

pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>;
pub type LogState = openraft::LogState<TypeConfig>;
pub type IOFlushed = openraft::storage::IOFlushed<TypeConfig>;
pub type EntryResponder = openraft::storage::EntryResponder<TypeConfig>;

/// A snapshot travels and is installed as a file: see `storage::snapshot`.
pub type SnapshotData = tokio::fs::File;
