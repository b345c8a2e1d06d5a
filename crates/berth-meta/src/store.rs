use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use rocksdb::BlockBasedOptions;
use rocksdb::Cache;
use rocksdb::ColumnFamily;
use rocksdb::ColumnFamilyDescriptor;
use rocksdb::DB;
use rocksdb::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::MetaError;
use crate::error::corrupt;
use crate::keys::all_cfs;
use crate::log_store::LogStore;
use crate::reader::MetaReader;
use crate::snapshot::io_err;
use crate::state_machine::StateMachineStore;

/// Memtable memory of all column families together: past it, RocksDB flushes the
/// biggest. Left at its defaults, each of the eleven column families could hold
/// two 64 MiB memtables.
const MEMTABLE_BUDGET: usize = 32 << 20;
/// Memtable size at which one column family is flushed on its own.
const MEMTABLE_SIZE: usize = 8 << 20;
/// One block cache for every column family, instead of RocksDB's default of one
/// 32 MiB cache each. Metadata is small and SST files stay in the page cache.
const BLOCK_CACHE: usize = 16 << 20;
const SNAPSHOT_DIR: &str = "snapshots";

/// The RocksDB instance that holds a node's Raft log and state machine.
#[derive(Clone)]
pub struct MetaStore {
    db: Arc<DB>,
    /// Index of the last entry in the Raft log (0: none), kept by the log store as
    /// it appends and truncates: read on every follower-lease read.
    log_tip: Arc<AtomicU64>,
    /// `<store dir>/snapshots`: the current snapshot file, and files being built or
    /// received. RocksDB ignores a directory in its own.
    snapshot_dir: Arc<PathBuf>,
}

impl MetaStore {
    /// Open (or create) the store under `dir`.
    pub fn open(dir: &Path) -> Result<MetaStore, MetaError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(4);
        opts.set_max_total_wal_size(64 << 20);
        // Bounded metadata memory, whatever the write rate (a node's RSS is a target).
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
        let cache = Cache::new_lru_cache(BLOCK_CACHE);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        let cf_options = || {
            let mut o = Options::default();
            o.set_block_based_table_factory(&table);
            o.set_write_buffer_size(MEMTABLE_SIZE);
            o
        };
        let cfs = all_cfs().map(|name| ColumnFamilyDescriptor::new(name, cf_options()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        let snapshot_dir = dir.join(SNAPSHOT_DIR);
        std::fs::create_dir_all(&snapshot_dir).map_err(|e| io_err(&snapshot_dir, e))?;
        let store = MetaStore {
            db: Arc::new(db),
            log_tip: Arc::default(),
            snapshot_dir: Arc::new(snapshot_dir),
        };
        let tip = store.log_store().last_index()?.unwrap_or(0);
        store.log_tip.store(tip, Ordering::Release);
        StateMachineStore::recover(&store)?;
        Ok(store)
    }

    /// Index of the last entry in this node's Raft log, as of the last append or
    /// truncation that completed (0 when the log is empty). An append counts once
    /// it is durable, before it is acknowledged to the leader.
    pub fn log_tip(&self) -> u64 {
        self.log_tip.load(Ordering::Acquire)
    }

    pub(crate) fn set_log_tip(&self, index: u64) {
        self.log_tip.store(index, Ordering::Release);
    }

    pub fn log_store(&self) -> LogStore {
        LogStore::new(self.clone())
    }

    pub fn state_machine(&self) -> Result<StateMachineStore, MetaError> {
        StateMachineStore::new(self.clone())
    }

    pub fn reader(&self) -> MetaReader {
        MetaReader::new(self.clone())
    }

    pub(crate) fn snapshot_dir(&self) -> &Path {
        &self.snapshot_dir
    }

    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    pub(crate) fn cf(&self, name: &'static str) -> Result<&ColumnFamily, MetaError> {
        self.db.cf_handle(name).ok_or(MetaError::MissingColumnFamily(name))
    }

    pub(crate) fn get<T: DeserializeOwned>(&self, cf: &'static str, key: &[u8]) -> Result<Option<T>, MetaError> {
        match self.db.get_pinned_cf(self.cf(cf)?, key)? {
            Some(v) => decode(cf, &v).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) fn exists(&self, cf: &'static str, key: &[u8]) -> Result<bool, MetaError> {
        Ok(self.db.get_pinned_cf(self.cf(cf)?, key)?.is_some())
    }
}

pub(crate) fn encode<T: Serialize + ?Sized>(what: &'static str, v: &T) -> Result<Vec<u8>, MetaError> {
    rmp_serde::to_vec_named(v).map_err(|e| MetaError::Encode {
        what,
        reason: e.to_string(),
    })
}

pub(crate) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, MetaError> {
    rmp_serde::from_slice(bytes).map_err(|e| corrupt(what, e))
}
