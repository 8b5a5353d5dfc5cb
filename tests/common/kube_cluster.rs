//! The seed tutorial's cluster as a Kubernetes user has it: a real kube-apiserver (etcd, loopback)
//! holding the Nodes, Pods and policies, and the network of those pods in namespaces, policed by
//! `fqdnd run --mode transparent --source kubernetes` in the node namespace. The sibling of
//! `topology.rs` (the same kube-dns, world, zones and clients), with the pods' network laid out
//! as a CNI would:
//!
//! ```text
//!  Routed (ptp, as kindnet / Calico):           Bridge (the bridge plugin, flannel's cni0):
//!   pod eth0 10.0.1.5/32 ── lxcalpine             pod eth0 10.0.1.5/24 ── lxcalpine ─┐
//!       default via 10.0.1.1                          default via 10.0.1.1           br0 10.0.1.1/24
//!   node: 10.0.1.1/32 on lxcalpine,                                                   │
//!         route 10.0.1.5/32 dev lxcalpine         node: the route to 10.0.1.5 is br0; the port
//!                                                        comes from its neighbour + FDB entries
//! ```
//!
//! kube-dns is a Pod of another node (`node-b`) in the API; its network is the kube-dns
//! namespace behind `vkdns`. The agent's kubeconfig is the harness's ServiceAccount token, bound
//! to deploy/rbac.yaml. The API server listens on the host's loopback; a forwarder listening on
//! the node namespace's loopback (same port) carries the agent's connections to it.

#![allow(dead_code)]

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
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
use super::kube::KubeApiserver;
use super::netns::{self, Bpffs, Netns, TcpServer};
use super::topology::{APPLIED_LINE, ECHO_PORT, GREETING, KUBE_DNS_IP, run_bounded};

/// This agent's node and the other one (where kube-dns runs).
pub const NODE: &str = "node-a";
pub const OTHER_NODE: &str = "node-b";
/// node-a's InternalIP in the API (the `host` entity).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const POD_GW4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
pub const POD_GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const KUBE_DNS_GW: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
const WORLD_IP4: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const WORLD_GW4: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const WORLD_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 2);
const WORLD_GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 1);
const WORLD_PREFIXES: [&str; 5] = ["10.200.0.0/16", "10.201.0.0/16", "10.210.0.0/16", "fd00:200::/32", "fd00:201::/32"];
pub const METRICS_ADDR: &str = "127.0.0.1:9967";
/// Bound on waits for the agent; failures say what was awaited.
const AGENT_WAIT: Duration = Duration::from_secs(60);
const CLIENT_LIMIT: Duration = Duration::from_secs(40);

/// How the pods' network is wired on the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodNet {
    Routed,
    Bridge,
}

/// A pod's network namespace, its node-side veth and its resolv.conf.
pub struct PodNs {
    pub name: String,
    pub ns: Netns,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub veth: String,
    etc: PathBuf,
}

impl Drop for PodNs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

