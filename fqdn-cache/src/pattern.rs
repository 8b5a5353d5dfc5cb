//! DNS name patterns: CiliumNetworkPolicy `matchName` and `matchPattern`.
//!
//! Semantics (Cilium's): names compare case-insensitively with the trailing dot optional. In a
//! `matchPattern`, `*` inside a label matches zero or more of `[-a-zA-Z0-9_]` and never crosses a
//! dot; a pattern made only of stars matches every name, whatever its bytes (Cilium's DNS proxy
//! compiles `*` to a regex matching any input); a leading `**.` matches one or more whole labels.
//!
//! Which names a `toFQDNs` selector can hold is narrower: only names of clean labels
//! ([`is_selectable_name`], [`NamePattern::selects`]). A DNS allow-all lets a pod ask for
//! `a\032b.example.` or `*.example.`; no selector learns IPs under such a name.
//!
//! [`NamePattern::matches`] is the plain reference implementation. [`PatternSet`] compiles many
//! patterns into one matcher for the query path.

use std::fmt;

use thiserror::Error;

mod set;

pub use set::PatternSet;

/// Longest DNS name a pattern may have, in characters (RFC 1035 presentation form).
pub const MAX_NAME_LEN: usize = 255;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PatternError {
    #[error("{kind} is empty")]
    Empty { kind: PatternKind },
    #[error("{kind} {text:?} has character {ch:?} outside [-a-zA-Z0-9_.{star}]", star = if *kind == PatternKind::Pattern { "*" } else { "" })]
    InvalidChar { kind: PatternKind, text: String, ch: char },
    #[error("{kind} {text:?} is {len} characters long; the limit is {MAX_NAME_LEN}")]
    TooLong { kind: PatternKind, text: String, len: usize },
    /// Cilium's schema (`^([-a-zA-Z0-9_]+[.]?)+$`, `*` too in a pattern) has no empty label:
    /// no `a..b.com`, no leading dot, no second trailing dot, no lone `.`.
    #[error("{kind} {text:?} has an empty label (labels are separated by exactly one dot)")]
    EmptyLabel { kind: PatternKind, text: String },
}

/// Which field a pattern came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PatternKind {
    /// `matchName`: one exact name.
    Name,
    /// `matchPattern`: a name with `*` wildcards.
    Pattern,
}

impl fmt::Display for PatternKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PatternKind::Name => "matchName",
            PatternKind::Pattern => "matchPattern",
        })
    }
}

/// One validated `matchName` or `matchPattern`, normalized (lower case, one trailing dot).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NamePattern {
    kind: PatternKind,
    text: String,
}

pub(crate) fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

impl NamePattern {
    /// Validate a `matchName`.
    pub fn match_name(text: &str) -> Result<Self, PatternError> {
        Self::parse(PatternKind::Name, text)
    }

    /// Validate a `matchPattern`.
    pub fn match_pattern(text: &str) -> Result<Self, PatternError> {
        Self::parse(PatternKind::Pattern, text)
    }

