//! The CLI's kernel-facing commands against the real transparent agent in network namespaces
//! (tests/common/topology.rs): `fqdnd uninstall` takes enforcement away for good, and
//! `fqdnd policy suggest` writes the policy that lets a recorded workload run without a drop.
//! Root only.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::Output;
use std::time::{Duration, SystemTime};

use common::clients::Libc;
use common::privileged;
use common::topology::{AGENT_WAIT, CONNECT, Cluster, DROPPED_CONNECT, GREETING, WWW_GOOGLE4, run_bounded, seed_stage};
use serde_json::Value;

/// `fqdnd ARGS` in the node namespace (where the agent's links and routes are).
fn in_node(c: &Cluster, args: &[&str]) -> Output {
    let mut cmd = c.node.command(common::fqdnd::binary().to_str().unwrap());
    cmd.args(args);
    run_bounded(cmd, AGENT_WAIT)
}

fn uninstall(c: &Cluster) -> Output {
    let (bpffs, state) = (c.bpffs_dir(), c.state_dir());
    in_node(c, &["uninstall", "--bpffs-dir", bpffs.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn policy_rules(c: &Cluster) -> String {
    let mut cmd = c.node.command("ip");
    cmd.args(["rule", "show"]);
    String::from_utf8_lossy(&run_bounded(cmd, AGENT_WAIT).stdout).into_owned()
}

#[test]
fn uninstall_removes_enforcement_and_the_pod_connects() {
    if !privileged::available("uninstall_removes_enforcement_and_the_pod_connects") {
        return;
    }
    let mut c = Cluster::start();
    c.set_policy("locking-down-alpine.yaml", &seed_stage(4));
    let google = SocketAddr::new(WWW_GOOGLE4, 80);
    assert!(c.connect(google, DROPPED_CONNECT).1.is_err(), "stage 4 drops www.google.com");
    assert!(policy_rules(&c).contains("fwmark 0xfd0"), "the agent installed its policy route");

    // `fqdnd status` in transparent mode: the datapath, where it is attached and its counters.
    let status: Value = serde_json::from_slice(&c.cli(&["status", "-o", "json"]).stdout).expect("status -o json");
    let d = &status["details"];
    assert_eq!(d["mode"], "transparent", "{status}");
    assert_eq!(d["policed"], serde_json::json!([format!("default/alpine ({})", c.pod_veth)]), "{status}");
    assert_eq!(
        d["datapath"]["attached"][0].as_str().unwrap_or(""),
        format!("{} (default/alpine)", c.pod_veth),
        "{status}"
    );
    assert!(d["datapath"]["counters"]["seen"].as_u64().unwrap_or(0) > 0, "{status}");
    assert!(d["datapath"]["counters"]["dropped_denied"].as_u64().unwrap_or(0) > 0, "the drop above: {status}");

    // While the agent runs, uninstall refuses and changes nothing.
    let out = uninstall(&c);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("an agent is running"), "{}", text(&out));
    assert!(c.connect(google, DROPPED_CONNECT).1.is_err(), "still enforced after the refusal");

    // The agent stops; its pinned links go on enforcing. That is what uninstall is for.
    c.stop_agent();
    assert!(c.connect(google, DROPPED_CONNECT).1.is_err(), "enforced with the agent gone");
    let out = uninstall(&c);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("detached from {}", c.pod_veth)), "{}", text(&out));

    let (_, res) = c.connect(google, CONNECT);
    assert_eq!(res.expect("after uninstall the pod's traffic flows unfiltered"), GREETING);
    let veth = c.pod_veth.clone();
    let (ingress, egress) = c.node.run(|| ebpf_redirect::tcx_programs(&veth)).expect("tcx programs");
    assert!(ingress.is_empty() && egress.is_empty(), "programs left on {veth}: {ingress:?} {egress:?}");
    assert!(!policy_rules(&c).contains("fwmark 0xfd0"), "policy route left:\n{}", policy_rules(&c));
    assert!(!c.bpffs_dir().exists(), "pins left under {}", c.bpffs_dir().display());
    // Musl resolves through kube-dns directly again (no redirect to a proxy that is gone).
    let r = c.getaddrinfo(Libc::Musl, "www.google.com", Some(80));
    assert_eq!((r.exit_code, r.connected), (0, true), "{r:?}");

    let out = uninstall(&c);
    assert!(
        out.status.success() && text(&out).contains("nothing pinned"),
        "a second uninstall is a no-op: {}",
        text(&out)
    );
}

/// Deny everything but DNS, and proxy every name: the workload's lookups and its dropped
/// connects all show as flows.
const RECORD: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: record, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: alpine}}
  egress:
  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}}]
    toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchPattern: "*"}]}}]
"#;

/// A cluster peer the workload talks to, and an address no name gives.
const WEB: &str = "10.210.0.250";
const BARE: &str = "10.210.0.251";

