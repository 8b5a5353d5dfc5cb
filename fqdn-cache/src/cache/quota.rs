//! Each endpoint's quota of learned entries (`--max-learned-per-endpoint`): one pod resolving
//! name after name can fill only its own share of the cache and of the node's allow maps. At its
//! quota, an endpoint's own oldest idle entries make room (never another endpoint's): the ones
//! whose last activity (the latest lookup that returned them, or the latest use the datapath
//! reported) is oldest, the earliest looked up among equals. Room is made a few entries at a time, so a pod at its quota costs the cache lock one
//! scan of its own entries per batch, not per answer.

use foldhash::HashMap;
use std::net::IpAddr;

use super::store::Store;
use crate::EndpointId;

#[derive(Default)]
pub(super) struct Quota {
    /// Entry indices per owner, each with the sequence number of its latest lookup (the order
    /// of lookups within one cache second; slab indices are reused and say nothing).
    owned: HashMap<EndpointId, HashMap<u32, u64>>,
    sequence: u64,
    /// The last use of (endpoint, IP) the datapath reported, in cache seconds (the latest GC pass).
    seen: HashMap<(EndpointId, IpAddr), u32>,
}

impl Quota {
    /// A lookup returned the entry (new, or again).
    pub(super) fn looked_up(&mut self, owner: EndpointId, idx: u32) {
        self.sequence += 1;
        self.owned.entry(owner).or_default().insert(idx, self.sequence);
    }

    pub(super) fn remove(&mut self, owner: EndpointId, idx: u32) {
        if let Some(set) = self.owned.get_mut(&owner) {
            set.remove(&idx);
            if set.is_empty() {
                self.owned.remove(&owner);
            }
        }
    }

    pub(super) fn held(&self, owner: EndpointId) -> usize {
        self.owned.get(&owner).map_or(0, HashMap::len)
    }

    /// Remember the datapath's last-use report of a GC pass.
    pub(super) fn note_use(&mut self, used: &HashMap<(EndpointId, IpAddr), u32>) {
        self.seen.clone_from(used);
    }

    /// The entries to evict so that `owner`, holding `quota` or more, has room for one more: its
    /// oldest idle, a batch of them.
    pub(super) fn victims(&self, owner: EndpointId, quota: usize, store: &Store) -> Vec<u32> {
        let Some(set) = self.owned.get(&owner) else { return Vec::new() };
        if set.len() < quota {
            return Vec::new();
        }
        let batch = (quota / 64).max(1);
        let excess = set.len() + 1 - quota;
        let mut all: Vec<(u32, u64, u32)> = set
            .iter()
            .map(|(&idx, &seq)| {
                let e = store.get(idx);
                let used = self.seen.get(&(owner, e.ip)).copied().unwrap_or(0);
                (used.max(e.looked_up), seq, idx)
            })
            .collect();
        let take = (excess + batch - 1).min(all.len());
        all.select_nth_unstable(take.saturating_sub(1));
        all.truncate(take);
        all.into_iter().map(|(_, _, idx)| idx).collect()
    }
}
