//! Resolution: every policy selecting one endpoint, flattened into the [`EndpointPolicy`] the
//! proxy and the datapath enforce. Pure and deterministic: the same policies, endpoint and
//! inventory give the same result, rules in policy order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;

use crate::dns::DnsRules;
use crate::endpoint::Endpoint;
use crate::policy::{PeerRule, PeerSpec, Policy, Subject};
use crate::resolved::{DnsRule, DnsWildcard, EndpointPolicy, Entity, FqdnRule, L3Rule, Peer, PolicyRef};
use crate::selector::Selector;

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
    /// The origin of each of `policy.dns.wildcards()`.
    pub dns_wildcards: Vec<Origin>,
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
    Resolver::new(policies, inventory, node).walk(&endpoint.effective_labels(), false).policy
}

/// [`resolve_on`] keeping the origin of every entry.
pub fn resolve_traced(policies: &[Policy], endpoint: &Endpoint, inventory: &[Endpoint], node: &NodeInfo) -> Traced {
    Resolver::new(policies, inventory, node).walk(&endpoint.effective_labels(), true)
}

type Labels = BTreeMap<String, String>;

/// Resolves many endpoints against one set of policies and one inventory, sharing the work
/// between them: what an endpoint gets depends only on its labels (namespace included), so
/// endpoints with the same labels share one resolved policy; each rule's peers (a `toEndpoints`
/// selector matched against the whole inventory) are found once, not once per endpoint; and each
/// endpoint looks only at the policies whose subject selector could select it (an index on one
/// `key: value` every match needs).
pub struct Resolver<'a> {
    policies: &'a [Policy],
    inventory: &'a [Endpoint],
    node: &'a NodeInfo,
    /// The inventory's distinct label sets, and each endpoint's one (by index).
    groups: Vec<Labels>,
    group_of: Vec<usize>,
    /// The IPs a `toEndpoints` selector list selects, found once per distinct list.
    selected: HashMap<Vec<Selector>, Vec<IpAddr>>,
    /// The peers of each rule, by the rule's address in `policies` (borrowed for `'a`).
    peers: HashMap<usize, Vec<Peer>>,
    entities: HashMap<Entity, Peer>,
    index: SubjectIndex,
    done: HashMap<Labels, Arc<EndpointPolicy>>,
    /// Look at every rule instead of the index's candidates (the reference in tests).
    #[cfg(test)]
    scan_all: bool,
}

/// (policy, rule) pairs by one `key: value` their subject selector requires.
#[derive(Default)]
struct SubjectIndex {
    by_label: HashMap<String, HashMap<String, Vec<(u32, u32)>>>,
    /// Rules whose selector requires no single value: looked at for every endpoint.
    always: Vec<(u32, u32)>,
    /// Every (policy, rule), for checking the index against a plain scan.
    #[cfg(test)]
    all: Vec<(u32, u32)>,
}

impl SubjectIndex {
    fn new(policies: &[Policy]) -> Self {
        let mut index = SubjectIndex::default();
        for (p, policy) in policies.iter().enumerate() {
            for (r, rule) in policy.rules.iter().enumerate() {
                let Subject::Endpoints(sel) = &rule.subject else { continue };
                let at = (p as u32, r as u32);
                #[cfg(test)]
                index.all.push(at);
                match sel.required_label() {
                    Some((k, v)) => {
                        index.by_label.entry(k.to_string()).or_default().entry(v.to_string()).or_default().push(at)
                    }
                    None => index.always.push(at),
                }
            }
        }
        index
    }

