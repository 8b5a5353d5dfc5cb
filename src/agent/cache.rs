//! The agent's fqdn cache: one `fqdn_cache::Cache` behind a lock, serving the proxy (learning),
//! the datapath (deltas, in the order they are computed), `fqdnd cache list`, metrics and drop
//! flows (names of an IP).
//!
//! Every delta is handed to the datapath while the cache lock is still held: the kernel datapath
//! applies synchronously, so map writes happen in the order the cache computed them, and an
//! expiry can never overtake the answer that re-learned the same IP (or the reverse).

use std::collections::{BTreeSet, HashMap, HashSet};
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
    orphans: Mutex<Orphans>,
}

/// Learned entries found in the kernel at start that the restored cache does not know: learned
/// after the last snapshot, before a crash. They carry no name or TTL any more, so they are
/// treated as zombies: after [`ORPHAN_GRACE`] (connections idle across the restart get that long
/// to send again), kept while a connection uses them, removed at the first GC pass that finds them
/// idle; or handed back to the cache once re-learned.
struct Orphans {
    keys: BTreeSet<AllowKey>,
    adopted: Instant,
    last_pass: Instant,
}

/// How long after a restart orphans are kept whether used or not.
pub const ORPHAN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

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
        let now = Instant::now();
        let orphans = Mutex::new(Orphans { keys: BTreeSet::new(), adopted: now, last_pass: now });
        CacheHandle { cache: Mutex::new(cache), datapath, names: Mutex::default(), snapshot, orphans }
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
            let now = Instant::now();
            let mut cache = self.lock();
            let mut delta = cache.gc(now, &usage);
            delta.remove.extend(self.expire_orphans(&cache, now, &usage));
            self.start_apply(delta)
        };
        if let Some(ack) = pending
            && let Err(e) = ack.await
        {
            tracing::warn!(error = %e, "datapath update after expiry failed");
        }
    }

    /// At start: adopt the datapath's learned entries that the restored cache does not allow
    /// (see [`Orphans`]). Returns how many were adopted.
    pub fn adopt_orphans(&self) -> usize {
        let cache = self.lock();
        let known: HashSet<(EndpointId, IpAddr)> = self.all_allows_locked(&cache).map(|k| (k.endpoint, k.ip)).collect();
        let mut orphans = self.orphans.lock().unwrap_or_else(PoisonError::into_inner);
        orphans.keys =
            self.datapath.learned_entries().into_iter().filter(|k| !known.contains(&(k.endpoint, k.ip))).collect();
        orphans.adopted = Instant::now();
        orphans.last_pass = orphans.adopted;
        orphans.keys.len()
    }

    /// The orphans to remove in this GC pass: idle since the previous pass (less the grace
    /// period), and not re-learned by the cache meanwhile. Caller holds the cache lock.
    fn expire_orphans(&self, cache: &Cache, now: Instant, usage: &[fqdn_cache::LastUsed]) -> Vec<AllowKey> {
        let mut orphans = self.orphans.lock().unwrap_or_else(PoisonError::into_inner);
        let window = now.saturating_duration_since(orphans.last_pass) + cache.config().idle_grace;
        orphans.last_pass = now;
        if orphans.keys.is_empty() {
            return Vec::new();
        }
        let in_grace = now.saturating_duration_since(orphans.adopted) < ORPHAN_GRACE;
        let used: HashSet<(EndpointId, IpAddr)> =
            usage.iter().filter(|u| u.ago <= window).map(|u| (u.endpoint, u.ip)).collect();
        let mut remove = Vec::new();
        orphans.keys.retain(|k| {
            let owned = cache.allows(k.endpoint).iter().any(|a| a.ip == k.ip);
            if owned || in_grace || used.contains(&(k.endpoint, k.ip)) {
                return !owned;
            }
            remove.push(*k);
            false
        });
        if !remove.is_empty() {
            tracing::info!(entries = remove.len(), "entries learned before a restart and now idle removed");
        }
        remove
    }

    /// Every learned allow key (for reconciling the datapath at start).
    pub fn all_allows(&self) -> Vec<AllowKey> {
        let cache = self.lock();
        self.all_allows_locked(&cache).collect()
    }

    fn all_allows_locked<'c>(&self, cache: &'c Cache) -> impl Iterator<Item = AllowKey> + 'c {
        let ids: Vec<EndpointId> = self.names.lock().unwrap_or_else(PoisonError::into_inner).keys().copied().collect();
        ids.into_iter().flat_map(|id| cache.allows(id))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ebpf_redirect::MemoryDatapath;
    use fqdn_cache::{LastUsed, PortProto};

    use super::*;

    fn key(ip: &str) -> AllowKey {
        AllowKey { endpoint: EndpointId(7), ip: ip.parse().unwrap(), port: PortProto::ANY }
    }

    /// Entries the kernel kept through a crash, unknown to the (empty) restored cache: kept through
    /// the restart grace, then kept only while used; removed when idle.
    #[tokio::test]
    async fn orphans_expire_when_idle_after_the_grace() {
        let state = tempfile::tempdir().unwrap();
        let dp = Arc::new(MemoryDatapath::new());
        let (used, idle) = (key("192.0.2.1"), key("192.0.2.2"));
        dp.apply(Delta { add: vec![used, idle], remove: vec![] }).await.unwrap();
        let handle = CacheHandle::open(CacheConfig::default(), state.path(), dp.clone());
        assert_eq!(handle.adopt_orphans(), 2);

        let start = handle.orphans.lock().unwrap().adopted;
        let usage = |ago: Duration| vec![LastUsed { endpoint: used.endpoint, ip: used.ip, ago }];
        let cache = handle.lock();
        // Within the grace nothing goes, used or not.
        assert!(handle.expire_orphans(&cache, start + Duration::from_secs(1), &[]).is_empty());
        // After it: the idle one goes; the one used since the previous pass stays.
        let after = start + ORPHAN_GRACE + Duration::from_secs(1);
        assert_eq!(handle.expire_orphans(&cache, after, &usage(Duration::from_millis(10))), vec![idle]);
        // Unused since before the previous pass (5 s ago): it goes too, once.
        let later = after + Duration::from_secs(5);
        assert_eq!(handle.expire_orphans(&cache, later, &usage(Duration::from_secs(6))), vec![used]);
        assert!(handle.expire_orphans(&cache, later + Duration::from_secs(1), &[]).is_empty());
    }

    /// An orphan re-learned by the cache is the cache's again: never removed as an orphan.
    #[tokio::test]
    async fn relearned_orphan_is_handed_back_to_the_cache() {
        let state = tempfile::tempdir().unwrap();
        let dp = Arc::new(MemoryDatapath::new());
        let k = key("192.0.2.9");
        dp.apply(Delta { add: vec![k], remove: vec![] }).await.unwrap();
        let handle = CacheHandle::open(CacheConfig::default(), state.path(), dp.clone());
        handle.names.lock().unwrap().insert(k.endpoint, EndpointKey { namespace: "default".into(), name: "a".into() });
        {
            let mut cache = handle.lock();
            let rule = SelectorRule {
                pattern: fqdn_cache::pattern::NamePattern::match_pattern("*.example").unwrap(),
                ports: vec![],
            };
            let _ = cache.set_selectors(k.endpoint, vec![rule]);
        }
        assert_eq!(handle.adopt_orphans(), 1);
        let answer =
            Answer { endpoint: k.endpoint, qname: "www.example.".into(), cnames: vec![], ips: vec![k.ip], ttl: 300 };
        let _ = Learner::learn(&handle, &answer);
        let start = handle.orphans.lock().unwrap().adopted;
        let cache = handle.lock();
        assert!(handle.expire_orphans(&cache, start + ORPHAN_GRACE + Duration::from_secs(1), &[]).is_empty());
        assert!(handle.orphans.lock().unwrap().keys.is_empty());
    }
}
