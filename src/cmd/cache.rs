//! `fqdnd cache list`: the names the running agent learned, per endpoint.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use fqdn_cache::pattern::NamePattern;
use fqdnd::admin::{self, AdminClient, CacheEntryView, Request, Response};
use policy_sync::endpoint::EndpointKey;

#[derive(Debug, clap::Subcommand)]
pub enum CacheCmd {
    /// List learned names: ENDPOINT SOURCE FQDN TTL EXPIRES IPS (SOURCE: lookup, or connection for
    /// expired entries kept alive by connections).
    List(ListArgs),
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only this endpoint.
    #[arg(long, value_name = "NS/NAME")]
    endpoint: Option<EndpointKey>,
    /// Only names matching this matchPattern (`*.microsoft.com`).
    #[arg(long, value_name = "PATTERN")]
    pattern: Option<String>,
    #[arg(long, short = 'o', value_enum, default_value_t = ListFormat::Table)]
    output: ListFormat,
    /// The agent's state directory (its admin socket is fqdnd.sock in it).
    #[arg(long, env = "FQDND_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

pub fn run(cmd: CacheCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CacheCmd::List(args) => list(args),
    }
}

fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    if let Some(p) = &args.pattern {
        NamePattern::match_pattern(p).with_context(|| format!("--pattern {p:?}"))?;
    }
    let path = admin::socket_path(&args.state_dir.unwrap_or_else(admin::default_state_dir));
    let request = Request::CacheList { endpoint: args.endpoint.map(|e| e.to_string()), pattern: args.pattern };
    let mut client = AdminClient::request(&path, &request).map_err(|e| anyhow!(e))?;
    let entries = match client.next_response() {
        Some(r) => match r.map_err(|e| anyhow!(e))? {
            Response::CacheEntries { cache_entries } => cache_entries,
            Response::Error { error } => bail!("agent at {}: {error}", path.display()),
            other => bail!("agent at {}: unexpected response {other:?}", path.display()),
        },
        None => bail!("agent at {}: closed the connection without an answer", path.display()),
    };
    let text = match args.output {
        ListFormat::Json => serde_json::to_string_pretty(&entries)? + "\n",
        ListFormat::Table => table(&entries),
    };
    std::io::stdout().write_all(text.as_bytes()).context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn table(entries: &[CacheEntryView]) -> String {
    let header = ["ENDPOINT", "SOURCE", "FQDN", "TTL", "EXPIRES", "IPS"];
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            [
                e.endpoint.clone(),
                e.source.as_str().to_string(),
                e.fqdn.clone(),
                e.ttl.to_string(),
                humantime::format_rfc3339_seconds(e.expires).to_string(),
                e.ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}   ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use fqdnd::admin::CacheSource;

    use super::*;

    #[test]
    fn table_columns_line_up() {
        let entries = [
            CacheEntryView {
                endpoint: "default/alpine".into(),
                source: CacheSource::Lookup,
                fqdn: "www.microsoft.com.".into(),
                ttl: 300,
                expires: UNIX_EPOCH + Duration::from_secs(1_701_079_501),
                ips: vec!["13.107.1.1".parse().unwrap(), "13.107.1.2".parse().unwrap()],
            },
            CacheEntryView {
                endpoint: "default/b".into(),
                source: CacheSource::Connection,
                fqdn: "a.io.".into(),
                ttl: 5,
                expires: UNIX_EPOCH,
                ips: vec!["192.0.2.1".parse().unwrap()],
            },
        ];
        let want = "\
ENDPOINT         SOURCE       FQDN                 TTL   EXPIRES                IPS
default/alpine   lookup       www.microsoft.com.   300   2023-11-27T10:05:01Z   13.107.1.1,13.107.1.2
default/b        connection   a.io.                5     1970-01-01T00:00:00Z   192.0.2.1
";
        assert_eq!(table(&entries), want);
    }
}
