//! Shard snapshots as files: built from a RocksDB snapshot of the shard's `sm`
//! prefix, sent in chunks by `raft::network`, installed atomically.
//!
//! File layout (all integers little-endian):
//!
//! ```text
//! magic "SPSNAP\0\x01" ‖ u32 meta_len ‖ meta (codec: SnapshotMeta)
//! ‖ { u32 key_len (≥ 1) ‖ key without the 8-byte shard prefix ‖ u32 value_len ‖ value }*
//! ‖ u32 0 ‖ u32 crc32 of every byte before it
//! ```
//!
//! Keys are stored without the shard prefix, so the file does not depend on which
//! shard id it is installed under. The current snapshot of shard N is
//! `snapshots/shard-N.snap`; new files are written beside it and renamed over it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use rocksdb::{DB, IteratorMode, ReadOptions, WriteBatch, WriteOptions};

use super::WriteFence;
use super::db::cf;
use super::error::{Result, StorageError};
use super::keys::{self, CF_SM};
use super::state_machine::SmMeta;
use crate::codec;
use crate::raft::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"SPSNAP\0\x01";
/// Meta larger than this is corruption, not a membership.
const META_BYTES_MAX: u32 = 1 << 20;
/// Keys and values larger than this are corruption.
const RECORD_BYTES_MAX: u32 = 64 << 20;

fn invalid(msg: impl Into<String>) -> StorageError {
    StorageError::Corrupt(msg.into())
}

pub fn current_path(dir: &Path, shard_id: u64) -> PathBuf {
    dir.join(format!("shard-{shard_id}.snap"))
}

fn temp_path(dir: &Path, shard_id: u64, what: &str) -> PathBuf {
    dir.join(format!(
        "shard-{shard_id}.snap.{what}-{:016x}",
        rand::random::<u64>()
    ))
}

/// Removes half-written files a crash left behind.
pub fn remove_leftovers(dir: &Path, shard_id: u64) -> io::Result<()> {
    let prefix = format!("shard-{shard_id}.snap.");
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Removes every snapshot file of `shard_id`: a replica removed from its group leaves
/// nothing a later replica of the same shard on this node could mistake for its own.
pub fn remove_all(dir: &Path, shard_id: u64) -> io::Result<()> {
    match std::fs::remove_file(current_path(dir, shard_id)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    remove_leftovers(dir, shard_id)
}

/// A writer that checksums what passes through it.
struct Crc<W> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Crc<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn write_chunk<W: Write>(w: &mut W, bytes: &[u8]) -> Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| invalid("record over 4 GiB"))?;
    w.write_all(&len.to_le_bytes())?;
    Ok(w.write_all(bytes)?)
}

