//! Policy files: read files and directories, split multi-document YAML, parse each document on its
//! own and validate it. A bad document is reported and skipped; the others still apply.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::{Document, Header};
use crate::policy::Policy;
use crate::resolved::PolicyRef;
use crate::validate::{self, FieldProblem};

/// File name extensions read from a directory.
pub const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// One problem with a policy file. Displays as `path: doc N: field.path: message`; the document
/// number (1-based) and field path are left out when the problem concerns the whole file or the
/// whole document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub doc: Option<usize>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(n) = self.doc {
            write!(f, ": doc {n}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What loading found: the valid policies in a stable order (path order, then document order),
/// every problem, and every warning (valid, but worth a word).
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub policies: Vec<Policy>,
    pub problems: Vec<Problem>,
    pub warnings: Vec<Problem>,
    /// Files read (directories expanded), in the order read.
    pub files: Vec<PathBuf>,
}

impl LoadReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Load policies from files and directories. A directory contributes its `*.yaml`, `*.yml` and
/// `*.json` files, sorted by name, not recursing. Never fails: unreadable paths are problems too.
/// Deterministic for the same file contents, so the agent can reload on every change. Policies
/// of the same name: the last one read wins ([`last_wins`]).
pub fn load_paths(paths: &[PathBuf]) -> LoadReport {
    let mut report = read_paths(paths);
    let (policies, replaced) = last_wins(std::mem::take(&mut report.policies));
    report.policies = policies;
    report.warnings.extend(replaced);
    report
}

/// [`load_paths`] without [`last_wins`]: every valid policy in the order read, same-named ones
/// included (a source that keeps files' last good versions picks the winner itself).
pub fn read_paths(paths: &[PathBuf]) -> LoadReport {
    let mut report = LoadReport::default();
    for path in paths {
        if path.is_dir() {
            match list_dir(path) {
                Ok(files) => report.files.extend(files),
                Err(e) => report.problems.push(file_problem(path, format!("reading directory: {e}"))),
            }
        } else {
            report.files.push(path.clone());
        }
    }
    for file in report.files.clone() {
        match std::fs::read_to_string(&file) {
            Ok(text) => report.add_file(&file, &text),
            Err(e) => report.problems.push(file_problem(&file, format!("reading: {e}"))),
        }
    }
    report
}

impl LoadReport {
    /// Parse one file's text (read by the caller: a file, or stdin) into this report.
    pub fn add_file(&mut self, path: &Path, text: &str) {
        let (policies, problems) = parse_file(path, text);
        self.problems.extend(problems);
        for policy in policies {
            self.warnings.extend(policy.warnings.iter().map(|w| Problem {
                path: path.to_path_buf(),
                doc: Some(policy.doc),
                field: w.field.clone(),
                message: w.message.clone(),
            }));
            self.policies.push(policy);
        }
    }
}

/// Policies of the same name (and namespace): the last in `policies` wins, as `kubectl apply -f`
/// of them in this order (for a directory: file names in lexical order) would leave the object.
/// Each one replaced is a warning naming both places. The winners keep their order.
pub fn last_wins(policies: Vec<Policy>) -> (Vec<Policy>, Vec<Problem>) {
    let mut last: HashMap<PolicyRef, usize> = HashMap::new();
    for (i, p) in policies.iter().enumerate() {
        last.insert(p.reference.clone(), i);
    }
    let mut warnings = Vec::new();
    let mut kept = Vec::with_capacity(last.len());
    for (i, p) in policies.iter().enumerate() {
        let winner = last[&p.reference];
        if winner == i {
            continue;
        }
        let w = &policies[winner];
        warnings.push(Problem {
            path: p.source.clone(),
            doc: Some(p.doc),
            field: "metadata.name".into(),
            message: format!(
                "policy {} is defined again in {} doc {}, which is read later and replaces this one \
                 (as `kubectl apply -f` of both would leave it)",
                p.reference,
                w.source.display(),
                w.doc
            ),
        });
    }
    for (i, p) in policies.into_iter().enumerate() {
        if last[&p.reference] == i {
            kept.push(p);
        }
    }
    (kept, warnings)
}

