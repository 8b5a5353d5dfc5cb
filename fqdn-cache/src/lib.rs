//! fqdn-cache: DNS name patterns with Cilium's semantics, what fqdnd learned from DNS answers, and
//! the enforcer that writes what answers allow into the datapath before they are released.
//!
//! No I/O happens here on the query path: the proxy hands [`Answer`]s to the [`Learner`] (the
//! [`Enforcer`]), which turns them into [`Delta`]s for the [`Datapath`] and resolves once those
//! are written. Snapshots ([`Cache::write_snapshot`]) are the only file access, off the query path.

pub mod cache;
pub mod datapath;
pub mod enforcer;
mod error;
pub mod pattern;
pub mod types;

pub use cache::{
    Cache, CacheConfig, CacheCounters, DEFAULT_MAX_TTL, EntryView, ListFilter, Scope, SelectorRule, Source,
};
pub use datapath::{BoxFuture, Completion, Datapath, DatapathError, MemoryDatapath};
pub use enforcer::{Enforcer, Learner};
pub use error::CacheError;
pub use types::{
    AllowKey, Answer, Delta, EndpointId, Expiry, L4Proto, LastUsed, PortProto, normalize_name, normalize_owned,
    normalized_name,
};
