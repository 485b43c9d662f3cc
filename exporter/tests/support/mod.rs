//! Shared helpers for the exporter tests: temporary roots that unmount what they hold, a
//! two-layer snapshot stack made through a real overlay mount, and tree listings to compare.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln_snapshotter::{CommitOptions, Lease, PreparedUnpack, SnapshotId, Store};
use kiln_types::Digest;

/// A temporary directory; on drop every mount under it is detached and the tree removed.
pub struct TestRoot {
    directory: tempfile::TempDir,
}

impl TestRoot {
    pub fn new() -> TestRoot {
        let directory = tempfile::Builder::new()
            .prefix("kiln-exporter-test-")
            .tempdir()
            .expect("create temp dir");
        TestRoot { directory }
    }

    pub fn path(&self) -> &Path {
        self.directory.path()
    }

    /// A store in `<root>/<name>`.
    pub fn store(&self, name: &str) -> Store {
        Store::open(self.path().join(name)).expect("open store")
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        unmount_all_under(self.directory.path());
    }
}

/// Detaches every mount under `prefix`, deepest first.
pub fn unmount_all_under(prefix: &Path) {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(field.replace("\\040", " ")))
        .filter(|path| path.starts_with(prefix))
        .collect();
    points.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
    for point in points {
        let _ = rustix::mount::unmount(&point, rustix::mount::UnmountFlags::DETACH);
    }
}

