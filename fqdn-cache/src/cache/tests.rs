use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use proptest::prelude::*;

use super::*;
use crate::{L4Proto, LastUsed, normalize_name};

fn ep(n: u32) -> EndpointId {
    EndpointId(n)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn at(t0: Instant, secs: f64) -> Instant {
    t0 + Duration::from_secs_f64(secs)
}

fn answer(endpoint: EndpointId, qname: &str, cnames: &[&str], ips: &[&str], ttl: u32) -> Answer {
    Answer {
        endpoint,
        qname: normalize_name(qname),
        cnames: cnames.iter().map(|c| normalize_name(c)).collect(),
        ips: ips.iter().map(|s| ip(s)).collect(),
        ttl,
    }
}

fn rule(pattern: &str) -> SelectorRule {
    SelectorRule { pattern: NamePattern::match_pattern(pattern).unwrap(), ports: Vec::new() }
}

fn any(endpoint: EndpointId, addr: &str) -> AllowKey {
    AllowKey { endpoint, ip: ip(addr), port: PortProto::ANY }
}

fn adds(keys: &[AllowKey]) -> Delta {
    Delta { add: keys.to_vec(), remove: Vec::new() }
}

fn removes(keys: &[AllowKey]) -> Delta {
    Delta { add: Vec::new(), remove: keys.to_vec() }
}

fn used(endpoint: EndpointId, addr: &str, ago: f64) -> LastUsed {
    LastUsed { endpoint, ip: ip(addr), ago: Duration::from_secs_f64(ago) }
}

fn cache(config: CacheConfig, t0: Instant) -> Cache {
    let mut c = Cache::new(config, t0);
    c.set_selectors(ep(1), vec![rule("*.example.com")]);
    c
}

#[test]
fn ttl_floor_and_rounding() {
    // (answer TTL, min TTL, learned at, second of expiry)
    let cases: &[(u32, u32, f64, u64)] = &[
        (10, 0, 0.0, 10),
        (0, 30, 0.0, 30),
        (100, 30, 0.0, 100),
        // TTL 0: gone at the first pass (unless a connection makes it a zombie).
        (0, 0, 0.0, 0),
        // Learned mid-second: expiry rounds up, never before the TTL ran out.
        (10, 0, 0.5, 11),
        (5, 5, 2.25, 8),
        (0, 0, 0.5, 1),
    ];
    for &(ttl, min_ttl, learned, expiry) in cases {
        let t0 = Instant::now();
        let mut c = cache(CacheConfig { min_ttl, ..CacheConfig::default() }, t0);
        let d = c.learn(&answer(ep(1), "www.example.com", &[], &["192.0.2.1"], ttl), at(t0, learned));
        assert_eq!(d, adds(&[any(ep(1), "192.0.2.1")]), "ttl {ttl} min {min_ttl}");
        let before = expiry as f64 - 0.001;
        if before >= learned {
            let d = c.gc(at(t0, before), &[]);
            assert!(d.is_empty(), "ttl {ttl} min {min_ttl} learned {learned}: still alive at {before}s: {d:?}");
        }
        let d = c.gc(at(t0, expiry as f64), &[]);
        assert_eq!(
            d,
            removes(&[any(ep(1), "192.0.2.1")]),
            "ttl {ttl} min {min_ttl} learned {learned}: gone at {expiry}s"
        );
        assert_eq!(c.counters().entries, 0);
    }
}

#[test]
fn cname_chain_records_every_name_with_the_chain_ttl() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheConfig::default(), t0);
    c.set_selectors(ep(1), vec![rule("*.cdn.net")]);
    // The proxy hands in the chain's lowest TTL; only a CNAME target matches the selector.
    let a = answer(ep(1), "WWW.Example.COM.", &["edge.cdn.net", "e1.cdn.net"], &["192.0.2.1", "2001:db8::1"], 7);
    let d = c.learn(&a, t0);
    assert_eq!(d, adds(&[any(ep(1), "192.0.2.1"), any(ep(1), "2001:db8::1")]));
    for name in ["www.example.com", "edge.cdn.net.", "E1.CDN.NET"] {
        assert_eq!(c.ips_for_name(ep(1), name), [ip("192.0.2.1"), ip("2001:db8::1")], "{name}");
    }
    assert_eq!(c.names_for_ip(ep(1), ip("192.0.2.1")), ["e1.cdn.net.", "edge.cdn.net.", "www.example.com."]);
    assert_eq!(c.counters().entries, 6);
    assert!(c.gc(at(t0, 6.5), &[]).is_empty());
    assert_eq!(c.gc(at(t0, 7.0), &[]), removes(&[any(ep(1), "192.0.2.1"), any(ep(1), "2001:db8::1")]));
    assert_eq!((c.counters().entries, c.counters().names), (0, 0));
}

