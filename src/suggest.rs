//! `fqdnd policy suggest`: the seed tutorial's loop ("see the drop, write the rule") done for the
//! user. From the flows of one endpoint it writes a CiliumNetworkPolicy that allows exactly what
//! was observed:
//!
//! - `rules.dns` for every name the endpoint asked (on the DNS server and ports it asked), with the
//!   search-list expansions a resolver tries before the absolute name (`x.default.svc.cluster.local`
//!   answered NXDOMAIN) collapsed into one `**.<suffix>` pattern;
//! - `toFQDNs` for the names that were resolved and then connected to (a drop, or a forwarded flow,
//!   to one of the IPs their answer carried), on the ports seen; names sharing a parent domain become
//!   `*.<parent>` once `pattern_threshold` of them do;
//! - `toEndpoints` for connections to endpoints fqdnd knows (their labels), `toCIDR` for the rest.
//!
//! Flows come in Hubble's shape (`fqdnd observe -o json` lines, or the agent's buffer), so this
//! works on what `hubble observe -o json` saved too. Nothing here decides policy for the agent: it
//! writes a document for a person to read, check and apply.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::SystemTime;

use serde::Serialize;

use crate::flows::model::{Endpoint, Flow, Layer4, Verdict};

/// Labels that name one pod instance rather than the workload: a suggestion never selects on them.
const VOLATILE_LABELS: [&str; 3] =
    ["pod-template-hash", "controller-revision-hash", "statefulset.kubernetes.io/pod-name"];
/// The namespace label: implied by a namespaced policy for its own endpoints.
const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

#[derive(Clone, Debug)]
pub struct Options {
    pub namespace: String,
    pub name: String,
    /// Flows before this are ignored.
    pub since: Option<SystemTime>,
    /// This many names (or more) under one parent domain become one `*.<parent>` pattern; 0: never.
    pub pattern_threshold: usize,
    /// The policy's `metadata.name` (default: `<endpoint>-observed`).
    pub policy_name: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SuggestError {
    /// No flow of this endpoint (from it, or a DNS answer to it); the text says if `since` was set.
    NoFlows(String, &'static str),
    /// Its flows carry no labels, so no endpointSelector can be written.
    NoLabels(String),
}

impl std::fmt::Display for SuggestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SuggestError::NoFlows(e, when) => write!(f, "no flows of {e} (from it, or DNS answers to it){when}"),
            SuggestError::NoLabels(e) => {
                write!(f, "the flows of {e} carry no labels, so no endpointSelector can be written")
            }
        }
    }
}

impl std::error::Error for SuggestError {}

/// (port, protocol) as the policy writes them: `"80"`, `TCP`.
type Port = (u16, &'static str);

/// A peer as a selector would name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Peer {
    /// An endpoint, by its labels (`k8s:key` -> value).
    Endpoint(BTreeMap<String, String>),
    Cidr(IpAddr),
}

#[derive(Default)]
struct Observed {
    flows: usize,
    selector: BTreeMap<String, String>,
    /// DNS server -> ports asked on.
    dns_servers: BTreeMap<Peer, BTreeSet<Port>>,
    /// Names asked, normalized without the root dot.
    queried: BTreeSet<String>,
    nxdomain: BTreeSet<String>,
    /// IP -> the names whose answers carried it.
    answered: BTreeMap<IpAddr, BTreeSet<String>>,
    /// Connections: destination -> ports.
    connections: BTreeMap<(Peer, BTreeSet<String>), BTreeSet<Port>>,
}

fn name_of(n: &str) -> String {
    let n = n.to_ascii_lowercase();
    n.strip_suffix('.').map(str::to_string).unwrap_or(n)
}

fn is(e: Option<&Endpoint>, o: &Options) -> bool {
    e.is_some_and(|e| e.namespace == o.namespace && e.pod_name == o.name)
}

/// `k8s:key=value` labels as a selector's `matchLabels`, without the volatile ones.
fn labels_of(e: &Endpoint) -> BTreeMap<String, String> {
    e.labels
        .iter()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.starts_with("reserved:"))
        .filter(|(k, _)| !VOLATILE_LABELS.iter().any(|v| k.trim_start_matches("k8s:") == *v))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn port_of(l4: &Layer4, destination: bool) -> Port {
    let (src, dst) = l4.ports();
    let port = u16::try_from(if destination { dst } else { src }).unwrap_or(0);
    (port, if matches!(l4, Layer4::Tcp(_)) { "TCP" } else { "UDP" })
}