fn file_problem(path: &Path, message: String) -> Problem {
    Problem { path: path.to_path_buf(), doc: None, field: String::new(), message }
}

fn list_dir(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let wanted = path.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e));
        if wanted && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Parse the text of one policy file (YAML, possibly several documents, or JSON); `path` names
/// it in problems. Empty documents (a trailing `---`) are skipped without complaint.
pub fn parse_file(path: &Path, text: &str) -> (Vec<Policy>, Vec<Problem>) {
    let mut policies = Vec::new();
    let mut problems = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let doc_no = i + 1;
        let problem =
            |field: String, message: String| Problem { path: path.to_path_buf(), doc: Some(doc_no), field, message };
        let value = match serde_norway::Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                // A syntax error ends the stream: later documents cannot be located reliably.
                problems.push(problem(String::new(), format!("invalid YAML: {e}")));
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        let items = match list_items(value) {
            Ok(items) => items,
            Err(fp) => {
                problems.push(problem(fp.field, fp.message));
                continue;
            }
        };
        for (prefix, value) in items {
            match parse_value(path, doc_no, value) {
                Ok(policy) => policies.push(policy),
                Err(list) => problems.extend(list.into_iter().map(|fp| {
                    let field = match (&prefix, fp.field.is_empty()) {
                        (None, _) => fp.field,
                        (Some(p), true) => p.clone(),
                        (Some(p), false) => format!("{p}.{}", fp.field),
                    };
                    problem(field, fp.message)
                })),
            }
        }
    }
    (policies, problems)
}

/// A document, or the items of a `kind: List` (what `kubectl get cnp -o yaml` prints: `apiVersion:
/// v1`, `items: [...]`, each item with its own apiVersion and kind), each with its field prefix.
fn list_items(value: serde_norway::Value) -> Result<Vec<(Option<String>, serde_norway::Value)>, FieldProblem> {
    let is_list = value.get("kind").and_then(serde_norway::Value::as_str) == Some("List");
    if !is_list {
        return Ok(vec![(None, value)]);
    }
    let problem = |field: &str, message: String| FieldProblem { field: field.into(), message };
    match value.get("apiVersion").and_then(serde_norway::Value::as_str) {
        Some("v1") => {}
        Some(other) => {
            return Err(problem("apiVersion", format!("{other:?} is not supported for kind List; expected \"v1\"")));
        }
        None => return Err(problem("apiVersion", "missing; expected \"v1\" for kind List".into())),
    }
    let items = match value.get("items") {
        None | Some(serde_norway::Value::Null) => return Ok(Vec::new()),
        Some(serde_norway::Value::Sequence(items)) => items.clone(),
        Some(_) => return Err(problem("items", "not a list: expected the list's objects".into())),
    };
    Ok(items.into_iter().enumerate().map(|(i, v)| (Some(format!("items[{i}]")), v)).collect())
}

