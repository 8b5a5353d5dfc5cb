//! Policy sources: where policies and endpoints come from, turned into the one [`Snapshot`] type
//! that the proxy, the enforcer, the datapath and flows consume. [`files::FilesSource`] reads a
//! policy directory and an endpoints file (no cluster); [`kubernetes::KubeSource`] watches the API
//! server; both behind the same [`Source`] trait.
//!
//! A source never weakens what is enforced on bad input: the last good version of each policy
//! object (and of the endpoint inventory) stays in the snapshot until a good one replaces it.

pub mod files;
pub mod ids;
pub mod kubernetes;
mod watch;

use foldhash::{HashMap, HashMapExt as _};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use fqdn_cache::{EndpointId, SelectorRule};

use crate::endpoint::{Endpoint, canonical};
use crate::resolved::{EndpointPolicy, PolicyRef};

pub use files::FilesSource;
pub use kubernetes::KubeSource;

/// One policed endpoint with its resolved policy.
#[derive(Clone, Debug)]
pub struct ResolvedEndpoint {
    pub id: EndpointId,
    pub endpoint: Endpoint,
    pub policy: Arc<EndpointPolicy>,
}

impl ResolvedEndpoint {
    /// The endpoint's toFQDNs selectors as the cache takes them.
    pub fn selector_rules(&self) -> Vec<SelectorRule> {
        self.policy
            .fqdn_rules
            .iter()
            .map(|r| SelectorRule { pattern: r.selector.clone(), ports: r.ports.clone() })
            .collect()
    }
}

/// A load that could not read part of its input, so what was in force before stays in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceFault {
    /// The policy path is missing, cannot be listed or read, or is no longer the kind of entry
    /// (directory or file) it was: the last good policies stay.
    PoliciesUnreadable,
    /// The endpoints file cannot be read or is invalid (a misspelled key, an endpoint or an IP
    /// listed twice): the last good inventory stays.
    EndpointsInvalid,
}

impl SourceFault {
    /// A fixed label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFault::PoliciesUnreadable => "policies_unreadable",
            SourceFault::EndpointsInvalid => "endpoints_invalid",
        }
    }
}

/// Everything in force after a load: every component reads it, none rebuilds its own table.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Counts loads; 0 before the first.
    pub generation: u64,
    pub endpoints: Vec<Arc<ResolvedEndpoint>>,
    pub policies: Vec<PolicyRef>,
    /// Policy objects rejected by this load (each reported by the source; the last good
    /// version of each, if any, is still in `policies`).
    pub rejected: usize,
    /// What this load could not read (each logged by the source); what was in force before
    /// stays in this snapshot. Set with [`Snapshot::with_faults`].
    pub faults: Vec<SourceFault>,
    by_ip: HashMap<IpAddr, usize>,
    by_id: HashMap<EndpointId, usize>,
}

impl Snapshot {
    /// Index `endpoints` by IP and id. An IP listed for two endpoints belongs to the later one.
    pub fn new(generation: u64, endpoints: Vec<ResolvedEndpoint>, policies: Vec<PolicyRef>, rejected: usize) -> Self {
        let endpoints: Vec<Arc<ResolvedEndpoint>> = endpoints.into_iter().map(Arc::new).collect();
        let mut by_ip = HashMap::new();
        let mut by_id = HashMap::new();
        for (i, e) in endpoints.iter().enumerate() {
            by_id.insert(e.id, i);
            for ip in &e.endpoint.ips {
                by_ip.insert(canonical(*ip), i);
            }
        }
        Snapshot { generation, endpoints, policies, rejected, faults: Vec::new(), by_ip, by_id }
    }

    /// This snapshot with the faults of the load that made it.
    pub fn with_faults(mut self, faults: Vec<SourceFault>) -> Self {
        self.faults = faults;
        self
    }

    /// Endpoints without policies (an inventory: flows name peers with it).
    pub fn unpoliced(endpoints: impl IntoIterator<Item = (EndpointId, Endpoint)>) -> Self {
        let endpoints =
            endpoints.into_iter().map(|(id, endpoint)| ResolvedEndpoint { id, endpoint, policy: Arc::default() });
        Snapshot::new(0, endpoints.collect(), Vec::new(), 0)
    }

    /// The endpoint that owns `ip` (IPv4-mapped IPv6 is its IPv4 address).
    pub fn by_ip(&self, ip: IpAddr) -> Option<&Arc<ResolvedEndpoint>> {
        self.by_ip.get(&canonical(ip)).map(|&i| &self.endpoints[i])
    }

    pub fn by_id(&self, id: EndpointId) -> Option<&Arc<ResolvedEndpoint>> {
        self.by_id.get(&id).map(|&i| &self.endpoints[i])
    }

    /// Every endpoint's toFQDNs selectors, for the enforcer.
    pub fn selector_rules(&self) -> Vec<(EndpointId, Vec<SelectorRule>)> {
        self.endpoints.iter().map(|e| (e.id, e.selector_rules())).collect()
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A source of snapshots. The agent awaits [`Source::next`] in a loop and hands each snapshot to
/// every component.
pub trait Source: Send {
    /// The next snapshot to enforce. The first call returns the initial state at once; later
    /// calls resolve when something changed.
    fn next(&mut self) -> BoxFuture<'_, Snapshot>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(name: &str, id: u32, ips: &[&str]) -> ResolvedEndpoint {
        ResolvedEndpoint {
            id: EndpointId(id),
            endpoint: Endpoint {
                namespace: "default".into(),
                name: name.into(),
                labels: Default::default(),
                ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
                interface: None,
                policy_audit_mode: false,
            },
            policy: Arc::default(),
        }
    }

    #[test]
    fn lookups_by_ip_and_id() {
        let snap = Snapshot::new(1, vec![ep("a", 7, &["10.0.1.5", "fd00::5"]), ep("b", 8, &["10.0.1.6"])], vec![], 0);
        for (ip, want) in [
            ("10.0.1.5", Some(7)),
            ("::ffff:10.0.1.5", Some(7)),
            ("fd00::5", Some(7)),
            ("10.0.1.6", Some(8)),
            ("10.0.1.7", None),
        ] {
            assert_eq!(snap.by_ip(ip.parse().unwrap()).map(|e| e.id.0), want, "{ip}");
        }
        assert_eq!(snap.by_id(EndpointId(8)).map(|e| e.endpoint.name.as_str()), Some("b"));
        assert!(snap.by_id(EndpointId(9)).is_none());
    }
}
