use std::pin::Pin;
use std::task::Context;
use std::task::Poll;

use berth_blob::ByteStream;
use bytes::Bytes;
use futures::Stream;

/// Passes a request body through, failing it when it carries more or fewer bytes
/// than the client announced (`Content-Length` or `Content-Range`). A failed input
/// stream makes the blob store discard everything it wrote for the request.
pub(crate) fn exact_length(inner: ByteStream, expected: u64) -> ByteStream {
    Box::pin(ExactLength {
        inner,
        expected,
        seen: 0,
        done: false,
    })
}

struct ExactLength {
    inner: ByteStream,
    expected: u64,
    seen: u64,
    done: bool,
}

impl Stream for ExactLength {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.seen += chunk.len() as u64;
                if self.seen > self.expected {
                    self.done = true;
                    let msg = format!("body longer than the announced {} bytes", self.expected);
                    return Poll::Ready(Some(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, msg))));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => {
                self.done = true;
                if self.seen != self.expected {
                    let msg = format!("body has {} bytes, {} were announced", self.seen, self.expected);
                    return Poll::Ready(Some(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, msg))));
                }
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn body(chunks: &[&'static [u8]]) -> ByteStream {
        let items: Vec<Result<Bytes, std::io::Error>> = chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        Box::pin(futures::stream::iter(items))
    }

    async fn collect(s: ByteStream) -> Result<usize, std::io::Error> {
        let mut n = 0;
        let mut s = s;
        while let Some(c) = s.next().await {
            n += c?.len();
        }
        Ok(n)
    }

    #[tokio::test]
    async fn exact_body_passes() {
        assert_eq!(collect(exact_length(body(&[b"ab", b"cd"]), 4)).await.unwrap(), 4);
    }

    #[tokio::test]
    async fn short_and_long_bodies_fail() {
        assert!(collect(exact_length(body(&[b"ab"]), 4)).await.is_err());
        assert!(collect(exact_length(body(&[b"abc", b"de"]), 4)).await.is_err());
    }
}
