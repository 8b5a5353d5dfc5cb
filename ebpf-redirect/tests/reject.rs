//! `--deny-response reject`: a packet egress policy denies is answered by the program itself, a
//! TCP RST for TCP and an ICMP / ICMPv6 port unreachable for UDP, so the pod's connect or send
//! fails at once (ECONNREFUSED) instead of timing out; the drop event says it was rejected. Under
//! ingress default deny too: the reply the program makes is not mistaken for inbound traffic.
//! Real sockets in the pod namespace; the time to failure is printed, never asserted. Root only.

mod common;

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{CONNECT, EP, Fixture, UdpEcho, no_proxy, pod_ip};
use ebpf_redirect::{AyaDatapath, DenyResponse, DropReason};
use fqdn_cache::L4Proto;
use fqdnd_testkit::netns::{self, TcpServer, WORLD_IP4, WORLD_IP6};
use fqdnd_testkit::privileged;
use policy_sync::resolved::{EndpointPolicy, L3Rule, Peer, PolicyRef};

fn world(v6: bool) -> IpAddr {
    if v6 { IpAddr::V6(WORLD_IP6) } else { IpAddr::V4(WORLD_IP4) }
}

/// A connected UDP socket in the pod sends to `dst` and waits for an answer: ICMP port
/// unreachable comes back as ECONNREFUSED.
fn udp_exchange(fx: &Fixture, v6: bool, dst: SocketAddr) -> (u16, std::io::Result<Vec<u8>>) {
    let sock = fx.topo.pod.run(|| UdpSocket::bind(SocketAddr::new(pod_ip(v6), 0))).unwrap();
    let port = sock.local_addr().unwrap().port();
    sock.set_read_timeout(Some(Duration::from_millis(800))).unwrap();
    sock.connect(dst).unwrap();
    let res = sock.send(b"ping").and_then(|_| {
        let mut buf = [0u8; 64];
        sock.recv(&mut buf).map(|n| buf[..n].to_vec())
    });
    (port, res)
}

fn open(fx: &Fixture, deny: DenyResponse) -> AyaDatapath {
    let mut config = fx.config(no_proxy());
    config.deny_response = deny;
    fx.topo.node.run(|| AyaDatapath::open(config)).expect("open")
}

#[test]
fn reject_answers_denied_tcp_and_udp_at_once() {
    if !privileged::available("reject_answers_denied_tcp_and_udp_at_once") {
        return;
    }
    let fx = Fixture::new();
    let _tcp4 = TcpServer::start(&fx.topo.world, SocketAddr::new(world(false), 80), b"hello");
    let _tcp6 = TcpServer::start(&fx.topo.world, SocketAddr::new(world(true), 80), b"hello");
    let _udp4 = UdpEcho::start(&fx.topo.world, SocketAddr::new(world(false), 7));
    let _udp6 = UdpEcho::start(&fx.topo.world, SocketAddr::new(world(true), 7));
    let dp = open(&fx, DenyResponse::Reject);
    let mut events = fx.events(&dp);
    // Both directions default deny, and an explicit egress deny of the world's port 81.
    let mut policy = EndpointPolicy { egress_default_deny: true, ingress_default_deny: true, ..Default::default() };
    policy.egress_denies.push(L3Rule {
        peer: Peer::Any,
        ports: vec![fqdn_cache::PortProto { port: 81, proto: L4Proto::Tcp }],
        policy: PolicyRef { namespace: None, name: "deny-81".into() },
    });
    fx.attach(&dp, &policy);

    for v6 in [false, true] {
        for (port, reason) in [(80, DropReason::PolicyDenied), (81, DropReason::PolicyDeny)] {
            let dst = SocketAddr::new(world(v6), port);
            let start = Instant::now();
            let (sport, res) = fx.connect(dst, CONNECT);
            let took = start.elapsed();
            let err = res.expect_err("denied connect");
            assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "v6={v6} :{port}: a RST, not a timeout: {err}");
            eprintln!("reject: TCP connect to {dst} refused after {took:?}");
            let e = fx.drop_event(&mut events, sport, dst);
            assert_eq!((e.endpoint, e.reason, e.rejected), (EP, reason, true), "{e:?}");
        }
        let dst = SocketAddr::new(world(v6), 7);
        let start = Instant::now();
        let (sport, res) = udp_exchange(&fx, v6, dst);
        let took = start.elapsed();
        let err = res.expect_err("denied datagram");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "v6={v6}: an ICMP port unreachable: {err}");
        eprintln!("reject: UDP to {dst} refused after {took:?}");
        let e = fx.drop_event(&mut events, sport, dst);
        assert_eq!((e.proto, e.rejected), (L4Proto::Udp, true), "{e:?}");
    }
    let c = dp.counters().unwrap();
    assert!(c.rejected >= 6 && c.ingress_dropped_denied == 0, "{c:?}");
    drop(dp);

    // The default, drop: the same connect times out and the event says dropped, not rejected.
    let dp = open(&fx, DenyResponse::Drop);
    let dst = SocketAddr::new(world(false), 80);
    let start = Instant::now();
    let (sport, res) = fx.topo.pod.run(|| netns::tcp_connect(pod_ip(false), dst, Duration::from_millis(1500)));
    let err = res.map(drop).expect_err("denied connect");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "drop mode: {err}");
    eprintln!("drop: TCP connect to {dst} still unanswered after {:?} (bounded by the test)", start.elapsed());
    assert!(!fx.drop_event(&mut events, sport, dst).rejected);
    fx.topo.node.run(|| dp.uninstall()).expect("uninstall");
}
