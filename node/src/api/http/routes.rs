//! The HTTP/JSON handlers. Each turns its path, query, headers and JSON body into the
//! protobuf request of the matching RPC and calls the Inventory or Admin service
//! itself, with the HTTP request's headers and connection facts (TLS peer
//! certificate, bearer token): authentication, validation, admission, routing,
//! telemetry and the error mapping are the gRPC path's, not a copy of them.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::de::DeserializeOwned;
use stockpile_proto::v1 as pb;
use stockpile_proto::v1::admin_server::Admin;
use stockpile_proto::v1::inventory_server::Inventory;

use super::idempotency::{self, Key};
use super::reply::{error_body, etag, if_match, json, refusal, refuse};
use super::schema::{self as s, Consistency};
use crate::api::admin::AdminService;
use crate::api::inventory::InventoryService;
use crate::api::status::code_of_reason;
use crate::error::Error;
use crate::node::Node;

/// What every handler shares: the node and its two public services.
#[derive(Clone)]
pub struct Api {
    pub node: Arc<Node>,
    pub inventory: Arc<InventoryService>,
    pub admin: Arc<AdminService>,
}

/// A handler's answer: a response either way (a refusal is a response too).
type Answer = Response;

/// The protobuf request, carrying the HTTP request's headers and connection facts.
fn grpc<T>(parts: &Parts, message: T) -> tonic::Request<T> {
    tonic::Request::from_http(axum::http::Request::from_parts(parts.clone(), message))
}

fn invalid(field: &str, rule: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field: field.into(),
        rule: rule.into(),
    }
}

/// The JSON body as `T`, or INVALID_ARGUMENT naming `body` and what serde found.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, Error> {
    serde_json::from_slice(bytes)
        .map_err(|e| invalid("body", format!("is not valid JSON for this call: {e}")))
}

fn path(value: Result<Path<String>, PathRejection>, field: &str) -> Result<String, Error> {
    value
        .map(|Path(p)| p)
        .map_err(|e| invalid(field, format!("cannot be read from the path: {e}")))
}

fn query<T>(value: Result<Query<T>, QueryRejection>) -> Result<T, Error> {
    value
        .map(|Query(q)| q)
        .map_err(|e| invalid("query", e.body_text()))
}

fn consistency(c: Option<Consistency>) -> i32 {
    c.unwrap_or_default().to_pb()
}

/// `sku:action` → (`sku`, `action`); the SKU may itself contain colons.
fn split_action<'a>(
    tail: &'a str,
    field: &str,
    actions: &[&str],
) -> Result<(String, &'a str), Error> {
    match tail.rsplit_once(':') {
        Some((name, action)) if actions.contains(&action) && !name.is_empty() => {
            Ok((name.to_string(), action))
        }
        _ => Err(invalid(
            field,
            format!("the path must end in one of {actions:?} after a ':'"),
        )),
    }
}

fn key_header(key: &Key) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&key.text) {
        headers.insert(idempotency::HEADER, value);
    }
    headers
}

/// A mutation's answer: the reply as JSON, with the idempotency key (and the
/// record's ETag for stock replies); a refusal carries the key too, for the retry.
fn mutation_answer<R, J: serde::Serialize>(
    api: &Api,
    parts: &Parts,
    key: &Key,
    status: StatusCode,
    result: Result<tonic::Response<R>, tonic::Status>,
    convert: impl FnOnce(R) -> (J, HeaderMap),
) -> Answer {
    let mut response = match result {
        Ok(reply) => {
            let (body, mut headers) = convert(reply.into_inner());
            headers.extend(key_header(key));
            return json(status, &body, headers);
        }
        Err(refused) => refusal(&api.node, &parts.uri, &refused),
    };
    response.headers_mut().extend(key_header(key));
    response
}

fn stock_json(reply: pb::StockReply) -> (s::StockReply, HeaderMap) {
    let reply = s::StockReply::from(reply);
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, etag(reply.record.version));
    (reply, headers)
}

fn reservation_json(reply: pb::ReservationReply) -> (s::ReservationReply, HeaderMap) {
    (reply.into(), HeaderMap::new())
}

#[utoipa::path(get, path = "/v1/skus/{sku}", tag = "stock",
    params(("sku" = String, Path, example = "apple", min_length = 1, max_length = 128, description = "The SKU: 1..=128 bytes of NFC UTF-8 (docs/ERRORS.md, SKU policy)"), s::ReadQuery),
    responses((status = 200, description = "The record; `ETag` is its version", body = s::SkuReply), s::Refusals))]