#[test]
fn shared_ip_stays_until_every_name_expires() {
    let t0 = Instant::now();
    let mut c = cache(CacheConfig::default(), t0);
    assert_eq!(c.learn(&answer(ep(1), "a.example.com", &[], &["192.0.2.9"], 10), t0), adds(&[any(ep(1), "192.0.2.9")]));
    assert!(c.learn(&answer(ep(1), "b.example.com", &[], &["192.0.2.9"], 20), t0).is_empty(), "already allowed");
    assert!(c.gc(at(t0, 10.0), &[]).is_empty(), "b still maps to it");
    assert_eq!(c.names_for_ip(ep(1), ip("192.0.2.9")), ["b.example.com."]);
    assert_eq!(c.gc(at(t0, 20.0), &[]), removes(&[any(ep(1), "192.0.2.9")]));
    assert!(c.names_for_ip(ep(1), ip("192.0.2.9")).is_empty());
}

#[test]
fn refresh_never_shortens() {
    let t0 = Instant::now();
    let mut c = cache(CacheConfig::default(), t0);
    c.learn(&answer(ep(1), "a.example.com", &[], &["192.0.2.1"], 30), t0);
    c.learn(&answer(ep(1), "a.example.com", &[], &["192.0.2.1"], 5), at(t0, 1.0));
    assert!(c.gc(at(t0, 29.0), &[]).is_empty());
    c.learn(&answer(ep(1), "a.example.com", &[], &["192.0.2.1"], 60), at(t0, 29.0));
    assert!(c.gc(at(t0, 88.0), &[]).is_empty(), "refreshed to 89");
    assert_eq!(c.gc(at(t0, 89.0), &[]).remove.len(), 1);
}

#[test]
fn max_ips_per_name_evicts_earliest_expiry_first() {
    let t0 = Instant::now();
    let mut c = cache(CacheConfig { max_ips_per_name: 2, ..CacheConfig::default() }, t0);
    c.learn(&answer(ep(1), "a.example.com", &[], &["192.0.2.1"], 50), t0);
    c.learn(&answer(ep(1), "a.example.com", &[], &["192.0.2.2"], 10), t0);
    let d = c.learn(&answer(ep(1), "a.example.com", &[], &["192.0.2.3"], 10), t0);
    assert_eq!(d.add, [any(ep(1), "192.0.2.3")]);
    assert_eq!(d.remove, [any(ep(1), "192.0.2.2")], "earliest expiry goes");
    assert_eq!(c.ips_for_name(ep(1), "a.example.com"), [ip("192.0.2.1"), ip("192.0.2.3")]);
    assert_eq!(c.counters().evictions, 1);
    // The cap is per name and endpoint.
    c.learn(&answer(ep(1), "b.example.com", &[], &["192.0.2.4", "192.0.2.5"], 10), t0);
    c.learn(&answer(ep(2), "a.example.com", &[], &["192.0.2.6", "192.0.2.7"], 10), t0);
    assert_eq!(c.counters().evictions, 1);
    // An evicted IP another name still maps to stays allowed.
    c.learn(&answer(ep(1), "c.example.com", &[], &["192.0.2.1"], 10), t0);
    let d = c.learn(&answer(ep(1), "a.example.com", &[], &["192.0.2.8", "192.0.2.9"], 100), t0);
    assert_eq!(d.remove, [any(ep(1), "192.0.2.3")], "192.0.2.1 is still c's");
    assert_eq!(c.counters().evictions, 3);
}

