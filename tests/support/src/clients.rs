//! Real resolver clients: the C library's getaddrinfo, built with musl (`musl-gcc -static`, as in
//! an alpine pod) and with glibc, from tests/support/clients/getaddrinfo.c.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Which C library a client is built against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Libc {
    Musl,
    Glibc,
}

fn build(libc: Libc) -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/getaddrinfo.c");
    let dir = crate::paths::scratch("clients");
    let (compiler, name, static_flag): (&str, &str, &[&str]) = match libc {
        Libc::Musl => ("musl-gcc", "getaddrinfo-musl", &["-static"]),
        Libc::Glibc => ("gcc", "getaddrinfo-glibc", &[]),
    };
    let out = dir.join(name);
    // Build to a per-process name, then rename: test binaries running in parallel may race here.
    let tmp = dir.join(format!("{name}.{}", std::process::id()));
    let status = Command::new(compiler)
        .args(static_flag)
        .arg("-O2")
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .status()
        .map_err(|e| format!("running {compiler} (Debian package musl-tools / gcc): {e}"))?;
    if !status.success() {
        return Err(format!("{compiler} failed on {}: {status}", src.display()));
    }
    std::fs::rename(&tmp, &out).map_err(|e| format!("renaming {}: {e}", tmp.display()))?;
    Ok(out)
}

/// Path of the client built against `libc`, building it on first use.
pub fn client(libc: Libc) -> PathBuf {
    static MUSL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    static GLIBC: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let cell = match libc {
        Libc::Musl => &MUSL,
        Libc::Glibc => &GLIBC,
    };
    cell.get_or_init(|| build(libc)).clone().unwrap_or_else(|e| panic!("building the {libc:?} getaddrinfo client: {e}"))
}

/// What one getaddrinfo run printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub exit_code: i32,
    pub addrs: Vec<std::net::IpAddr>,
    pub connected: bool,
    pub output: String,
}

impl Resolution {
    pub fn parse(exit_code: i32, stdout: &str) -> Self {
        let addrs = stdout.lines().filter_map(|l| l.trim().parse().ok()).collect();
        let connected = stdout.lines().any(|l| l.starts_with("connected "));
        Resolution { exit_code, addrs, connected, output: stdout.to_string() }
    }
}
