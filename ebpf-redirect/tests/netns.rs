//! The eBPF datapath with real packets: pod, node and world network namespaces, the tc programs
//! on the node side of the pod's veth, TCP connects and DNS queries from the pod.
//! Root only (see fqdnd_testkit::privileged).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::{CONNECT, DROPPED_CONNECT, EP, Fixture, allow, default_deny, no_proxy};
use ebpf_redirect::{AyaDatapath, Datapath, DropReason, ProxyTarget, ReconcileReport};
use fqdn_cache::pattern::NamePattern;
use fqdn_cache::{AllowKey, Delta, EndpointId, L4Proto, PortProto};
use fqdnd_testkit::netns::{self, POD_IP4, POD_IP6, POD_VETH, TcpServer, WORLD_IP4, WORLD_IP6};
use fqdnd_testkit::privileged;
use policy_sync::DnsRules;
use policy_sync::resolved::{DnsRule, EndpointPolicy, L3Rule, Peer, PolicyRef};

#[test]
fn default_deny_drops_and_learned_allow_passes() {
    if !privileged::available("default_deny_drops_and_learned_allow_passes") {
        return;
    }
    let fx = Fixture::new();
    let _server4 = TcpServer::start(&fx.topo.world, SocketAddr::new(IpAddr::V4(WORLD_IP4), 80), b"hello");
    let _server6 = TcpServer::start(&fx.topo.world, SocketAddr::new(IpAddr::V6(WORLD_IP6), 80), b"hello");
    let dst4 = SocketAddr::new(IpAddr::V4(WORLD_IP4), 80);
    let dst6 = SocketAddr::new(IpAddr::V6(WORLD_IP6), 80);

    // Before fqdnd: the topology works.
    assert_eq!(fx.connect(dst4, CONNECT).1.expect("plain connect"), b"hello");

    let dp = fx.open(no_proxy());
    let mut events = {
        let _g = fx.rt.enter();
        dp.drop_events().expect("drop events")
    };
    fx.attach(&dp, &default_deny());

    for dst in [dst4, dst6] {
        let (sport, res) = fx.connect(dst, DROPPED_CONNECT);
        assert!(res.is_err(), "connect to {dst} under default deny must fail");
        let e = fx.drop_event(&mut events, sport, dst);
        assert_eq!(e.endpoint, EP);
        assert_eq!(e.proto, L4Proto::Tcp);
        assert_eq!(e.reason, DropReason::PolicyDenied);
        assert_eq!(e.tcp_flags & 0x12, 0x02, "a SYN");
        assert_eq!(e.src.ip(), if dst.is_ipv4() { IpAddr::V4(POD_IP4) } else { IpAddr::V6(POD_IP6) });
    }

    // Learned allow: the first connect after the ack passes, with no drop at all.
    let delta = Delta { add: vec![allow(dst4.ip(), 80), allow(dst6.ip(), 80)], remove: vec![], ..Delta::default() };
    fx.apply(&dp, delta.clone());
    let before = dp.counters().unwrap();
    for dst in [dst4, dst6] {
        assert_eq!(fx.connect(dst, CONNECT).1.expect("allowed connect"), b"hello", "{dst}");
    }
    let after = dp.counters().unwrap();
    assert_eq!(after.dropped_denied, before.dropped_denied, "drops while allowed");
    assert!(after.allowed > before.allowed);
    if let Some(e) = events.try_recv() {
        panic!("drop while allowed: {e:?}");
    }

    // The allow is per port.
    let other = SocketAddr::new(IpAddr::V4(WORLD_IP4), 81);
    let (sport, res) = fx.connect(other, DROPPED_CONNECT);
    assert!(res.is_err());
    fx.drop_event(&mut events, sport, other);

    // Removal: dropped again.
    fx.apply(&dp, Delta { remove: delta.add.clone(), ..Delta::default() });
    let (sport, res) = fx.connect(dst4, DROPPED_CONNECT);
    assert!(res.is_err(), "connect after removal must fail");
    fx.drop_event(&mut events, sport, dst4);

    fx.topo.node.run(|| dp.uninstall()).expect("uninstall");
}

