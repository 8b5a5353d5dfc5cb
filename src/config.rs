//! The agent's one typed config: defaults, then the YAML file (`--config`), then flags. Every
//! problem is collected and reported together; the effective config is logged at start, under the
//! same keys, so that line is valid `--config` input. Every key has a flag of the same name and an
//! entry in docs/config.md; `config::surface` tests all three.
//!
//! ```yaml
//! mode: plain                      # plain | transparent
//! listen: ["127.0.0.1:5353"]       # UDP + TCP each
//! upstream: "10.96.0.10:53"        # plain mode; default: first nameserver of /etc/resolv.conf
//! policies: ./policies             # directory (or file) of CiliumNetworkPolicies, re-read on change
//! endpoints: ./endpoints.yaml      # source IP -> endpoint (see policy_sync::endpoint)
//! state-dir: /run/fqdnd
//! dns-reject-response-code: nameError   # nameError | refused
//! response-max-delay: 100ms
//! upstream-timeout: 2s
//! tcp-idle-timeout: 10s
//! min-ttl: 0                       # seconds
//! max-inflight: 4096
//! max-inflight-per-endpoint: 1024
//! policy-poll-interval: 1s
//! udp-workers: 0                  # plain mode: UDP receive threads (0 = half the CPUs)
//! metrics-addr: 127.0.0.1:9967     # /metrics, /healthz, /readyz; "none" turns it off
//! bpffs-dir: /sys/fs/bpf/fqdnd     # transparent mode: where the datapath pins maps and links
//! fqdn-scope: endpoint             # endpoint | node: whose lookups a toFQDNs selector sees
//! max-ips-per-name: 1000
//! idle-connection-grace-period: 0s
//! max-zombies: 10000
//! cache-snapshot-interval: 60s
//! flow-ring-size: 4096             # flows kept for `fqdnd observe`; 0: no DNS flows are built
//! flow-follower-queue: 1024        # flows queued per live follower before it loses them
//! node-name: ""                    # in every flow; default: the host name
//! print-flows: none                # compact | json: the agent prints every flow on stdout
//! hubble-listen: unix:/run/fqdnd/hubble.sock  # Hubble's Observer API (gRPC): unix:PATH or HOST:PORT;
//!                                  # default <state-dir>/hubble.sock; "none" turns it off
//! hubble-metrics: [dns, drop, flow] # Hubble's metrics on /metrics (Hubble's --metrics syntax); default none
//! ```

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
    pub min_ttl: Option<u32>,
    pub max_inflight: Option<usize>,
    pub max_inflight_per_endpoint: Option<usize>,
    pub policy_poll_interval: Option<String>,
    /// Plain mode: UDP receive threads per listen address (0 = half the CPUs, at least one).
    pub udp_workers: Option<usize>,
    pub metrics_addr: Option<String>,
    pub bpffs_dir: Option<PathBuf>,
    pub fqdn_scope: Option<String>,
    pub max_ips_per_name: Option<usize>,
    pub idle_connection_grace_period: Option<String>,
    pub max_zombies: Option<usize>,
    pub cache_snapshot_interval: Option<String>,
    pub flow_ring_size: Option<usize>,
    pub flow_follower_queue: Option<usize>,
    pub node_name: Option<String>,
    pub print_flows: Option<String>,
    pub hubble_listen: Option<String>,
    pub hubble_metrics: Option<fqdnd::hubble::MetricsSetting>,
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
    /// Queries in flight at once (all endpoints).
    #[arg(long, value_name = "N")]
    pub max_inflight: Option<usize>,
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
    /// Flows kept for `fqdnd observe` (default 4096); 0 turns DNS flows off (they cost per query).
    #[arg(long, value_name = "N")]
    pub flow_ring_size: Option<usize>,
    /// How long an idle TCP DNS connection from a client is kept open (default 10s).
    #[arg(long, value_name = "DURATION")]
    pub tcp_idle_timeout: Option<String>,
    /// Queries in flight at once per endpoint (default: a quarter of --max-inflight).
    #[arg(long, value_name = "N")]
    pub max_inflight_per_endpoint: Option<usize>,
    /// How often the policy directory and endpoints file are checked for changes (default 1s).
    #[arg(long, value_name = "DURATION")]
    pub policy_poll_interval: Option<String>,
    /// Plain mode: UDP receive threads per listen address (0, the default: half the CPUs).
    #[arg(long, value_name = "N")]
    pub udp_workers: Option<usize>,
    /// How often the learned cache is written to the state directory (default 60s).
    #[arg(long, value_name = "DURATION")]
    pub cache_snapshot_interval: Option<String>,
    /// Node name put in every flow (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
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
}

