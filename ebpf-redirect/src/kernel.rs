//! [`AyaDatapath`]: the kernel datapath. Loads `bpf/fqdnd.bpf.c` ([`crate::loader`]), pins its
//! maps under a bpffs directory, attaches the programs to endpoints' veths with pinned TCX links
//! ([`crate::links`]), keeps the tries in step with policies and learned IPs
//! ([`crate::tries`], converged by the pure [`crate::plan`]).
//!
//! Restart: a new `AyaDatapath` on the same directory reuses the pinned maps (their contents are
//! the state), swaps its freshly loaded programs onto every pinned link, and reads its mirror of
//! the tries back from the kernel. Enforcement never stops.
//!
//! Network namespace: attaching resolves interface names and installs routes in the calling
//! thread's network namespace (the node's). Map writes do not depend on it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use aya::Ebpf;
use aya::maps::{Map, MapData, RingBuf};
use fqdn_cache::{AllowKey, Completion, Datapath, DatapathError, Delta, EndpointId, Expiry, LastUsed, PortProto};
use policy_sync::resolved::EndpointPolicy;

use crate::events::{DropEvents, monotonic_ns};
use crate::loader::MapSizes;
use crate::maps::{MAP_DROPS, OWNER_LEARNED, OWNER_STATIC, PROG_FROM_POD, PROG_TO_POD};
use crate::plan::{self, Current, Op, Wanted};
use crate::routing::PolicyRoute;
use crate::rules::{EndpointFlags, RuleKey, StaticRules, learned_rules, source_rules};
use crate::sys::{ifindex_of, ifname_of};
use crate::tries::{Trie, Tries, map_io};
use crate::{KernelError, links, loader};

/// Where the DNS proxy's transparent sockets listen. The tc program looks them up by this
/// address (a socket bound to the wildcard address matches any) and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyTarget {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub udp_port: u16,
    pub tcp_port: u16,
}

#[derive(Clone, Debug)]
pub struct AyaConfig {
    /// bpffs directory for pins (`maps/`, `links/` below it).
    pub bpffs_dir: PathBuf,
    pub proxy: ProxyTarget,
    pub route: PolicyRoute,
    /// Install the policy route at open (idempotent). Off when something else manages it.
    pub install_route: bool,
    /// Sizes of the maps the operator chooses (pins of another size are migrated).
    pub map_sizes: MapSizes,
    /// What a packet egress policy denies gets (`--deny-response`).
    pub deny_response: crate::DenyResponse,
}

impl AyaConfig {
    pub const DEFAULT_DIR: &'static str = "/sys/fs/bpf/fqdnd";

    pub fn new(proxy: ProxyTarget) -> Self {
        AyaConfig {
            bpffs_dir: PathBuf::from(Self::DEFAULT_DIR),
            proxy,
            route: PolicyRoute::default(),
            install_route: true,
            map_sizes: MapSizes::DEFAULT,
            deny_response: crate::DenyResponse::Drop,
        }
    }
}

/// One endpoint as the policies want it.
#[derive(Clone, Debug)]
pub struct DesiredEndpoint {
    pub endpoint: EndpointId,
    /// Node-side veth; `None` for an endpoint whose rules are kept but that is not attached.
    pub interface: Option<String>,
    pub flags: EndpointFlags,
    pub rules: StaticRules,
}

impl DesiredEndpoint {
    /// The endpoint under `policy`, its sources unchecked (see [`DesiredEndpoint::owning`]).
    pub fn new(endpoint: EndpointId, interface: Option<String>, policy: &EndpointPolicy) -> Self {
        DesiredEndpoint {
            endpoint,
            interface,
            flags: EndpointFlags::from_policy(policy),
            rules: StaticRules::from_policy(endpoint, policy),
        }
    }

    /// Anti-spoofing: the endpoint may only send from `ips` (its inventory addresses); packets
    /// from any other source are dropped, whatever the policy. With no addresses, nothing passes.
    /// Audit mode for this endpoint: what its policy would drop passes and is reported as
    /// audited (anti-spoofing still drops).
    pub fn audited(mut self, on: bool) -> Self {
        self.flags.audit = on;
        self
    }

