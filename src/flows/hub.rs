//! The flow hub: the last N flows in a ring, and live followers (`fqdnd observe -f`), each with a
//! bounded queue. Publishing never waits: a follower whose queue is full loses the flow, and the loss
//! is counted (per follower, so it can be told, and in `fqdnd_flows_dropped_total`).

use std::collections::VecDeque;

use foldhash::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use arc_swap::ArcSwap;
use dns_proxy::{DnsFlow, FlowSink};
use ebpf_redirect::DropEvent;
use fqdn_cache::EndpointId;
use policy_sync::{ResolvedEndpoint, Snapshot};
use tokio::sync::mpsc;

use super::convert::{EndpointInfo, EndpointLookup, NamesLookup, dns_flow, dns_flow_of, drop_flow};
use super::filter::FlowFilter;
use super::model::{DropReason, Flow};
use crate::metrics::AgentMetrics;

/// Flows kept for `fqdnd observe` without `-f` (Hubble's default buffer is the same order).
pub const DEFAULT_RING_CAPACITY: usize = 4096;
/// Flows queued per follower before it starts losing them.
pub const DEFAULT_FOLLOWER_QUEUE: usize = 1024;

#[derive(Clone, Debug)]
pub struct HubConfig {
    pub ring_capacity: usize,
    pub follower_queue: usize,
    /// Put in every flow's `node_name`, as Hubble does.
    pub node_name: String,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            ring_capacity: DEFAULT_RING_CAPACITY,
            follower_queue: DEFAULT_FOLLOWER_QUEUE,
            node_name: String::new(),
        }
    }
}

pub struct FlowHub {
    config: HubConfig,
    node_name: Arc<str>,
    metrics: AgentMetrics,
    inner: Mutex<Inner>,
    /// Flows published since start (Hubble's `seen_flows`), whether or not the ring keeps them.
    seen: AtomicU64,
    observers: Vec<Arc<dyn FlowObserver>>,
}

/// Which flows a follower wants: `fqdnd observe`'s [`FlowFilter`], or another API's filters
/// (Hubble's whitelist/blacklist). Runs on the reader's side, on every flow it is handed.
pub trait FlowMatch: Send + Sync {
    fn matches(&self, flow: &Flow) -> bool;
}

impl FlowMatch for FlowFilter {
    fn matches(&self, flow: &Flow) -> bool {
        FlowFilter::matches(self, flow)
    }
}

/// Sees every published flow, synchronously and before followers do (Hubble's metrics). Must be
/// cheap and must not block: it runs on the thread that publishes (the proxy's, for DNS flows).
pub trait FlowObserver: Send + Sync {
    fn observe(&self, flow: &Flow);
}

/// A flow as the ring and the followers' queues hold it. The proxy's DNS flows stay in their
/// compact form, with the endpoints they named at the time, until a reader asks: the query path
/// never pays for Hubble's shape (strings, labels, the summary). Converted once, shared by readers.
pub struct Entry {
    kind: EntryKind,
}

// Entries live behind an `Arc` each: boxing the large variant would only add an allocation per flow.
#[allow(clippy::large_enum_variant)]
enum EntryKind {
    Ready(Arc<Flow>),
    Dns {
        flow: DnsFlow,
        client: Option<Arc<EndpointInfo>>,
        server: Option<Arc<EndpointInfo>>,
        shaped: OnceLock<Arc<Flow>>,
    },
}

impl Entry {
    /// The flow in Hubble's shape.
    pub fn flow(&self, node_name: &str) -> Arc<Flow> {
        match &self.kind {
            EntryKind::Ready(f) => f.clone(),
            EntryKind::Dns { flow, client, server, shaped } => shaped
                .get_or_init(|| Arc::new(dns_flow_of(flow, client.as_deref(), server.as_deref(), node_name)))
                .clone(),
        }
    }
}

struct Inner {
    ring: VecDeque<Arc<Entry>>,
    followers: Vec<Slot>,
}

struct Slot {
    tx: mpsc::Sender<Arc<Entry>>,
    lost: Arc<AtomicU64>,
}

/// What a client asked for: the matching flows already in the ring, and (with `-f`) a follower
/// that gets every later matching flow. Both are taken under one lock: nothing is missed or doubled.
pub struct Subscription {
    pub history: Vec<Arc<Flow>>,
    pub follower: Option<Follower>,
}

