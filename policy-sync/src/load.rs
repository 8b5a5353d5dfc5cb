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
/// and every problem.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub policies: Vec<Policy>,
    pub problems: Vec<Problem>,
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
/// Deterministic for the same file contents, so the agent can reload on every change.
pub fn load_paths(paths: &[PathBuf]) -> LoadReport {
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
    let mut seen: HashMap<PolicyRef, (PathBuf, usize)> = HashMap::new();
    for file in report.files.clone() {
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let (policies, problems) = parse_file(&file, &text);
                report.problems.extend(problems);
                for policy in policies {
                    if let Some((first, doc)) = seen.get(&policy.reference) {
                        report.problems.push(Problem {
                            path: file.clone(),
                            doc: Some(policy.doc),
                            field: "metadata.name".into(),
                            message: format!(
                                "policy {} is already defined in {} doc {doc}; this one is skipped",
                                policy.reference,
                                first.display()
                            ),
                        });
                        continue;
                    }
                    seen.insert(policy.reference.clone(), (file.clone(), policy.doc));
                    report.policies.push(policy);
                }
            }
            Err(e) => report.problems.push(file_problem(&file, format!("reading: {e}"))),
        }
    }
    report
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
        match parse_value(path, doc_no, value) {
            Ok(policy) => policies.push(policy),
            Err(list) => problems.extend(list.into_iter().map(|fp| problem(fp.field, fp.message))),
        }
    }
    (policies, problems)
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
