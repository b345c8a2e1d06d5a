//! The repository name grammar, enforced on every write path.

use reqwest::Method;

use super::support::*;

fn invalid_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "Team/App", "team/App", "a..b", "a//b", "app-", "-app", "a/-b", "a/b-", "a_/b", "a.", "a___b", "a:b",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // 256 characters in total.
    let long = format!("{}/{}/{}", "a".repeat(100), "b".repeat(100), "c".repeat(54));
    assert_eq!(long.len(), 256);
    names.push(long);
    names
}

#[tokio::test]
async fn invalid_names_are_rejected_and_create_nothing() {
    let reg = Reg::start().await;
    let config = config_blob(70);
    let layer = random_bytes(50, 70);
    let manifest = image_manifest(
        OCI_MANIFEST,
        &desc(OCI_CONFIG, &config),
        &[desc(OCI_LAYER, &layer)],
        None,
    );
    for name in invalid_names() {
        let resp = send(
            reg.req(Method::POST, &format!("/v2/{name}/blobs/uploads/"))
                .header("Content-Length", "0"),
        )
        .await;
        expect_error(resp, 400, &["NAME_INVALID"]).await;
        expect_error(
            reg.post_blob(&name, &sha256_digest(&config), &config).await,
            400,
            &["NAME_INVALID"],
        )
        .await;
        expect_error(
            reg.put_manifest(&name, "v1", OCI_MANIFEST, &manifest).await,
            400,
            &["NAME_INVALID"],
        )
        .await;
    }
    assert_eq!(
        reg.catalog().await,
        Vec::<String>::new(),
        "no repository may have been created"
    );
}

#[tokio::test]
async fn valid_names_work() {
    let reg = Reg::start().await;
    let longest = format!("{}/{}/{}", "a".repeat(100), "b".repeat(100), "c".repeat(53));
    assert_eq!(longest.len(), 255);
    let mut names: Vec<String> = [
        "a/b/c/d",
        "0",
        "a.b/c_d/e__f/g-h",
        "x--y/z",
        // Names whose segments look like endpoint words.
        "x/blobs",
        "x/manifests",
        "tags/list",
        "v2/blobs/uploads",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    names.push(longest);

    for (i, name) in names.iter().enumerate() {
        let img = reg.push_image(name, "v1", 71 + i as u64).await;
        reg.assert_manifest(name, "v1", OCI_MANIFEST, &img.manifest).await;
        reg.assert_blob(name, &sha256_digest(&img.layer), &img.layer).await;
        assert_eq!(reg.tags(name).await, vec!["v1".to_string()], "{name}");
        // Chunked uploads address the session through the name too.
        let data = random_bytes(10, i as u64);
        let loc = reg.start_upload(name).await;
        check(reg.patch_chunk(&loc, 0, &data).await, 202).await;
    }
    // Order is the catalog test's business; here only membership counts.
    let mut want = names.clone();
    want.sort();
    let mut got = reg.catalog().await;
    got.sort();
    assert_eq!(got, want);
}
