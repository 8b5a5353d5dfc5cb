//! Compiles Hubble's Observer API subset (`proto/`) into Rust (prost messages, tonic service and
//! client).
//!
//! The .proto files are parsed by protox, a protobuf compiler written in Rust, rather than by
//! Debian's `protoc`: the build then needs nothing outside cargo (no apt package on every machine
//! that builds fqdnd, no protoc version to match), and protox carries the well-known types
//! (`google/protobuf/timestamp.proto`, `wrappers.proto`) itself. The descriptor set is also written
//! to OUT_DIR: `fqdnd observe --server` prints flows with the protobuf JSON mapping of it.

use std::path::PathBuf;

use anyhow::Context;

const PROTOS: [&str; 3] = ["proto/flow/flow.proto", "proto/relay/relay.proto", "proto/observer/observer.proto"];

fn main() -> anyhow::Result<()> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"]).context("compiling proto/*.proto")?;
    let out = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
    std::fs::write(out.join("hubble_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))
        .context("writing the descriptor set")?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)
        .context("generating Rust code from proto/*.proto")?;
    Ok(())
}
