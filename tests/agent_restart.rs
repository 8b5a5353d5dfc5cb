//! Restarting the agent under load (plain mode, loopback, real NSD): with `--takeover` the new
//! agent serves the old one's very sockets before the old one stops reading, so not one query of
//! a steady load goes unanswered. The netns twin (transparent mode, through the datapath) is
//! tests/netns_restart.rs.

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::dns_server::DnsServer;
use common::fqdnd::{Fqdnd, PolicyFixture, binary, strip_ansi};
use common::load::steady_load;
use common::wait;

fn nsd() -> DnsServer {
    DnsServer::builder().fixture_zone("microsoft.com").listen("127.0.0.2:0".parse().unwrap()).start().expect("nsd")
}

/// `fqdnd run` with `args` on `state` (not the harness's own directory), stderr to `log`.
fn agent(state: &Path, args: &[String], log: &Path) -> Child {
    Command::new(binary())
        .arg("run")
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("FQDND_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("starting fqdnd")
}

fn log_of(path: &Path) -> String {
    strip_ansi(&std::fs::read_to_string(path).unwrap_or_default())
}

#[test]
fn takeover_under_load_loses_no_query() {
    let nsd = nsd();
    let fx = PolicyFixture::new(nsd.addr.ip(), nsd.addr.port(), &["*.microsoft.com"]).unwrap();
    let mut args = fx.args();
    args.extend(["--upstream".into(), nsd.addr.to_string(), "--metrics-addr".into(), "127.0.0.1:0".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let old = Fqdnd::start(&refs).unwrap();
    let state = old.dir.path().join("state");
    let addr = old.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || steady_load(sock, addr, 500, stop))
    };
    std::thread::sleep(Duration::from_secs(1));

    let mut new_args = args.clone();
    new_args.extend(["--listen".into(), addr.to_string(), "--takeover".into()]);
    let new_log = old.dir.path().join("new.log");
    let mut new = agent(&state, &new_args, &new_log);
    old.wait_log("fqdnd stopped: handed over to its successor").unwrap();
    wait::until_true("the new agent to confirm the takeover", Duration::from_secs(30), || {
        assert!(new.try_wait().unwrap().is_none(), "the new agent exited:\n{}", log_of(&new_log));
        log_of(&new_log).contains("took over")
    });
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let load = load.join().unwrap();
    eprintln!("takeover under load: {load:?}");
    assert!(load.sent > 500, "{load:?}");
    assert_eq!(
        load.answered,
        load.sent,
        "queries lost across the takeover: {load:?}\nold:\n{}\nnew:\n{}",
        old.log(),
        log_of(&new_log)
    );

    // The new agent holds the state directory now: its admin socket answers, a third is refused.
    let r = common::dig::query(common::dig::Client::Dig, addr, "www.microsoft.com", "A", &[]).unwrap();
    assert_eq!(r.data("A"), ["10.200.0.1"], "{}", r.raw);
    let third = Command::new(binary())
        .arg("run")
        .arg("--state-dir")
        .arg(&state)
        .args(&args)
        .args(["--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&third.stderr);
    assert!(err.contains(&format!("pid {}", new.id())), "the lock moved to the new agent: {err}");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(new.id() as i32, libc::SIGTERM) };
    new.wait().unwrap();
}
