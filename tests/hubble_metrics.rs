//! Hubble's metrics on a real agent's /metrics, read by a real Prometheus parser: the
//! `prometheus_client` Python package's OpenMetrics parser (tests/hubble/parse_metrics.py), after
//! real dig queries through the agent. Checks Hubble's metric names, types, label names and
//! values, that label values come from closed sets, and that context labels appear only when asked.
//!
//! Needs python3 with prometheus_client (`.ci/run` installs it with pip), and curl.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::hubble::{Agent, blocking, client, wait_seen};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Family {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    samples: Vec<Sample>,
}

#[derive(Debug, Deserialize)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The page at `/metrics`, fetched with curl and parsed by prometheus_client.
fn scrape(agent: &Agent) -> Vec<Family> {
    let url = format!("http://{}/metrics", agent.metrics_addr());
    let page = Command::new("curl").args(["-sS", "--fail", "--max-time", "30", &url]).output().expect("curl");
    assert!(page.status.success(), "curl: {}", String::from_utf8_lossy(&page.stderr));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hubble/parse_metrics.py");
    let mut parser = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (CI installs it, with prometheus_client)");
    parser.stdin.take().unwrap().write_all(&page.stdout).unwrap();
    let out = parser.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse the page: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&page.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("the parser's JSON")
}

fn family<'a>(fs: &'a [Family], name: &str) -> &'a Family {
    fs.iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no family {name} in {:?}", fs.iter().map(|f| f.name.as_str()).collect::<Vec<_>>()))
}

/// The value of the `<family>_total` sample with exactly these labels (0 when absent).
fn value(fs: &[Family], name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let f = family(fs, name);
    f.samples.iter().filter(|s| s.name == format!("{name}_total") && s.labels == want).map(|s| s.value).sum()
}

fn label_names(f: &Family) -> BTreeSet<Vec<String>> {
    f.samples.iter().map(|s| s.labels.keys().cloned().collect()).collect()
}

/// Five queries: two A and two AAAA the policy allows (one through a CNAME chain, one with no
/// AAAA record), one refused.
fn queries(agent: &Agent) {
    assert_eq!(agent.dig("www.microsoft.com", "A").data("A"), ["10.200.0.1"]);
    assert_eq!(agent.dig("www.microsoft.com", "AAAA").data("AAAA"), ["fd00:200::1"]);
    assert_eq!(agent.dig("chain.microsoft.com", "A").data("A"), ["10.200.0.3"]);
    assert_eq!(agent.dig("login.microsoft.com", "AAAA").status, "NOERROR");
    assert_eq!(agent.dig("www.google.com", "A").status, "NXDOMAIN");
}

async fn agent_after_queries(metrics: &'static str) -> Agent {
    let agent = blocking(move || {
        let agent = Agent::start(&["--hubble-metrics", metrics]);
        queries(&agent);
        agent
    })
    .await;
    wait_seen(&mut client(&agent.server()).await, 10).await;
    agent
}

