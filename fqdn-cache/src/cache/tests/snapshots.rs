//! Snapshots: written, restored, and what a damaged or hostile file does.

use std::fs;
use std::path::Path;

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
        assert_eq!(moves(d), adds(&[any(ep(1), "192.0.2.1"), any(ep(1), "192.0.2.3"), any(ep(1), "2001:db8::1")]));
        // The zombie is re-checked at the next pass: still used, kept; idle, gone.
        assert!(r.gc(at(t1, 1.0), &[used(ep(1), "192.0.2.3", 0.5)]).is_empty());
        assert_eq!(moves(r.gc(at(t1, 3.0), &[])), removes(&[any(ep(1), "192.0.2.3")]));
    }
}

/// A snapshot file holding one name (`a.example.com.`) and `entries` of (flags, expiry,
/// last use) for endpoint 1 and 192.0.2.1, with a valid checksum.
fn crafted(entries: &[(u8, i64, i64)]) -> Vec<u8> {
    let name = b"a.example.com.";
    let mut payload = Vec::new();
    payload.extend_from_slice(&1u32.to_le_bytes());
    payload.extend_from_slice(&(name.len() as u16).to_le_bytes());
    payload.extend_from_slice(name);
    payload.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for &(flags, expiry, last) in entries {
        payload.extend_from_slice(&1u32.to_le_bytes());
        payload.extend_from_slice(&0u32.to_le_bytes());
        payload.push(flags);
        payload.extend_from_slice(&[192, 0, 2, 1]);
        payload.extend_from_slice(&expiry.to_le_bytes());
        payload.extend_from_slice(&last.to_le_bytes());
    }
    let mut file = b"FQDNDSNP".to_vec();
    file.extend_from_slice(&1u32.to_le_bytes());
    file.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    file.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    file.extend_from_slice(&payload);
    file
}

/// Offset of the first entry's expiry in a [`crafted`] file.
const FIRST_EXPIRY: u64 = 24 + 4 + 2 + 14 + 4 + 4 + 4 + 1 + 4;

#[test]
fn expiry_that_overflows_is_malformed_not_valid_for_a_century() {
    // i64::MIN - now overflowed: a debug build panicked, a release build wrapped to a time
    // 136 years ahead and restored the long-expired entry as valid until 2163.
    let now = wall(1_700_000_000);
    for (flags, expiry) in [(0u8, i64::MIN), (1, i64::MIN), (0, i64::MIN + 1_000)] {
        let bytes = crafted(&[(flags, expiry, i64::MIN)]);
        let err = Cache::from_snapshot_bytes(Path::new("s"), &bytes, CacheConfig::default(), now, Instant::now())
            .unwrap_err();
        match &err {
            CacheError::Malformed { offset, what, .. } => {
                assert_eq!(*offset, FIRST_EXPIRY, "{err}");
                assert!(what.contains("expiry") && what.contains("out of range"), "{err}");
            }
            other => panic!("flags {flags} expiry {expiry}: {other:?}"),
        }
        assert!(err.is_unusable_file());
    }
    // The far future does not overflow; it is capped like any answer (below).
    let ok = crafted(&[(0, i64::MAX, i64::MIN)]);
    let c = Cache::from_snapshot_bytes(Path::new("s"), &ok, CacheConfig::default(), now, Instant::now()).unwrap();
    assert_eq!(c.counters().entries, 1);
}

#[test]
fn restored_ttls_are_capped_by_max_ttl() {
    let now_unix = 1_700_000_000i64;
    let t0 = Instant::now();
    for (expiry, want_ttl) in [
        (now_unix + i64::from(u32::MAX), DEFAULT_MAX_TTL),
        (now_unix + (1 << 31), DEFAULT_MAX_TTL),
        (now_unix + 100, 100),
    ] {
        let bytes = crafted(&[(0, expiry, i64::MIN)]);
        let c = Cache::from_snapshot_bytes(Path::new("s"), &bytes, CacheConfig::default(), wall(now_unix as u64), t0)
            .unwrap();
        let rows = c.list(&ListFilter::default(), t0, wall(now_unix as u64));
        assert_eq!(rows[0].ttl, want_ttl, "expiry {expiry}");
    }
    // A snapshot written under a larger cap is held to the cap in force at restore.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.snapshot");
    let loose = CacheConfig { max_ttl: u32::MAX, ..CacheConfig::default() };
    let mut c = cache(loose, t0);
    c.learn(&answer(ep(1), "www.example.com", &[], &["192.0.2.1"], u32::MAX - 10), t0);
    c.write_snapshot(&path, wall(now_unix as u64), t0).unwrap();
    let r = Cache::restore(&path, CacheConfig::default(), wall(now_unix as u64), t0).unwrap();
    assert_eq!(r.list(&ListFilter::default(), t0, wall(now_unix as u64))[0].ttl, DEFAULT_MAX_TTL);
}

#[test]
fn snapshot_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.snapshot");
    // A temporary file left by a crash, world-readable, must not keep its mode.
    let tmp = dir.path().join(".cache.snapshot.tmp");
    fs::write(&tmp, b"old").unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
    let t0 = Instant::now();
    sample(t0).write_snapshot(&path, wall(1_000_010), t0).unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "cache.snapshot has mode {mode:o}");
    // And a snapshot that already exists world-readable is replaced by a private one.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    sample(t0).write_snapshot(&path, wall(1_000_010), t0).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
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