#[test]
fn static_rules_from_policy() {
    if !privileged::available("static_rules_from_policy") {
        return;
    }
    let fx = Fixture::new();
    let a = SocketAddr::new(IpAddr::V4(WORLD_IP4), 80);
    let b_ip: IpAddr = "10.200.2.77".parse().unwrap();
    fx.topo.add_world_address(b_ip);
    let b = SocketAddr::new(b_ip, 80);
    let _sa = TcpServer::start(&fx.topo.world, a, b"a");
    let _sb = TcpServer::start(&fx.topo.world, b, b"b");

    let policy_ref = PolicyRef { namespace: Some("default".into()), name: "cidr".into() };
    // The world's /24 except .77, plus an explicit deny of .2 on port 80 that wins over the allow.
    let mut policy = default_deny();
    policy.egress_allows.push(L3Rule {
        peer: Peer::Cidr { net: "10.200.2.0/24".parse().unwrap(), except: vec!["10.200.2.77/32".parse().unwrap()] },
        ports: vec![],
        policy: policy_ref.clone(),
    });
    let dp = fx.open(no_proxy());
    let mut events = {
        let _g = fx.rt.enter();
        dp.drop_events().expect("drop events")
    };
    fx.attach(&dp, &policy);
    assert_eq!(fx.connect(a, CONNECT).1.expect("cidr allows .2"), b"a");
    let (sport, res) = fx.connect(b, DROPPED_CONNECT);
    assert!(res.is_err(), "except block");
    assert_eq!(fx.drop_event(&mut events, sport, b).reason, DropReason::PolicyDenied);

    policy.egress_denies.push(L3Rule {
        peer: Peer::Endpoints { ips: vec![a.ip()] },
        ports: vec![PortProto { port: 80, proto: L4Proto::Tcp }],
        policy: policy_ref,
    });
    fx.attach(&dp, &policy);
    let (sport, res) = fx.connect(a, DROPPED_CONNECT);
    assert!(res.is_err(), "deny wins over allow");
    assert_eq!(fx.drop_event(&mut events, sport, a).reason, DropReason::PolicyDeny);

    // Removing the policy removes the enforcement.
    fx.attach(&dp, &EndpointPolicy::default());
    assert_eq!(fx.connect(b, CONNECT).1.expect("no policy, no enforcement"), b"b");
    assert!(dp.allow_entries().is_empty(), "static entries left: {:?}", dp.allow_entries());
    fx.topo.node.run(|| dp.uninstall()).expect("uninstall");
}

/// A stand-in for the DNS proxy's transparent sockets in the node namespace: answers every
/// query with `ANSWER` from the address the pod asked, and records what it saw.
struct FakeProxy {
    target: ProxyTarget,
    /// (peer, original destination, protocol) of every query.
    seen: Arc<Mutex<Vec<(SocketAddr, SocketAddr, L4Proto)>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

const ANSWER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

impl FakeProxy {
    fn start(node: &netns::Netns) -> FakeProxy {
        let (udp4, udp6, tcp4, tcp6) = node.run(|| {
            let udp4 = netns::transparent_udp("127.0.0.1:0".parse().unwrap()).expect("udp4");
            let port = udp4.local_addr().unwrap().port();
            let udp6 = netns::transparent_udp(SocketAddr::new("::1".parse().unwrap(), port)).expect("udp6");
            let tcp4 = netns::transparent_tcp("127.0.0.1:0".parse().unwrap()).expect("tcp4");
            let port = tcp4.local_addr().unwrap().port();
            let tcp6 = netns::transparent_tcp(SocketAddr::new("::1".parse().unwrap(), port)).expect("tcp6");
            (udp4, udp6, tcp4, tcp6)
        });
        let target = ProxyTarget {
            ipv4: Some("127.0.0.1".parse().unwrap()),
            ipv6: Some("::1".parse().unwrap()),
            udp_port: udp4.local_addr().unwrap().port(),
            tcp_port: tcp4.local_addr().unwrap().port(),
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for udp in [udp4, udp6] {
            udp.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let (seen, stop) = (seen.clone(), stop.clone());
            // In the node namespace: the reply sockets it creates must be there.
            threads.push(node.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(q) = netns::recv_intercepted(&udp) else { continue };
                    seen.lock().unwrap().push((q.peer, q.original_dst, L4Proto::Udp));
                    let answer = netns::dns_answer(&q.payload, ANSWER);
                    netns::send_from(q.original_dst, q.peer, &answer).expect("reply from the original server");
                }
            }));
        }
        for tcp in [tcp4, tcp6] {
            threads.push(Self::serve_tcp(tcp, seen.clone(), stop.clone()));
        }
        FakeProxy { target, seen, stop, threads }
    }

    fn serve_tcp(
        tcp: std::net::TcpListener,
        seen: Arc<Mutex<Vec<(SocketAddr, SocketAddr, L4Proto)>>>,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        tcp.set_nonblocking(true).unwrap();
        let (seen2, stop2) = (seen, stop);
        std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            while !stop2.load(Ordering::Relaxed) {
                let (mut s, peer) = match tcp.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                seen2.lock().unwrap().push((peer, s.local_addr().unwrap(), L4Proto::Tcp));
                let mut len = [0u8; 2];
                if s.read_exact(&mut len).is_err() {
                    continue;
                }
                let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if s.read_exact(&mut q).is_err() {
                    continue;
                }
                let answer = netns::dns_answer(&q, ANSWER);
                let mut out = (answer.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&answer);
                let _ = s.write_all(&out);
            }
        })
    }

    fn seen(&self) -> Vec<(SocketAddr, SocketAddr, L4Proto)> {
        self.seen.lock().unwrap().clone()
    }

    /// Close the sockets (joins the threads, which own them).
    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("proxy thread");
        }
    }
}

