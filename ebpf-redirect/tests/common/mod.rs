//! What the datapath tests share: the namespaces, a datapath on a private bpffs, and helpers
//! to attach the pod, connect from it and wait for its drop events.

#![allow(dead_code, unused_imports, reason = "each test file uses its own subset")]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ebpf_redirect::{
    AyaConfig, AyaDatapath, Datapath, DesiredEndpoint, DropEvent, DropEvents, PolicyRoute, ProxyTarget, ReconcileReport,
};
use fqdn_cache::{AllowKey, Delta, EndpointId, L4Proto, PortProto};
use fqdnd_testkit::netns::{self, Bpffs, POD_IP4, POD_IP6, POD_VETH, Topology};
pub use fqdnd_testkit::netns::{UdpEcho, udp_roundtrip};
use policy_sync::resolved::EndpointPolicy;

pub const EP: EndpointId = EndpointId(42);
/// Long enough for any allowed connect on a loaded machine; dropped SYNs are retried by the
/// kernel after 1 s, so a shorter bound only decides "dropped" once the drop event confirmed it.
pub const CONNECT: Duration = Duration::from_secs(5);
pub const DROPPED_CONNECT: Duration = Duration::from_millis(400);

pub struct Fixture {
    pub topo: Topology,
    pub bpffs: Bpffs,
    pub rt: tokio::runtime::Runtime,
}

impl Fixture {
    pub fn new() -> Fixture {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        Fixture { topo: Topology::new(), bpffs: Bpffs::new(), rt }
    }

    pub fn config(&self, proxy: ProxyTarget) -> AyaConfig {
        AyaConfig { bpffs_dir: self.bpffs.datapath_dir(), ..AyaConfig::new(proxy) }
    }

    pub fn open(&self, proxy: ProxyTarget) -> AyaDatapath {
        let config = self.config(proxy);
        self.topo.node.run(|| AyaDatapath::open(config)).unwrap_or_else(|e| panic!("open: {}", chain(&e)))
    }

    /// The pod as the one endpoint, under `policy`: what the agent does on every snapshot.
    pub fn attach(&self, dp: &AyaDatapath, policy: &EndpointPolicy) -> ReconcileReport {
        let desired = [DesiredEndpoint::new(EP, Some(POD_VETH.into()), policy)];
        self.topo.node.run(|| dp.sync_endpoints(&desired)).unwrap_or_else(|e| panic!("sync: {}", chain(&e)))
    }

    pub fn apply(&self, dp: &AyaDatapath, delta: Delta) {
        self.rt.block_on(dp.apply(delta)).expect("apply");
    }

    pub fn connect(&self, dst: SocketAddr, timeout: Duration) -> (u16, std::io::Result<Vec<u8>>) {
        let src = if dst.is_ipv4() { IpAddr::V4(POD_IP4) } else { IpAddr::V6(POD_IP6) };
        self.topo.pod.run(|| netns::tcp_exchange(src, dst, timeout))
    }

    /// The drop event for the connection from `sport` to `dst`, skipping others (retransmits).
    pub fn drop_event(&self, events: &mut DropEvents, sport: u16, dst: SocketAddr) -> DropEvent {
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

pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub fn no_proxy() -> ProxyTarget {
    ProxyTarget { ipv4: None, ipv6: None, udp_port: 0, tcp_port: 0 }
}

pub fn default_deny() -> EndpointPolicy {
    EndpointPolicy { egress_default_deny: true, ..Default::default() }
}

pub fn allow(ip: IpAddr, port: u16) -> AllowKey {
    AllowKey { endpoint: EP, ip, port: PortProto { port, proto: L4Proto::Tcp } }
}

impl Fixture {
    /// The first drop event `pred` accepts, skipping others (retransmits, earlier tests' steps).
    pub fn drop_event_where(
        &self,
        events: &mut DropEvents,
        what: &str,
        pred: impl Fn(&DropEvent) -> bool,
    ) -> DropEvent {
        self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    let e = events.recv().await.expect("ring buffer");
                    if pred(&e) {
                        return e;
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no drop event {what}"))
        })
    }

    pub fn events(&self, dp: &AyaDatapath) -> DropEvents {
        let _g = self.rt.enter();
        dp.drop_events().expect("drop events")
    }
}

pub fn pod_ip(v6: bool) -> IpAddr {
    if v6 { IpAddr::V6(POD_IP6) } else { IpAddr::V4(POD_IP4) }
}
