//! The proxy's Prometheus metrics, registered into the agent's registry (prefix `fqdnd_`).
//!
//! Every labelled series is resolved once in [`ProxyMetrics::register`]; recording a query is an
//! array index and an atomic add. Label values come from closed enums (verdict, query type), never
//! from query names or endpoints.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::flow::Verdict;

/// The query types counted on their own; everything else is `OTHER`.
const QTYPES: [(u16, &str); 12] = [
    (1, "A"),
    (28, "AAAA"),
    (5, "CNAME"),
    (33, "SRV"),
    (16, "TXT"),
    (12, "PTR"),
    (15, "MX"),
    (2, "NS"),
    (6, "SOA"),
    (65, "HTTPS"),
    (64, "SVCB"),
    (255, "ANY"),
];
const OTHER: usize = QTYPES.len();
const VERDICTS: [Verdict; 3] = [Verdict::Forwarded, Verdict::Dropped, Verdict::Error];

fn verdict_label(v: Verdict) -> &'static str {
    match v {
        Verdict::Forwarded => "forwarded",
        Verdict::Dropped => "dropped",
        Verdict::Error => "error",
    }
}

fn verdict_index(v: Verdict) -> usize {
    match v {
        Verdict::Forwarded => 0,
        Verdict::Dropped => 1,
        Verdict::Error => 2,
    }
}

fn qtype_index(qtype: u16) -> usize {
    QTYPES.iter().position(|(n, _)| *n == qtype).unwrap_or(OTHER)
}

type QueryLabels = [(&'static str, &'static str); 2];

/// Latency buckets from 50 µs to ~3.3 s, doubling: DNS on a node spans loopback answers to slow
/// upstreams, and `--response-max-delay` (100 ms default) sits in the middle.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.00005, 2.0, 17)
}

#[derive(Clone, Debug)]
pub struct ProxyMetrics {
    /// `[verdict][qtype]`, `OTHER` last.
    queries: [[Counter; OTHER + 1]; 3],
    upstream_latency: Histogram,
    processing_latency: Histogram,
    datapath_ack_latency: Histogram,
    datapath_ack_timeouts: Counter,
}

impl ProxyMetrics {
    /// Register the proxy's metrics:
    /// `fqdnd_dns_queries_total{verdict,qtype}`, `fqdnd_dns_upstream_latency_seconds`,
    /// `fqdnd_dns_processing_latency_seconds`, `fqdnd_datapath_ack_latency_seconds`,
    /// `fqdnd_datapath_ack_timeouts_total` (names as the agent's registry prefix `fqdnd` makes them).
    pub fn register(registry: &mut Registry) -> Self {
        let family = Family::<QueryLabels, Counter>::default();
        registry.register(
            "dns_queries",
            "DNS queries the proxy answered, by verdict (forwarded, dropped: refused by policy, error) and query type",
            family.clone(),
        );
        let queries = VERDICTS.map(|v| {
            let mut row: [Counter; OTHER + 1] = Default::default();
            for (i, counter) in row.iter_mut().enumerate() {
                let qtype = QTYPES.get(i).map(|(_, name)| *name).unwrap_or("OTHER");
                *counter = family.get_or_create_owned(&[("verdict", verdict_label(v)), ("qtype", qtype)]);
            }
            row
        });
        let histogram = |registry: &mut Registry, name: &str, help: &str| {
            let h = Histogram::new(latency_buckets());
            registry.register_with_unit(name, help, Unit::Seconds, h.clone());
            h
        };
        let upstream_latency =
            histogram(registry, "dns_upstream_latency", "Time from forwarding a query upstream to its answer arriving");
        let processing_latency = histogram(
            registry,
            "dns_processing_latency",
            "Time from a query's arrival to the proxy's reply, upstream and datapath waits included",
        );
        let datapath_ack_latency = histogram(
            registry,
            "datapath_ack_latency",
            "Time from handing learned IPs to the datapath to its acknowledgement",
        );
        let datapath_ack_timeouts = Counter::default();
        registry.register(
            "datapath_ack_timeouts",
            "Answers released after --response-max-delay without the datapath's acknowledgement",
            datapath_ack_timeouts.clone(),
        );
        ProxyMetrics { queries, upstream_latency, processing_latency, datapath_ack_latency, datapath_ack_timeouts }
    }

    /// Metrics that go nowhere, for proxies run without an agent registry (tests, benches).
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    /// Count one answered query; `qtype` is the numeric query type.
    pub fn query(&self, verdict: Verdict, qtype: u16) {
        self.queries[verdict_index(verdict)][qtype_index(qtype)].inc();
    }

    /// The count so far for one verdict and query type (tests, `fqdnd status`).
    pub fn queries(&self, verdict: Verdict, qtype: u16) -> u64 {
        self.queries[verdict_index(verdict)][qtype_index(qtype)].get()
    }

    pub fn upstream_latency(&self, d: Duration) {
        self.upstream_latency.observe(d.as_secs_f64());
    }

    pub fn processing_latency(&self, d: Duration) {
        self.processing_latency.observe(d.as_secs_f64());
    }

    pub fn datapath_ack_latency(&self, d: Duration) {
        self.datapath_ack_latency.observe(d.as_secs_f64());
    }

    pub fn datapath_ack_timeout(&self) {
        self.datapath_ack_timeouts.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(registry: &Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, registry).unwrap();
        s
    }

    #[test]
    fn names_labels_and_counts() {
        let mut registry = Registry::with_prefix("fqdnd");
        let m = ProxyMetrics::register(&mut registry);
        m.query(Verdict::Forwarded, 1);
        m.query(Verdict::Forwarded, 1);
        m.query(Verdict::Dropped, 28);
        m.query(Verdict::Error, 4242);
        m.upstream_latency(Duration::from_millis(3));
        m.processing_latency(Duration::from_millis(4));
        m.datapath_ack_latency(Duration::from_micros(80));
        m.datapath_ack_timeout();
        assert_eq!(m.queries(Verdict::Forwarded, 1), 2);
        assert_eq!(m.queries(Verdict::Error, 9999), 1, "unknown qtypes share OTHER");
        let text = encoded(&registry);
        for want in [
            "fqdnd_dns_queries_total{verdict=\"forwarded\",qtype=\"A\"} 2",
            "fqdnd_dns_queries_total{verdict=\"dropped\",qtype=\"AAAA\"} 1",
            "fqdnd_dns_queries_total{verdict=\"error\",qtype=\"OTHER\"} 1",
            "fqdnd_dns_upstream_latency_seconds_count 1",
            "fqdnd_dns_processing_latency_seconds_count 1",
            "fqdnd_datapath_ack_latency_seconds_count 1",
            "fqdnd_datapath_ack_timeouts_total 1",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        // Every series exists from the start, so rates work from the first scrape.
        assert_eq!(text.matches("fqdnd_dns_queries_total{").count(), 3 * (OTHER + 1));
    }

    #[test]
    fn qtype_table() {
        for (qtype, want) in [(1u16, 0usize), (28, 1), (255, 11), (0, OTHER), (65535, OTHER)] {
            assert_eq!(qtype_index(qtype), want, "qtype {qtype}");
        }
    }
}
