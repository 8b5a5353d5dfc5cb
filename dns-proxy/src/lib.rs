//! dns-proxy: the DNS proxy that enforces `rules.dns`, answers refusals, forwards allowed queries
//! and hands answers to the cache and the datapath before releasing them.

pub mod flow;

pub use flow::{DnsFlow, DnsFlowKind, Verdict};
