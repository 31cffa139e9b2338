//! One run, inside the network namespace: start the cluster, set up stock, run the
//! workloads under the nemesis, heal, read the final state, check convergence, check
//! the history, write the report.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stockpile_client::{Consistency, RequestId, request_id_hex};
use stockpile_jepsen::history::{self, Kind, Op, Record};
use stockpile_jepsen::report::{Check, ClusterCheck, Stats};
use stockpile_jepsen::{checker, invariants, report};
use tokio::sync::Mutex as AsyncMutex;

use crate::Args;
use crate::cluster::{self, Cluster, Net};
use crate::nemesis::Nemesis;
use crate::workload::{self, IDEMPOTENCY_SKUS, INITIAL_STOCK, REGISTER_SKUS, RESERVATION_SKUS};

/// The history being recorded: records in order, timestamps from the run's start.
pub struct History {
    start: Instant,
    records: Mutex<Vec<Record>>,
}

#[derive(Default)]
pub struct Invocation(Record);

impl Invocation {
    fn base(f: &str, sku: &str, rid: Option<&RequestId>) -> Record {
        Record {
            f: f.into(),
            sku: Some(sku.into()),
            rid: rid.map(request_id_hex),
            ..Record::default()
        }
    }
    pub fn read(sku: &str) -> Self {
        Invocation(Self::base("read", sku, None))
    }
    pub fn set(sku: &str, on_hand: u64, rid: &RequestId) -> Self {
        Invocation(Record {
            on_hand: Some(on_hand),
            ..Self::base("set", sku, Some(rid))
        })
    }
    pub fn decrement(sku: &str, qty: u64, rid: &RequestId) -> Self {
        Invocation(Record {
            qty: Some(qty),
            ..Self::base("decrement", sku, Some(rid))
        })
    }
    pub fn adjust(sku: &str, delta: i64, rid: &RequestId) -> Self {
        Invocation(Record {
            delta: Some(delta),
            ..Self::base("adjust", sku, Some(rid))
        })
    }
    pub fn reserve(sku: &str, res: &str, qty: u64, ttl_ms: u64, rid: &RequestId) -> Self {
        Invocation(Record {
            qty: Some(qty),
            ttl_ms: Some(ttl_ms),
            reservation: Some(res.into()),
            ..Self::base("reserve", sku, Some(rid))
        })
    }
    pub fn close(confirm: bool, sku: &str, res: &str, rid: &RequestId) -> Self {
        Invocation(Record {
            reservation: Some(res.into()),
            ..Self::base(if confirm { "confirm" } else { "release" }, sku, Some(rid))
        })
    }
    pub fn read_reservation(sku: &str, res: &str) -> Self {
        Invocation(Record {
            reservation: Some(res.into()),
            ..Self::base("read-reservation", sku, None)
        })
    }
}

pub struct Completion(Record);

impl Completion {
    pub fn ok_stock(found: bool, on_hand: u64, reserved: u64, node: Option<u64>) -> Self {
        Completion(Record {
            kind: Some(Kind::Ok),
            found: Some(found),
            on_hand: Some(on_hand),
            reserved: Some(reserved),
            node,
            ..Record::default()
        })
    }
    pub fn ok_state(state: &str) -> Self {
        Completion(Record {
            kind: Some(Kind::Ok),
            state: Some(state.into()),
            ..Record::default()
        })
    }
    pub fn fail(reason: &str, available: Option<u64>) -> Self {
        Completion(Record {
            kind: Some(Kind::Fail),
            error: Some(reason.into()),
            available,
            ..Record::default()
        })
    }
    pub fn info(reason: &str) -> Self {
        Completion(Record {
            kind: Some(Kind::Info),
            error: Some(reason.into()),
            ..Record::default()
        })
    }
}

impl History {
    fn new() -> Self {
        History {
            start: Instant::now(),
            records: Mutex::new(Vec::new()),
        }
    }

    pub fn elapsed_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn push(&self, mut r: Record) -> usize {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        r.time_ns = self.elapsed_ns();
        r.index = records.len() as u64;
        records.push(r);
        records.len() - 1
    }

