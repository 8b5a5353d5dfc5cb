//! Two jobs, each in its own function:
//!
//! - `hubble_protos()` compiles Hubble's Observer API subset (`proto/`) into Rust (prost messages,
//!   tonic service and client). The .proto files are parsed by protox, a protobuf compiler written
//!   in Rust, rather than by Debian's `protoc`: the build then needs nothing outside cargo (no apt
//!   package on every machine that builds fqdnd, no protoc version to match), and protox carries the
//!   well-known types (`google/protobuf/timestamp.proto`, `wrappers.proto`) itself. The descriptor
//!   set is also written to OUT_DIR: `fqdnd observe --server` prints flows with the protobuf JSON
//!   mapping of it.
//! - `git_commit()` stamps the binary with the commit it was built from, as FQDND_GIT_COMMIT
//!   (`fqdnd version`, `fqdnd status`, `fqdnd_build_info`): `git rev-parse` when there is a
//!   repository, else the FQDND_GIT_COMMIT the build was given (the container build copies no .git:
//!   pass it as a build argument), else "unknown".

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

const PROTOS: [&str; 3] = ["proto/flow/flow.proto", "proto/relay/relay.proto", "proto/observer/observer.proto"];

fn main() -> anyhow::Result<()> {
    git_commit();
    hubble_protos()
}

fn hubble_protos() -> anyhow::Result<()> {
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

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn git_commit() {
    println!("cargo:rerun-if-env-changed=FQDND_GIT_COMMIT");
    let from_git = git(&["rev-parse", "--short=12", "HEAD"]);
    if from_git.is_some() {
        // Rebuild the stamp when HEAD moves: HEAD itself, the branch it points to, packed refs.
        for path in [Some("HEAD".to_string()), git(&["symbolic-ref", "-q", "HEAD"]), Some("packed-refs".to_string())]
            .into_iter()
            .flatten()
        {
            // Only files that exist: cargo reruns the script on every build for a missing one.
            if let Some(p) = git(&["rev-parse", "--git-path", &path]).filter(|p| std::path::Path::new(p).exists()) {
                println!("cargo:rerun-if-changed={p}");
            }
        }
    }
    let commit = from_git
        .or_else(|| std::env::var("FQDND_GIT_COMMIT").ok().filter(|c| !c.trim().is_empty()))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=FQDND_GIT_COMMIT={commit}");
}