/// `dig` in the pod: the answer's addresses (`+short`), or dig's complaint.
fn dig(fx: &Fixture, server: IpAddr, tcp: bool) -> Result<String, String> {
    let mut cmd = fx.topo.pod.command("dig");
    cmd.arg(format!("@{server}")).args(["www.example.test", "A", "+short", "+tries=1", "+timeout=2"]);
    if tcp {
        cmd.arg("+tcp");
    }
    let out = cmd.output().map_err(|e| format!("running dig (Debian package dnsutils): {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && !stdout.contains(";;") {
        Ok(stdout)
    } else {
        Err(format!("{stdout} {}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn dns_policy(servers: &[IpAddr]) -> EndpointPolicy {
    let policy = PolicyRef { namespace: Some("default".into()), name: "dns".into() };
    let mut p = default_deny();
    p.dns = DnsRules::new(vec![DnsRule {
        server: Peer::Endpoints { ips: servers.to_vec() },
        ports: vec![PortProto { port: 53, proto: L4Proto::Any }],
        patterns: vec![NamePattern::match_pattern("*").unwrap()],
        policy: policy.into(),
    }]);
    p
}

#[test]
fn dns_is_redirected_to_the_transparent_proxy() {
    if !privileged::available("dns_is_redirected_to_the_transparent_proxy") {
        return;
    }
    let fx = Fixture::new();
    let server4: IpAddr = "10.200.2.53".parse().unwrap();
    let server6: IpAddr = "fd00:202::53".parse().unwrap();
    let other: IpAddr = "10.200.2.54".parse().unwrap();
    for ip in [server4, server6, other] {
        fx.topo.add_world_address(ip);
    }
    let proxy = FakeProxy::start(&fx.topo.node);
    let dp = fx.open(proxy.target);
    let mut events = {
        let _g = fx.rt.enter();
        dp.drop_events().expect("drop events")
    };
    fx.attach(&dp, &dns_policy(&[server4, server6]));

    for (server, tcp) in [(server4, false), (server4, true), (server6, false), (server6, true)] {
        let got = dig(&fx, server, tcp).unwrap_or_else(|e| panic!("dig @{server} tcp={tcp}: {e}"));
        assert_eq!(got, ANSWER.to_string(), "@{server} tcp={tcp}");
        let proto = if tcp { L4Proto::Tcp } else { L4Proto::Udp };
        let (peer, original, _) = *proxy
            .seen()
            .iter()
            .rev()
            .find(|s| s.2 == proto && s.1.ip() == server)
            .unwrap_or_else(|| panic!("the proxy saw no {proto} query for {server}: {:?}", proxy.seen()));
        assert_eq!(original, SocketAddr::new(server, 53), "original destination");
        assert_eq!(peer.ip(), if server.is_ipv4() { IpAddr::V4(POD_IP4) } else { IpAddr::V6(POD_IP6) });
    }
    assert!(dp.counters().unwrap().redirected >= 4);

    // A server no DNS rule names: default deny drops the query.
    assert!(dig(&fx, other, false).is_err(), "query to a server outside the DNS rules");
    let e = fx.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let e = events.recv().await.unwrap();
                if e.dst == SocketAddr::new(other, 53) {
                    return e;
                }
            }
        })
        .await
        .expect("drop event for the unlisted server")
    });
    assert_eq!((e.proto, e.reason), (L4Proto::Udp, DropReason::PolicyDenied));

    // No proxy socket: the query is dropped, never sent to the real server.
    proxy.stop();
    let before = dp.counters().unwrap().dropped_no_proxy;
    assert!(dig(&fx, server4, false).is_err());
    assert!(dp.counters().unwrap().dropped_no_proxy > before);

    fx.topo.node.run(|| dp.uninstall()).expect("uninstall");
}