fn peer(e: Option<&Endpoint>, ip: &str) -> Option<Peer> {
    match e {
        Some(e) if !e.pod_name.is_empty() => Some(Peer::Endpoint(labels_of(e))),
        _ => ip.parse().ok().map(Peer::Cidr),
    }
}

fn observe(flows: &[Flow], o: &Options) -> Observed {
    let mut seen = Observed::default();
    for f in flows.iter().filter(|f| o.since.is_none_or(|t| f.time >= t)) {
        let (Some(ip), Some(l4)) = (&f.ip, &f.l4) else { continue };
        let reply = f.is_reply == Some(true);
        if let Some(dns) = f.l7.as_ref().and_then(|l7| l7.dns.as_ref()) {
            // Requests go from the endpoint to the server; responses are flipped, as Hubble shows them.
            let (client, server, server_ip) = if reply {
                (f.destination.as_ref(), f.source.as_ref(), &ip.source)
            } else {
                (f.source.as_ref(), f.destination.as_ref(), &ip.destination)
            };
            if !is(client, o) {
                continue;
            }
            seen.flows += 1;
            seen.selector = client.map(labels_of).unwrap_or_default();
            if let Some(p) = peer(server, server_ip) {
                seen.dns_servers.entry(p).or_default().insert(port_of(l4, !reply));
            }
            let name = name_of(&dns.query);
            if reply {
                match dns.rcode {
                    0 => {
                        for a in dns.ips.iter().filter_map(|a| a.parse().ok()) {
                            seen.answered.entry(a).or_default().insert(name.clone());
                        }
                    }
                    3 => {
                        seen.nxdomain.insert(name.clone());
                    }
                    _ => {}
                }
            }
            seen.queried.insert(name);
            continue;
        }
        // A connection the endpoint opened: dropped (default deny) or forwarded.
        if reply || !is(f.source.as_ref(), o) || !matches!(f.verdict, Verdict::Dropped | Verdict::Forwarded) {
            continue;
        }
        seen.flows += 1;
        if let Some(s) = f.source.as_ref() {
            seen.selector = labels_of(s);
        }
        let Some(p) = peer(f.destination.as_ref(), &ip.destination) else { continue };
        let names: BTreeSet<String> = f.destination_names.iter().map(|n| name_of(n)).collect();
        seen.connections.entry((p, names)).or_default().insert(port_of(l4, true));
    }
    seen
}

/// Names that are search-list expansions of another name asked (`N.<suffix>`, answered NXDOMAIN),
/// and the suffixes, reduced to those not under another (`cluster.local` covers
/// `svc.cluster.local`).
fn expansions(seen: &Observed) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut expanded = BTreeSet::new();
    let mut suffixes = BTreeSet::new();
    for q in &seen.nxdomain {
        for n in &seen.queried {
            if let Some(suffix) = q.strip_prefix(n.as_str()).and_then(|r| r.strip_prefix('.'))
                && !suffix.is_empty()
                && n != q
            {
                expanded.insert(q.clone());
                suffixes.insert(suffix.to_string());
            }
        }
    }
    let reduced =
        suffixes.iter().filter(|s| !suffixes.iter().any(|o| o != *s && s.ends_with(&format!(".{o}")))).cloned();
    let reduced: BTreeSet<String> = reduced.collect();
    // A name under a suffix that was expanded is an expansion too (the absolute name was not asked).
    for q in &seen.nxdomain {
        if reduced.iter().any(|s| q.ends_with(&format!(".{s}"))) {
            expanded.insert(q.clone());
        }
    }
    (expanded, reduced)
}

/// Names as selectors: `matchName`, or `matchPattern: "*.<parent>"` for `threshold` or more names
/// under one parent of at least two labels.
fn selectors(names: &BTreeSet<String>, threshold: usize) -> Vec<Selector> {
    let mut by_parent: BTreeMap<String, Vec<&String>> = BTreeMap::new();
    for n in names {
        if let Some((_, parent)) = n.split_once('.')
            && parent.contains('.')
        {
            by_parent.entry(parent.to_string()).or_default().push(n);
        }
    }
    let grouped: BTreeSet<&String> = by_parent
        .iter()
        .filter(|(_, ns)| threshold > 0 && ns.len() >= threshold)
        .flat_map(|(_, ns)| ns.iter().copied())
        .collect();
    let mut out: Vec<Selector> = by_parent
        .iter()
        .filter(|(_, ns)| threshold > 0 && ns.len() >= threshold)
        .map(|(p, _)| Selector { match_name: None, match_pattern: Some(format!("*.{p}")) })
        .collect();
    out.extend(names.iter().filter(|n| !grouped.contains(n)).map(|n| Selector::name(n)));
    out
}

