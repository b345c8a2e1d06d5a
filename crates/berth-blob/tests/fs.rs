//! FsBlobStore: the full conformance suite plus filesystem-specific tests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_blob::BlobError;
use berth_blob::BlobStore;
use berth_blob::ByteStream;
use berth_blob::Digest;
use berth_blob::FsBlobStore;
use berth_blob::conformance;
use berth_blob::conformance::pseudo_random;
use berth_blob::conformance::stream_chunks;
use berth_blob::conformance::stream_once;
use bytes::Bytes;
use futures::StreamExt;

async fn open(dir: &Path) -> FsBlobStore {
    FsBlobStore::open(dir).await.expect("open fs blob store")
}

fn tmp_entries(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("tmp"))
        .expect("read tmp")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// Wait (bounded) until `cond` holds.
async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    for _ in 0..500 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Yields `data` in 64 KiB chunks, then never finishes (a stalled client).
fn stalling_stream(data: Vec<u8>) -> ByteStream {
    let head = stream_chunks(&data, &[64 * 1024]);
    Box::pin(head.chain(futures::stream::pending()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn BlobStore> = Arc::new(open(dir.path()).await);
    assert_eq!(store.kind(), "fs");
    conformance::run_all(Arc::clone(&store)).await;
    assert!(
        tmp_entries(dir.path()).is_empty(),
        "suite left temp files behind: {:?}",
        tmp_entries(dir.path())
    );
}

#[tokio::test(flavor = "current_thread")]
async fn conformance_suite_current_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn BlobStore> = Arc::new(open(dir.path()).await);
    conformance::run_all(store).await;
}

/// Overrides nothing, so it must behave exactly like the store it wraps.
struct Transparent(FsBlobStore);

// Named, not imported: calls on `FsBlobStore` below stay unambiguous.
impl berth_blob::ForwardingBlobStore for Transparent {
    fn inner(&self) -> &dyn BlobStore {
        &self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrapper_that_overrides_nothing_passes_the_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn BlobStore> = Arc::new(Transparent(open(dir.path()).await));
    assert_eq!(store.kind(), "fs", "the kind is the inner store's");
    conformance::run_all(store).await;
}

#[tokio::test]
async fn layout_is_content_addressed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let data = pseudo_random(100, 5000);
    let digest = Digest::sha256_of(&data);
    store.put(&digest, stream_once(&data)).await.expect("put");
    let hex = digest.hex();
    let path = dir.path().join("blobs/sha256").join(&hex[..2]).join(hex);
    assert_eq!(std::fs::read(&path).expect("blob file"), data);
    assert_eq!(store.blob_path(&digest).expect("path"), path);

    let d512 = Digest::of(berth_blob::DigestAlgorithm::Sha512, &data);
    store.put(&d512, stream_once(&data)).await.expect("put sha512");
    let p512 = dir.path().join("blobs/sha512").join(&d512.hex()[..2]).join(d512.hex());
    assert!(p512.is_file());

    let mut listed = store.list_blobs().await.expect("list_blobs");
    listed.sort();
    let mut expected = vec![(digest.clone(), 5000), (d512, 5000)];
    expected.sort();
    assert_eq!(listed, expected);

    let id = "0f0e0d0c-upload";
    store.upload_create(id).await.expect("create");
    assert!(dir.path().join("uploads").join(id).is_file());
}

/// `list` walks the shards in digest order, page by page, and skips whatever in
/// the blob directory is not a blob.
#[tokio::test]
async fn listing_pages_in_order_and_skips_foreign_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let mut ours = Vec::new();
    for i in 0..40u64 {
        let data = pseudo_random(120 + i, 10 + i as usize);
        let algo = if i % 7 == 0 {
            berth_blob::DigestAlgorithm::Sha512
        } else {
            berth_blob::DigestAlgorithm::Sha256
        };
        let digest = Digest::of(algo, &data);
        store.put(&digest, stream_once(&data)).await.expect("put");
        ours.push((digest, data.len() as u64));
    }
    ours.sort();
    let blobs = dir.path().join("blobs");
    let hex = ours[5].0.hex().to_owned();
    let shard = blobs.join("sha256").join(&hex[..2]);
    std::fs::write(shard.join(format!("{hex}.tmp")), b"junk").expect("write");
    std::fs::write(shard.join("short"), b"junk").expect("write");
    std::fs::create_dir(shard.join("ffff")).expect("mkdir");
    // A valid name in the wrong shard would break the order: skipped.
    std::fs::create_dir_all(blobs.join("sha256/zz")).expect("mkdir");
    std::fs::write(blobs.join("sha256/zz").join(&hex), b"junk").expect("write");
    std::fs::create_dir_all(blobs.join("md5/00")).expect("mkdir");
    std::fs::write(blobs.join("md5/00/00ab"), b"junk").expect("write");
    std::fs::write(blobs.join("README"), b"junk").expect("write");

    for limit in [1, 3, 7, 1000] {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = store.list(after.as_ref(), limit).await.expect("list");
            assert!(page.blobs.len() <= limit);
            all.extend(page.blobs);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(all, ours, "pages of {limit}");
    }
    let page = store.list(Some(&ours[5].0), 3).await.expect("list");
    assert_eq!(page.blobs, ours[6..9]);
    assert_eq!(page.next.as_ref(), Some(&ours[8].0));
    let page = store.list(ours.last().map(|(d, _)| d), 3).await.expect("list");
    assert_eq!(page, berth_blob::BlobPage::default(), "nothing after the last blob");
}

