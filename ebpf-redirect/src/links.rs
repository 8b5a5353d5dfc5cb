//! TCX links: one per direction on each endpoint's node-side veth, pinned under `links/` so they
//! outlive the agent (`if<ifindex>_<ingress|egress>`). A restarted agent swaps its freshly loaded
//! programs onto the pinned links: packets are judged by the old programs until the swap and by
//! the new ones after it, so enforcement never stops.

use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType};

use crate::KernelError;
use crate::maps::{PROG_FROM_POD, PROG_TO_POD};
use crate::sys::{detach_pinned_link, pinned_link_ifindex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    FromPod,
    ToPod,
}

impl Direction {
    pub(crate) const ALL: [Direction; 2] = [Direction::FromPod, Direction::ToPod];

    pub(crate) fn program(self) -> &'static str {
        match self {
            Direction::FromPod => PROG_FROM_POD,
            Direction::ToPod => PROG_TO_POD,
        }
    }

    /// TCX side of the node-side veth: the pod's transmissions are the veth's ingress.
    fn attach_type(self) -> TcAttachType {
        match self {
            Direction::FromPod => TcAttachType::Ingress,
            Direction::ToPod => TcAttachType::Egress,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Direction::FromPod => "ingress",
            Direction::ToPod => "egress",
        }
    }
}

pub(crate) fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, KernelError> {
    let prog = ebpf.program_mut(name).ok_or(KernelError::MissingFromObject { kind: "program", name })?;
    prog.try_into().map_err(|e| KernelError::LoadProgram { program: name, source: Box::new(e) })
}

fn link_io(e: LinkError) -> std::io::Error {
    match e {
        LinkError::SyscallError(s) => s.io_error,
        other => std::io::Error::other(other),
    }
}

/// Pin file of the link of `dir` on `ifindex`.
fn link_path(links_dir: &Path, ifindex: u32, dir: Direction) -> PathBuf {
    links_dir.join(format!("if{ifindex}_{}", dir.tag()))
}

fn parse_link_name(name: &str) -> Option<(u32, Direction)> {
    let rest = name.strip_prefix("if")?;
    let (idx, tag) = rest.split_once('_')?;
    let dir = match tag {
        "ingress" => Direction::FromPod,
        "egress" => Direction::ToPod,
        _ => return None,
    };
    Some((idx.parse().ok()?, dir))
}

/// Is the link pinned at `path` still on interface `ifindex` (the kernel zeroes it when the
/// device goes away, and a new veth may reuse the index)?
fn alive(path: &Path, ifindex: u32) -> Result<bool, KernelError> {
    let on = pinned_link_ifindex(path).map_err(|source| KernelError::Link { path: path.to_owned(), source })?;
    Ok(on == ifindex)
}

/// Make sure both programs are attached to `interface` (index `ifindex`) by pinned links.
/// Links already there are kept (after a restart they run this process's programs once
/// [`adopt`] swapped them).
pub(crate) fn ensure(ebpf: &mut Ebpf, links_dir: &Path, ifindex: u32, interface: &str) -> Result<(), KernelError> {
    for dir in Direction::ALL {
        let path = link_path(links_dir, ifindex, dir);
        if path.exists() {
            if alive(&path, ifindex)? {
                continue;
            }
            // The veth this link was on is gone and a new one got its index.
            let _ = std::fs::remove_file(&path);
        }
        attach_new(ebpf, interface, &path, dir)?;
    }
    Ok(())
}

fn attach_new(ebpf: &mut Ebpf, interface: &str, path: &Path, dir: Direction) -> Result<(), KernelError> {
    let attach_err = |e: ProgramError| KernelError::Attach {
        program: dir.program(),
        interface: interface.into(),
        direction: dir.tag(),
        source: Box::new(e),
    };
    let prog = program(ebpf, dir.program())?;
    let id = prog
        .attach_with_options(interface, dir.attach_type(), TcAttachOptions::TcxOrder(LinkOrder::default()))
        .map_err(attach_err)?;
    let link = prog.take_link(id).map_err(attach_err)?;
    let fd: FdLink =
        link.try_into().map_err(|e: LinkError| KernelError::Link { path: path.to_owned(), source: link_io(e) })?;
    fd.pin(path).map_err(|source| KernelError::PinLink { path: path.to_owned(), source })?;
    Ok(())
}

