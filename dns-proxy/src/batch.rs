//! Receiving many datagrams per system call (`recvmmsg`), with each one's source and, on
//! transparent sockets, original destination. Under load a receive loop wakes once for a burst
//! instead of once per packet, and knows when the socket is drained without a failing extra read.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, RawFd};

use crate::origin::ifindex_from_control;
use crate::transparent::{original_dst_from_control, sockaddr_to_std};

/// Control space per message: one ORIGDSTADDR and one PKTINFO (IPv6: 28 + 20 bytes + headers).
const CONTROL_WORDS: usize = 16;

pub struct Datagram {
    pub len: usize,
    pub source: SocketAddr,
    pub original_dst: Option<SocketAddr>,
    /// The interface it arrived on (transparent sockets: `IP_PKTINFO`).
    pub ifindex: Option<u32>,
    /// The datagram did not fit the buffer (MSG_TRUNC): its bytes are incomplete.
    pub truncated: bool,
}

pub struct RecvBatch {
    size: usize,
    data: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<[u64; CONTROL_WORDS]>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    got: Vec<Datagram>,
    /// Headers the last call let the kernel write into: only those need their lengths reset.
    dirty: usize,
}

// SAFETY: the raw pointers in iovs/hdrs only ever point into this struct's own heap buffers, which
// are never resized or freed while it lives, so they stay valid wherever the struct moves.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Room for `count` datagrams of up to `size` bytes each.
    pub fn new(count: usize, size: usize) -> Self {
        let count = count.max(1);
        RecvBatch {
            size,
            // Zeroed allocations: pages the kernel never writes into (the slots past the
            // largest burst seen) cost address space, not memory.
            data: vec![0; count * size],
            // SAFETY: sockaddr_storage is plain C data; all-zero is valid.
            names: unsafe { Box::<[libc::sockaddr_storage]>::new_zeroed_slice(count).assume_init() }.into_vec(),
            // SAFETY: as above, for integers.
            controls: unsafe { Box::<[[u64; CONTROL_WORDS]]>::new_zeroed_slice(count).assume_init() }.into_vec(),
            // SAFETY: iovec and mmsghdr are plain C data; all-zero is valid.
            iovs: vec![unsafe { mem::zeroed() }; count],
            hdrs: vec![unsafe { mem::zeroed() }; count],
            got: Vec::with_capacity(count),
            dirty: count,
        }
    }

    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Datagrams the last receive returned.
    pub fn len(&self) -> usize {
        self.got.len()
    }

    pub fn is_empty(&self) -> bool {
        self.got.is_empty()
    }

    /// Receive what is queued (non-blocking), up to the capacity. `Ok(0)` is never returned:
    /// an empty socket is `WouldBlock`.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.got.clear();
        let count = self.hdrs.len();
        // The buffers never move (they are this struct's heap allocations, never resized): set up
        // once, a header needs only the fields the kernel wrote reset. Those are the ones of the
        // datagrams the last call received and the one after (the kernel touches no other), or all
        // of them at first.
        for i in 0..self.dirty {
            self.iovs[i] = libc::iovec { iov_base: self.data[i * self.size..].as_mut_ptr().cast(), iov_len: self.size };
            let hdr = &mut self.hdrs[i].msg_hdr;
            hdr.msg_name = (&raw mut self.names[i]).cast();
            hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &raw mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = self.controls[i].as_mut_ptr().cast();
            hdr.msg_controllen = mem::size_of::<[u64; CONTROL_WORDS]>();
            hdr.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers of the stated sizes owned by self.
        let n = unsafe {
            libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), count as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        if n < 0 {
            // The first header may hold what the kernel wrote before it failed.
            self.dirty = 1;
            return Err(io::Error::last_os_error());
        }
        // The header after the last one received may hold the same.
        self.dirty = (n as usize + 1).min(count);
        for i in 0..n as usize {
            let hdr = &self.hdrs[i].msg_hdr;
            // SAFETY: the kernel wrote a source address of its family into names[i].
            let Some(source) = (unsafe { sockaddr_to_std((&raw const self.names[i]).cast()) }) else { continue };
            // SAFETY: the kernel filled msg_controllen bytes of this message's control buffer.
            let original_dst = unsafe { original_dst_from_control(hdr) };
            // SAFETY: as above.
            let ifindex = unsafe { ifindex_from_control(hdr) };
            self.got.push(Datagram {
                len: self.hdrs[i].msg_len as usize,
                source,
                original_dst,
                ifindex,
                truncated: hdr.msg_flags & libc::MSG_TRUNC != 0,
            });
        }
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n as usize)
    }

    /// Receive what `socket` has queued, once it reported readable. A short batch means the
    /// socket is drained: readiness is cleared in the same step, so the next `readable()` waits
    /// for new datagrams without a failing extra read. Errors other than "nothing more to read"
    /// are returned; what was received is in [`RecvBatch::datagrams`] either way.
    pub fn recv_ready(&mut self, socket: &tokio::net::UdpSocket) -> io::Result<()> {
        let capacity = self.capacity();
        let fd = socket.as_raw_fd();
        let res = socket.try_io(tokio::io::Interest::READABLE, || {
            let n = self.recv(fd)?;
            if n < capacity { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(()) }
        });
        match res {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        }
    }

    /// The datagrams of the last `recv`, with their bytes.
    pub fn datagrams(&self) -> impl Iterator<Item = (&Datagram, &[u8])> {
        (0..self.got.len()).map(|i| self.get(i))
    }

    /// The `i`th datagram of the last `recv` (`i < len()`), with its bytes.
    pub fn get(&self, i: usize) -> (&Datagram, &[u8]) {
        let d = &self.got[i];
        (d, &self.data[i * self.size..i * self.size + d.len.min(self.size)])
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn receives_a_burst_in_one_call() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..5u8 {
            client.send_to(&[i; 10], server.local_addr().unwrap()).unwrap();
        }
        client.send_to(&[9; 100], server.local_addr().unwrap()).unwrap();
        let mut batch = RecvBatch::new(4, 64);
        assert_eq!(batch.recv(server.as_raw_fd()).unwrap(), 4);
        let got: Vec<(usize, u8)> = batch.datagrams().map(|(d, b)| (d.len, b[0])).collect();
        assert_eq!(got, [(10, 0), (10, 1), (10, 2), (10, 3)]);
        assert!(batch.datagrams().all(|(d, _)| d.source == client.local_addr().unwrap() && !d.truncated));
        assert_eq!(batch.recv(server.as_raw_fd()).unwrap(), 2);
        let last: Vec<bool> = batch.datagrams().map(|(d, _)| d.truncated).collect();
        assert_eq!(last, [false, true], "the 100-byte datagram did not fit 64 bytes");
        assert_eq!(batch.recv(server.as_raw_fd()).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }
}

