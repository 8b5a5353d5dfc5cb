//! The toFQDNs selectors in force on the node: every distinct pattern once, compiled into one
//! [`PatternSet`], with the endpoints (and ports) using it. One match per learned name finds
//! every endpoint rule it feeds, however many selectors are in force.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use smallvec::SmallVec;

use crate::pattern::{NamePattern, PatternKind, PatternSet, is_selectable_name};
use crate::{EndpointId, PortProto};

/// One toFQDNs selector of an endpoint with the ports of its rule (empty: every port, i.e.
/// [`PortProto::ANY`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SelectorRule {
    pub pattern: NamePattern,
    pub ports: Vec<PortProto>,
}

impl SelectorRule {
    /// The ports the rule opens, never empty.
    fn effective_ports(&self) -> Ports {
        let mut ports: Ports = if self.ports.is_empty() {
            smallvec::smallvec![PortProto::ANY]
        } else {
            self.ports.iter().copied().collect()
        };
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// One rule's ports: one or two nearly always, so kept inline (a node has a user per endpoint
/// and pattern: 100,000 of them with 1,000 endpoints under 100 policies each).
type Ports = SmallVec<[PortProto; 2]>;

#[derive(Default)]
pub(crate) struct Selectors {
    /// Endpoints with the same rules (pods of one deployment) share one list.
    rules: BTreeMap<EndpointId, Arc<[SelectorRule]>>,
    /// Every distinct list in `rules`, for that sharing; pruned at each build.
    lists: HashSet<Arc<[SelectorRule]>>,
    /// Rules changed since `set` and `users` were built.
    dirty: bool,
    /// The distinct patterns in force, sorted, compiled.
    set: PatternSet,
    /// By pattern index in `set`: the endpoints using it, sorted by endpoint, with their ports.
    users: Vec<Vec<(EndpointId, Ports)>>,
    scratch: Vec<usize>,
}

fn pattern_order(p: &NamePattern) -> (bool, &str) {
    (p.kind() == PatternKind::Pattern, p.as_str())
}

impl Selectors {
    pub(crate) fn rules(&self, endpoint: EndpointId) -> &[SelectorRule] {
        self.rules.get(&endpoint).map_or(&[], |r| r)
    }

    /// Replace one endpoint's rules (empty: the endpoint has none). The index is rebuilt by
    /// [`Selectors::build`], once for a batch of changes.
    pub(crate) fn set(&mut self, endpoint: EndpointId, rules: Vec<SelectorRule>) {
        let changed = if rules.is_empty() {
            self.rules.remove(&endpoint).is_some()
        } else {
            let list = match self.lists.get(rules.as_slice()) {
                Some(shared) => shared.clone(),
                None => {
                    let list: Arc<[SelectorRule]> = rules.into();
                    self.lists.insert(list.clone());
                    list
                }
            };
            self.rules.insert(endpoint, list.clone()).is_none_or(|before| before != list)
        };
        self.dirty |= changed;
    }

    /// Distinct patterns in force (as of the last [`Selectors::build`]).
    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }

    /// Rebuild the index if rules changed. The compiled set is kept when the distinct patterns
    /// are unchanged (an endpoint added with a policy others already have): compiling thousands
    /// of patterns takes tens of milliseconds, re-listing their users does not.
    pub(crate) fn build(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        // Lists no endpoint uses any more (only this table holds them).
        self.lists.retain(|list| Arc::strong_count(list) > 1);
        let mut distinct: Vec<&NamePattern> = self.lists.iter().flat_map(|l| l.iter()).map(|r| &r.pattern).collect();
        distinct.sort_unstable_by(|a, b| pattern_order(a).cmp(&pattern_order(b)));
        distinct.dedup();
        let index: HashMap<&NamePattern, usize> = distinct.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        let mut users: Vec<Vec<(EndpointId, Ports)>> = vec![Vec::new(); distinct.len()];
        // BTreeMap order: users come out sorted by endpoint.
        for (&endpoint, rules) in &self.rules {
            for rule in rules.iter() {
                let i = index[&rule.pattern];
                let ports = rule.effective_ports();
                match users[i].last_mut() {
                    // Two rules of one endpoint with the same pattern: one user, ports merged.
                    Some((e, existing)) if *e == endpoint => {
                        existing.extend(ports);
                        existing.sort_unstable();
                        existing.dedup();
                    }
                    _ => users[i].push((endpoint, ports)),
                }
            }
        }
        let same = self.set.len() == distinct.len() && self.set.patterns().iter().zip(&distinct).all(|(a, b)| a == *b);
        if !same {
            self.set = PatternSet::new(distinct.into_iter().cloned());
        }
        self.users = users;
    }

    /// Every (endpoint, port) a name's IPs are allowed to, through any selector matching it;
    /// with `only`, just that endpoint's. An endpoint with two matching selectors sharing a port
    /// yields that port twice (rules with the same pattern were merged): callers count grants, so
    /// they must see each one, and [`EndpointRules`] counts alike.
    pub(crate) fn grants(&mut self, name: &str, only: Option<EndpointId>, mut f: impl FnMut(EndpointId, PortProto)) {
        self.build();
        // A selector holds clean names only, `*` included (`NamePattern::selects`).
        if self.set.is_empty() || !is_selectable_name(name) {
            return;
        }
        let mut matched = std::mem::take(&mut self.scratch);
        self.set.matching_into(name, &mut matched);
        for &i in &matched {
            let users = &self.users[i];
            let users = match only {
                Some(e) => match users.binary_search_by_key(&e, |u| u.0) {
                    Ok(at) => &users[at..=at],
                    Err(_) => &[],
                },
                None => &users[..],
            };
            for (endpoint, ports) in users {
                for &port in ports {
                    f(*endpoint, port);
                }
            }
        }
        self.scratch = matched;
    }
}

/// One endpoint's rules compiled on their own, for re-deriving its allows after a policy change.
pub(crate) struct EndpointRules {
    set: PatternSet,
    ports: Vec<Ports>,
}

impl EndpointRules {
    /// Rules with the same pattern merge into one, as in [`Selectors`], so both count a name's
    /// grants alike.
    pub(crate) fn new(rules: &[SelectorRule]) -> Self {
        let mut index: HashMap<&NamePattern, usize> = HashMap::new();
        let mut patterns: Vec<NamePattern> = Vec::new();
        let mut ports: Vec<Ports> = Vec::new();
        for rule in rules {
            match index.get(&rule.pattern).copied() {
                Some(i) => {
                    ports[i].extend(rule.effective_ports());
                    ports[i].sort_unstable();
                    ports[i].dedup();
                }
                None => {
                    index.insert(&rule.pattern, patterns.len());
                    patterns.push(rule.pattern.clone());
                    ports.push(rule.effective_ports());
                }
            }
        }
        EndpointRules { set: PatternSet::new(patterns), ports }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Ports a name's IPs open for this endpoint, one per matching rule and port (see
    /// [`Selectors::grants`] on counting).
    pub(crate) fn ports_for(&self, name: &str, scratch: &mut Vec<usize>, out: &mut Vec<PortProto>) {
        out.clear();
        if !is_selectable_name(name) {
            return;
        }
        self.set.matching_into(name, scratch);
        for &i in scratch.iter() {
            out.extend_from_slice(&self.ports[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(patterns: &[&str]) -> Vec<SelectorRule> {
        patterns
            .iter()
            .map(|p| SelectorRule { pattern: NamePattern::parse(PatternKind::Pattern, p).unwrap(), ports: vec![] })
            .collect()
    }

    #[test]
    fn endpoints_with_the_same_rules_share_one_list_and_lists_gone_are_dropped() {
        let mut s = Selectors::default();
        s.set(EndpointId(1), rules(&["*.a.com", "*.b.com"]));
        s.set(EndpointId(2), rules(&["*.a.com", "*.b.com"]));
        s.set(EndpointId(3), rules(&["*.c.com"]));
        assert!(std::ptr::eq(s.rules(EndpointId(1)), s.rules(EndpointId(2))), "one list for equal rules");
        assert!(!std::ptr::eq(s.rules(EndpointId(1)), s.rules(EndpointId(3))));
        assert_eq!(s.lists.len(), 2);
        s.set(EndpointId(3), rules(&["*.d.com"]));
        s.set(EndpointId(2), Vec::new());
        s.build();
        assert_eq!(s.lists.len(), 2, "*.c.com's list is no one's now");
        assert_eq!(s.len(), 3, "*.a.com, *.b.com, *.d.com");
        let mut got = Vec::new();
        s.grants("x.a.com", None, |e, p| got.push((e, p)));
        assert_eq!(got, [(EndpointId(1), PortProto::ANY)]);
    }
}
