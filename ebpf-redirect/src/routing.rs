//! The policy route that makes `bpf_sk_assign` deliver: packets the tc program marked for the
//! proxy keep their original (remote) destination, so without a local route they would be
//! forwarded. Equivalent to
//!
//! ```text
//! ip rule add fwmark <mark> lookup <table> priority <priority>
//! ip route add local 0.0.0.0/0 dev lo table <table>
//! (and the same with ip -6)
//! ```
//!
//! spoken over rtnetlink directly, so the agent's image needs no iproute2. Both operations are
//! idempotent: adding what exists and removing what is gone succeed.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use crate::KernelError;

/// Mark, table and rule priority of the proxy route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyRoute {
    pub mark: u32,
    pub table: u32,
    pub priority: u32,
}

impl Default for PolicyRoute {
    fn default() -> Self {
        // 0xfd0: "fd" for fqdnd; any value works that no other agent on the node uses.
        PolicyRoute { mark: 0xfd0, table: 0xfd0, priority: 100 }
    }
}

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;

const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const FR_ACT_TO_TBL: u8 = 1;

const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const RTN_LOCAL: u8 = 2;
const RT_SCOPE_HOST: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_TABLE_UNSPEC: u8 = 0;

impl PolicyRoute {
    /// Install the rule and the local route for IPv4 and IPv6 in the calling thread's network
    /// namespace.
    pub fn install(&self) -> Result<(), KernelError> {
        let lo = loopback_index()?;
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            self.request(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, &self.rule_msg(family), family, "add rule")?;
            self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &self.route_msg(family, lo), family, "add route")?;
        }
        Ok(())
    }

    /// Remove what [`install`](Self::install) added.
    pub fn remove(&self) -> Result<(), KernelError> {
        let lo = loopback_index()?;
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            self.request(RTM_DELRULE, 0, &self.rule_msg(family), family, "delete rule")?;
            self.request(RTM_DELROUTE, 0, &self.route_msg(family, lo), family, "delete route")?;
        }
        Ok(())
    }

    fn describe(&self, op: &str, family: u8) -> String {
        let v = if family == libc::AF_INET6 as u8 { "ipv6" } else { "ipv4" };
        format!("{op} ({v}) fwmark {:#x} table {} priority {}", self.mark, self.table, self.priority)
    }

    fn rule_msg(&self, family: u8) -> Vec<u8> {
        // struct fib_rule_hdr
        let mut m = vec![family, 0, 0, 0, RT_TABLE_UNSPEC, 0, 0, FR_ACT_TO_TBL];
        m.extend_from_slice(&0u32.to_ne_bytes());
        attr_u32(&mut m, FRA_PRIORITY, self.priority);
        attr_u32(&mut m, FRA_FWMARK, self.mark);
        attr_u32(&mut m, FRA_FWMASK, u32::MAX);
        attr_u32(&mut m, FRA_TABLE, self.table);
        m
    }

    fn route_msg(&self, family: u8, lo: u32) -> Vec<u8> {
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
        let mut m = vec![family, 0, 0, 0, RT_TABLE_UNSPEC, RTPROT_STATIC, RT_SCOPE_HOST, RTN_LOCAL];
        m.extend_from_slice(&0u32.to_ne_bytes());
        attr_u32(&mut m, RTA_TABLE, self.table);
        attr_u32(&mut m, RTA_OIF, lo);
        m
    }

    fn request(&self, kind: u16, flags: u16, payload: &[u8], family: u8, op: &str) -> Result<(), KernelError> {
        let err = |source| KernelError::Route { op: self.describe(op, family), source };
        match netlink_request(kind, flags, payload) {
            Ok(()) => Ok(()),
            Err(e) if kind == RTM_NEWRULE || kind == RTM_NEWROUTE => {
                if e.raw_os_error() == Some(libc::EEXIST) {
                    Ok(())
                } else {
                    Err(err(e))
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH)) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }
}

fn loopback_index() -> Result<u32, KernelError> {
    // SAFETY: a valid NUL-terminated name.
    let idx = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if idx == 0 {
        return Err(KernelError::InterfaceNotFound { interface: "lo".into(), source: io::Error::last_os_error() });
    }
    Ok(idx)
}

fn attr_u32(buf: &mut Vec<u8>, kind: u16, value: u32) {
    buf.extend_from_slice(&8u16.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&value.to_ne_bytes());
}

/// One request, one acknowledgement. The socket lives in the calling thread's network namespace.
fn netlink_request(kind: u16, flags: u16, payload: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket syscalls on an fd we own and close; buffers outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let raw = fd.as_raw_fd();

        let len = 16 + payload.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
        msg.extend_from_slice(payload);

        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        let sent = libc::sendto(
            raw,
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        );
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 4096];
        loop {
            let n = libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0);
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            let mut off = 0;
            while off + 16 <= n {
                let mlen = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
                let mtype = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2 bytes"));
                if mtype == NLMSG_ERROR && off + 20 <= n {
                    let code = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4 bytes"));
                    return if code == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-code)) };
                }
                if mlen < 16 {
                    break;
                }
                off += (mlen + 3) & !3;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_expected_layout() {
        let r = PolicyRoute { mark: 0x10, table: 300, priority: 7 };
        let rule = r.rule_msg(libc::AF_INET as u8);
        // 12-byte header + four 8-byte u32 attributes.
        assert_eq!(rule.len(), 12 + 4 * 8);
        assert_eq!(rule[7], FR_ACT_TO_TBL);
        let route = r.route_msg(libc::AF_INET6 as u8, 1);
        assert_eq!(route.len(), 12 + 2 * 8);
        assert_eq!(route[0], libc::AF_INET6 as u8);
        assert_eq!(route[7], RTN_LOCAL);
        // The table travels as an attribute: it does not fit rtmsg's u8 field.
        assert_eq!(u32::from_ne_bytes(route[16..20].try_into().unwrap()), 300);
    }
}