    pub fn owning(mut self, ips: &[IpAddr]) -> Self {
        self.flags.check_source = true;
        self.rules.source = source_rules(self.endpoint, ips);
        self
    }
}

/// What a convergence changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub entries_added: usize,
    pub entries_removed: usize,
    pub entries_updated: usize,
    pub attached: usize,
    pub detached: usize,
    /// Desired endpoints whose interface does not exist (pod gone): rules kept, not attached.
    pub interfaces_missing: usize,
}

/// Packet counters of the tc programs, summed over CPUs, since the maps were created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// IP packets from policed endpoints.
    pub seen: u64,
    /// Passed default deny through an allow entry.
    pub allowed: u64,
    /// Dropped: default deny, no allow entry.
    pub dropped_denied: u64,
    /// Dropped: a deny rule matched.
    pub dropped_deny: u64,
    /// Handed to the DNS proxy.
    pub redirected: u64,
    /// Dropped: should have gone to the proxy, which had no socket.
    pub dropped_no_proxy: u64,
    /// Passed as replies to connections opened towards the endpoint.
    pub ct_replies: u64,
    /// Drop events lost because the ring buffer was full.
    pub events_lost: u64,
    /// Inbound connections recorded.
    pub ct_created: u64,
    /// Dropped going to the endpoint: ingress default deny, no ingress allow entry.
    pub ingress_dropped_denied: u64,
    /// Dropped going to the endpoint: an ingress deny rule matched.
    pub ingress_dropped_deny: u64,
    /// Passed ingress policy as replies to what the endpoint opened.
    pub ingress_ct_replies: u64,
    /// Dropped: the source address was not the endpoint's (anti-spoofing).
    pub dropped_spoofed: u64,
    /// Egress denials answered with a TCP RST or an ICMP port unreachable (`--deny-response
    /// reject`); also counted under their drop reason.
    pub rejected: u64,
    /// Flows audit mode let through that policy would have dropped (counted once per flow, not
    /// as drops).
    pub audited: u64,
}

/// How full one map is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapFill {
    /// Its pin name (`fqdnd_allow4`, ...): a closed set.
    pub map: &'static str,
    pub entries: usize,
    pub capacity: u32,
}

/// Who put an allow entry there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryOwners {
    pub policy: bool,
    pub learned: bool,
}

#[derive(Clone, Debug)]
struct Attachment {
    endpoint: EndpointId,
    interface: Option<String>,
}

struct Inner {
    ebpf: Ebpf,
    tries: Tries,
    /// Flags per endpoint (from its policy); written into the configuration of each attachment.
    flags: BTreeMap<EndpointId, EndpointFlags>,
    /// Attached veths by ifindex.
    attached: BTreeMap<u32, Attachment>,
    maps_dir: PathBuf,
    links_dir: PathBuf,
}

/// The eBPF datapath. Cheap to share (`Arc<AyaDatapath>`); all kernel writes are serialised.
pub struct AyaDatapath {
    inner: Mutex<Inner>,
    config: AyaConfig,
}

impl std::fmt::Debug for AyaDatapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AyaDatapath").field("config", &self.config).finish_non_exhaustive()
    }
}

impl AyaDatapath {
    /// Load (or, after a restart, reuse) everything under `config.bpffs_dir`.
    pub fn open(config: AyaConfig) -> Result<Self, KernelError> {
        let loader::Loaded { mut ebpf, maps_dir, links_dir, migrations } =
            loader::load(&config.bpffs_dir, config.map_sizes)?;
        let mut tries = Tries::take(&mut ebpf)?;
        // Before the programs are swapped onto the links: until then the old ones use the old maps.
        tries.migrate(migrations)?;
        let mut flags = BTreeMap::new();
        let mut attached = BTreeMap::new();
        for (ifindex, endpoint, f) in tries.load_mirror()? {
            flags.insert(endpoint, f);
            attached.insert(ifindex, Attachment { endpoint, interface: ifname_of(ifindex) });
        }
        let mut inner = Inner { ebpf, tries, flags, attached, maps_dir, links_dir };
        for ifindex in links::adopt(&mut inner.ebpf, &inner.links_dir)? {
            inner.detach(ifindex)?;
        }
        inner.tries.write_proxy(&config.proxy, config.route.mark, config.deny_response)?;
        if config.install_route {
            config.route.install()?;
        }
        Ok(AyaDatapath { inner: Mutex::new(inner), config })
    }

