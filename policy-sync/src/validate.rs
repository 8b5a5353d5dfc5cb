//! Validation with Cilium's semantics: turns one parsed document into a [`Policy`], or into the
//! list of everything wrong with it. Every check runs, so a user fixes a document in one pass.

use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use fqdn_cache::pattern::NamePattern;
use ipnet::IpNet;

use crate::model::{self, Document, FqdnSelector, LabelSelector, Operator};
use crate::policy::{PeerRule, PeerSpec, Policy, PolicyKind, Rule, Subject};

mod ports;

use crate::resolved::{Entity, PolicyRef};
use crate::selector::{Scope, Selector};
use ports::{Direction, ports};

/// Namespace of a CiliumNetworkPolicy that names none, as `kubectl apply` would place it.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Widest `port`..`endPort` range fqdnd expands into single ports. The shared port type has no
/// range, and a range wider than this would flood the datapath's allow maps.
pub const MAX_PORT_RANGE: u32 = 1024;

/// One problem in a document: a field path (`spec.egress[1].toFQDNs[0].matchPattern`, or empty
/// for the document as a whole) and what is wrong there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldProblem {
    pub field: String,
    pub message: String,
}

#[derive(Default)]
struct Problems(Vec<FieldProblem>);

impl Problems {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldProblem { field: field.into(), message: message.into() });
    }
}

fn unsupported(p: &mut Problems, present: bool, field: String, what: &str) {
    if present {
        p.push(field, format!("{what} is not supported by fqdnd; remove it or enforce this policy with Cilium"));
    }
}

/// Check apiVersion and kind before anything else: a document of another kind is reported once,
/// not with a cascade of field errors.
pub fn check_header(header: &model::Header) -> Result<PolicyKind, Vec<FieldProblem>> {
    let mut p = Problems::default();
    match header.api_version.as_deref() {
        Some(model::API_VERSION) => {}
        Some(other) => p.push("apiVersion", format!("{other:?} is not supported; expected {:?}", model::API_VERSION)),
        None => p.push("apiVersion", format!("missing; expected {:?}", model::API_VERSION)),
    }
    let kind = match header.kind.as_deref() {
        Some(model::KIND_CNP) => Some(PolicyKind::Namespaced),
        Some(model::KIND_CCNP) => Some(PolicyKind::Clusterwide),
        Some(other) => {
            p.push("kind", format!("{other:?} is not {} or {}", model::KIND_CNP, model::KIND_CCNP));
            None
        }
        None => {
            p.push("kind", format!("missing; expected {} or {}", model::KIND_CNP, model::KIND_CCNP));
            None
        }
    };
    match kind {
        Some(k) if p.0.is_empty() => Ok(k),
        _ => Err(p.0),
    }
}

/// Validate a deserialized document of a known kind. `source`/`doc` are recorded in the policy.
pub fn validate_document(
    doc: &Document,
    kind: PolicyKind,
    source: &Path,
    doc_no: usize,
) -> Result<Policy, Vec<FieldProblem>> {
    let mut p = Problems::default();
    let name = match doc.metadata.name.as_deref().map(str::trim) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => {
            p.push("metadata.name", "missing: every policy needs a name");
            String::new()
        }
    };
    let namespace = match kind {
        PolicyKind::Namespaced => Some(
            doc.metadata.namespace.clone().filter(|n| !n.trim().is_empty()).unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
        ),
        // Cluster-scoped: Kubernetes drops a namespace given here, so does fqdnd.
        PolicyKind::Clusterwide => None,
    };
    let mut rules = Vec::new();
    match (&doc.spec, &doc.specs) {
        (None, None) => p.push("spec", "missing: a policy needs spec or specs"),
        (None, Some(specs)) if specs.is_empty() => p.push("specs", "empty: a policy needs at least one rule"),
        _ => {}
    }
    let all = doc.spec.iter().map(|r| ("spec".to_string(), r));
    let all = all.chain(doc.specs.iter().flatten().enumerate().map(|(i, r)| (format!("specs[{i}]"), r)));
    let mut warnings = Problems::default();
    for (path, raw) in all {
        if let Some(rule) = validate_rule(raw, &path, kind, namespace.as_deref(), &mut p) {
            rules.push(rule);
        }
        if len(&raw.ingress) + len(&raw.ingress_deny) + len(&raw.egress) + len(&raw.egress_deny) == 0 {
            warnings.push(&path, NO_DIRECTION_WARNING);
        }
    }
    if !p.0.is_empty() {
        return Err(p.0);
    }
    Ok(Policy {
        reference: PolicyRef { namespace, name },
        kind,
        source: source.to_path_buf(),
        doc: doc_no,
        rules: rules.into(),
        warnings: warnings.0,
    })
}

