//! `fqdnd run` as a real process for tests: its own state dir, stderr captured to a file, the
//! listening port read from `<state-dir>/listeners.json` (so `--listen 127.0.0.1:0` works),
//! SIGTERM on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::wait;

pub struct Fqdnd {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    /// The UDP and TCP addresses of the first listen address.
    pub addr: SocketAddr,
    pub listeners: Vec<(String, SocketAddr)>,
}

pub fn binary() -> PathBuf {
    crate::paths::fqdnd_binary()
}

impl Fqdnd {
    /// Start `fqdnd run ARGS`, adding `--state-dir` (a temp dir) and, unless given,
    /// `--listen 127.0.0.1:0` and `--metrics-addr 127.0.0.1:0`.
    pub fn start(args: &[&str]) -> Result<Self> {
        Self::spawn(&[], args, true)
    }

    /// As [`Fqdnd::start`], under a command prefix (e.g. `nsenter --net=/run/netns/X`).
    pub fn start_wrapped(prefix: &[&str], args: &[&str]) -> Result<Self> {
        Self::spawn(prefix, args, true)
    }

    /// `fqdnd run --state-dir DIR --metrics-addr 127.0.0.1:0 ARGS`: the defaults decide where the
    /// proxy listens.
    pub fn start_exact(args: &[&str]) -> Result<Self> {
        Self::spawn(&[], args, false)
    }

    /// As [`Fqdnd::start_wrapped`], with `FQDND_LOG` set to `log` for this agent only.
    pub fn start_wrapped_logging(prefix: &[&str], args: &[&str], log: &str) -> Result<Self> {
        Self::spawn_logging(prefix, args, true, Some(log))
    }

    /// [`Fqdnd::start_exact`] under a command prefix.
    pub fn start_exact_wrapped(prefix: &[&str], args: &[&str]) -> Result<Self> {
        Self::spawn(prefix, args, false)
    }

    fn spawn(prefix: &[&str], args: &[&str], default_listen: bool) -> Result<Self> {
        Self::spawn_logging(prefix, args, default_listen, None)
    }

    fn spawn_logging(prefix: &[&str], args: &[&str], default_listen: bool, log_filter: Option<&str>) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("fqdnd-run-").tempdir()?;
        let state = dir.path().join("state");
        let log = std::fs::File::create(dir.path().join("fqdnd.log"))?;
        let mut cmd = match prefix.split_first() {
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        cmd.arg("run").arg("--state-dir").arg(&state).args(args);
        if default_listen && !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        // Tests run side by side: no fixed metrics port.
        if !args.contains(&"--metrics-addr") {
            cmd.args(["--metrics-addr", "127.0.0.1:0"]);
        }
        let filter = match log_filter {
            Some(f) => f.to_string(),
            None => std::env::var("FQDND_LOG").unwrap_or_else(|_| "info,dns=debug".into()),
        };
        cmd.env("FQDND_LOG", filter).current_dir(dir.path()).stdout(Stdio::null()).stderr(log);
        let child = cmd.spawn().context("starting fqdnd")?;
        let mut f = Fqdnd { child: Some(child), dir, addr: "0.0.0.0:0".parse()?, listeners: Vec::new() };
        f.wait_listening(&state.join("listeners.json"))?;
        Ok(f)
    }

    fn wait_listening(&mut self, file: &std::path::Path) -> Result<()> {
        let mut exited = None;
        let text = wait::until("fqdnd to list its listeners", Duration::from_secs(30), || {
            if let Ok(Some(status)) = self.child.as_mut().expect("running").try_wait() {
                exited = Some(status);
                return Some(None);
            }
            std::fs::read_to_string(file).ok().map(Some)
        });
        let text = match (text, exited) {
            (_, Some(status)) => bail!("fqdnd exited with {status} before listening:\n{}", self.log()),
            (Ok(Some(text)), None) => text,
            (Ok(None), None) | (Err(_), None) => bail!("fqdnd did not start listening:\n{}", self.log()),
        };
        let v: serde_json::Value = serde_json::from_str(&text)?;
        for l in v.as_array().into_iter().flatten() {
            let proto = l["proto"].as_str().unwrap_or_default().to_string();
            let addr: SocketAddr = l["addr"].as_str().unwrap_or_default().parse()?;
            self.listeners.push((proto, addr));
        }
        self.addr = self.listeners.first().map(|l| l.1).context("no listeners")?;
        Ok(())
    }