/// Parse and validate one document already read as a YAML value.
pub fn parse_value(path: &Path, doc_no: usize, value: serde_norway::Value) -> Result<Policy, Vec<FieldProblem>> {
    if !value.is_mapping() {
        return Err(vec![FieldProblem {
            field: String::new(),
            message: "not a mapping: expected a policy object".into(),
        }]);
    }
    let header =
        Header::deserialize(&value).map_err(|e| vec![FieldProblem { field: String::new(), message: e.to_string() }])?;
    let kind = validate::check_header(&header)?;
    let doc: Document = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        vec![FieldProblem { field, message: e.into_inner().to_string() }]
    })?;
    validate::validate_document(&doc, kind, path, doc_no)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyKind;

    const CNP: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n";

    fn parse(text: &str) -> (Vec<Policy>, Vec<String>) {
        let (p, probs) = parse_file(Path::new("p.yaml"), text);
        (p, probs.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn seed_policies_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/policies/seed");
        let report = load_paths(&[dir]);
        // Four files, each defining default/locking-down-alpine: loaded together, the last file
        // wins (stage 4), as `kubectl apply -f seed/` would leave it, and each replaced one is a
        // warning naming both files.
        assert_eq!(report.files.len(), 4);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.policies.len(), 1);
        assert!(report.policies[0].source.ends_with("4-allow-fqdn.yaml"), "{:?}", report.policies[0].source);
        let replaced: Vec<String> =
            report.warnings.iter().filter(|w| w.field == "metadata.name").map(|w| w.to_string()).collect();
        assert_eq!(replaced.len(), 3, "{:?}", report.warnings);
        for (stage, file) in
            ["1-locking-down-alpine.yaml", "2-deny-everything.yaml", "3-allow-dns.yaml"].iter().enumerate()
        {
            assert!(
                replaced[stage].contains(file) && replaced[stage].contains("4-allow-fqdn.yaml doc 1"),
                "{replaced:?}"
            );
        }
        for file in &report.files {
            let text = std::fs::read_to_string(file).unwrap();
            let (policies, problems) = parse_file(file, &text);
            assert!(problems.is_empty(), "{file:?}: {problems:?}");
            assert_eq!(policies.len(), 1);
            assert_eq!(policies[0].reference.to_string(), "default/locking-down-alpine");
        }
    }

    #[test]
    fn parsing_table() {
        // (name, text, policies parsed, problems as displayed)
        let cases: Vec<(&str, String, usize, Vec<&str>)> = vec![
            ("one document", format!("{CNP}metadata: {{name: a}}\nspec: {{endpointSelector: {{}}}}\n"), 1, vec![]),
            (
                "multi-document with an empty one",
                format!("{CNP}metadata: {{name: a}}\nspec: {{endpointSelector: {{}}}}\n---\n---\n{CNP}metadata: {{name: b}}\nspecs: [{{endpointSelector: {{}}}}]\n"),
                2,
                vec![],
            ),
            (
                "json",
                r#"{"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy", "metadata": {"name": "j"}, "spec": {"endpointSelector": {}, "egress": [{"toPorts": [{"ports": [{"port": 53, "protocol": "ANY"}]}]}]}}"#.to_string(),
                1,
                vec![],
            ),
            (
                "misspelled key named, good document after it still parsed",
                format!("{CNP}metadata: {{name: a}}\nspec:\n  endpointSelector: {{}}\n  egress:\n  - toFQDN: [{{matchName: a.com}}]\n---\n{CNP}metadata: {{name: b}}\nspec: {{endpointSelector: {{}}}}\n"),
                1,
                vec!["p.yaml: doc 1: spec.egress[0].toFQDN: unknown field `toFQDN`, expected one of `toEndpoints`, `toCIDR`, `toCIDRSet`, `toEntities`, `toFQDNs`, `toPorts`, `toServices`, `toGroups`, `toNodes`, `toRequires`, `icmps`, `authentication`"],
            ),
            (
                "wrong kind",
                "apiVersion: cilium.io/v2\nkind: NetworkPolicy\nmetadata: {name: a}\n".to_string(),
                0,
                vec!["p.yaml: doc 1: kind: \"NetworkPolicy\" is not CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy"],
            ),
            (
                "wrong apiVersion",
                "apiVersion: cilium.io/v1\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\n".to_string(),
                0,
                vec!["p.yaml: doc 1: apiVersion: \"cilium.io/v1\" is not supported; expected \"cilium.io/v2\""],
            ),
            (
                "missing name",
                format!("{CNP}metadata: {{namespace: x}}\nspec: {{endpointSelector: {{}}}}\n"),
                0,
                vec!["p.yaml: doc 1: metadata.name: missing: every policy needs a name"],
            ),
            ("not a mapping", "- a\n- b\n".to_string(), 0, vec!["p.yaml: doc 1: not a mapping: expected a policy object"]),
            (
                "port as number and as string",
                format!("{CNP}metadata: {{name: a}}\nspec:\n  endpointSelector: {{}}\n  egress:\n  - toPorts: [{{ports: [{{port: 53}}, {{port: \"443\", protocol: tcp}}]}}]\n"),
                1,
                vec![],
            ),
            (
                "label value of the wrong type",
                format!("{CNP}metadata: {{name: a}}\nspec:\n  endpointSelector: {{matchLabels: {{app: [x]}}}}\n"),
                0,
                vec!["p.yaml: doc 1: spec.endpointSelector.matchLabels.app: invalid type: sequence, expected a string"],
            ),
            (
                "unknown operator",
                format!("{CNP}metadata: {{name: a}}\nspec:\n  endpointSelector: {{matchExpressions: [{{key: a, operator: Is}}]}}\n"),
                0,
                vec!["p.yaml: doc 1: spec.endpointSelector.matchExpressions[0].operator: unknown variant `Is`, expected one of `In`, `NotIn`, `Exists`, `DoesNotExist`"],
            ),
        ];
        for (name, text, want_policies, want_problems) in cases {
            let (policies, problems) = parse(&text);
            assert_eq!(problems, want_problems, "case {name}");
            assert_eq!(policies.len(), want_policies, "case {name}");
        }
    }

    #[test]
    fn namespaces_and_kinds() {
        let text = format!(
            "{CNP}metadata: {{name: a}}\nspec: {{endpointSelector: {{}}}}\n---\n{CNP}metadata: {{name: b, namespace: prod}}\nspec: {{endpointSelector: {{}}}}\n---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: c, namespace: ignored}}\nspec: {{endpointSelector: {{}}}}\n"
        );
        let (policies, problems) = parse(&text);
        assert!(problems.is_empty(), "{problems:?}");
        let refs: Vec<String> = policies.iter().map(|p| p.reference.to_string()).collect();
        assert_eq!(refs, ["default/a", "prod/b", "c"]);
        assert_eq!(policies[2].kind, PolicyKind::Clusterwide);
        assert_eq!(policies.iter().map(|p| p.doc).collect::<Vec<_>>(), [1, 2, 3]);
    }

    /// The last one wins wherever the duplicate is: another file, the same file, another
    /// path given; the namespace is part of the name; winners keep their order.
    #[test]
    fn same_named_policies_last_one_wins() {
        let body = |name: &str, ns: &str, label: &str| {
            format!(
                "{CNP}metadata: {{name: {name}, namespace: {ns}}}\nspec: {{endpointSelector: {{matchLabels: {{v: {label}}}}}}}\n"
            )
        };
        let text =
            [body("a", "default", "x"), body("b", "default", "x"), body("a", "default", "y"), body("a", "prod", "x")]
                .join("---\n");
        let (policies, problems) = parse_file(Path::new("p.yaml"), &text);
        assert!(problems.is_empty(), "{problems:?}");
        let (kept, warnings) = last_wins(policies);
        let refs: Vec<(String, usize)> = kept.iter().map(|p| (p.reference.to_string(), p.doc)).collect();
        assert_eq!(refs, [("default/b".to_string(), 2), ("default/a".to_string(), 3), ("prod/a".to_string(), 4)]);
        assert_eq!(warnings.len(), 1);
        assert_eq!(
            warnings[0].to_string(),
            "p.yaml: doc 1: metadata.name: policy default/a is defined again in p.yaml doc 3, which is read later and \
             replaces this one (as `kubectl apply -f` of both would leave it)"
        );
    }

    /// `kubectl get cnp,ccnp -o yaml` prints one `kind: List` (apiVersion v1); its items keep
    /// their own apiVersion and kind and are checked one by one, problems named by item.
    #[test]
    fn kind_list_is_expanded() {
        let item = |name: &str| {
            format!(
                "- apiVersion: cilium.io/v2\n  kind: CiliumNetworkPolicy\n  metadata: {{name: {name}, namespace: default, resourceVersion: \"7\"}}\n  spec: {{endpointSelector: {{}}, egress: [{{}}]}}\n"
            )
        };
        let ccnp = "- apiVersion: cilium.io/v2\n  kind: CiliumClusterwideNetworkPolicy\n  metadata: {name: cw}\n  spec: {endpointSelector: {}, egress: [{}]}\n";
        let bad = "- apiVersion: cilium.io/v2\n  kind: CiliumNetworkPolicy\n  metadata: {name: bad}\n  spec: {endpointSelector: {}, egress: [{toFQDN: []}]}\n";
        let text = format!(
            "apiVersion: v1\nkind: List\nmetadata: {{resourceVersion: \"\"}}\nitems:\n{}{}{ccnp}{bad}- kind: Pod\n  apiVersion: cilium.io/v2\n---\n{CNP}metadata: {{name: after}}\nspec: {{endpointSelector: {{}}, egress: [{{}}]}}\n",
            item("a"),
            item("b")
        );
        let (policies, problems) = parse(&text);
        let refs: Vec<String> = policies.iter().map(|p| p.reference.to_string()).collect();
        assert_eq!(refs, ["default/a", "default/b", "cw", "default/after"]);
        assert_eq!(policies[2].kind, PolicyKind::Clusterwide);
        assert_eq!(policies.iter().map(|p| p.doc).collect::<Vec<_>>(), [1, 1, 1, 2]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("p.yaml: doc 1: items[3].spec.egress[0].toFQDN: unknown field `toFQDN`"),
            "{problems:?}"
        );
        assert_eq!(
            problems[1],
            "p.yaml: doc 1: items[4].kind: \"Pod\" is not CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy"
        );
        // (case, text, problem)
        let cases = [
            ("empty list", "apiVersion: v1\nkind: List\nitems: []\n", None),
            ("no items", "apiVersion: v1\nkind: List\n", None),
            (
                "wrong apiVersion",
                "apiVersion: cilium.io/v2\nkind: List\nitems: []\n",
                Some("p.yaml: doc 1: apiVersion: \"cilium.io/v2\" is not supported for kind List; expected \"v1\""),
            ),
            (
                "items not a list",
                "apiVersion: v1\nkind: List\nitems: {a: b}\n",
                Some("p.yaml: doc 1: items: not a list: expected the list's objects"),
            ),
            (
                "an item not a mapping",
                "apiVersion: v1\nkind: List\nitems: [x]\n",
                Some("p.yaml: doc 1: items[0]: not a mapping: expected a policy object"),
            ),
        ];
        for (name, text, want) in cases {
            let (policies, problems) = parse(text);
            assert!(policies.is_empty(), "case {name}");
            assert_eq!(problems, want.into_iter().map(String::from).collect::<Vec<_>>(), "case {name}");
        }
    }

    #[test]
    fn yaml_syntax_error_is_reported() {
        let (policies, problems) = parse(&format!("{CNP}metadata: {{name: a}}\nspec: [unclosed\n"));
        assert!(policies.is_empty());
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("p.yaml: doc 1: invalid YAML:"), "{problems:?}");
    }

    #[test]
    fn directories_sorted_and_filtered_duplicates_reported() {
        let dir = std::env::temp_dir().join(format!("policy-sync-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let body = |name: &str| format!("{CNP}metadata: {{name: {name}}}\nspec: {{endpointSelector: {{}}}}\n");
        std::fs::write(dir.join("b.yml"), body("x")).unwrap();
        std::fs::write(dir.join("a.yaml"), body("x")).unwrap();
        std::fs::write(dir.join("c.json"), body("y")).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a policy").unwrap();
        let report = load_paths(std::slice::from_ref(&dir));
        let names: Vec<_> =
            report.files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["a.yaml", "b.yml", "c.json"]);
        assert_eq!(report.policies.len(), 2);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let replaced: Vec<&Problem> = report.warnings.iter().filter(|w| w.field == "metadata.name").collect();
        assert_eq!(replaced.len(), 1, "{:?}", report.warnings);
        let msg = replaced[0].to_string();
        assert!(msg.contains("a.yaml: doc 1: metadata.name: policy default/x is defined again in"), "{msg}");
        assert!(msg.contains("b.yml doc 1, which is read later and replaces this one"), "{msg}");
        assert!(report.policies[0].source.ends_with("b.yml"), "b.yml's version wins");
        let missing = load_paths(&[dir.join("missing.yaml")]);
        assert_eq!(missing.problems.len(), 1);
        assert!(missing.problems[0].to_string().contains("missing.yaml: reading:"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
