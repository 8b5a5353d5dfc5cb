//! `--deny-response reject` with the real agent and real clients: under the seed's stage 4 (both
//! directions default deny), curl to www.google.com's address (not allowed) fails at once with
//! "connection refused" (a TCP RST from the datapath) instead of hanging, and dig to a server no
//! rule allows gets an ICMP port unreachable; the drop flows say what was sent. The same curl in
//! the default drop mode times out. Times to failure are printed for the report, never asserted.
//! Root only.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::privileged;
use common::topology::{Cluster, WWW_GOOGLE4, seed_stage};
use serde_json::Value;

/// curl's exit codes: 7 "failed to connect" (refused), 28 "operation timed out".
const CURL_REFUSED: i32 = 7;
const CURL_TIMEOUT: i32 = 28;

fn cluster(args: &[&str]) -> Cluster {
    let mut c = Cluster::build();
    c.agent_args = args.iter().map(|a| a.to_string()).collect();
    c.start_agent();
    c.set_policy("locking-down-alpine.yaml", &seed_stage(4));
    c
}

/// curl from the pod to www.google.com's address: (exit code, time it took, stderr).
fn curl(c: &Cluster) -> (i32, Duration, String) {
    let url = format!("http://{WWW_GOOGLE4}/");
    let start = Instant::now();
    let out = c.pod_exec(Path::new("curl"), &["-sS", "-o", "/dev/null", "--max-time", "4", &url]);
    (out.status.code().unwrap_or(-1), start.elapsed(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn summary(f: &Value) -> &str {
    f["Summary"].as_str().unwrap_or_default()
}

#[test]
fn reject_makes_denied_connections_fail_at_once() {
    if !privileged::available("reject_makes_denied_connections_fail_at_once") {
        return;
    }
    let c = cluster(&["--deny-response", "reject"]);
    let (code, took, err) = curl(&c);
    assert_eq!(code, CURL_REFUSED, "curl under reject: {err}\n{}", c.log());
    eprintln!("reject: curl to {WWW_GOOGLE4}:80 failed (exit {code}) after {took:?}: {}", err.trim());
    let flow = c.wait_flow(&["--type", "drop"], "for the rejected connect", |f| {
        f["IP"]["destination"] == WWW_GOOGLE4.to_string() && summary(f).contains("rejected")
    });
    assert_eq!(flow["verdict"], "DROPPED", "{flow}");
    assert_eq!(summary(&flow), "TCP Flags: SYN (rejected: TCP RST sent)", "{flow}");

    // UDP: DNS to a server no rule allows (www.google.com's address) is answered port unreachable.
    let start = Instant::now();
    let out = c.pod_exec(Path::new("dig"), &[&format!("@{WWW_GOOGLE4}"), "+tries=1", "+time=3", "example.test"]);
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("connection refused"), "dig: {text}");
    eprintln!("reject: dig @{WWW_GOOGLE4} refused after {took:?}");
    let flow = c.wait_flow(&["--type", "drop"], "for the rejected datagram", |f| {
        f["l4"]["UDP"]["destination_port"] == 53 && summary(f).contains("rejected")
    });
    assert_eq!(summary(&flow), "UDP (rejected: ICMP port unreachable sent)", "{flow}");
}

#[test]
fn drop_mode_lets_denied_connections_time_out() {
    if !privileged::available("drop_mode_lets_denied_connections_time_out") {
        return;
    }
    let c = cluster(&[]);
    let (code, took, err) = curl(&c);
    assert_eq!(code, CURL_TIMEOUT, "curl under drop: {err}");
    eprintln!("drop: curl to {WWW_GOOGLE4}:80 failed (exit {code}) after {took:?}: {}", err.trim());
    let flow = c.wait_flow(&["--type", "drop"], "for the dropped connect", |f| {
        f["IP"]["destination"] == WWW_GOOGLE4.to_string()
    });
    assert_eq!(summary(&flow), "TCP Flags: SYN", "{flow}");
}
