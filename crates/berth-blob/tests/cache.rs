//! CachedBlobStore: the conformance suite plus cache behaviour (hits, single
//! flight, verification, ranges, eviction, reopen).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use berth_blob::BlobError;
use berth_blob::BlobStore;
use berth_blob::ByteRange;
use berth_blob::ByteStream;
use berth_blob::CachedBlobStore;
use berth_blob::Digest;
use berth_blob::FsBlobStore;
use berth_blob::conformance;
use berth_blob::conformance::collect;
use berth_blob::conformance::pseudo_random;
use berth_blob::conformance::stream_chunks;
use bytes::Bytes;
use futures::StreamExt;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Delegates to an `FsBlobStore`, counting `get` calls; can corrupt or slow
/// down the bytes it returns.
struct Counting {
    fs: Arc<FsBlobStore>,
    gets: AtomicUsize,
    corrupt: AtomicBool,
    /// Delay per yielded chunk, in microseconds (0 = none).
    delay_us: AtomicU64,
    /// Bytes yielded by every stream so far.
    sent: Arc<AtomicU64>,
    /// Streams stop after this many bytes until `gate` is true (MAX = never).
    gate_after: AtomicU64,
    gate: tokio::sync::watch::Sender<bool>,
}

impl Counting {
    fn new(fs: Arc<FsBlobStore>) -> Arc<Self> {
        Arc::new(Counting {
            fs,
            gets: AtomicUsize::new(0),
            corrupt: AtomicBool::new(false),
            delay_us: AtomicU64::new(0),
            sent: Arc::new(AtomicU64::new(0)),
            gate_after: AtomicU64::new(u64::MAX),
            gate: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Hold every stream after `bytes` until [`open_gate`](Self::open_gate).
    fn close_gate_after(&self, bytes: u64) {
        self.gate.send_replace(false);
        self.gate_after.store(bytes, Ordering::SeqCst);
    }

    fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    fn set_delay(&self, d: Duration) {
        self.delay_us.store(d.as_micros() as u64, Ordering::SeqCst);
    }
}

// Named, not imported: with both traits in scope, calls on concrete stores
// below would be ambiguous.
impl berth_blob::ForwardingBlobStore for Counting {
    fn inner(&self) -> &dyn BlobStore {
        &*self.fs
    }
    fn kind(&self) -> &'static str {
        "counting"
    }
    async fn get(&self, digest: &Digest, range: Option<ByteRange>) -> Result<ByteStream, BlobError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let mut stream = self.fs.get(digest, range).await?;
        if self.corrupt.load(Ordering::SeqCst) {
            // Same length, different bytes.
            stream = Box::pin(stream.map(|c| {
                c.map(|b| {
                    let mut v = b.to_vec();
                    if let Some(x) = v.first_mut() {
                        *x ^= 0xff;
                    }
                    Bytes::from(v)
                })
            }));
        }
        let limit = self.gate_after.load(Ordering::SeqCst);
        if limit != u64::MAX {
            let gate = self.gate.subscribe();
            let mut sent = 0u64;
            stream = Box::pin(stream.then(move |c| {
                let hold = sent >= limit;
                if let Ok(b) = &c {
                    sent += b.len() as u64;
                }
                let mut gate = gate.clone();
                async move {
                    if hold {
                        let _ = gate.wait_for(|open| *open).await;
                    }
                    c
                }
            }));
        }
        let delay = self.delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            // Pieces of at most 128 KiB, each after the delay: a steady trickle.
            let pieces = stream.flat_map(|c| {
                let parts: Vec<std::io::Result<Bytes>> = match c {
                    Ok(b) => (0..b.len())
                        .step_by(128 * KIB)
                        .map(|i| Ok(b.slice(i..b.len().min(i + 128 * KIB))))
                        .collect(),
                    Err(e) => vec![Err(e)],
                };
                futures::stream::iter(parts)
            });
            stream = Box::pin(pieces.then(move |c| async move {
                tokio::time::sleep(Duration::from_micros(delay)).await;
                c
            }));
        }
        let sent = Arc::clone(&self.sent);
        stream = Box::pin(stream.inspect(move |c| {
            if let Ok(b) = c {
                sent.fetch_add(b.len() as u64, Ordering::SeqCst);
            }
        }));
        Ok(stream)
    }
}