#[test]
fn scope_endpoint_versus_node() {
    // (scope, allowed for endpoint 2 after endpoint 1's lookup)
    for (scope, shared) in [(Scope::Endpoint, false), (Scope::Node, true)] {
        let t0 = Instant::now();
        let mut c = Cache::new(CacheConfig { scope, ..CacheConfig::default() }, t0);
        c.set_selectors(ep(1), vec![rule("*.example.com")]);
        c.set_selectors(ep(2), vec![rule("**.com")]);
        c.set_selectors(ep(3), vec![rule("*.other.org")]);
        let d = c.learn(&answer(ep(1), "www.example.com", &[], &["192.0.2.1"], 10), t0);
        let mut want = vec![any(ep(1), "192.0.2.1")];
        if shared {
            want.push(any(ep(2), "192.0.2.1"));
        }
        assert_eq!(d, adds(&want), "{scope}");
        assert_eq!(c.allows(ep(2)).len(), usize::from(shared), "{scope}");
        assert!(c.allows(ep(3)).is_empty(), "{scope}: selector does not match");
        // A selector set later sees the same view.
        let d = c.set_selectors(ep(4), vec![rule("www.example.com")]);
        assert_eq!(d.add.len(), usize::from(shared), "{scope}");
        // Names for flow logs are the endpoint's own lookups in both scopes.
        assert!(c.names_for_ip(ep(2), ip("192.0.2.1")).is_empty());
        let d = c.gc(at(t0, 10.0), &[]);
        assert_eq!(d.remove.len(), if shared { 3 } else { 1 }, "{scope}");
    }
}

/// A name the DNS allow-all let through but no selector can hold (a literal `*` label, an
/// escaped byte) is cached, yet opens nothing, not even for `toFQDNs: [{matchPattern: "*"}]`.
#[test]
fn unclean_names_are_learned_but_never_selected() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheConfig::default(), t0);
    c.set_selectors(ep(1), vec![rule("*"), rule("*.example.com")]);
    for name in ["*.example.com", "a\\032b.example.com", "a b.example.com"] {
        let d = c.learn(&answer(ep(1), name, &[], &["192.0.2.7"], 60), t0);
        assert!(d.is_empty(), "{name}: {d:?}");
        assert_eq!(c.names_for_ip(ep(1), ip("192.0.2.7")).len(), 1, "{name} is in the cache");
        c.remove_endpoint(ep(1));
        c.set_selectors(ep(1), vec![rule("*"), rule("*.example.com")]);
    }
    // Learned first, selected later: still nothing.
    c.learn(&answer(ep(1), "*.example.com", &[], &["192.0.2.8"], 60), t0);
    assert!(c.set_selectors(ep(1), vec![rule("*")]).is_empty());
    // A clean name under the same selectors opens its IP.
    let d = c.learn(&answer(ep(1), "www.example.com", &[], &["192.0.2.9"], 60), t0);
    assert_eq!(d, adds(&[any(ep(1), "192.0.2.9")]));
}

#[test]
fn selector_changes_rederive_from_the_cache() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheConfig::default(), t0);
    assert!(c.learn(&answer(ep(1), "api.example.com", &[], &["192.0.2.1", "192.0.2.2"], 60), t0).is_empty());
    let tcp443 = PortProto { port: 443, proto: L4Proto::Tcp };
    let https = SelectorRule { pattern: NamePattern::match_name("api.example.com").unwrap(), ports: vec![tcp443] };
    let d = c.set_selectors(ep(1), vec![https.clone()]);
    let key = |a: &str| AllowKey { endpoint: ep(1), ip: ip(a), port: tcp443 };
    assert_eq!(d, adds(&[key("192.0.2.1"), key("192.0.2.2")]));
    assert_eq!(c.allows(ep(1)), [key("192.0.2.1"), key("192.0.2.2")]);
    // Adding a wider rule adds the any-port keys; the 443 ones stay.
    let d = c.set_selectors(ep(1), vec![https.clone(), rule("*.example.com")]);
    assert_eq!(d, adds(&[any(ep(1), "192.0.2.1"), any(ep(1), "192.0.2.2")]));
    // Dropping the narrow one removes only its keys.
    let d = c.set_selectors(ep(1), vec![rule("*.example.com")]);
    assert_eq!(d, removes(&[key("192.0.2.1"), key("192.0.2.2")]));
    // Same pattern twice merges; expiry still cleans up fully.
    c.set_selectors(ep(1), vec![rule("*.example.com"), rule("*.example.com"), rule("api.*.com")]);
    assert_eq!(c.gc(at(t0, 60.0), &[]), removes(&[any(ep(1), "192.0.2.1"), any(ep(1), "192.0.2.2")]));
    assert!(c.allows(ep(1)).is_empty());
    let d = c.set_selectors(ep(1), Vec::new());
    assert!(d.is_empty());
}

