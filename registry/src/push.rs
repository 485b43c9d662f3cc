//! Pushing: blob existence checks, cross-repository mounts, monolithic and chunked uploads,
//! manifest PUT.

use std::path::PathBuf;

use bytes::Bytes;
use kiln_types::{Descriptor, Digest};
use reqwest::header::{HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use url::Url;

use crate::auth::Scope;
use crate::client::{status_error, AuthMode, RegistryClient, Request};
use crate::error::RegistryError;
use crate::manifest::is_pushable_manifest_type;
use crate::reference::Reference;

/// Where a blob's bytes come from when pushing. Every variant can be read again, so a failed
/// upload can be retried.
#[derive(Debug, Clone)]
pub enum BlobSource {
    Bytes(Bytes),
    /// A file holding exactly the blob (a content store blob path).
    File(PathBuf),
}

/// What a blob push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobPushOutcome {
    /// The registry had it already.
    AlreadyPresent,
    /// Mounted from another repository of the same registry, no bytes sent.
    Mounted,
    /// Uploaded.
    Uploaded,
}

impl RegistryClient {
    /// Whether the repository has a blob; `Some(size)` if it does.
    pub async fn blob_exists(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        let url = self.api_url(
            reference.registry(),
            &format!("v2/{}/blobs/{digest}", reference.repository()),
        )?;
        let request = Request::new(
            Method::HEAD,
            url.clone(),
            AuthMode::Registry {
                registry: reference.registry(),
                scopes: vec![Scope::push(reference.repository())],
            },
        );
        let response = self.send(request).await?;
        match response.status() {
            status if status.is_success() => Ok(Some(
                crate::client::header_content_length(&response).unwrap_or(0),
            )),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(status_error("HEAD", &url, response).await),
        }
    }

    /// Pushes one blob to `reference`'s repository unless it is there already.
    pub async fn push_blob(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
        source: BlobSource,
    ) -> Result<BlobPushOutcome, RegistryError> {
        self.push_blob_mounting(reference, descriptor, source, None)
            .await
    }

    /// Pushes one blob, first trying to mount it from `mount_from` (another repository on
    /// the same registry): a 201 means mounted; a 202 means the registry opened an upload
    /// instead, which is used; a 401 (no pull right on the source) retries without the mount.
    pub async fn push_blob_mounting(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
        source: BlobSource,
        mount_from: Option<&Reference>,
    ) -> Result<BlobPushOutcome, RegistryError> {
        if self
            .blob_exists(reference, &descriptor.digest)
            .await?
            .is_some()
        {
            return Ok(BlobPushOutcome::AlreadyPresent);
        }
        let registry = reference.registry();
        let repository = reference.repository();
        let mount_from = mount_from
            .filter(|from| from.registry() == registry && from.repository() != repository);
        let mut upload_location = None;
        if let Some(from) = mount_from {
            let mut url = self.api_url(registry, &format!("v2/{repository}/blobs/uploads/"))?;
            url.query_pairs_mut()
                .append_pair("mount", descriptor.digest.as_str())
                .append_pair("from", from.repository());
            let mut request = Request::new(
                Method::POST,
                url.clone(),
                AuthMode::Registry {
                    registry,
                    scopes: vec![Scope::push(repository), Scope::pull(from.repository())],
                },
            );
            request
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
            match self.send(request).await {
                Ok(response) if response.status() == StatusCode::CREATED => {
                    return Ok(BlobPushOutcome::Mounted)
                }
                Ok(response) if response.status() == StatusCode::ACCEPTED => {
                    upload_location = Some(location_of(&url, &response)?);
                }
                // The token could not cover the source repository: upload plainly.
                Err(RegistryError::Unauthorized { .. }) => {}
                Ok(response) if response.status() == StatusCode::UNAUTHORIZED => {}
                Ok(response) => return Err(status_error("POST", &url, response).await),
                Err(error) => return Err(error),
            }
        }
        let location = match upload_location {
            Some(location) => location,
            None => self.start_upload(reference).await?,
        };
        self.upload(reference, descriptor, &source, location)
            .await?;
        Ok(BlobPushOutcome::Uploaded)
    }

