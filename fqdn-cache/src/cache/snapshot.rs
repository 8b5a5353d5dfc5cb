//! Snapshot files: the cache (zombies included) across agent restarts.
//!
//! Layout, little-endian:
//! ```text
//! magic "FQDNDSNP" | version u32 | payload length u64 | CRC-32 of payload u32 | payload
//! payload: name count u32, then per name: length u16, bytes (normalized, UTF-8)
//!          entry count u32, then per entry: endpoint u32, name index u32, flags u8
//!          (bit 0 zombie, bit 1 IPv6), IP (4 or 16 bytes), expiry (Unix seconds, i64),
//!          last use after expiry (Unix seconds, i64; i64::MIN: none)
//! ```
//! Times are wall-clock so that TTLs keep running while the agent is down.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::store::NIL;
use super::{Cache, CacheConfig, Changes, MAX_SECS};
use crate::{CacheError, EndpointId};

const MAGIC: &[u8; 8] = b"FQDNDSNP";
/// The snapshot format this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 4;
const NO_USE: i64 = i64::MIN;
const FLAG_ZOMBIE: u8 = 1;
const FLAG_V6: u8 = 2;
/// Smallest encoded entry: ids, flags, IPv4, two times.
const MIN_ENTRY_LEN: u64 = 4 + 4 + 1 + 4 + 8 + 8;

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> CacheError + 'a {
    move |source| CacheError::Io { path: path.to_path_buf(), op, source }
}

impl Cache {
    /// Write the cache to `path` atomically: a temporary file beside it, fsynced, renamed over
    /// it, and the directory fsynced. A crash leaves the old snapshot or the new one, never half.
    pub fn write_snapshot(&self, path: &Path, now_wall: SystemTime, now: Instant) -> Result<(), CacheError> {
        Cache::write_snapshot_file(path, &self.snapshot_bytes(now_wall, now))
    }

    /// The snapshot's bytes: the part of writing one that needs the cache (and whatever lock
    /// guards it). The file is written afterwards, without it ([`Cache::write_snapshot_file`]).
    pub fn snapshot_bytes(&self, now_wall: SystemTime, now: Instant) -> Vec<u8> {
        let mut payload = Vec::with_capacity(64 + self.store.len() * 40);
        let mut dense: HashMap<u32, u32> = HashMap::new();
        let mut names: Vec<&str> = Vec::new();
        let mut entries = Vec::with_capacity(self.store.len() * 37);
        let mut count: u32 = 0;
        for idx in self.store.all() {
            let e = self.store.get(idx);
            let name = *dense.entry(e.name).or_insert_with(|| {
                names.push(self.names.text(e.name));
                (names.len() - 1) as u32
            });
            entries.extend_from_slice(&e.owner.0.to_le_bytes());
            entries.extend_from_slice(&name.to_le_bytes());
            let flags = if e.zombie { FLAG_ZOMBIE } else { 0 } | if e.ip.is_ipv6() { FLAG_V6 } else { 0 };
            entries.push(flags);
            match e.ip {
                IpAddr::V4(v4) => entries.extend_from_slice(&v4.octets()),
                IpAddr::V6(v6) => entries.extend_from_slice(&v6.octets()),
            }
            entries.extend_from_slice(&self.unix_of(e.expires, now, now_wall).to_le_bytes());
            let last = if e.zombie && e.last_used != NIL { self.unix_of(e.last_used, now, now_wall) } else { NO_USE };
            entries.extend_from_slice(&last.to_le_bytes());
            count += 1;
        }
        payload.extend_from_slice(&(names.len() as u32).to_le_bytes());
        for name in &names {
            payload.extend_from_slice(&(name.len() as u16).to_le_bytes());
            payload.extend_from_slice(name.as_bytes());
        }
        payload.extend_from_slice(&count.to_le_bytes());
        payload.extend_from_slice(&entries);

        let mut file_bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        file_bytes.extend_from_slice(MAGIC);
        file_bytes.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        file_bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        file_bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        file_bytes.extend_from_slice(&payload);
        file_bytes
    }

