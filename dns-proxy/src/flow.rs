//! Flow events: one per query and one per answer, on a broadcast channel. The agent keeps them in
//! its flow ring and streams them to `fqdnd observe`; dropping events for a slow reader never
//! slows the query path.

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
