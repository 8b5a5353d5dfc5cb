//! The agent's metrics (explicit `prometheus-client` registry, `fqdnd_` prefix) and the small HTTP
//! server for `/metrics`, `/healthz` and `/readyz`.
//!
//! The server is a hand-written HTTP/1.1 responder on tokio rather than hyper: three GET paths, one
//! response per connection, no bodies to read. It costs ~100 lines and no new dependencies (hyper +
//! hyper-util + http-body-util would add a dozen crates to the build for this alone).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use policy_sync::SourceFault;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Where `--metrics-addr` points unless told otherwise.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9967";

/// The registry every fqdnd metric lives in; names come out as `fqdnd_<name>[_<unit>][_total]`.
/// It starts with `fqdnd_build_info{version,commit} 1`, which build this agent is.
pub fn new_registry() -> Registry {
    let mut registry = Registry::with_prefix("fqdnd");
    let info = prometheus_client::metrics::info::Info::new([
        ("version", crate::version::VERSION),
        ("commit", crate::version::COMMIT),
    ]);
    registry.register("build", "The agent's version and the git commit it was built from", info);
    registry
}

type OneLabel = [(&'static str, &'static str); 1];
type TwoLabels = [(&'static str, &'static str); 2];

/// Counters the agent's own parts move. Label values are fixed strings; each labelled series is
/// resolved once here, so the hot path only does an atomic add. `Default` gives unregistered
/// counters (tests, or an agent run without metrics).
#[derive(Clone, Debug, Default)]
pub struct AgentMetrics {
    /// Flows a follower (`fqdnd observe -f`) lost because it did not keep up.
    pub flows_dropped_slow_reader: Counter,
    /// Packets the datapath dropped: no allow entry under default deny (egress).
    pub policy_drops_denied: Counter,
    /// Packets the datapath dropped on an explicit deny rule (egress).
    pub policy_drops_deny: Counter,
    /// Packets to the endpoint dropped: no ingress allow entry under ingress default deny.
    pub policy_drops_ingress_denied: Counter,
    /// Packets to the endpoint dropped on an explicit ingressDeny rule.
    pub policy_drops_ingress_deny: Counter,
    /// Policy objects that failed to load (each one is reported and skipped).
    pub policy_load_errors: Counter,
    /// Loads that could not read the policy path (missing, unlistable, no longer a directory):
    /// every policy in force stayed.
    pub policy_source_faults_policies: Counter,
    /// Loads that could not use the endpoints file: the previous inventory stayed.
    pub policy_source_faults_endpoints: Counter,
    /// Audit mode: flows policy would have dropped, let through (one per flow).
    pub policy_audits_egress: Counter,
    pub policy_audits_ingress: Counter,
}