    /// Records an invocation; returns its handle.
    pub fn invoke(&self, process: u64, inv: Invocation) -> usize {
        self.push(Record {
            kind: Some(Kind::Invoke),
            process: Some(process),
            ..inv.0
        })
    }

    /// Records the completion of invocation `h`; true when the outcome is unknown (the
    /// process must not be reused).
    pub fn complete(&self, h: usize, process: u64, c: Completion) -> bool {
        let inv = self.records.lock().unwrap_or_else(|p| p.into_inner())[h].clone();
        let info = c.0.kind == Some(Kind::Info);
        self.push(Record {
            process: Some(process),
            f: inv.f,
            sku: inv.sku,
            rid: inv.rid,
            reservation: inv.reservation,
            ..c.0
        });
        info
    }

    pub fn nemesis(&self, f: &str, detail: &str) {
        self.push(Record {
            kind: Some(Kind::Nemesis),
            f: f.into(),
            detail: Some(detail.into()),
            ..Record::default()
        });
    }

    pub fn note(&self, detail: &str) {
        self.nemesis("note", detail);
    }

    pub fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

pub fn fail_run(msg: &str) -> ExitCode {
    eprintln!("stockpile-jepsen: the run could not be carried out: {msg}");
    ExitCode::from(2)
}

pub async fn wait_ready(nodes: u64, within: Duration) -> Result<stockpile_client::Client, String> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(c) = workload::client(nodes, 1, Duration::from_secs(3)).await
            && let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_secs(3), c.cluster_status()).await
        {
            let ready = s.nodes.iter().all(|v| v.reachable)
                && s.nodes
                    .iter()
                    .filter_map(|v| v.status.as_ref())
                    .all(|st| st.shards.iter().all(|sh| sh.leader_id != 0));
            if ready {
                return Ok(c);
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the cluster did not become ready within {} s",
                within.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn inside(args: Args) -> ExitCode {
    let Some(dir) = args.run_dir.clone() else {
        return fail_run("no run directory");
    };
    let seed = args.seed.unwrap_or(1);
    let kinds: Vec<String> = args
        .nemesis
        .iter()
        .filter(|k| k.as_str() != "none" && !k.is_empty())
        .cloned()
        .collect();
    for k in &kinds {
        if !["partition", "kill", "pause", "clock"].contains(&k.as_str()) {
            return fail_run(&format!(
                "unknown nemesis {k:?} (partition, kill, pause, clock)"
            ));
        }
    }
    for w in &args.workload {
        if !["register", "reservations", "idempotency"].contains(&w.as_str()) {
            return fail_run(&format!(
                "unknown workload {w:?} (register, reservations, idempotency)"
            ));
        }
    }
    let net = match Net::init() {
        Ok(n) => n,
        Err(e) => return fail_run(&format!("network namespace setup: {e}")),
    };
    let node_bin = args.node_bin.clone().unwrap_or_else(|| {
        let name = if args.bug.is_some() {
            "stockpile-node-planted"
        } else {
            "stockpile-node"
        };
        std::env::current_exe()
            .map(|p| p.with_file_name(name))
            .unwrap_or_else(|_| name.into())
    });
    if !node_bin.exists() {
        return fail_run(&format!(
            "node binary {} not found (build it first; scripts/jepsen.sh does)",
            node_bin.display()
        ));
    }
    let config = match cluster::write_config(&dir, args.nodes) {
        Ok(c) => c,
        Err(e) => return fail_run(&format!("config: {e}")),
    };
    let cluster = Arc::new(AsyncMutex::new(Cluster::new(
        dir.clone(),
        config,
        args.nodes,
        node_bin,
        args.bug.clone(),
    )));
    {
        let mut c = cluster.lock().await;
        for id in c.ids() {
            if let Err(e) = c.start(id) {
                return fail_run(&format!("starting node {id}: {e}"));
            }
        }
    }
    let admin = match wait_ready(args.nodes, Duration::from_secs(60)).await {
        Ok(c) => c,
        Err(e) => return fail_run(&e),
    };
    let command = format!(
        "scripts/jepsen.sh --nodes {} --nemesis {} --workload {} --time {} --seed {seed}{}",
        args.nodes,
        if kinds.is_empty() {
            "none".to_string()
        } else {
            kinds.join(",")
        },
        args.workload.join(","),
        args.time,
        args.bug
            .as_ref()
            .map(|b| format!(" --bug {b}"))
            .unwrap_or_default()
    );
    println!("run {}: {command}", dir.display());

    // Set up stock, recorded as process 0.
    let history = Arc::new(History::new());
    let mut skus: Vec<&str> = Vec::new();
    for w in &args.workload {
        skus.extend(match w.as_str() {
            "register" => &REGISTER_SKUS[..],
            "reservations" => &RESERVATION_SKUS[..],
            _ => &IDEMPOTENCY_SKUS[..],
        });
    }
    for sku in &skus {
        let rid = stockpile_client::new_request_id();
        let initial = if RESERVATION_SKUS.contains(sku) {
            4 * INITIAL_STOCK
        } else {
            INITIAL_STOCK
        };
        let h = history.invoke(0, Invocation::set(sku, initial, &rid));
        match admin.set_stock_with_id(rid, sku, initial).await {
            Ok(u) => {
                history.complete(
                    h,
                    0,
                    Completion::ok_stock(
                        true,
                        u.stock.on_hand,
                        u.stock.reserved,
                        Some(u.applied.node_id),
                    ),
                );
            }
            Err(e) => return fail_run(&format!("setting up {sku}: {e}")),
        }
    }

    // Workloads under the nemesis.
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
                args.nodes,
                seed,
                history.clone(),
                stop_workers.clone(),
            )));
            index += 1;
        }
    }
    let mut nemesis = Nemesis::new(cluster.clone(), net, kinds.clone(), seed, history.clone());
    nemesis.client = Some(admin.clone());
    let nemesis_task = tokio::spawn(nemesis.run(stop_nemesis.clone()));
    tokio::time::sleep(Duration::from_secs(args.time)).await;
    stop_nemesis.store(true, Ordering::Relaxed);
    let nemesis = match nemesis_task.await {
        Ok(n) => n,
        Err(e) => return fail_run(&format!("nemesis task: {e}")),
    };
    // Every node up again, a few healthy seconds of workload, then stop.
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
    let client = match wait_ready(args.nodes, Duration::from_secs(60)).await {
        Ok(c) => c,
        Err(e) => return fail_run(&format!("after healing: {e}")),
    };
    // Let every reservation reach its expiry, then read the final state (process 0).
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let mut final_on_hand: BTreeMap<String, u64> = BTreeMap::new();
    for sku in &skus {
        let h = history.invoke(0, Invocation::read(sku));
        match client.get(&[sku], Consistency::Linearizable).await {
            Ok(r) => {
                let s = r.first().and_then(|r| r.stock.clone());
                if let Some(s) = &s {
                    final_on_hand.insert(sku.to_string(), s.on_hand);
                }
                history.complete(
                    h,
                    0,
                    match s {
                        Some(s) => Completion::ok_stock(true, s.on_hand, s.reserved, None),
                        None => Completion::ok_stock(false, 0, 0, None),
                    },
                );
            }
            Err(e) => {
                history.complete(h, 0, Completion::info(e.reason()));
            }
        }
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

    // Convergence: every replica of every shard at the same index with the same state,
    // and every replica's own view of every SKU equal to the final linearizable read.
    let mut cluster_checks = Vec::new();
    let converged = converge(&client, args.nodes, Duration::from_secs(30)).await;
    cluster_checks.push(ClusterCheck {
        check: "replicas identical after healing".into(),
        ok: converged.is_ok(),
        message: converged.unwrap_or_else(|e| e),
    });
    let mut views_ok = true;
    let mut views_msg =
        String::from("every replica's stale read equals the final linearizable read");
    for node in 1..=args.nodes {
        let own: Vec<&str> = skus.clone();
        match client.get_from_node(node, &own).await {
            Ok(reads) => {
                for r in reads {
                    if let Some(want) = final_on_hand.get(&r.sku)
                        && r.stock.as_ref().map(|s| s.on_hand) != Some(*want)
                    {
                        views_ok = false;
                        views_msg = format!(
                            "node {node} holds {:?} for {} but the final read saw {want}",
                            r.stock.map(|s| s.on_hand),
                            r.sku
                        );
                    }
                }
            }
            Err(stockpile_client::Error::Unavailable { .. }) => {}
            Err(e) if e.reason() == "NOT_LEADER" => {}
            Err(e) => {
                views_ok = false;
                views_msg = format!("node {node}: {e}");
            }
        }
    }
    cluster_checks.push(ClusterCheck {
        check: "replica state equals the final linearizable read".into(),
        ok: views_ok,
        message: views_msg,
    });
    // Exactly-once, audited from the nodes: a shard stores one outcome per request id it
    // executes, so its count cannot exceed the distinct request ids sent to it.
    let map = client.shard_map();
    let mut sent: BTreeMap<u64, std::collections::BTreeSet<String>> = BTreeMap::new();
    for r in history
        .records()
        .iter()
        .filter(|r| r.kind == Some(Kind::Invoke))
    {
        if let (Some(rid), Some(sku)) = (&r.rid, &r.sku)
            && let Some(shard) = map.shard_for(sku)
        {
            sent.entry(shard.shard_id).or_default().insert(rid.clone());
        }
    }
    let mut stored: BTreeMap<u64, u64> = BTreeMap::new();
    for node in 1..=args.nodes {
        if let Ok(digests) = client.shard_digests(node).await {
            for d in digests {
                let e = stored.entry(d.shard_id).or_default();
                *e = (*e).max(d.outcomes_count);
            }
        }
    }
    let over: Vec<String> = stored
        .iter()
        .filter_map(|(shard, count)| {
            let distinct = sent.get(shard).map(|s| s.len() as u64).unwrap_or(0);
            (*count > distinct).then(|| {
                format!("shard {shard} stores {count} outcomes for {distinct} distinct request ids")
            })
        })
        .collect();
    cluster_checks.push(ClusterCheck {
        check: "no request id applied twice (audited from the nodes)".into(),
        ok: over.is_empty() && !stored.is_empty(),
        message: if over.is_empty() {
            format!("stored outcomes per shard {stored:?} within the distinct request ids sent")
        } else {
            over.join("; ")
        },
    });
    cluster.lock().await.stop_all();

    // Write the history and schedule, then check.
    let records = history.records();
    let mut jsonl = String::new();
    for r in &records {
        jsonl += &serde_json::to_string(r).unwrap_or_default();
        jsonl.push('\n');
    }
    let _ = std::fs::write(dir.join("history.jsonl"), &jsonl);
    let _ = std::fs::write(dir.join("schedule.txt"), nemesis.schedule.join("\n") + "\n");
    let _ = std::fs::write(dir.join("seed"), format!("{seed}\n"));
    let slack_ns = if kinds.iter().any(|k| k == "clock") {
        1_200_000_000
    } else {
        150_000_000
    };
    check_and_report(
        &dir,
        &records,
        &final_on_hand,
        cluster_checks,
        seed,
        &command,
        args.budget,
        slack_ns,
    )
}

