//! One run, inside the network namespace: start the cluster, set up stock, run the
//! workloads under the nemesis, heal, read the final state; then `checks` checks
//! convergence and the history and writes the report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use stockpile_client::{Client, Consistency};
use stockpile_jepsen::history::Kind;
use stockpile_jepsen::recorder::{Completion, History, Invocation};
use tokio::sync::Mutex as AsyncMutex;

use crate::cluster::{self, Cluster, Net, wait_ready};
use crate::nemesis::Nemesis;
use crate::workload::{self, IDEMPOTENCY_SKUS, INITIAL_STOCK, REGISTER_SKUS, RESERVATION_SKUS};
use crate::{Args, checks, fail_run};

const NEMESES: [&str; 7] = [
    "partition",
    "kill",
    "pause",
    "clock",
    "membership",
    "split",
    "merge",
];
const WORKLOADS: [&str; 3] = ["register", "reservations", "idempotency"];

/// What a run is, decided before anything starts.
struct Plan {
    dir: PathBuf,
    seed: u64,
    kinds: Vec<String>,
    node_bin: PathBuf,
    /// How to repeat the run.
    command: String,
}

fn plan(args: &Args) -> Result<Plan, String> {
    let dir = args.run_dir.clone().ok_or("no run directory")?;
    let seed = args.seed.unwrap_or(1);
    let kinds: Vec<String> = args
        .nemesis
        .iter()
        .filter(|k| k.as_str() != "none" && !k.is_empty())
        .cloned()
        .collect();
    if let Some(k) = kinds.iter().find(|k| !NEMESES.contains(&k.as_str())) {
        return Err(format!("unknown nemesis {k:?} ({})", NEMESES.join(", ")));
    }
    if let Some(w) = args
        .workload
        .iter()
        .find(|w| !WORKLOADS.contains(&w.as_str()))
    {
        return Err(format!("unknown workload {w:?} ({})", WORKLOADS.join(", ")));
    }
    let name = if args.bug.is_some() {
        "stockpile-node-planted"
    } else {
        "stockpile-node"
    };
    let node_bin = args.node_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .map(|p| p.with_file_name(name))
            .unwrap_or_else(|_| name.into())
    });
    if !node_bin.exists() {
        return Err(format!(
            "node binary {} not found (build it first; scripts/jepsen.sh does)",
            node_bin.display()
        ));
    }
    let nemeses = if kinds.is_empty() {
        "none".to_string()
    } else {
        kinds.join(",")
    };
    let bug = args
        .bug
        .as_ref()
        .map(|b| format!(" --bug {b}"))
        .unwrap_or_default();
    let command = format!(
        "scripts/jepsen.sh --nodes {} --nemesis {nemeses} --workload {} --time {} --seed {seed}{bug}{}",
        args.nodes,
        args.workload.join(","),
        args.time,
        if args.plaintext { " --plaintext" } else { "" },
    );
    Ok(Plan {
        dir,
        seed,
        kinds,
        node_bin,
        command,
    })
}

pub async fn inside(args: Args) -> ExitCode {
    let plan = match plan(&args) {
        Ok(p) => p,
        Err(e) => return fail_run(&e),
    };
    let net = match Net::init() {
        Ok(n) => n,
        Err(e) => return fail_run(&format!("network namespace setup: {e}")),
    };
    let cluster = match start_cluster(&args, &plan).await {
        Ok(c) => c,
        Err(e) => return fail_run(&e),
    };
    let admin = match wait_ready(Duration::from_secs(60)).await {
        Ok(c) => c,
        Err(e) => return fail_run(&e),
    };
    println!("run {}: {}", plan.dir.display(), plan.command);
    let history = Arc::new(History::new());
    let skus = skus_of(&args.workload);
    if let Err(e) = stock_up(&admin, &history, &skus).await {
        return fail_run(&e);
    }
    let nemesis = match under_faults(&args, &plan, cluster.clone(), net, &admin, &history).await {
        Ok(n) => n,
        Err(e) => return fail_run(&e),
    };
    let client = match wait_ready(Duration::from_secs(60)).await {
        Ok(c) => c,
        Err(e) => return fail_run(&format!("after healing: {e}")),
    };
    // Let every reservation reach its expiry, then read the final state (process 0).
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let final_on_hand = final_reads(&client, &history, &skus).await;
    let mut cluster_checks = checks::cluster_checks(
        &client,
        &cluster::members(),
        &skus,
        &final_on_hand,
        &history,
        &nemesis.reshapes,
    )
    .await;
    cluster_checks.push(checks::drained_hold_nothing(&nemesis.drained));
    cluster.lock().await.stop_all();
    let records = history.records();
    checks::write_history(&plan.dir, &records, &nemesis.schedule, plan.seed);
    let slack_ns = if plan.kinds.iter().any(|k| k == "clock") {
        1_200_000_000
    } else {
        150_000_000
    };
    checks::check_and_report(
        &plan.dir,
        &records,
        &final_on_hand,
        cluster_checks,
        &checks::RunInfo {
            seed: plan.seed,
            command: plan.command,
            budget: args.budget,
            expiry_slack_ns: slack_ns,
        },
    )
}

