//! Flow events: one per query and one per answer, handed to a [`FlowSink`] on the query path. The
//! agent's flow hub keeps them in its ring and streams them to `fqdnd observe`; it never makes the
//! query path wait for a reader.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fqdn_cache::{EndpointId, L4Proto};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use policy_sync::PolicyRef;
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

/// One DNS request or response seen by the proxy, compact: numbers, not names, and the query name
/// shared with the query rather than copied. Made on the query path for every query (twice), and
/// shaped for readers only when one asks.
#[derive(Clone, Debug, PartialEq)]
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
    pub qname: Arc<str>,
    /// The query type (`1` is A; [`DnsFlow::qtype_name`]).
    pub qtype: u16,
    /// Response only: the response code (`0` NoError, `3` NXDomain; [`rcode_name`]).
    pub rcode: Option<u16>,
    /// Response only: A/AAAA addresses of the answer.
    pub ips: Vec<IpAddr>,
    /// Response only: lowest TTL of the answer chain.
    pub ttl: Option<u32>,
    /// Response only: CNAME targets.
    pub cnames: Vec<String>,
    /// Response only: record types present in the answer section ([`type_name`]).
    pub rrtypes: Vec<u16>,
    /// The policy that allowed or refused the query.
    pub policy: Option<Arc<PolicyRef>>,
    /// Response only: time from receiving the query to releasing the answer.
    pub latency: Option<Duration>,
}

impl DnsFlow {
    pub fn qtype_name(&self) -> String {
        type_name(self.qtype)
    }
}

/// A record type's mnemonic (`A`, `AAAA`, `TYPE65280`), as hickory and Hubble write it.
pub fn type_name(t: u16) -> String {
    RecordType::from(t).to_string()
}

/// A response code's name (`NoError`, `NXDomain`), as hickory writes it.
pub fn rcode_name(rcode: u16) -> &'static str {
    ResponseCode::from((rcode >> 4) as u8, (rcode & 0x0f) as u8).to_str()
}

/// Where the proxy's flows go (the agent's flow hub). Called on the query path, from the proxy's
/// receive threads: it must not block.
pub trait FlowSink: Send + Sync + 'static {
    /// Whether flows are wanted now; when not, the proxy builds none (they cost per query).
    fn wants_flows(&self) -> bool;

    fn dns_flow(&self, flow: DnsFlow);
}
