//! Where an events target stands: per lane of the journal the last sequence number it
//! acknowledged, with the derived item state that goes with exactly that position; and the
//! file store that keeps it across restarts.
//!
//! A record is saved only after the target acknowledged everything up to it, so a crash
//! at any moment means redelivery from the last record (at least once), never a skip. The
//! file is replaced atomically (written beside it, fsync'd, renamed over it, the directory
//! fsync'd): a crash leaves the old record or the new one, whole. A file that cannot be
//! read as a record is an error, never a silent start from zero or from the journal's end.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cloudevent::DerivedState;

/// The record format this build writes, and the newest it reads.
pub const CURSOR_FORMAT_VERSION: u32 = 1;
/// The longest key a store accepts (keys are file names).
pub const CURSOR_KEY_BYTES_MAX: usize = 100;

/// What can go wrong keeping a cursor.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("events cursor {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "events cursor {path} is damaged ({reason}); move it away to deliver that target's \
         events from the journal's end, or restore it from a backup"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "events cursor {path} was written by a newer seckill (format {found}, this build \
         reads up to {supported})"
    )]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("events cursor key {0:?} is not a plain name ([A-Za-z0-9_-], at most 100 bytes)")]
    InvalidKey(String),
}

/// Where one target stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorRecord {
    pub version: u32,
    /// The deployment whose journal the positions are in: a record of another deployment
    /// says nothing about this journal.
    pub deployment: String,
    /// Per lane, the last sequence number the target acknowledged.
    pub lanes: BTreeMap<u32, u64>,
    /// The item and promotion state after exactly those events.
    #[serde(default)]
    pub derived: DerivedState,
}

impl CursorRecord {
    /// A target taken up at `lanes`, knowing nothing of any item yet.
    pub fn new(deployment: &str, lanes: BTreeMap<u32, u64>) -> CursorRecord {
        CursorRecord {
            version: CURSOR_FORMAT_VERSION,
            deployment: deployment.to_owned(),
            lanes,
            derived: DerivedState::default(),
        }
    }

    /// Why this record must not be used, if it must not.
    fn problem(&self) -> Option<String> {
        if self.version == 0 {
            return Some("format version 0".to_owned());
        }
        if self.deployment.is_empty() {
            return Some("no deployment".to_owned());
        }
        None
    }
}

/// Keeps each target's [`CursorRecord`] by key. Blocking (a file store fsyncs): the
/// deliverer calls it off the async workers.
pub trait CursorStore: Send + Sync + 'static {
    /// The record saved last under `key`; `None` when there is none (a new target).
    fn load(&self, key: &str) -> Result<Option<CursorRecord>, CursorError>;

    /// Replaces the record under `key`, durably, before returning `Ok`.
    fn save(&self, key: &str, record: &CursorRecord) -> Result<(), CursorError>;
}

/// One JSON file per target in a directory (`<data-dir>/events/<key>.json`).
#[derive(Debug, Clone)]
pub struct FileCursorStore {
    dir: PathBuf,
}

impl FileCursorStore {
    /// A store in `dir`, created if missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<FileCursorStore, CursorError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| CursorError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(FileCursorStore { dir })
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `key`.
    pub fn path_of(&self, key: &str) -> Result<PathBuf, CursorError> {
        let plain = !key.is_empty()
            && key.len() <= CURSOR_KEY_BYTES_MAX
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        if !plain {
            return Err(CursorError::InvalidKey(key.to_owned()));
        }
        Ok(self.dir.join(format!("{key}.json")))
    }

    /// Fsyncs the directory, so that a rename in it survives a power cut.
    fn sync_dir(&self) -> Result<(), CursorError> {
        let io = |source| CursorError::Io {
            path: self.dir.clone(),
            source,
        };
        File::open(&self.dir).map_err(io)?.sync_all().map_err(io)
    }
}

impl CursorStore for FileCursorStore {
    fn load(&self, key: &str) -> Result<Option<CursorRecord>, CursorError> {
        let path = self.path_of(key)?;
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CursorError::Io { path, source }),
        };
        let record: CursorRecord =
            serde_json::from_slice(&bytes).map_err(|e| CursorError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if record.version > CURSOR_FORMAT_VERSION {
            return Err(CursorError::NewerFormat {
                path,
                found: record.version,
                supported: CURSOR_FORMAT_VERSION,
            });
        }
        if let Some(reason) = record.problem() {
            return Err(CursorError::Corrupt { path, reason });
        }
        Ok(Some(record))
    }

    fn save(&self, key: &str, record: &CursorRecord) -> Result<(), CursorError> {
        let path = self.path_of(key)?;
        // Checked on the way out as well as on the way in: a bad record must not replace a
        // good one.
        if let Some(reason) = record.problem() {
            return Err(CursorError::Corrupt {
                path,
                reason: format!("not saved: {reason}"),
            });
        }
        let bytes = serde_json::to_vec(record).map_err(|e| CursorError::Corrupt {
            path: path.clone(),
            reason: format!("cannot encode: {e}"),
        })?;
        let temp = self.dir.join(format!("{key}.json.tmp"));
        let io = |source| CursorError::Io {
            path: temp.clone(),
            source,
        };
        let mut file = File::create(&temp).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        fs::rename(&temp, &path).map_err(|source| CursorError::Io {
            path: path.clone(),
            source,
        })?;
        self.sync_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> CursorRecord {
        CursorRecord::new("dep1", BTreeMap::from([(0, seq), (7, 3)]))
    }

    #[test]
    fn a_saved_record_comes_back_and_a_new_key_has_none() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = FileCursorStore::open(dir.path().join("events")).expect("store");
        assert_eq!(store.load("nats-1").expect("load"), None);
        store.save("nats-1", &record(41)).expect("save");
        store.save("nats-1", &record(42)).expect("save again");
        assert_eq!(store.load("nats-1").expect("load"), Some(record(42)));
        // Reopened, as after a restart.
        let store = FileCursorStore::open(dir.path().join("events")).expect("store");
        assert_eq!(store.load("nats-1").expect("load"), Some(record(42)));
        let leftovers: Vec<_> = fs::read_dir(store.dir())
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary file left behind");
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = FileCursorStore::open(dir.path()).expect("store");
        let damaged = [
            r#"{"version": 1, "lanes""#,
            "",
            r#"{"version": 1, "deployment": "", "lanes": {}}"#,
            r#"{"version": 1, "deployment": "d", "lanes": {"0": -1}}"#,
        ];
        for damaged in damaged {
            fs::write(store.path_of("amqp-1").expect("path"), damaged).expect("write");
            match store.load("amqp-1") {
                Err(CursorError::Corrupt { .. }) => {}
                other => panic!("expected a damaged cursor, got {other:?}"),
            }
        }
        let newer = serde_json::json!({"version": 99, "deployment": "d", "lanes": {}});
        fs::write(store.path_of("amqp-1").expect("path"), newer.to_string()).expect("write");
        assert!(matches!(
            store.load("amqp-1"),
            Err(CursorError::NewerFormat { found: 99, .. })
        ));
    }

    #[test]
    fn keys_are_plain_file_names() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = FileCursorStore::open(dir.path()).expect("store");
        let long = "k".repeat(CURSOR_KEY_BYTES_MAX + 1);
        for bad in ["", "../escape", "a/b", "a.json", long.as_str()] {
            assert!(
                matches!(store.save(bad, &record(1)), Err(CursorError::InvalidKey(_))),
                "{bad}"
            );
        }
    }
}
