//! The admin socket end to end: the server runs in-process over a flow hub fed with DNS and drop
//! events and a fake cache; `fqdnd observe` and `fqdnd cache list` run as real processes against it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dns_proxy::{DnsFlow, DnsFlowKind};
use ebpf_redirect::{DropEvent, DropReason};
use fqdn_cache::{EndpointId, L4Proto};
use fqdnd::admin::{self, AdminServer, AdminState, CacheEntryView, CacheLister, CacheSource};
use fqdnd::flows::{FlowHub, HubConfig, NamesLookup};
use fqdnd::metrics::{AgentMetrics, Readiness};
use policy_sync::Snapshot;
use policy_sync::endpoint::{Endpoint, EndpointKey};
use serde_json::Value;

const FQDND: &str = env!("CARGO_BIN_EXE_fqdnd");

fn endpoints() -> Snapshot {
    let alpine = Endpoint {
        namespace: "default".into(),
        name: "alpine".into(),
        labels: BTreeMap::from([("app".to_string(), "alpine".to_string())]),
        ips: vec!["10.0.1.5".parse().unwrap()],
        interface: None,
        policy_audit_mode: false,
    };
    let kube_dns = Endpoint {
        namespace: "kube-system".into(),
        name: "kube-dns".into(),
        labels: BTreeMap::from([("k8s-app".to_string(), "kube-dns".to_string())]),
        ips: vec!["10.96.0.10".parse().unwrap()],
        interface: None,
        policy_audit_mode: false,
    };
    Snapshot::unpoliced([(EndpointId(1), alpine), (EndpointId(2), kube_dns)])
}

/// What the cache would say: alpine resolved www.microsoft.com to 13.107.1.1.
struct Names;

impl NamesLookup for Names {
    fn names_for_ip(&self, endpoint: EndpointId, ip: IpAddr) -> Vec<String> {
        if endpoint == EndpointId(1) && ip.to_string() == "13.107.1.1" {
            vec!["www.microsoft.com.".to_string()]
        } else {
            Vec::new()
        }
    }
}

struct FakeCache(Vec<CacheEntryView>);

impl CacheLister for FakeCache {
    fn list(&self, _endpoint: Option<&EndpointKey>) -> Vec<CacheEntryView> {
        // Everything: the server applies the endpoint and pattern filters.
        self.0.clone()
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_701_079_200 + secs)
}

fn request(secs: u64, qname: &str) -> DnsFlow {
    DnsFlow {
        time: at(secs),
        kind: DnsFlowKind::Request,
        verdict: dns_proxy::Verdict::Forwarded,
        endpoint: Some(EndpointId(1)),
        client: "10.0.1.5:41234".parse().unwrap(),
        server: "10.96.0.10:53".parse().unwrap(),
        protocol: L4Proto::Udp,
        qname: qname.into(),
        qtype: 1,
        rcode: None,
        ips: vec![],
        ttl: None,
        cnames: vec![],
        rrtypes: vec![],
        policy: None,
        latency: None,
    }
}

fn response(secs: u64, qname: &str, ip: &str) -> DnsFlow {
    DnsFlow {
        kind: DnsFlowKind::Response,
        rcode: Some(0),
        ips: vec![ip.parse().unwrap()],
        ttl: Some(300),
        rrtypes: vec![1],
        latency: Some(Duration::from_millis(2)),
        ..request(secs, qname)
    }
}

fn denied(secs: u64) -> DropEvent {
    DropEvent {
        endpoint: EndpointId(1),
        direction: ebpf_redirect::Direction::Egress,
        src: "10.0.1.5:43344".parse().unwrap(),
        dst: "13.107.1.1:443".parse().unwrap(),
        proto: L4Proto::Tcp,
        tcp_flags: 0x02,
        reason: DropReason::PolicyDenied,
        rejected: false,
        audit: false,
        time: at(secs),
    }
}

struct Agent {
    hub: Arc<FlowHub>,
    metrics: AgentMetrics,
    dir: tempfile::TempDir,
    _server: AdminServer,
}