    pub fn parse(kind: PatternKind, text: &str) -> Result<Self, PatternError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(PatternError::Empty { kind });
        }
        if trimmed.len() > MAX_NAME_LEN {
            return Err(PatternError::TooLong { kind, text: text.to_string(), len: trimmed.len() });
        }
        if let Some(ch) =
            trimmed.chars().find(|&c| !(is_name_char(c) || c == '.' || (c == '*' && kind == PatternKind::Pattern)))
        {
            return Err(PatternError::InvalidChar { kind, text: text.to_string(), ch });
        }
        let stem = trimmed.strip_suffix('.').unwrap_or(trimmed);
        if stem.split('.').any(str::is_empty) {
            return Err(PatternError::EmptyLabel { kind, text: text.to_string() });
        }
        Ok(NamePattern { kind, text: crate::normalize_name(trimmed) })
    }

    pub fn kind(&self) -> PatternKind {
        self.kind
    }

    /// The normalized text: lower case with one trailing dot (`*.cilium.io.`).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True for a `matchPattern` of stars only, which matches every name, whatever its bytes.
    pub fn matches_all(&self) -> bool {
        let stem = self.text.trim_end_matches('.');
        self.kind == PatternKind::Pattern && !stem.is_empty() && stem.chars().all(|c| c == '*')
    }

    /// The anchored regular expression equivalent to this pattern, over a normalized name (lower
    /// case, one trailing dot). Used by [`PatternSet`] for patterns its hash indexes do not cover,
    /// and handy to explain a pattern.
    pub fn to_regex(&self) -> String {
        const LABEL_CHAR: &str = "[-0-9a-z_]";
        if self.matches_all() {
            return "^(?s-u:.)*$".to_string();
        }
        let mut out = String::from("^");
        let labels = split_labels(&self.text);
        let mut rest = &labels[..];
        if self.kind == PatternKind::Pattern && labels.first() == Some(&"**") && labels.len() > 1 {
            out.push_str(&format!("(?:{LABEL_CHAR}+\\.)+"));
            rest = &labels[1..];
        }
        for label in rest {
            for c in label.chars() {
                if c == '*' && self.kind == PatternKind::Pattern {
                    out.push_str(LABEL_CHAR);
                    out.push('*');
                } else {
                    // Only [-0-9a-z_] reach here (validated, lower-cased): none is a metacharacter
                    // outside a class, but escaping keeps that true if validation ever widens.
                    if !is_name_char(c) {
                        out.push('\\');
                    }
                    out.push(c);
                }
            }
            out.push_str("\\.");
        }
        out.push('$');
        out
    }

    /// As a `toFQDNs` selector: does this pattern hold `name`? Only names of clean labels can be
    /// selected, so a match-all `*` selects every such name and no other. `name` need not be
    /// normalized.
    pub fn selects(&self, name: &str) -> bool {
        is_selectable_name(&crate::normalized_name(name)) && self.matches(name)
    }

    /// Reference matcher: label by label, no compilation. `name` need not be normalized.
    pub fn matches(&self, name: &str) -> bool {
        let name = crate::normalize_name(name);
        match self.kind {
            PatternKind::Name => name == self.text,
            PatternKind::Pattern => {
                if self.matches_all() {
                    return true;
                }
                let pat = split_labels(&self.text);
                let labels = split_labels(&name);
                if pat.first() == Some(&"**") {
                    let rest = &pat[1..];
                    if labels.len() <= rest.len() {
                        return false;
                    }
                    let extra = labels.len() - rest.len();
                    labels[..extra].iter().all(|l| valid_label(l))
                        && rest.iter().zip(&labels[extra..]).all(|(p, l)| glob_label(p, l))
                } else {
                    pat.len() == labels.len() && pat.iter().zip(&labels).all(|(p, l)| glob_label(p, l))
                }
            }
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:?}", self.kind, self.text)
    }
}

/// Labels of a normalized name, without the root (`a.b.` -> `["a", "b"]`, `.` -> `[]`).
pub(crate) fn split_labels(name: &str) -> Vec<&str> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() { Vec::new() } else { trimmed.split('.').collect() }
}

/// Can a `toFQDNs` selector hold this normalized name? Every label non-empty and made of
/// `[-a-z0-9_]` (the root `.` has none). Names from the wire may hold any byte, escaped as
/// `\DDD` in presentation form; such names are proxied (a DNS allow-all allows them) but no
/// selector learns their IPs.
pub fn is_selectable_name(name: &str) -> bool {
    // Once per learned name and selector lookup: a byte loop, no label list.
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return true;
    }
    let mut label_len = 0usize;
    for &b in trimmed.as_bytes() {
        if b == b'.' {
            if label_len == 0 {
                return false;
            }
            label_len = 0;
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            label_len += 1;
        } else {
            return false;
        }
    }
    label_len > 0
}

pub(crate) fn valid_label(label: &str) -> bool {
    !label.is_empty() && label.chars().all(is_name_char)
}

