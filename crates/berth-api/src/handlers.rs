use std::collections::HashMap;

use axum::body::Body;
use axum::extract::Request;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::Method;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use berth_oci::Digest;
use berth_oci::ErrorCode;
use berth_oci::Reference;
use berth_oci::RepoName;
use berth_oci::UploadId;
use berth_oci::media_types;
use berth_registry::BlobBody;
use berth_registry::BlobHead;
use berth_registry::MountResult;
use berth_registry::Page;
use berth_registry::RangeRequest;
use berth_registry::UploadStatus;
use serde_json::json;

use crate::AppState;
use crate::body;
use crate::endpoint;
use crate::endpoint::Endpoint;
use crate::endpoint::ParseError;
use crate::error::ApiError;
use crate::error::ApiResult;
use crate::metrics::EndpointName;

/// Listings without `n` are capped at this many entries per page.
const DEFAULT_PAGE: usize = 10_000;

type Query = HashMap<String, String>;

fn query(req: &Request) -> Query {
    req.uri()
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Parse the path, name the request's span after the endpoint, run its handler.
pub async fn dispatch(State(state): State<AppState>, req: Request) -> Response {
    let endpoint = match endpoint::parse(req.uri().path()) {
        Ok(e) => e,
        // No endpoint has this path: a plain 404, not an OCI code that would
        // claim something about a repository.
        Err(ParseError::NotFound) => return (StatusCode::NOT_FOUND, "404 page not found\n").into_response(),
        // No manifest can exist under a reference that is neither a tag nor a
        // digest: reading or deleting one finds nothing; pushing one is invalid.
        Err(ParseError::InvalidReference(e)) if req.method() != Method::PUT => {
            return ApiError::new(ErrorCode::ManifestUnknown, e.to_string()).into_response();
        }
        Err(ParseError::Invalid(e) | ParseError::InvalidReference(e)) => return ApiError::from(e).into_response(),
    };
    let head = req.method() == Method::HEAD;
    // Named on the request's own span (one span per request, not two): the
    // trace shows `GET manifest` with the repository instead of a bare path.
    let span = tracing::Span::current();
    if !span.is_disabled() {
        berth_telemetry::trace_context::rename(&span, || format!("{} {}", req.method(), endpoint.name()));
        span.record("endpoint", endpoint.name());
        span.record("repo", endpoint.repo().map(|r| r.as_str()).unwrap_or(""));
    }
    let name = endpoint.name();
    let resp = route(state, endpoint, req).await;
    let mut resp = match resp {
        Ok(r) => r,
        Err(e) if head => {
            // A HEAD response carries no body, only the status and headers.
            let mut r = e.status.into_response();
            r.headers_mut().extend(e.headers);
            r
        }
        Err(e) => e.into_response(),
    };
    resp.extensions_mut().insert(EndpointName(name));
    resp
}

fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::NotAllowed, "method not allowed on this endpoint")
}

