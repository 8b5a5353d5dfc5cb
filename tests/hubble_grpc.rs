//! Hubble's Observer API of a real agent, with a tonic client built from the project's .proto
//! files: ServerStatus, GetFlows (number, first, since/until, whitelist/blacklist, follow with a
//! flow made after the call began) and GetNodes, over the default Unix socket and over TCP; and
//! `fqdnd observe --server` printing exactly what `fqdnd observe` prints from the admin socket.
//! Real NSD behind the agent, real `dig` queries, on loopback.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::dns_server::free_port;
use common::hubble::{Agent, NODE, blocking, client, get_flows, wait_seen};
use fqdnd::hubble::ServerAddr;
use fqdnd::hubble::proto::flow::{self as pb, FlowFilter};
use fqdnd::hubble::proto::observer::get_flows_response::ResponseTypes;
use fqdnd::hubble::proto::observer::{GetFlowsRequest, GetFlowsResponse, GetNodesRequest, ServerStatusRequest};
use fqdnd::hubble::proto::relay::NodeState;

const FQDND: &str = env!("CARGO_BIN_EXE_fqdnd");

fn flow(r: &GetFlowsResponse) -> &pb::Flow {
    match &r.response_types {
        Some(ResponseTypes::Flow(f)) => f,
        other => panic!("not a flow: {other:?}"),
    }
}

fn dns(f: &pb::Flow) -> &pb::Dns {
    match f.l7.as_ref().and_then(|l7| l7.record.as_ref()) {
        Some(pb::layer7::Record::Dns(d)) => d,
        None => panic!("not a DNS flow: {f:?}"),
    }
}

