//! The Kubernetes source: CiliumNetworkPolicies and CiliumClusterwideNetworkPolicies, Pods,
//! Namespaces and this agent's Node from the API server, turned into the same [`Snapshot`] the
//! directory source produces.
//!
//! Each resource is watched by a kube-runtime `watcher` (list, then watch from the list's
//! resourceVersion; retried with backoff) feeding a `reflector` store. A store swaps its contents
//! only when a (re)list completes (`InitDone`), so a relist after a watch error, a 410 Gone or an
//! API server restart never shows a state with objects missing: a rule is never removed and then
//! re-added. No snapshot is made before every resource has completed its first list, unless the
//! state directory holds the last one ([`persist`]), which is then enforced until they have.
//!
//! - Policies: each object is validated on its own ([`book::PolicyBook`], Cilium's checks and
//!   `fqdnd policy check`'s messages); an invalid version is logged, counted, reported as an Event
//!   on the object, and the object's last valid version stays in force.
//! - Endpoints: the pods of this node (`spec.nodeName`), not `hostNetwork`, with `status.podIPs`;
//!   their node-side interface comes from the kernel through [`InterfaceLookup`].
//! - Peers: every pod's IPs and labels cluster-wide resolve `toEndpoints` selectors; namespace
//!   labels appear on pods as `io.cilium.k8s.namespace.labels.*`, as in Cilium.
//! - `host`: the Node's InternalIP and ExternalIP addresses (and loopback).

pub mod book;
pub mod persist;
pub mod records;
pub mod stats;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{FutureExt as _, Stream, StreamExt as _};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Node, ObjectReference, Pod};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::{mpsc, watch};

use self::book::{PolicyBook, Rejection};
use self::records::{NamespaceRecord, NodeRecord, PodRecord, PolicyObject, Records, inventory};
use self::stats::{EventKind, KubeStats, Resource};
use super::ids::assign_ids;
use super::{BoxFuture, ResolvedEndpoint, Snapshot, Source};
use crate::endpoint::{Endpoint, EndpointKey};
use crate::model;
use crate::resolve::{NodeInfo, resolve_on};

/// Finds the node-side interface of a local pod in the kernel (the agent implements it over
/// rtnetlink; tests give fixed answers). policy-sync itself knows no sockets.
pub trait InterfaceLookup: Send + Sync {
    /// The node-side interface through which `ips` are reached, if the pod's network is set up.
    fn interface_of<'a>(&'a self, ips: &'a [IpAddr]) -> BoxFuture<'a, Option<String>>;
}

/// How the source runs.
#[derive(Clone)]
pub struct KubeOptions {
    /// This node: its pods are the local endpoints, its Node object gives `host`.
    pub node_name: String,
    /// Where the last snapshot's inputs are kept across restarts (none: not kept).
    pub state_dir: Option<PathBuf>,
    pub interfaces: Arc<dyn InterfaceLookup>,
    /// How often the local pods' interfaces are looked up again (a pod's sandbox can be
    /// recreated with a new veth and the same IP, which no API event announces).
    pub interface_recheck: Duration,
}

