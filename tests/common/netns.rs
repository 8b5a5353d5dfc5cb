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

#![allow(dead_code)]

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
    pub fn new() -> Bpffs {
        let dir = tempfile::Builder::new().prefix("fqdnd-bpffs-").tempdir().expect("tempdir");
        ebpf_redirect::bpffs::mount_bpffs(dir.path()).expect("mounting bpffs");
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
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; we fill the variant that matches `addr`.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let sin: libc::sockaddr_in = unsafe { std::ptr::read((ss as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes())),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read((ss as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)), u16::from_be(sin6.sin6_port)))
        }
        _ => None,
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn socket(family: IpAddr, kind: libc::c_int) -> io::Result<OwnedFd> {
    let domain = if family.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2); the fd is owned by the returned OwnedFd.
    let fd = cvt(unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, 0) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt_int(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value is a live c_int of the size passed.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn bind(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr(addr);
    // SAFETY: ss holds a valid sockaddr of length len.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), (&ss as *const libc::sockaddr_storage).cast(), len) }).map(drop)
}

fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    // SAFETY: getsockname writes at most len bytes into ss.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    cvt(unsafe { libc::getsockname(fd.as_raw_fd(), (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len) })?;
    from_sockaddr(&ss).ok_or_else(|| io::Error::other("unknown address family"))
}

/// A TCP connection attempt from `src` (port chosen by the kernel, returned even when the connect
/// fails, so a test can look for the drop event of exactly this 5-tuple). Call inside the
/// source's namespace ([`Netns::run`]).
pub fn tcp_connect(src: IpAddr, dst: SocketAddr, timeout: Duration) -> (u16, io::Result<TcpStream>) {
    let fd = socket(src, libc::SOCK_STREAM).expect("socket");
    bind(&fd, SocketAddr::new(src, 0)).expect("bind");
    let port = local_addr(&fd).expect("getsockname").port();
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(true).expect("nonblocking");
    let (ss, len) = sockaddr(dst);
    // SAFETY: ss holds a valid sockaddr of length len.
    let rc = unsafe { libc::connect(stream.as_raw_fd(), (&ss as *const libc::sockaddr_storage).cast(), len) };
    let result = if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            Err(e)
        } else {
            let mut pfd = libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
            if n == 0 {
                Err(io::Error::new(io::ErrorKind::TimedOut, format!("connect to {dst} timed out")))
            } else {
                match stream.take_error() {
                    Ok(None) => Ok(()),
                    Ok(Some(e)) | Err(e) => Err(e),
                }
            }
        }
    };
    (
        port,
        result.map(|()| {
            stream.set_nonblocking(false).expect("blocking");
            stream
        }),
    )
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

/// A datagram with the destination the sender used (IP_ORIGDSTADDR), as a transparent proxy
/// sees it.
pub struct Intercepted {
    pub payload: Vec<u8>,
    pub peer: SocketAddr,
    pub original_dst: SocketAddr,
}

/// A transparent UDP socket (IP_TRANSPARENT + IP_RECVORIGDSTADDR) bound to `bind` — the shape of
/// the DNS proxy's socket, for tests of the redirect without the proxy.
pub fn transparent_udp(bind_to: SocketAddr) -> io::Result<UdpSocket> {
    let fd = socket(bind_to.ip(), libc::SOCK_DGRAM)?;
    if bind_to.is_ipv4() {
        setsockopt_int(&fd, libc::SOL_IP, libc::IP_TRANSPARENT, 1)?;
        setsockopt_int(&fd, libc::SOL_IP, libc::IP_RECVORIGDSTADDR, 1)?;
    } else {
        setsockopt_int(&fd, libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1)?;
        setsockopt_int(&fd, libc::SOL_IPV6, libc::IPV6_RECVORIGDSTADDR, 1)?;
    }
    bind(&fd, bind_to)?;
    Ok(UdpSocket::from(fd))
}

/// Receive one datagram from a [`transparent_udp`] socket.
pub fn recv_intercepted(sock: &UdpSocket) -> io::Result<Intercepted> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: msghdr points at live buffers for the duration of recvmsg.
    unsafe {
        let mut peer: libc::sockaddr_storage = std::mem::zeroed();
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let mut control = [0u64; 64];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut peer as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        let mut original = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            let is_v4 = c.cmsg_level == libc::SOL_IP && c.cmsg_type == libc::IP_ORIGDSTADDR;
            let is_v6 = c.cmsg_level == libc::SOL_IPV6 && c.cmsg_type == libc::IPV6_ORIGDSTADDR;
            if is_v4 || is_v6 {
                let mut ss: libc::sockaddr_storage = std::mem::zeroed();
                let len = (c.cmsg_len as usize - libc::CMSG_LEN(0) as usize).min(size_of::<libc::sockaddr_storage>());
                std::ptr::copy_nonoverlapping(
                    libc::CMSG_DATA(cmsg),
                    (&mut ss as *mut libc::sockaddr_storage).cast(),
                    len,
                );
                original = from_sockaddr(&ss);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok(Intercepted {
            payload: buf,
            peer: from_sockaddr(&peer).ok_or_else(|| io::Error::other("no peer address"))?,
            original_dst: original.ok_or_else(|| io::Error::other("no IP_ORIGDSTADDR control message"))?,
        })
    }
}

/// Send `payload` to `to` from the non-local address `from` (IP_TRANSPARENT), as the proxy
/// answers in the original server's name.
pub fn send_from(from: SocketAddr, to: SocketAddr, payload: &[u8]) -> io::Result<()> {
    let fd = socket(from.ip(), libc::SOCK_DGRAM)?;
    if from.is_ipv4() {
        setsockopt_int(&fd, libc::SOL_IP, libc::IP_TRANSPARENT, 1)?;
    } else {
        setsockopt_int(&fd, libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1)?;
    }
    setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind(&fd, from)?;
    UdpSocket::from(fd).send_to(payload, to).map(drop)
}

/// A transparent TCP listener (IP_TRANSPARENT) on `bind_to`: accepted connections carry the
/// original destination as their local address.
pub fn transparent_tcp(bind_to: SocketAddr) -> io::Result<TcpListener> {
    let fd = socket(bind_to.ip(), libc::SOCK_STREAM)?;
    if bind_to.is_ipv4() {
        setsockopt_int(&fd, libc::SOL_IP, libc::IP_TRANSPARENT, 1)?;
    } else {
        setsockopt_int(&fd, libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1)?;
    }
    setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind(&fd, bind_to)?;
    // SAFETY: listen(2) on a bound socket we own.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 64) })?;
    Ok(TcpListener::from(fd))
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
