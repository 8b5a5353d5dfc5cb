//! The proxy's one error type. Socket setup failures stop the agent; per-query failures become a
//! DNS response code (see [`crate::refusal::response_code`]) and a flow with verdict ERROR.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fqdn_cache::{EndpointId, L4Proto};
use hickory_proto::op::OpCode;
use hickory_proto::serialize::binary::DecodeError;
use policy_sync::PolicyRef;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("binding the {proto} listener on {addr}")]
    Bind {
        proto: L4Proto,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("setting {option} on the {proto} socket for {addr}")]
    SocketOption {
        option: &'static str,
        proto: L4Proto,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(
        "transparent mode needs CAP_NET_ADMIN (run fqdnd as root, or use --mode plain): \
         {option} on the {proto} socket for {addr} was refused"
    )]
    TransparentNotPermitted {
        option: &'static str,
        proto: L4Proto,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("plain mode needs an upstream server (--upstream ADDR:PORT)")]
    NoUpstream,
    #[error("malformed query from {client}")]
    MalformedQuery {
        client: SocketAddr,
        #[source]
        source: DecodeError,
    },
    #[error("query from {client} has {count} questions; exactly one is supported")]
    QuestionCount { client: SocketAddr, count: u16 },
    #[error(
        "query from {client} for {qname}: its question uses a compression pointer (into the header, \
         which the proxy rewrites); not forwarded"
    )]
    CompressedQuestion { client: SocketAddr, qname: Arc<str> },
    #[error("query from {client} has opcode {opcode}; only QUERY is proxied")]
    UnsupportedOpcode { client: SocketAddr, opcode: OpCode },
    #[error("{qname} refused by the DNS rules of {policy}")]
    Refused { qname: Arc<str>, policy: Arc<PolicyRef> },
    #[error("query for {qname} from {client} refused: its endpoint is not established ({reason})")]
    UnverifiedOrigin { client: SocketAddr, qname: Arc<str>, reason: crate::origin::Unverified },
    #[error("too many queries in flight (endpoint {endpoint:?}); query for {qname} from {client} not served")]
    Overloaded { client: SocketAddr, endpoint: Option<EndpointId>, qname: Arc<str> },
    #[error("upstream {upstream} did not answer {qname} within {timeout:?}")]
    UpstreamTimeout { upstream: SocketAddr, qname: Arc<str>, timeout: Duration },
    #[error("forwarding {qname} to upstream {upstream}")]
    UpstreamIo {
        upstream: SocketAddr,
        qname: Arc<str>,
        #[source]
        source: io::Error,
    },
    #[error("upstream {upstream} answered {qname} over TCP with something that is not a DNS response")]
    UpstreamNotAResponse { upstream: SocketAddr, qname: Arc<str> },
}
