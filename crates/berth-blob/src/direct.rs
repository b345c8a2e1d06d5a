//! Direct I/O (`O_DIRECT`) for the big batches of durable files.
//!
//! A pushed layer is written once, fsynced, and then read by other machines far
//! more often than by this one, so keeping its bytes in the page cache on the way
//! in buys little and costs a lot: every byte is copied into freshly allocated
//! page-cache memory, the dirty pages pile up until writeback throttles the writer,
//! and the final fsync waits for all of them. Written with `O_DIRECT` from a
//! reused, page-aligned buffer, a batch goes from that buffer to the device; the
//! fsync that makes the file durable then has almost nothing left to do.
//!
//! Only whole aligned batches go direct (offset and length multiples of
//! [`ALIGN`], at least [`DIRECT_MIN`] bytes); the unaligned head and tail of a file
//! and small files take the ordinary buffered path. A filesystem that refuses
//! `O_DIRECT` (at open or at the first write, with `EINVAL`) gets buffered writes
//! for the rest of that file.

use std::fs::File;
use std::io;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

/// Alignment of direct writes: file offset, length and buffer address. A page
/// covers every logical block size in common use (512 B and 4 KiB).
pub(crate) const ALIGN: u64 = 4096;
/// Smaller batches are written buffered: for a small file, the fsync that follows
/// costs the same either way and the direct path would only add an `open`.
pub(crate) const DIRECT_MIN: usize = 256 * 1024;
/// Bytes per aligned buffer (and per direct `pwrite`).
const BUF: usize = 2 * 1024 * 1024;
/// Aligned buffers kept for reuse: a buffer touched once stays cheap to write into,
/// a fresh one costs a page fault per page on first use.
const POOL_MAX: usize = 4;

/// The `O_DIRECT` twin of one file, opened on first use.
#[derive(Debug, Default)]
pub(crate) struct DirectFile {
    file: OnceLock<Option<File>>,
    /// Set once the filesystem has refused a direct write.
    refused: AtomicBool,
}

impl DirectFile {
    /// True once the filesystem has refused direct I/O for this file.
    #[cfg(test)]
    pub(crate) fn refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed) || self.file.get().is_some_and(Option::is_none)
    }

    /// Write `data` at `pos` of `file` with direct I/O if it qualifies: `Ok(true)`
    /// once written, `Ok(false)` if the caller must write it buffered instead.
    pub(crate) fn write_at(&self, file: &File, data: &[u8], pos: u64) -> io::Result<bool> {
        if !qualifies(data.len(), pos) || self.refused.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let Some(direct) = self.file.get_or_init(|| reopen_direct(file)) else {
            return Ok(false);
        };
        match write_aligned(direct, data, pos) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!(error = %e, "direct write refused; writing this file buffered");
                self.refused.store(true, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// True if `len` bytes at `pos` may be written directly.
fn qualifies(len: usize, pos: u64) -> bool {
    len >= DIRECT_MIN && (len as u64).is_multiple_of(ALIGN) && pos.is_multiple_of(ALIGN)
}

/// The same file opened again with `O_DIRECT` (through `/proc/self/fd`), or `None`
/// where that is not possible.
#[cfg(target_os = "linux")]
fn reopen_direct(file: &File) -> Option<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let direct = match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(error = %e, "no O_DIRECT descriptor; writing buffered");
            return None;
        }
    };
    let (Ok(a), Ok(b)) = (file.metadata(), direct.metadata()) else {
        return None;
    };
    (a.dev() == b.dev() && a.ino() == b.ino()).then_some(direct)
}

#[cfg(not(target_os = "linux"))]
fn reopen_direct(_file: &File) -> Option<File> {
    None
}

/// Write `data` at `pos` of the direct file: straight from `data` if it is
/// aligned in memory (see [`aligned_buffer`]), else copied through aligned buffers.
fn write_aligned(direct: &File, data: &[u8], pos: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    if (data.as_ptr() as usize).is_multiple_of(ALIGN as usize) {
        return direct.write_all_at(data, pos);
    }
    let mut buf = take_buffer()?;
    let mut at = pos;
    let result = data.chunks(BUF).try_for_each(|piece| {
        buf[..piece.len()].copy_from_slice(piece);
        direct.write_all_at(&buf[..piece.len()], at)?;
        at += piece.len() as u64;
        Ok(())
    });
    give_back(buf);
    result
}

