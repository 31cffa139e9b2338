//! `stockpile-node --config FILE --node-id N [--data-dir DIR]`: runs one node until
//! SIGTERM or SIGINT, then stops cleanly (exit 0).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use stockpile_node::clock::Clock;
use stockpile_node::config::ClusterConfig;
use stockpile_node::node::{Node, StartOptions};
use stockpile_node::server;

/// jemalloc instead of glibc's malloc: under `uniform --batch 100` a loaded leader
/// spent ~17% of its samples in glibc's malloc and free (`malloc_consolidate`,
/// `unlink_chunk`: bins re-sorted under a churn of short-lived buffers), see
/// docs/PERFORMANCE.md. jemalloc's thread caches and size classes serve that churn
/// cheaply. It also started, served and idled 10,000 shards with less CPU and RSS
/// than glibc, where mimalloc had stalled their start (both measured in
/// docs/PERFORMANCE.md, "What was changed", 11, and "Tried and not kept").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(
    name = "stockpile-node",
    version,
    about = "A Stockpile node: serves the shards the cluster config places on it"
)]
struct Args {
    /// The cluster config (TOML), shared by every node.
    #[arg(long)]
    config: PathBuf,
    /// This node's id in the config.
    #[arg(long)]
    node_id: u64,
    /// Overrides the config's data directory for this node.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Join a running cluster: register this node (its id, address, region and zone
    /// from its config) in the cluster map through these nodes (host:port, comma
    /// separated; the config's other nodes when none are given). On a first boot
    /// (empty data directory) the node starts with no replica: they come by moves
    /// (`stockpile shard move`, `node drain`, `node remove --dead`). The other nodes'
    /// configs need not list this node.
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "ADDR,...")]
    join: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value = "human")]
    log_format: LogFormat,
    /// Log filter (overrides RUST_LOG), e.g. "info" or "stockpile_node=debug,openraft=warn".
    #[arg(long)]
    log: Option<String>,
    /// Serve plaintext on a non-loopback address (without `security.tls`). Anyone who
    /// can reach the port can then do anything: the node logs it loudly.
    #[arg(long)]
    insecure: bool,
    /// Fault injection for tests only: shifts this node's wall clock by this many ms
    /// (may be negative). Logged loudly when set.
    #[arg(long, hide = true, allow_hyphen_values = true, default_value_t = 0)]
    clock_skew_ms: i64,
    /// Test-only: a replica move pauses this long after each recorded step (so a
    /// test can strike in the middle of one).
    #[arg(long, hide = true, default_value_t = 0)]
    move_step_pause_ms: u64,
    /// Threads of the node's async runtime (default: one per core, or
    /// TOKIO_WORKER_THREADS). Nodes that share one machine should split its cores:
    /// three local nodes on two cores, each with two threads, spent 7% more CPU per
    /// unbatched decrement (waking and switching threads) and one client waited 10%
    /// longer than with one thread each (docs/PERFORMANCE.md, "What was changed", 14).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Human,
    Json,
}

fn init_logging(args: &Args) {
    let filter = args
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info,openraft=error".to_string());
    let filter = tracing_subscriber::EnvFilter::new(filter);
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match args.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Refuses plaintext on a non-loopback address unless `--insecure` says so.
fn check_exposure(config: &ClusterConfig, addr: &str, insecure: bool) -> anyhow::Result<()> {
    if config.security.tls {
        return Ok(());
    }
    let loopback = addr
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(false);
    if loopback {
        return Ok(());
    }
    anyhow::ensure!(
        insecure,
        "refusing to serve plaintext on {addr}, which is not a loopback address: turn on \
         [security] tls (docs/SECURITY.md) or start with --insecure"
    );
    tracing::warn!(
        addr,
        "INSECURE: serving plaintext without authentication on a non-loopback address (--insecure)"
    );
    Ok(())
}

/// SIGHUP reloads certificates, the CA bundle and the access file.
fn spawn_reload_on_sighup(node: std::sync::Arc<Node>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: certificates reload only on restart");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match node.reload_security() {
                Ok(()) => {
                    tracing::info!(target: "stockpile::audit", "SIGHUP: certificates and access file reloaded")
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: reload failed; the old certificates stay in use")
                }
            }
        }
    });
}

/// Registers a joining node in the cluster map (in the background: the server must
/// answer its peers meanwhile). A refusal (its id was removed for good) stops the node.
fn spawn_registration(node: std::sync::Arc<Node>, via: &str) {
    let via: Vec<String> = via
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    tokio::spawn(async move {
        match node.register(&via).await {
            Ok(()) => tracing::info!(node_id = node.id, "registered in the cluster map"),
            Err(problem) => {
                tracing::error!(node_id = node.id, %problem, "this node cannot join the cluster");
                std::process::exit(2);
            }
        }
    });
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = int.recv() => tracing::info!("SIGINT: stopping"),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = args.worker_threads {
        runtime.worker_threads(usize::from(n));
    }
    let runtime = runtime.build().context("cannot start the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    init_logging(&args);
    let config = ClusterConfig::load(&args.config)?;
    let me = config
        .node(args.node_id)
        .with_context(|| {
            format!(
                "{}: node {} is not in [[nodes]]",
                args.config.display(),
                args.node_id
            )
        })?
        .clone();
    check_exposure(&config, &me.addr, args.insecure)?;
    let listener = server::bind(&me.addr).await?;
    if let Some(addr) = &me.metrics_addr {
        stockpile_node::telemetry::install_exporter(addr)?;
    }
    if args.clock_skew_ms != 0 {
        tracing::warn!(
            skew_ms = args.clock_skew_ms,
            "TEST ONLY: this node's clock is skewed (--clock-skew-ms)"
        );
    }
    let options = StartOptions {
        data_dir: args.data_dir.clone(),
        clock: Clock::skewed(args.clock_skew_ms),
        join: args.join.is_some(),
        move_step_pause_ms: args.move_step_pause_ms,
    };
    let node = Node::start(config, args.node_id, options).await?;
    node.spawn_meta_duties();
    node.spawn_replica_gc();
    node.spawn_autosplit();
    stockpile_node::telemetry::spawn_publisher(node.clone(), node.shutdown.subscribe());
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let (stopping_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    server::spawn_health(node.clone(), health_reporter, stopping_tx.subscribe());
    let shard_ids: Vec<u64> = node.shards().iter().map(|s| s.id().0).collect();
    tracing::info!(node_id = node.id, addr = %me.addr, shards = ?shard_ids, data_dir = %node.data_dir.display(), "node started");
    spawn_reload_on_sighup(node.clone());
    if let Some(via) = &args.join {
        spawn_registration(node.clone(), via);
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(
        node.clone(),
        listener,
        health_service,
        async {
            let _ = stop_rx.await;
        },
    ));
    shutdown_signal().await;
    // Graceful stop: report NOT_SERVING, hand shard leadership to other replicas,
    // stop accepting and let in-flight requests finish (within the grace period),
    // then stop the Raft groups and sync the WAL.
    let _ = stopping_tx.send(());
    let grace = std::time::Duration::from_millis(node.cluster.server.shutdown_grace_ms);
    let moved = node.hand_over_leadership(grace / 2).await;
    tracing::info!(shards = ?moved, "handed over leadership");
    let _ = stop_tx.send(());
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(Ok(()))) => tracing::info!("server drained"),
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
        Err(_) => tracing::warn!("in-flight requests did not finish within the grace period"),
    }
    node.stop().await;
    tracing::info!("stopped");
    Ok(())
}
