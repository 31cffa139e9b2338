//! The failover measurement (`--scenario failover`): writers decrement one SKU of
//! shard 1 continuously while its leader is killed (`kill -9`) `--kills` times, the
//! killed node restarted and caught up between kills. For each kill it measures the
//! client-observed write unavailability: from the kill to the first successful
//! decrement that was sent after it (end to end, through the client's retries).
//! Then it counts leader changes (term increases on any shard) during `--time`
//! seconds of full load and `--time` seconds of idleness, where there should be none.
//!
//! A measurement, not a check: it exits 0 with the distribution (docs/PERFORMANCE.md)
//! unless a run could not be carried out (2) or writes never resumed (1).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stockpile_client::Client;

use crate::Args;
use crate::cluster::{Cluster, Net, wait_ready};
use crate::fail_run;

/// The SKU written (shard 1: below "g").
const SKU: &str = "apple-failover";
/// Writers decrementing at once.
const WRITERS: usize = 16;
/// Load between kills before the next, so the new leader is settled.
const SETTLE: Duration = Duration::from_secs(3);
/// A kill whose writes did not resume within this is reported as a failure.
const RESUME_DEADLINE: Duration = Duration::from_secs(30);

/// When each successful decrement was sent and answered, since the run's start.
type Completions = Arc<Mutex<Vec<(Duration, Duration)>>>;

pub async fn inside(args: Args) -> ExitCode {
    let Some(dir) = args.run_dir.clone() else {
        return fail_run("no run directory");
    };
    if let Err(e) = Net::init() {
        return fail_run(&format!("network namespace setup: {e}"));
    }
    let mut nodes = match Cluster::start_scenario(&args, &dir) {
        Ok(c) => c,
        Err(e) => return fail_run(&e),
    };
    println!(
        "run {}: scripts/jepsen.sh --scenario failover --nodes {} --kills {} --time {}",
        dir.display(),
        args.nodes,
        args.kills,
        args.time
    );
    let outcome = scenario(&args, &mut nodes).await;
    nodes.stop_all();
    match outcome {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(Failure::NoResume(why)) => {
            println!("failover: writes did not resume: {why}");
            ExitCode::from(1)
        }
        Err(Failure::NotRun(why)) => fail_run(&why),
    }
}

enum Failure {
    NoResume(String),
    NotRun(String),
}

async fn scenario(args: &Args, nodes: &mut Cluster) -> Result<String, Failure> {
    let client = wait_ready(Duration::from_secs(60))
        .await
        .map_err(Failure::NotRun)?;
    client
        .set_stock(SKU, 1_000_000_000_000)
        .await
        .map_err(|e| Failure::NotRun(format!("stocking {SKU}: {e}")))?;
    let started = Instant::now();
    let done: Completions = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(started, &done, &stop).await?;
    let mut gaps = Vec::new();
    for k in 0..args.kills {
        tokio::time::sleep(SETTLE).await;
        let leader = leader_of(&client, 1).await.map_err(Failure::NotRun)?;
        nodes.kill9(leader);
        // After the kill returned (the process is reaped): a decrement sent from now
        // on cannot have been served by the old leader.
        let killed_at = started.elapsed();
        let gap = resumed_after(&done, started, killed_at)
            .await
            .map_err(|e| Failure::NoResume(format!("kill {k} of node {leader}: {e}")))?;
        println!("kill {k}: node {leader} (leader of shard 1); writes resumed after {gap:?}");
        gaps.push(gap);
        nodes
            .start(leader)
            .map_err(|e| Failure::NotRun(format!("restarting node {leader}: {e}")))?;
        wait_ready(Duration::from_secs(60))
            .await
            .map_err(Failure::NotRun)?;
    }
    let quiet = Duration::from_secs(args.time);
    let loaded_changes = leader_changes(&client, quiet).await?;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let idle_changes = leader_changes(&client, quiet).await?;
    Ok(report(&gaps, quiet, loaded_changes, idle_changes))
}

async fn spawn_writers(
    started: Instant,
    done: &Completions,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, Failure> {
    let mut writers = Vec::new();
    for i in 0..WRITERS as u64 {
        let c = crate::workload::client(i, Duration::from_secs(10))
            .await
            .map_err(|e| Failure::NotRun(format!("client: {e}")))?;
        let (done, stop) = (done.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let sent = started.elapsed();
                if c.decrement(SKU, 1).await.is_ok()
                    && let Ok(mut d) = done.lock()
                {
                    d.push((sent, started.elapsed()));
                }
            }
        }));
    }
    Ok(writers)
}

/// How long after `killed_at` the first decrement sent after it succeeded.
async fn resumed_after(
    done: &Completions,
    started: Instant,
    killed_at: Duration,
) -> Result<Duration, String> {
    loop {
        let first = done.lock().ok().and_then(|d| {
            d.iter()
                .filter(|(sent, _)| *sent >= killed_at)
                .map(|(_, answered)| *answered)
                .min()
        });
        if let Some(answered) = first {
            return Ok(answered - killed_at);
        }
        if started.elapsed() > killed_at + RESUME_DEADLINE {
            return Err(format!("nothing succeeded within {RESUME_DEADLINE:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The node every reachable node names as shard `shard_id`'s leader.
async fn leader_of(client: &Client, shard_id: u64) -> Result<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = client.cluster_status().await {
            let named: Vec<u64> = s
                .nodes
                .iter()
                .filter_map(|v| v.status.as_ref())
                .flat_map(|st| st.shards.iter())
                .filter(|sh| sh.shard_id == shard_id && sh.leader_id != 0)
                .map(|sh| sh.leader_id)
                .collect();
            if let Some(first) = named.first()
                && named.iter().all(|l| l == first)
            {
                return Ok(*first);
            }
        }
        if Instant::now() > deadline {
            return Err(format!("shard {shard_id} has no agreed leader"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each shard's highest term any node reports.
async fn terms(client: &Client) -> Result<BTreeMap<u64, u64>, Failure> {
    let s = client
        .cluster_status()
        .await
        .map_err(|e| Failure::NotRun(format!("status: {e}")))?;
    let mut terms = BTreeMap::new();
    for sh in s
        .nodes
        .iter()
        .filter_map(|v| v.status.as_ref())
        .flat_map(|st| st.shards.iter())
    {
        let t = terms.entry(sh.shard_id).or_insert(0);
        *t = sh.term.max(*t);
    }
    Ok(terms)
}

/// Elections (term increases summed over shards) during `period`.
async fn leader_changes(client: &Client, period: Duration) -> Result<u64, Failure> {
    let before = terms(client).await?;
    tokio::time::sleep(period).await;
    let after = terms(client).await?;
    Ok(after
        .iter()
        .map(|(shard, t)| t.saturating_sub(before.get(shard).copied().unwrap_or(*t)))
        .sum())
}

fn report(gaps: &[Duration], quiet: Duration, loaded: u64, idle: u64) -> String {
    let mut sorted = gaps.to_vec();
    sorted.sort();
    let at = |q: f64| {
        sorted
            .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    let ms = |d: Duration| d.as_millis();
    format!(
        "failover: {} kills of shard 1's leader under load; write unavailability (client-observed) median {} ms, p90 {} ms, p99 {} ms, max {} ms, min {} ms\n\
         all (ms): {:?}\n\
         leader changes in {} s of full load: {loaded}; in {} s idle: {idle}",
        sorted.len(),
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(0.99)),
        ms(at(1.0)),
        ms(at(0.0)),
        gaps.iter().map(|d| d.as_millis()).collect::<Vec<_>>(),
        quiet.as_secs(),
        quiet.as_secs()
    )
}
