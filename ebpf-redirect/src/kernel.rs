//! [`AyaDatapath`]: the kernel datapath. Loads `bpf/fqdnd.bpf.c`, pins its maps under a bpffs
//! directory, attaches the programs to endpoints' veths with pinned TCX links, and keeps the
//! tries in step with policies ([`StaticRules`]) and learned IPs ([`Delta`]s).
//!
//! Restart: a new `AyaDatapath` on the same directory reuses the pinned maps (their contents are
//! the state), swaps its freshly loaded programs onto every pinned link, and reads its in-memory
//! mirror of the tries back from the kernel. Packets are judged by the old programs until the
//! swap and by the new ones after it: enforcement never stops.
//!
//! Network namespace: attaching resolves interface names and installs routes in the calling
//! thread's network namespace (the node's). Map writes do not depend on it.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use fqdn_cache::{AllowKey, Delta, EndpointId, LastUsed, PortProto};
use ipnet::IpNet;
use policy_sync::resolved::EndpointPolicy;

use crate::events::{DropEvents, monotonic_ns};
use crate::maps::*;
use crate::routing::PolicyRoute;
use crate::rules::{EndpointFlags, RuleKey, StaticRules, learned_rules};
use crate::{BoxFuture, Datapath, DatapathError, bpffs};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fqdnd.bpf.o"));

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
}

impl AyaConfig {
    pub const DEFAULT_DIR: &'static str = "/sys/fs/bpf/fqdnd";

    pub fn new(proxy: ProxyTarget) -> Self {
        AyaConfig {
            bpffs_dir: PathBuf::from(Self::DEFAULT_DIR),
            proxy,
            route: PolicyRoute::default(),
            install_route: true,
        }
    }
}

/// One endpoint as reconciliation wants it.
#[derive(Clone, Debug)]
pub struct DesiredEndpoint {
    pub endpoint: EndpointId,
    /// Node-side veth; `None` for an endpoint whose rules are kept but that is not attached.
    pub interface: Option<String>,
    pub flags: EndpointFlags,
    pub rules: StaticRules,
}

impl DesiredEndpoint {
    pub fn new(endpoint: EndpointId, interface: Option<String>, policy: &EndpointPolicy) -> Self {
        DesiredEndpoint {
            endpoint,
            interface,
            flags: EndpointFlags::from_policy(policy),
            rules: StaticRules::from_policy(endpoint, policy),
        }
    }
}

/// The complete state reconciliation converges to.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    pub endpoints: Vec<DesiredEndpoint>,
    /// Every learned allow key the cache holds.
    pub learned: Vec<AllowKey>,
}

/// What a reconciliation changed.
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

/// An endpoint as given to [`AyaDatapath::attach_endpoint`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    pub endpoint: EndpointId,
    /// The node-side end of the endpoint's veth.
    pub interface: String,
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trie {
    Allow,
    Deny,
    Redirect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    FromPod,
    ToPod,
}

impl Direction {
    const ALL: [Direction; 2] = [Direction::FromPod, Direction::ToPod];

    fn program(self) -> &'static str {
        match self {
            Direction::FromPod => PROG_FROM_POD,
            Direction::ToPod => PROG_TO_POD,
        }
    }

    /// TCX side of the node-side veth: the pod's transmissions are the veth's ingress.
    fn attach_type(self) -> TcAttachType {
        match self {
            Direction::FromPod => TcAttachType::Ingress,
            Direction::ToPod => TcAttachType::Egress,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Direction::FromPod => "ingress",
            Direction::ToPod => "egress",
        }
    }
}

#[derive(Clone, Debug)]
struct Attachment {
    endpoint: EndpointId,
    interface: Option<String>,
}

