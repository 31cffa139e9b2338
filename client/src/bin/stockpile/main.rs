//! `stockpile`: the command-line client of Stockpile, on the client library.
//!
//! Exit status: 0 success; 1 refused by the store (insufficient stock, not found,
//! ...); 2 bad usage or invalid input; 3 unavailable or timed out (the outcome of a
//! mutation may be unknown: the error names its request id, and `--request-id`
//! retries it safely).

mod bench;
mod svg;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use stockpile_client::{
    Client, Consistency, Error, Item, LOCAL_CLUSTER, RequestId, new_request_id, parse_request_id,
    proto as pb, request_id_hex,
};

#[derive(Parser, Debug)]
#[command(
    name = "stockpile",
    version,
    about = "Command-line client of the Stockpile inventory store"
)]
struct Cli {
    /// Node addresses to start from (default: $STOCKPILE_ENDPOINTS, then the local 3-node cluster).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        env = "STOCKPILE_ENDPOINTS"
    )]
    endpoints: Vec<String>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// This client's region: its nodes are tried first.
    #[arg(long, global = true)]
    region: Option<String>,
    /// Send every mutation as its own RPC instead of coalescing concurrent ones.
    #[arg(long, global = true)]
    no_coalescing: bool,
    /// Deadline of each operation, retries included (e.g. 10s, 500ms).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Stock records: set, adjust, decrement, get, list.
    #[command(subcommand)]
    Stock(StockCmd),
    /// Hold stock for a while: `reserve sku-1:2 sku-2:1 --ttl 30s`.
    Reserve {
        /// Items as SKU:QUANTITY.
        #[arg(required = true, value_parser = parse_item)]
        items: Vec<Item>,
        /// How long the hold lasts (e.g. 30s, 5m).
        #[arg(long, value_parser = parse_duration)]
        ttl: Duration,
        /// Reservation id (default: chosen by the store).
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        rid: RequestIdArg,
    },
    /// Turn a reservation into a sale.
    Confirm {
        id: String,
        /// Any SKU of the reservation (saves a lookup).
        #[arg(long)]
        sku: Option<String>,
        #[command(flatten)]
        rid: RequestIdArg,
    },
    /// Give a reservation's stock back.
    Release {
        id: String,
        #[arg(long)]
        sku: Option<String>,
        #[command(flatten)]
        rid: RequestIdArg,
    },
    /// Reservations: get.
    #[command(subcommand)]
    Reservation(ReservationCmd),
    /// Carts: reservations across shards (one per shard; not atomic, see the docs).
    #[command(subcommand)]
    Cart(CartCmd),
    /// The cluster: status, map, leaders, repair.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Drive a workload and report ops/s, latency percentiles and errors
    /// (docs/PERFORMANCE.md).
    Bench(bench::BenchArgs),
    /// Many concurrent decrements of one SKU until it runs out: shows that exactly the
    /// stock is sold, never more.
    Rush {
        sku: String,
        /// Concurrent tasks.
        #[arg(long, default_value_t = 200)]
        clients: usize,
        /// Attempts in all (each decrements 1).
        #[arg(long, default_value_t = 200)]
        attempts: usize,
    },
}

#[derive(Args, Debug, Clone)]
struct RequestIdArg {
    /// Request id (32 hex digits) to retry an earlier mutation; default: a new one.
    #[arg(long, value_parser = parse_rid)]
    request_id: Option<RequestId>,
}

impl RequestIdArg {
    fn get(&self) -> RequestId {
        self.request_id.unwrap_or_else(new_request_id)
    }
}

