//! A second Hubble client in another language against a real agent: Python grpcio with stubs
//! generated from proto/ by grpcio-tools at run time (tests/hubble/observer_client.py). It checks
//! ServerStatus, GetFlows (number, filters, follow) and GetNodes, and that the protobuf JSON of
//! every flow it received (Google's json_format) equals `fqdnd observe -o json`'s line for it.
//! Over the default Unix socket and over TCP.
//!
//! Needs python3 with grpcio, grpcio-tools and protobuf (`.ci/run` installs them with pip).

mod common;

use std::path::Path;
use std::process::Command;

use common::dns_server::free_port;
use common::hubble::{Agent, NODE, blocking, client, wait_seen};
use fqdnd::hubble::ServerAddr;

/// An agent that answered three queries, then the Python client against `target`.
async fn run(listen: &[&str], target: impl Fn(&Agent) -> (String, String, Option<&'static str>)) {
    let listen: Vec<String> = listen.iter().map(|s| s.to_string()).collect();
    let agent = blocking(move || {
        let args: Vec<&str> = listen.iter().map(String::as_str).collect();
        let agent = Agent::start(&args);
        assert_eq!(agent.dig("www.microsoft.com", "A").data("A"), ["10.200.0.1"]);
        assert_eq!(agent.dig("www.google.com", "A").status, "NXDOMAIN");
        assert_eq!(agent.dig("login.microsoft.com", "AAAA").status, "NOERROR");
        agent
    })
    .await;
    let (target, address, authority) = target(&agent);
    let rust_side = if address.starts_with("unix:") { agent.server() } else { address.parse::<ServerAddr>().unwrap() };
    wait_seen(&mut client(&rust_side).await, 6).await;

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new("python3");
    cmd.arg(root.join("tests/hubble/observer_client.py"))
        .args(["--target", &target, "--address", &address])
        .arg("--proto-dir")
        .arg(root.join("proto"))
        .arg("--fqdnd")
        .arg(env!("CARGO_BIN_EXE_fqdnd"))
        .arg("--state-dir")
        .arg(agent.state_dir())
        .args(["--dns", &agent.fqdnd.addr.to_string(), "--node", NODE]);
    if let Some(a) = authority {
        cmd.args(["--authority", a]);
    }
    let out = blocking(move || cmd.output().expect("python3 (CI installs it, with grpcio and grpcio-tools)")).await;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the Python client failed ({}); pip install grpcio grpcio-tools if they are missing\n{stdout}\n{stderr}\nagent log:\n{}",
        out.status,
        agent.fqdnd.log()
    );
    let checks: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("checks: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no 'checks: N' line:\n{stdout}"));
    // Every check of the script ran (a script that returned early would report fewer).
    assert!(checks >= 70, "only {checks} checks ran:\n{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_over_the_unix_socket() {
    run(&[], |a| {
        let addr = format!("unix:{}", a.socket().display());
        (addr.clone(), addr, Some("localhost"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_over_tcp() {
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1".parse().unwrap()).unwrap());
    let l = listen.clone();
    run(&["--hubble-listen", &l], move |_| (listen.clone(), listen.clone(), None)).await;
}
