//! Compiles `bpf/*.bpf.c` with clang into `$OUT_DIR/<name>.bpf.o`; the crate embeds the objects.
//! C and Debian's clang instead of Rust eBPF: no nightly toolchain, rust-src or bpf-linker in CI.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const PACKAGES: &str = "clang-14 llvm-14 libbpf-dev";

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src_dir = Path::new("bpf");
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=FQDND_CLANG");

    let clang = find_clang().unwrap_or_else(|tried| {
        panic!(
            "ebpf-redirect needs clang to compile its eBPF programs (tried: {tried}). \
             Install the Debian packages: apt-get install -y {PACKAGES} \
             (or point FQDND_CLANG at a clang binary)"
        )
    });
    let multiarch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "/usr/include/aarch64-linux-gnu",
        _ => "/usr/include/x86_64-linux-gnu",
    };
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        panic!("/usr/include/bpf/bpf_helpers.h is missing: apt-get install -y {PACKAGES}");
    }

    let mut sources: Vec<PathBuf> = std::fs::read_dir(src_dir)
        .expect("ebpf-redirect/bpf exists")
        .map(|e| e.expect("reading ebpf-redirect/bpf").path())
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();
    for src in sources {
        println!("cargo:rerun-if-changed={}", src.display());
        let name = src.file_name().unwrap().to_string_lossy().trim_end_matches(".c").to_string();
        let obj = out_dir.join(format!("{name}.o"));
        let output = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-I{multiarch}"))
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .output()
            .unwrap_or_else(|e| panic!("running {clang}: {e}"));
        if !output.status.success() {
            panic!(
                "{clang} failed on {}:\n{}{}",
                src.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// The first clang that runs: `$FQDND_CLANG`, then `clang`, then versioned names (Debian installs
/// clang-14 without the plain name unless the `clang` package is present).
fn find_clang() -> Result<String, String> {
    let mut candidates = Vec::new();
    if let Ok(c) = env::var("FQDND_CLANG") {
        candidates.push(c);
    }
    candidates
        .extend(["clang", "clang-14", "clang-15", "clang-16", "clang-17", "clang-18", "clang-19"].map(String::from));
    for c in &candidates {
        if Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Ok(c.clone());
        }
    }
    Err(candidates.join(", "))
}
