//! Each endpoint's quota of learned entries (`--max-learned-per-endpoint`): one pod resolving
//! name after name can fill only its own share of the cache and of the node's allow maps. At its
//! quota, an endpoint's own oldest idle entries make room (never another endpoint's): the ones
//! whose last activity (the latest lookup that returned them, or the latest use the datapath
//! reported) is oldest, the earliest looked up among equals. Each endpoint's entries are kept in
//! the order they would go (a heap, maintained lazily), so making room costs a few heap
//! operations.

use foldhash::HashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;

use super::store::Store;
use crate::EndpointId;

/// A candidate for eviction: (activity, sequence, entry index), least first.
type Candidate = Reverse<(u32, u64, u32)>;

#[derive(Default)]
pub(super) struct Quota {
    owned: HashMap<EndpointId, Owned>,
    sequence: u64,
    /// The last use of (endpoint, IP) the datapath reported, in cache seconds (the latest GC pass).
    seen: HashMap<(EndpointId, IpAddr), u32>,
}

/// One owner's entries, and the order in which they would go.
#[derive(Default)]
struct Owned {
    /// Entry index -> the sequence number of its latest lookup (the order of lookups within
    /// one cache second; slab indices are reused and say nothing).
    entries: HashMap<u32, u64>,
    /// Every lookup's candidate, least active first. A candidate is current while its sequence
    /// is its entry's latest; its activity was right when pushed and is checked again when it
    /// comes up (a datapath use since may have made it younger). Finding the victims thus costs
    /// a few heap operations, not a scan of the owner's entries under the cache lock (10,000 at
    /// the default quota, a millisecond or so, several times a second for a pod at its quota:
    /// every endpoint's answers waited meanwhile).
    heap: BinaryHeap<Candidate>,
    /// An activity went down since the heap was built (a datapath report older than the last, or
    /// none for an address that had one): a candidate can then sit behind others it should go
    /// before, so the heap is rebuilt before the next victims are taken.
    stale: bool,
}

impl Owned {
    fn rebuild(&mut self, seen: &HashMap<(EndpointId, IpAddr), u32>, owner: EndpointId, store: &Store) {
        self.heap =
            self.entries.iter().map(|(&idx, &seq)| Reverse((activity(seen, owner, idx, store), seq, idx))).collect();
        self.stale = false;
    }
}

impl Quota {
    /// A lookup returned the entry (new, or again); its `looked_up` second is already set.
    pub(super) fn looked_up(&mut self, owner: EndpointId, idx: u32, store: &Store) {
        self.sequence += 1;
        let seq = self.sequence;
        let owned = self.owned.entry(owner).or_default();
        owned.entries.insert(idx, seq);
        let now = activity(&self.seen, owner, idx, store);
        owned.heap.push(Reverse((now, seq, idx)));
        // Candidates of earlier lookups linger until they come up: rebuilt from the entries when
        // they outnumber them, so the heap stays within a small multiple of the entries.
        if owned.heap.len() > 2 * owned.entries.len() + 1024 {
            owned.rebuild(&self.seen, owner, store);
        }
    }

    pub(super) fn remove(&mut self, owner: EndpointId, idx: u32) {
        if let Some(owned) = self.owned.get_mut(&owner) {
            owned.entries.remove(&idx);
            if owned.entries.is_empty() {
                self.owned.remove(&owner);
            }
        }
    }

    pub(super) fn held(&self, owner: EndpointId) -> usize {
        self.owned.get(&owner).map_or(0, |o| o.entries.len())
    }

    /// Remember the datapath's last-use report of a GC pass.
    pub(super) fn note_use(&mut self, used: &HashMap<(EndpointId, IpAddr), u32>) {
        // A later activity is found when its candidate comes up; an earlier one is not.
        let went_down = self.seen.iter().any(|(key, &was)| used.get(key).is_none_or(|&now| now < was));
        if went_down {
            self.owned.values_mut().for_each(|o| o.stale = true);
        }
        self.seen.clone_from(used);
    }