async fn route(state: AppState, endpoint: Endpoint, req: Request) -> ApiResult {
    let m = req.method().clone();
    match (endpoint, m) {
        (Endpoint::Base, Method::GET | Method::HEAD) => Ok((StatusCode::OK, axum::Json(json!({}))).into_response()),
        (Endpoint::Catalog, Method::GET) => catalog(state, req).await,
        (Endpoint::Tags { repo }, Method::GET) => tags(state, repo, req).await,
        (Endpoint::Manifest { repo, reference }, Method::GET) => get_manifest(state, repo, reference, false).await,
        (Endpoint::Manifest { repo, reference }, Method::HEAD) => get_manifest(state, repo, reference, true).await,
        (Endpoint::Manifest { repo, reference }, Method::PUT) => put_manifest(state, repo, reference, req).await,
        (Endpoint::Manifest { repo, reference }, Method::DELETE) => {
            state.registry.delete_manifest(&repo, &reference).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        (Endpoint::Blob { repo, digest }, Method::GET) => get_blob(state, repo, digest, req, false).await,
        (Endpoint::Blob { repo, digest }, Method::HEAD) => get_blob(state, repo, digest, req, true).await,
        (Endpoint::Blob { repo, digest }, Method::DELETE) => {
            state.registry.delete_blob(&repo, &digest).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        (Endpoint::UploadStart { repo }, Method::POST) => start_upload(state, repo, req).await,
        (Endpoint::Upload { repo, id }, Method::PATCH) => patch_upload(state, repo, id, req).await,
        (Endpoint::Upload { repo, id }, Method::PUT) => finish_upload(state, repo, id, req).await,
        (Endpoint::Upload { repo, id }, Method::GET) => {
            let status = state.registry.upload_status(&repo, &id).await?;
            Ok(upload_response(StatusCode::NO_CONTENT, &repo, &status))
        }
        (Endpoint::Upload { repo, id }, Method::DELETE) => {
            state.registry.cancel_upload(&repo, &id).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Endpoint::Referrers { repo, digest }, Method::GET) => referrers(state, repo, digest, req).await,
        _ => Err(method_not_allowed()),
    }
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn with_headers(status: StatusCode, headers: &[(header::HeaderName, String)]) -> Response {
    let mut resp = status.into_response();
    for (k, v) in headers {
        resp.headers_mut().insert(k.clone(), header_value(v));
    }
    resp
}

fn docker_content_digest() -> header::HeaderName {
    header::HeaderName::from_static("docker-content-digest")
}

// ---- listings -----------------------------------------------------------------------

/// `n` and `last` of a paginated listing.
fn page_params(q: &Query) -> ApiResult<(usize, Option<String>)> {
    let n = match q.get("n") {
        Some(n) => n
            .parse::<usize>()
            .map_err(|_| ApiError::new(ErrorCode::PaginationNumberInvalid, "n must be a non-negative integer"))?,
        None => DEFAULT_PAGE,
    };
    Ok((n, q.get("last").cloned()))
}

fn paginated(path: &str, key: &str, name: Option<&RepoName>, page: Page, n: usize) -> Response {
    let mut body = serde_json::Map::new();
    if let Some(name) = name {
        body.insert("name".into(), json!(name.as_str()));
    }
    let next = page.items.last().cloned();
    body.insert(key.into(), json!(page.items));
    let mut resp = (StatusCode::OK, axum::Json(serde_json::Value::Object(body))).into_response();
    if page.more
        && let Some(last) = next
    {
        let last: String = form_urlencoded::byte_serialize(last.as_bytes()).collect();
        let link = format!("<{path}?last={last}&n={n}>; rel=\"next\"");
        resp.headers_mut().insert(header::LINK, header_value(&link));
    }
    resp
}

async fn catalog(state: AppState, req: Request) -> ApiResult {
    let (n, last) = page_params(&query(&req))?;
    let page = state.registry.catalog(last.as_deref(), n).await?;
    Ok(paginated("/v2/_catalog", "repositories", None, page, n))
}

async fn tags(state: AppState, repo: RepoName, req: Request) -> ApiResult {
    let (n, last) = page_params(&query(&req))?;
    let page = state.registry.list_tags(&repo, last.as_deref(), n).await?;
    Ok(paginated(
        &format!("/v2/{repo}/tags/list"),
        "tags",
        Some(&repo),
        page,
        n,
    ))
}

// ---- manifests ----------------------------------------------------------------------

async fn get_manifest(state: AppState, repo: RepoName, reference: Reference, head: bool) -> ApiResult {
    let m = state.registry.get_manifest(&repo, &reference).await?;
    let mut resp = if head {
        let mut r = StatusCode::OK.into_response();
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(m.bytes.len() as u64));
        r
    } else {
        (StatusCode::OK, m.bytes).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, header_value(&m.media_type));
    h.insert(docker_content_digest(), header_value(&m.digest.to_string()));
    h.insert(header::ETAG, header_value(&format!("\"{}\"", m.digest)));
    Ok(resp)
}

async fn put_manifest(state: AppState, repo: RepoName, reference: Reference, req: Request) -> ApiResult {
    let limit = state.registry.max_manifest_size();
    let too_large = |size: String| {
        ApiError::new(
            ErrorCode::ManifestTooLarge,
            format!("manifest of {size} bytes exceeds the limit of {limit} bytes"),
        )
    };
    let declared = body::content_length(req.headers());
    if let Some(n) = declared
        && n > limit as u64
        && n > body::DRAIN_LIMIT
    {
        // More than would ever be drained: refused from the declared length alone,
        // before any of the body is read. (A body up to the drain limit is read and
        // thrown away instead, so a client still sending sees the 413.)
        return Err(too_large(n.to_string()).with_header(header::CONNECTION, "close"));
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = match body::read_limited(req.into_body(), limit).await {
        Ok(b) => b,
        Err(body::Oversized::TooLarge { drained }) => {
            let size = declared.map_or_else(|| format!("more than {limit}"), |n| n.to_string());
            let err = too_large(size);
            return Err(if drained {
                err
            } else {
                err.with_header(header::CONNECTION, "close")
            });
        }
        Err(body::Oversized::Broken(e)) => {
            return Err(ApiError::new(
                ErrorCode::ManifestInvalid,
                format!("reading the manifest failed: {e}"),
            ));
        }
    };
    let res = state
        .registry
        .put_manifest(&repo, &reference, content_type.as_deref(), bytes.to_vec())
        .await?;
    let mut headers = vec![
        (header::LOCATION, format!("/v2/{repo}/manifests/{}", res.digest)),
        (docker_content_digest(), res.digest.to_string()),
    ];
    if let Some(subject) = res.subject {
        headers.push((header::HeaderName::from_static("oci-subject"), subject.to_string()));
    }
    Ok(with_headers(StatusCode::CREATED, &headers))
}

async fn referrers(state: AppState, repo: RepoName, digest: Digest, req: Request) -> ApiResult {
    let q = query(&req);
    let filter = q.get("artifactType").filter(|s| !s.is_empty());
    let (n, last) = page_params(&q)?;
    let last = match last {
        Some(l) => Some(Digest::parse(&l)?),
        None => None,
    };
    let page = state
        .registry
        .referrers(&repo, &digest, filter.map(|s| s.as_str()), last.as_ref(), n)
        .await?;
    let body = json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_INDEX,
        "manifests": page.items,
    });
    let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
    if let Some(next) = page.next {
        let mut link = format!("</v2/{repo}/referrers/{digest}?n={n}&last={next}");
        if let Some(at) = filter {
            let at: String = form_urlencoded::byte_serialize(at.as_bytes()).collect();
            link.push_str(&format!("&artifactType={at}"));
        }
        link.push_str(">; rel=\"next\"");
        resp.headers_mut().insert(header::LINK, header_value(&link));
    }
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(media_types::OCI_INDEX));
    if filter.is_some() {
        resp.headers_mut()
            .insert("oci-filters-applied", HeaderValue::from_static("artifactType"));
    }
    Ok(resp)
}

