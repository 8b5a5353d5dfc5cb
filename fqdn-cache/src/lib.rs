//! fqdn-cache: DNS name patterns with Cilium's semantics, and what fqdnd learned from DNS answers.
//!
//! No I/O happens here on the query path: the proxy hands in [`Answer`]s and gets [`Delta`]s back
//! for the datapath.

pub mod pattern;
pub mod types;

pub use types::{AllowKey, Answer, Delta, EndpointId, L4Proto, LastUsed, PortProto, normalize_name};
