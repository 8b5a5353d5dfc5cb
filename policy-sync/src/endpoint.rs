//! Endpoints: the pods (or host processes) fqdnd polices, and the endpoints file that lists them
//! when there is no cluster.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::PolicyError;

/// The label Kubernetes gives every pod for its namespace; implied for every endpoint.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// One endpoint, as listed in the endpoints file. Labels are given without the `k8s:` source prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// The node-side veth of the endpoint, used by the datapath.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

impl Endpoint {
    /// `namespace/name`.
    pub fn key(&self) -> EndpointKey {
        EndpointKey { namespace: self.namespace.clone(), name: self.name.clone() }
    }

    /// `namespace/name` for display, without copying (logs on the query path).
    pub fn display_key(&self) -> impl fmt::Display + '_ {
        struct Key<'a>(&'a Endpoint);
        impl fmt::Display for Key<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}/{}", self.0.namespace, self.0.name)
            }
        }
        Key(self)
    }

    /// Labels including the implied namespace label, as selectors see them.
    pub fn effective_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert(NAMESPACE_LABEL.to_string(), self.namespace.clone());
        labels
    }
}

/// `namespace/name` of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl std::str::FromStr for EndpointKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(EndpointKey { namespace: ns.to_string(), name: name.to_string() })
            }
            _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:10.0.1.5`) is the IPv4 address: dual-stack sockets report it that way.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Read an endpoints file: a YAML list of [`Endpoint`].
pub fn load_endpoints_file(path: &Path) -> Result<Vec<Endpoint>, PolicyError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| PolicyError::Read { path: PathBuf::from(path), source })?;
    parse_endpoints(path, &text)
}

/// Parse the text of an endpoints file; `path` names it in errors.
pub fn parse_endpoints(path: &Path, text: &str) -> Result<Vec<Endpoint>, PolicyError> {
    let de = serde_norway::Deserializer::from_str(text);
    let endpoints: Vec<Endpoint> = serde_path_to_error::deserialize(de).map_err(|e| PolicyError::Endpoints {
        path: PathBuf::from(path),
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })?;
    let mut seen = std::collections::HashSet::new();
    // An IP names the endpoint a packet or query comes from: two owners would give one of them
    // the other's rules (the later one's, in the snapshot), so the file is refused instead.
    let mut owners: std::collections::HashMap<IpAddr, EndpointKey> = std::collections::HashMap::new();
    for (i, ep) in endpoints.iter().enumerate() {
        if !seen.insert(ep.key()) {
            return Err(PolicyError::Endpoints {
                path: PathBuf::from(path),
                field: ep.key().to_string(),
                message: "endpoint listed twice".to_string(),
            });
        }
        for (j, ip) in ep.ips.iter().enumerate() {
            match owners.get(&canonical(*ip)) {
                Some(first) if *first != ep.key() => {
                    return Err(PolicyError::Endpoints {
                        path: PathBuf::from(path),
                        field: format!("[{i}].ips[{j}]"),
                        message: format!(
                            "IP {ip} of {} is already the IP of {first}; an IP belongs to one endpoint",
                            ep.key()
                        ),
                    });
                }
                Some(_) => {}
                None => {
                    owners.insert(canonical(*ip), ep.key());
                }
            }
        }
    }
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_issue_example() {
        let text = r#"
- namespace: kube-system
  name: kube-dns
  labels: {k8s-app: kube-dns}
  ips: [10.96.0.10]
- namespace: default
  name: alpine
  labels: {app: alpine}
  ips: [10.0.1.5, "fd00::5"]
  interface: lxc-alpine
"#;
        let eps = parse_endpoints(Path::new("eps.yaml"), text).unwrap();
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[1].interface.as_deref(), Some("lxc-alpine"));
        assert_eq!(eps[0].effective_labels().get(NAMESPACE_LABEL).map(String::as_str), Some("kube-system"));
    }

    /// Fault E: an IP listed for two endpoints would hand one of them the other's rules.
    #[test]
    fn an_ip_of_two_endpoints_is_refused_naming_both() {
        let cases = [
            (
                "same address",
                "10.0.1.5",
                "10.0.1.5",
                Some("[1].ips[0]: IP 10.0.1.5 of default/b is already the IP of default/a"),
            ),
            (
                "IPv4-mapped form",
                "10.0.1.5",
                "::ffff:10.0.1.5",
                Some("[1].ips[0]: IP ::ffff:10.0.1.5 of default/b is already the IP of default/a"),
            ),
            (
                "IPv6",
                "fd00::5",
                "fd00:0::5",
                Some("[1].ips[0]: IP fd00::5 of default/b is already the IP of default/a"),
            ),
            ("different addresses", "10.0.1.5", "10.0.1.6", None),
        ];
        for (name, a, b, want) in cases {
            let text = format!(
                "- {{namespace: default, name: a, ips: [\"{a}\"]}}\n- {{namespace: default, name: b, ips: [\"{b}\"]}}\n"
            );
            match (parse_endpoints(Path::new("eps.yaml"), &text), want) {
                (Ok(eps), None) => assert_eq!(eps.len(), 2, "case {name}"),
                (Err(e), Some(want)) => {
                    let e = e.to_string();
                    assert!(e.starts_with("eps.yaml: ") && e.contains(want), "case {name}: {e}");
                }
                (got, want) => panic!("case {name}: got {got:?}, want {want:?}"),
            }
        }
        // One endpoint naming its own IP twice harms no one.
        let same = "- {namespace: default, name: a, ips: [10.0.1.5, 10.0.1.5]}\n";
        assert!(parse_endpoints(Path::new("eps.yaml"), same).is_ok());
    }

    #[test]
    fn misspelled_key_is_named() {
        let text = "- namespace: a\n  name: b\n  lables: {x: y}\n";
        let err = parse_endpoints(Path::new("eps.yaml"), text).unwrap_err().to_string();
        assert!(err.contains("lables"), "{err}");
        assert!(err.contains("eps.yaml"), "{err}");
    }
}