#[test]
fn selectors_for_many_endpoints_at_once() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheConfig { scope: Scope::Node, ..CacheConfig::default() }, t0);
    c.learn(&answer(ep(9), "a.example.com", &[], &["192.0.2.1"], 60), t0);
    let d = c.set_selectors_many([
        (ep(2), vec![rule("*.example.com")]),
        (ep(1), vec![rule("a.example.com"), rule("**.com")]),
        (ep(3), vec![rule("*.other.org")]),
    ]);
    assert_eq!(d, adds(&[any(ep(1), "192.0.2.1"), any(ep(2), "192.0.2.1")]));
    assert_eq!(c.counters().selectors, 4);
    // Re-setting the same patterns on another endpoint reuses the compiled set.
    let d = c.set_selectors_many([(ep(4), vec![rule("**.com")]), (ep(2), Vec::new())]);
    assert_eq!(d, Delta { add: vec![any(ep(4), "192.0.2.1")], remove: vec![any(ep(2), "192.0.2.1")] });
    assert_eq!(c.counters().selectors, 3);
    assert_eq!(c.gc(at(t0, 60.0), &[]).remove.len(), 2);
}

#[test]
fn zombie_kept_while_used_then_dropped() {
    let t0 = Instant::now();
    let mut c = cache(CacheConfig::default(), t0);
    c.learn(&answer(ep(1), "db.example.com", &[], &["192.0.2.5"], 10), t0);
    // Expired at 10; the connection was used at 10.2: kept.
    assert!(c.gc(at(t0, 10.5), &[used(ep(1), "192.0.2.5", 0.3)]).is_empty());
    assert_eq!(c.counters().zombies, 1);
    let rows = c.list(&ListFilter::default(), at(t0, 10.5), SystemTime::UNIX_EPOCH + Duration::from_secs(1000));
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].source, rows[0].ttl, rows[0].expires_unix), (Source::Connection, 0, 1000));
    // Used again since the previous pass: kept.
    assert!(c.gc(at(t0, 11.5), &[used(ep(1), "192.0.2.5", 0.2)]).is_empty());
    // Used only before the previous pass (second 11): dropped.
    assert_eq!(c.gc(at(t0, 12.5), &[used(ep(1), "192.0.2.5", 2.3)]), removes(&[any(ep(1), "192.0.2.5")]));
    assert_eq!((c.counters().zombies, c.counters().entries), (0, 0));
}

#[test]
fn zombie_usage_must_come_from_an_allowed_endpoint() {
    let t0 = Instant::now();
    let mut c = cache(CacheConfig::default(), t0);
    c.learn(&answer(ep(1), "db.example.com", &[], &["192.0.2.5"], 10), t0);
    // Endpoint 2 is not allowed this IP through the entry: its traffic does not keep it.
    assert_eq!(c.gc(at(t0, 10.0), &[used(ep(2), "192.0.2.5", 0.0)]).remove.len(), 1);
    // An entry no selector uses is not kept either.
    c.learn(&answer(ep(1), "db.other.org", &[], &["192.0.2.6"], 10), t0);
    assert!(c.gc(at(t0, 20.0), &[used(ep(1), "192.0.2.6", 0.0)]).is_empty());
    assert_eq!(c.counters().entries, 0);
}

#[test]
fn zombie_grace_period() {
    let t0 = Instant::now();
    let mut c = cache(CacheConfig { idle_grace: Duration::from_secs(5), ..CacheConfig::default() }, t0);
    c.learn(&answer(ep(1), "db.example.com", &[], &["192.0.2.5"], 10), t0);
    // Last used at 7, before expiry: within the grace, kept (but never used as a zombie).
    let report = |now: f64| [used(ep(1), "192.0.2.5", now - 7.0)];
    // Kept while 7 + 5 = 12 reaches the later of expiry (10) and the previous pass.
    for now in [10.0, 12.0, 13.0] {
        assert!(c.gc(at(t0, now), &report(now)).is_empty(), "at {now}");
        assert_eq!(c.counters().zombies, 1, "at {now}");
    }
    // The previous pass was at 13: idle too long.
    assert_eq!(c.gc(at(t0, 14.0), &report(14.0)).remove.len(), 1);
}