#[derive(Subcommand, Debug)]
enum StockCmd {
    /// Set on-hand stock (creates the SKU).
    Set {
        sku: String,
        on_hand: u64,
        #[command(flatten)]
        rid: RequestIdArg,
    },
    /// Add a signed delta to on-hand stock.
    Adjust {
        sku: String,
        #[arg(allow_negative_numbers = true)]
        delta: i64,
        #[command(flatten)]
        rid: RequestIdArg,
    },
    /// Take QTY units if available (never below zero).
    Decrement {
        sku: String,
        qty: u64,
        #[command(flatten)]
        rid: RequestIdArg,
    },
    /// Read stock records.
    Get {
        #[arg(required = true)]
        skus: Vec<String>,
        /// Read from the nearest replica, possibly behind.
        #[arg(long)]
        stale: bool,
        /// Read what this node's replicas hold (a stale read answered by that node).
        #[arg(long, conflicts_with = "stale")]
        from_node: Option<u64>,
    },
    /// List stock records in SKU order.
    List {
        #[arg(long)]
        start_after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        stale: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ReservationCmd {
    /// Show a reservation's items, state and expiry.
    Get {
        id: String,
        #[arg(long)]
        sku: Option<String>,
        #[arg(long)]
        stale: bool,
    },
}

#[derive(Subcommand, Debug)]
enum CartCmd {
    /// Hold items that may span shards; releases what it held if any shard refuses.
    Reserve {
        #[arg(required = true, value_parser = parse_item)]
        items: Vec<Item>,
        #[arg(long, value_parser = parse_duration)]
        ttl: Duration,
        /// Cart id (default: generated).
        #[arg(long)]
        id: Option<String>,
    },
    /// Confirm every part of a cart.
    Confirm { id: String },
    /// Release every part of a cart.
    Release { id: String },
    /// Show a cart's parts.
    Get { id: String },
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Nodes (region, zone, up or not) and shards (leader, term, indexes, lag).
    Status,
    /// The shard map.
    Map,
    /// Wait until every node answers and every shard has a leader.
    Wait {
        /// How long to wait.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        within: Duration,
    },
    /// Print the node id leading a shard.
    Leader { shard: u64 },
    /// Move a shard's leadership to another replica.
    TransferLeader { shard: u64, to: u64 },
    /// Repair: let the leaders rebuild NODE from empty once (after its data was wiped).
    AllowRebuild { node: u64 },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 500ms, 5m, 1h"))?;
    let ms = match unit {
        "ms" => n,
        "s" | "" => n.saturating_mul(1_000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Ok(Duration::from_millis(ms))
}

fn parse_item(s: &str) -> Result<Item, String> {
    let (sku, qty) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not SKU:QUANTITY"))?;
    let qty: u64 = qty
        .parse()
        .map_err(|_| format!("{s:?}: quantity {qty:?} is not a whole number"))?;
    Ok(Item::new(sku, qty))
}

fn parse_rid(s: &str) -> Result<RequestId, String> {
    parse_request_id(s).ok_or_else(|| format!("{s:?} is not 32 hex digits"))
}

fn exit_code(e: &Error) -> u8 {
    match e {
        e if e.is_refusal() => 1,
        Error::NodeNotFound { .. } | Error::ShardNotFound { .. } => 1,
        Error::InvalidArgument { .. }
        | Error::RequestIdReused { .. }
        | Error::CrossShard { .. }
        | Error::RequestTooLarge { .. }
        | Error::Config { .. } => 2,
        _ => 3,
    }
}

fn print_json(v: &serde_json::Value) {
    println!("{v}");
}

fn consistency(stale: bool) -> Consistency {
    if stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    let endpoints = if cli.endpoints.is_empty() {
        LOCAL_CLUSTER.iter().map(|s| s.to_string()).collect()
    } else {
        cli.endpoints.clone()
    };
    let mut builder = Client::builder()
        .seeds(endpoints.clone())
        .request_timeout(cli.timeout);
    if let Some(r) = &cli.region {
        builder = builder.region(r.clone());
    }
    if cli.no_coalescing {
        builder = builder.no_coalescing();
    }
    if let Command::Bench(args) = cli.command {
        let ok = bench::run(endpoints, cli.region.clone(), args, cli.json).await?;
        return if ok {
            Ok(())
        } else {
            Err(Error::Internal {
                message: "the drain check failed".into(),
            })
        };
    }
    let client = builder.build().await?;
    let json = cli.json;
    match cli.command {
        Command::Stock(cmd) => match cmd {
            StockCmd::Set { sku, on_hand, rid } => show_update(
                json,
                &client.set_stock_with_id(rid.get(), &sku, on_hand).await?,
            ),
            StockCmd::Adjust { sku, delta, rid } => show_update(
                json,
                &client.adjust_stock_with_id(rid.get(), &sku, delta).await?,
            ),
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
        },
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
        Command::Cart(cmd) => match cmd {
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
                        Ok(u) => out.push(json!({"reservation_id": p.reservation_id, "state": u.reservation.state})),
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
        },
        // Handled above, before the client is built.
        Command::Bench(_) => {}
        Command::Cluster(ClusterCmd::Map) => {
            let map = client.shard_map();
            if json {
                print_json(&json!(map));
            } else {
                println!("epoch {}", map.epoch);
                for n in map.nodes.values() {
                    println!(
                        "node {:<3} {:<22} region {:<10} zone {}",
                        n.node_id, n.addr, n.region, n.zone
                    );
                }
                for s in &map.shards {
                    println!(
                        "shard {:<3} [{:?}, {:?}) replicas {:?}",
                        s.shard_id, s.start, s.end, s.replicas
                    );
                }
            }
        }
        Command::Cluster(ClusterCmd::Wait { within }) => {
            let deadline = std::time::Instant::now() + within;
            loop {
                let ready = match client.cluster_status().await {
                    Ok(s) => s.nodes.iter().all(|v| {
                        v.reachable
                            && v.status
                                .as_ref()
                                .is_some_and(|st| st.shards.iter().all(|sh| sh.leader_id != 0))
                    }),
                    Err(_) => false,
                };
                if ready {
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    return Err(Error::Unavailable {
                        message: format!("cluster not ready within {} s", within.as_secs()),
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
        Command::Rush {
            sku,
            clients,
            attempts,
        } => {
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
            let ok = after.on_hand <= before.on_hand
                && taken >= sold
                && taken <= sold + other.len() as u64;
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
        }
        Command::Cluster(ClusterCmd::Status) => {
            let status = client.cluster_status().await?;
            if json {
                print_json(&status_json(&status));
            } else {
                print_status(&status);
            }
        }
    }
    Ok(())
}

fn show_update(json: bool, u: &stockpile_client::StockUpdate) {
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

fn show_reservation_update(json: bool, u: &stockpile_client::ReservationUpdate) {
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

fn status_json(s: &pb::ClusterStatusReply) -> serde_json::Value {
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
                                "purged_index": sh.purged_index, "log_entries": sh.log_entries,
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
    json!({ "epoch": s.epoch, "nodes": nodes })
}

fn print_status(s: &pb::ClusterStatusReply) {
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
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                let mut v = json!({ "error": e.reason(), "message": e.to_string(), "definite": e.is_definite() });
                if let Error::OutcomeUnknown { request_id, .. } = &e {
                    v["request_id"] = json!(request_id_hex(request_id));
                }
                print_json(&v);
            }
            eprintln!("stockpile: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}
