//! Raft traffic to peers over tonic. The node keeps one lazily connected channel per
//! peer node (HTTP/2 multiplexes every shard's RPCs over it); each shard's openraft
//! instance gets a `ShardPeer` per target that stamps its shard id on every message.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::RPCTypes;
use openraft::errors::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use stockpile_proto::v1 as pb;
use stockpile_proto::v1::raft_client::RaftClient;
use tonic::transport::{Channel, Endpoint};

use super::types::{Entry, LogId, Node, NodeId, Snapshot, SnapshotData, TypeConfig, Vote};
use crate::codec;
use crate::router::ShardId;
use openraft::EntryPayload;

/// Connection attempts give up after this long; openraft backs off and retries.
const CONNECT_TIMEOUT_MS: u64 = 500;

/// What a peer answers on the Raft service: the openraft result, or the remote
/// failure as text (a stopped shard, a shard the peer does not hold).
pub type RemoteResult<T> = Result<T, String>;

/// How much one call may carry and how long it may take (from `[raft]` in the config).
#[derive(Clone, Copy, Debug)]
pub struct PeerTuning {
    pub snapshot_chunk_bytes: usize,
    /// Bytes of entries per AppendEntries call (one larger entry goes alone).
    pub append_bytes_max: u64,
    /// Deadlines grow with the payload at this rate (the slowest link supported).
    pub link_bytes_per_s_min: u64,
    /// The deadline of a call with entries or a snapshot, before the payload's share.
    pub append_timeout_min: Duration,
    /// The largest Raft message sent or accepted.
    pub message_bytes_max: usize,
}

impl PeerTuning {
    pub fn from_config(cluster: &crate::config::ClusterConfig) -> PeerTuning {
        let r = &cluster.raft;
        PeerTuning {
            snapshot_chunk_bytes: usize::try_from(r.snapshot_chunk_bytes).unwrap_or(1 << 20),
            append_bytes_max: r.append_bytes_max,
            link_bytes_per_s_min: r.link_bytes_per_s_min.max(1),
            append_timeout_min: Duration::from_millis(r.append_timeout_min_ms),
            message_bytes_max: cluster.raft_message_bytes_max(),
        }
    }

    /// The deadline of a call carrying `bytes`: `base`, plus the time those bytes take
    /// at the slowest supported link. A large legal entry always has time to arrive,
    /// instead of being cut off and resent forever.
    pub fn deadline(&self, base: Duration, bytes: u64) -> Duration {
        let transfer_ms = bytes.saturating_mul(1_000) / self.link_bytes_per_s_min;
        base.max(self.append_timeout_min) + Duration::from_millis(transfer_ms)
    }
}

/// One channel per peer node, shared by all shards of this node.
pub struct PeerPool {
    node_id: NodeId,
    /// Outgoing connections leave from the node's own address, so that per-pair
    /// network rules (the Jepsen-style tests' partitions) match them.
    source_ip: Option<std::net::IpAddr>,
    channels: Mutex<HashMap<NodeId, (String, Channel)>>,
    tuning: PeerTuning,
    /// TLS towards peers (the node's certificate, the cluster's CA); None: plaintext.
    tls: Mutex<Option<tonic::transport::ClientTlsConfig>>,
}

impl PeerPool {
    pub fn new(
        node_id: NodeId,
        tuning: PeerTuning,
        source_ip: Option<std::net::IpAddr>,
    ) -> Arc<Self> {
        Arc::new(PeerPool {
            node_id,
            source_ip,
            channels: Mutex::new(HashMap::new()),
            tuning,
            tls: Mutex::new(None),
        })
    }

    /// Sets the TLS configuration for connections to peers, and forgets the channels
    /// made with the old one: new calls dial again with the new material; calls in
    /// flight finish on the old connections.
    pub fn set_tls(&self, tls: Option<tonic::transport::ClientTlsConfig>) {
        *self.tls.lock().unwrap_or_else(|p| p.into_inner()) = tls;
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The channel to `target` at `addr`, made on first use (and again if the
    /// address changed). Connecting happens lazily, on the first RPC.
    pub fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, String> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| "peer pool lock poisoned".to_string())?;
        if let Some((a, ch)) = channels.get(&target)
            && a == addr
        {
            return Ok(ch.clone());
        }
        let channel = self.channel_to(addr)?;
        channels.insert(target, (addr.to_string(), channel.clone()));
        Ok(channel)
    }

