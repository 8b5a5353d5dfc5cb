use std::time::Duration;

use super::*;
use crate::datapath::MemoryDatapath;
use crate::pattern::NamePattern;
use crate::{LastUsed, PortProto};

fn key(ip: &str) -> AllowKey {
    AllowKey { endpoint: EndpointId(7), ip: ip.parse().unwrap(), port: PortProto::ANY }
}

/// Entries the kernel kept through a crash, unknown to the (empty) restored cache: kept through
/// the restart grace, then kept only while used; removed when idle.
#[tokio::test]
async fn orphans_expire_when_idle_after_the_grace() {
    let state = tempfile::tempdir().unwrap();
    let dp = Arc::new(MemoryDatapath::new());
    let (used, idle) = (key("192.0.2.1"), key("192.0.2.2"));
    dp.apply(Delta { add: vec![used, idle], ..Delta::default() }).await.unwrap();
    let enforcer = Enforcer::open(CacheConfig::default(), state.path(), dp.clone());
    assert_eq!(enforcer.restore_into_datapath().await.unwrap(), 2);

    let mut orphans = enforcer.orphans.lock().unwrap();
    let start = orphans.adopted_at();
    let usage = |ago: Duration| vec![LastUsed { endpoint: used.endpoint, ip: used.ip, ago }];
    let cache = enforcer.lock();
    // Within the grace nothing goes, used or not.
    assert!(orphans.expire(&cache, start + Duration::from_secs(1), &[]).is_empty());
    // After it: the idle one goes; the one used since the previous pass stays.
    let after = start + ORPHAN_GRACE + Duration::from_secs(1);
    assert_eq!(orphans.expire(&cache, after, &usage(Duration::from_millis(10))), vec![idle]);
    // Unused since before the previous pass (5 s ago): it goes too, once.
    let later = after + Duration::from_secs(5);
    assert_eq!(orphans.expire(&cache, later, &usage(Duration::from_secs(6))), vec![used]);
    assert!(orphans.expire(&cache, later + Duration::from_secs(1), &[]).is_empty());
}

/// An orphan re-learned by the cache is the cache's again: never removed as an orphan.
#[tokio::test]
async fn relearned_orphan_is_handed_back_to_the_cache() {
    let state = tempfile::tempdir().unwrap();
    let dp = Arc::new(MemoryDatapath::new());
    let k = key("192.0.2.9");
    dp.apply(Delta { add: vec![k], ..Delta::default() }).await.unwrap();
    let enforcer = Enforcer::open(CacheConfig::default(), state.path(), dp.clone());
    let rule = SelectorRule { pattern: NamePattern::match_pattern("*.example").unwrap(), ports: vec![] };
    enforcer.set_endpoints(vec![(k.endpoint, vec![rule])]).await.unwrap();
    assert_eq!(enforcer.restore_into_datapath().await.unwrap(), 1);
    let answer =
        Answer { endpoint: k.endpoint, qname: "www.example.".into(), cnames: vec![], ips: vec![k.ip], ttl: 300 };
    // Already in the datapath as an orphan; the cache now owns it.
    let _ = enforcer.learn(&answer).await.unwrap();
    let mut orphans = enforcer.orphans.lock().unwrap();
    let start = orphans.adopted_at();
    let cache = enforcer.lock();
    assert!(orphans.expire(&cache, start + ORPHAN_GRACE + Duration::from_secs(1), &[]).is_empty());
    assert!(orphans.is_empty());
}

/// The learn future resolves only after the datapath holds the entries it adds.
#[tokio::test]
async fn learn_resolves_after_the_entries_are_in_the_datapath() {
    let state = tempfile::tempdir().unwrap();
    let dp = Arc::new(MemoryDatapath::new());
    dp.set_ack_delay(Duration::from_millis(50));
    let enforcer = Enforcer::open(CacheConfig::default(), state.path(), dp.clone());
    let ep = EndpointId(3);
    let rule = SelectorRule { pattern: NamePattern::match_pattern("*.example").unwrap(), ports: vec![] };
    enforcer.set_endpoints(vec![(ep, vec![rule])]).await.unwrap();
    let ip = "192.0.2.44".parse().unwrap();
    let answer = Answer { endpoint: ep, qname: "a.example.".into(), cnames: vec![], ips: vec![ip], ttl: 60 };
    let pending = enforcer.learn(&answer);
    assert!(!dp.contains(ep, ip), "nothing is written before the future runs to its ack");
    assert!(pending.await.unwrap(), "a new IP needs the datapath");
    assert!(dp.contains(ep, ip));
    assert!(!enforcer.learn(&answer).await.unwrap(), "the same answer again changes nothing");
    // An endpoint gone from the list loses its allow set.
    enforcer.set_endpoints(vec![]).await.unwrap();
    assert!(!dp.contains(ep, ip));
}

/// An orphan whose expiry the datapath kept lives until then, used or not, past the fixed grace;
/// then it goes at the first idle pass. One the datapath kept no expiry for gets the grace.
#[tokio::test]
async fn orphans_keep_their_stored_expiry() {
    let state = tempfile::tempdir().unwrap();
    let dp = Arc::new(MemoryDatapath::new());
    let (timed, untimed) = (key("192.0.2.30"), key("192.0.2.31"));
    let expires = vec![crate::Expiry { key: timed, ttl: Duration::from_secs(30) }];
    dp.apply(Delta { add: vec![timed, untimed], expires, ..Delta::default() }).await.unwrap();
    let enforcer = Enforcer::open(CacheConfig::default(), state.path(), dp.clone());
    assert_eq!(enforcer.restore_into_datapath().await.unwrap(), 2);

    let mut orphans = enforcer.orphans.lock().unwrap();
    let start = orphans.adopted_at();
    let cache = enforcer.lock();
    // Past the grace, both idle: only the one without an expiry goes.
    let after_grace = start + ORPHAN_GRACE + Duration::from_secs(1);
    assert_eq!(orphans.expire(&cache, after_grace, &[]), vec![untimed]);
    assert!(orphans.expire(&cache, start + Duration::from_secs(29), &[]).is_empty(), "its TTL is 30 s");
    assert_eq!(orphans.expire(&cache, start + Duration::from_secs(31), &[]), vec![timed]);
}
