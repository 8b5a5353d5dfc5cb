//! Ingress enforcement on the to-pod program: connections into the pod need an ingress allow
//! entry under ingress default deny, ingress deny rules win, and what the pod opens itself gets
//! its replies. Real listeners in the pod namespace, real clients in the world. Root only.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::{CONNECT, DROPPED_CONNECT, EP, Fixture, UdpEcho, no_proxy, pod_ip, udp_roundtrip};
use ebpf_redirect::{Direction, DropReason};
use fqdn_cache::{L4Proto, PortProto};
use fqdnd_testkit::netns::{self, TcpServer, WORLD_IP4, WORLD_IP6};
use fqdnd_testkit::privileged;
use policy_sync::resolved::{EndpointPolicy, L3Rule, Peer, PolicyRef};

const POD_PORT: u16 = 8080;
const GREETING: &[u8] = b"from the pod";

fn world_ip(v6: bool) -> IpAddr {
    if v6 { IpAddr::V6(WORLD_IP6) } else { IpAddr::V4(WORLD_IP4) }
}

fn policy_ref() -> PolicyRef {
    PolicyRef { namespace: Some("default".into()), name: "ingress".into() }
}

fn ingress_deny_all() -> EndpointPolicy {
    EndpointPolicy { ingress_default_deny: true, ..Default::default() }
}

/// From the world into the pod: TCP to `port` (the greeting) and UDP to `port` (the echo).
fn world_to_pod_tcp(fx: &Fixture, v6: bool, timeout: std::time::Duration) -> (u16, std::io::Result<Vec<u8>>) {
    let dst = SocketAddr::new(pod_ip(v6), POD_PORT);
    fx.topo.world.run(|| netns::tcp_exchange(world_ip(v6), dst, timeout))
}

fn world_to_pod_udp(fx: &Fixture, v6: bool, timeout: std::time::Duration) -> (u16, std::io::Result<Vec<u8>>) {
    udp_roundtrip(&fx.topo.world, world_ip(v6), SocketAddr::new(pod_ip(v6), POD_PORT), timeout)
}

#[test]
fn ingress_default_deny_refuses_connections_into_the_pod() {
    if !privileged::available("ingress_default_deny_refuses_connections_into_the_pod") {
        return;
    }
    let fx = Fixture::new();
    let _tcp4 = TcpServer::start(&fx.topo.pod, SocketAddr::new(pod_ip(false), POD_PORT), GREETING);
    let _tcp6 = TcpServer::start(&fx.topo.pod, SocketAddr::new(pod_ip(true), POD_PORT), GREETING);
    let _udp4 = UdpEcho::start(&fx.topo.pod, SocketAddr::new(pod_ip(false), POD_PORT));
    let _udp6 = UdpEcho::start(&fx.topo.pod, SocketAddr::new(pod_ip(true), POD_PORT));
    let dp = fx.open(no_proxy());
    let mut events = fx.events(&dp);

    // Without ingress policy the listeners answer: what follows can only fail by the datapath.
    fx.attach(&dp, &EndpointPolicy::default());
    for v6 in [false, true] {
        assert_eq!(world_to_pod_tcp(&fx, v6, CONNECT).1.expect("no policy: TCP in"), GREETING);
        assert_eq!(world_to_pod_udp(&fx, v6, CONNECT).1.expect("no policy: UDP in"), b"ping");
    }

    fx.attach(&dp, &ingress_deny_all());
    for v6 in [false, true] {
        let (sport, res) = world_to_pod_tcp(&fx, v6, DROPPED_CONNECT);
        assert!(res.is_err(), "v6={v6}: TCP into the pod under ingress default deny went through");
        let e = fx.drop_event_where(&mut events, "for the inbound SYN", |e| e.src.port() == sport);
        assert_eq!(e.direction, Direction::Ingress);
        assert_eq!((e.src.ip(), e.dst), (world_ip(v6), SocketAddr::new(pod_ip(v6), POD_PORT)));
        assert_eq!((e.endpoint, e.proto, e.reason), (EP, L4Proto::Tcp, DropReason::PolicyDenied));
        assert_eq!(e.tcp_flags & 0x12, 0x02, "a SYN");

        let (sport, res) = world_to_pod_udp(&fx, v6, DROPPED_CONNECT);
        assert!(res.is_err(), "v6={v6}: UDP into the pod under ingress default deny went through");
        let e = fx.drop_event_where(&mut events, "for the inbound datagram", |e| e.src.port() == sport);
        assert_eq!((e.direction, e.proto, e.reason), (Direction::Ingress, L4Proto::Udp, DropReason::PolicyDenied));
    }
    let c = dp.counters().unwrap();
    assert!(c.ingress_dropped_denied >= 4, "{c:?}");
    assert_eq!(c.dropped_denied, 0, "nothing the pod sent was dropped: {c:?}");

    // fromCIDR the world's /24 on TCP 8080: TCP in passes, UDP on the same port does not.
    let mut policy = ingress_deny_all();
    for net in ["10.200.2.0/24", "fd00:202::/64"] {
        policy.ingress_allows.push(L3Rule {
            peer: Peer::Cidr { net: net.parse().unwrap(), except: vec![] },
            ports: vec![PortProto { port: POD_PORT, proto: L4Proto::Tcp }],
            policy: policy_ref(),
        });
    }
    fx.attach(&dp, &policy);
    for v6 in [false, true] {
        assert_eq!(world_to_pod_tcp(&fx, v6, CONNECT).1.expect("allowed TCP in"), GREETING, "v6={v6}");
        let (sport, res) = world_to_pod_udp(&fx, v6, DROPPED_CONNECT);
        assert!(res.is_err(), "v6={v6}: the allow names TCP only");
        fx.drop_event_where(&mut events, "for UDP on the TCP-only port", |e| e.src.port() == sport);
    }

    // ingressDeny of the world's IPv4 address wins over the allow.
    policy.ingress_denies.push(L3Rule {
        peer: Peer::Endpoints { ips: vec![world_ip(false)] },
        ports: vec![],
        policy: policy_ref(),
    });
    fx.attach(&dp, &policy);
    let (sport, res) = world_to_pod_tcp(&fx, false, DROPPED_CONNECT);
    assert!(res.is_err(), "ingressDeny wins over the allow");
    let e = fx.drop_event_where(&mut events, "for the denied SYN", |e| e.src.port() == sport);
    assert_eq!((e.direction, e.reason), (Direction::Ingress, DropReason::PolicyDeny));
    assert_eq!(world_to_pod_tcp(&fx, true, CONNECT).1.expect("IPv6 is not denied"), GREETING);

    // ingressDeny alone (enableDefaultDeny.ingress false): everything else comes in.
    let deny_only = EndpointPolicy { ingress_denies: policy.ingress_denies.clone(), ..Default::default() };
    fx.attach(&dp, &deny_only);
    assert!(world_to_pod_tcp(&fx, false, DROPPED_CONNECT).1.is_err(), "still denied");
    assert_eq!(world_to_pod_udp(&fx, true, CONNECT).1.expect("not denied, no default deny"), b"ping");
    fx.topo.node.run(|| dp.uninstall()).expect("uninstall");
}

