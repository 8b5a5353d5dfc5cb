//! The node-side interface of a local pod, found in the kernel rather than configured: what the
//! Kubernetes source needs to attach the datapath to a pod it learned from the API server.
//!
//! - Routed CNIs (Calico, kindnet, Cilium's own veths): the route to the pod IP leaves through
//!   the pod's veth (a per-pod /32 or /128 route, or a connected prefix on that veth).
//! - Bridge CNIs (the `bridge` plugin, flannel's `cni0`): the route leaves through the bridge; the
//!   pod's MAC comes from the bridge's neighbour entry for the pod IP, and the bridge port from
//!   the bridge's forwarding database (FDB) entry for that MAC. A pod that has not sent anything
//!   yet has neither: a datagram to its discard port makes the kernel resolve it (ARP / NDP), and
//!   the next lookup finds it.
//!
//! Spoken over rtnetlink (the `rtnetlink` crate), in the agent's network namespace (the node's).

use std::net::{IpAddr, SocketAddr};

use futures::TryStreamExt as _;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{RouteAttribute, RouteType};
use policy_sync::source::BoxFuture;
use policy_sync::source::kubernetes::InterfaceLookup;
use rtnetlink::{Handle, RouteMessageBuilder};

/// Why an interface was not found (logged at debug: most are "not set up yet").
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("{ip}: no route")]
    NoRoute { ip: IpAddr },
    #[error("{ip}: routed through a gateway, not to a local pod")]
    ViaGateway { ip: IpAddr },
    #[error("{ip}: a {kind:?} route, not a pod's")]
    NotUnicast { ip: IpAddr, kind: RouteType },
    #[error("interface {index} is gone")]
    NoLink { index: u32 },
    #[error("{ip}: bridge {bridge} has no neighbour entry yet")]
    NoNeighbour { ip: IpAddr, bridge: String },
    #[error("{ip}: bridge {bridge} has no FDB entry for {mac}")]
    NoFdbEntry { ip: IpAddr, bridge: String, mac: String },
}

/// rtnetlink-backed [`InterfaceLookup`].
#[derive(Clone)]
pub struct NetlinkInterfaces {
    handle: Handle,
}

impl NetlinkInterfaces {
    /// Open a netlink connection in the calling thread's network namespace; its task runs on the
    /// current tokio runtime.
    pub fn new() -> std::io::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(NetlinkInterfaces { handle })
    }

    /// The node-side interface of the pod that owns `ip`.
    pub async fn lookup(&self, ip: IpAddr) -> Result<String, LookupError> {
        let route = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(ip, if ip.is_ipv4() { 32 } else { 128 })
            .map_err(|_| LookupError::NoRoute { ip })?
            .build();
        let mut routes = self.handle.route().get(route).execute();
        let route = match routes.try_next().await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(LookupError::NoRoute { ip }),
            // ENETUNREACH and friends: no route at all.
            Err(rtnetlink::Error::NetlinkError(_)) => return Err(LookupError::NoRoute { ip }),
            Err(e) => return Err(e.into()),
        };
        if route.header.kind != RouteType::Unicast {
            return Err(LookupError::NotUnicast { ip, kind: route.header.kind });
        }
        if route.attributes.iter().any(|a| matches!(a, RouteAttribute::Gateway(_) | RouteAttribute::Via(_))) {
            return Err(LookupError::ViaGateway { ip });
        }
        let oif = route
            .attributes
            .iter()
            .find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None })
            .ok_or(LookupError::NoRoute { ip })?;
        let (name, kind) = self.link(oif).await?;
        if kind != Some(InfoKind::Bridge) {
            return Ok(name);
        }
        let Some(mac) = self.neighbour_mac(oif, ip).await? else {
            provoke_resolution(ip);
            return Err(LookupError::NoNeighbour { ip, bridge: name });
        };
        match self.bridge_port(oif, &mac).await? {
            Some(port) => Ok(self.link(port).await?.0),
            None => Err(LookupError::NoFdbEntry { ip, bridge: name, mac: format_mac(&mac) }),
        }
    }

    async fn link(&self, index: u32) -> Result<(String, Option<InfoKind>), LookupError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let link = match links.try_next().await {
            Ok(Some(l)) => l,
            Ok(None) | Err(rtnetlink::Error::NetlinkError(_)) => return Err(LookupError::NoLink { index }),
            Err(e) => return Err(e.into()),
        };
        let mut name = None;
        let mut kind = None;
        for a in link.attributes {
            match a {
                LinkAttribute::IfName(n) => name = Some(n),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            kind = Some(k);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok((name.ok_or(LookupError::NoLink { index })?, kind))
    }

    /// The MAC of `ip` in the neighbour table of `bridge`, if resolved (or being confirmed).
    async fn neighbour_mac(&self, bridge: u32, ip: IpAddr) -> Result<Option<Vec<u8>>, LookupError> {
        let family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        let mut neighbours = self.handle.neighbours().get().set_address_family(family).execute();
        while let Some(n) = neighbours.try_next().await? {
            if n.header.ifindex != bridge || !usable(&n) {
                continue;
            }
            let dst = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
                _ => None,
            });
            if dst != Some(ip) {
                continue;
            }
            if let Some(mac) = lladdr(&n) {
                return Ok(Some(mac));
            }
        }
        Ok(None)
    }

    /// The port of `bridge` whose FDB entry holds `mac` (learned from the pod's frames).
    async fn bridge_port(&self, bridge: u32, mac: &[u8]) -> Result<Option<u32>, LookupError> {
        let mut fdb = self.handle.neighbours().get().set_address_family(AddressFamily::Bridge).execute();
        while let Some(n) = fdb.try_next().await? {
            let master = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Controller(m) => Some(*m),
                _ => None,
            });
            if n.header.ifindex == bridge || master != Some(bridge) {
                continue;
            }
            if lladdr(&n).as_deref() == Some(mac) {
                return Ok(Some(n.header.ifindex));
            }
        }
        Ok(None)
    }
}

impl InterfaceLookup for NetlinkInterfaces {
    fn interface_of<'a>(&'a self, ips: &'a [IpAddr]) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            for ip in ips {
                match self.lookup(*ip).await {
                    Ok(name) => return Some(name),
                    Err(e) => tracing::debug!(error = %e, "pod interface lookup"),
                }
            }
            None
        })
    }
}

fn usable(n: &NeighbourMessage) -> bool {
    !matches!(n.header.state, NeighbourState::Failed | NeighbourState::Incomplete | NeighbourState::None)
}

fn lladdr(n: &NeighbourMessage) -> Option<Vec<u8>> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(mac) if mac.len() == 6 => Some(mac.clone()),
        _ => None,
    })
}

fn format_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// One empty datagram to the discard port: the kernel resolves the pod's MAC to send it, and
/// the pod's answer teaches the bridge its port. Nothing listens there; nothing is read back.
fn provoke_resolution(ip: IpAddr) {
    let bind: SocketAddr =
        if ip.is_ipv4() { "0.0.0.0:0".parse().expect("literal") } else { "[::]:0".parse().expect("literal") };
    if let Ok(sock) = std::net::UdpSocket::bind(bind) {
        let _ = sock.send_to(&[], SocketAddr::new(ip, 9));
    }
}
