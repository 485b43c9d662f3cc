//! Validated identifiers that end up in paths: snapshot ids, lease ids, cache mount ids.

use std::fmt;

use crate::error::StoreError;

/// A snapshot's short id: 12 lowercase hex characters, the name of its directory under
/// `snapshots/`. Short on purpose, so that an overlay `lowerdir=` list of many layers stays
/// within one page.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotId(String);

impl SnapshotId {
    /// Length of a snapshot id in characters.
    pub const LENGTH: usize = 12;

    /// Parses and validates a snapshot id.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        if text.len() == Self::LENGTH
            && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            Ok(SnapshotId(text.to_string()))
        } else {
            Err(StoreError::InvalidSnapshotId {
                id: text.to_string(),
            })
        }
    }

    pub(crate) fn random() -> Self {
        SnapshotId(random_hex(Self::LENGTH / 2))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotId({})", self.0)
    }
}

impl serde::Serialize for SnapshotId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SnapshotId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        SnapshotId::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Checks that a cache mount id is usable as one directory name.
pub(crate) fn validate_cache_mount_id(id: &str) -> Result<(), StoreError> {
    let valid = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidCacheMountId { id: id.to_string() })
    }
}

/// `bytes` random bytes as lowercase hex.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::fill(&mut buffer[..]);
    hex::encode(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_are_checked() {
        assert!(SnapshotId::parse("0123456789ab").is_ok());
        for bad in [
            "",
            "0123456789a",
            "0123456789abc",
            "0123456789AB",
            "../../etc/pa",
            "01234567/9ab",
        ] {
            assert!(SnapshotId::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(SnapshotId::random().as_str().len(), 12);
    }

    #[test]
    fn cache_mount_ids_are_checked() {
        assert!(validate_cache_mount_id("go-build_1.2").is_ok());
        for bad in ["", ".", "..", "a/b", ".hidden", "a b"] {
            assert!(validate_cache_mount_id(bad).is_err(), "{bad}");
        }
        assert!(validate_cache_mount_id(&"a".repeat(129)).is_err());
    }
}
