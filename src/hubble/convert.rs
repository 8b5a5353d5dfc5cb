//! fqdnd's flow model and Hubble's protobuf messages, both ways. Model to protobuf is what the
//! Observer API sends; protobuf to model is how `fqdnd observe --server` prints compact lines with
//! the same code as the local path. For the flows fqdnd makes the round trip is lossless, and the
//! model's serde JSON is the protobuf JSON of the converted message (tests below).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;

use super::proto::flow as pb;
use super::proto::observer::{GetFlowsResponse, get_flows_response::ResponseTypes};
use crate::flows::model::{
    CiliumEventType, Dns, DropReason, Endpoint, Flow, FlowResponse, FlowType, Ip, IpVersion, L7FlowType, Layer4,
    Layer7, Policy, Tcp, TcpFlags, TrafficDirection, Udp, Verdict,
};

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    // Seconds since 1970 fit an i64 for any SystemTime; nanos are below 10^9.
    Timestamp { seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: d.subsec_nanos() as i32 }
}

/// A protobuf timestamp as a `SystemTime`; times before 1970 (which no flow has) become 1970.
pub fn system_time(t: &Timestamp) -> SystemTime {
    let secs = u64::try_from(t.seconds).unwrap_or(0);
    let nanos = u32::try_from(t.nanos).unwrap_or(0).min(999_999_999);
    UNIX_EPOCH + Duration::new(secs, nanos)
}

pub fn verdict_to_proto(v: Verdict) -> pb::Verdict {
    match v {
        Verdict::Unknown => pb::Verdict::Unknown,
        Verdict::Forwarded => pb::Verdict::Forwarded,
        Verdict::Dropped => pb::Verdict::Dropped,
        Verdict::Error => pb::Verdict::Error,
        Verdict::Audit => pb::Verdict::Audit,
    }
}

/// Hubble's other verdicts (REDIRECTED, TRACED, ...) have no place in fqdnd's model.
pub fn verdict_from_proto(v: i32) -> Verdict {
    match pb::Verdict::try_from(v) {
        Ok(pb::Verdict::Forwarded) => Verdict::Forwarded,
        Ok(pb::Verdict::Dropped) => Verdict::Dropped,
        Ok(pb::Verdict::Error) => Verdict::Error,
        Ok(pb::Verdict::Audit) => Verdict::Audit,
        _ => Verdict::Unknown,
    }
}

pub fn drop_reason_to_proto(r: DropReason) -> pb::DropReason {
    match r {
        DropReason::PolicyDenied => pb::DropReason::PolicyDenied,
        DropReason::PolicyDeny => pb::DropReason::PolicyDeny,
        DropReason::InvalidSourceIp => pb::DropReason::InvalidSourceIp,
    }
}

fn policy_to_proto(p: &Policy) -> pb::Policy {
    pb::Policy {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        labels: Vec::new(),
        revision: 0,
        kind: p.kind.clone(),
    }
}

fn policy_from_proto(p: &pb::Policy) -> Policy {
    Policy { name: p.name.clone(), namespace: p.namespace.clone(), kind: p.kind.clone() }
}

pub fn direction_to_proto(d: TrafficDirection) -> pb::TrafficDirection {
    match d {
        TrafficDirection::Unknown => pb::TrafficDirection::Unknown,
        TrafficDirection::Ingress => pb::TrafficDirection::Ingress,
        TrafficDirection::Egress => pb::TrafficDirection::Egress,
    }
}

fn endpoint_to_proto(e: &Endpoint) -> pb::Endpoint {
    pb::Endpoint {
        id: e.id,
        identity: e.identity,
        namespace: e.namespace.clone(),
        labels: e.labels.clone(),
        pod_name: e.pod_name.clone(),
    }
}

fn endpoint_from_proto(e: &pb::Endpoint) -> Endpoint {
    Endpoint {
        id: e.id,
        identity: e.identity,
        namespace: e.namespace.clone(),
        labels: e.labels.clone(),
        pod_name: e.pod_name.clone(),
    }
}

