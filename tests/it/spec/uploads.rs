//! Upload sessions: POST / PATCH / GET status / PUT / DELETE.

use futures::stream;
use reqwest::Method;
use reqwest::header::HeaderMap;

use super::support::*;

/// Checks the headers every upload-session response carries and returns the
/// `Location` to use next.
fn upload_location(reg: &Reg, h: &HeaderMap, repo: &str) -> String {
    let loc = header_req(h, "location");
    let path = reg.path_of(&loc);
    let prefix = format!("/v2/{repo}/blobs/uploads/");
    let id = path
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("upload Location {loc:?} must be under {prefix}"));
    assert!(
        !id.is_empty() && !id.contains('/'),
        "upload Location {loc:?} must end in the session id"
    );
    assert_eq!(
        header_opt(h, "docker-upload-uuid").as_deref(),
        Some(id),
        "Docker-Upload-UUID must name the session in Location"
    );
    loc
}

/// A new session has received no bytes: the spec allows `Range` to be
/// absent or `0-0` there.
fn assert_fresh_range(h: &HeaderMap) {
    let range = header_opt(h, "range");
    assert!(
        range.is_none() || range.as_deref() == Some("0-0"),
        "fresh upload: Range must be absent or 0-0, got {range:?}"
    );
}

fn assert_range(h: &HeaderMap, last: u64) {
    assert_eq!(
        header_opt(h, "range"),
        Some(format!("0-{last}")),
        "Range (inclusive, no unit)"
    );
}

async fn upload_status(reg: &Reg, loc: &str, repo: &str) -> HeaderMap {
    let (h, body) = check(reg.get(loc).await, 204).await;
    assert!(body.is_empty());
    upload_location(reg, &h, repo);
    h
}