/// The effective configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    #[serde(flatten, serialize_with = "display_proxy")]
    pub proxy: ProxyConfig,
    pub policies: Option<PathBuf>,
    pub endpoints: Option<PathBuf>,
    pub state_dir: PathBuf,
    #[serde(flatten, serialize_with = "display_cache")]
    pub cache: fqdn_cache::CacheConfig,
    #[serde(serialize_with = "display_duration")]
    pub policy_poll_interval: Duration,
    #[serde(serialize_with = "display_duration")]
    pub cache_snapshot_interval: Duration,
    #[serde(serialize_with = "display_metrics_addr")]
    pub metrics_addr: Option<SocketAddr>,
    pub bpffs_dir: PathBuf,
    pub flow_ring_size: usize,
    pub flow_follower_queue: usize,
    pub node_name: String,
    pub hubble_listen: Option<fqdnd::hubble::ListenAddr>,
    pub hubble_metrics: fqdnd::hubble::MetricsConfig,
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

/// The proxy's settings under their keys, as `--config` reads them.
fn display_proxy<S: serde::Serializer>(p: &ProxyConfig, s: S) -> Result<S::Ok, S::Error> {
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
        udp_workers: usize,
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
        udp_workers: p.udp_workers,
    }
    .serialize(s)
}

/// Off is `none`, as the key takes it (null would mean "the default").
fn display_metrics_addr<S: serde::Serializer>(a: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match a {
        Some(a) => s.collect_str(a),
        None => s.serialize_str("none"),
    }
}

fn display_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// The cache settings under their flag names, durations as people write them (`30s`, not
/// `{secs, nanos}`).
fn display_cache<S: serde::Serializer>(c: &fqdn_cache::CacheConfig, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    #[serde(rename_all = "kebab-case")]
    struct View {
        min_ttl: u32,
        max_ips_per_name: usize,
        fqdn_scope: fqdn_cache::Scope,
        #[serde(serialize_with = "display_duration")]
        idle_connection_grace_period: Duration,
        max_zombies: usize,
    }
    View {
        min_ttl: c.min_ttl,
        max_ips_per_name: c.max_ips_per_name,
        fqdn_scope: c.scope,
        idle_connection_grace_period: c.idle_grace,
        max_zombies: c.max_zombies,
    }
    .serialize(s)
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
}

