//! Reading what transparent sockets ([`crate::socket`] with `transparent`) report: the original
//! destination of each datagram (the `IP_ORIGDSTADDR` / `IPV6_ORIGDSTADDR` control message). TCP
//! needs none of this: an accepted socket's local address (`getsockname`) is the original
//! destination.
//!
//! Replies leave from a socket bound to the original destination's address and port, not via
//! `IP_PKTINFO`: PKTINFO can set the source address but not the source port, and the pod expects
//! the reply from the port it asked (53), while the listener sits on the proxy's own port.

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Read a `sockaddr_in` or `sockaddr_in6`.
///
/// # Safety
/// `sa` points to a `sockaddr_storage` (or at least as many bytes as its family needs).
pub(crate) unsafe fn sockaddr_to_std(sa: *const libc::sockaddr) -> Option<SocketAddr> {
    // SAFETY: guaranteed by the caller; unaligned reads because control data need not be aligned.
    unsafe {
        match i32::from((*sa).sa_family) {
            libc::AF_INET => {
                let sin = std::ptr::read_unaligned(sa.cast::<libc::sockaddr_in>());
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
            }
            libc::AF_INET6 => {
                let sin6 = std::ptr::read_unaligned(sa.cast::<libc::sockaddr_in6>());
                let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// The IP_ORIGDSTADDR / IPV6_ORIGDSTADDR control message of a received `msg`, if any.
///
/// # Safety
/// `msg` is a header filled by `recvmsg`/`recvmmsg`: its control pointer and length describe a
/// live buffer the kernel wrote.
pub(crate) unsafe fn original_dst_from_control(msg: &libc::msghdr) -> Option<SocketAddr> {
    let mut found = None;
    // SAFETY: CMSG_* walk the control buffer within msg_controllen (guaranteed by the caller); the
    // data of an ORIGDSTADDR message is a sockaddr_in / sockaddr_in6.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let hdr = &*cmsg;
            let is_v4 = hdr.cmsg_level == libc::SOL_IP && hdr.cmsg_type == libc::IP_ORIGDSTADDR;
            let is_v6 = hdr.cmsg_level == libc::SOL_IPV6 && hdr.cmsg_type == libc::IPV6_ORIGDSTADDR;
            if is_v4 || is_v6 {
                let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
                let len = hdr.cmsg_len as usize - (libc::CMSG_DATA(cmsg) as usize - cmsg as usize);
                let len = len.min(mem::size_of::<libc::sockaddr_storage>());
                std::ptr::copy_nonoverlapping(libc::CMSG_DATA(cmsg), storage.as_mut_ptr().cast::<u8>(), len);
                found = sockaddr_to_std(storage.as_ptr().cast());
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    found
}

/// One datagram with its source and original destination.
pub struct Received {
    pub len: usize,
    pub source: SocketAddr,
    /// `None` if the kernel sent no original-destination message (socket without the option).
    pub original_dst: Option<SocketAddr>,
}

/// `recvmsg` on a non-blocking socket, reading the original-destination control message.
pub fn recv_original_dst(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    let mut source = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; zero is a valid initial state.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = source.as_mut_ptr().cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&control);
    // SAFETY: every pointer in msg refers to a live buffer of the stated length.
    let n = unsafe { libc::recvmsg(fd, &raw mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled msg_namelen bytes of the storage (zeroed beyond).
    let source = unsafe { sockaddr_to_std(source.as_ptr().cast()) }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "datagram from a non-IP address"))?;

    // SAFETY: the kernel filled msg_controllen bytes of the control buffer.
    let original_dst = unsafe { original_dst_from_control(&msg) };
    Ok(Received { len: n as usize, source, original_dst })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use super::*;

    /// Unprivileged runs get the clear error; privileged runs get a socket that reports the
    /// destination of what it receives.
    #[test]
    fn transparent_udp_reports_destination_or_needs_privilege() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        match crate::socket::udp(addr, crate::socket::Options::TRANSPARENT) {
            Err(crate::ProxyError::TransparentNotPermitted { option, .. }) => assert_eq!(option, "IP_TRANSPARENT"),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(sock) => {
                let local = sock.local_addr().unwrap();
                let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                client.send_to(b"hello", local).unwrap();
                sock.set_nonblocking(false).unwrap();
                let mut buf = [0u8; 64];
                let got = recv_original_dst(sock.as_raw_fd(), &mut buf).unwrap();
                assert_eq!(&buf[..got.len], b"hello");
                assert_eq!(got.source, client.local_addr().unwrap());
                assert_eq!(got.original_dst, Some(local));
            }
        }
    }
}
