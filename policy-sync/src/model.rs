//! The CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy documents as written by users
//! (`cilium.io/v2`), before validation. Field names follow the CRD (camelCase).
//!
//! Unknown keys are rejected so a misspelled key (`toFQDN`, `matchPatern`) is reported with its
//! path instead of silently widening or narrowing a policy. Fields Cilium knows but fqdnd does not
//! enforce (`toServices`, `rules.http`, ...) are accepted by the parser and rejected by validation
//! with a message saying so: ignoring them would enforce something other than what was written.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, IgnoredAny, Visitor};
use serde::{Deserialize, Deserializer};

pub const API_VERSION: &str = "cilium.io/v2";
pub const KIND_CNP: &str = "CiliumNetworkPolicy";
pub const KIND_CCNP: &str = "CiliumClusterwideNetworkPolicy";

/// One YAML document: the header is read first, so a wrong `kind` is reported without a cascade
/// of field errors for a document that is not a policy at all.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    pub api_version: Option<String>,
    pub kind: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Document {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: Option<Rule>,
    pub specs: Option<Vec<Rule>>,
    /// Written by the Cilium operator; meaningless here.
    pub status: Option<IgnoredAny>,
}

/// Kubernetes ObjectMeta: only `name` and `namespace` matter; the rest (labels, annotations,
/// uid, resourceVersion from `kubectl get -o yaml`) is accepted and ignored.
#[derive(Debug, Default, Deserialize)]
pub struct Metadata {
    pub name: Option<String>,
    pub namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub endpoint_selector: Option<LabelSelector>,
    pub node_selector: Option<LabelSelector>,
    pub ingress: Option<Vec<IngressRule>>,
    pub ingress_deny: Option<Vec<IngressRule>>,
    pub egress: Option<Vec<EgressRule>>,
    pub egress_deny: Option<Vec<EgressRule>>,
    pub enable_default_deny: Option<DefaultDeny>,
    pub labels: Option<IgnoredAny>,
    pub description: Option<String>,
    pub log: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultDeny {
    pub egress: Option<bool>,
    pub ingress: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    pub to_endpoints: Option<Vec<LabelSelector>>,
    #[serde(rename = "toCIDR")]
    pub to_cidr: Option<Vec<String>>,
    #[serde(rename = "toCIDRSet")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    pub to_entities: Option<Vec<String>>,
    #[serde(rename = "toFQDNs")]
    pub to_fqdns: Option<Vec<FqdnSelector>>,
    pub to_ports: Option<Vec<PortRule>>,
    // Known to Cilium, not enforced by fqdnd (validation names them).
    pub to_services: Option<IgnoredAny>,
    pub to_groups: Option<IgnoredAny>,
    pub to_nodes: Option<IgnoredAny>,
    pub to_requires: Option<IgnoredAny>,
    pub icmps: Option<IgnoredAny>,
    pub authentication: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    pub from_endpoints: Option<Vec<LabelSelector>>,
    #[serde(rename = "fromCIDR")]
    pub from_cidr: Option<Vec<String>>,
    #[serde(rename = "fromCIDRSet")]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    pub from_entities: Option<Vec<String>>,
    pub to_ports: Option<Vec<PortRule>>,
    pub from_nodes: Option<IgnoredAny>,
    pub from_groups: Option<IgnoredAny>,
    pub from_requires: Option<IgnoredAny>,
    pub icmps: Option<IgnoredAny>,
    pub authentication: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CidrRule {
    pub cidr: Option<String>,
    #[serde(default)]
    pub except: Vec<String>,
    pub cidr_group_ref: Option<IgnoredAny>,
    pub cidr_group_selector: Option<IgnoredAny>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FqdnSelector {
    pub match_name: Option<String>,
    pub match_pattern: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRule {
    pub ports: Option<Vec<PortProtocol>>,
    pub rules: Option<L7Rules>,
    pub server_names: Option<IgnoredAny>,
    pub listener: Option<IgnoredAny>,
    #[serde(rename = "terminatingTLS")]
    pub terminating_tls: Option<IgnoredAny>,
    #[serde(rename = "originatingTLS")]
    pub originating_tls: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortProtocol {
    pub port: Option<PortText>,
    pub end_port: Option<i64>,
    pub protocol: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L7Rules {
    pub dns: Option<Vec<FqdnSelector>>,
    pub http: Option<IgnoredAny>,
    pub kafka: Option<IgnoredAny>,
    pub l7proto: Option<IgnoredAny>,
    pub l7: Option<IgnoredAny>,
}

/// A port as written: the CRD types it as a string, but `port: 53` (a YAML number) is common and
/// Kubernetes' own tooling accepts it, so both are read; validation parses the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortText(pub String);

impl<'de> Deserialize<'de> for PortText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a string holding one")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortText, E> {
                Ok(PortText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortText, E> {
                Ok(PortText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortText, E> {
                Ok(PortText(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}