    pub fn config(&self) -> &AyaConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the mirror possibly ahead of the kernel; the
        // next convergence repairs it, so keep going rather than poisoning every later call.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Converge endpoints, their static rules, flags and attachments to `endpoints`, keeping the
    /// learned entries of the endpoints that remain (they belong to the cache) and dropping those
    /// of endpoints that are gone. The agent calls this on every policy snapshot; it is the one
    /// way endpoints are attached, changed and detached.
    pub fn sync_endpoints(&self, endpoints: &[DesiredEndpoint]) -> Result<ReconcileReport, KernelError> {
        let mut inner = self.lock();
        let keep: BTreeSet<EndpointId> = endpoints.iter().map(|e| e.endpoint).collect();
        let learned: BTreeSet<RuleKey> = inner
            .tries
            .allow
            .iter()
            .filter(|(k, owners)| **owners & OWNER_LEARNED != 0 && keep.contains(&k.endpoint))
            .map(|(k, _)| *k)
            .collect();
        inner.converge(endpoints, &learned)
    }

    /// A reader of drop events. One reader at a time: readers share the ring's consumer position.
    /// Needs a tokio runtime.
    pub fn drop_events(&self) -> Result<DropEvents, DatapathError> {
        let path = self.lock().maps_dir.join(MAP_DROPS);
        let read = |e| DatapathError::MapRead { map: MAP_DROPS.into(), source: map_io(e) };
        let data = MapData::from_pin(&path).map_err(read)?;
        let ring = RingBuf::try_from(Map::RingBuf(data)).map_err(read)?;
        DropEvents::new(ring)
    }

    pub fn counters(&self) -> Result<Counters, DatapathError> {
        let inner = self.lock();
        let read = |idx| inner.tries.counter(idx);
        Ok(Counters {
            seen: read(0)?,
            allowed: read(1)?,
            dropped_denied: read(2)?,
            dropped_deny: read(3)?,
            redirected: read(4)?,
            dropped_no_proxy: read(5)?,
            ct_replies: read(6)?,
            events_lost: read(7)?,
            ct_created: read(8)?,
            ingress_dropped_denied: read(9)?,
            ingress_dropped_deny: read(10)?,
            ingress_ct_replies: read(11)?,
            dropped_spoofed: read(12)?,
            rejected: read(13)?,
            audited: read(14)?,
        })
    }

    /// How full each trie and the endpoint table are: (map, entries, capacity). Read from the
    /// mirror, so it costs no system call. The conntrack map (LRU: it evicts by itself) is left out.
    pub fn map_fill(&self) -> Vec<MapFill> {
        let inner = self.lock();
        inner
            .tries
            .fill(inner.attached.len())
            .into_iter()
            .map(|(map, entries, capacity)| MapFill { map, entries, capacity })
            .collect()
    }

    /// The allow entries in the kernel (a copy of the mirror), with their owners.
    pub fn allow_entries(&self) -> Vec<(RuleKey, EntryOwners)> {
        self.lock()
            .tries
            .allow
            .iter()
            .map(|(k, f)| (*k, EntryOwners { policy: f & OWNER_STATIC != 0, learned: f & OWNER_LEARNED != 0 }))
            .collect()
    }