impl Agent {
    /// A hub with: request + response for www.microsoft.com, a denied connection to its IP, and a
    /// refused query for evil.example.
    fn start(follower_queue: usize) -> Agent {
        let metrics = AgentMetrics::default();
        let cfg = HubConfig { ring_capacity: 64, follower_queue, node_name: "node-a".into() };
        let hub = Arc::new(FlowHub::with_config(cfg, metrics.clone()));
        let eps = endpoints();
        hub.ingest_dns(&request(1, "www.microsoft.com."), &eps);
        hub.ingest_dns(&response(1, "www.microsoft.com.", "13.107.1.1"), &eps);
        hub.ingest_drop(&denied(2), &eps, &Names);
        let refused = DnsFlow { verdict: dns_proxy::Verdict::Dropped, ..request(3, "evil.example.") };
        hub.ingest_dns(&refused, &eps);
        let cache = FakeCache(vec![
            CacheEntryView {
                endpoint: "default/alpine".into(),
                source: CacheSource::Lookup,
                fqdn: "www.microsoft.com.".into(),
                ttl: 300,
                expires: at(301),
                ips: vec!["13.107.1.1".parse().unwrap()],
            },
            CacheEntryView {
                endpoint: "default/other".into(),
                source: CacheSource::Connection,
                fqdn: "api.github.com.".into(),
                ttl: 60,
                expires: at(61),
                ips: vec!["192.0.2.7".parse().unwrap()],
            },
        ]);
        let dir = tempfile::Builder::new().prefix("fqdnd-observe-").tempdir().unwrap();
        let state = AdminState {
            hub: hub.clone(),
            cache: Arc::new(cache),
            readiness: Arc::new(Readiness::default()),
            started: SystemTime::now(),
        };
        let server = admin::serve(&admin::socket_path(dir.path()), state).unwrap();
        Agent { hub, metrics, dir, _server: server }
    }

    fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Run the real CLI (blocking, off the runtime's workers).
    async fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(FQDND);
        cmd.args(args).arg("--state-dir").arg(self.state_dir()).env_remove("FQDND_STATE_DIR");
        tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
    }
}

