//! The referrers API (`GET /v2/<name>/referrers/<digest>`) and `OCI-Subject`.

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::Value;
use serde_json::json;

use super::support::*;

const SBOM: &str = "application/vnd.example.sbom";
const SIG: &str = "application/vnd.example.sig";
const CFG_TYPE: &str = "application/vnd.example.cfg+json";
const BUNDLE: &str = "application/vnd.example.bundle";

/// An artifact manifest pointing at `subject`. Without `artifact_type`, the
/// config's media type is what the referrers list must report.
struct Artifact {
    body: Vec<u8>,
    media_type: &'static str,
    artifact_type: String,
    annotations: Option<Value>,
}

impl Artifact {
    fn digest(&self) -> String {
        sha256_digest(&self.body)
    }
}

async fn image_artifact(
    reg: &Reg,
    repo: &str,
    subject: &Value,
    artifact_type: Option<&str>,
    annotations: Option<Value>,
    seed: u64,
) -> Artifact {
    let payload = random_bytes(64, seed);
    reg.push_blob(repo, &payload).await;
    let (config, reported) = match artifact_type {
        Some(t) => {
            reg.push_blob(repo, b"{}").await;
            (desc(OCI_EMPTY, b"{}"), t.to_string())
        }
        None => {
            let cfg = format!("{{\"seed\":{seed}}}").into_bytes();
            reg.push_blob(repo, &cfg).await;
            (desc(CFG_TYPE, &cfg), CFG_TYPE.to_string())
        }
    };
    let mut extra = json!({ "subject": subject });
    if let Some(t) = artifact_type {
        extra["artifactType"] = json!(t);
    }
    if let Some(a) = &annotations {
        extra["annotations"] = a.clone();
    }
    let body = image_manifest(
        OCI_MANIFEST,
        &config,
        &[desc("application/octet-stream", &payload)],
        Some(extra),
    );
    Artifact {
        body,
        media_type: OCI_MANIFEST,
        artifact_type: reported,
        annotations,
    }
}

/// PUTs an artifact by digest and checks the `OCI-Subject` answer.
async fn push_artifact(reg: &Reg, repo: &str, a: &Artifact, subject_digest: &str) {
    let resp = reg.put_manifest(repo, &a.digest(), a.media_type, &a.body).await;
    let (h, _) = check(resp, 201).await;
    assert_eq!(
        header_opt(&h, "oci-subject").as_deref(),
        Some(subject_digest),
        "OCI-Subject"
    );
    assert_eq!(header_opt(&h, "docker-content-digest"), Some(a.digest()));
}

