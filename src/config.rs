//! The agent's one typed config: defaults, then the YAML file (`--config`), then flags. Every
//! problem is collected and reported together; the effective config is logged at start, under the
//! same keys, so that line is valid `--config` input. Every key has a flag of the same name and an
//! entry in docs/config.md; `config::surface` tests all three.
//!
//! Every key, its default and what it does: docs/config.md (the reference; an example file is
//! examples/quickstart/fqdnd.yaml).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dns_proxy::{Mode, ProxyConfig, RejectCode};
use serde::{Deserialize, Serialize};

/// Where `fqdnd run` listens in plain mode without `--listen` (unprivileged port).
pub const DEFAULT_PLAIN_LISTEN: &str = "127.0.0.1:5353";
/// The transparent listeners' fixed port. The datapath finds the sockets at 127.0.0.1 and ::1 on it.
pub const DEFAULT_TRANSPARENT_PORT: u16 = 10053;
/// The largest `allow-map-size` accepted: 16 Mi entries (about 0.75 GiB of kernel memory per map).
pub const MAX_ALLOW_MAP_SIZE: u32 = 1 << 24;
/// The policy directory used when none is configured, if it exists.
pub const DEFAULT_POLICIES: &str = "policies";

/// The config file as written. Every field optional: the file only overrides defaults.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub mode: Option<String>,
    pub listen: Option<Vec<String>>,
    pub upstream: Option<String>,
    pub policies: Option<PathBuf>,
    pub endpoints: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub dns_reject_response_code: Option<String>,
    pub response_max_delay: Option<String>,
    pub upstream_timeout: Option<String>,
    pub tcp_idle_timeout: Option<String>,
    pub max_tcp_connections: Option<usize>,
    pub max_tcp_connections_per_endpoint: Option<usize>,
    pub min_ttl: Option<u32>,
    pub max_ttl: Option<u32>,
    pub max_inflight: Option<usize>,
    pub max_inflight_per_endpoint: Option<usize>,
    pub max_qps_per_endpoint: Option<u32>,
    pub qps_burst_per_endpoint: Option<u32>,
    pub policy_poll_interval: Option<String>,
    /// Plain mode: UDP receive threads per listen address (0 = half the CPUs, at least one).
    pub udp_workers: Option<usize>,
    pub metrics_addr: Option<String>,
    pub bpffs_dir: Option<PathBuf>,
    pub fqdn_scope: Option<String>,
    pub max_ips_per_name: Option<usize>,
    pub idle_connection_grace_period: Option<String>,
    pub max_zombies: Option<usize>,
    pub max_learned_per_endpoint: Option<usize>,
    pub allow_map_size: Option<u32>,
    pub deny_response: Option<String>,
    pub policy_audit_mode: Option<bool>,
    pub cache_snapshot_interval: Option<String>,
    pub flow_ring_size: Option<usize>,
    pub flow_follower_queue: Option<usize>,
    pub node_name: Option<String>,
    pub print_flows: Option<String>,
    pub hubble_listen: Option<String>,
    pub hubble_metrics: Option<fqdnd::hubble::MetricsSetting>,
    pub source: Option<String>,
    pub kubeconfig: Option<PathBuf>,
}

