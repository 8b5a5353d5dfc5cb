//! Transparent mode without the eBPF redirect: policy routing delivers a pod's DNS packets
//! (still addressed to kube-dns) to fqdnd in the node namespace, as TPROXY would. Checks that the
//! proxy learns the original destination (UDP: IP_ORIGDSTADDR, TCP: the accepted socket's local
//! address), forwards there, and answers from that address and port, over IPv4 and IPv6 (dig
//! rejects a reply from any other source). Root only; skipped otherwise (see common/privileged.rs).
//!
//! ```text
//!  pod 10.0.1.5 / fd00:1::5 ── veth ── node (fqdnd on 0.0.0.0:53, [::]:53) ── veth ── kube-dns 10.96.0.10 / fd96::10 (NSD)
//!          ip rule: iif <pod veth> ipproto udp|tcp dport 53 -> table 100: local 0.0.0.0/0 dev lo
//! ```

mod common;

use common::dig::parse;
use common::dns_server::DnsServer;
use common::fqdnd::{Fqdnd, dns_policy};
use common::netns::{Bpffs, Netns};
use common::privileged;

/// The namespaces live as long as this does.
struct Net {
    pod: Netns,
    node: Netns,
    dns: Netns,
}

fn net() -> Net {
    let pod = Netns::new("tpod");
    let node = Netns::new("tnode");
    let dns = Netns::new("tdns");
    let pod_if = format!("p{}", &node.name()[2..]);
    let dns_if = format!("d{}", &node.name()[2..]);
    // veth pairs created in the node namespace, one end moved out.
    node.ip(&["link", "add", &pod_if, "type", "veth", "peer", "name", "eth0", "netns", pod.name()]);
    node.ip(&["link", "add", &dns_if, "type", "veth", "peer", "name", "eth0", "netns", dns.name()]);
    for (ns, dev, v4, v6) in [
        (&node, pod_if.as_str(), "10.0.1.1/24", "fd00:1::1/64"),
        (&node, dns_if.as_str(), "10.96.0.1/24", "fd96::1/64"),
        (&pod, "eth0", "10.0.1.5/24", "fd00:1::5/64"),
        (&dns, "eth0", "10.96.0.10/24", "fd96::10/64"),
    ] {
        ns.ip(&["addr", "add", v4, "dev", dev]);
        ns.ip(&["-6", "addr", "add", v6, "dev", dev, "nodad"]);
        ns.ip(&["link", "set", dev, "up"]);
    }
    pod.ip(&["route", "add", "default", "via", "10.0.1.1"]);
    pod.ip(&["-6", "route", "add", "default", "via", "fd00:1::1"]);
    dns.ip(&["route", "add", "default", "via", "10.96.0.1"]);
    dns.ip(&["-6", "route", "add", "default", "via", "fd96::1"]);
    // What the datapath's redirect achieves, done with policy routing: DNS from the pod is
    // delivered locally in the node, whatever its destination address.
    for family in ["-4", "-6"] {
        let any = if family == "-4" { "0.0.0.0/0" } else { "::/0" };
        node.ip(&[family, "route", "add", "local", any, "dev", "lo", "table", "100"]);
        for proto in ["udp", "tcp"] {
            node.ip(&[family, "rule", "add", "iif", &pod_if, "ipproto", proto, "dport", "53", "lookup", "100"]);
        }
    }
    Net { pod, node, dns }
}

#[test]
fn answers_come_from_the_original_destination() {
    if !privileged::available("answers_come_from_the_original_destination") {
        return;
    }
    let n = net();
    let dns_path = format!("--net={}", n.dns.path().display());
    let _kube_dns = DnsServer::builder()
        .fixture_zone("microsoft.com")
        .fixture_zone("google.com")
        .listen("10.96.0.10:53".parse().unwrap())
        .listen("[fd96::10]:53".parse().unwrap())
        .wrap(&["nsenter", &dns_path])
        .start()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("dns.yaml"), dns_policy("dns-allow", 53, &["*.microsoft.com"])).unwrap();
    let endpoints = dir.path().join("endpoints.yaml");
    std::fs::write(
        &endpoints,
        "- {namespace: kube-system, name: kube-dns, labels: {k8s-app: kube-dns}, ips: [10.96.0.10, \"fd96::10\"]}\n\
         - {namespace: default, name: alpine, labels: {app: alpine}, ips: [10.0.1.5, \"fd00:1::5\"]}\n",
    )
    .unwrap();
    let bpffs = Bpffs::new();
    let node_path = format!("--net={}", n.node.path().display());
    let f = Fqdnd::start_wrapped(
        &["nsenter", &node_path],
        &[
            "--mode",
            "transparent",
            "--listen",
            "0.0.0.0:53",
            "--listen",
            "[::]:53",
            "--policies",
            policies.to_str().unwrap(),
            "--endpoints",
            endpoints.to_str().unwrap(),
            "--bpffs-dir",
            bpffs.datapath_dir().to_str().unwrap(),
        ],
    )
    .unwrap();

    let dig = |server: &str, name: &str, rtype: &str, extra: &[&str]| {
        let out = n
            .pod
            .command("dig")
            .arg(format!("@{server}"))
            .args(["+tries=1", "+time=5"])
            .args(extra)
            .args([name, rtype])
            .output()
            .unwrap();
        parse(&String::from_utf8_lossy(&out.stdout))
    };
    for server in ["10.96.0.10", "fd96::10"] {
        for transport in [&[][..], &["+tcp"][..]] {
            let r = dig(server, "www.microsoft.com", "A", transport);
            assert_eq!(r.status, "NOERROR", "@{server} {transport:?}: {}\n{}", r.raw, f.log());
            assert_eq!(r.data("A"), ["10.200.0.1"], "@{server} {transport:?}: {}", r.raw);
            let r = dig(server, "www.google.com", "AAAA", transport);
            assert_eq!(r.status, "NXDOMAIN", "@{server} {transport:?}: {}", r.raw);
            assert_eq!(r.question, [("www.google.com.".to_string(), "AAAA".to_string())]);
        }
    }
    // The proxy saw the original destinations (its access log names them) and was the one
    // answering (the refusals above cannot come from NSD, which serves google.com).
    let log = f.log();
    for dst in ["dst=10.96.0.10:53", "dst=[fd96::10]:53"] {
        assert!(log.contains(dst), "{dst} missing in:\n{log}");
    }
    assert!(log.contains("proto=TCP"), "{log}");
}
