//! The maps and the userspace mirror of what they hold. Every write goes to the kernel first and
//! to the mirror once it succeeded, so the mirror never claims an entry the kernel lacks; after a
//! restart [`Tries::load_mirror`] reads the kernel's state back.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

use aya::Ebpf;
use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray};
use fqdn_cache::{DatapathError, EndpointId};
use ipnet::IpNet;

use crate::maps::*;
use crate::rules::{EndpointFlags, RuleKey};
use crate::{KernelError, ProxyTarget};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trie {
    Allow,
    Deny,
    Redirect,
    IngressAllow,
    IngressDeny,
    Source,
}

impl Trie {
    /// The trie a pinned map belongs to.
    fn of_map(name: &str) -> Option<Trie> {
        std::iter::once(Trie::Allow).chain(Trie::PLAIN).find(|t| t.map_name(false) == name || t.map_name(true) == name)
    }

    /// The tries without owner bits: policy (and the endpoint inventory) is their only writer.
    pub(crate) const PLAIN: [Trie; 5] =
        [Trie::Deny, Trie::Redirect, Trie::IngressAllow, Trie::IngressDeny, Trie::Source];

    fn map_name(self, v6: bool) -> &'static str {
        match (self, v6) {
            (Trie::Allow, false) => MAP_ALLOW4,
            (Trie::Allow, true) => MAP_ALLOW6,
            (Trie::Deny, false) => MAP_DENY4,
            (Trie::Deny, true) => MAP_DENY6,
            (Trie::Redirect, false) => MAP_REDIR4,
            (Trie::Redirect, true) => MAP_REDIR6,
            (Trie::IngressAllow, false) => MAP_INGRESS4,
            (Trie::IngressAllow, true) => MAP_INGRESS6,
            (Trie::IngressDeny, false) => MAP_INGRESS_DENY4,
            (Trie::IngressDeny, true) => MAP_INGRESS_DENY6,
            (Trie::Source, false) => MAP_SRC4,
            (Trie::Source, true) => MAP_SRC6,
        }
    }
}

/// Stored expiries move in steps of at least this much (1 s: the cache's own granularity).
pub(crate) const EXPIRY_STEP_NS: u64 = 1_000_000_000;

/// Read every entry of a trie being migrated, converting its values.
fn collect<K, V: Into<RuleVal>>(
    items: impl Iterator<Item = Result<(aya::maps::lpm_trie::Key<K>, V), MapError>>,
    read: impl Fn(MapError) -> DatapathError,
) -> Result<Vec<(aya::maps::lpm_trie::Key<K>, RuleVal)>, DatapathError> {
    items.map(|item| item.map(|(k, v)| (k, v.into())).map_err(&read)).collect()
}

/// The error a map operation's failure becomes, with the errno the kernel gave.
pub(crate) fn map_io(e: MapError) -> io::Error {
    match e {
        MapError::SyscallError(s) => s.io_error,
        MapError::KeyNotFound | MapError::ElementNotFound => io::Error::from_raw_os_error(libc::ENOENT),
        other => io::Error::other(other),
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::MissingFromObject { kind: "map", name })?;
    T::try_from(map).map_err(|e| DatapathError::MapRead { map: name.into(), source: map_io(e) }.into())
}

pub(crate) struct Tries {
    allow4: LpmTrie<MapData, Key4, RuleVal>,
    allow6: LpmTrie<MapData, Key6, RuleVal>,
    deny4: LpmTrie<MapData, Key4, RuleVal>,
    deny6: LpmTrie<MapData, Key6, RuleVal>,
    redir4: LpmTrie<MapData, Key4, RuleVal>,
    redir6: LpmTrie<MapData, Key6, RuleVal>,
    ingress4: LpmTrie<MapData, Key4, RuleVal>,
    ingress6: LpmTrie<MapData, Key6, RuleVal>,
    ingress_deny4: LpmTrie<MapData, Key4, RuleVal>,
    ingress_deny6: LpmTrie<MapData, Key6, RuleVal>,
    src4: LpmTrie<MapData, Key4, RuleVal>,
    src6: LpmTrie<MapData, Key6, RuleVal>,
    endpoints: BpfHashMap<MapData, u32, EpCfg>,
    proxy: Array<MapData, ProxyCfg>,
    ct: BpfHashMap<MapData, CtKey, CtVal>,
    counters: PerCpuArray<MapData, u64>,
    capacity: BTreeMap<&'static str, u32>,
    /// Allow entries with their owner bits ([`OWNER_STATIC`], [`OWNER_LEARNED`]).
    pub(crate) allow: BTreeMap<RuleKey, u32>,
    /// Learned allow entries' stored expiry (`RuleVal::expires`), where known.
    pub(crate) expires: BTreeMap<RuleKey, u64>,
    pub(crate) deny: BTreeSet<RuleKey>,
    pub(crate) redirect: BTreeSet<RuleKey>,
    pub(crate) ingress_allow: BTreeSet<RuleKey>,
    pub(crate) ingress_deny: BTreeSet<RuleKey>,
    pub(crate) source: BTreeSet<RuleKey>,
}

