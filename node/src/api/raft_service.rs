//! The internal Raft gRPC service: decodes openraft messages for the shard named in
//! each message and hands them to that shard's Raft group. Snapshots arrive as a
//! stream of chunks written to a file, then installed in one step.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use serde::Serialize;
use stockpile_proto::v1 as pb;
use stockpile_proto::v1::raft_server::Raft as RaftApi;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, Streaming};

use crate::node::Node;
use crate::raft::guard;
use crate::raft::network::RemoteResult;
use crate::raft::types::{Snapshot, SnapshotMeta, TypeConfig, Vote};
use crate::shard::Shard;
use crate::storage::codec;

pub struct RaftService {
    node: Arc<Node>,
    /// Snapshots being received at once (`server.snapshots_in_flight_max`): a slow or
    /// stalled sender holds a slot only until its chunk timeout.
    snapshot_slots: Arc<Semaphore>,
}

impl RaftService {
    pub fn new(node: Arc<Node>) -> Self {
        let slots = node.cluster.server.snapshots_in_flight_max;
        RaftService {
            node,
            snapshot_slots: Arc::new(Semaphore::new(slots)),
        }
    }

    /// Refuses a message the guard rejects: logged, counted, never seen by openraft.
    fn guard(&self, shard_id: u64, checked: Result<(), guard::Refused>) -> Result<(), Status> {
        checked.map_err(|refused| {
            tracing::warn!(shard_id, from = refused.from, what = refused.what, problem = %refused.problem, "refused a raft message");
            metrics::counter!("stockpile_raft_messages_refused_total", "rpc" => refused.what)
                .increment(1);
            Status::invalid_argument(refused.to_string())
        })
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
        self.guard(m.shard_id, guard::append_entries(&rpc, m.from_node_id))?;
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
        let term = crate::raft::current_term(&shard.raft);
        self.guard(
            m.shard_id,
            guard::vote_request(&rpc, m.from_node_id, term, "vote"),
        )?;
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
        let term = crate::raft::current_term(&shard.raft);
        self.guard(
            m.shard_id,
            guard::vote_request(&rpc, m.from_node_id, term, "pre_vote"),
        )?;
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
        let term = crate::raft::current_term(&shard.raft);
        self.guard(
            m.shard_id,
            guard::transfer_leader(&rpc, m.from_node_id, term),
        )?;
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
        let Ok(_slot) = self.snapshot_slots.clone().try_acquire_owned() else {
            metrics::counter!("stockpile_snapshot_receives_refused_total").increment(1);
            return Err(Status::resource_exhausted(format!(
                "node {} is receiving {} snapshots already; retry later",
                self.node.id, self.node.cluster.server.snapshots_in_flight_max
            )));
        };
        let chunk_timeout =
            Duration::from_millis(self.node.cluster.server.snapshot_chunk_timeout_ms);
        let mut stream = request.into_inner();
        let first = next_chunk(&mut stream, chunk_timeout)
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let (shard_id, from) = (first.shard_id, first.from_node_id);
        let shard = self.shard(shard_id, from)?.clone();
        let vote: Vote = decode(&first.vote)?;
        let meta: SnapshotMeta = decode(&first.meta)?;
        self.guard(shard_id, guard::install_snapshot(&vote, &meta, from))?;
        let dir = self.node.data_dir.join("snapshots");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let path = dir.join(format!(
            "incoming-shard-{shard_id}-{:016x}",
            rand::random::<u64>()
        ));
        let result = async {
            receive_chunks(&path, first, &mut stream, chunk_timeout).await?;
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            tracing::info!(shard_id, from, last_log_id = ?meta.last_log_id, "received snapshot");
            let result = shard
                .raft
                .install_full_snapshot(
                    vote,
                    Snapshot {
                        meta,
                        snapshot: file,
                    },
                )
                .await
                .map_err(|e| e.to_string());
            reply(shard_id, self.node.id, &result)
        }
        .await;
        let _ = tokio::fs::remove_file(&path).await;
        result
    }
}

/// The next chunk of a snapshot stream, or a refusal when none comes within `timeout`
/// (a stalled sender must not hold a snapshot slot forever).
async fn next_chunk(
    stream: &mut Streaming<pb::SnapshotChunk>,
    timeout: Duration,
) -> Result<Option<pb::SnapshotChunk>, Status> {
    match tokio::time::timeout(timeout, stream.next()).await {
        Ok(Some(chunk)) => chunk.map(Some),
        Ok(None) => Ok(None),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no snapshot chunk within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// Writes the chunks, starting with `first`, to `path` and syncs it. Chunks must be
/// of one shard, in order, and end with one marked `done`.
async fn receive_chunks(
    path: &std::path::Path,
    first: pb::SnapshotChunk,
    stream: &mut Streaming<pb::SnapshotChunk>,
    chunk_timeout: Duration,
) -> Result<(), Status> {
    let internal = |e: std::io::Error| Status::internal(e.to_string());
    let shard_id = first.shard_id;
    let mut file = tokio::fs::File::create(path).await.map_err(internal)?;
    let mut expected_offset = 0u64;
    let mut chunk = first;
    loop {
        if chunk.shard_id != shard_id || chunk.offset != expected_offset {
            return Err(Status::invalid_argument(format!(
                "snapshot chunk for shard {} at offset {}, expected shard {shard_id} offset {expected_offset}",
                chunk.shard_id, chunk.offset
            )));
        }
        file.write_all(&chunk.data).await.map_err(internal)?;
        expected_offset += chunk.data.len() as u64;
        if chunk.done {
            break;
        }
        chunk = next_chunk(stream, chunk_timeout)
            .await?
            .ok_or_else(|| Status::aborted("snapshot stream ended before its last chunk"))?;
    }
    file.sync_all().await.map_err(internal)
}
