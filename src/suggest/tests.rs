use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use dns_proxy::{DnsFlow, DnsFlowKind};
use ebpf_redirect::{DropEvent, DropReason};
use fqdn_cache::{EndpointId, L4Proto};
use policy_sync::explain::{self, Verdict as Explained};
use policy_sync::{Endpoint as Ep, NodeInfo, Snapshot};

use super::*;
use crate::flows::convert::{NoNames, dns_flow, drop_flow};

const ALPINE: &str = "10.0.1.5";
const KUBE_DNS: &str = "10.96.0.10";
const WEB: &str = "10.0.2.9";

fn ep(ns: &str, name: &str, labels: &[(&str, &str)], ip: &str) -> Ep {
    Ep {
        namespace: ns.into(),
        name: name.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        ips: vec![ip.parse().unwrap()],
        interface: None,
        policy_audit_mode: false,
    }
}

fn inventory() -> Vec<Ep> {
    vec![
        ep("default", "alpine", &[("app", "alpine"), ("pod-template-hash", "5f7c")], ALPINE),
        ep("kube-system", "kube-dns", &[("k8s-app", "kube-dns")], KUBE_DNS),
        ep("default", "web", &[("app", "web")], WEB),
    ]
}

fn table() -> Snapshot {
    Snapshot::unpoliced(inventory().into_iter().enumerate().map(|(i, e)| (EndpointId(1000 + i as u32), e)))
}

fn at(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
}

fn rcode_of(name: &str) -> u16 {
    match name {
        "NoError" => 0,
        "NXDomain" => 3,
        other => panic!("no rcode {other} in these tests"),
    }
}

fn query(t: u64, name: &str, kind: DnsFlowKind, rcode: &str, ips: &[&str]) -> DnsFlow {
    DnsFlow {
        time: at(t),
        kind,
        verdict: dns_proxy::Verdict::Forwarded,
        endpoint: Some(EndpointId(1000)),
        client: format!("{ALPINE}:40000").parse().unwrap(),
        server: format!("{KUBE_DNS}:53").parse().unwrap(),
        protocol: L4Proto::Udp,
        qname: format!("{name}.").into(),
        qtype: 1,
        rcode: (kind == DnsFlowKind::Response).then(|| rcode_of(rcode)),
        ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
        ttl: Some(300),
        cnames: vec![],
        rrtypes: vec![],
        policy: None,
        latency: None,
    }
}

fn connect(t: u64, dst: &str) -> DropEvent {
    DropEvent {
        endpoint: EndpointId(1000),
        direction: ebpf_redirect::Direction::Egress,
        src: format!("{ALPINE}:43000").parse().unwrap(),
        dst: dst.parse().unwrap(),
        proto: L4Proto::Tcp,
        tcp_flags: 0x02,
        reason: DropReason::PolicyDenied,
        rejected: false,
        audit: false,
        time: at(t),
    }
}

/// A musl client under `ndots:5`: three search-list expansions answered NXDOMAIN, then the name.
fn lookup(flows: &mut Vec<Flow>, t: u64, name: &str, ip: &str) {
    let snap = table();
    for suffix in ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"] {
        let q = format!("{name}.{suffix}");
        flows.push(dns_flow(&query(t, &q, DnsFlowKind::Request, "", &[]), &snap, "n"));
        flows.push(dns_flow(&query(t, &q, DnsFlowKind::Response, "NXDomain", &[]), &snap, "n"));
    }
    flows.push(dns_flow(&query(t, name, DnsFlowKind::Request, "", &[]), &snap, "n"));
    flows.push(dns_flow(&query(t, name, DnsFlowKind::Response, "NoError", &[ip]), &snap, "n"));
}

/// What a workload did while recorded: three lookups, connections to two of the names, to a
/// cluster peer and to an address no name gave; other endpoints' flows are mixed in.
fn recording() -> Vec<Flow> {
    let snap = table();
    let mut flows = Vec::new();
    lookup(&mut flows, 1, "www.microsoft.com", "13.107.1.1");
    lookup(&mut flows, 2, "login.microsoft.com", "13.107.1.2");
    lookup(&mut flows, 3, "www.google.com", "10.201.0.1");
    for (t, dst) in [
        (4, "13.107.1.1:443"),
        (5, "13.107.1.2:443"),
        (5, "13.107.1.2:80"),
        (6, "10.0.2.9:8080"),
        (7, "192.0.2.99:5432"),
    ] {
        flows.push(drop_flow(&connect(t, dst), &snap, &NoNames, "n"));
    }
    let mut other = connect(8, "198.51.100.1:22");
    other.endpoint = EndpointId(1002);
    other.src = format!("{WEB}:5000").parse().unwrap();
    flows.push(drop_flow(&other, &snap, &NoNames, "n"));
    flows
}

fn options(threshold: usize) -> Options {
    Options {
        namespace: "default".into(),
        name: "alpine".into(),
        since: None,
        pattern_threshold: threshold,
        policy_name: None,
    }
}

/// Load the suggestion as the agent would, and resolve alpine's policy from it.
fn load(yaml: &str) -> policy_sync::Traced {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("suggested.yaml");
    std::fs::write(&path, yaml).unwrap();
    let report = policy_sync::load_paths(&[path]);
    assert!(report.problems.is_empty(), "the suggestion must load cleanly: {:?}\n{yaml}", report.problems);
    assert_eq!(report.policies.len(), 1, "{yaml}");
    let inv = inventory();
    policy_sync::resolve_traced(&report.policies, &inv[0], &inv, &NodeInfo::default())
}

