//! The CLI's commands, one function per group, each printing through `output`.

use std::time::Duration;

use serde_json::json;
use stockpile_client::proto as pb;
use stockpile_client::{Client, Consistency, Error};

use crate::args::{CartCmd, ClusterCmd, Command, ReservationCmd, StockCmd};
use crate::output::{print_json, print_status, show_reservation_update, show_update, status_json};

fn consistency(stale: bool) -> Consistency {
    if stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    }
}

/// Runs `cmd` against the cluster (`bench` is run before a client is built).
pub async fn run(client: &Client, cmd: Command, json: bool) -> Result<(), Error> {
    match cmd {
        Command::Stock(c) => stock(client, c, json).await,
        Command::Cart(c) => cart(client, c, json).await,
        Command::Cluster(ClusterCmd::Map | ClusterCmd::Leader { .. } | ClusterCmd::Status) => {
            cluster_info(client, cmd, json).await
        }
        Command::Cluster(_) => cluster_ops(client, cmd, json).await,
        Command::Node(c) => crate::elastic::node(client, c, json).await,
        Command::Shard(c) => crate::elastic::shard(client, c, json).await,
        Command::Rush {
            sku,
            clients,
            attempts,
        } => rush(client, sku, clients, attempts, json).await,
        Command::Bench(_) | Command::Certs(_) | Command::Token(_) => Ok(()),
        Command::Reserve { .. }
        | Command::Confirm { .. }
        | Command::Release { .. }
        | Command::Reservation(_) => reservation(client, cmd, json).await,
    }
}

/// `stock set|adjust|decrement|get|list`.
pub async fn stock(client: &Client, cmd: StockCmd, json: bool) -> Result<(), Error> {
    match cmd {
        StockCmd::Set {
            sku,
            on_hand,
            if_version,
            rid,
        } => {
            let update = match if_version {
                Some(v) => {
                    client
                        .set_stock_if_version(rid.get(), &sku, on_hand, v)
                        .await?
                }
                None => client.set_stock_with_id(rid.get(), &sku, on_hand).await?,
            };
            show_update(json, &update)
        }
        StockCmd::Adjust {
            sku,
            delta,
            if_version,
            rid,
        } => {
            let update = match if_version {
                Some(v) => {
                    client
                        .adjust_stock_if_version(rid.get(), &sku, delta, v)
                        .await?
                }
                None => client.adjust_stock_with_id(rid.get(), &sku, delta).await?,
            };
            show_update(json, &update)
        }
        StockCmd::Decrement { sku, qty, rid } => {
            show_update(json, &client.decrement_with_id(rid.get(), &sku, qty).await?)
        }
        StockCmd::Get {
            skus,
            stale,
            from_node,
        } => {
            let skus: Vec<&str> = skus.iter().map(String::as_str).collect();
            let reads = match from_node {
                Some(n) => client.get_from_node(n, &skus).await?,
                None => client.get(&skus, consistency(stale)).await?,
            };
            if json {
                print_json(&json!(reads));
            } else {
                println!(
                    "{:<24} {:>14} {:>14} {:>14} {:>8}  READ FROM",
                    "SKU", "ON_HAND", "RESERVED", "AVAILABLE", "VERSION"
                );
                for r in reads {
                    let from = format!(
                        "shard {} node {} @{}",
                        r.shard_id, r.node_id, r.applied_index
                    );
                    match r.stock {
                        Some(s) => println!(
                            "{:<24} {:>14} {:>14} {:>14} {:>8}  {from}",
                            s.sku, s.on_hand, s.reserved, s.available, s.version
                        ),
                        None => println!(
                            "{:<24} {:>14} {:>14} {:>14} {:>8}  {from}",
                            r.sku, "-", "-", "-", "-"
                        ),
                    }
                }
            }
        }
        StockCmd::List {
            start_after,
            limit,
            stale,
        } => {
            let records = client
                .list(start_after.as_deref(), limit, consistency(stale))
                .await?;
            if json {
                print_json(&json!(records));
            } else {
                println!(
                    "{:<24} {:>14} {:>14} {:>14} {:>8}",
                    "SKU", "ON_HAND", "RESERVED", "AVAILABLE", "VERSION"
                );
                for s in records {
                    println!(
                        "{:<24} {:>14} {:>14} {:>14} {:>8}",
                        s.sku, s.on_hand, s.reserved, s.available, s.version
                    );
                }
            }
        }
    }
    Ok(())
}