    /// Kernel ids of this process's programs (from-pod, to-pod): after a restart, the pinned links
    /// run these (`bpftool net` shows which program each link runs).
    pub fn program_ids(&self) -> Result<(u32, u32), KernelError> {
        let inner = self.lock();
        let id = |name: &'static str| -> Result<u32, KernelError> {
            let prog = inner.ebpf.program(name).ok_or(KernelError::MissingFromObject { kind: "program", name })?;
            let info = prog.info().map_err(|e| KernelError::LoadProgram { program: name, source: Box::new(e) })?;
            Ok(info.id())
        };
        Ok((id(PROG_FROM_POD)?, id(PROG_TO_POD)?))
    }

    /// Endpoints attached: node-side interface index, endpoint, interface name (`None` when the
    /// index no longer names an interface in this namespace).
    pub fn attached(&self) -> Vec<(u32, EndpointId, Option<String>)> {
        self.lock().attached.iter().map(|(i, a)| (*i, a.endpoint, a.interface.clone())).collect()
    }

    /// Remove everything: links (enforcement stops), pinned maps and the policy route. For
    /// `fqdnd uninstall` and tests; a normal exit leaves everything in place.
    pub fn uninstall(self) -> Result<(), KernelError> {
        let inner = self.inner.into_inner().unwrap_or_else(|p| p.into_inner());
        // Every pinned link, including those of interfaces no endpoint entry names any more.
        links::detach_all(&inner.links_dir)?;
        let Inner { ebpf, tries, maps_dir, links_dir, .. } = inner;
        drop((tries, ebpf));
        remove_dir_files(&maps_dir)?;
        for d in [&links_dir, &maps_dir, &self.config.bpffs_dir] {
            let _ = std::fs::remove_dir(d);
        }
        if self.config.install_route {
            self.config.route.remove()?;
        }
        Ok(())
    }
}

fn remove_dir_files(dir: &std::path::Path) -> Result<(), KernelError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(KernelError::Bpffs { path: dir.to_owned(), source }),
    };
    for entry in entries {
        let path = entry.map_err(|source| KernelError::Bpffs { path: dir.to_owned(), source })?.path();
        std::fs::remove_file(&path).map_err(|source| KernelError::Bpffs { path, source })?;
    }
    Ok(())
}

impl Inner {
    /// Plan the way from the kernel's state to `endpoints` and walk it.
    fn converge(
        &mut self,
        endpoints: &[DesiredEndpoint],
        learned: &BTreeSet<RuleKey>,
    ) -> Result<ReconcileReport, KernelError> {
        let mut missing = 0;
        let interfaces: Vec<Option<u32>> = endpoints
            .iter()
            .map(|ep| {
                let interface = ep.interface.as_deref()?;
                match ifindex_of(interface) {
                    Ok(i) => Some(i),
                    Err(e) => {
                        tracing::warn!(endpoint = %ep.endpoint, interface, error = %e, "not attaching");
                        missing += 1;
                        None
                    }
                }
            })
            .collect();
        let wanted: Vec<Wanted<'_>> = endpoints
            .iter()
            .zip(&interfaces)
            .map(|(ep, ifindex)| Wanted {
                endpoint: ep.endpoint,
                interface: ifindex.zip(ep.interface.as_deref()),
                flags: ep.flags,
                rules: &ep.rules,
            })
            .collect();
        let attached: BTreeMap<u32, EndpointId> = self.attached.iter().map(|(i, a)| (*i, a.endpoint)).collect();
        let current = Current {
            allow: &self.tries.allow,
            plain: Trie::PLAIN.map(|t| self.tries.plain(t)),
            flags: &self.flags,
            attached: &attached,
        };
        let ops = plan::plan(&current, &wanted, learned);
        let mut report = plan::report(&ops);
        report.interfaces_missing = missing;
        for op in ops {
            self.execute(op)?;
        }
        Ok(report)
    }