/// `GET /v2/<repo>/referrers/<digest>`, optionally with `?artifactType=`
/// (percent-encoded: media types contain `+`, which a query decodes as a
/// space).
async fn referrers(reg: &Reg, repo: &str, digest: &str, artifact_type: Option<&str>) -> (HeaderMap, Vec<Value>) {
    let mut url = reg.url(&format!("/v2/{repo}/referrers/{digest}"));
    if let Some(t) = artifact_type {
        url = with_query(url, "artifactType", t);
    }
    let (h, body) = check(send(reg.req_url(Method::GET, url)).await, 200).await;
    assert_eq!(media_type_of(&h).as_deref(), Some(OCI_INDEX), "referrers Content-Type");
    let v = json_body(&h, &body);
    assert_eq!(v["schemaVersion"], json!(2));
    assert_eq!(v["mediaType"], json!(OCI_INDEX));
    let manifests = v["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("referrers: manifests must be an array: {v}"))
        .clone();
    (h, manifests)
}

/// Asserts the list holds exactly `expected`, in any order, each with the
/// descriptor fields the spec requires.
fn assert_descriptors(got: &[Value], expected: &[&Artifact]) {
    let mut got_digests: Vec<&str> = got.iter().map(|d| d["digest"].as_str().unwrap_or("")).collect();
    let mut want: Vec<String> = expected.iter().map(|a| a.digest()).collect();
    got_digests.sort();
    want.sort();
    assert_eq!(got_digests, want, "referrers digests; got {got:?}");
    for a in expected {
        let d = got.iter().find(|d| d["digest"] == json!(a.digest())).unwrap();
        assert_eq!(d["mediaType"], json!(a.media_type), "{d}");
        assert_eq!(d["size"], json!(a.body.len()), "{d}");
        assert_eq!(d["artifactType"], json!(a.artifact_type), "{d}");
        match &a.annotations {
            Some(ann) => assert_eq!(&d["annotations"], ann, "{d}"),
            None => assert!(
                d.get("annotations").is_none() || d["annotations"] == json!({}),
                "no annotations expected: {d}"
            ),
        }
    }
}

#[tokio::test]
async fn referrers_list_filter_and_delete() {
    let reg = Reg::start().await;
    let repo = "ref/app";
    let subject_img = reg.push_image(repo, "v1", 50).await;
    let s = subject_img.digest.clone();
    let subject = desc(OCI_MANIFEST, &subject_img.manifest);

    let sbom = image_artifact(
        &reg,
        repo,
        &subject,
        Some(SBOM),
        Some(json!({ "org.example.kind": "sbom" })),
        51,
    )
    .await;
    let sig = image_artifact(
        &reg,
        repo,
        &subject,
        Some(SIG),
        Some(json!({ "org.example.kind": "sig", "org.opencontainers.image.created": "2024-01-01T00:00:00Z" })),
        52,
    )
    .await;
    let untyped = image_artifact(&reg, repo, &subject, None, None, 53).await;
    for a in [&sbom, &sig, &untyped] {
        push_artifact(&reg, repo, a, &s).await;
    }

    // An index can refer too; its artifactType is its own field.
    let index_body = index_manifest(
        OCI_INDEX,
        &[(OCI_MANIFEST, &sbom.body[..])],
        Some(json!({ "artifactType": BUNDLE, "subject": subject, "annotations": { "org.example.kind": "bundle" } })),
    );
    let bundle = Artifact {
        body: index_body,
        media_type: OCI_INDEX,
        artifact_type: BUNDLE.to_string(),
        annotations: Some(json!({ "org.example.kind": "bundle" })),
    };
    push_artifact(&reg, repo, &bundle, &s).await;

    // A referrer in another repository does not count here (and does not
    // see this repository's referrers).
    let foreign = image_artifact(&reg, "ref/other", &subject, Some(SBOM), None, 55).await;
    push_artifact(&reg, "ref/other", &foreign, &s).await;

    let (_, list) = referrers(&reg, repo, &s, None).await;
    assert_descriptors(&list, &[&sbom, &sig, &untyped, &bundle]);
    let (_, list) = referrers(&reg, "ref/other", &s, None).await;
    assert_descriptors(&list, &[&foreign]);

    // Filtering by artifactType.
    let (h, list) = referrers(&reg, repo, &s, Some(SBOM)).await;
    assert_eq!(header_opt(&h, "oci-filters-applied").as_deref(), Some("artifactType"));
    assert_descriptors(&list, &[&sbom]);
    let (h, list) = referrers(&reg, repo, &s, Some(CFG_TYPE)).await;
    assert_eq!(header_opt(&h, "oci-filters-applied").as_deref(), Some("artifactType"));
    assert_descriptors(&list, &[&untyped]);
    let (h, list) = referrers(&reg, repo, &s, Some("application/vnd.example.none")).await;
    assert_eq!(header_opt(&h, "oci-filters-applied").as_deref(), Some("artifactType"));
    assert_descriptors(&list, &[]);

    // Pages of `n`, linked by `Link: <…?n=…&last=…>; rel="next"`, cover every
    // referrer once.
    let mut seen = Vec::new();
    let mut url = with_query(reg.url(&format!("/v2/{repo}/referrers/{s}")), "n", "3");
    for _ in 0..4 {
        let (h, body) = check(send(reg.req_url(Method::GET, url.clone())).await, 200).await;
        let page = json_body(&h, &body)["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(page.len() <= 3, "{page:?}");
        seen.extend(page);
        match header_opt(&h, "link") {
            Some(link) => url = parse_next_link(&reg, &link).2,
            None => break,
        }
    }
    assert_descriptors(&seen, &[&sbom, &sig, &untyped, &bundle]);

    // Referrers are ordinary manifests.
    reg.assert_manifest(repo, &sig.digest(), OCI_MANIFEST, &sig.body).await;

    // Deleting a referrer removes it from the list.
    check(reg.delete(&format!("/v2/{repo}/manifests/{}", sig.digest())).await, 202).await;
    let (_, list) = referrers(&reg, repo, &s, None).await;
    assert_descriptors(&list, &[&sbom, &untyped, &bundle]);
}

#[tokio::test]
async fn referrers_of_a_digest_with_none() {
    let reg = Reg::start().await;
    let repo = "noref/app";
    let img = reg.push_image(repo, "v1", 56).await;
    let (h, list) = referrers(&reg, repo, &img.digest, None).await;
    assert_descriptors(&list, &[]);
    assert_eq!(header_opt(&h, "oci-filters-applied"), None, "no filter was requested");
    let (_, list) = referrers(&reg, repo, &unknown_digest(56), None).await;
    assert_descriptors(&list, &[]);
}

#[tokio::test]
async fn referrer_pushed_before_its_subject() {
    let reg = Reg::start().await;
    let repo = "early/app";
    // Build the subject but do not push its manifest yet.
    let config = config_blob(57);
    let layer = random_bytes(100, 57);
    let subject_body = image_manifest(
        OCI_MANIFEST,
        &desc(OCI_CONFIG, &config),
        &[desc(OCI_LAYER, &layer)],
        None,
    );
    let s = sha256_digest(&subject_body);
    let subject = desc(OCI_MANIFEST, &subject_body);

    let sig = image_artifact(
        &reg,
        repo,
        &subject,
        Some(SIG),
        Some(json!({ "org.example.kind": "sig" })),
        58,
    )
    .await;
    push_artifact(&reg, repo, &sig, &s).await;
    let (_, list) = referrers(&reg, repo, &s, None).await;
    assert_descriptors(&list, &[&sig]);

    // Pushing the subject afterwards changes nothing about the list.
    reg.push_blob(repo, &config).await;
    reg.push_blob(repo, &layer).await;
    reg.push_manifest(repo, "v1", OCI_MANIFEST, &subject_body).await;
    let (_, list) = referrers(&reg, repo, &s, None).await;
    assert_descriptors(&list, &[&sig]);
}

#[tokio::test]
async fn referrers_with_malformed_digest() {
    let reg = Reg::start().await;
    reg.push_image("badref/app", "v1", 59).await;
    for bad in ["latest", "sha256:xyz", "sha256:"] {
        expect_error(
            reg.get(&format!("/v2/badref/app/referrers/{bad}")).await,
            400,
            &["DIGEST_INVALID"],
        )
        .await;
    }
}
