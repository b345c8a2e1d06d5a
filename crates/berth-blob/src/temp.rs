//! The one path by which blob bytes become a trusted local file: stream them into
//! a temp file while hashing, check the digest, then rename the file into its
//! content-addressed place (fs puts, cache fills) or hand it to the caller (the
//! S3 put uploads it and drops it).
//!
//! Invariants, whoever the caller is: memory stays bounded (the bytes go through
//! a [`FileWriter`]: two batches at most); a temp file exists only while its
//! [`TempBlob`] or [`VerifiedTemp`] does, so a caller cancelled at any point
//! leaves none behind (removal on drop), and every error path has removed it
//! before the error is returned; a file is only ever renamed into place after
//! its digest matched.

use std::fs::File;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use berth_oci::Digest;
use berth_oci::Hasher;
use bytes::Bytes;
use futures::StreamExt;

use crate::BlobError;
use crate::ByteStream;
use crate::fs::FileWriter;
use crate::fs::TempFile;
use crate::fs::blocking;
use crate::fs::create_temp;
use crate::fs::ensure_dir;
use crate::fs::parent_of;
use crate::fs::sync_dir;

/// A temp file receiving the bytes of the blob `digest`, hashed as they are written.
pub(crate) struct TempBlob {
    writer: FileWriter,
    temp: TempFile,
    path: PathBuf,
    digest: Digest,
}

impl TempBlob {
    /// Create a new temp file `<dir>/<prefix>-<uuid>` for the blob `digest`.
    pub(crate) async fn create(dir: &Path, prefix: &str, digest: &Digest) -> Result<Self, BlobError> {
        let path = dir.join(format!("{prefix}-{}", uuid::Uuid::new_v4()));
        let (file, temp) = create_temp(path.clone()).await?;
        Ok(TempBlob {
            writer: FileWriter::with_hasher(file, 0, Hasher::new(digest.algorithm())),
            temp,
            path,
            digest: digest.clone(),
        })
    }

    /// For a file that will be fsynced: each batch starts going to disk as soon
    /// as it is written (see [`FileWriter::durable`]).
    pub(crate) fn durable(mut self) -> Self {
        self.writer = self.writer.durable();
        self
    }

    /// With `on`, whole aligned batches are written with direct I/O.
    pub(crate) fn direct(mut self, on: bool) -> Self {
        self.writer = self.writer.direct(on);
        self
    }

    /// Another descriptor of the temp file, for reading what is written while
    /// it is being written (it stays valid after the rename).
    pub(crate) fn reader(&self) -> io::Result<File> {
        self.writer.file().try_clone()
    }

    /// Offset up to which the file is written and readable (see
    /// [`FileWriter::completed`]).
    pub(crate) async fn completed(&mut self) -> io::Result<u64> {
        self.writer.completed().await
    }

    /// Write `chunk` (empty chunks are fine). On error, call [`abort`](Self::abort).
    pub(crate) async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        self.writer.write(chunk).await
    }

    /// Write a client's body (an `Err` item is [`BlobError::Client`]), then
    /// [`finish`](Self::finish).
    pub(crate) async fn receive(mut self, mut data: ByteStream) -> Result<VerifiedTemp, BlobError> {
        let written: Result<(), BlobError> = async {
            while let Some(item) = data.next().await {
                self.writer.write(item.map_err(BlobError::Client)?).await?;
            }
            Ok(())
        }
        .await;
        match written {
            Ok(()) => self.finish().await,
            Err(e) => {
                self.abort().await;
                Err(e)
            }
        }
    }

    /// Write out what is buffered and check the digest
    /// ([`BlobError::DigestMismatch`]); on any error the temp file is gone.
    pub(crate) async fn finish(mut self) -> Result<VerifiedTemp, BlobError> {
        let size = match self.writer.flush().await {
            Ok(size) => size,
            Err(e) => {
                self.abort().await;
                return Err(e.into());
            }
        };
        let Some(hasher) = self.writer.take_hasher() else {
            self.temp.remove().await;
            return Err(BlobError::Backend("temp blob: hasher lost".into()));
        };
        let actual = hasher.finalize();
        if actual != self.digest {
            self.temp.remove().await;
            return Err(BlobError::DigestMismatch {
                expected: self.digest.to_string(),
                actual: actual.to_string(),
            });
        }
        // The writer's buffers go now; only the descriptor is kept.
        Ok(VerifiedTemp {
            file: Arc::clone(self.writer.file()),
            temp: self.temp,
            path: self.path,
            size,
        })
    }

    /// Give up: wait for the batch in flight, then remove the file.
    pub(crate) async fn abort(mut self) {
        self.writer.wait_quiet().await;
        self.temp.remove().await;
    }
}

