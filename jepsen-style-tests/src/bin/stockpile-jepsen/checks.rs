//! After a run: the checks of the cluster itself (replicas converged, replica views
//! equal the final reads, no request id applied twice, audited from the nodes), then
//! the history's checks, and the report.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use stockpile_client::Client;
use stockpile_jepsen::history::{self, Kind, Op, Record};
use stockpile_jepsen::recorder::History;
use stockpile_jepsen::report::{Check, ClusterCheck, Stats};
use stockpile_jepsen::{checker, invariants, report};

use crate::fail_run;

/// The checks of the cluster's own state after healing.
pub async fn cluster_checks(
    client: &Client,
    members: &[u64],
    skus: &[&str],
    final_on_hand: &BTreeMap<String, u64>,
    history: &History,
    reshapes: &[(u64, u64)],
) -> Vec<ClusterCheck> {
    let converged = converge(client, members, Duration::from_secs(30)).await;
    vec![
        ClusterCheck {
            check: "replicas identical after healing".into(),
            ok: converged.is_ok(),
            message: converged.unwrap_or_else(|e| e),
        },
        replica_views(client, members, skus, final_on_hand).await,
        exactly_once(client, members, history, reshapes).await,
    ]
}

/// A node drained by the membership nemesis ran no replica when it was retired (its
/// own status said so): a drain leaves nothing behind that could still answer.
pub fn drained_hold_nothing(drained: &[(u64, Result<Vec<u64>, String>)]) -> ClusterCheck {
    let left: Vec<String> = drained
        .iter()
        .filter_map(|(node, held)| match held {
            Ok(shards) if !shards.is_empty() => Some(format!(
                "node {node} still ran replicas of shards {shards:?}"
            )),
            _ => None,
        })
        .collect();
    ClusterCheck {
        check: "a drained node runs no replica".into(),
        ok: left.is_empty(),
        message: if left.is_empty() {
            format!(
                "drained nodes and the shards they still ran: {:?}",
                drained
                    .iter()
                    .map(|(n, h)| (*n, h.clone().unwrap_or_default()))
                    .collect::<Vec<_>>()
            )
        } else {
            left.join("; ")
        },
    }
}

