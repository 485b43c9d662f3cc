//! Operations on the images of the local store: list, inspect, tag, remove, prune.
//!
//! An image's id is the digest of its config, as Docker's image ids are, so `kiln rmi 3f2a`
//! and `kiln inspect 3f2a` find it by a prefix of the id `kiln images` shows; the digest of
//! the manifest its name points at is its digest (`kiln images --digests`).

use std::collections::BTreeMap;

use kiln_snapshotter::{
    ImageRecord, PruneOptions, PruneReport, ResolvedImage, SnapshotRecord, Store,
};
use kiln_types::{Digest, Platform};
use serde_json::{json, Value};

use crate::error::{ImageError, Result};
use crate::reference::{familiar_name, find_image, image_id, normalize_name, split_store_name};

/// One row of `kiln images`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    /// The full stored name (`docker.io/library/busybox:latest`).
    pub name: String,
    /// Repository in Docker's short form (`busybox`, `127.0.0.1:5000/app`).
    pub repository: String,
    /// The tag, `None` for a name pinned by digest.
    pub tag: Option<String>,
    /// The image id: the config digest (see [`crate::image_id`]).
    pub id: Digest,
    /// The digest of the manifest (or index) the name points at.
    pub digest: Digest,
    /// The config's `created`, RFC 3339.
    pub created: Option<String>,
    /// Bytes of the unpacked layers (their uncompressed tar sizes) when known, else of the
    /// compressed layers.
    pub size: u64,
}

/// Every tagged image, sorted by name. Images whose documents cannot be read are listed
/// with what is known.
pub fn list_images(store: &Store) -> Result<Vec<ImageSummary>> {
    let records = store
        .images()
        .map_err(ImageError::store("listing images"))?;
    let snapshot_sizes = snapshot_sizes(store)?;
    let mut rows = Vec::with_capacity(records.len());
    for record in records {
        let (repository, tag) = split_store_name(&record.name);
        let resolved = store.resolve_layers(&record.target, &Platform::host()).ok();
        rows.push(ImageSummary {
            repository: familiar_name(repository).to_string(),
            tag: tag.map(str::to_string),
            id: resolved
                .as_ref()
                .map(|resolved| resolved.manifest.config.digest.clone())
                .unwrap_or_else(|| record.target.digest.clone()),
            digest: record.target.digest.clone(),
            created: resolved
                .as_ref()
                .and_then(|resolved| resolved.config.created.clone()),
            size: resolved
                .as_ref()
                .map(|resolved| image_size(resolved, &snapshot_sizes))
                .unwrap_or(0),
            name: record.name,
        });
    }
    Ok(rows)
}

fn snapshot_sizes(store: &Store) -> Result<BTreeMap<String, u64>> {
    let records: Vec<SnapshotRecord> = store
        .snapshotter()
        .list()
        .map_err(ImageError::store("listing snapshots"))?;
    Ok(records
        .into_iter()
        .filter_map(|record| Some((record.id.to_string(), record.size?)))
        .collect())
}

fn image_size(resolved: &ResolvedImage, snapshot_sizes: &BTreeMap<String, u64>) -> u64 {
    resolved
        .layers
        .iter()
        .map(|layer| {
            layer
                .snapshot
                .as_ref()
                .and_then(|id| snapshot_sizes.get(&id.to_string()).copied())
                .unwrap_or(layer.descriptor.size)
        })
        .sum()
}

/// Everything known about a local image, as JSON: names, manifest, config, layers (with
/// diff ids, chain ids and snapshots) and size.
pub fn inspect(store: &Store, reference: &str) -> Result<Value> {
    let record = find_image(store, reference)?;
    let resolved = store
        .resolve_layers(&record.target, &Platform::host())
        .map_err(ImageError::store(format!("reading image {}", record.name)))?;
    let id = resolved.manifest.config.digest.clone();
    let sharing: Vec<ImageRecord> = store
        .images()
        .map_err(ImageError::store("listing images"))?
        .into_iter()
        .filter(|other| other.target.digest == record.target.digest || image_id(store, other) == id)
        .collect();
    let names: Vec<String> = sharing.iter().map(|other| other.name.clone()).collect();
    // Docker's RepoDigests: repository@digest of what each name points at.
    let repo_digests: std::collections::BTreeSet<String> = sharing
        .iter()
        .map(|other| {
            let (repository, _tag) = split_store_name(&other.name);
            format!("{repository}@{}", other.target.digest)
        })
        .collect();
    let snapshot_sizes = snapshot_sizes(store)?;
    let layers: Vec<Value> = resolved
        .layers
        .iter()
        .map(|layer| {
            json!({
                "MediaType": layer.descriptor.media_type,
                "Digest": layer.descriptor.digest,
                "Size": layer.descriptor.size,
                "DiffID": layer.diff_id,
                "ChainID": layer.chain_id,
                "Snapshot": layer.snapshot.as_ref().map(|id| id.to_string()),
                "UnpackedSize": layer
                    .snapshot
                    .as_ref()
                    .and_then(|id| snapshot_sizes.get(&id.to_string())),
            })
        })
        .collect();
    Ok(json!({
        "Id": id,
        "Name": record.name,
        "RepoTags": names,
        "RepoDigests": repo_digests,
        "Digest": record.target.digest,
        "Created": resolved.config.created,
        "Architecture": resolved.config.architecture,
        "Os": resolved.config.os,
        "Variant": resolved.config.variant,
        "Size": image_size(&resolved, &snapshot_sizes),
        "Target": record.target,
        "ManifestDescriptor": resolved.manifest_descriptor,
        "Manifest": resolved.manifest,
        "ConfigDigest": resolved.manifest.config.digest,
        "Config": resolved.config,
        "Layers": layers,
        "TopSnapshot": resolved.top_snapshot().map(|id| id.to_string()),
    }))
}