fn read_u32<R: Read>(r: &mut R) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_bytes<R: Read>(r: &mut R, len: u32, max: u32, what: &str) -> Result<Vec<u8>> {
    if len > max {
        return Err(invalid(format!(
            "snapshot {what} of {len} bytes exceeds {max}"
        )));
    }
    let mut v = vec![0u8; len as usize];
    r.read_exact(&mut v)?;
    Ok(v)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes a snapshot of `shard_id`'s state machine, as of one RocksDB snapshot, and
/// makes it the current one unless `fence` was closed meanwhile. Returns its meta and
/// the file, open for reading.
pub fn build(
    db: &DB,
    shard_id: u64,
    dir: &Path,
    fence: &WriteFence,
) -> Result<(SnapshotMeta, File)> {
    let cf = cf(db, CF_SM)?;
    let snap = db.snapshot();
    let sm_meta: SmMeta = match snap.get_cf(cf, keys::sm_meta_key(shard_id))? {
        Some(bytes) => codec::decode(&bytes)?,
        None => SmMeta::default(),
    };
    let meta = SnapshotMeta {
        last_log_id: sm_meta.last_applied,
        last_membership: sm_meta.membership.clone(),
    };
    let tmp = temp_path(dir, shard_id, "build");
    let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let mut w = Crc {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: crc32fast::Hasher::new(),
    };
    w.write_all(MAGIC)?;
    write_chunk(&mut w, &codec::encode(&meta)?)?;
    let (start, end) = keys::sm_range(shard_id);
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound(end.to_vec());
    for item in snap.iterator_cf_opt(
        cf,
        opts,
        IteratorMode::From(&start, rocksdb::Direction::Forward),
    ) {
        let (key, value) = item?;
        let suffix = &key[8..];
        assert!(
            !suffix.is_empty(),
            "sm keys always have a space byte after the shard prefix"
        );
        write_chunk(&mut w, suffix)?;
        write_chunk(&mut w, &value)?;
    }
    w.write_all(&0u32.to_le_bytes())?;
    let crc = w.hasher.clone().finalize();
    let mut inner = w.inner;
    inner.write_all(&crc.to_le_bytes())?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    let current = current_path(dir, shard_id);
    let made_current = fence.write(shard_id, || {
        std::fs::rename(&tmp, &current)?;
        Ok(sync_dir(dir)?)
    });
    if let Err(e) = made_current {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((meta, File::open(&current)?))
}

/// The current snapshot of `shard_id`, if one was built or installed.
pub fn open_current(dir: &Path, shard_id: u64) -> Result<Option<(SnapshotMeta, File)>> {
    let path = current_path(dir, shard_id);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let meta = read_header(&mut BufReader::new(&mut file))?;
    file.rewind()?;
    Ok(Some((meta, file)))
}

fn read_header<R: Read>(r: &mut R) -> Result<SnapshotMeta> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid("not a Stockpile snapshot (bad magic)"));
    }
    let len = read_u32(r)?;
    Ok(codec::decode(&read_bytes(r, len, META_BYTES_MAX, "meta")?)?)
}

