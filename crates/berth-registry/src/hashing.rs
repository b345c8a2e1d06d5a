//! Hashing an upload body on its own thread while the body streams on to storage.
//!
//! sha256 runs at about one GiB/s per core: hashed inline, it adds its whole time to
//! a big push. [`hash_alongside`] hands each chunk (a cheap `Bytes` clone) to a
//! blocking thread that hashes while the request task goes on receiving and the
//! store writes. The channel is bounded, so a slow hasher slows the body down
//! instead of queueing it in memory: memory stays flat whatever the blob size.

use std::io;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;
use std::task::ready;

use berth_blob::ByteStream;
use berth_oci::Hasher;
use bytes::Bytes;
use futures::Stream;
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::PollSender;

/// Chunks waiting for the hasher at most.
const QUEUE: usize = 8;

/// Bodies shorter than this are hashed inline: a thread hand-off costs more.
pub(crate) const OFF_THREAD_MIN: u64 = 1024 * 1024;

/// The hasher continued over every chunk of the returned stream, once the stream
/// has been read to its end (or dropped).
pub(crate) type HashResult = JoinHandle<Hasher>;

/// `body`, unchanged, and `hasher` updated with its bytes on a blocking thread.
pub(crate) fn hash_alongside(body: ByteStream, mut hasher: Hasher) -> (ByteStream, HashResult) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(QUEUE);
    let span = tracing::Span::current();
    let done = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        while let Some(chunk) = rx.blocking_recv() {
            hasher.update(&chunk);
        }
        hasher
    });
    let tee = Tee {
        body,
        tx: PollSender::new(tx),
    };
    (Box::pin(tee), done)
}

/// Passes the body through and a copy of each chunk to the hashing thread.
struct Tee {
    body: ByteStream,
    tx: PollSender<Bytes>,
}

impl Stream for Tee {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // A slot for the next chunk first: the body waits while the hasher is behind.
        if ready!(self.tx.poll_reserve(cx)).is_err() {
            return Poll::Ready(Some(Err(io::Error::other("upload hashing stopped"))));
        }
        match ready!(self.body.poll_next_unpin(cx)) {
            Some(Ok(chunk)) => {
                if !chunk.is_empty() && self.tx.send_item(chunk.clone()).is_err() {
                    return Poll::Ready(Some(Err(io::Error::other("upload hashing stopped"))));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => {
                self.tx.close();
                Poll::Ready(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use berth_oci::DigestAlgorithm;

    use super::*;

    fn chunks(n: usize, size: usize) -> Vec<Bytes> {
        (0..n).map(|i| Bytes::from(vec![(i % 251) as u8; size])).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_hash_covers_every_chunk_in_order() {
        let parts = chunks(200, 10_000);
        let mut expected = Hasher::new(DigestAlgorithm::Sha256);
        parts.iter().for_each(|c| expected.update(c));
        let body: ByteStream = Box::pin(futures::stream::iter(parts.clone().into_iter().map(Ok)));

        let (mut tee, done) = hash_alongside(body, Hasher::new(DigestAlgorithm::Sha256));
        let mut passed = Vec::new();
        while let Some(c) = tee.next().await {
            passed.push(c.expect("chunk"));
        }
        drop(tee);
        assert_eq!(passed, parts);
        assert_eq!(done.await.expect("hasher").finalize(), expected.finalize());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_body_stops_the_hasher() {
        let body: ByteStream = Box::pin(futures::stream::iter(chunks(100, 1000).into_iter().map(Ok)));
        let (mut tee, done) = hash_alongside(body, Hasher::new(DigestAlgorithm::Sha256));
        tee.next().await.expect("one chunk").expect("ok");
        drop(tee);
        // The thread ends once the stream is gone: the join does not hang.
        tokio::time::timeout(std::time::Duration::from_secs(5), done)
            .await
            .expect("hasher thread ended")
            .expect("join");
    }
}