/// `query/L7 type` of each flow, e.g. `www.microsoft.com./REQUEST`.
fn shape(rs: &[GetFlowsResponse]) -> Vec<String> {
    rs.iter()
        .map(|r| {
            let f = flow(r);
            let t = pb::L7FlowType::try_from(f.l7.as_ref().unwrap().r#type).unwrap().as_str_name();
            format!("{}/{t}", dns(f).query)
        })
        .collect()
}

fn req(number: u64) -> GetFlowsRequest {
    GetFlowsRequest { number, ..Default::default() }
}

fn only(filter: FlowFilter) -> GetFlowsRequest {
    GetFlowsRequest { number: 100, whitelist: vec![filter], ..Default::default() }
}

/// Three queries: allowed (A), refused, allowed (AAAA, no such record: NOERROR, no data).
fn three_queries(agent: &Agent) {
    assert_eq!(agent.dig("www.microsoft.com", "A").data("A"), ["10.200.0.1"]);
    assert_eq!(agent.dig("www.google.com", "A").status, "NXDOMAIN");
    assert_eq!(agent.dig("login.microsoft.com", "AAAA").status, "NOERROR");
}

const ALL: [&str; 6] = [
    "www.microsoft.com./REQUEST",
    "www.microsoft.com./RESPONSE",
    "www.google.com./REQUEST",
    "www.google.com./RESPONSE",
    "login.microsoft.com./REQUEST",
    "login.microsoft.com./RESPONSE",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_flows_filters_follow_and_nodes() {
    let agent = blocking(|| Agent::start(&[])).await;
    let mut c = client(&agent.server()).await;
    let before = c.server_status(ServerStatusRequest {}).await.unwrap().into_inner();
    assert_eq!((before.num_flows, before.seen_flows, before.max_flows), (0, 0, 4096));
    let agent = blocking(move || {
        three_queries(&agent);
        agent
    })
    .await;
    wait_seen(&mut c, 6).await;

    // ServerStatus.
    let s = c.server_status(ServerStatusRequest {}).await.unwrap().into_inner();
    assert_eq!((s.num_flows, s.max_flows, s.seen_flows), (6, 4096, 6), "{s:?}");
    assert!(s.uptime_ns > before.uptime_ns, "{s:?} after {before:?}");
    assert_eq!((s.num_connected_nodes, s.num_unavailable_nodes), (Some(1), Some(0)));
    assert!(s.version.ends_with("+fqdnd"), "{}", s.version);

    // GetFlows: the ring in order, Hubble's fields filled.
    let all = get_flows(&mut c, req(100)).await;
    assert_eq!(shape(&all), ALL);
    for r in &all {
        assert_eq!(r.node_name, NODE);
        assert_eq!(r.time, flow(r).time, "a response's time is its flow's");
        assert_eq!(flow(r).node_name, NODE);
        assert_eq!(flow(r).r#type, pb::FlowType::L7 as i32);
        assert_eq!(flow(r).event_type, Some(pb::CiliumEventType { r#type: 129, sub_type: 0 }));
        assert_eq!(flow(r).traffic_direction, pb::TrafficDirection::Egress as i32);
    }
    let request = flow(&all[0]);
    assert_eq!(request.verdict, pb::Verdict::Forwarded as i32);
    assert_eq!(request.is_reply, Some(false));
    let (src, dst) = (request.source.as_ref().unwrap(), request.destination.as_ref().unwrap());
    assert_eq!((src.namespace.as_str(), src.pod_name.as_str()), ("default", "alpine"));
    assert!(src.labels.contains(&"k8s:app=alpine".to_string()), "{src:?}");
    assert_eq!((dst.namespace.as_str(), dst.pod_name.as_str()), ("kube-system", "kube-dns"));
    let ip = request.ip.as_ref().unwrap();
    assert_eq!((ip.source.as_str(), ip.destination.as_str()), ("127.0.0.1", "127.0.0.2"));
    assert_eq!(ip.ip_version, pb::IpVersion::IPv4 as i32);
    let Some(pb::layer4::Protocol::Udp(udp)) = request.l4.as_ref().and_then(|l4| l4.protocol) else {
        panic!("UDP: {request:?}")
    };
    assert_eq!(udp.destination_port, u32::from(agent.nsd.addr.port()));
    assert_eq!(dns(request).qtypes, ["A"]);
    assert_eq!(request.summary, "DNS Query www.microsoft.com. A");
    let answer = flow(&all[1]);
    assert_eq!(answer.is_reply, Some(true));
    assert_eq!(dns(answer).ips, ["10.200.0.1"]);
    assert_eq!((dns(answer).ttl, dns(answer).rcode), (300, 0));
    assert_eq!(dns(answer).rrtypes, ["A"]);
    assert_eq!(dns(answer).observation_source, "proxy");
    assert!(answer.l7.as_ref().unwrap().latency_ns > 0);
    let refused = flow(&all[2]);
    assert_eq!(refused.verdict, pb::Verdict::Dropped as i32);
    assert_eq!(dns(flow(&all[3])).rcode, 3, "the refusal is NXDOMAIN");

    // number, first, since/until.
    assert_eq!(shape(&get_flows(&mut c, req(2)).await), ALL[4..]);
    let first = GetFlowsRequest { number: 1, first: true, ..Default::default() };
    assert_eq!(shape(&get_flows(&mut c, first).await), ALL[..1]);
    let since = GetFlowsRequest { since: flow(&all[2]).time, ..Default::default() };
    assert_eq!(shape(&get_flows(&mut c, since).await), ALL[2..]);
    let range = GetFlowsRequest { since: flow(&all[1]).time, until: flow(&all[3]).time, ..Default::default() };
    assert_eq!(shape(&get_flows(&mut c, range).await), ALL[1..4]);
    let bad = GetFlowsRequest { first: true, follow: true, ..Default::default() };
    assert_eq!(c.get_flows(bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    // Filters.
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cases: Vec<(GetFlowsRequest, &[&str])> = vec![
        (only(FlowFilter { verdict: vec![pb::Verdict::Dropped as i32], ..Default::default() }), &ALL[2..4]),
        (only(FlowFilter { dns_query: s(&["^login\\."]), ..Default::default() }), &ALL[4..]),
        (only(FlowFilter { source_pod: s(&["default/alpine"]), ..Default::default() }), &[ALL[0], ALL[2], ALL[4]]),
        (only(FlowFilter { destination_pod: s(&["default/"]), ..Default::default() }), &[ALL[1], ALL[3], ALL[5]]),
        (only(FlowFilter { source_ip: s(&["127.0.0.2"]), ..Default::default() }), &[ALL[1], ALL[3], ALL[5]]),
        (only(FlowFilter { destination_ip: s(&["127.0.0.0/30"]), ..Default::default() }), &ALL),
        (only(FlowFilter { protocol: s(&["dns"]), ..Default::default() }), &ALL),
        (only(FlowFilter { protocol: s(&["tcp"]), ..Default::default() }), &[]),
        (
            only(FlowFilter {
                event_type: vec![pb::EventTypeFilter { r#type: 129, ..Default::default() }],
                ..Default::default()
            }),
            &ALL,
        ),
        (
            only(FlowFilter {
                event_type: vec![pb::EventTypeFilter { r#type: 1, ..Default::default() }],
                ..Default::default()
            }),
            &[],
        ),
        (only(FlowFilter { traffic_direction: vec![pb::TrafficDirection::Ingress as i32], ..Default::default() }), &[]),
        (only(FlowFilter { node_name: s(&["node-*"]), ..Default::default() }), &ALL),
        (only(FlowFilter { node_name: s(&["other-cluster/"]), ..Default::default() }), &[]),
        (only(FlowFilter { destination_fqdn: s(&["*.google.com"]), ..Default::default() }), &[]),
        (only(FlowFilter { reply: vec![true], ..Default::default() }), &[ALL[1], ALL[3], ALL[5]]),
        (
            GetFlowsRequest {
                number: 100,
                whitelist: vec![FlowFilter { dns_query: s(&["microsoft"]), ..Default::default() }],
                blacklist: vec![FlowFilter { reply: vec![true], ..Default::default() }],
                ..Default::default()
            },
            &[ALL[0], ALL[4]],
        ),
        (
            GetFlowsRequest {
                number: 100,
                whitelist: vec![
                    FlowFilter { verdict: vec![pb::Verdict::Dropped as i32], ..Default::default() },
                    FlowFilter { dns_query: s(&["^login"]), reply: vec![false], ..Default::default() },
                ],
                ..Default::default()
            },
            &[ALL[2], ALL[3], ALL[4]],
        ),
    ];
    for (r, want) in cases {
        assert_eq!(shape(&get_flows(&mut c, r.clone()).await), want, "{r:?}");
    }
    let err = c.get_flows(only(FlowFilter { source_ip: s(&["not-an-ip"]), ..Default::default() })).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("whitelist[0]: source_ip: \"not-an-ip\""), "{}", err.message());

    // Follow: number 1 returns the newest matching flow first, which proves the subscription is
    // in place (history and follower are taken together); then a query made now arrives.
    let follow = GetFlowsRequest {
        number: 1,
        follow: true,
        whitelist: vec![FlowFilter { dns_query: s(&["^(www|short)\\.microsoft"]), ..Default::default() }],
        ..Default::default()
    };
    let mut stream = c.get_flows(follow).await.unwrap().into_inner();
    let history = stream.message().await.unwrap().unwrap();
    assert_eq!(shape(&[history]), ALL[1..2]);
    let agent = blocking(move || {
        agent.dig("login.microsoft.com", "A");
        agent.dig("short.microsoft.com", "A");
        agent
    })
    .await;
    let mut live = Vec::new();
    for _ in 0..2 {
        live.push(stream.message().await.unwrap().expect("the followed flows"));
    }
    assert_eq!(shape(&live), ["short.microsoft.com./REQUEST", "short.microsoft.com./RESPONSE"]);
    assert_eq!(dns(flow(&live[1])).ips, ["10.200.0.5"]);
    drop(stream);

    // GetNodes: this node, with the same counters.
    wait_seen(&mut c, 10).await;
    let nodes = c.get_nodes(GetNodesRequest {}).await.unwrap().into_inner().nodes;
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let n = &nodes[0];
    assert_eq!(n.name, NODE);
    assert_eq!(n.state, NodeState::NodeConnected as i32);
    assert_eq!(n.address, format!("unix:{}", agent.socket().display()));
    assert_eq!((n.num_flows, n.max_flows, n.seen_flows), (10, 4096, 10));
    assert!(n.version.ends_with("+fqdnd") && n.uptime_ns > 0);
    assert_eq!(n.tls.as_ref().map(|t| t.enabled), Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_when_asked_and_none_turns_it_off() {
    let port = free_port("127.0.0.1".parse().unwrap()).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let l = listen.clone();
    let agent = blocking(move || Agent::start(&["--hubble-listen", &l])).await;
    assert!(!agent.socket().exists(), "TCP replaces the default socket");
    let mut c = client(&listen.parse::<ServerAddr>().unwrap()).await;
    let agent = blocking(move || {
        agent.dig("www.microsoft.com", "A");
        agent
    })
    .await;
    wait_seen(&mut c, 2).await;
    assert_eq!(shape(&get_flows(&mut c, req(10)).await), ALL[..2]);
    let nodes = c.get_nodes(GetNodesRequest {}).await.unwrap().into_inner().nodes;
    assert_eq!(nodes[0].address, listen);
    drop(agent);

    let off = blocking(|| Agent::start(&["--hubble-listen", "none"])).await;
    assert!(!off.socket().exists());
    assert!(off.fqdnd.log().contains("hubble-listen\":null"), "{}", off.fqdnd.log());
}

async fn cli(args: Vec<String>) -> Output {
    blocking(move || Command::new(FQDND).args(args).env_remove("FQDND_STATE_DIR").output().unwrap()).await
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_server_prints_what_observe_prints() {
    let agent = blocking(|| Agent::start(&[])).await;
    let agent = blocking(move || {
        three_queries(&agent);
        agent
    })
    .await;
    let mut c = client(&agent.server()).await;
    wait_seen(&mut c, 6).await;
    let local = |args: &[&str]| {
        let mut v: Vec<String> = vec!["observe".into()];
        v.extend(args.iter().map(|s| s.to_string()));
        v.extend(["--state-dir".into(), agent.state_dir().display().to_string()]);
        v
    };
    let remote = |args: &[&str]| {
        let mut v: Vec<String> = vec!["observe".into()];
        v.extend(args.iter().map(|s| s.to_string()));
        v.extend(["--server".into(), format!("unix://{}", agent.socket().display())]);
        v
    };
    let cases: &[&[&str]] = &[
        &["-o", "json", "--last", "100"],
        &["-o", "jsonpb"],
        &["--last", "100", "--color", "never"],
        &["-o", "json", "--last", "2"],
        &["-o", "json", "--verdict", "DROPPED"],
        &["-o", "json", "--type", "dns", "--verdict", "forwarded"],
        &["-o", "json", "--type", "drop"],
        &["-o", "json", "--pod", "kube-system/kube-dns"],
        &["-o", "json", "--namespace", "default"],
        &["-o", "json", "--pod", "default/alp", "--namespace", "kube-system"],
        &["-o", "json", "--since", "1h"],
    ];
    for args in cases {
        let (l, r) = (stdout(&cli(local(args)).await), stdout(&cli(remote(args)).await));
        assert_eq!(r, l, "observe {args:?}: --server differs from the admin socket");
    }
    let full = stdout(&cli(local(&["-o", "json", "--last", "100"])).await);
    assert_eq!(full.lines().count(), 6, "{full}");

    // Follow over gRPC: a flow made after the command started.
    let mut child = Command::new(FQDND)
        .args(remote(&["-f", "-o", "json", "--type", "dns"]))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let followers = |a: &Agent| a.followers();
    let agent = blocking(move || {
        for _ in 0..1500 {
            if followers(&agent) == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(agent.followers(), 1, "observe --server -f never subscribed");
        agent.dig("short.microsoft.com", "A");
        agent
    })
    .await;
    let out = child.stdout.take().unwrap();
    let lines = blocking(move || BufReader::new(out).lines().take(2).map(|l| l.unwrap()).collect::<Vec<_>>()).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let queries: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(queries[0]["flow"]["l7"]["dns"]["query"], "short.microsoft.com.");
    assert_eq!(queries[1]["flow"]["l7"]["dns"]["ips"], serde_json::json!(["10.200.0.5"]));

    // No server there: a clear error.
    let missing = cli(vec!["observe".into(), "--server".into(), "unix:/nonexistent/hubble.sock".into()]).await;
    assert_eq!(missing.status.code(), Some(2));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("no Hubble Observer API at unix:/nonexistent/hubble.sock"), "{err}");
    drop(agent);
}
