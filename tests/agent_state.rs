//! The agent's state and bpffs directories: private to the agent's user, and one agent each. A
//! second agent on the same state or bpffs directory exits at once, naming the first one's pid,
//! and changes nothing of the first's (in transparent mode: pods' DNS keeps working after it).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::dns_server::DnsServer;
use common::fqdnd::{Fqdnd, PolicyFixture, binary};
use common::topology::{Cluster, WWW_MICROSOFT4, seed_stage};
use common::{privileged, wait};

fn nsd() -> DnsServer {
    DnsServer::builder().fixture_zone("microsoft.com").listen("127.0.0.2:0".parse().unwrap()).start().expect("nsd")
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).mode() & 0o7777
}

/// Wait for `child` to exit (a generous bound only guards a hang) and return its code and stderr.
fn exit_of(mut child: std::process::Child, what: &str) -> (Option<i32>, String) {
    let status = wait::until(what, Duration::from_secs(30), || child.try_wait().ok().flatten());
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            if let Some(mut s) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut s, &mut err);
            }
            panic!("{e}: it kept running\n{err}");
        }
    };
    let mut err = String::new();
    if let Some(mut s) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut s, &mut err);
    }
    (status.code(), common::fqdnd::strip_ansi(&err))
}

#[test]
fn state_files_are_private() {
    let nsd = nsd();
    let fx = PolicyFixture::new(nsd.addr.ip(), nsd.addr.port(), &["*.microsoft.com"]).unwrap();
    let mut args = fx.args();
    args.extend(["--upstream".into(), nsd.addr.to_string()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let f = Fqdnd::start(&refs).unwrap();
    let state = f.dir.path().join("state");
    assert_eq!(mode(&state), 0o700, "the state directory");
    assert_eq!(mode(&state.join("listeners.json")), 0o600, "listeners.json");
    assert_eq!(mode(&state.join("fqdnd.sock")), 0o600, "the admin socket");
    // The snapshot is written at shutdown, before the listeners file is removed.
    // SAFETY: kill(2) on the agent we started.
    unsafe { libc::kill(f.pid() as i32, libc::SIGTERM) };
    wait::until_true("the agent to shut down", Duration::from_secs(30), || !state.join("listeners.json").exists());
    let snapshot = state.join("cache.snapshot");
    assert_eq!(mode(&snapshot), 0o600, "cache.snapshot names every host every pod resolved");
}

/// `fqdnd run` in plain mode with no --state-dir, as `nobody`, with `tmpdir` as its TMPDIR and no
/// XDG_RUNTIME_DIR: its default state directory is `<tmpdir>/fqdnd-65534`.
fn run_as_nobody(tmpdir: &Path, upstream: &str) -> std::process::Child {
    let mut cmd = Command::new(binary());
    cmd.args(["run", "--mode", "plain", "--listen", "127.0.0.1:0", "--metrics-addr", "none", "--upstream", upstream])
        .env_remove("XDG_RUNTIME_DIR")
        .env("TMPDIR", tmpdir)
        .env("FQDND_LOG", "info")
        .current_dir(tmpdir)
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd.spawn().expect("starting fqdnd as nobody")
}

#[test]
fn unsafe_default_state_dir_is_refused() {
    if !privileged::available("unsafe_default_state_dir_is_refused") {
        return;
    }
    let nsd = nsd();
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o1777)).unwrap();
    let dir = tmp.path().join("fqdnd-65534");

    // Made in advance by another user (root here): whoever owns it could plant a snapshot.
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let (code, err) = exit_of(run_as_nobody(tmp.path(), &nsd.addr.to_string()), "fqdnd to refuse root's directory");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&dir.display().to_string()) && err.contains("belongs to uid 0"), "{err}");

    // Its own, but writable by everyone.
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let (code, err) = exit_of(run_as_nobody(tmp.path(), &nsd.addr.to_string()), "fqdnd to refuse a 0777 directory");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("writable by other users (mode 0777)"), "{err}");
    assert_eq!(mode(&dir), 0o777, "refused, not changed");

    // None there: made 0700, owned by the agent's user, and the agent runs.
    fs::remove_dir(&dir).unwrap();
    let mut child = run_as_nobody(tmp.path(), &nsd.addr.to_string());
    wait::until_true("the agent to list its listeners", Duration::from_secs(30), || {
        assert!(child.try_wait().unwrap().is_none(), "fqdnd exited as nobody with a fresh state directory");
        dir.join("listeners.json").exists()
    });
    let meta = fs::metadata(&dir).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (65534, 0o700));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
}

#[test]
fn second_agent_on_a_state_dir_names_the_first() {
    let nsd = nsd();
    let fx = PolicyFixture::new(nsd.addr.ip(), nsd.addr.port(), &["*.microsoft.com"]).unwrap();
    let mut args = fx.args();
    args.extend(["--upstream".into(), nsd.addr.to_string()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = Fqdnd::start(&refs).unwrap();
    let state = first.dir.path().join("state");
    let before = fs::read(state.join("listeners.json")).unwrap();

    let second = Command::new(binary())
        .args(["run", "--listen", "127.0.0.1:0", "--metrics-addr", "none"])
        .args(&args)
        .arg("--state-dir")
        .arg(&state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, err) = exit_of(second, "the second agent to exit");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("state directory {} is in use", state.display())), "{err}");
    assert!(err.contains(&format!("pid {}", first.pid())), "the holder's pid: {err}");
    // Nothing of the first agent's was touched.
    assert_eq!(fs::read(state.join("listeners.json")).unwrap(), before);
    let r = common::dig::query(common::dig::Client::Dig, first.addr, "www.microsoft.com", "A", &[]).unwrap();
    assert_eq!(r.data("A"), ["10.200.0.1"], "{}", r.raw);
}

#[test]
fn second_agent_on_a_bpffs_dir_exits_and_dns_keeps_working() {
    if !privileged::available("second_agent_on_a_bpffs_dir_exits_and_dns_keeps_working") {
        return;
    }
    let mut c = Cluster::start();
    c.set_policy("seed.yaml", &seed_stage(4));
    let dig = |c: &Cluster| c.dig("www.microsoft.com", "A", &[]).map(|r| r.data("A"));
    assert_eq!(dig(&c).expect("DNS through the first agent"), [WWW_MICROSOFT4.to_string()]);

    // Another port and state directory, the same bpffs directory: it used to take the redirect
    // over, and once it exited every pod's DNS went unanswered.
    let other_state = c.dir.path().join("state2");
    let mut cmd = Command::new(binary());
    cmd.args(["run", "--mode", "transparent", "--listen", "127.0.0.1:10054", "--listen", "[::1]:10054"])
        .arg("--policies")
        .arg(c.policies_dir())
        .arg("--endpoints")
        .arg(c.dir.path().join("endpoints.yaml"))
        .arg("--state-dir")
        .arg(&other_state)
        .arg("--bpffs-dir")
        .arg(c.bpffs_dir())
        .args(["--metrics-addr", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let second = c.spawn_in_node(&mut cmd);
    let (code, err) = exit_of(second, "the second agent to exit");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("bpffs directory {} is in use", c.bpffs_dir().display())), "{err}");
    assert!(err.contains(&format!("pid {}", c.agent_pid())), "the holder's pid: {err}");

    assert_eq!(dig(&c).expect("DNS after the second agent gave up"), [WWW_MICROSOFT4.to_string()]);
    // And the first agent still serves after a restart of its own (the lock died with it).
    c.kill_agent();
    c.start_agent();
    assert_eq!(dig(&c).expect("DNS after restarting the first agent"), [WWW_MICROSOFT4.to_string()]);
}
