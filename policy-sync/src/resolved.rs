//! The policy of one endpoint, resolved from every policy that selects it: what the proxy and the
//! datapath enforce. Plain data; no YAML, no sockets.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use fqdn_cache::pattern::NamePattern;
use fqdn_cache::{L4Proto, PortProto};
use ipnet::IpNet;

use crate::dns::DnsRules;
use serde::Serialize;

/// Which policy a rule came from. `namespace` is `None` for a CiliumClusterwideNetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PolicyRef {
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

/// Cilium entities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    World,
    Cluster,
    Host,
    KubeApiserver,
    All,
    WorldIpv4,
    WorldIpv6,
    RemoteNode,
    Health,
    Init,
    Ingress,
    Unmanaged,
    None,
}

impl Entity {
    /// Every entity Cilium accepts in `toEntities` / `fromEntities`.
    pub const KNOWN: [Entity; 13] = [
        Entity::All,
        Entity::World,
        Entity::WorldIpv4,
        Entity::WorldIpv6,
        Entity::Cluster,
        Entity::Host,
        Entity::RemoteNode,
        Entity::KubeApiserver,
        Entity::Health,
        Entity::Init,
        Entity::Ingress,
        Entity::Unmanaged,
        Entity::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Entity::World => "world",
            Entity::Cluster => "cluster",
            Entity::Host => "host",
            Entity::KubeApiserver => "kube-apiserver",
            Entity::All => "all",
            Entity::WorldIpv4 => "world-ipv4",
            Entity::WorldIpv6 => "world-ipv6",
            Entity::RemoteNode => "remote-node",
            Entity::Health => "health",
            Entity::Init => "init",
            Entity::Ingress => "ingress",
            Entity::Unmanaged => "unmanaged",
            Entity::None => "none",
        }
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Entity {
    type Err = String;

    /// Cilium compares entity names exactly (the CRD enum is case-sensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Entity::KNOWN.into_iter().find(|e| e.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = Entity::KNOWN.iter().map(|e| e.as_str()).collect();
            format!("unsupported entity: {s} (known: {})", known.join(", "))
        })
    }
}

/// The L3 side of a rule, resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Peer {
    /// No L3 restriction: a rule with only `toPorts`.
    Any,
    /// Endpoints chosen by a selector; their IPs from the endpoint inventory at resolution time.
    Endpoints { ips: Vec<IpAddr> },
    /// `toCIDR` / `toCIDRSet`.
    Cidr { net: IpNet, except: Vec<IpNet> },
    /// `toEntities`, with the IP ranges it stands for on this node (`world` is "anything not
    /// otherwise known", so it carries the known ranges it excludes).
    Entity { entity: Entity, nets: Vec<IpNet>, except: Vec<IpNet> },
}

impl Peer {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match self {
            Peer::Any => true,
            Peer::Endpoints { ips } => ips.contains(&ip),
            Peer::Cidr { net, except } => net.contains(&ip) && !except.iter().any(|e| e.contains(&ip)),
            Peer::Entity { nets, except, .. } => {
                nets.iter().any(|n| n.contains(&ip)) && !except.iter().any(|e| e.contains(&ip))
            }
        }
    }
}

/// Does a port list (empty = every port and protocol) allow `port`/`proto`?
pub fn ports_allow(ports: &[PortProto], port: u16, proto: L4Proto) -> bool {
    ports.is_empty()
        || ports.iter().any(|p| {
            (p.port == 0 || p.port == port) && (p.proto == L4Proto::Any || proto == L4Proto::Any || p.proto == proto)
        })
}

/// `toPorts[].rules.dns` for DNS servers matching `server`, on `ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsRule {
    pub server: Peer,
    pub ports: Vec<PortProto>,
    /// Empty for `rules.dns: []`, which restricts no name (the queries are still proxied).
    pub patterns: Vec<NamePattern>,
    /// Shared: every DNS flow names it.
    pub policy: Arc<PolicyRef>,
}

/// A plain allow (no L7 rules) of `server` on `ports` (empty = every port). Where `rules.dns`
/// of other rules cover the same server and port, it lifts their restriction, as Cilium's L7
/// docs say: "If a layer 4 rule is specified in the policy, and a similar layer 4 rule with
/// layer 7 rules is also specified, then the layer 7 portions of the latter rule will have no
/// effect." The queries are still proxied and their answers learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsWildcard {
    pub server: Peer,
    pub ports: Vec<PortProto>,
    pub policy: Arc<PolicyRef>,
}

/// One `toFQDNs` selector with the ports of its rule (empty = every port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FqdnRule {
    pub selector: NamePattern,
    pub ports: Vec<PortProto>,
    pub policy: PolicyRef,
}

/// An L3/L4 allow (or deny) other than toFQDNs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct L3Rule {
    pub peer: Peer,
    pub ports: Vec<PortProto>,
    pub policy: PolicyRef,
}

/// Everything enforced for one endpoint.
#[derive(Clone, Debug, Default)]
pub struct EndpointPolicy {
    pub egress_default_deny: bool,
    pub ingress_default_deny: bool,
    /// `rules.dns`, compiled: the proxy's verdict for every query.
    pub dns: DnsRules,
    pub fqdn_rules: Vec<FqdnRule>,
    pub egress_allows: Vec<L3Rule>,
    pub egress_denies: Vec<L3Rule>,
    pub ingress_allows: Vec<L3Rule>,
    pub ingress_denies: Vec<L3Rule>,
    /// The policies that select this endpoint.
    pub policies: Vec<PolicyRef>,
    /// The policies that put it in egress (ingress) default deny: who decided a drop no rule
    /// names, for drop and audit flows.
    pub egress_default_deny_by: Vec<PolicyRef>,
    pub ingress_default_deny_by: Vec<PolicyRef>,
}

impl EndpointPolicy {
    /// Does any DNS rule apply to this endpoint at all (so its DNS traffic must be proxied)?
    pub fn has_dns_rules(&self) -> bool {
        !self.dns.is_empty()
    }
}
