//! `fqdnd status`, `fqdnd version`, `fqdnd_build_info` and the logged effective configuration,
//! against the real agent in plain mode on loopback (no root needed).

mod common;

use std::process::{Command, Output};

use common::dig::{self, Client};
use common::dns_server::DnsServer;
use common::fqdnd::{Fqdnd, PolicyFixture};
use serde_json::Value;

fn nsd() -> DnsServer {
    DnsServer::builder().fixture_zone("microsoft.com").listen("127.0.0.2:0".parse().unwrap()).start().expect("nsd")
}

fn cli(f: &Fqdnd, args: &[&str]) -> Output {
    Command::new(common::fqdnd::binary())
        .args(args)
        .arg("--state-dir")
        .arg(f.dir.path().join("state"))
        .env_remove("FQDND_STATE_DIR")
        .output()
        .unwrap()
}

fn start(nsd: &DnsServer, extra: &[&str]) -> (PolicyFixture, Fqdnd) {
    let fx = PolicyFixture::new(nsd.addr.ip(), nsd.addr.port(), &["*.microsoft.com"]).unwrap();
    let mut args = fx.args();
    args.extend(["--upstream".to_string(), nsd.addr.to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let f = Fqdnd::start(&refs).unwrap();
    (fx, f)
}

#[test]
fn status_tells_mode_policies_who_is_policed_cache_and_errors() {
    let nsd = nsd();
    let (fx, f) = start(&nsd, &[]);
    f.wait_log("fqdnd ready").unwrap();
    let r = dig::query(Client::Dig, f.addr, "www.microsoft.com", "A", &[]).unwrap();
    assert_eq!(r.data("A"), ["10.200.0.1"], "{}", r.raw);

    let out = cli(&f, &["status", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v;
    assert_eq!(s["ready"], true, "{s}");
    assert_eq!(s["details"]["mode"], "plain", "{s}");
    assert_eq!(s["details"]["upstream"], nsd.addr.to_string(), "{s}");
    assert_eq!(s["details"]["policies"], serde_json::json!(["default/dns-allow"]), "{s}");
    assert_eq!(s["details"]["policed"], serde_json::json!(["default/alpine (127.0.0.1, ::1)"]), "{s}");
    assert_eq!(s["details"]["endpoints"], 2, "{s}");
    assert!(s["details"].get("datapath").is_none(), "plain mode has no kernel datapath: {s}");
    assert!(s["details"].get("last_errors").is_none(), "nothing went wrong yet: {s}");

    // A broken policy: the agent keeps the last good set and status shows the problem.
    fx.write_policy(
        "broken.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: {endpointSelectr: {}}\n",
    )
    .unwrap();
    let errors = common::wait::until("status to show the broken policy", std::time::Duration::from_secs(30), || {
        let out = cli(&f, &["status", "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let errors = v["details"]["last_errors"].as_array()?.clone();
        errors.iter().any(|e| e.as_str().unwrap_or("").contains("broken.yaml")).then_some(errors)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", f.log()));
    assert!(
        errors.iter().all(|e| e.as_str().unwrap().contains(" WARN ") || e.as_str().unwrap().contains(" ERROR ")),
        "{errors:?}"
    );

    let text = String::from_utf8(cli(&f, &["status"]).stdout).unwrap();
    for want in [
        "Ready:       yes",
        "Mode:        plain",
        "policed: default/alpine (127.0.0.1, ::1)",
        "Cache:       1 entries",
        "broken.yaml",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
}

#[test]
fn status_without_an_agent_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::fqdnd::binary()).args(["status", "--state-dir"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fqdnd.sock"), "names the socket it tried: {err}");
}

#[test]
fn version_and_build_info_carry_the_commit() {
    let out =
        Command::new(common::fqdnd::binary()).arg("version").env("FQDND_STATE_DIR", "/nonexistent").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().next().unwrap_or_default().to_string();
    assert!(line.starts_with(&format!("fqdnd {} (commit ", env!("CARGO_PKG_VERSION"))), "{text}");
    let commit = line.rsplit_once("commit ").unwrap().1.trim_end_matches(')').to_string();
    // Built from a git checkout (CI clones one): the commit is HEAD's.
    let head =
        Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")).output();
    if let Ok(head) = head
        && head.status.success()
    {
        assert_eq!(commit, String::from_utf8_lossy(&head.stdout).trim(), "{text}");
    }
    assert_ne!(commit, "unknown", "{text}");

    let nsd = nsd();
    let (_fx, f) = start(&nsd, &[]);
    f.wait_log("metrics server listening").unwrap();
    let log = f.log();
    let addr = log.split("metrics server listening addr=").nth(1).and_then(|l| l.split_whitespace().next()).unwrap();
    let page =
        Command::new("curl").args(["-sS", "--max-time", "5"]).arg(format!("http://{addr}/metrics")).output().unwrap();
    let page = String::from_utf8_lossy(&page.stdout);
    let want = format!("fqdnd_build_info{{version=\"{}\",commit=\"{commit}\"}} 1", env!("CARGO_PKG_VERSION"));
    assert!(page.contains(&want), "{want} not in\n{page}");
    let status: Value = serde_json::from_slice(&cli(&f, &["status", "-o", "json"]).stdout).unwrap();
    assert_eq!(status["commit"], commit.as_str());
    let both = String::from_utf8(cli(&f, &["version"]).stdout).unwrap();
    assert!(both.contains(&format!("agent {} (commit {commit})", env!("CARGO_PKG_VERSION"))), "{both}");
}

/// The effective configuration the agent logs, fed back to a second agent as its `--config`:
/// that agent starts, and logs the very same configuration.
#[test]
fn the_logged_configuration_runs_an_identical_agent() {
    let nsd = nsd();
    let (_fx, f) =
        start(&nsd, &["--min-ttl", "7", "--tcp-idle-timeout", "3s", "--node-name", "n1", "--print-flows", "json"]);
    let logged = |f: &Fqdnd| -> String {
        let log = f.log();
        let line = log.lines().find(|l| l.contains("effective configuration")).expect("the config line").to_string();
        line.split_once("config=").expect("config=").1.trim().to_string()
    };
    let first = logged(&f);
    drop(f);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("logged.yaml");
    std::fs::write(&file, &first).unwrap();
    // The harness gives the second agent a state directory of its own (the flag overrides the
    // file's); everything else comes from the logged line alone.
    let second = Fqdnd::start_exact(&["--config", file.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("the logged config did not run: {e}\n{first}"));
    let again = logged(&second);
    let (mut a, mut b): (Value, Value) = (serde_json::from_str(&first).unwrap(), serde_json::from_str(&again).unwrap());
    assert_ne!(a["state-dir"], b["state-dir"]);
    a["state-dir"] = Value::Null;
    b["state-dir"] = Value::Null;
    assert_eq!(a, b, "first:\n{first}\nsecond:\n{again}");
    assert_eq!(a["min-ttl"], 7);
    assert_eq!(a["tcp-idle-timeout"], "3s");
}
