//! Platforms (`os/arch[/variant]`) with containerd's normalization rules.

use std::fmt;
use std::str::FromStr;

/// An OS and CPU architecture, as in an image index entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

/// Why a platform string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    #[error("invalid platform {0:?}: expected os/arch[/variant]")]
    Invalid(String),
}

impl Platform {
    /// The platform of the machine kiln runs on (Linux, normalized architecture).
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        let variant = (architecture == "arm64").then(|| "v8".to_string());
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant,
            os_version: None,
        }
    }

    /// Parses `os/arch[/variant]` (or `arch` alone, meaning linux), normalizing aliases as
    /// containerd does (`x86_64` -> `amd64`, `aarch64` -> `arm64`, arm variants).
    pub fn parse(text: &str) -> Result<Self, PlatformError> {
        let lower = text.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) || parts.len() > 3 {
            return Err(PlatformError::Invalid(text.to_string()));
        }
        let (os, architecture, variant) = match parts.as_slice() {
            [single] if is_known_os(single) => {
                (single.to_string(), Self::host().architecture, None)
            }
            [arch] => ("linux".to_string(), arch.to_string(), None),
            [os, arch] => (os.to_string(), arch.to_string(), None),
            [os, arch, variant] => (os.to_string(), arch.to_string(), Some(variant.to_string())),
            _ => return Err(PlatformError::Invalid(text.to_string())),
        };
        let (architecture, variant) = normalize_arch(&architecture, variant);
        let os = if os == "macos" {
            "darwin".to_string()
        } else {
            os
        };
        Ok(Platform {
            os,
            architecture,
            variant,
            os_version: None,
        })
    }

    /// Whether an index entry's platform satisfies this wanted platform (a missing wanted
    /// variant accepts the default variant for the architecture).
    pub fn matches(&self, candidate: &Platform) -> bool {
        let (candidate_arch, candidate_variant) =
            normalize_arch(&candidate.architecture, candidate.variant.clone());
        if self.os != candidate.os || self.architecture != candidate_arch {
            return false;
        }
        match (&self.variant, &candidate_variant) {
            (None, _) => true,
            (Some(wanted), Some(found)) => wanted == found,
            (Some(wanted), None) => default_variant(&self.architecture) == Some(wanted.as_str()),
        }
    }
}

fn is_known_os(text: &str) -> bool {
    matches!(text, "linux" | "windows" | "darwin" | "freebsd" | "macos")
}

fn default_variant(architecture: &str) -> Option<&'static str> {
    match architecture {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    }
}

fn normalize_arch(architecture: &str, variant: Option<String>) -> (String, Option<String>) {
    match architecture {
        "i386" => ("386".into(), None),
        "x86_64" | "x86-64" | "amd64" => ("amd64".into(), variant.filter(|v| v != "v1")),
        "aarch64" | "arm64" => ("arm64".into(), variant.filter(|v| v != "8" && v != "v8")),
        "armhf" => ("arm".into(), Some("v7".into())),
        "armel" => ("arm".into(), Some("v6".into())),
        "arm" => {
            let variant = match variant.as_deref() {
                None | Some("7") | Some("v7") => Some("v7".to_string()),
                Some("5") => Some("v5".into()),
                Some("6") => Some("v6".into()),
                Some("8") => Some("v8".into()),
                Some(other) => Some(other.to_string()),
            };
            ("arm".into(), variant)
        }
        other => (other.to_string(), variant),
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = PlatformError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Platform::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalizes() {
        assert_eq!(
            Platform::parse("linux/amd64").unwrap().to_string(),
            "linux/amd64"
        );
        assert_eq!(
            Platform::parse("linux/x86_64").unwrap().to_string(),
            "linux/amd64"
        );
        assert_eq!(
            Platform::parse("linux/arm/v6").unwrap().to_string(),
            "linux/arm/v6"
        );
        assert_eq!(
            Platform::parse("linux/arm").unwrap().to_string(),
            "linux/arm/v7"
        );
        assert_eq!(
            Platform::parse("linux/aarch64").unwrap().to_string(),
            "linux/arm64"
        );
        assert!(Platform::parse("linux//x").is_err());
        assert!(Platform::parse("a/b/c/d").is_err());
    }

    #[test]
    fn matches_variants() {
        let wanted = Platform::parse("linux/arm64").unwrap();
        let entry = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
            os_version: None,
        };
        assert!(wanted.matches(&entry));
        let v6 = Platform::parse("linux/arm/v6").unwrap();
        let v7_entry = Platform::parse("linux/arm/v7").unwrap();
        assert!(!v6.matches(&v7_entry));
    }
}