    /// A new channel to `addr`, not kept (for a node whose id is not known yet: the
    /// addresses a joining node was given).
    pub fn channel_to(&self, addr: &str) -> Result<Channel, String> {
        let tls = self
            .tls
            .lock()
            .map_err(|_| "peer pool lock poisoned")?
            .clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("bad address {addr}: {e}"))?;
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("TLS towards {addr}: {e}"))?;
        }
        let endpoint = endpoint
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .local_address(self.source_ip)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let dialer = stockpile_client::cork::Dialer::new(
            Duration::from_millis(CONNECT_TIMEOUT_MS),
            self.source_ip,
        );
        Ok(endpoint.connect_with_connector_lazy(dialer))
    }
}

impl PeerPool {
    /// Sends this node's beat to `target` at `addr` (`node::quiet`): the quiet shards
    /// it leads, ascending, each with its term.
    pub async fn beat(
        &self,
        target: NodeId,
        addr: &str,
        quiet: &[(u64, u64)],
        timeout: Duration,
    ) -> Result<(), String> {
        let channel = self.channel(target, addr)?;
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(self.tuning.message_bytes_max)
            .max_encoding_message_size(self.tuning.message_bytes_max);
        let mut request = tonic::Request::new(pb::NodeBeat {
            from_node_id: self.node_id,
            shard_ids: quiet.iter().map(|(s, _)| *s).collect(),
            terms: quiet.iter().map(|(_, t)| *t).collect(),
        });
        request.set_timeout(timeout);
        client
            .beat(request)
            .await
            .map(|_| ())
            .map_err(|s| format!("node {target}: {}", s.message()))
    }
}

/// openraft's network factory for one shard.
pub struct NetworkFactory {
    pub shard_id: ShardId,
    pub pool: Arc<PeerPool>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = ShardPeer;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> ShardPeer {
        ShardPeer {
            shard_id: self.shard_id.0,
            from: self.pool.node_id,
            target,
            // One channel per node: a replica id names its node.
            channel: self
                .pool
                .channel(super::replica_id::node_of(target), &node.addr),
            tuning: self.pool.tuning,
        }
    }
}

/// One shard's view of one peer.
pub struct ShardPeer {
    shard_id: u64,
    from: NodeId,
    target: NodeId,
    channel: Result<Channel, String>,
    tuning: PeerTuning,
}

/// At least the bytes an entry takes on the wire.
fn entry_bytes(e: &Entry) -> u64 {
    const LOG_ID_BYTES_MAX: u64 = 32;
    const MEMBERSHIP_BYTES_MAX: u64 = 64 << 10;
    LOG_ID_BYTES_MAX
        + match &e.payload {
            EntryPayload::Normal(r) => r.encoded_bytes_max() as u64,
            EntryPayload::Membership(_) => MEMBERSHIP_BYTES_MAX,
            EntryPayload::Blank => 0,
        }
}

/// Keeps the leading entries of `rpc` that fit `bytes_max` (at least one), and returns
/// their bytes and, when some were left for a later call, the last log id kept.
fn bound_entries(
    rpc: &mut AppendEntriesRequest<TypeConfig>,
    bytes_max: u64,
) -> (u64, Option<LogId>) {
    let mut bytes = 0u64;
    let mut kept = 0usize;
    for e in &rpc.entries {
        let b = entry_bytes(e);
        if kept > 0 && bytes.saturating_add(b) > bytes_max {
            break;
        }
        bytes = bytes.saturating_add(b);
        kept += 1;
    }
    if kept < rpc.entries.len() {
        rpc.entries.truncate(kept);
        (bytes, rpc.entries.last().map(|e| e.log_id))
    } else {
        (bytes, None)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NetFailure(String);

/// The unary Raft RPCs (openraft's `RPCTypes` has no pre-vote).
#[derive(Clone, Copy, Debug)]
enum Rpc {
    AppendEntries,
    Vote,
    PreVote,
    TransferLeader,
}

impl Rpc {
    fn rpc_type(self) -> RPCTypes {
        match self {
            Rpc::AppendEntries => RPCTypes::AppendEntries,
            Rpc::Vote | Rpc::PreVote => RPCTypes::Vote,
            Rpc::TransferLeader => RPCTypes::TransferLeader,
        }
    }
}

impl ShardPeer {
    fn client(&self) -> Result<RaftClient<Channel>, RPCError<TypeConfig>> {
        match &self.channel {
            Ok(ch) => Ok(RaftClient::new(ch.clone())
                .max_decoding_message_size(self.tuning.message_bytes_max)
                .max_encoding_message_size(self.tuning.message_bytes_max)),
            Err(e) => Err(RPCError::Unreachable(Unreachable::new(&NetFailure(
                e.clone(),
            )))),
        }
    }

    fn status_to_rpc_error(
        &self,
        action: RPCTypes,
        status: tonic::Status,
        ttl: Duration,
    ) -> RPCError<TypeConfig> {
        match status.code() {
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => RPCError::Timeout(Timeout {
                action,
                id: self.from,
                target: self.target,
                timeout: ttl,
            }),
            tonic::Code::Unavailable | tonic::Code::NotFound | tonic::Code::Unknown => {
                RPCError::Unreachable(Unreachable::new(&NetFailure(format!(
                    "node {}: {}",
                    self.target,
                    status.message()
                ))))
            }
            _ => RPCError::Network(NetworkError::new(&NetFailure(format!(
                "node {}: {status}",
                self.target
            )))),
        }
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let payload = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(pb::RaftMessage {
            shard_id: self.shard_id,
            from_node_id: self.from,
            payload,
            to_replica_id: self.target,
        });
        request.set_timeout(ttl);
        let mut client = self.client()?;
        let result = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::PreVote => client.pre_vote(request).await,
            Rpc::TransferLeader => client.transfer_leader(request).await,
        };
        let reply = result
            .map_err(|s| self.status_to_rpc_error(rpc.rpc_type(), s, ttl))?
            .into_inner();
        let decoded: RemoteResult<Resp> =
            codec::decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|msg| {
            RPCError::Unreachable(Unreachable::new(&NetFailure(format!(
                "node {}: {msg}",
                self.target
            ))))
        })
    }
}

