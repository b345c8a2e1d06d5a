//! Physical references measured in the same run: what one core hashes per second
//! and what one loopback TCP stream moves per second. The targets are ratios to these.
//! One more, for information: what one loopback stream moves from a file in the page
//! cache, sent as berth sends a big blob (the ceiling of any server of cached files).

use std::io::Read;
use std::io::Write;
use std::net::TcpListener;
use std::net::TcpStream;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use serde::Deserialize;
use serde::Serialize;
use sha2::Digest as _;
use sha2::Sha256;

use crate::stats::median;

/// Buffer size of the copy (writes and reads of 1 MiB, as the HTTP read client uses).
pub const COPY_BUF: usize = 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Physical {
    /// Bytes hashed / copied per repetition.
    pub bytes: u64,
    pub repetitions: usize,
    /// Median sha256 throughput of one core, MiB/s.
    pub sha256_mib_per_s: f64,
    /// Median seconds to hash `bytes`.
    pub sha256_s: f64,
    /// Median loopback TCP copy throughput (one stream, 127.0.0.1), MiB/s.
    pub loopback_mib_per_s: f64,
    /// Median seconds to copy `bytes` over loopback.
    pub loopback_s: f64,
    /// Writing `bytes` to a new file in the temp dir (where the servers keep their
    /// data) and fsyncing it, MiB/s (one repetition: it is slow and wears the disk).
    pub disk_write_fsync_mib_per_s: f64,
    pub disk_write_fsync_s: f64,
    /// Median loopback throughput of `bytes` sent from that file while it is in the
    /// page cache, from memory maps populated before each write (as berth serves a
    /// big blob), MiB/s. The loopback copy above sends one 1 MiB buffer over and
    /// over, which stays in the CPU's caches; this reads every byte from memory.
    pub page_cache_send_mib_per_s: f64,
    pub page_cache_send_s: f64,
}

/// Bytes mapped per write of the page-cache send: berth's `MAP_CHUNK`.
const MAP_PIECE: u64 = 2 * 1024 * 1024;

/// Seconds to sha256 all of `data` on the calling thread (1 MiB updates).
pub fn sha256_seconds(data: &[u8]) -> f64 {
    let start = Instant::now();
    let mut h = Sha256::new();
    for chunk in data.chunks(1024 * 1024) {
        h.update(chunk);
    }
    std::hint::black_box(h.finalize());
    start.elapsed().as_secs_f64()
}

/// Seconds to move `bytes` from one thread to another through a TCP connection on
/// 127.0.0.1 (1 MiB writes, 1 MiB reads, data discarded).
pub fn loopback_seconds(bytes: u64) -> anyhow::Result<f64> {
    let buf = vec![0x5au8; COPY_BUF];
    over_loopback(bytes, |sock| {
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(COPY_BUF as u64) as usize;
            sock.write_all(&buf[..n])?;
            sent += n as u64;
        }
        Ok(())
    })
}

/// Seconds to send the first `len` bytes of `file`, which is in the page cache,
/// through a TCP connection on 127.0.0.1: `MAP_PIECE` memory maps, each populated
/// and then written whole, so the socket copies straight from the page cache.
pub fn page_cache_send_seconds(file: &std::fs::File, len: u64) -> anyhow::Result<f64> {
    over_loopback(len, |sock| {
        let mut at = 0u64;
        while at < len {
            let piece = (len - at).min(MAP_PIECE) as usize;
            // SAFETY: the bench's own temp file, not modified while mapped.
            let map = unsafe { memmap2::MmapOptions::new().offset(at).len(piece).map(file)? };
            let _ = map.advise(memmap2::Advice::PopulateRead);
            sock.write_all(&map)?;
            at += piece as u64;
        }
        Ok(())
    })
}

