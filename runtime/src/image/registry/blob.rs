//! Blob downloads: a stream of chunks that survives broken connections, and
//! small blobs read whole.
//!
//! The stream counts every byte. When the connection breaks (or the body ends
//! early) it asks again with `Range: bytes=<next byte>-` on the same endpoint,
//! after a back-off; a server that ignores `Range` answers 200 with the whole
//! blob, and the bytes already delivered are skipped. Each failure that made no
//! progress since the previous one uses up one of the configured attempts;
//! progress resets the count, so a slow, flaky link still finishes a large
//! layer. The stream checks sizes only: hashing is the content store's job, as
//! it also holds the bytes before a resumed `offset`.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::{
    Credentials, Endpoint, RegistryClient, RegistryError, Request, combine, error_chain,
    read_limited, shown,
};
use crate::image::digest::Digest;
use crate::image::reference::Reference;

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A blob's bytes from `start` on, as they arrive.
pub struct BlobStream {
    /// The offset the data actually starts at: the requested offset, or 0 if
    /// the server ignored `Range` (the caller must then start over).
    pub start: u64,
    inner: Pin<Box<dyn Stream<Item = Result<Bytes, RegistryError>> + Send>>,
}

impl fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStream")
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes, RegistryError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().inner.as_mut().poll_next(cx)
    }
}

/// What a download fetches, from where: fixed for its lifetime and shared
/// (by reference) with the request futures, hence kept apart from the
/// mutable state and its non-`Sync` body.
struct Source {
    client: RegistryClient,
    ep: Endpoint,
    reference: Reference,
    digest: Digest,
    size: u64,
    creds: Option<Credentials>,
    url: reqwest::Url,
}

/// The state of one blob download.
struct Download {
    src: Source,
    /// Offset of the next byte to hand out.
    pos: u64,
    /// Bytes at the start of the current body that were handed out already.
    skip: u64,
    body: Option<Body>,
    failures: u32,
    pos_at_last_failure: u64,
    done: bool,
}

impl Source {
    /// GETs the blob from byte `from`; returns the body and the offset it starts at.
    async fn open(&self, from: u64) -> Result<(Body, u64), RegistryError> {
        let req = Request {
            ep: &self.ep,
            reference: &self.reference,
            url: self.url.clone(),
            accept: None,
            range_from: (from > 0).then_some(from),
            credentials: self.creds.as_ref(),
        };
        let response = match self.client.send(&req).await {
            // The blob ends before `from`: it is shorter than the manifest says.
            Err(RegistryError::Status { status: 416, .. }) => {
                return Err(self.size_error(from));
            }
            other => other?,
        };
        let start = if response.status().as_u16() == 206 {
            let content_range = response
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            match range_start(&content_range) {
                Some(s) if s == from => s,
                _ => {
                    return Err(RegistryError::ContentRange {
                        url: shown(&self.url),
                        reference: self.reference.to_string(),
                        digest: self.digest.clone(),
                        requested: from,
                        content_range,
                    });
                }
            }
        } else {
            0
        };
        if let Some(len) = response.content_length()
            && start + len != self.size
        {
            // Known wrong before reading a byte: fail now, not after the download.
            return Err(self.size_error(start + len));
        }
        Ok((Box::pin(response.bytes_stream()), start))
    }

    fn size_error(&self, received: u64) -> RegistryError {
        RegistryError::BlobSize {
            url: shown(&self.url),
            reference: self.reference.to_string(),
            digest: self.digest.clone(),
            expected: self.size,
            received,
        }
    }
}

impl Download {
    /// Counts a failure; waits and returns true if another try is allowed.
    async fn may_retry(&mut self, error: &RegistryError) -> bool {
        if self.pos > self.pos_at_last_failure {
            self.failures = 0;
        }
        self.pos_at_last_failure = self.pos;
        self.failures += 1;
        let retry = &self.src.client.inner.config.retry;
        if !error.is_retryable() || self.failures >= retry.attempts {
            return false;
        }
        let delay = retry.backoff(self.failures);
        tracing::warn!(digest = %self.src.digest, at = self.pos, size = self.src.size, error = %error, ?delay,
            "blob download broke; resuming");
        tokio::time::sleep(delay).await;
        true
    }

    async fn next_chunk(&mut self) -> Option<Result<Bytes, RegistryError>> {
        loop {
            if self.done {
                return None;
            }
            let Some(body) = self.body.as_mut() else {
                match self.src.open(self.pos).await {
                    Ok((body, start)) => {
                        self.skip = self.pos - start;
                        self.body = Some(body);
                    }
                    Err(e) => {
                        if !self.may_retry(&e).await {
                            self.done = true;
                            return Some(Err(e));
                        }
                    }
                }
                continue;
            };
            let mut ended_early = false;
            let error = match body.next().await {
                Some(Ok(mut chunk)) => {
                    if self.skip > 0 {
                        let n = self.skip.min(chunk.len() as u64);
                        chunk = chunk.slice(n as usize..);
                        self.skip -= n;
                        if chunk.is_empty() {
                            continue;
                        }
                    }
                    let received = self.pos + chunk.len() as u64;
                    if received > self.src.size {
                        self.done = true;
                        return Some(Err(self.src.size_error(received)));
                    }
                    self.pos = received;
                    return Some(Ok(chunk));
                }
                Some(Err(e)) => RegistryError::Connection {
                    url: shown(&self.src.url),
                    reference: self.src.reference.to_string(),
                    cause: format!(
                        "blob {} broke at byte {}: {}",
                        self.src.digest,
                        self.pos,
                        error_chain(e)
                    ),
                },
                None if self.pos == self.src.size && self.skip == 0 => {
                    self.done = true;
                    return None;
                }
                // Ended early without a transport error: treat as a break.
                None => {
                    ended_early = true;
                    RegistryError::Connection {
                        url: shown(&self.src.url),
                        reference: self.src.reference.to_string(),
                        cause: format!(
                            "blob {} ended at byte {} of {}",
                            self.src.digest, self.pos, self.src.size
                        ),
                    }
                }
            };
            self.body = None;
            if !self.may_retry(&error).await {
                self.done = true;
                // A body that keeps ending early is, in the end, a blob of the wrong size.
                let error = if ended_early {
                    self.src.size_error(self.pos)
                } else {
                    error
                };
                return Some(Err(error));
            }
        }
    }
}