/// An empty buffer with room for `capacity` bytes whose first byte is aligned for
/// direct I/O: a batch collected in it is written without another copy. (It stays
/// aligned while it is filled within its capacity and cleared for reuse.)
pub(crate) fn aligned_buffer(capacity: usize) -> bytes::BytesMut {
    use bytes::Buf;
    let align = ALIGN as usize;
    let mut buf = bytes::BytesMut::with_capacity(capacity + align);
    let pad = (align - buf.as_ptr() as usize % align) % align;
    buf.resize(pad, 0);
    buf.advance(pad);
    buf
}

static POOL: Mutex<Vec<memmap2::MmapMut>> = Mutex::new(Vec::new());

/// A page-aligned buffer of `BUF` bytes (anonymous mappings are page-aligned).
fn take_buffer() -> io::Result<memmap2::MmapMut> {
    let pooled = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
    match pooled {
        Some(buf) => Ok(buf),
        None => memmap2::MmapMut::map_anon(BUF),
    }
}

fn give_back(buf: memmap2::MmapMut) {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < POOL_MAX {
        pool.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_stay_aligned_while_filled_and_reused() {
        let mut buf = aligned_buffer(BUF);
        assert!(buf.capacity() >= BUF);
        assert!(buf.is_empty());
        let at = buf.as_ptr() as usize;
        assert!(at.is_multiple_of(ALIGN as usize));
        for _ in 0..BUF / 1000 {
            buf.extend_from_slice(&[9u8; 1000]);
        }
        assert_eq!(buf.as_ptr() as usize, at, "filling within capacity does not move it");
        let frozen = buf.freeze();
        let mut again = frozen.try_into_mut().expect("unique");
        again.clear();
        again.extend_from_slice(&[1u8; 4096]);
        assert_eq!(again.as_ptr() as usize, at, "a cleared buffer starts where it did");
    }

    #[test]
    fn only_big_aligned_batches_qualify() {
        assert!(qualifies(BUF, 0));
        assert!(qualifies(DIRECT_MIN, ALIGN * 3));
        assert!(!qualifies(DIRECT_MIN - ALIGN as usize, 0), "too small");
        assert!(!qualifies(BUF, 1000), "unaligned offset");
        assert!(!qualifies(BUF + 1, 0), "unaligned length");
    }

    /// Direct and buffered writes of one file land where they belong, and bytes
    /// written directly are not left in the page cache.
    #[cfg(target_os = "linux")]
    #[test]
    fn aligned_batches_bypass_the_page_cache_and_the_rest_is_buffered() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let direct = DirectFile::default();
        let head: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let body: Vec<u8> = (0..3 * BUF as u32).map(|i| (i % 251) as u8).collect();
        assert!(
            !direct.write_at(&file, &head, 0).unwrap(),
            "an unaligned head is buffered"
        );
        file.write_all_at(&head, 0).unwrap();
        let wrote = direct.write_at(&file, &body, ALIGN).unwrap();
        if !wrote {
            // A filesystem without O_DIRECT (tmpfs on an old kernel): buffered it is.
            assert!(direct.refused());
            return;
        }
        assert_eq!(
            cached_pages(&file, ALIGN, body.len()),
            0,
            "direct bytes skip the page cache"
        );
        let all = std::fs::read(&path).unwrap();
        assert_eq!(&all[..1000], &head[..]);
        assert!(all[1000..ALIGN as usize].iter().all(|&b| b == 0), "the gap is a hole");
        assert_eq!(&all[ALIGN as usize..], &body[..]);
        assert_eq!(all.len(), ALIGN as usize + body.len());
    }

    /// Pages of `len` bytes at `at` of `file` that are in the page cache.
    #[cfg(target_os = "linux")]
    fn cached_pages(file: &File, at: u64, len: usize) -> usize {
        // SAFETY: a read-only mapping of a file only this test writes, not while mapped.
        let map = unsafe { memmap2::MmapOptions::new().offset(at).len(len).map(file).unwrap() };
        let mut resident = vec![0u8; len.div_ceil(ALIGN as usize)];
        // SAFETY: our own live mapping, one byte per page in `resident`.
        let rc = unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, len, resident.as_mut_ptr()) };
        assert_eq!(rc, 0);
        resident.iter().filter(|&&r| r & 1 == 1).count()
    }
}
