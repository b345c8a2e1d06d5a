//! [`ForwardingBlobStore`]: the base of stores that wrap another store.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use berth_oci::Digest;

use crate::BlobError;
use crate::BlobPage;
use crate::BlobStore;
use crate::ByteRange;
use crate::ByteStream;

/// A store that wraps another [`BlobStore`] and changes part of its behaviour
/// (the read cache today; metrics and quota accounting next).
///
/// Every method defaults to the same method of [`inner`](Self::inner), so a
/// wrapper implements only what it changes. A method added to [`BlobStore`] is
/// added here once (a forwarding default plus a line of the blanket impl) and
/// reaches every wrapper's inner store without touching the wrappers. The
/// blanket impl makes every `ForwardingBlobStore` a [`BlobStore`], so a type
/// implements one of the two traits, never both.
///
/// The methods mirror [`BlobStore`]'s and keep its contracts; their one
/// lifetime `'a` is the one `#[async_trait]` gives the inner store's futures.
/// They return `impl Future` rather than going through `#[async_trait]`: an
/// override's future is stored inside the one box the blanket impl makes, so
/// an overridden method costs what a plain backend's does, and a forwarded one
/// what a hand-written forwarding call would (that box plus the inner store's).
/// An override may be written as an `async fn`.
///
/// With both traits imported, calling a method on a concrete wrapper is
/// ambiguous; call it through `dyn BlobStore` (as callers do) or name the trait.
pub trait ForwardingBlobStore: Send + Sync + 'static {
    /// The wrapped store.
    fn inner(&self) -> &dyn BlobStore;

    /// See [`BlobStore::kind`].
    fn kind(&self) -> &'static str {
        self.inner().kind()
    }

    /// See [`BlobStore::stat`].
    fn stat<'a>(&'a self, digest: &'a Digest) -> impl Future<Output = Result<Option<u64>, BlobError>> + Send + 'a {
        self.inner().stat(digest)
    }

    /// See [`BlobStore::get`].
    fn get<'a>(
        &'a self,
        digest: &'a Digest,
        range: Option<ByteRange>,
    ) -> impl Future<Output = Result<ByteStream, BlobError>> + Send + 'a {
        self.inner().get(digest, range)
    }

    /// See [`BlobStore::put`].
    fn put<'a>(
        &'a self,
        digest: &'a Digest,
        data: ByteStream,
    ) -> impl Future<Output = Result<u64, BlobError>> + Send + 'a {
        self.inner().put(digest, data)
    }

    /// See [`BlobStore::delete`].
    fn delete<'a>(&'a self, digest: &'a Digest) -> impl Future<Output = Result<(), BlobError>> + Send + 'a {
        self.inner().delete(digest)
    }

    /// See [`BlobStore::list`].
    fn list<'a>(
        &'a self,
        after: Option<&'a Digest>,
        limit: usize,
    ) -> impl Future<Output = Result<BlobPage, BlobError>> + Send + 'a {
        self.inner().list(after, limit)
    }

    /// See [`BlobStore::upload_create`].
    fn upload_create<'a>(&'a self, id: &'a str) -> impl Future<Output = Result<(), BlobError>> + Send + 'a {
        self.inner().upload_create(id)
    }

    /// See [`BlobStore::upload_append`].
    fn upload_append<'a>(
        &'a self,
        id: &'a str,
        offset: u64,
        data: ByteStream,
        on_chunk: &'a mut (dyn for<'c> FnMut(&'c [u8]) + Send),
    ) -> impl Future<Output = Result<u64, BlobError>> + Send + 'a {
        self.inner().upload_append(id, offset, data, on_chunk)
    }

    /// See [`BlobStore::upload_len`].
    fn upload_len<'a>(&'a self, id: &'a str) -> impl Future<Output = Result<u64, BlobError>> + Send + 'a {
        self.inner().upload_len(id)
    }

    /// See [`BlobStore::upload_read`].
    fn upload_read<'a>(&'a self, id: &'a str) -> impl Future<Output = Result<ByteStream, BlobError>> + Send + 'a {
        self.inner().upload_read(id)
    }

    /// See [`BlobStore::upload_commit`].
    fn upload_commit<'a>(
        &'a self,
        id: &'a str,
        digest: &'a Digest,
    ) -> impl Future<Output = Result<u64, BlobError>> + Send + 'a {
        self.inner().upload_commit(id, digest)
    }

    /// See [`BlobStore::upload_abort`].
    fn upload_abort<'a>(&'a self, id: &'a str) -> impl Future<Output = Result<(), BlobError>> + Send + 'a {
        self.inner().upload_abort(id)
    }

    /// See [`BlobStore::upload_list`].
    fn upload_list(&self) -> impl Future<Output = Result<Vec<String>, BlobError>> + Send {
        self.inner().upload_list()
    }

    /// See [`BlobStore::presigned_get`].
    fn presigned_get<'a>(
        &'a self,
        digest: &'a Digest,
        expires: Duration,
    ) -> impl Future<Output = Result<Option<String>, BlobError>> + Send + 'a {
        self.inner().presigned_get(digest, expires)
    }

    /// See [`BlobStore::check_writable`].
    fn check_writable(&self) -> impl Future<Output = Result<(), BlobError>> + Send {
        self.inner().check_writable()
    }
}

