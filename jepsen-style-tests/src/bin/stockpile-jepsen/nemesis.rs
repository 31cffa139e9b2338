//! The nemesis: a seeded schedule of faults. Each fault is applied, logged in the
//! history with what was actually done, held for a while, then healed.
//!
//! - partition: halves, one node isolated, a shard leader isolated, a majorities
//!   ring, a bridge, lossy links (random drop) — nftables rules in the namespace;
//! - kill: `kill -9` of one node, a shard's leader, a majority, or all; restarted on
//!   the same data when healed;
//! - pause: SIGSTOP of one node or a shard's leader; SIGCONT when healed;
//! - clock: a node restarted with its clock skewed (the node's hidden, test-only
//!   `--clock-skew-ms`); restarted without skew when healed;
//! - membership, in turn: a node replaced by draining (a new node joins with
//!   `--join`, the old one is drained while it serves and retired when the fault is
//!   healed); a node killed and declared dead (a new node joins, the dead one's
//!   replicas are recreated from the survivors); one replica of a random shard moved
//!   to a node that holds none (learner, catch-up, guarded replacement, drop), running
//!   in the background while the next faults strike. Unfinished moves are completed
//!   (the same command resumes them) before the run's checks;
//! - split: a random shard split among the workload's SKUs (`nemesis::split`).

mod split;

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

use crate::cluster::{Cluster, Net};
use stockpile_jepsen::recorder::History;

/// The nodes as one strike sees them: in order, shuffled, and the majority size.
struct Layout {
    nodes: Vec<u64>,
    shuffled: Vec<u64>,
    n: usize,
    majority: usize,
}

/// What is broken right now, so that it can be healed.
#[derive(Debug)]
enum Active {
    Net,
    Killed(Vec<u64>),
    Paused(Vec<u64>),
    Skewed(u64),
    /// A drained node, still running (with nothing to serve) until it is retired.
    Drained(u64),
}

pub struct Nemesis {
    pub cluster: Arc<Mutex<Cluster>>,
    pub net: Net,
    pub kinds: Vec<String>,
    pub rng: StdRng,
    pub history: Arc<History>,
    pub client: Option<stockpile_client::Client>,
    active: Option<Active>,
    pub schedule: Vec<String>,
    /// Replica moves started by the membership nemesis, still running.
    moves: Vec<tokio::task::JoinHandle<MoveDone>>,
    /// Membership strikes so far: they take turns (drain, dead, move, ...).
    membership_strikes: u64,
    /// Each drained node's replicas as the node itself reported them just before it
    /// was retired (a drained node must hold none).
    pub drained: Vec<(u64, Result<Vec<u64>, String>)>,
    /// (parent, child) of every split and (left, right) of every merge the split and
    /// merge nemeses made: shards whose stored outcomes are shared.
    pub reshapes: Vec<(u64, u64)>,
}

/// A move of the membership nemesis: what was asked and how it ended.
struct MoveDone {
    shard: u64,
    from: u64,
    to: u64,
    result: Result<Vec<u64>, String>,
}

/// How long one nemesis move may take (it may wait out partitions and kills).
const MOVE_TIMEOUT_MS: u64 = 40_000;
/// How long replacing a node may take (a move per shard it holds).
const REPLACE_TIMEOUT_MS: u64 = 90_000;
/// How long a joining node may take to appear as up in the cluster map.
const JOIN_TIMEOUT_MS: u64 = 30_000;