// ---- blobs --------------------------------------------------------------------------

/// The `Range` a request asks for, unless it is one to ignore; the registry holds
/// it against the blob.
fn range_request(headers: &HeaderMap) -> Option<RangeRequest> {
    let value = headers.get(header::RANGE)?;
    value
        .to_str()
        .map_or(Some(RangeRequest::Malformed), RangeRequest::parse)
}

fn blob_headers(digest: &Digest, head: &BlobHead) -> (StatusCode, Vec<(header::HeaderName, String)>) {
    let digest_s = digest.to_string();
    let mut headers = vec![
        (docker_content_digest(), digest_s.clone()),
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (header::ACCEPT_RANGES, "bytes".to_string()),
        (header::ETAG, format!("\"{digest_s}\"")),
        (header::CACHE_CONTROL, "max-age=31536000".to_string()),
    ];
    let size = head.size;
    let status = match head.range {
        Some(r) => {
            headers.push((header::CONTENT_RANGE, format!("bytes {}-{}/{size}", r.start, r.end - 1)));
            headers.push((header::CONTENT_LENGTH, r.len().to_string()));
            StatusCode::PARTIAL_CONTENT
        }
        None => {
            headers.push((header::CONTENT_LENGTH, size.to_string()));
            StatusCode::OK
        }
    };
    (status, headers)
}