/// Listens on 127.0.0.1:`port` inside a namespace and carries each connection to the host's
/// 127.0.0.1:`port` (the API server). Stops accepting on drop.
struct Forwarder {
    listener: TcpListener,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forwarder {
    fn start(ns: &Netns, port: u16) -> Forwarder {
        let listener = ns
            .run(|| TcpListener::bind((Ipv4Addr::LOCALHOST, port)))
            .unwrap_or_else(|e| panic!("forwarder: binding 127.0.0.1:{port} in the node namespace: {e}"));
        let accept = listener.try_clone().expect("cloning the forwarder's listener");
        // This thread and the ones it starts are in the test's own namespace: their connects
        // reach the host's loopback.
        let thread = std::thread::spawn(move || {
            for conn in accept.incoming() {
                let Ok(inner) = conn else { return };
                let Ok(outer) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
                    // The API server is down: the agent sees a reset, as from a dead server.
                    let _ = inner.shutdown(Shutdown::Both);
                    continue;
                };
                pipe(inner, outer);
            }
        });
        Forwarder { listener, thread: Some(thread) }
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (a2, b2) = (a.try_clone().expect("clone"), b.try_clone().expect("clone"));
    std::thread::spawn(move || copy_then_close(a, b));
    std::thread::spawn(move || copy_then_close(b2, a2));
}

fn copy_then_close(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        // SAFETY: shutdown(2) on a socket we own; it wakes the blocked accept with an error.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The cluster. Fields drop in order: the agent first, the API server and the bpffs last.
pub struct KubeCluster {
    agent: Option<Child>,
    forwarder: Option<Forwarder>,
    _servers: Vec<TcpServer>,
    pub dns: DnsServer,
    pub pods: Vec<PodNs>,
    pub kube_dns: Netns,
    pub world: Netns,
    pub node: Netns,
    pub mode: PodNet,
    bpffs: Bpffs,
    /// state/, fqdnd.log.
    pub dir: tempfile::TempDir,
    pub kube: KubeApiserver,
}

impl KubeCluster {
    /// Build everything, apply deploy/crds and deploy/rbac.yaml, register both nodes, kube-dns
    /// (on node-b) and default/alpine (on node-a, labels app=alpine) with their IPs, and start
    /// the agent.
    pub fn start(mode: PodNet) -> KubeCluster {
        let mut c = KubeCluster::build(mode);
        c.start_agent();
        c
    }

    /// [`KubeCluster::start`] without starting the agent.
    pub fn build(mode: PodNet) -> KubeCluster {
        let kube = KubeApiserver::start().unwrap_or_else(|e| panic!("starting kube-apiserver: {e:#}"));
        let repo = |p: &str| super::paths::workspace().join(p).display().to_string();
        kube.kubectl_ok(&["apply", "-f", &repo("deploy/crds")]).expect("applying deploy/crds");
        // kubectl 1.20's wait fails outright on a CRD whose status has no conditions yet (the
        // first moments after create): try again until it waits.
        let wait = [
            "wait",
            "--for=condition=Established",
            "crd/ciliumnetworkpolicies.cilium.io",
            "crd/ciliumclusterwidenetworkpolicies.cilium.io",
            "--timeout=60s",
        ];
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = kube.kubectl_ok(&wait) {
            assert!(Instant::now() < deadline, "CRDs not established: {e:#}");
            std::thread::sleep(Duration::from_millis(200));
        }
        kube.kubectl_ok(&["apply", "-f", &repo("deploy/rbac.yaml")]).expect("applying deploy/rbac.yaml");
        kube.create_node(NODE, &[("InternalIP", &NODE_IP.to_string()), ("Hostname", NODE)]).expect("node-a");
        kube.create_node(OTHER_NODE, &[("InternalIP", "192.0.2.11"), ("Hostname", OTHER_NODE)]).expect("node-b");

        let node = Netns::new("node");
        let kube_dns = Netns::new("kdns");
        let world = Netns::new("world");
        node.ip(&["link", "add", "vkdns", "type", "veth", "peer", "name", "eth0", "netns", kube_dns.name()]);
        node.ip(&["link", "add", "vworld", "type", "veth", "peer", "name", "eth0", "netns", world.name()]);
        let addr = |ns: &Netns, a: String, dev: &str| ns.ip(&["addr", "add", &a, "dev", dev, "nodad"]);
        addr(&node, format!("{KUBE_DNS_GW}/24"), "vkdns");
        addr(&node, format!("{WORLD_GW4}/24"), "vworld");
        addr(&node, format!("{WORLD_GW6}/64"), "vworld");
        addr(&kube_dns, format!("{KUBE_DNS_IP}/24"), "eth0");
        addr(&world, format!("{WORLD_IP4}/24"), "eth0");
        addr(&world, format!("{WORLD_IP6}/64"), "eth0");
        for (ns, dev) in [(&node, "vkdns"), (&node, "vworld"), (&kube_dns, "eth0"), (&world, "eth0")] {
            ns.ip(&["link", "set", dev, "up"]);
        }
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
        if mode == PodNet::Bridge {
            node.ip(&["link", "add", "br0", "type", "bridge"]);
            addr(&node, format!("{POD_GW4}/24"), "br0");
            addr(&node, format!("{POD_GW6}/64"), "br0");
            node.ip(&["link", "set", "br0", "up"]);
            // With br_netfilter loaded (it is on this machine; the sysctls are per namespace and
            // default to 1), bridged frames pass iptables and the proxy redirect
            // (bpf_sk_assign) no longer delivers: queries never reach the proxy. A known
            // datapath limitation on bridge CNIs with bridge-nf-call-iptables=1, not a matter of
            // finding the port; turned off here so the rest of the path is tested.
            for key in ["net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"] {
                if Path::new("/proc/sys").join(key.replace('.', "/")).exists() {
                    node.sysctl(key, "0");
                }
            }
        }

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
        let any = |port| SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
        let servers = vec![
            TcpServer::start(&world, any(80), GREETING),
            TcpServer::start(&world, any(443), GREETING),
            TcpServer::echo(&world, any(ECHO_PORT)),
        ];
        let dir = tempfile::Builder::new().prefix("fqdnd-k8s-").tempdir().expect("tempdir");

        let mut c = KubeCluster {
            agent: None,
            forwarder: None,
            _servers: servers,
            dns,
            pods: Vec::new(),
            kube_dns,
            world,
            node,
            mode,
            bpffs: Bpffs::new(),
            dir,
            kube,
        };
        c.kube.create_pod("kube-system", "kube-dns", OTHER_NODE, &[("k8s-app", "kube-dns")]).expect("kube-dns pod");
        c.kube.set_pod_running("kube-system", "kube-dns", &[IpAddr::V4(KUBE_DNS_IP)]).expect("kube-dns IPs");
        c.add_pod_network("alpine", 5);
        c.kube.create_pod("default", "alpine", NODE, &[("app", "alpine")]).expect("alpine pod");
        let ips = c.pod("alpine").ips();
        c.kube.set_pod_running("default", "alpine", &ips).expect("alpine IPs");
        c.forwarder = Some(Forwarder::start(&c.node, c.kube.port()));
        c
    }

    /// A pod's network as the CNI would leave it: namespace, veth, addresses 10.0.1.`host` and
    /// fd00::`host`, routes, resolv.conf. The pod's API object is the caller's to write.
    pub fn add_pod_network(&mut self, name: &str, host: u8) -> &PodNs {
        let ns = Netns::new(&format!("p{host}"));
        let veth = format!("lxc{name}");
        assert!(veth.len() <= 15, "{veth}: interface names have at most 15 bytes");
        let ip4 = Ipv4Addr::new(10, 0, 1, host);
        let ip6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(host));
        let node = &self.node;
        node.ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns.name()]);
        let addr = |ns: &Netns, a: String, dev: &str| ns.ip(&["addr", "add", &a, "dev", dev, "nodad"]);
        match self.mode {
            PodNet::Routed => {
                addr(node, format!("{POD_GW4}/32"), &veth);
                addr(node, format!("{POD_GW6}/128"), &veth);
                node.ip(&["link", "set", &veth, "up"]);
                node.ip(&["route", "add", &format!("{ip4}/32"), "dev", &veth]);
                node.ip(&["-6", "route", "add", &format!("{ip6}/128"), "dev", &veth]);
                addr(&ns, format!("{ip4}/32"), "eth0");
                addr(&ns, format!("{ip6}/128"), "eth0");
                ns.ip(&["link", "set", "eth0", "up"]);
                ns.ip(&["route", "add", &POD_GW4.to_string(), "dev", "eth0", "scope", "link"]);
                ns.ip(&["route", "add", "default", "via", &POD_GW4.to_string(), "dev", "eth0"]);
                ns.ip(&["-6", "route", "add", &POD_GW6.to_string(), "dev", "eth0"]);
                ns.ip(&["-6", "route", "add", "default", "via", &POD_GW6.to_string(), "dev", "eth0"]);
            }
            PodNet::Bridge => {
                node.ip(&["link", "set", &veth, "master", "br0"]);
                node.ip(&["link", "set", &veth, "up"]);
                addr(&ns, format!("{ip4}/24"), "eth0");
                addr(&ns, format!("{ip6}/64"), "eth0");
                ns.ip(&["link", "set", "eth0", "up"]);
                ns.ip(&["route", "add", "default", "via", &POD_GW4.to_string()]);
                ns.ip(&["-6", "route", "add", "default", "via", &POD_GW6.to_string()]);
            }
        }
        let etc = PathBuf::from("/etc/netns").join(ns.name());
        std::fs::create_dir_all(&etc).unwrap_or_else(|e| panic!("creating {}: {e}", etc.display()));
        std::fs::write(
            etc.join("resolv.conf"),
            format!(
                "nameserver {KUBE_DNS_IP}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n\
                 options ndots:5\n"
            ),
        )
        .expect("writing the pod's resolv.conf");
        self.pods.push(PodNs { name: name.to_string(), ns, ip4, ip6, veth, etc });
        self.pods.last().expect("just pushed")
    }

    /// Remove a pod's network (as the CNI does when the pod goes).
    pub fn remove_pod_network(&mut self, name: &str) {
        self.pods.retain(|p| p.name != name);
    }

    pub fn pod(&self, name: &str) -> &PodNs {
        self.pods.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no pod network {name}"))
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

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

    /// Start `fqdnd run --mode transparent --source kubernetes` in the node namespace, the
    /// agent's kubeconfig given through $KUBECONFIG (as a user's shell would), and wait until
    /// it is ready.
    pub fn start_agent(&mut self) {
        self.spawn_agent(&[]);
        self.wait_ready();
    }

    /// Start the agent with `extra` arguments and do not wait for readiness.
    pub fn spawn_agent(&mut self, extra: &[&str]) {
        assert!(self.agent.is_none(), "the agent is already running");
        let log = File::options().create(true).append(true).open(self.log_path()).expect("agent log");
        let ns = File::open(self.node.path()).expect("node netns");
        let mut cmd = Command::new(super::topology::agent_binary());
        cmd.arg("run")
            .args(["--mode", "transparent", "--source", "kubernetes", "--node-name", NODE])
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--bpffs-dir")
            .arg(self.bpffs.datapath_dir())
            .args(["--metrics-addr", METRICS_ADDR])
            .args(extra)
            .env("KUBECONFIG", self.kube.kubeconfig_agent())
            .env_remove("NODE_NAME")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env(
                "FQDND_LOG",
                format!("{},fqdnd::agent::datapath=info", std::env::var("FQDND_LOG").unwrap_or_else(|_| "info".into())),
            )
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
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
        self.agent = Some(cmd.spawn().expect("starting fqdnd"));
    }

    /// The running agent's process id.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// SIGKILL the agent and reap it.
    pub fn kill_agent(&mut self) {
        let mut agent = self.agent.take().expect("the agent is running");
        let _ = agent.kill();
        let _ = agent.wait();
    }

    fn check_alive(&mut self, waiting_for: &str) {
        if let Some(agent) = self.agent.as_mut()
            && let Ok(Some(status)) = agent.try_wait()
        {
            panic!("fqdnd exited ({status}) while waiting for {waiting_for}:\n{}", self.log());
        }
    }

    pub fn status(&self) -> Result<admin::AgentStatus, String> {
        let path = admin::socket_path(&self.state_dir());
        let mut client = AdminClient::request(&path, &Request::Status).map_err(|e| e.to_string())?;
        match client.next_response() {
            Some(Ok(Response::Status { status })) => Ok(status),
            other => Err(format!("unexpected answer to status: {other:?}")),
        }
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + AGENT_WAIT;
        let mut last = String::new();
        while Instant::now() < deadline {
            self.check_alive("readiness");
            match self.status() {
                Ok(s) if s.ready => return,
                Ok(s) => last = format!("not ready: {:?}", s.not_loaded),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("fqdnd not ready after {AGENT_WAIT:?} ({last}):\n{}", self.log());
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

    /// Make a change in the API (`change` runs kubectl) and wait until the agent has applied the
    /// snapshot it causes to the proxy and the datapath.
    pub fn changed(&mut self, what: &str, change: impl FnOnce(&KubeApiserver)) {
        let offset = self.log().len();
        change(&self.kube);
        self.wait_log_after(offset, APPLIED_LINE, what);
    }

    /// `kubectl apply -f FILE` (as the cluster admin) and wait until the agent enforces it.
    pub fn apply_file(&mut self, file: &Path) {
        let f = file.display().to_string();
        self.changed(&format!("kubectl apply -f {f}"), |k| {
            k.kubectl_ok(&["apply", "-f", &f]).unwrap_or_else(|e| panic!("{e:#}"));
        });
    }

    /// `kubectl apply -f -` of `yaml`, and wait until the agent enforces it.
    pub fn apply(&mut self, what: &str, yaml: &str) {
        self.changed(what, |k| {
            k.apply_yaml(yaml).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        });
    }

    // ---- clients in a pod ----------------------------------------------------------------------

    pub fn pod_exec(&self, pod: &str, program: &Path, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.pod(pod).ns.name()]).arg(program).args(args);
        run_bounded(cmd, CLIENT_LIMIT)
    }

    pub fn getaddrinfo(&self, pod: &str, libc: Libc, name: &str, port: Option<u16>) -> Resolution {
        let client = clients::client(libc);
        let port = port.map(|p| p.to_string());
        let mut args = vec![name];
        args.extend(port.as_deref());
        let out = self.pod_exec(pod, &client, &args);
        Resolution::parse(out.status.code().unwrap_or(-1), &String::from_utf8_lossy(&out.stdout))
    }

    pub fn dig(&self, pod: &str, name: &str, rtype: &str, extra: &[&str]) -> Result<DigResult, String> {
        let mut args = vec!["+tries=1", "+time=2"];
        args.extend_from_slice(extra);
        args.extend([name, rtype]);
        let out = self.pod_exec(pod, Path::new("dig"), &args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let r = dig::parse(&stdout);
        if r.status.is_empty() {
            Err(format!("dig {name} {rtype}: no answer: {stdout}{}", String::from_utf8_lossy(&out.stderr)))
        } else {
            Ok(r)
        }
    }

    pub fn connect(&self, pod: &str, dst: SocketAddr, timeout: Duration) -> (u16, io::Result<Vec<u8>>) {
        let p = self.pod(pod);
        let src = if dst.is_ipv4() { IpAddr::V4(p.ip4) } else { IpAddr::V6(p.ip6) };
        p.ns.run(|| netns::tcp_exchange(src, dst, timeout))
    }

    // ---- the agent's view ----------------------------------------------------------------------

    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(super::topology::agent_binary());
        cmd.args(args).arg("--state-dir").arg(self.state_dir());
        run_bounded(cmd, AGENT_WAIT)
    }

    pub fn observe(&self, filters: &[&str]) -> Vec<Value> {
        let mut args = vec!["observe", "-o", "json", "--last", "100000"];
        args.extend_from_slice(filters);
        let out = self.cli(&args);
        assert!(out.status.success(), "fqdnd {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("observe line is not JSON ({e}): {l}")))
            .collect()
    }

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

    /// The metrics page, fetched with curl inside the node namespace.
    pub fn metrics(&self) -> String {
        let mut cmd = self.node.command("curl");
        cmd.args(["-sS", "--fail", "--max-time", "5"]).arg(format!("http://{METRICS_ADDR}/metrics"));
        let out = run_bounded(cmd, AGENT_WAIT);
        assert!(out.status.success(), "curl /metrics: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("metrics are UTF-8")
    }

    /// `/readyz`: (HTTP status, body).
    pub fn readyz(&self) -> (u16, String) {
        let mut cmd = self.node.command("curl");
        cmd.args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"]).arg(format!("http://{METRICS_ADDR}/readyz"));
        let out = run_bounded(cmd, AGENT_WAIT);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// Interfaces the datapath is attached to, by name: its pinned TCX links
    /// (`links/if<index>_<direction>`) mapped to names in the node namespace (Debian's bpftool
    /// 7.1 does not list TCX links).
    pub fn attached_interfaces(&self) -> Vec<String> {
        let mut indexes: Vec<u64> = std::fs::read_dir(self.bpffs_dir().join("links"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.strip_prefix("if")?.split('_').next()?.parse().ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        indexes.sort();
        indexes.dedup();
        let out = Command::new("ip").args(["-j", "-n", self.node.name(), "link", "show"]).output().expect("ip link");
        let links: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let mut names: Vec<String> = indexes
            .iter()
            .map(|i| {
                links
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|l| l["ifindex"].as_u64() == Some(*i))
                    .and_then(|l| l["ifname"].as_str())
                    .map_or_else(|| format!("if{i} (gone)"), str::to_string)
            })
            .collect();
        names.sort();
        names
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = agent.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = agent.kill();
            let _ = agent.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- fqdnd log (tail):\n{}", tail(&self.log(), 80));
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl PodNs {
    pub fn ips(&self) -> Vec<IpAddr> {
        vec![IpAddr::V4(self.ip4), IpAddr::V6(self.ip6)]
    }
}
