//! From policy to map entries: what an [`EndpointPolicy`] and learned [`AllowKey`]s mean as keys
//! of the allow, deny and redirect tries. Pure functions; the aya datapath writes the result.
//!
//! Shape of a key: endpoint, protocol, port, prefix. The program looks up (proto, port), then
//! (proto, any port), then (any proto, any port), so "any protocol on port p" is written as a TCP
//! and a UDP entry. `except` blocks are subtracted here into plain prefixes, so the tries only
//! ever say "allowed" (or "denied", "redirected") and the longest match never hides another rule.

use std::collections::BTreeSet;
use std::net::IpAddr;

use fqdn_cache::{AllowKey, EndpointId, L4Proto, PortProto};
use ipnet::IpNet;
use policy_sync::resolved::{EndpointPolicy, Peer};

/// The DNS port, for DNS rules written without one.
const DNS_PORT: u16 = 53;

/// One trie entry. `proto` is [`L4Proto::Any`] only with `port == 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    pub endpoint: EndpointId,
    pub proto: L4Proto,
    pub port: u16,
    pub net: IpNet,
}

impl std::fmt::Display for RuleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{} {}", self.endpoint, self.proto, self.port, self.net)
    }
}

/// Which of the endpoint's traffic the program looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointFlags {
    /// Egress default deny: packets need an allow entry (or are replies to inbound connections).
    pub default_deny: bool,
    /// DNS rules exist: packets matching a redirect entry go to the proxy.
    pub redirect_dns: bool,
    /// Egress deny rules exist: the deny trie is consulted first.
    pub has_deny: bool,
    /// Ingress default deny: new connections towards the endpoint need an ingress allow entry.
    pub ingress_default_deny: bool,
    /// Ingress deny rules exist: the ingress deny trie is consulted for new inbound connections.
    pub has_ingress_deny: bool,
    /// Packets whose source is not one of the endpoint's addresses ([`StaticRules::source`]) are
    /// dropped (anti-spoofing).
    pub check_source: bool,
    /// Audit mode: what policy would drop passes, and is reported as audited.
    pub audit: bool,
}

impl EndpointFlags {
    pub fn from_policy(policy: &EndpointPolicy) -> Self {
        EndpointFlags {
            default_deny: policy.egress_default_deny,
            redirect_dns: policy.has_dns_rules(),
            has_deny: !policy.egress_denies.is_empty(),
            ingress_default_deny: policy.ingress_default_deny,
            has_ingress_deny: !policy.ingress_denies.is_empty(),
            check_source: false,
            audit: false,
        }
    }
}

/// The static (policy-derived, not learned) entries of one endpoint. Ingress keys hold the
/// peer's prefix (the source of what the endpoint receives) and the endpoint's own port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaticRules {
    pub allow: BTreeSet<RuleKey>,
    pub deny: BTreeSet<RuleKey>,
    pub redirect: BTreeSet<RuleKey>,
    pub ingress_allow: BTreeSet<RuleKey>,
    pub ingress_deny: BTreeSet<RuleKey>,
    /// The endpoint's own addresses (any protocol, any port, host prefixes): the sources its
    /// packets may carry when [`EndpointFlags::check_source`] is on.
    pub source: BTreeSet<RuleKey>,
}

impl StaticRules {
    /// The entries of a trie without owner bits.
    pub(crate) fn plain(&self, trie: crate::tries::Trie) -> &BTreeSet<RuleKey> {
        use crate::tries::Trie;
        match trie {
            Trie::Deny => &self.deny,
            Trie::Redirect => &self.redirect,
            Trie::IngressAllow => &self.ingress_allow,
            Trie::IngressDeny => &self.ingress_deny,
            Trie::Source => &self.source,
            Trie::Allow => &self.allow,
        }
    }

    /// Entries for `endpoint` under `policy`. `toFQDNs` rules add nothing here: their IPs arrive as
    /// learned [`AllowKey`]s. DNS rules produce redirect entries for their servers and ports.
    pub fn from_policy(endpoint: EndpointId, policy: &EndpointPolicy) -> Self {
        let mut out = StaticRules::default();
        for rule in &policy.egress_allows {
            insert_peer(&mut out.allow, endpoint, &rule.peer, &rule.ports);
        }
        for rule in &policy.egress_denies {
            insert_peer(&mut out.deny, endpoint, &rule.peer, &rule.ports);
        }
        for rule in &policy.ingress_allows {
            insert_peer(&mut out.ingress_allow, endpoint, &rule.peer, &rule.ports);
        }
        for rule in &policy.ingress_denies {
            insert_peer(&mut out.ingress_deny, endpoint, &rule.peer, &rule.ports);
        }
        for rule in policy.dns.rules() {
            let ports = dns_ports(&rule.ports);
            insert_peer(&mut out.redirect, endpoint, &rule.server, &ports);
        }
        out
    }
}