/// The Kubernetes [`Source`]. Dropping it stops its watchers.
pub struct KubeSource {
    rx: watch::Receiver<Option<Snapshot>>,
    stats: Arc<KubeStats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl KubeSource {
    /// Start the watchers (on the current tokio runtime). Nothing is asked of the API server
    /// before this returns: an unreachable one is retried in the background.
    pub fn start(client: kube::Client, options: KubeOptions) -> Self {
        let stats = Arc::new(KubeStats::default());
        let (tx, rx) = watch::channel(None);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let cnp = ApiResource {
            group: "cilium.io".into(),
            version: "v2".into(),
            api_version: model::API_VERSION.into(),
            kind: model::KIND_CNP.into(),
            plural: Resource::CiliumNetworkPolicies.as_str().into(),
        };
        let ccnp = ApiResource {
            kind: model::KIND_CCNP.into(),
            plural: Resource::CiliumClusterwideNetworkPolicies.as_str().into(),
            ..cnp.clone()
        };
        let config = watcher::Config::default();
        let w = reflector::store::Writer::new(cnp.clone());
        let cnp_store = w.as_reader();
        let cnp_stream = tagged(
            Resource::CiliumNetworkPolicies,
            watcher(Api::<DynamicObject>::all_with(client.clone(), &cnp), config.clone())
                .default_backoff()
                .modify(records::slim_policy)
                .reflect(w),
        );
        let w = reflector::store::Writer::new(ccnp.clone());
        let ccnp_store = w.as_reader();
        let ccnp_stream = tagged(
            Resource::CiliumClusterwideNetworkPolicies,
            watcher(Api::<DynamicObject>::all_with(client.clone(), &ccnp), config.clone())
                .default_backoff()
                .modify(records::slim_policy)
                .reflect(w),
        );
        let (pod_store, w) = reflector::store();
        let pod_stream = tagged(
            Resource::Pods,
            watcher(Api::<Pod>::all(client.clone()), config.clone())
                .default_backoff()
                .modify(records::slim_pod)
                .reflect(w),
        );
        let (ns_store, w) = reflector::store();
        let ns_stream = tagged(
            Resource::Namespaces,
            watcher(Api::<Namespace>::all(client.clone()), config.clone())
                .default_backoff()
                .modify(|ns: &mut Namespace| {
                    ns.metadata.managed_fields = None;
                    ns.metadata.annotations = None;
                })
                .reflect(w),
        );
        let (node_store, w) = reflector::store();
        let node_stream = tagged(
            Resource::Nodes,
            watcher(Api::<Node>::all(client.clone()), config.fields(&format!("metadata.name={}", options.node_name)))
                .default_backoff()
                .modify(|n: &mut Node| {
                    n.metadata.managed_fields = None;
                    n.metadata.annotations = None;
                    n.status = n.status.take().map(|s| k8s_openapi::api::core::v1::NodeStatus {
                        addresses: s.addresses,
                        ..Default::default()
                    });
                })
                .reflect(w),
        );
        let (persist_tx, persist_rx) = watch::channel(None);
        let updates =
            futures::stream::select_all([cnp_stream, ccnp_stream, pod_stream, ns_stream, node_stream]).boxed();
        let syncer = Syncer {
            stores: Stores {
                cnp: cnp_store,
                ccnp: ccnp_store,
                pods: pod_store,
                namespaces: ns_store,
                node: node_store,
            },
            options: options.clone(),
            stats: stats.clone(),
            book: PolicyBook::default(),
            interfaces: HashMap::new(),
            failures: HashMap::new(),
            last_inputs: None,
            generation: 0,
            tx,
            events: events_tx,
            persist: persist_tx,
        };
        let mut tasks = vec![
            tokio::spawn(syncer.run(updates)),
            tokio::spawn(report_rejections(client, options.node_name.clone(), events_rx)),
        ];
        if let Some(dir) = options.state_dir.clone() {
            tasks.push(tokio::spawn(save_state(dir, options.node_name.clone(), persist_rx)));
        }
        KubeSource { rx, stats, tasks }
    }

    /// The source's counters (for metrics and status).
    pub fn stats(&self) -> Arc<KubeStats> {
        self.stats.clone()
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Source for KubeSource {
    fn next(&mut self) -> BoxFuture<'_, Snapshot> {
        Box::pin(async move {
            loop {
                if self.rx.changed().await.is_err() {
                    tracing::error!("the Kubernetes source stopped; policies stay as they are");
                    return std::future::pending().await;
                }
                if let Some(snap) = self.rx.borrow_and_update().clone() {
                    return snap;
                }
            }
        })
    }
}

type Update = (Resource, Result<EventKind, watcher::Error>);

fn tagged<K: 'static>(
    resource: Resource,
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> BoxStream<'static, Update> {
    stream
        .map(move |item| {
            let kind = item.map(|ev| match ev {
                watcher::Event::Apply(_) => EventKind::Apply,
                watcher::Event::Delete(_) => EventKind::Delete,
                watcher::Event::Init => EventKind::Init,
                watcher::Event::InitApply(_) => EventKind::InitApply,
                watcher::Event::InitDone => EventKind::InitDone,
            });
            (resource, kind)
        })
        .boxed()
}

struct Stores {
    cnp: Store<DynamicObject>,
    ccnp: Store<DynamicObject>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    node: Store<Node>,
}

impl Stores {
    fn records(&self) -> Records {
        let mut policies: Vec<PolicyObject> = self
            .cnp
            .state()
            .iter()
            .map(|o| PolicyObject::from_dynamic(o, false))
            .chain(self.ccnp.state().iter().map(|o| PolicyObject::from_dynamic(o, true)))
            .collect();
        policies.sort_by(|a, b| a.key.cmp(&b.key));
        let mut namespaces: Vec<NamespaceRecord> =
            self.namespaces.state().iter().map(|n| NamespaceRecord::from_namespace(n)).collect();
        namespaces.sort_by(|a, b| a.name.cmp(&b.name));
        Records {
            node: self.node.state().first().map(|n| NodeRecord::from_node(n)),
            namespaces,
            pods: self.pods.state().iter().map(|p| PodRecord::from_pod(p)).collect(),
            policies,
        }
    }
}

/// What a snapshot is made of; a rebuild whose inputs equal the last one's makes none.
#[derive(PartialEq)]
struct Inputs {
    policies: Vec<(records::PolicyKey, String)>,
    peers: Arc<Vec<Endpoint>>,
    local: Vec<usize>,
    host: Vec<IpAddr>,
}

struct Syncer {
    stores: Stores,
    options: KubeOptions,
    stats: Arc<KubeStats>,
    book: PolicyBook,
    /// Local pods' interfaces as last looked up, with the IPs they were looked up for.
    interfaces: HashMap<EndpointKey, (Vec<IpAddr>, Option<String>)>,
    /// Consecutive watch failures per resource (for logging once per backoff step).
    failures: HashMap<Resource, u64>,
    last_inputs: Option<Inputs>,
    generation: u64,
    tx: watch::Sender<Option<Snapshot>>,
    events: mpsc::UnboundedSender<Rejection>,
    persist: watch::Sender<Option<Records>>,
}

impl Syncer {
    async fn run(mut self, mut updates: BoxStream<'static, Update>) {
        if let Some(dir) = self.options.state_dir.clone() {
            match persist::load(&dir, &self.options.node_name) {
                Ok(Some(records)) => {
                    tracing::info!(
                        path = %persist::path(&dir).display(),
                        policies = records.policies.len(),
                        pods = records.pods.len(),
                        "enforcing the last Kubernetes state seen until every watch has listed"
                    );
                    self.stats.set_restored();
                    self.rebuild(records, false, std::time::Instant::now()).await;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the saved Kubernetes state is not usable; waiting for the API server")
                }
            }
        }
        let mut recheck = tokio::time::interval(self.options.interface_recheck);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        recheck.tick().await;
        let mut announced = false;
        loop {
            let mut dirty = false;
            tokio::select! {
                update = updates.next() => {
                    let Some(update) = update else { return };
                    dirty |= self.note(update);
                    // Everything already received goes into one rebuild.
                    while let Some(Some(update)) = updates.next().now_or_never() {
                        dirty |= self.note(update);
                    }
                }
                _ = recheck.tick() => dirty |= self.recheck_interfaces().await,
            }
            let unsynced = self.stats.unsynced();
            if !unsynced.is_empty() {
                continue;
            }
            if !announced {
                announced = true;
                tracing::info!(node = %self.options.node_name, "every Kubernetes watch has listed; enforcing the API server's state");
            }
            if dirty {
                let started = std::time::Instant::now();
                let records = self.stores.records();
                self.rebuild(records, true, started).await;
            }
        }
    }

