//! Turning the proxy's `DnsFlow` and the datapath's `DropEvent` into Hubble-shaped flows: endpoints
//! named by namespace/pod and labels, drops annotated with the names the endpoint resolved to the IP.

use std::net::{IpAddr, SocketAddr};

use arc_swap::ArcSwap;
use dns_proxy::{DnsFlow, DnsFlowKind};
use ebpf_redirect::{Direction, DropEvent};
use fqdn_cache::{EndpointId, Enforcer, L4Proto};
use policy_sync::resolved::ports_allow;
use policy_sync::{PolicyRef, ResolvedEndpoint, Snapshot};

use super::model::{
    CiliumEventType, Dns, DropReason, EVENT_TYPE_ACCESS_LOG, EVENT_TYPE_DROP, Endpoint, Flow, FlowType, Ip, IpVersion,
    L7FlowType, Layer4, Layer7, Policy, Tcp, TcpFlags, TrafficDirection, Udp, Verdict,
};

/// Where the DNS flows come from, as Hubble's `observation_source` (Cilium's proxy says the same).
pub const OBSERVATION_SOURCE_PROXY: &str = "proxy";

/// An endpoint as flows name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub id: EndpointId,
    pub namespace: String,
    pub name: String,
    /// `k8s:key=value`, sorted, namespace label included (as Cilium shows pod labels).
    pub labels: Vec<String>,
}

impl EndpointInfo {
    pub fn from_resolved(e: &ResolvedEndpoint) -> Self {
        let ep = &e.endpoint;
        let labels = ep.effective_labels().into_iter().map(|(k, v)| format!("k8s:{k}={v}")).collect();
        EndpointInfo { id: e.id, namespace: ep.namespace.clone(), name: ep.name.clone(), labels }
    }

    fn to_flow_endpoint(&self) -> Endpoint {
        Endpoint {
            id: self.id.0,
            identity: identity_of(self.id),
            namespace: self.namespace.clone(),
            labels: self.labels.clone(),
            pod_name: self.name.clone(),
        }
    }
}

/// The security identity flows give an endpoint: its id (a 31-bit hash of namespace/name), moved
/// past Cilium's reserved identities (below 256) in the rare case it falls among them, so Hubble's
/// tools never read a pod as `world` or `host`.
pub fn identity_of(id: EndpointId) -> u32 {
    if id.0 < 256 { id.0 + 256 } else { id.0 }
}

/// A peer that is no endpoint fqdnd knows, as Hubble names it: Cilium's reserved identities
/// `host` (1) for the node's own loopback addresses and `world` (2) for everything else.
fn reserved_peer(ip: IpAddr) -> Endpoint {
    let (identity, label) = if ip.is_loopback() { (1, "reserved:host") } else { (2, "reserved:world") };
    Endpoint { id: 0, identity, namespace: String::new(), labels: vec![label.to_string()], pod_name: String::new() }
}

/// The flow endpoint of `ip`: the endpoint found for it, else its reserved identity.
fn peer(ep: Option<&EndpointInfo>, ip: IpAddr) -> Endpoint {
    ep.map(|e| e.to_flow_endpoint()).unwrap_or_else(|| reserved_peer(ip))
}

/// Who is who: the policy snapshot in force.
pub trait EndpointLookup: Send + Sync {
    fn by_id(&self, id: EndpointId) -> Option<EndpointInfo>;
    fn by_ip(&self, ip: IpAddr) -> Option<EndpointInfo>;

    /// The policies that decided a drop (or would have: audit): the deny rules matching it, or
    /// those that put the endpoint in default deny.
    fn denied_by(&self, _ev: &DropEvent) -> Vec<PolicyRef> {
        Vec::new()
    }
}

impl EndpointLookup for Snapshot {
    fn by_id(&self, id: EndpointId) -> Option<EndpointInfo> {
        Snapshot::by_id(self, id).map(|e| EndpointInfo::from_resolved(e))
    }

    fn by_ip(&self, ip: IpAddr) -> Option<EndpointInfo> {
        Snapshot::by_ip(self, ip).map(|e| EndpointInfo::from_resolved(e))
    }

