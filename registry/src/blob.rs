//! Blob downloads: streamed into any sink, digest and size verified while streaming,
//! resumed with `Range` after a dropped connection.

use std::future::Future;
use std::io::{Read, Write};

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use kiln_types::Sha256;
use kiln_types::{Descriptor, Digest};
use reqwest::header::{HeaderValue, CONTENT_RANGE, RANGE};
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use crate::auth::Scope;
use crate::client::{status_error, AuthMode, RegistryClient, Request};
use crate::error::RegistryError;
use crate::reference::Reference;

/// How much of a blob a sink already holds, and the hash over those bytes. Start with
/// [`BlobProgress::new`]; to resume a partial download kept from an earlier run, rebuild it
/// from the partial bytes with [`BlobProgress::from_prefix`].
#[derive(Clone)]
pub struct BlobProgress {
    offset: u64,
    hasher: Sha256,
}

impl Default for BlobProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl BlobProgress {
    pub fn new() -> Self {
        BlobProgress {
            offset: 0,
            hasher: Sha256::new(),
        }
    }

    /// Hashes the bytes already held (say, a partial file in the store's ingest dir).
    pub fn from_prefix(mut reader: impl Read) -> std::io::Result<Self> {
        let mut progress = Self::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = reader.read(&mut buffer)?;
            if read == 0 {
                return Ok(progress);
            }
            progress.update(&buffer[..read]);
        }
    }

    /// Bytes held so far: the next download starts here.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.offset += bytes.len() as u64;
    }

    fn digest(&self) -> Digest {
        Digest::from_sha256(self.hasher.clone().finalize())
    }
}

/// A finished, verified blob download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobReceipt {
    pub digest: Digest,
    pub size: u64,
    /// How many times the download was resumed after a dropped connection.
    pub resumes: u32,
}

/// Where downloaded chunks go.
trait ChunkSink: Send {
    fn write_chunk(&mut self, chunk: Bytes) -> impl Future<Output = std::io::Result<()>> + Send;
    fn finish(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
}

struct AsyncWriterSink<'a, W>(&'a mut W);

impl<W: AsyncWrite + Unpin + Send> ChunkSink for AsyncWriterSink<'_, W> {
    async fn write_chunk(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.0.write_all(&chunk).await
    }
    async fn finish(&mut self) -> std::io::Result<()> {
        self.0.flush().await
    }
}

struct WriterSink<'a, W>(&'a mut W);

