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

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::kube_cluster::{KubeCluster, NODE, PodNet};
use futures::StreamExt as _;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Create `objects` through the API (32 requests in flight), as the admin.
fn create_all(c: &KubeCluster, objects: Vec<serde_json::Value>) {
    let kubeconfig = c.kube.kubeconfig_admin();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    runtime.block_on(async move {
        let client = admin_client(&kubeconfig).await;
        futures::stream::iter(objects)
            .map(|obj| {
                let client = client.clone();
                async move {
                    let ar = api_resource(&obj);
                    let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
                    let api: Api<DynamicObject> = match &ns {
                        Some(ns) => Api::namespaced_with(client, ns, &ar),
                        None => Api::all_with(client, &ar),
                    };
                    let dynamic: DynamicObject = serde_json::from_value(obj.clone()).expect("object");
                    api.create(&PostParams::default(), &dynamic)
                        .await
                        .unwrap_or_else(|e| panic!("creating {obj}: {e}"));
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
    });
}

/// Pod IPs through the status subresource (a merge patch, as a kubelet would), 32 at a time.
fn set_running(c: &KubeCluster, pods: Vec<(String, String, Ipv4Addr)>) {
    let kubeconfig = c.kube.kubeconfig_admin();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    runtime.block_on(async move {
        let client = admin_client(&kubeconfig).await;
        let ar = ApiResource { group: String::new(), version: "v1".into(), api_version: "v1".into(), kind: "Pod".into(), plural: "pods".into() };
        futures::stream::iter(pods)
            .map(|(ns, name, ip)| {
                let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
                async move {
                    let status = json!({"status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}});
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await
                        .unwrap_or_else(|e| panic!("{ns}/{name} status: {e}"));
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
    });
}

async fn admin_client(kubeconfig: &std::path::Path) -> kube::Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("admin kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("kubeconfig");
    kube::Client::try_from(config).expect("client")
}

fn api_resource(obj: &serde_json::Value) -> ApiResource {
    let api_version = obj["apiVersion"].as_str().expect("apiVersion").to_string();
    let kind = obj["kind"].as_str().expect("kind").to_string();
    let (group, version) =
        api_version.split_once('/').map_or((String::new(), api_version.clone()), |(g, v)| (g.into(), v.into()));
    let lower = kind.to_lowercase();
    let plural = match lower.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{lower}s"),
    };
    ApiResource { group, version, api_version, kind, plural }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Whether alpine's IPv4 allow map holds `addr`/32 for any port and protocol: one bpftool
/// lookup of the LPM key (prefix length 64 + 32 bits, endpoint id little endian, protocol 0,
/// pad, port 0, the address).
fn map_holds(c: &KubeCluster, endpoint: u32, addr: Ipv4Addr) -> bool {
    let pin = c.bpffs_dir().join("maps/fqdnd_allow4");
    let mut key: Vec<u8> = vec![96, 0, 0, 0];
    key.extend(endpoint.to_le_bytes());
    key.extend([0, 0, 0, 0]);
    key.extend(addr.octets());
    let hex: Vec<String> = key.iter().map(|b| format!("{b:02x}")).collect();
    std::process::Command::new("bpftool")
        .args(["map", "lookup", "pinned"])
        .arg(&pin)
        .arg("key")
        .arg("hex")
        .args(&hex)
        .output()
        .is_ok_and(|o| o.status.success())
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
    create_all(&c, nodes);
    let namespaces: Vec<serde_json::Value> = (0..20)
        .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("team-{n}"), "labels": {"team": format!("t{n}")}}}))
        .collect();
    create_all(&c, namespaces);
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
    create_all(&c, specs);
    set_running(&c, running);
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
    create_all(&c, cnps);
    println!("setup: {pods} pods on 51 nodes, {policies} CNPs written in {:.1?}", t.elapsed());

    let t = Instant::now();
    c.spawn_agent(&[]);
    c.wait_ready();
    let sync = t.elapsed();
    let pid = c.agent_pid().expect("agent running");
    println!("initial sync: {sync:.2?} from start to ready; agent RSS {} MiB", rss_kib(pid) / 1024);

    let id = policy_sync::source::ids::preferred_id(&"default/alpine".parse().unwrap());
    let mut latencies = Vec::with_capacity(changes);
    let mut kubectl_times = Vec::with_capacity(changes);
    for n in 0..changes {
        let addr = Ipv4Addr::new(10, 123, (n / 250) as u8, (n % 250 + 1) as u8);
        let cnp = json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "bench-change", "namespace": "default"},
            "spec": {"endpointSelector": {"matchLabels": {"app": "alpine"}}, "egress": [{"toCIDR": [format!("{addr}/32")]}]},
        });
        let start = Instant::now();
        c.kube.apply_yaml(&cnp.to_string()).expect("kubectl apply");
        kubectl_times.push(start.elapsed());
        let deadline = start + Duration::from_secs(60);
        while !map_holds(&c, id, addr) {
            assert!(Instant::now() < deadline, "change {n}: {addr} never reached the map:\n{}", c.log());
            std::thread::sleep(Duration::from_millis(2));
        }
        latencies.push(start.elapsed());
    }
    latencies.sort();
    println!(
        "apply-to-map over {changes} changes (kubectl apply included, bpftool lookups every 2 ms): p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    kubectl_times.sort();
    println!(
        "  of which kubectl apply itself (process start to exit): p50 {:.1?}, p99 {:.1?}",
        percentile(&kubectl_times, 0.5),
        percentile(&kubectl_times, 0.99)
    );
    println!("agent RSS after the changes: {} MiB", rss_kib(pid) / 1024);
    // Where the agent's part of the time goes (its own timings of the last snapshots).
    let log = c.log();
    for line in
        log.lines().filter(|l| l.contains("kubernetes snapshot") || l.contains("datapath converged")).rev().take(4)
    {
        println!("agent: {line}");
    }
}
