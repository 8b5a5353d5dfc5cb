//! Learned entries found in the datapath at start that the restored cache does not know: learned
//! after the last snapshot, before a crash. Their names are gone, but the datapath kept when each
//! runs out ([`crate::Datapath::learned_expiry`]): an orphan stays until then, whether used or
//! not, as its lookup would have kept it. An orphan stored without an expiry (by an older build)
//! gets [`ORPHAN_GRACE`] instead. Past that, orphans are zombies: kept while a connection uses
//! them, removed at the first pass that finds them idle; or handed back to the cache once
//! re-learned.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::{AllowKey, Cache, EndpointId, Expiry, LastUsed};

/// How long after a restart orphans without a stored expiry are kept whether used or not.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(10);

pub(super) struct Orphans {
    keys: BTreeSet<AllowKey>,
    /// When each orphan's lookup runs out, where the datapath stored it.
    until: HashMap<AllowKey, Instant>,
    adopted: Instant,
    last_pass: Instant,
}

impl Orphans {
    pub(super) fn new(now: Instant) -> Self {
        Orphans { keys: BTreeSet::new(), until: HashMap::new(), adopted: now, last_pass: now }
    }

    /// Take `keys` as the orphans, from now, each kept until its `expiry` (if the datapath had
    /// one). Returns how many.
    pub(super) fn adopt(&mut self, keys: impl Iterator<Item = AllowKey>, expiry: &[Expiry]) -> usize {
        self.keys = keys.collect();
        self.adopted = Instant::now();
        self.last_pass = self.adopted;
        self.until =
            expiry.iter().filter(|e| self.keys.contains(&e.key)).map(|e| (e.key, self.adopted + e.ttl)).collect();
        self.keys.len()
    }

    /// The orphans to remove in this pass: idle since the previous pass (less the grace
    /// period), and not re-learned by the cache meanwhile.
    pub(super) fn expire(&mut self, cache: &Cache, now: Instant, usage: &[LastUsed]) -> Vec<AllowKey> {
        let window = now.saturating_duration_since(self.last_pass) + cache.config().idle_grace;
        self.last_pass = now;
        if self.keys.is_empty() {
            return Vec::new();
        }
        let grace_over = now.saturating_duration_since(self.adopted) >= ORPHAN_GRACE;
        let used: HashSet<(EndpointId, IpAddr)> =
            usage.iter().filter(|u| u.ago <= window).map(|u| (u.endpoint, u.ip)).collect();
        let mut remove = Vec::new();
        let until = &mut self.until;
        self.keys.retain(|k| {
            let owned = cache.allows(k.endpoint).iter().any(|a| a.ip == k.ip);
            let alive = match until.get(k) {
                Some(t) => now < *t,
                None => !grace_over,
            };
            if owned || alive || used.contains(&(k.endpoint, k.ip)) {
                if owned {
                    until.remove(k);
                }
                return !owned;
            }
            until.remove(k);
            remove.push(*k);
            false
        });
        if !remove.is_empty() {
            tracing::info!(entries = remove.len(), "entries learned before a restart and now idle removed");
        }
        remove
    }

    #[cfg(test)]
    pub(super) fn adopted_at(&self) -> Instant {
        self.adopted
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
