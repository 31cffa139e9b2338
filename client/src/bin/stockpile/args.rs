//! The CLI's arguments (clap): global flags, commands and their parsers.

use std::path::PathBuf;
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
    #[command(flatten)]
    pub credentials: Credentials,
    #[command(subcommand)]
    pub command: Command,
}

/// How the CLI proves who it is to a cluster running TLS (docs/SECURITY.md).
#[derive(Args, Debug, Clone)]
pub struct Credentials {
    /// The cluster's CA certificate (PEM): turns TLS on.
    #[arg(long, global = true, env = "STOCKPILE_CA")]
    pub ca: Option<PathBuf>,
    /// This client's certificate (PEM), with --key.
    #[arg(long, global = true, env = "STOCKPILE_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// This client's private key (PEM), with --cert.
    #[arg(long, global = true, env = "STOCKPILE_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// A bearer token instead of a client certificate (`stockpile token create`).
    #[arg(long, global = true, env = "STOCKPILE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
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
    /// Nodes: list, drain, remove (docs/OPERATIONS.md).
    #[command(subcommand)]
    Node(NodeCmd),
    /// Shards: move a replica (docs/OPERATIONS.md).
    #[command(subcommand)]
    Shard(ShardCmd),
    /// Certificates: a cluster's CA, node and client certificates.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Bearer tokens for clients without certificates.
    #[command(subcommand)]
    Token(TokenCmd),
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
        /// Only if the record is still at this version (0: only if the SKU is new);
        /// else VERSION_MISMATCH and nothing changes.
        #[arg(long)]
        if_version: Option<u64>,
        #[command(flatten)]
        rid: RequestIdArg,
    },
    /// Add a signed delta to on-hand stock.
    Adjust {
        sku: String,
        #[arg(allow_negative_numbers = true)]
        delta: i64,
        /// Only if the record is still at this version; else VERSION_MISMATCH.
        #[arg(long)]
        if_version: Option<u64>,
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

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Every node: up or not, replicas and leaderships held.
    List,
    /// Take every replica and leadership off NODE, one move at a time, while it
    /// serves; afterwards stopping it costs no availability.
    Drain {
        node: u64,
        /// Print the moves without making them.
        #[arg(long)]
        dry_run: bool,
    },
    /// NODE is gone for good: recreate its replicas on the other nodes from the
    /// survivors (it is not asked to drop anything).
    Remove {
        node: u64,
        /// Confirms that the node is dead (its data will not come back).
        #[arg(long, required = true)]
        dead: bool,
        /// Print the moves without making them.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ShardCmd {
    /// Move SHARD's replica from one node to another (a learner catches up, then
    /// replaces the old replica; the same command resumes an interrupted move).
    Move {
        shard: u64,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
    },
    /// Split SHARD in two at SKU `--at` (default: its middle SKU): the new shard takes
    /// `[at, end)` with the same replicas; sales go on, clients follow.
    Split {
        shard: u64,
        #[arg(long)]
        at: Option<String>,
    },
    /// Merge SHARD's right neighbour (`--right`, default: the shard after it in the
    /// map) into SHARD, which grows to its end; both must have their replicas on the
    /// same nodes. The right shard is frozen for a moment; clients follow.
    Merge {
        shard: u64,
        #[arg(long)]
        right: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Make a CA, a certificate for every node of the cluster file, an `admin` client
    /// certificate, an access file granting it the admin role, and `env.sh` setting
    /// the CLI's credentials.
    Init {
        /// Directory for the files (refuses one that holds a CA already).
        dir: PathBuf,
        /// The cluster file whose nodes get certificates.
        #[arg(long)]
        config: PathBuf,
        /// Validity of node and client certificates, in days.
        #[arg(long, default_value_t = stockpile_client::certs::LEAF_VALIDITY_DAYS_DEFAULT)]
        days: i64,
    },
    /// Issue (or re-issue, to rotate) node NODE's certificate from the CA in DIR.
    Node {
        dir: PathBuf,
        node: u64,
        /// Hosts or IPs the node is dialled at, besides 127.0.0.1 and localhost.
        #[arg(long = "host")]
        hosts: Vec<String>,
        #[arg(long, default_value_t = stockpile_client::certs::LEAF_VALIDITY_DAYS_DEFAULT)]
        days: i64,
    },
    /// Issue a client certificate for NAME from the CA in DIR and grant it a role in
    /// the access file (nodes apply it on SIGHUP).
    Client {
        dir: PathBuf,
        name: String,
        #[command(flatten)]
        grant: GrantArgs,
        #[arg(long, default_value_t = stockpile_client::certs::LEAF_VALIDITY_DAYS_DEFAULT)]
        days: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Make a bearer token for NAME, record its hash in the access file, print it once.
    Create {
        name: String,
        #[command(flatten)]
        grant: GrantArgs,
        /// How long the token is valid (e.g. 1h, 30m).
        #[arg(long, value_parser = parse_duration)]
        ttl: Duration,
    },
}

/// A role and its scope, written to an access file.
#[derive(Args, Debug, Clone)]
pub struct GrantArgs {
    /// The access file the nodes read (`[security] access`).
    #[arg(long)]
    pub access: PathBuf,
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// Limit to SKUs starting with PREFIX (repeatable; default: every SKU).
    #[arg(long = "prefix")]
    pub prefixes: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum RoleArg {
    /// Reads and status.
    Reader,
    /// Plus every mutation.
    Writer,
    /// Plus operator calls (leadership, repair).
    Admin,
}

impl GrantArgs {
    pub fn grant(&self, name: &str) -> stockpile_client::certs::Grant {
        let role = match self.role {
            RoleArg::Reader => "reader",
            RoleArg::Writer => "writer",
            RoleArg::Admin => "admin",
        };
        stockpile_client::certs::Grant {
            name: name.to_string(),
            role: role.to_string(),
            prefixes: self.prefixes.clone(),
        }
    }
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
