//! Conformance suite for [`BlobStore`] backends (feature `testing`).
//!
//! [`run_all`] runs every check; each check is also a public function so a
//! backend's tests can run them individually. Checks use distinct
//! deterministic data, so they do not interfere with each other when run
//! against one store (concurrently or not). Failures panic with a message
//! naming the check.

use std::io;
use std::sync::Arc;

use berth_oci::Digest;
use berth_oci::DigestAlgorithm;
use berth_oci::Hasher;
use bytes::Bytes;
use futures::StreamExt;

use crate::BlobError;
use crate::BlobPage;
use crate::BlobStore;
use crate::ByteRange;
use crate::ByteStream;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Largest chunk a `get` stream may yield (streams must be bounded).
pub const MAX_STREAM_CHUNK: usize = 4 * MIB;

// ---- helpers -------------------------------------------------------------------------

/// Deterministic pseudo-random bytes (xorshift64*), distinct per `seed`.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A stream yielding `data` split at the given chunk sizes (cycled); the
/// last chunk holds whatever remains.
pub fn stream_chunks(data: &[u8], sizes: &[usize]) -> ByteStream {
    let mut chunks = Vec::new();
    let mut rest = Bytes::copy_from_slice(data);
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        chunks.push(Ok(rest.split_to(n)));
        i += 1;
    }
    Box::pin(futures::stream::iter(chunks))
}

/// A stream yielding `data` as one chunk (nothing for empty data).
pub fn stream_once(data: &[u8]) -> ByteStream {
    stream_chunks(data, &[data.len()])
}

/// A stream yielding `data` in `chunk`-sized pieces, then an I/O error (as a
/// disconnecting client would).
pub fn failing_stream(data: &[u8], chunk: usize) -> ByteStream {
    let ok = stream_chunks(data, &[chunk]);
    let err = futures::stream::once(async {
        Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "conformance: client went away",
        ))
    });
    Box::pin(ok.chain(err))
}

/// Collect a stream, checking every chunk is at most [`MAX_STREAM_CHUNK`].
pub async fn collect(mut stream: ByteStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        assert!(
            chunk.len() <= MAX_STREAM_CHUNK,
            "stream yielded a {} byte chunk; streams must be bounded (<= {MAX_STREAM_CHUNK})",
            chunk.len()
        );
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `get` the blob (or a range) and collect it, panicking with context on error.
async fn get_bytes(store: &dyn BlobStore, digest: &Digest, range: Option<ByteRange>) -> Vec<u8> {
    let stream = match store.get(digest, range).await {
        Ok(s) => s,
        Err(e) => panic!("get({digest}, {range:?}) failed: {e:?}"),
    };
    match collect(stream).await {
        Ok(v) => v,
        Err(e) => panic!("reading get({digest}, {range:?}) stream failed: {e:?}"),
    }
}

async fn read_upload(store: &dyn BlobStore, id: &str) -> Vec<u8> {
    let stream = match store.upload_read(id).await {
        Ok(s) => s,
        Err(e) => panic!("upload_read({id}) failed: {e:?}"),
    };
    match collect(stream).await {
        Ok(v) => v,
        Err(e) => panic!("reading upload_read({id}) stream failed: {e:?}"),
    }
}

async fn put_ok(store: &dyn BlobStore, digest: &Digest, data: ByteStream, what: &str) -> u64 {
    match store.put(digest, data).await {
        Ok(n) => n,
        Err(e) => panic!("{what}: put({digest}) failed: {e:?}"),
    }
}

async fn stat_of(store: &dyn BlobStore, digest: &Digest, what: &str) -> Option<u64> {
    match store.stat(digest).await {
        Ok(v) => v,
        Err(e) => panic!("{what}: stat({digest}) failed: {e:?}"),
    }
}

async fn append_ok(
    store: &dyn BlobStore,
    id: &str,
    offset: u64,
    data: ByteStream,
    hasher: &mut Hasher,
    what: &str,
) -> u64 {
    let mut on_chunk = |c: &[u8]| hasher.update(c);
    match store.upload_append(id, offset, data, &mut on_chunk).await {
        Ok(n) => n,
        Err(e) => panic!("{what}: upload_append({id}, offset {offset}) failed: {e:?}"),
    }
}

async fn create_upload(store: &dyn BlobStore, what: &str) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    if let Err(e) = store.upload_create(&id).await {
        panic!("{what}: upload_create({id}) failed: {e:?}");
    }
    id
}

fn ignore_chunk(_: &[u8]) {}

// ---- suite ---------------------------------------------------------------------------

