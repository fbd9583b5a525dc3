//! Compiles the CRI v1 proto with protox (pure Rust, so no system `protoc`)
//! and generates prost messages plus tonic clients and servers from it.

use std::path::PathBuf;

use prost::Message;

const PROTO_DIR: &str = "proto";
const CRI_PROTO: &str = "proto/runtime/v1/api.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={CRI_PROTO}");

    let fds = protox::compile([CRI_PROTO], [PROTO_DIR])?;

    // Kept next to the generated code so that tests (and gRPC reflection,
    // should we want it) see exactly the descriptors the code came from.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("cri_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