    /// Count an update; true if the stores may have changed.
    fn note(&mut self, (resource, item): Update) -> bool {
        match item {
            Ok(kind) => {
                self.stats.event(resource, kind);
                // Init comes before each list attempt, failed or not: not a sign of recovery.
                if kind != EventKind::Init
                    && let Some(n) = self.failures.remove(&resource)
                {
                    tracing::info!(resource = resource.as_str(), failures = n, "Kubernetes watch working again");
                }
                kind != EventKind::Init && kind != EventKind::InitApply
            }
            Err(e) => {
                self.stats.restart(resource);
                let n = self.failures.entry(resource).or_default();
                *n += 1;
                // The backoff doubles the wait after each failure: log the 1st, 2nd, 4th, 8th...
                if n.is_power_of_two() {
                    tracing::warn!(
                        resource = resource.as_str(),
                        failures = *n,
                        "{}; retrying with backoff (enforcement unchanged)",
                        describe(resource, &e)
                    );
                }
                false
            }
        }
    }

    /// Look every local pod's interface up again; true if one changed.
    async fn recheck_interfaces(&mut self) -> bool {
        let mut changed = false;
        let keys: Vec<EndpointKey> = self.interfaces.keys().cloned().collect();
        for key in keys {
            let Some((ips, old)) = self.interfaces.get(&key).cloned() else { continue };
            let now = self.options.interfaces.interface_of(&ips).await;
            if now != old {
                tracing::info!(endpoint = %key, old = ?old, new = ?now, "pod interface changed");
                self.interfaces.insert(key, (ips, now));
                changed = true;
            }
        }
        changed
    }

    async fn interface_of(&mut self, ep: &Endpoint) -> Option<String> {
        let key = ep.key();
        if let Some((ips, iface)) = self.interfaces.get(&key)
            && *ips == ep.ips
            && iface.is_some()
        {
            return iface.clone();
        }
        let found = self.options.interfaces.interface_of(&ep.ips).await;
        if found.is_none() {
            tracing::debug!(endpoint = %key, ips = ?ep.ips, "no node-side interface for the pod yet");
        }
        self.interfaces.insert(key, (ep.ips.clone(), found.clone()));
        found
    }

