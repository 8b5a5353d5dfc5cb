//! Resolution: every policy selecting one endpoint, flattened into the [`EndpointPolicy`] the
//! proxy and the datapath enforce. Pure and deterministic: the same policies, endpoint and
//! inventory give the same result, rules in policy order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::endpoint::Endpoint;
use crate::policy::{PeerRule, PeerSpec, Policy, Subject};
use crate::resolved::{DnsRule, EndpointPolicy, Entity, FqdnRule, L3Rule, Peer, PolicyRef};

/// What the node itself looks like, for the entities that are not endpoints.
///
/// On a standalone host fqdnd has no cluster to ask: `host` is the addresses given here (the
/// agent passes the node's interface addresses; [`NodeInfo::default`] is loopback only),
/// `cluster` is the inventory's endpoint IPs plus `host`, `world` is everything outside
/// `cluster`, `all` is everything. `kube-apiserver` is empty unless given. `remote-node`,
/// `health`, `init`, `ingress`, `unmanaged` and `none` stand for nothing on a single host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub host: Vec<IpNet>,
    pub kube_apiserver: Vec<IpNet>,
}

impl Default for NodeInfo {
    fn default() -> Self {
        NodeInfo {
            host: vec![
                IpNet::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8).expect("valid /8"),
                IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            ],
            kube_apiserver: Vec::new(),
        }
    }
}

/// Where a resolved rule came from: the policy and the rule's field path (`spec.egress[0]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub policy: PolicyRef,
    pub rule: String,
}

/// An [`EndpointPolicy`] with the origin of each entry (same order as its lists), for explaining.
#[derive(Clone, Debug, Default)]
pub struct Traced {
    pub policy: EndpointPolicy,
    pub egress_default_deny_from: Option<Origin>,
    pub ingress_default_deny_from: Option<Origin>,
    pub dns_rules: Vec<Origin>,
    pub fqdn_rules: Vec<Origin>,
    pub egress_allows: Vec<Origin>,
    pub egress_denies: Vec<Origin>,
    pub ingress_allows: Vec<Origin>,
    pub ingress_denies: Vec<Origin>,
}

/// Resolve with [`NodeInfo::default`] (host = loopback).
pub fn resolve(policies: &[Policy], endpoint: &Endpoint, inventory: &[Endpoint]) -> EndpointPolicy {
    resolve_on(policies, endpoint, inventory, &NodeInfo::default())
}

/// Resolve the policy of `endpoint` from `policies`; peers selected by labels take their IPs from
/// `inventory` (which may or may not contain `endpoint`).
pub fn resolve_on(policies: &[Policy], endpoint: &Endpoint, inventory: &[Endpoint], node: &NodeInfo) -> EndpointPolicy {
    resolve_traced(policies, endpoint, inventory, node).policy
}

/// [`resolve_on`] keeping the origin of every entry.
pub fn resolve_traced(policies: &[Policy], endpoint: &Endpoint, inventory: &[Endpoint], node: &NodeInfo) -> Traced {
    let labels = endpoint.effective_labels();
    let mut ctx = Ctx { inventory, node, inventory_labels: None };
    let mut out = Traced::default();
    for policy in policies {
        let mut selected = false;
        for rule in &policy.rules {
            let Subject::Endpoints(sel) = &rule.subject else { continue };
            if !sel.matches(&labels) {
                continue;
            }
            selected = true;
            let origin = |path: &str| Origin { policy: policy.reference.clone(), rule: path.to_string() };
            if rule.egress_default_deny {
                out.policy.egress_default_deny = true;
                out.egress_default_deny_from.get_or_insert_with(|| origin(&format!("{}.egress", rule.path)));
            }
            if rule.ingress_default_deny {
                out.policy.ingress_default_deny = true;
                out.ingress_default_deny_from.get_or_insert_with(|| origin(&format!("{}.ingress", rule.path)));
            }
            for r in &rule.egress {
                let o = origin(&r.path);
                for peer in ctx.peers(r) {
                    for dns in &r.dns {
                        out.policy.dns_rules.push(DnsRule {
                            server: peer.clone(),
                            ports: dns.ports.clone(),
                            patterns: dns.patterns.clone(),
                            policy: policy.reference.clone(),
                        });
                        out.dns_rules.push(o.clone());
                    }
                    out.policy.egress_allows.push(L3Rule {
                        peer,
                        ports: r.ports.clone(),
                        policy: policy.reference.clone(),
                    });
                    out.egress_allows.push(o.clone());
                }
                for selector in &r.fqdns {
                    out.policy.fqdn_rules.push(FqdnRule {
                        selector: selector.clone(),
                        ports: r.ports.clone(),
                        policy: policy.reference.clone(),
                    });
                    out.fqdn_rules.push(o.clone());
                }
            }
            push_l3(&mut ctx, &rule.egress_deny, policy, &mut out.policy.egress_denies, &mut out.egress_denies);
            push_l3(&mut ctx, &rule.ingress, policy, &mut out.policy.ingress_allows, &mut out.ingress_allows);
            push_l3(&mut ctx, &rule.ingress_deny, policy, &mut out.policy.ingress_denies, &mut out.ingress_denies);
        }
        if selected {
            out.policy.policies.push(policy.reference.clone());
        }
    }
    out
}

