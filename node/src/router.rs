//! Which shard owns a SKU, who leads it, and what a client is told when it asked the
//! wrong node: the one place that answers these.
//!
//! The shard map holds every shard's descriptor (range, replicas, epoch) sorted by
//! range, so that a SKU is routed by binary search, and carries the map's epoch. A
//! node that does not hold a shard never guesses a leader: it answers
//! `SHARD_NOT_HERE` with the shard's replicas, so the client refreshes its map.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::config::ClusterConfig;
use crate::error::Error;

/// A shard's id (DESIGN.md: `ShardId(u64)`); 0 is the meta shard.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShardId(pub u64);

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// As its number: messages list shards as `[1, 2]`.
impl std::fmt::Debug for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A shard descriptor's epoch (DESIGN.md): `version` grows on split and merge,
/// `conf_ver` on every replica change. A newer epoch replaces an older descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Epoch {
    pub version: u64,
    pub conf_ver: u64,
}

/// A half-open SKU range `[start, end)`; an empty `end` is unbounded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuRange {
    pub start: String,
    pub end: String,
}

impl SkuRange {
    pub fn contains(&self, sku: &str) -> bool {
        sku >= self.start.as_str() && (self.end.is_empty() || sku < self.end.as_str())
    }
}

impl std::fmt::Display for SkuRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{:?}, {:?})", self.start, self.end)
    }
}

/// A shard's range and epoch `version` as its own state machine holds them: what it
/// checks every operation against, at propose time and at apply time (a split
/// narrows the range, a merge widens it, each grows the version at one log index on
/// every replica).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardBounds {
    pub range: SkuRange,
    pub version: u64,
    /// Frozen for a merge into its left neighbour: it owns no SKU any more (every
    /// operation is SHARD_MOVED). Stored under its own key (`SmSpace::Frozen`), not in
    /// the bounds' encoding, which predates merges.
    #[serde(skip)]
    pub frozen: bool,
}

impl ShardBounds {
    /// Whether this shard serves `sku` now.
    pub fn owns(&self, sku: &str) -> bool {
        !self.refuses_all() && self.range.contains(sku)
    }

    /// Whether the shard applies nothing any more (frozen for a merge).
    pub fn refuses_all(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        if crate::planted::active() == crate::planted::Bug::MergeUnfrozen {
            return false;
        }
        self.frozen
    }
}

/// A replica's current bounds, shared by its state machine (the writer, on apply and
/// snapshot install) and its shard (the reader, before proposing and after a read
/// barrier).
#[derive(Clone, Debug, Default)]
pub struct LiveBounds(std::sync::Arc<std::sync::RwLock<ShardBounds>>);

impl LiveBounds {
    pub fn new(bounds: ShardBounds) -> LiveBounds {
        LiveBounds(std::sync::Arc::new(std::sync::RwLock::new(bounds)))
    }

    pub fn get(&self) -> ShardBounds {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The bounds' version alone (no copy of the range).
    pub fn version(&self) -> u64 {
        self.0.read().unwrap_or_else(|p| p.into_inner()).version
    }

    /// The version and the frozen mark (no copy of the range): what changes when a
    /// split, a merge or a freeze applies.
    pub fn mark(&self) -> (u64, bool) {
        let b = self.0.read().unwrap_or_else(|p| p.into_inner());
        (b.version, b.frozen)
    }

    pub fn set(&self, bounds: ShardBounds) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = bounds;
    }

    /// SHARD_MOVED for the first of `skus` outside the bounds.
    pub fn check<'a>(&self, mut skus: impl Iterator<Item = &'a str>) -> Result<(), Error> {
        let b = self.0.read().unwrap_or_else(|p| p.into_inner());
        match skus.find(|s| !b.owns(s)) {
            Some(sku) => Err(Error::ShardMoved {
                sku: sku.to_string(),
            }),
            None => Ok(()),
        }
    }
}

/// One shard: its range, the nodes holding its replicas, and its epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardDescriptor {
    pub id: ShardId,
    pub range: SkuRange,
    pub replicas: Vec<u64>,
    pub epoch: Epoch,
}

impl ShardDescriptor {
    pub fn contains(&self, sku: &str) -> bool {
        self.range.contains(sku)
    }
}

/// The meta shard: its state is the cluster map (`inventory::cluster`). It owns no
/// SKU, so it is kept beside the SKU shards, never routed to by a SKU.
pub const META_SHARD_ID: ShardId = ShardId(0);

