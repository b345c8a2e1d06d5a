//! `GET /v2/_catalog` with pagination.

use super::support::*;

#[tokio::test]
async fn catalog_is_sorted_and_paginated() {
    let reg = Reg::start().await;
    let (repos, link) = reg.catalog_page("").await;
    assert_eq!(repos, Vec::<String>::new(), "a fresh registry has no repositories");
    assert_eq!(link, None);

    for (i, repo) in ["delta", "alpha/two", "charlie", "alpha/one", "bravo"]
        .iter()
        .enumerate()
    {
        reg.push_image(repo, "v1", 60 + i as u64).await;
    }
    let all: Vec<String> = ["alpha/one", "alpha/two", "bravo", "charlie", "delta"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (repos, link) = reg.catalog_page("").await;
    assert_eq!(repos, all);
    assert_eq!(link, None);

    let (page, link) = reg.catalog_page("?n=2").await;
    assert_eq!(page, all[0..2]);
    let link = link.expect("Link when more repositories follow");
    let (path, pairs, url) = parse_next_link(&reg, &link);
    assert_eq!(path, "/v2/_catalog");
    assert_eq!(query_value(&pairs, "n"), Some("2"), "Link: {link}");
    assert_eq!(query_value(&pairs, "last"), Some("alpha/two"), "Link: {link}");

    let (page, link) = reg.catalog_page(&format!("?{}", url.query().unwrap())).await;
    assert_eq!(page, all[2..4]);
    let (_, pairs, url) = parse_next_link(&reg, &link.expect("Link on the second page"));
    assert_eq!(query_value(&pairs, "last"), Some("charlie"));

    let (page, link) = reg.catalog_page(&format!("?{}", url.query().unwrap())).await;
    assert_eq!(page, all[4..5]);
    assert_eq!(link, None, "the last page has no Link");

    assert_eq!(reg.catalog_page("?n=2&last=alpha/two").await.0, all[2..4]);
    assert_eq!(reg.catalog_page("?last=bravo").await.0, all[3..5]);
    assert_eq!(reg.catalog_page("?n=0").await.0, Vec::<String>::new());
    let (page, link) = reg.catalog_page("?n=50").await;
    assert_eq!(page, all);
    assert_eq!(link, None);
}
