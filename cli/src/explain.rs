//! `--explain-cache`: remembers what each step's cache key was made of, and for a step that
//! ran, says which of those parts changed since the last build of the same Dockerfile.
//!
//! Steps are matched by their progress name (`[builder 2/5] RUN make`). The record of a step
//! keeps its key, its key's parts (definition digest, each input's key or content checksum)
//! and its definition as JSON, so a change of instruction, arguments or environment can be
//! named field by field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_solver::{CacheKey, KeyComponents, KeyPart};
use kiln_types::Digest;

/// What one step's key was made of.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct StepRecord {
    key: CacheKey,
    components: KeyComponents,
    definition: String,
    /// The names of the steps its inputs come from, in order.
    inputs: Vec<String>,
    /// For inputs read by content: every selected file and its digest, by input index.
    #[serde(default)]
    listings: BTreeMap<usize, Vec<(String, Digest)>>,
    /// For a base image: the manifest digest its reference resolved to.
    #[serde(default)]
    resolved: Option<Digest>,
}

/// The records of the last build and of this one.
#[derive(Debug, Default)]
pub struct ExplainLog {
    previous: BTreeMap<String, StepRecord>,
    current: BTreeMap<String, StepRecord>,
}

impl ExplainLog {
    /// A file name for one Dockerfile in one context.
    pub fn key(context: &Path, dockerfile: &str) -> String {
        let context = std::fs::canonicalize(context).unwrap_or_else(|_| context.to_path_buf());
        let text = format!("{}\n{dockerfile}", context.display());
        Digest::of_bytes(text.as_bytes()).hex()[..32].to_string()
    }

    fn path(root: &Path, key: &str) -> PathBuf {
        root.join("explain").join(format!("{key}.json"))
    }

    /// The last build's records (none if there was no build or the file is unreadable).
    pub fn load(root: &Path, key: &str) -> Self {
        let previous = std::fs::read(Self::path(root, key))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        ExplainLog {
            previous,
            current: BTreeMap::new(),
        }
    }

    /// Saves this build's records, merged over the last ones (steps not built this time keep
    /// their old record), atomically.
    pub fn save(&self, root: &Path, key: &str) {
        let mut merged = self.previous.clone();
        merged.extend(self.current.clone());
        let path = Self::path(root, key);
        let Some(directory) = path.parent() else {
            return;
        };
        if std::fs::create_dir_all(directory).is_err() {
            return;
        }
        let Ok(bytes) = serde_json::to_vec(&merged) else {
            return;
        };
        // a rebuild that changed nothing leaves the file as it is (a rename over it makes ext4
        // start writing the new file back at once)
        if std::fs::read(&path).is_ok_and(|saved| saved == bytes) {
            return;
        }
        let temporary = path.with_extension("json.tmp");
        if std::fs::write(&temporary, bytes).is_ok() {
            let _ = std::fs::rename(&temporary, &path);
        }
    }

    /// Records a step's key.
    pub fn record(
        &mut self,
        name: &str,
        key: &CacheKey,
        components: &KeyComponents,
        definition: &str,
        inputs: &[usize],
        names: &[String],
    ) {
        self.current.insert(
            name.to_string(),
            StepRecord {
                key: key.clone(),
                components: components.clone(),
                definition: definition.to_string(),
                inputs: inputs
                    .iter()
                    .map(|&input| names.get(input).cloned().unwrap_or_default())
                    .collect(),
                listings: BTreeMap::new(),
                resolved: None,
            },
        );
    }

    /// Records the manifest digest a base image step resolved to.
    pub fn attach_resolution(&mut self, name: &str, digest: &Digest) {
        if let Some(record) = self.current.get_mut(name) {
            record.resolved = Some(digest.clone());
        }
    }

    /// Adds the files behind a content checksum of step `name`'s input `input`.
    pub fn attach_listing(&mut self, name: &str, input: usize, listing: Vec<(String, Digest)>) {
        if let Some(record) = self.current.get_mut(name) {
            record.listings.insert(input, listing);
        }
    }