impl Tries {
    /// Take the maps out of a loaded object (their pins are already in place).
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Tries, KernelError> {
        let mut capacity = BTreeMap::new();
        for (name, map) in ebpf.maps() {
            if let Some(name) = ALL_MAPS.iter().find(|n| **n == name) {
                capacity.insert(*name, map_info(map).map(|i| i.max_entries()).unwrap_or(0));
            }
        }
        Ok(Tries {
            allow4: take(ebpf, MAP_ALLOW4)?,
            allow6: take(ebpf, MAP_ALLOW6)?,
            deny4: take(ebpf, MAP_DENY4)?,
            deny6: take(ebpf, MAP_DENY6)?,
            redir4: take(ebpf, MAP_REDIR4)?,
            redir6: take(ebpf, MAP_REDIR6)?,
            ingress4: take(ebpf, MAP_INGRESS4)?,
            ingress6: take(ebpf, MAP_INGRESS6)?,
            ingress_deny4: take(ebpf, MAP_INGRESS_DENY4)?,
            ingress_deny6: take(ebpf, MAP_INGRESS_DENY6)?,
            src4: take(ebpf, MAP_SRC4)?,
            src6: take(ebpf, MAP_SRC6)?,
            endpoints: take(ebpf, MAP_ENDPOINTS)?,
            proxy: take(ebpf, MAP_PROXY)?,
            ct: take(ebpf, MAP_CT)?,
            counters: take(ebpf, MAP_COUNTERS)?,
            capacity,
            allow: BTreeMap::new(),
            expires: BTreeMap::new(),
            deny: BTreeSet::new(),
            redirect: BTreeSet::new(),
            ingress_allow: BTreeSet::new(),
            ingress_deny: BTreeSet::new(),
            source: BTreeSet::new(),
        })
    }

    /// Read the tries back into the mirror (after a restart) and return the endpoint table:
    /// ifindex -> (endpoint, flags).
    pub(crate) fn load_mirror(&mut self) -> Result<Vec<(u32, EndpointId, EndpointFlags)>, DatapathError> {
        let read_err =
            |map: &'static str| move |e: MapError| DatapathError::MapRead { map: map.into(), source: map_io(e) };
        for trie in std::iter::once(Trie::Allow).chain(Trie::PLAIN) {
            let (t4, t6) = self.pair(trie);
            let mut entries = Vec::new();
            for item in t4.iter() {
                let (k, v) = item.map_err(read_err(trie.map_name(false)))?;
                entries.extend(rule_from_key4(&k).map(|r| (r, v)));
            }
            for item in t6.iter() {
                let (k, v) = item.map_err(read_err(trie.map_name(true)))?;
                entries.extend(rule_from_key6(&k).map(|r| (r, v)));
            }
            match trie {
                Trie::Allow => {
                    for (k, v) in entries {
                        self.allow.insert(k, v.flags);
                        if v.flags & OWNER_LEARNED != 0 && v.expires != 0 {
                            self.expires.insert(k, v.expires);
                        }
                    }
                }
                plain => self.set_of(plain).extend(entries.into_iter().map(|(k, _)| k)),
            }
        }
        let mut table = Vec::new();
        for item in self.endpoints.iter() {
            let (ifindex, cfg) = item.map_err(read_err(MAP_ENDPOINTS))?;
            table.push((ifindex, EndpointId(cfg.endpoint), flags_from_bits(cfg.flags)));
        }
        Ok(table)
    }

    fn pair(&self, trie: Trie) -> (&LpmTrie<MapData, Key4, RuleVal>, &LpmTrie<MapData, Key6, RuleVal>) {
        match trie {
            Trie::Allow => (&self.allow4, &self.allow6),
            Trie::Deny => (&self.deny4, &self.deny6),
            Trie::Redirect => (&self.redir4, &self.redir6),
            Trie::IngressAllow => (&self.ingress4, &self.ingress6),
            Trie::IngressDeny => (&self.ingress_deny4, &self.ingress_deny6),
            Trie::Source => (&self.src4, &self.src6),
        }
    }