/// Seconds from the connection until `bytes` sent by `send` were all read by another
/// thread (1 MiB reads, data discarded).
fn over_loopback(bytes: u64, send: impl FnOnce(&mut TcpStream) -> std::io::Result<()>) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> anyhow::Result<u64> {
        let (mut sock, _) = listener.accept()?;
        sock.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut buf = vec![0u8; COPY_BUF];
        let mut total = 0u64;
        while total < bytes {
            let n = sock.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        Ok(total)
    });
    let mut sock = TcpStream::connect(addr).context("connecting the copy stream")?;
    sock.set_nodelay(true)?;
    sock.set_write_timeout(Some(Duration::from_secs(120)))?;
    let start = Instant::now();
    send(&mut sock).context("sending over loopback")?;
    drop(sock);
    let received = reader
        .join()
        .map_err(|_| anyhow::anyhow!("copy reader thread panicked"))??;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(received == bytes, "loopback copy moved {received} of {bytes} bytes");
    Ok(secs)
}

/// Seconds to write `data` to a new file in `dir` and fsync it, and the file (removed
/// when dropped; its pages stay in the page cache). Written in `MAP_PIECE` batches
/// at aligned offsets, as berth writes blobs, so the page cache holds it the same
/// way (2 MiB folios where the filesystem has large folios).
pub fn disk_write_fsync_seconds(data: &[u8], dir: &std::path::Path) -> anyhow::Result<(f64, tempfile::NamedTempFile)> {
    let mut file = tempfile::Builder::new()
        .prefix("berth-bench-disk-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    let start = Instant::now();
    for chunk in data.chunks(MAP_PIECE as usize) {
        file.write_all(chunk)?;
    }
    file.as_file().sync_all()?;
    let secs = start.elapsed().as_secs_f64();
    Ok((secs, file))
}

/// The references: sha256, loopback and the page-cache send `reps` times each
/// (medians), the disk once. `data` is hashed whole each time.
pub fn measure(data: &[u8], reps: usize) -> anyhow::Result<Physical> {
    let reps = reps.max(1);
    let bytes = data.len() as u64;
    let mib = bytes as f64 / (1024.0 * 1024.0);
    let mut sha: Vec<f64> = (0..reps).map(|_| sha256_seconds(data)).collect();
    let mut copy = Vec::with_capacity(reps);
    for _ in 0..reps {
        copy.push(loopback_seconds(bytes)?);
    }
    let sha_s = median(&mut sha).unwrap_or(f64::NAN);
    let copy_s = median(&mut copy).unwrap_or(f64::NAN);
    let (disk_s, written) = disk_write_fsync_seconds(data, &std::env::temp_dir())?;
    // Every page read once, so none of the timed sends waits for the disk.
    std::io::copy(&mut std::fs::File::open(written.path())?, &mut std::io::sink())?;
    let mut cached = Vec::with_capacity(reps);
    for _ in 0..reps {
        cached.push(page_cache_send_seconds(written.as_file(), bytes)?);
    }
    drop(written);
    let cached_s = median(&mut cached).unwrap_or(f64::NAN);
    Ok(Physical {
        bytes,
        repetitions: reps,
        sha256_mib_per_s: mib / sha_s,
        sha256_s: sha_s,
        loopback_mib_per_s: mib / copy_s,
        loopback_s: copy_s,
        disk_write_fsync_mib_per_s: mib / disk_s,
        disk_write_fsync_s: disk_s,
        page_cache_send_mib_per_s: mib / cached_s,
        page_cache_send_s: cached_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_references_are_positive() {
        let data = vec![1u8; 4 * 1024 * 1024];
        let p = measure(&data, 1).unwrap();
        assert_eq!(p.bytes, 4 * 1024 * 1024);
        assert!(p.sha256_mib_per_s > 0.0 && p.loopback_mib_per_s > 0.0);
        assert!(p.disk_write_fsync_mib_per_s > 0.0);
        assert!(p.page_cache_send_mib_per_s > 0.0);
    }
}
