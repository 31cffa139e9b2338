//! The cluster under test: node processes on their own loopback addresses
//! (127.0.0.11, .12, ...) inside the run's network namespace, and the nftables rules
//! that cut links between them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use stockpile_client::TlsOptions;
use stockpile_client::certs::{Authority, Grant, grant_identity};

pub const PORT: u16 = 7000;

pub fn ip(node: u64) -> String {
    format!("127.0.0.{}", 10 + node)
}

pub fn addr(node: u64) -> String {
    format!("{}:{PORT}", ip(node))
}

/// TLS of this run's clients (None: plaintext), set by `write_config`.
static CLIENT_TLS: RwLock<Option<TlsOptions>> = RwLock::new(None);

/// The nodes that are members now (started from the config or joined, not retired),
/// kept by `Cluster`: clients take their seeds from it.
static MEMBERS: RwLock<Vec<u64>> = RwLock::new(Vec::new());

/// Node ids beyond the config's that have certificates, for nodes that join during a
/// run (the membership nemesis replaces at most this many).
pub const SPARE_IDS: u64 = 4;

/// The nodes that are members now.
pub fn members() -> Vec<u64> {
    MEMBERS
        .read()
        .map(|m| m.clone())
        .unwrap_or_else(|p| p.into_inner().clone())
}

fn set_members(ids: Vec<u64>) {
    match MEMBERS.write() {
        Ok(mut m) => *m = ids,
        Err(p) => *p.into_inner() = ids,
    }
}

/// The TLS options clients of this run connect with.
pub fn client_tls() -> Option<TlsOptions> {
    CLIENT_TLS
        .read()
        .map(|t| t.clone())
        .unwrap_or_else(|p| p.into_inner().clone())
}

/// Makes the run's CA, node certificates (for the nodes' own addresses) and an
/// `admin` client certificate in `dir`, and returns the `[security]` section.
fn make_certs(dir: &Path, nodes: u64) -> std::io::Result<String> {
    let bad = |e: stockpile_client::certs::CertError| std::io::Error::other(e.to_string());
    let ca = Authority::create(dir, "jepsen").map_err(bad)?;
    for n in 1..=nodes + SPARE_IDS {
        ca.issue_node(n, &[ip(n)], 30).map_err(bad)?;
    }
    let admin = ca.issue_client("admin", 30).map_err(bad)?;
    let grant = Grant {
        name: "admin".into(),
        role: "admin".into(),
        prefixes: Vec::new(),
    };
    grant_identity(&dir.join("access.toml"), &grant).map_err(bad)?;
    let tls = TlsOptions::from_files(&ca.ca_path(), Some((&admin.cert, &admin.key)))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    match CLIENT_TLS.write() {
        Ok(mut t) => *t = Some(tls),
        Err(p) => *p.into_inner() = Some(tls),
    }
    let file = |f: &str| format!("{:?}", dir.join(f).display().to_string());
    Ok(format!(
        "[security]\ntls = true\nca = {}\ncert = {}\nkey = {}\naccess = {}\n",
        file("ca.pem"),
        file("node-{id}.pem"),
        file("node-{id}.key"),
        file("access.toml")
    ))
}

/// Writes the cluster config: `nodes` nodes and the standard four shards (split at
/// g, n, t; every shard on every node up to three nodes, three replicas each beyond),
/// over mutual TLS with certificates made for the run unless `plaintext`.
pub fn write_config(dir: &Path, nodes: u64, plaintext: bool) -> std::io::Result<PathBuf> {
    let security = if plaintext {
        String::new()
    } else {
        make_certs(&dir.join("certs"), nodes)?
    };
    use stockpile_node::config::topology::{NodeSpec, Topology};
    let t = Topology {
        cluster_name: "jepsen".into(),
        nodes: (1..=nodes)
            .map(|n| NodeSpec {
                id: n,
                addr: addr(n),
                metrics_addr: None,
                region: "local".into(),
                zone: format!("z{n}"),
                data_dir: dir.join(format!("data/node-{n}")),
            })
            .collect(),
        replicas: None,
        extra_toml: concat!(
            "[raft]\nheartbeat_interval_ms = 50\nelection_timeout_min_ms = 500\n",
            "election_timeout_max_ms = 1000\nsnapshot_after_entries = 2000\n",
            "logs_kept_after_snapshot = 500\n",
            "[server]\nsweep_interval_ms = 200\npropose_timeout_ms = 3000\nread_timeout_ms = 2000\n",
            // A node declared dead whose removal did not finish comes back with
            // replicas its shards no longer name: collected within the checks' wait.
            "replica_gc_after_ms = 10000\n"
        )
        .to_string()
            + &security,
    };
    let path = dir.join("cluster.toml");
    std::fs::write(&path, t.to_toml())?;
    Ok(path)
}

