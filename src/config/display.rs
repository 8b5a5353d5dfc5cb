//! How the effective configuration is logged: every setting under its file key, durations and
//! addresses as people write them, so the logged line reads back as `--config`.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use dns_proxy::{Mode, ProxyConfig, RejectCode};
use serde::Serialize;

pub(super) fn display_value<S: serde::Serializer, T: fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// The proxy's settings under their keys, as `--config` reads them.
pub(super) fn display_proxy<S: serde::Serializer>(p: &ProxyConfig, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    #[serde(rename_all = "kebab-case")]
    struct View {
        mode: &'static str,
        listen: Vec<String>,
        upstream: Option<String>,
        dns_reject_response_code: &'static str,
        #[serde(serialize_with = "display_duration")]
        response_max_delay: Duration,
        #[serde(serialize_with = "display_duration")]
        upstream_timeout: Duration,
        #[serde(serialize_with = "display_duration")]
        tcp_idle_timeout: Duration,
        max_inflight: usize,
        max_inflight_per_endpoint: usize,
        max_qps_per_endpoint: u32,
        qps_burst_per_endpoint: u32,
        max_tcp_connections: usize,
        max_tcp_connections_per_endpoint: usize,
        udp_workers: usize,
        policy_audit_mode: bool,
    }
    View {
        mode: match p.mode {
            Mode::Plain => "plain",
            Mode::Transparent => "transparent",
        },
        listen: p.listen.iter().map(ToString::to_string).collect(),
        upstream: p.upstream.map(|u| u.to_string()),
        dns_reject_response_code: match p.reject {
            RejectCode::NameError => "nameError",
            RejectCode::Refused => "refused",
        },
        response_max_delay: p.response_max_delay,
        upstream_timeout: p.upstream_timeout,
        tcp_idle_timeout: p.tcp_idle_timeout,
        max_inflight: p.max_inflight,
        max_inflight_per_endpoint: p.max_inflight_per_endpoint,
        max_qps_per_endpoint: p.max_qps_per_endpoint,
        qps_burst_per_endpoint: p.qps_burst_per_endpoint,
        max_tcp_connections: p.tcp_max_connections,
        max_tcp_connections_per_endpoint: p.tcp_max_connections_per_endpoint,
        udp_workers: p.udp_workers,
        policy_audit_mode: p.policy_audit_mode,
    }
    .serialize(s)
}

/// Off is `none`, as the key takes it (null would mean "the default").
pub(super) fn display_metrics_addr<S: serde::Serializer>(a: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match a {
        Some(a) => s.collect_str(a),
        None => s.serialize_str("none"),
    }
}

pub(super) fn display_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// The cache settings under their flag names, durations as people write them (`30s`, not
/// `{secs, nanos}`).
pub(super) fn display_cache<S: serde::Serializer>(c: &fqdn_cache::CacheConfig, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    #[serde(rename_all = "kebab-case")]
    struct View {
        min_ttl: u32,
        max_ttl: u32,
        max_ips_per_name: usize,
        fqdn_scope: fqdn_cache::Scope,
        #[serde(serialize_with = "display_duration")]
        idle_connection_grace_period: Duration,
        max_zombies: usize,
        max_learned_per_endpoint: usize,
    }
    View {
        min_ttl: c.min_ttl,
        max_ttl: c.max_ttl,
        max_ips_per_name: c.max_ips_per_name,
        fqdn_scope: c.scope,
        idle_connection_grace_period: c.idle_grace,
        max_zombies: c.max_zombies,
        max_learned_per_endpoint: c.max_learned_per_endpoint,
    }
    .serialize(s)
}
