//! Why a query or connection of one endpoint is allowed, denied or refused: the same decisions
//! the proxy and the datapath make, with the rule that made them.

use std::fmt;
use std::net::IpAddr;

use fqdn_cache::{L4Proto, normalized_name};
use serde::Serialize;

use crate::dns::RuleVerdict;
use crate::resolve::{Origin, Traced};
use crate::resolved::{Entity, L3Rule, Peer, ports_allow};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Allowed,
    Denied,
    /// DNS only: the query may reach the server, but no `rules.dns` pattern allows the name.
    Refused,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allowed => "ALLOWED",
            Verdict::Denied => "DENIED",
            Verdict::Refused => "REFUSED",
        })
    }
}

/// A verdict, the policy that decided it (`namespace/name`, or the name of a clusterwide policy;
/// none when no rule decided, e.g. no default deny), and the rule and reasoning in words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub verdict: Verdict,
    pub policy: Option<String>,
    pub reason: String,
}

impl Explanation {
    fn new(verdict: Verdict, origin: Option<&Origin>, reason: String) -> Self {
        Explanation { verdict, policy: origin.map(|o| o.policy.to_string()), reason }
    }
}

fn at(o: &Origin) -> String {
    format!("rule {} of policy {}", o.rule, o.policy)
}

fn proto_name(proto: L4Proto) -> &'static str {
    match proto {
        L4Proto::Tcp => "tcp",
        L4Proto::Udp => "udp",
        L4Proto::Any => "any",
    }
}

fn no_default_deny(t: &Traced) -> String {
    if t.policy.policies.is_empty() {
        "no policy selects this endpoint, so its egress is not restricted".to_string()
    } else {
        let names: Vec<String> = t.policy.policies.iter().map(ToString::to_string).collect();
        format!("the policies selecting this endpoint ({}) do not put its egress in default deny", names.join(", "))
    }
}

fn default_deny_reason(t: &Traced) -> String {
    match &t.egress_default_deny_from {
        Some(o) => format!("egress is default deny (from {})", at(o)),
        None => "egress is default deny".to_string(),
    }
}

fn first_match<'a>(
    rules: &'a [L3Rule],
    origins: &'a [Origin],
    f: impl Fn(&L3Rule) -> bool,
) -> Option<(&'a L3Rule, &'a Origin)> {
    rules.iter().zip(origins).find(|(r, _)| f(r))
}

/// May the endpoint open a connection to `ip:port` over `proto`? Deny rules first, then the
/// default posture, then the allow rules. IPs allowed through toFQDNs are only known once a name
/// has been resolved; see [`explain_fqdn`].
pub fn explain_connection(t: &Traced, ip: IpAddr, port: u16, proto: L4Proto) -> Explanation {
    connection(t, ip, port, proto, true)
}

fn connection(t: &Traced, ip: IpAddr, port: u16, proto: L4Proto, fqdn_hint: bool) -> Explanation {
    let dest = format!("{ip}:{port}/{}", proto_name(proto));
    let p = &t.policy;
    if let Some((_, o)) =
        first_match(&p.egress_denies, &t.egress_denies, |r| r.peer.contains(ip) && ports_allow(&r.ports, port, proto))
    {
        return Explanation::new(Verdict::Denied, Some(o), format!("{dest} is denied by egressDeny {}", at(o)));
    }
    if !p.egress_default_deny {
        return Explanation::new(Verdict::Allowed, None, format!("{dest}: {}", no_default_deny(t)));
    }
    if let Some((_, o)) =
        first_match(&p.egress_allows, &t.egress_allows, |r| r.peer.contains(ip) && ports_allow(&r.ports, port, proto))
    {
        return Explanation::new(Verdict::Allowed, Some(o), format!("{dest} is allowed by {}", at(o)));
    }
    let mut reason = format!("{}; no rule allows {dest}", default_deny_reason(t));
    if fqdn_hint && !p.fqdn_rules.is_empty() {
        reason.push_str(" (toFQDNs rules allow an IP only after a DNS answer for a matching name: see --to-name)");
    }
    Explanation::new(Verdict::Denied, t.egress_default_deny_from.as_ref(), reason)
}