const RCODES: [&str; 3] = ["", "No Error", "Policy denied"];
const TYPES: [&str; 4] = ["A", "AAAA", "CNAME", "OTHER"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubble_names_types_labels_and_values() {
    let agent = agent_after_queries("dns,drop,flow").await;
    let fs = blocking(move || scrape(&agent)).await;

    for name in [
        "hubble_dns_queries",
        "hubble_dns_responses",
        "hubble_dns_response_types",
        "hubble_drop",
        "hubble_flows_processed",
    ] {
        assert_eq!(family(&fs, name).kind, "counter", "{name}");
    }
    let names = |n: &[&str]| BTreeSet::from([n.iter().map(|s| s.to_string()).collect::<Vec<_>>()]);
    let sorted = |mut v: Vec<&'static str>| {
        v.sort_unstable();
        v
    };
    assert_eq!(label_names(family(&fs, "hubble_dns_queries")), names(&sorted(vec!["rcode", "qtypes", "ips_returned"])));
    assert_eq!(
        label_names(family(&fs, "hubble_dns_responses")),
        names(&sorted(vec!["rcode", "qtypes", "ips_returned"]))
    );
    assert_eq!(label_names(family(&fs, "hubble_dns_response_types")), names(&sorted(vec!["type", "qtypes"])));
    assert_eq!(label_names(family(&fs, "hubble_drop")), names(&sorted(vec!["reason", "protocol"])));
    assert_eq!(
        label_names(family(&fs, "hubble_flows_processed")),
        names(&sorted(vec!["protocol", "type", "subtype", "verdict"]))
    );

    let q = "hubble_dns_queries";
    assert_eq!(value(&fs, q, &[("rcode", ""), ("qtypes", "A"), ("ips_returned", "0")]), 2.0);
    assert_eq!(value(&fs, q, &[("rcode", ""), ("qtypes", "AAAA"), ("ips_returned", "0")]), 2.0);
    assert_eq!(value(&fs, q, &[("rcode", "Policy denied"), ("qtypes", "A"), ("ips_returned", "0")]), 1.0);
    let r = "hubble_dns_responses";
    assert_eq!(value(&fs, r, &[("rcode", "No Error"), ("qtypes", "A"), ("ips_returned", "1")]), 2.0);
    assert_eq!(value(&fs, r, &[("rcode", "No Error"), ("qtypes", "AAAA"), ("ips_returned", "1")]), 1.0);
    assert_eq!(value(&fs, r, &[("rcode", "No Error"), ("qtypes", "AAAA"), ("ips_returned", "0")]), 1.0);
    let t = "hubble_dns_response_types";
    assert!(value(&fs, t, &[("type", "A"), ("qtypes", "A")]) >= 2.0);
    assert!(value(&fs, t, &[("type", "CNAME"), ("qtypes", "A")]) >= 1.0, "the chain's CNAMEs");
    assert_eq!(value(&fs, t, &[("type", "AAAA"), ("qtypes", "AAAA")]), 1.0);
    // A refusal is one drop (its answer, a flow of its own in fqdnd, is not counted again).
    assert_eq!(value(&fs, "hubble_drop", &[("reason", "DROP_REASON_UNKNOWN"), ("protocol", "DNS")]), 1.0);
    let p = "hubble_flows_processed";
    let dns = |verdict| [("protocol", "DNS"), ("type", "L7"), ("subtype", "DNS"), ("verdict", verdict)];
    assert_eq!(value(&fs, p, &dns("FORWARDED")), 8.0);
    assert_eq!(value(&fs, p, &dns("DROPPED")), 2.0);

    // Closed sets only; no names, no addresses.
    for f in fs.iter().filter(|f| f.name.starts_with("hubble_")) {
        for s in &f.samples {
            for (k, v) in &s.labels {
                let ok = match k.as_str() {
                    "rcode" => RCODES.contains(&v.as_str()),
                    "qtypes" | "type" if f.name != "hubble_flows_processed" => TYPES.contains(&v.as_str()),
                    "ips_returned" => v.parse::<u32>().is_ok_and(|n| n <= 16) || v == "17+",
                    "reason" => v == "DROP_REASON_UNKNOWN" || v.starts_with("POLICY_DEN"),
                    "protocol" => ["DNS", "TCP", "UDP"].contains(&v.as_str()),
                    "type" => ["L7", "Drop"].contains(&v.as_str()),
                    "subtype" => ["DNS", ""].contains(&v.as_str()),
                    "verdict" => ["FORWARDED", "DROPPED", "ERROR"].contains(&v.as_str()),
                    _ => false,
                };
                assert!(ok, "{}: label {k}={v:?} is not from its closed set", s.name);
                assert!(!v.contains("microsoft") && !v.contains("google") && !v.contains("127.0."), "{k}={v}");
            }
        }
    }
    // fqdnd's own metrics are on the same page.
    assert_eq!(family(&fs, "fqdnd_dns_queries").kind, "counter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_labels_when_asked() {
    let agent = agent_after_queries(
        "dns:sourceContext=namespace;destinationContext=pod drop:sourceContext=pod-short flow:labelsContext=source_namespace,destination_namespace",
    )
    .await;
    let fs = blocking(move || scrape(&agent)).await;
    let q = "hubble_dns_queries";
    let labels = [("source", "default"), ("destination", "kube-system/kube-dns"), ("rcode", ""), ("qtypes", "A")];
    assert_eq!(value(&fs, q, &[labels[0], labels[1], labels[2], labels[3], ("ips_returned", "0")]), 2.0);
    // Answers go the other way.
    let r = [("source", "kube-system"), ("destination", "default/alpine"), ("rcode", "No Error"), ("qtypes", "A")];
    assert_eq!(value(&fs, "hubble_dns_responses", &[r[0], r[1], r[2], r[3], ("ips_returned", "1")]), 2.0);
    assert_eq!(
        value(
            &fs,
            "hubble_drop",
            &[("source", "default/alpine"), ("reason", "DROP_REASON_UNKNOWN"), ("protocol", "DNS")]
        ),
        1.0
    );
    let p = [
        ("protocol", "DNS"),
        ("type", "L7"),
        ("subtype", "DNS"),
        ("verdict", "FORWARDED"),
        ("source_namespace", "default"),
        ("destination_namespace", "kube-system"),
    ];
    assert_eq!(value(&fs, "hubble_flows_processed", &p), 4.0);
}

#[test]
fn hubble_metrics_are_off_unless_asked() {
    let agent = Agent::start(&[]);
    assert!(agent.dig("www.microsoft.com", "A").status == "NOERROR");
    let fs = scrape(&agent);
    assert!(fs.iter().all(|f| !f.name.starts_with("hubble_")), "{:?}", fs.iter().map(|f| &f.name).collect::<Vec<_>>());
    // A bad setting stops the agent with the problem named.
    let out = Command::new(env!("CARGO_BIN_EXE_fqdnd"))
        .args(["run", "--hubble-metrics", "dns:query,http", "--upstream", "127.0.0.1:53", "--state-dir"])
        .arg(agent.fqdnd.dir.path().join("other-state"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--hubble-metrics: dns:query: fqdnd never labels metrics with query names"), "{err}");
    assert!(err.contains("--hubble-metrics: http: a Hubble metric fqdnd has no flows for"), "{err}");
}
