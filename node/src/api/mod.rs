//! The gRPC API: input validation, routing to shards, and the one mapping of errors
//! to `tonic::Status` (`status`).

pub mod admin;
pub mod convert;
pub mod inventory;
pub mod page_token;
pub mod raft_service;
pub mod status;
