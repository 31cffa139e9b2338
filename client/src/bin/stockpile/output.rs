//! The CLI's output: tables for people, JSON (`--json`) for programs.

use serde_json::json;
use stockpile_client::proto as pb;

pub fn print_json(v: &serde_json::Value) {
    println!("{v}");
}

pub fn show_update(json: bool, u: &stockpile_client::StockUpdate) {
    if json {
        print_json(&json!(u));
    } else {
        let s = &u.stock;
        let replay = if u.applied.replayed {
            " (replayed: an earlier attempt applied it)"
        } else {
            ""
        };
        println!(
            "{}: on_hand {} reserved {} available {} (version {}; shard {} index {}){replay}",
            s.sku,
            s.on_hand,
            s.reserved,
            s.available,
            s.version,
            u.applied.shard_id,
            u.applied.log_index
        );
    }
}

pub fn show_reservation_update(json: bool, u: &stockpile_client::ReservationUpdate) {
    if json {
        print_json(&json!(u));
    } else {
        let r = &u.reservation;
        let replay = if u.applied.replayed {
            " (replayed)"
        } else {
            ""
        };
        println!(
            "reservation {} {:?}, expires at {} ms (shard {}){replay}",
            r.reservation_id, r.state, r.expires_at_ms, r.shard_id
        );
        for s in &u.stock {
            println!(
                "  {}: on_hand {} reserved {} available {}",
                s.sku, s.on_hand, s.reserved, s.available
            );
        }
    }
}

pub fn status_json(s: &pb::ClusterStatusReply) -> serde_json::Value {
    let nodes: Vec<_> = s
        .nodes
        .iter()
        .map(|v| {
            let n = v.node.clone().unwrap_or_default();
            let shards: Vec<_> = v
                .status
                .as_ref()
                .map(|st| {
                    st.shards
                        .iter()
                        .map(|sh| {
                            json!({
                                "shard_id": sh.shard_id, "start": sh.start, "end": sh.end, "replicas": sh.replicas,
                                "role": sh.role, "leader_id": sh.leader_id, "term": sh.term,
                                "last_log_index": sh.last_log_index, "commit_index": sh.commit_index,
                                "applied_index": sh.applied_index, "snapshot_index": sh.snapshot_index,
                                "purged_index": sh.purged_index, "log_entries": sh.log_entries, "asleep": sh.asleep,
                                "replication": sh.replication.iter().map(|r| json!({"node_id": r.node_id, "matched_index": r.matched_index, "lag": r.lag})).collect::<Vec<_>>(),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "node_id": n.node_id, "addr": n.addr, "region": n.region, "zone": n.zone,
                "up": v.reachable, "error": v.error, "shards": shards,
            })
        })
        .collect();
    let balancer: Vec<_> = balancer_decisions(s)
        .iter()
        .map(|d| {
            json!({
                "at_ms": d.at_ms, "kind": d.kind, "shard_id": d.shard_id,
                "from_node_id": d.from_node_id, "to_node_id": d.to_node_id,
                "reason": d.reason, "outcome": d.outcome,
            })
        })
        .collect();
    json!({ "epoch": s.epoch, "nodes": nodes, "balancer": balancer })
}

/// The balancer's latest steps, from every node that led the meta shard, oldest first.
fn balancer_decisions(s: &pb::ClusterStatusReply) -> Vec<pb::BalancerDecision> {
    let mut all: Vec<pb::BalancerDecision> = s
        .nodes
        .iter()
        .filter_map(|v| v.status.as_ref())
        .flat_map(|st| st.balancer_decisions.iter().cloned())
        .collect();
    all.sort_by_key(|d| d.at_ms);
    all
}

/// The balancer's latest steps as a table (nothing when it took none).
fn print_balancer(s: &pb::ClusterStatusReply) {
    let all = balancer_decisions(s);
    if all.is_empty() {
        return;
    }
    println!();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    println!(
        "{:<15} {:<5} {:>5} {:>5} {:>5}  {:<24} REASON",
        "BALANCER STEP", "KIND", "SHARD", "FROM", "TO", "OUTCOME"
    );
    for d in all {
        let ago = format!("{} s ago", now_ms.saturating_sub(d.at_ms) / 1_000);
        println!(
            "{:<15} {:<5} {:>5} {:>5} {:>5}  {:<24} {}",
            ago, d.kind, d.shard_id, d.from_node_id, d.to_node_id, d.outcome, d.reason
        );
    }
}

pub fn print_status(s: &pb::ClusterStatusReply) {
    println!(
        "{:<5} {:<22} {:<12} {:<6} {:<12}",
        "NODE", "ADDRESS", "REGION", "ZONE", "STATE"
    );
    for v in &s.nodes {
        let n = v.node.clone().unwrap_or_default();
        let state = if v.reachable {
            "up".to_string()
        } else {
            format!("unreachable ({})", v.error)
        };
        println!(
            "{:<5} {:<22} {:<12} {:<6} {}",
            n.node_id, n.addr, n.region, n.zone, state
        );
    }
    println!();
    // One row per shard: the leader's view, and every replica's applied index and lag.
    let mut shard_ids: Vec<u64> = s
        .nodes
        .iter()
        .filter_map(|v| v.status.as_ref())
        .flat_map(|st| st.shards.iter().map(|sh| sh.shard_id))
        .collect();
    shard_ids.sort_unstable();
    shard_ids.dedup();
    println!(
        "{:<6} {:<16} {:<7} {:>5} {:>9} {:>9} {:>9}  REPLICAS (node:applied/lag)",
        "SHARD", "RANGE", "LEADER", "TERM", "LAST_LOG", "COMMIT", "APPLIED",
    );
    for id in shard_ids {
        let views: Vec<(u64, &pb::ShardStatus)> = s
            .nodes
            .iter()
            .filter_map(|v| {
                v.status
                    .as_ref()
                    .map(|st| (v.node.as_ref().map(|n| n.node_id).unwrap_or(0), st))
            })
            .filter_map(|(nid, st)| {
                st.shards
                    .iter()
                    .find(|sh| sh.shard_id == id)
                    .map(|sh| (nid, sh))
            })
            .collect();
        let Some((_, any)) = views.first() else {
            continue;
        };
        let leader = views
            .iter()
            .find(|(_, sh)| sh.role == "leader")
            .map(|(_, sh)| *sh);
        let head = leader.unwrap_or(any);
        let range = format!(
            "[{},{})",
            if any.start.is_empty() {
                "-inf"
            } else {
                &any.start
            },
            if any.end.is_empty() { "+inf" } else { &any.end }
        );
        let replicas: Vec<String> = any
            .replicas
            .iter()
            .map(|r| {
                let applied = views
                    .iter()
                    .find(|(nid, _)| nid == r)
                    .map(|(_, sh)| sh.applied_index.to_string())
                    .unwrap_or_else(|| "?".into());
                let lag = leader
                    .and_then(|l| l.replication.iter().find(|p| p.node_id == *r))
                    .map(|p| p.lag.to_string())
                    .unwrap_or_else(|| "?".into());
                format!("{r}:{applied}/{lag}")
            })
            .collect();
        let leader_txt = if head.leader_id == 0 {
            "none".to_string()
        } else {
            head.leader_id.to_string()
        };
        println!(
            "{:<6} {:<16} {:<7} {:>5} {:>9} {:>9} {:>9}  {}",
            id,
            range,
            leader_txt,
            head.term,
            head.last_log_index,
            head.commit_index,
            head.applied_index,
            replicas.join(" ")
        );
    }
    print_balancer(s);
}