    fn denied_by(&self, ev: &DropEvent) -> Vec<PolicyRef> {
        let Some(ep) = Snapshot::by_id(self, ev.endpoint) else { return Vec::new() };
        let p = &ep.policy;
        let (rules, defaults, peer) = match ev.direction {
            Direction::Egress => (&p.egress_denies, &p.egress_default_deny_by, ev.dst.ip()),
            Direction::Ingress => (&p.ingress_denies, &p.ingress_default_deny_by, ev.src.ip()),
        };
        match ev.reason {
            ebpf_redirect::DropReason::PolicyDeny => {
                let mut out: Vec<PolicyRef> = Vec::new();
                for r in rules {
                    if r.peer.contains(peer)
                        && ports_allow(&r.ports, ev.dst.port(), ev.proto)
                        && !out.contains(&r.policy)
                    {
                        out.push(r.policy.clone());
                    }
                }
                out
            }
            ebpf_redirect::DropReason::PolicyDenied => defaults.clone(),
            ebpf_redirect::DropReason::SpoofedSource => Vec::new(),
        }
    }
}

/// The agent's current snapshot, swapped on every policy change.
impl EndpointLookup for ArcSwap<Snapshot> {
    fn by_id(&self, id: EndpointId) -> Option<EndpointInfo> {
        EndpointLookup::by_id(self.load().as_ref(), id)
    }

    fn by_ip(&self, ip: IpAddr) -> Option<EndpointInfo> {
        EndpointLookup::by_ip(self.load().as_ref(), ip)
    }

    fn denied_by(&self, ev: &DropEvent) -> Vec<PolicyRef> {
        EndpointLookup::denied_by(self.load().as_ref(), ev)
    }
}

/// The names an endpoint resolved to an IP (the cache's `names_for_ip`), for drop flows.
pub trait NamesLookup: Send + Sync {
    fn names_for_ip(&self, endpoint: EndpointId, ip: IpAddr) -> Vec<String>;
}

/// No names known (no cache yet, or tests).
pub struct NoNames;

impl NamesLookup for NoNames {
    fn names_for_ip(&self, _: EndpointId, _: IpAddr) -> Vec<String> {
        Vec::new()
    }
}

impl NamesLookup for Enforcer {
    fn names_for_ip(&self, endpoint: EndpointId, ip: IpAddr) -> Vec<String> {
        Enforcer::names_for_ip(self, endpoint, ip)
    }
}

/// A DNS request or response seen by the proxy, as Hubble's proxy flows look: L7, observation
/// source `proxy`, responses flipped (source = the server) and marked `is_reply`.
pub fn dns_flow(f: &DnsFlow, lookup: &dyn EndpointLookup, node_name: &str) -> Flow {
    let client_ep = f.endpoint.and_then(|id| lookup.by_id(id)).or_else(|| lookup.by_ip(f.client.ip()));
    let server_ep = lookup.by_ip(f.server.ip());
    dns_flow_of(f, client_ep.as_ref(), server_ep.as_ref(), node_name)
}

/// [`dns_flow`] with its endpoints already found: the querying one (`client_ep`) and the server's.
pub fn dns_flow_of(
    f: &DnsFlow,
    client_ep: Option<&EndpointInfo>,
    server_ep: Option<&EndpointInfo>,
    node_name: &str,
) -> Flow {
    let is_reply = f.kind == DnsFlowKind::Response;
    let (src, dst, src_ep, dst_ep) =
        if is_reply { (f.server, f.client, server_ep, client_ep) } else { (f.client, f.server, client_ep, server_ep) };
    let rcode = f.rcode.map_or(0, u32::from);
    let dns = Dns {
        query: f.qname.to_string(),
        ips: f.ips.iter().map(IpAddr::to_string).collect(),
        ttl: f.ttl.unwrap_or(0),
        cnames: f.cnames.clone(),
        observation_source: OBSERVATION_SOURCE_PROXY.to_string(),
        rcode,
        qtypes: vec![f.qtype_name()],
        rrtypes: f.rrtypes.iter().map(|&t| dns_proxy::type_name(t)).collect(),
    };
    let summary = dns_summary(f, &dns);
    // The policy whose DNS rules refused the query (or would have: audit).
    let egress_denied_by = match f.verdict {
        dns_proxy::Verdict::Dropped | dns_proxy::Verdict::Audit => f.policy.iter().map(|p| Policy::of(p)).collect(),
        _ => Vec::new(),
    };
    Flow {
        time: f.time,
        verdict: f.verdict.into(),
        drop_reason: 0,
        ip: Some(ip_of(src, dst)),
        l4: l4_of(f.protocol, src, dst, None),
        source: Some(peer(src_ep, src.ip())),
        destination: Some(peer(dst_ep, dst.ip())),
        flow_type: FlowType::L7,
        node_name: node_name.to_string(),
        source_names: Vec::new(),
        destination_names: Vec::new(),
        l7: Some(Layer7 {
            l7_type: if is_reply { L7FlowType::Response } else { L7FlowType::Request },
            latency_ns: f.latency.map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0),
            dns: Some(dns),
        }),
        event_type: Some(CiliumEventType { event_type: EVENT_TYPE_ACCESS_LOG, sub_type: 0 }),
        traffic_direction: TrafficDirection::Egress,
        drop_reason_desc: None,
        is_reply: Some(is_reply),
        egress_denied_by,
        ingress_denied_by: Vec::new(),
        summary,
    }
}

