//! The cache config: which cache keys have which results, each result a chain of layers
//! (blob + diffID, bottom to top) that rebuilds the result's snapshots when unpacked.
//!
//! Layers form a tree through `parent` indexes, as in BuildKit's `CacheConfig`, so records
//! that share a base share its entries. A record has one entry per op output: the index of
//! its top layer (`None` for the empty filesystem). Content checksums the solver computed
//! from a cached result (a `COPY --from` reading another stage) ride along, keyed by the
//! result's cache key, so a build using the cache computes the consumer's key without
//! materializing the stage it reads.

use std::collections::{BTreeMap, HashMap};

use kiln_types::{Descriptor, Digest};

use crate::error::{ExportError, Result};

/// Version of the format written; others are refused.
pub const CACHE_CONFIG_VERSION: u32 = 1;
/// Media type of the cache config blob (the cache manifest's config).
pub const CACHE_CONFIG_MEDIA_TYPE: &str = "application/vnd.kiln.cache.config.v1+json";
/// The most layers, records, checksums or cache mounts an imported config may list.
pub const MAX_CACHE_ENTRIES: usize = 100_000;
/// The longest layer chain a record may have (overlayfs stacks at most 500 lowers).
pub const MAX_CACHE_CHAIN: usize = 500;
/// The longest selector or variant name accepted.
const MAX_NAME_LENGTH: usize = 512;

/// One layer: its blob, what it unpacks to, and the layer below it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheLayer {
    /// The (compressed) layer blob.
    pub blob: Descriptor,
    /// sha256 of the uncompressed tar; checked when the layer is unpacked.
    pub diff_id: Digest,
    /// Index of the layer below, `None` for a bottom layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<usize>,
    /// The layer exporter's variant the blob was made as (compression, level, epoch), so
    /// an importer can record it and never compress that snapshot again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The layer holds no change: nothing to download, an empty directory to unpack.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty: bool,
}

/// One op output of a record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheOutput {
    /// Index of the top layer; `None` is the empty filesystem.
    #[serde(default)]
    pub layer: Option<usize>,
}

/// A cache key and its outputs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheRecordEntry {
    pub key: Digest,
    pub outputs: Vec<CacheOutput>,
}

/// A content checksum the solver computed over the result of `key` for a consumer
/// (`selector`: the consumer's definition and input index).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheChecksum {
    pub key: Digest,
    pub selector: String,
    pub checksum: Digest,
}

/// A `RUN --mount=type=cache` directory's contents as a (gzip) tar blob.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheMountEntry {
    /// The store's id of the cache mount (`c` + hex).
    pub id: String,
    pub blob: Descriptor,
}

/// The whole document.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheConfig {
    pub version: u32,
    #[serde(default)]
    pub layers: Vec<CacheLayer>,
    #[serde(default)]
    pub records: Vec<CacheRecordEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checksums: Vec<CacheChecksum>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_mounts: Vec<CacheMountEntry>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            version: CACHE_CONFIG_VERSION,
            layers: Vec::new(),
            records: Vec::new(),
            checksums: Vec::new(),
            cache_mounts: Vec::new(),
        }
    }
}

fn invalid(reason: impl Into<String>) -> ExportError {
    ExportError::InvalidCache {
        reason: reason.into(),
    }
}

