//! What fqdnd learned from DNS answers, per endpoint, and the IPs the toFQDNs selectors in force
//! allow because of it.
//!
//! Every entry is one IP learned for one name by one endpoint's lookup (the endpoint's own
//! cache). With [`Scope::Endpoint`] (the default) an endpoint's selectors see only its own
//! entries; with [`Scope::Node`] they see every endpoint's (the node view, Cilium's behaviour).
//! The allow set of an endpoint is counted: each (selector, entry) pair granting an (IP, port)
//! holds one reference, so an IP shared by two names stays allowed until both are gone, and every
//! change comes back as a [`Delta`] for the datapath.
//!
//! Time is passed in, never read: `now: Instant` for ages and expiry, `SystemTime` only where a
//! wall clock is shown or stored. Expiry has whole-second granularity, rounded so that an entry
//! never expires before its TTL has run out.
//!
//! Snapshots identify endpoints by [`EndpointId`]; the agent keeps those ids stable across
//! restarts (assigned by namespace/name), or the restored entries land on the wrong endpoints.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::{HashMap, HashMapExt as _};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::pattern::NamePattern;
use crate::{AllowKey, Answer, Delta, EndpointId, Expiry, LastUsed, PortProto, normalized_name};

mod names;
mod quota;
mod selectors;
mod snapshot;
mod store;

pub use selectors::SelectorRule;
pub use snapshot::{SNAPSHOT_VERSION, set_aside};

use names::Names;
use quota::Quota;
use selectors::{EndpointRules, Selectors};
use store::{NIL, Store};

/// Whose lookups an endpoint's selectors see.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Only the endpoint's own lookups (`--fqdn-scope endpoint`).
    #[default]
    Endpoint,
    /// Every endpoint's lookups on the node (`--fqdn-scope node`, Cilium's behaviour).
    Node,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Endpoint => "endpoint",
            Scope::Node => "node",
        })
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "endpoint" => Ok(Scope::Endpoint),
            "node" => Ok(Scope::Node),
            other => Err(format!("fqdn scope {other:?} is neither \"endpoint\" nor \"node\"")),
        }
    }
}

/// The default `--max-ttl`: one day.
pub const DEFAULT_MAX_TTL: u32 = 86_400;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    /// `--min-ttl`: floor on every answer's TTL, in seconds.
    pub min_ttl: u32,
    /// `--max-ttl`: ceiling on every answer's TTL, in seconds, applied after the floor, when
    /// learning and when restoring a snapshot: an answer claiming 2^32-1 s is kept a day, not
    /// until 2163. 0 counts as 1.
    pub max_ttl: u32,
    /// `--max-ips-per-name`: IPs kept per name and endpoint; the earliest-expiring goes first.
    /// 0 counts as 1.
    pub max_ips_per_name: usize,
    /// `--fqdn-scope`.
    pub scope: Scope,
    /// `--idle-connection-grace-period`: how long before expiry (or before the previous GC
    /// pass, for zombies) a use still counts as a live connection.
    pub idle_grace: Duration,
    /// `--max-zombies`: per endpoint; never-used zombies are evicted first, then the oldest.
    pub max_zombies: usize,
    /// `--max-learned-per-endpoint`: name/IP entries one endpoint's lookups may hold (zombies
    /// included); at it, its own oldest idle entries make room. 0 counts as 1.
    #[serde(default = "default_max_learned")]
    pub max_learned_per_endpoint: usize,
}

fn default_max_learned() -> usize {
    CacheConfig::DEFAULT_MAX_LEARNED
}

impl CacheConfig {
    pub const DEFAULT_MAX_LEARNED: usize = 10_000;
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            min_ttl: 0,
            max_ttl: DEFAULT_MAX_TTL,
            max_ips_per_name: 1000,
            scope: Scope::Endpoint,
            idle_grace: Duration::ZERO,
            max_zombies: 10_000,
            max_learned_per_endpoint: CacheConfig::DEFAULT_MAX_LEARNED,
        }
    }
}