impl RaftNetworkV2<TypeConfig> for ShardPeer {
    type SnapshotData = SnapshotData;

    /// Sends at most `append_bytes_max` of entries per call (the rest follow in the
    /// next, as openraft resumes after a `PartialSuccess`), with a deadline that grows
    /// with the bytes sent. Heartbeats (no entries) keep openraft's deadline.
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        if rpc.entries.is_empty() {
            return self.call(Rpc::AppendEntries, &rpc, option.hard_ttl()).await;
        }
        let (bytes, cut_at) = bound_entries(&mut rpc, self.tuning.append_bytes_max);
        let ttl = self.tuning.deadline(option.hard_ttl(), bytes);
        let response = self.call(Rpc::AppendEntries, &rpc, ttl).await?;
        Ok(match (response, cut_at) {
            (AppendEntriesResponse::Success, Some(last_sent)) => {
                AppendEntriesResponse::PartialSuccess(Some(last_sent))
            }
            (response, _) => response,
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::PreVote, &rpc, option.hard_ttl()).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::TransferLeader, &req, option.hard_ttl())
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let net = |e: &dyn std::fmt::Display| {
            StreamingError::Network(NetworkError::new(&NetFailure(e.to_string())))
        };
        let vote_bytes = codec::encode(&vote).map_err(|e| net(&e))?;
        let meta_bytes = codec::encode(&snapshot.meta).map_err(|e| net(&e))?;
        let (shard_id, from, chunk_bytes) =
            (self.shard_id, self.from, self.tuning.snapshot_chunk_bytes);
        // The whole stream's deadline grows with the snapshot's size.
        let snapshot_bytes = snapshot
            .snapshot
            .metadata()
            .await
            .map(|m| m.len())
            .map_err(|e| net(&e))?;
        let ttl = self.tuning.deadline(option.hard_ttl(), snapshot_bytes);
        let mut client = match self.client() {
            Ok(c) => c,
            Err(e) => return Err(net(&e)),
        };
        let target = self.target;
        let chunks = super::snapshot_stream::chunks(
            snapshot.snapshot,
            super::snapshot_stream::Outgoing {
                shard_id,
                from_node_id: from,
                to_replica_id: target,
                chunk_bytes,
                vote: vote_bytes,
                meta: meta_bytes,
            },
        );
        let mut request = tonic::Request::new(chunks);
        request.set_timeout(ttl);
        let call = client.install_snapshot(request);
        let reply = tokio::select! {
            r = call => r,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let reply = reply.map_err(|s| match s.code() {
            tonic::Code::DeadlineExceeded => StreamingError::Timeout(Timeout {
                action: RPCTypes::InstallSnapshot,
                id: from,
                target,
                timeout: ttl,
            }),
            tonic::Code::Unavailable => {
                StreamingError::Unreachable(Unreachable::new(&NetFailure(s.message().to_string())))
            }
            _ => net(&s),
        })?;
        let decoded: RemoteResult<SnapshotResponse<TypeConfig>> =
            codec::decode(&reply.into_inner().payload).map_err(|e| net(&e))?;
        decoded.map_err(|msg| {
            StreamingError::Unreachable(Unreachable::new(&NetFailure(format!(
                "node {target}: {msg}"
            ))))
        })
    }
}
