//! --max-inflight, shared fairly: a query in flight holds one permit of the pool. An endpoint
//! holds at most its share (`--max-inflight-per-endpoint`, waiting permits included), and when the
//! pool is used up, a freed permit goes to the endpoints that wait in turn (round robin), not to
//! whoever asks next. Four flooders of a 500 ms upstream, each at its share, used to hold the
//! whole pool: a quiet pod's queries found none free and 17% of them were dropped. Now a quiet
//! pod waits for the next freed permit with at most one waiting query of each flooder before it.
//! Sources that are no endpoint count per address ([`Owner`]).

use std::collections::VecDeque;

use foldhash::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fqdn_cache::EndpointId;
use tokio::sync::oneshot;

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
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max_total: usize,
    per_owner: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    in_use: usize,
    /// Permits held plus waiters queued, per owner.
    held: HashMap<Owner, usize>,
    waiting: HashMap<Owner, VecDeque<oneshot::Sender<Permit>>>,
    /// Owners with waiters, in the order their turn comes.
    turns: VecDeque<Owner>,
}

/// Held for the life of one query; dropping it hands the slot to the next owner in turn.
#[derive(Debug)]
pub struct Permit {
    /// `None` only for a permit that was never handed out (its waiter had gone).
    inner: Option<Arc<Inner>>,
    owner: Owner,
}

/// Why no permit was given at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Busy {
    /// The owner holds (or waits for) its whole share: the query is shed.
    OwnerFull,
    /// The pool is used up; the query may wait its turn ([`Limiter::acquire`]).
    PoolFull,
}

impl Limiter {
    pub fn new(max_inflight: usize, per_endpoint: usize) -> Self {
        let max_total = max_inflight.max(1);
        Limiter {
            inner: Arc::new(Inner { max_total, per_owner: per_endpoint.clamp(1, max_total), state: Mutex::default() }),
        }
    }

    /// A permit now, or why not (UDP in the receive loop: shed, or wait in a task).
    pub fn try_acquire(&self, owner: Owner) -> Result<Permit, Busy> {
        let mut s = self.inner.lock();
        let held = s.held.get(&owner).copied().unwrap_or(0);
        if held >= self.inner.per_owner {
            return Err(Busy::OwnerFull);
        }
        if s.in_use >= self.inner.max_total {
            return Err(Busy::PoolFull);
        }
        s.in_use += 1;
        *s.held.entry(owner).or_default() += 1;
        Ok(Permit { inner: Some(self.inner.clone()), owner })
    }

