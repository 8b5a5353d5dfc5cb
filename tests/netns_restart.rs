//! Restarting the agent under a steady load of real queries from a pod, through the datapath
//! (transparent mode, eBPF redirect, NSD as kube-dns). Root only.
//!
//! The planned restart is the handover: a new agent with `--takeover` serves the running one's
//! transparent sockets (the datapath finds them by address, so it keeps steering to them) and the
//! old one stops reading, answers what it has in flight and exits: not one query is lost. A crash
//! (SIGKILL) cannot hand over; `restart_figures` (ignored; benches/restart.sh runs it) measures
//! every way of restarting for the record.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::load::{Load, steady_load};
use common::privileged;
use common::topology::{Cluster, KUBE_DNS_IP, POD_IP4, seed_stage};

/// Queries per second of the load: steady, and far from what the proxy can do.
const RATE: u32 = 1000;

#[derive(Clone, Copy, Debug)]
enum Restart {
    Takeover,
    Sigterm,
    Sigkill,
}

/// A cluster with DNS proxied for the pod (the seed's stage 4), `how` restarted in the middle of
/// a steady load from the pod; what the load saw.
fn restart_under_load(c: &mut Cluster, how: Restart, settle: Duration) -> Load {
    let sock = c.pod.run(|| UdpSocket::bind(SocketAddr::new(IpAddr::V4(POD_IP4), 0))).expect("pod socket");
    let to = SocketAddr::new(IpAddr::V4(KUBE_DNS_IP), 53);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || steady_load(sock, to, RATE, stop))
    };
    std::thread::sleep(settle);
    match how {
        Restart::Takeover => {
            let status = c.takeover_agent();
            assert!(status.success(), "the previous agent exited with {status}:\n{}", c.log());
        }
        Restart::Sigterm => {
            c.stop_agent();
            c.start_agent();
        }
        Restart::Sigkill => {
            c.kill_agent();
            c.start_agent();
        }
    }
    std::thread::sleep(settle);
    stop.store(true, Ordering::Relaxed);
    load.join().expect("the load thread")
}

fn cluster() -> Cluster {
    let mut c = Cluster::start();
    c.set_policy("seed.yaml", &seed_stage(4));
    c
}

#[test]
fn takeover_through_the_datapath_loses_no_query() {
    if !privileged::available("takeover_through_the_datapath_loses_no_query") {
        return;
    }
    let mut c = cluster();
    let load = restart_under_load(&mut c, Restart::Takeover, Duration::from_secs(2));
    eprintln!("takeover: {load:?}");
    assert!(load.sent as u32 > 3 * RATE, "the load ran: {load:?}");
    assert_eq!(load.answered, load.sent, "queries lost across the takeover: {load:?}\n{}", c.log());
    assert!(c.log().contains("fqdnd stopped: handed over to its successor"), "{}", c.log());
    // Learned IPs keep working through the new agent, and it serves DNS on its own.
    let r = c.dig("www.microsoft.com", "A", &[]).expect("dig after the takeover");
    assert_eq!(r.status, "NOERROR", "{}", r.raw);
    let (_, res) = c.connect(SocketAddr::new(common::topology::WWW_MICROSOFT4, 443), common::topology::CONNECT);
    assert_eq!(res.expect("connect after the takeover"), common::topology::GREETING);
    // And it hands over again.
    let again = restart_under_load(&mut c, Restart::Takeover, Duration::from_secs(1));
    assert_eq!(again.answered, again.sent, "second takeover: {again:?}");
}

/// Figures for the record, every way of restarting: `benches/restart.sh`.
#[test]
#[ignore = "a measurement, not a check: benches/restart.sh runs it"]
fn restart_figures() {
    if !privileged::available("restart_figures") {
        return;
    }
    let runs: usize = std::env::var("RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let settle = Duration::from_secs(std::env::var("SETTLE").ok().and_then(|v| v.parse().ok()).unwrap_or(3));
    println!("restart under a steady load of {RATE} q/s from a pod through the datapath ({runs} runs each)");
    println!("{:<10} {:>8} {:>9} {:>6} {:>16}", "restart", "sent", "answered", "lost", "longest gap ms");
    let wanted = std::env::var("RESTARTS").unwrap_or_else(|_| "takeover,sigterm,sigkill".into());
    for how in [Restart::Takeover, Restart::Sigterm, Restart::Sigkill] {
        if !wanted.split(',').any(|w| w.trim() == format!("{how:?}").to_lowercase()) {
            continue;
        }
        let mut c = cluster();
        for _ in 0..runs {
            let l = restart_under_load(&mut c, how, settle);
            println!(
                "{:<10} {:>8} {:>9} {:>6} {:>16.1}",
                format!("{how:?}").to_lowercase(),
                l.sent,
                l.answered,
                l.sent - l.answered,
                l.longest_gap.as_secs_f64() * 1000.0
            );
        }
    }
}