/// How many replicas the meta shard is seeded with: 5 when the config's layout uses
/// at least 5 nodes (it survives two failures), else 3 (or fewer on a smaller cluster).
fn meta_replicas_of(cluster: &ClusterConfig) -> Vec<u64> {
    let used: std::collections::BTreeSet<u64> = cluster
        .shards
        .iter()
        .flat_map(|s| s.replicas.iter().copied())
        .collect();
    let n = if used.len() >= 5 { 5 } else { 3 };
    used.into_iter().take(n).collect()
}

/// A node as the map knows it: where to reach it and where it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    pub id: u64,
    /// host:port of its gRPC server.
    pub addr: String,
    pub region: String,
    pub zone: String,
}

/// The shard map as this node knows it.
#[derive(Clone, Debug)]
pub struct ShardMap {
    /// Grows whenever the map changes (1 while it comes only from the config).
    epoch: u64,
    /// Sorted by `start`; the ranges tile the SKU space (config validation).
    shards: Vec<ShardDescriptor>,
    /// The meta shard's descriptor (`META_SHARD_ID`; its range is unused).
    meta: ShardDescriptor,
    /// The cluster's nodes (not removed) by id: the config's until the meta shard's
    /// cluster map says otherwise (then the map's, joined nodes included).
    nodes: BTreeMap<u64, NodeEntry>,
}

/// The epoch of a map that comes only from the static config.
pub const CONFIG_MAP_EPOCH: u64 = 1;