fn flags_to_proto(f: &TcpFlags) -> pb::TcpFlags {
    pb::TcpFlags {
        fin: f.fin,
        syn: f.syn,
        rst: f.rst,
        psh: f.psh,
        ack: f.ack,
        urg: f.urg,
        ece: f.ece,
        cwr: f.cwr,
        ns: false,
    }
}

fn flags_from_proto(f: &pb::TcpFlags) -> TcpFlags {
    TcpFlags { fin: f.fin, syn: f.syn, rst: f.rst, psh: f.psh, ack: f.ack, urg: f.urg, ece: f.ece, cwr: f.cwr }
}

fn l4_to_proto(l4: &Layer4) -> pb::Layer4 {
    let protocol = match l4 {
        Layer4::Tcp(t) => pb::layer4::Protocol::Tcp(pb::Tcp {
            source_port: t.source_port,
            destination_port: t.destination_port,
            flags: t.flags.as_ref().map(flags_to_proto),
        }),
        Layer4::Udp(u) => {
            pb::layer4::Protocol::Udp(pb::Udp { source_port: u.source_port, destination_port: u.destination_port })
        }
    };
    pb::Layer4 { protocol: Some(protocol) }
}

fn l4_from_proto(l4: &pb::Layer4) -> Option<Layer4> {
    match l4.protocol.as_ref()? {
        pb::layer4::Protocol::Tcp(t) => Some(Layer4::Tcp(Tcp {
            source_port: t.source_port,
            destination_port: t.destination_port,
            flags: t.flags.as_ref().map(flags_from_proto),
        })),
        pb::layer4::Protocol::Udp(u) => {
            Some(Layer4::Udp(Udp { source_port: u.source_port, destination_port: u.destination_port }))
        }
    }
}

fn dns_to_proto(d: &Dns) -> pb::Dns {
    pb::Dns {
        query: d.query.clone(),
        ips: d.ips.clone(),
        ttl: d.ttl,
        cnames: d.cnames.clone(),
        observation_source: d.observation_source.clone(),
        rcode: d.rcode,
        qtypes: d.qtypes.clone(),
        rrtypes: d.rrtypes.clone(),
    }
}

fn dns_from_proto(d: &pb::Dns) -> Dns {
    Dns {
        query: d.query.clone(),
        ips: d.ips.clone(),
        ttl: d.ttl,
        cnames: d.cnames.clone(),
        observation_source: d.observation_source.clone(),
        rcode: d.rcode,
        qtypes: d.qtypes.clone(),
        rrtypes: d.rrtypes.clone(),
    }
}

fn l7_to_proto(l7: &Layer7) -> pb::Layer7 {
    let l7_type = match l7.l7_type {
        L7FlowType::Unknown => pb::L7FlowType::UnknownL7Type,
        L7FlowType::Request => pb::L7FlowType::Request,
        L7FlowType::Response => pb::L7FlowType::Response,
    };
    pb::Layer7 {
        r#type: l7_type as i32,
        latency_ns: l7.latency_ns,
        record: l7.dns.as_ref().map(|d| pb::layer7::Record::Dns(dns_to_proto(d))),
    }
}

fn l7_from_proto(l7: &pb::Layer7) -> Layer7 {
    let l7_type = match pb::L7FlowType::try_from(l7.r#type) {
        Ok(pb::L7FlowType::Request) => L7FlowType::Request,
        Ok(pb::L7FlowType::Response) => L7FlowType::Response,
        _ => L7FlowType::Unknown,
    };
    let dns = l7.record.as_ref().map(|pb::layer7::Record::Dns(d)| dns_from_proto(d));
    Layer7 { l7_type, latency_ns: l7.latency_ns, dns }
}

