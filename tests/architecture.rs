//! ARCHITECTURE.md stays true: every file it names exists, and every function it names
//! (`Type::function()` or `function()`) is defined in a file named in the same step.

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The backticked tokens of `text`.
fn ticks(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

fn is_path(token: &str) -> bool {
    token.contains('/') && [".rs", ".c", ".toml", ".md", ".sh"].iter().any(|ext| token.ends_with(ext))
}

/// The steps of the document: paragraphs and list items, each with its wrapped lines.
fn steps(doc: &str) -> Vec<String> {
    let mut steps = Vec::new();
    let mut current = String::new();
    for line in doc.lines() {
        let t = line.trim_start();
        let starts_item = t.starts_with("- ") || t.split_once(". ").is_some_and(|(n, _)| n.parse::<u32>().is_ok());
        if t.is_empty() || starts_item {
            steps.push(std::mem::take(&mut current));
        }
        current.push_str(line);
        current.push('\n');
    }
    steps.push(current);
    steps.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// Is `function` (and `owner`, if given: a type, trait or impl) defined in `source`?
fn defines(source: &str, c_file: bool, owner: Option<&str>, function: &str) -> bool {
    let has_fn = if c_file {
        source.contains(&format!(" {function}("))
    } else {
        source.contains(&format!("fn {function}(")) || source.contains(&format!("fn {function}<"))
    };
    let has_owner = owner.is_none_or(|o| {
        ["struct ", "enum ", "trait ", "impl ", "for "].iter().any(|kw| source.contains(&format!("{kw}{o}")))
    });
    has_fn && has_owner
}

#[test]
fn architecture_names_what_exists() {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut problems = Vec::new();
    let mut functions = 0;
    for step in steps(&doc) {
        let tokens = ticks(&step);
        let files: Vec<&str> = tokens.iter().copied().filter(|t| is_path(t)).collect();
        for f in &files {
            if !root().join(f).exists() {
                problems.push(format!("{f} does not exist"));
            }
        }
        for t in tokens.iter().filter_map(|t| t.strip_suffix("()")) {
            functions += 1;
            let (owner, function) = match t.rsplit_once("::") {
                Some((owner, f)) => (Some(owner.rsplit("::").next().unwrap_or(owner)), f),
                None => (None, t),
            };
            let found = files.iter().any(|f| {
                let source = std::fs::read_to_string(root().join(f)).unwrap_or_default();
                defines(&source, f.ends_with(".c"), owner, function)
            });
            if !found {
                problems.push(format!("{t}() is not defined in {files:?} (the files its step names)"));
            }
        }
    }
    assert!(functions > 30, "the walks name functions; found {functions}");
    assert!(problems.is_empty(), "ARCHITECTURE.md is out of date:\n  {}", problems.join("\n  "));
}

/// The checker itself: a name that does not exist is caught.
#[test]
fn the_checker_catches_a_stale_name() {
    let source = "impl Shared {\n    pub(crate) fn decide(&self) {}\n}\n";
    assert!(defines(source, false, Some("Shared"), "decide"));
    assert!(!defines(source, false, Some("Shared"), "decided"));
    assert!(!defines(source, false, Some("Other"), "decide"));
    assert!(defines("static int fqdnd_from_pod(struct x)", true, None, "fqdnd_from_pod"));
    let parts = steps("1. a `x.rs` `f()`\n   more\n2. b\n\n- c\n");
    assert_eq!(parts.len(), 3, "{parts:?}");
}
