//! Anti-spoofing with the real agent: a pod that sends from an address that is not its own (a
//! second address on its interface, kube-dns's address through a raw socket) is dropped by the
//! kernel before the proxy or the policy see it, each drop a flow with reason INVALID_SOURCE_IP.
//! Under DNS rules that refuse www.google.com, the borrowed address gets neither an answer nor a
//! way around the refusal; the pod's own address still resolves what the rules allow. Root only.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use common::netns;
use common::privileged;
use common::topology::{
    CONNECT, Cluster, DROPPED_CONNECT, KUBE_DNS_IP, WWW_MICROSOFT4, WWW_MICROSOFT6, e2e_policy, metric_sum,
};
use serde_json::Value;

const SECOND4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 77);
const SECOND6: &str = "fd00::77";

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter().fold(v, |v, k| &v[*k]).as_str().unwrap_or_default()
}

/// The drop flow of a packet from `src`, with the anti-spoofing reason.
fn spoof_drop(c: &Cluster, src: IpAddr, what: &str) -> Value {
    let flow = c.wait_flow(&["--type", "drop"], what, |f| str_at(f, &["IP", "source"]) == src.to_string());
    assert_eq!(str_at(&flow, &["verdict"]), "DROPPED", "{flow}");
    assert_eq!(str_at(&flow, &["drop_reason_desc"]), "INVALID_SOURCE_IP", "{flow}");
    assert_eq!(flow["drop_reason"], 132, "{flow}");
    assert_eq!(str_at(&flow, &["traffic_direction"]), "EGRESS", "{flow}");
    flow
}

#[test]
fn a_pod_cannot_speak_from_an_address_that_is_not_its_own() {
    if !privileged::available("a_pod_cannot_speak_from_an_address_that_is_not_its_own") {
        return;
    }
    let mut c = Cluster::start();
    c.set_policy("dns.yaml", &e2e_policy("dns-microsoft-only.yaml"));
    c.pod.ip(&["addr", "add", &format!("{SECOND4}/24"), "dev", "eth0", "nodad"]);
    c.pod.ip(&["-6", "addr", "add", &format!("{SECOND6}/64"), "dev", "eth0", "nodad"]);

    // The pod's own address: the rules apply (allowed name answered, www.google.com refused).
    let r = c.dig("www.microsoft.com", "A", &[]).expect("dig from the pod's address");
    assert_eq!(r.data("A"), [WWW_MICROSOFT4.to_string()], "{}", r.raw);
    assert_eq!(c.dig("www.google.com", "A", &[]).expect("refusal").status, "NXDOMAIN");

    // The second address: no answer at all, whether the rules would allow the name or not.
    for name in ["www.google.com", "www.microsoft.com"] {
        for transport in [&[][..], &["+tcp"][..]] {
            let mut args = vec!["-b", "10.0.1.77"];
            args.extend_from_slice(transport);
            let dig = c.dig(name, "A", &args);
            assert!(dig.is_err(), "{name} {transport:?} from {SECOND4}: {dig:?}");
        }
    }
    spoof_drop(&c, IpAddr::V4(SECOND4), "for DNS from the second address");
    // IPv6 and plain connections too: it is the address that is refused, not DNS.
    let second6: IpAddr = SECOND6.parse().unwrap();
    let (_, res) = c.pod.run(|| netns::tcp_connect(second6, SocketAddr::new(WWW_MICROSOFT6, 443), DROPPED_CONNECT));
    assert!(res.is_err(), "a connect from {second6}");
    spoof_drop(&c, second6, "for the connect from the second IPv6 address");

    // kube-dns's address, forged through a raw socket.
    let kube_dns = SocketAddrV4::new(KUBE_DNS_IP, 53);
    let forged = SocketAddrV4::new(KUBE_DNS_IP, 40053);
    c.pod.run(|| netns::send_raw_udp4(forged, kube_dns, &netns::dns_query(7, "www.google.com"))).expect("raw send");
    let flow = spoof_drop(&c, IpAddr::V4(KUBE_DNS_IP), "for the query in kube-dns's name");
    assert_eq!(flow["l4"]["UDP"]["source_port"], 40053, "{flow}");
    assert_eq!(str_at(&flow, &["source", "pod_name"]), "alpine", "the endpoint whose interface sent it: {flow}");

    // None of it reached the proxy: every DNS flow is from the pod's own address.
    let dns = c.observe(&["--type", "dns"]);
    let foreign: Vec<&Value> = dns
        .iter()
        .map(|l| &l["flow"])
        .filter(|f| {
            let client = if str_at(f, &["l7", "type"]) == "REQUEST" { "source" } else { "destination" };
            str_at(f, &["IP", client]) != common::topology::POD_IP4.to_string()
        })
        .collect();
    assert!(foreign.is_empty(), "queries from borrowed addresses reached the proxy: {foreign:?}");
    let page = c.metrics();
    let spoofed: f64 = page
        .lines()
        .filter(|l| l.starts_with("fqdnd_datapath_drops_total{") && l.contains("reason=\"invalid_source_ip\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(spoofed >= 4.0, "{page}");
    assert_eq!(metric_sum(&page, "fqdnd_dns_unverified_queries_total"), 0.0, "the kernel dropped them first");

    // The pod's own address still works.
    let (_, res) = c.connect(SocketAddr::new(WWW_MICROSOFT4, 80), CONNECT);
    assert!(res.is_ok(), "{res:?}");
}
