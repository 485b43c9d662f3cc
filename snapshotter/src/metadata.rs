//! The metadata database: SQLite in WAL mode, one connection per store handle; every
//! operation is one short transaction, so several kiln processes share it (see the crate
//! docs for why SQLite and not redb).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Result, StoreError};

/// The tables of the metadata database: each maps a text key to a JSON document, so that
/// records can gain fields without a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    /// `name:tag` -> [`crate::ImageRecord`]
    Images,
    /// snapshot id -> [`crate::SnapshotRecord`]
    Snapshots,
    /// snapshot key (a chain id or a caller's key) -> snapshot id
    SnapshotKeys,
    /// cache key -> [`crate::CacheRecord`]
    CacheRecords,
    /// lease id -> [`crate::LeaseRecord`]
    Leases,
    /// cache mount id -> [`crate::CacheMountRecord`]
    CacheMounts,
    /// store-wide facts (schema version)
    Info,
    /// `<snapshot id>/<variant>` -> [`crate::LayerBlobRecord`]: the blob a snapshot was
    /// exported to, so it is not compressed twice
    LayerBlobs,
    /// snapshot id -> boot id: a committed snapshot whose files may not be on disk yet (its
    /// overlay was `volatile`, or it was unpacked without a sync); removed once a `syncfs`
    /// covered it. After a reboot, an entry of another boot means the files may be torn.
    UnsyncedSnapshots,
}

impl Table {
    pub(crate) const ALL: [Table; 9] = [
        Table::Images,
        Table::Snapshots,
        Table::SnapshotKeys,
        Table::CacheRecords,
        Table::Leases,
        Table::CacheMounts,
        Table::Info,
        Table::LayerBlobs,
        Table::UnsyncedSnapshots,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Images => "images",
            Table::Snapshots => "snapshots",
            Table::SnapshotKeys => "snapshot_keys",
            Table::CacheRecords => "cache_records",
            Table::Leases => "leases",
            Table::CacheMounts => "cache_mounts",
            Table::Info => "info",
            Table::LayerBlobs => "layer_blobs",
            Table::UnsyncedSnapshots => "unsynced_snapshots",
        }
    }
}

/// The schema version written in the `info` table.
const SCHEMA_VERSION: u32 = 1;

/// How long a metadata operation waits for another process's transaction before giving up.
pub(crate) const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(120);

/// Log pages after which a commit checkpoints the WAL into the database (SQLite's default is
/// 1,000; see `open_once`).
const WAL_CHECKPOINT_PAGES: u32 = 64;

/// The database of one store handle.
pub(crate) struct Metadata {
    db_path: PathBuf,
    /// The connection, and whether its `synchronous` is `FULL` now (each volatile write
    /// switched it to `NORMAL` and back, two statements parsed and run per write; now it is
    /// switched only when the next write needs the other mode).
    connection: Mutex<(Connection, bool)>,
    busy_timeout: Duration,
}

impl Metadata {
    /// Opens (creating if needed) the database at `root/metadata.db`, checks it can be read
    /// and creates its tables.
    pub(crate) fn open(root: &Path, busy_timeout: Duration) -> Result<Self> {
        // Several processes opening a new database at once can be refused at once, without
        // the busy handler: SQLite's deadlock avoidance answers SQLITE_BUSY to a connection
        // that holds a shared lock (reading the schema) and wants an exclusive one (switching
        // to WAL) while another holds a shared lock too. Those are retried, within the busy
        // timeout.
        let started = std::time::Instant::now();
        loop {
            match Self::open_once(root, busy_timeout) {
                Err(StoreError::MetadataBusy { .. }) if started.elapsed() < busy_timeout => {
                    std::thread::sleep(Duration::from_millis(5 + jitter_millis()));
                }
                result => return result,
            }
        }
    }

