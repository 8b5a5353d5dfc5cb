//! The restart handover over the admin socket, as proxies with hot restart do it: the new agent
//! (`fqdnd run --takeover`) asks the running one for its listening sockets and its directory
//! locks, which come as file descriptors (`SCM_RIGHTS`); it serves them, says it is ready, and the
//! old agent stops reading, finishes the queries it has in flight, and exits. The sockets never
//! close, so no query meets a closed port; the locks move with their descriptors, so they are
//! never free in between.
//!
//! ```text
//! -> {"op":"handover"}
//! <- {"handover":{"pid":41,"fds":[{"kind":"state_lock"},{"kind":"udp","addr":"127.0.0.1:10053",...},...]}}
//!    (the descriptors ride on this line, in this order)
//! -> {"op":"handover_ready"}          (the new agent serves them)
//! <- {"handover_done":{"pid":41}}     (the old one stopped reading and answered what it had)
//! ```
//! A client that goes away before `handover_ready` leaves the old agent serving as before.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::protocol::{Request, Response};

/// How long each step of the handover may take before the new agent gives up.
pub const STEP_LIMIT: Duration = Duration::from_secs(30);
/// Descriptors one handover carries at most (listeners of every address, locks, metrics).
pub const MAX_FDS: usize = 64;
/// The handover line is small; a longer one is refused.
const MAX_LINE: usize = 64 * 1024;

/// What one handed-over descriptor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdKind {
    StateLock,
    BpffsLock,
    Udp,
    Tcp,
    Metrics,
    /// Hubble's Observer API on TCP (a Unix socket is replaced at its path instead).
    Hubble,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedFd {
    pub kind: FdKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<SocketAddr>,
    #[serde(default)]
    pub transparent: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverInfo {
    pub pid: u32,
    pub fds: Vec<HandedFd>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverDone {
    pub pid: u32,
}

/// The running agent's side: what it hands over and how it stops. The agent implements it.
pub trait HandoverSource: Send + Sync + 'static {
    /// Write what the successor restores (the cache snapshot) and return duplicates of the
    /// descriptors to hand over. An error is sent to the client as is.
    fn offer(&self) -> Result<Vec<(HandedFd, OwnedFd)>, String>;
    /// The client went away before saying it serves: this agent stays in charge.
    fn abandoned(&self);
    /// The successor serves: stop reading, let queries in flight finish, leave the state
    /// directory to the successor.
    fn stop(&self);
    /// Resolves once stopped (every query in flight answered).
    fn stopped(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// `sendmsg` of `bytes` with `fds` attached to them, on a non-blocking or blocking socket. The
/// descriptors go with the first byte; the rest follows without.
pub fn send_with_fds(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    let payload = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: plain C data; all-zero is valid before the fields are set.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer holds one header of `payload` bytes; CMSG_* stay inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload as u32) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), fds.len());
        }
    }
    // SAFETY: msg points at live buffers for the call.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// Read one line (blocking) and every descriptor that came with it.
pub fn recv_line_with_fds(stream: &UnixStream) -> io::Result<(String, Vec<OwnedFd>)> {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    let mut buf = vec![0u8; 4096];
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    while !line.contains(&b'\n') {
        if line.len() > MAX_LINE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "handover line too long"));
        }
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: plain C data; all-zero is valid before the fields are set.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg points at live buffers of the stated sizes.
        let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the agent closed the handover"));
        }
        // SAFETY: the kernel filled msg_controllen bytes of control messages.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                    for i in 0..count {
                        fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "more descriptors than a handover carries"));
        }
        line.extend_from_slice(&buf[..n as usize]);
    }
    let end = line.iter().position(|&b| b == b'\n').expect("a newline");
    if end + 1 != line.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bytes after the handover line"));
    }
    line.truncate(end);
    let text = String::from_utf8(line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((text, fds))
}

/// Why the takeover could not be done. Each names the socket and the step.
#[derive(Debug)]
pub struct TakeoverError {
    pub step: &'static str,
    pub detail: String,
}

impl std::fmt::Display for TakeoverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "taking over from the running agent: {}: {}", self.step, self.detail)
    }
}

impl std::error::Error for TakeoverError {}

/// The new agent's side of a handover in progress.
pub struct Takeover {
    stream: UnixStream,
    pub pid: u32,
    fds: Vec<(HandedFd, OwnedFd)>,
}

