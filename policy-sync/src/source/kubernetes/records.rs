//! What the Kubernetes source keeps of each watched object: the few fields that decide policy,
//! as plain serde types. They are what the reflectors' objects are reduced to, what the state
//! directory holds between runs, and what the inventory is built from (pure functions, tested
//! here without a cluster).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::core::DynamicObject;
use serde::{Deserialize, Serialize};

use crate::endpoint::Endpoint;
use crate::model;
use crate::policy::PolicyKind;

/// The prefix Cilium gives a namespace's labels on each of its pods
/// (`io.cilium.k8s.namespace.labels.team: a`), so selectors can match on them.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// Cilium's label for a pod's ServiceAccount.
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";
/// The pod annotation that puts one endpoint in audit mode (`"true"`): what policy would drop or
/// refuse is let through and reported with verdict AUDIT, as `--policy-audit-mode` does for all.
pub const AUDIT_MODE_ANNOTATION: &str = "fqdnd.io/policy-audit-mode";

/// A pod, as far as policy is concerned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub host_network: bool,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub service_account: Option<String>,
    /// [`AUDIT_MODE_ANNOTATION`] is `"true"`.
    #[serde(default)]
    pub policy_audit_mode: bool,
}

impl PodRecord {
    pub fn from_pod(pod: &Pod) -> Self {
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut ips: Vec<IpAddr> =
            status.and_then(|s| s.pod_ips.as_ref()).into_iter().flatten().filter_map(|p| p.ip.parse().ok()).collect();
        // Servers before dual-stack (and some CNIs) fill podIP only.
        if ips.is_empty()
            && let Some(ip) = status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok())
        {
            ips.push(ip);
        }
        PodRecord {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            node: spec.and_then(|s| s.node_name.clone()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            ips,
            phase: status.and_then(|s| s.phase.clone()),
            service_account: spec.and_then(|s| s.service_account_name.clone()),
            policy_audit_mode: audit_annotation(pod),
        }
    }

    /// A pod that takes part in policy: in the pod network, with IPs, not finished (a finished
    /// pod's IPs are released and may already belong to another pod).
    pub fn is_endpoint(&self) -> bool {
        !self.host_network
            && !self.ips.is_empty()
            && !matches!(self.phase.as_deref(), Some("Succeeded") | Some("Failed"))
    }

    /// The endpoint this pod is, with its namespace's labels as Cilium adds them; `None` for a
    /// pod that is not one ([`PodRecord::is_endpoint`]).
    pub fn endpoint(&self, namespace_labels: Option<&BTreeMap<String, String>>) -> Option<Endpoint> {
        if !self.is_endpoint() {
            return None;
        }
        let mut labels = self.labels.clone();
        for (k, v) in namespace_labels.into_iter().flatten() {
            labels.insert(format!("{NAMESPACE_LABELS_PREFIX}{k}"), v.clone());
        }
        if let Some(sa) = &self.service_account {
            labels.insert(SERVICE_ACCOUNT_LABEL.to_string(), sa.clone());
        }
        Some(Endpoint {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            labels,
            ips: self.ips.clone(),
            interface: None,
            policy_audit_mode: self.policy_audit_mode,
        })
    }
}

fn audit_annotation(pod: &Pod) -> bool {
    pod.metadata.annotations.as_ref().and_then(|a| a.get(AUDIT_MODE_ANNOTATION)).is_some_and(|v| v.trim() == "true")
}

/// Reduce a pod to what [`PodRecord::from_pod`] reads, before the reflector stores it: 5,000
/// pods' container specs, managed fields and annotations would otherwise stay in memory.
pub fn slim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    // Of the annotations, only the one policy reads.
    let audit = audit_annotation(pod);
    pod.metadata.annotations = audit.then(|| BTreeMap::from([(AUDIT_MODE_ANNOTATION.to_string(), "true".to_string())]));
    pod.metadata.owner_references = None;
    if let Some(spec) = pod.spec.take() {
        pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: spec.node_name,
            host_network: spec.host_network,
            service_account_name: spec.service_account_name,
            ..Default::default()
        });
    }
    if let Some(status) = pod.status.take() {
        pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: status.phase,
            pod_ip: status.pod_ip,
            pod_ips: status.pod_ips,
            ..Default::default()
        });
    }
}

/// A namespace's labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl NamespaceRecord {
    pub fn from_namespace(ns: &Namespace) -> Self {
        NamespaceRecord {
            name: ns.metadata.name.clone().unwrap_or_default(),
            labels: ns.metadata.labels.clone().unwrap_or_default(),
        }
    }
}

/// This agent's node: its addresses are the `host` entity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
}

