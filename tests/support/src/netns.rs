//! Network namespaces for privileged tests: uniquely named per test, removed on drop.
//!
//! Work inside a namespace happens on a scoped thread that `setns`es into it ([`Netns::run`]):
//! `ip netns exec` would remount /sys and hide bpffs. A socket keeps the namespace it was created
//! in, so sockets made in `run` can be used from any thread afterwards.
//!
//! [`Topology`] is the standard layout: a node namespace (where fqdnd's datapath runs, so the
//! host's network is never touched) with a veth to a pod namespace and one to a world namespace.
//!
//! ```text
//!  pod                 node                              world
//!  eth0 10.200.0.2 ─── vpod 10.200.0.1   vworld 10.200.2.1 ─── eth0 10.200.2.2
//!       fd00:200::2         fd00:200::1         fd00:202::1          fd00:202::2
//! ```
//!
//! The addresses exist only inside these namespaces; every test has its own copies.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

pub const POD_IP4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
pub const POD_GW4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
pub const WORLD_IP4: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 2);
pub const WORLD_GW4: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 1);
pub const POD_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 2);
pub const POD_GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);
pub const WORLD_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x202, 0, 0, 0, 0, 0, 2);
pub const WORLD_GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x202, 0, 0, 0, 0, 0, 1);

