//! The gRPC API. One path per request: `decode` (all validation) → route (`router`)
//! → propose or read (`shard`) → `encode`; errors leave through `status`, the one
//! mapping to `tonic::Status`, after telemetry has observed them typed.
//!
//! - `inventory`: the Inventory service (mutations, batches; reads in `reads`);
//! - `admin`: cluster status, shard map, operator calls;
//! - `raft_service`: the internal Raft service (the logic is `raft::inbound`);
//! - `page_token`: List's opaque positions.

pub mod admin;
mod admin_moves;
pub mod decode;
pub mod encode;
pub mod http;
pub mod inventory;
pub mod page_token;
pub mod raft_service;
mod reads;
pub mod status;
