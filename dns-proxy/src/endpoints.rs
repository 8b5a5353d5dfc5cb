//! Source IP -> endpoint, with the endpoint's resolved policy. The agent builds a new table on
//! every policy or endpoint change and swaps it in; queries in flight keep the table they started with.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use fqdn_cache::EndpointId;
use policy_sync::{EndpointKey, EndpointPolicy};

use crate::matcher::DnsMatcher;

/// One policed endpoint as the proxy sees it.
#[derive(Debug)]
pub struct EndpointEntry {
    pub id: EndpointId,
    pub key: EndpointKey,
    pub policy: Arc<EndpointPolicy>,
    /// `policy.dns_rules` compiled for the query path.
    pub dns: DnsMatcher,
}

impl EndpointEntry {
    pub fn new(id: EndpointId, key: EndpointKey, policy: Arc<EndpointPolicy>) -> Self {
        let dns = DnsMatcher::new(&policy.dns_rules);
        EndpointEntry { id, key, policy, dns }
    }
}

#[derive(Debug, Default)]
pub struct EndpointTable {
    by_ip: HashMap<IpAddr, Arc<EndpointEntry>>,
}

impl EndpointTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `entry` for each of `ips`. A later insert for the same IP replaces the earlier one.
    pub fn insert(&mut self, ips: &[IpAddr], entry: EndpointEntry) {
        let entry = Arc::new(entry);
        for ip in ips {
            self.by_ip.insert(canonical(*ip), entry.clone());
        }
    }

    pub fn lookup(&self, ip: IpAddr) -> Option<&Arc<EndpointEntry>> {
        self.by_ip.get(&canonical(ip))
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }
}

/// IPv4-mapped IPv6 (`::ffff:10.0.1.5`) is the IPv4 address: dual-stack sockets report it that way.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_find_the_ipv4_entry() {
        let mut t = EndpointTable::new();
        let key = EndpointKey { namespace: "default".into(), name: "alpine".into() };
        t.insert(
            &["10.0.1.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            EndpointEntry::new(EndpointId(7), key, Arc::default()),
        );
        for (ip, found) in [("10.0.1.5", true), ("::ffff:10.0.1.5", true), ("fd00::5", true), ("10.0.1.6", false)] {
            assert_eq!(t.lookup(ip.parse().unwrap()).map(|e| e.id), found.then_some(EndpointId(7)), "{ip}");
        }
    }
}
