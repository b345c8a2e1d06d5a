//! `GET /v2/`, the API version check.

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
