//! The enforcer: the cache and the datapath under one ordering guarantee. An answer's allow
//! entries are in the datapath before [`Learner::learn`] resolves, so the proxy releases the
//! answer only once the client's first packet to a new IP will pass.
//!
//! Every delta is handed to the datapath while the cache lock is still held: the kernel datapath
//! applies synchronously, so map writes happen in the order the cache computed them, and an
//! expiry can never overtake the answer that re-learned the same IP (or the reverse).

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime};

use crate::datapath::{Completion, Datapath, DatapathError};
use crate::{
    AllowKey, Answer, Cache, CacheConfig, CacheCounters, Delta, EndpointId, EntryView, ListFilter, SelectorRule,
};

mod orphans;

pub use orphans::ORPHAN_GRACE;
use orphans::Orphans;

/// The snapshot file in the state directory.
pub const SNAPSHOT_FILE: &str = "cache.snapshot";

/// Where the proxy hands what it learned. The future resolves once the allow entries the answer
/// adds are enforceable: `Ok(true)` after the datapath's ack, `Ok(false)` at once when the answer
/// changes nothing. Called on the query path: it must not block on I/O.
pub trait Learner: Send + Sync + 'static {
    fn learn(&self, answer: &Answer) -> Completion<'_, Result<bool, DatapathError>>;
}

/// The cache behind a lock, the datapath it feeds, and the snapshot file it persists to.
pub struct Enforcer {
    cache: Mutex<Cache>,
    datapath: Arc<dyn Datapath>,
    /// The endpoints of the last [`Enforcer::set_endpoints`]: the ones whose allow sets exist.
    endpoints: Mutex<BTreeSet<EndpointId>>,
    snapshot: PathBuf,
    /// Held by [`Enforcer::save`] (not the cache's lock) while the file is written.
    saving: Mutex<()>,
    orphans: Mutex<Orphans>,
}

impl std::fmt::Debug for Enforcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcer").field("snapshot", &self.snapshot).finish_non_exhaustive()
    }
}

impl Enforcer {
    /// Restore the cache from `state_dir`'s snapshot, or start empty. A snapshot that cannot be
    /// read is reported and set aside (renamed), never deleted.
    pub fn open(config: CacheConfig, state_dir: &Path, datapath: Arc<dyn Datapath>) -> Self {
        let snapshot = state_dir.join(SNAPSHOT_FILE);
        let cache = if snapshot.exists() {
            match Cache::restore(&snapshot, config.clone(), SystemTime::now(), Instant::now()) {
                Ok(c) => {
                    tracing::info!(path = %snapshot.display(), entries = c.counters().entries, "cache restored");
                    c
                }
                Err(e) => {
                    let aside = crate::cache::set_aside(&snapshot, SystemTime::now());
                    tracing::warn!(error = %e, set_aside = ?aside, "cache snapshot not restored; starting empty");
                    Cache::new(config, Instant::now())
                }
            }
        } else {
            Cache::new(config, Instant::now())
        };
        Enforcer {
            cache: Mutex::new(cache),
            datapath,
            endpoints: Mutex::default(),
            snapshot,
            saving: Mutex::new(()),
            orphans: Mutex::new(Orphans::new(Instant::now())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn known(&self) -> MutexGuard<'_, BTreeSet<EndpointId>> {
        self.endpoints.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Start applying `delta` (caller holds the cache lock); the future is the ack.
    fn start_apply(&self, delta: Delta) -> Option<Completion<'_, Result<(), DatapathError>>> {
        (!delta.is_noop()).then(|| self.datapath.apply(delta))
    }

    /// The toFQDNs selectors of every endpoint in force; endpoints not listed are forgotten (their
    /// allow sets removed from the datapath). Returns what the datapath said.
    pub async fn set_endpoints(&self, endpoints: Vec<(EndpointId, Vec<SelectorRule>)>) -> Result<(), DatapathError> {
        let pending = {
            let mut cache = self.lock();
            let mut known = self.known();
            let listed: BTreeSet<EndpointId> = endpoints.iter().map(|(id, _)| *id).collect();
            let mut delta = Delta::default();
            for gone in known.difference(&listed) {
                delta.extend(cache.remove_endpoint(*gone));
            }
            *known = listed;
            delta.extend(cache.set_selectors_many(endpoints));
            self.start_apply(delta)
        };
        match pending {
            Some(ack) => ack.await,
            None => Ok(()),
        }
    }

    /// After a restart: adopt the datapath's learned entries the restored cache does not know
    /// (see [`Orphans`]), then write every allow the restored cache holds. Call once, after the
    /// first [`Enforcer::set_endpoints`]. Returns how many entries were adopted as orphans.
    pub async fn restore_into_datapath(&self) -> Result<usize, DatapathError> {
        let (adopted, pending) = {
            let cache = self.lock();
            let add: Vec<AllowKey> = self.allows_locked(&cache).collect();
            let known: HashSet<(EndpointId, IpAddr)> = add.iter().map(|k| (k.endpoint, k.ip)).collect();
            let in_kernel = self.datapath.learned_entries();
            let expiry = self.datapath.learned_expiry();
            let mut orphans = self.orphans.lock().unwrap_or_else(PoisonError::into_inner);
            let adopted =
                orphans.adopt(in_kernel.into_iter().filter(|k| !known.contains(&(k.endpoint, k.ip))), &expiry);
            (adopted, self.start_apply(Delta { add, ..Delta::default() }))
        };
        if adopted > 0 {
            tracing::info!(entries = adopted, "learned entries newer than the cache snapshot kept while in use");
        }
        if let Some(ack) = pending {
            ack.await?;
        }
        Ok(adopted)
    }

    /// One expiry pass with the datapath's last-used times (zombies).
    pub async fn gc(&self) -> Result<(), DatapathError> {
        let usage = match self.datapath.last_used() {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "reading last-used times; expired entries are treated as idle");
                Vec::new()
            }
        };
        let pending = {
            let now = Instant::now();
            let mut cache = self.lock();
            let mut delta = cache.gc(now, &usage);
            let mut orphans = self.orphans.lock().unwrap_or_else(PoisonError::into_inner);
            delta.remove.extend(orphans.expire(&cache, now, &usage));
            self.start_apply(delta)
        };
        match pending {
            Some(ack) => ack.await,
            None => Ok(()),
        }
    }