/// Flags of `fqdnd run`; each overrides the file's value.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Flags {
    /// YAML config file; flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory (or file) of CiliumNetworkPolicies; re-read when it changes. Default: ./policies if present.
    #[arg(long, value_name = "DIR")]
    pub policies: Option<PathBuf>,
    /// Endpoints file: the workloads fqdnd polices, with their IPs (source IP -> endpoint).
    #[arg(long, value_name = "FILE")]
    pub endpoints: Option<PathBuf>,
    /// Listening address, UDP and TCP (repeatable). Default: 127.0.0.1:5353 (plain),
    /// 127.0.0.1:10053 and [::1]:10053 (transparent).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<String>,
    /// Upstream DNS server in plain mode. Default: the first nameserver of /etc/resolv.conf.
    #[arg(long, value_name = "ADDR:PORT")]
    pub upstream: Option<String>,
    /// plain: clients address fqdnd. transparent: the datapath steers pods' DNS to fqdnd (root).
    #[arg(long, value_name = "plain|transparent")]
    pub mode: Option<String>,
    /// Directory for the admin socket and snapshots.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Response code of refused queries: nameError (NXDOMAIN, default) or refused.
    #[arg(long, value_name = "nameError|refused")]
    pub dns_reject_response_code: Option<String>,
    /// Longest an answer waits for the datapath's ack before release (default 100ms).
    #[arg(long, value_name = "DURATION")]
    pub response_max_delay: Option<String>,
    /// Lowest TTL (seconds) learned IPs are kept for.
    #[arg(long, value_name = "SECONDS")]
    pub min_ttl: Option<u32>,
    /// Highest TTL (seconds) learned IPs are kept for, also for restored snapshots (default 86400).
    #[arg(long, value_name = "SECONDS")]
    pub max_ttl: Option<u32>,
    /// Queries in flight at once (all endpoints).
    #[arg(long, value_name = "N")]
    pub max_inflight: Option<usize>,
    /// TCP connections held at once (default 2048, and below the descriptor limit); at the cap
    /// the oldest idle one is closed for a new one.
    #[arg(long, value_name = "N")]
    pub max_tcp_connections: Option<usize>,
    /// TCP connections one endpoint may hold at once (default 64).
    #[arg(long, value_name = "N")]
    pub max_tcp_connections_per_endpoint: Option<usize>,
    /// Queries per second one endpoint may send (default 1000; 0: no limit); beyond it they are
    /// shed before they take anything the other endpoints need.
    #[arg(long, value_name = "N")]
    pub max_qps_per_endpoint: Option<u32>,
    /// Queries an endpoint may send at once above its rate (default 200).
    #[arg(long, value_name = "N")]
    pub qps_burst_per_endpoint: Option<u32>,
    /// Upstream answer timeout; SERVFAIL after it (default 2s).
    #[arg(long, value_name = "DURATION")]
    pub upstream_timeout: Option<String>,
    /// Address of /metrics, /healthz and /readyz (default 127.0.0.1:9967; "none": off).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<String>,
    /// Transparent mode: bpffs directory for the datapath's pinned maps and links.
    #[arg(long, value_name = "DIR")]
    pub bpffs_dir: Option<PathBuf>,
    /// Whose lookups a toFQDNs selector sees: endpoint (its own, default) or node (Cilium's).
    #[arg(long, value_name = "endpoint|node")]
    pub fqdn_scope: Option<String>,
    /// IPs kept per name and endpoint (default 1000; the earliest-expiring go first).
    #[arg(long, value_name = "N")]
    pub max_ips_per_name: Option<usize>,
    /// How recently a connection must have used an expired IP to keep it (default 0s).
    #[arg(long, value_name = "DURATION")]
    pub idle_connection_grace_period: Option<String>,
    /// Expired-but-used IPs kept per endpoint (default 10000).
    #[arg(long, value_name = "N")]
    pub max_zombies: Option<usize>,
    /// Name/IP entries one endpoint's lookups may hold (default 10000); at it, its own oldest idle
    /// entries make room, so no pod fills the allow maps for the others.
    #[arg(long, value_name = "N")]
    pub max_learned_per_endpoint: Option<usize>,
    /// Transparent mode: entries each allow map (IPv4, IPv6) holds for all endpoints (default 262144).
    #[arg(long, value_name = "N")]
    pub allow_map_size: Option<u32>,
    /// Transparent mode: what a packet egress policy denies gets: drop (default, Cilium's), or
    /// reject (a TCP RST, an ICMP port unreachable for UDP: the pod fails at once).
    #[arg(long, value_name = "drop|reject")]
    pub deny_response: Option<String>,
    /// Audit mode for every endpoint (Cilium's policy-audit-mode): nothing is dropped or refused;
    /// what would have been shows as a flow with verdict AUDIT. One endpoint alone: its
    /// endpoints-file field `policy-audit-mode: true`.
    #[arg(long)]
    pub policy_audit_mode: bool,
    /// Flows kept for `fqdnd observe` (default 4096); 0 turns DNS flows off (they cost per query).
    #[arg(long, value_name = "N")]
    pub flow_ring_size: Option<usize>,
    /// How long an idle TCP DNS connection from a client is kept open (default 10s).
    #[arg(long, value_name = "DURATION")]
    pub tcp_idle_timeout: Option<String>,
    /// Queries in flight at once per endpoint (default: a quarter of --max-inflight).
    #[arg(long, value_name = "N")]
    pub max_inflight_per_endpoint: Option<usize>,
    /// How often the policy directory and endpoints file are rescanned for changes (default 10s). Changes apply at once through inotify; this rescan catches what inotify cannot see (or all of it, where inotify is unavailable), and costs about 50 ms of CPU per 10,000 files.
    #[arg(long, value_name = "DURATION")]
    pub policy_poll_interval: Option<String>,
    /// Plain mode: UDP receive threads per listen address (0, the default: half the CPUs).
    #[arg(long, value_name = "N")]
    pub udp_workers: Option<usize>,
    /// How often the learned cache is written to the state directory (default 60s).
    #[arg(long, value_name = "DURATION")]
    pub cache_snapshot_interval: Option<String>,
    /// Print every flow on stdout as it happens: none (default), compact or json (as `fqdnd
    /// observe -f` would).
    #[arg(long, value_name = "none|compact|json")]
    pub print_flows: Option<String>,
    /// Flows queued per live follower (observe -f, GetFlows follow) before it loses them and is
    /// told so (default 1024); publishing never waits on a follower.
    #[arg(long, value_name = "N")]
    pub flow_follower_queue: Option<usize>,
    /// Hubble's Observer API (gRPC): unix:PATH or HOST:PORT (default unix:<state-dir>/hubble.sock;
    /// "none": off). TCP is plain gRPC: listen on addresses only trusted clients reach.
    #[arg(long, value_name = "ADDR")]
    pub hubble_listen: Option<String>,
    /// Hubble's metrics on /metrics, in Hubble's --metrics syntax: dns,drop,flow, with options such
    /// as dns:sourceContext=namespace;ignoreAAAA (default: none).
    #[arg(long, value_name = "LIST")]
    pub hubble_metrics: Option<String>,
    /// Where policies and endpoints come from: files (--policies, --endpoints) or kubernetes
    /// (the API server). Default: kubernetes in a pod (KUBERNETES_SERVICE_HOST set), else files.
    #[arg(long, value_name = "files|kubernetes")]
    pub source: Option<String>,
    /// Kubernetes: the kubeconfig to use. Default: $KUBECONFIG, ~/.kube/config, then the pod's
    /// ServiceAccount (in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name: its pods are the local endpoints (Kubernetes), and flows carry it.
    /// Default: $NODE_NAME (the DaemonSet sets it from spec.nodeName), then the host name.
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Restart without losing a query: if another agent runs on this state directory, take over
    /// its listening sockets and locks, then tell it to stop. Without one, start as usual.
    #[arg(long)]
    pub takeover: bool,
}

