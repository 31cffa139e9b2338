//! The shipped shard layout, defined once: four shards split at `g`, `n` and `t`
//! (`cluster-config/local-3node.toml`), and a builder of cluster configs with that
//! layout, used by the integration tests and the Jepsen-style tests so that every
//! suite runs the topology users run.

use std::path::PathBuf;

/// The boundaries of the four standard shards: `["", g)`, `[g, n)`, `[n, t)`, `[t, "")`.
pub const STANDARD_SPLITS: [&str; 3] = ["g", "n", "t"];

/// One SKU in each standard shard, by shard id 1..=4.
pub const SKU_PER_SHARD: [(u64, &str); 4] =
    [(1, "apple"), (2, "grape"), (3, "nectarine"), (4, "tomato")];

/// The standard shards' `(id, start, end)`.
pub fn standard_ranges() -> [(u64, &'static str, &'static str); 4] {
    let [g, n, t] = STANDARD_SPLITS;
    [(1, "", g), (2, g, n), (3, n, t), (4, t, "")]
}

/// Replicas of the standard shards on `nodes` nodes: every node when there are at most
/// three; otherwise three per shard, rotating so that each node holds some.
pub fn standard_replicas(nodes: u64) -> [Vec<u64>; 4] {
    std::array::from_fn(|i| {
        if nodes <= 3 {
            (1..=nodes).collect()
        } else {
            (0..3).map(|k| ((i as u64 + k) % nodes) + 1).collect()
        }
    })
}

/// One node of a topology.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub id: u64,
    pub addr: String,
    pub metrics_addr: Option<String>,
    pub region: String,
    pub zone: String,
    pub data_dir: PathBuf,
}

/// A cluster config with the standard shard layout.
#[derive(Clone, Debug)]
pub struct Topology {
    pub cluster_name: String,
    pub nodes: Vec<NodeSpec>,
    /// Replicas of shards 1..=4 (default: `standard_replicas`).
    pub replicas: Option<[Vec<u64>; 4]>,
    /// Further TOML appended as is (`[raft]`, `[server]`, ... sections).
    pub extra_toml: String,
}

impl Topology {
    pub fn to_toml(&self) -> String {
        let mut t = format!("cluster_name = {:?}\n", self.cluster_name);
        for n in &self.nodes {
            t += &format!(
                "[[nodes]]\nid = {}\naddr = {:?}\nregion = {:?}\nzone = {:?}\ndata_dir = {:?}\n",
                n.id,
                n.addr,
                n.region,
                n.zone,
                n.data_dir.display().to_string()
            );
            if let Some(m) = &n.metrics_addr {
                t += &format!("metrics_addr = {m:?}\n");
            }
        }
        let replicas = self
            .replicas
            .clone()
            .unwrap_or_else(|| standard_replicas(self.nodes.len() as u64));
        for ((id, start, end), replicas) in standard_ranges().into_iter().zip(replicas) {
            let list: Vec<String> = replicas.iter().map(u64::to_string).collect();
            t += &format!(
                "[[shards]]\nid = {id}\nstart = {start:?}\nend = {end:?}\nreplicas = [{}]\n",
                list.join(", ")
            );
        }
        t + &self.extra_toml
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterConfig;

    #[test]
    fn the_shipped_local_cluster_has_the_standard_layout() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../cluster-config/local-3node.toml"
        );
        let shipped = ClusterConfig::load(std::path::Path::new(path)).unwrap();
        let ranges: Vec<(u64, &str, &str)> = shipped
            .shards
            .iter()
            .map(|s| (s.id, s.start.as_str(), s.end.as_str()))
            .collect();
        assert_eq!(ranges, standard_ranges().to_vec());
        for (id, sku) in SKU_PER_SHARD {
            assert_eq!(shipped.shard_for(sku).map(|s| s.id), Some(id));
        }
    }

    #[test]
    fn a_built_topology_is_a_valid_config() {
        let nodes = (1..=5)
            .map(|id| NodeSpec {
                id,
                addr: format!("127.0.0.1:{}", 7000 + id),
                metrics_addr: None,
                region: "r".into(),
                zone: format!("z{id}"),
                data_dir: format!("d{id}").into(),
            })
            .collect();
        let t = Topology {
            cluster_name: "t".into(),
            nodes,
            replicas: None,
            extra_toml: "[raft]\nheartbeat_interval_ms = 50\n".into(),
        };
        let c = ClusterConfig::parse("t.toml", &t.to_toml()).unwrap();
        assert_eq!(c.shards.len(), 4);
        assert!(c.shards.iter().all(|s| s.replicas.len() == 3));
        assert_eq!(c.raft.heartbeat_interval_ms, 50);
    }
}
