//! Snapshot files: the state machine written out as one file under
//! `<store dir>/snapshots/`, streamed in and out with bounded memory.
//!
//! Layout, every integer big-endian:
//!
//! ```text
//! MAGIC (8 bytes)
//! u32 length, then the SnapshotMeta (MessagePack)
//! records: u8 column family (index into STATE_CFS), u32 key length, u32 value length, key, value
//! END (u8 0xFF), u64 record count
//! SHA-256 of every byte before it (32 bytes)
//! ```
//!
//! A file is checked from end to end ([`verify`]) before any of it is applied, so a
//! truncated or altered transfer is refused while the state is still untouched.

use std::fs::File;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;

use openraft::SnapshotMeta;
use sha2::Digest as _;
use sha2::Sha256;
use tokio::io::AsyncRead;
use tokio::io::AsyncSeek;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;

use crate::MetaError;
use crate::NodeId;
use crate::NodeInfo;
use crate::error::corrupt;
use crate::keys::STATE_CFS;
use crate::store::decode;
use crate::store::encode;

const MAGIC: &[u8; 8] = b"BERTHSN1";
const END: u8 = 0xFF;
/// Far above any key berth writes (a repository name and a digest).
const MAX_KEY: u32 = 64 << 10;
/// Far above any value berth writes (a manifest is limited to a few MiB); it bounds
/// what a corrupt length field can make a reader allocate.
const MAX_VALUE: u32 = 64 << 20;
const MAX_META: u32 = 16 << 20;
/// Buffer of snapshot file reads and writes.
const IO_BUFFER: usize = 1 << 20;

pub(crate) type Meta = SnapshotMeta<NodeId, NodeInfo>;

/// The bytes of a snapshot, as openraft moves them: a file, read when sending, written
/// chunk by chunk when receiving.
///
/// A file being received is removed when dropped unless it was installed, so a
/// transfer that was abandoned or superseded leaves nothing behind.
pub struct SnapshotFile {
    file: tokio::fs::File,
    path: PathBuf,
    received: bool,
}

impl SnapshotFile {
    pub(crate) async fn open(path: PathBuf) -> std::io::Result<SnapshotFile> {
        let file = tokio::fs::File::open(&path).await?;
        Ok(SnapshotFile {
            file,
            path,
            received: false,
        })
    }

    pub(crate) fn from_std(file: File, path: PathBuf) -> SnapshotFile {
        SnapshotFile {
            file: tokio::fs::File::from_std(file),
            path,
            received: false,
        }
    }

    pub(crate) async fn create_received(path: PathBuf) -> std::io::Result<SnapshotFile> {
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok(SnapshotFile {
            file,
            path,
            received: true,
        })
    }

    /// Wait for pending writes to be durable, then give up the handle: the path, and
    /// whether the file is a received one this store may move (else it is someone
    /// else's, to be copied).
    pub(crate) async fn finish(mut self) -> std::io::Result<(PathBuf, bool)> {
        use tokio::io::AsyncWriteExt;
        if self.received {
            self.file.flush().await?;
            self.file.sync_all().await?;
        }
        let received = std::mem::replace(&mut self.received, false);
        Ok((std::mem::take(&mut self.path), received))
    }
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        if self.received
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            tracing::debug!(path = %self.path.display(), error = %e, "cannot remove an abandoned snapshot file");
        }
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: std::io::SeekFrom) -> std::io::Result<()> {
        Pin::new(&mut self.file).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        Pin::new(&mut self.file).poll_complete(cx)
    }
}

pub(crate) fn io_err(what: &Path, e: std::io::Error) -> MetaError {
    MetaError::Io {
        path: what.display().to_string(),
        source: e,
    }
}

/// Writes a snapshot file record by record, hashing as it goes.
pub(crate) struct Writer {
    out: BufWriter<File>,
    path: PathBuf,
    hash: Sha256,
    records: u64,
    bytes: u64,
}

impl Writer {
    pub(crate) fn create(path: PathBuf, meta: &Meta) -> Result<Writer, MetaError> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        let mut w = Writer {
            out: BufWriter::with_capacity(IO_BUFFER, file),
            path,
            hash: Sha256::new(),
            records: 0,
            bytes: 0,
        };
        let meta = encode("snapshot meta", meta)?;
        w.put(MAGIC)?;
        w.put(&len32("snapshot meta", meta.len())?.to_be_bytes())?;
        w.put(&meta)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), MetaError> {
        self.hash.update(bytes);
        self.bytes += bytes.len() as u64;
        self.out.write_all(bytes).map_err(|e| io_err(&self.path, e))
    }

    pub(crate) fn record(&mut self, cf: u8, key: &[u8], value: &[u8]) -> Result<(), MetaError> {
        let k = len32("snapshot key", key.len())?;
        let v = len32("snapshot value", value.len())?;
        if k > MAX_KEY || v > MAX_VALUE {
            return Err(corrupt(
                "snapshot record",
                format!("key {k} or value {v} bytes is too large"),
            ));
        }
        self.put(&[cf])?;
        self.put(&k.to_be_bytes())?;
        self.put(&v.to_be_bytes())?;
        self.put(key)?;
        self.put(value)?;
        self.records += 1;
        Ok(())
    }

    /// Write the trailer and make the file durable. Returns (records, bytes).
    pub(crate) fn finish(mut self) -> Result<(u64, u64), MetaError> {
        self.put(&[END])?;
        let records = self.records;
        self.put(&records.to_be_bytes())?;
        let digest = std::mem::take(&mut self.hash).finalize();
        self.out.write_all(&digest).map_err(|e| io_err(&self.path, e))?;
        let bytes = self.bytes + digest.len() as u64;
        let file = self.out.into_inner().map_err(|e| io_err(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| io_err(&self.path, e))?;
        Ok((records, bytes))
    }
}