#[test]
fn what_the_pod_opens_gets_its_replies_under_ingress_deny() {
    if !privileged::available("what_the_pod_opens_gets_its_replies_under_ingress_deny") {
        return;
    }
    let fx = Fixture::new();
    let greeting = b"from the world";
    let _tcp4 = TcpServer::start(&fx.topo.world, SocketAddr::new(world_ip(false), 80), greeting);
    let _tcp6 = TcpServer::start(&fx.topo.world, SocketAddr::new(world_ip(true), 80), greeting);
    let _udp4 = UdpEcho::start(&fx.topo.world, SocketAddr::new(world_ip(false), 7));
    let _udp6 = UdpEcho::start(&fx.topo.world, SocketAddr::new(world_ip(true), 7));
    let dp = fx.open(no_proxy());

    // Ingress default deny alone, then together with egress default deny and a learned allow.
    let both = EndpointPolicy { egress_default_deny: true, ingress_default_deny: true, ..Default::default() };
    for (case, policy) in [("ingress only", ingress_deny_all()), ("both directions", both)] {
        fx.attach(&dp, &policy);
        if policy.egress_default_deny {
            let add = [false, true]
                .into_iter()
                .flat_map(|v6| {
                    [
                        fqdn_cache::AllowKey {
                            endpoint: EP,
                            ip: world_ip(v6),
                            port: PortProto { port: 80, proto: L4Proto::Tcp },
                        },
                        fqdn_cache::AllowKey {
                            endpoint: EP,
                            ip: world_ip(v6),
                            port: PortProto { port: 7, proto: L4Proto::Udp },
                        },
                    ]
                })
                .collect();
            fx.apply(&dp, fqdn_cache::Delta { add, ..fqdn_cache::Delta::default() });
        }
        let before = dp.counters().unwrap().ingress_ct_replies;
        for v6 in [false, true] {
            let dst = SocketAddr::new(world_ip(v6), 80);
            let got = fx.topo.pod.run(|| netns::tcp_exchange(pod_ip(v6), dst, CONNECT)).1;
            assert_eq!(got.unwrap_or_else(|e| panic!("{case}, v6={v6}: TCP out: {e}")), greeting);
            let got = udp_roundtrip(&fx.topo.pod, pod_ip(v6), SocketAddr::new(world_ip(v6), 7), CONNECT).1;
            assert_eq!(got.unwrap_or_else(|e| panic!("{case}, v6={v6}: UDP out: {e}")), b"ping");
        }
        let c = dp.counters().unwrap();
        assert!(c.ingress_ct_replies > before, "{case}: replies passed as such: {c:?}");
        assert_eq!(c.ingress_dropped_denied, 0, "{case}: no reply dropped: {c:?}");
    }
    fx.topo.node.run(|| dp.uninstall()).expect("uninstall");
}
