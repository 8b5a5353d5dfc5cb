//! Drop events from the kernel's ring buffer, as an async source for flow logs.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use aya::maps::{MapData, RingBuf};
use fqdn_cache::EndpointId;
use tokio::io::unix::AsyncFd;

use crate::maps::{DIR_INGRESS, RawDropEvent, VF_AUDIT, VF_REJECTED, addr_from, proto_from_number};
use fqdn_cache::DatapathError;

use crate::{Direction, DropEvent, DropReason};

const REASON_POLICY_DENY: u8 = 2;
const REASON_SPOOFED: u8 = 4;

/// The reader of the drop ring buffer. One per datapath: the ring has a single consumer position.
pub struct DropEvents {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl std::fmt::Debug for DropEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DropEvents").finish_non_exhaustive()
    }
}

impl DropEvents {
    /// Must be called inside a tokio runtime (the ring's fd joins its reactor).
    pub(crate) fn new(ring: RingBuf<MapData>) -> Result<Self, DatapathError> {
        // SAFETY: the RingBuf owns its map fd and keeps it open for as long as the AsyncFd lives.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| DatapathError::MapRead { map: crate::maps::MAP_DROPS.into(), source: e.into() })?;
        Ok(DropEvents { ring })
    }

    /// The next drop, waiting for one if the ring is empty.
    pub async fn recv(&mut self) -> Result<DropEvent, DatapathError> {
        loop {
            if let Some(event) = self.try_recv() {
                return Ok(event);
            }
            let mut guard = self
                .ring
                .readable_mut()
                .await
                .map_err(|source| DatapathError::MapRead { map: crate::maps::MAP_DROPS.into(), source })?;
            // Only clear readiness when the ring is really empty, or a wakeup could be lost.
            if let Some(event) = next_event(guard.get_inner_mut()) {
                return Ok(event);
            }
            guard.clear_ready();
        }
    }

    /// The next drop if one is queued.
    pub fn try_recv(&mut self) -> Option<DropEvent> {
        next_event(self.ring.get_mut())
    }
}

fn next_event(ring: &mut RingBuf<MapData>) -> Option<DropEvent> {
    loop {
        let item = ring.next()?;
        if item.len() < size_of::<RawDropEvent>() {
            continue;
        }
        // SAFETY: the kernel wrote a `struct drop_event` of at least this size; read_unaligned
        // copes with the ring's 8-byte alignment either way.
        let raw: RawDropEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        drop(item);
        return Some(decode(&raw));
    }
}

fn decode(raw: &RawDropEvent) -> DropEvent {
    // Reason 3 (the proxy had no socket) is reported as a policy denial: the policy sends the
    // packet to the proxy and nothing else may carry it. The counters tell the two apart.
    let reason = match raw.reason {
        REASON_POLICY_DENY => DropReason::PolicyDeny,
        REASON_SPOOFED => DropReason::SpoofedSource,
        _ => DropReason::PolicyDenied,
    };
    DropEvent {
        endpoint: EndpointId(raw.endpoint),
        direction: if raw.direction == DIR_INGRESS { Direction::Ingress } else { Direction::Egress },
        src: SocketAddr::new(addr_from(raw.family, raw.saddr), raw.sport),
        dst: SocketAddr::new(addr_from(raw.family, raw.daddr), raw.dport),
        proto: proto_from_number(raw.proto),
        tcp_flags: raw.tcp_flags,
        reason,
        rejected: raw.verdict & VF_REJECTED != 0,
        audit: raw.verdict & VF_AUDIT != 0,
        time: wall_clock_of(raw.ktime),
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn wall_clock_of(ktime: u64) -> SystemTime {
    let ago = Duration::from_nanos(monotonic_ns().saturating_sub(ktime));
    SystemTime::now().checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fqdn_cache::L4Proto;

    #[test]
    fn decode_cases() {
        let mut v4 =
            RawDropEvent { family: 4, proto: 6, reason: 1, sport: 40000, dport: 80, endpoint: 5, ..Default::default() };
        v4.saddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        v4.daddr[..4].copy_from_slice(&[192, 0, 2, 1]);
        v4.tcp_flags = 0x02;
        let e = decode(&v4);
        assert_eq!(e.src, "10.0.0.2:40000".parse().unwrap());
        assert_eq!(e.dst, "192.0.2.1:80".parse().unwrap());
        assert_eq!(
            (e.proto, e.reason, e.tcp_flags, e.endpoint),
            (L4Proto::Tcp, DropReason::PolicyDenied, 2, EndpointId(5))
        );

        let mut v6 = RawDropEvent { family: 6, proto: 17, reason: 3, sport: 1, dport: 53, ..Default::default() };
        v6.daddr = "fd00::53".parse::<std::net::Ipv6Addr>().unwrap().octets();
        let e = decode(&v6);
        assert_eq!(e.dst, "[fd00::53]:53".parse().unwrap());
        assert_eq!((e.proto, e.reason), (L4Proto::Udp, DropReason::PolicyDenied));

        let icmp = RawDropEvent { family: 4, proto: 1, reason: 2, ..Default::default() };
        assert_eq!((decode(&icmp).proto, decode(&icmp).reason), (L4Proto::Any, DropReason::PolicyDeny));
        assert_eq!(decode(&icmp).direction, Direction::Egress);

        let spoofed = RawDropEvent { family: 4, proto: 17, reason: 4, ..Default::default() };
        assert_eq!(decode(&spoofed).reason, DropReason::SpoofedSource);

        let inbound = RawDropEvent { family: 4, proto: 6, reason: 1, direction: DIR_INGRESS, ..Default::default() };
        assert_eq!(decode(&inbound).direction, Direction::Ingress);
        assert!(!decode(&inbound).rejected);
        let rejected = RawDropEvent { family: 4, proto: 6, reason: 1, verdict: VF_REJECTED, ..Default::default() };
        assert!(decode(&rejected).rejected && !decode(&rejected).audit);
        let audited = RawDropEvent { family: 4, proto: 6, reason: 1, verdict: VF_AUDIT, ..Default::default() };
        assert!(decode(&audited).audit);
    }
}