/// Every replica's own view of every SKU equals the final linearizable read.
async fn replica_views(
    client: &Client,
    members: &[u64],
    skus: &[&str],
    final_on_hand: &BTreeMap<String, u64>,
) -> ClusterCheck {
    let mut ok = true;
    let mut message = String::from("every replica's stale read equals the final linearizable read");
    for &node in members {
        match client.get_from_node(node, skus).await {
            Ok(reads) => {
                for r in reads {
                    if let Some(want) = final_on_hand.get(&r.sku)
                        && r.stock.as_ref().map(|s| s.on_hand) != Some(*want)
                    {
                        ok = false;
                        message = format!(
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
                ok = false;
                message = format!("node {node}: {e}");
            }
        }
    }
    ClusterCheck {
        check: "replica state equals the final linearizable read".into(),
        ok,
        message,
    }
}

/// The family `shard` belongs to, named by its smallest id: shards joined by a split
/// or a merge (`reshapes`, pairs) share stored outcomes. Bounded by the pairs' count.
fn family_of(shard: u64, reshapes: &[(u64, u64)]) -> u64 {
    let mut members = std::collections::BTreeSet::from([shard]);
    for _ in 0..=reshapes.len() {
        let before = members.len();
        for (a, b) in reshapes {
            if members.contains(a) || members.contains(b) {
                members.insert(*a);
                members.insert(*b);
            }
        }
        if members.len() == before {
            break;
        }
    }
    members.first().copied().unwrap_or(shard)
}

/// Exactly-once, audited from the nodes: a shard stores one outcome per request id it
/// executes, so its count cannot exceed the distinct request ids sent to it. A split
/// copies its parent's outcomes to both halves and a merge carries the right shard's
/// into the left one, so a shard's count is bounded by the distinct request ids sent
/// to its whole family (`family_of`).
async fn exactly_once(
    client: &Client,
    members: &[u64],
    history: &History,
    reshapes: &[(u64, u64)],
) -> ClusterCheck {
    let _ = client
        .refresh_map(Instant::now() + Duration::from_secs(3))
        .await;
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
            sent.entry(family_of(shard.shard_id, reshapes))
                .or_default()
                .insert(rid.clone());
        }
    }
    let mut stored: BTreeMap<u64, u64> = BTreeMap::new();
    for &node in members {
        if let Ok(digests) = client.shard_digests(node).await {
            // The meta shard (0) stores the nodes' own cluster-map changes, which
            // the history does not send: only the SKU shards are audited.
            for d in digests.into_iter().filter(|d| d.shard_id != 0) {
                let e = stored.entry(d.shard_id).or_default();
                *e = (*e).max(d.outcomes_count);
            }
        }
    }
    let over: Vec<String> = stored
        .iter()
        .filter_map(|(shard, count)| {
            let distinct = sent
                .get(&family_of(*shard, reshapes))
                .map(|s| s.len() as u64)
                .unwrap_or(0);
            (*count > distinct).then(|| {
                format!("shard {shard} stores {count} outcomes for {distinct} distinct request ids")
            })
        })
        .collect();
    ClusterCheck {
        check: "no request id applied twice (audited from the nodes)".into(),
        ok: over.is_empty() && !stored.is_empty(),
        message: if over.is_empty() {
            format!("stored outcomes per shard {stored:?} within the distinct request ids sent")
        } else {
            over.join("; ")
        },
    }
}

/// Writes the history (JSON lines), the nemesis schedule and the seed.
pub fn write_history(dir: &std::path::Path, records: &[Record], schedule: &[String], seed: u64) {
    let mut jsonl = String::new();
    for r in records {
        jsonl += &serde_json::to_string(r).unwrap_or_default();
        jsonl.push('\n');
    }
    let _ = std::fs::write(dir.join("history.jsonl"), &jsonl);
    let _ = std::fs::write(dir.join("schedule.txt"), schedule.join("\n") + "\n");
    let _ = std::fs::write(dir.join("seed"), format!("{seed}\n"));
}

async fn converge(client: &Client, members: &[u64], within: Duration) -> Result<String, String> {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    loop {
        let mut views: BTreeMap<u64, Vec<(u64, u64, u64)>> = BTreeMap::new();
        let mut reachable = true;
        for &n in members {
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

/// What the report says about how the run was made.
pub struct RunInfo {
    pub seed: u64,
    /// How to repeat the run.
    pub command: String,
    /// The linearizability search's budget, in states per SKU.
    pub budget: u64,
    /// How late an expiry may be observed (clock skew widens it).
    pub expiry_slack_ns: u64,
}

/// Checks the history (linearizability per SKU, invariants) with the cluster checks,
/// writes `check.json` and `index.html`, prints the verdict; 0 valid, 1 anomaly.
pub fn check_and_report(
    dir: &std::path::Path,
    records: &[Record],
    final_on_hand: &BTreeMap<String, u64>,
    cluster: Vec<ClusterCheck>,
    run: &RunInfo,
) -> ExitCode {
    let (seed, command, budget, expiry_slack_ns) = (
        run.seed,
        run.command.as_str(),
        run.budget,
        run.expiry_slack_ns,
    );
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
    let stats = stats_of(records, ops.len());
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

fn stats_of(records: &[Record], ops: usize) -> Stats {
    let count = |kind: Kind| records.iter().filter(|r| r.kind == Some(kind)).count();
    Stats {
        ops,
        ok: count(Kind::Ok),
        fail: count(Kind::Fail),
        info: count(Kind::Info),
        nemesis_events: records
            .iter()
            .filter(|r| r.kind == Some(Kind::Nemesis) && r.f != "note")
            .count(),
    }
}