/// Where a listed entry comes from: a DNS answer still within its TTL, or an expired one kept
/// because a connection uses it (a zombie).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Lookup,
    Connection,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Lookup => "lookup",
            Source::Connection => "connection",
        })
    }
}

/// One row of `fqdnd cache list`: the IPs of one name for one endpoint that share an expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryView {
    pub endpoint: EndpointId,
    pub source: Source,
    pub fqdn: String,
    /// Seconds left before expiry (0 for zombies).
    pub ttl: u32,
    /// Expiry, in seconds since the Unix epoch (in the past for zombies).
    pub expires_unix: i64,
    pub ips: Vec<IpAddr>,
}

/// Which entries [`Cache::list`] shows.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub endpoint: Option<EndpointId>,
    pub pattern: Option<NamePattern>,
}

/// Gauges and counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheCounters {
    /// Name/IP entries held, zombies included.
    pub entries: u64,
    /// Distinct names held.
    pub names: u64,
    /// Zombies held.
    pub zombies: u64,
    /// Distinct toFQDNs patterns in force.
    pub selectors: u64,
    /// Entries dropped to respect `max_ips_per_name` (total since start).
    pub evictions: u64,
    /// Zombies dropped to respect `max_zombies` (total since start).
    pub zombie_evictions: u64,
    /// Entries removed at expiry, zombies included when their connection went idle (total).
    pub expirations: u64,
    /// Entries an endpoint's own newer lookups evicted at its `max_learned_per_endpoint` (total).
    #[serde(default)]
    pub quota_evictions: u64,
}

/// The cache: per-endpoint learned names, the selector index and the allow sets they produce.
pub struct Cache {
    config: CacheConfig,
    /// Second 0 of the entries' clock.
    epoch: Instant,
    /// Second of the previous GC pass.
    last_gc: u32,
    names: Names,
    store: Store,
    /// Expiry second -> entries to look at then. An entry sits in one bucket (its `scheduled`);
    /// a refresh that pushes its expiry later leaves it there and the pass re-files it.
    timers: BTreeMap<u32, Vec<u32>>,
    selectors: Selectors,
    /// endpoint -> (ip, port) -> number of (selector, entry) pairs granting it.
    grants: HashMap<EndpointId, HashMap<(IpAddr, PortProto), u32>>,
    /// Zombie entry indices; may hold stale ones (revived or removed), cleaned each pass.
    zombies: Vec<u32>,
    zombie_count: usize,
    evictions: u64,
    zombie_evictions: u64,
    expirations: u64,
    quota: Quota,
    quota_evictions: u64,
}

/// Allow-set changes of one operation, netted: a key removed and re-added (or the reverse)
/// within it does not reach the datapath.
#[derive(Default)]
struct Changes {
    net: HashMap<AllowKey, i32>,
    /// The latest expiry (cache second) of the lookups granting a key, where this operation
    /// granted it or made one of its lookups last longer.
    expiry: HashMap<AllowKey, u32>,
}

impl Changes {
    fn add(&mut self, key: AllowKey) {
        *self.net.entry(key).or_default() += 1;
    }

    fn remove(&mut self, key: AllowKey) {
        *self.net.entry(key).or_default() -= 1;
    }

    fn expires(&mut self, key: AllowKey, second: u32) {
        let e = self.expiry.entry(key).or_insert(second);
        *e = (*e).max(second);
    }

    /// The delta, expiries counted from cache second `now_s`.
    fn finish(self, now_s: u32) -> Delta {
        let mut delta = Delta::default();
        for (key, n) in &self.net {
            match n {
                1 => delta.add.push(*key),
                -1 => delta.remove.push(*key),
                0 => {}
                _ => unreachable!("allow key {key:?} changed {n} times in one direction"),
            }
        }
        delta.add.sort_unstable();
        delta.remove.sort_unstable();
        delta.expires = self
            .expiry
            .into_iter()
            .filter(|(key, _)| self.net.get(key).is_none_or(|&n| n >= 0))
            .map(|(key, second)| Expiry { key, ttl: Duration::from_secs(u64::from(second.saturating_sub(now_s))) })
            .collect();
        delta.expires.sort_unstable();
        delta
    }
}