/// A packet the datapath dropped. `names` are the names this endpoint resolved to the peer: the
/// destination of what it sent (egress), the source of what was sent to it (ingress).
pub fn drop_flow(ev: &DropEvent, lookup: &dyn EndpointLookup, names: &dyn NamesLookup, node_name: &str) -> Flow {
    let reason = DropReason::from(ev.reason);
    let flags = TcpFlags::from_byte(ev.tcp_flags);
    let (peer_ip, ours) = match ev.direction {
        Direction::Egress => (ev.dst.ip(), ev.src.ip()),
        Direction::Ingress => (ev.src.ip(), ev.dst.ip()),
    };
    let ours_ep = lookup.by_id(ev.endpoint).or_else(|| lookup.by_ip(ours));
    let peer_ep = lookup.by_ip(peer_ip);
    let peer_names: Vec<String> =
        names.names_for_ip(ev.endpoint, peer_ip).into_iter().map(|n| display_name(&n).to_string()).collect();
    let (src_ep, dst_ep, source_names, destination_names, traffic_direction) = match ev.direction {
        Direction::Egress => (ours_ep, peer_ep, Vec::new(), peer_names, TrafficDirection::Egress),
        Direction::Ingress => (peer_ep, ours_ep, peer_names, Vec::new(), TrafficDirection::Ingress),
    };
    let mut summary = match ev.proto {
        L4Proto::Tcp => format!("TCP Flags: {}", flags.names().join(", ")),
        L4Proto::Udp => "UDP".to_string(),
        L4Proto::Any => if ev.dst.is_ipv4() { "IPv4" } else { "IPv6" }.to_string(),
    };
    // `--deny-response reject`: Hubble's flow has no field for it; the summary says what was sent.
    if ev.rejected {
        summary.push_str(match ev.proto {
            L4Proto::Tcp => " (rejected: TCP RST sent)",
            _ if ev.dst.is_ipv4() => " (rejected: ICMP port unreachable sent)",
            _ => " (rejected: ICMPv6 port unreachable sent)",
        });
    }
    // A bare SYN opens a connection, so it cannot be a reply; for anything else the datapath does
    // not say (Hubble leaves is_reply out for drops for the same reason).
    let is_reply = (ev.proto == L4Proto::Tcp && flags.syn && !flags.ack).then_some(false);
    let denied_by: Vec<Policy> = lookup.denied_by(ev).iter().map(Policy::of).collect();
    let (egress_denied_by, ingress_denied_by) = match ev.direction {
        Direction::Egress => (denied_by, Vec::new()),
        Direction::Ingress => (Vec::new(), denied_by),
    };
    Flow {
        time: ev.time,
        verdict: if ev.audit { Verdict::Audit } else { Verdict::Dropped },
        drop_reason: reason.code(),
        ip: Some(ip_of(ev.src, ev.dst)),
        l4: l4_of(ev.proto, ev.src, ev.dst, Some(flags)),
        source: Some(peer(src_ep.as_ref(), ev.src.ip())),
        destination: Some(peer(dst_ep.as_ref(), ev.dst.ip())),
        flow_type: FlowType::L3L4,
        node_name: node_name.to_string(),
        source_names,
        destination_names,
        l7: None,
        event_type: Some(CiliumEventType { event_type: EVENT_TYPE_DROP, sub_type: reason.code() as i32 }),
        traffic_direction,
        drop_reason_desc: Some(reason),
        is_reply,
        egress_denied_by,
        ingress_denied_by,
        summary,
    }
}

