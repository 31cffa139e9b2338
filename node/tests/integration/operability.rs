//! Operability on real clusters: Prometheus metrics after traffic, gRPC reflection
//! and health, overload (admission control), and SIGTERM on a leader under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use stockpile_client::proto as pb;
use stockpile_client::proto::admin_client::AdminClient;
use stockpile_client::proto::inventory_client::InventoryClient;
use stockpile_client::{Error, new_request_id};

/// The value of the first sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_are_served_after_traffic() {
    let cluster = TestCluster::start(Options::default());
    let client = cluster.client().await;
    let leaders = cluster.wait_leaders(&client).await;
    client.set_stock("apple-m", 100).await.expect("set");
    for _ in 0..20 {
        client.decrement("apple-m", 1).await.expect("decrement");
    }
    let _ = client.decrement("apple-m", 1_000).await;
    // Gauges and totals are published every 2 s: poll until they are.
    let leader = leaders[&1];
    let started = Instant::now();
    let text = loop {
        let text = scrape(&cluster.metrics_addrs[&leader]).await;
        if sample(&text, "stockpile_raft_applied_index{shard_id=\"1\"}").unwrap_or(0.0) >= 20.0 {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no gauges:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ok = sample(
        &text,
        "stockpile_requests_total{rpc=\"batch\",reason=\"OK\"}",
    )
    .unwrap_or(0.0)
        + sample(
            &text,
            "stockpile_requests_total{rpc=\"decrement\",reason=\"OK\"}",
        )
        .unwrap_or(0.0);
    assert!(ok >= 1.0, "request counter by RPC and reason:\n{text}");
    assert!(
        text.contains("stockpile_batch_operations_total{reason=\"INSUFFICIENT_STOCK\"}")
            || text.contains("reason=\"INSUFFICIENT_STOCK\""),
        "refusals are counted by reason"
    );
    assert!(
        text.contains("stockpile_request_duration_seconds_bucket{"),
        "latency histogram"
    );
    assert_eq!(
        sample(&text, "stockpile_raft_is_leader{shard_id=\"1\"}"),
        Some(1.0)
    );
    assert!(
        sample(&text, "stockpile_raft_applied_index{shard_id=\"1\"}").unwrap_or(0.0) >= 20.0,
        "applied index gauge"
    );
    assert!(sample(&text, "stockpile_raft_term{shard_id=\"1\"}").unwrap_or(0.0) >= 1.0);
    assert!(
        text.contains("stockpile_raft_replication_lag_entries{"),
        "replication lag per follower"
    );
    let appends = sample(&text, "stockpile_log_appends_total").unwrap_or(0.0);
    let syncs = sample(&text, "stockpile_log_syncs_total").unwrap_or(0.0);
    assert!(
        appends > 0.0 && syncs > 0.0 && syncs <= appends,
        "appends {appends}, syncs {syncs}"
    );
    assert!(text.contains("stockpile_log_sync_duration_seconds_bucket"));
    assert!(
        text.contains("stockpile_log_append_duration_seconds_bucket"),
        "log append latency"
    );
    assert!(
        text.contains("stockpile_raft_entry_ops_bucket"),
        "ops per entry histogram"
    );
    assert!(text.contains("stockpile_proposals_in_flight{shard_id=\"1\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reflection_lists_the_services_and_health_reports_serving() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let cluster = TestCluster::start(Options::default());
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    let addr = cluster.addrs[&1].clone();
    let mut reflection = ServerReflectionClient::new(cluster.channel(&addr).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let first = responses
        .message()
        .await
        .expect("stream")
        .expect("a response");
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("not a service list: {first:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "stockpile.v1.Inventory",
        "stockpile.v1.Admin",
        "stockpile.v1.Raft",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    // The same list through v1alpha, for older tools.
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as Alpha;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
        let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(AlphaRequest::ListServices(String::new())),
        };
        let first = Alpha::new(cluster.channel(&addr).await)
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .expect("v1alpha reflection")
            .into_inner()
            .message()
            .await
            .expect("stream")
            .expect("a response");
        let Some(AlphaResponse::ListServicesResponse(list)) = first.message_response else {
            panic!("not a service list: {first:?}")
        };
        let alpha: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert_eq!(alpha, names, "v1alpha lists what v1 lists");
    }
    // Health turns SERVING on the node's own tick once it has joined every shard,
    // which may be just after the client saw leaders.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(cluster.channel(&addr).await);
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "stockpile.v1.Inventory".into(),
            })
            .await
            .expect("health check")
            .into_inner();
        if status.status == serving {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not SERVING within 10 s: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Memory bound stated for a node under this overload test.
const RSS_BOUND_BYTES: u64 = 512 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_is_refused_with_retry_after_while_the_node_stays_responsive() {
    let admission = "[admission]\nclient_writes_per_s = 2000\nclient_write_burst = 200\nnode_writes_in_flight_max = 256\n";
    let cluster = TestCluster::start(Options {
        extra_toml: format!("{admission}[server]\nshard_queue_max = 512\n"),
        ..Default::default()
    });
    let client = cluster.client().await;
    let leaders = cluster.wait_leaders(&client).await;
    const STOCK: u64 = 1_000_000_000;
    client.set_stock("apple-load", STOCK).await.expect("set");
    let leader_addr = cluster.addrs[&leaders[&1]].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, limited, unknown, bad_retry_after) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    // 256 generators with no retries, far beyond the 2,000/s this identity is admitted.
    let channel = cluster
        .endpoint_as(&leader_addr, "client-loadgen")
        .connect_lazy();
    let generators: Vec<_> = (0..256)
        .map(|_| {
            let (stop, ok, limited, unknown, bad, lat, ch) = (
                stop.clone(),
                ok.clone(),
                limited.clone(),
                unknown.clone(),
                bad_retry_after.clone(),
                latencies.clone(),
                channel.clone(),
            );
            tokio::spawn(async move {
                let mut c = InventoryClient::new(ch);
                while !stop.load(Ordering::Relaxed) {
                    let mut req = tonic::Request::new(pb::DecrementRequest {
                        request_id: new_request_id().to_vec(),
                        sku: "apple-load".into(),
                        quantity: 1,
                    });
                    req.set_timeout(Duration::from_secs(5));
                    let started = Instant::now();
                    match c.decrement(req).await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            lat.lock().expect("lock").push(started.elapsed());
                        }
                        Err(s) => {
                            use prost::Message;
                            match pb::ErrorDetail::decode(s.details())
                                .map(|d| (d.reason(), d.retry_after_ms))
                            {
                                Ok((pb::Reason::RateLimited, retry_after)) => {
                                    limited.fetch_add(1, Ordering::Relaxed);
                                    if retry_after == 0 {
                                        bad.fetch_add(1, Ordering::Relaxed);
                                    }
                                    assert_eq!(s.code(), tonic::Code::ResourceExhausted);
                                }
                                _ => {
                                    unknown.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                }
            })
        })
        .collect();
    // Throughout the overload: health and admin calls on every node answer within a
    // second, and no node's memory grows past the bound.
    let started = Instant::now();
    let mut worst_probe = Duration::ZERO;
    let mut worst_rss = 0u64;
    while started.elapsed() < Duration::from_secs(8) {
        for (id, addr) in &cluster.addrs {
            let t = Instant::now();
            let probe = async {
                let channel = cluster
                    .endpoint(addr)
                    .connect()
                    .await
                    .map_err(|e| e.to_string())?;
                let mut h = tonic_health::pb::health_client::HealthClient::new(channel.clone());
                h.check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map_err(|e| e.to_string())?;
                let mut a = AdminClient::new(channel);
                a.node_status(pb::NodeStatusRequest {})
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            };
            match tokio::time::timeout(Duration::from_secs(1), probe).await {
                Ok(Ok(())) => worst_probe = worst_probe.max(t.elapsed()),
                Ok(Err(e)) => panic!("node {id} health/admin failed under load: {e}"),
                Err(_) => panic!("node {id} health/admin took over a second under load"),
            }
            worst_rss = worst_rss.max(rss_bytes(cluster.pid(*id)));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for g in generators {
        g.await.expect("generator");
    }
    let (ok, limited, unknown) = (
        ok.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
        unknown.load(Ordering::Relaxed),
    );
    let mut lat = latencies.lock().expect("lock").clone();
    lat.sort();
    let p99 = lat.get(lat.len() * 99 / 100).copied().unwrap_or_default();
    eprintln!(
        "overload: {ok} admitted, {limited} RATE_LIMITED, {unknown} other; admitted p99 {p99:?}; worst health/admin probe {worst_probe:?}; worst RSS {} MiB",
        worst_rss >> 20
    );
    assert!(
        limited > ok,
        "most of the offered load was refused: {limited} limited vs {ok} admitted"
    );
    assert_eq!(
        bad_retry_after.load(Ordering::Relaxed),
        0,
        "every RATE_LIMITED carries a retry-after"
    );
    assert!(
        worst_rss < RSS_BOUND_BYTES,
        "RSS {} MiB over the {} MiB bound",
        worst_rss >> 20,
        RSS_BOUND_BYTES >> 20
    );
    assert!(
        p99 < Duration::from_secs(2),
        "admitted requests kept a bounded p99: {p99:?}"
    );
    // Drain check: every acknowledged sale was applied, nothing more than could have been.
    let left = must_get(&client, "apple-load")
        .await
        .expect("present")
        .on_hand;
    let taken = STOCK - left;
    assert!(
        taken >= ok && taken <= ok + unknown,
        "taken {taken}, acknowledged {ok}, unknown {unknown}"
    );
    // Throughput recovers once the load drops: the first decrement is admitted within
    // the client's deadline (it waits out any retry-after), then every one is.
    let recovered = stockpile_client::Client::builder()
        .seeds(cluster.addrs.values().cloned())
        .tls(cluster.tls_as(Some("loadgen")))
        .request_timeout(Duration::from_secs(5))
        .build()
        .await
        .expect("client");
    for _ in 0..50 {
        recovered
            .decrement("apple-load", 1)
            .await
            .expect("admitted again after the overload");
    }
    // After traffic, refusals and recovery: every metric the monitoring assets name
    // is exported by the nodes.
    let mut exported = String::new();
    for addr in cluster.metrics_addrs.values() {
        exported += &scrape(addr).await;
    }
    for (file, name) in monitoring_metric_names() {
        assert!(
            exported.contains(&name),
            "deploy/monitoring/{file} names {name}, which no node exports"
        );
    }
}

/// Every `stockpile_*` metric named in the dashboard's and the alert rules' queries.
fn monitoring_metric_names() -> Vec<(&'static str, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring");
    let mut names = Vec::new();
    for file in ["grafana-dashboard.json", "alerts.yml"] {
        let text = std::fs::read_to_string(dir.join(file)).expect("monitoring asset");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("stockpile_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(tail.len());
            let name = tail[..end].to_string();
            if !names.iter().any(|(_, n)| *n == name) {
                names.push((file, name));
            }
            rest = &tail[end..];
        }
    }
    assert!(names.len() >= 10, "queries found: {names:?}");
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_on_a_leader_under_load_exits_cleanly_and_loses_nothing() {
    let mut cluster = TestCluster::start(Options::default());
    let client = cluster.client().await;
    let leaders = cluster.wait_leaders(&client).await;
    let victim = leaders[&1];
    let skus: Vec<String> = skus_on_every_shard("term", 8);
    const STOCK: u64 = 1_000_000;
    for s in &skus {
        client.set_stock(s, STOCK).await.expect("set");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = skus
        .iter()
        .cloned()
        .map(|sku| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut acked, mut unknown) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    match client.decrement(&sku, 1).await {
                        Ok(_) => acked += 1,
                        Err(Error::OutcomeUnknown { .. }) => unknown += 1,
                        Err(e) => assert!(e.is_definite(), "{sku}: {e}"),
                    }
                }
                (sku, acked, unknown)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    assert_eq!(cluster.stop(victim), Some(0), "SIGTERM exits 0");
    eprintln!("node {victim} stopped {:?} after SIGTERM", t.elapsed());
    let after = cluster.wait_leaders(&client).await;
    assert!(
        after.values().all(|l| *l != victim),
        "new leaders took over: {after:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let (sku, acked, unknown) = w.await.expect("worker");
        let taken = STOCK - must_get(&client, &sku).await.expect("present").on_hand;
        assert!(
            taken >= acked && taken <= acked + unknown,
            "{sku}: taken {taken}, acked {acked}, unknown {unknown}"
        );
    }
    // A restart is clean.
    cluster.start_node(victim);
    cluster.wait_converged(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bench_json_output_parses_and_its_drain_check_passes() {
    let cluster = TestCluster::start(Options::default());
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    // The CLI sits next to the node binary in the target directory.
    let cli =
        std::path::Path::new(env!("CARGO_BIN_EXE_stockpile-node")).with_file_name("stockpile");
    let endpoints: Vec<String> = cluster.addrs.values().cloned().collect();
    // A drain: 500 units, 8 clients, until the stock is gone.
    let out = tokio::process::Command::new(&cli)
        .envs(cluster.cli_env())
        .args([
            "--endpoints",
            &endpoints.join(","),
            "--json",
            "bench",
            "--workload",
            "hot",
            "--clients",
            "8",
            "--duration",
            "3",
            "--stock",
            "500",
        ])
        .output()
        .await
        .expect("run stockpile bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).expect("utf8");
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
    assert_eq!(v["workload"], "hot");
    assert_eq!(v["drain_check"]["ok"], true, "{v}");
    assert_eq!(
        v["drain_check"]["acked"], 500,
        "exactly the stock was sold: {v}"
    );
    assert_eq!(v["drain_check"]["final"], 0);
    assert!(
        v["errors"]["INSUFFICIENT_STOCK"].as_u64().unwrap_or(0) > 0,
        "the rest were refused: {v}"
    );
    assert!(v["latency_us"]["p99"].as_u64().is_some());
}