    /// Why the step `identity` (shown as `name`) missed the cache, as lines of text.
    pub fn explain(&self, identity: &str, name: &str) -> String {
        let Some(current) = self.current.get(identity) else {
            return format!("  {name}: no key was computed\n");
        };
        let Some(previous) = self.previous.get(identity) else {
            return format!("  {name}: not built before (no earlier record of this step)\n");
        };
        if previous.key == current.key {
            return format!(
                "  {name}: same key as the last build, but its result was not in the cache (pruned, --no-cache, or the build failed before saving it)\n"
            );
        }
        let mut reasons = Vec::new();
        if previous.components.definition != current.components.definition {
            match (&previous.resolved, &current.resolved) {
                (Some(before), Some(after))
                    if before != after && previous.definition == current.definition =>
                {
                    reasons.push(format!(
                        "the base image now resolves to {after} (was {before})"
                    ))
                }
                _ => reasons.push(definition_change(&previous.definition, &current.definition)),
            }
        }
        let count = previous
            .components
            .inputs
            .len()
            .max(current.components.inputs.len());
        for index in 0..count {
            let before = previous.components.inputs.get(index);
            let after = current.components.inputs.get(index);
            if before == after {
                continue;
            }
            let input_name = current
                .inputs
                .get(index)
                .cloned()
                .unwrap_or_else(|| format!("input {index}"));
            reasons.push(match after {
                Some(KeyPart::Content { .. }) => {
                    let files = match (previous.listings.get(&index), current.listings.get(&index))
                    {
                        (Some(before), Some(after)) => changed_files(before, after),
                        _ => String::new(),
                    };
                    if files.is_empty() {
                        format!("the files it reads from {input_name} changed")
                    } else {
                        format!("the files it reads from {input_name} changed: {files}")
                    }
                }
                Some(KeyPart::Key { .. }) => format!("its input {input_name} changed"),
                None => format!("input {index} was removed"),
            });
        }
        if reasons.is_empty() {
            reasons.push("its key changed".into());
        }
        let mut text = String::new();
        for reason in reasons {
            text.push_str(&format!("  {name}: {reason}\n"));
        }
        text
    }
}

/// `a.txt changed, b added, c removed` from two file listings.
fn changed_files(before: &[(String, Digest)], after: &[(String, Digest)]) -> String {
    let before: BTreeMap<&str, &Digest> = before
        .iter()
        .map(|(path, digest)| (path.as_str(), digest))
        .collect();
    let after: BTreeMap<&str, &Digest> = after
        .iter()
        .map(|(path, digest)| (path.as_str(), digest))
        .collect();
    let mut changes = Vec::new();
    for (path, digest) in &after {
        match before.get(path) {
            Some(old) if old != digest => changes.push(format!("{path} changed")),
            None => changes.push(format!("{path} added")),
            _ => {}
        }
    }
    for path in before.keys() {
        if !after.contains_key(path) {
            changes.push(format!("{path} removed"));
        }
    }
    let total = changes.len();
    changes.truncate(8);
    let mut text = changes.join(", ");
    if total > 8 {
        text.push_str(&format!(" and {} more", total - 8));
    }
    text
}

/// Names the fields of an op's definition that differ.
fn definition_change(before: &str, after: &str) -> String {
    let (Ok(before), Ok(after)) = (
        serde_json::from_str::<serde_json::Value>(before),
        serde_json::from_str::<serde_json::Value>(after),
    ) else {
        return "its definition changed".into();
    };
    let mut differences = Vec::new();
    diff_values("", &before, &after, &mut differences);
    if differences.is_empty() {
        // Same op, different resolution: an image reference that now points elsewhere.
        return "the base image now resolves to a different manifest digest".into();
    }
    differences.truncate(6);
    format!("its definition changed: {}", differences.join("; "))
}

fn diff_values(
    path: &str,
    before: &serde_json::Value,
    after: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let next = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff_values(&next, x, y, out),
                    (Some(x), None) => out.push(format!("{next} removed (was {})", short(x))),
                    (None, Some(y)) => out.push(format!("{next} added ({})", short(y))),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if path.ends_with("env") => {
            let removed: Vec<&Value> = a.iter().filter(|item| !b.contains(item)).collect();
            let added: Vec<&Value> = b.iter().filter(|item| !a.contains(item)).collect();
            for item in removed {
                out.push(format!("{path}: {} removed", short(item)));
            }
            for item in added {
                out.push(format!("{path}: {} added", short(item)));
            }
        }
        (x, y) if x != y => out.push(format!("{path}: {} -> {}", short(x), short(y))),
        _ => {}
    }
}

fn short(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 {
        format!("{}...", text.chars().take(77).collect::<String>())
    } else {
        text
    }
}