impl NodeRecord {
    pub fn from_node(node: &Node) -> Self {
        let mut addresses: Vec<IpAddr> = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        addresses.sort();
        addresses.dedup();
        NodeRecord { name: node.metadata.name.clone().unwrap_or_default(), addresses }
    }
}

/// `(kind, namespace, name)`: one policy object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyKey {
    pub clusterwide: bool,
    pub namespace: Option<String>,
    pub name: String,
}

impl PolicyKey {
    pub fn kind(&self) -> PolicyKind {
        if self.clusterwide { PolicyKind::Clusterwide } else { PolicyKind::Namespaced }
    }

    pub fn kind_name(&self) -> &'static str {
        if self.clusterwide { model::KIND_CCNP } else { model::KIND_CNP }
    }
}

impl std::fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind_name(), self.name),
            None => write!(f, "{} {}", self.kind_name(), self.name),
        }
    }
}

/// A policy object as received: the document (`apiVersion`, `kind`, `metadata` with name,
/// namespace, uid and resourceVersion, `spec`/`specs`), not yet validated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyObject {
    pub key: PolicyKey,
    pub uid: String,
    pub resource_version: String,
    pub raw: serde_json::Value,
}

impl PolicyObject {
    pub fn from_dynamic(obj: &DynamicObject, clusterwide: bool) -> Self {
        let meta = &obj.metadata;
        let key = PolicyKey {
            clusterwide,
            namespace: if clusterwide { None } else { meta.namespace.clone() },
            name: meta.name.clone().unwrap_or_default(),
        };
        let mut doc = serde_json::Map::new();
        doc.insert("apiVersion".into(), model::API_VERSION.into());
        doc.insert("kind".into(), key.kind_name().into());
        let mut m = serde_json::Map::new();
        m.insert("name".into(), key.name.clone().into());
        if let Some(ns) = &key.namespace {
            m.insert("namespace".into(), ns.clone().into());
        }
        if let Some(uid) = &meta.uid {
            m.insert("uid".into(), uid.clone().into());
        }
        if let Some(rv) = &meta.resource_version {
            m.insert("resourceVersion".into(), rv.clone().into());
        }
        doc.insert("metadata".into(), m.into());
        if let serde_json::Value::Object(data) = &obj.data {
            for (k, v) in data {
                doc.insert(k.clone(), v.clone());
            }
        }
        PolicyObject {
            key,
            uid: meta.uid.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
            raw: doc.into(),
        }
    }
}

/// Drop what fqdnd never reads from a policy object before the reflector stores it (the
/// `last-applied-configuration` annotation alone doubles an object's size).
pub fn slim_policy(obj: &mut DynamicObject) {
    obj.metadata.managed_fields = None;
    obj.metadata.annotations = None;
}

/// Everything the source knows at one moment, from the reflectors' stores or the state file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Records {
    #[serde(default)]
    pub node: Option<NodeRecord>,
    #[serde(default)]
    pub namespaces: Vec<NamespaceRecord>,
    #[serde(default)]
    pub pods: Vec<PodRecord>,
    #[serde(default)]
    pub policies: Vec<PolicyObject>,
}