/// A temp file holding exactly the bytes of its blob (digest checked).
pub(crate) struct VerifiedTemp {
    file: Arc<File>,
    temp: TempFile,
    path: PathBuf,
    size: u64,
}

impl VerifiedTemp {
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// fdatasync the file; on error it is removed.
    pub(crate) async fn sync(mut self) -> Result<Self, BlobError> {
        let file = Arc::clone(&self.file);
        match blocking(move || file.sync_data()).await {
            Ok(()) => Ok(self),
            Err(e) => {
                self.temp.remove().await;
                Err(e.into())
            }
        }
    }

    /// Rename the file to `dst` (creating its shard directory) and make the
    /// rename durable; returns the size. On error the temp file is removed.
    pub(crate) async fn persist(mut self, dst: PathBuf) -> Result<u64, BlobError> {
        let src = self.path.clone();
        let moved = blocking(move || {
            let parent = parent_of(&dst)?;
            ensure_dir(parent)?;
            std::fs::rename(&src, &dst)?;
            sync_dir(parent)
        })
        .await;
        match moved {
            Ok(()) => {
                self.temp.disarm();
                Ok(self.size)
            }
            Err(e) => {
                self.temp.remove().await;
                Err(e.into())
            }
        }
    }

    /// Remove the file (and wait for that).
    pub(crate) async fn discard(mut self) {
        self.temp.remove().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    fn body(chunks: Vec<io::Result<Bytes>>) -> ByteStream {
        Box::pin(futures::stream::iter(chunks))
    }

    #[tokio::test]
    async fn a_verified_body_is_persisted_whole() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let data: Vec<u8> = (0..3 * 1024 * 1024 + 5).map(|i| (i % 253) as u8).collect();
        let digest = Digest::sha256_of(&data);
        let chunks = data.chunks(70_001).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let verified = TempBlob::create(&tmp, "t", &digest)
            .await
            .unwrap()
            .durable()
            .receive(body(chunks))
            .await
            .unwrap();
        assert_eq!(verified.size(), data.len() as u64);
        assert_eq!(std::fs::read(verified.path()).unwrap(), data);
        let dst = dir.path().join("blobs/sha256/ab/blob");
        let size = verified.sync().await.unwrap().persist(dst.clone()).await.unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(std::fs::read(&dst).unwrap(), data);
        assert_eq!(entries(&tmp), 0, "the temp file became the blob");
    }

    #[tokio::test]
    async fn a_wrong_or_failed_body_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let claimed = Digest::sha256_of(b"something else");
        let res = TempBlob::create(dir.path(), "t", &claimed)
            .await
            .unwrap()
            .receive(body(vec![Ok(Bytes::from_static(b"abc"))]))
            .await;
        match res {
            Err(BlobError::DigestMismatch { expected, actual }) => {
                assert_eq!(expected, claimed.to_string());
                assert_eq!(actual, Digest::sha256_of(b"abc").to_string());
            }
            Err(e) => panic!("expected a digest mismatch, got {e:?}"),
            Ok(_) => panic!("expected a digest mismatch, got a verified file"),
        }
        assert_eq!(entries(dir.path()), 0);

        let digest = Digest::sha256_of(b"abcdef");
        let failing = body(vec![
            Ok(Bytes::from_static(b"abc")),
            Err(io::Error::new(io::ErrorKind::ConnectionReset, "gone")),
        ]);
        let res = TempBlob::create(dir.path(), "t", &digest)
            .await
            .unwrap()
            .receive(failing)
            .await;
        assert!(
            matches!(res, Err(BlobError::Client(_))),
            "the body's error is the client's"
        );
        assert_eq!(entries(dir.path()), 0);

        let verified = TempBlob::create(dir.path(), "t", &digest)
            .await
            .unwrap()
            .receive(body(vec![Ok(Bytes::from_static(b"abcdef"))]))
            .await
            .unwrap();
        assert_eq!(entries(dir.path()), 1);
        verified.discard().await;
        assert_eq!(entries(dir.path()), 0);
    }
}
