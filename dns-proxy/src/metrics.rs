//! The proxy's Prometheus metrics, registered into the agent's registry (prefix `fqdnd_`).
//!
//! Every labelled series is resolved once in [`ProxyMetrics::register`]; recording a query is an
//! array index and an atomic add. Label values come from closed enums (verdict, query type), never
//! from query names or endpoints.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::flow::Verdict;
use crate::stats::{ProxyStats, StatsSnapshot};

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

    /// The count so far for one verdict and query type.
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

/// Export the proxy's event counters ([`ProxyStats`]), read at every scrape:
/// `fqdnd_dns_upstream_replies_dropped_total{reason}` (forged or stray upstream replies),
/// `fqdnd_dns_upstream_failures_total{reason}`, `fqdnd_dns_malformed_queries_total`,
/// `fqdnd_dns_truncated_answers_total`, `fqdnd_dns_shed_queries_total`,
/// `fqdnd_dns_reply_send_errors_total`, `fqdnd_dns_answers_learned_total`,
/// `fqdnd_datapath_update_errors_total`.
pub fn register_stats(registry: &mut Registry, stats: Arc<ProxyStats>) {
    registry.register_collector(Box::new(StatsCollector(stats)));
}

struct StatsCollector(Arc<ProxyStats>);

impl fmt::Debug for StatsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StatsCollector")
    }
}

/// One counter of the collector: name, help, and its series (labels, value).
type Series = (&'static str, &'static str, Vec<(Option<(&'static str, &'static str)>, u64)>);

fn stats_series(s: &StatsSnapshot) -> [Series; 8] {
    [
        (
            "dns_upstream_replies_dropped",
            "Upstream replies dropped as forged or stray (no query waits for their ID; wrong source address; wrong question)",
            vec![
                (Some(("reason", "unknown_id")), s.spoofed_unknown_id),
                (Some(("reason", "wrong_source")), s.spoofed_wrong_source),
                (Some(("reason", "wrong_question")), s.spoofed_wrong_question),
            ],
        ),
        (
            "dns_upstream_failures",
            "Forwarded queries answered SERVFAIL because the upstream did not answer in time or failed",
            vec![(Some(("reason", "timeout")), s.upstream_timeouts), (Some(("reason", "error")), s.upstream_errors)],
        ),
        (
            "dns_malformed_queries",
            "Packets answered FORMERR or NOTIMP, or ignored without a readable header",
            vec![(None, s.malformed)],
        ),
        (
            "dns_truncated_answers",
            "UDP answers sent truncated (TC) because they exceeded the client's limit",
            vec![(None, s.truncated)],
        ),
        (
            "dns_shed_queries",
            "Queries not served because --max-inflight (or an endpoint's share) was reached",
            vec![(None, s.overloaded)],
        ),
        ("dns_reply_send_errors", "Replies that could not be sent to the client", vec![(None, s.send_errors)]),
        ("dns_answers_learned", "Allowed answers handed to the cache and the datapath", vec![(None, s.learned)]),
        (
            "datapath_update_errors",
            "Datapath updates for an answer that failed (the answer was released, the error logged)",
            vec![(None, s.datapath_errors)],
        ),
    ]
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let snapshot = self.0.snapshot();
        for (name, help, series) in stats_series(&snapshot) {
            let mut metric = encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
            match series.as_slice() {
                [(None, value)] => ConstCounter::new(*value).encode(metric)?,
                labelled => {
                    for (label, value) in labelled {
                        let pair = label.expect("a counter with several series labels each");
                        ConstCounter::new(*value).encode(metric.encode_family(&[pair])?)?;
                    }
                }
            }
        }
        Ok(())
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
    fn stats_are_exported_at_scrape() {
        let mut registry = Registry::with_prefix("fqdnd");
        let stats = Arc::new(ProxyStats::default());
        register_stats(&mut registry, stats.clone());
        crate::stats::inc(&stats.spoofed_wrong_source);
        crate::stats::inc(&stats.upstream_timeouts);
        crate::stats::inc(&stats.upstream_timeouts);
        let text = encoded(&registry);
        for want in [
            "fqdnd_dns_upstream_replies_dropped_total{reason=\"wrong_source\"} 1",
            "fqdnd_dns_upstream_replies_dropped_total{reason=\"unknown_id\"} 0",
            "fqdnd_dns_upstream_failures_total{reason=\"timeout\"} 2",
            "fqdnd_dns_shed_queries_total 0",
            "# TYPE fqdnd_datapath_update_errors counter",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn qtype_table() {
        for (qtype, want) in [(1u16, 0usize), (28, 1), (255, 11), (0, OTHER), (65535, OTHER)] {
            assert_eq!(qtype_index(qtype), want, "qtype {qtype}");
        }
    }
}
