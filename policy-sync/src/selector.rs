//! Label selectors with Cilium's conventions: keys may carry a label source (`k8s:`, `any:`,
//! `reserved:`...), a CiliumNetworkPolicy's selectors are confined to its namespace unless they name
//! one, and a clusterwide policy's peer selectors only match endpoints that have a namespace.

use std::collections::BTreeMap;
use std::fmt;

use crate::endpoint::NAMESPACE_LABEL;
use crate::model::{LabelSelector, Operator};

/// Prefix of the labels Cilium derives from a pod's namespace labels. A selector using them picks
/// namespaces itself, so Cilium adds no namespace match to it.
const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

/// A label key with its source. Endpoints known to fqdnd only carry Kubernetes labels, so `k8s:`,
/// `any:` and unprefixed keys look at them; other sources (`reserved:host`, `container:...`) name
/// identities fqdnd has no endpoint for and never match.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LabelKey {
    K8s(String),
    Other { source: String, key: String },
}

impl LabelKey {
    pub fn parse(text: &str) -> LabelKey {
        match text.split_once(':') {
            Some(("k8s" | "any", key)) => LabelKey::K8s(key.to_string()),
            Some((source, key)) if is_source(source) => {
                LabelKey::Other { source: source.to_string(), key: key.to_string() }
            }
            _ => LabelKey::K8s(text.to_string()),
        }
    }

    fn is_namespace(&self) -> bool {
        matches!(self, LabelKey::K8s(k) if k == NAMESPACE_LABEL)
    }
}

/// Label sources Cilium knows; a colon after anything else is part of the key.
fn is_source(s: &str) -> bool {
    matches!(
        s,
        "reserved"
            | "container"
            | "unspec"
            | "cidr"
            | "fqdn"
            | "cilium"
            | "cilium-generated"
            | "kvstore"
            | "etcd"
            | "node"
    ) || s.starts_with("cni")
}

impl fmt::Display for LabelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelKey::K8s(k) => write!(f, "k8s:{k}"),
            LabelKey::Other { source, key } => write!(f, "{source}:{key}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Requirement {
    pub key: LabelKey,
    pub op: Op,
}

/// A compiled selector: every requirement must hold. No requirements selects every endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

