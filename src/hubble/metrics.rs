//! Hubble's flow metrics on fqdnd's `/metrics`, opt-in with `--hubble-metrics` (Hubble's
//! `--metrics` syntax: `dns,drop,flow`, options after a colon, `;` between them, e.g.
//! `dns:sourceContext=namespace;ignoreAAAA`). Names, label names and label values are those of
//! Hubble's handlers (cilium `pkg/hubble/metrics/{dns,drop,flow}`), so a Hubble Grafana dashboard
//! reads fqdnd's nodes:
//!
//! - `hubble_dns_queries_total{[context], rcode, qtypes, ips_returned}`: DNS requests (rcode ""),
//!   and queries the proxy refused (rcode "Policy denied");
//! - `hubble_dns_responses_total{[context], rcode, qtypes, ips_returned}`: answers, rcode by name;
//! - `hubble_dns_response_types_total{[context], type, qtypes}`: one per record type in an answer;
//! - `hubble_drop_total{[context], reason, protocol}`: datapath drops and refused queries;
//! - `hubble_flows_processed_total{protocol, type, subtype, verdict, [context]}`: every flow.
//!
//! Label values come from closed sets: query and record types outside a fixed list are `OTHER`,
//! `ips_returned` stops at `17+`, rcodes are Hubble's names. Per-pod labels appear only when a
//! context option asks for them (`pod`, `pod-short`, `namespace`, `identity`, `reserved-identity`,
//! `labelsContext=...`); Hubble's `query` option and the `dns` and `ip` contexts are refused: names
//! and addresses are not closed sets.
//!
//! fqdnd writes a refused query's answer as a flow of its own (Cilium's proxy writes only the
//! request); the DNS and drop metrics skip those answers so a refusal counts once, as in Cilium.

use std::borrow::Cow;
use std::fmt;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::convert::{drop_reason_to_proto, verdict_to_proto};
use super::proto::flow as pb;
use crate::flows::FlowObserver;
use crate::flows::model::{EVENT_TYPE_ACCESS_LOG, EVENT_TYPE_DROP, Endpoint, Flow, Layer4, TrafficDirection, Verdict};

/// The registry Hubble's metrics live in: its names start `hubble_`, not `fqdnd_`.
pub fn new_registry() -> Registry {
    Registry::with_prefix("hubble")
}

/// How a context label names an endpoint (Hubble's `sourceContext`/`destinationContext` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextId {
    Namespace,
    Pod,
    PodShort,
    Identity,
    ReservedIdentity,
}

impl ContextId {
    fn parse(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "namespace" => Ok(ContextId::Namespace),
            "pod" => Ok(ContextId::Pod),
            "pod-short" => Ok(ContextId::PodShort),
            "identity" => Ok(ContextId::Identity),
            "reserved-identity" => Ok(ContextId::ReservedIdentity),
            "dns" | "ip" => Err(format!(
                "{text}: names and IP addresses are not a closed set of label values; use namespace, pod, \
                 pod-short, identity or reserved-identity"
            )),
            _ => Err(format!("{text}: unknown context (namespace, pod, pod-short, identity, reserved-identity)")),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ContextId::Namespace => "namespace",
            ContextId::Pod => "pod",
            ContextId::PodShort => "pod-short",
            ContextId::Identity => "identity",
            ContextId::ReservedIdentity => "reserved-identity",
        }
    }

    fn value(self, e: Option<&Endpoint>) -> String {
        let Some(e) = e else { return String::new() };
        let with_ns =
            |name: &str| if e.namespace.is_empty() { name.to_string() } else { format!("{}/{name}", e.namespace) };
        match self {
            ContextId::Namespace => e.namespace.clone(),
            ContextId::Pod => with_ns(&e.pod_name),
            ContextId::PodShort => with_ns(&short_pod_name(&e.pod_name)),
            ContextId::Identity => e.labels.join(","),
            ContextId::ReservedIdentity => {
                const KUBE_APISERVER: &str = "reserved:kube-apiserver";
                if e.labels.iter().any(|l| l == KUBE_APISERVER) {
                    KUBE_APISERVER.to_string()
                } else {
                    e.labels.iter().find(|l| l.starts_with("reserved:")).cloned().unwrap_or_default()
                }
            }
        }
    }
}