/// Run every conformance check against `store`.
pub async fn run_all(store: Arc<dyn BlobStore>) {
    tracing::info!(kind = store.kind(), "running blob store conformance suite");
    put_get_stat_delete_roundtrip(&store).await;
    get_missing_is_not_found(&store).await;
    ranges(&store).await;
    put_wrong_digest(&store).await;
    put_existing_still_verifies(&store).await;
    put_client_stream_error(&store).await;
    empty_blob(&store).await;
    sha512_blob(&store).await;
    upload_chunks_and_commit(&store).await;
    upload_offset_mismatch(&store).await;
    upload_client_stream_error(&store).await;
    upload_abort_idempotent(&store).await;
    upload_commit_when_blob_exists(&store).await;
    concurrent_identical_puts(&store).await;
    upload_list_lists_uploads(&store).await;
    list_pages_in_digest_order(&store).await;
    invalid_upload_ids(&store).await;
    check_writable_ok(&store).await;
}

/// put / stat / get / idempotent put / delete / idempotent delete.
pub async fn put_get_stat_delete_roundtrip(store: &Arc<dyn BlobStore>) {
    let what = "roundtrip";
    let data = pseudo_random(1, 300 * KIB + 17);
    let digest = Digest::sha256_of(&data);
    assert_eq!(
        stat_of(&**store, &digest, what).await,
        None,
        "{what}: blob must start absent"
    );

    let n = put_ok(&**store, &digest, stream_chunks(&data, &[1, 4096, 65_537, 7]), what).await;
    assert_eq!(n, data.len() as u64, "{what}: put must return the blob size");
    assert_eq!(
        stat_of(&**store, &digest, what).await,
        Some(data.len() as u64),
        "{what}: stat after put"
    );
    assert!(
        get_bytes(&**store, &digest, None).await == data,
        "{what}: get must return the stored bytes"
    );

    let again = put_ok(&**store, &digest, stream_once(&data), what).await;
    assert_eq!(
        again,
        data.len() as u64,
        "{what}: second put must be idempotent and return the size"
    );
    assert!(
        get_bytes(&**store, &digest, None).await == data,
        "{what}: content after idempotent put"
    );

    store
        .delete(&digest)
        .await
        .unwrap_or_else(|e| panic!("{what}: delete failed: {e:?}"));
    assert_eq!(
        stat_of(&**store, &digest, what).await,
        None,
        "{what}: stat after delete"
    );
    store
        .delete(&digest)
        .await
        .unwrap_or_else(|e| panic!("{what}: second delete must be idempotent: {e:?}"));
    let res = store.get(&digest, None).await;
    assert!(
        matches!(res, Err(BlobError::NotFound(_))),
        "{what}: get after delete must be NotFound, got {:?}",
        res.err()
    );
}

/// get / stat of a blob that was never stored.
pub async fn get_missing_is_not_found(store: &Arc<dyn BlobStore>) {
    let what = "get missing";
    let digest = Digest::sha256_of(b"berth conformance: never stored");
    assert_eq!(stat_of(&**store, &digest, what).await, None, "{what}: stat");
    let res = store.get(&digest, None).await;
    assert!(
        matches!(res, Err(BlobError::NotFound(_))),
        "{what}: expected NotFound, got {:?}",
        res.err()
    );
    let res = store.get(&digest, Some(ByteRange::new(0, 1))).await;
    assert!(
        matches!(res, Err(BlobError::NotFound(_))),
        "{what}: ranged get of a missing blob must be NotFound, got {:?}",
        res.err()
    );
}

/// Satisfiable and unsatisfiable byte ranges (end exclusive).
pub async fn ranges(store: &Arc<dyn BlobStore>) {
    let what = "ranges";
    let data = pseudo_random(3, 200 * KIB + 3);
    let size = data.len() as u64;
    let digest = Digest::sha256_of(&data);
    put_ok(&**store, &digest, stream_chunks(&data, &[10 * KIB]), what).await;

    let cases: [(u64, u64, &str); 5] = [
        (0, 1, "first byte"),
        (size - 1, size, "last byte"),
        (1000, 150_000, "middle"),
        (0, size, "whole blob"),
        (131_071, 131_073, "across a 128 KiB boundary"),
    ];
    for (start, end, name) in cases {
        let got = get_bytes(&**store, &digest, Some(ByteRange::new(start, end))).await;
        assert!(
            got == data[start as usize..end as usize],
            "{what}: range {name} ({start}..{end}) returned wrong bytes (len {})",
            got.len()
        );
    }

    let bad: [(u64, u64, &str); 4] = [
        (size, size + 1, "start == size"),
        (size + 10, size + 20, "start > size"),
        (0, size + 1, "end > size"),
        (size - 1, size + 1, "end past the last byte"),
    ];
    for (start, end, name) in bad {
        let res = store.get(&digest, Some(ByteRange::new(start, end))).await;
        match res {
            Err(BlobError::RangeNotSatisfiable {
                start: s,
                end: e,
                size: z,
            }) => {
                assert_eq!((s, e, z), (start, end, size), "{what}: {name}: error fields");
            }
            other => panic!(
                "{what}: {name} ({start}..{end}) must be RangeNotSatisfiable, got {:?}",
                other.err()
            ),
        }
    }
    store
        .delete(&digest)
        .await
        .unwrap_or_else(|e| panic!("{what}: cleanup delete: {e:?}"));
}

