//! policy-sync: CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy model, validation with
//! Cilium's semantics, label selectors, and resolution into per-endpoint [`EndpointPolicy`].
//!
//! The agent's cycle: [`load_paths`] (files and directories; bad documents become [`Problem`]s and
//! are skipped), then [`resolve`] / [`resolve_on`] per endpoint. [`explain`] answers "why" for the
//! CLI with the same decisions.

pub mod endpoint;
pub mod error;
pub mod explain;
pub mod load;
pub mod model;
pub mod policy;
pub mod resolve;
pub mod resolved;
pub mod selector;
pub mod validate;

pub use endpoint::{Endpoint, EndpointKey, load_endpoints_file};
pub use error::PolicyError;
pub use load::{LoadReport, Problem, load_paths, parse_file};
pub use policy::{Policy, PolicyKind};
pub use resolve::{NodeInfo, Traced, resolve, resolve_on, resolve_traced};
pub use resolved::{DnsRule, DnsVerdict, EndpointPolicy, Entity, FqdnRule, L3Rule, Peer, PolicyRef};
