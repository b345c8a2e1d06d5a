//! Manifest push and pull: OCI, Docker schema 2, lists and indexes; the
//! validation a registry must do before storing one.

use reqwest::Method;
use reqwest::Response;
use serde_json::Value;
use serde_json::json;

use super::support::*;

/// Pushes `n` distinct small images' blobs into `repo` and returns their
/// manifests (not pushed) of the given flavour.
async fn child_manifests(reg: &Reg, repo: &str, flavour: &str, n: u64, seed: u64) -> Vec<Vec<u8>> {
    let (config_type, layer_type) = if flavour == DOCKER_MANIFEST {
        (DOCKER_CONFIG, DOCKER_LAYER)
    } else {
        (OCI_CONFIG, OCI_LAYER)
    };
    let mut out = Vec::new();
    for i in 0..n {
        let config = config_blob(seed * 100 + i);
        let layer = random_bytes(200, seed * 100 + i);
        reg.push_blob(repo, &config).await;
        reg.push_blob(repo, &layer).await;
        out.push(image_manifest(
            flavour,
            &desc(config_type, &config),
            &[desc(layer_type, &layer)],
            None,
        ));
    }
    out
}

/// Asserts that a rejected PUT left nothing behind: the tag list is as
/// before and neither the tag nor the body's digest resolves.
async fn assert_not_stored(reg: &Reg, repo: &str, tag: &str, body: &[u8], tags_before: &[String]) {
    assert_eq!(
        reg.tags(repo).await,
        tags_before,
        "{repo}: tag list changed by a rejected PUT"
    );
    expect_error(reg.get_manifest(repo, tag).await, 404, &["MANIFEST_UNKNOWN"]).await;
    let digest = sha256_digest(body);
    expect_error(reg.get_manifest(repo, &digest).await, 404, &["MANIFEST_UNKNOWN"]).await;
}

