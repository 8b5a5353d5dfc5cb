//! Plain types that cross crate boundaries: endpoint ids, learned answers, datapath deltas.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A node-local endpoint number. Assigned by the agent from the endpoint inventory; the datapath
/// uses it as the first part of every allow-map key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointId(pub u32);

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ep{}", self.0)
    }
}

/// L4 protocol of a port rule. `Any` matches TCP and UDP (Cilium's `ANY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum L4Proto {
    Any,
    Tcp,
    Udp,
}

impl fmt::Display for L4Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            L4Proto::Any => "ANY",
            L4Proto::Tcp => "TCP",
            L4Proto::Udp => "UDP",
        })
    }
}

/// A destination port (0 = every port) with its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortProto {
    pub port: u16,
    pub proto: L4Proto,
}

impl PortProto {
    pub const ANY: PortProto = PortProto { port: 0, proto: L4Proto::Any };
}

/// One entry of an endpoint's allow map: this endpoint may send to `ip` on `port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AllowKey {
    pub endpoint: EndpointId,
    pub ip: IpAddr,
    pub port: PortProto,
}

/// Changes to the datapath's allow maps produced by learning answers, expiry or policy changes.
/// `add` entries must be in the kernel before the DNS answer that caused them is released.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub add: Vec<AllowKey>,
    pub remove: Vec<AllowKey>,
    /// When entries run out (added ones, and present ones whose lookups now last longer), for
    /// the datapath to keep beside them: an agent restarted after a crash reads them back for
    /// the entries its last cache snapshot does not know. Never shortened by the datapath.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expires: Vec<Expiry>,
}

impl Delta {
    /// Nothing to add or remove (what passes stays the same; there may still be expiries).
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Nothing for the datapath at all, expiries included.
    pub fn is_noop(&self) -> bool {
        self.is_empty() && self.expires.is_empty()
    }

    pub fn extend(&mut self, other: Delta) {
        self.add.extend(other.add);
        self.remove.extend(other.remove);
        self.expires.extend(other.expires);
    }
}

/// How long the lookups behind an allow entry keep it (its TTL, before zombie keeping), counted
/// from when the delta was computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Expiry {
    pub key: AllowKey,
    pub ttl: std::time::Duration,
}

/// Last time the datapath saw traffic to an allow-map IP of an endpoint (for zombies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastUsed {
    pub endpoint: EndpointId,
    pub ip: IpAddr,
    /// How long ago, at the time of the report.
    pub ago: std::time::Duration,
}

/// What the proxy learned from one upstream answer, as handed to the cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The endpoint whose query produced the answer.
    pub endpoint: EndpointId,
    /// The question name, normalized (see [`normalize_name`]).
    pub qname: String,
    /// CNAME targets in chain order, normalized. Empty when the answer has no CNAME.
    pub cnames: Vec<String>,
    /// A and AAAA addresses at the end of the chain.
    pub ips: Vec<IpAddr>,
    /// The lowest TTL along the chain, in seconds, before any floor is applied.
    pub ttl: u32,
}

/// Lower-case a DNS name and give it exactly one trailing dot (`WWW.Example.com` -> `www.example.com.`).
/// The root name stays `.`.
pub fn normalize_name(name: &str) -> String {
    normalize_owned(name.to_string())
}

/// [`normalize_name`] in place, for a name already owned (one decoded from the wire).
pub fn normalize_owned(mut name: String) -> String {
    name.make_ascii_lowercase();
    let stem = name.trim_end_matches('.').len();
    name.truncate(stem);
    name.push('.');
    name
}

/// [`normalize_name`] without the copy when `name` already is normalized (the common case on the
/// query path: the proxy hands in lower-case names with their trailing dot).
pub fn normalized_name(name: &str) -> std::borrow::Cow<'_, str> {
    let b = name.as_bytes();
    let one_dot = b.last() == Some(&b'.') && (b.len() == 1 || b[b.len() - 2] != b'.');
    if one_dot && !b.iter().any(u8::is_ascii_uppercase) {
        std::borrow::Cow::Borrowed(name)
    } else {
        std::borrow::Cow::Owned(normalize_name(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_cases() {
        for (input, want) in [
            ("WWW.Example.COM", "www.example.com."),
            ("www.example.com.", "www.example.com."),
            ("a..", "a."),
            ("", "."),
            (".", "."),
        ] {
            assert_eq!(normalize_name(input), want, "input {input:?}");
            assert_eq!(normalize_owned(input.to_string()), want, "input {input:?}");
            assert_eq!(normalized_name(input), want, "input {input:?}");
        }
    }
}