pub struct Cluster {
    pub dir: PathBuf,
    pub config: PathBuf,
    /// The members now: the config's nodes, plus joined ones, minus retired ones.
    members: std::collections::BTreeSet<u64>,
    /// The next id a joining node gets (ids are never reused).
    next_id: u64,
    /// The highest id with a certificate.
    ids_max: u64,
    /// Each joined node's own config (the cluster's file plus its `[[nodes]]` entry).
    joined: BTreeMap<u64, PathBuf>,
    pub node_bin: PathBuf,
    pub bug: Option<String>,
    children: BTreeMap<u64, Child>,
    /// Clock skew per node (test-only setting, applied at start).
    pub skew_ms: BTreeMap<u64, i64>,
}

impl Cluster {
    pub fn new(
        dir: PathBuf,
        config: PathBuf,
        nodes: u64,
        node_bin: PathBuf,
        bug: Option<String>,
    ) -> Cluster {
        set_members((1..=nodes).collect());
        Cluster {
            dir,
            config,
            members: (1..=nodes).collect(),
            next_id: nodes + 1,
            ids_max: nodes + SPARE_IDS,
            joined: BTreeMap::new(),
            node_bin,
            bug,
            children: BTreeMap::new(),
            skew_ms: BTreeMap::new(),
        }
    }