struct Inner {
    ebpf: Ebpf,
    allow4: LpmTrie<MapData, Key4, RuleVal>,
    allow6: LpmTrie<MapData, Key6, RuleVal>,
    deny4: LpmTrie<MapData, Key4, RuleVal>,
    deny6: LpmTrie<MapData, Key6, RuleVal>,
    redir4: LpmTrie<MapData, Key4, RuleVal>,
    redir6: LpmTrie<MapData, Key6, RuleVal>,
    endpoints: BpfHashMap<MapData, u32, EpCfg>,
    proxy: Array<MapData, ProxyCfg>,
    ct: BpfHashMap<MapData, CtKey, CtVal>,
    counters: PerCpuArray<MapData, u64>,
    capacity: BTreeMap<&'static str, u32>,
    /// What the tries hold: allow entries with their owner bits, deny and redirect entries.
    allow: BTreeMap<RuleKey, u32>,
    deny: BTreeSet<RuleKey>,
    redirect: BTreeSet<RuleKey>,
    /// Flags per endpoint (from its policy); written into the config of each attachment.
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

fn map_io(e: MapError) -> io::Error {
    match e {
        MapError::SyscallError(s) => s.io_error,
        MapError::KeyNotFound | MapError::ElementNotFound => io::Error::from_raw_os_error(libc::ENOENT),
        other => io::Error::other(other),
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| DatapathError::MapRead {
        map: name.into(),
        source: io::Error::new(io::ErrorKind::NotFound, "not in the eBPF object"),
    })?;
    T::try_from(map).map_err(|e| DatapathError::MapRead { map: name.into(), source: map_io(e) })
}

impl AyaDatapath {
    /// Load (or, after a restart, reuse) everything under `config.bpffs_dir`.
    pub fn open(config: AyaConfig) -> Result<Self, DatapathError> {
        let (maps_dir, links_dir) = bpffs::prepare(&config.bpffs_dir)?;
        check_pinned_maps(&maps_dir)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(OBJECT)
            .map_err(|e| DatapathError::LoadObject { dir: maps_dir.clone(), source: Box::new(e) })?;
        for dir in Direction::ALL {
            let prog: &mut SchedClassifier = program(&mut ebpf, dir.program())?;
            prog.load().map_err(|e| DatapathError::LoadProgram { program: dir.program(), source: Box::new(e) })?;
        }

        let mut capacity = BTreeMap::new();
        for (name, map) in ebpf.maps() {
            if let Some(name) = ALL_MAPS.iter().find(|n| **n == name) {
                let info = map_info(map);
                capacity.insert(*name, info.map(|i| i.max_entries()).unwrap_or(0));
            }
        }

        let mut inner = Inner {
            allow4: take(&mut ebpf, MAP_ALLOW4)?,
            allow6: take(&mut ebpf, MAP_ALLOW6)?,
            deny4: take(&mut ebpf, MAP_DENY4)?,
            deny6: take(&mut ebpf, MAP_DENY6)?,
            redir4: take(&mut ebpf, MAP_REDIR4)?,
            redir6: take(&mut ebpf, MAP_REDIR6)?,
            endpoints: take(&mut ebpf, MAP_ENDPOINTS)?,
            proxy: take(&mut ebpf, MAP_PROXY)?,
            ct: take(&mut ebpf, MAP_CT)?,
            counters: take(&mut ebpf, MAP_COUNTERS)?,
            ebpf,
            capacity,
            allow: BTreeMap::new(),
            deny: BTreeSet::new(),
            redirect: BTreeSet::new(),
            flags: BTreeMap::new(),
            attached: BTreeMap::new(),
            maps_dir,
            links_dir,
        };
        inner.load_mirror()?;
        inner.adopt_links()?;
        inner.write_proxy(&config.proxy, config.route.mark)?;
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
        // next reconcile repairs it, so keep going rather than poisoning every later call.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Point the redirect at other proxy sockets.
    pub fn set_proxy(&self, proxy: &ProxyTarget) -> Result<(), DatapathError> {
        self.lock().write_proxy(proxy, self.config.route.mark)
    }

    /// Attach the programs to the endpoint's veth (idempotent; after a restart the pinned links
    /// are already there and only the configuration is refreshed). The endpoint's flags come
    /// from [`set_endpoint_policy`](Self::set_endpoint_policy): set the policy first, so the
    /// endpoint is never attached without its rules.
    pub fn attach_endpoint(&self, spec: &EndpointSpec) -> Result<(), DatapathError> {
        self.lock().attach(spec)
    }

    /// Detach the programs from every veth of `endpoint`. Its rules stay (see
    /// [`forget_endpoint`](Self::forget_endpoint)).
    pub fn detach_endpoint(&self, endpoint: EndpointId) -> Result<(), DatapathError> {
        let mut inner = self.lock();
        let ifindexes: Vec<u32> =
            inner.attached.iter().filter(|(_, a)| a.endpoint == endpoint).map(|(i, _)| *i).collect();
        for ifindex in ifindexes {
            inner.detach(ifindex)?;
        }
        Ok(())
    }

    /// Detach and delete every entry of `endpoint`, static and learned.
    pub fn forget_endpoint(&self, endpoint: EndpointId) -> Result<(), DatapathError> {
        self.detach_endpoint(endpoint)?;
        let mut inner = self.lock();
        inner.set_static(endpoint, &StaticRules::default())?;
        let learned: Vec<RuleKey> = inner
            .allow
            .iter()
            .filter(|(k, f)| k.endpoint == endpoint && **f & OWNER_LEARNED != 0)
            .map(|(k, _)| *k)
            .collect();
        for key in learned {
            inner.set_owner(key, OWNER_LEARNED, false)?;
        }
        inner.flags.remove(&endpoint);
        Ok(())
    }

    /// Install `policy` for `endpoint`: static allow/deny/redirect entries and the flags of its
    /// attachments. New entries are written before the flags change and stale ones removed after,
    /// so tightening or loosening a policy never drops allowed traffic in between.
    pub fn set_endpoint_policy(&self, endpoint: EndpointId, policy: &EndpointPolicy) -> Result<(), DatapathError> {
        let rules = StaticRules::from_policy(endpoint, policy);
        let flags = EndpointFlags::from_policy(policy);
        let mut inner = self.lock();
        inner.add_static(&rules)?;
        inner.set_flags(endpoint, flags)?;
        inner.set_static(endpoint, &rules)
    }

    /// Converge the kernel to `desired`: entries of endpoints not listed and learned keys not
    /// listed are removed, missing ones added, attachments made and dropped. Run at start, after
    /// restoring the cache; safe to run any time.
    pub fn reconcile(&self, desired: &Desired) -> Result<ReconcileReport, DatapathError> {
        let learned: BTreeSet<RuleKey> = desired.learned.iter().flat_map(learned_rules).collect();
        self.lock().converge(&desired.endpoints, &learned)
    }

    /// Converge endpoints, their static rules, flags and attachments to `endpoints`, keeping the
    /// learned entries of the endpoints that remain (they belong to the cache) and dropping those
    /// of endpoints that are gone. The agent calls this on every policy/inventory snapshot.
    pub fn sync_endpoints(&self, endpoints: &[DesiredEndpoint]) -> Result<ReconcileReport, DatapathError> {
        let mut inner = self.lock();
        let keep: BTreeSet<EndpointId> = endpoints.iter().map(|e| e.endpoint).collect();
        let learned: BTreeSet<RuleKey> = inner
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
        let data = MapData::from_pin(&path)
            .map_err(|e| DatapathError::MapRead { map: MAP_DROPS.into(), source: map_io(e) })?;
        let ring = RingBuf::try_from(Map::RingBuf(data))
            .map_err(|e| DatapathError::MapRead { map: MAP_DROPS.into(), source: map_io(e) })?;
        DropEvents::new(ring)
    }

    pub fn counters(&self) -> Result<Counters, DatapathError> {
        let inner = self.lock();
        let read = |idx: u32| -> Result<u64, DatapathError> {
            let values = inner
                .counters
                .get(&idx, 0)
                .map_err(|e| DatapathError::MapRead { map: MAP_COUNTERS.into(), source: map_io(e) })?;
            Ok(values.iter().sum())
        };
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
        })
    }