impl ShardMap {
    pub fn from_config(cluster: &ClusterConfig) -> ShardMap {
        let mut shards: Vec<ShardDescriptor> = cluster
            .shards
            .iter()
            .map(|s| ShardDescriptor {
                id: ShardId(s.id),
                range: SkuRange {
                    start: s.start.clone(),
                    end: s.end.clone(),
                },
                replicas: s.replicas.clone(),
                epoch: Epoch::default(),
            })
            .collect();
        shards.sort_by(|a, b| a.range.start.cmp(&b.range.start));
        assert!(
            shards.first().is_some_and(|s| s.range.start.is_empty()),
            "a validated config's shards start at \"\""
        );
        let meta = ShardDescriptor {
            id: META_SHARD_ID,
            range: SkuRange::default(),
            replicas: meta_replicas_of(cluster),
            epoch: Epoch::default(),
        };
        ShardMap {
            epoch: CONFIG_MAP_EPOCH,
            shards,
            meta,
            nodes: cluster
                .nodes
                .iter()
                .map(|n| {
                    let entry = NodeEntry {
                        id: n.id,
                        addr: n.addr.clone(),
                        region: n.region.clone(),
                        zone: n.zone.clone(),
                    };
                    (n.id, entry)
                })
                .collect(),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The SKU shards, in SKU order.
    pub fn shards(&self) -> &[ShardDescriptor] {
        &self.shards
    }

    /// The meta shard, then the SKU shards in SKU order: every Raft group.
    pub fn all_shards(&self) -> impl Iterator<Item = &ShardDescriptor> {
        std::iter::once(&self.meta).chain(self.shards.iter())
    }

    pub fn meta(&self) -> &ShardDescriptor {
        &self.meta
    }

    pub fn shard(&self, id: ShardId) -> Option<&ShardDescriptor> {
        self.all_shards().find(|s| s.id == id)
    }

    /// The cluster's nodes, by id.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeEntry> {
        self.nodes.values()
    }

    /// Node `id`, if it is a node of the cluster (registered and not removed).
    pub fn node(&self, id: u64) -> Option<&NodeEntry> {
        self.nodes.get(&id)
    }

    /// This map with the nodes `nodes` (None when they are the same).
    pub fn with_nodes(&self, nodes: BTreeMap<u64, NodeEntry>) -> Option<ShardMap> {
        if nodes == self.nodes {
            return None;
        }
        let mut next = self.clone();
        next.nodes = nodes;
        next.epoch += 1;
        Some(next)
    }

    /// The shard whose range holds `sku` (every SKU has one: the ranges tile).
    pub fn shard_for(&self, sku: &str) -> &ShardDescriptor {
        // The last shard starting at or before `sku`.
        let i = self
            .shards
            .partition_point(|s| s.range.start.as_str() <= sku);
        let shard = &self.shards[i.saturating_sub(1)];
        assert!(shard.contains(sku), "the shard ranges tile the SKU space");
        shard
    }

    /// The shard after `shard` in SKU order, if any.
    pub fn next_after(&self, shard: &ShardDescriptor) -> Option<&ShardDescriptor> {
        (!shard.range.end.is_empty()).then(|| self.shard_for(&shard.range.end))
    }

    /// The one shard all of `skus` live in, or CROSS_SHARD naming the shards.
    pub fn single_shard(&self, skus: &[String], what: &str) -> Result<ShardId, Error> {
        let mut ids: Vec<ShardId> = skus.iter().map(|s| self.shard_for(s).id).collect();
        ids.sort_unstable();
        ids.dedup();
        match ids.as_slice() {
            [one] => Ok(*one),
            _ => Err(Error::CrossShard {
                what: what.to_string(),
                shard_ids: ids,
            }),
        }
    }

    pub fn addr(&self, node_id: u64) -> Option<&str> {
        self.nodes.get(&node_id).map(|n| n.addr.as_str())
    }

    /// NOT_LEADER for `shard_id`, with the leader `me` knows (never `me` itself) and
    /// its address as a hint.
    pub fn not_leader(&self, shard_id: ShardId, leader: Option<u64>, me: u64) -> Error {
        let leader = leader
            .filter(|l| *l != me)
            .and_then(|id| self.addr(id).map(|a| (id, a.to_string())));
        Error::NotLeader { shard_id, leader }
    }

    /// This map with shard `shard_id`'s replicas replaced, if `epoch` is newer than
    /// the descriptor's (an older or equal epoch changes nothing: None).
    pub fn with_replicas(
        &self,
        shard_id: ShardId,
        replicas: Vec<u64>,
        epoch: Epoch,
    ) -> Option<ShardMap> {
        if epoch <= self.shard(shard_id)?.epoch {
            return None;
        }
        let mut next = self.clone();
        let d = if shard_id == META_SHARD_ID {
            &mut next.meta
        } else {
            next.shards.iter_mut().find(|s| s.id == shard_id)?
        };
        d.replicas = replicas;
        d.epoch = epoch;
        next.epoch += 1;
        Some(next)
    }

    /// This map with each of `descriptors` taken where it is newer than the map's
    /// descriptor of the same id (or the map has none: a shard born by a split), and
    /// without the shards a newer one covers (merged away). None when nothing
    /// changed, or when the result would not tile the SKU space (a parent narrowed by
    /// a split before its child is known here: taken together later).
    pub fn with_layout(&self, descriptors: &[ShardDescriptor]) -> Option<ShardMap> {
        // Looked up by id, and the map cloned only once something is newer: the map
        // follower offers every shard's descriptor each round, and with thousands of
        // shards a scan per descriptor (and a clone per round) was a tenth of an idle
        // node's CPU.
        let mut at: HashMap<ShardId, usize> = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, i))
            .collect();
        let newer = |d: &ShardDescriptor| match d.id {
            META_SHARD_ID => d.epoch > self.meta.epoch,
            id => at.get(&id).is_none_or(|i| d.epoch > self.shards[*i].epoch),
        };
        if !descriptors.iter().any(newer) {
            return None;
        }
        let mut next = self.clone();
        for d in descriptors {
            if d.id == META_SHARD_ID {
                if d.epoch > next.meta.epoch {
                    next.meta.replicas = d.replicas.clone();
                    next.meta.epoch = d.epoch;
                }
                continue;
            }
            match at.get(&d.id) {
                Some(&i) if d.epoch > next.shards[i].epoch => next.shards[i] = d.clone(),
                Some(_) => {}
                None => {
                    at.insert(d.id, next.shards.len());
                    next.shards.push(d.clone());
                }
            }
        }
        next.shards
            .sort_by(|a, b| a.range.start.cmp(&b.range.start));
        next.shards = without_merged(std::mem::take(&mut next.shards));
        // A merged shard offered again is taken above and dropped here: no change.
        let changed = next.shards != self.shards || next.meta != self.meta;
        if !changed || !tiles(&next.shards) {
            return None;
        }
        next.epoch += 1;
        Some(next)
    }

    /// SHARD_NOT_HERE: this node holds no replica of `shard_id`; the replicas are
    /// named so that the client can go there (after refreshing its map).
    pub fn not_here(&self, shard_id: ShardId) -> Error {
        match self.shard(shard_id) {
            Some(s) => Error::ShardNotHere {
                shard_id,
                replicas: s.replicas.clone(),
            },
            None => Error::ShardNotFound { shard_id },
        }
    }
}