    /// A scenario's cluster (no planted bug): the config written into `dir` and every
    /// node started, from `args.node_bin` or the `stockpile-node` next to this binary.
    pub fn start_scenario(args: &crate::Args, dir: &Path) -> Result<Cluster, String> {
        let node_bin = args.node_bin.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .map(|p| p.with_file_name("stockpile-node"))
                .unwrap_or_else(|_| "stockpile-node".into())
        });
        let config =
            write_config(dir, args.nodes, args.plaintext).map_err(|e| format!("config: {e}"))?;
        let mut nodes = Cluster::new(dir.to_path_buf(), config, args.nodes, node_bin, None);
        for id in nodes.ids() {
            nodes
                .start(id)
                .map_err(|e| format!("starting node {id}: {e}"))?;
        }
        Ok(nodes)
    }

    pub fn ids(&self) -> Vec<u64> {
        self.members.iter().copied().collect()
    }

    /// Starts a new node, in no other node's config, that joins through the members;
    /// returns its id, or None when the spare ids (certificates) are used up.
    pub fn join_new(&mut self) -> Result<Option<u64>, String> {
        let id = self.next_id;
        if id > self.ids_max {
            return Ok(None);
        }
        self.next_id += 1;
        let mut text = std::fs::read_to_string(&self.config).map_err(|e| e.to_string())?;
        text += &format!(
            "\n[[nodes]]\nid = {id}\naddr = {:?}\nregion = \"local\"\nzone = \"z{id}\"\ndata_dir = {:?}\n",
            addr(id),
            self.dir
                .join(format!("data/node-{id}"))
                .display()
                .to_string()
        );
        let path = self.dir.join(format!("cluster-node-{id}.toml"));
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        self.joined.insert(id, path);
        self.members.insert(id);
        set_members(self.ids());
        self.start(id)
            .map_err(|e| format!("starting node {id}: {e}"))?;
        Ok(Some(id))
    }

    /// Stops node `id` for good (drained or declared dead): no longer a member.
    pub fn retire(&mut self, id: u64) {
        self.kill9(id);
        self.members.remove(&id);
        set_members(self.ids());
    }

    pub fn running(&self) -> Vec<u64> {
        self.children.keys().copied().collect()
    }

    pub fn start(&mut self, id: u64) -> std::io::Result<()> {
        if self.children.contains_key(&id) {
            return Ok(());
        }
        std::fs::create_dir_all(self.dir.join("logs"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("logs/node-{id}.log")))?;
        let mut cmd = Command::new(&self.node_bin);
        cmd.arg("--config")
            .arg(self.joined.get(&id).unwrap_or(&self.config))
            .arg("--node-id")
            .arg(id.to_string());
        if self.joined.contains_key(&id) {
            let via: Vec<String> = self
                .ids()
                .into_iter()
                .filter(|m| *m != id)
                .map(addr)
                .collect();
            cmd.arg("--join").arg(via.join(","));
        }
        cmd.env("RUST_LOG", "info,openraft=error");
        if let Some(skew) = self.skew_ms.get(&id) {
            cmd.arg(format!("--clock-skew-ms={skew}"));
        }
        if let Some(bug) = &self.bug {
            cmd.env("STOCKPILE_PLANTED_BUG", bug);
        }
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn()?;
        self.children.insert(id, child);
        Ok(())
    }

    pub fn kill9(&mut self, id: u64) {
        if let Some(mut c) = self.children.remove(&id) {
            // A paused process must be resumed to die promptly on some kernels.
            signal(c.id(), "CONT");
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pause(&self, id: u64) {
        if let Some(c) = self.children.get(&id) {
            signal(c.id(), "STOP");
        }
    }

    pub fn resume(&self, id: u64) {
        if let Some(c) = self.children.get(&id) {
            signal(c.id(), "CONT");
        }
    }

    /// SIGTERM every node and wait (then SIGKILL).
    pub fn stop_all(&mut self) {
        for c in self.children.values() {
            signal(c.id(), "CONT");
            signal(c.id(), "TERM");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for (_, mut c) in std::mem::take(&mut self.children) {
            loop {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.children) {
            signal(c.id(), "CONT");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Kills any node process still running with this run's config (after a crash of
/// the harness itself).
pub fn kill_leftovers(run_dir: &Path) {
    let needle = run_dir.join("cluster.toml").display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(&needle)
        {
            signal(pid, "KILL");
        }
    }
}

/// Runs a command inside the namespace, failing with its stderr.
pub fn sh(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    use std::io::Write;
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(|e| format!("{program}: {e}"))?;
    if let (Some(text), Some(mut si)) = (stdin, child.stdin.take()) {
        si.write_all(text.as_bytes())
            .map_err(|e| format!("{program}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The network inside the namespace: loopback up, and one nftables table whose input
/// chain drops the cut links.
pub struct Net;

impl Net {
    pub fn init() -> Result<Net, String> {
        sh("ip", &["link", "set", "lo", "up"], None)?;
        Net.apply(&[], None)?;
        Ok(Net)
    }

    /// Replaces the rules: drop every packet from `a` to `b` for each `(a, b)` in
    /// `cut`; with `loss` = (nodes, pct), additionally drop pct% of the packets
    /// between any two of those nodes.
    pub fn apply(&self, cut: &[(u64, u64)], loss: Option<(&[u64], u32)>) -> Result<(), String> {
        let mut rules = String::new();
        for (a, b) in cut {
            rules += &format!("    ip saddr {} ip daddr {} drop\n", ip(*a), ip(*b));
        }
        if let Some((nodes, pct)) = loss {
            let set = nodes.iter().map(|n| ip(*n)).collect::<Vec<_>>().join(", ");
            rules += &format!(
                "    ip saddr {{ {set} }} ip daddr {{ {set} }} numgen random mod 100 < {pct} drop\n"
            );
        }
        let script = format!(
            "table inet stockpile_jepsen\ndelete table inet stockpile_jepsen\ntable inet stockpile_jepsen {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n{rules}  }}\n}}\n"
        );
        sh("nft", &["-f", "-"], Some(&script))
    }

    pub fn heal(&self) -> Result<(), String> {
        self.apply(&[], None)
    }

    /// Replaces the rules: every link from one node to another (each direction of each
    /// pair on its own meter) carries at most `bytes_per_s`; packets over it are dropped,
    /// as a slow, congested link would.
    pub fn rate_limit(&self, nodes: &[u64], bytes_per_s: u64) -> Result<(), String> {
        let kbytes = (bytes_per_s / 1024).max(1);
        let burst = (kbytes / 4).max(16);
        let mut rules = String::new();
        for a in nodes {
            for b in nodes.iter().filter(|b| *b != a) {
                rules += &format!(
                    "    ip saddr {} ip daddr {} limit rate over {kbytes} kbytes/second burst {burst} kbytes drop\n",
                    ip(*a),
                    ip(*b)
                );
            }
        }
        let script = format!(
            "table inet stockpile_jepsen\ndelete table inet stockpile_jepsen\ntable inet stockpile_jepsen {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n{rules}  }}\n}}\n"
        );
        sh("nft", &["-f", "-"], Some(&script))
    }
}

/// A client of the cluster once every node answers and every shard has a leader.
/// On timeout the error names what was still missing when it was last seen.
pub async fn wait_ready(within: Duration) -> Result<stockpile_client::Client, String> {
    let deadline = Instant::now() + within;
    let mut missing = String::from("no node answered");
    loop {
        if let Ok(c) = crate::workload::client(0, Duration::from_secs(3)).await
            && let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_secs(3), c.cluster_status()).await
        {
            missing = not_ready(&s);
            if missing.is_empty() {
                return Ok(c);
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the cluster did not become ready within {} s ({missing})",
                within.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What keeps the cluster from being ready: unreachable nodes and replicas that know
/// no leader, as "node N unreachable; node N shard S: no leader"; empty when ready.
fn not_ready(s: &stockpile_client::proto::ClusterStatusReply) -> String {
    let mut missing = Vec::new();
    for v in &s.nodes {
        if !v.reachable {
            missing.push(format!("node {} unreachable", node_id(v)));
        }
        let leaderless = v.status.iter().flat_map(|st| st.shards.iter());
        for sh in leaderless.filter(|sh| sh.leader_id == 0) {
            missing.push(format!(
                "node {} shard {}: no leader ({})",
                node_id(v),
                sh.shard_id,
                sh.role
            ));
        }
    }
    missing.join("; ")
}

fn node_id(v: &stockpile_client::proto::NodeView) -> u64 {
    v.node.as_ref().map_or(0, |n| n.node_id)
}