    /// The entries to evict so that `owner`, holding `quota` or more, has room for one more: its
    /// oldest idle (least recent activity, the earliest looked up among equals), a batch of them.
    /// The caller removes them (and with them their entries here).
    pub(super) fn victims(&mut self, owner: EndpointId, quota: usize, store: &Store) -> Vec<u32> {
        let Some(owned) = self.owned.get_mut(&owner) else { return Vec::new() };
        if owned.entries.len() < quota {
            return Vec::new();
        }
        if owned.stale {
            owned.rebuild(&self.seen, owner, store);
        }
        let batch = (quota / 64).max(1);
        let excess = owned.entries.len() + 1 - quota;
        let take = (excess + batch - 1).min(owned.entries.len());
        let mut out = Vec::with_capacity(take);
        while out.len() < take {
            let Some(Reverse((was, seq, idx))) = owned.heap.pop() else { break };
            if owned.entries.get(&idx) != Some(&seq) {
                continue; // an earlier lookup's, or of an entry gone
            }
            let now = activity(&self.seen, owner, idx, store);
            if now != was {
                // Used since it was pushed: back in at its place.
                owned.heap.push(Reverse((now, seq, idx)));
                continue;
            }
            out.push(idx);
        }
        out
    }
}

/// An entry's latest activity: its latest lookup or the latest use the datapath reported.
fn activity(seen: &HashMap<(EndpointId, IpAddr), u32>, owner: EndpointId, idx: u32, store: &Store) -> u32 {
    let e = store.get(idx);
    seen.get(&(owner, e.ip)).copied().unwrap_or(0).max(e.looked_up)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const OWNER: EndpointId = EndpointId(1);

    /// What the victims were before the heap: every entry of the owner scanned, least active
    /// (then earliest looked up) first.
    fn by_scan(q: &Quota, quota: usize, store: &Store) -> Vec<u32> {
        let Some(owned) = q.owned.get(&OWNER) else { return Vec::new() };
        if owned.entries.len() < quota {
            return Vec::new();
        }
        let batch = (quota / 64).max(1);
        let excess = owned.entries.len() + 1 - quota;
        let mut all: Vec<(u32, u64, u32)> =
            owned.entries.iter().map(|(&idx, &seq)| (activity(&q.seen, OWNER, idx, store), seq, idx)).collect();
        all.sort_unstable();
        all.truncate((excess + batch - 1).min(all.len()));
        all.into_iter().map(|(_, _, idx)| idx).collect()
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Look up (learn, or learn again) the entry of address `n`.
        Lookup(u8),
        /// The datapath reports address `n` used `ago` seconds before now.
        Used(u8, u8),
        /// One second passes.
        Tick,
        /// Make room for one more at quota `q`, and remove the victims.
        Evict(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<u8>().prop_map(|n| Op::Lookup(n % 40)),
            1 => (any::<u8>(), 0..5u8).prop_map(|(n, ago)| Op::Used(n % 40, ago)),
            2 => Just(Op::Tick),
            2 => (1..40u8).prop_map(Op::Evict),
        ]
    }

    proptest! {
        /// The heap picks exactly the victims a full scan would, in any history of lookups,
        /// datapath uses and evictions.
        #[test]
        fn the_heap_evicts_what_a_scan_would(ops in proptest::collection::vec(op(), 1..300)) {
            let mut store = Store::default();
            let mut q = Quota::default();
            let mut now = 10u32;
            let mut idx_of: HashMap<u8, u32> = HashMap::default();
            for op in ops {
                match op {
                    Op::Lookup(n) => {
                        let idx = *idx_of.entry(n).or_insert_with(|| {
                            store.insert(OWNER, 0, IpAddr::from([10, 0, 0, n]), 1_000)
                        });
                        store.get_mut(idx).looked_up = now;
                        q.looked_up(OWNER, idx, &store);
                    }
                    Op::Used(n, ago) => {
                        let mut used = q.seen.clone();
                        used.insert((OWNER, IpAddr::from([10, 0, 0, n])), now.saturating_sub(u32::from(ago)));
                        q.note_use(&used);
                    }
                    Op::Tick => now += 1,
                    Op::Evict(quota) => {
                        let quota = usize::from(quota);
                        let mut want = by_scan(&q, quota, &store);
                        let mut got = q.victims(OWNER, quota, &store);
                        for &idx in &got {
                            q.remove(OWNER, idx);
                            store.remove(idx);
                            idx_of.retain(|_, i| *i != idx);
                        }
                        want.sort_unstable();
                        got.sort_unstable();
                        prop_assert_eq!(got, want);
                    }
                }
            }
        }
    }
}
