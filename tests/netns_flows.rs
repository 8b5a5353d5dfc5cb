//! Flows and metrics of the real agent, end to end: the seed's stage 4 in network namespaces
//! (tests/common/topology.rs), a musl lookup and connections from the pod, then `fqdnd observe`
//! (a process reading the agent's admin socket) and `curl /metrics` in the node namespace.
//! Root only (see tests/common/privileged.rs).

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::clients::Libc;
use common::privileged;
use common::topology::{
    Cluster, DROPPED_CONNECT, KUBE_DNS_IP, METRICS_ADDR, POD_IP4, WWW_GOOGLE4, WWW_MICROSOFT4, metric_sum, run_bounded,
    seed_stage,
};
use serde_json::{Value, json};

fn stage4() -> Cluster {
    let mut c = Cluster::start();
    c.set_policy("locking-down-alpine.yaml", &seed_stage(4));
    c
}

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

fn dns_flow<'a>(lines: &'a [Value], l7_type: &str, query: &str, qtype: &str) -> Option<&'a Value> {
    lines.iter().map(|l| &l["flow"]).find(|f| {
        at(f, &["l7", "type"]) == l7_type
            && at(f, &["l7", "dns", "query"]) == query
            && at(f, &["l7", "dns", "qtypes"]) == &json!([qtype])
    })
}