    /// Opens an upload session; returns its location.
    async fn start_upload(&self, reference: &Reference) -> Result<Url, RegistryError> {
        let url = self.api_url(
            reference.registry(),
            &format!("v2/{}/blobs/uploads/", reference.repository()),
        )?;
        let mut request = Request::new(
            Method::POST,
            url.clone(),
            AuthMode::Registry {
                registry: reference.registry(),
                scopes: vec![Scope::push(reference.repository())],
            },
        );
        request
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let response = self.send(request).await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(status_error("POST", &url, response).await);
        }
        location_of(&url, &response)
    }

    async fn upload(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
        source: &BlobSource,
        mut location: Url,
    ) -> Result<(), RegistryError> {
        let auth = || AuthMode::Registry {
            registry: reference.registry(),
            scopes: vec![Scope::push(reference.repository())],
        };
        let size = descriptor.size;
        let monolithic = size <= self.options().monolithic_upload_limit;
        let mut final_body = Bytes::new();
        if monolithic {
            final_body = read_range(source, 0, size).await?;
        } else {
            let chunk_size = self.options().upload_chunk_size.max(1) as u64;
            let mut offset = 0u64;
            let mut recoveries = 0u32;
            while offset < size {
                let length = chunk_size.min(size - offset);
                let chunk = read_range(source, offset, length).await?;
                let mut request = Request::new(Method::PATCH, location.clone(), auth());
                request.headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                request.headers.insert(
                    CONTENT_RANGE,
                    header_value(&format!("{offset}-{}", offset + length - 1))?,
                );
                request.body = Some(chunk);
                match self.send(request).await {
                    Ok(response) if response.status() == StatusCode::ACCEPTED => {
                        location = location_of(&location, &response)?;
                        offset += length;
                        continue;
                    }
                    // The registry holds a different amount than we thought (a retried
                    // PATCH whose first try arrived): 416, or distribution's 404
                    // BLOB_UPLOAD_INVALID for a stale `_state`. Recover below.
                    Ok(response)
                        if matches!(
                            response.status(),
                            StatusCode::RANGE_NOT_SATISFIABLE
                                | StatusCode::NOT_FOUND
                                | StatusCode::BAD_REQUEST
                        ) => {}
                    // A server error that outlasted `send`'s retries: a reverse proxy answers
                    // 502 when the registry refused a stale PATCH and closed the connection
                    // before reading its body (after a connection reset mid-chunk). Where the
                    // session stands is unknown, as after a transport error: recover below.
                    Ok(response) if response.status().is_server_error() => {}
                    Ok(response) => return Err(status_error("PATCH", &location, response).await),
                    Err(error) if error.is_transient() => {}
                    Err(error) => return Err(error),
                }
                if recoveries >= self.options().max_attempts {
                    return Err(RegistryError::InvalidResponse {
                        url: location.to_string(),
                        message: format!("upload stalled at byte {offset} of {size}"),
                    });
                }
                recoveries += 1;
                tokio::time::sleep(self.backoff(recoveries)).await;
                // Ask where the session stands; a registry that dropped the session
                // (distribution cancels one resumed at a stale offset) gets a fresh one.
                match self.upload_status(reference, &location).await {
                    Ok((status_location, received)) => {
                        location = status_location;
                        offset = received.min(size);
                    }
                    Err(_) => {
                        location = self.start_upload(reference).await?;
                        offset = 0;
                    }
                }
            }
        }
        let mut url = location.clone();
        url.query_pairs_mut()
            .append_pair("digest", descriptor.digest.as_str());
        let mut request = Request::new(Method::PUT, url.clone(), auth());
        request.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        request
            .headers
            .insert(CONTENT_LENGTH, header_value(&final_body.len().to_string())?);
        request.body = Some(final_body);
        let failure = match self.send(request).await {
            Ok(response) if response.status() == StatusCode::CREATED => return Ok(()),
            Ok(response) => status_error("PUT", &url, response).await,
            Err(error) => error,
        };
        // A PUT whose answer was lost may have been committed (a retry then finds the
        // upload gone): the blob being there is success.
        if self
            .blob_exists(reference, &descriptor.digest)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            return Ok(());
        }
        Err(failure)
    }

    /// How many bytes an upload session holds (`GET <location>` -> 204 with
    /// `Range: 0-<last>`), and its current location.
    async fn upload_status(
        &self,
        reference: &Reference,
        location: &Url,
    ) -> Result<(Url, u64), RegistryError> {
        let request = Request::new(
            Method::GET,
            location.clone(),
            AuthMode::Registry {
                registry: reference.registry(),
                scopes: vec![Scope::push(reference.repository())],
            },
        );
        let response = self.send(request).await?;
        if response.status() != StatusCode::NO_CONTENT {
            return Err(status_error("GET", location, response).await);
        }
        let range = response
            .headers()
            .get(reqwest::header::RANGE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("0-0")
            .to_string();
        let received = range
            .trim()
            .trim_start_matches("bytes=")
            .split_once('-')
            .and_then(|(_, last)| last.trim().parse::<u64>().ok())
            // `0-0` means nothing (distribution writes it for an empty upload).
            .map(|last| if last == 0 { 0 } else { last + 1 })
            .unwrap_or(0);
        let next = match response.headers().get(LOCATION) {
            Some(_) => location_of(location, &response)?,
            None => location.clone(),
        };
        Ok((next, received))
    }

    /// PUTs a manifest or index under `reference`'s tag (or digest); returns its digest.
    pub async fn push_manifest(
        &self,
        reference: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Digest, RegistryError> {
        if !is_pushable_manifest_type(media_type) {
            return Err(RegistryError::UnsupportedMediaType {
                reference: reference.to_string(),
                media_type: media_type.to_string(),
            });
        }
        let digest = Digest::of_bytes(&bytes);
        if let Some(expected) = reference.digest() {
            if *expected != digest {
                return Err(RegistryError::DigestMismatch {
                    expected: expected.clone(),
                    found: digest,
                });
            }
        }
        let url = self.api_url(
            reference.registry(),
            &format!(
                "v2/{}/manifests/{}",
                reference.repository(),
                reference.tag().unwrap_or(digest.as_str())
            ),
        )?;
        let mut request = Request::new(
            Method::PUT,
            url.clone(),
            AuthMode::Registry {
                registry: reference.registry(),
                scopes: vec![Scope::push(reference.repository())],
            },
        );
        request
            .headers
            .insert(CONTENT_TYPE, header_value(media_type)?);
        request.body = Some(bytes);
        let response = self.send(request).await?;
        if response.status() != StatusCode::CREATED {
            return Err(status_error("PUT", &url, response).await);
        }
        if let Some(answered) = response
            .headers()
            .get("docker-content-digest")
            .and_then(|value| value.to_str().ok())
            .and_then(|text| Digest::parse(text.trim()).ok())
        {
            if answered != digest {
                return Err(RegistryError::DigestMismatch {
                    expected: digest,
                    found: answered,
                });
            }
        }
        Ok(digest)
    }
}

fn header_value(text: &str) -> Result<HeaderValue, RegistryError> {
    HeaderValue::from_str(text).map_err(|_| RegistryError::InvalidOption {
        message: format!("{text:?} is not a valid header value"),
    })
}

/// The `Location` of an upload answer, resolved against the request URL.
fn location_of(request_url: &Url, response: &reqwest::Response) -> Result<Url, RegistryError> {
    let invalid = |message: String| RegistryError::InvalidResponse {
        url: request_url.to_string(),
        message,
    };
    let location = response
        .headers()
        .get(LOCATION)
        .ok_or_else(|| invalid("upload answer without Location".into()))?
        .to_str()
        .map_err(|_| invalid("Location is not text".into()))?;
    let resolved = request_url
        .join(location)
        .map_err(|error| invalid(format!("bad Location {location:?}: {error}")))?;
    if request_url.scheme() == "https" && resolved.scheme() != "https" {
        return Err(RegistryError::InsecureRedirect {
            from: request_url.to_string(),
            to: resolved.to_string(),
        });
    }
    Ok(resolved)
}

/// `length` bytes of a source from `offset`.
async fn read_range(source: &BlobSource, offset: u64, length: u64) -> Result<Bytes, RegistryError> {
    match source {
        BlobSource::Bytes(bytes) => {
            let end = offset
                .checked_add(length)
                .filter(|end| *end <= bytes.len() as u64);
            match end {
                Some(end) => Ok(bytes.slice(offset as usize..end as usize)),
                None => Err(RegistryError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "blob source holds {} bytes, fewer than the descriptor's size",
                        bytes.len()
                    ),
                ))),
            }
        }
        BlobSource::File(path) => {
            let mut file = tokio::fs::File::open(path).await?;
            file.seek(std::io::SeekFrom::Start(offset)).await?;
            let mut buffer = Vec::with_capacity(length as usize);
            let read = (&mut file).take(length).read_to_end(&mut buffer).await?;
            if read as u64 != length {
                return Err(RegistryError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{} ends before the descriptor's size", path.display()),
                )));
            }
            Ok(Bytes::from(buffer))
        }
    }
}