/// `bytes 100-199/200` → 100.
fn range_start(content_range: &str) -> Option<u64> {
    let rest = content_range.trim().strip_prefix("bytes")?.trim_start();
    let (range, _total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    start.trim().parse().ok()
}

impl RegistryClient {
    /// A blob (config or layer) as a stream of chunks starting at `offset` (for
    /// resuming a partial download), with transparent retry and `Range` resume
    /// when the connection breaks mid-way. Every chunk is counted; the stream
    /// ends with an error if the total size differs from `size`. The digest is
    /// not checked here (see the module doc). Endpoints are tried in order
    /// until one starts the download; resumption stays on that endpoint.
    pub async fn fetch_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        offset: u64,
        creds: Option<&Credentials>,
    ) -> Result<BlobStream, RegistryError> {
        if offset > size {
            return Err(RegistryError::Offset {
                reference: r.to_string(),
                digest: digest.clone(),
                offset,
                size,
            });
        }
        if offset == size {
            // Nothing left to fetch; a `Range` past the end would only get a 416.
            return Ok(BlobStream {
                start: offset,
                inner: Box::pin(futures::stream::empty()),
            });
        }
        let mut errors = Vec::new();
        for ep in self.endpoints(r)? {
            match self.open_blob(&ep, r, digest, size, offset, creds).await {
                Ok(stream) => return Ok(stream),
                Err(e) => self.endpoint_failed(&ep, r, e, &mut errors),
            }
        }
        Err(combine(r, errors))
    }

    async fn open_blob(
        &self,
        ep: &Endpoint,
        r: &Reference,
        digest: &Digest,
        size: u64,
        offset: u64,
        creds: Option<&Credentials>,
    ) -> Result<BlobStream, RegistryError> {
        let src = Source {
            client: self.clone(),
            ep: ep.clone(),
            reference: r.clone(),
            digest: digest.clone(),
            size,
            creds: self.credentials(ep, creds)?,
            url: ep.url(&r.repository, &format!("blobs/{digest}"))?,
        };
        let s = &src;
        let (body, start) = self.retrying(move || s.open(offset)).await?;
        let download = Download {
            src,
            pos: start,
            skip: 0,
            body: Some(body),
            failures: 0,
            pos_at_last_failure: start,
            done: false,
        };
        let inner = futures::stream::unfold(download, |mut d| async move {
            let item = d.next_chunk().await?;
            Some((item, d))
        });
        Ok(BlobStream {
            start,
            inner: Box::pin(inner),
        })
    }

    /// A small blob (an image config) read whole: at most `max` bytes, digest
    /// verified.
    pub async fn fetch_blob_bytes(
        &self,
        r: &Reference,
        digest: &Digest,
        max: u64,
        creds: Option<&Credentials>,
    ) -> Result<Vec<u8>, RegistryError> {
        let mut errors = Vec::new();
        for ep in self.endpoints(r)? {
            match self.blob_bytes_on(&ep, r, digest, max, creds).await {
                Ok(bytes) => return Ok(bytes),
                Err(e) => self.endpoint_failed(&ep, r, e, &mut errors),
            }
        }
        Err(combine(r, errors))
    }

    async fn blob_bytes_on(
        &self,
        ep: &Endpoint,
        r: &Reference,
        digest: &Digest,
        max: u64,
        creds: Option<&Credentials>,
    ) -> Result<Vec<u8>, RegistryError> {
        let creds = self.credentials(ep, creds)?;
        let url = ep.url(&r.repository, &format!("blobs/{digest}"))?;
        let req = Request {
            ep,
            reference: r,
            url: url.clone(),
            accept: None,
            range_from: None,
            credentials: creds.as_ref(),
        };
        let (req, this) = (&req, self);
        let bytes = self
            .retrying(move || async move {
                let response = this.send(req).await?;
                read_limited(response, max)
                    .await
                    .map_err(|e| this.connection_error(req, &req.url, e))?
                    .ok_or_else(|| RegistryError::BlobTooLarge {
                        url: shown(&req.url),
                        reference: r.to_string(),
                        digest: digest.clone(),
                        limit: max,
                    })
            })
            .await?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(RegistryError::BlobDigest {
                url: shown(&url),
                reference: r.to_string(),
                digest: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::range_start;

    #[test]
    fn content_range() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes 0-0/*"), Some(0));
        assert_eq!(range_start("bytes */200"), None);
        assert_eq!(range_start("items 1-2/3"), None);
        assert_eq!(range_start(""), None);
    }
}