    /// The allow entries in the kernel (a copy of the mirror), with their owners.
    pub fn allow_entries(&self) -> Vec<(RuleKey, EntryOwners)> {
        self.lock()
            .allow
            .iter()
            .map(|(k, f)| (*k, EntryOwners { policy: f & OWNER_STATIC != 0, learned: f & OWNER_LEARNED != 0 }))
            .collect()
    }

    /// Kernel ids of this process's programs (from-pod, to-pod): after a restart, the pinned links
    /// run these (`bpftool net` shows which program each link runs).
    pub fn program_ids(&self) -> Result<(u32, u32), DatapathError> {
        let inner = self.lock();
        let id = |name: &'static str| -> Result<u32, DatapathError> {
            let prog = inner
                .ebpf
                .program(name)
                .ok_or(DatapathError::LoadProgram { program: name, source: Box::new(ProgramError::NotLoaded) })?;
            let info = prog.info().map_err(|e| DatapathError::LoadProgram { program: name, source: Box::new(e) })?;
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
    /// `fqdnd` uninstall and tests; a normal exit leaves everything in place.
    pub fn uninstall(self) -> Result<(), DatapathError> {
        let mut inner = self.inner.into_inner().unwrap_or_else(|p| p.into_inner());
        let ifindexes: Vec<u32> = inner.attached.keys().copied().collect();
        for ifindex in ifindexes {
            inner.detach(ifindex)?;
        }
        // Links of interfaces no endpoint entry names any more.
        let leftover = std::fs::read_dir(&inner.links_dir)
            .map_err(|source| DatapathError::Bpffs { path: inner.links_dir.clone(), source })?;
        for entry in leftover {
            let path = entry.map_err(|source| DatapathError::Bpffs { path: inner.links_dir.clone(), source })?.path();
            detach_pinned_link(&path).map_err(|source| DatapathError::Link { path, source })?;
        }
        remove_dir_files(&inner.maps_dir)?;
        let dirs = [inner.links_dir.clone(), inner.maps_dir.clone(), self.config.bpffs_dir.clone()];
        drop(inner);
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
        if self.config.install_route {
            self.config.route.remove()?;
        }
        Ok(())
    }
}

/// Ids of the TCX programs attached to `interface` (ingress, egress), in run order, whoever
/// attached them: the kernel's view, for diagnostics and tests. Resolves the name in the calling
/// thread's network namespace.
pub fn tcx_programs(interface: &str) -> Result<(Vec<u32>, Vec<u32>), DatapathError> {
    let query = |dir: Direction| -> Result<Vec<u32>, DatapathError> {
        let (_, progs) =
            SchedClassifier::query_tcx(interface, dir.attach_type()).map_err(|e| DatapathError::Attach {
                program: dir.program(),
                interface: interface.into(),
                direction: dir.tag(),
                source: Box::new(e),
            })?;
        Ok(progs.iter().map(|p| p.id()).collect())
    };
    Ok((query(Direction::FromPod)?, query(Direction::ToPod)?))
}

/// Who put an allow entry there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryOwners {
    pub policy: bool,
    pub learned: bool,
}

const ALL_MAPS: [&str; 11] = [
    MAP_ENDPOINTS,
    MAP_PROXY,
    MAP_ALLOW4,
    MAP_ALLOW6,
    MAP_DENY4,
    MAP_DENY6,
    MAP_REDIR4,
    MAP_REDIR6,
    MAP_CT,
    MAP_DROPS,
    MAP_COUNTERS,
];

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

