//! The bpf filesystem fqdnd pins its maps and links in. Pins only survive on a bpffs, and a
//! directory on another filesystem fails at the first pin with a confusing EPERM, so check first.
//! A fresh host has no bpffs at `/sys/fs/bpf`: fqdnd mounts one there when its directory is below
//! it (as the Cilium agent does), and only there, so it never mounts over a directory it was not
//! meant to.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use crate::KernelError;

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where a bpf filesystem belongs on every Linux host.
pub const DEFAULT_MOUNT: &str = "/sys/fs/bpf";

/// Is `path` (which must exist) on a bpf filesystem?
pub fn is_bpffs(path: &Path) -> Result<bool, KernelError> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| KernelError::Bpffs {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })?;
    // SAFETY: statfs writes into the zeroed struct we own; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(KernelError::Bpffs { path: path.to_owned(), source: std::io::Error::last_os_error() });
    }
    #[allow(clippy::unnecessary_cast, reason = "f_type is i64 on x86_64 but not on every target")]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Mount a bpffs at `path` (created if missing). Tests mount a private instance per test.
pub fn mount_bpffs(path: &Path) -> Result<(), KernelError> {
    let err = |source| KernelError::Bpffs { path: path.to_owned(), source };
    std::fs::create_dir_all(path).map_err(err)?;
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Create `dir` and its `maps/` and `links/` subdirectories on a bpffs: the nearest existing
/// ancestor must be one (subdirectories of a bpffs are bpffs too), or, for a directory under
/// [`DEFAULT_MOUNT`] that has none mounted, one is mounted there first.
pub(crate) fn prepare(dir: &Path) -> Result<(PathBuf, PathBuf), KernelError> {
    let mut probe = dir;
    while !probe.exists() {
        probe = probe.parent().unwrap_or(Path::new("/"));
    }
    if !is_bpffs(probe)? {
        let default = Path::new(DEFAULT_MOUNT);
        // Only when no bpffs can be mounted below the default one already: the nearest existing
        // directory is the mount point itself or above it.
        if !dir.starts_with(default) || !default.starts_with(probe) {
            return Err(KernelError::NotBpffs { path: dir.to_owned(), default: DEFAULT_MOUNT });
        }
        mount_bpffs(default)?;
        tracing::info!(path = DEFAULT_MOUNT, "no bpf filesystem was mounted; mounted one");
    }
    let maps = dir.join("maps");
    let links = dir.join("links");
    for d in [&maps, &links] {
        std::fs::create_dir_all(d).map_err(|source| KernelError::Bpffs { path: d.clone(), source })?;
    }
    Ok((maps, links))
}
