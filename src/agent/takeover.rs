//! The agent's side of the restart handover ([`fqdnd::admin::handover`]). A new agent started with
//! `--takeover` while another holds the state directory takes that agent's listening sockets, its
//! metrics listener and its directory locks, serves them, and tells it to stop; the old agent
//! stops reading, answers what it has in flight, and exits without touching the state directory
//! again. This is the one deliberate exception to "one agent per state and bpffs directory": the
//! locks move with their descriptors, so they are held throughout.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fqdn_cache::Enforcer;
use fqdnd::admin::handover::{FdKind, HandedFd, HandoverSource, Takeover};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::lock::{DirLock, LockError};

/// Lock the state directory, or, when another agent holds it and `takeover` is set, take over
/// from that agent (its descriptors come with the returned [`Takeover`]).
pub async fn lock_state_dir(dir: &Path, takeover: bool) -> anyhow::Result<(DirLock, Option<Takeover>)> {
    match DirLock::try_lock(dir, "state directory") {
        Ok(lock) => Ok((lock, None)),
        Err(LockError::Held { .. }) if takeover => {
            let socket = fqdnd::admin::socket_path(dir);
            let mut t = tokio::task::spawn_blocking(move || Takeover::request(&socket)).await??;
            tracing::info!(pid = t.pid, "taking over from the running agent");
            let fd = t.take(FdKind::StateLock).into_iter().next().map(|(_, fd)| fd);
            let lock = match fd {
                Some(fd) => DirLock::adopt(dir, "state directory", fd)?,
                None => anyhow::bail!("the running agent (pid {}) handed over no state directory lock", t.pid),
            };
            Ok((lock, Some(t)))
        }
        Err(e) => Err(e.into()),
    }
}

/// The handed-over descriptors of `kind`, without their descriptions.
pub fn take_fds(t: &mut Option<Takeover>, kind: FdKind) -> Vec<(HandedFd, OwnedFd)> {
    t.as_mut().map(|t| t.take(kind)).unwrap_or_default()
}

/// What this agent hands to a successor: duplicates of its descriptors, kept from start.
pub struct AgentHandover {
    fds: Vec<(HandedFd, OwnedFd)>,
    enforcer: Arc<Enforcer>,
    shutdown: CancellationToken,
    in_progress: AtomicBool,
    handed_over: AtomicBool,
    stopped: watch::Sender<bool>,
}

impl AgentHandover {
    pub fn new(fds: Vec<(HandedFd, OwnedFd)>, enforcer: Arc<Enforcer>, shutdown: CancellationToken) -> Self {
        AgentHandover {
            fds,
            enforcer,
            shutdown,
            in_progress: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
            stopped: watch::Sender::new(false),
        }
    }

    /// A successor serves this agent's sockets: the state directory is its now.
    pub fn handed_over(&self) -> bool {
        self.handed_over.load(Ordering::Acquire)
    }

    /// Serving ended and every query in flight was answered.
    pub fn mark_stopped(&self) {
        self.stopped.send_replace(true);
    }

    /// Give the admin connection a moment to tell the successor (bounded).
    pub async fn wait_reported(&self) {
        if self.handed_over() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl HandoverSource for AgentHandover {
    fn offer(&self) -> Result<Vec<(HandedFd, OwnedFd)>, String> {
        if self.shutdown.is_cancelled() {
            return Err("this agent is shutting down".into());
        }
        if self.in_progress.swap(true, Ordering::AcqRel) {
            return Err("a handover is already in progress".into());
        }
        // The successor restores the cache from this snapshot.
        self.enforcer.save();
        let mut out = Vec::with_capacity(self.fds.len());
        for (h, fd) in &self.fds {
            match fd.try_clone() {
                Ok(dup) => out.push((h.clone(), dup)),
                Err(e) => {
                    self.in_progress.store(false, Ordering::Release);
                    return Err(format!("duplicating the {:?} descriptor: {e}", h.kind));
                }
            }
        }
        Ok(out)
    }

    fn abandoned(&self) {
        self.in_progress.store(false, Ordering::Release);
    }

    fn stop(&self) {
        self.handed_over.store(true, Ordering::Release);
        self.shutdown.cancel();
    }

    fn stopped(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let mut rx = self.stopped.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|s| *s).await;
        })
    }
}
