//! The HTTP/JSON face driven by curl against a real TLS cluster (docs/HTTP.md): the
//! same operations, errors and exactly-once contract as gRPC, one cluster for the
//! whole file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use crate::common::{Options, SHARD_SKUS, TestCluster};

/// One curl answer: status, lower-cased headers of the last response, JSON body.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// curl as one of the cluster's client identities.
struct Curl {
    certs: PathBuf,
    identity: String,
    /// HTTP/1.1 instead of HTTP/2 (negotiated by ALPN).
    http1: bool,
}

impl Curl {
    fn new(cluster: &TestCluster, identity: &str) -> Curl {
        Curl {
            certs: cluster.certs_dir(),
            identity: identity.into(),
            http1: false,
        }
    }

    fn http1(mut self) -> Curl {
        self.http1 = true;
        self
    }

    /// `curl -X METHOD url` with a JSON body and headers; `follow` follows redirects.
    fn call(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
        follow: bool,
    ) -> Reply {
        let dir = tempfile::tempdir().expect("temp dir");
        let (head_file, body_file) = (dir.path().join("h"), dir.path().join("b"));
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "30", "-X", method])
            .arg("--cacert")
            .arg(self.certs.join("ca.pem"))
            .arg("--cert")
            .arg(self.certs.join(format!("client-{}.pem", self.identity)))
            .arg("--key")
            .arg(self.certs.join(format!("client-{}.key", self.identity)))
            .arg("-D")
            .arg(&head_file)
            .arg("-o")
            .arg(&body_file);
        if self.http1 {
            cmd.arg("--http1.1");
        }
        if follow {
            cmd.args(["-L", "--max-redirs", "3"]);
        }
        for (name, value) in headers {
            cmd.arg("-H").arg(format!("{name}: {value}"));
        }
        if let Some(b) = body {
            cmd.args(["-H", "content-type: application/json", "--data-binary"])
                .arg(b.to_string());
        }
        let out = cmd
            .arg(url)
            .output()
            .expect("curl runs (apt-get install curl)");
        assert!(
            out.status.success(),
            "curl {method} {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse(
            &std::fs::read_to_string(head_file).expect("headers"),
            &std::fs::read(body_file).unwrap_or_default(),
        )
    }
}