// ---- the document ----------------------------------------------------------------------------

#[derive(Serialize)]
struct Document {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Serialize)]
struct Metadata {
    name: String,
    namespace: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    endpoint_selector: LabelSelector,
    egress: Vec<Rule>,
}

#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct LabelSelector {
    match_labels: BTreeMap<String, String>,
}

#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    to_endpoints: Vec<LabelSelector>,
    #[serde(rename = "toCIDR", skip_serializing_if = "Vec::is_empty")]
    to_cidr: Vec<String>,
    #[serde(rename = "toFQDNs", skip_serializing_if = "Vec::is_empty")]
    to_fqdns: Vec<Selector>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    to_ports: Vec<PortRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
struct Selector {
    #[serde(skip_serializing_if = "Option::is_none")]
    match_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    match_pattern: Option<String>,
}

impl Selector {
    fn name(n: &str) -> Self {
        Selector { match_name: Some(n.to_string()), match_pattern: None }
    }
}

#[derive(Serialize)]
struct PortRule {
    ports: Vec<PortProtocol>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rules: Option<L7Rules>,
}

#[derive(Serialize)]
struct PortProtocol {
    port: String,
    protocol: &'static str,
}

#[derive(Serialize)]
struct L7Rules {
    dns: Vec<Selector>,
}

fn port_rule(ports: &BTreeSet<Port>, dns: Option<Vec<Selector>>) -> PortRule {
    PortRule {
        ports: ports.iter().map(|(p, proto)| PortProtocol { port: p.to_string(), protocol: proto }).collect(),
        rules: dns.map(|dns| L7Rules { dns }),
    }
}

fn cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

