//! The CLI's arguments (clap): global flags, commands and their parsers.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use stockpile_client::{Item, RequestId, new_request_id, parse_request_id};

use crate::bench;

#[derive(Parser, Debug)]
#[command(
    name = "stockpile",
    version,
    about = "Command-line client of the Stockpile inventory store"
)]
pub struct Cli {
    /// Node addresses to start from (default: $STOCKPILE_ENDPOINTS, then the local 3-node cluster).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        env = "STOCKPILE_ENDPOINTS"
    )]
    pub endpoints: Vec<String>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// This client's region: its nodes are tried first.
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// Send every mutation as its own RPC instead of coalescing concurrent ones.
    #[arg(long, global = true)]
    pub no_coalescing: bool,
    /// Deadline of each operation, retries included (e.g. 10s, 500ms).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
pub struct RequestIdArg {
    /// Request id (32 hex digits) to retry an earlier mutation; default: a new one.
    #[arg(long, value_parser = parse_rid)]
    request_id: Option<RequestId>,
}

impl RequestIdArg {
    pub fn get(&self) -> RequestId {
        self.request_id.unwrap_or_else(new_request_id)
    }
}

#[derive(Subcommand, Debug)]
pub enum StockCmd {
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
pub enum ReservationCmd {
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
pub enum CartCmd {
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
pub enum ClusterCmd {
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

pub fn parse_duration(s: &str) -> Result<Duration, String> {
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

pub fn parse_item(s: &str) -> Result<Item, String> {
    let (sku, qty) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not SKU:QUANTITY"))?;
    let qty: u64 = qty
        .parse()
        .map_err(|_| format!("{s:?}: quantity {qty:?} is not a whole number"))?;
    Ok(Item::new(sku, qty))
}

pub fn parse_rid(s: &str) -> Result<RequestId, String> {
    parse_request_id(s).ok_or_else(|| format!("{s:?} is not 32 hex digits"))
}
