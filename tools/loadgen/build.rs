//! Generates the gRPC door's messages from the published `libs/protocol/proto/chat.proto` (the
//! `samvad.v3.Message` it carries is the protocol crate's), with the protoc binary shipped in
//! `protoc-bin-vendored`. The client reads the door's `Event`s with them.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    const PROTOS: &str = "../../libs/protocol/proto";
    const CHAT: &str = "../../libs/protocol/proto/chat.proto";
    println!("cargo:rerun-if-changed={PROTOS}");
    prost_build::Config::new()
        .protoc_executable(protoc_bin_vendored::protoc_bin_path()?)
        .extern_path(".samvad.v3", "::samvad_protocol::v3::pb")
        .compile_protos(&[CHAT], &[PROTOS])?;
    Ok(())
}
