//! `fqdnd policy check` and `fqdnd policy explain`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use fqdn_cache::L4Proto;
use ipnet::IpNet;
use policy_sync::explain::{self, Explanation};
use policy_sync::{Endpoint, EndpointKey, NodeInfo};

/// DNS server assumed when `--server` is not given and the endpoints file lists no kube-dns:
/// the conventional ClusterIP of kube-dns.
pub const DEFAULT_DNS_SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10));

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCmd {
    /// Validate policy files or directories; print each problem; exit 1 if any.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Explain what the policies decide for one endpoint's DNS query or connection.
    Explain(Box<ExplainArgs>),
    /// Write the CiliumNetworkPolicy that allows exactly what an endpoint's flows show.
    Suggest(Box<super::suggest::SuggestArgs>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("question").required(true).args(["dns", "to", "to_name"])))]
pub struct ExplainArgs {
    /// Policy files or directories.
    #[arg(long, required = true, num_args = 1..)]
    policies: Vec<PathBuf>,
    /// The endpoint asking, NAMESPACE/NAME: looked up in --endpoints, or built from --labels.
    #[arg(long)]
    endpoint: EndpointKey,
    /// Labels of the endpoint (k=v,k2=v2), without the `k8s:` prefix; they replace the labels
    /// the endpoints file gives it. The namespace label is implied.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Endpoints file (a YAML list of namespace/name/labels/ips): the peers that toEndpoints
    /// selectors resolve to, e.g. kube-dns.
    #[arg(long)]
    endpoints: Option<PathBuf>,
    /// Explain a DNS query for this name.
    #[arg(long, value_name = "NAME")]
    dns: Option<String>,
    /// DNS server, IP or IP:PORT ([IPv6]:PORT). Default: the first IP of kube-system/kube-dns
    /// (label k8s-app=kube-dns) in --endpoints, else 10.96.0.10; port 53.
    #[arg(long, requires = "dns", value_name = "IP[:PORT]")]
    server: Option<String>,
    /// Ask the DNS query over TCP instead of UDP.
    #[arg(long, requires = "dns")]
    tcp: bool,
    /// Explain a connection to IP:PORT[/tcp|udp] (default tcp).
    #[arg(long, value_name = "IP:PORT[/tcp|udp]")]
    to: Option<String>,
    /// Explain a connection to an IP that NAME resolved to: NAME:PORT[/tcp|udp] (default tcp).
    #[arg(long, value_name = "NAME:PORT[/tcp|udp]")]
    to_name: Option<String>,
    /// The node's own addresses (prefixes allowed), for the `host`, `cluster` and `world`
    /// entities. Default: loopback.
    #[arg(long = "host-ip", value_delimiter = ',')]
    host_ips: Vec<IpNet>,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

pub fn run(cmd: PolicyCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCmd::Check { paths } => Ok(check(&paths)),
        PolicyCmd::Explain(args) => explain_cmd(*args),
        PolicyCmd::Suggest(args) => super::suggest::run(*args),
    }
}

fn check(paths: &[PathBuf]) -> ExitCode {
    let report = policy_sync::load_paths(paths);
    let mut problems = report.problems.len();
    for p in &report.problems {
        println!("{p}");
    }
    // An empty directory would otherwise "pass": for a check, that is almost always a wrong path.
    for path in paths.iter().filter(|p| p.is_dir()) {
        if !report.files.iter().any(|f| f.parent() == Some(path.as_path())) {
            println!("{}: no *.yaml, *.yml or *.json files", path.display());
            problems += 1;
        }
    }
    eprintln!(
        "{} file(s), {} valid policy document(s), {} problem(s)",
        report.files.len(),
        report.policies.len(),
        problems
    );
    if problems == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

fn explain_cmd(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let report = policy_sync::load_paths(&args.policies);
    for p in &report.problems {
        eprintln!("fqdnd: warning: skipped: {p}");
    }
    let inventory = match &args.endpoints {
        Some(path) => policy_sync::load_endpoints_file(path)?,
        None => Vec::new(),
    };
    let labels = parse_labels(&args.labels)?;
    let endpoint = match inventory.iter().find(|e| e.key() == args.endpoint) {
        Some(e) if args.labels.is_empty() => e.clone(),
        Some(e) => Endpoint { labels, ..e.clone() },
        None => Endpoint {
            namespace: args.endpoint.namespace.clone(),
            name: args.endpoint.name.clone(),
            labels,
            ips: Vec::new(),
            interface: None,
        },
    };
    let node = if args.host_ips.is_empty() {
        NodeInfo::default()
    } else {
        NodeInfo { host: args.host_ips.clone(), ..NodeInfo::default() }
    };
    let traced = policy_sync::resolve_traced(&report.policies, &endpoint, &inventory, &node);

    let answer: Explanation = if let Some(name) = &args.dns {
        let (server, port) = match &args.server {
            Some(s) => parse_server(s)?,
            None => (default_server(&inventory), 53),
        };
        let proto = if args.tcp { L4Proto::Tcp } else { L4Proto::Udp };
        explain::explain_dns(&traced, name, server, port, proto)
    } else if let Some(to) = &args.to {
        let (addr, proto) = split_proto(to)?;
        let sa: SocketAddr = addr.parse().with_context(|| format!("--to {to:?}: expected IP:PORT[/tcp|udp]"))?;
        explain::explain_connection(&traced, sa.ip(), sa.port(), proto)
    } else if let Some(to) = &args.to_name {
        let (addr, proto) = split_proto(to)?;
        let Some((name, port)) = addr.rsplit_once(':') else {
            bail!("--to-name {to:?}: expected NAME:PORT[/tcp|udp]");
        };
        let port: u16 = port.parse().with_context(|| format!("--to-name {to:?}: bad port"))?;
        explain::explain_fqdn(&traced, name, port, proto)
    } else {
        bail!("one of --dns, --to, --to-name is required");
    };

    match args.output {
        Output::Text => {
            println!("{}", answer.verdict);
            println!("policy: {}", answer.policy.as_deref().unwrap_or("-"));
            println!("reason: {}", answer.reason);
        }
        Output::Json => println!("{}", serde_json::to_string(&answer)?),
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_labels(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for item in items.iter().filter(|i| !i.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            bail!("--labels: {item:?} is not key=value");
        };
        let k = k.strip_prefix("k8s:").unwrap_or(k);
        labels.insert(k.to_string(), v.to_string());
    }
    Ok(labels)
}

fn default_server(inventory: &[Endpoint]) -> IpAddr {
    inventory
        .iter()
        .find(|e| e.namespace == "kube-system" && e.labels.get("k8s-app").map(String::as_str) == Some("kube-dns"))
        .and_then(|e| e.ips.first().copied())
        .unwrap_or(DEFAULT_DNS_SERVER)
}

fn parse_server(s: &str) -> anyhow::Result<(IpAddr, u16)> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok((sa.ip(), sa.port()));
    }
    let ip: IpAddr = s.parse().with_context(|| format!("--server {s:?}: expected IP or IP:PORT"))?;
    Ok((ip, 53))
}

fn split_proto(s: &str) -> anyhow::Result<(&str, L4Proto)> {
    match s.rsplit_once('/') {
        None => Ok((s, L4Proto::Tcp)),
        Some((addr, p)) => match p.to_ascii_lowercase().as_str() {
            "tcp" => Ok((addr, L4Proto::Tcp)),
            "udp" => Ok((addr, L4Proto::Udp)),
            _ => bail!("{s:?}: protocol must be tcp or udp"),
        },
    }
}
