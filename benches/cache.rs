//! fqdn-cache costs: learning one answer with 10,000 selectors in force, lookups, a GC pass over
//! 1,000,000 entries, and memory per name/IP entry at 1,000,000 entries (measured with a
//! counting allocator and printed before the timings).
//!
//! `cargo bench --bench cache -- --warm-up-time 1 --measurement-time 3`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use fqdn_cache::pattern::NamePattern;
use fqdn_cache::{Answer, Cache, CacheConfig, EndpointId, LastUsed, PortProto, Scope, SelectorRule};

/// Counts live heap bytes and allocations, for the memory figure.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        LIVE_ALLOCS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ENDPOINTS: u32 = 100;

/// 10,000 selectors: 100 endpoints with 100 rules each, shaped like the patterns bench (exact
/// names, `*.zone`, `**.corp`, and other wildcards).
fn selectors(endpoint: u32) -> Vec<SelectorRule> {
    (0..100)
        .map(|r| {
            let i = endpoint * 100 + r;
            let text = match i % 10 {
                0..=3 => format!("svc{i}.ns{}.example.com", i % 97),
                4 | 5 => format!("*.zone{i}.example.com"),
                6 => format!("**.corp{i}.example.net"),
                7 => format!("api-*.region{i}.example.org"),
                8 => format!("*cdn{i}.net"),
                _ => format!("**.*.cloud{i}.io"),
            };
            let pattern = if i % 10 <= 1 { NamePattern::match_name(&text) } else { NamePattern::match_pattern(&text) };
            SelectorRule { pattern: pattern.unwrap(), ports: vec![PortProto::ANY] }
        })
        .collect()
}

fn with_selectors(scope: Scope, t0: Instant) -> Cache {
    let mut cache = Cache::new(CacheConfig { scope, ..CacheConfig::default() }, t0);
    cache.set_selectors_many((0..ENDPOINTS).map(|e| (EndpointId(e), selectors(e))));
    cache
}

fn v4(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
}

/// Answer `k` for endpoint `e`: a name matching one of its `*.zone` selectors, 4 IPs.
fn answer(e: u32, k: u32) -> Answer {
    let zone = e * 100 + 4;
    Answer {
        endpoint: EndpointId(e),
        qname: format!("host{k}.zone{zone}.example.com."),
        cnames: Vec::new(),
        ips: (0..4).map(|j| v4(k * 4 + j)).collect(),
        ttl: 300,
    }
}

/// Answer `k` of the endpoint at its quota: a new name, one address.
fn quota_answer(k: u32) -> Answer {
    Answer {
        endpoint: EndpointId(1),
        qname: format!("n{k}.quota.example."),
        cnames: Vec::new(),
        ips: vec![v4(k)],
        ttl: 3_600,
    }
}

/// A cache of `names` names x `ips_per_name` IPs spread over the endpoints, TTLs 60..=360 s.
fn filled(names: u32, ips_per_name: u32, t0: Instant) -> Cache {
    let mut cache = Cache::new(CacheConfig::default(), t0);
    for k in 0..names {
        let ips = (0..ips_per_name)
            .map(|j| {
                let n = k * ips_per_name + j;
                if n % 4 == 3 { IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(n))) } else { v4(n) }
            })
            .collect();
        let a = Answer {
            endpoint: EndpointId(k % ENDPOINTS),
            qname: format!("host{k}.ns{}.svc.cluster.local.", k % 300),
            cnames: Vec::new(),
            ips,
            ttl: 60 + k % 301,
        };
        cache.learn(&a, t0);
    }
    cache
}

fn memory_report() {
    let t0 = Instant::now();
    for (names, per_name) in [(1_000_000u32, 1u32), (250_000, 4)] {
        let (bytes0, allocs0) = (LIVE_BYTES.load(Ordering::Relaxed), LIVE_ALLOCS.load(Ordering::Relaxed));
        let cache = filled(names, per_name, t0);
        let bytes = LIVE_BYTES.load(Ordering::Relaxed) - bytes0;
        let allocs = LIVE_ALLOCS.load(Ordering::Relaxed) - allocs0;
        let entries = cache.counters().entries as f64;
        // glibc malloc adds about 8 bytes per allocation and rounds to 16: an upper estimate.
        println!(
            "memory: {} entries ({names} names x {per_name} IPs): {:.1} bytes/entry requested, \
             {:.1} with ~16 B malloc overhead per allocation ({allocs} live allocations)",
            entries,
            bytes as f64 / entries,
            (bytes + 16 * allocs) as f64 / entries,
        );
        drop(black_box(cache));
    }
}