/// Key/value sizes of the maps this build expects, to refuse pins left by an incompatible build.
fn expected_sizes(name: &str) -> Option<(u32, u32)> {
    let lpm4 = (4 + size_of::<Key4>()) as u32;
    let lpm6 = (4 + size_of::<Key6>()) as u32;
    let val = size_of::<RuleVal>() as u32;
    Some(match name {
        MAP_ENDPOINTS => (4, size_of::<EpCfg>() as u32),
        MAP_PROXY => (4, size_of::<ProxyCfg>() as u32),
        MAP_ALLOW4 | MAP_DENY4 | MAP_REDIR4 => (lpm4, val),
        MAP_ALLOW6 | MAP_DENY6 | MAP_REDIR6 => (lpm6, val),
        MAP_CT => (size_of::<CtKey>() as u32, size_of::<CtVal>() as u32),
        MAP_COUNTERS => (4, 8),
        _ => return None,
    })
}

fn check_pinned_maps(maps_dir: &Path) -> Result<(), DatapathError> {
    for name in ALL_MAPS {
        let path = maps_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path)
            .map_err(|e| DatapathError::MapRead { map: name.into(), source: map_io(e) })?;
        if let Some((k, v)) = expected_sizes(name)
            && (info.key_size() != k || info.value_size() != v)
        {
            return Err(DatapathError::PinnedMapMismatch {
                path,
                detail: format!("key/value size {}/{}, this build uses {k}/{v}", info.key_size(), info.value_size()),
            });
        }
    }
    Ok(())
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, DatapathError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| DatapathError::LoadProgram { program: name, source: Box::new(ProgramError::NotLoaded) })?;
    prog.try_into().map_err(|e| DatapathError::LoadProgram { program: name, source: Box::new(e) })
}

