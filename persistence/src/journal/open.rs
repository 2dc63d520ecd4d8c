//! Opening a data directory: create it, prove it writable, refuse a newer format before
//! writing anything, take RocksDB's lock, stamp the format version, and read what the
//! database holds besides the log (the latest snapshot and the trim point).

use std::fs;
use std::path::{Path, PathBuf};

use rocksdb::{DBRecoveryMode, Options, WriteOptions, DB};
use seckill_engine::{EngineImage, EVENT_VERSION};

use super::error::{db_error, PersistenceError};
use super::layout::{
    check_version, decode_header, decode_image, decode_u64, decode_version, encode_version,
    log_key, log_seq, read_meta, snapshot_chunk_key, SnapshotHeader, META_SNAPSHOT, META_TRIMMED,
    META_VERSION,
};
use super::options::{JournalOptions, JOURNAL_DIR_NAME};

/// Opens (or creates) the database in `options.data_dir`, with its format version checked
/// and stamped; returns it with its path (`<data_dir>/journal`).
pub(super) fn open_database(options: &JournalOptions) -> Result<(DB, PathBuf), PersistenceError> {
    let path = options.data_dir.join(JOURNAL_DIR_NAME);
    create_dir(&options.data_dir, &path)?;
    if path.join("CURRENT").exists() {
        probe_version(&path)?;
    }
    check_writable(&options.data_dir, &path)?;
    let db = DB::open(&db_options(options), &path).map_err(|e| open_error(&path, e))?;
    init_version(&db)?;
    Ok((db, path))
}

fn db_options(options: &JournalOptions) -> Options {
    let mut db = Options::default();
    db.create_if_missing(true);
    // A torn last record (crash in the middle of a write) is dropped with everything after
    // it; nothing before it is, and a record in the middle never is.
    db.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    db.set_write_buffer_size(options.write_buffer_size_bytes);
    // A snapshot passes ~100 bytes per order through the memtables; a third one lets the
    // shards keep appending while two flush, instead of stalling behind them.
    db.set_max_write_buffer_number(3);
    // Bounds the WAL a restart replays: past this, RocksDB flushes memtables to SST files.
    db.set_max_total_wal_size((options.write_buffer_size_bytes as u64).saturating_mul(4));
    db.set_max_background_jobs(2);
    db.set_keep_log_file_num(4);
    db.set_max_log_file_size(8 << 20);
    db
}

fn create_dir(data_dir: &Path, path: &Path) -> Result<(), PersistenceError> {
    fs::create_dir_all(path).map_err(|e| {
        PersistenceError::Io(format!(
            "cannot create data directory {}: {e}",
            data_dir.display()
        ))
    })
}