    fn execute(&mut self, op: Op) -> Result<(), KernelError> {
        match op {
            Op::WriteAllow { key, want, have } => self.tries.write_allow(key, want, have)?,
            Op::InsertRule { trie, key } => self.tries.insert_rule(trie, key)?,
            Op::RemoveRule { trie, key } => self.tries.remove_rule(trie, key)?,
            Op::SetFlags { endpoint, flags } => {
                let ifindexes: Vec<u32> =
                    self.attached.iter().filter(|(_, a)| a.endpoint == endpoint).map(|(i, _)| *i).collect();
                for ifindex in ifindexes {
                    self.tries.write_endpoint_cfg(ifindex, endpoint, flags)?;
                }
                self.flags.insert(endpoint, flags);
            }
            Op::ForgetFlags { endpoint } => drop(self.flags.remove(&endpoint)),
            Op::Attach { endpoint, ifindex, interface, .. } => {
                // Configuration first: the programs pass traffic of unknown interfaces.
                let flags = self.flags.get(&endpoint).copied().unwrap_or_default();
                self.tries.write_endpoint_cfg(ifindex, endpoint, flags)?;
                self.attached.insert(ifindex, Attachment { endpoint, interface: Some(interface.clone()) });
                links::ensure(&mut self.ebpf, &self.links_dir, ifindex, &interface)?;
            }
            Op::Detach { ifindex } => self.detach(ifindex)?,
        }
        Ok(())
    }

    fn detach(&mut self, ifindex: u32) -> Result<(), KernelError> {
        links::detach(&self.links_dir, ifindex)?;
        self.tries.remove_interface(ifindex)?;
        self.attached.remove(&ifindex);
        Ok(())
    }
}

impl Datapath for AyaDatapath {
    fn apply(&self, delta: Delta) -> Completion<'_, Result<(), DatapathError>> {
        // Map writes are syscalls of a few microseconds: done inline, the ack is the return.
        let result = (|| {
            let mut inner = self.lock();
            let now = monotonic_ns();
            let until = |ttl: Duration| now.saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX));
            let expires: BTreeMap<AllowKey, u64> = delta.expires.iter().map(|e| (e.key, until(e.ttl))).collect();
            for key in &delta.remove {
                for k in learned_rules(key) {
                    inner.tries.set_owner(k, OWNER_LEARNED, false)?;
                }
            }
            for key in &delta.add {
                for k in learned_rules(key) {
                    inner.tries.learn(k, expires.get(key).copied())?;
                }
            }
            let added: BTreeSet<&AllowKey> = delta.add.iter().collect();
            for (key, at) in &expires {
                if added.contains(key) {
                    continue;
                }
                for k in learned_rules(key) {
                    inner.tries.extend(k, *at)?;
                }
            }
            Ok(())
        })();
        Completion::ready(result)
    }

    fn last_used(&self) -> Result<Vec<LastUsed>, DatapathError> {
        let inner = self.lock();
        let now = monotonic_ns();
        let mut best: BTreeMap<(EndpointId, IpAddr), u64> = BTreeMap::new();
        for (key, owners) in &inner.tries.allow {
            let host = key.net.prefix_len() == key.net.max_prefix_len();
            if owners & OWNER_LEARNED == 0 || !host {
                continue;
            }
            let Some(val) = inner.tries.allow_value(key) else { continue };
            if val.last_used == 0 {
                continue;
            }
            let e = best.entry((key.endpoint, key.net.addr())).or_insert(val.last_used);
            *e = (*e).max(val.last_used);
        }
        Ok(best
            .into_iter()
            .map(|((endpoint, ip), t)| LastUsed { endpoint, ip, ago: Duration::from_nanos(now.saturating_sub(t)) })
            .collect())
    }

    fn learned_expiry(&self) -> Vec<Expiry> {
        let inner = self.lock();
        let now = monotonic_ns();
        inner
            .tries
            .expires
            .iter()
            .filter(|(k, _)| k.net.prefix_len() == k.net.max_prefix_len())
            .map(|(k, at)| Expiry {
                key: AllowKey {
                    endpoint: k.endpoint,
                    ip: k.net.addr(),
                    port: PortProto { port: k.port, proto: k.proto },
                },
                ttl: Duration::from_nanos(at.saturating_sub(now)),
            })
            .collect()
    }

    fn learned_entries(&self) -> Vec<AllowKey> {
        let inner = self.lock();
        inner
            .tries
            .allow
            .iter()
            .filter(|(k, owners)| **owners & OWNER_LEARNED != 0 && k.net.prefix_len() == k.net.max_prefix_len())
            .map(|(k, _)| AllowKey {
                endpoint: k.endpoint,
                ip: k.net.addr(),
                port: PortProto { port: k.port, proto: k.proto },
            })
            .collect()
    }
}
