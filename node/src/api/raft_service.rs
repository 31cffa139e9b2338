//! The internal Raft gRPC service: decodes openraft messages for the shard named in
//! each message and hands them to that shard's Raft group. Snapshots arrive as a
//! stream of chunks written to a file, then installed in one step.

use std::sync::Arc;

use futures::StreamExt;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use serde::Serialize;
use stockpile_proto::v1 as pb;
use stockpile_proto::v1::raft_server::Raft as RaftApi;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use crate::node::Node;
use crate::raft::network::RemoteResult;
use crate::raft::types::{Snapshot, SnapshotMeta, TypeConfig, Vote};
use crate::shard::Shard;
use crate::storage::codec;

pub struct RaftService {
    node: Arc<Node>,
}

impl RaftService {
    pub fn new(node: Arc<Node>) -> Self {
        RaftService { node }
    }

    fn shard(&self, shard_id: u64, from: u64) -> Result<&Arc<Shard>, Status> {
        let shard = self.node.shards.get(&shard_id).ok_or_else(|| {
            Status::not_found(format!(
                "node {} holds no replica of shard {shard_id}",
                self.node.id
            ))
        })?;
        if !shard.config.replicas.contains(&from) {
            return Err(Status::permission_denied(format!(
                "node {from} is not a replica of shard {shard_id}"
            )));
        }
        Ok(shard)
    }
}

fn reply<T: Serialize>(
    shard_id: u64,
    from: u64,
    result: &RemoteResult<T>,
) -> Result<Response<pb::RaftMessage>, Status> {
    let payload = codec::encode(result).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(pb::RaftMessage {
        shard_id,
        from_node_id: from,
        payload,
    }))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    codec::decode(bytes)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

#[tonic::async_trait]
impl RaftApi for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let m = request.into_inner();
        let shard = self.shard(m.shard_id, m.from_node_id)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&m.payload)?;
        let result = shard
            .raft
            .append_entries(rpc)
            .await
            .map_err(|e| e.to_string());
        reply(m.shard_id, self.node.id, &result)
    }

    async fn vote(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let m = request.into_inner();
        let shard = self.shard(m.shard_id, m.from_node_id)?;
        let rpc: VoteRequest<TypeConfig> = decode(&m.payload)?;
        let result = shard.raft.vote(rpc).await.map_err(|e| e.to_string());
        reply(m.shard_id, self.node.id, &result)
    }

    async fn pre_vote(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let m = request.into_inner();
        let shard = self.shard(m.shard_id, m.from_node_id)?;
        let rpc: VoteRequest<TypeConfig> = decode(&m.payload)?;
        let result = shard.raft.pre_vote(rpc).await.map_err(|e| e.to_string());
        reply(m.shard_id, self.node.id, &result)
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let m = request.into_inner();
        let shard = self.shard(m.shard_id, m.from_node_id)?;
        let rpc: TransferLeaderRequest<TypeConfig> = decode(&m.payload)?;
        let result = shard
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(|e| e.to_string());
        reply(m.shard_id, self.node.id, &result)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let (shard_id, from) = (first.shard_id, first.from_node_id);
        let shard = self.shard(shard_id, from)?.clone();
        let vote: Vote = decode(&first.vote)?;
        let meta: SnapshotMeta = decode(&first.meta)?;
        let dir = self.node.data_dir.join("snapshots");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let path = dir.join(format!(
            "incoming-shard-{shard_id}-{:016x}",
            rand::random::<u64>()
        ));
        let result = async {
            let mut file = tokio::fs::File::create(&path).await.map_err(|e| Status::internal(e.to_string()))?;
            let mut expected_offset = 0u64;
            let mut chunk = first;
            loop {
                if chunk.shard_id != shard_id || chunk.offset != expected_offset {
                    return Err(Status::invalid_argument(format!(
                        "snapshot chunk for shard {} at offset {}, expected shard {shard_id} offset {expected_offset}",
                        chunk.shard_id, chunk.offset
                    )));
                }
                file.write_all(&chunk.data).await.map_err(|e| Status::internal(e.to_string()))?;
                expected_offset += chunk.data.len() as u64;
                if chunk.done {
                    break;
                }
                chunk = stream.next().await.ok_or_else(|| Status::aborted("snapshot stream ended before its last chunk"))??;
            }
            file.sync_all().await.map_err(|e| Status::internal(e.to_string()))?;
            drop(file);
            let file = tokio::fs::File::open(&path).await.map_err(|e| Status::internal(e.to_string()))?;
            tracing::info!(shard_id, from, bytes = expected_offset, last_log_id = ?meta.last_log_id, "received snapshot");
            let result = shard.raft.install_full_snapshot(vote, Snapshot { meta, snapshot: file }).await.map_err(|e| e.to_string());
            reply(shard_id, self.node.id, &result)
        }
        .await;
        let _ = tokio::fs::remove_file(&path).await;
        result
    }
}
