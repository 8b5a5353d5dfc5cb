//! The seed tutorial's cluster in network namespaces, policed by the real agent:
//! `fqdnd run --mode transparent` as a process in the node namespace, with its own bpffs, state
//! directory and policy directory. Everything is per test and removed on drop.
//!
//! ```text
//!  pod default/alpine            node (fqdnd, forwarding)              kube-dns
//!  eth0 10.0.1.5  fd00::5  ─── lxc…  10.0.1.1  fd00::1
//!                                vkdns 10.96.0.1       ─────────────── eth0 10.96.0.10 (NSD :53)
//!                                vworld 10.250.0.1 fd00:250::1 ─────── world eth0 10.250.0.2 fd00:250::2
//!                                                                      local: 10.200/16 10.201/16 10.210/16
//!                                                                             fd00:200::/32 fd00:201::/32
//!                                                                      TCP :80 :443 (greet), :8080 (echo)
//! ```
//!
//! The world namespace owns whole prefixes as local routes (AnyIP), so every address of the test
//! zones (microsoft.com, google.com, bulk.test) answers without listing them. The pod's
//! resolv.conf is `/etc/netns/<pod>/resolv.conf`: clients run under `ip netns exec`, which mounts
//! it (and /sys, which clients do not need). The agent does not: it enters the node namespace with
//! `setns` before exec, so it sees the test's bpffs mount.

#![allow(dead_code)]

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fqdnd::admin::{self, AdminClient, Request, Response};
use serde_json::Value;

use super::clients::{self, Libc, Resolution};
use super::dig::{self, DigResult};
use super::dns_server::{DnsServer, fixture_zone};
use super::netns::{self, Bpffs, Netns, TcpServer};

pub const POD_IP4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
pub const POD_GW4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
pub const POD_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5);
pub const POD_GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
pub const KUBE_DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const KUBE_DNS_GW: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
pub const WORLD_IP4: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const WORLD_GW4: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
pub const WORLD_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 2);
const WORLD_GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 1);
/// What the world namespace answers for (the test zones' addresses).
const WORLD_PREFIXES: [&str; 5] = ["10.200.0.0/16", "10.201.0.0/16", "10.210.0.0/16", "fd00:200::/32", "fd00:201::/32"];

/// www.microsoft.com's addresses in fixtures/zones/microsoft.com.zone.
pub const WWW_MICROSOFT4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1));
pub const WWW_MICROSOFT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1));
/// short.microsoft.com (TTL 2 s).
pub const SHORT_MICROSOFT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 200, 0, 5));
/// www.google.com's IPv4 address in fixtures/zones/google.com.zone.
pub const WWW_GOOGLE4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 201, 0, 1));
/// The world's echo port (long-lived connections); 80 and 443 greet and close.
pub const ECHO_PORT: u16 = 8080;
/// What the world's servers send on ports 80 and 443.
pub const GREETING: &[u8] = b"hello from the world\n";

/// Where the agent serves metrics, inside the node namespace (its own loopback).
pub const METRICS_ADDR: &str = "127.0.0.1:9967";

/// Long enough for any allowed connect on a loaded machine.
pub const CONNECT: Duration = Duration::from_secs(5);
/// For connects expected to be dropped: the drop itself is confirmed by a drop flow, so a short
/// bound only saves time (the kernel's first SYN retransmit is after 1 s).
pub const DROPPED_CONNECT: Duration = Duration::from_millis(400);
/// Bound on waits for the agent (start, policy reload, flows): failures say what was awaited.
pub const AGENT_WAIT: Duration = Duration::from_secs(30);
/// Bound on one client process (musl's worst case is a few 5 s timeouts).
const CLIENT_LIMIT: Duration = Duration::from_secs(40);

