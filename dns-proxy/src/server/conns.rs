//! TCP connections held at once, in total and per endpoint (RFC 7766 6.2.2). Each connection
//! costs a descriptor and some memory for as long as the client keeps it; 1,100 idle ones used to
//! exhaust the descriptors, and other clients' UDP queries failed for want of an upstream socket.
//! At a cap, the oldest idle connection (no query in flight, least recently active) of that
//! endpoint, or of all, is closed to make room; if every one is busy, the new one is closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::limits::Owner;
use crate::log_limit::LogLimit;

#[derive(Debug)]
pub(crate) struct Connections {
    max_total: usize,
    max_per_owner: usize,
    epoch: Instant,
    table: Mutex<Table>,
    /// Accept failures (out of descriptors or memory) are logged this often at most.
    pub(crate) accept_errors: LogLimit,
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    conns: HashMap<u64, (Owner, Arc<ConnState>)>,
    per_owner: HashMap<Owner, usize>,
}

/// What the registry knows of a live connection; the connection updates it.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// Milliseconds since the registry's epoch at the last query read or reply written.
    last_active: AtomicU64,
    /// Queries read and not yet answered.
    pub(crate) in_flight: AtomicUsize,
    /// Cancelled when the connection is chosen to make room.
    pub(crate) close: CancellationToken,
}

/// A connection's place in the registry, given back on drop.
#[derive(Debug)]
pub(crate) struct ConnGuard {
    conns: Arc<Connections>,
    id: u64,
    pub(crate) state: Arc<ConnState>,
}

/// Why a connection was not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The endpoint holds its share, all busy.
    OwnerFull,
    /// The proxy holds its total, all busy.
    TotalFull,
}

impl Connections {
    pub(crate) fn new(max_total: usize, max_per_owner: usize) -> Self {
        Connections {
            max_total: max_total.max(1),
            max_per_owner: max_per_owner.clamp(1, max_total.max(1)),
            epoch: Instant::now(),
            table: Mutex::default(),
            accept_errors: LogLimit::new(Duration::from_secs(10)),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Make room for a connection of `owner` and register it. Returns the connections closed to
    /// make room (0 or 1, counted by the caller) with the guard, or why it was refused.
    pub(crate) fn admit(self: &Arc<Self>, owner: Owner) -> Result<(ConnGuard, usize), Refusal> {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let mut evicted = 0;
        if t.per_owner.get(&owner).copied().unwrap_or(0) >= self.max_per_owner {
            if !evict_oldest_idle(&mut t, Some(owner)) {
                return Err(Refusal::OwnerFull);
            }
            evicted += 1;
        }
        if t.conns.len() >= self.max_total {
            if !evict_oldest_idle(&mut t, None) {
                return Err(Refusal::TotalFull);
            }
            evicted += 1;
        }
        let state = Arc::new(ConnState {
            last_active: AtomicU64::new(self.now_ms()),
            in_flight: AtomicUsize::new(0),
            close: CancellationToken::new(),
        });
        t.next += 1;
        let id = t.next;
        t.conns.insert(id, (owner, state.clone()));
        *t.per_owner.entry(owner).or_default() += 1;
        Ok((ConnGuard { conns: self.clone(), id, state }, evicted))
    }

    /// Close the oldest idle connection of anyone (the accept loop, out of descriptors).
    pub(crate) fn evict_one(&self) -> bool {
        evict_oldest_idle(&mut self.table.lock().unwrap_or_else(|e| e.into_inner()), None)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().unwrap().conns.len()
    }
}

/// Remove the least recently active connection without a query in flight (of `owner`, if
/// given) from the table and tell it to close. False if there is none.
fn evict_oldest_idle(t: &mut Table, owner: Option<Owner>) -> bool {
    let victim = t
        .conns
        .iter()
        .filter(|(_, (o, s))| owner.is_none_or(|w| w == *o) && s.in_flight.load(Ordering::Acquire) == 0)
        .min_by_key(|(id, (_, s))| (s.last_active.load(Ordering::Relaxed), **id))
        .map(|(id, _)| *id);
    let Some(id) = victim else { return false };
    if let Some((o, s)) = t.conns.remove(&id) {
        release(t, o);
        s.close.cancel();
    }
    true
}

fn release(t: &mut Table, owner: Owner) {
    if let Some(n) = t.per_owner.get_mut(&owner) {
        *n -= 1;
        if *n == 0 {
            t.per_owner.remove(&owner);
        }
    }
}

impl ConnGuard {
    /// The connection did something (a query read, a reply written).
    pub(crate) fn touch(&self) {
        self.state.last_active.store(self.conns.now_ms(), Ordering::Relaxed);
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut t = self.conns.table.lock().unwrap_or_else(|e| e.into_inner());
        // Gone already when it was evicted.
        if let Some((owner, _)) = t.conns.remove(&self.id) {
            release(&mut t, owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use fqdn_cache::EndpointId;

    use super::*;

    const A: Owner = Owner::Endpoint(EndpointId(1));
    const B: Owner = Owner::Endpoint(EndpointId(2));

    fn c(ip: &str) -> Owner {
        Owner::Address(ip.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn oldest_idle_of_the_owner_goes_first() {
        let conns = Arc::new(Connections::new(10, 2));
        let (a1, _) = conns.admit(A).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let (a2, _) = conns.admit(A).unwrap();
        let (b1, _) = conns.admit(B).unwrap();
        // a1 is older, but busy: a2 goes.
        a1.state.in_flight.store(1, Ordering::Release);
        let (a3, evicted) = conns.admit(A).unwrap();
        assert_eq!(evicted, 1);
        assert!(a2.state.close.is_cancelled() && !a1.state.close.is_cancelled() && !b1.state.close.is_cancelled());
        // Both of A's left are busy: the next one of A is refused, B's are untouched.
        a3.state.in_flight.store(1, Ordering::Release);
        assert_eq!(conns.admit(A).unwrap_err(), Refusal::OwnerFull);
        assert_eq!(conns.len(), 3);
        drop(a2);
        assert_eq!(conns.len(), 3, "an evicted connection's guard does not count twice");
        drop(a1);
        conns.admit(A).unwrap();
    }

    #[test]
    fn total_cap_closes_the_oldest_idle_of_anyone() {
        let conns = Arc::new(Connections::new(3, 3));
        let (x, _) = conns.admit(c("192.0.2.1")).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let (y, _) = conns.admit(c("192.0.2.2")).unwrap();
        let (z, _) = conns.admit(A).unwrap();
        // x is touched after y: y is now the least recently active.
        std::thread::sleep(Duration::from_millis(5));
        x.touch();
        let (_w, evicted) = conns.admit(B).unwrap();
        assert_eq!(evicted, 1);
        assert!(y.state.close.is_cancelled() && !x.state.close.is_cancelled() && !z.state.close.is_cancelled());
        for g in [&x, &z] {
            g.state.in_flight.store(1, Ordering::Release);
        }
        _w.state.in_flight.store(1, Ordering::Release);
        assert_eq!(conns.admit(c("192.0.2.9")).unwrap_err(), Refusal::TotalFull);
        assert!(!conns.evict_one(), "nothing idle to close");
    }
}