/// `shards` (sorted by start) without those a newer shard covers: merged away (only a
/// merge widens a range, and it grows the version past the merged shard's). One pass:
/// a shard covering another starts at or before it, so it is the last one kept.
fn without_merged(shards: Vec<ShardDescriptor>) -> Vec<ShardDescriptor> {
    let covers = |outer: &ShardDescriptor, inner: &ShardDescriptor| {
        outer.epoch.version > inner.epoch.version
            && outer.range.start <= inner.range.start
            && (outer.range.end.is_empty()
                || (!inner.range.end.is_empty() && inner.range.end <= outer.range.end))
    };
    let mut kept: Vec<ShardDescriptor> = Vec::with_capacity(shards.len());
    for s in shards {
        match kept.last() {
            Some(last) if covers(last, &s) => {}
            Some(last) if covers(&s, last) => {
                kept.pop();
                kept.push(s);
            }
            _ => kept.push(s),
        }
    }
    kept
}

/// True when `shards` (sorted by start) cover every SKU exactly once.
fn tiles(shards: &[ShardDescriptor]) -> bool {
    shards.first().is_some_and(|s| s.range.start.is_empty())
        && shards.last().is_some_and(|s| s.range.end.is_empty())
        && shards
            .windows(2)
            .all(|w| !w[0].range.end.is_empty() && w[0].range.end == w[1].range.start)
}

/// The node's shard map, replaced whole when a descriptor changes: readers take the
/// current map (one `Arc` clone) and never see a half-changed one.
#[derive(Clone)]
pub struct LiveMap(std::sync::Arc<std::sync::RwLock<std::sync::Arc<ShardMap>>>);

impl LiveMap {
    pub fn new(map: ShardMap) -> LiveMap {
        LiveMap(std::sync::Arc::new(std::sync::RwLock::new(
            std::sync::Arc::new(map),
        )))
    }

    /// The current map.
    pub fn get(&self) -> std::sync::Arc<ShardMap> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes shard `shard_id`'s replicas at `epoch` if that is newer than what the
    /// map holds; returns whether the map changed.
    pub fn update_replicas(&self, shard_id: ShardId, replicas: Vec<u64>, epoch: Epoch) -> bool {
        let mut current = self.0.write().unwrap_or_else(|p| p.into_inner());
        match current.with_replicas(shard_id, replicas, epoch) {
            Some(next) => {
                *current = std::sync::Arc::new(next);
                true
            }
            None => false,
        }
    }

    /// Takes each of `descriptors` that is newer (`ShardMap::with_layout`); returns
    /// whether the map changed.
    pub fn update_layout(&self, descriptors: &[ShardDescriptor]) -> bool {
        let mut current = self.0.write().unwrap_or_else(|p| p.into_inner());
        match current.with_layout(descriptors) {
            Some(next) => {
                *current = std::sync::Arc::new(next);
                true
            }
            None => false,
        }
    }