/// A put whose bytes do not match the digest leaves nothing behind.
pub async fn put_wrong_digest(store: &Arc<dyn BlobStore>) {
    let what = "put wrong digest";
    let data = pseudo_random(4, 100 * KIB);
    let claimed = Digest::sha256_of(&pseudo_random(5, 100 * KIB));
    let res = store.put(&claimed, stream_chunks(&data, &[8 * KIB])).await;
    match res {
        Err(BlobError::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, claimed.to_string(), "{what}: expected field");
            assert_eq!(actual, Digest::sha256_of(&data).to_string(), "{what}: actual field");
        }
        other => panic!("{what}: expected DigestMismatch, got {other:?}"),
    }
    assert_eq!(
        stat_of(&**store, &claimed, what).await,
        None,
        "{what}: claimed digest must not exist"
    );
    assert_eq!(
        stat_of(&**store, &Digest::sha256_of(&data), what).await,
        None,
        "{what}: actual digest must not exist either"
    );
}

/// A put of a digest that is already stored still checks the body: knowing a
/// digest must not be enough to claim its blob.
pub async fn put_existing_still_verifies(store: &Arc<dyn BlobStore>) {
    let what = "put existing with wrong body";
    let data = pseudo_random(41, 64 * KIB);
    let digest = Digest::sha256_of(&data);
    store
        .put(&digest, stream_chunks(&data, &[16 * KIB]))
        .await
        .unwrap_or_else(|e| panic!("{what}: first put: {e}"));
    let other = pseudo_random(42, 64 * KIB);
    match store.put(&digest, stream_chunks(&other, &[16 * KIB])).await {
        Err(BlobError::DigestMismatch { .. }) => {}
        res => panic!("{what}: expected DigestMismatch, got {res:?}"),
    }
    let same = store.put(&digest, stream_chunks(&data, &[7 * KIB])).await;
    assert_eq!(same.ok(), Some(data.len() as u64), "{what}: a correct re-put succeeds");
    let stored = collect(
        store
            .get(&digest, None)
            .await
            .unwrap_or_else(|e| panic!("{what}: get: {e}")),
    )
    .await
    .unwrap_or_else(|e| panic!("{what}: read: {e}"));
    assert!(stored == data, "{what}: stored bytes unchanged");
    store
        .delete(&digest)
        .await
        .unwrap_or_else(|e| panic!("{what}: delete: {e}"));
}

/// A put whose input stream fails yields `Client` and stores nothing.
pub async fn put_client_stream_error(store: &Arc<dyn BlobStore>) {
    let what = "put client error";
    let data = pseudo_random(6, 3 * MIB);
    let digest = Digest::sha256_of(&data);
    let res = store.put(&digest, failing_stream(&data[..2 * MIB], 64 * KIB)).await;
    assert!(
        matches!(res, Err(BlobError::Client(_))),
        "{what}: expected Client error, got {res:?}"
    );
    assert_eq!(
        stat_of(&**store, &digest, what).await,
        None,
        "{what}: nothing may be visible"
    );
    // The same digest can still be stored afterwards.
    let n = put_ok(&**store, &digest, stream_chunks(&data, &[MIB]), what).await;
    assert_eq!(n, data.len() as u64, "{what}: retry size");
    store
        .delete(&digest)
        .await
        .unwrap_or_else(|e| panic!("{what}: cleanup delete: {e:?}"));
}

/// The empty blob, via put and via an empty upload.
pub async fn empty_blob(store: &Arc<dyn BlobStore>) {
    let what = "empty blob";
    let digest = Digest::sha256_of(b"");
    let n = put_ok(&**store, &digest, stream_once(b""), what).await;
    assert_eq!(n, 0, "{what}: size");
    assert_eq!(stat_of(&**store, &digest, what).await, Some(0), "{what}: stat");
    assert!(
        get_bytes(&**store, &digest, None).await.is_empty(),
        "{what}: get must be empty"
    );
    let res = store.get(&digest, Some(ByteRange::new(0, 1))).await;
    assert!(
        matches!(res, Err(BlobError::RangeNotSatisfiable { .. })),
        "{what}: any range of an empty blob is unsatisfiable, got {:?}",
        res.err()
    );
    store
        .delete(&digest)
        .await
        .unwrap_or_else(|e| panic!("{what}: delete: {e:?}"));
    assert_eq!(
        stat_of(&**store, &digest, what).await,
        None,
        "{what}: stat after delete"
    );

    // Empty upload: create, append nothing, commit.
    let id = create_upload(&**store, what).await;
    let mut hasher = Hasher::new(DigestAlgorithm::Sha256);
    let len = append_ok(&**store, &id, 0, stream_once(b""), &mut hasher, what).await;
    assert_eq!(len, 0, "{what}: empty append length");
    assert_eq!(hasher.finalize(), digest, "{what}: hash of nothing");
    let n = store
        .upload_commit(&id, &digest)
        .await
        .unwrap_or_else(|e| panic!("{what}: commit of empty upload: {e:?}"));
    assert_eq!(n, 0, "{what}: committed size");
    assert_eq!(
        stat_of(&**store, &digest, what).await,
        Some(0),
        "{what}: stat after commit"
    );
    store
        .delete(&digest)
        .await
        .unwrap_or_else(|e| panic!("{what}: delete: {e:?}"));
}