/// Replies gathered while a received batch is processed, sent with one `sendmmsg`. Its scratch
/// space is kept from one batch to the next: a flush allocates nothing.
#[derive(Default)]
pub struct SendBatch {
    items: Vec<(SocketAddr, Vec<u8>)>,
    names: Vec<socket2::SockAddr>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in iovs/hdrs are written and used only inside `flush`, pointing into
// `items` and `names`, which it owns and leaves alone while they are in use.
unsafe impl Send for SendBatch {}

impl SendBatch {
    pub fn push(&mut self, to: SocketAddr, payload: Vec<u8>) {
        self.items.push((to, payload));
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Send what fits without blocking; return what was not sent (socket buffer full, or an
    /// error for one message: the caller retries those one by one).
    pub fn flush(&mut self, fd: RawFd) -> Vec<(SocketAddr, Vec<u8>)> {
        if self.items.is_empty() {
            return Vec::new();
        }
        self.names.clear();
        self.names.extend(self.items.iter().map(|(to, _)| socket2::SockAddr::from(*to)));
        self.iovs.clear();
        self.iovs.extend(
            self.items.iter().map(|(_, p)| libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() }),
        );
        self.hdrs.clear();
        for i in 0..self.items.len() {
            // SAFETY: plain C data; all-zero is a valid header before the fields are set.
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_name = self.names[i].as_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_namelen = self.names[i].len();
            h.msg_hdr.msg_iov = &raw mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        // SAFETY: every header points at an address and a payload that outlive the call.
        let sent =
            unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), self.hdrs.len() as libc::c_uint, libc::MSG_DONTWAIT) };
        let sent = usize::try_from(sent).unwrap_or(0).min(self.items.len());
        if sent == self.items.len() {
            self.items.clear();
            return Vec::new();
        }
        let rest = self.items.split_off(sent);
        self.items.clear();
        rest
    }
}

#[cfg(test)]
mod send_tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn one_call_sends_them_all() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let from = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = SendBatch::default();
        batch.push(a.local_addr().unwrap(), b"one".to_vec());
        batch.push(b.local_addr().unwrap(), b"two".to_vec());
        batch.push(a.local_addr().unwrap(), b"three".to_vec());
        assert!(batch.flush(from.as_raw_fd()).is_empty());
        assert!(batch.is_empty());
        let recv = |s: &std::net::UdpSocket| {
            let mut buf = [0u8; 16];
            let n = s.recv(&mut buf).unwrap();
            buf[..n].to_vec()
        };
        assert_eq!([recv(&a), recv(&a), recv(&b)], [b"one".to_vec(), b"three".to_vec(), b"two".to_vec()]);
    }
}