/// How the policy that holds a selector scopes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope<'a> {
    /// The `endpointSelector` of a CiliumNetworkPolicy: always confined to the policy's
    /// namespace; a namespace the user names is replaced (Cilium logs and does the same).
    Subject(&'a str),
    /// `toEndpoints`/`fromEndpoints` of a CiliumNetworkPolicy: the policy's namespace unless
    /// the selector names a namespace itself.
    Peer(&'a str),
    /// `toEndpoints`/`fromEndpoints` of a clusterwide policy: any endpoint that has a namespace.
    ClusterPeer,
    /// Used as written (a clusterwide policy's `endpointSelector`).
    AsWritten,
}

impl Selector {
    pub fn compile(sel: &LabelSelector, scope: Scope<'_>) -> Selector {
        let mut requirements = Vec::with_capacity(sel.match_labels.len() + sel.match_expressions.len() + 1);
        for (k, v) in &sel.match_labels {
            requirements.push(Requirement { key: LabelKey::parse(k), op: Op::In(vec![v.clone()]) });
        }
        for e in &sel.match_expressions {
            let op = match e.operator {
                Operator::In => Op::In(e.values.clone()),
                Operator::NotIn => Op::NotIn(e.values.clone()),
                Operator::Exists => Op::Exists,
                Operator::DoesNotExist => Op::DoesNotExist,
            };
            requirements.push(Requirement { key: LabelKey::parse(&e.key), op });
        }
        let names_namespace = requirements.iter().any(|r| r.key.is_namespace());
        let names_namespace_labels =
            requirements.iter().any(|r| matches!(&r.key, LabelKey::K8s(k) if k.starts_with(NAMESPACE_LABELS_PREFIX)));
        let names_reserved =
            requirements.iter().any(|r| matches!(&r.key, LabelKey::Other { source, .. } if source == "reserved"));
        let ns_key = LabelKey::K8s(NAMESPACE_LABEL.to_string());
        match scope {
            Scope::Subject(ns) => {
                requirements.retain(|r| !(r.key.is_namespace() && matches!(r.op, Op::In(_))));
                requirements.push(Requirement { key: ns_key, op: Op::In(vec![ns.to_string()]) });
            }
            Scope::Peer(ns) if !names_namespace && !names_namespace_labels && !names_reserved => {
                requirements.push(Requirement { key: ns_key, op: Op::In(vec![ns.to_string()]) });
            }
            Scope::ClusterPeer if !names_namespace && !names_reserved => {
                requirements.push(Requirement { key: ns_key, op: Op::Exists });
            }
            _ => {}
        }
        Selector { requirements }
    }

    /// One `key: value` every endpoint this selector matches must carry (a single-valued `In`
    /// on a Kubernetes label), preferring one other than the namespace: an index key, so only
    /// endpoints with it need the full match. `None` when no requirement pins one value.
    pub fn required_label(&self) -> Option<(&str, &str)> {
        fn single(r: &Requirement) -> Option<(&str, &str)> {
            match (&r.key, &r.op) {
                (LabelKey::K8s(k), Op::In(vs)) if vs.len() == 1 => Some((k.as_str(), vs[0].as_str())),
                _ => None,
            }
        }
        let mut found = None;
        for r in &self.requirements {
            if let Some(pair) = single(r) {
                if !r.key.is_namespace() {
                    return Some(pair);
                }
                found.get_or_insert(pair);
            }
        }
        found
    }

    /// Does an endpoint with these labels (namespace label included) match?
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| {
            let value = match &r.key {
                LabelKey::K8s(k) => labels.get(k),
                LabelKey::Other { .. } => None,
            };
            match (&r.op, value) {
                (Op::In(vs), Some(v)) => vs.contains(v),
                (Op::In(_), None) => false,
                (Op::NotIn(vs), Some(v)) => !vs.contains(v),
                (Op::NotIn(_), None) => true,
                (Op::Exists, v) => v.is_some(),
                (Op::DoesNotExist, v) => v.is_none(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Requirement as RawReq;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn sel(ml: &[(&str, &str)], me: &[(&str, Operator, &[&str])]) -> LabelSelector {
        LabelSelector {
            match_labels: labels(ml),
            match_expressions: me
                .iter()
                .map(|(k, op, vs)| RawReq {
                    key: k.to_string(),
                    operator: *op,
                    values: vs.iter().map(|v| v.to_string()).collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn selector_table() {
        let ns = NAMESPACE_LABEL;
        let dns_pod = labels(&[("k8s-app", "kube-dns"), (ns, "kube-system")]);
        let alpine = labels(&[("app", "alpine"), (ns, "default")]);
        let other_ns_alpine = labels(&[("app", "alpine"), (ns, "prod")]);
        let no_namespace = labels(&[("app", "x")]);
        let kube_dns_sel = sel(&[("k8s:io.kubernetes.pod.namespace", "kube-system"), ("k8s:k8s-app", "kube-dns")], &[]);
        type Case<'a> = (&'a str, LabelSelector, Scope<'a>, &'a BTreeMap<String, String>, bool);
        let cases: Vec<Case<'_>> = vec![
            ("seed kube-dns selector from default", kube_dns_sel.clone(), Scope::Peer("default"), &dns_pod, true),
            (
                "seed kube-dns selector does not pick alpine",
                kube_dns_sel.clone(),
                Scope::Peer("default"),
                &alpine,
                false,
            ),
            ("any: prefix", sel(&[("any:app", "alpine")], &[]), Scope::Peer("default"), &alpine, true),
            (
                "cnp peer confined to own ns",
                sel(&[("app", "alpine")], &[]),
                Scope::Peer("default"),
                &other_ns_alpine,
                false,
            ),
            ("empty peer = same namespace", sel(&[], &[]), Scope::Peer("default"), &alpine, true),
            ("empty peer, other namespace", sel(&[], &[]), Scope::Peer("default"), &dns_pod, false),
            ("ccnp peer: any namespace", sel(&[("app", "alpine")], &[]), Scope::ClusterPeer, &other_ns_alpine, true),
            ("ccnp peer needs a namespace", sel(&[], &[]), Scope::ClusterPeer, &no_namespace, false),
            (
                "subject namespace replaced",
                sel(&[("k8s:io.kubernetes.pod.namespace", "prod"), ("app", "alpine")], &[]),
                Scope::Subject("default"),
                &alpine,
                true,
            ),
            ("subject other ns", sel(&[("app", "alpine")], &[]), Scope::Subject("default"), &other_ns_alpine, false),
            ("In", sel(&[], &[("app", Operator::In, &["x", "alpine"])]), Scope::AsWritten, &alpine, true),
            ("NotIn present", sel(&[], &[("app", Operator::NotIn, &["alpine"])]), Scope::AsWritten, &alpine, false),
            ("NotIn absent", sel(&[], &[("tier", Operator::NotIn, &["db"])]), Scope::AsWritten, &alpine, true),
            ("Exists", sel(&[], &[("k8s:app", Operator::Exists, &[])]), Scope::AsWritten, &alpine, true),
            ("DoesNotExist", sel(&[], &[("app", Operator::DoesNotExist, &[])]), Scope::AsWritten, &alpine, false),
            ("reserved never matches", sel(&[("reserved:host", "")], &[]), Scope::Peer("default"), &alpine, false),
            (
                "namespace via matchExpressions",
                sel(&[], &[("k8s:io.kubernetes.pod.namespace", Operator::In, &["kube-system"])]),
                Scope::Peer("default"),
                &dns_pod,
                true,
            ),
        ];
        for (name, raw, scope, lbls, want) in cases {
            assert_eq!(Selector::compile(&raw, scope).matches(lbls), want, "case {name}");
        }
    }

    #[test]
    fn required_label_prefers_the_most_selective() {
        let compile =
            |ml: &[(&str, &str)], me: &[(&str, Operator, &[&str])], scope| Selector::compile(&sel(ml, me), scope);
        let app = compile(&[("app", "web")], &[], Scope::Subject("prod"));
        assert_eq!(app.required_label(), Some(("app", "web")));
        let ns_only = compile(&[], &[], Scope::Subject("prod"));
        assert_eq!(ns_only.required_label(), Some((NAMESPACE_LABEL, "prod")));
        let two_values = compile(&[], &[("app", Operator::In, &["a", "b"])], Scope::AsWritten);
        assert_eq!(two_values.required_label(), None);
        let exists = compile(&[], &[("app", Operator::Exists, &[])], Scope::AsWritten);
        assert_eq!(exists.required_label(), None);
        // Whatever it picks, an endpoint without that label is never matched.
        let labels = labels(&[("app", "web"), (NAMESPACE_LABEL, "prod")]);
        assert!(app.matches(&labels) && ns_only.matches(&labels));
    }

    #[test]
    fn key_parsing() {
        assert_eq!(LabelKey::parse("k8s:app"), LabelKey::K8s("app".into()));
        assert_eq!(LabelKey::parse("app"), LabelKey::K8s("app".into()));
        assert_eq!(LabelKey::parse("reserved:host"), LabelKey::Other { source: "reserved".into(), key: "host".into() });
        assert_eq!(LabelKey::parse("example.com:x"), LabelKey::K8s("example.com:x".into()));
    }
}