/// Where policies and endpoints come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// The policy directory and the endpoints file.
    Files,
    /// The API server (CNP, CCNP, Pods, Namespaces, this Node).
    Kubernetes,
}

/// The effective configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    #[serde(flatten, serialize_with = "display::display_proxy")]
    pub proxy: ProxyConfig,
    pub policies: Option<PathBuf>,
    pub endpoints: Option<PathBuf>,
    pub state_dir: PathBuf,
    #[serde(flatten, serialize_with = "display::display_cache")]
    pub cache: fqdn_cache::CacheConfig,
    #[serde(serialize_with = "display::display_duration")]
    pub policy_poll_interval: Duration,
    #[serde(serialize_with = "display::display_duration")]
    pub cache_snapshot_interval: Duration,
    #[serde(serialize_with = "display::display_metrics_addr")]
    pub metrics_addr: Option<SocketAddr>,
    pub bpffs_dir: PathBuf,
    pub allow_map_size: u32,
    #[serde(serialize_with = "display::display_value")]
    pub deny_response: ebpf_redirect::DenyResponse,
    pub flow_ring_size: usize,
    pub flow_follower_queue: usize,
    pub node_name: String,
    pub hubble_listen: Option<fqdnd::hubble::ListenAddr>,
    pub hubble_metrics: fqdnd::hubble::MetricsConfig,
    pub source: SourceKind,
    pub kubeconfig: Option<PathBuf>,
    /// `--takeover`: replace the agent running on this state directory (the restart handover).
    /// An action of this start, not a setting: not logged, no file key.
    #[serde(skip)]
    pub takeover: bool,
    pub print_flows: PrintFlows,
}

