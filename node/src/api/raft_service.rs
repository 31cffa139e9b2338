//! The internal Raft gRPC service: finds the shard named in each message, checks that
//! the sender is a node of the cluster (and, with TLS, that the sender's certificate
//! names that node), and hands the bytes to `raft::inbound` (which decodes them and
//! whose guard checks that the replica a message speaks for is on the sender). Snapshots arrive as a stream of chunks
//! (`raft::snapshot_stream`) written to a file, then installed in one step. Refusals
//! go through the one error mapping like every other service's.

use std::sync::Arc;
use std::time::Duration;

use stockpile_proto::v1 as pb;
use stockpile_proto::v1::raft_server::Raft as RaftApi;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, Streaming};

use super::status::to_status;
use crate::error::Error;
use crate::node::Node;
use crate::raft::inbound::InboundError;
use crate::raft::snapshot_stream::{self, ReceiveError};
use crate::router::ShardId;
use crate::security::{Caller, Need, audit_denied};
use crate::shard::Shard;
use crate::telemetry::names;

pub struct RaftService {
    node: Arc<Node>,
    /// Snapshots being received at once (`server.snapshots_in_flight_max`): a slow or
    /// stalled sender holds a slot only until its chunk timeout.
    snapshot_slots: Arc<Semaphore>,
}

/// How a Raft call failed, on its way to the one status mapping.
fn refused(shard_id: ShardId, from: u64, rpc: &'static str, e: InboundError) -> Status {
    let error = match e {
        InboundError::Encode(message) => Error::Internal { message },
        e => {
            tracing::warn!(%shard_id, from, rpc, error = %e, "refused a raft message");
            metrics::counter!(names::RAFT_MESSAGES_REFUSED_TOTAL, "rpc" => rpc).increment(1);
            Error::RaftMessageRefused {
                shard_id,
                from_node_id: from,
                problem: e.to_string(),
            }
        }
    };
    to_status(error)
}

impl RaftService {
    pub fn new(node: Arc<Node>) -> Self {
        let slots = node.cluster.server.snapshots_in_flight_max;
        RaftService {
            node,
            snapshot_slots: Arc::new(Semaphore::new(slots)),
        }
    }

    /// The local replica of `shard_id`, if `from` is a node of the cluster and the
    /// message is addressed to this very replica. Not "a member as this replica knows
    /// it": a replica a move just created learns the membership that names its leader
    /// only from the leader's own entries. The guard checks that the replica a message
    /// speaks for is on the sending node.
    ///
    /// The address matters because a node can hold, one after the other, two replicas
    /// of one shard (moved off and back): the newer one, empty or behind, must not
    /// grant a vote its predecessor was asked for, which would let a stale candidate
    /// count it as a member it no longer is (TiKV drops messages for a stale peer id
    /// the same way).
    fn shard(
        &self,
        shard_id: ShardId,
        from: u64,
        to_replica: u64,
        rpc: &'static str,
    ) -> Result<Arc<Shard>, Status> {
        let shard = self.node.local_shard(shard_id).map_err(to_status)?;
        let refuse = |problem: String| {
            to_status(Error::RaftMessageRefused {
                shard_id,
                from_node_id: from,
                problem,
            })
        };
        if self.node.map.get().node(from).is_none() {
            return Err(refuse(format!("node {from} is not a node of this cluster")));
        }
        let held = shard.raft.replica_id();
        if held != to_replica {
            metrics::counter!(names::RAFT_MESSAGES_REFUSED_TOTAL, "rpc" => rpc).increment(1);
            return Err(refuse(format!(
                "it is addressed to replica {to_replica}, and node {} holds replica {held} of the shard",
                self.node.id
            )));
        }
        Ok(shard)
    }

    /// The caller of a Raft call: only nodes may send Raft messages.
    fn caller<T>(&self, request: &Request<T>, rpc: &'static str) -> Result<Caller, Status> {
        let caller = self.node.security.caller(request).map_err(|e| {
            audit_denied("unauthenticated", rpc, &e);
            to_status(e)
        })?;
        caller.authorize(rpc, Need::Raft).map_err(to_status)?;
        Ok(caller)
    }

    /// An authenticated message from a node of the cluster, and its shard.
    fn message(
        &self,
        request: Request<pb::RaftMessage>,
        rpc: &'static str,
    ) -> Result<(pb::RaftMessage, Arc<Shard>), Status> {
        let caller = self.caller(&request, rpc)?;
        let m = request.into_inner();
        caller
            .check_sender(rpc, m.from_node_id)
            .map_err(to_status)?;
        let shard = self.shard(ShardId(m.shard_id), m.from_node_id, m.to_replica_id, rpc)?;
        Ok((m, shard))
    }

    fn reply(&self, shard_id: ShardId, payload: Vec<u8>) -> Response<pb::RaftMessage> {
        Response::new(pb::RaftMessage {
            shard_id: shard_id.0,
            from_node_id: self.node.id,
            payload,
            to_replica_id: 0,
        })
    }

