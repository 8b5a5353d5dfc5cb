//! ebpf-redirect: the datapath. The [`Datapath`] trait is what the proxy and the cache talk to;
//! [`MemoryDatapath`] implements it in memory for tests, [`AyaDatapath`] in the kernel: tc (TCX)
//! programs on the node side of each endpoint's veth (`bpf/fqdnd.bpf.c`), LPM tries for allow,
//! deny and DNS-redirect rules, a ring buffer of drops, all pinned under a bpffs directory so
//! enforcement outlives the agent.

pub mod bpffs;
pub mod events;
pub mod kernel;
pub(crate) mod maps;
pub mod memory;
pub mod routing;
pub mod rules;

use std::future::Future;
use std::pin::Pin;

pub use fqdn_cache::LastUsed;
use fqdn_cache::{AllowKey, Delta, EndpointId};
use thiserror::Error;

pub use events::DropEvents;
pub use kernel::{
    AyaConfig, AyaDatapath, Counters, Desired, DesiredEndpoint, EndpointSpec, EntryOwners, ProxyTarget,
    ReconcileReport, tcx_programs,
};
pub use memory::MemoryDatapath;
pub use routing::PolicyRoute;
pub use rules::{EndpointFlags, RuleKey, StaticRules};

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error("allow map {map} is full ({capacity} entries); {entry} not added")]
    MapFull { map: String, capacity: u32, entry: String },
    #[error("writing map {map}")]
    MapWrite {
        map: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading map {map}")]
    MapRead {
        map: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pinned map {path} does not match this build ({detail}); remove it to start afresh")]
    PinnedMapMismatch { path: std::path::PathBuf, detail: String },
    #[error("{path} is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs { path: std::path::PathBuf },
    #[error("preparing bpffs directory {path}")]
    Bpffs {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object with maps pinned under {dir}")]
    LoadObject {
        dir: std::path::PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("loading eBPF program {program}")]
    LoadProgram {
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("interface {interface} not found")]
    InterfaceNotFound {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching {program} to {interface} (tcx {direction})")]
    Attach {
        program: &'static str,
        interface: String,
        direction: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pinned link {path}")]
    Link {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy routing: {op}")]
    Route {
        op: String,
        #[source]
        source: std::io::Error,
    },
}

/// A boxed future, so the trait stays object-safe (`Arc<dyn Datapath>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where learned IPs go. `apply` resolves once the entries are enforceable: the proxy releases a
/// DNS answer only after that (or after `--response-max-delay`).
pub trait Datapath: Send + Sync + 'static {
    fn apply(&self, delta: Delta) -> BoxFuture<'_, Result<(), DatapathError>>;

    /// Last-used times of the allow entries of learned IPs, for the cache's zombie pass.
    fn last_used(&self) -> Result<Vec<LastUsed>, DatapathError>;

    /// Every learned (not policy) entry the datapath holds. After a crash the maps can hold
    /// entries newer than the cache's last snapshot; the agent adopts them at start so they still
    /// expire.
    fn learned_entries(&self) -> Vec<AllowKey>;
}

/// Why the datapath dropped a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Egress default deny and no allow-map entry for the destination.
    PolicyDenied,
    /// An explicit deny rule matched.
    PolicyDeny,
}

/// One packet dropped by the tc program, read from the ring buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropEvent {
    pub endpoint: EndpointId,
    /// Source and destination; port 0 for protocols without ports.
    pub src: std::net::SocketAddr,
    pub dst: std::net::SocketAddr,
    /// TCP or UDP; [`L4Proto::Any`](fqdn_cache::L4Proto::Any) for every other IP protocol.
    pub proto: fqdn_cache::L4Proto,
    /// TCP flags byte of the dropped segment (0 for UDP).
    pub tcp_flags: u8,
    pub reason: DropReason,
    /// Wall-clock time of the drop (the kernel's monotonic stamp, converted when read).
    pub time: std::time::SystemTime,
}
