//! Kubernetes label selectors over Cilium's labels, as Hubble's `source_label`/`destination_label`
//! filters take them.

use std::collections::BTreeSet;

/// A label's key: its source (`k8s`, `reserved`, ...; `any` matches every source) and name.
#[derive(Debug, PartialEq, Eq)]
struct LabelKey {
    source: String,
    name: String,
}

impl LabelKey {
    fn parse(text: &str) -> Self {
        match text.split_once(':') {
            Some((source, name)) => LabelKey { source: source.to_string(), name: name.to_string() },
            None => LabelKey { source: "any".to_string(), name: text.to_string() },
        }
    }

    /// The value of this key among `k8s:app=alpine`-style labels, if one has it.
    fn value_in<'a>(&self, labels: &'a [String]) -> Option<&'a str> {
        labels.iter().find_map(|l| {
            let (source, rest) = l.split_once(':').unwrap_or(("unspec", l.as_str()));
            let (name, value) = rest.split_once('=').unwrap_or((rest, ""));
            (name == self.name && (self.source == "any" || self.source == source)).then_some(value)
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Requirement {
    Exists(LabelKey),
    NotExists(LabelKey),
    In(LabelKey, BTreeSet<String>),
    NotIn(LabelKey, BTreeSet<String>),
}

/// A Kubernetes label selector over Cilium's labels, as Hubble's `--label` takes it: comma-separated
/// requirements (`key`, `!key`, `key=v`, `key==v`, `key!=v`, `key in (a,b)`, `key notin (a,b)`),
/// a key being `source:name` or `name` (any source).
#[derive(Debug, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_requirements(text) {
            let part = part.trim();
            if part.is_empty() {
                if text.trim().is_empty() {
                    continue;
                }
                return Err("empty requirement".to_string());
            }
            reqs.push(parse_requirement(part)?);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn matches(&self, labels: &[String]) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Exists(k) => k.value_in(labels).is_some(),
            Requirement::NotExists(k) => k.value_in(labels).is_none(),
            Requirement::In(k, vs) => k.value_in(labels).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => k.value_in(labels).is_none_or(|v| !vs.contains(v)),
        })
    }
}

/// Split on commas outside parentheses.
fn split_requirements(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let valid_key = |k: &str| !k.is_empty() && !k.contains(|c: char| c.is_whitespace() || "=!(),".contains(c));
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        return valid_key(key).then(|| Requirement::NotExists(LabelKey::parse(key))).ok_or(format!("bad key {key:?}"));
    }
    let one = |v: &str| BTreeSet::from([v.trim().to_string()]);
    if let Some((k, v)) = part.split_once("!=") {
        let k = k.trim();
        return valid_key(k).then(|| Requirement::NotIn(LabelKey::parse(k), one(v))).ok_or(format!("bad key {k:?}"));
    }
    if let Some((k, v)) = part.split_once('=') {
        let v = v.strip_prefix('=').unwrap_or(v);
        let k = k.trim();
        return valid_key(k).then(|| Requirement::In(LabelKey::parse(k), one(v))).ok_or(format!("bad key {k:?}"));
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if let [key, rest] = words.as_slice() {
        let rest = rest.trim();
        let (op, list) = if let Some(l) = rest.strip_prefix("notin") {
            ("notin", l)
        } else if let Some(l) = rest.strip_prefix("in") {
            ("in", l)
        } else {
            return Err(format!("unknown operator in {part:?} (=, ==, !=, in, notin)"));
        };
        let list = list.trim();
        let inner = list
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| format!("{op} needs a (value, ...) list"))?;
        let values: BTreeSet<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
        if !valid_key(key) {
            return Err(format!("bad key {key:?}"));
        }
        let key = LabelKey::parse(key);
        return Ok(if op == "in" { Requirement::In(key, values) } else { Requirement::NotIn(key, values) });
    }
    if valid_key(part) { Ok(Requirement::Exists(LabelKey::parse(part))) } else { Err(format!("bad key {part:?}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn label_selector_grammar() {
        let labels = strings(&["k8s:app=alpine", "k8s:io.kubernetes.pod.namespace=default", "reserved:host"]);
        for (sel, want) in [
            ("app=alpine", true),
            ("app==alpine", true),
            ("k8s:app=alpine", true),
            ("any:app=alpine", true),
            ("container:app=alpine", false),
            ("app!=nginx", true),
            ("app!=alpine", false),
            ("tier!=web", true),
            ("app", true),
            ("!app", false),
            ("!tier", true),
            ("reserved:host", true),
            ("app in (nginx,alpine)", true),
            ("app notin (nginx, alpine)", false),
            ("app=alpine,io.kubernetes.pod.namespace=default", true),
            ("app=alpine,io.kubernetes.pod.namespace=kube-system", false),
            ("", true),
        ] {
            assert_eq!(LabelSelector::parse(sel).unwrap().matches(&labels), want, "{sel:?}");
        }
        for bad in ["app in alpine", "app ~ x", "=x", "a,,b", "!"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad:?}");
        }
    }
}
