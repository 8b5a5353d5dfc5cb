//! [`PatternSet`]: many `matchName` / `matchPattern` compiled into one matcher for the query path.
//!
//! Real policies are mostly exact names and `*.example.com` / `**.example.com` patterns, so those
//! go into hash maps keyed by the literal part: one lookup for an exact name, one for a single-star
//! first label, and one per label boundary for `**.`. Patterns of stars only are a flag. Whatever
//! is left (`*cilium.io`, `api-*.example.com`, `**.*.io`) is compiled into one multi-pattern lazy
//! DFA (regex-automata's hybrid DFA) that reports every pattern matching, in a single pass over
//! the name. `benches/patterns.rs` compares this with one regex-automata `meta::Regex` over all
//! patterns: the regex is as fast or faster up to about a thousand patterns (0.1-0.2 us a name),
//! but at ten thousand its lazy DFA states carry thousands of NFA states each and every new name
//! costs milliseconds, while this set stays near 0.3 us: the hash indexes take the common shapes
//! out of the automaton whatever their number.

use crate::normalized_name;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::{RefUnwindSafe, UnwindSafe};

use regex_automata::hybrid::dfa::{Cache, DFA, OverlappingState};
use regex_automata::util::pool::Pool;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchError, MatchKind, nfa::thompson};

use super::{NamePattern, PatternKind, is_name_char};

/// Lazy DFA cache budget. Names are short and the alphabet is small, so even thousands of
/// wildcard patterns settle into a few thousand states; a cache this size is rarely cleared.
const DFA_CACHE_BYTES: usize = 8 << 20;

/// Many patterns compiled into one matcher. Indices returned refer to the order given to
/// [`PatternSet::new`]. Agrees with [`NamePattern::matches`] on every name (property-tested).
#[derive(Clone, Default)]
pub struct PatternSet {
    patterns: Vec<NamePattern>,
    /// Normalized name -> patterns that match exactly it (`matchName`, star-free `matchPattern`).
    exact: Literals,
    /// `*.rest.` keyed by `rest.`: the first label is any run of name characters.
    one_star: Literals,
    /// `**.rest.` keyed by `rest.`: one or more whole labels before `rest.`.
    subdomains: Literals,
    /// Patterns of stars only: they match every name, whatever its bytes.
    all: Vec<u32>,
    /// Everything else.
    automaton: Option<Automaton>,
}

/// Keys of these maps come from policy, never from queries, so a fast unkeyed hash is safe: a
/// queried name cannot lengthen a probe sequence without a colliding key already in the map.
type LiteralMap = HashMap<Box<str>, Vec<u32>, BuildHasherDefault<FxHasher>>;

/// A literal map and the label counts of its keys: most probes are for a count no key has, and
/// are answered without hashing.
#[derive(Clone, Default)]
struct Literals {
    map: LiteralMap,
    /// Bit n: some key has n dots (labels), 63 standing for 63 or more.
    dot_counts: u64,
}

fn dot_bit(dots: usize) -> u64 {
    1 << dots.min(63)
}

impl Literals {
    fn insert(&mut self, key: &str, id: u32) {
        self.dot_counts |= dot_bit(key.bytes().filter(|&b| b == b'.').count());
        self.map.entry(key.into()).or_default().push(id);
    }

