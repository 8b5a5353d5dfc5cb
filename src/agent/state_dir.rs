//! The state directory: the admin socket, the cache snapshot (every name every pod resolved) and
//! the listeners file. Only the agent's user may read it or plant anything in it: the directory is
//! 0700 and its files 0600. A directory someone else could write (another owner, group or world
//! write, a symbolic link, as a pre-created `/tmp/fqdnd-<uid>` can be) is refused, never used as
//! is: its owner could plant a snapshot or move the socket.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the state directory cannot be used. Each names the directory and what is wrong.
#[derive(Debug)]
pub enum StateDirError {
    Create { dir: PathBuf, source: io::Error },
    Inspect { dir: PathBuf, source: io::Error },
    Symlink { dir: PathBuf },
    NotADirectory { dir: PathBuf },
    Owner { dir: PathBuf, owner: u32, uid: u32 },
    Writable { dir: PathBuf, mode: u32 },
    Chmod { path: PathBuf, source: io::Error },
}

impl std::fmt::Display for StateDirError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hint = "remove it or choose another --state-dir";
        match self {
            StateDirError::Create { dir, .. } => write!(f, "creating the state directory {}", dir.display()),
            StateDirError::Inspect { dir, .. } => write!(f, "inspecting the state directory {}", dir.display()),
            StateDirError::Symlink { dir } => {
                write!(f, "state directory {} is a symbolic link; {hint}", dir.display())
            }
            StateDirError::NotADirectory { dir } => {
                write!(f, "state directory {} exists and is not a directory; {hint}", dir.display())
            }
            StateDirError::Owner { dir, owner, uid } => write!(
                f,
                "state directory {} belongs to uid {owner}, not to this agent's uid {uid}: its owner could plant \
                 a cache snapshot or move the admin socket; {hint}",
                dir.display()
            ),
            StateDirError::Writable { dir, mode } => write!(
                f,
                "state directory {} is writable by other users (mode {mode:04o}): they could plant a cache \
                 snapshot or move the admin socket; {hint}",
                dir.display()
            ),
            StateDirError::Chmod { path, .. } => write!(f, "making {} private to this agent", path.display()),
        }
    }
}

impl std::error::Error for StateDirError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StateDirError::Create { source, .. }
            | StateDirError::Inspect { source, .. }
            | StateDirError::Chmod { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Create `dir` (0700) or check the existing one, then make it and its files private: 0700 and
/// 0600 (an older agent left 0755 and 0644). Refused: a symbolic link, a directory owned by
/// another user, or one that group or others may write.
pub fn prepare(dir: &Path) -> Result<(), StateDirError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|source| StateDirError::Create { dir: dir.to_owned(), source })?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(StateDirError::Create { dir: dir.to_owned(), source }),
    }
    let meta = fs::symlink_metadata(dir).map_err(|source| StateDirError::Inspect { dir: dir.to_owned(), source })?;
    if meta.file_type().is_symlink() {
        return Err(StateDirError::Symlink { dir: dir.to_owned() });
    }
    if !meta.is_dir() {
        return Err(StateDirError::NotADirectory { dir: dir.to_owned() });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        return Err(StateDirError::Owner { dir: dir.to_owned(), owner: meta.uid(), uid });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(StateDirError::Writable { dir: dir.to_owned(), mode });
    }
    if mode & 0o077 != 0 {
        chmod(dir, 0o700)?;
        tracing::info!(dir = %dir.display(), was = format!("{mode:04o}"), "state directory made private (0700)");
    }
    let entries = fs::read_dir(dir).map_err(|source| StateDirError::Inspect { dir: dir.to_owned(), source })?;
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() && meta.uid() == uid && meta.mode() & 0o077 != 0 {
            chmod(&entry.path(), 0o600)?;
        }
    }
    Ok(())
}

fn chmod(path: &Path, mode: u32) -> Result<(), StateDirError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|source| StateDirError::Chmod { path: path.to_owned(), source })
}

/// Write `bytes` to `path` atomically (a temporary file beside it, renamed over it), mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    // A temporary file left by a crash keeps its old mode when reopened.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    drop(file);
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn created_private_and_old_modes_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/state");
        prepare(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        // What an older agent left: 0755 and a 0644 snapshot.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("cache.snapshot"), b"x").unwrap();
        fs::set_permissions(dir.join("cache.snapshot"), fs::Permissions::from_mode(0o644)).unwrap();
        prepare(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("cache.snapshot")), 0o600);
    }

    #[test]
    fn unsafe_directories_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let err = prepare(&open).unwrap_err().to_string();
        assert!(err.contains("writable by other users (mode 0777)") && err.contains("open"), "{err}");
        assert_eq!(mode(&open), 0o777, "refused, not silently changed");

        let link = tmp.path().join("link");
        let target = tmp.path().join("target");
        fs::create_dir(&target).unwrap();
        symlink(&target, &link).unwrap();
        let err = prepare(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");

        let file = tmp.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(prepare(&file).unwrap_err().to_string().contains("not a directory"));

        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let theirs = tmp.path().join("theirs");
            fs::create_dir(&theirs).unwrap();
            fs::set_permissions(&theirs, fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let err = prepare(&theirs).unwrap_err().to_string();
            assert!(err.contains("belongs to uid 65534, not to this agent's uid 0"), "{err}");
        } else {
            eprintln!("unsafe_directories_are_refused: another owner's directory needs root to make; not checked");
        }
    }

    #[test]
    fn private_writes_replace_a_world_readable_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("listeners.json");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let stale = tmp.path().join(".listeners.json.tmp");
        fs::write(&stale, b"stale").unwrap();
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o666)).unwrap();
        write_private(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(mode(&path), 0o600);
    }
}
