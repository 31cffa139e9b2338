//! The cluster map the meta shard (`ShardId(0)`) replicates: the nodes (address,
//! region, zone, state) and the replica moves under way, each recorded step by step so
//! that a move interrupted by a crash or a leader change is found and driven again.
//!
//! Pure like the rest of `inventory`: commands are applied through the
//! cluster methods of the [`Records`] trait, in memory for tests and over RocksDB by `storage`. Every
//! command is an ordinary operation of a log entry (`Command::Cluster`), so it carries
//! a request id and is applied once however often it is retried.

use serde::{Deserialize, Serialize};

use super::apply::Records;

/// A node's place in the cluster's life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NodeState {
    /// Registered; receives replicas as moves place them.
    Up,
    /// Its replicas are being moved away; placement gives it no new one.
    Draining,
    /// Gone for good: its id is never used again.
    Removed,
}

impl NodeState {
    pub fn parse(s: &str) -> Option<NodeState> {
        match s {
            "up" => Some(NodeState::Up),
            "draining" => Some(NodeState::Draining),
            "removed" => Some(NodeState::Removed),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Draining => "draining",
            NodeState::Removed => "removed",
        }
    }
}

/// One node as the cluster map records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: u64,
    /// host:port of its gRPC server.
    pub addr: String,
    pub region: String,
    pub zone: String,
    pub state: NodeState,
}

/// A replica move under way: recorded before its first step, its last step noted
/// as it goes, deleted when it finished or was undone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRecord {
    pub shard_id: u64,
    pub from: u64,
    pub to: u64,
    /// The source is gone for good (it is not asked to drop its replica).
    pub from_dead: bool,
    /// The last step taken, for operators (`cluster map`).
    pub step: String,
    /// Shard-clock time of the last update: a move silent for long is driven again.
    pub updated_ms: u64,
}

/// A shard born by a split, as the cluster map records it: recording it is how its
/// id is allocated (an id is recorded once, so two splits never take the same one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub id: u64,
    /// The shard it was split from.
    pub parent: u64,
    /// Where the split cut the parent's range: the child's first SKU.
    pub start: String,
}

/// A change of the cluster map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterCommand {
    /// The config's nodes, recorded on a fresh cluster: each one not recorded yet
    /// (a recorded node, removed ones included, is never changed by a seed).
    Seed { nodes: Vec<NodeRecord> },
    /// Registers a node (`--join`) or updates its address; refused for a removed id,
    /// and (for now) before the map is seeded.
    Join { node: NodeRecord },
    /// Changes a recorded node's state; a removed node stays removed.
    SetNodeState { node_id: u64, state: NodeState },
    /// Records a move (or notes its next step); refused while another move of the
    /// same shard is recorded.
    Move { record: MoveRecord },
    /// Forgets the move of `shard_id` from `from` to `to` (finished or undone).
    EndMove { shard_id: u64, from: u64, to: u64 },
    /// Records a shard a split is about to create; refused when the id is taken.
    AddShard { record: ShardRecord },
}

impl ClusterCommand {
    pub fn name(&self) -> &'static str {
        match self {
            ClusterCommand::Seed { .. } => "seed",
            ClusterCommand::Join { .. } => "join",
            ClusterCommand::SetNodeState { .. } => "set_node_state",
            ClusterCommand::Move { .. } => "move",
            ClusterCommand::EndMove { .. } => "end_move",
            ClusterCommand::AddShard { .. } => "add_shard",
        }
    }
}

/// What a cluster command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterOutcome {
    Done,
    /// The map is not seeded yet: try again shortly (the meta leader seeds it).
    Unseeded,
    /// Nothing changed, for the reason given.
    Refused {
        problem: String,
    },
}

fn refused(problem: String) -> ClusterOutcome {
    ClusterOutcome::Refused { problem }
}

