//! The client's picture of the cluster: the shard map (with its epoch), each shard's
//! last known leader, and which nodes recently failed (skipped until their jittered
//! backoff runs out, not hammered).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;
use stockpile_proto::v1 as pb;

/// A node as the shard map describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeInfo {
    /// The node id.
    pub node_id: u64,
    /// The node's gRPC address (`host:port`).
    pub addr: String,
    /// The node's region.
    pub region: String,
    /// The node's zone (failure domain in its region).
    pub zone: String,
}

/// A shard as the shard map describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShardInfo {
    /// The shard it lives in.
    pub shard_id: u64,
    /// SKU range [start, end); "" end = unbounded.
    pub start: String,
    /// End of the range (exclusive); "" means unbounded.
    pub end: String,
    /// Node ids holding a replica.
    pub replicas: Vec<u64>,
    /// The descriptor's epoch `(version, conf_ver)`: a cached descriptor is replaced
    /// only by a newer one.
    pub epoch: (u64, u64),
}

impl ShardInfo {
    /// True when `sku` falls in the shard's range.
    pub fn contains(&self, sku: &str) -> bool {
        sku >= self.start.as_str() && (self.end.is_empty() || sku < self.end.as_str())
    }

    /// A valid SKU inside the shard, to route requests that name no SKU. " " is the
    /// smallest SKU without control characters.
    pub fn routing_sku(&self) -> String {
        if self.start.is_empty() {
            // The smallest SKU the store's policy accepts: "!" (U+0021; a space or a
            // control character is refused).
            "!".to_string()
        } else {
            self.start.clone()
        }
    }
}

/// The shard map as the client caches it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ShardMap {
    /// Grows on every change of the map.
    pub epoch: u64,
    /// Every node, by id.
    pub nodes: BTreeMap<u64, NodeInfo>,
    /// The SKU shards, sorted by `start`.
    pub shards: Vec<ShardInfo>,
    /// The meta shard (id 0: the cluster map; it owns no SKU), when the node said.
    pub meta: Option<ShardInfo>,
}

impl ShardMap {
    pub(crate) fn from_pb(r: &pb::ShardMapReply) -> ShardMap {
        let nodes = r
            .nodes
            .iter()
            .map(|n| {
                (
                    n.node_id,
                    NodeInfo {
                        node_id: n.node_id,
                        addr: n.addr.clone(),
                        region: n.region.clone(),
                        zone: n.zone.clone(),
                    },
                )
            })
            .collect();
        let info = |s: &pb::ShardInfo| ShardInfo {
            shard_id: s.shard_id,
            start: s.start.clone(),
            end: s.end.clone(),
            replicas: s.replicas.clone(),
            epoch: (s.version, s.conf_ver),
        };
        let mut shards: Vec<ShardInfo> = r.shards.iter().map(info).collect();
        shards.sort_by(|a, b| a.start.cmp(&b.start));
        ShardMap {
            epoch: r.epoch,
            nodes,
            shards,
            meta: r.meta.as_ref().map(info),
        }
    }

    /// Takes `newer` as the map, keeping each of this map's descriptors that has a
    /// newer epoch than `newer`'s (the answering node may not hold that shard and
    /// know less about it than an earlier answer did).
    pub(crate) fn merge(&mut self, newer: ShardMap) {
        let kept: Vec<ShardInfo> = std::mem::take(&mut self.shards);
        self.epoch = self.epoch.max(newer.epoch);
        self.nodes = newer.nodes;
        self.shards = newer.shards;
        if newer
            .meta
            .as_ref()
            .is_some_and(|n| self.meta.as_ref().is_none_or(|m| n.epoch > m.epoch))
        {
            self.meta = newer.meta;
        }
        for s in &mut self.shards {
            if let Some(old) = kept.iter().find(|o| o.shard_id == s.shard_id)
                && old.epoch > s.epoch
                && old.start == s.start
                && old.end == s.end
            {
                *s = old.clone();
            }
        }
    }

    /// The shard whose range holds `sku`.
    pub fn shard_for(&self, sku: &str) -> Option<&ShardInfo> {
        self.shards.iter().find(|s| s.contains(sku))
    }

    /// The shard with this id (0: the meta shard).
    pub fn shard(&self, shard_id: u64) -> Option<&ShardInfo> {
        self.meta
            .iter()
            .chain(self.shards.iter())
            .find(|s| s.shard_id == shard_id)
    }
}

