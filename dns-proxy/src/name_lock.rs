//! Per-name serialization of learn + datapath update: a later answer for a name must not be
//! released while an earlier answer's update for that name (or a CNAME target it shares) is still
//! on its way to the kernel, or the client could connect before the entry exists.
//!
//! A fixed array of shards hashed by name, the held guards in an inline vector: no allocation per
//! answer of up to four names, and two names sharing a shard only wait for each other. Several names are locked in shard order, so two answers never deadlock.

use std::hash::BuildHasher;

use smallvec::SmallVec;
use tokio::sync::{Mutex, MutexGuard};

const SHARDS: usize = 1024;

/// Names an answer usually has (its question and a CNAME or two) kept without a heap allocation.
const INLINE: usize = 4;

/// The guards of one [`NameLocks::lock`]: every name stays locked until this drops.
pub type NameGuards<'a> = SmallVec<[MutexGuard<'a, ()>; INLINE]>;

pub struct NameLocks {
    shards: Box<[Mutex<()>]>,
    hasher: foldhash::fast::RandomState,
}

impl Default for NameLocks {
    fn default() -> Self {
        NameLocks { shards: (0..SHARDS).map(|_| Mutex::new(())).collect(), hasher: Default::default() }
    }
}

impl std::fmt::Debug for NameLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameLocks").field("shards", &self.shards.len()).finish()
    }
}

impl NameLocks {
    fn shard(&self, name: &str) -> usize {
        (self.hasher.hash_one(name) as usize) % self.shards.len()
    }

    /// Lock every name of `names` (normalized names); held until the guards drop.
    pub async fn lock<'a>(&'a self, names: impl Iterator<Item = &str>) -> NameGuards<'a> {
        let mut idx: SmallVec<[usize; INLINE]> = names.map(|n| self.shard(n)).collect();
        idx.sort_unstable();
        idx.dedup();
        let mut guards = NameGuards::with_capacity(idx.len());
        for i in idx {
            // Uncontended is the common case: no waiter registration then.
            let guard = match self.shards[i].try_lock() {
                Ok(g) => g,
                Err(_) => self.shards[i].lock().await,
            };
            guards.push(guard);
        }
        guards
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn same_name_waits_other_names_do_not_deadlock() {
        let locks = Arc::new(NameLocks::default());
        let held = locks.lock(["a.example.", "b.example."].into_iter()).await;
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let _g = l2.lock(["b.example.", "a.example."].into_iter()).await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "second lock of the same names must wait");
        drop(held);
        waiter.await.unwrap();
    }
}
