//! Upload hand-over: a request about an upload session reaches whichever node the
//! load balancer picked, but the session's in-memory state (running hash, bytes not
//! yet in a full part) lives on the node that owns it. The receiving node streams the
//! request to the owner over gRPC; the owner runs it and answers.
//!
//! This module carries opaque bytes: what a request means is `berth-registry`'s
//! business, which implements [`HandOverHandler`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::cluster::v1::HandOverFrame;
use berth_proto::cluster::v1::hand_over_frame::Kind;
use bytes::Bytes;
use futures::Stream;
use futures::StreamExt;

use crate::ClusterError;
use crate::RemoteError;
use crate::network::Peers;

/// A request body in transit.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static>>;

/// Runs handed-over requests on the owning node.
#[async_trait::async_trait]
pub trait HandOverHandler: Send + Sync + 'static {
    /// `header` is the caller's encoded request, `body` its bytes; the answer is the
    /// encoded reply, or the error the caller's client must see.
    async fn handle(&self, header: Vec<u8>, body: BodyStream) -> Result<Vec<u8>, RemoteError>;
}

pub(crate) type SharedHandler = Arc<std::sync::OnceLock<Arc<dyn HandOverHandler>>>;

/// A connection to the node that owns an upload session.
pub struct OwnerChannel {
    addr: String,
    channel: tonic::transport::Channel,
    timeout: Duration,
}

impl OwnerChannel {
    /// Connect now: only an owner that cannot be reached may be taken over, and only
    /// while the request body has not been consumed.
    pub(crate) async fn connect(peers: &Peers, addr: String, timeout: Duration) -> Result<OwnerChannel, ClusterError> {
        let channel = peers.connect(&addr).await?;
        Ok(OwnerChannel { addr, channel, timeout })
    }

    /// Send `header` and `body` to the owner and return its reply.
    pub async fn send(self, header: Vec<u8>, mut body: BodyStream) -> Result<Vec<u8>, ClusterError> {
        // The body is pumped into a channel by its own task: tonic's client-streaming
        // future over an arbitrary stream is not `Send` for every lifetime, while a
        // channel receiver is plain data.
        let (tx, rx) = tokio::sync::mpsc::channel::<HandOverFrame>(4);
        let pump = tokio::spawn(async move {
            if tx.send(frame(Kind::Header(header))).await.is_err() {
                return;
            }
            loop {
                let next = match body.next().await {
                    Some(Ok(d)) => frame(Kind::Data(d.to_vec())),
                    Some(Err(e)) => {
                        // Ending without the `end` frame tells the owner the body
                        // was cut off.
                        tracing::debug!(error = %e, "request body failed during hand-over");
                        return;
                    }
                    None => frame(Kind::End(true)),
                };
                let end = matches!(next.kind, Some(Kind::End(_)));
                if tx.send(next).await.is_err() || end {
                    return;
                }
            }
        });
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request.set_timeout(self.timeout);
        let result = crate::network::traced_client(self.channel).hand_over(request).await;
        pump.abort();
        match result {
            Ok(reply) => Ok(reply.into_inner().reply),
            Err(status) => Err(ClusterError::from_status(
                &status,
                &format!("upload owner {}", self.addr),
            )),
        }
    }
}

fn frame(kind: Kind) -> HandOverFrame {
    HandOverFrame { kind: Some(kind) }
}

/// Turn the frames after the header back into a body stream.
pub(crate) fn body_of(frames: tonic::Streaming<HandOverFrame>) -> BodyStream {
    let stream = futures::stream::unfold((frames, false), |(mut frames, ended)| async move {
        if ended {
            return None;
        }
        loop {
            match frames.next().await {
                Some(Ok(HandOverFrame {
                    kind: Some(Kind::Data(d)),
                })) => {
                    return Some((Ok(Bytes::from(d)), (frames, false)));
                }
                Some(Ok(HandOverFrame {
                    kind: Some(Kind::End(true)),
                })) => return None,
                Some(Ok(_)) => continue,
                Some(Err(status)) => {
                    let e = std::io::Error::other(format!("hand-over stream: {}", status.message()));
                    return Some((Err(e), (frames, true)));
                }
                None => {
                    let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "hand-over body was cut off");
                    return Some((Err(e), (frames, true)));
                }
            }
        }
    });
    Box::pin(stream)
}