/// Hubble's `pod-short`: the name without its one or two generated suffixes (`-5f7c9d-x2lqp`).
fn short_pod_name(name: &str) -> String {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| Regex::new("^(.+?)(-[a-z0-9]+){1,2}$").expect("literal"));
    re.replace(name, "${1}").into_owned()
}

/// Hubble's `labelsContext` labels, in Hubble's order (label names and values follow it).
const CONTEXT_LABELS: [&str; 9] = [
    "source_pod",
    "source_namespace",
    "source_workload",
    "source_app",
    "destination_pod",
    "destination_namespace",
    "destination_workload",
    "destination_app",
    "traffic_direction",
];

/// The app label Hubble reads (`source_app`), by precedence.
const APP_LABELS: [&str; 3] = ["k8s:app.kubernetes.io/name", "k8s:k8s-app", "k8s:app"];

fn app_of(e: Option<&Endpoint>) -> String {
    let labels = e.map(|e| e.labels.as_slice()).unwrap_or_default();
    labels
        .iter()
        .find_map(|l| {
            APP_LABELS
                .iter()
                .find_map(|app| l.strip_prefix(app).and_then(|v| v.strip_prefix('=')))
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_default()
        .to_string()
}

/// The context labels of one metric.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContextOptions {
    pub source: Vec<ContextId>,
    pub destination: Vec<ContextId>,
    /// Indexes into [`CONTEXT_LABELS`], ascending.
    pub labels: Vec<usize>,
}

impl ContextOptions {
    fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.labels.iter().map(|&i| CONTEXT_LABELS[i]).collect();
        if !self.source.is_empty() {
            names.push("source");
        }
        if !self.destination.is_empty() {
            names.push("destination");
        }
        names
    }

    fn values(&self, f: &Flow) -> Vec<String> {
        let (src, dst) = (f.source.as_ref(), f.destination.as_ref());
        let mut values: Vec<String> = self
            .labels
            .iter()
            .map(|&i| match CONTEXT_LABELS[i] {
                "source_pod" => src.map(|e| e.pod_name.clone()).unwrap_or_default(),
                "source_namespace" => src.map(|e| e.namespace.clone()).unwrap_or_default(),
                "source_app" => app_of(src),
                "destination_pod" => dst.map(|e| e.pod_name.clone()).unwrap_or_default(),
                "destination_namespace" => dst.map(|e| e.namespace.clone()).unwrap_or_default(),
                "destination_app" => app_of(dst),
                "traffic_direction" => match f.traffic_direction {
                    TrafficDirection::Unknown => "unknown",
                    TrafficDirection::Ingress => "ingress",
                    TrafficDirection::Egress => "egress",
                }
                .to_string(),
                // fqdnd's endpoints carry no workload (Deployment, ...) names.
                _ => String::new(),
            })
            .collect();
        // The first identifier that names the endpoint wins, as in Hubble.
        let pick = |ids: &[ContextId], e| ids.iter().map(|id| id.value(e)).find(|v| !v.is_empty()).unwrap_or_default();
        if !self.source.is_empty() {
            values.push(pick(&self.source, src));
        }
        if !self.destination.is_empty() {
            values.push(pick(&self.destination, dst));
        }
        values
    }

    fn write(&self, out: &mut Vec<String>) {
        let ids = |v: &[ContextId]| v.iter().map(|c| c.as_str()).collect::<Vec<_>>().join("|");
        if !self.source.is_empty() {
            out.push(format!("sourceContext={}", ids(&self.source)));
        }
        if !self.destination.is_empty() {
            out.push(format!("destinationContext={}", ids(&self.destination)));
        }
        if !self.labels.is_empty() {
            let names: Vec<&str> = self.labels.iter().map(|&i| CONTEXT_LABELS[i]).collect();
            out.push(format!("labelsContext={}", names.join(",")));
        }
    }
}

/// Which Hubble metrics are on, with their options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    pub dns: Option<DnsOptions>,
    pub drop: Option<ContextOptions>,
    pub flow: Option<ContextOptions>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsOptions {
    pub context: ContextOptions,
    /// Hubble's `ignoreAAAA`: AAAA-only queries are not counted.
    pub ignore_aaaa: bool,
}

/// The config file's value: one string in the flag's syntax, or a list of metrics (YAML, where
/// `labelsContext`'s commas need no care).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum MetricsSetting {
    One(String),
    Many(Vec<String>),
}