/// `reserve`, `confirm`, `release`, `reservation get`.
pub async fn reservation(client: &Client, cmd: Command, json: bool) -> Result<(), Error> {
    match cmd {
        Command::Reserve {
            items,
            ttl,
            id,
            rid,
        } => {
            let u = client
                .reserve_with_id(rid.get(), id.as_deref(), &items, ttl)
                .await?;
            show_reservation_update(json, &u);
        }
        Command::Confirm { id, sku, rid } => show_reservation_update(
            json,
            &client
                .confirm_with_id(rid.get(), &id, sku.as_deref())
                .await?,
        ),
        Command::Release { id, sku, rid } => show_reservation_update(
            json,
            &client
                .release_with_id(rid.get(), &id, sku.as_deref())
                .await?,
        ),
        Command::Reservation(ReservationCmd::Get { id, sku, stale }) => {
            let r = client
                .get_reservation(&id, sku.as_deref(), consistency(stale))
                .await?;
            if json {
                print_json(&json!(r));
            } else {
                println!(
                    "reservation {} ({:?}) on shard {}, expires at {} ms",
                    r.reservation_id, r.state, r.shard_id, r.expires_at_ms
                );
                for i in r.items {
                    println!("  {} x{}", i.sku, i.quantity);
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// `cart reserve|confirm|release|get`.
pub async fn cart(client: &Client, cmd: CartCmd, json: bool) -> Result<(), Error> {
    match cmd {
        CartCmd::Reserve { items, ttl, id } => {
            let cart = match id {
                Some(id) => client.reserve_cart_with_id(&id, &items, ttl).await?,
                None => client.reserve_cart(&items, ttl).await?,
            };
            if json {
                print_json(&json!(cart));
            } else {
                println!(
                    "cart {} held in {} part(s), expires at {} ms",
                    cart.cart_id,
                    cart.parts.len(),
                    cart.expires_at_ms
                );
                for p in &cart.parts {
                    let items: Vec<String> = p
                        .items
                        .iter()
                        .map(|i| format!("{}:{}", i.sku, i.quantity))
                        .collect();
                    println!(
                        "  shard {} reservation {}: {}",
                        p.shard_id,
                        p.reservation_id,
                        items.join(" ")
                    );
                }
            }
        }
        CartCmd::Confirm { ref id } | CartCmd::Release { ref id } => {
            let confirm = matches!(cmd, CartCmd::Confirm { .. });
            let id = id.clone();
            let (cart, _) = client.find_cart(&id).await?;
            let results = if confirm {
                client.confirm_cart(&cart).await
            } else {
                client.release_cart(&cart).await
            };
            let mut first_error = None;
            let mut out = Vec::new();
            for (p, r) in cart.parts.iter().zip(results) {
                match r {
                    Ok(u) => out.push(
                        json!({"reservation_id": p.reservation_id, "state": u.reservation.state}),
                    ),
                    Err(e) => {
                        out.push(json!({"reservation_id": p.reservation_id, "error": e.reason(), "message": e.to_string()}));
                        first_error.get_or_insert(e);
                    }
                }
            }
            if json {
                print_json(&json!({"cart_id": id, "parts": out}));
            } else {
                for o in &out {
                    println!("  {}", o);
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
        }
        CartCmd::Get { id } => {
            let (_, parts) = client.find_cart(&id).await?;
            if json {
                print_json(&json!(parts));
            } else {
                for r in parts {
                    let items: Vec<String> = r
                        .items
                        .iter()
                        .map(|i| format!("{}:{}", i.sku, i.quantity))
                        .collect();
                    println!(
                        "{} {:?} (shard {}, expires at {} ms): {}",
                        r.reservation_id,
                        r.state,
                        r.shard_id,
                        r.expires_at_ms,
                        items.join(" ")
                    );
                }
            }
        }
    }
    Ok(())
}

/// `cluster map|leader|status`.
pub async fn cluster_info(client: &Client, cmd: Command, json: bool) -> Result<(), Error> {
    match cmd {
        Command::Cluster(ClusterCmd::Map) => {
            crate::elastic::print_cluster_map(client, json).await?
        }
        Command::Cluster(ClusterCmd::Leader { shard }) => {
            let status = client.cluster_status().await?;
            let leader = status
                .nodes
                .iter()
                .filter_map(|v| v.status.as_ref())
                .flat_map(|st| st.shards.iter())
                .find(|sh| sh.shard_id == shard && sh.role == "leader")
                .map(|sh| sh.leader_id)
                .ok_or_else(|| Error::Unavailable {
                    message: format!("shard {shard} has no leader right now"),
                })?;
            if json {
                print_json(&json!({"shard_id": shard, "leader_id": leader}));
            } else {
                println!("{leader}");
            }
        }
        Command::Cluster(ClusterCmd::Status) => {
            let status = client.cluster_status().await?;
            if json {
                print_json(&status_json(&status));
            } else {
                print_status(&status);
            }
        }
        _ => {}
    }
    Ok(())
}

/// What keeps the cluster from being ready (every node up, every replica knowing a
/// leader), first `NOT_READY_NAMED_MAX` named, then how many more: a 10,000-shard
/// start that never became ready was one replica asleep as a candidate.
fn not_ready(status: &pb::ClusterStatusReply) -> Vec<String> {
    const NOT_READY_NAMED_MAX: usize = 5;
    let mut all = Vec::new();
    for v in &status.nodes {
        let node = v.node.as_ref().map_or(0, |n| n.node_id);
        match v.status.as_ref() {
            Some(st) if v.reachable => {
                all.extend(st.shards.iter().filter(|sh| sh.leader_id == 0).map(|sh| {
                    format!(
                        "node {node} shard {}: no leader known ({}, term {})",
                        sh.shard_id, sh.role, sh.term
                    )
                }))
            }
            _ => all.push(format!("node {node} unreachable: {}", v.error)),
        }
    }
    let more = all.len().saturating_sub(NOT_READY_NAMED_MAX);
    all.truncate(NOT_READY_NAMED_MAX);
    if more > 0 {
        all.push(format!("{more} more"));
    }
    all
}

/// `cluster wait|transfer-leader|allow-rebuild`.
pub async fn cluster_ops(client: &Client, cmd: Command, json: bool) -> Result<(), Error> {
    match cmd {
        Command::Cluster(ClusterCmd::Wait { within }) => {
            let deadline = std::time::Instant::now() + within;
            loop {
                let missing = match client.cluster_status().await {
                    Ok(s) => not_ready(&s),
                    Err(e) => vec![format!("no cluster status: {e}")],
                };
                if missing.is_empty() {
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    return Err(Error::Unavailable {
                        message: format!(
                            "cluster not ready within {} s: {}",
                            within.as_secs(),
                            missing.join("; ")
                        ),
                    });
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            if json {
                print_json(&json!({"ready": true}));
            } else {
                println!("cluster ready: every node up, every shard has a leader");
            }
        }
        Command::Cluster(ClusterCmd::TransferLeader { shard, to }) => {
            let leader = client.transfer_leader(shard, to).await?;
            if json {
                print_json(&json!({"shard_id": shard, "leader_id": leader}));
            } else {
                println!("shard {shard} is led by node {leader}");
            }
        }
        Command::Cluster(ClusterCmd::AllowRebuild { node }) => {
            let shards = client.allow_rebuild(node).await?;
            if json {
                print_json(&json!({"node_id": node, "shard_ids": shards}));
            } else {
                println!("leaders of shards {shards:?} will rebuild node {node} from empty once");
            }
        }
        _ => {}
    }
    Ok(())
}

/// `rush`: concurrent decrements until sold out, with a conservation check.
pub async fn rush(
    client: &Client,
    sku: String,
    clients: usize,
    attempts: usize,
    json: bool,
) -> Result<(), Error> {
    let before = client
        .get_one(&sku, Consistency::Linearizable)
        .await?
        .ok_or_else(|| Error::SkuNotFound { sku: sku.clone() })?;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..clients.max(1))
        .map(|_| {
            let (client, sku, next) = (client.clone(), sku.clone(), next.clone());
            tokio::spawn(async move {
                let (mut sold, mut refused, mut other) = (0u64, 0u64, Vec::new());
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < attempts {
                    match client.decrement(&sku, 1).await {
                        Ok(_) => sold += 1,
                        Err(Error::InsufficientStock { .. }) => refused += 1,
                        Err(e) => other.push(e.to_string()),
                    }
                }
                (sold, refused, other)
            })
        })
        .collect();
    let (mut sold, mut refused, mut other) = (0u64, 0u64, Vec::new());
    for t in tasks {
        if let Ok((s, r, o)) = t.await {
            sold += s;
            refused += r;
            other.extend(o);
        }
    }
    let after = client
        .get_one(&sku, Consistency::Linearizable)
        .await?
        .ok_or_else(|| Error::SkuNotFound { sku: sku.clone() })?;
    // Every acknowledged sale took a unit; unknown outcomes may or may not have.
    let taken = before.on_hand.saturating_sub(after.on_hand);
    let ok = after.on_hand <= before.on_hand && taken >= sold && taken <= sold + other.len() as u64;
    if json {
        print_json(
            &json!({"sku": sku, "attempts": attempts, "sold": sold, "insufficient_stock": refused, "other_errors": other.len(),
            "available_before": before.available, "available_after": after.available, "conserved": ok, "elapsed_ms": started.elapsed().as_millis() as u64}),
        );
    } else {
        println!(
            "{attempts} concurrent decrements of {sku} ({} tasks): {sold} sold, {refused} refused (insufficient stock), {} other errors, in {} ms",
            clients,
            other.len(),
            started.elapsed().as_millis()
        );
        println!(
            "on hand before {} -> after {}: {} units left the shelf for {sold} acknowledged sales ({})",
            before.on_hand,
            after.on_hand,
            taken,
            if ok { "conserved" } else { "NOT CONSERVED" }
        );
        for e in other.iter().take(5) {
            println!("  error: {e}");
        }
    }
    if !ok {
        return Err(Error::Internal {
            message: "stock not conserved".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(node_id: u64, reachable: bool, shards: Vec<pb::ShardStatus>) -> pb::NodeView {
        pb::NodeView {
            node: Some(pb::NodeInfo {
                node_id,
                ..Default::default()
            }),
            reachable,
            error: if reachable { "" } else { "connection refused" }.into(),
            status: reachable.then(|| pb::NodeStatusReply {
                shards,
                ..Default::default()
            }),
        }
    }

    fn shard(shard_id: u64, leader_id: u64, role: &str) -> pb::ShardStatus {
        pb::ShardStatus {
            shard_id,
            leader_id,
            role: role.into(),
            term: 2,
            ..Default::default()
        }
    }

    #[test]
    fn a_cluster_not_ready_names_the_replicas_without_a_leader_and_the_nodes_not_reached() {
        let ready = pb::ClusterStatusReply {
            epoch: 1,
            nodes: vec![view(1, true, vec![shard(1, 2, "follower")])],
        };
        assert!(not_ready(&ready).is_empty());
        let stuck = pb::ClusterStatusReply {
            epoch: 1,
            nodes: vec![
                view(
                    1,
                    true,
                    vec![shard(1, 2, "follower"), shard(7, 0, "candidate")],
                ),
                view(3, false, vec![]),
            ],
        };
        assert_eq!(
            not_ready(&stuck),
            vec![
                "node 1 shard 7: no leader known (candidate, term 2)".to_string(),
                "node 3 unreachable: connection refused".to_string(),
            ]
        );
        let many = pb::ClusterStatusReply {
            epoch: 1,
            nodes: vec![view(
                1,
                true,
                (1..=8).map(|s| shard(s, 0, "follower")).collect(),
            )],
        };
        let named = not_ready(&many);
        assert_eq!(named.len(), 6, "five named, then a count: {named:?}");
        assert_eq!(named[5], "3 more");
    }
}
