//! A real authoritative DNS server (NSD from Debian) for tests: zone files in, a listening
//! address out, killed and cleaned up on drop. Each server has its own temp dir; several run at
//! once.
//!
//! ```ignore
//! let dns = DnsServer::builder().fixture_zone("microsoft.com").start()?;       // 127.0.0.1, free port
//! let dns = DnsServer::builder()
//!     .fixture_zone("cluster.local")
//!     .listen("10.96.0.10:53".parse()?)
//!     .wrap(&["nsenter", "--net=/run/netns/kube-dns"])                       // inside a namespace
//!     .start()?;
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::wait;

/// The repository's `fixtures/zones/<origin>.zone`.
pub fn fixture_zone(origin: &str) -> PathBuf {
    crate::paths::fixture(&format!("zones/{origin}.zone"))
}

#[derive(Default)]
pub struct DnsServerBuilder {
    zones: Vec<(String, PathBuf)>,
    listen: Vec<SocketAddr>,
    wrap: Vec<String>,
}

impl DnsServerBuilder {
    /// Serve `origin` from `file`.
    pub fn zone(mut self, origin: &str, file: impl Into<PathBuf>) -> Self {
        self.zones.push((origin.trim_end_matches('.').to_string(), file.into()));
        self
    }

    /// Serve `origin` from `fixtures/zones/<origin>.zone`.
    pub fn fixture_zone(self, origin: &str) -> Self {
        let file = fixture_zone(origin);
        self.zone(origin, file)
    }

    /// Listen here (UDP and TCP). Port 0 picks a free port on this address; all addresses share
    /// one port. Default: 127.0.0.1 on a free port.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen.push(addr);
        self
    }

    /// Run NSD under this command prefix (e.g. `nsenter --net=/run/netns/NAME`).
    pub fn wrap(mut self, prefix: &[&str]) -> Self {
        self.wrap = prefix.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn start(self) -> Result<DnsServer> {
        let listen = if self.listen.is_empty() {
            vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)]
        } else {
            self.listen.clone()
        };
        // A free port can be taken by someone else between the probe and NSD's bind: retry.
        let mut last_err = None;
        for _ in 0..5 {
            let port = match listen[0].port() {
                0 => free_port(listen[0].ip())?,
                p => p,
            };
            let addrs: Vec<SocketAddr> = listen.iter().map(|a| SocketAddr::new(a.ip(), port)).collect();
            match DnsServer::spawn(&self.zones, &addrs, &self.wrap) {
                Ok(s) => return Ok(s),
                Err(e) if listen[0].port() == 0 => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }
}

pub struct DnsServer {
    /// The first listening address.
    pub addr: SocketAddr,
    pub addrs: Vec<SocketAddr>,
    child: Child,
    dir: tempfile::TempDir,
}

impl DnsServer {
    pub fn builder() -> DnsServerBuilder {
        DnsServerBuilder::default()
    }

    /// NSD's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nsd.log")).unwrap_or_default()
    }

    fn spawn(zones: &[(String, PathBuf)], addrs: &[SocketAddr], wrap: &[String]) -> Result<DnsServer> {
        let dir = tempfile::Builder::new().prefix("fqdnd-nsd-").tempdir()?;
        let d = dir.path();
        let mut conf = String::from("server:\n");
        for a in addrs {
            conf += &format!("  ip-address: {}@{}\n", a.ip(), a.port());
        }
        let has_v6 = addrs.iter().any(|a| a.is_ipv6());
        let has_v4 = addrs.iter().any(|a| a.is_ipv4());
        conf += &format!(
            "  do-ip4: {}\n  do-ip6: {}\n  port: {}\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  \
             pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  xfrdir: \"{d}\"\n  \
             zonelistfile: \"{d}/zone.list\"\n  database: \"\"\n  logfile: \"{d}/nsd.log\"\n  \
             server-count: 1\n  verbosity: 1\n  hide-version: yes\n  tcp-count: 200\n  rrl-ratelimit: 0\n  \
             refuse-any: no\n  reuseport: no\n\nremote-control:\n  control-enable: no\n\n",
            if has_v4 { "yes" } else { "no" },
            if has_v6 { "yes" } else { "no" },
            addrs[0].port(),
            d = d.display(),
        );
        for (origin, file) in zones {
            let local = d.join(format!("{origin}.zone"));
            std::fs::copy(file, &local).with_context(|| format!("copying zone {}", file.display()))?;
            conf += &format!("zone:\n  name: \"{origin}\"\n  zonefile: \"{}\"\n\n", local.display());
        }
        let conf_path = d.join("nsd.conf");
        std::fs::write(&conf_path, conf)?;
        let check = Command::new("nsd-checkconf").arg(&conf_path).output().context("running nsd-checkconf")?;
        if !check.status.success() {
            bail!("nsd-checkconf: {}", String::from_utf8_lossy(&check.stderr));
        }

        let mut cmd = match wrap.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg("nsd");
                c
            }
            None => Command::new("nsd"),
        };
        cmd.args(["-d", "-c"]).arg(&conf_path).stdout(Stdio::null()).stderr(Stdio::piped());
        let child = cmd.spawn().context("starting nsd (Debian package nsd)")?;
        let mut server = DnsServer { addr: addrs[0], addrs: addrs.to_vec(), child, dir };
        server.wait_ready(&zones.first().map(|z| z.0.clone()).unwrap_or_default(), wrap.is_empty())?;
        Ok(server)
    }

    /// Wait until NSD answers an SOA query for `origin` (probing from here only when it runs in
    /// this network namespace; otherwise until its log says it serves).
    fn wait_ready(&mut self, origin: &str, probe: bool) -> Result<()> {
        let mut exited = None;
        let ready = wait::until("nsd to serve its zones", Duration::from_secs(10), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                exited = Some(status);
                return Some(());
            }
            let ready = if probe { soa_answered(self.addr, origin) } else { self.log().contains("nsd started") };
            ready.then_some(())
        });
        if let Some(status) = exited {
            let mut err = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            bail!("nsd exited with {status}: {err}{}", self.log());
        }
        ready.map_err(|e| anyhow::anyhow!("{e} on {}: {}", self.addr, self.log()))
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for both UDP and TCP on `ip` right now.
pub fn free_port(ip: IpAddr) -> Result<u16> {
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind(SocketAddr::new(ip, 0))?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind(SocketAddr::new(ip, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port on {ip}")
}

/// Send a minimal SOA query and see whether any answer comes back.
fn soa_answered(server: SocketAddr, origin: &str) -> bool {
    let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let Ok(sock) = UdpSocket::bind(bind) else { return false };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
    let mut q = vec![0x12, 0x34, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in origin.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 6, 0, 1]);
    if sock.send_to(&q, server).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(sock.recv_from(&mut buf), Ok((n, _)) if n >= 12 && buf[0] == 0x12 && buf[1] == 0x34)
}
