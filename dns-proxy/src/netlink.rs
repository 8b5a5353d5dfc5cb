//! One rtnetlink question the proxy asks the kernel: which device an interface is enslaved to
//! (`IFLA_MASTER`, a bridge port's bridge). Asked in the proxy's own network namespace, where
//! `/sys/class/net` may show another one's.

use std::mem;

const RTM_GETLINK: u16 = 18;
const RTM_NEWLINK: u16 = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const IFLA_MASTER: u16 = 10;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// The index of the device `ifindex` is a port of, if any (`None` also when the kernel cannot
/// be asked: the caller then treats the interface as a plain one).
pub(crate) fn master_of(ifindex: u32) -> Option<u32> {
    // SAFETY: a plain socket call; the descriptor is closed below on every path.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return None;
    }
    let answer = ask(fd, ifindex);
    // SAFETY: fd is ours and open.
    unsafe { libc::close(fd) };
    answer
}

fn ask(fd: libc::c_int, ifindex: u32) -> Option<u32> {
    let mut req = [0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
    req[0..4].copy_from_slice(&((NLMSG_HDRLEN + IFINFOMSG_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence
    // ifinfomsg: family (AF_UNSPEC), pad, type, then the index.
    req[NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    // SAFETY: a zeroed sockaddr_nl addressed to the kernel (pid 0); buffers live for the calls.
    let sent = unsafe {
        let mut addr: libc::sockaddr_nl = mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        libc::sendto(
            fd,
            req.as_ptr().cast(),
            req.len(),
            0,
            (&raw const addr).cast(),
            mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent != req.len() as isize {
        return None;
    }
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: recv writes at most buf.len() bytes into buf.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n <= 0 {
        return None;
    }
    parse_master(&buf[..n as usize])
}

/// `IFLA_MASTER` of the first RTM_NEWLINK message in `msg` (an rtnetlink reply).
fn parse_master(msg: &[u8]) -> Option<u32> {
    let u16_at = |b: &[u8], at: usize| b.get(at..at + 2).map(|v| u16::from_ne_bytes([v[0], v[1]]));
    let u32_at = |b: &[u8], at: usize| b.get(at..at + 4).map(|v| u32::from_ne_bytes([v[0], v[1], v[2], v[3]]));
    let len = u32_at(msg, 0)? as usize;
    let kind = u16_at(msg, 4)?;
    if kind == NLMSG_ERROR || kind != RTM_NEWLINK || len > msg.len() || len < NLMSG_HDRLEN + IFINFOMSG_LEN {
        return None;
    }
    let mut at = NLMSG_HDRLEN + IFINFOMSG_LEN;
    while at + 4 <= len {
        let attr_len = u16_at(msg, at)? as usize;
        let attr_type = u16_at(msg, at + 2)? & 0x3fff; // without NLA_F_NESTED / NLA_F_NET_BYTEORDER
        if attr_len < 4 {
            return None;
        }
        if attr_type == IFLA_MASTER && attr_len >= 8 {
            return u32_at(msg, at + 4).filter(|&m| m != 0);
        }
        at += (attr_len + 3) & !3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = vec![0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
        for (t, data) in attrs {
            let l = 4 + data.len();
            m.extend_from_slice(&(l as u16).to_ne_bytes());
            m.extend_from_slice(&t.to_ne_bytes());
            m.extend_from_slice(data);
            m.resize(m.len().next_multiple_of(4), 0);
        }
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
        m
    }

    #[test]
    fn finds_the_master_among_other_attributes() {
        let m = reply(&[(3, b"veth0\0"), (IFLA_MASTER, &7u32.to_ne_bytes()), (4, &1500u32.to_ne_bytes())]);
        assert_eq!(parse_master(&m), Some(7));
        assert_eq!(parse_master(&reply(&[(3, b"lo\0")])), None, "no master");
        let mut err = reply(&[]);
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(parse_master(&err), None);
        assert_eq!(parse_master(&m[..10]), None, "truncated");
    }

    #[test]
    fn asks_the_kernel() {
        // `lo` is nobody's port; an index that does not exist gets an error reply.
        assert_eq!(master_of(1), None);
        assert_eq!(master_of(u32::MAX / 2), None);
    }
}