/// Replaces `shard_id`'s state machine with the snapshot in `file`, atomically (one
/// synced write batch: range delete plus every record), after checking its checksum
/// and that it is the snapshot `meta` describes. Keeps the file as the current snapshot.
pub fn install(
    db: &DB,
    shard_id: u64,
    dir: &Path,
    meta: &SnapshotMeta,
    mut file: File,
) -> Result<SmMeta> {
    // Keep a copy as the current snapshot (the received file may live elsewhere).
    file.rewind()?;
    let tmp = temp_path(dir, shard_id, "install");
    {
        let mut out = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        io::copy(&mut file, &mut out)?;
        out.sync_all()?;
    }
    let cf = cf(db, CF_SM)?;
    let mut r = Crc {
        inner: BufReader::with_capacity(1 << 20, File::open(&tmp)?),
        hasher: crc32fast::Hasher::new(),
    };
    let file_meta = read_header(&mut r)?;
    if &file_meta != meta {
        return Err(invalid(format!(
            "snapshot file holds {file_meta:?}, expected {meta:?}"
        )));
    }
    let mut batch = WriteBatch::default();
    let (start, end) = keys::sm_range(shard_id);
    batch.delete_range_cf(cf, start, end);
    let mut sm_meta: Option<SmMeta> = None;
    let meta_suffix = keys::sm_meta_key(shard_id)[8..].to_vec();
    loop {
        let key_len = read_u32(&mut r)?;
        if key_len == 0 {
            break;
        }
        let suffix = read_bytes(&mut r, key_len, RECORD_BYTES_MAX, "key")?;
        let value_len = read_u32(&mut r)?;
        let value = read_bytes(&mut r, value_len, RECORD_BYTES_MAX, "value")?;
        if suffix == meta_suffix {
            sm_meta = Some(codec::decode(&value)?);
        }
        let mut key = Vec::with_capacity(8 + suffix.len());
        key.extend_from_slice(&start);
        key.extend_from_slice(&suffix);
        batch.put_cf(cf, key, value);
    }
    let computed = r.hasher.clone().finalize();
    let stored = read_u32(&mut r.inner)?;
    if computed != stored {
        return Err(invalid(format!(
            "snapshot checksum mismatch: computed {computed:08x}, stored {stored:08x}"
        )));
    }
    let sm_meta = sm_meta.unwrap_or_else(|| SmMeta {
        last_applied: meta.last_log_id,
        membership: meta.last_membership.clone(),
        ..SmMeta::default()
    });
    if sm_meta.last_applied != meta.last_log_id {
        return Err(invalid(format!(
            "snapshot records applied {:?} but its meta says {:?}",
            sm_meta.last_applied, meta.last_log_id
        )));
    }
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts)?;
    std::fs::rename(&tmp, current_path(dir, shard_id))?;
    sync_dir(dir)?;
    Ok(sm_meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Store;
    use crate::storage::state_machine::SmMeta;

    /// A store with shard `shard_id` holding a meta record and `n` stock records.
    fn store_with(dir: &Path, shard_id: u64, n: u64) -> Store {
        let store = Store::open(&dir.join("db")).unwrap();
        let db = store.db();
        let cf = cf(db, CF_SM).unwrap();
        let meta = SmMeta {
            clock_ms: 42,
            ..SmMeta::default()
        };
        db.put_cf(
            cf,
            keys::sm_meta_key(shard_id),
            codec::encode(&meta).unwrap(),
        )
        .unwrap();
        for i in 0..n {
            let sku = format!("sku-{i:04}");
            db.put_cf(cf, keys::stock_key(shard_id, &sku), vec![i as u8; 20])
                .unwrap();
        }
        store
    }

    fn stock_keys(store: &Store, shard_id: u64) -> usize {
        let db = store.db();
        let (start, end) = keys::sm_space_range(shard_id, keys::SmSpace::Stock);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(end.to_vec());
        db.iterator_cf_opt(
            cf(db, CF_SM).unwrap(),
            opts,
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        )
        .count()
    }

    fn snapshot_bytes(dir: &Path) -> (SnapshotMeta, Vec<u8>) {
        let src = store_with(&dir.join("src"), 1, 300);
        let snaps = dir.join("snaps");
        std::fs::create_dir_all(&snaps).unwrap();
        let (meta, _) = build(src.db(), 1, &snaps, &WriteFence::default()).unwrap();
        (meta, std::fs::read(current_path(&snaps, 1)).unwrap())
    }

    fn install_bytes(dir: &Path, meta: &SnapshotMeta, bytes: &[u8]) -> Result<SmMeta> {
        let dst = store_with(&dir.join("dst"), 7, 3);
        let path = dir.join("incoming");
        std::fs::write(&path, bytes).unwrap();
        let into = dir.join("dst-snaps");
        std::fs::create_dir_all(&into).unwrap();
        let r = install(dst.db(), 7, &into, meta, File::open(&path).unwrap());
        if r.is_ok() {
            assert_eq!(
                stock_keys(&dst, 7),
                300,
                "the snapshot replaced the shard's state"
            );
        } else {
            assert_eq!(stock_keys(&dst, 7), 3, "a refused snapshot changed nothing");
        }
        r
    }

    #[test]
    fn a_snapshot_installs_under_another_shard_id() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, bytes) = snapshot_bytes(dir.path());
        let installed = install_bytes(dir.path(), &meta, &bytes).unwrap();
        assert_eq!(installed.clock_ms, 42);
    }

    #[test]
    fn truncated_snapshots_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, bytes) = snapshot_bytes(dir.path());
        for cut in [bytes.len() - 1, bytes.len() - 5, bytes.len() / 2, 12] {
            let sub = tempfile::tempdir().unwrap();
            assert!(
                install_bytes(sub.path(), &meta, &bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn corrupt_snapshots_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, bytes) = snapshot_bytes(dir.path());
        let mut flipped = bytes.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 0x40;
        let err = install_bytes(dir.path(), &meta, &flipped).unwrap_err();
        assert!(
            matches!(err, StorageError::Corrupt(_) | StorageError::Io(_)),
            "{err}"
        );
        let mut magic = bytes.clone();
        magic[0] = b'X';
        let sub = tempfile::tempdir().unwrap();
        let err = install_bytes(sub.path(), &meta, &magic).unwrap_err();
        assert!(err.to_string().contains("bad magic"), "{err}");
    }
}