#[tokio::test]
async fn stale_temp_files_are_removed_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kept = pseudo_random(101, 1234);
    let kept_digest = Digest::sha256_of(&kept);
    {
        let store = open(dir.path()).await;
        store.put(&kept_digest, stream_once(&kept)).await.expect("put");
    }
    // Simulate a crash mid-put: a full-looking temp file plus junk.
    let partial = pseudo_random(102, 64 * 1024);
    let partial_digest = Digest::sha256_of(&partial);
    std::fs::write(dir.path().join("tmp/put-deadbeef"), &partial).expect("write temp");
    std::fs::write(dir.path().join("tmp").join(partial_digest.hex()), &partial).expect("write temp");
    std::fs::create_dir(dir.path().join("tmp/stale-dir")).expect("mkdir");
    std::fs::write(dir.path().join("tmp/stale-dir/x"), b"x").expect("write");

    let store = open(dir.path()).await;
    assert!(tmp_entries(dir.path()).is_empty(), "tmp/ must be empty after open");
    assert_eq!(store.stat(&partial_digest).await.expect("stat"), None);
    assert!(matches!(
        store.get(&partial_digest, None).await,
        Err(BlobError::NotFound(_))
    ));
    assert_eq!(store.stat(&kept_digest).await.expect("stat"), Some(1234));
    let listed = store.list_blobs().await.expect("list");
    assert_eq!(listed, vec![(kept_digest, 1234)]);
}

#[tokio::test]
async fn state_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blob = pseudo_random(103, 10_000);
    let digest = Digest::sha256_of(&blob);
    let part = pseudo_random(104, 777);
    let id = uuid::Uuid::new_v4().to_string();
    {
        let store = open(dir.path()).await;
        store.put(&digest, stream_once(&blob)).await.expect("put");
        store.upload_create(&id).await.expect("create");
        store
            .upload_append(&id, 0, stream_once(&part), &mut |_: &[u8]| {})
            .await
            .expect("append");
    }
    let store = open(dir.path()).await;
    assert_eq!(store.stat(&digest).await.expect("stat"), Some(10_000));
    assert_eq!(store.upload_len(&id).await.expect("len"), 777);
    assert_eq!(store.upload_list().await.expect("list"), vec![id.clone()]);
    let mut read = Vec::new();
    let mut s = store.upload_read(&id).await.expect("read");
    while let Some(c) = s.next().await {
        read.extend_from_slice(&c.expect("chunk"));
    }
    assert_eq!(read, part);
}

#[tokio::test]
async fn failed_puts_leave_no_temp_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let data = pseudo_random(105, 3 * 1024 * 1024);
    let wrong = Digest::sha256_of(b"something else");
    assert!(matches!(
        store.put(&wrong, stream_chunks(&data, &[100_000])).await,
        Err(BlobError::DigestMismatch { .. })
    ));
    assert!(tmp_entries(dir.path()).is_empty());
    let digest = Digest::sha256_of(&data);
    assert!(matches!(
        store
            .put(&digest, conformance::failing_stream(&data[..2_000_000], 300_000))
            .await,
        Err(BlobError::Client(_))
    ));
    assert!(tmp_entries(dir.path()).is_empty());
    assert!(store.list_blobs().await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_put_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(dir.path()).await);
    let data = pseudo_random(106, 3 * 1024 * 1024);
    let digest = Digest::sha256_of(&data);
    let task = {
        let store = Arc::clone(&store);
        let digest = digest.clone();
        let head = data[..2 * 1024 * 1024].to_vec();
        tokio::spawn(async move { store.put(&digest, stalling_stream(head)).await })
    };
    eventually("temp file appears", async || !tmp_entries(dir.path()).is_empty()).await;
    task.abort();
    assert!(task.await.is_err_and(|e| e.is_cancelled()));
    eventually("temp file removed", async || tmp_entries(dir.path()).is_empty()).await;
    assert_eq!(store.stat(&digest).await.expect("stat"), None);
}