    /// The patterns keyed by `key`, which has `dots` dots.
    fn get(&self, key: &str, dots: usize) -> Option<&[u32]> {
        if self.dot_counts & dot_bit(dots) == 0 {
            return None;
        }
        self.map.get(key).map(Vec::as_slice)
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

impl PatternSet {
    pub fn new(patterns: impl IntoIterator<Item = NamePattern>) -> Self {
        let patterns: Vec<NamePattern> = patterns.into_iter().collect();
        let mut set = PatternSet { patterns: Vec::new(), ..Default::default() };
        let mut rest: Vec<(String, u32)> = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            let id = u32::try_from(i).expect("more than 4 billion patterns");
            match classify(p) {
                Shape::Exact => set.exact.insert(p.as_str(), id),
                Shape::All => set.all.push(id),
                Shape::OneStar(suffix) => set.one_star.insert(suffix, id),
                Shape::Subdomains(suffix) => set.subdomains.insert(suffix, id),
                Shape::Other => rest.push((p.to_regex(), id)),
            }
        }
        set.automaton = Automaton::build(rest);
        set.patterns = patterns;
        set
    }

    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn patterns(&self) -> &[NamePattern] {
        &self.patterns
    }

    /// Does any pattern match `name`? `name` need not be normalized.
    pub fn is_match(&self, name: &str) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let name = normalized_name(name);
        let name = name.as_ref();
        let dots = name.bytes().filter(|&b| b == b'.').count();
        if self.exact.get(name, dots).is_some() {
            return true;
        }
        if !self.all.is_empty() {
            return true;
        }
        if let Some(suffix) = one_star_suffix(name)
            && self.one_star.get(suffix, dots - 1).is_some()
        {
            return true;
        }
        if !self.subdomains.is_empty()
            && subdomain_suffixes(name).enumerate().any(|(i, s)| self.subdomains.get(s, dots - 1 - i).is_some())
        {
            return true;
        }
        match &self.automaton {
            Some(a) => a.any(name, &self.patterns),
            None => false,
        }
    }

    /// Indices of every pattern matching `name`, ascending, written into `out` (cleared first).
    pub fn matching_into(&self, name: &str, out: &mut Vec<usize>) {
        out.clear();
        if self.patterns.is_empty() {
            return;
        }
        let name = normalized_name(name);
        let name = name.as_ref();
        let dots = name.bytes().filter(|&b| b == b'.').count();
        let mut push = |ids: &[u32]| out.extend(ids.iter().map(|&i| i as usize));
        if let Some(ids) = self.exact.get(name, dots) {
            push(ids);
        }
        push(&self.all);
        if let Some(ids) = one_star_suffix(name).and_then(|s| self.one_star.get(s, dots - 1)) {
            push(ids);
        }
        if !self.subdomains.is_empty() {
            for (i, suffix) in subdomain_suffixes(name).enumerate() {
                if let Some(ids) = self.subdomains.get(suffix, dots - 1 - i) {
                    push(ids);
                }
            }
        }
        if let Some(a) = &self.automaton {
            a.all(name, &self.patterns, out);
        }
        out.sort_unstable();
    }
}

impl fmt::Debug for PatternSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PatternSet")
            .field("patterns", &self.patterns)
            .field("exact", &self.exact.len())
            .field("one_star", &self.one_star.len())
            .field("subdomains", &self.subdomains.len())
            .field("all", &self.all.len())
            .field("automaton", &self.automaton.as_ref().map_or(0, |a| a.ids.len()))
            .finish()
    }
}

enum Shape<'a> {
    Exact,
    All,
    OneStar(&'a str),
    Subdomains(&'a str),
    Other,
}

fn classify(p: &NamePattern) -> Shape<'_> {
    let text = p.as_str();
    if p.kind() == PatternKind::Name || !text.contains('*') {
        return Shape::Exact;
    }
    if p.matches_all() {
        return Shape::All;
    }
    // Normalized text always ends with '.', and a stars-only first label before it would have
    // been `matches_all`, so a suffix found here is a non-empty name ending in '.'.
    if let Some(suffix) = text.strip_prefix("*.")
        && !suffix.contains('*')
    {
        return Shape::OneStar(suffix);
    }
    if let Some(suffix) = text.strip_prefix("**.")
        && !suffix.contains('*')
    {
        return Shape::Subdomains(suffix);
    }
    Shape::Other
}

fn name_byte(b: u8) -> bool {
    is_name_char(b as char)
}

/// For `*.rest.`: the part after the first label when that label is made of name characters
/// (possibly none, as the reference's `*` matches an empty run).
fn one_star_suffix(name: &str) -> Option<&str> {
    let dot = name.find('.')?;
    let suffix = &name[dot + 1..];
    (!suffix.is_empty() && name.as_bytes()[..dot].iter().all(|&b| name_byte(b))).then_some(suffix)
}