/// Seconds the cache clock can count to; `NIL` stays free as "none".
const MAX_SECS: u32 = NIL - 1;

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Cache {
    /// An empty cache whose clock starts at `now`.
    pub fn new(config: CacheConfig, now: Instant) -> Cache {
        Cache {
            config,
            epoch: now,
            last_gc: 0,
            names: Names::default(),
            store: Store::default(),
            timers: BTreeMap::new(),
            selectors: Selectors::default(),
            grants: HashMap::new(),
            zombies: Vec::new(),
            zombie_count: 0,
            evictions: 0,
            zombie_evictions: 0,
            expirations: 0,
            quota: Quota::default(),
            quota_evictions: 0,
        }
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// An answer's TTL after `--min-ttl` and `--max-ttl` (the ceiling wins).
    fn effective_ttl(&self, ttl: u32) -> u32 {
        ttl.max(self.config.min_ttl).min(self.config.max_ttl.max(1))
    }

    fn secs(&self, t: Instant) -> u32 {
        t.saturating_duration_since(self.epoch).as_secs().min(u64::from(MAX_SECS)) as u32
    }

    fn secs_ceil(&self, t: Instant) -> u32 {
        ceil_secs(t.saturating_duration_since(self.epoch)).min(u64::from(MAX_SECS)) as u32
    }

    fn instant_of(&self, secs: u32) -> Instant {
        self.epoch + Duration::from_secs(u64::from(secs))
    }

    /// Wall-clock seconds since the Unix epoch of cache second `secs`, given the clocks now.
    fn unix_of(&self, secs: u32, now: Instant, now_wall: SystemTime) -> i64 {
        let now_unix = match now_wall.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        let at = self.instant_of(secs);
        let offset = match at.checked_duration_since(now) {
            Some(ahead) => ahead.as_secs_f64(),
            None => -now.duration_since(at).as_secs_f64(),
        };
        (now_unix + offset).round() as i64
    }

    /// Replace the toFQDNs selectors of `endpoint` (empty: none) and re-derive its allow set
    /// from what is cached, without DNS traffic. Returns the difference.
    pub fn set_selectors(&mut self, endpoint: EndpointId, rules: Vec<SelectorRule>) -> Delta {
        self.set_selectors_many([(endpoint, rules)])
    }

    /// [`Cache::set_selectors`] for many endpoints at once (a policy change, the agent's start):
    /// the node-wide selector index is recompiled once, not once per endpoint.
    pub fn set_selectors_many(&mut self, changes: impl IntoIterator<Item = (EndpointId, Vec<SelectorRule>)>) -> Delta {
        let mut endpoints = BTreeSet::new();
        for (endpoint, rules) in changes {
            self.selectors.set(endpoint, rules);
            endpoints.insert(endpoint);
        }
        self.selectors.build();
        let mut delta = Delta::default();
        for endpoint in endpoints {
            delta.extend(self.rederive(endpoint));
        }
        delta
    }

    /// Recount one endpoint's allow set from its rules and the cache.
    fn rederive(&mut self, endpoint: EndpointId) -> Delta {
        let before: BTreeSet<(IpAddr, PortProto)> =
            self.grants.get(&endpoint).map(|m| m.keys().copied().collect()).unwrap_or_default();
        let rules = EndpointRules::new(self.selectors.rules(endpoint));
        let mut counts: HashMap<(IpAddr, PortProto), u32> = HashMap::new();
        let mut latest: HashMap<(IpAddr, PortProto), u32> = HashMap::new();
        if !rules.is_empty() {
            let (mut scratch, mut ports) = (Vec::new(), Vec::new());
            // In node scope the same name recurs under many owners: match it once.
            let mut memo: HashMap<u32, Vec<PortProto>> = HashMap::new();
            for head in self.store.name_heads() {
                let h = *self.store.get(head);
                if self.config.scope == Scope::Endpoint && h.owner != endpoint {
                    continue;
                }
                let ports = match self.config.scope {
                    Scope::Endpoint => {
                        rules.ports_for(self.names.text(h.name), &mut scratch, &mut ports);
                        &ports
                    }
                    Scope::Node => memo.entry(h.name).or_insert_with(|| {
                        let mut out = Vec::new();
                        rules.ports_for(self.names.text(h.name), &mut scratch, &mut out);
                        out
                    }),
                };
                if ports.is_empty() {
                    continue;
                }
                for idx in self.store.of_name(h.owner, h.name) {
                    let e = self.store.get(idx);
                    for &port in ports.iter() {
                        *counts.entry((e.ip, port)).or_default() += 1;
                        let t = latest.entry((e.ip, port)).or_default();
                        *t = (*t).max(e.expires);
                    }
                }
            }
        }
        let after: BTreeSet<(IpAddr, PortProto)> = counts.keys().copied().collect();
        if counts.is_empty() {
            self.grants.remove(&endpoint);
        } else {
            self.grants.insert(endpoint, counts);
        }
        let key = |&(ip, port): &(IpAddr, PortProto)| AllowKey { endpoint, ip, port };
        let add: Vec<AllowKey> = after.difference(&before).map(key).collect();
        let now_s = self.last_gc;
        let expires = add
            .iter()
            .map(|k| {
                let second = latest.get(&(k.ip, k.port)).copied().unwrap_or(now_s);
                Expiry { key: *k, ttl: Duration::from_secs(u64::from(second.saturating_sub(now_s))) }
            })
            .collect();
        Delta { add, remove: before.difference(&after).map(key).collect(), expires }
    }

    /// Record an answer: the question name and every CNAME in its chain map to the answer's IPs
    /// until `now` + the TTL within `[min TTL, max TTL]`. Returns the IPs this newly allows (and, if the per-name
    /// cap evicted something still in use, what it no longer allows).
    pub fn learn(&mut self, answer: &Answer, now: Instant) -> Delta {
        let owner = answer.endpoint;
        let ttl = self.effective_ttl(answer.ttl);
        let expires = self.secs_ceil(now).saturating_add(ttl).min(MAX_SECS);
        let mut ips = answer.ips.clone();
        ips.sort_unstable();
        ips.dedup();
        let mut changes = Changes::default();
        let now_s = self.secs(now);
        for name in std::iter::once(&answer.qname).chain(&answer.cnames) {
            let name = normalized_name(name);
            self.learn_name(owner, &name, &ips, expires, now_s, &mut changes);
        }
        changes.finish(now_s)
    }

    fn learn_name(
        &mut self,
        owner: EndpointId,
        name: &str,
        ips: &[IpAddr],
        expires: u32,
        now_s: u32,
        changes: &mut Changes,
    ) {
        let known = self.names.get(name);
        for &ip in ips {
            if let Some(id) = known
                && let Some(idx) = self.store.find(owner, id, ip)
            {
                // Never shorten: the client may hold the earlier answer for its full TTL.
                self.store.get_mut(idx).looked_up = now_s;
                self.quota.looked_up(owner, idx, &self.store);
                let e = self.store.get_mut(idx);
                let longer = expires > e.expires;
                e.expires = e.expires.max(expires);
                if e.zombie {
                    e.zombie = false;
                    e.last_used = NIL;
                    self.zombie_count -= 1;
                    self.schedule(idx);
                }
                if longer {
                    self.extend(idx, changes);
                }
                continue;
            }
            let id = self.names.acquire(name);
            self.make_room(owner, id, changes);
            self.make_quota_room(owner, changes);
            let idx = self.store.insert(owner, id, ip, expires);
            self.store.get_mut(idx).looked_up = now_s;
            self.quota.looked_up(owner, idx, &self.store);
            self.schedule(idx);
            self.grant(idx, true, changes);
        }
    }

    /// Evict the earliest-expiring IPs of (owner, name) until one more fits.
    fn make_room(&mut self, owner: EndpointId, name: u32, changes: &mut Changes) {
        let cap = self.config.max_ips_per_name.max(1);
        let mut held: Vec<(u32, u32)> =
            self.store.of_name(owner, name).map(|i| (self.store.get(i).expires, i)).collect();
        if held.len() < cap {
            return;
        }
        held.sort_unstable();
        let excess = held.len() + 1 - cap;
        for &(_, idx) in &held[..excess] {
            self.remove_entry(idx, changes);
            self.evictions += 1;
        }
    }

    /// At its quota, the owner's own oldest idle entries go to make room for one more.
    fn make_quota_room(&mut self, owner: EndpointId, changes: &mut Changes) {
        let quota = self.config.max_learned_per_endpoint.max(1);
        for idx in self.quota.victims(owner, quota, &self.store) {
            self.remove_entry(idx, changes);
            self.quota_evictions += 1;
        }
    }

    fn schedule(&mut self, idx: u32) {
        let e = self.store.get_mut(idx);
        e.scheduled = e.expires;
        self.timers.entry(e.expires).or_default().push(idx);
    }

    /// The entry's lookup now lasts longer: so do the allows it grants.
    fn extend(&mut self, idx: u32, changes: &mut Changes) {
        let e = *self.store.get(idx);
        let only = (self.config.scope == Scope::Endpoint).then_some(e.owner);
        self.selectors.grants(self.names.text(e.name), only, |endpoint, port| {
            changes.expires(AllowKey { endpoint, ip: e.ip, port }, e.expires);
        });
    }

    /// Count (or uncount) every allow the entry grants, recording keys that appear or vanish.
    fn grant(&mut self, idx: u32, add: bool, changes: &mut Changes) {
        let e = *self.store.get(idx);
        let only = (self.config.scope == Scope::Endpoint).then_some(e.owner);
        let grants = &mut self.grants;
        self.selectors.grants(self.names.text(e.name), only, |endpoint, port| {
            let key = AllowKey { endpoint, ip: e.ip, port };
            if add {
                let n = grants.entry(endpoint).or_default().entry((e.ip, port)).or_default();
                *n += 1;
                changes.expires(key, e.expires);
                if *n == 1 {
                    changes.add(key);
                }
            } else if let Some(held) = grants.get_mut(&endpoint)
                && let Some(n) = held.get_mut(&(e.ip, port))
            {
                *n -= 1;
                if *n == 0 {
                    held.remove(&(e.ip, port));
                    if held.is_empty() {
                        grants.remove(&endpoint);
                    }
                    changes.remove(key);
                }
            } else {
                debug_assert!(false, "ungranting {key:?}, which was never granted");
            }
        });
    }

    fn remove_entry(&mut self, idx: u32, changes: &mut Changes) {
        self.grant(idx, false, changes);
        let e = self.store.remove(idx);
        self.quota.remove(e.owner, idx);
        if e.zombie {
            self.zombie_count -= 1;
        }
        self.names.release(e.name);
    }

    /// When the datapath last saw a connection to the entry's IP from an endpoint the entry
    /// allows it for (cache seconds), if ever.
    fn last_use(&mut self, idx: u32, used: &HashMap<(EndpointId, IpAddr), u32>) -> Option<u32> {
        if used.is_empty() {
            return None;
        }
        let e = *self.store.get(idx);
        let only = (self.config.scope == Scope::Endpoint).then_some(e.owner);
        let mut last = None;
        self.selectors.grants(self.names.text(e.name), only, |endpoint, _| {
            if let Some(&t) = used.get(&(endpoint, e.ip)) {
                last = last.max(Some(t));
            }
        });
        last
    }

    /// Keep an expired entry as a zombie? Yes when a connection it allows was used since it
    /// expired or since the previous pass, whichever is later, give or take the grace period.
    fn still_used(&self, idx: u32, last: Option<u32>, grace: u32) -> bool {
        let since = self.store.get(idx).expires.max(self.last_gc);
        last.is_some_and(|t| t.saturating_add(grace) >= since)
    }

    /// The timer pass: expire what is due, keep what connections still use as zombies (and
    /// re-check the zombies), cap zombies per endpoint. `usage` is the datapath's last-used
    /// report, taken at `now`. Cost follows the entries due and the zombies, not the cache size.
    pub fn gc(&mut self, now: Instant, usage: &[LastUsed]) -> Delta {
        let now_s = self.secs(now);
        let grace = ceil_secs(self.config.idle_grace).min(u64::from(MAX_SECS)) as u32;
        let mut used: HashMap<(EndpointId, IpAddr), u32> = HashMap::with_capacity(usage.len());
        for u in usage {
            let at = self.secs(now.checked_sub(u.ago).unwrap_or(self.epoch));
            let t = used.entry((u.endpoint, u.ip)).or_default();
            *t = (*t).max(at);
        }
        self.quota.note_use(&used);
        let mut changes = Changes::default();

        let mut fresh_zombies = Vec::new();
        while let Some(bucket) = self.timers.first_entry() {
            if *bucket.key() > now_s {
                break;
            }
            let (second, due) = bucket.remove_entry();
            for idx in due {
                if !self.store.is_live(idx) || self.store.get(idx).scheduled != second {
                    continue; // stale: removed, or re-filed elsewhere
                }
                self.store.get_mut(idx).scheduled = NIL;
                if self.store.get(idx).expires > now_s {
                    self.schedule(idx);
                    continue;
                }
                let last = self.last_use(idx, &used);
                if self.still_used(idx, last, grace) {
                    let e = self.store.get_mut(idx);
                    e.zombie = true;
                    e.last_used = last.filter(|&t| t >= e.expires).unwrap_or(NIL);
                    self.zombie_count += 1;
                    fresh_zombies.push(idx);
                } else {
                    self.remove_entry(idx, &mut changes);
                    self.expirations += 1;
                }
            }
        }

        let mut zombies = std::mem::take(&mut self.zombies);
        zombies.sort_unstable();
        zombies.dedup();
        zombies.retain(|&idx| self.store.is_live(idx) && self.store.get(idx).zombie);
        zombies.retain(|&idx| {
            let last = self.last_use(idx, &used);
            if self.still_used(idx, last, grace) {
                let e = self.store.get_mut(idx);
                if let Some(t) = last.filter(|&t| t >= e.expires) {
                    e.last_used = if e.last_used == NIL { t } else { e.last_used.max(t) };
                }
                true
            } else {
                self.remove_entry(idx, &mut changes);
                self.expirations += 1;
                false
            }
        });
        zombies.extend(fresh_zombies);
        self.cap_zombies(&mut zombies, &mut changes);
        self.zombies = zombies;
        self.last_gc = now_s;
        changes.finish(now_s)
    }

    fn cap_zombies(&mut self, zombies: &mut Vec<u32>, changes: &mut Changes) {
        let mut per_owner: HashMap<EndpointId, Vec<u32>> = HashMap::new();
        for &idx in zombies.iter() {
            per_owner.entry(self.store.get(idx).owner).or_default().push(idx);
        }
        let mut evicted = Vec::new();
        for (_, mut held) in per_owner {
            if held.len() <= self.config.max_zombies {
                continue;
            }
            // Never used since expiry first (NIL sorts as "no use"), then least recently used.
            held.sort_unstable_by_key(|&idx| {
                let e = self.store.get(idx);
                (e.last_used != NIL, e.last_used, e.expires, idx)
            });
            evicted.extend_from_slice(&held[..held.len() - self.config.max_zombies]);
        }
        if evicted.is_empty() {
            return;
        }
        evicted.sort_unstable();
        for &idx in &evicted {
            self.remove_entry(idx, changes);
            self.zombie_evictions += 1;
        }
        zombies.retain(|idx| evicted.binary_search(idx).is_err());
    }

    /// When the next entry is due for the timer pass (None: nothing cached is waiting).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.timers.keys().next().map(|&s| self.instant_of(s))
    }

    /// Forget an endpoint: its selectors, its allow set (all returned as removals) and its
    /// lookups (in node scope, other endpoints lose what only those lookups allowed).
    pub fn remove_endpoint(&mut self, endpoint: EndpointId) -> Delta {
        let mut changes = Changes::default();
        for (ip, port) in self.grants.remove(&endpoint).into_iter().flat_map(HashMap::into_keys) {
            changes.remove(AllowKey { endpoint, ip, port });
        }
        self.selectors.set(endpoint, Vec::new());
        self.selectors.build();
        let owned: Vec<u32> = self.store.all().filter(|&i| self.store.get(i).owner == endpoint).collect();
        for idx in owned {
            self.remove_entry(idx, &mut changes);
        }
        changes.finish(self.last_gc)
    }

    /// The endpoint's full allow set, sorted: to reconcile the datapath at start.
    pub fn allows(&self, endpoint: EndpointId) -> Vec<AllowKey> {
        let mut keys: Vec<AllowKey> = self
            .grants
            .get(&endpoint)
            .into_iter()
            .flat_map(|m| m.keys())
            .map(|&(ip, port)| AllowKey { endpoint, ip, port })
            .collect();
        keys.sort_unstable();
        keys
    }

    /// Names the endpoint's own lookups resolved to `ip` (zombies included), sorted: flow logs
    /// name a dropped destination with them.
    pub fn names_for_ip(&self, endpoint: EndpointId, ip: IpAddr) -> Vec<String> {
        let mut names: Vec<String> = self
            .store
            .of_ip(ip)
            .map(|i| self.store.get(i))
            .filter(|e| e.owner == endpoint)
            .map(|e| self.names.text(e.name).to_string())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// IPs the endpoint's own lookups hold for `name` (zombies included), sorted.
    pub fn ips_for_name(&self, endpoint: EndpointId, name: &str) -> Vec<IpAddr> {
        let Some(id) = self.names.get(&normalized_name(name)) else { return Vec::new() };
        let mut ips: Vec<IpAddr> = self.store.of_name(endpoint, id).map(|i| self.store.get(i).ip).collect();
        ips.sort_unstable();
        ips
    }

    /// Entries for `fqdnd cache list`, sorted by endpoint, name, source and expiry.
    pub fn list(&self, filter: &ListFilter, now: Instant, now_wall: SystemTime) -> Vec<EntryView> {
        let now_s = self.secs(now);
        let mut rows = Vec::new();
        for head in self.store.name_heads() {
            let h = *self.store.get(head);
            if filter.endpoint.is_some_and(|e| e != h.owner) {
                continue;
            }
            let fqdn = self.names.text(h.name);
            if filter.pattern.as_ref().is_some_and(|p| !p.matches(fqdn)) {
                continue;
            }
            let mut groups: BTreeMap<(bool, u32), Vec<IpAddr>> = BTreeMap::new();
            for idx in self.store.of_name(h.owner, h.name) {
                let e = self.store.get(idx);
                groups.entry((e.zombie, e.expires)).or_default().push(e.ip);
            }
            for ((zombie, expires), mut ips) in groups {
                ips.sort_unstable();
                rows.push(EntryView {
                    endpoint: h.owner,
                    source: if zombie { Source::Connection } else { Source::Lookup },
                    fqdn: fqdn.to_string(),
                    ttl: if zombie { 0 } else { expires.saturating_sub(now_s) },
                    expires_unix: self.unix_of(expires, now, now_wall),
                    ips,
                });
            }
        }
        rows.sort_by(|a, b| {
            (a.endpoint, &a.fqdn, a.source, a.expires_unix).cmp(&(b.endpoint, &b.fqdn, b.source, b.expires_unix))
        });
        rows
    }

    /// Entries `endpoint`'s own lookups hold (what its quota counts).
    pub fn held_by(&self, endpoint: EndpointId) -> usize {
        self.quota.held(endpoint)
    }

    pub fn counters(&self) -> CacheCounters {
        CacheCounters {
            entries: self.store.len() as u64,
            names: self.names.len() as u64,
            zombies: self.zombie_count as u64,
            selectors: self.selectors.len() as u64,
            evictions: self.evictions,
            zombie_evictions: self.zombie_evictions,
            expirations: self.expirations,
            quota_evictions: self.quota_evictions,
        }
    }
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache").field("config", &self.config).field("counters", &self.counters()).finish()
    }
}

#[cfg(test)]
mod tests;
