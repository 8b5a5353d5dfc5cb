//! `fqdnd policy check` and `fqdnd policy explain`.

use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCmd {
    /// Validate policy files or directories; print each problem; exit 1 if any.
    Check {
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
    },
}

pub fn run(cmd: PolicyCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCmd::Check { paths } => {
            anyhow::bail!("policy check of {} paths: not built yet", paths.len())
        }
    }
}