impl CacheConfig {
    /// Parses and validates a config from untrusted bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<CacheConfig> {
        let config: CacheConfig =
            serde_json::from_slice(bytes).map_err(|e| ExportError::json("cache config", e))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the rest of kiln relies on: the version, counts, every index pointing
    /// at an earlier layer (so chains end), chain depth, name lengths.
    pub fn validate(&self) -> Result<()> {
        if self.version != CACHE_CONFIG_VERSION {
            return Err(invalid(format!(
                "cache config version {} (kiln reads {CACHE_CONFIG_VERSION})",
                self.version
            )));
        }
        for (what, count) in [
            ("layers", self.layers.len()),
            ("records", self.records.len()),
            ("checksums", self.checksums.len()),
            ("cache mounts", self.cache_mounts.len()),
        ] {
            if count > MAX_CACHE_ENTRIES {
                return Err(invalid(format!(
                    "{count} {what} (at most {MAX_CACHE_ENTRIES})"
                )));
            }
        }
        let mut depth = vec![0usize; self.layers.len()];
        for (index, layer) in self.layers.iter().enumerate() {
            depth[index] = match layer.parent {
                None => 1,
                Some(parent) if parent < index => depth[parent] + 1,
                Some(parent) => {
                    return Err(invalid(format!(
                        "layer {index} has parent {parent}, which is not an earlier layer"
                    )))
                }
            };
            if depth[index] > MAX_CACHE_CHAIN {
                return Err(invalid(format!(
                    "layer {index} is {} layers deep (at most {MAX_CACHE_CHAIN})",
                    depth[index]
                )));
            }
            if layer.variant.as_ref().is_some_and(|variant| {
                variant.is_empty()
                    || variant.len() > MAX_NAME_LENGTH
                    || !variant.bytes().all(|byte| byte.is_ascii_graphic())
            }) {
                return Err(invalid(format!(
                    "layer {index} has an invalid variant name"
                )));
            }
        }
        for record in &self.records {
            if record.outputs.len() > MAX_CACHE_CHAIN {
                return Err(invalid(format!(
                    "record {} has too many outputs",
                    record.key
                )));
            }
            for output in &record.outputs {
                if let Some(layer) = output.layer {
                    if layer >= self.layers.len() {
                        return Err(invalid(format!(
                            "record {} names layer {layer} of {}",
                            record.key,
                            self.layers.len()
                        )));
                    }
                }
            }
        }
        for checksum in &self.checksums {
            if checksum.selector.is_empty() || checksum.selector.len() > MAX_NAME_LENGTH {
                return Err(invalid(format!(
                    "checksum of {} has an invalid selector",
                    checksum.key
                )));
            }
        }
        for mount in &self.cache_mounts {
            let valid = !mount.id.is_empty()
                && mount.id.len() <= 64
                && mount
                    .id
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
            if !valid {
                return Err(invalid(format!("invalid cache mount id {:?}", mount.id)));
            }
        }
        Ok(())
    }

    /// The layers of the chain whose top is `top`, bottom first. The config must be valid.
    pub fn chain(&self, top: usize) -> Vec<&CacheLayer> {
        let mut chain = Vec::new();
        let mut next = Some(top);
        while let Some(index) = next {
            let Some(layer) = self.layers.get(index) else {
                break;
            };
            chain.push(layer);
            next = layer.parent.filter(|parent| *parent < index);
        }
        chain.reverse();
        chain
    }

    /// Every blob the config needs, each once, in order of first use: non-empty layers,
    /// then cache mounts.
    pub fn blobs(&self) -> Vec<Descriptor> {
        let mut seen = std::collections::HashSet::new();
        let layers = self
            .layers
            .iter()
            .filter(|layer| !layer.empty)
            .map(|layer| &layer.blob);
        let mounts = self.cache_mounts.iter().map(|mount| &mount.blob);
        layers
            .chain(mounts)
            .filter(|blob| seen.insert(blob.digest.clone()))
            .cloned()
            .collect()
    }

    /// The checksums by (key, selector).
    pub fn checksum_map(&self) -> BTreeMap<(Digest, String), Digest> {
        self.checksums
            .iter()
            .map(|entry| {
                (
                    (entry.key.clone(), entry.selector.clone()),
                    entry.checksum.clone(),
                )
            })
            .collect()
    }
}

/// One layer of a chain given to [`CacheConfigBuilder::add_chain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLayer {
    pub blob: Descriptor,
    pub diff_id: Digest,
    pub variant: Option<String>,
    pub empty: bool,
}

/// Builds a config, sharing the layers of chains with a common base.
#[derive(Debug, Default)]
pub struct CacheConfigBuilder {
    config: CacheConfig,
    /// (parent index, diffID, blob digest) -> index.
    layer_index: HashMap<(Option<usize>, Digest, Digest), usize>,
    records: BTreeMap<Digest, Vec<CacheOutput>>,
    checksums: BTreeMap<(Digest, String), Digest>,
    cache_mounts: BTreeMap<String, Descriptor>,
}

