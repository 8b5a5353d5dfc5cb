//! Flow events: one per query and one per answer, handed to a [`FlowSink`] on the query path. The
//! agent's flow hub keeps them in its ring and streams them to `fqdnd observe`; it never makes the
//! query path wait for a reader.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use fqdn_cache::{EndpointId, L4Proto};
use serde::{Deserialize, Serialize};

/// What the proxy did with a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Forwarded,
    Dropped,
    Error,
    /// Audit mode: the rules refused it and it was forwarded anyway.
    Audit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DnsFlowKind {
    Request,
    Response,
}

/// One DNS request or response seen by the proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DnsFlow {
    pub time: SystemTime,
    pub kind: DnsFlowKind,
    pub verdict: Verdict,
    /// The querying endpoint, if the source IP is a known endpoint.
    pub endpoint: Option<EndpointId>,
    /// The pod's address (source of the query).
    pub client: SocketAddr,
    /// The DNS server the pod addressed (original destination, or the upstream in plain mode).
    pub server: SocketAddr,
    pub protocol: L4Proto,
    /// Query name, normalized with trailing dot.
    pub qname: String,
    /// Query types by name (`A`, `AAAA`, ...).
    pub qtypes: Vec<String>,
    /// Response only: the rcode name (`NoError`, `NXDomain`, ...).
    pub rcode: Option<String>,
    /// Response only: A/AAAA addresses of the answer.
    pub ips: Vec<IpAddr>,
    /// Response only: lowest TTL of the answer chain.
    pub ttl: Option<u32>,
    /// Response only: CNAME targets.
    pub cnames: Vec<String>,
    /// Response only: record types present in the answer section.
    pub rrtypes: Vec<String>,
    /// The policy that allowed or refused the query, `namespace/name`.
    pub policy: Option<String>,
    /// Response only: time from receiving the query to releasing the answer.
    pub latency: Option<Duration>,
}

/// Where the proxy's flows go (the agent's flow hub). Called on the query path, from the proxy's
/// receive threads: it must not block.
pub trait FlowSink: Send + Sync + 'static {
    /// Whether flows are wanted now; when not, the proxy builds none (they cost per query).
    fn wants_flows(&self) -> bool;

    fn dns_flow(&self, flow: DnsFlow);
}
