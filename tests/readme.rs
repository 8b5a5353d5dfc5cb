//! "A README command that CI does not run is a bug": every command in README.md's `sh` blocks is
//! run here as written, from the repository root, in order, the way a person following the README
//! would: the first command (the agent) in the background, the rest one after the other. A `text`
//! block after a `sh` block is what those commands print (its lines must appear, in order; digits,
//! month names and spacing may differ); a `text agent` block is what the agent's terminal shows.
//! `scripts/test` and `scripts/demo` are run by .ci/run itself (this test runs inside the first, and
//! tests/demo.rs checks the second's output), so they must appear there as written. A `sh kubernetes`
//! block needs a cluster: tests/kube_readme.rs runs its `kubectl` lines against a real API server.
//!
//! As root everything runs in a network namespace of its own (the README's fixed ports cannot
//! collide with anything); otherwise on this host's loopback. The first command is
//! `cargo run --release`: .ci/run builds the release binary first, so it starts at once there.

mod common;

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::Netns;
use common::privileged;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[derive(Debug)]
struct Block {
    info: String,
    lines: Vec<String>,
}

fn blocks(md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    for line in md.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => current = Some(Block { info: info.trim().to_string(), lines: Vec::new() }),
            (Some(_), Some(_)) => out.extend(current.take()),
            (Some(b), None) => b.lines.push(line.to_string()),
            (None, None) => {}
        }
    }
    out
}

/// A block's commands: continuation lines joined, comments and blank lines left out.
fn commands(block: &Block) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in &block.lines {
        let t = line.trim();
        if let Some(head) = t.strip_suffix('\\') {
            pending.push_str(head.trim_end());
            pending.push(' ');
            continue;
        }
        pending.push_str(t);
        let cmd = strip_comment(&pending).trim().to_string();
        pending.clear();
        if !cmd.is_empty() {
            out.push(cmd);
        }
    }
    out
}

/// Drop a trailing `# comment` (a `#` after whitespace, outside quotes).
fn strip_comment(line: &str) -> String {
    let (mut quote, mut prev_space) = (None, true);
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') if prev_space => return line[..i].to_string(),
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    line.to_string()
}

/// For comparing output: no colours, digits as `N`, month names as `MON`, single spaces.
fn normalize(line: &str) -> String {
    let line = common::fqdnd::strip_ansi(line);
    let mut out = String::new();
    let mut last_digit = false;
    for c in line.chars() {
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('N');
            }
            last_digit = true;
        } else {
            out.push(c);
            last_digit = false;
        }
    }
    let mut out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    for m in ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"] {
        out = out.replace(&format!("{m} N "), "MON N ");
    }
    out
}

/// Every expected line, in order, within a line of `actual`.
fn check_lines(expected: &[String], actual: &str, what: &str) {
    let actual: Vec<String> = actual.lines().map(normalize).collect();
    let mut at = 0;
    for want in expected.iter().map(|l| normalize(l)).filter(|l| !l.is_empty() && l != "...") {
        match actual[at..].iter().position(|l| l.contains(&want)) {
            Some(i) => at += i + 1,
            None => panic!(
                "{what}: the README shows {want:?}, which is not (or not in this order) in:\n{}",
                actual.join("\n")
            ),
        }
    }
}

/// Where commands run: this host, or (as root) a network namespace of the test's own.
struct Place {
    netns: Option<Netns>,
    path: String,
}

impl Place {
    fn command(&self, cmd: &str) -> Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.path().display())).args(["--", "bash", "-c", cmd]);
                c
            }
            None => {
                let mut c = Command::new("bash");
                c.args(["-c", cmd]);
                c
            }
        };
        c.current_dir(root()).env("PATH", &self.path).env_remove("FQDND_STATE_DIR").env_remove("FQDND_LOG");
        // A person's shell, not the test runner's: the variables cargo and nextest set for a test
        // would make the README's `cargo run` see a different build (and rebuild fqdnd).
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            let runner = (k.starts_with("CARGO") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR")
                || k.starts_with("NEXTEST")
                || k.starts_with("RUST_TEST")
                || k == "LD_LIBRARY_PATH";
            if runner {
                c.env_remove(&key);
            }
        }
        c
    }
}