pub async fn get_sku(
    State(api): State<Api>,
    sku: Result<Path<String>, PathRejection>,
    q: Result<Query<s::ReadQuery>, QueryRejection>,
    parts: Parts,
) -> Answer {
    let request = match (path(sku, "sku"), query(q)) {
        (Ok(sku), Ok(q)) => pb::GetRequest {
            skus: vec![sku],
            consistency: consistency(q.consistency),
        },
        (Err(e), _) | (_, Err(e)) => return refuse(&api.node, &parts.uri, e),
    };
    let sku = request.skus[0].clone();
    let reply = match api.inventory.get(grpc(&parts, request)).await {
        Ok(reply) => reply.into_inner(),
        Err(refused) => return refusal(&api.node, &parts.uri, &refused),
    };
    match reply.results.into_iter().next() {
        Some(r) if r.found => {
            let record = s::StockRecord::from(r.record.unwrap_or_default());
            let mut headers = HeaderMap::new();
            headers.insert(header::ETAG, etag(record.version));
            let body = s::SkuReply {
                record,
                shard_id: r.shard_id,
            };
            json(StatusCode::OK, &body, headers)
        }
        _ => refuse(&api.node, &parts.uri, Error::SkuNotFound { sku }),
    }
}

#[utoipa::path(put, path = "/v1/skus/{sku}", tag = "stock",
    params(("sku" = String, Path, example = "apple", min_length = 1, max_length = 128, description = "The SKU: 1..=128 bytes of NFC UTF-8 (docs/ERRORS.md, SKU policy)"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry-safe key (docs/HTTP.md)"),
        ("If-Match" = Option<String>, Header, pattern = "^(W/)?\"[0-9]{1,19}\"$", description = "Apply only at this version, e.g. \"7\"")),
    request_body = s::SetStock,
    responses((status = 200, description = "Set; `ETag` is the new version", body = s::StockReply), s::Refusals))]
pub async fn set_sku(
    State(api): State<Api>,
    sku: Result<Path<String>, PathRejection>,
    parts: Parts,
    bytes: Bytes,
) -> Answer {
    let prepared = (|| {
        let key = Key::from_headers(&parts.headers)?;
        let sku = path(sku, "sku")?;
        let b: s::SetStock = body(&bytes)?;
        let request = pb::SetStockRequest {
            request_id: key.request_id.to_vec(),
            sku,
            on_hand: b.on_hand,
            expected_version: if_match(&parts.headers)?,
        };
        Ok::<_, Error>((key, request))
    })();
    let (key, request) = match prepared {
        Ok(p) => p,
        Err(e) => return refuse(&api.node, &parts.uri, e),
    };
    let result = api.inventory.set_stock(grpc(&parts, request)).await;
    mutation_answer(&api, &parts, &key, StatusCode::OK, result, stock_json)
}

#[utoipa::path(post, path = "/v1/skus/{sku}:adjust", tag = "stock",
    params(("sku" = String, Path, example = "apple", min_length = 1, max_length = 128, description = "The SKU: 1..=128 bytes of NFC UTF-8 (docs/ERRORS.md, SKU policy)"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry-safe key (docs/HTTP.md)"),
        ("If-Match" = Option<String>, Header, pattern = "^(W/)?\"[0-9]{1,19}\"$", description = "Apply only at this version, e.g. \"7\"")),
    request_body = s::AdjustStock,
    responses((status = 200, description = "Adjusted; `ETag` is the new version", body = s::StockReply), s::Refusals))]
pub async fn adjust_sku_doc() {}

#[utoipa::path(post, path = "/v1/skus/{sku}:decrement", tag = "stock",
    params(("sku" = String, Path, example = "apple", min_length = 1, max_length = 128, description = "The SKU: 1..=128 bytes of NFC UTF-8 (docs/ERRORS.md, SKU policy)"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry-safe key (docs/HTTP.md)")),
    request_body = s::Decrement,
    responses((status = 200, description = "Sold; `ETag` is the new version", body = s::StockReply), s::Refusals))]
pub async fn decrement_sku_doc() {}

