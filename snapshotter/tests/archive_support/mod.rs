//! Shared helpers for the archive tests: raw tar building, tree descriptions, overlay mounts.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Builds tar streams byte by byte, so hostile names and mismatched fields can be written
/// where the `tar` crate's builder would refuse.
#[derive(Default)]
pub struct RawTar {
    pub bytes: Vec<u8>,
}

/// The fields of one raw header.
#[derive(Clone)]
pub struct Raw<'a> {
    pub name: &'a [u8],
    pub kind: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: u64,
    pub link: &'a [u8],
    pub major: u32,
    pub minor: u32,
}

impl<'a> Raw<'a> {
    pub fn new(name: &'a [u8], kind: u8) -> Self {
        Raw {
            name,
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 1_600_000_000,
            link: b"",
            major: 0,
            minor: 0,
        }
    }
}

fn octal(field: &mut [u8], value: u64) {
    let width = field.len();
    let text = format!("{:0w$o}", value, w = width - 1);
    field[..width - 1].copy_from_slice(text.as_bytes());
    field[width - 1] = 0;
}

/// One ustar header block.
pub fn header(raw: &Raw<'_>) -> [u8; 512] {
    let mut block = [0u8; 512];
    block[..raw.name.len()].copy_from_slice(raw.name);
    octal(&mut block[100..108], u64::from(raw.mode));
    octal(&mut block[108..116], raw.uid);
    octal(&mut block[116..124], raw.gid);
    octal(&mut block[124..136], raw.size);
    octal(&mut block[136..148], raw.mtime);
    block[156] = raw.kind;
    block[157..157 + raw.link.len()].copy_from_slice(raw.link);
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    octal(&mut block[329..337], u64::from(raw.major));
    octal(&mut block[337..345], u64::from(raw.minor));
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|b| u32::from(*b)).sum();
    let text = format!("{sum:06o}\0 ");
    block[148..156].copy_from_slice(text.as_bytes());
    block
}

/// A PAX record `"<len> key=value\n"`.
pub fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut total = body + 1;
    while body + total.to_string().len() != total {
        total = body + total.to_string().len();
    }
    let mut record = format!("{total} ").into_bytes();
    record.extend_from_slice(key);
    record.push(b'=');
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

impl RawTar {
    pub fn new() -> Self {
        RawTar::default()
    }

    fn pad(&mut self) {
        let rest = self.bytes.len() % 512;
        if rest > 0 {
            self.bytes.resize(self.bytes.len() + 512 - rest, 0);
        }
    }

    /// A header (its size field as given) followed by `data` and padding.
    pub fn entry(&mut self, raw: Raw<'_>, data: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(&header(&raw));
        self.bytes.extend_from_slice(data);
        self.pad();
        self
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        let mut raw = Raw::new(name.as_bytes(), b'0');
        raw.size = data.len() as u64;
        self.entry(raw, data)
    }

    pub fn file_mode(&mut self, name: &str, data: &[u8], mode: u32) -> &mut Self {
        let mut raw = Raw::new(name.as_bytes(), b'0');
        raw.size = data.len() as u64;
        raw.mode = mode;
        self.entry(raw, data)
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        let mut raw = Raw::new(name.as_bytes(), b'5');
        raw.mode = 0o755;
        self.entry(raw, b"")
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut raw = Raw::new(name.as_bytes(), b'2');
        raw.link = target.as_bytes();
        raw.mode = 0o777;
        self.entry(raw, b"")
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut raw = Raw::new(name.as_bytes(), b'1');
        raw.link = target.as_bytes();
        self.entry(raw, b"")
    }

    /// A local PAX header applying to the next entry.
    pub fn pax(&mut self, records: &[(&[u8], &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (key, value) in records {
            data.extend(pax_record(key, value));
        }
        let mut raw = Raw::new(b"PaxHeaders.0/x", b'x');
        raw.size = data.len() as u64;
        self.entry(raw, &data)
    }

    /// Appends the end-of-archive marker and returns the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        self.bytes.extend_from_slice(&[0u8; 1024]);
        std::mem::take(&mut self.bytes)
    }
}

/// What a test compares about one filesystem object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub content: Option<Vec<u8>>,
    pub link: Option<PathBuf>,
    pub rdev: u64,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Every xattr of a path (not following a final symlink).
pub fn xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut result = BTreeMap::new();
    let mut names = vec![0u8; 65536];
    let length = match rustix::fs::llistxattr(path, &mut names[..]) {
        Ok(length) => length,
        Err(_) => return result,
    };
    for name in names[..length].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 65536];
        let name_c = CString::new(name).unwrap();
        let value_length = rustix::fs::lgetxattr(path, name_c.as_c_str(), &mut value[..]).unwrap();
        result.insert(name.to_vec(), value[..value_length].to_vec());
    }
    result
}