/// `print-flows`: the agent prints flows on its stdout (the quickstart shows them this way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PrintFlows {
    #[default]
    None,
    Compact,
    Json,
}

impl std::str::FromStr for PrintFlows {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(PrintFlows::None),
            "compact" => Ok(PrintFlows::Compact),
            "json" => Ok(PrintFlows::Json),
            other => Err(format!("{other:?} is not none, compact or json")),
        }
    }
}

/// Every problem found in the config, each naming its source and key.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration ({} problem{}):", self.0.len(), if self.0.len() == 1 { "" } else { "s" })?;
        for p in &self.0 {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// What the environment supplies to defaults (injected so tests need not touch the real machine).
#[derive(Clone, Debug)]
pub struct Environment {
    pub resolv_conf: PathBuf,
    pub cwd: PathBuf,
    pub default_state_dir: PathBuf,
    /// Running in a pod (KUBERNETES_SERVICE_HOST is set): Kubernetes is the default source.
    pub in_cluster: bool,
}

impl Environment {
    pub fn system() -> Self {
        Environment {
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            default_state_dir: fqdnd::admin::default_state_dir(),
            in_cluster: std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty()),
        }
    }
}

/// Read the config file named by `--config`, if any.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigErrors> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigErrors(vec![format!("{}: reading: {e}", path.display())]))?;
    parse_file(path, &text)
}

pub fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigErrors> {
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_norway::from_str(text).map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))
}

