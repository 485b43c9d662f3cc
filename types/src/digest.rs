//! Content digests (`sha256:<64 lowercase hex>`), validated before any use in a path.

use std::fmt;
use std::str::FromStr;

use crate::sha256::Sha256;

/// A validated sha256 digest. The only way to build one checks its form, so a `Digest` is
/// always safe to use as a file name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    /// Always `sha256:` followed by 64 lowercase hex characters.
    text: String,
}

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestError {
    #[error("unsupported digest algorithm in {0:?} (only sha256 is supported)")]
    UnsupportedAlgorithm(String),
    #[error("invalid digest {0:?}: expected sha256: followed by 64 lowercase hex characters")]
    Invalid(String),
}

impl Digest {
    /// Parses and validates `sha256:<hex>`.
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        let Some((algorithm, hex)) = text.split_once(':') else {
            return Err(DigestError::Invalid(text.to_string()));
        };
        if algorithm != "sha256" {
            if algorithm.is_empty()
                || !algorithm
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+._-".contains(&b))
            {
                return Err(DigestError::Invalid(text.to_string()));
            }
            return Err(DigestError::UnsupportedAlgorithm(text.to_string()));
        }
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::Invalid(text.to_string()));
        }
        Ok(Digest {
            text: text.to_string(),
        })
    }

    /// The sha256 digest of some bytes.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self::from_sha256(Sha256::digest(bytes))
    }

    /// A digest from a raw 32-byte sha256 hash.
    pub fn from_sha256(hash: [u8; 32]) -> Self {
        // Written directly: one allocation of the final size (the DAG makes one per op).
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut bytes = *b"sha256:0000000000000000000000000000000000000000000000000000000000000000";
        for (index, byte) in hash.iter().enumerate() {
            bytes[7 + 2 * index] = HEX[usize::from(byte >> 4)];
            bytes[8 + 2 * index] = HEX[usize::from(byte & 0x0f)];
        }
        // Only ASCII was written, so the conversion cannot fail.
        let text = std::str::from_utf8(&bytes).unwrap_or_default().to_string();
        Digest { text }
    }

    /// The algorithm part (`sha256`).
    pub fn algorithm(&self) -> &str {
        "sha256"
    }

    /// The 64 hex characters.
    pub fn hex(&self) -> &str {
        &self.text[7..]
    }

    /// The whole `sha256:<hex>` string.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first 12 hex characters, as `docker images` shows ids.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.text)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Digest::parse(text)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A writer that hashes everything written through it and counts the bytes.
pub struct Sha256Writer<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W> Sha256Writer<W> {
    pub fn new(inner: W) -> Self {
        Sha256Writer {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The digest and size of what was written, and the inner writer.
    pub fn finish(self) -> (Digest, u64, W) {
        (
            Digest::from_sha256(self.hasher.finalize()),
            self.written,
            self.inner,
        )
    }
}

impl<W: std::io::Write> std::io::Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.written += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_sha256_lowercase_hex() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert!(Digest::parse(&good).is_ok());
        for bad in [
            "sha256:".to_string(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:../{}", "a".repeat(61)),
            format!("sha512:{}", "a".repeat(128)),
            "sha256".to_string(),
            "../../etc/passwd".to_string(),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn hashes_bytes() {
        assert_eq!(
            Digest::of_bytes(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn writer_hashes_what_passes() {
        use std::io::Write;
        let mut writer = Sha256Writer::new(Vec::new());
        writer.write_all(b"abc").unwrap();
        let (digest, size, inner) = writer.finish();
        assert_eq!(digest, Digest::of_bytes(b"abc"));
        assert_eq!(size, 3);
        assert_eq!(inner, b"abc");
    }
}
