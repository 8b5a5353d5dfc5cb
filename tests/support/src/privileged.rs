//! Gate for tests that need root (network namespaces, eBPF): skip with a printed reason, unless
//! FQDND_REQUIRE_PRIVILEGED=1 (CI), where a skip would hide a failure and panics instead.

/// True when the test may run. Call first thing: `if !privileged::available("name") { return; }`.
pub fn available(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let missing: Vec<&str> = ["ip", "nsenter"].into_iter().filter(|tool| which(tool).is_none()).collect();
    let reason = if !root {
        Some("needs root for network namespaces and eBPF".to_string())
    } else if !missing.is_empty() {
        Some(format!("needs {} (Debian: iproute2, util-linux)", missing.join(", ")))
    } else {
        None
    };
    match reason {
        None => true,
        Some(reason) if std::env::var("FQDND_REQUIRE_PRIVILEGED").as_deref() == Ok("1") => {
            panic!("{test}: {reason}, and FQDND_REQUIRE_PRIVILEGED=1 forbids skipping")
        }
        Some(reason) => {
            eprintln!("{test}: SKIPPED: {reason}");
            false
        }
    }
}

/// Path of `tool` on PATH (plus the sbin directories a non-login root shell may lack).
pub fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| std::path::Path::new(dir).join(tool))
        .find(|p| p.is_file())
}
