//! `scripts/demo` (root): the seed tutorial's journey on this host, no cluster. It builds the
//! tutorial's cluster in network namespaces (pod default/alpine, the node, kube-dns served by
//! NSD, and "the world" answering for www.microsoft.com and www.google.com), runs
//! `fqdnd run --mode transparent` on the node, and walks the four stages: at each it applies the
//! tutorial's policy, runs the tutorial's commands from the pod with a real musl client, and shows
//! what `hubble observe --pod alpine` showed, from `fqdnd observe`. Then it asks
//! `fqdnd policy suggest` for the policy the last stage's flows call for.
//!
//! Everything it creates (namespaces, NSD, the agent, its bpffs mount, temp files) is removed when
//! it ends, also on Ctrl-C. The namespaces are the test harness's (tests/common/topology.rs),
//! shared so the demo shows exactly what tests/netns_seed.rs checks.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use common::clients::Libc;
use common::topology::{Cluster, DROPPED_CONNECT, KUBE_DNS_IP, POD_IP4, WWW_GOOGLE4, WWW_MICROSOFT4, seed_stage};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Stop between steps once Ctrl-C (or SIGTERM) came: returning drops the cluster, which removes
/// everything. A step in progress finishes first (each is bounded, a few seconds at most).
fn check() -> Result<(), Interrupted> {
    if INTERRUPTED.load(Ordering::SeqCst) { Err(Interrupted) } else { Ok(()) }
}

#[derive(Debug)]
struct Interrupted;

fn say(text: &str) {
    println!("{text}");
}

/// A command as the tutorial runs it, then what fqdnd's version of it printed.
fn shell(prompt: &str, command: &str, output: &str) {
    println!("{prompt}$ {command}");
    for line in output.lines() {
        println!("    {line}");
    }
}

fn stage(n: u8, title: &str, c: &mut Cluster) -> Result<SystemTime, Interrupted> {
    check()?;
    let path = seed_stage(n);
    let name = path.file_name().and_then(|f| f.to_str()).unwrap_or_default().to_string();
    println!("\n== Stage {n}: {title} ==");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    shell("", &format!("kubectl apply -f {name}     # here: the file goes into fqdnd's policy directory"), &text);
    let start = SystemTime::now();
    c.set_policy("locking-down-alpine.yaml", &path);
    Ok(start)
}

fn nslookup(c: &Cluster, name: &str) {
    let r = c.getaddrinfo(Libc::Musl, name, None);
    let out = if r.exit_code == 0 { r.output.clone() } else { format!("lookup failed: {}", r.output.trim()) };
    shell("(alpine) ", &format!("nslookup {name}     # musl getaddrinfo"), &out);
}

fn curl(c: &Cluster, name: &str) {
    let r = c.getaddrinfo(Libc::Musl, name, Some(80));
    let out = match (r.exit_code, r.connected) {
        (0, true) => format!("{}HTTP/1.1 200 OK (the world's server answered)", r.output),
        (2, _) => format!("{}curl: (6) Could not resolve host: {name}", r.output),
        _ => format!("{}curl: (28) Connection timed out", r.output),
    };
    shell("(alpine) ", &format!("curl -I {name}     # musl getaddrinfo + TCP connect to port 80"), &out);
}

fn dig(c: &Cluster, name: &str) {
    let out = match c.dig(name, "A", &[]) {
        Ok(r) => format!("status: {}, answer: {}", r.status, r.data("A").join(", ")),
        Err(_) => ";; connection timed out; no servers could be reached".to_string(),
    };
    shell("(alpine) ", &format!("nslookup {name}     # dig, one try of 2 s"), &out);
}

fn connect(c: &Cluster, name: &str, dst: SocketAddr) {
    let (_, res) = c.connect(dst, DROPPED_CONNECT);
    let out = match res {
        Ok(_) => "HTTP/1.1 200 OK".to_string(),
        Err(e) => format!("curl: (28) Connection timed out ({e})"),
    };
    shell("(alpine) ", &format!("curl -I {name}     # TCP connect to {dst}"), &out);
}

