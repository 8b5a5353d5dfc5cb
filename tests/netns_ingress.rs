//! Ingress enforced in the kernel, with the real agent: the seed's `ingress: [{}]` (stages 2-4)
//! refuses connections into the pod from the world namespace, which a listener in the pod would
//! answer (stage 1 proves it), while what the pod opens, its DNS answers included (UDP and TCP,
//! from kube-dns's address via the proxy), still comes back. Root only.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::clients::Libc;
use common::netns::{self, TcpServer, UdpEcho, udp_roundtrip};
use common::privileged;
use common::topology::{
    CONNECT, Cluster, DROPPED_CONNECT, POD_IP4, POD_IP6, WORLD_IP4, WORLD_IP6, WWW_MICROSOFT4, e2e_policy, metric_sum,
    seed_stage,
};
use serde_json::Value;

const SEED: &str = "locking-down-alpine.yaml";
const POD_PORT: u16 = 8080;
const GREETING: &[u8] = b"from alpine";

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter().fold(v, |v, k| &v[*k]).as_str().unwrap_or_default()
}

fn u64_at(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or_default()
}

fn addrs(v6: bool) -> (IpAddr, IpAddr) {
    if v6 { (IpAddr::V6(WORLD_IP6), IpAddr::V6(POD_IP6)) } else { (IpAddr::V4(WORLD_IP4), IpAddr::V4(POD_IP4)) }
}

/// Listeners in the pod that would answer: TCP greets, UDP echoes (dual-stack sockets).
struct PodServers {
    _tcp: TcpServer,
    _udp: UdpEcho,
}

fn pod_servers(c: &Cluster) -> PodServers {
    let any = SocketAddr::new("::".parse().unwrap(), POD_PORT);
    PodServers { _tcp: TcpServer::start(&c.pod, any, GREETING), _udp: UdpEcho::start(&c.pod, any) }
}

fn tcp_in(c: &Cluster, v6: bool, timeout: std::time::Duration) -> (u16, std::io::Result<Vec<u8>>) {
    let (world, pod) = addrs(v6);
    c.world.run(|| netns::tcp_exchange(world, SocketAddr::new(pod, POD_PORT), timeout))
}

fn udp_in(c: &Cluster, v6: bool, timeout: std::time::Duration) -> (u16, std::io::Result<Vec<u8>>) {
    let (world, pod) = addrs(v6);
    udp_roundtrip(&c.world, world, SocketAddr::new(pod, POD_PORT), timeout)
}

/// Every way in works: TCP and UDP, IPv4 and IPv6.
fn all_in_pass(c: &Cluster, stage: &str) {
    for v6 in [false, true] {
        let got = tcp_in(c, v6, CONNECT).1.unwrap_or_else(|e| panic!("{stage}, v6={v6}: TCP into the pod: {e}"));
        assert_eq!(got, GREETING);
        let got = udp_in(c, v6, CONNECT).1.unwrap_or_else(|e| panic!("{stage}, v6={v6}: UDP into the pod: {e}"));
        assert_eq!(got, b"ping");
    }
}

/// Every way in fails, each with an ingress drop flow naming the world as source and alpine as
/// destination.
fn all_in_refused(c: &Cluster, stage: &str) {
    for v6 in [false, true] {
        let (world, pod) = addrs(v6);
        for proto in ["TCP", "UDP"] {
            let (sport, res) =
                if proto == "TCP" { tcp_in(c, v6, DROPPED_CONNECT) } else { udp_in(c, v6, DROPPED_CONNECT) };
            assert!(res.is_err(), "{stage}, v6={v6}: {proto} into the pod went through: {res:?}");
            let flow = c.wait_flow(&["--type", "drop"], &format!("{stage}: {proto} {world}:{sport} -> {pod}"), |f| {
                u64_at(f, &["l4", proto, "source_port"]) == u64::from(sport)
                    && str_at(f, &["IP", "source"]) == world.to_string()
            });
            assert_eq!(str_at(&flow, &["verdict"]), "DROPPED", "{flow}");
            assert_eq!(str_at(&flow, &["traffic_direction"]), "INGRESS", "{flow}");
            assert_eq!(str_at(&flow, &["drop_reason_desc"]), "POLICY_DENIED", "{flow}");
            assert_eq!(str_at(&flow, &["IP", "destination"]), pod.to_string(), "{flow}");
            assert_eq!(str_at(&flow, &["destination", "pod_name"]), "alpine", "{flow}");
            assert_eq!(flow["source"]["labels"][0], "reserved:world", "{flow}");
            assert_eq!(u64_at(&flow, &["l4", proto, "destination_port"]), u64::from(POD_PORT), "{flow}");
        }
    }
}

#[test]
fn seed_ingress_refuses_connections_into_the_pod() {
    if !privileged::available("seed_ingress_refuses_connections_into_the_pod") {
        return;
    }
    let mut c = Cluster::start();
    let _servers = pod_servers(&c);

    c.set_policy(SEED, &seed_stage(1));
    all_in_pass(&c, "stage 1");
    for stage in [2u8, 3, 4] {
        c.set_policy(SEED, &seed_stage(stage));
        all_in_refused(&c, &format!("stage {stage}"));
    }
    // Stage 4 still lets the pod resolve and connect out: answers and replies come back in.
    let r = c.getaddrinfo(Libc::Musl, "www.microsoft.com", Some(443));
    assert_eq!((r.exit_code, r.connected), (0, true), "stage 4 under ingress deny: {r:?}\n{}", c.log());
    let page = c.metrics();
    let ingress: f64 = page
        .lines()
        .filter(|l| l.starts_with("fqdnd_policy_drops_total{") && l.contains("direction=\"ingress\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(ingress >= 12.0, "every refused attempt counted as an ingress drop:\n{page}");
    assert!(metric_sum(&page, "fqdnd_datapath_drops_total") >= ingress, "{page}");

    // Back to stage 1: nothing is enforced on ingress any more.
    c.set_policy(SEED, &seed_stage(1));
    all_in_pass(&c, "stage 1 again");
}

#[test]
fn dns_answers_over_udp_and_tcp_pass_ingress_deny() {
    if !privileged::available("dns_answers_over_udp_and_tcp_pass_ingress_deny") {
        return;
    }
    let mut c = Cluster::start();
    let _servers = pod_servers(&c);
    c.set_policy("ingress.yaml", &e2e_policy("ingress-deny-dns-any.yaml"));
    for extra in [&[][..], &["+tcp"][..]] {
        let r = c.dig("www.microsoft.com", "A", extra).unwrap_or_else(|e| panic!("dig {extra:?}: {e}\n{}", c.log()));
        assert_eq!(
            (r.status.as_str(), r.data("A")),
            ("NOERROR", vec![WWW_MICROSOFT4.to_string()]),
            "{extra:?}: {}",
            r.raw
        );
    }
    let tcp_answer = c.wait_flow(&["--type", "dns"], "for the answer over TCP", |f| {
        str_at(f, &["l7", "type"]) == "RESPONSE" && f["l4"]["TCP"].is_object()
    });
    assert_eq!(str_at(&tcp_answer, &["verdict"]), "FORWARDED", "{tcp_answer}");
    let (_, res) = c.connect(SocketAddr::new(WWW_MICROSOFT4, 80), CONNECT);
    assert!(res.is_ok(), "the learned address is reachable and its replies come in: {res:?}");
    all_in_refused(&c, "ingress: [{}]");
}
