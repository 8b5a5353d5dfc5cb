//! File descriptors. Every TCP client and upstream socket is one; at the usual soft limit of
//! 1024, a few idle TCP clients could leave none for other pods' UDP queries. The agent raises
//! its soft limit to the hard one at start and keeps the TCP connection cap below what is left
//! after the descriptors it needs for everything else.

/// Descriptors kept for what is not a TCP client: listeners, upstream sockets, transparent reply
/// sockets, the admin and metrics servers, eBPF maps and programs.
pub const RESERVED_FDS: u64 = 256;

/// Raise `RLIMIT_NOFILE`'s soft limit to its hard limit. Returns (before, after).
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, lim.rlim_cur))
}

/// The TCP connection cap that fits `nofile` descriptors (at least 16).
pub fn tcp_cap_for(nofile: u64, configured: usize) -> usize {
    let room = nofile.saturating_sub(RESERVED_FDS).max(16);
    configured.min(usize::try_from(room).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_leaves_room_for_the_rest() {
        for (nofile, configured, want) in
            [(1024, 2048, 768), (1_048_576, 2048, 2048), (200, 2048, 16), (4096, 100, 100), (u64::MAX, 5, 5)]
        {
            assert_eq!(tcp_cap_for(nofile, configured), want, "nofile {nofile}, configured {configured}");
        }
    }

    #[test]
    fn soft_limit_is_raised_to_the_hard_one() {
        let (_, after) = raise_nofile().unwrap();
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!((lim.rlim_cur, after), (lim.rlim_max, lim.rlim_max));
    }
}