#[tokio::test]
async fn oci_manifest_push_pull_head() {
    let reg = Reg::start().await;
    let repo = "man/app";
    let config = config_blob(1);
    let layer = random_bytes(4000, 1);
    reg.push_blob(repo, &config).await;
    reg.push_blob(repo, &layer).await;
    let body = image_manifest(
        OCI_MANIFEST,
        &desc(OCI_CONFIG, &config),
        &[desc(OCI_LAYER, &layer)],
        Some(json!({ "annotations": { "org.example.k": "v" } })),
    );
    let digest = sha256_digest(&body);

    let (h, _) = check(reg.put_manifest(repo, "v1", OCI_MANIFEST, &body).await, 201).await;
    assert_eq!(
        header_opt(&h, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    // Location names the pushed content, by digest or by the tag used.
    let loc = reg.path_of(&header_req(&h, "location"));
    assert!(
        loc == format!("/v2/{repo}/manifests/{digest}") || loc == format!("/v2/{repo}/manifests/v1"),
        "manifest Location {loc:?}"
    );

    reg.assert_manifest(repo, "v1", OCI_MANIFEST, &body).await;
    reg.assert_manifest(repo, &digest, OCI_MANIFEST, &body).await;

    for reference in ["v1", digest.as_str()] {
        let (h, got) = check(reg.head_manifest(repo, reference).await, 200).await;
        assert!(got.is_empty(), "HEAD manifest must not have a body");
        assert_eq!(header_opt(&h, "content-length"), Some(body.len().to_string()));
        assert_eq!(media_type_of(&h).as_deref(), Some(OCI_MANIFEST));
        assert_eq!(
            header_opt(&h, "docker-content-digest").as_deref(),
            Some(digest.as_str())
        );
    }

    // The blobs it references are pullable from the repository.
    reg.assert_blob(repo, &sha256_digest(&config), &config).await;
    reg.assert_blob(repo, &sha256_digest(&layer), &layer).await;
}

#[tokio::test]
async fn put_by_digest() {
    let reg = Reg::start().await;
    let repo = "bydigest/app";
    let children = child_manifests(&reg, repo, OCI_MANIFEST, 2, 2).await;

    let digest = sha256_digest(&children[0]);
    let (h, _) = check(reg.put_manifest(repo, &digest, OCI_MANIFEST, &children[0]).await, 201).await;
    assert_eq!(
        header_opt(&h, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(
        reg.path_of(&header_req(&h, "location")),
        format!("/v2/{repo}/manifests/{digest}")
    );
    reg.assert_manifest(repo, &digest, OCI_MANIFEST, &children[0]).await;
    assert_eq!(
        reg.tags(repo).await,
        Vec::<String>::new(),
        "a PUT by digest creates no tag"
    );

    // The body does not hash to the digest in the URL.
    let claimed = sha256_digest(b"something else");
    expect_error(
        reg.put_manifest(repo, &claimed, OCI_MANIFEST, &children[1]).await,
        400,
        &["DIGEST_INVALID"],
    )
    .await;
    expect_error(reg.get_manifest(repo, &claimed).await, 404, &["MANIFEST_UNKNOWN"]).await;
    expect_error(
        reg.get_manifest(repo, &sha256_digest(&children[1])).await,
        404,
        &["MANIFEST_UNKNOWN"],
    )
    .await;
}

#[tokio::test]
async fn docker_schema2_manifest_and_list() {
    let reg = Reg::start().await;
    let repo = "docker/app";
    let children = child_manifests(&reg, repo, DOCKER_MANIFEST, 2, 3).await;
    reg.push_manifest(repo, "single", DOCKER_MANIFEST, &children[0]).await;
    reg.assert_manifest(repo, "single", DOCKER_MANIFEST, &children[0]).await;

    reg.push_manifest(repo, &sha256_digest(&children[1]), DOCKER_MANIFEST, &children[1])
        .await;
    let list = index_manifest(
        DOCKER_LIST,
        &[(DOCKER_MANIFEST, &children[0]), (DOCKER_MANIFEST, &children[1])],
        None,
    );
    let list_digest = reg.push_manifest(repo, "multi", DOCKER_LIST, &list).await;
    reg.assert_manifest(repo, "multi", DOCKER_LIST, &list).await;
    reg.assert_manifest(repo, &list_digest, DOCKER_LIST, &list).await;
}

#[tokio::test]
async fn oci_index() {
    let reg = Reg::start().await;
    let repo = "index/app";
    let children = child_manifests(&reg, repo, OCI_MANIFEST, 3, 4).await;
    for c in &children {
        reg.push_manifest(repo, &sha256_digest(c), OCI_MANIFEST, c).await;
    }
    let refs: Vec<(&str, &[u8])> = children.iter().map(|c| (OCI_MANIFEST, &c[..])).collect();
    let index = index_manifest(OCI_INDEX, &refs, None);
    reg.push_manifest(repo, "multi", OCI_INDEX, &index).await;
    reg.assert_manifest(repo, "multi", OCI_INDEX, &index).await;

    // An index of indexes is valid too.
    let outer = index_manifest(OCI_INDEX, &[(OCI_INDEX, &index[..])], None);
    reg.push_manifest(repo, "nested", OCI_INDEX, &outer).await;
    reg.assert_manifest(repo, "nested", OCI_INDEX, &outer).await;
}

#[tokio::test]
async fn media_type_comes_from_content_type_when_body_has_none() {
    // umoci writes manifests without a mediaType field.
    let reg = Reg::start().await;
    let repo = "nomt/app";
    let config = config_blob(5);
    let layer = random_bytes(300, 5);
    reg.push_blob(repo, &config).await;
    reg.push_blob(repo, &layer).await;
    let body = image_manifest(
        OCI_MANIFEST,
        &desc(OCI_CONFIG, &config),
        &[desc(OCI_LAYER, &layer)],
        Some(json!({ "mediaType": null })),
    );
    let parsed: Value = serde_json::from_slice(&body).unwrap();
    assert!(parsed.get("mediaType").is_none());
    reg.push_manifest(repo, "v1", OCI_MANIFEST, &body).await;
    reg.assert_manifest(repo, "v1", OCI_MANIFEST, &body).await;

    let index = index_manifest(
        OCI_INDEX,
        &[(OCI_MANIFEST, &body[..])],
        Some(json!({ "mediaType": null })),
    );
    reg.push_manifest(repo, "idx", OCI_INDEX, &index).await;
    reg.assert_manifest(repo, "idx", OCI_INDEX, &index).await;
}

#[tokio::test]
async fn referenced_blobs_must_exist_in_the_repository() {
    let reg = Reg::start().await;
    let repo = "blobcheck/app";
    reg.push_image(repo, "base", 6).await;
    let before = reg.tags(repo).await;

    let config = config_blob(7);
    let layer = random_bytes(300, 7);
    let foreign = random_bytes(300, 8);
    reg.push_blob(repo, &config).await;
    reg.push_blob(repo, &layer).await;
    reg.push_blob("elsewhere/app", &foreign).await;

    let missing_config = image_manifest(
        OCI_MANIFEST,
        &desc(OCI_CONFIG, &config_blob(9)),
        &[desc(OCI_LAYER, &layer)],
        None,
    );
    let missing_layer = image_manifest(
        OCI_MANIFEST,
        &desc(OCI_CONFIG, &config),
        &[desc(OCI_LAYER, &layer), desc(OCI_LAYER, &random_bytes(10, 10))],
        None,
    );
    // Known to the registry, but only in another repository.
    let foreign_layer = image_manifest(
        OCI_MANIFEST,
        &desc(OCI_CONFIG, &config),
        &[desc(OCI_LAYER, &foreign)],
        None,
    );

    for (tag, body) in [("c", &missing_config), ("l", &missing_layer), ("f", &foreign_layer)] {
        expect_error(
            reg.put_manifest(repo, tag, OCI_MANIFEST, body).await,
            400,
            &["MANIFEST_BLOB_UNKNOWN"],
        )
        .await;
        assert_not_stored(&reg, repo, tag, body, &before).await;
    }
}

#[tokio::test]
async fn index_children_must_exist_in_the_repository() {
    let reg = Reg::start().await;
    let repo = "idxcheck/app";
    reg.push_image(repo, "base", 11).await;
    let before = reg.tags(repo).await;

    let children = child_manifests(&reg, repo, OCI_MANIFEST, 1, 12).await;
    // Child is pushed to another repository only.
    let elsewhere = child_manifests(&reg, "elsewhere/app", OCI_MANIFEST, 1, 13).await;
    reg.push_manifest("elsewhere/app", "x", OCI_MANIFEST, &elsewhere[0])
        .await;

    let unknown_child = index_manifest(OCI_INDEX, &[(OCI_MANIFEST, &children[0][..])], None);
    let foreign_child = index_manifest(OCI_INDEX, &[(OCI_MANIFEST, &elsewhere[0][..])], None);
    let list_unknown = index_manifest(DOCKER_LIST, &[(DOCKER_MANIFEST, &children[0][..])], None);
    for (tag, ct, body) in [
        ("u", OCI_INDEX, &unknown_child),
        ("f", OCI_INDEX, &foreign_child),
        ("d", DOCKER_LIST, &list_unknown),
    ] {
        expect_error(
            reg.put_manifest(repo, tag, ct, body).await,
            400,
            &["MANIFEST_BLOB_UNKNOWN"],
        )
        .await;
        assert_not_stored(&reg, repo, tag, body, &before).await;
    }
}

/// Accepts 400 MANIFEST_INVALID, or 415 UNSUPPORTED for a kind of manifest
/// the registry does not support at all.
async fn expect_invalid_or_unsupported(resp: Response) {
    if resp.status().as_u16() == 415 {
        expect_error(resp, 415, &["UNSUPPORTED", "MANIFEST_INVALID"]).await;
    } else {
        expect_error(resp, 400, &["MANIFEST_INVALID"]).await;
    }
}

#[tokio::test]
async fn invalid_manifests_are_rejected() {
    let reg = Reg::start().await;
    let repo = "invalid/app";
    reg.push_image(repo, "base", 14).await;
    let before = reg.tags(repo).await;
    let config = config_blob(15);
    let layer = random_bytes(100, 15);
    reg.push_blob(repo, &config).await;
    reg.push_blob(repo, &layer).await;
    let cfg = desc(OCI_CONFIG, &config);
    let lay = desc(OCI_LAYER, &layer);

    let not_json = b"{ this is not json".to_vec();
    let no_config = odd_json(&json!({ "schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [lay] }));
    let array = b"[]".to_vec();
    for (tag, body) in [("j", &not_json), ("c", &no_config), ("a", &array)] {
        expect_error(
            reg.put_manifest(repo, tag, OCI_MANIFEST, body).await,
            400,
            &["MANIFEST_INVALID"],
        )
        .await;
        assert_not_stored(&reg, repo, tag, body, &before).await;
    }

    // Body and Content-Type disagree.
    let oci = image_manifest(OCI_MANIFEST, &cfg, std::slice::from_ref(&lay), None);
    for (tag, ct) in [("m1", DOCKER_MANIFEST), ("m2", OCI_INDEX)] {
        expect_error(reg.put_manifest(repo, tag, ct, &oci).await, 400, &["MANIFEST_INVALID"]).await;
        assert_not_stored(&reg, repo, tag, &oci, &before).await;
    }

    // Docker schema 1, signed or not, by Content-Type and by schemaVersion.
    let schema1 = odd_json(&json!({
        "schemaVersion": 1,
        "name": repo,
        "tag": "s1",
        "architecture": "amd64",
        "fsLayers": [{ "blobSum": sha256_digest(&layer) }],
        "history": [{ "v1Compatibility": "{}" }],
        "signatures": [{ "header": { "alg": "ES256" }, "signature": "c2ln", "protected": "cHJvdA" }]
    }));
    for (tag, ct) in [
        ("s1", DOCKER_SCHEMA1_SIGNED),
        ("s2", DOCKER_SCHEMA1),
        ("s3", OCI_MANIFEST),
    ] {
        expect_invalid_or_unsupported(reg.put_manifest(repo, tag, ct, &schema1).await).await;
        assert_not_stored(&reg, repo, tag, &schema1, &before).await;
    }
}

#[tokio::test]
async fn oversized_manifest_is_413() {
    let reg = Reg::start().await;
    let repo = "big/app";
    reg.push_image(repo, "base", 16).await;
    let before = reg.tags(repo).await;
    let config = config_blob(16);
    let layer = random_bytes(1024 + 16, 16);
    let big = image_manifest(
        OCI_MANIFEST,
        &desc(OCI_CONFIG, &config),
        &[desc(OCI_LAYER, &layer)],
        Some(json!({ "annotations": { "org.example.padding": "x".repeat(4 * 1024 * 1024) } })),
    );
    assert!(big.len() > 4 * 1024 * 1024);
    // Once with Content-Length, once streamed (chunked, no length): the limit
    // must hold for both.
    for streamed in [false, true] {
        let body = if streamed {
            let pieces: Vec<Result<Vec<u8>, std::io::Error>> = big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
            reqwest::Body::wrap_stream(futures::stream::iter(pieces))
        } else {
            reqwest::Body::from(big.clone())
        };
        let rb = reg
            .req(Method::PUT, &format!("/v2/{repo}/manifests/huge"))
            .header("Content-Type", OCI_MANIFEST)
            .body(body);
        let resp = rb.send().await.unwrap_or_else(|e| {
            panic!(
                "PUT of a {} byte manifest (streamed: {streamed}): the connection failed \
                 instead of answering 413 ({e:?}). If this is a broken pipe or reset, the \
                 server answered before reading the body and closed the connection without \
                 draining it, so a client that is still sending never sees the 413 \
                 (RFC 9112 section 9.6: close in stages / lingering close).",
                big.len()
            )
        });
        // The spec names no code for this; SIZE_INVALID and MANIFEST_INVALID
        // are both reasonable.
        expect_error(resp, 413, &["SIZE_INVALID", "MANIFEST_INVALID"]).await;
        assert_not_stored(&reg, repo, "huge", &big, &before).await;
    }
}

#[tokio::test]
async fn tag_grammar() {
    let reg = Reg::start().await;
    let repo = "tags/app";
    let img = reg.push_image(repo, "base", 17).await;

    // 128 characters and the whole alphabet of the grammar are fine.
    let longest = format!("A{}", "b".repeat(127));
    for tag in [longest.as_str(), "_x", "0", "a.b-c_D"] {
        reg.push_manifest(repo, tag, OCI_MANIFEST, &img.manifest).await;
        reg.assert_manifest(repo, tag, OCI_MANIFEST, &img.manifest).await;
    }
    let before = reg.tags(repo).await;

    let too_long = "a".repeat(129);
    for tag in ["-bad", ".bad", too_long.as_str()] {
        // The spec defines no TAG_INVALID; a bad reference is a bad manifest PUT.
        expect_error(
            reg.put_manifest(repo, tag, OCI_MANIFEST, &img.manifest).await,
            400,
            &["MANIFEST_INVALID"],
        )
        .await;
        assert_eq!(reg.tags(repo).await, before, "tag {tag:?} must not be created");
    }
}

#[tokio::test]
async fn unknown_manifests() {
    let reg = Reg::start().await;
    let repo = "unknown/app";
    reg.push_image(repo, "base", 18).await;
    let d = unknown_digest(18);
    for reference in ["nope", d.as_str()] {
        expect_error(reg.get_manifest(repo, reference).await, 404, &["MANIFEST_UNKNOWN"]).await;
        assert_eq!(reg.head_manifest(repo, reference).await.status().as_u16(), 404);
    }
    // Unknown repository: either code names what is missing.
    for reference in ["latest", d.as_str()] {
        expect_error(
            reg.get_manifest("no/such/repo", reference).await,
            404,
            &["NAME_UNKNOWN", "MANIFEST_UNKNOWN"],
        )
        .await;
        assert_eq!(
            reg.head_manifest("no/such/repo", reference).await.status().as_u16(),
            404
        );
    }
}

#[tokio::test]
async fn repushing_a_tag_moves_it() {
    let reg = Reg::start().await;
    let repo = "move/app";
    let a = reg.push_image(repo, "latest", 19).await;
    let b = reg.push_image(repo, "latest", 20).await;
    assert_ne!(a.digest, b.digest);
    reg.assert_manifest(repo, "latest", OCI_MANIFEST, &b.manifest).await;
    reg.assert_manifest(repo, &a.digest, OCI_MANIFEST, &a.manifest).await;
    assert_eq!(reg.tags(repo).await, vec!["latest".to_string()]);

    // Pushing the same bytes again is idempotent.
    reg.push_manifest(repo, "latest", OCI_MANIFEST, &b.manifest).await;
    reg.assert_manifest(repo, "latest", OCI_MANIFEST, &b.manifest).await;

    // And moving it back works.
    reg.push_manifest(repo, "latest", OCI_MANIFEST, &a.manifest).await;
    reg.assert_manifest(repo, "latest", OCI_MANIFEST, &a.manifest).await;
    assert_eq!(reg.tags(repo).await, vec!["latest".to_string()]);
}

#[tokio::test]
async fn manifests_are_isolated_between_repositories() {
    let reg = Reg::start().await;
    let a = reg.push_image("mi/a", "v1", 21).await;
    reg.push_image("mi/b", "other", 22).await;
    expect_error(reg.get_manifest("mi/b", &a.digest).await, 404, &["MANIFEST_UNKNOWN"]).await;
    expect_error(reg.get_manifest("mi/b", "v1").await, 404, &["MANIFEST_UNKNOWN"]).await;
    assert_eq!(reg.head_manifest("mi/b", &a.digest).await.status().as_u16(), 404);
    // Deleting in one repository leaves the other alone.
    reg.push_blob("mi/b", &a.config).await;
    reg.push_blob("mi/b", &a.layer).await;
    reg.push_manifest("mi/b", "copy", OCI_MANIFEST, &a.manifest).await;
    check(reg.delete(&format!("/v2/mi/a/manifests/{}", a.digest)).await, 202).await;
    expect_error(reg.get_manifest("mi/a", &a.digest).await, 404, &["MANIFEST_UNKNOWN"]).await;
    reg.assert_manifest("mi/b", "copy", OCI_MANIFEST, &a.manifest).await;
    reg.assert_manifest("mi/b", &a.digest, OCI_MANIFEST, &a.manifest).await;
}