/// `POST /v1/skus/{sku}:adjust` and `:decrement` (one route: a path segment cannot
/// end in a fixed suffix after a parameter in axum's router).
pub async fn sku_action(
    State(api): State<Api>,
    tail: Result<Path<String>, PathRejection>,
    parts: Parts,
    bytes: Bytes,
) -> Answer {
    let prepared = (|| {
        let key = Key::from_headers(&parts.headers)?;
        let tail = path(tail, "sku")?;
        let (sku, action) = split_action(&tail, "sku", &["adjust", "decrement"])?;
        let request_id = key.request_id.to_vec();
        let op = if action == "adjust" {
            let b: s::AdjustStock = body(&bytes)?;
            StockAction::Adjust(pb::AdjustStockRequest {
                request_id,
                sku,
                delta: b.delta,
                expected_version: if_match(&parts.headers)?,
            })
        } else {
            let b: s::Decrement = body(&bytes)?;
            StockAction::Decrement(pb::DecrementRequest {
                request_id,
                sku,
                quantity: b.quantity,
            })
        };
        Ok::<_, Error>((key, op))
    })();
    let (key, op) = match prepared {
        Ok(p) => p,
        Err(e) => return refuse(&api.node, &parts.uri, e),
    };
    let result = match op {
        StockAction::Adjust(r) => api.inventory.adjust_stock(grpc(&parts, r)).await,
        StockAction::Decrement(r) => api.inventory.decrement(grpc(&parts, r)).await,
    };
    mutation_answer(&api, &parts, &key, StatusCode::OK, result, stock_json)
}

enum StockAction {
    Adjust(pb::AdjustStockRequest),
    Decrement(pb::DecrementRequest),
}

#[utoipa::path(get, path = "/v1/skus", tag = "stock",
    params(s::ListQuery),
    responses((status = 200, description = "One page of SKUs in order", body = s::ListReply), s::Refusals))]
pub async fn list_skus(
    State(api): State<Api>,
    q: Result<Query<s::ListQuery>, QueryRejection>,
    parts: Parts,
) -> Answer {
    let q = match query(q) {
        Ok(q) => q,
        Err(e) => return refuse(&api.node, &parts.uri, e),
    };
    let request = pb::ListRequest {
        page_token: q.page_token.unwrap_or_default(),
        start_after: q.start_after.unwrap_or_default(),
        limit: q.page_size.unwrap_or(0),
        consistency: consistency(q.consistency),
    };
    match api.inventory.list(grpc(&parts, request)).await {
        Ok(reply) => json(
            StatusCode::OK,
            &s::ListReply::from(reply.into_inner()),
            HeaderMap::new(),
        ),
        Err(refused) => refusal(&api.node, &parts.uri, &refused),
    }
}

fn items_pb(items: Vec<s::Item>) -> Vec<pb::Item> {
    items
        .into_iter()
        .map(|i| pb::Item {
            sku: i.sku,
            quantity: i.quantity,
        })
        .collect()
}

#[utoipa::path(post, path = "/v1/reservations", tag = "reservations",
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry-safe key (docs/HTTP.md)")),
    request_body = s::Reserve,
    responses((status = 201, description = "Held; `Location` is the reservation's URL", body = s::ReservationReply), s::Refusals))]
pub async fn reserve(State(api): State<Api>, parts: Parts, bytes: Bytes) -> Answer {
    let prepared = (|| {
        let key = Key::from_headers(&parts.headers)?;
        let b: s::Reserve = body(&bytes)?;
        let request = pb::ReserveRequest {
            request_id: key.request_id.to_vec(),
            reservation_id: b.reservation_id.unwrap_or_default(),
            items: items_pb(b.items),
            ttl_ms: b.ttl_ms,
        };
        Ok::<_, Error>((key, request))
    })();
    let (key, request) = match prepared {
        Ok(p) => p,
        Err(e) => return refuse(&api.node, &parts.uri, e),
    };
    let result = api.inventory.reserve(grpc(&parts, request)).await;
    mutation_answer(&api, &parts, &key, StatusCode::CREATED, result, |reply| {
        let (body, mut headers) = reservation_json(reply);
        let location = format!(
            "/v1/reservations/{}?sku={}",
            body.reservation.reservation_id,
            body.reservation
                .items
                .first()
                .map_or("", |i| i.sku.as_str())
        );
        if let Ok(value) = HeaderValue::from_str(&location) {
            headers.insert(header::LOCATION, value);
        }
        (body, headers)
    })
}

#[utoipa::path(get, path = "/v1/reservations/{id}", tag = "reservations",
    params(("id" = String, Path, example = "order-1001", description = "The reservation id"), s::ReservationQuery),
    responses((status = 200, description = "The reservation", body = s::ReservationReply), s::Refusals))]
pub async fn get_reservation(
    State(api): State<Api>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<s::ReservationQuery>, QueryRejection>,
    parts: Parts,
) -> Answer {
    let request = match (path(id, "id"), query(q)) {
        (Ok(id), Ok(q)) => pb::GetReservationRequest {
            reservation_id: id,
            sku: q.sku,
            consistency: consistency(q.consistency),
        },
        (Err(e), _) | (_, Err(e)) => return refuse(&api.node, &parts.uri, e),
    };
    match api.inventory.get_reservation(grpc(&parts, request)).await {
        Ok(reply) => {
            let (body, headers) = reservation_json(reply.into_inner());
            json(StatusCode::OK, &body, headers)
        }
        Err(refused) => refusal(&api.node, &parts.uri, &refused),
    }
}