/// Name of the node-side veth of the pod.
pub const POD_VETH: &str = "vpod";
pub const WORLD_VETH: &str = "vworld";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `fq<pid>x<n><role>` (netns names have no length
/// limit, but keeping them short keeps `ip netns` listings readable).
pub fn unique_name(role: &str) -> String {
    format!("fq{}x{}{role}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    pub fn new(role: &str) -> Netns {
        let name = unique_name(role);
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { path: PathBuf::from("/run/netns").join(&name), name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` on a thread inside this namespace and return its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(&self.path).unwrap_or_else(|e| panic!("opening {}: {e}", self.path.display()));
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on a namespace fd we hold open; affects only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {}: {}", self.name, std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Start a thread that lives in this namespace (for servers that create sockets as they go).
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let file = File::open(&self.path).unwrap_or_else(|e| panic!("opening {}: {e}", self.path.display()));
        let name = self.name.clone();
        std::thread::spawn(move || {
            // SAFETY: setns on a namespace fd we hold open; affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
            drop(file);
            f()
        })
    }

    /// `ip -n <ns> args...`, panicking with ip's message on failure.
    pub fn ip(&self, args: &[&str]) {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    /// A command that runs inside the namespace (via nsenter, which leaves /sys alone).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path.display())).arg("--").arg(program);
        cmd
    }

    /// Write a sysctl of this namespace (`/proc/sys/net` follows the writer's namespace).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value)).unwrap_or_else(|e| panic!("{} {path}: {e}", self.name));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A private bpffs instance mounted on a temporary directory, unmounted on drop: tests never see
/// each other's pins, and nothing is left in /sys/fs/bpf.
pub struct Bpffs {
    dir: tempfile::TempDir,
}

impl Bpffs {
    #[allow(clippy::new_without_default, reason = "mounting a filesystem is not a default value")]
    pub fn new() -> Bpffs {
        let dir = tempfile::Builder::new().prefix("fqdnd-bpffs-").tempdir().expect("tempdir");
        let c = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: valid NUL-terminated strings for the duration of the call.
        let rc = unsafe { libc::mount(c"bpf".as_ptr(), c.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
        assert_eq!(rc, 0, "mounting bpffs on {}: {}", dir.path().display(), std::io::Error::last_os_error());
        Bpffs { dir }
    }

    /// The directory to give the datapath (a subdirectory, as /sys/fs/bpf/fqdnd in production).
    pub fn datapath_dir(&self) -> PathBuf {
        self.dir.path().join("fqdnd")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.dir.path().as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid C string; MNT_DETACH so open pins do not keep the mount busy.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Pod, node and world namespaces wired as in the module docs, with forwarding on in the node.
pub struct Topology {
    pub pod: Netns,
    pub node: Netns,
    pub world: Netns,
}

impl Topology {
    #[allow(clippy::new_without_default, reason = "creating namespaces is not a default value")]
    pub fn new() -> Topology {
        let node = Netns::new("node");
        let pod = Netns::new("pod");
        let world = Netns::new("world");
        node.ip(&["link", "add", POD_VETH, "type", "veth", "peer", "name", "eth0", "netns", pod.name()]);
        node.ip(&["link", "add", WORLD_VETH, "type", "veth", "peer", "name", "eth0", "netns", world.name()]);
        let addr = |ns: &Netns, a: String, dev: &str| ns.ip(&["addr", "add", &a, "dev", dev, "nodad"]);
        addr(&node, format!("{POD_GW4}/24"), POD_VETH);
        addr(&node, format!("{POD_GW6}/64"), POD_VETH);
        addr(&node, format!("{WORLD_GW4}/24"), WORLD_VETH);
        addr(&node, format!("{WORLD_GW6}/64"), WORLD_VETH);
        addr(&pod, format!("{POD_IP4}/24"), "eth0");
        addr(&pod, format!("{POD_IP6}/64"), "eth0");
        addr(&world, format!("{WORLD_IP4}/24"), "eth0");
        addr(&world, format!("{WORLD_IP6}/64"), "eth0");
        for (ns, dev) in [(&node, POD_VETH), (&node, WORLD_VETH), (&pod, "eth0"), (&world, "eth0")] {
            ns.ip(&["link", "set", dev, "up"]);
        }
        pod.ip(&["route", "add", "default", "via", &POD_GW4.to_string()]);
        pod.ip(&["-6", "route", "add", "default", "via", &POD_GW6.to_string()]);
        world.ip(&["route", "add", "default", "via", &WORLD_GW4.to_string()]);
        world.ip(&["-6", "route", "add", "default", "via", &WORLD_GW6.to_string()]);
        node.sysctl("net.ipv4.ip_forward", "1");
        node.sysctl("net.ipv6.conf.all.forwarding", "1");
        Topology { pod, node, world }
    }

    /// Give the world namespace another address (a "server" the pod talks to).
    pub fn add_world_address(&self, ip: IpAddr) {
        let (a, p) = match ip {
            IpAddr::V4(_) => (ip.to_string(), "/32"),
            IpAddr::V6(_) => (ip.to_string(), "/128"),
        };
        self.world.ip(&["addr", "add", &format!("{a}{p}"), "dev", "eth0", "nodad"]);
    }
}

// ---- sockets -----------------------------------------------------------------------------------

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use dns_proxy::socket::Options;

/// A TCP connection attempt from `src` (port chosen by the kernel, returned even when the connect
/// fails, so a test can look for the drop event of exactly this 5-tuple). Call inside the
/// source's namespace ([`Netns::run`]).
pub fn tcp_connect(src: IpAddr, dst: SocketAddr, timeout: Duration) -> (u16, io::Result<TcpStream>) {
    let sock = socket2::Socket::new(socket2::Domain::for_address(dst), socket2::Type::STREAM, None).expect("socket");
    sock.bind(&SocketAddr::new(src, 0).into()).expect("bind");
    let port = sock.local_addr().ok().and_then(|a| a.as_socket()).expect("getsockname").port();
    (port, sock.connect_timeout(&dst.into(), timeout).map(|()| sock.into()))
}

/// Connect, read the server's greeting and return it.
pub fn tcp_exchange(src: IpAddr, dst: SocketAddr, timeout: Duration) -> (u16, io::Result<Vec<u8>>) {
    use std::io::Read as _;
    let (port, stream) = tcp_connect(src, dst, timeout);
    (
        port,
        stream.and_then(|mut s| {
            s.set_read_timeout(Some(timeout))?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf)?;
            Ok(buf)
        }),
    )
}

/// A TCP server that greets every connection with `greeting` and closes it. Stops on drop.
pub struct TcpServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpServer {
    /// Listen on `addr` inside `ns`; greet and close.
    pub fn start(ns: &Netns, addr: SocketAddr, greeting: &'static [u8]) -> TcpServer {
        Self::spawn(ns, addr, move |mut s| {
            use std::io::Write as _;
            let _ = s.write_all(greeting);
        })
    }

    /// Listen on `addr` inside `ns`; echo every connection until its peer closes it.
    pub fn echo(ns: &Netns, addr: SocketAddr) -> TcpServer {
        Self::spawn(ns, addr, |mut s| {
            std::thread::spawn(move || {
                let mut r = s.try_clone().expect("clone");
                let _ = io::copy(&mut r, &mut s);
            });
        })
    }

    fn spawn(ns: &Netns, addr: SocketAddr, handle: impl Fn(TcpStream) + Send + 'static) -> TcpServer {
        let listener = ns.run(|| TcpListener::bind(addr)).unwrap_or_else(|e| panic!("listen {addr}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        handle(s);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                    Err(_) => break,
                }
            }
        });
        TcpServer { addr, stop, thread: Some(thread) }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP socket in `ns` bound to `addr` that sends every datagram back to its sender, until the
/// returned guard drops.
pub struct UdpEcho {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpEcho {
    pub fn start(ns: &Netns, addr: SocketAddr) -> UdpEcho {
        let sock = ns.run(|| std::net::UdpSocket::bind(addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        UdpEcho { addr, stop, thread: Some(thread) }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Send `payload` from `src` (port chosen by the kernel, returned) to `dst` inside `ns` and wait
/// up to `timeout` for the echo.
pub fn udp_roundtrip(ns: &Netns, src: IpAddr, dst: SocketAddr, timeout: Duration) -> (u16, io::Result<Vec<u8>>) {
    let sock = ns.run(|| std::net::UdpSocket::bind(SocketAddr::new(src, 0))).expect("bind");
    let port = sock.local_addr().unwrap().port();
    sock.set_read_timeout(Some(timeout)).unwrap();
    let res = sock.send_to(b"ping", dst).and_then(|_| {
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf)?;
        Ok(buf[..n].to_vec())
    });
    (port, res)
}

/// A datagram with the destination the sender used (IP_ORIGDSTADDR), as a transparent proxy
/// sees it.
pub struct Intercepted {
    pub payload: Vec<u8>,
    pub peer: SocketAddr,
    pub original_dst: SocketAddr,
}

/// A blocking transparent UDP socket bound to `bind_to`: the DNS proxy's own socket
/// (`dns_proxy::socket`), for tests of the redirect without the proxy.
pub fn transparent_udp(bind_to: SocketAddr) -> io::Result<UdpSocket> {
    let sock = dns_proxy::socket::udp(bind_to, Options::TRANSPARENT).map_err(io::Error::other)?;
    sock.set_nonblocking(false)?;
    Ok(sock)
}

/// Receive one datagram from a [`transparent_udp`] socket, as the proxy reads it.
pub fn recv_intercepted(sock: &UdpSocket) -> io::Result<Intercepted> {
    let mut buf = vec![0u8; 4096];
    let got = dns_proxy::transparent::recv_original_dst(sock.as_raw_fd(), &mut buf)?;
    buf.truncate(got.len);
    let original_dst = got.original_dst.ok_or_else(|| io::Error::other("no IP_ORIGDSTADDR control message"))?;
    Ok(Intercepted { payload: buf, peer: got.source, original_dst })
}

/// Send `payload` to `to` from the non-local address `from`, as the proxy answers in the original
/// server's name (its reply socket).
pub fn send_from(from: SocketAddr, to: SocketAddr, payload: &[u8]) -> io::Result<()> {
    let sock = dns_proxy::socket::udp(from, Options::TRANSPARENT).map_err(io::Error::other)?;
    sock.send_to(payload, to).map(drop)
}

/// A blocking transparent TCP listener on `bind_to` (the proxy's): accepted connections carry the
/// original destination as their local address.
pub fn transparent_tcp(bind_to: SocketAddr) -> io::Result<TcpListener> {
    let sock = dns_proxy::socket::tcp_listener(bind_to, Options::TRANSPARENT).map_err(io::Error::other)?;
    sock.set_nonblocking(false)?;
    Ok(sock)
}

/// The DNS answer to `query` (a single-question query) with one A/AAAA record `ip`, TTL 60.
pub fn dns_answer(query: &[u8], ip: IpAddr) -> Vec<u8> {
    let mut out = query.to_vec();
    out[2] |= 0x84; // QR, AA
    out[3] = 0; // RCODE 0, no RA
    out[6..8].copy_from_slice(&1u16.to_be_bytes()); // ANCOUNT
    out[8..12].fill(0); // NSCOUNT, ARCOUNT: the query's OPT record is dropped below
    // End of the question: name, then QTYPE and QCLASS.
    let mut i = 12;
    while out[i] != 0 {
        i += usize::from(out[i]) + 1;
    }
    out.truncate(i + 5);
    out.extend_from_slice(&[0xc0, 0x0c]);
    let (rtype, data): (u16, Vec<u8>) = match ip {
        IpAddr::V4(a) => (1, a.octets().to_vec()),
        IpAddr::V6(a) => (28, a.octets().to_vec()),
    };
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&60u32.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(&data);
    out
}

/// A DNS query for `name` (A) with `id`, recursion desired: what a hostile pod would craft.
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.extend_from_slice(&[0, 0, 1, 0, 1]); // root, A, IN
    out
}

/// Send one UDP datagram with any source address through a raw socket (`IPPROTO_RAW`, the IP
/// header ours): how a pod forges another's address. Call inside the sender's namespace.
pub fn send_raw_udp4(src: std::net::SocketAddrV4, dst: std::net::SocketAddrV4, payload: &[u8]) -> io::Result<()> {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
    )?;
    let total = 20 + 8 + payload.len();
    let mut pkt = Vec::with_capacity(total);
    pkt.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    pkt.extend_from_slice(&src.ip().octets());
    pkt.extend_from_slice(&dst.ip().octets());
    let udp_len = (8 + payload.len()) as u16;
    pkt.extend_from_slice(&src.port().to_be_bytes());
    pkt.extend_from_slice(&dst.port().to_be_bytes());
    pkt.extend_from_slice(&udp_len.to_be_bytes());
    pkt.extend_from_slice(&[0, 0]); // no UDP checksum (optional over IPv4); the kernel fills the IP one
    pkt.extend_from_slice(payload);
    sock.send_to(&pkt, &SocketAddr::V4(dst).into()).map(drop)
}