    /// A permit now or in `owner`'s turn, waiting up to `wait`; `None` when the owner's share is
    /// used up or the wait ran out.
    pub async fn acquire(&self, owner: Owner, wait: Duration) -> Option<Permit> {
        let rx = {
            let mut s = self.inner.lock();
            if s.held.get(&owner).copied().unwrap_or(0) >= self.inner.per_owner {
                forget_dead_waiters(&mut s, owner);
            }
            if s.held.get(&owner).copied().unwrap_or(0) >= self.inner.per_owner {
                return None;
            }
            *s.held.entry(owner).or_default() += 1;
            if s.in_use < self.inner.max_total {
                s.in_use += 1;
                return Some(Permit { inner: Some(self.inner.clone()), owner });
            }
            let (tx, rx) = oneshot::channel();
            let queue = s.waiting.entry(owner).or_default();
            queue.push_back(tx);
            if queue.len() == 1 {
                s.turns.push_back(owner);
            }
            rx
        };
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(permit)) => Some(permit),
            // Gave up: the queued sender is dead and is skipped (its count released) at hand-off.
            _ => None,
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn release_one(s: &mut State, owner: Owner) {
    if let Some(n) = s.held.get_mut(&owner) {
        *n -= 1;
        if *n == 0 {
            s.held.remove(&owner);
        }
    }
}

/// Waiters of `owner` that gave up still count against its share until a hand-off skips them;
/// an owner at its share drops them first.
fn forget_dead_waiters(s: &mut State, owner: Owner) {
    let Some(queue) = s.waiting.get_mut(&owner) else { return };
    let before = queue.len();
    queue.retain(|tx| !tx.is_closed());
    let dead = before - queue.len();
    if queue.is_empty() {
        s.waiting.remove(&owner);
        s.turns.retain(|o| *o != owner);
    }
    for _ in 0..dead {
        release_one(s, owner);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else { return };
        let mut s = inner.lock();
        release_one(&mut s, self.owner);
        // Hand the slot to the next owner in turn that still waits; the pool stays as full.
        while let Some(owner) = s.turns.pop_front() {
            let tx = s.waiting.get_mut(&owner).and_then(VecDeque::pop_front);
            if s.waiting.get(&owner).is_some_and(|q| !q.is_empty()) {
                s.turns.push_back(owner);
            } else {
                s.waiting.remove(&owner);
            }
            let Some(tx) = tx else { continue };
            match tx.send(Permit { inner: Some(inner.clone()), owner }) {
                Ok(()) => return,
                Err(mut unsent) => {
                    // That waiter gave up: it leaves the count, and the slot goes on to the next.
                    unsent.inner = None;
                    release_one(&mut s, owner);
                }
            }
        }
        s.in_use -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Owner = Owner::Endpoint(EndpointId(1));
    const B: Owner = Owner::Endpoint(EndpointId(2));
    const C: Owner = Owner::Endpoint(EndpointId(3));

    #[test]
    fn one_endpoint_cannot_take_the_whole_pool() {
        let l = Limiter::new(4, 2);
        let a1 = l.try_acquire(A);
        let a2 = l.try_acquire(A);
        assert!(a1.is_ok() && a2.is_ok());
        assert_eq!(l.try_acquire(A).unwrap_err(), Busy::OwnerFull, "endpoint 1 is at its share");
        let b1 = l.try_acquire(B);
        let x = l.try_acquire(Owner::Address("192.0.2.1".parse().unwrap()));
        assert!(b1.is_ok() && x.is_ok(), "others still get permits");
        assert_eq!(l.try_acquire(C).unwrap_err(), Busy::PoolFull, "pool used up");
        drop(a1);
        assert!(l.try_acquire(C).is_ok());
    }

    #[tokio::test]
    async fn freed_permits_go_round_robin_to_those_waiting() {
        // Pool of 4, share 4: A (a flooder) holds all of it and may queue nothing more; B and C
        // each queue one.
        let l = Arc::new(Limiter::new(4, 4));
        let mut held: Vec<Permit> = (0..4).map(|_| l.try_acquire(A).unwrap()).collect();
        assert_eq!(l.try_acquire(B).unwrap_err(), Busy::PoolFull);
        assert!(l.acquire(A, Duration::from_secs(1)).await.is_none(), "A's share is used up");
        let wait = |o| {
            let l = l.clone();
            tokio::spawn(async move { l.acquire(o, Duration::from_secs(30)).await })
        };
        let b = wait(B);
        tokio::task::yield_now().await;
        let c = wait(C);
        tokio::task::yield_now().await;
        // Two of A's permits end: B, then C, get them, before any new query of A could.
        drop(held.pop());
        let pb = b.await.unwrap().expect("B's turn");
        assert_eq!(l.try_acquire(A).unwrap_err(), Busy::PoolFull, "C still waits: A does not jump the queue");
        drop(held.pop());
        let pc = c.await.unwrap().expect("C's turn");
        assert_eq!((pb.owner, pc.owner), (B, C));
        drop((pb, pc, held));
        // Everything is back.
        let all: Vec<Permit> = (0..4).map(|_| l.try_acquire(B).unwrap()).collect();
        assert_eq!(all.len(), 4);
    }

    #[tokio::test]
    async fn a_waiter_that_gave_up_is_skipped_and_its_share_returned() {
        let l = Arc::new(Limiter::new(1, 2));
        let first = l.try_acquire(A).unwrap();
        assert!(l.acquire(B, Duration::from_millis(10)).await.is_none(), "timed out waiting");
        let c = {
            let l = l.clone();
            tokio::spawn(async move { l.acquire(C, Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        drop(first);
        assert_eq!(c.await.unwrap().expect("C gets the permit B gave up").owner, C);
        // B's count was returned: it may hold its full share again.
        let b1 = l.acquire(B, Duration::from_secs(1)).await.unwrap();
        drop(b1);
    }
}
