//! What one client's TCP connections may cost the others: descriptors and memory. The agent as a
//! real process (plain mode, loopback, real NSD), its descriptor limit set with prlimit.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::dig::{self, Client};
use common::dns_server::DnsServer;
use common::fqdnd::{Fqdnd, PolicyFixture};
use common::wait;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

fn nsd() -> DnsServer {
    DnsServer::builder().fixture_zone("microsoft.com").listen("127.0.0.2:0".parse().unwrap()).start().expect("nsd")
}

/// This test process needs descriptors for its own side of every connection.
fn raise_own_nofile(want: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on structs we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max).max(lim.rlim_cur);
            if lim.rlim_max < want {
                // Root may raise the hard limit too.
                lim.rlim_max = want;
                lim.rlim_cur = want;
            }
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim),
                0,
                "raising this test's own RLIMIT_NOFILE to {want}"
            );
        }
    }
}

fn start(nsd: &DnsServer, prefix: &[&str], extra: &[&str], log: &str) -> (PolicyFixture, Fqdnd) {
    let fx = PolicyFixture::new(nsd.addr.ip(), nsd.addr.port(), &["*.microsoft.com"]).unwrap();
    let mut args = fx.args();
    args.extend(["--upstream".to_string(), nsd.addr.to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let f = Fqdnd::start_wrapped_logging(prefix, &refs, log).unwrap();
    (fx, f)
}

/// One query over a new connection's stream; its answer's bytes.
fn tcp_query(conn: &mut TcpStream, id: u16) -> std::io::Result<Vec<u8>> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii("www.microsoft.com.").unwrap(), RecordType::A));
    let q = m.to_vec().unwrap();
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    conn.write_all(&framed)?;
    let mut len = [0u8; 2];
    conn.read_exact(&mut len)?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    conn.read_exact(&mut buf)?;
    Ok(buf)
}

/// The last connection, opened after all the others, is answered: the agent got to all of them
/// (it accepts in order). False if it is not answered within `limit`.
fn answered_last(addr: SocketAddr, limit: Duration) -> bool {
    let Ok(mut c) = TcpStream::connect(addr) else { return false };
    let _ = c.set_read_timeout(Some(limit));
    tcp_query(&mut c, 0xfeed).is_ok()
}

fn proc_status(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn idle_tcp_connections_leave_udp_working_and_the_log_quiet() {
    raise_own_nofile(4096);
    let nsd = nsd();
    // Idle connections stay for the whole test (they are not closed for idleness meanwhile).
    let conf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(conf.path(), "tcp-idle-timeout: 300s\n").unwrap();
    let conf_path = conf.path().display().to_string();
    // nofile 1024 (soft and hard): what most hosts give a process by default.
    let (_fx, f) = start(&nsd, &["prlimit", "--nofile=1024:1024"], &["--config", &conf_path], "info,dns_proxy=debug");
    let pid = f.pid();
    let mut idle = Vec::new();
    for i in 0..1100 {
        match TcpStream::connect(f.addr) {
            Ok(c) => idle.push(c),
            Err(e) => panic!("connection {i}: {e}"),
        }
    }
    // With every descriptor taken this one is never accepted: the answer below decides.
    let reached = answered_last(f.addr, Duration::from_secs(10));
    let fds = open_fds(pid);

    // Another client's UDP query needs an upstream socket, so a descriptor.
    let r = dig::query(Client::Dig, f.addr, "www.microsoft.com", "A", &[]).unwrap();
    assert_eq!(r.status, "NOERROR", "UDP query with 1,100 idle TCP connections held ({fds} fds open):\n{}", r.raw);
    assert_eq!(r.data("A"), ["10.200.0.1"], "{}", r.raw);
    assert!(reached, "the connection opened after the idle ones was never served ({fds} fds open)");
    assert!(fds < 1024, "{fds} descriptors open of 1024");
    let log = f.log();
    let spins = log.matches("Too many open files").count();
    assert!(spins < 20, "{spins} lines of \"Too many open files\" in the log:\n{}", &log[..log.len().min(4000)]);
    drop(idle);
}

#[test]
fn announced_tcp_messages_reserve_no_memory_before_their_bytes() {
    raise_own_nofile(4096);
    let nsd = nsd();
    // Caps high enough to hold every connection: only the buffers are measured.
    let caps = ["--max-tcp-connections", "3000", "--max-tcp-connections-per-endpoint", "3000"];
    let (_fx, f) = start(&nsd, &[], &caps, "info");
    let pid = f.pid();
    assert!(answered_last(f.addr, Duration::from_secs(10)), "the agent answers TCP");
    let before = proc_status(pid, "VmData:");
    let mut held = Vec::new();
    for i in 0..1500 {
        let mut c = TcpStream::connect(f.addr).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        // Announce a 65,535-byte message, send one byte of it.
        c.write_all(&[0xff, 0xff, 0x00]).unwrap();
        held.push(c);
    }
    assert!(answered_last(f.addr, Duration::from_secs(30)), "the agent got to every connection");
    wait::until_true("the agent to hold the connections", Duration::from_secs(30), || open_fds(pid) > 1500);
    let grown_kib = proc_status(pid, "VmData:").saturating_sub(before);
    // 1,500 x 64 KiB would be 96 MiB.
    assert!(grown_kib < 32 * 1024, "the agent's data grew by {grown_kib} KiB for 1,500 one-byte messages");
    drop(held);
}

#[test]
fn agent_raises_its_descriptor_limit_to_the_hard_one() {
    let nsd = nsd();
    let (_fx, f) = start(&nsd, &["prlimit", "--nofile=512:4096"], &[], "info");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", f.pid())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("a Max open files line");
    let numbers: Vec<&str> = line.split_whitespace().filter(|w| w.parse::<u64>().is_ok()).collect();
    assert_eq!(numbers, ["4096", "4096"], "soft limit raised to the hard one: {line}");
}
