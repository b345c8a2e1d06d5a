//! S3BlobStore against a real SeaweedFS (one per test, on free loopback ports):
//! the full conformance suite plus S3-specific behaviour — multipart assembly with
//! UploadPartCopy, uploads resumed by a new store instance, rollback across part
//! boundaries, abort, outage and recovery, presigned URLs and connect errors.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use berth_blob::BlobError;
use berth_blob::BlobStore;
use berth_blob::ByteRange;
use berth_blob::ByteStream;
use berth_blob::Digest;
use berth_blob::S3BlobStore;
use berth_blob::S3Config;
use berth_blob::conformance;
use berth_blob::conformance::collect;
use berth_blob::conformance::pseudo_random;
use berth_blob::conformance::stream_chunks;
use berth_blob::conformance::stream_once;
use berth_testkit::SeaweedFs;
use futures::StreamExt;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
/// Bound for operations against a stopped S3 (a hang fails the test, no timing
/// assertion beyond that).
const OUTAGE_BOUND: Duration = Duration::from_secs(90);

/// Log to the test output when `RUST_LOG` is set (e.g. `berth_blob=debug`).
fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

async fn seaweed() -> SeaweedFs {
    init_tracing();
    match SeaweedFs::start().await {
        Ok(s) => s,
        Err(e) => panic!("starting SeaweedFS failed: {e:#}"),
    }
}

async fn connect(cfg: S3Config) -> S3BlobStore {
    match S3BlobStore::connect(cfg).await {
        Ok(s) => s,
        Err(e) => panic!("connect failed: {e}"),
    }
}

/// Settings with 5 MiB parts, so a few MiB exercise the part logic.
fn small_parts(mut cfg: S3Config) -> S3Config {
    cfg.part_size = 5 * MIB as u64;
    cfg
}

fn ignore(_: &[u8]) {}

async fn append(store: &dyn BlobStore, id: &str, offset: u64, data: &[u8], chunk: usize) -> u64 {
    store
        .upload_append(id, offset, stream_chunks(data, &[chunk]), &mut ignore)
        .await
        .unwrap_or_else(|e| panic!("append at {offset} ({} bytes): {e:?}", data.len()))
}

async fn read_upload(store: &dyn BlobStore, id: &str) -> Vec<u8> {
    let s = store
        .upload_read(id)
        .await
        .unwrap_or_else(|e| panic!("upload_read: {e:?}"));
    collect(s).await.unwrap_or_else(|e| panic!("upload_read stream: {e:?}"))
}

async fn get_all(store: &dyn BlobStore, digest: &Digest, range: Option<ByteRange>) -> Vec<u8> {
    let s = store
        .get(digest, range)
        .await
        .unwrap_or_else(|e| panic!("get {digest} {range:?}: {e:?}"));
    collect(s)
        .await
        .unwrap_or_else(|e| panic!("get stream {digest}: {e:?}"))
}

