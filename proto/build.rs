//! Compiles stockpile/v1/*.proto with protox (a pure-Rust protobuf compiler), so
//! building Stockpile never needs a `protoc` binary on the machine.
//!
//! Two passes over the same descriptors: the first generates the messages and the
//! servers, whose requests decode through `crate::codec::RequestCodec` (undecodable
//! input becomes INVALID_ARGUMENT naming the field); the second generates only the
//! clients (`extern_path` points them at the first pass's messages), which keep tonic's
//! plain codec: a reply that cannot be decoded is not the caller's bad argument.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "stockpile/v1/errors.proto",
        "stockpile/v1/inventory.proto",
        "stockpile/v1/admin.proto",
        "stockpile/v1/raft.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["."])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("stockpile_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    let servers = out_dir.join("servers");
    let clients = out_dir.join("clients");
    std::fs::create_dir_all(&servers)?;
    std::fs::create_dir_all(&clients)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .codec_path("crate::codec::RequestCodec")
        .out_dir(&servers)
        .compile_fds(descriptors.clone())?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .extern_path(".stockpile.v1", "crate::v1")
        .out_dir(&clients)
        .compile_fds(descriptors)?;
    Ok(())
}