    /// Make and hand out the snapshot of `records`, if it differs from the last one (or a
    /// policy version was rejected: that is counted by whoever applies it).
    async fn rebuild(&mut self, records: Records, live: bool, started: std::time::Instant) {
        let rejections = self.book.update(&records.policies);
        for r in &rejections {
            let consequence =
                if r.previous_kept { "its last valid version stays in force" } else { "nothing of it is enforced" };
            for p in &r.problems {
                if p.field.is_empty() {
                    tracing::warn!("{}: {}", r.key, p.message);
                } else {
                    tracing::warn!("{}: {}: {}", r.key, p.field, p.message);
                }
            }
            tracing::warn!(policy = %r.key, resource_version = %r.resource_version, "policy rejected; {consequence}");
            if live {
                let _ = self.events.send(r.clone());
            }
        }
        let (mut all, local) = inventory(&records, &self.options.node_name);
        let local_keys: std::collections::HashSet<EndpointKey> = local.iter().map(|&i| all[i].key()).collect();
        self.interfaces.retain(|k, _| local_keys.contains(k));
        for &i in &local {
            let iface = self.interface_of(&all[i]).await;
            all[i].interface = iface;
        }
        let host: Vec<IpAddr> = records.node.as_ref().map(|n| n.addresses.clone()).unwrap_or_default();
        let inputs = Inputs { policies: self.book.versions(), peers: Arc::new(all), local, host };
        if self.last_inputs.as_ref() == Some(&inputs) && rejections.is_empty() {
            return;
        }
        let prepared = started.elapsed();
        let policies = self.book.policies();
        let refs = policies.iter().map(|p| p.reference.clone()).collect();
        let mut node = NodeInfo::default();
        node.host.extend(inputs.host.iter().map(|ip| IpNet::from(*ip)));
        let peers = inputs.peers.clone();
        let local = inputs.local.clone();
        // Resolution compiles every local endpoint's DNS rules: off the async workers.
        let resolved = tokio::task::spawn_blocking(move || resolve_local(&policies, &peers, &local, &node)).await;
        let resolved = match resolved {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "resolving policies panicked; policies stay as they were");
                return;
            }
        };
        self.generation += 1;
        tracing::info!(
            generation = self.generation,
            policies = inputs.policies.len(),
            pods = inputs.peers.len(),
            local = resolved.len(),
            attachable = resolved.iter().filter(|e| e.endpoint.interface.is_some()).count(),
            rejected = rejections.len(),
            from = if live { "api-server" } else { "state-dir" },
            prepare_ms = prepared.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "kubernetes snapshot"
        );
        let snap = Snapshot::new(self.generation, resolved, refs, rejections.len());
        self.last_inputs = Some(inputs);
        self.tx.send_replace(Some(snap));
        if live && self.options.state_dir.is_some() {
            // Written by its own task, the latest only: a burst of changes is not held up by
            // writing (and syncing) every intermediate state.
            self.persist.send_replace(Some(Records { policies: self.book.enforced_objects(), ..records }));
        }
    }
}

/// Resolve every local endpoint (`local` indexes `peers`). Resolution reads only an endpoint's
/// effective labels (policy-sync/src/resolve.rs; `same_labels_resolve_alike` pins it), so
/// endpoints with the same labels (a Deployment's replicas) share one resolution.
fn resolve_local(
    policies: &[crate::Policy],
    peers: &[Endpoint],
    local: &[usize],
    node: &NodeInfo,
) -> Vec<ResolvedEndpoint> {
    let eps: Vec<Endpoint> = local.iter().map(|&i| peers[i].clone()).collect();
    let ids = assign_ids(&eps);
    let mut by_labels: HashMap<std::collections::BTreeMap<String, String>, Arc<crate::EndpointPolicy>> = HashMap::new();
    eps.into_iter()
        .zip(ids)
        .map(|(endpoint, id)| {
            let policy = by_labels
                .entry(endpoint.effective_labels())
                .or_insert_with(|| Arc::new(resolve_on(policies, &endpoint, peers, node)))
                .clone();
            ResolvedEndpoint { id, endpoint, policy }
        })
        .collect()
}