/// Hubble shows names without the root dot (`api.github.com`), the cache keeps it.
fn display_name(name: &str) -> &str {
    if name.len() > 1 { name.strip_suffix('.').unwrap_or(name) } else { name }
}

fn ip_of(src: SocketAddr, dst: SocketAddr) -> Ip {
    Ip {
        source: src.ip().to_string(),
        destination: dst.ip().to_string(),
        ip_version: if src.is_ipv4() { IpVersion::IPv4 } else { IpVersion::IPv6 },
    }
}

fn l4_of(proto: L4Proto, src: SocketAddr, dst: SocketAddr, flags: Option<TcpFlags>) -> Option<Layer4> {
    let (source_port, destination_port) = (u32::from(src.port()), u32::from(dst.port()));
    match proto {
        L4Proto::Tcp => Some(Layer4::Tcp(Tcp { source_port, destination_port, flags })),
        L4Proto::Udp => Some(Layer4::Udp(Udp { source_port, destination_port })),
        L4Proto::Any => None,
    }
}

/// (number, the proxy's name for it, the text Hubble prints in summaries).
const RCODES: &[(u32, &str, &str)] = &[
    (0, "NoError", "No Error"),
    (1, "FormErr", "Format Error"),
    (2, "ServFail", "Server Failure"),
    (3, "NXDomain", "Non-Existent Domain"),
    (4, "NotImp", "Not Implemented"),
    (5, "Refused", "Query Refused"),
    (6, "YXDomain", "Name Exists when it should not"),
    (7, "YXRRSet", "RR Set Exists when it should not"),
    (8, "NXRRSet", "RR Set that should exist does not"),
    (9, "NotAuth", "Server Not Authoritative for zone"),
    (10, "NotZone", "Name not contained in zone"),
];

fn rcode_text(n: u32) -> String {
    RCODES.iter().find(|(c, _, _)| *c == n).map(|(_, _, t)| t.to_string()).unwrap_or_else(|| format!("{n}"))
}