fn len32(what: &'static str, n: usize) -> Result<u32, MetaError> {
    u32::try_from(n).map_err(|_| corrupt(what, format!("{n} bytes is too large")))
}

/// One record of a snapshot file.
pub(crate) struct Record {
    pub cf: &'static str,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Reads a snapshot file record by record, hashing as it goes; the last call to
/// [`Reader::next`] checks the trailer.
pub(crate) struct Reader {
    input: BufReader<File>,
    path: PathBuf,
    hash: Sha256,
    records: u64,
    done: bool,
}

impl Reader {
    pub(crate) fn open(path: &Path) -> Result<(Reader, Meta), MetaError> {
        let file = File::open(path).map_err(|e| io_err(path, e))?;
        let mut r = Reader {
            input: BufReader::with_capacity(IO_BUFFER, file),
            path: path.to_path_buf(),
            hash: Sha256::new(),
            records: 0,
            done: false,
        };
        let mut magic = [0u8; 8];
        r.take(&mut magic)?;
        if &magic != MAGIC {
            return Err(r.corrupt("not a berth snapshot file"));
        }
        let len = r.u32()?;
        if len > MAX_META {
            return Err(r.corrupt(format!("meta of {len} bytes")));
        }
        let meta = r.bytes(len)?;
        let meta: Meta = decode("snapshot meta", &meta)?;
        Ok((r, meta))
    }

    fn corrupt(&self, reason: impl ToString) -> MetaError {
        corrupt(format!("snapshot {}", self.path.display()), reason.to_string())
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<(), MetaError> {
        match self.input.read_exact(buf) {
            Ok(()) => {
                self.hash.update(&*buf);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(self.corrupt("truncated")),
            Err(e) => Err(io_err(&self.path, e)),
        }
    }

    fn u32(&mut self) -> Result<u32, MetaError> {
        let mut b = [0u8; 4];
        self.take(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn bytes(&mut self, len: u32) -> Result<Vec<u8>, MetaError> {
        let mut v = vec![0u8; len as usize];
        self.take(&mut v)?;
        Ok(v)
    }

    /// The next record, or `None` after the last one once the trailer checked out.
    pub(crate) fn next(&mut self) -> Result<Option<Record>, MetaError> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.take(&mut tag)?;
        if tag[0] == END {
            self.trailer()?;
            self.done = true;
            return Ok(None);
        }
        let Some(cf) = STATE_CFS.get(tag[0] as usize).copied() else {
            return Err(self.corrupt(format!("unknown column family {}", tag[0])));
        };
        let k = self.u32()?;
        let v = self.u32()?;
        if k > MAX_KEY || v > MAX_VALUE {
            return Err(self.corrupt(format!("record of {k}+{v} bytes")));
        }
        let key = self.bytes(k)?;
        let value = self.bytes(v)?;
        self.records += 1;
        Ok(Some(Record { cf, key, value }))
    }

    fn trailer(&mut self) -> Result<(), MetaError> {
        let mut count = [0u8; 8];
        self.take(&mut count)?;
        let count = u64::from_be_bytes(count);
        if count != self.records {
            return Err(self.corrupt(format!("{} records, the trailer says {count}", self.records)));
        }
        let expected = std::mem::take(&mut self.hash).finalize();
        let mut digest = [0u8; 32];
        match self.input.read_exact(&mut digest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(self.corrupt("truncated")),
            Err(e) => return Err(io_err(&self.path, e)),
        }
        if digest[..] != expected[..] {
            return Err(self.corrupt("checksum mismatch"));
        }
        let mut extra = [0u8; 1];
        match self.input.read(&mut extra) {
            Ok(0) => Ok(()),
            Ok(_) => Err(self.corrupt("bytes after the trailer")),
            Err(e) => Err(io_err(&self.path, e)),
        }
    }
}

/// Read `path` from end to end: its meta if every record, the count and the checksum
/// are intact.
pub(crate) fn verify(path: &Path) -> Result<Meta, MetaError> {
    let (mut reader, meta) = Reader::open(path)?;
    while reader.next()?.is_some() {}
    Ok(meta)
}

/// Index of `cf` in [`STATE_CFS`], its tag in a snapshot file.
pub(crate) fn cf_tag(cf: &str) -> Result<u8, MetaError> {
    STATE_CFS
        .iter()
        .position(|n| *n == cf)
        .and_then(|i| u8::try_from(i).ok())
        .ok_or_else(|| corrupt("snapshot", format!("{cf} is not a state column family")))
}

/// A file name for the snapshot `id`: openraft's ids hold characters a file name
/// should not.
pub(crate) fn file_name(id: &str) -> String {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.snap")
}

/// fsync a directory, so a rename inside it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), MetaError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, e))
}