async fn converge(
    client: &stockpile_client::Client,
    nodes: u64,
    within: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    loop {
        let mut views: BTreeMap<u64, Vec<(u64, u64, u64)>> = BTreeMap::new();
        let mut reachable = true;
        for n in 1..=nodes {
            match client.shard_digests(n).await {
                Ok(ds) => {
                    for d in ds {
                        views
                            .entry(d.shard_id)
                            .or_default()
                            .push((n, d.applied_index, d.digest));
                    }
                }
                Err(e) => {
                    reachable = false;
                    last = format!("node {n}: {e}");
                }
            }
        }
        if reachable {
            let diverged: Vec<String> = views
                .iter()
                .filter(|(_, v)| v.windows(2).any(|w| (w[0].1, w[0].2) != (w[1].1, w[1].2)))
                .map(|(s, v)| format!("shard {s}: {v:?}"))
                .collect();
            if diverged.is_empty() {
                return Ok(format!(
                    "{} shards converged: {:?}",
                    views.len(),
                    views.iter().map(|(s, v)| (*s, v[0].1)).collect::<Vec<_>>()
                ));
            }
            last = diverged.join("; ");
        }
        if Instant::now() > deadline {
            return Err(format!(
                "not converged within {} s: {last}",
                within.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[allow(clippy::too_many_arguments)]
pub fn check_and_report(
    dir: &std::path::Path,
    records: &[Record],
    final_on_hand: &BTreeMap<String, u64>,
    cluster: Vec<ClusterCheck>,
    seed: u64,
    command: &str,
    budget: u64,
    expiry_slack_ns: u64,
) -> ExitCode {
    let ops = match history::pair(records) {
        Ok(o) => o,
        Err(e) => return fail_run(&format!("history: {e}")),
    };
    let mut by_sku: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for o in &ops {
        by_sku.entry(o.sku.clone()).or_default().push(o.clone());
    }
    // The final reservation reads are checked by the invariants; keeping them out of
    // the search lets it forget closed reservations early.
    let mut with_exp: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for (sku, ops) in &by_sku {
        let searched: Vec<Op> = ops
            .iter()
            .filter(|o| {
                !(o.process == 0 && matches!(o.call, history::Call::ReadReservation { .. }))
            })
            .cloned()
            .collect();
        with_exp.insert(
            sku.clone(),
            checker::with_expiries(&searched, expiry_slack_ns),
        );
    }
    let verdicts: Vec<checker::SkuVerdict> = std::thread::scope(|s| {
        let handles: Vec<_> = with_exp
            .iter()
            .map(|(sku, ops)| s.spawn(move || checker::check_sku(sku, ops, budget)))
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let mut violations = Vec::new();
    for (sku, ops) in &by_sku {
        violations.extend(invariants::check_sku(
            sku,
            ops,
            final_on_hand.get(sku).copied(),
        ));
    }
    let stats = Stats {
        ops: ops.len(),
        ok: records.iter().filter(|r| r.kind == Some(Kind::Ok)).count(),
        fail: records
            .iter()
            .filter(|r| r.kind == Some(Kind::Fail))
            .count(),
        info: records
            .iter()
            .filter(|r| r.kind == Some(Kind::Info))
            .count(),
        nemesis_events: records
            .iter()
            .filter(|r| r.kind == Some(Kind::Nemesis) && r.f != "note")
            .count(),
    };
    let valid = verdicts.iter().all(|v| v.linearizable)
        && violations.is_empty()
        && cluster.iter().all(|c| c.ok);
    let check = Check {
        valid,
        seed,
        command: command.to_string(),
        linearizability: verdicts,
        invariants: violations,
        cluster,
        stats,
    };
    let _ = std::fs::write(
        dir.join("check.json"),
        serde_json::to_string_pretty(&check).unwrap_or_default(),
    );
    let _ = std::fs::write(
        dir.join("index.html"),
        report::html(&check, &with_exp, records),
    );
    for v in &check.linearizability {
        println!("  {:<16} {}", v.sku, v.message);
    }
    for v in &check.invariants {
        println!("  {:<16} {}: {}", v.sku, v.check, v.message);
    }
    for c in &check.cluster {
        println!(
            "  {:<16} {}: {}",
            "cluster",
            c.check,
            if c.ok {
                "ok".to_string()
            } else {
                c.message.clone()
            }
        );
    }
    println!(
        "{}: {} ops ({} ok, {} fail, {} info), {} faults; report {}",
        if valid { "VALID" } else { "ANOMALY" },
        check.stats.ops,
        check.stats.ok,
        check.stats.fail,
        check.stats.info,
        check.stats.nemesis_events,
        dir.join("index.html").display()
    );
    println!("repeat: {command}");
    if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
