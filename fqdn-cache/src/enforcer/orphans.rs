//! Learned entries found in the datapath at start that the restored cache does not know: learned
//! after the last snapshot, before a crash. They carry no name or TTL any more, so they are
//! treated as zombies: after [`ORPHAN_GRACE`] (connections idle across the restart get that long
//! to send again), kept while a connection uses them, removed at the first pass that finds them
//! idle; or handed back to the cache once re-learned.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::{AllowKey, Cache, EndpointId, LastUsed};

/// How long after a restart orphans are kept whether used or not.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(10);

pub(super) struct Orphans {
    keys: BTreeSet<AllowKey>,
    adopted: Instant,
    last_pass: Instant,
}

impl Orphans {
    pub(super) fn new(now: Instant) -> Self {
        Orphans { keys: BTreeSet::new(), adopted: now, last_pass: now }
    }

    /// Take `keys` as the orphans, from now. Returns how many.
    pub(super) fn adopt(&mut self, keys: impl Iterator<Item = AllowKey>) -> usize {
        self.keys = keys.collect();
        self.adopted = Instant::now();
        self.last_pass = self.adopted;
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
        let in_grace = now.saturating_duration_since(self.adopted) < ORPHAN_GRACE;
        let used: HashSet<(EndpointId, IpAddr)> =
            usage.iter().filter(|u| u.ago <= window).map(|u| (u.endpoint, u.ip)).collect();
        let mut remove = Vec::new();
        self.keys.retain(|k| {
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

    #[cfg(test)]
    pub(super) fn adopted_at(&self) -> Instant {
        self.adopted
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