#[async_trait]
impl<T: ForwardingBlobStore> BlobStore for T {
    fn kind(&self) -> &'static str {
        ForwardingBlobStore::kind(self)
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, BlobError> {
        ForwardingBlobStore::stat(self, digest).await
    }

    async fn get(&self, digest: &Digest, range: Option<ByteRange>) -> Result<ByteStream, BlobError> {
        ForwardingBlobStore::get(self, digest, range).await
    }

    async fn put(&self, digest: &Digest, data: ByteStream) -> Result<u64, BlobError> {
        ForwardingBlobStore::put(self, digest, data).await
    }

    async fn delete(&self, digest: &Digest) -> Result<(), BlobError> {
        ForwardingBlobStore::delete(self, digest).await
    }

    async fn list(&self, after: Option<&Digest>, limit: usize) -> Result<BlobPage, BlobError> {
        ForwardingBlobStore::list(self, after, limit).await
    }

    async fn upload_create(&self, id: &str) -> Result<(), BlobError> {
        ForwardingBlobStore::upload_create(self, id).await
    }

    async fn upload_append(
        &self,
        id: &str,
        offset: u64,
        data: ByteStream,
        on_chunk: &mut (dyn for<'c> FnMut(&'c [u8]) + Send),
    ) -> Result<u64, BlobError> {
        ForwardingBlobStore::upload_append(self, id, offset, data, on_chunk).await
    }

    async fn upload_len(&self, id: &str) -> Result<u64, BlobError> {
        ForwardingBlobStore::upload_len(self, id).await
    }

    async fn upload_read(&self, id: &str) -> Result<ByteStream, BlobError> {
        ForwardingBlobStore::upload_read(self, id).await
    }

    async fn upload_commit(&self, id: &str, digest: &Digest) -> Result<u64, BlobError> {
        ForwardingBlobStore::upload_commit(self, id, digest).await
    }

    async fn upload_abort(&self, id: &str) -> Result<(), BlobError> {
        ForwardingBlobStore::upload_abort(self, id).await
    }

    async fn upload_list(&self) -> Result<Vec<String>, BlobError> {
        ForwardingBlobStore::upload_list(self).await
    }

    async fn presigned_get(&self, digest: &Digest, expires: Duration) -> Result<Option<String>, BlobError> {
        ForwardingBlobStore::presigned_get(self, digest, expires).await
    }

    async fn check_writable(&self) -> Result<(), BlobError> {
        ForwardingBlobStore::check_writable(self).await
    }
}
