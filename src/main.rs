//! fqdnd: a transparent DNS proxy and FQDN egress-policy engine.

mod agent;
mod alloc;
mod cmd;
mod config;
mod logging;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOC: alloc::AgentAlloc = alloc::AgentAlloc;

#[derive(Debug, Parser)]
#[command(name = "fqdnd", version = fqdnd::version::LONG, about = "DNS-aware egress policy: a transparent DNS proxy and FQDN policy engine")]
struct Cli {
    /// Log format on stderr. The filter comes from FQDND_LOG (e.g. `info`, `fqdnd=debug,dns=debug`).
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Plain)]
    log_format: logging::LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: the DNS proxy enforcing rules.dns (plain mode: 127.0.0.1:5353, no root).
    Run(Box<cmd::run::RunArgs>),
    /// Check and explain CiliumNetworkPolicies without running the agent.
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCmd),
    /// Show the running agent's flows (DNS requests/responses, policy drops), like `hubble observe`.
    Observe(Box<cmd::observe::ObserveArgs>),
    /// Read the running agent's DNS cache.
    #[command(subcommand)]
    Cache(cmd::cache::CacheCmd),
    /// What the running agent is doing: mode, source, policies, endpoints, datapath, cache, errors.
    Status(cmd::status::StatusArgs),
    /// This build's version and git commit (and the running agent's, if there is one).
    Version(cmd::status::VersionArgs),
    /// Remove fqdnd from the kernel: detach every program, remove the pins and the policy route
    /// (root; the agent must be stopped first). The pods' traffic then flows unfiltered.
    Uninstall(cmd::uninstall::UninstallArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        restore_default_sigpipe();
    }
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Run(a) => cmd::run::run(*a),
        Command::Policy(c) => cmd::policy::run(c),
        Command::Observe(a) => cmd::observe::run(*a),
        Command::Cache(c) => cmd::cache::run(c),
        Command::Status(a) => cmd::status::status(a),
        Command::Version(a) => cmd::status::version(a),
        Command::Uninstall(a) => cmd::uninstall::run(a),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("fqdnd: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Rust ignores SIGPIPE, so `println!` into a closed pipe (`fqdnd observe | head`) panics. The
/// client commands end quietly instead, as other Unix tools do. Not the agent: its admin socket
/// writes are plain write(2), and a client hanging up must cost an EPIPE, not the agent.
fn restore_default_sigpipe() {
    // SAFETY: called before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
