//! A test harness that runs real `stockpile-node` processes on loopback, each with
//! its own data directory under a temporary directory, and drives them through the
//! client library. Clusters of different tests never run at once (a process-wide
//! lock): the machines are small and the timings would interfere.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use stockpile_client::certs::{Authority, Grant, grant_identity};
use stockpile_client::{Client, ClientBuilder, Consistency, Error, Stock, TlsOptions};
use tempfile::TempDir;

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// SKUs that land on each of the four standard shards (boundaries g, n, t).
pub use stockpile_node::config::topology::SKU_PER_SHARD as SHARD_SKUS;
use stockpile_node::config::topology::{NodeSpec, Topology, standard_replicas};

/// Node ids past `Options::nodes` that get certificates too, for nodes added later
/// with `TestCluster::add_node`.
pub const SPARE_NODE_IDS: u64 = 3;

/// Raft groups in a test cluster: the meta shard and the four SKU shards.
pub const SHARDS_WITH_META: usize = 5;

#[derive(Clone, Debug)]
pub struct Options {
    pub nodes: u64,
    /// Regions of the nodes by id (default: all "local").
    pub regions: BTreeMap<u64, String>,
    pub extra_toml: String,
    pub snapshot_after_entries: u64,
    pub logs_kept_after_snapshot: u64,
    /// Replicas of shards 1..=4 (default: every node).
    pub shard_replicas: Option<[Vec<u64>; 4]>,
    /// Serve over mutual TLS with certificates from a fresh CA (default: on, as
    /// shipped); the harness's clients are the `admin` identity.
    pub tls: bool,
    /// Arguments every node is started with (e.g. a hidden test-only flag).
    pub node_args: Vec<&'static str>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            regions: BTreeMap::new(),
            extra_toml: String::new(),
            snapshot_after_entries: 20_000,
            shard_replicas: None,
            logs_kept_after_snapshot: 5_000,
            tls: true,
            node_args: Vec::new(),
        }
    }
}

pub struct TestCluster {
    pub dir: TempDir,
    pub config: PathBuf,
    pub addrs: BTreeMap<u64, String>,
    /// Each node's Prometheus endpoint (host:port).
    pub metrics_addrs: BTreeMap<u64, String>,
    children: BTreeMap<u64, Child>,
    /// Replicas of shards 1..=4.
    pub replicas: [Vec<u64>; 4],
    /// Replicas of the meta shard (0): seeded on the first three nodes the layout uses.
    pub meta_replicas: Vec<u64>,
    /// Whether the nodes serve TLS (certificates in `certs_dir()`).
    pub tls: bool,
    /// Arguments every node is started with (`Options::node_args`).
    node_args: Vec<&'static str>,
    /// Config files of nodes added later (`add_node`): the shared file plus their
    /// own entry; the other nodes' file does not list them.
    own_configs: BTreeMap<u64, PathBuf>,
    _lock: MutexGuard<'static, ()>,
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// A port that is free now, below Linux's ephemeral range (32768..61000): a port
/// from inside it may be taken by some outgoing connection (a node's, to its peers)
/// between this check and the node's bind.
fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1_000 {
        let port = 20_000 + (rand::random::<u16>() % 12_000);
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no free port in 20000..32000")
}

impl TestCluster {
    pub fn start(opts: Options) -> TestCluster {
        let lock = ONE_CLUSTER_AT_A_TIME
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let dir = TempDir::new().expect("temp dir");
        let addrs: BTreeMap<u64, String> = (1..=opts.nodes)
            .map(|id| (id, format!("127.0.0.1:{}", free_port())))
            .collect();
        let metrics_addrs: BTreeMap<u64, String> = (1..=opts.nodes)
            .map(|id| (id, format!("127.0.0.1:{}", free_port())))
            .collect();
        let nodes = addrs
            .iter()
            .map(|(id, addr)| NodeSpec {
                id: *id,
                addr: addr.clone(),
                metrics_addr: Some(metrics_addrs[id].clone()),
                region: opts
                    .regions
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| "local".into()),
                zone: format!("z{id}"),
                data_dir: dir.path().join(format!("node-{id}")),
            })
            .collect();
        let replicas = opts
            .shard_replicas
            .clone()
            .unwrap_or_else(|| standard_replicas(opts.nodes));
        let security = if opts.tls {
            issue_certs(&dir.path().join("certs"), opts.nodes + SPARE_NODE_IDS)
        } else {
            String::new()
        };
        let toml = Topology {
            cluster_name: "test".into(),
            nodes,
            replicas: Some(replicas.clone()),
            extra_toml: format!(
                "[raft]\nheartbeat_interval_ms = 50\nelection_timeout_min_ms = 600\nelection_timeout_max_ms = 1200\nsnapshot_after_entries = {}\nlogs_kept_after_snapshot = {}\n{}\n{security}",
                opts.snapshot_after_entries, opts.logs_kept_after_snapshot, opts.extra_toml
            ),
        }
        .to_toml();
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, toml).expect("write config");
        let used: std::collections::BTreeSet<u64> = replicas.iter().flatten().copied().collect();
        let meta_replicas = used
            .iter()
            .copied()
            .take(if used.len() >= 5 { 5 } else { 3 })
            .collect();
        let mut cluster = TestCluster {
            dir,
            config,
            addrs,
            metrics_addrs,
            children: BTreeMap::new(),
            replicas,
            meta_replicas,
            tls: opts.tls,
            node_args: opts.node_args.clone(),
            own_configs: BTreeMap::new(),
            _lock: lock,
        };
        for id in cluster.addrs.keys().copied().collect::<Vec<_>>() {
            cluster.start_node(id);
        }
        cluster
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    pub fn start_node(&mut self, id: u64) {
        self.start_node_with(id, &[]);
    }