    fn pair_mut(&mut self, trie: Trie) -> (&mut LpmTrie<MapData, Key4, RuleVal>, &mut LpmTrie<MapData, Key6, RuleVal>) {
        match trie {
            Trie::Allow => (&mut self.allow4, &mut self.allow6),
            Trie::Deny => (&mut self.deny4, &mut self.deny6),
            Trie::Redirect => (&mut self.redir4, &mut self.redir6),
            Trie::IngressAllow => (&mut self.ingress4, &mut self.ingress6),
            Trie::IngressDeny => (&mut self.ingress_deny4, &mut self.ingress_deny6),
            Trie::Source => (&mut self.src4, &mut self.src6),
        }
    }

    fn full_or_write(&self, map: &'static str, entry: String, e: MapError) -> DatapathError {
        let source = map_io(e);
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::E2BIG) => DatapathError::MapFull {
                map: map.into(),
                capacity: self.capacity.get(map).copied().unwrap_or(0),
                entry,
            },
            _ => DatapathError::MapWrite { map: map.into(), source },
        }
    }

    fn trie_insert(&mut self, trie: Trie, key: &RuleKey, val: RuleVal) -> Result<(), DatapathError> {
        let (name, res) = match key.net {
            IpNet::V4(n) => (trie.map_name(false), self.pair_mut(trie).0.insert(&key4(key, n), val, 0)),
            IpNet::V6(n) => (trie.map_name(true), self.pair_mut(trie).1.insert(&key6(key, n), val, 0)),
        };
        res.map_err(|e| self.full_or_write(name, key.to_string(), e))
    }

    fn trie_remove(&mut self, trie: Trie, key: &RuleKey) -> Result<(), DatapathError> {
        let (name, res) = match key.net {
            IpNet::V4(n) => (trie.map_name(false), self.pair_mut(trie).0.remove(&key4(key, n))),
            IpNet::V6(n) => (trie.map_name(true), self.pair_mut(trie).1.remove(&key6(key, n))),
        };
        match res.map_err(map_io) {
            Ok(()) => Ok(()),
            Err(source) if source.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(source) => Err(DatapathError::MapWrite { map: name.into(), source }),
        }
    }

    /// The allow entry stored under exactly `key` (the mirror says it exists, so the
    /// longest-prefix lookup with the key's own prefix length lands on it).
    pub(crate) fn allow_value(&self, key: &RuleKey) -> Option<RuleVal> {
        match key.net {
            IpNet::V4(n) => self.allow4.get(&key4(key, n), 0).ok(),
            IpNet::V6(n) => self.allow6.get(&key6(key, n), 0).ok(),
        }
    }

    /// Write allow entry `key` with owner bits `want` (0 = delete), it currently having `have`.
    /// The last-used stamp survives owner changes, the stored expiry as long as it stays learned.
    pub(crate) fn write_allow(&mut self, key: RuleKey, want: u32, have: u32) -> Result<(), DatapathError> {
        let expires = self.expires.get(&key).copied().unwrap_or(0);
        self.write_allow_until(key, want, have, expires)
    }

    fn write_allow_until(&mut self, key: RuleKey, want: u32, have: u32, expires: u64) -> Result<(), DatapathError> {
        let stored = self.expires.get(&key).copied().unwrap_or(0);
        let expires = if want & OWNER_LEARNED != 0 { expires } else { 0 };
        if want == have && expires == stored {
            return Ok(());
        }
        if want == 0 {
            self.trie_remove(Trie::Allow, &key)?;
            self.allow.remove(&key);
            self.expires.remove(&key);
            return Ok(());
        }
        let last_used = if have == 0 { 0 } else { self.allow_value(&key).map_or(0, |v| v.last_used) };
        self.trie_insert(Trie::Allow, &key, RuleVal { last_used, flags: want, pad: 0, expires })?;
        self.allow.insert(key, want);
        if expires == 0 {
            self.expires.remove(&key);
        } else {
            self.expires.insert(key, expires);
        }
        Ok(())
    }

    /// Turn one owner bit of allow entry `key` on or off.
    pub(crate) fn set_owner(&mut self, key: RuleKey, bit: u32, on: bool) -> Result<(), DatapathError> {
        let have = self.allow.get(&key).copied().unwrap_or(0);
        let want = if on { have | bit } else { have & !bit };
        self.write_allow(key, want, have)
    }

    /// Make `key` learned (adding it if absent), running out at `expires` (monotonic ns) if that
    /// is later than what it has: one write either way.
    pub(crate) fn learn(&mut self, key: RuleKey, expires: Option<u64>) -> Result<(), DatapathError> {
        let have = self.allow.get(&key).copied().unwrap_or(0);
        let stored = self.expires.get(&key).copied().unwrap_or(0);
        let until = expires.map_or(stored, |e| e.max(stored));
        self.write_allow_until(key, have | OWNER_LEARNED, have, until)
    }

    /// A learned entry present already lasts until `expires` (monotonic ns). Written only when
    /// that is at least [`EXPIRY_STEP_NS`] later than what is stored: a name answered again and
    /// again costs one write per entry per step, not one per answer.
    pub(crate) fn extend(&mut self, key: RuleKey, expires: u64) -> Result<(), DatapathError> {
        let have = self.allow.get(&key).copied().unwrap_or(0);
        let stored = self.expires.get(&key).copied().unwrap_or(0);
        if have & OWNER_LEARNED == 0 || expires < stored.saturating_add(EXPIRY_STEP_NS) {
            return Ok(());
        }
        self.write_allow_until(key, have, have, expires)
    }

    /// Copy the entries of the pins [`crate::loader`] took away into this build's maps (after
    /// loading, before the mirror is read).
    pub(crate) fn migrate(&mut self, migrations: Vec<crate::loader::Migration>) -> Result<(), DatapathError> {
        use crate::loader::Layout;
        for m in migrations {
            let read = |e| DatapathError::MapRead { map: m.name.into(), source: map_io(e) };
            let map = Map::LpmTrie(m.old);
            let Some(trie) = Trie::of_map(m.name) else { continue };
            let mut copied = 0usize;
            if is_v6_map(m.name) {
                let entries: Vec<(aya::maps::lpm_trie::Key<Key6>, RuleVal)> = match m.layout {
                    Layout::Current => {
                        collect(LpmTrie::<MapData, Key6, RuleVal>::try_from(map).map_err(read)?.iter(), read)?
                    }
                    Layout::V1 => {
                        collect(LpmTrie::<MapData, Key6, RuleValV1>::try_from(map).map_err(read)?.iter(), read)?
                    }
                };
                for (k, v) in entries {
                    let name = trie.map_name(true);
                    let entry = rule_from_key6(&k).map_or_else(|| "an entry".to_string(), |r| r.to_string());
                    self.pair_mut(trie).1.insert(&k, v, 0).map_err(|e| self.full_or_write(name, entry, e))?;
                    copied += 1;
                }
            } else {
                let entries: Vec<(aya::maps::lpm_trie::Key<Key4>, RuleVal)> = match m.layout {
                    Layout::Current => {
                        collect(LpmTrie::<MapData, Key4, RuleVal>::try_from(map).map_err(read)?.iter(), read)?
                    }
                    Layout::V1 => {
                        collect(LpmTrie::<MapData, Key4, RuleValV1>::try_from(map).map_err(read)?.iter(), read)?
                    }
                };
                for (k, v) in entries {
                    let name = trie.map_name(false);
                    let entry = rule_from_key4(&k).map_or_else(|| "an entry".to_string(), |r| r.to_string());
                    self.pair_mut(trie).0.insert(&k, v, 0).map_err(|e| self.full_or_write(name, entry, e))?;
                    copied += 1;
                }
            }
            tracing::info!(map = m.name, entries = copied, "pinned map migrated");
        }
        Ok(())
    }

    /// Add an entry to a trie without owner bits ([`Trie::PLAIN`]: policy is their only owner).
    pub(crate) fn insert_rule(&mut self, trie: Trie, key: RuleKey) -> Result<(), DatapathError> {
        self.trie_insert(trie, &key, RuleVal { flags: OWNER_STATIC, ..Default::default() })?;
        self.set_of(trie).insert(key);
        Ok(())
    }

    pub(crate) fn remove_rule(&mut self, trie: Trie, key: RuleKey) -> Result<(), DatapathError> {
        self.trie_remove(trie, &key)?;
        self.set_of(trie).remove(&key);
        Ok(())
    }

    fn set_of(&mut self, trie: Trie) -> &mut BTreeSet<RuleKey> {
        match trie {
            Trie::Deny => &mut self.deny,
            Trie::Redirect => &mut self.redirect,
            Trie::IngressAllow => &mut self.ingress_allow,
            Trie::IngressDeny => &mut self.ingress_deny,
            Trie::Source => &mut self.source,
            Trie::Allow => unreachable!("allow entries carry owner bits: use write_allow"),
        }
    }

    /// The mirror of a trie without owner bits.
    pub(crate) fn plain(&self, trie: Trie) -> &BTreeSet<RuleKey> {
        match trie {
            Trie::Deny => &self.deny,
            Trie::Redirect => &self.redirect,
            Trie::IngressAllow => &self.ingress_allow,
            Trie::IngressDeny => &self.ingress_deny,
            Trie::Source => &self.source,
            Trie::Allow => unreachable!("allow entries carry owner bits"),
        }
    }

    pub(crate) fn write_endpoint_cfg(
        &mut self,
        ifindex: u32,
        endpoint: EndpointId,
        flags: EndpointFlags,
    ) -> Result<(), DatapathError> {
        let cfg = EpCfg { endpoint: endpoint.0, flags: flag_bits(flags) };
        self.endpoints
            .insert(ifindex, cfg, 0)
            .map_err(|e| self.full_or_write(MAP_ENDPOINTS, format!("ifindex {ifindex} -> {endpoint}"), e))
    }

    /// Forget interface `ifindex`: its endpoint entry and its inbound-connection records (which
    /// must not leak to the next veth that gets its index).
    pub(crate) fn remove_interface(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        match self.endpoints.remove(&ifindex).map_err(map_io) {
            Ok(()) => {}
            Err(source) if source.raw_os_error() == Some(libc::ENOENT) => {}
            Err(source) => return Err(DatapathError::MapWrite { map: MAP_ENDPOINTS.into(), source }),
        }
        let stale: Vec<CtKey> = self.ct.keys().filter_map(Result::ok).filter(|k| k.ifindex == ifindex).collect();
        for k in stale {
            let _ = self.ct.remove(&k);
        }
        Ok(())
    }

    pub(crate) fn write_proxy(
        &mut self,
        proxy: &ProxyTarget,
        mark: u32,
        deny: crate::DenyResponse,
    ) -> Result<(), DatapathError> {
        let cfg = ProxyCfg {
            addr4: proxy.ipv4.unwrap_or(Ipv4Addr::UNSPECIFIED).octets(),
            addr6: proxy.ipv6.unwrap_or(Ipv6Addr::UNSPECIFIED).octets(),
            udp_port: proxy.udp_port,
            tcp_port: proxy.tcp_port,
            mark,
            flags: (if proxy.ipv4.is_some() { PROXY_HAS_V4 } else { 0 })
                | (if proxy.ipv6.is_some() { PROXY_HAS_V6 } else { 0 })
                | (if deny == crate::DenyResponse::Reject { PROXY_REJECT } else { 0 }),
        };
        self.proxy.set(0, cfg, 0).map_err(|e| DatapathError::MapWrite { map: MAP_PROXY.into(), source: map_io(e) })
    }

    /// (map, entries, capacity) of the tries and the endpoint table, from the mirror (no map walk).
    pub(crate) fn fill(&self, endpoints: usize) -> Vec<(&'static str, usize, u32)> {
        let cap = |name: &'static str| self.capacity.get(name).copied().unwrap_or(0);
        let v6 = |k: &&RuleKey| matches!(k.net, IpNet::V6(_));
        let mut out = Vec::new();
        let allow6 = self.allow.keys().filter(v6).count();
        out.push((MAP_ALLOW4, self.allow.len() - allow6, cap(MAP_ALLOW4)));
        out.push((MAP_ALLOW6, allow6, cap(MAP_ALLOW6)));
        for trie in Trie::PLAIN {
            let set = self.plain(trie);
            let n6 = set.iter().filter(v6).count();
            out.push((trie.map_name(false), set.len() - n6, cap(trie.map_name(false))));
            out.push((trie.map_name(true), n6, cap(trie.map_name(true))));
        }
        out.push((MAP_ENDPOINTS, endpoints, cap(MAP_ENDPOINTS)));
        out
    }

    /// Counter `idx`, summed over CPUs.
    pub(crate) fn counter(&self, idx: u32) -> Result<u64, DatapathError> {
        let values = self
            .counters
            .get(&idx, 0)
            .map_err(|e| DatapathError::MapRead { map: MAP_COUNTERS.into(), source: map_io(e) })?;
        Ok(values.iter().sum())
    }
}

fn map_info(map: &Map) -> Option<aya::maps::MapInfo> {
    let data = match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::RingBuf(d) => d,
        _ => return None,
    };
    data.info().ok()
}