/// A rule with a selector and no direction (the seed tutorial's stage 1): the Cilium of the
/// tutorial accepted it, newer Cilium refuses it.
pub const NO_DIRECTION_WARNING: &str = "no ingress, ingressDeny, egress or egressDeny: fqdnd accepts this rule as \
     the Cilium of the seed tutorial did (it selects endpoints and restricts nothing), but Cilium 1.17 and later \
     reject it (\"rule must have at least one of Ingress, IngressDeny, Egress, EgressDeny\")";

fn validate_rule(
    raw: &model::Rule,
    path: &str,
    kind: PolicyKind,
    namespace: Option<&str>,
    p: &mut Problems,
) -> Option<Rule> {
    let before = p.0.len();
    let subject = match (&raw.endpoint_selector, &raw.node_selector) {
        (Some(_), Some(_)) => {
            p.push(path, "a rule cannot have both endpointSelector and nodeSelector");
            None
        }
        (None, None) => {
            p.push(path, "a rule needs endpointSelector or nodeSelector");
            None
        }
        (Some(es), None) => {
            check_selector(es, &format!("{path}.endpointSelector"), p);
            let scope = match namespace {
                Some(ns) => Scope::Subject(ns),
                None => Scope::AsWritten,
            };
            Some(Subject::Endpoints(Selector::compile(es, scope)))
        }
        (None, Some(ns_sel)) => {
            if kind == PolicyKind::Namespaced {
                p.push(
                    format!("{path}.nodeSelector"),
                    "nodeSelector is only allowed in a CiliumClusterwideNetworkPolicy",
                );
            }
            check_selector(ns_sel, &format!("{path}.nodeSelector"), p);
            Some(Subject::Nodes(Selector::compile(ns_sel, Scope::AsWritten)))
        }
    };
    let host_policy = matches!(subject, Some(Subject::Nodes(_)));
    let peer_scope = match namespace {
        Some(ns) => Scope::Peer(ns),
        None => Scope::ClusterPeer,
    };
    let ctx = DirCtx { scope: peer_scope, host_policy };

    let egress = list(&raw.egress, |i, r| egress_rule(r, &format!("{path}.egress[{i}]"), false, &ctx, p));
    let egress_deny = list(&raw.egress_deny, |i, r| egress_rule(r, &format!("{path}.egressDeny[{i}]"), true, &ctx, p));
    let ingress = list(&raw.ingress, |i, r| ingress_rule(r, &format!("{path}.ingress[{i}]"), false, &ctx, p));
    let ingress_deny =
        list(&raw.ingress_deny, |i, r| ingress_rule(r, &format!("{path}.ingressDeny[{i}]"), true, &ctx, p));

    // Cilium's default posture: a direction with any rule (allow or deny) is default deny, unless
    // enableDefaultDeny says otherwise for that direction.
    let dd = raw.enable_default_deny.as_ref();
    let egress_default_deny = dd.and_then(|d| d.egress).unwrap_or(!egress.is_empty() || !egress_deny.is_empty());
    let ingress_default_deny = dd.and_then(|d| d.ingress).unwrap_or(!ingress.is_empty() || !ingress_deny.is_empty());

    if p.0.len() > before {
        return None;
    }
    Some(Rule {
        path: path.to_string(),
        subject: subject?,
        egress_default_deny,
        ingress_default_deny,
        egress,
        egress_deny,
        ingress,
        ingress_deny,
    })
}

fn list<T>(raw: &Option<Vec<T>>, mut f: impl FnMut(usize, &T) -> PeerRule) -> Vec<PeerRule> {
    raw.iter().flatten().enumerate().map(|(i, r)| f(i, r)).collect()
}

struct DirCtx<'a> {
    scope: Scope<'a>,
    host_policy: bool,
}

fn len<T>(v: &Option<Vec<T>>) -> usize {
    v.as_ref().map_or(0, Vec::len)
}

