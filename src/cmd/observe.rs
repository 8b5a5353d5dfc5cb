//! `fqdnd observe`: flows of the running agent, like `hubble observe`.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, anyhow, bail};
use fqdnd::admin::{self, AdminClient, Request, Response};
use fqdnd::flows::filter::parse_since;
use fqdnd::flows::filter::{FqdnFilter, Protocol};
use fqdnd::flows::format::{Color, OutputFormat, Printer};
use fqdnd::flows::{FlowFilter, FlowKind, PodSelector, Verdict};

/// Flows printed without `-f`, `--last` or `--since` (Hubble's default too).
const DEFAULT_LAST: usize = 20;

#[derive(Debug, clap::Args)]
pub struct ObserveArgs {
    /// Flows from or to this pod: NAMESPACE/NAME (NAME is a prefix), NAMESPACE/ or NAME (with
    /// --server, NAME alone is default/NAME, as Hubble reads it).
    #[arg(long, value_name = "NS/NAME")]
    pod: Option<PodSelector>,
    /// Flows from or to an endpoint in this namespace.
    #[arg(long, short = 'n', value_name = "NS")]
    namespace: Option<String>,
    /// FORWARDED, DROPPED or ERROR.
    #[arg(long)]
    verdict: Option<Verdict>,
    /// dns (DNS requests and responses) or drop (packets the datapath dropped).
    #[arg(long = "type", short = 't', value_name = "dns|drop")]
    kind: Option<FlowKind>,
    /// Flows since a duration ago (5m, 1h30m) or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// The last N matching flows of the agent's buffer.
    #[arg(long, value_name = "N")]
    last: Option<usize>,
    /// The first N matching flows of the agent's buffer (the oldest).
    #[arg(long, value_name = "N", conflicts_with_all = ["last", "follow"])]
    first: Option<usize>,
    /// Keep printing new flows as they come.
    #[arg(long, short = 'f')]
    follow: bool,
    /// tcp, udp (the flow's L4 protocol) or dns (DNS requests and responses).
    #[arg(long, value_name = "tcp|udp|dns")]
    protocol: Option<Protocol>,
    /// Flows from this pod (their source): NAMESPACE/NAME (NAME is a prefix), NAMESPACE/ or NAME.
    #[arg(long, value_name = "NS/NAME")]
    from_pod: Option<PodSelector>,
    /// Flows to this pod (their destination).
    #[arg(long, value_name = "NS/NAME")]
    to_pod: Option<PodSelector>,
    /// Flows about names matching this pattern (`*.microsoft.com`): DNS queries for them, and drops
    /// of connections to IPs they resolved to.
    #[arg(long, value_name = "PATTERN")]
    fqdn: Option<FqdnFilter>,
    /// compact, table, dict, json or jsonpb (json is jsonpb, as in Hubble).
    #[arg(long, short = 'o', default_value = "compact")]
    output: OutputFormat,
    /// Colours in compact output: auto (on a terminal), always or never.
    #[arg(long, value_enum, default_value_t = ColorWhen::Auto)]
    color: ColorWhen,
    /// The agent's state directory (its admin socket is fqdnd.sock in it).
    #[arg(long, env = "FQDND_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Read from an agent's Hubble Observer API instead of the local admin socket: unix:PATH
    /// (e.g. unix:///run/fqdnd/hubble.sock) or HOST:PORT. Works against Cilium's Hubble too.
    #[arg(long, value_name = "ADDR")]
    server: Option<fqdnd::hubble::ServerAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorWhen {
    Auto,
    Always,
    Never,
}

pub fn run(args: ObserveArgs) -> anyhow::Result<ExitCode> {
    let since = args.since.as_deref().map(|s| parse_since(s, SystemTime::now())).transpose().map_err(|e| anyhow!(e))?;
    let filter = FlowFilter {
        pod: args.pod,
        namespace: args.namespace,
        verdict: args.verdict,
        kind: args.kind,
        since,
        protocol: args.protocol,
        from_pod: args.from_pod,
        to_pod: args.to_pod,
        fqdn: args.fqdn,
    };
    // `-f` alone starts from now, as `hubble observe -f` does. `--first` reads the whole buffer
    // and keeps its beginning.
    let last = match (args.first, args.last, args.follow, since) {
        (Some(_), _, _, _) => None,
        (None, Some(n), _, _) => Some(n),
        (None, None, _, Some(_)) => None,
        (None, None, false, None) => Some(DEFAULT_LAST),
        (None, None, true, None) => Some(0),
    };
    let mut remaining = args.first;
    let stdout = io::stdout();
    let color = match args.color {
        ColorWhen::Always => Color::Always,
        ColorWhen::Auto if stdout.is_terminal() => Color::Always,
        _ => Color::Never,
    };
    if let Some(server) = &args.server {
        if args.first.is_some() {
            bail!("--first is not supported with --server yet (use --last)");
        }
        return super::observe_grpc::run(server, &filter, last, args.follow, args.output, color);
    }
    let path = admin::socket_path(&args.state_dir.unwrap_or_else(admin::default_state_dir));
    let mut client =
        AdminClient::request(&path, &Request::Flows { filter, last, follow: args.follow }).map_err(|e| anyhow!(e))?;
    let mut out = stdout.lock();
    let mut printer = Printer::new(args.output, color, args.follow);
    let mut write = |text: String| -> anyhow::Result<bool> {
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            // `fqdnd observe | head`: the reader is done, so are we.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
            other => other.context("writing flows to stdout").map(|()| true),
        }
    };
    while let Some(response) = client.next_response() {
        match response.map_err(|e| anyhow!(e))? {
            Response::Flow(flow) => {
                if remaining == Some(0) {
                    break;
                }
                remaining = remaining.map(|n| n - 1);
                if !write(printer.flow(&flow))? {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            Response::LostEvents { lost_events } => {
                eprintln!("fqdnd: {} flows lost: this client did not keep up with the agent", lost_events.count());
            }
            Response::Error { error } => bail!("agent at {}: {error}", path.display()),
            other => bail!("agent at {}: unexpected response {other:?}", path.display()),
        }
    }
    write(printer.finish())?;
    Ok(ExitCode::SUCCESS)
}
