//! `stockpile node list|drain|remove`, `stockpile shard move` and `stockpile cluster
//! map`: the cluster's shape, shown and changed while it serves. Each command that
//! changes it says what it will do, then what it did.

use std::collections::BTreeMap;

use serde_json::json;
use stockpile_client::{Client, Error, MoveReport, PlannedMove};

use crate::args::{NodeCmd, ShardCmd};
use crate::output::print_json;

pub async fn node(client: &Client, cmd: NodeCmd, json: bool) -> Result<(), Error> {
    match cmd {
        NodeCmd::List => list(client, json).await,
        NodeCmd::Drain { node, dry_run } => evacuate(client, node, false, dry_run, json).await,
        NodeCmd::Remove {
            node,
            dead,
            dry_run,
        } => evacuate(client, node, dead, dry_run, json).await,
    }
}

pub async fn shard(client: &Client, cmd: ShardCmd, json: bool) -> Result<(), Error> {
    match cmd {
        ShardCmd::Move { shard, from, to } => {
            if !json {
                println!("moving shard {shard}'s replica from node {from} to node {to}");
            }
            let report = client.move_replica(shard, from, to, false).await?;
            show_moves(json, &[report]);
            Ok(())
        }
        ShardCmd::Split { shard, at } => {
            if !json {
                let at_text = at
                    .as_deref()
                    .map_or("its middle SKU".into(), |a| format!("{a:?}"));
                println!("splitting shard {shard} at {at_text}");
            }
            let report = client.split_shard(shard, at.as_deref()).await?;
            if json {
                crate::output::print_json(&serde_json::json!(report));
            } else {
                for (what, s) in [("kept", &report.parent), ("new", &report.child)] {
                    println!(
                        "  {what:<4} shard {:>4}  [{:?}, {:?})  version {}  replicas {:?}",
                        s.shard_id, s.start, s.end, s.epoch.0, s.replicas
                    );
                }
            }
            Ok(())
        }
        ShardCmd::Merge { shard, right } => {
            let right = match right {
                Some(r) => r,
                None => right_neighbour(client, shard)?,
            };
            if !json {
                println!("merging shard {right} into shard {shard}");
            }
            let merged = client.merge_shards(shard, right).await?;
            if json {
                crate::output::print_json(&serde_json::json!(merged));
            } else {
                println!(
                    "  shard {:>4}  [{:?}, {:?})  version {}  replicas {:?}",
                    merged.shard_id, merged.start, merged.end, merged.epoch.0, merged.replicas
                );
            }
            Ok(())
        }
    }
}

/// The shard after `shard` in the client's map.
fn right_neighbour(client: &Client, shard: u64) -> Result<u64, Error> {
    let map = client.shard_map();
    let invalid = |message: String| Error::InvalidArgument {
        field: "shard".into(),
        message,
    };
    let left = map
        .shard(shard)
        .ok_or_else(|| invalid(format!("shard {shard} is not in the map")))?;
    if left.end.is_empty() {
        return Err(invalid(format!(
            "shard {shard} ends the SKU space: nothing after it"
        )));
    }
    map.shards
        .iter()
        .find(|s| s.start == left.end)
        .map(|s| s.shard_id)
        .ok_or_else(|| invalid(format!("no shard starts at {:?}", left.end)))
}

async fn list(client: &Client, json: bool) -> Result<(), Error> {
    let status = client.cluster_status().await?;
    let map = client.cluster_map().await?;
    let state_of = |id: u64| {
        map.nodes
            .iter()
            .find(|n| n.node_id == id)
            .map_or("unregistered".to_string(), |n| n.state.clone())
    };
    let replicas = client.shard_replicas().await?;
    let mut held: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    for n in replicas.values().flatten() {
        held.entry(*n).or_default().0 += 1;
    }
    for st in status.nodes.iter().filter_map(|v| v.status.as_ref()) {
        let me = st.node.as_ref().map(|n| n.node_id).unwrap_or(0);
        let led = st.shards.iter().filter(|s| s.role == "leader").count();
        held.entry(me).or_default().1 = led;
    }
    let rows: Vec<_> = status
        .nodes
        .iter()
        .map(|v| {
            let n = v.node.clone().unwrap_or_default();
            let (replicas, leaders) = held.get(&n.node_id).copied().unwrap_or_default();
            (n, v.reachable, replicas, leaders)
        })
        .collect();
    if json {
        let rows: Vec<_> = rows
            .iter()
            .map(|(n, up, r, l)| {
                json!({"node_id": n.node_id, "addr": n.addr, "region": n.region, "zone": n.zone,
                       "up": up, "state": state_of(n.node_id), "replicas": r, "leaders": l})
            })
            .collect();
        print_json(&json!(rows));
        return Ok(());
    }
    println!(
        "{:<5} {:<22} {:<12} {:<6} {:<9} {:<5} {:>8} {:>7}",
        "NODE", "ADDRESS", "REGION", "ZONE", "STATE", "REACH", "REPLICAS", "LEADERS"
    );
    for (n, up, r, l) in rows {
        println!(
            "{:<5} {:<22} {:<12} {:<6} {:<9} {:<5} {:>8} {:>7}",
            n.node_id,
            n.addr,
            n.region,
            n.zone,
            state_of(n.node_id),
            if up { "up" } else { "down" },
            r,
            l
        );
    }
    Ok(())
}