/// Proves the directory writable, for a clear error at start-up rather than at the first
/// purchase.
fn check_writable(data_dir: &Path, path: &Path) -> Result<(), PersistenceError> {
    let probe = path.join(format!(".write-check-{}", std::process::id()));
    fs::write(&probe, b"seckill").map_err(|e| {
        PersistenceError::Io(format!(
            "data directory {} is not writable: {e}",
            data_dir.display()
        ))
    })?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// Reads the format version without opening for writing: a newer directory must be refused
/// before RocksDB writes its manifest, options or a flushed WAL into it.
///
/// A probe that cannot open (say, another process is rotating its files under it) decides
/// nothing: the real open that follows reports the lock, and checks the version again.
fn probe_version(path: &Path) -> Result<(), PersistenceError> {
    let db = match DB::open_for_read_only(&Options::default(), path, false) {
        Ok(db) => db,
        Err(error) => {
            tracing::debug!(%error, "read-only version probe failed; the open decides");
            return Ok(());
        }
    };
    match read_format_version(&db)? {
        Some(version) => check_version(version),
        None => Ok(()),
    }
}

/// Checks the stored format version (again, now under the lock) or stamps a fresh database.
fn init_version(db: &DB) -> Result<(), PersistenceError> {
    match read_format_version(db)? {
        Some(version) => {
            check_version(version)?;
            if version == EVENT_VERSION {
                return Ok(());
            }
        }
        None => {
            if last_log_seq(db)?.is_some() {
                return Err(PersistenceError::Io(
                    "corrupt journal: log entries without a format version".into(),
                ));
            }
        }
    }
    // From here on this build writes: an older build must see our version and refuse.
    let mut options = WriteOptions::default();
    options.set_sync(true);
    db.put_opt(META_VERSION, encode_version(EVENT_VERSION), &options)
        .map_err(|e| db_error("cannot write the format version", e))
}

/// The format version the database is stamped with, if any.
fn read_format_version(db: &DB) -> Result<Option<u32>, PersistenceError> {
    read_meta(
        db,
        META_VERSION,
        "cannot read the format version",
        decode_version,
    )
}

/// What a reopened database holds besides the log itself.
pub(super) struct Stored {
    pub(super) image: Option<EngineImage>,
    pub(super) snapshot_through: Option<u64>,
    pub(super) trimmed_through: u64,
    /// The highest sequence number ever handed out that is still known: the last batch in
    /// the log, or the snapshot's when the log behind it was trimmed away.
    pub(super) last_seq: u64,
}

/// Reads the latest snapshot (whole), the trim point and the last sequence number.
pub(super) fn read_stored(db: &DB) -> Result<Stored, PersistenceError> {
    let header = read_meta(
        db,
        META_SNAPSHOT,
        "cannot read the snapshot header",
        decode_header,
    )?;
    let image = match &header {
        Some(header) => Some(load_image(db, header)?),
        None => None,
    };
    let trimmed_through = read_meta(db, META_TRIMMED, "cannot read the trim point", |bytes| {
        decode_u64("trim point", bytes)
    })?
    .unwrap_or(0);
    let snapshot_through = header.map(|h| h.through_seq);
    if trimmed_through > snapshot_through.unwrap_or(0) {
        return Err(PersistenceError::Io(format!(
            "corrupt journal: log trimmed through {trimmed_through}, past the snapshot at {snapshot_through:?}"
        )));
    }
    let log_last = last_log_seq(db)?;
    Ok(Stored {
        image,
        snapshot_through,
        trimmed_through,
        last_seq: log_last.unwrap_or(0).max(snapshot_through.unwrap_or(0)),
    })
}

fn last_log_seq(db: &DB) -> Result<Option<u64>, PersistenceError> {
    let mut iterator = db.raw_iterator();
    iterator.seek_for_prev(log_key(u64::MAX));
    let last = match iterator.key() {
        Some(key) => log_seq(key),
        None => None,
    };
    iterator
        .status()
        .map_err(|e| db_error("cannot read the log", e))?;
    Ok(last)
}

fn load_image(db: &DB, header: &SnapshotHeader) -> Result<EngineImage, PersistenceError> {
    let mut bytes = Vec::with_capacity(usize::try_from(header.bytes_total).unwrap_or(0));
    for chunk in 0..header.chunks {
        let piece = db
            .get_pinned(snapshot_chunk_key(header.through_seq, chunk))
            .map_err(|e| db_error("cannot read the snapshot", e))?
            .ok_or_else(|| {
                PersistenceError::Io(format!(
                    "corrupt snapshot {}: chunk {chunk} is missing",
                    header.through_seq
                ))
            })?;
        bytes.extend_from_slice(&piece);
    }
    if bytes.len() as u64 != header.bytes_total {
        return Err(PersistenceError::Io(format!(
            "corrupt snapshot {}: {} bytes, the header says {}",
            header.through_seq,
            bytes.len(),
            header.bytes_total
        )));
    }
    let image = decode_image(&bytes)?;
    check_version(image.version)?;
    if image.through_seq != header.through_seq {
        return Err(PersistenceError::Io(format!(
            "corrupt snapshot: image through {} under a header through {}",
            image.through_seq, header.through_seq
        )));
    }
    Ok(image)
}

/// RocksDB reports a held LOCK file as an I/O error; the user needs to hear "locked".
fn open_error(path: &Path, error: rocksdb::Error) -> PersistenceError {
    let message = error.to_string();
    if message.contains("lock hold by current process")
        || message.contains("While lock file")
        || message.contains("/LOCK:")
    {
        return PersistenceError::Locked {
            path: path
                .parent()
                .map_or_else(|| path.to_path_buf(), Path::to_path_buf),
        };
    }
    PersistenceError::Io(format!("cannot open {}: {message}", path.display()))
}
