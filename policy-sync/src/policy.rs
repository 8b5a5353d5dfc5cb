//! A validated policy, compiled for resolution: selectors compiled, ports parsed, name patterns
//! validated and grouped. Built by [`crate::validate`]; consumed by [`crate::resolve`].

use std::path::PathBuf;
use std::sync::Arc;

use fqdn_cache::PortProto;
use fqdn_cache::pattern::NamePattern;
use ipnet::IpNet;

use crate::resolved::{Entity, PolicyRef};
use crate::selector::Selector;
use crate::validate::FieldProblem;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    /// CiliumNetworkPolicy: lives in a namespace and selects endpoints there.
    Namespaced,
    /// CiliumClusterwideNetworkPolicy.
    Clusterwide,
}

/// One policy document that passed validation.
#[derive(Clone, Debug)]
pub struct Policy {
    pub reference: PolicyRef,
    pub kind: PolicyKind,
    /// The file it came from and its 1-based document number there.
    pub source: PathBuf,
    pub doc: usize,
    /// Shared: a loaded policy is held by the parse cache, the last good set and the set in
    /// force at once, and a clone must not copy its rules (10,000 policies are tens of MB).
    pub rules: Arc<[Rule]>,
    /// What is valid but worth a word (`policy check` prints them): e.g. a rule newer Cilium
    /// versions refuse.
    pub warnings: Vec<FieldProblem>,
}

/// Whom a rule applies to.
#[derive(Clone, Debug)]
pub enum Subject {
    Endpoints(Selector),
    /// `nodeSelector` (host policy). fqdnd polices endpoints, not the node itself, so these
    /// rules are validated but select no endpoint.
    Nodes(Selector),
}

/// `spec` or one element of `specs`.
#[derive(Clone, Debug)]
pub struct Rule {
    /// `spec` or `specs[N]`: the prefix of the field paths of this rule.
    pub path: String,
    pub subject: Subject,
    pub egress_default_deny: bool,
    pub ingress_default_deny: bool,
    pub egress: Vec<PeerRule>,
    pub egress_deny: Vec<PeerRule>,
    pub ingress: Vec<PeerRule>,
    pub ingress_deny: Vec<PeerRule>,
}

/// The L3 side of one egress/ingress rule, before the inventory is consulted.
#[derive(Clone, Debug)]
pub enum PeerSpec {
    /// `toEndpoints`/`fromEndpoints`: any of these selectors.
    Endpoints(Vec<Selector>),
    Cidr {
        net: IpNet,
        except: Vec<IpNet>,
    },
    Entity(Entity),
}

/// `rules.dns` of one `toPorts` entry, with that entry's ports.
#[derive(Clone, Debug)]
pub struct DnsSpec {
    pub ports: Vec<PortProto>,
    pub patterns: Vec<NamePattern>,
}

/// One element of `egress`, `egressDeny`, `ingress` or `ingressDeny`.
#[derive(Clone, Debug)]
pub struct PeerRule {
    /// Field path, e.g. `spec.egress[1]`.
    pub path: String,
    /// Whether any L3 field (`toEndpoints`, `toCIDR`, `toFQDNs`, ...) was given, an empty list
    /// included. A rule without one but with `toPorts` allows those ports to every peer; a rule
    /// with neither (`{}`) selects nothing.
    pub has_l3: bool,
    /// An L3 field was given as an empty list (`toEndpoints: []`, `toCIDR: []`, `toCIDRSet: []`,
    /// `toEntities: []` or a `from*` twin): as in Cilium, the rule then selects no peer at all,
    /// and `peers` and `fqdns` are empty.
    pub no_peer: bool,
    pub peers: Vec<PeerSpec>,
    /// Whether `toPorts` was given (non-empty).
    pub has_ports: bool,
    /// Union of the ports of every `toPorts` entry; empty = every port.
    pub ports: Vec<PortProto>,
    /// The ports this rule allows without L7 rules (`toPorts` entries without `rules`, or every
    /// port, `Some(vec![])`, for a rule without `toPorts`); `None` when every entry has L7 rules.
    /// As in Cilium, such a plain allow of a peer and port lifts the `rules.dns` that other rules
    /// put on the same peer and port: every name is allowed there (and still proxied).
    pub plain_ports: Option<Vec<PortProto>>,
    pub dns: Vec<DnsSpec>,
    pub fqdns: Vec<NamePattern>,
}

impl PeerRule {
    /// True for a rule that can allow (or deny) nothing, like `egress: [{}]`.
    pub fn selects_nothing(&self) -> bool {
        self.no_peer || (!self.has_l3 && !self.has_ports)
    }
}