/// For `**.rest.`: every suffix that follows one or more whole, valid labels.
fn subdomain_suffixes(name: &str) -> impl Iterator<Item = &str> {
    let bytes = name.as_bytes();
    let mut label_start = 0;
    let mut pos = 0;
    std::iter::from_fn(move || {
        while pos < bytes.len() {
            let b = bytes[pos];
            pos += 1;
            if b == b'.' {
                if pos - 1 == label_start || pos >= bytes.len() {
                    // An empty label ends the run of valid prefixes; the final dot leaves no suffix.
                    pos = bytes.len();
                    return None;
                }
                label_start = pos;
                return Some(&name[pos..]);
            } else if !name_byte(b) {
                pos = bytes.len();
                return None;
            }
        }
        None
    })
}

/// The wildcard patterns no hash index covers, as one lazy DFA reporting all matches.
#[derive(Clone)]
struct Automaton {
    /// None only if compiling failed, which generated regexes should never do: the patterns are
    /// then matched one by one with the reference rather than dropped.
    dfa: Option<Lazy>,
    /// DFA pattern id -> index in the set.
    ids: Vec<u32>,
}

struct Lazy {
    dfa: DFA,
    caches: Pool<Cache, CacheFn>,
}

type CacheFn = Box<dyn Fn() -> Cache + Send + Sync + UnwindSafe + RefUnwindSafe>;

impl Lazy {
    fn new(dfa: DFA) -> Lazy {
        let for_pool = dfa.clone();
        let create: CacheFn = Box::new(move || for_pool.create_cache());
        Lazy { dfa, caches: Pool::new(create) }
    }

    /// Every matching DFA pattern id, in one pass; `found` returns false to stop early.
    fn search(&self, name: &str, mut found: impl FnMut(usize) -> bool) -> Result<(), MatchError> {
        let mut cache = self.caches.get();
        let input = Input::new(name).anchored(Anchored::Yes);
        let mut state = OverlappingState::start();
        loop {
            self.dfa.try_search_overlapping_fwd(&mut cache, &input, &mut state)?;
            match state.get_match() {
                Some(m) if found(m.pattern().as_usize()) => {}
                _ => return Ok(()),
            }
        }
    }
}

impl Clone for Lazy {
    fn clone(&self) -> Self {
        Lazy::new(self.dfa.clone())
    }
}

impl Automaton {
    fn build(rest: Vec<(String, u32)>) -> Option<Automaton> {
        if rest.is_empty() {
            return None;
        }
        let (regexes, ids): (Vec<String>, Vec<u32>) = rest.into_iter().unzip();
        let dfa = DFA::builder()
            .configure(
                DFA::config()
                    .match_kind(MatchKind::All)
                    .cache_capacity(DFA_CACHE_BYTES)
                    .skip_cache_capacity_check(true),
            )
            // Bytes, not Unicode: names are matched as the ASCII they must be, and without
            // Unicode classes the lazy DFA has no quit bytes, so searches cannot fail.
            .syntax(syntax::Config::new().unicode(false).utf8(false))
            .thompson(thompson::Config::new().utf8(false))
            .build_many(&regexes);
        let dfa = match dfa {
            Ok(dfa) => Some(Lazy::new(dfa)),
            Err(err) => {
                tracing::error!(error = %err, patterns = ids.len(), "compiling name patterns failed; matching them one by one");
                None
            }
        };
        Some(Automaton { dfa, ids })
    }

    fn any(&self, name: &str, patterns: &[NamePattern]) -> bool {
        let mut hit = false;
        if let Some(lazy) = &self.dfa {
            let searched = lazy.search(name, |_| {
                hit = true;
                false
            });
            match searched {
                Ok(()) => return hit,
                Err(err) => tracing::warn!(error = %err, "lazy DFA gave up; matching name patterns one by one"),
            }
        }
        self.ids.iter().any(|&id| patterns[id as usize].matches(name))
    }

