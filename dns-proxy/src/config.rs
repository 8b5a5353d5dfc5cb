//! The proxy's settings, already validated by the agent's config loader.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How queries reach the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Clients address the proxy; it forwards to the configured upstream.
    Plain,
    /// The datapath steers pods' DNS packets to the proxy's transparent sockets; the server is the
    /// packet's original destination and replies leave from that address.
    Transparent,
}

/// The response code of a refusal (Cilium's `--tofqdns-dns-reject-response-code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectCode {
    /// NXDOMAIN: musl goes on to its next search suffix (see DESIGN.md).
    #[serde(rename = "nameError")]
    NameError,
    #[serde(rename = "refused")]
    Refused,
}

/// Default `max_qps_per_endpoint`: far above what a pod's resolver sends (even with ndots:5
/// search lists), far below what saturates the proxy on a small node (benches/fairness.rs).
pub const DEFAULT_MAX_QPS_PER_ENDPOINT: u32 = 1000;
/// Default `qps_burst_per_endpoint`.
pub const DEFAULT_QPS_BURST_PER_ENDPOINT: u32 = 200;
/// Default `tcp_max_connections`.
pub const DEFAULT_TCP_MAX_CONNECTIONS: usize = 2048;
/// Default `tcp_max_connections_per_endpoint`: a resolver needs one or two; RFC 7766 clients
/// reuse their connection.
pub const DEFAULT_TCP_MAX_CONNECTIONS_PER_ENDPOINT: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProxyConfig {
    pub mode: Mode,
    /// Listening addresses; each gets a UDP and a TCP socket.
    pub listen: Vec<SocketAddr>,
    /// The server in plain mode. Ignored in transparent mode (the original destination is used).
    pub upstream: Option<SocketAddr>,
    pub reject: RejectCode,
    /// Longest wait for the datapath to acknowledge an answer's update before releasing it anyway.
    #[serde(with = "humantime_serde_compat")]
    pub response_max_delay: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub upstream_timeout: Duration,
    /// Queries in flight at once, all endpoints together.
    pub max_inflight: usize,
    /// Queries in flight at once for one endpoint (or one source address that is no endpoint),
    /// queries waiting for a permit included.
    pub max_inflight_per_endpoint: usize,
    /// Queries per second one endpoint (or one source address that is no endpoint) may send;
    /// beyond it they are shed before they take anything shared. 0: no limit.
    pub max_qps_per_endpoint: u32,
    /// Queries an endpoint may send at once above its rate (the token bucket's size).
    pub qps_burst_per_endpoint: u32,
    /// A TCP connection without a query for this long is closed (RFC 7766 6.2.3).
    #[serde(with = "humantime_serde_compat")]
    pub tcp_idle_timeout: Duration,
    /// TCP connections held at once, all clients together; at the cap the oldest idle one is
    /// closed for a new one (RFC 7766 6.2.2). Keep it below the descriptor limit.
    pub tcp_max_connections: usize,
    /// TCP connections held at once by one endpoint (or one address that is no endpoint).
    pub tcp_max_connections_per_endpoint: usize,
    /// Random-port UDP sockets per address family used towards upstreams (per receive thread).
    pub upstream_sockets: usize,
    /// Plain mode: UDP receive threads (sockets sharing each listen address); 0 = half the CPUs
    /// (at least one): the kernel's network path and the upstream need CPU too, and on a
    /// two-core machine one thread measured cheaper per query than two (benches/dnsperf.sh).
    pub udp_workers: usize,
    /// `--policy-audit-mode`: for every endpoint, refusals are reported (verdict AUDIT) and the
    /// query is forwarded. An endpoint can also be in audit mode on its own.
    pub policy_audit_mode: bool,
}

impl ProxyConfig {
    /// Defaults for plain mode towards `upstream`, listening on `listen`.
    pub fn plain(listen: Vec<SocketAddr>, upstream: SocketAddr) -> Self {
        ProxyConfig {
            mode: Mode::Plain,
            listen,
            upstream: Some(upstream),
            reject: RejectCode::NameError,
            response_max_delay: Duration::from_millis(100),
            upstream_timeout: Duration::from_secs(2),
            max_inflight: 4096,
            max_inflight_per_endpoint: 1024,
            max_qps_per_endpoint: DEFAULT_MAX_QPS_PER_ENDPOINT,
            qps_burst_per_endpoint: DEFAULT_QPS_BURST_PER_ENDPOINT,
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_max_connections: DEFAULT_TCP_MAX_CONNECTIONS,
            tcp_max_connections_per_endpoint: DEFAULT_TCP_MAX_CONNECTIONS_PER_ENDPOINT,
            upstream_sockets: 4,
            udp_workers: 0,
            policy_audit_mode: false,
        }
    }

    /// The number of UDP receive threads per listen address in plain mode.
    pub fn udp_workers(&self) -> usize {
        match self.udp_workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2)),
            n => n,
        }
    }
}

/// Durations in the effective-config log line as humantime text (`100ms`).
mod humantime_serde_compat {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{d:?}"))
    }
}