/// The `fqdnd` binary: the one cargo built for this test, or (the demo example, which cargo gives
/// no such variable) the one beside it in the target directory.
pub fn agent_binary() -> PathBuf {
    option_env!("CARGO_BIN_EXE_fqdnd").map(PathBuf::from).unwrap_or_else(super::paths::fqdnd_binary)
}

/// The fixture of a seed stage (1..=4).
pub fn seed_stage(n: u8) -> PathBuf {
    let name = match n {
        1 => "1-locking-down-alpine.yaml",
        2 => "2-deny-everything.yaml",
        3 => "3-allow-dns.yaml",
        4 => "4-allow-fqdn.yaml",
        _ => panic!("the seed has stages 1 to 4, not {n}"),
    };
    super::paths::fixture(&format!("policies/seed/{name}"))
}

/// A policy of fixtures/policies/e2e/.
pub fn e2e_policy(name: &str) -> PathBuf {
    super::paths::fixture(&format!("policies/e2e/{name}"))
}

/// `/etc/netns/<pod>/`, removed on drop.
struct EtcNetns(PathBuf);

impl Drop for EtcNetns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The cluster. Fields drop in order: the agent first (it lives in `node`), the bpffs last.
pub struct Cluster {
    agent: Option<Agent>,
    _servers: Vec<TcpServer>,
    pub dns: DnsServer,
    pub pod: Netns,
    pub kube_dns: Netns,
    pub world: Netns,
    pub node: Netns,
    _resolv: EtcNetns,
    bpffs: Bpffs,
    /// policies/, endpoints.yaml, state/, fqdnd.log.
    pub dir: tempfile::TempDir,
    /// Node-side veth of the pod.
    pub pod_veth: String,
    /// More `fqdnd run` flags for every start of the agent.
    pub agent_args: Vec<String>,
}

impl Cluster {
    /// Build the namespaces, DNS and servers, then start the agent with an empty policy
    /// directory and wait until it is ready.
    pub fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    /// [`Cluster::start`], the agent run with more flags.
    pub fn start_with(agent_args: &[&str]) -> Cluster {
        let mut c = Cluster::build();
        c.agent_args = agent_args.iter().map(|a| a.to_string()).collect();
        c.start_agent();
        c
    }

