//! fqdn-cache: DNS name patterns with Cilium's semantics, and what fqdnd learned from DNS answers.
//!
//! No I/O happens here on the query path: the proxy hands in [`Answer`]s and gets [`Delta`]s back
//! for the datapath. Snapshots ([`Cache::write_snapshot`]) are the only file access, off the
//! query path.

pub mod cache;
mod error;
pub mod pattern;
pub mod types;

pub use cache::{Cache, CacheConfig, CacheCounters, EntryView, ListFilter, Scope, SelectorRule, Source};
pub use error::CacheError;
pub use types::{AllowKey, Answer, Delta, EndpointId, L4Proto, LastUsed, PortProto, normalize_name, normalized_name};