struct Fixture {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    cache_dir: std::path::PathBuf,
    fs: Arc<FsBlobStore>,
    inner: Arc<Counting>,
    cache: Arc<CachedBlobStore>,
}

async fn fixture(max_bytes: u64) -> Fixture {
    let fs_dir = tempfile::tempdir().expect("tempdir");
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let fs = Arc::new(FsBlobStore::open(fs_dir.path()).await.expect("open fs"));
    let inner = Counting::new(Arc::clone(&fs));
    let cache = open_cache(&inner, cache_dir.path(), max_bytes).await;
    Fixture {
        cache_dir: cache_dir.path().to_path_buf(),
        _dirs: (fs_dir, cache_dir),
        fs,
        inner,
        cache,
    }
}

async fn open_cache(inner: &Arc<Counting>, dir: &Path, max_bytes: u64) -> Arc<CachedBlobStore> {
    let inner: Arc<dyn BlobStore> = Arc::clone(inner) as Arc<dyn BlobStore>;
    Arc::new(
        CachedBlobStore::open(inner, dir.to_path_buf(), max_bytes)
            .await
            .expect("open cache"),
    )
}

async fn put_blob(fs: &FsBlobStore, seed: u64, len: usize) -> (Digest, Vec<u8>) {
    let data = pseudo_random(seed, len);
    let digest = Digest::sha256_of(&data);
    fs.put(&digest, stream_chunks(&data, &[MIB])).await.expect("put");
    (digest, data)
}

async fn get_all(store: &dyn BlobStore, digest: &Digest, range: Option<ByteRange>) -> Vec<u8> {
    let stream = store.get(digest, range).await.expect("get");
    collect(stream).await.expect("read stream")
}

/// Wait (bounded) until `cond` holds.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn tmp_entries(cache_dir: &Path) -> Vec<String> {
    std::fs::read_dir(cache_dir.join("tmp"))
        .expect("read tmp")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

fn disk_bytes(cache_dir: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let mut n = 0;
        for e in std::fs::read_dir(p).expect("read dir") {
            let e = e.expect("entry");
            let m = e.metadata().expect("metadata");
            n += if m.is_dir() { walk(&e.path()) } else { m.len() };
        }
        n
    }
    walk(cache_dir)
}

