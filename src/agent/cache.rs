//! The agent's fqdn cache: one `fqdn_cache::Cache` behind a lock, serving the proxy (learning),
//! the datapath (deltas, in the order they are computed), `fqdnd cache list`, metrics and drop
//! flows (names of an IP).
//!
//! Every delta is handed to the datapath while the cache lock is still held: the kernel datapath
//! applies synchronously, so map writes happen in the order the cache computed them, and an
//! expiry can never overtake the answer that re-learned the same IP (or the reverse).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dns_proxy::Learner;
use ebpf_redirect::{BoxFuture, Datapath, DatapathError};
use fqdn_cache::{AllowKey, Answer, Cache, CacheConfig, Delta, EndpointId, ListFilter, SelectorRule, Source};
use fqdnd::admin::{CacheEntryView, CacheLister, CacheSource};
use fqdnd::flows::NamesLookup;
use fqdnd::metrics::{CacheStats, CacheStatsSource};
use policy_sync::EndpointKey;

use super::policies::Snapshot;

/// The snapshot file in the state directory.
pub const SNAPSHOT_FILE: &str = "cache.snapshot";

pub struct CacheHandle {
    cache: Mutex<Cache>,
    datapath: Arc<dyn Datapath>,
    /// Endpoint ids <-> namespace/name, for listing.
    names: Mutex<HashMap<EndpointId, EndpointKey>>,
    snapshot: PathBuf,
}

impl CacheHandle {
    /// Restore the cache from the state directory's snapshot, or start empty. A snapshot that
    /// cannot be read is reported and set aside (renamed), never deleted.
    pub fn open(config: CacheConfig, state_dir: &Path, datapath: Arc<dyn Datapath>) -> Self {
        let snapshot = state_dir.join(SNAPSHOT_FILE);
        let cache = if snapshot.exists() {
            match Cache::restore(&snapshot, config.clone(), SystemTime::now(), Instant::now()) {
                Ok(c) => {
                    tracing::info!(path = %snapshot.display(), entries = c.counters().entries, "cache restored");
                    c
                }
                Err(e) => {
                    let aside = fqdn_cache::cache::set_aside(&snapshot, SystemTime::now());
                    tracing::warn!(error = %e, set_aside = ?aside, "cache snapshot not restored; starting empty");
                    Cache::new(config, Instant::now())
                }
            }
        } else {
            Cache::new(config, Instant::now())
        };
        CacheHandle { cache: Mutex::new(cache), datapath, names: Mutex::default(), snapshot }
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Start applying `delta` (caller holds the cache lock); the future is the ack.
    fn start_apply(&self, delta: Delta) -> Option<BoxFuture<'_, Result<(), DatapathError>>> {
        (!delta.is_empty()).then(|| self.datapath.apply(delta))
    }

    /// Take a new policy snapshot: toFQDNs selectors per endpoint, endpoints gone removed.
    pub async fn apply_snapshot(&self, snap: &Snapshot) {
        let pending = {
            let mut cache = self.lock();
            let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
            let gone: Vec<EndpointId> =
                names.keys().filter(|id| !snap.endpoints.iter().any(|e| e.id == **id)).copied().collect();
            let mut delta = Delta::default();
            for id in gone {
                delta.extend(cache.remove_endpoint(id));
                names.remove(&id);
            }
            let changes = snap.endpoints.iter().map(|e| {
                names.insert(e.id, e.endpoint.key());
                let rules = e
                    .policy
                    .fqdn_rules
                    .iter()
                    .map(|r| SelectorRule { pattern: r.selector.clone(), ports: r.ports.clone() })
                    .collect();
                (e.id, rules)
            });
            delta.extend(cache.set_selectors_many(changes.collect::<Vec<_>>()));
            self.start_apply(delta)
        };
        if let Some(ack) = pending
            && let Err(e) = ack.await
        {
            tracing::warn!(error = %e, "datapath update after a policy change failed");
        }
    }

    /// One expiry pass with the datapath's last-used times (zombies).
    pub async fn gc(&self) {
        let usage = match self.datapath.last_used() {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "reading last-used times; expired entries are treated as idle");
                Vec::new()
            }
        };
        let pending = {
            let mut cache = self.lock();
            let delta = cache.gc(Instant::now(), &usage);
            self.start_apply(delta)
        };
        if let Some(ack) = pending
            && let Err(e) = ack.await
        {
            tracing::warn!(error = %e, "datapath update after expiry failed");
        }
    }

    /// Every learned allow key (for reconciling the datapath at start).
    pub fn all_allows(&self) -> Vec<AllowKey> {
        let cache = self.lock();
        let ids: Vec<EndpointId> = self.names.lock().unwrap_or_else(PoisonError::into_inner).keys().copied().collect();
        ids.into_iter().flat_map(|id| cache.allows(id)).collect()
    }

    /// Write the snapshot (temp file + rename, by the cache).
    pub fn save(&self) {
        let result = self.lock().write_snapshot(&self.snapshot, SystemTime::now(), Instant::now());
        match result {
            Ok(()) => tracing::debug!(path = %self.snapshot.display(), "cache snapshot written"),
            Err(e) => tracing::warn!(error = %e, "writing the cache snapshot"),
        }
    }
}

impl Learner for CacheHandle {
    fn learn(&self, answer: &Answer) -> Delta {
        self.lock().learn(answer, Instant::now())
    }

    fn learn_into<'a>(
        &'a self,
        answer: &Answer,
        datapath: &'a dyn Datapath,
    ) -> BoxFuture<'a, Result<bool, DatapathError>> {
        let ack = {
            let mut cache = self.lock();
            let delta = cache.learn(answer, Instant::now());
            (!delta.is_empty()).then(|| datapath.apply(delta))
        };
        Box::pin(async move {
            match ack {
                Some(ack) => ack.await.map(|()| true),
                None => Ok(false),
            }
        })
    }
}

impl CacheLister for CacheHandle {
    fn list(&self, endpoint: Option<&EndpointKey>) -> Vec<CacheEntryView> {
        let names = self.names.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let id = match endpoint {
            Some(key) => match names.iter().find(|(_, k)| *k == key) {
                Some((id, _)) => Some(*id),
                None => return Vec::new(),
            },
            None => None,
        };
        let filter = ListFilter { endpoint: id, pattern: None };
        let rows = self.lock().list(&filter, Instant::now(), SystemTime::now());
        rows.into_iter()
            .map(|r| CacheEntryView {
                endpoint: names.get(&r.endpoint).map_or_else(|| r.endpoint.to_string(), |k| k.to_string()),
                source: match r.source {
                    Source::Lookup => CacheSource::Lookup,
                    Source::Connection => CacheSource::Connection,
                },
                fqdn: r.fqdn,
                ttl: r.ttl,
                expires: UNIX_EPOCH + std::time::Duration::from_secs(r.expires_unix.max(0) as u64),
                ips: r.ips,
            })
            .collect()
    }
}

impl CacheStatsSource for CacheHandle {
    fn cache_stats(&self) -> CacheStats {
        let c = self.lock().counters();
        CacheStats { entries: c.entries, zombies: c.zombies, evictions: c.evictions + c.zombie_evictions }
    }
}

impl NamesLookup for CacheHandle {
    fn names_for_ip(&self, endpoint: EndpointId, ip: IpAddr) -> Vec<String> {
        self.lock().names_for_ip(endpoint, ip)
    }
}
