//! A partition's conversation states on local disk: a cache of the
//! compacted state topic, the Kafka Streams model.
//!
//! One [redb] file per partition holds every state of the partition (the
//! encoded `ConversationState`, by conversation key) and a checkpoint: the
//! state-topic offset the file has applied every record below
//! (`next_offset`), and since when it can be trusted to have missed no
//! tombstone (`valid_from`). Records are applied in order, last one wins,
//! so applying a record twice is harmless: the checkpoint may lag what the
//! file holds, never lead it.
//!
//! Writes are committed without waiting for the disk (redb's
//! `Durability::None`), with a durable commit at least every
//! [`DURABLE_EVERY`]: a process killed loses the last commits, and the file
//! comes back as of the last durable one, checkpoint included.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use redb::{
    Database, Durability, ReadableDatabase as _, ReadableTableMetadata as _, TableDefinition,
};

const STATES: TableDefinition<&str, &[u8]> = TableDefinition::new("states");
const CHECKPOINT: TableDefinition<&str, i64> = TableDefinition::new("checkpoint");
const NEXT_OFFSET: &str = "next_offset";
const VALID_FROM_MS: &str = "valid_from_unix_ms";

/// Longest time between durable commits.
pub const DURABLE_EVERY: Duration = Duration::from_secs(5);

