//! An endpoint's DNS rules compiled for the query path. `EndpointPolicy::dns_verdict` walks the
//! rules one by one, each with its own pattern set, and clones the deciding policy's name: fine
//! for a CLI, but an endpoint selected by 50 policies pays 50 pattern lookups per refused query.
//! Here rules with the same server and ports share one pattern set, and the verdict borrows the
//! policy. Same answers as `dns_verdict` (property-tested below).

use std::cell::RefCell;
use std::net::IpAddr;

use fqdn_cache::pattern::{NamePattern, PatternSet};
use fqdn_cache::{L4Proto, PortProto};
use policy_sync::resolved::ports_allow;
use policy_sync::{DnsRule, DnsVerdict, Peer, PolicyRef};

/// One server/ports combination and every pattern of the rules that have it.
#[derive(Debug)]
struct Group {
    server: Peer,
    ports: Vec<PortProto>,
    /// The lowest rule index in the group (the refusing rule when none matches).
    first_rule: u32,
    patterns: PatternSet,
    /// Pattern index -> rule index, non-decreasing (patterns are added in rule order).
    rule_of: Vec<u32>,
    /// Every pattern comes from one rule: a yes/no match is enough.
    single_rule: bool,
}

#[derive(Debug, Default)]
pub struct DnsMatcher {
    groups: Vec<Group>,
    policies: Vec<PolicyRef>,
}

/// The decision for one query: the deciding rule by index (see [`DnsMatcher::policy`]), so it can
/// travel with the query without cloning names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleVerdict {
    NotProxied,
    Allowed(u32),
    Refused(u32),
}