/// Failure memory of one node address.
#[derive(Clone, Copy, Debug)]
struct Health {
    failures: u32,
    skip_until: Instant,
}

/// Backoff before a failed node is tried again: 50 ms doubling per failure, at most
/// 2 s, with jitter so that many clients do not return at once.
fn skip_for(failures: u32) -> Duration {
    let base_ms = (50u64 << failures.min(6)).min(2_000);
    Duration::from_millis(base_ms / 2 + rand::random::<u64>() % (base_ms / 2 + 1))
}

#[derive(Default)]
pub(crate) struct Routing {
    pub map: ShardMap,
    pub leaders: HashMap<u64, u64>,
    health: HashMap<u64, Health>,
    /// Reservation id → one of its SKUs, remembered from Reserve replies (bounded):
    /// Confirm and Release must be routed by a SKU of the reservation.
    pub reservation_skus: HashMap<String, String>,
}

/// Reservations remembered for routing at most; beyond, the memory is cleared (a
/// forgotten reservation is found again by asking every shard).
pub(crate) const RESERVATIONS_REMEMBERED_MAX: usize = 100_000;

impl Routing {
    /// Records what a NOT_LEADER answer from `node_id` said: `hint` leads `refused`,
    /// the shard the node refused (0: it did not say, so the call's own `call_shard`).
    /// A node whose map places the call's SKUs in another shard names that shard's
    /// leader, which says nothing about who leads `call_shard`: the hint goes under
    /// the shard it is about, when the map knows it. Returns the hinted leader when
    /// it is another node this map knows (the call follows it at once).
    pub fn learn_leader(
        &mut self,
        call_shard: u64,
        refused: u64,
        node_id: u64,
        hint: Option<u64>,
    ) -> Option<u64> {
        let about = if refused != 0 && self.map.shard(refused).is_some() {
            refused
        } else {
            call_shard
        };
        let leader = hint.filter(|h| *h != node_id && self.map.nodes.contains_key(h));
        match leader {
            Some(l) => {
                self.leaders.insert(about, l);
            }
            None => {
                self.leaders.remove(&about);
            }
        }
        leader
    }

    pub fn node_failed(&mut self, node_id: u64) {
        let h = self.health.entry(node_id).or_insert(Health {
            failures: 0,
            skip_until: Instant::now(),
        });
        h.failures = h.failures.saturating_add(1);
        h.skip_until = Instant::now() + skip_for(h.failures);
    }

    pub fn node_ok(&mut self, node_id: u64) {
        self.health.remove(&node_id);
    }

    fn healthy(&self, node_id: u64, now: Instant) -> bool {
        self.health
            .get(&node_id)
            .is_none_or(|h| h.skip_until <= now)
    }

    /// Nodes to try for `shard_id`, best first: the known leader (when `leader_first`),
    /// then replicas in `region`, then the others; nodes in backoff go last.
    pub fn candidates(&self, shard_id: u64, region: Option<&str>, leader_first: bool) -> Vec<u64> {
        let Some(shard) = self.map.shard(shard_id) else {
            return Vec::new();
        };
        let now = Instant::now();
        let leader = if leader_first {
            self.leaders.get(&shard_id).copied()
        } else {
            None
        };
        let mut nodes: Vec<u64> = shard.replicas.clone();
        // A leader learned from a hint may be newer than the cached descriptor (its
        // replica moved there): try it too.
        if let Some(l) = leader
            && !nodes.contains(&l)
            && self.map.nodes.contains_key(&l)
        {
            nodes.push(l);
        }
        let region_of = |id: u64| self.map.nodes.get(&id).map(|n| n.region.as_str());
        nodes.sort_by_key(|&id| {
            let is_leader = Some(id) == leader;
            let in_region = region.is_some() && region_of(id) == region;
            (
                !self.healthy(id, now),
                !is_leader,
                !in_region,
                rand::random::<u8>(),
            )
        });
        nodes
    }

