//! Byte layouts shared with `bpf/fqdnd.bpf.c`. Every struct here is `repr(C)` and mirrors a C
//! struct of the same name; a unit test pins the sizes so a change on one side is caught.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fqdn_cache::{EndpointId, L4Proto};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::rules::{EndpointFlags, RuleKey};

pub(crate) const MAP_ENDPOINTS: &str = "fqdnd_endpoints";
pub(crate) const MAP_PROXY: &str = "fqdnd_proxy";
pub(crate) const MAP_ALLOW4: &str = "fqdnd_allow4";
pub(crate) const MAP_ALLOW6: &str = "fqdnd_allow6";
pub(crate) const MAP_DENY4: &str = "fqdnd_deny4";
pub(crate) const MAP_DENY6: &str = "fqdnd_deny6";
pub(crate) const MAP_REDIR4: &str = "fqdnd_redir4";
pub(crate) const MAP_REDIR6: &str = "fqdnd_redir6";
pub(crate) const MAP_INGRESS4: &str = "fqdnd_ingress4";
pub(crate) const MAP_INGRESS6: &str = "fqdnd_ingress6";
pub(crate) const MAP_INGRESS_DENY4: &str = "fqdnd_ingress_deny4";
pub(crate) const MAP_INGRESS_DENY6: &str = "fqdnd_ingress_deny6";
pub(crate) const MAP_SRC4: &str = "fqdnd_src4";
pub(crate) const MAP_SRC6: &str = "fqdnd_src6";
pub(crate) const MAP_CT: &str = "fqdnd_ct";
pub(crate) const MAP_DROPS: &str = "fqdnd_drops";
pub(crate) const MAP_COUNTERS: &str = "fqdnd_counters";

/// Every map of the object, by pin name.
pub(crate) const ALL_MAPS: [&str; 17] = [
    MAP_ENDPOINTS,
    MAP_PROXY,
    MAP_ALLOW4,
    MAP_ALLOW6,
    MAP_DENY4,
    MAP_DENY6,
    MAP_REDIR4,
    MAP_REDIR6,
    MAP_INGRESS4,
    MAP_INGRESS6,
    MAP_INGRESS_DENY4,
    MAP_INGRESS_DENY6,
    MAP_SRC4,
    MAP_SRC6,
    MAP_CT,
    MAP_DROPS,
    MAP_COUNTERS,
];

pub(crate) const PROG_FROM_POD: &str = "fqdnd_from_pod";
pub(crate) const PROG_TO_POD: &str = "fqdnd_to_pod";

pub(crate) const EP_DEFAULT_DENY: u32 = 1;
pub(crate) const EP_REDIRECT_DNS: u32 = 2;
pub(crate) const EP_HAS_DENY: u32 = 4;
pub(crate) const EP_INGRESS_DEFAULT_DENY: u32 = 8;
pub(crate) const EP_HAS_INGRESS_DENY: u32 = 16;
pub(crate) const EP_CHECK_SOURCE: u32 = 32;
pub(crate) const EP_AUDIT: u32 = 64;

/// The [`EndpointFlags`] field a flag bit stands for.
type FlagField = fn(&mut EndpointFlags) -> &mut bool;

/// Every flag bit this build knows, with its field.
const FLAG_BITS: [(u32, FlagField); 7] = [
    (EP_DEFAULT_DENY, |f| &mut f.default_deny),
    (EP_REDIRECT_DNS, |f| &mut f.redirect_dns),
    (EP_HAS_DENY, |f| &mut f.has_deny),
    (EP_INGRESS_DEFAULT_DENY, |f| &mut f.ingress_default_deny),
    (EP_HAS_INGRESS_DENY, |f| &mut f.has_ingress_deny),
    (EP_CHECK_SOURCE, |f| &mut f.check_source),
    (EP_AUDIT, |f| &mut f.audit),
];

/// The `ep_cfg.flags` bits of an endpoint's flags.
pub(crate) fn flag_bits(flags: EndpointFlags) -> u32 {
    let mut flags = flags;
    FLAG_BITS.iter().filter(|(_, field)| *field(&mut flags)).map(|(bit, _)| bit).fold(0, |a, b| a | b)
}

pub(crate) fn flags_from_bits(bits: u32) -> EndpointFlags {
    let mut flags = EndpointFlags::default();
    for (bit, field) in FLAG_BITS {
        *field(&mut flags) = bits & bit != 0;
    }
    flags
}

