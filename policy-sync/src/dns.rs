//! The one DNS verdict: an endpoint's `rules.dns`, compiled once at resolution. The proxy decides
//! every query with [`DnsRules::decide`], and `fqdnd policy explain` explains the same call.
//!
//! Rules with the same server and ports share one pattern set, so an endpoint selected by 50
//! policies pays one lookup per server group, not 50; the verdict names the deciding rule by
//! index (it travels with the query without cloning names). The deciding rule is the first rule
//! (in policy order) whose pattern allows the name; a refusal names the first rule that covers
//! the server and port.
//!
//! A plain allow of the same server and port ([`DnsWildcard`]: an L3/L4 rule without `rules`)
//! lifts the restriction, as in Cilium: a name no pattern allows is then allowed by the first
//! such wildcard. Wildcards alone proxy nothing: only `rules.dns` decide what is proxied.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;

use fqdn_cache::L4Proto;
use fqdn_cache::pattern::{NamePattern, PatternSet};

use crate::resolved::{DnsRule, DnsWildcard, PolicyRef, ports_allow};

/// One server/ports combination and every pattern of the rules that have it.
#[derive(Clone, Debug)]
struct Group {
    /// Index of a rule of the group: its server and ports stand for the group's.
    sample: u32,
    /// The lowest rule index in the group (the refusing rule when none matches).
    first_rule: u32,
    patterns: PatternSet,
    /// Pattern index -> rule index, non-decreasing (patterns are added in rule order).
    rule_of: Vec<u32>,
    /// Every pattern comes from one rule: a yes/no match is enough.
    single_rule: bool,
}

/// An endpoint's DNS rules, in policy order, and the matcher compiled from them.
#[derive(Clone, Debug, Default)]
pub struct DnsRules {
    rules: Vec<DnsRule>,
    groups: Vec<Group>,
    wildcards: Vec<DnsWildcard>,
}

/// What decided a query: a DNS rule, or a plain allow that lifted the DNS rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decider<'a> {
    Rule(&'a DnsRule),
    Wildcard(&'a DnsWildcard),
}

/// The decision for one query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleVerdict {
    /// No DNS rule covers this server/port: forward untouched and learn nothing.
    NotProxied,
    /// Rule `.0` allows the name: an index into [`DnsRules::rules`], or past them, into
    /// [`DnsRules::wildcards`] (see [`DnsRules::decider`]).
    Allowed(u32),
    /// DNS rules cover this server/port but none allows the name; rule `.0` is the first of them.
    Refused(u32),
}

/// A [`RuleVerdict`] with the deciding policy named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsVerdict {
    NotProxied,
    Allowed { policy: PolicyRef },
    Refused { policy: PolicyRef },
}