async fn get_blob(state: AppState, repo: RepoName, digest: Digest, req: Request, head: bool) -> ApiResult {
    let range = range_request(req.headers());
    if head {
        let found = state.registry.head_blob(&repo, &digest, range).await?;
        let (status, headers) = blob_headers(&digest, &found);
        return Ok(with_headers(status, &headers));
    }
    let (found, body) = match state.registry.get_blob(&repo, &digest, range).await? {
        BlobBody::Stream { head, body } => (head, body),
        BlobBody::Redirect(url) => {
            let headers = [(header::LOCATION, url), (docker_content_digest(), digest.to_string())];
            return Ok(with_headers(StatusCode::TEMPORARY_REDIRECT, &headers));
        }
    };
    let (status, headers) = blob_headers(&digest, &found);
    let mut resp = Response::new(Body::from_stream(body));
    *resp.status_mut() = status;
    for (k, v) in headers {
        resp.headers_mut().insert(k, header_value(&v));
    }
    Ok(resp)
}

// ---- uploads ------------------------------------------------------------------------

fn upload_response(status: StatusCode, repo: &RepoName, s: &UploadStatus) -> Response {
    // `Range` is inclusive; an empty upload is reported as `0-0`, as clients expect.
    let end = s.offset.saturating_sub(1);
    with_headers(
        status,
        &[
            (header::LOCATION, format!("/v2/{repo}/blobs/uploads/{}", s.id)),
            (header::RANGE, format!("0-{end}")),
            (header::HeaderName::from_static("docker-upload-uuid"), s.id.to_string()),
            (header::CONTENT_LENGTH, "0".to_string()),
        ],
    )
}

fn blob_created(repo: &RepoName, digest: &Digest) -> Response {
    with_headers(
        StatusCode::CREATED,
        &[
            (header::LOCATION, format!("/v2/{repo}/blobs/{digest}")),
            (docker_content_digest(), digest.to_string()),
            (header::CONTENT_LENGTH, "0".to_string()),
        ],
    )
}

fn digest_param(q: &Query, name: &str) -> ApiResult<Option<Digest>> {
    match q.get(name) {
        None => Ok(None),
        Some(d) => Digest::parse(d).map(Some).map_err(|e| {
            // An unsupported algorithm in a request is still an invalid digest for it.
            ApiError::new(ErrorCode::DigestInvalid, e.to_string())
        }),
    }
}

async fn start_upload(state: AppState, repo: RepoName, req: Request) -> ApiResult {
    let q = query(&req);
    if let Some(digest) = digest_param(&q, "mount")? {
        let from = match q.get("from") {
            Some(f) => Some(RepoName::parse(f)?),
            None => None,
        };
        return Ok(match state.registry.mount_blob(&repo, &digest, from.as_ref()).await? {
            MountResult::Mounted(d) => blob_created(&repo, &d),
            MountResult::Upload(s) => upload_response(StatusCode::ACCEPTED, &repo, &s),
        });
    }
    if let Some(digest) = digest_param(&q, "digest")? {
        let length = body::content_length(req.headers());
        let stream = body::stream(req.into_body());
        state.registry.put_blob(&repo, &digest, stream, length).await?;
        return Ok(blob_created(&repo, &digest));
    }
    let status = state.registry.start_upload(&repo).await?;
    Ok(upload_response(StatusCode::ACCEPTED, &repo, &status))
}

