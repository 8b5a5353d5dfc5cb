//! The policy objects in force: each object's last valid version. A new version is validated
//! once, through the same parser and checks as `fqdnd policy check`; an invalid one is reported
//! (once per version) and the object's previous valid version stays in force. A deleted object
//! leaves.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::records::{PolicyKey, PolicyObject};
use crate::load::parse_value;
use crate::policy::Policy;
use crate::validate::FieldProblem;

/// A version that failed validation, to be logged, counted and reported as an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub key: PolicyKey,
    pub uid: String,
    pub resource_version: String,
    pub problems: Vec<FieldProblem>,
    /// Whether an earlier valid version of the object is still in force.
    pub previous_kept: bool,
}

impl Rejection {
    /// `field: message; field: message` (as `fqdnd policy check` prints each problem).
    pub fn summary(&self) -> String {
        self.problems
            .iter()
            .map(|p| if p.field.is_empty() { p.message.clone() } else { format!("{}: {}", p.field, p.message) })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

struct Entry {
    /// The version last looked at (valid or not).
    seen_version: String,
    /// The version in force, with its raw object (persisted for a restart without the API).
    good: Option<(Policy, PolicyObject)>,
}

#[derive(Default)]
pub struct PolicyBook {
    entries: BTreeMap<PolicyKey, Entry>,
}

impl PolicyBook {
    /// Take the objects present now; returns the versions rejected by this update (each version
    /// is judged once: the same invalid version seen again is not reported again).
    pub fn update(&mut self, objects: &[PolicyObject]) -> Vec<Rejection> {
        let mut rejections = Vec::new();
        let mut next = BTreeMap::new();
        for obj in objects {
            let mut entry = self.entries.remove(&obj.key).unwrap_or(Entry { seen_version: String::new(), good: None });
            let unchanged = !obj.resource_version.is_empty() && entry.seen_version == obj.resource_version;
            if !unchanged {
                entry.seen_version = obj.resource_version.clone();
                match validate(obj) {
                    Ok(policy) => entry.good = Some((policy, obj.clone())),
                    Err(problems) => rejections.push(Rejection {
                        key: obj.key.clone(),
                        uid: obj.uid.clone(),
                        resource_version: obj.resource_version.clone(),
                        problems,
                        previous_kept: entry.good.is_some(),
                    }),
                }
            }
            next.insert(obj.key.clone(), entry);
        }
        self.entries = next;
        rejections
    }

    /// The policies in force, in key order (CNPs by namespace and name, then CCNPs).
    pub fn policies(&self) -> Vec<Policy> {
        self.entries.values().filter_map(|e| e.good.as_ref().map(|(p, _)| p.clone())).collect()
    }

    /// The raw objects of the versions in force.
    pub fn enforced_objects(&self) -> Vec<PolicyObject> {
        self.entries.values().filter_map(|e| e.good.as_ref().map(|(_, o)| o.clone())).collect()
    }

    /// `(key, version in force)` of every policy in force: changes when enforcement does.
    pub fn versions(&self) -> Vec<(PolicyKey, String)> {
        self.entries
            .iter()
            .filter_map(|(k, e)| e.good.as_ref().map(|(_, o)| (k.clone(), o.resource_version.clone())))
            .collect()
    }
}

fn validate(obj: &PolicyObject) -> Result<Policy, Vec<FieldProblem>> {
    let value = serde_norway::to_value(&obj.raw)
        .map_err(|e| vec![FieldProblem { field: String::new(), message: format!("not a document: {e}") }])?;
    let source = PathBuf::from(format!("kubernetes/{}", obj.key).replace(' ', "/"));
    let policy = parse_value(&source, 1, value)?;
    // The API server's name is the truth; a document naming another is not this object.
    if policy.reference.name != obj.key.name || policy.reference.namespace != obj.key.namespace {
        return Err(vec![FieldProblem {
            field: "metadata".into(),
            message: format!("names {} instead of the object's own name", policy.reference),
        }]);
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str, rv: &str, pattern_key: &str) -> PolicyObject {
        PolicyObject {
            key: PolicyKey { clusterwide: false, namespace: Some("default".into()), name: name.into() },
            uid: format!("uid-{name}"),
            resource_version: rv.into(),
            raw: serde_json::json!({
                "apiVersion": "cilium.io/v2",
                "kind": "CiliumNetworkPolicy",
                "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "resourceVersion": rv},
                "spec": {
                    "endpointSelector": {"matchLabels": {"app": "alpine"}},
                    "egress": [{"toFQDNs": [{pattern_key: "*.microsoft.com"}]}],
                },
            }),
        }
    }

    fn patterns(book: &PolicyBook) -> Vec<String> {
        book.policies().iter().map(|p| format!("{}@{}", p.reference, book.versions().len())).collect()
    }

    #[test]
    fn invalid_version_keeps_the_last_valid_one_and_is_reported_once() {
        let mut book = PolicyBook::default();
        assert!(book.update(&[obj("p", "1", "matchPattern")]).is_empty());
        assert_eq!(book.versions(), [(obj("p", "1", "").key, "1".to_string())]);

        let bad = obj("p", "2", "matchPatern");
        let rejected = book.update(std::slice::from_ref(&bad));
        assert_eq!(rejected.len(), 1);
        let r = &rejected[0];
        assert!(r.previous_kept);
        assert_eq!(r.problems[0].field, "spec.egress[0].toFQDNs[0].matchPatern");
        assert!(
            r.summary().starts_with("spec.egress[0].toFQDNs[0].matchPatern: unknown field `matchPatern`"),
            "{}",
            r.summary()
        );
        assert_eq!(book.versions()[0].1, "1", "version 1 stays in force");
        assert_eq!(patterns(&book), ["default/p@1"]);

        // The same bad version again (a relist): judged already, not reported again.
        assert!(book.update(&[bad]).is_empty());
        assert_eq!(book.versions()[0].1, "1");

        // Fixed: the new version replaces it.
        assert!(book.update(&[obj("p", "3", "matchPattern")]).is_empty());
        assert_eq!(book.versions()[0].1, "3");

        // Deleted: gone.
        assert!(book.update(&[]).is_empty());
        assert!(book.policies().is_empty());
    }

    #[test]
    fn a_new_invalid_object_enforces_nothing() {
        let mut book = PolicyBook::default();
        let rejected = book.update(&[obj("q", "1", "matchPatern"), obj("p", "1", "matchPattern")]);
        assert_eq!(rejected.len(), 1);
        assert!(!rejected[0].previous_kept);
        assert_eq!(book.policies().len(), 1);
        assert_eq!(book.enforced_objects()[0].key.name, "p");
    }
}
