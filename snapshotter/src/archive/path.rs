//! Tar entry names made into clean relative paths under the extraction root.

/// Why a name cannot be used.
pub(crate) const ESCAPES_ROOT: &str = "the path leaves the destination through ..";
pub(crate) const HAS_NUL: &str = "the path contains a NUL byte";

/// Cleans a tar name into `a/b/c` (no leading `/`, no `.` or empty components, no `..`).
///
/// An absolute name is re-rooted inside the destination (`/etc/x` -> `etc/x`), as Docker and
/// containerd do. A `..` that would climb above the root (`../x`, `/../x`, `..`) is an error;
/// a `..` that stays inside (`a/../b`) is folded lexically, before any symlink is looked at.
/// The empty result names the root itself.
pub(crate) fn clean_entry_path(name: &[u8]) -> Result<Vec<u8>, &'static str> {
    if name.contains(&0) {
        return Err(HAS_NUL);
    }
    let mut components: Vec<&[u8]> = Vec::new();
    for component in name.split(|byte| *byte == b'/') {
        match component {
            b"" | b"." => {}
            b".." => {
                if components.pop().is_none() {
                    return Err(ESCAPES_ROOT);
                }
            }
            other => components.push(other),
        }
    }
    Ok(components.join(&b'/'))
}

/// Splits a clean path into its parent (possibly empty) and final component.
pub(crate) fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|byte| *byte == b'/') {
        Some(slash) => (&path[..slash], &path[slash + 1..]),
        None => (&[], path),
    }
}

/// Joins a clean parent path and a name.
pub(crate) fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut joined = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        joined.extend_from_slice(parent);
        joined.push(b'/');
    }
    joined.extend_from_slice(name);
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, expected: Result<&str, &'static str>) {
        let cleaned = clean_entry_path(name.as_bytes());
        let cleaned = cleaned
            .as_ref()
            .map(|bytes| std::str::from_utf8(bytes).unwrap());
        assert_eq!(cleaned.map_err(|e| *e), expected, "cleaning {name:?}");
    }

    #[test]
    fn cleans_and_rejects() {
        check("a/b/c", Ok("a/b/c"));
        check("./a//b/./c/", Ok("a/b/c"));
        check("/etc/passwd", Ok("etc/passwd"));
        check("a/../b", Ok("b"));
        check("./", Ok(""));
        check("/", Ok(""));
        check("..", Err(ESCAPES_ROOT));
        check("../victim/x", Err(ESCAPES_ROOT));
        check("/../victim/x", Err(ESCAPES_ROOT));
        check("a/../../victim", Err(ESCAPES_ROOT));
        check("a\0b", Err(HAS_NUL));
    }

    #[test]
    fn splits() {
        assert_eq!(split_parent(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_parent(b"c"), (&b""[..], &b"c"[..]));
        assert_eq!(join(b"", b"c"), b"c");
        assert_eq!(join(b"a/b", b"c"), b"a/b/c");
    }
}