/// sha512 blobs work like sha256 ones (put, ranges, upload commit).
pub async fn sha512_blob(store: &Arc<dyn BlobStore>) {
    let what = "sha512 blob";
    let data = pseudo_random(7, 150 * KIB + 5);
    let digest = Digest::of(DigestAlgorithm::Sha512, &data);
    let n = put_ok(&**store, &digest, stream_chunks(&data, &[33 * KIB]), what).await;
    assert_eq!(n, data.len() as u64, "{what}: size");
    assert_eq!(
        stat_of(&**store, &digest, what).await,
        Some(data.len() as u64),
        "{what}: stat"
    );
    assert!(get_bytes(&**store, &digest, None).await == data, "{what}: content");
    let part = get_bytes(&**store, &digest, Some(ByteRange::new(10, 20))).await;
    assert!(part == data[10..20], "{what}: range content");

    // A sha512 digest whose sha256 twin has the same hex prefix must not collide.
    let sha256 = Digest::sha256_of(&data);
    assert_eq!(
        stat_of(&**store, &sha256, what).await,
        None,
        "{what}: sha256 of same data must be absent"
    );

    let wrong = store
        .put(&Digest::of(DigestAlgorithm::Sha512, b"other"), stream_once(&data))
        .await;
    assert!(
        matches!(wrong, Err(BlobError::DigestMismatch { .. })),
        "{what}: wrong sha512 digest must be DigestMismatch, got {wrong:?}"
    );

    store
        .delete(&digest)
        .await
        .unwrap_or_else(|e| panic!("{what}: delete: {e:?}"));

    let id = create_upload(&**store, what).await;
    let mut hasher = Hasher::new(DigestAlgorithm::Sha512);
    append_ok(&**store, &id, 0, stream_chunks(&data, &[50 * KIB]), &mut hasher, what).await;
    assert_eq!(hasher.finalize(), digest, "{what}: on_chunk hash");
    let n = store
        .upload_commit(&id, &digest)
        .await
        .unwrap_or_else(|e| panic!("{what}: commit: {e:?}"));
    assert_eq!(n, data.len() as u64, "{what}: committed size");
    assert!(
        get_bytes(&**store, &digest, None).await == data,
        "{what}: content after commit"
    );
    store
        .delete(&digest)
        .await
        .unwrap_or_else(|e| panic!("{what}: delete: {e:?}"));
}