/// Waits until the cluster map records node `id` as up.
async fn wait_registered(client: &stockpile_client::Client, id: u64) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(JOIN_TIMEOUT_MS);
    loop {
        if let Ok(Ok(map)) =
            tokio::time::timeout(Duration::from_secs(5), client.cluster_map()).await
            && map.nodes.iter().any(|n| n.node_id == id && n.state == "up")
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "node {id} not registered within {JOIN_TIMEOUT_MS} ms"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Nemesis {
    pub fn new(
        cluster: Arc<Mutex<Cluster>>,
        net: Net,
        kinds: Vec<String>,
        seed: u64,
        history: Arc<History>,
    ) -> Nemesis {
        Nemesis {
            cluster,
            net,
            kinds,
            rng: StdRng::seed_from_u64(seed ^ 0x005e_ed0f_fa17),
            history,
            client: None,
            active: None,
            schedule: Vec::new(),
            moves: Vec::new(),
            membership_strikes: 0,
            drained: Vec::new(),
            reshapes: Vec::new(),
        }
    }

    async fn leader_of_random_shard(&mut self) -> Option<(u64, u64)> {
        let shard = self.rng.random_range(1..=4u64);
        let client = self.client.as_ref()?;
        let status = tokio::time::timeout(Duration::from_secs(2), client.cluster_status())
            .await
            .ok()?
            .ok()?;
        status
            .nodes
            .iter()
            .filter_map(|v| v.status.as_ref())
            .flat_map(|s| s.shards.iter())
            .find(|s| s.shard_id == shard && s.role == "leader")
            .map(|s| (shard, s.leader_id))
    }

    fn log(&mut self, f: &str, detail: String) {
        let t = self.history.elapsed_ns();
        self.schedule
            .push(format!("{:>9.3}s {f} {detail}", t as f64 / 1e9));
        self.history.nemesis(f, &detail);
    }

    /// Applies one random fault of the enabled kinds.
    pub async fn strike(&mut self) {
        let Some(kind) = self.kinds.choose(&mut self.rng).cloned() else {
            return;
        };
        let nodes: Vec<u64> = self.cluster.lock().await.ids();
        let mut shuffled = nodes.clone();
        shuffled.shuffle(&mut self.rng);
        let at = Layout {
            majority: nodes.len() / 2 + 1,
            n: nodes.len(),
            nodes,
            shuffled,
        };
        match kind.as_str() {
            "partition" => self.partition(&at).await,
            "kill" => self.kill(&at).await,
            "pause" => self.pause(&at).await,
            "clock" => self.skew_clock(&at).await,
            "membership" => self.membership(&at).await,
            "split" => self.split().await,
            "merge" => self.merge().await,
            other => self.log("unknown-nemesis", other.to_string()),
        }
    }

    /// Cuts links (halves, one node, a shard leader, a ring, a bridge) or makes them lossy.
    async fn partition(&mut self, at: &Layout) {
        let Layout {
            nodes,
            shuffled,
            n,
            majority,
        } = at;
        let (n, majority) = (*n, *majority);
        let variant = [
            "halves",
            "isolate-one",
            "isolate-leader",
            "ring",
            "bridge",
            "lossy",
        ][self.rng.random_range(0..6)];
        let mut cut = Vec::new();
        let mut loss = None;
        let detail;
        match variant {
            "halves" | "isolate-one" | "isolate-leader" => {
                let minority: Vec<u64> = match variant {
                    "halves" => shuffled[..n - majority].to_vec(),
                    "isolate-one" => vec![shuffled[0]],
                    _ => match self.leader_of_random_shard().await {
                        Some((_, l)) => vec![l],
                        None => vec![shuffled[0]],
                    },
                };
                for a in &minority {
                    for b in nodes.iter().filter(|b| !minority.contains(b)) {
                        cut.push((*a, *b));
                        cut.push((*b, *a));
                    }
                }
                detail = format!("{variant}: {minority:?} cut off from the others");
            }
            "ring" => {
                // Each node reaches only its ring neighbours (a majority with itself when n ≤ 5).
                for (i, a) in shuffled.iter().enumerate() {
                    for (j, b) in shuffled.iter().enumerate() {
                        let d = (i as i64 - j as i64)
                            .rem_euclid(n as i64)
                            .min((j as i64 - i as i64).rem_euclid(n as i64));
                        if i != j && d > majority as i64 / 2 {
                            cut.push((*a, *b));
                        }
                    }
                }
                detail = format!("majorities ring over {shuffled:?}");
            }
            "bridge" => {
                // Two halves that only the bridge node connects.
                let bridge = shuffled[0];
                let half = (n - 1) / 2;
                let (left, right) = shuffled[1..].split_at(half);
                for a in left {
                    for b in right {
                        cut.push((*a, *b));
                        cut.push((*b, *a));
                    }
                }
                detail = format!("bridge {bridge} between {left:?} and {right:?}");
            }
            _ => {
                let pct = self.rng.random_range(10..40u32);
                loss = Some(pct);
                detail = format!("lossy links: {pct}% of packets between nodes dropped");
            }
        }
        let result = match loss {
            Some(pct) => self.net.apply(&cut, Some((nodes, pct))),
            None => self.net.apply(&cut, None),
        };
        match result {
            Ok(()) => {
                self.active = Some(Active::Net);
                self.log("partition-start", detail);
            }
            Err(e) => self.log("partition-failed", e),
        }
    }

    /// `kill -9` of one node, a shard's leader, a majority or all.
    async fn kill(&mut self, at: &Layout) {
        let Layout {
            nodes,
            shuffled,
            majority,
            ..
        } = at;
        let majority = *majority;
        let variant = ["one", "leader", "majority", "all"][self.rng.random_range(0..4)];
        let victims: Vec<u64> = match variant {
            "one" => vec![shuffled[0]],
            "leader" => match self.leader_of_random_shard().await {
                Some((_, l)) => vec![l],
                None => vec![shuffled[0]],
            },
            "majority" => shuffled[..majority].to_vec(),
            _ => nodes.clone(),
        };
        let mut c = self.cluster.lock().await;
        for v in &victims {
            c.kill9(*v);
        }
        drop(c);
        self.active = Some(Active::Killed(victims.clone()));
        self.log("kill-start", format!("{variant}: kill -9 {victims:?}"));
    }

    /// SIGSTOP of one node or a shard's leader.
    async fn pause(&mut self, at: &Layout) {
        let shuffled = &at.shuffled;
        let victim = if self.rng.random_bool(0.5) {
            self.leader_of_random_shard()
                .await
                .map(|(_, l)| l)
                .unwrap_or(shuffled[0])
        } else {
            shuffled[0]
        };
        self.cluster.lock().await.pause(victim);
        self.active = Some(Active::Paused(vec![victim]));
        self.log("pause-start", format!("SIGSTOP node {victim}"));
    }

    /// A node restarted with its clock skewed.
    async fn skew_clock(&mut self, at: &Layout) {
        let shuffled = &at.shuffled;
        let victim = shuffled[0];
        let skew: i64 =
            if self.rng.random_bool(0.5) { 1 } else { -1 } * self.rng.random_range(200..1_000i64);
        let mut c = self.cluster.lock().await;
        c.kill9(victim);
        c.skew_ms.insert(victim, skew);
        let started = c.start(victim);
        drop(c);
        match started {
            Ok(()) => {
                self.active = Some(Active::Skewed(victim));
                self.log(
                    "clock-start",
                    format!("node {victim} restarted with its clock skewed {skew:+} ms"),
                );
            }
            Err(e) => self.log("clock-failed", e.to_string()),
        }
    }

    /// The membership strikes' turns: replace a node by draining, replace a killed
    /// node declared dead, move a replica in the background, and again.
    async fn membership(&mut self, at: &Layout) {
        let turn = self.membership_strikes % 3;
        self.membership_strikes += 1;
        match turn {
            0 => self.replace(at, false).await,
            1 => self.replace(at, true).await,
            _ => self.move_replica(at).await,
        }
    }

    /// A new node joins; then one node (`dead`: killed first and declared dead) has
    /// every replica moved off it. A drained node keeps running until the fault is
    /// healed; a dead one is retired at once. Moves still running finish first (a
    /// shard takes one move at a time).
    async fn replace(&mut self, at: &Layout, dead: bool) {
        let Some(client) = self.client.clone() else {
            return;
        };
        self.finish_moves().await;
        let victim = at.shuffled[0];
        if dead {
            self.cluster.lock().await.kill9(victim);
        }
        let joined = self.cluster.lock().await.join_new();
        let new = match joined {
            Ok(Some(id)) => id,
            Ok(None) => {
                if dead {
                    self.active = Some(Active::Killed(vec![victim]));
                }
                return self.log("replace-skipped", "no spare node id left".into());
            }
            Err(e) => return self.log("join-failed", e),
        };
        self.log(
            "join",
            format!("node {new} started with --join (not in any other node's config)"),
        );
        if let Err(e) = wait_registered(&client, new).await {
            self.log("join-failed", e);
        }
        let how = if dead { "remove --dead" } else { "drain" };
        self.log(
            "replace-start",
            format!("node {how} {victim} (node {new} joined to take its place)"),
        );
        let call = client.drain_node(victim, dead);
        let result = tokio::time::timeout(Duration::from_millis(REPLACE_TIMEOUT_MS), call).await;
        let detail = match result {
            Ok(Ok(moves)) => {
                let mut c = self.cluster.lock().await;
                if dead {
                    c.retire(victim);
                } else {
                    self.active = Some(Active::Drained(victim));
                }
                format!("node {victim} removed after {} moves", moves.len())
            }
            Ok(Err(e)) => format!("node {victim} not removed: {e}"),
            Err(_) => format!("node {victim} not removed within {REPLACE_TIMEOUT_MS} ms"),
        };
        if dead && self.active.is_none() && self.cluster.lock().await.ids().contains(&victim) {
            // Not declared dead after all: it comes back as it was.
            self.active = Some(Active::Killed(vec![victim]));
        }
        self.log("replace-end", detail);
    }

    /// Starts moving one replica of a random shard to a node without one; the move
    /// runs in the background while the next faults strike.
    async fn move_replica(&mut self, at: &Layout) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let replicas =
            match tokio::time::timeout(Duration::from_secs(5), client.shard_replicas()).await {
                Ok(Ok(r)) => r,
                _ => return self.log("move-skipped", "shard replicas unknown now".into()),
            };
        let shard = self.rng.random_range(1..=4u64);
        let Some(held) = replicas.get(&shard) else {
            return self.log("move-skipped", format!("shard {shard} has no leader now"));
        };
        let free: Vec<u64> = at
            .nodes
            .iter()
            .copied()
            .filter(|n| !held.contains(n))
            .collect();
        let (Some(&from), Some(&to)) = (held.choose(&mut self.rng), free.choose(&mut self.rng))
        else {
            return self.log(
                "move-skipped",
                format!("shard {shard} on {held:?}: no free node"),
            );
        };
        self.log(
            "move-start",
            format!("shard {shard}: node {from} -> node {to}"),
        );
        self.moves.push(tokio::spawn(async move {
            let call = client.move_replica(shard, from, to, false);
            let result =
                match tokio::time::timeout(Duration::from_millis(MOVE_TIMEOUT_MS), call).await {
                    Ok(Ok(r)) => Ok(r.replicas),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {MOVE_TIMEOUT_MS} ms")),
                };
            MoveDone {
                shard,
                from,
                to,
                result,
            }
        }));
    }

    /// Waits for the moves still running, then runs each again (a finished move only
    /// cleans up; an interrupted one resumes), so that no replica is left half moved
    /// before the checks. Each outcome goes into the history.
    pub async fn finish_moves(&mut self) {
        let mut done = Vec::new();
        for m in std::mem::take(&mut self.moves) {
            if let Ok(d) = m.await {
                done.push(d);
            }
        }
        for d in done {
            self.log(
                "move-end",
                format!(
                    "shard {}: node {} -> node {}: {:?}",
                    d.shard, d.from, d.to, d.result
                ),
            );
            let Some(client) = self.client.clone() else {
                continue;
            };
            let again = tokio::time::timeout(
                Duration::from_millis(MOVE_TIMEOUT_MS),
                client.move_replica(d.shard, d.from, d.to, false),
            )
            .await;
            let detail = match again {
                Ok(Ok(r)) => format!("replicas {:?}", r.replicas),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {MOVE_TIMEOUT_MS} ms"),
            };
            self.log(
                "move-resumed",
                format!(
                    "shard {}: node {} -> node {}: {detail}",
                    d.shard, d.from, d.to
                ),
            );
        }
    }

    /// Undoes the active fault.
    pub async fn heal(&mut self) {
        let Some(active) = self.active.take() else {
            return;
        };
        let detail = match active {
            Active::Net => match self.net.heal() {
                Ok(()) => "network healed".to_string(),
                Err(e) => format!("network heal failed: {e}"),
            },
            Active::Killed(v) => {
                let mut c = self.cluster.lock().await;
                let errors: Vec<String> = v
                    .iter()
                    .filter_map(|id| c.start(*id).err().map(|e| format!("node {id}: {e}")))
                    .collect();
                format!("restarted {v:?} {}", errors.join("; "))
            }
            Active::Paused(v) => {
                let c = self.cluster.lock().await;
                for id in &v {
                    c.resume(*id);
                }
                format!("SIGCONT {v:?}")
            }
            Active::Drained(id) => {
                let held = match &self.client {
                    Some(c) => match c.node_status_at_addr(&crate::cluster::addr(id)).await {
                        Ok(st) => Ok(st.shards.iter().map(|s| s.shard_id).collect()),
                        Err(e) => Err(e.to_string()),
                    },
                    None => Err("no client".into()),
                };
                self.cluster.lock().await.retire(id);
                let detail =
                    format!("drained node {id} (running shards {held:?}) stopped and retired");
                self.drained.push((id, held));
                detail
            }
            Active::Skewed(id) => {
                let mut c = self.cluster.lock().await;
                c.kill9(id);
                c.skew_ms.remove(&id);
                match c.start(id) {
                    Ok(()) => format!("node {id} restarted without skew"),
                    Err(e) => format!("node {id} restart failed: {e}"),
                }
            }
        };
        self.log("heal", detail);
    }

    /// Strikes and heals until `stop` is set: wait 1–3 s, fault for 2–5 s, heal.
    pub async fn run(mut self, stop: Arc<std::sync::atomic::AtomicBool>) -> Self {
        use std::sync::atomic::Ordering;
        if self.kinds.is_empty() {
            return self;
        }
        while !stop.load(Ordering::Relaxed) {
            let quiet = self.rng.random_range(1_000..3_000u64);
            sleep_unless(&stop, quiet).await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            self.strike().await;
            let hold = self.rng.random_range(2_000..5_000u64);
            sleep_unless(&stop, hold).await;
            self.heal().await;
        }
        self.heal().await;
        self.finish_moves().await;
        self
    }
}

async fn sleep_unless(stop: &std::sync::atomic::AtomicBool, ms: u64) {
    let until = tokio::time::Instant::now() + Duration::from_millis(ms);
    while tokio::time::Instant::now() < until && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
