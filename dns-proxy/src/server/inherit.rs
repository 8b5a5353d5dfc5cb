//! Listening sockets handed over by a running agent (the restart handover): the new agent serves
//! the very sockets the old one does, so no datagram or connection meets a closed port while one
//! agent replaces the other, and the datapath, which finds the sockets by address, keeps steering
//! to them. Each inherited descriptor is checked (a socket, of the right type, bound to a listen
//! address of this config, transparent as this mode needs) before it is used.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use fqdn_cache::L4Proto;
use socket2::{SockRef, Type};

use super::{ListenerInfo, Sockets};
use crate::config::{Mode, ProxyConfig};
use crate::error::ProxyError;
use crate::socket::{self, Options};

/// One inherited descriptor, as found.
struct Found {
    proto: L4Proto,
    addr: SocketAddr,
    transparent: bool,
    fd: OwnedFd,
}

fn inspect(fd: OwnedFd) -> io::Result<Found> {
    let sock = SockRef::from(&fd);
    let proto = match sock.r#type()? {
        Type::DGRAM => L4Proto::Udp,
        Type::STREAM => L4Proto::Tcp,
        other => return Err(io::Error::other(format!("a socket of type {other:?}, not UDP or TCP"))),
    };
    let addr = sock.local_addr()?.as_socket().ok_or_else(|| io::Error::other("not an IP socket"))?;
    let transparent = if addr.is_ipv4() { sock.ip_transparent_v4()? } else { ipv6_transparent(&fd)? };
    Ok(Found { proto, addr, transparent, fd })
}

fn ipv6_transparent(fd: &OwnedFd) -> io::Result<bool> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid fd; the kernel writes at most `len` bytes into `v`.
    let rc = unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::SOL_IPV6, libc::IPV6_TRANSPARENT, (&raw mut v).cast(), &mut len)
    };
    if rc == 0 { Ok(v != 0) } else { Err(io::Error::last_os_error()) }
}

/// Does an inherited socket bound to `got` serve listen address `want` (port 0: any port)?
fn serves(want: SocketAddr, got: SocketAddr) -> bool {
    want.ip() == got.ip() && (want.port() == 0 || want.port() == got.port())
}

impl Sockets {
    /// [`Sockets::bind`], serving the `inherited` descriptors where they match a listen address
    /// (every UDP socket of that address: a plain agent's `SO_REUSEPORT` group stays whole) and
    /// binding the rest. Returns the sockets and the descriptors no listen address wanted (the
    /// caller closes them).
    pub fn bind_inheriting(config: &ProxyConfig, inherited: Vec<OwnedFd>) -> Result<(Sockets, usize), ProxyError> {
        let transparent = config.mode == Mode::Transparent;
        let mut found = Vec::new();
        for fd in inherited {
            match inspect(fd) {
                Ok(f) => found.push(f),
                Err(e) => tracing::warn!(error = %e, "an inherited descriptor is no listening socket; closed"),
            }
        }
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        for &want in &config.listen {
            let opts = if transparent { Options::TRANSPARENT } else { Options::PLAIN };
            let take = |found: &mut Vec<Found>, proto: L4Proto, want: SocketAddr| -> Vec<OwnedFd> {
                let (mine, rest): (Vec<Found>, Vec<Found>) = std::mem::take(found)
                    .into_iter()
                    .partition(|f| f.proto == proto && f.transparent == transparent && serves(want, f.addr));
                *found = rest;
                mine.into_iter().map(|f| f.fd).collect()
            };
            let tcp_fds = take(&mut found, L4Proto::Tcp, want);
            let t = match tcp_fds.into_iter().next() {
                Some(fd) => std::net::TcpListener::from(fd),
                None => socket::tcp_listener(want, opts)?,
            };
            let port = t.local_addr().map(|a| a.port()).unwrap_or(want.port());
            let uaddr = SocketAddr::new(want.ip(), port);
            let udp_fds = take(&mut found, L4Proto::Udp, uaddr);
            if udp_fds.is_empty() {
                let workers = if transparent { 1 } else { config.udp_workers() };
                for _ in 0..workers {
                    let sock = socket::udp(uaddr, Options { reuse_port: workers > 1, ..opts })?;
                    socket::grow_recv_buffer(sock.as_raw_fd(), socket::LISTEN_RECV_BUFFER);
                    udp.push(sock);
                }
            } else {
                udp.extend(udp_fds.into_iter().map(std::net::UdpSocket::from));
            }
            tcp.push(t);
        }
        for s in &udp {
            s.set_nonblocking(true).map_err(|source| ProxyError::SocketOption {
                option: "O_NONBLOCK",
                proto: L4Proto::Udp,
                addr: s.local_addr().unwrap_or_else(|_| "0.0.0.0:0".parse().expect("literal")),
                source,
            })?;
        }
        for t in &tcp {
            t.set_nonblocking(true).map_err(|source| ProxyError::SocketOption {
                option: "O_NONBLOCK",
                proto: L4Proto::Tcp,
                addr: t.local_addr().unwrap_or_else(|_| "0.0.0.0:0".parse().expect("literal")),
                source,
            })?;
        }
        Ok((Sockets { transparent, udp, tcp }, found.len()))
    }

    /// Duplicates of the listening descriptors, to hand over to a successor while these stay in
    /// use here (both refer to the same sockets).
    pub fn clone_fds(&self) -> io::Result<Vec<(ListenerInfo, OwnedFd)>> {
        let mut out = Vec::new();
        for (info, s) in self
            .listeners()
            .into_iter()
            .zip(self.udp.iter().map(|s| s.as_fd()).chain(self.tcp.iter().map(|t| t.as_fd())))
        {
            out.push((info, s.try_clone_to_owned()?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn inherited_sockets_are_the_same_sockets() {
        let mut config = ProxyConfig::plain(vec!["127.0.0.1:0".parse().unwrap()], "127.0.0.1:53".parse().unwrap());
        config.udp_workers = 1;
        let old = Sockets::bind(&config).unwrap();
        let handed: Vec<OwnedFd> = old.clone_fds().unwrap().into_iter().map(|(_, fd)| fd).collect();
        // A stray descriptor (no socket) is refused, not served.
        let stray = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let addr = old.listeners()[0].addr;
        config.listen = vec![addr];
        let (new, unused) = Sockets::bind_inheriting(&config, handed.into_iter().chain([stray]).collect()).unwrap();
        assert_eq!(unused, 0);
        let got: Vec<(L4Proto, SocketAddr)> = new.listeners().iter().map(|l| (l.proto, l.addr)).collect();
        assert_eq!(got, [(L4Proto::Udp, addr), (L4Proto::Tcp, addr)]);
        // A datagram sent to the address is there for either to read: one socket, two descriptors.
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"x", addr).unwrap();
        drop(old);
        new.udp[0].set_nonblocking(false).unwrap();
        new.udp[0].set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(new.udp[0].recv(&mut buf).unwrap(), 1, "queued before the old descriptor closed");
        // Another listen address is bound afresh; a socket nobody wants is reported.
        let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut config2 = config.clone();
        config2.listen = vec!["127.0.0.1:0".parse().unwrap()];
        let (fresh, unused) = Sockets::bind_inheriting(&config2, vec![OwnedFd::from(other)]).unwrap();
        assert_eq!(unused, 1);
        assert_ne!(fresh.listeners()[0].addr, addr);
    }
}