#[utoipa::path(post, path = "/v1/reservations/{id}:confirm", tag = "reservations",
    params(("id" = String, Path, example = "order-1001", description = "The reservation id"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry-safe key (docs/HTTP.md)")),
    request_body = s::Close,
    responses((status = 200, description = "Confirmed: the held units are sold", body = s::ReservationReply), s::Refusals))]
pub async fn confirm_doc() {}

#[utoipa::path(post, path = "/v1/reservations/{id}:release", tag = "reservations",
    params(("id" = String, Path, example = "order-1001", description = "The reservation id"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry-safe key (docs/HTTP.md)")),
    request_body = s::Close,
    responses((status = 200, description = "Released: the held units are available again", body = s::ReservationReply), s::Refusals))]
pub async fn release_doc() {}

/// `POST /v1/reservations/{id}:confirm` and `:release`.
pub async fn reservation_action(
    State(api): State<Api>,
    tail: Result<Path<String>, PathRejection>,
    parts: Parts,
    bytes: Bytes,
) -> Answer {
    let prepared = (|| {
        let key = Key::from_headers(&parts.headers)?;
        let tail = path(tail, "id")?;
        let (reservation_id, action) = split_action(&tail, "id", &["confirm", "release"])?;
        let b: s::Close = body(&bytes)?;
        Ok::<_, Error>((key, reservation_id, action == "confirm", b.sku))
    })();
    let (key, reservation_id, confirm, sku) = match prepared {
        Ok(p) => p,
        Err(e) => return refuse(&api.node, &parts.uri, e),
    };
    let request_id = key.request_id.to_vec();
    let result = if confirm {
        let r = pb::ConfirmRequest {
            request_id,
            reservation_id,
            sku,
        };
        api.inventory.confirm(grpc(&parts, r)).await
    } else {
        let r = pb::ReleaseRequest {
            request_id,
            reservation_id,
            sku,
        };
        api.inventory.release(grpc(&parts, r)).await
    };
    mutation_answer(&api, &parts, &key, StatusCode::OK, result, reservation_json)
}

fn batch_op(key: &Key, index: usize, op: s::BatchOp) -> pb::Operation {
    use pb::operation::Op as W;
    let request_id = key.for_op(index).to_vec();
    let op = match op {
        s::BatchOp::SetStock { sku, on_hand } => W::SetStock(pb::SetStockRequest {
            request_id,
            sku,
            on_hand,
            expected_version: None,
        }),
        s::BatchOp::AdjustStock { sku, delta } => W::AdjustStock(pb::AdjustStockRequest {
            request_id,
            sku,
            delta,
            expected_version: None,
        }),
        s::BatchOp::Decrement { sku, quantity } => W::Decrement(pb::DecrementRequest {
            request_id,
            sku,
            quantity,
        }),
        s::BatchOp::Reserve {
            reservation_id,
            items,
            ttl_ms,
        } => W::Reserve(pb::ReserveRequest {
            request_id,
            reservation_id: reservation_id.unwrap_or_default(),
            items: items_pb(items),
            ttl_ms,
        }),
        s::BatchOp::Confirm {
            reservation_id,
            sku,
        } => W::Confirm(pb::ConfirmRequest {
            request_id,
            reservation_id,
            sku,
        }),
        s::BatchOp::Release {
            reservation_id,
            sku,
        } => W::Release(pb::ReleaseRequest {
            request_id,
            reservation_id,
            sku,
        }),
    };
    pb::Operation { op: Some(op) }
}

/// NOT_LEADER for the whole batch when every operation was refused NOT_LEADER with
/// the same leader: nothing was proposed, so the whole batch is redirected there. A
/// batch spanning shards led by different nodes answers per operation instead; its
/// NOT_LEADER operations were not proposed either and may be sent again as their own
/// batch (docs/HTTP.md).
fn whole_batch_elsewhere(reply: &pb::BatchReply) -> Option<Error> {
    use pb::operation_result::Result as R;
    let mut leader: Option<(u64, u64, &str)> = None;
    for r in &reply.results {
        let Some(R::Error(d)) = &r.result else {
            return None;
        };
        let this = (d.shard_id, d.leader_id, d.leader_addr.as_str());
        if d.reason() != pb::Reason::NotLeader || this.2.is_empty() {
            return None;
        }
        match leader {
            Some(first) if first.2 != this.2 => return None,
            _ => leader = Some(this),
        }
    }
    let (shard_id, leader_id, addr) = leader?;
    Some(Error::NotLeader {
        shard_id: crate::router::ShardId(shard_id),
        leader: Some((leader_id, addr.to_string())),
    })
}