/// Glob one pattern label against one name label; `*` matches a run of name characters.
fn glob_label(pattern: &str, label: &str) -> bool {
    let p = pattern.as_bytes();
    let l = label.as_bytes();
    // Classic iterative wildcard match with backtracking to the last star.
    let (mut pi, mut li) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while li < l.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, li));
            pi += 1;
        } else if pi < p.len() && p[pi] == l[li] {
            pi += 1;
            li += 1;
        } else if let Some((sp, sl)) = star {
            if !is_name_char(l[sl] as char) {
                return false;
            }
            pi = sp + 1;
            li = sl + 1;
            star = Some((sp, sl + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_examples() {
        let cases: &[(&str, &str, bool)] = &[
            ("*.cilium.io", "sub.cilium.io", true),
            ("*.cilium.io", "cilium.io", false),
            ("*.cilium.io", "a.b.cilium.io", false),
            ("*cilium.io", "cilium.io", true),
            ("*cilium.io", "subcilium.io", true),
            ("*cilium.io", "www.cilium.io", false),
            ("part*ial.com", "partial.com", true),
            ("**.cilium.io", "a.b.cilium.io", true),
            ("**.cilium.io", "cilium.io", false),
            ("*", "anything.at.all.", true),
            ("**", "x.y", true),
            ("*.Microsoft.COM.", "WWW.microsoft.com", true),
        ];
        for &(pat, name, want) in cases {
            let p = NamePattern::match_pattern(pat).unwrap();
            assert_eq!(p.matches(name), want, "pattern {pat:?} name {name:?}");
        }
    }

    #[test]
    fn validation() {
        assert!(matches!(NamePattern::match_name("a*.com"), Err(PatternError::InvalidChar { ch: '*', .. })));
        assert!(matches!(NamePattern::match_pattern("a b.com"), Err(PatternError::InvalidChar { ch: ' ', .. })));
        assert!(matches!(NamePattern::match_pattern(""), Err(PatternError::Empty { .. })));
        let long = "a".repeat(256);
        assert!(matches!(NamePattern::match_name(&long), Err(PatternError::TooLong { len: 256, .. })));
    }

    /// Cilium's schema, `^([-a-zA-Z0-9_]+[.]?)+$` (`*` too in a pattern): one dot at most after
    /// each label, so no empty label anywhere.
    #[test]
    fn empty_labels_are_invalid() {
        for text in ["a..b.com", ".a.com", "a.com..", ".", "..", "*..com", "**..a.com", ". "] {
            for kind in [PatternKind::Name, PatternKind::Pattern] {
                let text = if kind == PatternKind::Name { text.replace('*', "x") } else { text.to_string() };
                let err = NamePattern::parse(kind, &text).unwrap_err();
                assert!(matches!(err, PatternError::EmptyLabel { .. }), "{kind} {text:?}: {err}");
                assert!(err.to_string().contains("empty label"), "{err}");
            }
        }
        for text in ["a.com", "a.com.", "a", "a-b_c.d"] {
            assert!(NamePattern::match_name(text).is_ok(), "{text}");
        }
        for text in ["*", "*.", "**.a.com", "*.a.com."] {
            assert!(NamePattern::match_pattern(text).is_ok(), "{text}");
        }
    }

    proptest::proptest! {
        /// The byte loop says what "every label non-empty and of name characters" says.
        #[test]
        fn selectable_is_every_label_valid(name in "(a|B|7|-|_|\\.|\\.|\\.|\\*| |\\\\|\u{e9}){0,10}") {
            let by_labels = split_labels(&name).iter().all(|l| valid_label(l));
            proptest::prop_assert_eq!(is_selectable_name(&name), by_labels, "{:?}", name);
        }
    }

    /// The DNS allow-all matches any query name; as a toFQDNs selector it holds only clean
    /// names.
    #[test]
    fn match_all_selects_only_clean_names() {
        let all = NamePattern::match_pattern("*").unwrap();
        let microsoft = NamePattern::match_pattern("*.microsoft.com").unwrap();
        // (name, allowed by the DNS allow-all, selectable)
        let cases = [
            ("www.microsoft.com.", true, true),
            ("WWW.Microsoft.COM", true, true),
            (".", true, true),
            ("a\\032b.microsoft.com.", true, false),
            ("*.microsoft.com.", true, false),
            ("a b.com", true, false),
            ("a..b.", true, false),
        ];
        for (name, dns, selectable) in cases {
            assert_eq!(all.matches(name), dns, "{name:?}");
            assert_eq!(all.selects(name), selectable, "{name:?}");
            assert_eq!(is_selectable_name(&crate::normalize_name(name)), selectable, "{name:?}");
            // A narrower pattern never matches an unclean name, so selects and matches agree.
            assert_eq!(microsoft.selects(name), microsoft.matches(name), "{name:?}");
        }
    }
}
