//! ebpf-redirect: the datapath. The [`Datapath`] trait is what the proxy and the cache talk to;
//! [`MemoryDatapath`] implements it in memory for tests, the aya implementation in the kernel.

pub mod memory;

use std::future::Future;
use std::pin::Pin;

pub use fqdn_cache::LastUsed;
use fqdn_cache::{Delta, EndpointId};
use thiserror::Error;

pub use memory::MemoryDatapath;

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error("allow map {map} is full ({capacity} entries); {entry} not added")]
    MapFull { map: String, capacity: u32, entry: String },
    #[error("writing map {map}")]
    MapWrite {
        map: String,
        #[source]
        source: std::io::Error,
    },
}

/// A boxed future, so the trait stays object-safe (`Arc<dyn Datapath>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where learned IPs go. `apply` resolves once the entries are enforceable: the proxy releases a
/// DNS answer only after that (or after `--response-max-delay`).
pub trait Datapath: Send + Sync + 'static {
    fn apply(&self, delta: Delta) -> BoxFuture<'_, Result<(), DatapathError>>;

    /// Last-used times of the allow entries of learned IPs, for the cache's zombie pass.
    fn last_used(&self) -> Result<Vec<LastUsed>, DatapathError>;
}

/// Why the datapath dropped a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Egress default deny and no allow-map entry for the destination.
    PolicyDenied,
    /// An explicit deny rule matched.
    PolicyDeny,
}

/// One packet dropped by the tc program, read from the ring buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropEvent {
    pub endpoint: EndpointId,
    pub src: std::net::SocketAddr,
    pub dst: std::net::SocketAddr,
    pub proto: fqdn_cache::L4Proto,
    /// TCP flags byte of the dropped segment (0 for UDP).
    pub tcp_flags: u8,
    pub reason: DropReason,
    /// Wall-clock time the event was read.
    pub time: std::time::SystemTime,
}