impl Environment {
    pub fn system() -> Self {
        Environment {
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            default_state_dir: fqdnd::admin::default_state_dir(),
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
        Duration::from_secs(1),
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
    let cache = fqdn_cache::CacheConfig {
        min_ttl: flags.min_ttl.or(file.min_ttl).unwrap_or(0),
        max_ips_per_name: flags.max_ips_per_name.or(file.max_ips_per_name).unwrap_or(defaults.max_ips_per_name),
        scope: fqdn_scope,
        idle_grace,
        max_zombies: flags.max_zombies.or(file.max_zombies).unwrap_or(defaults.max_zombies),
    };
    let flow_ring_size =
        flags.flow_ring_size.or(file.flow_ring_size).unwrap_or(fqdnd::flows::hub::DEFAULT_RING_CAPACITY);
    let flow_follower_queue =
        flags.flow_follower_queue.or(file.flow_follower_queue).unwrap_or(fqdnd::flows::hub::DEFAULT_FOLLOWER_QUEUE);
    if flow_follower_queue == 0 {
        problems
            .push(format!("{}: must be at least 1", src(flags.flow_follower_queue.is_some(), "flow-follower-queue")));
    }
    let node_name = flags.node_name.clone().or(file.node_name.clone()).unwrap_or_else(hostname);
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
            tcp_idle_timeout,
            upstream_sockets: 4,
            udp_workers: flags.udp_workers.or(file.udp_workers).unwrap_or(0),
        },
        policies,
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
        flow_ring_size,
        flow_follower_queue,
        node_name,
        print_flows,
        hubble_listen,
        hubble_metrics,
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

#[cfg(test)]
mod surface;

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn env(dir: &Path) -> Environment {
        let resolv = dir.join("resolv.conf");
        std::fs::write(&resolv, "# comment\nsearch example\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n").unwrap();
        Environment { resolv_conf: resolv, cwd: dir.to_path_buf(), default_state_dir: dir.join("state") }
    }

    #[test]
    fn defaults_without_config() {
        let dir = tempfile::tempdir().unwrap();
        let c = resolve(&FileConfig::default(), &Flags::default(), &env(dir.path())).unwrap();
        assert_eq!(c.proxy.mode, Mode::Plain);
        assert_eq!(c.proxy.listen, vec!["127.0.0.1:5353".parse().unwrap()]);
        assert_eq!(c.proxy.upstream, Some("192.0.2.53:53".parse().unwrap()));
        assert_eq!(c.proxy.reject, RejectCode::NameError);
        assert_eq!(c.proxy.response_max_delay, Duration::from_millis(100));
        assert_eq!(c.proxy.upstream_timeout, Duration::from_secs(2));
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9967".parse().unwrap()));
        assert_eq!(c.cache, fqdn_cache::CacheConfig::default());
        assert_eq!(c.policies, None, "no ./policies directory here");
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        let c = resolve(&FileConfig::default(), &Flags::default(), &env(dir.path())).unwrap();
        assert_eq!(c.policies, Some(dir.path().join("policies")));
    }

    #[test]
    fn misspelled_key_is_rejected_with_its_name() {
        let err = parse_file(Path::new("fqdnd.yaml"), "mode: plain\nlisten: [\"127.0.0.1:53\"]\nupstrem: 1.1.1.1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstrem"), "{err}");
        assert!(err.contains("fqdnd.yaml"), "{err}");
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = parse_file(
            Path::new("f.yaml"),
            "mode: plain\nupstream: 192.0.2.1:5300\ndns-reject-response-code: refused\nresponse-max-delay: 250ms\n",
        )
        .unwrap();
        let flags = Flags {
            upstream: Some("[2001:db8::1]:53".into()),
            listen: vec!["127.0.0.1:5400".into(), "[::1]:5400".into()],
            ..Flags::default()
        };
        let c = resolve(&file, &flags, &env(dir.path())).unwrap();
        assert_eq!(c.proxy.upstream, Some("[2001:db8::1]:53".parse().unwrap()));
        assert_eq!(c.proxy.listen.len(), 2);
        assert_eq!(c.proxy.reject, RejectCode::Refused);
        assert_eq!(c.proxy.response_max_delay, Duration::from_millis(250));
    }

    #[test]
    fn all_problems_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = parse_file(Path::new("f.yaml"), "response-max-delay: soon\nmax-inflight: 0\n").unwrap();
        let flags = Flags {
            mode: Some("sideways".into()),
            listen: vec!["localhost".into()],
            upstream: Some("nowhere".into()),
            dns_reject_response_code: Some("NXDOMAIN".into()),
            upstream_timeout: Some("0s".into()),
            policies: Some(dir.path().join("missing")),
            ..Flags::default()
        };
        let errs = resolve(&file, &flags, &env(dir.path())).unwrap_err();
        let text = errs.to_string();
        for needle in [
            "--mode: \"sideways\"",
            "--listen: \"localhost\"",
            "--upstream: \"nowhere\"",
            "--dns-reject-response-code: \"NXDOMAIN\"",
            "config response-max-delay: \"soon\"",
            "--upstream-timeout: must be more than zero",
            "config max-inflight: must be at least 1",
            "--policies:",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert_eq!(errs.0.len(), 8, "{text}");
    }

