//! `fqdnd policy check` and `fqdnd policy explain`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
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
    /// Validate policy files or directories (`-` reads stdin; `kind: List` documents, as
    /// `kubectl get cnp -o yaml` prints them, are expanded): print each problem and warning, then
    /// a summary, all on stdout; exit 1 if there is a problem.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// `text`: one line per problem (`path: doc N: field: message`) and warning (`warning:
        /// ...`), then a summary line. `json`: one JSON object per line, the same, the summary last.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
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
    /// An endpoint neither listed there nor given --labels is an error (exit 2).
    #[arg(long)]
    endpoint: EndpointKey,
    /// Labels of the endpoint (k=v,k2=v2), without the `k8s:` prefix; they replace the labels
    /// the endpoints file gives it (`--labels ''`: none). The namespace label is implied.
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
        PolicyCmd::Check { paths, output } => check(&paths, output),
        PolicyCmd::Explain(args) => explain_cmd(*args),
        PolicyCmd::Suggest(args) => super::suggest::run(*args),
    }
}

/// How stdin is named in problems.
const STDIN: &str = "<stdin>";

/// One line of `policy check -o json`.
#[derive(serde::Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum CheckLine<'a> {
    Problem { severity: &'static str, path: String, doc: Option<usize>, field: &'a str, message: &'a str },
    Summary { files: usize, policies: usize, problems: usize, warnings: usize, ok: bool },
}

fn check(paths: &[PathBuf], output: Output) -> anyhow::Result<ExitCode> {
    // Files and directories in the order given; `-` (once) is stdin, read in its turn.
    let mut report = policy_sync::LoadReport::default();
    let mut empty_dirs = Vec::new();
    let mut stdin_read = false;
    for path in paths {
        if path.as_os_str() == "-" {
            if std::mem::replace(&mut stdin_read, true) {
                bail!("`-` (stdin) given twice");
            }
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading stdin")?;
            report.files.push(PathBuf::from(STDIN));
            report.add_file(Path::new(STDIN), &text);
            continue;
        }
        let part = policy_sync::load::read_paths(std::slice::from_ref(path));
        // An empty directory would otherwise "pass": for a check, that is almost always a wrong
        // path.
        if path.is_dir() && part.files.is_empty() && part.problems.is_empty() {
            empty_dirs.push(policy_sync::Problem {
                path: path.clone(),
                doc: None,
                field: String::new(),
                message: "no *.yaml, *.yml or *.json files".into(),
            });
        }
        report.files.extend(part.files);
        report.policies.extend(part.policies);
        report.problems.extend(part.problems);
        report.warnings.extend(part.warnings);
    }
    report.problems.extend(empty_dirs);
    let (policies, replaced) = policy_sync::load::last_wins(std::mem::take(&mut report.policies));
    report.policies = policies;
    report.warnings.extend(replaced);

    let ok = report.problems.is_empty();
    let mut out = std::io::stdout().lock();
    match output {
        Output::Text => {
            for p in &report.problems {
                writeln!(out, "{p}")?;
            }
            for w in &report.warnings {
                writeln!(out, "warning: {w}")?;
            }
            writeln!(
                out,
                "{} file(s), {} valid policy document(s), {} problem(s), {} warning(s)",
                report.files.len(),
                report.policies.len(),
                report.problems.len(),
                report.warnings.len()
            )?;
        }
        Output::Json => {
            let line = |severity, p: &'_ policy_sync::Problem| {
                let line = CheckLine::Problem {
                    severity,
                    path: p.path.display().to_string(),
                    doc: p.doc,
                    field: &p.field,
                    message: &p.message,
                };
                serde_json::to_string(&line)
            };
            for p in &report.problems {
                writeln!(out, "{}", line("error", p)?)?;
            }
            for w in &report.warnings {
                writeln!(out, "{}", line("warning", w)?)?;
            }
            let summary = CheckLine::Summary {
                files: report.files.len(),
                policies: report.policies.len(),
                problems: report.problems.len(),
                warnings: report.warnings.len(),
                ok,
            };
            writeln!(out, "{}", serde_json::to_string(&summary)?)?;
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn explain_cmd(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let report = policy_sync::load_paths(&args.policies);
    for p in &report.problems {
        eprintln!("fqdnd: warning: skipped: {p}");
    }
    for w in &report.warnings {
        eprintln!("fqdnd: warning: {w}");
    }
    let inventory = match &args.endpoints {
        Some(path) => policy_sync::load_endpoints_file(path)?,
        None => Vec::new(),
    };
    let labels = parse_labels(&args.labels)?;
    let endpoint = match inventory.iter().find(|e| e.key() == args.endpoint) {
        Some(e) if args.labels.is_empty() => e.clone(),
        Some(e) => Endpoint { labels, ..e.clone() },
        // Labels decide what selects it: without them, an unknown endpoint would be explained as
        // one no policy selects, which is a guess, not an answer.
        None if args.labels.is_empty() => match &args.endpoints {
            Some(file) => bail!(
                "endpoint {} is not in {}; give its --labels to explain an endpoint the file does not list",
                args.endpoint,
                file.display()
            ),
            None => bail!("endpoint {} is unknown: give --endpoints FILE listing it, or its --labels", args.endpoint),
        },
        None => Endpoint {
            namespace: args.endpoint.namespace.clone(),
            name: args.endpoint.name.clone(),
            labels,
            ips: Vec::new(),
            interface: None,
            ..Endpoint::default()
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
