//! Where learned IPs go: the [`Datapath`] the enforcer writes [`Delta`]s to. It lives here, below
//! both its caller (the [`Enforcer`](crate::Enforcer)) and its kernel implementation
//! (`ebpf-redirect`), so the DNS proxy and this crate build without the eBPF loader.
//! [`MemoryDatapath`] keeps the entries in memory: plain mode (nothing is enforced in the kernel)
//! and tests.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use thiserror::Error;

use crate::{AllowKey, Delta, Expiry, LastUsed};

mod memory;

pub use memory::MemoryDatapath;

/// A boxed future, so the traits stay object-safe (`Arc<dyn Datapath>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a datapath (or learner) call gives back: its result at once, or a future for it. Map
/// writes are system calls done in the call, so the query path allocates no future for them.
pub enum Completion<'a, T> {
    Ready(std::future::Ready<T>),
    Later(BoxFuture<'a, T>),
}

impl<'a, T> Completion<'a, T> {
    pub fn ready(value: T) -> Self {
        Completion::Ready(std::future::ready(value))
    }

    pub fn later(future: impl Future<Output = T> + Send + 'a) -> Self {
        Completion::Later(Box::pin(future))
    }
}

impl<T> Future for Completion<'_, T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.get_mut() {
            Completion::Ready(value) => Pin::new(value).poll(cx),
            Completion::Later(future) => future.as_mut().poll(cx),
        }
    }
}

/// Why a delta (or a read of the datapath's state) failed. Every variant names the map.
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
    #[error("reading map {map}")]
    MapRead {
        map: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where learned IPs go. `apply` resolves once the entries are enforceable: the proxy releases a
/// DNS answer only after that (or after `--response-max-delay`).
pub trait Datapath: Send + Sync + 'static {
    fn apply(&self, delta: Delta) -> Completion<'_, Result<(), DatapathError>>;

    /// Last-used times of the allow entries of learned IPs, for the cache's zombie pass.
    fn last_used(&self) -> Result<Vec<LastUsed>, DatapathError>;

    /// Every learned (not policy) entry the datapath holds. After a crash the maps can hold
    /// entries newer than the cache's last snapshot; the enforcer adopts them at start so they
    /// still expire.
    fn learned_entries(&self) -> Vec<AllowKey>;

    /// How long each learned entry has left, as [`Delta::expires`] stored it (`ttl` counted from
    /// now, 0 once past). Entries stored without an expiry are left out. A datapath that keeps
    /// none returns nothing, and the enforcer gives adopted entries a fixed grace instead.
    fn learned_expiry(&self) -> Vec<Expiry> {
        Vec::new()
    }
}
