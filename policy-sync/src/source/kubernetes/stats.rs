//! Counters of the Kubernetes source, kept as atomics here and read by the agent's metrics
//! collector at scrape time (policy-sync has no metrics registry of its own).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The watched resources, as metric label values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    CiliumNetworkPolicies,
    CiliumClusterwideNetworkPolicies,
    Pods,
    Namespaces,
    Nodes,
}

impl Resource {
    pub const ALL: [Resource; 5] = [
        Resource::CiliumNetworkPolicies,
        Resource::CiliumClusterwideNetworkPolicies,
        Resource::Pods,
        Resource::Namespaces,
        Resource::Nodes,
    ];

    /// The API's plural name (what RBAC rules and errors say).
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::CiliumNetworkPolicies => "ciliumnetworkpolicies",
            Resource::CiliumClusterwideNetworkPolicies => "ciliumclusterwidenetworkpolicies",
            Resource::Pods => "pods",
            Resource::Namespaces => "namespaces",
            Resource::Nodes => "nodes",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What a watcher delivered, as a metric label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// An object added or changed.
    Apply,
    Delete,
    /// A (re)list started.
    Init,
    /// An object of a list.
    InitApply,
    /// A list completed: the store now holds it.
    InitDone,
}

impl EventKind {
    pub const ALL: [EventKind; 5] =
        [EventKind::Apply, EventKind::Delete, EventKind::Init, EventKind::InitApply, EventKind::InitDone];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Apply => "apply",
            EventKind::Delete => "delete",
            EventKind::Init => "init",
            EventKind::InitApply => "init_apply",
            EventKind::InitDone => "init_done",
        }
    }
}

#[derive(Default)]
struct PerResource {
    events: [AtomicU64; 5],
    restarts: AtomicU64,
    synced: AtomicBool,
    last_sync: Mutex<Option<Instant>>,
}

/// Shared between the source's task and the metrics collector.
#[derive(Default)]
pub struct KubeStats {
    resources: [PerResource; 5],
    restored: AtomicBool,
}

/// One resource's figures at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceStats {
    pub resource: Resource,
    pub events: Vec<(EventKind, u64)>,
    /// Watch failures, each followed by a retry (and, after most, a relist).
    pub restarts: u64,
    /// Whether its first list completed.
    pub synced: bool,
    /// Since the watcher last delivered anything (an object or a completed list).
    pub since_last_sync: Option<Duration>,
}

impl KubeStats {
    /// Count what a watcher of `r` delivered (the source calls this; public for collectors' tests).
    pub fn event(&self, r: Resource, kind: EventKind) {
        let res = &self.resources[r.index()];
        res.events[EventKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)].fetch_add(1, Ordering::Relaxed);
        if kind == EventKind::InitDone {
            res.synced.store(true, Ordering::Release);
        }
        *res.last_sync.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }

    /// Count a watch failure of `r`.
    pub fn restart(&self, r: Resource) {
        self.resources[r.index()].restarts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_restored(&self) {
        self.restored.store(true, Ordering::Release);
    }

    /// Whether the snapshot in force came from the state directory (no list completed yet).
    pub fn restored(&self) -> bool {
        self.restored.load(Ordering::Acquire)
    }

    /// Resources whose first list has not completed.
    pub fn unsynced(&self) -> Vec<Resource> {
        Resource::ALL.into_iter().filter(|r| !self.resources[r.index()].synced.load(Ordering::Acquire)).collect()
    }

    pub fn resources(&self) -> Vec<ResourceStats> {
        Resource::ALL
            .into_iter()
            .map(|r| {
                let res = &self.resources[r.index()];
                let last = *res.last_sync.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                ResourceStats {
                    resource: r,
                    events: EventKind::ALL
                        .iter()
                        .zip(&res.events)
                        .map(|(k, v)| (*k, v.load(Ordering::Relaxed)))
                        .collect(),
                    restarts: res.restarts.load(Ordering::Relaxed),
                    synced: res.synced.load(Ordering::Acquire),
                    since_last_sync: last.map(|t| t.elapsed()),
                }
            })
            .collect()
    }
}