/// `Content-Range: <start>-<end>` of a chunk (inclusive). The spec's form has no
/// unit; `bytes ` / `bytes=` prefixes are tolerated.
fn content_range(headers: &HeaderMap) -> ApiResult<Option<(u64, u64)>> {
    let Some(v) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let invalid = || ApiError::new(ErrorCode::UploadOutOfOrder, "malformed Content-Range");
    let s = v.to_str().map_err(|_| invalid())?.trim();
    let s = s
        .strip_prefix("bytes=")
        .or_else(|| s.strip_prefix("bytes "))
        .unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let (a, b) = s.split_once('-').ok_or_else(invalid)?;
    let a: u64 = a.trim().parse().map_err(|_| invalid())?;
    let b: u64 = b.trim().parse().map_err(|_| invalid())?;
    if b < a {
        return Err(invalid());
    }
    Ok(Some((a, b)))
}

/// Where a chunk starts and how long it is, from `Content-Range` and
/// `Content-Length`, which must agree.
fn chunk_bounds(headers: &HeaderMap) -> ApiResult<(Option<u64>, Option<u64>)> {
    let length = body::content_length(headers);
    match content_range(headers)? {
        None => Ok((None, length)),
        Some((a, b)) => {
            let n = b.checked_sub(a).and_then(|d| d.checked_add(1)).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UploadOutOfOrder,
                    format!("Content-Range {a}-{b} covers no length"),
                )
            })?;
            if let Some(l) = length
                && l != n
            {
                return Err(ApiError::new(
                    ErrorCode::UploadOutOfOrder,
                    format!("Content-Range {a}-{b} announces {n} bytes but Content-Length is {l}"),
                ));
            }
            Ok((Some(a), Some(n)))
        }
    }
}

async fn out_of_order(state: &AppState, repo: &RepoName, id: &UploadId, err: ApiError) -> ApiError {
    // Tell the client where the upload really is, so it can resume.
    match state.registry.upload_status(repo, id).await {
        Ok(s) => err
            .with_header(header::RANGE, &format!("0-{}", s.offset.saturating_sub(1)))
            .with_header(header::LOCATION, &format!("/v2/{repo}/blobs/uploads/{id}")),
        Err(_) => err,
    }
}

async fn patch_upload(state: AppState, repo: RepoName, id: UploadId, req: Request) -> ApiResult {
    let (start, length) = chunk_bounds(req.headers())?;
    let stream = body::stream(req.into_body());
    match state.registry.append_chunk(&repo, &id, start, length, stream).await {
        Ok(status) => Ok(upload_response(StatusCode::ACCEPTED, &repo, &status)),
        Err(e) => {
            let err = ApiError::from(e);
            if err.status == StatusCode::RANGE_NOT_SATISFIABLE {
                return Err(out_of_order(&state, &repo, &id, err).await);
            }
            Err(err)
        }
    }
}

async fn finish_upload(state: AppState, repo: RepoName, id: UploadId, req: Request) -> ApiResult {
    let q = query(&req);
    let digest = digest_param(&q, "digest")?
        .ok_or_else(|| ApiError::new(ErrorCode::DigestInvalid, "the digest query parameter is required"))?;
    let last = if body::has_body(req.headers()) {
        let (_, length) = chunk_bounds(req.headers())?;
        Some((body::stream(req.into_body()), length))
    } else {
        None
    };
    state.registry.finish_upload(&repo, &id, &digest, last).await?;
    Ok(blob_created(&repo, &digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_RANGE, HeaderValue::from_static("0-99"));
        assert_eq!(chunk_bounds(&h).unwrap(), (Some(0), Some(100)));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("50"));
        assert!(chunk_bounds(&h).is_err());
        h.insert(header::CONTENT_RANGE, HeaderValue::from_static("bytes 100-149/*"));
        assert_eq!(chunk_bounds(&h).unwrap(), (Some(100), Some(50)));
        // A range as wide as 64 bits has no length to announce: refused, no overflow.
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_static("0-18446744073709551615"),
        );
        let err = chunk_bounds(&h).unwrap_err();
        assert_eq!(err.status, StatusCode::RANGE_NOT_SATISFIABLE);
    }
}