/// A live follower. Dropping it unsubscribes. Flows are shaped and filtered here, on the reader's
/// task, not on the publisher's.
pub struct Follower {
    rx: mpsc::Receiver<Arc<Entry>>,
    lost: Arc<AtomicU64>,
    filter: Arc<dyn FlowMatch>,
    node_name: Arc<str>,
}

impl Follower {
    pub async fn recv(&mut self) -> Option<Arc<Flow>> {
        loop {
            let entry = self.rx.recv().await?;
            let flow = entry.flow(&self.node_name);
            if self.filter.matches(&flow) {
                return Some(flow);
            }
        }
    }

    pub fn try_recv(&mut self) -> Option<Arc<Flow>> {
        loop {
            let entry = self.rx.try_recv().ok()?;
            let flow = entry.flow(&self.node_name);
            if self.filter.matches(&flow) {
                return Some(flow);
            }
        }
    }

    /// Flows lost since the last call (the queue was full).
    pub fn take_lost(&self) -> u64 {
        self.lost.swap(0, Ordering::Relaxed)
    }
}

/// A snapshot of the hub for `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubStats {
    pub buffered: usize,
    pub capacity: usize,
    pub followers: usize,
    /// Flows published since start.
    pub seen: u64,
}

impl FlowHub {
    pub fn new(ring_capacity: usize) -> Self {
        Self::with_config(HubConfig { ring_capacity, ..HubConfig::default() }, AgentMetrics::default())
    }

    pub fn with_config(config: HubConfig, metrics: AgentMetrics) -> Self {
        let inner = Inner { ring: VecDeque::with_capacity(config.ring_capacity.min(65_536)), followers: Vec::new() };
        FlowHub {
            node_name: config.node_name.as_str().into(),
            config,
            metrics,
            inner: Mutex::new(inner),
            seen: AtomicU64::new(0),
            observers: Vec::new(),
        }
    }