impl CacheConfigBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a chain (bottom first) and returns the index of its top (`None` if empty).
    pub fn add_chain(&mut self, layers: &[ChainLayer]) -> Option<usize> {
        let mut parent = None;
        for layer in layers {
            let entry = (parent, layer.diff_id.clone(), layer.blob.digest.clone());
            let index = match self.layer_index.get(&entry) {
                Some(index) => *index,
                None => {
                    let index = self.config.layers.len();
                    self.config.layers.push(CacheLayer {
                        blob: layer.blob.clone(),
                        diff_id: layer.diff_id.clone(),
                        parent,
                        variant: layer.variant.clone(),
                        empty: layer.empty,
                    });
                    self.layer_index.insert(entry, index);
                    index
                }
            };
            parent = Some(index);
        }
        parent
    }

    /// Records `key`'s outputs (each the top index from [`add_chain`](Self::add_chain)).
    /// A key added twice keeps its first outputs.
    pub fn add_record(&mut self, key: Digest, outputs: Vec<Option<usize>>) {
        self.records.entry(key).or_insert_with(|| {
            outputs
                .into_iter()
                .map(|layer| CacheOutput { layer })
                .collect()
        });
    }

    pub fn has_record(&self, key: &Digest) -> bool {
        self.records.contains_key(key)
    }

    pub fn add_checksum(&mut self, key: Digest, selector: String, checksum: Digest) {
        self.checksums.entry((key, selector)).or_insert(checksum);
    }

    pub fn add_cache_mount(&mut self, id: String, blob: Descriptor) {
        self.cache_mounts.insert(id, blob);
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.cache_mounts.is_empty() && self.checksums.is_empty()
    }

    /// The config, records, checksums and cache mounts sorted (so equal inputs give equal
    /// bytes).
    pub fn finish(self) -> CacheConfig {
        let mut config = self.config;
        config.records = self
            .records
            .into_iter()
            .map(|(key, outputs)| CacheRecordEntry { key, outputs })
            .collect();
        config.checksums = self
            .checksums
            .into_iter()
            .map(|((key, selector), checksum)| CacheChecksum {
                key,
                selector,
                checksum,
            })
            .collect();
        config.cache_mounts = self
            .cache_mounts
            .into_iter()
            .map(|(id, blob)| CacheMountEntry { id, blob })
            .collect();
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str) -> ChainLayer {
        ChainLayer {
            blob: Descriptor::new(
                kiln_types::media_type::OCI_LAYER_GZIP,
                Digest::of_bytes(format!("blob {name}").as_bytes()),
                10,
            ),
            diff_id: Digest::of_bytes(format!("diff {name}").as_bytes()),
            variant: Some("gzip-6".into()),
            empty: false,
        }
    }

    #[test]
    fn chains_share_their_common_base() {
        let mut builder = CacheConfigBuilder::new();
        let first = builder.add_chain(&[layer("a"), layer("b")]);
        let second = builder.add_chain(&[layer("a"), layer("c")]);
        builder.add_record(Digest::of_bytes(b"k2"), vec![second]);
        builder.add_record(Digest::of_bytes(b"k1"), vec![first]);
        let config = builder.finish();
        assert_eq!(config.layers.len(), 3);
        config.validate().unwrap();
        let chain: Vec<_> = config
            .chain(second.unwrap())
            .iter()
            .map(|layer| layer.diff_id.clone())
            .collect();
        assert_eq!(chain, [layer("a").diff_id, layer("c").diff_id]);
        let bytes = kiln_types::canonical_json(&config).unwrap();
        assert_eq!(CacheConfig::from_slice(&bytes).unwrap(), config);
        assert_eq!(config.blobs().len(), 3);
    }

    #[test]
    fn hostile_configs_are_refused() {
        let mut config = CacheBuilderFixture::config();
        config.layers[0].parent = Some(0);
        assert!(config.validate().is_err(), "self parent");
        let mut config = CacheBuilderFixture::config();
        config.records[0].outputs[0].layer = Some(99);
        assert!(config.validate().is_err(), "layer out of range");
        let mut config = CacheBuilderFixture::config();
        config.version = 7;
        assert!(config.validate().is_err(), "version");
        let mut config = CacheBuilderFixture::config();
        config.cache_mounts.push(CacheMountEntry {
            id: "../../etc".into(),
            blob: layer("m").blob,
        });
        assert!(config.validate().is_err(), "cache mount id");
        let mut builder = CacheConfigBuilder::new();
        let deep: Vec<ChainLayer> = (0..MAX_CACHE_CHAIN + 1)
            .map(|index| layer(&index.to_string()))
            .collect();
        builder.add_chain(&deep);
        assert!(builder.finish().validate().is_err(), "too deep");
        assert!(CacheConfig::from_slice(b"{\"version\":1,\"layers\":7}").is_err());
    }

    struct CacheBuilderFixture;

    impl CacheBuilderFixture {
        fn config() -> CacheConfig {
            let mut builder = CacheConfigBuilder::new();
            let top = builder.add_chain(&[layer("a")]);
            builder.add_record(Digest::of_bytes(b"k"), vec![top]);
            builder.finish()
        }
    }
}
