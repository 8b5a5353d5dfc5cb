//! The one place the proxy's sockets are made: listeners in plain and transparent mode, and the
//! transparent reply sockets. Every setsockopt failure names its option and address.
//!
//! Transparent mode: the datapath assigns pods' DNS packets (still addressed to the DNS server
//! they chose) to these sockets with `bpf_sk_assign`; `IP_TRANSPARENT` lets the kernel hand them
//! over and lets the proxy answer from the server's address, which is not local. UDP sockets also
//! report each datagram's original destination (`IP_RECVORIGDSTADDR`, read by
//! [`crate::transparent`]) and share addresses (`SO_REUSEADDR`: one reply socket per original
//! destination next to a wildcard listener).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use fqdn_cache::L4Proto;
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::ProxyError;

/// How a socket is set up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `IP_TRANSPARENT` and `IP_PKTINFO` (and, for UDP, `IP_RECVORIGDSTADDR` and
    /// `SO_REUSEADDR`). Needs `CAP_NET_ADMIN`.
    pub transparent: bool,
    /// `SO_REUSEPORT`: several sockets share the address (plain mode's receive threads). The
    /// datapath's `bpf_sk_assign` refuses such sockets, so transparent listeners go without.
    pub reuse_port: bool,
}

impl Options {
    pub const PLAIN: Options = Options { transparent: false, reuse_port: false };
    pub const TRANSPARENT: Options = Options { transparent: true, reuse_port: false };
}

fn opt_err(option: &'static str, proto: L4Proto, addr: SocketAddr) -> impl FnOnce(io::Error) -> ProxyError {
    move |source| match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => ProxyError::TransparentNotPermitted { option, proto, addr, source },
        _ => ProxyError::SocketOption { option, proto, addr, source },
    }
}

fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid fd and a pointer to an int that lives for the call.
    let rc = unsafe {
        libc::setsockopt(fd, level, name, (&raw const one).cast(), size_of::<libc::c_int>() as libc::socklen_t)
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// A socket of `kind` for `addr` with `opts`, non-blocking, bound.
fn bound(addr: SocketAddr, proto: L4Proto, opts: Options) -> Result<Socket, ProxyError> {
    let (kind, protocol) = match proto {
        L4Proto::Tcp => (Type::STREAM, Protocol::TCP),
        _ => (Type::DGRAM, Protocol::UDP),
    };
    let sock = Socket::new(Domain::for_address(addr), kind, Some(protocol)).map_err(|source| ProxyError::Bind {
        proto,
        addr,
        source,
    })?;
    if addr.is_ipv6() {
        sock.set_only_v6(true).map_err(opt_err("IPV6_V6ONLY", proto, addr))?;
    }
    if proto == L4Proto::Tcp || opts.transparent {
        sock.set_reuse_address(true).map_err(opt_err("SO_REUSEADDR", proto, addr))?;
    }
    if opts.reuse_port {
        sock.set_reuse_port(true).map_err(opt_err("SO_REUSEPORT", proto, addr))?;
    }
    if opts.transparent {
        if addr.is_ipv4() {
            sock.set_ip_transparent_v4(true).map_err(opt_err("IP_TRANSPARENT", proto, addr))?;
        } else {
            sock.set_ip_transparent_v6(true).map_err(opt_err("IPV6_TRANSPARENT", proto, addr))?;
        }
        if proto == L4Proto::Udp {
            let (level, name, option) = if addr.is_ipv4() {
                (libc::SOL_IP, libc::IP_RECVORIGDSTADDR, "IP_RECVORIGDSTADDR")
            } else {
                (libc::SOL_IPV6, libc::IPV6_RECVORIGDSTADDR, "IPV6_RECVORIGDSTADDR")
            };
            set_int(sock.as_raw_fd(), level, name).map_err(opt_err(option, proto, addr))?;
        }
        // The interface each query arrived on (UDP: per datagram; TCP: inherited by accepted
        // connections, read once per connection): the proxy knows the endpoint by it.
        let (level, name, option) = if addr.is_ipv4() {
            (libc::SOL_IP, libc::IP_PKTINFO, "IP_PKTINFO")
        } else {
            (libc::SOL_IPV6, libc::IPV6_RECVPKTINFO, "IPV6_RECVPKTINFO")
        };
        set_int(sock.as_raw_fd(), level, name).map_err(opt_err(option, proto, addr))?;
    }
    sock.set_nonblocking(true).map_err(opt_err("O_NONBLOCK", proto, addr))?;
    sock.bind(&addr.into()).map_err(|source| ProxyError::Bind { proto, addr, source })?;
    Ok(sock)
}

/// A non-blocking UDP socket bound to `addr`.
pub fn udp(addr: SocketAddr, opts: Options) -> Result<std::net::UdpSocket, ProxyError> {
    Ok(bound(addr, L4Proto::Udp, opts)?.into())
}

/// Receive buffer of the UDP listeners. Every endpoint's queries meet in this one kernel queue
/// before the proxy's per-endpoint admission sees them; the default (~200 KiB, a few hundred
/// datagrams) overflows during a scheduling stall of tens of milliseconds under a flood, and the
/// kernel then drops everyone's queries alike. 4 MiB rides that out; admission drains it fast.
pub const LISTEN_RECV_BUFFER: usize = 4 << 20;

/// Ask for a receive buffer of `bytes` (best effort): `SO_RCVBUFFORCE` where permitted
/// (CAP_NET_ADMIN), else `SO_RCVBUF`, which the kernel caps at `net.core.rmem_max`.
pub fn grow_recv_buffer(fd: RawFd, bytes: usize) {
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: a valid fd and a pointer to an int that lives for the call.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&raw const size).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
    tracing::debug!(error = %io::Error::last_os_error(), bytes, "could not grow a UDP receive buffer");
}

/// Send one datagram without waiting (to `to`, or to the connected peer). The kernel is asked
/// directly: tokio's `try_send` answers `WouldBlock` without trying for a socket its reactor has
/// not yet seen writable, which is every fresh socket (an upstream socket just rotated, a new
/// transparent reply socket) until the runtime next polls, so their first datagrams would all
/// wait for a task of their own. `WouldBlock` here means the send buffer is really full.
pub fn send_nowait(sock: &tokio::net::UdpSocket, buf: &[u8], to: Option<SocketAddr>) -> io::Result<usize> {
    let fd = sock.as_raw_fd();
    let n = match to.map(socket2::SockAddr::from) {
        // SAFETY: sendto(2) on a socket we own, with a buffer and an address that live for the call.
        Some(addr) => unsafe {
            libc::sendto(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT, addr.as_ptr().cast(), addr.len())
        },
        // SAFETY: send(2) on a socket we own, with a buffer that lives for the call.
        None => unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) },
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// A non-blocking TCP listener bound to `addr`.
pub fn tcp_listener(addr: SocketAddr, opts: Options) -> Result<std::net::TcpListener, ProxyError> {
    let sock = bound(addr, L4Proto::Tcp, opts)?;
    sock.listen(1024).map_err(|source| ProxyError::Bind { proto: L4Proto::Tcp, addr, source })?;
    Ok(sock.into())
}