impl Takeover {
    /// Ask the agent at `socket` for its descriptors (blocking).
    pub fn request(socket: &Path) -> Result<Takeover, TakeoverError> {
        let err = |step: &'static str| {
            move |e: io::Error| TakeoverError { step, detail: format!("{}: {e}", socket.display()) }
        };
        let mut stream = UnixStream::connect(socket).map_err(err("connecting to its admin socket"))?;
        stream.set_read_timeout(Some(STEP_LIMIT)).map_err(err("setting a timeout"))?;
        let mut req = serde_json::to_vec(&Request::Handover).expect("serializable");
        req.push(b'\n');
        stream.write_all(&req).map_err(err("sending the request"))?;
        let (line, fds) = recv_line_with_fds(&stream).map_err(err("reading its answer"))?;
        let info = match serde_json::from_str::<Response>(&line) {
            Ok(Response::Handover { handover }) => handover,
            Ok(Response::Error { error }) => return Err(TakeoverError { step: "the agent refused", detail: error }),
            Ok(other) => {
                return Err(TakeoverError { step: "reading its answer", detail: format!("unexpected {other:?}") });
            }
            Err(e) => return Err(TakeoverError { step: "reading its answer", detail: format!("{e}: {line}") }),
        };
        if info.fds.len() != fds.len() {
            return Err(TakeoverError {
                step: "reading its answer",
                detail: format!("{} descriptors announced, {} received", info.fds.len(), fds.len()),
            });
        }
        Ok(Takeover { stream, pid: info.pid, fds: info.fds.into_iter().zip(fds).collect() })
    }

    /// The descriptors of `kind`, taken out.
    pub fn take(&mut self, kind: FdKind) -> Vec<(HandedFd, OwnedFd)> {
        let (mine, rest) = std::mem::take(&mut self.fds).into_iter().partition(|(h, _)| h.kind == kind);
        self.fds = rest;
        mine
    }

    /// Tell the old agent this one serves; it stops. Then wait (blocking, bounded) until it has
    /// answered what it had in flight.
    pub fn finish(mut self) -> Result<HandoverDone, TakeoverError> {
        let err = |step: &'static str| move |e: io::Error| TakeoverError { step, detail: e.to_string() };
        let mut ready = serde_json::to_vec(&Request::HandoverReady).expect("serializable");
        ready.push(b'\n');
        self.stream.write_all(&ready).map_err(err("telling it to stop"))?;
        let mut line = String::new();
        let mut byte = [0u8; 1];
        while !line.ends_with('\n') && line.len() < MAX_LINE {
            match self.stream.read(&mut byte).map_err(err("waiting for it to stop"))? {
                0 => return Err(TakeoverError { step: "waiting for it to stop", detail: "it went away".into() }),
                _ => line.push(char::from(byte[0])),
            }
        }
        match serde_json::from_str::<Response>(line.trim_end()) {
            Ok(Response::HandoverDone { handover_done }) => Ok(handover_done),
            other => Err(TakeoverError { step: "waiting for it to stop", detail: format!("unexpected {other:?}") }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn descriptors_travel_with_the_line() {
        let (a, b) = UnixStream::pair().unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let line = b"{\"x\":1}\n";
        let fds = [udp.as_raw_fd(), file.as_raw_fd()];
        assert_eq!(send_with_fds(a.as_raw_fd(), line, &fds).unwrap(), line.len());
        let (text, got) = recv_line_with_fds(&b).unwrap();
        assert_eq!(text, "{\"x\":1}");
        assert_eq!(got.len(), 2);
        // The first is the same socket: same local address.
        let same = std::net::UdpSocket::from(got.into_iter().next().unwrap());
        assert_eq!(same.local_addr().unwrap(), udp.local_addr().unwrap());
        let _ = same.as_fd();
    }

    #[test]
    fn offer_lines_round_trip() {
        let info = HandoverInfo {
            pid: 7,
            fds: vec![
                HandedFd { kind: FdKind::StateLock, addr: None, transparent: false },
                HandedFd { kind: FdKind::Udp, addr: Some("127.0.0.1:10053".parse().unwrap()), transparent: true },
            ],
        };
        let text = serde_json::to_string(&Response::Handover { handover: info.clone() }).unwrap();
        assert_eq!(
            text,
            r#"{"handover":{"pid":7,"fds":[{"kind":"state_lock","transparent":false},{"kind":"udp","addr":"127.0.0.1:10053","transparent":true}]}}"#
        );
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), Response::Handover { handover: info });
        let done = serde_json::to_string(&Response::HandoverDone { handover_done: HandoverDone { pid: 7 } }).unwrap();
        assert_eq!(done, r#"{"handover_done":{"pid":7}}"#);
        for (line, want) in
            [(r#"{"op":"handover"}"#, Request::Handover), (r#"{"op":"handover_ready"}"#, Request::HandoverReady)]
        {
            assert_eq!(serde_json::from_str::<Request>(line).unwrap(), want);
        }
    }
}