    /// The (policy, rule) pairs that may select an endpoint with `labels`, in policy order.
    fn candidates(&self, labels: &Labels) -> Vec<(u32, u32)> {
        let mut out = self.always.clone();
        for (k, v) in labels {
            if let Some(rules) = self.by_label.get(k.as_str()).and_then(|values| values.get(v.as_str())) {
                out.extend_from_slice(rules);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

impl<'a> Resolver<'a> {
    pub fn new(policies: &'a [Policy], inventory: &'a [Endpoint], node: &'a NodeInfo) -> Self {
        let mut groups: Vec<Labels> = Vec::new();
        let mut known: HashMap<Labels, usize> = HashMap::new();
        let group_of = inventory
            .iter()
            .map(|e| {
                let labels = e.effective_labels();
                *known.entry(labels.clone()).or_insert_with(|| {
                    groups.push(labels);
                    groups.len() - 1
                })
            })
            .collect();
        Resolver {
            policies,
            inventory,
            node,
            groups,
            group_of,
            selected: HashMap::new(),
            peers: HashMap::new(),
            entities: HashMap::new(),
            index: SubjectIndex::new(policies),
            done: HashMap::new(),
            #[cfg(test)]
            scan_all: false,
        }
    }

    /// The policy of `endpoint`, shared with every endpoint of the same labels.
    pub fn resolve(&mut self, endpoint: &Endpoint) -> Arc<EndpointPolicy> {
        let labels = endpoint.effective_labels();
        if let Some(p) = self.done.get(&labels) {
            return p.clone();
        }
        let policy = Arc::new(self.walk(&labels, false).policy);
        self.done.insert(labels, policy.clone());
        policy
    }

    /// Every policy selecting an endpoint with `labels`, flattened; origins kept when `trace`.
    fn walk(&mut self, labels: &Labels, trace: bool) -> Traced {
        let mut out = Traced::default();
        let mut dns_rules = Vec::new();
        let mut wildcards = Vec::new();
        let mut last_selected = None;
        #[cfg(test)]
        let candidates = if self.scan_all { self.index.all.clone() } else { self.index.candidates(labels) };
        #[cfg(not(test))]
        let candidates = self.index.candidates(labels);
        for (p, r) in candidates {
            let policy = &self.policies[p as usize];
            let rule = &policy.rules[r as usize];
            let Subject::Endpoints(sel) = &rule.subject else { continue };
            if !sel.matches(labels) {
                continue;
            }
            if last_selected != Some(p) {
                out.policy.policies.push(policy.reference.clone());
                last_selected = Some(p);
            }
            let origin = |path: &str| Origin { policy: policy.reference.clone(), rule: path.to_string() };
            if rule.egress_default_deny {
                out.policy.egress_default_deny = true;
                if !out.policy.egress_default_deny_by.contains(&policy.reference) {
                    out.policy.egress_default_deny_by.push(policy.reference.clone());
                }
                if trace {
                    out.egress_default_deny_from.get_or_insert_with(|| origin(&format!("{}.egress", rule.path)));
                }
            }
            if rule.ingress_default_deny {
                out.policy.ingress_default_deny = true;
                if !out.policy.ingress_default_deny_by.contains(&policy.reference) {
                    out.policy.ingress_default_deny_by.push(policy.reference.clone());
                }
                if trace {
                    out.ingress_default_deny_from.get_or_insert_with(|| origin(&format!("{}.ingress", rule.path)));
                }
            }
            for r in &rule.egress {
                for peer in self.peers(r) {
                    for dns in &r.dns {
                        dns_rules.push(DnsRule {
                            server: peer.clone(),
                            ports: dns.ports.clone(),
                            patterns: dns.patterns.clone(),
                            policy: Arc::new(policy.reference.clone()),
                        });
                        if trace {
                            out.dns_rules.push(origin(&r.path));
                        }
                    }
                    if let Some(ports) = &r.plain_ports {
                        wildcards.push(DnsWildcard {
                            server: peer.clone(),
                            ports: ports.clone(),
                            policy: Arc::new(policy.reference.clone()),
                        });
                        if trace {
                            out.dns_wildcards.push(origin(&r.path));
                        }
                    }
                    out.policy.egress_allows.push(L3Rule {
                        peer,
                        ports: r.ports.clone(),
                        policy: policy.reference.clone(),
                    });
                    if trace {
                        out.egress_allows.push(origin(&r.path));
                    }
                }
                for selector in &r.fqdns {
                    out.policy.fqdn_rules.push(FqdnRule {
                        selector: selector.clone(),
                        ports: r.ports.clone(),
                        policy: policy.reference.clone(),
                    });
                    if trace {
                        out.fqdn_rules.push(origin(&r.path));
                    }
                }
            }
            for (rules, list, origins) in [
                (&rule.egress_deny, &mut out.policy.egress_denies, &mut out.egress_denies),
                (&rule.ingress, &mut out.policy.ingress_allows, &mut out.ingress_allows),
                (&rule.ingress_deny, &mut out.policy.ingress_denies, &mut out.ingress_denies),
            ] {
                for r in rules {
                    for peer in self.peers(r) {
                        list.push(L3Rule { peer, ports: r.ports.clone(), policy: policy.reference.clone() });
                        if trace {
                            origins.push(origin(&r.path));
                        }
                    }
                }
            }
        }
        out.policy.dns = DnsRules::new(dns_rules).with_wildcards(wildcards);
        out
    }

    /// The resolved L3 peers of a rule. A rule with ports but no L3 field allows every peer;
    /// a rule with neither (`{}`) has none, nor has one with an empty peer list
    /// (`toEndpoints: []`); toFQDNs peers are only known from DNS answers (they become
    /// [`FqdnRule`]s). Found once per rule: they depend on the inventory, not on the subject.
    fn peers(&mut self, r: &'a PeerRule) -> Vec<Peer> {
        let key = std::ptr::from_ref(r) as usize;
        if let Some(p) = self.peers.get(&key) {
            return p.clone();
        }
        let peers = self.find_peers(r);
        self.peers.insert(key, peers.clone());
        peers
    }

    fn find_peers(&mut self, r: &PeerRule) -> Vec<Peer> {
        if r.no_peer {
            return Vec::new();
        }
        if !r.has_l3 {
            return if r.has_ports { vec![Peer::Any] } else { Vec::new() };
        }
        let mut out = Vec::with_capacity(r.peers.len());
        for spec in &r.peers {
            out.push(match spec {
                PeerSpec::Endpoints(sels) => Peer::Endpoints { ips: self.selected_ips(sels) },
                PeerSpec::Cidr { net, except } => Peer::Cidr { net: *net, except: except.clone() },
                PeerSpec::Entity(e) => {
                    if !self.entities.contains_key(e) {
                        let peer = self.entity(*e);
                        self.entities.insert(*e, peer);
                    }
                    self.entities[e].clone()
                }
            });
        }
        out
    }

    /// The IPs of the inventory's endpoints that any of `sels` selects, in inventory order: each
    /// selector is matched against each distinct label set, once per distinct list.
    fn selected_ips(&mut self, sels: &[Selector]) -> Vec<IpAddr> {
        if let Some(ips) = self.selected.get(sels) {
            return ips.clone();
        }
        let hit: Vec<bool> = self.groups.iter().map(|l| sels.iter().any(|s| s.matches(l))).collect();
        let mut ips: Vec<IpAddr> = Vec::new();
        let mut seen = HashSet::new();
        for (ep, &g) in self.inventory.iter().zip(&self.group_of) {
            if hit[g] {
                ips.extend(ep.ips.iter().copied().filter(|ip| seen.insert(*ip)));
            }
        }
        self.selected.insert(sels.to_vec(), ips.clone());
        ips
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

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use fqdn_cache::{L4Proto, PortProto};

    use super::*;
    use crate::endpoint::parse_endpoints;
    use crate::load::parse_file;

    pub(crate) fn policies(text: &str) -> Vec<Policy> {
        let (policies, problems) = parse_file(Path::new("t.yaml"), text);
        assert!(problems.is_empty(), "{problems:?}");
        policies
    }

    pub(crate) fn inventory() -> Vec<Endpoint> {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/endpoints.yaml")).unwrap();
        let mut eps = parse_endpoints(Path::new("endpoints.yaml"), &text).unwrap();
        eps.push(Endpoint {
            namespace: "prod".into(),
            name: "web".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            ips: vec!["10.0.2.7".parse().unwrap()],
            interface: None,
            policy_audit_mode: false,
        });
        eps
    }

    pub(crate) fn alpine() -> Endpoint {
        inventory().into_iter().find(|e| e.name == "alpine").unwrap()
    }

    fn cnp(name: &str, spec: &str) -> String {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  endpointSelector: {{matchLabels: {{app: alpine}}}}\n{spec}"
        )
    }

    fn seed(n: usize) -> Vec<Policy> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/policies/seed");
        let file = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{n}-")))
            .unwrap();
        policies(&std::fs::read_to_string(file).unwrap())
    }

    #[test]
    fn default_deny_table() {
        // (case, spec, egress default deny, ingress default deny)
        let cases = [
            ("selector only", "", false, false),
            ("egress [{}] ingress [{}]", "  egress: [{}]\n  ingress: [{}]\n", true, true),
            ("empty lists", "  egress: []\n  ingress: []\n", false, false),
            ("egressDeny only", "  egressDeny: [{toEntities: [world]}]\n", true, false),
            ("ingressDeny only", "  ingressDeny: [{fromEntities: [world]}]\n", false, true),
            ("toFQDNs only", "  egress: [{toFQDNs: [{matchPattern: '*.a.com'}]}]\n", true, false),
            (
                "enableDefaultDeny egress false",
                "  egress: [{toEntities: [world]}]\n  enableDefaultDeny: {egress: false}\n",
                false,
                false,
            ),
            ("enableDefaultDeny ingress true alone", "  enableDefaultDeny: {ingress: true}\n", false, true),
        ];
        for (name, spec, egress, ingress) in cases {
            let ep = resolve(&policies(&cnp("p", spec)), &alpine(), &inventory());
            assert_eq!((ep.egress_default_deny, ep.ingress_default_deny), (egress, ingress), "case {name}");
        }
    }

    #[test]
    fn any_selecting_policy_with_default_deny_wins() {
        let text = format!(
            "{}---\n{}",
            cnp("open", "  egress: [{toEntities: [all]}]\n  enableDefaultDeny: {egress: false}\n"),
            cnp("closed", "  egress: [{}]\n")
        );
        let ep = resolve(&policies(&text), &alpine(), &inventory());
        assert!(ep.egress_default_deny);
        assert_eq!(ep.policies.len(), 2);
        let names: Vec<String> = ep.egress_default_deny_by.iter().map(|p| p.name.clone()).collect();
        assert_eq!(names, ["closed"], "only the policy that put it in default deny");
    }

    #[test]
    fn seed_stages_resolve() {
        let inv = inventory();
        let kube_dns = Peer::Endpoints { ips: vec!["10.96.0.10".parse().unwrap()] };
        let udp53 = vec![PortProto { port: 53, proto: L4Proto::Udp }];

        let s1 = resolve(&seed(1), &alpine(), &inv);
        assert!(!s1.egress_default_deny && !s1.ingress_default_deny);
        assert_eq!(s1.policies.len(), 1);

        let s2 = resolve(&seed(2), &alpine(), &inv);
        assert!(s2.egress_default_deny && s2.ingress_default_deny);
        assert!(s2.egress_allows.is_empty() && s2.ingress_allows.is_empty());

        let s3 = resolve(&seed(3), &alpine(), &inv);
        assert!(s3.egress_default_deny);
        assert_eq!(s3.egress_allows.len(), 1);
        assert_eq!(s3.egress_allows[0].peer, kube_dns);
        assert_eq!(s3.egress_allows[0].ports, udp53);
        assert!(s3.dns.is_empty() && s3.fqdn_rules.is_empty());

        let s4 = resolve(&seed(4), &alpine(), &inv);
        let dns = s4.dns.rules();
        assert_eq!(dns.len(), 1);
        assert_eq!(dns[0].server, kube_dns);
        assert_eq!(dns[0].ports, udp53);
        assert!(dns[0].patterns.iter().any(|p| p.matches("anything.example.")));
        assert_eq!(s4.fqdn_rules.len(), 1);
        assert_eq!(s4.fqdn_rules[0].selector.as_str(), "*.microsoft.com.");
        assert!(s4.fqdn_rules[0].ports.is_empty());

        let other = Endpoint { labels: [("app".to_string(), "other".to_string())].into(), ..alpine() };
        let unaffected = resolve(&seed(4), &other, &inv);
        assert!(!unaffected.egress_default_deny && unaffected.policies.is_empty());
    }

    #[test]
    fn peers_and_entities() {
        let text = cnp(
            "p",
            "  egress:\n  - toEndpoints: [{}]\n  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: prod}}]\n  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]\n  - toEntities: [world, host, cluster]\n  - toPorts: [{ports: [{port: '443', protocol: TCP}]}]\n",
        );
        let node = NodeInfo { host: vec!["192.168.1.10/32".parse().unwrap()], kube_apiserver: Vec::new() };
        let ep = resolve_on(&policies(&text), &alpine(), &inventory(), &node);
        let peers: Vec<&Peer> = ep.egress_allows.iter().map(|r| &r.peer).collect();
        // {} in a CNP: every endpoint of the policy's namespace (alpine itself here).
        assert_eq!(peers[0], &Peer::Endpoints { ips: alpine().ips });
        assert_eq!(peers[1], &Peer::Endpoints { ips: vec!["10.0.2.7".parse().unwrap()] });
        assert!(peers[2].contains("10.0.2.7".parse().unwrap()));
        assert!(!peers[2].contains("10.96.0.10".parse().unwrap()));
        let world = peers[3];
        assert!(world.contains("1.1.1.1".parse().unwrap()));
        assert!(world.contains("2001:db8::1".parse().unwrap()));
        assert!(!world.contains("10.96.0.10".parse().unwrap()));
        assert!(!world.contains("192.168.1.10".parse().unwrap()));
        assert!(peers[4].contains("192.168.1.10".parse().unwrap()) && !peers[4].contains("10.0.1.5".parse().unwrap()));
        assert!(peers[5].contains("10.0.1.5".parse().unwrap()) && peers[5].contains("192.168.1.10".parse().unwrap()));
        assert!(!peers[5].contains("1.1.1.1".parse().unwrap()));
        assert_eq!(peers[6], &Peer::Any);
    }

    #[test]
    fn clusterwide_policy_selects_across_namespaces() {
        let text = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: cw}\nspec:\n  endpointSelector: {matchExpressions: [{key: app, operator: In, values: [alpine, web]}]}\n  egress:\n  - toEndpoints: [{matchLabels: {app: web}}]\n";
        let pols = policies(text);
        let inv = inventory();
        let web = inv.iter().find(|e| e.name == "web").unwrap();
        for ep in [&alpine(), web] {
            let resolved = resolve(&pols, ep, &inv);
            assert!(resolved.egress_default_deny, "{}", ep.key());
            assert_eq!(resolved.egress_allows[0].peer, Peer::Endpoints { ips: web.ips.clone() });
            assert_eq!(resolved.policies[0].to_string(), "cw");
        }
        let dns = inv.iter().find(|e| e.name == "kube-dns").unwrap();
        assert!(resolve(&pols, dns, &inv).policies.is_empty());
    }

    #[test]
    fn cnp_selects_only_its_namespace() {
        let text = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  endpointSelector: {}\n  egress: [{}]\n";
        let inv = inventory();
        let web = inv.iter().find(|e| e.name == "web").unwrap();
        assert!(resolve(&policies(text), web, &inv).egress_default_deny);
        assert!(!resolve(&policies(text), &alpine(), &inv).egress_default_deny);
    }

    /// Cilium (`mergeEndpointSelectors`): an explicitly empty peer list selects no peer, so the
    /// rule allows nothing, its `toPorts` included; without the field the ports open to every
    /// peer. One case per field, each direction, allow and deny.
    #[test]
    fn empty_peer_lists_select_no_peer() {
        let ports = "toPorts: [{ports: [{port: '443', protocol: TCP}]}]";
        let fields = ["Endpoints", "CIDR", "CIDRSet", "Entities"];
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let probes = [ip("10.0.2.7"), ip("10.96.0.10"), ip("1.1.1.1"), ip("127.0.0.1"), ip("2001:db8::1")];
        let anywhere = |rules: &[L3Rule]| probes.iter().any(|p| rules.iter().any(|r| r.peer.contains(*p)));
        for field in fields {
            for (dir, deny) in [("egress", false), ("egressDeny", true), ("ingress", false), ("ingressDeny", true)] {
                let prefix = if dir.starts_with("egress") { "to" } else { "from" };
                let text = cnp(
                    "p",
                    &format!(
                        "  {dir}:\n  - {prefix}{field}: []\n    {ports}\n  enableDefaultDeny: {{egress: true, ingress: true}}\n"
                    ),
                );
                let ep = resolve(&policies(&text), &alpine(), &inventory());
                let rules = match (dir.starts_with("egress"), deny) {
                    (true, false) => &ep.egress_allows,
                    (true, true) => &ep.egress_denies,
                    (false, false) => &ep.ingress_allows,
                    (false, true) => &ep.ingress_denies,
                };
                assert!(!anywhere(rules), "{dir} {prefix}{field}: [] must select no peer: {rules:?}");
                // The control: the same rule without the field opens (or denies) 443 everywhere.
                let open = cnp("p", &format!("  {dir}:\n  - {ports}\n"));
                let ep = resolve(&policies(&open), &alpine(), &inventory());
                let rules = match (dir.starts_with("egress"), deny) {
                    (true, false) => &ep.egress_allows,
                    (true, true) => &ep.egress_denies,
                    (false, false) => &ep.ingress_allows,
                    (false, true) => &ep.ingress_denies,
                };
                assert!(probes.iter().all(|p| rules.iter().any(|r| r.peer.contains(*p))), "{dir} without {field}");
            }
        }
        // One empty list voids the rule's other peers (Cilium checks each list before merging),
        // toFQDNs included; the selectors are still validated.
        let cases = [
            ("toEndpoints: [] beside toCIDR", "  - toEndpoints: []\n    toCIDR: [1.1.1.0/24]\n"),
            ("toEntities: [] beside toCIDRSet", "  - toEntities: []\n    toCIDRSet: [{cidr: 1.1.1.0/24}]\n"),
            ("toCIDR: [] beside toFQDNs", "  - toCIDR: []\n    toFQDNs: [{matchName: one.one.one.one}]\n"),
        ];
        for (name, rule) in cases {
            let ep = resolve(&policies(&cnp("p", &format!("  egress:\n{rule}"))), &alpine(), &inventory());
            assert!(ep.egress_default_deny, "case {name}");
            assert!(ep.egress_allows.is_empty() && ep.fqdn_rules.is_empty(), "case {name}: {ep:?}");
        }
        let (_, problems) = parse_file(
            Path::new("t.yaml"),
            &cnp("p", "  egress:\n  - toCIDR: []\n    toFQDNs: [{matchName: 'a b'}]\n"),
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        // `toFQDNs: []` is not among the lists Cilium checks: like an absent field, the rule's
        // ports open to every peer.
        let ep = resolve(
            &policies(&cnp("p", &format!("  egress:\n  - toFQDNs: []\n    {ports}\n"))),
            &alpine(),
            &inventory(),
        );
        assert_eq!(ep.egress_allows.len(), 1);
        assert_eq!(ep.egress_allows[0].peer, Peer::Any);
    }

    #[test]
    fn fqdn_rule_with_ports_allows_no_ip_by_itself() {
        let text = cnp(
            "p",
            "  egress:\n  - toFQDNs: [{matchName: a.com}]\n    toPorts: [{ports: [{port: '443', protocol: TCP}]}]\n",
        );
        let ep = resolve(&policies(&text), &alpine(), &inventory());
        assert!(ep.egress_allows.is_empty(), "{:?}", ep.egress_allows);
        assert_eq!(ep.fqdn_rules[0].ports, [PortProto { port: 443, proto: L4Proto::Tcp }]);
    }

    /// The shared-work resolver gives every endpoint what resolving it alone gives.
    #[test]
    fn resolver_agrees_with_resolving_alone() {
        let mut texts: Vec<String> = (1..=4)
            .map(|n| {
                let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/policies");
                let files: Vec<_> =
                    std::fs::read_dir(dir.join("examples")).unwrap().map(|e| e.unwrap().path()).collect();
                files.get(n - 1).map(|f| std::fs::read_to_string(f).unwrap()).unwrap_or_default()
            })
            .collect();
        texts.push(cnp("a", "  egress:\n  - toEndpoints: [{matchLabels: {app: web, k8s:io.kubernetes.pod.namespace: prod}}]\n  - toEntities: [world]\n  ingress: [{fromEndpoints: [{}]}]\n"));
        texts.push("apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: cw}\nspec:\n  endpointSelector: {matchExpressions: [{key: app, operator: Exists}]}\n  egress: [{toEndpoints: [{}]}]\n".into());
        let mut pols: Vec<Policy> = seed(4);
        for t in texts.iter().filter(|t| !t.is_empty()) {
            let (mut p, _) = parse_file(Path::new("x.yaml"), t);
            pols.append(&mut p);
        }
        let inv = inventory();
        let node = NodeInfo::default();
        let mut resolver = Resolver::new(&pols, &inv, &node);
        for ep in &inv {
            // The reference: a fresh resolver that looks at every rule, sharing nothing.
            let mut scan = Resolver::new(&pols, &inv, &node);
            scan.scan_all = true;
            let alone = format!("{:?}", scan.walk(&ep.effective_labels(), false).policy);
            assert_eq!(format!("{:?}", resolver.resolve(ep)), alone, "{}", ep.key());
        }
    }

    #[test]
    fn deterministic() {
        let pols = seed(4);
        let a = format!("{:?}", resolve(&pols, &alpine(), &inventory()));
        let b = format!("{:?}", resolve(&pols, &alpine(), &inventory()));
        assert_eq!(a, b);
    }
}
