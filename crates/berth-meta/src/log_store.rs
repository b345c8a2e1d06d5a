// openraft's storage traits fix the error type (`StorageError`, which is large).
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::RangeBounds;

use openraft::LogId;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::StorageError;
use openraft::StorageIOError;
use openraft::Vote;
use openraft::storage::LogFlushed;
use openraft::storage::RaftLogStorage;
use rocksdb::Direction;
use rocksdb::IteratorMode;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;

use crate::MetaError;
use crate::NodeId;
use crate::TypeConfig;
use crate::keys::CF_LOGS;
use crate::keys::CF_RAFT;
use crate::keys::index;
use crate::store::MetaStore;
use crate::store::decode;
use crate::store::encode;

type Entry = openraft::Entry<TypeConfig>;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

/// The Raft log in RocksDB. Appends, votes and purge points are written with `sync`,
/// so what the log acknowledges survives a crash of the process or the machine.
///
/// The committed pointer is not: openraft treats it as optional (it only lets a
/// restarted node apply its log before it hears from a leader again). Unsynced, it
/// still reaches the OS at once, so it survives `kill -9`; after a machine crash the
/// node may come back with an older pointer and learns the newer one from the
/// leader. One write shares one WAL across column families, so the next synced
/// append makes it durable anyway. Syncing it cost every node a second `fdatasync`
/// per write, in the Raft core's loop.
#[derive(Clone)]
pub struct LogStore {
    store: MetaStore,
}

fn read_err(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::read_logs(&std::io::Error::other(e.to_string())).into()
}

fn write_err(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::write_logs(&std::io::Error::other(e.to_string())).into()
}

fn sync_opts() -> WriteOptions {
    write_opts(true)
}

fn write_opts(sync: bool) -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(sync);
    o
}

impl LogStore {
    pub(crate) fn new(store: MetaStore) -> Self {
        LogStore { store }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError<NodeId>> {
        self.store.get(CF_RAFT, key).map_err(read_err)
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], v: &T, sync: bool) -> Result<(), StorageError<NodeId>> {
        let cf = self.store.cf(CF_RAFT).map_err(write_err)?;
        let bytes = encode("raft meta", v).map_err(write_err)?;
        self.store
            .db()
            .put_cf_opt(cf, key, bytes, &write_opts(sync))
            .map_err(write_err)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId<NodeId>>, MetaError> {
        let cf = self.store.cf(CF_LOGS)?;
        let mut it = self.store.db().iterator_cf(cf, IteratorMode::End);
        match it.next() {
            Some(kv) => {
                let (_, v) = kv?;
                let e: Entry = decode("log entry", &v)?;
                Ok(Some(e.log_id))
            }
            None => Ok(None),
        }
    }

    /// Index of the last log entry, if any (for status reports).
    pub fn last_index(&self) -> Result<Option<u64>, MetaError> {
        Ok(self.last_entry_log_id()?.map(|l| l.index))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            std::ops::Bound::Included(i) => *i,
            std::ops::Bound::Excluded(i) => i.saturating_add(1),
            std::ops::Bound::Unbounded => 0,
        };
        let cf = self.store.cf(CF_LOGS).map_err(read_err)?;
        let from = index(start);
        let mut out = Vec::new();
        for kv in self
            .store
            .db()
            .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward))
        {
            let (k, v) = kv.map_err(read_err)?;
            let Some(i) = crate::keys::parse_index(&k) else {
                return Err(read_err("malformed log key"));
            };
            if !range.contains(&i) {
                break;
            }
            out.push(decode::<Entry>("log entry", &v).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> = self.get_meta(KEY_PURGED)?;
        let last = self.last_entry_log_id().map_err(read_err)?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.put_meta(KEY_VOTE, vote, true)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        self.put_meta(KEY_COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self.store.cf(CF_LOGS).map_err(write_err)?;
        let mut batch = WriteBatch::default();
        let mut last = None;
        for e in entries {
            let bytes = encode("log entry", &e).map_err(write_err)?;
            batch.put_cf(cf, index(e.log_id.index), bytes);
            last = Some(e.log_id.index);
        }
        // A synchronous write: the entries are durable when it returns, so the
        // callback may report them flushed.
        let res = self.store.db().write_opt(batch, &sync_opts());
        match res {
            Ok(()) => {
                // Before the callback: the leader learns of the entries after this.
                if let Some(last) = last {
                    self.store.set_log_tip(last);
                }
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(%log_id, "truncate log");
        let cf = self.store.cf(CF_LOGS).map_err(write_err)?;
        let db = self.store.db();
        db.delete_range_cf(cf, index(log_id.index), index(u64::MAX))
            .map_err(write_err)?;
        // delete_range excludes its end key.
        db.delete_cf_opt(cf, index(u64::MAX), &sync_opts()).map_err(write_err)?;
        self.store.set_log_tip(log_id.index.saturating_sub(1));
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(%log_id, "purge log");
        // Record the purge point first: a crash between the two steps leaves extra
        // entries, which is harmless, never a gap.
        self.put_meta(KEY_PURGED, &log_id, true)?;
        let cf = self.store.cf(CF_LOGS).map_err(write_err)?;
        self.store
            .db()
            .delete_range_cf(cf, index(0), index(log_id.index.saturating_add(1)))
            .map_err(write_err)
    }
}