#[test]
fn zombie_revived_by_a_new_answer() {
    let t0 = Instant::now();
    let mut c = cache(CacheConfig::default(), t0);
    c.learn(&answer(ep(1), "db.example.com", &[], &["192.0.2.5"], 10), t0);
    assert!(c.gc(at(t0, 10.0), &[used(ep(1), "192.0.2.5", 0.0)]).is_empty());
    assert!(c.learn(&answer(ep(1), "db.example.com", &[], &["192.0.2.5"], 10), at(t0, 10.0)).is_empty());
    assert_eq!(c.counters().zombies, 0);
    assert!(c.gc(at(t0, 19.0), &[]).is_empty(), "a lookup again, no use needed");
    assert_eq!(c.gc(at(t0, 20.0), &[]).remove.len(), 1);
}

#[test]
fn max_zombies_evicts_never_used_then_oldest() {
    let t0 = Instant::now();
    let config = CacheConfig { max_zombies: 2, idle_grace: Duration::from_secs(5), ..CacheConfig::default() };
    let mut c = cache(config, t0);
    for (i, addr) in ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"].iter().enumerate() {
        c.learn(&answer(ep(1), &format!("n{i}.example.com"), &[], &[addr], 10), t0);
    }
    let now = 12.0;
    let usage = [
        used(ep(1), "192.0.2.1", now - 11.0), // used after expiry at 11
        used(ep(1), "192.0.2.2", now - 7.0),  // only before expiry: kept by grace, never used as zombie
        used(ep(1), "192.0.2.3", now - 10.0), // used after expiry at 10: the oldest use
        used(ep(1), "192.0.2.4", now - 12.0), // used at 12
    ];
    let d = c.gc(at(t0, now), &usage);
    assert_eq!(d, removes(&[any(ep(1), "192.0.2.2"), any(ep(1), "192.0.2.3")]));
    let c2 = c.counters();
    assert_eq!((c2.zombies, c2.zombie_evictions, c2.entries), (2, 2, 2));
    // Another endpoint's zombies are counted on their own.
    c.set_selectors(ep(2), vec![rule("*.example.com")]);
    c.learn(&answer(ep(2), "x.example.com", &[], &["192.0.2.1"], 1), at(t0, 12.0));
    assert!(
        c.gc(
            at(t0, 13.0),
            &[used(ep(1), "192.0.2.1", 0.0), used(ep(2), "192.0.2.1", 0.0), used(ep(1), "192.0.2.4", 0.0)]
        )
        .is_empty()
    );
    assert_eq!(c.counters().zombies, 3);
}

#[test]
fn remove_endpoint_drops_its_allows_and_lookups() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheConfig { scope: Scope::Node, ..CacheConfig::default() }, t0);
    c.set_selectors(ep(1), vec![rule("*.example.com")]);
    c.set_selectors(ep(2), vec![rule("*.example.com")]);
    c.learn(&answer(ep(1), "a.example.com", &[], &["192.0.2.1"], 10), t0);
    c.learn(&answer(ep(2), "b.example.com", &[], &["192.0.2.2"], 10), t0);
    let d = c.remove_endpoint(ep(1));
    // Endpoint 1's allows go; endpoint 2 loses the IP only endpoint 1 had looked up.
    assert_eq!(d, removes(&[any(ep(1), "192.0.2.1"), any(ep(1), "192.0.2.2"), any(ep(2), "192.0.2.1")]));
    assert_eq!(c.allows(ep(2)), [any(ep(2), "192.0.2.2")]);
    assert_eq!(c.counters().entries, 1);
}

#[test]
fn list_rows_and_filters() {
    let t0 = Instant::now();
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut c = cache(CacheConfig::default(), t0);
    c.learn(&answer(ep(1), "a.example.com", &[], &["192.0.2.2", "192.0.2.1"], 30), t0);
    c.learn(&answer(ep(1), "a.example.com", &[], &["192.0.2.3"], 60), t0);
    c.learn(&answer(ep(2), "b.other.org", &[], &["2001:db8::1"], 30), t0);
    let now = at(t0, 10.0);
    let rows = c.list(&ListFilter::default(), now, wall);
    let summary: Vec<(u32, &str, u32, i64, usize)> =
        rows.iter().map(|r| (r.endpoint.0, r.fqdn.as_str(), r.ttl, r.expires_unix, r.ips.len())).collect();
    assert_eq!(
        summary,
        [
            (1, "a.example.com.", 20, 1_700_000_020, 2),
            (1, "a.example.com.", 50, 1_700_000_050, 1),
            (2, "b.other.org.", 20, 1_700_000_020, 1)
        ]
    );
    assert_eq!(rows[0].ips, [ip("192.0.2.1"), ip("192.0.2.2")]);
    let only2 = c.list(&ListFilter { endpoint: Some(ep(2)), pattern: None }, now, wall);
    assert_eq!(only2.len(), 1);
    let pat = ListFilter { endpoint: None, pattern: Some(NamePattern::match_pattern("*.example.com").unwrap()) };
    assert_eq!(c.list(&pat, now, wall).len(), 2);
    let json = serde_json::to_value(&rows[2]).unwrap();
    assert_eq!(json["source"], "lookup");
    assert_eq!(json["ips"][0], "2001:db8::1");
}

