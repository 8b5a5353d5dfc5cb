//! Learned name/IP entries: one slab of fixed-size records threaded on two lists, the IPs of one
//! (endpoint, name) and the (endpoint, name)s of one IP. The two list heads live in hash tables
//! holding only a slab index, so an entry costs its record plus a few bytes of table.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;

use hashbrown::HashTable;

use super::names::NameId;
use crate::EndpointId;

/// No entry: the end of a list, or a field that does not apply.
pub(crate) const NIL: u32 = u32::MAX;

/// One IP learned for one name by one endpoint's lookup. Times are whole seconds since the
/// cache's epoch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub(crate) ip: IpAddr,
    /// Expired but kept because a connection still uses the IP.
    pub(crate) zombie: bool,
    pub(crate) owner: EndpointId,
    /// `NIL` marks a free slot.
    pub(crate) name: NameId,
    /// First second at which the entry is expired.
    pub(crate) expires: u32,
    /// The timer bucket holding this entry (`NIL`: none, as for zombies).
    pub(crate) scheduled: u32,
    /// Zombies: last use seen at or after expiry (`NIL`: none, kept by the grace period alone).
    pub(crate) last_used: u32,
    /// Second of the latest lookup that returned it (0 for entries restored from a snapshot).
    pub(crate) looked_up: u32,
    next_of_name: u32,
    prev_of_ip: u32,
    next_of_ip: u32,
}

pub(crate) struct Store {
    hasher: RandomState,
    entries: Vec<Entry>,
    free: Vec<u32>,
    /// (owner, name) -> first entry of its IP list.
    by_name: HashTable<u32>,
    /// ip -> first entry of its list (every owner and name).
    by_ip: HashTable<u32>,
    live: usize,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            hasher: RandomState::new(),
            entries: Vec::new(),
            free: Vec::new(),
            by_name: HashTable::new(),
            by_ip: HashTable::new(),
            live: 0,
        }
    }
}

fn name_hash(h: &RandomState, owner: EndpointId, name: NameId) -> u64 {
    h.hash_one((owner.0, name))
}

impl Store {
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    pub(crate) fn get(&self, idx: u32) -> &Entry {
        &self.entries[idx as usize]
    }

    pub(crate) fn get_mut(&mut self, idx: u32) -> &mut Entry {
        &mut self.entries[idx as usize]
    }

    /// Is `idx` a live entry (not a freed slot, not past the slab)?
    pub(crate) fn is_live(&self, idx: u32) -> bool {
        self.entries.get(idx as usize).is_some_and(|e| e.name != NIL)
    }

    fn name_head(&self, owner: EndpointId, name: NameId) -> u32 {
        let hash = name_hash(&self.hasher, owner, name);
        let entries = &self.entries;
        self.by_name
            .find(hash, |&i| entries[i as usize].owner == owner && entries[i as usize].name == name)
            .copied()
            .unwrap_or(NIL)
    }

    fn ip_head(&self, ip: IpAddr) -> u32 {
        let hash = self.hasher.hash_one(ip);
        let entries = &self.entries;
        self.by_ip.find(hash, |&i| entries[i as usize].ip == ip).copied().unwrap_or(NIL)
    }