fn verdicts(t: &policy_sync::Traced) -> impl Fn(&str) -> Explained + '_ {
    |question: &str| {
        let dns_server: IpAddr = KUBE_DNS.parse().unwrap();
        if let Some(name) = question.strip_prefix("dns ") {
            explain::explain_dns(t, name, dns_server, 53, L4Proto::Udp).verdict
        } else if let Some(rest) = question.strip_prefix("name ") {
            let (name, port) = rest.rsplit_once(':').unwrap();
            explain::explain_fqdn(t, name, port.parse().unwrap(), L4Proto::Tcp).verdict
        } else {
            let addr: std::net::SocketAddr = question.parse().unwrap();
            explain::explain_connection(t, addr.ip(), addr.port(), L4Proto::Tcp).verdict
        }
    }
}

#[test]
fn allows_exactly_what_was_observed() {
    let yaml = suggest(&recording(), &options(0)).unwrap();
    let t = load(&yaml);
    let v = verdicts(&t);
    for (question, want) in [
        // Every name asked, expansions included, resolves again: no refusal on replay.
        ("dns www.microsoft.com", Explained::Allowed),
        ("dns www.microsoft.com.default.svc.cluster.local", Explained::Allowed),
        ("dns login.microsoft.com.cluster.local", Explained::Allowed),
        ("dns www.google.com", Explained::Allowed),
        ("dns evil.example", Explained::Refused),
        ("dns mail.microsoft.com", Explained::Refused),
        // Names connected to, on the ports seen; www.google.com was resolved but never used.
        ("name www.microsoft.com:443", Explained::Allowed),
        ("name www.microsoft.com:80", Explained::Denied),
        ("name login.microsoft.com:80", Explained::Allowed),
        ("name login.microsoft.com:443", Explained::Allowed),
        ("name www.google.com:443", Explained::Denied),
        // The cluster peer by its labels, and the address no name gave as a CIDR.
        ("10.0.2.9:8080", Explained::Allowed),
        ("10.0.2.9:22", Explained::Denied),
        ("192.0.2.99:5432", Explained::Allowed),
        ("192.0.2.98:5432", Explained::Denied),
        // Another endpoint's flows are not this endpoint's business.
        ("198.51.100.1:22", Explained::Denied),
    ] {
        assert_eq!(v(question), want, "{question}\n{yaml}");
    }
    // The shape: Cilium's keys, the workload's labels without the pod's hash or namespace.
    for want in [
        "kind: CiliumNetworkPolicy",
        "name: alpine-observed",
        "namespace: default",
        "endpointSelector:\n    matchLabels:\n      app: alpine\n",
        "k8s:k8s-app: kube-dns",
        "- matchPattern: '**.cluster.local'",
        "- matchName: www.google.com",
        "toFQDNs:",
        "toCIDR:\n    - 192.0.2.99/32",
        "k8s:app: web",
        "protocol: UDP",
        "# 9 search-list expansions (NXDOMAIN) are allowed as **.cluster.local.",
    ] {
        assert!(yaml.contains(want), "{want:?} not in\n{yaml}");
    }
    assert!(!yaml.contains("pod-template-hash"), "{yaml}");
    assert!(!yaml.contains("toEntities"), "{yaml}");
}

#[test]
fn names_under_one_parent_become_a_pattern_past_the_threshold() {
    let yaml = suggest(&recording(), &options(2)).unwrap();
    assert!(yaml.contains("matchPattern: '*.microsoft.com'"), "{yaml}");
    assert!(!yaml.contains("matchName: www.microsoft.com"), "{yaml}");
    let t = load(&yaml);
    let v = verdicts(&t);
    // The pattern's rule has the union of its names' ports.
    assert_eq!(v("name www.microsoft.com:80"), Explained::Allowed);
    assert_eq!(v("name mail.microsoft.com:443"), Explained::Allowed);
    assert_eq!(v("dns mail.microsoft.com"), Explained::Allowed);
    assert_eq!(v("name www.google.com:443"), Explained::Denied);
    // Three names needed: two stay names.
    let yaml = suggest(&recording(), &options(3)).unwrap();
    assert!(yaml.contains("matchName: www.microsoft.com") && !yaml.contains("'*.microsoft.com'"), "{yaml}");
}

#[test]
fn since_and_missing_flows() {
    let mut o = options(0);
    o.name = "nginx".into();
    assert_eq!(suggest(&recording(), &o).unwrap_err(), SuggestError::NoFlows("default/nginx".into(), ""));
    let mut o = options(0);
    o.since = Some(at(4));
    let yaml = suggest(&recording(), &o).unwrap();
    assert!(!yaml.contains("rules:"), "the lookups came before --since: {yaml}");
    o.since = Some(at(100));
    assert!(matches!(suggest(&recording(), &o), Err(SuggestError::NoFlows(_, " in that time"))));
}

#[test]
fn reads_observe_json_lines() {
    use crate::flows::FlowResponse;
    use crate::flows::format::{Color, OutputFormat, render};
    let mut text = String::new();
    for f in recording() {
        let resp = FlowResponse { time: f.time, node_name: "n".into(), flow: f };
        text.push_str(&render(&resp, OutputFormat::Json, Color::Never));
    }
    text.push_str("{\"lost_events\":{\"source\":\"OBSERVER_EVENTS_QUEUE\",\"num_events_lost\":\"3\"}}\n");
    let flows = read_flows(&text).unwrap();
    assert_eq!(flows, recording());
    assert!(read_flows("not json\n").unwrap_err().contains("line 1"));
}