fn ifindex_of(interface: &str) -> Result<u32, DatapathError> {
    let c = std::ffi::CString::new(interface).map_err(|e| DatapathError::InterfaceNotFound {
        interface: interface.into(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    // SAFETY: a valid NUL-terminated name.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(DatapathError::InterfaceNotFound {
            interface: interface.into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(idx)
}

fn ifname_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    Some(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

fn remove_dir_files(dir: &Path) -> Result<(), DatapathError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(DatapathError::Bpffs { path: dir.to_owned(), source }),
    };
    for entry in entries {
        let path = entry.map_err(|source| DatapathError::Bpffs { path: dir.to_owned(), source })?.path();
        std::fs::remove_file(&path).map_err(|source| DatapathError::Bpffs { path, source })?;
    }
    Ok(())
}

/// Pin file of the link of `dir` on `ifindex`: `links/if<ifindex>_<ingress|egress>`.
fn link_path(links_dir: &Path, ifindex: u32, dir: Direction) -> PathBuf {
    links_dir.join(format!("if{ifindex}_{}", dir.tag()))
}

fn parse_link_name(name: &str) -> Option<(u32, Direction)> {
    let rest = name.strip_prefix("if")?;
    let (idx, tag) = rest.split_once('_')?;
    let dir = match tag {
        "ingress" => Direction::FromPod,
        "egress" => Direction::ToPod,
        _ => return None,
    };
    Some((idx.parse().ok()?, dir))
}

impl Inner {
    /// Additions and owner changes first, then flags and attachments, then removals: traffic that
    /// stays allowed is never dropped in between.
    fn converge(
        &mut self,
        endpoints: &[DesiredEndpoint],
        learned: &BTreeSet<RuleKey>,
    ) -> Result<ReconcileReport, DatapathError> {
        let mut report = ReconcileReport::default();
        let mut want_allow: BTreeMap<RuleKey, u32> = BTreeMap::new();
        let mut want_deny = BTreeSet::new();
        let mut want_redirect = BTreeSet::new();
        for ep in endpoints {
            for k in &ep.rules.allow {
                *want_allow.entry(*k).or_default() |= OWNER_STATIC;
            }
            want_deny.extend(ep.rules.deny.iter().copied());
            want_redirect.extend(ep.rules.redirect.iter().copied());
        }
        for k in learned {
            *want_allow.entry(*k).or_default() |= OWNER_LEARNED;
        }

        // Additions and owner changes first, then flags and attachments, then removals.
        for (k, want) in &want_allow {
            match self.allow.get(k).copied() {
                None => {
                    self.write_allow(*k, *want, 0)?;
                    report.entries_added += 1;
                }
                Some(have) if have != *want => {
                    self.write_allow(*k, *want, have)?;
                    report.entries_updated += 1;
                }
                Some(_) => {}
            }
        }
        for k in &want_deny {
            if !self.deny.contains(k) {
                self.trie_insert(Trie::Deny, k, RuleVal { flags: OWNER_STATIC, ..Default::default() })?;
                self.deny.insert(*k);
                report.entries_added += 1;
            }
        }
        for k in &want_redirect {
            if !self.redirect.contains(k) {
                self.trie_insert(Trie::Redirect, k, RuleVal { flags: OWNER_STATIC, ..Default::default() })?;
                self.redirect.insert(*k);
                report.entries_added += 1;
            }
        }

        let wanted: BTreeMap<EndpointId, &DesiredEndpoint> = endpoints.iter().map(|e| (e.endpoint, e)).collect();
        for ep in endpoints {
            self.set_flags(ep.endpoint, ep.flags)?;
        }
        let stale: Vec<EndpointId> = self.flags.keys().filter(|e| !wanted.contains_key(e)).copied().collect();
        for ep in stale {
            self.flags.remove(&ep);
        }
        // Attachments: keep those whose interface is still the wanted one.
        let mut keep = BTreeSet::new();
        for ep in endpoints {
            if let Some(interface) = &ep.interface {
                let ifindex = match ifindex_of(interface) {
                    Ok(i) => i,
                    Err(e) => {
                        tracing::warn!(endpoint = %ep.endpoint, interface, error = %e, "not attaching");
                        report.interfaces_missing += 1;
                        continue;
                    }
                };
                let already = self.attached.get(&ifindex).is_some_and(|a| a.endpoint == ep.endpoint);
                self.attach(&EndpointSpec { endpoint: ep.endpoint, interface: interface.clone() })?;
                if !already {
                    report.attached += 1;
                }
                keep.insert(ifindex);
            }
        }
        let drop_ifs: Vec<u32> = self.attached.keys().filter(|i| !keep.contains(i)).copied().collect();
        for ifindex in drop_ifs {
            self.detach(ifindex)?;
            report.detached += 1;
        }

        let extra_allow: Vec<RuleKey> = self.allow.keys().filter(|k| !want_allow.contains_key(k)).copied().collect();
        for k in extra_allow {
            let have = self.allow[&k];
            self.write_allow(k, 0, have)?;
            report.entries_removed += 1;
        }
        for (trie, want) in [(Trie::Deny, &want_deny), (Trie::Redirect, &want_redirect)] {
            let set = if trie == Trie::Deny { &self.deny } else { &self.redirect };
            let extra: Vec<RuleKey> = set.difference(want).copied().collect();
            for k in extra {
                self.trie_remove(trie, &k)?;
                if trie == Trie::Deny {
                    self.deny.remove(&k)
                } else {
                    self.redirect.remove(&k)
                };
                report.entries_removed += 1;
            }
        }
        Ok(report)
    }

    fn map_name(trie: Trie, v6: bool) -> &'static str {
        match (trie, v6) {
            (Trie::Allow, false) => MAP_ALLOW4,
            (Trie::Allow, true) => MAP_ALLOW6,
            (Trie::Deny, false) => MAP_DENY4,
            (Trie::Deny, true) => MAP_DENY6,
            (Trie::Redirect, false) => MAP_REDIR4,
            (Trie::Redirect, true) => MAP_REDIR6,
        }
    }

    fn tries4(&mut self, trie: Trie) -> &mut LpmTrie<MapData, Key4, RuleVal> {
        match trie {
            Trie::Allow => &mut self.allow4,
            Trie::Deny => &mut self.deny4,
            Trie::Redirect => &mut self.redir4,
        }
    }

    fn tries6(&mut self, trie: Trie) -> &mut LpmTrie<MapData, Key6, RuleVal> {
        match trie {
            Trie::Allow => &mut self.allow6,
            Trie::Deny => &mut self.deny6,
            Trie::Redirect => &mut self.redir6,
        }
    }

    fn write_err(&self, map: &'static str, key: &RuleKey, e: MapError) -> DatapathError {
        let source = map_io(e);
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::E2BIG) => DatapathError::MapFull {
                map: map.into(),
                capacity: self.capacity.get(map).copied().unwrap_or(0),
                entry: key.to_string(),
            },
            _ => DatapathError::MapWrite { map: map.into(), source },
        }
    }

    fn trie_insert(&mut self, trie: Trie, key: &RuleKey, val: RuleVal) -> Result<(), DatapathError> {
        let (name, res) = match key.net {
            IpNet::V4(n) => (Self::map_name(trie, false), self.tries4(trie).insert(&key4(key, n), val, 0)),
            IpNet::V6(n) => (Self::map_name(trie, true), self.tries6(trie).insert(&key6(key, n), val, 0)),
        };
        res.map_err(|e| self.write_err(name, key, e))
    }

    fn trie_remove(&mut self, trie: Trie, key: &RuleKey) -> Result<(), DatapathError> {
        let (name, res) = match key.net {
            IpNet::V4(n) => (Self::map_name(trie, false), self.tries4(trie).remove(&key4(key, n))),
            IpNet::V6(n) => (Self::map_name(trie, true), self.tries6(trie).remove(&key6(key, n))),
        };
        match res {
            Ok(()) => Ok(()),
            Err(e) => {
                let source = map_io(e);
                if source.raw_os_error() == Some(libc::ENOENT) {
                    Ok(())
                } else {
                    Err(DatapathError::MapWrite { map: name.into(), source })
                }
            }
        }
    }

    /// The value stored under exactly `key` (the mirror says it exists, so the longest-prefix
    /// lookup with the key's own prefix length lands on it).
    fn trie_get(&self, trie: Trie, key: &RuleKey) -> Option<RuleVal> {
        let t4 = match trie {
            Trie::Allow => &self.allow4,
            Trie::Deny => &self.deny4,
            Trie::Redirect => &self.redir4,
        };
        let t6 = match trie {
            Trie::Allow => &self.allow6,
            Trie::Deny => &self.deny6,
            Trie::Redirect => &self.redir6,
        };
        match key.net {
            IpNet::V4(n) => t4.get(&key4(key, n), 0).ok(),
            IpNet::V6(n) => t6.get(&key6(key, n), 0).ok(),
        }
    }

    /// Write allow entry `key` with owner bits `want` (0 = delete), it currently having `have`.
    /// The last-used stamp survives owner changes.
    fn write_allow(&mut self, key: RuleKey, want: u32, have: u32) -> Result<(), DatapathError> {
        if want == have {
            return Ok(());
        }
        if want == 0 {
            self.trie_remove(Trie::Allow, &key)?;
            self.allow.remove(&key);
            return Ok(());
        }
        let last_used = if have == 0 { 0 } else { self.trie_get(Trie::Allow, &key).map_or(0, |v| v.last_used) };
        self.trie_insert(Trie::Allow, &key, RuleVal { last_used, flags: want, pad: 0 })?;
        self.allow.insert(key, want);
        Ok(())
    }

    fn set_owner(&mut self, key: RuleKey, bit: u32, on: bool) -> Result<(), DatapathError> {
        let have = self.allow.get(&key).copied().unwrap_or(0);
        let want = if on { have | bit } else { have & !bit };
        self.write_allow(key, want, have)
    }

    fn add_static(&mut self, rules: &StaticRules) -> Result<(), DatapathError> {
        for k in &rules.allow {
            self.set_owner(*k, OWNER_STATIC, true)?;
        }
        for k in &rules.deny {
            if !self.deny.contains(k) {
                self.trie_insert(Trie::Deny, k, RuleVal { flags: OWNER_STATIC, ..Default::default() })?;
                self.deny.insert(*k);
            }
        }
        for k in &rules.redirect {
            if !self.redirect.contains(k) {
                self.trie_insert(Trie::Redirect, k, RuleVal { flags: OWNER_STATIC, ..Default::default() })?;
                self.redirect.insert(*k);
            }
        }
        Ok(())
    }

    /// Make `endpoint`'s static entries exactly `rules` (adds then removals).
    fn set_static(&mut self, endpoint: EndpointId, rules: &StaticRules) -> Result<(), DatapathError> {
        self.add_static(rules)?;
        let stale_allow: Vec<RuleKey> = self
            .allow
            .iter()
            .filter(|(k, f)| k.endpoint == endpoint && **f & OWNER_STATIC != 0 && !rules.allow.contains(k))
            .map(|(k, _)| *k)
            .collect();
        for k in stale_allow {
            self.set_owner(k, OWNER_STATIC, false)?;
        }
        let stale_deny: Vec<RuleKey> =
            self.deny.iter().filter(|k| k.endpoint == endpoint && !rules.deny.contains(k)).copied().collect();
        for k in stale_deny {
            self.trie_remove(Trie::Deny, &k)?;
            self.deny.remove(&k);
        }
        let stale_redirect: Vec<RuleKey> =
            self.redirect.iter().filter(|k| k.endpoint == endpoint && !rules.redirect.contains(k)).copied().collect();
        for k in stale_redirect {
            self.trie_remove(Trie::Redirect, &k)?;
            self.redirect.remove(&k);
        }
        Ok(())
    }

    fn set_flags(&mut self, endpoint: EndpointId, flags: EndpointFlags) -> Result<(), DatapathError> {
        self.flags.insert(endpoint, flags);
        let ifindexes: Vec<u32> =
            self.attached.iter().filter(|(_, a)| a.endpoint == endpoint).map(|(i, _)| *i).collect();
        for ifindex in ifindexes {
            self.write_endpoint_cfg(ifindex, endpoint)?;
        }
        Ok(())
    }

    fn write_endpoint_cfg(&mut self, ifindex: u32, endpoint: EndpointId) -> Result<(), DatapathError> {
        let flags = self.flags.get(&endpoint).copied().unwrap_or_default();
        let cfg = EpCfg { endpoint: endpoint.0, flags: flags.bits() };
        self.endpoints.insert(ifindex, cfg, 0).map_err(|e| {
            let source = map_io(e);
            if source.raw_os_error() == Some(libc::E2BIG) {
                DatapathError::MapFull {
                    map: MAP_ENDPOINTS.into(),
                    capacity: self.capacity.get(MAP_ENDPOINTS).copied().unwrap_or(0),
                    entry: format!("ifindex {ifindex} -> {endpoint}"),
                }
            } else {
                DatapathError::MapWrite { map: MAP_ENDPOINTS.into(), source }
            }
        })
    }

    fn write_proxy(&mut self, proxy: &ProxyTarget, mark: u32) -> Result<(), DatapathError> {
        let cfg = ProxyCfg {
            addr4: proxy.ipv4.unwrap_or(Ipv4Addr::UNSPECIFIED).octets(),
            addr6: proxy.ipv6.unwrap_or(Ipv6Addr::UNSPECIFIED).octets(),
            udp_port: proxy.udp_port,
            tcp_port: proxy.tcp_port,
            mark,
            flags: (if proxy.ipv4.is_some() { PROXY_HAS_V4 } else { 0 })
                | (if proxy.ipv6.is_some() { PROXY_HAS_V6 } else { 0 }),
        };
        self.proxy.set(0, cfg, 0).map_err(|e| DatapathError::MapWrite { map: MAP_PROXY.into(), source: map_io(e) })
    }

    /// Read the tries and the endpoint table back into the mirror (after a restart).
    fn load_mirror(&mut self) -> Result<(), DatapathError> {
        let read_err =
            |map: &'static str| move |e: MapError| DatapathError::MapRead { map: map.into(), source: map_io(e) };
        for (trie, t4, t6) in [
            (Trie::Allow, &self.allow4, &self.allow6),
            (Trie::Deny, &self.deny4, &self.deny6),
            (Trie::Redirect, &self.redir4, &self.redir6),
        ] {
            let mut entries = Vec::new();
            for item in t4.iter() {
                let (k, v) = item.map_err(read_err(Self::map_name(trie, false)))?;
                entries.extend(rule_from_key4(&k).map(|r| (r, v.flags)));
            }
            for item in t6.iter() {
                let (k, v) = item.map_err(read_err(Self::map_name(trie, true)))?;
                entries.extend(rule_from_key6(&k).map(|r| (r, v.flags)));
            }
            match trie {
                Trie::Allow => self.allow.extend(entries),
                Trie::Deny => self.deny.extend(entries.into_iter().map(|(k, _)| k)),
                Trie::Redirect => self.redirect.extend(entries.into_iter().map(|(k, _)| k)),
            }
        }
        for item in self.endpoints.iter() {
            let (ifindex, cfg) = item.map_err(read_err(MAP_ENDPOINTS))?;
            let endpoint = EndpointId(cfg.endpoint);
            self.flags.insert(endpoint, EndpointFlags::from_bits(cfg.flags));
            self.attached.insert(ifindex, Attachment { endpoint, interface: ifname_of(ifindex) });
        }
        Ok(())
    }

    /// Swap this process's programs onto the links a previous one pinned. Links whose interface
    /// is gone are unpinned and their endpoint configuration dropped.
    fn adopt_links(&mut self) -> Result<(), DatapathError> {
        let entries = std::fs::read_dir(&self.links_dir)
            .map_err(|source| DatapathError::Bpffs { path: self.links_dir.clone(), source })?;
        let mut dead = BTreeSet::new();
        for entry in entries {
            let path = entry.map_err(|source| DatapathError::Bpffs { path: self.links_dir.clone(), source })?.path();
            let Some((ifindex, dir)) = path.file_name().and_then(|n| n.to_str()).and_then(parse_link_name) else {
                continue;
            };
            let alive = pinned_link_ifindex(&path)
                .map_err(|source| DatapathError::Link { path: path.clone(), source })?
                == ifindex;
            if alive {
                self.swap_link(&path, dir)?;
            } else {
                tracing::info!(link = %path.display(), "interface of pinned link is gone; unpinning");
                let _ = std::fs::remove_file(&path);
                dead.insert(ifindex);
            }
        }
        for ifindex in dead {
            self.detach(ifindex)?;
        }
        Ok(())
    }

    fn swap_link(&mut self, path: &Path, dir: Direction) -> Result<(), DatapathError> {
        let link_err = |source| DatapathError::Link { path: path.to_owned(), source };
        let pinned = PinnedLink::from_pin(path).map_err(|e| link_err(link_io(e)))?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| link_err(link_io(e)))?;
        let prog = program(&mut self.ebpf, dir.program())?;
        let id = prog.attach_to_link(link).map_err(|e| link_err(io::Error::other(e)))?;
        // The pin keeps the link; the program object must not detach it when this process exits.
        let link = prog.take_link(id).map_err(|e| link_err(io::Error::other(e)))?;
        drop(link);
        Ok(())
    }

    fn attach(&mut self, spec: &EndpointSpec) -> Result<(), DatapathError> {
        let ifindex = ifindex_of(&spec.interface)?;
        // The same endpoint on another veth: the pod was recreated.
        let moved: Vec<u32> = self
            .attached
            .iter()
            .filter(|(i, a)| a.endpoint == spec.endpoint && **i != ifindex)
            .map(|(i, _)| *i)
            .collect();
        for i in moved {
            self.detach(i)?;
        }
        // Configuration first: the programs pass traffic of unknown interfaces.
        self.attached.insert(ifindex, Attachment { endpoint: spec.endpoint, interface: Some(spec.interface.clone()) });
        self.write_endpoint_cfg(ifindex, spec.endpoint)?;
        for dir in Direction::ALL {
            let path = link_path(&self.links_dir, ifindex, dir);
            if path.exists() {
                let alive = pinned_link_ifindex(&path)
                    .map_err(|source| DatapathError::Link { path: path.clone(), source })?
                    == ifindex;
                if alive {
                    continue;
                }
                // The veth this link was on is gone and a new one got its index.
                let _ = std::fs::remove_file(&path);
            }
            self.attach_new(&spec.interface, &path, dir)?;
        }
        Ok(())
    }

    fn attach_new(&mut self, interface: &str, path: &Path, dir: Direction) -> Result<(), DatapathError> {
        let attach_err = |e: ProgramError| DatapathError::Attach {
            program: dir.program(),
            interface: interface.into(),
            direction: dir.tag(),
            source: Box::new(e),
        };
        let prog = program(&mut self.ebpf, dir.program())?;
        let id = prog
            .attach_with_options(interface, dir.attach_type(), TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(attach_err)?;
        let link = prog.take_link(id).map_err(attach_err)?;
        let fd: FdLink = link
            .try_into()
            .map_err(|e: LinkError| DatapathError::Link { path: path.to_owned(), source: link_io(e) })?;
        fd.pin(path).map_err(|e| DatapathError::Link { path: path.to_owned(), source: io::Error::other(e) })?;
        Ok(())
    }

    fn detach(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        for dir in Direction::ALL {
            let path = link_path(&self.links_dir, ifindex, dir);
            detach_pinned_link(&path).map_err(|source| DatapathError::Link { path, source })?;
        }
        match self.endpoints.remove(&ifindex) {
            Ok(()) => {}
            Err(e) => {
                let source = map_io(e);
                if source.raw_os_error() != Some(libc::ENOENT) {
                    return Err(DatapathError::MapWrite { map: MAP_ENDPOINTS.into(), source });
                }
            }
        }
        self.attached.remove(&ifindex);
        // Inbound-connection records of this veth must not leak to the next one with its index.
        let stale: Vec<CtKey> = self.ct.keys().filter_map(Result::ok).filter(|k| k.ifindex == ifindex).collect();
        for k in stale {
            let _ = self.ct.remove(&k);
        }
        Ok(())
    }
}