/// Every pod endpoint cluster-wide (the peers `toEndpoints` selectors resolve to), in a stable
/// order, and which of them run on `node` (indexes into the first list).
pub fn inventory(records: &Records, node: &str) -> (Vec<Endpoint>, Vec<usize>) {
    let ns_labels: BTreeMap<&str, &BTreeMap<String, String>> =
        records.namespaces.iter().map(|n| (n.name.as_str(), &n.labels)).collect();
    let mut pods: Vec<&PodRecord> = records.pods.iter().filter(|p| p.is_endpoint()).collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut all = Vec::with_capacity(pods.len());
    let mut local = Vec::new();
    for pod in pods {
        let Some(ep) = pod.endpoint(ns_labels.get(pod.namespace.as_str()).copied()) else { continue };
        if pod.node.as_deref() == Some(node) {
            local.push(all.len());
        }
        all.push(ep);
    }
    (all, local)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, node: &str, ips: &[&str]) -> PodRecord {
        PodRecord {
            namespace: ns.into(),
            name: name.into(),
            labels: [("app".to_string(), name.to_string())].into(),
            node: Some(node.into()),
            host_network: false,
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            phase: Some("Running".into()),
            service_account: Some("default".into()),
            policy_audit_mode: false,
        }
    }

    #[test]
    fn pods_become_endpoints_with_namespace_labels() {
        let records = Records {
            node: None,
            namespaces: vec![NamespaceRecord { name: "prod".into(), labels: [("team".into(), "a".into())].into() }],
            pods: vec![
                pod("prod", "web", "node-a", &["10.0.1.7"]),
                pod("kube-system", "kube-dns", "node-b", &["10.96.0.10"]),
                PodRecord { host_network: true, ..pod("prod", "agent", "node-a", &["192.0.2.1"]) },
                pod("prod", "pending", "node-a", &[]),
                PodRecord { phase: Some("Succeeded".into()), ..pod("prod", "job", "node-a", &["10.0.1.8"]) },
            ],
            policies: vec![],
        };
        let (all, local) = inventory(&records, "node-a");
        let names: Vec<String> = all.iter().map(|e| e.key().to_string()).collect();
        assert_eq!(names, ["kube-system/kube-dns", "prod/web"], "only pod-network pods with IPs, sorted");
        assert_eq!(local, [1], "kube-dns runs on another node: a peer, not local");
        let web = &all[1];
        assert_eq!(web.labels.get("io.cilium.k8s.namespace.labels.team").map(String::as_str), Some("a"));
        assert_eq!(web.labels.get(SERVICE_ACCOUNT_LABEL).map(String::as_str), Some("default"));
        assert_eq!(web.labels.get("app").map(String::as_str), Some("web"));
        assert!(
            all[0].labels.keys().all(|k| !k.starts_with(NAMESPACE_LABELS_PREFIX)),
            "kube-system has no labels here"
        );
    }

    #[test]
    fn pod_record_reads_pod_ips_then_pod_ip() {
        let json = serde_json::json!({
            "metadata": {"name": "a", "namespace": "default", "labels": {"app": "a"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]},
        });
        let mut p: Pod = serde_json::from_value(json).unwrap();
        slim_pod(&mut p);
        let r = PodRecord::from_pod(&p);
        assert_eq!(r.ips, ["10.0.0.1".parse::<IpAddr>().unwrap(), "fd00::1".parse().unwrap()]);
        assert_eq!(r.node.as_deref(), Some("n1"));
        assert!(p.spec.as_ref().unwrap().containers.is_empty(), "slimmed");
        let old: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "b", "namespace": "default"},
            "status": {"podIP": "10.0.0.2"},
        }))
        .unwrap();
        assert_eq!(PodRecord::from_pod(&old).ips, ["10.0.0.2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn audit_annotation_survives_slimming_and_reaches_the_endpoint() {
        let pod = |annotations: serde_json::Value| -> Pod {
            let mut p: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "a", "namespace": "default", "annotations": annotations},
                "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
                "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}]},
            }))
            .unwrap();
            slim_pod(&mut p);
            p
        };
        let audited = pod(serde_json::json!({AUDIT_MODE_ANNOTATION: "true", "other": "x"}));
        assert_eq!(
            audited.metadata.annotations.as_ref().map(|a| a.keys().cloned().collect::<Vec<_>>()),
            Some(vec![AUDIT_MODE_ANNOTATION.to_string()]),
            "slimming keeps only the audit annotation"
        );
        let r = PodRecord::from_pod(&audited);
        assert!(r.policy_audit_mode);
        assert!(r.endpoint(None).unwrap().policy_audit_mode);
        for other in [serde_json::json!({AUDIT_MODE_ANNOTATION: "false"}), serde_json::json!({"other": "true"})] {
            let p = pod(other);
            assert_eq!(p.metadata.annotations, None);
            assert!(!PodRecord::from_pod(&p).endpoint(None).unwrap().policy_audit_mode);
        }
    }

    #[test]
    fn node_addresses_are_internal_and_external_ips() {
        let n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-a"},
            "status": {"addresses": [
                {"type": "Hostname", "address": "node-a"},
                {"type": "InternalIP", "address": "192.0.2.10"},
                {"type": "ExternalIP", "address": "2001:db8::10"},
            ]},
        }))
        .unwrap();
        let r = NodeRecord::from_node(&n);
        assert_eq!(r.addresses, ["192.0.2.10".parse::<IpAddr>().unwrap(), "2001:db8::10".parse().unwrap()]);
    }

    #[test]
    fn policy_object_keeps_the_document() {
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "p", "namespace": "prod", "uid": "u1", "resourceVersion": "7",
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"endpointSelector": {}},
        }))
        .unwrap();
        let p = PolicyObject::from_dynamic(&obj, false);
        assert_eq!(p.key.to_string(), "CiliumNetworkPolicy prod/p");
        assert_eq!(p.raw["spec"], serde_json::json!({"endpointSelector": {}}));
        assert_eq!(p.raw["metadata"]["resourceVersion"], "7");
        assert!(p.raw["metadata"].get("annotations").is_none());
    }
}