/// A query for `qname` to `server:port` over `proto`: the packets must be allowed at L3/L4 first;
/// then, if `rules.dns` cover that server and port, a pattern must allow the name (else the proxy
/// refuses it); without `rules.dns` the query is not proxied and passes.
pub fn explain_dns(t: &Traced, qname: &str, server: IpAddr, port: u16, proto: L4Proto) -> Explanation {
    let conn = connection(t, server, port, proto, false);
    if conn.verdict != Verdict::Allowed {
        return Explanation {
            verdict: Verdict::Denied,
            policy: conn.policy,
            reason: format!("the query cannot reach the server: {}", conn.reason),
        };
    }
    let dest = format!("{server}:{port}/{}", proto_name(proto));
    // The proxy's own verdict: the same compiled rules, the same call.
    let qname = normalized_name(qname);
    let qname = qname.as_ref();
    match t.policy.dns.decide(server, port, proto, qname) {
        RuleVerdict::NotProxied => Explanation {
            verdict: Verdict::Allowed,
            policy: conn.policy,
            reason: format!("{}; no rules.dns cover {dest}, so the query is not proxied", conn.reason),
        },
        RuleVerdict::Allowed(i) if i as usize >= t.dns_rules.len() => {
            let o = &t.dns_wildcards[i as usize - t.dns_rules.len()];
            let covering = t
                .policy
                .dns
                .rules()
                .iter()
                .position(|r| r.server.contains(server) && ports_allow(&r.ports, port, proto));
            let lifted = covering.map_or_else(String::new, |r| format!(" (first in {})", at(&t.dns_rules[r])));
            Explanation::new(
                Verdict::Allowed,
                Some(o),
                format!(
                    "{qname} to {dest} is allowed: {} allows {dest} without L7 rules, which lifts the rules.dns \
                     there{lifted}, as in Cilium",
                    at(o)
                ),
            )
        }
        RuleVerdict::Allowed(i) => {
            let (rule, o) = (&t.policy.dns.rules()[i as usize], &t.dns_rules[i as usize]);
            let what = if rule.patterns.is_empty() {
                "[] (an empty list restricts no name)".to_string()
            } else {
                let pattern = rule.patterns.iter().find(|pat| pat.matches(qname));
                pattern.map_or_else(|| "a pattern".to_string(), ToString::to_string)
            };
            Explanation::new(
                Verdict::Allowed,
                Some(o),
                format!("{qname} to {dest} is allowed by rules.dns {what} in {}", at(o)),
            )
        }
        RuleVerdict::Refused(i) => {
            let o = &t.dns_rules[i as usize];
            Explanation::new(
                Verdict::Refused,
                Some(o),
                format!(
                    "rules.dns for {dest} (first in {}) allow no pattern matching {qname}; the proxy refuses it",
                    at(o)
                ),
            )
        }
    }
}