fn bench(c: &mut Criterion) {
    memory_report();

    let t0 = Instant::now();
    let mut group = c.benchmark_group("cache_learn");
    for scope in [Scope::Endpoint, Scope::Node] {
        let mut cache = with_selectors(scope, t0);
        // New names each time (the allow set grows by 4 keys per answer); every 100,000 answers
        // the cache is emptied by a GC pass outside the timing.
        group.bench_function(format!("new_name_4_ips_10k_selectors/{scope}"), |b| {
            let mut k = 0u32;
            let mut epoch = 0u64;
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    if k == 100_000 {
                        epoch += 1;
                        cache.gc(t0 + Duration::from_secs(epoch * 1_000), &[]);
                        k = 0;
                    }
                    let a = answer(k % ENDPOINTS, k);
                    let now = t0 + Duration::from_secs(epoch * 1_000);
                    let start = Instant::now();
                    black_box(cache.learn(black_box(&a), now));
                    spent += start.elapsed();
                    k += 1;
                }
                spent
            })
        });
        let mut cache = with_selectors(scope, t0);
        let a = answer(7, 7);
        cache.learn(&a, t0);
        group.bench_function(format!("refresh_4_ips_10k_selectors/{scope}"), |b| {
            b.iter(|| black_box(cache.learn(black_box(&a), t0)))
        });
    }

    // One endpoint at its quota (10,000 learned entries) learning name after name: each new
    // name makes room by evicting its own oldest idle entries. The mean is criterion's; the
    // worst single answer over 20,000 is what every other endpoint's answers wait behind (the
    // cache lock), printed apart.
    let at_quota = || {
        let mut cache = Cache::new(CacheConfig::default(), t0);
        cache.set_selectors_many([(
            EndpointId(1),
            vec![SelectorRule { pattern: NamePattern::match_pattern("*.quota.example.").unwrap(), ports: vec![] }],
        )]);
        let quota = CacheConfig::DEFAULT_MAX_LEARNED as u32;
        for k in 0..quota {
            cache.learn(&quota_answer(k), t0 + Duration::from_millis(u64::from(k)));
        }
        (cache, quota)
    };
    let (mut cache, mut k) = at_quota();
    let mut worst = Duration::ZERO;
    for _ in 0..20_000 {
        let now = t0 + Duration::from_millis(u64::from(k));
        let start = Instant::now();
        black_box(cache.learn(&quota_answer(k), now));
        worst = worst.max(start.elapsed());
        k += 1;
    }
    println!("cache_learn/new_name_at_quota_10k: worst single answer of 20,000: {worst:?}");
    let (mut cache, mut k) = at_quota();
    group.bench_function("new_name_at_quota_10k", |b| {
        b.iter(|| {
            let now = t0 + Duration::from_millis(u64::from(k));
            k += 1;
            black_box(cache.learn(black_box(&quota_answer(k)), now))
        })
    });
    group.finish();

    let big = filled(250_000, 4, t0);
    let mut group = c.benchmark_group("cache_lookup");
    group.bench_function("names_for_ip_1M_entries", |b| {
        let mut n = 0u32;
        b.iter(|| {
            n = (n + 7919) % 1_000_000;
            let ip =
                if n % 4 == 3 { IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(n))) } else { v4(n) };
            black_box(big.names_for_ip(EndpointId((n / 4) % ENDPOINTS), ip))
        })
    });
    group.bench_function("ips_for_name_1M_entries", |b| {
        let mut k = 0u32;
        let names: Vec<String> =
            (0..1000).map(|i| format!("host{}.ns{}.svc.cluster.local.", i * 211, (i * 211) % 300)).collect();
        b.iter(|| {
            k = (k + 1) % 1000;
            black_box(big.ips_for_name(EndpointId((k * 211) % ENDPOINTS), &names[k as usize]))
        })
    });
    group.finish();
    drop(big);

    let mut group = c.benchmark_group("cache_gc");
    group.sample_size(10);
    // The timer pass when nothing is due: what runs every second on a quiet node.
    let mut quiet = filled(250_000, 4, t0);
    group.bench_function("pass_nothing_due_1M_entries", |b| {
        b.iter(|| black_box(quiet.gc(t0 + Duration::from_secs(30), &[])))
    });
    drop(quiet);
    // One second's worth: TTLs spread over 301 s, so ~1/301 of the entries expire per pass.
    group.bench_function("pass_one_second_due_1M_entries", |b| {
        b.iter_batched(
            || filled(250_000, 4, t0),
            |mut cache| {
                let d = cache.gc(t0 + Duration::from_secs(61), &[]);
                (cache, d)
            },
            BatchSize::PerIteration,
        )
    });
    // Everything expires at once (after a long pause), with a usage report of 10,000 IPs.
    let usage: Vec<LastUsed> = (0..10_000)
        .map(|n| LastUsed { endpoint: EndpointId((n / 4) % ENDPOINTS), ip: v4(n), ago: Duration::from_secs(1) })
        .collect();
    group.bench_function("pass_all_due_1M_entries", |b| {
        b.iter_batched(
            || filled(250_000, 4, t0),
            |mut cache| {
                let d = cache.gc(t0 + Duration::from_secs(3_600), &usage);
                (cache, d)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