#[test]
fn next_expiry_follows_the_timers() {
    let t0 = Instant::now();
    let mut c = cache(CacheConfig::default(), t0);
    assert_eq!(c.next_expiry(), None);
    c.learn(&answer(ep(1), "a.example.com", &[], &["192.0.2.1"], 30), t0);
    assert_eq!(c.next_expiry(), Some(at(t0, 30.0)));
}

/// A small cache model: entries with expiries, allows recomputed from scratch with the
/// reference matcher. No zombies (no usage) and no cap, which other tests cover.
#[derive(Default)]
struct Model {
    entries: BTreeMap<(u32, String, IpAddr), u64>,
    rules: BTreeMap<u32, Vec<String>>,
}

impl Model {
    fn allows(&self, scope: Scope, endpoint: u32) -> BTreeSet<AllowKey> {
        let mut out = BTreeSet::new();
        for pattern in self.rules.get(&endpoint).into_iter().flatten() {
            let p = NamePattern::match_pattern(pattern).unwrap();
            for (owner, name, ip) in self.entries.keys() {
                if (scope == Scope::Node || *owner == endpoint) && p.selects(name) {
                    out.insert(AllowKey { endpoint: EndpointId(endpoint), ip: *ip, port: PortProto::ANY });
                }
            }
        }
        out
    }
}

#[derive(Clone, Debug)]
enum Op {
    Learn { endpoint: u32, names: Vec<String>, ips: Vec<u8>, ttl: u32, advance_ms: u64 },
    Gc { advance_ms: u64 },
    Select { endpoint: u32, patterns: Vec<String> },
    Remove { endpoint: u32 },
}

