//! Fault A end to end: the real agent in transparent mode keeps every policy in force when its
//! policy directory is renamed away, replaced by a file or removed, and says so in its log and
//! metrics; only an existing (empty) directory takes the policies away. Root only; the harness is
//! tests/common/topology.rs.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::clients::Libc;
use common::privileged;
use common::topology::{
    APPLIED_LINE, CONNECT, Cluster, DROPPED_CONNECT, GREETING, WWW_GOOGLE4, e2e_policy, metric_sum,
};
use serde_json::Value;

/// What the agent logs when it cannot read its policy path.
const FAULT_LINE: &str = "policy path unreadable";
const FAULTS_METRIC: &str = "fqdnd_policy_source_faults_total";

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter().fold(v, |v, k| &v[*k]).as_str().unwrap_or_default()
}

/// Enforcement as dns-microsoft-only.yaml says: www.google.com is refused by the proxy (NSD
/// would answer it), and a connect to its address is dropped by the datapath, with a drop flow.
fn still_enforced(c: &Cluster, when: &str) {
    let r = c.dig("www.google.com", "A", &[]).unwrap_or_else(|e| panic!("{when}: {e}"));
    assert_eq!(r.status, "NXDOMAIN", "{when}: www.google.com must stay refused: {}\n{}", r.raw, c.log());
    let dst = SocketAddr::new(WWW_GOOGLE4, 80);
    let (sport, res) = c.connect(dst, DROPPED_CONNECT);
    assert!(res.is_err(), "{when}: the connect to {dst} went through: {res:?}");
    c.wait_flow(&["--type", "drop"], &format!("for the dropped connect :{sport} -> {dst} ({when})"), |f| {
        str_at(f, &["verdict"]) == "DROPPED"
            && str_at(f, &["IP", "destination"]) == dst.ip().to_string()
            && f["l4"]["TCP"]["source_port"].as_u64() == Some(u64::from(sport))
    });
}

/// Break the policy directory with `fault`, check that nothing changed but the log and the fault
/// counter, then put it back with `restore` and wait for the reload.
fn survive(c: &mut Cluster, what: &str, fault: impl FnOnce(&Path), restore: impl FnOnce(&Path)) {
    let dir = c.policies_dir();
    let faults_before = metric_sum(&c.metrics(), FAULTS_METRIC);
    let offset = c.log().len();
    fault(&dir);
    c.wait_log_after(offset, FAULT_LINE, what);
    c.wait_log_after(offset, APPLIED_LINE, what);
    still_enforced(c, what);
    let faults = metric_sum(&c.metrics(), FAULTS_METRIC);
    assert_eq!(faults, faults_before + 1.0, "{what}: one fault counted");

    let offset = c.log().len();
    restore(&dir);
    c.wait_log_after(offset, APPLIED_LINE, &format!("{what}, restored"));
    still_enforced(c, &format!("{what}, restored"));
}

/// Swap two paths in one step (renameat2 RENAME_EXCHANGE), so the agent never sees a moment
/// where the policy path is missing: the fault under test is the one and only change.
fn exchange(a: &Path, b: &Path) {
    use std::os::unix::ffi::OsStrExt as _;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let (ca, cb) = (c(a), c(b));
    // SAFETY: two valid NUL-terminated paths; renameat2 reads them only during the call.
    let rc =
        unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    assert_eq!(rc, 0, "exchanging {} and {}: {}", a.display(), b.display(), std::io::Error::last_os_error());
}

#[test]
fn policies_stay_in_force_until_a_readable_directory_says_otherwise() {
    if !privileged::available("policies_stay_in_force_until_a_readable_directory_says_otherwise") {
        return;
    }
    let mut c = Cluster::start();
    c.set_policy("dns.yaml", &e2e_policy("dns-microsoft-only.yaml"));
    still_enforced(&c, "policy in force");
    let aside = c.dir.path().join("policies.aside");

    survive(
        &mut c,
        "directory renamed away",
        |d| std::fs::rename(d, &aside).unwrap(),
        |d| std::fs::rename(&aside, d).unwrap(),
    );

    // The file put in its place allows every destination: were it read, www.google.com's
    // address would connect.
    let file = c.dir.path().join("open.yaml");
    std::fs::write(
        &file,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: open}\nspec:\n  \
         endpointSelector: {}\n  egress: [{toEntities: [all]}]\n",
    )
    .unwrap();
    survive(&mut c, "directory replaced by a file", |d| exchange(d, &file), |d| exchange(d, &file));

    // Removed: moved out of the way in one step and deleted (an `rm -r` in place would first
    // show an existing, emptied directory, which is a real "no policies").
    let copy = c.dir.path().join("policies.copy");
    std::fs::create_dir(&copy).unwrap();
    std::fs::copy(c.policies_dir().join("dns.yaml"), copy.join("dns.yaml")).unwrap();
    survive(
        &mut c,
        "directory removed",
        |d| {
            std::fs::rename(d, &aside).unwrap();
            std::fs::remove_dir_all(&aside).unwrap();
        },
        |d| std::fs::rename(&copy, d).unwrap(),
    );

    // Allowed names still resolve and connect after all that.
    let r = c.getaddrinfo(Libc::Musl, "www.microsoft.com", Some(443));
    assert_eq!((r.exit_code, r.connected), (0, true), "www.microsoft.com:443: {r:?}\n{}", c.log());

    // An existing, empty directory is a real "no policies": nothing is refused or dropped.
    let offset = c.log().len();
    std::fs::remove_file(c.policies_dir().join("dns.yaml")).unwrap();
    c.wait_log_after(offset, "policies=0", "the emptied directory");
    c.wait_log_after(offset, APPLIED_LINE, "the emptied directory");
    assert!(!c.log()[offset..].contains(FAULT_LINE), "an empty directory is no fault:\n{}", c.log());
    let r = c.getaddrinfo(Libc::Musl, "www.google.com", Some(80));
    assert_eq!((r.exit_code, r.connected), (0, true), "no policy, no refusal, no drop: {r:?}\n{}", c.log());
    let (_, res) = c.connect(SocketAddr::new(WWW_GOOGLE4, 80), CONNECT);
    assert_eq!(res.expect("connect without a policy"), GREETING);
}