/// The last response's status and headers (curl -D writes every hop's).
fn parse(head: &str, body: &[u8]) -> Reply {
    let last = head
        .split("\r\n\r\n")
        .filter(|block| block.starts_with("HTTP/"))
        .last()
        .expect("a response");
    let mut lines = last.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = serde_json::from_slice(body).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_face_sells_reserves_pages_and_refuses_like_grpc() {
    let admission = "[admission]\nclient_writes_per_s = 5\nclient_write_burst = 400\n";
    let cluster = TestCluster::start(Options {
        extra_toml: admission.into(),
        ..Default::default()
    });
    let client = cluster.client().await;
    let leaders = cluster.wait_leaders(&client).await;
    let admin = Curl::new(&cluster, "admin");
    let leader_url = |shard: u64| format!("https://{}", cluster.addrs[&leaders[&shard]]);
    let follower_url = |shard: u64| {
        let id = (1..=3)
            .find(|id| *id != leaders[&shard])
            .expect("a follower");
        format!("https://{}", cluster.addrs[&id])
    };
    let base = leader_url(1);

    // Set, then read with the version as ETag, over HTTP/2 and HTTP/1.1.
    let set = admin.call(
        "PUT",
        &format!("{base}/v1/skus/apple-h"),
        Some(&json!({"on_hand": 10})),
        &[],
        false,
    );
    assert_eq!(set.status, 200, "{set:?}");
    assert_eq!(set.body["record"]["on_hand"], 10);
    assert_eq!(
        set.header("etag"),
        format!("\"{}\"", set.body["record"]["version"])
    );
    assert_eq!(
        set.header("idempotency-key").len(),
        32,
        "a key is made and returned: {set:?}"
    );
    let got = Curl::new(&cluster, "admin").http1().call(
        "GET",
        &format!("{base}/v1/skus/apple-h"),
        None,
        &[],
        false,
    );
    assert_eq!(got.header("etag"), set.header("etag"));
    assert_eq!(
        (got.status, got.body["record"]["available"].as_u64()),
        (200, Some(10))
    );
    let missing = admin.call(
        "GET",
        &format!("{base}/v1/skus/apple-never"),
        None,
        &[],
        false,
    );
    assert_eq!(
        (missing.status, missing.body["reason"].as_str()),
        (404, Some("SKU_NOT_FOUND"))
    );

    // Decrement to INSUFFICIENT_STOCK: 409 with `available`, nothing sold.
    let url = format!("{base}/v1/skus/apple-h:decrement");
    let sold = admin.call("POST", &url, Some(&json!({"quantity": 7})), &[], false);
    assert_eq!(
        (sold.status, sold.body["record"]["on_hand"].as_u64()),
        (200, Some(3))
    );
    let refused = admin.call("POST", &url, Some(&json!({"quantity": 4})), &[], false);
    assert_eq!(refused.status, 409, "{refused:?}");
    assert_eq!(refused.body["reason"], "INSUFFICIENT_STOCK");
    assert_eq!(refused.body["available"], 3);
    assert_eq!(refused.body["code"], "FAILED_PRECONDITION");

    // Idempotency-Key: the retry replays the first outcome; another body is refused.
    let key = [("Idempotency-Key", "order-77/line-1")];
    let first = admin.call("POST", &url, Some(&json!({"quantity": 1})), &key, false);
    let again = admin.call("POST", &url, Some(&json!({"quantity": 1})), &key, false);
    assert_eq!((first.status, again.status), (200, 200));
    assert_eq!(first.body["applied"]["replayed"], false);
    assert_eq!(again.body["applied"]["replayed"], true);
    assert_eq!(
        again.body["record"], first.body["record"],
        "the same outcome"
    );
    assert_eq!(again.header("idempotency-key"), "order-77/line-1");
    let other = admin.call("POST", &url, Some(&json!({"quantity": 2})), &key, false);
    assert_eq!(
        (other.status, other.body["reason"].as_str()),
        (422, Some("REQUEST_ID_REUSED"))
    );
    let now = admin.call("GET", &format!("{base}/v1/skus/apple-h"), None, &[], false);
    assert_eq!(
        now.body["record"]["on_hand"], 2,
        "one unit sold for the key, not two"
    );

    // If-Match: a set at a stale version is 412 with both versions; at the current one it applies.
    let version = now.body["record"]["version"].as_u64().expect("version");
    let stale = format!("\"{}\"", version - 1);
    let put = format!("{base}/v1/skus/apple-h");
    let conflict = admin.call(
        "PUT",
        &put,
        Some(&json!({"on_hand": 50})),
        &[("If-Match", &stale)],
        false,
    );
    assert_eq!(conflict.status, 412, "{conflict:?}");
    assert_eq!(conflict.body["reason"], "VERSION_MISMATCH");
    assert_eq!(
        (
            conflict.body["expected_version"].as_u64(),
            conflict.body["actual_version"].as_u64()
        ),
        (Some(version - 1), Some(version))
    );
    let current = format!("\"{version}\"");
    let ok = admin.call(
        "PUT",
        &put,
        Some(&json!({"on_hand": 50})),
        &[("If-Match", &current)],
        false,
    );
    assert_eq!(
        (ok.status, ok.body["record"]["on_hand"].as_u64()),
        (200, Some(50))
    );
    let adjusted = admin.call(
        "POST",
        &format!("{base}/v1/skus/apple-h:adjust"),
        Some(&json!({"delta": -5})),
        &[("If-Match", &current)],
        false,
    );
    assert_eq!(
        adjusted.status, 412,
        "the version moved with the set: {adjusted:?}"
    );

    // gRPC has the same condition: the Rust client's conditional set.
    let grpc_stale = client
        .set_stock_if_version([0x31; 16], "apple-h", 7, version)
        .await
        .expect_err("the version moved with the HTTP set");
    assert_eq!(
        grpc_stale,
        stockpile_client::Error::VersionMismatch {
            sku: "apple-h".into(),
            expected: version,
            actual: version + 1,
        }
    );
    let grpc_ok = client
        .set_stock_if_version([0x32; 16], "apple-h", 50, version + 1)
        .await
        .expect("at the current version");
    assert_eq!(grpc_ok.stock.version, version + 2);

    // A node that does not lead the shard redirects (307) to the leader; -L follows.
    let elsewhere = format!("{}/v1/skus/apple-h:decrement", follower_url(1));
    let redirect = admin.call(
        "POST",
        &elsewhere,
        Some(&json!({"quantity": 1})),
        &[],
        false,
    );
    assert_eq!(redirect.status, 307, "{redirect:?}");
    assert_eq!(
        redirect.header("location"),
        format!("{base}/v1/skus/apple-h:decrement")
    );
    assert_eq!(redirect.body["reason"], "NOT_LEADER");
    let followed = admin.call(
        "POST",
        &elsewhere,
        Some(&json!({"quantity": 1})),
        &[("Idempotency-Key", "redirected-1")],
        true,
    );
    assert_eq!(
        (followed.status, followed.body["record"]["on_hand"].as_u64()),
        (200, Some(49))
    );

    // The reservation lifecycle: reserve (201 + Location), read, confirm, then release refused.
    let reserve = admin.call("POST", &format!("{base}/v1/reservations"), Some(&json!({"reservation_id": "cart-9", "items": [{"sku": "apple-h", "quantity": 4}], "ttl_ms": 60000})), &[], true);
    assert_eq!(reserve.status, 201, "{reserve:?}");
    assert_eq!(
        reserve.header("location"),
        "/v1/reservations/cart-9?sku=apple-h"
    );
    assert_eq!(reserve.body["reservation"]["state"], "ACTIVE");
    assert_eq!(reserve.body["records"][0]["reserved"], 4);
    let read = admin.call(
        "GET",
        &format!("{base}/v1/reservations/cart-9?sku=apple-h"),
        None,
        &[],
        true,
    );
    assert_eq!(
        (
            read.status,
            read.body["reservation"]["items"][0]["quantity"].as_u64()
        ),
        (200, Some(4))
    );
    let confirm = admin.call(
        "POST",
        &format!("{base}/v1/reservations/cart-9:confirm"),
        Some(&json!({"sku": "apple-h"})),
        &[],
        true,
    );
    assert_eq!(
        (
            confirm.status,
            confirm.body["reservation"]["state"].as_str()
        ),
        (200, Some("CONFIRMED"))
    );
    assert_eq!(confirm.body["records"][0]["on_hand"], 45);
    let release = admin.call(
        "POST",
        &format!("{base}/v1/reservations/cart-9:release"),
        Some(&json!({"sku": "apple-h"})),
        &[],
        true,
    );
    assert_eq!(
        (release.status, release.body["reason"].as_str()),
        (409, Some("RESERVATION_NOT_ACTIVE"))
    );
    assert_eq!(release.body["state"], "CONFIRMED");

    // Pagination across shards: every SKU exactly once, in order.
    let mut expected: Vec<String> = SHARD_SKUS
        .iter()
        .flat_map(|(_, s)| (0..3).map(move |i| format!("{s}-page{i}")))
        .collect();
    for sku in &expected {
        let r = admin.call(
            "PUT",
            &format!("{base}/v1/skus/{sku}"),
            Some(&json!({"on_hand": 1})),
            &[],
            true,
        );
        assert_eq!(r.status, 200, "{sku}: {r:?}");
    }
    expected.push("apple-h".into());
    expected.sort();
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..50 {
        let page = admin.call(
            "GET",
            &format!("{base}/v1/skus?page_size=2&page_token={token}"),
            None,
            &[],
            true,
        );
        assert_eq!(page.status, 200, "{page:?}");
        seen.extend(
            page.body["records"]
                .as_array()
                .expect("records")
                .iter()
                .map(|r| r["sku"].as_str().expect("sku").to_string()),
        );
        match page.body["next_page_token"].as_str() {
            Some(t) => token = t.to_string(),
            None => break,
        }
    }
    assert_eq!(
        seen, expected,
        "every SKU once, in order, across the four shards"
    );

    // Errors name what was wrong; roles hold; plaintext is told to use TLS.
    let bad = admin.call("PUT", &put, Some(&json!({"on_hand": -1})), &[], true);
    assert_eq!(
        (bad.status, bad.body["field"].as_str()),
        (400, Some("body"))
    );
    let bad_key = admin.call(
        "PUT",
        &put,
        Some(&json!({"on_hand": 1})),
        &[("Idempotency-Key", &"k".repeat(300))],
        true,
    );
    assert_eq!(
        (bad_key.status, bad_key.body["field"].as_str()),
        (400, Some("Idempotency-Key"))
    );
    let reader = Curl::new(&cluster, "reader");
    let denied = reader.call("PUT", &put, Some(&json!({"on_hand": 1})), &[], true);
    assert_eq!(
        (denied.status, denied.body["reason"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );
    assert_eq!(denied.body["identity"], "reader");
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://{}/v1/skus/apple-h", cluster.addrs[&1]))
        .output()
        .expect("curl");
    let plain: Value = serde_json::from_slice(&plain.stdout).expect("JSON refusal");
    assert_eq!(plain["reason"], "UNAUTHENTICATED");

    // Rate limiting: 429 with Retry-After in seconds and retry_after_ms.
    let loadgen = Curl::new(&cluster, "loadgen");
    let ops: Vec<Value> = (0..150)
        .map(|_| json!({"op": "adjust_stock", "sku": "apple-h", "delta": 1}))
        .collect();
    let batch_url = format!("{base}/v1/batch");
    let mut limited = None;
    for _ in 0..4 {
        let r = loadgen.call("POST", &batch_url, Some(&json!({"ops": ops})), &[], true);
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{r:?}");
    }
    let limited =
        limited.expect("the write budget (burst 400, 5/s) runs out within 4 batches of 150");
    assert_eq!(limited.body["reason"], "RATE_LIMITED");
    let retry_after_s: u64 = limited
        .header("retry-after")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry_after_s >= 1, "{limited:?}");
    assert!(
        limited.body["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0)
    );

    // The served contract is the checked-in one.
    let spec = admin.call("GET", &format!("{base}/v1/openapi.json"), None, &[], false);
    let checked_in: Value = serde_json::from_str(include_str!("../../../docs/openapi.json"))
        .expect("docs/openapi.json");
    assert_eq!(spec.body, checked_in);
}

/// The checked-in contract is the generated one: regenerate it with
/// `STOCKPILE_WRITE_OPENAPI=1 cargo test --release -p stockpile-node --test integration openapi`.
#[test]
fn docs_openapi_json_is_the_generated_document() {
    let generated = stockpile_node::api::http::openapi_json();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    if std::env::var_os("STOCKPILE_WRITE_OPENAPI").is_some() {
        std::fs::write(path, &generated).expect("write docs/openapi.json");
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/openapi.json differs from the API's generated document: regenerate it with \
         STOCKPILE_WRITE_OPENAPI=1 cargo test --release -p stockpile-node --test integration openapi"
    );
}

#[test]
fn the_openapi_document_is_3_1_with_every_path() {
    let doc: Value =
        serde_json::from_str(&stockpile_node::api::http::openapi_json()).expect("JSON");
    assert!(doc["openapi"].as_str().expect("version").starts_with("3.1"));
    for path in [
        "/v1/skus",
        "/v1/skus/{sku}",
        "/v1/skus/{sku}:adjust",
        "/v1/skus/{sku}:decrement",
        "/v1/reservations",
        "/v1/reservations/{id}",
        "/v1/reservations/{id}:confirm",
        "/v1/reservations/{id}:release",
        "/v1/batch",
        "/v1/cluster/status",
        "/v1/console/stats",
        "/v1/health",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
}
