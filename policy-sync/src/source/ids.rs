//! Stable endpoint ids.
//!
//! Endpoint ids key the datapath's allow maps, which outlive the agent (pinned), so an endpoint
//! must get the same id on every start without any saved state: the id is a 31-bit FNV-1a hash of
//! `namespace/name` (0 is never used). On a collision the later key (in sorted order) takes the next
//! free number; collisions are rare at node scale (a few hundred endpoints in 2^31).

use std::collections::HashSet;

use fqdn_cache::EndpointId;

use crate::endpoint::{Endpoint, EndpointKey};

const ID_MASK: u32 = 0x7fff_ffff;

fn fnv1a(text: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The id of each endpoint, in the order given.
pub fn assign_ids(endpoints: &[Endpoint]) -> Vec<EndpointId> {
    let mut order: Vec<usize> = (0..endpoints.len()).collect();
    order.sort_by_key(|&i| endpoints[i].key());
    let mut used = HashSet::new();
    let mut ids = vec![EndpointId(0); endpoints.len()];
    for i in order {
        let mut id = preferred_id(&endpoints[i].key());
        while !used.insert(id) {
            id = (id % ID_MASK) + 1;
        }
        ids[i] = EndpointId(id);
    }
    ids
}

/// The id an endpoint gets unless another endpoint already holds it.
pub fn preferred_id(key: &EndpointKey) -> u32 {
    match fnv1a(&format!("{}/{}", key.namespace, key.name)) & ID_MASK {
        0 => 1,
        h => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ns: &str, name: &str) -> Endpoint {
        Endpoint {
            namespace: ns.into(),
            name: name.into(),
            labels: Default::default(),
            ips: vec![],
            interface: None,
            policy_audit_mode: false,
        }
    }

    #[test]
    fn ids_do_not_depend_on_order_or_neighbours() {
        let a = vec![ep("default", "alpine"), ep("kube-system", "kube-dns"), ep("default", "web")];
        let b = vec![ep("default", "web"), ep("default", "alpine")];
        let ida = assign_ids(&a);
        let idb = assign_ids(&b);
        assert_eq!(ida[0], idb[1]);
        assert_eq!(ida[2], idb[0]);
        assert!(ida.iter().all(|id| id.0 != 0 && id.0 <= ID_MASK));
        assert_eq!(ida.iter().collect::<HashSet<_>>().len(), 3);
    }
}