/// Hubble metrics fqdnd does not produce (no HTTP, Kafka, ICMP, TCP-flag or policy-verdict flows).
const NOT_PRODUCED: [&str; 11] = [
    "http",
    "httpV2",
    "kafka",
    "icmp",
    "tcp",
    "port-distribution",
    "flows-to-world",
    "policy",
    "sctp",
    "flows-per-pod",
    "nld",
];

impl MetricsConfig {
    /// Parse `--hubble-metrics` text or the config file's list. Every problem is reported.
    pub fn parse(setting: &MetricsSetting) -> Result<Self, Vec<String>> {
        let items: Vec<String> = match setting {
            MetricsSetting::One(text) => split_metrics(text),
            MetricsSetting::Many(list) => list.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        };
        let mut cfg = MetricsConfig::default();
        let mut problems = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for item in &items {
            let (name, options) = item.split_once(':').unwrap_or((item.as_str(), ""));
            if !seen.insert(name) {
                problems.push(format!("{name}: listed twice"));
                continue;
            }
            match name {
                "dns" => match parse_options(name, options, true) {
                    Ok((context, ignore_aaaa)) => cfg.dns = Some(DnsOptions { context, ignore_aaaa }),
                    Err(mut p) => problems.append(&mut p),
                },
                "drop" | "flow" => match parse_options(name, options, false) {
                    Ok((context, _)) if name == "drop" => cfg.drop = Some(context),
                    Ok((context, _)) => cfg.flow = Some(context),
                    Err(mut p) => problems.append(&mut p),
                },
                _ if NOT_PRODUCED.contains(&name) => {
                    problems.push(format!("{name}: a Hubble metric fqdnd has no flows for (it has dns, drop and flow)"))
                }
                _ => problems.push(format!("{name:?}: unknown metric (dns, drop or flow)")),
            }
        }
        if problems.is_empty() { Ok(cfg) } else { Err(problems) }
    }

    pub fn is_empty(&self) -> bool {
        self.dns.is_none() && self.drop.is_none() && self.flow.is_none()
    }
}

/// Split flag text into metrics: by whitespace (Hubble's config map) and commas (its flag), but a
/// comma inside `labelsContext=a,b` separates labels, not metrics.
fn split_metrics(text: &str) -> Vec<String> {
    let mut items: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        for piece in word.split(',') {
            if piece.is_empty() {
                continue;
            }
            let continues_labels = !piece.contains(':')
                && CONTEXT_LABELS.contains(&piece)
                && items.last().is_some_and(|last| last.to_ascii_lowercase().contains("labelscontext="));
            match items.last_mut() {
                Some(last) if continues_labels => {
                    last.push(',');
                    last.push_str(piece);
                }
                _ => items.push(piece.to_string()),
            }
        }
    }
    items
}

fn parse_options(metric: &str, text: &str, dns: bool) -> Result<(ContextOptions, bool), Vec<String>> {
    let mut ctx = ContextOptions::default();
    let mut ignore_aaaa = false;
    let mut problems = Vec::new();
    for opt in text.split(';').map(str::trim).filter(|o| !o.is_empty()) {
        let (key, value) = opt.split_once('=').map(|(k, v)| (k.trim(), v.trim())).unwrap_or((opt, ""));
        let ids = |v: &str, problems: &mut Vec<String>| -> Vec<ContextId> {
            v.split('|')
                .filter_map(|id| {
                    ContextId::parse(id.trim()).map_err(|e| problems.push(format!("{metric}:{key}={e}"))).ok()
                })
                .collect()
        };
        match key.to_ascii_lowercase().as_str() {
            "sourcecontext" => ctx.source = ids(value, &mut problems),
            "destinationcontext" => ctx.destination = ids(value, &mut problems),
            "labelscontext" => {
                let mut labels = Vec::new();
                for l in value.split(',').map(str::trim) {
                    match CONTEXT_LABELS.iter().position(|c| *c == l) {
                        Some(i) => labels.push(i),
                        None => problems
                            .push(format!("{metric}:labelsContext: {l:?} is not one of {}", CONTEXT_LABELS.join(", "))),
                    }
                }
                labels.sort_unstable();
                labels.dedup();
                ctx.labels = labels;
            }
            "ignoreaaaa" if dns => ignore_aaaa = true,
            "query" if dns => problems.push(format!(
                "{metric}:query: fqdnd never labels metrics with query names (an unbounded set of series)"
            )),
            _ => problems.push(format!(
                "{metric}:{key}: unknown option (sourceContext, destinationContext, labelsContext{})",
                if dns { ", ignoreAAAA" } else { "" }
            )),
        }
    }
    if problems.is_empty() { Ok((ctx, ignore_aaaa)) } else { Err(problems) }
}