/// Several appends (1-byte chunks, an 8 MiB chunk, exactly 5 MiB), len, read,
/// on_chunk order, commit.
pub async fn upload_chunks_and_commit(store: &Arc<dyn BlobStore>) {
    let what = "upload chunks";
    let tiny = pseudo_random(8, 100);
    let big = pseudo_random(9, 8 * MIB);
    let five = pseudo_random(10, 5 * MIB);
    let tail = pseudo_random(11, 3);
    let mut all = Vec::new();

    let id = create_upload(&**store, what).await;
    assert_eq!(
        store
            .upload_len(&id)
            .await
            .unwrap_or_else(|e| panic!("{what}: len: {e:?}")),
        0,
        "{what}: new upload is empty"
    );
    let mut hasher = Hasher::new(DigestAlgorithm::Sha256);

    // 1. many 1-byte chunks in one append, recording what on_chunk sees.
    let mut seen = Vec::new();
    let mut on_chunk = |c: &[u8]| {
        seen.extend_from_slice(c);
        hasher.update(c);
    };
    let len = store
        .upload_append(&id, 0, stream_chunks(&tiny, &[1]), &mut on_chunk)
        .await
        .unwrap_or_else(|e| panic!("{what}: append 1-byte chunks: {e:?}"));
    assert!(seen == tiny, "{what}: on_chunk must see every chunk in order");
    all.extend_from_slice(&tiny);
    assert_eq!(len, all.len() as u64, "{what}: length after 1-byte chunks");

    // 2. single 1-byte appends.
    for (i, b) in tail.iter().enumerate() {
        let off = all.len() as u64;
        let len = append_ok(&**store, &id, off, stream_once(&[*b]), &mut hasher, what).await;
        all.push(*b);
        assert_eq!(len, all.len() as u64, "{what}: length after 1-byte append #{i}");
    }

    // 3. one 8 MiB chunk.
    let off = all.len() as u64;
    let len = append_ok(&**store, &id, off, stream_once(&big), &mut hasher, what).await;
    all.extend_from_slice(&big);
    assert_eq!(len, all.len() as u64, "{what}: length after 8 MiB chunk");

    // 4. exactly 5 MiB, in odd-sized chunks.
    let off = all.len() as u64;
    let len = append_ok(
        &**store,
        &id,
        off,
        stream_chunks(&five, &[64 * KIB + 1, 1000]),
        &mut hasher,
        what,
    )
    .await;
    all.extend_from_slice(&five);
    assert_eq!(len, all.len() as u64, "{what}: length after 5 MiB append");

    assert_eq!(
        store
            .upload_len(&id)
            .await
            .unwrap_or_else(|e| panic!("{what}: len: {e:?}")),
        all.len() as u64,
        "{what}: upload_len"
    );
    assert!(
        read_upload(&**store, &id).await == all,
        "{what}: upload_read must return all bytes in order"
    );

    let digest = hasher.finalize();
    assert_eq!(digest, Digest::sha256_of(&all), "{what}: hash of on_chunk bytes");
    assert_eq!(
        stat_of(&**store, &digest, what).await,
        None,
        "{what}: blob absent before commit"
    );
    let n = store
        .upload_commit(&id, &digest)
        .await
        .unwrap_or_else(|e| panic!("{what}: commit: {e:?}"));
    assert_eq!(n, all.len() as u64, "{what}: commit size");
    assert_eq!(
        stat_of(&**store, &digest, what).await,
        Some(all.len() as u64),
        "{what}: stat after commit"
    );
    assert!(
        get_bytes(&**store, &digest, None).await == all,
        "{what}: blob content after commit"
    );

    let res = store.upload_len(&id).await;
    assert!(
        matches!(res, Err(BlobError::UploadNotFound(_))),
        "{what}: upload must be gone after commit, upload_len gave {res:?}"
    );
    let res = store.upload_read(&id).await;
    assert!(
        matches!(res, Err(BlobError::UploadNotFound(_))),
        "{what}: upload_read after commit must be UploadNotFound, got {:?}",
        res.err()
    );
    let listed = store
        .upload_list()
        .await
        .unwrap_or_else(|e| panic!("{what}: list: {e:?}"));
    assert!(!listed.contains(&id), "{what}: committed upload must not be listed");
    store
        .delete(&digest)
        .await
        .unwrap_or_else(|e| panic!("{what}: delete: {e:?}"));
}

/// Appending at the wrong offset fails and changes nothing.
pub async fn upload_offset_mismatch(store: &Arc<dyn BlobStore>) {
    let what = "offset mismatch";
    let data = pseudo_random(12, 10 * KIB);
    let id = create_upload(&**store, what).await;
    let mut hasher = Hasher::new(DigestAlgorithm::Sha256);
    append_ok(&**store, &id, 0, stream_once(&data), &mut hasher, what).await;
    let len = data.len() as u64;

    for got in [len + 1, len - 1, 0, u64::MAX] {
        let mut called = false;
        let mut on_chunk = |_: &[u8]| called = true;
        let res = store.upload_append(&id, got, stream_once(b"xyz"), &mut on_chunk).await;
        match res {
            Err(BlobError::OffsetMismatch { expected, got: g }) => {
                assert_eq!((expected, g), (len, got), "{what}: error fields");
            }
            other => {
                panic!("{what}: append at {got} (len {len}) must be OffsetMismatch, got {other:?}")
            }
        }
        assert!(!called, "{what}: on_chunk must not be called on OffsetMismatch");
        assert_eq!(
            store
                .upload_len(&id)
                .await
                .unwrap_or_else(|e| panic!("{what}: len: {e:?}")),
            len,
            "{what}: length must be unchanged after a rejected append"
        );
    }
    assert!(read_upload(&**store, &id).await == data, "{what}: content unchanged");

    let res = store
        .upload_append("0a1b2c3d-no-such-upload", 0, stream_once(b"x"), &mut ignore_chunk)
        .await;
    assert!(
        matches!(res, Err(BlobError::UploadNotFound(_))),
        "{what}: append to a missing upload must be UploadNotFound, got {res:?}"
    );
    store
        .upload_abort(&id)
        .await
        .unwrap_or_else(|e| panic!("{what}: abort: {e:?}"));
}