/// The source entries of an endpoint that owns `ips`.
pub fn source_rules(endpoint: EndpointId, ips: &[IpAddr]) -> BTreeSet<RuleKey> {
    ips.iter().map(|ip| RuleKey { endpoint, proto: L4Proto::Any, port: 0, net: IpNet::from(*ip) }).collect()
}

/// DNS rules redirect exact ports only (the program does one redirect lookup per packet); a rule
/// without a port means the DNS port.
fn dns_ports(ports: &[PortProto]) -> Vec<PortProto> {
    let with_port: Vec<PortProto> = ports.iter().filter(|p| p.port != 0).copied().collect();
    if with_port.is_empty() { vec![PortProto { port: DNS_PORT, proto: L4Proto::Any }] } else { with_port }
}

fn insert_peer(out: &mut BTreeSet<RuleKey>, endpoint: EndpointId, peer: &Peer, ports: &[PortProto]) {
    let nets = peer_nets(peer);
    for port in expand_ports(ports) {
        for net in &nets {
            out.insert(RuleKey { endpoint, proto: port.proto, port: port.port, net: *net });
        }
    }
}

/// The prefixes a peer stands for, `except` blocks subtracted.
pub fn peer_nets(peer: &Peer) -> Vec<IpNet> {
    match peer {
        Peer::Any => vec!["0.0.0.0/0".parse().expect("literal"), "::/0".parse().expect("literal")],
        Peer::Endpoints { ips } => ips.iter().map(|ip| IpNet::from(*ip)).collect(),
        Peer::Cidr { net, except } => subtract(*net, except),
        Peer::Entity { nets, except, .. } => nets.iter().flat_map(|n| subtract(*n, except)).collect(),
    }
}