/// Cancelled while its temp file is being created (the put waits for the blocking
/// open): the file is still removed once it exists.
#[tokio::test]
async fn put_cancelled_while_creating_its_temp_file_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(dir.path()).await);
    let data = pseudo_random(109, 64 * 1024);
    let digest = Digest::sha256_of(&data);
    // Cancel at many points of the put's start: the runtime's one thread lets the
    // put run `steps` times, each time after blocking threads had `pause` to work.
    for steps in 1..6 {
        for pause in [0, 20, 50, 100, 200, 400] {
            let task = {
                let store = Arc::clone(&store);
                let digest = digest.clone();
                let data = data.clone();
                tokio::spawn(async move { store.put(&digest, stalling_stream(data)).await })
            };
            for _ in 0..steps {
                tokio::task::yield_now().await;
                std::thread::sleep(Duration::from_micros(pause));
            }
            task.abort();
            assert!(task.await.is_err_and(|e| e.is_cancelled()));
        }
    }
    eventually("temp files removed", async || tmp_entries(dir.path()).is_empty()).await;
    assert_eq!(store.stat(&digest).await.expect("stat"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_append_is_rolled_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(dir.path()).await);
    let id = uuid::Uuid::new_v4().to_string();
    store.upload_create(&id).await.expect("create");
    let first = pseudo_random(107, 1000);
    store
        .upload_append(&id, 0, stream_once(&first), &mut |_: &[u8]| {})
        .await
        .expect("append");

    let task = {
        let store = Arc::clone(&store);
        let id = id.clone();
        let head = pseudo_random(108, 3 * 1024 * 1024);
        tokio::spawn(async move {
            store
                .upload_append(&id, 1000, stalling_stream(head), &mut |_: &[u8]| {})
                .await
        })
    };
    // Wait until some of the stalled append reached the disk, then cancel it.
    eventually("partial append written", async || {
        store.upload_len(&id).await.is_ok_and(|n| n > 1000)
    })
    .await;
    task.abort();
    assert!(task.await.is_err_and(|e| e.is_cancelled()));
    eventually("append rolled back", async || {
        store.upload_len(&id).await.is_ok_and(|n| n == 1000)
    })
    .await;

    // The per-upload lock was released: appending again works.
    let second = pseudo_random(109, 5000);
    let n = store
        .upload_append(&id, 1000, stream_once(&second), &mut |_: &[u8]| {})
        .await
        .expect("append after cancel");
    assert_eq!(n, 6000);
    let mut all = first.clone();
    all.extend_from_slice(&second);
    let digest = Digest::sha256_of(&all);
    assert_eq!(store.upload_commit(&id, &digest).await.expect("commit"), 6000);
    assert_eq!(store.stat(&digest).await.expect("stat"), Some(6000));
}

#[tokio::test]
async fn invalid_ids_never_touch_the_filesystem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let store = open(&root).await;
    for id in ["../x", "../../escape", "..", "/abs"] {
        assert!(matches!(
            store.upload_create(id).await,
            Err(BlobError::UploadNotFound(_))
        ));
    }
    assert!(!dir.path().join("x").exists());
    assert!(!root.join("x").exists());
    assert!(!dir.path().join("escape").exists());
}

#[tokio::test]
async fn check_writable_fails_without_tmp_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    store.check_writable().await.expect("writable");
    std::fs::remove_dir(dir.path().join("tmp")).expect("rm tmp");
    assert!(matches!(store.check_writable().await, Err(BlobError::Unavailable(_))));
}

#[tokio::test]
async fn get_streams_bounded_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    // Big blobs go out in mapped pieces of at most MAP_CHUNK bytes.
    let data = pseudo_random(110, 5 * 1024 * 1024 + 5);
    let digest = Digest::sha256_of(&data);
    store.put(&digest, stream_once(&data)).await.expect("put");
    let mut s = store.get(&digest, None).await.expect("get");
    let mut total = 0;
    let mut chunks = 0;
    while let Some(c) = s.next().await {
        let c: Bytes = c.expect("chunk");
        assert!(c.len() as u64 <= berth_blob::MAP_CHUNK, "chunk of {} bytes", c.len());
        total += c.len();
        chunks += 1;
    }
    assert_eq!(total, data.len());
    assert!(chunks >= 3, "{chunks} chunks");
}
