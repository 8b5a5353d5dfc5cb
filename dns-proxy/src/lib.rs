//! dns-proxy: the DNS proxy that enforces `rules.dns`, answers refusals, forwards allowed queries
//! and hands answers to the cache and the datapath before releasing them.
//!
//! Per query: source IP -> endpoint ([`EndpointTable`]) -> `EndpointPolicy::dns_verdict` for the
//! server (original destination in transparent mode, the upstream in plain mode). Not proxied
//! (no DNS rule covers that server, or the source is not a known endpoint): forwarded untouched,
//! nothing learned. Refused: answered by [`refusal`]. Allowed: forwarded ([`forwarder`]), the
//! answer's chain learned through [`Learner`], the resulting delta applied by the datapath, and the
//! answer released after the ack or `response_max_delay`.

pub mod answer;
pub mod batch;
pub mod config;
pub mod endpoints;
pub mod error;
pub mod flow;
pub mod forwarder;
mod handler;
pub mod learner;
pub mod limits;
pub mod matcher;
pub mod metrics;
pub mod name_lock;
pub mod refusal;
mod server;
pub mod stats;
pub mod transparent;
pub mod wire;

pub use config::{Mode, ProxyConfig, RejectCode};
pub use endpoints::{EndpointEntry, EndpointTable};
pub use error::ProxyError;
pub use flow::{DnsFlow, DnsFlowKind, Verdict};
pub use handler::QueryMeta;
pub use learner::{Learner, NoLearner};
pub use server::{Bound, ListenerInfo, Proxy, Sockets};
pub use stats::{ProxyStats, StatsSnapshot};
