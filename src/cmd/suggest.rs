//! `fqdnd policy suggest`: flows of one endpoint (from the running agent, or a saved
//! `fqdnd observe -o json` / `hubble observe -o json`) in, the CiliumNetworkPolicy that allows
//! exactly what they show out (`fqdnd::suggest`).

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, anyhow, bail};
use fqdnd::admin::{self, AdminClient, Request, Response};
use fqdnd::flows::filter::parse_since;
use fqdnd::flows::{Flow, FlowFilter, PodSelector};
use fqdnd::suggest::{Options, read_flows, suggest};
use policy_sync::EndpointKey;

#[derive(Debug, clap::Args)]
pub struct SuggestArgs {
    /// The endpoint to write the policy for, NAMESPACE/NAME.
    #[arg(long, value_name = "NS/NAME")]
    endpoint: EndpointKey,
    /// Read flows from this file (`fqdnd observe -o json` or `hubble observe -o json` lines; `-`
    /// is stdin) instead of the running agent's buffer.
    #[arg(long, value_name = "FILE|-")]
    flows: Option<PathBuf>,
    /// Only flows since a duration ago (10m) or an RFC 3339 time.
    #[arg(long, value_name = "DURATION")]
    since: Option<String>,
    /// This many names (or more) connected to under one parent domain become one
    /// `*.<parent>` pattern (and the same for DNS names); 0: always matchName.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pattern_threshold: usize,
    /// metadata.name of the policy (default: NAME-observed).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The agent's state directory (its admin socket is fqdnd.sock in it).
    #[arg(long, env = "FQDND_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

pub fn run(args: SuggestArgs) -> anyhow::Result<ExitCode> {
    let since = args.since.as_deref().map(|s| parse_since(s, SystemTime::now())).transpose().map_err(|e| anyhow!(e))?;
    let flows = match &args.flows {
        Some(path) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("reading flows from stdin")?;
            read_flows(&text).map_err(|e| anyhow!("stdin: {e}"))?
        }
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            read_flows(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?
        }
        None => from_agent(&args.endpoint, args.state_dir.clone())?,
    };
    let options = Options {
        namespace: args.endpoint.namespace.clone(),
        name: args.endpoint.name.clone(),
        since,
        pattern_threshold: args.pattern_threshold,
        policy_name: args.name,
    };
    let yaml = suggest(&flows, &options)?;
    print!("{yaml}");
    Ok(ExitCode::SUCCESS)
}

/// Every flow of the agent's buffer that has `endpoint` at either end.
fn from_agent(endpoint: &EndpointKey, state_dir: Option<PathBuf>) -> anyhow::Result<Vec<Flow>> {
    let path = admin::socket_path(&state_dir.unwrap_or_else(admin::default_state_dir));
    let pod = PodSelector { namespace: Some(endpoint.namespace.clone()), name_prefix: endpoint.name.clone() };
    let filter = FlowFilter { pod: Some(pod), ..FlowFilter::default() };
    let mut client =
        AdminClient::request(&path, &Request::Flows { filter, last: None, follow: false }).map_err(|e| anyhow!(e))?;
    let mut flows = Vec::new();
    while let Some(response) = client.next_response() {
        match response.map_err(|e| anyhow!(e))? {
            Response::Flow(f) => flows.push(f.flow),
            Response::LostEvents { .. } => {}
            Response::Error { error } => bail!("agent at {}: {error}", path.display()),
            other => bail!("agent at {}: unexpected response {other:?}", path.display()),
        }
    }
    Ok(flows)
}
