//! Loading the object: the bpffs directory prepared, pins left by another build checked, the
//! object loaded with its maps pinned by name (reused when they exist), both programs loaded into
//! the kernel (the verifier runs here).
//!
//! A pinned trie this build can read but not reuse (the value layout before expiries were kept,
//! or an allow map of another size than `allow-map-size`) is migrated: its pin is taken away
//! before loading, so the object creates the map anew, and [`crate::tries::Tries::migrate`]
//! copies the entries over before the new programs replace the old ones on the links (which keep
//! using the old map until then). A pin that cannot be migrated is refused with a message naming
//! it, and nothing is touched.

use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Map, MapData, MapInfo};
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};
use fqdn_cache::DatapathError;

use crate::links::{Direction, program};
use crate::maps::*;
use crate::tries::map_io;
use crate::{KernelError, bpffs};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fqdnd.bpf.o"));

/// The sizes of the maps an operator chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// `fqdnd_allow4` and `fqdnd_allow6`, each: static and learned allow entries of every endpoint.
    pub allow: u32,
}

impl MapSizes {
    /// The object's own sizes.
    pub const DEFAULT: MapSizes = MapSizes { allow: 262_144 };

    fn wanted(&self, name: &str) -> Option<u32> {
        matches!(name, MAP_ALLOW4 | MAP_ALLOW6).then_some(self.allow)
    }
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes::DEFAULT
    }
}

/// How a pinned map's values are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// This build's.
    Current,
    /// The tries' value before expiries (16 bytes).
    V1,
}

/// A pinned map whose entries go into the map of the same name this build creates.
pub(crate) struct Migration {
    pub(crate) name: &'static str,
    pub(crate) old: MapData,
    pub(crate) layout: Layout,
}

/// A loaded object and the directories its pins live in.
pub(crate) struct Loaded {
    pub(crate) ebpf: Ebpf,
    pub(crate) maps_dir: PathBuf,
    pub(crate) links_dir: PathBuf,
    pub(crate) migrations: Vec<Migration>,
}

pub(crate) fn load(bpffs_dir: &Path, sizes: MapSizes) -> Result<Loaded, KernelError> {
    let (maps_dir, links_dir) = bpffs::prepare(bpffs_dir)?;
    let migrations = take_migrations(&maps_dir, sizes)?;
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(&maps_dir);
    for name in [MAP_ALLOW4, MAP_ALLOW6] {
        loader.map_max_entries(name, sizes.allow);
    }
    let mut ebpf =
        loader.load(OBJECT).map_err(|e| KernelError::LoadObject { dir: maps_dir.clone(), source: Box::new(e) })?;
    for dir in Direction::ALL {
        let prog: &mut SchedClassifier = program(&mut ebpf, dir.program())?;
        prog.load().map_err(|e| KernelError::LoadProgram { program: dir.program(), source: Box::new(e) })?;
    }
    Ok(Loaded { ebpf, maps_dir, links_dir, migrations })
}

/// Key/value sizes of the maps this build expects, to refuse pins left by an incompatible build.
fn expected_sizes(name: &str) -> Option<(u32, u32)> {
    let lpm4 = (4 + size_of::<Key4>()) as u32;
    let lpm6 = (4 + size_of::<Key6>()) as u32;
    let val = size_of::<RuleVal>() as u32;
    Some(match name {
        MAP_ENDPOINTS => (4, size_of::<EpCfg>() as u32),
        MAP_PROXY => (4, size_of::<ProxyCfg>() as u32),
        n if LPM_MAPS.contains(&n) => (if is_v6_map(n) { lpm6 } else { lpm4 }, val),
        MAP_CT => (size_of::<CtKey>() as u32, size_of::<CtVal>() as u32),
        MAP_COUNTERS => (4, 8),
        _ => return None,
    })
}

/// What to do with one pinned map: keep it, or migrate it (its layout, its size).
fn judge(name: &'static str, path: &Path, info: &MapInfo, sizes: MapSizes) -> Result<Option<Layout>, KernelError> {
    let (k, v) = (info.key_size(), info.value_size());
    let layout = match expected_sizes(name) {
        Some(want) if want == (k, v) => Layout::Current,
        Some((want_k, _)) if LPM_MAPS.contains(&name) && k == want_k && v as usize == size_of::<RuleValV1>() => {
            Layout::V1
        }
        Some((want_k, want_v)) => {
            return Err(KernelError::PinnedMapMismatch {
                path: path.to_owned(),
                detail: format!("key/value size {k}/{v}, this build uses {want_k}/{want_v}"),
            });
        }
        None => Layout::Current,
    };
    let resize = sizes.wanted(name).is_some_and(|want| want != info.max_entries());
    Ok((layout != Layout::Current || resize).then_some(layout))
}

/// Entries of a pinned LPM trie of `layout`.
fn count_entries(name: &'static str, data: MapData, layout: Layout) -> Result<usize, DatapathError> {
    let read = |e| DatapathError::MapRead { map: name.into(), source: map_io(e) };
    let map = Map::LpmTrie(data);
    Ok(match (is_v6_map(name), layout) {
        (false, Layout::Current) => LpmTrie::<MapData, Key4, RuleVal>::try_from(map).map_err(read)?.keys().count(),
        (false, Layout::V1) => LpmTrie::<MapData, Key4, RuleValV1>::try_from(map).map_err(read)?.keys().count(),
        (true, Layout::Current) => LpmTrie::<MapData, Key6, RuleVal>::try_from(map).map_err(read)?.keys().count(),
        (true, Layout::V1) => LpmTrie::<MapData, Key6, RuleValV1>::try_from(map).map_err(read)?.keys().count(),
    })
}

/// Decide about every pin first (refusing before anything changes), then take away the pins of
/// the maps to migrate, keeping them open.
fn take_migrations(maps_dir: &Path, sizes: MapSizes) -> Result<Vec<Migration>, KernelError> {
    let mut chosen = Vec::new();
    for name in ALL_MAPS {
        let path = maps_dir.join(name);
        if !path.exists() {
            continue;
        }
        let read = |e| DatapathError::MapRead { map: name.into(), source: map_io(e) };
        let info = MapInfo::from_pin(&path).map_err(read)?;
        let Some(layout) = judge(name, &path, &info, sizes)? else { continue };
        if let Some(want) = sizes.wanted(name) {
            let entries = count_entries(name, MapData::from_pin(&path).map_err(read)?, layout)?;
            if entries > want as usize {
                return Err(KernelError::PinnedMapTooBig {
                    path,
                    entries,
                    pinned_size: info.max_entries(),
                    size: want,
                });
            }
        }
        chosen.push((name, path, layout));
    }
    let mut migrations = Vec::with_capacity(chosen.len());
    for (name, path, layout) in chosen {
        let old =
            MapData::from_pin(&path).map_err(|e| DatapathError::MapRead { map: name.into(), source: map_io(e) })?;
        std::fs::remove_file(&path).map_err(|source| KernelError::Bpffs { path: path.clone(), source })?;
        tracing::info!(map = name, ?layout, "migrating a pinned map into this build's layout and size");
        migrations.push(Migration { name, old, layout });
    }
    Ok(migrations)
}