    /// Starts node `id` with extra command-line arguments (e.g. `--join`).
    pub fn start_node_with(&mut self, id: u64, args: &[&str]) {
        assert!(!self.children.contains_key(&id), "node {id} is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("log file");
        let config = self.own_configs.get(&id).unwrap_or(&self.config);
        let child = Command::new(env!("CARGO_BIN_EXE_stockpile-node"))
            .arg("--config")
            .arg(config)
            .arg("--node-id")
            .arg(id.to_string())
            .args(&self.node_args)
            .args(args)
            .env("RUST_LOG", "info,openraft=error")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn stockpile-node");
        self.children.insert(id, child);
    }

    /// Prepares node `id`, which the cluster's shared config does not list: its own
    /// config file is the shared one plus its `[[nodes]]` entry (start it with
    /// `start_node_with(id, &["--join", ...])`). Certificates exist for
    /// `SPARE_NODE_IDS` ids past the first nodes.
    pub fn add_node(&mut self, id: u64) {
        assert!(!self.addrs.contains_key(&id), "node {id} exists");
        let addr = format!("127.0.0.1:{}", free_port());
        let metrics = format!("127.0.0.1:{}", free_port());
        let data_dir = self.dir.path().join(format!("node-{id}"));
        let mut text = std::fs::read_to_string(&self.config).expect("read config");
        text += &format!(
            "\n[[nodes]]\nid = {id}\naddr = {addr:?}\nregion = \"local\"\nzone = \"z{id}\"\ndata_dir = {:?}\nmetrics_addr = {metrics:?}\n",
            data_dir.display().to_string()
        );
        let path = self.dir.path().join(format!("cluster-node-{id}.toml"));
        std::fs::write(&path, text).expect("write config");
        self.own_configs.insert(id, path);
        self.addrs.insert(id, addr);
        self.metrics_addrs.insert(id, metrics);
    }

    /// `kill -9`: no chance to clean up.
    pub fn kill9(&mut self, id: u64) {
        let mut child = self.children.remove(&id).expect("node running");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(&mut self, id: u64) -> Option<i32> {
        let mut child = self.children.remove(&id).expect("node running");
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGSTOP: the node stops answering without closing its connections.
    pub fn pause(&self, id: u64) {
        signal(self.pid(id), "STOP");
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self, id: u64) {
        signal(self.pid(id), "CONT");
    }

    pub fn wipe(&self, id: u64) {
        let path = self.dir.path().join(format!("node-{id}"));
        if path.exists() {
            std::fs::remove_dir_all(path).expect("wipe data dir");
        }
    }

    /// Waits for node `id`'s process to exit by itself (a refused start); returns its
    /// exit code.
    pub fn wait_exit(&mut self, id: u64, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            let child = self.children.get_mut(&id).expect("node started");
            if let Ok(Some(status)) = child.try_wait() {
                self.children.remove(&id);
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "node {id} still runs after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The OS process id of a running node.
    pub fn pid(&self, id: u64) -> u32 {
        self.children[&id].id()
    }

    pub fn running(&self) -> Vec<u64> {
        self.children.keys().copied().collect()
    }

    pub async fn client(&self) -> Client {
        self.client_in(None).await
    }

    pub async fn client_in(&self, region: Option<&str>) -> Client {
        let mut b = self.builder();
        if let Some(r) = region {
            b = b.region(r);
        }
        self.client_with(b).await
    }

    /// Where the cluster's CA, node and client certificates and access file are.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// TLS trusting the cluster's CA, presenting the client certificate of `identity`
    /// (issued by `issue_client`), or none (for a token).
    pub fn tls_as(&self, identity: Option<&str>) -> TlsOptions {
        let dir = self.certs_dir();
        let files = identity.map(|n| {
            (
                dir.join(format!("client-{n}.pem")),
                dir.join(format!("client-{n}.key")),
            )
        });
        TlsOptions::from_files(
            &dir.join("ca.pem"),
            files.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        )
        .expect("client TLS files")
    }

    /// A builder for the whole cluster as the `admin` identity (TLS on) or anonymous.
    pub fn builder(&self) -> ClientBuilder {
        let b = Client::builder()
            .seeds(self.addrs.values().cloned())
            .request_timeout(Duration::from_secs(20));
        if self.tls {
            b.tls(self.tls_as(Some("admin")))
        } else {
            b
        }
    }

    /// The environment that makes the `stockpile` CLI the `admin` identity over TLS.
    pub fn cli_env(&self) -> Vec<(&'static str, PathBuf)> {
        if !self.tls {
            return Vec::new();
        }
        let dir = self.certs_dir();
        vec![
            ("STOCKPILE_CA", dir.join("ca.pem")),
            ("STOCKPILE_CERT", dir.join("client-admin.pem")),
            ("STOCKPILE_KEY", dir.join("client-admin.key")),
        ]
    }

    /// Issues a client certificate for `name` and grants it `role` on `prefixes`.
    pub fn issue_client(&self, name: &str, role: &str, prefixes: &[&str]) {
        let ca = Authority::open(&self.certs_dir()).expect("open CA");
        ca.issue_client(name, 30).expect("issue client certificate");
        grant_identity(
            &self.certs_dir().join("access.toml"),
            &Grant {
                name: name.into(),
                role: role.into(),
                prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            },
        )
        .expect("grant");
    }

    /// SIGHUP to every running node: certificates and access file are read again.
    pub fn reload_all(&self) {
        for id in self.running() {
            signal(self.pid(id), "HUP");
        }
    }

    /// A raw gRPC endpoint to `addr` (https as `admin` when TLS is on).
    pub fn endpoint(&self, addr: &str) -> tonic::transport::Endpoint {
        self.endpoint_as(addr, "client-admin")
    }

    /// A raw gRPC endpoint to `addr` presenting the certificate `stem` (`node-2`,
    /// `client-admin`) when TLS is on.
    pub fn endpoint_as(&self, addr: &str, stem: &str) -> tonic::transport::Endpoint {
        if !self.tls {
            return tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("endpoint");
        }
        let dir = self.certs_dir();
        let read = |f: &str| std::fs::read(dir.join(f)).expect("certificate file");
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.pem")))
            .identity(tonic::transport::Identity::from_pem(
                read(&format!("{stem}.pem")),
                read(&format!("{stem}.key")),
            ));
        tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .expect("endpoint")
            .tls_config(tls)
            .expect("TLS config")
    }

    /// A connected raw gRPC channel to `addr`.
    pub async fn channel(&self, addr: &str) -> tonic::transport::Channel {
        self.endpoint(addr).connect().await.expect("connect")
    }

    /// Builds `b`, retrying while the cluster is starting.
    pub async fn client_with(&self, b: ClientBuilder) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match b.clone().build().await {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("client not ready yet: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot build a client: {e}"),
            }
        }
    }

    /// Waits until every shard has a leader that the running nodes agree on; returns
    /// shard → leader.
    pub async fn wait_leaders(&self, client: &Client) -> BTreeMap<u64, u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let running = self.running();
        loop {
            if let Ok(status) = client.cluster_status().await {
                let mut leaders: BTreeMap<u64, u64> = BTreeMap::new();
                let mut agree = true;
                for v in status
                    .nodes
                    .iter()
                    .filter(|v| running.contains(&v.node.as_ref().map(|n| n.node_id).unwrap_or(0)))
                {
                    let Some(st) = &v.status else {
                        agree = false;
                        continue;
                    };
                    for sh in &st.shards {
                        if sh.leader_id == 0 || !running.contains(&sh.leader_id) {
                            agree = false;
                        }
                        if *leaders.entry(sh.shard_id).or_insert(sh.leader_id) != sh.leader_id {
                            agree = false;
                        }
                    }
                }
                if agree && leaders.len() >= SHARDS_WITH_META {
                    return leaders;
                }
            }
            assert!(
                Instant::now() < deadline,
                "shards did not settle on leaders within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The replicas of `shard` (0: the meta shard) as the test last adopted them.
    pub fn replicas_of(&self, shard: u64) -> &[u64] {
        match shard {
            0 => &self.meta_replicas,
            s => &self.replicas[(s - 1) as usize],
        }
    }

    /// Takes `now` (shard → voters, as the leaders report them) as the replicas.
    pub fn adopt(&mut self, now: &BTreeMap<u64, Vec<u64>>) {
        for (shard, voters) in now {
            match shard {
                0 => self.meta_replicas = voters.clone(),
                s => self.replicas[(*s - 1) as usize] = voters.clone(),
            }
        }
    }

    pub async fn leader_of(&self, client: &Client, shard_id: u64) -> u64 {
        self.wait_leaders(client).await[&shard_id]
    }

    /// Waits until every running replica of every shard has applied the same index
    /// and holds the same state (digest), and returns the digests.
    pub async fn wait_converged(&self, client: &Client) -> BTreeMap<u64, (u64, u64)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut views: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
            let mut ok = true;
            for id in self.running() {
                match client.shard_digests(id).await {
                    Ok(ds) => {
                        for d in ds {
                            views
                                .entry(d.shard_id)
                                .or_default()
                                .push((d.applied_index, d.digest));
                        }
                    }
                    Err(_) => ok = false,
                }
            }
            let running = self.running();
            let replicas_running = |shard: u64| {
                self.replicas_of(shard)
                    .iter()
                    .filter(|n| running.contains(n))
                    .count()
            };
            if ok
                && views.iter().all(|(shard, v)| {
                    v.len() == replicas_running(*shard) && v.windows(2).all(|w| w[0] == w[1])
                })
            {
                return views.into_iter().map(|(s, v)| (s, v[0])).collect();
            }
            assert!(
                Instant::now() < deadline,
                "replicas did not converge within 30 s: {views:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn print_logs(&self) {
        for id in self.addrs.keys() {
            if let Ok(text) = std::fs::read_to_string(self.log_path(*id)) {
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("--- node {id} log (last lines) ---");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        for (_, mut c) in std::mem::take(&mut self.children) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Client certificates every TLS test cluster has: name, role, SKU prefixes.
pub const STANDARD_IDENTITIES: [(&str, &str, &[&str]); 5] = [
    ("admin", "admin", &[]),
    ("writer", "writer", &[]),
    ("reader", "reader", &[]),
    ("loadgen", "writer", &[]),
    ("apple-writer", "writer", &["apple-"]),
];

/// A fresh CA in `dir` with a certificate for each node and each standard identity,
/// and the `[security]` section that uses them.
fn issue_certs(dir: &std::path::Path, nodes: u64) -> String {
    let ca = Authority::create(dir, "test").expect("create CA");
    for id in 1..=nodes {
        ca.issue_node(id, &[], 30).expect("issue node certificate");
    }
    let access = dir.join("access.toml");
    for (name, role, prefixes) in STANDARD_IDENTITIES {
        ca.issue_client(name, 30).expect("issue client certificate");
        let grant = Grant {
            name: name.to_string(),
            role: role.to_string(),
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        };
        grant_identity(&access, &grant).expect("grant");
    }
    let file = |f: &str| format!("{:?}", dir.join(f).display().to_string());
    format!(
        "[security]\ntls = true\nca = {}\ncert = {}\nkey = {}\naccess = {}\n",
        file("ca.pem"),
        file("node-{id}.pem"),
        file("node-{id}.key"),
        file("access.toml"),
    )
}

/// `n` SKUs named `<fruit>-<tag><i>`, spread round-robin over the four shards of the
/// local test config (split at `g`, `n`, `t`).
pub fn skus_on_every_shard(tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "{}-{tag}{i:02}",
                ["apple", "grape", "nectarine", "tomato"][i % 4]
            )
        })
        .collect()
}

/// Reads `sku` linearizably; panics on error.
pub async fn must_get(client: &Client, sku: &str) -> Option<Stock> {
    client
        .get_one(sku, Consistency::Linearizable)
        .await
        .unwrap_or_else(|e| panic!("get {sku}: {e}"))
}

/// Asserts `result` failed with the given reason.
pub fn must_fail_with<T: std::fmt::Debug>(result: Result<T, Error>, reason: &str) -> Error {
    match result {
        Ok(v) => panic!("expected {reason}, got success: {v:?}"),
        Err(e) => {
            assert_eq!(e.reason(), reason, "expected {reason}, got {e}");
            e
        }
    }
}

/// Retries `f` until it succeeds or `within` passes; returns the value and the time taken.
pub async fn eventually<T, F, Fut>(within: Duration, mut f: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return (v, start.elapsed()),
            Err(e) => {
                assert!(start.elapsed() < within, "not done within {within:?}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The Prometheus text of the metrics endpoint at `addr`.
pub async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read");
    assert!(
        body.starts_with("HTTP/1.1 200"),
        "{}",
        &body[..body.len().min(200)]
    );
    body
}