fn op() -> impl Strategy<Value = Op> {
    // Names a DNS allow-all lets through but no selector may hold: a literal `*` label, an
    // escaped odd byte.
    let name =
        prop::sample::select(vec!["a.x.com", "b.x.com", "x.com", "a.y.org", "B.X.COM.", "*.x.com", "a\\032b.x.com"])
            .prop_map(String::from);
    let pattern =
        prop::sample::select(vec!["*.x.com", "x.com", "**.com", "*", "a.*.org", "b*.x.com"]).prop_map(String::from);
    prop_oneof![
        4 => (0..3u32, prop::collection::vec(name, 1..3), prop::collection::vec(0..4u8, 0..4), 0..5u32, 0..1500u64)
            .prop_map(|(endpoint, names, ips, ttl, advance_ms)| Op::Learn { endpoint, names, ips, ttl, advance_ms }),
        3 => (0..3000u64).prop_map(|advance_ms| Op::Gc { advance_ms }),
        2 => (0..3u32, prop::collection::vec(pattern, 0..3)).prop_map(|(endpoint, patterns)| Op::Select { endpoint, patterns }),
        1 => (0..3u32).prop_map(|endpoint| Op::Remove { endpoint }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// After every operation the allow sets equal the model's, and the deltas, applied in
    /// order, reproduce them (what the datapath will hold).
    #[test]
    fn allows_and_deltas_agree_with_a_model(
        scope in prop::sample::select(vec![Scope::Endpoint, Scope::Node]),
        min_ttl in 0..3u32,
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let t0 = Instant::now();
        let mut c = Cache::new(CacheConfig { scope, min_ttl, ..CacheConfig::default() }, t0);
        let mut model = Model::default();
        let mut datapath: BTreeSet<AllowKey> = BTreeSet::new();
        let mut now_ms = 0u64;
        for op in &ops {
            let delta = match op {
                Op::Learn { endpoint, names, ips, ttl, advance_ms } => {
                    now_ms += advance_ms;
                    let ips: Vec<IpAddr> = ips.iter().map(|i| IpAddr::from([192, 0, 2, *i])).collect();
                    let expires = now_ms.div_ceil(1000) + u64::from((*ttl).max(min_ttl));
                    let names: Vec<String> = names.iter().map(|n| normalize_name(n)).collect();
                    for n in &names {
                        for &i in &ips {
                            let e = model.entries.entry((*endpoint, n.clone(), i)).or_insert(0);
                            *e = (*e).max(expires);
                        }
                    }
                    let a = Answer { endpoint: EndpointId(*endpoint), qname: names[0].clone(), cnames: names[1..].to_vec(), ips, ttl: *ttl };
                    c.learn(&a, t0 + Duration::from_millis(now_ms))
                }
                Op::Gc { advance_ms } => {
                    now_ms += advance_ms;
                    model.entries.retain(|_, exp| *exp > now_ms / 1000);
                    c.gc(t0 + Duration::from_millis(now_ms), &[])
                }
                Op::Select { endpoint, patterns } => {
                    model.rules.insert(*endpoint, patterns.clone());
                    c.set_selectors(EndpointId(*endpoint), patterns.iter().map(|p| rule(p)).collect())
                }
                Op::Remove { endpoint } => {
                    model.rules.remove(endpoint);
                    model.entries.retain(|(owner, _, _), _| owner != endpoint);
                    c.remove_endpoint(EndpointId(*endpoint))
                }
            };
            for k in &delta.remove {
                prop_assert!(datapath.remove(k), "removal of a key never added: {:?} after {:?}", k, op);
            }
            for k in &delta.add {
                prop_assert!(datapath.insert(*k), "add of a key already there: {:?} after {:?}", k, op);
            }
            for e in 0..3 {
                let want = model.allows(scope, e);
                let got: BTreeSet<AllowKey> = c.allows(EndpointId(e)).into_iter().collect();
                prop_assert_eq!(&got, &want, "endpoint {} after {:?}", e, op);
                let held: BTreeSet<AllowKey> = datapath.iter().filter(|k| k.endpoint.0 == e).copied().collect();
                prop_assert_eq!(&held, &want, "datapath of endpoint {} after {:?}", e, op);
            }
            prop_assert_eq!(c.counters().entries as usize, model.entries.len());
        }
    }
}

mod snapshots {
    use std::fs;

    use super::*;
    use crate::CacheError;
    use crate::cache::set_aside;

    fn wall(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// A cache with a lookup, a CNAME chain, an IPv6 entry, a short-lived entry and a zombie.
    fn sample(t0: Instant) -> Cache {
        let mut c = cache(CacheConfig::default(), t0);
        c.learn(&answer(ep(1), "www.example.com", &["edge.example.com"], &["192.0.2.1", "2001:db8::1"], 300), t0);
        c.learn(&answer(ep(2), "short.example.com", &[], &["192.0.2.2"], 20), t0);
        c.learn(&answer(ep(1), "db.example.com", &[], &["192.0.2.3"], 10), t0);
        assert!(c.gc(at(t0, 10.0), &[used(ep(1), "192.0.2.3", 0.0)]).is_empty());
        assert_eq!(c.counters().zombies, 1);
        c
    }

    #[test]
    fn round_trip_honours_ttls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.snapshot");
        let t0 = Instant::now();
        let c = sample(t0);
        c.write_snapshot(&path, wall(1_000_010), at(t0, 10.0)).unwrap();
        assert!(fs::read_dir(dir.path()).unwrap().count() == 1, "no temporary file left");

        // short.example.com expires at wall 1_000_020: still there after 5 s down, not after 15.
        for (down, want_entries) in [(5u64, 6u64), (15, 5)] {
            let t1 = Instant::now();
            let mut r = Cache::restore(&path, CacheConfig::default(), wall(1_000_010 + down), t1).unwrap();
            assert_eq!((r.counters().entries, r.counters().zombies), (want_entries, 1), "down {down}s");
            let rows = r.list(&ListFilter::default(), t1, wall(1_000_010 + down));
            let www = rows.iter().find(|v| v.fqdn == "www.example.com.").unwrap();
            assert_eq!((www.ttl, www.expires_unix, www.ips.len()), (290 - down as u32, 1_000_300, 2));
            let db = rows.iter().find(|v| v.fqdn == "db.example.com.").unwrap();
            assert_eq!(db.source, Source::Connection);
            // Selectors are set again by the agent and pick up the restored entries.
            let d = r.set_selectors(ep(1), vec![rule("*.example.com")]);
            assert_eq!(d, adds(&[any(ep(1), "192.0.2.1"), any(ep(1), "192.0.2.3"), any(ep(1), "2001:db8::1")]));
            // The zombie is re-checked at the next pass: still used, kept; idle, gone.
            assert!(r.gc(at(t1, 1.0), &[used(ep(1), "192.0.2.3", 0.5)]).is_empty());
            assert_eq!(r.gc(at(t1, 3.0), &[]), removes(&[any(ep(1), "192.0.2.3")]));
        }
    }

    #[test]
    fn empty_cache_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        let t0 = Instant::now();
        Cache::new(CacheConfig::default(), t0).write_snapshot(&path, wall(5), t0).unwrap();
        let r = Cache::restore(&path, CacheConfig::default(), wall(6), t0).unwrap();
        assert_eq!(r.counters(), CacheCounters::default());
    }

    #[test]
    fn unusable_files_are_reported_and_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.snapshot");
        let t0 = Instant::now();
        sample(t0).write_snapshot(&path, wall(1_000_010), at(t0, 10.0)).unwrap();
        let good = fs::read(&path).unwrap();

        let mut flipped = good.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x40;
        let mut version = good.clone();
        version[8..12].copy_from_slice(&7u32.to_le_bytes());
        let mut trailing = good.clone();
        trailing.push(0);
        // A payload that passes the checksum but points at a name that does not exist.
        let mut bad_index = good[..24].to_vec();
        let mut payload = Vec::new();
        payload.extend_from_slice(&0u32.to_le_bytes());
        payload.extend_from_slice(&1u32.to_le_bytes());
        payload.extend_from_slice(&[1, 0, 0, 0, 9, 0, 0, 0, 0, 192, 0, 2, 1]);
        payload.extend_from_slice(&i64::MAX.to_le_bytes());
        payload.extend_from_slice(&i64::MIN.to_le_bytes());
        bad_index[12..20].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        bad_index[20..24].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bad_index.extend_from_slice(&payload);

        type Check = fn(&CacheError) -> bool;
        let cases: Vec<(&str, Vec<u8>, Check)> = vec![
            ("empty", Vec::new(), |e| matches!(e, CacheError::Truncated { what: "magic", .. })),
            ("header cut", good[..15].to_vec(), |e| matches!(e, CacheError::Truncated { what: "payload length", .. })),
            ("payload cut", good[..good.len() - 5].to_vec(), |e| {
                matches!(e, CacheError::Truncated { what: "payload", .. })
            }),
            ("bit flip", flipped, |e| matches!(e, CacheError::Checksum { .. })),
            ("version", version, |e| matches!(e, CacheError::WrongVersion { found: 7, supported: 1, .. })),
            ("foreign", b"{\"entries\": []}\n".to_vec(), |e| matches!(e, CacheError::Foreign { .. })),
            ("trailing", trailing, |e| matches!(e, CacheError::Malformed { .. })),
            ("bad index", bad_index, |e| matches!(e, CacheError::Malformed { offset: 32, .. })),
        ];
        for (what, bytes, check) in cases {
            fs::write(&path, &bytes).unwrap();
            let err = Cache::restore(&path, CacheConfig::default(), wall(1_000_011), Instant::now()).unwrap_err();
            assert!(check(&err), "{what}: {err:?}");
            assert!(err.is_unusable_file() && !err.is_not_found(), "{what}");
            assert!(err.to_string().contains(&path.display().to_string()), "{what}: {err}");
            let aside = set_aside(&path, wall(1_234)).unwrap();
            assert!(!path.exists(), "{what}");
            assert_eq!(aside.file_name().unwrap(), "cache.snapshot.corrupt-1234");
            assert_eq!(fs::read(&aside).unwrap(), bytes, "{what}: kept for inspection");
            fs::remove_file(aside).unwrap();
        }

        let err = Cache::restore(&path, CacheConfig::default(), wall(1), Instant::now()).unwrap_err();
        assert!(err.is_not_found() && !err.is_unusable_file(), "{err:?}");
    }
}