/// Detach both links of `ifindex` now and unpin them.
pub(crate) fn detach(links_dir: &Path, ifindex: u32) -> Result<(), KernelError> {
    for dir in Direction::ALL {
        let path = link_path(links_dir, ifindex, dir);
        detach_pinned_link(&path).map_err(|source| KernelError::Link { path, source })?;
    }
    Ok(())
}

/// Swap this process's programs onto every link a previous one pinned. Links whose interface is
/// gone are unpinned; their ifindexes are returned (their endpoint configuration must go too).
pub(crate) fn adopt(ebpf: &mut Ebpf, links_dir: &Path) -> Result<Vec<u32>, KernelError> {
    let entries =
        std::fs::read_dir(links_dir).map_err(|source| KernelError::Bpffs { path: links_dir.to_owned(), source })?;
    let mut dead = Vec::new();
    for entry in entries {
        let path = entry.map_err(|source| KernelError::Bpffs { path: links_dir.to_owned(), source })?.path();
        let Some((ifindex, dir)) = path.file_name().and_then(|n| n.to_str()).and_then(parse_link_name) else {
            continue;
        };
        if alive(&path, ifindex)? {
            swap(ebpf, &path, dir)?;
        } else {
            tracing::info!(link = %path.display(), "interface of pinned link is gone; unpinning");
            let _ = std::fs::remove_file(&path);
            dead.push(ifindex);
        }
    }
    dead.sort_unstable();
    dead.dedup();
    Ok(dead)
}

fn swap(ebpf: &mut Ebpf, path: &Path, dir: Direction) -> Result<(), KernelError> {
    let pinned =
        PinnedLink::from_pin(path).map_err(|e| KernelError::Link { path: path.to_owned(), source: link_io(e) })?;
    let link = SchedClassifierLink::try_from(FdLink::from(pinned))
        .map_err(|e| KernelError::Link { path: path.to_owned(), source: link_io(e) })?;
    let swap_err = |source| KernelError::SwapLink { path: path.to_owned(), source: Box::new(source) };
    let prog = program(ebpf, dir.program())?;
    let id = prog.attach_to_link(link).map_err(swap_err)?;
    // The pin keeps the link; the program object must not detach it when this process exits.
    drop(prog.take_link(id).map_err(swap_err)?);
    Ok(())
}

/// Detach and unpin every link under `links_dir`, whatever interface it names (uninstall).
pub(crate) fn detach_all(links_dir: &Path) -> Result<(), KernelError> {
    let entries = match std::fs::read_dir(links_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(KernelError::Bpffs { path: links_dir.to_owned(), source }),
    };
    for entry in entries {
        let path = entry.map_err(|source| KernelError::Bpffs { path: links_dir.to_owned(), source })?.path();
        detach_pinned_link(&path).map_err(|source| KernelError::Link { path, source })?;
    }
    Ok(())
}

/// Ids of the TCX programs attached to `interface` (ingress, egress), in run order, whoever
/// attached them: the kernel's view, for diagnostics and tests. Resolves the name in the calling
/// thread's network namespace.
pub fn tcx_programs(interface: &str) -> Result<(Vec<u32>, Vec<u32>), KernelError> {
    let query = |dir: Direction| -> Result<Vec<u32>, KernelError> {
        let (_, progs) = SchedClassifier::query_tcx(interface, dir.attach_type()).map_err(|e| KernelError::Attach {
            program: dir.program(),
            interface: interface.into(),
            direction: dir.tag(),
            source: Box::new(e),
        })?;
        Ok(progs.iter().map(|p| p.id()).collect())
    };
    Ok((query(Direction::FromPod)?, query(Direction::ToPod)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_round_trip() {
        for (ifindex, dir) in [(7, Direction::FromPod), (123456, Direction::ToPod)] {
            let path = link_path(Path::new("/x"), ifindex, dir);
            let name = path.file_name().unwrap().to_str().unwrap();
            assert_eq!(parse_link_name(name), Some((ifindex, dir)));
        }
        for bad in ["if7", "x7_ingress", "if7_sideways", "ifx_egress"] {
            assert_eq!(parse_link_name(bad), None, "{bad}");
        }
    }
}