fn batch_result(r: pb::OperationResult) -> s::BatchResult {
    use pb::operation_result::Result as R;
    let mut out = s::BatchResult {
        stock: None,
        reservation: None,
        error: None,
    };
    match r.result {
        Some(R::Stock(stock)) => out.stock = Some(stock.into()),
        Some(R::Reservation(res)) => out.reservation = Some(res.into()),
        Some(R::Error(d)) => out.error = Some(error_body(&d, code_of_reason(d.reason()), "")),
        None => {}
    }
    out
}

#[utoipa::path(post, path = "/v1/batch", tag = "stock",
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry-safe key for the whole batch (docs/HTTP.md)")),
    request_body = s::Batch,
    responses((status = 200, description = "One result per operation, in order", body = s::BatchReply), s::Refusals))]
pub async fn batch(State(api): State<Api>, parts: Parts, bytes: Bytes) -> Answer {
    let prepared = (|| {
        let key = Key::from_headers(&parts.headers)?;
        let b: s::Batch = body(&bytes)?;
        let ops = b
            .ops
            .into_iter()
            .enumerate()
            .map(|(i, op)| batch_op(&key, i, op))
            .collect();
        Ok::<_, Error>((
            key,
            pb::BatchRequest {
                ops,
                atomic: b.atomic,
            },
        ))
    })();
    let (key, request) = match prepared {
        Ok(p) => p,
        Err(e) => return refuse(&api.node, &parts.uri, e),
    };
    let result = api.inventory.batch(grpc(&parts, request)).await;
    if let Some(not_leader) = result
        .as_ref()
        .ok()
        .and_then(|r| whole_batch_elsewhere(r.get_ref()))
    {
        let mut response = refuse(&api.node, &parts.uri, not_leader);
        response.headers_mut().extend(key_header(&key));
        return response;
    }
    mutation_answer(&api, &parts, &key, StatusCode::OK, result, |reply| {
        let results = reply.results.into_iter().map(batch_result).collect();
        (s::BatchReply { results }, HeaderMap::new())
    })
}

#[utoipa::path(get, path = "/v1/cluster/status", tag = "cluster",
    responses((status = 200, description = "Every node's view of its shards", body = s::ClusterStatus), s::Refusals))]
pub async fn cluster_status(State(api): State<Api>, parts: Parts) -> Answer {
    match api
        .admin
        .cluster_status(grpc(&parts, pb::ClusterStatusRequest {}))
        .await
    {
        Ok(reply) => json(
            StatusCode::OK,
            &s::ClusterStatus::from(reply.into_inner()),
            HeaderMap::new(),
        ),
        Err(refused) => refusal(&api.node, &parts.uri, &refused),
    }
}

#[utoipa::path(get, path = "/v1/health", tag = "cluster",
    responses((status = 200, description = "Serving", body = s::Health),
        (status = 503, description = "Not serving yet (or any more)", body = s::Health)))]
pub async fn health(State(api): State<Api>) -> Answer {
    let serving = api.node.joined();
    let body = s::Health {
        status: if serving { "SERVING" } else { "NOT_SERVING" }.into(),
        node_id: api.node.id,
    };
    let status = if serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &body, HeaderMap::new())
}

#[utoipa::path(get, path = "/v1/console/stats", tag = "cluster",
    responses((status = 200, description = "This node's request rates, latency, refusals and hottest SKUs", body = crate::telemetry::console::ConsoleStats), s::Refusals))]
pub async fn console_stats(State(api): State<Api>, parts: Parts) -> Answer {
    if let Err(refused) = api.admin.authorized(
        "console_stats",
        &grpc(&parts, ()),
        crate::security::Need::Status,
    ) {
        return refusal(&api.node, &parts.uri, &refused);
    }
    let stats = crate::telemetry::console::snapshot(api.node.id, HOT_SKUS_SHOWN);
    json(StatusCode::OK, &stats, HeaderMap::new())
}

/// Hottest SKUs the console lists.
const HOT_SKUS_SHOWN: usize = 10;

/// `GET /ui`: the console page (static; the data it fetches is authorized).
pub async fn console_page() -> Answer {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page loads nothing from elsewhere and is not framed.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    let mut response = Response::new(axum::body::Body::from(include_str!("console.html")));
    response.headers_mut().extend(headers);
    response
}