impl AgentMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let flows_dropped = Family::<OneLabel, Counter>::default();
        registry.register(
            "flows_dropped",
            "Flows lost before reaching an observer, by reason (slow_reader: a follower did not keep up)",
            flows_dropped.clone(),
        );
        let policy_drops = Family::<TwoLabels, Counter>::default();
        registry.register(
            "policy_drops",
            "Drop flows published, by reason (policy_denied: default deny and no allow entry for the peer; \
             policy_deny: an explicit egressDeny or ingressDeny rule matched) and direction (egress: sent by the \
             endpoint; ingress: going to it)",
            policy_drops.clone(),
        );
        let policy_audits = Family::<OneLabel, Counter>::default();
        registry.register(
            "policy_audits",
            "Audit mode: flows the datapath let through that policy would have dropped (the first packet of each), \
             by direction (the proxy counts refusals it forwarded in fqdnd_dns_queries_total{verdict=\"audit\"})",
            policy_audits.clone(),
        );
        let policy_load_errors = Counter::default();
        registry.register(
            "policy_load_errors",
            "Policy objects rejected while loading (reported and skipped)",
            policy_load_errors.clone(),
        );
        let source_faults = Family::<OneLabel, Counter>::default();
        registry.register(
            "policy_source_faults",
            "Policy loads that could not read part of their input and kept what was in force, by reason \
             (policies_unreadable: the policy path is missing, unlistable or no longer a directory; \
             endpoints_invalid: the endpoints file is unreadable or invalid)",
            source_faults.clone(),
        );
        let fault = |f: SourceFault| source_faults.get_or_create_owned(&[("reason", f.as_str())]);
        AgentMetrics {
            flows_dropped_slow_reader: flows_dropped.get_or_create_owned(&[("reason", "slow_reader")]),
            policy_drops_denied: policy_drops
                .get_or_create_owned(&[("reason", "policy_denied"), ("direction", "egress")]),
            policy_drops_deny: policy_drops.get_or_create_owned(&[("reason", "policy_deny"), ("direction", "egress")]),
            policy_drops_ingress_denied: policy_drops
                .get_or_create_owned(&[("reason", "policy_denied"), ("direction", "ingress")]),
            policy_drops_ingress_deny: policy_drops
                .get_or_create_owned(&[("reason", "policy_deny"), ("direction", "ingress")]),
            policy_load_errors,
            policy_source_faults_policies: fault(SourceFault::PoliciesUnreadable),
            policy_source_faults_endpoints: fault(SourceFault::EndpointsInvalid),
            policy_audits_egress: policy_audits.get_or_create_owned(&[("direction", "egress")]),
            policy_audits_ingress: policy_audits.get_or_create_owned(&[("direction", "ingress")]),
        }
    }

    /// The counter of one kind of source fault.
    pub fn source_fault(&self, fault: SourceFault) -> &Counter {
        match fault {
            SourceFault::PoliciesUnreadable => &self.policy_source_faults_policies,
            SourceFault::EndpointsInvalid => &self.policy_source_faults_endpoints,
        }
    }
}

/// The cache's size, read at scrape time so the cache keeps no metric state of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Live name/IP entries over all endpoints.
    pub entries: u64,
    /// Expired entries kept because connections still use them.
    pub zombies: u64,
    /// Entries evicted since start (`--max-ips-per-name`, `--max-zombies`).
    pub evictions: u64,
    /// Entries an endpoint's own newer lookups evicted at its quota (`--max-learned-per-endpoint`).
    pub quota_evictions: u64,
}

/// Implemented by the agent over its cache.
pub trait CacheStatsSource: Send + Sync + 'static {
    fn cache_stats(&self) -> CacheStats;
}

impl CacheStatsSource for fqdn_cache::Enforcer {
    fn cache_stats(&self) -> CacheStats {
        let c = self.counters();
        CacheStats {
            entries: c.entries,
            zombies: c.zombies,
            evictions: c.evictions + c.zombie_evictions,
            quota_evictions: c.quota_evictions,
        }
    }
}

/// Add `fqdnd_cache_entries`, `fqdnd_cache_zombies` and `fqdnd_cache_evictions_total`, asked of
/// `source` on every scrape.
pub fn register_cache_stats(registry: &mut Registry, source: Arc<dyn CacheStatsSource>) {
    registry.register_collector(Box::new(CacheCollector(source)));
}

struct CacheCollector(Arc<dyn CacheStatsSource>);