#[tokio::test]
async fn chunked_upload_in_order_and_out_of_order() {
    let reg = Reg::start().await;
    let repo = "chunk/app";
    let data = random_bytes(400, 10);
    let digest = sha256_digest(&data);

    let resp = send(
        reg.req(Method::POST, "/v2/chunk/app/blobs/uploads/")
            .header("Content-Length", "0"),
    )
    .await;
    let (h, _) = check(resp, 202).await;
    let loc = upload_location(&reg, &h, repo);
    assert_fresh_range(&h);
    assert_fresh_range(&upload_status(&reg, &loc, repo).await);

    let (h, _) = check(reg.patch_chunk(&loc, 0, &data[0..100]).await, 202).await;
    let loc = upload_location(&reg, &h, repo);
    assert_range(&h, 99);

    let (h, _) = check(reg.patch_chunk(&loc, 100, &data[100..200]).await, 202).await;
    let loc = upload_location(&reg, &h, repo);
    assert_range(&h, 199);

    // A gap, then a replay of the first chunk: both out of order. The 416
    // carries the current range so the client can resume.
    for (start, chunk) in [(500u64, &data[300..400]), (0, &data[0..100]), (150, &data[150..250])] {
        let (h, _) = check(reg.patch_chunk(&loc, start, chunk).await, 416).await;
        assert_range(&h, 199);
    }

    let h = upload_status(&reg, &loc, repo).await;
    assert_range(&h, 199);

    // The session still works after the rejected chunks.
    let (h, _) = check(reg.patch_chunk(&loc, 200, &data[200..300]).await, 202).await;
    let loc = upload_location(&reg, &h, repo);
    assert_range(&h, 299);

    // Close with the final chunk in the PUT (Content-Range is optional there).
    let url = with_query(reg.url(&loc), "digest", &digest);
    let resp = send(
        reg.req_url(Method::PUT, url)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Range", "300-399")
            .body(data[300..400].to_vec()),
    )
    .await;
    let (h, _) = check(resp, 201).await;
    assert_eq!(
        header_opt(&h, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(
        reg.path_of(&header_req(&h, "location")),
        format!("/v2/{repo}/blobs/{digest}")
    );
    reg.assert_blob(repo, &digest, &data).await;

    // The session is gone once closed.
    expect_error(reg.get(&loc).await, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    expect_error(reg.patch_chunk(&loc, 400, b"more").await, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    expect_error(
        reg.finish_upload(&loc, &digest, b"").await,
        404,
        &["BLOB_UPLOAD_UNKNOWN"],
    )
    .await;
}

#[tokio::test]
async fn put_without_final_chunk_after_patches() {
    let reg = Reg::start().await;
    let data = random_bytes(2500, 11);
    let digest = sha256_digest(&data);
    let mut loc = reg.start_upload("nofinal/app").await;
    for (i, chunk) in data.chunks(1000).enumerate() {
        let (h, _) = check(reg.patch_chunk(&loc, i as u64 * 1000, chunk).await, 202).await;
        loc = upload_location(&reg, &h, "nofinal/app");
    }
    let (h, _) = check(reg.finish_upload(&loc, &digest, b"").await, 201).await;
    assert_eq!(
        header_opt(&h, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    reg.assert_blob("nofinal/app", &digest, &data).await;
}

#[tokio::test]
async fn streamed_patch_without_content_range() {
    // What docker, podman and skopeo do: one PATCH with a chunked body and no
    // Content-Range. A second one appends.
    let reg = Reg::start().await;
    let repo = "stream/app";
    let data = random_bytes(300_000, 12);
    let digest = sha256_digest(&data);
    let loc = reg.start_upload(repo).await;

    let mut loc = loc;
    for part in [&data[..200_000], &data[200_000..]] {
        let pieces: Vec<Result<Vec<u8>, std::io::Error>> = part.chunks(16_384).map(|c| Ok(c.to_vec())).collect();
        let resp = send(
            reg.req(Method::PATCH, &loc)
                .header("Content-Type", "application/octet-stream")
                .body(reqwest::Body::wrap_stream(stream::iter(pieces))),
        )
        .await;
        let (h, _) = check(resp, 202).await;
        loc = upload_location(&reg, &h, repo);
        let end = if part.len() == 200_000 { 199_999 } else { 299_999 };
        assert_range(&h, end);
    }
    assert_range(&upload_status(&reg, &loc, repo).await, 299_999);
    check(reg.finish_upload(&loc, &digest, b"").await, 201).await;
    reg.assert_blob(repo, &digest, &data).await;
}

#[tokio::test]
async fn bad_content_range_leaves_session_unchanged() {
    let reg = Reg::start().await;
    let repo = "badrange/app";
    let data = random_bytes(300, 13);
    let loc = reg.start_upload(repo).await;
    let (h, _) = check(reg.patch_chunk(&loc, 0, &data[..100]).await, 202).await;
    let loc = upload_location(&reg, &h, repo);

    // Malformed Content-Range, and a range whose length disagrees with the
    // body. The spec answers 416 for an invalid range; 400
    // BLOB_UPLOAD_INVALID is an acceptable reading for the length mismatch.
    for (range, body) in [("garbage", &data[100..200]), ("100-299", &data[100..150])] {
        let resp = send(
            reg.req(Method::PATCH, &loc)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", range)
                .body(body.to_vec()),
        )
        .await;
        let status = resp.status().as_u16();
        assert!(
            status == 416 || status == 400,
            "Content-Range {range:?}: expected 416 or 400, got {status}"
        );
        if status == 400 {
            expect_error(resp, 400, &["BLOB_UPLOAD_INVALID", "SIZE_INVALID"]).await;
        }
        assert_range(&upload_status(&reg, &loc, repo).await, 99);
    }

    let (h, _) = check(reg.patch_chunk(&loc, 100, &data[100..]).await, 202).await;
    let loc = upload_location(&reg, &h, repo);
    check(reg.finish_upload(&loc, &sha256_digest(&data), b"").await, 201).await;
    reg.assert_blob(repo, &sha256_digest(&data), &data).await;
}

#[tokio::test]
async fn cancel_upload() {
    let reg = Reg::start().await;
    let repo = "cancel/app";
    let data = random_bytes(100, 14);
    let loc = reg.start_upload(repo).await;
    let (h, _) = check(reg.patch_chunk(&loc, 0, &data).await, 202).await;
    let loc = upload_location(&reg, &h, repo);

    let (_, body) = check(reg.delete(&loc).await, 204).await;
    assert!(body.is_empty());

    expect_error(reg.get(&loc).await, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    expect_error(reg.patch_chunk(&loc, 100, b"x").await, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    expect_error(
        reg.finish_upload(&loc, &sha256_digest(&data), b"").await,
        404,
        &["BLOB_UPLOAD_UNKNOWN"],
    )
    .await;
    expect_error(reg.delete(&loc).await, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    assert_eq!(reg.blob_status(repo, &sha256_digest(&data)).await, 404);
}

#[tokio::test]
async fn unknown_upload_session() {
    let reg = Reg::start().await;
    reg.push_blob("unk/app", b"repo exists").await;
    let d = sha256_digest(b"x");
    for id in [uuid::Uuid::new_v4().to_string(), "not-a-session".to_string()] {
        // For a repository that does not exist either, naming the missing
        // repository (NAME_UNKNOWN) is an equally correct 404.
        for (repo, codes) in [
            ("unk/app", &["BLOB_UPLOAD_UNKNOWN"][..]),
            ("unk/never", &["BLOB_UPLOAD_UNKNOWN", "NAME_UNKNOWN"][..]),
        ] {
            let loc = format!("/v2/{repo}/blobs/uploads/{id}");
            expect_error(reg.get(&loc).await, 404, codes).await;
            expect_error(reg.patch_chunk(&loc, 0, b"x").await, 404, codes).await;
            expect_error(reg.finish_upload(&loc, &d, b"x").await, 404, codes).await;
            expect_error(reg.delete(&loc).await, 404, codes).await;
        }
    }
    assert_eq!(reg.blob_status("unk/app", &d).await, 404);
}

#[tokio::test]
async fn put_with_wrong_or_malformed_digest() {
    let reg = Reg::start().await;
    let repo = "digest/app";
    let data = random_bytes(200, 15);
    let actual = sha256_digest(&data);

    // Wrong digest: rejected, and neither digest becomes available.
    let wrong = sha256_digest(b"not the data");
    let loc = reg.start_upload(repo).await;
    let (h, _) = check(reg.patch_chunk(&loc, 0, &data).await, 202).await;
    let loc = upload_location(&reg, &h, repo);
    expect_error(reg.finish_upload(&loc, &wrong, b"").await, 400, &["DIGEST_INVALID"]).await;
    assert_eq!(reg.blob_status(repo, &wrong).await, 404);
    assert_eq!(reg.blob_status(repo, &actual).await, 404);

    // Same with the data in the PUT itself.
    let loc = reg.start_upload(repo).await;
    expect_error(reg.finish_upload(&loc, &wrong, &data).await, 400, &["DIGEST_INVALID"]).await;
    assert_eq!(reg.blob_status(repo, &wrong).await, 404);
    assert_eq!(reg.blob_status(repo, &actual).await, 404);

    // Malformed digests.
    for bad in ["sha256:xyz", "garbage", "sha256:", &actual[..actual.len() - 1]] {
        let loc = reg.start_upload(repo).await;
        expect_error(reg.finish_upload(&loc, bad, &data).await, 400, &["DIGEST_INVALID"]).await;
    }
    assert_eq!(reg.blob_status(repo, &actual).await, 404);

    // No digest at all: the upload cannot complete. Distribution answers
    // DIGEST_INVALID; BLOB_UPLOAD_INVALID is an equally fair code.
    let loc = reg.start_upload(repo).await;
    let resp = send(
        reg.req(Method::PUT, &loc)
            .header("Content-Type", "application/octet-stream")
            .body(data.clone()),
    )
    .await;
    expect_error(resp, 400, &["DIGEST_INVALID", "BLOB_UPLOAD_INVALID"]).await;
    assert_eq!(reg.blob_status(repo, &actual).await, 404);
}

#[tokio::test]
async fn upload_cannot_be_continued_through_another_repository() {
    let reg = Reg::start().await;
    let data = random_bytes(200, 16);
    let digest = sha256_digest(&data);
    let loc = reg.start_upload("xa/app").await;
    let (h, _) = check(reg.patch_chunk(&loc, 0, &data[..100]).await, 202).await;
    let loc = upload_location(&reg, &h, "xa/app");

    let url = reg.url(&loc);
    let mut other = url.clone();
    other.set_path(&url.path().replacen("/v2/xa/app/", "/v2/xb/app/", 1));
    assert_ne!(url, other);
    let other = other.to_string();
    reg.push_blob("xb/app", b"xb exists").await;

    expect_error(reg.get(&other).await, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    expect_error(
        reg.patch_chunk(&other, 100, &data[100..]).await,
        404,
        &["BLOB_UPLOAD_UNKNOWN"],
    )
    .await;
    expect_error(
        reg.finish_upload(&other, &digest, &data[100..]).await,
        404,
        &["BLOB_UPLOAD_UNKNOWN"],
    )
    .await;
    expect_error(reg.delete(&other).await, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    assert_eq!(reg.blob_status("xb/app", &digest).await, 404);

    // The session in xa/app is untouched.
    assert_range(&upload_status(&reg, &loc, "xa/app").await, 99);
    check(reg.finish_upload(&loc, &digest, &data[100..]).await, 201).await;
    reg.assert_blob("xa/app", &digest, &data).await;
    assert_eq!(reg.blob_status("xb/app", &digest).await, 404);
}

#[tokio::test]
async fn large_blob_in_chunks_with_ranged_reads() {
    let reg = Reg::start().await;
    let repo = "large/app";
    let size = 12 * 1024 * 1024 + 123;
    let data = random_bytes(size, 17);
    let digest = sha256_digest(&data);
    let mut loc = reg.start_upload(repo).await;
    let chunk = 4 * 1024 * 1024;
    for (i, part) in data.chunks(chunk).enumerate() {
        let start = (i * chunk) as u64;
        let (h, _) = check(reg.patch_chunk(&loc, start, part).await, 202).await;
        loc = upload_location(&reg, &h, repo);
        assert_range(&h, start + part.len() as u64 - 1);
    }
    check(reg.finish_upload(&loc, &digest, b"").await, 201).await;
    reg.assert_blob(repo, &digest, &data).await;

    // A range that spans the boundary between two uploaded chunks.
    let (first, last) = (chunk - 10, chunk + 9);
    let (h, body) = check(
        reg.get_blob(repo, &digest, Some(&format!("bytes={first}-{last}")))
            .await,
        206,
    )
    .await;
    assert_eq!(
        header_opt(&h, "content-range"),
        Some(format!("bytes {first}-{last}/{size}"))
    );
    assert!(body[..] == data[first..=last]);
}