fn push_l3(ctx: &mut Ctx<'_>, rules: &[PeerRule], policy: &Policy, list: &mut Vec<L3Rule>, origins: &mut Vec<Origin>) {
    for r in rules {
        for peer in ctx.peers(r) {
            list.push(L3Rule { peer, ports: r.ports.clone(), policy: policy.reference.clone() });
            origins.push(Origin { policy: policy.reference.clone(), rule: r.path.clone() });
        }
    }
}

struct Ctx<'a> {
    inventory: &'a [Endpoint],
    node: &'a NodeInfo,
    /// Effective labels of the inventory, computed on first use.
    inventory_labels: Option<Vec<std::collections::BTreeMap<String, String>>>,
}

impl Ctx<'_> {
    /// The resolved L3 peers of a rule. A rule with ports but no L3 field allows every peer;
    /// a rule with neither (`{}`) and toFQDNs-only rules have no L3 peer here.
    fn peers(&mut self, r: &PeerRule) -> Vec<Peer> {
        if !r.has_l3 {
            return if r.has_ports { vec![Peer::Any] } else { Vec::new() };
        }
        let mut out = Vec::with_capacity(r.peers.len());
        for spec in &r.peers {
            out.push(match spec {
                PeerSpec::Endpoints(sels) => {
                    let inventory = self.inventory;
                    let labels = self
                        .inventory_labels
                        .get_or_insert_with(|| inventory.iter().map(Endpoint::effective_labels).collect());
                    let mut ips = Vec::new();
                    for (ep, l) in inventory.iter().zip(labels.iter()) {
                        if sels.iter().any(|s| s.matches(l)) {
                            for ip in &ep.ips {
                                if !ips.contains(ip) {
                                    ips.push(*ip);
                                }
                            }
                        }
                    }
                    Peer::Endpoints { ips }
                }
                PeerSpec::Cidr { net, except } => Peer::Cidr { net: *net, except: except.clone() },
                PeerSpec::Entity(e) => self.entity(*e),
            });
        }
        out
    }

    fn entity(&self, entity: Entity) -> Peer {
        let v4_all = IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).expect("valid /0");
        let v6_all = IpNet::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).expect("valid /0");
        let cluster = || {
            let mut nets: Vec<IpNet> =
                self.inventory.iter().flat_map(|e| e.ips.iter().map(|ip| IpNet::from(*ip))).collect();
            nets.extend(self.node.host.iter().copied());
            nets.sort();
            nets.dedup();
            nets
        };
        let (nets, except) = match entity {
            Entity::All => (vec![v4_all, v6_all], Vec::new()),
            Entity::World => (vec![v4_all, v6_all], cluster()),
            Entity::WorldIpv4 => (vec![v4_all], cluster().into_iter().filter(|n| matches!(n, IpNet::V4(_))).collect()),
            Entity::WorldIpv6 => (vec![v6_all], cluster().into_iter().filter(|n| matches!(n, IpNet::V6(_))).collect()),
            Entity::Cluster => (cluster(), Vec::new()),
            Entity::Host => (self.node.host.clone(), Vec::new()),
            Entity::KubeApiserver => (self.node.kube_apiserver.clone(), Vec::new()),
            Entity::RemoteNode | Entity::Health | Entity::Init | Entity::Ingress | Entity::Unmanaged | Entity::None => {
                (Vec::new(), Vec::new())
            }
        };
        Peer::Entity { entity, nets, except }
    }
}
