//! Converging the kernel to what the policies want, as a pure plan: the current state (the
//! mirror of the tries, the flags, the attachments) and the wanted endpoints in, an ordered list
//! of operations out. No I/O here; `kernel.rs` executes the plan.
//!
//! The order is the point: additions and owner changes first, then flags and attachments, then
//! detachments, then removals. Traffic that stays allowed is never dropped in between, and an
//! endpoint is never attached before its rules are in.

use std::collections::{BTreeMap, BTreeSet};

use fqdn_cache::EndpointId;

use crate::ReconcileReport;
use crate::maps::{OWNER_LEARNED, OWNER_STATIC};
use crate::rules::{EndpointFlags, RuleKey, StaticRules};
use crate::tries::Trie;

/// What the kernel holds now.
pub(crate) struct Current<'a> {
    pub(crate) allow: &'a BTreeMap<RuleKey, u32>,
    /// The tries without owner bits, in [`Trie::PLAIN`] order.
    pub(crate) plain: [&'a BTreeSet<RuleKey>; 5],
    pub(crate) flags: &'a BTreeMap<EndpointId, EndpointFlags>,
    /// ifindex -> endpoint.
    pub(crate) attached: &'a BTreeMap<u32, EndpointId>,
}

/// One endpoint as the policies want it.
pub(crate) struct Wanted<'a> {
    pub(crate) endpoint: EndpointId,
    /// Its node-side interface (index, name), if it has one that exists.
    pub(crate) interface: Option<(u32, &'a str)>,
    pub(crate) flags: EndpointFlags,
    pub(crate) rules: &'a StaticRules,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Allow entry `key` to owner bits `want` (0: delete) from `have` (0: absent).
    WriteAllow {
        key: RuleKey,
        want: u32,
        have: u32,
    },
    InsertRule {
        trie: Trie,
        key: RuleKey,
    },
    /// The endpoint's flags, written into the configuration of every interface it is attached to.
    SetFlags {
        endpoint: EndpointId,
        flags: EndpointFlags,
    },
    ForgetFlags {
        endpoint: EndpointId,
    },
    /// Attach (idempotently: links already there are kept) and write the configuration.
    /// `new`: the interface was not this endpoint's before.
    Attach {
        endpoint: EndpointId,
        ifindex: u32,
        interface: String,
        new: bool,
    },
    Detach {
        ifindex: u32,
    },
    RemoveRule {
        trie: Trie,
        key: RuleKey,
    },
}

/// The operations that take `current` to `wanted`, learned allow entries `learned` included.
pub(crate) fn plan(current: &Current<'_>, wanted: &[Wanted<'_>], learned: &BTreeSet<RuleKey>) -> Vec<Op> {
    let mut want_allow: BTreeMap<RuleKey, u32> = BTreeMap::new();
    let mut want_plain: [BTreeSet<RuleKey>; 5] = Default::default();
    for w in wanted {
        for k in &w.rules.allow {
            *want_allow.entry(*k).or_default() |= OWNER_STATIC;
        }
        for (i, trie) in Trie::PLAIN.into_iter().enumerate() {
            want_plain[i].extend(w.rules.plain(trie).iter().copied());
        }
    }
    for k in learned {
        *want_allow.entry(*k).or_default() |= OWNER_LEARNED;
    }

    let mut ops = Vec::new();
    // 1. Additions and owner changes.
    for (key, &want) in &want_allow {
        let have = current.allow.get(key).copied().unwrap_or(0);
        if have != want {
            ops.push(Op::WriteAllow { key: *key, want, have });
        }
    }
    for (i, trie) in Trie::PLAIN.into_iter().enumerate() {
        ops.extend(want_plain[i].difference(current.plain[i]).map(|key| Op::InsertRule { trie, key: *key }));
    }
    // 2. Flags, then attachments (which write the configuration with the new flags).
    for w in wanted {
        if current.flags.get(&w.endpoint) != Some(&w.flags) {
            ops.push(Op::SetFlags { endpoint: w.endpoint, flags: w.flags });
        }
    }
    let listed: BTreeSet<EndpointId> = wanted.iter().map(|w| w.endpoint).collect();
    ops.extend(current.flags.keys().filter(|e| !listed.contains(e)).map(|&endpoint| Op::ForgetFlags { endpoint }));
    let mut keep = BTreeSet::new();
    for w in wanted {
        if let Some((ifindex, interface)) = w.interface {
            let new = current.attached.get(&ifindex) != Some(&w.endpoint);
            ops.push(Op::Attach { endpoint: w.endpoint, ifindex, interface: interface.to_string(), new });
            keep.insert(ifindex);
        }
    }
    // 3. Detachments: endpoints gone, moved to another interface, or whose interface went away.
    ops.extend(current.attached.keys().filter(|i| !keep.contains(i)).map(|&ifindex| Op::Detach { ifindex }));
    // 4. Removals.
    for (key, &have) in current.allow {
        if !want_allow.contains_key(key) {
            ops.push(Op::WriteAllow { key: *key, want: 0, have });
        }
    }
    for (i, trie) in Trie::PLAIN.into_iter().enumerate() {
        ops.extend(current.plain[i].difference(&want_plain[i]).map(|key| Op::RemoveRule { trie, key: *key }));
    }
    ops
}

