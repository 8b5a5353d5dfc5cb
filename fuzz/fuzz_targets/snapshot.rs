//! Snapshot file bytes through the reader (`Cache::from_snapshot_bytes`, what `Cache::restore`
//! runs): an error or a cache, never a panic; a restored cache lists exactly the entries it counts.
#![no_main]

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use fqdn_cache::{Cache, CacheConfig, ListFilter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now_wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let now = Instant::now();
    let Ok(cache) = Cache::from_snapshot_bytes(Path::new("fuzz.snapshot"), data, CacheConfig::default(), now_wall, now)
    else {
        return;
    };
    let rows = cache.list(&ListFilter::default(), now, now_wall);
    let listed: usize = rows.iter().map(|r| r.ips.len()).sum();
    assert_eq!(listed as u64, cache.counters().entries);
    assert!(rows.iter().all(|r| r.ttl <= CacheConfig::default().max_ttl), "a restored TTL above --max-ttl");
});