impl fmt::Debug for CacheCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CacheCollector")
    }
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let stats = self.0.cache_stats();
        let gauge = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
        let entries = gauge(stats.entries);
        entries.encode(encoder.encode_descriptor(
            "cache_entries",
            "Learned name/IP entries",
            None,
            entries.metric_type(),
        )?)?;
        let zombies = gauge(stats.zombies);
        zombies.encode(encoder.encode_descriptor(
            "cache_zombies",
            "Expired entries kept alive by connections",
            None,
            zombies.metric_type(),
        )?)?;
        let evictions = ConstCounter::new(stats.evictions);
        evictions.encode(encoder.encode_descriptor(
            "cache_evictions",
            "Entries evicted by the per-name IP cap or the zombie cap",
            None,
            evictions.metric_type(),
        )?)?;
        let quota = ConstCounter::new(stats.quota_evictions);
        quota.encode(encoder.encode_descriptor(
            "cache_quota_evictions",
            "Entries evicted because their endpoint reached --max-learned-per-endpoint (its own oldest idle ones)",
            None,
            quota.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Add the kernel datapath's packet counters, read from its per-CPU map at every scrape:
/// `fqdnd_datapath_packets_total{result}` (seen, allowed, redirected to the proxy, passed as a
/// reply), `fqdnd_datapath_drops_total{reason,direction}` (every drop the programs made, including those
/// whose event was lost) and `fqdnd_datapath_drop_events_lost_total`.
pub fn register_datapath_counters(registry: &mut Registry, datapath: Arc<ebpf_redirect::AyaDatapath>) {
    registry.register_collector(Box::new(DatapathCollector(datapath)));
}

struct DatapathCollector(Arc<ebpf_redirect::AyaDatapath>);

impl fmt::Debug for DatapathCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DatapathCollector")
    }
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let c = match self.0.counters() {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "reading the datapath counters for a scrape");
                return Ok(());
            }
        };
        let kind = ConstCounter::new(0u64).metric_type();
        let mut packets = encoder.encode_descriptor(
            "datapath_packets",
            "Packets of policed endpoints seen by the datapath, by result (seen: all; allowed: through an allow entry; \
             redirected: to the DNS proxy; reply: a reply to a connection opened towards the endpoint; ingress_reply: going to the endpoint, a reply to \
             what it opened, under ingress policy; rejected: denied and answered with a TCP RST or \
             ICMP port unreachable, also counted as a drop; audited: \
             flows audit mode let through that policy would have dropped, not counted as drops)",
            None,
            kind,
        )?;
        for (result, v) in [
            ("seen", c.seen),
            ("allowed", c.allowed),
            ("redirected", c.redirected),
            ("reply", c.ct_replies),
            ("ingress_reply", c.ingress_ct_replies),
            ("rejected", c.rejected),
            ("audited", c.audited),
        ] {
            ConstCounter::new(v).encode(packets.encode_family(&[("result", result)])?)?;
        }
        let mut drops = encoder.encode_descriptor(
            "datapath_drops",
            "Packets the datapath dropped, by reason (policy_denied: default deny and no allow entry; policy_deny: \
             an explicit deny rule; proxy_unavailable: DNS for the proxy, which had no socket; invalid_source_ip: a \
             source address that is not the endpoint's) and direction \
             (egress: sent by the endpoint; ingress: going to it)",
            None,
            kind,
        )?;
        for (reason, direction, v) in [
            ("policy_denied", "egress", c.dropped_denied),
            ("policy_deny", "egress", c.dropped_deny),
            ("proxy_unavailable", "egress", c.dropped_no_proxy),
            ("invalid_source_ip", "egress", c.dropped_spoofed),
            ("policy_denied", "ingress", c.ingress_dropped_denied),
            ("policy_deny", "ingress", c.ingress_dropped_deny),
        ] {
            ConstCounter::new(v).encode(drops.encode_family(&[("reason", reason), ("direction", direction)])?)?;
        }
        let lost = ConstCounter::new(c.events_lost);
        lost.encode(encoder.encode_descriptor(
            "datapath_drop_events_lost",
            "Drop events lost because the ring buffer was full (the drops are still counted)",
            None,
            kind,
        )?)?;
        let fill = self.0.map_fill();
        let gauge = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
        let gauge_kind = gauge(0).metric_type();
        let mut entries = encoder.encode_descriptor(
            "datapath_map_entries",
            "Entries in each of the datapath's tries and its endpoint table, by map (pin name)",
            None,
            gauge_kind,
        )?;
        for f in &fill {
            gauge(f.entries as u64).encode(entries.encode_family(&[("map", f.map)])?)?;
        }
        let mut capacity = encoder.encode_descriptor(
            "datapath_map_capacity",
            "Entries each map can hold (max_entries; the allow maps' is --allow-map-size), by map",
            None,
            gauge_kind,
        )?;
        for f in &fill {
            gauge(u64::from(f.capacity)).encode(capacity.encode_family(&[("map", f.map)])?)?;
        }
        Ok(())
    }
}