pub(crate) const PROXY_HAS_V4: u32 = 1;
pub(crate) const PROXY_HAS_V6: u32 = 2;
pub(crate) const PROXY_REJECT: u32 = 4;

/// `drop_event.verdict`: the program answered the packet (RST / ICMP) instead of only dropping it.
pub(crate) const VF_REJECTED: u8 = 1;
/// `drop_event.verdict`: audit mode let it through (and its flow after it).
pub(crate) const VF_AUDIT: u8 = 2;

/// Owner bits of an allow entry: a static rule (policy) and a learned FQDN IP can share a key.
pub(crate) const OWNER_STATIC: u32 = 1;
pub(crate) const OWNER_LEARNED: u32 = 2;

/// The first 64 bits of every LPM key (endpoint, proto, pad, port) are matched exactly.
const KEY_FIXED_BITS: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct EpCfg {
    pub endpoint: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProxyCfg {
    pub addr4: [u8; 4],
    pub addr6: [u8; 16],
    pub udp_port: u16,
    pub tcp_port: u16,
    pub mark: u32,
    pub flags: u32,
}

/// Key data of the IPv4 LPM tries (aya's `lpm_trie::Key` adds the prefix length in front).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Key4 {
    pub endpoint: u32,
    pub proto: u8,
    pub pad: u8,
    pub port: u16,
    pub addr: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Key6 {
    pub endpoint: u32,
    pub proto: u8,
    pub pad: u8,
    pub port: u16,
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RuleVal {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the last matching packet; 0 = never.
    pub last_used: u64,
    pub flags: u32,
    pub pad: u32,
    /// Learned entries: CLOCK_MONOTONIC nanoseconds when the lookups behind it run out; 0 = not
    /// known. Written and read by userspace only.
    pub expires: u64,
}

/// The tries' value before expiries were kept, as pins left by an older build hold it: read
/// once, when those pins are migrated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RuleValV1 {
    pub last_used: u64,
    pub flags: u32,
    pub pad: u32,
}

impl From<RuleValV1> for RuleVal {
    fn from(v: RuleValV1) -> Self {
        RuleVal { last_used: v.last_used, flags: v.flags, pad: 0, expires: 0 }
    }
}

/// Every LPM trie of the object, by pin name (IPv4 first of each pair).
pub(crate) const LPM_MAPS: [&str; 12] = [
    MAP_ALLOW4,
    MAP_ALLOW6,
    MAP_DENY4,
    MAP_DENY6,
    MAP_REDIR4,
    MAP_REDIR6,
    MAP_INGRESS4,
    MAP_INGRESS6,
    MAP_INGRESS_DENY4,
    MAP_INGRESS_DENY6,
    MAP_SRC4,
    MAP_SRC6,
];

pub(crate) fn is_v6_map(name: &str) -> bool {
    name.ends_with('6')
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CtKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub ifindex: u32,
    pub proto: u8,
    pub family: u8,
    pub pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CtVal {
    pub last_seen: u64,
    pub flags: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RawDropEvent {
    pub ktime: u64,
    pub endpoint: u32,
    pub ifindex: u32,
    pub family: u8,
    pub proto: u8,
    pub tcp_flags: u8,
    pub reason: u8,
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// 0: sent by the pod (egress), 1: going to the pod (ingress).
    pub direction: u8,
    /// `VF_*` bits.
    pub verdict: u8,
    pub pad: [u8; 6],
}

pub(crate) const DIR_INGRESS: u8 = 1;

// SAFETY: plain `repr(C)` structs of integers and byte arrays with no padding holes that the
// kernel could leave uninitialised (every field is explicit, sizes checked in the tests below).
unsafe impl aya::Pod for EpCfg {}
unsafe impl aya::Pod for ProxyCfg {}
unsafe impl aya::Pod for Key4 {}
unsafe impl aya::Pod for Key6 {}
unsafe impl aya::Pod for RuleVal {}
unsafe impl aya::Pod for RuleValV1 {}
unsafe impl aya::Pod for CtKey {}
unsafe impl aya::Pod for CtVal {}

pub(crate) fn proto_number(proto: L4Proto) -> u8 {
    match proto {
        L4Proto::Any => 0,
        L4Proto::Tcp => 6,
        L4Proto::Udp => 17,
    }
}

pub(crate) fn proto_from_number(n: u8) -> L4Proto {
    match n {
        6 => L4Proto::Tcp,
        17 => L4Proto::Udp,
        _ => L4Proto::Any,
    }
}

pub(crate) fn key4(rule: &RuleKey, net: Ipv4Net) -> aya::maps::lpm_trie::Key<Key4> {
    aya::maps::lpm_trie::Key::new(
        KEY_FIXED_BITS + u32::from(net.prefix_len()),
        Key4 {
            endpoint: rule.endpoint.0,
            proto: proto_number(rule.proto),
            pad: 0,
            port: rule.port,
            addr: net.network().octets(),
        },
    )
}

pub(crate) fn key6(rule: &RuleKey, net: Ipv6Net) -> aya::maps::lpm_trie::Key<Key6> {
    aya::maps::lpm_trie::Key::new(
        KEY_FIXED_BITS + u32::from(net.prefix_len()),
        Key6 {
            endpoint: rule.endpoint.0,
            proto: proto_number(rule.proto),
            pad: 0,
            port: rule.port,
            addr: net.network().octets(),
        },
    )
}

/// Back from a map key to a rule; `None` for a key fqdnd did not write (prefix out of range).
pub(crate) fn rule_from_key4(key: &aya::maps::lpm_trie::Key<Key4>) -> Option<RuleKey> {
    let data = key.data();
    let prefix = key.prefix_len().checked_sub(KEY_FIXED_BITS)?;
    let net = Ipv4Net::new(Ipv4Addr::from(data.addr), u8::try_from(prefix).ok()?).ok()?;
    Some(RuleKey {
        endpoint: EndpointId(data.endpoint),
        proto: proto_from_number(data.proto),
        port: data.port,
        net: IpNet::V4(net),
    })
}

pub(crate) fn rule_from_key6(key: &aya::maps::lpm_trie::Key<Key6>) -> Option<RuleKey> {
    let data = key.data();
    let prefix = key.prefix_len().checked_sub(KEY_FIXED_BITS)?;
    let net = Ipv6Net::new(Ipv6Addr::from(data.addr), u8::try_from(prefix).ok()?).ok()?;
    Some(RuleKey {
        endpoint: EndpointId(data.endpoint),
        proto: proto_from_number(data.proto),
        port: data.port,
        net: IpNet::V6(net),
    })
}

/// An address from the 16-byte field the C side fills (IPv4 in the first four bytes).
pub(crate) fn addr_from(family: u8, bytes: [u8; 16]) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_c_structs() {
        // The C compiler lays these out without implicit padding; sizes from `pahole`-style
        // reasoning over bpf/fqdnd.bpf.c.
        for (name, got, want) in [
            ("ep_cfg", size_of::<EpCfg>(), 8),
            ("proxy_cfg", size_of::<ProxyCfg>(), 32),
            ("lpm_key4 data", size_of::<Key4>(), 12),
            ("lpm_key6 data", size_of::<Key6>(), 24),
            ("rule_val", size_of::<RuleVal>(), 24),
            ("rule_val before expiries", size_of::<RuleValV1>(), 16),
            ("ct_key", size_of::<CtKey>(), 44),
            ("ct_val", size_of::<CtVal>(), 16),
            ("drop_event", size_of::<RawDropEvent>(), 64),
        ] {
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn flag_bits_round_trip() {
        for bits in 0..128 {
            assert_eq!(flag_bits(flags_from_bits(bits)), bits);
        }
    }

    #[test]
    fn keys_round_trip() {
        let cases = [
            RuleKey { endpoint: EndpointId(7), proto: L4Proto::Tcp, port: 443, net: "10.1.2.0/24".parse().unwrap() },
            RuleKey { endpoint: EndpointId(1), proto: L4Proto::Any, port: 0, net: "0.0.0.0/0".parse().unwrap() },
            RuleKey { endpoint: EndpointId(9), proto: L4Proto::Udp, port: 53, net: "fd00::1/128".parse().unwrap() },
            RuleKey { endpoint: EndpointId(u32::MAX), proto: L4Proto::Any, port: 0, net: "::/0".parse().unwrap() },
        ];
        for rule in cases {
            let back = match rule.net {
                IpNet::V4(n) => rule_from_key4(&key4(&rule, n)),
                IpNet::V6(n) => rule_from_key6(&key6(&rule, n)),
            };
            assert_eq!(back, Some(rule));
        }
    }
}
