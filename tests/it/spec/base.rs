//! `GET /v2/` and the error-body contract.

use serde_json::json;

use super::support::*;

#[tokio::test]
async fn api_version_check() {
    let reg = Reg::start().await;
    let (h, body) = check(reg.get("/v2/").await, 200).await;
    assert_eq!(
        header_opt(&h, "docker-distribution-api-version").as_deref(),
        Some("registry/2.0")
    );
    assert_eq!(json_body(&h, &body), json!({}));
}

#[tokio::test]
async fn api_version_check_without_trailing_slash_is_not_an_error() {
    // `GET /v2` is what some clients send first; it must not be a 5xx and,
    // if answered directly, must look like `/v2/`. A redirect to `/v2/` is
    // equally fine (the spec only defines `/v2/`).
    let reg = Reg::start().await;
    let resp = reg.get("/v2").await;
    let status = resp.status().as_u16();
    assert!(
        status == 200 || (300..400).contains(&status),
        "GET /v2: expected 200 or a redirect to /v2/, got {status}"
    );
}
