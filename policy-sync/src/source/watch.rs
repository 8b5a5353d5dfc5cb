//! Watching the policy directory and the endpoints file with inotify (the `notify` crate), so a
//! change applies at once and an idle agent does not poll thousands of files. What is watched:
//! the policy directory itself (its files come and go), and the directories holding the policy
//! path and the endpoints file (so a directory that is renamed, removed or replaced, and a file
//! replaced by an editor's rename, are seen too). A directory that comes back is a new inode:
//! [`Watch::refresh`] watches it again after every load.
//!
//! Events only say "look again": the source's fingerprint decides whether anything changed.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::{RecursiveMode, Watcher as _};

pub(super) struct Watch {
    watcher: notify::RecommendedWatcher,
    /// Path -> inode it had when watched.
    watched: HashMap<PathBuf, u64>,
    pub(super) changed: Arc<tokio::sync::Notify>,
}

impl Watch {
    /// A watcher that wakes `changed` on any event. `None` (logged) when inotify is unavailable:
    /// the source then only polls.
    pub(super) fn new() -> Option<Watch> {
        let changed = Arc::new(tokio::sync::Notify::new());
        let wake = changed.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Opening, reading and closing are our own rescans (listing a watched directory is an
            // open of it): only what changes contents or names is news. A write shows as a modify.
            if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                wake.notify_one();
            }
        });
        match watcher {
            Ok(watcher) => Some(Watch { watcher, watched: HashMap::new(), changed }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the policy files (inotify); polling them instead");
                None
            }
        }
    }

    /// Watch what `policies` and `endpoints` need, replacing watches of directories that were
    /// recreated since.
    pub(super) fn refresh(&mut self, policies: Option<&Path>, endpoints: Option<&Path>) {
        let mut wanted = Vec::new();
        for p in policies.into_iter().chain(endpoints) {
            wanted.push(parent(p));
        }
        if let Some(p) = policies
            && p.is_dir()
        {
            wanted.push(p.to_path_buf());
        }
        for dir in wanted {
            let Ok(meta) = std::fs::metadata(&dir) else {
                self.watched.remove(&dir);
                continue;
            };
            if self.watched.get(&dir) == Some(&meta.ino()) {
                continue;
            }
            let _ = self.watcher.unwatch(&dir);
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => drop(self.watched.insert(dir, meta.ino())),
                Err(e) => {
                    tracing::warn!(path = %dir.display(), error = %e, "cannot watch; changes there show at the next rescan")
                }
            }
        }
    }
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