/// The suggested policy as YAML, with a comment saying what it was made from.
pub fn suggest(flows: &[Flow], o: &Options) -> Result<String, SuggestError> {
    let key = format!("{}/{}", o.namespace, o.name);
    let seen = observe(flows, o);
    if seen.flows == 0 {
        let hint = if o.since.is_some() { " in that time" } else { "" };
        return Err(SuggestError::NoFlows(key, hint));
    }
    let selector: BTreeMap<String, String> = seen
        .selector
        .iter()
        .map(|(k, v)| (k.trim_start_matches("k8s:").to_string(), v.clone()))
        .filter(|(k, _)| k != NAMESPACE_LABEL)
        .collect();
    if selector.is_empty() {
        return Err(SuggestError::NoLabels(key));
    }

    let (expanded, suffixes) = expansions(&seen);
    let asked: BTreeSet<String> = seen.queried.iter().filter(|q| !expanded.contains(*q)).cloned().collect();
    let mut dns = selectors(&asked, o.pattern_threshold);
    dns.extend(suffixes.iter().map(|s| Selector { match_name: None, match_pattern: Some(format!("**.{s}")) }));

    let mut egress = Vec::new();
    for (server, ports) in &seen.dns_servers {
        let mut rule = Rule { to_ports: vec![port_rule(ports, Some(dns.clone()))], ..Rule::default() };
        match server {
            Peer::Endpoint(labels) => rule.to_endpoints.push(LabelSelector { match_labels: labels.clone() }),
            Peer::Cidr(ip) => rule.to_cidr.push(cidr(*ip)),
        }
        egress.push(rule);
    }

    // Connections: to a name's answer (toFQDNs), to an endpoint (toEndpoints), or elsewhere (toCIDR).
    let mut fqdn_ports: BTreeMap<String, BTreeSet<Port>> = BTreeMap::new();
    let mut endpoint_ports: BTreeMap<BTreeMap<String, String>, BTreeSet<Port>> = BTreeMap::new();
    let mut cidr_ports: BTreeMap<IpAddr, BTreeSet<Port>> = BTreeMap::new();
    for ((p, names), ports) in &seen.connections {
        match p {
            Peer::Endpoint(labels) => endpoint_ports.entry(labels.clone()).or_default().extend(ports),
            Peer::Cidr(ip) => {
                let mut resolved: BTreeSet<String> = seen.answered.get(ip).cloned().unwrap_or_default();
                resolved.extend(names.iter().cloned());
                resolved.retain(|n| !expanded.contains(n));
                if resolved.is_empty() {
                    cidr_ports.entry(*ip).or_default().extend(ports);
                }
                for n in resolved {
                    fqdn_ports.entry(n).or_default().extend(ports);
                }
            }
        }
    }
    // One toFQDNs rule per set of ports, the names (or their patterns) that share it.
    let mut by_ports: BTreeMap<BTreeSet<Port>, BTreeSet<String>> = BTreeMap::new();
    for (n, ports) in &fqdn_ports {
        by_ports.entry(ports.clone()).or_default().insert(n.clone());
    }
    // Patterns are chosen over all connected names, so a parent's names stay together even when
    // their ports differ: the pattern's rule gets the union of their ports.
    let all_names: BTreeSet<String> = fqdn_ports.keys().cloned().collect();
    let chosen = selectors(&all_names, o.pattern_threshold);
    let mut rules: BTreeMap<BTreeSet<Port>, Vec<Selector>> = BTreeMap::new();
    for s in chosen {
        let ports: BTreeSet<Port> = match (&s.match_name, &s.match_pattern) {
            (Some(n), _) => fqdn_ports[n].clone(),
            (None, Some(p)) => {
                let parent = p.trim_start_matches("*.");
                fqdn_ports
                    .iter()
                    .filter(|(n, _)| n.split_once('.').is_some_and(|(_, rest)| rest == parent))
                    .flat_map(|(_, ports)| ports.iter().copied())
                    .collect()
            }
            (None, None) => continue,
        };
        rules.entry(ports).or_default().push(s);
    }
    for (ports, selectors) in rules {
        egress.push(Rule { to_fqdns: selectors, to_ports: vec![port_rule(&ports, None)], ..Rule::default() });
    }
    for (labels, ports) in endpoint_ports {
        egress.push(Rule {
            to_endpoints: vec![LabelSelector { match_labels: labels }],
            to_ports: vec![port_rule(&ports, None)],
            ..Rule::default()
        });
    }
    let mut cidr_by_ports: BTreeMap<BTreeSet<Port>, Vec<String>> = BTreeMap::new();
    for (ip, ports) in cidr_ports {
        cidr_by_ports.entry(ports).or_default().push(cidr(ip));
    }
    for (ports, cidrs) in cidr_by_ports {
        egress.push(Rule { to_cidr: cidrs, to_ports: vec![port_rule(&ports, None)], ..Rule::default() });
    }

    let doc = Document {
        api_version: "cilium.io/v2",
        kind: "CiliumNetworkPolicy",
        metadata: Metadata {
            name: o.policy_name.clone().unwrap_or_else(|| format!("{}-observed", o.name)),
            namespace: o.namespace.clone(),
        },
        spec: Spec { endpoint_selector: LabelSelector { match_labels: selector }, egress },
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Suggested by `fqdnd policy suggest` from {} flows of {key}: it allows exactly what",
        seen.flows
    );
    let _ = writeln!(out, "# they show (DNS names asked, names connected to, peers and CIDRs, on the ports seen).");
    if !suffixes.is_empty() {
        let list: Vec<&str> = suffixes.iter().map(String::as_str).collect();
        let _ = writeln!(
            out,
            "# {} search-list expansions (NXDOMAIN) are allowed as **.{}.",
            expanded.len(),
            list.join(", **.")
        );
    }
    let _ = writeln!(out, "# Review it, then `fqdnd policy check` it and apply it.");
    out.push_str(&serde_norway::to_string(&doc).unwrap_or_default());
    Ok(out)
}

/// Flows from `fqdnd observe -o json` / `hubble observe -o json` text: one `GetFlowsResponse`
/// (`{"flow":{...}}`) or bare flow per line; other lines (lost events, node status) are skipped.
pub fn read_flows(text: &str) -> Result<Vec<Flow>, String> {
    let mut flows = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("line {}: not JSON: {e}", i + 1))?;
        let flow = match v.get("flow") {
            Some(f) => f.clone(),
            None if v.get("time").is_some() && v.get("verdict").is_some() => v,
            None => continue,
        };
        flows.push(serde_json::from_value(flow).map_err(|e| format!("line {}: not a flow: {e}", i + 1))?);
    }
    Ok(flows)
}

#[cfg(test)]
mod tests;