/// Keys under `prefix` in the bucket, listed directly.
async fn keys_under(fs: &SeaweedFs, prefix: &str) -> Vec<String> {
    fs.list_keys(prefix)
        .await
        .unwrap_or_else(|e| panic!("listing {prefix}: {e:#}"))
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Upload `data` in ~1 MiB chunks over two appends, commit, check content and a
/// few ranges around part boundaries, then delete the blob.
async fn upload_commit_verify(store: &S3BlobStore, data: &[u8], what: &str) {
    let id = new_id();
    store
        .upload_create(&id)
        .await
        .unwrap_or_else(|e| panic!("{what}: create: {e:?}"));
    let half = data.len() / 2;
    let len = append(store, &id, 0, &data[..half], MIB + 7).await;
    let len = append(store, &id, len, &data[half..], MIB - 3).await;
    assert_eq!(len, data.len() as u64, "{what}: length");
    let digest = Digest::sha256_of(data);
    let n = store
        .upload_commit(&id, &digest)
        .await
        .unwrap_or_else(|e| panic!("{what}: commit: {e:?}"));
    assert_eq!(n, data.len() as u64, "{what}: committed size");
    assert_eq!(
        store.stat(&digest).await.expect("stat"),
        Some(data.len() as u64),
        "{what}: stat"
    );
    assert!(
        get_all(store, &digest, None).await == data,
        "{what}: committed content differs"
    );
    let size = data.len() as u64;
    for (start, end) in [
        (0, 1),
        (5 * MIB as u64 - 1, 5 * MIB as u64 + 1),
        (6 * MIB as u64 - 2, 6 * MIB as u64 + 2),
        (12 * MIB as u64 - 1, 12 * MIB as u64 + 1),
        (size - 1, size),
    ] {
        if end <= size && start < end {
            let got = get_all(store, &digest, Some(ByteRange::new(start, end))).await;
            assert!(
                got == data[start as usize..end as usize],
                "{what}: range {start}..{end}"
            );
        }
    }
    assert!(
        store.upload_list().await.expect("list").iter().all(|u| u != &id),
        "{what}: committed upload still listed"
    );
    store.delete(&digest).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite() {
    let fs = seaweed().await;
    // Two stores on one bucket at once: with a prefix and without one.
    let with_prefix: Arc<dyn BlobStore> = Arc::new(connect(small_parts(fs.s3_config("conf"))).await);
    let no_prefix: Arc<dyn BlobStore> = Arc::new(connect(small_parts(fs.s3_config(""))).await);
    assert_eq!(with_prefix.kind(), "s3");
    tokio::join!(
        conformance::run_all(Arc::clone(&with_prefix)),
        conformance::run_all(Arc::clone(&no_prefix))
    );
    for (store, prefix) in [(&with_prefix, "conf/"), (&no_prefix, "")] {
        let uploads = keys_under(&fs, &format!("{prefix}uploads/")).await;
        assert!(uploads.is_empty(), "suite left upload parts: {uploads:?}");
        let listed = store.upload_list().await.expect("upload_list");
        assert!(listed.is_empty(), "suite left uploads: {listed:?}");
    }
    let probes = keys_under(&fs, "conf/_probe/").await;
    assert!(probes.is_empty(), "probe objects left: {probes:?}");
    let tmp = fs.dir().join("spool/conf/tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp).expect("tmp dir").collect();
    assert!(left.is_empty(), "put temp files left: {left:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn conformance_suite_current_thread() {
    let fs = seaweed().await;
    let store: Arc<dyn BlobStore> = Arc::new(connect(small_parts(fs.s3_config("ct"))).await);
    conformance::run_all(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_is_content_addressed() {
    let fs = seaweed().await;
    let store = connect(fs.s3_config("/lay/out/")).await;
    let data = pseudo_random(200, 5000);
    let digest = Digest::sha256_of(&data);
    store.put(&digest, stream_once(&data)).await.expect("put");
    let hex = digest.hex();
    let key = format!("lay/out/blobs/sha256/{}/{hex}", &hex[..2]);
    assert_eq!(store.blob_key(&digest).expect("key"), key);
    assert_eq!(keys_under(&fs, "lay/out/blobs/").await, vec![key]);
    assert_eq!(
        store.list_blobs().await.expect("list_blobs"),
        vec![(digest.clone(), 5000)]
    );
    store.delete(&digest).await.expect("delete");
}

/// Every page of `list` from the start, `limit` blobs at a time.
async fn list_all(store: &dyn BlobStore, limit: usize) -> Vec<(Digest, u64)> {
    let mut all = Vec::new();
    let mut after: Option<Digest> = None;
    loop {
        let page = store.list(after.as_ref(), limit).await.expect("list");
        assert!(
            page.blobs.len() <= limit,
            "page of {} for limit {limit}",
            page.blobs.len()
        );
        all.extend(page.blobs);
        match page.next {
            Some(next) => after = Some(next),
            None => return all,
        }
    }
}

/// `list` reads only its own prefix's blob keys, skips objects there that are not
/// blobs (following continuation tokens past them), and pages in digest order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_skips_foreign_keys_and_other_prefixes() {
    let fs = seaweed().await;
    let store = connect(fs.s3_config("lst")).await;
    let other = connect(fs.s3_config("lst2")).await;
    let mut ours = Vec::new();
    for i in 0..5u64 {
        let data = pseudo_random(210 + i, 100 + i as usize);
        let digest = Digest::sha256_of(&data);
        store.put(&digest, stream_once(&data)).await.expect("put");
        ours.push((digest, data.len() as u64));
    }
    ours.sort();
    let elsewhere = pseudo_random(220, 10);
    other
        .put(&Digest::sha256_of(&elsewhere), stream_once(&elsewhere))
        .await
        .expect("put under another prefix");
    // Not blobs: keys that sort before, between and after the real ones.
    let hex = ours[2].0.hex().to_owned();
    let foreign = [
        "lst/blobs/0000".to_owned(),
        "lst/blobs/sha256/00/short".to_owned(),
        format!("lst/blobs/sha256/{}/{hex}.part", &hex[..2]),
        format!("lst/blobs/sha256/zz/{hex}"),
        "lst/blobs/sha999/aa/aaaa".to_owned(),
        "lst/blobsx/sha256/00/x".to_owned(),
    ];
    for key in &foreign {
        store
            .client()
            .put_object()
            .bucket(store.bucket())
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from_static(b"junk"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }
    for limit in [1, 2, 1000] {
        assert_eq!(list_all(&store, limit).await, ours, "pages of {limit}");
    }
    let page = store.list(Some(&ours[1].0), 2).await.expect("list after");
    assert_eq!(page.blobs, ours[2..4]);
    assert_eq!(page.next.as_ref(), Some(&ours[3].0));
    let last = store.list(Some(&ours[3].0), 5).await.expect("list the rest");
    assert_eq!((last.blobs, last.next), (ours[4..].to_vec(), None), "the end is known");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multipart_commit_with_upload_part_copy() {
    let fs = seaweed().await;

    // 5 MiB parts, 6 MiB copy limit: a 22 MiB upload is 4 full parts plus a
    // 2 MiB tail, assembled from 5 UploadPartCopy calls.
    let mut cfg = small_parts(fs.s3_config("mpc"));
    cfg.copy_part_limit = 6 * MIB as u64;
    let store = connect(cfg).await;
    let data = pseudo_random(300, 22 * MIB + 3);
    let id = new_id();
    store.upload_create(&id).await.expect("create");
    let len = append(&store, &id, 0, &data, 256 * KIB).await;
    assert_eq!(len, data.len() as u64);
    let prefix = store.upload_prefix(&id).expect("prefix");
    let mut parts = fs.list_keys(&prefix).await.expect("list");
    parts.sort();
    let expected: Vec<(String, i64)> = (1..=4)
        .map(|n| (store.upload_part_key(&id, n).expect("key"), 5 * MIB as i64))
        .collect();
    assert_eq!(parts, expected, "full parts are stored as they fill up");
    let digest = Digest::sha256_of(&data);
    assert_eq!(
        store.upload_commit(&id, &digest).await.expect("commit"),
        data.len() as u64
    );
    assert!(get_all(&store, &digest, None).await == data, "content");
    assert!(
        keys_under(&fs, &prefix).await.is_empty(),
        "part objects must be deleted after commit"
    );
    assert!(!fs.dir().join("spool/mpc/uploads").join(&id).exists());

    // A single part within the copy limit: CopyObject. Exactly one 5 MiB part.
    upload_commit_verify(&store, &pseudo_random(301, 5 * MIB), "single part").await;
    // A single part plus a tail.
    upload_commit_verify(&store, &pseudo_random(302, 5 * MIB + 1), "part + 1 byte").await;
    // Only a spool (no part object): PutObject.
    upload_commit_verify(&store, &pseudo_random(303, 3 * MIB), "spool only").await;

    // 12 MiB parts, 10 MiB copy limit: parts are split into copy ranges.
    let mut cfg = fs.s3_config("split");
    cfg.part_size = 12 * MIB as u64;
    cfg.copy_part_limit = 10 * MIB as u64;
    let store = connect(cfg).await;
    // One part above the limit: 6 + 6 MiB ranges.
    upload_commit_verify(&store, &pseudo_random(310, 12 * MIB), "one split part").await;
    // 12 + 12 + 6: ranges 6,6,6,6,6.
    upload_commit_verify(&store, &pseudo_random(311, 30 * MIB), "split parts").await;
    // 12 + 11 (last part above the limit): ranges 6,6,10,1.
    upload_commit_verify(&store, &pseudo_random(312, 23 * MIB), "split last part").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_limit_that_cannot_split_parts_is_rejected() {
    let fs = seaweed().await;
    let mut cfg = fs.s3_config("bad");
    cfg.part_size = 8 * MIB as u64;
    cfg.copy_part_limit = 6 * MIB as u64;
    match S3BlobStore::connect(cfg).await {
        Err(BlobError::Backend(msg)) => assert!(msg.contains("copy_part_limit"), "{msg}"),
        other => panic!("expected a settings error, got {other:?}"),
    }
    let mut cfg = fs.s3_config("bad");
    cfg.part_size = 4 * MIB as u64;
    match S3BlobStore::connect(cfg).await {
        Err(BlobError::Backend(msg)) => assert!(msg.contains("part_size"), "{msg}"),
        other => panic!("expected a settings error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_resumes_in_a_new_store_instance() {
    let fs = seaweed().await;
    let cfg = small_parts(fs.s3_config("resume"));
    let first = pseudo_random(400, 12 * MIB + 1);
    let id = new_id();
    {
        let store = connect(cfg.clone()).await;
        store.upload_create(&id).await.expect("create");
        let n = append(&store, &id, 0, &first[..7 * MIB], MIB).await;
        append(&store, &id, n, &first[7 * MIB..], 3 * MIB).await;
    }
    // "Restart": a new instance with the same settings and spool dir. Two parts
    // are in S3, the last 2 MiB + 1 only in the local spool.
    let store = connect(cfg.clone()).await;
    assert!(store.upload_list().await.expect("list").contains(&id));
    assert_eq!(store.upload_len(&id).await.expect("len"), first.len() as u64);
    assert!(read_upload(&store, &id).await == first, "re-read after restart");
    let more = pseudo_random(401, 4 * MIB);
    let n = append(&store, &id, first.len() as u64, &more, 512 * KIB).await;
    let mut all = first.clone();
    all.extend_from_slice(&more);
    assert_eq!(n, all.len() as u64);
    let digest = Digest::sha256_of(&all);
    assert_eq!(
        store.upload_commit(&id, &digest).await.expect("commit"),
        all.len() as u64
    );
    assert!(get_all(&store, &digest, None).await == all, "content");
    store.delete(&digest).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_resumes_on_another_node_from_s3_alone() {
    let fs = seaweed().await;
    let a_cfg = small_parts(fs.s3_config("node-a"));
    let a = connect(a_cfg.clone()).await;

    // Only full parts in S3 (the other node's spool is empty): 10 MiB.
    let full = pseudo_random(410, 10 * MIB);
    let id = new_id();
    a.upload_create(&id).await.expect("create");
    append(&a, &id, 0, &full, MIB).await;
    let mut b_cfg = a_cfg.clone();
    b_cfg.spool_dir = fs.dir().join("spool/node-b");
    let b = connect(b_cfg.clone()).await;
    assert_eq!(b.upload_len(&id).await.expect("len"), full.len() as u64);
    assert!(read_upload(&b, &id).await == full);
    let tail = pseudo_random(411, 100);
    append(&b, &id, full.len() as u64, &tail, 64).await;
    let mut all = full.clone();
    all.extend_from_slice(&tail);
    let digest = Digest::sha256_of(&all);
    b.upload_commit(&id, &digest).await.expect("commit");
    assert!(get_all(&b, &digest, None).await == all);

    // A short last part in S3 (a commit flushed node A's spool and A died):
    // node C pulls it back into its spool, so later parts stay >= 5 MiB.
    let first = pseudo_random(412, 12 * MIB);
    let id = new_id();
    a.upload_create(&id).await.expect("create");
    append(&a, &id, 0, &first, MIB).await;
    fs.client()
        .put_object()
        .bucket(fs.bucket())
        .key(a.upload_part_key(&id, 3).expect("key"))
        .body(first[10 * MIB..].to_vec().into())
        .send()
        .await
        .expect("put short part 3");
    let mut c_cfg = a_cfg.clone();
    c_cfg.spool_dir = fs.dir().join("spool/node-c");
    let c = connect(c_cfg).await;
    assert_eq!(c.upload_len(&id).await.expect("len"), first.len() as u64);
    assert!(read_upload(&c, &id).await == first);
    let more = pseudo_random(413, 6 * MIB);
    append(&c, &id, first.len() as u64, &more, MIB).await;
    let mut all = first.clone();
    all.extend_from_slice(&more);
    let prefix = c.upload_prefix(&id).expect("prefix");
    let sizes: Vec<i64> = {
        let mut l = fs.list_keys(&prefix).await.expect("list");
        l.sort();
        l.into_iter().map(|(_, s)| s).collect()
    };
    assert_eq!(
        sizes,
        vec![5 * MIB as i64; 3],
        "part 3 is rewritten at full size once the spool fills"
    );
    let digest = Digest::sha256_of(&all);
    c.upload_commit(&id, &digest).await.expect("commit");
    assert!(get_all(&c, &digest, None).await == all);
}

/// Yields `data` in chunks, then an error (a client that went away).
fn failing(data: &[u8], chunk: usize) -> ByteStream {
    conformance::failing_stream(data, chunk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_append_rolls_back_across_part_boundaries() {
    let fs = seaweed().await;
    let cfg = small_parts(fs.s3_config("rollback"));
    let store = connect(cfg.clone()).await;
    let id = new_id();
    store.upload_create(&id).await.expect("create");
    let first = pseudo_random(500, 3 * MIB);
    append(&store, &id, 0, &first, MIB).await;

    // This append stores parts 1 and 2 (10 MiB) before the client fails.
    let junk = pseudo_random(501, 11 * MIB);
    let res = store
        .upload_append(&id, 3 * MIB as u64, failing(&junk, 256 * KIB), &mut ignore)
        .await;
    assert!(matches!(res, Err(BlobError::Client(_))), "got {res:?}");
    assert_eq!(store.upload_len(&id).await.expect("len"), 3 * MIB as u64);
    assert!(read_upload(&store, &id).await == first, "content restored");

    // A restart sees the restored state too (the parts written by the failed
    // append are ignored and later overwritten).
    drop(store);
    let store = connect(cfg).await;
    assert_eq!(store.upload_len(&id).await.expect("len"), 3 * MIB as u64);
    assert!(read_upload(&store, &id).await == first, "content after restart");

    // A cancelled append (request dropped mid-way) is rolled back as well.
    let store = Arc::new(store);
    let task = {
        let store = Arc::clone(&store);
        let id = id.clone();
        let head = stream_chunks(&pseudo_random(502, 7 * MIB), &[256 * KIB]);
        let stalled: ByteStream = Box::pin(head.chain(futures::stream::pending()));
        tokio::spawn(async move { store.upload_append(&id, 3 * MIB as u64, stalled, &mut ignore).await })
    };
    // Wait (bounded) until the append has stored part 1 and started spool 2,
    // then cancel it.
    let prefix = store.upload_prefix(&id).expect("prefix");
    let spool2 = fs.dir().join("spool/rollback/uploads").join(&id).join("spool-00002");
    assert!(!spool2.exists(), "the failed append removed its spool files");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !spool2.exists() {
        assert!(Instant::now() < deadline, "spool 2 never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    assert!(task.await.is_err_and(|e| e.is_cancelled()));
    // The rollback holds the upload lock, so the next append waits for it.
    let rest = pseudo_random(503, 8 * MIB);
    let n = append(&*store, &id, 3 * MIB as u64, &rest, 700 * KIB).await;
    let mut all = first.clone();
    all.extend_from_slice(&rest);
    assert_eq!(n, all.len() as u64);
    assert!(read_upload(&*store, &id).await == all);
    let digest = Digest::sha256_of(&all);
    store.upload_commit(&id, &digest).await.expect("commit");
    assert!(get_all(&*store, &digest, None).await == all, "committed content");
    assert!(keys_under(&fs, &prefix).await.is_empty(), "parts deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_leaves_nothing() {
    let fs = seaweed().await;
    let store = connect(small_parts(fs.s3_config("abort"))).await;
    let id = new_id();
    store.upload_create(&id).await.expect("create");
    append(&store, &id, 0, &pseudo_random(600, 11 * MIB), MIB).await;
    let prefix = store.upload_prefix(&id).expect("prefix");
    assert_eq!(keys_under(&fs, &prefix).await.len(), 2, "two parts stored");
    let spool = fs.dir().join("spool/abort/uploads").join(&id);
    assert!(spool.is_dir());

    store.upload_abort(&id).await.expect("abort");
    assert!(keys_under(&fs, &prefix).await.is_empty(), "no part objects left");
    assert!(!spool.exists(), "local spool removed");
    assert!(matches!(store.upload_len(&id).await, Err(BlobError::UploadNotFound(_))));
    assert!(!store.upload_list().await.expect("list").contains(&id));
    store.upload_abort(&id).await.expect("second abort");
    // A new instance does not resurrect it either.
    let again = connect(small_parts(fs.s3_config("abort"))).await;
    assert!(matches!(again.upload_len(&id).await, Err(BlobError::UploadNotFound(_))));
}

/// Runs `fut`, failing the test if it does not finish within [`OUTAGE_BOUND`].
async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(OUTAGE_BOUND, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} hung for {OUTAGE_BOUND:?} while S3 was down"),
    }
}

fn assert_unavailable<T: std::fmt::Debug>(what: &str, res: Result<T, BlobError>) {
    assert!(
        matches!(res, Err(BlobError::Unavailable(_))),
        "{what}: expected Unavailable, got {res:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outage_is_unavailable_and_the_same_store_recovers() {
    let mut fs = seaweed().await;
    let mut cfg = small_parts(fs.s3_config("outage"));
    cfg.request_timeout = Duration::from_secs(2);
    cfg.max_attempts = 2;
    let store = connect(cfg).await;
    let kept = pseudo_random(700, 100 * KIB);
    let kept_digest = Digest::sha256_of(&kept);
    store.put(&kept_digest, stream_once(&kept)).await.expect("put");
    let id = new_id();
    store.upload_create(&id).await.expect("create");
    let first = pseudo_random(701, 4 * MIB);
    append(&store, &id, 0, &first, MIB).await;

    fs.stop().await.expect("stop SeaweedFS");
    let started = Instant::now();
    assert_unavailable("stat", bounded("stat", store.stat(&kept_digest)).await);
    assert_unavailable("get", bounded("get", store.get(&kept_digest, None)).await.map(|_| ()));
    let other = pseudo_random(702, 64 * KIB);
    assert_unavailable(
        "put",
        bounded("put", store.put(&Digest::sha256_of(&other), stream_once(&other))).await,
    );
    assert_unavailable("delete", bounded("delete", store.delete(&kept_digest)).await);
    assert_unavailable("check_writable", bounded("check", store.check_writable()).await);
    assert_unavailable("upload_list", bounded("list", store.upload_list()).await);
    // An append that stays within the local spool still works ...
    let small = pseudo_random(703, 100 * KIB);
    let n = bounded("small append", async {
        append(&store, &id, first.len() as u64, &small, 64 * KIB).await
    })
    .await;
    // ... one that must store a part fails and is rolled back.
    let big = pseudo_random(704, 3 * MIB);
    let res = bounded(
        "big append",
        store.upload_append(&id, n, stream_chunks(&big, &[MIB]), &mut ignore),
    )
    .await;
    assert_unavailable("append across a part", res);
    assert_eq!(store.upload_len(&id).await.expect("len is local"), n);
    let mut all = first.clone();
    all.extend_from_slice(&small);
    let digest = Digest::sha256_of(&all);
    assert_unavailable("commit", bounded("commit", store.upload_commit(&id, &digest)).await);
    // Presigning is local.
    assert!(
        store
            .presigned_get(&kept_digest, Duration::from_secs(60))
            .await
            .expect("presign")
            .is_some()
    );
    tracing::info!(elapsed = ?started.elapsed(), "outage checks done");

    fs.start_again().await.expect("restart SeaweedFS");
    // The same store instance works again.
    assert_eq!(store.stat(&kept_digest).await.expect("stat"), Some(kept.len() as u64));
    assert!(get_all(&store, &kept_digest, None).await == kept);
    store.check_writable().await.expect("writable again");
    let n2 = append(&store, &id, n, &big, MIB).await;
    all.extend_from_slice(&big);
    assert_eq!(n2, all.len() as u64);
    let digest = Digest::sha256_of(&all);
    assert_eq!(
        store.upload_commit(&id, &digest).await.expect("commit"),
        all.len() as u64
    );
    assert!(get_all(&store, &digest, None).await == all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hung_s3_is_unavailable_not_a_hang() {
    let fs = seaweed().await;
    let mut cfg = small_parts(fs.s3_config("hung"));
    cfg.request_timeout = Duration::from_secs(1);
    cfg.max_attempts = 2;
    let store = connect(cfg).await;
    let data = pseudo_random(860, 8 * MIB);
    let digest = Digest::sha256_of(&data);
    store.put(&digest, stream_once(&data)).await.expect("put");
    let id = new_id();
    store.upload_create(&id).await.expect("create");
    append(&store, &id, 0, &data[..4 * MIB], MIB).await;

    // A download in progress when S3 stops answering ends with an error.
    let mut s = store.get(&digest, None).await.expect("get");
    let first = s.next().await.expect("chunk").expect("chunk ok");
    assert!(!first.is_empty());
    fs.freeze();
    let mut got = first.len();
    let res = bounded("reading a body from a hung S3", async {
        while let Some(c) = s.next().await {
            got += c?.len();
        }
        Ok::<usize, std::io::Error>(got)
    })
    .await;
    // The kernel may have buffered the rest of a small body already; otherwise
    // the read must fail instead of hanging.
    match res {
        Ok(n) => assert_eq!(n, data.len(), "a body that completed must be whole"),
        Err(e) => tracing::info!(error = %e, "read from hung S3 failed as expected"),
    }
    assert_unavailable("stat", bounded("stat", store.stat(&digest)).await);
    let res = bounded(
        "append",
        store.upload_append(
            &id,
            4 * MIB as u64,
            stream_chunks(&data[4 * MIB..], &[MIB]),
            &mut ignore,
        ),
    )
    .await;
    assert_unavailable("append across a part", res);
    assert_unavailable("check_writable", bounded("check", store.check_writable()).await);
    fs.thaw();

    assert_eq!(store.stat(&digest).await.expect("stat"), Some(data.len() as u64));
    append(&store, &id, 4 * MIB as u64, &data[4 * MIB..], MIB).await;
    let other = Digest::sha256_of(&data);
    assert_eq!(
        store.upload_commit(&id, &other).await.expect("commit"),
        data.len() as u64
    );
    assert!(get_all(&store, &digest, None).await == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_not_cut_off() {
    // A consumer that pauses longer than the request timeout (a slow pulling
    // client) must not trip the idle/stall protection, which is about S3.
    let fs = seaweed().await;
    let mut cfg = fs.s3_config("slow");
    cfg.request_timeout = Duration::from_secs(1);
    let store = connect(cfg).await;
    let data = pseudo_random(850, 6 * MIB + 11);
    let digest = Digest::sha256_of(&data);
    store.put(&digest, stream_once(&data)).await.expect("put");
    let mut s = store.get(&digest, None).await.expect("get");
    let mut got = Vec::new();
    let first = s.next().await.expect("first chunk").expect("first chunk ok");
    got.extend_from_slice(&first);
    tokio::time::sleep(Duration::from_secs(3)).await;
    while let Some(c) = s.next().await {
        got.extend_from_slice(&c.expect("chunk after a pause"));
        if got.len() < 3 * MIB {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert!(got == data, "content after pauses");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_get_is_fetchable_with_ranges() {
    let fs = seaweed().await;
    let store = connect(fs.s3_config("presign")).await;
    let data = pseudo_random(800, 300 * KIB + 5);
    let digest = Digest::sha256_of(&data);
    store.put(&digest, stream_once(&data)).await.expect("put");
    let url = store
        .presigned_get(&digest, Duration::from_secs(600))
        .await
        .expect("presign")
        .expect("s3 hands out URLs");
    assert!(url.starts_with(&fs.endpoint()), "{url}");
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let resp = http.get(&url).send().await.expect("GET");
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    assert!(resp.bytes().await.expect("body") == data);
    let resp = http
        .get(&url)
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .expect("ranged GET");
    assert_eq!(resp.status(), reqwest::StatusCode::PARTIAL_CONTENT);
    assert!(resp.bytes().await.expect("body") == data[1000..2000]);

    // A URL for a blob that is not there answers 404; a tampered one 403.
    let missing = Digest::sha256_of(b"not stored");
    let url404 = store
        .presigned_get(&missing, Duration::from_secs(60))
        .await
        .expect("presign")
        .expect("url");
    assert_eq!(
        http.get(&url404).send().await.expect("GET").status(),
        reqwest::StatusCode::NOT_FOUND
    );
    let tampered = url.replace("X-Amz-Expires=600", "X-Amz-Expires=601");
    assert_ne!(tampered, url);
    assert_eq!(
        http.get(&tampered).send().await.expect("GET").status(),
        reqwest::StatusCode::FORBIDDEN
    );
    // Longer than S3 allows: capped at 7 days.
    let long = store
        .presigned_get(&digest, Duration::from_secs(30 * 24 * 3600))
        .await
        .expect("presign")
        .expect("url");
    assert!(long.contains("X-Amz-Expires=604800"), "{long}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_name_the_setting() {
    let fs = seaweed().await;

    let mut cfg = fs.s3_config("x");
    cfg.bucket = "no-such-bucket".into();
    match S3BlobStore::connect(cfg).await {
        Err(BlobError::Backend(msg)) => {
            assert!(msg.contains("`bucket`") && msg.contains("404"), "{msg}")
        }
        other => panic!("missing bucket: {other:?}"),
    }

    let mut cfg = fs.s3_config("x");
    cfg.secret_access_key = Some("wrong".into());
    match S3BlobStore::connect(cfg).await {
        Err(BlobError::Backend(msg)) => {
            assert!(msg.contains("secret_access_key") && msg.contains("403"), "{msg}")
        }
        other => panic!("wrong secret: {other:?}"),
    }

    // Nothing listens: Unavailable, naming the endpoint.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut cfg = fs.s3_config("x");
    cfg.endpoint = Some(format!("http://127.0.0.1:{closed}"));
    cfg.max_attempts = 2;
    match S3BlobStore::connect(cfg).await {
        Err(BlobError::Unavailable(msg)) => assert!(msg.contains("`endpoint`"), "{msg}"),
        other => panic!("closed port: {other:?}"),
    }

    // Something accepts but never answers: the attempt timeout ends it.
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = blackhole.local_addr().expect("addr").port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = blackhole.accept().await {
            held.push(sock);
        }
    });
    let mut cfg = fs.s3_config("x");
    cfg.endpoint = Some(format!("http://127.0.0.1:{port}"));
    cfg.request_timeout = Duration::from_millis(500);
    cfg.max_attempts = 2;
    match bounded("connect to a silent server", S3BlobStore::connect(cfg)).await {
        Err(BlobError::Unavailable(msg)) => assert!(msg.contains("timed out"), "{msg}"),
        other => panic!("silent server: {other:?}"),
    }
    holder.abort();

    let mut cfg = fs.s3_config("x");
    cfg.access_key_id = None;
    match S3BlobStore::connect(cfg).await {
        Err(BlobError::Backend(msg)) => assert!(msg.contains("access_key_id"), "{msg}"),
        other => panic!("half credentials: {other:?}"),
    }
}

/// Throughput of a 200 MiB put/get and upload/commit (debug builds hash slowly;
/// run with `--release -- --ignored --nocapture` for numbers).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: reports numbers, asserts only correctness"]
async fn throughput_200mib() {
    let fs = seaweed().await;
    let store = connect(fs.s3_config("bench")).await;
    let size = 200 * MIB;
    let data = pseudo_random(900, size);
    let digest = Digest::sha256_of(&data);
    let mb = size as f64 / 1e6;

    let t = Instant::now();
    store
        .put(&digest, stream_chunks(&data, &[256 * KIB]))
        .await
        .expect("put");
    let put = t.elapsed();

    let t = Instant::now();
    let mut s = store.get(&digest, None).await.expect("get");
    let mut n = 0;
    while let Some(c) = s.next().await {
        n += c.expect("chunk").len();
    }
    let get = t.elapsed();
    assert_eq!(n, size);
    store.delete(&digest).await.expect("delete");

    let id = new_id();
    let t = Instant::now();
    store.upload_create(&id).await.expect("create");
    append(&store, &id, 0, &data, 256 * KIB).await;
    let appended = t.elapsed();
    let t = Instant::now();
    store.upload_commit(&id, &digest).await.expect("commit");
    let commit = t.elapsed();
    assert_eq!(store.stat(&digest).await.expect("stat"), Some(size as u64));

    eprintln!(
        "200 MiB against SeaweedFS: put {:.2}s ({:.0} MB/s), get {:.2}s ({:.0} MB/s), \
         upload_append {:.2}s ({:.0} MB/s), upload_commit {:.2}s",
        put.as_secs_f64(),
        mb / put.as_secs_f64(),
        get.as_secs_f64(),
        mb / get.as_secs_f64(),
        appended.as_secs_f64(),
        mb / appended.as_secs_f64(),
        commit.as_secs_f64(),
    );
}
