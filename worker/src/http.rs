//! `ADD <url>`: the file downloaded (checksum verified when given) into a fresh snapshot,
//! streamed to disk as it arrives.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;

use kiln_frontend::dag::HttpSource;
use kiln_snapshotter::CommitOptions;
use kiln_solver::{ExecContext, WorkerError};
use kiln_types::Digest;

use crate::build::{BuildError, BuildWorker};
use crate::value::Value;

/// Downloads an HTTP source into a one-file snapshot.
pub async fn download(
    worker: &BuildWorker,
    http: &HttpSource,
    context: &ExecContext,
) -> Result<Value, WorkerError> {
    let file_name = http.filename.rsplit('/').next().unwrap_or("").to_string();
    if file_name.is_empty() || file_name == "." || file_name == ".." {
        return Err(BuildError::Other(format!("{}: no usable file name", http.url)).into());
    }
    // reqwest is built without a default crypto provider (as in the registry client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().build()?;
    let mut response = client.get(&http.url).send().await?;
    if !response.status().is_success() {
        return Err(BuildError::Other(format!("{}: {}", http.url, response.status())).into());
    }
    // Streamed into the snapshot while hashed, never held whole in memory; a failed or
    // mismatching download drops the snapshot.
    let snapshotter = worker.store.snapshotter();
    let active = snapshotter.prepare(&worker.lease, None)?;
    let path = active.mountpoint().join(&file_name);
    let mut file = std::fs::File::create(&path)?;
    let mut hasher = kiln_types::Sha256::new();
    let mut size: u64 = 0;
    while let Some(chunk) = response.chunk().await? {
        hasher.update(&chunk);
        size += chunk.len() as u64;
        tokio::task::block_in_place(|| file.write_all(&chunk))?;
    }
    let digest = Digest::from_sha256(hasher.finalize());
    if let Some(expected) = &http.checksum {
        if &digest != expected {
            return Err(BuildError::Other(format!(
                "{}: checksum mismatch: expected {expected}, got {digest}",
                http.url
            ))
            .into());
        }
    }
    context.log(
        kiln_solver::LogStream::Stdout,
        format!("downloaded {size} bytes\n").as_bytes(),
    );
    file.set_permissions(std::fs::Permissions::from_mode(
        http.permissions.unwrap_or(0o600),
    ))?;
    drop(file);
    let id = snapshotter.commit(active, CommitOptions::default())?;
    Ok(Value::snapshot(id))
}