fn stdout_lines(out: &Output) -> Vec<String> {
    assert!(out.status.success(), "fqdnd failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap().lines().map(String::from).collect()
}

fn json_lines(out: &Output) -> Vec<Value> {
    stdout_lines(out).iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect()
}

fn summaries(out: &Output) -> Vec<String> {
    json_lines(out).iter().map(|v| v["flow"]["Summary"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_prints_hubble_compact_lines_without_colour_when_piped() {
    let agent = Agent::start(64);
    let lines = stdout_lines(&agent.cli(&["observe"]).await);
    let want = [
        "Nov 27 10:00:01.000: default/alpine:41234 (ID:257) -> kube-system/kube-dns:53 (ID:258) dns-request proxy FORWARDED (DNS Query www.microsoft.com. A)",
        "Nov 27 10:00:01.000: default/alpine:41234 (ID:257) <- kube-system/kube-dns:53 (ID:258) dns-response proxy FORWARDED (DNS Answer \"13.107.1.1\" TTL: 300 (Proxy www.microsoft.com. A))",
        "Nov 27 10:00:02.000: default/alpine:43344 (ID:257) -> www.microsoft.com:443 (world) Policy denied DROPPED (TCP Flags: SYN)",
        "Nov 27 10:00:03.000: default/alpine:41234 (ID:257) -> kube-system/kube-dns:53 (ID:258) dns-request proxy DROPPED (DNS Query evil.example. A)",
    ];
    assert_eq!(lines, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_json_lines_carry_hubbles_fields() {
    let agent = Agent::start(64);
    for format in ["json", "jsonpb"] {
        let lines = json_lines(&agent.cli(&["observe", "-o", format]).await);
        assert_eq!(lines.len(), 4);
        for v in &lines {
            assert_eq!(v["node_name"], "node-a");
            assert!(v["time"].as_str().unwrap().starts_with("2023-11-27T10:00:0"));
            for key in ["time", "verdict", "IP", "l4", "source", "Type", "is_reply", "Summary"] {
                assert!(v["flow"].get(key).is_some(), "{format}: no {key} in {v}");
            }
        }
        let resp = &lines[1]["flow"];
        assert_eq!(resp["l7"]["type"], "RESPONSE");
        assert_eq!(resp["l7"]["dns"]["query"], "www.microsoft.com.");
        assert_eq!(resp["l7"]["dns"]["ips"], serde_json::json!(["13.107.1.1"]));
        assert_eq!(resp["l7"]["dns"]["ttl"], 300);
        assert_eq!(resp["l7"]["dns"]["observation_source"], "proxy");
        assert_eq!(resp["l7"]["dns"]["qtypes"], serde_json::json!(["A"]));
        assert_eq!(resp["l7"]["dns"]["rrtypes"], serde_json::json!(["A"]));
        assert_eq!(resp["destination"]["pod_name"], "alpine");
        assert_eq!(
            resp["destination"]["labels"],
            serde_json::json!(["k8s:app=alpine", "k8s:io.kubernetes.pod.namespace=default"])
        );
        let drop = &lines[2]["flow"];
        assert_eq!(drop["verdict"], "DROPPED");
        assert_eq!(drop["drop_reason_desc"], "POLICY_DENIED");
        assert_eq!(drop["destination_names"], serde_json::json!(["www.microsoft.com"]));
        assert_eq!(drop["l4"]["TCP"]["destination_port"], 443);
        assert_eq!(drop["Type"], "L3_L4");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_filters() {
    let agent = Agent::start(64);
    let q = "DNS Query www.microsoft.com. A";
    let a = "DNS Answer \"13.107.1.1\" TTL: 300 (Proxy www.microsoft.com. A)";
    let d = "TCP Flags: SYN";
    let e = "DNS Query evil.example. A";
    let cases: &[(&[&str], &[&str])] = &[
        (&["--pod", "default/alpine"], &[q, a, d, e]),
        (&["--pod", "kube-system/kube-dns"], &[q, a, e]),
        (&["--pod", "default/nginx"], &[]),
        (&["--namespace", "kube-system"], &[q, a, e]),
        (&["--verdict", "DROPPED"], &[d, e]),
        (&["--verdict", "forwarded"], &[q, a]),
        (&["--verdict", "ERROR"], &[]),
        (&["--type", "drop"], &[d]),
        (&["--type", "dns"], &[q, a, e]),
        (&["--type", "dns", "--verdict", "DROPPED"], &[e]),
        (&["--last", "1"], &[e]),
        (&["--since", "2023-11-27T10:00:02Z"], &[d, e]),
        (&["--since", "1m"], &[]),
        // Hubble's --protocol, --from-pod/--to-pod, --fqdn and --first.
        (&["--protocol", "tcp"], &[d]),
        (&["--protocol", "udp"], &[q, a, e]),
        (&["--protocol", "dns", "--verdict", "FORWARDED"], &[q, a]),
        (&["--from-pod", "default/alpine"], &[q, d, e]),
        (&["--to-pod", "default/alpine"], &[a]),
        (&["--from-pod", "kube-system/kube-dns"], &[a]),
        (&["--fqdn", "*.microsoft.com"], &[q, a, d]),
        (&["--fqdn", "evil.example"], &[e]),
        (&["--first", "2"], &[q, a]),
        (&["--first", "1", "--verdict", "DROPPED"], &[d]),
    ];
    for (args, want) in cases {
        let mut argv = vec!["observe", "-o", "json"];
        argv.extend_from_slice(args);
        assert_eq!(summaries(&agent.cli(&argv).await), *want, "args {args:?}");
    }
    let bad = agent.cli(&["observe", "--verdict", "ALLOWED"]).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("ALLOWED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_table_and_dict() {
    let agent = Agent::start(64);
    let table = stdout_lines(&agent.cli(&["observe", "-o", "table", "--first", "3"]).await);
    assert_eq!(table.len(), 4, "{table:?}");
    let header = &table[0];
    for (col, name) in ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"].iter().enumerate() {
        let at = header.find(name).unwrap_or_else(|| panic!("{name} in {header:?}"));
        // Every row's cell starts where its column's title does (aligned), skipping the time.
        if col > 0 {
            for row in &table[1..] {
                assert!(row[..at].ends_with("   "), "column {name} of {row:?} starts at {at}");
            }
        }
    }
    assert!(table[3].contains("www.microsoft.com:443") && table[3].contains("Policy denied"), "{table:?}");
    let dict = stdout_lines(&agent.cli(&["observe", "-o", "dict", "--last", "2"]).await);
    assert_eq!(dict.iter().filter(|l| *l == "------------").count(), 1, "{dict:?}");
    assert!(dict.contains(&"    VERDICT: DROPPED".to_string()), "{dict:?}");
    assert!(dict.contains(&"DESTINATION: www.microsoft.com:443".to_string()), "{dict:?}");
    let both = agent.cli(&["observe", "--first", "1", "--last", "1"]).await;
    assert!(!both.status.success(), "--first and --last together are refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_follow_streams_new_flows() {
    let agent = Agent::start(64);
    let mut child = Command::new(FQDND)
        .args(["observe", "-f", "-o", "json", "--type", "drop", "--state-dir"])
        .arg(agent.state_dir())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // -f alone starts from now: wait until the client is subscribed, then publish.
    wait_for(|| agent.hub.stats().followers == 1).await;
    let eps = endpoints();
    agent.hub.ingest_dns(&request(10, "ignored.example."), &eps);
    agent.hub.ingest_drop(&denied(11), &eps, &Names);
    agent.hub.ingest_drop(&DropEvent { dst: "192.0.2.9:80".parse().unwrap(), ..denied(12) }, &eps, &Names);
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout).lines().take(2).map(|l| l.unwrap()).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let flows: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(flows[0]["flow"]["IP"]["destination"], "13.107.1.1");
    assert_eq!(flows[0]["flow"]["destination_names"], serde_json::json!(["www.microsoft.com"]));
    assert_eq!(flows[1]["flow"]["IP"]["destination"], "192.0.2.9");
    assert!(flows[1]["flow"].get("destination_names").is_none());
    // The killed client's slot goes away (the server sees EOF).
    wait_for(|| agent.hub.stats().followers == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_loses_flows_and_blocks_nobody() {
    const FLOWS: u64 = 50_000;
    let agent = Agent::start(256);
    let path = admin::socket_path(agent.state_dir());
    let mut stuck = UnixStream::connect(&path).unwrap();
    stuck.write_all(b"{\"op\":\"flows\",\"follow\":true}\n").unwrap();
    wait_for(|| agent.hub.stats().followers == 1).await;
    let eps = endpoints();
    for i in 0..FLOWS {
        agent.hub.ingest_dns(&request(100 + i, "www.microsoft.com."), &eps);
    }
    // The producer finished; the stuck client got at most its queue plus what fits in the socket
    // buffers (a few hundred ~700-byte lines), everything else was dropped and counted.
    let dropped = agent.metrics.flows_dropped_slow_reader.get();
    assert!(dropped <= FLOWS, "{dropped}");
    assert!(dropped >= FLOWS - 10_000, "only {dropped} of {FLOWS} counted as dropped");
    // Other clients are served meanwhile.
    let out = agent.cli(&["observe", "--last", "2", "-o", "json"]).await;
    assert_eq!(json_lines(&out).len(), 2);
    // When the stuck client finally reads, it is told what it lost: a notice goes out with the next
    // flow the server takes from its queue, so keep publishing until the notices add up.
    let reader = tokio::task::spawn_blocking(move || {
        let mut lost = 0u64;
        for line in BufReader::new(stuck).lines() {
            let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
            if let Some(notice) = v.get("lost_events") {
                assert_eq!(notice["source"], "OBSERVER_EVENTS_QUEUE");
                lost += notice["num_events_lost"].as_str().unwrap().parse::<u64>().unwrap();
                if lost >= FLOWS - 10_000 {
                    break;
                }
            }
        }
        lost
    });
    let mut i = 0;
    while !reader.is_finished() {
        agent.hub.ingest_dns(&request(i, "late.example."), &eps);
        i += 1;
        assert!(i < 6000, "lost_events notices do not add up after {i} more flows");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lost = reader.await.unwrap();
    assert!(lost >= FLOWS - 10_000, "told of only {lost} lost flows");
    assert!(lost <= agent.metrics.flows_dropped_slow_reader.get(), "told {lost}, counted more than dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_list_table_json_and_filters() {
    let agent = Agent::start(64);
    let table = stdout_lines(&agent.cli(&["cache", "list"]).await);
    assert_eq!(
        table[0].split_whitespace().collect::<Vec<_>>(),
        ["ENDPOINT", "SOURCE", "FQDN", "TTL", "EXPIRES", "IPS"]
    );
    assert_eq!(
        table[1].split_whitespace().collect::<Vec<_>>(),
        ["default/alpine", "lookup", "www.microsoft.com.", "300", "2023-11-27T10:05:01Z", "13.107.1.1"]
    );
    assert_eq!(table[2].split_whitespace().nth(1), Some("connection"));
    assert_eq!(table.len(), 3);

    let json = |out: &Output| -> Vec<Value> {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
    };
    let by_ep = json(&agent.cli(&["cache", "list", "--endpoint", "default/other", "-o", "json"]).await);
    assert_eq!(by_ep.len(), 1);
    assert_eq!(by_ep[0]["fqdn"], "api.github.com.");
    assert_eq!(by_ep[0]["source"], "connection");
    let by_pattern = json(&agent.cli(&["cache", "list", "--pattern", "*.microsoft.com", "-o", "json"]).await);
    assert_eq!(by_pattern.len(), 1);
    assert_eq!(by_pattern[0]["ips"], serde_json::json!(["13.107.1.1"]));
    assert_eq!(by_pattern[0]["expires"], "2023-11-27T10:05:01Z");

    let bad = agent.cli(&["cache", "list", "--pattern", "bad name!"]).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad name!"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_bad_requests_over_the_raw_socket() {
    let agent = Agent::start(64);
    let path = admin::socket_path(agent.state_dir());
    let ask = move |line: &'static str| {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = UnixStream::connect(&path).unwrap();
            s.write_all(line.as_bytes()).unwrap();
            let mut reply = String::new();
            BufReader::new(s).read_line(&mut reply).unwrap();
            serde_json::from_str::<Value>(&reply).unwrap()
        })
    };
    let status = ask("{\"op\":\"status\"}\n").await.unwrap();
    assert_eq!(status["status"]["ready"], false);
    assert_eq!(status["status"]["not_loaded"], serde_json::json!(["policies", "datapath"]));
    assert_eq!(status["status"]["flows_buffered"], 4);
    assert_eq!(status["status"]["flows_capacity"], 64);
    let bad = ask("{\"op\":\"reboot\"}\n").await.unwrap();
    assert!(bad["error"].as_str().unwrap().contains("reboot"), "{bad}");
    let bad_ep = ask("{\"op\":\"cache_list\",\"endpoint\":\"noslash\"}\n").await.unwrap();
    assert!(bad_ep["error"].as_str().unwrap().contains("noslash"), "{bad_ep}");
    let mode = std::fs::metadata(admin::socket_path(agent.state_dir())).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_agent_is_a_clear_error_and_a_stale_socket_is_replaced() {
    let dir = tempfile::Builder::new().prefix("fqdnd-noagent-").tempdir().unwrap();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            Command::new(FQDND).args(args).env_remove("FQDND_STATE_DIR").output().unwrap()
        })
    };
    let state = dir.path().to_str().unwrap().to_string();
    let missing = run(vec!["observe".into(), "--state-dir".into(), state.clone()]).await.unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("no fqdnd agent at") && err.contains("not found"), "{err}");

    // A socket file nobody listens on (an agent that crashed).
    let path = admin::socket_path(dir.path());
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let refused = run(vec!["cache".into(), "list".into(), "--state-dir".into(), state.clone()]).await.unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("no fqdnd agent at") && err.contains("connection refused"), "{err}");

    // A new agent removes the stale socket and serves; a second one on the same dir is refused.
    let hub = Arc::new(FlowHub::new(8));
    let state_for = || AdminState {
        hub: hub.clone(),
        cache: Arc::new(FakeCache(vec![])),
        readiness: Arc::new(Readiness::default()),
        started: SystemTime::now(),
    };
    let _server = admin::serve(&path, state_for()).unwrap();
    let again = admin::serve(&path, state_for()).err().expect("a second agent on the same socket");
    assert!(again.to_string().contains("another fqdnd agent"), "{again}");
    let ok = run(vec!["observe".into(), "--state-dir".into(), state]).await.unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}

/// Wait for a condition the test itself brings about; the bound only turns a hang into a failure.
async fn wait_for(cond: impl Fn() -> bool) {
    for _ in 0..3000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 30 s");
}
