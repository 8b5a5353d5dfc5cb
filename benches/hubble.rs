//! The agent-side cost, per flow, of what Hubble's API adds, beside what the admin socket's
//! follower (`fqdnd observe -f`) already costs: the admin line (serde JSON), the GetFlows message
//! (conversion to Hubble's protobuf and its encoding; HTTP/2 framing not included), a follower's
//! Hubble filter run under the hub's lock, and Hubble's dns/drop/flow metrics on every flow. The
//! flows are a DNS answer (the larger of a query's two flows) and a datapath drop.
//!
//! `cargo bench --bench hubble -- --warm-up-time 1 --measurement-time 3`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use dns_proxy::{DnsFlow, DnsFlowKind};
use fqdn_cache::{EndpointId, L4Proto};
use fqdnd::flows::convert::{NoNames, dns_flow, drop_flow};
use fqdnd::flows::{Flow, FlowResponse};
use fqdnd::hubble::convert::flow_response;
use fqdnd::hubble::filter::FilterSet;
use fqdnd::hubble::metrics::{HubbleMetrics, MetricsConfig, MetricsSetting, new_registry};
use fqdnd::hubble::proto::flow::FlowFilter;
use prost::Message;

fn endpoints() -> policy_sync::Snapshot {
    let ep = |ns: &str, name: &str, key: &str, ip: &str| policy_sync::endpoint::Endpoint {
        namespace: ns.into(),
        name: name.into(),
        labels: BTreeMap::from([(key.to_string(), name.to_string())]),
        ips: vec![ip.parse().unwrap()],
        ..Default::default()
    };
    let (a, d) = (ep("default", "alpine", "app", "10.0.1.5"), ep("kube-system", "kube-dns", "k8s-app", "10.96.0.10"));
    policy_sync::Snapshot::unpoliced([(EndpointId(7), a), (EndpointId(9), d)])
}

fn flows() -> Vec<(&'static str, Flow)> {
    let t = endpoints();
    let answer = DnsFlow {
        time: SystemTime::now(),
        kind: DnsFlowKind::Response,
        verdict: dns_proxy::Verdict::Forwarded,
        endpoint: Some(EndpointId(7)),
        client: "10.0.1.5:41234".parse().unwrap(),
        server: "10.96.0.10:53".parse().unwrap(),
        protocol: L4Proto::Udp,
        qname: "www.microsoft.com.".into(),
        qtype: 1,
        rcode: Some(0),
        ips: vec!["13.107.246.1".parse().unwrap(), "13.107.213.1".parse().unwrap()],
        ttl: Some(300),
        cnames: vec!["www.microsoft.com-c-3.edgekey.net.".into()],
        rrtypes: vec![5, 1],
        policy: Some(std::sync::Arc::new(policy_sync::PolicyRef {
            namespace: Some("default".into()),
            name: "allow".into(),
        })),
        latency: Some(Duration::from_micros(900)),
    };
    let drop = ebpf_redirect::DropEvent {
        endpoint: EndpointId(7),
        src: "10.0.1.5:43344".parse().unwrap(),
        dst: "13.107.1.1:443".parse().unwrap(),
        proto: L4Proto::Tcp,
        tcp_flags: 0x02,
        reason: ebpf_redirect::DropReason::PolicyDenied,
        direction: ebpf_redirect::Direction::Egress,
        rejected: false,
        audit: false,
        time: SystemTime::now(),
    };
    vec![("dns_answer", dns_flow(&answer, &t, "node-a")), ("drop", drop_flow(&drop, &t, &NoNames, "node-a"))]
}

fn per_flow(c: &mut Criterion) {
    // What `hubble observe --pod default/alpine --protocol dns` sends: one filter per end.
    let filters = FilterSet::compile(
        &[
            FlowFilter {
                source_pod: vec!["default/alpine".into()],
                protocol: vec!["dns".into()],
                ..Default::default()
            },
            FlowFilter {
                destination_pod: vec!["default/alpine".into()],
                protocol: vec!["dns".into()],
                ..Default::default()
            },
        ],
        &[],
    )
    .unwrap();
    let query_filter =
        FilterSet::compile(&[FlowFilter { dns_query: vec![r"\.microsoft\.com\.$".into()], ..Default::default() }], &[])
            .unwrap();
    let mut registry = new_registry();
    let metrics = MetricsConfig::parse(&MetricsSetting::One("dns,drop,flow".into())).unwrap();
    let plain = HubbleMetrics::register(&metrics, &mut registry);
    let context = MetricsConfig::parse(&MetricsSetting::One(
        "dns:sourceContext=pod;destinationContext=namespace,drop:sourceContext=pod,flow:labelsContext=source_namespace"
            .into(),
    ))
    .unwrap();
    let with_context = HubbleMetrics::register(&context, &mut new_registry());
    for (name, flow) in flows() {
        let mut g = c.benchmark_group(name);
        g.bench_function("admin_line_serde_json", |b| {
            b.iter(|| {
                let r = FlowResponse { flow: flow.clone(), node_name: "node-a".into(), time: flow.time };
                black_box(serde_json::to_vec(&r).unwrap())
            })
        });
        g.bench_function("getflows_message_protobuf", |b| {
            b.iter(|| black_box(flow_response(black_box(&flow), "node-a").encode_to_vec()))
        });
        g.bench_function("hubble_filter_two_pods_protocol", |b| {
            b.iter(|| black_box(filters.matches(black_box(&flow))))
        });
        g.bench_function("hubble_filter_dns_query_regex", |b| {
            b.iter(|| black_box(query_filter.matches(black_box(&flow))))
        });
        g.bench_function("hubble_metrics_dns_drop_flow", |b| {
            b.iter(|| fqdnd::flows::FlowObserver::observe(&plain, black_box(&flow)))
        });
        g.bench_function("hubble_metrics_with_context", |b| {
            b.iter(|| fqdnd::flows::FlowObserver::observe(&with_context, black_box(&flow)))
        });
        g.finish();
    }
}

criterion_group!(benches, per_flow);
criterion_main!(benches);