    /// Takes `nodes` as the cluster's nodes; returns whether the map changed.
    pub fn update_nodes(&self, nodes: BTreeMap<u64, NodeEntry>) -> bool {
        let mut current = self.0.write().unwrap_or_else(|p| p.into_inner());
        match current.with_nodes(nodes) {
            Some(next) => {
                *current = std::sync::Arc::new(next);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> ShardMap {
        let text = r#"
cluster_name = "t"
[[nodes]]
id = 1
addr = "127.0.0.1:7001"
data_dir = "d1"
[[nodes]]
id = 2
addr = "127.0.0.1:7002"
data_dir = "d2"
[[shards]]
id = 3
start = "n"
end = ""
replicas = [1]
[[shards]]
id = 1
start = ""
end = "g"
replicas = [1, 2]
[[shards]]
id = 2
start = "g"
end = "n"
replicas = [2]
"#;
        ShardMap::from_config(&ClusterConfig::parse("t.toml", text).unwrap())
    }

    #[test]
    fn skus_route_by_range_with_binary_search() {
        let m = map();
        for (sku, shard) in [
            ("!", 1),
            ("apple", 1),
            ("f~", 1),
            ("g", 2),
            ("grape", 2),
            ("m\u{10FFFF}", 2),
            ("n", 3),
            ("zzz", 3),
            ("\u{10FFFF}", 3),
        ] {
            assert_eq!(m.shard_for(sku).id, ShardId(shard), "{sku:?}");
        }
        assert_eq!(
            m.next_after(m.shard_for("a")).map(|s| s.id),
            Some(ShardId(2))
        );
        assert_eq!(m.next_after(m.shard_for("z")), None);
    }

    #[test]
    fn one_shard_or_cross_shard() {
        let m = map();
        assert_eq!(
            m.single_shard(&["apple".into(), "fig".into()], "items"),
            Ok(ShardId(1))
        );
        assert_eq!(
            m.single_shard(&["kiwi".into(), "apple".into(), "fig".into()], "items"),
            Err(Error::CrossShard {
                what: "items".into(),
                shard_ids: vec![ShardId(1), ShardId(2)]
            })
        );
    }

    #[test]
    fn replicas_change_only_with_a_newer_epoch() {
        let live = LiveMap::new(map());
        let newer = Epoch {
            version: 0,
            conf_ver: 5,
        };
        assert!(live.update_replicas(ShardId(2), vec![1], newer));
        assert_eq!(live.get().shard(ShardId(2)).unwrap().replicas, vec![1]);
        assert_eq!(live.get().epoch(), CONFIG_MAP_EPOCH + 1);
        assert!(
            !live.update_replicas(ShardId(2), vec![2], newer),
            "same epoch"
        );
        let older = Epoch {
            version: 0,
            conf_ver: 4,
        };
        assert!(
            !live.update_replicas(ShardId(2), vec![2], older),
            "older epoch"
        );
        assert_eq!(live.get().shard(ShardId(2)).unwrap().replicas, vec![1]);
        assert!(
            !live.update_replicas(ShardId(9), vec![2], newer),
            "unknown shard"
        );
    }

    #[test]
    fn a_split_is_taken_only_with_its_child_and_a_newer_version() {
        let live = LiveMap::new(map());
        let parent = live.get().shard(ShardId(3)).unwrap().clone();
        let split = Epoch {
            version: 1,
            conf_ver: 0,
        };
        let narrowed = ShardDescriptor {
            range: SkuRange {
                start: "n".into(),
                end: "t".into(),
            },
            epoch: split,
            ..parent.clone()
        };
        assert!(
            !live.update_layout(std::slice::from_ref(&narrowed)),
            "a narrowed parent alone leaves a hole"
        );
        let child = ShardDescriptor {
            id: ShardId(4),
            range: SkuRange {
                start: "t".into(),
                end: String::new(),
            },
            epoch: split,
            replicas: vec![1],
        };
        assert!(live.update_layout(&[narrowed.clone(), child.clone()]));
        let m = live.get();
        assert_eq!(m.shard_for("s").id, ShardId(3));
        assert_eq!(m.shard_for("t").id, ShardId(4));
        assert_eq!(m.shard_for("zzz").id, ShardId(4));
        assert!(
            !live.update_layout(&[parent]),
            "the unsplit parent is older and never taken back"
        );
        assert!(!live.update_layout(&[narrowed, child]), "nothing newer");
    }

    #[test]
    fn a_merged_shard_leaves_the_map_and_never_comes_back() {
        let live = LiveMap::new(map());
        let parent = live.get().shard(ShardId(3)).unwrap().clone();
        let at = |version| Epoch {
            version,
            conf_ver: 0,
        };
        let range = |start: &str, end: &str| SkuRange {
            start: start.into(),
            end: end.into(),
        };
        let left = ShardDescriptor {
            range: range("n", "t"),
            epoch: at(1),
            ..parent.clone()
        };
        let right = ShardDescriptor {
            id: ShardId(4),
            range: range("t", ""),
            epoch: at(1),
            replicas: vec![1],
        };
        assert!(live.update_layout(&[left.clone(), right.clone()]));
        let frozen = ShardDescriptor {
            epoch: at(2),
            ..right.clone()
        };
        assert!(live.update_layout(std::slice::from_ref(&frozen)));
        assert_eq!(
            live.get().shard_for("x").id,
            ShardId(4),
            "frozen, still routed"
        );
        let merged = ShardDescriptor {
            range: range("n", ""),
            epoch: at(3),
            ..left
        };
        assert!(live.update_layout(&[merged.clone(), frozen.clone()]));
        let m = live.get();
        assert_eq!(m.shard_for("x").id, ShardId(3));
        assert!(m.shard(ShardId(4)).is_none());
        assert!(
            !live.update_layout(&[right]),
            "the merged shard never returns"
        );
        assert!(!live.update_layout(&[merged, frozen]), "nothing newer");
    }

    #[test]
    fn hints_never_point_at_the_asking_node_and_never_guess() {
        let m = map();
        assert_eq!(
            m.not_leader(ShardId(1), Some(2), 1),
            Error::NotLeader {
                shard_id: ShardId(1),
                leader: Some((2, "127.0.0.1:7002".into()))
            }
        );
        assert_eq!(
            m.not_leader(ShardId(1), Some(1), 1),
            Error::NotLeader {
                shard_id: ShardId(1),
                leader: None
            }
        );
        assert_eq!(
            m.not_here(ShardId(2)),
            Error::ShardNotHere {
                shard_id: ShardId(2),
                replicas: vec![2]
            }
        );
        assert_eq!(
            m.not_here(ShardId(9)),
            Error::ShardNotFound {
                shard_id: ShardId(9)
            }
        );
    }
}