    /// The topology without the agent.
    pub fn build() -> Cluster {
        let node = Netns::new("node");
        let pod = Netns::new("pod");
        let kube_dns = Netns::new("kdns");
        let world = Netns::new("world");
        // Cilium's naming; the node namespace is the test's own, so the name need not be unique.
        let pod_veth = "lxcalpine".to_string();

        node.ip(&["link", "add", &pod_veth, "type", "veth", "peer", "name", "eth0", "netns", pod.name()]);
        node.ip(&["link", "add", "vkdns", "type", "veth", "peer", "name", "eth0", "netns", kube_dns.name()]);
        node.ip(&["link", "add", "vworld", "type", "veth", "peer", "name", "eth0", "netns", world.name()]);
        let addr = |ns: &Netns, a: String, dev: &str| ns.ip(&["addr", "add", &a, "dev", dev, "nodad"]);
        addr(&node, format!("{POD_GW4}/24"), &pod_veth);
        addr(&node, format!("{POD_GW6}/64"), &pod_veth);
        addr(&node, format!("{KUBE_DNS_GW}/24"), "vkdns");
        addr(&node, format!("{WORLD_GW4}/24"), "vworld");
        addr(&node, format!("{WORLD_GW6}/64"), "vworld");
        addr(&pod, format!("{POD_IP4}/24"), "eth0");
        addr(&pod, format!("{POD_IP6}/64"), "eth0");
        addr(&kube_dns, format!("{KUBE_DNS_IP}/24"), "eth0");
        addr(&world, format!("{WORLD_IP4}/24"), "eth0");
        addr(&world, format!("{WORLD_IP6}/64"), "eth0");
        for (ns, dev) in
            [(&node, pod_veth.as_str()), (&node, "vkdns"), (&node, "vworld"), (&pod, "eth0"), (&kube_dns, "eth0")]
                .into_iter()
                .chain([(&world, "eth0")])
        {
            ns.ip(&["link", "set", dev, "up"]);
        }
        pod.ip(&["route", "add", "default", "via", &POD_GW4.to_string()]);
        pod.ip(&["-6", "route", "add", "default", "via", &POD_GW6.to_string()]);
        kube_dns.ip(&["route", "add", "default", "via", &KUBE_DNS_GW.to_string()]);
        world.ip(&["route", "add", "default", "via", &WORLD_GW4.to_string()]);
        world.ip(&["-6", "route", "add", "default", "via", &WORLD_GW6.to_string()]);
        for prefix in WORLD_PREFIXES {
            let v6 = prefix.contains(':');
            let family = if v6 { "-6" } else { "-4" };
            world.ip(&[family, "route", "add", "local", prefix, "dev", "lo", "table", "local"]);
            let via = if v6 { WORLD_IP6.to_string() } else { WORLD_IP4.to_string() };
            node.ip(&[family, "route", "add", prefix, "via", &via]);
        }
        node.sysctl("net.ipv4.ip_forward", "1");
        node.sysctl("net.ipv6.conf.all.forwarding", "1");

        let etc = PathBuf::from("/etc/netns").join(pod.name());
        std::fs::create_dir_all(&etc).unwrap_or_else(|e| panic!("creating {}: {e}", etc.display()));
        let resolv = EtcNetns(etc);
        std::fs::write(
            resolv.0.join("resolv.conf"),
            format!(
                "nameserver {KUBE_DNS_IP}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n\
                 options ndots:5\n"
            ),
        )
        .expect("writing the pod's resolv.conf");

        let kdns_path = format!("--net={}", kube_dns.path().display());
        let mut dns = DnsServer::builder();
        for zone in ["microsoft.com", "google.com", "cluster.local", "bulk.test"] {
            dns = dns.zone(zone, fixture_zone(zone));
        }
        let dns = dns
            .listen(SocketAddr::new(IpAddr::V4(KUBE_DNS_IP), 53))
            .wrap(&["nsenter", &kdns_path])
            .start()
            .unwrap_or_else(|e| panic!("starting NSD as kube-dns: {e:#}"));

        // One dual-stack listener per port serves every local-routed address.
        let any = |port| SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
        let servers = vec![
            TcpServer::start(&world, any(80), GREETING),
            TcpServer::start(&world, any(443), GREETING),
            TcpServer::echo(&world, any(ECHO_PORT)),
        ];

        let dir = tempfile::Builder::new().prefix("fqdnd-e2e-").tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("policies")).expect("policies dir");
        let endpoints = format!(
            "- namespace: kube-system\n  name: kube-dns\n  labels: {{k8s-app: kube-dns}}\n  ips: [\"{KUBE_DNS_IP}\"]\n\
             - namespace: default\n  name: alpine\n  labels: {{app: alpine}}\n  ips: [\"{POD_IP4}\", \"{POD_IP6}\"]\n  \
             interface: {pod_veth}\n"
        );
        std::fs::write(dir.path().join("endpoints.yaml"), endpoints).expect("endpoints file");