/// Cilium allows one kind of L3 peer per rule.
fn check_l3_combination(members: &[(&str, usize)], path: &str, p: &mut Problems) {
    let present: Vec<&str> = members.iter().filter(|(_, n)| *n > 0).map(|(name, _)| *name).collect();
    if present.len() < 2 {
        return;
    }
    // Name toFQDNs first when it is involved: it is the combination users hit most.
    let first = if present.contains(&"toFQDNs") { "toFQDNs" } else { present[0] };
    let others: Vec<&str> = present.iter().copied().filter(|m| *m != first).collect();
    p.push(
        format!("{path}.{first}"),
        format!(
            "combining {first} and {} in one rule is not supported; write a separate rule for each",
            others.join(" and ")
        ),
    );
}

fn egress_rule(r: &model::EgressRule, path: &str, deny: bool, ctx: &DirCtx<'_>, p: &mut Problems) -> PeerRule {
    check_l3_combination(
        &[
            ("toFQDNs", len(&r.to_fqdns)),
            ("toEndpoints", len(&r.to_endpoints)),
            ("toCIDR", len(&r.to_cidr)),
            ("toCIDRSet", len(&r.to_cidr_set)),
            ("toEntities", len(&r.to_entities)),
        ],
        path,
        p,
    );
    unsupported(p, r.to_services.is_some(), format!("{path}.toServices"), "toServices");
    unsupported(p, r.to_groups.is_some(), format!("{path}.toGroups"), "toGroups");
    unsupported(p, r.to_nodes.is_some(), format!("{path}.toNodes"), "toNodes");
    unsupported(p, r.to_requires.is_some(), format!("{path}.toRequires"), "toRequires");
    unsupported(p, r.icmps.is_some(), format!("{path}.icmps"), "icmps");
    unsupported(p, r.authentication.is_some(), format!("{path}.authentication"), "authentication");
    if deny && r.to_fqdns.is_some() {
        p.push(format!("{path}.toFQDNs"), "toFQDNs is not allowed in egressDeny (Cilium has no FQDN deny)");
    }
    let mut rule = common(
        path,
        ("toEndpoints", &r.to_endpoints),
        ("toCIDR", &r.to_cidr),
        ("toCIDRSet", &r.to_cidr_set),
        ("toEntities", &r.to_entities),
        ctx,
        p,
    );
    // toFQDNs is an L3 peer: with toPorts it must not turn into "these ports to anyone".
    if len(&r.to_fqdns) > 0 {
        rule.has_l3 = true;
    }
    for (i, sel) in r.to_fqdns.iter().flatten().enumerate() {
        if let Some(pat) = fqdn_selector(sel, &format!("{path}.toFQDNs[{i}]"), p)
            && !rule.no_peer
        {
            rule.fqdns.push(pat);
        }
    }
    ports(&mut rule, &r.to_ports, path, Direction { ingress: false, deny }, ctx, p);
    if !rule.fqdns.is_empty() && !rule.dns.is_empty() {
        p.push(format!("{path}.toPorts"), "rules.dns together with toFQDNs in one rule is not supported by fqdnd");
    }
    rule
}

fn ingress_rule(r: &model::IngressRule, path: &str, deny: bool, ctx: &DirCtx<'_>, p: &mut Problems) -> PeerRule {
    check_l3_combination(
        &[
            ("fromEndpoints", len(&r.from_endpoints)),
            ("fromCIDR", len(&r.from_cidr)),
            ("fromCIDRSet", len(&r.from_cidr_set)),
            ("fromEntities", len(&r.from_entities)),
        ],
        path,
        p,
    );
    unsupported(p, r.from_nodes.is_some(), format!("{path}.fromNodes"), "fromNodes");
    unsupported(p, r.from_groups.is_some(), format!("{path}.fromGroups"), "fromGroups");
    unsupported(p, r.from_requires.is_some(), format!("{path}.fromRequires"), "fromRequires");
    unsupported(p, r.icmps.is_some(), format!("{path}.icmps"), "icmps");
    unsupported(p, r.authentication.is_some(), format!("{path}.authentication"), "authentication");
    let mut rule = common(
        path,
        ("fromEndpoints", &r.from_endpoints),
        ("fromCIDR", &r.from_cidr),
        ("fromCIDRSet", &r.from_cidr_set),
        ("fromEntities", &r.from_entities),
        ctx,
        p,
    );
    ports(&mut rule, &r.to_ports, path, Direction { ingress: true, deny }, ctx, p);
    rule
}