impl<W: Write + Send> ChunkSink for WriterSink<'_, W> {
    async fn write_chunk(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.0.write_all(&chunk)
    }
    async fn finish(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

struct ChannelSink(tokio::sync::mpsc::Sender<Result<Bytes, RegistryError>>);

impl ChunkSink for ChannelSink {
    async fn write_chunk(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.0.send(Ok(chunk)).await.map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "blob stream receiver dropped",
            )
        })
    }
    async fn finish(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl RegistryClient {
    /// Downloads a blob into an async writer, from `progress.offset()` on. The bytes are
    /// verified against `descriptor` (size and digest) as they pass; on a mismatch the error
    /// comes after the bytes were written, so the caller must discard what it wrote.
    pub async fn pull_blob<W: AsyncWrite + Unpin + Send>(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
        progress: BlobProgress,
        writer: &mut W,
    ) -> Result<BlobReceipt, RegistryError> {
        self.pull_blob_into(reference, descriptor, progress, AsyncWriterSink(writer))
            .await
    }

    /// Like [`RegistryClient::pull_blob`] into a blocking `Write` (each chunk is one short
    /// blocking write; fine for a local file).
    pub async fn pull_blob_to_writer<W: Write + Send>(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
        progress: BlobProgress,
        writer: &mut W,
    ) -> Result<BlobReceipt, RegistryError> {
        self.pull_blob_into(reference, descriptor, progress, WriterSink(writer))
            .await
    }

    /// A blob as a stream of chunks (from `progress.offset()` on). The stream ends with an
    /// `Err` item if the digest or size does not match; a clean end means verified bytes.
    /// Must be polled inside a tokio runtime (the download runs in a spawned task).
    pub fn blob_stream(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
        progress: BlobProgress,
    ) -> impl Stream<Item = Result<Bytes, RegistryError>> + Send + 'static {
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let client = self.clone();
        let reference = reference.clone();
        let descriptor = descriptor.clone();
        tokio::spawn(async move {
            let error_sender = sender.clone();
            let result = client
                .pull_blob_into(&reference, &descriptor, progress, ChannelSink(sender))
                .await;
            if let Err(error) = result {
                let _ = error_sender.send(Err(error)).await;
            }
        });
        futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        })
    }

    /// A small blob (a config) read whole into memory, verified, at most `limit` bytes.
    pub async fn fetch_blob_bytes(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
        limit: u64,
    ) -> Result<Bytes, RegistryError> {
        if descriptor.size > limit {
            return Err(RegistryError::InvalidResponse {
                url: format!("{}@{}", reference.name(), descriptor.digest),
                message: format!(
                    "blob of {} bytes is over the {limit} byte limit",
                    descriptor.size
                ),
            });
        }
        let mut buffer = Vec::with_capacity(descriptor.size as usize);
        self.pull_blob_to_writer(reference, descriptor, BlobProgress::new(), &mut buffer)
            .await?;
        Ok(Bytes::from(buffer))
    }

    async fn pull_blob_into<S: ChunkSink>(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
        mut progress: BlobProgress,
        mut sink: S,
    ) -> Result<BlobReceipt, RegistryError> {
        let expected_size = descriptor.size;
        let size_error = |found: u64| RegistryError::SizeMismatch {
            digest: descriptor.digest.clone(),
            expected: expected_size,
            found,
        };
        if progress.offset > expected_size {
            return Err(size_error(progress.offset));
        }
        let url = self.api_url(
            reference.registry(),
            &format!("v2/{}/blobs/{}", reference.repository(), descriptor.digest),
        )?;
        let mut resumes = 0u32;
        let mut failures = 1u32;
        while progress.offset < expected_size {
            let mut request = Request::new(
                Method::GET,
                url.clone(),
                AuthMode::Registry {
                    registry: reference.registry(),
                    scopes: vec![Scope::pull(reference.repository())],
                },
            );
            let start = progress.offset;
            if start > 0 {
                let range = HeaderValue::from_str(&format!("bytes={start}-")).map_err(|_| {
                    RegistryError::InvalidOption {
                        message: "bad range".into(),
                    }
                })?;
                request.headers.insert(RANGE, range);
            }
            let response = self.send(request).await?;
            let status = response.status();
            // How many bytes at the front of this body we already hold.
            let mut skip = match status {
                StatusCode::PARTIAL_CONTENT => {
                    let content_range = response
                        .headers()
                        .get(CONTENT_RANGE)
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or("");
                    if range_start(content_range) != Some(start) {
                        return Err(RegistryError::InvalidResponse {
                            url: url.to_string(),
                            message: format!(
                                "asked for bytes from {start}, got Content-Range {content_range:?}"
                            ),
                        });
                    }
                    0
                }
                // A server that ignores Range sends everything again: skip what we hold.
                StatusCode::OK => start,
                StatusCode::NOT_FOUND => {
                    return Err(RegistryError::NotFound {
                        reference: format!("{}@{}", reference.name(), descriptor.digest),
                        message: crate::client::error_message(response).await,
                    })
                }
                _ => return Err(status_error("GET", &url, response).await),
            };
            let mut body = response.bytes_stream();
            let mut dropped = None;
            while let Some(chunk) = body.next().await {
                let mut chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(error) => {
                        dropped = Some(error);
                        break;
                    }
                };
                if skip > 0 {
                    let skipped = skip.min(chunk.len() as u64);
                    skip -= skipped;
                    let _ = chunk.split_to(skipped as usize);
                    if chunk.is_empty() {
                        continue;
                    }
                }
                let after = progress.offset + chunk.len() as u64;
                if after > expected_size {
                    return Err(size_error(after));
                }
                progress.update(&chunk);
                sink.write_chunk(chunk).await?;
            }
            if progress.offset >= expected_size {
                break;
            }
            // The connection ended early (reset or EOF): resume from where we are.
            if failures >= self.options().max_attempts {
                return match dropped {
                    Some(source) => Err(RegistryError::Transport {
                        url: url.to_string(),
                        source,
                    }),
                    None => Err(size_error(progress.offset)),
                };
            }
            tokio::time::sleep(self.backoff(failures)).await;
            failures += 1;
            resumes += 1;
        }
        sink.finish().await?;
        let found = progress.digest();
        if found != descriptor.digest {
            return Err(RegistryError::DigestMismatch {
                expected: descriptor.digest.clone(),
                found,
            });
        }
        Ok(BlobReceipt {
            digest: found,
            size: progress.offset,
            resumes,
        })
    }
}

/// The first byte of `bytes START-END/TOTAL`.
fn range_start(content_range: &str) -> Option<u64> {
    let rest = content_range.trim().strip_prefix("bytes ")?;
    let (start, _) = rest.split_once('-')?;
    start.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes */200"), None);
        assert_eq!(range_start("items 1-2/3"), None);
    }

    #[test]
    fn progress_from_prefix_matches_whole_hash() {
        let data = b"hello world".repeat(10_000);
        let progress = BlobProgress::from_prefix(&data[..]).unwrap();
        assert_eq!(progress.offset(), data.len() as u64);
        assert_eq!(progress.digest(), Digest::of_bytes(&data));
    }
}