    fn open_once(root: &Path, busy_timeout: Duration) -> Result<Self> {
        let db_path = root.join("metadata.db");
        let unreadable = |error: rusqlite::Error| classify(&db_path, busy_timeout, error, true);
        let connection = Connection::open(&db_path).map_err(unreadable)?;
        connection.busy_timeout(busy_timeout).map_err(unreadable)?;
        // every table's statements, and BEGIN/COMMIT, stay prepared
        connection.set_prepared_statement_cache_capacity(96);
        // WAL: readers never wait for the writer; FULL: a commit is on disk when it returns
        // (kill -9 or power loss leave the last committed state, never half of one).
        let mode: String = connection
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(unreadable)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::MetadataUnreadable {
                path: db_path,
                message: format!("journal mode {mode} instead of wal"),
            });
        }
        // The first connection of a process (every kiln command) rebuilds the WAL's index by
        // reading every frame of the log: with SQLite's default of checkpointing at 1,000
        // pages, that was up to 4 MB read in 1,000 `pread`s (5 ms) at every open. A log kept
        // under ~64 pages costs a checkpoint (its pages copied into the database, two fsyncs)
        // every few builds instead.
        connection
            .execute_batch(&format!(
                "PRAGMA synchronous = FULL; PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES};"
            ))
            .map_err(unreadable)?;
        // The last connection to close would checkpoint the WAL into the database and delete
        // it (two fsyncs, and a directory fsync when the next process makes the WAL anew) at
        // the end of every kiln command; the WAL is checkpointed as it grows instead.
        connection
            .set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            )
            .map_err(unreadable)?;
        let metadata = Metadata {
            db_path,
            connection: Mutex::new((connection, true)),
            busy_timeout,
        };
        if metadata.is_current()? {
            // the common case: nothing to create, no write (and no fsync) at every open
            return Ok(metadata);
        }
        metadata
            .write(|txn| {
                for table in Table::ALL {
                    txn.txn
                        .execute_batch(&format!(
                            "CREATE TABLE IF NOT EXISTS {} (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL)",
                            table.name()
                        ))
                        .map_err(|e| txn.error(e))?;
                }
                match txn.get::<u32>(Table::Info, "schema_version")? {
                    None => txn.put(Table::Info, "schema_version", &SCHEMA_VERSION)?,
                    Some(version) if version == SCHEMA_VERSION => {}
                    Some(version) => {
                        return Err(StoreError::MetadataUnreadable {
                            path: txn.path.to_path_buf(),
                            message: format!(
                                "schema version {version}, this kiln knows {SCHEMA_VERSION}"
                            ),
                        })
                    }
                }
                Ok(())
            })
            .map_err(|error| match error {
                StoreError::Metadata { path, message } => {
                    StoreError::MetadataUnreadable { path, message }
                }
                other => other,
            })?;
        Ok(metadata)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.db_path
    }

    /// Whether every table exists and the schema version is this kiln's.
    fn is_current(&self) -> Result<bool> {
        let guard = self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let connection = &guard.0;
        let unreadable =
            |error: rusqlite::Error| classify(&self.db_path, self.busy_timeout, error, true);
        let tables: i64 = connection
            .query_row(
                &format!(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ({})",
                    Table::ALL
                        .iter()
                        .map(|table| format!("'{}'", table.name()))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                [],
                |row| row.get(0),
            )
            .map_err(unreadable)?;
        if tables != Table::ALL.len() as i64 {
            return Ok(false);
        }
        drop(guard);
        let version = self.read(|txn| txn.get::<u32>(Table::Info, "schema_version"))?;
        Ok(version == Some(SCHEMA_VERSION))
    }

    /// Runs `operation` in a read transaction: a consistent snapshot of committed records,
    /// which never waits for writers.
    pub(crate) fn read<T>(&self, operation: impl FnOnce(&ReadTxn<'_>) -> Result<T>) -> Result<T> {
        let guard = self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let connection = &guard.0;
        let txn = Txn::begin(connection, false)
            .map_err(|e| classify(&self.db_path, self.busy_timeout, e, false))?;
        let value = operation(&ReadTxn {
            txn: connection,
            path: &self.db_path,
        })?;
        txn.commit()
            .map_err(|e| classify(&self.db_path, self.busy_timeout, e, false))?;
        Ok(value)
    }

    /// Like [`Metadata::write`], but the commit is not flushed to disk before it returns: for
    /// records that mean nothing after a crash of this machine (leases: their processes are
    /// gone then too). Other processes see the commit at once all the same, and a power loss
    /// loses at most these commits, never the database's consistency (WAL frames are
    /// checksummed; the next durable commit flushes them with its own).
    pub(crate) fn write_volatile<T>(
        &self,
        operation: impl FnOnce(&mut WriteTxn<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut guard = self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // NORMAL, not OFF: in WAL mode NORMAL skips the fsync of the commit but keeps the
        // fsyncs of a checkpoint (the log before it is copied into the database file, the
        // database before the log is reused). With OFF, an automatic checkpoint run by this
        // commit could let the log be reused unsynced, and a power loss could then take
        // records committed durably before.
        self.set_full_sync(&mut guard, false)?;
        Self::write_locked(&mut guard.0, &self.db_path, self.busy_timeout, operation)
    }

    /// Sets the connection's `synchronous` to `FULL` (or `NORMAL`) unless it is already.
    fn set_full_sync(&self, guard: &mut (Connection, bool), full: bool) -> Result<()> {
        if guard.1 != full {
            let statement = if full {
                "PRAGMA synchronous = FULL;"
            } else {
                "PRAGMA synchronous = NORMAL;"
            };
            guard
                .0
                .execute_batch(statement)
                .map_err(|e| classify(&self.db_path, self.busy_timeout, e, false))?;
            guard.1 = full;
        }
        Ok(())
    }

    /// Runs `operation` in a write transaction and commits it durably if it succeeds. The
    /// database's write lock is held (against every process) for the whole call, so the
    /// operation may also rename or unlink files that must change together with the records.
    pub(crate) fn write<T>(
        &self,
        operation: impl FnOnce(&mut WriteTxn<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut guard = self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.set_full_sync(&mut guard, true)?;
        Self::write_locked(&mut guard.0, &self.db_path, self.busy_timeout, operation)
    }

    fn write_locked<T>(
        connection: &mut Connection,
        db_path: &Path,
        busy_timeout: Duration,
        operation: impl FnOnce(&mut WriteTxn<'_>) -> Result<T>,
    ) -> Result<T> {
        let txn =
            Txn::begin(connection, true).map_err(|e| classify(db_path, busy_timeout, e, false))?;
        let mut write = WriteTxn {
            txn: connection,
            path: db_path,
        };
        let value = operation(&mut write)?;
        txn.commit()
            .map_err(|e| classify(db_path, busy_timeout, e, false))?;
        Ok(value)
    }
}

/// A transaction begun and committed with cached statements: rusqlite's `Transaction` parses
/// `BEGIN` and `COMMIT` anew each time, and a cached rebuild runs a few hundred transactions.
/// Rolled back when dropped uncommitted (an error, or a panic, in the operation).
struct Txn<'c> {
    connection: &'c Connection,
    open: bool,
}

impl<'c> Txn<'c> {
    fn begin(connection: &'c Connection, immediate: bool) -> rusqlite::Result<Self> {
        let begin = if immediate {
            "BEGIN IMMEDIATE"
        } else {
            "BEGIN DEFERRED"
        };
        connection.prepare_cached(begin)?.execute([])?;
        Ok(Txn {
            connection,
            open: true,
        })
    }

    fn commit(mut self) -> rusqlite::Result<()> {
        self.connection.prepare_cached("COMMIT")?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.connection.execute_batch("ROLLBACK");
        }
    }
}

/// 0-15 ms of jitter from the clock, so processes retrying together drift apart.
fn jitter_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|time| u64::from(time.subsec_nanos() >> 10) % 16)
        .unwrap_or(0)
}