pub fn flow_to_proto(f: &Flow) -> pb::Flow {
    let flow_type = match f.flow_type {
        FlowType::Unknown => pb::FlowType::UnknownType,
        FlowType::L3L4 => pb::FlowType::L3L4,
        FlowType::L7 => pb::FlowType::L7,
    };
    pb::Flow {
        time: Some(timestamp(f.time)),
        verdict: verdict_to_proto(f.verdict) as i32,
        drop_reason: f.drop_reason,
        ip: f.ip.as_ref().map(|ip| pb::Ip {
            source: ip.source.clone(),
            destination: ip.destination.clone(),
            ip_version: match ip.ip_version {
                IpVersion::NotUsed => pb::IpVersion::IpNotUsed,
                IpVersion::IPv4 => pb::IpVersion::IPv4,
                IpVersion::IPv6 => pb::IpVersion::IPv6,
            } as i32,
        }),
        l4: f.l4.as_ref().map(l4_to_proto),
        source: f.source.as_ref().map(endpoint_to_proto),
        destination: f.destination.as_ref().map(endpoint_to_proto),
        r#type: flow_type as i32,
        node_name: f.node_name.clone(),
        source_names: f.source_names.clone(),
        destination_names: f.destination_names.clone(),
        l7: f.l7.as_ref().map(l7_to_proto),
        event_type: f.event_type.map(|e| pb::CiliumEventType { r#type: e.event_type, sub_type: e.sub_type }),
        traffic_direction: direction_to_proto(f.traffic_direction) as i32,
        drop_reason_desc: f.drop_reason_desc.map(|r| drop_reason_to_proto(r) as i32).unwrap_or(0),
        is_reply: f.is_reply,
        summary: f.summary.clone(),
        egress_denied_by: f.egress_denied_by.iter().map(policy_to_proto).collect(),
        ingress_denied_by: f.ingress_denied_by.iter().map(policy_to_proto).collect(),
    }
}

/// A Hubble flow as fqdnd's model, for printing. What the model has no room for (verdicts such as
/// AUDIT, drop reasons fqdnd's datapath never produces, source names) is left out.
pub fn flow_from_proto(f: &pb::Flow) -> Flow {
    let flow_type = match pb::FlowType::try_from(f.r#type) {
        Ok(pb::FlowType::L3L4) => FlowType::L3L4,
        Ok(pb::FlowType::L7) => FlowType::L7,
        _ => FlowType::Unknown,
    };
    let traffic_direction = match pb::TrafficDirection::try_from(f.traffic_direction) {
        Ok(pb::TrafficDirection::Ingress) => TrafficDirection::Ingress,
        Ok(pb::TrafficDirection::Egress) => TrafficDirection::Egress,
        _ => TrafficDirection::Unknown,
    };
    Flow {
        time: f.time.as_ref().map(system_time).unwrap_or(UNIX_EPOCH),
        verdict: verdict_from_proto(f.verdict),
        drop_reason: f.drop_reason,
        ip: f.ip.as_ref().map(|ip| Ip {
            source: ip.source.clone(),
            destination: ip.destination.clone(),
            ip_version: match pb::IpVersion::try_from(ip.ip_version) {
                Ok(pb::IpVersion::IPv4) => IpVersion::IPv4,
                Ok(pb::IpVersion::IPv6) => IpVersion::IPv6,
                _ => IpVersion::NotUsed,
            },
        }),
        l4: f.l4.as_ref().and_then(l4_from_proto),
        source: f.source.as_ref().map(endpoint_from_proto),
        destination: f.destination.as_ref().map(endpoint_from_proto),
        flow_type,
        node_name: f.node_name.clone(),
        source_names: f.source_names.clone(),
        destination_names: f.destination_names.clone(),
        l7: f.l7.as_ref().map(l7_from_proto),
        event_type: f.event_type.as_ref().map(|e| CiliumEventType { event_type: e.r#type, sub_type: e.sub_type }),
        traffic_direction,
        drop_reason_desc: u32::try_from(f.drop_reason_desc).ok().and_then(DropReason::from_code),
        is_reply: f.is_reply,
        summary: f.summary.clone(),
        egress_denied_by: f.egress_denied_by.iter().map(policy_from_proto).collect(),
        ingress_denied_by: f.ingress_denied_by.iter().map(policy_from_proto).collect(),
    }
}

/// Hubble's `GetFlowsResponse` for a flow: the node it was seen on and its time beside it.
pub fn flow_response(f: &Flow, node_name: &str) -> GetFlowsResponse {
    GetFlowsResponse {
        response_types: Some(ResponseTypes::Flow(flow_to_proto(f))),
        node_name: node_name.to_string(),
        time: Some(timestamp(f.time)),
    }
}

/// The model's `FlowResponse` (what `fqdnd observe` prints) of a response carrying a flow.
pub fn flow_response_from_proto(r: &GetFlowsResponse) -> Option<FlowResponse> {
    match &r.response_types {
        Some(ResponseTypes::Flow(f)) => Some(FlowResponse {
            flow: flow_from_proto(f),
            node_name: r.node_name.clone(),
            time: r.time.as_ref().map(system_time).unwrap_or(UNIX_EPOCH),
        }),
        _ => None,
    }
}

/// Hubble's notice that `lost` flows did not reach this client: its queue overflowed.
pub fn lost_response(lost: u64, node_name: &str, now: SystemTime) -> GetFlowsResponse {
    GetFlowsResponse {
        response_types: Some(ResponseTypes::LostEvents(pb::LostEvent {
            source: pb::LostEventSource::ObserverEventsQueue as i32,
            num_events_lost: lost,
            cpu: None,
        })),
        node_name: node_name.to_string(),
        time: Some(timestamp(now)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::IpAddr;

    use dns_proxy::DnsFlow;
    use proptest::prelude::*;

    use super::*;
    use crate::flows::convert::tests::{Names, dns_request, dns_response, drop_event, table};
    use crate::flows::convert::{NoNames, dns_flow, drop_flow};
    use crate::hubble::json::response_json;

    /// Flows of every kind fqdnd makes: a request, answers with IPs and CNAMEs, NXDOMAIN, a
    /// refusal, a TCP query, IPv6, and datapath drops (TCP SYN to a resolved name, UDP, deny rule).
    pub(crate) fn real_flows() -> Vec<Flow> {
        let t = table();
        let cname = DnsFlow {
            qname: "www.microsoft.com.".into(),
            ips: vec!["13.107.1.1".parse().unwrap(), "2620:1ec::1".parse().unwrap()],
            cnames: vec!["www.microsoft.com-c-3.edgekey.net.".into(), "e13678.dscb.akamaiedge.net.".into()],
            qtype: 1,
            rrtypes: vec![5, 1],
            ..dns_response()
        };
        let nx = DnsFlow { rcode: Some(3), ips: vec![], ttl: None, rrtypes: vec![], ..dns_response() };
        let refused_req = DnsFlow { verdict: dns_proxy::Verdict::Dropped, ..dns_request() };
        let refused_resp = DnsFlow {
            verdict: dns_proxy::Verdict::Dropped,
            rcode: Some(3),
            ips: vec![],
            ttl: None,
            rrtypes: vec![],
            ..dns_response()
        };
        let tcp = DnsFlow { protocol: fqdn_cache::L4Proto::Tcp, ..dns_response() };
        let v6 = DnsFlow {
            client: "[fd00::5]:5353".parse().unwrap(),
            server: "[fd00::a]:53".parse().unwrap(),
            endpoint: None,
            qtype: 28,
            ..dns_request()
        };
        let udp_drop = ebpf_redirect::DropEvent { proto: fqdn_cache::L4Proto::Udp, tcp_flags: 0, ..drop_event() };
        let deny = ebpf_redirect::DropEvent {
            reason: ebpf_redirect::DropReason::PolicyDeny,
            dst: "[2001:db8::1]:443".parse().unwrap(),
            src: "[fd00::5]:40000".parse().unwrap(),
            tcp_flags: 0x12,
            ..drop_event()
        };
        vec![
            dns_flow(&dns_request(), &t, "node1"),
            dns_flow(&dns_response(), &t, "node1"),
            dns_flow(&cname, &t, "node1"),
            dns_flow(&nx, &t, "node1"),
            dns_flow(&refused_req, &t, "node1"),
            dns_flow(&refused_resp, &t, "node1"),
            dns_flow(&tcp, &t, "node1"),
            dns_flow(&v6, &t, ""),
            drop_flow(&drop_event(), &t, &Names, "node1"),
            drop_flow(&udp_drop, &t, &NoNames, "node1"),
            drop_flow(&deny, &t, &NoNames, "node1"),
        ]
    }

    fn model_line(f: &Flow, node: &str) -> String {
        serde_json::to_string(&FlowResponse { flow: f.clone(), node_name: node.to_string(), time: f.time }).unwrap()
    }

    #[test]
    fn observe_json_is_the_protobuf_json_of_the_grpc_message() {
        for f in real_flows() {
            let want = response_json(&flow_response(&f, "node1"));
            assert_eq!(model_line(&f, "node1"), want, "\nmodel vs protobuf JSON for {}", f.summary);
        }
    }

    #[test]
    fn round_trip_through_protobuf_is_lossless() {
        for f in real_flows() {
            let back = flow_response_from_proto(&flow_response(&f, "n")).unwrap();
            assert_eq!(back.flow, f);
            assert_eq!((back.node_name.as_str(), back.time), ("n", f.time));
        }
    }

    #[test]
    fn lost_events_carry_hubbles_source() {
        let r = lost_response(12, "n1", UNIX_EPOCH + Duration::from_secs(5));
        assert_eq!(
            response_json(&r),
            r#"{"lost_events":{"source":"OBSERVER_EVENTS_QUEUE","num_events_lost":"12"},"node_name":"n1","time":"1970-01-01T00:00:05Z"}"#
        );
        assert!(flow_response_from_proto(&r).is_none());
    }

    #[test]
    fn timestamps_both_ways() {
        for (secs, nanos) in [(0u64, 0u32), (1_701_079_201, 123_000_000), (1_701_079_201, 999_999_999)] {
            let t = UNIX_EPOCH + Duration::new(secs, nanos);
            assert_eq!(system_time(&timestamp(t)), t);
        }
        assert_eq!(system_time(&Timestamp { seconds: -5, nanos: 0 }), UNIX_EPOCH);
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-z0-9.-]{1,20}", "\\PC{0,8}"]
    }

    fn endpoint() -> impl Strategy<Value = Endpoint> {
        (any::<u32>(), any::<u32>(), text(), prop::collection::vec(text(), 0..3), text()).prop_map(
            |(id, identity, namespace, labels, pod_name)| Endpoint { id, identity, namespace, labels, pod_name },
        )
    }

    fn any_flow() -> impl Strategy<Value = Flow> {
        let verdict = prop::sample::select(vec![
            Verdict::Unknown,
            Verdict::Forwarded,
            Verdict::Dropped,
            Verdict::Error,
            Verdict::Audit,
        ]);
        let flow_type = prop::sample::select(vec![FlowType::Unknown, FlowType::L3L4, FlowType::L7]);
        let ip = prop::option::of(
            (text(), text(), prop::sample::select(vec![IpVersion::NotUsed, IpVersion::IPv4, IpVersion::IPv6]))
                .prop_map(|(source, destination, ip_version)| Ip { source, destination, ip_version }),
        );
        let l4 = prop::option::of(prop_oneof![
            (any::<u16>(), any::<u16>(), prop::option::of(any::<u8>())).prop_map(|(s, d, f)| Layer4::Tcp(Tcp {
                source_port: s.into(),
                destination_port: d.into(),
                flags: f.map(TcpFlags::from_byte),
            })),
            (any::<u16>(), any::<u16>())
                .prop_map(|(s, d)| Layer4::Udp(Udp { source_port: s.into(), destination_port: d.into() })),
        ]);
        let dns = (
            text(),
            prop::collection::vec(text(), 0..3),
            any::<u32>(),
            prop::collection::vec(text(), 0..2),
            text(),
            0u32..24,
            prop::collection::vec(text(), 0..2),
            prop::collection::vec(text(), 0..2),
        )
            .prop_map(|(query, ips, ttl, cnames, observation_source, rcode, qtypes, rrtypes)| Dns {
                query,
                ips,
                ttl,
                cnames,
                observation_source,
                rcode,
                qtypes,
                rrtypes,
            });
        let l7 = prop::option::of(
            (
                prop::sample::select(vec![L7FlowType::Unknown, L7FlowType::Request, L7FlowType::Response]),
                any::<u64>(),
                prop::option::of(dns),
            )
                .prop_map(|(l7_type, latency_ns, dns)| Layer7 { l7_type, latency_ns, dns }),
        );
        let event = prop::option::of(
            (any::<i32>(), any::<i32>()).prop_map(|(event_type, sub_type)| CiliumEventType { event_type, sub_type }),
        );
        let direction =
            prop::sample::select(vec![TrafficDirection::Unknown, TrafficDirection::Ingress, TrafficDirection::Egress]);
        let reason = prop::option::of(prop::sample::select(vec![
            DropReason::PolicyDenied,
            DropReason::PolicyDeny,
            DropReason::InvalidSourceIp,
        ]));
        let policies = || {
            prop::collection::vec(
                (text(), text(), text()).prop_map(|(name, namespace, kind)| Policy { name, namespace, kind }),
                0..2,
            )
        };
        // Up to the year 9999 (the RFC 3339 range), at any nanosecond.
        let time = (0u64..253_402_300_799, 0u32..1_000_000_000).prop_map(|(s, n)| UNIX_EPOCH + Duration::new(s, n));
        (
            (time, verdict, any::<u32>(), ip, l4, prop::option::of(endpoint()), prop::option::of(endpoint())),
            (flow_type, text(), prop::collection::vec(text(), 0..3), l7, event, direction, reason),
            (prop::option::of(any::<bool>()), text(), prop::collection::vec(text(), 0..2), policies(), policies()),
        )
            .prop_map(
                |(
                    (time, verdict, drop_reason, ip, l4, source, destination),
                    (flow_type, node_name, destination_names, l7, event_type, traffic_direction, drop_reason_desc),
                    (is_reply, summary, source_names, egress_denied_by, ingress_denied_by),
                )| Flow {
                    time,
                    verdict,
                    drop_reason,
                    ip,
                    l4,
                    source,
                    destination,
                    flow_type,
                    node_name,
                    source_names,
                    destination_names,
                    l7,
                    event_type,
                    traffic_direction,
                    drop_reason_desc,
                    is_reply,
                    summary,
                    egress_denied_by,
                    ingress_denied_by,
                },
            )
    }

    proptest! {
        #[test]
        fn any_model_flow_prints_as_its_protobuf_json(f in any_flow(), node in text()) {
            prop_assert_eq!(model_line(&f, &node), response_json(&flow_response(&f, &node)));
            let back = flow_response_from_proto(&flow_response(&f, &node)).unwrap();
            prop_assert_eq!(back.flow, f);
        }
    }

    #[test]
    fn ip_strings_are_what_the_proxy_wrote() {
        let f = dns_flow(&dns_response(), &table(), "");
        let p = flow_to_proto(&f);
        let ip = p.ip.unwrap();
        assert_eq!(ip.source.parse::<IpAddr>().unwrap(), "10.96.0.10".parse::<IpAddr>().unwrap());
        assert_eq!(ip.ip_version, pb::IpVersion::IPv4 as i32);
    }
}
