//! Generates the v3 protobuf types from `proto/message.proto` with the protoc binary shipped in
//! `protoc-bin-vendored`, so building never depends on a system protoc.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    const PROTO: &str = "proto/message.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    prost_build::Config::new()
        // Handing prost-build the vendored binary directly is equivalent to setting PROTOC,
        // without mutating the build script's environment (which edition 2024 makes `unsafe`).
        .protoc_executable(protoc_bin_vendored::protoc_bin_path()?)
        // Sorted maps make v3 encoding deterministic (golden bytes, snapshots).
        .btree_map(["."])
        .compile_protos(&[PROTO], &["proto"])?;
    Ok(())
}
