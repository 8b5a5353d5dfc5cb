//! Fairness under a flood: what a quiet endpoint sees while other endpoints flood the proxy.
//!
//! `fqdnd run` (plain mode, the release build) on loopback, one endpoint per source address
//! (127.0.0.10 is the quiet pod, 127.0.0.20.. the flooders; an endpoints file maps them), in front
//! of an upstream in this process that answers every name under bench.test with one A record,
//! at once ("fast") or after 500 ms ("slow"). For each upstream, with 0, 1 and 4 flooders:
//!
//! - the quiet pod sends 50 q/s for DURATION seconds, each query waited for up to 3 s;
//! - fast upstream: each flooder runs like dnsperf at full rate (200 queries outstanding, a
//!   query not answered within 1 s is given up and replaced);
//! - slow upstream: each flooder sends 2,500 q/s open loop (it never waits for answers);
//! - "even" (fast upstream): each flooder sends 900 q/s open loop, within its quota, so nothing
//!   is shed: the quiet pod's latency under the same load without any unfairness to correct;
//! - the control pod (127.0.0.11) asks the upstream directly at 50 q/s at the same time: its
//!   latency is the upstream's own under this load, the machine's scheduling included (the
//!   flooders, the upstream and the proxy share its cores), which no proxy can remove.
//!
//! Prints, per scenario: the quiet pod's answered rate, answered/sent, p50 and p99 latency; the
//! control pod's p50 and p99 ("direct"); the flooders' offered and answered rates; what the proxy
//! shed. Reports only, asserts nothing.
//!
//! CPUs: with two or more, the agent runs on CPU 0 and this process (flooders, upstream, quiet
//! and control pods) on the others, as pods and the agent would on a node's separate cores; on
//! one shared set the quiet pod's latency is mostly the bench's own threads waiting for a CPU
//! (seen with `perf sched`), which says nothing about the proxy. PIN=0 shares them.
//!
//! `cargo bench --bench fairness` (env: DURATION=10 seconds per scenario, SCENARIOS=fast,slow (also: even),
//! FQDND_BIN=another fqdnd binary to measure, e.g. a build of main, FLOODERS=0,1,4,
//! FQDND_ARGS="--max-qps-per-endpoint 1000": more flags for `fqdnd run`, PIN=0,
//! TAIL=1: also the quiet pod's 10 slowest answers and when each was sent).

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const UPSTREAM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const QUIET: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 10);
/// The control: a pod like the quiet one asking the upstream directly, at the same time.
const DIRECT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
const QUIET_RATE: u32 = 50;
const QUIET_TIMEOUT: Duration = Duration::from_secs(3);
const SLOW_DELAY: Duration = Duration::from_millis(500);
const SLOW_FLOOD_RATE: u32 = 2_500;
const FAST_WINDOW: usize = 200;
const FAST_GIVE_UP: Duration = Duration::from_secs(1);
/// "even": the same number of busy pods, each within the default quota (1,000 q/s): nothing
/// is shed, so what the quiet pod sees is the cost of the load alone.
const EVEN_FLOOD_RATE: u32 = 900;

fn flooder_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 20 + i as u8)
}

/// A query for `<label>.bench.test. A`, no EDNS.
fn query(id: u16, label: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for part in [label, "bench", "test"] {
        q.push(part.len() as u8);
        q.extend_from_slice(part.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 1, 0, 1]);
    q
}

/// The answer to a query built by [`query`]: QR, RA, one A record 10.1.1.1 for the question name.
fn answer(q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 17 || q[2] & 0x80 != 0 {
        return None;
    }
    let mut a = q.to_vec();
    a[2] |= 0x80;
    a[3] = 0x80;
    a[6..8].copy_from_slice(&1u16.to_be_bytes());
    a[10..12].copy_from_slice(&0u16.to_be_bytes());
    a.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 1, 1, 1]);
    Some(a)
}

/// Replies waiting for their time: when, what, to whom.
type Delayed = VecDeque<(Instant, Vec<u8>, SocketAddr)>;

