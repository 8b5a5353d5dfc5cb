//! What the fuzz targets share: the endpoints and policies they decide with, taken from
//! fixtures/ (alpine may ask kube-dns for *.microsoft.com only; 127.0.0.9 is no endpoint).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use policy_sync::{Endpoint, ResolvedEndpoint, Snapshot};

pub const ALPINE: &str = "127.0.0.1";
pub const STRANGER: &str = "127.0.0.9";
pub const KUBE_DNS: &str = "10.96.0.10";

/// The fixture policy the `query` target enforces.
const POLICY: &str = include_str!("../../fixtures/policies/e2e/dns-microsoft-only.yaml");

pub fn endpoint(namespace: &str, name: &str, label: (&str, &str), ip: &str) -> Endpoint {
    Endpoint {
        namespace: namespace.into(),
        name: name.into(),
        labels: [(label.0.to_string(), label.1.to_string())].into(),
        ips: vec![ip.parse::<IpAddr>().unwrap()],
        interface: None,
        policy_audit_mode: false,
    }
}

/// kube-dns and alpine, as the fixtures' endpoints file has them.
pub fn inventory() -> Vec<Endpoint> {
    vec![
        endpoint("kube-system", "kube-dns", ("k8s-app", "kube-dns"), KUBE_DNS),
        endpoint("default", "alpine", ("app", "alpine"), ALPINE),
    ]
}

/// The snapshot alpine is policed with.
pub fn snapshot() -> Arc<Snapshot> {
    let (policies, problems) = policy_sync::parse_file(Path::new("dns-microsoft-only.yaml"), POLICY);
    assert!(problems.is_empty(), "{problems:?}");
    let inventory = inventory();
    let alpine = inventory[1].clone();
    let policy = Arc::new(policy_sync::resolve(&policies, &alpine, &inventory));
    let resolved = ResolvedEndpoint { id: fqdn_cache::EndpointId(1), endpoint: alpine, policy };
    Arc::new(Snapshot::new(1, vec![resolved], vec![], 0))
}

pub fn kube_dns() -> SocketAddr {
    SocketAddr::new(KUBE_DNS.parse().unwrap(), 53)
}
