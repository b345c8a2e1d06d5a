use axum::body::Body;
use axum::http::HeaderMap;
use axum::http::header;
use berth_registry::ByteStream;
use futures::TryStreamExt;

/// The request body as a byte stream for the registry; a broken connection becomes a
/// stream error, which makes storage discard what it wrote for the request.
pub fn stream(body: Body) -> ByteStream {
    Box::pin(body.into_data_stream().map_err(std::io::Error::other))
}

pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Does the request carry a body (a non-zero length or a chunked transfer)?
pub fn has_body(headers: &HeaderMap) -> bool {
    match content_length(headers) {
        Some(n) => n > 0,
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}