/// `/readyz` turns 200 once the agent has set both; `/healthz` is 200 while the server runs.
#[derive(Debug, Default)]
pub struct Readiness {
    policies: AtomicBool,
    datapath: AtomicBool,
}

impl Readiness {
    pub fn set_policies_loaded(&self, loaded: bool) {
        self.policies.store(loaded, Ordering::Release);
    }

    pub fn set_datapath_loaded(&self, loaded: bool) {
        self.datapath.store(loaded, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.missing().is_empty()
    }

    /// What is not loaded yet, for the `/readyz` body and the admin socket's status.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.policies.load(Ordering::Acquire) {
            missing.push("policies");
        }
        if !self.datapath.load(Ordering::Acquire) {
            missing.push("datapath");
        }
        missing
    }
}

/// A running metrics server; dropping it stops it.
pub struct MetricsServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bind `addr` and serve `/metrics` (OpenMetrics text of `registry`), `/healthz` and `/readyz`.
pub async fn serve(addr: SocketAddr, registry: Arc<Registry>, readiness: Arc<Readiness>) -> io::Result<MetricsServer> {
    serve_registries(addr, vec![registry], readiness).await
}

/// [`serve`] with several registries on one page: a registry has one name prefix, and Hubble's
/// metrics (`hubble_*`) sit beside fqdnd's (`fqdnd_*`).
pub async fn serve_registries(
    addr: SocketAddr,
    registries: Vec<Arc<Registry>>,
    readiness: Arc<Readiness>,
) -> io::Result<MetricsServer> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("metrics server: binding {addr}: {e}")))?;
    serve_listener(listener, registries, readiness)
}

/// [`serve_registries`] on a listener bound already (or handed over by the agent this one
/// replaces).
pub fn serve_listener(
    listener: std::net::TcpListener,
    registries: Vec<Arc<Registry>>,
    readiness: Arc<Readiness>,
) -> io::Result<MetricsServer> {
    let registries: Arc<[Arc<Registry>]> = registries.into();
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let local_addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let (registries, readiness) = (registries.clone(), readiness.clone());
                    tokio::spawn(async move {
                        if let Err(e) = handle(stream, &registries, &readiness).await {
                            tracing::debug!(error = %e, "metrics connection");
                        }
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "metrics server: accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    tracing::info!(addr = %local_addr, "metrics server listening");
    Ok(MetricsServer { local_addr, task })
}

const MAX_REQUEST_HEAD: usize = 8192;
/// A client that sends no complete request head within this is dropped (not a test timing).
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

async fn handle(mut stream: TcpStream, registries: &[Arc<Registry>], readiness: &Readiness) -> io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let response = respond(&head, registries, readiness);
    stream.write_all(&response).await?;
    stream.shutdown().await
}

async fn read_head(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > MAX_REQUEST_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head too large"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

/// The whole HTTP response for a request head.
fn respond(head: &[u8], registries: &[Arc<Registry>], readiness: &Readiness) -> Vec<u8> {
    let line = head.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return http_response(405, "text/plain", "only GET and HEAD\n".into(), method == "HEAD");
    }
    let head_only = method == "HEAD";
    match path {
        "/metrics" => {
            let mut body = String::new();
            let encoded = registries
                .iter()
                .try_for_each(|r| prometheus_client::encoding::text::encode_registry(&mut body, r))
                .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut body));
            match encoded {
                Ok(()) => {
                    http_response(200, "application/openmetrics-text; version=1.0.0; charset=utf-8", body, head_only)
                }
                Err(_) => http_response(500, "text/plain", "encoding metrics failed\n".into(), head_only),
            }
        }
        "/healthz" => http_response(200, "text/plain", "ok\n".into(), head_only),
        "/readyz" => {
            let missing = readiness.missing();
            if missing.is_empty() {
                http_response(200, "text/plain", "ready\n".into(), head_only)
            } else {
                let body = format!("not ready: {} not loaded\n", missing.join(" and "));
                http_response(503, "text/plain", body, head_only)
            }
        }
        _ => http_response(404, "text/plain", format!("{path}: not found\n"), head_only),
    }
}

