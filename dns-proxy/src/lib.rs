//! dns-proxy: the DNS proxy that enforces `rules.dns`, answers refusals, forwards allowed queries
//! and hands answers to a [`Learner`] (the cache + datapath enforcer) before releasing them.
//!
//! Per query: source IP -> endpoint (the policy [`Snapshot`](policy_sync::Snapshot)) -> its
//! compiled `rules.dns` ([`DnsRules::decide`](policy_sync::DnsRules::decide)) for the server
//! (original destination in transparent mode, the upstream in plain mode). Not proxied (no DNS
//! rule covers that server, or the source is not a known endpoint): forwarded untouched, nothing
//! learned. Refused: answered by [`refusal`]. Allowed: forwarded ([`forwarder`]), the answer's
//! chain handed to the [`Learner`], and the answer released after its ack or
//! `response_max_delay`. Every query and answer becomes a [`DnsFlow`] for the [`FlowSink`].
//!
//! This crate knows no eBPF: the datapath sits behind the learner.

pub mod admission;
pub mod answer;
pub mod batch;
pub mod config;
pub mod decision;
pub mod error;
pub mod flow;
pub mod forwarder;
mod handler;
pub mod limits;
pub mod log_limit;
pub mod metrics;
pub mod name_lock;
mod netlink;
pub mod origin;
pub mod refusal;
mod server;
pub mod socket;
pub mod stats;
pub mod transparent;
pub mod wire;

pub use config::{Mode, ProxyConfig, RejectCode};
pub use error::ProxyError;
pub use flow::{DnsFlow, DnsFlowKind, FlowSink, Verdict, rcode_name, type_name};
pub use fqdn_cache::Learner;
pub use handler::QueryMeta;
pub use server::{Bound, ListenerInfo, Proxy, Sockets};
pub use stats::{ProxyStats, StatsSnapshot};
