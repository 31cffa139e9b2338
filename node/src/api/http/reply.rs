//! How the HTTP face answers: JSON bodies, the headers that carry facts (`ETag`,
//! `Idempotency-Key`, `Retry-After`), and refusals. A refusal is the gRPC status the
//! one implementation returned, its `ErrorDetail` turned into JSON field for field,
//! with the HTTP status from `api::status::http_status`.
//!
//! A node that does not lead the shard answers `307 Temporary Redirect` to the
//! leader's (or, without one, a replica's) URL: the method, body and
//! `Idempotency-Key` are sent again unchanged by any client that follows redirects
//! (`curl -L`), and the refused request was never proposed, so following it cannot
//! apply anything twice. Nodes do not forward: the redirect costs the client one
//! round trip and keeps every node's work bounded.

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use prost::Message;
use stockpile_proto::v1 as pb;

use super::schema::{ErrorBody, state_name};
use crate::api::status::http_status;
use crate::error::Error;
use crate::node::Node;

/// A JSON reply with extra headers.
pub fn json<T: serde::Serialize>(status: StatusCode, body: &T, headers: HeaderMap) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().extend(headers);
    response
}

/// `"7"`: a record's version as an entity tag.
pub fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// The `If-Match` header as an expected version: `"7"`, `W/"7"` or `7`.
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || Error::InvalidArgument {
        field: "If-Match".into(),
        rule: "must be one entity tag: the record's version in quotes, e.g. \"7\"".into(),
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    text.parse().map(Some).map_err(|_| bad())
}

/// A refusal made here, before the one implementation was called (bad JSON, a bad
/// header): the same mapping as every other.
pub fn refuse(node: &Node, uri: &Uri, error: Error) -> Response {
    refusal(node, uri, &crate::api::status::to_status(error))
}

