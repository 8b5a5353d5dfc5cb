//! What the DNS path costs in transparent mode with the kernel datapath: dnsperf from a pod's
//! network namespace to kube-dns's address, redirected by eBPF to the agent, which learns every
//! allowed answer into the kernel maps before releasing it. Beside it, the same queries from the
//! node straight to the DNS server (no redirect, no agent): what the agent adds. Reports only;
//! `benches/transparent.sh` runs it. Root only.

mod common;

use std::io::Write;
use std::time::Duration;

use common::privileged;
use common::topology::{Cluster, KUBE_DNS_IP, metric_sum, seed_stage};

/// 200 names of bulk.test (each learned: *.bulk.test is a toFQDNs selector), two of
/// microsoft.com (learned), two of google.com (allowed by rules.dns, not learned).
fn query_file() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("query file");
    for i in 0..200 {
        writeln!(f, "n{i:03}.bulk.test A").unwrap();
    }
    for name in ["www.microsoft.com", "short.microsoft.com", "www.google.com", "google.com"] {
        writeln!(f, "{name} A").unwrap();
    }
    f.flush().unwrap();
    f
}

struct Phase {
    qps: f64,
    completed: u64,
    lost: u64,
    p50_us: f64,
    p99_us: f64,
}

/// dnsperf run by `cmd` (a command in some namespace): at `rate` q/s (0: as fast as it goes)
/// for `secs`.
fn dnsperf(mut cmd: std::process::Command, queries: &std::path::Path, rate: u32, secs: u32) -> Phase {
    cmd.args(["-s", &KUBE_DNS_IP.to_string(), "-p", "53", "-c", "4", "-q", "200", "-l", &secs.to_string()])
        .arg("-d")
        .arg(queries);
    if rate > 0 {
        cmd.args(["-Q", &rate.to_string(), "-v"]);
    }
    let out = common::topology::run_bounded(cmd, Duration::from_secs(u64::from(secs) + 30));
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |label: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    // -v: one line per answer, `> NOERROR name A 0.000123`, the latency in seconds last.
    let mut lat: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("> ") && !l.starts_with("> T"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1e6)
        .collect();
    lat.sort_by(f64::total_cmp);
    let pct =
        |p: f64| if lat.is_empty() { f64::NAN } else { lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] };
    Phase {
        qps: field("Queries per second:"),
        completed: field("Queries completed:") as u64,
        lost: field("Queries lost:") as u64,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("agent stat");
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')').expect("stat has a command") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// The quantile `q` of a Prometheus histogram, as the upper bound of the bucket it falls in.
fn histogram_quantile(page: &str, name: &str, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = page
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, l.rsplit_once(' ')?.1.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    (total > 0.0).then(|| buckets.iter().find(|(_, n)| *n >= q * total).map(|(le, _)| *le)).flatten()
}

#[test]
#[ignore = "a measurement, not a check: benches/transparent.sh runs it"]
fn transparent_figures() {
    if !privileged::available("transparent_figures") {
        return;
    }
    let secs: u32 = std::env::var("DURATION").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let rate: u32 = std::env::var("RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let mut c = Cluster::start();
    c.set_policy("seed.yaml", &seed_stage(4));
    let bulk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        bulk.path(),
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: bulk}\nspec:\n  \
         endpointSelector: {matchLabels: {app: alpine}}\n  egress:\n  - toFQDNs: [{matchPattern: \"*.bulk.test\"}]\n",
    )
    .unwrap();
    c.set_policy("bulk.yaml", bulk.path());
    let queries = query_file();
    println!(
        "transparent mode, kernel datapath: dnsperf in the pod to {KUBE_DNS_IP}:53 (redirected to the agent), \
         {secs}s per phase, 4 clients, 200 outstanding; 204 names, 202 of them learned"
    );
    println!("{:<26} {:>9} {:>8} {:>8} {:>8} {:>14}", "", "q/s", "p50 us", "p99 us", "lost", "agent CPU s/100k");
    let direct = dnsperf(c.node.command("dnsperf"), queries.path(), rate, secs);
    println!(
        "{:<26} {:>9.0} {:>8.0} {:>8.0} {:>8} {:>14}",
        format!("node -> DNS server, {rate} q/s"),
        direct.qps,
        direct.p50_us,
        direct.p99_us,
        direct.lost,
        "-"
    );
    for (label, r) in [(format!("pod -> agent, {rate} q/s"), rate), ("pod -> agent, max".to_string(), 0)] {
        let pid = c.agent_pid();
        let before = cpu_ticks(pid);
        let p = dnsperf(c.pod.command("dnsperf"), queries.path(), r, secs);
        let cpu_s = (cpu_ticks(pid) - before) as f64 / 100.0;
        println!(
            "{:<26} {:>9.0} {:>8.0} {:>8.0} {:>8} {:>14.3}",
            label,
            p.qps,
            p.p50_us,
            p.p99_us,
            p.lost,
            cpu_s / p.completed.max(1) as f64 * 100_000.0
        );
    }
    let page = c.metrics();
    let name = "fqdnd_datapath_ack_latency_seconds";
    let count = metric_sum(&page, &format!("{name}_count"));
    let ms = |q| histogram_quantile(&page, name, q).map_or("-".into(), |s| format!("<= {:.3} ms", s * 1000.0));
    println!(
        "answers held for the datapath: {count} (each a new name or address written to the maps); \
         hold time p50 {}, p99 {} (histogram bucket bounds)",
        ms(0.5),
        ms(0.99)
    );
}