/// Port rules as the program looks them up: empty = everything; "any protocol" with a port
/// becomes TCP and UDP.
pub fn expand_ports(ports: &[PortProto]) -> Vec<PortProto> {
    if ports.is_empty() {
        return vec![PortProto::ANY];
    }
    let mut out = Vec::with_capacity(ports.len() * 2);
    for p in ports {
        match (p.port, p.proto) {
            (0, proto) => out.push(PortProto { port: 0, proto }),
            (port, L4Proto::Any) => {
                out.push(PortProto { port, proto: L4Proto::Tcp });
                out.push(PortProto { port, proto: L4Proto::Udp });
            }
            (port, proto) => out.push(PortProto { port, proto }),
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The entries of one learned allow key (an exact address).
pub fn learned_rules(key: &AllowKey) -> Vec<RuleKey> {
    expand_ports(&[key.port])
        .into_iter()
        .map(|p| RuleKey { endpoint: key.endpoint, proto: p.proto, port: p.port, net: IpNet::from(key.ip) })
        .collect()
}

/// `net` minus every `except` (of the same family), as disjoint prefixes.
pub fn subtract(net: IpNet, except: &[IpNet]) -> Vec<IpNet> {
    let mut parts = vec![net.trunc()];
    for e in except {
        let e = e.trunc();
        let mut next = Vec::with_capacity(parts.len() + 8);
        for part in parts {
            if !same_family(&part, &e) {
                next.push(part);
            } else if e.contains(&part) {
                // removed entirely
            } else if part.contains(&e) {
                split_around(part, e, &mut next);
            } else {
                next.push(part);
            }
        }
        parts = next;
    }
    parts
}

fn same_family(a: &IpNet, b: &IpNet) -> bool {
    matches!((a, b), (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_)))
}

/// Halve `part` down to `hole`, keeping each half that does not contain it.
fn split_around(mut part: IpNet, hole: IpNet, out: &mut Vec<IpNet>) {
    while part.prefix_len() < hole.prefix_len() {
        let mut halves = part.subnets(part.prefix_len() + 1).expect("longer prefix is valid");
        let (a, b) = (halves.next().expect("two halves"), halves.next().expect("two halves"));
        if a.contains(&hole) {
            out.push(b);
            part = a;
        } else {
            out.push(a);
            part = b;
        }
    }
}

/// Does a set of prefixes contain `ip`? (Used by tests and diagnostics.)
pub fn nets_contain(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sync::resolved::{L3Rule, PolicyRef};
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn subtract_cases() {
        for (base, except, want) in [
            ("10.0.0.0/8", vec![], vec!["10.0.0.0/8"]),
            ("10.0.0.0/8", vec!["10.0.0.0/8"], vec![]),
            ("10.0.0.0/8", vec!["0.0.0.0/0"], vec![]),
            ("10.0.0.0/8", vec!["192.168.0.0/16"], vec!["10.0.0.0/8"]),
            ("10.0.0.0/8", vec!["fd00::/8"], vec!["10.0.0.0/8"]),
            ("10.0.0.0/30", vec!["10.0.0.1/32"], vec!["10.0.0.2/31", "10.0.0.0/32"]),
            ("0.0.0.0/0", vec!["128.0.0.0/1"], vec!["0.0.0.0/1"]),
            ("10.0.0.0/24", vec!["10.0.0.0/25", "10.0.0.128/26"], vec!["10.0.0.192/26"]),
        ] {
            let except: Vec<IpNet> = except.into_iter().map(net).collect();
            let mut got = subtract(net(base), &except);
            got.sort();
            let mut want: Vec<IpNet> = want.into_iter().map(net).collect();
            want.sort();
            assert_eq!(got, want, "{base} except {except:?}");
        }
    }

    #[test]
    fn port_expansion_cases() {
        let tcp = |port| PortProto { port, proto: L4Proto::Tcp };
        let udp = |port| PortProto { port, proto: L4Proto::Udp };
        let any = |port| PortProto { port, proto: L4Proto::Any };
        for (input, want) in [
            (vec![], vec![any(0)]),
            (vec![any(0)], vec![any(0)]),
            (vec![tcp(0)], vec![tcp(0)]),
            (vec![any(53)], vec![tcp(53), udp(53)]),
            (vec![tcp(443), any(443)], vec![tcp(443), udp(443)]),
            (vec![udp(53), tcp(80)], vec![tcp(80), udp(53)]),
        ] {
            let mut want = want;
            want.sort();
            assert_eq!(expand_ports(&input), want, "{input:?}");
        }
    }

    #[test]
    fn policy_to_rules() {
        let policy_ref = PolicyRef { namespace: Some("default".into()), name: "p".into() };
        let policy = EndpointPolicy {
            egress_default_deny: true,
            egress_allows: vec![
                L3Rule {
                    peer: Peer::Cidr { net: net("192.0.2.0/24"), except: vec![net("192.0.2.128/25")] },
                    ports: vec![PortProto { port: 443, proto: L4Proto::Tcp }],
                    policy: policy_ref.clone(),
                },
                L3Rule {
                    peer: Peer::Endpoints { ips: vec!["10.0.0.7".parse().unwrap()] },
                    ports: vec![],
                    policy: policy_ref.clone(),
                },
            ],
            egress_denies: vec![L3Rule {
                peer: Peer::Cidr { net: net("198.51.100.0/24"), except: vec![] },
                ports: vec![],
                policy: policy_ref.clone(),
            }],
            ..Default::default()
        };
        let ep = EndpointId(3);
        let rules = StaticRules::from_policy(ep, &policy);
        let want_allow: BTreeSet<RuleKey> = [
            RuleKey { endpoint: ep, proto: L4Proto::Tcp, port: 443, net: net("192.0.2.0/25") },
            RuleKey { endpoint: ep, proto: L4Proto::Any, port: 0, net: net("10.0.0.7/32") },
        ]
        .into();
        assert_eq!(rules.allow, want_allow);
        assert_eq!(rules.deny.len(), 1);
        assert!(rules.redirect.is_empty());
        let flags = EndpointFlags::from_policy(&policy);
        assert_eq!(flags, EndpointFlags { default_deny: true, has_deny: true, ..Default::default() });
    }

    #[test]
    fn learned_key_expands_any_port() {
        let key = AllowKey {
            endpoint: EndpointId(1),
            ip: "192.0.2.1".parse().unwrap(),
            port: PortProto { port: 443, proto: L4Proto::Any },
        };
        let rules = learned_rules(&key);
        assert_eq!(rules.len(), 2);
        assert!(rules.iter().all(|r| r.net == net("192.0.2.1/32") && r.port == 443));
    }

    fn v4net() -> impl Strategy<Value = IpNet> {
        (any::<u32>(), 0u8..=32).prop_map(|(a, p)| IpNet::V4(ipnet::Ipv4Net::new(a.into(), p).unwrap().trunc()))
    }

    proptest! {
        #[test]
        fn subtract_is_exact(base in v4net(), except in prop::collection::vec(v4net(), 0..4), probes in prop::collection::vec(any::<u32>(), 32)) {
            let parts = subtract(base, &except);
            // Disjoint parts.
            for (i, a) in parts.iter().enumerate() {
                for b in &parts[i + 1..] {
                    prop_assert!(!a.contains(b) && !b.contains(a), "{a} overlaps {b}");
                }
            }
            // Probe the edges of every net involved as well as random addresses.
            let mut ips: Vec<IpAddr> = probes.into_iter().map(|a| IpAddr::V4(a.into())).collect();
            for n in std::iter::once(&base).chain(&except).chain(&parts) {
                ips.push(n.network());
                ips.push(n.broadcast());
            }
            for ip in ips {
                let want = base.contains(&ip) && !except.iter().any(|e| e.contains(&ip));
                prop_assert_eq!(nets_contain(&parts, ip), want, "{}", ip);
            }
        }
    }
}
