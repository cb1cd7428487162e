//! Generates the gRPC door's server from the published `libs/protocol/proto/chat.proto`, with
//! the protoc binary shipped in `protoc-bin-vendored` (no system protoc needed). The
//! `samvad.v3.Message` it carries is the protocol crate's; `Event` is written by the door itself
//! (see `grpc::Event`), so a message is encoded once however many devices it goes to. The
//! descriptor set serves reflection.

use std::error::Error;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn Error>> {
    const PROTOS: &str = "../../libs/protocol/proto";
    const CHAT: &str = "../../libs/protocol/proto/chat.proto";
    println!("cargo:rerun-if-changed={PROTOS}");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let descriptors = PathBuf::from(std::env::var("OUT_DIR")?).join("chat_descriptor.bin");
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        .extern_path(".samvad.v3", "::samvad_protocol::v3::pb")
        .extern_path(".samvad.chat.v1.Event", "crate::grpc::Event")
        .codec_path("crate::grpc::Codec")
        .file_descriptor_set_path(descriptors)
        .compile_with_config(config, &[CHAT], &[PROTOS])?;
    Ok(())
}