/// Program ids on the pod veth (ingress, egress), as the kernel reports them.
fn tcx_programs(fx: &Fixture) -> (Vec<u32>, Vec<u32>) {
    fx.topo.node.run(|| ebpf_redirect::tcx_programs(POD_VETH)).expect("query tcx")
}

#[test]
fn enforcement_survives_restart_and_programs_are_swapped() {
    if !privileged::available("enforcement_survives_restart_and_programs_are_swapped") {
        return;
    }
    use std::io::{Read as _, Write as _};
    let fx = Fixture::new();
    let echo_addr = SocketAddr::new(IpAddr::V4(WORLD_IP4), 7);
    let greet_addr = SocketAddr::new(IpAddr::V4(WORLD_IP4), 80);
    let denied = SocketAddr::new(IpAddr::V4(WORLD_IP4), 81);
    let _echo = TcpServer::echo(&fx.topo.world, echo_addr);
    let _greet = TcpServer::start(&fx.topo.world, greet_addr, b"hello");

    let dp1 = fx.open(no_proxy());
    let mut events = {
        let _g = fx.rt.enter();
        dp1.drop_events().expect("drop events")
    };
    fx.attach(&dp1, &default_deny());
    fx.apply(
        &dp1,
        Delta { add: vec![allow(echo_addr.ip(), 7), allow(greet_addr.ip(), 80)], remove: vec![], ..Delta::default() },
    );
    let ids1 = dp1.program_ids().unwrap();
    assert_eq!(tcx_programs(&fx), (vec![ids1.0], vec![ids1.1]));

    // A long-lived connection, open across the restart.
    let (_, conn) = fx.topo.pod.run(|| netns::tcp_connect(IpAddr::V4(POD_IP4), echo_addr, CONNECT));
    let mut conn = conn.expect("echo connection");
    conn.set_read_timeout(Some(CONNECT)).unwrap();
    let mut roundtrip = |msg: &[u8]| {
        conn.write_all(msg).unwrap();
        let mut buf = vec![0u8; msg.len()];
        conn.read_exact(&mut buf).map(|()| buf)
    };
    assert_eq!(roundtrip(b"before").unwrap(), b"before");

    // The agent exits.
    drop(dp1);
    assert_eq!(roundtrip(b"while down").unwrap(), b"while down");
    let (sport, res) = fx.connect(denied, DROPPED_CONNECT);
    assert!(res.is_err(), "still enforced while the agent is down");
    fx.drop_event(&mut events, sport, denied);

    // A new agent adopts links and maps.
    let dp2 = fx.open(no_proxy());
    let ids2 = dp2.program_ids().unwrap();
    assert_ne!(ids1, ids2);
    assert_eq!(
        tcx_programs(&fx),
        (vec![ids2.0], vec![ids2.1]),
        "the new programs run on the pinned links, and only they"
    );
    let entries = dp2.allow_entries();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(entries.iter().all(|(k, o)| k.endpoint == EP && o.learned && !o.policy));
    assert!(dp2.attached().iter().any(|(_, ep, name)| *ep == EP && name.as_deref() == Some(POD_VETH)));
    assert_eq!(roundtrip(b"after").unwrap(), b"after");
    assert_eq!(fx.connect(greet_addr, CONNECT).1.expect("allowed after restart"), b"hello");

    // Attaching again after the restart is a no-op, and the state is usable.
    fx.attach(&dp2, &default_deny());
    assert_eq!(tcx_programs(&fx), (vec![ids2.0], vec![ids2.1]));
    fx.apply(&dp2, Delta { remove: vec![allow(greet_addr.ip(), 80)], ..Delta::default() });
    let (sport, res) = fx.connect(greet_addr, DROPPED_CONNECT);
    assert!(res.is_err());
    fx.drop_event(&mut events, sport, greet_addr);

    fx.topo.node.run(|| dp2.uninstall()).expect("uninstall");
    assert_eq!(tcx_programs(&fx), (vec![], vec![]), "uninstall detaches");
}

