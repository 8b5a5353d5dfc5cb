//! The raw system calls aya does not wrap, in one place: `bpf(2)` for pinned links (open by path,
//! the TCX link's interface, detach now), and interface name <-> index.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use crate::KernelError;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zeroed, bpf_attr-sized buffer filled for `cmd`; pointers in it refer to
    // buffers the caller keeps alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr)) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    let cpath =
        CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // BPF_OBJ_GET: pathname u64, bpf_fd u32, file_flags u32.
    let mut attr = [0u64; 16];
    attr[0] = cpath.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The ifindex the TCX link pinned at `path` is attached to: `bpf_link_info.tcx.ifindex`, which
/// the kernel resets to 0 when the device goes away (aya does not expose it).
pub(crate) fn pinned_link_ifindex(path: &Path) -> io::Result<u32> {
    let fd = open_pinned(path)?;
    // struct bpf_link_info: type, id, prog_id (u32 each), then an 8-byte aligned union whose tcx
    // member starts with ifindex (u32): offset 16.
    let mut info = [0u8; 256];
    let mut attr = [0u64; 16];
    attr[0] = u64::from(fd.as_raw_fd() as u32) | ((info.len() as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(u32::from_ne_bytes(info[16..20].try_into().expect("4 bytes")))
}

/// Detach the link pinned at `path` now, then unpin it. Unpinning alone frees the link only
/// after an RCU grace period and a workqueue pass: the program would keep running for a moment
/// after `detach` returned. A missing pin is fine (nothing to detach).
pub(crate) fn detach_pinned_link(path: &Path) -> io::Result<()> {
    let fd = match open_pinned(path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut attr = [0u64; 16];
    attr[0] = u64::from(fd.as_raw_fd() as u32);
    match bpf(BPF_LINK_DETACH, &mut attr) {
        // ENOLINK: already detached (its device went away).
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {}
        Err(e) => return Err(e),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The index of `interface` in the calling thread's network namespace.
pub(crate) fn ifindex_of(interface: &str) -> Result<u32, KernelError> {
    let c = CString::new(interface).map_err(|e| KernelError::InterfaceNotFound {
        interface: interface.into(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    // SAFETY: a valid NUL-terminated name.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(KernelError::InterfaceNotFound { interface: interface.into(), source: io::Error::last_os_error() });
    }
    Ok(idx)
}

/// The name of interface `ifindex`, if it exists in the calling thread's network namespace.
pub(crate) fn ifname_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    Some(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}