#[test]
fn observe_shows_dns_and_drop_flows_of_the_pod() {
    if !privileged::available("observe_shows_dns_and_drop_flows_of_the_pod") {
        return;
    }
    let c = stage4();
    let r = c.getaddrinfo(Libc::Musl, "www.microsoft.com", Some(80));
    assert_eq!((r.exit_code, r.connected), (0, true), "{r:?}");
    let r = c.getaddrinfo(Libc::Musl, "www.google.com", None);
    assert_eq!(r.exit_code, 0, "{r:?}");
    let denied = SocketAddr::new(WWW_GOOGLE4, 443);
    let (sport, res) = c.connect(denied, DROPPED_CONNECT);
    assert!(res.is_err(), "stage 4 denies www.google.com's address");
    let drop = c.wait_flow(&[], "for the denied connect", |f| {
        at(f, &["verdict"]) == "DROPPED" && at(f, &["l4", "TCP", "source_port"]) == sport
    });

    // Every line parses (observe() asserts it) and carries Hubble's fields.
    let lines = c.observe(&[]);
    for l in &lines {
        let f = &l["flow"];
        for key in ["time", "verdict", "IP", "l4", "source", "Type", "is_reply", "Summary"] {
            assert!(f.get(key).is_some(), "no {key} in {l}");
        }
        // A destination is an endpoint (DNS flows: kube-dns, or alpine for answers) or, for the
        // world, just its IP.
        assert!(f["destination"].is_object() && f["source"].is_object(), "no source/destination in {l}");
        let time = f["time"].as_str().expect("time is an RFC 3339 string");
        assert!(time.len() > 20 && time.as_bytes()[10] == b'T' && time.ends_with('Z'), "time {time:?}");
    }

    let request =
        dns_flow(&lines, "REQUEST", "www.microsoft.com.", "A").expect("request flow for www.microsoft.com. A");
    assert_eq!(request["verdict"], "FORWARDED", "{request}");
    assert_eq!(request["Type"], "L7", "{request}");
    assert_eq!(request["IP"]["source"], POD_IP4.to_string(), "{request}");
    assert_eq!(request["IP"]["destination"], KUBE_DNS_IP.to_string(), "{request}");
    assert_eq!(request["l4"]["UDP"]["destination_port"], 53, "{request}");
    assert_eq!(request["source"]["namespace"], "default", "{request}");
    assert_eq!(request["source"]["pod_name"], "alpine", "{request}");
    assert!(request["source"]["labels"].as_array().is_some_and(|l| l.contains(&json!("k8s:app=alpine"))), "{request}");
    assert_eq!(request["destination"]["namespace"], "kube-system", "{request}");
    assert_eq!(request["destination"]["pod_name"], "kube-dns", "{request}");
    assert_eq!(request["is_reply"], false, "{request}");
    assert_eq!(request["Summary"], "DNS Query www.microsoft.com. A", "{request}");

    let response =
        dns_flow(&lines, "RESPONSE", "www.microsoft.com.", "A").expect("response flow for www.microsoft.com. A");
    assert_eq!(response["verdict"], "FORWARDED", "{response}");
    assert_eq!(response["IP"]["source"], KUBE_DNS_IP.to_string(), "{response}");
    assert_eq!(response["IP"]["destination"], POD_IP4.to_string(), "{response}");
    assert_eq!(response["l4"]["UDP"]["source_port"], 53, "{response}");
    assert_eq!(response["is_reply"], true, "{response}");
    let dns = &response["l7"]["dns"];
    assert_eq!(dns["ips"], json!([WWW_MICROSOFT4.to_string()]), "{response}");
    assert_eq!(dns["ttl"], 300, "{response}");
    assert_eq!(dns["rrtypes"], json!(["A"]), "{response}");
    assert_eq!(dns["observation_source"], "proxy", "{response}");
    assert!(dns.get("rcode").is_none_or(|r| r == 0), "NOERROR: {response}");
    let summary = response["Summary"].as_str().unwrap_or_default();
    assert!(summary.starts_with(&format!("DNS Answer \"{WWW_MICROSOFT4}\" TTL: 300")), "{summary}");
    // A search-list expansion: kube-dns's NXDOMAIN, as the rcode.
    let nx = dns_flow(&lines, "RESPONSE", "www.microsoft.com.default.svc.cluster.local.", "A")
        .expect("the first search-list expansion's answer");
    assert_eq!(nx["l7"]["dns"]["rcode"], 3, "{nx}");

    // The drop names what the pod resolved to that address.
    assert_eq!(drop["drop_reason_desc"], "POLICY_DENIED", "{drop}");
    assert_eq!(drop["destination_names"], json!(["www.google.com"]), "{drop}");
    assert_eq!(drop["Type"], "L3_L4", "{drop}");
    assert_eq!(drop["IP"]["destination"], WWW_GOOGLE4.to_string(), "{drop}");
    assert_eq!(drop["destination"]["labels"], json!(["reserved:world"]), "{drop}");
    assert_eq!(drop["l4"]["TCP"]["destination_port"], 443, "{drop}");
    assert_eq!(drop["l4"]["TCP"]["flags"]["SYN"], true, "{drop}");
    assert_eq!(drop["source"]["pod_name"], "alpine", "{drop}");
    assert_eq!(drop["is_reply"], false, "{drop}");
    assert!(drop["Summary"].as_str().is_some_and(|s| s.contains("SYN")), "{drop}");

    // Filters.
    let dropped = c.observe(&["--verdict", "DROPPED"]);
    assert!(dropped.iter().all(|l| l["flow"]["verdict"] == "DROPPED"), "{dropped:?}");
    assert!(dropped.iter().any(|l| l["flow"] == drop), "the drop is among --verdict DROPPED");
    let dns_only = c.observe(&["--type", "dns"]);
    assert!(dns_only.iter().all(|l| l["flow"]["l7"]["dns"].is_object()), "{dns_only:?}");
    assert!(dns_only.iter().any(|l| l["flow"] == *request), "the request is among --type dns");
    assert!(!dns_only.iter().any(|l| l["flow"] == drop), "the drop is not a dns flow");
    let alpine = c.observe(&["--pod", "default/alpine"]);
    assert_eq!(alpine.len(), lines.len(), "every flow here is alpine's");
    let kube_dns = c.observe(&["--pod", "kube-system/kube-dns"]);
    assert!(!kube_dns.is_empty() && kube_dns.iter().all(|l| l["flow"]["l7"]["dns"].is_object()), "{kube_dns:?}");
    assert!(c.observe(&["--pod", "default/nginx"]).is_empty(), "no such pod");
    let drops_of_alpine = c.observe(&["--pod", "default/alpine", "--type", "drop"]);
    assert!(drops_of_alpine.iter().any(|l| l["flow"] == drop), "{drops_of_alpine:?}");

    // The compact form, Hubble's line.
    let out = c.cli(&["observe", "--last", "100000", "--type", "dns"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.ends_with("dns-request proxy FORWARDED (DNS Query www.microsoft.com. A)"))
        .unwrap_or_else(|| panic!("no compact request line:\n{text}"));
    assert!(line.contains(": default/alpine:") && line.contains(" -> kube-system/kube-dns:53 "), "{line}");
    assert!(!text.contains('\u{1b}'), "no colours when piped");
}

#[test]
fn metrics_count_queries_and_drops() {
    if !privileged::available("metrics_count_queries_and_drops") {
        return;
    }
    let c = stage4();
    let before = c.metrics();
    let queries = metric_sum(&before, "fqdnd_dns_queries_total");
    let drops = metric_sum(&before, "fqdnd_policy_drops_total");
    let r = c.getaddrinfo(Libc::Musl, "www.microsoft.com", None);
    assert_eq!(r.exit_code, 0, "{r:?}");
    // musl asks A and AAAA for the three expansions and the name itself.
    let after = c.metrics();
    assert!(
        metric_sum(&after, "fqdnd_dns_queries_total") >= queries + 8.0,
        "fqdnd_dns_queries_total did not move by 8:\nbefore:\n{before}\nafter:\n{after}"
    );
    let (_, res) = c.connect(SocketAddr::new(WWW_GOOGLE4, 80), DROPPED_CONNECT);
    assert!(res.is_err());
    c.wait_flow(&["--type", "drop"], "for the connect to www.google.com's address", |f| {
        f["IP"]["destination"] == WWW_GOOGLE4.to_string()
    });
    let page = c.metrics();
    assert!(metric_sum(&page, "fqdnd_policy_drops_total") > drops, "fqdnd_policy_drops_total did not move:\n{page}");
    for name in ["fqdnd_dns_upstream_latency_seconds_count", "fqdnd_cache_entries"] {
        assert!(metric_sum(&page, name) > 0.0, "{name} is zero:\n{page}");
    }

    let mut readyz = c.node.command("curl");
    readyz.args(["-sS", "--fail", "--max-time", "5"]).arg(format!("http://{METRICS_ADDR}/readyz"));
    let out = run_bounded(readyz, std::time::Duration::from_secs(10));
    assert!(out.status.success(), "/readyz: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_stuck_observer_does_not_block_queries() {
    if !privileged::available("a_stuck_observer_does_not_block_queries") {
        return;
    }
    let c = stage4();
    // A follower whose stdout nobody reads: its pipe, its socket and its queue at the agent fill up.
    let mut stuck = Command::new(env!("CARGO_BIN_EXE_fqdnd"))
        .args(["observe", "-f", "-o", "json", "--state-dir"])
        .arg(c.state_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("observe -f");

    // dnsperf in the pod: 4,000 queries through the proxy, each answered.
    let queries = c.dir.path().join("queries.txt");
    std::fs::write(&queries, "www.microsoft.com A\nlogin.microsoft.com A\nwww.microsoft.com AAAA\nwww.google.com A\n")
        .unwrap();
    let q = queries.display().to_string();
    let out = c.pod_exec(
        std::path::Path::new("dnsperf"),
        &["-s", &KUBE_DNS_IP.to_string(), "-d", &q, "-n", "1000", "-c", "4", "-t", "3"],
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dnsperf: {report}{}", String::from_utf8_lossy(&out.stderr));
    let completed = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries completed:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no 'Queries completed' in dnsperf's report:\n{report}"));
    assert_eq!(completed, 4000, "queries lost with a stuck observer:\n{report}");

    let page = c.metrics();
    let lost: f64 = page
        .lines()
        .filter(|l| l.starts_with("fqdnd_flows_dropped_total{reason=\"slow_reader\"}"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(lost > 0.0, "8,000 flows and the stuck follower lost none:\n{page}");
    // Other observers are served as before.
    let out = c.cli(&["observe", "-o", "json", "--last", "1"]);
    assert!(out.status.success(), "observe --last 1: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1, "observe --last 1");
    let _ = stuck.kill();
    let _ = stuck.wait();
}