#[test]
fn last_used_moves_with_traffic() {
    if !privileged::available("last_used_moves_with_traffic") {
        return;
    }
    let fx = Fixture::new();
    let dst = SocketAddr::new(IpAddr::V4(WORLD_IP4), 80);
    let _server = TcpServer::start(&fx.topo.world, dst, b"hello");
    let dp = fx.open(no_proxy());
    fx.attach(&dp, &default_deny());
    fx.apply(&dp, Delta { add: vec![allow(dst.ip(), 80)], remove: vec![], ..Delta::default() });
    let ago = |dp: &AyaDatapath| {
        dp.last_used().unwrap().into_iter().find(|l| l.endpoint == EP && l.ip == dst.ip()).map(|l| l.ago)
    };
    assert_eq!(ago(&dp), None, "never used yet");

    fx.connect(dst, CONNECT).1.expect("connect");
    let first = ago(&dp).expect("used");
    // Longer than the program's stamp granularity (100 ms), so the next packet restamps.
    std::thread::sleep(Duration::from_millis(300));
    let idle = ago(&dp).expect("still there");
    assert!(idle > first, "idle {idle:?} vs {first:?}");
    fx.connect(dst, CONNECT).1.expect("connect again");
    let fresh = ago(&dp).expect("used again");
    assert!(fresh < idle, "fresh {fresh:?} vs idle {idle:?}");
    fx.topo.node.run(|| dp.uninstall()).expect("uninstall");
}

#[test]
fn replies_to_inbound_connections_pass_default_deny() {
    if !privileged::available("replies_to_inbound_connections_pass_default_deny") {
        return;
    }
    let fx = Fixture::new();
    let pod_server = SocketAddr::new(IpAddr::V4(POD_IP4), 8080);
    let _server = TcpServer::start(&fx.topo.pod, pod_server, b"from the pod");
    let pod_udp = fx.topo.pod.run(|| std::net::UdpSocket::bind(SocketAddr::new(IpAddr::V4(POD_IP4), 5353))).unwrap();
    let dp = fx.open(no_proxy());
    let mut events = {
        let _g = fx.rt.enter();
        dp.drop_events().expect("drop events")
    };
    fx.attach(&dp, &default_deny());

    // TCP: the world connects in; the pod's SYN-ACK and data are replies.
    let got = fx.topo.world.run(|| netns::tcp_exchange(IpAddr::V4(WORLD_IP4), pod_server, CONNECT)).1;
    assert_eq!(got.expect("inbound TCP"), b"from the pod");
    // UDP: a datagram in, the answer out.
    let world_udp = fx.topo.world.run(|| std::net::UdpSocket::bind(SocketAddr::new(IpAddr::V4(WORLD_IP4), 0))).unwrap();
    world_udp.set_read_timeout(Some(CONNECT)).unwrap();
    world_udp.send_to(b"ping", pod_server.ip().to_string() + ":5353").unwrap();
    pod_udp.set_read_timeout(Some(CONNECT)).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = pod_udp.recv_from(&mut buf).expect("pod receives");
    pod_udp.send_to(&buf[..n], from).unwrap();
    let (n, _) = world_udp.recv_from(&mut buf).expect("the pod's UDP answer passes");
    assert_eq!(&buf[..n], b"ping");
    assert!(dp.counters().unwrap().ct_replies > 0);

    // Still default deny for what the pod opens itself, including to the same peer: a listener
    // there would answer, so only the drop explains the failure.
    let open = SocketAddr::new(IpAddr::V4(WORLD_IP4), 9);
    let _listener = TcpServer::start(&fx.topo.world, open, b"would answer");
    let (sport, res) = fx.connect(open, DROPPED_CONNECT);
    assert!(res.is_err());
    assert_eq!(fx.drop_event(&mut events, sport, open).reason, DropReason::PolicyDenied);
    let before = dp.counters().unwrap().dropped_denied;
    pod_udp.send_to(b"unsolicited", SocketAddr::new(IpAddr::V4(WORLD_IP4), 9999)).unwrap();
    assert_eq!(dp.counters().unwrap().dropped_denied, before + 1, "a datagram the pod starts is policed");
    fx.topo.node.run(|| dp.uninstall()).expect("uninstall");
}