/// The agent of the first command, in a process group of its own (cargo, then fqdnd), stopped on
/// drop; the README's NSD too if the README's own `kill` did not run.
struct Background {
    child: Child,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Background {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test created.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

struct NsdGuard;

impl Drop for NsdGuard {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string("/tmp/fqdnd-quickstart-nsd.pid")
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            // SAFETY: kill(2) on the NSD this test started (its pid file).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

fn start_agent(place: &Place, cmd: &str) -> Background {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("agent.out");
    let file = std::fs::File::create(&out).unwrap();
    let mut c = place.command(cmd);
    c.stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file).process_group(0);
    let child = c.spawn().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let mut agent = Background { child, out, _dir: dir };
    // A release build may come first when .ci/run did not make one: a bound on a hang, no timing.
    let deadline = Instant::now() + Duration::from_secs(3600);
    while !agent.output().contains("fqdnd ready") {
        if let Ok(Some(status)) = agent.child.try_wait() {
            panic!("{cmd} exited ({status}) before it was ready:\n{}", agent.output());
        }
        assert!(Instant::now() < deadline, "{cmd}: not ready:\n{}", agent.output());
        std::thread::sleep(Duration::from_millis(100));
    }
    agent
}

fn run(place: &Place, cmd: &str) -> String {
    let mut c = place.command(cmd);
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "README command {cmd:?} failed ({status}):\n{out}{err}");
    out + &err
}

#[test]
fn every_readme_command_runs_as_written() {
    let md = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let ci = std::fs::read_to_string(root().join(".ci/run")).expect(".ci/run");
    let all = blocks(&md);

    // The README opens with exactly two commands: fqdnd's main job, and the tests.
    let first = commands(&all[0]);
    assert_eq!(all[0].info, "sh", "the README starts with a sh block");
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(first[0].starts_with("cargo run --release -- run"), "{first:?}");
    assert_eq!(first[1], "scripts/test");

    // As root, in a namespace of our own; not as root, the host's loopback (the ports must be free).
    let netns = privileged::available("every_readme_command_runs_as_written (in its own namespace)")
        .then(|| Netns::new("readme"));
    let release = root().join("target/release");
    let path = format!("{}:{}", release.display(), std::env::var("PATH").unwrap_or_default());
    let place = Place { netns, path };
    let _nsd = NsdGuard;
    let mut agent: Option<Background> = None;
    let mut agent_expected: Vec<String> = Vec::new();
    let mut ran = 0;
    let mut last_output: Option<String> = None;
    for block in &all {
        match block.info.as_str() {
            "sh" => {
                let mut output = String::new();
                let mut checked_here = true;
                for cmd in commands(block) {
                    if cmd.starts_with("cargo run --release -- run ") {
                        agent = Some(start_agent(&place, &cmd));
                    } else if cmd.starts_with("scripts/") {
                        assert!(ci.lines().any(|l| l.trim() == cmd), ".ci/run must run {cmd:?} as written");
                        checked_here = false;
                    } else {
                        output.push_str(&run(&place, &cmd));
                    }
                    ran += 1;
                }
                last_output = checked_here.then_some(output);
            }
            "text" => {
                if let Some(out) = last_output.take() {
                    check_lines(&block.lines, &out, "the commands before it");
                }
            }
            "text agent" => agent_expected.extend(block.lines.iter().cloned()),
            _ => last_output = None,
        }
    }
    assert!(ran >= 10, "the README's commands: only {ran} found");
    let agent = agent.expect("the README starts the agent");
    check_lines(&agent_expected, &agent.output(), "the agent's terminal");
}

#[test]
fn parsing() {
    let b = Block {
        info: "sh".into(),
        lines: vec!["a \\".into(), "  b  # c".into(), "".into(), "kill \"$(cat x#y)\"".into()],
    };
    assert_eq!(commands(&b), ["a b", "kill \"$(cat x#y)\""]);
    assert_eq!(normalize("Dec  2 00:35:05.095: x:37033  ->"), "MON N N:N:N.N: x:N ->");
    check_lines(&["b N".into(), "d".into()], "a\nb 7\nc\nd\n", "t");
    let r = std::panic::catch_unwind(|| check_lines(&["d".into(), "b".into()], "b\nd\n", "t"));
    assert!(r.is_err(), "order matters");
}
