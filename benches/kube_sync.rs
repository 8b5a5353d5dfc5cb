//! Kubernetes mode at cluster scale, against a real kube-apiserver 1.20 (loopback): 5,000 pods on
//! 50 nodes and 1,000 CiliumNetworkPolicies in the API, then `fqdnd run --mode transparent
//! --source kubernetes` in a node namespace. Reports (never asserts):
//!
//! - initial sync: from the agent's start to ready (every watch listed, first snapshot in the
//!   kernel), and the agent's resident memory after it;
//! - apply-to-map: from `kubectl apply` of a policy change (a new toCIDR for default/alpine) to the
//!   kernel's allow map holding the entry (polled with bpftool), p50 and p99 over 100 changes.
//!
//! `cargo bench --bench kube_sync` as root with the cached API server (scripts/kube-apiserver);
//! it says why and exits 0 otherwise. FQDND_BENCH_PODS / FQDND_BENCH_POLICIES / FQDND_BENCH_CHANGES
//! scale it down.

#[path = "../tests/common/mod.rs"]
#[allow(dead_code, unused_imports, clippy::all)]
mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::kube_cluster::{KubeCluster, NODE, PodNet};
use serde_json::json;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `kubectl apply -f -` of `objects` as one List, in batches of `batch`.
fn apply_batched(c: &KubeCluster, objects: &[serde_json::Value], batch: usize) {
    for chunk in objects.chunks(batch) {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": chunk});
        c.kube.apply_yaml(&list.to_string()).unwrap_or_else(|e| panic!("kubectl apply of a batch: {e:#}"));
    }
}

/// Pod IPs through the status subresource for many pods at once: kubectl 1.20 has no
/// `--subresource`, so one `kubectl replace --raw` per pod, eight at a time.
fn set_running(c: &KubeCluster, pods: &[(String, String, Ipv4Addr)]) {
    std::thread::scope(|s| {
        for part in pods.chunks(pods.len().div_ceil(8).max(1)) {
            s.spawn(move || {
                for (ns, name, ip) in part {
                    c.kube.set_pod_running(ns, name, &[IpAddr::V4(*ip)]).unwrap_or_else(|e| panic!("{name}: {e:#}"));
                }
            });
        }
    });
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Whether alpine's IPv4 allow map holds `addr` (bpftool's hex key: prefix length, endpoint id,
/// protocol, pad, port, then the address).
fn map_holds(c: &KubeCluster, endpoint: u32, addr: Ipv4Addr) -> bool {
    let pin = c.bpffs_dir().join("maps/fqdnd_allow4");
    let out = std::process::Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(&pin).output();
    let Ok(out) = out else { return false };
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    entries.as_array().into_iter().flatten().any(|e| {
        let bytes: Vec<u8> = e["key"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b.as_str().and_then(|s| u8::from_str_radix(s.trim_start_matches("0x"), 16).ok()))
            .collect();
        bytes.len() >= 16
            && u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) == endpoint
            && bytes[12..16] == addr.octets()
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    if !common::privileged::available("kube_sync bench") || !common::kube::available("kube_sync bench") {
        return;
    }
    let pods = env_usize("FQDND_BENCH_PODS", 5000);
    let policies = env_usize("FQDND_BENCH_POLICIES", 1000);
    let changes = env_usize("FQDND_BENCH_CHANGES", 100);
    let mut c = KubeCluster::build(PodNet::Routed);

    let t = Instant::now();
    let nodes: Vec<serde_json::Value> = (0..50)
        .map(|n| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("bench-{n}")}}))
        .collect();
    apply_batched(&c, &nodes, 50);
    let namespaces: Vec<serde_json::Value> = (0..20)
        .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("team-{n}"), "labels": {"team": format!("t{n}")}}}))
        .collect();
    apply_batched(&c, &namespaces, 20);
    let mut specs = Vec::new();
    let mut running = Vec::new();
    for i in 0..pods {
        let (ns, name) = (format!("team-{}", i % 20), format!("pod-{i}"));
        // One pod in 100 on this node (no network behind it: not attached, its rules resolved).
        let node = if i % 100 == 0 { NODE.to_string() } else { format!("bench-{}", i % 50) };
        specs.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": format!("app-{}", i % 200), "tier": "bench"}},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "registry.invalid/none"}]},
        }));
        running.push((ns, name, Ipv4Addr::new(10, 100 + (i / 65536) as u8, ((i / 256) % 256) as u8, (i % 256) as u8)));
    }
    apply_batched(&c, &specs, 500);
    set_running(&c, &running);
    let cnps: Vec<serde_json::Value> = (0..policies)
        .map(|i| {
            json!({
                "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                "metadata": {"name": format!("bench-{i}"), "namespace": format!("team-{}", i % 20)},
                "spec": {
                    "endpointSelector": {"matchLabels": {"app": format!("app-{}", i % 200)}},
                    "egress": [
                        {"toEndpoints": [{"matchLabels": {"app": format!("app-{}", (i + 1) % 200)}}]},
                        {"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system", "k8s:k8s-app": "kube-dns"}}],
                         "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}], "rules": {"dns": [{"matchPattern": "*.example.com"}]}}]},
                        {"toFQDNs": [{"matchPattern": format!("*.svc{i}.example.com")}]},
                    ],
                },
            })
        })
        .collect();
    apply_batched(&c, &cnps, 200);
    println!("setup: {pods} pods on 51 nodes, {policies} CNPs written in {:.1?}", t.elapsed());

    let t = Instant::now();
    c.spawn_agent(&[]);
    c.wait_ready();
    let sync = t.elapsed();
    let pid = c.agent_pid().expect("agent running");
    println!("initial sync: {sync:.2?} from start to ready; agent RSS {} MiB", rss_kib(pid) / 1024);

    let id = policy_sync::source::ids::preferred_id(&"default/alpine".parse().unwrap());
    let mut latencies = Vec::with_capacity(changes);
    for n in 0..changes {
        let addr = Ipv4Addr::new(10, 123, (n / 250) as u8, (n % 250 + 1) as u8);
        let cnp = json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "bench-change", "namespace": "default"},
            "spec": {"endpointSelector": {"matchLabels": {"app": "alpine"}}, "egress": [{"toCIDR": [format!("{addr}/32")]}]},
        });
        let start = Instant::now();
        c.kube.apply_yaml(&cnp.to_string()).expect("kubectl apply");
        let deadline = start + Duration::from_secs(60);
        while !map_holds(&c, id, addr) {
            assert!(Instant::now() < deadline, "change {n}: {addr} never reached the map:\n{}", c.log());
            std::thread::sleep(Duration::from_millis(2));
        }
        latencies.push(start.elapsed());
    }
    latencies.sort();
    println!(
        "apply-to-map over {changes} changes (kubectl apply included, bpftool polling): p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    println!("agent RSS after the changes: {} MiB", rss_kib(pid) / 1024);
}