async fn start_cluster(args: &Args, plan: &Plan) -> Result<Arc<AsyncMutex<Cluster>>, String> {
    let config = cluster::write_config(&plan.dir, args.nodes, args.plaintext)
        .map_err(|e| format!("config: {e}"))?;
    let mut c = Cluster::new(
        plan.dir.clone(),
        config,
        args.nodes,
        plan.node_bin.clone(),
        args.bug.clone(),
    );
    for id in c.ids() {
        c.start(id)
            .map_err(|e| format!("starting node {id}: {e}"))?;
    }
    Ok(Arc::new(AsyncMutex::new(c)))
}

fn skus_of(workloads: &[String]) -> Vec<&'static str> {
    let mut skus: Vec<&'static str> = Vec::new();
    for w in workloads {
        skus.extend(match w.as_str() {
            "register" => &REGISTER_SKUS[..],
            "reservations" => &RESERVATION_SKUS[..],
            _ => &IDEMPOTENCY_SKUS[..],
        });
    }
    skus
}

/// Sets up every SKU's stock, recorded as process 0.
async fn stock_up(admin: &Client, history: &History, skus: &[&str]) -> Result<(), String> {
    for sku in skus {
        let rid = stockpile_client::new_request_id();
        let initial = if RESERVATION_SKUS.contains(sku) {
            4 * INITIAL_STOCK
        } else {
            INITIAL_STOCK
        };
        let h = history.invoke(0, Invocation::set(sku, initial, &rid));
        let u = admin
            .set_stock_with_id(rid, sku, initial)
            .await
            .map_err(|e| format!("setting up {sku}: {e}"))?;
        let done = Completion::ok_stock(
            true,
            u.stock.on_hand,
            u.stock.reserved,
            Some(u.applied.node_id),
        );
        history.complete(h, 0, done);
    }
    Ok(())
}

/// The workloads under the nemesis for `args.time` seconds; then every node up again
/// and healed, and a few healthy seconds of workload. Returns the nemesis (its
/// schedule).
async fn under_faults(
    args: &Args,
    plan: &Plan,
    cluster: Arc<AsyncMutex<Cluster>>,
    net: Net,
    admin: &Client,
    history: &Arc<History>,
) -> Result<Nemesis, String> {
    let stop_workers = Arc::new(AtomicBool::new(false));
    let stop_nemesis = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut index = 1u64;
    for w in &args.workload {
        let (kind, count): (&'static str, u64) = match w.as_str() {
            "register" => ("register", 8),
            "reservations" => ("reservations", 4),
            _ => ("idempotency", 4),
        };
        for _ in 0..count {
            tasks.push(tokio::spawn(workload::worker(
                kind,
                index,
                plan.seed,
                history.clone(),
                stop_workers.clone(),
            )));
            index += 1;
        }
    }
    let mut nemesis = Nemesis::new(
        cluster.clone(),
        net,
        plan.kinds.clone(),
        plan.seed,
        history.clone(),
    );
    nemesis.client = Some(admin.clone());
    let nemesis_task = tokio::spawn(nemesis.run(stop_nemesis.clone()));
    tokio::time::sleep(Duration::from_secs(args.time)).await;
    stop_nemesis.store(true, Ordering::Relaxed);
    let nemesis = nemesis_task
        .await
        .map_err(|e| format!("nemesis task: {e}"))?;
    {
        let mut c = cluster.lock().await;
        for id in c.ids() {
            if !c.running().contains(&id) {
                let _ = c.start(id);
            }
            c.resume(id);
        }
    }
    let _ = nemesis.net.heal();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_workers.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Ok(nemesis)
}

/// Reads every SKU and every reservation linearizably (process 0); returns the final
/// on-hand of each SKU read.
async fn final_reads(client: &Client, history: &History, skus: &[&str]) -> BTreeMap<String, u64> {
    let mut final_on_hand = BTreeMap::new();
    for sku in skus {
        let h = history.invoke(0, Invocation::read(sku));
        let done = match client.get(&[sku], Consistency::Linearizable).await {
            Ok(r) => match r.first().and_then(|r| r.stock.clone()) {
                Some(s) => {
                    final_on_hand.insert(sku.to_string(), s.on_hand);
                    Completion::ok_stock(true, s.on_hand, s.reserved, None)
                }
                None => Completion::ok_stock(false, 0, 0, None),
            },
            Err(e) => Completion::info(e.reason()),
        };
        history.complete(h, 0, done);
    }
    let reservations: BTreeMap<String, String> = history
        .records()
        .iter()
        .filter(|r| r.kind == Some(Kind::Invoke) && r.f == "reserve")
        .filter_map(|r| Some((r.reservation.clone()?, r.sku.clone()?)))
        .collect();
    for (res, sku) in &reservations {
        let h = history.invoke(0, Invocation::read_reservation(sku, res));
        let done = match client
            .get_reservation(res, Some(sku), Consistency::Linearizable)
            .await
        {
            Ok(r) => Completion::ok_state(&format!("{:?}", r.state).to_lowercase()),
            Err(e) if e.reason() == "RESERVATION_NOT_FOUND" => Completion::fail(e.reason(), None),
            Err(e) => Completion::info(e.reason()),
        };
        history.complete(h, 0, done);
    }
    final_on_hand
}
