//! The balancer's plan (pure and unit-tested; the meta leader runs it, `node::balance`):
//! one step at a time that puts leaders where their range's traffic is, then evens
//! replica counts, then leader counts, across the nodes that are up, each step with
//! the reason an operator reads in the logs.
//!
//! Preferences first: a shard whose range prefers regions (`leader_regions`) and whose
//! leader is elsewhere has its leadership transferred to a replica in a preferred
//! region (the one leading fewest). Then replicas: when the node holding the most replicas has more than `tolerance`
//! over the node holding the fewest, one replica moves from the first to the second
//! (a shard the second does not hold; one whose other replicas are not in the
//! second's zone first, so that balancing never narrows a shard's spread). Then
//! leaders: when the node leading the most shards leads more than `tolerance` over
//! one that leads fewer and holds a replica of one of them, that leadership is
//! transferred. Ties go to the lowest ids so that plans are deterministic.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::NodeInfo;

/// One step of balancing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum BalanceStep {
    /// Move `shard_id`'s replica from node `from` to node `to`.
    Move {
        /// The shard.
        shard_id: u64,
        /// The node the replica leaves.
        from: u64,
        /// The node it goes to.
        to: u64,
        /// Why, for the logs.
        reason: String,
    },
    /// Transfer `shard_id`'s leadership from node `from` to node `to`.
    Lead {
        /// The shard.
        shard_id: u64,
        /// Its leader now.
        from: u64,
        /// The replica's node that takes over.
        to: u64,
        /// Why, for the logs.
        reason: String,
    },
}

/// What the balancer sees of the cluster.
#[derive(Clone, Debug, Default)]
pub struct BalanceView {
    /// The nodes that are up (only they receive replicas and leaderships).
    pub nodes: Vec<NodeInfo>,
    /// Each shard's voters (node ids).
    pub replicas: BTreeMap<u64, Vec<u64>>,
    /// Each shard's leader.
    pub leaders: BTreeMap<u64, u64>,
    /// The regions each shard's leader should be in (shards without a preference are
    /// absent).
    pub preferred: BTreeMap<u64, Vec<String>>,
    /// Shards not to touch (a move under way).
    pub busy: BTreeSet<u64>,
}

/// The next step that helps, or None when every preference holds and replica and
/// leader counts are within `tolerance` (or nothing can be moved).
pub fn plan_balance(view: &BalanceView, tolerance: u64) -> Option<BalanceStep> {
    preference_step(view)
        .or_else(|| replica_step(&view.nodes, &view.replicas, &view.busy, tolerance))
        .or_else(|| leader_step(view, tolerance))
}

/// Whether node `id` may lead `shard` under its preference (any up node without one).
fn may_lead(view: &BalanceView, shard: u64, id: u64) -> bool {
    match view.preferred.get(&shard) {
        None => true,
        Some(regions) => view
            .nodes
            .iter()
            .any(|n| n.node_id == id && regions.contains(&n.region)),
    }
}

fn preference_step(view: &BalanceView) -> Option<BalanceStep> {
    let led = counts(&view.nodes, view.leaders.values());
    for (&shard_id, regions) in &view.preferred {
        let Some(&from) = view.leaders.get(&shard_id) else {
            continue;
        };
        if view.busy.contains(&shard_id) || may_lead(view, shard_id, from) {
            continue;
        }
        let to = view
            .replicas
            .get(&shard_id)
            .into_iter()
            .flatten()
            .filter(|n| may_lead(view, shard_id, **n))
            .min_by_key(|n| (led.get(n).copied().unwrap_or(0), **n));
        if let Some(&to) = to {
            return Some(BalanceStep::Lead {
                shard_id,
                from,
                to,
                reason: format!(
                    "shard {shard_id}'s leaders belong in {regions:?}; node {to} is there"
                ),
            });
        }
    }
    None
}

/// How many of `per_shard`'s entries name each node of `nodes` (0 for none).
fn counts<'a>(nodes: &[NodeInfo], per_shard: impl Iterator<Item = &'a u64>) -> BTreeMap<u64, u64> {
    let mut c: BTreeMap<u64, u64> = nodes.iter().map(|n| (n.node_id, 0)).collect();
    for n in per_shard {
        if let Some(k) = c.get_mut(n) {
            *k += 1;
        }
    }
    c
}

fn replica_step(
    nodes: &[NodeInfo],
    replicas: &BTreeMap<u64, Vec<u64>>,
    busy: &BTreeSet<u64>,
    tolerance: u64,
) -> Option<BalanceStep> {
    let load = counts(nodes, replicas.values().flatten());
    let (&from, &most) = load
        .iter()
        .max_by_key(|(id, c)| (**c, std::cmp::Reverse(**id)))?;
    let (&to, &fewest) = load.iter().min_by_key(|(id, c)| (**c, **id))?;
    if most <= fewest + tolerance {
        return None;
    }
    let zone_of: BTreeMap<u64, &str> = nodes.iter().map(|n| (n.node_id, n.zone.as_str())).collect();
    let target_zone = zone_of.get(&to).copied();
    let shard_id = replicas
        .iter()
        .filter(|(id, held)| !busy.contains(id) && held.contains(&from) && !held.contains(&to))
        .min_by_key(|(id, held)| {
            let zone_taken = held
                .iter()
                .filter(|n| **n != from)
                .any(|n| zone_of.get(n).copied() == target_zone);
            (zone_taken, **id)
        })
        .map(|(id, _)| *id)?;
    Some(BalanceStep::Move {
        shard_id,
        from,
        to,
        reason: format!(
            "node {from} holds {most} replicas and node {to} {fewest} (tolerance {tolerance})"
        ),
    })
}