impl fmt::Display for MetricsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut metrics = Vec::new();
        let mut one = |name: &str, ctx: &ContextOptions, extra: &[&str]| {
            let mut opts = Vec::new();
            ctx.write(&mut opts);
            opts.extend(extra.iter().map(|s| s.to_string()));
            if opts.is_empty() {
                metrics.push(name.to_string())
            } else {
                metrics.push(format!("{name}:{}", opts.join(";")))
            }
        };
        if let Some(d) = &self.dns {
            one("dns", &d.context, if d.ignore_aaaa { &["ignoreAAAA"] } else { &[] });
        }
        if let Some(c) = &self.drop {
            one("drop", c, &[]);
        }
        if let Some(c) = &self.flow {
            one("flow", c, &[]);
        }
        // Metrics are written one per item (space-separated, Hubble's config map form), so
        // labelsContext's commas stay unambiguous.
        f.write_str(&metrics.join(" "))
    }
}

impl Serialize for MetricsConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

type Labels = Vec<(&'static str, Cow<'static, str>)>;

fn labelled(names: &[&'static str], values: Vec<String>) -> Labels {
    names.iter().copied().zip(values.into_iter().map(Cow::Owned)).collect()
}

/// Query and record types with a label value of their own (fqdnd's own qtype set, plus the record
/// types answers carry); the rest are `OTHER`.
const RR_TYPES: [&str; 18] = [
    "A", "AAAA", "CNAME", "SRV", "TXT", "PTR", "MX", "NS", "SOA", "HTTPS", "SVCB", "ANY", "DNAME", "RRSIG", "CAA",
    "NAPTR", "DS", "DNSKEY",
];

fn rr_type(t: &str) -> &'static str {
    RR_TYPES.iter().find(|k| k.eq_ignore_ascii_case(t)).copied().unwrap_or("OTHER")
}

/// Hubble joins a query's types with commas; a query has one in practice, at most four are kept.
fn qtypes_label(qtypes: &[String]) -> Cow<'static, str> {
    match qtypes {
        [] => Cow::Borrowed(""),
        [one] => Cow::Borrowed(rr_type(one)),
        many => Cow::Owned(many.iter().take(4).map(|q| rr_type(q)).collect::<Vec<_>>().join(",")),
    }
}

const IPS_RETURNED: [&str; 18] =
    ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16", "17+"];

fn ips_returned(n: usize) -> &'static str {
    IPS_RETURNED[n.min(IPS_RETURNED.len() - 1)]
}

/// Hubble's rcode names (`pkg/hubble/metrics/dns/rcode.go`); unknown codes are "".
fn rcode_name(rcode: u32) -> &'static str {
    match rcode {
        0 => "No Error",
        1 => "Format Error",
        2 => "Server Failure",
        3 => "Non-Existent Domain",
        4 => "Not Implemented",
        5 => "Query Refused",
        6 => "Name Exists when it should not",
        7 => "RR Set Exists when it should not",
        8 => "RR Set that should exist does not",
        9 => "Not Authorized",
        10 => "Name not contained in zone",
        11 => "DSO-TYPE Not Implemented",
        16 => "Bad OPT Version",
        17 => "Key not recognized",
        18 => "Signature out of time window",
        19 => "Bad TKEY Mode",
        20 => "Duplicate key name",
        21 => "Algorithm not supported",
        22 => "Bad Truncation",
        23 => "Bad/missing Server Cookie",
        _ => "",
    }
}

/// Hubble's `FlowProtocol`: the L7 protocol of access-log flows, the L4 one of drops.
fn flow_protocol(f: &Flow) -> &'static str {
    match f.event_type.map(|e| e.event_type) {
        Some(EVENT_TYPE_ACCESS_LOG) => {
            if f.l7.as_ref().is_some_and(|l7| l7.dns.is_some()) {
                "DNS"
            } else {
                "Unknown L7"
            }
        }
        Some(EVENT_TYPE_DROP) => match f.l4 {
            Some(Layer4::Tcp(_)) => "TCP",
            Some(Layer4::Udp(_)) => "UDP",
            None => "Unknown L4",
        },
        _ => "Unknown flow",
    }
}

