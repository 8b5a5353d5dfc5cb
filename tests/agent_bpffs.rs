//! A fresh host has no bpf filesystem at /sys/fs/bpf: `fqdnd run --mode transparent` with the
//! default bpffs directory mounts one there, says so, and runs. The agent runs in a private mount
//! namespace (where /sys/fs/bpf is made unmounted first) and its own network namespace, so the
//! host's mounts and network are never touched. Root only.

mod common;

use common::fqdnd::Fqdnd;
use common::netns::Netns;
use common::privileged;

/// The filesystem type mounted at `path` in the mount namespace of process `pid`, if any.
fn mounted_type(pid: u32, path: &str) -> Option<String> {
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).ok()?;
    // The last mount at a path is the visible one.
    mounts.lines().rev().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
        (at == path).then(|| kind.to_string())
    })
}

#[test]
fn transparent_mode_mounts_bpffs_when_none_is_mounted() {
    if !privileged::available("transparent_mode_mounts_bpffs_when_none_is_mounted") {
        return;
    }
    let node = Netns::new("node");
    let netns = format!("--net={}", node.path().display());
    // unshare: a private copy of the mounts; sh: /sys/fs/bpf unmounted there (a no-op on a host
    // that never mounted it), then the agent, in the node's network namespace.
    let prefix = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "nsenter",
        netns.as_str(),
        "--",
        "sh",
        "-c",
        "umount -l /sys/fs/bpf 2>/dev/null; exec \"$@\"",
        "sh",
    ];
    let agent = Fqdnd::start_exact_wrapped(&prefix, &["--mode", "transparent"]).expect("the agent starts");
    agent.wait_log("fqdnd running").expect("the agent runs");
    let log = agent.log();
    assert!(log.contains("no bpf filesystem was mounted; mounted one"), "{log}");
    assert_eq!(mounted_type(agent.pid(), "/sys/fs/bpf").as_deref(), Some("bpf"), "{log}");
    // Its pins are where the default says.
    assert!(log.contains("datapath converged"), "{log}");
    let status = agent.stop().expect("stopped");
    assert!(status.success(), "{status}");
}