/// What a plan changes, for logs and callers.
pub(crate) fn report(ops: &[Op]) -> ReconcileReport {
    let mut r = ReconcileReport::default();
    for op in ops {
        match op {
            Op::WriteAllow { want: 0, .. } | Op::RemoveRule { .. } => r.entries_removed += 1,
            Op::WriteAllow { have: 0, .. } | Op::InsertRule { .. } => r.entries_added += 1,
            Op::WriteAllow { .. } => r.entries_updated += 1,
            Op::Attach { new: true, .. } => r.attached += 1,
            Op::Detach { .. } => r.detached += 1,
            Op::Attach { new: false, .. } | Op::SetFlags { .. } | Op::ForgetFlags { .. } => {}
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use fqdn_cache::L4Proto;

    use super::*;

    fn key(endpoint: u32, net: &str, port: u16) -> RuleKey {
        RuleKey { endpoint: EndpointId(endpoint), proto: L4Proto::Tcp, port, net: net.parse().unwrap() }
    }

    fn rules(allow: &[RuleKey], deny: &[RuleKey], redirect: &[RuleKey]) -> StaticRules {
        StaticRules {
            allow: allow.iter().copied().collect(),
            deny: deny.iter().copied().collect(),
            redirect: redirect.iter().copied().collect(),
            ..Default::default()
        }
    }

    const DENY: EndpointFlags = EndpointFlags {
        default_deny: true,
        redirect_dns: false,
        has_deny: false,
        ingress_default_deny: false,
        has_ingress_deny: false,
        check_source: false,
        audit: false,
    };

    #[derive(Default)]
    struct State {
        allow: BTreeMap<RuleKey, u32>,
        deny: BTreeSet<RuleKey>,
        redirect: BTreeSet<RuleKey>,
        ingress_allow: BTreeSet<RuleKey>,
        ingress_deny: BTreeSet<RuleKey>,
        source: BTreeSet<RuleKey>,
        flags: BTreeMap<EndpointId, EndpointFlags>,
        attached: BTreeMap<u32, EndpointId>,
    }

    impl State {
        fn current(&self) -> Current<'_> {
            Current {
                allow: &self.allow,
                plain: [&self.deny, &self.redirect, &self.ingress_allow, &self.ingress_deny, &self.source],
                flags: &self.flags,
                attached: &self.attached,
            }
        }

        fn plain(&mut self, trie: Trie) -> &mut BTreeSet<RuleKey> {
            match trie {
                Trie::Deny => &mut self.deny,
                Trie::Redirect => &mut self.redirect,
                Trie::IngressAllow => &mut self.ingress_allow,
                Trie::IngressDeny => &mut self.ingress_deny,
                Trie::Source => &mut self.source,
                Trie::Allow => unreachable!(),
            }
        }

        /// What executing `ops` does to this state (the executor's contract, in memory).
        fn apply(&mut self, ops: &[Op]) {
            for op in ops {
                match op {
                    Op::WriteAllow { key, want: 0, .. } => drop(self.allow.remove(key)),
                    Op::WriteAllow { key, want, .. } => drop(self.allow.insert(*key, *want)),
                    Op::InsertRule { trie, key } => drop(self.plain(*trie).insert(*key)),
                    Op::RemoveRule { trie, key } => drop(self.plain(*trie).remove(key)),
                    Op::SetFlags { endpoint, flags } => drop(self.flags.insert(*endpoint, *flags)),
                    Op::ForgetFlags { endpoint } => drop(self.flags.remove(endpoint)),
                    Op::Attach { endpoint, ifindex, .. } => drop(self.attached.insert(*ifindex, *endpoint)),
                    Op::Detach { ifindex } => drop(self.attached.remove(ifindex)),
                }
            }
        }
    }

    /// Position of the first op matching `f`.
    fn at(ops: &[Op], f: impl Fn(&Op) -> bool) -> usize {
        ops.iter().position(f).unwrap_or_else(|| panic!("no such op in {ops:#?}"))
    }

    #[test]
    fn first_attach_writes_rules_before_attaching() {
        let (a, d, r) = (key(1, "10.0.0.0/24", 443), key(1, "10.0.0.9/32", 443), key(1, "10.96.0.10/32", 53));
        let rules = rules(&[a], &[d], &[r]);
        let state = State::default();
        let ops = plan(
            &state.current(),
            &[Wanted { endpoint: EndpointId(1), interface: Some((5, "vpod")), flags: DENY, rules: &rules }],
            &BTreeSet::new(),
        );
        let attach = at(&ops, |o| matches!(o, Op::Attach { ifindex: 5, new: true, .. }));
        for earlier in [
            at(&ops, |o| matches!(o, Op::WriteAllow { key, want: OWNER_STATIC, have: 0 } if *key == a)),
            at(&ops, |o| matches!(o, Op::InsertRule { trie: Trie::Deny, .. })),
            at(&ops, |o| matches!(o, Op::InsertRule { trie: Trie::Redirect, .. })),
            at(&ops, |o| matches!(o, Op::SetFlags { flags: DENY, .. })),
        ] {
            assert!(earlier < attach, "{ops:#?}");
        }
        let r = report(&ops);
        assert_eq!((r.entries_added, r.attached, r.detached, r.entries_removed), (3, 1, 0, 0));
    }

    #[test]
    fn tightening_adds_before_it_removes_and_keeps_learned_owners() {
        let (old, new, shared) =
            (key(1, "192.0.2.0/24", 80), key(1, "198.51.100.0/24", 80), key(1, "203.0.113.7/32", 443));
        let mut state = State::default();
        state.allow.insert(old, OWNER_STATIC);
        state.allow.insert(shared, OWNER_STATIC | OWNER_LEARNED);
        state.flags.insert(EndpointId(1), DENY);
        state.attached.insert(5, EndpointId(1));
        let rules = rules(&[new], &[], &[]);
        let learned: BTreeSet<RuleKey> = [shared].into();
        let ops = plan(
            &state.current(),
            &[Wanted { endpoint: EndpointId(1), interface: Some((5, "vpod")), flags: DENY, rules: &rules }],
            &learned,
        );
        let add = at(&ops, |o| matches!(o, Op::WriteAllow { key, have: 0, .. } if *key == new));
        let remove = at(&ops, |o| matches!(o, Op::WriteAllow { key, want: 0, .. } if *key == old));
        assert!(add < remove, "{ops:#?}");
        // The learned owner of the shared entry stays: an update, never a delete.
        assert!(ops.contains(&Op::WriteAllow { key: shared, want: OWNER_LEARNED, have: OWNER_STATIC | OWNER_LEARNED }));
        assert!(!ops.iter().any(|o| matches!(o, Op::SetFlags { .. })), "flags unchanged: not rewritten");
        assert_eq!(ops.iter().filter(|o| matches!(o, Op::Attach { new: false, .. })).count(), 1);
        let r = report(&ops);
        assert_eq!((r.entries_added, r.entries_updated, r.entries_removed, r.attached), (1, 1, 1, 0));
    }

    #[test]
    fn endpoints_gone_or_moved_are_detached_before_their_entries_go() {
        let (a, b) = (key(1, "192.0.2.1/32", 80), key(2, "192.0.2.2/32", 80));
        let mut state = State::default();
        state.allow.insert(a, OWNER_STATIC);
        state.allow.insert(b, OWNER_STATIC | OWNER_LEARNED);
        state.flags.insert(EndpointId(1), DENY);
        state.flags.insert(EndpointId(2), DENY);
        state.attached.insert(5, EndpointId(1));
        state.attached.insert(6, EndpointId(2));
        // Endpoint 1 moved from ifindex 5 to 9 (pod recreated); endpoint 2 is gone.
        let rules1 = rules(&[a], &[], &[]);
        let ops = plan(
            &state.current(),
            &[Wanted { endpoint: EndpointId(1), interface: Some((9, "vpod2")), flags: DENY, rules: &rules1 }],
            &BTreeSet::new(),
        );
        let attach = at(&ops, |o| matches!(o, Op::Attach { ifindex: 9, new: true, .. }));
        let detach5 = at(&ops, |o| *o == Op::Detach { ifindex: 5 });
        let detach6 = at(&ops, |o| *o == Op::Detach { ifindex: 6 });
        let remove_b = at(&ops, |o| matches!(o, Op::WriteAllow { key, want: 0, .. } if *key == b));
        assert!(attach < detach5 && detach6 < remove_b, "{ops:#?}");
        assert!(ops.contains(&Op::ForgetFlags { endpoint: EndpointId(2) }));
        state.apply(&ops);
        assert_eq!(state.attached, [(9, EndpointId(1))].into());
        assert_eq!(state.allow, [(a, OWNER_STATIC)].into());
    }

    #[test]
    fn a_converged_state_plans_only_idempotent_attaches() {
        let (a, d) = (key(1, "10.0.0.0/8", 0), key(1, "10.9.0.0/16", 0));
        let rules = rules(&[a], &[d], &[]);
        let wanted = [Wanted { endpoint: EndpointId(1), interface: Some((5, "vpod")), flags: DENY, rules: &rules }];
        let mut state = State::default();
        let first = plan(&state.current(), &wanted, &BTreeSet::new());
        state.apply(&first);
        let again = plan(&state.current(), &wanted, &BTreeSet::new());
        assert_eq!(
            again,
            vec![Op::Attach { endpoint: EndpointId(1), ifindex: 5, interface: "vpod".into(), new: false }]
        );
        assert_eq!(report(&again), ReconcileReport::default());
    }

    #[test]
    fn an_endpoint_without_its_interface_keeps_its_rules_and_loses_its_attachment() {
        let a = key(1, "10.0.0.0/8", 0);
        let rules = rules(&[a], &[], &[]);
        let mut state = State::default();
        state.allow.insert(a, OWNER_STATIC);
        state.flags.insert(EndpointId(1), DENY);
        state.attached.insert(5, EndpointId(1));
        let ops = plan(
            &state.current(),
            &[Wanted { endpoint: EndpointId(1), interface: None, flags: DENY, rules: &rules }],
            &BTreeSet::new(),
        );
        assert_eq!(ops, vec![Op::Detach { ifindex: 5 }]);
    }
}
