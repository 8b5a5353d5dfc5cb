//! The Kubernetes source's metrics, read from its counters at every scrape:
//! `fqdnd_k8s_events_total{resource,kind}` (what each watcher delivered),
//! `fqdnd_k8s_watch_restarts_total{resource}` (watch failures, each retried with backoff),
//! `fqdnd_k8s_synced{resource}` (1 once its first list completed) and
//! `fqdnd_k8s_last_sync_age_seconds{resource}` (since the watcher last delivered anything).

use std::fmt;
use std::sync::Arc;

use policy_sync::source::kubernetes::stats::KubeStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

pub fn register(registry: &mut Registry, stats: Arc<KubeStats>) {
    registry.register_collector(Box::new(KubeCollector(stats)));
}

struct KubeCollector(Arc<KubeStats>);

impl fmt::Debug for KubeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KubeCollector")
    }
}

impl Collector for KubeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let resources = self.0.resources();
        let counter = ConstCounter::new(0u64).metric_type();
        let gauge = ConstGauge::new(0i64).metric_type();
        let mut events = encoder.encode_descriptor(
            "k8s_events",
            "Watch events received, by resource and kind (apply: added or changed; delete; init: a (re)list \
             started; init_apply: an object of a list; init_done: a list completed)",
            None,
            counter,
        )?;
        for r in &resources {
            for (kind, n) in &r.events {
                ConstCounter::new(*n)
                    .encode(events.encode_family(&[("resource", r.resource.as_str()), ("kind", kind.as_str())])?)?;
            }
        }
        let mut restarts = encoder.encode_descriptor(
            "k8s_watch_restarts",
            "Watch failures (API server unreachable, dropped connections, 410 Gone, RBAC), each retried with backoff",
            None,
            counter,
        )?;
        for r in &resources {
            ConstCounter::new(r.restarts).encode(restarts.encode_family(&[("resource", r.resource.as_str())])?)?;
        }
        let mut synced =
            encoder.encode_descriptor("k8s_synced", "1 once the resource's first list completed", None, gauge)?;
        for r in &resources {
            ConstGauge::new(i64::from(r.synced)).encode(synced.encode_family(&[("resource", r.resource.as_str())])?)?;
        }
        let mut age = encoder.encode_descriptor(
            "k8s_last_sync_age_seconds",
            "Seconds since the resource's watcher last delivered an object or a completed list",
            None,
            ConstGauge::new(0f64).metric_type(),
        )?;
        for r in &resources {
            if let Some(d) = r.since_last_sync {
                ConstGauge::new(d.as_secs_f64()).encode(age.encode_family(&[("resource", r.resource.as_str())])?)?;
            }
        }
        let restored = ConstGauge::new(i64::from(self.0.restored()));
        restored.encode(encoder.encode_descriptor(
            "k8s_state_restored",
            "1 when the agent started from the Kubernetes state saved in its state directory",
            None,
            restored.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use policy_sync::source::kubernetes::stats::{EventKind, Resource};

    use super::*;

    #[test]
    fn series_names_and_labels() {
        let stats = Arc::new(KubeStats::default());
        let mut registry = crate::metrics::new_registry();
        register(&mut registry, stats.clone());
        stats.event(Resource::Pods, EventKind::InitApply);
        stats.event(Resource::Pods, EventKind::InitDone);
        stats.restart(Resource::CiliumNetworkPolicies);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for want in [
            "fqdnd_k8s_events_total{resource=\"pods\",kind=\"init_apply\"} 1",
            "fqdnd_k8s_events_total{resource=\"pods\",kind=\"init_done\"} 1",
            "fqdnd_k8s_events_total{resource=\"nodes\",kind=\"apply\"} 0",
            "fqdnd_k8s_watch_restarts_total{resource=\"ciliumnetworkpolicies\"} 1",
            "fqdnd_k8s_synced{resource=\"pods\"} 1",
            "fqdnd_k8s_synced{resource=\"nodes\"} 0",
            "fqdnd_k8s_last_sync_age_seconds{resource=\"pods\"} ",
            "fqdnd_k8s_state_restored 0",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("fqdnd_k8s_last_sync_age_seconds{resource=\"nodes\"}"), "no age before any event");
    }
}