/// Gives the image found by `source` the name `target` (normalized; a tag, not a digest).
pub fn tag(store: &Store, source: &str, target: &str) -> Result<ImageRecord> {
    let found = find_image(store, source)?;
    let name = normalize_name(target)?;
    if name.contains('@') {
        return Err(ImageError::Reference {
            text: target.to_string(),
            source: kiln_registry::ReferenceError::Invalid {
                reference: target.to_string(),
                reason: "a tag cannot name a digest",
            },
        });
    }
    store
        .put_image(&name, &found.target)
        .map_err(ImageError::store(format!("tagging {name}")))
}

/// What removing one image reference did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The names untagged.
    pub untagged: Vec<String>,
    /// The image id (config digest), when no name points at that image any more.
    pub deleted: Option<Digest>,
}

/// Removes an image reference, as `docker rmi`: a name untags that name; an id (a prefix of
/// the config digest, or of the manifest digest) untags every name of that image, which is
/// refused when several names share it unless `force`. The content goes at the next
/// [`prune`].
pub fn remove_image(store: &Store, reference: &str, force: bool) -> Result<Removed> {
    let found = find_image(store, reference)?;
    let id = image_id(store, &found);
    let by_name = normalize_name(reference)
        .map(|name| name == found.name)
        .unwrap_or(false)
        || reference == found.name;
    let all = store
        .images()
        .map_err(ImageError::store("listing images"))?;
    let sharing: Vec<String> = all
        .iter()
        .filter(|other| image_id(store, other) == id)
        .map(|other| other.name.clone())
        .collect();
    let untag: Vec<String> = if by_name {
        vec![found.name.clone()]
    } else if sharing.len() > 1 && !force {
        return Err(ImageError::Conflict {
            reference: reference.to_string(),
            message: format!(
                "image is referenced by {} names ({}): remove them by name or use --force",
                sharing.len(),
                sharing.join(", ")
            ),
        });
    } else {
        sharing.clone()
    };
    for name in &untag {
        store
            .remove_image(name)
            .map_err(ImageError::store(format!("untagging {name}")))?;
    }
    let still_named = store
        .images()
        .map_err(ImageError::store("listing images"))?
        .iter()
        .any(|other| image_id(store, other) == id);
    Ok(Removed {
        untagged: untag,
        deleted: (!still_named).then_some(id),
    })
}

/// Removes what no image, cache record or live lease uses. With `cache_mounts`, unused
/// `RUN --mount=type=cache` directories go too.
pub fn prune(store: &Store, cache_mounts: bool) -> Result<PruneReport> {
    let mut options = PruneOptions::default();
    options.cache_mounts = cache_mounts;
    store
        .prune(&options)
        .map_err(ImageError::store("pruning the store"))
}

/// Parses RFC 3339 (`2024-05-01T12:00:00Z`, `...12:00:00.123+02:00`) into Unix seconds.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let year = number(0..4)?;
    let month = number(5..7)?;
    let day = number(8..10)?;
    let hour = number(11..13)?;
    let minute = number(14..16)?;
    let second = number(17..19)?;
    if bytes[4] != b'-' || bytes[7] != b'-' || !matches!(bytes[10], b'T' | b't' | b' ') {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        rest = &fraction[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hours: i64 = rest.get(1..3)?.parse().ok()?;
            let minutes: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (hours * 3600 + minutes * 60)
        }
        _ => return None,
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(seconds).ok()
}

/// (year, month, day) to days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_shifted = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_shifted + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20.123456789+01:00"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2023-13-14T22:13:20Z"), None);
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), None);
    }
}