/// Hubble's DNS summary for proxy flows.
fn dns_summary(f: &DnsFlow, dns: &Dns) -> String {
    let qtypes = dns.qtypes.join(",");
    match f.kind {
        DnsFlowKind::Request => format!("DNS Query {} {qtypes}", dns.query),
        DnsFlowKind::Response => {
            let answer = match dns.rcode {
                0 => {
                    let mut a = format!("{:?}", dns.ips.join(","));
                    if !dns.cnames.is_empty() {
                        a.push_str(&format!(" CNAMEs: {:?}", dns.cnames.join(",")));
                    }
                    a.push_str(&format!(" TTL: {}", dns.ttl));
                    a
                }
                n => format!("RCode: {}", rcode_text(n)),
            };
            format!("DNS Answer {answer} (Proxy {} {qtypes})", dns.query)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, SystemTime};

    use super::*;

    pub(crate) fn table() -> Snapshot {
        let alpine = policy_sync::endpoint::Endpoint {
            namespace: "default".into(),
            name: "alpine".into(),
            labels: BTreeMap::from([("app".to_string(), "alpine".to_string())]),
            ips: vec!["10.0.1.5".parse().unwrap()],
            interface: None,
            policy_audit_mode: false,
        };
        let dns = policy_sync::endpoint::Endpoint {
            namespace: "kube-system".into(),
            name: "kube-dns".into(),
            labels: BTreeMap::from([("k8s-app".to_string(), "kube-dns".to_string())]),
            ips: vec!["10.96.0.10".parse().unwrap()],
            interface: None,
            policy_audit_mode: false,
        };
        Snapshot::unpoliced([(EndpointId(7), alpine), (EndpointId(9), dns)])
    }

    pub(crate) fn dns_response() -> DnsFlow {
        DnsFlow {
            time: SystemTime::UNIX_EPOCH + Duration::new(1_701_079_201, 123_000_000),
            kind: DnsFlowKind::Response,
            verdict: dns_proxy::Verdict::Forwarded,
            endpoint: Some(EndpointId(7)),
            client: "10.0.1.5:41234".parse().unwrap(),
            server: "10.96.0.10:53".parse().unwrap(),
            protocol: L4Proto::Udp,
            qname: "www.microsoft.com.".into(),
            qtype: 1,
            rcode: Some(0),
            ips: vec!["13.107.1.1".parse().unwrap()],
            ttl: Some(300),
            cnames: vec![],
            rrtypes: vec![1],
            policy: Some(std::sync::Arc::new(PolicyRef { namespace: Some("default".into()), name: "allow-ms".into() })),
            latency: Some(Duration::from_micros(1500)),
        }
    }

    pub(crate) fn dns_request() -> DnsFlow {
        DnsFlow {
            kind: DnsFlowKind::Request,
            rcode: None,
            ips: vec![],
            ttl: None,
            rrtypes: vec![],
            latency: None,
            ..dns_response()
        }
    }

    pub(crate) fn drop_event() -> DropEvent {
        DropEvent {
            endpoint: EndpointId(7),
            direction: Direction::Egress,
            src: "10.0.1.5:43344".parse().unwrap(),
            dst: "13.107.1.1:443".parse().unwrap(),
            proto: L4Proto::Tcp,
            tcp_flags: 0x02,
            reason: ebpf_redirect::DropReason::PolicyDenied,
            rejected: false,
            audit: false,
            time: SystemTime::UNIX_EPOCH + Duration::new(1_701_079_202, 0),
        }
    }

    pub(crate) struct Names;

    impl NamesLookup for Names {
        fn names_for_ip(&self, endpoint: EndpointId, ip: IpAddr) -> Vec<String> {
            if endpoint == EndpointId(7) && ip == "13.107.1.1".parse::<IpAddr>().unwrap() {
                vec!["www.microsoft.com.".into()]
            } else {
                vec![]
            }
        }
    }

    #[test]
    fn request_names_both_ends_and_is_not_a_reply() {
        let f = dns_flow(&dns_request(), &table(), "node1");
        assert_eq!(f.source.as_ref().unwrap().pod_name, "alpine");
        assert_eq!(f.source.as_ref().unwrap().labels, ["k8s:app=alpine", "k8s:io.kubernetes.pod.namespace=default"]);
        assert_eq!(f.destination.as_ref().unwrap().pod_name, "kube-dns");
        assert_eq!(f.l4, Some(Layer4::Udp(Udp { source_port: 41234, destination_port: 53 })));
        assert_eq!(f.is_reply, Some(false));
        assert_eq!(f.summary, "DNS Query www.microsoft.com. A");
        assert_eq!(f.l7.as_ref().unwrap().l7_type, L7FlowType::Request);
    }

    #[test]
    fn response_is_flipped_and_summarised() {
        let f = dns_flow(&dns_response(), &table(), "node1");
        assert_eq!(f.ip.as_ref().unwrap().source, "10.96.0.10");
        assert_eq!(f.source.as_ref().unwrap().pod_name, "kube-dns");
        assert_eq!(f.destination.as_ref().unwrap().pod_name, "alpine");
        assert_eq!(f.l4, Some(Layer4::Udp(Udp { source_port: 53, destination_port: 41234 })));
        assert_eq!(f.is_reply, Some(true));
        assert_eq!(f.summary, r#"DNS Answer "13.107.1.1" TTL: 300 (Proxy www.microsoft.com. A)"#);
        assert_eq!(f.l7.as_ref().unwrap().latency_ns, 1_500_000);
    }

    #[test]
    fn response_summaries() {
        let base = dns_response();
        for (flow, want) in [
            (
                DnsFlow { rcode: Some(3), ips: vec![], ttl: None, ..base.clone() },
                "DNS Answer RCode: Non-Existent Domain (Proxy www.microsoft.com. A)",
            ),
            (
                DnsFlow { rcode: Some(5), ..base.clone() },
                "DNS Answer RCode: Query Refused (Proxy www.microsoft.com. A)",
            ),
            (
                DnsFlow {
                    cnames: vec!["a.msedge.net.".into()],
                    ips: vec!["13.107.1.1".parse().unwrap(), "13.107.1.2".parse().unwrap()],
                    qtype: 28,
                    ..base.clone()
                },
                r#"DNS Answer "13.107.1.1,13.107.1.2" CNAMEs: "a.msedge.net." TTL: 300 (Proxy www.microsoft.com. AAAA)"#,
            ),
            (
                DnsFlow { ips: vec![], ttl: None, ..base.clone() },
                r#"DNS Answer "" TTL: 0 (Proxy www.microsoft.com. A)"#,
            ),
        ] {
            assert_eq!(dns_flow(&flow, &table(), "").summary, want);
        }
    }

    #[test]
    fn drop_names_what_the_endpoint_resolved() {
        let f = drop_flow(&drop_event(), &table(), &Names, "node1");
        assert_eq!(f.destination_names, ["www.microsoft.com"]);
        let dst = f.destination.as_ref().unwrap();
        assert_eq!(
            (dst.identity, dst.labels.as_slice(), dst.pod_name.as_str()),
            (2, &["reserved:world".to_string()][..], "")
        );
        assert_eq!(f.source.as_ref().unwrap().pod_name, "alpine");
        assert_eq!(f.summary, "TCP Flags: SYN");
        assert_eq!(f.drop_reason, 133);
        assert_eq!(f.drop_reason_desc, Some(DropReason::PolicyDenied));
        assert_eq!(f.is_reply, Some(false));
        let udp = DropEvent { proto: L4Proto::Udp, tcp_flags: 0, ..drop_event() };
        let f = drop_flow(&udp, &table(), &NoNames, "");
        assert_eq!((f.summary.as_str(), f.is_reply), ("UDP", None));
        assert!(f.destination_names.is_empty());
        assert_eq!(f.traffic_direction, TrafficDirection::Egress);
    }

    #[test]
    fn rejected_drops_say_what_was_sent() {
        let tcp = drop_flow(&DropEvent { rejected: true, ..drop_event() }, &table(), &NoNames, "");
        assert_eq!((tcp.verdict, tcp.summary.as_str()), (Verdict::Dropped, "TCP Flags: SYN (rejected: TCP RST sent)"));
        let udp = DropEvent { rejected: true, proto: L4Proto::Udp, tcp_flags: 0, ..drop_event() };
        assert_eq!(drop_flow(&udp, &table(), &NoNames, "").summary, "UDP (rejected: ICMP port unreachable sent)");
    }

    #[test]
    fn ingress_drop_names_the_peer_as_source() {
        // 13.107.1.1 connecting to the pod's port 8080.
        let ev = DropEvent {
            direction: Direction::Ingress,
            src: "13.107.1.1:51000".parse().unwrap(),
            dst: "10.0.1.5:8080".parse().unwrap(),
            ..drop_event()
        };
        let f = drop_flow(&ev, &table(), &Names, "node1");
        assert_eq!(f.traffic_direction, TrafficDirection::Ingress);
        assert_eq!(f.ip.as_ref().unwrap().source, "13.107.1.1");
        assert_eq!(f.source.as_ref().unwrap().labels, ["reserved:world"]);
        assert_eq!(f.destination.as_ref().unwrap().pod_name, "alpine");
        assert_eq!(f.source_names, ["www.microsoft.com"]);
        assert!(f.destination_names.is_empty());
        assert_eq!(
            f.l4,
            Some(Layer4::Tcp(Tcp { source_port: 51000, destination_port: 8080, flags: Some(TcpFlags::from_byte(2)) }))
        );
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["traffic_direction"], "INGRESS");
    }

    #[test]
    fn unknown_peers_get_reserved_identities() {
        let mut req = dns_request();
        req.endpoint = None;
        req.client = "192.0.2.1:5000".parse().unwrap();
        req.server = "127.0.0.53:53".parse().unwrap();
        let f = dns_flow(&req, &table(), "");
        let (src, dst) = (f.source.clone().unwrap(), f.destination.clone().unwrap());
        assert_eq!((src.identity, src.labels, src.pod_name), (2, vec!["reserved:world".to_string()], String::new()));
        assert_eq!((dst.identity, dst.labels), (1, vec!["reserved:host".to_string()]));
        assert_eq!(f.ip.unwrap().source, "192.0.2.1");
    }
}
