//! policy-sync: CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy model, validation with
//! Cilium's semantics, label selectors, and resolution into per-endpoint [`EndpointPolicy`].
//!
//! The agent's cycle: a [`Source`] ([`FilesSource`]: a policy directory and an endpoints file)
//! loads policies ([`load_paths`]: bad documents become [`Problem`]s and are skipped, the last good
//! version stays), resolves every endpoint ([`resolve`]: DNS rules compiled once into
//! [`DnsRules`]) and hands out a [`Snapshot`]. [`explain`] answers "why" for the CLI with the same
//! decisions, the DNS one through the very [`DnsRules::decide`] the proxy calls.

pub mod dns;
pub mod endpoint;
pub mod error;
pub mod explain;
pub mod load;
pub mod model;
pub mod policy;
pub mod resolve;
pub mod resolved;
pub mod selector;
pub mod source;
pub mod validate;

pub use dns::{Decider, DnsRules, DnsVerdict, RuleVerdict};
pub use endpoint::{Endpoint, EndpointKey, load_endpoints_file};
pub use error::PolicyError;
pub use load::{LoadReport, Problem, load_paths, parse_file};
pub use policy::{Policy, PolicyKind};
pub use resolve::{NodeInfo, Traced, resolve, resolve_on, resolve_traced};
pub use resolved::{DnsRule, DnsWildcard, EndpointPolicy, Entity, FqdnRule, L3Rule, Peer, PolicyRef};
pub use source::{FilesSource, ResolvedEndpoint, Snapshot, Source, SourceFault};