        Cluster {
            agent: None,
            _servers: servers,
            dns,
            pod,
            kube_dns,
            world,
            node,
            _resolv: resolv,
            bpffs: Bpffs::new(),
            dir,
            pod_veth,
            agent_args: Vec::new(),
        }
    }

    pub fn policies_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The agent's pin directory (`maps/`, `links/`).
    pub fn bpffs_dir(&self) -> PathBuf {
        self.bpffs.datapath_dir()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("fqdnd.log")
    }

    /// The agent's stderr so far (all runs), without colour codes.
    pub fn log(&self) -> String {
        super::fqdnd::strip_ansi(&std::fs::read_to_string(self.log_path()).unwrap_or_default())
    }

    /// Start `fqdnd run --mode transparent` in the node namespace and wait until it is ready
    /// (its admin socket says policies and datapath are loaded).
    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "the agent is already running");
        let mut cmd = self.agent_command(&[]);
        let child = self.spawn_in_node(&mut cmd);
        self.agent = Some(Agent { child });
        self.wait_ready();
    }

    /// The restart handover: start a second agent with `--takeover` while this one runs; it
    /// serves the running agent's sockets and tells it to stop. Returns once the old agent has
    /// exited (its status) and the new one is ready.
    pub fn takeover_agent(&mut self) -> std::process::ExitStatus {
        let mut old = self.agent.take().expect("the agent is running");
        let mut cmd = self.agent_command(&["--takeover"]);
        let child = self.spawn_in_node(&mut cmd);
        self.agent = Some(Agent { child });
        let deadline = Instant::now() + AGENT_WAIT;
        let status = loop {
            self.check_alive("the previous agent to hand over");
            if let Ok(Some(status)) = old.child.try_wait() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the previous agent did not stop within {AGENT_WAIT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.wait_ready();
        status
    }

    /// `fqdnd run --mode transparent` with this cluster's policies, endpoints, state and bpffs
    /// directories and `extra` flags, its stderr appended to the log.
    fn agent_command(&self, extra: &[&str]) -> Command {
        let log = File::options().create(true).append(true).open(self.log_path()).expect("agent log");
        // FQDND_BIN: measure another build (benches/restart.sh compares with main's).
        let bin = std::env::var_os("FQDND_BIN").map(PathBuf::from).unwrap_or_else(agent_binary);
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .args(["--mode", "transparent"])
            .arg("--policies")
            .arg(self.policies_dir())
            .arg("--endpoints")
            .arg(self.dir.path().join("endpoints.yaml"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--bpffs-dir")
            .arg(self.bpffs.datapath_dir())
            .args(["--metrics-addr", METRICS_ADDR])
            .args(&self.agent_args)
            .args(extra)
            // The harness waits on the datapath's info line, whatever filter the caller set.
            .env(
                "FQDND_LOG",
                format!("{},fqdnd::agent::datapath=info", std::env::var("FQDND_LOG").unwrap_or_else(|_| "info".into())),
            )
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        cmd
    }

    /// Spawn `cmd` in the node namespace (entered with `setns`, so the test's bpffs stays visible).
    pub fn spawn_in_node(&self, cmd: &mut Command) -> Child {
        let ns = File::open(self.node.path()).expect("node netns");
        let ns_fd = ns.as_raw_fd();
        // SAFETY: setns(2) is async-signal-safe; the fd stays open in the parent until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {cmd:?} in the node namespace: {e}"));
        drop(ns);
        child
    }

    /// The running agent's process id.
    pub fn agent_pid(&self) -> u32 {
        self.agent.as_ref().expect("the agent is running").child.id()
    }

    /// SIGKILL the agent (no shutdown path runs) and reap it.
    pub fn kill_agent(&mut self) {
        let mut agent = self.agent.take().expect("the agent is running");
        let _ = agent.child.kill();
        let _ = agent.child.wait();
    }

    /// SIGTERM the agent and wait for it to exit.
    pub fn stop_agent(&mut self) -> std::process::ExitStatus {
        let mut agent = self.agent.take().expect("the agent is running");
        agent.terminate()
    }

    fn check_alive(&mut self, waiting_for: &str) {
        if let Some(agent) = self.agent.as_mut()
            && let Ok(Some(status)) = agent.child.try_wait()
        {
            let log = self.log();
            panic!("fqdnd exited ({status}) while waiting for {waiting_for}:\n{log}");
        }
    }

    /// The agent's status over its admin socket.
    pub fn status(&self) -> Result<admin::AgentStatus, String> {
        let path = admin::socket_path(&self.state_dir());
        let mut client = AdminClient::request(&path, &Request::Status).map_err(|e| e.to_string())?;
        match client.next_response() {
            Some(Ok(Response::Status { status })) => Ok(status),
            other => Err(format!("unexpected answer to status: {other:?}")),
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + AGENT_WAIT;
        let mut last = String::new();
        while Instant::now() < deadline {
            self.check_alive("readiness");
            match self.status() {
                Ok(s) if s.ready => return,
                Ok(s) => last = format!("not ready: {:?}", s.not_loaded),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("fqdnd not ready after {AGENT_WAIT:?} ({last}):\n{}", self.log());
    }

    /// Put `source` into the policy directory as `name` (atomically, as `kubectl apply` replaces
    /// an object) and wait until the agent has loaded and applied it.
    pub fn set_policy(&mut self, name: &str, source: &Path) {
        let text = std::fs::read_to_string(source).unwrap_or_else(|e| panic!("reading {}: {e}", source.display()));
        self.change_policies(&format!("{name} <- {}", source.display()), |dir| {
            let tmp = dir.parent().expect("parent").join(format!(".{name}.tmp"));
            std::fs::write(&tmp, &text)?;
            std::fs::rename(&tmp, dir.join(name))
        });
    }

    /// Remove `name` from the policy directory and wait until the agent has applied that.
    pub fn remove_policy(&mut self, name: &str) {
        self.change_policies(&format!("removing {name}"), |dir| std::fs::remove_file(dir.join(name)));
    }

    fn change_policies(&mut self, what: &str, change: impl FnOnce(&Path) -> io::Result<()>) {
        let offset = self.log().len();
        change(&self.policies_dir()).unwrap_or_else(|e| panic!("{what}: {e}"));
        self.wait_log_after(offset, APPLIED_LINE, what);
    }

    /// Wait until the log, past `offset`, has a line containing `needle`.
    pub fn wait_log_after(&mut self, offset: usize, needle: &str, what: &str) {
        let deadline = Instant::now() + AGENT_WAIT;
        while Instant::now() < deadline {
            self.check_alive(what);
            if self.log().get(offset..).is_some_and(|l| l.contains(needle)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{what}: the agent never logged {needle:?} within {AGENT_WAIT:?}:\n{}", self.log());
    }

    // ---- clients in the pod --------------------------------------------------------------------

    /// `ip netns exec <pod> args...` (so the pod's resolv.conf applies), bounded.
    pub fn pod_exec(&self, program: &Path, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.pod.name()]).arg(program).args(args);
        run_bounded(cmd, CLIENT_LIMIT)
    }

    /// getaddrinfo(name) with the C library `libc`, then (with `port`) a TCP connect to the first
    /// address that answers.
    pub fn getaddrinfo(&self, libc: Libc, name: &str, port: Option<u16>) -> Resolution {
        let client = clients::client(libc);
        let port = port.map(|p| p.to_string());
        let mut args = vec![name];
        args.extend(port.as_deref());
        let out = self.pod_exec(&client, &args);
        Resolution::parse(out.status.code().unwrap_or(-1), &String::from_utf8_lossy(&out.stdout))
    }

    /// `dig NAME TYPE` in the pod against its resolv.conf nameserver (one try, 2 s).
    pub fn dig(&self, name: &str, rtype: &str, extra: &[&str]) -> Result<DigResult, String> {
        let mut args = vec!["+tries=1", "+time=2"];
        args.extend_from_slice(extra);
        args.extend([name, rtype]);
        let out = self.pod_exec(Path::new("dig"), &args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let r = dig::parse(&stdout);
        if r.status.is_empty() {
            Err(format!("dig {name} {rtype}: no answer: {stdout}{}", String::from_utf8_lossy(&out.stderr)))
        } else {
            Ok(r)
        }
    }

    /// A TCP connect from the pod (its address of `dst`'s family) that reads the greeting; the
    /// source port is returned either way, to find the drop flow of exactly this attempt.
    pub fn connect(&self, dst: SocketAddr, timeout: Duration) -> (u16, io::Result<Vec<u8>>) {
        let src = if dst.is_ipv4() { IpAddr::V4(POD_IP4) } else { IpAddr::V6(POD_IP6) };
        self.pod.run(|| netns::tcp_exchange(src, dst, timeout))
    }

    /// An open TCP connection from the pod.
    pub fn open(&self, dst: SocketAddr) -> std::net::TcpStream {
        let src = if dst.is_ipv4() { IpAddr::V4(POD_IP4) } else { IpAddr::V6(POD_IP6) };
        let (_, s) = self.pod.run(|| netns::tcp_connect(src, dst, CONNECT));
        s.unwrap_or_else(|e| panic!("connecting the pod to {dst}: {e}"))
    }

    // ---- the agent's view ----------------------------------------------------------------------

    /// `fqdnd <args> --state-dir <state>` as a process, bounded.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(agent_binary());
        cmd.args(args).arg("--state-dir").arg(self.state_dir());
        run_bounded(cmd, AGENT_WAIT)
    }

    /// `fqdnd observe -o json --last 100000 <filters>`: every buffered flow line, parsed.
    pub fn observe(&self, filters: &[&str]) -> Vec<Value> {
        let mut args = vec!["observe", "-o", "json", "--last", "100000"];
        args.extend_from_slice(filters);
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "fqdnd {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("observe printed a line that is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// The first flow (the `flow` object of an observe line) matching `pred`, waiting for it to
    /// arrive (flows are delivered asynchronously).
    pub fn wait_flow(&self, filters: &[&str], what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            seen = self.observe(filters);
            if let Some(line) = seen.iter().find(|l| pred(&l["flow"])) {
                return line["flow"].clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let shown: Vec<String> = seen.iter().map(|l| l["flow"]["Summary"].to_string()).collect();
        panic!("no flow {what} (observe {filters:?}); flows seen:\n{}\nagent log:\n{}", shown.join("\n"), self.log());
    }

    /// `fqdnd cache list -o json`.
    pub fn cache_list(&self) -> Vec<Value> {
        let out = self.cli(&["cache", "list", "-o", "json"]);
        assert!(out.status.success(), "fqdnd cache list failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("cache list -o json: {e}: {}", String::from_utf8_lossy(&out.stdout)));
        match v {
            Value::Array(rows) => rows,
            other => panic!("cache list -o json is not an array: {other}"),
        }
    }

    /// The metrics page, fetched with curl inside the node namespace.
    pub fn metrics(&self) -> String {
        let mut cmd = self.node.command("curl");
        cmd.args(["-sS", "--fail", "--max-time", "5"]).arg(format!("http://{METRICS_ADDR}/metrics"));
        let out = run_bounded(cmd, AGENT_WAIT);
        assert!(out.status.success(), "curl /metrics: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("metrics are UTF-8")
    }
}

/// The line the agent logs once a policy change is in force in the proxy and the datapath.
pub const APPLIED_LINE: &str = "datapath converged";

/// The sum of every series of `name` (`name{...} v` and `name v`) in a Prometheus text page.
pub fn metric_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let base = series.split('{').next()?;
            (base == name).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// A running `fqdnd run`.
struct Agent {
    child: Child,
}

impl Agent {
    /// SIGTERM, a bounded wait, then SIGKILL.
    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().expect("reaping fqdnd")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// Run `cmd` to completion with output captured; kill it past `limit` (the output says so).
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let mut killed = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a client") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stderr = err_t.join().expect("stderr reader");
    if killed {
        stderr.extend_from_slice(format!("\n(killed after {limit:?})").as_bytes());
    }
    Output { status, stdout: out_t.join().expect("stdout reader"), stderr }
}
