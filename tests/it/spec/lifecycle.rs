//! What survives a crash, and what expires.

use std::path::Path;
use std::time::Duration;

use super::support::*;

#[tokio::test]
async fn pushed_content_survives_kill9_and_restart() {
    let mut reg = Reg::start().await;
    let repo = "persist/app";
    let a = reg.push_image(repo, "v1", 80).await;
    reg.push_manifest(repo, "stable", OCI_MANIFEST, &a.manifest).await;
    let b = reg.push_image("persist/other", "latest", 81).await;
    let loose = random_bytes(70_000, 82);
    let loose_digest = reg.push_blob(repo, &loose).await;

    reg.node.kill9();
    reg.node.restart().await.expect("restart node");

    reg.assert_manifest(repo, "v1", OCI_MANIFEST, &a.manifest).await;
    reg.assert_manifest(repo, "stable", OCI_MANIFEST, &a.manifest).await;
    reg.assert_manifest(repo, &a.digest, OCI_MANIFEST, &a.manifest).await;
    reg.assert_manifest("persist/other", "latest", OCI_MANIFEST, &b.manifest)
        .await;
    reg.assert_blob(repo, &sha256_digest(&a.config), &a.config).await;
    reg.assert_blob(repo, &sha256_digest(&a.layer), &a.layer).await;
    reg.assert_blob(repo, &loose_digest, &loose).await;
    assert_eq!(reg.tags(repo).await, vec!["stable".to_string(), "v1".to_string()]);
    assert_eq!(
        reg.catalog().await,
        vec!["persist/app".to_string(), "persist/other".to_string()]
    );

    // And the node still takes writes.
    reg.push_image(repo, "v2", 83).await;
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn abandoned_uploads_expire_and_their_data_is_removed() {
    let reg = Reg::start_with("[uploads]\nexpire_after = \"2s\"\nsweep_interval = \"500ms\"\n").await;
    let repo = "expire/app";
    let upload_dirs = reg.upload_data_dirs();
    let stored = || upload_dirs.iter().flat_map(|d| files_under(d)).collect::<Vec<_>>();

    let loc = reg.start_upload(repo).await;
    let (h, _) = check(reg.patch_chunk(&loc, 0, &random_bytes(4096, 90)).await, 202).await;
    let loc = header_req(&h, "location");
    assert!(
        !stored().is_empty(),
        "the upload's bytes should be under {upload_dirs:?}"
    );

    poll_until(Duration::from_secs(15), "the upload session to expire", || async {
        let resp = reg.get(&loc).await;
        match resp.status().as_u16() {
            204 => None,
            _ => Some(expect_error(resp, 404, &["BLOB_UPLOAD_UNKNOWN"]).await),
        }
    })
    .await;
    expect_error(
        reg.patch_chunk(&loc, 4096, b"late").await,
        404,
        &["BLOB_UPLOAD_UNKNOWN"],
    )
    .await;

    let left = poll_until(Duration::from_secs(5), "the upload's files to be removed", || async {
        let left = stored();
        if left.is_empty() { Some(left) } else { None }
    })
    .await;
    assert!(left.is_empty());

    // Uploads still work on the node afterwards.
    reg.push_blob(repo, b"fresh").await;
}