/// The L3 fields egress and ingress share (under their own names).
fn common(
    path: &str,
    endpoints: (&str, &Option<Vec<LabelSelector>>),
    cidr: (&str, &Option<Vec<String>>),
    cidr_set: (&str, &Option<Vec<model::CidrRule>>),
    entities: (&str, &Option<Vec<String>>),
    ctx: &DirCtx<'_>,
    p: &mut Problems,
) -> PeerRule {
    let mut peers = Vec::new();
    // A field given at all is an L3 restriction, even as an empty list: Cilium reads `[]` as
    // "no peer", never as "no L3 field" (which would open the rule's ports to every peer).
    let has_l3 = endpoints.1.is_some() || cidr.1.is_some() || cidr_set.1.is_some() || entities.1.is_some();
    let no_peer = endpoints.1.as_ref().is_some_and(Vec::is_empty)
        || cidr.1.as_ref().is_some_and(Vec::is_empty)
        || cidr_set.1.as_ref().is_some_and(Vec::is_empty)
        || entities.1.as_ref().is_some_and(Vec::is_empty);
    if let Some(sels) = endpoints.1.as_ref().filter(|v| !v.is_empty()) {
        let mut compiled = Vec::with_capacity(sels.len());
        for (i, s) in sels.iter().enumerate() {
            check_selector(s, &format!("{path}.{}[{i}]", endpoints.0), p);
            compiled.push(Selector::compile(s, ctx.scope));
        }
        peers.push(PeerSpec::Endpoints(compiled));
    }
    for (i, text) in cidr.1.iter().flatten().enumerate() {
        match parse_cidr(text) {
            Ok(net) => peers.push(PeerSpec::Cidr { net, except: Vec::new() }),
            Err(e) => p.push(format!("{path}.{}[{i}]", cidr.0), e),
        }
    }
    for (i, rule) in cidr_set.1.iter().flatten().enumerate() {
        let field = format!("{path}.{}[{i}]", cidr_set.0);
        if rule.cidr_group_ref.is_some() || rule.cidr_group_selector.is_some() {
            p.push(&field, "CiliumCIDRGroup references are not supported by fqdnd; write the cidr here");
            continue;
        }
        let Some(text) = rule.cidr.as_deref() else {
            p.push(format!("{field}.cidr"), "missing");
            continue;
        };
        // Unlike toCIDR, Cilium requires prefix notation here.
        let net = match IpNet::from_str(text) {
            Ok(n) => n.trunc(),
            Err(e) => {
                p.push(format!("{field}.cidr"), format!("unable to parse CIDR {text:?}: {e}"));
                continue;
            }
        };
        let mut except = Vec::new();
        for (j, ex) in rule.except.iter().enumerate() {
            match IpNet::from_str(ex) {
                Ok(e) if net.contains(&e) => except.push(e.trunc()),
                Ok(_) => p.push(
                    format!("{field}.except[{j}]"),
                    format!("allow CIDR prefix {net} does not contain exclude CIDR prefix {ex}"),
                ),
                Err(e) => p.push(format!("{field}.except[{j}]"), format!("unable to parse CIDR {ex:?}: {e}")),
            }
        }
        peers.push(PeerSpec::Cidr { net, except });
    }
    for (i, text) in entities.1.iter().flatten().enumerate() {
        match Entity::from_str(text) {
            Ok(e) => peers.push(PeerSpec::Entity(e)),
            Err(msg) => p.push(format!("{path}.{}[{i}]", entities.0), msg),
        }
    }
    if no_peer {
        // Cilium's rule: one empty list and the rule selects no peer, whatever else it names.
        peers.clear();
    }
    PeerRule {
        path: path.to_string(),
        has_l3,
        no_peer,
        peers,
        has_ports: false,
        ports: Vec::new(),
        plain_ports: None,
        dns: Vec::new(),
        fqdns: Vec::new(),
    }
}

/// `toCIDR` takes a prefix or a bare address (a host route).
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = IpNet::from_str(text) {
        return Ok(net.trunc());
    }
    match IpAddr::from_str(text) {
        Ok(ip) => Ok(IpNet::from(ip)),
        Err(_) => Err(format!("unable to parse CIDR {text:?}: expected an address or address/prefix")),
    }
}

