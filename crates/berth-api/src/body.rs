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

/// How much of an oversized body is read and thrown away so the client sees the
/// error instead of a reset connection.
pub const DRAIN_LIMIT: u64 = 64 << 20;

/// Why [`read_limited`] gave up.
pub enum Oversized {
    /// The body is larger than the limit; `drained` says whether all of it was read
    /// (the connection can stay open) or the rest must be cut off.
    TooLarge { drained: bool },
    /// The client's stream failed.
    Broken(String),
}

/// Read a body of at most `limit` bytes. A larger body is read on (and discarded) up
/// to a bound, so that the client, still sending, receives the error response.
pub async fn read_limited(body: Body, limit: usize) -> Result<bytes::Bytes, Oversized> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut seen: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Oversized::Broken(e.to_string()))?;
        seen += chunk.len() as u64;
        if seen > limit as u64 {
            if seen > DRAIN_LIMIT {
                return Err(Oversized::TooLarge { drained: false });
            }
            continue;
        }
        buf.extend_from_slice(&chunk);
    }
    if seen > limit as u64 {
        return Err(Oversized::TooLarge { drained: true });
    }
    Ok(buf.freeze())
}
