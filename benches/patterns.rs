//! Name pattern matching cost: `PatternSet` with 10, 1,000 and 10,000 patterns, per name, for
//! names that match and names that do not, plus compile time. One regex-automata `meta::Regex`
//! over the same patterns (their `NamePattern::to_regex`) is measured alongside as the
//! alternative the compiled set was chosen over.
//!
//! `cargo bench --bench patterns -- --warm-up-time 1 --measurement-time 3`
//! (`FQDND_BENCH_META_10K=1` adds the meta::Regex matching runs at 10,000 patterns: minutes.)

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fqdn_cache::pattern::{NamePattern, PatternSet};
use regex_automata::nfa::thompson::WhichCaptures;
use regex_automata::{Anchored, Input, MatchKind, meta};

/// Deterministic policy-like patterns: mostly exact names and `*.` / `**.` zones, a fifth other
/// wildcards (prefix-star labels, stars inside labels, `**.*.` forms).
fn patterns(n: usize) -> Vec<NamePattern> {
    (0..n)
        .map(|i| {
            let text = match i % 10 {
                0..=3 => format!("svc{i}.ns{}.example.com", i % 97),
                4 | 5 => format!("*.zone{i}.example.com"),
                6 => format!("**.corp{i}.example.net"),
                7 => format!("api-*.region{i}.example.org"),
                8 => format!("*cdn{i}.net"),
                _ => format!("**.*.cloud{i}.io"),
            };
            if i % 10 <= 1 { NamePattern::match_name(&text) } else { NamePattern::match_pattern(&text) }.unwrap()
        })
        .collect()
}

/// Half the names match some pattern (every shape), half are near misses and strangers. They are
/// many and distinct, as a node's queries are: a lazy DFA cannot serve them all from states it
/// built for the previous iteration.
fn names(n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for k in 0..200 {
        let i = (k * 7919) % n;
        let hit = match i % 10 {
            0..=3 => format!("svc{i}.ns{}.example.com.", i % 97),
            4 | 5 => format!("www.zone{i}.example.com."),
            6 => format!("a.b.corp{i}.example.net."),
            7 => format!("api-eu.region{i}.example.org."),
            8 => format!("edgecdn{i}.net."),
            _ => format!("x.y.cloud{i}.io."),
        };
        out.push(hit);
        let miss = match k % 5 {
            0 => format!("svc{i}.ns{}.example.com.evil.", i % 97),
            1 => format!("zone{i}.example.com."),
            2 => format!("www.google{k}.com."),
            3 => format!("web.region{i}.example.org."),
            _ => format!("a.very.long.name.with.many.labels{k}.cluster.local."),
        };
        out.push(miss);
    }
    out
}

fn meta_regex(pats: &[NamePattern]) -> meta::Regex {
    let regexes: Vec<String> = pats.iter().map(NamePattern::to_regex).collect();
    meta::Regex::builder()
        // The same lazy DFA budget as PatternSet's; with the default 2 MB, 10,000 patterns fall
        // back to the PikeVM, whose per-search state for that many patterns exhausts memory.
        .configure(
            meta::Regex::config()
                .match_kind(MatchKind::All)
                .which_captures(WhichCaptures::None)
                .hybrid_cache_capacity(8 << 20),
        )
        .syntax(regex_automata::util::syntax::Config::new().unicode(false).utf8(false))
        .build_many(&regexes)
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let sizes = [10, 1_000, 10_000];

    let mut compile = c.benchmark_group("pattern_compile");
    compile.sample_size(10);
    for &n in &sizes {
        let pats = patterns(n);
        compile.bench_with_input(BenchmarkId::new("pattern_set", n), &pats, |b, pats| {
            b.iter(|| PatternSet::new(black_box(pats.clone())))
        });
        compile.bench_with_input(BenchmarkId::new("meta_regex", n), &pats, |b, pats| {
            b.iter(|| meta_regex(black_box(pats)))
        });
    }
    compile.finish();

    let mut matching = c.benchmark_group("pattern_match");
    matching.sample_size(20);
    for &n in &sizes {
        let pats = patterns(n);
        let set = PatternSet::new(pats.clone());
        let regex = meta_regex(&pats);
        let names = names(n);
        let hits = names.iter().filter(|name| set.is_match(name)).count();
        println!("{n} patterns: {hits} of {} names match", names.len());
        // Throughput in names, so criterion prints names/s; time per name = 1 / that.
        matching.throughput(Throughput::Elements(names.len() as u64));

        matching.bench_with_input(BenchmarkId::new("set_is_match", n), &names, |b, names| {
            b.iter(|| names.iter().filter(|name| set.is_match(black_box(name))).count())
        });
        let mut out = Vec::new();
        matching.bench_with_input(BenchmarkId::new("set_matching_into", n), &names, |b, names| {
            b.iter(|| {
                let mut total = 0;
                for name in names {
                    set.matching_into(black_box(name), &mut out);
                    total += out.len();
                }
                total
            })
        });
        // One meta::Regex over 10,000 patterns takes milliseconds per name (its lazy DFA states
        // hold thousands of NFA states each and keep being rebuilt): minutes per run, so only
        // on request.
        if n > 1_000 && std::env::var_os("FQDND_BENCH_META_10K").is_none() {
            println!("meta_regex matching at {n} patterns skipped; FQDND_BENCH_META_10K=1 runs it");
            continue;
        }
        matching.bench_with_input(BenchmarkId::new("meta_is_match", n), &names, |b, names| {
            b.iter(|| {
                names.iter().filter(|name| regex.is_match(Input::new(black_box(name)).anchored(Anchored::Yes))).count()
            })
        });
        matching.bench_with_input(BenchmarkId::new("meta_which_matches", n), &names, |b, names| {
            b.iter(|| {
                let mut total = 0;
                for name in names {
                    let mut which = regex_automata::PatternSet::new(regex.pattern_len());
                    regex.which_overlapping_matches(&Input::new(black_box(name)).anchored(Anchored::Yes), &mut which);
                    total += which.len();
                }
                total
            })
        });
    }
    matching.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