fn link_io(e: LinkError) -> io::Error {
    match e {
        LinkError::SyscallError(s) => s.io_error,
        other => io::Error::other(other),
    }
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

const BPF_LINK_DETACH: libc::c_long = 34;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zeroed, bpf_attr-sized buffer filled for `cmd`; pointers in it refer to
    // buffers the caller keeps alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr)) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn open_pinned(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    use std::os::unix::ffi::OsStrExt as _;
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // BPF_OBJ_GET: pathname u64, bpf_fd u32, file_flags u32.
    let mut attr = [0u64; 16];
    attr[0] = cpath.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// The ifindex the TCX link pinned at `path` is attached to: `bpf_link_info.tcx.ifindex`, which
/// the kernel resets to 0 when the device goes away (aya does not expose it).
fn pinned_link_ifindex(path: &Path) -> io::Result<u32> {
    use std::os::fd::AsRawFd as _;
    let fd = open_pinned(path)?;
    // struct bpf_link_info: type, id, prog_id (u32 each), then an 8-byte aligned union whose tcx
    // member starts with ifindex (u32): offset 16.
    let mut info = [0u8; 256];
    let mut attr = [0u64; 16];
    attr[0] = u64::from(fd.as_raw_fd() as u32) | ((info.len() as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(u32::from_ne_bytes(info[16..20].try_into().expect("4 bytes")))
}

/// Detach the link pinned at `path` now, then unpin it. Unpinning alone frees the link only
/// after an RCU grace period and a workqueue pass: the program would keep running for a moment
/// after `detach` returned.
fn detach_pinned_link(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let fd = match open_pinned(path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut attr = [0u64; 16];
    attr[0] = u64::from(fd.as_raw_fd() as u32);
    match bpf(BPF_LINK_DETACH, &mut attr) {
        // ENOLINK: already detached (its device went away).
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {}
        Err(e) => return Err(e),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Datapath for AyaDatapath {
    fn apply(&self, delta: Delta) -> BoxFuture<'_, Result<(), DatapathError>> {
        // Map writes are syscalls of a few microseconds: done inline, the ack is the return.
        let result = (|| {
            let mut inner = self.lock();
            for key in &delta.remove {
                for k in learned_rules(key) {
                    inner.set_owner(k, OWNER_LEARNED, false)?;
                }
            }
            for key in &delta.add {
                for k in learned_rules(key) {
                    inner.set_owner(k, OWNER_LEARNED, true)?;
                }
            }
            Ok(())
        })();
        Box::pin(std::future::ready(result))
    }

    fn last_used(&self) -> Result<Vec<LastUsed>, DatapathError> {
        let inner = self.lock();
        let now = monotonic_ns();
        let mut best: BTreeMap<(EndpointId, IpAddr), u64> = BTreeMap::new();
        for (key, owners) in &inner.allow {
            let host = key.net.prefix_len() == key.net.max_prefix_len();
            if owners & OWNER_LEARNED == 0 || !host {
                continue;
            }
            let Some(val) = inner.trie_get(Trie::Allow, key) else { continue };
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

    fn learned_entries(&self) -> Vec<AllowKey> {
        let inner = self.lock();
        inner
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