/// Describes every object under `root` (the root itself excluded), keyed by relative path.
/// `keep_xattr` chooses which xattrs count.
pub fn describe_tree(root: &Path, keep_xattr: &dyn Fn(&[u8]) -> bool) -> BTreeMap<String, Node> {
    let mut nodes = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            let file_type = metadata.file_type();
            let kind = if file_type.is_dir() {
                stack.push(path.clone());
                "dir"
            } else if file_type.is_file() {
                "file"
            } else if file_type.is_symlink() {
                "symlink"
            } else if file_type.is_char_device() {
                "char"
            } else if file_type.is_block_device() {
                "block"
            } else if file_type.is_fifo() {
                "fifo"
            } else {
                "other"
            };
            let node = Node {
                kind,
                mode: metadata.mode() & 0o7777,
                uid: metadata.uid(),
                gid: metadata.gid(),
                mtime: metadata.mtime(),
                content: file_type.is_file().then(|| std::fs::read(&path).unwrap()),
                link: file_type
                    .is_symlink()
                    .then(|| std::fs::read_link(&path).unwrap()),
                rdev: metadata.rdev(),
                xattrs: xattrs(&path)
                    .into_iter()
                    .filter(|(name, _)| keep_xattr(name))
                    .collect(),
            };
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            nodes.insert(relative, node);
        }
    }
    nodes
}

/// Groups of paths (relative to `root`) that share an inode, for files linked more than once.
pub fn hardlink_groups(root: &Path) -> BTreeSet<BTreeSet<String>> {
    let mut groups: HashMap<(u64, u64), BTreeSet<String>> = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            if metadata.is_dir() {
                stack.push(path.clone());
            } else if metadata.nlink() > 1 && metadata.is_file() {
                let relative = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                groups
                    .entry((metadata.dev(), metadata.ino()))
                    .or_default()
                    .insert(relative);
            }
        }
    }
    groups
        .into_values()
        .filter(|group| group.len() > 1)
        .collect()
}

/// Shows the differences between two tree descriptions (empty when equal).
pub fn tree_differences(
    expected: &BTreeMap<String, Node>,
    found: &BTreeMap<String, Node>,
) -> Vec<String> {
    let mut differences = Vec::new();
    for (path, node) in expected {
        match found.get(path) {
            None => differences.push(format!("missing {path}: {node:?}")),
            Some(other) if other != node => differences.push(format!(
                "differs {path}:\n  expected {node:?}\n  found    {other:?}"
            )),
            Some(_) => {}
        }
    }
    for path in found.keys() {
        if !expected.contains_key(path) {
            differences.push(format!("unexpected {path}: {:?}", found[path]));
        }
    }
    differences
}

/// An overlayfs mount, unmounted when dropped.
pub struct OverlayMount {
    merged: PathBuf,
}

impl OverlayMount {
    /// Mounts `lowers` (top first) with an optional (upper, work) pair at `merged`, with the
    /// options kiln uses.
    pub fn mount(lowers: &[&Path], upper: Option<(&Path, &Path)>, merged: &Path) -> Self {
        let lowerdir: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        let mut options = format!("lowerdir={}", lowerdir.join(":"));
        if let Some((upper, work)) = upper {
            options.push_str(&format!(
                ",upperdir={},workdir={}",
                upper.display(),
                work.display()
            ));
        }
        options.push_str(",redirect_dir=off,metacopy=off,index=off");
        let data = CString::new(options).unwrap();
        rustix::mount::mount(
            "overlay",
            merged,
            "overlay",
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        )
        .expect("mounting overlayfs");
        OverlayMount {
            merged: merged.to_path_buf(),
        }
    }

    pub fn unmount(self) {}
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.merged, rustix::mount::UnmountFlags::DETACH);
    }
}

/// Sets a path's access and modification times without following a final symlink.
pub fn set_mtime(path: &Path, seconds: i64) {
    let time = rustix::fs::Timespec {
        tv_sec: seconds,
        tv_nsec: 123_456_789,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: time,
            last_modification: time,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Lists the tar's entry names (via the `tar` crate).
pub fn entry_names(tar: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|entry| String::from_utf8_lossy(&entry.unwrap().path_bytes()).into_owned())
        .collect()
}
