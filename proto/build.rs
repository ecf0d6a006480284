//! Compiles the `.proto` files with protox (pure Rust), so no system `protoc` is needed.
use std::{env, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["presence/v1/presence.proto", "profile/v1/profile.proto", "push/v1/push.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out.join("push_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Hand-written so a message is encoded once for all its receivers (src/wire.rs).
        .extern_path(".push.v1.SubscribeResponse", "crate::wire::SubscribeResponse")
        .codec_path("crate::codec::PushCodec")
        // Payloads as `Bytes`: decoded without a copy, shared when re-encoded.
        .bytes(".push.v1")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