/// A refused query's answer, which Cilium's proxy does not write as a flow (see the module doc).
fn is_refusal_answer(f: &Flow) -> bool {
    f.verdict == Verdict::Dropped && f.is_reply == Some(true) && f.l7.as_ref().is_some_and(|l7| l7.dns.is_some())
}

struct DnsMetrics {
    opts: DnsOptions,
    names: Vec<&'static str>,
    queries: Family<Labels, Counter>,
    responses: Family<Labels, Counter>,
    response_types: Family<Labels, Counter>,
}

impl DnsMetrics {
    fn observe(&self, f: &Flow) {
        let Some(dns) = f.l7.as_ref().and_then(|l7| l7.dns.as_ref()) else { return };
        if self.opts.ignore_aaaa && dns.qtypes.len() == 1 && dns.qtypes[0] == "AAAA" {
            return;
        }
        if is_refusal_answer(f) {
            return;
        }
        let ctx = self.opts.context.values(f);
        let qtypes = qtypes_label(&dns.qtypes);
        let ips = Cow::Borrowed(ips_returned(dns.ips.len()));
        let with = |mut l: Labels, rest: [(&'static str, Cow<'static, str>); 3]| {
            l.extend(rest);
            l
        };
        let base = labelled(&self.names, ctx);
        if f.verdict == Verdict::Dropped {
            let l = with(base, [("rcode", "Policy denied".into()), ("qtypes", qtypes), ("ips_returned", ips)]);
            self.queries.get_or_create(&l).inc();
        } else if f.is_reply != Some(true) {
            let l = with(base, [("rcode", "".into()), ("qtypes", qtypes), ("ips_returned", ips)]);
            self.queries.get_or_create(&l).inc();
        } else {
            let l = with(
                base.clone(),
                [("rcode", rcode_name(dns.rcode).into()), ("qtypes", qtypes.clone()), ("ips_returned", ips)],
            );
            self.responses.get_or_create(&l).inc();
            for rr in &dns.rrtypes {
                let mut l = base.clone();
                l.extend([("type", Cow::Borrowed(rr_type(rr))), ("qtypes", qtypes.clone())]);
                self.response_types.get_or_create(&l).inc();
            }
        }
    }
}

struct DropMetrics {
    ctx: ContextOptions,
    names: Vec<&'static str>,
    drops: Family<Labels, Counter>,
}

impl DropMetrics {
    fn observe(&self, f: &Flow) {
        if f.verdict != Verdict::Dropped || is_refusal_answer(f) {
            return;
        }
        let reason = f.drop_reason_desc.map(drop_reason_to_proto).unwrap_or(pb::DropReason::Unknown);
        let mut l = labelled(&self.names, self.ctx.values(f));
        l.extend([("reason", Cow::Borrowed(reason.as_str_name())), ("protocol", Cow::Borrowed(flow_protocol(f)))]);
        self.drops.get_or_create(&l).inc();
    }
}

struct FlowMetrics {
    ctx: ContextOptions,
    names: Vec<&'static str>,
    flows: Family<Labels, Counter>,
}

impl FlowMetrics {
    fn observe(&self, f: &Flow) {
        let (kind, subtype) = match f.event_type.map(|e| e.event_type) {
            Some(EVENT_TYPE_ACCESS_LOG) => {
                ("L7", if f.l7.as_ref().is_some_and(|l| l.dns.is_some()) { "DNS" } else { "" })
            }
            Some(EVENT_TYPE_DROP) => ("Drop", ""),
            _ => ("Unknown", ""),
        };
        let mut l: Labels = vec![
            ("protocol", Cow::Borrowed(flow_protocol(f))),
            ("type", Cow::Borrowed(kind)),
            ("subtype", Cow::Borrowed(subtype)),
            ("verdict", Cow::Borrowed(verdict_to_proto(f.verdict).as_str_name())),
        ];
        l.extend(labelled(&self.names, self.ctx.values(f)));
        self.flows.get_or_create(&l).inc();
    }
}

/// The enabled Hubble metrics, fed every flow by the hub.
pub struct HubbleMetrics {
    dns: Option<DnsMetrics>,
    drop: Option<DropMetrics>,
    flow: Option<FlowMetrics>,
}

