//! Stockpile's wire API, `stockpile.v1`: the Inventory, Admin and internal Raft
//! services and their messages, generated at build time from `stockpile/v1/*.proto`.
//!
//! - `v1`: messages, servers and clients (build.rs explains the two passes);
//! - `codec`: the servers' request codec (decode failures name the field).
//!
//! The encoded file descriptor set is exported for gRPC server reflection.

pub mod codec;

#[allow(clippy::all, clippy::too_many_lines, missing_docs)] // generated code
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/servers/stockpile.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/clients/stockpile.v1.rs"));
}

/// The encoded `FileDescriptorSet` of every Stockpile .proto file.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/stockpile_descriptor.bin"));
