//! ebpf-redirect: the kernel datapath. [`AyaDatapath`] implements `fqdn_cache::Datapath` with tc
//! (TCX) programs on the node side of each endpoint's veth (`bpf/fqdnd.bpf.c`): DNS redirected to
//! the proxy's transparent sockets, LPM tries for allow, deny and redirect rules, a ring buffer of
//! drops, all pinned under a bpffs directory so enforcement outlives the agent.
//!
//! Rooms: [`loader`] (object, programs, pinned maps), [`links`] (pinned TCX links: attach,
//! detach, swap on restart), [`tries`] (maps and their userspace mirror), [`plan`] (converging to
//! the policies, pure), [`kernel`] (the datapath that ties them), [`sys`] (raw syscalls),
//! [`maps`] (byte layouts shared with C) and [`rules`] (policy -> trie keys, pure).

pub mod bpffs;
mod error;
pub mod events;
pub mod kernel;
mod links;
mod loader;
pub(crate) mod maps;
mod plan;
pub mod routing;
pub mod rules;
mod sys;
mod tries;

pub use error::KernelError;
pub use events::DropEvents;
pub use fqdn_cache::{Datapath, DatapathError, LastUsed};
pub use kernel::{
    AyaConfig, AyaDatapath, Counters, DesiredEndpoint, EntryOwners, MapFill, ProxyTarget, ReconcileReport,
};
pub use links::tcx_programs;
pub use loader::MapSizes;
pub use routing::PolicyRoute;
pub use rules::{EndpointFlags, RuleKey, StaticRules};

use fqdn_cache::EndpointId;

/// Why the datapath dropped a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Egress default deny and no allow-map entry for the destination.
    PolicyDenied,
    /// An explicit deny rule matched.
    PolicyDeny,
    /// The source address was not the endpoint's (anti-spoofing).
    SpoofedSource,
}

/// What a denied packet from an endpoint gets besides being dropped (`--deny-response`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DenyResponse {
    /// Nothing: the sender times out (Cilium's behaviour).
    #[default]
    Drop,
    /// A TCP RST for TCP, an ICMP / ICMPv6 port unreachable for UDP, sent back by the program:
    /// the sender fails at once.
    Reject,
}

impl std::str::FromStr for DenyResponse {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "drop" => Ok(DenyResponse::Drop),
            "reject" => Ok(DenyResponse::Reject),
            other => Err(format!("{other:?} is not a deny response; expected drop or reject")),
        }
    }
}

impl std::fmt::Display for DenyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DenyResponse::Drop => "drop",
            DenyResponse::Reject => "reject",
        })
    }
}

/// Which way a dropped packet was going, seen from the endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Direction {
    /// Sent by the endpoint.
    #[default]
    Egress,
    /// Going to the endpoint (`src` is the peer, `dst` the endpoint).
    Ingress,
}

/// One packet dropped by the tc program, read from the ring buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropEvent {
    pub endpoint: EndpointId,
    pub direction: Direction,
    /// Source and destination as the packet had them; port 0 for protocols without ports.
    pub src: std::net::SocketAddr,
    pub dst: std::net::SocketAddr,
    /// TCP or UDP; [`L4Proto::Any`](fqdn_cache::L4Proto::Any) for every other IP protocol.
    pub proto: fqdn_cache::L4Proto,
    /// TCP flags byte of the dropped segment (0 for UDP).
    pub tcp_flags: u8,
    pub reason: DropReason,
    /// `--deny-response reject`: the program answered it (a TCP RST, an ICMP port unreachable).
    pub rejected: bool,
    /// Audit mode: policy would have dropped it, and it passed (the first packet of its flow).
    pub audit: bool,
    /// Wall-clock time of the drop (the kernel's monotonic stamp, converted when read).
    pub time: std::time::SystemTime,
}
