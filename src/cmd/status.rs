//! `fqdnd status` (like `cilium status`) and `fqdnd version`: what the running agent is doing,
//! and which build this is.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use fqdnd::admin::{self, AdminClient, AgentStatus, Request, Response};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// text, or json (the admin socket's status object).
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Text)]
    output: Format,
    /// The agent's state directory (its admin socket is fqdnd.sock in it).
    #[arg(long, env = "FQDND_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct VersionArgs {
    /// Also ask the running agent for its version (its state directory).
    #[arg(long, env = "FQDND_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

fn ask(state_dir: Option<PathBuf>) -> anyhow::Result<AgentStatus> {
    let path = admin::socket_path(&state_dir.unwrap_or_else(admin::default_state_dir));
    let mut client = AdminClient::request(&path, &Request::Status).map_err(|e| anyhow!(e))?;
    match client.next_response() {
        Some(Ok(Response::Status { status })) => Ok(status),
        Some(Ok(Response::Error { error })) => bail!("agent at {}: {error}", path.display()),
        Some(Ok(other)) => bail!("agent at {}: unexpected response {other:?}", path.display()),
        Some(Err(e)) => Err(anyhow!(e)),
        None => bail!("agent at {}: closed the connection without an answer", path.display()),
    }
}

/// Exit 0 when the agent is ready, 1 when it runs but is not, 2 when there is no agent.
pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let status = ask(args.state_dir)?;
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        Format::Text => print!("{}", text(&status)),
    }
    Ok(if status.ready { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn version(args: VersionArgs) -> anyhow::Result<ExitCode> {
    println!("fqdnd {}", fqdnd::version::LONG);
    // The agent is optional here: `fqdnd version` also answers on a machine where none runs.
    if let Ok(s) = ask(args.state_dir) {
        println!("agent {} (commit {})", s.version, s.commit);
    }
    Ok(ExitCode::SUCCESS)
}

fn or_none(list: &[String]) -> String {
    if list.is_empty() { "none".to_string() } else { list.join(", ") }
}

/// `cilium status`-style lines: a label, then what it is.
pub fn text(s: &AgentStatus) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "{}", format!("{:<12} {value}", format!("{label}:")).trim_end());
    };
    let ready = if s.ready { "yes".to_string() } else { format!("no ({} not loaded)", s.not_loaded.join(" and ")) };
    line("Ready", format!("{ready}, up {}s", s.uptime_seconds));
    line("Version", format!("{} (commit {})", s.version, s.commit));
    if let Some(d) = &s.details {
        let upstream = d.upstream.as_ref().map(|u| format!(", upstream {u}")).unwrap_or_default();
        line("Mode", format!("{} (DNS on {}{upstream})", d.mode, d.listen.join(", ")));
        line("Source", d.source.clone());
        line(
            "Policies",
            format!(
                "{} in force ({} rejected), generation {}: {}",
                d.policies.len(),
                d.policies_rejected,
                d.generation,
                or_none(&d.policies)
            ),
        );
        let policed = if d.policed.is_empty() { "NOTHING IS POLICED".to_string() } else { d.policed.join(", ") };
        line("Endpoints", format!("{} known, policed: {policed}", d.endpoints));
        match &d.datapath {
            None => line("Datapath", "none (plain mode: DNS rules only, nothing in the kernel)".into()),
            Some(dp) => {
                line("Datapath", format!("eBPF, pinned at {}, attached to {}", dp.bpffs_dir, or_none(&dp.attached)));
                let counters = match &dp.counters_error {
                    Some(e) => format!("unreadable: {e}"),
                    None => dp.counters.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
                };
                line("Packets", counters);
            }
        }
        line("Cache", format!("{} entries, {} zombies", d.cache_entries, d.cache_zombies));
    }
    line("Flows", format!("{}/{} buffered, {} followers", s.flows_buffered, s.flows_capacity, s.followers));
    match s.details.as_ref().map(|d| d.last_errors.as_slice()) {
        Some([]) | None => line("Last errors", "none".into()),
        Some(errors) => {
            line("Last errors", String::new());
            for e in errors {
                let _ = writeln!(out, "  {e}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use fqdnd::admin::{AgentDetails, DatapathStatus};

    use super::*;

    #[test]
    fn text_names_each_part() {
        let mut s = AgentStatus {
            version: "0.1.0".into(),
            commit: "abc".into(),
            ready: true,
            not_loaded: vec![],
            uptime_seconds: 5,
            flows_buffered: 4,
            flows_capacity: 4096,
            followers: 0,
            details: Some(Box::new(AgentDetails {
                mode: "transparent".into(),
                listen: vec!["127.0.0.1:10053".into()],
                source: "files: policies p, endpoints e".into(),
                policies: vec!["default/locking-down-alpine".into()],
                endpoints: 2,
                policed: vec!["default/alpine (lxcalpine)".into()],
                datapath: Some(DatapathStatus {
                    bpffs_dir: "/sys/fs/bpf/fqdnd".into(),
                    attached: vec!["lxcalpine (default/alpine)".into()],
                    counters: [("seen".to_string(), 10), ("dropped_denied".to_string(), 2)].into(),
                    counters_error: None,
                }),
                cache_entries: 3,
                last_errors: vec!["2026-01-01T00:00:00Z WARN x: y".into()],
                ..AgentDetails::default()
            })),
        };
        let t = text(&s);
        for want in [
            "Ready:       yes, up 5s\n",
            "Version:     0.1.0 (commit abc)\n",
            "Mode:        transparent (DNS on 127.0.0.1:10053)\n",
            "Policies:    1 in force (0 rejected), generation 0: default/locking-down-alpine\n",
            "Endpoints:   2 known, policed: default/alpine (lxcalpine)\n",
            "Datapath:    eBPF, pinned at /sys/fs/bpf/fqdnd, attached to lxcalpine (default/alpine)\n",
            "Packets:     dropped_denied 2, seen 10\n",
            "Cache:       3 entries, 0 zombies\n",
            "Last errors:\n  2026-01-01T00:00:00Z WARN x: y\n",
        ] {
            assert!(t.contains(want), "{want:?} not in\n{t}");
        }
        s.details.as_mut().unwrap().policed.clear();
        assert!(text(&s).contains("policed: NOTHING IS POLICED"));
    }
}
