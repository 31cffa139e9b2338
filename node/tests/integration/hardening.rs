//! Hostile input from outside, as a client or a buggy peer would send it: requests that
//! are legal but huge, bytes that are not valid protobuf, values outside the policies,
//! and a Raft vote with an overflowing term. Each is refused with its field named, and
//! no shard stops committing.

use std::time::{Duration, Instant};

use prost::Message;
use prost::bytes::{Buf, BufMut};
use stockpile_client::proto as pb;
use stockpile_client::{Consistency, Item};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;

use crate::common::*;

/// Passes bytes through unchanged, so a test can send what no generated client would.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// Sends `body` as the request message of `path` and returns the status it fails with.
async fn raw_call(
    endpoint: tonic::transport::Endpoint,
    path: &'static str,
    body: Vec<u8>,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(endpoint.connect().await.expect("connect"))
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    grpc.ready().await.expect("ready");
    match grpc
        .unary(
            tonic::Request::new(body),
            PathAndQuery::from_static(path),
            RawCodec,
        )
        .await
    {
        Ok(_) => panic!("{path}: the hostile request was accepted"),
        Err(status) => status,
    }
}

fn detail(status: &tonic::Status) -> pb::ErrorDetail {
    pb::ErrorDetail::decode(status.details())
        .unwrap_or_else(|e| panic!("no ErrorDetail in {status:?}: {e}"))
}

/// `n` distinct 128-byte SKUs of shard 4 (at or after "t").
fn long_skus(tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let s = format!("tomato-{tag}-{i:03}-");
            format!("{s}{}", "x".repeat(128 - s.len()))
        })
        .collect()
}