fn observe(c: &Cluster, since: SystemTime, extra: &[&str]) {
    let since = humantime::format_rfc3339_millis(since).to_string();
    let mut args = vec!["observe", "--pod", "default/alpine", "--since", &since];
    args.extend_from_slice(extra);
    let out = c.cli(&args);
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    if text.trim().is_empty() {
        text = "(no flows)".into();
    }
    shell("", "hubble observe --pod alpine     # here: fqdnd observe --pod default/alpine", &text);
}

fn walk(c: &mut Cluster) -> Result<(), Interrupted> {
    let t = stage(1, "locking-down-alpine selects the pod; without rules nothing is restricted", c)?;
    nslookup(c, "www.microsoft.com");
    curl(c, "www.microsoft.com");
    observe(c, t, &[]);

    let t = stage(2, "deny everything: empty egress and ingress rules", c)?;
    dig(c, "www.microsoft.com");
    connect(c, "www.microsoft.com", SocketAddr::new(WWW_MICROSOFT4, 80));
    say("# The tutorial's \"timeouts or similar error messages\". Who is the pod trying to talk to?");
    observe(c, t, &[]);

    let t = stage(3, "allow DNS: UDP 53 to kube-dns (toEndpoints)", c)?;
    nslookup(c, "www.microsoft.com");
    curl(c, "www.microsoft.com");
    say("# DNS works; the connection is still dropped: nothing allows 10.200.0.1:80.");
    observe(c, t, &["--type", "drop"]);

    let t = stage(4, "DNS through fqdnd (rules.dns matchPattern \"*\") and toFQDNs *.microsoft.com", c)?;
    curl(c, "www.microsoft.com");
    say("# fqdnd answered the lookups and wrote www.microsoft.com's IPs into the allow map first.");
    curl(c, "www.google.com");
    say("# www.google.com resolves (DNS allows \"*\"), but no toFQDNs selector allows its IPs:");
    say("# the drops name what the pod resolved to them.");
    observe(c, t, &["--protocol", "dns", "--fqdn", "www.microsoft.com"]);
    observe(c, t, &["--type", "drop"]);

    check()?;
    println!("\n== And then: see the drop, write the rule ==");
    say("# fqdnd policy suggest writes the policy this stage's flows call for: rules.dns for every name");
    say("# asked, toFQDNs for the names resolved and then connected to and dropped (allowed connections");
    say("# make no flows: record under a policy that denies them to see them all).");
    let since = humantime::format_rfc3339_millis(t).to_string();
    let out = c.cli(&["policy", "suggest", "--endpoint", "default/alpine", "--since", &since]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    shell("", "fqdnd policy suggest --endpoint default/alpine", &text);
    Ok(())
}

fn main() -> std::process::ExitCode {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("demo: needs root (it creates network namespaces and loads eBPF programs): sudo scripts/demo");
        return std::process::ExitCode::from(2);
    }
    say("== fqdnd demo: the seed tutorial on this host, no cluster ==");
    say(&format!(
        "Building the tutorial's cluster in network namespaces: pod default/alpine ({POD_IP4}), the node, \
         kube-dns ({KUBE_DNS_IP}, NSD serving fixtures/zones), the world (www.microsoft.com {WWW_MICROSOFT4}, \
         www.google.com {WWW_GOOGLE4})."
    ));
    let mut c = Cluster::start();
    let log = c.log();
    if let Some(line) = log.lines().find(|l| l.contains("fqdnd ready")) {
        say(&format!(
            "fqdnd run --mode transparent is up on the node (no policy yet, and it says so):\n    {}",
            line.trim()
        ));
    }
    let result = walk(&mut c);
    let names = [
        c.pod.name().to_string(),
        c.node.name().to_string(),
        c.kube_dns.name().to_string(),
        c.world.name().to_string(),
    ];
    drop(c);
    let left: Vec<&String> = names.iter().filter(|n| Path::new("/run/netns").join(n).exists()).collect();
    match (result, left.is_empty()) {
        (Ok(()), true) => {
            say("\nCleaned up: namespaces, NSD, the agent and its pins are gone.");
            std::process::ExitCode::SUCCESS
        }
        (Err(Interrupted), true) => {
            say("\nInterrupted; cleaned up: namespaces, NSD, the agent and its pins are gone.");
            std::process::ExitCode::from(130)
        }
        (_, false) => {
            eprintln!("demo: namespaces left behind: {left:?}");
            std::process::ExitCode::FAILURE
        }
    }
}