// ---- conformance -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite() {
    let f = fixture(64 * MIB as u64).await;
    let store: Arc<dyn BlobStore> = Arc::clone(&f.cache) as Arc<dyn BlobStore>;
    assert_eq!(store.kind(), "cache");
    conformance::run_all(store).await;
    f.cache.wait_idle().await;
    assert!(
        tmp_entries(&f.cache_dir).is_empty(),
        "temp files left: {:?}",
        tmp_entries(&f.cache_dir)
    );
    // Everything the suite stored was deleted again; the cache must agree.
    let stats = f.cache.stats();
    assert_eq!(stats.entries, 0, "cache entries left after the suite: {stats:?}");
    assert_eq!(stats.reserved_bytes, 0, "{stats:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn conformance_suite_current_thread() {
    let f = fixture(64 * MIB as u64).await;
    conformance::run_all(Arc::clone(&f.cache) as Arc<dyn BlobStore>).await;
    f.cache.wait_idle().await;
    assert_eq!(f.cache.stats().entries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite_with_tiny_cache() {
    // Most suite blobs bypass or evict each other.
    let f = fixture(600 * KIB as u64).await;
    conformance::run_all(Arc::clone(&f.cache) as Arc<dyn BlobStore>).await;
    f.cache.wait_idle().await;
    assert!(f.cache.stats().bytes <= 600 * KIB as u64);
}

// ---- behaviour -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn second_get_is_a_hit() {
    let f = fixture(64 * MIB as u64).await;
    let (digest, data) = put_blob(&f.fs, 1, MIB + 123).await;

    assert!(
        get_all(&*f.cache, &digest, None).await == data,
        "miss returns the bytes"
    );
    f.cache.wait_idle().await;
    assert_eq!(f.inner.gets(), 1);
    assert!(f.cache.contains(&digest));
    assert_eq!(
        std::fs::read(f.cache.cache_path(&digest)).expect("cache file"),
        data,
        "cache file content"
    );
    let p = f.cache.cache_path(&digest);
    let hex = digest.hex();
    assert_eq!(p, f.cache_dir.join("sha256").join(&hex[..2]).join(hex), "layout");

    assert!(get_all(&*f.cache, &digest, None).await == data, "hit returns the bytes");
    assert_eq!(f.inner.gets(), 1, "hit must not touch the inner store");
    assert_eq!(f.cache.stat(&digest).await.expect("stat"), Some(data.len() as u64));

    let s = f.cache.stats();
    assert_eq!((s.hits, s.misses, s.fills, s.fill_failures), (1, 1, 1, 0), "{s:?}");
    assert_eq!(s.entries, 1);
    assert_eq!(s.bytes, data.len() as u64);
    assert_eq!(s.bytes_filled, data.len() as u64);
    assert_eq!(
        s.bytes_served,
        2 * data.len() as u64,
        "miss and hit both read local files"
    );
    assert!(tmp_entries(&f.cache_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_misses_share_one_fill() {
    let f = fixture(64 * MIB as u64).await;
    let (digest, data) = put_blob(&f.fs, 2, 8 * MIB).await;
    let data = Arc::new(data);
    // The inner stream stalls after 3 MiB until all 16 requesters are in.
    f.inner.close_gate_after(3 * MIB as u64);

    let joined = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let cache = Arc::clone(&f.cache);
        let digest = digest.clone();
        let joined = Arc::clone(&joined);
        tasks.push(tokio::spawn(async move {
            let stream = cache.get(&digest, None).await?;
            joined.fetch_add(1, Ordering::SeqCst);
            collect(stream).await.map_err(BlobError::Io)
        }));
    }
    eventually("all 16 requesters joined", || joined.load(Ordering::SeqCst) == 16).await;
    assert!(!f.cache.contains(&digest), "fill still held at the gate");
    f.inner.open_gate();
    for (i, t) in tasks.into_iter().enumerate() {
        let got = t.await.expect("task").unwrap_or_else(|e| panic!("requester {i}: {e}"));
        assert!(got == *data, "requester {i} got wrong bytes");
    }
    f.cache.wait_idle().await;
    assert_eq!(f.inner.gets(), 1, "exactly one fill from the inner store");
    let s = f.cache.stats();
    assert_eq!((s.fills, s.misses, s.hits), (1, 16, 0), "{s:?}");
    assert!(f.cache.contains(&digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_bytes_arrive_before_the_fill_completes() {
    let f = fixture(64 * MIB as u64).await;
    let (digest, data) = put_blob(&f.fs, 3, 8 * MIB).await;
    // Less than one write batch arrives, then the source stalls: the
    // requester must still get those bytes right away.
    f.inner.close_gate_after(300 * KIB as u64);

    let mut stream = f.cache.get(&digest, None).await.expect("get");
    let first = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("first chunk while the inner stream is stalled")
        .expect("a chunk")
        .expect("ok chunk");
    assert!(!first.is_empty());
    assert!(!f.cache.contains(&digest), "fill still running");
    let mut got = first.to_vec();
    // Read everything that has arrived so far, then release the source.
    while got.len() < 256 * KIB {
        let c = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("bytes that arrived are served while the source is stalled")
            .expect("a chunk")
            .expect("ok chunk");
        got.extend_from_slice(&c);
    }
    f.inner.open_gate();
    while let Some(c) = stream.next().await {
        got.extend_from_slice(&c.expect("chunk"));
    }
    assert!(got == data);
}

/// A source that never pauses long but trickles (a chunk every 10 ms, so a whole
/// 2 MiB write batch takes 160 ms): the fill must still hand what arrived to the
/// requester soon, not once a batch is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trickling_source_is_served_before_a_write_batch_fills() {
    let f = fixture(64 * MIB as u64).await;
    let (digest, data) = put_blob(&f.fs, 4, 8 * MIB).await;
    f.inner.set_delay(Duration::from_millis(10));
    let mut stream = f.cache.get(&digest, None).await.expect("get");
    let first = stream.next().await.expect("a chunk").expect("ok chunk");
    let sent = f.inner.sent.load(Ordering::SeqCst);
    assert!(
        sent < 2 * MIB as u64,
        "the first bytes waited until the source had sent {sent} bytes"
    );
    let mut got = first.to_vec();
    got.extend(collect(stream).await.expect("the rest"));
    assert!(got == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disconnecting_requester_does_not_cancel_the_fill() {
    let f = fixture(64 * MIB as u64).await;
    let (digest, data) = put_blob(&f.fs, 4, 4 * MIB).await;
    f.inner.set_delay(Duration::from_millis(1));

    let mut stream = f.cache.get(&digest, None).await.expect("get");
    stream.next().await.expect("a chunk").expect("ok chunk");
    drop(stream); // the client goes away
    f.cache.wait_idle().await;
    assert!(f.cache.contains(&digest), "fill completed without its requester");
    assert!(get_all(&*f.cache, &digest, None).await == data);
    assert_eq!(f.inner.gets(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_bytes_from_inner_are_rejected_and_not_cached() {
    let f = fixture(64 * MIB as u64).await;
    let (digest, data) = put_blob(&f.fs, 5, 2 * MIB + 5).await;
    f.inner.corrupt.store(true, Ordering::SeqCst);

    let res = match f.cache.get(&digest, None).await {
        Ok(stream) => collect(stream).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match res {
        Err(msg) => assert!(msg.contains("cache fill digest mismatch"), "unexpected error: {msg}"),
        Ok(_) => panic!("a get of corrupted bytes must fail"),
    }
    f.cache.wait_idle().await;
    assert!(!f.cache.contains(&digest));
    assert!(!f.cache.cache_path(&digest).exists(), "nothing may be cached");
    assert!(tmp_entries(&f.cache_dir).is_empty(), "temp file removed");
    let s = f.cache.stats();
    assert_eq!((s.fill_failures, s.entries, s.reserved_bytes), (1, 0, 0), "{s:?}");

    // The next get tries the inner store again.
    f.inner.corrupt.store(false, Ordering::SeqCst);
    assert!(get_all(&*f.cache, &digest, None).await == data);
    assert_eq!(f.inner.gets(), 2);
    f.cache.wait_idle().await;
    assert!(f.cache.contains(&digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranges_on_miss_and_on_hit() {
    let fs_dir = tempfile::tempdir().expect("tempdir");
    let fs = Arc::new(FsBlobStore::open(fs_dir.path()).await.expect("open fs"));
    let inner = Counting::new(Arc::clone(&fs));
    let (digest, data) = put_blob(&fs, 6, 3 * MIB + 17).await;
    let size = data.len() as u64;
    let cases = [
        (0, 1, "first byte"),
        (size - 1, size, "last byte"),
        (MIB as u64 - 3, 2 * MIB as u64 + 11, "middle"),
        (0, size, "everything"),
    ];
    for (start, end, name) in cases {
        // Miss: a fresh cache per case.
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = open_cache(&inner, dir.path(), 64 * MIB as u64).await;
        let got = get_all(&*cache, &digest, Some(ByteRange::new(start, end))).await;
        assert!(got == data[start as usize..end as usize], "miss: {name}");
        cache.wait_idle().await;
        assert!(cache.contains(&digest), "a ranged miss caches the whole blob ({name})");
        assert_eq!(std::fs::metadata(cache.cache_path(&digest)).expect("file").len(), size);

        // Hit.
        let got = get_all(&*cache, &digest, Some(ByteRange::new(start, end))).await;
        assert!(got == data[start as usize..end as usize], "hit: {name}");
        assert_eq!(cache.stats().hits, 1, "{name}");

        let bad = cache.get(&digest, Some(ByteRange::new(size, size + 1))).await;
        assert!(
            matches!(bad, Err(BlobError::RangeNotSatisfiable { .. })),
            "{name}: {:?}",
            bad.err()
        );
    }
    // Unsatisfiable range on a miss.
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open_cache(&inner, dir.path(), 64 * MIB as u64).await;
    let bad = cache.get(&digest, Some(ByteRange::new(0, size + 1))).await;
    assert!(
        matches!(bad, Err(BlobError::RangeNotSatisfiable { .. })),
        "{:?}",
        bad.err()
    );
    cache.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lru_eviction_and_oversized_bypass() {
    let max = 3 * MIB as u64;
    let f = fixture(max).await;
    let mut blobs = Vec::new();
    for seed in 0..5 {
        blobs.push(put_blob(&f.fs, 10 + seed, MIB).await);
    }
    let get = async |i: usize| {
        let (digest, data) = &blobs[i];
        assert!(get_all(&*f.cache, digest, None).await == *data, "blob {i}");
        f.cache.wait_idle().await;
    };
    get(0).await; // a
    get(1).await; // b
    get(2).await; // c      cache: a b c (full)
    get(0).await; // a hit  LRU order: b c a
    get(3).await; // d      evicts b
    get(4).await; // e      evicts c

    let cached: Vec<bool> = blobs.iter().map(|(d, _)| f.cache.cache_path(d).exists()).collect();
    assert_eq!(cached, [true, false, false, true, true], "files on disk (a b c d e)");
    let indexed: Vec<bool> = blobs.iter().map(|(d, _)| f.cache.contains(d)).collect();
    assert_eq!(indexed, cached, "index agrees with the disk");
    let s = f.cache.stats();
    assert!(s.bytes <= max, "{s:?}");
    assert!(disk_bytes(&f.cache_dir) <= max);
    assert_eq!((s.evictions, s.hits, s.fills), (2, 1, 5), "{s:?}");
    assert_eq!(f.inner.gets(), 5);

    // b was evicted: the next get is a miss again.
    get(1).await;
    assert_eq!(f.inner.gets(), 6);

    // Larger than max/2: streamed straight from the inner store, never cached.
    let (big, big_data) = put_blob(&f.fs, 99, 2 * MIB).await;
    let range = ByteRange::new(100, 2 * MIB as u64 - 100);
    assert!(get_all(&*f.cache, &big, Some(range)).await == big_data[100..2 * MIB - 100]);
    assert!(get_all(&*f.cache, &big, None).await == big_data);
    f.cache.wait_idle().await;
    assert!(!f.cache.contains(&big));
    assert!(!f.cache.cache_path(&big).exists());
    assert!(tmp_entries(&f.cache_dir).is_empty());
    let s = f.cache.stats();
    assert_eq!(s.bypasses, 2, "{s:?}");
    assert_eq!(f.inner.gets(), 8, "each bypassed get reads the inner store");
    assert!(disk_bytes(&f.cache_dir) <= max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_survives_reopen() {
    let fs_dir = tempfile::tempdir().expect("tempdir");
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let fs = Arc::new(FsBlobStore::open(fs_dir.path()).await.expect("open fs"));
    let (a, a_data) = put_blob(&fs, 20, MIB).await;
    let (b, b_data) = put_blob(&fs, 21, MIB).await;
    {
        let inner = Counting::new(Arc::clone(&fs));
        let cache = open_cache(&inner, cache_dir.path(), 8 * MIB as u64).await;
        assert!(get_all(&*cache, &a, None).await == a_data);
        cache.wait_idle().await;
        assert!(get_all(&*cache, &b, None).await == b_data);
        cache.wait_idle().await;
    }
    // A stale temp file from a crashed fill.
    std::fs::write(cache_dir.path().join("tmp").join("fill-stale"), b"junk").expect("write");

    let inner = Counting::new(Arc::clone(&fs));
    let cache = open_cache(&inner, cache_dir.path(), 8 * MIB as u64).await;
    assert!(
        tmp_entries(cache_dir.path()).is_empty(),
        "stale temp files removed on open"
    );
    let s = cache.stats();
    assert_eq!((s.entries, s.bytes), (2, 2 * MIB as u64), "{s:?}");
    assert_eq!(cache.stat(&a).await.expect("stat"), Some(MIB as u64));
    assert!(get_all(&*cache, &a, None).await == a_data);
    assert!(get_all(&*cache, &b, Some(ByteRange::new(5, 10))).await == b_data[5..10]);
    assert_eq!(inner.gets(), 0, "served from the reopened cache");
    assert_eq!(cache.stats().hits, 2);
    drop(cache);

    // Reopening with a smaller bound evicts down to it (oldest first).
    let inner = Counting::new(Arc::clone(&fs));
    let cache = open_cache(&inner, cache_dir.path(), MIB as u64 + 1).await;
    let s = cache.stats();
    assert_eq!(s.entries, 1, "{s:?}");
    assert!(s.bytes <= MIB as u64 + 1);
    assert_eq!(
        [cache.cache_path(&a).exists(), cache.cache_path(&b).exists()]
            .iter()
            .filter(|x| **x)
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_removes_from_cache_and_inner_even_during_a_fill() {
    let f = fixture(64 * MIB as u64).await;
    let (a, a_data) = put_blob(&f.fs, 30, MIB).await;
    assert!(get_all(&*f.cache, &a, None).await == a_data);
    f.cache.wait_idle().await;
    assert!(f.cache.contains(&a));
    f.cache.delete(&a).await.expect("delete");
    assert!(!f.cache.contains(&a));
    assert!(!f.cache.cache_path(&a).exists());
    assert_eq!(f.fs.stat(&a).await.expect("stat"), None);
    assert!(matches!(f.cache.get(&a, None).await, Err(BlobError::NotFound(_))));

    // Delete while a fill is streaming: the requester still gets its bytes,
    // but the fill must not put the blob back into the cache.
    let (b, b_data) = put_blob(&f.fs, 31, 4 * MIB).await;
    f.inner.set_delay(Duration::from_millis(2));
    let mut stream = f.cache.get(&b, None).await.expect("get");
    let mut got = stream.next().await.expect("chunk").expect("ok").to_vec();
    f.cache.delete(&b).await.expect("delete during fill");
    while let Some(c) = stream.next().await {
        got.extend_from_slice(&c.expect("chunk"));
    }
    assert!(got == b_data);
    f.cache.wait_idle().await;
    assert!(!f.cache.contains(&b));
    assert!(!f.cache.cache_path(&b).exists());
    assert_eq!(f.cache.stat(&b).await.expect("stat"), None);
    assert!(tmp_entries(&f.cache_dir).is_empty());
    assert_eq!(f.cache.stats().reserved_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_blob_is_not_found_and_not_cached() {
    let f = fixture(64 * MIB as u64).await;
    let digest = Digest::sha256_of(b"never stored");
    assert!(matches!(f.cache.get(&digest, None).await, Err(BlobError::NotFound(_))));
    f.cache.wait_idle().await;
    assert_eq!(f.cache.stats().entries, 0);
    f.cache.check_writable().await.expect("writable");
}

/// Single-run throughput of a 64 MiB blob over the fs inner store:
/// `cargo test -p berth-blob --all-features --release --test cache -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn throughput_64mib_hit_vs_miss() {
    let f = fixture(1024 * MIB as u64).await;
    let (digest, data) = put_blob(&f.fs, 64, 64 * MIB).await;
    let mib = data.len() as f64 / MIB as f64;

    let t = Instant::now();
    let miss = get_all(&*f.cache, &digest, None).await;
    let miss_t = t.elapsed();
    f.cache.wait_idle().await;
    let miss_done = t.elapsed();
    assert!(miss == data);

    let t = Instant::now();
    let hit = get_all(&*f.cache, &digest, None).await;
    let hit_t = t.elapsed();
    assert!(hit == data);

    let t = Instant::now();
    let direct = get_all(&*f.fs, &digest, None).await;
    let direct_t = t.elapsed();
    assert!(direct == data);

    let t = Instant::now();
    let _ = Digest::sha256_of(&data);
    let hash_t = t.elapsed();

    println!(
        "64 MiB: miss {:.0} MiB/s ({miss_t:?}; fill committed after {miss_done:?}), hit {:.0} MiB/s ({hit_t:?}), \
         fs direct {:.0} MiB/s ({direct_t:?}), sha256 alone {:.0} MiB/s",
        mib / miss_t.as_secs_f64(),
        mib / hit_t.as_secs_f64(),
        mib / direct_t.as_secs_f64(),
        mib / hash_t.as_secs_f64(),
    );
}