    /// Write snapshot bytes to `path` durably: a temporary file, fsync, rename, fsync of the
    /// directory. Milliseconds to seconds on a busy disk: never under the cache's lock.
    pub fn write_snapshot_file(path: &Path, file_bytes: &[u8]) -> Result<(), CacheError> {
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{file_name}.tmp"));
        // 0600: the snapshot names every host every pod resolved. The mode is set on the open
        // file too, since a temporary file left by a crash keeps its old mode when reopened.
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp, "create"))?;
        file.set_permissions(fs::Permissions::from_mode(0o600)).map_err(io_err(&tmp, "set mode 0600 on"))?;
        file.write_all(file_bytes).map_err(io_err(&tmp, "write"))?;
        file.sync_all().map_err(io_err(&tmp, "fsync"))?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_err(path, "rename temporary file over"))?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir, "fsync directory of"))?;
        Ok(())
    }

    /// Read a snapshot into a new cache whose clock starts at `now`. Entries whose TTL ran out
    /// while the agent was down are dropped; zombies come back as zombies, re-checked at the next
    /// GC pass. Selectors are not part of a snapshot: the agent sets them, and each
    /// [`Cache::set_selectors`] then returns what the restored entries allow.
    pub fn restore(path: &Path, config: CacheConfig, now_wall: SystemTime, now: Instant) -> Result<Cache, CacheError> {
        let bytes = fs::read(path).map_err(io_err(path, "read"))?;
        Cache::from_snapshot_bytes(path, &bytes, config, now_wall, now)
    }

    /// [`Cache::restore`] from a snapshot's bytes already read; `path` only names the file in
    /// errors. Every problem is an error, never a panic (the fuzz target `snapshot` drives this).
    pub fn from_snapshot_bytes(
        path: &Path,
        bytes: &[u8],
        config: CacheConfig,
        now_wall: SystemTime,
        now: Instant,
    ) -> Result<Cache, CacheError> {
        let mut r = Reader { path, bytes, pos: 0 };
        let magic = r.take(MAGIC.len(), "magic")?;
        if magic != MAGIC {
            return Err(CacheError::Foreign { path: path.to_path_buf(), found: magic.to_vec() });
        }
        let version = r.u32("version")?;
        if version != SNAPSHOT_VERSION {
            return Err(CacheError::WrongVersion {
                path: path.to_path_buf(),
                found: version,
                supported: SNAPSHOT_VERSION,
            });
        }
        let len = r.u64("payload length")?;
        let stored = r.u32("checksum")?;
        let available = (bytes.len() - r.pos) as u64;
        if len > available {
            return Err(CacheError::Truncated { path: path.to_path_buf(), what: "payload", needed: len, available });
        }
        if len < available {
            return Err(r.malformed(format!("{} bytes after the payload", available - len)));
        }
        let computed = crc32fast::hash(&bytes[r.pos..]);
        if computed != stored {
            return Err(CacheError::Checksum { path: path.to_path_buf(), stored, computed });
        }

        let name_count = r.u32("name count")?;
        r.room_for(u64::from(name_count) * 2, "names")?;
        let mut names = Vec::with_capacity(name_count as usize);
        for _ in 0..name_count {
            let at = r.pos;
            let len = r.u16("name length")?;
            let raw = r.take(usize::from(len), "name")?;
            let name = std::str::from_utf8(raw).map_err(|_| r.malformed_at(at, "name is not UTF-8".into()))?;
            names.push(name);
        }

        let now_unix = unix_secs(now_wall);
        let mut cache = Cache::new(config, now);
        let entry_count = r.u32("entry count")?;
        r.room_for(u64::from(entry_count) * MIN_ENTRY_LEN, "entries")?;
        for _ in 0..entry_count {
            let at = r.pos;
            let owner = EndpointId(r.u32("endpoint")?);
            let name = r.u32("name index")?;
            let name = *names
                .get(name as usize)
                .ok_or_else(|| r.malformed_at(at, format!("name index {name} of {name_count} names")))?;
            let flags = r.u8("flags")?;
            if flags & !(FLAG_ZOMBIE | FLAG_V6) != 0 {
                return Err(r.malformed_at(at, format!("unknown entry flags {flags:#04x}")));
            }
            let ip = if flags & FLAG_V6 != 0 {
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(r.take(16, "IPv6 address")?).expect("16 bytes")))
            } else {
                IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(r.take(4, "IPv4 address")?).expect("4 bytes")))
            };
            let expiry_at = r.pos;
            let expiry = r.i64("expiry")?;
            // Checked: an expiry near i64::MIN wrapped to one 136 years ahead (a release build
            // restored an expired entry as valid until 2163; a debug build panicked).
            let expires = expiry
                .checked_sub(now_unix)
                .ok_or_else(|| r.malformed_at(expiry_at, format!("expiry {expiry} is out of range")))?;
            let last_used = r.i64("last use")?;
            let zombie = flags & FLAG_ZOMBIE != 0;
            if !zombie && expires <= 0 {
                continue;
            }
            let clamp = |rel: i64| rel.clamp(0, i64::from(MAX_SECS)) as u32;
            let last_used = if last_used == NO_USE { NIL } else { clamp(last_used.saturating_sub(now_unix)) };
            // What a snapshot promises is capped as a fresh answer would be (--max-ttl): a file
            // written by a build without the cap, or by hand, cannot keep an IP for a century.
            let expires = clamp(expires).min(cache.config.max_ttl.max(1));
            cache.restore_entry(owner, name, ip, expires, zombie, last_used);
        }
        Ok(cache)
    }

    fn restore_entry(&mut self, owner: EndpointId, name: &str, ip: IpAddr, expires: u32, zombie: bool, last_used: u32) {
        // No selectors are set during a restore, so nothing is granted; the agent re-derives.
        let changes = &mut Changes::default();
        let id = self.names.acquire(name);
        if self.store.find(owner, id, ip).is_some() {
            self.names.release(id);
            return;
        }
        self.make_room(owner, id, changes);
        self.make_quota_room(owner, changes);
        let idx = self.store.insert(owner, id, ip, expires);
        self.quota.looked_up(owner, idx, &self.store);
        if zombie {
            let e = self.store.get_mut(idx);
            e.zombie = true;
            e.last_used = last_used;
            self.zombie_count += 1;
            self.zombies.push(idx);
        } else {
            self.schedule(idx);
        }
        self.grant(idx, true, changes);
    }
}