/// Sets a file's mtime (seconds) without following links.
pub fn set_mtime(path: &Path, seconds: i64) {
    let time = rustix::fs::Timespec {
        tv_sec: seconds,
        tv_nsec: 0,
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
    .expect("set mtime");
}

/// A base layer unpacked directly into a snapshot: files, a directory to replace, a file to
/// delete, a symlink.
pub fn base_snapshot(store: &Store, lease: &Lease) -> SnapshotId {
    let directory = match store
        .snapshotter()
        .prepare_unpack(lease, "test-base", None)
        .expect("prepare unpack")
    {
        PreparedUnpack::New(directory) => directory,
        PreparedUnpack::Existing(id) => return id,
    };
    let path = directory.path();
    fs::create_dir_all(path.join("etc")).unwrap();
    fs::write(path.join("etc/hostname"), "base\n").unwrap();
    fs::write(path.join("etc/gone"), "to be deleted\n").unwrap();
    fs::create_dir_all(path.join("replaced/sub")).unwrap();
    fs::write(path.join("replaced/old"), "old contents\n").unwrap();
    fs::write(path.join("replaced/sub/deep"), "deep\n").unwrap();
    std::os::unix::fs::symlink("hostname", path.join("etc/link")).unwrap();
    fs::write(path.join("kept"), vec![7u8; 200_000]).unwrap();
    directory.commit(None, None).expect("commit base")
}

/// A layer made the way a RUN makes one: an overlay over `base`, changed through the mount
/// (deletion -> whiteout, a removed and recreated directory -> opaque, hardlinks, xattrs,
/// a fifo, a big file), then committed.
pub fn run_snapshot(store: &Store, lease: &Lease, base: &SnapshotId) -> SnapshotId {
    let snapshotter = store.snapshotter();
    let active = snapshotter.prepare(lease, Some(base)).expect("prepare");
    let root = active.mountpoint();
    fs::remove_file(root.join("etc/gone")).unwrap();
    fs::remove_dir_all(root.join("replaced")).unwrap();
    fs::create_dir(root.join("replaced")).unwrap();
    fs::write(root.join("replaced/new"), "new contents\n").unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-alias")).unwrap();
    rustix::fs::setxattr(
        root.join("usr/bin/tool").as_path(),
        "user.kiln.test",
        b"value",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("set xattr");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("usr/fifo").as_path(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(root.join("usr/big"), big).unwrap();
    fs::write(root.join("etc/hostname"), "changed\n").unwrap();
    for path in [
        "usr/bin/tool",
        "usr/big",
        "usr/bin",
        "usr/fifo",
        "usr",
        "etc/hostname",
        "replaced/new",
        "replaced",
    ] {
        set_mtime(&root.join(path), 1_700_000_000);
    }
    snapshotter
        .commit(active, CommitOptions::default())
        .expect("commit run layer")
}

/// A snapshot over `base` with no change at all.
pub fn empty_snapshot(store: &Store, lease: &Lease, base: &SnapshotId) -> SnapshotId {
    let snapshotter = store.snapshotter();
    let active = snapshotter.prepare(lease, Some(base)).expect("prepare");
    snapshotter
        .commit(active, CommitOptions::default())
        .expect("commit empty layer")
}

/// One line per entry under `root`: path, type, mode, owner, size, content digest, link
/// target, user xattrs, and which entries share an inode. Directory mtimes are left out
/// (writing into a directory changes them).
pub fn tree_listing(root: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    walk(root, root, &mut lines, &mut inodes);
    lines.sort();
    lines
}

fn walk(
    root: &Path,
    directory: &Path,
    lines: &mut Vec<String>,
    inodes: &mut BTreeMap<u64, String>,
) {
    let mut entries: Vec<_> = fs::read_dir(directory)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let relative = path.strip_prefix(root).unwrap().display().to_string();
        let metadata = fs::symlink_metadata(&path).unwrap();
        let file_type = metadata.file_type();
        let mut line = format!(
            "{relative} mode={:o} uid={} gid={}",
            metadata.mode(),
            metadata.uid(),
            metadata.gid()
        );
        if file_type.is_file() {
            let mut bytes = Vec::new();
            fs::File::open(&path)
                .unwrap()
                .read_to_end(&mut bytes)
                .unwrap();
            line.push_str(&format!(
                " size={} {} mtime={}",
                bytes.len(),
                Digest::of_bytes(&bytes).short(),
                metadata.mtime()
            ));
            if metadata.nlink() > 1 {
                let first = inodes
                    .entry(metadata.ino())
                    .or_insert_with(|| relative.clone());
                line.push_str(&format!(" links-with={first}"));
            }
        } else if file_type.is_symlink() {
            line.push_str(&format!(" -> {}", fs::read_link(&path).unwrap().display()));
        }
        let mut names = vec![0u8; 4096];
        let length = rustix::fs::llistxattr(path.as_path(), &mut names[..]).unwrap_or(0);
        let mut xattrs: Vec<String> = names[..length]
            .split(|byte| *byte == 0)
            .filter(|name| name.starts_with(b"user."))
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .collect();
        xattrs.sort();
        for name in xattrs {
            let mut value = vec![0u8; 4096];
            let length =
                rustix::fs::lgetxattr(path.as_path(), name.as_str(), &mut value[..]).unwrap();
            line.push_str(&format!(
                " xattr:{name}={}",
                String::from_utf8_lossy(&value[..length])
            ));
        }
        lines.push(line);
        if file_type.is_dir() {
            walk(root, &path, lines, inodes);
        }
    }
}

/// A host-platform image config with one history entry per step.
pub fn image_config(steps: &[&str]) -> kiln_types::ImageSpec {
    let platform = kiln_types::Platform::host();
    kiln_types::ImageSpec {
        created: Some("2030-01-01T00:00:00Z".into()),
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: platform.variant.clone(),
        config: kiln_types::ImageConfig {
            env: Some(vec!["PATH=/usr/bin:/bin".into()]),
            cmd: Some(vec!["/bin/sh".into()]),
            ..Default::default()
        },
        history: steps
            .iter()
            .map(|step| kiln_types::History {
                created: Some("2030-01-01T00:00:00Z".into()),
                created_by: Some(step.to_string()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Builds a three-step image (base, RUN, empty RUN) in `store` and tags it `name`.
pub fn built_image(
    store: &Store,
    lease: &Lease,
    name: &str,
    options: &kiln_exporter::LayerOptions,
) -> (kiln_exporter::BuiltImage, SnapshotId) {
    let base = base_snapshot(store, lease);
    let run = run_snapshot(store, lease, &base);
    let empty = empty_snapshot(store, lease, &run);
    let built = kiln_exporter::build_image(
        store,
        lease,
        &[base, run, empty.clone()],
        None,
        image_config(&["ADD base", "RUN change", "RUN nothing"]),
        options,
    )
    .expect("build image");
    kiln_exporter::tag(store, &[name.to_string()], &built.manifest_descriptor).expect("tag");
    (built, empty)
}

/// Runs a command and returns its stdout, failing the test with its stderr.
pub fn run_tool(program: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("running {program}: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A small RUN-like layer over `parent`: one new file.
pub fn small_run_snapshot(store: &Store, lease: &Lease, parent: &SnapshotId) -> SnapshotId {
    let snapshotter = store.snapshotter();
    let active = snapshotter.prepare(lease, Some(parent)).expect("prepare");
    fs::write(active.mountpoint().join("added"), "added by a later step\n").unwrap();
    snapshotter
        .commit(active, CommitOptions::default())
        .expect("commit small layer")
}

/// The merged tree of a committed snapshot stack.
pub fn snapshot_tree(store: &Store, top: &SnapshotId) -> Vec<String> {
    let lease = store.lease("view").unwrap();
    let view = store.snapshotter().view(&lease, top).unwrap();
    tree_listing(view.mountpoint())
}