    /// Entries of one (owner, name), newest first.
    pub(crate) fn of_name(&self, owner: EndpointId, name: NameId) -> impl Iterator<Item = u32> + '_ {
        let mut at = self.name_head(owner, name);
        std::iter::from_fn(move || {
            (at != NIL).then(|| {
                let here = at;
                at = self.entries[here as usize].next_of_name;
                here
            })
        })
    }

    /// Entries of one IP, any owner and name.
    pub(crate) fn of_ip(&self, ip: IpAddr) -> impl Iterator<Item = u32> + '_ {
        let mut at = self.ip_head(ip);
        std::iter::from_fn(move || {
            (at != NIL).then(|| {
                let here = at;
                at = self.entries[here as usize].next_of_ip;
                here
            })
        })
    }

    /// One entry per (owner, name): the head of its list.
    pub(crate) fn name_heads(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_name.iter().copied()
    }

    /// Every live entry index.
    pub(crate) fn all(&self) -> impl Iterator<Item = u32> + '_ {
        self.entries.iter().enumerate().filter(|(_, e)| e.name != NIL).map(|(i, _)| i as u32)
    }

    pub(crate) fn find(&self, owner: EndpointId, name: NameId, ip: IpAddr) -> Option<u32> {
        self.of_name(owner, name).find(|&i| self.entries[i as usize].ip == ip)
    }

    pub(crate) fn insert(&mut self, owner: EndpointId, name: NameId, ip: IpAddr, expires: u32) -> u32 {
        let entry = Entry {
            ip,
            zombie: false,
            owner,
            name,
            expires,
            scheduled: NIL,
            last_used: NIL,
            looked_up: 0,
            next_of_name: NIL,
            prev_of_ip: NIL,
            next_of_ip: NIL,
        };
        let idx = match self.free.pop() {
            Some(idx) => {
                self.entries[idx as usize] = entry;
                idx
            }
            None => {
                let idx = u32::try_from(self.entries.len()).ok().filter(|&i| i != NIL).expect("slab full");
                self.entries.push(entry);
                idx
            }
        };
        self.live += 1;

        let hasher = &self.hasher;
        let entries = &mut self.entries;
        let hash = name_hash(hasher, owner, name);
        match self.by_name.find_mut(hash, |&i| entries[i as usize].owner == owner && entries[i as usize].name == name) {
            Some(head) => {
                entries[idx as usize].next_of_name = *head;
                *head = idx;
            }
            None => {
                self.by_name.insert_unique(hash, idx, |&i| {
                    let e = &entries[i as usize];
                    name_hash(hasher, e.owner, e.name)
                });
            }
        }

        let hash = hasher.hash_one(ip);
        match self.by_ip.find_mut(hash, |&i| entries[i as usize].ip == ip) {
            Some(head) => {
                entries[idx as usize].next_of_ip = *head;
                entries[*head as usize].prev_of_ip = idx;
                *head = idx;
            }
            None => {
                self.by_ip.insert_unique(hash, idx, |&i| hasher.hash_one(entries[i as usize].ip));
            }
        }
        idx
    }

    /// Unlink and free an entry; returns it as it was.
    pub(crate) fn remove(&mut self, idx: u32) -> Entry {
        let e = self.entries[idx as usize];
        debug_assert!(e.name != NIL, "removing a free slot");

        // The name list is singly linked and short (at most --max-ips-per-name): walk it.
        let hash = name_hash(&self.hasher, e.owner, e.name);
        let entries = &mut self.entries;
        let head = self
            .by_name
            .find_entry(hash, |&i| entries[i as usize].owner == e.owner && entries[i as usize].name == e.name)
            .expect("entry's name list");
        if *head.get() == idx {
            if e.next_of_name == NIL {
                head.remove();
            } else {
                *head.into_mut() = e.next_of_name;
            }
        } else {
            let mut at = *head.get();
            while entries[at as usize].next_of_name != idx {
                at = entries[at as usize].next_of_name;
            }
            entries[at as usize].next_of_name = e.next_of_name;
        }

        // The IP list is doubly linked: a popular IP can be shared by many names and endpoints.
        if e.next_of_ip != NIL {
            entries[e.next_of_ip as usize].prev_of_ip = e.prev_of_ip;
        }
        if e.prev_of_ip != NIL {
            entries[e.prev_of_ip as usize].next_of_ip = e.next_of_ip;
        } else {
            let hash = self.hasher.hash_one(e.ip);
            let head = self.by_ip.find_entry(hash, |&i| i == idx).expect("entry's ip list");
            if e.next_of_ip == NIL {
                head.remove();
            } else {
                *head.into_mut() = e.next_of_ip;
            }
        }

        entries[idx as usize].name = NIL;
        self.free.push(idx);
        self.live -= 1;
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lists_follow_inserts_and_removes() {
        let mut s = Store::default();
        let (a, b) = (EndpointId(1), EndpointId(2));
        let e1 = s.insert(a, 7, ip("10.0.0.1"), 5);
        let e2 = s.insert(a, 7, ip("10.0.0.2"), 5);
        let e3 = s.insert(b, 7, ip("10.0.0.1"), 5);
        let e4 = s.insert(a, 8, ip("10.0.0.1"), 5);
        assert_eq!(s.of_name(a, 7).collect::<Vec<_>>(), [e2, e1]);
        assert_eq!(s.of_ip(ip("10.0.0.1")).collect::<Vec<_>>(), [e4, e3, e1]);
        assert_eq!(s.find(a, 7, ip("10.0.0.2")), Some(e2));
        assert_eq!(s.find(b, 7, ip("10.0.0.2")), None);

        for (removed, name_list, ip_list) in [
            (e3, vec![e2, e1], vec![e4, e1]), // middle of an IP list
            (e2, vec![e1], vec![e4, e1]),     // head of a name list
            (e4, vec![e1], vec![e1]),         // head of an IP list
            (e1, vec![], vec![]),             // last of both
        ] {
            s.remove(removed);
            assert!(!s.is_live(removed));
            assert_eq!(s.of_name(a, 7).collect::<Vec<_>>(), name_list, "after removing {removed}");
            assert_eq!(s.of_ip(ip("10.0.0.1")).collect::<Vec<_>>(), ip_list, "after removing {removed}");
        }
        assert_eq!((s.len(), s.name_heads().count(), s.all().count()), (0, 0, 0));
        let again = s.insert(a, 9, ip("::1"), 1);
        assert!(again <= e4, "slots are reused");
        assert_eq!(s.of_ip(ip("::1")).collect::<Vec<_>>(), [again]);
    }
}