fn check_selector(s: &LabelSelector, path: &str, p: &mut Problems) {
    for (i, e) in s.match_expressions.iter().enumerate() {
        let field = format!("{path}.matchExpressions[{i}].values");
        match e.operator {
            Operator::In | Operator::NotIn if e.values.is_empty() => {
                p.push(field, format!("values must be non-empty for operator {:?}", e.operator))
            }
            Operator::Exists | Operator::DoesNotExist if !e.values.is_empty() => {
                p.push(field, format!("values must be empty for operator {:?}", e.operator))
            }
            _ => {}
        }
    }
}

/// One `rules.dns` entry: matchName, matchPattern or both (it then matches either, as Cilium's
/// proxy compiles each into its own alternative), each in the allowed alphabet and length.
fn dns_selector(s: &FqdnSelector, path: &str, p: &mut Problems) -> Vec<NamePattern> {
    if s.match_name.is_none() && s.match_pattern.is_none() {
        p.push(path, "one of matchName or matchPattern is required");
    }
    let name = s.match_name.as_deref().and_then(|name| {
        NamePattern::match_name(name).map_err(|e| p.push(format!("{path}.matchName"), e.to_string())).ok()
    });
    let pattern = s.match_pattern.as_deref().and_then(|pattern| {
        NamePattern::match_pattern(pattern).map_err(|e| p.push(format!("{path}.matchPattern"), e.to_string())).ok()
    });
    name.into_iter().chain(pattern).collect()
}

