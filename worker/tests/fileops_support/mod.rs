//! Shared helpers of the fileops and checksum tests: build a tree from a small text spec, dump
//! a tree as text, and make copy actions with the Dockerfile frontend's defaults.

#![allow(dead_code)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use kiln_frontend::dag::op::CopyAction;

/// Builds files under `root` from lines:
/// `d PATH MODE`, `f PATH MODE CONTENT...`, `l PATH TARGET`, `h PATH EXISTING`,
/// `p PATH MODE` (fifo), `o PATH UID GID` (lchown), `x PATH NAME VALUE` (xattr).
pub fn build(root: &Path, spec: &str) {
    for line in spec.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let mut parts = line.splitn(4, ' ');
        let kind = parts.next().unwrap();
        let path = root.join(parts.next().unwrap().trim_start_matches('/'));
        let third = parts.next().unwrap_or("");
        let rest = parts.next().unwrap_or("");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        let mode = || u32::from_str_radix(third, 8).unwrap();
        match kind {
            "d" => {
                std::fs::create_dir_all(&path).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode())).unwrap();
            }
            "f" => {
                std::fs::write(&path, rest).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode())).unwrap();
            }
            "l" => std::os::unix::fs::symlink(third, &path).unwrap(),
            "h" => std::fs::hard_link(root.join(third.trim_start_matches('/')), &path).unwrap(),
            "p" => {
                let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), mode()) }, 0);
            }
            "o" => {
                let uid: u32 = third.parse().unwrap();
                let gid: u32 = rest.parse().unwrap();
                std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).unwrap();
            }
            "x" => {
                let value = [third, rest].join(" ");
                let (name, value) = value.split_once(' ').unwrap();
                rustix::fs::lsetxattr(
                    &path,
                    name,
                    value.as_bytes(),
                    rustix::fs::XattrFlags::empty(),
                )
                .unwrap();
            }
            other => panic!("bad spec kind {other}"),
        }
    }
}

/// A sorted text listing of a tree: `PATH KIND MODE UID:GID [CONTENT | -> TARGET]`.
pub fn dump(root: &Path) -> String {
    let mut lines = Vec::new();
    dump_into(root, root, &mut lines);
    lines.sort();
    lines.join("\n")
}

fn dump_into(root: &Path, dir: &Path, lines: &mut Vec<String>) {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        let relative = format!("/{}", path.strip_prefix(root).unwrap().display());
        let owner = format!("{}:{}", metadata.uid(), metadata.gid());
        let mode = metadata.mode() & 0o7777;
        let file_type = metadata.file_type();
        if file_type.is_dir() {
            lines.push(format!("{relative} d{mode:o} {owner}"));
            dump_into(root, &path, lines);
        } else if file_type.is_symlink() {
            let target = std::fs::read_link(&path).unwrap();
            lines.push(format!("{relative} l {owner} -> {}", target.display()));
        } else if file_type.is_file() {
            let content = std::fs::read_to_string(&path).unwrap_or_default();
            lines.push(format!("{relative} f{mode:o} {owner} {content}"));
        } else {
            lines.push(format!("{relative} s{mode:o} {owner}"));
        }
    }
}

/// A copy action as the Dockerfile frontend makes for `COPY src dest`.
pub fn copy_action(source_path: &str, dest_path: &str) -> CopyAction {
    CopyAction {
        source_input: 0,
        source_path: source_path.to_string(),
        dest_path: dest_path.to_string(),
        owner: None,
        mode: None,
        follow_symlinks: true,
        dir_contents_only: true,
        attempt_unpack: false,
        create_dest_path: true,
        allow_wildcard: true,
        allow_empty_wildcard: true,
        always_replace_existing_dest_paths: false,
        include_patterns: Vec::new(),
        exclude_patterns: Vec::new(),
        required_paths: Vec::new(),
        timestamp: None,
    }
}