/// Write the latest saved state whenever it changes.
async fn save_state(dir: PathBuf, node_name: String, mut rx: watch::Receiver<Option<Records>>) {
    while rx.changed().await.is_ok() {
        let Some(records) = rx.borrow_and_update().clone() else { continue };
        let (dir, node_name) = (dir.clone(), node_name.clone());
        match tokio::task::spawn_blocking(move || persist::save(&dir, &node_name, &records)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "saving the Kubernetes state for the next start"),
            Err(e) => tracing::warn!(error = %e, "saving the Kubernetes state panicked"),
        }
    }
}

/// A watch failure in words; RBAC denials name the resource and verb.
fn describe(resource: Resource, e: &watcher::Error) -> String {
    let (verb, inner) = match e {
        watcher::Error::InitialListFailed(inner) => ("list", Some(inner)),
        watcher::Error::WatchStartFailed(inner) | watcher::Error::WatchFailed(inner) => ("watch", Some(inner)),
        watcher::Error::WatchError(status) if status.code == 403 => {
            return format!(
                "RBAC: the agent may not watch {} ({}); apply deploy/rbac.yaml",
                resource.as_str(),
                status.message
            );
        }
        _ => ("watch", None),
    };
    match inner {
        Some(kube::Error::Api(status)) if status.code == 403 => format!(
            "RBAC: the agent may not {verb} {} cluster-wide ({}); apply deploy/rbac.yaml",
            resource.as_str(),
            status.message
        ),
        Some(kube::Error::Api(status))
            if status.code == 404
                && matches!(resource, Resource::CiliumNetworkPolicies | Resource::CiliumClusterwideNetworkPolicies) =>
        {
            format!(
                "{verb} {}: the API server does not know cilium.io/v2 {} (apply deploy/crds/ or install Cilium's CRDs)",
                resource.as_str(),
                resource.as_str()
            )
        }
        _ => format!("{verb} {}: {e}", resource.as_str()),
    }
}

/// Report each rejected policy version as a Warning Event on the object (`kubectl describe cnp`).
async fn report_rejections(client: kube::Client, node: String, mut rx: mpsc::UnboundedReceiver<Rejection>) {
    let recorder =
        Recorder::new(client, Reporter { controller: "fqdnd".into(), instance: Some(format!("fqdnd-{node}")) });
    while let Some(r) = rx.recv().await {
        let reference = ObjectReference {
            api_version: Some(model::API_VERSION.into()),
            kind: Some(r.key.kind_name().into()),
            name: Some(r.key.name.clone()),
            namespace: r.key.namespace.clone(),
            uid: Some(r.uid.clone()).filter(|u| !u.is_empty()),
            resource_version: Some(r.resource_version.clone()).filter(|v| !v.is_empty()),
            ..Default::default()
        };
        let consequence = if r.previous_kept {
            "fqdnd keeps enforcing the last valid version"
        } else {
            "fqdnd enforces nothing of this policy"
        };
        let mut note = format!("{}; {consequence}", r.summary());
        if note.len() > 1024 {
            let mut end = 1000;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
            note.push_str("...");
        }
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: "PolicyInvalid".into(),
            note: Some(note),
            action: "Validate".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!(policy = %r.key, error = %e, "reporting the invalid policy as an Event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::parse_file;

    /// [`resolve_local`] shares one resolution among endpoints with the same labels: that is
    /// only right while resolution reads nothing else of an endpoint (name, IPs, interface).
    #[test]
    fn same_labels_resolve_alike() {
        let (policies, problems) = parse_file(
            std::path::Path::new("t.yaml"),
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  egress:\n  - toEndpoints: [{matchLabels: {app: db}}]\n  - toFQDNs: [{matchPattern: '*.example.com'}]\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        let ep = |name: &str, app: &str, ip: &str| Endpoint {
            namespace: "default".into(),
            name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ips: vec![ip.parse().unwrap()],
            interface: Some(format!("lxc{name}")),
            policy_audit_mode: false,
        };
        let peers = vec![ep("web-1", "web", "10.0.0.1"), ep("web-2", "web", "10.0.0.2"), ep("db", "db", "10.0.0.3")];
        let node = NodeInfo::default();
        let a = resolve_on(&policies, &peers[0], &peers, &node);
        let b = resolve_on(&policies, &peers[1], &peers, &node);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        let resolved = resolve_local(&policies, &peers, &[0, 1, 2], &node);
        assert!(Arc::ptr_eq(&resolved[0].policy, &resolved[1].policy), "replicas share one resolution");
        assert_eq!(format!("{:?}", resolved[0].policy), format!("{a:?}"));
        assert!(resolved[2].policy.policies.is_empty(), "db is not selected");
        assert_ne!(resolved[0].id, resolved[1].id);
        assert_eq!(resolved[1].endpoint.name, "web-2");
    }
}