    async fn receive_snapshot(
        &self,
        caller: &Caller,
        stream: &mut Streaming<pb::SnapshotChunk>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let timeout = Duration::from_millis(self.node.cluster.server.snapshot_chunk_timeout_ms);
        let first = snapshot_stream::next_chunk(stream, timeout)
            .await
            .map_err(|e| to_status(receive_error(ShardId(0), 0, e)))?
            .ok_or_else(|| to_status(receive_error(ShardId(0), 0, ReceiveError::Truncated)))?;
        let (shard_id, from) = (ShardId(first.shard_id), first.from_node_id);
        caller
            .check_sender("install_snapshot", from)
            .map_err(to_status)?;
        let shard = self.shard(shard_id, from, first.to_replica_id, "install_snapshot")?;
        let header = shard
            .raft
            .snapshot_header(from, &first.vote, &first.meta)
            .map_err(|e| refused(shard_id, from, "install_snapshot", e))?;
        let dir = self.node.data_dir.join("snapshots");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| to_status(Error::internal(e)))?;
        let path = dir.join(format!(
            "incoming-shard-{shard_id}-{:016x}",
            rand::random::<u64>()
        ));
        let result = async {
            let bytes = snapshot_stream::receive(&path, first, stream, timeout)
                .await
                .map_err(|e| to_status(receive_error(shard_id, from, e)))?;
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| to_status(Error::internal(e)))?;
            tracing::info!(%shard_id, from, bytes, last_log_index = ?header.last_log_index(), "received snapshot");
            let payload = shard
                .raft
                .handle_install_snapshot(header, file)
                .await
                .map_err(|e| refused(shard_id, from, "install_snapshot", e))?;
            Ok(self.reply(shard_id, payload))
        }
        .await;
        let _ = tokio::fs::remove_file(&path).await;
        result
    }
}

/// A beat's list as (shard id, term) pairs: as long as each other, ascending.
fn beat_list(beat: &pb::NodeBeat) -> Result<Vec<(u64, u64)>, Error> {
    let invalid = |rule: &str| Error::InvalidArgument {
        field: "node_beat.shard_ids".into(),
        rule: rule.into(),
    };
    if beat.shard_ids.len() != beat.terms.len() {
        return Err(invalid("must be as many as node_beat.terms"));
    }
    if beat.shard_ids.windows(2).any(|w| w[0] >= w[1]) {
        return Err(invalid("must ascend strictly"));
    }
    Ok(beat
        .shard_ids
        .iter()
        .copied()
        .zip(beat.terms.iter().copied())
        .collect())
}

fn receive_error(shard_id: ShardId, from: u64, e: ReceiveError) -> Error {
    match e {
        ReceiveError::Io(e) => Error::internal(e),
        e => Error::RaftMessageRefused {
            shard_id,
            from_node_id: from,
            problem: e.to_string(),
        },
    }
}

#[tonic::async_trait]
impl RaftApi for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let (m, shard) = self.message(request, "append_entries")?;
        let (shard_id, from) = (ShardId(m.shard_id), m.from_node_id);
        let payload = shard
            .raft
            .handle_append_entries(from, &m.payload)
            .await
            .map_err(|e| refused(shard_id, from, "append_entries", e))?;
        Ok(self.reply(shard_id, payload))
    }

    async fn vote(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let (m, shard) = self.message(request, "vote")?;
        let (shard_id, from) = (ShardId(m.shard_id), m.from_node_id);
        let payload = shard
            .raft
            .handle_vote(from, &m.payload, false)
            .await
            .map_err(|e| refused(shard_id, from, "vote", e))?;
        Ok(self.reply(shard_id, payload))
    }

    async fn pre_vote(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let (m, shard) = self.message(request, "pre_vote")?;
        let (shard_id, from) = (ShardId(m.shard_id), m.from_node_id);
        let payload = shard
            .raft
            .handle_vote(from, &m.payload, true)
            .await
            .map_err(|e| refused(shard_id, from, "pre_vote", e))?;
        Ok(self.reply(shard_id, payload))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let (m, shard) = self.message(request, "transfer_leader")?;
        let (shard_id, from) = (ShardId(m.shard_id), m.from_node_id);
        let payload = shard
            .raft
            .handle_transfer_leader(from, &m.payload)
            .await
            .map_err(|e| refused(shard_id, from, "transfer_leader", e))?;
        Ok(self.reply(shard_id, payload))
    }

    async fn beat(
        &self,
        request: Request<pb::NodeBeat>,
    ) -> Result<Response<pb::NodeBeatReply>, Status> {
        let caller = self.caller(&request, "beat")?;
        let beat = request.into_inner();
        let from = beat.from_node_id;
        caller.check_sender("beat", from).map_err(to_status)?;
        if self.node.map.get().node(from).is_none() {
            return Err(to_status(Error::NodeNotFound { node_id: from }));
        }
        let list = beat_list(&beat).map_err(to_status)?;
        self.node.beats.record(from, list);
        Ok(Response::new(pb::NodeBeatReply {}))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let caller = self.caller(&request, "install_snapshot")?;
        let Ok(_slot) = self.snapshot_slots.clone().try_acquire_owned() else {
            metrics::counter!(names::SNAPSHOT_RECEIVES_REFUSED_TOTAL).increment(1);
            return Err(to_status(Error::RateLimited {
                what: format!(
                    "node {} is receiving {} snapshots already",
                    self.node.id, self.node.cluster.server.snapshots_in_flight_max
                ),
                retry_after_ms: 1_000,
            }));
        };
        self.receive_snapshot(&caller, &mut request.into_inner())
            .await
    }
}