/// Merge file and flags over the defaults and validate everything.
pub fn resolve(file: &FileConfig, flags: &Flags, env: &Environment) -> Result<Config, ConfigErrors> {
    let mut problems = Vec::new();
    let src = |flag: bool, key: &str| if flag { format!("--{key}") } else { format!("config {key}") };

    macro_rules! pick {
        ($flag:expr, $file:expr, $key:literal) => {
            match ($flag, $file) {
                (Some(v), _) => Some((v, src(true, $key))),
                (None, Some(v)) => Some((v, src(false, $key))),
                (None, None) => None,
            }
        };
    }

    let mode = match pick!(flags.mode.clone(), file.mode.clone(), "mode") {
        None => Mode::Plain,
        Some((v, from)) => match v.as_str() {
            "plain" => Mode::Plain,
            "transparent" => Mode::Transparent,
            other => {
                problems.push(format!("{from}: {other:?} is not a mode; expected plain or transparent"));
                Mode::Plain
            }
        },
    };

    let listen_raw: Option<(Vec<String>, String)> = if !flags.listen.is_empty() {
        Some((flags.listen.clone(), src(true, "listen")))
    } else {
        file.listen.clone().map(|l| (l, src(false, "listen")))
    };
    let listen = match listen_raw {
        Some((list, from)) => {
            if list.is_empty() {
                problems.push(format!("{from}: at least one address is needed"));
            }
            list.iter()
                .filter_map(|a| match a.parse::<SocketAddr>() {
                    Ok(addr) => Some(addr),
                    Err(_) => {
                        problems.push(format!("{from}: {a:?} is not ADDR:PORT (IPv6 as [::1]:53)"));
                        None
                    }
                })
                .collect()
        }
        None => match mode {
            Mode::Plain => vec![DEFAULT_PLAIN_LISTEN.parse().expect("literal")],
            Mode::Transparent => vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_TRANSPARENT_PORT),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), DEFAULT_TRANSPARENT_PORT),
            ],
        },
    };

    let upstream = match pick!(flags.upstream.clone(), file.upstream.clone(), "upstream") {
        Some((v, from)) => match parse_server(&v) {
            Some(a) => Some(a),
            None => {
                problems.push(format!("{from}: {v:?} is not ADDR:PORT or ADDR (port 53)"));
                None
            }
        },
        None if mode == Mode::Plain => match first_nameserver(&env.resolv_conf) {
            Ok(a) => Some(a),
            Err(e) => {
                problems.push(format!("upstream: not configured and {e}; set --upstream ADDR:PORT"));
                None
            }
        },
        None => None,
    };

    let reject = match pick!(
        flags.dns_reject_response_code.clone(),
        file.dns_reject_response_code.clone(),
        "dns-reject-response-code"
    ) {
        None => RejectCode::NameError,
        Some((v, from)) => match v.as_str() {
            "nameError" => RejectCode::NameError,
            "refused" => RejectCode::Refused,
            other => {
                problems.push(format!("{from}: {other:?} is not a response code; expected nameError or refused"));
                RejectCode::NameError
            }
        },
    };

    let mut duration = |flag: &Option<String>, filev: &Option<String>, key: &str, default: Duration| {
        let (v, from) = match (flag, filev) {
            (Some(v), _) => (v, src(true, key)),
            (None, Some(v)) => (v, src(false, key)),
            (None, None) => return default,
        };
        match humantime::parse_duration(v) {
            Ok(d) if d.is_zero() => {
                problems.push(format!("{from}: must be more than zero"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("{from}: {v:?} is not a duration (e.g. 100ms, 2s): {e}"));
                default
            }
        }
    };
    let response_max_delay =
        duration(&flags.response_max_delay, &file.response_max_delay, "response-max-delay", Duration::from_millis(100));
    let upstream_timeout =
        duration(&flags.upstream_timeout, &file.upstream_timeout, "upstream-timeout", Duration::from_secs(2));
    let tcp_idle_timeout =
        duration(&flags.tcp_idle_timeout, &file.tcp_idle_timeout, "tcp-idle-timeout", Duration::from_secs(10));
    let policy_poll_interval = duration(
        &flags.policy_poll_interval,
        &file.policy_poll_interval,
        "policy-poll-interval",
        Duration::from_secs(10),
    );
    let cache_snapshot_interval = duration(
        &flags.cache_snapshot_interval,
        &file.cache_snapshot_interval,
        "cache-snapshot-interval",
        Duration::from_secs(60),
    );

    let max_inflight = flags.max_inflight.or(file.max_inflight).unwrap_or(4096);
    if max_inflight == 0 {
        problems.push(format!("{}: must be at least 1", src(flags.max_inflight.is_some(), "max-inflight")));
    }
    let max_inflight_per_endpoint =
        flags.max_inflight_per_endpoint.or(file.max_inflight_per_endpoint).unwrap_or((max_inflight / 4).max(1));
    if max_inflight_per_endpoint == 0 || max_inflight_per_endpoint > max_inflight.max(1) {
        problems.push(format!(
            "{}: {max_inflight_per_endpoint} must be between 1 and max-inflight ({max_inflight})",
            src(flags.max_inflight_per_endpoint.is_some(), "max-inflight-per-endpoint")
        ));
    }

    let max_qps_per_endpoint = flags
        .max_qps_per_endpoint
        .or(file.max_qps_per_endpoint)
        .unwrap_or(dns_proxy::config::DEFAULT_MAX_QPS_PER_ENDPOINT);
    let qps_burst_per_endpoint = flags
        .qps_burst_per_endpoint
        .or(file.qps_burst_per_endpoint)
        .unwrap_or(dns_proxy::config::DEFAULT_QPS_BURST_PER_ENDPOINT);
    if qps_burst_per_endpoint == 0 && max_qps_per_endpoint > 0 {
        problems.push(format!(
            "{}: must be at least 1 (or turn the limit off with max-qps-per-endpoint: 0)",
            src(flags.qps_burst_per_endpoint.is_some(), "qps-burst-per-endpoint")
        ));
    }
    let max_tcp = flags.max_tcp_connections.or(file.max_tcp_connections);
    let max_tcp_src = src(flags.max_tcp_connections.is_some(), "max-tcp-connections");
    let tcp_max_connections = max_tcp.unwrap_or(dns_proxy::config::DEFAULT_TCP_MAX_CONNECTIONS);
    let max_tcp_ep = flags.max_tcp_connections_per_endpoint.or(file.max_tcp_connections_per_endpoint);
    let max_tcp_ep_src = src(flags.max_tcp_connections_per_endpoint.is_some(), "max-tcp-connections-per-endpoint");
    let tcp_max_connections_per_endpoint = max_tcp_ep
        .unwrap_or(dns_proxy::config::DEFAULT_TCP_MAX_CONNECTIONS_PER_ENDPOINT.min(tcp_max_connections.max(1)));
    if tcp_max_connections == 0 {
        problems.push(format!("{max_tcp_src}: must be at least 1"));
    }
    if tcp_max_connections_per_endpoint == 0 || tcp_max_connections_per_endpoint > tcp_max_connections.max(1) {
        problems.push(format!(
            "{max_tcp_ep_src}: {tcp_max_connections_per_endpoint} must be between 1 and max-tcp-connections \
             ({tcp_max_connections})"
        ));
    }

    let policies = match (&flags.policies, &file.policies) {
        (Some(p), _) | (None, Some(p)) => {
            if !p.exists() {
                problems.push(format!("{}: {} does not exist", src(flags.policies.is_some(), "policies"), p.display()));
            }
            Some(p.clone())
        }
        (None, None) => Some(env.cwd.join(DEFAULT_POLICIES)).filter(|p| p.is_dir()),
    };
    let endpoints = match (&flags.endpoints, &file.endpoints) {
        (Some(p), _) | (None, Some(p)) => {
            if !p.is_file() {
                problems.push(format!(
                    "{}: {} is not a file",
                    src(flags.endpoints.is_some(), "endpoints"),
                    p.display()
                ));
            }
            Some(p.clone())
        }
        (None, None) => None,
    };
    let state_dir = flags.state_dir.clone().or(file.state_dir.clone()).unwrap_or_else(|| env.default_state_dir.clone());

    let metrics_addr = match pick!(flags.metrics_addr.clone(), file.metrics_addr.clone(), "metrics-addr") {
        None => Some(fqdnd::metrics::DEFAULT_METRICS_ADDR.parse().expect("literal")),
        Some((v, _)) if v == "none" => None,
        Some((v, from)) => match v.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(format!("{from}: {v:?} is not ADDR:PORT (or \"none\")"));
                None
            }
        },
    };
    let fqdn_scope = match pick!(flags.fqdn_scope.clone(), file.fqdn_scope.clone(), "fqdn-scope") {
        None => fqdn_cache::Scope::Endpoint,
        Some((v, from)) => v.parse().unwrap_or_else(|e| {
            problems.push(format!("{from}: {e}"));
            fqdn_cache::Scope::Endpoint
        }),
    };
    let idle_grace = match pick!(
        flags.idle_connection_grace_period.clone(),
        file.idle_connection_grace_period.clone(),
        "idle-connection-grace-period"
    ) {
        None => Duration::ZERO,
        Some((v, from)) => humantime::parse_duration(&v).unwrap_or_else(|e| {
            problems.push(format!("{from}: {v:?} is not a duration (e.g. 30s): {e}"));
            Duration::ZERO
        }),
    };
    let defaults = fqdn_cache::CacheConfig::default();
    let min_ttl = flags.min_ttl.or(file.min_ttl).unwrap_or(0);
    let max_ttl = flags.max_ttl.or(file.max_ttl).unwrap_or(defaults.max_ttl);
    let max_ttl_src = src(flags.max_ttl.is_some(), "max-ttl");
    if max_ttl == 0 {
        problems.push(format!("{max_ttl_src}: must be at least 1 second"));
    } else if min_ttl > max_ttl {
        let min_src = src(flags.min_ttl.is_some(), "min-ttl");
        problems.push(format!("{max_ttl_src}: {max_ttl} is below {min_src} ({min_ttl})"));
    }
    let cache = fqdn_cache::CacheConfig {
        min_ttl,
        max_ttl,
        max_ips_per_name: flags.max_ips_per_name.or(file.max_ips_per_name).unwrap_or(defaults.max_ips_per_name),
        scope: fqdn_scope,
        idle_grace,
        max_zombies: flags.max_zombies.or(file.max_zombies).unwrap_or(defaults.max_zombies),
        max_learned_per_endpoint: match pick!(
            flags.max_learned_per_endpoint,
            file.max_learned_per_endpoint,
            "max-learned-per-endpoint"
        ) {
            None => defaults.max_learned_per_endpoint,
            Some((0, from)) => {
                problems.push(format!("{from}: must be at least 1"));
                defaults.max_learned_per_endpoint
            }
            Some((n, _)) => n,
        },
    };
    let deny_response = match pick!(flags.deny_response.clone(), file.deny_response.clone(), "deny-response") {
        None => ebpf_redirect::DenyResponse::Drop,
        Some((v, from)) => v.parse().unwrap_or_else(|e| {
            problems.push(format!("{from}: {e}"));
            ebpf_redirect::DenyResponse::Drop
        }),
    };
    let allow_map_size = match pick!(flags.allow_map_size, file.allow_map_size, "allow-map-size") {
        None => ebpf_redirect::MapSizes::DEFAULT.allow,
        Some((n, from)) if !(1..=MAX_ALLOW_MAP_SIZE).contains(&n) => {
            problems.push(format!("{from}: {n} must be between 1 and {MAX_ALLOW_MAP_SIZE}"));
            ebpf_redirect::MapSizes::DEFAULT.allow
        }
        Some((n, _)) => n,
    };
    let flow_ring_size =
        flags.flow_ring_size.or(file.flow_ring_size).unwrap_or(fqdnd::flows::hub::DEFAULT_RING_CAPACITY);
    let flow_follower_queue =
        flags.flow_follower_queue.or(file.flow_follower_queue).unwrap_or(fqdnd::flows::hub::DEFAULT_FOLLOWER_QUEUE);
    if flow_follower_queue == 0 {
        problems
            .push(format!("{}: must be at least 1", src(flags.flow_follower_queue.is_some(), "flow-follower-queue")));
    }
    let node_name =
        flags.node_name.clone().or(file.node_name.clone()).filter(|n| !n.is_empty()).unwrap_or_else(hostname);
    let source = match pick!(flags.source.clone(), file.source.clone(), "source") {
        None if env.in_cluster => SourceKind::Kubernetes,
        None => SourceKind::Files,
        Some((v, from)) => match v.as_str() {
            "files" => SourceKind::Files,
            "kubernetes" => SourceKind::Kubernetes,
            other => {
                problems.push(format!("{from}: {other:?} is not a source; expected files or kubernetes"));
                SourceKind::Files
            }
        },
    };
    let kubeconfig = flags.kubeconfig.clone().or(file.kubeconfig.clone());
    if source == SourceKind::Kubernetes {
        for (given, flag, key) in [
            (flags.policies.is_some() || file.policies.is_some(), flags.policies.is_some(), "policies"),
            (flags.endpoints.is_some() || file.endpoints.is_some(), flags.endpoints.is_some(), "endpoints"),
        ] {
            if given {
                problems
                    .push(format!("{}: only for --source files; Kubernetes mode reads the API server", src(flag, key)));
            }
        }
        if node_name.is_empty() {
            problems
                .push("node-name: unknown (no --node-name, NODE_NAME or host name); Kubernetes mode needs it".into());
        }
        if let Some(k) = &kubeconfig
            && !k.is_file()
        {
            problems.push(format!("{}: {} is not a file", src(flags.kubeconfig.is_some(), "kubeconfig"), k.display()));
        }
    } else if kubeconfig.is_some() {
        problems.push(format!("{}: only for --source kubernetes", src(flags.kubeconfig.is_some(), "kubeconfig")));
    }
    let print_flows = match pick!(flags.print_flows.clone(), file.print_flows.clone(), "print-flows") {
        None => PrintFlows::None,
        Some((v, from)) => v.parse().unwrap_or_else(|e| {
            problems.push(format!("{from}: {e}"));
            PrintFlows::None
        }),
    };

    let hubble_listen = match pick!(flags.hubble_listen.clone(), file.hubble_listen.clone(), "hubble-listen") {
        None => Some(fqdnd::hubble::ListenAddr::default_in(&state_dir)),
        Some((v, _)) if v == "none" => None,
        Some((v, from)) => match v.parse::<fqdnd::hubble::ListenAddr>() {
            Ok(fqdnd::hubble::ListenAddr::Unix(p)) if p == fqdnd::admin::socket_path(&state_dir) => {
                problems.push(format!("{from}: {} is the admin socket", p.display()));
                None
            }
            Ok(a) => Some(a),
            Err(e) => {
                problems.push(format!("{from}: {e} (or \"none\")"));
                None
            }
        },
    };
    let hubble_metrics = match pick!(
        flags.hubble_metrics.clone().map(fqdnd::hubble::MetricsSetting::One),
        file.hubble_metrics.clone(),
        "hubble-metrics"
    ) {
        None => fqdnd::hubble::MetricsConfig::default(),
        Some((v, from)) => match fqdnd::hubble::MetricsConfig::parse(&v) {
            Ok(m) if !m.is_empty() && metrics_addr.is_none() => {
                problems.push(format!("{from}: Hubble's metrics are served on /metrics, but metrics-addr is none"));
                m
            }
            Ok(m) => m,
            Err(ps) => {
                problems.extend(ps.into_iter().map(|p| format!("{from}: {p}")));
                fqdnd::hubble::MetricsConfig::default()
            }
        },
    };

    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    Ok(Config {
        proxy: ProxyConfig {
            mode,
            listen,
            upstream,
            reject,
            response_max_delay,
            upstream_timeout,
            max_inflight,
            max_inflight_per_endpoint,
            max_qps_per_endpoint,
            qps_burst_per_endpoint,
            tcp_idle_timeout,
            tcp_max_connections,
            tcp_max_connections_per_endpoint,
            upstream_sockets: 4,
            udp_workers: flags.udp_workers.or(file.udp_workers).unwrap_or(0),
            policy_audit_mode: flags.policy_audit_mode || file.policy_audit_mode.unwrap_or(false),
        },
        // The default ./policies directory is for the files source only.
        policies: policies.filter(|_| source == SourceKind::Files),
        endpoints,
        state_dir,
        cache,
        policy_poll_interval,
        cache_snapshot_interval,
        metrics_addr,
        bpffs_dir: flags
            .bpffs_dir
            .clone()
            .or(file.bpffs_dir.clone())
            .unwrap_or_else(|| PathBuf::from(ebpf_redirect::AyaConfig::DEFAULT_DIR)),
        allow_map_size,
        deny_response,
        flow_ring_size,
        flow_follower_queue,
        node_name,
        print_flows,
        hubble_listen,
        hubble_metrics,
        source,
        kubeconfig,
        takeover: flags.takeover,
    })
}

/// The host name (flows' `node_name`), empty if unknown.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// `ADDR:PORT`, `[V6]:PORT`, or a bare address meaning port 53.
fn parse_server(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().or_else(|| text.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

/// The first `nameserver` of a resolv.conf, port 53.
pub fn first_nameserver(path: &Path) -> Result<SocketAddr, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{} is unreadable: {e}", path.display()))?;
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()).flatten()
        })
        // A scoped link-local address (fe80::1%eth0) is valid for resolv.conf but not for std.
        .find_map(|w| w.split('%').next().and_then(|ip| ip.parse::<IpAddr>().ok()))
        .map(|ip| SocketAddr::new(ip, 53))
        .ok_or_else(|| format!("{} lists no nameserver", path.display()))
}

mod display;
#[cfg(test)]
mod surface;

#[cfg(test)]
mod tests;
