//! Loading the object: the bpffs directory prepared, pins left by an incompatible build refused,
//! the object loaded with its maps pinned by name (reused when they exist), both programs loaded
//! into the kernel (the verifier runs here).

use std::path::{Path, PathBuf};

use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};
use fqdn_cache::DatapathError;

use crate::links::{Direction, program};
use crate::maps::*;
use crate::tries::map_io;
use crate::{KernelError, bpffs};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fqdnd.bpf.o"));

/// A loaded object and the directories its pins live in.
pub(crate) struct Loaded {
    pub(crate) ebpf: Ebpf,
    pub(crate) maps_dir: PathBuf,
    pub(crate) links_dir: PathBuf,
}

pub(crate) fn load(bpffs_dir: &Path) -> Result<Loaded, KernelError> {
    let (maps_dir, links_dir) = bpffs::prepare(bpffs_dir)?;
    check_pinned_maps(&maps_dir)?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&maps_dir)
        .load(OBJECT)
        .map_err(|e| KernelError::LoadObject { dir: maps_dir.clone(), source: Box::new(e) })?;
    for dir in Direction::ALL {
        let prog: &mut SchedClassifier = program(&mut ebpf, dir.program())?;
        prog.load().map_err(|e| KernelError::LoadProgram { program: dir.program(), source: Box::new(e) })?;
    }
    Ok(Loaded { ebpf, maps_dir, links_dir })
}

/// Key/value sizes of the maps this build expects, to refuse pins left by an incompatible build.
fn expected_sizes(name: &str) -> Option<(u32, u32)> {
    let lpm4 = (4 + size_of::<Key4>()) as u32;
    let lpm6 = (4 + size_of::<Key6>()) as u32;
    let val = size_of::<RuleVal>() as u32;
    Some(match name {
        MAP_ENDPOINTS => (4, size_of::<EpCfg>() as u32),
        MAP_PROXY => (4, size_of::<ProxyCfg>() as u32),
        MAP_ALLOW4 | MAP_DENY4 | MAP_REDIR4 | MAP_INGRESS4 | MAP_INGRESS_DENY4 | MAP_SRC4 => (lpm4, val),
        MAP_ALLOW6 | MAP_DENY6 | MAP_REDIR6 | MAP_INGRESS6 | MAP_INGRESS_DENY6 | MAP_SRC6 => (lpm6, val),
        MAP_CT => (size_of::<CtKey>() as u32, size_of::<CtVal>() as u32),
        MAP_COUNTERS => (4, 8),
        _ => return None,
    })
}

fn check_pinned_maps(maps_dir: &Path) -> Result<(), KernelError> {
    for name in ALL_MAPS {
        let path = maps_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path)
            .map_err(|e| DatapathError::MapRead { map: name.into(), source: map_io(e) })?;
        if let Some((k, v)) = expected_sizes(name)
            && (info.key_size() != k || info.value_size() != v)
        {
            return Err(KernelError::PinnedMapMismatch {
                path,
                detail: format!("key/value size {}/{}, this build uses {k}/{v}", info.key_size(), info.value_size()),
            });
        }
    }
    Ok(())
}