/// An append whose input stream fails midway is rolled back entirely.
pub async fn upload_client_stream_error(store: &Arc<dyn BlobStore>) {
    let what = "append client error";
    let first = pseudo_random(13, 100 * KIB + 1);
    let second = pseudo_random(14, 3 * MIB + 7);
    let id = create_upload(&**store, what).await;
    let mut hasher = Hasher::new(DigestAlgorithm::Sha256);
    let len = append_ok(&**store, &id, 0, stream_once(&first), &mut hasher, what).await;

    // Large enough that some bytes are surely written before the failure.
    let mut scratch = hasher.clone();
    let mut on_chunk = |c: &[u8]| scratch.update(c);
    let res = store
        .upload_append(
            &id,
            len,
            failing_stream(&second[..2 * MIB + 5], 128 * KIB),
            &mut on_chunk,
        )
        .await;
    assert!(
        matches!(res, Err(BlobError::Client(_))),
        "{what}: expected Client error, got {res:?}"
    );
    assert_eq!(
        store
            .upload_len(&id)
            .await
            .unwrap_or_else(|e| panic!("{what}: len: {e:?}")),
        len,
        "{what}: length must be restored to the previous offset"
    );
    assert!(
        read_upload(&**store, &id).await == first,
        "{what}: content must be restored"
    );

    // The upload stays usable: append at the old offset and commit.
    let new_len = append_ok(&**store, &id, len, stream_chunks(&second, &[MIB]), &mut hasher, what).await;
    assert_eq!(
        new_len,
        (first.len() + second.len()) as u64,
        "{what}: length after retry"
    );
    let mut all = first.clone();
    all.extend_from_slice(&second);
    let digest = hasher.finalize();
    assert_eq!(digest, Digest::sha256_of(&all), "{what}: hash after retry");
    store
        .upload_commit(&id, &digest)
        .await
        .unwrap_or_else(|e| panic!("{what}: commit: {e:?}"));
    assert!(
        get_bytes(&**store, &digest, None).await == all,
        "{what}: committed content"
    );
    store
        .delete(&digest)
        .await
        .unwrap_or_else(|e| panic!("{what}: delete: {e:?}"));
}

/// Abort is idempotent and removes the upload.
pub async fn upload_abort_idempotent(store: &Arc<dyn BlobStore>) {
    let what = "upload abort";
    let data = pseudo_random(15, 20 * KIB);
    let id = create_upload(&**store, what).await;
    let mut hasher = Hasher::new(DigestAlgorithm::Sha256);
    append_ok(&**store, &id, 0, stream_once(&data), &mut hasher, what).await;

    store
        .upload_abort(&id)
        .await
        .unwrap_or_else(|e| panic!("{what}: abort: {e:?}"));
    store
        .upload_abort(&id)
        .await
        .unwrap_or_else(|e| panic!("{what}: second abort must succeed: {e:?}"));
    let res = store.upload_len(&id).await;
    assert!(
        matches!(res, Err(BlobError::UploadNotFound(_))),
        "{what}: upload_len after abort must be UploadNotFound, got {res:?}"
    );
    let res = store.upload_read(&id).await;
    assert!(
        matches!(res, Err(BlobError::UploadNotFound(_))),
        "{what}: upload_read after abort must be UploadNotFound, got {:?}",
        res.err()
    );
    let res = store.upload_append(&id, 0, stream_once(b"x"), &mut ignore_chunk).await;
    assert!(
        matches!(res, Err(BlobError::UploadNotFound(_))),
        "{what}: append after abort must be UploadNotFound, got {res:?}"
    );
    let res = store.upload_commit(&id, &Digest::sha256_of(&data)).await;
    assert!(
        matches!(res, Err(BlobError::UploadNotFound(_))),
        "{what}: commit after abort must be UploadNotFound, got {res:?}"
    );
    assert_eq!(
        stat_of(&**store, &Digest::sha256_of(&data), what).await,
        None,
        "{what}: aborted bytes must not become a blob"
    );
    let listed = store
        .upload_list()
        .await
        .unwrap_or_else(|e| panic!("{what}: list: {e:?}"));
    assert!(!listed.contains(&id), "{what}: aborted upload must not be listed");

    // Aborting an upload that never existed is fine too.
    let never = uuid::Uuid::new_v4().to_string();
    store
        .upload_abort(&never)
        .await
        .unwrap_or_else(|e| panic!("{what}: abort of unknown upload must succeed: {e:?}"));
}

