//! The eBPF datapath with real packets: pod, node and world network namespaces, the tc programs
//! on the node side of the pod's veth, TCP connects and DNS queries from the pod.
//! Root only (see tests/common/privileged.rs).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::netns::{self, Bpffs, POD_IP4, POD_IP6, POD_VETH, TcpServer, Topology, WORLD_IP4, WORLD_IP6};
use common::privileged;
use ebpf_redirect::{
    AyaConfig, AyaDatapath, Datapath, DropEvent, DropEvents, DropReason, EndpointSpec, PolicyRoute, ProxyTarget,
};
use fqdn_cache::{AllowKey, Delta, EndpointId, L4Proto, PortProto};
use policy_sync::resolved::{EndpointPolicy, L3Rule, Peer, PolicyRef};

const EP: EndpointId = EndpointId(42);
/// Long enough for any allowed connect on a loaded machine; dropped SYNs are retried by the
/// kernel after 1 s, so a shorter bound only decides "dropped" once the drop event confirmed it.
const CONNECT: Duration = Duration::from_secs(5);
const DROPPED_CONNECT: Duration = Duration::from_millis(400);

struct Fixture {
    topo: Topology,
    bpffs: Bpffs,
    rt: tokio::runtime::Runtime,
}

impl Fixture {
    fn new() -> Fixture {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        Fixture { topo: Topology::new(), bpffs: Bpffs::new(), rt }
    }

    fn config(&self, proxy: ProxyTarget) -> AyaConfig {
        AyaConfig { bpffs_dir: self.bpffs.datapath_dir(), proxy, route: PolicyRoute::default(), install_route: true }
    }

    fn open(&self, proxy: ProxyTarget) -> AyaDatapath {
        let config = self.config(proxy);
        self.topo.node.run(|| AyaDatapath::open(config)).unwrap_or_else(|e| panic!("open: {}", chain(&e)))
    }

    fn attach(&self, dp: &AyaDatapath, policy: &EndpointPolicy) {
        dp.set_endpoint_policy(EP, policy).expect("policy");
        self.topo
            .node
            .run(|| dp.attach_endpoint(&EndpointSpec { endpoint: EP, interface: POD_VETH.into() }))
            .unwrap_or_else(|e| panic!("attach: {}", chain(&e)));
    }

    fn apply(&self, dp: &AyaDatapath, delta: Delta) {
        self.rt.block_on(dp.apply(delta)).expect("apply");
    }

    fn connect(&self, dst: SocketAddr, timeout: Duration) -> (u16, std::io::Result<Vec<u8>>) {
        let src = if dst.is_ipv4() { IpAddr::V4(POD_IP4) } else { IpAddr::V6(POD_IP6) };
        self.topo.pod.run(|| netns::tcp_exchange(src, dst, timeout))
    }

    /// The drop event for the connection from `sport` to `dst`, skipping others (retransmits).
    fn drop_event(&self, events: &mut DropEvents, sport: u16, dst: SocketAddr) -> DropEvent {
        self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    let e = events.recv().await.expect("ring buffer");
                    if e.src.port() == sport && e.dst == dst {
                        return e;
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no drop event for port {sport} -> {dst}"))
        })
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn no_proxy() -> ProxyTarget {
    ProxyTarget { ipv4: None, ipv6: None, udp_port: 0, tcp_port: 0 }
}

fn default_deny() -> EndpointPolicy {
    EndpointPolicy { egress_default_deny: true, ..Default::default() }
}

fn allow(ip: IpAddr, port: u16) -> AllowKey {
    AllowKey { endpoint: EP, ip, port: PortProto { port, proto: L4Proto::Tcp } }
}

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
    let delta = Delta { add: vec![allow(dst4.ip(), 80), allow(dst6.ip(), 80)], remove: vec![] };
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
    fx.apply(&dp, Delta { add: vec![], remove: delta.add.clone() });
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
    dp.set_endpoint_policy(EP, &policy).expect("policy with deny");
    let (sport, res) = fx.connect(a, DROPPED_CONNECT);
    assert!(res.is_err(), "deny wins over allow");
    assert_eq!(fx.drop_event(&mut events, sport, a).reason, DropReason::PolicyDeny);

    // Removing the policy removes the enforcement.
    dp.set_endpoint_policy(EP, &EndpointPolicy::default()).expect("no policy");
    assert_eq!(fx.connect(b, CONNECT).1.expect("no policy, no enforcement"), b"b");
    assert!(dp.allow_entries().is_empty(), "static entries left: {:?}", dp.allow_entries());
    fx.topo.node.run(|| dp.uninstall()).expect("uninstall");
}