    /// Every known node, own region first, healthy first: for discovery.
    pub fn discovery_order(&self, region: Option<&str>) -> Vec<NodeInfo> {
        let now = Instant::now();
        let mut nodes: Vec<NodeInfo> = self.map.nodes.values().cloned().collect();
        nodes.sort_by_key(|n| {
            (
                !self.healthy(n.node_id, now),
                region.is_none() || Some(n.region.as_str()) != region,
                rand::random::<u8>(),
            )
        });
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> ShardMap {
        let node = |id: u64, region: &str| {
            (
                id,
                NodeInfo {
                    node_id: id,
                    addr: format!("127.0.0.1:{}", 7000 + id),
                    region: region.into(),
                    zone: "a".into(),
                },
            )
        };
        ShardMap {
            epoch: 1,
            nodes: [node(1, "eu"), node(2, "us"), node(3, "eu")]
                .into_iter()
                .collect(),
            shards: vec![
                ShardInfo {
                    shard_id: 1,
                    start: "".into(),
                    end: "m".into(),
                    replicas: vec![1, 2, 3],
                    epoch: (0, 5),
                },
                ShardInfo {
                    shard_id: 2,
                    start: "m".into(),
                    end: "".into(),
                    replicas: vec![1, 2, 3],
                    epoch: (0, 5),
                },
            ],
            meta: None,
        }
    }

    /// Routing over `map`, with no leaders or failures known yet.
    fn routing(map: ShardMap) -> Routing {
        Routing {
            map,
            ..Default::default()
        }
    }

    #[test]
    fn routes_skus_to_ranges() {
        let m = map();
        assert_eq!(m.shard_for("apple").unwrap().shard_id, 1);
        assert_eq!(m.shard_for("m").unwrap().shard_id, 2);
        assert_eq!(m.shard_for("zebra").unwrap().shard_id, 2);
        assert_eq!(m.shard(1).unwrap().routing_sku(), "!");
    }

    #[test]
    fn a_descriptor_is_replaced_only_by_a_newer_one() {
        let mut cached = map();
        let mut answer = map();
        answer.shards[0].replicas = vec![1, 2, 4];
        answer.shards[0].epoch = (0, 9);
        answer.shards[1].replicas = vec![9];
        answer.shards[1].epoch = (0, 4);
        cached.merge(answer);
        assert_eq!(cached.shards[0].replicas, vec![1, 2, 4], "newer: taken");
        assert_eq!(cached.shards[1].replicas, vec![1, 2, 3], "older: kept");
    }

    #[test]
    fn a_leader_hint_outside_the_cached_replicas_is_tried() {
        let mut m = map();
        m.nodes.insert(
            4,
            NodeInfo {
                node_id: 4,
                addr: "127.0.0.1:7004".into(),
                region: "eu".into(),
                zone: "b".into(),
            },
        );
        let mut r = routing(m);
        r.leaders.insert(1, 4);
        assert_eq!(r.candidates(1, None, true)[0], 4);
        assert!(
            !r.candidates(1, None, false).contains(&4),
            "only as the leader"
        );
    }

    #[test]
    fn a_leader_hint_about_another_shard_is_recorded_under_that_shard() {
        let mut r = routing(map());
        r.leaders.insert(1, 1);
        assert_eq!(r.learn_leader(1, 2, 1, Some(3)), Some(3));
        assert_eq!(r.leaders.get(&2), Some(&3), "the refused shard's leader");
        assert_eq!(
            r.leaders.get(&1),
            Some(&1),
            "the call's shard keeps its own"
        );
        assert_eq!(r.learn_leader(1, 0, 1, Some(2)), Some(2), "no shard named");
        assert_eq!(r.leaders.get(&1), Some(&2));
        assert_eq!(
            r.learn_leader(1, 7, 2, Some(3)),
            Some(3),
            "a shard not in the map"
        );
        assert_eq!(r.leaders.get(&1), Some(&3));
        assert_eq!(r.learn_leader(1, 1, 3, Some(3)), None, "itself: no hint");
        assert_eq!(r.leaders.get(&1), None);
        assert_eq!(r.learn_leader(2, 2, 1, Some(9)), None, "an unknown node");
        assert_eq!(r.leaders.get(&2), None);
    }

    #[test]
    fn prefers_leader_then_region_and_skips_failed_nodes() {
        let mut r = routing(map());
        r.leaders.insert(1, 2);
        assert_eq!(r.candidates(1, Some("eu"), true)[0], 2, "the leader first");
        let c = r.candidates(1, Some("eu"), false);
        assert_eq!(c[2], 2, "own region before the others: {c:?}");
        r.node_failed(1);
        let c = r.candidates(1, Some("eu"), false);
        assert_eq!(c, vec![3, 2, 1], "a failed node goes last");
        r.node_ok(1);
        assert_ne!(r.candidates(1, Some("eu"), false)[2], 1);
    }
}