/// The upstream: answers at once, or after `delay` (a FIFO: the delay is the same for all).
fn upstream(delay: Option<Duration>, stop: Arc<AtomicBool>) -> SocketAddr {
    let sock = UdpSocket::bind(SocketAddr::new(IpAddr::V4(UPSTREAM), 0)).expect("upstream socket");
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    // Room for bursts while this thread waits for a CPU: losses here would be the bench's, not
    // the proxy's.
    big_buffers(&sock);
    let addr = sock.local_addr().unwrap();
    let queue: Arc<Mutex<Delayed>> = Arc::default();
    if let Some(delay) = delay {
        let (sock, queue, stop) = (sock.try_clone().unwrap(), queue.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let due = queue.lock().unwrap().front().map(|(t, _, _)| *t);
                match due {
                    Some(t) if t <= Instant::now() => {
                        let (_, reply, to) = queue.lock().unwrap().pop_front().unwrap();
                        let _ = sock.send_to(&reply, to);
                    }
                    Some(t) => std::thread::sleep((t - Instant::now()).min(Duration::from_millis(1))),
                    None => std::thread::sleep(delay.min(Duration::from_millis(1))),
                }
            }
        });
    }
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
            let Some(reply) = answer(&buf[..n]) else { continue };
            match delay {
                None => {
                    let _ = sock.send_to(&reply, from);
                }
                Some(d) => queue.lock().unwrap().push_back((Instant::now() + d, reply, from)),
            }
        }
    });
    addr
}

/// 8 MiB socket buffers (SO_RCVBUFFORCE needs CAP_NET_ADMIN; otherwise what rmem_max allows).
fn big_buffers(sock: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 8 << 20;
    for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
        for opt in [force, plain] {
            // SAFETY: setsockopt on a socket we own with a pointer to an int that lives for the call.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&raw const size).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
        }
    }
}

struct Agent {
    child: Child,
    dns: SocketAddr,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Which CPUs the agent and this process get: `None` to share them all (PIN=0, or one CPU).
fn cpu_split() -> Option<(libc::cpu_set_t, libc::cpu_set_t)> {
    if std::env::var("PIN").is_ok_and(|v| v == "0") {
        return None;
    }
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this thread.
    let mut all: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut all) } != 0 {
        return None;
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &all) }).collect();
    if cpus.len() < 2 {
        return None;
    }
    // SAFETY: as above, plain data set bit by bit.
    let (mut agent, mut rest): (libc::cpu_set_t, libc::cpu_set_t) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    unsafe { libc::CPU_SET(cpus[0], &mut agent) };
    for &c in &cpus[1..] {
        unsafe { libc::CPU_SET(c, &mut rest) };
    }
    Some((agent, rest))
}

fn start_agent(bin: &Path, upstream: SocketAddr, flooders: usize, cpus: Option<libc::cpu_set_t>) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/bench.yaml"),
        format!(
            r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: bench, namespace: bench}}