    /// The agent's process id (the wrapper's, which execs the agent, when started wrapped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The agent's stderr so far, without terminal colour codes.
    pub fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(self.dir.path().join("fqdnd.log")).unwrap_or_default())
    }

    /// Wait until the log contains `needle` (or give up after 30 s and say so).
    pub fn wait_log(&self, needle: &str) -> Result<()> {
        wait::until(&format!("{needle:?} in the fqdnd log"), Duration::from_secs(30), || {
            self.log().contains(needle).then_some(())
        })
        .map_err(|e| anyhow::anyhow!("{e}:\n{}", self.log()))
    }

    /// SIGTERM, then wait for the exit.
    pub fn stop(mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        Ok(child.wait()?)
    }
}

/// Remove `ESC [ ... m` sequences.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Fqdnd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let exited = wait::until("fqdnd to exit on SIGTERM", Duration::from_secs(5), || {
                matches!(child.try_wait(), Ok(Some(_))).then_some(())
            });
            if exited.is_ok() {
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A policy directory and endpoints file for loopback tests: the client endpoint `default/alpine`
/// (app=alpine) is 127.0.0.1 and ::1; `kube-system/kube-dns` (k8s-app=kube-dns) is `dns_ip`.
/// The policy lets alpine ask kube-dns on `dns_port` (any protocol) for names matching `patterns`.
pub struct PolicyFixture {
    pub dir: tempfile::TempDir,
}

impl PolicyFixture {
    pub fn new(dns_ip: std::net::IpAddr, dns_port: u16, patterns: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("fqdnd-policies-").tempdir()?;
        std::fs::create_dir(dir.path().join("policies"))?;
        let f = PolicyFixture { dir };
        f.write_policy("dns.yaml", &dns_policy("dns-allow", dns_port, patterns))?;
        std::fs::write(
            f.endpoints(),
            format!(
                "- {{namespace: kube-system, name: kube-dns, labels: {{k8s-app: kube-dns}}, ips: [\"{dns_ip}\"]}}\n\
                 - {{namespace: default, name: alpine, labels: {{app: alpine}}, ips: [127.0.0.1, \"::1\"]}}\n"
            ),
        )?;
        Ok(f)
    }

    pub fn policies(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    pub fn endpoints(&self) -> PathBuf {
        self.dir.path().join("endpoints.yaml")
    }

    /// Write (atomically) one policy file.
    pub fn write_policy(&self, name: &str, text: &str) -> Result<()> {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.policies().join(name))?;
        Ok(())
    }

    /// `--policies DIR --endpoints FILE`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--policies".into(),
            self.policies().display().to_string(),
            "--endpoints".into(),
            self.endpoints().display().to_string(),
        ]
    }
}

/// A CiliumNetworkPolicy `name` allowing app=alpine DNS to kube-dns on `port` for `patterns`.
pub fn dns_policy(name: &str, port: u16, patterns: &[&str]) -> String {
    let dns: Vec<String> = patterns.iter().map(|p| format!("{{matchPattern: \"{p}\"}}")).collect();
    format!(
        r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: {name}, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: alpine}}}}
  egress:
  - toEndpoints:
    - matchLabels: {{"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}}
    toPorts:
    - ports: [{{port: "{port}", protocol: ANY}}]
      rules: {{dns: [{dns}]}}
"#,
        dns = dns.join(", ")
    )
}