/// A Batch of `ops` Reserve operations of 100 items each, every SKU 128 bytes.
fn reserve_batch(ops: usize, skus: &[String]) -> pb::BatchRequest {
    pb::BatchRequest {
        ops: (0..ops)
            .map(|i| pb::Operation {
                op: Some(pb::operation::Op::Reserve(pb::ReserveRequest {
                    request_id: {
                        let mut id = [0u8; 16];
                        id[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
                        id[8] = 0x5a;
                        id.to_vec()
                    },
                    reservation_id: String::new(),
                    items: skus
                        .iter()
                        .map(|s| pb::Item {
                            sku: s.clone(),
                            quantity: 1,
                        })
                        .collect(),
                    ttl_ms: 60_000,
                })),
            })
            .collect(),
        atomic: false,
    }
}

/// Writes to shard 4 keep succeeding for `window`, each within `each`.
async fn keeps_committing(client: &stockpile_client::Client, window: Duration, each: Duration) {
    let until = Instant::now() + window;
    let mut n = 0u64;
    while Instant::now() < until || n == 0 {
        let started = Instant::now();
        client
            .set_stock("tomato-alive", n)
            .await
            .unwrap_or_else(|e| panic!("write {n} to shard 4 failed: {e}"));
        assert!(
            started.elapsed() < each,
            "write {n} took {:?}",
            started.elapsed()
        );
        n += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_63_mib_batch_is_refused_unread_and_the_largest_legal_one_commits() {
    let cluster = TestCluster::start(Options::default());
    let client = cluster.client().await;
    let leaders = cluster.wait_leaders(&client).await;
    let leader_addr = cluster.addrs[&leaders[&4]].clone();
    let skus = long_skus("big", 100);

    // 4,800 reservations x 100 items x 128-byte SKUs: every field within its limit.
    let huge = reserve_batch(4_800, &skus).encode_to_vec();
    assert!(huge.len() > 60 << 20, "{} bytes", huge.len());
    let status = raw_call(
        cluster.endpoint(&leader_addr),
        "/stockpile.v1.Inventory/Batch",
        huge.clone(),
    )
    .await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let d = detail(&status);
    assert_eq!(d.reason(), pb::Reason::RequestTooLarge);
    assert_eq!(
        (d.field.as_str(), d.size_bytes, d.limit_bytes),
        ("request", huge.len() as u64, 4 << 20)
    );
    keeps_committing(&client, Duration::from_secs(2), Duration::from_secs(2)).await;

    // The largest legal Batch of the same shape becomes one big entry, and commits.
    for sku in &skus {
        client.set_stock(sku, 1_000_000).await.expect("stock");
    }
    let mut ops = 1;
    while reserve_batch(ops + 1, &skus).encoded_len() <= 4 << 20 {
        ops += 1;
    }
    let largest = reserve_batch(ops, &skus);
    let started = Instant::now();
    let reply = pb::inventory_client::InventoryClient::new(cluster.channel(&leader_addr).await)
        .max_decoding_message_size(usize::MAX)
        .batch(largest)
        .await
        .expect("the largest legal batch is applied")
        .into_inner();
    eprintln!(
        "{ops} reservations of 100 items in one batch: applied in {:?}",
        started.elapsed()
    );
    assert_eq!(reply.results.len(), ops);
    for r in &reply.results {
        assert!(
            matches!(r.result, Some(pb::operation_result::Result::Reservation(_))),
            "{r:?}"
        );
    }
    keeps_committing(&client, Duration::from_secs(2), Duration::from_secs(2)).await;
    let s = must_get(&client, &skus[0]).await.expect("present");
    assert_eq!(s.reserved, ops as u64);

    // The client library splits a batch over the limit into several RPCs.
    let cart = vec![
        Item {
            sku: skus[1].clone(),
            quantity: 1,
        };
        1
    ];
    let mutations: Vec<_> = (0..ops * 2)
        .map(|_| stockpile_client::Mutation::Reserve {
            reservation_id: None,
            items: skus
                .iter()
                .map(|s| Item {
                    sku: s.clone(),
                    quantity: 1,
                })
                .collect(),
            ttl: Duration::from_secs(60),
        })
        .chain(std::iter::once(stockpile_client::Mutation::Reserve {
            reservation_id: None,
            items: cart,
            ttl: Duration::from_secs(60),
        }))
        .collect();
    let results = client.batch(mutations).await.expect("batch");
    assert!(results.iter().all(|r| r.is_ok()), "every part applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vote_with_term_2_pow_64_minus_1_is_refused_and_the_shard_stays_led() {
    use stockpile_node::codec;
    use stockpile_node::raft::types::{TypeConfig, Vote};
    let cluster = TestCluster::start(Options::default());
    let client = cluster.client().await;
    let leader = cluster.wait_leaders(&client).await[&4];
    let term_before = shard_term(&client, 4).await;
    let other = *cluster
        .addrs
        .keys()
        .find(|id| **id != leader)
        .expect("a follower");
    // A peer's hostile Vote, PreVote and leadership-transfer election, to every node.
    let mut vote = openraft::raft::VoteRequest::<TypeConfig>::new(Vote::new(u64::MAX, other), None);
    for transfer in [false, true] {
        vote.leadership_transfer = transfer;
        for (id, addr) in &cluster.addrs {
            // Addressed to the node's replica of shard 4 (a seeded one: the node id).
            let message = pb::RaftMessage {
                shard_id: 4,
                from_node_id: other,
                payload: codec::encode(&vote).expect("encode"),
                to_replica_id: *id,
            }
            .encode_to_vec();
            for path in ["/stockpile.v1.Raft/Vote", "/stockpile.v1.Raft/PreVote"] {
                let status = raw_call(
                    cluster.endpoint_as(addr, &format!("node-{other}")),
                    path,
                    message.clone(),
                )
                .await;
                assert_eq!(
                    status.code(),
                    tonic::Code::InvalidArgument,
                    "{path}: {status:?}"
                );
                assert!(
                    status.message().contains("is not below the largest term"),
                    "{status:?}"
                );
            }
        }
    }
    // Several election timeouts later the shard still has its leader and serves.
    keeps_committing(&client, Duration::from_secs(4), Duration::from_secs(2)).await;
    assert_eq!(cluster.wait_leaders(&client).await[&4], leader);
    let term_after = shard_term(&client, 4).await;
    assert_eq!(term_after, term_before, "no election happened");
}

async fn shard_term(client: &stockpile_client::Client, shard_id: u64) -> u64 {
    let status = client.cluster_status().await.expect("status");
    status
        .nodes
        .iter()
        .filter_map(|v| v.status.as_ref())
        .flat_map(|s| s.shards.iter())
        .filter(|s| s.shard_id == shard_id)
        .map(|s| s.term)
        .max()
        .expect("the shard's term")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undecodable_requests_are_invalid_arguments_naming_the_field() {
    let cluster = TestCluster::start(Options::default());
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    let addr = cluster.addrs[&1].clone();
    let set = pb::SetStockRequest {
        request_id: vec![3; 16],
        sku: "apple-utf8".into(),
        on_hand: 5,
        expected_version: None,
    }
    .encode_to_vec();
    let mut bad_utf8 = set.clone();
    let at = bad_utf8
        .windows(5)
        .position(|w| w == b"apple")
        .expect("the SKU");
    bad_utf8[at + 1] = 0xc3; // a lead byte followed by ASCII: not UTF-8
    let status = raw_call(
        cluster.endpoint(&addr),
        "/stockpile.v1.Inventory/SetStock",
        bad_utf8,
    )
    .await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let d = detail(&status);
    assert_eq!(
        (d.reason(), d.field.as_str()),
        (pb::Reason::InvalidArgument, "sku")
    );

    let status = raw_call(
        cluster.endpoint(&addr),
        "/stockpile.v1.Inventory/SetStock",
        set[..set.len() - 3].to_vec(),
    )
    .await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(detail(&status).reason(), pb::Reason::InvalidArgument);

    let mut batch = pb::BatchRequest {
        ops: vec![pb::Operation {
            op: Some(pb::operation::Op::Reserve(pb::ReserveRequest {
                request_id: vec![4; 16],
                reservation_id: String::new(),
                items: vec![pb::Item {
                    sku: "apple-utf8".into(),
                    quantity: 1,
                }],
                ttl_ms: 10_000,
            })),
        }],
        atomic: false,
    }
    .encode_to_vec();
    let at = batch.windows(5).position(|w| w == b"apple").expect("SKU");
    batch[at] = 0xff;
    let status = raw_call(
        cluster.endpoint(&addr),
        "/stockpile.v1.Inventory/Batch",
        batch,
    )
    .await;
    let d = detail(&status);
    assert_eq!(
        (status.code(), d.field.as_str()),
        (tonic::Code::InvalidArgument, "ops.op.items.sku")
    );
    // Nothing was applied.
    assert!(must_get(&client, "apple-utf8").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_policy_inputs_are_refused_with_their_field_named() {
    let cluster = TestCluster::start(Options::default());
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    for bad in [
        "abc\u{202E}def",
        "a\u{200B}b",
        "\u{FEFF}apple",
        "a\u{2028}b",
        "a\u{FFFF}",
        " apple",
        "apple ",
        "   ",
        "cafe\u{301}",
    ] {
        let e = must_fail_with(client.set_stock(bad, 1).await, "INVALID_ARGUMENT");
        assert!(
            matches!(&e, stockpile_client::Error::InvalidArgument { field, .. } if field == "sku"),
            "{bad:?}: {e}"
        );
        let e = must_fail_with(
            client
                .reserve(
                    &[Item {
                        sku: bad.into(),
                        quantity: 1,
                    }],
                    Duration::from_secs(30),
                )
                .await,
            "INVALID_ARGUMENT",
        );
        assert!(
            matches!(&e, stockpile_client::Error::InvalidArgument { field, .. } if field == "items[0].sku"),
            "{bad:?}: {e}"
        );
    }
    // The NFC form is one SKU; its NFD twin is refused, not stored as a second SKU.
    client.set_stock("caf\u{e9}", 3).await.expect("NFC");
    must_fail_with(client.set_stock("cafe\u{301}", 4).await, "INVALID_ARGUMENT");
    assert_eq!(
        must_get(&client, "caf\u{e9}")
            .await
            .expect("present")
            .on_hand,
        3
    );

    // Confirm routed by a SKU that is not an item of the reservation: refused, and the
    // reservation stays active.
    client.set_stock("apple-p1", 5).await.expect("set");
    client.set_stock("apple-p2", 5).await.expect("set");
    let r = client
        .reserve(
            &[Item {
                sku: "apple-p1".into(),
                quantity: 2,
            }],
            Duration::from_secs(60),
        )
        .await
        .expect("reserve");
    assert!(
        r.reservation.reservation_id.starts_with('~'),
        "{}",
        r.reservation.reservation_id
    );
    let e = must_fail_with(
        client
            .confirm(&r.reservation.reservation_id, Some("apple-p2"))
            .await,
        "INVALID_ARGUMENT",
    );
    assert!(
        matches!(&e, stockpile_client::Error::InvalidArgument { field, .. } if field == "sku"),
        "{e}"
    );
    let still = client
        .get_reservation(
            &r.reservation.reservation_id,
            Some("apple-p1"),
            Consistency::Linearizable,
        )
        .await
        .expect("get");
    assert_eq!(still.state, stockpile_client::ReservationState::Active);
    client
        .confirm(&r.reservation.reservation_id, None)
        .await
        .expect("confirmed through a remembered SKU of the reservation");

    // A client cannot choose an id in the store's derived namespace.
    let derived = format!("~{}", "ab".repeat(16));
    let e = must_fail_with(
        client
            .reserve_with_id(
                stockpile_client::new_request_id(),
                Some(&derived),
                &[Item {
                    sku: "apple-p2".into(),
                    quantity: 1,
                }],
                Duration::from_secs(60),
            )
            .await,
        "INVALID_ARGUMENT",
    );
    assert!(
        matches!(&e, stockpile_client::Error::InvalidArgument { field, .. } if field == "reservation_id"),
        "{e}"
    );

    // Admin calls name their targets: an unknown node is NOT_FOUND.
    let mut admin = pb::admin_client::AdminClient::new(cluster.channel(&cluster.addrs[&1]).await);
    let status = admin
        .allow_rebuild(pb::AllowRebuildRequest { node_id: 99 })
        .await
        .expect_err("unknown node");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let d = detail(&status);
    assert_eq!((d.reason(), d.node_id), (pb::Reason::NodeNotFound, 99));
    let status = admin
        .transfer_leader(pb::TransferLeaderRequest {
            shard_id: 1,
            to_node_id: 99,
            timeout_ms: 0,
        })
        .await
        .expect_err("unknown node");
    assert_eq!(detail(&status).reason(), pb::Reason::NodeNotFound);
    let status = admin
        .transfer_leader(pb::TransferLeaderRequest {
            shard_id: 77,
            to_node_id: 1,
            timeout_ms: 0,
        })
        .await
        .expect_err("unknown shard");
    assert_eq!(
        (status.code(), detail(&status).reason()),
        (tonic::Code::NotFound, pb::Reason::ShardNotFound)
    );
    must_fail_with(client.allow_rebuild(99).await, "NODE_NOT_FOUND");
}