/// One `toFQDNs` entry: exactly one of matchName / matchPattern, in the allowed alphabet and
/// length.
fn fqdn_selector(s: &FqdnSelector, path: &str, p: &mut Problems) -> Option<NamePattern> {
    match (&s.match_name, &s.match_pattern) {
        (Some(_), Some(_)) => {
            p.push(path, "only one of matchName or matchPattern is allowed");
            None
        }
        (None, None) => {
            p.push(path, "one of matchName or matchPattern is required");
            None
        }
        (Some(name), None) => {
            NamePattern::match_name(name).map_err(|e| p.push(format!("{path}.matchName"), e.to_string())).ok()
        }
        (None, Some(pattern)) => {
            NamePattern::match_pattern(pattern).map_err(|e| p.push(format!("{path}.matchPattern"), e.to_string())).ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::load::parse_file;

    /// Problems of one document whose `spec` is `spec`, as `field: message`.
    fn problems(kind: &str, spec: &str) -> Vec<String> {
        let text = format!("apiVersion: cilium.io/v2\nkind: {kind}\nmetadata: {{name: t}}\nspec:\n{spec}");
        let (_, probs) = parse_file(Path::new("t.yaml"), &text);
        probs.iter().map(|p| format!("{}: {}", p.field, p.message)).collect()
    }

    const SEL: &str = "  endpointSelector: {matchLabels: {app: alpine}}\n";

    #[test]
    fn validation_messages() {
        let long = format!("{}.com", "a".repeat(252));
        let cases: Vec<(&str, String, Vec<String>)> = vec![
            ("valid seed stage 4 shape", format!("{SEL}  egress:\n  - toEndpoints: [{{matchLabels: {{k8s-app: kube-dns}}}}]\n    toPorts: [{{ports: [{{port: '53', protocol: UDP}}], rules: {{dns: [{{matchPattern: '*'}}]}}}}]\n  - toFQDNs: [{{matchPattern: '*.microsoft.com'}}]\n"), vec![]),
            (
                "toFQDNs with toEndpoints",
                format!("{SEL}  egress:\n  - {{}}\n  - toFQDNs: [{{matchName: a.com}}]\n    toEndpoints: [{{}}]\n"),
                vec!["spec.egress[1].toFQDNs: combining toFQDNs and toEndpoints in one rule is not supported; write a separate rule for each".into()],
            ),
            (
                "toFQDNs with toCIDR and toEntities",
                format!("{SEL}  egress:\n  - toFQDNs: [{{matchName: a.com}}]\n    toCIDR: [10.0.0.0/8]\n    toEntities: [world]\n"),
                vec!["spec.egress[0].toFQDNs: combining toFQDNs and toCIDR and toEntities in one rule is not supported; write a separate rule for each".into()],
            ),
            (
                "both matchName and matchPattern",
                format!("{SEL}  egress:\n  - toFQDNs: [{{matchName: a.com, matchPattern: '*.a.com'}}]\n"),
                vec!["spec.egress[0].toFQDNs[0]: only one of matchName or matchPattern is allowed".into()],
            ),
            (
                "neither",
                format!("{SEL}  egress:\n  - toFQDNs: [{{}}]\n"),
                vec!["spec.egress[0].toFQDNs[0]: one of matchName or matchPattern is required".into()],
            ),
            (
                "both in rules.dns is valid (it matches either)",
                format!("{SEL}  egress:\n  - toPorts: [{{ports: [{{port: '53'}}], rules: {{dns: [{{matchName: a.com, matchPattern: '*.b.com'}}]}}}}]\n"),
                vec![],
            ),
            (
                "neither in rules.dns, and each field of a pair checked",
                format!("{SEL}  egress:\n  - toPorts: [{{ports: [{{port: '53'}}], rules: {{dns: [{{}}, {{matchName: 'a*.com', matchPattern: 'a b'}}]}}}}]\n"),
                vec![
                    "spec.egress[0].toPorts[0].rules.dns[0]: one of matchName or matchPattern is required".into(),
                    "spec.egress[0].toPorts[0].rules.dns[1].matchName: matchName \"a*.com\" has character '*' outside [-a-zA-Z0-9_.]".into(),
                    "spec.egress[0].toPorts[0].rules.dns[1].matchPattern: matchPattern \"a b\" has character ' ' outside [-a-zA-Z0-9_.*]".into(),
                ],
            ),
            (
                "bad character in a pattern, second rule",
                format!("{SEL}  egress:\n  - toFQDNs: [{{matchName: a.com}}]\n  - toFQDNs: [{{matchName: b.com}}, {{matchPattern: 'a/b.com'}}]\n"),
                vec!["spec.egress[1].toFQDNs[1].matchPattern: matchPattern \"a/b.com\" has character '/' outside [-a-zA-Z0-9_.*]".into()],
            ),
            (
                "star in matchName",
                format!("{SEL}  egress:\n  - toFQDNs: [{{matchName: '*.a.com'}}]\n"),
                vec!["spec.egress[0].toFQDNs[0].matchName: matchName \"*.a.com\" has character '*' outside [-a-zA-Z0-9_.]".into()],
            ),
            (
                "name over 255",
                format!("{SEL}  egress:\n  - toFQDNs: [{{matchName: {long}}}]\n"),
                vec![format!("spec.egress[0].toFQDNs[0].matchName: matchName {long:?} is 256 characters long; the limit is 255")],
            ),
            (
                "empty labels, as Cilium's schema refuses them",
                format!("{SEL}  egress:\n  - toFQDNs: [{{matchName: 'a..b.com'}}, {{matchPattern: '.*.b.com'}}, {{matchName: 'b.com..'}}, {{matchPattern: '.'}}]\n  - toEndpoints: [{{}}]\n    toPorts: [{{ports: [{{port: '53'}}], rules: {{dns: [{{matchPattern: '*..com'}}]}}}}]\n"),
                vec![
                    "spec.egress[0].toFQDNs[0].matchName: matchName \"a..b.com\" has an empty label (labels are separated by exactly one dot)".into(),
                    "spec.egress[0].toFQDNs[1].matchPattern: matchPattern \".*.b.com\" has an empty label (labels are separated by exactly one dot)".into(),
                    "spec.egress[0].toFQDNs[2].matchName: matchName \"b.com..\" has an empty label (labels are separated by exactly one dot)".into(),
                    "spec.egress[0].toFQDNs[3].matchPattern: matchPattern \".\" has an empty label (labels are separated by exactly one dot)".into(),
                    "spec.egress[1].toPorts[0].rules.dns[0].matchPattern: matchPattern \"*..com\" has an empty label (labels are separated by exactly one dot)".into(),
                ],
            ),
            (
                "DNS rules on ingress",
                format!("{SEL}  ingress:\n  - toPorts: [{{ports: [{{port: '53'}}], rules: {{dns: [{{matchPattern: '*'}}]}}}}]\n"),
                vec!["spec.ingress[0].toPorts[0].rules.dns: DNS rules are not allowed on ingress".into()],
            ),
            (
                "DNS rules without a port",
                format!("{SEL}  egress:\n  - toPorts: [{{rules: {{dns: [{{matchPattern: '*'}}]}}}}]\n"),
                vec!["spec.egress[0].toPorts[0].ports: a port (53) must be specified for DNS rules".into()],
            ),
            (
                "DNS rules on port 0 and a range",
                format!("{SEL}  egress:\n  - toPorts: [{{ports: [{{port: '0'}}, {{port: '53', endPort: 54}}], rules: {{dns: [{{matchPattern: '*'}}]}}}}]\n"),
                vec![
                    "spec.egress[0].toPorts[0].ports[0].port: L7 rules can not be used when a port is 0".into(),
                    "spec.egress[0].toPorts[0].ports[1].endPort: DNS rules do not support port ranges".into(),
                ],
            ),
            (
                "unknown entity",
                format!("{SEL}  egress:\n  - toEntities: [world, galaxy]\n"),
                vec!["spec.egress[0].toEntities[1]: unsupported entity: galaxy (known: all, world, world-ipv4, world-ipv6, cluster, host, remote-node, kube-apiserver, health, init, ingress, unmanaged, none)".into()],
            ),
            (
                "except outside cidr",
                format!("{SEL}  egress:\n  - toCIDRSet: [{{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]\n"),
                vec!["spec.egress[0].toCIDRSet[0].except[0]: allow CIDR prefix 10.0.0.0/8 does not contain exclude CIDR prefix 192.168.0.0/16".into()],
            ),
            (
                "bad cidr, protocol, port, named port",
                format!("{SEL}  egress:\n  - toCIDR: [10.0.0.0/33]\n    toPorts: [{{ports: [{{port: '70000'}}, {{port: '80', protocol: SCTP}}, {{port: dns}}, {{port: '1', protocol: IP}}]}}]\n"),
                vec![
                    "spec.egress[0].toCIDR[0]: unable to parse CIDR \"10.0.0.0/33\": expected an address or address/prefix".into(),
                    "spec.egress[0].toPorts[0].ports[0].port: 70000 is not a port number (0-65535)".into(),
                    "spec.egress[0].toPorts[0].ports[1].protocol: protocol SCTP is not supported by fqdnd (TCP, UDP or ANY)".into(),
                    "spec.egress[0].toPorts[0].ports[2].port: named port \"dns\" is not supported by fqdnd: endpoints carry no container port names".into(),
                    "spec.egress[0].toPorts[0].ports[3].protocol: invalid protocol \"IP\", must be one of TCP, UDP, ANY".into(),
                ],
            ),
            (
                "L7 http rules are refused, not ignored",
                format!("{SEL}  egress:\n  - toPorts: [{{ports: [{{port: '80', protocol: TCP}}], rules: {{http: [{{method: GET}}]}}}}]\n"),
                vec!["spec.egress[0].toPorts[0].rules.http: rules.http is not supported by fqdnd; remove it or enforce this policy with Cilium".into()],
            ),
            (
                "toFQDNs in egressDeny",
                format!("{SEL}  egressDeny:\n  - toFQDNs: [{{matchName: a.com}}]\n"),
                vec!["spec.egressDeny[0].toFQDNs: toFQDNs is not allowed in egressDeny (Cilium has no FQDN deny)".into()],
            ),
            ("no selector", "  egress: [{}]\n".into(), vec!["spec: a rule needs endpointSelector or nodeSelector".into()]),
            (
                "nodeSelector in a namespaced policy",
                "  nodeSelector: {}\n".into(),
                vec!["spec.nodeSelector: nodeSelector is only allowed in a CiliumClusterwideNetworkPolicy".into()],
            ),
            (
                "matchExpressions values",
                "  endpointSelector: {matchExpressions: [{key: a, operator: In}, {key: b, operator: Exists, values: [x]}]}\n".into(),
                vec![
                    "spec.endpointSelector.matchExpressions[0].values: values must be non-empty for operator In".into(),
                    "spec.endpointSelector.matchExpressions[1].values: values must be empty for operator Exists".into(),
                ],
            ),
        ];
        for (name, spec, want) in cases {
            assert_eq!(problems("CiliumNetworkPolicy", &spec), want, "case {name}");
        }
    }

    #[test]
    fn clusterwide_host_policy_without_l7_is_valid() {
        assert_eq!(
            problems("CiliumClusterwideNetworkPolicy", "  nodeSelector: {}\n  egress: [{toEntities: [world]}]\n"),
            Vec::<String>::new()
        );
        assert_eq!(
            problems(
                "CiliumClusterwideNetworkPolicy",
                "  nodeSelector: {}\n  egress: [{toPorts: [{ports: [{port: '53'}], rules: {dns: [{matchPattern: '*'}]}}]}]\n"
            ),
            vec!["spec.egress[0].toPorts[0].rules: host policies do not support L7 rules".to_string()]
        );
    }

    /// Cilium 1.17+ refuses a rule without any direction; fqdnd accepts it (the seed's stage 1)
    /// and warns. Empty lists count as none, as in Cilium's check (`len(...) == 0`).
    #[test]
    fn a_rule_without_direction_is_valid_with_a_warning() {
        let warnings = |spec: &str| {
            let text =
                format!("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: t}}\nspec:\n{spec}");
            let (policies, probs) = parse_file(Path::new("t.yaml"), &text);
            assert!(probs.is_empty(), "{probs:?}");
            policies[0].warnings.iter().map(|w| format!("{}: {}", w.field, w.message)).collect::<Vec<_>>()
        };
        let warned = format!("spec: {}", super::NO_DIRECTION_WARNING);
        // (case, spec, warned)
        let cases = [
            ("selector only", SEL.to_string(), true),
            ("empty lists", format!("{SEL}  egress: []\n  ingressDeny: []\n"), true),
            ("enableDefaultDeny alone", format!("{SEL}  enableDefaultDeny: {{egress: true}}\n"), true),
            ("egress [{}]", format!("{SEL}  egress: [{{}}]\n"), false),
            ("ingressDeny", format!("{SEL}  ingressDeny: [{{fromEntities: [world]}}]\n"), false),
        ];
        for (name, spec, want) in cases {
            let got = warnings(&spec);
            assert_eq!(got, if want { vec![warned.clone()] } else { vec![] }, "case {name}");
        }
        assert!(
            super::NO_DIRECTION_WARNING
                .contains("rule must have at least one of Ingress, IngressDeny, Egress, EgressDeny")
        );
    }

    /// Cilium: "too many ports, the max is 40", for allow and deny rules.
    #[test]
    fn at_most_forty_ports_in_one_to_ports_entry() {
        let ports = |n: u16| (1..=n).map(|p| format!("{{port: '{p}'}}")).collect::<Vec<_>>().join(", ");
        for (dir, peer) in [
            ("egress", "toCIDR: [10.0.0.0/8]"),
            ("egressDeny", "toCIDR: [10.0.0.0/8]"),
            ("ingress", "fromCIDR: [10.0.0.0/8]"),
        ] {
            let spec = |n| format!("{SEL}  {dir}:\n  - {peer}\n    toPorts: [{{ports: [{}]}}]\n", ports(n));
            assert_eq!(problems("CiliumNetworkPolicy", &spec(40)), Vec::<String>::new(), "{dir}: 40 ports");
            assert_eq!(
                problems("CiliumNetworkPolicy", &spec(41)),
                [format!("spec.{dir}[0].toPorts[0].ports: too many ports, the max is 40")],
                "{dir}: 41 ports"
            );
        }
        // The limit is per toPorts entry, not per rule.
        let two = format!("{SEL}  egress:\n  - toPorts: [{{ports: [{}]}}, {{ports: [{}]}}]\n", ports(40), ports(40));
        assert_eq!(problems("CiliumNetworkPolicy", &two), Vec::<String>::new());
    }

    #[test]
    fn port_ranges_expand() {
        let text = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: t}\nspec:\n  endpointSelector: {}\n  egress: [{toPorts: [{ports: [{port: '8000', endPort: 8002, protocol: TCP}, {port: 9000, endPort: 1}]}]}]\n";
        let (policies, probs) = parse_file(Path::new("t.yaml"), text);
        assert!(probs.is_empty(), "{probs:?}");
        let ports: Vec<u16> = policies[0].rules[0].egress[0].ports.iter().map(|p| p.port).collect();
        assert_eq!(ports, [8000, 8001, 8002, 9000]);
    }
}
