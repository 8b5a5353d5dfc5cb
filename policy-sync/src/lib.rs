//! policy-sync: CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy model, validation with
//! Cilium's semantics, label selectors, and resolution into per-endpoint [`EndpointPolicy`].

pub mod endpoint;
pub mod error;
pub mod resolved;

pub use endpoint::{Endpoint, EndpointKey, load_endpoints_file};
pub use error::PolicyError;
pub use resolved::{DnsRule, DnsVerdict, EndpointPolicy, Entity, FqdnRule, L3Rule, Peer, PolicyRef};
