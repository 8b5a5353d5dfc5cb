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
    Delta { add: keys.to_vec(), ..Delta::default() }
}

fn removes(keys: &[AllowKey]) -> Delta {
    Delta { remove: keys.to_vec(), ..Delta::default() }
}

/// What passes changes: the delta without its expiries (tested on their own).
fn moves(d: Delta) -> Delta {
    Delta { expires: Vec::new(), ..d }
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
        assert_eq!(moves(d), adds(&[any(ep(1), "192.0.2.1")]), "ttl {ttl} min {min_ttl}");
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
fn ttl_ceiling() {
    // (answer TTL, min TTL, max TTL, second of expiry): the ceiling applies after the floor.
    let cases: &[(u32, u32, u32, u64)] = &[
        (u32::MAX, 0, DEFAULT_MAX_TTL, u64::from(DEFAULT_MAX_TTL)),
        (1 << 31, 0, DEFAULT_MAX_TTL, u64::from(DEFAULT_MAX_TTL)),
        (300, 0, 60, 60),
        (10, 120, 60, 60),
        (30, 0, 60, 30),
        (30, 0, 0, 1),
    ];
    for &(ttl, min_ttl, max_ttl, expiry) in cases {
        let t0 = Instant::now();
        let mut c = cache(CacheConfig { min_ttl, max_ttl, ..CacheConfig::default() }, t0);
        c.learn(&answer(ep(1), "www.example.com", &[], &["192.0.2.1"], ttl), t0);
        let rows = c.list(&ListFilter::default(), t0, SystemTime::UNIX_EPOCH);
        assert_eq!(rows[0].ttl as u64, expiry, "ttl {ttl} min {min_ttl} max {max_ttl}");
        assert!(c.gc(at(t0, expiry as f64 - 0.5), &[]).is_empty(), "ttl {ttl}: alive before {expiry}s");
        assert_eq!(c.gc(at(t0, expiry as f64), &[]), removes(&[any(ep(1), "192.0.2.1")]), "ttl {ttl}");
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
    assert_eq!(moves(d), adds(&[any(ep(1), "192.0.2.1"), any(ep(1), "2001:db8::1")]));
    for name in ["www.example.com", "edge.cdn.net.", "E1.CDN.NET"] {
        assert_eq!(c.ips_for_name(ep(1), name), [ip("192.0.2.1"), ip("2001:db8::1")], "{name}");
    }
    assert_eq!(c.names_for_ip(ep(1), ip("192.0.2.1")), ["e1.cdn.net.", "edge.cdn.net.", "www.example.com."]);
    assert_eq!(c.counters().entries, 6);
    assert!(c.gc(at(t0, 6.5), &[]).is_empty());
    assert_eq!(moves(c.gc(at(t0, 7.0), &[])), removes(&[any(ep(1), "192.0.2.1"), any(ep(1), "2001:db8::1")]));
    assert_eq!((c.counters().entries, c.counters().names), (0, 0));
}

#[test]
fn shared_ip_stays_until_every_name_expires() {
    let t0 = Instant::now();
    let mut c = cache(CacheConfig::default(), t0);
    assert_eq!(
        moves(c.learn(&answer(ep(1), "a.example.com", &[], &["192.0.2.9"], 10), t0)),
        adds(&[any(ep(1), "192.0.2.9")])
    );
    assert!(c.learn(&answer(ep(1), "b.example.com", &[], &["192.0.2.9"], 20), t0).is_empty(), "already allowed");
    assert!(c.gc(at(t0, 10.0), &[]).is_empty(), "b still maps to it");
    assert_eq!(c.names_for_ip(ep(1), ip("192.0.2.9")), ["b.example.com."]);
    assert_eq!(moves(c.gc(at(t0, 20.0), &[])), removes(&[any(ep(1), "192.0.2.9")]));
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
        assert_eq!(moves(d), adds(&want), "{scope}");
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
    assert_eq!(moves(d), adds(&[any(ep(1), "192.0.2.9")]));
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
    assert_eq!(moves(d), adds(&[key("192.0.2.1"), key("192.0.2.2")]));
    assert_eq!(c.allows(ep(1)), [key("192.0.2.1"), key("192.0.2.2")]);
    // Adding a wider rule adds the any-port keys; the 443 ones stay.
    let d = c.set_selectors(ep(1), vec![https.clone(), rule("*.example.com")]);
    assert_eq!(moves(d), adds(&[any(ep(1), "192.0.2.1"), any(ep(1), "192.0.2.2")]));
    // Dropping the narrow one removes only its keys.
    let d = c.set_selectors(ep(1), vec![rule("*.example.com")]);
    assert_eq!(moves(d), removes(&[key("192.0.2.1"), key("192.0.2.2")]));
    // Same pattern twice merges; expiry still cleans up fully.
    c.set_selectors(ep(1), vec![rule("*.example.com"), rule("*.example.com"), rule("api.*.com")]);
    assert_eq!(moves(c.gc(at(t0, 60.0), &[])), removes(&[any(ep(1), "192.0.2.1"), any(ep(1), "192.0.2.2")]));
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
    assert_eq!(moves(d), adds(&[any(ep(1), "192.0.2.1"), any(ep(2), "192.0.2.1")]));
    assert_eq!(c.counters().selectors, 4);
    // Re-setting the same patterns on another endpoint reuses the compiled set.
    let d = c.set_selectors_many([(ep(4), vec![rule("**.com")]), (ep(2), Vec::new())]);
    assert_eq!(
        moves(d),
        Delta { add: vec![any(ep(4), "192.0.2.1")], remove: vec![any(ep(2), "192.0.2.1")], ..Delta::default() }
    );
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
    assert_eq!(moves(c.gc(at(t0, 12.5), &[used(ep(1), "192.0.2.5", 2.3)])), removes(&[any(ep(1), "192.0.2.5")]));
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
    assert_eq!(moves(d), removes(&[any(ep(1), "192.0.2.2"), any(ep(1), "192.0.2.3")]));
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
    assert_eq!(moves(d), removes(&[any(ep(1), "192.0.2.1"), any(ep(1), "192.0.2.2"), any(ep(2), "192.0.2.1")]));
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

mod snapshots;

#[test]
fn deltas_carry_when_their_entries_run_out() {
    let t0 = Instant::now();
    let mut c = cache(CacheConfig::default(), t0);
    let k = any(ep(1), "192.0.2.1");
    let ttl = |d: &Delta| d.expires.iter().map(|e| (e.key, e.ttl.as_secs())).collect::<Vec<_>>();
    // Learned: added, with its TTL.
    let d = c.learn(&answer(ep(1), "a.example.com", &[], &["192.0.2.1"], 30), t0);
    assert_eq!((d.add.clone(), ttl(&d)), (vec![k], vec![(k, 30)]));
    // The same answer at the same time: nothing at all for the datapath.
    assert!(c.learn(&answer(ep(1), "a.example.com", &[], &["192.0.2.1"], 30), t0).is_noop());
    // Ten seconds on, a fresh answer: nothing added, the entry lasts until 40 s.
    let d = c.learn(&answer(ep(1), "a.example.com", &[], &["192.0.2.1"], 30), at(t0, 10.0));
    assert!(d.is_empty() && !d.is_noop(), "{d:?}");
    assert_eq!(ttl(&d), [(k, 30)]);
    // A shorter answer never shortens it.
    assert!(c.learn(&answer(ep(1), "a.example.com", &[], &["192.0.2.1"], 5), at(t0, 11.0)).is_noop());
    // Another name for the same IP that lasts longer: the latest expiry of the two.
    let d = c.learn(&answer(ep(1), "b.example.com", &[], &["192.0.2.1"], 100), at(t0, 12.0));
    assert_eq!((d.add.len(), ttl(&d)), (0, vec![(k, 100)]));
    // A name no selector matches grants nothing, so it has no expiry to tell.
    assert!(c.learn(&answer(ep(1), "www.other.org", &[], &["192.0.2.1"], 500), at(t0, 13.0)).is_noop());
    // A selector granted from the cache: the cached entries' expiry, counted from the last pass.
    c.gc(at(t0, 20.0), &[]);
    let d = c.set_selectors(ep(2), vec![rule("b.example.com")]);
    let k2 = any(ep(2), "192.0.2.1");
    assert_eq!(c.config().scope, Scope::Endpoint);
    assert!(d.is_noop(), "endpoint scope: ep2 did not look it up: {d:?}");
    let mut node = Cache::new(CacheConfig { scope: Scope::Node, ..CacheConfig::default() }, t0);
    node.learn(&answer(ep(1), "b.example.com", &[], &["192.0.2.1"], 100), t0);
    node.gc(at(t0, 20.0), &[]);
    let d = node.set_selectors(ep(2), vec![rule("b.example.com")]);
    assert_eq!((d.add.clone(), ttl(&d)), (vec![k2], vec![(k2, 80)]));
}

#[test]
fn an_endpoint_over_its_quota_loses_its_own_oldest_idle_entries() {
    let t0 = Instant::now();
    let config = CacheConfig { max_learned_per_endpoint: 4, ..CacheConfig::default() };
    let mut c = Cache::new(config, t0);
    c.set_selectors_many([(ep(1), vec![rule("*.example.com")]), (ep(2), vec![rule("*.example.com")])]);
    let name = |i: u32| format!("n{i}.example.com");
    let addr = |i: u32| format!("192.0.2.{i}");
    // Endpoint 2 holds three entries, well within its quota.
    for i in 100..103 {
        c.learn(&answer(ep(2), &name(i), &[], &[&addr(i)], 300), t0);
    }
    // Endpoint 1 learns 1..=4 at seconds 1..=4, then uses entry 1 (the oldest lookup) at 5.
    for i in 1..=4 {
        c.learn(&answer(ep(1), &name(i), &[], &[&addr(i)], 300), at(t0, f64::from(i)));
    }
    assert_eq!(c.held_by(ep(1)), 4);
    c.gc(at(t0, 5.0), &[used(ep(1), &addr(1), 0.0)]);
    // A fifth name: the oldest idle one (2, looked up at 2 and never used) goes, not the used 1.
    let d = c.learn(&answer(ep(1), &name(5), &[], &[&addr(5)], 300), at(t0, 6.0));
    assert_eq!(d.add, [any(ep(1), &addr(5))]);
    assert_eq!(d.remove, [any(ep(1), &addr(2))]);
    assert_eq!(c.held_by(ep(1)), 4);
    // Then 3, then 4: each new name of endpoint 1 still gets in, at its own expense.
    for (new, gone) in [(6, 3), (7, 4)] {
        let d = c.learn(&answer(ep(1), &name(new), &[], &[&addr(new)], 300), at(t0, 6.0 + f64::from(new)));
        assert_eq!((d.add, d.remove), (vec![any(ep(1), &addr(new))], vec![any(ep(1), &addr(gone))]), "{new}");
    }
    // Endpoint 2 lost nothing and its new names still get through.
    assert_eq!(c.held_by(ep(2)), 3);
    let d = c.learn(&answer(ep(2), &name(103), &[], &[&addr(103)], 300), at(t0, 20.0));
    assert_eq!((d.add, d.remove), (vec![any(ep(2), &addr(103))], vec![]));
    assert_eq!(c.allows(ep(2)).len(), 4);
    assert_eq!(c.counters().quota_evictions, 3);
    // A re-learned entry is active again: refreshing 1 and 5 leaves 6 the oldest.
    c.learn(&answer(ep(1), &name(1), &[], &[&addr(1)], 300), at(t0, 30.0));
    c.learn(&answer(ep(1), &name(5), &[], &[&addr(5)], 300), at(t0, 30.0));
    let d = c.learn(&answer(ep(1), &name(8), &[], &[&addr(8)], 300), at(t0, 31.0));
    assert_eq!(d.remove, [any(ep(1), &addr(6))]);
}
