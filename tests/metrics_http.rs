//! The metrics server over real HTTP: `curl` as the client, counters moving between scrapes,
//! Prometheus naming, `/healthz` and `/readyz`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use dns_proxy::Verdict;
use dns_proxy::metrics::ProxyMetrics;
use ebpf_redirect::{DropEvent, DropReason};
use fqdn_cache::{EndpointId, L4Proto};
use fqdnd::flows::{FlowHub, HubConfig, NoNames};
use fqdnd::metrics::{self, AgentMetrics, CacheStats, CacheStatsSource, Readiness};

#[derive(Default)]
struct LiveCache {
    entries: AtomicU64,
}

impl CacheStatsSource for LiveCache {
    fn cache_stats(&self) -> CacheStats {
        CacheStats { entries: self.entries.load(Ordering::Relaxed), zombies: 1, evictions: 2, quota_evictions: 3 }
    }
}

/// `curl -s -w '\n%{http_code}' URL` -> (status, body).
async fn curl(url: String) -> (u16, String) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl").args(["-s", "--max-time", "30", "-w", "\n%{http_code}", &url]).output()
    })
    .await
    .unwrap()
    .expect("curl is installed (CI installs it)");
    assert!(out.status.success(), "curl {}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

/// The value of one sample line (`name{labels} value`).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_and_names_follow_conventions() {
    let mut registry = metrics::new_registry();
    let agent = AgentMetrics::register(&mut registry);
    let proxy = ProxyMetrics::register(&mut registry);
    let cache = Arc::new(LiveCache::default());
    metrics::register_cache_stats(&mut registry, cache.clone());
    let readiness = Arc::new(Readiness::default());
    let server = metrics::serve("127.0.0.1:0".parse().unwrap(), Arc::new(registry), readiness.clone()).await.unwrap();
    let url = format!("http://{}/metrics", server.local_addr());

    let (code, before) = curl(url.clone()).await;
    assert_eq!(code, 200);
    let forwarded_a = "fqdnd_dns_queries_total{verdict=\"forwarded\",qtype=\"A\"}";
    assert_eq!(sample(&before, forwarded_a), Some(0.0));
    assert_eq!(sample(&before, "fqdnd_cache_entries"), Some(0.0));

    // Move things the way the agent does: queries through the proxy metrics, drops through the hub.
    for _ in 0..3 {
        proxy.query(Verdict::Forwarded, 1);
    }
    proxy.query(Verdict::Dropped, 28);
    proxy.upstream_latency(Duration::from_millis(2));
    proxy.datapath_ack_latency(Duration::from_micros(150));
    proxy.datapath_ack_timeout();
    let hub = FlowHub::with_config(HubConfig::default(), agent.clone());
    let drop = DropEvent {
        endpoint: EndpointId(1),
        direction: ebpf_redirect::Direction::Egress,
        src: "10.0.1.5:40000".parse().unwrap(),
        dst: "192.0.2.1:443".parse().unwrap(),
        proto: L4Proto::Tcp,
        tcp_flags: 0x02,
        reason: DropReason::PolicyDenied,
        rejected: false,
        audit: false,
        time: SystemTime::now(),
    };
    hub.ingest_drop(&drop, &policy_sync::Snapshot::default(), &NoNames);
    cache.entries.store(42, Ordering::Relaxed);

    let (_, after) = curl(url).await;
    for (series, want) in [
        (forwarded_a, 3.0),
        ("fqdnd_dns_queries_total{verdict=\"dropped\",qtype=\"AAAA\"}", 1.0),
        ("fqdnd_dns_upstream_latency_seconds_count", 1.0),
        ("fqdnd_datapath_ack_latency_seconds_count", 1.0),
        ("fqdnd_datapath_ack_timeouts_total", 1.0),
        ("fqdnd_policy_drops_total{reason=\"policy_denied\",direction=\"egress\"}", 1.0),
        ("fqdnd_flows_dropped_total{reason=\"slow_reader\"}", 0.0),
        ("fqdnd_cache_entries", 42.0),
        ("fqdnd_cache_zombies", 1.0),
        ("fqdnd_cache_evictions_total", 2.0),
        ("fqdnd_cache_quota_evictions_total", 3.0),
    ] {
        assert_eq!(sample(&after, series), Some(want), "{series} in\n{after}");
    }

    // Conventions: every series under fqdnd_, counters end in _total, histograms are in seconds.
    for line in after.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(name.starts_with("fqdnd_"), "{line}");
            match kind {
                "counter" => assert!(
                    after.lines().any(|l| l.starts_with(&format!("{name}_total"))),
                    "counter {name} has no _total series"
                ),
                "histogram" => assert!(name.ends_with("_seconds"), "histogram {name} is not in seconds"),
                "gauge" => {}
                // OpenMetrics info: one `<name>_info{labels} 1` series (fqdnd_build_info).
                "info" => assert!(
                    after.lines().any(|l| l.starts_with(&format!("{name}_info{{")) && l.ends_with(" 1")),
                    "info {name} has no _info series"
                ),
                other => panic!("unexpected metric type {other} for {name}"),
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            assert!(line.starts_with("fqdnd_"), "{line}");
        }
    }
    assert!(after.ends_with("# EOF\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let readiness = Arc::new(Readiness::default());
    let server = metrics::serve("127.0.0.1:0".parse().unwrap(), Arc::new(metrics::new_registry()), readiness.clone())
        .await
        .unwrap();
    let base = format!("http://{}", server.local_addr());
    assert_eq!(curl(format!("{base}/healthz")).await, (200, "ok\n".to_string()));
    let (code, body) = curl(format!("{base}/readyz")).await;
    assert_eq!((code, body.as_str()), (503, "not ready: policies and datapath not loaded\n"));
    readiness.set_policies_loaded(true);
    let (code, body) = curl(format!("{base}/readyz")).await;
    assert_eq!((code, body.as_str()), (503, "not ready: datapath not loaded\n"));
    readiness.set_datapath_loaded(true);
    assert_eq!(curl(format!("{base}/readyz")).await, (200, "ready\n".to_string()));
    assert_eq!(curl(format!("{base}/nope")).await.0, 404);

    // A hand-written client too: the responder must not depend on curl's habits.
    let addr = server.local_addr();
    let raw = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n") && raw.ends_with("\r\n\r\nok\n"), "{raw:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err =
        metrics::serve(addr, Arc::new(metrics::new_registry()), Arc::new(Readiness::default())).await.err().unwrap();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
