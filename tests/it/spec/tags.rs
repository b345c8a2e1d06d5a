//! `GET /v2/<name>/tags/list` with pagination.

use super::support::*;

#[tokio::test]
async fn tags_are_sorted_and_paginated() {
    let reg = Reg::start().await;
    let repo = "list/app";
    let img = reg.push_image(repo, "v2", 30).await;
    // Lower-case letters and digits only: "lexical order" is then the same
    // under every reading of the spec (byte order, case-insensitive).
    for tag in ["alpha", "v10", "beta", "v1"] {
        reg.push_manifest(repo, tag, OCI_MANIFEST, &img.manifest).await;
    }
    let all: Vec<String> = ["alpha", "beta", "v1", "v10", "v2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(reg.tags(repo).await, all);

    // Walk the pages by following Link.
    let (page, link) = reg.tags_page(repo, "?n=2").await;
    assert_eq!(page, all[0..2]);
    let link = link.expect("a Link header when more tags follow");
    let (path, pairs, url) = parse_next_link(&reg, &link);
    assert_eq!(path, format!("/v2/{repo}/tags/list"));
    assert_eq!(query_value(&pairs, "n"), Some("2"), "Link: {link}");
    assert_eq!(query_value(&pairs, "last"), Some("beta"), "Link: {link}");

    let (page, link) = reg.tags_page(repo, &format!("?{}", url.query().unwrap())).await;
    assert_eq!(page, all[2..4]);
    let (_, pairs, url) = parse_next_link(&reg, &link.expect("Link on the second page"));
    assert_eq!(query_value(&pairs, "last"), Some("v10"));

    let (page, link) = reg.tags_page(repo, &format!("?{}", url.query().unwrap())).await;
    assert_eq!(page, all[4..5]);
    assert_eq!(link, None, "the last page has no Link");

    // Explicit parameters.
    assert_eq!(reg.tags_page(repo, "?n=2&last=beta").await.0, all[2..4]);
    assert_eq!(reg.tags_page(repo, "?last=v1").await.0, all[3..5]);
    assert_eq!(
        reg.tags_page(repo, "?last=b").await.0,
        all[1..5],
        "last need not be an existing tag"
    );
    assert_eq!(reg.tags_page(repo, "?last=zzz").await.0, Vec::<String>::new());
    let (page, link) = reg.tags_page(repo, "?n=100").await;
    assert_eq!(page, all);
    assert_eq!(link, None);
    assert_eq!(reg.tags_page(repo, "?n=0").await.0, Vec::<String>::new());
}

#[tokio::test]
async fn tags_of_unknown_repository() {
    let reg = Reg::start().await;
    reg.push_image("some/app", "v1", 31).await;
    expect_error(reg.get("/v2/no/such/repo/tags/list").await, 404, &["NAME_UNKNOWN"]).await;
    expect_error(reg.get("/v2/some/tags/list").await, 404, &["NAME_UNKNOWN"]).await;
}