/// Would a connection to `port`/`proto` of an IP that `name` resolved to be allowed? That is
/// what toFQDNs decides: a selector matching the name with a matching port, or a rule allowing
/// every destination on that port, or no egress default deny. A deny rule that covers every
/// destination wins over all of them.
pub fn explain_fqdn(t: &Traced, name: &str, port: u16, proto: L4Proto) -> Explanation {
    let dest = format!("{name}:{port}/{}", proto_name(proto));
    let p = &t.policy;
    let everywhere = |peer: &Peer| matches!(peer, Peer::Any | Peer::Entity { entity: Entity::All, .. });
    if let Some((_, o)) =
        first_match(&p.egress_denies, &t.egress_denies, |r| everywhere(&r.peer) && ports_allow(&r.ports, port, proto))
    {
        return Explanation::new(Verdict::Denied, Some(o), format!("{dest} is denied by egressDeny {}", at(o)));
    }
    if !p.egress_default_deny {
        return Explanation::new(Verdict::Allowed, None, format!("{dest}: {}", no_default_deny(t)));
    }
    if let Some((r, o)) = p
        .fqdn_rules
        .iter()
        .zip(&t.fqdn_rules)
        .find(|(r, _)| r.selector.selects(name) && ports_allow(&r.ports, port, proto))
    {
        return Explanation::new(
            Verdict::Allowed,
            Some(o),
            format!(
                "{dest} is allowed by toFQDNs {} in {} once the name is resolved through the proxy",
                r.selector,
                at(o)
            ),
        );
    }
    if let Some((_, o)) =
        first_match(&p.egress_allows, &t.egress_allows, |r| everywhere(&r.peer) && ports_allow(&r.ports, port, proto))
    {
        return Explanation::new(
            Verdict::Allowed,
            Some(o),
            format!("{dest}: every destination is allowed by {}", at(o)),
        );
    }
    let mut reason = format!("{}; no toFQDNs selector allows {dest}", default_deny_reason(t));
    if p.egress_allows.iter().any(|r| matches!(r.peer, Peer::Entity { entity: Entity::World, .. })) {
        reason.push_str(" (a toEntities world rule may still allow it if the name resolves outside the cluster)");
    }
    Explanation::new(Verdict::Denied, t.egress_default_deny_from.as_ref(), reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::tests::{alpine, inventory, policies};
    use crate::resolve::{NodeInfo, resolve_traced};

    fn traced(text: &str) -> Traced {
        resolve_traced(&policies(text), &alpine(), &inventory(), &NodeInfo::default())
    }

    const HEAD: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {matchLabels: {app: alpine}}\n";

    #[test]
    fn deny_overrides_allow() {
        let t = traced(&format!(
            "{HEAD}  egress:\n  - toCIDR: [1.1.1.0/24]\n  egressDeny:\n  - toCIDR: [1.1.1.1/32]\n    toPorts: [{{ports: [{{port: '443', protocol: TCP}}]}}]\n"
        ));
        let ip = "1.1.1.1".parse().unwrap();
        let denied = explain_connection(&t, ip, 443, L4Proto::Tcp);
        assert_eq!(denied.verdict, Verdict::Denied);
        assert!(denied.reason.contains("egressDeny rule spec.egressDeny[0]"), "{}", denied.reason);
        assert_eq!(explain_connection(&t, ip, 80, L4Proto::Tcp).verdict, Verdict::Allowed);
        assert_eq!(explain_connection(&t, "1.1.1.2".parse().unwrap(), 443, L4Proto::Tcp).verdict, Verdict::Allowed);
    }

    #[test]
    fn deny_applies_without_default_deny() {
        let t =
            traced(&format!("{HEAD}  egressDeny: [{{toEntities: [world]}}]\n  enableDefaultDeny: {{egress: false}}\n"));
        assert!(!t.policy.egress_default_deny);
        assert_eq!(explain_connection(&t, "8.8.8.8".parse().unwrap(), 53, L4Proto::Udp).verdict, Verdict::Denied);
        assert_eq!(explain_connection(&t, "10.96.0.10".parse().unwrap(), 53, L4Proto::Udp).verdict, Verdict::Allowed);
    }

    #[test]
    fn dns_table() {
        let server = "10.96.0.10".parse().unwrap();
        let proxied = format!(
            "{HEAD}  egress:\n  - toEndpoints: [{{matchLabels: {{k8s:k8s-app: kube-dns, k8s:io.kubernetes.pod.namespace: kube-system}}}}]\n    toPorts: [{{ports: [{{port: '53', protocol: ANY}}], rules: {{dns: [{{matchName: api.example.com}}, {{matchPattern: '*.corp.example'}}]}}}}]\n"
        );
        let empty = format!(
            "{HEAD}  egress:\n  - toEndpoints: [{{matchLabels: {{k8s:k8s-app: kube-dns, k8s:io.kubernetes.pod.namespace: kube-system}}}}]\n    toPorts: [{{ports: [{{port: '53', protocol: UDP}}], rules: {{dns: []}}}}]\n"
        );
        let not_proxied_open = format!(
            "{HEAD}  egress: [{{toPorts: [{{ports: [{{port: '53'}}], rules: {{dns: [{{matchPattern: '*.a.com'}}]}}}}]}}]\n  enableDefaultDeny: {{egress: false}}\n"
        );
        // (case, policy, qname, port, proto, verdict)
        let cases = [
            ("matchName", proxied.as_str(), "api.example.com", 53, L4Proto::Udp, Verdict::Allowed),
            ("matchPattern over tcp", proxied.as_str(), "x.corp.example.", 53, L4Proto::Tcp, Verdict::Allowed),
            ("no pattern", proxied.as_str(), "evil.example.com", 53, L4Proto::Udp, Verdict::Refused),
            ("other port", proxied.as_str(), "api.example.com", 5353, L4Proto::Udp, Verdict::Denied),
            ("no default deny still proxies", not_proxied_open.as_str(), "b.com", 53, L4Proto::Udp, Verdict::Refused),
            ("no default deny, other port", not_proxied_open.as_str(), "b.com", 5353, L4Proto::Udp, Verdict::Allowed),
            ("rules.dns: [] allows any name", empty.as_str(), "anything.example", 53, L4Proto::Udp, Verdict::Allowed),
            (
                "rules.dns: [] is for its port only",
                empty.as_str(),
                "anything.example",
                53,
                L4Proto::Tcp,
                Verdict::Denied,
            ),
        ];
        let t = traced(&empty);
        assert!(t.policy.has_dns_rules(), "rules.dns: [] is still proxied");
        let e = explain_dns(&t, "x.example", server, 53, L4Proto::Udp);
        assert!(e.reason.contains("rules.dns [] (an empty list restricts no name)"), "{}", e.reason);
        for (name, text, qname, port, proto, want) in cases {
            let e = explain_dns(&traced(text), qname, server, port, proto);
            assert_eq!(e.verdict, want, "case {name}: {}", e.reason);
            if want != Verdict::Allowed || port == 53 {
                assert_eq!(e.policy.as_deref(), Some("default/p"), "case {name}");
            }
        }
    }

    /// `matchPattern: "*"` in rules.dns allows any name the proxy can see; the same pattern in
    /// toFQDNs holds only names of clean labels.
    #[test]
    fn match_all_allows_every_query_but_selects_clean_names_only() {
        let t = traced(&format!(
            "{HEAD}  egress:\n  - toEndpoints: [{{matchLabels: {{k8s:k8s-app: kube-dns, k8s:io.kubernetes.pod.namespace: kube-system}}}}]\n    toPorts: [{{ports: [{{port: '53', protocol: ANY}}], rules: {{dns: [{{matchPattern: '*'}}]}}}}]\n  - toFQDNs: [{{matchPattern: '*'}}]\n"
        ));
        let server = "10.96.0.10".parse().unwrap();
        for name in ["www.example.com", "*.example.com.", "a\\032b.example.", "a b.example.", "x.y.z.example"] {
            let e = explain_dns(&t, name, server, 53, L4Proto::Udp);
            assert_eq!(e.verdict, Verdict::Allowed, "{name}: {}", e.reason);
        }
        assert_eq!(explain_fqdn(&t, "www.example.com", 443, L4Proto::Tcp).verdict, Verdict::Allowed);
        for name in ["*.example.com", "a\\032b.example"] {
            assert_eq!(explain_fqdn(&t, name, 443, L4Proto::Tcp).verdict, Verdict::Denied, "{name}");
        }
    }

    /// A rules.dns entry with both fields matches either; in toFQDNs that is invalid.
    #[test]
    fn dns_entry_with_name_and_pattern_matches_either() {
        let t = traced(&format!(
            "{HEAD}  egress:\n  - toEndpoints: [{{matchLabels: {{k8s:k8s-app: kube-dns, k8s:io.kubernetes.pod.namespace: kube-system}}}}]\n    toPorts: [{{ports: [{{port: '53', protocol: ANY}}], rules: {{dns: [{{matchName: api.example.com, matchPattern: '*.corp.example'}}]}}}}]\n"
        ));
        let server = "10.96.0.10".parse().unwrap();
        for (name, want) in [
            ("api.example.com", Verdict::Allowed),
            ("x.corp.example", Verdict::Allowed),
            ("www.example.com", Verdict::Refused),
            ("corp.example", Verdict::Refused),
        ] {
            let e = explain_dns(&t, name, server, 53, L4Proto::Udp);
            assert_eq!(e.verdict, want, "{name}: {}", e.reason);
        }
        let x = explain_dns(&t, "x.corp.example", server, 53, L4Proto::Udp);
        assert!(x.reason.contains("matchPattern: \"*.corp.example.\""), "{}", x.reason);
    }

    /// Cilium's L7 docs: "If a layer 4 rule is specified in the policy, and a similar layer 4
    /// rule with layer 7 rules is also specified, then the layer 7 portions of the latter rule
    /// will have no effect." Same peer and port only.
    #[test]
    fn a_plain_allow_lifts_dns_rules_on_the_same_peer_and_port() {
        let kube =
            "  - toEndpoints: [{matchLabels: {k8s:k8s-app: kube-dns, k8s:io.kubernetes.pod.namespace: kube-system}}]\n";
        let dns = format!(
            "{kube}    toPorts: [{{ports: [{{port: '53', protocol: ANY}}], rules: {{dns: [{{matchPattern: '*.microsoft.com'}}]}}}}]\n"
        );
        let server = "10.96.0.10".parse().unwrap();
        // (case, the other rule, protocol, verdict)
        let cases = [
            ("DNS rules alone", String::new(), L4Proto::Udp, Verdict::Refused),
            (
                "L4 on the same peer and port",
                format!("{kube}    toPorts: [{{ports: [{{port: '53', protocol: UDP}}]}}]\n"),
                L4Proto::Udp,
                Verdict::Allowed,
            ),
            (
                "L4 on the same peer, other protocol",
                format!("{kube}    toPorts: [{{ports: [{{port: '53', protocol: UDP}}]}}]\n"),
                L4Proto::Tcp,
                Verdict::Refused,
            ),
            ("L3 only on the same peer", kube.to_string(), L4Proto::Tcp, Verdict::Allowed),
            (
                "L4 to every peer",
                "  - toPorts: [{ports: [{port: '53'}]}]\n".to_string(),
                L4Proto::Udp,
                Verdict::Allowed,
            ),
            (
                "L4 to another peer",
                "  - toCIDR: [10.0.0.0/24]\n    toPorts: [{ports: [{port: '53'}]}]\n".to_string(),
                L4Proto::Udp,
                Verdict::Refused,
            ),
            (
                "L4 on another port",
                format!("{kube}    toPorts: [{{ports: [{{port: '5353'}}]}}]\n"),
                L4Proto::Udp,
                Verdict::Refused,
            ),
            (
                "rules: {} is no L7 rule",
                format!("{kube}    toPorts: [{{ports: [{{port: '53'}}], rules: {{}}}}]\n"),
                L4Proto::Udp,
                Verdict::Allowed,
            ),
            (
                "L3 to every endpoint of kube-system",
                "  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system}}]\n".to_string(),
                L4Proto::Udp,
                Verdict::Allowed,
            ),
            (
                "an empty peer list lifts nothing",
                "  - toEndpoints: []\n    toPorts: [{ports: [{port: '53'}]}]\n".to_string(),
                L4Proto::Udp,
                Verdict::Refused,
            ),
        ];
        for (name, other, proto, want) in cases {
            let t = traced(&format!("{HEAD}  egress:\n{dns}{other}"));
            let e = explain_dns(&t, "www.google.com", server, 53, proto);
            assert_eq!(e.verdict, want, "case {name}: {}", e.reason);
            assert_eq!(
                explain_dns(&t, "www.microsoft.com", server, 53, proto).verdict,
                Verdict::Allowed,
                "case {name}"
            );
            if want == Verdict::Allowed {
                assert!(
                    e.reason.contains("spec.egress[1]") && e.reason.contains("lifts the rules.dns"),
                    "{}",
                    e.reason
                );
                assert!(e.reason.contains("first in rule spec.egress[0]"), "{}", e.reason);
            }
            // Still proxied: the redirect comes from the rules.dns alone.
            assert_eq!(t.policy.dns.rules().len(), 1, "case {name}");
        }
        // The same rule's own plain port: a DNS entry on UDP with a plain TCP entry beside it.
        let t = traced(&format!(
            "{HEAD}  egress:\n{kube}    toPorts:\n    - {{ports: [{{port: '53', protocol: UDP}}], rules: {{dns: [{{matchName: a.com}}]}}}}\n    - {{ports: [{{port: '53', protocol: TCP}}]}}\n"
        ));
        assert_eq!(explain_dns(&t, "b.com", server, 53, L4Proto::Udp).verdict, Verdict::Refused);
        // TCP/53 is not covered by rules.dns at all: not proxied, allowed.
        let tcp = explain_dns(&t, "b.com", server, 53, L4Proto::Tcp);
        assert_eq!(tcp.verdict, Verdict::Allowed);
        assert!(tcp.reason.contains("not proxied"), "{}", tcp.reason);
    }

    #[test]
    fn fqdn_ports() {
        let t = traced(&format!(
            "{HEAD}  egress:\n  - toFQDNs: [{{matchName: api.example.com}}]\n    toPorts: [{{ports: [{{port: '443', protocol: TCP}}]}}]\n"
        ));
        assert_eq!(explain_fqdn(&t, "API.example.com.", 443, L4Proto::Tcp).verdict, Verdict::Allowed);
        assert_eq!(explain_fqdn(&t, "api.example.com", 80, L4Proto::Tcp).verdict, Verdict::Denied);
        assert_eq!(explain_fqdn(&t, "api.example.com", 443, L4Proto::Udp).verdict, Verdict::Denied);
        assert_eq!(explain_fqdn(&t, "www.example.com", 443, L4Proto::Tcp).verdict, Verdict::Denied);
    }

    #[test]
    fn json_shape() {
        let e = Explanation { verdict: Verdict::Refused, policy: None, reason: "r".into() };
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"verdict":"REFUSED","policy":null,"reason":"r"}"#);
    }
}