/// Turns an SQLite error into the store's: busy, unreadable (corrupt, not a database) or
/// another failure.
fn classify(
    path: &Path,
    busy_timeout: Duration,
    error: rusqlite::Error,
    opening: bool,
) -> StoreError {
    if let rusqlite::Error::SqliteFailure(failure, _) = &error {
        match failure.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                return StoreError::MetadataBusy {
                    path: path.to_path_buf(),
                    waited_seconds: busy_timeout.as_secs(),
                }
            }
            ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => {
                return StoreError::MetadataUnreadable {
                    path: path.to_path_buf(),
                    message: error.to_string(),
                }
            }
            _ => {}
        }
    }
    if opening {
        StoreError::MetadataUnreadable {
            path: path.to_path_buf(),
            message: error.to_string(),
        }
    } else {
        StoreError::Metadata {
            path: path.to_path_buf(),
            message: error.to_string(),
        }
    }
}

/// Reading records: shared by read and write transactions.
pub(crate) trait Records {
    fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>>;
    fn list<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<(String, T)>>;
}

fn decode<T: DeserializeOwned>(table: Table, key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::RecordCorrupt {
        table: table.name(),
        key: key.to_string(),
        message: e.to_string(),
    })
}

fn sql_error(path: &Path, error: rusqlite::Error) -> StoreError {
    classify(path, Duration::ZERO, error, false)
}

