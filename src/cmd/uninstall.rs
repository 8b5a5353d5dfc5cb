//! `fqdnd uninstall`: remove what the transparent agent leaves in the kernel on purpose (its
//! pinned TCX links keep enforcing while it is away): detach every program, remove the pinned
//! maps and links, remove the proxy's policy route. Afterwards the pods' traffic flows unfiltered.
//!
//! It refuses while an agent answers on the admin socket: that agent would attach everything again
//! at its next policy change. Stop the agent (SIGTERM; or delete the DaemonSet), then uninstall.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use ebpf_redirect::{AyaConfig, AyaDatapath, PolicyRoute, ProxyTarget};
use fqdnd::admin::{self, AdminClient, Request};

#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// The bpffs directory the agent pinned its maps and links in (its --bpffs-dir).
    #[arg(long, value_name = "DIR", default_value = AyaConfig::DEFAULT_DIR)]
    bpffs_dir: PathBuf,
    /// The agent's state directory: an agent answering there must be stopped first.
    #[arg(long, env = "FQDND_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

pub fn run(args: UninstallArgs) -> anyhow::Result<ExitCode> {
    let socket = admin::socket_path(&args.state_dir.unwrap_or_else(admin::default_state_dir));
    if AdminClient::request(&socket, &Request::Status).is_ok() {
        eprintln!(
            "fqdnd: an agent is running (it answers on {}): stop it first (SIGTERM, or remove its DaemonSet), \
             then run fqdnd uninstall again; nothing was changed",
            socket.display()
        );
        return Ok(ExitCode::from(1));
    }
    let route = PolicyRoute::default();
    if !args.bpffs_dir.join("maps").is_dir() && !args.bpffs_dir.join("links").is_dir() {
        route.remove().context("removing the proxy's policy route")?;
        println!(
            "nothing pinned at {}; policy route (fwmark {:#x}) removed if it was there",
            args.bpffs_dir.display(),
            route.mark
        );
        return Ok(ExitCode::SUCCESS);
    }
    // Opening adopts the pinned links (as a restarted agent would); the proxy target is never used.
    let mut config =
        AyaConfig::new(ProxyTarget { ipv4: Some(Ipv4Addr::LOCALHOST), ipv6: None, udp_port: 0, tcp_port: 0 });
    config.bpffs_dir = args.bpffs_dir.clone();
    let dp = AyaDatapath::open(config)
        .with_context(|| format!("opening the datapath pinned at {}", args.bpffs_dir.display()))?;
    let attached: Vec<String> = dp
        .attached()
        .into_iter()
        .map(|(ifindex, id, name)| format!("{} (endpoint {id})", name.unwrap_or_else(|| format!("ifindex {ifindex}"))))
        .collect();
    dp.uninstall().context("uninstalling the datapath")?;
    let detached = if attached.is_empty() {
        "no endpoint was attached".to_string()
    } else {
        format!("detached from {}", attached.join(", "))
    };
    println!(
        "fqdnd uninstalled: {detached}; pins under {} removed; policy route (fwmark {:#x}, table {}) removed",
        args.bpffs_dir.display(),
        route.mark,
        route.table
    );
    Ok(ExitCode::SUCCESS)
}
