//! An in-memory datapath: holds the allow entries in a set. Plain mode runs on it (DNS rules are
//! enforced by the proxy, nothing in the kernel); tests use it to see what fqdnd would have
//! written to the kernel, and to delay acks.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Completion, Datapath, DatapathError};
use crate::{AllowKey, Delta, EndpointId, Expiry, LastUsed};

#[derive(Debug, Default)]
pub struct MemoryDatapath {
    entries: Mutex<BTreeSet<AllowKey>>,
    /// When each entry runs out, as the deltas said (never shortened).
    expiry: Mutex<HashMap<AllowKey, Instant>>,
    used: Mutex<HashMap<(EndpointId, IpAddr), Instant>>,
    ack_delay: Mutex<Duration>,
    applied: Mutex<u64>,
}

impl MemoryDatapath {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every later `apply` waits this long before acknowledging.
    pub fn set_ack_delay(&self, delay: Duration) {
        *self.ack_delay.lock().unwrap() = delay;
    }

    pub fn entries(&self) -> BTreeSet<AllowKey> {
        self.entries.lock().unwrap().clone()
    }

    pub fn contains(&self, endpoint: EndpointId, ip: IpAddr) -> bool {
        self.entries.lock().unwrap().iter().any(|k| k.endpoint == endpoint && k.ip == ip)
    }

    /// How many deltas were fully applied.
    pub fn applied(&self) -> u64 {
        *self.applied.lock().unwrap()
    }

    /// Record traffic to `ip` from `endpoint` now, as the kernel program would.
    pub fn touch(&self, endpoint: EndpointId, ip: IpAddr) {
        self.used.lock().unwrap().insert((endpoint, ip), Instant::now());
    }
}

impl MemoryDatapath {
    fn apply_now(&self, delta: &Delta) {
        let now = Instant::now();
        {
            let mut entries = self.entries.lock().unwrap();
            let mut expiry = self.expiry.lock().unwrap();
            for key in &delta.remove {
                entries.remove(key);
                expiry.remove(key);
            }
            entries.extend(delta.add.iter().copied());
            for e in delta.expires.iter().filter(|e| entries.contains(&e.key)) {
                let at = expiry.entry(e.key).or_insert(now + e.ttl);
                *at = (*at).max(now + e.ttl);
            }
        }
        *self.applied.lock().unwrap() += 1;
    }
}

impl Datapath for MemoryDatapath {
    fn apply(&self, delta: Delta) -> Completion<'_, Result<(), DatapathError>> {
        let delay = *self.ack_delay.lock().unwrap();
        if delay.is_zero() {
            self.apply_now(&delta);
            return Completion::ready(Ok(()));
        }
        Completion::later(async move {
            tokio::time::sleep(delay).await;
            self.apply_now(&delta);
            Ok(())
        })
    }

    fn last_used(&self) -> Result<Vec<LastUsed>, DatapathError> {
        let now = Instant::now();
        Ok(self
            .used
            .lock()
            .unwrap()
            .iter()
            .map(|(&(endpoint, ip), &t)| LastUsed { endpoint, ip, ago: now - t })
            .collect())
    }

    fn learned_entries(&self) -> Vec<AllowKey> {
        self.entries().into_iter().collect()
    }

    fn learned_expiry(&self) -> Vec<Expiry> {
        let now = Instant::now();
        let mut out: Vec<Expiry> = self
            .expiry
            .lock()
            .unwrap()
            .iter()
            .map(|(key, at)| Expiry { key: *key, ttl: at.saturating_duration_since(now) })
            .collect();
        out.sort_unstable();
        out
    }
}
