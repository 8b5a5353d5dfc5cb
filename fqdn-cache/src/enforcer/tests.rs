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

/// Saving holds the cache only while serializing it: answers are learned while the snapshot is
/// written. The temporary file is a FIFO here, so the write stays stuck (the pipe full) until the
/// test reads the rest; learning during that must not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learning_goes_on_while_a_snapshot_is_written() {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    let state = tempfile::tempdir().unwrap();
    let dp = Arc::new(MemoryDatapath::new());
    let enforcer = Arc::new(Enforcer::open(CacheConfig::default(), state.path(), dp));
    let rule = SelectorRule { pattern: NamePattern::match_pattern("*.example").unwrap(), ports: vec![] };
    enforcer.set_endpoints(vec![(EndpointId(7), vec![rule])]).await.unwrap();
    // Well over a pipe's 64 KiB of snapshot.
    for i in 0..8_000u32 {
        let ip = IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        let answer = Answer {
            endpoint: EndpointId(7),
            qname: format!("h{i}.example."),
            cnames: vec![],
            ips: vec![ip],
            ttl: 300,
        };
        enforcer.learn(&answer).await.unwrap();
    }
    let name = enforcer.snapshot.file_name().unwrap().to_string_lossy().into_owned();
    let tmp = enforcer.snapshot.with_file_name(format!(".{name}.tmp"));
    let c_tmp = std::ffi::CString::new(tmp.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo(3) with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_tmp.as_ptr(), 0o600) }, 0, "mkfifo {}", tmp.display());
    let mut reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&tmp).unwrap();

    let saver = std::thread::spawn({
        let e = enforcer.clone();
        move || e.save()
    });
    // The first bytes: the snapshot is serialized and being written; the pipe then fills.
    let mut buf = vec![0u8; 1 << 20];
    let mut first = 0;
    while first == 0 {
        match reader.read(&mut buf) {
            Ok(n) => first = n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("reading the FIFO: {e}"),
        }
    }

    let (tx, rx) = std::sync::mpsc::channel();
    let learner = std::thread::spawn({
        let e = enforcer.clone();
        move || {
            let answer = Answer {
                endpoint: EndpointId(7),
                qname: "late.example.".into(),
                cnames: vec![],
                ips: vec!["192.0.2.200".parse().unwrap()],
                ttl: 300,
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let _ = tx.send(rt.block_on(e.learn(&answer)).is_ok());
        }
    });
    // A liveness bound, not a timing: with the lock held by the writer this never returns.
    let learned = rx.recv_timeout(Duration::from_secs(60));
    // Let the writer finish either way.
    let mut total = first;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("reading the FIFO: {e}"),
        }
    }
    assert_eq!(learned, Ok(true), "an answer was learned while the snapshot was being written");
    saver.join().unwrap();
    learner.join().unwrap();
    assert!(total > 64 * 1024, "the snapshot outgrew the pipe ({total} bytes)");
}
