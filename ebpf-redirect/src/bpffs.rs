//! The bpf filesystem fqdnd pins its maps and links in. Pins only survive on a bpffs, and a
//! directory on another filesystem fails at the first pin with a confusing EPERM, so check first.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use crate::DatapathError;

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Is `path` (which must exist) on a bpf filesystem?
pub fn is_bpffs(path: &Path) -> Result<bool, DatapathError> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| DatapathError::Bpffs {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })?;
    // SAFETY: statfs writes into the zeroed struct we own; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(DatapathError::Bpffs { path: path.to_owned(), source: std::io::Error::last_os_error() });
    }
    #[allow(clippy::unnecessary_cast, reason = "f_type is i64 on x86_64 but not on every target")]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Mount a bpffs at `path` (created if missing). The agent does this for `/sys/fs/bpf` when the
/// host has not; tests mount a private instance per test.
pub fn mount_bpffs(path: &Path) -> Result<(), DatapathError> {
    let err = |source| DatapathError::Bpffs { path: path.to_owned(), source };
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

/// Create `dir` and its `maps/` and `links/` subdirectories, after checking the nearest existing
/// ancestor is a bpffs (subdirectories of a bpffs are bpffs too).
pub(crate) fn prepare(dir: &Path) -> Result<(PathBuf, PathBuf), DatapathError> {
    let mut probe = dir;
    while !probe.exists() {
        probe = probe.parent().unwrap_or(Path::new("/"));
    }
    if !is_bpffs(probe)? {
        return Err(DatapathError::NotBpffs { path: dir.to_owned() });
    }
    let maps = dir.join("maps");
    let links = dir.join("links");
    for d in [&maps, &links] {
        std::fs::create_dir_all(d).map_err(|source| DatapathError::Bpffs { path: d.clone(), source })?;
    }
    Ok((maps, links))
}