/// A refusal as JSON outside axum (a plaintext connection to a TLS node), with the
/// HTTP status of its reason.
pub fn plain_refusal(status: &tonic::Status) -> axum::http::Response<tonic::body::Body> {
    let detail = pb::ErrorDetail::decode(status.details()).unwrap_or_default();
    let body = error_body(&detail, status.code(), status.message());
    let text = serde_json::to_string(&body).unwrap_or_default();
    let mut response = axum::http::Response::new(tonic::body::Body::new(text));
    *response.status_mut() = StatusCode::from_u16(http_status(detail.reason(), status.code()))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The HTTP answer to a refused call.
pub fn refusal(node: &Node, uri: &Uri, status: &tonic::Status) -> Response {
    let detail = pb::ErrorDetail::decode(status.details()).unwrap_or_default();
    let body = error_body(&detail, status.code(), status.message());
    if let Some(location) = redirect_target(node, uri, &detail) {
        let mut headers = HeaderMap::new();
        headers.insert(header::LOCATION, location);
        return json(StatusCode::TEMPORARY_REDIRECT, &body, headers);
    }
    let code = http_status(detail.reason(), status.code());
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut headers = HeaderMap::new();
    if let Some(seconds) = retry_after_s(&detail, code) {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    json(code, &body, headers)
}

/// `Retry-After` in whole seconds (HTTP has no finer unit): the detail's
/// `retry_after_ms` rounded up, or one second for a shard that is between leaders.
fn retry_after_s(detail: &pb::ErrorDetail, code: StatusCode) -> Option<u64> {
    match code {
        StatusCode::TOO_MANY_REQUESTS => Some(detail.retry_after_ms.div_ceil(1000).max(1)),
        StatusCode::SERVICE_UNAVAILABLE => Some(1),
        _ => None,
    }
}

/// Where a NOT_LEADER or SHARD_NOT_HERE refusal sends the client: the same path on
/// the leader, or on the first replica when this node holds none.
fn redirect_target(node: &Node, uri: &Uri, detail: &pb::ErrorDetail) -> Option<HeaderValue> {
    let addr = match detail.reason() {
        pb::Reason::NotLeader if !detail.leader_addr.is_empty() => detail.leader_addr.clone(),
        pb::Reason::ShardNotHere => detail
            .replica_ids
            .iter()
            .find(|id| **id != node.id)
            .and_then(|id| node.map.get().addr(*id).map(str::to_string))?,
        _ => return None,
    };
    let scheme = if node.security.tls_on() {
        "https"
    } else {
        "http"
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    HeaderValue::from_str(&format!("{scheme}://{addr}{path}")).ok()
}

/// The detail as JSON: every non-empty field.
pub fn error_body(d: &pb::ErrorDetail, code: tonic::Code, message: &str) -> ErrorBody {
    let text = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
    let num = |n: u64| Some(n).filter(|n| *n != 0);
    let list = |v: &[u64]| Some(v.to_vec()).filter(|v| !v.is_empty());
    let reason = d.reason();
    ErrorBody {
        reason: reason_text(reason, code),
        code: code_name(code),
        message: text(&d.message).unwrap_or_else(|| message.to_string()),
        field: text(&d.field),
        rule: text(&d.rule),
        sku: text(&d.sku),
        available: (reason == pb::Reason::InsufficientStock).then_some(d.available),
        shard_id: num(d.shard_id),
        leader_id: num(d.leader_id),
        leader_addr: text(&d.leader_addr),
        retry_after_ms: num(d.retry_after_ms),
        epoch: num(d.epoch),
        state: (d.state != 0).then(|| state_name(d.state)),
        shard_ids: list(&d.shard_ids),
        request_id: Some(super::idempotency::hex(&d.request_id)).filter(|s| !s.is_empty()),
        size_bytes: num(d.size_bytes),
        limit_bytes: num(d.limit_bytes),
        node_id: num(d.node_id),
        reservation_id: text(&d.reservation_id),
        failed_op: (reason == pb::Reason::Aborted).then_some(d.failed_op),
        replica_ids: list(&d.replica_ids),
        identity: text(&d.identity),
        expected_version: (reason == pb::Reason::VersionMismatch).then_some(d.expected_version),
        actual_version: (reason == pb::Reason::VersionMismatch).then_some(d.actual_version),
    }
}

fn reason_text(reason: pb::Reason, code: tonic::Code) -> String {
    if reason == pb::Reason::Unspecified {
        // A refusal made by the transport, not by the store: its code names it.
        return code_name(code);
    }
    reason
        .as_str_name()
        .trim_start_matches("REASON_")
        .to_string()
}

/// `FAILED_PRECONDITION`: the gRPC code's canonical name.
fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            let sep = (i > 0 && c.is_ascii_uppercase()).then_some('_');
            sep.into_iter()
                .chain(std::iter::once(c.to_ascii_uppercase()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_the_canonical_ones() {
        assert_eq!(
            code_name(tonic::Code::FailedPrecondition),
            "FAILED_PRECONDITION"
        );
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(tonic::Code::Ok), "OK");
    }

    #[test]
    fn if_match_reads_strong_weak_and_bare_tags() {
        let mut headers = HeaderMap::new();
        assert_eq!(if_match(&headers).unwrap(), None);
        for (value, version) in [("\"7\"", 7), ("W/\"8\"", 8), ("9", 9)] {
            headers.insert(header::IF_MATCH, HeaderValue::from_static(value));
            assert_eq!(if_match(&headers).unwrap(), Some(version));
        }
        headers.insert(header::IF_MATCH, HeaderValue::from_static("*"));
        let Err(Error::InvalidArgument { field, .. }) = if_match(&headers) else {
            panic!("* was accepted");
        };
        assert_eq!(field, "If-Match");
    }

    #[test]
    fn an_insufficient_stock_detail_keeps_available_zero() {
        let d = pb::ErrorDetail {
            reason: pb::Reason::InsufficientStock as i32,
            sku: "a".into(),
            available: 0,
            ..Default::default()
        };
        let body = error_body(&d, tonic::Code::FailedPrecondition, "m");
        assert_eq!(body.reason, "INSUFFICIENT_STOCK");
        assert_eq!(body.available, Some(0));
        assert_eq!(body.sku.as_deref(), Some("a"));
        assert_eq!(body.shard_id, None);
    }
}