fn leader_step(view: &BalanceView, tolerance: u64) -> Option<BalanceStep> {
    let led = counts(&view.nodes, view.leaders.values());
    let (&from, &most) = led
        .iter()
        .max_by_key(|(id, c)| (**c, std::cmp::Reverse(**id)))?;
    let mut targets: Vec<(u64, u64)> = led.iter().map(|(id, c)| (*c, *id)).collect();
    targets.sort_unstable();
    for (fewest, to) in targets {
        if most <= fewest + tolerance {
            return None;
        }
        let shard = view.leaders.iter().find(|(id, leader)| {
            **leader == from
                && !view.busy.contains(id)
                && may_lead(view, **id, to)
                && view.replicas.get(id).is_some_and(|v| v.contains(&to))
        });
        if let Some((&shard_id, _)) = shard {
            return Some(BalanceStep::Lead {
                shard_id,
                from,
                to,
                reason: format!(
                    "node {from} leads {most} shards and node {to} {fewest} (tolerance {tolerance})"
                ),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moves::tests::node;

    fn four_nodes() -> Vec<NodeInfo> {
        vec![node(1, "a"), node(2, "b"), node(3, "c"), node(4, "d")]
    }

    fn view(
        nodes: Vec<NodeInfo>,
        replicas: &[(u64, Vec<u64>)],
        leaders: &[(u64, u64)],
    ) -> BalanceView {
        BalanceView {
            nodes,
            replicas: replicas.iter().cloned().collect(),
            leaders: leaders.iter().copied().collect(),
            ..BalanceView::default()
        }
    }

    #[test]
    fn a_new_empty_node_receives_a_replica_from_the_fullest() {
        let v = view(
            four_nodes(),
            &[(1, vec![1, 2, 3]), (2, vec![1, 2, 3]), (3, vec![1, 2, 3])],
            &[],
        );
        let step = plan_balance(&v, 1);
        assert!(
            matches!(
                step,
                Some(BalanceStep::Move {
                    shard_id: 1,
                    from: 1,
                    to: 4,
                    ..
                })
            ),
            "{step:?}"
        );
    }

    #[test]
    fn counts_within_the_tolerance_are_left_alone() {
        let v = view(
            four_nodes(),
            &[(1, vec![1, 2, 3]), (2, vec![2, 3, 4]), (3, vec![1, 3, 4])],
            &[(1, 1), (2, 2), (3, 3)],
        );
        assert_eq!(plan_balance(&v, 1), None);
    }

    #[test]
    fn a_shard_under_way_is_not_touched_and_zones_are_kept_apart() {
        let nodes = vec![node(1, "a"), node(2, "b"), node(3, "c"), node(4, "b")];
        // Shard 1 is busy; shard 2 has a replica in zone b (node 2): shard 3 is chosen.
        let mut v = view(
            nodes,
            &[(1, vec![1, 2, 3]), (2, vec![1, 2, 3]), (3, vec![1, 3])],
            &[],
        );
        v.busy.insert(1);
        let step = plan_balance(&v, 1);
        assert!(
            matches!(
                step,
                Some(BalanceStep::Move {
                    shard_id: 3,
                    from: 1,
                    to: 4,
                    ..
                })
            ),
            "{step:?}"
        );
    }

    #[test]
    fn leaders_move_to_a_replica_holder_that_leads_fewer() {
        let v = view(
            four_nodes(),
            &[
                (1, vec![1, 2, 3]),
                (2, vec![2, 3, 4]),
                (3, vec![1, 3, 4]),
                (4, vec![1, 2, 4]),
            ],
            &[(1, 1), (3, 1), (4, 1), (2, 2)],
        );
        let step = plan_balance(&v, 1);
        // Node 3 leads none and holds shards 1 and 3: shard 1's leadership goes there.
        assert!(
            matches!(
                step,
                Some(BalanceStep::Lead {
                    shard_id: 1,
                    from: 1,
                    to: 3,
                    ..
                })
            ),
            "{step:?}"
        );
    }

    #[test]
    fn a_leader_outside_its_preferred_region_moves_there_and_stays() {
        let mut nodes = four_nodes();
        nodes.truncate(3);
        nodes[1].region = "eu".into();
        let mut v = view(
            nodes,
            &[(1, vec![1, 2, 3]), (2, vec![1, 2, 3])],
            &[(1, 1), (2, 2)],
        );
        v.preferred.insert(1, vec!["eu".into()]);
        let step = plan_balance(&v, 1);
        assert!(
            matches!(
                step,
                Some(BalanceStep::Lead {
                    shard_id: 1,
                    from: 1,
                    to: 2,
                    ..
                })
            ),
            "{step:?}"
        );
        // Once there, count balancing never takes it out of its region.
        v.leaders = BTreeMap::from([(1, 2), (2, 2)]);
        v.preferred.insert(2, vec!["eu".into()]);
        assert_eq!(plan_balance(&v, 0), None);
    }
}