fn http_response(status: u16, content_type: &str, body: String, head_only: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    impl CacheStatsSource for Fixed {
        fn cache_stats(&self) -> CacheStats {
            CacheStats { entries: 12, zombies: 3, evictions: 7, quota_evictions: 2 }
        }
    }

    fn encoded(registry: &Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, registry).unwrap();
        s
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut registry = new_registry();
        let m = AgentMetrics::register(&mut registry);
        register_cache_stats(&mut registry, Arc::new(Fixed));
        m.flows_dropped_slow_reader.inc_by(5);
        m.policy_drops_denied.inc();
        m.policy_load_errors.inc();
        m.source_fault(SourceFault::PoliciesUnreadable).inc_by(2);
        let text = encoded(&registry);
        for want in [
            "fqdnd_policy_source_faults_total{reason=\"policies_unreadable\"} 2",
            "fqdnd_policy_source_faults_total{reason=\"endpoints_invalid\"} 0",
            "fqdnd_flows_dropped_total{reason=\"slow_reader\"} 5",
            "fqdnd_policy_drops_total{reason=\"policy_denied\",direction=\"egress\"} 1",
            "fqdnd_policy_drops_total{reason=\"policy_deny\",direction=\"egress\"} 0",
            "fqdnd_policy_drops_total{reason=\"policy_denied\",direction=\"ingress\"} 0",
            "fqdnd_policy_load_errors_total 1",
            "fqdnd_cache_entries 12",
            "fqdnd_cache_zombies 3",
            "fqdnd_cache_evictions_total 7",
            "fqdnd_cache_quota_evictions_total 2",
            &format!(
                "fqdnd_build_info{{version=\"{}\",commit=\"{}\"}} 1",
                crate::version::VERSION,
                crate::version::COMMIT
            ),
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn routes() {
        let registry = [Arc::new(new_registry())];
        let readiness = Readiness::default();
        let status = |req: &str| {
            let resp = String::from_utf8(respond(req.as_bytes(), &registry, &readiness)).unwrap();
            resp.split(' ').nth(1).unwrap().parse::<u16>().unwrap()
        };
        assert_eq!(status("GET /healthz HTTP/1.1\r\n\r\n"), 200);
        assert_eq!(status("GET /readyz HTTP/1.1\r\n\r\n"), 503);
        readiness.set_policies_loaded(true);
        assert_eq!(status("GET /readyz HTTP/1.1\r\n\r\n"), 503);
        readiness.set_datapath_loaded(true);
        assert_eq!(status("GET /readyz HTTP/1.1\r\n\r\n"), 200);
        assert_eq!(status("GET /metrics?x=1 HTTP/1.1\r\n\r\n"), 200);
        assert_eq!(status("POST /metrics HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(status("GET /nope HTTP/1.1\r\n\r\n"), 404);
        let head = String::from_utf8(respond(b"HEAD /healthz HTTP/1.1\r\n\r\n", &registry, &readiness)).unwrap();
        assert!(head.ends_with("\r\n\r\n") && head.contains("Content-Length: 3"), "{head}");
    }

    #[test]
    fn registries_share_one_page_and_one_eof() {
        let mut fqdnd = new_registry();
        AgentMetrics::register(&mut fqdnd).policy_load_errors.inc();
        let mut other = Registry::with_prefix("hubble");
        let c = Counter::<u64>::default();
        other.register("drop", "drops", c.clone());
        c.inc_by(2);
        let resp =
            respond(b"GET /metrics HTTP/1.1\r\n\r\n", &[Arc::new(fqdnd), Arc::new(other)], &Readiness::default());
        let text = String::from_utf8(resp).unwrap();
        assert!(
            text.contains("fqdnd_policy_load_errors_total 1\n") && text.contains("hubble_drop_total 2\n"),
            "{text}"
        );
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
