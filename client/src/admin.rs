//! Operator calls of [`Client`]: cluster status, leadership transfer, reads from one
//! named node, rebuild permission, digests and node status.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use stockpile_proto::v1 as pb;
use stockpile_proto::v1::admin_client::AdminClient;

use crate::transport::{inventory, with_timeout};
use crate::{Client, Consistency, Error, NodeInfo, Read, ShardDigest, Target};
impl Client {
    /// Every node's status, gathered by one node.
    pub async fn cluster_status(&self) -> Result<pb::ClusterStatusReply, Error> {
        let deadline = self.deadline();
        let mut last = String::from("no node answered");
        loop {
            let nodes = self
                .routing()
                .discovery_order(self.inner.cfg.region.as_deref());
            for n in nodes {
                let t = deadline
                    .saturating_duration_since(Instant::now())
                    .min(self.inner.cfg.attempt_timeout);
                if t.is_zero() {
                    return Err(Error::Unavailable { message: last });
                }
                let mut req = tonic::Request::new(pb::ClusterStatusRequest {});
                req.set_timeout(t);
                self.inner.rpcs.fetch_add(1, Ordering::Relaxed);
                match tokio::time::timeout(
                    t,
                    AdminClient::new(self.channel(&n.addr)?).cluster_status(req),
                )
                .await
                {
                    Ok(Ok(r)) => return Ok(r.into_inner()),
                    Ok(Err(s)) => last = format!("node {}: {}", n.node_id, s.message()),
                    Err(_) => last = format!("node {}: no answer", n.node_id),
                }
                self.routing().node_failed(n.node_id);
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable { message: last });
            }
        }
    }

    /// Moves `shard_id`'s leadership to `to_node_id` (a replica); returns the leader
    /// once the move is seen, or whoever leads when the wait ends.
    pub async fn transfer_leader(&self, shard_id: u64, to_node_id: u64) -> Result<u64, Error> {
        let req = pb::TransferLeaderRequest {
            shard_id,
            to_node_id,
            timeout_ms: 5_000,
        };
        let reply = self
            .call(
                shard_id,
                Target::Leader,
                None,
                Instant::now() + Duration::from_secs(15),
                |ch, _| {
                    let r = with_timeout(req, Duration::from_secs(6));
                    async move { AdminClient::new(ch).transfer_leader(r).await }
                },
            )
            .await?;
        let leader = reply.into_inner().leader_id;
        if leader != 0 {
            self.routing().leaders.insert(shard_id, leader);
        }
        Ok(leader)
    }

    /// Stale reads of `skus` answered by one given node (which must hold their
    /// shards): what that replica has applied, for tests and operators.
    pub async fn get_from_node(&self, node_id: u64, skus: &[&str]) -> Result<Vec<Read>, Error> {
        self.get_at_node(node_id, skus, Consistency::Stale).await
    }

    /// Reads `skus` from one given node with `consistency`, without retries or
    /// routing: a linearizable read there answers only if that node leads the shards
    /// (else `NOT_LEADER`). For tests that pin a client to a node.
    pub async fn get_at_node(
        &self,
        node_id: u64,
        skus: &[&str],
        consistency: Consistency,
    ) -> Result<Vec<Read>, Error> {
        let req = pb::GetRequest {
            skus: skus.iter().map(|s| s.to_string()).collect(),
            consistency: consistency.to_pb(),
        };
        let reply = self
            .at_node(node_id, |ch, t| async move {
                inventory(ch).get(with_timeout(req, t)).await
            })
            .await?;
        Ok(crate::reads::reads_of(&reply).collect())
    }

    /// Repair: asks every node to let the shards it leads rebuild `node_id` from
    /// scratch once (its data directory was wiped). Returns the shards covered.
    pub async fn allow_rebuild(&self, node_id: u64) -> Result<Vec<u64>, Error> {
        let nodes: Vec<NodeInfo> = self.routing().map.nodes.values().cloned().collect();
        if !nodes.iter().any(|n| n.node_id == node_id) {
            return Err(Error::NodeNotFound { node_id });
        }
        let mut covered = Vec::new();
        for n in nodes.into_iter().filter(|n| n.node_id != node_id) {
            let answer = self
                .at_node(n.node_id, |ch, t| async move {
                    let req = with_timeout(pb::AllowRebuildRequest { node_id }, t);
                    AdminClient::new(ch).allow_rebuild(req).await
                })
                .await;
            match answer {
                Ok(r) => covered.extend(r.shard_ids),
                // A definite refusal (an unknown node) holds for every node: report it.
                Err(e) if e.is_definite() && !matches!(e, Error::Unavailable { .. }) => {
                    return Err(e);
                }
                Err(_) => {}
            }
        }
        covered.sort_unstable();
        Ok(covered)
    }

    /// Digests of a node's shard state machines, with their stored outcome counts.
    /// Replicas at the same applied index must have the same digest.
    pub async fn shard_digests(&self, node_id: u64) -> Result<Vec<ShardDigest>, Error> {
        let reply = self
            .at_node(node_id, |ch, t| async move {
                let req = with_timeout(pb::ShardDigestsRequest {}, t);
                AdminClient::new(ch).shard_digests(req).await
            })
            .await?;
        Ok(reply
            .shards
            .into_iter()
            .map(|d| ShardDigest {
                shard_id: d.shard_id,
                applied_index: d.applied_index,
                digest: d.digest,
                outcomes_count: d.outcomes_count,
            })
            .collect())
    }

    /// One node's own status (its shards' Raft state and write-path counters).
    pub async fn node_status(&self, node_id: u64) -> Result<pb::NodeStatusReply, Error> {
        self.at_node(node_id, |ch, t| async move {
            let req = with_timeout(pb::NodeStatusRequest {}, t);
            AdminClient::new(ch).node_status(req).await
        })
        .await
    }

    /// The status of the node at `addr`, whether or not the map lists it (a removed
    /// node is no longer listed: this checks that it runs nothing).
    pub async fn node_status_at_addr(&self, addr: &str) -> Result<pb::NodeStatusReply, Error> {
        self.at_addr(addr, addr, |ch, t| async move {
            let req = with_timeout(pb::NodeStatusRequest {}, t);
            AdminClient::new(ch).node_status(req).await
        })
        .await
    }

    /// The cluster map the meta shard holds (nodes with their states, moves under
    /// way), read from `node_id`'s meta replica (SHARD_NOT_HERE when it holds none).
    pub async fn cluster_map_at(&self, node_id: u64) -> Result<pb::ClusterMapReply, Error> {
        self.at_node(node_id, |ch, t| async move {
            let req = with_timeout(pb::ClusterMapRequest {}, t);
            AdminClient::new(ch).cluster_map(req).await
        })
        .await
    }

    /// The cluster map from whichever node holds a meta replica and answers first,
    /// preferring the meta leader's answer (it has applied the most).
    pub async fn cluster_map(&self) -> Result<pb::ClusterMapReply, Error> {
        let nodes: Vec<u64> = self.shard_map().nodes.keys().copied().collect();
        let mut last = Error::Unavailable {
            message: "no node holds a replica of the meta shard".into(),
        };
        let mut found: Option<pb::ClusterMapReply> = None;
        for node_id in nodes {
            match self.cluster_map_at(node_id).await {
                Ok(reply) if reply.meta_leader_id == node_id => return Ok(reply),
                Ok(reply) => {
                    if found
                        .as_ref()
                        .is_none_or(|f| f.applied_index < reply.applied_index)
                    {
                        found = Some(reply);
                    }
                }
                Err(e) => last = e,
            }
        }
        found.ok_or(last)
    }
}