fn get_from<T: DeserializeOwned>(
    connection: &Connection,
    table: Table,
    key: &str,
    path: &Path,
) -> Result<Option<T>> {
    let bytes: Option<Vec<u8>> = connection
        .prepare_cached(&format!(
            "SELECT value FROM {} WHERE key = ?1",
            table.name()
        ))
        .and_then(|mut statement| statement.query_row([key], |row| row.get(0)).optional())
        .map_err(|e| sql_error(path, e))?;
    match bytes {
        Some(bytes) => decode(table, key, &bytes).map(Some),
        None => Ok(None),
    }
}

fn list_from<T: DeserializeOwned>(
    connection: &Connection,
    table: Table,
    path: &Path,
) -> Result<Vec<(String, T)>> {
    let rows: Vec<(String, Vec<u8>)> = connection
        .prepare_cached(&format!(
            "SELECT key, value FROM {} ORDER BY key",
            table.name()
        ))
        .and_then(|mut statement| {
            statement
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
        })
        .map_err(|e| sql_error(path, e))?;
    rows.into_iter()
        .map(|(key, bytes)| {
            let record = decode(table, &key, &bytes)?;
            Ok((key, record))
        })
        .collect()
}

/// A read transaction: a consistent view of committed records.
pub(crate) struct ReadTxn<'a> {
    txn: &'a Connection,
    path: &'a Path,
}

impl Records for ReadTxn<'_> {
    fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>> {
        get_from(self.txn, table, key, self.path)
    }

    fn list<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<(String, T)>> {
        list_from(self.txn, table, self.path)
    }
}

/// A write transaction: changes become visible to others all at once on commit.
pub(crate) struct WriteTxn<'a> {
    txn: &'a Connection,
    path: &'a Path,
}

impl WriteTxn<'_> {
    fn error(&self, error: rusqlite::Error) -> StoreError {
        sql_error(self.path, error)
    }

    /// Inserts or replaces a record.
    pub(crate) fn put<T: Serialize + ?Sized>(
        &mut self,
        table: Table,
        key: &str,
        value: &T,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Metadata {
            path: self.path.to_path_buf(),
            message: e.to_string(),
        })?;
        self.txn
            .prepare_cached(&format!(
                "INSERT INTO {} (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                table.name()
            ))
            .and_then(|mut statement| statement.execute(rusqlite::params![key, bytes]))
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Removes a record; whether it was there.
    pub(crate) fn remove(&mut self, table: Table, key: &str) -> Result<bool> {
        let changed = self
            .txn
            .prepare_cached(&format!("DELETE FROM {} WHERE key = ?1", table.name()))
            .and_then(|mut statement| statement.execute([key]))
            .map_err(|e| self.error(e))?;
        Ok(changed > 0)
    }
}

impl Records for WriteTxn<'_> {
    fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>> {
        get_from(self.txn, table, key, self.path)
    }

    fn list<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<(String, T)>> {
        list_from(self.txn, table, self.path)
    }
}

#[cfg(test)]
mod transaction_tests {
    use super::{Metadata, Records, Table};
    use crate::error::StoreError;

    /// A write whose operation fails leaves nothing behind, and the connection takes the
    /// next transaction (the failed one was rolled back, not left open); reads and volatile
    /// writes in between see committed records only.
    #[test]
    fn a_failed_write_is_rolled_back_and_the_next_one_works() {
        let root = tempfile::tempdir().unwrap();
        let metadata = Metadata::open(root.path(), std::time::Duration::from_secs(5)).unwrap();
        metadata
            .write(|txn| txn.put(Table::Info, "kept", &1u32))
            .unwrap();
        let failed: Result<(), StoreError> = metadata.write(|txn| {
            txn.put(Table::Info, "dropped", &2u32)?;
            Err(StoreError::Metadata {
                path: root.path().to_path_buf(),
                message: "the operation failed".into(),
            })
        });
        assert!(failed.is_err());
        metadata
            .write_volatile(|txn| txn.put(Table::Info, "volatile", &3u32))
            .unwrap();
        metadata
            .write(|txn| txn.put(Table::Info, "after", &4u32))
            .unwrap();
        let read = |key: &str| {
            metadata
                .read(|txn| txn.get::<u32>(Table::Info, key))
                .unwrap()
        };
        assert_eq!(read("kept"), Some(1));
        assert_eq!(read("dropped"), None);
        assert_eq!(read("volatile"), Some(3));
        assert_eq!(read("after"), Some(4));
    }
}