/// What the workload does: musl lookups (search list and all) and connects, each bounded by
/// `timeout`. Returns each connect's destination and whether it went through.
fn workload(c: &Cluster, timeout: Duration) -> Vec<(SocketAddr, bool)> {
    let mut out = Vec::new();
    for (name, port) in [("www.microsoft.com", Some(80)), ("login.microsoft.com", Some(443)), ("www.google.com", None)]
    {
        let r = c.getaddrinfo(Libc::Musl, name, None);
        assert_eq!(r.exit_code, 0, "{name} resolves: {r:?}\n{}", c.log());
        if let Some(port) = port {
            let dst = SocketAddr::new(r.addrs[0], port);
            out.push((dst, c.connect(dst, timeout).1.is_ok()));
        }
    }
    for ip in [WEB, BARE] {
        let dst = SocketAddr::new(ip.parse().unwrap(), 80);
        out.push((dst, c.connect(dst, timeout).1.is_ok()));
    }
    out
}

fn since(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[test]
fn suggested_policy_replays_without_drops_or_refusals() {
    if !privileged::available("suggested_policy_replays_without_drops_or_refusals") {
        return;
    }
    let mut c = Cluster::build();
    let endpoints = c.dir.path().join("endpoints.yaml");
    let mut list = std::fs::read_to_string(&endpoints).unwrap();
    list.push_str(&format!("- {{namespace: default, name: web, labels: {{app: web}}, ips: [\"{WEB}\"]}}\n"));
    std::fs::write(&endpoints, list).unwrap();
    c.start_agent();
    let record = c.dir.path().join("record.yaml");
    std::fs::write(&record, RECORD).unwrap();
    c.set_policy("policy.yaml", &record);

    // Record: every connect is dropped, every lookup proxied.
    let recorded = workload(&c, DROPPED_CONNECT);
    assert!(recorded.iter().all(|(_, ok)| !ok), "the recording policy allows no connection: {recorded:?}");
    let drops = c.observe(&["--type", "drop"]);
    assert!(drops.len() >= recorded.len(), "{drops:?}");

    // Suggest from the agent's flows; the suggestion checks clean and replaces the recording policy.
    let out = c.cli(&["policy", "suggest", "--endpoint", "default/alpine"]);
    assert!(out.status.success(), "{}", text(&out));
    let yaml = String::from_utf8(out.stdout).unwrap();
    for want in [
        "matchName: www.microsoft.com",
        "matchName: login.microsoft.com",
        "'**.cluster.local'",
        "k8s:app: web",
        "10.210.0.251/32",
    ] {
        assert!(yaml.contains(want), "{want:?} not in the suggestion:\n{yaml}");
    }
    assert!(!yaml.contains("toEntities"), "{yaml}");
    let suggested = c.dir.path().join("suggested.yaml");
    std::fs::write(&suggested, &yaml).unwrap();
    let check = run_bounded(
        {
            let mut cmd = std::process::Command::new(common::fqdnd::binary());
            cmd.args(["policy", "check"]).arg(&suggested);
            cmd
        },
        AGENT_WAIT,
    );
    assert!(check.status.success(), "{}\n{yaml}", text(&check));
    c.set_policy("policy.yaml", &suggested);

    // Replay: zero drops, zero refusals.
    let start = SystemTime::now();
    let replayed = workload(&c, CONNECT);
    assert!(
        replayed.iter().all(|(_, ok)| *ok),
        "every recorded connect goes through: {replayed:?}\n{yaml}\n{}",
        c.log()
    );
    let drops = c.observe(&["--type", "drop", "--since", &since(start)]);
    assert!(drops.is_empty(), "drops on replay: {drops:?}\n{yaml}");
    let refused = c.observe(&["--type", "dns", "--verdict", "DROPPED", "--since", &since(start)]);
    assert!(refused.is_empty(), "refusals on replay: {:?}\n{yaml}", summaries(&refused));

    // Not in the recording: still dropped.
    let www = replayed[0].0;
    for dst in [
        SocketAddr::new(www.ip(), 443),
        SocketAddr::new("10.210.0.252".parse::<IpAddr>().unwrap(), 80),
        SocketAddr::new(WEB.parse().unwrap(), 443),
    ] {
        assert!(c.connect(dst, DROPPED_CONNECT).1.is_err(), "{dst} was never recorded, yet it connected\n{yaml}");
    }
    let r = c.getaddrinfo(Libc::Musl, "www.google.com", Some(443));
    assert_eq!((r.exit_code, r.connected), (3, false), "resolved in the recording but never connected to: {r:?}");
}

fn summaries(lines: &[Value]) -> Vec<String> {
    lines.iter().map(|l| l["flow"]["Summary"].to_string()).collect()
}
