//! Compiles stockpile/v1/*.proto with protox (a pure-Rust protobuf compiler), so
//! building Stockpile never needs a `protoc` binary on the machine.

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
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
