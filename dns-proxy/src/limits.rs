//! --max-inflight with per-endpoint fairness: a query holds one permit of its endpoint's share and
//! one of the global pool. One endpoint can take at most its share, so a noisy pod leaves the rest
//! of the pool to the others. Unknown sources (plain mode) share one bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fqdn_cache::EndpointId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Whose share a query or a connection counts against: a known endpoint, or, for a source that
/// is no endpoint, its address (so one unknown client cannot use up what the others share).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    Endpoint(EndpointId),
    Address(IpAddr),
}

impl Owner {
    pub fn of(endpoint: Option<EndpointId>, client: IpAddr) -> Owner {
        match endpoint {
            Some(id) => Owner::Endpoint(id),
            None => Owner::Address(client),
        }
    }
}

#[derive(Debug)]
pub struct Limiter {
    global: Arc<Semaphore>,
    per_endpoint: usize,
    buckets: Mutex<HashMap<Option<EndpointId>, Arc<Semaphore>>>,
}

/// Held for the life of one query.
#[derive(Debug)]
pub struct Permit {
    _endpoint: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

impl Limiter {
    pub fn new(max_inflight: usize, per_endpoint: usize) -> Self {
        Limiter {
            global: Arc::new(Semaphore::new(max_inflight.max(1))),
            per_endpoint: per_endpoint.clamp(1, max_inflight.max(1)),
            buckets: Mutex::default(),
        }
    }

    fn bucket(&self, endpoint: Option<EndpointId>) -> Arc<Semaphore> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets.entry(endpoint).or_insert_with(|| Arc::new(Semaphore::new(self.per_endpoint))).clone()
    }

    /// A permit now, or `None` (UDP: the query is dropped and the client retries).
    pub fn try_acquire(&self, endpoint: Option<EndpointId>) -> Option<Permit> {
        let ep = self.bucket(endpoint).try_acquire_owned().ok()?;
        let global = self.global.clone().try_acquire_owned().ok()?;
        Some(Permit { _endpoint: ep, _global: global })
    }

    /// Wait up to `wait` for a permit (TCP: the connection already holds the client's attention).
    pub async fn acquire(&self, endpoint: Option<EndpointId>, wait: Duration) -> Option<Permit> {
        let bucket = self.bucket(endpoint);
        tokio::time::timeout(wait, async {
            let ep = bucket.acquire_owned().await.ok()?;
            let global = self.global.clone().acquire_owned().await.ok()?;
            Some(Permit { _endpoint: ep, _global: global })
        })
        .await
        .ok()
        .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_endpoint_cannot_take_the_whole_pool() {
        let l = Limiter::new(4, 2);
        let a1 = l.try_acquire(Some(EndpointId(1)));
        let a2 = l.try_acquire(Some(EndpointId(1)));
        assert!(a1.is_some() && a2.is_some());
        assert!(l.try_acquire(Some(EndpointId(1))).is_none(), "endpoint 1 is at its share");
        let b1 = l.try_acquire(Some(EndpointId(2)));
        let b2 = l.try_acquire(None);
        assert!(b1.is_some() && b2.is_some(), "others still get permits");
        assert!(l.try_acquire(Some(EndpointId(3))).is_none(), "global pool exhausted");
        drop(a1);
        assert!(l.try_acquire(Some(EndpointId(3))).is_some());
    }
}