thread_local! {
    static MATCHES: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// The pattern that allows every name, for rules that restrict none.
fn match_all() -> NamePattern {
    NamePattern::match_pattern("*").expect("\"*\" is a valid pattern")
}

impl DnsRules {
    pub fn new(rules: Vec<DnsRule>) -> Self {
        struct Building {
            sample: u32,
            first_rule: u32,
            patterns: Vec<NamePattern>,
            rule_of: Vec<u32>,
        }
        let mut building: Vec<Building> = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let i = i as u32;
            let same = |b: &Building| {
                let s = &rules[b.sample as usize];
                s.server == rule.server && s.ports == rule.ports
            };
            let at = match building.iter().position(same) {
                Some(at) => at,
                None => {
                    building.push(Building { sample: i, first_rule: i, patterns: Vec::new(), rule_of: Vec::new() });
                    building.len() - 1
                }
            };
            let g = &mut building[at];
            if rule.patterns.is_empty() {
                // `rules.dns: []` restricts nothing (Cilium's proxy allows every name for it).
                g.patterns.push(match_all());
                g.rule_of.push(i);
            } else {
                g.patterns.extend(rule.patterns.iter().cloned());
                g.rule_of.extend(std::iter::repeat_n(i, rule.patterns.len()));
            }
        }
        let groups = building
            .into_iter()
            .map(|b| Group {
                single_rule: b.rule_of.iter().all(|&r| r == b.first_rule),
                sample: b.sample,
                first_rule: b.first_rule,
                patterns: PatternSet::new(b.patterns),
                rule_of: b.rule_of,
            })
            .collect();
        DnsRules { rules, groups, wildcards: Vec::new() }
    }

    /// These rules with the plain allows (in policy order) that lift them on their servers and
    /// ports.
    pub fn with_wildcards(mut self, wildcards: Vec<DnsWildcard>) -> Self {
        self.wildcards = wildcards;
        self
    }

    /// The rules, in policy order; [`RuleVerdict`] indexes into this (and past it, into
    /// [`DnsRules::wildcards`]).
    pub fn rules(&self) -> &[DnsRule] {
        &self.rules
    }

    pub fn wildcards(&self) -> &[DnsWildcard] {
        &self.wildcards
    }

    /// The rule or wildcard behind index `index` of a [`RuleVerdict`] of these rules.
    pub fn decider(&self, index: u32) -> Decider<'_> {
        let i = index as usize;
        match self.rules.get(i) {
            Some(rule) => Decider::Rule(rule),
            None => Decider::Wildcard(&self.wildcards[i - self.rules.len()]),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Decide a query to `server:port` over `proto` for `qname` (normalized: lower case, one
    /// trailing dot).
    pub fn decide(&self, server: IpAddr, port: u16, proto: L4Proto, qname: &str) -> RuleVerdict {
        let mut allowed: Option<u32> = None;
        let mut covering: Option<u32> = None;
        for g in &self.groups {
            let sample = &self.rules[g.sample as usize];
            if !sample.server.contains(server) || !ports_allow(&sample.ports, port, proto) {
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
            (None, Some(r)) => match self.wildcard(server, port, proto) {
                Some(w) => RuleVerdict::Allowed(w),
                None => RuleVerdict::Refused(r),
            },
            (None, None) => RuleVerdict::NotProxied,
        }
    }

    /// The index (past the rules) of the first wildcard lifting the rules on `server:port`.
    fn wildcard(&self, server: IpAddr, port: u16, proto: L4Proto) -> Option<u32> {
        let w = self.wildcards.iter().position(|w| w.server.contains(server) && ports_allow(&w.ports, port, proto))?;
        Some((self.rules.len() + w) as u32)
    }

    /// The policy of rule `index` (from a [`RuleVerdict`] of these rules).
    pub fn policy(&self, index: u32) -> &Arc<PolicyRef> {
        match self.decider(index) {
            Decider::Rule(r) => &r.policy,
            Decider::Wildcard(w) => &w.policy,
        }
    }

    /// [`DnsRules::decide`] with the policy named, for callers that keep the result.
    pub fn verdict(&self, server: IpAddr, port: u16, proto: L4Proto, qname: &str) -> DnsVerdict {
        match self.decide(server, port, proto, qname) {
            RuleVerdict::NotProxied => DnsVerdict::NotProxied,
            RuleVerdict::Allowed(r) => DnsVerdict::Allowed { policy: PolicyRef::clone(self.policy(r)) },
            RuleVerdict::Refused(r) => DnsVerdict::Refused { policy: PolicyRef::clone(self.policy(r)) },
        }
    }
}

#[cfg(test)]
mod tests {
    use fqdn_cache::PortProto;
    use proptest::prelude::*;

    use super::*;
    use crate::resolved::Peer;

    fn rule(server: Peer, ports: Vec<PortProto>, patterns: &[&str], policy: &str) -> DnsRule {
        DnsRule {
            server,
            ports,
            patterns: patterns.iter().map(|p| NamePattern::match_pattern(p).unwrap()).collect(),
            policy: Arc::new(PolicyRef { namespace: Some("default".into()), name: policy.into() }),
        }
    }

    /// The rules walked one by one with the plain pattern matcher: what `decide` must agree with.
    fn reference(rules: &[DnsRule], server: IpAddr, port: u16, proto: L4Proto, qname: &str) -> RuleVerdict {
        reference_with(rules, &[], server, port, proto, qname)
    }

    fn reference_with(
        rules: &[DnsRule],
        wildcards: &[DnsWildcard],
        server: IpAddr,
        port: u16,
        proto: L4Proto,
        qname: &str,
    ) -> RuleVerdict {
        let mut covering = None;
        for (i, r) in rules.iter().enumerate() {
            if !r.server.contains(server) || !ports_allow(&r.ports, port, proto) {
                continue;
            }
            if r.patterns.is_empty() || r.patterns.iter().any(|p| p.matches(qname)) {
                return RuleVerdict::Allowed(i as u32);
            }
            covering.get_or_insert(i as u32);
        }
        let Some(covering) = covering else { return RuleVerdict::NotProxied };
        for (i, w) in wildcards.iter().enumerate() {
            if w.server.contains(server) && ports_allow(&w.ports, port, proto) {
                return RuleVerdict::Allowed((rules.len() + i) as u32);
            }
        }
        RuleVerdict::Refused(covering)
    }

    fn wildcard(server: Peer, ports: Vec<PortProto>, policy: &str) -> DnsWildcard {
        DnsWildcard {
            server,
            ports,
            policy: Arc::new(PolicyRef { namespace: Some("default".into()), name: policy.into() }),
        }
    }

    fn kube_dns() -> Peer {
        Peer::Endpoints { ips: vec!["10.96.0.10".parse().unwrap()] }
    }

    fn udp53() -> Vec<PortProto> {
        vec![PortProto { port: 53, proto: L4Proto::Udp }]
    }

    #[test]
    fn decisions_table() {
        let rules = DnsRules::new(vec![
            rule(kube_dns(), udp53(), &["*.microsoft.com"], "a"),
            rule(Peer::Any, vec![], &["www.google.com"], "b"),
            rule(kube_dns(), udp53(), &["login.*.com", "*.microsoft.com"], "c"),
            rule(kube_dns(), vec![PortProto { port: 53, proto: L4Proto::Tcp }], &["**.example.org"], "d"),
        ]);
        let kube: IpAddr = "10.96.0.10".parse().unwrap();
        let other: IpAddr = "10.0.0.1".parse().unwrap();
        // (server, port, proto, name, verdict)
        let cases = [
            (kube, 53, L4Proto::Udp, "www.microsoft.com.", RuleVerdict::Allowed(0)),
            (kube, 53, L4Proto::Udp, "login.live.com.", RuleVerdict::Allowed(2)),
            (kube, 53, L4Proto::Udp, "www.google.com.", RuleVerdict::Allowed(1)),
            (kube, 53, L4Proto::Udp, "nothing.test.", RuleVerdict::Refused(0)),
            (kube, 53, L4Proto::Tcp, "a.b.example.org.", RuleVerdict::Allowed(3)),
            (kube, 53, L4Proto::Tcp, "example.org.", RuleVerdict::Refused(1)),
            (other, 53, L4Proto::Udp, "www.microsoft.com.", RuleVerdict::Refused(1)),
            (other, 5353, L4Proto::Udp, "www.google.com.", RuleVerdict::Allowed(1)),
        ];
        for (server, port, proto, name, want) in cases {
            assert_eq!(rules.decide(server, port, proto, name), want, "{server}:{port}/{proto} {name}");
            assert_eq!(rules.decide(server, port, proto, name), reference(rules.rules(), server, port, proto, name));
        }
        assert_eq!(DnsRules::default().decide(kube, 53, L4Proto::Udp, "a."), RuleVerdict::NotProxied);
    }

    /// `rules.dns: []` places no restriction (Cilium's proxy compiles an empty list to
    /// match-all): every name on that server and port is allowed, and still proxied.
    #[test]
    fn empty_rules_dns_allows_every_name() {
        let kube: IpAddr = "10.96.0.10".parse().unwrap();
        let rules = DnsRules::new(vec![
            rule(kube_dns(), udp53(), &["*.microsoft.com"], "narrow"),
            rule(kube_dns(), udp53(), &[], "empty"),
            rule(kube_dns(), vec![PortProto { port: 53, proto: L4Proto::Tcp }], &[], "tcp-empty"),
        ]);
        for (proto, name, want) in [
            (L4Proto::Udp, "www.microsoft.com.", RuleVerdict::Allowed(0)),
            (L4Proto::Udp, "www.google.com.", RuleVerdict::Allowed(1)),
            (L4Proto::Udp, "a\\032b.example.", RuleVerdict::Allowed(1)),
            (L4Proto::Tcp, "www.google.com.", RuleVerdict::Allowed(2)),
        ] {
            assert_eq!(rules.decide(kube, 53, proto, name), want, "{proto} {name}");
            assert_eq!(rules.decide(kube, 53, proto, name), reference(rules.rules(), kube, 53, proto, name));
        }
        assert_eq!(rules.decide("10.0.0.1".parse().unwrap(), 53, L4Proto::Udp, "a."), RuleVerdict::NotProxied);
        assert!(!rules.is_empty(), "the endpoint's DNS is still proxied");
    }

    /// A plain allow of the same server and port lifts rules.dns (Cilium's L7 docs): names no
    /// pattern allows are allowed there; other servers and ports keep the restriction, and the
    /// wildcard proxies nothing on its own.
    #[test]
    fn a_plain_allow_of_the_same_server_and_port_lifts_dns_rules() {
        let kube: IpAddr = "10.96.0.10".parse().unwrap();
        let other: IpAddr = "10.0.0.1".parse().unwrap();
        let tcp53 = vec![PortProto { port: 53, proto: L4Proto::Tcp }];
        let any53 = vec![PortProto { port: 53, proto: L4Proto::Any }];
        let dns = vec![
            rule(kube_dns(), any53.clone(), &["*.microsoft.com"], "dns"),
            rule(Peer::Endpoints { ips: vec![other] }, any53.clone(), &["*.microsoft.com"], "dns-other"),
        ];
        // (case, wildcards, server, proto, name, verdict)
        let cases = [
            ("no wildcard", vec![], kube, L4Proto::Udp, "www.google.com.", RuleVerdict::Refused(0)),
            (
                "same peer and port",
                vec![wildcard(kube_dns(), udp53(), "l4")],
                kube,
                L4Proto::Udp,
                "www.google.com.",
                RuleVerdict::Allowed(2),
            ),
            (
                "the pattern still decides first",
                vec![wildcard(kube_dns(), udp53(), "l4")],
                kube,
                L4Proto::Udp,
                "www.microsoft.com.",
                RuleVerdict::Allowed(0),
            ),
            (
                "other protocol",
                vec![wildcard(kube_dns(), tcp53.clone(), "l4")],
                kube,
                L4Proto::Udp,
                "www.google.com.",
                RuleVerdict::Refused(0),
            ),
            (
                "TCP only",
                vec![wildcard(kube_dns(), tcp53.clone(), "l4")],
                kube,
                L4Proto::Tcp,
                "www.google.com.",
                RuleVerdict::Allowed(2),
            ),
            (
                "other peer",
                vec![wildcard(kube_dns(), vec![], "l3")],
                other,
                L4Proto::Udp,
                "www.google.com.",
                RuleVerdict::Refused(1),
            ),
            (
                "L3-only: every port",
                vec![wildcard(kube_dns(), vec![], "l3")],
                kube,
                L4Proto::Tcp,
                "www.google.com.",
                RuleVerdict::Allowed(2),
            ),
            (
                "any peer",
                vec![wildcard(Peer::Any, vec![PortProto { port: 53, proto: L4Proto::Any }], "l4")],
                other,
                L4Proto::Udp,
                "x.",
                RuleVerdict::Allowed(2),
            ),
            (
                "port 0 is every port",
                vec![wildcard(kube_dns(), vec![PortProto::ANY], "l4")],
                kube,
                L4Proto::Udp,
                "x.",
                RuleVerdict::Allowed(2),
            ),
            (
                "other port",
                vec![wildcard(kube_dns(), vec![PortProto { port: 5353, proto: L4Proto::Udp }], "l4")],
                kube,
                L4Proto::Udp,
                "x.",
                RuleVerdict::Refused(0),
            ),
        ];
        for (name, wildcards, server, proto, qname, want) in cases {
            let rules = DnsRules::new(dns.clone()).with_wildcards(wildcards.clone());
            let got = rules.decide(server, 53, proto, qname);
            assert_eq!(got, want, "case {name}");
            assert_eq!(got, reference_with(&dns, &wildcards, server, 53, proto, qname), "case {name}");
            if let RuleVerdict::Allowed(i) = got
                && i >= 2
            {
                assert!(matches!(rules.decider(i), Decider::Wildcard(_)), "case {name}");
                assert_eq!(rules.policy(i).name, wildcards[0].policy.name, "case {name}");
            }
        }
        // Without rules.dns covering the server, a wildcard proxies nothing.
        let only = DnsRules::new(vec![]).with_wildcards(vec![wildcard(Peer::Any, vec![], "l3")]);
        assert_eq!(only.decide(kube, 53, L4Proto::Udp, "x."), RuleVerdict::NotProxied);
    }

    proptest! {
        #[test]
        fn agrees_with_the_rule_by_rule_walk(
            rules in proptest::collection::vec(
                (0usize..3, 0usize..3, proptest::collection::vec("(\\*|www|api|login)\\.(a|b|c)\\.(com|org)", 0..4)),
                0..8,
            ),
            wildcards in proptest::collection::vec((0usize..3, 0usize..3), 0..3),
            names in proptest::collection::vec("(www|api|login|x)\\.(a|b|c)\\.(com|org)\\.", 1..6),
        ) {
            let servers = [Peer::Any, kube_dns(), Peer::Endpoints { ips: vec!["10.0.0.1".parse().unwrap()] }];
            let ports = [vec![], udp53(), vec![PortProto { port: 53, proto: L4Proto::Tcp }]];
            let list: Vec<DnsRule> = rules
                .iter()
                .enumerate()
                .map(|(i, (s, p, pats))| {
                    let pats: Vec<&str> = pats.iter().map(String::as_str).collect();
                    rule(servers[*s].clone(), ports[*p].clone(), &pats, &format!("p{i}"))
                })
                .collect();
            let wildcards: Vec<DnsWildcard> = wildcards
                .iter()
                .enumerate()
                .map(|(i, (s, p))| wildcard(servers[*s].clone(), ports[*p].clone(), &format!("w{i}")))
                .collect();
            let compiled = DnsRules::new(list.clone()).with_wildcards(wildcards.clone());
            for name in &names {
                for server in ["10.96.0.10", "10.0.0.1", "10.9.9.9"] {
                    for proto in [L4Proto::Udp, L4Proto::Tcp] {
                        let ip: IpAddr = server.parse().unwrap();
                        prop_assert_eq!(
                            compiled.decide(ip, 53, proto, name),
                            reference_with(&list, &wildcards, ip, 53, proto, name)
                        );
                    }
                }
            }
        }
    }
}
