//! Hubble's `FlowFilter`s (GetFlowsRequest whitelist/blacklist) compiled once per request and run
//! on fqdnd's flows, with the meaning Hubble's `pkg/hubble/filters` gives each field: a flow passes
//! when it matches any whitelist filter (or there is none) and no blacklist filter; a filter
//! matches when every field it sets does; a repeated field matches when any of its values does.
//!
//! Fields about data fqdnd's flows never carry (HTTP, services, uuids, trace ids) match nothing,
//! as on a Hubble server that saw no such flow.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;

use super::convert::{direction_to_proto, drop_reason_to_proto, verdict_to_proto};
use super::proto::flow as pb;
use crate::flows::FlowMatch;
use crate::flows::model::{Endpoint, Flow, Layer4, Verdict};

/// Cilium's cluster name when none is configured; Hubble matches node names as `cluster/node`.
const DEFAULT_CLUSTER: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("{field}: {value:?} is neither an IP address nor a prefix")]
    Ip { field: &'static str, value: String },
    #[error("{field}: {value:?} is not [namespace/][pod-name-prefix]")]
    Pod { field: &'static str, value: String },
    #[error("{field}: {value:?} is not a port number")]
    Port { field: &'static str, value: String },
    #[error("{field}: pattern {value:?}: {why}")]
    Pattern { field: &'static str, value: String, why: &'static str },
    #[error("dns_query: {value:?} is not a regular expression")]
    Regex {
        value: String,
        #[source]
        source: regex::Error,
    },
    #[error("protocol: unknown protocol {value:?} (tcp, udp, icmp, icmpv4, icmpv6, dns, http or kafka)")]
    Protocol { value: String },
    #[error("{field}: label selector {value:?}: {why}")]
    Label { field: &'static str, value: String, why: String },
}

/// A filter list entry that did not compile, named as the request names it (`whitelist[1]`).
#[derive(Debug, thiserror::Error)]
#[error("{list}[{index}]")]
pub struct InvalidFilter {
    pub list: &'static str,
    pub index: usize,
    #[source]
    pub source: FilterError,
}

/// A request's whitelist and blacklist, ready to run on every flow.
#[derive(Debug, Default)]
pub struct FilterSet {
    whitelist: Vec<Compiled>,
    blacklist: Vec<Compiled>,
}

impl FilterSet {
    pub fn compile(whitelist: &[pb::FlowFilter], blacklist: &[pb::FlowFilter]) -> Result<Self, InvalidFilter> {
        let list = |name: &'static str, filters: &[pb::FlowFilter]| {
            filters
                .iter()
                .enumerate()
                .map(|(index, f)| Compiled::new(f).map_err(|source| InvalidFilter { list: name, index, source }))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(FilterSet { whitelist: list("whitelist", whitelist)?, blacklist: list("blacklist", blacklist)? })
    }

    pub fn matches(&self, f: &Flow) -> bool {
        (self.whitelist.is_empty() || self.whitelist.iter().any(|c| c.matches(f)))
            && !self.blacklist.iter().any(|c| c.matches(f))
    }
}

impl FlowMatch for FilterSet {
    fn matches(&self, f: &Flow) -> bool {
        FilterSet::matches(self, f)
    }
}

#[derive(Clone, Copy, Debug)]
enum Side {
    Source,
    Destination,
}

impl Side {
    fn endpoint(self, f: &Flow) -> Option<&Endpoint> {
        match self {
            Side::Source => f.source.as_ref(),
            Side::Destination => f.destination.as_ref(),
        }
    }

    fn ip(self, f: &Flow) -> Option<&str> {
        f.ip.as_ref().map(|ip| match self {
            Side::Source => ip.source.as_str(),
            Side::Destination => ip.destination.as_str(),
        })
    }

    fn port(self, f: &Flow) -> Option<u32> {
        let (s, d) = f.l4.as_ref()?.ports();
        Some(match self {
            Side::Source => s,
            Side::Destination => d,
        })
    }

    fn names(self, f: &Flow) -> &[String] {
        match self {
            // fqdnd's flows carry no source names (Cilium fills them from its FQDN cache for
            // ingress; fqdnd polices egress only).
            Side::Source => &[],
            Side::Destination => &f.destination_names,
        }
    }
}

#[derive(Debug)]
struct IpSet {
    addrs: Vec<IpAddr>,
    nets: Vec<IpNet>,
}

#[derive(Debug)]
struct PodName {
    namespace: String,
    prefix: String,
}

#[derive(Debug)]
struct Protocols {
    tcp: bool,
    udp: bool,
    dns: bool,
}

#[derive(Debug)]
enum Criterion {
    Ip(Side, IpSet),
    Pod(Side, Vec<PodName>),
    Fqdn(Side, Regex),
    Label(Side, Vec<LabelSelector>),
    Identity(Side, Vec<u32>),
    Port(Side, Vec<u32>),
    Verdict(Vec<i32>),
    EventType(Vec<pb::EventTypeFilter>),
    Protocol(Protocols),
    Reply(Vec<bool>),
    DnsQuery(Vec<Regex>),
    TcpFlags(Vec<pb::TcpFlags>),
    NodeName(Regex),
    IpVersion(Vec<i32>),
    TrafficDirection(Vec<i32>),
    DropReason(Vec<i32>),
    /// A field about data no fqdnd flow has.
    Nothing,
}

#[derive(Debug)]
struct Compiled(Vec<Criterion>);

impl Compiled {
    fn new(f: &pb::FlowFilter) -> Result<Self, FilterError> {
        let mut c = Vec::new();
        if !f.source_ip.is_empty() {
            c.push(Criterion::Ip(Side::Source, ip_set("source_ip", &f.source_ip)?));
        }
        if !f.destination_ip.is_empty() {
            c.push(Criterion::Ip(Side::Destination, ip_set("destination_ip", &f.destination_ip)?));
        }
        if !f.source_pod.is_empty() {
            c.push(Criterion::Pod(Side::Source, pods("source_pod", &f.source_pod)?));
        }
        if !f.destination_pod.is_empty() {
            c.push(Criterion::Pod(Side::Destination, pods("destination_pod", &f.destination_pod)?));
        }
        if !f.source_fqdn.is_empty() {
            c.push(Criterion::Fqdn(Side::Source, fqdn_regex("source_fqdn", &f.source_fqdn)?));
        }
        if !f.destination_fqdn.is_empty() {
            c.push(Criterion::Fqdn(Side::Destination, fqdn_regex("destination_fqdn", &f.destination_fqdn)?));
        }
        if !f.source_label.is_empty() {
            c.push(Criterion::Label(Side::Source, labels("source_label", &f.source_label)?));
        }
        if !f.destination_label.is_empty() {
            c.push(Criterion::Label(Side::Destination, labels("destination_label", &f.destination_label)?));
        }
        if !f.source_identity.is_empty() {
            c.push(Criterion::Identity(Side::Source, f.source_identity.clone()));
        }
        if !f.destination_identity.is_empty() {
            c.push(Criterion::Identity(Side::Destination, f.destination_identity.clone()));
        }
        if !f.source_port.is_empty() {
            c.push(Criterion::Port(Side::Source, ports("source_port", &f.source_port)?));
        }
        if !f.destination_port.is_empty() {
            c.push(Criterion::Port(Side::Destination, ports("destination_port", &f.destination_port)?));
        }
        if !f.verdict.is_empty() {
            c.push(Criterion::Verdict(f.verdict.clone()));
        }
        if !f.event_type.is_empty() {
            c.push(Criterion::EventType(f.event_type.clone()));
        }
        if !f.protocol.is_empty() {
            c.push(Criterion::Protocol(protocols(&f.protocol)?));
        }
        if !f.reply.is_empty() {
            c.push(Criterion::Reply(f.reply.clone()));
        }
        if !f.dns_query.is_empty() {
            let res = f
                .dns_query
                .iter()
                .map(|q| Regex::new(q).map_err(|source| FilterError::Regex { value: q.clone(), source }));
            c.push(Criterion::DnsQuery(res.collect::<Result<_, _>>()?));
        }
        if !f.tcp_flags.is_empty() {
            c.push(Criterion::TcpFlags(f.tcp_flags.clone()));
        }
        if !f.node_name.is_empty() {
            c.push(Criterion::NodeName(node_name_regex(&f.node_name)?));
        }
        if !f.ip_version.is_empty() {
            c.push(Criterion::IpVersion(f.ip_version.clone()));
        }
        if !f.traffic_direction.is_empty() {
            c.push(Criterion::TrafficDirection(f.traffic_direction.clone()));
        }
        if !f.drop_reason_desc.is_empty() {
            c.push(Criterion::DropReason(f.drop_reason_desc.clone()));
        }
        let absent = [
            &f.http_status_code,
            &f.source_service,
            &f.destination_service,
            &f.http_method,
            &f.http_path,
            &f.http_url,
            &f.trace_id,
            &f.uuid,
        ];
        if absent.iter().any(|v| !v.is_empty()) {
            c.push(Criterion::Nothing);
        }
        Ok(Compiled(c))
    }

    fn matches(&self, f: &Flow) -> bool {
        self.0.iter().all(|c| c.matches(f))
    }
}

impl Criterion {
    fn matches(&self, f: &Flow) -> bool {
        match self {
            Criterion::Ip(side, set) => side.ip(f).filter(|s| !s.is_empty()).is_some_and(|s| set.contains(s)),
            Criterion::Pod(side, names) => side.endpoint(f).is_some_and(|e| {
                !(e.namespace.is_empty() && e.pod_name.is_empty())
                    && names.iter().any(|n| n.namespace == e.namespace && e.pod_name.starts_with(&n.prefix))
            }),
            Criterion::Fqdn(side, re) => side.names(f).iter().any(|n| re.is_match(n)),
            Criterion::Label(side, selectors) => {
                let labels = side.endpoint(f).map(|e| e.labels.as_slice()).unwrap_or_default();
                selectors.iter().any(|s| s.matches(labels))
            }
            Criterion::Identity(side, ids) => side.endpoint(f).is_some_and(|e| ids.contains(&e.identity)),
            Criterion::Port(side, ports) => side.port(f).is_some_and(|p| ports.contains(&p)),
            Criterion::Verdict(vs) => vs.contains(&(verdict_to_proto(f.verdict) as i32)),
            Criterion::EventType(types) => f.event_type.is_some_and(|ev| {
                types.iter().any(|t| {
                    (t.r#type == 0 || t.r#type == ev.event_type) && (!t.match_sub_type || t.sub_type == ev.sub_type)
                })
            }),
            Criterion::Protocol(p) => {
                let l4 = match &f.l4 {
                    Some(Layer4::Tcp(_)) => p.tcp,
                    Some(Layer4::Udp(_)) => p.udp,
                    None => false,
                };
                l4 || (p.dns && f.l7.as_ref().is_some_and(|l7| l7.dns.is_some()))
            }
            Criterion::Reply(values) => {
                // Hubble: a flow that does not say whether it is a reply only matches when dropped
                // (drops are taken as not replies).
                if f.is_reply.is_none() && f.verdict != Verdict::Dropped {
                    return false;
                }
                values.contains(&f.is_reply.unwrap_or(false))
            }
            Criterion::DnsQuery(res) => {
                f.l7.as_ref().and_then(|l7| l7.dns.as_ref()).is_some_and(|d| res.iter().any(|re| re.is_match(&d.query)))
            }
            Criterion::TcpFlags(wanted) => {
                let Some(Layer4::Tcp(tcp)) = &f.l4 else { return false };
                let Some(have) = tcp.flags else { return false };
                wanted.iter().any(|w| {
                    !((w.fin && !have.fin)
                        || (w.syn && !have.syn)
                        || (w.rst && !have.rst)
                        || (w.psh && !have.psh)
                        || (w.ack && !have.ack)
                        || (w.urg && !have.urg)
                        || (w.ece && !have.ece)
                        || (w.cwr && !have.cwr)
                        || w.ns)
                })
            }
            Criterion::NodeName(re) => {
                if f.node_name.is_empty() {
                    return false;
                }
                if f.node_name.contains('/') {
                    re.is_match(&f.node_name)
                } else {
                    re.is_match(&format!("{DEFAULT_CLUSTER}/{}", f.node_name))
                }
            }
            Criterion::IpVersion(vs) => {
                let v = f.ip.as_ref().map(|ip| ip.ip_version).unwrap_or_default();
                let v = match v {
                    crate::flows::model::IpVersion::NotUsed => pb::IpVersion::IpNotUsed,
                    crate::flows::model::IpVersion::IPv4 => pb::IpVersion::IPv4,
                    crate::flows::model::IpVersion::IPv6 => pb::IpVersion::IPv6,
                };
                vs.contains(&(v as i32))
            }
            Criterion::TrafficDirection(ds) => ds.contains(&(direction_to_proto(f.traffic_direction) as i32)),
            Criterion::DropReason(rs) => {
                f.verdict == Verdict::Dropped
                    && rs.contains(&f.drop_reason_desc.map(|r| drop_reason_to_proto(r) as i32).unwrap_or(0))
            }
            Criterion::Nothing => false,
        }
    }
}

impl IpSet {
    fn contains(&self, text: &str) -> bool {
        let Ok(ip) = text.parse::<IpAddr>() else { return false };
        self.addrs.contains(&ip) || self.nets.iter().any(|n| n.contains(&ip))
    }
}

fn ip_set(field: &'static str, values: &[String]) -> Result<IpSet, FilterError> {
    let mut set = IpSet { addrs: Vec::new(), nets: Vec::new() };
    for v in values {
        let bad = || FilterError::Ip { field, value: v.clone() };
        if v.contains('/') {
            set.nets.push(v.parse().map_err(|_| bad())?);
        } else {
            set.addrs.push(v.parse().map_err(|_| bad())?);
        }
    }
    Ok(set)
}

/// Hubble's `[namespace/][name-prefix]`; without a namespace, `default`.
fn pods(field: &'static str, values: &[String]) -> Result<Vec<PodName>, FilterError> {
    values
        .iter()
        .map(|v| {
            let mut parts = v.split('/');
            let first = parts.next().unwrap_or_default();
            match parts.next() {
                Some(name) => Ok(PodName { namespace: first.to_string(), prefix: name.to_string() }),
                None if first.is_empty() => Err(FilterError::Pod { field, value: v.clone() }),
                None => Ok(PodName { namespace: "default".to_string(), prefix: first.to_string() }),
            }
        })
        .collect()
}

fn ports(field: &'static str, values: &[String]) -> Result<Vec<u32>, FilterError> {
    values
        .iter()
        .map(|v| v.parse::<u16>().map(u32::from).map_err(|_| FilterError::Port { field, value: v.clone() }))
        .collect()
}

fn protocols(values: &[String]) -> Result<Protocols, FilterError> {
    let mut p = Protocols { tcp: false, udp: false, dns: false };
    for v in values {
        match v.to_ascii_lowercase().as_str() {
            "tcp" => p.tcp = true,
            "udp" => p.udp = true,
            "dns" => p.dns = true,
            // Valid in Hubble; fqdnd's flows are never ICMP, HTTP or Kafka.
            "icmp" | "icmpv4" | "icmpv6" | "http" | "kafka" => {}
            _ => return Err(FilterError::Protocol { value: v.clone() }),
        }
    }
    Ok(p)
}

/// Regex syntax of an FQDN pattern element (Hubble's `fqdnRegexpStr`), matching any name.
const ANY_FQDN: &str = r"(?:[-0-9_a-z]+(?:\.[-0-9_a-z]+)*)";

/// Append the regex of one FQDN pattern (`*` matches any run of name characters, dots included).
fn push_fqdn_pattern(out: &mut String, field: &'static str, pattern: &str) -> Result<(), FilterError> {
    let p = pattern.trim();
    let p = p.strip_suffix('.').unwrap_or(p).to_ascii_lowercase();
    let bad = |why| FilterError::Pattern { field, value: pattern.to_string(), why };
    if p.is_empty() {
        return Err(bad("empty pattern"));
    }
    if p.ends_with('.') {
        return Err(bad("more than one trailing dot"));
    }
    for c in p.chars() {
        match c {
            '.' => out.push_str(r"\."),
            '*' => out.push_str("[-.0-9a-z]*"),
            '-' | '_' | '0'..='9' | 'a'..='z' => out.push(c),
            _ => return Err(bad("only letters, digits, '-', '_', '.' and '*' are allowed")),
        }
    }
    Ok(())
}

fn fqdn_regex(field: &'static str, patterns: &[String]) -> Result<Regex, FilterError> {
    let mut re = String::from(r"\A(?:");
    for (i, p) in patterns.iter().enumerate() {
        if i > 0 {
            re.push('|');
        }
        push_fqdn_pattern(&mut re, field, p)?;
    }
    re.push_str(r")\z");
    Ok(Regex::new(&re).expect("built from escaped pattern characters only"))
}

/// Node name patterns: `node`, `cluster/node`, `cluster/`, each part an FQDN pattern (empty: any).
fn node_name_regex(patterns: &[String]) -> Result<Regex, FilterError> {
    const FIELD: &str = "node_name";
    let mut re = String::from(r"\A(?:");
    for (i, p) in patterns.iter().enumerate() {
        if i > 0 {
            re.push('|');
        }
        let bad = |why| FilterError::Pattern { field: FIELD, value: p.clone(), why };
        if p.is_empty() {
            return Err(bad("empty pattern"));
        }
        let parts: Vec<&str> = p.split('/').collect();
        let (cluster, node) = match parts.as_slice() {
            [node] => ("", *node),
            [cluster, node] => (*cluster, *node),
            _ => return Err(bad("more than one '/'")),
        };
        for (k, part) in [cluster, node].into_iter().enumerate() {
            if k == 1 {
                re.push('/');
            }
            if part.is_empty() {
                re.push_str(ANY_FQDN);
            } else {
                push_fqdn_pattern(&mut re, FIELD, part)?;
            }
        }
    }
    re.push_str(r")\z");
    Ok(Regex::new(&re).expect("built from escaped pattern characters only"))
}

fn labels(field: &'static str, values: &[String]) -> Result<Vec<LabelSelector>, FilterError> {
    values
        .iter()
        .map(|v| LabelSelector::parse(v).map_err(|why| FilterError::Label { field, value: v.clone(), why }))
        .collect()
}

/// A label's key: its source (`k8s`, `reserved`, ...; `any` matches every source) and name.
#[derive(Debug, PartialEq, Eq)]
struct LabelKey {
    source: String,
    name: String,
}

impl LabelKey {
    fn parse(text: &str) -> Self {
        match text.split_once(':') {
            Some((source, name)) => LabelKey { source: source.to_string(), name: name.to_string() },
            None => LabelKey { source: "any".to_string(), name: text.to_string() },
        }
    }

    /// The value of this key among `k8s:app=alpine`-style labels, if one has it.
    fn value_in<'a>(&self, labels: &'a [String]) -> Option<&'a str> {
        labels.iter().find_map(|l| {
            let (source, rest) = l.split_once(':').unwrap_or(("unspec", l.as_str()));
            let (name, value) = rest.split_once('=').unwrap_or((rest, ""));
            (name == self.name && (self.source == "any" || self.source == source)).then_some(value)
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Requirement {
    Exists(LabelKey),
    NotExists(LabelKey),
    In(LabelKey, BTreeSet<String>),
    NotIn(LabelKey, BTreeSet<String>),
}

/// A Kubernetes label selector over Cilium's labels, as Hubble's `--label` takes it: comma-separated
/// requirements (`key`, `!key`, `key=v`, `key==v`, `key!=v`, `key in (a,b)`, `key notin (a,b)`),
/// a key being `source:name` or `name` (any source).
#[derive(Debug, PartialEq, Eq)]
struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    fn parse(text: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_requirements(text) {
            let part = part.trim();
            if part.is_empty() {
                if text.trim().is_empty() {
                    continue;
                }
                return Err("empty requirement".to_string());
            }
            reqs.push(parse_requirement(part)?);
        }
        Ok(LabelSelector(reqs))
    }

    fn matches(&self, labels: &[String]) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Exists(k) => k.value_in(labels).is_some(),
            Requirement::NotExists(k) => k.value_in(labels).is_none(),
            Requirement::In(k, vs) => k.value_in(labels).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => k.value_in(labels).is_none_or(|v| !vs.contains(v)),
        })
    }
}

/// Split on commas outside parentheses.
fn split_requirements(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let valid_key = |k: &str| !k.is_empty() && !k.contains(|c: char| c.is_whitespace() || "=!(),".contains(c));
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        return valid_key(key).then(|| Requirement::NotExists(LabelKey::parse(key))).ok_or(format!("bad key {key:?}"));
    }
    let one = |v: &str| BTreeSet::from([v.trim().to_string()]);
    if let Some((k, v)) = part.split_once("!=") {
        let k = k.trim();
        return valid_key(k).then(|| Requirement::NotIn(LabelKey::parse(k), one(v))).ok_or(format!("bad key {k:?}"));
    }
    if let Some((k, v)) = part.split_once('=') {
        let v = v.strip_prefix('=').unwrap_or(v);
        let k = k.trim();
        return valid_key(k).then(|| Requirement::In(LabelKey::parse(k), one(v))).ok_or(format!("bad key {k:?}"));
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if let [key, rest] = words.as_slice() {
        let rest = rest.trim();
        let (op, list) = if let Some(l) = rest.strip_prefix("notin") {
            ("notin", l)
        } else if let Some(l) = rest.strip_prefix("in") {
            ("in", l)
        } else {
            return Err(format!("unknown operator in {part:?} (=, ==, !=, in, notin)"));
        };
        let list = list.trim();
        let inner = list
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| format!("{op} needs a (value, ...) list"))?;
        let values: BTreeSet<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
        if !valid_key(key) {
            return Err(format!("bad key {key:?}"));
        }
        let key = LabelKey::parse(key);
        return Ok(if op == "in" { Requirement::In(key, values) } else { Requirement::NotIn(key, values) });
    }
    if valid_key(part) { Ok(Requirement::Exists(LabelKey::parse(part))) } else { Err(format!("bad key {part:?}")) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hubble::convert::tests::real_flows;

    /// real_flows(): 0 request, 1 response, 2 response with CNAMEs, 3 NXDOMAIN, 4 refused request,
    /// 5 refused answer, 6 TCP response, 7 IPv6 request from an unknown client, 8 TCP SYN drop to
    /// www.microsoft.com, 9 UDP drop, 10 deny-rule drop (IPv6, SYN+ACK).
    fn matching(filter: pb::FlowFilter) -> Vec<usize> {
        let set = FilterSet::compile(&[filter], &[]).unwrap();
        real_flows().iter().enumerate().filter(|(_, f)| set.matches(f)).map(|(i, _)| i).collect()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_field_means_what_it_means_in_hubble() {
        let all: Vec<usize> = (0..11).collect();
        let cases: Vec<(pb::FlowFilter, Vec<usize>)> = vec![
            (pb::FlowFilter::default(), all.clone()),
            (pb::FlowFilter { source_ip: strings(&["10.0.1.5"]), ..Default::default() }, vec![0, 4, 8, 9]),
            (
                pb::FlowFilter { source_ip: strings(&["10.0.0.0/8"]), ..Default::default() },
                vec![0, 1, 2, 3, 4, 5, 6, 8, 9],
            ),
            (
                pb::FlowFilter { destination_ip: strings(&["13.107.1.1", "2001:db8::/32"]), ..Default::default() },
                vec![8, 9, 10],
            ),
            (pb::FlowFilter { source_pod: strings(&["default/alpine"]), ..Default::default() }, vec![0, 4, 8, 9, 10]),
            (pb::FlowFilter { source_pod: strings(&["alp"]), ..Default::default() }, vec![0, 4, 8, 9, 10]),
            (pb::FlowFilter { source_pod: strings(&["kube-system/"]), ..Default::default() }, vec![1, 2, 3, 5, 6]),
            (pb::FlowFilter { destination_pod: strings(&["kube-system/kube-dns"]), ..Default::default() }, vec![0, 4]),
            (pb::FlowFilter { source_pod: strings(&["other/alpine"]), ..Default::default() }, vec![]),
            (pb::FlowFilter { verdict: vec![pb::Verdict::Dropped as i32], ..Default::default() }, vec![4, 5, 8, 9, 10]),
            (
                pb::FlowFilter {
                    event_type: vec![pb::EventTypeFilter { r#type: 1, match_sub_type: true, sub_type: 181 }],
                    ..Default::default()
                },
                vec![10],
            ),
            (
                pb::FlowFilter {
                    event_type: vec![pb::EventTypeFilter { r#type: 129, ..Default::default() }],
                    ..Default::default()
                },
                (0..8).collect(),
            ),
            (pb::FlowFilter { protocol: strings(&["DNS"]), ..Default::default() }, (0..8).collect()),
            (pb::FlowFilter { protocol: strings(&["tcp"]), ..Default::default() }, vec![6, 8, 10]),
            (pb::FlowFilter { protocol: strings(&["http"]), ..Default::default() }, vec![]),
            (pb::FlowFilter { dns_query: strings(&["microsoft\\.com\\.$"]), ..Default::default() }, (0..8).collect()),
            (pb::FlowFilter { dns_query: strings(&["^evil"]), ..Default::default() }, vec![]),
            (pb::FlowFilter { destination_fqdn: strings(&["*.microsoft.com"]), ..Default::default() }, vec![8]),
            (pb::FlowFilter { destination_fqdn: strings(&["www.microsoft.com."]), ..Default::default() }, vec![8]),
            (pb::FlowFilter { source_fqdn: strings(&["*"]), ..Default::default() }, vec![]),
            (
                pb::FlowFilter { traffic_direction: vec![pb::TrafficDirection::Egress as i32], ..Default::default() },
                all.clone(),
            ),
            (
                pb::FlowFilter { traffic_direction: vec![pb::TrafficDirection::Ingress as i32], ..Default::default() },
                vec![],
            ),
            (
                pb::FlowFilter { node_name: strings(&["node*"]), ..Default::default() },
                vec![0, 1, 2, 3, 4, 5, 6, 8, 9, 10],
            ),
            (
                pb::FlowFilter { node_name: strings(&["default/node1"]), ..Default::default() },
                vec![0, 1, 2, 3, 4, 5, 6, 8, 9, 10],
            ),
            (pb::FlowFilter { node_name: strings(&["prod/"]), ..Default::default() }, vec![]),
            (pb::FlowFilter { reply: vec![true], ..Default::default() }, vec![1, 2, 3, 5, 6]),
            (pb::FlowFilter { reply: vec![false], ..Default::default() }, vec![0, 4, 7, 8, 9, 10]),
            (pb::FlowFilter { destination_port: strings(&["443"]), ..Default::default() }, vec![8, 9, 10]),
            (pb::FlowFilter { source_port: strings(&["53"]), ..Default::default() }, vec![1, 2, 3, 5, 6]),
            (pb::FlowFilter { ip_version: vec![pb::IpVersion::IPv6 as i32], ..Default::default() }, vec![7, 10]),
            (pb::FlowFilter { destination_identity: vec![2], ..Default::default() }, vec![7, 8, 9, 10]),
            (
                pb::FlowFilter {
                    tcp_flags: vec![pb::TcpFlags { syn: true, ..Default::default() }],
                    ..Default::default()
                },
                vec![8, 10],
            ),
            (
                pb::FlowFilter {
                    tcp_flags: vec![pb::TcpFlags { ack: true, ..Default::default() }],
                    ..Default::default()
                },
                vec![10],
            ),
            (
                pb::FlowFilter { drop_reason_desc: vec![pb::DropReason::PolicyDenied as i32], ..Default::default() },
                vec![8, 9],
            ),
            (
                pb::FlowFilter { drop_reason_desc: vec![pb::DropReason::Unknown as i32], ..Default::default() },
                vec![4, 5],
            ),
            (pb::FlowFilter { source_label: strings(&["k8s:app=alpine"]), ..Default::default() }, vec![0, 4, 8, 9, 10]),
            (
                pb::FlowFilter { source_label: strings(&["app in (alpine, nginx)"]), ..Default::default() },
                vec![0, 4, 8, 9, 10],
            ),
            (
                pb::FlowFilter { destination_label: strings(&["reserved:world"]), ..Default::default() },
                vec![7, 8, 9, 10],
            ),
            (
                pb::FlowFilter {
                    destination_label: strings(&["k8s-app!=kube-dns,!reserved:world"]),
                    ..Default::default()
                },
                vec![1, 2, 3, 5, 6],
            ),
            (pb::FlowFilter { http_status_code: strings(&["200"]), ..Default::default() }, vec![]),
            (pb::FlowFilter { uuid: strings(&["x"]), ..Default::default() }, vec![]),
            // Fields AND within a filter.
            (
                pb::FlowFilter {
                    source_pod: strings(&["default/alpine"]),
                    verdict: vec![pb::Verdict::Dropped as i32],
                    protocol: strings(&["udp"]),
                    ..Default::default()
                },
                vec![4, 9],
            ),
        ];
        for (filter, want) in cases {
            assert_eq!(matching(filter.clone()), want, "{filter:?}");
        }
    }

    #[test]
    fn whitelist_is_or_blacklist_excludes() {
        let pod = |side_src: bool, p: &str| {
            if side_src {
                pb::FlowFilter { source_pod: strings(&[p]), ..Default::default() }
            } else {
                pb::FlowFilter { destination_pod: strings(&[p]), ..Default::default() }
            }
        };
        // hubble observe --pod kube-system/kube-dns --not --verdict DROPPED
        let set = FilterSet::compile(
            &[pod(true, "kube-system/kube-dns"), pod(false, "kube-system/kube-dns")],
            &[pb::FlowFilter { verdict: vec![pb::Verdict::Dropped as i32], ..Default::default() }],
        )
        .unwrap();
        let got: Vec<usize> = real_flows().iter().enumerate().filter(|(_, f)| set.matches(f)).map(|(i, _)| i).collect();
        assert_eq!(got, [0, 1, 2, 3, 6]);
        // An empty filter in the blacklist excludes everything.
        let none = FilterSet::compile(&[], &[pb::FlowFilter::default()]).unwrap();
        assert!(real_flows().iter().all(|f| !none.matches(f)));
    }

    #[test]
    fn bad_filters_are_named() {
        for (filter, want) in [
            (pb::FlowFilter { source_ip: strings(&["10.0.0.300"]), ..Default::default() }, "source_ip: \"10.0.0.300\""),
            (pb::FlowFilter { destination_pod: strings(&[""]), ..Default::default() }, "destination_pod: \"\""),
            (
                pb::FlowFilter { destination_port: strings(&["http"]), ..Default::default() },
                "destination_port: \"http\"",
            ),
            (
                pb::FlowFilter { destination_fqdn: strings(&["a b.com"]), ..Default::default() },
                "destination_fqdn: pattern",
            ),
            (pb::FlowFilter { node_name: strings(&["a/b/c"]), ..Default::default() }, "more than one '/'"),
            (pb::FlowFilter { dns_query: strings(&["(unclosed"]), ..Default::default() }, "dns_query: \"(unclosed\""),
            (pb::FlowFilter { protocol: strings(&["quic"]), ..Default::default() }, "unknown protocol \"quic\""),
            (pb::FlowFilter { source_label: strings(&["app in alpine"]), ..Default::default() }, "source_label"),
        ] {
            let err = FilterSet::compile(&[], &[pb::FlowFilter::default(), filter]).unwrap_err();
            let text = format!("{err}: {}", err.source);
            assert!(text.starts_with("blacklist[1]: ") && text.contains(want), "{text}");
        }
    }

    #[test]
    fn label_selector_grammar() {
        let labels = strings(&["k8s:app=alpine", "k8s:io.kubernetes.pod.namespace=default", "reserved:host"]);
        for (sel, want) in [
            ("app=alpine", true),
            ("app==alpine", true),
            ("k8s:app=alpine", true),
            ("any:app=alpine", true),
            ("container:app=alpine", false),
            ("app!=nginx", true),
            ("app!=alpine", false),
            ("tier!=web", true),
            ("app", true),
            ("!app", false),
            ("!tier", true),
            ("reserved:host", true),
            ("app in (nginx,alpine)", true),
            ("app notin (nginx, alpine)", false),
            ("app=alpine,io.kubernetes.pod.namespace=default", true),
            ("app=alpine,io.kubernetes.pod.namespace=kube-system", false),
            ("", true),
        ] {
            assert_eq!(LabelSelector::parse(sel).unwrap().matches(&labels), want, "{sel:?}");
        }
        for bad in ["app in alpine", "app ~ x", "=x", "a,,b", "!"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad:?}");
        }
    }
}