impl HubbleMetrics {
    /// Register the metrics `cfg` enables into `registry` (from [`new_registry`]).
    pub fn register(cfg: &MetricsConfig, registry: &mut Registry) -> Self {
        let dns = cfg.dns.as_ref().map(|opts| {
            let m = DnsMetrics {
                names: opts.context.names(),
                opts: opts.clone(),
                queries: Family::default(),
                responses: Family::default(),
                response_types: Family::default(),
            };
            registry.register("dns_queries", "Number of DNS queries observed", m.queries.clone());
            registry.register("dns_responses", "Number of DNS responses observed", m.responses.clone());
            registry.register(
                "dns_response_types",
                "Number of records in DNS responses observed, by record type",
                m.response_types.clone(),
            );
            m
        });
        let drop = cfg.drop.as_ref().map(|ctx| {
            let m = DropMetrics { names: ctx.names(), ctx: ctx.clone(), drops: Family::default() };
            registry.register("drop", "Number of drops", m.drops.clone());
            m
        });
        let flow = cfg.flow.as_ref().map(|ctx| {
            let m = FlowMetrics { names: ctx.names(), ctx: ctx.clone(), flows: Family::default() };
            registry.register("flows_processed", "Total number of flows processed", m.flows.clone());
            m
        });
        HubbleMetrics { dns, drop, flow }
    }
}

