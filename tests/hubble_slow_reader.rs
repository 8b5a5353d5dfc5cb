//! A gRPC follower that never reads does not slow DNS: dnsperf sends thousands of queries through
//! a real agent (real NSD behind it) while one Observer API client follows and never reads, and
//! another follows and reads. Every query is answered; the reading follower gets every flow and
//! no lost_events; the stuck one, once it reads, is told lost_events (OBSERVER_EVENTS_QUEUE), and
//! what it got plus what it was told it lost is exactly what was published while it followed.
//! The two clients use separate connections, as separate programs would.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::hubble::{Agent, blocking, client, wait_seen};
use fqdnd::hubble::proto::flow::{self as pb, LostEventSource};
use fqdnd::hubble::proto::observer::get_flows_response::ResponseTypes;
use fqdnd::hubble::proto::observer::{GetFlowsRequest, GetFlowsResponse, ServerStatusRequest};
use tonic::Streaming;

/// Per-follower queue: large enough that a reader on a busy machine keeps up with the load below,
/// small enough that a stuck one overflows.
const QUEUE: usize = 4096;
/// dnsperf: each of the 4 names (3 allowed, 1 refused) this many times: 2 flows per query.
const ROUNDS: u64 = 2000;
const QUERIES: u64 = 4 * ROUNDS;

fn query_of(r: &GetFlowsResponse) -> Option<(&str, bool)> {
    match &r.response_types {
        Some(ResponseTypes::Flow(f)) => match f.l7.as_ref().and_then(|l| l.record.as_ref()) {
            Some(pb::layer7::Record::Dns(d)) => Some((d.query.as_str(), f.is_reply == Some(true))),
            None => None,
        },
        _ => None,
    }
}

fn lost_of(r: &GetFlowsResponse) -> Option<u64> {
    match &r.response_types {
        Some(ResponseTypes::LostEvents(l)) => {
            assert_eq!(l.source, LostEventSource::ObserverEventsQueue as i32, "{l:?}");
            Some(l.num_events_lost)
        }
        _ => None,
    }
}

/// Read until the answer to `marker` (counting flows and losses on the way).
async fn read_until_marker(stream: &mut Streaming<GetFlowsResponse>, marker: &str) -> (u64, u64) {
    let (mut flows, mut lost) = (0, 0);
    while let Some(r) = stream.message().await.expect("the stream") {
        if let Some(n) = lost_of(&r) {
            lost += n;
            continue;
        }
        flows += 1;
        if query_of(&r) == Some((marker, true)) {
            return (flows, lost);
        }
    }
    panic!("the stream ended before {marker}'s answer")
}

fn dnsperf_report(out: &std::process::Output, field: &str) -> u64 {
    let report = String::from_utf8_lossy(&out.stdout);
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field:?} in dnsperf's report:\n{report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_grpc_follower_neither_slows_dns_nor_other_followers() {
    let queue = QUEUE.to_string();
    let agent = blocking(move || {
        let agent = Agent::start(&["--flow-follower-queue", &queue]);
        agent.dig("www.microsoft.com", "A");
        agent
    })
    .await;
    let addr = agent.server();
    let mut status = client(&addr).await;
    wait_seen(&mut status, 2).await;
    // number 1 + follow: the first message (the newest flow) proves the follower is subscribed.
    let follow = GetFlowsRequest { number: 1, follow: true, ..Default::default() };
    let mut stuck_client = client(&addr).await;
    let mut stuck = stuck_client.get_flows(follow.clone()).await.unwrap().into_inner();
    assert!(query_of(&stuck.message().await.unwrap().unwrap()).is_some());
    let mut reader_client = client(&addr).await;
    let mut reader = reader_client.get_flows(follow).await.unwrap().into_inner();
    assert!(query_of(&reader.message().await.unwrap().unwrap()).is_some());
    let seen_before = status.server_status(ServerStatusRequest {}).await.unwrap().into_inner().seen_flows;
    let reading = tokio::spawn(async move {
        let counts = read_until_marker(&mut reader, "short.microsoft.com.").await;
        (counts, reader)
    });

    // dnsperf through the agent, at a fixed rate, then one marker query.
    let queries = agent.fqdnd.dir.path().join("queries.txt");
    std::fs::write(&queries, "www.microsoft.com A\nlogin.microsoft.com A\nwww.microsoft.com AAAA\nwww.google.com A\n")
        .unwrap();
    let dns = agent.fqdnd.addr;
    let started = Instant::now();
    let (agent, perf) = blocking(move || {
        let out = Command::new("dnsperf")
            .args(["-s", &dns.ip().to_string(), "-p", &dns.port().to_string()])
            .arg("-d")
            .arg(&queries)
            .args(["-n", &ROUNDS.to_string(), "-c", "4", "-Q", "2000", "-t", "5"])
            .output()
            .expect("dnsperf (Debian: dnsperf)");
        agent.dig("short.microsoft.com", "A");
        (agent, out)
    })
    .await;
    let report = String::from_utf8_lossy(&perf.stdout).into_owned();
    assert!(perf.status.success(), "dnsperf: {report}{}", String::from_utf8_lossy(&perf.stderr));
    assert_eq!(dnsperf_report(&perf, "Queries sent:"), QUERIES, "{report}");
    assert_eq!(dnsperf_report(&perf, "Queries completed:"), QUERIES, "a query went unanswered:\n{report}");
    assert_eq!(dnsperf_report(&perf, "Queries lost:"), 0, "{report}");
    eprintln!("dnsperf ({:?} with a stuck follower):\n{report}", started.elapsed());

    // Everything published while both followed: 2 flows per query and the marker's two.
    let published = 2 * QUERIES + 2;
    wait_seen(&mut status, seen_before + published).await;
    let seen = status.server_status(ServerStatusRequest {}).await.unwrap().into_inner().seen_flows;
    assert_eq!(seen - seen_before, published);
    let ((flows, lost), _reader) = reading.await.unwrap();
    assert_eq!((flows, lost), (published, 0), "the reading follower must get every flow and lose none");

    // Other clients are served meanwhile (a non-following call on another connection).
    let mut other = client(&addr).await;
    let mut last = other.get_flows(GetFlowsRequest { number: 3, ..Default::default() }).await.unwrap().into_inner();
    let mut n = 0;
    while last.message().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 3);

    // The stuck follower reads at last: its queue and what HTTP/2 buffered, then lost_events.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut got, mut told, mut notices) = (0u64, 0u64, 0);
    while got + told < published {
        assert!(Instant::now() < deadline, "stuck follower: {got} flows + {told} lost of {published}");
        let r = stuck.message().await.unwrap().expect("the stuck stream");
        match lost_of(&r) {
            Some(n) => {
                told += n;
                notices += 1;
            }
            None => got += 1,
        }
    }
    assert_eq!(got + told, published, "every flow was either delivered or reported lost");
    assert!(told > 0 && notices > 0, "the stuck follower was never told it lost flows");
    assert!(got >= QUEUE as u64, "its queue was delivered ({got} flows)");
    eprintln!("stuck follower: {got} flows delivered, {told} reported lost in {notices} lost_events");

    // The same loss, counted by the agent.
    let page = blocking(move || {
        let url = format!("http://{}/metrics", agent.metrics_addr());
        let out = Command::new("curl").args(["-sS", "--fail", "--max-time", "30", &url]).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    })
    .await;
    let dropped: f64 = page
        .lines()
        .find_map(|l| l.strip_prefix("fqdnd_flows_dropped_total{reason=\"slow_reader\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no slow_reader counter:\n{page}"));
    assert_eq!(dropped as u64, told);
}