/// Committing an upload whose blob already exists just drops the upload.
pub async fn upload_commit_when_blob_exists(store: &Arc<dyn BlobStore>) {
    let what = "commit existing";
    let data = pseudo_random(16, 70 * KIB + 9);
    let digest = Digest::sha256_of(&data);
    put_ok(&**store, &digest, stream_once(&data), what).await;

    let id = create_upload(&**store, what).await;
    let mut hasher = Hasher::new(DigestAlgorithm::Sha256);
    append_ok(&**store, &id, 0, stream_chunks(&data, &[4 * KIB]), &mut hasher, what).await;
    let n = store
        .upload_commit(&id, &digest)
        .await
        .unwrap_or_else(|e| panic!("{what}: commit: {e:?}"));
    assert_eq!(n, data.len() as u64, "{what}: size");
    let res = store.upload_len(&id).await;
    assert!(
        matches!(res, Err(BlobError::UploadNotFound(_))),
        "{what}: upload must be gone, got {res:?}"
    );
    assert!(get_bytes(&**store, &digest, None).await == data, "{what}: blob intact");
    store
        .delete(&digest)
        .await
        .unwrap_or_else(|e| panic!("{what}: delete: {e:?}"));
}

/// Eight tasks putting the same blob concurrently all succeed.
pub async fn concurrent_identical_puts(store: &Arc<dyn BlobStore>) {
    let what = "concurrent puts";
    let data = Arc::new(pseudo_random(17, 2 * MIB + 333));
    let digest = Digest::sha256_of(&data);
    let mut tasks = Vec::new();
    for i in 0..8usize {
        let store = Arc::clone(store);
        let data = Arc::clone(&data);
        let digest = digest.clone();
        tasks.push(tokio::spawn(async move {
            let sizes = [16 * KIB + i, 100 * KIB, 7 + i];
            store.put(&digest, stream_chunks(&data, &sizes)).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok(Ok(n)) => assert_eq!(n, data.len() as u64, "{what}: task {i} size"),
            Ok(Err(e)) => panic!("{what}: task {i} put failed: {e:?}"),
            Err(e) => panic!("{what}: task {i} panicked: {e:?}"),
        }
    }
    assert_eq!(
        stat_of(&**store, &digest, what).await,
        Some(data.len() as u64),
        "{what}: stat"
    );
    assert!(get_bytes(&**store, &digest, None).await == *data, "{what}: content");
    store
        .delete(&digest)
        .await
        .unwrap_or_else(|e| panic!("{what}: delete: {e:?}"));
}

/// upload_list includes created uploads (empty or not) and drops aborted ones.
pub async fn upload_list_lists_uploads(store: &Arc<dyn BlobStore>) {
    let what = "upload list";
    let a = create_upload(&**store, what).await;
    let b = create_upload(&**store, what).await;
    let mut hasher = Hasher::new(DigestAlgorithm::Sha256);
    append_ok(
        &**store,
        &b,
        0,
        stream_once(&pseudo_random(18, 1000)),
        &mut hasher,
        what,
    )
    .await;

    let listed = store
        .upload_list()
        .await
        .unwrap_or_else(|e| panic!("{what}: list: {e:?}"));
    assert!(listed.contains(&a), "{what}: empty upload {a} missing from {listed:?}");
    assert!(listed.contains(&b), "{what}: upload {b} missing from {listed:?}");

    store
        .upload_abort(&a)
        .await
        .unwrap_or_else(|e| panic!("{what}: abort: {e:?}"));
    let listed = store
        .upload_list()
        .await
        .unwrap_or_else(|e| panic!("{what}: list: {e:?}"));
    assert!(!listed.contains(&a), "{what}: aborted upload {a} still listed");
    assert!(listed.contains(&b), "{what}: upload {b} missing after aborting another");
    store
        .upload_abort(&b)
        .await
        .unwrap_or_else(|e| panic!("{what}: abort: {e:?}"));
}

/// Every page of `list` from `after` on, checking the paging contract; the
/// blobs in listing order.
async fn list_from(store: &dyn BlobStore, mut after: Option<Digest>, limit: usize, what: &str) -> Vec<(Digest, u64)> {
    let mut all: Vec<(Digest, u64)> = Vec::new();
    // Other checks may store blobs meanwhile, but never this many.
    for _ in 0..100_000 {
        let page: BlobPage = match store.list(after.as_ref(), limit).await {
            Ok(page) => page,
            Err(e) => panic!("{what}: list(after {after:?}, limit {limit}) failed: {e:?}"),
        };
        assert!(
            page.blobs.len() <= limit,
            "{what}: a page of limit {limit} held {} blobs",
            page.blobs.len()
        );
        for (digest, _) in &page.blobs {
            if let Some(a) = &after {
                assert!(digest > a, "{what}: {digest} listed after {a}, out of order");
            }
            if let Some((prev, _)) = all.last() {
                assert!(digest > prev, "{what}: {digest} listed after {prev}, out of order");
            }
        }
        all.extend(page.blobs.iter().cloned());
        match page.next {
            None => return all,
            Some(next) => {
                assert_eq!(
                    Some(&next),
                    page.blobs.last().map(|(d, _)| d),
                    "{what}: the next page starts after this page's last blob"
                );
                after = Some(next);
            }
        }
    }
    panic!("{what}: the listing did not end");
}

/// `list` pages through the stored blobs in digest order, with their sizes,
/// from any starting point, and stops showing a deleted blob.
pub async fn list_pages_in_digest_order(store: &Arc<dyn BlobStore>) {
    let what = "list";
    let mut ours: Vec<(Digest, u64)> = Vec::new();
    for (i, len) in [10usize, 1, 1000, 70 * KIB + 3, 5].into_iter().enumerate() {
        let data = pseudo_random(60 + i as u64, len);
        let algo = if i == 3 {
            DigestAlgorithm::Sha512
        } else {
            DigestAlgorithm::Sha256
        };
        let digest = Digest::of(algo, &data);
        put_ok(&**store, &digest, stream_once(&data), what).await;
        ours.push((digest, data.len() as u64));
    }
    ours.sort();

    for limit in [1, 2, 1000] {
        let listed = list_from(&**store, None, limit, what).await;
        let found: Vec<_> = listed.iter().filter(|b| ours.contains(b)).cloned().collect();
        assert_eq!(
            found, ours,
            "{what}: pages of {limit} list each of our blobs once, with its size"
        );
    }
    // From the middle: exactly what sorts after the starting digest.
    let from = &ours[1].0;
    let listed = list_from(&**store, Some(from.clone()), 2, what).await;
    let found: Vec<_> = listed.iter().filter(|b| ours.contains(b)).cloned().collect();
    assert_eq!(found, ours[2..], "{what}: listing after {from}");
    // From a digest that is not stored.
    let absent = Digest::sha256_of(b"list: never stored");
    let listed = list_from(&**store, Some(absent.clone()), 3, what).await;
    let expected: Vec<_> = ours.iter().filter(|(d, _)| *d > absent).cloned().collect();
    let found: Vec<_> = listed.iter().filter(|b| ours.contains(b)).cloned().collect();
    assert_eq!(found, expected, "{what}: listing after an absent digest");

    let (gone, _) = ours.remove(2);
    store
        .delete(&gone)
        .await
        .unwrap_or_else(|e| panic!("{what}: delete: {e:?}"));
    let listed = list_from(&**store, None, 2, what).await;
    assert!(
        !listed.iter().any(|(d, _)| *d == gone),
        "{what}: deleted blob {gone} still listed"
    );
    let found: Vec<_> = listed.iter().filter(|b| ours.contains(b)).cloned().collect();
    assert_eq!(found, ours, "{what}: the others stay listed");
    for (digest, _) in &ours {
        store
            .delete(digest)
            .await
            .unwrap_or_else(|e| panic!("{what}: cleanup delete: {e:?}"));
    }
}

/// Ids outside `[A-Za-z0-9-]{1,64}` are rejected with UploadNotFound everywhere.
pub async fn invalid_upload_ids(store: &Arc<dyn BlobStore>) {
    let what = "invalid upload id";
    let too_long = "a".repeat(65);
    let bad: [&str; 9] = ["../x", "", "a/b", "..", ".", "x y", "abc\0", "ü", &too_long];
    let digest = Digest::sha256_of(b"invalid-id");
    for id in bad {
        let shown = id.escape_default().to_string();
        let check = |res: Result<(), BlobError>, op: &str| {
            assert!(
                matches!(res, Err(BlobError::UploadNotFound(_))),
                "{what}: {op}({shown:?}) must be UploadNotFound, got {res:?}"
            );
        };
        check(store.upload_create(id).await, "upload_create");
        check(
            store
                .upload_append(id, 0, stream_once(b"x"), &mut ignore_chunk)
                .await
                .map(drop),
            "upload_append",
        );
        check(store.upload_len(id).await.map(drop), "upload_len");
        check(store.upload_read(id).await.map(drop), "upload_read");
        check(store.upload_commit(id, &digest).await.map(drop), "upload_commit");
        check(store.upload_abort(id).await, "upload_abort");
    }
    // The longest valid id is accepted.
    let longest = "A-".repeat(32);
    store
        .upload_create(&longest)
        .await
        .unwrap_or_else(|e| panic!("{what}: 64-char id must be accepted: {e:?}"));
    store
        .upload_abort(&longest)
        .await
        .unwrap_or_else(|e| panic!("{what}: abort: {e:?}"));
}

/// The readiness probe succeeds on a healthy store.
pub async fn check_writable_ok(store: &Arc<dyn BlobStore>) {
    store
        .check_writable()
        .await
        .unwrap_or_else(|e| panic!("check_writable on a healthy store failed: {e:?}"));
}
