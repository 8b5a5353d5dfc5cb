//! One agent per state directory and per bpffs directory. A second agent on the same bpffs
//! directory used to rewrite the datapath's proxy target to its own port, and when it exited every
//! pod's DNS stayed dropped. Each directory is locked at start with `flock(LOCK_EX | LOCK_NB)` on
//! the directory itself (bpffs holds no regular files; a lock needs no file), and a second agent
//! exits naming the holder's pid.
//!
//! A flock belongs to the open file description, not the process: the restart handover passes
//! the locked descriptors to the new agent over the admin socket (`SCM_RIGHTS`), so the lock moves
//! with the sockets and is never free in between. The kernel drops it when the last descriptor
//! closes, so an agent killed with SIGKILL leaves no stale lock behind.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// An exclusive lock on a directory, held while this value (or a descriptor handed over from
/// it) is open.
#[derive(Debug)]
pub struct DirLock {
    file: File,
}

#[derive(Debug)]
pub enum LockError {
    /// Another process holds the lock.
    Held {
        what: &'static str,
        dir: PathBuf,
        holders: Vec<u32>,
    },
    Io {
        what: &'static str,
        dir: PathBuf,
        op: &'static str,
        source: io::Error,
    },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held { what, dir, holders } => {
                let who = match holders.as_slice() {
                    [] => "another fqdnd agent (pid unknown: not visible from here)".to_string(),
                    [pid] => format!("another fqdnd agent (pid {pid})"),
                    pids => format!(
                        "another fqdnd agent (pids {})",
                        pids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
                    ),
                };
                write!(
                    f,
                    "{what} {} is in use by {who}; two agents on one {what} would take each other's DNS \
                     redirect and state. Stop that agent, give this one its own directory, or start this one \
                     with --takeover to take over from it",
                    dir.display()
                )
            }
            LockError::Io { what, dir, op, .. } => write!(f, "{what} {}: {op}", dir.display()),
        }
    }
}

impl std::error::Error for LockError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LockError::Io { source, .. } => Some(source),
            LockError::Held { .. } => None,
        }
    }
}

impl DirLock {
    /// Lock `dir` (which must exist) without waiting. `what` names it in errors ("state
    /// directory", "bpffs directory").
    pub fn try_lock(dir: &Path, what: &'static str) -> Result<DirLock, LockError> {
        let io = |op| move |source| LockError::Io { what, dir: dir.to_owned(), op, source };
        let file = File::open(dir).map_err(io("opening"))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(LockError::Held { what, dir: dir.to_owned(), holders: holders(&file) });
            }
            return Err(io("locking")(err));
        }
        Ok(DirLock { file })
    }
}

impl DirLock {
    /// A lock handed over by the agent that held it: `fd` must be a descriptor of `dir` itself
    /// (same device and inode), or it is closed and `dir` is locked afresh.
    pub fn adopt(dir: &Path, what: &'static str, fd: OwnedFd) -> Result<DirLock, LockError> {
        let file = File::from(fd);
        let same = match (file.metadata(), std::fs::metadata(dir)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if same {
            Ok(DirLock { file })
        } else {
            drop(file);
            DirLock::try_lock(dir, what)
        }
    }

    /// The locked descriptor, to hand over with `SCM_RIGHTS`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// The processes holding an fd of the open file description that locks `file`'s inode: every
/// `/proc/<pid>/fdinfo/<fd>` whose `lock:` line is an FLOCK on that device and inode. (The pid in
/// `/proc/locks` is the one that took the lock, which may have passed the descriptor on and exited.)
fn holders(file: &File) -> Vec<u32> {
    let Ok(meta) = file.metadata() else { return Vec::new() };
    let dev = meta.dev();
    let key = format!(" {:02x}:{:02x}:{} ", libc::major(dev), libc::minor(dev), meta.ino());
    let me = std::process::id();
    let mut pids = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return pids };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else { continue };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_to_string(fd.path()).is_ok_and(|info| {
                info.lines().any(|l| l.starts_with("lock:") && l.contains("FLOCK") && l.contains(&key))
            })
        });
        if holds {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_names_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let first = DirLock::try_lock(tmp.path(), "state directory").unwrap();
        // A child process holds the lock through an inherited descriptor, as a handed-over lock is
        // held by a process that did not take it.
        let fd = first.file.try_clone().unwrap();
        let mut child = {
            use std::os::unix::process::CommandExt;
            let raw = fd.as_raw_fd();
            let mut cmd = std::process::Command::new("sleep");
            cmd.arg("30");
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let flags = libc::fcntl(raw, libc::F_GETFD);
                    libc::fcntl(raw, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                    Ok(())
                });
            }
            cmd.spawn().unwrap()
        };
        drop(fd);
        drop(first);
        let err = DirLock::try_lock(tmp.path(), "state directory").unwrap_err();
        match &err {
            LockError::Held { holders, .. } => assert_eq!(holders, &[child.id()], "{err}"),
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains(&format!("pid {}", child.id())), "{err}");
        child.kill().unwrap();
        child.wait().unwrap();
        // The holder is gone, so is its lock.
        DirLock::try_lock(tmp.path(), "state directory").unwrap();
    }

    #[test]
    fn adopting_checks_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let lock = DirLock::try_lock(tmp.path(), "state directory").unwrap();
        let handed = lock.fd().try_clone_to_owned().unwrap();
        drop(lock);
        let adopted = DirLock::adopt(tmp.path(), "state directory", handed).unwrap();
        assert!(DirLock::try_lock(tmp.path(), "state directory").is_err(), "still held after the handover");
        // A descriptor of another directory does not stand in for that one's lock.
        let wrong = adopted.fd().try_clone_to_owned().unwrap();
        let fresh = DirLock::adopt(other.path(), "state directory", wrong).unwrap();
        assert!(DirLock::try_lock(other.path(), "state directory").is_err(), "locked afresh");
        drop(fresh);
    }
}