impl FlowObserver for HubbleMetrics {
    fn observe(&self, f: &Flow) {
        if let Some(m) = &self.dns {
            m.observe(f);
        }
        if let Some(m) = &self.drop {
            m.observe(f);
        }
        if let Some(m) = &self.flow {
            m.observe(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hubble::convert::tests::real_flows;

    fn parse(text: &str) -> Result<MetricsConfig, Vec<String>> {
        MetricsConfig::parse(&MetricsSetting::One(text.to_string()))
    }

    fn page(cfg: &str) -> String {
        let mut registry = new_registry();
        let m = HubbleMetrics::register(&parse(cfg).unwrap(), &mut registry);
        for f in real_flows() {
            m.observe(&f);
        }
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &registry).unwrap();
        s
    }

    #[test]
    fn hubble_names_labels_and_values() {
        let text = page("dns,drop,flow");
        // real_flows(): 2 requests (0, 7: IPv6, AAAA), 1 refused request (4) with its refused
        // answer (5, not counted), answers 1, 2 (two IPs, CNAME + A records), 3 (NXDOMAIN), 6 (TCP);
        // drops 8 (TCP), 9 (UDP), 10 (TCP, deny rule).
        for want in [
            "hubble_dns_queries_total{rcode=\"\",qtypes=\"A\",ips_returned=\"0\"} 1",
            "hubble_dns_queries_total{rcode=\"\",qtypes=\"AAAA\",ips_returned=\"0\"} 1",
            "hubble_dns_queries_total{rcode=\"Policy denied\",qtypes=\"A\",ips_returned=\"0\"} 1",
            "hubble_dns_responses_total{rcode=\"No Error\",qtypes=\"A\",ips_returned=\"1\"} 2",
            "hubble_dns_responses_total{rcode=\"No Error\",qtypes=\"A\",ips_returned=\"2\"} 1",
            "hubble_dns_responses_total{rcode=\"Non-Existent Domain\",qtypes=\"A\",ips_returned=\"0\"} 1",
            "hubble_dns_response_types_total{type=\"A\",qtypes=\"A\"} 3",
            "hubble_dns_response_types_total{type=\"CNAME\",qtypes=\"A\"} 1",
            "hubble_drop_total{reason=\"POLICY_DENIED\",protocol=\"TCP\"} 1",
            "hubble_drop_total{reason=\"POLICY_DENIED\",protocol=\"UDP\"} 1",
            "hubble_drop_total{reason=\"POLICY_DENY\",protocol=\"TCP\"} 1",
            "hubble_drop_total{reason=\"DROP_REASON_UNKNOWN\",protocol=\"DNS\"} 1",
            "hubble_flows_processed_total{protocol=\"DNS\",type=\"L7\",subtype=\"DNS\",verdict=\"FORWARDED\"} 6",
            "hubble_flows_processed_total{protocol=\"DNS\",type=\"L7\",subtype=\"DNS\",verdict=\"DROPPED\"} 2",
            "hubble_flows_processed_total{protocol=\"TCP\",type=\"Drop\",subtype=\"\",verdict=\"DROPPED\"} 2",
            "hubble_flows_processed_total{protocol=\"UDP\",type=\"Drop\",subtype=\"\",verdict=\"DROPPED\"} 1",
            "# TYPE hubble_dns_queries counter",
            "# TYPE hubble_flows_processed counter",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("microsoft"), "no query names as labels:\n{text}");
    }

    #[test]
    fn context_labels_only_when_asked() {
        let text = page(
            "dns:sourceContext=pod;destinationContext=namespace|identity,drop:labelsContext=source_namespace,source_app,traffic_direction flow:destinationContext=reserved-identity",
        );
        for want in [
            "hubble_dns_queries_total{source=\"default/alpine\",destination=\"kube-system\",rcode=\"\",qtypes=\"A\",ips_returned=\"0\"} 1",
            // The IPv6 request's ends are the world: no namespace, so identity names them.
            "hubble_dns_queries_total{source=\"\",destination=\"reserved:world\",rcode=\"\",qtypes=\"AAAA\",ips_returned=\"0\"} 1",
            "hubble_dns_responses_total{source=\"kube-system/kube-dns\",destination=\"default\",rcode=\"No Error\",qtypes=\"A\",ips_returned=\"1\"} 2",
            "hubble_drop_total{source_namespace=\"default\",source_app=\"alpine\",traffic_direction=\"egress\",reason=\"POLICY_DENIED\",protocol=\"TCP\"} 1",
            "hubble_flows_processed_total{protocol=\"TCP\",type=\"Drop\",subtype=\"\",verdict=\"DROPPED\",destination=\"reserved:world\"} 2",
            "hubble_flows_processed_total{protocol=\"DNS\",type=\"L7\",subtype=\"DNS\",verdict=\"FORWARDED\",destination=\"\"} 5",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn ignore_aaaa_and_closed_sets() {
        let text = page("dns:ignoreAAAA");
        assert!(!text.contains("qtypes=\"AAAA\""), "{text}");
        assert_eq!(rr_type("TYPE65280"), "OTHER");
        assert_eq!(rr_type("aaaa"), "AAAA");
        assert_eq!(ips_returned(3), "3");
        assert_eq!(ips_returned(400), "17+");
        assert_eq!(qtypes_label(&["A".into(), "WKS".into()]), "A,OTHER");
        assert_eq!(rcode_name(3), "Non-Existent Domain");
        assert_eq!(rcode_name(12), "");
        assert_eq!(short_pod_name("coredns-5d78c9869d-x2lqp"), "coredns");
        assert_eq!(short_pod_name("alpine"), "alpine");
    }

    #[test]
    fn config_syntax() {
        let full = parse(
            "dns:sourceContext=pod|namespace;ignoreAAAA,drop flow:labelsContext=source_namespace,destination_namespace",
        )
        .unwrap();
        assert_eq!(full.dns.as_ref().unwrap().context.source, [ContextId::Pod, ContextId::Namespace]);
        assert!(full.dns.as_ref().unwrap().ignore_aaaa);
        assert_eq!(full.drop, Some(ContextOptions::default()));
        assert_eq!(full.flow.as_ref().unwrap().labels, [1, 5]);
        assert_eq!(
            full.to_string(),
            "dns:sourceContext=pod|namespace;ignoreAAAA drop flow:labelsContext=source_namespace,destination_namespace"
        );
        // What Display writes parses back to the same.
        assert_eq!(parse(&full.to_string()).unwrap(), full);
        let list = MetricsConfig::parse(&MetricsSetting::Many(vec![
            "dns".into(),
            "flow:labelsContext=source_pod,source_app".into(),
        ]))
        .unwrap();
        assert_eq!(list.flow.unwrap().labels, [0, 3]);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn config_problems_all_reported() {
        let errs = parse("dns:query;sourceContext=ip,drop:ignoreAAAA,tcp,bogus,flow:destinationContext=dns|pod,flow,drop:labelsContext=pod_name").unwrap_err();
        for want in [
            "dns:query: fqdnd never labels metrics with query names",
            "dns:sourceContext=ip: names and IP addresses are not a closed set",
            "drop:ignoreAAAA: unknown option",
            "tcp: a Hubble metric fqdnd has no flows for",
            "\"bogus\": unknown metric",
            "flow:destinationContext=dns: names and IP addresses",
            "flow: listed twice",
            "drop: listed twice",
        ] {
            assert!(errs.iter().any(|e| e.contains(want)), "missing {want:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), 8, "{errs:#?}");
    }
}