async fn evacuate(
    client: &Client,
    node: u64,
    dead: bool,
    dry_run: bool,
    json: bool,
) -> Result<(), Error> {
    let plan = client.plan_drain(node).await?;
    if !json || dry_run {
        show_plan(json, node, dead, &plan);
    }
    if dry_run {
        return Ok(());
    }
    let done = client.evacuate(node, dead, &plan).await?;
    show_moves(json, &done);
    if !json {
        println!("node {node} is removed from the cluster: its id is never used again");
    }
    Ok(())
}

fn show_plan(json: bool, node: u64, dead: bool, plan: &[PlannedMove]) {
    if json {
        print_json(&json!({"node_id": node, "dead": dead, "plan": plan}));
        return;
    }
    if plan.is_empty() {
        println!("node {node} holds no replica: nothing to move");
        return;
    }
    let verb = if dead { "recreate" } else { "move" };
    println!("will {verb} {} replica(s) of node {node}:", plan.len());
    for m in plan {
        println!("  shard {}: node {} -> node {}", m.shard_id, m.from, m.to);
    }
}

fn show_moves(json: bool, done: &[MoveReport]) {
    if json {
        print_json(&json!(done));
        return;
    }
    for r in done {
        println!(
            "shard {}: node {} -> node {} done (replica {}); replicas now {:?}, conf_ver {}",
            r.shard_id, r.from, r.to, r.replica_id, r.replicas, r.conf_ver
        );
        for step in &r.steps {
            println!("  - {step}");
        }
    }
}

/// `cluster map`: the shard map and the meta shard's records (node states, moves).
pub async fn print_cluster_map(client: &Client, json: bool) -> Result<(), Error> {
    let map = client.shard_map();
    // The meta shard's records: node states and moves under way.
    let meta = client.cluster_map().await?;
    if json {
        let mut v = json!(map);
        v["node_states"] = json!(
            meta.nodes
                .iter()
                .map(|n| (n.node_id.to_string(), n.state.clone()))
                .collect::<std::collections::BTreeMap<_, _>>()
        );
        v["moves"] = json!(meta
            .moves
            .iter()
            .map(|m| json!({"shard_id": m.shard_id, "from": m.from_node_id, "to": m.to_node_id, "from_dead": m.from_dead, "step": m.step}))
            .collect::<Vec<_>>());
        v["meta_leader_id"] = json!(meta.meta_leader_id);
        print_json(&v);
    } else {
        println!(
            "epoch {}  (meta shard led by node {})",
            map.epoch, meta.meta_leader_id
        );
        // The meta shard's node records: removed nodes too.
        for n in &meta.nodes {
            println!(
                "node {:<3} {:<22} region {:<10} zone {:<6} {}",
                n.node_id, n.addr, n.region, n.zone, n.state
            );
        }
        if let Some(m) = &map.meta {
            println!(
                "shard 0   (meta: the cluster map) replicas {:?}",
                m.replicas
            );
        }
        for s in &map.shards {
            println!(
                "shard {:<3} [{:?}, {:?}) replicas {:?}",
                s.shard_id, s.start, s.end, s.replicas
            );
        }
        for m in &meta.moves {
            println!(
                "move  shard {} from node {} to node {}: {}",
                m.shard_id, m.from_node_id, m.to_node_id, m.step
            );
        }
    }
    Ok(())
}
