//! Who sent a query, in transparent mode: the endpoint whose interface the packet arrived on, as
//! the datapath delivered it, never its source address alone. A pod could otherwise send DNS from
//! an address that is not its own (a second address on its interface, a raw socket, kube-dns's
//! address) and be served as someone else, or as no one: unpoliced.
//!
//! The arrival interface comes with each datagram (`IP_PKTINFO` / `IPV6_RECVPKTINFO`: after
//! `bpf_sk_assign` it is the node side of the pod's veth) and, for TCP, from the accepted
//! connection (`IP_PKTOPTIONS` / `IPV6_2292PKTOPTIONS`, which report the interface the handshake
//! came in on). The endpoint is the one the snapshot gives that interface to, and the source must
//! be one of its addresses. A query from an interface no endpoint owns is served only as an
//! endpoint the snapshot lists without an interface (nothing to check it against); any other is
//! refused, never forwarded.
//!
//! Behind a bridge CNI (the `bridge` plugin, flannel's `cni0`) the pod's veth is a bridge port and
//! the stack delivers the packet from the bridge, so the arrival interface is the bridge, shared
//! by every pod on it. There the endpoint is the one that owns the source address, accepted only
//! if its own interface is a port of that bridge: the datapath's anti-spoofing on that port has
//! already dropped any packet whose source is not the endpoint's, and a pod the datapath does not
//! police has no redirect to the proxy at all.

use foldhash::HashMap;
use std::ffi::CString;
use std::mem;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::Arc;

use fqdn_cache::EndpointId;
use policy_sync::{ResolvedEndpoint, Snapshot};

/// Why a query's endpoint could not be established.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unverified {
    /// No endpoint has the source address, and the interface is no endpoint's.
    Unknown,
    /// The packet came from `endpoint`'s interface with a source that is not one of its addresses.
    NotItsAddress { endpoint: EndpointId },
    /// The source is `endpoint`'s, but the packet came from another interface (or an unknown one).
    WrongInterface { endpoint: EndpointId },
}

impl std::fmt::Display for Unverified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unverified::Unknown => f.write_str("the source is no endpoint's and the interface none's"),
            Unverified::NotItsAddress { endpoint } => {
                write!(f, "it came from the interface of {endpoint}, whose address the source is not")
            }
            Unverified::WrongInterface { endpoint } => {
                write!(f, "the source is {endpoint}'s but the packet did not come from its interface")
            }
        }
    }
}

/// The snapshot's endpoint interfaces by index, resolved in the proxy's network namespace (the
/// node's) when the snapshot arrives.
#[derive(Debug, Default)]
pub(crate) struct Interfaces {
    by_index: HashMap<u32, EndpointId>,
    /// Bridges (by index) and the endpoints whose interface is one of their ports.
    bridges: HashMap<u32, Vec<EndpointId>>,
}

impl Interfaces {
    pub(crate) fn of(snapshot: &Snapshot) -> Self {
        let mut table = Interfaces::default();
        for e in &snapshot.endpoints {
            let Some(index) = e.endpoint.interface.as_deref().and_then(ifindex_of) else { continue };
            table.by_index.insert(index, e.id);
            if let Some(bridge) = crate::netlink::master_of(index) {
                table.bridges.entry(bridge).or_default().push(e.id);
            }
        }
        table
    }
}

/// The endpoint a query from `client` that arrived on `ifindex` belongs to: transparent mode has
/// no unpoliced clients, so there is no "nobody" answer.
pub(crate) fn establish(
    snapshot: &Snapshot,
    interfaces: &Interfaces,
    client: IpAddr,
    ifindex: Option<u32>,
) -> Result<Arc<ResolvedEndpoint>, Unverified> {
    let owns = |ep: &ResolvedEndpoint| snapshot.by_ip(client).is_some_and(|e| e.id == ep.id);
    if let Some(ep) = ifindex.and_then(|i| interfaces.by_index.get(&i)).and_then(|id| snapshot.by_id(*id)) {
        return if owns(ep) { Ok(ep.clone()) } else { Err(Unverified::NotItsAddress { endpoint: ep.id }) };
    }
    let ep = snapshot.by_ip(client).ok_or(Unverified::Unknown)?;
    match ep.endpoint.interface.as_deref() {
        None => Ok(ep.clone()),
        // The interface may be newer than the snapshot's table (a pod recreated under its name).
        Some(name) if ifindex.is_some() && ifindex_of(name) == ifindex => Ok(ep.clone()),
        // Delivered from the bridge its interface is a port of (see the module's doc).
        Some(_) if ifindex.and_then(|i| interfaces.bridges.get(&i)).is_some_and(|ports| ports.contains(&ep.id)) => {
            Ok(ep.clone())
        }
        Some(_) => Err(Unverified::WrongInterface { endpoint: ep.id }),
    }
}