/// Applies one cluster command at shard-clock time `now_ms`.
pub fn apply<R: Records>(
    state: &mut R,
    command: &ClusterCommand,
    now_ms: u64,
) -> Result<ClusterOutcome, R::Error> {
    Ok(match command {
        ClusterCommand::Seed { nodes } => {
            for n in nodes {
                if state.node_record(n.id)?.is_none() {
                    state.put_node_record(n);
                }
            }
            ClusterOutcome::Done
        }
        ClusterCommand::Join { .. } if !state.any_node_record()? => ClusterOutcome::Unseeded,
        ClusterCommand::Join { node } => match state.node_record(node.id)? {
            Some(old) if old.state == NodeState::Removed => refused(format!(
                "node {} was removed from the cluster; its id is never used again: give the node a new id",
                node.id
            )),
            old => {
                let mut next = node.clone();
                next.state = old.map_or(NodeState::Up, |o| o.state);
                state.put_node_record(&next);
                ClusterOutcome::Done
            }
        },
        ClusterCommand::SetNodeState {
            node_id,
            state: next,
        } => match state.node_record(*node_id)? {
            None => refused(format!("node {node_id} is not in the cluster map")),
            Some(old) if old.state == NodeState::Removed && *next != NodeState::Removed => {
                refused(format!("node {node_id} was removed for good"))
            }
            Some(mut old) => {
                old.state = *next;
                state.put_node_record(&old);
                ClusterOutcome::Done
            }
        },
        ClusterCommand::Move { record } => match state.move_record(record.shard_id)? {
            Some(other) if (other.from, other.to) != (record.from, record.to) => refused(format!(
                "shard {} is being moved from node {} to node {} (step: {}); finish that move first",
                other.shard_id, other.from, other.to, other.step
            )),
            _ => {
                let mut next = record.clone();
                next.updated_ms = now_ms;
                state.put_move_record(&next);
                ClusterOutcome::Done
            }
        },
        ClusterCommand::EndMove { shard_id, from, to } => {
            if let Some(m) = state.move_record(*shard_id)?
                && (m.from, m.to) == (*from, *to)
            {
                state.delete_move_record(*shard_id);
            }
            ClusterOutcome::Done
        }
        ClusterCommand::AddShard { record } => match state.shard_record(record.id)? {
            Some(r) if r == *record => ClusterOutcome::Done,
            Some(r) => refused(format!(
                "shard id {} is taken (split from shard {} at {:?})",
                r.id, r.parent, r.start
            )),
            None => {
                state.put_shard_record(record);
                ClusterOutcome::Done
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::MemState;

    fn node(id: u64, state: NodeState) -> NodeRecord {
        NodeRecord {
            id,
            addr: format!("127.0.0.1:{}", 7000 + id),
            region: "local".into(),
            zone: "a".into(),
            state,
        }
    }

    fn mv(shard_id: u64, from: u64, to: u64) -> MoveRecord {
        MoveRecord {
            shard_id,
            from,
            to,
            from_dead: false,
            step: "planned".into(),
            updated_ms: 0,
        }
    }

    fn run(s: &mut MemState, c: ClusterCommand) -> ClusterOutcome {
        apply(s, &c, 5).expect("infallible")
    }

    fn seed(ids: &[u64]) -> ClusterCommand {
        ClusterCommand::Seed {
            nodes: ids.iter().map(|i| node(*i, NodeState::Up)).collect(),
        }
    }

    #[test]
    fn seeding_adds_missing_nodes_and_never_changes_recorded_ones() {
        let mut s = MemState::default();
        assert_eq!(run(&mut s, seed(&[1, 2, 3])), ClusterOutcome::Done);
        let remove = ClusterCommand::SetNodeState {
            node_id: 2,
            state: NodeState::Removed,
        };
        run(&mut s, remove);
        assert_eq!(run(&mut s, seed(&[1, 2, 3, 7])), ClusterOutcome::Done);
        assert_eq!(
            s.cluster_nodes.keys().copied().collect::<Vec<_>>(),
            [1, 2, 3, 7]
        );
        assert_eq!(
            s.cluster_nodes[&2].state,
            NodeState::Removed,
            "a seed revives nothing"
        );
    }

    #[test]
    fn a_join_waits_for_the_seed() {
        let mut s = MemState::default();
        let join = ClusterCommand::Join {
            node: node(4, NodeState::Up),
        };
        assert_eq!(run(&mut s, join.clone()), ClusterOutcome::Unseeded);
        assert!(s.cluster_nodes.is_empty());
        run(&mut s, seed(&[1]));
        assert_eq!(run(&mut s, join), ClusterOutcome::Done);
    }

    #[test]
    fn a_removed_node_id_is_never_registered_again() {
        let mut s = MemState::default();
        run(&mut s, seed(&[1]));
        run(
            &mut s,
            ClusterCommand::Join {
                node: node(4, NodeState::Up),
            },
        );
        let remove = ClusterCommand::SetNodeState {
            node_id: 4,
            state: NodeState::Removed,
        };
        assert_eq!(run(&mut s, remove), ClusterOutcome::Done);
        let again = run(
            &mut s,
            ClusterCommand::Join {
                node: node(4, NodeState::Up),
            },
        );
        assert!(
            matches!(again, ClusterOutcome::Refused { problem } if problem.contains("never used again"))
        );
        let up = ClusterCommand::SetNodeState {
            node_id: 4,
            state: NodeState::Up,
        };
        assert!(matches!(run(&mut s, up), ClusterOutcome::Refused { .. }));
    }

    #[test]
    fn a_rejoin_keeps_the_state_and_takes_the_new_address() {
        let mut s = MemState::default();
        run(&mut s, seed(&[1]));
        run(
            &mut s,
            ClusterCommand::Join {
                node: node(4, NodeState::Up),
            },
        );
        let drain = ClusterCommand::SetNodeState {
            node_id: 4,
            state: NodeState::Draining,
        };
        run(&mut s, drain);
        let mut moved = node(4, NodeState::Up);
        moved.addr = "10.0.0.4:7000".into();
        run(&mut s, ClusterCommand::Join { node: moved });
        let rec = &s.cluster_nodes[&4];
        assert_eq!(
            (rec.addr.as_str(), rec.state),
            ("10.0.0.4:7000", NodeState::Draining)
        );
    }

    #[test]
    fn one_move_per_shard_is_recorded_and_only_its_own_end_forgets_it() {
        let mut s = MemState::default();
        assert_eq!(
            run(
                &mut s,
                ClusterCommand::Move {
                    record: mv(2, 1, 4)
                }
            ),
            ClusterOutcome::Done
        );
        assert_eq!(
            s.cluster_moves[&2].updated_ms, 5,
            "stamped with the shard clock"
        );
        let other = run(
            &mut s,
            ClusterCommand::Move {
                record: mv(2, 3, 4),
            },
        );
        assert!(
            matches!(other, ClusterOutcome::Refused { problem } if problem.contains("from node 1 to node 4"))
        );
        let mut step = mv(2, 1, 4);
        step.step = "learner added".into();
        assert_eq!(
            run(&mut s, ClusterCommand::Move { record: step }),
            ClusterOutcome::Done
        );
        run(
            &mut s,
            ClusterCommand::EndMove {
                shard_id: 2,
                from: 3,
                to: 4,
            },
        );
        assert!(
            s.cluster_moves.contains_key(&2),
            "another move's end forgets nothing"
        );
        run(
            &mut s,
            ClusterCommand::EndMove {
                shard_id: 2,
                from: 1,
                to: 4,
            },
        );
        assert!(s.cluster_moves.is_empty());
    }
}