spec:
  endpointSelector: {{matchLabels: {{app: bench}}}}
  egress:
  - toEndpoints:
    - matchLabels: {{"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}}
    toPorts:
    - ports: [{{port: "{port}", protocol: ANY}}]
      rules: {{dns: [{{matchPattern: "*.bench.test"}}]}}
  - toFQDNs: [{{matchPattern: "*.bench.test"}}]
    toPorts: [{{ports: [{{port: "443", protocol: TCP}}]}}]
"#,
            port = upstream.port()
        ),
    )
    .unwrap();
    let mut eps = format!(
        "- {{namespace: kube-system, name: kube-dns, labels: {{k8s-app: kube-dns}}, ips: [{UPSTREAM}]}}\n\
         - {{namespace: bench, name: quiet, labels: {{app: bench}}, ips: [{QUIET}]}}\n"
    );
    for i in 0..flooders.max(4) {
        eps.push_str(&format!(
            "- {{namespace: bench, name: flooder-{i}, labels: {{app: bench}}, ips: [{}]}}\n",
            flooder_addr(i)
        ));
    }
    std::fs::write(dir.path().join("endpoints.yaml"), eps).unwrap();
    let port = free_port();
    let mport = free_port();
    let mut cmd = Command::new(bin);
    if let Some(set) = cpus {
        use std::os::unix::process::CommandExt;
        // SAFETY: sched_setaffinity(2) is a plain system call, safe between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd
        .args(["run", "--mode", "plain", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", &upstream.to_string(), "--metrics-addr", &format!("127.0.0.1:{mport}")])
        .arg("--policies")
        .arg(dir.path().join("policies"))
        .arg("--endpoints")
        .arg(dir.path().join("endpoints.yaml"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(std::env::var("FQDND_ARGS").unwrap_or_default().split_whitespace())
        .env("FQDND_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("fqdnd.log")).unwrap())
        .spawn()
        .expect("starting fqdnd");
    let dns = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let agent = Agent { child, dns, metrics: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), mport), _dir: dir };
    // Ready: the quiet pod gets an answer.
    let sock = UdpSocket::bind(SocketAddr::new(IpAddr::V4(QUIET), 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = [0u8; 512];
    for _ in 0..150 {
        let _ = sock.send_to(&query(1, "ready"), dns);
        if sock.recv(&mut buf).is_ok() {
            return agent;
        }
    }
    panic!("fqdnd did not answer on {dns}");
}

/// A counter of the agent's /metrics page (the sum of its series).
fn metric(addr: SocketAddr, name: &str) -> f64 {
    let Ok(mut s) = TcpStream::connect(addr) else { return f64::NAN };
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut page = String::new();
    let _ = s.read_to_string(&mut page);
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            (series.split('{').next()? == name).then(|| v.parse::<f64>().ok()).flatten()
        })
        .sum()
}

#[derive(Default)]
struct FloodCount {
    sent: AtomicU64,
    answered: AtomicU64,
}

/// dnsperf-like: `window` queries outstanding, one given up after `give_up` is replaced.
fn flood_closed(from: Ipv4Addr, to: SocketAddr, window: usize, give_up: Duration, until: Instant, n: Arc<FloodCount>) {
    let sock = UdpSocket::bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    let mut outstanding: HashMap<u16, Instant> = HashMap::new();
    let mut id: u16 = 0;
    let mut buf = [0u8; 512];
    while Instant::now() < until {
        while outstanding.len() < window {
            id = id.wrapping_add(1);
            if sock.send_to(&query(id, &format!("f{id}")), to).is_ok() {
                outstanding.insert(id, Instant::now());
                n.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        while let Ok(len) = sock.recv(&mut buf) {
            if len >= 2 && outstanding.remove(&u16::from_be_bytes([buf[0], buf[1]])).is_some() {
                n.answered.fetch_add(1, Ordering::Relaxed);
            }
        }
        let now = Instant::now();
        outstanding.retain(|_, t| now.duration_since(*t) < give_up);
    }
}

/// Open loop at `rate` q/s: sends on schedule whatever comes back; answers are only counted.
fn flood_open(from: Ipv4Addr, to: SocketAddr, rate: u32, until: Instant, n: Arc<FloodCount>) {
    let sock = UdpSocket::bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    sock.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut buf = [0u8; 512];
    while Instant::now() < until {
        let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        while sent < due {
            sent += 1;
            let id = sent as u16;
            if sock.send_to(&query(id, &format!("o{id}")), to).is_ok() {
                n.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        while sock.recv(&mut buf).is_ok() {
            n.answered.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

struct Quiet {
    sent: usize,
    latencies: Vec<Duration>,
    /// The slowest answers: (when the query was sent, from the start; its latency).
    slowest: Vec<(Duration, Duration)>,
}

/// 50 q/s from `from` for `duration`, each answer matched by ID; what is not answered within 3 s
/// is lost.
fn quiet(from: Ipv4Addr, to: SocketAddr, duration: Duration) -> Quiet {
    let sock = UdpSocket::bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    big_buffers(&sock);
    let every = Duration::from_secs(1) / QUIET_RATE;
    let count = (duration.as_secs_f64() * f64::from(QUIET_RATE)) as usize;
    let start = Instant::now();
    let mut pending: HashMap<u16, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(count);
    let mut timed = Vec::with_capacity(count);
    let mut buf = [0u8; 512];
    let mut next = 0usize;
    loop {
        let now = Instant::now();
        if next < count && now >= start + every * next as u32 {
            let id = 0x8000 | next as u16;
            let _ = sock.send_to(&query(id, &format!("q{next}")), to);
            pending.insert(id, Instant::now());
            next += 1;
        }
        if let Ok(len) = sock.recv(&mut buf)
            && len >= 2
            && let Some(t) = pending.remove(&u16::from_be_bytes([buf[0], buf[1]]))
        {
            latencies.push(t.elapsed());
            timed.push((t - start, t.elapsed()));
        }
        pending.retain(|_, t| t.elapsed() < QUIET_TIMEOUT);
        if next == count && pending.is_empty() {
            break;
        }
    }
    latencies.sort_unstable();
    timed.sort_unstable_by_key(|&(_, l)| std::cmp::Reverse(l));
    timed.truncate(10);
    Quiet { sent: count, latencies, slowest: timed }
}

fn pct(sorted: &[Duration], p: f64) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    format!("{:.2}", sorted[i].as_secs_f64() * 1000.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` / `cargo bench -- --list`: nothing to list.
    }
    let bin = std::env::var_os("FQDND_BIN").map(PathBuf::from).unwrap_or_else(|| env!("CARGO_BIN_EXE_fqdnd").into());
    let secs: u64 = std::env::var("DURATION").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let duration = Duration::from_secs(secs);
    let scenarios = std::env::var("SCENARIOS").unwrap_or_else(|_| "fast,slow".into());
    let flooder_counts: Vec<usize> = std::env::var("FLOODERS")
        .unwrap_or_else(|_| "0,1,4".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!("fairness: fqdnd {}, {secs}s per scenario; quiet pod 50 q/s (3 s timeout)", bin.display());
    let split = cpu_split();
    match &split {
        Some((agent, rest)) => {
            let list = |set: &libc::cpu_set_t| {
                (0..libc::CPU_SETSIZE as usize)
                    .filter(|&c| unsafe { libc::CPU_ISSET(c, set) })
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            println!("CPUs: agent on {}, this bench on {} (PIN=0 to share)", list(agent), list(rest));
            // SAFETY: sets this thread's affinity; the threads spawned below inherit it.
            if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), rest) } != 0 {
                panic!("sched_setaffinity: {}", std::io::Error::last_os_error());
            }
        }
        None => println!("CPUs: agent and bench share them"),
    }
    println!(
        "fast: flooders like dnsperf (200 outstanding, 1 s give-up); slow: 500 ms upstream, flooders 2,500 q/s open loop\n"
    );
    println!(
        "{:<6} {:>8} | {:>9} {:>10} {:>8} {:>8} | {:>10} {:>10} | {:>12} {:>12} | {:>8}",
        "up",
        "flooders",
        "quiet q/s",
        "answered",
        "p50 ms",
        "p99 ms",
        "direct p50",
        "direct p99",
        "flood sent/s",
        "flood ans/s",
        "shed"
    );
    for scenario in scenarios.split(',') {
        let name = scenario.trim();
        let (slow, open_rate) = match name {
            "fast" => (false, None),
            "slow" => (true, Some(SLOW_FLOOD_RATE)),
            "even" => (false, Some(EVEN_FLOOD_RATE)),
            other => panic!("SCENARIOS: {other:?} is not fast, slow or even"),
        };
        for &flooders in &flooder_counts {
            let stop = Arc::new(AtomicBool::new(false));
            let up = upstream(slow.then_some(SLOW_DELAY), stop.clone());
            let agent = start_agent(&bin, up, flooders, split.map(|(a, _)| a));
            let counts: Vec<Arc<FloodCount>> = (0..flooders).map(|_| Arc::default()).collect();
            // The flood runs from a second before the quiet pod starts until it is done.
            let until = Instant::now() + duration + Duration::from_secs(1) + QUIET_TIMEOUT;
            let threads: Vec<_> = counts
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let (n, to) = (n.clone(), agent.dns);
                    std::thread::spawn(move || match open_rate {
                        Some(rate) => flood_open(flooder_addr(i), to, rate, until, n),
                        None => flood_closed(flooder_addr(i), to, FAST_WINDOW, FAST_GIVE_UP, until, n),
                    })
                })
                .collect();
            if flooders > 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
            let flood_start = counts.iter().map(|n| n.sent.load(Ordering::Relaxed)).sum::<u64>();
            let flood_ans_start = counts.iter().map(|n| n.answered.load(Ordering::Relaxed)).sum::<u64>();
            let t0 = Instant::now();
            let control = std::thread::spawn(move || quiet(DIRECT, up, duration));
            let q = quiet(QUIET, agent.dns, duration);
            let direct = control.join().expect("control pod");
            let elapsed = t0.elapsed().as_secs_f64();
            let flood_sent = counts.iter().map(|n| n.sent.load(Ordering::Relaxed)).sum::<u64>() - flood_start;
            let flood_ans = counts.iter().map(|n| n.answered.load(Ordering::Relaxed)).sum::<u64>() - flood_ans_start;
            let shed = metric(agent.metrics, "fqdnd_dns_shed_queries_total");
            for t in threads {
                let _ = t.join();
            }
            stop.store(true, Ordering::Relaxed);
            drop(agent);
            println!(
                "{:<6} {:>8} | {:>9.1} {:>10} {:>8} {:>8} | {:>10} {:>10} | {:>12.0} {:>12.0} | {:>8}",
                name,
                flooders,
                q.latencies.len() as f64 / duration.as_secs_f64(),
                format!("{}/{}", q.latencies.len(), q.sent),
                pct(&q.latencies, 0.50),
                pct(&q.latencies, 0.99),
                pct(&direct.latencies, 0.50),
                pct(&direct.latencies, 0.99),
                flood_sent as f64 / elapsed,
                flood_ans as f64 / elapsed,
                shed,
            );
            if std::env::var_os("TAIL").is_some() {
                let tail: Vec<String> = q
                    .slowest
                    .iter()
                    .map(|(at, l)| format!("{:.3}s:{:.2}", at.as_secs_f64(), l.as_secs_f64() * 1000.0))
                    .collect();
                println!("    slowest quiet answers (sent at: ms): {}", tail.join(" "));
            }
        }
    }
}