thread_local! {
    static MATCHES: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

impl DnsMatcher {
    pub fn new(rules: &[DnsRule]) -> Self {
        struct Building {
            server: Peer,
            ports: Vec<PortProto>,
            first_rule: u32,
            patterns: Vec<NamePattern>,
            rule_of: Vec<u32>,
        }
        let mut building: Vec<Building> = Vec::new();
        let mut policies = Vec::with_capacity(rules.len());
        for (i, rule) in rules.iter().enumerate() {
            let i = i as u32;
            policies.push(rule.policy.clone());
            let at = match building.iter().position(|g| g.server == rule.server && g.ports == rule.ports) {
                Some(at) => at,
                None => {
                    building.push(Building {
                        server: rule.server.clone(),
                        ports: rule.ports.clone(),
                        first_rule: i,
                        patterns: Vec::new(),
                        rule_of: Vec::new(),
                    });
                    building.len() - 1
                }
            };
            let g = &mut building[at];
            for p in rule.patterns.patterns() {
                g.patterns.push(p.clone());
                g.rule_of.push(i);
            }
        }
        let groups = building
            .into_iter()
            .map(|b| Group {
                single_rule: b.rule_of.iter().all(|&r| r == b.first_rule),
                server: b.server,
                ports: b.ports,
                first_rule: b.first_rule,
                patterns: PatternSet::new(b.patterns),
                rule_of: b.rule_of,
            })
            .collect();
        DnsMatcher { groups, policies }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Decide a query to `server:port` over `proto` for `qname` (normalized).
    pub fn decide(&self, server: IpAddr, port: u16, proto: L4Proto, qname: &str) -> RuleVerdict {
        let mut allowed: Option<u32> = None;
        let mut covering: Option<u32> = None;
        for g in &self.groups {
            if !g.server.contains(server) || !ports_allow(&g.ports, port, proto) {
                continue;
            }
            covering = Some(covering.map_or(g.first_rule, |c| c.min(g.first_rule)));
            if allowed.is_some_and(|a| a <= g.first_rule) {
                continue;
            }
            let hit = if g.single_rule {
                g.patterns.is_match(qname).then_some(g.first_rule)
            } else {
                MATCHES.with_borrow_mut(|m| {
                    g.patterns.matching_into(qname, m);
                    m.first().map(|&i| g.rule_of[i])
                })
            };
            if let Some(r) = hit {
                allowed = Some(allowed.map_or(r, |a| a.min(r)));
            }
        }
        match (allowed, covering) {
            (Some(r), _) => RuleVerdict::Allowed(r),
            (None, Some(r)) => RuleVerdict::Refused(r),
            (None, None) => RuleVerdict::NotProxied,
        }
    }

    /// The policy of rule `index` (from a [`RuleVerdict`] of this matcher).
    pub fn policy(&self, index: u32) -> &PolicyRef {
        &self.policies[index as usize]
    }

    /// The verdict in `policy_sync`'s terms.
    pub fn to_verdict(&self, v: RuleVerdict) -> DnsVerdict {
        match v {
            RuleVerdict::NotProxied => DnsVerdict::NotProxied,
            RuleVerdict::Allowed(r) => DnsVerdict::Allowed { policy: self.policy(r).clone() },
            RuleVerdict::Refused(r) => DnsVerdict::Refused { policy: self.policy(r).clone() },
        }
    }
}

#[cfg(test)]
mod tests {
    use policy_sync::EndpointPolicy;
    use proptest::prelude::*;

    use super::*;

    fn rule(server: Peer, ports: Vec<PortProto>, patterns: &[&str], policy: &str) -> DnsRule {
        DnsRule {
            server,
            ports,
            patterns: PatternSet::new(patterns.iter().map(|p| NamePattern::match_pattern(p).unwrap())),
            policy: PolicyRef { namespace: Some("default".into()), name: policy.into() },
        }
    }

    fn kube_dns() -> Peer {
        Peer::Endpoints { ips: vec!["10.96.0.10".parse().unwrap()] }
    }

    fn udp53() -> Vec<PortProto> {
        vec![PortProto { port: 53, proto: L4Proto::Udp }]
    }

    fn sample() -> EndpointPolicy {
        EndpointPolicy {
            dns_rules: vec![
                rule(kube_dns(), udp53(), &["*.microsoft.com"], "a"),
                rule(Peer::Any, vec![], &["www.google.com"], "b"),
                rule(kube_dns(), udp53(), &["login.*.com", "*.microsoft.com"], "c"),
                rule(kube_dns(), vec![PortProto { port: 53, proto: L4Proto::Tcp }], &["**.example.org"], "d"),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn same_decisions_as_dns_verdict() {
        let policy = sample();
        let m = DnsMatcher::new(&policy.dns_rules);
        let servers = ["10.96.0.10", "10.0.0.1"];
        let names = [
            "www.microsoft.com.",
            "login.live.com.",
            "www.google.com.",
            "a.b.example.org.",
            "example.org.",
            "nothing.test.",
        ];
        for server in servers {
            for proto in [L4Proto::Udp, L4Proto::Tcp] {
                for port in [53, 5353] {
                    for name in names {
                        let ip: IpAddr = server.parse().unwrap();
                        assert_eq!(
                            m.to_verdict(m.decide(ip, port, proto, name)),
                            policy.dns_verdict(ip, port, proto, name),
                            "{server}:{port}/{proto} {name}"
                        );
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn agrees_with_dns_verdict_on_random_rules(
            rules in proptest::collection::vec(
                (0usize..3, 0usize..3, proptest::collection::vec("(\\*|www|api|login)\\.(a|b|c)\\.(com|org)", 1..4)),
                0..8,
            ),
            names in proptest::collection::vec("(www|api|login|x)\\.(a|b|c)\\.(com|org)\\.", 1..6),
        ) {
            let servers = [Peer::Any, kube_dns(), Peer::Endpoints { ips: vec!["10.0.0.1".parse().unwrap()] }];
            let ports = [vec![], udp53(), vec![PortProto { port: 53, proto: L4Proto::Tcp }]];
            let dns_rules: Vec<DnsRule> = rules
                .iter()
                .enumerate()
                .map(|(i, (s, p, pats))| {
                    let pats: Vec<&str> = pats.iter().map(String::as_str).collect();
                    rule(servers[*s].clone(), ports[*p].clone(), &pats, &format!("p{i}"))
                })
                .collect();
            let policy = EndpointPolicy { dns_rules, ..Default::default() };
            let m = DnsMatcher::new(&policy.dns_rules);
            for name in &names {
                for server in ["10.96.0.10", "10.0.0.1", "10.9.9.9"] {
                    for proto in [L4Proto::Udp, L4Proto::Tcp] {
                        let ip: IpAddr = server.parse().unwrap();
                        prop_assert_eq!(
                            m.to_verdict(m.decide(ip, 53, proto, name)),
                            policy.dns_verdict(ip, 53, proto, name)
                        );
                    }
                }
            }
        }
    }
}
