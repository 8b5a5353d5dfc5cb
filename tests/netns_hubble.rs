//! Hubble's Observer API and metrics of the real agent with the eBPF datapath: the seed's stage 4
//! in network namespaces (tests/common/topology.rs). The pod resolves www.microsoft.com (a DNS
//! request/response pair) and connects to www.google.com's address (dropped by the datapath);
//! GetFlows (tonic) returns those flows, their protobuf JSON is byte for byte what `fqdnd observe
//! -o json` prints for them, Hubble filters select the drop, and hubble_drop_total counts it.
//! Root only (see tests/common/privileged.rs). Run with --nocapture to see the lines side by side.

mod common;

use std::net::SocketAddr;

use common::hubble::client;
use common::privileged;
use common::topology::{Cluster, DROPPED_CONNECT, WWW_GOOGLE4, metric_sum, seed_stage};
use fqdnd::hubble::ServerAddr;
use fqdnd::hubble::json::response_json;
use fqdnd::hubble::proto::flow::{self as pb, FlowFilter};
use fqdnd::hubble::proto::observer::get_flows_response::ResponseTypes;
use fqdnd::hubble::proto::observer::{GetFlowsRequest, GetFlowsResponse};

fn flow(r: &GetFlowsResponse) -> &pb::Flow {
    match &r.response_types {
        Some(ResponseTypes::Flow(f)) => f,
        other => panic!("not a flow: {other:?}"),
    }
}

fn query(f: &pb::Flow) -> Option<&pb::Dns> {
    match f.l7.as_ref()?.record.as_ref()? {
        pb::layer7::Record::Dns(d) => Some(d),
    }
}

#[test]
fn stage4_flows_over_grpc_are_what_observe_prints() {
    if !privileged::available("stage4_flows_over_grpc_are_what_observe_prints") {
        return;
    }
    let mut c = Cluster::start_with(&["--hubble-metrics", "dns,drop,flow"]);
    c.set_policy("locking-down-alpine.yaml", &seed_stage(4));
    let r = c.dig("www.microsoft.com", "A", &[]).expect("dig www.microsoft.com");
    assert_eq!(r.status, "NOERROR", "{}", r.raw);
    let r = c.dig("www.google.com", "A", &[]).expect("dig www.google.com");
    assert_eq!(r.data("A"), [WWW_GOOGLE4.to_string()], "{}", r.raw);
    let (sport, res) = c.connect(SocketAddr::new(WWW_GOOGLE4, 443), DROPPED_CONNECT);
    assert!(res.is_err(), "stage 4 denies www.google.com's address");
    c.wait_flow(&["--type", "drop"], "for the denied connect", |f| f["l4"]["TCP"]["source_port"] == sport);

    let socket = c.state_dir().join("hubble.sock");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (all, drops, to_google) = runtime.block_on(async {
        let mut obs = client(&ServerAddr::Unix(socket.clone())).await;
        let get = |req: GetFlowsRequest| {
            let mut obs = obs.clone();
            async move {
                let mut s = obs.get_flows(req).await.expect("GetFlows").into_inner();
                let mut out = Vec::new();
                while let Some(r) = s.message().await.expect("stream") {
                    out.push(r);
                }
                out
            }
        };
        let all = get(GetFlowsRequest { number: 100_000, ..Default::default() }).await;
        let drops = get(GetFlowsRequest {
            number: 100,
            whitelist: vec![FlowFilter {
                event_type: vec![pb::EventTypeFilter { r#type: 1, ..Default::default() }],
                verdict: vec![pb::Verdict::Dropped as i32],
                source_pod: vec!["default/alpine".into()],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await;
        let to_google = get(GetFlowsRequest {
            number: 100,
            whitelist: vec![FlowFilter { destination_fqdn: vec!["*.google.com".into()], ..Default::default() }],
            ..Default::default()
        })
        .await;
        let _ = &mut obs;
        (all, drops, to_google)
    });

    // The seed's stage 4 in three flows: the request, its answer, the drop.
    let pick = |pred: &dyn Fn(&pb::Flow) -> bool, what: &str| {
        all.iter().find(|r| pred(flow(r))).unwrap_or_else(|| panic!("no {what} among {} flows", all.len())).clone()
    };
    let is_dns = |f: &pb::Flow, reply: bool| {
        query(f).is_some_and(|d| d.query == "www.microsoft.com." && d.qtypes == ["A"]) && f.is_reply == Some(reply)
    };
    let request = pick(&|f| is_dns(f, false), "request for www.microsoft.com. A");
    let answer = pick(&|f| is_dns(f, true), "answer for www.microsoft.com. A");
    let drop = pick(
        &|f| {
            f.verdict == pb::Verdict::Dropped as i32
                && matches!(f.l4.as_ref().and_then(|l| l.protocol), Some(pb::layer4::Protocol::Tcp(t)) if t.source_port == u32::from(sport))
        },
        "the drop",
    );
    let d = flow(&drop);
    assert_eq!(d.drop_reason_desc, pb::DropReason::PolicyDenied as i32);
    assert_eq!(d.destination_names, ["www.google.com"]);
    assert_eq!(d.event_type, Some(pb::CiliumEventType { r#type: 1, sub_type: 133 }));
    assert!(drops.iter().any(|r| r == &drop), "the event-type/verdict/pod filter selects the drop");
    assert!(drops.iter().all(|r| flow(r).verdict == pb::Verdict::Dropped as i32));
    assert_eq!(to_google.iter().map(flow).collect::<Vec<_>>(), [d], "destination_fqdn *.google.com");

    // observe -o json prints, for the same flows, exactly their protobuf JSON.
    let out = c.cli(&["observe", "-o", "json", "--last", "100000"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), all.len(), "observe and GetFlows see the same ring");
    for (name, r) in [("DNS request", &request), ("DNS response", &answer), ("drop", &drop)] {
        let grpc = response_json(r);
        let i = all.iter().position(|x| x == r).unwrap();
        eprintln!("--- {name}\nGetFlows (protobuf JSON):     {grpc}\nfqdnd observe -o json:        {}", lines[i]);
        assert_eq!(grpc, lines[i], "{name}");
    }
    for (r, line) in all.iter().zip(&lines) {
        assert_eq!(&response_json(r), line);
    }
    // And observe --server prints the same again.
    let remote =
        c.cli(&["observe", "-o", "json", "--last", "100000", "--server", &format!("unix:{}", socket.display())]);
    assert!(remote.status.success(), "{}", String::from_utf8_lossy(&remote.stderr));
    assert_eq!(String::from_utf8(remote.stdout).unwrap(), printed);

    // Hubble's metrics saw the datapath drop and the DNS pair.
    let page = c.metrics();
    assert!(page.contains("hubble_drop_total{reason=\"POLICY_DENIED\",protocol=\"TCP\"} "), "{page}");
    assert!(metric_sum(&page, "hubble_drop_total") >= 1.0, "{page}");
    assert!(page.contains("hubble_dns_responses_total{rcode=\"No Error\",qtypes=\"A\",ips_returned=\"1\"} "), "{page}");
    assert!(metric_sum(&page, "hubble_flows_processed_total") >= all.len() as f64, "{page}");
}