fn ifindex_of(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The interface index in a received message's `IP_PKTINFO` / `IPV6_PKTINFO` control message.
///
/// # Safety
/// `msg` is a header filled by `recvmsg`/`recvmmsg` (or a buffer laid out as one): its control
/// pointer and length describe a live buffer the kernel wrote.
pub(crate) unsafe fn ifindex_from_control(msg: &libc::msghdr) -> Option<u32> {
    let mut found = None;
    // SAFETY: CMSG_* walk the control buffer within msg_controllen (guaranteed by the caller); the
    // data of a PKTINFO message is an in_pktinfo / in6_pktinfo.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let hdr = &*cmsg;
            if hdr.cmsg_level == libc::SOL_IP && hdr.cmsg_type == libc::IP_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>());
                found = u32::try_from(info.ipi_ifindex).ok();
            } else if hdr.cmsg_level == libc::SOL_IPV6 && hdr.cmsg_type == libc::IPV6_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>());
                found = Some(info.ipi6_ifindex);
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    found.filter(|&i| i != 0)
}

/// The interface an accepted TCP connection came in on, from a listener with
/// [`crate::socket::Options::transparent`] (which turns PKTINFO on for the connections it accepts).
pub(crate) fn tcp_ingress_ifindex(fd: RawFd, v6: bool) -> Option<u32> {
    let (level, name) =
        if v6 { (libc::SOL_IPV6, libc::IPV6_2292PKTOPTIONS) } else { (libc::SOL_IP, libc::IP_PKTOPTIONS) };
    let mut control = [0u64; 16];
    let mut len = mem::size_of_val(&control) as libc::socklen_t;
    // SAFETY: a live buffer of `len` bytes; the kernel writes at most `len` and updates it.
    let rc = unsafe { libc::getsockopt(fd, level, name, control.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return None;
    }
    // SAFETY: msghdr is plain data; zero is a valid initial state.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = len as usize;
    // SAFETY: the control buffer holds the `len` bytes of cmsgs the kernel just wrote.
    unsafe { ifindex_from_control(&msg) }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use policy_sync::Endpoint;
    use policy_sync::ResolvedEndpoint;

    use super::*;

    fn endpoint(id: u32, name: &str, ips: &[&str], interface: Option<&str>) -> ResolvedEndpoint {
        ResolvedEndpoint {
            id: EndpointId(id),
            endpoint: Endpoint {
                namespace: "default".into(),
                name: name.into(),
                labels: Default::default(),
                ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
                interface: interface.map(str::to_string),
                policy_audit_mode: false,
            },
            policy: Arc::default(),
        }
    }

    #[test]
    fn the_interface_decides_and_the_source_must_match() {
        // `lo` exists in every namespace: it stands for a pod's veth here.
        let snap = Snapshot::new(
            1,
            vec![
                endpoint(1, "alpine", &["10.0.1.5", "fd00::5"], Some("lo")),
                endpoint(2, "kube-dns", &["10.96.0.10"], None),
                endpoint(3, "gone", &["10.0.1.9"], Some("no-such-veth")),
            ],
            vec![],
            0,
        );
        let interfaces = Interfaces::of(&snap);
        let lo = ifindex_of("lo");
        assert!(lo.is_some(), "{:?}", Path::new("/sys/class/net/lo"));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for (client, ifindex, want) in [
            ("10.0.1.5", lo, Ok(1)),
            ("fd00::5", lo, Ok(1)),
            ("::ffff:10.0.1.5", lo, Ok(1)),
            // A second address, or kube-dns's, from alpine's interface.
            ("10.0.1.77", lo, Err(Unverified::NotItsAddress { endpoint: EndpointId(1) })),
            ("10.96.0.10", lo, Err(Unverified::NotItsAddress { endpoint: EndpointId(1) })),
            // alpine's address from elsewhere.
            ("10.0.1.5", Some(999_999), Err(Unverified::WrongInterface { endpoint: EndpointId(1) })),
            ("10.0.1.5", None, Err(Unverified::WrongInterface { endpoint: EndpointId(1) })),
            ("10.0.1.9", None, Err(Unverified::WrongInterface { endpoint: EndpointId(3) })),
            // No one's.
            ("192.0.2.1", Some(999_999), Err(Unverified::Unknown)),
            ("192.0.2.1", None, Err(Unverified::Unknown)),
            // An endpoint listed without an interface: nothing to check against.
            ("10.96.0.10", None, Ok(2)),
        ] {
            let got = establish(&snap, &interfaces, ip(client), ifindex).map(|e| e.id.0);
            assert_eq!(got, want, "{client} on {ifindex:?}");
        }
    }
}