    #[test]
    fn hubble_keys_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let c = resolve(&FileConfig::default(), &Flags::default(), &env(dir.path())).unwrap();
        assert_eq!(c.hubble_listen, Some(fqdnd::hubble::ListenAddr::Unix(dir.path().join("state/hubble.sock"))));
        assert!(c.hubble_metrics.is_empty());
        let file = parse_file(
            Path::new("f.yaml"),
            "hubble-listen: 127.0.0.1:4244\nhubble-metrics: [dns, \"flow:labelsContext=source_namespace,source_app\"]\n",
        )
        .unwrap();
        let c = resolve(&file, &Flags::default(), &env(dir.path())).unwrap();
        assert_eq!(c.hubble_listen, Some(fqdnd::hubble::ListenAddr::Tcp("127.0.0.1:4244".parse().unwrap())));
        assert_eq!(c.hubble_metrics.to_string(), "dns flow:labelsContext=source_namespace,source_app");
        let flags =
            Flags { hubble_listen: Some("none".into()), hubble_metrics: Some("drop".into()), ..Flags::default() };
        let c = resolve(&file, &flags, &env(dir.path())).unwrap();
        assert_eq!((c.hubble_listen, c.hubble_metrics.to_string()), (None, "drop".to_string()));
        let logged = serde_json::to_value(resolve(&file, &Flags::default(), &env(dir.path())).unwrap()).unwrap();
        assert_eq!(logged["hubble-listen"], "127.0.0.1:4244");
        assert_eq!(logged["hubble-metrics"], "dns flow:labelsContext=source_namespace,source_app");

        let bad = Flags {
            hubble_listen: Some("localhost:4244".into()),
            hubble_metrics: Some("dns:query,http".into()),
            metrics_addr: Some("none".into()),
            ..Flags::default()
        };
        let text = resolve(&FileConfig::default(), &bad, &env(dir.path())).unwrap_err().to_string();
        for needle in ["--hubble-listen: \"localhost:4244\"", "--hubble-metrics: dns:query:", "--hubble-metrics: http:"]
        {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        let admin = Flags {
            hubble_listen: Some(format!("unix:{}/state/fqdnd.sock", dir.path().display())),
            ..Flags::default()
        };
        let text = resolve(&FileConfig::default(), &admin, &env(dir.path())).unwrap_err().to_string();
        assert!(text.contains("is the admin socket"), "{text}");
        let no_server =
            Flags { hubble_metrics: Some("flow".into()), metrics_addr: Some("none".into()), ..Flags::default() };
        let text = resolve(&FileConfig::default(), &no_server, &env(dir.path())).unwrap_err().to_string();
        assert!(
            text.contains("--hubble-metrics: Hubble's metrics are served on /metrics, but metrics-addr is none"),
            "{text}"
        );
        let typo = parse_file(Path::new("f.yaml"), "hubble-listn: none\n").unwrap_err().to_string();
        assert!(typo.contains("hubble-listn"), "{typo}");
    }

    #[test]
    fn flow_follower_queue_key_and_flag() {
        let dir = tempfile::tempdir().unwrap();
        let c = resolve(&FileConfig::default(), &Flags::default(), &env(dir.path())).unwrap();
        assert_eq!(c.flow_follower_queue, 1024);
        let queue = parse_file(Path::new("f.yaml"), "flow-follower-queue: 0\n").unwrap();
        let text = resolve(&queue, &Flags::default(), &env(dir.path())).unwrap_err().to_string();
        assert!(text.contains("config flow-follower-queue: must be at least 1"), "{text}");
        let c = resolve(&queue, &Flags { flow_follower_queue: Some(8), ..Flags::default() }, &env(dir.path())).unwrap();
        assert_eq!(c.flow_follower_queue, 8);
    }

    #[test]
    fn resolv_conf_cases() {
        let dir = tempfile::tempdir().unwrap();
        for (text, want) in [
            ("nameserver 10.0.0.2\n", Ok("10.0.0.2:53")),
            ("options ndots:5\nnameserver fe80::1%eth0\n", Ok("[fe80::1]:53")),
            ("#nameserver 1.1.1.1\n", Err(())),
            ("nameserver bogus\nnameserver 10.1.1.1\n", Ok("10.1.1.1:53")),
        ] {
            let p = dir.path().join("r");
            std::fs::write(&p, text).unwrap();
            let got = first_nameserver(&p).map_err(|_| ());
            assert_eq!(got, want.map(|s| s.parse().unwrap()), "{text:?}");
        }
    }
}