/// The local state store failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The file could not be created or opened (another process holds it,
    /// or the directory is not writable). Retryable: a revoked partition's
    /// previous task may still hold it for a moment.
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    /// Reading or writing failed: the disk is broken or full.
    #[error("conversation state store: {0}")]
    Io(#[from] redb::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for DiskError {
            fn from(e: $t) -> Self {
                Self::Io(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Where the file stands against the state topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every record below this offset is applied.
    pub next_offset: i64,
    /// No tombstone the file needs can have been compacted away if it is
    /// brought up to date within the topic's `delete.retention.ms` of this.
    pub valid_from: SystemTime,
}

/// One partition's states on disk.
pub struct DiskStore {
    db: Database,
    path: PathBuf,
    last_durable: Instant,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore")
            .field("path", &self.path)
            .finish()
    }
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn from_unix_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

impl DiskStore {
    /// Opens (or creates) the file of partition `partition` of `topic` in
    /// `dir`, with a page cache of `cache_bytes`.
    pub fn open(
        dir: &Path,
        topic: &str,
        partition: i32,
        cache_bytes: usize,
    ) -> Result<Self, DiskError> {
        let path = dir.join(format!("{topic}-{partition}.redb"));
        let open = |path: &Path| -> Result<Database, redb::DatabaseError> {
            std::fs::create_dir_all(dir).map_err(redb::StorageError::from)?;
            Database::builder().set_cache_size(cache_bytes).create(path)
        };
        let db = open(&path).map_err(|source| DiskError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            db,
            path,
            last_durable: Instant::now(),
        })
    }

    /// The file's checkpoint; none for a new file (or one emptied).
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, DiskError> {
        let read = self.db.begin_read()?;
        let table = match read.open_table(CHECKPOINT) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let (Some(next), Some(valid)) = (table.get(NEXT_OFFSET)?, table.get(VALID_FROM_MS)?) else {
            return Ok(None);
        };
        Ok(Some(Checkpoint {
            next_offset: next.value(),
            valid_from: from_unix_ms(valid.value()),
        }))
    }

    /// Forgets every state, and starts over at `checkpoint`.
    pub fn reset(&mut self, checkpoint: Checkpoint) -> Result<(), DiskError> {
        let mut write = self.db.begin_write()?;
        write.delete_table(STATES)?;
        write.open_table(STATES)?;
        set_checkpoint(
            &write,
            Some(checkpoint.next_offset),
            Some(checkpoint.valid_from),
        )?;
        write.set_durability(Durability::Immediate).ok();
        write.commit()?;
        self.last_durable = Instant::now();
        Ok(())
    }

    /// One conversation's encoded state.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, DiskError> {
        let read = self.db.begin_read()?;
        let table = match read.open_table(STATES) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }

    /// Applies `records` in order (an empty or absent value deletes), then
    /// moves the checkpoint: to `next_offset` if given, and `valid_from` to
    /// now if `current` (the file is known to have every record written so
    /// far).
    pub fn apply<'a>(
        &mut self,
        records: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
        next_offset: Option<i64>,
        current: bool,
    ) -> Result<(), DiskError> {
        let mut write = self.db.begin_write()?;
        {
            let mut table = write.open_table(STATES)?;
            for (key, value) in records {
                match value {
                    Some(value) if !value.is_empty() => {
                        table.insert(key, value)?;
                    }
                    _ => {
                        table.remove(key)?;
                    }
                }
            }
        }
        set_checkpoint(&write, next_offset, current.then(SystemTime::now))?;
        let durable = self.last_durable.elapsed() >= DURABLE_EVERY;
        write
            .set_durability(if durable {
                Durability::Immediate
            } else {
                Durability::None
            })
            .ok();
        write.commit()?;
        if durable {
            self.last_durable = Instant::now();
        }
        Ok(())
    }

    /// Commits everything so far durably.
    pub fn sync(&mut self) -> Result<(), DiskError> {
        let mut write = self.db.begin_write()?;
        write.set_durability(Durability::Immediate).ok();
        write.commit()?;
        self.last_durable = Instant::now();
        Ok(())
    }

    /// Up to `limit` conversations after `after` (from the first if none),
    /// in key order, with their encoded states.
    pub fn scan(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, DiskError> {
        let read = self.db.begin_read()?;
        let table = match read.open_table(STATES) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let range = match after {
            Some(after) => table
                .range::<&str>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))?,
            None => table.range::<&str>(..)?,
        };
        let mut found = Vec::with_capacity(limit.min(4096));
        for entry in range.take(limit) {
            let (key, value) = entry?;
            found.push((key.value().to_owned(), value.value().to_vec()));
        }
        Ok(found)
    }

    /// Conversations on disk.
    pub fn len(&self) -> Result<u64, DiskError> {
        let read = self.db.begin_read()?;
        match read.open_table(STATES) {
            Ok(table) => Ok(table.len()?),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn set_checkpoint(
    write: &redb::WriteTransaction,
    next_offset: Option<i64>,
    valid_from: Option<SystemTime>,
) -> Result<(), DiskError> {
    if next_offset.is_none() && valid_from.is_none() {
        return Ok(());
    }
    let mut table = write.open_table(CHECKPOINT)?;
    if let Some(next_offset) = next_offset {
        table.insert(NEXT_OFFSET, next_offset)?;
    }
    if let Some(valid_from) = valid_from {
        table.insert(VALID_FROM_MS, unix_ms(valid_from))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_in_order_and_keeps_its_checkpoint_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = DiskStore::open(dir.path(), "states", 3, 1 << 20).unwrap();
        assert_eq!(store.checkpoint().unwrap(), None);
        assert_eq!(store.get("a").unwrap(), None);
        store
            .apply(
                [
                    ("a", Some(&b"1"[..])),
                    ("b", Some(&b"2"[..])),
                    ("a", Some(&b"3"[..])),
                    ("b", None),
                    ("c", Some(&b""[..])),
                ],
                Some(5),
                false,
            )
            .unwrap();
        assert_eq!(store.get("a").unwrap().as_deref(), Some(&b"3"[..]));
        assert_eq!(store.get("b").unwrap(), None, "a tombstone deletes");
        assert_eq!(store.get("c").unwrap(), None, "an empty state is none");
        let checkpoint = store.checkpoint().unwrap();
        assert_eq!(checkpoint, None, "no valid_from yet: not a checkpoint");
        store.apply([], None, true).unwrap();
        let checkpoint = store.checkpoint().unwrap().unwrap();
        assert_eq!(checkpoint.next_offset, 5);
        drop(store);
        let mut store = DiskStore::open(dir.path(), "states", 3, 1 << 20).unwrap();
        assert_eq!(store.checkpoint().unwrap(), Some(checkpoint));
        assert_eq!(store.len().unwrap(), 1);
        store
            .apply(
                [("d", Some(&b"4"[..])), ("e", Some(&b"5"[..]))],
                None,
                false,
            )
            .unwrap();
        let keys: Vec<String> = store
            .scan(Some("a"), 1)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["d"]);
        assert_eq!(store.scan(Some("e"), 10).unwrap(), []);
        let at = Checkpoint {
            next_offset: 0,
            valid_from: UNIX_EPOCH + Duration::from_secs(1),
        };
        store.reset(at).unwrap();
        assert_eq!(store.len().unwrap(), 0);
        assert_eq!(store.checkpoint().unwrap(), Some(at));
    }
}