    fn allows_locked<'c>(&self, cache: &'c Cache) -> impl Iterator<Item = AllowKey> + 'c {
        let ids: Vec<EndpointId> = self.known().iter().copied().collect();
        ids.into_iter().flat_map(|id| cache.allows(id))
    }

    /// Write the snapshot (temp file + rename, by the cache).
    ///
    /// The cache is locked only to serialize it: learning goes on while the file is written and
    /// synced (which on a busy disk takes long enough to stall every endpoint's answers).
    pub fn save(&self) {
        // One writer at a time, in order: the temporary file is shared, and a later snapshot
        // must not be overwritten by an earlier one.
        let _writing = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        let bytes = self.lock().snapshot_bytes(SystemTime::now(), Instant::now());
        let result = Cache::write_snapshot_file(&self.snapshot, &bytes);
        match result {
            Ok(()) => tracing::debug!(path = %self.snapshot.display(), "cache snapshot written"),
            Err(e) => tracing::warn!(error = %e, "writing the cache snapshot"),
        }
    }

    /// Entries for `fqdnd cache list`.
    pub fn list(&self, filter: &ListFilter) -> Vec<EntryView> {
        self.lock().list(filter, Instant::now(), SystemTime::now())
    }

    /// Names `endpoint`'s lookups resolved to `ip` (flow logs name a dropped destination so).
    pub fn names_for_ip(&self, endpoint: EndpointId, ip: IpAddr) -> Vec<String> {
        self.lock().names_for_ip(endpoint, ip)
    }

    pub fn counters(&self) -> CacheCounters {
        self.lock().counters()
    }
}

impl Learner for Enforcer {
    fn learn(&self, answer: &Answer) -> Completion<'_, Result<bool, DatapathError>> {
        let (ack, changes) = {
            let mut cache = self.lock();
            let delta = cache.learn(answer, Instant::now());
            // A delta of longer expiries alone changes nothing that passes.
            let changes = !delta.is_empty();
            (self.start_apply(delta), changes)
        };
        match ack {
            None => Completion::ready(Ok(false)),
            Some(Completion::Ready(done)) => Completion::ready(done.into_inner().map(|()| changes)),
            Some(Completion::Later(ack)) => Completion::later(async move { ack.await.map(|()| changes) }),
        }
    }
}

#[cfg(test)]
mod tests;
