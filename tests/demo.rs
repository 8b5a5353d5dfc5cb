//! `scripts/demo` (examples/demo.rs) walks the seed tutorial's four stages and shows at each what
//! the tutorial shows; it leaves nothing behind, also when interrupted. Root only. The example is
//! built by `cargo test` (and by `scripts/demo`); run `cargo build --example demo` first when
//! running this file alone.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::privileged;

fn demo() -> PathBuf {
    let bin = common::fqdnd::binary().parent().expect("target dir").join("examples/demo");
    assert!(bin.is_file(), "{} is not built: cargo build --example demo", bin.display());
    bin
}

/// Namespaces named for this demo process (the harness names them `fq<pid>x<n><role>`).
fn namespaces_of(pid: u32) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("fq{pid}x")))
        .map(str::to_string)
        .collect()
}

/// The agent's temp dir, from the start summary the demo prints (`from /tmp/fqdnd-e2e-X/policies`).
fn agent_dir(output: &str) -> Option<PathBuf> {
    let at = output.find("from /tmp/fqdnd-e2e-")?;
    let path = output[at + 5..].split_whitespace().next()?;
    Some(PathBuf::from(path.trim_end_matches(';')).parent()?.to_path_buf())
}

fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(needle)
        {
            found.push(String::from_utf8_lossy(&cmd).replace('\0', " "));
        }
    }
    found
}

#[test]
fn demo_walks_the_four_stages_and_cleans_up() {
    if !privileged::available("demo_walks_the_four_stages_and_cleans_up") {
        return;
    }
    let child = Command::new(demo()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("running the demo");
    let pid = child.id();
    let out = child.wait_with_output().expect("the demo's output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "demo failed ({}):\n{text}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    // In order: each stage's policy, the tutorial's commands from the pod, and observe's lines.
    let expected = [
        "== Stage 1: locking-down-alpine selects the pod",
        "(alpine) $ nslookup www.microsoft.com",
        "    10.200.0.1",
        "    connected 10.200.0.1 80",
        "== Stage 2: deny everything",
        ";; connection timed out; no servers could be reached",
        "curl: (28) Connection timed out",
        "kube-system/kube-dns:53 (ID:",
        "Policy denied DROPPED (UDP)",
        "== Stage 3: allow DNS",
        "    10.200.0.1",
        "-> 10.200.0.1:80 (world) Policy denied DROPPED (TCP Flags: SYN)",
        "== Stage 4: DNS through fqdnd",
        "    connected 10.200.0.1 80",
        "dns-request proxy FORWARDED (DNS Query www.microsoft.com. A)",
        "dns-response proxy FORWARDED (DNS Answer \"10.200.0.1\" TTL: 300 (Proxy www.microsoft.com. A))",
        "-> www.google.com:80 (world) Policy denied DROPPED (TCP Flags: SYN)",
        "$ fqdnd policy suggest --endpoint default/alpine",
        "- matchName: www.google.com",
        "Cleaned up: namespaces, NSD, the agent and its pins are gone.",
    ];
    let mut rest = text.as_str();
    for want in expected {
        match rest.find(want) {
            Some(at) => rest = &rest[at + want.len()..],
            None => panic!("{want:?} missing (or out of order) in the demo's output:\n{text}"),
        }
    }
    assert_eq!(namespaces_of(pid), Vec::<String>::new(), "namespaces left behind");
    let dir = agent_dir(&text).expect("the start summary names the agent's directory");
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(processes_mentioning(&dir.display().to_string()).is_empty(), "processes left behind");
}

#[test]
fn ctrl_c_cleans_up() {
    if !privileged::available("ctrl_c_cleans_up") {
        return;
    }
    let mut child = Command::new(demo()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("demo");
    let pid = child.id();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        seen.push_str(&line);
        line.clear();
        if seen.contains("== Stage 2") {
            break;
        }
    }
    assert!(seen.contains("== Stage 2"), "the demo never reached stage 2:\n{seen}");
    assert!(!namespaces_of(pid).is_empty(), "the demo's namespaces exist while it runs");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let mut tail = String::new();
    let _ = std::io::Read::read_to_string(&mut reader, &mut tail);
    let status = common::wait::until("the demo to exit after Ctrl-C", Duration::from_secs(60), || {
        child.try_wait().ok().flatten()
    })
    .unwrap_or_else(|e| {
        let _ = child.kill();
        panic!("{e}")
    });
    assert_eq!(status.code(), Some(130), "{seen}{tail}");
    assert!(tail.contains("Interrupted; cleaned up"), "{tail}");
    assert_eq!(namespaces_of(pid), Vec::<String>::new(), "namespaces left after Ctrl-C");
    let dir = agent_dir(&seen).expect("the start summary names the agent's directory");
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(processes_mentioning(&dir.display().to_string()).is_empty(), "the agent or NSD left running");
}