    /// Hand every published flow to `observer` as well.
    pub fn with_observer(mut self, observer: Arc<dyn FlowObserver>) -> Self {
        self.observers.push(observer);
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the ring consistent (push/pop are atomic here).
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn node_name(&self) -> &str {
        &self.config.node_name
    }

    /// A DNS flow, its endpoints looked up in `lookup` now.
    pub fn ingest_dns(&self, f: &DnsFlow, lookup: &dyn EndpointLookup) {
        self.publish(dns_flow(f, lookup, &self.config.node_name));
    }

    /// A DNS flow with the endpoints it names (the querying one and the server's), kept compact
    /// until a reader asks for it.
    pub fn publish_dns(&self, flow: DnsFlow, client: Option<Arc<EndpointInfo>>, server: Option<Arc<EndpointInfo>>) {
        let entry = Entry { kind: EntryKind::Dns { flow, client, server, shaped: OnceLock::new() } };
        if !self.observers.is_empty() {
            // Observers see every flow in Hubble's shape as it happens; shape it now, once.
            let shaped = entry.flow(&self.node_name);
            for observer in &self.observers {
                observer.observe(&shaped);
            }
        }
        self.keep(entry);
    }

    pub fn ingest_drop(&self, ev: &DropEvent, lookup: &dyn EndpointLookup, names: &dyn NamesLookup) {
        let flow = drop_flow(ev, lookup, names, &self.config.node_name);
        let ingress = ev.direction == ebpf_redirect::Direction::Ingress;
        if ev.audit {
            let counter =
                if ingress { &self.metrics.policy_audits_ingress } else { &self.metrics.policy_audits_egress };
            counter.inc();
            self.publish(flow);
            return;
        }
        match (flow.drop_reason_desc, ingress) {
            // Not a policy verdict: counted by the datapath (`fqdnd_datapath_drops_total`).
            (Some(DropReason::InvalidSourceIp), _) => 0,
            (Some(DropReason::PolicyDeny), false) => self.metrics.policy_drops_deny.inc(),
            (_, false) => self.metrics.policy_drops_denied.inc(),
            (Some(DropReason::PolicyDeny), true) => self.metrics.policy_drops_ingress_deny.inc(),
            (_, true) => self.metrics.policy_drops_ingress_denied.inc(),
        };
        self.publish(flow);
    }

    /// Keep a flow and hand it to every follower, without ever waiting.
    pub fn publish(&self, flow: Flow) {
        for observer in &self.observers {
            observer.observe(&flow);
        }
        self.keep(Entry { kind: EntryKind::Ready(Arc::new(flow)) });
    }

    fn keep(&self, entry: Entry) {
        self.seen.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        // What the ring lets go of is freed after the lock is let go.
        let mut evicted = None;
        let mut replaced = None;
        let entry = if self.config.ring_capacity > 0 && inner.ring.len() >= self.config.ring_capacity {
            let mut oldest = inner.ring.pop_front().expect("a full ring has a front");
            match Arc::get_mut(&mut oldest) {
                // No reader holds the oldest entry: its allocation takes the new one, so a full
                // ring allocates nothing per flow.
                Some(slot) => {
                    replaced = Some(std::mem::replace(slot, entry));
                    oldest
                }
                None => {
                    evicted = Some(oldest);
                    Arc::new(entry)
                }
            }
        } else {
            Arc::new(entry)
        };
        if self.config.ring_capacity > 0 {
            inner.ring.push_back(entry.clone());
        }
        if !inner.followers.is_empty() {
            let metrics = &self.metrics;
            inner.followers.retain(|slot| match slot.tx.try_send(entry.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    slot.lost.fetch_add(1, Ordering::Relaxed);
                    metrics.flows_dropped_slow_reader.inc();
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        }
        drop(inner);
        drop(evicted);
        drop(replaced);
    }

    /// The matching flows in the ring (the last `last` of them if given) and, if `follow`, a
    /// follower for what comes next.
    pub fn subscribe(&self, filter: &FlowFilter, last: Option<usize>, follow: bool) -> Subscription {
        self.subscribe_with(Arc::new(filter.clone()), last, follow)
    }

    /// [`FlowHub::subscribe`] with any matcher.
    pub fn subscribe_with(&self, filter: Arc<dyn FlowMatch>, last: Option<usize>, follow: bool) -> Subscription {
        // Under the lock only the entries are taken; shaping and filtering them happens after.
        let (entries, follower) = {
            let mut inner = self.lock();
            let entries: Vec<Arc<Entry>> = inner.ring.iter().cloned().collect();
            let follower = follow.then(|| {
                let (tx, rx) = mpsc::channel(self.config.follower_queue.max(1));
                let lost = Arc::new(AtomicU64::new(0));
                inner.followers.push(Slot { tx, lost: lost.clone() });
                Follower { rx, lost, filter: filter.clone(), node_name: self.node_name.clone() }
            });
            (entries, follower)
        };
        let mut history: Vec<Arc<Flow>> =
            entries.iter().map(|e| e.flow(&self.node_name)).filter(|f| filter.matches(f)).collect();
        if let Some(n) = last {
            let skip = history.len().saturating_sub(n);
            history.drain(..skip);
        }
        Subscription { history, follower }
    }

    pub fn stats(&self) -> HubStats {
        let inner = self.lock();
        HubStats {
            buffered: inner.ring.len(),
            capacity: self.config.ring_capacity,
            followers: inner.followers.iter().filter(|s| !s.tx.is_closed()).count(),
            seen: self.seen.load(Ordering::Relaxed),
        }
    }
}

/// Endpoints as flows name them, built once per endpoint version (a policy or pod change makes a
/// new `ResolvedEndpoint`) instead of once per flow.
#[derive(Default)]
struct InfoCache {
    by_id: HashMap<EndpointId, (Weak<ResolvedEndpoint>, Arc<EndpointInfo>)>,
}

/// Entries past this and the cache starts over (endpoints come and go).
const INFO_CACHE_MAX: usize = 16_384;

impl InfoCache {
    fn get(&mut self, ep: &Arc<ResolvedEndpoint>) -> Arc<EndpointInfo> {
        if let Some((weak, info)) = self.by_id.get(&ep.id)
            && std::ptr::eq(weak.as_ptr(), Arc::as_ptr(ep))
        {
            return info.clone();
        }
        if self.by_id.len() >= INFO_CACHE_MAX {
            self.by_id.clear();
        }
        let info = Arc::new(EndpointInfo::from_resolved(ep));
        self.by_id.insert(ep.id, (Arc::downgrade(ep), info.clone()));
        info
    }
}

/// The proxy's flows into the hub, endpoints named from the snapshot in force.
pub struct DnsFlows {
    hub: Arc<FlowHub>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    infos: Mutex<InfoCache>,
}

impl DnsFlows {
    pub fn new(hub: Arc<FlowHub>, snapshot: Arc<ArcSwap<Snapshot>>) -> Self {
        DnsFlows { hub, snapshot, infos: Mutex::default() }
    }
}

impl FlowSink for DnsFlows {
    fn wants_flows(&self) -> bool {
        true
    }

    fn dns_flow(&self, flow: DnsFlow) {
        let snapshot = self.snapshot.load();
        let client = flow.endpoint.and_then(|id| snapshot.by_id(id)).or_else(|| snapshot.by_ip(flow.client.ip()));
        let server = snapshot.by_ip(flow.server.ip());
        let (client, server) = {
            let mut infos = self.infos.lock().unwrap_or_else(PoisonError::into_inner);
            (client.map(|e| infos.get(e)), server.map(|e| infos.get(e)))
        };
        self.hub.publish_dns(flow, client, server);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::flows::convert::tests::{dns_request, drop_event, table};
    use crate::flows::convert::{NoNames, dns_flow};
    use crate::flows::model::Verdict;

    fn numbered(i: u64) -> Flow {
        let mut req = dns_request();
        req.time = SystemTime::UNIX_EPOCH + Duration::from_secs(i);
        dns_flow(&req, &table(), "")
    }

    fn secs(f: &Flow) -> u64 {
        f.time.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn ring_wraps_keeping_the_newest() {
        for (cap, pushed, want) in [
            (4usize, 3u64, vec![0u64, 1, 2]),
            (4, 4, vec![0, 1, 2, 3]),
            (4, 10, vec![6, 7, 8, 9]),
            (1, 5, vec![4]),
            (0, 5, vec![]),
        ] {
            let hub = FlowHub::new(cap);
            for i in 0..pushed {
                hub.publish(numbered(i));
            }
            let got: Vec<u64> =
                hub.subscribe(&FlowFilter::default(), None, false).history.iter().map(|f| secs(f)).collect();
            assert_eq!(got, want, "cap {cap} pushed {pushed}");
            assert_eq!(hub.stats().buffered, want.len());
        }
    }

    #[test]
    fn last_n_of_the_matching() {
        let hub = FlowHub::new(100);
        for i in 0..10 {
            hub.publish(numbered(i));
        }
        let since = FlowFilter { since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(3)), ..Default::default() };
        let got: Vec<u64> = hub.subscribe(&since, Some(2), false).history.iter().map(|f| secs(f)).collect();
        assert_eq!(got, [8, 9]);
        let all: Vec<u64> = hub.subscribe(&since, Some(100), false).history.iter().map(|f| secs(f)).collect();
        assert_eq!(all, [3, 4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn stuck_follower_loses_flows_and_the_producer_goes_on() {
        let metrics = AgentMetrics::default();
        let cfg = HubConfig { ring_capacity: 16, follower_queue: 8, node_name: "n".into() };
        let hub = FlowHub::with_config(cfg, metrics.clone());
        let stuck = hub.subscribe(&FlowFilter::default(), None, true).follower.unwrap();
        let mut reader = hub.subscribe(&FlowFilter::default(), None, true).follower.unwrap();
        let mut read = 0u64;
        for i in 0..1000 {
            hub.publish(numbered(i));
            while reader.try_recv().is_some() {
                read += 1;
            }
        }
        assert_eq!(read, 1000, "a reader that keeps up gets everything");
        assert_eq!(reader.take_lost(), 0);
        assert_eq!(stuck.take_lost(), 1000 - 8);
        assert_eq!(metrics.flows_dropped_slow_reader.get(), 1000 - 8);
        assert_eq!(hub.stats().buffered, 16);
    }

    #[test]
    fn a_full_ring_reuses_its_oldest_entry_unless_someone_still_holds_it() {
        let cfg = HubConfig { ring_capacity: 2, follower_queue: 8, node_name: "n".into() };
        let hub = FlowHub::with_config(cfg, AgentMetrics::default());
        let ptrs = |hub: &FlowHub| hub.lock().ring.iter().map(Arc::as_ptr).collect::<Vec<_>>();
        hub.publish(numbered(0));
        hub.publish(numbered(1));
        let before = ptrs(&hub);
        hub.publish(numbered(2));
        assert_eq!(ptrs(&hub), [before[1], before[0]], "flow 2 lives where flow 0 did");
        // A follower's queue holds entries the ring has let go of: those stay as they were.
        let mut follower = hub.subscribe(&FlowFilter::default(), None, true).follower.unwrap();
        for i in 3..10 {
            hub.publish(numbered(i));
        }
        let got: Vec<u64> = std::iter::from_fn(|| follower.try_recv()).map(|f| secs(&f)).collect();
        assert_eq!(got, (3..10).collect::<Vec<_>>());
        let history: Vec<u64> =
            hub.subscribe(&FlowFilter::default(), None, false).history.iter().map(|f| secs(f)).collect();
        assert_eq!(history, [8, 9]);
    }

    #[test]
    fn follower_gets_only_what_it_filtered_and_unsubscribes_on_drop() {
        let hub = FlowHub::new(16);
        let drops = FlowFilter { verdict: Some(Verdict::Dropped), ..Default::default() };
        let mut f = hub.subscribe(&drops, None, true).follower.unwrap();
        hub.publish(numbered(1));
        hub.ingest_drop(&drop_event(), &table(), &NoNames);
        let got = f.try_recv().unwrap();
        assert_eq!(got.verdict, Verdict::Dropped);
        assert!(f.try_recv().is_none());
        assert_eq!(hub.stats().followers, 1);
        drop(f);
        hub.publish(numbered(2));
        assert_eq!(hub.stats().followers, 0);
    }

    #[test]
    fn history_and_follow_neither_miss_nor_double() {
        let hub = FlowHub::new(16);
        hub.publish(numbered(1));
        let sub = hub.subscribe(&FlowFilter::default(), None, true);
        hub.publish(numbered(2));
        let mut f = sub.follower.unwrap();
        assert_eq!(sub.history.iter().map(|f| secs(f)).collect::<Vec<_>>(), [1]);
        assert_eq!(secs(&f.try_recv().unwrap()), 2);
        assert!(f.try_recv().is_none());
    }

    #[test]
    fn drops_are_counted_by_reason() {
        let metrics = AgentMetrics::default();
        let hub = FlowHub::with_config(HubConfig::default(), metrics.clone());
        hub.ingest_drop(&drop_event(), &table(), &NoNames);
        let deny = DropEvent { reason: ebpf_redirect::DropReason::PolicyDeny, ..drop_event() };
        hub.ingest_drop(&deny, &table(), &NoNames);
        hub.ingest_drop(&deny, &table(), &NoNames);
        assert_eq!((metrics.policy_drops_denied.get(), metrics.policy_drops_deny.get()), (1, 2));
    }

    #[test]
    fn observers_see_every_flow_and_seen_counts_without_a_ring() {
        #[derive(Default)]
        struct Count(AtomicU64);
        impl FlowObserver for Count {
            fn observe(&self, _: &Flow) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let sink = Arc::new(Count::default());
        let hub = FlowHub::with_config(HubConfig { ring_capacity: 0, ..Default::default() }, AgentMetrics::default())
            .with_observer(sink.clone());
        for i in 0..5 {
            hub.publish(numbered(i));
        }
        assert_eq!(sink.0.load(Ordering::Relaxed), 5);
        assert_eq!((hub.stats().seen, hub.stats().buffered), (5, 0));
    }

    #[test]
    fn any_matcher_can_follow() {
        struct EvenSeconds;
        impl FlowMatch for EvenSeconds {
            fn matches(&self, f: &Flow) -> bool {
                secs(f).is_multiple_of(2)
            }
        }
        let hub = FlowHub::new(16);
        hub.publish(numbered(1));
        hub.publish(numbered(2));
        let sub = hub.subscribe_with(Arc::new(EvenSeconds), None, true);
        assert_eq!(sub.history.iter().map(|f| secs(f)).collect::<Vec<_>>(), [2]);
        let mut f = sub.follower.unwrap();
        hub.publish(numbered(3));
        hub.publish(numbered(4));
        assert_eq!(secs(&f.try_recv().unwrap()), 4);
        assert!(f.try_recv().is_none());
    }
}
