//! Stockpile's wire API, `stockpile.v1`: the Inventory, Admin and internal Raft
//! services and their messages, generated at build time from `stockpile/v1/*.proto`.
//!
//! The encoded file descriptor set is exported for gRPC server reflection.

#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("stockpile.v1");
}

/// The encoded `FileDescriptorSet` of every Stockpile .proto file.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/stockpile_descriptor.bin"));