/// Move an unusable snapshot out of the way (`NAME.corrupt-<unix seconds>` beside it) so the
/// agent can start empty while the file stays for inspection. Returns the new path.
pub fn set_aside(path: &Path, now_wall: SystemTime) -> Result<PathBuf, CacheError> {
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let target = path.with_file_name(format!("{file_name}.corrupt-{}", unix_secs(now_wall)));
    fs::rename(path, &target).map_err(io_err(path, "set aside (rename)"))?;
    Ok(target)
}

struct Reader<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CacheError> {
        let available = self.bytes.len() - self.pos;
        if n > available {
            return Err(CacheError::Truncated {
                path: self.path.to_path_buf(),
                what,
                needed: n as u64,
                available: available as u64,
            });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Refuse counts the rest of the file cannot hold before allocating for them.
    fn room_for(&self, needed: u64, what: &'static str) -> Result<(), CacheError> {
        let available = (self.bytes.len() - self.pos) as u64;
        if needed > available {
            return Err(self.malformed(format!("{what}: the count needs at least {needed} bytes, {available} left")));
        }
        Ok(())
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, CacheError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, CacheError> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, CacheError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, CacheError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, CacheError> {
        Ok(i64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }

    fn malformed(&self, what: String) -> CacheError {
        self.malformed_at(self.pos, what)
    }

    fn malformed_at(&self, offset: usize, what: String) -> CacheError {
        CacheError::Malformed { path: self.path.to_path_buf(), offset: offset as u64, what }
    }
}
