//! `stockpile-jepsen`: runs real `stockpile-node` processes inside a private network
//! namespace, drives seeded workloads through the Rust client while a seeded nemesis
//! partitions (nftables), kills, pauses and skews nodes, records the history, and
//! checks it. Exit status: 0 every check passed, 1 an anomaly was found, 2 the run could
//! not be carried out.
//!
//! The binary re-executes itself inside a new network namespace (`unshare --net`, or
//! `unshare --user --map-root-user --net` when not root); the namespace, its nftables
//! rules and every node process die with that inner run.

mod checks;
mod cluster;
mod failover;
mod nemesis;
mod run;
mod slow_link;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "stockpile-jepsen",
    about = "Jepsen-style tests of Stockpile against real nodes"
)]
pub struct Args {
    /// Nodes in the cluster (3 to 5; the membership nemesis needs 4 or more: a node
    /// without a replica of the shard it moves).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Faults to inject: partition, kill, pause, clock, membership (comma-separated;
    /// "none" for none).
    #[arg(long, value_delimiter = ',', default_value = "partition,kill,pause")]
    pub nemesis: Vec<String>,
    /// Workloads: register, reservations, idempotency (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "register,reservations,idempotency"
    )]
    pub workload: Vec<String>,
    /// Seconds of workload under faults.
    #[arg(long, default_value_t = 30)]
    pub time: u64,
    /// Seed of the schedule and the workloads (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The planted bug the node binary runs with (needs a node built with the
    /// `planted-bugs` feature; scripts/jepsen.sh --bug does that).
    #[arg(long)]
    pub bug: Option<String>,
    /// The stockpile-node binary (default: next to this one).
    #[arg(long)]
    pub node_bin: Option<PathBuf>,
    /// Where run directories go.
    #[arg(long, default_value = "data/jepsen")]
    pub out: PathBuf,
    /// Run a scenario instead of workloads under a nemesis: "slow-link" (the largest
    /// legal entry over rate-limited links; the shard must keep committing), or
    /// "failover" (a measurement: leader kills under load, write unavailability).
    #[arg(long)]
    pub scenario: Option<String>,
    /// Kills of a shard leader in the failover scenario.
    #[arg(long, default_value_t = 20)]
    pub kills: u64,
    /// Search budget of the linearizability checker, in states per SKU.
    #[arg(long, default_value_t = 1_000_000)]
    pub budget: u64,
    /// Internal: already inside the network namespace.
    /// Run the nodes without TLS (for comparison; the default is mutual TLS with
    /// certificates made for the run, as shipped).
    #[arg(long)]
    pub plaintext: bool,
    #[arg(long, hide = true)]
    pub inside: bool,
    /// Internal: the run directory chosen by the outer process.
    #[arg(long, hide = true)]
    pub run_dir: Option<PathBuf>,
}

/// Exit status 2: the run itself could not be carried out.
pub fn fail_run(msg: &str) -> ExitCode {
    eprintln!("stockpile-jepsen: the run could not be carried out: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.inside {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("stockpile-jepsen: cannot start the runtime: {e}");
                return ExitCode::from(2);
            }
        };
        return match args.scenario.as_deref() {
            None => runtime.block_on(run::inside(args)),
            Some("slow-link") => runtime.block_on(slow_link::inside(args)),
            Some("failover") => runtime.block_on(failover::inside(args)),
            Some(other) => {
                eprintln!("stockpile-jepsen: unknown scenario {other:?} (slow-link, failover)");
                ExitCode::from(2)
            }
        };
    }
    outside(args)
}

/// Creates the network namespace by re-executing this binary inside `unshare`.
fn outside(mut args: Args) -> ExitCode {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000_000)
            .unwrap_or(1)
    });
    args.seed = Some(seed);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let run_dir = args.out.join(format!("{stamp}-seed{seed}"));
    if let Err(e) = std::fs::create_dir_all(&run_dir) {
        eprintln!("stockpile-jepsen: cannot create {}: {e}", run_dir.display());
        return ExitCode::from(2);
    }
    let run_dir = std::fs::canonicalize(&run_dir).unwrap_or(run_dir);
    let Ok(me) = std::env::current_exe() else {
        eprintln!("stockpile-jepsen: cannot find its own executable");
        return ExitCode::from(2);
    };
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let mut cmd = std::process::Command::new("unshare");
    if root {
        cmd.arg("--net");
    } else {
        cmd.args(["--user", "--map-root-user", "--net"]);
    }
    cmd.arg("--").arg(&me);
    cmd.arg("--nodes").arg(args.nodes.to_string());
    cmd.arg("--nemesis").arg(args.nemesis.join(","));
    cmd.arg("--workload").arg(args.workload.join(","));
    cmd.arg("--time").arg(args.time.to_string());
    cmd.arg("--seed").arg(seed.to_string());
    cmd.arg("--budget").arg(args.budget.to_string());
    cmd.arg("--kills").arg(args.kills.to_string());
    if args.plaintext {
        cmd.arg("--plaintext");
    }
    if let Some(b) = &args.bug {
        cmd.arg("--bug").arg(b);
    }
    if let Some(s) = &args.scenario {
        cmd.arg("--scenario").arg(s);
    }
    if let Some(n) = &args.node_bin {
        cmd.arg("--node-bin").arg(n);
    }
    cmd.arg("--inside").arg("--run-dir").arg(&run_dir);
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stockpile-jepsen: cannot run unshare (util-linux): {e}");
            return ExitCode::from(2);
        }
    };
    // The namespace is gone with the inner run; make sure no node outlived it.
    cluster::kill_leftovers(&run_dir);
    match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(1) => ExitCode::from(1),
        _ => ExitCode::from(2),
    }
}
