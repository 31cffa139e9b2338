//! The HTTP/JSON face (docs/HTTP.md), served beside gRPC on the node's one port
//! (HTTP/1.1 and HTTP/2, through tonic's axum routes). Resource-style under `/v1/`;
//! every call is the matching RPC of the Inventory or Admin service (`routes`), so
//! authentication, validation, limits and errors are the gRPC path's.
//!
//! - `schema`: the JSON shapes and their OpenAPI schemas;
//! - `routes`: the handlers;
//! - `reply`: JSON answers, ETag / If-Match, refusals and the leader redirect;
//! - `idempotency`: `Idempotency-Key` ↔ request id;
//! - `console.html`: the web console at `/ui` (data from `/v1/cluster/status` and
//!   `/v1/console/stats`, i.e. `telemetry::console`).
//!
//! The OpenAPI 3.1 document is generated from the handlers (`utoipa`), served at
//! `/v1/openapi.json` and checked in as `docs/openapi.json` (the integration test
//! `http::docs_openapi_json_is_the_generated_document` compares them).

pub mod idempotency;
pub mod reply;
pub mod routes;
pub mod schema;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use utoipa::OpenApi;

use crate::api::admin::AdminService;
use crate::api::inventory::InventoryService;
use crate::node::Node;
use routes::Api;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Stockpile HTTP API",
        description = "Inventory over HTTP/JSON: the same operations, validation, limits and errors as the gRPC API (docs/HTTP.md, docs/ERRORS.md).",
        license(name = "Apache-2.0"),
        version = "1"
    ),
    paths(
        routes::get_sku,
        routes::set_sku,
        routes::adjust_sku_doc,
        routes::decrement_sku_doc,
        routes::list_skus,
        routes::reserve,
        routes::get_reservation,
        routes::confirm_doc,
        routes::release_doc,
        routes::batch,
        routes::cluster_status,
        routes::health,
        routes::console_stats,
    ),
    components(schemas(schema::Consistency)),
    tags(
        (name = "stock", description = "Stock records: read, list, set, adjust, decrement, batches"),
        (name = "reservations", description = "Holds with a time to live: reserve, read, confirm, release"),
        (name = "cluster", description = "Cluster status and health"),
    )
)]
struct ApiDoc;

/// The OpenAPI document, pretty-printed as served and as checked in.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"OpenAPI document: {e}\"}}"))
        + "\n"
}

/// The `/v1/` routes of one node. Request bodies are bounded by the same
/// `limits.request_bytes_max` as gRPC requests.
pub fn router(node: Arc<Node>) -> Router {
    let request_bytes_max = node.cluster.limits.request_bytes_max;
    let api = Api {
        inventory: Arc::new(InventoryService::new(node.clone())),
        admin: Arc::new(AdminService::new(node.clone())),
        node,
    };
    Router::new()
        .route("/v1/skus", get(routes::list_skus))
        .route(
            "/v1/skus/{sku}",
            get(routes::get_sku)
                .put(routes::set_sku)
                .post(routes::sku_action),
        )
        .route("/v1/reservations", post(routes::reserve))
        .route(
            "/v1/reservations/{id}",
            get(routes::get_reservation).post(routes::reservation_action),
        )
        .route("/v1/batch", post(routes::batch))
        .route("/v1/cluster/status", get(routes::cluster_status))
        .route("/v1/health", get(routes::health))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/console/stats", get(routes::console_stats))
        .route("/ui", get(routes::console_page))
        .layer(DefaultBodyLimit::max(request_bytes_max))
        .with_state(api)
}

/// Anything no route matched: gRPC's UNIMPLEMENTED to a gRPC client, a JSON 404
/// naming the path (and where the contract is) to anyone else.
pub async fn fallback(
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> axum::response::Response {
    let is_grpc = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"));
    if is_grpc {
        return tonic::Status::unimplemented(format!("no gRPC service at {}", uri.path()))
            .into_http();
    }
    let body = schema::ErrorBody {
        reason: "NOT_FOUND".into(),
        code: "NOT_FOUND".into(),
        message: format!(
            "no such path: {} (the API is described at /v1/openapi.json)",
            uri.path()
        ),
        field: Some("path".into()),
        ..Default::default()
    };
    reply::json(
        axum::http::StatusCode::NOT_FOUND,
        &body,
        axum::http::HeaderMap::new(),
    )
}

async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi_json(),
    )
}