#[test]
fn sync_converges_and_is_idempotent() {
    if !privileged::available("sync_converges_and_is_idempotent") {
        return;
    }
    let fx = Fixture::new();
    let a = SocketAddr::new(IpAddr::V4(WORLD_IP4), 80);
    let b = SocketAddr::new(IpAddr::V6(WORLD_IP6), 80);
    let _sa = TcpServer::start(&fx.topo.world, a, b"a");
    let _sb = TcpServer::start(&fx.topo.world, b, b"b");
    let dp = fx.open(no_proxy());
    let mut events = {
        let _g = fx.rt.enter();
        dp.drop_events().expect("drop events")
    };
    let first = fx.attach(&dp, &default_deny());
    assert_eq!((first.attached, first.entries_added), (1, 0), "{first:?}");
    let stale_ep = EndpointId(7);
    fx.apply(
        &dp,
        Delta {
            add: vec![allow(a.ip(), 80), allow(b.ip(), 80), AllowKey { endpoint: stale_ep, ..allow(a.ip(), 80) }],
            ..Delta::default()
        },
    );

    // Entries of an endpoint no snapshot names go; the learned entries of the pod stay.
    let report = fx.attach(&dp, &default_deny());
    assert_eq!((report.entries_removed, report.entries_added, report.attached), (1, 0, 0), "{report:?}");
    assert_eq!(fx.connect(a, CONNECT).1.expect("learned entry kept"), b"a");
    assert_eq!(fx.connect(b, CONNECT).1.expect("learned entry kept"), b"b");
    assert_eq!(fx.attach(&dp, &default_deny()), ReconcileReport::default(), "a converged state changes nothing");

    // A policy change: a static rule for b's prefix is added, the cache's entries stay.
    let mut policy = default_deny();
    policy.egress_allows.push(L3Rule {
        peer: Peer::Cidr { net: "fd00:202::/64".parse().unwrap(), except: vec![] },
        ports: vec![PortProto { port: 80, proto: L4Proto::Tcp }],
        policy: PolicyRef { namespace: Some("default".into()), name: "v6".into() },
    });
    let report = fx.attach(&dp, &policy);
    assert_eq!((report.entries_added, report.entries_removed), (1, 0), "{report:?}");
    // The learned entry of b goes (expiry); the static rule still allows b, not a.
    fx.apply(&dp, Delta { remove: vec![allow(a.ip(), 80), allow(b.ip(), 80)], ..Delta::default() });
    assert_eq!(fx.connect(b, CONNECT).1.expect("static allow"), b"b");
    let (sport, res) = fx.connect(a, DROPPED_CONNECT);
    assert!(res.is_err(), "a's learned entry expired");
    assert_eq!(fx.drop_event(&mut events, sport, a).reason, DropReason::PolicyDenied);

    // No endpoint wanted: detached, every entry gone, traffic unfiltered.
    let report = fx.topo.node.run(|| dp.sync_endpoints(&[])).expect("sync");
    assert_eq!((report.detached, report.entries_removed), (1, 1), "{report:?}");
    assert_eq!(tcx_programs(&fx), (vec![], vec![]));
    assert_eq!(fx.connect(a, CONNECT).1.expect("no enforcement"), b"a");
    fx.topo.node.run(|| dp.uninstall()).expect("uninstall");
}