    fn all(&self, name: &str, patterns: &[NamePattern], out: &mut Vec<usize>) {
        let start = out.len();
        if let Some(lazy) = &self.dfa {
            // Anchored at both ends, a pattern can only match at the end of the name, so each is
            // reported once.
            let searched = lazy.search(name, |i| {
                out.push(self.ids[i] as usize);
                true
            });
            match searched {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "lazy DFA gave up; matching name patterns one by one");
                    out.truncate(start);
                }
            }
        }
        out.extend(self.ids.iter().filter(|&&id| patterns[id as usize].matches(name)).map(|&id| id as usize));
    }
}

/// The rustc/Firefox multiply-rotate hash: a few cycles per word, plenty for policy-chosen keys.
#[derive(Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rem = chunks.remainder();
        if !rem.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rem.len()].copy_from_slice(rem);
            self.add(u64::from_le_bytes(buf));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pat(text: &str) -> NamePattern {
        NamePattern::match_pattern(text).unwrap()
    }

    fn name(text: &str) -> NamePattern {
        NamePattern::match_name(text).unwrap()
    }

    /// Every example of the pattern semantics, run through a set holding only that pattern and
    /// through one set holding all of them (so the indexes and the DFA see crowded company).
    #[test]
    fn issue_examples_on_sets() {
        let cases: &[(NamePattern, &str, bool)] = &[
            (pat("*.cilium.io"), "sub.cilium.io", true),
            (pat("*.cilium.io"), "cilium.io", false),
            (pat("*.cilium.io"), "a.b.cilium.io", false),
            (pat("*cilium.io"), "cilium.io", true),
            (pat("*cilium.io"), "subcilium.io", true),
            (pat("*cilium.io"), "www.cilium.io", false),
            (pat("part*ial.com"), "partial.com", true),
            (pat("part*ial.com"), "part-of-ial.com", true),
            (pat("part*ial.com"), "part.ial.com", false),
            (pat("**.cilium.io"), "a.b.cilium.io", true),
            (pat("**.cilium.io"), "sub.cilium.io", true),
            (pat("**.cilium.io"), "cilium.io", false),
            (pat("**.*.io"), "a.b.cilium.io", true),
            (pat("**.*.io"), "cilium.io", false),
            (pat("*"), "anything.at.all.", true),
            (pat("*"), ".", true),
            // The DNS allow-all allows what no selector could hold (see `NamePattern::selects`).
            (pat("*"), "bad name.com", true),
            (pat("*"), "a\\032b.example.", true),
            (pat("*"), "*.example.com.", true),
            (pat("*"), "a..b.", true),
            (pat("*.example.com"), "*.example.com.", false),
            (pat("*.example.com"), "a\\032b.example.com.", false),
            (pat("**.example.com"), "*.a.example.com.", false),
            (pat("a*.example.com"), "a*.example.com.", false),
            (pat("**"), "x.y", true),
            (pat("***"), "x.y", true),
            (pat("***"), "x y.*.", true),
            (pat("*.Microsoft.COM."), "WWW.microsoft.com", true),
            (pat("www.microsoft.com"), "WWW.Microsoft.Com.", true),
            (pat("www.microsoft.com"), "microsoft.com", false),
            (name("www.microsoft.com"), "www.microsoft.com..", true),
            (name("www.microsoft.com"), "www.microsoft.co", false),
            (pat("api-*.example.com"), "api-v2.example.com", true),
            (pat("api-*.example.com"), "api-.example.com", true),
            (pat("api-*.example.com"), "web.example.com", false),
            (pat("*.*.example.com"), "a.b.example.com", true),
            (pat("*.*.example.com"), "a.example.com", false),
        ];
        let crowd = PatternSet::new(cases.iter().map(|(p, _, _)| p.clone()));
        let mut out = Vec::new();
        for (i, (p, n, want)) in cases.iter().enumerate() {
            assert_eq!(p.matches(n), *want, "reference: {p} name {n:?}");
            let alone = PatternSet::new([p.clone()]);
            assert_eq!(alone.is_match(n), *want, "set of one: {p} name {n:?}");
            alone.matching_into(n, &mut out);
            assert_eq!(out == [0], *want, "set of one, matching_into: {p} name {n:?}");
            crowd.matching_into(n, &mut out);
            assert_eq!(out.contains(&i), *want, "crowded set: {p} name {n:?}: {out:?}");
            let reference: Vec<usize> =
                cases.iter().enumerate().filter(|(_, (q, _, _))| q.matches(n)).map(|(j, _)| j).collect();
            assert_eq!(out, reference, "crowded set vs reference for {n:?}");
        }
    }

    #[test]
    fn duplicates_and_empty() {
        let set = PatternSet::new([pat("*.a.com"), name("x.a.com"), pat("*.a.com"), pat("x*.a.com")]);
        let mut out = vec![99];
        set.matching_into("X.A.COM", &mut out);
        assert_eq!(out, [0, 1, 2, 3]);
        set.matching_into("y.a.com", &mut out);
        assert_eq!(out, [0, 2]);
        let empty = PatternSet::default();
        assert!(!empty.is_match("a.com"));
        empty.matching_into("a.com", &mut out);
        assert!(out.is_empty());
        assert!(empty.is_empty());
        let cloned = set.clone();
        assert!(cloned.is_match("xyz.a.com") && cloned.len() == 4);
    }

    #[test]
    fn regexes_for_patterns() {
        for (p, want) in [
            (pat("*.cilium.io"), r"^[-0-9a-z_]*\.cilium\.io\.$"),
            (pat("**.cilium.io"), r"^(?:[-0-9a-z_]+\.)+cilium\.io\.$"),
            (pat("*"), r"^(?s-u:.)*$"),
            (name("a.b"), r"^a\.b\.$"),
        ] {
            assert_eq!(p.to_regex(), want, "{p}");
        }
    }

    /// Labels from a tiny alphabet so random names and patterns actually meet.
    fn label() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!['a', 'b', 'A', '-', '_', '*', '*', ' ']), 0..4)
            .prop_map(|cs| cs.into_iter().collect())
    }

    fn dotted(labels: Vec<String>, trailing_dot: bool) -> String {
        let mut s = labels.join(".");
        if trailing_dot {
            s.push('.');
        }
        s
    }

    /// Query names as the proxy may see them: stars, spaces and empty labels included.
    fn name_strategy() -> impl Strategy<Value = String> {
        (prop::collection::vec(label(), 0..5), any::<bool>()).prop_map(|(labels, dot)| dotted(labels, dot))
    }

    fn pattern_strategy() -> impl Strategy<Value = NamePattern> {
        let shaped = (
            prop::sample::select(vec!["", "", "*.", "**.", "*", "**"]),
            prop::collection::vec(label(), 0..4),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(prefix, labels, dot, exact)| {
                let text = format!("{prefix}{}", dotted(labels, dot));
                if exact { NamePattern::match_name(&text.replace('*', "b")) } else { NamePattern::match_pattern(&text) }
            });
        prop_oneof![
            8 => shaped,
            1 => prop::sample::select(vec!["*", "**", "***."]).prop_map(NamePattern::match_pattern),
        ]
        .prop_filter_map("invalid pattern", Result::ok)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn set_agrees_with_reference(
            patterns in prop::collection::vec(pattern_strategy(), 0..12),
            names in prop::collection::vec(name_strategy(), 1..8),
        ) {
            let set = PatternSet::new(patterns.clone());
            let mut out = Vec::new();
            for n in &names {
                let want: Vec<usize> =
                    patterns.iter().enumerate().filter(|(_, p)| p.matches(n)).map(|(i, _)| i).collect();
                set.matching_into(n, &mut out);
                prop_assert_eq!(&out, &want, "name {:?} patterns {:?}", n, patterns);
                prop_assert_eq!(set.is_match(n), !want.is_empty(), "is_match name {:?}", n);
            }
        }
    }
}
