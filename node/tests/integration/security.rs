//! Integration tests of security on real TLS clusters: who gets in (node and client
//! certificates of this cluster's CA, bearer tokens), what each role may do, SKU
//! scopes over whole batches, and certificate rotation on SIGHUP without a restart.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use prost::Message;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use stockpile_client::certs::{Authority, Grant, create_token, grant_identity};
use stockpile_client::proto as pb;
use stockpile_client::{ClientBuilder, Consistency, Error, Mutation, TlsOptions};

/// Builds `b` and reads one SKU: the first error, from either.
async fn try_read(b: ClientBuilder, sku: &str) -> Result<(), Error> {
    let client = b.build().await?;
    client.get_one(sku, Consistency::Linearizable).await?;
    Ok(())
}

/// A builder for the cluster with short deadlines, so refusals come back quickly.
fn quick(cluster: &TestCluster) -> ClientBuilder {
    stockpile_client::Client::builder()
        .seeds(cluster.addrs.values().cloned())
        .request_timeout(Duration::from_secs(3))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strangers_are_refused_and_each_role_does_only_what_it_may() {
    let cluster = TestCluster::start(Options::default());
    let admin = cluster.client().await;
    cluster.wait_leaders(&admin).await;
    admin.set_stock("apple-sec", 10).await.expect("set");
    admin.set_stock("grape-sec", 10).await.expect("set");
    admin.set_stock("banana-sec", 10).await.expect("set");
    let on_hand = |sku: &'static str| {
        let admin = admin.clone();
        async move { must_get(&admin, sku).await.expect("present").on_hand }
    };

    // Plaintext, with the store's library: refused, UNAUTHENTICATED, saying why.
    let e = try_read(quick(&cluster), "apple-sec")
        .await
        .expect_err("refused");
    assert_eq!(e.reason(), "UNAUTHENTICATED", "{e}");
    assert!(e.to_string().contains("requires TLS"), "{e}");
    // Plaintext with a raw gRPC stub: the same answer, and nothing changes.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.addrs[&1]))
        .expect("endpoint")
        .connect()
        .await
        .expect("TCP connects");
    let status = pb::inventory_client::InventoryClient::new(plain)
        .set_stock(pb::SetStockRequest {
            request_id: vec![1; 16],
            sku: "apple-sec".into(),
            on_hand: 0,
            expected_version: None,
        })
        .await
        .expect_err("plaintext refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // A client certificate from another CA: the handshake fails, nothing is read.
    let other = tempfile::TempDir::new().expect("temp dir");
    let other_ca = Authority::create(other.path(), "elsewhere").expect("other CA");
    let stranger = other_ca.issue_client("admin", 1).expect("issue");
    let tls = TlsOptions::from_files(
        &cluster.certs_dir().join("ca.pem"),
        Some((&stranger.cert, &stranger.key)),
    )
    .expect("TLS files");
    let e = try_read(quick(&cluster).tls(tls), "apple-sec")
        .await
        .expect_err("refused");
    // (the SKU exists: any answer but an error would have been a read)
    eprintln!("a certificate of another CA: {e}");
    assert!(
        matches!(e.reason(), "UNAVAILABLE" | "UNAUTHENTICATED"),
        "{e}"
    );

    // A reader reads, and cannot write: PERMISSION_DENIED naming the identity, and
    // the stock is unchanged.
    let reader = cluster
        .client_with(cluster.builder().tls(cluster.tls_as(Some("reader"))))
        .await;
    assert_eq!(
        must_get(&reader, "apple-sec")
            .await
            .expect("present")
            .on_hand,
        10
    );
    let e = must_fail_with(reader.set_stock("apple-sec", 0).await, "PERMISSION_DENIED");
    assert!(
        matches!(&e, Error::PermissionDenied { identity, .. } if identity == "reader"),
        "{e}"
    );
    must_fail_with(reader.decrement("apple-sec", 1).await, "PERMISSION_DENIED");
    assert_eq!(on_hand("apple-sec").await, 10, "a reader changed nothing");

    // A writer writes, and cannot call operator RPCs.
    let writer = cluster
        .client_with(cluster.builder().tls(cluster.tls_as(Some("writer"))))
        .await;
    writer
        .decrement("apple-sec", 1)
        .await
        .expect("writer decrements");
    writer.cluster_status().await.expect("writers see status");
    must_fail_with(writer.transfer_leader(1, 2).await, "PERMISSION_DENIED");
    must_fail_with(writer.allow_rebuild(2).await, "PERMISSION_DENIED");

    // One op outside a scoped identity's prefixes refuses the whole batch (one Batch
    // RPC: SKUs of one shard; the client sends a batch over several shards as one
    // RPC per shard, each authorized whole).
    let scoped = cluster
        .client_with(cluster.builder().tls(cluster.tls_as(Some("apple-writer"))))
        .await;
    let set = |sku: &str, on_hand| Mutation::SetStock {
        sku: sku.into(),
        on_hand,
        expected_version: None,
    };
    let results = scoped
        .batch(vec![set("apple-sec", 1), set("banana-sec", 1)])
        .await
        .expect("one answer per op");
    for r in &results {
        let e = r.as_ref().expect_err("every op of the batch is refused");
        assert_eq!(e.reason(), "PERMISSION_DENIED", "{e}");
        assert!(e.to_string().contains("banana-sec"), "{e}");
    }
    assert_eq!(on_hand("apple-sec").await, 9, "no op of the batch applied");
    assert_eq!(
        on_hand("banana-sec").await,
        10,
        "no op of the batch applied"
    );
    let results = scoped
        .batch(vec![set("apple-sec", 7)])
        .await
        .expect("in scope");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    must_fail_with(scoped.set_stock("grape-sec", 0).await, "PERMISSION_DENIED");

    client_certificates_cannot_speak_raft(&cluster).await;
    tokens_work_until_they_expire(&cluster).await;

    // Every denial was counted.
    let mut denied = 0.0;
    for addr in cluster.metrics_addrs.values() {
        let text = scrape(addr).await;
        denied += text
            .lines()
            .filter(|l| l.starts_with("stockpile_auth_denied_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    assert!(denied >= 8.0, "denials counted: {denied}");
}

/// A client certificate (even an admin's) is refused by the Raft service, and a node
/// certificate cannot send for another node.
async fn client_certificates_cannot_speak_raft(cluster: &TestCluster) {
    let message = pb::RaftMessage {
        shard_id: 1,
        from_node_id: 3,
        payload: Vec::new(),
        to_replica_id: 1,
    };
    let addr = &cluster.addrs[&1];
    for (stem, why) in [
        ("client-admin", "only nodes"),
        ("node-2", "cannot send for node 3"),
    ] {
        let channel = cluster
            .endpoint_as(addr, stem)
            .connect()
            .await
            .expect("connect");
        let status = pb::raft_client::RaftClient::new(channel)
            .vote(message.clone())
            .await
            .expect_err("refused");
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{stem}: {status:?}"
        );
        assert!(status.message().contains(why), "{stem}: {status:?}");
    }
    assert!(!message.encode_to_vec().is_empty());
}

/// A bearer token (over TLS, without a client certificate) is its grant until it
/// expires; an expired one is UNAUTHENTICATED saying so.
async fn tokens_work_until_they_expire(cluster: &TestCluster) {
    let access = cluster.certs_dir().join("access.toml");
    let grant = |name: &str| Grant {
        name: name.into(),
        role: "writer".into(),
        prefixes: Vec::new(),
    };
    let valid = create_token(&access, &grant("checkout"), now_ms() + 3_600_000).expect("token");
    let expired = create_token(&access, &grant("old-checkout"), now_ms() - 1_000).expect("token");
    cluster.reload_all();
    let with = |token: &str| quick(cluster).tls(cluster.tls_as(None)).token(token);
    // Every node has read the access file again once the token works on each.
    for addr in cluster.addrs.values() {
        let one = stockpile_client::Client::builder()
            .seeds([addr.clone()])
            .request_timeout(Duration::from_secs(3))
            .tls(cluster.tls_as(None))
            .token(&valid);
        let (_, took) = eventually(Duration::from_secs(10), || async {
            one.clone().build().await?.cluster_status().await
        })
        .await;
        assert!(took < Duration::from_secs(10));
    }
    let client = with(&valid).build().await.expect("a valid token gets in");
    client.decrement("apple-sec", 1).await.expect("as writer");
    let e = try_read(with(&expired), "apple-sec")
        .await
        .expect_err("refused");
    assert_eq!(e.reason(), "UNAUTHENTICATED", "{e}");
    assert!(e.to_string().contains("expired"), "{e}");
    let e = try_read(with("spk_0000"), "apple-sec")
        .await
        .expect_err("refused");
    assert_eq!(e.reason(), "UNAUTHENTICATED", "{e}");
}

/// The certificate a node presents to a new connection (DER).
async fn presented_certificate(ca: &Path, addr: &str) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(c.expect("CA certificate")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let server = ServerName::try_from("127.0.0.1").expect("server name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server, tcp)
        .await
        .expect("TLS handshake");
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
}

fn file_certificate(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path)
        .expect("certificate file")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotated_certificates_are_used_after_sighup_while_the_cluster_keeps_serving() {
    let mut cluster = TestCluster::start(Options::default());
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    let skus = skus_on_every_shard("rot", 4);
    for s in &skus {
        client.set_stock(s, 1_000_000).await.expect("set");
    }
    let dir = cluster.certs_dir();
    let ca = dir.join("ca.pem");
    let old = file_certificate(&dir.join("node-1.pem"));
    assert_eq!(presented_certificate(&ca, &cluster.addrs[&1]).await, old);

    // Writers keep selling through the rotation on their existing connections.
    let stop = Arc::new(AtomicBool::new(false));
    let (sold, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = skus
        .iter()
        .cloned()
        .map(|sku| {
            let (client, stop, sold, failed) =
                (client.clone(), stop.clone(), sold.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.decrement(&sku, 1).await {
                        Ok(_) => sold.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("decrement during rotation: {e}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();

    // New node certificates, and a CA bundle holding the old and a new CA.
    let authority = Authority::open(&dir).expect("CA");
    for id in cluster.running() {
        authority.issue_node(id, &[], 30).expect("reissue");
    }
    let next_dir = dir.join("next");
    let next = Authority::create(&next_dir, "next").expect("new CA");
    let newcomer = next.issue_client("newcomer", 30).expect("issue");
    grant_identity(
        &dir.join("access.toml"),
        &Grant {
            name: "newcomer".into(),
            role: "reader".into(),
            prefixes: Vec::new(),
        },
    )
    .expect("grant");
    let mut bundle = std::fs::read(&ca).expect("CA");
    bundle.extend(std::fs::read(next_dir.join("ca.pem")).expect("new CA"));
    std::fs::write(&ca, bundle).expect("write bundle");
    let fresh = file_certificate(&dir.join("node-1.pem"));
    assert_ne!(fresh, old);
    let started = Instant::now();
    cluster.reload_all();
    loop {
        if presented_certificate(&ca, &cluster.addrs[&1]).await == fresh {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "node 1 still presents its old certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "new certificate served {:?} after SIGHUP",
        started.elapsed()
    );
    for id in cluster.running() {
        let addr = &cluster.addrs[&id];
        let want = file_certificate(&dir.join(format!("node-{id}.pem")));
        let (_, _) = eventually(Duration::from_secs(10), || async {
            if presented_certificate(&ca, addr).await == want {
                Ok(())
            } else {
                Err(Error::Config {
                    message: format!("node {id} presents its old certificate"),
                })
            }
        })
        .await;
    }
    // A client of the new CA gets in once every node trusts the bundle.
    let tls = TlsOptions::from_files(&ca, Some((&newcomer.cert, &newcomer.key))).expect("files");
    let (_, _) = eventually(Duration::from_secs(10), || {
        try_read(quick(&cluster).tls(tls.clone()), &skus[0])
    })
    .await;

    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "a sale failed during the rotation"
    );
    // Nodes dial each other with the new certificates: a restarted node (new peer
    // connections both ways) rejoins, and sales go on.
    let before = sold.load(Ordering::Relaxed);
    cluster.stop(3);
    cluster.start_node(3);
    cluster.wait_leaders(&client).await;
    let (_, _) = eventually(Duration::from_secs(20), || async {
        if sold.load(Ordering::Relaxed) > before + 100 {
            Ok(())
        } else {
            Err(Error::Config {
                message: "sales have not resumed".into(),
            })
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    cluster.wait_converged(&client).await;
}
