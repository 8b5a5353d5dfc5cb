//! Which datapath the agent drives. Plain mode: the in-memory one (nothing is enforced in the
//! kernel; DNS rules still are, by the proxy). Transparent mode: the eBPF datapath, pointed at the
//! proxy's transparent listeners, its endpoints and static rules converged on every snapshot.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use dns_proxy::ListenerInfo;
use ebpf_redirect::{AyaConfig, AyaDatapath, DenyResponse, DesiredEndpoint, MapSizes, ProxyTarget};
use fqdn_cache::{Datapath, L4Proto, MemoryDatapath};
use policy_sync::Snapshot;

pub enum AgentDatapath {
    Memory(Arc<MemoryDatapath>),
    Kernel(Arc<AyaDatapath>),
}

impl AgentDatapath {
    pub fn memory() -> Self {
        AgentDatapath::Memory(Arc::new(MemoryDatapath::new()))
    }

    /// Open (or adopt, after a restart) the eBPF datapath under `bpffs_dir`, redirecting DNS to
    /// the transparent `listeners`.
    pub fn kernel(
        bpffs_dir: PathBuf,
        listeners: &[ListenerInfo],
        map_sizes: MapSizes,
        deny_response: DenyResponse,
    ) -> anyhow::Result<Self> {
        let target = proxy_target(listeners)?;
        let mut config = AyaConfig::new(target);
        config.bpffs_dir = bpffs_dir;
        config.map_sizes = map_sizes;
        config.deny_response = deny_response;
        let dp = AyaDatapath::open(config)?;
        Ok(AgentDatapath::Kernel(Arc::new(dp)))
    }

    pub fn as_dyn(&self) -> Arc<dyn Datapath> {
        match self {
            AgentDatapath::Memory(m) => m.clone(),
            AgentDatapath::Kernel(k) => k.clone(),
        }
    }

    /// Converge endpoints (attachments, static rules, flags) to `snap`. Learned entries of the
    /// endpoints that remain are kept: after a crash the cache's snapshot may be older than the
    /// kernel's maps, and an entry the cache does not know may carry a live connection (the
    /// enforcer adopts those so they still expire).
    /// `audit_all`: `--policy-audit-mode` (an endpoint may also be in audit mode on its own).
    pub fn sync(&self, snap: &Snapshot, audit_all: bool) {
        let AgentDatapath::Kernel(dp) = self else { return };
        let endpoints: Vec<DesiredEndpoint> = snap
            .endpoints
            .iter()
            .map(|e| {
                let desired = DesiredEndpoint::new(e.id, e.endpoint.interface.clone(), &e.policy)
                    .audited(audit_all || e.endpoint.policy_audit_mode);
                // Anti-spoofing where the endpoint has an interface: its packets may only carry
                // its own addresses, so the policy and the proxy know whose they are.
                if e.endpoint.interface.is_some() { desired.owning(&e.endpoint.ips) } else { desired }
            })
            .collect();
        match dp.sync_endpoints(&endpoints) {
            Ok(report) => tracing::info!(?report, generation = snap.generation, "datapath converged"),
            Err(e) => tracing::error!(error = %e, "datapath did not converge; will retry on the next change"),
        }
    }
}

/// Where the tc program finds the proxy: the transparent listeners' addresses and ports.
fn proxy_target(listeners: &[ListenerInfo]) -> anyhow::Result<ProxyTarget> {
    let find = |proto: L4Proto, v4: bool| {
        listeners.iter().find(|l| l.proto == proto && l.transparent && l.addr.is_ipv4() == v4).map(|l| l.addr)
    };
    let udp4 = find(L4Proto::Udp, true);
    let udp6 = find(L4Proto::Udp, false);
    let tcp4 = find(L4Proto::Tcp, true);
    let tcp6 = find(L4Proto::Tcp, false);
    let udp = udp4.or(udp6).ok_or_else(|| anyhow::anyhow!("transparent mode needs a listen address"))?;
    let tcp = tcp4.or(tcp6).ok_or_else(|| anyhow::anyhow!("transparent mode needs a listen address"))?;
    let ports_agree = [udp4, udp6].iter().flatten().all(|a| a.port() == udp.port())
        && [tcp4, tcp6].iter().flatten().all(|a| a.port() == tcp.port());
    anyhow::ensure!(ports_agree, "transparent listeners must share one port per protocol (IPv4 and IPv6)");
    let v4 = |a: Option<std::net::SocketAddr>| match a.map(|a| a.ip()) {
        Some(IpAddr::V4(ip)) => Some(ip),
        _ => None,
    };
    let v6 = |a: Option<std::net::SocketAddr>| match a.map(|a| a.ip()) {
        Some(IpAddr::V6(ip)) => Some(ip),
        _ => None,
    };
    Ok(ProxyTarget { ipv4: v4(udp4), ipv6: v6(udp6), udp_port: udp.port(), tcp_port: tcp.port() })
}
